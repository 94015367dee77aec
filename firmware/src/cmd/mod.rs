//! The binary's layer: the command line ([`cli`]: arguments, exit codes),
//! `talkie run` ([`run`]: the runtime and signal handlers around
//! `Service::start`) and the offline tools — [`offline`] (`vad`,
//! `transcribe`), [`bench`](mod@bench), [`record`] and [`support_tool`]
//! (`talkie support-bundle`). Nothing below imports this layer.

pub mod bench;
pub mod cli;
pub mod offline;
pub mod record;
pub mod run;
pub mod support_tool;
