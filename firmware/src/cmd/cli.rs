//! The `talkie` command line: parsing, dispatch, exit codes.

use crate::base::config::{self, ConfigError, LogFormat, Overrides, EX_CONFIG};
use clap::{Parser, Subcommand};
use std::path::PathBuf;

pub use crate::VERSION;

/// Exit code for failures that are not configuration errors.
pub const EX_FAILURE: i32 = 1;
/// Exit code for a bad command-line value (sysexits' EX_USAGE).
pub const EX_USAGE: i32 = 64;

#[derive(Debug, Parser)]
#[command(name = "talkie", version = VERSION, about = "Push-to-talk voice kiosk firmware")]
pub struct Cli {
    /// Configuration file.
    #[arg(long, global = true, env = "TALKIE_CONFIG", default_value = config::DEFAULT_PATH)]
    pub config: PathBuf,
    /// Override one key: `--set audio.device=hw:1,0` (repeatable; wins over
    /// the file and TALKIE_SECTION__KEY variables).
    #[arg(long = "set", global = true, value_name = "SECTION.KEY=VALUE")]
    pub sets: Vec<String>,
    /// Log format (overrides log.format).
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormat>,
    #[command(subcommand)]
    pub command: Command,
}

/// Arguments of the offline tools that read WAV files.
#[derive(Debug, clap::Args)]
pub struct ClipArgs {
    /// WAV files (any rate, 1–2 channels).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Model directory (default: the configured one, or models/build in a source checkout).
    #[arg(long)]
    pub models: Option<PathBuf>,
    /// One JSON object per file.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `talkie run`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RunArgs {
    /// With `gpio.backend = "script"`: exit 0 once the last scripted event
    /// has been fully handled (recognized, delivered, LEDs settled).
    #[arg(long)]
    pub until_script_done: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the kiosk service.
    Run(RunArgs),
    /// Validate the configuration and print the effective values (secrets redacted).
    CheckConfig,
    /// List ALSA capture devices and what they support.
    Devices,
    /// Record from the configured microphone through the audio path to a 16 kHz mono WAV.
    Record {
        /// Length in seconds.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// Output WAV file.
        out: PathBuf,
    },
    /// Transcribe WAV files (any rate, 1–2 channels) on this machine.
    Transcribe(ClipArgs),
    /// Print the speech segments the VAD finds in WAV files.
    Vad(ClipArgs),
    /// Measure recognition on this board: every precision × thread count on
    /// a fixed input and on the WAV files given; what `auto` would choose.
    Bench(crate::cmd::bench::BenchArgs),
    /// Exit 0 once the running service reports ready on its local API
    /// (`status.listen`), non-zero otherwise. For update systems.
    Health {
        /// Keep asking for this many seconds.
        #[arg(long, default_value_t = 0.0)]
        wait: f64,
    },
    /// Write a support bundle (.tar.gz): the running service's (status,
    /// metrics, logs, config, board health, versions; secrets scrubbed), or
    /// what the disk and the journal say when the service gives none.
    SupportBundle {
        /// Output file, e.g. support.tar.gz.
        out: PathBuf,
    },
    /// Inspect the outbox, add transcripts by hand, or deliver them.
    #[command(subcommand)]
    Outbox(crate::agent::tool::OutboxCommand),
}

fn load_config(cli: &Cli) -> Result<config::Loaded, ConfigError> {
    config::load(&cli.config, &Overrides::from_process_env(cli.sets.clone()))
}

/// The configuration for offline tools: the file when it exists (errors
/// still count), else the defaults with `--set`/environment overrides.
fn optional_config(cli: &Cli) -> Result<config::Config, ConfigError> {
    let overrides = Overrides::from_process_env(cli.sets.clone());
    if cli.config.exists() {
        config::load(&cli.config, &overrides).map(|l| l.config)
    } else {
        config::load_str(&cli.config, "", &overrides).map(|l| l.config)
    }
}

fn config_failed(e: &ConfigError) -> i32 {
    eprintln!("talkie: configuration error:\n{e}");
    EX_CONFIG
}

/// Run the parsed command; returns the process exit code.
pub fn main(cli: Cli) -> i32 {
    match &cli.command {
        Command::Devices => {
            crate::base::logging::init("warn", cli.log_format.unwrap_or_default());
            devices()
        }
        Command::Vad(args) | Command::Transcribe(args) => {
            let cfg = match optional_config(&cli) {
                Ok(c) => c,
                Err(e) => return config_failed(&e),
            };
            crate::base::logging::init(&cfg.log.level, cli.log_format.unwrap_or(cfg.log.format));
            let (files, models, json) = (&args.files, args.models.as_deref(), args.json);
            let result = if matches!(cli.command, Command::Vad(_)) {
                crate::cmd::offline::vad(&cfg, files, models, json)
            } else {
                crate::cmd::offline::transcribe(&cfg, files, models, json)
            };
            match result {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("talkie: {e}");
                    EX_FAILURE
                }
            }
        }
        Command::Bench(args) => {
            let cfg = match optional_config(&cli) {
                Ok(c) => c,
                Err(e) => return config_failed(&e),
            };
            crate::base::logging::init("warn", cli.log_format.unwrap_or(cfg.log.format));
            match crate::cmd::bench::run(&cfg, args) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("talkie: {e}");
                    EX_FAILURE
                }
            }
        }
        Command::Health { wait } => {
            let cfg = match optional_config(&cli) {
                Ok(c) => c,
                Err(e) => return config_failed(&e),
            };
            if !wait.is_finite() || *wait < 0.0 {
                eprintln!("talkie: --wait {wait}: must be a number of seconds from 0 to 86400");
                return EX_USAGE;
            }
            let wait = std::time::Duration::from_secs_f64(wait.min(86_400.0));
            match crate::status::health(cfg.status.listen, wait) {
                Ok(msg) => {
                    println!("{msg}");
                    0
                }
                Err(why) => {
                    eprintln!("talkie: not healthy: {why}");
                    EX_FAILURE
                }
            }
        }
        Command::SupportBundle { out } => {
            let cfg = match optional_config(&cli) {
                Ok(c) => c,
                Err(e) => return config_failed(&e),
            };
            match crate::cmd::support_tool::run(&cfg, out) {
                Ok(crate::cmd::support_tool::Written::Live) => {
                    eprintln!(
                        "talkie: wrote the running service's support bundle to {}",
                        out.display()
                    );
                    0
                }
                Ok(crate::cmd::support_tool::Written::Offline(why)) => {
                    eprintln!(
                        "talkie: the service gave no bundle ({why});\n\
                         talkie: wrote what the disk and the journal say to {}",
                        out.display()
                    );
                    0
                }
                Err(e) => {
                    eprintln!("talkie: {e}");
                    EX_FAILURE
                }
            }
        }
        Command::Outbox(cmd) => {
            let cfg = match optional_config(&cli) {
                Ok(c) => c,
                Err(e) => return config_failed(&e),
            };
            crate::base::logging::init(&cfg.log.level, cli.log_format.unwrap_or(cfg.log.format));
            match crate::agent::tool::run(&cfg, cmd) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("talkie: {e}");
                    EX_FAILURE
                }
            }
        }
        Command::CheckConfig => match load_config(&cli) {
            Ok(loaded) => match toml::to_string(&loaded.config) {
                Ok(text) => {
                    eprintln!(
                        "talkie: {} is valid; effective configuration:",
                        loaded.path.display()
                    );
                    print!("{text}");
                    0
                }
                Err(e) => {
                    eprintln!("talkie: cannot print configuration: {e}");
                    EX_FAILURE
                }
            },
            Err(e) => config_failed(&e),
        },
        Command::Run(_) | Command::Record { .. } => run_or_record(&cli),
    }
}

/// `talkie run` and `talkie record`: the commands that log through
/// tracing and touch the hardware.
fn run_or_record(cli: &Cli) -> i32 {
    let loaded = match load_config(cli) {
        Ok(l) => l,
        Err(e) => return config_failed(&e),
    };
    let cfg = &loaded.config;
    crate::base::logging::init(&cfg.log.level, cli.log_format.unwrap_or(cfg.log.format));
    tracing::info!(version = VERSION, config = %loaded.path.display(), "talkie starting");
    let result = match &cli.command {
        Command::Record { seconds, out } => {
            crate::cmd::record::record(cfg, *seconds, out).map_err(|e| e.to_string())
        }
        Command::Run(args) => {
            let (path, sets) = (cli.config.clone(), cli.sets.clone());
            let loader: crate::base::config::reload::Loader = std::sync::Arc::new(move || {
                config::load(&path, &Overrides::from_process_env(sets.clone())).map(|l| l.config)
            });
            let opts = crate::cmd::run::RunOptions {
                until_script_done: args.until_script_done,
            };
            match crate::cmd::run::run(cfg, &opts, loader) {
                Ok(crate::service::Ended::Restart) => {
                    tracing::warn!(
                        exit_status = crate::service::EXIT_RESTART,
                        "exiting for the requested restart"
                    );
                    return crate::service::EXIT_RESTART;
                }
                Ok(crate::service::Ended::Stopped) => Ok(()),
                Err(e) => Err(e.to_string()),
            }
        }
        _ => Ok(()),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!(error = %e, "talkie failed");
            eprintln!("talkie: {e}");
            EX_FAILURE
        }
    }
}

/// Built without the `alsa` feature: there is nothing to list.
#[cfg(not(feature = "alsa"))]
fn devices() -> i32 {
    eprintln!("talkie: this build has no ALSA support (cargo feature `alsa`)");
    EX_FAILURE
}

#[cfg(feature = "alsa")]
fn devices() -> i32 {
    match talkie_hal::audio::alsa::list_capture_devices() {
        Ok(talkie_hal::audio::alsa::DeviceList { usable, unusable }) => {
            if usable.is_empty() {
                println!(
                    "no ALSA capture devices found: plug in a microphone, check `arecord -l`, \
                     and make sure this user is in group `audio`"
                );
            }
            for d in &usable {
                println!(
                    "{}\n    {}\n    rates {}–{} Hz, channels {}–{}, formats {}",
                    d.name,
                    d.description,
                    d.rate_min,
                    d.rate_max,
                    d.channels_min,
                    d.channels_max,
                    d.formats.join(" ")
                );
            }
            if !unusable.is_empty() {
                println!("\nnot usable for capture now:");
                for (name, why) in &unusable {
                    println!("    {name}: {why}");
                }
            }
            0
        }
        Err(e) => {
            eprintln!("talkie: {e}");
            EX_FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Cli;
    use clap::CommandFactory;

    /// The product's `--help` offers what an operator or a technician uses,
    /// and no development tool (issue 17 item 4): the mock agent and the
    /// session builder live in a development crate and an example.
    #[test]
    fn help_lists_the_operators_commands_and_no_development_tool() {
        let help = Cli::command().render_long_help().to_string();
        for command in [
            "run",
            "check-config",
            "devices",
            "record",
            "transcribe",
            "vad",
            "bench",
            "health",
            "support-bundle",
            "outbox",
        ] {
            assert!(
                help.lines()
                    .any(|l| l.trim_start().starts_with(&format!("{command} "))),
                "{command} missing from:\n{help}"
            );
        }
        for dev_tool in ["scenario", "mock-agent", "mock"] {
            assert!(
                !help.lines().any(|l| l.trim_start().starts_with(dev_tool)),
                "{dev_tool} in:\n{help}"
            );
        }
    }
}
