#![cfg_attr(not(test), deny(clippy::indexing_slicing))]
//! The last utterance as a picture for the technician: its waveform as a
//! few hundred peaks, where the VAD heard speech, where the press and the
//! release fall. Built by the recognition worker from the buffer it
//! already holds (after recognition, off the audio path); drawn by the
//! page from `GET /api/v1/charts`.

use serde::Serialize;

/// Peaks in a waveform, whatever the utterance's length.
pub const WAVE_POINTS: usize = 300;

/// One utterance, ready to draw.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UtteranceTrace {
    pub id: u64,
    /// Length of the captured audio (pre-roll included).
    pub audio_ms: u64,
    /// Where the press falls: the end of the pre-roll.
    pub press_ms: u64,
    /// Where capture ended: the release, or the auto-stop.
    pub release_ms: u64,
    pub auto_stopped: bool,
    /// The VAD's speech regions, `[start_ms, end_ms]`.
    pub speech_ms: Vec<[u64; 2]>,
    /// The largest |sample| in each of [`WAVE_POINTS`] equal slices of the
    /// audio, 0..=1.
    pub peaks: Vec<f32>,
}

fn ms(samples: u64) -> u64 {
    samples * 1000 / u64::from(crate::audio::PIPELINE_RATE)
}

impl UtteranceTrace {
    /// From `samples` (the buffer recognized: the whole capture, or a
    /// speculative run's cut of it) of a capture `audio_samples` long.
    pub fn new(
        id: u64,
        samples: &[f32],
        audio_samples: usize,
        preroll_samples: usize,
        auto_stopped: bool,
        segments: &[crate::vad::Segment],
    ) -> Self {
        let total = audio_samples.max(samples.len());
        Self {
            id,
            audio_ms: ms(total as u64),
            press_ms: ms(preroll_samples.min(total) as u64),
            release_ms: ms(total as u64),
            auto_stopped,
            speech_ms: segments
                .iter()
                .map(|s| [ms(s.start), ms(s.end.min(total as u64))])
                .collect(),
            peaks: peaks(samples, total, WAVE_POINTS),
        }
    }
}

/// `points` peaks of |x| over a stretch `total` samples long of which
/// `samples` is the start (the rest is silence).
pub fn peaks(samples: &[f32], total: usize, points: usize) -> Vec<f32> {
    if total == 0 || points == 0 {
        return Vec::new();
    }
    (0..points)
        .map(|i| {
            let a = i * total / points;
            let b = ((i + 1) * total / points).max(a + 1);
            samples
                .get(a.min(samples.len())..b.min(samples.len()))
                .unwrap_or_default()
                .iter()
                .fold(0f32, |m, x| m.max(x.abs()))
                .min(1.0)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peaks_cover_the_whole_capture_and_a_cut_reads_as_silence_after_it() {
        let mut s = vec![0.0f32; 16_000];
        s[4_000] = -0.5;
        s[12_000] = 0.9;
        let p = peaks(&s, 32_000, 4);
        assert_eq!(p, [0.5, 0.9, 0.0, 0.0]);
        assert_eq!(peaks(&[2.0], 1, 3), [1.0, 1.0, 1.0]);
        assert!(peaks(&[], 0, 10).is_empty());

        let t = UtteranceTrace::new(
            7,
            &s,
            32_000,
            8_000,
            false,
            &[crate::vad::Segment {
                start: 9_600,
                end: 40_000,
            }],
        );
        assert_eq!(
            (t.audio_ms, t.press_ms, t.release_ms, t.speech_ms.clone()),
            (2000, 500, 2000, vec![[600, 2000]])
        );
        assert_eq!(t.peaks.len(), WAVE_POINTS);
    }
}
