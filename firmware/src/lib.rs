//! talkie: firmware for a push-to-talk voice kiosk.
//!
//! - [`config`]: the TOML file, overrides, validation, secrets.
//! - [`audio`]: capture thread → SPSC queue → audio thread (downmix,
//!   resample to 16 kHz, level meter, pre-roll) → a sink.
//! - [`telemetry`]: the counters and gauges every loop publishes.
//! - [`alloc_audit`]: a counting allocator that proves the audio path
//!   allocates nothing in steady state (tests and benchmarks).
//! - [`cli`]: the `talkie` command line.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod agent;
pub mod alloc_audit;
pub mod audio;
pub mod bench;
pub mod cli;
pub mod config;
pub mod logging;
pub mod logring;
pub mod models;
pub mod offline;
pub mod ptt;
pub mod record;
pub mod reload;
pub mod run;
pub mod scenario;
pub mod status;
pub mod stt;
pub mod supervisor;
pub mod telemetry;
pub mod threads;
pub mod vad;
