//! The health-gated watchdog: systemd's `WATCHDOG=1` is sent only while
//! every loop that should beat has beaten within `watchdog.stall_ms`
//! ([`crate::base::supervisor::stale`]).

use super::Context;
use crate::agent::AgentStats;
use crate::base::config::Config;
use crate::base::supervisor::{self, Beat, Notice, Notifier};
use crate::base::telemetry::{now_ms, AudioStats, CaptureState, PttStats};
use crate::status;
use std::sync::atomic::Ordering;
use std::time::Duration;

pub(super) struct Watchdog {
    every: Option<Duration>,
    tick: tokio::time::Interval,
    stall_ms: u64,
    ready_ms: u64,
    /// The loops found stale at the last check.
    wedged: Vec<&'static str>,
}

impl Watchdog {
    pub(super) fn new(config: &Config) -> Self {
        let every = supervisor::watchdog_interval(config.watchdog.enabled);
        let mut tick = tokio::time::interval(every.unwrap_or(Duration::from_secs(3600)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self {
            every,
            tick,
            stall_ms: config.watchdog.stall_ms.into(),
            ready_ms: 0,
            wedged: Vec::new(),
        }
    }

    /// The ping interval, `None` when systemd asked for none.
    pub(super) fn every(&self) -> Option<Duration> {
        self.every
    }

    /// The service became ready at `ms`: loops are judged from then on.
    pub(super) fn started(&mut self, ms: u64) {
        self.ready_ms = ms;
    }

    /// The next check; never completes without a watchdog.
    pub(super) async fn tick(&mut self) {
        if self.every.is_none() {
            return std::future::pending().await;
        }
        self.tick.tick().await;
    }

    /// Ping systemd if every loop beat, withhold the ping and say which
    /// loops are wedged otherwise.
    pub(super) fn check(&mut self, ctx: &Context, notifier: &Notifier, status_line: &str) {
        let stale = supervisor::stale(
            &beats(
                &ctx.audio_stats,
                &ctx.ptt_stats,
                ctx.has_agent().then_some(&*ctx.agent_stats),
                &ctx.shared,
            ),
            now_ms(),
            self.stall_ms,
            self.ready_ms,
        );
        if stale.is_empty() {
            notifier.send(Notice {
                watchdog: true,
                ..Notice::default()
            });
            if !self.wedged.is_empty() {
                tracing::warn!(loops = ?self.wedged, "loops beat again: watchdog pings resumed");
                notifier.send(Notice {
                    status: Some(status_line.to_owned()),
                    ..Notice::default()
                });
            }
        } else if stale != self.wedged {
            tracing::error!(loops = ?stale, "loops are wedged: watchdog pings withheld, systemd will restart the service");
            notifier.send(Notice {
                status: Some(format!(
                    "wedged: {}; watchdog pings withheld",
                    stale.join(", ")
                )),
                ..Notice::default()
            });
        }
        self.wedged = stale;
    }
}

/// The heartbeats the watchdog checks (see [`crate::base::supervisor`]).
fn beats(
    audio: &AudioStats,
    ptt: &PttStats,
    agent: Option<&AgentStats>,
    shared: &status::Shared,
) -> Vec<Beat> {
    let r = Ordering::Relaxed;
    let running = audio.capture_state() != CaptureState::Ended;
    vec![
        Beat {
            name: "capture",
            last_ms: audio.capture_beat_ms.load(r),
            expected: running,
        },
        Beat {
            name: "audio",
            last_ms: audio.audio_beat_ms.load(r),
            expected: running,
        },
        Beat {
            name: "listen",
            last_ms: ptt.listen_beat_ms.load(r),
            expected: true,
        },
        Beat {
            name: "stt",
            last_ms: ptt.stt_beat_ms.load(r),
            expected: true,
        },
        Beat {
            name: "agent",
            last_ms: agent.map_or(0, |a| a.beat_ms.load(r)),
            expected: agent.is_some(),
        },
        Beat {
            name: "http",
            last_ms: shared.http_beat_ms.load(r),
            // Not before the port is bound (it is retried meanwhile).
            expected: shared.serving.load(r),
        },
    ]
}
