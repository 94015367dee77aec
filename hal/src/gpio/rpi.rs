//! `gpio.backend = "rppal"`: the real button and LEDs on a Raspberry Pi.
//!
//! - Button: an input pin with the configured pull, synchronous edge
//!   interrupts on both edges (rppal uses the GPIO character device), edges
//!   debounced by [`Debouncer`] in software.
//! - Plain LEDs: three outputs (ready, activity, fault); blinking uses
//!   rppal's software PWM, so no thread of ours toggles pins.
//! - APA102 RGB LEDs (ReSpeaker 2-Mic Pi HAT: three LEDs on SPI0 MOSI/SCLK,
//!   no chip select): one colour frame per change, blinking driven by
//!   [`Indicators::tick`].
//!
//! Opening any of these on a machine without the hardware is a
//! [`GpioError::Open`] that names the device node and the group the service
//! user needs.

use super::{
    Button, ButtonEvent, ButtonPoll, Debouncer, Edge, GpioError, IndicatorState, Indicators, Light,
};
use rppal::gpio::{Gpio, InputPin, Level, OutputPin, Trigger};
use rppal::spi::{Bus, Mode, SlaveSelect, Spi};
use std::time::{Duration, Instant};

const BACKEND: &str = "rppal";

/// Pull resistor of the button pin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pull {
    Up,
    Down,
    Off,
}

/// Wiring of the push-to-talk button.
#[derive(Debug, Clone, Copy)]
pub struct ButtonPins {
    /// BCM number.
    pub pin: u8,
    pub pull: Pull,
    /// Pressed pulls the line low.
    pub active_low: bool,
    pub debounce: Duration,
}

fn gpio_error(e: rppal::gpio::Error) -> GpioError {
    let reason = match &e {
        rppal::gpio::Error::UnknownModel => "no Raspberry Pi GPIO on this machine (rppal: unknown Raspberry Pi model; \
             it looks for /dev/gpiochip0 and /dev/gpiomem). Use gpio.backend = \"script\" or \"none\" off the board"
            .to_owned(),
        rppal::gpio::Error::PermissionDenied(path) => format!(
            "permission denied on {path}: the service user needs the `gpio` group \
             (SupplementaryGroups=gpio in talkie.service)"
        ),
        other => other.to_string(),
    };
    GpioError::Open {
        backend: BACKEND,
        reason,
    }
}

fn io_error(e: impl std::fmt::Display) -> GpioError {
    GpioError::Io {
        backend: BACKEND,
        reason: e.to_string(),
    }
}

/// The push-to-talk button on a GPIO pin.
pub struct RppalButton {
    pin: InputPin,
    active_low: bool,
    debounce: Debouncer,
    /// Maps rppal's since-boot event timestamps onto our clock.
    opened: Instant,
}

impl std::fmt::Debug for RppalButton {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RppalButton")
            .field("pin", &self.pin.pin())
            .finish()
    }
}

impl RppalButton {
    pub fn open(cfg: ButtonPins) -> Result<Self, GpioError> {
        let gpio = Gpio::new().map_err(gpio_error)?;
        let pin = gpio.get(cfg.pin).map_err(gpio_error)?;
        let mut pin = match cfg.pull {
            Pull::Up => pin.into_input_pullup(),
            Pull::Down => pin.into_input_pulldown(),
            Pull::Off => pin.into_input(),
        };
        pin.set_interrupt(Trigger::Both, None).map_err(gpio_error)?;
        let mut debounce = Debouncer::new(cfg.debounce);
        // Start from the real level, so a button held at boot is not a press.
        let pressed = (pin.read() == Level::Low) == cfg.active_low;
        if pressed {
            let _ = debounce.edge(true, Duration::ZERO);
            let _ = debounce.settle(cfg.debounce);
        }
        Ok(Self {
            pin,
            active_low: cfg.active_low,
            debounce,
            opened: Instant::now(),
        })
    }
}

impl Button for RppalButton {
    fn next_event(&mut self, timeout: Duration) -> Result<ButtonPoll, GpioError> {
        let give_up = Instant::now() + timeout;
        loop {
            let now = self.opened.elapsed();
            if let Some(edge) = self.debounce.settle(now) {
                return Ok(event(edge, Instant::now()));
            }
            let left = give_up.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(ButtonPoll::Timeout);
            }
            let wait = match self.debounce.deadline() {
                Some(d) => left.min(d.saturating_sub(now)),
                None => left,
            };
            let Some(ev) = self
                .pin
                .poll_interrupt(false, Some(wait.max(Duration::from_millis(1))))
                .map_err(io_error)?
            else {
                continue;
            };
            let level_low = matches!(ev.trigger, Trigger::FallingEdge);
            let pressed = level_low == self.active_low;
            if let Some(edge) = self.debounce.edge(pressed, self.opened.elapsed()) {
                return Ok(event(edge, Instant::now()));
            }
        }
    }
}

fn event(edge: Edge, at: Instant) -> ButtonPoll {
    ButtonPoll::Event(ButtonEvent { edge, at })
}

/// Three plain LEDs: ready (green), activity (amber), fault (red).
pub struct PinLeds {
    pins: [OutputPin; 3],
}

impl std::fmt::Debug for PinLeds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PinLeds")
            .field("pins", &self.pins.each_ref().map(OutputPin::pin))
            .finish()
    }
}

impl PinLeds {
    /// `pins` = BCM numbers of the ready, activity and fault LEDs (active high).
    pub fn open(pins: [u8; 3]) -> Result<Self, GpioError> {
        let gpio = Gpio::new().map_err(gpio_error)?;
        let get = |n: u8| -> Result<OutputPin, GpioError> {
            Ok(gpio.get(n).map_err(gpio_error)?.into_output_low())
        };
        Ok(Self {
            pins: [get(pins[0])?, get(pins[1])?, get(pins[2])?],
        })
    }
}

impl Indicators for PinLeds {
    fn show(&mut self, state: IndicatorState) -> Result<(), GpioError> {
        let look = state.look();
        for (pin, light) in self
            .pins
            .iter_mut()
            .zip([look.ready, look.activity, look.fault])
        {
            match light {
                Light::Off => {
                    pin.clear_pwm().map_err(io_error)?;
                    pin.set_low();
                }
                Light::On => {
                    pin.clear_pwm().map_err(io_error)?;
                    pin.set_high();
                }
                Light::Blink { period_ms } => {
                    let hz = 1000.0 / f64::from(period_ms.max(2));
                    pin.set_pwm_frequency(hz, 0.5).map_err(io_error)?;
                }
            }
        }
        Ok(())
    }
}

/// Bytes of one APA102 update: a zero start frame, one frame per LED
/// (`0b111` + 5-bit global brightness, then blue, green, red), and an end
/// frame of at least `count / 2` clock edges.
pub fn apa102_frame(out: &mut Vec<u8>, count: usize, rgb: (u8, u8, u8), brightness: u8) {
    out.clear();
    out.extend_from_slice(&[0, 0, 0, 0]);
    for _ in 0..count {
        out.extend_from_slice(&[0xE0 | (brightness & 0x1F), rgb.2, rgb.1, rgb.0]);
    }
    out.extend(std::iter::repeat_n(0xFF, count.div_ceil(16).max(1) * 4));
}

/// APA102 RGB LEDs on SPI (the ReSpeaker 2-Mic Pi HAT has three).
pub struct Apa102Leds {
    spi: Spi,
    count: usize,
    brightness: u8,
    state: IndicatorState,
    since: Instant,
    lit: Option<bool>,
    buf: Vec<u8>,
}

impl std::fmt::Debug for Apa102Leds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Apa102Leds")
            .field("count", &self.count)
            .finish()
    }
}

impl Apa102Leds {
    /// `bus`/`cs` select `/dev/spidev{bus}.{cs}`; `brightness` is 0–31.
    pub fn open(bus: u8, cs: u8, count: usize, brightness: u8) -> Result<Self, GpioError> {
        let node = format!("/dev/spidev{bus}.{cs}");
        let open_err = |reason: String| GpioError::Open {
            backend: BACKEND,
            reason: format!("{node}: {reason}"),
        };
        let bus = match bus {
            0 => Bus::Spi0,
            1 => Bus::Spi1,
            _ => return Err(open_err("only SPI buses 0 and 1 are supported".into())),
        };
        let ss = match cs {
            0 => SlaveSelect::Ss0,
            1 => SlaveSelect::Ss1,
            _ => return Err(open_err("only chip selects 0 and 1 are supported".into())),
        };
        let spi = Spi::new(bus, ss, 8_000_000, Mode::Mode0).map_err(|e| {
            let hint = match &e {
                rppal::spi::Error::Io(io) if io.kind() == std::io::ErrorKind::PermissionDenied => {
                    "permission denied: the service user needs the `spi` group"
                }
                rppal::spi::Error::Io(io) if io.kind() == std::io::ErrorKind::NotFound => {
                    "no such device: enable SPI (dtparam=spi=on in config.txt)"
                }
                _ => "",
            };
            open_err(format!("{e} {hint}").trim_end().to_owned())
        })?;
        Ok(Self {
            spi,
            count,
            brightness: brightness.min(31),
            state: IndicatorState::Off,
            since: Instant::now(),
            lit: None,
            buf: Vec::with_capacity(8 + count * 4 + 8),
        })
    }

    fn render(&mut self) -> Result<(), GpioError> {
        let look = self.state.look();
        let t = u64::try_from(self.since.elapsed().as_millis()).unwrap_or(0);
        let lit = look.rgb_light.lit_at(t);
        if self.lit == Some(lit) {
            return Ok(());
        }
        let rgb = if lit { look.rgb } else { (0, 0, 0) };
        apa102_frame(&mut self.buf, self.count, rgb, self.brightness);
        self.spi.write(&self.buf).map_err(io_error)?;
        self.lit = Some(lit);
        Ok(())
    }
}

impl Indicators for Apa102Leds {
    fn show(&mut self, state: IndicatorState) -> Result<(), GpioError> {
        self.state = state;
        self.since = Instant::now();
        self.lit = None;
        self.render()
    }

    fn tick(&mut self) -> Result<(), GpioError> {
        self.render()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apa102_frame_layout() {
        let mut b = Vec::new();
        apa102_frame(&mut b, 3, (1, 2, 3), 31);
        assert_eq!(
            b,
            [0, 0, 0, 0, 0xFF, 3, 2, 1, 0xFF, 3, 2, 1, 0xFF, 3, 2, 1, 0xFF, 0xFF, 0xFF, 0xFF]
        );
    }

    #[test]
    fn opening_gpio_without_a_pi_is_a_clear_error() {
        // On the build machine (x86_64, no GPIO) rppal cannot identify a Pi.
        if std::path::Path::new("/proc/device-tree/model").exists() {
            return;
        }
        let e = RppalButton::open(ButtonPins {
            pin: 17,
            pull: Pull::Up,
            active_low: true,
            debounce: Duration::from_millis(20),
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("rppal") && e.contains("/dev/gpiochip0"), "{e}");
        let e = PinLeds::open([22, 23, 24]).unwrap_err().to_string();
        assert!(e.contains("gpio.backend"), "{e}");
    }
}
