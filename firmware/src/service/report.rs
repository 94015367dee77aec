//! What the service says about itself in the log and to systemd.

use crate::agent::AgentStats;
use crate::base::telemetry::{AudioStats, CaptureState, HistogramSnapshot, PttStats};
use std::sync::atomic::Ordering;

/// The one-line `STATUS=` for systemctl status.
pub(super) fn status_line(source: &str, audio: &AudioStats, agent: Option<&AgentStats>) -> String {
    let r = Ordering::Relaxed;
    let mic = match audio.capture_state() {
        CaptureState::Running | CaptureState::Starting => format!("listening on {source}"),
        other => format!("microphone {} ({source})", other.as_str()),
    };
    match agent {
        Some(a) => format!(
            "{mic}; agent {}; outbox {}",
            crate::agent::breaker::BreakerState::from_u8(a.breaker_state.load(r)).as_str(),
            a.outbox_depth.load(r)
        ),
        None => format!("{mic}; no agent configured"),
    }
}

/// With `--until-script-done` and an agent, the run also waits for the
/// outbox to drain (bounded by the outbox's own retry policy).
pub(super) fn outbox_drained(stats: &AgentStats, has_agent: bool) -> bool {
    !has_agent
        || (stats.outbox_depth.load(Ordering::Relaxed) == 0
            && stats.enqueued.load(Ordering::Relaxed)
                <= stats.delivered.load(Ordering::Relaxed)
                    + stats.dead_lettered.load(Ordering::Relaxed))
}

/// Log the audio counters: every second at debug level (the status page
/// shows them live), once at info when the service stops.
pub(super) fn audio(stats: &AudioStats, last: bool) {
    let s = stats.snapshot();
    macro_rules! emit {
        ($lvl:expr) => {
            tracing::event!(
                $lvl,
                state = s.capture_state.as_str(),
                level_rms_dbfs = format_args!("{:.1}", s.level_rms_dbfs),
                level_peak_dbfs = format_args!("{:.1}", s.level_peak_dbfs),
                frames_captured = s.frames_captured,
                frames_dropped = s.frames_dropped,
                xruns = s.xruns,
                reopen_attempts = s.reopen_attempts,
                "audio"
            )
        };
    }
    if last {
        emit!(tracing::Level::INFO);
    } else {
        emit!(tracing::Level::DEBUG);
    }
}

/// The push-to-talk counters and latencies, once at shutdown.
pub(super) fn summary(s: &PttStats) {
    let fmt = |h: &HistogramSnapshot| match (h.mean_ms(), h.quantile_upper_ms(0.95)) {
        (Some(m), Some(p)) => format!("mean {m:.1} ms, p95 ≤ {p} ms, n {}", h.count),
        _ => "none".to_owned(),
    };
    let r = Ordering::Relaxed;
    tracing::info!(
        presses = s.presses.load(r),
        utterances = s.utterances.load(r),
        transcripts = s.transcripts.load(r),
        too_short = s.too_short.load(r),
        no_speech = s.no_speech.load(r),
        busy_rejected = s.busy_rejected.load(r),
        stt_failures = s.stt_failures.load(r),
        tap_dropped = s.tap_dropped.load(r),
        press_to_led = %fmt(&s.press_to_led.snapshot()),
        release_to_text = %fmt(&s.release_to_text.snapshot()),
        speculative_runs = s.spec_runs.load(r),
        speculative_hits = s.spec_hits.load(r),
        speculative_discarded = s.spec_misses.load(r) + s.spec_abandoned.load(r),
        "push-to-talk summary"
    );
}

/// The LED timeline of a scripted session (the tests and the demo read it).
pub(super) fn timeline(t: Option<&talkie_hal::gpio::sim::Timeline>) {
    if let Some(t) = t {
        let line: Vec<String> = t
            .entries()
            .iter()
            .map(|(ms, s)| format!("{}@{ms}", s.as_str()))
            .collect();
        tracing::info!(timeline = %line.join(" "), "led timeline");
    }
}
