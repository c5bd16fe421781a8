//! `jem serve`: an HTTP inference server (axum on tokio) for a trained run.
//!
//! Requests are checked on the async side and queued (bounded; a full queue answers 503) to
//! one model worker thread, which groups the queued requests into batches (up to
//! `--max-batch` images, waiting at most `--max-wait-ms` for more) so that throughput under
//! load approaches the model's batch throughput. SIGTERM or Ctrl-C stops accepting
//! connections, answers the requests in flight and exits.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use clap::Args;
use jem::data::Images;
use jem::data::inputs::decode_png;
use jem::predict::{Prediction, Predictor};
use serde_json::{Value, json};
use tokio::sync::oneshot;

#[derive(Args)]
pub(crate) struct ServeArgs {
    /// Run directory.
    #[arg(long)]
    run: PathBuf,
    /// Address to listen on (port 0: any free port; the bound address is printed).
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// Most images the model worker puts in one batch.
    #[arg(long, default_value_t = 256)]
    max_batch: usize,
    /// Longest the worker waits for more requests before running a batch, milliseconds.
    #[arg(long, default_value_t = 2)]
    max_wait_ms: u64,
    /// Requests that may wait for the worker; more answer 503.
    #[arg(long, default_value_t = 64)]
    queue: usize,
    /// Most images per request.
    #[arg(long, default_value_t = 256)]
    max_images: usize,
    /// Largest request body, bytes.
    #[arg(long, default_value_t = 4 << 20)]
    max_body_bytes: usize,
}

/// One request's images and where its answer goes.
struct Job {
    images: Images,
    reply: oneshot::Sender<std::result::Result<Vec<Prediction>, String>>,
}

struct AppState {
    jobs: SyncSender<Job>,
    info: Value,
    shape: [usize; 3],
    max_images: usize,
    max_body_bytes: usize,
}

/// A JSON error answer.
fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": message.into() }))).into_response()
}

pub(crate) fn serve(a: ServeArgs, device: &jem::Device) -> Result<()> {
    if a.max_batch == 0 || a.max_images == 0 || a.max_body_bytes == 0 {
        bail!("--max-batch, --max-images and --max-body-bytes must be positive");
    }
    let predictor = Predictor::load_on(&a.run, device)?.with_batch_size(a.max_batch);
    if predictor.threshold().is_none() {
        eprintln!(
            "note: {} has no OOD threshold: answers carry \"ood\": null (run `jem threshold --run {}`)",
            a.run.display(),
            a.run.display()
        );
    }
    let mut info = serde_json::to_value(predictor.info()?)?;
    info["limits"] = json!({
        "max_batch": a.max_batch, "max_wait_ms": a.max_wait_ms, "queue": a.queue,
        "max_images": a.max_images, "max_body_bytes": a.max_body_bytes,
    });
    let (tx, rx) = sync_channel::<Job>(a.queue);
    let wait = Duration::from_millis(a.max_wait_ms);
    let max_batch = a.max_batch;
    let shape = predictor.shape();
    let worker = std::thread::Builder::new()
        .name("jem-model".into())
        .spawn(move || model_worker(&predictor, &rx, max_batch, wait))
        .context("starting the model worker")?;
    let state = Arc::new(AppState {
        jobs: tx,
        info,
        shape,
        max_images: a.max_images,
        max_body_bytes: a.max_body_bytes,
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(listen(a.addr, state))?;
    // Every request handler has finished and the state (the queue's sender) is gone: the
    // worker answers what is left in the queue and stops.
    worker
        .join()
        .map_err(|_| anyhow::anyhow!("the model worker panicked"))?;
    eprintln!("stopped");
    Ok(())
}

async fn listen(addr: SocketAddr, state: Arc<AppState>) -> Result<()> {
    let app = Router::new()
        .route(
            "/healthz",
            get(|| async { axum::Json(json!({ "status": "ok" })) }),
        )
        .route("/v1/model", get(model_info))
        .route("/v1/predict", post(predict))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let bound = listener.local_addr()?;
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on http://{bound}")?;
        out.flush()?;
    }
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("serving")?;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {},
                    _ = term.recv() => {},
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    eprintln!("shutting down: answering the requests in flight");
}

/// Run batches until every sender is gone: the first queued request, then whatever arrives
/// within `wait`, up to `max_batch` images.
fn model_worker(predictor: &Predictor, rx: &Receiver<Job>, max_batch: usize, wait: Duration) {
    while let Ok(first) = rx.recv() {
        let mut n = first.images.len();
        let mut jobs = vec![first];
        let deadline = Instant::now() + wait;
        while n < max_batch {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(job) => {
                    n += job.images.len();
                    jobs.push(job);
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            }
        }
        let mut all = Images {
            pixels: Vec::with_capacity(n * jobs[0].images.image_len()),
            shape: jobs[0].images.shape,
        };
        let counts: Vec<usize> = jobs.iter().map(|j| j.images.len()).collect();
        let replies: Vec<_> = jobs
            .into_iter()
            .map(|j| {
                all.append(j.images);
                j.reply
            })
            .collect();
        match predictor.predict(&all) {
            Ok(preds) => {
                let mut preds = preds.into_iter();
                for (reply, k) in replies.into_iter().zip(counts) {
                    let _ = reply.send(Ok(preds.by_ref().take(k).collect()));
                }
            }
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(e.to_string()));
                }
            }
        }
    }
}

async fn model_info(State(s): State<Arc<AppState>>) -> Response {
    axum::Json(s.info.clone()).into_response()
}

async fn predict(State(s): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    let kind = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let Ok(bytes) = axum::body::to_bytes(body, s.max_body_bytes).await else {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body over the {}-byte limit", s.max_body_bytes),
        );
    };
    let images = if kind.starts_with("application/json") {
        json_images(&bytes, s.shape, s.max_images)
    } else if kind.starts_with("image/png") {
        png_image(&bytes, s.shape)
    } else {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "content type {:?}: send application/json ({{\"images\": [[...]]}}) or image/png",
                kind
            ),
        );
    };
    let images = match images {
        Ok(i) => i,
        Err(msg) => return error(StatusCode::BAD_REQUEST, msg),
    };
    let (reply, answer) = oneshot::channel();
    match s.jobs.try_send(Job { images, reply }) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the model queue is full: retry later",
            );
        }
        Err(TrySendError::Disconnected(_)) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the model worker has stopped",
            );
        }
    }
    match answer.await {
        Ok(Ok(preds)) => axum::Json(json!({ "predictions": preds })).into_response(),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the model worker stopped",
        ),
    }
}

/// The images of a JSON body `{"images": [image, ...]}`, each image flat or nested, values
/// in `[0, 1]`.
fn json_images(bytes: &[u8], shape: [usize; 3], max_images: usize) -> Result<Images, String> {
    let body: Value = serde_json::from_slice(bytes).map_err(|e| format!("malformed JSON: {e}"))?;
    let list = body
        .get("images")
        .and_then(Value::as_array)
        .ok_or("expected an object {\"images\": [image, ...]}")?;
    if list.is_empty() {
        return Err("\"images\" is empty".into());
    }
    if list.len() > max_images {
        return Err(format!(
            "{} images: at most {max_images} per request",
            list.len()
        ));
    }
    let len: usize = shape.iter().product();
    let mut pixels = Vec::with_capacity(list.len() * len);
    for (i, img) in list.iter().enumerate() {
        let start = pixels.len();
        flatten(img, &mut pixels, start + len).map_err(|e| {
            format!("image {i}: {e} (the model takes {len} values, {shape:?} as [c, h, w])")
        })?;
        let n = pixels.len() - start;
        if n != len {
            return Err(format!(
                "image {i}: {n} values, the model takes {len} ({shape:?} as [c, h, w])"
            ));
        }
    }
    // `flatten` refused every value outside [0, 1] and each image has `len` values.
    Ok(Images { pixels, shape })
}

/// Append the numbers of a (nested) JSON array to `out`, refusing anything else, values
/// outside `[0, 1]` and growing `out` past `cap` values.
fn flatten(v: &Value, out: &mut Vec<f32>, cap: usize) -> Result<(), String> {
    match v {
        Value::Number(x) => {
            let f = x
                .as_f64()
                .filter(|f| f.is_finite())
                .ok_or("a value is not a finite number")?;
            if !(0.0..=1.0).contains(&f) {
                return Err(format!("value {f} outside [0, 1]"));
            }
            if out.len() == cap {
                return Err("more values than one image has".into());
            }
            out.push(f as f32);
            Ok(())
        }
        Value::Array(items) => items.iter().try_for_each(|item| flatten(item, out, cap)),
        other => Err(format!("expected numbers, found {other}")),
    }
}

/// One PNG body as an image of `shape` (converted between grey and RGB, never resized).
fn png_image(bytes: &[u8], shape: [usize; 3]) -> Result<Images, String> {
    let what = std::path::Path::new("request body");
    decode_png(bytes, what)
        .and_then(|i| i.fit(shape, false, what))
        .map_err(|e| e.to_string())
}
