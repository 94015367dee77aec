//! Offline tools on WAV files: `talkie vad` (and `talkie transcribe` with
//! the recognition work). They use the same front end (downmix, resampler)
//! and the same models as the service.

use crate::audio::clip::{load_pipeline_clip, ClipError};
use crate::audio::PIPELINE_RATE;
use crate::config::Config;
use crate::models::{self, ModelError};
use crate::stt::{RecognizeError, Recognizer, VAD_FILE};
use crate::vad::{self, SileroVad, VadError};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Errors of the offline tools.
#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    #[error("{}: {source}", path.display())]
    Clip { path: PathBuf, source: ClipError },
    #[error(transparent)]
    Vad(#[from] VadError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Recognize(#[from] RecognizeError),
}

/// The VAD model to use: `DIR/silero_vad.onnx` with `--models DIR`; else
/// `vad.model` exactly as configured; only the default path, when nothing
/// is installed there, falls back to the default models directory (a
/// source checkout's `models/build`, or `TALKIE_MODELS_DIR`), saying so.
pub fn vad_model_path(cfg: &Config, models_dir: Option<&Path>) -> PathBuf {
    let default = crate::config::VadConfig::default().model;
    match models_dir {
        Some(dir) => dir.join(VAD_FILE),
        None if cfg.vad.model != default || cfg.vad.model.exists() => cfg.vad.model.clone(),
        None => {
            let fallback = models::default_dir().join(VAD_FILE);
            tracing::info!(configured = %default.display(), using = %fallback.display(), "vad.model: nothing installed at the default path; using the models directory");
            fallback
        }
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
    let seg_cfg = cfg.vad.segmenter();
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

/// The models directory: `--models DIR`; else `stt.model_dir` exactly as
/// configured; only the default path, when nothing is installed there,
/// falls back to the default models directory (a source checkout's
/// `models/build`, or `TALKIE_MODELS_DIR`), saying so. A configured
/// directory that lacks the models is an error naming it (issue 18 row 14:
/// the fallback was silent and the error named another path).
pub fn stt_model_dir(cfg: &Config, models_dir: Option<&Path>) -> PathBuf {
    let default = crate::config::SttConfig::default().model_dir;
    match models_dir {
        Some(dir) => dir.to_owned(),
        None if cfg.stt.model_dir != default || cfg.stt.model_dir.is_dir() => {
            cfg.stt.model_dir.clone()
        }
        None => {
            let fallback = models::default_dir();
            tracing::info!(configured = %default.display(), using = %fallback.display(), "stt.model_dir: nothing installed at the default path; using the models directory");
            fallback
        }
    }
}

/// `cfg` with `vad.model` resolved as [`vad_model_path`] does: what
/// [`Recognizer::load`] loads the VAD from.
pub fn with_vad_resolved(cfg: &Config, models_dir: Option<&Path>) -> Config {
    let mut c = cfg.clone();
    c.vad.model = vad_model_path(cfg, models_dir);
    c
}

/// `talkie transcribe`: VAD-trim each file, then recognize it.
pub fn transcribe(
    cfg: &Config,
    files: &[PathBuf],
    models_dir: Option<&Path>,
    json: bool,
) -> Result<(), OfflineError> {
    let dir = stt_model_dir(cfg, models_dir);
    let mut recognizer = Recognizer::load(
        &dir,
        &with_vad_resolved(cfg, models_dir).recognizer_options(),
    )?;
    for (n, file) in files.iter().enumerate() {
        if !json && files.len() > 1 {
            eprintln!("[{}/{}] {}", n + 1, files.len(), file.display());
        }
        let samples = load_pipeline_clip(file).map_err(|source| OfflineError::Clip {
            path: file.clone(),
            source,
        })?;
        let r = recognizer.recognize(&samples)?;
        let sec = |n: usize| n as f64 / f64::from(PIPELINE_RATE);
        if json {
            let t = &r.transcript;
            let obj = serde_json::json!({
                "file": file.display().to_string(),
                "text": r.text,
                "audio_s": sec(r.audio_samples),
                "speech_s": sec(r.speech_samples),
                "vad_ms": r.vad_ms,
                "encoder_ms": t.encoder_ms,
                "decoder_ms": t.decoder_ms,
                "total_ms": r.total_ms,
                "tokens": t.tokens,
                "avg_logprob": t.avg_logprob,
                "no_speech_prob": t.no_speech_prob,
            });
            println!("{obj}");
        } else {
            println!("{}\t{}", file.display(), r.text);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 18 row 14: `vad.model` was ignored by `run`, and a missing
    /// `stt.model_dir` fell back silently. A configured path is used as
    /// given (its absence is then an error naming it); only the default
    /// path falls back.
    #[test]
    fn configured_model_paths_are_used_as_given() {
        let mut cfg = Config::default();
        cfg.vad.model = PathBuf::from("/nonexistent/vad.onnx");
        cfg.stt.model_dir = PathBuf::from("/nonexistent/stt");
        assert_eq!(vad_model_path(&cfg, None), cfg.vad.model);
        assert_eq!(stt_model_dir(&cfg, None), cfg.stt.model_dir);
        assert_eq!(
            with_vad_resolved(&cfg, Some(Path::new("/m"))).vad.model,
            Path::new("/m/silero_vad.onnx")
        );
        let e = match SileroVad::load(&vad_model_path(&cfg, None)) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("loaded a missing file"),
        };
        assert!(e.contains("/nonexistent/vad.onnx"), "{e}");
        let defaults = Config::default();
        if !defaults.vad.model.exists() {
            assert_eq!(
                vad_model_path(&defaults, None),
                models::default_dir().join(VAD_FILE)
            );
        }
    }
}
