//! The `talkie` binary; everything lives in the library.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use clap::Parser;

fn main() {
    // Visitors' words are the service's own: files 0600, directories 0700.
    talkie::base::private_files::restrict_umask();
    let cli = talkie::cmd::cli::Cli::parse();
    std::process::exit(talkie::cmd::cli::main(cli));
}
