//! `jem threshold`, `jem predict` and `jem serve` end to end: the real server on a free
//! loopback port, talked to by a real HTTP client, for every endpoint, every bad input, a
//! bounded load whose every answer must equal `jem predict`'s, a full queue, and SIGTERM.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{jem, text, train_tiny};
use reqwest::blocking::Client;
use serde_json::{Value, json};

/// A trained run with a threshold, its test images in [0, 1] (an IDX file of 40) and what
/// `jem predict --json` says of each.
struct Fixture {
    _dir: tempfile::TempDir,
    run: PathBuf,
    images: Vec<Vec<f32>>,
    expected: Vec<Value>,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    jem::data::synthetic::write_synthetic_fashion(&data, 160, 40, 4).unwrap();
    let run = dir.path().join("run");
    let o = train_tiny(&data, &run, &["--max-steps", "4"]);
    assert!(o.status.success(), "{}", text(&o));
    let r = run.to_str().unwrap();
    let o = jem(&["threshold", "--run", r, "--score", "logp"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("accepts"), "{}", text(&o));
    let file = data.join("t10k-images-idx3-ubyte.gz");
    let o = jem(&["predict", "--run", r, "--json", file.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let expected: Vec<Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // Another image size is refused, naming the file and --resize, unless --resize is given.
    let small = dir.path().join("small-idx3-ubyte");
    jem::data::write_idx(&small, &[1, 10, 10], &[128u8; 100]).unwrap();
    let s = small.to_str().unwrap();
    let o = jem(&["predict", "--run", r, s]);
    assert!(
        !o.status.success() && text(&o).contains("--resize") && text(&o).contains(s),
        "{}",
        text(&o)
    );
    let o = jem(&["predict", "--run", r, "--resize", s]);
    let line = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        o.status.success() && line.lines().count() == 1,
        "{}",
        text(&o)
    );
    assert!(
        line.trim_end().ends_with("\tin") || line.trim_end().ends_with("\tOUT"),
        "{line}"
    );
    let images = jem::data::read_images(&file).unwrap();
    let images = (0..images.len())
        .map(|i| images.image(i).to_vec())
        .collect();
    Fixture {
        _dir: dir,
        run,
        images,
        expected,
    }
}

struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(run: &Path, extra: &[&str]) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_jem"))
        .args([
            "--threads",
            "2",
            "serve",
            "--run",
            run.to_str().unwrap(),
            "--addr",
            "127.0.0.1:0",
        ])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("jem serve starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    Server { child, url }
}

fn post(
    c: &Client,
    url: &str,
    kind: &str,
    body: impl Into<reqwest::blocking::Body>,
) -> (u16, Value) {
    let r = c
        .post(format!("{url}/v1/predict"))
        .header("content-type", kind)
        .body(body)
        .send()
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().unwrap_or(Value::Null))
}

fn predict_json(c: &Client, url: &str, images: &[&Vec<f32>]) -> (u16, Value) {
    post(
        c,
        url,
        "application/json",
        json!({ "images": images }).to_string(),
    )
}

/// Whether a server answer equals `jem predict`'s line for the same image.
fn same(got: &Value, want: &Value) {
    assert_eq!(got["class"], want["class"], "{got} vs {want}");
    assert_eq!(got["label"], want["label"]);
    assert_eq!(got["ood"], want["ood"]);
    for key in ["confidence", "ood_score", "energy"] {
        let (a, b) = (got[key].as_f64().unwrap(), want[key].as_f64().unwrap());
        assert!((a - b).abs() < 1e-4, "{key}: {a} vs {b}");
    }
    let (p, q) = (
        got["probs"].as_array().unwrap(),
        want["probs"].as_array().unwrap(),
    );
    for (a, b) in p.iter().zip(q) {
        assert!((a.as_f64().unwrap() - b.as_f64().unwrap()).abs() < 1e-5);
    }
}

#[test]
fn every_endpoint_answers_and_every_bad_input_is_a_clear_4xx() {
    let f = fixture();
    let s = start(&f.run, &["--max-images", "4", "--max-body-bytes", "100000"]);
    let c = Client::new();
    let health: Value = c
        .get(format!("{}/healthz", s.url))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(health["status"], "ok");
    let info: Value = c
        .get(format!("{}/v1/model", s.url))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(info["input_shape"], json!([1, 28, 28]));
    assert_eq!(info["dataset"], "fashion-mnist");
    assert_eq!(info["step"], 4);
    assert_eq!(info["threshold"]["score"], "logp");
    assert_eq!(info["classes"][9], "Ankle boot");

    // Flat and nested ([h][w] and [c][h][w]) images give the same answers as `jem predict`.
    let (status, v) = predict_json(&c, &s.url, &[&f.images[0], &f.images[1]]);
    assert_eq!(status, 200, "{v}");
    same(&v["predictions"][0], &f.expected[0]);
    same(&v["predictions"][1], &f.expected[1]);
    let rows: Vec<&[f32]> = f.images[2].chunks(28).collect();
    let body = json!({ "images": [rows.clone(), [rows]] }).to_string();
    let (status, v) = post(&c, &s.url, "application/json", body);
    assert_eq!(status, 200, "{v}");
    same(&v["predictions"][0], &f.expected[2]);
    same(&v["predictions"][1], &f.expected[2]);
    // A PNG body: the image quantised to 8 bits, which the IDX test images already are.
    let bytes: Vec<u8> = f.images[3]
        .iter()
        .map(|v| (v * 255.0).round() as u8)
        .collect();
    let mut png = Vec::new();
    {
        let mut e = png::Encoder::new(&mut png, 28, 28);
        e.set_color(png::ColorType::Grayscale);
        e.write_header().unwrap().write_image_data(&bytes).unwrap();
    }
    let (status, v) = post(&c, &s.url, "image/png", png);
    assert_eq!(status, 200, "{v}");
    same(&v["predictions"][0], &f.expected[3]);

    let img = &f.images[0];
    let mut hot = img.clone();
    hot[5] = 1.5;
    let cases: Vec<(&str, String, u16, &str)> = vec![
        (
            "application/json",
            "{\"images\": [[0.1, ".into(),
            400,
            "malformed JSON",
        ),
        (
            "application/json",
            json!({ "pixels": [img] }).to_string(),
            400,
            "\"images\"",
        ),
        (
            "application/json",
            json!({ "images": [] }).to_string(),
            400,
            "empty",
        ),
        (
            "application/json",
            json!({ "images": [&img[..700]] }).to_string(),
            400,
            "700 values",
        ),
        (
            "application/json",
            json!({ "images": [[img, img]] }).to_string(),
            400,
            "more values",
        ),
        (
            "application/json",
            json!({ "images": [hot] }).to_string(),
            400,
            "outside [0, 1]",
        ),
        (
            "application/json",
            json!({ "images": [vec!["a"; 784]] }).to_string(),
            400,
            "expected numbers",
        ),
        (
            "application/json",
            json!({ "images": [img, img, img, img, img] }).to_string(),
            400,
            "at most 4",
        ),
        (
            "application/json",
            json!({ "images": [vec![0.5f32; 784 * 40]] }).to_string(),
            413,
            "limit",
        ),
        ("image/png", "not a png".into(), 400, "PNG"),
        ("text/plain", "hello".into(), 415, "content type"),
    ];
    for (kind, body, code, words) in cases {
        let (status, v) = post(&c, &s.url, kind, body);
        let msg = v["error"].as_str().unwrap_or_default();
        assert_eq!(status, code, "{kind}: {v}");
        assert!(msg.contains(words), "{kind}: {msg:?} lacks {words:?}");
    }
    assert_eq!(
        c.get(format!("{}/v1/predict", s.url))
            .send()
            .unwrap()
            .status(),
        405
    );
    assert_eq!(
        c.get(format!("{}/v2/else", s.url)).send().unwrap().status(),
        404
    );
    // After every bad request the server still answers.
    let (status, _) = predict_json(&c, &s.url, &[&f.images[0]]);
    assert_eq!(status, 200);
}

#[test]
fn under_load_every_answer_equals_jem_predict_and_a_full_queue_is_503() {
    let f = fixture();
    let s = start(&f.run, &[]);
    let (clients, per_client) = (32, 100);
    let t0 = Instant::now();
    let latencies: Vec<Duration> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..clients)
            .map(|k| {
                let (f, url) = (&f, &s.url);
                scope.spawn(move || {
                    let c = Client::new();
                    let mut lat = Vec::new();
                    for r in 0..per_client {
                        let ids: Vec<usize> = (0..1 + (k + r) % 3)
                            .map(|j| (k * 7 + r * 3 + j) % 40)
                            .collect();
                        let imgs: Vec<&Vec<f32>> = ids.iter().map(|&i| &f.images[i]).collect();
                        let t = Instant::now();
                        let (status, v) = predict_json(&c, url, &imgs);
                        lat.push(t.elapsed());
                        assert_eq!(status, 200, "{v}");
                        for (p, &i) in v["predictions"].as_array().unwrap().iter().zip(&ids) {
                            same(p, &f.expected[i]);
                        }
                    }
                    lat
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let wall = t0.elapsed().as_secs_f64();
    let mut lat = latencies;
    lat.sort();
    let q = |p: f64| lat[((lat.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e3;
    eprintln!(
        "load: {} requests from {clients} clients in {wall:.2} s ({:.0} requests/s, {:.0} images/s); latency p50 {:.2} ms, p99 {:.2} ms",
        lat.len(),
        lat.len() as f64 / wall,
        (clients * per_client * 2) as f64 / wall,
        q(0.5),
        q(0.99)
    );
    drop(s);

    // A queue that holds nothing: requests that arrive while the worker runs a batch are
    // refused with 503 at once, and the others are still answered in full.
    let s = start(&f.run, &["--queue", "0", "--max-wait-ms", "0"]);
    let big: Vec<&Vec<f32>> = (0..200).map(|i| &f.images[i % 40]).collect();
    let mut refused = 0;
    for _burst in 0..10 {
        let codes: Vec<(u16, Value)> = std::thread::scope(|scope| {
            let hs: Vec<_> = (0..16)
                .map(|_| scope.spawn(|| predict_json(&Client::new(), &s.url, &big)))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (code, v) in &codes {
            match code {
                200 => assert_eq!(v["predictions"].as_array().unwrap().len(), 200),
                503 => {
                    assert!(v["error"].as_str().unwrap().contains("queue is full"));
                    refused += 1;
                }
                other => panic!("status {other}: {v}"),
            }
        }
        if refused > 0 {
            break;
        }
    }
    assert!(
        refused > 0,
        "16 concurrent 200-image requests never found the queue full"
    );
}

#[test]
fn sigterm_answers_the_requests_in_flight_and_exits() {
    let f = fixture();
    let mut s = start(&f.run, &["--max-wait-ms", "20"]);
    let pid = s.child.id().to_string();
    let answered = std::thread::scope(|scope| {
        let hs: Vec<_> = (0..8)
            .map(|k| {
                let (f, url) = (&f, &s.url);
                scope.spawn(move || {
                    let c = Client::new();
                    let mut ok = 0;
                    let t0 = Instant::now();
                    while t0.elapsed() < Duration::from_secs(3) {
                        let imgs: Vec<&Vec<f32>> =
                            (0..8).map(|j| &f.images[(k + j) % 40]).collect();
                        let body = json!({ "images": imgs }).to_string();
                        let r = c
                            .post(format!("{url}/v1/predict"))
                            .header("content-type", "application/json")
                            .body(body)
                            .send();
                        match r {
                            // Every request the server took is answered in full.
                            Ok(r) => {
                                assert_eq!(r.status(), 200);
                                let v: Value = r.json().expect("a whole JSON answer");
                                assert_eq!(v["predictions"].as_array().unwrap().len(), 8);
                                ok += 1;
                            }
                            // After shutdown begins, new connections are refused.
                            Err(_) => break,
                        }
                    }
                    ok
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(700));
        let kill = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(kill.success());
        hs.into_iter().map(|h| h.join().unwrap()).sum::<usize>()
    });
    assert!(answered > 0);
    let t0 = Instant::now();
    let status = loop {
        if let Some(st) = s.child.try_wait().unwrap() {
            break st;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "jem serve did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(s.child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(status.success(), "exit {status:?}: {err}");
    assert!(
        err.contains("shutting down") && err.contains("stopped"),
        "{err}"
    );
}
