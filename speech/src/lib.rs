//! talkie-speech: on-device speech for the talkie kiosk, usable and
//! benchmarkable on its own.
//!
//! - [`models`]: the model manifest (`models/manifest.toml`, compiled in)
//!   and sha256 checks of the files before they are loaded;
//! - [`vad`]: Silero VAD on tract and the streaming segmenter;
//! - [`stt`]: Whisper tiny.en on tract (mel front end, encoder, greedy
//!   decoder with an int8 vocabulary projection), the [`stt::Recognizer`]
//!   (VAD trim + Whisper) and [`stt::calibrate`] (precision and threads
//!   measured on the device);
//! - [`options`]: [`options::RecognizerOptions`] and the precision and
//!   thread settings, this crate's own types: it knows nothing of the
//!   firmware's configuration.
//!
//! Audio in is 16 kHz mono `f32` ([`SAMPLE_RATE`]).
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod hugepages;
pub mod models;
pub mod options;
pub mod stt;
pub mod vad;

/// The rate every model here takes: 16 kHz mono.
pub const SAMPLE_RATE: u32 = 16_000;
