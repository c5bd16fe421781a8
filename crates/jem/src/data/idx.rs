//! The IDX format of MNIST and Fashion-MNIST (raw or gzip).

use std::path::Path;

use super::{DataError, Dataset, read_maybe_gz};

/// A parsed IDX file of unsigned bytes: its dimensions and its payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Idx {
    /// Dimensions from the header.
    pub dims: Vec<usize>,
    /// The payload, exactly `dims.product()` bytes.
    pub data: Vec<u8>,
}

/// Parse IDX bytes (`path` only names the file in errors).
pub fn read_idx(bytes: &[u8], path: &Path) -> Result<Idx, DataError> {
    if bytes.len() < 4 {
        return Err(DataError::malformed(
            path,
            format!("truncated: {} bytes, no IDX header", bytes.len()),
        ));
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(DataError::malformed(
            path,
            format!(
                "bad magic {:02x}{:02x}{:02x}{:02x}: not an IDX file",
                bytes[0], bytes[1], bytes[2], bytes[3]
            ),
        ));
    }
    if bytes[2] != 0x08 {
        return Err(DataError::malformed(
            path,
            format!(
                "IDX element type 0x{:02x} is not unsigned byte (0x08)",
                bytes[2]
            ),
        ));
    }
    let ndim = bytes[3] as usize;
    if ndim == 0 || ndim > 4 {
        return Err(DataError::malformed(
            path,
            format!("IDX with {ndim} dimensions"),
        ));
    }
    let header = 4 + 4 * ndim;
    if bytes.len() < header {
        return Err(DataError::malformed(
            path,
            format!("truncated header: {} bytes, needs {header}", bytes.len()),
        ));
    }
    let mut dims = Vec::with_capacity(ndim);
    let mut total: u64 = 1;
    for k in 0..ndim {
        let b = &bytes[4 + 4 * k..8 + 4 * k];
        let d = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as u64;
        total = total.saturating_mul(d);
        dims.push(d as usize);
    }
    let payload = (bytes.len() - header) as u64;
    if total != payload {
        let what = if total > payload {
            "truncated"
        } else {
            "trailing bytes"
        };
        return Err(DataError::malformed(
            path,
            format!(
                "{what}: header dimensions {dims:?} need {total} bytes of data, file has {payload}"
            ),
        ));
    }
    Ok(Idx {
        dims,
        data: bytes[header..].to_vec(),
    })
}

/// Read an IDX image file (`[n, h, w]`) from disk.
pub fn read_idx_images(path: &Path, hint: &str) -> Result<Idx, DataError> {
    let idx = read_idx(&read_maybe_gz(path, hint)?, path)?;
    if idx.dims.len() != 3 {
        return Err(DataError::malformed(
            path,
            format!(
                "an image file needs 3 dimensions [n, h, w], header has {:?}",
                idx.dims
            ),
        ));
    }
    if idx.dims[1] == 0 || idx.dims[2] == 0 {
        return Err(DataError::malformed(
            path,
            format!("empty image size {:?}", idx.dims),
        ));
    }
    Ok(idx)
}

/// Read an IDX label file (`[n]`) from disk.
pub fn read_idx_labels(path: &Path, hint: &str) -> Result<Vec<u8>, DataError> {
    let idx = read_idx(&read_maybe_gz(path, hint)?, path)?;
    if idx.dims.len() != 1 {
        return Err(DataError::malformed(
            path,
            format!("a label file needs 1 dimension, header has {:?}", idx.dims),
        ));
    }
    Ok(idx.data)
}

/// Read an image file and its label file into a [`Dataset`].
pub(crate) fn read_idx_pair(
    images: &Path,
    labels: &Path,
    num_classes: usize,
    hint: &str,
) -> Result<Dataset, DataError> {
    let img = read_idx_images(images, hint)?;
    let lab = read_idx_labels(labels, hint)?;
    if img.dims[0] != lab.len() {
        return Err(DataError::CountMismatch {
            images: images.to_path_buf(),
            n_images: img.dims[0],
            labels: labels.to_path_buf(),
            n_labels: lab.len(),
        });
    }
    if img.dims[0] == 0 {
        return Err(DataError::malformed(images, "no images"));
    }
    Dataset::from_u8(
        &img.data,
        lab,
        [1, img.dims[1], img.dims[2]],
        num_classes,
        labels,
    )
}

/// Write an IDX file of unsigned bytes (gzip-compressed when `path` ends in `.gz`).
pub fn write_idx(path: &Path, dims: &[usize], data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut bytes = vec![0u8, 0, 0x08, dims.len() as u8];
    for &d in dims {
        bytes.extend_from_slice(&(d as u32).to_be_bytes());
    }
    bytes.extend_from_slice(data);
    if path.extension().is_some_and(|e| e == "gz") {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&bytes)?;
        bytes = enc.finish()?;
    }
    std::fs::write(path, bytes)
}
