//! Embeds the git revision for `talkie --version` (`TALKIE_GIT_REV` wins,
//! for builds from a tarball).
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=TALKIE_GIT_REV");
    println!("cargo:rerun-if-changed=../.git/HEAD");
    println!("cargo:rerun-if-changed=../.git/refs");
    let rev = std::env::var("TALKIE_GIT_REV").ok().or_else(|| {
        let out = Command::new("git")
            .args(["rev-parse", "--short=12", "HEAD"])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
            .filter(|s| !s.is_empty())
    });
    println!(
        "cargo:rustc-env=TALKIE_GIT_REV={}",
        rev.unwrap_or_else(|| "unknown".to_owned())
    );
    // tract's version for `talkie bench` (speed figures name it).
    println!("cargo:rerun-if-changed=../Cargo.lock");
    let lock = std::fs::read_to_string("../Cargo.lock").unwrap_or_default();
    let tract = lock
        .split("[[package]]")
        .find(|p| p.contains("name = \"tract-onnx\""))
        .and_then(|p| p.lines().find_map(|l| l.strip_prefix("version = ")))
        .map(|v| v.trim_matches('"').to_owned())
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=TALKIE_TRACT_VERSION={tract}");
}
