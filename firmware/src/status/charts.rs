//! Pictures for the page (issue 20 item 6), as JSON the page draws with no
//! external assets: the microphone level over the last minute, release →
//! text of the last transcripts, and — for a technician — the last
//! utterance's waveform with the VAD's speech regions and the press and
//! release marks.

use super::handlers::technician_or_anonymous;
use super::*;

/// Level samples kept: two a second for a minute.
pub const LEVEL_POINTS: usize = 120;
/// How often the level is sampled.
pub const LEVEL_EVERY: Duration = Duration::from_millis(500);

/// Sample the microphone level into [`Shared::level_history`] until
/// `cancel`.
pub async fn sample_levels(s: Arc<Shared>, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(LEVEL_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = cancel.cancelled() => return,
        }
        let a = s.audio.snapshot();
        let mut h = s
            .level_history
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if h.len() == LEVEL_POINTS {
            h.pop_front();
        }
        h.push_back([
            unix_ms() as f64,
            f64::from(a.level_rms_dbfs),
            f64::from(a.level_peak_dbfs),
        ]);
    }
}

/// The charts' data; the waveform for a technician only (its shape is
/// derived from what a visitor said).
pub fn charts_json(s: &Shared, technician: bool) -> serde_json::Value {
    let levels: Vec<[f64; 3]> = s
        .level_history
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .copied()
        .collect();
    let release_to_text: Vec<serde_json::Value> = s
        .recent
        .list()
        .iter()
        .map(|t| {
            serde_json::json!({
                "id": t.id,
                "at_ms": t.started_at_ms,
                "release_to_text_ms": t.release_to_text_ms.round(),
                "speculative": t.speculative,
            })
        })
        .collect();
    serde_json::json!({
        "level_history": levels,
        "level_every_ms": LEVEL_EVERY.as_millis() as u64,
        "release_to_text": release_to_text,
        "last_utterance": if technician { s.recent.last_trace().map(|t| serde_json::json!(*t)) } else { None },
    })
}

pub(super) async fn charts(State(s): State<Arc<Shared>>, req: Request) -> Response {
    match technician_or_anonymous(&s, &req) {
        Ok(tech) => Json(charts_json(&s, tech)).into_response(),
        Err(r) => *r,
    }
}
