//! Delivery: one tokio task that sends the outbox's oldest item to the
//! agent, one request in flight, in order, until the outbox is empty; then
//! waits to be woken by a new item.
//!
//! Per response: 2xx → delivered (an optional `{"reply_text": …}` body is
//! kept); 409 → the agent already has it (delivered); 429/503 → retry,
//! honouring `Retry-After`; other 4xx → dead letter (never retried); 5xx,
//! timeouts and connection errors → retry. Retries wait an exponential
//! backoff with full jitter (reset after a success) and feed the circuit
//! breaker; while the breaker is open nothing is sent.

use super::breaker::{Backoff, Breaker, BreakerState};
use super::outbox::{unix_ms, Outbox, OutboxError, Pending};
use super::AgentStats;
use crate::config::AgentConfig;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Longest a `Retry-After` is honoured for.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);
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
    Other,
}

impl FailureClass {
    pub const ALL: [FailureClass; 5] = [
        FailureClass::Connect,
        FailureClass::Timeout,
        FailureClass::Throttled,
        FailureClass::Server,
        FailureClass::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Timeout => "timeout",
            Self::Throttled => "throttled",
            Self::Server => "server",
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
        400..=499 => Outcome::Permanent {
            status,
            reason: truncate(body),
        },
        _ => Outcome::Retry {
            class: FailureClass::Other,
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
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
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
    b.build().map_err(|e| LinkError::Client(e.to_string()))
}

/// The endpoint for `agent.url`.
pub fn endpoint(url: &str) -> Result<reqwest::Url, LinkError> {
    let base = reqwest::Url::parse(url).map_err(|e| LinkError::Url {
        url: url.to_owned(),
        reason: e.to_string(),
    })?;
    let joined = format!("{}/v1/utterances", base.as_str().trim_end_matches('/'));
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
) -> Outcome {
    let mut req = client
        .post(url.clone())
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("Idempotency-Key", &item.id)
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
            let retry_after = header(reqwest::header::RETRY_AFTER);
            if (300..400).contains(&status) {
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
                        error: chain(&e),
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
            error: chain(&e),
        },
    }
}

/// Everything the delivery task needs.
pub struct Link {
    pub outbox: Arc<Mutex<Outbox>>,
    pub client: reqwest::Client,
    pub url: reqwest::Url,
    pub token: Option<String>,
    pub backoff: Backoff,
    pub breaker: Breaker,
    pub stats: Arc<AgentStats>,
    /// Woken when an item is added.
    pub wake: Arc<Notify>,
    /// End once the outbox is empty (`talkie outbox deliver --until-empty`).
    pub exit_when_empty: bool,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("url", &self.url.as_str())
            .finish_non_exhaustive()
    }
}

/// Run a blocking outbox operation off the async threads.
async fn with_outbox<T: Send + 'static>(
    outbox: &Arc<Mutex<Outbox>>,
    f: impl FnOnce(&mut Outbox) -> Result<T, OutboxError> + Send + 'static,
) -> Result<T, OutboxError> {
    let outbox = Arc::clone(outbox);
    match tokio::task::spawn_blocking(move || {
        let mut o = outbox.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut o)
    })
    .await
    {
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
        if let Ok((depth, oldest)) =
            with_outbox(&self.outbox, |o| Ok((o.depth()?, o.oldest_ms()?))).await
        {
            self.stats.outbox_depth.store(depth, Relaxed);
            self.stats
                .oldest_created_ms
                .store(oldest.unwrap_or(0), Relaxed);
        }
    }

    /// Deliver until `cancel`: the request in flight is abandoned (the item
    /// stays in the outbox and is sent again after restart).
    pub async fn run(mut self, cancel: CancellationToken) {
        self.set_breaker();
        loop {
            self.stats
                .beat_ms
                .store(crate::telemetry::now_ms(), Relaxed);
            self.refresh_depth().await;
            let head = match with_outbox(&self.outbox, |o| o.head()).await {
                Ok(h) => h,
                Err(e) => {
                    tracing::error!(error = %e, "outbox unreadable; retrying in 5 s");
                    self.stats.set_last_error(&e.to_string());
                    if sleep_or_cancel(Duration::from_secs(5), &cancel).await {
                        return;
                    }
                    continue;
                }
            };
            let Some(item) = head else {
                if self.exit_when_empty {
                    return;
                }
                tokio::select! {
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = cancel.cancelled() => return,
                }
                continue;
            };
            if let Err(wait) = self.breaker.allow(Instant::now()) {
                if sleep_or_cancel(wait, &cancel).await {
                    return;
                }
                continue;
            }
            self.set_breaker();
            let t0 = Instant::now();
            tracing::debug!(target: "talkie::agent", id = %item.id, attempt = item.attempts + 1, "sending");
            let outcome = tokio::select! {
                o = attempt(&self.client, &self.url, self.token.as_deref(), &item) => o,
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
                let r = reply.clone();
                if let Err(e) =
                    with_outbox(&self.outbox, move |o| o.mark_delivered(seq, r.as_deref())).await
                {
                    tracing::error!(error = %e, id = %item.id, "cannot mark delivered; it will be sent again (the agent deduplicates)");
                    return sleep_or_cancel(Duration::from_secs(1), cancel).await;
                }
                false
            }
            Outcome::Permanent { status, reason } => {
                // The agent answered: the link works.
                self.breaker.success();
                self.backoff.reset();
                self.set_breaker();
                self.stats.dead_lettered.fetch_add(1, Relaxed);
                let msg = format!("HTTP {status}: {reason}");
                self.stats.set_last_error(&msg);
                tracing::error!(target: "talkie::agent", id = %item.id, status, reason = %reason, "agent refused the transcript; moved to the dead-letter table");
                if let Err(e) =
                    with_outbox(&self.outbox, move |o| o.mark_dead(seq, status, &reason)).await
                {
                    tracing::error!(error = %e, "cannot move to dead letters");
                    return sleep_or_cancel(Duration::from_secs(1), cancel).await;
                }
                false
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
                let wait = retry_after.map_or(backoff, |ra| ra.max(backoff));
                tracing::warn!(target: "talkie::agent", id = %item.id, class = class.as_str(), error = %error, retry_in_ms = wait.as_millis() as u64, breaker = self.breaker.state().as_str(), "delivery failed; will retry");
                if opened {
                    self.stats.breaker_opened.fetch_add(1, Relaxed);
                    tracing::warn!(target: "talkie::agent", open_s = ?self.breaker.allow(Instant::now()).err(), "circuit breaker open");
                }
                let e2 = error.clone();
                if let Err(e) = with_outbox(&self.outbox, move |o| o.record_attempt(seq, &e2)).await
                {
                    tracing::error!(error = %e, "cannot record the attempt");
                }
                sleep_or_cancel(wait, cancel).await
            }
        }
    }
}

/// Sleep `d`; true if cancelled first.
async fn sleep_or_cancel(d: Duration, cancel: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = cancel.cancelled() => true,
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
        assert!(matches!(
            classify(401, None, ""),
            Outcome::Permanent { status: 401, .. }
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
