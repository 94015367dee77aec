//! systemd integration: readiness, status, and the health-gated watchdog.
//!
//! `WATCHDOG=1` is sent at half of `WATCHDOG_USEC`, and only while every
//! critical loop has beaten within `watchdog.stall_ms`. A wedged loop stops
//! the pings, systemd kills and restarts the service, and a fleet update
//! that keeps doing so is rolled back. What counts:
//!
//! | loop | beats | expected when |
//! |---|---|---|
//! | capture | every period, and on every reopen attempt | capture state is not `ended` |
//! | audio | every frame or 100 ms | capture state is not `ended` |
//! | listen | every 20 ms | always |
//! | stt | every 500 ms idle, before every encoder window and decoder step while recognizing | always (a long recognition on a slow board keeps beating; a runaway one stops at `ptt::worker::RECOGNITION_LIMIT`) |
//! | agent | every loop turn, and every `stall_ms / 4` (0.1–1 s) while it waits on a timer or the agent: idle, backoff, open breaker, `Retry-After`, a request in flight | `agent.url` is set |
//! | http | each 200 from `GET /healthz` over loopback, probed every `stall_ms / 4` (0.1–1 s) | always |
//! | controller | is the loop that pings | — |
//!
//! No heartbeat depends on the network: an agent that is down, throttling
//! or hung is **degraded, not wedged** (`crate::agent::link`). Likewise a
//! microphone that is unplugged is **degraded, not wedged**: the capture
//! thread keeps beating while it retries with backoff, so the watchdog stays
//! fed and the status says `degraded`; the LEDs show the error state.

use std::time::Duration;

/// One critical loop's heartbeat.
#[derive(Debug, Clone, Copy)]
pub struct Beat {
    pub name: &'static str,
    /// `telemetry::now_ms()` of the last beat; 0 = never.
    pub last_ms: u64,
    /// Whether the loop is expected to be running.
    pub expected: bool,
}

/// The loops whose heartbeat is older than `stall_ms`. `since_ms` is when
/// the service became ready: a loop that has not beaten since is given
/// `stall_ms` from then (a thread still being scheduled at start is not
/// wedged), so ages count from the later of its last beat and `since_ms`.
pub fn stale(beats: &[Beat], now_ms: u64, stall_ms: u64, since_ms: u64) -> Vec<&'static str> {
    beats
        .iter()
        .filter(|b| b.expected && now_ms.saturating_sub(b.last_ms.max(since_ms)) > stall_ms)
        .map(|b| b.name)
        .collect()
}

/// One message to systemd.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Notice {
    pub ready: bool,
    pub stopping: bool,
    /// `RELOADING=1` with `MONOTONIC_USEC` (a config reload begins; the
    /// next `READY=1` ends it).
    pub reloading: bool,
    pub watchdog: bool,
    pub status: Option<String>,
    pub extend_timeout_usec: Option<u32>,
}

/// Notices queued for the notify thread.
const QUEUE: usize = 16;

/// Sends [`Notice`]s to systemd from its own thread (`talkie-notify`):
/// `sd_notify::notify` writes a datagram with a blocking send, which stalls
/// when the receiver's queue is full, and the controller must never wait
/// on it. A full queue drops the notice (a missed ping is harmless; a
/// missed `STATUS=` is replaced by the next one).
#[derive(Debug)]
pub struct Notifier {
    tx: Option<std::sync::mpsc::SyncSender<Notice>>,
    thread: Option<crate::base::threads::Tracked<()>>,
}

impl Notifier {
    /// A notifier; without `NOTIFY_SOCKET` it does nothing at all.
    pub fn start() -> Self {
        if std::env::var_os("NOTIFY_SOCKET").is_none() {
            return Self {
                tx: None,
                thread: None,
            };
        }
        let (tx, rx) = std::sync::mpsc::sync_channel::<Notice>(QUEUE);
        let thread = crate::base::threads::spawn("talkie-notify", move || {
            let mut failed = false;
            while let Ok(n) = rx.recv() {
                use sd_notify::NotifyState as S;
                let mut states = Vec::with_capacity(4);
                if n.ready {
                    states.push(S::Ready);
                }
                if n.stopping {
                    states.push(S::Stopping);
                }
                if n.reloading {
                    states.push(S::Reloading);
                    if let Ok(now) = S::monotonic_usec_now() {
                        states.push(now);
                    }
                }
                if n.watchdog {
                    states.push(S::Watchdog);
                }
                if let Some(s) = &n.status {
                    states.push(S::Status(s));
                }
                if let Some(u) = n.extend_timeout_usec {
                    states.push(S::ExtendTimeoutUsec(u));
                }
                match sd_notify::notify(&states) {
                    Ok(()) => failed = false,
                    Err(e) if !failed => {
                        tracing::warn!(error = %e, "cannot notify systemd");
                        failed = true;
                    }
                    Err(_) => {}
                }
            }
        });
        match thread {
            Ok(t) => Self {
                tx: Some(tx),
                thread: Some(t),
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the notify thread; systemd will not hear from talkie");
                Self {
                    tx: None,
                    thread: None,
                }
            }
        }
    }

    pub fn send(&self, n: Notice) {
        self.sender().send(n);
    }

    /// A handle that sends to this notifier from another thread (the
    /// model loader's progress); it does nothing once the notifier is
    /// finished.
    pub fn sender(&self) -> NoticeSender {
        NoticeSender(self.tx.clone())
    }

    /// Flush what is queued and end the thread, waiting at most `budget`.
    pub fn finish(mut self, budget: Duration) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            if let Err(e) = t.join(budget) {
                tracing::warn!(error = %e, "systemd notifications not flushed");
            }
        }
    }
}

/// Sends to a [`Notifier`] from any thread ([`Notifier::sender`]).
#[derive(Debug, Clone)]
pub struct NoticeSender(Option<std::sync::mpsc::SyncSender<Notice>>);

impl NoticeSender {
    /// Queue `n`; a full queue drops it (as [`Notifier::send`]).
    pub fn send(&self, n: Notice) {
        if let Some(tx) = &self.0 {
            if tx.try_send(n).is_err() {
                tracing::debug!("notify queue full; notice dropped");
            }
        }
    }
}

/// How often the status server is probed: four probes per `stall_ms`,
/// 0.1 s to 1 s apart.
pub fn probe_interval(stall_ms: u32) -> Duration {
    Duration::from_millis((u64::from(stall_ms) / 4).clamp(100, 1000))
}

/// Test hook for the end-to-end tests (tests/e2e/): `TALKIE_TEST_WEDGE=LOOP:MS` makes that loop
/// (`stt`) stop beating and working MS ms after it starts, as a wedged loop
/// would. Only in builds with the `test-hooks` feature (`cargo test`
/// enables it through the package's dev-dependency on itself); a release
/// build does not contain it.
#[cfg(feature = "test-hooks")]
pub fn test_wedge(name: &str) -> Option<Duration> {
    let v = std::env::var("TALKIE_TEST_WEDGE").ok()?;
    let (loop_name, ms) = v.split_once(':')?;
    if loop_name != name {
        return None;
    }
    ms.parse().ok().map(Duration::from_millis)
}

/// Without `test-hooks`: never wedged.
#[cfg(not(feature = "test-hooks"))]
pub fn test_wedge(_name: &str) -> Option<Duration> {
    None
}

/// Test hook for the end-to-end tests (tests/e2e/): `TALKIE_TEST_HOLD_MODELS=PATH` holds model
/// loading until PATH exists (at most 120 s), so a test can see what the
/// service does before its models are ready. `test-hooks` builds only.
#[cfg(feature = "test-hooks")]
pub fn test_hold_models() {
    let Some(path) = std::env::var_os("TALKIE_TEST_HOLD_MODELS") else {
        return;
    };
    let path = std::path::PathBuf::from(path);
    tracing::warn!(until = %path.display(), "test hook TALKIE_TEST_HOLD_MODELS: model loading held");
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !path.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Without `test-hooks`: nothing is held.
#[cfg(not(feature = "test-hooks"))]
pub fn test_hold_models() {}

/// The ping interval: half of `WATCHDOG_USEC`, if systemd asked for pings.
pub fn watchdog_interval(enabled: bool) -> Option<Duration> {
    if !enabled {
        return None;
    }
    sd_notify::watchdog_enabled().map(|d| (d / 2).max(Duration::from_millis(100)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_expected_loops_past_the_deadline_are_stale() {
        let b = |name, last_ms, expected| Beat {
            name,
            last_ms,
            expected,
        };
        let beats = [
            b("capture", 9_000, true),
            b("audio", 2_000, true),
            b("agent", 0, false),
            b("stt", 6_000, true),
        ];
        assert_eq!(stale(&beats, 10_000, 5_000, 0), ["audio"]);
        assert_eq!(stale(&beats, 6_500, 5_000, 0), Vec::<&str>::new());
        assert_eq!(stale(&beats, 20_000, 5_000, 0), ["capture", "audio", "stt"]);
    }

    #[test]
    fn a_loop_that_has_not_beaten_yet_gets_stall_ms_from_readiness() {
        let beats = [Beat {
            name: "stt",
            last_ms: 0,
            expected: true,
        }];
        // Ready at 4 s; not yet stale at 4.9 s, stale after 5 s.
        assert_eq!(stale(&beats, 4_900, 1_000, 4_000), Vec::<&str>::new());
        assert_eq!(stale(&beats, 5_100, 1_000, 4_000), ["stt"]);
    }
}
