//! End-to-end tests, one file per feature; helpers in `support/`.
//!
//! Most run the real `talkie` binary (exit codes, signals, the notify
//! socket, kill -9, the browser: what only a process shows); `service.rs`
//! starts the service in-process through `talkie::service`.
//!
//! - `audio`: a real alsa-lib PCM of type `file` reads a raw tone; the
//!   48 kHz stereo clips of `../shared/eval/dev` through the file backend.
//! - `config`: exit code 78 and the file:line:column of the culprit.
//! - `stt`, `ptt`, `agent`, `status`, `systemd`, `browser`, `service`.
//! - `fleet`: the Prometheus rules under promtool, their metrics in a
//!   running kiosk's `/metrics`.
//! - `updates`: the update hooks against real RAUC, `fw_setenv` and a
//!   kiosk that is ready or never becomes ready (issue 32).
//! - `supervised`: the whole kiosk under an emulated systemd through a
//!   fault schedule (issue 28), and the soak (`make soak`).
//!
//! The eval data is looked up in `$TALKIE_EVAL_DIR`, else `../shared/eval`
//! beside the repository.
// A test crate: its helpers are `pub` for its own modules.
#![allow(unreachable_pub)]

#[path = "../../firmware/tests/common/wer.rs"]
mod wer;

#[path = "../../firmware/tests/common/tmpfs.rs"]
mod tmpfs;

mod support;

mod agent;
mod audio;
mod browser;
mod config;
mod fleet;
mod ptt;
mod service;
mod soak;
mod status;
mod stt;
mod supervised;
mod systemd;
mod updates;
