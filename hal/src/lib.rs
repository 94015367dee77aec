//! talkie's hardware abstraction layer.
//!
//! Every piece of hardware the kiosk touches sits behind a trait defined here,
//! with a real backend and a simulated one that implement the same trait:
//!
//! | concern    | trait                        | real backend            | simulated backend        |
//! |------------|------------------------------|-------------------------|--------------------------|
//! | microphone | [`audio::AudioSource`]       | `audio::alsa` (ALSA)    | [`audio::file`] (WAV)    |
//! | button     | [`gpio::Button`]             | `gpio::rpi` (rppal)     | [`gpio::script`]         |
//! | LEDs       | [`gpio::Indicators`]         | `gpio::rpi` (pins, APA102) | [`gpio::sim`] (recorded timeline) |
//!
//! The real backends are cargo features, on by default: `alsa` (links
//! libasound) and `rppal`. Without them the simulated backends remain.
//!
//! Backends report the HAL's own typed errors ([`audio::AudioError`],
//! [`gpio::GpioError`]; a backend library's error becomes an
//! [`audio::DeviceError`] with its message and errno), so nothing above the
//! HAL names `alsa` or `rppal` types. Deciding what to do about an error
//! (count, retry, reopen, fail) is the firmware's job, not the HAL's.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod audio;
pub mod gpio;
pub mod sim_clock;
