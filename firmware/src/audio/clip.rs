//! Whole clips from WAV files, brought to the pipeline format (16 kHz mono)
//! with the same downmix and resampler as the live path. For offline tools
//! (`talkie vad`, `talkie transcribe`), not the real-time path.

use super::resample::{ResampleError, To16k};
use std::path::Path;
use talkie_hal::audio::{
    file::{decode_wav, read_wav},
    AudioError,
};

/// Errors loading a clip.
#[derive(Debug, thiserror::Error)]
pub enum ClipError {
    #[error(transparent)]
    Audio(#[from] AudioError),
    #[error(transparent)]
    Resample(#[from] ResampleError),
    #[error("{seconds:.1} s of audio; at most {max_s} s")]
    TooLong { seconds: f64, max_s: u32 },
}

/// Decode `path` (any rate, 1–2 channels) to 16 kHz mono. Non-finite
/// samples (NaN, ±Inf in float files) become silence; overs are clamped.
pub fn load_pipeline_clip(path: &Path) -> Result<Vec<f32>, ClipError> {
    let (samples, spec) = read_wav(path)?;
    to_pipeline(&samples, spec)
}

/// Decode WAV `bytes` (an upload) of at most `max_s` seconds to 16 kHz mono.
pub fn decode_pipeline_clip(bytes: &[u8], max_s: u32) -> Result<Vec<f32>, ClipError> {
    let (samples, spec) = decode_wav(bytes, Path::new("uploaded WAV"))?;
    let seconds =
        samples.len() as f64 / f64::from(spec.channels.max(1)) / f64::from(spec.sample_rate);
    if seconds > f64::from(max_s) {
        return Err(ClipError::TooLong { seconds, max_s });
    }
    to_pipeline(&samples, spec)
}

fn to_pipeline(samples: &[f32], spec: hound::WavSpec) -> Result<Vec<f32>, ClipError> {
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
