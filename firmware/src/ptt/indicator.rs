//! The indicator thread (`talkie-leds`): renders the lasting state and
//! transient flashes on whatever [`Indicators`] backend is configured. The
//! controller only `try_send`s commands to it, so a slow LED bus never
//! blocks the button, audio or recognition paths.

use crate::base::telemetry::PttStats;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};
use talkie_hal::gpio::{IndicatorState, Indicators};

/// How often time-based patterns advance.
const TICK: Duration = Duration::from_millis(25);

/// Commands queued for the indicator thread.
pub const QUEUE: usize = 32;

/// What the indicator thread is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LedMsg {
    Led {
        show: IndicatorState,
        flash: Option<IndicatorState>,
        /// The press that caused this, for the press → LED latency.
        pressed_at: Option<Instant>,
    },
    /// Show every pattern of the LED vocabulary in turn for `step` each
    /// ([`TEST_STEP`] from the status API), then return to the lasting
    /// state (technician test; a real state change cuts it short).
    Test { step: Duration },
    /// Finish any flash, turn everything off, end the thread.
    Stop,
}

/// How long each pattern shows during [`LedMsg::Test`].
pub const TEST_STEP: Duration = Duration::from_millis(600);

struct Renderer {
    leds: Box<dyn Indicators>,
    base: IndicatorState,
    shown: Option<IndicatorState>,
    flash_until: Option<Instant>,
    /// Patterns still to show in a test cycle, and for how long each.
    test: std::collections::VecDeque<IndicatorState>,
    test_step: Duration,
    failed: bool,
}

impl Renderer {
    /// After a flash: the next test pattern, else the lasting state.
    fn after_flash(&mut self) {
        match self.test.pop_front() {
            Some(next) => {
                self.display(next);
                self.flash_until = Some(Instant::now() + self.test_step);
            }
            None => {
                self.flash_until = None;
                let base = self.base;
                self.display(base);
            }
        }
    }

    fn display(&mut self, s: IndicatorState) {
        match self.leds.show(s) {
            Ok(()) => self.failed = false,
            Err(e) if !self.failed => {
                tracing::warn!(error = %e, state = s.as_str(), "indicators failed");
                self.failed = true;
            }
            Err(_) => {}
        }
        self.shown = Some(s);
    }
}

/// The thread body.
pub fn run(leds: Box<dyn Indicators>, rx: Receiver<LedMsg>, stats: Arc<PttStats>) {
    let mut r = Renderer {
        leds,
        base: IndicatorState::Off,
        shown: None,
        flash_until: None,
        test: std::collections::VecDeque::new(),
        test_step: TEST_STEP,
        failed: false,
    };
    loop {
        let wait = r.flash_until.map_or(TICK, |t| {
            t.saturating_duration_since(Instant::now()).min(TICK)
        });
        match rx.recv_timeout(wait) {
            Ok(LedMsg::Led {
                show,
                flash,
                pressed_at,
            }) => {
                r.base = show;
                r.test.clear();
                match flash {
                    Some(f) => {
                        r.display(f);
                        let ms = f.flash_ms().unwrap_or(500);
                        r.flash_until = Some(Instant::now() + Duration::from_millis(ms.into()));
                    }
                    None => {
                        r.flash_until = None;
                        if r.shown != Some(show) {
                            r.display(show);
                        }
                    }
                }
                if let Some(p) = pressed_at {
                    let ms = p.elapsed().as_secs_f64() * 1000.0;
                    stats.press_to_led.observe_ms(ms);
                    tracing::debug!(press_to_led_ms = ms, "press shown");
                }
            }
            Ok(LedMsg::Test { step }) => {
                r.test_step = step;
                r.test = IndicatorState::ALL.iter().copied().collect();
                r.after_flash();
            }
            Ok(LedMsg::Stop) | Err(RecvTimeoutError::Disconnected) => {
                if r.flash_until.take().is_some() {
                    let base = r.base;
                    r.display(base);
                }
                r.display(IndicatorState::Off);
                return;
            }
            Err(RecvTimeoutError::Timeout) => {}
        }
        if r.flash_until.is_some_and(|t| Instant::now() >= t) {
            r.after_flash();
        }
        if let Err(e) = r.leds.tick() {
            if !r.failed {
                tracing::warn!(error = %e, "indicators failed");
                r.failed = true;
            }
        }
    }
}

/// Count a command the indicator thread had no room for.
pub fn dropped(stats: &PttStats) {
    stats.led_dropped.fetch_add(1, Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;
    use talkie_hal::gpio::sim::{Timeline, TimelineIndicators};

    #[test]
    fn flashes_return_to_the_lasting_state_and_stop_turns_off() {
        let timeline = Timeline::new(Instant::now());
        let leds = Box::new(TimelineIndicators::new(timeline.clone()));
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        let stats = Arc::new(PttStats::default());
        let s2 = Arc::clone(&stats);
        let t = std::thread::spawn(move || run(leds, rx, s2));
        let led = |show, flash, pressed_at| LedMsg::Led {
            show,
            flash,
            pressed_at,
        };
        use IndicatorState as S;
        tx.send(led(S::Idle, None, None)).unwrap();
        tx.send(led(S::Listening, None, Some(Instant::now())))
            .unwrap();
        tx.send(led(S::Processing, None, None)).unwrap();
        tx.send(led(S::Idle, Some(S::NoSpeech), None)).unwrap();
        // A press during a flash cuts it short.
        tx.send(led(S::Listening, None, None)).unwrap();
        tx.send(led(S::Idle, Some(S::TooShort), None)).unwrap();
        tx.send(LedMsg::Stop).unwrap();
        t.join().unwrap();
        let states: Vec<_> = timeline.entries().into_iter().map(|(_, s)| s).collect();
        assert_eq!(
            states,
            [
                S::Idle,
                S::Listening,
                S::Processing,
                S::NoSpeech,
                S::Listening,
                S::TooShort,
                S::Idle,
                S::Off
            ]
        );
        assert_eq!(stats.press_to_led.snapshot().count, 1);
    }

    #[test]
    fn test_cycle_shows_every_pattern_then_the_lasting_state() {
        let timeline = Timeline::new(Instant::now());
        let leds = Box::new(TimelineIndicators::new(timeline.clone()));
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        let t = std::thread::spawn(move || run(leds, rx, Arc::new(PttStats::default())));
        use IndicatorState as S;
        tx.send(LedMsg::Led {
            show: S::Idle,
            flash: None,
            pressed_at: None,
        })
        .unwrap();
        tx.send(LedMsg::Test {
            step: Duration::from_millis(1),
        })
        .unwrap();
        let mut expected = vec![S::Idle];
        expected.extend(S::ALL);
        expected.push(S::Idle);
        // Wait (bounded) until the cycle has played; the assertion is on
        // the recorded sequence, not on timing.
        let deadline = Instant::now() + Duration::from_secs(10);
        while timeline.entries().len() < expected.len() && Instant::now() < deadline {
            std::thread::yield_now();
        }
        tx.send(LedMsg::Stop).unwrap();
        t.join().unwrap();
        let states: Vec<_> = timeline.entries().into_iter().map(|(_, s)| s).collect();
        expected.push(S::Off);
        assert_eq!(states, expected);
    }
}
