//! The recognition worker (`talkie-stt`): takes utterances from a bounded
//! queue, runs VAD trim + Whisper, reports to the controller and returns
//! the utterance buffer to the listener's pool.

use super::listener::Utterance;
use super::ControlEvent;
use crate::stt::{Recognition, Recognizer};
use crate::telemetry::{now_ms, PttStats};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Utterances waiting for recognition (the state machine never submits
/// more than one beyond the one being recognized).
pub const QUEUE: usize = 2;

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
}

/// The worker thread body. Ends when the listener (the queue's sender) is
/// gone.
pub fn run(
    mut recognizer: Recognizer,
    queue: Receiver<Utterance>,
    pool: SyncSender<Vec<f32>>,
    events: tokio::sync::mpsc::Sender<ControlEvent>,
    stats: Arc<PttStats>,
) {
    let wedge_at = crate::supervisor::test_wedge("stt").map(|d| Instant::now() + d);
    // The loop beats at every decoder step, so a long recognition on a slow
    // board is not mistaken for a hung one; the deadline stops a runaway.
    let deadline = Arc::new(std::sync::atomic::AtomicU64::new(u64::MAX));
    {
        let (stats, deadline) = (Arc::clone(&stats), Arc::clone(&deadline));
        recognizer.set_step_hook(Some(Box::new(move || {
            let now = now_ms();
            stats.stt_beat_ms.store(now, Relaxed);
            if now > deadline.load(Relaxed) {
                Err("longer than the recognition time limit")
            } else {
                Ok(())
            }
        })));
    }
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
        stats.stt_beat_ms.store(now_ms(), Relaxed);
        let utt = match queue.recv_timeout(Duration::from_millis(500)) {
            Ok(u) => u,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let limit_ms = u64::try_from(RECOGNITION_LIMIT.as_millis()).unwrap_or(u64::MAX);
        deadline.store(now_ms().saturating_add(limit_ms), Relaxed);
        let outcome = recognizer.recognize(&utt.samples);
        deadline.store(u64::MAX, Relaxed);
        let done_at = Instant::now();
        stats.stt_beat_ms.store(now_ms(), Relaxed);
        let Utterance {
            id,
            samples,
            pressed_at,
            ended_at,
            auto_stopped,
            hold,
        } = utt;
        // Cannot fail: the pool has room for every buffer.
        let _ = pool.try_send(samples);
        let ev = match outcome {
            Ok(result) => {
                stats.stt.observe_ms(result.total_ms);
                ControlEvent::Recognized(Box::new(Recognized {
                    id,
                    result,
                    pressed_at,
                    ended_at,
                    done_at,
                    auto_stopped,
                }))
            }
            Err(e) => {
                stats.stt_failures.fetch_add(1, Relaxed);
                tracing::error!(id, error = %e, "recognition failed");
                ControlEvent::RecognitionFailed
            }
        };
        let sent = events.blocking_send(ev);
        // A simulated microphone resumes once the controller has the result.
        drop(hold);
        if sent.is_err() {
            return;
        }
    }
}
