//! `gpio.backend = "script"`: a button that follows a TOML timeline.
//!
//! ```toml
//! [[event]]
//! at_ms = 1500
//! action = "press"
//!
//! [[event]]
//! at_ms = 4200
//! action = "release"
//! ```
//! Times are milliseconds after the epoch given at construction (the
//! moment the service starts listening), or, with a [`SimClock`],
//! milliseconds of the simulated microphone's audio. The raw edges go through the same
//! [`Debouncer`] as a real pin, so a script can contain contact bounce.

use super::{Button, ButtonEvent, ButtonPoll, Debouncer, GpioError};
use crate::sim_clock::SimClock;
use serde::Deserialize;
use std::path::Path;
use std::time::{Duration, Instant};

/// Longest script accepted, in events.
pub const MAX_EVENTS: usize = 10_000;

/// One raw contact change of a script.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptEvent {
    pub at_ms: u64,
    pub action: Action,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Press,
    Release,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScriptFile {
    #[serde(default)]
    event: Vec<ScriptEvent>,
}

/// Parse a script; events must be in time order.
pub fn parse(text: &str, path: &str) -> Result<Vec<ScriptEvent>, GpioError> {
    let err = |reason: String| GpioError::Script {
        path: path.to_owned(),
        reason,
    };
    let file: ScriptFile = toml::from_str(text).map_err(|e| err(e.to_string()))?;
    if file.event.len() > MAX_EVENTS {
        return Err(err(format!(
            "{} events; at most {MAX_EVENTS} are accepted",
            file.event.len()
        )));
    }
    if let Some(w) = file.event.windows(2).find(|w| w[1].at_ms < w[0].at_ms) {
        return Err(err(format!(
            "events must be in time order: at_ms = {} comes after at_ms = {}",
            w[1].at_ms, w[0].at_ms
        )));
    }
    Ok(file.event)
}

/// A scripted push-to-talk button.
#[derive(Debug)]
pub struct ScriptButton {
    events: Vec<ScriptEvent>,
    next: usize,
    debounce: Debouncer,
    epoch: Instant,
    /// Audio time instead of wall-clock time since `epoch`.
    clock: Option<SimClock>,
}

impl ScriptButton {
    /// Read a script file.
    pub fn load(path: &Path, debounce: Duration, epoch: Instant) -> Result<Self, GpioError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| GpioError::Script {
            path: shown.clone(),
            reason: e.to_string(),
        })?;
        Ok(Self::new(parse(&text, &shown)?, debounce, epoch))
    }

    pub fn new(events: Vec<ScriptEvent>, debounce: Duration, epoch: Instant) -> Self {
        Self {
            events,
            next: 0,
            debounce: Debouncer::new(debounce),
            epoch,
            clock: None,
        }
    }

    /// Count the script's times on `clock` (a simulated microphone's audio
    /// time) instead of the wall clock.
    pub fn with_clock(mut self, clock: SimClock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Time of the last scripted event.
    pub fn last_at(&self) -> Option<Duration> {
        self.events.last().map(|e| Duration::from_millis(e.at_ms))
    }
}

impl Button for ScriptButton {
    fn next_event(&mut self, timeout: Duration) -> Result<ButtonPoll, GpioError> {
        let give_up = Instant::now() + timeout;
        loop {
            let scripted = self
                .events
                .get(self.next)
                .map(|e| Duration::from_millis(e.at_ms));
            let settle = self.debounce.deadline();
            let t = match (scripted, settle) {
                (None, None) => return Ok(ButtonPoll::Exhausted),
                (Some(a), Some(b)) => a.min(b),
                (Some(a), None) | (None, Some(a)) => a,
            };
            let due = match &self.clock {
                Some(clock) => {
                    let left = give_up.saturating_duration_since(Instant::now());
                    if !clock.wait_until(t.as_millis() as u64, left) {
                        return Ok(ButtonPoll::Timeout);
                    }
                    Instant::now()
                }
                None => {
                    let due = self.epoch + t;
                    let now = Instant::now();
                    if due > give_up {
                        std::thread::sleep(give_up.saturating_duration_since(now));
                        return Ok(ButtonPoll::Timeout);
                    }
                    std::thread::sleep(due.saturating_duration_since(now));
                    due
                }
            };
            let edge = if settle.is_some_and(|s| s <= t) && scripted.is_none_or(|a| a > t) {
                self.debounce.settle(t)
            } else {
                let e = self.events[self.next];
                self.next += 1;
                self.debounce.edge(e.action == Action::Press, t)
            };
            if let Some(edge) = edge {
                return Ok(ButtonPoll::Event(ButtonEvent { edge, at: due }));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpio::Edge;

    #[test]
    fn parses_and_rejects_bad_scripts() {
        let ok = parse(
            "[[event]]\nat_ms = 5\naction = \"press\"\n[[event]]\nat_ms = 9\naction = \"release\"\n",
            "s",
        )
        .unwrap();
        assert_eq!(ok.len(), 2);
        assert_eq!(ok[1].action, Action::Release);
        let e = parse("[[event]]\nat_ms = 5\naction = \"push\"\n", "s.toml").unwrap_err();
        assert!(
            e.to_string().contains("s.toml") && e.to_string().contains("push"),
            "{e}"
        );
        let e = parse(
            "[[event]]\nat_ms = 9\naction = \"press\"\n[[event]]\nat_ms = 5\naction = \"release\"\n",
            "s",
        )
        .unwrap_err();
        assert!(e.to_string().contains("time order"), "{e}");
        assert!(parse("", "s").unwrap().is_empty());
    }

    #[test]
    fn plays_the_timeline_through_the_debouncer() {
        let ev = |at_ms, action| ScriptEvent { at_ms, action };
        let events = vec![
            ev(0, Action::Press),
            ev(1, Action::Release),
            ev(2, Action::Press),
            ev(3, Action::Release),
            ev(4, Action::Press),
            ev(30, Action::Release),
        ];
        let epoch = Instant::now();
        let mut b = ScriptButton::new(events, Duration::from_millis(10), epoch);
        let mut seen = Vec::new();
        loop {
            match b.next_event(Duration::from_secs(5)).unwrap() {
                ButtonPoll::Event(e) => seen.push((e.edge, e.at.duration_since(epoch))),
                ButtonPoll::Timeout => panic!("timed out"),
                ButtonPoll::Exhausted => break,
            }
        }
        let ms = Duration::from_millis;
        assert_eq!(
            seen,
            [(Edge::Pressed, ms(0)), (Edge::Released, ms(30))],
            "the bounce burst at 0–4 ms is one press"
        );
    }

    #[test]
    fn with_a_clock_events_follow_the_audio_time() {
        let ev = |at_ms, action| ScriptEvent { at_ms, action };
        let clock = SimClock::new();
        let mut b = ScriptButton::new(
            vec![ev(100, Action::Press), ev(900, Action::Release)],
            Duration::ZERO,
            Instant::now(),
        )
        .with_clock(clock.clone());
        let short = Duration::from_millis(1);
        assert_eq!(b.next_event(short).unwrap(), ButtonPoll::Timeout);
        clock.advance_to(100);
        assert!(
            matches!(b.next_event(short).unwrap(), ButtonPoll::Event(e) if e.edge == Edge::Pressed)
        );
        clock.advance_to(899);
        assert_eq!(b.next_event(short).unwrap(), ButtonPoll::Timeout);
        clock.advance_to(5_000);
        assert!(
            matches!(b.next_event(short).unwrap(), ButtonPoll::Event(e) if e.edge == Edge::Released)
        );
        assert_eq!(b.next_event(short).unwrap(), ButtonPoll::Exhausted);
    }

    #[test]
    fn times_out_before_a_late_event() {
        let events = vec![ScriptEvent {
            at_ms: 60_000,
            action: Action::Press,
        }];
        let mut b = ScriptButton::new(events, Duration::ZERO, Instant::now());
        assert_eq!(
            b.next_event(Duration::from_millis(1)).unwrap(),
            ButtonPoll::Timeout
        );
    }
}
