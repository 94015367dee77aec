//! `stt.precision = "auto"` and `stt.threads = "auto"`: choose the model
//! form and the thread count on the device, by measurement.
//!
//! tract picks its matrix kernels from the CPU at run time, and the forms
//! differ by an order of magnitude between CPUs: int8 runs through an i32
//! kernel about 16 times slower than fp32 on an AVX2-only x86, and through
//! dot-product kernels on a Cortex-A76. So at start-up every available
//! form is timed on a fixed input for each candidate thread count
//! ([`measure`]), a pure rule picks one ([`decide`]), and the result is
//! kept in `stt.calibration_file` under a key of everything that could
//! change it ([`CacheKey`]: talkie version, model sha256s, CPU model and
//! features, cores, settings), so the next start reuses it.
//!
//! The rule: the fastest form wins, but forms within 10 % of it count as
//! equal and the one with less memory is kept. On a board with less than
//! 1 GiB of RAM (Zero 2 W, Pi 3: 512 MB shared with the OS) memory weighs
//! more: the band is 25 %. Within a form, the fewest threads within 5 % of
//! its best time are kept, so cores are not taken for nothing.

use crate::models;
use crate::options::{Forms, ModelPrecision, Precision, Threads};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// The calibration's question, shaped like a real one (issue 30): 3 s of
/// audio (300 mel frames), encoded in the window a press of that length
/// gets — the audio plus `stt.encoder_margin_frames` (512 by default), so
/// 812 frames — then 12 decoder steps (2 prompt tokens and the ~10 tokens
/// of a 2–4 s kiosk question; the dev set averages 9.6). Before, the window
/// was 300 frames in all, which weighed the encoder at a third of what a
/// visitor waits for and let the decoder's thread preference decide.
pub const CAL_FRAMES: usize = 300;
pub const CAL_STEPS: usize = 12;
/// Forms within this fraction of the fastest count as equally fast.
pub const TIE_BAND: f64 = 0.10;
/// [`TIE_BAND`] on boards with less than [`LOW_MEMORY_MB`] of RAM.
pub const TIE_BAND_LOW_MEMORY: f64 = 0.25;
pub const LOW_MEMORY_MB: u64 = 1024;
/// Thread counts within this fraction of a form's best count as equal.
pub const THREADS_BAND: f64 = 0.05;
/// A candidate whose warm-up alone takes longer than this many times the
/// best full measurement cannot win and is not measured further.
pub const PRUNE_FACTOR: f64 = 1.0;

/// CPU features that decide which tract kernels run.
pub const RELEVANT_FEATURES: &[&str] = &[
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512_vnni",
    "avx_vnni",
    "asimd",
    "asimddp",
    "asimdhp",
    "fphp",
    "i8mm",
    "neon",
    "vfpv4",
];

/// What this CPU is, as far as speed settings care.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuInfo {
    /// `model name` (x86), or the core's name from `CPU part` (Arm) with the
    /// board's `Model` line when the kernel gives one.
    pub model: String,
    pub arch: String,
    /// The [`RELEVANT_FEATURES`] this CPU has.
    pub features: Vec<String>,
    /// Online cores.
    pub cores: usize,
    /// `MemTotal`, when readable.
    pub mem_total_mb: Option<u64>,
    /// The instruction sets tract's kernel selection found on this CPU
    /// (`aarch64+aarch64_dotprod`, `x86_64+avx+avx2+fma…`): which kernel
    /// family runs (dot-product int8 kernels only with `dotprod`).
    #[serde(default)]
    pub tract_isa: String,
    /// The vocabulary projection's kernel ([`super::dot::Kernel::best`]):
    /// `avx512-vnni`, `avx-vnni`, `avx2`, `neon-dot`, `neon` or `portable`
    /// (every one gives the same logits; the fastest is chosen).
    #[serde(default)]
    pub vocab_kernel: String,
    /// Each kernel's median µs per decoder step on the real matrix, timed
    /// at load; the fastest is [`CpuInfo::vocab_kernel`].
    #[serde(default)]
    pub vocab_kernel_us: BTreeMap<String, u64>,
    /// Threads the projection is split over (measured at load: the
    /// encoder's pool when faster than one thread; 0 or 1 = one).
    #[serde(default)]
    pub vocab_threads: usize,
    /// KB of the projection's matrix in transparent huge pages
    /// ([`crate::hugepages`]; 0 = none, all in small pages).
    #[serde(default)]
    pub vocab_huge_kb: u64,
}

/// tract's own view of the CPU: the ISA set its kernel dispatch uses.
pub fn tract_isa() -> String {
    let names: Vec<&str> = tract_linalg::isa::native()
        .iter()
        .map(|i| i.name())
        .collect();
    names.join("+")
}

/// Arm core names by `CPU part` (implementer 0x41).
fn arm_core(part: &str) -> Option<&'static str> {
    Some(match part.trim().to_ascii_lowercase().as_str() {
        "0xd03" => "Cortex-A53",
        "0xd04" => "Cortex-A35",
        "0xd05" => "Cortex-A55",
        "0xd07" => "Cortex-A57",
        "0xd08" => "Cortex-A72",
        "0xd09" => "Cortex-A73",
        "0xd0a" => "Cortex-A75",
        "0xd0b" => "Cortex-A76",
        "0xd0d" => "Cortex-A77",
        "0xd41" => "Cortex-A78",
        "0xc07" => "Cortex-A7",
        "0xc0f" => "Cortex-A15",
        _ => return None,
    })
}

impl CpuInfo {
    /// Read `/proc/cpuinfo` and `/proc/meminfo` of this machine.
    pub fn read() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let cpuinfo = read_small("/proc/cpuinfo");
        let meminfo = read_small("/proc/meminfo");
        Self {
            tract_isa: tract_isa(),
            vocab_kernel: super::dot::Kernel::best().name().to_owned(),
            vocab_kernel_us: BTreeMap::new(),
            vocab_threads: 1,
            vocab_huge_kb: 0,
            ..Self::parse(&cpuinfo, &meminfo, std::env::consts::ARCH, cores)
        }
    }

    /// The pure part of [`CpuInfo::read`].
    pub fn parse(cpuinfo: &str, meminfo: &str, arch: &str, cores: usize) -> Self {
        let field = |name: &str| {
            cpuinfo.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == name).then(|| v.trim().to_owned())
            })
        };
        let flags = field("flags")
            .or_else(|| field("Features"))
            .unwrap_or_default();
        let have: Vec<&str> = flags.split_whitespace().collect();
        let features = RELEVANT_FEATURES
            .iter()
            .filter(|f| have.contains(f))
            .map(|f| (*f).to_owned())
            .collect();
        let core = field("CPU part").and_then(|p| arm_core(&p));
        let model = match (field("model name"), core, field("Model")) {
            (Some(m), _, _) if !m.is_empty() && !m.starts_with("ARMv") => m,
            (_, Some(c), Some(board)) => format!("{c} ({board})"),
            (_, Some(c), None) => c.to_owned(),
            (_, None, Some(board)) => board,
            (m, None, None) => m.unwrap_or_else(|| "unknown".to_owned()),
        };
        let mem_total_mb = meminfo.lines().find_map(|l| {
            let rest = l.strip_prefix("MemTotal:")?;
            let kb: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
            Some(kb / 1024)
        });
        Self {
            model,
            arch: arch.to_owned(),
            features,
            cores: cores.max(1),
            mem_total_mb,
            tract_isa: String::new(),
            vocab_kernel: String::new(),
            vocab_kernel_us: BTreeMap::new(),
            vocab_threads: 1,
            vocab_huge_kb: 0,
        }
    }

    pub fn has(&self, feature: &str) -> bool {
        self.features.iter().any(|f| f == feature)
    }

    /// Whether this CPU computes `form` natively. fp16 needs aarch64's
    /// half-precision vector arithmetic (`asimdhp`, which tract also reads
    /// before it enables its fp16 kernels); elsewhere tract widens every
    /// operand and the form only costs time, so `auto` never tries it there.
    pub fn computes_natively(&self, form: ModelPrecision) -> bool {
        match form {
            ModelPrecision::Fp16 => self.arch == "aarch64" && self.has("asimdhp"),
            ModelPrecision::Fp32 | ModelPrecision::Int8 => true,
        }
    }

    /// Less than [`LOW_MEMORY_MB`] of RAM: memory weighs more in [`decide`].
    pub fn low_memory(&self) -> bool {
        self.mem_total_mb.is_some_and(|m| m < LOW_MEMORY_MB)
    }
}

/// A text file of the kernel's, bounded (missing → empty).
fn read_small(path: &str) -> String {
    use std::io::Read;
    let mut s = String::new();
    if let Ok(f) = std::fs::File::open(path) {
        let _ = f.take(1 << 20).read_to_string(&mut s);
    }
    s
}

/// Thread counts to try for `setting` on `cores` cores: the fixed number,
/// or 1 to the cores (cores − 1 from 4 cores on, so the audio threads keep
/// one), largest first.
pub fn thread_candidates(setting: Threads, cores: usize) -> Vec<usize> {
    match setting {
        Threads::Fixed(n) => vec![n.max(1) as usize],
        Threads::Auto => {
            let max = if cores >= 4 { cores - 1 } else { cores.max(1) };
            (1..=max).rev().collect()
        }
    }
}

/// Forms to try: the fixed one, or every form whose files are in `dir`
/// and that `cpu` computes natively ([`CpuInfo::computes_natively`]: fp16
/// only with aarch64's `asimdhp`).
pub fn precision_candidates(setting: Precision, dir: &Path, cpu: &CpuInfo) -> Vec<ModelPrecision> {
    match setting.fixed() {
        Some(p) => vec![p],
        None => ModelPrecision::ALL
            .into_iter()
            .filter(|&p| cpu.computes_natively(p))
            .filter(|p| {
                ["encoder", "decoder"].iter().all(|part| {
                    dir.join(format!("whisper_{part}{}.onnx", p.suffix()))
                        .exists()
                })
            })
            .collect(),
    }
}

/// One measured candidate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Timing {
    pub precision: ModelPrecision,
    pub threads: usize,
    pub encoder_ms: f64,
    pub decoder_ms: f64,
    /// Only the short warm-up ran: it alone took longer than the best full
    /// measurement, so the times are of the warm-up and the candidate lost.
    #[serde(default)]
    pub pruned: bool,
    /// Only the decoder was timed, in full, against cross-attention K/V
    /// of the calibration's length (`encoder_ms` is 0): the form's encoder
    /// was pruned, but its decoder may still be the fastest (issue 30).
    #[serde(default)]
    pub decoder_only: bool,
}

impl Timing {
    pub fn total_ms(&self) -> f64 {
        self.encoder_ms + self.decoder_ms
    }
}

/// What calibration chose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Choice {
    /// The encoder's form (and the decoder's unless
    /// [`Choice::decoder_precision`] says otherwise).
    pub precision: ModelPrecision,
    /// The decoder's form when calibration found another form's decoder
    /// faster behind this encoder; `None` = as `precision`.
    #[serde(default)]
    pub decoder_precision: Option<ModelPrecision>,
    /// Threads of the encoder (and of the decoder unless
    /// [`Choice::decoder_threads`] says otherwise).
    pub threads: usize,
    /// Threads of the decoder when calibration found a split faster (the
    /// encoder's large products gain from every core, the decoder's small
    /// ones lose to the second thread's overhead); 0 = as `threads`.
    #[serde(default)]
    pub decoder_threads: usize,
}

impl Choice {
    /// One form for both stages, one thread count.
    pub fn new(precision: ModelPrecision, threads: usize) -> Self {
        Self {
            precision,
            decoder_precision: None,
            threads,
            decoder_threads: 0,
        }
    }

    /// `forms` (the decoder's only when it differs), one thread count.
    pub fn of_forms(forms: Forms, threads: usize) -> Self {
        Self {
            decoder_precision: (forms.decoder != forms.encoder).then_some(forms.decoder),
            ..Self::new(forms.encoder, threads)
        }
    }

    /// The form of each stage.
    pub fn forms(&self) -> Forms {
        Forms {
            encoder: self.precision,
            decoder: self.decoder_precision.unwrap_or(self.precision),
        }
    }

    /// The decoder's thread count.
    pub fn decoder_threads(&self) -> usize {
        if self.decoder_threads == 0 {
            self.threads
        } else {
            self.decoder_threads
        }
    }
}

/// The best thread count of each form (fewest within [`THREADS_BAND`]).
fn best_per_precision(timings: &[Timing]) -> BTreeMap<ModelPrecision, &Timing> {
    let mut best: BTreeMap<ModelPrecision, &Timing> = BTreeMap::new();
    for p in ModelPrecision::ALL {
        let of_p: Vec<&Timing> = timings
            .iter()
            .filter(|t| t.precision == p && !t.pruned && !t.decoder_only)
            .collect();
        let Some(fastest) = of_p
            .iter()
            .map(|t| t.total_ms())
            .min_by(|a, b| a.total_cmp(b))
        else {
            continue;
        };
        if let Some(t) = of_p
            .iter()
            .filter(|t| t.total_ms() <= fastest * (1.0 + THREADS_BAND))
            .min_by_key(|t| t.threads)
        {
            best.insert(p, t);
        }
    }
    best
}

/// The rule of this module's doc: timings and each form's memory (model
/// bytes) in, choice and a sentence saying why out. `None` without a
/// complete timing.
pub fn decide(
    timings: &[Timing],
    memory: &BTreeMap<ModelPrecision, u64>,
    low_memory: bool,
) -> Option<(Choice, String)> {
    let best = best_per_precision(timings);
    let fastest = best
        .values()
        .min_by(|a, b| a.total_ms().total_cmp(&b.total_ms()))?;
    let band = if low_memory {
        TIE_BAND_LOW_MEMORY
    } else {
        TIE_BAND
    };
    let limit = fastest.total_ms() * (1.0 + band);
    let mem = |p: ModelPrecision| memory.get(&p).copied().unwrap_or(u64::MAX);
    let chosen = best
        .values()
        .filter(|t| t.total_ms() <= limit)
        .min_by(|a, b| {
            mem(a.precision)
                .cmp(&mem(b.precision))
                .then(a.total_ms().total_cmp(&b.total_ms()))
        })?;
    let why = if chosen.precision == fastest.precision {
        format!(
            "fastest ({:.0} ms on the calibration input)",
            chosen.total_ms()
        )
    } else {
        format!(
            "within {:.0} % of the fastest ({} {:.0} ms) and smaller in memory",
            band * 100.0,
            fastest.precision,
            fastest.total_ms()
        )
    };
    let choice = Choice::new(chosen.precision, chosen.threads);
    Some(split_stages(timings, choice, chosen.total_ms(), why))
}

/// Settings per stage (issue 30): the chosen form's encoder on its
/// fastest thread count, and the fastest decoder measured — of any form
/// (a decoder-only timing counts: [`Timing::decoder_only`]), on any thread
/// count, the fewest threads within [`THREADS_BAND`] of it — when that
/// beats the chosen single setting by more than [`THREADS_BAND`]. The encoder's large products gain from every core,
/// the decoder's small ones lose to a second thread; and on an AVX2-only
/// x86 the int8 decoder is the fastest behind tract's fp32 encoder.
fn split_stages(
    timings: &[Timing],
    choice: Choice,
    total_ms: f64,
    why: String,
) -> (Choice, String) {
    let enc = timings
        .iter()
        .filter(|t| t.precision == choice.precision && !t.pruned && !t.decoder_only)
        .min_by(|a, b| a.encoder_ms.total_cmp(&b.encoder_ms));
    // The fastest decoder; within THREADS_BAND of it the fewest threads
    // (a second thread then serves the projection), then the encoder's form.
    let fastest = timings
        .iter()
        .filter(|t| !t.pruned)
        .map(|t| t.decoder_ms)
        .min_by(f64::total_cmp);
    let dec = timings
        .iter()
        .filter(|t| !t.pruned)
        .filter(|t| fastest.is_some_and(|f| t.decoder_ms <= f * (1.0 + THREADS_BAND)))
        .min_by(|a, b| {
            a.threads
                .cmp(&b.threads)
                .then((a.precision != choice.precision).cmp(&(b.precision != choice.precision)))
                .then(a.decoder_ms.total_cmp(&b.decoder_ms))
        });
    match (enc, dec) {
        (Some(e), Some(d))
            if (e.threads, e.precision) != (d.threads, d.precision)
                && e.encoder_ms + d.decoder_ms < total_ms * (1.0 - THREADS_BAND) =>
        {
            let split = e.encoder_ms + d.decoder_ms;
            let choice = Choice {
                precision: choice.precision,
                decoder_precision: (d.precision != e.precision).then_some(d.precision),
                threads: e.threads,
                decoder_threads: if d.threads == e.threads { 0 } else { d.threads },
            };
            let form = if d.precision == e.precision {
                String::new()
            } else {
                format!("{} ", d.precision)
            };
            (
                choice,
                format!(
                    "{why}; encoder on {} thread(s), {form}decoder on {} ({split:.0} ms against {total_ms:.0} ms in one setting)",
                    e.threads, d.threads
                ),
            )
        }
        _ => (choice, why),
    }
}

/// Everything that, when it changes, makes a stored calibration stale.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheKey {
    pub talkie: String,
    /// sha256 of every candidate model file (from the manifest the files
    /// are verified against).
    pub models: BTreeMap<String, String>,
    pub cpu_model: String,
    pub arch: String,
    pub features: Vec<String>,
    pub tract_isa: String,
    pub cores: usize,
    pub precision: String,
    pub threads: String,
    pub margin_frames: u32,
}

impl CacheKey {
    pub fn new(
        cpu: &CpuInfo,
        candidates: &[ModelPrecision],
        precision: Precision,
        threads: Threads,
        margin_frames: u32,
    ) -> Self {
        let suffixes: Vec<&str> = candidates.iter().map(|p| p.suffix()).collect();
        let models = models::entries()
            .unwrap_or_default()
            .into_iter()
            .filter(|e| e.kind.starts_with("stt-"))
            .filter(|e| {
                suffixes.iter().any(|s| {
                    e.file == format!("whisper_encoder{s}.onnx")
                        || e.file == format!("whisper_decoder{s}.onnx")
                })
            })
            .map(|e| (e.file, e.sha256))
            .collect();
        Self {
            talkie: env!("CARGO_PKG_VERSION").to_owned(),
            models,
            cpu_model: cpu.model.clone(),
            arch: cpu.arch.clone(),
            features: cpu.features.clone(),
            tract_isa: cpu.tract_isa.clone(),
            cores: cpu.cores,
            precision: precision.as_str().to_owned(),
            threads: match threads {
                Threads::Auto => "auto".to_owned(),
                Threads::Fixed(n) => n.to_string(),
            },
            margin_frames,
        }
    }
}

/// A stored calibration is measured again when the setting it chose now
/// runs the fixed work more than this many times faster than it was
/// timed: the machine was busy when it was measured. A first start while a
/// build ran on the same two cores (docs/performance.md) timed int8 on 2
/// threads "pruned (> 326 ms)" and chose fp32 on 1 at 269 ms, where a
/// quiet start times int8 on 2 at 86 ms; stored, that choice would stay
/// until the key changed. Run-to-run noise on a quiet machine is well
/// inside this factor.
pub const STALE_FACTOR: f64 = 1.5;

/// Whether `fresh` (the chosen setting's encoder and decoder ms on the
/// fixed work, timed now) says that `stored` (the same, as calibration
/// timed it) was measured on a busy machine ([`STALE_FACTOR`]).
pub fn measured_busy(stored: (f64, f64), fresh: (f64, f64)) -> bool {
    let (stored, fresh) = (stored.0 + stored.1, fresh.0 + fresh.1);
    fresh > 0.0 && stored > STALE_FACTOR * fresh
}

/// How the precision and threads in use were decided.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// The recognizer (`stt.model`): `whisper-tiny` or `moonshine-base`.
    #[serde(default = "whisper_tiny")]
    pub model: String,
    pub key: CacheKey,
    pub cpu: CpuInfo,
    pub timings: Vec<Timing>,
    pub chosen: Choice,
    pub reason: String,
    /// Wall time of the measurement (0 when fixed by configuration).
    pub calibration_ms: f64,
    /// Loaded from `stt.calibration_file` rather than measured now.
    #[serde(skip)]
    pub reused: bool,
    /// Nothing measured: both settings were fixed in the configuration.
    #[serde(skip)]
    pub fixed: bool,
}

fn whisper_tiny() -> String {
    crate::options::SttModel::WhisperTiny.as_str().to_owned()
}

impl Calibration {
    /// For fixed settings: nothing measured.
    pub fn fixed(key: CacheKey, cpu: CpuInfo, chosen: Choice) -> Self {
        Self {
            model: whisper_tiny(),
            key,
            cpu,
            timings: Vec::new(),
            chosen,
            reason: "fixed by configuration".to_owned(),
            calibration_ms: 0.0,
            reused: false,
            fixed: true,
        }
    }

    /// The chosen setting's (encoder ms, decoder ms) on the fixed work as
    /// calibration timed them: the encoder's from its form and threads'
    /// full timing, the decoder's from its own form and threads (a
    /// decoder-only timing counts). `None` where either stage was not
    /// timed in full (fixed by configuration, the only candidate, or a
    /// timing the file does not hold).
    pub fn chosen_ms(&self) -> Option<(f64, f64)> {
        let full = |t: &&Timing| !t.pruned;
        let encoder = self.timings.iter().filter(full).find(|t| {
            !t.decoder_only
                && t.precision == self.chosen.precision
                && t.threads == self.chosen.threads
        })?;
        let forms = self.chosen.forms();
        let decoder =
            self.timings.iter().filter(full).find(|t| {
                t.precision == forms.decoder && t.threads == self.chosen.decoder_threads()
            })?;
        Some((encoder.encoder_ms, decoder.decoder_ms))
    }

    /// `fp32/2=151ms fp32/1=203ms int8/2=pruned(>2304ms)` for the log.
    pub fn timings_line(&self) -> String {
        let parts: Vec<String> = self
            .timings
            .iter()
            .map(|t| {
                if t.decoder_only {
                    format!(
                        "{}/{}=decoder:{:.0}ms",
                        t.precision, t.threads, t.decoder_ms
                    )
                } else if t.pruned {
                    format!(
                        "{}/{}=pruned(>{:.0}ms)",
                        t.precision,
                        t.threads,
                        t.total_ms()
                    )
                } else {
                    format!("{}/{}={:.0}ms", t.precision, t.threads, t.total_ms())
                }
            })
            .collect();
        parts.join(" ")
    }

    /// How it was decided, in one word: `measured`, `reused` or `fixed`.
    pub fn source(&self) -> &'static str {
        if self.fixed {
            "fixed"
        } else if self.reused {
            "reused"
        } else {
            "measured"
        }
    }

    /// The status page's and `/api/v1/status`'s view.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "model": self.model,
            "precision": self.chosen.precision.as_str(),
            "decoder_precision": self.chosen.forms().decoder.as_str(),
            "threads": self.chosen.threads,
            "decoder_threads": self.chosen.decoder_threads(),
            "source": self.source(),
            "reason": self.reason,
            "calibration_ms": self.calibration_ms,
            "timings": self.timings.iter().map(|t| serde_json::json!({
                "precision": t.precision.as_str(),
                "threads": t.threads,
                "encoder_ms": t.encoder_ms,
                "decoder_ms": t.decoder_ms,
                "total_ms": t.total_ms(),
                "pruned": t.pruned,
                "decoder_only": t.decoder_only,
            })).collect::<Vec<_>>(),
            "cpu": {
                "model": self.cpu.model,
                "arch": self.cpu.arch,
                "cores": self.cpu.cores,
                "features": self.cpu.features,
                "tract_isa": self.cpu.tract_isa,
                "vocab_kernel": self.cpu.vocab_kernel,
                "vocab_kernel_us": self.cpu.vocab_kernel_us,
                "vocab_threads": self.cpu.vocab_threads.max(1),
                "vocab_huge_kb": self.cpu.vocab_huge_kb,
                "mem_total_mb": self.cpu.mem_total_mb,
            },
        })
    }
}

/// Largest calibration file read (a real one is about 2 KB).
const MAX_CACHE_BYTES: u64 = 64 * 1024;

/// The stored calibration when it exists, parses and its key is `key`;
/// anything else (missing, unreadable, corrupt, stale) is `None`.
pub fn load_cache(path: &Path, key: &CacheKey) -> Option<Calibration> {
    use std::io::Read;
    let file = std::fs::File::open(path).ok()?;
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let mut bytes = Vec::new();
    file.take(MAX_CACHE_BYTES).read_to_end(&mut bytes).ok()?;
    let mut c: Calibration = serde_json::from_slice(&bytes).ok()?;
    if &c.key != key || c.timings.is_empty() {
        return None;
    }
    c.reused = true;
    Some(c)
}

/// Write the calibration atomically (temporary file, then rename), so a
/// crash or a second writer never leaves half a file.
pub fn save_cache(path: &Path, c: &Calibration) -> std::io::Result<()> {
    let json = serde_json::to_vec_pretty(c).map_err(std::io::Error::other)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    std::fs::write(&tmp, json)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// Bytes of a form's encoder and decoder files in `dir`: what the memory
/// rule compares.
pub fn model_bytes(dir: &Path, p: ModelPrecision) -> u64 {
    ["encoder", "decoder"]
        .iter()
        .filter_map(|part| {
            std::fs::metadata(dir.join(format!("whisper_{part}{}.onnx", p.suffix()))).ok()
        })
        .map(|m| m.len())
        .sum()
}

/// What one timing call runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Run {
    /// A short version of the fixed work (a quarter of the audio, one
    /// decoder step): tract's lazy set-up, and the pruning test.
    WarmUp,
    /// The fixed work: [`CAL_FRAMES`] of audio, [`CAL_STEPS`] decoder steps.
    Full,
    /// The decoder's [`CAL_STEPS`] steps alone, against cross-attention
    /// K/V of the length [`CAL_FRAMES`] gives (the encoder is not run).
    Decoder,
}

/// Measure every candidate with `time(precision, threads, run)`, which
/// runs the fixed work ([`Run`]) and returns (encoder ms, decoder ms).
/// Candidates are taken form by form, most threads first; a candidate
/// whose warm-up alone is slower than the best full time so far is
/// recorded as pruned and the form's smaller thread counts are skipped
/// (fewer threads are not faster) — but its decoder is then timed alone on
/// every thread count ([`Timing::decoder_only`]), since [`decide`] may
/// put it behind another form's encoder.
pub fn measure<E>(
    precisions: &[ModelPrecision],
    threads: &[usize],
    mut time: impl FnMut(ModelPrecision, usize, Run) -> Result<(f64, f64), E>,
    mut progress: impl FnMut(&Timing),
) -> Result<Vec<Timing>, E> {
    let mut out: Vec<Timing> = Vec::new();
    for &p in precisions {
        for &t in threads {
            let best = out
                .iter()
                .filter(|t| !t.pruned && !t.decoder_only)
                .map(Timing::total_ms)
                .min_by(|a, b| a.total_cmp(b));
            let (we, wd) = time(p, t, Run::WarmUp)?;
            if best.is_some_and(|b| we + wd > b * PRUNE_FACTOR) {
                let timing = Timing {
                    precision: p,
                    threads: t,
                    encoder_ms: we,
                    decoder_ms: wd,
                    pruned: true,
                    decoder_only: false,
                };
                progress(&timing);
                out.push(timing);
                for &dt in threads {
                    // Two runs, the faster kept, as below.
                    let (_, d1) = time(p, dt, Run::Decoder)?;
                    let (_, d2) = time(p, dt, Run::Decoder)?;
                    let timing = Timing {
                        precision: p,
                        threads: dt,
                        encoder_ms: 0.0,
                        decoder_ms: d1.min(d2),
                        pruned: false,
                        decoder_only: true,
                    };
                    progress(&timing);
                    out.push(timing);
                }
                break;
            }
            // Two runs, the faster kept: the first may still pay for
            // tract's lazy set-up at this thread count.
            let (e1, d1) = time(p, t, Run::Full)?;
            let (e2, d2) = time(p, t, Run::Full)?;
            let (encoder_ms, decoder_ms) = if e1 + d1 <= e2 + d2 {
                (e1, d1)
            } else {
                (e2, d2)
            };
            let timing = Timing {
                precision: p,
                threads: t,
                encoder_ms,
                decoder_ms,
                pruned: false,
                decoder_only: false,
            };
            progress(&timing);
            out.push(timing);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(p: ModelPrecision, threads: usize, ms: f64) -> Timing {
        Timing {
            precision: p,
            threads,
            encoder_ms: ms * 0.6,
            decoder_ms: ms * 0.4,
            pruned: false,
            decoder_only: false,
        }
    }

    fn mem() -> BTreeMap<ModelPrecision, u64> {
        BTreeMap::from([(ModelPrecision::Fp32, 150), (ModelPrecision::Int8, 40)])
    }

    use ModelPrecision::{Fp16, Fp32, Int8};

    #[test]
    fn the_fastest_form_wins_when_the_other_is_far_behind() {
        // The AVX2-only EPYC: int8 16 times slower.
        let ts = [t(Fp32, 2, 300.0), t(Fp32, 1, 500.0), t(Int8, 2, 4800.0)];
        let (c, why) = decide(&ts, &mem(), false).unwrap();
        assert_eq!((c.precision, c.threads), (Fp32, 2));
        assert!(why.contains("fastest"), "{why}");
    }

    fn stages(p: ModelPrecision, threads: usize, enc: f64, dec: f64) -> Timing {
        Timing {
            precision: p,
            threads,
            encoder_ms: enc,
            decoder_ms: dec,
            pruned: false,
            decoder_only: false,
        }
    }

    fn decoder_only(p: ModelPrecision, threads: usize, dec: f64) -> Timing {
        Timing {
            encoder_ms: 0.0,
            decoder_only: true,
            ..stages(p, threads, 0.0, dec)
        }
    }

    /// The AVX2-only EPYC (issue 30): tract's int8 encoder is pruned, but
    /// the int8 decoder on talkie's kernels is the fastest decoder, so it
    /// runs behind the fp32 encoder; a decoder-only timing never makes its
    /// form the encoder's, and a gain within the band changes nothing.
    #[test]
    fn another_forms_decoder_runs_behind_the_encoder_when_that_wins() {
        let mut pruned = stages(Int8, 2, 2000.0, 30.0);
        pruned.pruned = true;
        let ts = [
            stages(Fp32, 2, 100.0, 70.0),
            stages(Fp32, 1, 150.0, 60.0),
            pruned,
            decoder_only(Int8, 2, 55.0),
            decoder_only(Int8, 1, 45.0),
        ];
        let (c, why) = decide(&ts, &mem(), false).unwrap();
        assert_eq!(c.precision, Fp32, "{why}");
        assert_eq!(
            c.forms(),
            Forms {
                encoder: Fp32,
                decoder: Int8
            }
        );
        assert_eq!((c.threads, c.decoder_threads()), (2, 1), "{why}");
        assert!(
            why.contains("int8 decoder on 1 (145 ms against 170 ms"),
            "{why}"
        );
        // Decoders within 5 % of each other: the fewer threads.
        let ts = [
            stages(Fp32, 2, 100.0, 70.0),
            stages(Fp32, 1, 150.0, 60.0),
            decoder_only(Int8, 2, 40.0),
            decoder_only(Int8, 1, 41.0),
        ];
        let (c, why) = decide(&ts, &mem(), false).unwrap();
        assert_eq!((c.forms().decoder, c.decoder_threads()), (Int8, 1), "{why}");
        // The same thread count: no second pool.
        let ts = [stages(Fp32, 2, 100.0, 70.0), decoder_only(Int8, 2, 45.0)];
        let (c, why) = decide(&ts, &mem(), false).unwrap();
        assert_eq!((c.forms().decoder, c.decoder_threads), (Int8, 0), "{why}");
        // Within 5 % of the single setting: one form.
        let ts = [stages(Fp32, 2, 100.0, 70.0), decoder_only(Int8, 1, 63.0)];
        let (c, why) = decide(&ts, &mem(), false).unwrap();
        assert_eq!(c, Choice::new(Fp32, 2), "{why}");
        assert_eq!(c.forms(), Forms::same(Fp32));
        // Only decoder-only timings: nothing to choose.
        assert!(decide(&[decoder_only(Int8, 1, 5.0)], &mem(), false).is_none());
    }

    #[test]
    fn the_stages_get_their_own_thread_counts_when_that_wins() {
        // This Xeon's shape (issue 30): the second thread speeds the
        // encoder and slows the decoder.
        let ts = [stages(Int8, 2, 60.0, 80.0), stages(Int8, 1, 100.0, 50.0)];
        let mem = BTreeMap::from([(Int8, 40)]);
        let (c, why) = decide(&ts, &mem, false).unwrap();
        assert_eq!((c.threads, c.decoder_threads()), (2, 1), "{why}");
        assert!(why.contains("decoder on 1"), "{why}");
        // A split within the band is not worth a second pool.
        let ts = [stages(Int8, 2, 60.0, 52.0), stages(Int8, 1, 100.0, 50.0)];
        let (c, why) = decide(&ts, &mem, false).unwrap();
        assert_eq!((c.threads, c.decoder_threads()), (2, 2), "{why}");
        assert_eq!(c.decoder_threads, 0);
    }

    #[test]
    fn within_ten_percent_the_smaller_form_wins() {
        let ts = [t(Fp32, 2, 300.0), t(Int8, 2, 325.0)];
        let (c, why) = decide(&ts, &mem(), false).unwrap();
        assert_eq!(c.precision, Int8);
        assert!(why.contains("smaller in memory"), "{why}");
        let ts = [t(Fp32, 2, 300.0), t(Int8, 2, 340.0)];
        assert_eq!(decide(&ts, &mem(), false).unwrap().0.precision, Fp32);
        // Below 1 GiB of RAM the band is 25 %.
        assert_eq!(decide(&ts, &mem(), true).unwrap().0.precision, Int8);
        let ts = [t(Fp32, 2, 300.0), t(Int8, 2, 380.0)];
        assert_eq!(decide(&ts, &mem(), true).unwrap().0.precision, Fp32);
    }

    #[test]
    fn fewest_threads_within_five_percent() {
        let ts = [t(Fp32, 3, 200.0), t(Fp32, 2, 205.0), t(Fp32, 1, 330.0)];
        assert_eq!(decide(&ts, &mem(), false).unwrap().0.threads, 2);
        let ts = [t(Fp32, 3, 200.0), t(Fp32, 2, 215.0), t(Fp32, 1, 330.0)];
        assert_eq!(decide(&ts, &mem(), false).unwrap().0.threads, 3);
    }

    #[test]
    fn pruned_candidates_never_win_and_nothing_gives_none() {
        let mut p = t(Int8, 2, 10.0);
        p.pruned = true;
        let ts = [t(Fp32, 2, 300.0), p];
        assert_eq!(decide(&ts, &mem(), false).unwrap().0.precision, Fp32);
        assert!(decide(&[], &mem(), false).is_none());
    }

    #[test]
    fn thread_candidates_leave_a_core_from_four_cores_on() {
        assert_eq!(thread_candidates(Threads::Auto, 1), [1]);
        assert_eq!(thread_candidates(Threads::Auto, 2), [2, 1]);
        assert_eq!(thread_candidates(Threads::Auto, 4), [3, 2, 1]);
        assert_eq!(thread_candidates(Threads::Fixed(3), 2), [3]);
    }

    #[test]
    fn measure_prunes_a_form_whose_warm_up_is_already_slower() {
        let mut calls = Vec::new();
        let ts = measure::<()>(
            &[Fp32, Int8],
            &[2, 1],
            |p, th, run| {
                calls.push((p, th, run));
                let base = if p == Fp32 { 100.0 } else { 1600.0 };
                Ok(match run {
                    Run::WarmUp => (base / 8.0, base / 8.0),
                    Run::Full => (base / th as f64, base / th as f64),
                    // int8's decoder: 40 ms on one thread, 45 on two.
                    Run::Decoder => (0.0, 35.0 + 5.0 * th as f64),
                })
            },
            |_| {},
        )
        .unwrap();
        assert_eq!(ts.len(), 5, "{ts:?}");
        assert!(ts[2].pruned && ts[2].precision == Int8);
        // int8: the warm-up, then its decoder alone twice per count.
        let int8: Vec<_> = calls.iter().filter(|c| c.0 == Int8).collect();
        assert_eq!(int8.len(), 5, "{int8:?}");
        assert!(int8[1..].iter().all(|c| c.2 == Run::Decoder));
        assert!(ts[3..].iter().all(|t| t.decoder_only && !t.pruned));
        assert_eq!(
            (
                ts[3].threads,
                ts[3].decoder_ms,
                ts[4].threads,
                ts[4].decoder_ms
            ),
            (2, 45.0, 1, 40.0)
        );
        // fp32/2: 50 + 50 ms; int8's decoder on one thread saves 10 ms.
        let (c, why) = decide(&ts, &mem(), false).unwrap();
        assert_eq!((c.precision, c.threads), (Fp32, 2), "{why}");
        assert_eq!((c.forms().decoder, c.decoder_threads()), (Int8, 1), "{why}");
    }

    fn cpu() -> CpuInfo {
        CpuInfo::parse(
            "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse avx avx2 fma f16c\n",
            "MemTotal:       24000000 kB\n",
            "x86_64",
            2,
        )
    }

    #[test]
    fn cpuinfo_of_x86_and_of_a_pi() {
        let c = cpu();
        assert_eq!(c.model, "AMD EPYC");
        assert_eq!(c.features, ["avx", "avx2", "fma", "f16c"]);
        assert_eq!(c.mem_total_mb, Some(23_437));
        let pi5 = CpuInfo::parse(
            "processor\t: 0\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp\n\
             CPU implementer\t: 0x41\nCPU part\t: 0xd0b\n\nModel\t\t: Raspberry Pi 5 Model B Rev 1.0\n",
            "MemTotal:        8245436 kB\n",
            "aarch64",
            4,
        );
        assert_eq!(pi5.model, "Cortex-A76 (Raspberry Pi 5 Model B Rev 1.0)");
        assert!(pi5.has("asimddp") && pi5.has("asimdhp"));
        let zero = CpuInfo::parse(
            "Features\t: fp asimd evtstrm crc32 cpuid\nCPU part\t: 0xd03\n",
            "MemTotal:         437000 kB\n",
            "aarch64",
            4,
        );
        assert_eq!(zero.model, "Cortex-A53");
        assert!(zero.low_memory() && !zero.has("asimddp"));
    }

    /// `auto` tries fp16 only where the CPU computes it natively (aarch64
    /// with `asimdhp`), and only forms whose two files are installed; an
    /// explicit setting is taken as it is.
    #[test]
    fn fp16_is_a_candidate_only_on_arm_cores_with_fp16_arithmetic() {
        let dir = tempfile::tempdir().unwrap();
        for suffix in ["", "_int8", "_f16"] {
            for part in ["encoder", "decoder"] {
                std::fs::write(dir.path().join(format!("whisper_{part}{suffix}.onnx")), b"")
                    .unwrap();
            }
        }
        let arm =
            |features: &str| CpuInfo::parse(&format!("Features\t: {features}\n"), "", "aarch64", 4);
        let pi5 = arm("fp asimd fphp asimdhp asimddp");
        let pi4 = arm("fp asimd crc32");
        let auto = |cpu: &CpuInfo| precision_candidates(Precision::Auto, dir.path(), cpu);
        assert_eq!(auto(&pi5), [Fp32, Fp16, Int8]);
        assert_eq!(auto(&pi4), [Fp32, Int8]);
        assert_eq!(auto(&cpu()), [Fp32, Int8]);
        // asimdhp in an x86 flag list (it never is) does not make it Arm.
        let odd = CpuInfo::parse("flags\t: avx2 asimdhp\n", "", "x86_64", 2);
        assert_eq!(auto(&odd), [Fp32, Int8]);
        assert_eq!(
            precision_candidates(Precision::Fp16, dir.path(), &cpu()),
            [Fp16]
        );
        // Without the fp16 files, auto does not offer it on a Pi 5 either.
        std::fs::remove_file(dir.path().join("whisper_decoder_f16.onnx")).unwrap();
        assert_eq!(auto(&pi5), [Fp32, Int8]);
    }

    fn calibration(key: CacheKey) -> Calibration {
        Calibration {
            model: whisper_tiny(),
            key,
            cpu: cpu(),
            timings: vec![t(Fp32, 2, 300.0)],
            chosen: Choice::new(Fp32, 2),
            reason: "fastest".into(),
            calibration_ms: 900.0,
            reused: false,
            fixed: false,
        }
    }

    #[test]
    fn cache_is_reused_only_under_the_same_key_and_a_broken_file_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/calibration.json");
        let key = CacheKey::new(&cpu(), &[Fp32, Int8], Precision::Auto, Threads::Auto, 512);
        assert!(load_cache(&path, &key).is_none(), "missing");
        save_cache(&path, &calibration(key.clone())).unwrap();
        let back = load_cache(&path, &key).unwrap();
        assert!(back.reused);
        assert_eq!(back.chosen, calibration(key.clone()).chosen);
        // Another CPU, model set, release or setting: recalibrate.
        let mut other_cpu = cpu();
        other_cpu.features.retain(|f| f != "avx2");
        let k2 = CacheKey::new(
            &other_cpu,
            &[Fp32, Int8],
            Precision::Auto,
            Threads::Auto,
            512,
        );
        assert!(load_cache(&path, &k2).is_none());
        let k3 = CacheKey::new(
            &cpu(),
            &[Fp32, Int8],
            Precision::Auto,
            Threads::Fixed(1),
            512,
        );
        assert!(load_cache(&path, &k3).is_none());
        let mut k4 = key.clone();
        k4.talkie = "0.0.0 (git other)".into();
        assert!(load_cache(&path, &k4).is_none());
        assert!(
            key.models.contains_key("whisper_encoder_int8.onnx"),
            "{key:?}"
        );
        // Corrupt or truncated: ignored, and a new save replaces it.
        std::fs::write(&path, b"{\"key\": {\"talk").unwrap();
        assert!(load_cache(&path, &key).is_none());
        std::fs::write(&path, [0xffu8, 0, 1, 2]).unwrap();
        assert!(load_cache(&path, &key).is_none());
        save_cache(&path, &calibration(key.clone())).unwrap();
        assert!(load_cache(&path, &key).is_some());
        // A directory where the file should be: ignored, saving fails cleanly.
        let d = dir.path().join("isdir");
        std::fs::create_dir(&d).unwrap();
        assert!(load_cache(&d, &key).is_none());
        assert!(save_cache(&d, &calibration(key)).is_err());
    }
}
