//! Offline tools on WAV files: `talkie vad` (and `talkie transcribe` with
//! the recognition work). They use the same front end (downmix, resampler)
//! and the same models as the service.

use crate::audio::clip::{load_pipeline_clip, ClipError};
use crate::audio::PIPELINE_RATE;
use crate::config::Config;
use crate::models::{self, ModelError};
use crate::vad::{self, SegmenterConfig, SileroVad, VadError};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// File name of the VAD model inside a models directory.
pub const VAD_FILE: &str = "silero_vad.onnx";

/// Errors of the offline tools.
#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    #[error("{}: {source}", path.display())]
    Clip { path: PathBuf, source: ClipError },
    #[error(transparent)]
    Vad(#[from] VadError),
    #[error(transparent)]
    Model(#[from] ModelError),
}

/// The VAD model to use: `DIR/silero_vad.onnx` with `--models DIR`, else
/// `vad.model` when it exists, else the default models directory.
pub fn vad_model_path(cfg: &Config, models_dir: Option<&Path>) -> PathBuf {
    match models_dir {
        Some(dir) => dir.join(VAD_FILE),
        None if cfg.vad.model.exists() => cfg.vad.model.clone(),
        None => models::default_dir().join(VAD_FILE),
    }
}

/// `talkie vad`: print each file's speech segments.
pub fn vad(
    cfg: &Config,
    files: &[PathBuf],
    models_dir: Option<&Path>,
    json: bool,
) -> Result<(), OfflineError> {
    let path = vad_model_path(cfg, models_dir);
    let mut model = SileroVad::load(&path)?;
    let seg_cfg = SegmenterConfig::from_config(&cfg.vad);
    for file in files {
        let samples = load_pipeline_clip(file).map_err(|source| OfflineError::Clip {
            path: file.clone(),
            source,
        })?;
        let t0 = Instant::now();
        let segments = vad::segments(&mut model, &seg_cfg, &samples)?;
        let vad_ms = t0.elapsed().as_secs_f64() * 1000.0;
        let sec = |s: u64| s as f64 / f64::from(PIPELINE_RATE);
        let audio_s = sec(samples.len() as u64);
        if json {
            let obj = serde_json::json!({
                "file": file.display().to_string(),
                "audio_s": audio_s,
                "vad_ms": vad_ms,
                "segments": segments.iter().map(|s| [sec(s.start), sec(s.end)]).collect::<Vec<_>>(),
            });
            println!("{obj}");
        } else {
            println!(
                "{} ({audio_s:.2} s, {} segments, VAD {vad_ms:.0} ms)",
                file.display(),
                segments.len()
            );
            for s in &segments {
                println!("  {:8.3} {:8.3}", sec(s.start), sec(s.end));
            }
        }
    }
    Ok(())
}
