//! The one random generator of a run: xoshiro256++ seeded by SplitMix64.
//!
//! Its whole state is four `u64` words, saved with every checkpoint, so that a resumed run
//! draws exactly the numbers the uninterrupted run would have drawn.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// A small, fast, serialisable pseudo-random generator (xoshiro256++).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rng {
    s: [u64; 4],
}

fn splitmix64(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Rng {
    /// A generator for `seed` and an independent `stream` (e.g. one per purpose).
    pub fn new(seed: u64, stream: u64) -> Self {
        let mut x = seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03);
        let s = [
            splitmix64(&mut x),
            splitmix64(&mut x),
            splitmix64(&mut x),
            splitmix64(&mut x),
        ];
        Rng { s }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = (s[0].wrapping_add(s[3])).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in `[0, 1)` with 24 bits of precision.
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 * (1.0 / (1u64 << 24) as f32)
    }

    /// Uniform in `[lo, hi)`.
    pub fn uniform_in(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.uniform()
    }

    /// Uniform integer in `0..n` (`n > 0`), without modulo bias.
    pub fn below(&mut self, n: usize) -> usize {
        debug_assert!(n > 0);
        let n = n as u64;
        let zone = u64::MAX - (u64::MAX % n);
        loop {
            let v = self.next_u64();
            if v < zone {
                return (v % n) as usize;
            }
        }
    }

    /// A standard normal deviate (Box-Muller, both values of a pair are used via `fill_normal`).
    pub fn normal(&mut self) -> f32 {
        let mut one = [0.0f32; 1];
        self.fill_normal(&mut one, 1.0);
        one[0]
    }

    /// Fill `out` with independent `N(0, std^2)` deviates.
    pub fn fill_normal(&mut self, out: &mut [f32], std: f32) {
        // The generator is sequential, the transforms are not: draw the raw words in order,
        // then transform large fills in parallel (the same values as one pair at a time).
        const PAR: usize = 1 << 13;
        if out.len() < PAR {
            let mut chunks = out.chunks_exact_mut(2);
            for pair in &mut chunks {
                let (a, b) = box_muller(self.next_u64(), self.next_u64());
                pair[0] = a * std;
                pair[1] = b * std;
            }
            if let [last] = chunks.into_remainder() {
                *last = box_muller(self.next_u64(), self.next_u64()).0 * std;
            }
            return;
        }
        let words: Vec<u64> = (0..2 * out.len().div_ceil(2))
            .map(|_| self.next_u64())
            .collect();
        out.par_chunks_mut(PAR)
            .zip(words.par_chunks(PAR))
            .for_each(|(out, words)| {
                for (pair, w) in out.chunks_mut(2).zip(words.chunks_exact(2)) {
                    let (a, b) = box_muller(w[0], w[1]);
                    pair[0] = a * std;
                    if let Some(v) = pair.get_mut(1) {
                        *v = b * std;
                    }
                }
            });
    }

    /// Fill `out` with uniform deviates in `[lo, hi)`.
    pub fn fill_uniform(&mut self, out: &mut [f32], lo: f32, hi: f32) {
        for v in out {
            *v = self.uniform_in(lo, hi);
        }
    }

    /// A uniformly random permutation of `0..n` (Fisher-Yates).
    pub fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut p: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            let j = self.below(i + 1);
            p.swap(i, j);
        }
        p
    }
}

/// Two standard normal deviates from two raw words (Box-Muller).
fn box_muller(w1: u64, w2: u64) -> (f32, f32) {
    // u1 in (0, 1] so that ln(u1) is finite.
    let u1 = ((w1 >> 11) as f64 + 1.0) * (1.0 / (1u64 << 53) as f64);
    let u2 = (w2 >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
    let r = (-2.0 * u1.ln()).sqrt();
    let theta = std::f64::consts::TAU * u2;
    ((r * theta.cos()) as f32, (r * theta.sin()) as f32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_and_state_round_trip() {
        let mut a = Rng::new(7, 1);
        let mut b = Rng::new(7, 1);
        let mut c = Rng::new(7, 2);
        let xs: Vec<u64> = (0..8).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..8).map(|_| b.next_u64()).collect();
        assert_eq!(xs, ys);
        assert_ne!(xs[0], c.next_u64());
        let saved = serde_json::to_string(&a).unwrap();
        let mut restored: Rng = serde_json::from_str(&saved).unwrap();
        assert_eq!(a.next_u64(), restored.next_u64());
    }

    #[test]
    fn normal_moments() {
        let mut r = Rng::new(1, 0);
        let mut v = vec![0.0f32; 100_001];
        r.fill_normal(&mut v, 2.0);
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        assert!(mean.abs() < 0.03, "mean {mean}");
        assert!((var - 4.0).abs() < 0.08, "var {var}");
    }

    #[test]
    fn below_is_in_range_and_covers() {
        let mut r = Rng::new(3, 0);
        let mut seen = [0usize; 7];
        for _ in 0..7000 {
            seen[r.below(7)] += 1;
        }
        assert!(seen.iter().all(|&c| c > 800 && c < 1200), "{seen:?}");
        let p = r.permutation(50);
        let mut s = p.clone();
        s.sort();
        assert_eq!(s, (0..50).collect::<Vec<_>>());
    }

    /// A large fill (transformed in parallel) draws exactly the values of small fills (one
    /// pair at a time) from the same generator, odd lengths included.
    #[test]
    fn large_normal_fills_equal_small_ones() {
        for n in [20_001usize, 16_384] {
            let mut a = Rng::new(7, 3);
            let mut b = a.clone();
            let mut big = vec![0.0f32; n];
            a.fill_normal(&mut big, 0.5);
            let mut small = vec![0.0f32; n];
            for chunk in small.chunks_mut(1000) {
                b.fill_normal(chunk, 0.5);
            }
            assert_eq!(big, small);
            assert_eq!(a.next_u64(), b.next_u64());
        }
    }
}
