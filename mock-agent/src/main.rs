//! `talkie-mock-agent`: the development agent (`--help` for the faults it
//! injects). Not part of the shipped firmware.

use clap::Parser;

fn main() {
    let args = talkie_mock_agent::MockArgs::parse();
    if let Err(e) = talkie_mock_agent::run(args) {
        eprintln!("talkie-mock-agent: {e}");
        std::process::exit(1);
    }
}
