//! PNG grids of images in `[-1, 1]`.

use std::path::Path;

use crate::checkpoint::write_atomic;
use crate::{Error, Result};

/// Gap between tiles, pixels.
const GAP: usize = 2;

/// Encode `n` images (`[n, c, h, w]`, values in `[-1, 1]`, clamped) as a PNG grid with `cols`
/// columns; 1-channel images become grey, 3-channel RGB.
pub fn grid_png(images: &[f32], n: usize, shape: [usize; 3], cols: usize) -> Result<Vec<u8>> {
    let [c, h, w] = shape;
    if c != 1 && c != 3 {
        return Err(Error::Shape(format!(
            "{c} channels: a PNG grid needs 1 or 3"
        )));
    }
    if images.len() != n * c * h * w || n == 0 {
        return Err(Error::Shape(format!(
            "{} values for {n} images of {shape:?}",
            images.len()
        )));
    }
    let cols = cols.clamp(1, n);
    let rows = n.div_ceil(cols);
    let width = cols * (w + GAP) + GAP;
    let height = rows * (h + GAP) + GAP;
    let mut rgb = vec![255u8; width * height * 3];
    for i in 0..n {
        let (r, q) = (i / cols, i % cols);
        let img = &images[i * c * h * w..(i + 1) * c * h * w];
        for y in 0..h {
            for x in 0..w {
                let px = GAP + q * (w + GAP) + x;
                let py = GAP + r * (h + GAP) + y;
                for ch in 0..3 {
                    let src = if c == 1 { 0 } else { ch };
                    let v = img[(src * h + y) * w + x];
                    let v = ((v.clamp(-1.0, 1.0) + 1.0) * 127.5).round() as u8;
                    rgb[(py * width + px) * 3 + ch] = v;
                }
            }
        }
    }
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, width as u32, height as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc
            .write_header()
            .map_err(|e| Error::Shape(format!("png: {e}")))?;
        writer
            .write_image_data(&rgb)
            .map_err(|e| Error::Shape(format!("png: {e}")))?;
    }
    Ok(out)
}

/// Write a PNG grid to `path` atomically.
pub fn save_grid(
    path: &Path,
    images: &[f32],
    n: usize,
    shape: [usize; 3],
    cols: usize,
) -> Result<()> {
    let bytes = grid_png(images, n, shape, cols)?;
    Ok(write_atomic(path, &bytes)?)
}
