//! Delivery: one tokio task that sends the outbox's oldest item to the
//! agent, one request in flight, in order, until the outbox is empty; then
//! waits to be woken by a new item.
//!
//! Per response: 2xx → delivered (an optional `{"reply_text": …}` body is
//! kept); 409 → the agent already has it (delivered); 429/503 → retry,
//! honouring `Retry-After`; 401/403/404 → delivery *pauses* (the agent
//! rejects our token or URL: every item would fail the same way, so none
//! is dead-lettered; retried with the backoff, at most every
//! `agent.backoff_max_ms`, and at once after a reload changes
//! `agent.token`); other 4xx → dead letter (never retried); 5xx, timeouts
//! and connection errors → retry. Retries wait an exponential backoff with
//! full jitter (reset after a success) and feed the circuit breaker; while
//! the breaker is open nothing is sent.
//!
//! One item cannot block the rest: after `outbox.max_attempts` failed
//! answers on it (5xx but 503, and any status the contract does not
//! define), or once it is older than `outbox.max_age_h`, it moves to the
//! dead-letter table and the next one is sent.
//!
//! Architecture invariant: **no heartbeat depends on the network.** Every
//! wait of the task on a timer or on the agent (backoff, an open breaker,
//! `Retry-After`, DNS, a request in flight) is bounded and beats every
//! `beat_every` ([`beating`]): an agent that is away, slow or hostile is a
//! degraded state the status page shows, never a wedged loop that makes the
//! watchdog restart the kiosk. Only the outbox's own disk work is outside
//! it: a disk that hangs is what the watchdog is for.

use super::breaker::{Backoff, Breaker, BreakerState};
use super::outbox::{unix_ms, Outbox, OutboxError, Pending, SharedOutbox};
use super::AgentStats;
use crate::base::config::AgentConfig;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Longest a `Retry-After` is parsed as; `agent.retry_after_max_s`
/// (default 5 min, docs/agent-api.md) caps it further.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);
/// Longest an error text kept for the status page.
const MAX_ERROR_LEN: usize = 300;
/// Most bytes of an agent's reply body read; the rest is not read (a
/// broken or hostile agent must not fill memory, the outbox or the page).
pub const MAX_REPLY_BYTES: usize = 64 * 1024;
/// Longest `reply_text` kept (characters); longer ones are cut with `…`.
pub const MAX_REPLY_TEXT_CHARS: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("agent.url {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("agent.ca_file {}: {reason}", path.display())]
    Ca { path: PathBuf, reason: String },
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

/// How one attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Delivered {
        reply_text: Option<String>,
    },
    /// 409: the agent already has this id.
    AlreadyDelivered,
    Retry {
        class: FailureClass,
        retry_after: Option<Duration>,
        error: String,
    },
    Permanent {
        status: u16,
        reason: String,
    },
    /// 401/403/404: the agent rejects our credentials or URL.
    Rejected {
        status: u16,
        reason: String,
    },
}

/// Why an attempt is retried (metrics label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureClass {
    Connect,
    Timeout,
    /// 429 or 503.
    Throttled,
    /// Other 5xx.
    Server,
    /// A status the contract does not define (1xx, 3xx, 600+): counts
    /// toward `outbox.max_attempts` like a server error.
    Unexpected,
    Other,
}

impl FailureClass {
    pub const ALL: [FailureClass; 6] = [
        FailureClass::Connect,
        FailureClass::Timeout,
        FailureClass::Throttled,
        FailureClass::Server,
        FailureClass::Unexpected,
        FailureClass::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Timeout => "timeout",
            Self::Throttled => "throttled",
            Self::Server => "server",
            Self::Unexpected => "unexpected",
            Self::Other => "other",
        }
    }
}

/// `Retry-After`: delay-seconds or an HTTP date.
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    let d = if let Ok(secs) = v.parse::<u64>() {
        Duration::from_secs(secs)
    } else {
        let at = httpdate::parse_http_date(v).ok()?;
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO)
    };
    Some(d.min(MAX_RETRY_AFTER))
}

/// Classify an HTTP status (and `Retry-After`, reply body).
pub fn classify(status: u16, retry_after: Option<&str>, body: &str) -> Outcome {
    match status {
        200..=299 => Outcome::Delivered {
            reply_text: serde_json::from_str::<serde_json::Value>(body)
                .ok()
                .and_then(|v| v.get("reply_text")?.as_str().map(cut_reply)),
        },
        409 => Outcome::AlreadyDelivered,
        429 | 503 => Outcome::Retry {
            class: FailureClass::Throttled,
            retry_after: retry_after.and_then(parse_retry_after),
            error: format!("HTTP {status}"),
        },
        500..=599 => Outcome::Retry {
            class: FailureClass::Server,
            retry_after: None,
            error: format!("HTTP {status}"),
        },
        401 | 403 | 404 => Outcome::Rejected {
            status,
            reason: truncate(body),
        },
        400..=499 => Outcome::Permanent {
            status,
            reason: truncate(body),
        },
        _ => Outcome::Retry {
            class: FailureClass::Unexpected,
            retry_after: None,
            error: format!("unexpected HTTP {status}"),
        },
    }
}

/// `reply_text` bounded for storage and display.
fn cut_reply(s: &str) -> String {
    match s.char_indices().nth(MAX_REPLY_TEXT_CHARS) {
        Some((end, _)) => format!("{}…", &s[..end]),
        None => s.to_owned(),
    }
}

/// Read at most [`MAX_REPLY_BYTES`] of a reply body.
async fn read_capped(resp: &mut reqwest::Response) -> Result<String, reqwest::Error> {
    let mut body: Vec<u8> = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        let room = MAX_REPLY_BYTES.saturating_sub(body.len());
        body.extend_from_slice(chunk.get(..room.min(chunk.len())).unwrap_or_default());
        if body.len() >= MAX_REPLY_BYTES {
            break;
        }
    }
    Ok(String::from_utf8_lossy(&body).into_owned())
}

fn truncate(s: &str) -> String {
    let mut end = s.len().min(MAX_ERROR_LEN);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// The full error chain of a reqwest error, e.g. "error sending request:
/// … invalid peer certificate: UnknownIssuer".
pub(super) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    if s.contains("UnknownIssuer") || s.contains("invalid peer certificate") {
        s = format!(
            "the agent's TLS certificate is not trusted (add its CA to agent.ca_file): {s}"
        );
    }
    truncate(&s)
}

/// Build the HTTP client: rustls with the system roots plus `agent.ca_file`.
pub fn client(cfg: &AgentConfig) -> Result<reqwest::Client, LinkError> {
    client_builder(cfg)?
        .build()
        .map_err(|e| LinkError::Client(e.to_string()))
}

/// The client's settings, for [`client`] and the reachability probe.
pub fn client_builder(cfg: &AgentConfig) -> Result<reqwest::ClientBuilder, LinkError> {
    let mut b = reqwest::Client::builder()
        .connect_timeout(Duration::from_millis(cfg.connect_timeout_ms.into()))
        .timeout(Duration::from_millis(cfg.request_timeout_ms.into()))
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(1)
        // A redirect would turn the POST into a GET (301) or forward the
        // transcript elsewhere (307): a 3xx is an error naming the target.
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("talkie/", env!("CARGO_PKG_VERSION")));
    if let Some(path) = &cfg.ca_file {
        let pem = std::fs::read(path).map_err(|e| LinkError::Ca {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| LinkError::Ca {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        if certs.is_empty() {
            return Err(LinkError::Ca {
                path: path.clone(),
                reason: "no PEM certificate in the file".into(),
            });
        }
        for c in certs {
            b = b.add_root_certificate(c);
        }
    }
    Ok(b)
}

/// The endpoint for `agent.url`.
pub fn endpoint(url: &str) -> Result<reqwest::Url, LinkError> {
    let base = reqwest::Url::parse(url).map_err(|e| LinkError::Url {
        url: url.to_owned(),
        reason: e.to_string(),
    })?;
    let joined = format!(
        "{}{}",
        base.as_str().trim_end_matches('/'),
        talkie_agent_api::UTTERANCES_PATH
    );
    reqwest::Url::parse(&joined).map_err(|e| LinkError::Url {
        url: url.to_owned(),
        reason: e.to_string(),
    })
}

/// Send one item.
pub async fn attempt(
    client: &reqwest::Client,
    url: &reqwest::Url,
    token: Option<&str>,
    item: &Pending,
    stats: &AgentStats,
) -> Outcome {
    let mut req = client
        .post(url.clone())
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(talkie_agent_api::IDEMPOTENCY_KEY, &item.id)
        .body(item.body.clone());
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    match req.send().await {
        Ok(mut resp) => {
            let status = resp.status().as_u16();
            let header = |name: reqwest::header::HeaderName| {
                resp.headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            };
            stats.note_answer(status, header(reqwest::header::DATE).as_deref());
            let retry_after = header(reqwest::header::RETRY_AFTER);
            if matches!(status, 301 | 302 | 303 | 307 | 308) {
                let to = header(reqwest::header::LOCATION).unwrap_or_else(|| "nowhere".into());
                return Outcome::Retry {
                    class: FailureClass::Other,
                    retry_after: None,
                    error: truncate(&format!(
                        "HTTP {status} redirect to {to}: redirects are not followed; set agent.url to the final address"
                    )),
                };
            }
            // The body is capped; a failure to read it is a failed attempt
            // only when the status was not already final.
            let body = match read_capped(&mut resp).await {
                Ok(b) => b,
                Err(e) if (200..300).contains(&status) || status == 409 => {
                    tracing::debug!(error = %e, "agent reply body unreadable");
                    String::new()
                }
                Err(e) => {
                    return Outcome::Retry {
                        class: if e.is_timeout() {
                            FailureClass::Timeout
                        } else {
                            FailureClass::Connect
                        },
                        retry_after: None,
                        error: chain(&e.without_url()),
                    }
                }
            };
            classify(status, retry_after.as_deref(), &body)
        }
        Err(e) => Outcome::Retry {
            class: if e.is_timeout() {
                FailureClass::Timeout
            } else if e.is_connect() {
                FailureClass::Connect
            } else {
                FailureClass::Other
            },
            retry_after: None,
            error: chain(&e.without_url()),
        },
    }
}

/// Everything the delivery task needs.
pub struct Link {
    pub outbox: Arc<SharedOutbox>,
    pub client: reqwest::Client,
    pub url: reqwest::Url,
    /// The bearer token; a reload may replace it (then `wake` is notified).
    pub token: AgentToken,
    /// Server errors one item may get before it is dead-lettered.
    pub max_attempts: u32,
    /// How long an item may wait before it is dead-lettered; None = ever.
    pub max_age: Option<Duration>,
    pub backoff: Backoff,
    pub breaker: Breaker,
    pub stats: Arc<AgentStats>,
    /// Woken when an item is added.
    pub wake: Arc<Notify>,
    /// End once the outbox is empty (`talkie outbox deliver --until-empty`).
    pub exit_when_empty: bool,
    /// How often the task beats while it waits (a quarter of
    /// `watchdog.stall_ms`, 0.1–1 s: [`crate::base::supervisor::probe_interval`]).
    pub beat_every: Duration,
    /// The longest one attempt may take, whatever the HTTP client does
    /// ([`attempt_limit`]).
    pub attempt_limit: Duration,
    /// The longest `Retry-After` honoured (`agent.retry_after_max_s`).
    pub retry_after_max: Duration,
}

/// The longest one attempt may take: the client's connect and request
/// timeouts bound it already; this also bounds a resolver that never
/// answers.
pub fn attempt_limit(cfg: &AgentConfig) -> Duration {
    Duration::from_millis(u64::from(cfg.connect_timeout_ms) + u64::from(cfg.request_timeout_ms))
        + Duration::from_secs(1)
}

/// Await `f`, beating every `every` while it is pending: what the link
/// waits for (a timer, the agent) is bounded, so waiting is being alive.
/// The beat comes from this task's own polling: a task that is not polled
/// at all does not beat.
pub async fn beating<F: std::future::Future>(
    stats: &AgentStats,
    every: Duration,
    f: F,
) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            out = &mut f => return out,
            _ = tick.tick() => stats.beat(),
        }
    }
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("url", &self.url.as_str())
            .finish_non_exhaustive()
    }
}

/// The agent's bearer token, shared by the link and the reload path.
pub type AgentToken = Arc<std::sync::RwLock<Option<String>>>;

/// Run a blocking outbox operation off the async threads.
pub async fn with_outbox<T: Send + 'static>(
    outbox: &Arc<SharedOutbox>,
    f: impl FnOnce(&mut Outbox) -> Result<T, OutboxError> + Send + 'static,
) -> Result<T, OutboxError> {
    let outbox = Arc::clone(outbox);
    match tokio::task::spawn_blocking(move || outbox.with(f)).await {
        Ok(r) => r,
        Err(e) => Err(OutboxError::Io {
            path: PathBuf::from("outbox"),
            source: std::io::Error::other(e.to_string()),
        }),
    }
}

impl Link {
    fn set_breaker(&self) {
        self.stats
            .breaker_state
            .store(self.breaker.state() as u8, Relaxed);
    }

    async fn refresh_depth(&self) {
        // The dead letters are counted again only when another process
        // (`talkie outbox dead-letter …`) changed the file; this process's
        // own changes update the count where they happen.
        if let Ok((depth, oldest, dead)) = with_outbox(&self.outbox, |o| {
            let dead = if o.changed_elsewhere()? {
                Some(o.dead_count()?)
            } else {
                None
            };
            Ok((o.depth()?, o.oldest_ms()?, dead))
        })
        .await
        {
            self.stats.outbox_depth.store(depth, Relaxed);
            self.stats
                .oldest_created_ms
                .store(oldest.unwrap_or(0), Relaxed);
            if let Some(dead) = dead {
                self.stats.dead_letter_depth.store(dead, Relaxed);
            }
        }
    }

    fn token(&self) -> Option<String> {
        self.token
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Record a delivery the agent acknowledged; until it is on disk
    /// (a full disk fails the write) nothing else is sent and the item is
    /// not sent again: the write alone is retried with the backoff.
    async fn record_delivered(
        &mut self,
        seq: i64,
        reply: Option<String>,
        cancel: &CancellationToken,
    ) -> bool {
        let mut wait = Duration::from_secs(1);
        loop {
            let r = reply.clone();
            match with_outbox(&self.outbox, move |o| o.mark_delivered(seq, r.as_deref())).await {
                Ok(()) => return false,
                Err(e) => {
                    tracing::error!(error = %e, retry_in_ms = wait.as_millis() as u64, "cannot record a delivery the agent acknowledged; retrying the write (nothing is sent meanwhile)");
                    self.stats.set_last_error(&e.to_string());
                    if self.pause(wait, false, cancel).await {
                        return true;
                    }
                    wait = (wait * 2).min(Duration::from_secs(60));
                }
            }
        }
    }

    /// Move `item` to the dead letters; true when cancelled while waiting.
    async fn dead_letter(
        &mut self,
        item: &Pending,
        status: u16,
        reason: String,
        cancel: &CancellationToken,
    ) -> bool {
        self.stats.dead_lettered.fetch_add(1, Relaxed);
        self.stats.set_last_error(&reason);
        tracing::error!(target: "talkie::agent", id = %item.id, status, reason = %reason, "transcript moved to the dead-letter table (`talkie outbox dead-letter retry` sends it again)");
        let seq = item.seq;
        match with_outbox(&self.outbox, move |o| {
            o.mark_dead(seq, status, &reason)?;
            o.dead_count()
        })
        .await
        {
            Ok(dead) => {
                self.stats.dead_letter_depth.store(dead, Relaxed);
                false
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot move to dead letters");
                self.pause(Duration::from_secs(1), false, cancel).await
            }
        }
    }

    /// Deliver until `cancel`: the request in flight is abandoned (the item
    /// stays in the outbox and is sent again after restart).
    pub async fn run(mut self, cancel: CancellationToken) {
        self.set_breaker();
        loop {
            self.stats.beat();
            self.refresh_depth().await;
            let head = match with_outbox(&self.outbox, |o| o.head()).await {
                Ok(h) => h,
                Err(e) => {
                    tracing::error!(error = %e, "outbox unreadable; retrying in 5 s");
                    self.stats.set_last_error(&e.to_string());
                    if self.pause(Duration::from_secs(5), false, &cancel).await {
                        return;
                    }
                    continue;
                }
            };
            let Some(item) = head else {
                if self.exit_when_empty {
                    return;
                }
                if self.pause(Duration::from_secs(1), true, &cancel).await {
                    return;
                }
                continue;
            };
            if let Some(max_age) = self.max_age {
                let age = Duration::from_millis(unix_ms().saturating_sub(item.created_ms));
                if age >= max_age {
                    self.stats.expired.fetch_add(1, Relaxed);
                    let reason = format!(
                        "waited {} h, longer than outbox.max_age_h",
                        age.as_secs() / 3600
                    );
                    if self.dead_letter(&item, 0, reason, &cancel).await {
                        return;
                    }
                    continue;
                }
            }
            if let Err(wait) = self.breaker.allow(Instant::now()) {
                if self.pause(wait, false, &cancel).await {
                    return;
                }
                continue;
            }
            self.set_breaker();
            let t0 = Instant::now();
            tracing::debug!(target: "talkie::agent", id = %item.id, attempt = item.attempts + 1, "sending");
            let token = self.token();
            let bounded = tokio::time::timeout(
                self.attempt_limit,
                attempt(
                    &self.client,
                    &self.url,
                    token.as_deref(),
                    &item,
                    &self.stats,
                ),
            );
            let outcome = tokio::select! {
                o = beating(&self.stats, self.beat_every, bounded) => o.unwrap_or_else(|_| Outcome::Retry {
                    class: FailureClass::Timeout,
                    retry_after: None,
                    error: format!("no answer within {} ms", self.attempt_limit.as_millis()),
                }),
                _ = cancel.cancelled() => {
                    tracing::info!(id = %item.id, "shutdown: request abandoned; the transcript stays in the outbox");
                    return;
                }
            };
            self.stats
                .latency
                .observe_ms(t0.elapsed().as_secs_f64() * 1000.0);
            if self.finish(item, outcome, &cancel).await {
                return;
            }
        }
    }

    /// Act on one outcome; true when cancelled while waiting.
    async fn finish(
        &mut self,
        item: Pending,
        outcome: Outcome,
        cancel: &CancellationToken,
    ) -> bool {
        let seq = item.seq;
        match outcome {
            Outcome::Delivered { .. } | Outcome::AlreadyDelivered => {
                let (reply, dup) = match &outcome {
                    Outcome::Delivered { reply_text } => (reply_text.clone(), false),
                    _ => (None, true),
                };
                self.breaker.success();
                self.backoff.reset();
                self.set_breaker();
                if dup {
                    self.stats.already_delivered.fetch_add(1, Relaxed);
                }
                self.stats.delivered.fetch_add(1, Relaxed);
                let age_ms = unix_ms().saturating_sub(item.created_ms);
                tracing::info!(target: "talkie::agent", id = %item.id, attempts = item.attempts + 1, age_ms, duplicate = dup, "delivered");
                if let Some(r) = &reply {
                    self.stats.set_last_reply(r);
                }
                if self.stats.paused_status.swap(0, Relaxed) != 0 {
                    tracing::info!(target: "talkie::agent", "the agent accepts transcripts again: delivery resumed");
                }
                self.record_delivered(seq, reply, cancel).await
            }
            Outcome::Permanent { status, reason } => {
                // The agent answered: the link works.
                self.breaker.success();
                self.backoff.reset();
                self.set_breaker();
                self.dead_letter(&item, status, format!("HTTP {status}: {reason}"), cancel)
                    .await
            }
            Outcome::Rejected { status, reason } => {
                // The agent answered, so the breaker is not the tool: every
                // item would be refused the same way until someone fixes
                // the token or URL. Nothing moves; retry after the longest
                // backoff, or when a reload brings a new token.
                self.breaker.success();
                self.set_breaker();
                let what = if status == 404 {
                    "the agent does not know agent.url's path (404): check agent.url"
                } else {
                    "the agent rejects our credentials: check agent.token"
                };
                let msg = format!("delivery paused: HTTP {status}: {what}");
                self.stats.set_last_error(&msg);
                if self.stats.paused_status.swap(status, Relaxed) == 0 {
                    self.stats.paused.fetch_add(1, Relaxed);
                    tracing::error!(target: "talkie::agent", status, reason = %reason, waiting = %item.id, "{msg}; nothing is dead-lettered; retrying with the backoff (up to agent.backoff_max_ms)");
                }
                let wait = self.backoff.next_delay();
                self.pause(wait, true, cancel).await
            }
            Outcome::Retry {
                class,
                retry_after,
                error,
            } => {
                self.stats.retry(class);
                self.stats.set_last_error(&error);
                let opened = self.breaker.failure(Instant::now());
                self.set_breaker();
                let backoff = self.backoff.next_delay();
                let wait =
                    retry_after.map_or(backoff, |ra| ra.min(self.retry_after_max).max(backoff));
                tracing::warn!(target: "talkie::agent", id = %item.id, class = class.as_str(), error = %error, retry_in_ms = wait.as_millis() as u64, breaker = self.breaker.state().as_str(), "delivery failed; will retry");
                if opened {
                    self.stats.breaker_opened.fetch_add(1, Relaxed);
                    tracing::warn!(target: "talkie::agent", open_s = ?self.breaker.allow(Instant::now()).err(), "circuit breaker open");
                }
                let e2 = error.clone();
                let server_error = matches!(class, FailureClass::Server | FailureClass::Unexpected);
                if let Err(e) = with_outbox(&self.outbox, move |o| {
                    o.record_attempt(seq, &e2, server_error)
                })
                .await
                {
                    tracing::error!(error = %e, "cannot record the attempt");
                }
                if server_error && item.server_errors.saturating_add(1) >= self.max_attempts {
                    // The agent is up and fails on this one item: let the
                    // rest through (without the backoff's wait).
                    self.stats.poisoned.fetch_add(1, Relaxed);
                    let reason = format!(
                        "the agent failed on it {} times (outbox.max_attempts); last: {error}",
                        item.server_errors.saturating_add(1)
                    );
                    return self.dead_letter(&item, 0, reason, cancel).await;
                }
                self.pause(wait, false, cancel).await
            }
        }
    }

    /// Wait `d` (or until woken, with `wakeable`), beating; true if
    /// cancelled first.
    async fn pause(&self, d: Duration, wakeable: bool, cancel: &CancellationToken) -> bool {
        let woken = async {
            if wakeable {
                self.wake.notified().await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        beating(&self.stats, self.beat_every, async {
            tokio::select! {
                _ = tokio::time::sleep(d) => false,
                _ = woken => false,
                _ = cancel.cancelled() => true,
            }
        })
        .await
    }
}

impl BreakerState {
    /// For metrics: 0 closed, 1 open, 2 half-open.
    pub fn gauge(self) -> u8 {
        self as u8
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

    /// An agent on loopback, in-process: `answer(authorization, body)`
    /// gives the status; every request is reported as (status, body).
    async fn agent(
        answer: impl Fn(&str, &str) -> u16 + Clone + Send + Sync + 'static,
    ) -> (reqwest::Url, UnboundedReceiver<(u16, String)>) {
        let (tx, rx) = unbounded_channel();
        let app =
            axum::Router::new().fallback(move |headers: axum::http::HeaderMap, body: String| {
                let (answer, tx) = (answer.clone(), tx.clone());
                async move {
                    let auth = headers
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    let status = answer(auth, &body);
                    let _ = tx.send((status, body));
                    axum::http::StatusCode::from_u16(status).unwrap_or_default()
                }
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (endpoint(&format!("http://{addr}")).unwrap(), rx)
    }

    fn link(dir: &std::path::Path, url: reqwest::Url, token: &str, bodies: &[&str]) -> Link {
        let mut outbox = Outbox::open(&dir.join("outbox.db"), 100).unwrap().outbox;
        for (i, b) in bodies.iter().enumerate() {
            outbox.enqueue(&format!("id{i}"), b).unwrap();
        }
        Link {
            outbox: Arc::new(SharedOutbox::from_outbox(outbox)),
            client: client(&AgentConfig::default()).unwrap(),
            url,
            token: Arc::new(std::sync::RwLock::new(Some(token.to_owned()))),
            max_attempts: 3,
            max_age: None,
            backoff: Backoff::new(Duration::from_millis(1), Duration::from_millis(10)),
            breaker: Breaker::new(1000, Duration::from_secs(1)),
            stats: Arc::new(AgentStats::default()),
            wake: Arc::new(Notify::new()),
            exit_when_empty: true,
            beat_every: Duration::from_millis(100),
            attempt_limit: Duration::from_secs(30),
            retry_after_max: Duration::from_secs(3600),
        }
    }

    /// Bounds a test's wait; a hang fails instead of blocking the suite.
    async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(60), f)
            .await
            .expect("did not finish within 60 s")
    }

    /// Issue 18 row 7: one transcript the agent always fails on (500)
    /// blocked every later one forever. Now it is dead-lettered after
    /// `max_attempts` server errors and the rest flow, in order.
    #[tokio::test]
    async fn an_item_the_agent_always_fails_on_does_not_block_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let (url, mut seen) =
            agent(|_, body| if body.contains("poison") { 500 } else { 200 }).await;
        let l = link(
            dir.path(),
            url,
            "t",
            &["{\"n\":1}", "poison", "{\"n\":3}", "{\"n\":4}"],
        );
        let (outbox, stats) = (Arc::clone(&l.outbox), Arc::clone(&l.stats));
        within(l.run(CancellationToken::new())).await;
        let mut requests = Vec::new();
        while let Ok(r) = seen.try_recv() {
            requests.push(r);
        }
        let to = |st: u16, b: &str| (st, b.to_owned());
        assert_eq!(
            requests,
            [
                to(200, "{\"n\":1}"),
                to(500, "poison"),
                to(500, "poison"),
                to(500, "poison"),
                to(200, "{\"n\":3}"),
                to(200, "{\"n\":4}"),
            ]
        );
        let (dead, depth) = outbox
            .with(|o| Ok((o.dead_letters(10)?, o.depth()?)))
            .unwrap();
        assert_eq!((dead.len(), dead[0].body.as_str()), (1, "poison"));
        assert!(
            dead[0].reason.contains("outbox.max_attempts"),
            "{}",
            dead[0].reason
        );
        assert_eq!(depth, 0);
        assert_eq!(stats.poisoned.load(Relaxed), 1);
        assert_eq!(stats.delivered.load(Relaxed), 3);
    }

    /// Issue 18 row 7, the other half: 401/403/404 dead-lettered at once,
    /// so a wrong token emptied the outbox into the dead letters. Now
    /// delivery pauses (nothing moves) and a new token resumes it.
    #[tokio::test]
    async fn a_rejected_token_pauses_delivery_until_a_new_token_arrives() {
        let dir = tempfile::tempdir().unwrap();
        let (url, mut seen) = agent(|auth, _| if auth == "Bearer right" { 200 } else { 401 }).await;
        let l = link(dir.path(), url, "wrong", &["a", "b"]);
        let (outbox, stats, token, wake) = (
            Arc::clone(&l.outbox),
            Arc::clone(&l.stats),
            Arc::clone(&l.token),
            Arc::clone(&l.wake),
        );
        let run = tokio::spawn(l.run(CancellationToken::new()));
        // Three refusals: the link keeps retrying the same first item.
        for _ in 0..3 {
            assert_eq!(within(seen.recv()).await, Some((401, "a".to_owned())));
        }
        assert_eq!(stats.paused_status.load(Relaxed), 401);
        assert_eq!(
            stats.paused.load(Relaxed),
            1,
            "one pause, however many retries"
        );
        assert_eq!(
            outbox.with(|o| Ok((o.depth()?, o.dead_count()?))).unwrap(),
            (2, 0)
        );
        // What a reload does (OutboxHandle::set_token).
        *token.write().unwrap() = Some("right".into());
        wake.notify_one();
        within(run).await.unwrap();
        let mut after = Vec::new();
        while let Ok(r) = seen.try_recv() {
            after.push(r);
        }
        after.retain(|r| r.0 == 200);
        assert_eq!(after, [(200, "a".to_owned()), (200, "b".to_owned())]);
        assert_eq!(stats.paused_status.load(Relaxed), 0, "resumed");
        assert_eq!(outbox.with(|o| o.dead_count()).unwrap(), 0);
    }

    /// The agent faults of issue 28's outage: each leaves the link waiting
    /// far longer than any `watchdog.stall_ms`.
    enum Fault {
        /// Nothing listens: connection refused, the breaker opens for an hour.
        Down,
        /// `503` with `Retry-After` of a day.
        RetryAfter,
        /// Accepts the connection and never answers.
        Hang,
        /// A name no resolver knows (`.invalid`, RFC 2606): however the
        /// resolver fails, fast or after its own timeouts.
        Dns,
    }

    async fn faulty_agent(fault: &Fault) -> reqwest::Url {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        match fault {
            Fault::Down => drop(listener),
            Fault::Dns => return endpoint("http://talkie-agent.invalid:9").unwrap(),
            Fault::RetryAfter => {
                tokio::spawn(async move {
                    while let Ok((mut s, _)) = listener.accept().await {
                        let _ = s
                            .write_all(b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 86400\r\nContent-Length: 0\r\n\r\n")
                            .await;
                        // Held open: the client reads the answer and moves on.
                        tokio::spawn(async move {
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                            drop(s);
                        });
                    }
                });
            }
            Fault::Hang => {
                tokio::spawn(async move {
                    let mut held = Vec::new();
                    while let Ok((s, _)) = listener.accept().await {
                        held.push(s);
                    }
                });
            }
        }
        endpoint(&format!("http://{addr}")).unwrap()
    }

    /// Issue 28: while the breaker was open, or a `Retry-After` or a hung
    /// request ran, the delivery task stopped beating, and the watchdog
    /// restarted a kiosk whose only fault was its agent's. Now every such
    /// wait beats: the heartbeat keeps moving long after the link started
    /// waiting (the old code froze it for the whole wait: an hour here).
    #[tokio::test]
    async fn the_link_beats_while_the_agent_is_down_throttling_hung_or_unresolvable() {
        for fault in [Fault::Down, Fault::RetryAfter, Fault::Hang, Fault::Dns] {
            let dir = tempfile::tempdir().unwrap();
            let url = faulty_agent(&fault).await;
            let mut l = link(dir.path(), url, "t", &["a"]);
            l.exit_when_empty = false;
            l.breaker = Breaker::new(1, Duration::from_secs(3600));
            l.backoff = Backoff::new(Duration::from_secs(3600), Duration::from_secs(3600));
            l.attempt_limit = Duration::from_secs(3600);
            let client = client_builder(&AgentConfig::default())
                .unwrap()
                .timeout(Duration::from_secs(3600))
                .build()
                .unwrap();
            l.client = client;
            let stats = Arc::clone(&l.stats);
            let cancel = CancellationToken::new();
            let run = tokio::spawn(l.run(cancel.clone()));
            // Waiting: the first attempt failed (Down, RetryAfter) or is in
            // flight (Hang).
            let started = stats.beat_ms.load(Relaxed);
            within(async {
                loop {
                    let waiting = match fault {
                        Fault::Down => stats.breaker_opened.load(Relaxed) == 1,
                        Fault::RetryAfter => stats.last_http_status.load(Relaxed) == 503,
                        Fault::Hang | Fault::Dns => true,
                    };
                    if waiting {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
            .await;
            let waiting_since = crate::base::telemetry::now_ms();
            // Ten beat intervals after the wait began, it still beats.
            within(async {
                while stats.beat_ms.load(Relaxed) < waiting_since + 1_000 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
            .await;
            assert!(stats.beat_ms.load(Relaxed) > started);
            assert_eq!(stats.delivered.load(Relaxed), 0, "nothing was delivered");
            cancel.cancel();
            within(run).await.unwrap();
        }
    }

    /// Issue 28 row 9: a status outside the contract (999, 1xx, a 3xx
    /// that is not a redirect) never counted toward `max_attempts`, so that
    /// item blocked the queue forever. Now it counts like a server error:
    /// on the wire, the item is dead-lettered after 3 and the rest flow.
    #[tokio::test]
    async fn a_status_outside_the_contract_counts_toward_max_attempts() {
        let dir = tempfile::tempdir().unwrap();
        let (url, _seen) = agent(|_, body| if body == "odd" { 999 } else { 200 }).await;
        let l = link(dir.path(), url, "t", &["odd", "{\"n\":2}"]);
        let (outbox, stats) = (Arc::clone(&l.outbox), Arc::clone(&l.stats));
        within(l.run(CancellationToken::new())).await;
        let dead = outbox.with(|o| o.dead_letters(10)).unwrap();
        assert_eq!((dead.len(), dead[0].body.as_str()), (1, "odd"));
        assert!(
            dead[0].reason.contains("unexpected HTTP 999"),
            "{}",
            dead[0].reason
        );
        assert_eq!(stats.delivered.load(Relaxed), 1);
        for status in [999, 600, 150, 304] {
            assert!(
                matches!(
                    classify(status, None, ""),
                    Outcome::Retry {
                        class: FailureClass::Unexpected,
                        ..
                    }
                ),
                "{status}"
            );
        }
    }

    /// `outbox.max_age_h`: an item older than the limit is not sent.
    #[tokio::test]
    async fn an_item_past_the_age_limit_is_dead_lettered_unsent() {
        let dir = tempfile::tempdir().unwrap();
        let (url, mut seen) = agent(|_, _| 200).await;
        let mut l = link(dir.path(), url, "t", &["old"]);
        l.max_age = Some(Duration::ZERO);
        let (outbox, stats) = (Arc::clone(&l.outbox), Arc::clone(&l.stats));
        within(l.run(CancellationToken::new())).await;
        assert!(seen.try_recv().is_err(), "nothing sent");
        assert_eq!(stats.expired.load(Relaxed), 1);
        let dead = outbox.with(|o| o.dead_letters(1)).unwrap();
        assert!(dead[0].reason.contains("max_age_h"), "{}", dead[0].reason);
    }

    #[test]
    fn statuses_are_classified_as_the_contract_says() {
        assert_eq!(
            classify(200, None, "{\"reply_text\":\"hi\"}"),
            Outcome::Delivered {
                reply_text: Some("hi".into())
            }
        );
        let long = format!("{{\"reply_text\":\"{}\"}}", "é".repeat(5000));
        match classify(200, None, &long) {
            Outcome::Delivered {
                reply_text: Some(t),
            } => assert_eq!(t.chars().count(), MAX_REPLY_TEXT_CHARS + 1, "cut with …"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            classify(200, None, "{\"reply_text\":\"hi\"}"),
            Outcome::Delivered {
                reply_text: Some("hi".into())
            }
        );
        assert_eq!(
            classify(204, None, ""),
            Outcome::Delivered { reply_text: None }
        );
        assert_eq!(classify(409, None, ""), Outcome::AlreadyDelivered);
        assert_eq!(
            classify(429, Some("2"), ""),
            Outcome::Retry {
                class: FailureClass::Throttled,
                retry_after: Some(Duration::from_secs(2)),
                error: "HTTP 429".into()
            }
        );
        assert!(matches!(
            classify(503, Some("soon"), ""),
            Outcome::Retry {
                class: FailureClass::Throttled,
                retry_after: None,
                ..
            }
        ));
        assert!(matches!(
            classify(500, None, ""),
            Outcome::Retry {
                class: FailureClass::Server,
                ..
            }
        ));
        assert_eq!(
            classify(400, None, "bad"),
            Outcome::Permanent {
                status: 400,
                reason: "bad".into()
            }
        );
        for status in [401, 403, 404] {
            assert!(
                matches!(classify(status, None, ""), Outcome::Rejected { status: s, .. } if s == status),
                "{status} pauses delivery"
            );
        }
        assert!(matches!(
            classify(422, None, ""),
            Outcome::Permanent { status: 422, .. }
        ));
    }

    #[test]
    fn retry_after_seconds_dates_and_caps() {
        assert_eq!(parse_retry_after(" 7 "), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("999999"), Some(MAX_RETRY_AFTER));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO),
            "a date in the past means now"
        );
        assert_eq!(parse_retry_after("later"), None);
    }

    #[test]
    fn endpoint_joins_the_path() {
        assert_eq!(
            endpoint("http://10.0.0.5:9000").unwrap().as_str(),
            "http://10.0.0.5:9000/v1/utterances"
        );
        assert_eq!(
            endpoint("https://agent.example/api/").unwrap().as_str(),
            "https://agent.example/api/v1/utterances"
        );
        assert!(endpoint("not a url").is_err());
    }
}
