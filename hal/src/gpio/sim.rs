//! Simulated indicators: every state shown is recorded on a bounded
//! timeline (milliseconds after an epoch, state) that tests, the demo and
//! the status page read, and logged as a `talkie::led` event.

use super::{GpioError, IndicatorState, Indicators};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

/// Entries kept; older ones are dropped first.
pub const TIMELINE_LEN: usize = 1024;

/// A shared, bounded record of what the indicators showed.
#[derive(Debug, Clone)]
pub struct Timeline {
    epoch: Instant,
    entries: Arc<Mutex<VecDeque<(u64, IndicatorState)>>>,
}

impl Timeline {
    pub fn new(epoch: Instant) -> Self {
        Self {
            epoch,
            entries: Arc::new(Mutex::new(VecDeque::with_capacity(TIMELINE_LEN))),
        }
    }

    /// Record `state` as shown now; returns its time in ms after the epoch.
    pub fn record(&self, state: IndicatorState) -> u64 {
        let at = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        let mut e = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if e.len() == TIMELINE_LEN {
            e.pop_front();
        }
        e.push_back((at, state));
        at
    }

    /// A copy of the recorded entries, oldest first.
    pub fn entries(&self) -> Vec<(u64, IndicatorState)> {
        let e = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        e.iter().copied().collect()
    }
}

/// Indicators that record instead of lighting anything.
#[derive(Debug)]
pub struct TimelineIndicators {
    timeline: Timeline,
}

impl TimelineIndicators {
    pub fn new(timeline: Timeline) -> Self {
        Self { timeline }
    }
}

impl Indicators for TimelineIndicators {
    fn show(&mut self, state: IndicatorState) -> Result<(), GpioError> {
        let at_ms = self.timeline.record(state);
        tracing::info!(target: "talkie::led", state = state.as_str(), at_ms, "led");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_in_order_and_stays_bounded() {
        let t = Timeline::new(Instant::now());
        let mut leds = TimelineIndicators::new(t.clone());
        leds.show(IndicatorState::Idle).unwrap();
        leds.show(IndicatorState::Listening).unwrap();
        let states: Vec<_> = t.entries().into_iter().map(|(_, s)| s).collect();
        assert_eq!(states, [IndicatorState::Idle, IndicatorState::Listening]);
        for _ in 0..TIMELINE_LEN + 5 {
            t.record(IndicatorState::Busy);
        }
        let e = t.entries();
        assert_eq!(e.len(), TIMELINE_LEN);
        assert!(e.iter().all(|(_, s)| *s == IndicatorState::Busy));
    }
}
