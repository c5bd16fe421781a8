//! Loops the CPU kernel's SGLD gradient (forward + input gradient of `lse f(x)`) of the
//! benchmark CNN at batch 64, for profiling (`perf record`): nothing else runs.
//!
//! `cargo run --release --example kernel_profile -- [steps] [threads] [f32|bf16]`

use jem::cnn_cpu::{CnnKernel, HostTarget, Precision};
use jem::model::ModelConfig;
use jem::rng::Rng;

fn main() {
    let mut args = std::env::args().skip(1);
    let steps: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(200);
    if let Some(t) = args
        .next()
        .and_then(|s| s.parse::<usize>().ok())
        .filter(|&t| t > 0)
    {
        rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build_global()
            .expect("thread pool");
    }
    let precision = match args.next().as_deref() {
        Some("bf16") => Precision::Bf16,
        _ => Precision::F32,
    };
    let device = jem::default_device();
    let model = ModelConfig::default().init_seeded(1, 10, &device, 0);
    let mut kernel =
        CnnKernel::with_precision(&model, precision).expect("the CNN at this precision");
    let b = 64;
    let mut x = vec![0.0f32; b * 28 * 28];
    Rng::new(0, 0).fill_uniform(&mut x, -1.0, 1.0);
    let mut times = Vec::new();
    for _ in 0..steps {
        let t = std::time::Instant::now();
        let (g, _) = kernel.input_grad(&x, b, [1, 28, 28], HostTarget::Marginal);
        times.push(t.elapsed().as_secs_f64() * 1e3);
        std::hint::black_box(g);
    }
    let mut rng = Rng::new(1, 2);
    let mut noise = vec![0.0f32; x.len()];
    let t = std::time::Instant::now();
    for _ in 0..20 {
        rng.fill_normal(&mut noise, 0.01);
    }
    println!(
        "noise for one step: {:.3} ms",
        t.elapsed().as_secs_f64() * 1e3 / 20.0
    );
    times.sort_by(f64::total_cmp);
    let ms = times[times.len() / 2];
    println!(
        "median {ms:.2} ms per step = {:.0} GFLOP/s",
        2.5118 / ms * 1e3
    );
}
