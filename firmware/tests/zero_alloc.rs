//! Proves the audio path allocates nothing after start-up: 12 s of 48 kHz
//! stereo go through capture → queue → downmix → resample → meter →
//! pre-roll → sink, and the global allocation counter must not move between
//! the end of the first second and the last sample.
//!
//! Runs without the libtest harness so no other thread allocates meanwhile.

mod common;

use common::{run_file_through_pipeline, write_two_tone_wav};
use talkie_devtools::alloc_audit::CountingAlloc;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

const SECONDS: usize = 12;
const RATE: u32 = 48_000;

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("input.wav");
    write_two_tone_wav(&wav, SECONDS, RATE);
    let (probe, stats) = run_file_through_pipeline(&wav);
    let allocs = probe.allocations_after_warmup();
    let s = stats.snapshot();
    println!(
        "zero_alloc: {SECONDS} s of {RATE} Hz stereo in, {} samples at 16 kHz out, {} after warm-up; \
         {allocs} allocations in the audio path after warm-up; {} frames dropped",
        probe.seen,
        probe.seen - probe.warm_at,
        s.frames_dropped
    );
    let ok = probe.at_warm.is_some()
        && allocs == 0
        && s.frames_dropped == 0
        && probe.seen == SECONDS * 16_000;
    if ok {
        println!("test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out");
    } else {
        println!("test result: FAILED. 0 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out");
        std::process::exit(1);
    }
}
