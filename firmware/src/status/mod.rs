//! The local HTTP API and status page for field technicians.
//!
//! | path | who | answers |
//! |---|---|---|
//! | `GET /` (+ `/app.js`, `/app.css`) | anyone | the status page: self-contained, live via `/api/v1/events` |
//! | `GET /healthz` | anyone | 200 `ok` while the process serves HTTP (liveness) |
//! | `GET /readyz` | anyone | 200 when models are loaded, audio is open and (with an agent) the outbox is open; else 503 with the reasons |
//! | `GET /api/v1/status` | anyone | JSON: device, version, uptime, health checks, state, microphone, button, recognition, agent; with the token also the effective configuration and recent warnings |
//! | `GET /api/v1/events` | anyone | Server-Sent Events: `level` (~10 Hz: RMS/peak dBFS and state), `state` on change |
//! | `GET /metrics` | anyone | Prometheus text, `talkie_*` |
//! | `POST /login`, `POST /logout` | anyone | form field `token` → HttpOnly SameSite=Strict session cookie |
//! | `GET /api/v1/transcripts` | technician | recent transcripts (personal data: `Cache-Control: no-store`) |
//! | `GET /api/v1/logs` | technician | recent log lines and warnings/errors |
//! | `POST /api/v1/test/leds` | technician | cycle every LED pattern |
//! | `POST /api/v1/test/ptt` | technician | body: a WAV ≤ 10 s, run through recognition and delivery as if spoken during a press |
//! | `POST /api/v1/capture?seconds=N` | technician | N ≤ 10 s of the live microphone after the audio path (16 kHz mono), as a WAV download |
//! | `POST /api/v1/reload` | technician | re-read the config: what changed, what was applied, what needs a restart |
//! | `GET /api/v1/dead-letters` | technician | the newest 100 dead letters and their count |
//! | `POST /api/v1/dead-letters/retry`, `…/drop` | technician | body `{"id": "…"}` or `{"all": true}`: back into the queue (same id) or deleted |
//!
//! Technician = `Authorization: Bearer <status token>` or the session
//! cookie ([`auth`]). Handlers only read atomics and snapshots: the server
//! never blocks the audio or recognition threads. Every request has a
//! timeout, bodies are size-limited, every response carries a strict CSP,
//! `nosniff` and `no-store`; no CORS headers are sent (same origin only).

pub mod auth;
pub mod metrics;
pub mod server;

use crate::agent::breaker::BreakerState;
use crate::agent::AgentStats;
use crate::logring::LogRing;
use crate::ptt::{ControlEvent, RecentTranscripts};
use crate::reload::ReloadRequest;
use crate::telemetry::{unix_ms, AudioStats, CaptureState, PttStats};
use auth::{Access, Auth};
use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, OnceLock, PoisonError, RwLock};
use std::time::{Duration, Instant};
use talkie_hal::gpio::IndicatorState;
use tokio_util::sync::CancellationToken;

/// Longest any request may take to produce its response (a 10 s capture
/// included).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// Largest request body accepted.
pub const BODY_LIMIT: usize = 16 * 1024;
/// Largest WAV upload: 10 s of 48 kHz stereo float plus headers.
pub const WAV_LIMIT: usize = 4 * 1024 * 1024;
/// Longest test utterance or capture.
pub const MAX_TEST_SECONDS: u32 = 10;
/// Live-event clients served at once; more get 503.
pub const MAX_EVENT_CLIENTS: usize = 256;
/// Live level events per second.
const EVENTS_EVERY: Duration = Duration::from_millis(100);
/// How long `POST /api/v1/reload` waits for the service to answer.
const RELOAD_WAIT: Duration = Duration::from_secs(5);
/// The page's Content-Security-Policy: nothing but this origin.
pub const CSP: &str =
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

const INDEX_HTML: &str = include_str!("page/index.html");
const APP_JS: &str = include_str!("page/app.js");
const APP_CSS: &str = include_str!("page/app.css");

/// What the handlers read.
#[derive(Debug)]
pub struct Shared {
    pub device_id: String,
    pub source: String,
    pub started: Instant,
    pub audio: Arc<AudioStats>,
    pub ptt: Arc<PttStats>,
    pub agent: Option<Arc<AgentStats>>,
    /// Set once models are loaded and warmed and every thread runs.
    pub ready: AtomicBool,
    /// The lasting LED state (index into `IndicatorState::ALL`).
    pub led: AtomicU8,
    /// Technician token and failed-attempt limiter (swapped on reload).
    pub auth: RwLock<Arc<Auth>>,
    pub logs: LogRing,
    pub recent: RecentTranscripts,
    /// The negotiated capture format, once the source is open.
    pub format: OnceLock<String>,
    /// Model files in use (name, kind, precision, sha256), once loaded.
    pub models: OnceLock<serde_json::Value>,
    /// How recognition precision and threads were chosen, once loaded.
    pub calibration: OnceLock<crate::stt::calibrate::Calibration>,
    /// The running configuration, secrets redacted.
    pub config: RwLock<serde_json::Value>,
    /// Keys changed in the file that wait for a restart.
    pub pending_restart: RwLock<Vec<String>>,
    /// The controller's event queue, once it runs (LED and PTT tests).
    pub control: OnceLock<tokio::sync::mpsc::Sender<ControlEvent>>,
    /// The listener's command queue, once it runs (captures).
    pub listener: OnceLock<std::sync::mpsc::SyncSender<crate::ptt::listener::Command>>,
    /// The outbox, when an agent is configured (dead-letter endpoints).
    pub outbox: OnceLock<crate::agent::OutboxHandle>,
    /// The service's reload queue, once it runs.
    pub reload: OnceLock<tokio::sync::mpsc::Sender<ReloadRequest>>,
    /// Ends live-event streams when the service stops.
    pub shutdown: CancellationToken,
    /// The HTTP loop's heartbeat (`telemetry::now_ms()`): the last time
    /// [`probe`] got a 200 from `/healthz` over loopback; 0 = never.
    pub http_beat_ms: AtomicU64,
    /// The accept loop's counters ([`server`]).
    pub conns: Arc<server::ConnStats>,
    /// Wrong tokens presented (Bearer, login), every address.
    pub auth_failures: AtomicU64,
    /// The outbox file, for its filesystem's free space.
    pub outbox_path: Option<std::path::PathBuf>,
    event_clients: AtomicUsize,
}

impl Shared {
    /// Everything not yet known starts empty; `run` fills it in.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: &crate::config::Config,
        source: String,
        audio: Arc<AudioStats>,
        ptt: Arc<PttStats>,
        agent: Option<Arc<AgentStats>>,
        logs: LogRing,
        recent: RecentTranscripts,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            device_id: config.device.id.clone(),
            source,
            started: Instant::now(),
            audio,
            ptt,
            agent,
            ready: AtomicBool::new(false),
            led: AtomicU8::new(0),
            auth: RwLock::new(Arc::new(Auth::new(
                config.status.token.as_ref().map(|t| t.expose()),
            ))),
            logs,
            recent,
            format: OnceLock::new(),
            models: OnceLock::new(),
            calibration: OnceLock::new(),
            config: RwLock::new(crate::config::redacted(config)),
            pending_restart: RwLock::new(Vec::new()),
            control: OnceLock::new(),
            listener: OnceLock::new(),
            outbox: OnceLock::new(),
            conns: Arc::default(),
            auth_failures: AtomicU64::new(0),
            outbox_path: config
                .agent
                .url
                .is_some()
                .then(|| config.outbox.path.clone()),
            reload: OnceLock::new(),
            shutdown,
            http_beat_ms: AtomicU64::new(0),
            event_clients: AtomicUsize::new(0),
        }
    }

    pub fn set_led(&self, s: IndicatorState) {
        if let Some(i) = IndicatorState::ALL.iter().position(|x| *x == s) {
            self.led.store(i as u8, Relaxed);
        }
    }

    fn led(&self) -> IndicatorState {
        IndicatorState::ALL
            .get(usize::from(self.led.load(Relaxed)))
            .copied()
            .unwrap_or(IndicatorState::Off)
    }

    pub fn auth(&self) -> Arc<Auth> {
        Arc::clone(&self.auth.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// A reload applied `config`: new token, new effective config shown.
    pub fn reconfigured(&self, config: &crate::config::Config, pending: Vec<String>) {
        *self.auth.write().unwrap_or_else(PoisonError::into_inner) =
            Arc::new(Auth::new(config.status.token.as_ref().map(|t| t.expose())));
        *self.config.write().unwrap_or_else(PoisonError::into_inner) =
            crate::config::redacted(config);
        *self
            .pending_restart
            .write()
            .unwrap_or_else(PoisonError::into_inner) = pending;
    }
}

/// Why the service is not ready; empty = ready.
pub fn readiness(s: &Shared) -> Vec<&'static str> {
    let mut why = Vec::new();
    if !s.ready.load(Relaxed) {
        why.push("starting: models loading or threads not started");
    }
    match s.audio.capture_state() {
        CaptureState::Degraded => why.push("microphone lost: reopening"),
        CaptureState::Failed => why.push("microphone failed"),
        _ => {}
    }
    why
}

/// One line of the page's health list.
#[derive(Debug, Clone, serde::Serialize, PartialEq)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    /// Why it fails (empty when ok).
    pub reason: String,
}

/// The health checks the page shows, each with the reason it fails.
pub fn checks(s: &Shared) -> Vec<Check> {
    let check = |name, problem: Option<String>| Check {
        name,
        ok: problem.is_none(),
        reason: problem.unwrap_or_default(),
    };
    let a = s.audio.snapshot();
    let p = &s.ptt;
    let mut out = vec![
        check(
            "models",
            (!s.ready.load(Relaxed)).then(|| "loading, or threads not started yet".to_owned()),
        ),
        check(
            "microphone",
            match a.capture_state {
                CaptureState::Degraded => Some(format!(
                    "lost; reopening ({} attempts so far)",
                    a.reopen_attempts
                )),
                CaptureState::Failed => Some("failed; see the log".to_owned()),
                _ => None,
            },
        ),
        check(
            "button",
            match p.button_errors.load(Relaxed) {
                0 => None,
                n => Some(format!("{n} read errors")),
            },
        ),
    ];
    if let Some(g) = &s.agent {
        let breaker = BreakerState::from_u8(g.breaker_state.load(Relaxed));
        out.push(check(
            "agent",
            (breaker == BreakerState::Open).then(|| {
                format!(
                    "unreachable, retrying later: {}",
                    g.last_error().unwrap_or_else(|| "no detail".to_owned())
                )
            }),
        ));
    }
    out
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(s): State<Arc<Shared>>) -> Response {
    let why = readiness(&s);
    let body = serde_json::json!({ "ready": why.is_empty(), "reasons": why }).to_string();
    let code = if why.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn metrics_handler(State(s): State<Arc<Shared>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics::render(&s),
    )
        .into_response()
}

/// The status document (`/api/v1/status`); `technician` adds the
/// effective configuration and the recent warnings.
pub fn status_json(s: &Shared, technician: bool) -> serde_json::Value {
    let a = s.audio.snapshot();
    let p = &s.ptt;
    let why = readiness(s);
    let now = unix_ms();
    let agent = s.agent.as_ref().map(|g| {
        let oldest = g.oldest_created_ms.load(Relaxed);
        serde_json::json!({
            "breaker": BreakerState::from_u8(g.breaker_state.load(Relaxed)).as_str(),
            "outbox_depth": g.outbox_depth.load(Relaxed),
            "outbox_oldest_age_s": (oldest > 0).then(|| now.saturating_sub(oldest) / 1000),
            "delivered": g.delivered.load(Relaxed),
            "dead_lettered": g.dead_lettered.load(Relaxed),
            "dead_letters_kept": g.dead_letter_depth.load(Relaxed),
            // 401/403/404 from the agent: token or URL rejected, nothing sent.
            "paused_on_status": match g.paused_status.load(Relaxed) { 0 => None, st => Some(st) },
            "retries": g.retries_total(),
            // Error and reply texts can carry what a visitor said: technician only.
            "last_error": if technician { g.last_error() } else { None },
            "last_reply": if technician { g.last_reply() } else { None },
        })
    });
    let rtt = p.release_to_text.snapshot();
    let last_press = p.last_press_unix_ms.load(Relaxed);
    let mut doc = serde_json::json!({
        "device_id": s.device_id,
        "version": crate::VERSION,
        "uptime_s": s.started.elapsed().as_secs(),
        "ready": why.is_empty(),
        "not_ready_because": why,
        "health": checks(s),
        "state": s.led().as_str(),
        "access": if technician { "technician" } else { "anonymous" },
        "login_available": s.auth().configured(),
        "microphone": {
            "source": s.source,
            "format": s.format.get(),
            "state": a.capture_state.as_str(),
            "level_rms_dbfs": a.level_rms_dbfs,
            "level_peak_dbfs": a.level_peak_dbfs,
            "frames_captured": a.frames_captured,
            "frames_dropped": a.frames_dropped,
            "xruns": a.xruns,
            "reopen_attempts": a.reopen_attempts,
        },
        "push_to_talk": {
            "presses": p.presses.load(Relaxed),
            "presses_today": p.presses_on(now),
            "last_press_unix_ms": (last_press > 0).then_some(last_press),
            "too_short": p.too_short.load(Relaxed),
            "busy_rejected": p.busy_rejected.load(Relaxed),
            "transcripts": p.transcripts.load(Relaxed),
            "no_speech": p.no_speech.load(Relaxed),
            "stt_failures": p.stt_failures.load(Relaxed),
            "release_to_text_ms_last": (rtt.count > 0).then_some(rtt.last_ms),
            "release_to_text_ms_p95_bucket": rtt.quantile_upper_ms(0.95),
        },
        "models": s.models.get().cloned().unwrap_or_else(|| serde_json::json!([])),
        "stt": s.calibration.get().map(crate::stt::calibrate::Calibration::to_json),
        "agent": agent,
    });
    if technician {
        let (warnings, errors) = s.logs.totals();
        doc["config"] = s
            .config
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        doc["pending_restart"] = serde_json::json!(*s
            .pending_restart
            .read()
            .unwrap_or_else(PoisonError::into_inner));
        doc["problems"] = serde_json::json!(s.logs.problems());
        doc["warnings_total"] = warnings.into();
        doc["errors_total"] = errors.into();
    }
    doc
}

async fn status_handler(State(s): State<Arc<Shared>>, req: Request) -> Response {
    let auth = s.auth();
    let ip = peer(&req);
    // A token on the anonymous endpoint goes through the same limiter and
    // failure log as the technician endpoints: no free guessing here.
    let tech = match auth.access(req.headers()) {
        Access::Anonymous => false,
        _ if !auth.allowed(ip) => return too_many(),
        Access::Denied => return denied(&s, &auth, ip, req.uri().path()),
        Access::Technician => true,
    };
    Json(status_json(&s, tech)).into_response()
}

/// A wrong token: counted against `ip`, logged once, 401.
fn denied(s: &Shared, auth: &Auth, ip: std::net::IpAddr, path: &str) -> Response {
    auth.failed(ip);
    s.auth_failures.fetch_add(1, Relaxed);
    tracing::warn!(client = %ip, path, "wrong technician token");
    json_error(StatusCode::UNAUTHORIZED, "wrong technician token")
}

/// A JSON error body: `{"error": "..."}`.
pub fn json_error(code: StatusCode, msg: impl Into<String>) -> Response {
    (code, Json(serde_json::json!({ "error": msg.into() }))).into_response()
}

fn peer(req: &Request) -> std::net::IpAddr {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(std::net::IpAddr::from([0, 0, 0, 0]), |c| c.0.ip())
}

fn too_many() -> Response {
    let mut r = json_error(
        StatusCode::TOO_MANY_REQUESTS,
        "too many failed attempts from this address; try again later",
    );
    r.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from(auth::REFILL.as_secs()),
    );
    r
}

/// Gate for the technician endpoints.
async fn require_technician(State(s): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let auth = s.auth();
    let ip = peer(&req);
    match auth.access(req.headers()) {
        Access::Anonymous => {
            let mut r = json_error(StatusCode::UNAUTHORIZED, "technician token required");
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            r
        }
        _ if !auth.allowed(ip) => too_many(),
        Access::Denied => denied(&s, &auth, ip, req.uri().path()),
        Access::Technician => next.run(req).await,
    }
}

#[derive(serde::Deserialize)]
struct Login {
    token: String,
}

async fn login(
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

async fn logout(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    s.auth().end_session(&headers);
    let mut r = StatusCode::NO_CONTENT.into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("talkie_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    r
}

async fn transcripts(State(s): State<Arc<Shared>>) -> Response {
    let last_reply = s.agent.as_ref().and_then(|g| g.last_reply());
    Json(serde_json::json!({
        "transcripts": s.recent.list(),
        "agent_last_reply": last_reply,
    }))
    .into_response()
}

async fn logs(State(s): State<Arc<Shared>>) -> Response {
    let (warnings, errors) = s.logs.totals();
    Json(serde_json::json!({
        "lines": s.logs.lines(),
        "problems": s.logs.problems(),
        "warnings_total": warnings,
        "errors_total": errors,
    }))
    .into_response()
}

async fn test_leds(State(s): State<Arc<Shared>>) -> Response {
    let Some(tx) = s.control.get() else {
        return json_error(StatusCode::SERVICE_UNAVAILABLE, "still starting");
    };
    match tx.try_send(ControlEvent::TestLeds) {
        Ok(()) => (
            StatusCode::ACCEPTED,
            Json(serde_json::json!({
                "patterns": IndicatorState::ALL.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
                "step_ms": crate::ptt::indicator::TEST_STEP.as_millis() as u64,
            })),
        )
            .into_response(),
        Err(_) => json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "controller busy; try again",
        ),
    }
}

async fn test_ptt(State(s): State<Arc<Shared>>, body: axum::body::Bytes) -> Response {
    let Some(tx) = s.control.get() else {
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
    let (reply, answer) = tokio::sync::oneshot::channel();
    if tx
        .try_send(ControlEvent::TestUtterance { samples, reply })
        .is_err()
    {
        return json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "controller busy; try again",
        );
    }
    match tokio::time::timeout(RELOAD_WAIT, answer).await {
        Ok(Ok(Ok(()))) => (
            StatusCode::ACCEPTED,
            Json(serde_json::json!({
                "accepted": true,
                "audio_ms": audio_ms,
                "result": "see /api/v1/transcripts (and the agent) once recognized",
            })),
        )
            .into_response(),
        Ok(Ok(Err(why))) => json_error(StatusCode::CONFLICT, why),
        _ => json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the controller did not answer",
        ),
    }
}

/// Dead letters listed by `GET /api/v1/dead-letters`.
const DEAD_LETTERS_SHOWN: u32 = 100;

fn no_outbox() -> Response {
    json_error(StatusCode::NOT_FOUND, "no agent configured: no outbox")
}

fn outbox_failed(e: &crate::agent::outbox::OutboxError) -> Response {
    json_error(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
}

/// `GET /api/v1/dead-letters`: the newest dead letters (transcripts:
/// technician only, like every endpoint here).
async fn dead_letters(State(s): State<Arc<Shared>>) -> Response {
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
struct DeadLetterPick {
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
async fn dead_letter_action(s: Arc<Shared>, body: axum::body::Bytes, retry: bool) -> Response {
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
struct CaptureQuery {
    seconds: u32,
}

async fn capture(
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
    let Some(tx) = s.listener.get() else {
        return json_error(StatusCode::SERVICE_UNAVAILABLE, "still starting");
    };
    let rate = crate::audio::PIPELINE_RATE;
    let (reply, answer) = tokio::sync::oneshot::channel();
    let req = crate::ptt::listener::RecordRequest {
        buf: Vec::with_capacity(seconds as usize * rate as usize),
        reply,
    };
    if tx
        .try_send(crate::ptt::listener::Command::Record(req))
        .is_err()
    {
        return json_error(StatusCode::SERVICE_UNAVAILABLE, "listener busy; try again");
    }
    let wait = Duration::from_secs(u64::from(seconds) + 5);
    let samples = match tokio::time::timeout(wait, answer).await {
        Ok(Ok(samples)) => samples,
        Ok(Err(_)) => return json_error(StatusCode::CONFLICT, "another capture is running"),
        Err(_) => {
            return json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "no audio arrived in time: is the microphone delivering? (see /api/v1/status)",
            )
        }
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
fn wav_bytes(samples: &[f32], rate: u32) -> Result<Vec<u8>, hound::Error> {
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

async fn reload(State(s): State<Arc<Shared>>) -> Response {
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

/// Decrements the live-client count when a stream ends.
struct ClientSlot(Arc<Shared>);

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.0.event_clients.fetch_sub(1, Relaxed);
    }
}

async fn events(State(s): State<Arc<Shared>>) -> Response {
    if s.event_clients.fetch_add(1, Relaxed) >= MAX_EVENT_CLIENTS {
        s.event_clients.fetch_sub(1, Relaxed);
        return json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many live clients; the JSON status is still available",
        );
    }
    let slot = ClientSlot(Arc::clone(&s));
    let mut tick = tokio::time::interval(EVENTS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let stream = futures_util::stream::unfold(
        (slot, tick, None::<IndicatorState>, Vec::<Event>::new()),
        |(slot, mut tick, mut last, mut queued)| async move {
            if let Some(ev) = queued.pop() {
                return Some((Ok::<_, Infallible>(ev), (slot, tick, last, queued)));
            }
            let shared = Arc::clone(&slot.0);
            tokio::select! {
                _ = shared.shutdown.cancelled() => return None,
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
            Some((Ok(level), (slot, tick, last, queued)))
        },
    );
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// Request timeout as a plain middleware (no extra crate).
async fn timeout(req: Request, next: Next) -> Response {
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(req)).await {
        Ok(r) => r,
        Err(_) => json_error(StatusCode::REQUEST_TIMEOUT, "request timed out"),
    }
}

/// The same security headers on every response.
async fn security_headers(req: Request, next: Next) -> Response {
    let mut r = next.run(req).await;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// Every error answer is JSON (`{"error": …}`), also those axum and its
/// extractors make on their own (405, 413, 400 from a bad form or query):
/// a plain-text or empty error body becomes JSON with its first 200
/// characters.
async fn json_errors(req: Request, next: Next) -> Response {
    let r = next.run(req).await;
    let status = r.status();
    let is_json = r
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return r;
    }
    let (parts, body) = r.into_parts();
    let text = axum::body::to_bytes(body, 4096)
        .await
        .map(|b| {
            String::from_utf8_lossy(&b)
                .trim()
                .chars()
                .take(200)
                .collect::<String>()
        })
        .unwrap_or_default();
    let msg = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_lowercase()
    } else {
        text
    };
    let mut out = json_error(status, msg);
    for name in [header::ALLOW, header::RETRY_AFTER, header::WWW_AUTHENTICATE] {
        if let Some(v) = parts.headers.get(&name) {
            out.headers_mut().insert(name, v.clone());
        }
    }
    out
}

async fn not_found() -> Response {
    json_error(StatusCode::NOT_FOUND, "no such endpoint")
}

pub fn router(shared: Arc<Shared>) -> Router {
    let technician = Router::new()
        .route("/api/v1/transcripts", get(transcripts))
        .route("/api/v1/logs", get(logs))
        .route("/api/v1/test/leds", post(test_leds))
        .route(
            "/api/v1/test/ptt",
            post(test_ptt).layer(DefaultBodyLimit::max(WAV_LIMIT)),
        )
        .route("/api/v1/capture", post(capture))
        .route("/api/v1/reload", post(reload))
        .route("/api/v1/dead-letters", get(dead_letters))
        .route(
            "/api/v1/dead-letters/retry",
            post(|State(s): State<Arc<Shared>>, b: axum::body::Bytes| {
                dead_letter_action(s, b, true)
            }),
        )
        .route(
            "/api/v1/dead-letters/drop",
            post(|State(s): State<Arc<Shared>>, b: axum::body::Bytes| {
                dead_letter_action(s, b, false)
            }),
        )
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&shared),
            require_technician,
        ));
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/app.css",
            get(|| async { asset("text/css; charset=utf-8", APP_CSS) }),
        )
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_handler))
        .route("/api/v1/status", get(status_handler))
        .route("/api/v1/events", get(events))
        .route("/login", post(login))
        .route("/logout", post(logout))
        .merge(technician)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn(json_errors))
        .layer(middleware::from_fn(security_headers))
        .layer(middleware::from_fn(timeout))
        .with_state(shared)
}

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} (status.listen): {source}")]
pub struct BindError {
    pub addr: SocketAddr,
    pub source: std::io::Error,
}

/// Bind `addr`; returns the listener (so a bind failure stops start-up)
/// and the address actually bound.
pub async fn bind(addr: SocketAddr) -> Result<(tokio::net::TcpListener, SocketAddr), BindError> {
    let l = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| BindError { addr, source })?;
    let bound = l
        .local_addr()
        .map_err(|source| BindError { addr, source })?;
    Ok((l, bound))
}

/// Serve until `cancel`, under the limits of [`server`] for this
/// process's descriptor limit.
pub async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    cancel: CancellationToken,
) {
    let limits = server::Limits::for_fd_limit(server::fd_limit());
    tracing::debug!(?limits, "status server limits");
    let conns = Arc::clone(&shared.conns);
    server::serve(listener, router(shared), limits, conns, cancel).await;
}

/// `http://ADDR{path}` for a request to the server listening on `listen`
/// from this machine (an unspecified address is reached over loopback).
fn local_url(listen: SocketAddr, path: &str) -> String {
    let ip = if listen.ip().is_unspecified() {
        std::net::IpAddr::from([127, 0, 0, 1])
    } else {
        listen.ip()
    };
    format!("http://{}{path}", SocketAddr::new(ip, listen.port()))
}

/// The HTTP loop's heartbeat for the watchdog: every `every`, `GET
/// /healthz` on the bound address through the real server (2 s timeout);
/// a 200 calls `beat` (in `run`: [`Shared::http_beat_ms`]). A server that
/// stops accepting or answering stops the beat, and with it the watchdog
/// pings. Ends on `cancel`.
pub async fn probe(
    bound: SocketAddr,
    beat: impl Fn() + Send + 'static,
    every: Duration,
    cancel: CancellationToken,
) {
    let url = local_url(bound, "/healthz");
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .no_proxy()
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "status server probe: no HTTP client; the http loop will not beat");
            return;
        }
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let outcome = tokio::select! {
            _ = cancel.cancelled() => return,
            r = client.get(&url).send() => match r {
                Ok(r) if r.status().is_success() => Ok(()),
                Ok(r) => Err(r.status().to_string()),
                Err(e) => Err(e.to_string()),
            },
        };
        match outcome {
            Ok(()) => {
                beat();
                if std::mem::take(&mut failing) {
                    tracing::info!(url = %url, "status server probe answers again");
                }
            }
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(url = %url, error = %e, "status server probe failed");
            }
            Err(_) => {}
        }
    }
}

/// `talkie health --wait S`: poll the running service's `/readyz` on
/// `status.listen` until it answers 200 (Ok) or `wait` has passed (Err with
/// the last reason). The hook an update system calls before committing a
/// release.
pub fn health(listen: SocketAddr, wait: Duration) -> Result<String, String> {
    let url = local_url(listen, "/readyz");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .map_err(|e| e.to_string())?;
        let deadline = Instant::now() + wait;
        loop {
            let why = match client.get(&url).send().await {
                Ok(r) if r.status().is_success() => return Ok(format!("{url}: ready")),
                Ok(r) => {
                    let code = r.status();
                    format!(
                        "{url}: {code} {}",
                        r.text().await.unwrap_or_default().trim()
                    )
                }
                Err(e) => format!("{url}: {e}"),
            };
            if Instant::now() >= deadline {
                return Err(why);
            }
            tokio::time::sleep(Duration::from_millis(500).min(deadline - Instant::now())).await;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    /// Beats counted while `probe` runs against `addr`, once `until` holds.
    async fn probe_until(addr: SocketAddr, until: impl Fn(u64) -> bool) -> u64 {
        let beats = Arc::new(AtomicU64::new(0));
        let cancel = CancellationToken::new();
        let b = Arc::clone(&beats);
        let task = tokio::spawn(probe(
            addr,
            move || {
                b.fetch_add(1, Relaxed);
            },
            Duration::from_millis(100),
            cancel.clone(),
        ));
        let n = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let n = beats.load(Relaxed);
                if until(n) {
                    return n;
                }
                tokio::task::yield_now().await;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("condition within 30 s");
        cancel.cancel();
        task.await.unwrap();
        n
    }

    #[tokio::test]
    async fn probe_beats_while_the_server_answers_and_not_when_it_hangs() {
        // A real server: /healthz answers, beats follow.
        let (l, addr) = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let app = Router::new().route("/healthz", get(healthz));
        let server = tokio::spawn(async move { axum::serve(l, app).await });
        assert!(probe_until(addr, |n| n >= 3).await >= 3);
        server.abort();

        // A hung server: connections are accepted, never answered. Two
        // accepted connections mean the first probe timed out; no beat.
        let hung = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = hung.local_addr().unwrap();
        let accepted = Arc::new(AtomicU64::new(0));
        let a = Arc::clone(&accepted);
        let holder = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((c, _)) = hung.accept().await {
                held.push(c);
                a.fetch_add(1, Relaxed);
            }
        });
        let acc = Arc::clone(&accepted);
        let beats = probe_until(addr, move |_| acc.load(Relaxed) >= 2).await;
        assert_eq!(beats, 0, "a server that does not answer must not beat");
        holder.abort();
    }

    fn shared_with_agent() -> Arc<Shared> {
        let agent = Arc::new(AgentStats::default());
        agent.set_last_reply("You said: my name is Ada");
        agent.set_last_error("HTTP 500: could not store 'my name is Ada'");
        let mut cfg = crate::config::Config::default();
        cfg.status.token = Some(crate::config::Secret::new("s3cret"));
        Arc::new(Shared::new(
            &cfg,
            "test".into(),
            Arc::new(AudioStats::default()),
            Arc::new(PttStats::default()),
            Some(agent),
            crate::logring::global().clone(),
            RecentTranscripts::default(),
            CancellationToken::new(),
        ))
    }

    /// Issue 18 row 3: what a visitor said never reaches the anonymous view.
    #[test]
    fn anonymous_status_has_no_reply_or_error_text() {
        let s = shared_with_agent();
        let anon = status_json(&s, false).to_string();
        assert!(!anon.contains("Ada"), "{anon}");
        let tech = status_json(&s, true);
        assert_eq!(tech["agent"]["last_reply"], "You said: my name is Ada");
        assert!(tech["agent"]["last_error"]
            .as_str()
            .unwrap()
            .contains("HTTP 500"));
    }

    /// Issue 18 row 19: errors axum makes itself (405, 413) are JSON too.
    #[tokio::test]
    async fn every_error_body_is_json() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let s = shared_with_agent();
        let (listener, addr) = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let cancel = s.shutdown.clone();
        let server = tokio::spawn(serve(listener, Arc::clone(&s), cancel.clone()));
        let big = "x".repeat(BODY_LIMIT + 10);
        for (req, code) in [
            ("DELETE /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".to_owned(), 405),
            (
                format!(
                    "POST /login HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\
                     Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\ntoken={big}",
                    big.len() + 6
                ),
                413,
            ),
        ] {
            let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
            let _ = c.write_all(req.as_bytes()).await;
            let mut out = Vec::new();
            let _ = c.read_to_end(&mut out).await;
            let text = String::from_utf8_lossy(&out);
            assert!(text.starts_with(&format!("HTTP/1.1 {code}")), "{text}");
            assert!(text.to_ascii_lowercase().contains("content-type: application/json"), "{text}");
            let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
            let v: serde_json::Value = serde_json::from_str(body).unwrap();
            assert!(v["error"].is_string(), "{text}");
        }
        cancel.cancel();
        let _ = server.await;
    }
}
