//! The f32 product for CPUs with AVX2 and FMA but no AVX-512 (AMD Zen 1 to 3, Intel before
//! Skylake-SP and most laptops): the same packed panels of [`NR`] columns as the AVX-512
//! kernel, read as two halves of 16 columns, with micro-tiles of [`MR`] rows x 16 columns
//! (12 ymm accumulators, two for a row of the panel, one for the broadcast value of `A`).
//!
//! The bf16 modes need AVX512-BF16 and have no counterpart here.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::{Epilogue, NR, PackedF32};

/// Rows of one micro-tile.
pub const MR: usize = 6;
/// Columns of one micro-tile: half a panel, two ymm registers.
const W: usize = 16;

/// Lane masks (all ones for lanes to touch) of the two registers of columns `j0..n` of a tile.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2")]
fn masks(j0: usize, n: usize) -> (__m256i, __m256i) {
    let left = (n - j0).min(W) as i32;
    let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    (
        _mm256_cmpgt_epi32(_mm256_set1_epi32(left), lanes),
        _mm256_cmpgt_epi32(_mm256_set1_epi32(left - 8), lanes),
    )
}

/// Apply `epi` to a finished tile and store its columns `j0..min(n, j0 + 16)`.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn store_tile<const R: usize>(
    acc: &[[__m256; 2]; R],
    c: *mut f32,
    c_rs: usize,
    j0: usize,
    n: usize,
    epi: Epilogue,
) {
    let (m0, m1) = masks(j0, n);
    // Masked-off lanes are neither read nor written, so the second register's address may
    // lie past the row's end: it is formed with wrapping arithmetic and never dereferenced
    // there.
    unsafe {
        let (bias, slope) = match epi {
            Epilogue::Store => (None, 0.0),
            Epilogue::BiasLeaky(b, s) => (
                Some((
                    _mm256_maskload_ps(b.as_ptr().add(j0), m0),
                    _mm256_maskload_ps(b.as_ptr().wrapping_add(j0 + 8), m1),
                )),
                s,
            ),
        };
        let sv = _mm256_set1_ps(slope);
        for (r, a) in acc.iter().enumerate() {
            let (mut v0, mut v1) = (a[0], a[1]);
            if let Some((b0, b1)) = bias {
                v0 = _mm256_add_ps(v0, b0);
                v1 = _mm256_add_ps(v1, b1);
                v0 = _mm256_max_ps(v0, _mm256_mul_ps(v0, sv));
                v1 = _mm256_max_ps(v1, _mm256_mul_ps(v1, sv));
            }
            let dst = c.add(r * c_rs + j0);
            _mm256_maskstore_ps(dst, m0, v0);
            _mm256_maskstore_ps(dst.wrapping_add(8), m1, v1);
        }
    }
}

/// `R` rows of `A` (stride `a_rs`) times 16 columns of a panel starting at `b` (row stride
/// [`NR`]), over `k`.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile<const R: usize>(
    a: *const f32,
    a_rs: usize,
    b: *const f32,
    k: usize,
) -> [[__m256; 2]; R] {
    let mut acc = [[_mm256_setzero_ps(); 2]; R];
    unsafe {
        for kk in 0..k {
            let b0 = _mm256_loadu_ps(b.add(kk * NR));
            let b1 = _mm256_loadu_ps(b.add(kk * NR + 8));
            for (r, acc) in acc.iter_mut().enumerate() {
                let av = _mm256_broadcast_ss(&*a.add(r * a_rs + kk));
                acc[0] = _mm256_fmadd_ps(av, b0, acc[0]);
                acc[1] = _mm256_fmadd_ps(av, b1, acc[1]);
            }
        }
    }
    acc
}

/// [`super::gemm_f32`] with AVX2 and FMA: `C[i, 0..n] = epi(A[i, 0..k] B)` for `i < m`.
///
/// # Safety
/// AVX2 and FMA must be present; `a` must hold `m` rows of `k` floats at stride `a_rs`, `c`
/// `m` rows of `n` at stride `c_rs`, not aliasing `a`; the bias (if any) `n` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
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
        for j0 in (0..n).step_by(W) {
            // Panel `j0 / NR`, its left or right half.
            let panel = b.data.as_ptr().wrapping_add((j0 / NR) * k * NR + j0 % NR);
            unsafe {
                let a = a.add(i * a_rs);
                let c = c.add(i * c_rs);
                macro_rules! run {
                    ($r:expr) => {{
                        const R: usize = $r;
                        let acc = tile::<R>(a, a_rs, panel, k);
                        store_tile::<R>(&acc, c, c_rs, j0, n, epi);
                    }};
                }
                match rows {
                    1 => run!(1),
                    2 => run!(2),
                    3 => run!(3),
                    4 => run!(4),
                    5 => run!(5),
                    _ => run!(MR),
                }
            }
        }
        i += rows;
    }
}
