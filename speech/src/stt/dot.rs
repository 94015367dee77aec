//! The vocabulary projection's kernels: `out[v] = (q[v] · h) · scale[v]`
//! for int8 rows `q` and an f32 hidden state `h`, chosen once at run time
//! for the CPU (issue 30). Each converts int8 to f32 and accumulates with
//! fused multiply-adds, so every kernel computes the same products as the
//! portable loop and differs only in the order of the additions (relative
//! differences around 1e-6; the tests hold each kernel to the portable one
//! on the real vocabulary).
//!
//! | kernel | where | per instruction |
//! |---|---|---|
//! | `avx512` | x86_64 with AVX-512F | 16 lanes |
//! | `avx2` | x86_64 with AVX2 and FMA | 8 lanes |
//! | `neon` | every aarch64 (NEON is part of the architecture) | 4 lanes × 4 accumulators |
//! | `portable` | anything else (armv7: `#[target_feature(enable = "neon")]` is not stable Rust on 32-bit Arm) | what the compiler makes of 16 independent sums |
//!
//! The projection reads the whole 20 MB matrix every decoder step, so past
//! a few lanes it is bound by memory bandwidth, not arithmetic: the kernels
//! stream each row once and keep `h` (1.5 KB) in L1.

/// Lanes of the portable dot product: independent accumulators the
/// compiler may turn into SIMD registers.
const LANES: usize = 16;

/// A projection kernel. [`Kernel::best`] is the fastest this CPU runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    Portable,
    Avx2,
    Avx512,
    Neon,
}

impl Kernel {
    /// Every kernel, fastest first.
    pub const ALL: [Kernel; 4] = [Kernel::Avx512, Kernel::Avx2, Kernel::Neon, Kernel::Portable];

    /// The name shown on the status page and in benchmark reports.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Portable => "portable",
            Kernel::Avx2 => "avx2",
            Kernel::Avx512 => "avx512",
            Kernel::Neon => "neon",
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
            Kernel::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => is_x86_feature_detected!("avx512f"),
            #[cfg(target_arch = "aarch64")]
            Kernel::Neon => true,
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

    /// `out[v] = (rows[v] · h) · scale[v]` for each row of `width` values;
    /// rows beyond `out`, `scale` or `rows` are left alone. `h` must hold
    /// `width` values (nothing is written otherwise).
    pub fn project(self, rows: &[i8], scale: &[f32], width: usize, h: &[f32], out: &mut [f32]) {
        let Some(h) = h.get(..width) else {
            return;
        };
        if width == 0 {
            return;
        }
        let n = out.len().min(scale.len()).min(rows.len() / width);
        let (rows, scale, out) = (&rows[..n * width], &scale[..n], &mut out[..n]);
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 if self.runs_here() => {
                // SAFETY: AVX-512F was detected on this CPU just above.
                unsafe { x86::project_avx512(rows, scale, width, h, out) }
            }
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 if self.runs_here() => {
                // SAFETY: AVX2 and FMA were detected on this CPU just above.
                unsafe { x86::project_avx2(rows, scale, width, h, out) }
            }
            #[cfg(target_arch = "aarch64")]
            Kernel::Neon => arm::project_neon(rows, scale, width, h, out),
            _ => project_portable(rows, scale, width, h, out),
        }
    }
}

/// The reference: 16 independent sums per row, then the row's scale.
fn project_portable(rows: &[i8], scale: &[f32], width: usize, h: &[f32], out: &mut [f32]) {
    for ((o, row), &s) in out.iter_mut().zip(rows.chunks_exact(width)).zip(scale) {
        let mut acc = [0.0f32; LANES];
        let (qs, xs) = (row.chunks_exact(LANES), h.chunks_exact(LANES));
        let tail: f32 = qs
            .remainder()
            .iter()
            .zip(xs.remainder())
            .map(|(&q, &x)| f32::from(q) * x)
            .sum();
        for (q, x) in qs.zip(xs) {
            for j in 0..LANES {
                acc[j] += f32::from(q[j]) * x[j];
            }
        }
        *o = (acc.iter().sum::<f32>() + tail) * s;
    }
}

/// The scalar tail of a row past the last full SIMD block.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn tail_dot(q: &[i8], x: &[f32]) -> f32 {
    q.iter().zip(x).map(|(&q, &x)| f32::from(q) * x).sum()
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::tail_dot;
    use std::arch::x86_64::*;

    /// 4 accumulators × 16 lanes: 64 int8 per iteration.
    ///
    /// # Safety
    /// The CPU must have AVX-512F; `rows.len() == out.len() * width`,
    /// `scale.len() == out.len()`, `h.len() == width`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn project_avx512(
        rows: &[i8],
        scale: &[f32],
        width: usize,
        h: &[f32],
        out: &mut [f32],
    ) {
        let blocks = width / 64;
        let singles = (width - blocks * 64) / 16;
        let done = blocks * 64 + singles * 16;
        let hp = h.as_ptr();
        for ((o, row), &s) in out.iter_mut().zip(rows.chunks_exact(width)).zip(scale) {
            let rp = row.as_ptr();
            let mut a = [_mm512_setzero_ps(); 4];
            for b in 0..blocks {
                for (j, acc) in a.iter_mut().enumerate() {
                    let i = b * 64 + j * 16;
                    // SAFETY: i + 16 <= blocks * 64 <= width: inside the row
                    // and inside h; unaligned loads.
                    unsafe {
                        let q = _mm_loadu_si128(rp.add(i).cast::<__m128i>());
                        let q = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q));
                        *acc = _mm512_fmadd_ps(q, _mm512_loadu_ps(hp.add(i)), *acc);
                    }
                }
            }
            for k in 0..singles {
                let i = blocks * 64 + k * 16;
                // SAFETY: i + 16 <= done <= width.
                unsafe {
                    let q = _mm_loadu_si128(rp.add(i).cast::<__m128i>());
                    let q = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q));
                    a[0] = _mm512_fmadd_ps(q, _mm512_loadu_ps(hp.add(i)), a[0]);
                }
            }
            let sum = _mm512_add_ps(_mm512_add_ps(a[0], a[1]), _mm512_add_ps(a[2], a[3]));
            let tail = tail_dot(&row[done..], &h[done..]);
            *o = (_mm512_reduce_add_ps(sum) + tail) * s;
        }
    }

    /// 4 accumulators × 8 lanes: 32 int8 per iteration.
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA; lengths as for [`project_avx512`].
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn project_avx2(
        rows: &[i8],
        scale: &[f32],
        width: usize,
        h: &[f32],
        out: &mut [f32],
    ) {
        let blocks = width / 32;
        let singles = (width - blocks * 32) / 8;
        let done = blocks * 32 + singles * 8;
        let hp = h.as_ptr();
        for ((o, row), &s) in out.iter_mut().zip(rows.chunks_exact(width)).zip(scale) {
            let rp = row.as_ptr();
            let mut a = [_mm256_setzero_ps(); 4];
            for b in 0..blocks {
                for (j, acc) in a.iter_mut().enumerate() {
                    let i = b * 32 + j * 8;
                    // SAFETY: i + 8 <= blocks * 32 <= width; the 8-byte
                    // load reads row[i..i + 8] only.
                    unsafe {
                        let q = _mm_loadl_epi64(rp.add(i).cast::<__m128i>());
                        let q = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q));
                        *acc = _mm256_fmadd_ps(q, _mm256_loadu_ps(hp.add(i)), *acc);
                    }
                }
            }
            for k in 0..singles {
                let i = blocks * 32 + k * 8;
                // SAFETY: i + 8 <= done <= width.
                unsafe {
                    let q = _mm_loadl_epi64(rp.add(i).cast::<__m128i>());
                    let q = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q));
                    a[0] = _mm256_fmadd_ps(q, _mm256_loadu_ps(hp.add(i)), a[0]);
                }
            }
            let v = _mm256_add_ps(_mm256_add_ps(a[0], a[1]), _mm256_add_ps(a[2], a[3]));
            let v = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
            let v = _mm_add_ps(v, _mm_movehl_ps(v, v));
            let v = _mm_add_ss(v, _mm_shuffle_ps(v, v, 1));
            let tail = tail_dot(&row[done..], &h[done..]);
            *o = (_mm_cvtss_f32(v) + tail) * s;
        }
    }
}

#[cfg(target_arch = "aarch64")]
mod arm {
    use super::tail_dot;
    use std::arch::aarch64::*;

    /// 16 int8 per iteration, widened to four f32x4 and accumulated in four
    /// registers. NEON is mandatory on aarch64, so no detection is needed.
    pub(super) fn project_neon(
        rows: &[i8],
        scale: &[f32],
        width: usize,
        h: &[f32],
        out: &mut [f32],
    ) {
        let blocks = width / 16;
        let done = blocks * 16;
        for ((o, row), &s) in out.iter_mut().zip(rows.chunks_exact(width)).zip(scale) {
            // SAFETY: NEON is part of aarch64; every load reads
            // row[i..i + 16] and h[i..i + 16] with i + 16 <= done <= width.
            let sum = unsafe {
                let (rp, hp) = (row.as_ptr(), h.as_ptr());
                let mut a = [vdupq_n_f32(0.0); 4];
                for b in 0..blocks {
                    let i = b * 16;
                    let q = vld1q_s8(rp.add(i));
                    let lo = vmovl_s8(vget_low_s8(q));
                    let hi = vmovl_high_s8(q);
                    let parts = [
                        vmovl_s16(vget_low_s16(lo)),
                        vmovl_high_s16(lo),
                        vmovl_s16(vget_low_s16(hi)),
                        vmovl_high_s16(hi),
                    ];
                    for (j, (acc, p)) in a.iter_mut().zip(parts).enumerate() {
                        *acc = vfmaq_f32(*acc, vcvtq_f32_s32(p), vld1q_f32(hp.add(i + 4 * j)));
                    }
                }
                vaddvq_f32(vaddq_f32(vaddq_f32(a[0], a[1]), vaddq_f32(a[2], a[3])))
            };
            *o = (sum + tail_dot(&row[done..], &h[done..])) * s;
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

    #[test]
    fn every_kernel_here_matches_the_portable_loop_on_every_width() {
        let kernels = Kernel::available();
        assert!(kernels.contains(&Kernel::Portable));
        #[cfg(target_arch = "aarch64")]
        assert!(kernels.contains(&Kernel::Neon));
        // Whisper's 384, and widths with every kind of tail.
        for w in [384, 1, 7, 8, 15, 16, 17, 31, 33, 63, 64, 65, 100, 129] {
            let (rows, scale, h) = data(37, w);
            let mut want = vec![0.0; 37];
            Kernel::Portable.project(&rows, &scale, w, &h, &mut want);
            for &k in &kernels {
                let mut got = vec![f32::NAN; 37];
                k.project(&rows, &scale, w, &h, &mut got);
                for (v, (g, e)) in got.iter().zip(&want).enumerate() {
                    let tol = 1e-5 * (1.0 + e.abs());
                    assert!(
                        (g - e).abs() <= tol,
                        "{} width {w} row {v}: {g} vs {e}",
                        k.name()
                    );
                }
            }
        }
    }

    #[test]
    fn short_inputs_write_nothing_past_what_they_hold() {
        let (rows, scale, h) = data(4, 16);
        for k in Kernel::available() {
            let mut out = [7.0f32; 6];
            k.project(&rows, &scale, 16, &h, &mut out);
            assert_eq!(out[4..], [7.0, 7.0], "{}: only 4 rows", k.name());
            let mut out = [7.0f32; 4];
            k.project(&rows, &scale, 16, &h[..15], &mut out);
            assert_eq!(out, [7.0; 4], "{}: h too short", k.name());
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
}
