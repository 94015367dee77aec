//! The speech a stream would be trimmed to if it ended now, followed chunk
//! by chunk: what makes speculative recognition exact.
//!
//! [`crate::stt::Recognizer`] trims an utterance to the samples from the
//! first speech segment's start to the last one's end ([`super::segments`]).
//! Silero VAD is causal and works on chunks aligned to the start of the
//! buffer, so the probabilities of a prefix cut at a chunk boundary are the
//! probabilities of the whole buffer's first chunks. [`SpeechSpan`] feeds
//! them into the same [`Segmenter`] and answers, after every chunk, which
//! span the trim would keep if the stream ended there. When the span of a
//! prefix equals the span of the whole buffer, both trim to the same
//! samples and Whisper gets the same input: the prefix's transcript *is*
//! the whole buffer's.
#![cfg_attr(not(test), deny(clippy::indexing_slicing))]

use super::{Segment, Segmenter, SegmenterConfig, CHUNK};

/// A trim span: sample range `[start, end)` from the stream's start.
pub type Span = (u64, u64);

/// Follows a stream's VAD probabilities (one per [`CHUNK`], from sample 0).
#[derive(Debug)]
pub struct SpeechSpan {
    cfg: SegmenterConfig,
    seg: Segmenter,
    /// Start of the first closed segment and end of the last one.
    first_start: Option<u64>,
    last_end: Option<u64>,
    /// Samples covered by the probabilities pushed so far.
    at: u64,
    /// Samples since the last chunk at or above the segmenter's low
    /// threshold (its notion of silence).
    silence: u64,
}

impl SpeechSpan {
    pub fn new(cfg: SegmenterConfig) -> Self {
        Self {
            seg: Segmenter::new(cfg.clone()),
            cfg,
            first_start: None,
            last_end: None,
            at: 0,
            silence: 0,
        }
    }

    /// Start a new stream.
    pub fn reset(&mut self) {
        *self = Self::new(self.cfg.clone());
    }

    /// The probability of the next chunk.
    pub fn push(&mut self, p: f32) {
        if let Some(s) = self.seg.push(p, self.at) {
            self.closed(s);
        }
        self.silence = if p >= self.cfg.low() {
            0
        } else {
            self.silence + CHUNK as u64
        };
        self.at += CHUNK as u64;
    }

    fn closed(&mut self, s: Segment) {
        self.first_start.get_or_insert(s.start);
        self.last_end = Some(s.end);
    }

    /// Samples covered so far (a multiple of [`CHUNK`]).
    pub fn at(&self) -> u64 {
        self.at
    }

    /// Samples of silence (below the low threshold) at the end so far.
    pub fn silence(&self) -> u64 {
        self.silence
    }

    /// The span [`super::segments`] would give a stream of `end` samples
    /// whose chunks are the ones pushed so far (`end` at most
    /// [`at`](Self::at); the last chunk may be a zero-padded partial one).
    /// `None`: no speech, nothing to recognize.
    pub fn span_at(&self, end: u64) -> Option<Span> {
        let pending = self.seg.pending(end);
        let start = self.first_start.or(pending.map(|s| s.start))?;
        let stop = pending.map_or(self.last_end.unwrap_or(start), |s| s.end);
        Some((start.min(end), stop.min(end)))
    }

    /// The span if the stream ended after the chunks pushed so far.
    pub fn span(&self) -> Option<Span> {
        self.span_at(self.at)
    }

    /// A point worth recognizing ahead of the stream's end: speech seen,
    /// then at least `after` samples of silence, and the span already
    /// closed at its padded end (so more silence leaves it unchanged).
    /// Returns the cut (a chunk boundary) and the span of the prefix.
    pub fn pause(&self, after: u64) -> Option<(u64, Span)> {
        if self.silence < after.max(CHUNK as u64) {
            return None;
        }
        let span = self.span()?;
        // Still open and not yet padded to its end: more silence moves it.
        let settled = self.seg.pending(u64::MAX).is_none_or(|s| s.end <= self.at);
        settled.then_some((self.at, span))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every prefix's span equals what `segments` gives that prefix, for
    /// random probability sequences: the tracker and the trim never differ.
    #[test]
    fn span_matches_the_segments_of_every_prefix() {
        let cfg = SegmenterConfig {
            threshold: 0.5,
            min_speech: 3 * CHUNK as u64,
            min_silence: 4 * CHUNK as u64,
            pad: CHUNK as u64 + 100,
        };
        let mut x: u32 = 12345;
        for _ in 0..200 {
            let probs: Vec<f32> = (0..60)
                .map(|_| {
                    x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    // Runs of speech and silence, with values near both thresholds.
                    [0.0, 0.1, 0.36, 0.4, 0.5, 0.9][(x >> 16) as usize % 6]
                })
                .collect();
            let mut span = SpeechSpan::new(cfg.clone());
            for (n, &p) in probs.iter().enumerate() {
                span.push(p);
                // The same as segments() over the first n+1 chunks.
                let mut seg = Segmenter::new(cfg.clone());
                let mut all = Vec::new();
                for (i, &q) in probs.iter().take(n + 1).enumerate() {
                    all.extend(seg.push(q, (i * CHUNK) as u64));
                }
                let end = ((n + 1) * CHUNK) as u64;
                all.extend(seg.finish(end));
                let want = all.first().map(|a| {
                    let b = all.last().unwrap_or(a);
                    (a.start.min(end), b.end.min(end))
                });
                assert_eq!(span.span(), want, "probs {probs:?} prefix {n}");
            }
        }
    }

    #[test]
    fn silence_counts_chunks_below_the_low_threshold() {
        let mut s = SpeechSpan::new(SegmenterConfig::default());
        for p in [0.9, 0.9, 0.1, 0.1, 0.4, 0.1] {
            s.push(p);
        }
        // 0.4 is above 0.5 - 0.15: it breaks the silence.
        assert_eq!(s.silence(), CHUNK as u64);
        assert_eq!(s.at(), 6 * CHUNK as u64);
    }
}
