//! VAD benchmark: time per 512-sample (32 ms) chunk of Silero VAD on tract,
//! one thread, over `../shared/eval/dev/dev_long.wav` (60 s).
//! Writes `target/bench/vad.md` and `target/bench/vad.json`.

#[path = "../tests/common/mod.rs"]
mod common;

use common::machine;
use std::path::Path;
use std::time::Instant;
use talkie::audio::clip::load_pipeline_clip;
use talkie::vad::{SileroVad, CHUNK};

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let eval = std::env::var_os("TALKIE_EVAL_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("../shared/eval"));
    let clip = eval.join("dev/dev_long.wav");
    let samples = load_pipeline_clip(&clip).unwrap();
    let mut vad = SileroVad::load(&root.join("models/build/silero_vad.onnx")).unwrap();
    let mut chunk = [0.0f32; CHUNK];
    // Warm up.
    for _ in 0..20 {
        vad.prob(&chunk).unwrap();
    }
    vad.reset();
    let mut times = Vec::new();
    for block in samples.chunks_exact(CHUNK) {
        chunk.copy_from_slice(block);
        let t = Instant::now();
        vad.prob(&chunk).unwrap();
        times.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let p95 = sorted[(sorted.len() * 95 / 100).min(sorted.len() - 1)];
    let machine = machine();
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let json = format!(
        "{{\n  \"bench\": \"vad\",\n  \"machine\": \"{machine}\",\n  \"profile\": \"{profile}\",\n  \"input\": \"{}\",\n  \
         \"chunks\": {},\n  \"mean_us_per_chunk\": {mean:.1},\n  \"p95_us_per_chunk\": {p95:.1},\n  \
         \"real_time_factor\": {:.5}\n}}\n",
        clip.display(),
        times.len(),
        mean / 32_000.0
    );
    let md = format!(
        "# VAD benchmark\n\nMachine: {machine}; build profile: {profile}; one thread.\n\
         Input: {} ({} chunks of 512 samples at 16 kHz), Silero VAD 16k sequence model on tract-onnx, streamed one chunk at a time.\n\n\
         | measure | value | target |\n|---|---|---|\n\
         | mean time per 32 ms chunk | {mean:.1} µs | ≤ 100 µs ({}) |\n\
         | p95 time per chunk | {p95:.1} µs | |\n\
         | real-time factor | {:.4} | |\n\n\
         Command: `make bench` (`cargo bench -p talkie --bench vad`).\n",
        clip.display(),
        times.len(),
        if mean <= 100.0 { "met" } else { "NOT met" },
        mean / 32_000.0
    );
    let out = root.join("target/bench");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("vad.json"), json).unwrap();
    std::fs::write(out.join("vad.md"), &md).unwrap();
    println!("{md}");
}
