//! Audio-path benchmark: CPU time and allocations per second of 48 kHz
//! stereo input through capture → queue → downmix → resample to 16 kHz →
//! meter → pre-roll → sink. The input is a WAV file delivered as fast as the
//! pipeline takes it, so CPU time is the pipeline's own work.
//!
//! Writes `target/bench/audio_path.md` and `target/bench/audio_path.json`.

#[path = "../tests/common/mod.rs"]
mod common;

use common::{machine, run_file_through_pipeline, write_two_tone_wav};
use std::time::{Duration, Instant};
use talkie_devtools::alloc_audit::CountingAlloc;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

const SECONDS: usize = 120;
const RATE: u32 = 48_000;

/// User + system CPU time of the whole process.
fn cpu_time() -> Duration {
    // SAFETY: getrusage writes into the zeroed struct we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to an owned rusage.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1_000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn main() {
    let out_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&out_dir).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("input.wav");
    write_two_tone_wav(&wav, SECONDS, RATE);
    let cpu0 = cpu_time();
    let wall0 = Instant::now();
    let (probe, stats) = run_file_through_pipeline(&wav);
    let wall = wall0.elapsed();
    let cpu = cpu_time() - cpu0;
    let audio_s = SECONDS as f64;
    let cpu_ms_per_s = cpu.as_secs_f64() * 1_000.0 / audio_s;
    let core_pct = cpu.as_secs_f64() / audio_s * 100.0;
    let allocs_per_s = probe.allocations_after_warmup() as f64 / (audio_s - 1.0);
    let s = stats.snapshot();
    let machine = machine();
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let json = format!(
        "{{\n  \"bench\": \"audio_path\",\n  \"machine\": \"{machine}\",\n  \"profile\": \"{profile}\",\n  \
         \"input\": \"{SECONDS} s synthetic 48 kHz stereo S16 WAV, file backend, as fast as possible\",\n  \
         \"audio_seconds\": {audio_s},\n  \"wall_seconds\": {:.4},\n  \"cpu_seconds\": {:.4},\n  \
         \"cpu_ms_per_audio_second\": {cpu_ms_per_s:.4},\n  \"percent_of_one_core_at_real_time\": {core_pct:.4},\n  \
         \"allocations_per_second_after_warmup\": {allocs_per_s},\n  \"frames_dropped\": {},\n  \
         \"samples_out\": {}\n}}\n",
        wall.as_secs_f64(),
        cpu.as_secs_f64(),
        s.frames_dropped,
        probe.seen
    );
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    let md = format!(
        "# Audio path benchmark\n\n\
         Machine: {machine}; build profile: {profile}.\n\
         Input: {SECONDS} s of synthetic 48 kHz stereo (S16 WAV) through the file backend as fast as possible:\n\
         capture thread → frame queue → downmix → rubato FFT resampler to 16 kHz → level meter → 500 ms pre-roll → sink.\n\n\
         | measure | value | target |\n|---|---|---|\n\
         | CPU time per second of input | {cpu_ms_per_s:.3} ms | |\n\
         | share of one core at real time | {core_pct:.3} % | ≤ 1 % ({}) |\n\
         | allocations per second after warm-up | {allocs_per_s} | 0 ({}) |\n\
         | wall time for {SECONDS} s of input | {:.3} s | |\n\
         | frames dropped | {} | 0 |\n\n\
         Command: `make bench` (`cargo bench -p talkie --bench audio_path`).\n",
        verdict(core_pct <= 1.0),
        verdict(allocs_per_s == 0.0),
        wall.as_secs_f64(),
        s.frames_dropped
    );
    std::fs::write(out_dir.join("audio_path.json"), json).unwrap();
    std::fs::write(out_dir.join("audio_path.md"), &md).unwrap();
    println!("{md}");
}
