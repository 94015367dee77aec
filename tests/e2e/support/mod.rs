//! Helpers every feature's tests use: the binary, the eval data and models,
//! configuration files, log lines.

mod agent;
mod http;
pub mod supervisor;

pub(crate) use crate::wer;
pub use agent::*;
pub use http::*;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Settings passed through from the test run to every talkie it starts:
/// `TALKIE_STT__PRECISION=int8 make test` forces the slow path everywhere.
pub const PASSED_THROUGH: &[&str] = &[
    "TALKIE_STT__PRECISION",
    "TALKIE_STT__THREADS",
    "TALKIE_STT__MODEL",
];

/// The recognizer every talkie a test starts runs unless the test says
/// otherwise (`--set stt.model=…` wins) or the run passes
/// `TALKIE_STT__MODEL` through: whisper-tiny, the fastest, so tests that
/// are not about the tier do not pay for two models. The default tier
/// (`auto`) runs in `run_notifies_systemd_loading_ready_watchdog_and_stopping`
/// and the tiers in `services_in_one_process_each_recognize_their_own_press`.
pub const TEST_STT_MODEL: &str = "whisper-tiny";

/// One calibration of `stt.precision = "auto"` for the whole run: the
/// first talkie measures, the others reuse it (same key).
pub const CALIBRATION_FILE: &str = concat!(env!("CARGO_TARGET_TMPDIR"), "/e2e-calibration.json");

pub fn talkie() -> Command {
    talkie_at(Path::new(env!("CARGO_BIN_EXE_talkie")))
}

/// [`talkie`] for another build of the binary (`make soak` runs the
/// release one).
pub fn talkie_at(exe: &Path) -> Command {
    let mut c = Command::new(exe);
    for (k, _) in std::env::vars() {
        if (k.starts_with("TALKIE_") && !PASSED_THROUGH.contains(&k.as_str()))
            || k == "RUST_LOG"
            || k == "CREDENTIALS_DIRECTORY"
        {
            c.env_remove(k);
        }
    }
    c.env("TALKIE_STT__CALIBRATION_FILE", CALIBRATION_FILE);
    if std::env::var_os("TALKIE_STT__MODEL").is_none() {
        c.env("TALKIE_STT__MODEL", TEST_STT_MODEL);
    }
    c
}

pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("talkie runs");
    eprintln!(
        "--- {:?}\n--- status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        cmd,
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub fn eval_dir() -> PathBuf {
    let dir = std::env::var_os("TALKIE_EVAL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/eval"));
    assert!(
        dir.join("dev").is_dir(),
        "speech eval data not found at {} (set TALKIE_EVAL_DIR)",
        dir.display()
    );
    dir
}

pub fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap();
    p
}

/// Mono samples of a 16-bit WAV in [-1, 1], with its spec.
pub fn read_wav(path: &Path) -> (Vec<f32>, hound::WavSpec) {
    let r = hound::WavReader::open(path).unwrap();
    let spec = r.spec();
    let s = r
        .into_samples::<i16>()
        .map(|s| f32::from(s.unwrap()) / 32_768.0)
        .collect();
    (s, spec)
}

pub fn models_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/build");
    assert!(
        dir.join("silero_vad.onnx").is_file(),
        "models not built at {} (run `make models`)",
        dir.display()
    );
    dir
}

/// The JSON log lines of a run.
pub fn json_lines(stderr: &[u8]) -> Vec<serde_json::Value> {
    text(stderr)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

pub fn with_target<'a>(
    lines: &'a [serde_json::Value],
    target: &'a str,
) -> impl Iterator<Item = &'a serde_json::Value> + 'a {
    lines.iter().filter(move |l| l["target"] == target)
}

/// A configuration for the file audio backend and the script button.
pub fn scripted_config(dir: &Path, wav: &Path, script: &Path) -> PathBuf {
    let models = models_dir();
    write(
        dir,
        "talkie.toml",
        &format!(
            "[device]\nid = \"e2e\"\n[audio]\nbackend = \"file\"\nfile = {wav:?}\nrealtime = true\n\
             sim_clock = true\npreroll_ms = 500\n[gpio]\nbackend = \"script\"\nscript = {script:?}\ndebounce_ms = 20\n\
             [stt]\nmodel_dir = {models:?}\n[vad]\nmodel = {:?}\n[status]\nlisten = \"127.0.0.1:0\"\n",
            models.join("silero_vad.onnx")
        ),
    )
}

/// `talkie.toml` in `dir` for `talkie run` on the file backend at real time
/// (`clip` from shared/eval/dev), the built models and a status server on
/// a free loopback port, plus `extra` TOML.
pub fn file_service_config(dir: &Path, clip: &str, extra: &str) -> PathBuf {
    let input = eval_dir().join("dev").join(clip);
    write(
        dir,
        "talkie.toml",
        &format!(
            "[audio]\nbackend = \"file\"\nfile = {input:?}\nrealtime = true\n[stt]\nmodel_dir = {:?}\n\
             [status]\nlisten = \"127.0.0.1:0\"\n{extra}",
            models_dir()
        ),
    )
}

/// `talkie vad --json --models models/build` without a config file.
pub fn vad_json() -> Command {
    let mut c = talkie();
    c.args([
        "--config",
        "/nonexistent/talkie.toml",
        "vad",
        "--json",
        "--models",
    ])
    .arg(models_dir());
    c
}

pub fn names_of(scrape: &prometheus_parse::Scrape) -> std::collections::HashSet<String> {
    scrape.samples.iter().map(|s| s.metric.clone()).collect()
}

/// A fake board under `root` (`board.root`): a Pi's thermal zone at
/// `temp_milli_c`, its throttled flags, memory, load and uptime, plus
/// `extra` files (path, text).
pub fn fake_board(root: &Path, temp_milli_c: &str, throttled: &str, extra: &[(&str, &str)]) {
    let files = [
        ("sys/class/thermal/thermal_zone0/temp", temp_milli_c),
        (talkie::platform::board::THROTTLED_FILE, throttled),
        (
            "proc/meminfo",
            "MemTotal: 1000000 kB\nMemAvailable: 600000 kB\n",
        ),
        ("proc/loadavg", "0.25 0.20 0.10 1/99 42\n"),
        ("proc/uptime", "120.00 200.00\n"),
    ];
    for (rel, text) in files.iter().chain(extra) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
}
