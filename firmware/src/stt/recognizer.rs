//! One utterance in, one transcript out: VAD trim, then Whisper. Shared by
//! `talkie transcribe` and the service's recognition worker, so both give
//! the same text for the same audio.

use super::{SttError, Transcript, Whisper};
use crate::audio::PIPELINE_RATE;
use crate::config::Config;
use crate::models::ModelError;
use crate::vad::{self, SegmenterConfig, SileroVad, VadError};
use std::path::Path;
use std::time::Instant;
use tract_linalg::multithread::{multithread_tract_scope, Executor};

/// File name of the VAD model inside a models directory.
pub const VAD_FILE: &str = "silero_vad.onnx";

/// Errors of loading or running recognition.
#[derive(Debug, thiserror::Error)]
pub enum RecognizeError {
    #[error(transparent)]
    Vad(#[from] VadError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Stt(#[from] SttError),
    #[error("cannot start {threads} recognition threads: {reason}")]
    Threads { threads: usize, reason: String },
}

/// One thread: tract runs on the caller. More: a private rayon pool named
/// `talkie-mm-N` (built here so a failure is an error, not tract's panic).
fn executor(threads: usize) -> Result<Executor, RecognizeError> {
    if threads <= 1 {
        return Ok(Executor::SingleThread);
    }
    rayon::ThreadPoolBuilder::new()
        .thread_name(|n| format!("talkie-mm-{n}"))
        .num_threads(threads)
        .build()
        .map(|pool| Executor::MultiThread(std::sync::Arc::new(pool)))
        .map_err(|e| RecognizeError::Threads {
            threads,
            reason: e.to_string(),
        })
}

/// The result for one utterance.
#[derive(Debug, Clone, Default)]
pub struct Recognition {
    /// Whisper's output; empty when the VAD found no speech or Whisper's
    /// no-speech gate fired.
    pub text: String,
    /// Samples of speech between the first and last VAD segment.
    pub speech_samples: usize,
    pub audio_samples: usize,
    pub vad_ms: f64,
    /// VAD + encoder + decoder.
    pub total_ms: f64,
    pub transcript: Transcript,
}

impl Recognition {
    pub fn has_text(&self) -> bool {
        !self.text.trim().is_empty()
    }

    pub fn audio_ms(&self) -> u64 {
        samples_ms(self.audio_samples)
    }

    pub fn speech_ms(&self) -> u64 {
        samples_ms(self.speech_samples)
    }
}

fn samples_ms(n: usize) -> u64 {
    n as u64 * 1000 / u64::from(PIPELINE_RATE)
}

/// Silero VAD + Whisper, loaded and checked.
pub struct Recognizer {
    vad: SileroVad,
    whisper: Whisper,
    seg: SegmenterConfig,
    /// tract's matrix-product thread pool (`stt.threads`), used only inside
    /// [`Recognizer::warm_up`] and [`Recognizer::recognize`].
    executor: Executor,
}

impl std::fmt::Debug for Recognizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recognizer").finish_non_exhaustive()
    }
}

impl Recognizer {
    /// Load both models from `dir` (each verified against the manifest).
    pub fn load(dir: &Path, cfg: &Config) -> Result<Self, RecognizeError> {
        Ok(Self {
            vad: SileroVad::load(&dir.join(VAD_FILE))?,
            whisper: Whisper::load(
                dir,
                cfg.stt.precision.suffix(),
                cfg.stt.max_tokens as usize,
                cfg.stt.encoder_margin_frames as usize,
            )?,
            seg: SegmenterConfig::from_config(&cfg.vad),
            executor: executor(cfg.stt.threads as usize)?,
        })
    }

    /// Run the whole graph once on a second of quiet noise, so the first
    /// visitor does not pay for tract's lazy set-up. Returns milliseconds.
    pub fn warm_up(&mut self) -> Result<f64, RecognizeError> {
        multithread_tract_scope(self.executor.clone(), || self.warm_up_here())
    }

    fn warm_up_here(&mut self) -> Result<f64, RecognizeError> {
        let t0 = Instant::now();
        let mut x: u32 = 0x1234_5678;
        let noise: Vec<f32> = (0..PIPELINE_RATE)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x as f32 / u32::MAX as f32 - 0.5) * 1e-3
            })
            .collect();
        vad::segments(&mut self.vad, &self.seg, &noise)?;
        self.whisper.transcribe(&noise)?;
        Ok(t0.elapsed().as_secs_f64() * 1000.0)
    }

    /// VAD-trim `samples` (16 kHz mono) to the span from the first to the
    /// last speech segment, then transcribe that span.
    pub fn recognize(&mut self, samples: &[f32]) -> Result<Recognition, RecognizeError> {
        multithread_tract_scope(self.executor.clone(), || self.recognize_here(samples))
    }

    fn recognize_here(&mut self, samples: &[f32]) -> Result<Recognition, RecognizeError> {
        let t0 = Instant::now();
        let segments = vad::segments(&mut self.vad, &self.seg, samples)?;
        let vad_ms = t0.elapsed().as_secs_f64() * 1000.0;
        let speech = match (segments.first(), segments.last()) {
            (Some(a), Some(b)) => {
                let end = usize::try_from(b.end)
                    .unwrap_or(usize::MAX)
                    .min(samples.len());
                let start = usize::try_from(a.start).unwrap_or(end).min(end);
                &samples[start..end]
            }
            _ => &samples[..0],
        };
        let transcript = if speech.is_empty() {
            Transcript::default()
        } else {
            self.whisper.transcribe(speech)?
        };
        Ok(Recognition {
            text: transcript.text.clone(),
            speech_samples: speech.len(),
            audio_samples: samples.len(),
            vad_ms,
            total_ms: t0.elapsed().as_secs_f64() * 1000.0,
            transcript,
        })
    }
}
