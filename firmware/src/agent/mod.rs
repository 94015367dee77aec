//! The agent link: transcripts are committed to a durable outbox
//! ([`outbox`]), then delivered in order by one tokio task ([`link`]) with
//! retry, backoff and a circuit breaker ([`breaker`]). The payload, path
//! and headers come from `talkie-agent-api`, shared with the development
//! mock agent (`mock-agent/`, not shipped). Contract: `docs/agent-api.md`.

pub mod breaker;
pub mod link;
pub mod outbox;
pub mod reach;
pub mod tool;

use crate::base::config::Config;
use crate::base::telemetry::Histogram;
use breaker::{Backoff, Breaker};
use link::{FailureClass, Link, LinkError};
use outbox::{Outbox, OutboxError, SharedOutbox};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
pub use talkie_agent_api::UtterancePayload;

/// Errors setting up the agent link.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    /// The blocking task that opens the outbox panicked or was cancelled.
    #[error("opening the outbox did not complete: {0}")]
    OpenTask(tokio::task::JoinError),
    #[error("cannot start the async runtime or signal handling: {0}")]
    Runtime(std::io::Error),
    #[error("cannot encode JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("agent.url is not set: there is no agent to deliver to")]
    NoUrl,
}

/// The outbox as shared by the controller (which adds) and the link
/// (which delivers).
#[derive(Debug, Clone)]
pub struct OutboxHandle {
    pub outbox: Arc<SharedOutbox>,
    /// Wakes the link when an item is added.
    pub wake: Arc<tokio::sync::Notify>,
    pub stats: Arc<AgentStats>,
    /// The link's bearer token (a reload replaces it, then wakes the link).
    pub token: link::AgentToken,
}

impl OutboxHandle {
    /// Put in a new agent token (reload) and wake a paused link.
    pub fn set_token(&self, token: Option<String>) {
        *self.token.write().unwrap_or_else(PoisonError::into_inner) = token;
        self.wake.notify_one();
    }

    /// Commit one transcript to the outbox (blocking: SQLite waits for the
    /// disk), count it and wake the link; a failure is counted and shown as
    /// the last error.
    pub fn enqueue_blocking(&self, id: &str, body: &str) -> Result<(), OutboxError> {
        let res = self.outbox.with(|o| o.enqueue(id, body));
        match &res {
            Ok(()) => {
                self.stats.enqueued.fetch_add(1, Relaxed);
                self.wake.notify_one();
            }
            Err(e) => {
                self.stats.enqueue_failed.fetch_add(1, Relaxed);
                self.stats.set_last_error(&e.to_string());
            }
        }
        res
    }

    /// Put dead letters back in the queue (`id`, or all of them) and wake
    /// the link; returns how many moved.
    pub async fn retry_dead(&self, id: Option<String>) -> Result<u64, OutboxError> {
        let n = self
            .dead_letter_op(move |o| o.retry_dead(id.as_deref()))
            .await?;
        self.wake.notify_one();
        Ok(n)
    }

    /// Delete dead letters (`id`, or all of them); returns how many.
    pub async fn drop_dead(&self, id: Option<String>) -> Result<u64, OutboxError> {
        self.dead_letter_op(move |o| o.drop_dead(id.as_deref()))
            .await
    }

    async fn dead_letter_op(
        &self,
        op: impl FnOnce(&mut Outbox) -> Result<u64, OutboxError> + Send + 'static,
    ) -> Result<u64, OutboxError> {
        let (n, left) = link::with_outbox(&self.outbox, move |o| {
            let n = op(o)?;
            Ok((n, o.dead_count()?))
        })
        .await?;
        self.stats.dead_letter_depth.store(left, Relaxed);
        Ok(n)
    }
}

/// Open the outbox (recovering a corrupt one) and build the delivery task
/// for `url`.
pub async fn open(
    config: &Config,
    url: &str,
    stats: Arc<AgentStats>,
) -> Result<(Link, OutboxHandle), AgentError> {
    let endpoint = link::endpoint(url)?;
    let client = link::client(&config.agent)?;
    let (path, max) = (config.outbox.path.clone(), config.outbox.max_items);
    let (shared, recovered) = tokio::task::spawn_blocking(move || SharedOutbox::open(&path, max))
        .await
        .map_err(AgentError::OpenTask)?;
    if recovered.is_some() {
        stats.corrupt_recovered.fetch_add(1, Relaxed);
    }
    // Right from the start, not after the link's first turn. Dead letters
    // change only when one is added, retried or dropped: counted here and
    // after each of those, not on every turn. A closed outbox (unwritable)
    // shows zeros until it opens.
    let outbox = Arc::new(shared);
    // A closed outbox is not opened a second time here: the link's first
    // turn tries again.
    if let Some(why) = outbox.unavailable() {
        stats.set_last_error(&why);
    } else if let Ok((depth, oldest, dead)) = link::with_outbox(&outbox, |o| {
        Ok((o.depth()?, o.oldest_ms()?, o.dead_count()?))
    })
    .await
    {
        stats.outbox_depth.store(depth, Relaxed);
        stats.oldest_created_ms.store(oldest.unwrap_or(0), Relaxed);
        stats.dead_letter_depth.store(dead, Relaxed);
    }
    let wake = Arc::new(tokio::sync::Notify::new());
    let a = &config.agent;
    let token: link::AgentToken = Arc::new(std::sync::RwLock::new(
        a.token.as_ref().map(|t| t.expose().to_owned()),
    ));
    tracing::info!(
        url = %crate::base::config::redact_url(endpoint.as_str()),
        outbox = %config.outbox.path.display(),
        max_items = config.outbox.max_items,
        "agent link ready"
    );
    let link = Link {
        outbox: Arc::clone(&outbox),
        client,
        url: endpoint,
        token: Arc::clone(&token),
        max_attempts: config.outbox.max_attempts,
        max_age: (config.outbox.max_age_h > 0)
            .then(|| Duration::from_secs(u64::from(config.outbox.max_age_h) * 3600)),
        backoff: Backoff::new(
            Duration::from_millis(a.backoff_min_ms.into()),
            Duration::from_millis(a.backoff_max_ms.into()),
        ),
        breaker: Breaker::new(
            a.breaker_failures,
            Duration::from_secs(a.breaker_open_s.into()),
        ),
        stats: Arc::clone(&stats),
        wake: Arc::clone(&wake),
        exit_when_empty: false,
        beat_every: crate::base::supervisor::probe_interval(config.watchdog.stall_ms),
        attempt_limit: link::attempt_limit(a),
        retry_after_max: Duration::from_secs(a.retry_after_max_s.into()),
    };
    Ok((
        link,
        OutboxHandle {
            outbox,
            wake,
            stats,
            token,
        },
    ))
}

/// A new UUIDv7 as text.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// What the link counts; read by logs, the status page and `/metrics`.
#[derive(Debug, Default)]
pub struct AgentStats {
    /// Transcripts committed to the outbox.
    pub enqueued: AtomicU64,
    /// Transcripts the outbox refused (full, disk error).
    pub enqueue_failed: AtomicU64,
    /// Items the agent acknowledged (2xx or 409).
    pub delivered: AtomicU64,
    /// Of those, 409: the agent already had it (a duplicate on the wire).
    pub already_delivered: AtomicU64,
    /// Items moved to the dead-letter table (any reason).
    pub dead_lettered: AtomicU64,
    /// Of those: after `outbox.max_attempts` server errors.
    pub poisoned: AtomicU64,
    /// Of those: older than `outbox.max_age_h`.
    pub expired: AtomicU64,
    /// Dead letters kept now.
    pub dead_letter_depth: AtomicU64,
    /// The HTTP status delivery is paused on (401/403/404); 0 = flowing.
    pub paused_status: std::sync::atomic::AtomicU16,
    /// Times delivery paused.
    pub paused: AtomicU64,
    /// Retried attempts by [`FailureClass`] (index = position in `ALL`).
    pub retries: [AtomicU64; FailureClass::ALL.len()],
    pub breaker_opened: AtomicU64,
    /// [`breaker::BreakerState`] as u8.
    pub breaker_state: AtomicU8,
    pub outbox_depth: AtomicU64,
    /// Unix ms of the oldest waiting item; 0 = none.
    pub oldest_created_ms: AtomicU64,
    /// Corrupt databases moved aside at start.
    pub corrupt_recovered: AtomicU64,
    /// Agent request latency.
    pub latency: Histogram,
    /// Heartbeat of the delivery task.
    pub beat_ms: AtomicU64,
    last_error: Mutex<Option<String>>,
    last_reply: Mutex<Option<String>>,
    /// The last HTTP status the agent answered a delivery with; 0 = none.
    pub last_http_status: std::sync::atomic::AtomicU16,
    /// The agent's clock minus ours, ms, from its last `Date` header
    /// (whole seconds on the wire, so ±1 s); valid once `clock_seen`.
    pub clock_offset_ms: std::sync::atomic::AtomicI64,
    pub clock_seen: std::sync::atomic::AtomicBool,
    reach: Mutex<Option<reach::Reachability>>,
}

impl AgentStats {
    /// The delivery task is alive (see [`link`]'s invariant).
    pub fn beat(&self) {
        self.beat_ms
            .store(crate::base::telemetry::now_ms(), Relaxed);
    }

    pub fn retry(&self, class: FailureClass) {
        if let Some(i) = FailureClass::ALL.iter().position(|c| *c == class) {
            self.retries[i].fetch_add(1, Relaxed);
        }
    }

    /// One log line with every counter (at the end of a run). Its own
    /// target, so `RUST_LOG=warn,talkie::agent::summary=info` keeps just it.
    pub fn log_summary(&self) {
        tracing::info!(
            target: "talkie::agent::summary",
            enqueued = self.enqueued.load(Relaxed),
            enqueue_failed = self.enqueue_failed.load(Relaxed),
            delivered = self.delivered.load(Relaxed),
            already_delivered = self.already_delivered.load(Relaxed),
            dead_lettered = self.dead_lettered.load(Relaxed),
            retries = self.retries_total(),
            breaker_opened = self.breaker_opened.load(Relaxed),
            outbox_depth = self.outbox_depth.load(Relaxed),
            "agent link summary"
        );
    }

    pub fn retries_total(&self) -> u64 {
        self.retries.iter().map(|r| r.load(Relaxed)).sum()
    }

    pub fn set_last_error(&self, e: &str) {
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(e.to_owned());
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// An answer from the agent: its status, and its clock's offset from
    /// ours when it sent a `Date`.
    pub fn note_answer(&self, status: u16, date: Option<&str>) {
        self.last_http_status.store(status, Relaxed);
        let theirs = date.and_then(|d| httpdate::parse_http_date(d).ok());
        if let Some(theirs) = theirs {
            let ms = |t: std::time::SystemTime| {
                t.duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            };
            let offset = ms(theirs) - ms(std::time::SystemTime::now());
            self.clock_offset_ms.store(offset, Relaxed);
            self.clock_seen.store(true, Relaxed);
        }
    }

    /// The agent's clock minus ours, seconds, once a `Date` was seen.
    pub fn clock_offset_s(&self) -> Option<f64> {
        self.clock_seen
            .load(Relaxed)
            .then(|| self.clock_offset_ms.load(Relaxed) as f64 / 1000.0)
    }

    pub fn set_reachability(&self, r: reach::Reachability) {
        *self.reach.lock().unwrap_or_else(PoisonError::into_inner) = Some(r);
    }

    /// The last reachability check, if one ran.
    pub fn reachability(&self) -> Option<reach::Reachability> {
        self.reach
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn set_last_reply(&self, r: &str) {
        *self
            .last_reply
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(r.to_owned());
    }

    pub fn last_reply(&self) -> Option<String> {
        self.last_reply
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}
