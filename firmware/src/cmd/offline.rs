//! Offline tools on WAV files: `talkie vad` (and `talkie transcribe` with
//! the recognition work). They use the same front end (downmix, resampler)
//! and the same models as the service.

use crate::audio::clip::{load_pipeline_clip, ClipError};
use crate::audio::PIPELINE_RATE;
use crate::base::config::models::{stt_model_dir, vad_model_path, with_vad_resolved};
use crate::base::config::Config;
use crate::models::ModelError;
use crate::stt::{RecognizeError, Recognizer};
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
    // As the service does after loading and after each utterance: the
    // heap calibration and recognition freed goes back, so this command's
    // peak RSS is the service's.
    crate::base::telemetry::release_free_memory();
    for (n, file) in files.iter().enumerate() {
        if !json && files.len() > 1 {
            eprintln!("[{}/{}] {}", n + 1, files.len(), file.display());
        }
        let samples = load_pipeline_clip(file).map_err(|source| OfflineError::Clip {
            path: file.clone(),
            source,
        })?;
        let r = recognizer.recognize(&samples)?;
        drop(samples);
        crate::base::telemetry::release_free_memory();
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
                "projection_ms": t.projection_ms,
                "projections": t.projections,
                "total_ms": r.total_ms,
                "tokens": t.tokens,
                "avg_logprob": t.avg_logprob,
                "no_speech_prob": t.no_speech_prob,
                "model": recognizer.calibration().model,
                "agreement": r.agreement,
            });
            println!("{obj}");
        } else {
            println!("{}\t{}", file.display(), r.text);
        }
    }
    Ok(())
}
