//! Structured logging with `tracing`: human lines or JSON on stderr, or
//! native journald records (`--log-format journald`, for systemd). The
//! level comes from `RUST_LOG` when set, else from `log.level`, and can be
//! changed while running ([`set_level`], used by config reload). Every
//! event also goes to the in-memory [`crate::base::logring`] the status page reads.

use crate::base::config::LogFormat;
use std::io::IsTerminal;
use std::sync::OnceLock;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Layer, Registry};

type FilterHandle = reload::Handle<EnvFilter, Registry>;

static FILTER: OnceLock<FilterHandle> = OnceLock::new();

/// `log.level` as a filter. tract's kernel probe logs one INFO line per
/// process ("avx512_fma_units: probed ..."): quiet unless `level` names tract.
fn parse_filter(level: &str) -> Result<EnvFilter, tracing_subscriber::filter::ParseError> {
    let spec = if level.contains("tract") {
        level.to_owned()
    } else {
        format!("{level},tract_linalg=warn")
    };
    EnvFilter::builder().parse(spec)
}

fn filter_for(level: &str) -> EnvFilter {
    parse_filter(level).unwrap_or_else(|_| EnvFilter::new("info"))
}

/// Install the global subscriber. Safe to call once; later calls are no-ops.
pub fn init(level: &str, format: LogFormat) {
    let from_env = EnvFilter::try_from_default_env().ok();
    let env_set = from_env.is_some();
    let (filter, handle) = reload::Layer::new(from_env.unwrap_or_else(|| filter_for(level)));
    let ring = crate::base::logring::layer(crate::base::logring::global().clone());
    let stderr = || {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .with_thread_names(true)
    };
    let mut journald_error = None;
    let output: Box<dyn Layer<_> + Send + Sync> = match format {
        LogFormat::Pretty => stderr().boxed(),
        LogFormat::Json => stderr().json().flatten_event(true).boxed(),
        LogFormat::Journald => match tracing_journald::layer() {
            Ok(j) => j.with_syslog_identifier("talkie".into()).boxed(),
            Err(e) => {
                journald_error = Some(e);
                stderr().boxed()
            }
        },
    };
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(output)
        .with(ring)
        .try_init()
        .is_ok();
    if installed && !env_set {
        let _ = FILTER.set(handle);
    }
    if let Some(e) = journald_error {
        tracing::warn!(error = %e, "journald is not reachable (/run/systemd/journal/socket); logging to stderr");
    }
}

/// Why `log.level` could not be changed while running.
#[derive(Debug, thiserror::Error)]
pub enum LevelError {
    #[error("log.level {level:?}: {source}")]
    Parse {
        level: String,
        source: tracing_subscriber::filter::ParseError,
    },
    #[error("RUST_LOG is set: the log level is fixed by the environment")]
    FixedByEnvironment,
    #[error("the log filter could not be replaced: {0}")]
    Reload(#[from] tracing_subscriber::reload::Error),
}

/// Change the level filter (`log.level` syntax). Err when the filter does
/// not parse, or when `RUST_LOG` fixed the level at start.
pub fn set_level(level: &str) -> Result<(), LevelError> {
    let filter = parse_filter(level).map_err(|source| LevelError::Parse {
        level: level.to_owned(),
        source,
    })?;
    let handle = FILTER.get().ok_or(LevelError::FixedByEnvironment)?;
    Ok(handle.reload(filter)?)
}
