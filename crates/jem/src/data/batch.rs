//! Epoch-ordered mini-batches with augmentation and data noise, all drawn from the run's RNG.

use serde::{Deserialize, Serialize};

use super::Dataset;
use crate::rng::Rng;

/// Augmentation applied to training images.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Augment {
    /// Reflect-pad by this many pixels, then crop back at a random offset (0 = off).
    pub crop_pad: usize,
    /// Random horizontal flips (off for digits and Fashion-MNIST).
    pub hflip: bool,
    /// Standard deviation of Gaussian noise added to each training image (paper: 0.03).
    pub noise_std: f32,
}

impl Default for Augment {
    fn default() -> Self {
        Augment {
            crop_pad: 0,
            hflip: false,
            noise_std: 0.03,
        }
    }
}

/// One mini-batch on the host.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// `[b, c, h, w]` row-major.
    pub images: Vec<f32>,
    /// `b` labels.
    pub labels: Vec<usize>,
    /// The same images without pad-crop and flips, with their own data noise, `[b, c, h, w]`
    /// (only for [`crate::loss::PxData::Plain`]).
    pub plain: Option<Vec<f32>>,
}

/// Deterministic epoch orders: epoch `e` is a permutation drawn from `(seed, e)` alone, so a
/// resumed run finds its place from the step counter without any saved iterator state.
#[derive(Clone, Debug)]
pub struct BatchSampler {
    seed: u64,
    batch_size: usize,
    n: usize,
    epoch: u64,
    order: Vec<usize>,
}

impl BatchSampler {
    /// Batches of `batch_size` over `n` images; a last incomplete batch is dropped.
    pub fn new(n: usize, batch_size: usize, seed: u64) -> Self {
        let mut s = BatchSampler {
            seed,
            batch_size,
            n,
            epoch: u64::MAX,
            order: Vec::new(),
        };
        s.set_epoch(0);
        s
    }

    /// Full batches per epoch.
    pub fn batches_per_epoch(&self) -> usize {
        self.n / self.batch_size
    }

    fn set_epoch(&mut self, epoch: u64) {
        if epoch != self.epoch {
            self.order = Rng::new(self.seed, 0xE90C_0000 + epoch).permutation(self.n);
            self.epoch = epoch;
        }
    }

    /// Image indices of global step `step` (counting from 0 over the whole run), and its epoch.
    pub fn indices(&mut self, step: u64) -> (&[usize], u64) {
        let per = self.batches_per_epoch() as u64;
        let epoch = step / per;
        let k = (step % per) as usize;
        self.set_epoch(epoch);
        (
            &self.order[k * self.batch_size..(k + 1) * self.batch_size],
            epoch,
        )
    }
}

impl Dataset {
    /// Gather `indices` into a batch, augmenting with `aug` (random draws from `rng`).
    pub fn batch(&self, indices: &[usize], aug: &Augment, rng: &mut Rng) -> Batch {
        let [c, h, w] = self.shape;
        let n = self.image_len();
        let mut images = vec![0.0f32; indices.len() * n];
        for (b, &i) in indices.iter().enumerate() {
            let src = self.image(i);
            let dst = &mut images[b * n..(b + 1) * n];
            let p = aug.crop_pad as isize;
            let (dy, dx) = if p > 0 {
                (
                    rng.below(2 * p as usize + 1) as isize - p,
                    rng.below(2 * p as usize + 1) as isize - p,
                )
            } else {
                (0, 0)
            };
            let flip = aug.hflip && rng.below(2) == 1;
            for ch in 0..c {
                for y in 0..h {
                    let sy = reflect(y as isize + dy, h);
                    for x in 0..w {
                        let xx = if flip { w - 1 - x } else { x };
                        let sx = reflect(xx as isize + dx, w);
                        dst[(ch * h + y) * w + x] = src[(ch * h + sy) * w + sx];
                    }
                }
            }
        }
        add_noise(&mut images, aug.noise_std, rng);
        Batch {
            images,
            labels: indices.iter().map(|&i| self.labels[i] as usize).collect(),
            plain: None,
        }
    }

    /// [`Dataset::batch`], then the same images again without pad-crop and flips (with data
    /// noise drawn after the augmented batch's) as [`Batch::plain`].
    pub fn batch_with_plain(&self, indices: &[usize], aug: &Augment, rng: &mut Rng) -> Batch {
        let mut batch = self.batch(indices, aug, rng);
        let mut plain: Vec<f32> = indices
            .iter()
            .flat_map(|&i| self.image(i).iter().copied())
            .collect(); // [b, c, h, w]
        add_noise(&mut plain, aug.noise_std, rng);
        batch.plain = Some(plain);
        batch
    }
}

/// Add Gaussian data noise of standard deviation `std` (none at 0), drawn from `rng`.
fn add_noise(images: &mut [f32], std: f32, rng: &mut Rng) {
    if std > 0.0 {
        let mut noise = vec![0.0f32; images.len()];
        rng.fill_normal(&mut noise, std);
        for (v, e) in images.iter_mut().zip(noise) {
            *v += e;
        }
    }
}

/// Reflect an index into `0..n` (the edge pixel is not repeated, like `reflect` padding).
fn reflect(i: isize, n: usize) -> usize {
    let n = n as isize;
    if n == 1 {
        return 0;
    }
    let period = 2 * (n - 1);
    let m = i.rem_euclid(period);
    (if m < n { m } else { period - m }) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reflect_matches_reflect_padding() {
        let got: Vec<usize> = (-3..7).map(|i| reflect(i, 4)).collect();
        assert_eq!(got, vec![3, 2, 1, 0, 1, 2, 3, 2, 1, 0]);
    }

    #[test]
    fn plain_copies_are_the_images_without_crop_and_flip() {
        let shape = [1, 4, 5];
        let images: Vec<f32> = (0..3 * 20).map(|v| v as f32).collect();
        let data = Dataset {
            images: images.clone(),
            labels: vec![0, 1, 2],
            shape,
            num_classes: 3,
        };
        let aug = Augment {
            crop_pad: 2,
            hflip: true,
            noise_std: 0.0,
        };
        let mut rng = Rng::new(3, 0);
        let a = data.batch(&[2, 0], &aug, &mut rng.clone());
        let b = data.batch_with_plain(&[2, 0], &aug, &mut rng);
        assert_eq!(a.images, b.images, "the augmented rows are unchanged");
        assert_eq!(a.plain, None);
        let mut want = images[40..60].to_vec();
        want.extend_from_slice(&images[0..20]);
        assert_eq!(b.plain.as_deref(), Some(&want[..]));
        assert_ne!(
            b.images, want,
            "pad-crop and flips moved the augmented rows"
        );
    }

    #[test]
    fn epochs_are_permutations_and_reproducible() {
        let mut a = BatchSampler::new(10, 3, 5);
        let mut seen: Vec<usize> = (0..3).flat_map(|s| a.indices(s).0.to_vec()).collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 9);
        let mut b = BatchSampler::new(10, 3, 5);
        assert_eq!(a.indices(4).0.to_vec(), b.indices(4).0.to_vec());
        assert_eq!(a.indices(4).1, 1);
    }
}
