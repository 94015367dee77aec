//! Open the configured button and indicators.

use crate::base::config::{GpioBackend, GpioConfig};
use std::time::{Duration, Instant};
use talkie_hal::gpio::script::ScriptButton;
use talkie_hal::gpio::sim::{Timeline, TimelineIndicators};
use talkie_hal::gpio::{Button, GpioError, Indicators, NoButton, NoIndicators};

/// The opened GPIO backends.
pub struct Gpio {
    pub button: Box<dyn Button>,
    pub indicators: Box<dyn Indicators>,
    /// The recorded LED timeline (`script` backend).
    pub timeline: Option<Timeline>,
}

impl std::fmt::Debug for Gpio {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpio").finish_non_exhaustive()
    }
}

/// Open the button and LEDs of `cfg`; script times count from `epoch`.
/// `clock`: count a script's times on a simulated microphone's audio.
pub fn open(
    cfg: &GpioConfig,
    epoch: Instant,
    clock: Option<talkie_hal::sim_clock::SimClock>,
) -> Result<Gpio, GpioError> {
    let debounce = Duration::from_millis(cfg.debounce_ms.into());
    match cfg.backend {
        GpioBackend::None => Ok(Gpio {
            button: Box::new(NoButton),
            indicators: Box::new(NoIndicators),
            timeline: None,
        }),
        GpioBackend::Script => {
            let path = cfg.script.as_deref().ok_or_else(|| GpioError::Script {
                path: String::new(),
                reason: "gpio.script is not set".into(),
            })?;
            let timeline = Timeline::new(epoch);
            Ok(Gpio {
                button: Box::new(match clock {
                    Some(c) => ScriptButton::load(path, debounce, epoch)?.with_clock(c),
                    None => ScriptButton::load(path, debounce, epoch)?,
                }),
                indicators: Box::new(TimelineIndicators::new(timeline.clone())),
                timeline: Some(timeline),
            })
        }
        GpioBackend::Rppal => open_rppal(cfg, debounce),
    }
}

#[cfg(feature = "rppal")]
fn open_rppal(cfg: &GpioConfig, debounce: Duration) -> Result<Gpio, GpioError> {
    use crate::base::config::{LedKind, Pull};
    use talkie_hal::gpio::rpi::{self, Apa102Leds, ButtonPins, PinLeds, RppalButton};
    let button = RppalButton::open(ButtonPins {
        pin: cfg.button_pin,
        pull: match cfg.button_pull {
            Pull::Up => rpi::Pull::Up,
            Pull::Down => rpi::Pull::Down,
            Pull::Off => rpi::Pull::Off,
        },
        active_low: cfg.button_active_low,
        debounce,
    })?;
    let indicators: Box<dyn Indicators> = match cfg.leds {
        LedKind::Pins => Box::new(PinLeds::open(cfg.led_pins)?),
        LedKind::Apa102 => Box::new(Apa102Leds::open(
            cfg.apa102_spi_bus,
            cfg.apa102_spi_cs,
            cfg.apa102_count.into(),
            cfg.apa102_brightness,
        )?),
        LedKind::None => Box::new(NoIndicators),
    };
    Ok(Gpio {
        button: Box::new(button),
        indicators,
        timeline: None,
    })
}

/// Built without the `rppal` feature: no Raspberry Pi GPIO.
#[cfg(not(feature = "rppal"))]
fn open_rppal(_cfg: &GpioConfig, _debounce: Duration) -> Result<Gpio, GpioError> {
    Err(GpioError::Open {
        backend: "rppal",
        reason: "this build has no Raspberry Pi GPIO support (cargo feature `rppal`)".into(),
    })
}
