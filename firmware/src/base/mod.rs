//! Foundations: what every other layer stands on, importing nothing of
//! talkie above it — the configuration ([`config`], with [`config::reload`]:
//! what a reload applies), the counters and gauges every loop publishes
//! ([`telemetry`]), tracing set-up and the ring the page shows
//! ([`logging`], [`logring`]), heartbeats and systemd notify
//! ([`supervisor`]), the run history ([`runs`]), named threads joined with
//! a deadline ([`threads`]), system tools run with a deadline and bounded
//! output ([`tool`]), private files ([`private_files`]) and the support
//! bundle's archive, secrets scrubbed ([`support`]).

pub mod config;
pub mod logging;
pub mod logring;
pub mod private_files;
pub mod runs;
pub mod supervisor;
pub mod support;
pub mod telemetry;
pub mod threads;
pub mod tool;
