//! Voice activity detection: Silero VAD on tract, plus a hysteresis
//! segmenter that turns per-chunk probabilities into speech segments, and
//! [`SpeechSpan`], which follows the trim a stream would get as it grows.

pub mod segmenter;
pub mod silero;
pub mod span;

pub use segmenter::{Segment, Segmenter, SegmenterConfig};
pub use silero::{SileroVad, VadError, CHUNK};
pub use span::{Span, SpeechSpan};

use crate::SAMPLE_RATE as PIPELINE_RATE;

/// Run the VAD over 16 kHz mono `samples` and return the speech segments.
pub fn segments(
    vad: &mut SileroVad,
    cfg: &SegmenterConfig,
    samples: &[f32],
) -> Result<Vec<Segment>, VadError> {
    vad.reset();
    let mut seg = Segmenter::new(cfg.clone());
    let mut out = Vec::new();
    let mut chunk = [0.0f32; CHUNK];
    for (i, block) in samples.chunks(CHUNK).enumerate() {
        chunk[..block.len()].copy_from_slice(block);
        chunk[block.len()..].fill(0.0);
        let p = vad.prob(&chunk)?;
        if let Some(s) = seg.push(p, (i * CHUNK) as u64) {
            out.push(s);
        }
    }
    if let Some(s) = seg.finish(samples.len() as u64) {
        out.push(s);
    }
    Ok(out)
}

/// Milliseconds to 16 kHz samples.
pub fn ms_to_samples(ms: u32) -> u64 {
    u64::from(ms) * u64::from(PIPELINE_RATE) / 1000
}
