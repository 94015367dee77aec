//! Shared by the zero-allocation test and the audio-path benchmark.
#![allow(dead_code)]
// Test and bench helpers: `pub` for the crates that include this file.
#![allow(unreachable_pub)]

use std::sync::Arc;
use std::time::Duration;
use talkie::audio::{AudioPipeline, AudioSink, PipelineOptions, PreRoll, SinkControl};
use talkie::base::telemetry::AudioStats;
use talkie_devtools::alloc_audit::allocations;
use talkie_hal::audio::file::{FileSettings, FileSource};

/// Write `seconds` of 16-bit stereo at `rate`: a 440 Hz tone left, a 1250 Hz
/// tone right, plus a little noise, so the downmix and the resampler have
/// real work.
pub fn write_two_tone_wav(path: &std::path::Path, seconds: usize, rate: u32) {
    let spec = hound::WavSpec {
        channels: 2,
        sample_rate: rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    let mut noise = 0x1234_5678u32;
    for i in 0..seconds * rate as usize {
        let t = i as f32 / rate as f32;
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

/// A sink that notes the global allocation counter once `warm_at` samples
/// have passed and again at every later call.
pub struct AllocProbe {
    pub seen: usize,
    pub warm_at: usize,
    pub at_warm: Option<u64>,
    pub at_last: u64,
}

impl AllocProbe {
    pub fn new(warm_at: usize) -> Self {
        Self {
            seen: 0,
            warm_at,
            at_warm: None,
            at_last: 0,
        }
    }

    /// Allocations between warm-up and the last sample.
    pub fn allocations_after_warmup(&self) -> u64 {
        self.at_warm.map_or(0, |w| self.at_last - w)
    }
}

impl AudioSink for AllocProbe {
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

/// One line describing the machine, for benchmark reports.
pub fn machine() -> String {
    let cpu = talkie::stt::calibrate::CpuInfo::read();
    format!(
        "{} {}, {} (features: {}), {} cores, {} MB RAM",
        std::env::consts::OS,
        cpu.arch,
        cpu.model,
        cpu.features.join(" "),
        cpu.cores,
        cpu.mem_total_mb.unwrap_or(0)
    )
}

/// Run `wav` through the whole audio path as fast as it goes (500 ms
/// pre-roll), with an [`AllocProbe`] warmed up after one second.
pub fn run_file_through_pipeline(wav: &std::path::Path) -> (AllocProbe, Arc<AudioStats>) {
    let source = FileSource::open(&FileSettings {
        path: wav.to_owned(),
        period_ms: 20,
        realtime: false,
        clock: None,
        looped: false,
    })
    .unwrap();
    let stats = Arc::new(AudioStats::default());
    let pipeline = AudioPipeline::start(
        Box::new(source),
        AllocProbe::new(16_000),
        &PipelineOptions {
            preroll_ms: 500,
            rt_priority: 0,
            max_input_frames: None,
        },
        Arc::clone(&stats),
    )
    .unwrap();
    let (_, probe) = pipeline.join(Duration::from_secs(600)).unwrap();
    (probe, stats)
}

/// The `p`-th percentile (0–100) of `values`, nearest rank; 0 when empty.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0 * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

pub fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len().max(1) as f64
}

/// Write `target/bench/{name}.json` and `.md` and print the Markdown.
pub fn write_report(name: &str, json: &serde_json::Value, md: &str) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join(format!("{name}.json")),
        serde_json::to_string_pretty(json).unwrap() + "\n",
    )
    .unwrap();
    std::fs::write(dir.join(format!("{name}.md")), md).unwrap();
    println!("{md}");
}
