//! Push-to-talk benchmark: the real `talkie run` (release) on a session of
//! all 31 clips of `../shared/eval/dev` (1.5 s apart, real time) with a
//! button script pressing 300 ms before and releasing 400 ms after each
//! clip. Reports press → LED and release → transcript (mean, p95) from the
//! service's own per-event logs, and the session WER (simple normalizer).
//! Writes `target/bench/ptt.md` and `target/bench/ptt.json`.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/common/wer.rs"]
mod wer;

use common::{machine, mean, percentile, write_report};
use std::path::{Path, PathBuf};
use std::process::Command;

/// faster-whisper 1.2.1, tiny.en int8, 1 thread, on the build machine, per
/// `shared/eval/README.md`: used only when `make bench` did not measure it
/// (`target/bench/faster_whisper.json`, per clip, same hour).
const FASTER_WHISPER_MEAN_MS: f64 = 500.0;

/// faster-whisper's milliseconds per clip ≤ 5 s, measured by `make bench`.
fn faster_whisper_short_mean(root: &Path) -> Option<(f64, usize)> {
    let t = std::fs::read_to_string(root.join("target/bench/faster_whisper.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&t).ok()?;
    let ms: Vec<f64> = v["files"]
        .as_array()?
        .iter()
        .filter(|f| f["audio_s"].as_f64().unwrap_or(f64::MAX) <= 5.0)
        .filter_map(|f| f["seconds"].as_f64().map(|s| s * 1000.0))
        .collect();
    (!ms.is_empty()).then(|| (mean(&ms), ms.len()))
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dev = std::env::var_os("TALKIE_EVAL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("../shared/eval"))
        .join("dev");
    let refs = wer::eval_references(&dev);
    let durations: Vec<f64> = std::fs::read_to_string(dev.join("manifest.tsv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split('\t').nth(1).unwrap().parse().unwrap())
        .collect();
    let out_dir = root.join("target/bench/ptt-session");
    let talkie = env!("CARGO_BIN_EXE_talkie");
    let st = Command::new(talkie)
        .args(["scenario", "--gap-ms", "1500", "--out"])
        .arg(&out_dir)
        .args(refs.iter().map(|(f, _)| dev.join(f)))
        .status()
        .unwrap();
    assert!(st.success());
    let models = root.join("models/build");
    let cfg = out_dir.join("talkie.toml");
    std::fs::write(
        &cfg,
        format!(
            "[audio]\nbackend = \"file\"\nfile = {:?}\n[gpio]\nbackend = \"script\"\nscript = {:?}\n\
             [stt]\nmodel_dir = {models:?}\ncalibration_file = {:?}\n[status]\nlisten = \"127.0.0.1:0\"\n",
            out_dir.join("session.wav"),
            out_dir.join("buttons.toml"),
            out_dir.join("calibration.json")
        ),
    )
    .unwrap();
    eprintln!("ptt bench: playing {} clips at real time…", refs.len());
    let out = Command::new(talkie)
        .env("RUST_LOG", "info,talkie::ptt::indicator=debug")
        .arg("--config")
        .arg(&cfg)
        .args(["--log-format", "json", "run", "--until-script-done"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let num = |v: &serde_json::Value| {
        v.as_f64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            .unwrap_or(f64::NAN)
    };
    let press_to_led: Vec<f64> = lines
        .iter()
        .filter(|l| l["message"] == "press shown")
        .map(|l| num(&l["press_to_led_ms"]))
        .collect();
    let transcripts: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["target"] == "talkie::transcript")
        .collect();
    assert_eq!(transcripts.len(), refs.len(), "one transcript per clip");
    let release_to_text: Vec<f64> = transcripts
        .iter()
        .map(|t| num(&t["release_to_text_ms"]))
        .collect();
    let short: Vec<f64> = release_to_text
        .iter()
        .zip(&durations)
        .filter(|(_, d)| **d <= 5.0)
        .map(|(r, _)| *r)
        .collect();
    let (mut errors, mut words) = (0, 0);
    let mut per_clip = Vec::new();
    for ((file, reference), t) in refs.iter().zip(&transcripts) {
        let text = t["text"].as_str().unwrap_or("");
        let (e, w) = wer::errors(reference, text);
        errors += e;
        words += w;
        per_clip.push(
            serde_json::json!({"file": file, "text": text, "reference": reference, "errors": e}),
        );
    }
    let wer_pct = 100.0 * errors as f64 / words as f64;
    let (led_mean, led_p95) = (mean(&press_to_led), percentile(&press_to_led, 95.0));
    let (rt_mean, rt_p95) = (mean(&release_to_text), percentile(&release_to_text, 95.0));
    let (short_mean, short_p95) = (mean(&short), percentile(&short, 95.0));
    let machine = machine();
    let (fw_ms, fw_source) = match faster_whisper_short_mean(&root) {
        Some((m, n)) => (
            m,
            format!("{m:.0} ms mean over the same {n} clips ≤ 5 s, measured by `make bench` (models/bench_faster_whisper.py: 1.2.1, int8, 1 thread, beam 1)"),
        ),
        None => (
            FASTER_WHISPER_MEAN_MS,
            format!("{FASTER_WHISPER_MEAN_MS:.0} ms mean per utterance from `shared/eval/README.md` (not measured in this run)"),
        ),
    };
    let json = serde_json::json!({
        "bench": "ptt",
        "machine": machine,
        "input": format!("talkie scenario of the {} dev clips, 1.5 s gaps, real time", refs.len()),
        "presses": press_to_led.len(),
        "press_to_led_ms": {"mean": led_mean, "p95": led_p95},
        "release_to_text_ms": {"mean": rt_mean, "p95": rt_p95},
        "release_to_text_ms_utterances_le_5s": {"n": short.len(), "mean": short_mean, "p95": short_p95},
        "faster_whisper_reference": format!("{fw_ms:.0} ms"),
        "wer_percent_simple_normalizer": wer_pct,
        "transcripts": per_clip,
    });
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    let md = format!(
        "# Push-to-talk benchmark\n\nMachine: {machine}; release build.\n\
         Input: `talkie scenario` session of the {} clips of `shared/eval/dev` (1.5 s gaps), played at real \
         time by `talkie run --until-script-done` with the script button (press 300 ms before, release 400 ms \
         after each clip). Latencies are the service's own per-event log fields.\n\n\
         | measure | mean | p95 | target |\n|---|---|---|---|\n\
         | press → LED shows listening ({} presses) | {led_mean:.2} ms | {led_p95:.2} ms | ≤ 20 ms ({}) |\n\
         | release → transcript, all utterances | {rt_mean:.0} ms | {rt_p95:.0} ms | |\n\
         | release → transcript, clips ≤ 5 s ({}) | {short_mean:.0} ms | {short_p95:.0} ms | ≤ 0.5 × faster-whisper ≈ {:.0} ms ({}) |\n\n\
         Session WER (simple normalizer): {wer_pct:.1} %.\n\n\
         faster-whisper reference: {fw_source}.\n\n\
         Command: `make bench` (`cargo bench -p talkie --bench ptt`).\n",
        refs.len(),
        press_to_led.len(),
        verdict(led_p95 <= 20.0),
        short.len(),
        fw_ms * 0.5,
        verdict(short_mean <= fw_ms * 0.5),
    );
    write_report("ptt", &json, &md);
}
