//! Push-to-talk button and status indicators.
//!
//! | backend  | button                               | indicators                                  |
//! |----------|--------------------------------------|---------------------------------------------|
//! | `rppal`  | [`rpi::RppalButton`] (edge interrupts) | [`rpi::PinLeds`] (GPIO + software PWM), [`rpi::Apa102Leds`] (SPI) |
//! | `script` | [`script::ScriptButton`] (TOML timeline) | [`sim::TimelineIndicators`] (recorded)    |
//! | `none`   | [`NoButton`]                         | [`NoIndicators`]                            |
//!
//! Every backend's raw edges go through the same [`Debouncer`], so a bouncy
//! contact in a script behaves exactly like one on a real pin.

#[cfg(feature = "rppal")]
pub mod rpi;
pub mod script;
pub mod sim;

use std::time::{Duration, Instant};

/// A debounced edge of the push-to-talk button.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Edge {
    Pressed,
    Released,
}

impl Edge {
    pub fn as_str(self) -> &'static str {
        match self {
            Edge::Pressed => "press",
            Edge::Released => "release",
        }
    }
}

/// One button edge with the time it happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ButtonEvent {
    pub edge: Edge,
    pub at: Instant,
}

/// What [`Button::next_event`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ButtonPoll {
    Event(ButtonEvent),
    /// Nothing happened within the timeout.
    Timeout,
    /// A finite (scripted) button has nothing more to say.
    Exhausted,
}

/// What the indicators show; each backend renders it its own way (plain
/// LEDs, PWM patterns, APA102 colours, a recorded timeline). The table in
/// `docs/ptt.md` ("LED vocabulary") describes [`IndicatorState::look`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IndicatorState {
    Off,
    Idle,
    Listening,
    Processing,
    Sending,
    Sent,
    Error,
    Offline,
    Busy,
    TooShort,
    NoSpeech,
}

/// One LED's behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Light {
    Off,
    On,
    /// On for the first half of every period.
    Blink {
        period_ms: u16,
    },
}

impl Light {
    /// Whether the LED is lit `t_ms` after the pattern started.
    pub fn lit_at(self, t_ms: u64) -> bool {
        match self {
            Light::Off => false,
            Light::On => true,
            Light::Blink { period_ms } => {
                let p = u64::from(period_ms.max(2));
                t_ms % p < p / 2
            }
        }
    }
}

/// How a state looks on the three plain LEDs (ready = green, activity =
/// amber, fault = red) and on an RGB strip (one colour, one light pattern).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Look {
    pub ready: Light,
    pub activity: Light,
    pub fault: Light,
    /// Colour for RGB LEDs (APA102), 0–255 per channel.
    pub rgb: (u8, u8, u8),
    /// Pattern of the RGB LEDs.
    pub rgb_light: Light,
}

const fn blink(period_ms: u16) -> Light {
    Light::Blink { period_ms }
}

impl IndicatorState {
    pub const ALL: [IndicatorState; 11] = [
        IndicatorState::Off,
        IndicatorState::Idle,
        IndicatorState::Listening,
        IndicatorState::Processing,
        IndicatorState::Sending,
        IndicatorState::Sent,
        IndicatorState::Error,
        IndicatorState::Offline,
        IndicatorState::Busy,
        IndicatorState::TooShort,
        IndicatorState::NoSpeech,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            IndicatorState::Off => "off",
            IndicatorState::Idle => "idle",
            IndicatorState::Listening => "listening",
            IndicatorState::Processing => "processing",
            IndicatorState::Sending => "sending",
            IndicatorState::Sent => "sent",
            IndicatorState::Error => "error",
            IndicatorState::Offline => "offline",
            IndicatorState::Busy => "busy",
            IndicatorState::TooShort => "too_short",
            IndicatorState::NoSpeech => "no_speech",
        }
    }

    /// Transient patterns (feedback on one action) are shown for this long,
    /// then the indicators return to the current lasting state.
    pub fn flash_ms(self) -> Option<u32> {
        match self {
            IndicatorState::Sent => Some(600),
            IndicatorState::Busy => Some(600),
            IndicatorState::TooShort => Some(400),
            IndicatorState::NoSpeech => Some(900),
            _ => None,
        }
    }

    /// The LED vocabulary.
    pub fn look(self) -> Look {
        use Light::{Off, On};
        let (ready, activity, fault, rgb, rgb_light) = match self {
            IndicatorState::Off => (Off, Off, Off, (0, 0, 0), Off),
            IndicatorState::Idle => (On, Off, Off, (0, 24, 0), On),
            IndicatorState::Listening => (On, On, Off, (0, 0, 255), On),
            IndicatorState::Processing => (On, blink(250), Off, (0, 160, 255), blink(250)),
            IndicatorState::Sending => (On, blink(125), Off, (0, 255, 160), blink(125)),
            IndicatorState::Sent => (blink(150), Off, Off, (0, 255, 0), blink(150)),
            IndicatorState::Error => (Off, Off, On, (255, 0, 0), On),
            IndicatorState::Offline => (On, Off, blink(1000), (255, 96, 0), blink(1000)),
            IndicatorState::Busy => (On, Off, blink(100), (255, 200, 0), blink(100)),
            IndicatorState::TooShort => (On, blink(100), Off, (255, 255, 255), blink(100)),
            IndicatorState::NoSpeech => (On, Off, blink(300), (160, 0, 255), blink(300)),
        };
        Look {
            ready,
            activity,
            fault,
            rgb,
            rgb_light,
        }
    }
}

/// Errors from GPIO backends.
#[derive(Debug, thiserror::Error)]
pub enum GpioError {
    /// The GPIO device could not be opened.
    #[error("cannot open GPIO ({backend}): {reason}")]
    Open {
        backend: &'static str,
        reason: String,
    },
    /// A pin or bus operation failed.
    #[error("GPIO {backend}: {reason}")]
    Io {
        backend: &'static str,
        reason: String,
    },
    /// A button script could not be read or is malformed.
    #[error("button script `{path}`: {reason}")]
    Script { path: String, reason: String },
}

/// The push-to-talk button.
pub trait Button: Send {
    /// Wait up to `timeout` for the next debounced edge.
    fn next_event(&mut self, timeout: Duration) -> Result<ButtonPoll, GpioError>;
}

/// The status LEDs.
pub trait Indicators: Send {
    /// Show `state` until told otherwise. Must not block for long.
    fn show(&mut self, state: IndicatorState) -> Result<(), GpioError>;
    /// Advance time-based patterns; called every few tens of milliseconds.
    /// Backends whose hardware blinks by itself ignore it.
    fn tick(&mut self) -> Result<(), GpioError> {
        Ok(())
    }
}

/// A button that is never pressed (`gpio.backend = "none"`).
#[derive(Debug, Default)]
pub struct NoButton;

impl Button for NoButton {
    fn next_event(&mut self, timeout: Duration) -> Result<ButtonPoll, GpioError> {
        std::thread::sleep(timeout);
        Ok(ButtonPoll::Timeout)
    }
}

/// Indicators that show nothing (`gpio.backend = "none"`).
#[derive(Debug, Default)]
pub struct NoIndicators;

impl Indicators for NoIndicators {
    fn show(&mut self, _state: IndicatorState) -> Result<(), GpioError> {
        Ok(())
    }
}

/// Software debounce of raw contact edges, leading-edge style: the first
/// edge that changes the debounced state is reported at once (a press
/// lights the LED without waiting), further edges within `window` are
/// absorbed, and when the window ends the raw level decides: if the contact
/// settled in the other position, that edge is reported then.
///
/// Times are any monotonic clock; only differences matter.
#[derive(Debug, Clone)]
pub struct Debouncer {
    window: Duration,
    pressed: bool,
    raw: bool,
    locked_until: Option<Duration>,
}

impl Debouncer {
    /// A debouncer whose contact starts released.
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            pressed: false,
            raw: false,
            locked_until: None,
        }
    }

    /// The debounced state.
    pub fn is_pressed(&self) -> bool {
        self.pressed
    }

    /// A raw edge: the contact is now `pressed` (as of time `t`).
    pub fn edge(&mut self, pressed: bool, t: Duration) -> Option<Edge> {
        self.raw = pressed;
        if self.locked_until.is_some_and(|l| t < l) {
            return None;
        }
        self.locked_until = None;
        self.accept(t)
    }

    /// When [`Debouncer::settle`] should be called next, if at all.
    pub fn deadline(&self) -> Option<Duration> {
        self.locked_until
    }

    /// Time has reached `t` with no edge: end the lock-out window and
    /// report the level the contact settled at, if it differs.
    pub fn settle(&mut self, t: Duration) -> Option<Edge> {
        match self.locked_until {
            Some(l) if t >= l => {
                self.locked_until = None;
                self.accept(t)
            }
            _ => None,
        }
    }

    fn accept(&mut self, t: Duration) -> Option<Edge> {
        if self.raw == self.pressed {
            return None;
        }
        self.pressed = self.raw;
        if !self.window.is_zero() {
            self.locked_until = Some(t + self.window);
        }
        Some(if self.pressed {
            Edge::Pressed
        } else {
            Edge::Released
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn a_bounce_burst_is_one_press() {
        let mut d = Debouncer::new(ms(20));
        assert_eq!(d.edge(true, ms(0)), Some(Edge::Pressed));
        assert_eq!(d.edge(false, ms(2)), None);
        assert_eq!(d.edge(true, ms(5)), None);
        assert_eq!(d.edge(false, ms(9)), None);
        assert_eq!(d.edge(true, ms(14)), None);
        assert_eq!(d.settle(ms(20)), None, "settled pressed: nothing new");
        assert_eq!(d.deadline(), None);
        assert_eq!(d.edge(false, ms(900)), Some(Edge::Released));
        assert_eq!(d.edge(true, ms(903)), None);
        assert_eq!(d.edge(false, ms(906)), None);
        assert_eq!(d.settle(ms(920)), None);
        assert!(!d.is_pressed());
    }

    #[test]
    fn a_glitch_that_settles_released_reports_the_release_after_the_window() {
        let mut d = Debouncer::new(ms(20));
        assert_eq!(d.edge(true, ms(100)), Some(Edge::Pressed));
        assert_eq!(d.edge(false, ms(103)), None);
        assert_eq!(d.deadline(), Some(ms(120)));
        assert_eq!(d.settle(ms(119)), None);
        assert_eq!(d.settle(ms(120)), Some(Edge::Released));
        assert!(!d.is_pressed());
    }

    #[test]
    fn repeated_levels_and_zero_window() {
        let mut d = Debouncer::new(Duration::ZERO);
        assert_eq!(d.edge(false, ms(0)), None);
        assert_eq!(d.edge(true, ms(1)), Some(Edge::Pressed));
        assert_eq!(d.edge(true, ms(1)), None);
        assert_eq!(d.edge(false, ms(1)), Some(Edge::Released));
        assert_eq!(d.deadline(), None);
    }

    #[test]
    fn blink_is_lit_for_the_first_half_of_each_period() {
        let b = Light::Blink { period_ms: 200 };
        assert!(b.lit_at(0) && b.lit_at(99) && !b.lit_at(100) && !b.lit_at(199) && b.lit_at(200));
        assert!(Light::On.lit_at(12345) && !Light::Off.lit_at(0));
    }

    #[test]
    fn every_state_has_a_distinct_look_and_a_name() {
        let mut names = std::collections::HashSet::new();
        for s in IndicatorState::ALL {
            assert!(names.insert(s.as_str()));
        }
        for (i, a) in IndicatorState::ALL.iter().enumerate() {
            for b in &IndicatorState::ALL[i + 1..] {
                assert_ne!(a.look(), b.look(), "{a:?} and {b:?} look the same");
            }
        }
    }
}
