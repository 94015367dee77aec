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
//! | `POST /api/v1/restart` | technician | stop cleanly and exit 75 (`RestartForceExitStatus=75`: systemd starts it again); refused for `status.restart_min_uptime_s` after start |
//! | `GET /api/v1/dead-letters` | technician | the newest 100 dead letters and their count |
//! | `POST /api/v1/dead-letters/retry`, `…/drop` | technician | body `{"id": "…"}` or `{"all": true}`: back into the queue (same id) or deleted |
//!
//! Technician = `Authorization: Bearer <status token>` or the session
//! cookie ([`auth`]). Handlers only read atomics and snapshots: the server
//! never blocks the audio or recognition threads. Every request has a
//! timeout, bodies are size-limited, every response carries a strict CSP,
//! `nosniff` and `no-store`; no CORS headers are sent (same origin only).

pub mod api;
pub mod auth;
mod bundle;
pub mod charts;
mod client;
mod handlers;
pub mod metrics;
pub mod recordings;
mod reply;
mod router;
pub mod server;

pub use client::{health, local_url, probe, HealthError};
pub use reply::json_error;
pub use router::router;

use crate::agent::breaker::BreakerState;
use crate::agent::AgentStats;
use crate::base::config::reload::ReloadRequest;
use crate::base::logring::LogRing;
use crate::base::telemetry::{unix_ms, AudioStats, CaptureState, PttStats};
use crate::ptt::{ControlError, RecentTranscripts};
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
/// Live-event streams one address may hold (a technician's tabs).
pub const MAX_EVENT_CLIENTS_PER_ADDRESS: usize = 8;
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
pub use charts::LEVEL_POINTS;
/// How long a board reading is reused.
pub const BOARD_EVERY: Duration = Duration::from_secs(2);
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
    /// The configuration's secrets ([`crate::base::config::Config::secret_values`]),
    /// scrubbed from the support bundle.
    pub secrets: RwLock<Vec<crate::base::config::Secret>>,
    /// Keys changed in the file that wait for a restart.
    pub pending_restart: RwLock<Vec<String>>,
    /// The controller's event queue, once it runs (LED and PTT tests).
    pub control: OnceLock<crate::ptt::PttControl>,
    /// The outbox, when an agent is configured (dead-letter endpoints).
    pub outbox: OnceLock<crate::agent::OutboxHandle>,
    /// The service's reload queue, once it runs.
    pub reload: OnceLock<tokio::sync::mpsc::Sender<ReloadRequest>>,
    /// Ends live-event streams when the service stops.
    pub shutdown: CancellationToken,
    /// The HTTP loop's heartbeat (`telemetry::now_ms()`): the last time
    /// [`probe`] got a 200 from `/healthz` over loopback; 0 = never.
    pub http_beat_ms: AtomicU64,
    /// The status port is bound and served (the `http` heartbeat is
    /// expected only then).
    pub serving: AtomicBool,
    /// Why the status port could not be bound yet (retried until it is).
    pub port_error: RwLock<Option<String>>,
    /// The accept loop's counters ([`server`]).
    pub conns: Arc<server::ConnStats>,
    /// Wrong tokens presented (Bearer, login), every address.
    pub auth_failures: AtomicU64,
    /// The outbox file, for its filesystem's free space.
    pub outbox_path: Option<std::path::PathBuf>,
    /// Starts in the last 24 h and how the previous run ended.
    pub runs: OnceLock<crate::base::runs::RunSummary>,
    /// Stops the service for `POST /api/v1/restart` (set by the service).
    pub stop: OnceLock<CancellationToken>,
    /// A technician asked for a restart: the service ends with
    /// [`crate::service::Ended::Restart`].
    pub restart_requested: AtomicBool,
    /// `status.restart_min_uptime_s`.
    pub restart_min_uptime: Duration,
    /// The update system's view (RAUC, Mender), kept current by
    /// [`crate::platform::updates::run`]; `None` until first read.
    pub updates: Arc<RwLock<Option<crate::platform::updates::UpdateState>>>,
    /// `debug.keep_utterances`: the kept recordings, when on.
    pub recordings: Option<Arc<crate::ptt::recordings::Recordings>>,
    /// The microphone level twice a second for the last minute
    /// ([`LEVEL_POINTS`] of `[unix ms, rms dBFS, peak dBFS]`).
    pub level_history: std::sync::Mutex<std::collections::VecDeque<[f64; 3]>>,
    /// `[board]`: where the board is read from and its warning limits.
    pub board: crate::base::config::BoardConfig,
    /// The last board reading and when it was taken (read at most every
    /// [`BOARD_EVERY`], however many clients ask).
    board_cache: std::sync::Mutex<Option<(Instant, crate::platform::board::BoardHealth)>>,
    event_clients: AtomicUsize,
    /// Live-event clients per address (at most
    /// [`MAX_EVENT_CLIENTS_PER_ADDRESS`] each; entries removed at zero).
    event_per_address: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
}
impl Shared {
    /// Everything not yet known starts empty; `run` fills it in.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: &crate::base::config::Config,
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
            config: RwLock::new(crate::base::config::redacted(config)),
            secrets: RwLock::new(config.secret_values()),
            pending_restart: RwLock::new(Vec::new()),
            control: OnceLock::new(),
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
            serving: AtomicBool::new(false),
            port_error: RwLock::new(None),
            runs: OnceLock::new(),
            stop: OnceLock::new(),
            restart_requested: AtomicBool::new(false),
            restart_min_uptime: Duration::from_secs(config.status.restart_min_uptime_s.into()),
            updates: Arc::new(RwLock::new(None)),
            recordings: crate::ptt::recordings::Recordings::new(
                &config.device.state_dir,
                &config.debug,
            )
            .map(Arc::new),
            level_history: std::sync::Mutex::new(std::collections::VecDeque::with_capacity(
                LEVEL_POINTS,
            )),
            board: config.board.clone(),
            board_cache: std::sync::Mutex::new(None),
            event_clients: AtomicUsize::new(0),
            event_per_address: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// The board's health ([`crate::platform::board`]), read at most every
    /// [`BOARD_EVERY`]: a handful of small kernel files, never the disk.
    pub fn board_health(&self) -> crate::platform::board::BoardHealth {
        let mut cache = self
            .board_cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some((at, h)) = cache.as_ref() {
            if at.elapsed() < BOARD_EVERY {
                return h.clone();
            }
        }
        let b = &self.board;
        let facts = crate::platform::board::ProcessFacts {
            disk: self
                .outbox_path
                .as_deref()
                .and_then(crate::base::telemetry::disk_space),
            fds_open: server::open_fds(),
            fds_max: Some(server::fd_limit()),
        };
        let h = crate::platform::board::read(
            &b.root,
            &facts,
            &crate::platform::board::Thresholds::from_config(b),
        );
        *cache = Some((Instant::now(), h.clone()));
        h
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
    pub fn reconfigured(&self, config: &crate::base::config::Config, pending: Vec<String>) {
        let token = config.status.token.as_ref().map(|t| t.expose());
        // Sessions survive a reload that keeps the token (issue 28 row 2).
        if !self.auth().same_token(token) {
            *self.auth.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(Auth::new(token));
        }
        *self.config.write().unwrap_or_else(PoisonError::into_inner) =
            crate::base::config::redacted(config);
        *self.secrets.write().unwrap_or_else(PoisonError::into_inner) = config.secret_values();
        *self
            .pending_restart
            .write()
            .unwrap_or_else(PoisonError::into_inner) = pending;
    }
}
/// Days of certificate validity under which the page warns.
pub const CERT_WARN_DAYS: i64 = 14;

fn cert_warning(days_left: Option<i64>) -> Option<String> {
    match days_left? {
        d if d < 0 => Some(format!(
            "the agent's TLS certificate expired {} day(s) ago: deliveries fail until it is renewed",
            -d
        )),
        d if d < CERT_WARN_DAYS => Some(format!(
            "the agent's TLS certificate expires in {d} day(s): have it renewed"
        )),
        _ => None,
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
    if s.outbox
        .get()
        .is_some_and(|h| h.outbox.unavailable().is_some())
    {
        why.push("outbox cannot be opened: transcripts are refused");
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
    if let Some(h) = s.outbox.get() {
        out.push(check(
            "outbox",
            h.outbox
                .unavailable()
                .map(|e| format!("cannot be opened, retried on each use: {e}")),
        ));
    }
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
/// The status document as JSON ([`api::status_doc`]).
pub fn status_json(s: &Shared, technician: bool) -> serde_json::Value {
    serde_json::to_value(api::status_doc(s, technician)).unwrap_or_default()
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

#[cfg(test)]
mod tests {
    use super::handlers::*;
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
        let mut cfg = crate::base::config::Config::default();
        cfg.status.token = Some(crate::base::config::Secret::new("s3cret"));
        Arc::new(Shared::new(
            &cfg,
            "test".into(),
            Arc::new(AudioStats::default()),
            Arc::new(PttStats::default()),
            Some(agent),
            crate::base::logring::global().clone(),
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

    /// Issue 20 item 7, the live button view: every debounced edge reaches
    /// an open `/api/v1/events` stream as a `button` event, in order, with
    /// the counts (event-driven: the edges are made after the stream is
    /// open, no timing involved).
    #[tokio::test]
    async fn button_edges_reach_the_live_event_stream_in_order() {
        let s = shared_with_agent();
        let (addr, cancel, server) = serving(&s).await;
        let mut r = reqwest::get(format!("http://{addr}/api/v1/events"))
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        // The handler subscribed before answering: edges from now on count.
        s.ptt.note_press(1_000);
        s.ptt.note_release(1_250);
        s.ptt.note_press(2_000);
        let mut text = String::new();
        let buttons = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let chunk = r.chunk().await.unwrap().expect("stream stays open");
                text.push_str(&String::from_utf8_lossy(&chunk));
                let found: Vec<serde_json::Value> = text
                    .split("\n\n")
                    .filter(|f| f.contains("event: button"))
                    .filter_map(|f| f.lines().find_map(|l| l.strip_prefix("data: ")))
                    .filter_map(|d| serde_json::from_str(d).ok())
                    .collect();
                if found.len() >= 3 {
                    return found;
                }
            }
        })
        .await
        .expect("three button events");
        let seen: Vec<(bool, u64, u64, u64)> = buttons
            .iter()
            .map(|b| {
                (
                    b["down"].as_bool().unwrap(),
                    b["unix_ms"].as_u64().unwrap(),
                    b["presses"].as_u64().unwrap(),
                    b["releases"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            seen,
            [
                (true, 1_000, 1, 0),
                (false, 1_250, 1, 1),
                (true, 2_000, 2, 1)
            ]
        );
        let status = status_json(&s, false);
        assert_eq!(status["push_to_talk"]["button_down"], true);
        assert_eq!(status["push_to_talk"]["releases"], 1);
        cancel.cancel();
        let _ = server.await;
    }

    /// `s` served on a free loopback port: its address, the token that
    /// stops it and the server task.
    async fn serving(
        s: &Arc<Shared>,
    ) -> (SocketAddr, CancellationToken, tokio::task::JoinHandle<()>) {
        let (listener, addr) = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let cancel = s.shutdown.clone();
        let server = tokio::spawn(serve(listener, Arc::clone(s), cancel.clone()));
        (addr, cancel, server)
    }

    /// One request over loopback: (status line + headers, body).
    async fn exchange(addr: SocketAddr, req: &str) -> (String, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        let _ = c.write_all(req.as_bytes()).await;
        let mut out = Vec::new();
        let _ = c.read_to_end(&mut out).await;
        let text = String::from_utf8_lossy(&out).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        (head.to_owned(), body.to_owned())
    }

    fn get_with(path: &str, header: &str) -> String {
        format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{header}\r\n\r\n")
    }

    /// Issue 28 row 2: a reload that changed nothing revoked every session,
    /// and the page's polls with the dead cookie counted as failed token
    /// attempts until the technician's address was locked out (429), for
    /// the right token too. Now a reload that keeps the token keeps the
    /// sessions, and a dead cookie is "log in again", never a failure.
    #[tokio::test]
    async fn a_dead_session_is_not_a_failed_attempt_and_a_reload_keeps_sessions() {
        let s = shared_with_agent();
        let (addr, cancel, server) = serving(&s).await;
        let (head, _) = exchange(
            addr,
            "POST /login HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 12\r\n\r\ntoken=s3cret",
        )
        .await;
        let cookie = head
            .lines()
            .find_map(|l| {
                l.strip_prefix("set-cookie: ")
                    .or(l.strip_prefix("Set-Cookie: "))
            })
            .and_then(|c| c.split(';').next())
            .unwrap_or_else(|| panic!("no session cookie: {head}"))
            .to_owned();
        // A reload with the same token (what a no-op reload does).
        let mut cfg = crate::base::config::Config::default();
        cfg.status.token = Some(crate::base::config::Secret::new("s3cret"));
        s.reconfigured(&cfg, Vec::new());
        let (head, _) = exchange(
            addr,
            &get_with("/api/v1/transcripts", &format!("Cookie: {cookie}")),
        )
        .await;
        assert!(
            head.starts_with("HTTP/1.1 200"),
            "the session survived the reload: {head}"
        );
        // The page polling with a dead cookie, far past the failure burst.
        let dead = "Cookie: talkie_session=0123456789abcdef";
        for _ in 0..3 * auth::BURST as usize {
            let (head, body) = exchange(addr, &get_with("/api/v1/status", dead)).await;
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
            assert!(body.contains("\"access\":\"anonymous\""), "{body}");
            assert!(
                head.to_ascii_lowercase()
                    .contains("set-cookie: talkie_session=;"),
                "told to forget it: {head}"
            );
            let (head, body) = exchange(addr, &get_with("/api/v1/transcripts", dead)).await;
            assert!(head.starts_with("HTTP/1.1 401"), "{head}");
            assert!(body.contains("log in again"), "{body}");
        }
        assert_eq!(
            s.auth_failures.load(Relaxed),
            0,
            "no failed token attempt counted"
        );
        let (head, _) = exchange(
            addr,
            &get_with("/api/v1/transcripts", "Authorization: Bearer s3cret"),
        )
        .await;
        assert!(
            head.starts_with("HTTP/1.1 200"),
            "the right token is not locked out: {head}"
        );
        // A changed token still revokes every session.
        cfg.status.token = Some(crate::base::config::Secret::new("new-token"));
        s.reconfigured(&cfg, Vec::new());
        let (head, _) = exchange(
            addr,
            &get_with("/api/v1/transcripts", &format!("Cookie: {cookie}")),
        )
        .await;
        assert!(head.starts_with("HTTP/1.1 401"), "{head}");
        cancel.cancel();
        let _ = server.await;
    }

    /// Issue 28 row 5: with the technician's cookie, a page on another site
    /// could POST state changes (`text/plain`, so no preflight). Now a
    /// cookie-authenticated POST from another origin is refused (403); the
    /// page's own and Bearer requests are not.
    #[tokio::test]
    async fn cookie_state_changes_from_another_origin_are_refused() {
        let s = shared_with_agent();
        let (addr, cancel, server) = serving(&s).await;
        let cookie = s.auth().session_cookie().unwrap();
        let cookie = cookie.split(';').next().unwrap();
        let post = |headers: &str| {
            format!(
                "POST /api/v1/dead-letters/drop HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
                 Content-Type: text/plain\r\nContent-Length: 12\r\n{headers}\r\n\r\n{{\"all\":true}}"
            )
        };
        let cross = [
            format!("Cookie: {cookie}\r\nOrigin: http://evil.example"),
            format!("Cookie: {cookie}\r\nSec-Fetch-Site: cross-site"),
            format!("Cookie: {cookie}\r\nOrigin: null"),
        ];
        for h in &cross {
            let (head, body) = exchange(addr, &post(h)).await;
            assert!(head.starts_with("HTTP/1.1 403"), "{h}: {head}");
            assert!(body.contains("cross-origin"), "{body}");
        }
        let same = [
            format!("Cookie: {cookie}\r\nOrigin: http://{addr}\r\nSec-Fetch-Site: same-origin"),
            format!("Cookie: {cookie}"),
            "Authorization: Bearer s3cret\r\nOrigin: http://evil.example".to_owned(),
        ];
        for h in &same {
            let (head, _) = exchange(addr, &post(h)).await;
            assert!(
                !head.starts_with("HTTP/1.1 403") && !head.starts_with("HTTP/1.1 401"),
                "{h}: {head}"
            );
        }
        cancel.cancel();
        let _ = server.await;
    }

    /// Issue 28 row 3: live-event clients that never read were never
    /// dropped (159 of 171 still held after 150 s, one address pinning 128
    /// LAN slots). Now one address holds at most 8 streams, and a client
    /// whose send queue stays full is closed and counted, while one that
    /// reads keeps its stream.
    #[tokio::test]
    async fn event_clients_that_stop_reading_are_dropped_and_capped_per_address() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let s = shared_with_agent();
        let (addr, cancel, server) = serving(&s).await;
        let req = b"GET /api/v1/events HTTP/1.1\r\nHost: t\r\n\r\n";
        // A stuck reader: a tiny receive window, and it never reads.
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.set_recv_buffer_size(1024).unwrap();
        let mut stuck = sock.connect(addr).await.unwrap();
        stuck.write_all(req).await.unwrap();
        // A reader, and six more streams: eight from this address.
        let mut reader = tokio::net::TcpStream::connect(addr).await.unwrap();
        reader.write_all(req).await.unwrap();
        let mut others = Vec::new();
        for _ in 0..6 {
            let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
            c.write_all(req).await.unwrap();
            let mut first = [0u8; 12];
            c.read_exact(&mut first).await.unwrap();
            others.push(c);
        }
        let (head, _) = exchange(addr, std::str::from_utf8(req).unwrap()).await;
        assert!(
            head.starts_with("HTTP/1.1 503"),
            "a ninth stream from one address: {head}"
        );
        // The stuck one is closed within a bounded time; the reader reads on.
        let mut buf = vec![0u8; 64 * 1024];
        let deadline = Instant::now() + Duration::from_secs(120);
        while s.conns.stalled_dropped.load(Relaxed) == 0 {
            assert!(
                Instant::now() < deadline,
                "the stuck client was never dropped"
            );
            let n = tokio::time::timeout(Duration::from_secs(5), reader.read(&mut buf))
                .await
                .expect("the reader's stream goes on")
                .unwrap();
            assert!(n > 0);
            for c in &mut others {
                let _ = tokio::time::timeout(Duration::from_millis(1), c.read(&mut buf)).await;
            }
        }
        assert_eq!(
            s.conns.stalled_dropped.load(Relaxed),
            1,
            "only the stuck one"
        );
        // Its connection is closed: reading it now drains and ends.
        let mut rest = Vec::new();
        let end = tokio::time::timeout(Duration::from_secs(30), stuck.read_to_end(&mut rest)).await;
        assert!(
            matches!(end, Ok(Ok(_)) | Ok(Err(_))),
            "closed by the server"
        );
        cancel.cancel();
        let _ = server.await;
    }

    /// Issue 28 row 10: the protocol errors hyper answers before the
    /// router sees a request had empty bodies and no security headers.
    #[tokio::test]
    async fn protocol_errors_are_json_with_the_security_headers() {
        let s = shared_with_agent();
        let (addr, cancel, server) = serving(&s).await;
        let long_uri = format!("GET /{} HTTP/1.1\r\nHost: t\r\n\r\n", "a".repeat(70_000));
        let many: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
        let big_header = format!("GET / HTTP/1.1\r\nHost: t\r\n{many}\r\n");
        for (req, code) in [
            ("NOT A REQUEST LINE\r\n\r\n".to_owned(), "400"),
            (
                "GET / HTTP/1.1\r\nHost: t\r\nX-Nul: a\0b\r\n\r\n".to_owned(),
                "400",
            ),
            (long_uri, "4"),
            (big_header, "431"),
        ] {
            let (head, body) = exchange(addr, &req).await;
            assert!(head.starts_with(&format!("HTTP/1.1 {code}")), "{head}");
            let lower = head.to_ascii_lowercase();
            assert!(lower.contains("content-type: application/json"), "{head}");
            assert!(lower.contains("x-content-type-options: nosniff"), "{head}");
            assert!(
                lower.contains("content-security-policy: default-src 'none'"),
                "{head}"
            );
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert!(v["error"].is_string(), "{body}");
        }
        // An answer of the router is left alone.
        let (head, body) = exchange(
            addr,
            "GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(body, "ok\n");
        cancel.cancel();
        let _ = server.await;
    }

    /// Issue 18 row 19: errors axum makes itself (405, 413) are JSON too.
    #[tokio::test]
    async fn every_error_body_is_json() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let s = shared_with_agent();
        let (addr, cancel, server) = serving(&s).await;
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
