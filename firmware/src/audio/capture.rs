//! The capture loop: runs on its own OS thread, reads whole periods from an
//! [`AudioSource`], and pushes fixed-size [`Frame`]s into the SPSC queue.
//!
//! A live source (real microphone) never waits for the consumer: when the
//! queue is full the frame is dropped and counted. A non-live source (a file
//! read as fast as possible) waits instead, so simulations lose nothing.
//! Lost devices are reopened with capped exponential backoff while the state
//! reads `degraded`; the loop keeps beating its heartbeat meanwhile.

use super::frame::{Frame, FrameProducer, FRAME_SAMPLES};
use crate::telemetry::{now_ms, AudioStats, CaptureState};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::thread::Thread;
use std::time::{Duration, Instant};
use talkie_hal::audio::{AudioError, AudioSource};

/// First wait before reopening a lost device.
pub const REOPEN_BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest wait between reopen attempts.
pub const REOPEN_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Longest a parked capture thread sleeps before looking at the stop flag.
const PARK: Duration = Duration::from_millis(100);

/// Why the capture loop returned.
#[derive(Debug)]
pub enum CaptureEnd {
    /// The stop flag was raised.
    Stopped,
    /// The source has no more audio (simulated sources).
    EndOfStream,
    /// `max_input_frames` were captured.
    LimitReached,
    /// The source failed in a way reopening cannot fix.
    Failed(AudioError),
}

/// What the capture loop needs besides the source.
pub struct CaptureContext<'a, 'q> {
    pub producer: FrameProducer<'q>,
    /// Woken after each push.
    pub consumer: Thread,
    pub stats: &'a AudioStats,
    pub stop: &'a AtomicBool,
    /// Stop after this many device frames (for `talkie record`).
    pub max_input_frames: Option<u64>,
}

/// Sleep up to `d`, returning early (true) if `stop` is raised.
fn wait_or_stop(stop: &AtomicBool, d: Duration) -> bool {
    let deadline = Instant::now() + d;
    loop {
        if stop.load(Relaxed) {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        std::thread::park_timeout((deadline - now).min(PARK));
    }
}

impl CaptureContext<'_, '_> {
    /// Split one period into frames and queue them. Returns false if asked
    /// to stop while waiting for room (non-live sources only).
    fn push_period(&mut self, period: &[f32], channels: usize, live: bool) -> bool {
        // Whole sample frames per queue frame.
        let per_frame = FRAME_SAMPLES / channels * channels;
        for chunk in period.chunks(per_frame) {
            let mut frame = Frame::default();
            // Cannot fail: chunk.len() <= FRAME_SAMPLES.
            if frame.samples.extend_from_slice(chunk).is_err() {
                self.stats
                    .frames_dropped
                    .fetch_add((chunk.len() / channels) as u64, Relaxed);
                continue;
            }
            loop {
                match self.producer.enqueue(frame) {
                    Ok(()) => break,
                    Err(back) if live => {
                        drop(back);
                        self.stats
                            .frames_dropped
                            .fetch_add((chunk.len() / channels) as u64, Relaxed);
                        break;
                    }
                    Err(back) => {
                        frame = back;
                        self.consumer.unpark();
                        if wait_or_stop(self.stop, PARK) {
                            return false;
                        }
                    }
                }
            }
            let depth = self.producer.len() as u64;
            self.stats.queue_high_water.fetch_max(depth, Relaxed);
            self.consumer.unpark();
        }
        true
    }

    /// Run until stopped, the source ends, the limit is reached, or the
    /// source fails for good.
    pub fn run(&mut self, source: &mut dyn AudioSource, period: &mut [f32]) -> CaptureEnd {
        let format = source.format();
        let channels = usize::from(format.channels);
        let mut captured: u64 = 0;
        self.stats.set_capture_state(CaptureState::Running);
        loop {
            self.stats.capture_beat_ms.store(now_ms(), Relaxed);
            if self.stop.load(Relaxed) {
                return CaptureEnd::Stopped;
            }
            match source.read_period(period) {
                Ok(frames) => {
                    let frames = match self.max_input_frames {
                        Some(max) => frames.min((max - captured) as usize),
                        None => frames,
                    };
                    captured += frames as u64;
                    self.stats.frames_captured.fetch_add(frames as u64, Relaxed);
                    if !self.push_period(&period[..frames * channels], channels, source.is_live()) {
                        return CaptureEnd::Stopped;
                    }
                    if self.max_input_frames.is_some_and(|max| captured >= max) {
                        return CaptureEnd::LimitReached;
                    }
                }
                Err(AudioError::EndOfStream) => return CaptureEnd::EndOfStream,
                Err(AudioError::Xrun { device }) => {
                    let n = self.stats.xruns.fetch_add(1, Relaxed) + 1;
                    if n.is_power_of_two() {
                        tracing::warn!(device, xruns = n, "capture overrun recovered; audio was lost");
                    }
                }
                Err(e) if e.needs_reopen() => {
                    if matches!(e, AudioError::Stalled { .. }) {
                        self.stats.stalls.fetch_add(1, Relaxed);
                    }
                    tracing::warn!(error = %e, "microphone lost; reopening");
                    if !self.reopen(source) {
                        return CaptureEnd::Stopped;
                    }
                }
                Err(e) => {
                    self.stats.set_capture_state(CaptureState::Failed);
                    return CaptureEnd::Failed(e);
                }
            }
        }
    }

    /// Reopen with capped backoff until it works (true) or stop (false).
    fn reopen(&mut self, source: &mut dyn AudioSource) -> bool {
        self.stats.set_capture_state(CaptureState::Degraded);
        let mut backoff = REOPEN_BACKOFF_MIN;
        loop {
            self.stats.capture_beat_ms.store(now_ms(), Relaxed);
            if wait_or_stop(self.stop, backoff) {
                return false;
            }
            let attempt = self.stats.reopen_attempts.fetch_add(1, Relaxed) + 1;
            match source.reopen() {
                Ok(()) => {
                    tracing::info!(device = source.name(), attempt, "microphone reopened");
                    self.stats.set_capture_state(CaptureState::Running);
                    return true;
                }
                Err(e) => {
                    tracing::debug!(error = %e, attempt, ?backoff, "reopen failed");
                    backoff = (backoff * 2).min(REOPEN_BACKOFF_MAX);
                }
            }
        }
    }
}

/// Ask for SCHED_FIFO at `priority` for the calling thread.
pub fn set_realtime_priority(priority: u8) -> std::io::Result<()> {
    let param = libc::sched_param {
        sched_priority: i32::from(priority),
    };
    // SAFETY: pthread_self() is always a valid handle for the calling
    // thread, and `param` outlives the call.
    let rc = unsafe { libc::pthread_setschedparam(libc::pthread_self(), libc::SCHED_FIFO, &param) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::from_raw_os_error(rc))
    }
}
