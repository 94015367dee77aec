//! `talkie bench`: what a technician runs on a board to measure
//! recognition there. Every installed precision × thread count (1 to the
//! online cores) on the calibration input and on any WAV files given; a
//! table with a progress line per step, and with `--json` one JSON object
//! with the CPU, tract's version, every row and the choice `auto` would
//! make on this board. Then the recognizer tiers (issue 31): whisper-tiny,
//! moonshine-base and agreement, each with `precision` and `threads`
//! `auto` as the service runs them, timed for a 3 s utterance (and on the
//! files), and the tier `stt.model = "auto"` picks here, with its reason.

use crate::audio::clip::load_pipeline_clip;
use crate::audio::PIPELINE_RATE;
use crate::base::config::models::stt_model_dir;
use crate::base::config::{Config, ModelPrecision, Precision, SttModel, Threads};
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
    /// Skip the recognizer tiers (whisper-tiny, moonshine-base, agreement
    /// and what `stt.model = "auto"` picks).
    #[arg(long)]
    pub no_tiers: bool,
}

/// One recognizer tier (`stt.model`) with `precision` and `threads` auto.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TierRow {
    pub model: SttModel,
    /// Each model's forms, e.g. "whisper fp32 encoder + int8 decoder,
    /// moonshine int8".
    pub forms: String,
    /// Release→text of a 3 s utterance without speculation as `auto`
    /// predicts it ([`Recognizer::time_utterance`]).
    pub utterance_ms: f64,
    pub files: Option<FileTotals>,
    /// Peak resident memory while this tier loaded (its start-up
    /// measurement included) and ran.
    pub peak_rss_mb: Option<f64>,
    pub load_ms: f64,
    /// The calibration's reason line.
    pub reason: String,
}

/// What `stt.model = "auto"` picks on this board, and why.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AutoTier {
    pub model: String,
    pub reason: String,
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
/// `/proc/self/clear_refs` (Linux ≥ 4.0) at the start of the row. The
/// memory earlier rows freed is first handed back to the kernel
/// (`malloc_trim`, glibc), else it would count in this row's peak.
fn reset_peak_rss() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free heap pages; no pointer is
    // passed and every allocation stays valid.
    unsafe {
        libc::malloc_trim(0);
    }
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
    let (tiers, auto_tier) = if args.no_tiers {
        (Vec::new(), None)
    } else {
        bench_tiers(cfg, &dir, &clips)
    };
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
            "tiers": tiers,
            "auto_tier": auto_tier,
        });
        println!("{doc}");
    } else {
        print_table(&cpu, &rows, auto.as_ref().map(|(c, why)| (c, why.as_str())));
        print_tiers(&tiers, auto_tier.as_ref());
    }
    Ok(())
}

/// Each tier loaded as the service loads it (`precision`, `threads`
/// `auto`; the calibrations kept in a scratch directory, so the service's
/// own are not touched, and shared between the tiers as the service
/// shares them), then `stt.model = "auto"`. A tier that cannot load (its
/// model files missing) is skipped with a line on stderr.
fn bench_tiers(
    cfg: &Config,
    dir: &Path,
    clips: &[(PathBuf, Vec<f32>)],
) -> (Vec<TierRow>, Option<AutoTier>) {
    let scratch = std::env::temp_dir().join(format!("talkie-bench-{}", std::process::id()));
    let mut c = cfg.clone();
    c.vad.model = dir.join(crate::models::VAD_FILE);
    c.stt.precision = Precision::Auto;
    c.stt.threads = Threads::Auto;
    c.stt.calibration_file = scratch.join("calibration.json");
    let tiers = [
        SttModel::WhisperTiny,
        SttModel::MoonshineBase,
        SttModel::Agreement,
    ];
    let mut rows = Vec::new();
    for (i, &model) in tiers.iter().enumerate() {
        eprintln!("[tier {}/{}] {} ...", i + 1, tiers.len(), model.as_str());
        c.stt.model = model;
        match bench_tier(&c, dir, clips) {
            Ok(row) => {
                eprintln!(
                    "[tier {}/{}] {}: {:.0} ms for a 3 s utterance ({})",
                    i + 1,
                    tiers.len(),
                    model.as_str(),
                    row.utterance_ms,
                    row.forms
                );
                rows.push(row);
            }
            Err(e) => eprintln!(
                "[tier {}/{}] {}: skipped: {e}",
                i + 1,
                tiers.len(),
                model.as_str()
            ),
        }
    }
    eprintln!("[auto] stt.model = \"auto\" ...");
    c.stt.model = SttModel::Auto;
    let auto = match Recognizer::load(dir, &c.recognizer_options()) {
        Ok(r) => Some(AutoTier {
            model: r.calibration().model.clone(),
            reason: r.calibration().reason.clone(),
        }),
        Err(e) => {
            eprintln!("[auto] skipped: {e}");
            None
        }
    };
    let _ = std::fs::remove_dir_all(&scratch);
    (rows, auto)
}

fn bench_tier(
    c: &Config,
    dir: &Path,
    clips: &[(PathBuf, Vec<f32>)],
) -> Result<TierRow, OfflineError> {
    reset_peak_rss();
    let t0 = std::time::Instant::now();
    let mut r = Recognizer::load(dir, &c.recognizer_options())?;
    let load_ms = t0.elapsed().as_secs_f64() * 1000.0;
    let utterance_ms = r.time_utterance()?;
    let forms = match r.model_forms() {
        (Some(w), Some(m)) => format!("whisper {w}, moonshine {m}"),
        (Some(w), None) => format!("whisper {w}"),
        (None, Some(m)) => format!("moonshine {m}"),
        (None, None) => String::new(),
    };
    let files = (!clips.is_empty())
        .then(|| transcribe_files(&mut r, clips))
        .transpose()?;
    Ok(TierRow {
        model: c.stt.model,
        forms,
        utterance_ms,
        files,
        peak_rss_mb: peak_rss_mb(),
        load_ms,
        reason: r.calibration().reason.clone(),
    })
}

/// Every file through the recognizer (VAD trim and all): the sums.
fn transcribe_files(
    r: &mut Recognizer,
    clips: &[(PathBuf, Vec<f32>)],
) -> Result<FileTotals, OfflineError> {
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
    // The grid is the forms `auto`'s calibration chooses among: Whisper's.
    if c.stt.model == SttModel::Auto {
        c.stt.model = SttModel::WhisperTiny;
    }
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
        .then(|| transcribe_files(&mut r, clips))
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

/// A row's files columns: total ms and real-time factor ("-" without files).
fn file_columns(files: Option<&FileTotals>) -> (String, String) {
    files.map_or_else(
        || ("-".to_owned(), "-".to_owned()),
        |f| {
            (
                format!("{:.0}", f.total_ms),
                format!("{:.3}", f.real_time_factor),
            )
        },
    )
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
        let (files_ms, rtf) = file_columns(r.files.as_ref());
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

fn print_tiers(tiers: &[TierRow], auto: Option<&AutoTier>) {
    if tiers.is_empty() && auto.is_none() {
        return;
    }
    println!("\nrecognizer tiers (precision and threads auto; release→text of a 3 s utterance without speculation):");
    println!("tier            utterance_ms  files_ms  RTF     peak_RSS_MB  load_ms  forms");
    for t in tiers {
        let (files_ms, rtf) = file_columns(t.files.as_ref());
        println!(
            "{:<14}  {:>12.0}  {:>8}  {:<6}  {:>11.0}  {:>7.0}  {}",
            t.model.as_str(),
            t.utterance_ms,
            files_ms,
            rtf,
            t.peak_rss_mb.unwrap_or(0.0),
            t.load_ms,
            t.forms
        );
    }
    if let Some(a) = auto {
        println!(
            "\nstt.model = \"auto\" would choose: {} — {}",
            a.model, a.reason
        );
    }
}
