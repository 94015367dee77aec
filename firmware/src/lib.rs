//! talkie: firmware for a push-to-talk voice kiosk.
//!
//! The folders are the layers, each importing only those below it (the
//! ranks: `LAYERS` in `layering.rs`, the table in docs/architecture.md):
//!
//! - the binary, [`cmd`]: the command line ([`cmd::cli`]), `talkie run`
//!   ([`cmd::run`]) and the offline tools;
//! - the service, [`service`]: `Service::start` → `ServiceHandle` (wiring,
//!   control loop, watchdog, shutdown; in-process, no signals);
//! - features: [`ptt`] (state machine, listener, recognition worker,
//!   button, LEDs, kept recordings; `PttControl` for the status API),
//!   [`agent`] (outbox, delivery link, breaker, `talkie outbox`), [`status`]
//!   (page, router, handlers, SSE, metrics, auth, the accept loop);
//! - [`audio`]: capture thread → SPSC queue → audio thread (downmix,
//!   resample to 16 kHz, level meter, pre-roll);
//! - [`platform`]: board health from `/proc` and `/sys`, the update
//!   system's slots;
//! - foundations, [`base`]: configuration, telemetry, logging, heartbeats
//!   and systemd notify, the run history, threads, tools, private files, the
//!   support bundle's archive;
//! - speech: [`stt`], [`vad`], [`models`] re-exported from the
//!   `talkie-speech` crate (Whisper and Silero VAD on tract, calibration,
//!   manifest and sha256 checks); `talkie_hal` (its own crate): audio
//!   sources, button, LEDs, the simulation clock.
//!
//! Development tools (the session builder, the counting allocator) are the
//! `talkie-devtools` crate, not part of this library.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

/// `talkie --version`: crate version plus git revision. Here, at the root,
/// so every layer can name the release without importing the command line.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (git ",
    env!("TALKIE_GIT_REV"),
    ")"
);

/// Exit status of `talkie run` after `POST /api/v1/restart` (sysexits'
/// EX_TEMPFAIL); `talkie.service` has `RestartForceExitStatus=75`. At the
/// root so the status API and the service name it without importing each
/// other.
pub const EXIT_RESTART: i32 = 75;

pub mod agent;
pub mod audio;
pub mod base;
pub mod cmd;
pub mod platform;
pub mod ptt;
pub mod service;
pub mod status;

/// The speech crate's modules, under the names the firmware always used.
pub use talkie_speech::{models, stt, vad};

/// The layering rules as tests (issue 29).
#[cfg(test)]
mod layering;
