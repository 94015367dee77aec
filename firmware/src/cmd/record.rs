//! `talkie record`: capture N seconds through the whole audio path into a
//! 16 kHz mono WAV — the technician's microphone test.

use crate::audio::meter::dbfs;
use crate::audio::{
    open_source, wav::write_pipeline_wav, AudioPipeline, AudioSink, PipelineError, PipelineOptions,
    PreRoll, SinkControl, PIPELINE_RATE,
};
use crate::base::config::Config;
use crate::base::telemetry::AudioStats;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use talkie_hal::audio::AudioError;

/// Longest recording `talkie record` accepts, in seconds.
pub const MAX_SECONDS: f64 = 600.0;

/// Collects a fixed number of samples into a buffer reserved up front.
#[derive(Debug)]
pub struct RecordSink {
    samples: Vec<f32>,
    want: usize,
}

impl RecordSink {
    /// A sink that stops the pipeline after `want` samples.
    pub fn new(want: usize) -> Self {
        Self {
            samples: Vec::with_capacity(want),
            want,
        }
    }

    pub fn into_samples(self) -> Vec<f32> {
        self.samples
    }
}

impl AudioSink for RecordSink {
    fn on_audio(&mut self, samples: &[f32], _: &PreRoll) -> SinkControl {
        let take = (self.want - self.samples.len()).min(samples.len());
        self.samples.extend_from_slice(&samples[..take]);
        if self.samples.len() >= self.want {
            SinkControl::Stop
        } else {
            SinkControl::Continue
        }
    }
}

/// Errors of `talkie record`.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("--seconds must be more than 0 and at most {MAX_SECONDS}")]
    Seconds,
    #[error(transparent)]
    Audio(#[from] AudioError),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error("cannot write {path}: {source}")]
    Write { path: String, source: hound::Error },
}

/// Record `seconds` of 16 kHz mono to `out`; prints a one-line summary.
pub fn record(config: &Config, seconds: f64, out: &Path) -> Result<(), RecordError> {
    if !(seconds > 0.0 && seconds <= MAX_SECONDS) {
        return Err(RecordError::Seconds);
    }
    let want = (seconds * f64::from(PIPELINE_RATE)).round() as usize;
    let source = open_source(&config.audio, None)?;
    let format = source.format();
    let name = source.name().to_owned();
    tracing::info!(device = %name, %format, seconds, "recording");
    // Capture a little more than asked, to fill the resampler.
    let limit = ((seconds + 0.1) * f64::from(format.rate)).ceil() as u64;
    let stats = Arc::new(AudioStats::default());
    let pipeline = AudioPipeline::start(
        source,
        RecordSink::new(want),
        &PipelineOptions {
            preroll_ms: 0,
            rt_priority: config.audio.rt_priority,
            max_input_frames: Some(limit),
        },
        Arc::clone(&stats),
    )?;
    let (_, sink) = pipeline.join(Duration::from_secs_f64(seconds * 2.0 + 10.0))?;
    let samples = sink.into_samples();
    write_pipeline_wav(out, &samples).map_err(|source| RecordError::Write {
        path: out.display().to_string(),
        source,
    })?;
    let s = stats.snapshot();
    let got = samples.len() as f64 / f64::from(PIPELINE_RATE);
    if samples.len() < want {
        tracing::warn!(
            seconds = got,
            "the source ended before the requested length"
        );
    }
    let rms = (samples
        .iter()
        .map(|&x| f64::from(x) * f64::from(x))
        .sum::<f64>()
        / samples.len().max(1) as f64)
        .sqrt() as f32;
    let peak = samples.iter().fold(0.0f32, |p, &x| p.max(x.abs()));
    println!(
        "recorded {got:.2} s from {name} ({format}) to {}: level {:.1} dBFS rms, {:.1} dBFS peak; dropped {} frames, {} xruns",
        out.display(),
        dbfs(rms),
        dbfs(peak),
        s.frames_dropped,
        s.xruns
    );
    Ok(())
}
