//! Whisper's vocabulary matrix, held once as int8 rows with a scale each.
//!
//! The decoder uses the token embedding matrix `E` [vocab, d] twice: the
//! input token's row is the step's input, and the logits are `hidden · Eᵀ`.
//! Inside a tract graph both uses keep their own fp32 copy (2 × 80 MB for
//! tiny.en, most of talkie's memory), so the converter takes `E` out of the
//! graph (`models/whisper_onnx.py`, `vocab()`): `whisper_vocab_int8.npy`
//! `[vocab, d]` int8 and `whisper_vocab_scale.npy` `[vocab]` f32, row `v` being
//! `E[v] ≈ q[v] · scale[v]`. This module does both uses from that one
//! 20 MB copy. On shared/eval/dev the transcripts are identical to the fp32
//! projection's (checked with onnxruntime, `models/whisper_ref.py`).

use super::dot::{self, Hidden, Kernel};
use crate::hugepages::I8Buffer;
use crate::models::{self, ModelError};
use std::io::BufReader;
use std::path::Path;

/// File names inside a models directory.
pub const VOCAB_FILE: &str = "whisper_vocab_int8.npy";
/// See [`VOCAB_FILE`].
pub const SCALE_FILE: &str = "whisper_vocab_scale.npy";

/// The longest a [`Vocab::keep_helper_awake`] thread spins: a decoder
/// step's layers take 1–2 ms on the Xeon of docs/performance.md, several
/// on a Pi; a guard never dropped costs no more than this.
pub const AWAKE_MAX: std::time::Duration = std::time::Duration::from_millis(20);

/// Dropped: the thread [`Vocab::keep_helper_awake`] woke goes back to the
/// pool.
#[derive(Debug)]
pub struct Awake(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Drop for Awake {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Release);
    }
}

/// The int8 vocabulary matrix.
pub struct Vocab {
    rows: I8Buffer,
    /// Each row's sum ([`dot::row_sums`]), for the VNNI kernels.
    sums: Vec<i32>,
    scale: Vec<f32>,
    width: usize,
    /// The projection kernel: [`Kernel::best`] for this CPU unless set.
    kernel: Kernel,
    /// Threads the rows are split over ([`Vocab::use_pool`]): the caller
    /// and the pool's others; `None` = the caller alone.
    pool: Option<std::sync::Arc<rayon::ThreadPool>>,
    /// Projections run and their time in ns ([`Vocab::spent`]).
    calls: std::sync::atomic::AtomicU64,
    spent_ns: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Vocab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vocab")
            .field("size", &self.scale.len())
            .field("width", &self.width)
            .field("kernel", &self.kernel.name())
            .finish()
    }
}

/// An npy file opened (C order, its sha256 checked against the manifest):
/// its shape, element count and a reader of its elements.
struct Npy<T: npyz::Deserialize> {
    shape: Vec<u64>,
    len: usize,
    values: npyz::NpyReader<T, BufReader<std::fs::File>>,
}

fn load_err(path: &Path, reason: impl ToString) -> ModelError {
    ModelError::Load {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

fn open_npy<T: npyz::Deserialize>(path: &Path) -> Result<Npy<T>, ModelError> {
    models::verify(path)?;
    let file = std::fs::File::open(path).map_err(|source| ModelError::Read {
        path: path.to_owned(),
        source,
    })?;
    let npy = npyz::NpyFile::new(BufReader::new(file)).map_err(|e| load_err(path, e))?;
    if npy.order() != npyz::Order::C {
        return Err(load_err(path, "not in C order"));
    }
    let shape = npy.shape().to_vec();
    let len = usize::try_from(npy.len()).map_err(|e| load_err(path, e))?;
    let values = npy.data::<T>().map_err(|e| load_err(path, e))?;
    Ok(Npy { shape, len, values })
}

/// [`open_npy`]'s elements in a vector reserved at their count
/// (collecting grows by doubling: 19.9 MB of rows sat in 32 MiB).
fn read_npy<T: npyz::Deserialize>(path: &Path) -> Result<(Vec<u64>, Vec<T>), ModelError> {
    let npy = open_npy::<T>(path)?;
    let mut data = Vec::with_capacity(npy.len);
    for value in npy.values {
        data.push(value.map_err(|e| load_err(path, e))?);
    }
    Ok((npy.shape, data))
}

/// The int8 rows of an npy file in huge pages where Linux has them
/// ([`I8Buffer`]): the projection reads every row every step.
fn read_rows(path: &Path) -> Result<(Vec<u64>, I8Buffer), ModelError> {
    let mut npy = open_npy::<i8>(path)?;
    let mut rows = I8Buffer::zeroed(npy.len);
    for slot in rows.iter_mut() {
        let value = npy.values.next();
        *slot = value
            .ok_or_else(|| load_err(path, "fewer values than its shape"))?
            .map_err(|e| load_err(path, e))?;
    }
    Ok((npy.shape, rows))
}

impl Vocab {
    /// Load and check both files of `dir` (sha256 against the manifest,
    /// then shapes against each other and `width`).
    pub fn load(dir: &Path, width: usize) -> Result<Self, ModelError> {
        Self::load_files(dir, VOCAB_FILE, SCALE_FILE, width)
    }

    /// [`Vocab::load`] with other file names (another model's vocabulary).
    pub fn load_files(
        dir: &Path,
        rows_file: &str,
        scale_file: &str,
        width: usize,
    ) -> Result<Self, ModelError> {
        let path = dir.join(rows_file);
        let (shape, rows) = read_rows(&path)?;
        let (scale_shape, scale) = read_npy::<f32>(&dir.join(scale_file))?;
        let size = scale.len();
        if shape != [size as u64, width as u64] || scale_shape != [size as u64] {
            return Err(ModelError::Load {
                path,
                reason: format!(
                    "shape {shape:?} with scales {scale_shape:?}, expected [{size}, {width}] and [{size}]"
                ),
            });
        }
        Self::from_parts(rows, scale, width).ok_or_else(|| ModelError::Load {
            path,
            reason: "rows and scales disagree".into(),
        })
    }

    /// From rows (`scale.len() × width`, row-major) and their scales; None
    /// if the lengths disagree or `width` is 0 or above [`dot::MAX_WIDTH`].
    pub fn from_parts(rows: impl Into<I8Buffer>, scale: Vec<f32>, width: usize) -> Option<Self> {
        let rows = rows.into();
        let fits = width > 0 && width <= dot::MAX_WIDTH && rows.len() == scale.len() * width;
        fits.then(|| Self {
            sums: dot::row_sums(&rows, width),
            rows,
            scale,
            width,
            kernel: Kernel::best(),
            pool: None,
            calls: std::sync::atomic::AtomicU64::new(0),
            spent_ns: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Bytes of the matrix in huge pages ([`crate::hugepages::backing`];
    /// 0 where none or unknown): how much of the advice the kernel took,
    /// for the calibration line and the status page.
    pub fn huge_page_bytes(&self) -> u64 {
        crate::hugepages::backing(self.rows.as_ptr() as usize, self.rows.len())
            .map_or(0, |b| b.huge_bytes)
    }

    /// Tokens in the vocabulary.
    pub fn len(&self) -> usize {
        self.scale.len()
    }

    pub fn is_empty(&self) -> bool {
        self.scale.is_empty()
    }

    /// Model width `d`.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Write token `token`'s embedding into `out` (`width` values). False
    /// for a token outside the vocabulary.
    pub fn embed(&self, token: u32, out: &mut [f32]) -> bool {
        let t = token as usize;
        let (Some(&s), Some(row)) = (
            self.scale.get(t),
            self.rows.get(t * self.width..(t + 1) * self.width),
        ) else {
            return false;
        };
        for (o, &q) in out.iter_mut().zip(row) {
            *o = f32::from(q) * s;
        }
        true
    }

    /// `out[v] = hidden · E[v]` for every token `v` (`out` has [`len`]
    /// entries, `hidden` `width`; nothing is written if it holds fewer),
    /// with this CPU's kernel ([`Kernel`]) on `hidden` quantized to 15 bits
    /// ([`Hidden`]): the same logits on every kernel.
    ///
    /// [`len`]: Vocab::len
    pub fn logits(&self, hidden: &[f32], out: &mut [f32]) {
        let t0 = std::time::Instant::now();
        self.project(hidden, out);
        let ns = u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX);
        // Each step's time, where a mean hides the first steps of an
        // utterance (docs/performance.md): `RUST_LOG=talkie_speech::stt::vocab=trace`.
        tracing::trace!(us = ns / 1000, "vocabulary projection");
        self.calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.spent_ns
            .fetch_add(ns, std::sync::atomic::Ordering::Relaxed);
    }

    /// Projections run so far and their time in ms, as each ran in place
    /// (after the decoder's layers, the caches as they left them): a
    /// transcript's share is the difference across it.
    pub fn spent(&self) -> (u64, f64) {
        (
            self.calls.load(std::sync::atomic::Ordering::Relaxed),
            self.spent_ns.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1e6,
        )
    }

    /// [`Vocab::logits`] untimed.
    fn project(&self, hidden: &[f32], out: &mut [f32]) {
        let Some(h) = hidden.get(..self.width).and_then(Hidden::new) else {
            return;
        };
        match &self.pool {
            Some(pool) if pool.current_num_threads() > 1 => {
                // Every row is computed as on one thread (the same logits):
                // the caller takes the first block, the pool the others.
                let block = self.len().div_ceil(pool.current_num_threads()).max(1);
                let kernel = self.kernel;
                let h = &h;
                let mut jobs = out
                    .chunks_mut(block)
                    .zip(self.rows.chunks(block * self.width))
                    .zip(self.sums.chunks(block))
                    .zip(self.scale.chunks(block));
                let first = jobs.next();
                pool.in_place_scope(|s| {
                    for (((out, rows), sums), scale) in jobs {
                        s.spawn(move |_| kernel.project(rows, sums, scale, h, out));
                    }
                    if let Some((((out, rows), sums), scale)) = first {
                        kernel.project(rows, sums, scale, h, out);
                    }
                });
            }
            _ => self
                .kernel
                .project(&self.rows, &self.sums, &self.scale, &h, out),
        }
    }

    /// Keep one of the projection pool's threads awake until the guard is
    /// dropped (at most [`AWAKE_MAX`]): it runs the pool's jobs as they
    /// come (`rayon::yield_now`) and spins between them. Taken at the start
    /// of a decoder step, so the projection's second block starts at once
    /// instead of after a sleeping thread's wake-up; `None` (nothing done)
    /// when the projection runs on one thread.
    pub fn keep_helper_awake(&self) -> Option<Awake> {
        let pool = self.pool.as_ref().filter(|p| p.current_num_threads() > 1)?;
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = std::sync::Arc::clone(&done);
        pool.spawn(move || {
            let t0 = std::time::Instant::now();
            while !flag.load(std::sync::atomic::Ordering::Acquire) && t0.elapsed() < AWAKE_MAX {
                if rayon::yield_now() != Some(rayon::Yield::Executed) {
                    std::hint::spin_loop();
                }
            }
        });
        Some(Awake(done))
    }

    /// Split the rows over `pool`'s threads when that is measurably
    /// faster (median of 5 steps after 2 warm-up steps, as
    /// [`Vocab::choose_fastest`]; kept under 90 % of one thread's time):
    /// the projection reads the whole matrix every step (20 MB for
    /// Whisper), and one core cannot draw memory at the rate two do (on the
    /// AVX2-only EPYC of docs/performance.md 12 against 22 GB/s). Given
    /// the encoder's pool, idle while the decoder runs. Returns (threads,
    /// median ms) for one thread and for the pool; empty without a pool of
    /// two threads or more.
    pub fn use_pool(
        &mut self,
        pool: Option<std::sync::Arc<rayon::ThreadPool>>,
    ) -> Vec<(usize, f64)> {
        self.pool = None;
        let Some(pool) = pool.filter(|p| p.current_num_threads() > 1) else {
            return Vec::new();
        };
        let one = self.median_step_ms();
        let threads = pool.current_num_threads();
        self.pool = Some(pool);
        let split = self.median_step_ms();
        if split >= one * 0.9 {
            self.pool = None;
        }
        vec![(1, one), (threads, split)]
    }

    /// Threads a projection runs on (1 without a pool).
    pub fn threads(&self) -> usize {
        self.pool.as_ref().map_or(1, |p| p.current_num_threads())
    }

    /// Median ms of 5 projections after 2 warm-up ones on a fixed hidden
    /// state, with the kernel and threads set now.
    fn median_step_ms(&self) -> f64 {
        let hidden: Vec<f32> = (0..self.width)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
            .collect();
        let mut out = vec![0.0f32; self.len()];
        let mut ms = [0.0f64; 5];
        for run in 0usize..7 {
            let t = std::time::Instant::now();
            self.logits(&hidden, &mut out);
            if let Some(slot) = run.checked_sub(2).and_then(|i| ms.get_mut(i)) {
                *slot = t.elapsed().as_secs_f64() * 1000.0;
            }
        }
        ms.sort_by(f64::total_cmp);
        ms[2]
    }

    /// Time every kernel this CPU runs on this matrix (median of 5 steps
    /// after 2 warm-up steps, a fixed hidden state) and keep the fastest:
    /// the order of [`Kernel::ALL`] is a guess, and on a 2-core Xeon with
    /// AVX-512 the AVX2 kernel won (1.06 against 1.60 ms per step). Returns
    /// each kernel's median in ms. A few tens of ms at load.
    pub fn choose_fastest(&mut self) -> Vec<(Kernel, f64)> {
        let kernels = Kernel::available();
        if kernels.len() < 2 {
            return Vec::new();
        }
        let mut timings = Vec::with_capacity(kernels.len());
        for k in kernels {
            self.kernel = k;
            timings.push((k, self.median_step_ms()));
        }
        if let Some(&(k, _)) = timings.iter().min_by(|a, b| a.1.total_cmp(&b.1)) {
            self.kernel = k;
        }
        timings
    }

    /// The projection kernel in use.
    pub fn kernel(&self) -> Kernel {
        self.kernel
    }

    /// Use `kernel` (tests and benchmarks compare them); false, and
    /// nothing changes, when this CPU does not run it.
    pub fn set_kernel(&mut self, kernel: Kernel) -> bool {
        let ok = kernel.runs_here();
        if ok {
            self.kernel = kernel;
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LANES: usize = 16;

    fn vocab() -> Vocab {
        // 3 tokens of width 16 (one full SIMD block): row v is (v + 1) * [1, -1, 2, 0, ...] / 10
        let mut rows = vec![0i8; 3 * LANES];
        for v in 0..3 {
            rows[v * LANES] = 10;
            rows[v * LANES + 1] = -10;
            rows[v * LANES + 2] = 20;
        }
        Vocab::from_parts(rows, vec![0.01, 0.02, 0.03], LANES).expect("consistent")
    }

    #[test]
    fn embed_dequantizes_one_row() {
        let v = vocab();
        let mut out = [9.0f32; LANES];
        assert!(v.embed(1, &mut out));
        for (got, want) in out[..4].iter().zip([0.2, -0.2, 0.4, 0.0]) {
            assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        }
        assert!(!v.embed(3, &mut out), "outside the vocabulary");
    }

    #[test]
    fn logits_are_dot_products_with_every_row() {
        let v = vocab();
        let mut hidden = [0.0f32; LANES];
        hidden[0] = 1.0;
        hidden[1] = 2.0;
        hidden[2] = 3.0;
        let mut out = [0.0f32; 3];
        v.logits(&hidden, &mut out);
        // row 0 = [0.1, -0.1, 0.2]: 0.1 - 0.2 + 0.6 = 0.5
        for (got, want) in out.iter().zip([0.5, 1.0, 1.5]) {
            assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        }
    }

    #[test]
    fn widths_that_are_not_a_lane_multiple_keep_their_tail() {
        // width 18: one block of 16 and a tail of 2, all ones
        let v = Vocab::from_parts(vec![1; 2 * 18], vec![1.0, 0.5], 18).expect("consistent");
        let mut out = [0.0f32; 2];
        v.logits(&[1.0; 18], &mut out);
        assert_eq!(out, [18.0, 9.0]);
        assert!(Vocab::from_parts(vec![1; 35], vec![1.0, 0.5], 18).is_none());
    }

    #[test]
    fn the_fastest_kernel_is_chosen_among_those_timed() {
        let mut v = Vocab::from_parts(vec![3; 64 * 384], vec![0.5; 64], 384).expect("consistent");
        let timed = v.choose_fastest();
        let here = Kernel::available();
        if here.len() < 2 {
            assert!(timed.is_empty());
            return;
        }
        assert_eq!(timed.iter().map(|t| t.0).collect::<Vec<_>>(), here);
        let best = timed.iter().min_by(|a, b| a.1.total_cmp(&b.1)).map(|t| t.0);
        assert_eq!(Some(v.kernel()), best);
        let mut out = [0.0f32; 64];
        v.logits(&[1.0; 384], &mut out);
        assert_eq!(out, [576.0; 64], "3 × 384 × 0.5 with the chosen kernel");
    }

    /// Rows split over a pool give the one-thread logits bit for bit, for
    /// row counts that do not divide evenly and pools larger than the rows;
    /// the split is kept only when it measured faster.
    #[test]
    fn rows_split_over_a_pool_give_the_same_logits() {
        let width = 384;
        for rows in [1usize, 7, 1001] {
            let mut x: u32 = 0x9e37_79b9;
            let mut next = || {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x
            };
            let q: Vec<i8> = (0..rows * width).map(|_| next() as i8).collect();
            let scale: Vec<f32> = (0..rows).map(|i| 1e-3 * (1 + i % 7) as f32).collect();
            let hidden: Vec<f32> = (0..width)
                .map(|_| (next() % 2001) as f32 / 1000.0 - 1.0)
                .collect();
            let mut v = Vocab::from_parts(q, scale, width).expect("consistent");
            let mut want = vec![0.0f32; rows];
            v.logits(&hidden, &mut want);
            for threads in [2, 3, 8] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                v.pool = Some(std::sync::Arc::new(pool));
                let mut got = vec![f32::NAN; rows];
                v.logits(&hidden, &mut got);
                let bits = |x: &[f32]| x.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&want), "{rows} rows on {threads} threads");
                // With a pool thread kept awake (a decoder step's guard),
                // the same logits; twice, as step after step.
                for _ in 0..2 {
                    let awake = v.keep_helper_awake();
                    assert!(awake.is_some());
                    got.fill(f32::NAN);
                    v.logits(&hidden, &mut got);
                    drop(awake);
                    assert_eq!(bits(&got), bits(&want), "awake, {threads} threads");
                }
            }
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(2)
                .build()
                .unwrap();
            let timed = v.use_pool(Some(std::sync::Arc::new(pool)));
            assert_eq!(timed.iter().map(|t| t.0).collect::<Vec<_>>(), [1, 2]);
            let faster = timed[1].1 < timed[0].1 * 0.9;
            assert_eq!(v.threads(), if faster { 2 } else { 1 }, "{timed:?}");
            assert!(v.use_pool(None).is_empty());
            assert_eq!(v.threads(), 1);
            assert!(
                v.keep_helper_awake().is_none(),
                "one thread: nothing to wake"
            );
        }
    }
}
