//! Technician endpoints for the opt-in recordings ([`crate::ptt::recordings`]):
//! list, download one WAV, delete one or all. 404 with the reason when
//! recordings are off.

use super::*;
use crate::ptt::recordings::{RecordingError, Recordings};
use axum::extract::Path;

/// Largest WAV served (a 60 s utterance is under 2 MB).
const MAX_WAV: u64 = 16 * 1024 * 1024;

fn off() -> Response {
    json_error(
        StatusCode::NOT_FOUND,
        "recordings are off (debug.keep_utterances = 0)",
    )
}

fn failed(e: &RecordingError) -> Response {
    match e {
        RecordingError::NotFound(_) => json_error(StatusCode::NOT_FOUND, e.to_string()),
        _ => json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Run `f` on the recordings off the async threads (it touches the disk).
async fn on_disk<T: Send + 'static>(
    s: &Shared,
    f: impl FnOnce(&Recordings) -> T + Send + 'static,
) -> Option<T> {
    let r = Arc::clone(s.recordings.as_ref()?);
    tokio::task::spawn_blocking(move || f(&r)).await.ok()
}

/// The `recordings` part of `/api/v1/status` (anyone: the banner says
/// speech is being kept).
pub fn summary(s: &Shared) -> super::api::RecordingsView {
    match &s.recordings {
        None => super::api::RecordingsView {
            enabled: false,
            kept: None,
            bytes: None,
            keep_utterances: None,
            keep_hours: None,
            keep_max_bytes: None,
        },
        Some(r) => {
            let (kept, bytes) = r.summary();
            let l = r.limits();
            super::api::RecordingsView {
                enabled: true,
                kept: Some(kept),
                bytes: Some(bytes),
                keep_utterances: Some(l.keep),
                keep_hours: Some(l.max_age_ms / 3_600_000),
                keep_max_bytes: Some(l.max_bytes),
            }
        }
    }
}

pub(super) async fn list(State(s): State<Arc<Shared>>) -> Response {
    match on_disk(&s, |r| r.list(unix_ms())).await {
        None => off(),
        Some(all) => Json(serde_json::json!({ "recordings": all })).into_response(),
    }
}

pub(super) async fn download(State(s): State<Arc<Shared>>, Path(name): Path<String>) -> Response {
    let read = on_disk(&s, move |r| {
        let path = r.wav_path(&name)?;
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(
            &mut std::io::Read::take(
                crate::base::private_files::open_nofollow(&path).map_err(|source| {
                    RecordingError::Read {
                        path: path.clone(),
                        source,
                    }
                })?,
                MAX_WAV,
            ),
            &mut bytes,
        )
        .map_err(|source| RecordingError::Read {
            path: path.clone(),
            source,
        })?;
        Ok::<_, RecordingError>((name, bytes))
    })
    .await;
    match read {
        None => off(),
        Some(Err(e)) => failed(&e),
        Some(Ok((name, bytes))) => (
            [
                (header::CONTENT_TYPE, "audio/wav".to_owned()),
                (
                    header::CONTENT_DISPOSITION,
                    format!("attachment; filename=\"{name}.wav\""),
                ),
            ],
            bytes,
        )
            .into_response(),
    }
}

pub(super) async fn delete_one(State(s): State<Arc<Shared>>, Path(name): Path<String>) -> Response {
    match on_disk(&s, move |r| r.delete(&name)).await {
        None => off(),
        Some(Err(e)) => failed(&e),
        Some(Ok(())) => Json(serde_json::json!({ "deleted": 1 })).into_response(),
    }
}

pub(super) async fn delete_all(State(s): State<Arc<Shared>>) -> Response {
    match on_disk(&s, Recordings::delete_all).await {
        None => off(),
        Some(n) => Json(serde_json::json!({ "deleted": n })).into_response(),
    }
}

/// Apply the age limit every [`crate::ptt::recordings::PRUNE_EVERY`] until
/// `cancel` (new recordings and listings apply it too).
pub async fn prune(s: Arc<Shared>, cancel: CancellationToken) {
    if s.recordings.is_none() {
        return;
    }
    loop {
        let _ = on_disk(&s, |r| r.prune(unix_ms())).await;
        tokio::select! {
            () = tokio::time::sleep(crate::ptt::recordings::PRUNE_EVERY) => {}
            () = cancel.cancelled() => return,
        }
    }
}
