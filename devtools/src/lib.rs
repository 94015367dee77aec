//! talkie's development tools, kept out of the product library (issue 29):
//! [`scenario`] builds simulated kiosk sessions for the demo, the
//! end-to-end tests and the benchmarks (the `talkie-scenario` binary);
//! [`alloc_audit`] is the counting allocator that proves the audio path
//! allocates nothing. Neither is in the Debian package.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod alloc_audit;
pub mod scenario;
