//! `jem sweep`: a grid of config keys trained and evaluated cell by cell, locally (one cell
//! after another, or `--jobs K` processes at once) or as a Slurm job array; `jem sweep
//! status` and `jem sweep plot` read a sweep directory.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use jem::config::{DeviceSpec, TrainConfig};
use jem::sweep::{Axis, CellStatus, Sweep, SweepSpec, parse_setting};

/// Where the cells run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Launcher {
    /// On this machine: one cell after another, or `--jobs K` at once.
    Local,
    /// One Slurm job array (`sbatch --array`), each task running `jem sweep --cell I`.
    Slurm,
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct SweepArgs {
    #[command(subcommand)]
    action: Option<SweepAction>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum SweepAction {
    /// Each cell's status (pending, running, interrupted, finished, gave-up, failed) and the
    /// summary of the finished ones; rewrites DIR/results.csv and results.json.
    Status {
        /// The sweep directory.
        dir: PathBuf,
    },
    /// A heat map of one metric over two axes (PNG, and an HTML page with every metric).
    Plot(PlotArgs),
}

#[derive(Args)]
struct RunArgs {
    /// The sweep directory (created, or gone on with when it holds the same sweep).
    #[arg(long)]
    out: Option<PathBuf>,
    /// An axis: a dotted config key and its values, e.g. "optim.lr=3e-5,1e-4,3e-4"
    /// (repeat for more axes; every combination is a cell).
    #[arg(long = "grid")]
    grid: Vec<String>,
    /// Seeds of every combination (default: the base config's).
    #[arg(long, value_delimiter = ',')]
    seeds: Vec<u64>,
    /// Stop each cell's training after this many steps.
    #[arg(long)]
    max_steps: Option<u64>,
    /// Set a key of the base config, e.g. "schedule.epochs=2" (repeatable).
    #[arg(long = "set")]
    set: Vec<String>,
    /// The base config: a shipped recipe.
    #[arg(long, conflicts_with = "config")]
    recipe: Option<String>,
    /// The base config: a TOML file.
    #[arg(long)]
    config: Option<PathBuf>,
    /// OOD sets of each cell's evaluation (default: mnist when its files are there, uniform,
    /// constant).
    #[arg(long, value_delimiter = ',')]
    ood: Vec<String>,
    /// Cells trained at once (local launcher), the cores split between them.
    #[arg(long, default_value_t = 1)]
    jobs: usize,
    /// Where the cells run.
    #[arg(long, value_enum, default_value_t = Launcher::Local)]
    launcher: Launcher,
    /// Extra arguments for sbatch (with --launcher slurm), e.g. "--partition=cpu --time=2:00:00".
    #[arg(long, allow_hyphen_values = true)]
    sbatch_args: Option<String>,
    /// Run only cell I of the sweep saved in --out (what a job-array task or a --jobs
    /// process runs).
    #[arg(long)]
    cell: Option<usize>,
}

#[derive(Args)]
struct PlotArgs {
    /// The sweep directory.
    dir: PathBuf,
    /// The axis along the x direction (a key of the grid).
    #[arg(long)]
    x: String,
    /// The axis along the y direction.
    #[arg(long)]
    y: String,
    /// The metric: accuracy, ece, recoveries, ms_per_step, or auroc:SCORE/SET.
    #[arg(long, default_value = "accuracy")]
    metric: String,
    /// Output PNG (default: DIR/heatmap-METRIC-X-Y.png, with an HTML page beside it).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// `device` is the opened `--device` (`spec`, when given, is passed on to cell processes).
pub(crate) fn sweep(
    a: SweepArgs,
    device: &jem::Device,
    spec: Option<DeviceSpec>,
    threads: usize,
) -> Result<()> {
    match a.action {
        Some(SweepAction::Status { dir }) => status(&dir),
        Some(SweepAction::Plot(p)) => plot(p),
        None => run(a.run, device, spec, threads),
    }
}

/// `--device X` for a cell process, when one was given.
fn device_args(spec: Option<DeviceSpec>) -> Vec<String> {
    spec.map(|d| vec!["--device".to_string(), d.to_string()])
        .unwrap_or_default()
}

fn run(
    a: RunArgs,
    device: &jem::Device,
    device_spec: Option<DeviceSpec>,
    threads: usize,
) -> Result<()> {
    let Some(dir) = a.out.clone() else {
        bail!("jem sweep needs --out DIR (or a subcommand: status, plot)");
    };
    if let Some(i) = a.cell {
        let sweep = Sweep::open(&dir)?;
        let r = sweep.run_cell(i, device)?;
        eprintln!("{}", cell_line(&sweep, &r));
        sweep.write_results()?;
        return Ok(());
    }
    if a.jobs == 0 {
        bail!("--jobs must be positive");
    }
    let sweep = Sweep::open_or_create(&dir, spec(&a)?)?;
    eprintln!(
        "sweep {}: {} cells ({} combinations x {} seeds)",
        dir.display(),
        sweep.len(),
        sweep.len() / sweep.spec().seeds.len(),
        sweep.spec().seeds.len()
    );
    match a.launcher {
        Launcher::Slurm => {
            return submit_slurm(&sweep, a.sbatch_args.as_deref(), device_spec, threads);
        }
        Launcher::Local if a.jobs == 1 => {
            for i in 0..sweep.len() {
                let r = sweep.run_cell(i, device)?;
                eprintln!("{}", cell_line(&sweep, &r));
            }
        }
        Launcher::Local => run_parallel(&sweep, a.jobs, device_spec, threads)?,
    }
    let summary = sweep.write_results()?;
    println!("{}", summary.line());
    println!("table: {}", dir.join("results.csv").display());
    Ok(())
}

/// The spec of the flags: base config, `--set`, `--max-steps`, the grid, seeds, OOD sets.
fn spec(a: &RunArgs) -> Result<SweepSpec> {
    let mut base = match (&a.config, &a.recipe) {
        (Some(p), _) => TrainConfig::from_file(p)?,
        (None, Some(name)) => TrainConfig::recipe(name)?,
        (None, None) => TrainConfig::default(),
    };
    let sets = a
        .set
        .iter()
        .map(|s| parse_setting(s))
        .collect::<Result<Vec<_>, _>>()?;
    base = jem::sweep::apply(&base, &sets)?;
    if let Some(n) = a.max_steps {
        base.schedule.max_steps = Some(n);
    }
    let axes = a
        .grid
        .iter()
        .map(|g| Axis::parse(g))
        .collect::<Result<Vec<_>, _>>()?;
    let seeds = if a.seeds.is_empty() {
        vec![base.seed]
    } else {
        a.seeds.clone()
    };
    let ood = if a.ood.is_empty() {
        let mut sets = vec!["uniform".to_string(), "constant".to_string()];
        let mnist = jem::data::DatasetKind::Mnist.default_dir();
        if mnist.is_dir() {
            sets.insert(0, "mnist".into());
        } else {
            eprintln!(
                "warning: no MNIST files in {} (scripts/fetch-mnist.sh): the cells are evaluated against uniform and constant only",
                mnist.display()
            );
        }
        sets
    } else {
        a.ood.clone()
    };
    Ok(SweepSpec::new(base, axes, seeds, ood)?)
}

/// One finished cell in words.
fn cell_line(sweep: &Sweep, r: &jem::sweep::CellResult) -> String {
    let settings: Vec<String> = r.settings.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let acc = r
        .accuracy
        .map_or("-".into(), |a| format!("{:.2}%", 100.0 * a));
    format!(
        "cell {}/{} {} [{}]: {}, accuracy {acc}, {} recoveries{}",
        r.index + 1,
        sweep.len(),
        r.name,
        settings.join(" "),
        r.status.name(),
        r.recoveries,
        r.error.as_ref().map_or(String::new(), |e| format!(": {e}"))
    )
}

/// Run the cells `jobs` at a time, each in its own `jem --threads T sweep --cell I` process
/// (the cores split between them), its output in `DIR/cells/NAME.log`.
fn run_parallel(
    sweep: &Sweep,
    jobs: usize,
    spec: Option<DeviceSpec>,
    threads: usize,
) -> Result<()> {
    let exe = std::env::current_exe().context("finding the jem binary")?;
    let per = (threads / jobs).max(1);
    let todo: Vec<usize> = (0..sweep.len())
        .filter(|&i| {
            !matches!(
                sweep.status(&sweep.cells()[i]),
                Ok(s) if s.is_done() || s == CellStatus::Running
            )
        })
        .collect();
    let mut running: Vec<(usize, Child)> = Vec::new();
    let mut next = todo.into_iter();
    loop {
        while running.len() < jobs {
            let Some(i) = next.next() else { break };
            let cell = &sweep.cells()[i];
            let log = sweep.dir().join("cells").join(format!("{}.log", cell.name));
            let file = std::fs::File::create(&log).with_context(|| log.display().to_string())?;
            let child = Command::new(&exe)
                .args(["--threads", &per.to_string()])
                .args(device_args(spec))
                .args(["sweep", "--out"])
                .arg(sweep.dir())
                .args(["--cell", &i.to_string()])
                .stdout(file.try_clone()?)
                .stderr(file)
                .spawn()
                .context("starting a cell process")?;
            running.push((i, child));
        }
        if running.is_empty() {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
        let mut k = 0;
        while k < running.len() {
            if let Some(code) = running[k].1.try_wait()? {
                let (i, _) = running.swap_remove(k);
                let cell = &sweep.cells()[i];
                match sweep.result(cell)? {
                    Some(r) => eprintln!("{}", cell_line(sweep, &r)),
                    None => eprintln!(
                        "cell {} ({}) exited with {code} and no result: see {}",
                        i + 1,
                        cell.name,
                        sweep
                            .dir()
                            .join("cells")
                            .join(format!("{}.log", cell.name))
                            .display()
                    ),
                }
            } else {
                k += 1;
            }
        }
    }
}

/// Write `DIR/slurm.sh` (a job array of every cell not done) and submit it with sbatch.
fn submit_slurm(
    sweep: &Sweep,
    extra: Option<&str>,
    spec: Option<DeviceSpec>,
    threads: usize,
) -> Result<()> {
    let exe = std::env::current_exe().context("finding the jem binary")?;
    let todo: Vec<String> = sweep
        .cells()
        .iter()
        .filter(|c| !matches!(sweep.status(c), Ok(s) if s.is_done()))
        .map(|c| c.index.to_string())
        .collect();
    if todo.is_empty() {
        println!("every cell is done: {}", sweep.write_results()?.line());
        return Ok(());
    }
    let dir = std::fs::canonicalize(sweep.dir())?;
    let logs = dir.join("cells").join("slurm-%A_%a.log");
    let script = format!(
        "#!/bin/sh\n#SBATCH --job-name=jem-sweep\n#SBATCH --array={}\n#SBATCH --cpus-per-task={threads}\n#SBATCH --output={}\nexec '{}' --threads \"${{SLURM_CPUS_PER_TASK:-1}}\"{} sweep --out '{}' --cell \"$SLURM_ARRAY_TASK_ID\"\n",
        todo.join(","),
        logs.display(),
        exe.display(),
        device_args(spec)
            .iter()
            .map(|a| format!(" {a}"))
            .collect::<String>(),
        dir.display(),
    );
    let path = dir.join("slurm.sh");
    jem::tensor_file::write_atomic(&path, script.as_bytes())?;
    let mut cmd = Command::new("sbatch");
    cmd.arg("--parsable");
    if let Some(extra) = extra {
        cmd.args(extra.split_whitespace());
    }
    let out = cmd
        .arg(&path)
        .output()
        .context("running sbatch (is Slurm installed and on PATH?)")?;
    if !out.status.success() {
        bail!(
            "sbatch {} failed: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let job = String::from_utf8_lossy(&out.stdout).trim().to_string();
    println!(
        "submitted job array {job} ({} cells); follow it with `jem sweep status {}`",
        todo.len(),
        sweep.dir().display()
    );
    Ok(())
}

fn status(dir: &Path) -> Result<()> {
    let sweep = Sweep::open(dir)?;
    let rows = sweep.rows()?;
    for (cell, row) in sweep.cells().iter().zip(&rows) {
        let settings: Vec<String> = sweep
            .spec()
            .labels(cell)
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let acc = row
            .result
            .as_ref()
            .and_then(|r| r.accuracy)
            .map_or(String::new(), |a| format!(" accuracy {:.2}%", 100.0 * a));
        println!(
            "{:>4} {} [{}] {}{acc}",
            cell.index,
            cell.name,
            settings.join(" "),
            row.status.name()
        );
    }
    println!("{}", sweep.write_results()?.line());
    Ok(())
}

fn plot(p: PlotArgs) -> Result<()> {
    let sweep = Sweep::open(&p.dir)?;
    let map = jem::sweep::plot::heatmap(&sweep, &p.x, &p.y, &p.metric)?;
    let safe = |s: &str| s.replace(['/', ':'], "_");
    let out = p.out.unwrap_or_else(|| {
        p.dir.join(format!(
            "heatmap-{}-{}-{}.png",
            safe(&p.metric),
            safe(&p.x),
            safe(&p.y)
        ))
    });
    let png = jem::report::raster::svg_to_png(&map.svg, 2.0)?;
    jem::tensor_file::write_atomic(&out, &png)?;
    let html = out.with_extension("html");
    let page = jem::sweep::plot::page(&sweep, &p.x, &p.y)?;
    jem::tensor_file::write_atomic(&html, page.as_bytes())?;
    println!("wrote {} and {}", out.display(), html.display());
    println!("{}", map.note);
    Ok(())
}
