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

/// `GET /api/v1/charts`: the pictures' data.
#[derive(Debug, serde::Serialize)]
pub struct ChartsDoc {
    /// `[unix ms, rms dBFS, peak dBFS]`, oldest first, every
    /// `level_every_ms`, at most [`LEVEL_POINTS`].
    pub level_history: Vec<[f64; 3]>,
    pub level_every_ms: u64,
    /// The last transcripts' release → text, oldest first.
    pub release_to_text: Vec<ReleaseToText>,
    /// The last utterance's picture; technician only (its shape is derived
    /// from what a visitor said).
    pub last_utterance: Option<crate::ptt::trace::UtteranceTrace>,
}

/// One transcript's bar in the release → text chart.
#[derive(Debug, serde::Serialize)]
pub struct ReleaseToText {
    pub id: u64,
    pub at_ms: u64,
    pub release_to_text_ms: f64,
    pub speculative: crate::ptt::listener::Speculative,
}

/// The charts' data; the waveform for a technician only.
pub fn charts_doc(s: &Shared, technician: bool) -> ChartsDoc {
    ChartsDoc {
        level_history: s
            .level_history
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .copied()
            .collect(),
        level_every_ms: u64::try_from(LEVEL_EVERY.as_millis()).unwrap_or(u64::MAX),
        release_to_text: s
            .recent
            .list()
            .iter()
            .map(|t| ReleaseToText {
                id: t.id,
                at_ms: t.started_at_ms,
                release_to_text_ms: t.release_to_text_ms.round(),
                speculative: t.speculative,
            })
            .collect(),
        last_utterance: if technician {
            s.recent.last_trace().map(|t| (*t).clone())
        } else {
            None
        },
    }
}

pub(super) async fn charts(State(s): State<Arc<Shared>>, req: Request) -> Response {
    match technician_or_anonymous(&s, &req) {
        Ok(tech) => Json(charts_doc(&s, tech)).into_response(),
        Err(r) => *r,
    }
}
