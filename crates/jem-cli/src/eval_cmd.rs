//! `jem eval accuracy | calibration | ood`.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use jem::data::{Dataset, Split};
use jem::eval::accuracy::accuracy;
use jem::eval::attack::{AttackConfig, Defence, Norm, attack};
use jem::eval::calibration::evaluate_calibration;
use jem::eval::ood::{OodSet, OodSpec, Score, SetHalf, evaluate_ood, fit_scores};
use jem::eval::ood_select::evaluate_selected;
use jem::eval::run::Run;
use jem::rng::Rng;

#[derive(Subcommand)]
pub(crate) enum EvalCommand {
    /// Accuracy and NLL on the test or validation split.
    Accuracy(AccuracyArgs),
    /// Expected and maximum calibration error, NLL and Brier score.
    Calibration(CalibrationArgs),
    /// Out-of-distribution detection: AUROC, AUPR-in/out and FPR at 95% TPR per score and set.
    Ood(OodArgs),
    /// PGD attack (L-inf or L2), optionally against the SGLD-refinement defence.
    Attack(AttackArgs),
    /// Sample quality: FID and Inception-style score in a classifier's features, diversity.
    Samples(crate::sample_cmd::QualityArgs),
}

/// What every evaluation takes.
#[derive(Args)]
pub(crate) struct EvalData {
    /// Run directory.
    #[arg(long)]
    run: PathBuf,
    /// Which split.
    #[arg(long, value_enum, default_value = "test")]
    split: Split,
    /// Evaluate only the first N images.
    #[arg(long)]
    limit: Option<usize>,
    /// Batch size.
    #[arg(long, default_value_t = 256)]
    batch_size: usize,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

impl EvalData {
    fn load(&self, device: &jem::Device) -> Result<(Run, Dataset)> {
        if self.batch_size == 0 {
            bail!("--batch-size must be positive");
        }
        let run = Run::open(&self.run, device)?;
        let data = self.limited(run.data(self.split)?)?;
        Ok((run, data))
    }

    /// The first `--limit` images of `data` (all without it).
    fn limited(&self, data: Dataset) -> Result<Dataset> {
        match self.limit {
            Some(0) => bail!("--limit must be positive"),
            Some(n) => Ok(data.subset(&(0..n.min(data.len())).collect::<Vec<_>>())),
            None => Ok(data),
        }
    }

    fn header(&self, run: &Run, data: &Dataset) -> serde_json::Value {
        serde_json::json!({
            "run": self.run.display().to_string(),
            "step": run.state.step,
            "split": self.split.name(),
            "n": data.len(),
        })
    }
}

impl EvalData {
    fn split_name(&self) -> &'static str {
        self.split.name()
    }

    /// Render a figure to `RUN/eval/NAME.png` and say where it went (on stderr).
    fn figure(&self, name: &str, svg: &str) -> Result<()> {
        let png = jem::report::raster::svg_to_png(svg, 2.0)?;
        let path = jem::eval::store::eval_dir(&self.run).join(format!("{name}.png"));
        std::fs::create_dir_all(jem::eval::store::eval_dir(&self.run))?;
        jem::tensor_file::write_atomic(&path, &png)?;
        eprintln!("figure: {}", path.display());
        Ok(())
    }

    /// Save the result as `RUN/eval/NAME.json` (for `jem report`) and print it with --json.
    /// Returns whether it was printed (the caller then prints no table).
    fn finish(
        &self,
        run: &Run,
        data: &Dataset,
        name: &str,
        body: serde_json::Value,
    ) -> Result<bool> {
        let v = merge(self.header(run, data), body);
        jem::eval::store::save_result(&self.run, &format!("{name}-{}", self.split_name()), &v)?;
        if self.json {
            println!("{v}");
        }
        Ok(self.json)
    }
}

fn merge(mut head: serde_json::Value, body: serde_json::Value) -> serde_json::Value {
    if let (Some(h), serde_json::Value::Object(b)) = (head.as_object_mut(), body) {
        h.extend(b);
    }
    head
}

#[derive(Args)]
pub(crate) struct AccuracyArgs {
    #[command(flatten)]
    data: EvalData,
    /// SGLD steps on log p(x) applied to each input before classifying.
    #[arg(long, default_value_t = 0)]
    sgld_refine_steps: usize,
}

pub(crate) fn eval_accuracy(a: AccuracyArgs, device: &jem::Device) -> Result<()> {
    let (run, data) = a.data.load(device)?;
    let refine = (a.sgld_refine_steps > 0).then(|| {
        let mut p = run.config.sgld.clone();
        p.steps = a.sgld_refine_steps;
        p
    });
    let r = accuracy(
        run.engine,
        run.classifier("accuracy")?,
        &data,
        a.data.batch_size,
        refine.as_ref(),
        &mut Rng::new(0, 3),
    )?;
    let name = match a.sgld_refine_steps {
        0 => "accuracy".to_string(),
        n => format!("accuracy-refine{n}"),
    };
    if !a
        .data
        .finish(&run, &data, &name, serde_json::to_value(&r)?)?
    {
        println!(
            "{}: step {}, {} images, accuracy {:.4}, nll {:.4}{}",
            a.data.run.display(),
            run.state.step,
            r.n,
            r.accuracy,
            r.nll,
            if r.refine_steps > 0 {
                format!(" (after {} SGLD refinement steps)", r.refine_steps)
            } else {
                String::new()
            }
        );
    }
    Ok(())
}

#[derive(Args)]
pub(crate) struct CalibrationArgs {
    #[command(flatten)]
    data: EvalData,
    /// Number of equal-width confidence bins.
    #[arg(long, default_value_t = 20)]
    bins: usize,
}

pub(crate) fn eval_calibration(a: CalibrationArgs, device: &jem::Device) -> Result<()> {
    if a.bins == 0 {
        bail!("--bins must be positive");
    }
    let (run, data) = a.data.load(device)?;
    let c = evaluate_calibration(
        run.engine,
        run.classifier("calibration")?,
        &data,
        a.bins,
        a.data.batch_size,
    )?;
    let body = serde_json::to_value(&c)?;
    let fig = jem::report::figures::reliability(&body);
    a.data
        .figure(&format!("calibration-{}", a.data.split_name()), &fig)?;
    if a.data.finish(&run, &data, "calibration", body)? {
        return Ok(());
    }
    println!(
        "{}: step {}, {} images: ECE {:.4}, MCE {:.4}, NLL {:.4}, Brier {:.4}, accuracy {:.4}",
        a.data.run.display(),
        run.state.step,
        c.n,
        c.ece,
        c.mce,
        c.nll,
        c.brier,
        c.accuracy
    );
    println!(
        "{:>13} {:>7} {:>10} {:>9}",
        "confidence", "count", "mean conf", "accuracy"
    );
    for b in c.bins.iter().filter(|b| b.count > 0) {
        println!(
            "  ({:.2}, {:.2}] {:>7} {:>10.4} {:>9.4}",
            b.lo, b.hi, b.count, b.confidence, b.accuracy
        );
    }
    Ok(())
}

#[derive(Args)]
pub(crate) struct OodArgs {
    #[command(flatten)]
    data: EvalData,
    /// OOD sets, comma-separated. Data sets are read from their default directories.
    #[arg(long, value_enum, value_delimiter = ',', required = true)]
    ood: Vec<OodSet>,
    /// Scores, comma-separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "logp,py,pxgrad,gradnorm,energy-t,fused,mahalanobis"
    )]
    scores: Vec<Score>,
    /// Directory of the data-set OOD sets' files (default: each set's default directory).
    #[arg(long)]
    ood_dir: Option<PathBuf>,
    /// Temperature of the energy-t score.
    #[arg(long, default_value_t = 1.0)]
    temperature: f32,
    /// Seed of the generated sets.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Choose one score on the validation split (the highest worst-set AUROC there, with
    /// half of each data-set OOD set), then report the test split (with the other half)
    /// with that score marked.
    #[arg(long)]
    select: bool,
    /// With --select: choose against these sets only (comma-separated; default: every set
    /// of --ood), e.g. the sets a target is set on; the report still covers every set.
    #[arg(long, value_enum, value_delimiter = ',', requires = "select")]
    select_on: Vec<OodSet>,
    /// Also write every image's scores to this CSV file (`set,index,<score>...`; the
    /// in-distribution images as set `in-distribution`), for analyses of your own.
    #[arg(long)]
    scores_out: Option<PathBuf>,
}

pub(crate) fn eval_ood(a: OodArgs, device: &jem::Device) -> Result<()> {
    if !(a.temperature.is_finite() && a.temperature > 0.0) {
        bail!("--temperature must be positive");
    }
    let (run, data) = a.data.load(device)?;
    let sets = a.ood.clone();
    let scores: Vec<Score> = a
        .scores
        .iter()
        .map(|s| match s {
            Score::EnergyT(_) => Score::EnergyT(a.temperature),
            s => s.clone(),
        })
        .filter(|s| {
            let keep = run.is_classifier() || *s != Score::Py;
            if !keep {
                eprintln!("skipping score py: a scalar energy model has no p(y|x)");
            }
            keep
        })
        .collect();
    // The fused and Mahalanobis scores are fitted on the validation split, never on what they report.
    let scores = if a.select {
        scores
    } else {
        let valid = a.data.limited(run.data(Split::Valid)?)?;
        fit_scores(run.engine, &run.model, &valid, &scores, a.data.batch_size)?
    };
    let spec = OodSpec {
        sets: &sets,
        dir: a.ood_dir.as_deref(),
        scores: &scores,
        batch_size: a.data.batch_size,
        half: SetHalf::All,
    };
    let mut rng = Rng::new(a.seed, 5);
    let report = if a.select {
        if a.data.split != Split::Test {
            bail!(
                "--select chooses on the validation split and reports the test split: drop --split"
            );
        }
        let valid = a.data.limited(run.data(Split::Valid)?)?;
        evaluate_selected(
            run.engine,
            &run.model,
            (&valid, &data),
            &spec,
            &a.select_on,
            &mut rng,
        )?
    } else {
        evaluate_ood(run.engine, &run.model, &data, &spec, &mut rng)?
    };
    if let Some(path) = &a.scores_out {
        std::fs::write(path, report.scores_csv())
            .with_context(|| format!("writing the scores to {}", path.display()))?;
    }
    let body = serde_json::to_value(&report)?;
    for h in body["histograms"].as_array().cloned().unwrap_or_default() {
        let score = h["score"].as_str().unwrap_or("score").to_string();
        let fig = jem::report::figures::ood_histogram(&h);
        a.data
            .figure(&format!("ood-{}-{score}", a.data.split_name()), &fig)?;
    }
    if a.data.finish(&run, &data, "ood", body)? {
        return Ok(());
    }
    println!(
        "{}: step {}, {} in-distribution images",
        a.data.run.display(),
        run.state.step,
        data.len()
    );
    print_ood(&report);
    Ok(())
}

/// The OOD table, the chosen score's rows marked `*`, and the choice with its candidates.
fn print_ood(report: &jem::eval::ood::OodReport) {
    let chosen = report.selected.as_ref().map(|s| s.score.as_str());
    println!(
        "{:<13} {:<14} {:>7} {:>8} {:>9} {:>7}",
        "score", "ood set", "AUROC", "AUPR-in", "AUPR-out", "FPR95"
    );
    for r in &report.rows {
        let mark = if chosen == Some(r.score.as_str()) {
            "*"
        } else {
            " "
        };
        println!(
            "{:<13} {:<14} {:>7.4} {:>8.4} {:>9.4} {:>7.4}",
            format!("{}{mark}", r.score),
            r.set,
            r.auroc,
            r.aupr_in,
            r.aupr_out,
            r.fpr95
        );
    }
    if let Some(s) = &report.selected {
        println!(
            "* chosen: {} ({}; sets {})",
            s.score,
            s.criterion,
            s.sets.join(",")
        );
        for c in &s.candidates {
            println!(
                "  validation {:<12} worst AUROC {:.4} ({}), mean {:.4}",
                c.score, c.worst_auroc, c.worst_set, c.mean_auroc
            );
        }
    }
}

#[derive(Args)]
pub(crate) struct AttackArgs {
    #[command(flatten)]
    data: EvalData,
    /// Threat model.
    #[arg(long, value_enum, default_value = "linf")]
    norm: Norm,
    /// Radii, comma-separated, in [0, 1] pixel units (e.g. 0,0.0078,0.0314).
    #[arg(long, value_delimiter = ',', default_value = "0,0.0078431,0.0313725")]
    eps: Vec<f32>,
    /// PGD steps.
    #[arg(long, default_value_t = 40)]
    steps: usize,
    /// Step size as a fraction of epsilon (default 2.5 / steps).
    #[arg(long)]
    step_fraction: Option<f32>,
    /// Random restarts.
    #[arg(long, default_value_t = 1)]
    restarts: usize,
    /// SGLD refinement steps of the defence (0: plain classifier; the paper uses 0, 1, 10).
    #[arg(long, default_value_t = 0)]
    refine_steps: usize,
    /// Noisy chains averaged by the defence.
    #[arg(long, default_value_t = 5)]
    chains: usize,
    /// Noise the defence's chains start with.
    #[arg(long, default_value_t = 0.03)]
    refine_noise: f32,
    /// Step size of the defence's SGLD (default: the run's `sgld.step_size`). A run trained
    /// with a strong energy (small `lse_l2`) moves inputs far with the training step.
    #[arg(long)]
    refine_step_size: Option<f32>,
    /// Seed of the attack and the defence.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

pub(crate) fn eval_attack(a: AttackArgs, device: &jem::Device) -> Result<()> {
    if a.steps == 0 || a.restarts == 0 || a.chains == 0 {
        bail!("--steps, --restarts and --chains must be positive");
    }
    if !(a.refine_noise.is_finite() && a.refine_noise >= 0.0) {
        bail!("--refine-noise must be non-negative");
    }
    let (run, data) = a.data.load(device)?;
    let cfg = AttackConfig {
        norm: a.norm,
        eps: a.eps.clone(),
        steps: a.steps,
        step_fraction: a.step_fraction,
        restarts: a.restarts,
        random_start: true,
    };
    let mut sgld = run.config.sgld.clone();
    sgld.steps = a.refine_steps;
    if let Some(step) = a.refine_step_size {
        if !(step.is_finite() && step > 0.0) {
            bail!("--refine-step-size must be positive");
        }
        sgld.step_size = step;
    }
    let defence = Defence {
        sgld,
        chains: a.chains,
        start_noise: a.refine_noise,
    };
    let r = attack(
        run.engine,
        run.classifier("attack")?,
        &data,
        &cfg,
        &defence,
        a.data.batch_size,
        &mut Rng::new(a.seed, 6),
    )?;
    {
        let mut body = serde_json::to_value(&r)?;
        body["robust_accuracy"] = serde_json::json!(
            r.results
                .iter()
                .map(|e| e.robust_accuracy)
                .collect::<Vec<_>>()
        );
        body["refine_steps"] = serde_json::json!(a.refine_steps);
        body["refine_step_size"] = serde_json::json!(defence.sgld.step_size);
        body["norm"] = serde_json::json!(cfg.norm);
        body["steps"] = serde_json::json!(a.steps);
        let name = format!(
            "attack-{}-refine{}",
            match cfg.norm {
                Norm::Linf => "linf",
                Norm::L2 => "l2",
            },
            a.refine_steps
        );
        a.data.figure(
            &format!("{name}-{}", a.data.split_name()),
            &jem::report::figures::attack_curve(&body),
        )?;
        if a.data.finish(&run, &data, &name, body)? {
            return Ok(());
        }
    }
    print_attack(&a, &run, &cfg, &r);
    Ok(())
}

/// The attack's table on stdout (and the sanity warning on stderr).
fn print_attack(
    a: &AttackArgs,
    run: &Run,
    cfg: &AttackConfig,
    r: &jem::eval::attack::AttackReport,
) {
    println!(
        "{}: step {}, {} images, clean accuracy {:.4}; PGD {:?}, {} steps; refinement {} SGLD steps x {} chains",
        a.data.run.display(),
        run.state.step,
        r.n,
        r.clean_accuracy,
        cfg.norm,
        a.steps,
        a.refine_steps,
        if a.refine_steps > 0 { a.chains } else { 1 }
    );
    if !r.sane {
        eprintln!(
            "warning: robust accuracy rises with epsilon somewhere: the attack is too weak (raise --steps or --restarts); do not trust these numbers"
        );
    }
    println!(
        "{:>10} {:>16} {:>13}",
        "eps", "robust accuracy", "success rate"
    );
    for e in &r.results {
        println!(
            "{:>10.5} {:>16.4} {:>13.4}",
            e.eps, e.robust_accuracy, e.success_rate
        );
    }
}
