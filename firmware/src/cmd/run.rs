//! `talkie run`: the service ([`crate::service`]) in its own process, with
//! what only a process has: the tokio runtime, signal handlers (SIGTERM and
//! SIGINT stop, SIGHUP reloads, a second stop signal exits at once) and the
//! errors the command line turns into exit codes.

use crate::base::config::reload::Loader;
use crate::base::config::Config;
use crate::service::{Ended, Service, ServiceError, ServiceOptions, StartError};
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};

/// Exit code when a second signal cuts shutdown short.
const EXIT_SECOND_SIGNAL: i32 = 130;

/// Errors that end `talkie run`.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error(transparent)]
    Start(#[from] StartError),
    #[error(transparent)]
    Service(#[from] ServiceError),
}

/// How `run` ends besides signals (the command line's `talkie run` flags,
/// without clap types).
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// With `gpio.backend = "script"`: exit once the last scripted event
    /// has been fully handled.
    pub until_script_done: bool,
}

/// Run the service until SIGINT/SIGTERM, until a simulated source ends, or
/// (with `--until-script-done`) until the button script is fully handled.
pub fn run(config: &Config, args: &RunOptions, loader: Loader) -> Result<Ended, RunError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        // Bounded (the unit's TasksMax=128): outbox writes and model
        // loading are the only blocking work.
        .max_blocking_threads(16)
        .thread_name("talkie-rt")
        .enable_all()
        .build()
        .map_err(RunError::Runtime)?;
    let options = ServiceOptions {
        loader,
        until_script_done: args.until_script_done,
        end_with_source: true,
    };
    let result = rt.block_on(serve(config.clone(), options));
    // A model load abandoned by a stop signal may still run on the
    // blocking pool: do not wait for it.
    rt.shutdown_timeout(Duration::from_secs(1));
    result
}

async fn serve(config: Config, options: ServiceOptions) -> Result<Ended, RunError> {
    let mut sigterm = signal(SignalKind::terminate()).map_err(RunError::Signals)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(RunError::Signals)?;
    let mut sighup = signal(SignalKind::hangup()).map_err(RunError::Signals)?;
    let service = Service::start(config, options).await?;
    let control = service.control();
    let mut done = std::pin::pin!(service.wait());
    loop {
        tokio::select! {
            r = &mut done => return Ok(r?),
            _ = sighup.recv() => {
                tracing::info!("SIGHUP: reloading the configuration");
                let c = control.clone();
                tokio::spawn(async move { c.reload().await });
            }
            _ = sigterm.recv() => {
                tracing::info!("SIGTERM: shutting down");
                break;
            }
            _ = sigint.recv() => {
                tracing::info!("SIGINT: shutting down");
                break;
            }
        }
    }
    control.shutdown();
    tokio::select! {
        r = &mut done => Ok(r?),
        _ = sigterm.recv() => second_signal(),
        _ = sigint.recv() => second_signal(),
    }
}

fn second_signal() -> ! {
    tracing::warn!("second signal: exiting now");
    std::process::exit(EXIT_SECOND_SIGNAL);
}
