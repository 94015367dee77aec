//! talkie: firmware for a push-to-talk voice kiosk.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod config;
