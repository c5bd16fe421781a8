//! What the binary's tests share: running `jem` and training a tiny run.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

/// Run the `jem` binary.
pub fn jem(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_jem"))
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("the jem binary runs")
}

pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Train a tiny run on the synthetic data in `data` into `out`.
pub fn train_tiny(data: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "--threads",
        "2",
        "train",
        "--dataset",
        "fashion-mnist",
        "--data-dir",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--batch-size",
        "16",
        "--n-valid",
        "32",
        "--buffer-size",
        "100",
        "--sgld-steps",
        "3",
        "--lr",
        "1e-3",
        "--warmup-steps",
        "2",
        "--quiet",
    ];
    args.extend_from_slice(extra);
    jem(&args)
}
