//! The recognition worker (`talkie-stt`): takes utterances from a bounded
//! queue, runs VAD trim + Whisper, reports to the controller and returns
//! the utterance buffer to the listener's pool.
#![cfg_attr(not(test), deny(clippy::indexing_slicing))]

use super::listener::{Job, SpecShared, Speculative, Utterance, UtteranceInfo};
use super::ControlEvent;
use crate::base::telemetry::{now_ms, PttStats};
use crate::stt::{Recognition, RecognizeError, Recognizer};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Jobs waiting for the worker: the state machine never submits more than
/// one utterance beyond the one being recognized; a dropped or committed
/// speculative run adds one message before them.
pub const QUEUE: usize = 4;

/// Longest one utterance may take to recognize, whatever the board: past
/// it, recognition stops at the next decoder step and the utterance counts
/// as a recognition failure (the error blink), instead of the watchdog
/// restarting the service. A 30 s press on a Zero 2 W with fp32 takes
/// well under a minute.
pub const RECOGNITION_LIMIT: Duration = Duration::from_secs(120);

/// A finished recognition, for the controller.
#[derive(Debug)]
pub struct Recognized {
    pub id: u64,
    pub result: Recognition,
    pub pressed_at: Instant,
    pub ended_at: Instant,
    pub done_at: Instant,
    pub auto_stopped: bool,
    pub speculative: Speculative,
    /// The utterance as a picture for the page.
    pub trace: Option<super::trace::UtteranceTrace>,
    /// The audio recognized, 16-bit, when `debug.keep_utterances` is on.
    pub audio: Option<Vec<i16>>,
}

/// What the worker keeps of an utterance once it is recognized (copied
/// before its buffer goes back to the pool).
#[derive(Default)]
struct Kept {
    trace: Option<super::trace::UtteranceTrace>,
    audio: Option<Vec<i16>>,
}

/// Why a job gave no transcript.
#[derive(Debug, thiserror::Error)]
enum JobError {
    #[error(transparent)]
    Recognize(#[from] RecognizeError),
    #[error("the speculative result was not there at release")]
    SpeculationMissing,
}

/// A speculative run's outcome, kept until the listener commits or drops it.
struct Parked {
    spec: u64,
    outcome: Result<Recognition, RecognizeError>,
    /// Stopped at a decoder step because the listener no longer wanted it.
    abandoned: bool,
    samples: Vec<f32>,
    run_us: u64,
}

/// The worker's state between jobs.
struct Worker {
    recognizer: Recognizer,
    pool: SyncSender<Vec<f32>>,
    events: tokio::sync::mpsc::Sender<ControlEvent>,
    stats: Arc<PttStats>,
    shared: Arc<SpecShared>,
    /// Recognition stops at the next decoder step past this (ms since epoch).
    deadline: Arc<AtomicU64>,
    /// The speculative job being run (0: a real utterance).
    running: Arc<AtomicU64>,
    parked: Option<Parked>,
    /// Copy each utterance's audio for `debug.keep_utterances`.
    keep_audio: bool,
}

/// The worker thread body. Ends when the listener (the queue's sender) is
/// gone.
pub fn run(
    mut recognizer: Recognizer,
    queue: Receiver<Job>,
    pool: SyncSender<Vec<f32>>,
    events: tokio::sync::mpsc::Sender<ControlEvent>,
    stats: Arc<PttStats>,
    shared: Arc<SpecShared>,
    keep_audio: bool,
) {
    let wedge_at = crate::base::supervisor::test_wedge("stt").map(|d| Instant::now() + d);
    // The loop beats at every decoder step, so a long recognition on a slow
    // board is not mistaken for a hung one; the deadline stops a runaway,
    // and a speculative run stops once the listener no longer wants it.
    let deadline = Arc::new(AtomicU64::new(u64::MAX));
    let running = Arc::new(AtomicU64::new(0));
    {
        let (stats, deadline, running, shared) = (
            Arc::clone(&stats),
            Arc::clone(&deadline),
            Arc::clone(&running),
            Arc::clone(&shared),
        );
        recognizer.set_step_hook(Some(Box::new(move || {
            let now = now_ms();
            stats.stt_beat_ms.store(now, Relaxed);
            let spec = running.load(Ordering::Acquire);
            if now > deadline.load(Relaxed) {
                Err("longer than the recognition time limit")
            } else if spec != 0 && shared.wanted.load(Relaxed) != spec {
                Err("speculative run abandoned: speech came back")
            } else {
                Ok(())
            }
        })));
    }
    let mut w = Worker {
        recognizer,
        pool,
        events,
        stats,
        shared,
        deadline,
        running,
        parked: None,
        keep_audio,
    };
    loop {
        if wedge_at.is_some_and(|t| Instant::now() >= t) {
            tracing::warn!("test hook TALKIE_TEST_WEDGE: the stt loop stops beating and working");
            // Still ends with the listener, so shutdown joins it.
            while !matches!(
                queue.recv_timeout(Duration::from_millis(500)),
                Err(RecvTimeoutError::Disconnected)
            ) {}
            return;
        }
        w.stats.stt_beat_ms.store(now_ms(), Relaxed);
        let job = match queue.recv_timeout(Duration::from_millis(500)) {
            Ok(j) => j,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let go_on = match job {
            Job::Recognize(utt) => w.recognize(utt),
            Job::Speculate { spec, samples } => {
                w.speculate(spec, samples);
                true
            }
            Job::Commit {
                spec,
                info,
                audio_samples,
            } => w.commit(spec, info, audio_samples),
            Job::Drop { spec } => {
                w.drop_spec(spec);
                true
            }
        };
        if !go_on {
            return;
        }
        crate::base::telemetry::release_free_memory();
    }
}

impl Worker {
    /// Recognize with the time limit; the step hook beats meanwhile.
    fn timed(&mut self, samples: &[f32]) -> Result<Recognition, RecognizeError> {
        let limit_ms = u64::try_from(RECOGNITION_LIMIT.as_millis()).unwrap_or(u64::MAX);
        self.deadline
            .store(now_ms().saturating_add(limit_ms), Relaxed);
        let outcome = self.recognizer.recognize(samples);
        self.deadline.store(u64::MAX, Relaxed);
        self.stats.stt_beat_ms.store(now_ms(), Relaxed);
        outcome
    }

    fn recognize(&mut self, utt: Utterance) -> bool {
        let outcome = self.timed(&utt.samples);
        let Utterance { info, samples } = utt;
        let kept = self.keep(&info, &samples, samples.len(), outcome.as_ref().ok());
        // Cannot fail: the pool has room for every buffer.
        let _ = self.pool.try_send(samples);
        self.report(info, outcome.map_err(JobError::from), kept)
    }

    /// The picture (and, when recordings are on, the audio) of a recognized
    /// utterance.
    fn keep(
        &self,
        info: &UtteranceInfo,
        samples: &[f32],
        audio_samples: usize,
        result: Option<&Recognition>,
    ) -> Kept {
        let Some(r) = result else {
            return Kept::default();
        };
        Kept {
            trace: Some(super::trace::UtteranceTrace::new(
                info.id,
                samples,
                audio_samples,
                info.preroll_samples,
                info.auto_stopped,
                &r.segments,
            )),
            audio: self.keep_audio.then(|| {
                samples
                    .iter()
                    .map(|x| (x.clamp(-1.0, 1.0) * 32767.0) as i16)
                    .collect()
            }),
        }
    }

    fn speculate(&mut self, spec: u64, samples: Vec<f32>) {
        if let Some(old) = self.parked.take() {
            // The listener resolves every run before the next; a bug if not.
            tracing::error!(spec = old.spec, "speculative run never resolved; dropped");
            self.settle(old, false);
        }
        self.stats.spec_runs.fetch_add(1, Relaxed);
        let t0 = Instant::now();
        self.running.store(spec, Ordering::Release);
        let outcome = self.timed(&samples);
        self.running.store(0, Ordering::Release);
        let abandoned = outcome.is_err() && self.shared.wanted.load(Relaxed) != spec;
        self.parked = Some(Parked {
            spec,
            outcome,
            abandoned,
            samples,
            run_us: u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX),
        });
    }

    /// The speculative run `spec` is the utterance `info`.
    fn commit(&mut self, spec: u64, info: UtteranceInfo, audio_samples: usize) -> bool {
        let mut kept = Kept::default();
        let outcome = match self.parked.take() {
            Some(p) if p.spec == spec && !p.abandoned => {
                let Parked {
                    outcome, samples, ..
                } = p;
                kept = self.keep(&info, &samples, audio_samples, outcome.as_ref().ok());
                let _ = self.pool.try_send(samples);
                self.stats.spec_hits.fetch_add(1, Relaxed);
                outcome
                    .map(|mut r| {
                        r.audio_samples = audio_samples;
                        r
                    })
                    .map_err(JobError::from)
            }
            other => {
                tracing::error!(spec, id = info.id, "speculative result missing at release");
                if let Some(p) = other {
                    self.settle(p, false);
                }
                Err(JobError::SpeculationMissing)
            }
        };
        self.report(info, outcome, kept)
    }

    fn drop_spec(&mut self, spec: u64) {
        match self.parked.take() {
            Some(p) if p.spec == spec => self.settle(p, true),
            other => {
                tracing::error!(spec, "dropped speculative run was not parked");
                self.parked = other;
            }
        }
    }

    /// A speculative run whose result is not used: count it, give its
    /// buffer back.
    fn settle(&mut self, p: Parked, resolved: bool) {
        let counter = if p.abandoned {
            &self.stats.spec_abandoned
        } else {
            &self.stats.spec_misses
        };
        counter.fetch_add(1, Relaxed);
        self.stats.spec_wasted_us.fetch_add(p.run_us, Relaxed);
        let _ = self.pool.try_send(p.samples);
        if resolved {
            self.shared.finished();
        }
    }

    /// Tell the controller; false when it is gone.
    fn report(
        &mut self,
        info: UtteranceInfo,
        outcome: Result<Recognition, JobError>,
        kept: Kept,
    ) -> bool {
        let done_at = Instant::now();
        let UtteranceInfo {
            id,
            pressed_at,
            ended_at,
            auto_stopped,
            hold,
            speculative,
            preroll_samples: _,
        } = info;
        let ev = match outcome {
            Ok(result) => {
                self.stats.stt.observe_ms(result.total_ms);
                ControlEvent::Recognized(Box::new(Recognized {
                    id,
                    result,
                    pressed_at,
                    ended_at,
                    done_at,
                    auto_stopped,
                    speculative,
                    trace: kept.trace,
                    audio: kept.audio,
                }))
            }
            Err(e) => {
                self.stats.stt_failures.fetch_add(1, Relaxed);
                tracing::error!(id, error = %e, "recognition failed");
                ControlEvent::RecognitionFailed
            }
        };
        let sent = self.events.blocking_send(ev);
        self.shared.finished();
        // A simulated microphone resumes once the controller has the result.
        drop(hold);
        sent.is_ok()
    }
}
