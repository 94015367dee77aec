//! talkie: firmware for a push-to-talk voice kiosk.
//!
//! Layers, each importing only those below it (docs/architecture.md):
//!
//! - the binary: `main.rs` and [`cli`] (arguments, exit codes), [`run`]
//!   (`talkie run`: runtime, signal handlers) and the offline tools
//!   [`offline`] (`vad`, `transcribe`), [`bench`](mod@bench), [`record`],
//!   [`support_tool`] (`talkie support-bundle`); [`scenario`] builds
//!   simulated sessions for the demo (the `talkie-scenario` binary), the tests
//!   and the benchmarks, and is no subcommand;
//! - the service: [`service`] (`Service::start` → `ServiceHandle`: wiring,
//!   control loop, watchdog, shutdown; in-process, no signals),
//!   [`supervisor`] (heartbeats, systemd notify), [`reload`] (what a
//!   reload applies), [`runs`] (the run history in the state directory);
//! - features: [`ptt`] (state machine, listener, recognition worker,
//!   button, LEDs; `PttControl` for the status API), [`agent`] (outbox,
//!   delivery link, breaker, `talkie outbox`; the mock agent is the
//!   `talkie-mock-agent` development crate), [`status`] (page, router,
//!   handlers, SSE, metrics, auth, the accept loop, the loopback client);
//! - speech and audio: [`stt`], [`vad`], [`models`] re-exported from the
//!   `talkie-speech` crate (Whisper and Silero VAD on tract, calibration of
//!   precision and threads, manifest and sha256 checks), [`audio`]
//!   (capture thread → SPSC queue → audio thread: downmix, resample to
//!   16 kHz, level meter, pre-roll);
//! - foundations: [`board`] (board health from `/proc` and `/sys`),
//!   [`updates`] (RAUC's slots, Mender's artifact), [`tool`] (system tools
//!   run with a deadline and bounded output),
//!   [`config`] (the TOML file, overrides, validation,
//!   secrets), [`telemetry`] (the counters and gauges every loop
//!   publishes), [`logging`] and [`logring`] (tracing set-up, the ring the
//!   status page shows), [`threads`] (named threads joined with a
//!   deadline), [`support`] (the support bundle's archive, secrets
//!   scrubbed), [`alloc_audit`] (the counting allocator that proves the
//!   audio path allocates nothing);
//! - `talkie_hal` (its own crate): audio sources, button, LEDs, and the
//!   simulation clock; `talkie_agent_api`: the agent contract's types.
//!
//! `layering` (tests only) reads these sources and fails on an import
//! cycle between modules.
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
pub mod alloc_audit;
pub mod audio;
pub mod bench;
pub mod board;
pub mod cli;
pub mod config;
pub mod logging;
pub mod logring;
pub mod offline;
pub mod private_files;
pub mod ptt;
pub mod record;
pub mod recordings;
pub mod reload;
pub mod run;
pub mod runs;
pub mod scenario;
pub mod service;
pub mod status;
pub mod supervisor;
pub mod support;
pub mod support_tool;
pub mod telemetry;
pub mod threads;
pub mod tool;
pub mod updates;

/// The speech crate's modules, under the names the firmware always used.
pub use talkie_speech::{models, stt, vad};

#[cfg(test)]
mod layering;
