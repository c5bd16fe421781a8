//! `jem::sweep` on a small synthetic data set: every cell trained and evaluated into the
//! table, a cell that diverges for good recorded as such, a half-trained cell resumed to the
//! same result as one trained straight through, and a different grid for the same
//! directory refused.

use std::path::Path;

use jem::config::TrainConfig;
use jem::model::ModelConfig;
use jem::sweep::{Axis, CellStatus, Sweep, SweepSpec};
use jem::train::{NoObserver, Trainer};

/// A JEM that trains in a few seconds on `data_dir`'s synthetic images.
fn base(data_dir: &Path) -> TrainConfig {
    let mut c = TrainConfig::default();
    c.data.dir = Some(data_dir.to_path_buf());
    c.data.n_valid = 32;
    c.model = ModelConfig::cnn(vec![8, 16]);
    c.optim.warmup_steps = 0;
    c.optim.lr = 1e-3;
    c.sgld.steps = 2;
    c.buffer.size = 64;
    c.schedule.batch_size = 16;
    c.schedule.epochs = 1;
    c.schedule.max_steps = Some(6);
    c.schedule.checkpoint_every = 3;
    c.recovery.max_recoveries = 0;
    c
}

fn spec(data_dir: &Path, lrs: &str) -> SweepSpec {
    SweepSpec::new(
        base(data_dir),
        vec![
            Axis::parse(&format!("optim.lr={lrs}")).unwrap(),
            Axis::parse("loss.px_weight=0,1").unwrap(),
        ],
        vec![0],
        vec!["uniform".into(), "constant".into()],
    )
    .unwrap()
}

#[test]
fn a_sweep_trains_every_cell_into_its_table_and_goes_on_where_it_stopped() {
    let data = tempfile::tempdir().unwrap();
    jem::data::synthetic::write_synthetic_fashion(data.path(), 256, 64, 1).unwrap();
    let root = tempfile::tempdir().unwrap();
    let device = jem::default_device();
    // An Adam step of 1e9 diverges at once; with no recoveries allowed that cell gives up.
    let sweep =
        Sweep::open_or_create(&root.path().join("s"), spec(data.path(), "1e-3,1e9")).unwrap();
    assert_eq!(sweep.len(), 4);
    // Cell 1 (lr 1e-3, px weight 1) half-trained, as by a sweep killed after a checkpoint.
    let cell = sweep.cell(1).unwrap().clone();
    let mut half = sweep.spec().config(&cell).unwrap();
    half.schedule.max_steps = Some(3);
    let mut t = Trainer::create(half, &sweep.cell_dir(&cell), &device).unwrap();
    t.run(&mut NoObserver).unwrap();
    assert_eq!(sweep.status(&cell).unwrap(), CellStatus::Interrupted);
    assert_eq!(
        sweep.status(sweep.cell(0).unwrap()).unwrap(),
        CellStatus::Pending
    );
    let results: Vec<_> = (0..sweep.len())
        .map(|i| sweep.run_cell(i, &device).unwrap())
        .collect();
    for r in &results[..2] {
        assert_eq!(r.status, CellStatus::Finished, "{:?}", r.error);
        assert_eq!(r.steps, 6);
        assert!(r.accuracy.is_some() && r.ece.is_some());
        assert_eq!(r.auroc.len(), 4, "logp and py against two sets");
    }
    for r in &results[2..] {
        assert_eq!(r.status, CellStatus::GaveUp);
        assert!(
            r.error.as_deref().unwrap().contains("diverged"),
            "{:?}",
            r.error
        );
        assert!(r.accuracy.is_none());
    }
    assert_eq!(
        results[1].settings,
        [
            ("optim.lr".into(), "1e-3".into()),
            ("loss.px_weight".into(), "1".into())
        ]
    );
    let summary = sweep.write_results().unwrap();
    assert_eq!(
        (summary.finished, summary.gave_up, summary.failed),
        (2, 2, 0)
    );
    let csv = std::fs::read_to_string(root.path().join("s/results.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 5, "{csv}");
    assert!(
        lines[0].starts_with("cell,seed,optim.lr,loss.px_weight,status,accuracy,ece,"),
        "{}",
        lines[0]
    );
    assert!(
        lines[3].contains(",gave-up,") && lines[3].contains(",true,"),
        "{}",
        lines[3]
    );

    // The resumed cell equals the same cell trained straight through.
    let other =
        Sweep::open_or_create(&root.path().join("t"), spec(data.path(), "1e-3,1e9")).unwrap();
    let straight = other.run_cell(1, &device).unwrap();
    assert_eq!(straight.accuracy, results[1].accuracy);
    assert_eq!(straight.ece, results[1].ece);

    // The same command again redoes nothing; another grid for the directory is refused.
    let again =
        Sweep::open_or_create(&root.path().join("s"), spec(data.path(), "1e-3,1e9")).unwrap();
    let mtime = |p: &Path| std::fs::metadata(p).unwrap().modified().unwrap();
    let before = mtime(&again.result_path(again.cell(0).unwrap()));
    assert_eq!(again.run_cell(0, &device).unwrap(), results[0]);
    assert_eq!(mtime(&again.result_path(again.cell(0).unwrap())), before);
    let e = Sweep::open_or_create(&root.path().join("s"), spec(data.path(), "1e-3,1e-2"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("holds another sweep") && e.contains("optim.lr=1e-3,1e-2"),
        "{e}"
    );

    // The heat map marks the squares whose cells gave up.
    let map = jem::sweep::plot::heatmap(&sweep, "loss.px_weight", "optim.lr", "accuracy").unwrap();
    assert_eq!(map.svg.matches("1/1 gave up").count(), 2);
    assert!(jem::sweep::plot::heatmap(&sweep, "sgld.steps", "optim.lr", "accuracy").is_err());
}

#[test]
fn a_grid_is_checked_before_any_cell_runs() {
    let data = tempfile::tempdir().unwrap();
    let bad = |axis: &str| {
        SweepSpec::new(
            base(data.path()),
            vec![Axis::parse(axis).unwrap()],
            vec![0],
            vec![],
        )
        .unwrap_err()
        .to_string()
    };
    assert!(bad("optim.learning_rate=1e-3").contains("optim.learning_rate"));
    assert!(bad("sgld.steps=10,0").contains("sgld.steps"));
    assert!(bad("loss.objective=jem,softmaxx").contains("loss.objective"));
    let e = SweepSpec::new(base(data.path()), vec![], vec![0], vec!["mnistt".into()])
        .unwrap_err()
        .to_string();
    assert!(e.contains("mnistt"), "{e}");
}
