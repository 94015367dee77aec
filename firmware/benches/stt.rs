//! Recognition benchmark: runs the real `talkie transcribe --json` (release)
//! over the 31 clips of `../shared/eval/dev`, one thread, and reports
//! per-utterance latency (mean, p95), real-time factor, the encoder/decoder
//! split, WER (simple normalizer) and the process's peak RSS.
//! Writes `target/bench/stt.md` and `target/bench/stt.json`.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/common/wer.rs"]
mod wer;

use common::machine;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let eval = std::env::var_os("TALKIE_EVAL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("../shared/eval"))
        .join("dev");
    let refs = wer::eval_references(&eval);
    let out = Command::new(env!("CARGO_BIN_EXE_talkie"))
        .args([
            "--config",
            "/nonexistent/talkie.toml",
            "transcribe",
            "--json",
            "--models",
        ])
        .arg(root.join("models/build"))
        .args(refs.iter().map(|(f, _)| eval.join(f)))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // SAFETY: getrusage writes into the zeroed struct we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to an owned rusage.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let peak_rss_mb = ru.ru_maxrss as f64 / 1024.0;
    let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let f = |r: &serde_json::Value, k: &str| r[k].as_f64().unwrap_or(0.0);
    let n = rows.len() as f64;
    let mut totals: Vec<f64> = rows.iter().map(|r| f(r, "total_ms")).collect();
    let mean = totals.iter().sum::<f64>() / n;
    totals.sort_by(f64::total_cmp);
    let p95 = totals[((totals.len() * 95).div_ceil(100)).min(totals.len()) - 1];
    let enc = rows.iter().map(|r| f(r, "encoder_ms")).sum::<f64>() / n;
    let dec = rows.iter().map(|r| f(r, "decoder_ms")).sum::<f64>() / n;
    let vad = rows.iter().map(|r| f(r, "vad_ms")).sum::<f64>() / n;
    let audio: f64 = rows.iter().map(|r| f(r, "audio_s")).sum();
    let rtf = rows.iter().map(|r| f(r, "total_ms")).sum::<f64>() / 1000.0 / audio;
    let tokens: f64 = rows.iter().map(|r| f(r, "tokens")).sum();
    let ms_per_token = rows.iter().map(|r| f(r, "decoder_ms")).sum::<f64>() / tokens.max(1.0);
    let (mut errors, mut words) = (0, 0);
    for ((_, reference), r) in refs.iter().zip(&rows) {
        let (e, w) = wer::errors(reference, r["text"].as_str().unwrap_or(""));
        errors += e;
        words += w;
    }
    let wer_pct = 100.0 * errors as f64 / words as f64;
    let machine = machine();
    let json = format!(
        "{{\n  \"bench\": \"stt\",\n  \"machine\": \"{machine}\",\n  \"input\": \"{} clips of shared/eval/dev, {audio:.1} s\",\n  \
         \"mean_latency_ms\": {mean:.1},\n  \"p95_latency_ms\": {p95:.1},\n  \"real_time_factor\": {rtf:.4},\n  \
         \"mean_vad_ms\": {vad:.1},\n  \"mean_encoder_ms\": {enc:.1},\n  \"mean_decoder_ms\": {dec:.1},\n  \
         \"decoder_ms_per_token\": {ms_per_token:.2},\n  \"wer_percent_simple_normalizer\": {wer_pct:.2},\n  \
         \"peak_rss_mb\": {peak_rss_mb:.1}\n}}\n",
        rows.len()
    );
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    let md = format!(
        "# Recognition benchmark\n\nMachine: {machine}; release build; one inference thread.\n\
         Command: `talkie transcribe --json` over the {} clips of `shared/eval/dev` ({audio:.1} s of audio), \
         Silero VAD trim then Whisper tiny.en (fp32 ONNX on tract).\n\n\
         | measure | value | target |\n|---|---|---|\n\
         | mean latency per utterance | {mean:.0} ms | ≤ 0.5 × faster-whisper's (not measured here yet) |\n\
         | p95 latency | {p95:.0} ms | |\n\
         | real-time factor | {rtf:.3} | |\n\
         | mean VAD / encoder / decoder | {vad:.0} / {enc:.0} / {dec:.0} ms | |\n\
         | decoder time per token | {ms_per_token:.1} ms | |\n\
         | WER (simple normalizer) | {wer_pct:.1} % | ≤ 10 % ({}) |\n\
         | peak RSS of `talkie transcribe` | {peak_rss_mb:.0} MB | ≤ 150 MB ({}) |\n\n\
         Command: `make bench` (`cargo bench -p talkie --bench stt`).\n",
        rows.len(),
        verdict(wer_pct <= 10.0),
        verdict(peak_rss_mb <= 150.0)
    );
    let out_dir = root.join("target/bench");
    std::fs::create_dir_all(&out_dir).unwrap();
    std::fs::write(out_dir.join("stt.json"), json).unwrap();
    std::fs::write(out_dir.join("stt.md"), &md).unwrap();
    println!("{md}");
}
