//! The kernel's matrix products: `C[m, 0..n] = A[m, 0..k] B` with `A` read row by row where it
//! lies (im2col rows, output gradients) and `B` (the frozen weights) packed once into panels
//! of [`NR`] columns. AVX-512 micro-kernels of [`MR`] rows x [`NR`] columns in f32 (FMA) and in
//! bf16 (`vdpbf16ps`: pairs of bf16 products accumulated in f32); on CPUs with AVX2 and FMA
//! but no AVX-512, the f32 product of [`avx2`] over the same panels.
//!
//! Every function here is `unsafe` with `#[target_feature]`: call them only after
//! [`Isa::detect`] found the instructions.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

pub mod avx2;

/// Rows of one micro-tile (accumulators: `MR x 2` zmm registers).
pub const MR: usize = 14;
/// Columns of one panel of `B` (two zmm registers).
pub const NR: usize = 32;

/// The instruction sets the kernel can use on this CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Isa {
    /// AVX-512F: the f32 kernels.
    pub avx512: bool,
    /// AVX2 and FMA: the f32 product of [`avx2`] (used where AVX-512 is missing).
    pub avx2: bool,
    /// AVX512-BF16 (with AVX512-BW for 16-bit stores): the bf16 kernels.
    pub bf16: bool,
}

impl Isa {
    /// Whether the f32 kernel runs here (AVX-512F, or AVX2 with FMA).
    pub fn f32(self) -> bool {
        self.avx512 || self.avx2
    }

    /// What this CPU has.
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            let avx512 = std::arch::is_x86_feature_detected!("avx512f");
            Isa {
                avx512,
                avx2: std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma"),
                bf16: avx512
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512bf16"),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            Isa {
                avx512: false,
                avx2: false,
                bf16: false,
            }
        }
    }
}

/// `B` (`k x n`, f32) as panels `[n / NR][k][NR]`, zero beyond column `n`.
#[derive(Clone, Debug)]
pub struct PackedF32 {
    k: usize,
    n: usize,
    data: Vec<f32>,
}

/// `B` (`k x n`) in bf16 as panels `[n / NR][k / 2][NR]` of pairs (rows `2q` and `2q + 1` of a
/// column in one 32-bit word, the even row in the low half), zero beyond `k` and `n`.
#[derive(Clone, Debug)]
pub struct PackedBf16 {
    pairs: usize,
    n: usize,
    data: Vec<u32>,
}

/// Round to the nearest bf16, ties to even (NaN stays NaN).
#[inline]
pub fn bf16(v: f32) -> u16 {
    // Branch-free, so that loops of conversions vectorise.
    let bits = v.to_bits();
    let rounded = (bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16) as u16;
    let quiet_nan = ((bits >> 16) | 0x40) as u16;
    if v.is_nan() { quiet_nan } else { rounded }
}

/// The f32 value of a bf16.
pub fn from_bf16(v: u16) -> f32 {
    f32::from_bits((v as u32) << 16)
}

impl PackedF32 {
    /// Pack `b(row, col)` for `row < k`, `col < n`.
    pub fn new(k: usize, n: usize, b: impl Fn(usize, usize) -> f32) -> Self {
        let panels = n.div_ceil(NR);
        let mut data = vec![0.0f32; panels * k * NR];
        for p in 0..panels {
            for kk in 0..k {
                for j in 0..NR.min(n - p * NR) {
                    data[(p * k + kk) * NR + j] = b(kk, p * NR + j);
                }
            }
        }
        PackedF32 { k, n, data }
    }
}

impl PackedBf16 {
    /// Pack `b(row, col)` for `row < k`, `col < n`, rounded to bf16.
    pub fn new(k: usize, n: usize, b: impl Fn(usize, usize) -> f32) -> Self {
        let (panels, pairs) = (n.div_ceil(NR), k.div_ceil(2));
        let mut data = vec![0u32; panels * pairs * NR];
        let at = |r: usize, c: usize| if r < k { bf16(b(r, c)) as u32 } else { 0 };
        for p in 0..panels {
            for q in 0..pairs {
                for j in 0..NR.min(n - p * NR) {
                    let c = p * NR + j;
                    data[(p * pairs + q) * NR + j] = at(2 * q, c) | (at(2 * q + 1, c) << 16);
                }
            }
        }
        PackedBf16 { pairs, n, data }
    }
}

/// What happens to a finished tile of `C`.
#[derive(Clone, Copy)]
pub enum Epilogue<'a> {
    /// `C = A B`.
    Store,
    /// `C = leaky(A B + bias)` with the given negative slope.
    BiasLeaky(&'a [f32], f32),
}

/// The masks of the two registers of columns `j0..n` of a panel.
#[cfg(target_arch = "x86_64")]
fn masks(j0: usize, n: usize) -> (u16, u16) {
    let left = (n - j0).min(NR);
    let m = |c: usize| if c >= 16 { 0xffff } else { (1u16 << c) - 1 };
    (m(left), m(left.saturating_sub(16)))
}

#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn store_tile<const R: usize>(
    acc: &[[__m512; 2]; R],
    c: *mut f32,
    c_rs: usize,
    j0: usize,
    n: usize,
    epi: Epilogue,
) {
    let (m0, m1) = masks(j0, n);
    unsafe {
        let (bias, slope) = match epi {
            Epilogue::Store => (None, 0.0),
            Epilogue::BiasLeaky(b, s) => (
                Some((
                    _mm512_maskz_loadu_ps(m0, b.as_ptr().add(j0)),
                    _mm512_maskz_loadu_ps(m1, b.as_ptr().add(j0 + 16)),
                )),
                s,
            ),
        };
        let sv = _mm512_set1_ps(slope);
        for (r, a) in acc.iter().enumerate() {
            let (mut v0, mut v1) = (a[0], a[1]);
            if let Some((b0, b1)) = bias {
                v0 = _mm512_add_ps(v0, b0);
                v1 = _mm512_add_ps(v1, b1);
                v0 = _mm512_max_ps(v0, _mm512_mul_ps(v0, sv));
                v1 = _mm512_max_ps(v1, _mm512_mul_ps(v1, sv));
            }
            let dst = c.add(r * c_rs + j0);
            _mm512_mask_storeu_ps(dst, m0, v0);
            _mm512_mask_storeu_ps(dst.add(16), m1, v1);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn tile_f32<const R: usize>(
    a: *const f32,
    a_rs: usize,
    b: *const f32,
    k: usize,
) -> [[__m512; 2]; R] {
    let mut acc = [[_mm512_setzero_ps(); 2]; R];
    unsafe {
        for kk in 0..k {
            let b0 = _mm512_loadu_ps(b.add(kk * NR));
            let b1 = _mm512_loadu_ps(b.add(kk * NR + 16));
            for (r, acc) in acc.iter_mut().enumerate() {
                let av = _mm512_set1_ps(*a.add(r * a_rs + kk));
                acc[0] = _mm512_fmadd_ps(av, b0, acc[0]);
                acc[1] = _mm512_fmadd_ps(av, b1, acc[1]);
            }
        }
    }
    acc
}

#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn tile_bf16<const R: usize>(
    a: *const u32,
    a_rs: usize,
    b: *const u32,
    pairs: usize,
) -> [[__m512; 2]; R] {
    let mut acc = [[_mm512_setzero_ps(); 2]; R];
    unsafe {
        for q in 0..pairs {
            let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(q * NR) as *const _));
            let b1: __m512bh =
                std::mem::transmute(_mm512_loadu_si512(b.add(q * NR + 16) as *const _));
            for (r, acc) in acc.iter_mut().enumerate() {
                let av: __m512bh =
                    std::mem::transmute(_mm512_set1_epi32(*a.add(r * a_rs + q) as i32));
                acc[0] = _mm512_dpbf16_ps(acc[0], av, b0);
                acc[1] = _mm512_dpbf16_ps(acc[1], av, b1);
            }
        }
    }
    acc
}

/// Runs `$body` with `$r` bound to the const row count `rows` (1..=MR).
macro_rules! rows_dispatch {
    ($rows:expr, $r:ident => $body:expr) => {
        match $rows {
            1 => {
                const $r: usize = 1;
                $body
            }
            2 => {
                const $r: usize = 2;
                $body
            }
            3 => {
                const $r: usize = 3;
                $body
            }
            4 => {
                const $r: usize = 4;
                $body
            }
            5 => {
                const $r: usize = 5;
                $body
            }
            6 => {
                const $r: usize = 6;
                $body
            }
            7 => {
                const $r: usize = 7;
                $body
            }
            8 => {
                const $r: usize = 8;
                $body
            }
            9 => {
                const $r: usize = 9;
                $body
            }
            10 => {
                const $r: usize = 10;
                $body
            }
            11 => {
                const $r: usize = 11;
                $body
            }
            12 => {
                const $r: usize = 12;
                $body
            }
            13 => {
                const $r: usize = 13;
                $body
            }
            _ => {
                const $r: usize = MR;
                $body
            }
        }
    };
}

/// `C[i, 0..n] = epi(A[i, 0..k] B)` for `i < m`; `A` row-major with row stride `a_rs`, `C`
/// with row stride `c_rs`.
///
/// # Safety
/// AVX-512F must be present; `a` must hold `m` rows of `k` floats at stride `a_rs`, `c` `m`
/// rows of `n` at stride `c_rs`, not aliasing `a`; the bias (if any) `n` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub unsafe fn gemm_f32(
    m: usize,
    a: *const f32,
    a_rs: usize,
    b: &PackedF32,
    c: *mut f32,
    c_rs: usize,
    epi: Epilogue,
) {
    let (k, n) = (b.k, b.n);
    let mut i = 0;
    while i < m {
        let rows = (m - i).min(MR);
        for p in 0..n.div_ceil(NR) {
            let panel = b.data[p * k * NR..].as_ptr();
            unsafe {
                let a = a.add(i * a_rs);
                let c = c.add(i * c_rs);
                rows_dispatch!(rows, R => {
                    let acc = tile_f32::<R>(a, a_rs, panel, k);
                    store_tile::<R>(&acc, c, c_rs, p * NR, n, epi);
                });
            }
        }
        i += rows;
    }
}

/// [`gemm_f32`] with `A` and `B` in bf16: `A` rows of `2 * pairs` bf16 (as `pairs` 32-bit
/// words, row stride `a_rs` words), accumulation in f32.
///
/// # Safety
/// AVX-512F and AVX512-BF16 must be present; otherwise as [`gemm_f32`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
pub unsafe fn gemm_bf16(
    m: usize,
    a: *const u32,
    a_rs: usize,
    b: &PackedBf16,
    c: *mut f32,
    c_rs: usize,
    epi: Epilogue,
) {
    let (pairs, n) = (b.pairs, b.n);
    let mut i = 0;
    while i < m {
        let rows = (m - i).min(MR);
        for p in 0..n.div_ceil(NR) {
            let panel = b.data[p * pairs * NR..].as_ptr();
            unsafe {
                let a = a.add(i * a_rs);
                let c = c.add(i * c_rs);
                rows_dispatch!(rows, R => {
                    let acc = tile_bf16::<R>(a, a_rs, panel, pairs);
                    store_tile::<R>(&acc, c, c_rs, p * NR, n, epi);
                });
            }
        }
        i += rows;
    }
}

#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn store_tile16<const R: usize>(
    acc: &[[__m512; 2]; R],
    c: *mut u16,
    c_rs: usize,
    j0: usize,
    n: usize,
    bias: &[f32],
    slope: f32,
) {
    let (m0, m1) = masks(j0, n);
    let m = (m0 as u32) | ((m1 as u32) << 16);
    unsafe {
        let b0 = _mm512_maskz_loadu_ps(m0, bias.as_ptr().add(j0));
        let b1 = _mm512_maskz_loadu_ps(m1, bias.as_ptr().add(j0 + 16));
        let sv = _mm512_set1_ps(slope);
        for (r, a) in acc.iter().enumerate() {
            let v0 = _mm512_add_ps(a[0], b0);
            let v1 = _mm512_add_ps(a[1], b1);
            let v0 = _mm512_max_ps(v0, _mm512_mul_ps(v0, sv));
            let v1 = _mm512_max_ps(v1, _mm512_mul_ps(v1, sv));
            let h = std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(v1, v0));
            _mm512_mask_storeu_epi16(c.add(r * c_rs + j0) as *mut i16, m, h);
        }
    }
}

/// [`gemm_bf16`] with the bias + LeakyReLU store into bf16 (`c`: `m` rows of `n` bf16 at
/// stride `c_rs`): the activations of the next layer's bf16 products, with no f32 copy.
///
/// # Safety
/// As [`gemm_bf16`]; `bias` holds `n` values.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub unsafe fn gemm_bf16_to_bf16(
    m: usize,
    a: *const u32,
    a_rs: usize,
    b: &PackedBf16,
    c: *mut u16,
    c_rs: usize,
    bias: &[f32],
    slope: f32,
) {
    let (pairs, n) = (b.pairs, b.n);
    let mut i = 0;
    while i < m {
        let rows = (m - i).min(MR);
        for p in 0..n.div_ceil(NR) {
            let panel = b.data[p * pairs * NR..].as_ptr();
            unsafe {
                let a = a.add(i * a_rs);
                let c = c.add(i * c_rs);
                rows_dispatch!(rows, R => {
                    let acc = tile_bf16::<R>(a, a_rs, panel, pairs);
                    store_tile16::<R>(&acc, c, c_rs, p * NR, n, bias, slope);
                });
            }
        }
        i += rows;
    }
}

/// `dst[i] = bf16(src[i])`.
pub fn to_bf16(src: &[f32], dst: &mut [u16]) {
    assert_eq!(src.len(), dst.len(), "bf16 conversion of unequal lengths");
    #[cfg(target_arch = "x86_64")]
    if Isa::detect().bf16 {
        // SAFETY: the instructions were detected; the chunks are 16 elements of each slice.
        unsafe { to_bf16_avx(src, dst) };
        return;
    }
    dst.iter_mut().zip(src).for_each(|(d, &s)| *d = bf16(s));
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn to_bf16_avx(src: &[f32], dst: &mut [u16]) {
    let mut s = src.chunks_exact(16);
    let mut d = dst.chunks_exact_mut(16);
    for (s, d) in (&mut s).zip(&mut d) {
        unsafe {
            let v = _mm512_cvtneps_pbh(_mm512_loadu_ps(s.as_ptr()));
            _mm256_storeu_si256(
                d.as_mut_ptr() as *mut __m256i,
                std::mem::transmute::<__m256bh, __m256i>(v),
            );
        }
    }
    d.into_remainder()
        .iter_mut()
        .zip(s.remainder())
        .for_each(|(d, &s)| *d = bf16(s));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        // A small deterministic generator (no dependency on the crate's Rng here).
        let mut s = seed.wrapping_mul(2_654_435_761).max(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s as f32 / u32::MAX as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// `C = A B` by the micro-kernels equals the naive sum (f32), and the bf16 kernel equals
    /// the naive sum of the bf16-rounded operands, for row counts around the micro-tile and
    /// column counts around the panel width, with and without the bias + LeakyReLU store.
    #[test]
    fn the_micro_kernels_equal_the_naive_product() {
        let isa = Isa::detect();
        if !isa.f32() {
            eprintln!("neither AVX-512 nor AVX2 with FMA on this CPU: the kernel is not used here");
            return;
        }
        for &(m, k, n) in &[
            (1, 1, 1),
            (13, 9, 32),
            (14, 10, 5),
            (29, 33, 45),
            (30, 288, 70),
            (3, 20, 64),
            (6, 7, 16),
            (7, 12, 17),
            (11, 5, 24),
        ] {
            let a = values(m * k, (m * 31 + k) as u32);
            let bm = values(k * n, (n * 17 + k) as u32);
            let bias = values(n, 5);
            for leaky in [false, true] {
                let epi = if leaky {
                    Epilogue::BiasLeaky(&bias, 0.2)
                } else {
                    Epilogue::Store
                };
                let naive = |a: &dyn Fn(usize, usize) -> f32, b: &dyn Fn(usize, usize) -> f32| {
                    let mut c = vec![0.0f32; m * n];
                    for i in 0..m {
                        for j in 0..n {
                            let mut s: f32 = (0..k).map(|kk| a(i, kk) * b(kk, j)).sum();
                            if leaky {
                                s += bias[j];
                                s = if s < 0.0 { 0.2 * s } else { s };
                            }
                            c[i * n + j] = s;
                        }
                    }
                    c
                };
                let packed = PackedF32::new(k, n, |r, c| bm[r * n + c]);
                let want = naive(&|i, kk| a[i * k + kk], &|kk, j| bm[kk * n + j]);
                // Both f32 products where the CPU has them (an AVX-512 CPU has AVX2 as well).
                for (name, here) in [("avx512", isa.avx512), ("avx2", isa.avx2)] {
                    if !here {
                        continue;
                    }
                    let mut c = vec![f32::NAN; m * n];
                    // SAFETY: the product's instructions were detected; the buffers are
                    // `m x k` and `m x n`.
                    unsafe {
                        if name == "avx512" {
                            gemm_f32(m, a.as_ptr(), k, &packed, c.as_mut_ptr(), n, epi)
                        } else {
                            avx2::gemm_f32(m, a.as_ptr(), k, &packed, c.as_mut_ptr(), n, epi)
                        }
                    };
                    for (x, y) in c.iter().zip(&want) {
                        assert!(
                            (x - y).abs() <= 1e-5 * (1.0 + y.abs()),
                            "{name} f32 {m}x{k}x{n}: {x} vs {y}"
                        );
                    }
                }
                if !isa.bf16 {
                    continue;
                }
                let kp = k.next_multiple_of(2);
                let mut a16 = vec![0u16; m * kp];
                for i in 0..m {
                    to_bf16(&a[i * k..(i + 1) * k], &mut a16[i * kp..i * kp + k]);
                }
                let packed = PackedBf16::new(k, n, |r, c| bm[r * n + c]);
                let mut c = vec![f32::NAN; m * n];
                // SAFETY: AVX512-BF16 was detected; `a16` holds `m` rows of `kp` bf16.
                unsafe {
                    gemm_bf16(
                        m,
                        a16.as_ptr() as *const u32,
                        kp / 2,
                        &packed,
                        c.as_mut_ptr(),
                        n,
                        epi,
                    )
                };
                let want = naive(&|i, kk| from_bf16(a16[i * kp + kk]), &|kk, j| {
                    from_bf16(bf16(bm[kk * n + j]))
                });
                for (x, y) in c.iter().zip(&want) {
                    assert!(
                        (x - y).abs() <= 1e-5 * (1.0 + y.abs()),
                        "bf16 {m}x{k}x{n}: {x} vs {y}"
                    );
                }
                if leaky {
                    // The bf16 store is the f32 store rounded, column tails untouched.
                    let mut c16 = vec![0xffffu16; m * (n + 1)];
                    // SAFETY: as above; `c16` holds `m` rows of `n + 1` at stride `n + 1`.
                    unsafe {
                        gemm_bf16_to_bf16(
                            m,
                            a16.as_ptr() as *const u32,
                            kp / 2,
                            &packed,
                            c16.as_mut_ptr(),
                            n + 1,
                            &bias,
                            0.2,
                        )
                    };
                    for i in 0..m {
                        for j in 0..n {
                            assert_eq!(c16[i * (n + 1) + j], bf16(c[i * n + j]), "{m}x{k}x{n}");
                        }
                        assert_eq!(c16[i * (n + 1) + n], 0xffff, "wrote past the row");
                    }
                }
            }
        }
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        assert_eq!(from_bf16(bf16(1.0)), 1.0);
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties go to the even mantissa (1).
        assert_eq!(from_bf16(bf16(1.0 + 1.0 / 256.0)), 1.0);
        assert_eq!(from_bf16(bf16(1.0 + 3.0 / 256.0)), 1.0 + 4.0 / 256.0);
        assert_eq!(from_bf16(bf16(-2.5)), -2.5);
        assert!(from_bf16(bf16(f32::NAN)).is_nan());
        let src = values(37, 9);
        let mut fast = vec![0u16; 37];
        to_bf16(&src, &mut fast);
        let slow: Vec<u16> = src.iter().map(|&v| bf16(v)).collect();
        assert_eq!(fast, slow, "the vector conversion rounds as the scalar one");
    }
}
