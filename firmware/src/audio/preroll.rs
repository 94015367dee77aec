//! Pre-roll: the last few hundred milliseconds of 16 kHz audio, always kept,
//! so the syllable spoken just before the button press is not lost.

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
        let samples = &samples[samples.len().saturating_sub(cap)..];
        let first = samples.len().min(cap - self.head);
        self.buf[self.head..self.head + first].copy_from_slice(&samples[..first]);
        let rest = samples.len() - first;
        self.buf[..rest].copy_from_slice(&samples[first..]);
        self.head = (self.head + samples.len()) % cap;
        self.len = (self.len + samples.len()).min(cap);
    }

    /// Copy the held samples, oldest first, into the start of `out`;
    /// returns how many were copied (the newest ones if `out` is shorter).
    pub fn copy_into(&self, out: &mut [f32]) -> usize {
        let n = self.len.min(out.len());
        let cap = self.buf.len();
        let start = (self.head + cap - n) % cap.max(1);
        let first = n.min(cap - start);
        out[..first].copy_from_slice(&self.buf[start..start + first]);
        out[first..n].copy_from_slice(&self.buf[..n - first]);
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

    #[test]
    fn zero_capacity_holds_nothing() {
        let mut p = PreRoll::new(0);
        p.push(&[1.0]);
        assert!(p.is_empty());
        assert_eq!(p.copy_into(&mut [0.0; 4]), 0);
    }
}
