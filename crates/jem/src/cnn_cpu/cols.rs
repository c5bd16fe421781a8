//! im2col and its adjoint for a 3x3 convolution with padding 1 on channels-last activations
//! (`[b, h, w, c]`): an output position `(img, oy, ox)` reads, for each kernel row `ky`, the
//! three neighbouring input pixels `ox * s - 1 ..= ox * s + 1` of input row `oy * s + ky - 1`,
//! which are `3 * cin` consecutive values. So a row of the column matrix is three contiguous
//! copies (`(ky, kx, ci)` order), and the adjoint three contiguous additions.

use std::ops::Range;

/// The shape of one convolution layer.
#[derive(Clone, Copy, Debug)]
pub struct Geo {
    /// Input channels.
    pub cin: usize,
    /// Input height and width.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Output height.
    pub ho: usize,
    /// Output width.
    pub wo: usize,
    /// Stride.
    pub s: usize,
}

impl Geo {
    /// The length of a column row: `9 * cin` rounded up to even (bf16 pairs).
    pub fn kp(&self) -> usize {
        (9 * self.cin).next_multiple_of(2)
    }

    /// Output positions per image.
    pub fn hw_out(&self) -> usize {
        self.ho * self.wo
    }
}

/// An output position `(img, oy, ox)` walked in order (no divisions per position).
#[derive(Clone, Copy)]
struct Pos {
    img: usize,
    oy: usize,
    ox: usize,
}

impl Pos {
    fn of(g: &Geo, m: usize) -> Self {
        let hw = g.hw_out();
        Pos {
            img: m / hw,
            oy: (m % hw) / g.wo,
            ox: m % g.wo,
        }
    }

    #[inline(always)]
    fn advance(&mut self, g: &Geo) {
        self.ox += 1;
        if self.ox == g.wo {
            self.ox = 0;
            self.oy += 1;
            if self.oy == g.ho {
                self.oy = 0;
                self.img += 1;
            }
        }
    }

    /// For a position whose 3x3 window lies inside the image: the offset of its top-left
    /// input value (the three rows start `w * cin` values apart).
    #[inline(always)]
    fn interior(&self, g: &Geo) -> Option<usize> {
        let (y, x) = (self.oy * g.s, self.ox * g.s);
        (y >= 1 && y + 1 < g.h && x >= 1 && x + 1 < g.w)
            .then(|| ((self.img * g.h + y - 1) * g.w + x - 1) * g.cin)
    }

    /// The input pixels of this position for kernel row `ky`: `None` when the row lies in
    /// the padding, else the offset (in values) of the first input pixel inside the image and
    /// the range of the three kernel columns that fall inside it.
    #[inline(always)]
    fn run(&self, g: &Geo, ky: usize) -> Option<(usize, Range<usize>)> {
        let iy = (self.oy * g.s + ky).checked_sub(1)?;
        if iy >= g.h {
            return None;
        }
        let x0 = self.ox * g.s; // input column of kx = 1
        let lo = if x0 == 0 { 1 } else { 0 };
        let hi = if x0 + 1 < g.w { 3 } else { 2 };
        let ix = x0 + lo - 1;
        Some((((self.img * g.h + iy) * g.w + ix) * g.cin, lo..hi))
    }
}

/// `dst = src` in 64-byte blocks of fixed size (moved in registers, no `memcpy` call for
/// these short runs), the tail element by element.
#[inline(always)]
fn copy_run<T: Copy>(dst: &mut [T], src: &[T]) {
    assert_eq!(dst.len(), src.len(), "runs of equal length");
    let per = 64 / std::mem::size_of::<T>().max(1);
    let mut d = dst.chunks_exact_mut(per);
    let mut s = src.chunks_exact(per);
    for (d, s) in (&mut d).zip(&mut s) {
        // SAFETY: both chunks hold exactly `per` elements, 64 bytes, and do not overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(
                s.as_ptr() as *const [u8; 64],
                d.as_mut_ptr() as *mut [u8; 64],
                1,
            )
        };
    }
    for (d, s) in d.into_remainder().iter_mut().zip(s.remainder()) {
        *d = *s;
    }
}

/// `dst = 0`, in line for short runs.
#[inline(always)]
fn zero_run<T: Copy + Default>(dst: &mut [T]) {
    if dst.len() <= 16 {
        dst.iter_mut().for_each(|d| *d = T::default());
    } else {
        dst.fill(T::default());
    }
}

/// Column rows of output positions `ms` (over the whole batch) from `x` (`[b, h, w, cin]`):
/// row `i` is `cols[i * kp..(i + 1) * kp]`, zero where the kernel reads padding.
pub fn im2col<T: Copy + Default>(x: &[T], g: &Geo, ms: Range<usize>, cols: &mut [T]) {
    let (kp, c) = (g.kp(), g.cin);
    let mut pos = Pos::of(g, ms.start);
    let (run3, line) = (3 * c, g.w * c);
    for row in cols.chunks_exact_mut(kp).take(ms.len()) {
        zero_run(&mut row[9 * c..]);
        if let Some(off) = pos.interior(g) {
            for ky in 0..3 {
                let src = off + ky * line;
                copy_run(&mut row[ky * run3..(ky + 1) * run3], &x[src..src + run3]);
            }
            pos.advance(g);
            continue;
        }
        for ky in 0..3 {
            let dst = &mut row[ky * 3 * c..(ky + 1) * 3 * c];
            match pos.run(g, ky) {
                None => zero_run(dst),
                Some((off, kx)) => {
                    zero_run(&mut dst[..kx.start * c]);
                    zero_run(&mut dst[kx.end * c..]);
                    copy_run(
                        &mut dst[kx.start * c..kx.end * c],
                        &x[off..off + kx.len() * c],
                    );
                }
            }
        }
        pos.advance(g);
    }
}

/// One past the last input value (offset into `[b, h, w, cin]`) that output positions `ms`
/// read: [`col2im_add`] over `ms` writes nothing at or beyond it.
pub fn read_end(g: &Geo, ms: Range<usize>) -> usize {
    if ms.is_empty() {
        return 0;
    }
    // One past the last value that output `(img, oy, ox)` reads.
    let end = |p: Pos| {
        let iy = (p.oy * g.s + 1).min(g.h - 1);
        let ix = (p.ox * g.s + 1).min(g.w - 1);
        ((p.img * g.h + iy) * g.w + ix + 1) * g.cin
    };
    // Offsets grow with the position, except that two output rows can share the last input
    // row, where the earlier row's end reads further right.
    let last = Pos::of(g, ms.end - 1);
    let mut out = end(last);
    if last.oy > 0 {
        let prev_row_end = ms.end - 1 - last.ox - 1;
        if prev_row_end >= ms.start {
            out = out.max(end(Pos::of(g, prev_row_end)));
        }
    }
    out
}

/// The adjoint of [`im2col`]: adds the column rows of positions `ms` onto `dx`
/// (`[b, h, w, cin]`, or any slice that starts at image `first_img`).
pub fn col2im_add(cols: &[f32], g: &Geo, ms: Range<usize>, dx: &mut [f32], first_img: usize) {
    let (kp, c) = (g.kp(), g.cin);
    let base = first_img * g.h * g.w * c;
    let mut pos = Pos::of(g, ms.start);
    let (run3, line) = (3 * c, g.w * c);
    for row in cols.chunks_exact(kp).take(ms.len()) {
        if let Some(off) = pos.interior(g) {
            for ky in 0..3 {
                let dst = off - base + ky * line;
                dx[dst..dst + run3]
                    .iter_mut()
                    .zip(&row[ky * run3..(ky + 1) * run3])
                    .for_each(|(d, s)| *d += s);
            }
            pos.advance(g);
            continue;
        }
        for ky in 0..3 {
            if let Some((off, kx)) = pos.run(g, ky) {
                let src = &row[ky * 3 * c + kx.start * c..ky * 3 * c + kx.end * c];
                let off = off - base;
                dx[off..off + src.len()]
                    .iter_mut()
                    .zip(src)
                    .for_each(|(d, s)| *d += s);
            }
        }
        pos.advance(g);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `col2im_add` is the adjoint of `im2col`: `<im2col(x), c> = <x, col2im(c)>`, and
    /// `im2col` puts each input value where the convolution reads it.
    #[test]
    fn col2im_is_the_adjoint_of_im2col() {
        for &(cin, h, w, s, b) in &[
            (1, 5, 4, 1, 2),
            (3, 7, 7, 2, 2),
            (2, 4, 6, 2, 1),
            (4, 1, 1, 1, 3),
        ] {
            let g = Geo {
                cin,
                h,
                w,
                ho: (h - 1) / s + 1,
                wo: (w - 1) / s + 1,
                s,
            };
            let x: Vec<f32> = (0..b * h * w * cin)
                .map(|i| (i as f32 * 0.37).sin())
                .collect();
            let rows = b * g.hw_out();
            let kp = g.kp();
            let mut cols = vec![f32::NAN; rows * kp];
            im2col(&x, &g, 0..rows, &mut cols);
            for m in 0..rows {
                let (img, oy, ox) = (m / g.hw_out(), (m % g.hw_out()) / g.wo, m % g.wo);
                for ky in 0..3 {
                    for kx in 0..3 {
                        for ci in 0..cin {
                            let (iy, ix) = ((oy * s + ky) as isize - 1, (ox * s + kx) as isize - 1);
                            let want = if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                0.0
                            } else {
                                x[((img * h + iy as usize) * w + ix as usize) * cin + ci]
                            };
                            assert_eq!(cols[m * kp + (ky * 3 + kx) * cin + ci], want);
                        }
                    }
                }
                assert!(
                    cols[m * kp + 9 * cin..(m + 1) * kp]
                        .iter()
                        .all(|&v| v == 0.0)
                );
            }
            let c: Vec<f32> = (0..rows * kp).map(|i| (i as f32 * 0.11).cos()).collect();
            let mut dx = vec![0.0f32; x.len()];
            col2im_add(&c, &g, 0..rows, &mut dx, 0);
            // Zeroing lazily up to `read_end` of each piece (as the kernel does) over a buffer
            // of garbage gives the same sums.
            for piece in [1, 2, 3, 5, 7] {
                let mut lazy = vec![f32::NAN; x.len()];
                let mut zeroed = 0;
                for p0 in (0..rows).step_by(piece) {
                    let p1 = (p0 + piece).min(rows);
                    let end = read_end(&g, p0..p1).max(zeroed);
                    lazy[zeroed..end].fill(0.0);
                    zeroed = end;
                    col2im_add(&c[p0 * kp..p1 * kp], &g, p0..p1, &mut lazy, 0);
                }
                lazy[zeroed..].fill(0.0);
                assert_eq!(lazy, dx, "pieces of {piece}");
            }
            let lhs: f64 = cols.iter().zip(&c).map(|(a, b)| (a * b) as f64).sum();
            let rhs: f64 = x.iter().zip(&dx).map(|(a, b)| (a * b) as f64).sum();
            assert!(
                (lhs - rhs).abs() < 1e-4 * (1.0 + lhs.abs()),
                "{lhs} vs {rhs}"
            );
        }
    }
}
