//! Configuration: one TOML file, overridable from the command line and the
//! environment, validated completely before anything starts.
//!
//! Precedence, lowest first: built-in defaults, the file, `TALKIE_SECTION__KEY`
//! environment variables, `--set section.key=value` arguments. Every error
//! names where the offending value came from (file, line and column; the
//! `--set` argument; the environment variable), the key, and what is
//! allowed. The binary exits with [`EX_CONFIG`] on any of them.
//!
//! Secrets (`agent.token`, `status.token`) may be inline, but the intended
//! sources are `*_token_file` keys and systemd credentials
//! (`$CREDENTIALS_DIRECTORY/agent-token`, `status-token`); they are read here
//! and never printed.

mod schema;
mod secret;
mod validate;

pub mod models;
pub mod reload;

pub use schema::*;
pub use secret::{redact_url, Secret, REDACTED};

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// Where the service looks when `--config` is not given.
pub const DEFAULT_PATH: &str = "/etc/talkie/talkie.toml";

/// sysexits.h `EX_CONFIG`: the process exit code for any configuration error.
pub const EX_CONFIG: i32 = 78;

/// Prefix of environment overrides: `TALKIE_AUDIO__RATE=16000`.
pub const ENV_PREFIX: &str = "TALKIE_";

/// Where a configuration value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A position in the configuration file (1-based line and column).
    File {
        path: PathBuf,
        line: usize,
        column: usize,
    },
    /// A `--set` argument.
    Set(String),
    /// An environment variable.
    Env(String),
    /// Not set anywhere: the built-in default.
    Default { path: PathBuf },
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File { path, line, column } => {
                write!(f, "{}:{line}:{column}", path.display())
            }
            Origin::Set(arg) => write!(f, "--set {}", shorten(arg)),
            Origin::Env(var) => write!(f, "environment variable {var}"),
            Origin::Default { path } => write!(f, "{} (built-in default)", path.display()),
        }
    }
}

/// One thing wrong with the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub origin: Origin,
    /// `section.key`
    pub key: String,
    /// What is wrong and what is allowed.
    pub message: String,
}

/// Longest message or `--set`/environment origin shown: a 1 MB value must
/// not be echoed back whole.
const MAX_SHOWN: usize = 200;

fn shorten(s: &str) -> std::borrow::Cow<'_, str> {
    match s.char_indices().nth(MAX_SHOWN) {
        Some((end, _)) => format!("{}… ({} bytes)", &s[..end], s.len()).into(),
        None => s.into(),
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let origin = self.origin.to_string();
        write!(
            f,
            "{}: {}: {}",
            shorten(&origin),
            shorten(&self.key),
            shorten(&self.message)
        )
    }
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source} (pass --config PATH)", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}:{line}:{column}: invalid TOML: {message}", path.display())]
    Syntax {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{origin}: expected section.key=value ({message})")]
    Override { origin: Origin, message: String },
    #[error("{}", render_problems(.0))]
    Invalid(Vec<Problem>),
}

impl ConfigError {
    /// The problems, for tests and the status page.
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Invalid(p) => p,
            _ => &[],
        }
    }
}

fn render_problems(problems: &[Problem]) -> String {
    let lines: Vec<String> = problems.iter().map(Problem::to_string).collect();
    lines.join("\n")
}

/// Everything besides the file that shapes the effective configuration.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--set section.key=value` arguments, in order.
    pub sets: Vec<String>,
    /// `(name, value)` of the `TALKIE_*__*` environment variables.
    pub env: Vec<(String, String)>,
    /// systemd's `$CREDENTIALS_DIRECTORY`.
    pub credentials_dir: Option<PathBuf>,
}

impl Overrides {
    /// Take the environment overrides and credentials directory from the
    /// process environment.
    /// Variables that are not valid UTF-8 are skipped (`std::env::vars`
    /// would panic on them); a `TALKIE_*` one is kept with its bytes
    /// replaced, so validation names it instead of silently ignoring it.
    pub fn from_process_env(sets: Vec<String>) -> Self {
        let env = std::env::vars_os()
            .filter_map(|(k, v)| {
                let k = k.into_string().ok()?;
                let v = v
                    .into_string()
                    .unwrap_or_else(|v| v.to_string_lossy().into_owned());
                (k.starts_with(ENV_PREFIX) && k.contains("__")).then_some((k, v))
            })
            .collect();
        Self {
            sets,
            env,
            credentials_dir: std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from),
        }
    }
}

/// A loaded, validated configuration plus where each value came from.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub path: PathBuf,
}

/// Largest configuration file read.
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;
/// Largest token file read.
pub const MAX_TOKEN_BYTES: u64 = 4096;

/// Read a UTF-8 text file of at most `max` bytes that must be a regular
/// file: a FIFO would block forever and `/dev/zero` never ends. The file is
/// opened non-blocking, so even a FIFO without a writer returns at once.
pub fn read_bounded(path: &Path, max: u64) -> std::io::Result<String> {
    use std::io::{Error, ErrorKind, Read};
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(Error::new(ErrorKind::InvalidInput, "not a regular file"));
    }
    let mut bytes = Vec::new();
    file.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(Error::new(
            ErrorKind::InvalidData,
            format!("larger than {max} bytes"),
        ));
    }
    String::from_utf8(bytes).map_err(|_| Error::new(ErrorKind::InvalidData, "not UTF-8 text"))
}

/// Read, override, validate and resolve the secrets of the file at `path`.
pub fn load(path: &Path, overrides: &Overrides) -> Result<Loaded, ConfigError> {
    let text = read_bounded(path, MAX_CONFIG_BYTES).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    load_str(path, &text, overrides)
}

/// [`load`] on text already in memory; `path` is used in messages.
pub fn load_str(path: &Path, text: &str, overrides: &Overrides) -> Result<Loaded, ConfigError> {
    let locator = Locator::parse(path, text)?;
    let mut table: toml::Table = toml::from_str(text).map_err(|e| {
        let (line, column) = e.span().map(|s| line_col(text, s.start)).unwrap_or((1, 1));
        ConfigError::Syntax {
            path: path.to_owned(),
            line,
            column,
            message: e.message().to_owned(),
        }
    })?;
    let mut origins = HashMap::new();
    for (var, value) in &overrides.env {
        let origin = Origin::Env(var.clone());
        let key = env_key(var).ok_or_else(|| ConfigError::Override {
            origin: origin.clone(),
            message: format!("name it {ENV_PREFIX}SECTION__KEY"),
        })?;
        apply_override(&mut table, &key, value, origin, &mut origins)?;
    }
    for arg in &overrides.sets {
        let origin = Origin::Set(arg.clone());
        let Some((key, value)) = arg.split_once('=') else {
            return Err(ConfigError::Override {
                origin,
                message: "missing `=`".to_owned(),
            });
        };
        apply_override(&mut table, key.trim(), value.trim(), origin, &mut origins)?;
    }
    let locate = |key: &str| -> Origin {
        origins
            .get(key)
            .cloned()
            .unwrap_or_else(|| locator.locate(key))
    };
    let mut config: Config =
        serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
            let key = e.path().to_string();
            let message = e.into_inner().message().to_owned();
            ConfigError::Invalid(vec![Problem {
                origin: locate(&key),
                message,
                key,
            }])
        })?;
    let mut problems = validate::validate(&config);
    problems.extend(resolve_secrets(
        &mut config,
        overrides.credentials_dir.as_deref(),
    ));
    if !problems.is_empty() {
        return Err(ConfigError::Invalid(
            problems
                .into_iter()
                .map(|(key, message)| Problem {
                    origin: locate(&key),
                    key,
                    message,
                })
                .collect(),
        ));
    }
    Ok(Loaded {
        config,
        path: path.to_owned(),
    })
}

/// `TALKIE_AUDIO__RATE` → `audio.rate`.
fn env_key(var: &str) -> Option<String> {
    let rest = var.strip_prefix(ENV_PREFIX)?;
    let (section, key) = rest.split_once("__")?;
    if section.is_empty() || key.is_empty() || key.contains("__") {
        return None;
    }
    Some(format!(
        "{}.{}",
        section.to_ascii_lowercase(),
        key.to_ascii_lowercase()
    ))
}

fn apply_override(
    table: &mut toml::Table,
    key: &str,
    raw: &str,
    origin: Origin,
    origins: &mut HashMap<String, Origin>,
) -> Result<(), ConfigError> {
    let err = |message: String| ConfigError::Override {
        origin: origin.clone(),
        message,
    };
    let (section, name) = key
        .split_once('.')
        .filter(|(s, k)| !s.is_empty() && !k.is_empty() && !k.contains('.'))
        .ok_or_else(|| err(format!("`{key}` is not of the form section.key")))?;
    // A TOML literal (`16000`, `true`, `"x"`, `[1, 2]`) keeps its type;
    // anything else (`hw:1,0`, `/tmp/a.wav`) is taken as a string.
    let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()));
    let entry = table
        .entry(section.to_owned())
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    let toml::Value::Table(section_table) = entry else {
        return Err(err(format!("`{section}` is not a section")));
    };
    section_table.insert(name.to_owned(), value);
    origins.insert(format!("{section}.{name}"), origin);
    Ok(())
}

/// Fill `token` from `token_file` or the systemd credential.
fn resolve_secrets(config: &mut Config, credentials_dir: Option<&Path>) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    let agent = &mut config.agent;
    if let Err(p) = resolve_secret(
        "agent",
        &mut agent.token,
        agent.token_file.as_deref(),
        "agent-token",
        credentials_dir,
    ) {
        problems.push(p);
    }
    let status = &mut config.status;
    if let Err(p) = resolve_secret(
        "status",
        &mut status.token,
        status.token_file.as_deref(),
        "status-token",
        credentials_dir,
    ) {
        problems.push(p);
    }
    for (section, token) in [
        ("agent", &config.agent.token),
        ("status", &config.status.token),
    ] {
        if let Err(p) = token_shape(section, token.as_ref()) {
            problems.push(p);
        }
    }
    problems
}

fn resolve_secret(
    section: &str,
    token: &mut Option<Secret>,
    token_file: Option<&Path>,
    credential: &str,
    credentials_dir: Option<&Path>,
) -> Result<(), (String, String)> {
    let key = format!("{section}.token_file");
    let file = match (token_file, credentials_dir) {
        (Some(f), Some(dir)) if f.is_relative() => Some(dir.join(f)),
        (Some(f), _) => Some(f.to_owned()),
        (None, Some(dir)) if token.is_none() => {
            let p = dir.join(credential);
            p.exists().then_some(p)
        }
        _ => None,
    };
    let Some(file) = file else { return Ok(()) };
    if token.is_some() {
        return Err((
            key,
            format!("set only one of {section}.token and {section}.token_file"),
        ));
    }
    let text = read_bounded(&file, MAX_TOKEN_BYTES)
        .map_err(|e| (key.clone(), format!("cannot read {}: {e}", file.display())))?;
    let value = text.trim();
    if value.is_empty() {
        return Err((key, format!("{} is empty", file.display())));
    }
    *token = Some(Secret::new(value));
    Ok(())
}

/// A token goes into an `Authorization` header: printable ASCII without
/// spaces, or every request with it fails (issue 28 row 8). The reason
/// names the position, never the token.
fn token_shape(section: &str, token: Option<&Secret>) -> Result<(), (String, String)> {
    let Some(t) = token else { return Ok(()) };
    match t.expose().char_indices().find(|(_, c)| !c.is_ascii_graphic()) {
        None => Ok(()),
        Some((at, c)) => Err((
            format!("{section}.token"),
            format!(
                "the token has {} at byte {at}: a token is printable ASCII without spaces or control characters (it goes into an HTTP header)",
                if c.is_control() { format!("the control character {:?}", c) } else if c.is_whitespace() { "a space".to_owned() } else { "a non-ASCII character".to_owned() }
            ),
        )),
    }
}

/// 1-based line and column of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Finds keys in the original file text, for error positions.
struct Locator {
    path: PathBuf,
    text: String,
    doc: toml_edit::Document<String>,
}

impl Locator {
    fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let doc = toml_edit::Document::parse(text.to_owned()).map_err(|e| {
            let (line, column) = e.span().map(|s| line_col(text, s.start)).unwrap_or((1, 1));
            ConfigError::Syntax {
                path: path.to_owned(),
                line,
                column,
                message: e.message().trim().to_owned(),
            }
        })?;
        Ok(Self {
            path: path.to_owned(),
            text: text.to_owned(),
            doc,
        })
    }

    /// Position of `section.key` (its value, else its section header).
    fn locate(&self, key: &str) -> Origin {
        let mut parts = key.splitn(2, '.');
        let section = parts.next().unwrap_or("");
        let name = parts.next();
        let item = self.doc.as_table().get(section);
        let span = match (item.and_then(|i| i.as_table_like()), name) {
            (Some(t), Some(name)) => t
                .get(name)
                .and_then(|v| v.span())
                .or_else(|| item.and_then(|i| i.span())),
            _ => item.and_then(|i| i.span()),
        };
        match span {
            Some(s) => {
                let (line, column) = line_col(&self.text, s.start);
                Origin::File {
                    path: self.path.clone(),
                    line,
                    column,
                }
            }
            None => Origin::Default {
                path: self.path.clone(),
            },
        }
    }
}

#[cfg(test)]
mod tests;

/// The configuration as JSON with secrets shown as `<redacted>`.
pub fn redacted(config: &crate::base::config::Config) -> serde_json::Value {
    serde_json::to_value(config).unwrap_or(serde_json::Value::Null)
}

impl VadConfig {
    /// The speech crate's segmenter settings for this `[vad]` section.
    pub fn segmenter(&self) -> talkie_speech::vad::SegmenterConfig {
        talkie_speech::vad::SegmenterConfig::from_ms(
            self.threshold,
            self.min_speech_ms,
            self.min_silence_ms,
            self.speech_pad_ms,
        )
    }
}

impl Config {
    /// Every secret this configuration holds: the technician and agent
    /// tokens and a password in the agent URL. The support bundle scrubs
    /// them from everything it writes.
    pub fn secret_values(&self) -> Vec<Secret> {
        let mut out: Vec<Secret> = [&self.status.token, &self.agent.token]
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        if let Some(password) = self
            .agent
            .url
            .as_deref()
            .and_then(|u| reqwest::Url::parse(u).ok())
            .and_then(|u| u.password().map(str::to_owned))
        {
            out.push(Secret::new(password));
        }
        out
    }

    /// What the speech crate's `Recognizer::load` needs from `[stt]` and
    /// `[vad]` (the VAD model path as configured: see
    /// [`models::with_vad_resolved`] for the source-checkout fallback).
    pub fn recognizer_options(&self) -> talkie_speech::options::RecognizerOptions {
        talkie_speech::options::RecognizerOptions {
            model: self.stt.model,
            precision: self.stt.precision,
            threads: self.stt.threads,
            max_tokens: self.stt.max_tokens,
            latency_budget_ms: self.stt.latency_budget_ms,
            encoder_margin_frames: self.stt.encoder_margin_frames,
            calibration_file: self.stt.calibration_file.clone(),
            vad_model: self.vad.model.clone(),
            segmenter: self.vad.segmenter(),
            release: crate::VERSION.to_owned(),
        }
    }
}
