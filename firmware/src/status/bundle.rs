//! `GET /api/v1/support-bundle` (technician): what the running service
//! knows, as one `.tar.gz` ([`crate::base::support`]). Diagnostics only: what a
//! visitor said (transcript text, the agent's replies, dead letters'
//! bodies) stays on the board; every configured secret is scrubbed.

use super::reply::peer;
use super::*;
use crate::base::support::Bundle;

/// Dead letters listed in a bundle (newest first; ids and reasons only).
const DEAD_LETTERS_IN_BUNDLE: u32 = 100;

/// What [`bundle`] lists of the outbox's dead letters, or why it could not.
type DeadLetters = Result<Vec<serde_json::Value>, String>;

pub(super) async fn support_bundle(State(s): State<Arc<Shared>>, req: Request) -> Response {
    tracing::info!(client = %peer(&req), "support bundle requested");
    let dead: Option<DeadLetters> = match s.outbox.get().cloned() {
        None => None,
        Some(h) => Some(
            crate::agent::link::with_outbox(&h.outbox, |o| o.dead_letters(DEAD_LETTERS_IN_BUNDLE))
                .await
                .map(|items| {
                    items
                        .into_iter()
                        .map(|d| {
                            serde_json::json!({
                                "id": d.id,
                                "failed_ms": d.failed_ms,
                                "status": d.status,
                                "reason": d.reason,
                                "body_bytes": d.body.len(),
                            })
                        })
                        .collect()
                })
                .map_err(|e| e.to_string()),
        ),
    };
    let shared = Arc::clone(&s);
    let made =
        tokio::task::spawn_blocking(move || bundle(&shared, dead).finish(unix_ms() / 1000)).await;
    match made {
        Ok(Ok(bytes)) => {
            let name = format!(
                "attachment; filename=\"talkie-support-{}-{}.tar.gz\"",
                file_safe(&s.device_id),
                unix_ms() / 1000
            );
            let mut r = ([(header::CONTENT_TYPE, "application/gzip")], bytes).into_response();
            if let Ok(v) = HeaderValue::from_str(&name) {
                r.headers_mut().insert(header::CONTENT_DISPOSITION, v);
            }
            r
        }
        Ok(Err(e)) => json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("support bundle task failed: {e}"),
        ),
    }
}

/// A device id as part of a file name: letters, digits, `-` and `_`.
fn file_safe(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect()
}

/// The entries of a running service's bundle.
pub(super) fn bundle(s: &Shared, dead_letters: Option<DeadLetters>) -> Bundle {
    let mut b = Bundle::new();
    for secret in s
        .secrets
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
    {
        b.secret(secret.expose());
    }
    let mut status = status_json(s, true);
    if let Some(agent) = status.get_mut("agent").and_then(|a| a.as_object_mut()) {
        // The agent's answer to a visitor.
        agent.remove("last_reply");
    }
    b.json("status.json", &status);
    b.file("metrics.txt", metrics::render(s));
    b.json("board.json", &s.board_health());
    let (warnings, errors) = s.logs.totals();
    b.json(
        "logs.json",
        &serde_json::json!({
            "lines": without_transcript_text(s.logs.lines()),
            "problems": without_transcript_text(s.logs.problems()),
            "warnings_total": warnings,
            "errors_total": errors,
        }),
    );
    b.json(
        "config.json",
        &serde_json::json!({
            "effective": *s.config.read().unwrap_or_else(PoisonError::into_inner),
            "pending_restart": *s.pending_restart.read().unwrap_or_else(PoisonError::into_inner),
        }),
    );
    let transcripts: Vec<serde_json::Value> = s
        .recent
        .list()
        .into_iter()
        .map(|t| {
            let chars = t.text.chars().count();
            let mut v = serde_json::to_value(&t).unwrap_or_default();
            if let Some(o) = v.as_object_mut() {
                o.remove("text");
                o.insert("text_chars".into(), chars.into());
            }
            v
        })
        .collect();
    b.json("transcripts.json", &transcripts);
    let agent = status.get("agent").cloned().unwrap_or_default();
    b.json(
        "outbox.json",
        &serde_json::json!({
            "path": s.outbox_path,
            "summary": agent,
            "dead_letters": match dead_letters {
                None => serde_json::json!(null),
                Some(Ok(items)) => serde_json::json!(items),
                Some(Err(e)) => serde_json::json!({ "error": e }),
            },
        }),
    );
    b.json("calibration.json", &s.calibration.get());
    b.json("runs.json", &s.runs.get());
    b.json("versions.json", &versions(s));
    // Opt-in recordings (debug.keep_utterances), when on: they are what the
    // technician turned them on for.
    if let Some(r) = &s.recordings {
        for e in r.list(unix_ms()) {
            if let Ok(bytes) = r.wav_path(&e.name).and_then(|p| {
                std::fs::read(&p).map_err(|source| crate::ptt::recordings::RecordingError::Read {
                    path: p,
                    source,
                })
            }) {
                b.file(&format!("recordings/{}.wav", e.name), bytes);
                b.json(&format!("recordings/{}.json", e.name), &e.meta);
            }
        }
    }
    b
}

/// talkie, the models, the system it runs on.
fn versions(s: &Shared) -> serde_json::Value {
    let read = |p: &str| {
        std::fs::read_to_string(s.board.root.join(p))
            .ok()
            .map(|t| t.trim().chars().take(2000).collect::<String>())
    };
    serde_json::json!({
        "talkie": crate::VERSION,
        "models": s.models.get(),
        "updates": s.updates.read().map(|u| u.clone()).unwrap_or_default(),
        "kernel": read("proc/sys/kernel/osrelease"),
        "os_release": read("etc/os-release"),
        "device_tree_model": read("proc/device-tree/model").map(|m| m.trim_end_matches('\0').to_owned()),
    })
}

/// Log lines with a transcript's words taken out
/// ([`crate::base::support::omit_transcript_text`]).
fn without_transcript_text(
    lines: Vec<crate::base::logring::LogLine>,
) -> Vec<crate::base::logring::LogLine> {
    lines
        .into_iter()
        .map(|mut l| {
            if l.target == "talkie::transcript" {
                l.message = crate::base::support::omit_transcript_text(&l.message)
                    .unwrap_or_else(|| "transcript (text omitted)".to_owned());
            }
            l
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The transcript line as the ring records it (same fields, same order
    /// as `ptt`'s) loses its words; other lines stay.
    #[test]
    fn the_log_rings_transcript_lines_lose_their_words() {
        use tracing_subscriber::layer::SubscriberExt;
        let ring = LogRing::default();
        let subscriber =
            tracing_subscriber::registry().with(crate::base::logring::layer(ring.clone()));
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(
                target: "talkie::transcript",
                id = 7,
                text = %"where is the museum shop",
                audio_ms = 2100,
                speech_ms = 1500,
                "transcript"
            );
            tracing::info!(target: "talkie::ptt", id = 7, "delivered");
        });
        let lines = without_transcript_text(ring.lines());
        let text: Vec<&str> = lines.iter().map(|l| l.message.as_str()).collect();
        assert_eq!(
            text,
            [
                "transcript id=7 text=<omitted> audio_ms=2100 speech_ms=1500",
                "delivered id=7"
            ]
        );
    }
}
