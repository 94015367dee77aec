//! Proves the audio path allocates nothing after start-up: 12 s of 48 kHz
//! stereo go through capture → queue → downmix → resample → meter →
//! pre-roll → sink, and the global allocation counter must not move between
//! the end of the first second and the last sample.
//!
//! Runs without the libtest harness so no other thread allocates meanwhile.

use std::sync::Arc;
use std::time::Duration;
use talkie::alloc_audit::{allocations, CountingAlloc};
use talkie::audio::{AudioPipeline, AudioSink, PipelineOptions, PreRoll, SinkControl};
use talkie::telemetry::AudioStats;
use talkie_hal::audio::file::{FileSettings, FileSource};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

const SECONDS: usize = 12;
const RATE: u32 = 48_000;

/// Notes the allocation counter after warm-up and at every later call.
struct Probe {
    seen: usize,
    warm_at: usize,
    at_warm: Option<u64>,
    at_last: u64,
}

impl AudioSink for Probe {
    fn on_audio(&mut self, samples: &[f32], _: &PreRoll) -> SinkControl {
        self.seen += samples.len();
        let now = allocations();
        if self.at_warm.is_none() && self.seen >= self.warm_at {
            self.at_warm = Some(now);
        }
        self.at_last = now;
        SinkControl::Continue
    }
}

fn write_input(path: &std::path::Path) {
    let spec = hound::WavSpec {
        channels: 2,
        sample_rate: RATE,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    let mut noise = 0x1234_5678u32;
    for i in 0..SECONDS * RATE as usize {
        let t = i as f32 / RATE as f32;
        noise ^= noise << 13;
        noise ^= noise >> 17;
        noise ^= noise << 5;
        let n = (noise as f32 / u32::MAX as f32 - 0.5) * 0.05;
        let l = 0.3 * (2.0 * std::f32::consts::PI * 440.0 * t).sin() + n;
        let r = 0.3 * (2.0 * std::f32::consts::PI * 1_250.0 * t).sin() - n;
        w.write_sample((l * 32_767.0) as i16).unwrap();
        w.write_sample((r * 32_767.0) as i16).unwrap();
    }
    w.finalize().unwrap();
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("input.wav");
    write_input(&wav);
    let source = FileSource::open(&FileSettings {
        path: wav,
        period_ms: 20,
        realtime: false,
    })
    .unwrap();
    let stats = Arc::new(AudioStats::default());
    let probe = Probe {
        seen: 0,
        warm_at: 16_000,
        at_warm: None,
        at_last: 0,
    };
    let pipeline = AudioPipeline::start(
        Box::new(source),
        probe,
        &PipelineOptions {
            preroll_ms: 500,
            rt_priority: 0,
            max_input_frames: None,
        },
        Arc::clone(&stats),
    )
    .unwrap();
    let (_, probe) = pipeline.join(Duration::from_secs(120)).unwrap();
    let measured = probe.seen - probe.warm_at;
    let allocs = probe.at_last - probe.at_warm.unwrap();
    let s = stats.snapshot();
    println!(
        "zero_alloc: {} s of {RATE} Hz stereo in, {} samples at 16 kHz out, {measured} after warm-up; \
         {allocs} allocations in the audio path after warm-up; {} frames dropped",
        SECONDS, probe.seen, s.frames_dropped
    );
    let ok = allocs == 0 && s.frames_dropped == 0 && probe.seen >= (SECONDS * 16_000) - 400;
    if ok {
        println!("test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out");
    } else {
        println!("test result: FAILED. 0 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out");
        std::process::exit(1);
    }
}
