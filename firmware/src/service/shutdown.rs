//! Shutdown: the utterance already submitted is finished (within
//! `ptt.finish_on_stop_ms`) so its transcript reaches the outbox, then the
//! tasks and every thread are joined, each within [`STOP_BUDGET`].

use super::wiring::Threads;
use super::{Context, ServiceError, STOP_BUDGET};
use crate::audio::{AudioPipeline, PipelineEnd};
use crate::base::config::Config;
use crate::base::supervisor::Notifier;
use crate::ptt::indicator::LedMsg;
use crate::ptt::listener::Command;
use crate::ptt::{ControlEvent, Controller};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// No more presses; wait (bounded) for the utterance in flight.
pub(super) async fn finish_in_flight(
    config: &Config,
    controller: &mut Controller,
    events: &mut tokio::sync::mpsc::Receiver<ControlEvent>,
    button_stop: &AtomicBool,
) {
    button_stop.store(true, Ordering::Relaxed);
    if !controller.in_flight() {
        return;
    }
    // ptt.finish_on_stop_ms: how long an utterance already submitted may
    // take to be recognized and committed to the outbox.
    let budget = Duration::from_millis(config.ptt.finish_on_stop_ms.into());
    tracing::info!(?budget, "finishing the utterance in progress");
    let deadline = tokio::time::Instant::now() + budget;
    while controller.in_flight() {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(
                ev @ (ControlEvent::Recognized(_)
                | ControlEvent::RecognitionFailed
                | ControlEvent::Stored { .. }
                | ControlEvent::CaptureEnded),
            )) => controller.handle(ev),
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(_) => {
                tracing::warn!("the utterance in progress did not finish in time; it is dropped");
                break;
            }
        }
    }
}

/// End the status server, the probe and the agent link (the request in
/// flight is abandoned; its item stays in the outbox).
pub(super) async fn end_tasks(ctx: &Context) {
    ctx.cancel.cancel();
    ctx.tasks.close();
    if tokio::time::timeout(STOP_BUDGET, ctx.tasks.wait())
        .await
        .is_err()
    {
        tracing::error!("the status server or agent link did not stop within {STOP_BUDGET:?}");
    }
}

/// Stop the audio path and join every push-to-talk thread.
pub(super) async fn join_all(
    pipeline: AudioPipeline<crate::ptt::listener::TapSink>,
    threads: Threads,
) -> Result<PipelineEnd, ServiceError> {
    pipeline.stop();
    let (end, _) = blocking("joining the audio path", move || pipeline.join(STOP_BUDGET)).await??;
    blocking("joining the push-to-talk threads", move || {
        stop_threads(threads)
    })
    .await??;
    Ok(end)
}

/// Tell systemd the last state (bounded).
pub(super) async fn finish_notifier(notifier: Notifier) {
    let _ = blocking("the notify socket", move || {
        notifier.finish(Duration::from_secs(1));
    })
    .await;
}

async fn blocking<T: Send + 'static>(
    what: &'static str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ServiceError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|source| ServiceError::Task { what, source })
}

fn stop_threads(t: Threads) -> Result<(), ServiceError> {
    t.button_stop.store(true, Ordering::Relaxed);
    let _ = t.listener_tx.try_send(Command::Stop);
    // The listener owns the recognition queue's sender: once it is gone,
    // the worker finishes the utterance in hand and ends.
    t.listener.join(STOP_BUDGET)?;
    t.stt.join(STOP_BUDGET)?;
    t.button.join(STOP_BUDGET)?;
    let _ = t.leds_tx.send(LedMsg::Stop);
    t.leds.join(STOP_BUDGET)?;
    Ok(())
}
