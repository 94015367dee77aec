//! Where the models are: the directories and files `talkie run`, `talkie
//! transcribe` and the benchmarks load, from the configuration and an
//! optional `--models DIR`, with the source checkout's fallback.

use super::Config;
use crate::models::{self, VAD_FILE};
use std::path::{Path, PathBuf};

/// The VAD model to use: `DIR/silero_vad.onnx` with `--models DIR`; else
/// `vad.model` exactly as configured; only the default path, when nothing
/// is installed there, falls back to the default models directory (a
/// source checkout's `models/build`, or `TALKIE_MODELS_DIR`), saying so.
pub fn vad_model_path(cfg: &Config, models_dir: Option<&Path>) -> PathBuf {
    let default = super::VadConfig::default().model;
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

/// The models directory: `--models DIR`; else `stt.model_dir` exactly as
/// configured; only the default path, when nothing is installed there,
/// falls back to the default models directory (a source checkout's
/// `models/build`, or `TALKIE_MODELS_DIR`), saying so. A configured
/// directory that lacks the models is an error naming it (issue 18 row 14:
/// the fallback was silent and the error named another path).
pub fn stt_model_dir(cfg: &Config, models_dir: Option<&Path>) -> PathBuf {
    let default = super::SttConfig::default().model_dir;
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
/// [`crate::stt::Recognizer::load`] loads the VAD from.
pub fn with_vad_resolved(cfg: &Config, models_dir: Option<&Path>) -> Config {
    let mut c = cfg.clone();
    c.vad.model = vad_model_path(cfg, models_dir);
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vad::SileroVad;

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
