//! The local HTTP API for field technicians (slice: health, readiness,
//! status JSON and Prometheus metrics; the HTML page, live events and the
//! token-protected endpoints come next — see the status-page issue).
//!
//! | path | answers |
//! |---|---|
//! | `GET /healthz` | 200 `ok` while the process serves HTTP (liveness) |
//! | `GET /readyz` | 200 when models are loaded, audio is open and (with an agent) the outbox is open; else 503 with the reasons |
//! | `GET /api/v1/status` | JSON: device, version, uptime, readiness, LED state, audio, push-to-talk and agent counters |
//! | `GET /metrics` | Prometheus text, `talkie_*` |
//!
//! Handlers only read atomics and snapshots: the server never blocks the
//! audio or recognition threads. Every request has a timeout; the server
//! stops with the service (graceful, bounded).

pub mod metrics;

use crate::agent::breaker::BreakerState;
use crate::agent::AgentStats;
use crate::telemetry::{AudioStats, CaptureState, PttStats};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use talkie_hal::gpio::IndicatorState;
use tokio_util::sync::CancellationToken;

/// Longest any request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

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
}

impl Shared {
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

/// The status document (`/api/v1/status`).
pub fn status_json(s: &Shared) -> serde_json::Value {
    let a = s.audio.snapshot();
    let p = &s.ptt;
    let why = readiness(s);
    let agent = s.agent.as_ref().map(|g| {
        serde_json::json!({
            "breaker": BreakerState::from_u8(g.breaker_state.load(Relaxed)).as_str(),
            "outbox_depth": g.outbox_depth.load(Relaxed),
            "delivered": g.delivered.load(Relaxed),
            "dead_lettered": g.dead_lettered.load(Relaxed),
            "retries": g.retries_total(),
            "last_error": g.last_error(),
            "last_reply": g.last_reply(),
        })
    });
    serde_json::json!({
        "device_id": s.device_id,
        "version": crate::cli::VERSION,
        "uptime_s": s.started.elapsed().as_secs(),
        "ready": why.is_empty(),
        "not_ready_because": why,
        "state": s.led().as_str(),
        "microphone": {
            "source": s.source,
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
            "transcripts": p.transcripts.load(Relaxed),
            "no_speech": p.no_speech.load(Relaxed),
            "too_short": p.too_short.load(Relaxed),
            "release_to_text_ms_last": p.release_to_text.snapshot().last_ms,
            "release_to_text_ms_p95_bucket": p.release_to_text.snapshot().quantile_upper_ms(0.95),
        },
        "agent": agent,
    })
}

async fn status_handler(State(s): State<Arc<Shared>>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        status_json(&s).to_string(),
    )
        .into_response()
}

/// Request timeout as a plain middleware (no extra crate).
async fn timeout(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(req)).await {
        Ok(r) => r,
        Err(_) => (StatusCode::REQUEST_TIMEOUT, "request timed out\n").into_response(),
    }
}

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_handler))
        .route("/api/v1/status", get(status_handler))
        .layer(axum::middleware::from_fn(timeout))
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

/// Serve until `cancel`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    cancel: CancellationToken,
) {
    let app = router(shared);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(async move { cancel.cancelled().await })
        .await
    {
        tracing::error!(error = %e, "status server failed");
    }
}

/// `talkie health --wait S`: poll the running service's `/readyz` on
/// `status.listen` until it answers 200 (Ok) or `wait` has passed (Err with
/// the last reason). The hook an update system calls before committing a
/// release.
pub fn health(listen: SocketAddr, wait: Duration) -> Result<String, String> {
    let ip = if listen.ip().is_unspecified() {
        std::net::IpAddr::from([127, 0, 0, 1])
    } else {
        listen.ip()
    };
    let url = format!("http://{}/readyz", SocketAddr::new(ip, listen.port()));
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
