//! The `jem` binary end to end on a small synthetic data set in the Fashion-MNIST layout.

mod common;

use std::path::Path;
use std::process::Command;

use common::{jem, text, train_tiny};

/// The DOM of `html` after headless Chromium (Debian package `chromium`) has loaded it.
fn chromium_dom(html: &Path) -> String {
    let bin = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|b| Path::new(b).exists())
        .expect("headless Chromium is needed for the report test: apt-get install -y chromium (scripts/test.sh and .ci/run do)");
    let profile = tempfile::tempdir().unwrap();
    let o = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
        ])
        .args([
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(format!("file://{}", html.display()))
        .output()
        .expect("chromium runs");
    assert!(
        o.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).to_string()
}

#[test]
fn train_resume_eval_sample_bench() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    jem::data::synthetic::write_synthetic_fashion(&data, 160, 40, 1).unwrap();
    let run = tmp.path().join("run");
    let scores_csv = tmp.path().join("scores.csv");
    let o = train_tiny(&data, &run, &["--max-steps", "4"]);
    assert!(o.status.success(), "{}", text(&o));
    for f in [
        "config.toml",
        "model.safetensors",
        "optim.safetensors",
        "buffer.safetensors",
        "state.json",
        "metrics.jsonl",
    ] {
        assert!(run.join(f).exists(), "{f} missing");
    }
    // --max-steps counts the whole run, also after a resume.
    let o = jem(&[
        "train",
        "--resume",
        run.to_str().unwrap(),
        "--max-steps",
        "6",
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("state.json")).unwrap()).unwrap();
    assert_eq!(state["step"], 6);
    // Fixed parts of a run cannot be changed on resume.
    let o = jem(&["train", "--resume", run.to_str().unwrap(), "--seed", "3"]);
    assert!(
        !o.status.success() && text(&o).contains("--resume"),
        "{}",
        text(&o)
    );

    let o = jem(&["eval", "accuracy", "--run", run.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let acc = v["accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&acc) && v["nll"].as_f64().unwrap().is_finite());
    assert_eq!(v["n"], 40);
    let o = jem(&[
        "eval",
        "accuracy",
        "--run",
        run.to_str().unwrap(),
        "--split",
        "valid",
        "--sgld-refine-steps",
        "2",
        "--json",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (v["n"].as_u64(), v["refine_steps"].as_u64()),
        (Some(32), Some(2))
    );

    let o = jem(&[
        "eval",
        "calibration",
        "--run",
        run.to_str().unwrap(),
        "--bins",
        "10",
        "--json",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!((0.0..=1.0).contains(&v["ece"].as_f64().unwrap()));
    assert_eq!(v["bins"].as_array().unwrap().len(), 10);
    let o = jem(&[
        "eval",
        "ood",
        "--run",
        run.to_str().unwrap(),
        "--ood",
        "uniform,vflip,interp",
        "--scores-out",
        scores_csv.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let rows = v["rows"].as_array().unwrap();
    // The seven default scores (logp, py, pxgrad, gradnorm, energy-t, fused, mahalanobis) on
    // three sets.
    assert_eq!(rows.len(), 21);
    // The fused score is standardised on the validation split, not on the test images.
    let n_test = v["n"].as_u64().unwrap() as usize;
    let fit_n = v["fused"]["n"].as_u64().unwrap() as usize;
    assert!(fit_n > 0 && fit_n != n_test, "{}", v["fused"]);
    // Every image's scores: a header, then the test images and each set's, one row each.
    let csv = std::fs::read_to_string(&scores_csv).unwrap();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("set,index,logp,py,pxgrad,gradnorm,energy-t1,fused,mahalanobis")
    );
    let sets: Vec<&str> = lines.map(|l| l.split(',').next().unwrap()).collect();
    assert_eq!(sets.len(), 4 * n_test);
    assert_eq!(
        sets.iter().filter(|s| **s == "in-distribution").count(),
        n_test
    );
    assert_eq!(sets.iter().filter(|s| **s == "interp").count(), n_test);
    assert!(rows.iter().all(|r| {
        r["auroc"]
            .as_f64()
            .is_some_and(|a| (0.0..=1.0).contains(&a))
    }));
    // One score chosen on the validation split, reported on the test split.
    let r = run.to_str().unwrap();
    let o = jem(&[
        "eval",
        "ood",
        "--run",
        r,
        "--ood",
        "uniform,invert",
        "--select",
        "--json",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let chosen = v["selected"]["score"].as_str().unwrap().to_string();
    let all = [
        "logp",
        "py",
        "pxgrad",
        "gradnorm",
        "energy-t1",
        "fused",
        "mahalanobis",
    ];
    assert!(all.contains(&chosen.as_str()));
    assert_eq!(v["selected"]["candidates"].as_array().unwrap().len(), 7);
    assert_eq!(v["rows"].as_array().unwrap().len(), 14);
    let o = jem(&["compare", r, "--chosen"]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(
        t.contains("OOD score (chosen on valid)")
            && t.contains("AUROC chosen vs uniform")
            && t.contains(&format!("| {chosen} |")),
        "{t}"
    );
    let o = jem(&[
        "eval", "ood", "--run", r, "--ood", "uniform", "--select", "--split", "valid",
    ]);
    assert!(
        !o.status.success() && text(&o).contains("--select"),
        "{}",
        text(&o)
    );
    let o = jem(&[
        "eval",
        "ood",
        "--run",
        run.to_str().unwrap(),
        "--ood",
        "cifar10",
        "--ood-dir",
        tmp.path().to_str().unwrap(),
    ]);
    assert!(
        !o.status.success() && text(&o).contains("test_batch.bin"),
        "{}",
        text(&o)
    );

    let o = jem(&[
        "eval",
        "attack",
        "--run",
        run.to_str().unwrap(),
        "--norm",
        "l2",
        "--eps",
        "0,0.5",
        "--steps",
        "3",
        "--limit",
        "16",
        "--refine-steps",
        "1",
        "--chains",
        "2",
        "--json",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let ra = v["robust_accuracy"].as_array().unwrap();
    assert_eq!(ra.len(), 2);
    assert_eq!(ra[0].as_f64(), v["clean_accuracy"].as_f64());

    let grid = tmp.path().join("q.png");
    let o = jem(&[
        "eval",
        "samples",
        "--run",
        run.to_str().unwrap(),
        "--feature-run",
        run.to_str().unwrap(),
        "--n",
        "20",
        "--per-class",
        "3",
        "--steps",
        "2",
        "--out",
        grid.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        v["fid"].as_f64().unwrap() >= 0.0 && v["inception_score"].as_f64().unwrap() >= 1.0 - 1e-9
    );
    assert_eq!(v["diversity"].as_array().unwrap().len(), 10);
    // Sample accuracy: each class's samples as the feature run classifies them.
    let per_class = v["sample_accuracy_per_class"].as_array().unwrap();
    assert_eq!(per_class.len(), 10);
    let acc = v["sample_accuracy"].as_f64().unwrap();
    let mean = per_class.iter().map(|a| a.as_f64().unwrap()).sum::<f64>() / 10.0;
    assert!(
        (0.0..=1.0).contains(&acc) && (acc - mean).abs() < 1e-12,
        "{v}"
    );
    assert_eq!(v["class_steps"], 2);
    assert!(grid.exists());

    // The report, rendered by a real browser: headless Chromium loads it and the tables are there.
    let html = tmp.path().join("report.html");
    let o = jem(&[
        "report",
        "--run",
        run.to_str().unwrap(),
        "--baseline",
        run.to_str().unwrap(),
        "--out",
        html.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let dom = chromium_dom(&html);
    for id in [
        "summary",
        "eval-accuracy-test",
        "eval-accuracy-refine2-valid",
        "eval-calibration-test",
        "eval-ood-test",
        "eval-ood-test-selection",
        "side-by-side",
        "eval-attack-l2-refine1-test",
        "eval-samples",
    ] {
        assert!(
            dom.contains(&format!("id=\"{id}\"")),
            "table {id} missing from the rendered report"
        );
    }
    assert!(dom.contains("<svg") && dom.contains("data:image/png;base64,"));

    for (name, extra) in [
        ("uncond.png", vec![]),
        (
            "class.png",
            vec!["--class", "3", "--from", "noise", "--steps", "5"],
        ),
        ("rows.png", vec!["--per-class", "--n", "4", "--steps", "2"]),
        (
            "small-steps.png",
            vec!["--steps", "2", "--step-size", "0.1", "--noise-std", "0"],
        ),
    ] {
        let png = tmp.path().join(name);
        let mut args = vec![
            "sample",
            "--run",
            run.to_str().unwrap(),
            "--out",
            png.to_str().unwrap(),
        ];
        args.extend(extra);
        let o = jem(&args);
        assert!(o.status.success(), "{}", text(&o));
        let bytes = std::fs::read(&png).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{name} is not a PNG");
    }
    let o = jem(&[
        "sample",
        "--run",
        run.to_str().unwrap(),
        "--out",
        tmp.path().join("x.png").to_str().unwrap(),
        "--class",
        "10",
    ]);
    assert!(
        !o.status.success() && text(&o).contains("class 10"),
        "{}",
        text(&o)
    );
    // The sampler overrides are checked as the config file's `[sgld]` is.
    let o = jem(&[
        "sample",
        "--run",
        run.to_str().unwrap(),
        "--out",
        tmp.path().join("y.png").to_str().unwrap(),
        "--step-size=-1",
    ]);
    assert!(
        !o.status.success()
            && text(&o).contains("--step-size: config field `sgld.step_size`")
            && !text(&o).contains("panicked"),
        "{}",
        text(&o)
    );

    let o = jem(&["bench", "--json", "--sgld-reps", "1", "--iter-reps", "1"]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for k in ["sgld_step_ms", "iteration_ms", "gflops"] {
        assert!(v[k].as_f64().unwrap() > 0.0, "{k}");
    }
    // The report names the engine it timed: on the CPU device (as scripts/test.sh runs the
    // tests), the kernel exactly where this CPU runs it; autodiff wherever it cannot.
    let kernel = jem::cnn_cpu::supports(jem::sgld::Precision::F32);
    if !kernel || std::env::var("JEM_DEVICE").as_deref() == Ok("cpu") {
        let want = if kernel { "cnn-cpu" } else { "autodiff" };
        assert_eq!(v["engine"], want, "{}", text(&o));
    }
}

#[test]
fn bad_input_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    jem::data::synthetic::write_synthetic_fashion(&data, 64, 8, 1).unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--max-steps", "-3"], "-3"),
        (vec!["--frobnicate"], "--frobnicate"),
        (vec!["--sgld-steps", "0", "--max-steps", "1"], "sgld.steps"),
        (vec!["--conditional", "--buffer-size", "105"], "buffer.size"),
        (vec!["--n-valid", "64"], "n_valid"),
        (vec!["--arch", "wrn", "--wrn-depth", "12"], "model.depth"),
        (
            vec!["--arch", "wrn", "--sgld-precision", "bf16"],
            "sgld.precision",
        ),
        (vec!["--sgld-precision", "half"], "half"),
        // A backend this binary lacks names the Cargo feature; a misspelt device the spellings.
        (vec!["--device", "cuda:1"], "--features cuda"),
        (vec!["--device", "gpu"], "expected auto, cpu"),
        // Data parallel needs equal shares of the batch.
        (vec!["--devices", "cpu,cpu,cpu"], "schedule.batch_size"),
    ];
    for (i, (extra, want)) in cases.into_iter().enumerate() {
        let out = tmp.path().join(format!("r{i}"));
        let o = train_tiny(&data, &out, &extra);
        assert!(!o.status.success(), "{extra:?} was accepted");
        assert!(text(&o).contains(want), "{extra:?}: {}", text(&o));
        assert!(!text(&o).contains("panicked"), "{}", text(&o));
    }
    let o = jem(&[
        "train",
        "--data-dir",
        "/nonexistent",
        "--out",
        tmp.path().join("m").to_str().unwrap(),
        "--max-steps",
        "1",
    ]);
    assert!(
        !o.status.success() && text(&o).contains("/nonexistent/train-images-idx3-ubyte"),
        "{}",
        text(&o)
    );
    let o = jem(&["eval", "accuracy", "--run", tmp.path().to_str().unwrap()]);
    assert!(
        !o.status.success() && text(&o).contains("not a jem run directory"),
        "{}",
        text(&o)
    );
    let cfg = tmp.path().join("bad.toml");
    std::fs::write(&cfg, "[optim]\nlr = \"fast\"\n").unwrap();
    let o = jem(&[
        "train",
        "--config",
        cfg.to_str().unwrap(),
        "--out",
        tmp.path().join("c").to_str().unwrap(),
    ]);
    assert!(
        !o.status.success() && text(&o).contains("bad.toml"),
        "{}",
        text(&o)
    );
}

fn model_tensors(run: &Path) -> Vec<(String, Vec<u8>)> {
    let bytes = std::fs::read(run.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut v: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(n, t)| (n, t.data().to_vec()))
        .collect();
    v.sort();
    v
}

#[test]
fn killed_with_sigkill_at_any_moment_resumes_to_the_same_result() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    jem::data::synthetic::write_synthetic_fashion(&data, 160, 40, 2).unwrap();
    let flags = ["--max-steps", "40", "--checkpoint-every", "1"];
    let straight = tmp.path().join("straight");
    let o = train_tiny(&data, &straight, &flags);
    assert!(o.status.success(), "{}", text(&o));

    let killed = tmp.path().join("killed");
    let mut kills = 0;
    for round in 0..40 {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_jem"));
        cmd.args(["--threads", "2", "train", "--quiet"]);
        if killed.join("state.json").exists() {
            cmd.arg("--resume").arg(&killed);
        } else {
            // Killed before the first checkpoint was complete: start again from nothing.
            std::fs::remove_dir_all(&killed).ok();
            cmd.args(["--dataset", "fashion-mnist", "--data-dir"])
                .arg(&data)
                .arg("--out")
                .arg(&killed)
                .args([
                    "--batch-size",
                    "16",
                    "--n-valid",
                    "32",
                    "--buffer-size",
                    "100",
                ])
                .args(["--sgld-steps", "3", "--lr", "1e-3", "--warmup-steps", "2"])
                .args(flags);
        }
        let mut child = cmd
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Kill after a varying delay: sometimes during start-up, sometimes mid-step or
        // mid-checkpoint (a checkpoint is written after every step).
        std::thread::sleep(std::time::Duration::from_millis(150 + 97 * (round % 7)));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            kills += 1;
        }
        if child.wait().unwrap().success() {
            break;
        }
    }
    assert!(
        kills > 0,
        "the run was never killed: make the delays shorter"
    );
    let o = jem(&["train", "--resume", killed.to_str().unwrap(), "--quiet"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(model_tensors(&killed), model_tensors(&straight));
}

#[test]
fn jem_pp_igebm_and_lsd_train_evaluate_and_compare() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    jem::data::synthetic::write_synthetic_fashion(&data, 160, 40, 2).unwrap();
    let runs: Vec<(&str, Vec<&str>)> = vec![
        ("jempp", vec!["--sampler", "pyld", "--init", "informative"]),
        ("igebm", vec!["--objective", "igebm", "--spectral-norm"]),
        ("lsd", vec!["--objective", "lsd", "--critic-steps", "2"]),
    ];
    let mut dirs = Vec::new();
    for (name, flags) in &runs {
        let run = tmp.path().join(name);
        let mut extra = vec!["--max-steps", "3"];
        extra.extend(flags.iter().copied());
        let o = train_tiny(&data, &run, &extra);
        assert!(o.status.success(), "{name}: {}", text(&o));
        let r = run.to_str().unwrap().to_string();
        let o = jem(&["eval", "ood", "--run", &r, "--ood", "uniform", "--json"]);
        assert!(o.status.success(), "{name}: {}", text(&o));
        dirs.push(r);
    }
    let cfg = std::fs::read_to_string(tmp.path().join("jempp/config.toml")).unwrap();
    assert!(cfg.contains("sampler = \"pyld\"") && cfg.contains("init = \"informative\""));
    let cfg = std::fs::read_to_string(tmp.path().join("lsd/config.toml")).unwrap();
    assert!(cfg.contains("px_weight = 30.0") && cfg.contains("critic_steps = 2"));
    assert!(tmp.path().join("lsd/critic.safetensors").exists());
    // The scalar IGEBM has no classifier: a clear refusal, naming the run.
    let o = jem(&["eval", "accuracy", "--run", &dirs[1]]);
    assert!(
        !o.status.success() && text(&o).contains("scalar energy"),
        "{}",
        text(&o)
    );
    let o = jem(&["eval", "accuracy", "--run", &dirs[2]]);
    assert!(o.status.success(), "{}", text(&o));
    let mut args = vec!["compare", "--json"];
    args.extend(dirs.iter().map(String::as_str));
    let o = jem(&args);
    assert!(o.status.success(), "{}", text(&o));
    let rows: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0]["method"], "jem pyld/informative");
    assert!(rows[1]["method"].as_str().unwrap().starts_with("igebm"));
    assert_eq!(rows[2]["method"], "lsd");
    assert!(rows[2]["accuracy"].as_f64().is_some());
    assert!(rows[1]["accuracy"].is_null());
    assert!(
        rows.iter()
            .all(|r| r["step"] == 3 && r["auroc"].as_array().unwrap().len() >= 3)
    );
    let o = jem(&["compare", &dirs[0], &dirs[2]]);
    assert!(
        text(&o).contains("| jempp (jem pyld/informative) | lsd (lsd) |"),
        "{}",
        text(&o)
    );
}

#[test]
fn seeds_of_one_recipe_are_summarised_and_other_configs_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    jem::data::synthetic::write_synthetic_fashion(&data, 96, 40, 3).unwrap();
    let mut dirs = Vec::new();
    for (name, extra) in [
        ("s1", vec!["--seed", "1"]),
        ("s2", vec!["--seed", "2"]),
        ("lr", vec!["--seed", "3", "--lr", "2e-3"]),
    ] {
        let run = tmp.path().join(name);
        let mut flags = vec!["--max-steps", "2", "--objective", "softmax"];
        flags.extend(extra);
        let o = train_tiny(&data, &run, &flags);
        assert!(o.status.success(), "{name}: {}", text(&o));
        let r = run.to_str().unwrap().to_string();
        let o = jem(&["eval", "accuracy", "--run", &r]);
        assert!(o.status.success(), "{}", text(&o));
        dirs.push(r);
    }
    let o = jem(&["compare", "--seeds", "--json", &dirs[0], &dirs[1]]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["seeds"], serde_json::json!([1, 2]));
    let acc = v["figures"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "accuracy")
        .unwrap();
    let vals: Vec<f64> = acc["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert_eq!(vals.len(), 2);
    let mean = acc["mean"].as_f64().unwrap();
    assert!((mean - (vals[0] + vals[1]) / 2.0).abs() < 1e-12);
    let o = jem(&["compare", "--seeds", &dirs[0], &dirs[2]]);
    let t = text(&o);
    assert!(
        !o.status.success() && t.contains("optim.lr") && t.contains(&dirs[2]),
        "{t}"
    );
}

#[test]
fn bf16_chains_train_and_are_saved_in_the_config() {
    if !jem::cnn_cpu::supports(jem::sgld::Precision::Bf16) {
        eprintln!("this CPU has no AVX512-BF16: bf16 chains cannot run here");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    jem::data::synthetic::write_synthetic_fashion(&data, 64, 8, 1).unwrap();
    let out = tmp.path().join("bf16");
    let o = train_tiny(
        &data,
        &out,
        &["--sgld-precision", "bf16", "--max-steps", "3"],
    );
    assert!(o.status.success(), "{}", text(&o));
    let cfg = std::fs::read_to_string(out.join("config.toml")).unwrap();
    assert!(cfg.contains("precision = \"bf16\""), "{cfg}");
    // Resuming may switch the chains back to f32.
    let o = jem(&[
        "--threads",
        "2",
        "train",
        "--resume",
        out.to_str().unwrap(),
        "--sgld-precision",
        "f32",
        "--max-steps",
        "5",
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let cfg = std::fs::read_to_string(out.join("config.toml")).unwrap();
    assert!(cfg.contains("precision = \"f32\""), "{cfg}");
}

/// `--sgld-precision auto` (the recipe's) trains on every CPU: bf16 where the kernel runs
/// it and it was timed faster, f32 elsewhere, and the run's config records the one that
/// ran, not `auto` (the engines' side of it, with the rule:
/// `engine::tests::auto_chains_resolve_to_what_the_engine_runs`).
#[test]
fn auto_chain_precision_trains_everywhere_and_saves_what_ran() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    jem::data::synthetic::write_synthetic_fashion(&data, 64, 8, 1).unwrap();
    let allowed: &[&str] = if jem::cnn_cpu::supports(jem::sgld::Precision::Bf16) {
        &["bf16", "f32"]
    } else {
        &["f32"]
    };
    let out = tmp.path().join("auto");
    let o = train_tiny(
        &data,
        &out,
        &["--sgld-precision", "auto", "--max-steps", "2"],
    );
    assert!(o.status.success(), "{}", text(&o));
    let cfg = std::fs::read_to_string(out.join("config.toml")).unwrap();
    assert!(
        allowed
            .iter()
            .any(|p| cfg.contains(&format!("precision = \"{p}\""))),
        "{cfg}"
    );
}

/// `--resume` applies every flag it may (and records it in `config.toml`) and refuses the
/// others by name; an evaluation refuses a model file with NaN weights and test images of
/// another shape, naming the file.
#[test]
fn resume_flags_nan_weights_and_wrong_shapes_are_never_silent() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    jem::data::synthetic::write_synthetic_fashion(&data, 64, 8, 1).unwrap();
    let run = tmp.path().join("run");
    let o = train_tiny(&data, &run, &["--max-steps", "2"]);
    assert!(o.status.success(), "{}", text(&o));
    let r = run.to_str().unwrap();
    let config = || std::fs::read_to_string(run.join("config.toml")).unwrap();
    let before = config();
    let o = jem(&[
        "train",
        "--resume",
        r,
        "--max-steps",
        "3",
        "--px-weight",
        "5",
        "--quiet",
    ]);
    assert!(
        !o.status.success()
            && text(&o).contains("--px-weight")
            && text(&o).contains("loss.px_weight"),
        "{}",
        text(&o)
    );
    assert_eq!(config(), before, "a refused resume changed config.toml");
    let o = jem(&[
        "train",
        "--resume",
        r,
        "--max-steps",
        "3",
        "--hflip",
        "--data-noise",
        "0.5",
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let after = config();
    assert!(
        after.contains("hflip = true") && after.contains("noise_std = 0.5"),
        "{after}"
    );
    assert!(after.contains("max_steps = 3"), "{after}");

    // NaN weights: named, refused, no recoveries spent.
    let model = run.join("model.safetensors");
    let mut bytes = std::fs::read(&model).unwrap();
    let (n, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let at = 8 + n + header.info("Cnn.convs.0.bias").unwrap().data_offsets.0;
    bytes[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(&model, &bytes).unwrap();
    for args in [
        vec!["eval", "accuracy", "--run", r],
        vec!["train", "--resume", r, "--max-steps", "5", "--quiet"],
    ] {
        let o = jem(&args);
        let t = text(&o);
        assert!(
            !o.status.success()
                && t.contains("model.safetensors")
                && t.contains("Cnn.convs.0.bias"),
            "{args:?}: {t}"
        );
    }
    assert!(
        !std::fs::read_to_string(run.join("metrics.jsonl"))
            .unwrap()
            .contains("recovery")
    );

    // Test images of another shape: the evaluation names the file and both shapes.
    let run2 = tmp.path().join("run2");
    assert!(
        train_tiny(&data, &run2, &["--max-steps", "1"])
            .status
            .success()
    );
    let labels: Vec<u8> = (0..4).collect();
    jem::data::write_idx(
        &data.join("t10k-images-idx3-ubyte.gz"),
        &[4, 20, 20],
        &[0u8; 1600],
    )
    .unwrap();
    jem::data::write_idx(&data.join("t10k-labels-idx1-ubyte.gz"), &[4], &labels).unwrap();
    for sub in ["accuracy", "ood"] {
        let mut args = vec!["eval", sub, "--run", run2.to_str().unwrap()];
        if sub == "ood" {
            args.extend(["--ood", "uniform"]);
        }
        let o = jem(&args);
        let t = text(&o);
        assert!(
            !o.status.success()
                && t.contains("t10k-images-idx3-ubyte.gz")
                && t.contains("[1, 20, 20]")
                && t.contains("[1, 28, 28]"),
            "{sub}: {t}"
        );
    }
}
