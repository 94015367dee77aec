//! Whole clips from WAV files, brought to the pipeline format (16 kHz mono)
//! with the same downmix and resampler as the live path. For offline tools
//! (`talkie vad`, `talkie transcribe`), not the real-time path.

use super::resample::{ResampleError, To16k};
use std::path::Path;
use talkie_hal::audio::{file::read_wav, AudioError};

/// Errors loading a clip.
#[derive(Debug, thiserror::Error)]
pub enum ClipError {
    #[error(transparent)]
    Audio(#[from] AudioError),
    #[error(transparent)]
    Resample(#[from] ResampleError),
}

/// Decode `path` (any rate, 1–2 channels) to 16 kHz mono. Non-finite
/// samples (NaN, ±Inf in float files) become silence; overs are clamped.
pub fn load_pipeline_clip(path: &Path) -> Result<Vec<f32>, ClipError> {
    let (samples, spec) = read_wav(path)?;
    let ch = usize::from(spec.channels.max(1));
    let mono: Vec<f32> = samples
        .chunks_exact(ch)
        .map(|f| {
            let m = f.iter().sum::<f32>() / ch as f32;
            if m.is_finite() {
                m.clamp(-1.0, 1.0)
            } else {
                0.0
            }
        })
        .collect();
    let mut r = To16k::new(spec.sample_rate)?;
    let mut out = Vec::with_capacity(mono.len() * 16_000 / spec.sample_rate.max(1) as usize + 1);
    r.push(&mono, &mut |s| out.extend_from_slice(s))?;
    r.flush(&mut |s| out.extend_from_slice(s))?;
    Ok(out)
}
