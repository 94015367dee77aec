//! The capture loop: runs on its own OS thread, reads whole periods from an
//! [`AudioSource`], and pushes fixed-size [`Frame`](super::frame::Frame)s into the SPSC queue.
//!
//! A live source (real microphone) never waits for the consumer: when the
//! queue is full the frame is dropped and counted. A non-live source (a file
//! read as fast as possible) waits instead, so simulations lose nothing.
//! Lost devices are reopened with capped exponential backoff while the state
//! reads `degraded`; the loop keeps beating its heartbeat meanwhile.
#![cfg_attr(not(test), deny(clippy::indexing_slicing))]

use super::frame::{CaptureEnds, FRAME_SAMPLES};
use crate::base::telemetry::{now_ms, AudioStats, CaptureState};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
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
    pub queues: CaptureEnds<'q>,
    /// Woken after each push.
    pub consumer: Thread,
    pub stats: &'a AudioStats,
    pub stop: &'a AtomicBool,
    /// Stop after this many device frames (for `talkie record`).
    pub max_input_frames: Option<u64>,
}

/// Sleep up to `d`, returning early (true) if `stop` is raised.
fn wait_or_stop(stop: &AtomicBool, d: Duration, beat: &AtomicU64) -> bool {
    let deadline = Instant::now() + d;
    loop {
        // A loop waiting to retry is alive: the watchdog must not fire.
        beat.store(now_ms(), Relaxed);
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
        'chunk: for chunk in period.chunks(per_frame) {
            let frames = (chunk.len() / channels) as u64;
            let mut frame = loop {
                match self.queues.free.dequeue() {
                    Some(f) => break f,
                    None if live => {
                        self.stats.frames_dropped.fetch_add(frames, Relaxed);
                        continue 'chunk;
                    }
                    None => {
                        // Woken by the audio thread when it frees a frame.
                        self.consumer.unpark();
                        std::thread::park_timeout(PARK);
                        if self.stop.load(Relaxed) {
                            return false;
                        }
                    }
                }
            };
            frame.samples.clear();
            // Cannot fail: chunk.len() <= FRAME_SAMPLES.
            let _ = frame.samples.extend_from_slice(chunk);
            // Cannot fail: `filled` has room for every frame of the pool.
            if self.queues.filled.enqueue(frame).is_err() {
                self.stats.frames_dropped.fetch_add(frames, Relaxed);
            }
            let depth = self.queues.filled.len() as u64;
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
                    let data = period.get(..frames * channels).unwrap_or(period);
                    if !self.push_period(data, channels, source.is_live()) {
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
                        tracing::warn!(
                            device,
                            xruns = n,
                            "capture overrun recovered; audio was lost"
                        );
                    }
                }
                Err(e) if e.needs_reopen() => {
                    if matches!(e, AudioError::Stalled { .. }) {
                        self.stats.stalls.fetch_add(1, Relaxed);
                    }
                    // State first: whoever reads the log line sees it.
                    self.stats.set_capture_state(CaptureState::Degraded);
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
            if wait_or_stop(self.stop, backoff, &self.stats.capture_beat_ms) {
                return false;
            }
            let attempt = self.stats.reopen_attempts.fetch_add(1, Relaxed) + 1;
            match source.reopen() {
                Ok(()) => {
                    // State first: whoever reads the log line sees it.
                    self.stats.set_capture_state(CaptureState::Running);
                    tracing::info!(device = source.name(), attempt, "microphone reopened");
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::frame::{FrameQueues, QUEUE_FRAMES};
    use talkie_hal::audio::{SampleFormat, StreamFormat};

    /// A live source that delivers `periods` periods of a ramp, then ends.
    struct Scripted {
        periods: usize,
        errors: Vec<AudioError>,
        reopens: usize,
        live: bool,
    }

    impl AudioSource for Scripted {
        fn name(&self) -> &str {
            "scripted"
        }
        fn format(&self) -> StreamFormat {
            StreamFormat {
                rate: 48_000,
                channels: 2,
                sample: SampleFormat::S16,
                period_frames: 512,
            }
        }
        fn is_live(&self) -> bool {
            self.live
        }
        fn read_period(&mut self, out: &mut [f32]) -> Result<usize, AudioError> {
            if let Some(e) = self.errors.pop() {
                return Err(e);
            }
            if self.periods == 0 {
                return Err(AudioError::EndOfStream);
            }
            self.periods -= 1;
            out.fill(0.25);
            Ok(512)
        }
        fn reopen(&mut self) -> Result<(), AudioError> {
            self.reopens += 1;
            Ok(())
        }
    }

    fn run(source: &mut Scripted, queues: &mut FrameQueues, stats: &AudioStats) -> CaptureEnd {
        let stop = AtomicBool::new(false);
        let (ends, _audio) = queues.split();
        let mut ctx = CaptureContext {
            queues: ends,
            consumer: std::thread::current(),
            stats,
            stop: &stop,
            max_input_frames: None,
        };
        ctx.run(source, &mut vec![0.0; 1024])
    }

    #[test]
    fn full_queue_drops_and_counts_without_blocking() {
        let mut queue = FrameQueues::new();
        let stats = AudioStats::default();
        // Nobody consumes: 1000 periods of 512 stereo frames = 1000 queue frames.
        let mut source = Scripted {
            periods: 1000,
            errors: vec![],
            reopens: 0,
            live: true,
        };
        let end = run(&mut source, &mut queue, &stats);
        assert!(matches!(end, CaptureEnd::EndOfStream), "{end:?}");
        let s = stats.snapshot();
        let held = QUEUE_FRAMES as u64;
        assert_eq!(queue.filled_len() as u64, held);
        assert_eq!(s.frames_captured, 1000 * 512);
        assert_eq!(s.frames_dropped, (1000 - held) * 512);
        assert_eq!(s.queue_high_water, held);
    }

    #[test]
    fn xruns_are_counted_and_lost_devices_reopened() {
        let mut queue = FrameQueues::new();
        let stats = AudioStats::default();
        let device = || "hw:9".to_owned();
        let mut source = Scripted {
            periods: 3,
            errors: vec![
                AudioError::Xrun { device: device() },
                AudioError::Disconnected {
                    device: device(),
                    reason: "ENODEV".into(),
                },
                AudioError::Xrun { device: device() },
            ],
            reopens: 0,
            live: true,
        };
        let end = run(&mut source, &mut queue, &stats);
        assert!(matches!(end, CaptureEnd::EndOfStream), "{end:?}");
        let s = stats.snapshot();
        assert_eq!((s.xruns, s.reopen_attempts, source.reopens), (2, 1, 1));
        assert_eq!(s.capture_state, CaptureState::Running);
        assert_eq!(queue.filled_len(), 3);
    }

    #[test]
    fn unrecoverable_errors_end_capture() {
        let mut queue = FrameQueues::new();
        let stats = AudioStats::default();
        let mut source = Scripted {
            periods: 3,
            errors: vec![AudioError::Unsupported {
                device: "x".into(),
                what: "no".into(),
            }],
            reopens: 0,
            live: true,
        };
        assert!(matches!(
            run(&mut source, &mut queue, &stats),
            CaptureEnd::Failed(AudioError::Unsupported { .. })
        ));
        assert_eq!(stats.capture_state(), CaptureState::Failed);
    }
}
