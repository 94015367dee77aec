//! The `talkie` binary; everything lives in the library.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use clap::Parser;

fn main() {
    let cli = talkie::cli::Cli::parse();
    std::process::exit(talkie::cli::main(cli));
}
