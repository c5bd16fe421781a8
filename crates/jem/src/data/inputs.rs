//! Images from outside a data set, for prediction: PNG files (8- or 16-bit grey, grey-alpha,
//! RGB, RGBA or palette), IDX image files and `.npy` arrays (`[n, h, w]` or `[n, c, h, w]`,
//! `uint8` or float in `[0, 1]`), fitted to a model's input shape.
//!
//! Pixel values here are in `[0, 1]`, as users and other runtimes hold them; a model sees
//! them in `[-1, 1]` ([`Images::to_model_range`]).

use std::path::Path;

use super::{DataError, MAX_FILE_BYTES, read_idx, read_maybe_gz};

/// Images in `[0, 1]`, `[n, c, h, w]` row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Images {
    /// `n * c * h * w` values in `[0, 1]`.
    pub pixels: Vec<f32>,
    /// `[c, h, w]`.
    pub shape: [usize; 3],
}

impl Images {
    /// Images from `pixels` (`[n, c, h, w]`), refusing a length that is not a whole number
    /// of images and values that are non-finite or outside `[0, 1]` (`what` names the source).
    pub fn new(pixels: Vec<f32>, shape: [usize; 3], what: &Path) -> Result<Self, DataError> {
        let len: usize = shape.iter().product();
        if len == 0 || !pixels.len().is_multiple_of(len) {
            return Err(DataError::malformed(
                what,
                format!(
                    "{} values are not a whole number of {shape:?} images",
                    pixels.len()
                ),
            ));
        }
        if let Some((i, v)) = pixels
            .iter()
            .enumerate()
            .find(|(_, v)| !(0.0..=1.0).contains(*v))
        {
            return Err(DataError::malformed(
                what,
                format!("value {v} at index {i}: pixel values must be finite and in [0, 1]"),
            ));
        }
        Ok(Images { pixels, shape })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.pixels.len() / self.image_len().max(1)
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.pixels.is_empty()
    }

    /// Values per image.
    pub fn image_len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Image `i` as a slice.
    pub fn image(&self, i: usize) -> &[f32] {
        let n = self.image_len();
        &self.pixels[i * n..(i + 1) * n]
    }

    /// The pixels scaled to the models' range `[-1, 1]` (`2x - 1`).
    pub fn to_model_range(&self) -> Vec<f32> {
        self.pixels.iter().map(|v| 2.0 * v - 1.0).collect()
    }

    /// These images followed by `other`'s (of the same shape).
    pub fn append(&mut self, other: Images) {
        debug_assert_eq!(self.shape, other.shape);
        self.pixels.extend(other.pixels);
    }

    /// The images in `shape` (`[c, h, w]`): grey becomes RGB by repeating the channel, RGB
    /// grey by luminance (ITU-R BT.601); another height or width is an error naming `what`
    /// unless `resize` (bilinear) is set.
    pub fn fit(self, shape: [usize; 3], resize: bool, what: &Path) -> Result<Images, DataError> {
        let [c, h, w] = self.shape;
        let mut out = self;
        if c != shape[0] {
            out = match (c, shape[0]) {
                (1, 3) => map_images(&out, [3, h, w], |img, o| {
                    (0..3).for_each(|k| o[k * h * w..(k + 1) * h * w].copy_from_slice(img))
                }),
                (3, 1) => map_images(&out, [1, h, w], |img, o| {
                    for (p, v) in o.iter_mut().enumerate() {
                        *v = 0.299 * img[p] + 0.587 * img[h * w + p] + 0.114 * img[2 * h * w + p];
                    }
                }),
                _ => {
                    return Err(DataError::malformed(
                        what,
                        format!("{c} channels cannot be converted to {}", shape[0]),
                    ));
                }
            };
        }
        if [h, w] != [shape[1], shape[2]] {
            if !resize {
                return Err(DataError::Shape {
                    path: what.to_path_buf(),
                    found: [shape[0], h, w],
                    expected: shape,
                });
            }
            out = map_images(&out, shape, |img, o| {
                bilinear(img, [shape[0], h, w], shape, o)
            });
        }
        Ok(out)
    }
}

/// Each image of `images` turned into one of `shape` by `f(image, out)`.
fn map_images(images: &Images, shape: [usize; 3], f: impl Fn(&[f32], &mut [f32])) -> Images {
    let len: usize = shape.iter().product();
    let mut pixels = vec![0.0f32; images.len() * len];
    for (i, o) in pixels.chunks_exact_mut(len).enumerate() {
        f(images.image(i), o);
    }
    Images { pixels, shape }
}

/// Bilinear resampling of one image (pixel centres aligned, edges clamped).
fn bilinear(img: &[f32], [c, h, w]: [usize; 3], [_, oh, ow]: [usize; 3], out: &mut [f32]) {
    let coord = |o: usize, n_out: usize, n_in: usize| {
        let x = ((o as f32 + 0.5) * n_in as f32 / n_out as f32 - 0.5).clamp(0.0, (n_in - 1) as f32);
        let x0 = x.floor() as usize;
        (x0, (x0 + 1).min(n_in - 1), x - x0 as f32)
    };
    for k in 0..c {
        let src = &img[k * h * w..(k + 1) * h * w];
        for y in 0..oh {
            let (y0, y1, fy) = coord(y, oh, h);
            for x in 0..ow {
                let (x0, x1, fx) = coord(x, ow, w);
                let top = src[y0 * w + x0] * (1.0 - fx) + src[y0 * w + x1] * fx;
                let bottom = src[y1 * w + x0] * (1.0 - fx) + src[y1 * w + x1] * fx;
                out[(k * oh + y) * ow + x] = top * (1.0 - fy) + bottom * fy;
            }
        }
    }
}

/// Decode one PNG image (`what` names it in errors) into 1 (grey) or 3 (colour) channels;
/// alpha is dropped, 16-bit samples are reduced to 8 bits, palettes are expanded.
pub fn decode_png(bytes: &[u8], what: &Path) -> Result<Images, DataError> {
    let mut decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let bad =
        |e: png::DecodingError| DataError::malformed(what, format!("not a readable PNG: {e}"));
    let mut reader = decoder.read_info().map_err(bad)?;
    let size = reader
        .output_buffer_size()
        .filter(|&n| n as u64 <= MAX_FILE_BYTES)
        .ok_or_else(|| DataError::malformed(what, "PNG image too large"))?;
    let mut buf = vec![0u8; size];
    let info = reader.next_frame(&mut buf).map_err(bad)?;
    let (h, w) = (info.height as usize, info.width as usize);
    let channels = info.color_type.samples();
    let keep = if channels >= 3 { 3 } else { 1 };
    let mut pixels = vec![0.0f32; keep * h * w];
    for (p, px) in buf[..info.buffer_size()].chunks_exact(channels).enumerate() {
        for k in 0..keep {
            pixels[k * h * w + p] = f32::from(px[k]) / 255.0;
        }
    }
    Images::new(pixels, [keep, h, w], what)
}

/// Read a `.npy` array of images: `[n, h, w]` (one channel) or `[n, c, h, w]`, C order,
/// `uint8` (0..=255) or `float32`/`float64` in `[0, 1]`.
pub fn decode_npy(bytes: &[u8], what: &Path) -> Result<Images, DataError> {
    use npyz::{DType, TypeChar};
    let bad = |e: std::io::Error| DataError::malformed(what, format!("not a readable .npy: {e}"));
    let npy = npyz::NpyFile::new(bytes).map_err(bad)?;
    let dims: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    let shape = match dims[..] {
        [_, h, w] => [1, h, w],
        [_, c, h, w] => [c, h, w],
        _ => {
            return Err(DataError::malformed(
                what,
                format!("array of shape {dims:?}: images are [n, h, w] or [n, c, h, w]"),
            ));
        }
    };
    if npy.order() != npyz::Order::C {
        return Err(DataError::malformed(
            what,
            "Fortran-order array: save it in C order",
        ));
    }
    let DType::Plain(ty) = npy.dtype() else {
        return Err(DataError::malformed(
            what,
            "structured array: needs uint8 or float",
        ));
    };
    let pixels: Vec<f32> = match (ty.type_char(), ty.size_field()) {
        (TypeChar::Uint, 1) => {
            let v: Vec<u8> = npy.into_vec().map_err(bad)?;
            v.into_iter().map(|b| f32::from(b) / 255.0).collect()
        }
        (TypeChar::Float, 4) => npy.into_vec::<f32>().map_err(bad)?,
        (TypeChar::Float, 8) => {
            let v: Vec<f64> = npy.into_vec().map_err(bad)?;
            v.into_iter().map(|x| x as f32).collect()
        }
        _ => {
            return Err(DataError::malformed(
                what,
                format!("dtype {ty}: needs uint8, float32 or float64"),
            ));
        }
    };
    Images::new(pixels, shape, what)
}

/// Read the images of one file, by its content: PNG (by signature), `.npy` (by magic) or IDX
/// (gzip or raw).
pub fn read_images(path: &Path) -> Result<Images, DataError> {
    let bytes = read_maybe_gz(path, "")?;
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        return decode_png(&bytes, path);
    }
    if bytes.starts_with(b"\x93NUMPY") {
        return decode_npy(&bytes, path);
    }
    if bytes.len() >= 4 && bytes[0] == 0 && bytes[1] == 0 {
        let idx = read_idx(&bytes, path)?;
        if idx.dims.len() != 3 {
            return Err(DataError::malformed(
                path,
                format!("an IDX image file is [n, h, w], this one is {:?}", idx.dims),
            ));
        }
        let pixels = idx.data.iter().map(|&b| f32::from(b) / 255.0).collect();
        return Images::new(pixels, [1, idx.dims[1], idx.dims[2]], path);
    }
    Err(DataError::malformed(
        path,
        "neither PNG, .npy nor IDX: images are read from PNG files, .npy arrays or IDX files",
    ))
}
