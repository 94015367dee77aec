//! Owns the two audio threads and the buffers between them.
//!
//! ```text
//! talkie-capture ──SPSC queue of Frames──▶ talkie-audio: downmix → To16k → meter → pre-roll → sink
//! ```
//! Both threads are scoped inside the `talkie-audio` thread, so the queue
//! and every buffer live exactly as long as the pipeline. Waiting is
//! `park_timeout` with a bound; the threads wake each other with `unpark`.
#![cfg_attr(not(test), deny(clippy::indexing_slicing))]

use super::capture::{set_realtime_priority, CaptureContext, CaptureEnd};
use super::frame::{FrameQueues, FRAME_SAMPLES};
use super::meter::LevelMeter;
use super::preroll::PreRoll;
use super::resample::{ResampleError, To16k};
use super::PIPELINE_RATE;
use crate::base::telemetry::{now_ms, AudioStats, CaptureState};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;
use talkie_hal::audio::{AudioError, AudioSource};

/// Longest the audio thread sleeps before looking at its flags.
const PARK: Duration = Duration::from_millis(100);

/// Whether the sink wants more audio.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkControl {
    Continue,
    /// Stop the pipeline (e.g. a recording is complete).
    Stop,
}

/// The consumer of 16 kHz mono audio. Runs on the audio thread: it must not
/// block, and should not allocate.
pub trait AudioSink: Send + 'static {
    /// `samples` are the newest 16 kHz samples; `preroll` already includes them.
    fn on_audio(&mut self, samples: &[f32], preroll: &PreRoll) -> SinkControl;
}

/// A sink that only lets the meter and pre-roll run.
#[derive(Debug, Default)]
pub struct NullSink;

impl AudioSink for NullSink {
    fn on_audio(&mut self, _: &[f32], _: &PreRoll) -> SinkControl {
        SinkControl::Continue
    }
}

/// Start-time settings of the pipeline.
#[derive(Debug, Clone, Default)]
pub struct PipelineOptions {
    /// Length of the pre-roll ring.
    pub preroll_ms: u32,
    /// SCHED_FIFO priority for the capture thread; 0 = normal scheduling.
    pub rt_priority: u8,
    /// Stop capturing after this many device frames.
    pub max_input_frames: Option<u64>,
}

/// How a pipeline ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PipelineEnd {
    /// A simulated source ran out.
    SourceEnded,
    /// [`AudioPipeline::stop`] was called.
    Stopped,
    /// The sink returned [`SinkControl::Stop`].
    SinkDone,
    /// `max_input_frames` were captured and processed.
    LimitReached,
}

/// Why a pipeline failed.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Audio(#[from] AudioError),
    #[error(transparent)]
    Resample(#[from] ResampleError),
    #[error("cannot start audio thread: {0}")]
    Spawn(std::io::Error),
    #[error("audio threads did not stop within {0:?}")]
    JoinTimeout(Duration),
    #[error("an audio thread panicked")]
    Panicked,
}

type ThreadResult<S> = Result<(PipelineEnd, S), PipelineError>;

/// A running audio path. Dropping it without [`AudioPipeline::join`] stops
/// it but does not wait.
pub struct AudioPipeline<S: AudioSink> {
    handle: Option<JoinHandle<ThreadResult<S>>>,
    stop: Arc<AtomicBool>,
    done: mpsc::Receiver<()>,
}

impl<S: AudioSink> std::fmt::Debug for AudioPipeline<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AudioPipeline")
            .field("stopping", &self.stop.load(Ordering::Relaxed))
            .finish()
    }
}

/// Everything that consumes the 16 kHz output, in order.
struct Downstream<S> {
    meter: LevelMeter,
    preroll: PreRoll,
    sink: S,
    stats: Arc<AudioStats>,
    /// The sink's latest verdict; once `Stop`, the sink sees no more audio.
    control: SinkControl,
}

impl<S: AudioSink> Downstream<S> {
    /// Hand 16 kHz samples to the meter, the pre-roll and the sink.
    fn deliver(&mut self, out: &[f32]) {
        self.meter.push(out, &self.stats);
        self.preroll.push(out);
        self.stats
            .samples_processed
            .fetch_add(out.len() as u64, Ordering::Relaxed);
        if self.control == SinkControl::Continue {
            self.control = self.sink.on_audio(out, &self.preroll);
        }
    }
}

/// State owned by the audio thread; everything allocated before start.
struct AudioLoop<S> {
    resampler: To16k,
    mono: Vec<f32>,
    down: Downstream<S>,
}

impl<S: AudioSink> AudioLoop<S> {
    /// Emit what the resampler still holds (end of a finite stream).
    fn flush(&mut self) -> Result<SinkControl, PipelineError> {
        let down = &mut self.down;
        self.resampler.flush(&mut |out| down.deliver(out))?;
        Ok(self.down.control)
    }

    /// Downmix, resample and hand on one frame. Returns the sink's verdict.
    fn process(
        &mut self,
        interleaved: &[f32],
        channels: usize,
    ) -> Result<SinkControl, PipelineError> {
        let n = (interleaved.len() / channels).min(self.mono.len());
        let Some(mono) = self.mono.get_mut(..n) else {
            return Ok(self.down.control);
        };
        if channels == 1 {
            for (m, x) in mono.iter_mut().zip(interleaved) {
                *m = *x;
            }
        } else {
            let scale = 1.0 / channels as f32;
            for (m, f) in mono.iter_mut().zip(interleaved.chunks_exact(channels)) {
                *m = f.iter().sum::<f32>() * scale;
            }
        }
        let down = &mut self.down;
        self.resampler.push(mono, &mut |out| down.deliver(out))?;
        Ok(self.down.control)
    }
}

impl<S: AudioSink> AudioPipeline<S> {
    /// Allocate every buffer, then start the capture and audio threads.
    pub fn start(
        mut source: Box<dyn AudioSource>,
        sink: S,
        opts: &PipelineOptions,
        stats: Arc<AudioStats>,
    ) -> Result<Self, PipelineError> {
        let format = source.format();
        let channels = usize::from(format.channels.max(1));
        let mut period = vec![0.0f32; format.period_frames * channels];
        let mut audio = AudioLoop {
            resampler: To16k::new(format.rate)?,
            mono: vec![0.0; FRAME_SAMPLES],
            down: Downstream {
                meter: LevelMeter::default(),
                preroll: PreRoll::new((opts.preroll_ms * PIPELINE_RATE / 1000) as usize),
                sink,
                stats: Arc::clone(&stats),
                control: SinkControl::Continue,
            },
        };
        let mut queues = FrameQueues::new();
        let stop = Arc::new(AtomicBool::new(false));
        let (done_tx, done) = mpsc::sync_channel(1);
        let opts = opts.clone();
        let thread_stop = Arc::clone(&stop);
        let handle = std::thread::Builder::new()
            .name("talkie-audio".to_owned())
            .spawn(move || {
                let stop = &*thread_stop;
                let (capture_ends, mut audio_ends) = queues.split();
                let capture_done = AtomicBool::new(false);
                let me = std::thread::current();
                let result = std::thread::scope(|scope| -> ThreadResult<S> {
                    let capture = std::thread::Builder::new()
                        .name("talkie-capture".to_owned())
                        .spawn_scoped(scope, || {
                            if opts.rt_priority > 0 {
                                match set_realtime_priority(opts.rt_priority) {
                                    Ok(()) => tracing::info!(priority = opts.rt_priority, "capture thread runs SCHED_FIFO"),
                                    Err(e) => tracing::warn!(error = %e, priority = opts.rt_priority, "SCHED_FIFO not permitted; capture runs with normal scheduling"),
                                }
                            }
                            let mut ctx = CaptureContext {
                                queues: capture_ends,
                                consumer: me.clone(),
                                stats: &stats,
                                stop,
                                max_input_frames: opts.max_input_frames,
                            };
                            let end = ctx.run(&mut *source, &mut period);
                            capture_done.store(true, Ordering::Release);
                            me.unpark();
                            end
                        })
                        .map_err(PipelineError::Spawn)?;
                    let capture_thread = capture.thread().clone();
                    let mut outcome = Ok(None);
                    'run: loop {
                        stats.audio_beat_ms.store(now_ms(), Ordering::Relaxed);
                        // Read the flag before draining, so nothing queued
                        // before the capture thread finished is left behind.
                        let finished = capture_done.load(Ordering::Acquire);
                        let mut any = false;
                        while let Some(frame) = audio_ends.filled.dequeue() {
                            any = true;
                            let control = audio.process(&frame.samples, channels);
                            // Cannot fail: `free` has room for the whole pool.
                            let _ = audio_ends.free.enqueue(frame);
                            capture_thread.unpark();
                            match control {
                                Ok(SinkControl::Continue) => {}
                                Ok(SinkControl::Stop) => {
                                    outcome = Ok(Some(PipelineEnd::SinkDone));
                                    break 'run;
                                }
                                Err(e) => {
                                    outcome = Err(e);
                                    break 'run;
                                }
                            }
                        }
                        if finished || stop.load(Ordering::Relaxed) {
                            break;
                        }
                        if !any {
                            std::thread::park_timeout(PARK);
                        }
                    }
                    stop.store(true, Ordering::Relaxed);
                    capture_thread.unpark();
                    let capture_end = capture.join().map_err(|_| PipelineError::Panicked)?;
                    let mut outcome = outcome?;
                    if outcome.is_none()
                        && matches!(capture_end, CaptureEnd::EndOfStream | CaptureEnd::LimitReached)
                        && audio.flush()? == SinkControl::Stop
                    {
                        outcome = Some(PipelineEnd::SinkDone);
                    }
                    let end = match (outcome, capture_end) {
                        (_, CaptureEnd::Failed(e)) => return Err(e.into()),
                        (Some(end), _) => end,
                        (None, CaptureEnd::EndOfStream) => PipelineEnd::SourceEnded,
                        (None, CaptureEnd::LimitReached) => PipelineEnd::LimitReached,
                        (None, CaptureEnd::Stopped) => PipelineEnd::Stopped,
                    };
                    if stats.capture_state() != CaptureState::Failed {
                        stats.set_capture_state(CaptureState::Ended);
                    }
                    Ok((end, audio.down.sink))
                });
                let _ = done_tx.send(());
                result
            })
            .map_err(PipelineError::Spawn)?;
        Ok(Self {
            handle: Some(handle),
            stop,
            done,
        })
    }

    /// Ask both threads to stop; returns at once.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = &self.handle {
            h.thread().unpark();
        }
    }

    /// True once the threads have finished (source ended, sink done, error).
    pub fn is_finished(&self) -> bool {
        self.handle.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Wait up to `timeout` for the threads to finish, returning how the
    /// pipeline ended and the sink. Does not stop the pipeline by itself.
    pub fn join(mut self, timeout: Duration) -> Result<(PipelineEnd, S), PipelineError> {
        match self.done.recv_timeout(timeout) {
            Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => {}
            Err(mpsc::RecvTimeoutError::Timeout) => {
                return Err(PipelineError::JoinTimeout(timeout))
            }
        }
        let handle = self.handle.take().ok_or(PipelineError::Panicked)?;
        handle.join().map_err(|_| PipelineError::Panicked)?
    }
}

impl<S: AudioSink> Drop for AudioPipeline<S> {
    fn drop(&mut self) {
        self.stop();
    }
}
