//! A small, easily learnt data set written in the Fashion-MNIST file layout, for smoke tests
//! and examples that must not depend on installed data: class `k` is a noisy background of
//! mean brightness `25 + 20k` (so even a globally pooled network tells the classes apart)
//! with a bright horizontal bar at row `2 + 2k`.

use std::path::Path;

use super::write_idx;
use crate::rng::Rng;

fn images(n: usize, rng: &mut Rng) -> (Vec<u8>, Vec<u8>) {
    let mut pixels = vec![0u8; n * 784];
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let k = rng.below(10);
        labels.push(k as u8);
        let img = &mut pixels[i * 784..(i + 1) * 784];
        for p in img.iter_mut() {
            *p = (5.0 + 20.0 * k as f32 + rng.uniform() * 40.0) as u8;
        }
        let row = 2 + 2 * k;
        for y in row..row + 2 {
            for x in 4..24 {
                img[y * 28 + x] = 230 + (rng.uniform() * 25.0) as u8;
            }
        }
    }
    (pixels, labels)
}

/// Write `train-*` and `t10k-*` IDX files (gzip) with `n_train` and `n_test` images into
/// `dir`, which can then be read as `--dataset fashion-mnist --data-dir DIR`.
pub fn write_synthetic_fashion(
    dir: &Path,
    n_train: usize,
    n_test: usize,
    seed: u64,
) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut rng = Rng::new(seed, 0x5717);
    for (prefix, n) in [("train", n_train), ("t10k", n_test)] {
        let (pixels, labels) = images(n, &mut rng);
        write_idx(
            &dir.join(format!("{prefix}-images-idx3-ubyte.gz")),
            &[n, 28, 28],
            &pixels,
        )?;
        write_idx(
            &dir.join(format!("{prefix}-labels-idx1-ubyte.gz")),
            &[n],
            &labels,
        )?;
    }
    Ok(())
}
