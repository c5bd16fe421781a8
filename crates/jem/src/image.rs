//! PNG grids of images in `[-1, 1]`.

use std::path::Path;

use crate::tensor_file::write_atomic;
use crate::{Error, Result};

/// Gap between tiles, pixels.
const GAP: usize = 2;

/// Encode `n` images (`[n, c, h, w]`, values in `[-1, 1]`, clamped) as a PNG grid with `cols`
/// columns, each pixel drawn as a `scale` x `scale` block; 1-channel images become grey,
/// 3-channel RGB.
pub fn grid_png(
    images: &[f32],
    n: usize,
    shape: [usize; 3],
    cols: usize,
    scale: usize,
) -> Result<Vec<u8>> {
    let [c, h0, w0] = shape;
    let scale = scale.max(1);
    let (h, w) = (h0 * scale, w0 * scale);
    if c != 1 && c != 3 {
        return Err(Error::Shape(format!(
            "{c} channels: a PNG grid needs 1 or 3"
        )));
    }
    if images.len() != n * c * h0 * w0 || n == 0 {
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
        let img = &images[i * c * h0 * w0..(i + 1) * c * h0 * w0];
        for y in 0..h {
            for x in 0..w {
                let px = GAP + q * (w + GAP) + x;
                let py = GAP + r * (h + GAP) + y;
                for ch in 0..3 {
                    let src = if c == 1 { 0 } else { ch };
                    let v = img[(src * h0 + y / scale) * w0 + x / scale];
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

/// Write a PNG grid (see [`grid_png`]) to `path` atomically.
pub fn save_grid(
    path: &Path,
    images: &[f32],
    n: usize,
    shape: [usize; 3],
    cols: usize,
    scale: usize,
) -> Result<()> {
    let bytes = grid_png(images, n, shape, cols, scale)?;
    Ok(write_atomic(path, &bytes)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_pixels_land_where_expected() {
        // Two 1x2x2 images: the first black/white/white/black, the second all white.
        let imgs = [-1.0, 1.0, 1.0, -1.0, 1.0, 1.0, 1.0, 1.0];
        let png = grid_png(&imgs, 2, [1, 2, 2], 2, 3).unwrap();
        let dec = png::Decoder::new(std::io::Cursor::new(png));
        let mut reader = dec.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        let (w, h) = (info.width as usize, info.height as usize);
        assert_eq!((w, h), (2 * (6 + GAP) + GAP, 6 + 2 * GAP));
        let at = |x: usize, y: usize| buf[(y * w + x) * 3];
        assert_eq!(at(GAP, GAP), 0); // top-left block of image 0 is black
        assert_eq!(at(GAP + 2, GAP + 2), 0);
        assert_eq!(at(GAP + 3, GAP), 255); // its top-right block is white
        assert_eq!(at(GAP + 5, GAP + 5), 0);
        assert_eq!(at(GAP + 6 + GAP, GAP), 255); // image 1
        assert!(grid_png(&imgs, 3, [1, 2, 2], 2, 1).is_err());
        assert!(grid_png(&imgs[..4], 1, [4, 1, 1], 1, 1).is_err());
    }
}
