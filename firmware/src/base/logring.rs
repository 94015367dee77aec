//! The recent log lines, kept in memory for the status page and
//! `/api/v1/logs` so a technician never needs SSH.
//!
//! A `tracing` layer behind the same filter as the stderr/journald output
//! copies each event into two bounded rings: every line (last
//! [`RECENT_LINES`]) and warnings/errors (last [`RECENT_PROBLEMS`]). The lock
//! is held only to push or copy; nothing on the audio path logs per frame.

use serde::Serialize;
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::Layer;

/// Lines of any level kept.
pub const RECENT_LINES: usize = 200;
/// Warnings and errors kept.
pub const RECENT_PROBLEMS: usize = 50;
/// Longest line kept (longer lines are cut on a character boundary).
const MAX_LINE: usize = 1_000;

/// One log event.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LogLine {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub level: &'static str,
    pub target: String,
    /// The message followed by the event's fields as `key=value`.
    pub message: String,
}

#[derive(Debug, Default)]
struct Rings {
    lines: VecDeque<LogLine>,
    problems: VecDeque<LogLine>,
    total_warnings: u64,
    total_errors: u64,
}

fn push(q: &mut VecDeque<LogLine>, cap: usize, line: LogLine) {
    if q.len() == cap {
        q.pop_front();
    }
    q.push_back(line);
}

/// The shared rings; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct LogRing(Arc<Mutex<Rings>>);

impl LogRing {
    fn lock(&self) -> std::sync::MutexGuard<'_, Rings> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn record(&self, line: LogLine) {
        let mut r = self.lock();
        match line.level {
            "WARN" => r.total_warnings += 1,
            "ERROR" => r.total_errors += 1,
            _ => {}
        }
        if matches!(line.level, "WARN" | "ERROR") {
            push(&mut r.problems, RECENT_PROBLEMS, line.clone());
        }
        push(&mut r.lines, RECENT_LINES, line);
    }

    /// The last lines, oldest first.
    pub fn lines(&self) -> Vec<LogLine> {
        self.lock().lines.iter().cloned().collect()
    }

    /// The last warnings and errors, oldest first.
    pub fn problems(&self) -> Vec<LogLine> {
        self.lock().problems.iter().cloned().collect()
    }

    /// Warnings and errors logged since start.
    pub fn totals(&self) -> (u64, u64) {
        let r = self.lock();
        (r.total_warnings, r.total_errors)
    }
}

/// The process's ring, filled once [`layer`] is installed.
pub fn global() -> &'static LogRing {
    static RING: OnceLock<LogRing> = OnceLock::new();
    RING.get_or_init(LogRing::default)
}

/// A layer feeding `ring`.
pub fn layer(ring: LogRing) -> RingLayer {
    RingLayer { ring }
}

#[derive(Debug)]
pub struct RingLayer {
    ring: LogRing,
}

#[derive(Default)]
struct Text {
    message: String,
    fields: String,
}

impl Visit for Text {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }
}

fn level_str(l: &Level) -> &'static str {
    match *l {
        Level::ERROR => "ERROR",
        Level::WARN => "WARN",
        Level::INFO => "INFO",
        Level::DEBUG => "DEBUG",
        Level::TRACE => "TRACE",
    }
}

impl<S: Subscriber> Layer<S> for RingLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        let mut text = Text::default();
        event.record(&mut text);
        let mut message = text.message;
        message.push_str(&text.fields);
        if message.len() > MAX_LINE {
            let mut cut = MAX_LINE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push('…');
        }
        self.ring.record(LogLine {
            at_ms: crate::base::telemetry::unix_ms(),
            level: level_str(meta.level()),
            target: meta.target().to_owned(),
            message,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn keeps_bounded_lines_and_problems() {
        let ring = LogRing::default();
        let sub = tracing_subscriber::registry().with(layer(ring.clone()));
        tracing::subscriber::with_default(sub, || {
            for i in 0..RECENT_LINES + 10 {
                tracing::info!(i, "line");
            }
            tracing::warn!(device = "hw:1,0", "microphone lost");
            tracing::error!("outbox full");
        });
        let lines = ring.lines();
        assert_eq!(lines.len(), RECENT_LINES);
        assert_eq!(
            lines.last().map(|l| l.message.as_str()),
            Some("outbox full")
        );
        let problems = ring.problems();
        assert_eq!(problems.len(), 2);
        assert_eq!(problems[0].level, "WARN");
        assert_eq!(problems[0].message, "microphone lost device=\"hw:1,0\"");
        assert_eq!(ring.totals(), (1, 1));
        assert_eq!(lines[0].message, "line i=12");
    }

    #[test]
    fn long_lines_are_cut() {
        let ring = LogRing::default();
        let sub = tracing_subscriber::registry().with(layer(ring.clone()));
        tracing::subscriber::with_default(sub, || tracing::warn!("{}", "é".repeat(MAX_LINE)));
        let line = &ring.problems()[0].message;
        assert!(line.len() <= MAX_LINE + '…'.len_utf8() && line.ends_with('…'));
    }
}
