//! Pre-roll: the last few hundred milliseconds of 16 kHz audio, always kept,
//! so the syllable spoken just before the button press is not lost.
//! Real-time code: no indexing that could panic (split and zip instead).
#![cfg_attr(not(test), deny(clippy::indexing_slicing))]

/// A fixed-capacity ring of the most recent samples.
#[derive(Debug)]
pub struct PreRoll {
    buf: Vec<f32>,
    /// Next write position.
    head: usize,
    /// Samples held (≤ capacity).
    len: usize,
}

impl PreRoll {
    /// A ring holding `capacity` samples, allocated now.
    pub fn new(capacity: usize) -> Self {
        Self {
            buf: vec![0.0; capacity],
            head: 0,
            len: 0,
        }
    }

    pub fn capacity(&self) -> usize {
        self.buf.len()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Append samples, overwriting the oldest.
    pub fn push(&mut self, samples: &[f32]) {
        let cap = self.buf.len();
        if cap == 0 {
            return;
        }
        // Only the newest `cap` samples can be kept.
        let (_, samples) = samples.split_at(samples.len().saturating_sub(cap));
        // From the write position to the end, then wrapping to the start.
        let (front, back) = self.buf.split_at_mut(self.head.min(cap));
        let (into_back, into_front) = samples.split_at(samples.len().min(back.len()));
        back.iter_mut().zip(into_back).for_each(|(d, s)| *d = *s);
        front.iter_mut().zip(into_front).for_each(|(d, s)| *d = *s);
        self.head = (self.head + samples.len()) % cap;
        self.len = (self.len + samples.len()).min(cap);
    }

    /// Copy the held samples, oldest first, into the start of `out`;
    /// returns how many were copied (the newest ones if `out` is shorter).
    pub fn copy_into(&self, out: &mut [f32]) -> usize {
        let n = self.len.min(out.len());
        let cap = self.buf.len();
        if n == 0 || cap == 0 {
            return 0;
        }
        // The n newest samples start n before the write position, wrapping.
        let start = (self.head + cap - n) % cap;
        let (wrapped, from_start) = self.buf.split_at(start);
        out.iter_mut()
            .zip(from_start.iter().chain(wrapped).take(n))
            .for_each(|(d, s)| *d = *s);
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(p: &PreRoll) -> Vec<f32> {
        let mut out = vec![0.0; p.capacity()];
        let n = p.copy_into(&mut out);
        out.truncate(n);
        out
    }

    #[test]
    fn keeps_the_newest_samples_in_order() {
        let mut p = PreRoll::new(5);
        p.push(&[1.0, 2.0, 3.0]);
        assert_eq!(held(&p), [1.0, 2.0, 3.0]);
        p.push(&[4.0, 5.0, 6.0, 7.0]);
        assert_eq!(held(&p), [3.0, 4.0, 5.0, 6.0, 7.0]);
        p.push(&[8.0, 9.0, 10.0, 11.0, 12.0, 13.0, 14.0]);
        assert_eq!(held(&p), [10.0, 11.0, 12.0, 13.0, 14.0]);
        let mut short = [0.0; 2];
        assert_eq!(p.copy_into(&mut short), 2);
        assert_eq!(short, [13.0, 14.0]);
    }

    /// Against a plain model (a Vec keeping the newest `cap`), over many
    /// pushes of every length, including longer than the ring.
    #[test]
    fn matches_a_simple_model_for_any_push_lengths() {
        for cap in [1usize, 2, 7, 64] {
            let mut p = PreRoll::new(cap);
            let mut model: Vec<f32> = Vec::new();
            let mut x = 0.0f32;
            for round in 0..200usize {
                let len = (round * 7 + cap) % (2 * cap + 3);
                let chunk: Vec<f32> = (0..len)
                    .map(|_| {
                        x += 1.0;
                        x
                    })
                    .collect();
                p.push(&chunk);
                model.extend_from_slice(&chunk);
                let keep = model.len().saturating_sub(cap);
                model.drain(..keep);
                assert_eq!(held(&p), model, "cap {cap}, round {round}");
                let mut short = vec![0.0; cap / 2];
                let n = p.copy_into(&mut short);
                assert_eq!(&short[..n], &model[model.len() - n..]);
            }
        }
    }

    #[test]
    fn zero_capacity_holds_nothing() {
        let mut p = PreRoll::new(0);
        p.push(&[1.0]);
        assert!(p.is_empty());
        assert_eq!(p.copy_into(&mut [0.0; 4]), 0);
    }
}
