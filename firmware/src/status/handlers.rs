//! The request handlers. They read atomics and snapshots, or hand a request
//! to the service through its narrow handles ([`crate::ptt::PttControl`],
//! the reload channel, the outbox handle); none blocks the audio or
//! recognition threads.

use super::reply::{denied, peer, too_many};
use super::*;

pub(super) async fn healthz() -> &'static str {
    "ok\n"
}
pub(super) async fn readyz(State(s): State<Arc<Shared>>) -> Response {
    let why = readiness(&s);
    let body = serde_json::json!({ "ready": why.is_empty(), "reasons": why }).to_string();
    let code = if why.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}
pub(super) async fn metrics_handler(State(s): State<Arc<Shared>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics::render(&s),
    )
        .into_response()
}
pub(super) async fn status_handler(State(s): State<Arc<Shared>>, req: Request) -> Response {
    match technician_or_anonymous(&s, &req) {
        Ok(tech) => {
            let mut r = Json(status_json(&s, tech)).into_response();
            if s.auth().access(req.headers()) == Access::Expired {
                // The page sees `access: anonymous` and shows the login.
                r.headers_mut().insert(
                    header::SET_COOKIE,
                    HeaderValue::from_static(auth::CLEAR_COOKIE),
                );
            }
            r
        }
        Err(r) => *r,
    }
}
/// For an endpoint anyone may read that shows more to a technician:
/// whether the caller is one. A token presented goes through the same
/// limiter and failure log as the technician endpoints (no free guessing).
pub(super) fn technician_or_anonymous(s: &Shared, req: &Request) -> Result<bool, Box<Response>> {
    let auth = s.auth();
    let ip = peer(req);
    match auth.access(req.headers()) {
        Access::Anonymous => Ok(false),
        // The anonymous view; the status handler also clears the cookie.
        Access::Expired => Ok(false),
        _ if !auth.allowed(ip) => Err(Box::new(too_many())),
        Access::Denied => Err(Box::new(denied(s, &auth, ip, req.uri().path()))),
        Access::Technician => Ok(true),
    }
}
#[derive(serde::Deserialize)]
pub(super) struct Login {
    token: String,
}
pub(super) async fn login(
    State(s): State<Arc<Shared>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    form: Result<Form<Login>, axum::extract::rejection::FormRejection>,
) -> Response {
    let auth = s.auth();
    if !auth.configured() {
        return json_error(
            StatusCode::CONFLICT,
            "no technician token is configured (status.token_file or the status-token credential)",
        );
    }
    if !auth.allowed(addr.ip()) {
        return too_many();
    }
    let login = match form {
        Ok(Form(login)) => login,
        Err(rejection) => {
            return json_error(
                rejection.status(),
                format!(
                    "expected a form with a token field: {}",
                    rejection.body_text()
                ),
            )
        }
    };
    if !auth.token_matches(&login.token) {
        auth.failed(addr.ip());
        s.auth_failures.fetch_add(1, Relaxed);
        tracing::warn!(client = %addr.ip(), "failed technician login");
        return json_error(StatusCode::UNAUTHORIZED, "wrong technician token");
    }
    tracing::info!(client = %addr.ip(), "technician logged in");
    let mut r = StatusCode::NO_CONTENT.into_response();
    if let Some(c) = auth
        .session_cookie()
        .and_then(|c| HeaderValue::from_str(&c).ok())
    {
        r.headers_mut().insert(header::SET_COOKIE, c);
    }
    r
}
pub(super) async fn logout(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    s.auth().end_session(&headers);
    let mut r = StatusCode::NO_CONTENT.into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(auth::CLEAR_COOKIE),
    );
    r
}
pub(super) async fn transcripts(State(s): State<Arc<Shared>>) -> Response {
    let last_reply = s.agent.as_ref().and_then(|g| g.last_reply());
    Json(serde_json::json!({
        "transcripts": s.recent.list(),
        "agent_last_reply": last_reply,
    }))
    .into_response()
}
pub(super) async fn logs(State(s): State<Arc<Shared>>) -> Response {
    let (warnings, errors) = s.logs.totals();
    Json(serde_json::json!({
        "lines": s.logs.lines(),
        "problems": s.logs.problems(),
        "warnings_total": warnings,
        "errors_total": errors,
    }))
    .into_response()
}
pub(super) async fn test_leds(State(s): State<Arc<Shared>>) -> Response {
    let Some(ctl) = s.control.get() else {
        return json_error(StatusCode::SERVICE_UNAVAILABLE, "still starting");
    };
    match ctl.test_leds() {
        Ok(()) => (
            StatusCode::ACCEPTED,
            Json(serde_json::json!({
                "patterns": IndicatorState::ALL.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
                "step_ms": crate::ptt::indicator::TEST_STEP.as_millis() as u64,
            })),
        )
            .into_response(),
        Err(e) => json_error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}
pub(super) async fn test_ptt(State(s): State<Arc<Shared>>, body: axum::body::Bytes) -> Response {
    let Some(ctl) = s.control.get().cloned() else {
        return json_error(StatusCode::SERVICE_UNAVAILABLE, "still starting");
    };
    let decoded = tokio::task::spawn_blocking(move || {
        crate::audio::clip::decode_pipeline_clip(&body, MAX_TEST_SECONDS)
    })
    .await;
    let samples = match decoded {
        Ok(Ok(s)) if !s.is_empty() => s,
        Ok(Ok(_)) => return json_error(StatusCode::BAD_REQUEST, "the WAV holds no audio"),
        Ok(Err(e)) => return json_error(StatusCode::BAD_REQUEST, format!("not a usable WAV: {e}")),
        Err(_) => return json_error(StatusCode::INTERNAL_SERVER_ERROR, "decoding failed"),
    };
    let audio_ms = samples.len() as u64 * 1000 / u64::from(crate::audio::PIPELINE_RATE);
    match ctl.test_utterance(samples, RELOAD_WAIT).await {
        Ok(()) => (
            StatusCode::ACCEPTED,
            Json(serde_json::json!({
                "accepted": true,
                "audio_ms": audio_ms,
                "result": "see /api/v1/transcripts (and the agent) once recognized",
            })),
        )
            .into_response(),
        Err(ControlError::Refused(why)) => json_error(StatusCode::CONFLICT, why),
        Err(ControlError::Timeout(_)) => json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the controller did not answer",
        ),
        Err(e) => json_error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}
/// Dead letters listed by `GET /api/v1/dead-letters`.
pub(super) const DEAD_LETTERS_SHOWN: u32 = 100;
pub(super) fn no_outbox() -> Response {
    json_error(StatusCode::NOT_FOUND, "no agent configured: no outbox")
}
pub(super) fn outbox_failed(e: &crate::agent::outbox::OutboxError) -> Response {
    json_error(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
}
/// `GET /api/v1/dead-letters`: the newest dead letters (transcripts:
/// technician only, like every endpoint here).
pub(super) async fn dead_letters(State(s): State<Arc<Shared>>) -> Response {
    let Some(h) = s.outbox.get().cloned() else {
        return no_outbox();
    };
    match crate::agent::link::with_outbox(&h.outbox, |o| {
        Ok((o.dead_count()?, o.dead_letters(DEAD_LETTERS_SHOWN)?))
    })
    .await
    {
        Ok((count, items)) => {
            Json(serde_json::json!({ "count": count, "items": items })).into_response()
        }
        Err(e) => outbox_failed(&e),
    }
}
/// Which dead letters a retry or drop acts on.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DeadLetterPick {
    id: Option<String>,
    #[serde(default)]
    all: bool,
}
impl DeadLetterPick {
    /// `Some(Some(id))`, `Some(None)` for all, `None` when malformed.
    fn parse(body: &[u8]) -> Option<Option<String>> {
        match serde_json::from_slice::<DeadLetterPick>(body) {
            Ok(DeadLetterPick {
                id: Some(id),
                all: false,
            }) if id.len() <= 64 => Some(Some(id)),
            Ok(DeadLetterPick {
                id: None,
                all: true,
            }) => Some(None),
            _ => None,
        }
    }
}
/// `POST /api/v1/dead-letters/retry` and `…/drop`.
pub(super) async fn dead_letter_action(
    s: Arc<Shared>,
    body: axum::body::Bytes,
    retry: bool,
) -> Response {
    let Some(h) = s.outbox.get().cloned() else {
        return no_outbox();
    };
    let Some(id) = DeadLetterPick::parse(&body) else {
        return json_error(
            StatusCode::BAD_REQUEST,
            r#"give {"id": "<dead letter id>"} or {"all": true}"#,
        );
    };
    let which = id.clone().unwrap_or_else(|| "all".into());
    let r = if retry {
        h.retry_dead(id).await
    } else {
        h.drop_dead(id).await
    };
    match r {
        Ok(n) => {
            let verb = if retry { "retried" } else { "dropped" };
            tracing::info!(target: "talkie::agent", which = %which, count = n, "dead letters {verb} by a technician");
            Json(serde_json::json!({ verb: n })).into_response()
        }
        Err(e) => outbox_failed(&e),
    }
}
#[derive(serde::Deserialize)]
pub(super) struct CaptureQuery {
    seconds: u32,
}
pub(super) async fn capture(
    State(s): State<Arc<Shared>>,
    query: Result<axum::extract::Query<CaptureQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let seconds = match query {
        Ok(q) if (1..=MAX_TEST_SECONDS).contains(&q.seconds) => q.seconds,
        _ => {
            return json_error(
                StatusCode::BAD_REQUEST,
                format!("give ?seconds=N with N from 1 to {MAX_TEST_SECONDS}"),
            )
        }
    };
    let Some(ctl) = s.control.get().cloned() else {
        return json_error(StatusCode::SERVICE_UNAVAILABLE, "still starting");
    };
    let rate = crate::audio::PIPELINE_RATE;
    let samples = match ctl.capture(seconds, Duration::from_secs(5)).await {
        Ok(samples) => samples,
        Err(ControlError::CaptureRunning) => {
            return json_error(StatusCode::CONFLICT, "another capture is running")
        }
        Err(ControlError::Timeout(_)) => {
            return json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "no audio arrived in time: is the microphone delivering? (see /api/v1/status)",
            )
        }
        Err(e) => return json_error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    };
    match wav_bytes(&samples, rate) {
        Ok(bytes) => (
            [
                (header::CONTENT_TYPE, "audio/wav"),
                (
                    header::CONTENT_DISPOSITION,
                    "attachment; filename=\"talkie-capture.wav\"",
                ),
            ],
            bytes,
        )
            .into_response(),
        Err(e) => json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}
/// 16-bit PCM mono WAV of `samples`.
pub(super) fn wav_bytes(samples: &[f32], rate: u32) -> Result<Vec<u8>, hound::Error> {
    let mut out = std::io::Cursor::new(Vec::with_capacity(44 + samples.len() * 2));
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::new(&mut out, spec)?;
    for &x in samples {
        w.write_sample((x.clamp(-1.0, 1.0) * 32767.0) as i16)?;
    }
    w.finalize()?;
    Ok(out.into_inner())
}
pub(super) async fn reload(State(s): State<Arc<Shared>>) -> Response {
    let Some(tx) = s.reload.get() else {
        return json_error(StatusCode::SERVICE_UNAVAILABLE, "still starting");
    };
    let (reply, answer) = tokio::sync::oneshot::channel();
    if tx.try_send(reply).is_err() {
        return json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "a reload is already running",
        );
    }
    match tokio::time::timeout(RELOAD_WAIT, answer).await {
        Ok(Ok(report)) => {
            let code = if report.ok {
                StatusCode::OK
            } else {
                StatusCode::UNPROCESSABLE_ENTITY
            };
            (code, Json(report)).into_response()
        }
        _ => json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the service did not answer",
        ),
    }
}
/// A live-event client's place under the caps (all clients, and per
/// address), given back when its stream ends; ending also stops its send
/// queue's watcher.
pub(super) struct ClientSlot(Arc<Shared>, std::net::IpAddr, CancellationToken);
impl ClientSlot {
    /// A place for a client from `ip`, if both caps allow one.
    fn take(s: &Arc<Shared>, ip: std::net::IpAddr) -> Option<Self> {
        let mut per = s
            .event_per_address
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mine = per.get(&ip).copied().unwrap_or(0);
        if mine >= MAX_EVENT_CLIENTS_PER_ADDRESS
            || s.event_clients.fetch_add(1, Relaxed) >= MAX_EVENT_CLIENTS
        {
            if mine < MAX_EVENT_CLIENTS_PER_ADDRESS {
                s.event_clients.fetch_sub(1, Relaxed);
            }
            return None;
        }
        per.insert(ip, mine + 1);
        Some(Self(Arc::clone(s), ip, CancellationToken::new()))
    }
}
impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.0.event_clients.fetch_sub(1, Relaxed);
        let mut per = self
            .0
            .event_per_address
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = per.get_mut(&self.1) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                per.remove(&self.1);
            }
        }
        self.2.cancel();
    }
}
pub(super) async fn events(State(s): State<Arc<Shared>>, req: Request) -> Response {
    let Some(slot) = ClientSlot::take(&s, peer(&req)) else {
        return json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("too many live clients (at most {MAX_EVENT_CLIENTS_PER_ADDRESS} per address); the JSON status is still available"),
        );
    };
    // A client that stops reading is dropped (issue 28 row 3), so its
    // connection slot and queued events do not stay forever.
    if let Some(conn) = req.extensions().get::<super::server::ConnHandle>() {
        tokio::spawn(super::server::watch_send_queue(
            conn.clone(),
            Arc::clone(&s.conns),
            slot.2.clone(),
        ));
    }
    let mut tick = tokio::time::interval(EVENTS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let button = s.ptt.button_feed.subscribe();
    let stream = futures_util::stream::unfold(
        (
            slot,
            tick,
            None::<IndicatorState>,
            Vec::<Event>::new(),
            button,
        ),
        |(slot, mut tick, mut last, mut queued, mut button)| async move {
            if let Some(ev) = queued.pop() {
                return Some((Ok::<_, Infallible>(ev), (slot, tick, last, queued, button)));
            }
            let shared = Arc::clone(&slot.0);
            tokio::select! {
                _ = shared.shutdown.cancelled() => return None,
                // Every debounced edge as it happens (the live button view).
                edge = button.recv() => {
                    use tokio::sync::broadcast::error::RecvError;
                    let data = match edge {
                        Ok(e) => serde_json::json!(e),
                        Err(RecvError::Lagged(n)) => serde_json::json!({ "lagged": n }),
                        // The service is stopping.
                        Err(RecvError::Closed) => return None,
                    };
                    let ev = Event::default().event("button").data(data.to_string());
                    return Some((Ok(ev), (slot, tick, last, queued, button)));
                }
                _ = tick.tick() => {}
            }
            let a = shared.audio.snapshot();
            let state = shared.led();
            let level = Event::default().event("level").data(
                serde_json::json!({
                    "rms_dbfs": a.level_rms_dbfs,
                    "peak_dbfs": a.level_peak_dbfs,
                    "state": state.as_str(),
                })
                .to_string(),
            );
            if last != Some(state) {
                last = Some(state);
                queued.push(
                    Event::default()
                        .event("state")
                        .data(serde_json::json!({ "state": state.as_str() }).to_string()),
                );
            }
            Some((Ok(level), (slot, tick, last, queued, button)))
        },
    );
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// `POST /api/v1/restart`: stop cleanly; the process then exits with
/// [`crate::EXIT_RESTART`], which the unit restarts.
pub(super) async fn restart(State(s): State<Arc<Shared>>, req: Request) -> Response {
    let ip = peer(&req);
    let up = s.started.elapsed();
    if up < s.restart_min_uptime {
        let wait = (s.restart_min_uptime - up).as_secs() + 1;
        let mut r = json_error(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "the service started {} s ago; a restart is accepted {} s after start (status.restart_min_uptime_s)",
                up.as_secs(),
                s.restart_min_uptime.as_secs()
            ),
        );
        if let Ok(v) = HeaderValue::from_str(&wait.to_string()) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return r;
    }
    let Some(stop) = s.stop.get() else {
        return json_error(StatusCode::SERVICE_UNAVAILABLE, "still starting");
    };
    if s.restart_requested.swap(true, Relaxed) {
        return json_error(StatusCode::CONFLICT, "a restart is already under way");
    }
    tracing::warn!(client = %ip, "restart requested by a technician: stopping cleanly, systemd starts the service again");
    stop.cancel();
    (
        StatusCode::ACCEPTED,
        Json(serde_json::json!({
            "restarting": true,
            "exit_status": crate::EXIT_RESTART,
        })),
    )
        .into_response()
}
