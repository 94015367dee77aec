//! The vocabulary projection's kernels: `out[v] = (q[v] · h) · scale[v]`
//! for int8 rows `q` and an f32 hidden state `h`, chosen once at run time
//! for the CPU (issue 30).
//!
//! Every kernel computes the same integers. Each step the hidden state is
//! quantized once to 15 bits (`hq = round(h / s)`, `s = max|h| / 16383`,
//! [`Hidden`]), and each row's dot product `Σ hq[i] · q[v][i]` is summed
//! exactly in 32-bit integers, so no kernel's order of additions matters:
//! the logits are bit for bit the same on every kernel and every CPU, x86
//! and Arm alike (the f32 kernels before differed in the last bits, enough
//! to flip an int8 near-tie between two kernels of one machine). The
//! rounding of `h` to 15 bits (relative 3e-5 of its largest element) is
//! well below the int8 rows' own.
//!
//! | kernel | where | per instruction |
//! |---|---|---|
//! | `avx512-vnni` | x86_64 with AVX-512 VNNI (+BW) | 64 int8 products (`vpdpbusd`) |
//! | `avx-vnni` | x86_64 with AVX-VNNI (Alder Lake, Sapphire Rapids, Zen 5) | 32 (`vpdpbusd`, VEX) |
//! | `avx2` | x86_64 with AVX2 (Haswell on, Zen) | 16 (`vpmaddwd` on rows widened to 16 bits) |
//! | `neon-dot` | aarch64 with the dot-product extension (Cortex-A76: Pi 5) | 16 (`sdot`) |
//! | `neon` | every aarch64 (Cortex-A53/A72: Zero 2 W, Pi 3, Pi 4) | 4 (`smlal` on widened rows) |
//! | `portable` | anything else (armv7) | what the compiler makes of an i32 loop |
//!
//! `vpdpbusd` multiplies unsigned by signed bytes, `sdot` signed by signed,
//! so `hq` is split in two bytes: `hq = 128 · hi + lo`, `lo = hq & 127` in
//! 0..=127, `hi = hq >> 7` in -128..=127. Then `q · hq = 128 · (q · hi) +
//! q · lo`; for `vpdpbusd` `hi` is biased to `hi + 128` (0..=255) and
//! `128 · Σq` (each row's sum, kept by the vocabulary) subtracted again.
//! The sums are taken in wrapping 32-bit arithmetic, which is exact
//! whenever the true result fits, and it does: `|q · hq| ≤ width · 128 ·
//! 16383 < 2³¹` for `width ≤ 1024` (wider states get fewer bits: see
//! [`MAX_WIDTH`]).
//!
//! The projection reads the whole matrix (20 MB for Whisper) every decoder
//! step; the kernels stream each row once and keep `h` in L1.

/// The widest hidden state [`Hidden`] holds. Up to 1024 it is quantized
/// to 15 bits; wider ones (the int8 linear layers' 1536- and 1664-wide
/// inputs, [`super::linear`]) to fewer, so that the sums stay exact.
pub const MAX_WIDTH: usize = 2048;

/// Largest magnitude of the quantized hidden state: 15 bits, so that its
/// high byte is a signed byte for `sdot`, and small enough that `width ·
/// 128 · max` fits an i32 (14 bits at 2048).
fn hq_max(width: usize) -> f32 {
    (i32::MAX as usize / (128 * width.max(1))).min(16383) as f32
}

/// One step's hidden state in the forms the kernels read, quantized once
/// per step, on the stack (no allocation in the decoder step).
pub struct Hidden {
    width: usize,
    /// `s`: `h ≈ hq · s`; NaN when `h` holds a NaN or an infinity.
    scale: f32,
    /// `hq`, 16-bit.
    q: [i16; MAX_WIDTH],
    /// `hq & 127`.
    #[cfg_attr(
        not(any(target_arch = "x86_64", target_arch = "aarch64")),
        allow(dead_code)
    )]
    lo: [u8; MAX_WIDTH],
    /// `(hq >> 7) + 128`, the high byte biased to unsigned.
    #[cfg_attr(
        not(any(target_arch = "x86_64", target_arch = "aarch64")),
        allow(dead_code)
    )]
    hi: [u8; MAX_WIDTH],
}

impl Hidden {
    /// Quantize `h`; None if it is wider than [`MAX_WIDTH`].
    pub fn new(h: &[f32]) -> Option<Self> {
        let mut me = Self {
            width: 0,
            scale: 1.0,
            q: [0; MAX_WIDTH],
            lo: [0; MAX_WIDTH],
            hi: [128; MAX_WIDTH],
        };
        me.set(h).then_some(me)
    }

    /// Quantize `h` in place of the state held (an encoder's rows, one
    /// after another, without a fresh 8 KB state each); false, and the
    /// state unchanged, if `h` is wider than [`MAX_WIDTH`]. Only the first
    /// `h.len()` elements are written: the kernels read no further.
    pub fn set(&mut self, h: &[f32]) -> bool {
        if h.len() > MAX_WIDTH {
            return false;
        }
        let (q, lo, hi) = (
            &mut self.q[..h.len()],
            &mut self.lo[..h.len()],
            &mut self.hi[..h.len()],
        );
        self.width = h.len();
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
            {
                // SAFETY: the CPU has AVX-512F and BW (checked just above).
                self.scale = unsafe { quantize_avx512(h, q, lo, hi) };
                return true;
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU has AVX2 (checked just above).
                self.scale = unsafe { quantize_avx2(h, q, lo, hi) };
                return true;
            }
        }
        self.scale = quantize(h, q, lo, hi);
        true
    }

    /// `s`, one step of the quantized hidden state.
    pub fn scale(&self) -> f32 {
        self.scale
    }
}

/// [`Hidden::set`]'s arithmetic, written so that the compiler turns it
/// into vector code (issue 30: as scalar code it was 22 % of a `talkie
/// transcribe` profile, every int8 layer quantizing each row it reads):
/// the largest magnitude as an integer maximum over the bit patterns (for
/// non-negative floats the same order; an infinity or a NaN sorts above
/// every finite value), then one branch-free pass. Returns `s`; `q`, `lo`
/// and `hi` are `h`'s length.
#[inline(always)]
fn quantize(h: &[f32], q: &mut [i16], lo: &mut [u8], hi: &mut [u8]) -> f32 {
    const NOT_FINITE: u32 = 0x7f80_0000;
    let bits = h
        .iter()
        .fold(0u32, |m, &x| m.max(x.to_bits() & 0x7fff_ffff));
    let hq_max = hq_max(h.len());
    let max = f32::from_bits(bits);
    // A state with an infinity or a NaN (scale NaN) or all zeros (scale
    // 1): every element 0.
    if bits >= NOT_FINITE || max == 0.0 {
        q.fill(0);
        lo.fill(0);
        hi.fill(128);
        return if max == 0.0 { 1.0 } else { f32::NAN };
    }
    let inv = hq_max / max.max(f32::MIN_POSITIVE);
    if inv.is_finite() {
        for (((&x, q), lo), hi) in h
            .iter()
            .zip(q.iter_mut())
            .zip(lo.iter_mut())
            .zip(hi.iter_mut())
        {
            // |x| <= max, so |x · inv| <= hq_max up to two roundings: far
            // inside i32, which the unchecked conversions need (plain
            // `as` saturates, and kept the loop scalar). The min/max keep
            // a last-bit overshoot inside hq_max.
            let r = x * inv;
            // SAFETY: r is finite and |r| < 2³¹ (above).
            let t = unsafe { r.to_int_unchecked::<i32>() } as f32;
            let f = r - t;
            let r = t + f32::from(u8::from(f >= 0.5)) - f32::from(u8::from(f <= -0.5));
            // SAFETY: r is an integer in [-hq_max, hq_max] after the clamp.
            let v = unsafe { r.max(-hq_max).min(hq_max).to_int_unchecked::<i32>() } as i16;
            store(v, q, lo, hi);
        }
    } else {
        // A largest magnitude below hq_max / f32::MAX (4.8e-35): inv
        // overflows to ∞, and the definition's arithmetic (0 · ∞ = NaN,
        // rounded to 0) is kept as it was, element by element.
        for (((&x, q), lo), hi) in h
            .iter()
            .zip(q.iter_mut())
            .zip(lo.iter_mut())
            .zip(hi.iter_mut())
        {
            let v = round_half_away(x * inv).clamp(-hq_max, hq_max) as i16;
            store(v, q, lo, hi);
        }
    }
    max / hq_max
}

/// One quantized element `v` as [`Hidden`] holds it: itself, its low 7
/// bits and its high part biased by 128 (the VNNI kernels' operands).
#[inline(always)]
fn store(v: i16, q: &mut i16, lo: &mut u8, hi: &mut u8) {
    *q = v;
    *lo = (v & 127) as u8;
    *hi = ((v >> 7) + 128) as u8;
}

/// [`quantize`] compiled for AVX-512.
///
/// # Safety
/// The CPU must have AVX-512F and BW.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn quantize_avx512(h: &[f32], q: &mut [i16], lo: &mut [u8], hi: &mut [u8]) -> f32 {
    quantize(h, q, lo, hi)
}

/// [`quantize`] compiled for AVX2.
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn quantize_avx2(h: &[f32], q: &mut [i16], lo: &mut [u8], hi: &mut [u8]) -> f32 {
    quantize(h, q, lo, hi)
}

/// `r.round()` (half away from zero) for `|r| < 2³¹`, the same integer
/// (a zero's sign aside), without the call to libm's `roundf` that
/// baseline x86-64 (no SSE4.1 rounding instruction) makes per element:
/// truncation, then the exact remainder.
#[inline]
fn round_half_away(r: f32) -> f32 {
    let t = r as i32 as f32;
    let f = r - t;
    t + f32::from(u8::from(f >= 0.5)) - f32::from(u8::from(f <= -0.5))
}

/// `Σ q[i]` per row of `width`, which the VNNI kernels need.
pub fn row_sums(rows: &[i8], width: usize) -> Vec<i32> {
    if width == 0 {
        return Vec::new();
    }
    rows.chunks_exact(width)
        .map(|r| r.iter().map(|&q| i32::from(q)).sum())
        .collect()
}

/// The logit from a row's exact integer dot product: the one place the
/// float arithmetic happens, the same for every kernel.
#[inline]
fn finish(dot: i32, h_scale: f32, row_scale: f32) -> f32 {
    dot as f32 * h_scale * row_scale
}

/// A projection kernel. [`Kernel::best`] is the fastest this CPU runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    Portable,
    Avx2,
    AvxVnni,
    Avx512Vnni,
    Neon,
    NeonDot,
}

impl Kernel {
    /// Every kernel, fastest first.
    pub const ALL: [Kernel; 6] = [
        Kernel::Avx512Vnni,
        Kernel::AvxVnni,
        Kernel::Avx2,
        Kernel::NeonDot,
        Kernel::Neon,
        Kernel::Portable,
    ];

    /// The name shown on the status page and in benchmark reports.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Portable => "portable",
            Kernel::Avx2 => "avx2",
            Kernel::AvxVnni => "avx-vnni",
            Kernel::Avx512Vnni => "avx512-vnni",
            Kernel::Neon => "neon",
            Kernel::NeonDot => "neon-dot",
        }
    }

    /// The kernel called `name`, if this CPU runs it.
    pub fn by_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|k| k.name() == name && k.runs_here())
    }

    /// Whether this CPU has the instructions the kernel needs.
    pub fn runs_here(self) -> bool {
        match self {
            Kernel::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => is_x86_feature_detected!("avx2"),
            #[cfg(target_arch = "x86_64")]
            Kernel::AvxVnni => {
                is_x86_feature_detected!("avx2") && is_x86_feature_detected!("avxvnni")
            }
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Vnni => {
                is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(target_arch = "aarch64")]
            Kernel::Neon => true,
            #[cfg(target_arch = "aarch64")]
            Kernel::NeonDot => std::arch::is_aarch64_feature_detected!("dotprod"),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// The fastest kernel this CPU runs.
    pub fn best() -> Self {
        Self::ALL
            .into_iter()
            .find(|k| k.runs_here())
            .unwrap_or(Kernel::Portable)
    }

    /// Every kernel this CPU runs, fastest first.
    pub fn available() -> Vec<Self> {
        Self::ALL.into_iter().filter(|k| k.runs_here()).collect()
    }

    /// `out[v] = (rows[v] · h) · scale[v]` for each row of `h`'s width,
    /// `sums` being [`row_sums`] of `rows`; rows beyond `out`, `scale`,
    /// `sums` or `rows` are left alone, and nothing is written for an empty
    /// `h`.
    pub fn project(self, rows: &[i8], sums: &[i32], scale: &[f32], h: &Hidden, out: &mut [f32]) {
        let width = h.width;
        if width == 0 {
            return;
        }
        let n = out
            .len()
            .min(scale.len())
            .min(sums.len())
            .min(rows.len() / width);
        let (rows, sums, scale, out) = (&rows[..n * width], &sums[..n], &scale[..n], &mut out[..n]);
        // Only the VNNI kernels (x86_64) read the row sums.
        #[cfg(not(target_arch = "x86_64"))]
        let _ = sums;
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Vnni if self.runs_here() => {
                // SAFETY: AVX-512F, BW and VNNI were detected just above.
                unsafe { x86::project_avx512_vnni(rows, sums, scale, h, out) }
            }
            #[cfg(target_arch = "x86_64")]
            Kernel::AvxVnni if self.runs_here() => {
                // SAFETY: AVX2 and AVX-VNNI were detected just above.
                unsafe { x86::project_avx_vnni(rows, sums, scale, h, out) }
            }
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 if self.runs_here() => {
                // SAFETY: AVX2 was detected just above.
                unsafe { x86::project_avx2(rows, scale, h, out) }
            }
            #[cfg(target_arch = "aarch64")]
            Kernel::NeonDot if self.runs_here() => {
                // SAFETY: the dot-product extension was detected just above.
                unsafe { arm::project_neon_dot(rows, scale, h, out) }
            }
            #[cfg(target_arch = "aarch64")]
            Kernel::Neon => arm::project_neon(rows, scale, h, out),
            _ => project_portable(rows, scale, h, out),
        }
    }
}

impl Kernel {
    /// [`Kernel::project`] of four states of one width, `out` holding
    /// their four `n`-wide outputs one after another, on a kernel that
    /// reads each row once for all four where this one has it (AVX2; the
    /// int8 layers run AVX-512 VNNI as a matrix kernel, [`gemm_packed`]),
    /// else four calls: the same floats either way.
    pub fn project4(
        self,
        rows: &[i8],
        sums: &[i32],
        scale: &[f32],
        hs: [&Hidden; 4],
        out: &mut [f32],
    ) {
        let n = out.len() / 4;
        #[cfg(target_arch = "x86_64")]
        let width = hs[0].width;
        #[cfg(target_arch = "x86_64")]
        if self == Kernel::Avx2
            && self.runs_here()
            && width > 0
            && hs.iter().all(|h| h.width == width)
            && scale.len() >= n
            && rows.len() >= n * width
        {
            // SAFETY: AVX2 was detected just above; the widths and lengths
            // are as the kernel needs.
            unsafe { x86::project4_avx2(&rows[..n * width], &scale[..n], hs, &mut out[..4 * n]) };
            return;
        }
        for (h, out) in hs.iter().zip(out.chunks_exact_mut(n.max(1))) {
            self.project(rows, sums, scale, h, out);
        }
    }
}

/// Rows `[n, k]` (row-major) packed for [`gemm_packed`]: tiles of 16
/// rows, each tile `k.div_ceil(4)` groups of 16 × 4 bytes (row `j` of
/// the tile at bytes `4j..4j + 4` of a group), `n` padded to a multiple of
/// 16 and `k` to one of 4 with zero rows and columns. Empty if `rows` is
/// not `n` whole rows or `k` is 0.
pub fn pack16(rows: &[i8], k: usize) -> Vec<i8> {
    if k == 0 || !rows.len().is_multiple_of(k) {
        return Vec::new();
    }
    let n = rows.len() / k;
    let groups = k.div_ceil(4);
    let mut packed = vec![0i8; n.div_ceil(16) * groups * 64];
    for (v, row) in rows.chunks_exact(k).enumerate() {
        let (tile, j) = (v / 16, v % 16);
        for (i, &q) in row.iter().enumerate() {
            packed[(tile * groups + i / 4) * 64 + j * 4 + i % 4] = q;
        }
    }
    packed
}

/// The rows [`pack16`] packed, back in row-major `[n, k]`.
pub fn unpack16(packed: &[i8], n: usize, k: usize) -> Vec<i8> {
    let groups = k.div_ceil(4);
    let mut rows = vec![0i8; n * k];
    for (v, row) in rows.chunks_exact_mut(k.max(1)).enumerate() {
        let (tile, j) = (v / 16, v % 16);
        for (i, q) in row.iter_mut().enumerate() {
            if let Some(&p) = packed.get((tile * groups + i / 4) * 64 + j * 4 + i % 4) {
                *q = p;
            }
        }
    }
    rows
}

/// Whether [`gemm_packed`] runs on this CPU (AVX-512 VNNI).
pub fn gemm_runs_here() -> bool {
    Kernel::Avx512Vnni.runs_here()
}

/// `out[r · n + v] = (rows[v] · hs[r]) · scale[v]` for every state `hs[r]`
/// (all of one width `k`) and the `n` rows [`pack16`] packed, `sums`
/// being [`row_sums`] of the unpacked rows: a matrix kernel (16 rows by up
/// to 8 states per pass, no horizontal sums) with the exact integer sums,
/// so the same floats as [`Kernel::project`] row by row. False, and
/// nothing written, where the CPU lacks AVX-512 VNNI or the sizes
/// disagree.
pub fn gemm_packed(
    packed: &[i8],
    n: usize,
    sums: &[i32],
    scale: &[f32],
    hs: &[Hidden],
    out: &mut [f32],
) -> bool {
    let k = hs.first().map_or(0, |h| h.width);
    let fits = k > 0
        && hs.iter().all(|h| h.width == k)
        && packed.len() == n.div_ceil(16) * k.div_ceil(4) * 64
        && sums.len() >= n
        && scale.len() >= n
        && out.len() >= hs.len() * n;
    if !fits || !gemm_runs_here() {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    {
        let mut at = 0;
        while at < hs.len() {
            let left = hs.len() - at;
            let r = [8, 4, 2, 1].into_iter().find(|&r| r <= left).unwrap_or(1);
            let (states, o) = (&hs[at..at + r], &mut out[at * n..(at + r) * n]);
            // SAFETY: AVX-512F, BW and VNNI were detected (gemm_runs_here);
            // the sizes were checked above: `r` states of width k, `packed`
            // n.div_ceil(16) tiles of k.div_ceil(4) groups, `o` r · n long.
            unsafe {
                match r {
                    8 => x86::gemm_avx512_vnni::<8>(packed, n, sums, scale, states, o),
                    4 => x86::gemm_avx512_vnni::<4>(packed, n, sums, scale, states, o),
                    2 => x86::gemm_avx512_vnni::<2>(packed, n, sums, scale, states, o),
                    _ => x86::gemm_avx512_vnni::<1>(packed, n, sums, scale, states, o),
                }
            }
            at += r;
        }
        true
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// The reference: `Σ hq[i] · q[i]` in i32 per row.
fn project_portable(rows: &[i8], scale: &[f32], h: &Hidden, out: &mut [f32]) {
    let hq = &h.q[..h.width];
    for ((o, row), &s) in out.iter_mut().zip(rows.chunks_exact(h.width)).zip(scale) {
        let dot = row.iter().zip(hq).fold(0i32, |a, (&q, &x)| {
            a.wrapping_add(i32::from(q) * i32::from(x))
        });
        *o = finish(dot, h.scale, s);
    }
}

/// `Σ hq[i] · q[i]` over a row's tail past the last full SIMD block.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn tail_dot(q: &[i8], hq: &[i16]) -> i32 {
    q.iter().zip(hq).fold(0i32, |a, (&q, &x)| {
        a.wrapping_add(i32::from(q) * i32::from(x))
    })
}

/// `128 · Σ hi[i] · q[i] + Σ lo[i] · q[i]` (wrapping) over a tail: the
/// VNNI kernels' biased sum, for the elements past their last SIMD block.
#[cfg(target_arch = "x86_64")]
fn tail_biased(q: &[i8], lo: &[u8], hi: &[u8]) -> i32 {
    q.iter().zip(lo).zip(hi).fold(0i32, |a, ((&q, &l), &h)| {
        let q = i32::from(q);
        a.wrapping_add((i32::from(h) * q) << 7)
            .wrapping_add(i32::from(l) * q)
    })
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{finish, tail_biased, tail_dot, Hidden};
    use std::arch::x86_64::*;

    /// How far ahead of the row being read the row kernels prefetch, in
    /// bytes. The vocabulary projection streams its 20 MB from L3 every
    /// step, and the hardware prefetchers stop at each 4 KB page: asking
    /// for the bytes one page ahead keeps the stream going across the
    /// boundary. On the Xeon of docs/performance.md (2 threads, an 8 MB
    /// buffer read between steps as a decoder's layers do; medians of 280
    /// steps, two runs per kernel): 0.55–0.60 ms without, 0.48–0.54 with
    /// it in small pages, 0.44–0.46 with it in huge pages
    /// ([`crate::hugepages`]) against 0.44–0.51 without. 3, 4 and 6 KB
    /// ahead did alike; 4 KB taken.
    const PREFETCH_AHEAD: usize = 4096;

    /// Prefetch every cache line of the `width`-byte row [`PREFETCH_AHEAD`]
    /// bytes past `row` (a hint: an address past the matrix never faults).
    #[inline(always)]
    fn prefetch_ahead(row: *const i8, width: usize) {
        for line in (0..width).step_by(64) {
            // SAFETY: a prefetch reads nothing the program sees and never
            // faults, whatever the address.
            unsafe {
                _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(PREFETCH_AHEAD + line));
            }
        }
    }

    /// 64 products per `vpdpbusd`, two accumulators per half; the tail is
    /// a masked load (zeros contribute nothing).
    ///
    /// # Safety
    /// The CPU must have AVX-512F, BW and VNNI; `rows.len() == out.len() *
    /// h.width`, `sums.len() == scale.len() == out.len()`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn project_avx512_vnni(
        rows: &[i8],
        sums: &[i32],
        scale: &[f32],
        h: &Hidden,
        out: &mut [f32],
    ) {
        let width = h.width;
        let full = width / 64;
        let rest = width - full * 64;
        let mask: u64 = if rest == 0 { 0 } else { (1u64 << rest) - 1 };
        let (lp, hp) = (h.lo.as_ptr(), h.hi.as_ptr());
        for (((o, row), &sum), &s) in out
            .iter_mut()
            .zip(rows.chunks_exact(width))
            .zip(sums)
            .zip(scale)
        {
            let rp = row.as_ptr();
            prefetch_ahead(rp, width);
            // SAFETY: every load reads [i, i + 64) with i + 64 <= full * 64
            // <= width, inside the row and inside lo/hi (MAX_WIDTH long); the
            // masked loads touch only the `rest` bytes below width.
            let dot = unsafe {
                let mut lo = [_mm512_setzero_si512(); 2];
                let mut hi = [_mm512_setzero_si512(); 2];
                for b in 0..full {
                    let i = b * 64;
                    let q = _mm512_loadu_si512(rp.add(i).cast());
                    let j = b & 1;
                    lo[j] = _mm512_dpbusd_epi32(lo[j], _mm512_loadu_si512(lp.add(i).cast()), q);
                    hi[j] = _mm512_dpbusd_epi32(hi[j], _mm512_loadu_si512(hp.add(i).cast()), q);
                }
                if mask != 0 {
                    let i = full * 64;
                    let q = _mm512_maskz_loadu_epi8(mask, rp.add(i).cast());
                    let l = _mm512_maskz_loadu_epi8(mask, lp.add(i).cast());
                    let g = _mm512_maskz_loadu_epi8(mask, hp.add(i).cast());
                    lo[0] = _mm512_dpbusd_epi32(lo[0], l, q);
                    hi[0] = _mm512_dpbusd_epi32(hi[0], g, q);
                }
                let hi = _mm512_add_epi32(hi[0], hi[1]);
                let lo = _mm512_add_epi32(lo[0], lo[1]);
                _mm512_reduce_add_epi32(_mm512_add_epi32(_mm512_slli_epi32::<7>(hi), lo))
            };
            *o = finish(dot.wrapping_sub(sum.wrapping_mul(128 * 128)), h.scale, s);
        }
    }

    /// [`super::gemm_packed`] for `R` states: per tile of 16 rows, `2R`
    /// accumulators of 16 sums (each state's low and biased high byte),
    /// one load of the weights per group of 4 columns for all `R`.
    ///
    /// # Safety
    /// The CPU must have AVX-512F, BW and VNNI; `hs.len() == R`, every
    /// state `k` wide, `packed.len() == n.div_ceil(16) * k.div_ceil(4) *
    /// 64`, `sums` and `scale` at least `n` long, `out` at least `R * n`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn gemm_avx512_vnni<const R: usize>(
        packed: &[i8],
        n: usize,
        sums: &[i32],
        scale: &[f32],
        hs: &[Hidden],
        out: &mut [f32],
    ) {
        let groups = hs[0].width.div_ceil(4);
        let lp: [*const u8; R] = std::array::from_fn(|r| hs[r].lo.as_ptr());
        let hp: [*const u8; R] = std::array::from_fn(|r| hs[r].hi.as_ptr());
        for (t, tile) in packed.chunks_exact(groups * 64).enumerate() {
            let wp = tile.as_ptr();
            // SAFETY: each weight load reads [64g, 64g + 64) of the tile;
            // each state load 4 bytes at 4g < 4 · groups <= MAX_WIDTH (the
            // bytes past the width meet zero weights).
            let sums16 = unsafe {
                let mut lo = [_mm512_setzero_si512(); R];
                let mut hi = [_mm512_setzero_si512(); R];
                for g in 0..groups {
                    _mm_prefetch::<_MM_HINT_T0>(wp.wrapping_add(g * 64 + PREFETCH_AHEAD));
                    let w = _mm512_loadu_si512(wp.add(g * 64).cast());
                    for r in 0..R {
                        let l = _mm512_set1_epi32(lp[r].add(4 * g).cast::<i32>().read_unaligned());
                        let h = _mm512_set1_epi32(hp[r].add(4 * g).cast::<i32>().read_unaligned());
                        lo[r] = _mm512_dpbusd_epi32(lo[r], l, w);
                        hi[r] = _mm512_dpbusd_epi32(hi[r], h, w);
                    }
                }
                let mut d = [[0i32; 16]; R];
                for r in 0..R {
                    let v = _mm512_add_epi32(_mm512_slli_epi32::<7>(hi[r]), lo[r]);
                    _mm512_storeu_si512(d[r].as_mut_ptr().cast(), v);
                }
                d
            };
            // The tile's rows below n (the last tile's padding is dropped).
            let (lo, hi) = (t * 16, (t * 16 + 16).min(n));
            for ((h, d), out) in hs.iter().zip(sums16).zip(out.chunks_exact_mut(n)) {
                for (((o, &dot), &sum), &s) in out[lo..hi]
                    .iter_mut()
                    .zip(&d)
                    .zip(&sums[lo..hi])
                    .zip(&scale[lo..hi])
                {
                    *o = finish(dot.wrapping_sub(sum.wrapping_mul(128 * 128)), h.scale, s);
                }
            }
        }
    }

    /// 32 products per `vpdpbusd` (VEX form), two accumulators per half.
    ///
    /// # Safety
    /// The CPU must have AVX2 and AVX-VNNI; lengths as for
    /// [`project_avx512_vnni`].
    #[target_feature(enable = "avx2,avxvnni")]
    pub(super) unsafe fn project_avx_vnni(
        rows: &[i8],
        sums: &[i32],
        scale: &[f32],
        h: &Hidden,
        out: &mut [f32],
    ) {
        let width = h.width;
        let full = width / 32;
        let done = full * 32;
        let (lp, hp) = (h.lo.as_ptr(), h.hi.as_ptr());
        for (((o, row), &sum), &s) in out
            .iter_mut()
            .zip(rows.chunks_exact(width))
            .zip(sums)
            .zip(scale)
        {
            let rp = row.as_ptr();
            prefetch_ahead(rp, width);
            // SAFETY: every load reads [i, i + 32) with i + 32 <= done <= width.
            let dot = unsafe {
                let mut lo = [_mm256_setzero_si256(); 2];
                let mut hi = [_mm256_setzero_si256(); 2];
                for b in 0..full {
                    let i = b * 32;
                    let q = _mm256_loadu_si256(rp.add(i).cast());
                    let j = b & 1;
                    lo[j] = _mm256_dpbusd_avx_epi32(lo[j], _mm256_loadu_si256(lp.add(i).cast()), q);
                    hi[j] = _mm256_dpbusd_avx_epi32(hi[j], _mm256_loadu_si256(hp.add(i).cast()), q);
                }
                let hi = _mm256_add_epi32(hi[0], hi[1]);
                let lo = _mm256_add_epi32(lo[0], lo[1]);
                hsum256(_mm256_add_epi32(_mm256_slli_epi32::<7>(hi), lo))
            };
            let tail = tail_biased(&row[done..], &h.lo[done..width], &h.hi[done..width]);
            let dot = dot
                .wrapping_add(tail)
                .wrapping_sub(sum.wrapping_mul(128 * 128));
            *o = finish(dot, h.scale, s);
        }
    }

    /// Rows widened to 16 bits, multiplied with `hq` pairwise into i32
    /// (`vpmaddwd`): 16 products per instruction, four accumulators.
    ///
    /// # Safety
    /// The CPU must have AVX2; `rows.len() == out.len() * h.width`,
    /// `scale.len() == out.len()`.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn project_avx2(rows: &[i8], scale: &[f32], h: &Hidden, out: &mut [f32]) {
        let width = h.width;
        let blocks = width / 64;
        let singles = (width - blocks * 64) / 16;
        let done = blocks * 64 + singles * 16;
        let xp = h.q.as_ptr();
        for ((o, row), &s) in out.iter_mut().zip(rows.chunks_exact(width)).zip(scale) {
            let rp = row.as_ptr();
            prefetch_ahead(rp, width);
            // SAFETY: every load reads [i, i + 16) with i + 16 <= done <= width.
            let dot = unsafe {
                let mut a = [_mm256_setzero_si256(); 4];
                for b in 0..blocks {
                    for (j, acc) in a.iter_mut().enumerate() {
                        let i = b * 64 + j * 16;
                        let q = _mm256_cvtepi8_epi16(_mm_loadu_si128(rp.add(i).cast()));
                        let x = _mm256_loadu_si256(xp.add(i).cast());
                        *acc = _mm256_add_epi32(*acc, _mm256_madd_epi16(q, x));
                    }
                }
                for k in 0..singles {
                    let i = blocks * 64 + k * 16;
                    let q = _mm256_cvtepi8_epi16(_mm_loadu_si128(rp.add(i).cast()));
                    let x = _mm256_loadu_si256(xp.add(i).cast());
                    a[0] = _mm256_add_epi32(a[0], _mm256_madd_epi16(q, x));
                }
                let v =
                    _mm256_add_epi32(_mm256_add_epi32(a[0], a[1]), _mm256_add_epi32(a[2], a[3]));
                hsum256(v)
            };
            let dot = dot.wrapping_add(tail_dot(&row[done..], &h.q[done..width]));
            *o = finish(dot, h.scale, s);
        }
    }

    /// [`project_avx2`] for four states at once, `out` holding their
    /// four outputs one after another: each row is widened once for all
    /// four (an encoder's frames; the same integer sums, so the same
    /// floats as four calls).
    ///
    /// # Safety
    /// The CPU must have AVX2; the four states of one width `w`,
    /// `rows.len() == scale.len() * w`, `out.len() == 4 * scale.len()`.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn project4_avx2(
        rows: &[i8],
        scale: &[f32],
        hs: [&Hidden; 4],
        out: &mut [f32],
    ) {
        let width = hs[0].width;
        let n = scale.len();
        let singles = width / 16;
        let done = singles * 16;
        let xp = hs.map(|h| h.q.as_ptr());
        for (v, (row, &s)) in rows.chunks_exact(width).zip(scale).enumerate() {
            let rp = row.as_ptr();
            prefetch_ahead(rp, width);
            // SAFETY: every load reads [i, i + 16) with i + 16 <= done <= width.
            let dots = unsafe {
                let mut a = [_mm256_setzero_si256(); 4];
                for k in 0..singles {
                    let i = k * 16;
                    let q = _mm256_cvtepi8_epi16(_mm_loadu_si128(rp.add(i).cast()));
                    for (acc, x) in a.iter_mut().zip(xp) {
                        let x = _mm256_loadu_si256(x.add(i).cast());
                        *acc = _mm256_add_epi32(*acc, _mm256_madd_epi16(q, x));
                    }
                }
                a.map(|v| hsum256(v))
            };
            for (r, (h, dot)) in hs.iter().zip(dots).enumerate() {
                let dot = dot.wrapping_add(tail_dot(&row[done..], &h.q[done..width]));
                if let Some(o) = out.get_mut(r * n + v) {
                    *o = finish(dot, h.scale, s);
                }
            }
        }
    }

    /// The wrapping sum of eight i32 lanes.
    #[target_feature(enable = "avx2")]
    fn hsum256(v: __m256i) -> i32 {
        let v = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
        let v = _mm_add_epi32(v, _mm_shuffle_epi32::<0b01_00_11_10>(v));
        let v = _mm_add_epi32(v, _mm_shuffle_epi32::<0b10_11_00_01>(v));
        _mm_cvtsi128_si32(v)
    }
}

#[cfg(target_arch = "aarch64")]
mod arm {
    use super::{finish, tail_dot, Hidden};
    use std::arch::aarch64::*;

    /// Rows widened to 16 bits, multiply-accumulated long into four i32x4
    /// (`smlal`): 16 int8 per iteration. NEON is mandatory on aarch64.
    pub(super) fn project_neon(rows: &[i8], scale: &[f32], h: &Hidden, out: &mut [f32]) {
        let width = h.width;
        let blocks = width / 16;
        let done = blocks * 16;
        for ((o, row), &s) in out.iter_mut().zip(rows.chunks_exact(width)).zip(scale) {
            // SAFETY: NEON is part of aarch64; every load reads [i, i + 16)
            // of the row and of hq with i + 16 <= done <= width.
            let dot = unsafe {
                let (rp, xp) = (row.as_ptr(), h.q.as_ptr());
                let mut a = [vdupq_n_s32(0); 4];
                for b in 0..blocks {
                    let i = b * 16;
                    let q = vld1q_s8(rp.add(i));
                    let (ql, qh) = (vmovl_s8(vget_low_s8(q)), vmovl_high_s8(q));
                    let (x0, x1) = (vld1q_s16(xp.add(i)), vld1q_s16(xp.add(i + 8)));
                    a[0] = vmlal_s16(a[0], vget_low_s16(ql), vget_low_s16(x0));
                    a[1] = vmlal_high_s16(a[1], ql, x0);
                    a[2] = vmlal_s16(a[2], vget_low_s16(qh), vget_low_s16(x1));
                    a[3] = vmlal_high_s16(a[3], qh, x1);
                }
                vaddvq_s32(vaddq_s32(vaddq_s32(a[0], a[1]), vaddq_s32(a[2], a[3])))
            };
            let dot = dot.wrapping_add(tail_dot(&row[done..], &h.q[done..width]));
            *o = finish(dot, h.scale, s);
        }
    }

    /// `sdot`: four 4-byte signed dot products accumulated into `acc`. The
    /// instruction is in inline assembly because its intrinsic
    /// (`vdotq_s32`) is not stable Rust yet.
    ///
    /// # Safety
    /// The CPU must have the dot-product extension.
    #[target_feature(enable = "dotprod")]
    #[inline]
    unsafe fn sdot(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
        let mut acc = acc;
        // SAFETY: register-only instruction; the caller checked the feature.
        unsafe {
            std::arch::asm!(
                "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
                acc = inout(vreg) acc,
                a = in(vreg) a,
                b = in(vreg) b,
                options(pure, nomem, nostack, preserves_flags)
            );
        }
        acc
    }

    /// `q · hq = 128 · (q · hi) + q · lo` with `sdot` on both bytes:
    /// 16 products per instruction.
    ///
    /// # Safety
    /// The CPU must have the dot-product extension; `rows.len() ==
    /// out.len() * h.width`, `scale.len() == out.len()`.
    #[target_feature(enable = "dotprod")]
    pub(super) unsafe fn project_neon_dot(rows: &[i8], scale: &[f32], h: &Hidden, out: &mut [f32]) {
        let width = h.width;
        let blocks = width / 16;
        let done = blocks * 16;
        // lo is 0..=127, so its bytes read as i8 unchanged; hi is stored
        // biased by 128, so flipping its top bit gives the signed high byte.
        let (lp, hp) = (h.lo.as_ptr().cast::<i8>(), h.hi.as_ptr());
        let flip = vdupq_n_u8(0x80);
        for ((o, row), &s) in out.iter_mut().zip(rows.chunks_exact(width)).zip(scale) {
            // SAFETY: every load reads [i, i + 16) with i + 16 <= done <= width.
            let dot = unsafe {
                let rp = row.as_ptr();
                let mut lo = [vdupq_n_s32(0); 2];
                let mut hi = [vdupq_n_s32(0); 2];
                for b in 0..blocks {
                    let i = b * 16;
                    let q = vld1q_s8(rp.add(i));
                    let j = b & 1;
                    lo[j] = sdot(lo[j], q, vld1q_s8(lp.add(i)));
                    let g = vreinterpretq_s8_u8(veorq_u8(vld1q_u8(hp.add(i)), flip));
                    hi[j] = sdot(hi[j], q, g);
                }
                let hi = vaddvq_s32(vaddq_s32(hi[0], hi[1]));
                let lo = vaddvq_s32(vaddq_s32(lo[0], lo[1]));
                hi.wrapping_mul(128).wrapping_add(lo)
            };
            let dot = dot.wrapping_add(tail_dot(&row[done..], &h.q[done..width]));
            *o = finish(dot, h.scale, s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows and a hidden state of width `w` from a fixed pseudo-random
    /// sequence (no test depends on a seed chosen at run time).
    fn data(n: usize, w: usize) -> (Vec<i8>, Vec<f32>, Vec<f32>) {
        let mut x = 0x2545_f491_u32;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        };
        let rows = (0..n * w).map(|_| (next() % 255) as i8).collect();
        let scale = (0..n).map(|_| (next() % 1000) as f32 / 1e5).collect();
        let h = (0..w)
            .map(|_| (next() % 2001) as f32 / 1000.0 - 1.0)
            .collect();
        (rows, scale, h)
    }

    /// Every kernel's logits for `rows` and `h`, the portable loop's first.
    fn all(rows: &[i8], scale: &[f32], h: &[f32]) -> Vec<(Kernel, Vec<f32>)> {
        let hidden = Hidden::new(h).expect("narrow enough");
        let sums = row_sums(rows, h.len());
        let mut kernels = Kernel::available();
        kernels.sort_by_key(|&k| k != Kernel::Portable);
        kernels
            .into_iter()
            .map(|k| {
                let mut out = vec![f32::NAN; scale.len()];
                k.project(rows, &sums, scale, &hidden, &mut out);
                (k, out)
            })
            .collect()
    }

    #[test]
    fn every_kernel_here_gives_the_portable_loop_bit_for_bit_on_every_width() {
        let kernels = Kernel::available();
        assert!(kernels.contains(&Kernel::Portable));
        #[cfg(target_arch = "aarch64")]
        assert!(kernels.contains(&Kernel::Neon));
        // Whisper's 384, Moonshine's 416, and widths with every kind of tail.
        for w in [
            384, 416, 1, 7, 8, 15, 16, 17, 31, 32, 33, 63, 64, 65, 100, 129, 1024, 1536, 1664,
        ] {
            let (rows, scale, h) = data(37, w);
            let outs = all(&rows, &scale, &h);
            let (_, want) = &outs[0];
            for (k, got) in &outs[1..] {
                let same = got
                    .iter()
                    .zip(want)
                    .all(|(g, e)| g.to_bits() == e.to_bits());
                assert!(same, "{} width {w}: {got:?} vs {want:?}", k.name());
            }
        }
        eprintln!(
            "kernels held to the portable loop: {:?}",
            kernels.iter().map(|k| k.name()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn the_integer_sums_are_the_dot_products_to_the_rounding_of_h() {
        for w in [384, 17, 1024, 1664] {
            let (rows, scale, h) = data(37, w);
            let hidden = Hidden::new(&h).expect("narrow enough");
            let step = f64::from(hidden.scale());
            for (k, got) in all(&rows, &scale, &h) {
                for (v, (g, row)) in got.iter().zip(rows.chunks_exact(w)).enumerate() {
                    let s = f64::from(scale[v]);
                    let exact: f64 = row
                        .iter()
                        .zip(&h)
                        .map(|(&q, &x)| f64::from(q) * f64::from(x))
                        .sum::<f64>()
                        * s;
                    // each element off by at most half a step, |q| <= 128;
                    // then one f32 rounding of the sum and two of products
                    let bound = w as f64 * 0.5 * step * 128.0 * s + 4e-7 * exact.abs();
                    assert!(
                        (f64::from(*g) - exact).abs() <= bound,
                        "{} width {w} row {v}: {g} vs {exact} (bound {bound})",
                        k.name()
                    );
                }
            }
        }
    }

    #[test]
    fn the_widest_extremes_sum_exactly_without_overflow() {
        // |q · hq| at its largest: q = -128, h at ± its maximum, at the
        // widest 15-bit width and at wider ones with fewer bits.
        for (w, bits_max) in [(1024, 16383), (1536, 10922), (MAX_WIDTH, 8191)] {
            assert_eq!(hq_max(w), bits_max as f32);
            let rows = vec![-128i8; 2 * w];
            let mut h = vec![-1.0f32; w];
            let neg = vec![1.0f32; w];
            let top = 128 * bits_max * w as i64;
            assert!(top <= i64::from(i32::MAX));
            let want = |dot: i64| dot as f32 * (1.0f32 / bits_max as f32);
            for (k, got) in all(&rows, &[1.0, 1.0], &h) {
                assert_eq!(got, [want(top); 2], "{} width {w}", k.name());
            }
            for (k, got) in all(&rows, &[1.0, 1.0], &neg) {
                assert_eq!(got, [want(-top); 2], "{} width {w}", k.name());
            }
            // one element negative: every byte split meets a sign change
            h[3] = 1.0;
            let outs = all(&rows, &[1.0, 1.0], &h);
            for (k, got) in &outs {
                assert_eq!(got, &outs[0].1, "{} width {w}", k.name());
            }
        }
        assert!(
            Hidden::new(&vec![0.0; MAX_WIDTH + 1]).is_none(),
            "wider than the sums hold"
        );
    }

    #[test]
    fn a_zero_state_gives_zeros_and_a_nan_state_nans() {
        let (rows, scale, _) = data(5, 40);
        for (k, got) in all(&rows, &scale, &[0.0; 40]) {
            assert_eq!(got, [0.0; 5], "{}", k.name());
        }
        let mut h = [0.5f32; 40];
        h[7] = f32::NAN;
        for (k, got) in all(&rows, &scale, &h) {
            assert!(got.iter().all(|x| x.is_nan()), "{}: {got:?}", k.name());
        }
        h[7] = f32::INFINITY;
        for (k, got) in all(&rows, &scale, &h) {
            assert!(got.iter().all(|x| x.is_nan()), "{}: {got:?}", k.name());
        }
    }

    #[test]
    fn short_inputs_write_nothing_past_what_they_hold() {
        let (rows, scale, h) = data(4, 16);
        let sums = row_sums(&rows, 16);
        let hidden = Hidden::new(&h).expect("narrow");
        for k in Kernel::available() {
            let mut out = [7.0f32; 6];
            k.project(&rows, &sums, &scale, &hidden, &mut out);
            assert_eq!(out[4..], [7.0, 7.0], "{}: only 4 rows", k.name());
            let mut out = [7.0f32; 4];
            k.project(&rows, &sums[..3], &scale, &hidden, &mut out);
            assert_eq!(out[3], 7.0, "{}: only 3 sums", k.name());
            let empty = Hidden::new(&[]).expect("narrow");
            let mut out = [7.0f32; 4];
            k.project(&rows, &sums, &scale, &empty, &mut out);
            assert_eq!(out, [7.0; 4], "{}: no hidden state", k.name());
        }
    }

    #[test]
    fn names_round_trip_and_the_best_runs_here() {
        assert!(Kernel::best().runs_here());
        for k in Kernel::available() {
            assert_eq!(Kernel::by_name(k.name()), Some(k));
        }
        assert_eq!(Kernel::by_name("sse9"), None);
    }

    /// The rounding the quantizer uses gives `f32::round`'s integers on
    /// halves, near-halves and the quantizer's whole range.
    #[test]
    fn rounding_is_round_half_away_from_zero() {
        let mut values = vec![
            0.0f32, -0.0, 0.5, -0.5, 1.5, -1.5, 2.5, -2.5, 16382.5, -16383.0,
        ];
        values.extend(
            [0.5f32, 1.5, 8191.5]
                .iter()
                .flat_map(|&v| [v.next_down(), v.next_up(), -v.next_down(), -v.next_up()]),
        );
        values.extend((0..200_000).map(|i| (i as f32 - 100_000.0) * 0.16384));
        for v in values {
            assert_eq!(round_half_away(v) as i32, v.round() as i32, "{v}");
        }
    }

    /// The quantizer, as plain code and as compiled for each vector
    /// extension this CPU has, gives the state the scalar definition
    /// gives (`s = max|h| / hq_max`, `hq = round(h / s)` half away from
    /// zero, NaN and zeros for a non-finite `h`), bit for bit, on every
    /// width up to 70 and the widest, with halves, zeros, subnormals,
    /// infinities and NaNs among the values.
    #[test]
    fn the_vector_quantizer_is_the_scalar_definition() {
        fn reference(h: &[f32]) -> (f32, Vec<i16>, Vec<u8>, Vec<u8>) {
            let max = h.iter().fold(0.0f32, |m, &x| {
                if x.is_finite() && m.is_finite() {
                    m.max(x.abs())
                } else {
                    f32::NAN
                }
            });
            let hq_max = hq_max(h.len());
            let scale = if max > 0.0 || max.is_nan() {
                max / hq_max
            } else {
                1.0
            };
            let q: Vec<i16> = if scale.is_finite() {
                let inv = hq_max / max.max(f32::MIN_POSITIVE);
                h.iter()
                    .map(|&x| round_half_away(x * inv).clamp(-hq_max, hq_max) as i16)
                    .collect()
            } else {
                vec![0; h.len()]
            };
            let lo = q.iter().map(|&v| (v & 127) as u8).collect();
            let hi = q.iter().map(|&v| ((v >> 7) + 128) as u8).collect();
            (scale, q, lo, hi)
        }
        type Quantizer = fn(&[f32], &mut [i16], &mut [u8], &mut [u8]) -> f32;
        #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
        let mut quantizers: Vec<(&str, Quantizer)> =
            vec![("plain", |h, q, l, g| quantize(h, q, l, g))];
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU has AVX2.
                quantizers.push(("avx2", |h, q, l, g| unsafe { quantize_avx2(h, q, l, g) }));
            }
            if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw") {
                // SAFETY: the CPU has AVX-512F and BW.
                quantizers.push(("avx512", |h, q, l, g| unsafe {
                    quantize_avx512(h, q, l, g)
                }));
            }
        }
        let special = [
            0.5f32,
            -0.5,
            0.0,
            -0.0,
            1e-40,
            -1e-41,
            f32::MIN_POSITIVE,
            3.0,
            -3.0,
        ];
        let mut cases: Vec<Vec<f32>> = Vec::new();
        for width in (0..=70).chain([383, 384, 1536, MAX_WIDTH]) {
            let wave: Vec<f32> = (0..width)
                .map(|i| (i as f32 * 0.731).sin() * 7.0 + special[i % special.len()])
                .collect();
            cases.push(wave.clone());
            // Elements on exact halves of the quantized grid.
            cases.push((0..width).map(|i| (i as f32 - 35.0) * 0.5).collect());
            cases.push(vec![0.0; width]);
            cases.push(vec![1e-42; width]);
            for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                let mut w = wave.clone();
                if let Some(x) = w.get_mut(width / 2) {
                    *x = bad;
                }
                cases.push(w);
            }
        }
        for h in &cases {
            let (scale, q, lo, hi) = reference(h);
            for (name, quantizer) in &quantizers {
                let n = h.len();
                let (mut q2, mut lo2, mut hi2) = (vec![7i16; n], vec![7u8; n], vec![7u8; n]);
                let s2 = quantizer(h, &mut q2, &mut lo2, &mut hi2);
                assert_eq!(s2.to_bits(), scale.to_bits(), "{name} scale, width {n}");
                assert_eq!(
                    (&q2, &lo2, &hi2),
                    (&q, &lo, &hi),
                    "{name}, width {n}: {h:?}"
                );
            }
            let state = Hidden::new(h).expect("narrow enough");
            assert_eq!(state.scale().to_bits(), scale.to_bits());
            assert_eq!(&state.q[..h.len()], q.as_slice());
        }
    }

    /// A state quantized in place of a wider one gives the floats of a
    /// fresh one, on every kernel.
    #[test]
    fn a_state_set_again_projects_as_a_fresh_one() {
        let (n, wide, narrow) = (3, 1664, 416);
        let rows: Vec<i8> = (0..n * narrow).map(|i| (i % 251) as i8).collect();
        let sums = row_sums(&rows, narrow);
        let scale = vec![0.5; n];
        let a: Vec<f32> = (0..wide).map(|i| (i as f32 * 0.37).sin() * 40.0).collect();
        let b: Vec<f32> = (0..narrow).map(|i| (i as f32 * 0.11).cos()).collect();
        let mut reused = Hidden::new(&a).expect("narrow enough");
        assert!(reused.set(&b));
        let fresh = Hidden::new(&b).expect("narrow enough");
        for kernel in Kernel::available() {
            let (mut x, mut y) = (vec![0f32; n], vec![1f32; n]);
            kernel.project(&rows, &sums, &scale, &reused, &mut x);
            kernel.project(&rows, &sums, &scale, &fresh, &mut y);
            assert_eq!(x, y, "{}", kernel.name());
        }
        assert!(!reused.set(&vec![0.0; MAX_WIDTH + 1]), "too wide");
    }

    /// Four states at once give the floats of four single projections,
    /// on every kernel, for widths with and without a tail.
    #[test]
    fn four_states_at_once_are_four_projections() {
        for width in [416, 1664, 21] {
            let n = 9;
            let rows: Vec<i8> = (0..n * width)
                .map(|i| ((i * 91 % 255) as i32 - 127) as i8)
                .collect();
            let sums = row_sums(&rows, width);
            let scale: Vec<f32> = (0..n).map(|i| 0.01 * (i + 1) as f32).collect();
            let hs: Vec<Hidden> = (0..4)
                .map(|r| {
                    let h: Vec<f32> = (0..width)
                        .map(|i| ((i * 7 + r * 13) as f32 * 0.21).sin() * 3.0)
                        .collect();
                    Hidden::new(&h).expect("narrow enough")
                })
                .collect();
            for kernel in Kernel::available() {
                let mut want = vec![0f32; 4 * n];
                for (h, out) in hs.iter().zip(want.chunks_exact_mut(n)) {
                    kernel.project(&rows, &sums, &scale, h, out);
                }
                let mut got = vec![f32::NAN; 4 * n];
                kernel.project4(
                    &rows,
                    &sums,
                    &scale,
                    [&hs[0], &hs[1], &hs[2], &hs[3]],
                    &mut got,
                );
                assert_eq!(
                    got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    "{} width {width}",
                    kernel.name()
                );
            }
        }
    }

    /// The packed matrix kernel gives [`Kernel::project`]'s floats bit for
    /// bit, for row counts and widths that are not multiples of its tiles
    /// and every number of states up to 11; packing round-trips.
    #[test]
    fn the_packed_matrix_kernel_is_the_projection_row_by_row() {
        for (n, width) in [(37, 384), (16, 1664), (5, 21), (1, 4)] {
            let rows: Vec<i8> = (0..n * width)
                .map(|i| ((i * 89 % 255) as i32 - 127) as i8)
                .collect();
            let packed = pack16(&rows, width);
            assert_eq!(unpack16(&packed, n, width), rows, "{n}x{width}");
            let sums = row_sums(&rows, width);
            let scale: Vec<f32> = (0..n).map(|i| 0.003 * (i + 1) as f32).collect();
            let hs: Vec<Hidden> = (0..11)
                .map(|r| {
                    let h: Vec<f32> = (0..width)
                        .map(|i| ((i * 5 + r * 17) as f32 * 0.13).cos() * (r + 1) as f32)
                        .collect();
                    Hidden::new(&h).expect("narrow enough")
                })
                .collect();
            for states in [1, 3, 8, 11] {
                let mut want = vec![0f32; states * n];
                for (h, out) in hs[..states].iter().zip(want.chunks_exact_mut(n)) {
                    Kernel::Portable.project(&rows, &sums, &scale, h, out);
                }
                let mut got = vec![f32::NAN; states * n];
                let ran = gemm_packed(&packed, n, &sums, &scale, &hs[..states], &mut got);
                assert_eq!(ran, gemm_runs_here(), "runs where the CPU has it");
                if ran {
                    assert_eq!(
                        got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        "{n}x{width}, {states} states"
                    );
                }
            }
            let mut out = vec![0f32; n];
            assert!(!gemm_packed(
                &packed[1..],
                n,
                &sums,
                &scale,
                &hs[..1],
                &mut out
            ));
        }
    }
}
