//! The CIFAR-10 / CIFAR-100 binary version: fixed-size records of label byte(s) and
//! 3x32x32 pixels (channel-major).

use std::path::Path;

use super::{DataError, Dataset, read_maybe_gz};

const PIXELS: usize = 3 * 32 * 32;

/// Which CIFAR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CifarVariant {
    /// One label byte per record, 10 classes.
    Cifar10,
    /// A coarse and a fine label byte per record; jem uses the fine label (100 classes).
    Cifar100,
}

impl CifarVariant {
    fn label_bytes(self) -> usize {
        match self {
            CifarVariant::Cifar10 => 1,
            CifarVariant::Cifar100 => 2,
        }
    }
    fn num_classes(self) -> usize {
        match self {
            CifarVariant::Cifar10 => 10,
            CifarVariant::Cifar100 => 100,
        }
    }
}

/// Parse one CIFAR binary file into (pixels, labels).
pub fn read_cifar_file(
    path: &Path,
    variant: CifarVariant,
    hint: &str,
) -> Result<(Vec<u8>, Vec<u8>), DataError> {
    let bytes = read_maybe_gz(path, hint)?;
    let record = variant.label_bytes() + PIXELS;
    if bytes.is_empty() || bytes.len() % record != 0 {
        return Err(DataError::malformed(
            path,
            format!(
                "{} bytes is not a positive multiple of the {record}-byte {variant:?} record (truncated or not a CIFAR binary file)",
                bytes.len()
            ),
        ));
    }
    let n = bytes.len() / record;
    let mut pixels = Vec::with_capacity(n * PIXELS);
    let mut labels = Vec::with_capacity(n);
    for (i, rec) in bytes.chunks_exact(record).enumerate() {
        let label = rec[variant.label_bytes() - 1];
        if label as usize >= variant.num_classes() {
            return Err(DataError::malformed(
                path,
                format!(
                    "label {label} of record {i} is out of range 0..{}",
                    variant.num_classes()
                ),
            ));
        }
        labels.push(label);
        pixels.extend_from_slice(&rec[variant.label_bytes()..]);
    }
    Ok((pixels, labels))
}

pub(crate) fn read_cifar_files(
    dir: &Path,
    names: &[String],
    variant: CifarVariant,
    hint: &str,
) -> Result<Dataset, DataError> {
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    let mut last = dir.to_path_buf();
    for name in names {
        let path = dir.join(name);
        let (p, l) = read_cifar_file(&path, variant, hint)?;
        pixels.extend_from_slice(&p);
        labels.extend_from_slice(&l);
        last = path;
    }
    Dataset::from_u8(&pixels, labels, [3, 32, 32], variant.num_classes(), &last)
}
