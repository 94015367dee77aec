//! `talkie bench`: what a technician runs on a board to measure
//! recognition there. Every installed precision × thread count (1 to the
//! online cores) on the calibration input and on any WAV files given; a
//! table with a progress line per step, and with `--json` one JSON object
//! with the CPU, tract's version, every row and the choice `auto` would
//! make on this board.

use crate::audio::clip::load_pipeline_clip;
use crate::audio::PIPELINE_RATE;
use crate::base::config::models::stt_model_dir;
use crate::base::config::{Config, ModelPrecision, Precision, Threads};
use crate::cmd::offline::OfflineError;
use crate::stt::calibrate::{self, CpuInfo, Timing};
use crate::stt::Recognizer;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// tract's version, from Cargo.lock at build time.
pub const TRACT_VERSION: &str = env!("TALKIE_TRACT_VERSION");

/// Arguments of `talkie bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// WAV files to transcribe with each setting (any rate, 1–2 channels).
    pub files: Vec<PathBuf>,
    /// Model directory (default: the configured one, or models/build in a
    /// source checkout).
    #[arg(long)]
    pub models: Option<PathBuf>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Shorter: thread counts 1 and the cores only, one timed run each
    /// (for slow boards and emulators).
    #[arg(long)]
    pub quick: bool,
}

/// One precision × threads row.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Row {
    pub precision: ModelPrecision,
    pub threads: usize,
    /// The calibration input (same work `auto` times).
    pub calibration_encoder_ms: f64,
    pub calibration_decoder_ms: f64,
    pub calibration_total_ms: f64,
    /// Over the WAV files given (absent without files).
    pub files: Option<FileTotals>,
    /// Peak resident memory while this row ran (VmHWM after a reset).
    pub peak_rss_mb: Option<f64>,
    pub load_ms: f64,
}

/// Sums over the WAV files of one row.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FileTotals {
    pub count: usize,
    pub audio_s: f64,
    pub encoder_ms: f64,
    pub decoder_ms: f64,
    pub total_ms: f64,
    /// Recognition time over audio time (below 1 is faster than real time).
    pub real_time_factor: f64,
    pub texts: Vec<String>,
}

/// `/proc/self/status` `VmHWM` in MB, after resetting it with
/// `/proc/self/clear_refs` (Linux ≥ 4.0) at the start of the row.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn peak_rss_mb() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = s
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// Run the bench; prints progress on stderr, the result on stdout.
pub fn run(cfg: &Config, args: &BenchArgs) -> Result<(), OfflineError> {
    let dir = stt_model_dir(cfg, args.models.as_deref());
    let cpu = CpuInfo::read();
    let precisions = calibrate::precision_candidates(Precision::Auto, &dir, &cpu);
    let mut threads: Vec<usize> = (1..=cpu.cores).collect();
    if args.quick {
        threads.retain(|&t| t == 1 || t == cpu.cores);
    }
    let clips: Vec<(PathBuf, Vec<f32>)> = args
        .files
        .iter()
        .map(|f| {
            load_pipeline_clip(f)
                .map(|s| (f.clone(), s))
                .map_err(|source| OfflineError::Clip {
                    path: f.clone(),
                    source,
                })
        })
        .collect::<Result<_, _>>()?;
    eprintln!(
        "talkie bench: {} ({}, {} cores, features {}), tract {TRACT_VERSION}; {} precision(s) × {} thread count(s), {} file(s)",
        cpu.model,
        cpu.arch,
        cpu.cores,
        cpu.features.join(" "),
        precisions.len(),
        threads.len(),
        clips.len()
    );
    let steps = precisions.len() * threads.len();
    let mut rows = Vec::new();
    for (i, (&p, &t)) in precisions
        .iter()
        .flat_map(|p| threads.iter().map(move |t| (p, t)))
        .enumerate()
    {
        eprintln!("[{}/{steps}] {p}, {t} thread(s) ...", i + 1);
        rows.push(bench_one(cfg, &dir, p, t, &clips, args.quick)?);
        if let Some(r) = rows.last() {
            eprintln!(
                "[{}/{steps}] {p}, {t} thread(s): calibration input {:.0} ms{}",
                i + 1,
                r.calibration_total_ms,
                r.files.as_ref().map_or_else(String::new, |f| format!(
                    ", files {:.0} ms (RTF {:.3})",
                    f.total_ms, f.real_time_factor
                ))
            );
        }
    }
    let timings: Vec<Timing> = rows
        .iter()
        .map(|r| Timing {
            precision: r.precision,
            threads: r.threads,
            encoder_ms: r.calibration_encoder_ms,
            decoder_ms: r.calibration_decoder_ms,
            pruned: false,
            decoder_only: false,
        })
        .collect();
    let memory: BTreeMap<_, _> = precisions
        .iter()
        .map(|&p| (p, calibrate::model_bytes(&dir, p)))
        .collect();
    let low_memory = cpu.low_memory();
    // `auto` never takes every core from 4 cores on.
    let auto_threads = calibrate::thread_candidates(Threads::Auto, cpu.cores);
    let eligible: Vec<Timing> = timings
        .iter()
        .filter(|t| auto_threads.contains(&t.threads))
        .cloned()
        .collect();
    let auto = calibrate::decide(&eligible, &memory, low_memory);
    if args.json {
        let doc = serde_json::json!({
            "talkie": crate::VERSION,
            "tract": TRACT_VERSION,
            "cpu": cpu,
            "models": dir.display().to_string(),
            "calibration_input": {"audio_frames": calibrate::CAL_FRAMES, "encoder_window": "audio + stt.encoder_margin_frames", "decoder_steps": calibrate::CAL_STEPS},
            "rows": rows,
            "auto": auto.as_ref().map(|(c, why)| serde_json::json!({
                "precision": c.precision, "decoder_precision": c.forms().decoder, "threads": c.threads,
                "decoder_threads": c.decoder_threads(), "reason": why,
            })),
        });
        println!("{doc}");
    } else {
        print_table(&cpu, &rows, auto.as_ref().map(|(c, why)| (c, why.as_str())));
    }
    Ok(())
}

fn bench_one(
    cfg: &Config,
    dir: &Path,
    precision: ModelPrecision,
    threads: usize,
    clips: &[(PathBuf, Vec<f32>)],
    quick: bool,
) -> Result<Row, OfflineError> {
    let mut c = cfg.clone();
    c.vad.model = dir.join(crate::models::VAD_FILE);
    c.stt.precision = precision.into();
    c.stt.threads = Threads::Fixed(threads as u32);
    reset_peak_rss();
    let t0 = std::time::Instant::now();
    let mut r = Recognizer::load(dir, &c.recognizer_options())?;
    let load_ms = t0.elapsed().as_secs_f64() * 1000.0;
    // Warm-up, then the faster of two runs (one with --quick).
    r.time_fixed_work(calibrate::CAL_FRAMES / 4, 1)?;
    let mut best = r.time_fixed_work(calibrate::CAL_FRAMES, calibrate::CAL_STEPS)?;
    if !quick {
        let again = r.time_fixed_work(calibrate::CAL_FRAMES, calibrate::CAL_STEPS)?;
        if again.0 + again.1 < best.0 + best.1 {
            best = again;
        }
    }
    let files = (!clips.is_empty())
        .then(|| -> Result<FileTotals, OfflineError> {
            let mut f = FileTotals {
                count: clips.len(),
                audio_s: 0.0,
                encoder_ms: 0.0,
                decoder_ms: 0.0,
                total_ms: 0.0,
                real_time_factor: 0.0,
                texts: Vec::new(),
            };
            for (_, samples) in clips {
                let rec = r.recognize(samples)?;
                f.audio_s += samples.len() as f64 / f64::from(PIPELINE_RATE);
                f.encoder_ms += rec.transcript.encoder_ms;
                f.decoder_ms += rec.transcript.decoder_ms;
                f.total_ms += rec.total_ms;
                f.texts.push(rec.text);
            }
            f.real_time_factor = if f.audio_s > 0.0 {
                f.total_ms / 1000.0 / f.audio_s
            } else {
                0.0
            };
            Ok(f)
        })
        .transpose()?;
    Ok(Row {
        precision,
        threads,
        calibration_encoder_ms: best.0,
        calibration_decoder_ms: best.1,
        calibration_total_ms: best.0 + best.1,
        files,
        peak_rss_mb: peak_rss_mb(),
        load_ms,
    })
}

fn print_table(cpu: &CpuInfo, rows: &[Row], auto: Option<(&calibrate::Choice, &str)>) {
    println!(
        "CPU: {} ({}, {} cores, {} MB RAM), features: {}; tract {TRACT_VERSION}; talkie {}",
        cpu.model,
        cpu.arch,
        cpu.cores,
        cpu.mem_total_mb.unwrap_or(0),
        cpu.features.join(" "),
        crate::VERSION
    );
    println!(
        "calibration input: {} mel frames + {} decoder steps\n",
        calibrate::CAL_FRAMES,
        calibrate::CAL_STEPS
    );
    println!("precision  threads  encoder_ms  decoder_ms  total_ms  files_ms  RTF     peak_RSS_MB  load_ms");
    for r in rows {
        let (files_ms, rtf) = r.files.as_ref().map_or_else(
            || ("-".to_owned(), "-".to_owned()),
            |f| {
                (
                    format!("{:.0}", f.total_ms),
                    format!("{:.3}", f.real_time_factor),
                )
            },
        );
        println!(
            "{:<9}  {:>7}  {:>10.0}  {:>10.0}  {:>8.0}  {:>8}  {:<6}  {:>11.0}  {:>7.0}",
            r.precision.as_str(),
            r.threads,
            r.calibration_encoder_ms,
            r.calibration_decoder_ms,
            r.calibration_total_ms,
            files_ms,
            rtf,
            r.peak_rss_mb.unwrap_or(0.0),
            r.load_ms
        );
    }
    match auto {
        Some((c, why)) => println!(
            "\nauto would choose: {}, {} thread(s), decoder {} — {why}",
            c.forms(),
            c.threads,
            c.decoder_threads()
        ),
        None => println!("\nauto: nothing could be measured"),
    }
}
