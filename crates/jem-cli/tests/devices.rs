//! Where `jem train` trains: `--device` and `--devices`, on a new run and on a resumed one.

mod common;

use std::path::Path;

use common::{jem, text, train_tiny};
use jem::config::{DeviceSpec, TrainConfig};

fn devices(run: &Path) -> Vec<DeviceSpec> {
    TrainConfig::load_run(run).unwrap().devices
}

fn step(run: &Path) -> u64 {
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("state.json")).unwrap()).unwrap();
    state["step"].as_u64().unwrap()
}

#[test]
fn a_data_parallel_run_resumed_with_device_goes_on_on_that_device_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    jem::data::synthetic::write_synthetic_fashion(&data, 64, 8, 1).unwrap();
    let run = tmp.path().join("dp");
    let o = train_tiny(&data, &run, &["--devices", "cpu,cpu", "--max-steps", "2"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(devices(&run), vec![DeviceSpec::Cpu, DeviceSpec::Cpu]);

    let r = run.to_str().unwrap();
    let o = jem(&[
        "--threads",
        "2",
        "--device",
        "cpu",
        "-v",
        "train",
        "--quiet",
        "--resume",
        r,
        "--max-steps",
        "4",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("training on cpu alone, not data parallel over cpu,cpu"),
        "{}",
        text(&o)
    );
    assert!(devices(&run).is_empty(), "{:?}", devices(&run));
    assert_eq!(step(&run), 4);

    // And back to data parallel with --devices.
    let o = jem(&[
        "--threads",
        "2",
        "train",
        "--quiet",
        "--resume",
        r,
        "--devices",
        "cpu,cpu",
        "--max-steps",
        "6",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(devices(&run), vec![DeviceSpec::Cpu, DeviceSpec::Cpu]);
    assert_eq!(step(&run), 6);
}

#[test]
fn device_and_devices_that_disagree_are_refused_before_any_work() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    jem::data::synthetic::write_synthetic_fashion(&data, 64, 8, 1).unwrap();
    let out = tmp.path().join("x");
    let o = train_tiny(
        &data,
        &out,
        &[
            "--device",
            "wgpu:cpu",
            "--devices",
            "cpu,cpu",
            "--max-steps",
            "1",
        ],
    );
    assert!(!o.status.success(), "accepted");
    assert!(
        text(&o).contains("--device wgpu:cpu and --devices cpu,cpu name different devices"),
        "{}",
        text(&o)
    );
    assert!(!out.exists(), "a run directory was made");
    // Agreeing flags are fine.
    let o = train_tiny(
        &data,
        &out,
        &[
            "--device",
            "cpu",
            "--devices",
            "cpu,cpu",
            "--max-steps",
            "1",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(devices(&out), vec![DeviceSpec::Cpu, DeviceSpec::Cpu]);
}
