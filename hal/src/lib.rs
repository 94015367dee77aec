//! talkie's hardware abstraction layer.
//!
//! Every piece of hardware the kiosk touches sits behind a trait defined here,
//! with a real backend and a simulated one that implement the same trait:
//!
//! | concern    | trait                        | real backend            | simulated backend        |
//! |------------|------------------------------|-------------------------|--------------------------|
//! | microphone | [`audio::AudioSource`]       | [`audio::alsa`] (ALSA)  | [`audio::file`] (WAV)    |
//! | button     | [`gpio::Button`]             | rppal (push-to-talk issue) | script (push-to-talk issue) |
//! | LEDs       | [`gpio::Indicators`]         | rppal (push-to-talk issue) | recorded timeline        |
//!
//! Backends report typed errors ([`audio::AudioError`], [`gpio::GpioError`]);
//! deciding what to do about them (count, retry, reopen, fail) is the
//! firmware's job, not the HAL's.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod audio;
pub mod gpio;
pub mod sim_clock;
