//! `talkie run`: the service. At this stage it runs the audio path and
//! reports levels and counters; the push-to-talk, recognition, agent and
//! status-page issues plug into it.
//!
//! Threads: `talkie-capture` and `talkie-audio` (real time, see
//! [`crate::audio`]); tokio owns signals and the periodic report.
//! Nothing blocking runs on the runtime: joining the audio threads happens
//! in `spawn_blocking` with a bound.

use crate::audio::{open_source, AudioPipeline, PipelineEnd, PipelineError, PipelineOptions};
use crate::config::Config;
use crate::telemetry::AudioStats;
use std::sync::Arc;
use std::time::Duration;
use talkie_hal::audio::AudioError;
use tokio::signal::unix::{signal, SignalKind};

/// How often `run` logs the audio level and counters.
const REPORT_EVERY: Duration = Duration::from_secs(1);
/// How long the audio threads get to stop after a signal.
const STOP_BUDGET: Duration = Duration::from_secs(5);

/// Errors that end `talkie run`.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error(transparent)]
    Audio(#[from] AudioError),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error("audio threads could not be joined: {0}")]
    Join(String),
}

/// Run the service until SIGINT/SIGTERM or until a simulated source ends.
pub fn run(config: &Config) -> Result<(), RunError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("talkie-rt")
        .enable_all()
        .build()
        .map_err(RunError::Runtime)?;
    rt.block_on(serve(config))
}

async fn serve(config: &Config) -> Result<(), RunError> {
    let mut sigterm = signal(SignalKind::terminate()).map_err(RunError::Signals)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(RunError::Signals)?;
    let stats = Arc::new(AudioStats::default());
    let source = open_source(&config.audio)?;
    tracing::info!(
        device_id = %config.device.id,
        source = source.name(),
        format = %source.format(),
        "audio source open"
    );
    let pipeline = AudioPipeline::start(
        source,
        crate::audio::pipeline::NullSink,
        &PipelineOptions {
            preroll_ms: config.audio.preroll_ms,
            rt_priority: config.audio.rt_priority,
            max_input_frames: None,
        },
        Arc::clone(&stats),
    )?;
    let mut tick = tokio::time::interval(REPORT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                report(&stats);
                if pipeline.is_finished() {
                    break;
                }
            }
            _ = sigterm.recv() => {
                tracing::info!("SIGTERM: shutting down");
                break;
            }
            _ = sigint.recv() => {
                tracing::info!("SIGINT: shutting down");
                break;
            }
        }
    }
    pipeline.stop();
    let (end, _) = tokio::task::spawn_blocking(move || pipeline.join(STOP_BUDGET))
        .await
        .map_err(|e| RunError::Join(e.to_string()))??;
    report(&stats);
    match end {
        PipelineEnd::SourceEnded => tracing::info!("audio source ended"),
        other => tracing::info!(end = ?other, "stopped"),
    }
    Ok(())
}

fn report(stats: &AudioStats) {
    let s = stats.snapshot();
    tracing::info!(
        state = s.capture_state.as_str(),
        level_rms_dbfs = format_args!("{:.1}", s.level_rms_dbfs),
        level_peak_dbfs = format_args!("{:.1}", s.level_peak_dbfs),
        frames_captured = s.frames_captured,
        frames_dropped = s.frames_dropped,
        xruns = s.xruns,
        reopen_attempts = s.reopen_attempts,
        "audio"
    );
}
