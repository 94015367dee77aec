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
use crate::models::{self, ModelError};
use std::io::BufReader;
use std::path::Path;

/// File names inside a models directory.
pub const VOCAB_FILE: &str = "whisper_vocab_int8.npy";
/// See [`VOCAB_FILE`].
pub const SCALE_FILE: &str = "whisper_vocab_scale.npy";

/// The int8 vocabulary matrix.
pub struct Vocab {
    rows: Vec<i8>,
    /// Each row's sum ([`dot::row_sums`]), for the VNNI kernels.
    sums: Vec<i32>,
    scale: Vec<f32>,
    width: usize,
    /// The projection kernel: [`Kernel::best`] for this CPU unless set.
    kernel: Kernel,
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

fn read_npy<T: npyz::Deserialize>(path: &Path) -> Result<(Vec<u64>, Vec<T>), ModelError> {
    models::verify(path)?;
    let err = |reason: String| ModelError::Load {
        path: path.to_owned(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|source| ModelError::Read {
        path: path.to_owned(),
        source,
    })?;
    let npy = npyz::NpyFile::new(BufReader::new(file)).map_err(|e| err(e.to_string()))?;
    if npy.order() != npyz::Order::C {
        return Err(err("not in C order".into()));
    }
    let shape = npy.shape().to_vec();
    let data = npy.into_vec::<T>().map_err(|e| err(e.to_string()))?;
    Ok((shape, data))
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
        let (shape, rows) = read_npy::<i8>(&path)?;
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
    pub fn from_parts(rows: Vec<i8>, scale: Vec<f32>, width: usize) -> Option<Self> {
        let fits = width > 0 && width <= dot::MAX_WIDTH && rows.len() == scale.len() * width;
        fits.then(|| Self {
            sums: dot::row_sums(&rows, width),
            rows,
            scale,
            width,
            kernel: Kernel::best(),
        })
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
        if let Some(h) = hidden.get(..self.width).and_then(Hidden::new) {
            self.kernel
                .project(&self.rows, &self.sums, &self.scale, &h, out);
        }
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
        let hidden: Vec<f32> = (0..self.width)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
            .collect();
        let mut out = vec![0.0f32; self.len()];
        let mut timings = Vec::with_capacity(kernels.len());
        for k in kernels {
            let mut ms = [0.0f64; 5];
            for run in 0usize..7 {
                let t = std::time::Instant::now();
                self.kernel = k;
                self.logits(&hidden, &mut out);
                if let Some(slot) = run.checked_sub(2).and_then(|i| ms.get_mut(i)) {
                    *slot = t.elapsed().as_secs_f64() * 1000.0;
                }
            }
            ms.sort_by(f64::total_cmp);
            timings.push((k, ms[2]));
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
}
