//! Push-to-talk button and status indicators.
//!
//! The traits live here; the rppal (real GPIO) and script (simulated)
//! backends arrive with the push-to-talk work. [`NoButton`] and
//! [`NoIndicators`] back `gpio.backend = "none"`: a kiosk without GPIO
//! (audio-only tests, a technician's bench) that never sees a press.

use std::time::{Duration, Instant};

/// A debounced edge of the push-to-talk button.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Edge {
    Pressed,
    Released,
}

/// One button edge with the time it happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ButtonEvent {
    pub edge: Edge,
    pub at: Instant,
}

/// What the indicators show; each backend renders it its own way (plain
/// LEDs, PWM patterns, APA102 colours, a recorded timeline).
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
    fn next_event(&mut self, timeout: Duration) -> Result<Option<ButtonEvent>, GpioError>;
}

/// The status LEDs.
pub trait Indicators: Send {
    /// Show `state` until told otherwise. Must not block for long.
    fn show(&mut self, state: IndicatorState) -> Result<(), GpioError>;
}

/// A button that is never pressed (`gpio.backend = "none"`).
#[derive(Debug, Default)]
pub struct NoButton;

impl Button for NoButton {
    fn next_event(&mut self, timeout: Duration) -> Result<Option<ButtonEvent>, GpioError> {
        std::thread::sleep(timeout);
        Ok(None)
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
