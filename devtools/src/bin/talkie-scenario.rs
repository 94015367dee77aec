//! Build a simulated kiosk session (session.wav, buttons.toml, clips.tsv)
//! from speech clips, for `audio.backend = "file"` with
//! `gpio.backend = "script"`. A development tool (`make demo` runs it), so
//! it is not a subcommand of the product, and the Debian package does not
//! ship it; a binary of the talkie package, so `make demo` builds it in the
//! same `cargo build` as `talkie` (an example built the dev-dependencies and
//! talkie a second time, with the test hooks):
//!
//! ```text
//! cargo run --release --bin talkie-scenario -- --out target/demo --gap-ms 3000 a.wav b.wav
//! ```

use clap::Parser;
use std::process::ExitCode;

/// Build a simulated push-to-talk session from speech clips.
#[derive(Parser)]
#[command(name = "talkie-scenario")]
struct Cli {
    #[command(flatten)]
    args: talkie_devtools::scenario::ScenarioArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match talkie_devtools::scenario::build(&cli.args) {
        Ok(tsv) => {
            eprintln!(
                "scenario: wrote session.wav, buttons.toml and {} in {}",
                tsv.display(),
                cli.args.out.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("scenario: {e}");
            ExitCode::FAILURE
        }
    }
}
