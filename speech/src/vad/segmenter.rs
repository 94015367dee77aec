//! Hysteresis over VAD probabilities: speech starts when the probability
//! reaches `threshold` and ends after `min_silence` below
//! `threshold - 0.15`; segments shorter than `min_speech` are dropped and
//! kept ones are padded by `pad` on both sides. Pure logic, no model.
#![cfg_attr(not(test), deny(clippy::indexing_slicing))]

use super::ms_to_samples;

/// Segmenter settings, in 16 kHz samples.
#[derive(Debug, Clone, PartialEq)]
pub struct SegmenterConfig {
    pub threshold: f32,
    pub min_speech: u64,
    pub min_silence: u64,
    pub pad: u64,
}

impl SegmenterConfig {
    /// The probability below which speech is silence again (hysteresis).
    pub fn low(&self) -> f32 {
        (self.threshold - 0.15).max(0.01)
    }

    /// From milliseconds: speech probability `threshold`, shortest speech
    /// kept, silence that ends speech, padding added on each side.
    pub fn from_ms(threshold: f32, min_speech_ms: u32, min_silence_ms: u32, pad_ms: u32) -> Self {
        Self {
            threshold,
            min_speech: ms_to_samples(min_speech_ms),
            min_silence: ms_to_samples(min_silence_ms),
            pad: ms_to_samples(pad_ms),
        }
    }
}

impl Default for SegmenterConfig {
    /// The firmware's `[vad]` defaults: 0.5, 250 ms, 300 ms, 100 ms.
    fn default() -> Self {
        Self::from_ms(0.5, 250, 300, 100)
    }
}

/// A stretch of speech, in samples from the start of the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub start: u64,
    pub end: u64,
}

/// Streaming segmenter: feed one probability per chunk.
#[derive(Debug)]
pub struct Segmenter {
    cfg: SegmenterConfig,
    /// Start of the current speech, if in speech.
    speech_start: Option<u64>,
    /// Where the current run of silence inside speech began.
    silence_start: Option<u64>,
    /// End of the last emitted segment (pads never overlap it).
    last_end: u64,
}

impl Segmenter {
    pub fn new(cfg: SegmenterConfig) -> Self {
        Self {
            cfg,
            speech_start: None,
            silence_start: None,
            last_end: 0,
        }
    }

    /// True while inside speech.
    pub fn in_speech(&self) -> bool {
        self.speech_start.is_some()
    }

    fn close(&mut self, start: u64, end: u64) -> Option<Segment> {
        self.speech_start = None;
        self.silence_start = None;
        if end.saturating_sub(start) < self.cfg.min_speech {
            return None;
        }
        let seg = Segment {
            start: start.saturating_sub(self.cfg.pad).max(self.last_end),
            end: end + self.cfg.pad,
        };
        self.last_end = seg.end;
        Some(seg)
    }

    /// The probability `p` of the chunk starting at sample `at`. Returns a
    /// segment when one ends.
    pub fn push(&mut self, p: f32, at: u64) -> Option<Segment> {
        let low = self.cfg.low();
        match self.speech_start {
            None => {
                if p >= self.cfg.threshold {
                    self.speech_start = Some(at);
                }
                None
            }
            Some(start) => {
                if p >= low {
                    self.silence_start = None;
                    return None;
                }
                let silent_since = *self.silence_start.get_or_insert(at);
                if at + super::CHUNK as u64 - silent_since >= self.cfg.min_silence {
                    return self.close(start, silent_since);
                }
                None
            }
        }
    }

    /// End of stream at sample `end`: close any open segment.
    pub fn finish(&mut self, end: u64) -> Option<Segment> {
        let seg = self.pending(end);
        self.speech_start = None;
        self.silence_start = None;
        if let Some(s) = seg {
            self.last_end = s.end;
        }
        seg
    }

    /// What [`finish`](Self::finish) would return at `end`, without
    /// ending anything: the open segment as the stream stands.
    pub fn pending(&self, end: u64) -> Option<Segment> {
        let start = self.speech_start?;
        let stop = self.silence_start.unwrap_or(end);
        if stop.saturating_sub(start) < self.cfg.min_speech {
            return None;
        }
        Some(Segment {
            start: start.saturating_sub(self.cfg.pad).max(self.last_end),
            end: (stop + self.cfg.pad).min(end),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vad::CHUNK;

    fn run(probs: &[f32]) -> Vec<(u64, u64)> {
        let cfg = SegmenterConfig {
            threshold: 0.5,
            min_speech: 3 * CHUNK as u64,
            min_silence: 2 * CHUNK as u64,
            pad: 0,
        };
        let mut s = Segmenter::new(cfg);
        let mut out = Vec::new();
        for (i, &p) in probs.iter().enumerate() {
            if let Some(seg) = s.push(p, (i * CHUNK) as u64) {
                out.push((seg.start / CHUNK as u64, seg.end / CHUNK as u64));
            }
        }
        if let Some(seg) = s.finish((probs.len() * CHUNK) as u64) {
            out.push((seg.start / CHUNK as u64, seg.end / CHUNK as u64));
        }
        out
    }

    #[test]
    fn hysteresis_min_speech_and_min_silence() {
        // Speech chunks 2..8 with one dip (0.2 at 5) shorter than min_silence.
        let p = [0.0, 0.1, 0.9, 0.8, 0.4, 0.2, 0.6, 0.9, 0.1, 0.0, 0.0, 0.0];
        assert_eq!(run(&p), [(2, 8)]);
        // A two-chunk blip is shorter than min_speech.
        assert_eq!(run(&[0.0, 0.9, 0.9, 0.0, 0.0, 0.0]), []);
        // Two utterances separated by enough silence.
        let p = [0.9, 0.9, 0.9, 0.0, 0.0, 0.0, 0.9, 0.9, 0.9, 0.9];
        assert_eq!(run(&p), [(0, 3), (6, 10)]);
        // Below the threshold but above threshold-0.15 never starts speech.
        assert_eq!(run(&[0.4; 10]), []);
    }
}
