//! `jem sweep --launcher slurm` on a real single-node Slurm (`scripts/test-slurm.sh` starts
//! munge, slurmctld and slurmd): a 4-cell sweep submitted as one `sbatch --array` job ends
//! with the same `results.csv` as the local launcher.

use std::process::Command;

#[test]
fn a_sweep_through_a_slurm_job_array_equals_the_local_sweep() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let work = tempfile::tempdir().unwrap();
    let out = Command::new("bash")
        .arg(root.join("scripts/test-slurm.sh"))
        .arg(work.path())
        .env("JEM", env!("CARGO_BIN_EXE_jem"))
        .current_dir(&root)
        .output()
        .expect("bash runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "scripts/test-slurm.sh failed:\n{text}"
    );
    assert!(text.contains("submitted job array"), "{text}");
    assert!(text.contains("equals the local launcher"), "{text}");
    let csv = std::fs::read_to_string(work.path().join("slurm-sweep/results.csv")).unwrap();
    assert_eq!(csv.lines().count(), 5, "{csv}");
    assert_eq!(csv.matches(",finished,").count(), 4, "{csv}");
}
