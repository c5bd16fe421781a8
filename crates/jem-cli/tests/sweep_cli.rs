//! `jem sweep` end to end on a small synthetic data set: a grid trained by two processes at
//! once into its table, its status and heat map; bad grids refused before any cell runs.

mod common;

use common::{jem, text};

#[test]
fn a_sweep_runs_its_grid_in_parallel_and_refuses_bad_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    jem::data::synthetic::write_synthetic_fashion(&data, 128, 32, 1).unwrap();
    let dir = tmp.path().join("sweep");
    let data_dir = format!("data.dir={}", data.display());
    let args = |grid: &str| -> Vec<String> {
        [
            "--threads",
            "2",
            "sweep",
            "--out",
            dir.to_str().unwrap(),
            "--set",
            &data_dir,
            "--set",
            "data.n_valid=32",
            "--set",
            "model.widths=[8, 16]",
            "--set",
            "schedule.batch_size=16",
            "--set",
            "buffer.size=64",
            "--set",
            "sgld.steps=2",
            "--set",
            "optim.warmup_steps=0",
            "--max-steps",
            "4",
            "--ood",
            "uniform",
            "--grid",
            grid,
            "--seeds",
            "0,1",
            "--jobs",
            "2",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let run = |a: Vec<String>| jem(&a.iter().map(String::as_str).collect::<Vec<_>>());
    // A misspelt key: refused, naming it, before anything is written.
    let o = run(args("optim.lrr=1e-3,3e-3"));
    assert!(
        !o.status.success() && text(&o).contains("optim.lrr"),
        "{}",
        text(&o)
    );
    assert!(!dir.exists());
    let o = run(args("optim.lr=1e-3,3e-3"));
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("4 cells: 4 finished"), "{}", text(&o));
    let csv = std::fs::read_to_string(dir.join("results.csv")).unwrap();
    assert_eq!(csv.lines().count(), 5, "{csv}");
    assert!(
        csv.lines().next().unwrap().contains("auroc:logp/uniform"),
        "{csv}"
    );
    for cell in ["000-seed0", "000-seed1", "001-seed0", "001-seed1"] {
        assert!(dir.join("cells").join(cell).join("state.json").exists());
    }
    let o = jem(&["sweep", "status", dir.to_str().unwrap()]);
    assert!(
        o.status.success() && text(&o).matches("] finished").count() == 4,
        "{}",
        text(&o)
    );
    let png = tmp.path().join("map.png");
    let o = jem(&[
        "sweep",
        "plot",
        dir.to_str().unwrap(),
        "--x",
        "optim.lr",
        "--y",
        "seed",
        "--out",
        png.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(std::fs::read(&png).unwrap().starts_with(b"\x89PNG"));
    assert!(png.with_extension("html").exists());
    // Another grid for the same directory.
    let o = run(args("optim.lr=1e-3"));
    assert!(
        !o.status.success() && text(&o).contains("holds another sweep"),
        "{}",
        text(&o)
    );
}
