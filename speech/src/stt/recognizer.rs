//! One utterance in, one transcript out: VAD trim, then Whisper (or
//! Moonshine, `stt.model`). Shared by
//! `talkie transcribe` and the service's recognition worker, so both give
//! the same text for the same audio.

use super::agreement::{self, Agreement, Verdict};
use super::calibrate::{self, CacheKey, Calibration, Choice, CpuInfo};
use super::{Moonshine, SttError, Transcript, Whisper};
use crate::models::ModelError;
use crate::options::{Forms, ModelPrecision, RecognizerOptions, SttModel, Threads};
use crate::vad::{self, SegmenterConfig, SileroVad, VadError};
use crate::SAMPLE_RATE as PIPELINE_RATE;
use std::path::Path;
use std::time::Instant;
use tract_linalg::multithread::{multithread_tract_scope, Executor};

/// Errors of loading or running recognition.
#[derive(Debug, thiserror::Error)]
pub enum RecognizeError {
    #[error(transparent)]
    Vad(#[from] VadError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Stt(#[from] SttError),
    #[error("cannot start {threads} recognition threads: {reason}")]
    Threads { threads: usize, reason: String },
    #[error("calibration failed: {0}")]
    Calibration(String),
}

/// Told the stage a load begins ([`Recognizer::load_with_progress`]).
pub type Progress<'a> = &'a dyn Fn(&str);

/// Measure every candidate, keep the chosen form loaded (at most one form
/// is in memory at a time besides the chosen one), and say what was chosen.
fn run_calibration(
    dir: &Path,
    precisions: &[ModelPrecision],
    threads: &[usize],
    key: CacheKey,
    cpu: CpuInfo,
    load: &dyn Fn(Forms) -> Result<Whisper, SttError>,
    progress: Progress<'_>,
) -> Result<(Whisper, Calibration), RecognizeError> {
    let t0 = Instant::now();
    let mut loaded: Option<(Forms, Whisper)> = None;
    let mut pools: Vec<(usize, Executor)> = Vec::new();
    let timings = calibrate::measure(
        precisions,
        threads,
        |p, t, run| -> Result<(f64, f64), RecognizeError> {
            let forms = Forms::same(p);
            if loaded.as_ref().is_none_or(|(lf, _)| *lf != forms) {
                loaded = None; // free the previous form before loading the next
                progress(&format!("whisper-tiny: loading {p} to time it"));
                loaded = Some((forms, load(forms)?));
            }
            let ex = match pools.iter().find(|(n, _)| *n == t) {
                Some((_, ex)) => ex.clone(),
                None => {
                    let ex = executor(t)?;
                    pools.push((t, ex.clone()));
                    ex
                }
            };
            let Some((_, w)) = loaded.as_mut() else {
                return Err(RecognizeError::Calibration("model not loaded".into()));
            };
            let (frames, steps) = (calibrate::CAL_FRAMES, calibrate::CAL_STEPS);
            Ok(multithread_tract_scope(ex, || match run {
                calibrate::Run::WarmUp => w.time_fixed_work(frames / 4, 1),
                calibrate::Run::Full => w.time_fixed_work(frames, steps),
                calibrate::Run::Decoder => w.time_decoder_only(frames, steps).map(|d| (0.0, d)),
            })?)
        },
        |t| {
            tracing::debug!(
                precision = %t.precision,
                threads = t.threads,
                encoder_ms = format_args!("{:.0}", t.encoder_ms),
                decoder_ms = format_args!("{:.0}", t.decoder_ms),
                pruned = t.pruned,
                decoder_only = t.decoder_only,
                "calibration step"
            );
            progress(&format!(
                "whisper-tiny: timed {} on {} thread{}",
                t.precision,
                t.threads,
                if t.threads == 1 { "" } else { "s" }
            ));
        },
    )?;
    let memory = precisions
        .iter()
        .map(|&p| (p, calibrate::model_bytes(dir, p)))
        .collect();
    let low_memory = cpu.low_memory();
    let (chosen, reason) = calibrate::decide(&timings, &memory, low_memory)
        .ok_or_else(|| RecognizeError::Calibration("no candidate could be measured".into()))?;
    let whisper = match loaded {
        Some((f, w)) if f == chosen.forms() => w,
        other => {
            drop(other);
            progress(&format!("whisper-tiny: loading {}", chosen.forms()));
            load(chosen.forms())?
        }
    };
    let calibration = Calibration {
        model: SttModel::WhisperTiny.as_str().to_owned(),
        key,
        cpu,
        timings,
        chosen,
        reason,
        calibration_ms: t0.elapsed().as_secs_f64() * 1000.0,
        reused: false,
        fixed: false,
    };
    Ok((whisper, calibration))
}

/// Whisper in the form `stt.precision` fixes, the stored calibration
/// chose, or a new calibration measures ([`run_calibration`], stored in
/// `stt.calibration_file`), and how it was decided.
fn load_whisper_calibrated(
    dir: &Path,
    opts: &RecognizerOptions,
    progress: Progress<'_>,
) -> Result<(Whisper, Calibration), RecognizeError> {
    let cpu = CpuInfo::read();
    let (precisions, key) = whisper_key(dir, opts, &cpu);
    let threads = calibrate::thread_candidates(opts.threads, cpu.cores);
    let load_whisper = |forms: Forms| {
        Whisper::load_forms(
            dir,
            forms,
            opts.max_tokens as usize,
            opts.encoder_margin_frames as usize,
        )
    };
    let (whisper, calibration) = match (precisions.as_slice(), threads.as_slice()) {
        // Both fixed, or only one form installed with one core.
        (&[precision], &[threads]) => {
            if !cpu.computes_natively(precision) {
                tracing::warn!(
                    precision = %precision,
                    cpu = %cpu.model,
                    "this CPU has no native fp16 arithmetic: tract widens every \
                     product and recognition is several times slower than fp32; \
                     stt.precision = \"auto\" would not use it here"
                );
            }
            let choice = Choice::new(precision, threads);
            let c = if opts.precision.fixed().is_some() {
                Calibration::fixed(key, cpu, choice)
            } else {
                Calibration {
                    reason: "the only candidate".into(),
                    fixed: false,
                    ..Calibration::fixed(key, cpu, choice)
                }
            };
            progress(&format!("whisper-tiny: loading {precision}"));
            (load_whisper(Forms::same(precision))?, c)
        }
        // Auto with no model files at all: loading fp32 names the file.
        ([], _) => {
            return Err(load_whisper(Forms::same(ModelPrecision::Fp32))
                .err()
                .map_or_else(
                    || RecognizeError::Calibration("no Whisper model files found".into()),
                    RecognizeError::from,
                ))
        }
        _ => {
            // Measure, and store what the next start reuses (`again`: why a
            // stored one was not).
            let measure = |key: CacheKey, cpu: CpuInfo, again: Option<String>| {
                let (w, mut c) = run_calibration(
                    dir,
                    &precisions,
                    &threads,
                    key,
                    cpu,
                    &load_whisper,
                    progress,
                )?;
                if let Some(why) = again {
                    c.reason = format!("{}; measured again ({why})", c.reason);
                }
                if let Err(e) = calibrate::save_cache(&opts.calibration_file, &c) {
                    tracing::warn!(
                        file = %opts.calibration_file.display(),
                        error = %e,
                        "cannot store the calibration; the next start measures again"
                    );
                }
                Ok::<_, RecognizeError>((w, c))
            };
            match calibrate::load_cache(&opts.calibration_file, &key) {
                Some(c) => {
                    progress(&format!("whisper-tiny: loading {}", c.chosen.forms()));
                    let mut w = load_whisper(c.chosen.forms())?;
                    match stored_while_busy(&mut w, &c, progress)? {
                        None => (w, c),
                        Some(why) => {
                            tracing::warn!(
                                "{why}: the machine was busy when it was measured; measuring again"
                            );
                            drop(w);
                            measure(key, cpu, Some(why))?
                        }
                    }
                }
                None => measure(key, cpu, None)?,
            }
        }
    };
    Ok((whisper, calibration))
}

/// Time the stored calibration's choice on the fixed work now (a short
/// warm-up, then the calibration's input, each stage on its threads) and
/// say why it must be measured again when the stored times are more than
/// [`calibrate::STALE_FACTOR`] times slower ([`calibrate::measured_busy`]);
/// `None` when they hold, or when the file holds no full timing of the
/// choice to compare.
fn stored_while_busy(
    w: &mut Whisper,
    c: &Calibration,
    progress: Progress<'_>,
) -> Result<Option<String>, RecognizeError> {
    let Some(stored) = c.chosen_ms() else {
        return Ok(None);
    };
    progress("whisper-tiny: checking the stored calibration");
    let (enc, dec) = (c.chosen.threads, c.chosen.decoder_threads());
    w.set_decoder_executor((dec != enc).then(|| executor(dec)).transpose()?);
    let (frames, steps) = (calibrate::CAL_FRAMES, calibrate::CAL_STEPS);
    let fresh = multithread_tract_scope(executor(enc)?, || {
        w.time_fixed_work(frames / 4, 1)?;
        w.time_fixed_work(frames, steps)
    })?;
    w.set_decoder_executor(None);
    Ok(calibrate::measured_busy(stored, fresh).then(|| {
        format!(
            "the stored calibration's {} on {} thread{} ran in {:.0} ms now against {:.0} ms stored",
            c.chosen.forms(),
            enc,
            if enc == 1 { "" } else { "s" },
            fresh.0 + fresh.1,
            stored.0 + stored.1
        )
    }))
}

/// The one log line saying what was chosen, from what.
fn log_calibration(c: &Calibration, file: &Path) {
    let msg = match c.source() {
        "reused" => "calibration reused",
        "fixed" => "recognition settings fixed by configuration",
        _ => "calibration measured",
    };
    tracing::info!(
        precision = %c.chosen.precision,
        threads = c.chosen.threads,
        reason = %c.reason,
        timings = %c.timings_line(),
        calibration_ms = format_args!("{:.0}", c.calibration_ms),
        cpu = %c.cpu.model,
        features = %c.cpu.features.join(","),
        tract_isa = %c.cpu.tract_isa,
        vocab_kernel = %c.cpu.vocab_kernel,
        vocab_threads = c.cpu.vocab_threads.max(1),
        vocab_huge_kb = c.cpu.vocab_huge_kb,
        vocab_kernel_us = %c
            .cpu
            .vocab_kernel_us
            .iter()
            .map(|(k, us)| format!("{k}={us}"))
            .collect::<Vec<_>>()
            .join(","),
        file = %file.display(),
        "{msg}"
    );
}

/// One thread: tract runs on the caller. More: a private rayon pool named
/// `talkie-mm-N` (built here so a failure is an error, not tract's panic).
fn executor(threads: usize) -> Result<Executor, RecognizeError> {
    if threads <= 1 {
        return Ok(Executor::SingleThread);
    }
    rayon::ThreadPoolBuilder::new()
        .thread_name(|n| format!("talkie-mm-{n}"))
        .num_threads(threads)
        .build()
        .map(|pool| Executor::MultiThread(std::sync::Arc::new(pool)))
        .map_err(|e| RecognizeError::Threads {
            threads,
            reason: e.to_string(),
        })
}

/// Whisper's candidate forms in `dir` and the key its stored calibration
/// must have.
fn whisper_key(
    dir: &Path,
    opts: &RecognizerOptions,
    cpu: &CpuInfo,
) -> (Vec<ModelPrecision>, CacheKey) {
    let precisions = calibrate::precision_candidates(opts.precision, dir, cpu);
    let mut key = CacheKey::new(
        cpu,
        &precisions,
        opts.precision,
        opts.threads,
        opts.encoder_margin_frames,
    );
    key.talkie.clone_from(&opts.release);
    (precisions, key)
}

/// The thread pool behind `executor` (none for one thread).
fn pool_of(executor: &Executor) -> Option<std::sync::Arc<rayon::ThreadPool>> {
    match executor {
        Executor::MultiThread(pool) => Some(std::sync::Arc::clone(pool)),
        _ => None,
    }
}

/// Whisper's projection kernel and each kernel's time into the calibration.
fn note_vocab_kernels(c: &mut Calibration, whisper: &Whisper) {
    c.cpu.vocab_kernel = whisper.vocab_kernel().name().to_owned();
    c.cpu.vocab_huge_kb = whisper.vocab_huge_page_bytes() / 1024;
    c.cpu.vocab_kernel_us = whisper
        .vocab_timings()
        .iter()
        .map(|(k, ms)| (k.name().to_owned(), (ms * 1000.0).round() as u64))
        .collect();
}

/// The projection's threads and each split's time (`avx2 on 2 threads`
/// beside the kernels' own one-thread entries) into the calibration.
fn note_projection(c: &mut Calibration, timings: &[(usize, f64)], threads: usize) {
    c.cpu.vocab_threads = threads;
    for &(n, ms) in timings.iter().filter(|(n, _)| *n > 1) {
        c.cpu.vocab_kernel_us.insert(
            format!("{} on {n} threads", c.cpu.vocab_kernel),
            (ms * 1000.0).round() as u64,
        );
    }
}

/// The result for one utterance.
#[derive(Debug, Clone, Default)]
pub struct Recognition {
    /// Whisper's output; empty when the VAD found no speech or Whisper's
    /// no-speech gate fired.
    pub text: String,
    /// Samples of speech between the first and last VAD segment.
    pub speech_samples: usize,
    pub audio_samples: usize,
    pub vad_ms: f64,
    /// VAD + encoder + decoder.
    pub total_ms: f64,
    pub transcript: Transcript,
    /// With `stt.model = "agreement"`: both texts, which won, the scores.
    pub agreement: Option<Verdict>,
    /// Where the VAD heard speech, in samples from the start of the audio
    /// (for the technician's waveform; at most [`MAX_SEGMENTS`]).
    pub segments: Vec<crate::vad::Segment>,
}

/// Where Moonshine's measured form is stored: beside `stt.calibration_file`
/// (`calibration.json` → `calibration.moonshine.json`).
pub fn moonshine_cache_path(calibration_file: &Path) -> std::path::PathBuf {
    let stem = calibration_file
        .file_stem()
        .map_or_else(|| "calibration".into(), |s| s.to_string_lossy());
    calibration_file.with_file_name(format!("{stem}.moonshine.json"))
}

/// What makes a stored Moonshine measurement stale: talkie's version, the
/// CPU, `stt.precision`, the thread count, and Moonshine's model files.
fn moonshine_key(cpu: &CpuInfo, opts: &RecognizerOptions, threads: usize) -> CacheKey {
    let mut key = CacheKey::new(
        cpu,
        &[],
        opts.precision,
        Threads::Fixed(threads as u32),
        opts.encoder_margin_frames,
    );
    key.models = crate::models::entries()
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e.file.starts_with("moonshine_"))
        .map(|e| (e.file, e.sha256))
        .collect();
    key
}

/// Agreement's memory bound (issue 31): the service's peak RSS with both
/// models, first start included.
pub const AGREEMENT_MAX_MB: u64 = 250;

/// Moonshine base's fp32 weights (encoder and decoder files), MB.
const AGREEMENT_FP32_MB: u64 = 183;

/// Moonshine's form: the one `stt.precision` fixes (fp16 has none: fp32),
/// or with `auto` both forms timed on the fixed work (3 s of audio, 12
/// decoder steps, after one warm-up) on `threads`, int8 kept unless fp32
/// is more than 10 % faster (int8 is a quarter of the memory, and on the
/// dev set no less accurate). The measurement is stored in `cache`
/// ([`moonshine_cache_path`]) and reused while its key holds, so a start
/// neither loads fp32's 350 MB to time it nor spends the seconds again.
///
/// Beside Whisper (`whisper`: its calibration; `agreement`) `auto` is
/// int8, never timed against fp32: Moonshine's fp32 weights alone
/// ([`AGREEMENT_FP32_MB`]) would take the pair past agreement's memory
/// bound ([`AGREEMENT_MAX_MB`], issue 31), and merely loading them to be
/// timed was the first start's peak (410–427 MB on the Xeon of
/// docs/models.md, against 204 MB running). The reason names Whisper's
/// own measurement where it timed fp32 and int8 and chose int8 for both
/// stages ([`int8_measured_for_whisper`]). `stt.precision = "fp32"`
/// still loads fp32. Returns the model and why.
fn measured_moonshine(
    dir: &Path,
    opts: &RecognizerOptions,
    threads: usize,
    cpu: &CpuInfo,
    cache: &Path,
    whisper: Option<&Calibration>,
    progress: Progress<'_>,
) -> Result<(Moonshine, String), RecognizeError> {
    let max_tokens = opts.max_tokens as usize;
    let int8_for_whisper = whisper.and_then(int8_measured_for_whisper);
    let load = |forms: Forms| {
        progress(&format!("moonshine-base: loading {forms}"));
        Moonshine::load_forms(dir, forms, max_tokens)
    };
    let forms: Vec<ModelPrecision> = match opts.precision.fixed() {
        Some(ModelPrecision::Int8) => vec![ModelPrecision::Int8],
        Some(_) => vec![ModelPrecision::Fp32],
        // Under 1 GiB fp32's 350 MB is not even loaded to be timed.
        None if cpu.low_memory() => vec![ModelPrecision::Int8],
        None if whisper.is_some() => {
            let m = load(Forms::same(ModelPrecision::Int8))?;
            let why = match int8_for_whisper {
                Some(seen) => {
                    format!("int8, as whisper-tiny measured on this CPU ({seen}); fp32 not loaded")
                }
                None => format!(
                    "int8 beside whisper-tiny: fp32's {AGREEMENT_FP32_MB} MB of weights would take \
                     agreement past {AGREEMENT_MAX_MB} MB; fp32 not loaded"
                ),
            };
            return Ok((m, why));
        }
        None => [ModelPrecision::Int8, ModelPrecision::Fp32]
            .into_iter()
            .filter(|&p| dir.join(super::moonshine::encoder_file(p)).exists())
            .collect(),
    };
    let [first, rest @ ..] = forms.as_slice() else {
        // Nothing installed: loading fp32 names the missing file.
        let m = load(Forms::same(ModelPrecision::Fp32))?;
        return Ok((m, "fp32".into()));
    };
    if rest.is_empty() {
        let m = load(Forms::same(*first))?;
        return Ok((m, format!("{first} (the only form)")));
    }
    let key = moonshine_key(cpu, opts, threads);
    if let Some(c) = calibrate::load_cache(cache, &key) {
        let m = load(c.chosen.forms())?;
        let why = format!(
            "{} as measured before ({}; stored in {})",
            c.chosen.forms(),
            c.timings_line(),
            cache.display()
        );
        return Ok((m, why));
    }
    // One form in memory at a time: fp32 is timed and dropped, then int8
    // (a quarter of the memory) is timed and kept unless fp32 was more
    // than 10 % faster, when fp32 is loaded again.
    let t0 = Instant::now();
    let ex = executor(threads)?;
    let time = |m: &mut Moonshine, precision| {
        progress(&format!("moonshine-base: timing {precision}"));
        multithread_tract_scope(ex.clone(), || -> Result<calibrate::Timing, SttError> {
            m.time_fixed_work(30, 2)?;
            let (encoder_ms, decoder_ms) = m.time_fixed_work(300, 12)?;
            Ok(calibrate::Timing {
                precision,
                threads,
                encoder_ms,
                decoder_ms,
                pruned: false,
                decoder_only: false,
            })
        })
    };
    let fp32 = time(
        &mut load(Forms::same(ModelPrecision::Fp32))?,
        ModelPrecision::Fp32,
    )?;
    let mut int8 = load(Forms::same(ModelPrecision::Int8))?;
    let int8_t = time(&mut int8, ModelPrecision::Int8)?;
    // Each stage in its own form: int8 kept unless fp32 is more than 10 %
    // faster (a CPU's int8 and fp32 products differ by stage: on the
    // AVX2-only EPYC the int8 encoder is ~8 % slower, its decoder 2× faster).
    let stage = |int8: f64, fp32: f64| {
        if int8 <= fp32 * 1.1 {
            ModelPrecision::Int8
        } else {
            ModelPrecision::Fp32
        }
    };
    let forms = Forms {
        encoder: stage(int8_t.encoder_ms, fp32.encoder_ms),
        decoder: stage(int8_t.decoder_ms, fp32.decoder_ms),
    };
    let seen = format!(
        "encoder int8 {:.0} ms, fp32 {:.0} ms; decoder int8 {:.0} ms, fp32 {:.0} ms; on 3 s of audio and 12 steps",
        int8_t.encoder_ms, fp32.encoder_ms, int8_t.decoder_ms, fp32.decoder_ms
    );
    let why = format!("{forms} measured ({seen})");
    let mut stored = Calibration::fixed(key, cpu.clone(), Choice::of_forms(forms, threads));
    stored.model = SttModel::MoonshineBase.as_str().to_owned();
    stored.timings = vec![int8_t, fp32];
    stored.reason = why.clone();
    stored.calibration_ms = t0.elapsed().as_secs_f64() * 1000.0;
    stored.fixed = false;
    if let Err(e) = calibrate::save_cache(cache, &stored) {
        tracing::warn!(
            file = %cache.display(),
            error = %e,
            "cannot store Moonshine's measurement; the next start measures again"
        );
    }
    if forms == Forms::same(ModelPrecision::Int8) {
        Ok((int8, why))
    } else {
        drop(int8);
        let m = load(forms)?;
        Ok((m, why))
    }
}

/// Whisper's calibration timed fp32 and int8 (fp32 possibly pruned on its
/// warm-up: slower already) and chose int8 for both stages: its timings line, which
/// says so; `None` otherwise (a fixed precision, one form installed, or
/// fp32 chosen for a stage).
fn int8_measured_for_whisper(c: &Calibration) -> Option<String> {
    let timed = |p: ModelPrecision| c.timings.iter().any(|t| t.precision == p);
    let int8 = c.chosen.forms() == Forms::same(ModelPrecision::Int8);
    (!c.fixed && int8 && timed(ModelPrecision::Fp32) && timed(ModelPrecision::Int8))
        .then(|| c.timings_line())
}

/// Whether a board can hold `agreement` at all (`stt.model = "auto"`):
/// two cores (the models run side by side) and 1 GiB of RAM (both models,
/// Moonshine in int8, held 204 MB running and peaked at 223 MB on x86 in
/// a 30-minute soak; a Zero 2 W has 512 MB, which the OS, the page cache
/// and a first start's calibration share).
/// `Err` says why not.
fn agreement_fits(cpu: &CpuInfo) -> Result<(), String> {
    if cpu.cores < 2 {
        return Err(format!(
            "{} core: agreement runs two models side by side",
            cpu.cores
        ));
    }
    if cpu.low_memory() {
        return Err(format!(
            "{} MB of RAM: agreement peaks near {AGREEMENT_MAX_MB} MB, under {} MB whisper-tiny alone",
            cpu.mem_total_mb.unwrap_or(0),
            calibrate::LOW_MEMORY_MB
        ));
    }
    Ok(())
}

/// Release to text for a 3 s utterance with `agreement`, from each model's
/// fixed work (3 s of audio, [`calibrate::CAL_STEPS`] decoder steps, then
/// one scoring of a text that long: each `(encoder ms, decoder ms,
/// scoring ms)`) timed as agreement runs them: the slower of the two
/// transcriptions (one after the other on one core), then the scoring when
/// their texts differ: each decoder takes both texts, one of them usually
/// in two casings ([`agreement::scoring_forms`]: Whisper's lower-case
/// start), three forms of which its own text as written costs nothing (its
/// greedy pass scored it: [`super::whisper::Encoded`]), so two scoring
/// runs.
fn predicted_agreement_ms(
    whisper: (f64, f64, f64),
    moonshine: (f64, f64, f64),
    parallel: bool,
) -> f64 {
    const SCORING_RUNS: f64 = 2.0;
    let (w, m) = (whisper.0 + whisper.1, moonshine.0 + moonshine.1);
    if parallel {
        w.max(m) + SCORING_RUNS * whisper.2.max(moonshine.2)
    } else {
        w + m + SCORING_RUNS * (whisper.2 + moonshine.2)
    }
}

/// `stt.model = "auto"` with both models loaded: time agreement
/// ([`time_agreement`]) and keep it if it fits `stt.latency_budget_ms`;
/// the calibration's model and reason say which and why.
fn auto_keeps_agreement(
    whisper: &mut Whisper,
    moonshine: &mut Moonshine,
    threads: usize,
    parallel: bool,
    opts: &RecognizerOptions,
    calibration: &mut Calibration,
) -> Result<bool, RecognizeError> {
    let ms = time_agreement(whisper, moonshine, threads, parallel)?;
    let budget = f64::from(opts.latency_budget_ms);
    let fits = ms <= budget;
    let tier = if fits {
        SttModel::Agreement
    } else {
        SttModel::WhisperTiny
    };
    calibration.model = tier.as_str().to_owned();
    calibration.reason = format!(
        "stt.model = \"auto\": {} (agreement measured {ms:.0} ms for a 3 s utterance, {} \
         stt.latency_budget_ms = {budget:.0}); {}",
        tier.as_str(),
        if fits { "within" } else { "over" },
        calibration.reason
    );
    Ok(fits)
}

/// Time both models' fixed work as agreement runs them (side by side when
/// `parallel`, Whisper on `threads`), after a short warm-up of each: the
/// [`predicted_agreement_ms`] for a 3 s utterance.
fn time_agreement(
    whisper: &mut Whisper,
    moonshine: &mut Moonshine,
    threads: usize,
    parallel: bool,
) -> Result<f64, RecognizeError> {
    let ex = executor(threads)?;
    let mut run = |frames: usize, steps: usize| {
        agreement::both(
            parallel,
            || multithread_tract_scope(ex.clone(), || whisper.time_scored_work(frames, steps)),
            || moonshine.time_scored_work(frames, steps),
        )
    };
    let (w, m) = run(30, 2);
    w?;
    m?;
    let (w, m) = run(calibrate::CAL_FRAMES, calibrate::CAL_STEPS);
    Ok(predicted_agreement_ms(w?, m?, parallel))
}

/// Peak level a quiet utterance is raised to (−6 dBFS).
pub const LEVEL_TARGET_PEAK: f32 = 0.5;
/// Most gain [`level_normalized`] applies (+30 dB).
pub const LEVEL_MAX_GAIN: f32 = 31.6;

/// Audio before the VAD span that Whisper hears too (and Moonshine does
/// not): 200 ms, so Whisper starts `vad.speech_pad_ms` + 200 ms before the
/// first speech. In 10 dB pink noise Silero marks speech late and the trim
/// cut word onsets ("Where do I collect my luggage?" heard as "I collect my
/// luggage"); Whisper, trained on 30 s windows, is unharmed by the extra
/// audio, while Moonshine, trained on tight segments, mishears more with it
/// (measured in docs/models.md). Only the start is widened: a speculative
/// run's prefix holds it too, so its input stays the final run's.
pub const WHISPER_LEAD_SAMPLES: usize = 3_200;

/// Where the recognizer listens in a capture of `len` samples with these
/// VAD segments: `(from, start, end)`, the speech span `start..end` (first
/// segment's start to the last one's end) and Whisper's `from..end` with up
/// to [`WHISPER_LEAD_SAMPLES`] before it; all equal when there is no speech.
fn heard_span(segments: &[vad::Segment], len: usize) -> (usize, usize, usize) {
    match (segments.first(), segments.last()) {
        (Some(a), Some(b)) => {
            let end = usize::try_from(b.end).unwrap_or(usize::MAX).min(len);
            let start = usize::try_from(a.start).unwrap_or(end).min(end);
            (start.saturating_sub(WHISPER_LEAD_SAMPLES), start, end)
        }
        _ => (0, 0, 0),
    }
}

/// A quiet utterance raised so its peak reaches [`LEVEL_TARGET_PEAK`]
/// (at most [`LEVEL_MAX_GAIN`]); `None` when it is loud enough already.
/// A voice far from the microphone or a low-gain input reaches the VAD
/// 30 dB down; Silero then misses word onsets (measured on shared/eval/dev
/// 30 dB quieter: "tickets for two adults" heard as "for two adults").
/// Never attenuates, so loud input is untouched.
pub fn level_normalized(samples: &[f32]) -> Option<Vec<f32>> {
    let peak = samples.iter().fold(0.0f32, |m, &x| m.max(x.abs()));
    if peak <= 0.0 || !peak.is_finite() {
        return None;
    }
    let gain = (LEVEL_TARGET_PEAK / peak).min(LEVEL_MAX_GAIN);
    (gain > 1.5).then(|| samples.iter().map(|&x| x * gain).collect())
}

/// Speech segments kept in a [`Recognition`].
pub const MAX_SEGMENTS: usize = 64;

impl Recognition {
    pub fn has_text(&self) -> bool {
        !self.text.trim().is_empty()
    }

    pub fn audio_ms(&self) -> u64 {
        samples_ms(self.audio_samples)
    }

    pub fn speech_ms(&self) -> u64 {
        samples_ms(self.speech_samples)
    }
}

fn samples_ms(n: usize) -> u64 {
    n as u64 * 1000 / u64::from(PIPELINE_RATE)
}

/// The speech-to-text model a [`Recognizer`] runs behind the VAD.
enum Engine {
    Whisper(Box<Whisper>),
    Moonshine(Box<Moonshine>),
    /// Both, cross-scored (`stt.model = "agreement"`); `parallel`: on two
    /// threads.
    Agreement {
        whisper: Box<Whisper>,
        moonshine: Box<Moonshine>,
        agreement: Box<Agreement>,
        parallel: bool,
    },
}

impl Engine {
    /// `led` is the VAD span after up to [`WHISPER_LEAD_SAMPLES`] before
    /// it (fewer at the start of the capture), `lead` samples long: Whisper
    /// hears all of it, Moonshine the span.
    fn transcribe(
        &mut self,
        led: &[f32],
        lead: usize,
    ) -> Result<(Transcript, Option<Verdict>), SttError> {
        let audio = led.get(lead..).unwrap_or_default();
        match self {
            Engine::Whisper(w) => Ok((w.transcribe(led)?, None)),
            Engine::Moonshine(m) => Ok((m.transcribe(audio)?, None)),
            Engine::Agreement {
                whisper,
                moonshine,
                agreement,
                parallel,
            } => {
                // One Whisper window: longer audio is Whisper's alone.
                if led.len() > whisper.window_samples() {
                    return Ok((whisper.transcribe(led)?, None));
                }
                let (t, v) = agreement.transcribe(whisper, moonshine, led, audio, *parallel)?;
                Ok((t, Some(v)))
            }
        }
    }
}

/// Silero VAD + Whisper (or Moonshine), loaded and checked.
pub struct Recognizer {
    vad: SileroVad,
    engine: Engine,
    seg: SegmenterConfig,
    /// tract's matrix-product thread pool (`stt.threads`), used only inside
    /// [`Recognizer::warm_up`] and [`Recognizer::recognize`].
    executor: Executor,
    /// Which precision and threads, and why (shown on the status page).
    calibration: Calibration,
}

impl std::fmt::Debug for Recognizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recognizer").finish_non_exhaustive()
    }
}

impl Recognizer {
    /// Load Whisper from `dir` (verified against its manifest) and the VAD
    /// from `opts.vad_model`. With `precision` or `threads` set to `auto`,
    /// the forms and thread counts are measured first (or the stored
    /// calibration in `opts.calibration_file` is reused): see [`calibrate`].
    pub fn load(dir: &Path, opts: &RecognizerOptions) -> Result<Self, RecognizeError> {
        Self::load_with_progress(dir, opts, &|_| {})
    }

    /// [`Recognizer::load`], calling `progress` as each stage begins
    /// ("whisper-tiny: loading int8", "moonshine-base: timing fp32",
    /// "timing agreement", …): a first start that calibrates takes seconds
    /// on a Xeon and may take a minute on a Pi, and the service tells
    /// systemd it is still making progress (`EXTEND_TIMEOUT_USEC` per
    /// stage, docs/systemd.md).
    pub fn load_with_progress(
        dir: &Path,
        opts: &RecognizerOptions,
        progress: Progress<'_>,
    ) -> Result<Self, RecognizeError> {
        if opts.model == SttModel::MoonshineBase {
            return Self::load_moonshine(dir, opts, progress);
        }
        let (whisper, calibration) = load_whisper_calibrated(dir, opts, progress)?;
        let mut calibration = calibration;
        note_vocab_kernels(&mut calibration, &whisper);
        let mut whisper = whisper;
        let (enc, dec) = (
            calibration.chosen.threads,
            calibration.chosen.decoder_threads(),
        );
        whisper.set_decoder_executor((dec != enc).then(|| executor(dec)).transpose()?);
        // `auto`: agreement only where its memory and two cores are there.
        let tier_gate = (opts.model == SttModel::Auto).then(|| agreement_fits(&calibration.cpu));
        let engine = if opts.model == SttModel::Agreement || tier_gate == Some(Ok(())) {
            let parallel = calibration.cpu.cores >= 2;
            // Moonshine runs on its own thread (one core) beside Whisper.
            let m_threads = if parallel {
                1
            } else {
                calibration.chosen.threads
            };
            let (moonshine, why) = measured_moonshine(
                dir,
                opts,
                m_threads,
                &calibration.cpu,
                &moonshine_cache_path(&opts.calibration_file),
                Some(&calibration),
                progress,
            )?;
            calibration.model = opts.model.as_str().to_owned();
            calibration.reason = format!(
                "{}; with moonshine-base {}: {why}",
                calibration.reason,
                if parallel {
                    "on a second thread"
                } else {
                    "after it (one core)"
                }
            );
            let (mut whisper, mut moonshine) = (Box::new(whisper), Box::new(moonshine));
            if opts.model == SttModel::Auto {
                progress("timing agreement (both models side by side)");
            }
            if opts.model == SttModel::Auto
                && !auto_keeps_agreement(
                    &mut whisper,
                    &mut moonshine,
                    enc,
                    parallel,
                    opts,
                    &mut calibration,
                )?
            {
                drop(moonshine);
                Engine::Whisper(whisper)
            } else {
                Engine::Agreement {
                    whisper,
                    moonshine,
                    agreement: Box::new(Agreement::load(dir)?),
                    parallel,
                }
            }
        } else {
            if let Some(Err(why)) = tier_gate {
                calibration.model = SttModel::WhisperTiny.as_str().to_owned();
                calibration.reason = format!(
                    "stt.model = \"auto\": whisper-tiny ({why}); {}",
                    calibration.reason
                );
            }
            Engine::Whisper(Box::new(whisper))
        };
        let executor = executor(calibration.chosen.threads)?;
        // The encoder's pool is idle while the decoder runs: the projection
        // may use it (not beside Moonshine, which has the second core).
        let mut engine = engine;
        if let Engine::Whisper(w) = &mut engine {
            let timings = w.use_projection_pool(pool_of(&executor));
            note_projection(&mut calibration, &timings, w.projection_threads());
        }
        log_calibration(&calibration, &opts.calibration_file);
        progress("loading the VAD");
        Ok(Self {
            vad: SileroVad::load(&opts.vad_model)?,
            engine,
            seg: opts.segmenter.clone(),
            executor,
            calibration,
        })
    }

    /// Moonshine base alone: its form measured ([`measured_moonshine`]);
    /// `auto` threads are every core (its encoder is most of the work).
    fn load_moonshine(
        dir: &Path,
        opts: &RecognizerOptions,
        progress: Progress<'_>,
    ) -> Result<Self, RecognizeError> {
        let cpu = CpuInfo::read();
        let threads = match opts.threads {
            Threads::Fixed(n) => (n as usize).max(1),
            Threads::Auto => cpu.cores.max(1),
        };
        let key = CacheKey::new(
            &cpu,
            &[],
            opts.precision,
            opts.threads,
            opts.encoder_margin_frames,
        );
        let (moonshine, why) = measured_moonshine(
            dir,
            opts,
            threads,
            &cpu,
            &moonshine_cache_path(&opts.calibration_file),
            None,
            progress,
        )?;
        let mut calibration =
            Calibration::fixed(key, cpu, Choice::of_forms(moonshine.forms(), threads));
        calibration.model = opts.model.as_str().to_owned();
        calibration.reason = format!(
            "stt.model = \"{}\": {why}; {threads} threads",
            opts.model.as_str()
        );
        calibration.cpu.vocab_kernel = moonshine.vocab_kernel().name().to_owned();
        calibration.cpu.vocab_huge_kb = moonshine.vocab_huge_page_bytes() / 1024;
        let executor = executor(threads)?;
        let mut moonshine = moonshine;
        let timings = moonshine.use_projection_pool(pool_of(&executor));
        note_projection(&mut calibration, &timings, moonshine.projection_threads());
        log_calibration(&calibration, &opts.calibration_file);
        progress("loading the VAD");
        Ok(Self {
            vad: SileroVad::load(&opts.vad_model)?,
            engine: Engine::Moonshine(Box::new(moonshine)),
            seg: opts.segmenter.clone(),
            executor,
            calibration,
        })
    }

    /// The form each model runs in: `(Whisper's, Moonshine's)`, `None` for
    /// a model this recognizer does not run.
    pub fn model_forms(&self) -> (Option<Forms>, Option<Forms>) {
        let whisper = Some(self.calibration.chosen.forms());
        match &self.engine {
            Engine::Whisper(_) => (whisper, None),
            Engine::Moonshine(m) => (None, Some(m.forms())),
            Engine::Agreement { moonshine, .. } => (whisper, Some(moonshine.forms())),
        }
    }

    /// Install a hook Whisper calls before every encoder window and decoder
    /// step (see [`super::whisper::StepHook`]).
    pub fn set_step_hook(&mut self, hook: Option<super::whisper::StepHook>) {
        match &mut self.engine {
            Engine::Whisper(w) => w.set_step_hook(hook),
            Engine::Moonshine(m) => m.set_step_hook(hook),
            Engine::Agreement {
                whisper, moonshine, ..
            } => match hook {
                Some(h) => {
                    let (a, b) = agreement::shared_hook(h);
                    whisper.set_step_hook(Some(a));
                    moonshine.set_step_hook(Some(b));
                }
                None => {
                    whisper.set_step_hook(None);
                    moonshine.set_step_hook(None);
                }
            },
        }
    }

    /// The vocabulary projection's kernel (see [`super::dot`]).
    pub fn vocab_kernel(&self) -> super::dot::Kernel {
        match &self.engine {
            Engine::Whisper(w) | Engine::Agreement { whisper: w, .. } => w.vocab_kernel(),
            Engine::Moonshine(m) => m.vocab_kernel(),
        }
    }

    /// Use another projection kernel; false if this CPU lacks it.
    pub fn set_vocab_kernel(&mut self, kernel: super::dot::Kernel) -> bool {
        match &mut self.engine {
            Engine::Whisper(w) => w.set_vocab_kernel(kernel),
            Engine::Moonshine(m) => m.set_vocab_kernel(kernel),
            Engine::Agreement {
                whisper, moonshine, ..
            } => whisper.set_vocab_kernel(kernel) && moonshine.set_vocab_kernel(kernel),
        }
    }

    /// How the precision and threads in use were decided.
    pub fn calibration(&self) -> &Calibration {
        &self.calibration
    }

    /// Whisper's fixed calibration work (see [`Whisper::time_fixed_work`])
    /// on this recognizer's threads: (encoder ms, decoder ms).
    pub fn time_fixed_work(
        &mut self,
        frames: usize,
        steps: usize,
    ) -> Result<(f64, f64), RecognizeError> {
        let engine = &mut self.engine;
        Ok(multithread_tract_scope(
            self.executor.clone(),
            || match engine {
                Engine::Whisper(w) => w.time_fixed_work(frames, steps),
                Engine::Moonshine(m) => m.time_fixed_work(frames, steps),
                // The two models' work, one after the other.
                Engine::Agreement {
                    whisper, moonshine, ..
                } => {
                    let (we, wd) = whisper.time_fixed_work(frames, steps)?;
                    let (me, md) = moonshine.time_fixed_work(frames, steps)?;
                    Ok((we + me, wd + md))
                }
            },
        )?)
    }

    /// Release→text of a 3 s utterance without speculation as `auto`
    /// predicts it for this recognizer's tier: one model's fixed work
    /// ([`Recognizer::time_fixed_work`], 3 s of audio and
    /// [`calibrate::CAL_STEPS`] decoder steps, after a short warm-up), or
    /// for `agreement` both models' timed as it runs them plus the scoring
    /// (the prediction `stt.model = "auto"` holds against
    /// `stt.latency_budget_ms`). What `talkie bench` shows per tier.
    pub fn time_utterance(&mut self) -> Result<f64, RecognizeError> {
        let threads = self.calibration.chosen.threads;
        if let Engine::Agreement {
            whisper,
            moonshine,
            parallel,
            ..
        } = &mut self.engine
        {
            return time_agreement(whisper, moonshine, threads, *parallel);
        }
        self.time_fixed_work(30, 2)?;
        let (e, d) = self.time_fixed_work(calibrate::CAL_FRAMES, calibrate::CAL_STEPS)?;
        Ok(e + d)
    }

    /// Run the whole graph once on a second of quiet noise, so the first
    /// visitor does not pay for tract's lazy set-up. Returns milliseconds.
    pub fn warm_up(&mut self) -> Result<f64, RecognizeError> {
        multithread_tract_scope(self.executor.clone(), || self.warm_up_here())
    }

    fn warm_up_here(&mut self) -> Result<f64, RecognizeError> {
        let t0 = Instant::now();
        let noise = super::whisper::quiet_noise(PIPELINE_RATE as usize, 1e-3);
        vad::segments(&mut self.vad, &self.seg, &noise)?;
        self.engine.transcribe(&noise, 0)?;
        Ok(t0.elapsed().as_secs_f64() * 1000.0)
    }

    /// VAD-trim `samples` (16 kHz mono) to the span from the first to the
    /// last speech segment, then transcribe that span.
    pub fn recognize(&mut self, samples: &[f32]) -> Result<Recognition, RecognizeError> {
        multithread_tract_scope(self.executor.clone(), || self.recognize_here(samples))
    }

    fn recognize_here(&mut self, samples: &[f32]) -> Result<Recognition, RecognizeError> {
        let t0 = Instant::now();
        let boosted = level_normalized(samples);
        let samples: &[f32] = boosted.as_deref().unwrap_or(samples);
        let segments = vad::segments(&mut self.vad, &self.seg, samples)?;
        let vad_ms = t0.elapsed().as_secs_f64() * 1000.0;
        let (from, start, end) = heard_span(&segments, samples.len());
        let led = samples.get(from..end).unwrap_or_default();
        let lead = start - from;
        let speech = led.get(lead..).unwrap_or_default();
        let (transcript, agreement) = if speech.is_empty() {
            (Transcript::default(), None)
        } else {
            self.engine.transcribe(led, lead)?
        };
        Ok(Recognition {
            text: transcript.text.clone(),
            speech_samples: speech.len(),
            audio_samples: samples.len(),
            vad_ms,
            total_ms: t0.elapsed().as_secs_f64() * 1000.0,
            transcript,
            agreement,
            segments: segments.into_iter().take(MAX_SEGMENTS).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::VAD_FILE;
    use crate::options::Precision;
    use crate::stt::testdata::{models_and_dev, read_clip};

    /// Three dev clips and their reference transcripts (x86_64, fp32).
    const THREE_CLIPS: [(&str, &str); 3] = [
        ("dev_00.wav", "Where is the nearest restroom?"),
        ("dev_01.wav", "What time does the museum close today?"),
        (
            "dev_02.wav",
            "Can you show me the way to the main entrance?",
        ),
    ];

    /// The forms [`three_dev_clips_give_the_reference_transcripts_in_every_precision`]
    /// checks: every form, or those `TALKIE_TEST_PRECISIONS` names
    /// (comma-separated, each on all three clips). Under qemu-user,
    /// `/proc/cpuinfo` is the host's, so tract (which reads `asimdhp`
    /// there) must be told the emulated CPU has fp16:
    /// `QEMU_CPU=max TRACT_CPU_ISA=+fp16 TALKIE_TEST_PRECISIONS=fp16`
    /// checks its fp16 kernels alone (each form costs minutes emulated).
    fn forms_to_check() -> Vec<ModelPrecision> {
        match std::env::var("TALKIE_TEST_PRECISIONS") {
            Ok(list) => list
                .split(',')
                .map(|p| {
                    ModelPrecision::ALL
                        .into_iter()
                        .find(|m| m.as_str() == p.trim())
                        .unwrap_or_else(|| panic!("TALKIE_TEST_PRECISIONS: unknown form {p:?}"))
                })
                .collect(),
            Err(_) => ModelPrecision::ALL.to_vec(),
        }
    }

    /// Beside Whisper, Moonshine's fp32 is loaded to be timed only where
    /// Whisper's own calibration did not measure int8 the faster form in
    /// both stages.
    #[test]
    fn moonshine_skips_timing_fp32_where_whisper_measured_int8_faster() {
        use ModelPrecision::{Fp32, Int8};
        let t = |precision, ms| calibrate::Timing {
            precision,
            threads: 2,
            encoder_ms: ms,
            decoder_ms: ms,
            pruned: false,
            decoder_only: false,
        };
        let cpu = CpuInfo::read();
        let key = CacheKey::new(&cpu, &[], Precision::Auto, Threads::Auto, 0);
        let mut c = Calibration::fixed(key, cpu, Choice::new(Int8, 2));
        c.fixed = false;
        c.timings = vec![t(Fp32, 70.0), t(Int8, 60.0)];
        let line = int8_measured_for_whisper(&c).expect("int8 measured faster");
        assert!(
            line.contains("fp32/2=140ms") && line.contains("int8/2=120ms"),
            "{line}"
        );
        c.chosen = Choice::of_forms(
            Forms {
                encoder: Int8,
                decoder: Fp32,
            },
            2,
        );
        assert_eq!(int8_measured_for_whisper(&c), None, "fp32 won a stage");
        c.chosen = Choice::new(Int8, 2);
        c.timings = vec![t(Int8, 60.0)];
        assert_eq!(int8_measured_for_whisper(&c), None, "fp32 never timed");
        c.timings = vec![t(Fp32, 70.0), t(Int8, 60.0)];
        c.fixed = true;
        assert_eq!(int8_measured_for_whisper(&c), None, "stt.precision fixed");
    }

    /// Options for `model` whose calibration file is in a fresh temporary
    /// directory (kept alive by the first element), and Moonshine's stored
    /// measurement beside it.
    fn calibration_in_tempdir(
        model: SttModel,
    ) -> (tempfile::TempDir, RecognizerOptions, std::path::PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let opts = RecognizerOptions {
            model,
            calibration_file: tmp.path().join("calibration.json"),
            ..RecognizerOptions::default()
        };
        let cache = moonshine_cache_path(&opts.calibration_file);
        (tmp, opts, cache)
    }

    /// Beside Whisper (agreement) Moonshine is int8 even where Whisper's
    /// calibration chose fp32 for a stage: fp32 is neither loaded nor timed
    /// (its weights would take the pair past [`AGREEMENT_MAX_MB`]).
    #[test]
    fn beside_whisper_moonshine_is_int8_without_loading_fp32() {
        let (models, _) = models_and_dev();
        let mut cpu = CpuInfo::read();
        cpu.mem_total_mb = Some(8192);
        let key = CacheKey::new(&cpu, &[], Precision::Auto, Threads::Auto, 0);
        let mut whisper = Calibration::fixed(
            key,
            cpu.clone(),
            Choice::of_forms(
                Forms {
                    encoder: ModelPrecision::Fp32,
                    decoder: ModelPrecision::Int8,
                },
                1,
            ),
        );
        whisper.fixed = false;
        assert_eq!(int8_measured_for_whisper(&whisper), None);
        let (_tmp, opts, cache) = calibration_in_tempdir(SttModel::Agreement);
        let stages = std::cell::RefCell::new(Vec::new());
        let told = |s: &str| stages.borrow_mut().push(s.to_owned());
        let (m, why) =
            measured_moonshine(&models, &opts, 1, &cpu, &cache, Some(&whisper), &told).unwrap();
        assert_eq!(m.forms(), Forms::same(ModelPrecision::Int8));
        assert!(
            why.contains("fp32 not loaded") && why.contains("250 MB"),
            "{why}"
        );
        assert_eq!(stages.take(), ["moonshine-base: loading int8"]);
        assert!(!cache.exists(), "nothing measured, nothing stored");
    }

    /// `stt.model = "agreement"`: where the models agree nothing is scored;
    /// where they differ the text both decoders prefer wins (dev_13:
    /// Whisper hears "Can I paint with a credits card here?").
    #[test]
    fn agreement_takes_the_text_both_decoders_prefer() {
        let (models, eval) = models_and_dev();
        let opts = RecognizerOptions {
            model: SttModel::Agreement,
            precision: Precision::Fp32,
            threads: Threads::Fixed(1),
            vad_model: models.join(VAD_FILE),
            ..RecognizerOptions::default()
        };
        let mut r = Recognizer::load(&models, &opts).expect("models built (make models)");
        assert_eq!(r.calibration().model, "agreement");
        let got = r.recognize(&read_clip(&eval.join("dev_00.wav"))).unwrap();
        assert_eq!(got.text, "Where is the nearest restroom?");
        let v = got.agreement.expect("a verdict");
        assert_eq!((v.winner, v.scores), (agreement::Winner::Agreed, None));
        let got = r.recognize(&read_clip(&eval.join("dev_13.wav"))).unwrap();
        let v = got.agreement.expect("a verdict");
        eprintln!("{v:?}");
        assert_eq!(got.text, "Can I pay with a credit card here?");
        assert_eq!(v.winner, agreement::Winner::MoonshineBase);
        assert_ne!(v.whisper_text, v.moonshine_text);
        let s = v.scores.expect("scored");
        assert!(s.moonshine_text.iter().sum::<f32>() > s.whisper_text.iter().sum::<f32>());
    }

    /// Whisper hears up to 200 ms before the first segment, clamped at
    /// the capture's start; the speech span is the segments' own; no
    /// segment, nothing heard; an end past the capture is clamped.
    #[test]
    fn whisper_hears_a_lead_before_the_speech_span() {
        let seg = |start, end| vad::Segment { start, end };
        assert_eq!(
            heard_span(&[seg(8_000, 12_000), seg(20_000, 30_000)], 40_000),
            (8_000 - WHISPER_LEAD_SAMPLES, 8_000, 30_000)
        );
        assert_eq!(heard_span(&[seg(1_000, 5_000)], 40_000), (0, 1_000, 5_000));
        assert_eq!(
            heard_span(&[seg(9_000, 50_000)], 40_000),
            (5_800, 9_000, 40_000)
        );
        assert_eq!(heard_span(&[], 40_000), (0, 0, 0));
    }

    /// The prediction from fixed numbers: side by side the slower model
    /// plus two scoring runs of the slower scorer; on one core everything
    /// adds.
    #[test]
    fn agreement_time_is_the_slower_model_plus_scoring() {
        assert_eq!(
            predicted_agreement_ms((60.0, 30.0, 10.0), (80.0, 50.0, 15.0), true),
            160.0
        );
        assert_eq!(
            predicted_agreement_ms((60.0, 30.0, 10.0), (40.0, 10.0, 5.0), true),
            110.0
        );
        assert_eq!(
            predicted_agreement_ms((60.0, 30.0, 10.0), (80.0, 50.0, 15.0), false),
            270.0
        );
    }

    /// `auto` refuses agreement on one core or under 1 GiB, saying why.
    #[test]
    fn agreement_needs_two_cores_and_a_gigabyte() {
        let cpu = |cores, mem| CpuInfo {
            cores,
            mem_total_mb: mem,
            ..CpuInfo::read()
        };
        assert_eq!(agreement_fits(&cpu(2, Some(1_024))), Ok(()));
        assert_eq!(agreement_fits(&cpu(4, None)), Ok(()));
        let one = agreement_fits(&cpu(1, Some(8_192))).unwrap_err();
        assert!(one.contains("1 core"), "{one}");
        let small = agreement_fits(&cpu(4, Some(512))).unwrap_err();
        assert!(small.contains("512 MB of RAM"), "{small}");
    }

    /// `stt.model = "auto"` on this machine: a budget nothing meets keeps
    /// Whisper alone, a budget of a minute takes agreement (where the board
    /// can hold it at all), and the reason says which and why.
    #[test]
    fn auto_takes_agreement_only_within_the_latency_budget() {
        let (models, eval) = models_and_dev();
        let fits = agreement_fits(&CpuInfo::read());
        for (budget, want) in [(1, "whisper-tiny"), (60_000, "agreement")] {
            let opts = RecognizerOptions {
                model: SttModel::Auto,
                latency_budget_ms: budget,
                precision: Precision::Int8,
                threads: Threads::Fixed(1),
                vad_model: models.join(VAD_FILE),
                ..RecognizerOptions::default()
            };
            let mut r = Recognizer::load(&models, &opts).expect("models built (make models)");
            let c = r.calibration().clone();
            let want = if fits.is_ok() { want } else { "whisper-tiny" };
            assert_eq!(c.model, want, "{}", c.reason);
            assert!(
                c.reason
                    .starts_with(&format!("stt.model = \"auto\": {want}")),
                "{}",
                c.reason
            );
            match &fits {
                Ok(()) => assert!(
                    c.reason
                        .contains(if budget == 1 { "over" } else { "within" }),
                    "{}",
                    c.reason
                ),
                Err(why) => assert!(c.reason.contains(why.as_str()), "{}", c.reason),
            }
            let forms = r.model_forms();
            assert_eq!(forms.1.is_some(), want == "agreement", "{forms:?}");
            let got = r.recognize(&read_clip(&eval.join("dev_00.wav"))).unwrap();
            assert_eq!(got.agreement.is_some(), want == "agreement");
            assert!(got.has_text(), "{got:?}");
        }
    }

    /// Quiet input is raised before the VAD, loud input left alone.
    #[test]
    fn quiet_utterances_are_raised_and_loud_ones_untouched() {
        let quiet: Vec<f32> = (0..100).map(|i| (i as f32 * 0.1).sin() * 0.01).collect();
        let raised = level_normalized(&quiet).expect("raised");
        let peak = raised.iter().fold(0.0f32, |m, &x| m.max(x.abs()));
        assert!(
            (peak - 0.01 * LEVEL_MAX_GAIN).abs() < 1e-3,
            "capped at +30 dB: {peak}"
        );
        let mid: Vec<f32> = quiet.iter().map(|x| x * 20.0).collect();
        let peak = level_normalized(&mid)
            .expect("raised")
            .iter()
            .fold(0.0f32, |m, &x| m.max(x.abs()));
        assert!((peak - LEVEL_TARGET_PEAK).abs() < 1e-3, "{peak}");
        let loud: Vec<f32> = quiet.iter().map(|x| x * 60.0).collect();
        assert!(level_normalized(&loud).is_none());
        assert!(level_normalized(&[0.0; 10]).is_none());
    }

    /// `stt.model = "moonshine-base"`: the same VAD trim and step hook,
    /// Moonshine behind them (the onnxruntime reference's texts).
    #[test]
    fn moonshine_behind_the_vad_gives_the_reference_transcripts() {
        let (models, eval) = models_and_dev();
        let opts = RecognizerOptions {
            model: SttModel::MoonshineBase,
            precision: Precision::Fp32,
            threads: Threads::Fixed(1),
            vad_model: models.join(VAD_FILE),
            ..RecognizerOptions::default()
        };
        let mut r = Recognizer::load(&models, &opts).expect("models built (make models)");
        assert!(r.calibration().reason.contains("moonshine-base"));
        for (file, text) in [
            ("dev_00.wav", "Where is the nearest restroom?"),
            (
                "dev_02.wav",
                "Can you show me the way to the main entrance?",
            ),
        ] {
            let got = r.recognize(&read_clip(&eval.join(file))).unwrap();
            assert_eq!(got.text, text, "{file}");
            assert!(got.speech_samples > 0, "speech found by the VAD");
        }
        let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = std::sync::Arc::clone(&calls);
        r.set_step_hook(Some(Box::new(move || {
            let n = seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if n >= 3 {
                Err("test limit")
            } else {
                Ok(())
            }
        })));
        match r.recognize(&read_clip(&eval.join("dev_01.wav"))) {
            Err(RecognizeError::Stt(SttError::Stopped(why))) => assert_eq!(why, "test limit"),
            other => panic!("{other:?}"),
        }
    }

    /// Three dev clips in every precision give the transcripts of the
    /// x86_64 fp32 run (one clip in a form the CPU does not compute
    /// natively: fp16 off aarch64 `asimdhp` checks the graph, at 20 times
    /// fp32's encoder time). `make cross-test` runs this test under
    /// qemu-aarch64 for several CPU models (`QEMU_CPU`), so every Arm
    /// kernel family tract picks (with and without dot-product, fp16 on
    /// `max`) is checked for correctness; the ISA line it prints says
    /// which family ran.
    #[test]
    fn three_dev_clips_give_the_reference_transcripts_in_every_precision() {
        let (models, eval) = models_and_dev();
        let expected = THREE_CLIPS;
        let cpu = CpuInfo::read();
        let forms = forms_to_check();
        eprintln!(
            "cpu: {:?} {:?}; tract ISA: {}; forms: {forms:?}",
            cpu.model,
            cpu.features,
            calibrate::tract_isa()
        );
        for form in forms {
            let precision = Precision::from(form);
            let opts = RecognizerOptions {
                precision,
                threads: Threads::Fixed(1),
                vad_model: models.join(VAD_FILE),
                ..RecognizerOptions::default()
            };
            let mut r = Recognizer::load(&models, &opts).expect("models built (make models)");
            let named = std::env::var_os("TALKIE_TEST_PRECISIONS").is_some();
            let native = named || cpu.computes_natively(form);
            for (file, text) in expected.into_iter().take(if native { 3 } else { 1 }) {
                let samples = read_clip(&eval.join(file));
                let got = r.recognize(&samples).unwrap();
                eprintln!(
                    "{precision:?} {file}: {:?} ({:.0} ms)",
                    got.text, got.total_ms
                );
                assert_eq!(got.text, text, "{precision:?} {file}");
            }
            if precision == Precision::Fp32 {
                // The step hook beats before every window and decoder step,
                // and stops recognition when it says so.
                let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
                let seen = std::sync::Arc::clone(&calls);
                r.set_step_hook(Some(Box::new(move || {
                    let n = seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if n >= 4 {
                        Err("test limit")
                    } else {
                        Ok(())
                    }
                })));
                let samples = read_clip(&eval.join(expected[2].0));
                match r.recognize(&samples) {
                    Err(RecognizeError::Stt(SttError::Stopped(why))) => {
                        assert_eq!(why, "test limit")
                    }
                    other => panic!("{other:?}"),
                }
                assert_eq!(calls.load(std::sync::atomic::Ordering::Relaxed), 5);
            }
        }
    }

    /// Issue 30: a stored calibration that put the int8 decoder behind the
    /// fp32 encoder is reused as it is: each stage loads in its own form
    /// (what the page's model files list) and three dev clips give their
    /// reference transcripts.
    #[test]
    fn stages_in_two_forms_load_from_the_stored_choice_and_transcribe() {
        let (models, eval) = models_and_dev();
        let tmp = tempfile::tempdir().unwrap();
        let opts = RecognizerOptions {
            model: SttModel::WhisperTiny,
            precision: Precision::Auto,
            threads: Threads::Fixed(1),
            calibration_file: tmp.path().join("calibration.json"),
            vad_model: models.join(VAD_FILE),
            ..RecognizerOptions::default()
        };
        let cpu = CpuInfo::read();
        let (_, key) = whisper_key(&models, &opts, &cpu);
        let mixed = Forms {
            encoder: ModelPrecision::Fp32,
            decoder: ModelPrecision::Int8,
        };
        let mut stored = Calibration::fixed(key, cpu, Choice::of_forms(mixed, 1));
        stored.fixed = false;
        stored.timings = vec![calibrate::Timing {
            precision: ModelPrecision::Int8,
            threads: 1,
            encoder_ms: 0.0,
            decoder_ms: 40.0,
            pruned: false,
            decoder_only: true,
        }];
        calibrate::save_cache(&opts.calibration_file, &stored).unwrap();
        let mut r = Recognizer::load(&models, &opts).expect("models built (make models)");
        assert_eq!(r.calibration().source(), "reused");
        assert_eq!(r.model_forms(), (Some(mixed), None));
        let api = r.calibration().to_json();
        assert_eq!(
            (&api["precision"], &api["decoder_precision"]),
            (&serde_json::json!("fp32"), &serde_json::json!("int8"))
        );
        for (file, text) in THREE_CLIPS {
            let got = r.recognize(&read_clip(&eval.join(file))).unwrap();
            assert_eq!(got.text, text, "{mixed} {file}");
        }
    }

    /// A stored calibration whose choice ran the fixed work far slower
    /// than it runs now was measured on a busy machine: it is measured
    /// again and the new one stored; one whose times hold is reused, only
    /// its choice timed. The stored times are absurd on purpose (a
    /// microsecond, a day), so no CPU's speed decides either outcome.
    #[test]
    fn a_calibration_stored_while_busy_is_measured_again() {
        let (models, _) = models_and_dev();
        let (_tmp, mut opts, _) = calibration_in_tempdir(SttModel::WhisperTiny);
        opts.threads = Threads::Fixed(1);
        let cpu = CpuInfo::read();
        let (precisions, key) = whisper_key(&models, &opts, &cpu);
        assert!(precisions.len() > 1, "a stored choice among several forms");
        for (ms, again) in [(1e-3, false), (86_400_000.0, true)] {
            let mut stored = Calibration::fixed(
                key.clone(),
                cpu.clone(),
                Choice::new(ModelPrecision::Int8, 1),
            );
            stored.fixed = false;
            stored.reason = "stored".into();
            stored.timings = vec![calibrate::Timing {
                precision: ModelPrecision::Int8,
                threads: 1,
                encoder_ms: ms,
                decoder_ms: ms,
                pruned: false,
                decoder_only: false,
            }];
            calibrate::save_cache(&opts.calibration_file, &stored).unwrap();
            let stages = std::cell::RefCell::new(Vec::new());
            let told = |s: &str| stages.borrow_mut().push(s.to_owned());
            let (_w, c) = load_whisper_calibrated(&models, &opts, &told).unwrap();
            let stages = stages.take();
            assert!(
                stages.contains(&"whisper-tiny: checking the stored calibration".to_owned()),
                "{stages:?}"
            );
            let timed = stages.iter().any(|s| s.starts_with("whisper-tiny: timed "));
            assert_eq!(timed, again, "{stages:?}");
            assert_eq!(c.source(), if again { "measured" } else { "reused" });
            assert_eq!(
                c.reason.contains("; measured again (the stored"),
                again,
                "{}",
                c.reason
            );
            // What the next start reads: the new measurement, or the same file.
            let back = calibrate::load_cache(&opts.calibration_file, &key).unwrap();
            assert_eq!(back.reason, c.reason);
            assert_eq!(back.timings == stored.timings, !again);
        }
    }

    /// Issue 31: with `stt.precision = "auto"` Moonshine's form is timed
    /// once, stored beside the calibration file, and reused while its key
    /// holds (no fp32 load, no timing); another thread count is another
    /// key, which the stored file does not answer.
    #[test]
    fn moonshine_form_is_measured_once_then_reused() {
        let (models, _) = models_and_dev();
        // The memory rule is the caller's CpuInfo: this one says 8 GiB, so
        // both forms are candidates on any build machine (under 1 GiB only
        // int8 would be, and nothing would be measured or stored).
        let mut cpu = CpuInfo::read();
        cpu.mem_total_mb = Some(8192);
        assert!(!cpu.low_memory());
        let (tmp, opts, cache) = calibration_in_tempdir(SttModel::MoonshineBase);
        assert_eq!(cache, tmp.path().join("calibration.moonshine.json"));
        let stages = std::cell::RefCell::new(Vec::new());
        let told = |s: &str| stages.borrow_mut().push(s.to_owned());
        let (_, why) = measured_moonshine(&models, &opts, 1, &cpu, &cache, None, &told).unwrap();
        assert!(why.contains(" measured (encoder int8 "), "{why}");
        // Each stage is told as it begins (the service extends systemd's
        // start timeout on each).
        let mut want = vec![
            "moonshine-base: loading fp32",
            "moonshine-base: timing fp32",
            "moonshine-base: loading int8",
            "moonshine-base: timing int8",
        ];
        if !why.starts_with("int8 measured") {
            want.push("moonshine-base: loading ");
        }
        let got = stages.take();
        assert_eq!(got.len(), want.len(), "{got:?}");
        for (g, w) in got.iter().zip(&want) {
            assert!(g.starts_with(w), "{got:?}");
        }
        let stored: Calibration = serde_json::from_slice(&std::fs::read(&cache).unwrap()).unwrap();
        assert_eq!(stored.model, "moonshine-base");
        let forms: Vec<_> = stored.timings.iter().map(|t| t.precision).collect();
        assert_eq!(forms, [ModelPrecision::Int8, ModelPrecision::Fp32]);
        assert!(stored.timings.iter().all(|t| t.total_ms() > 0.0));
        // Each stage in the form the rule gives for its own times.
        let (i, f) = (&stored.timings[0], &stored.timings[1]);
        let rule = |int8: f64, fp32: f64| {
            if int8 <= fp32 * 1.1 {
                ModelPrecision::Int8
            } else {
                ModelPrecision::Fp32
            }
        };
        assert_eq!(
            stored.chosen.forms(),
            Forms {
                encoder: rule(i.encoder_ms, f.encoder_ms),
                decoder: rule(i.decoder_ms, f.decoder_ms),
            },
            "{why}"
        );

        let (m, why) = measured_moonshine(&models, &opts, 1, &cpu, &cache, None, &told).unwrap();
        assert!(why.contains("as measured before"), "{why}");
        assert_eq!(
            stages.take(),
            [format!("moonshine-base: loading {}", m.forms())]
        );
        assert_eq!(m.forms(), stored.chosen.forms());

        let other = moonshine_key(&cpu, &opts, 2);
        assert_ne!(other, stored.key);
        assert!(calibrate::load_cache(&cache, &other).is_none());
    }

    /// Issue 30: every vocabulary-projection kernel this CPU runs gives
    /// the portable loop's transcripts on every dev clip, bit for bit: the
    /// kernels sum integers exactly ([`super::super::dot`]), so even the
    /// mean log-probability is the same float. int8, where any difference
    /// in the logits would show first (each activation is quantized again;
    /// with the f32 kernels before, dev_07 read "gardens" or "garden" by
    /// kernel). Under qemu the synthetic checks of [`super::super::dot`]
    /// cover the Arm kernels; this one runs natively.
    #[test]
    fn every_vocab_kernel_gives_the_portable_transcripts_on_the_dev_set() {
        use super::super::dot::Kernel;
        let (models, dev) = models_and_dev();
        let opts = RecognizerOptions {
            precision: Precision::from(ModelPrecision::Int8),
            threads: Threads::Fixed(1),
            vad_model: models.join(VAD_FILE),
            ..RecognizerOptions::default()
        };
        let mut r = Recognizer::load(&models, &opts).expect("models built (make models)");
        let kernels = Kernel::available();
        let mut clips: Vec<_> = std::fs::read_dir(&dev)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                    n.starts_with("dev_") && n.ends_with(".wav") && n != "dev_long.wav"
                })
            })
            .collect();
        clips.sort();
        assert!(
            clips.len() >= 30,
            "{} dev clips in {}",
            clips.len(),
            dev.display()
        );
        for clip in &clips {
            let samples = read_clip(clip);
            assert!(r.set_vocab_kernel(Kernel::Portable));
            let want = r.recognize(&samples).unwrap();
            for &k in kernels.iter().filter(|&&k| k != Kernel::Portable) {
                assert!(r.set_vocab_kernel(k));
                let got = r.recognize(&samples).unwrap();
                assert_eq!(got.text, want.text, "{} on {}", k.name(), clip.display());
                assert_eq!(
                    got.transcript.avg_logprob.to_bits(),
                    want.transcript.avg_logprob.to_bits(),
                    "{} on {}: the same logits give the same log-probability",
                    k.name(),
                    clip.display()
                );
            }
        }
        eprintln!(
            "kernels {:?} agree on {} clips",
            kernels.iter().map(|k| k.name()).collect::<Vec<_>>(),
            clips.len()
        );
    }

    /// Issue 19: a speculative run on the capture cut at the listener's
    /// pause gives the same words as the whole capture after release,
    /// when no speech follows the cut. Over every dev clip, followed by
    /// 800 ms of silence (a release 800 ms after the clip ends), cut where
    /// the listener's [`crate::vad::SpeechSpan`] cuts.
    #[test]
    fn a_prefix_cut_at_the_pause_gives_the_whole_captures_words_on_every_dev_clip() {
        let (models, dev) = models_and_dev();
        let opts = RecognizerOptions {
            precision: Precision::Fp32,
            threads: Threads::Fixed(1),
            vad_model: models.join(VAD_FILE),
            ..RecognizerOptions::default()
        };
        let mut r = Recognizer::load(&models, &opts).expect("models built (make models)");
        let mut vad = SileroVad::load(&opts.vad_model).unwrap();
        let after = crate::vad::ms_to_samples(100); // ptt.speculate_after_ms
        let mut clips: Vec<_> = std::fs::read_dir(&dev)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "wav"))
            // 60 s: longer than any press (audio.max_utterance_s).
            .filter(|p| !p.ends_with("dev_long.wav"))
            .collect();
        clips.sort();
        assert!(clips.len() >= 31, "dev clips in {}", dev.display());
        let (mut resumed, mut cuts_total) = (0, 0);
        for clip in &clips {
            let mut full = read_clip(clip);
            full.resize(full.len() + 12_800, 0.0);
            // As the listener does: cut at each pause; a cut whose span
            // changes (speech came back) is dropped and a later pause cuts again.
            vad.reset();
            let mut span = crate::vad::SpeechSpan::new(opts.segmenter.clone());
            let mut cut: Option<(u64, crate::vad::Span)> = None;
            let mut chunk = [0.0f32; crate::vad::CHUNK];
            for block in full.chunks(crate::vad::CHUNK) {
                chunk[..block.len()].copy_from_slice(block);
                chunk[block.len()..].fill(0.0);
                span.push(vad.prob(&chunk).unwrap());
                if cut.is_some_and(|(_, s)| span.span() != Some(s)) {
                    cut = None;
                    resumed += 1;
                }
                if cut.is_none() {
                    cut = span.pause(after);
                    cuts_total += usize::from(cut.is_some());
                }
            }
            let (at, s) = cut.unwrap_or_else(|| panic!("{}: no pause found", clip.display()));
            assert_eq!(
                span.span_at(full.len() as u64),
                Some(s),
                "{}",
                clip.display()
            );
            let prefix = r.recognize(&full[..at as usize]).unwrap();
            let whole = r.recognize(&full).unwrap();
            eprintln!(
                "{}: cut at {} of {} samples: {:?}",
                clip.file_name().unwrap().to_string_lossy(),
                at,
                full.len(),
                prefix.text
            );
            assert!(prefix.has_text(), "{}", clip.display());
            assert_eq!(prefix.text, whole.text, "{}", clip.display());
            assert_eq!(
                prefix.speech_samples,
                whole.speech_samples,
                "{}",
                clip.display()
            );
        }
        eprintln!(
            "{} clips, {cuts_total} cuts, {resumed} resumed",
            clips.len()
        );
    }
}
