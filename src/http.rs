//! The worker's HTTP surface (axum on a small tokio runtime of its own):
//!
//! - `GET /metrics`: every metric of [`crate::metrics::Metrics`] in the Prometheus text format;
//! - `GET /healthz`: 200 while the process runs and epochs advance (503 once no epoch closed for
//!   `stall_secs`, counted from the start until the first one closes);
//! - `GET /readyz`: 200 once partitions are assigned, a forecaster is loaded and every sink's
//!   last write succeeded, else 503 naming what is missing (and the sinks that failed);
//! - `GET /v1/forecasts/{store}/{sku}`: the latest forecast record of a series (404 if unknown);
//! - `GET /v1/recommendations?store=..&limit=..`: the latest records with the largest
//!   recommended orders first (400 with a message for a bad parameter).
//!
//! Everything is served from the process's own state ([`crate::pipeline::stream::Progress`]): the
//! series its workers hold. In a cluster each process scores its own share of the series, so a
//! series this process does not hold is read from the shared Redis cache when `[redis]` is
//! configured (every process writes it); without it, ask the process that holds the series, or
//! read the mart. The recommendations list covers this process's series. No request reaches
//! Kafka or the dataflow.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;

use crate::pipeline::stream::Progress;

/// What the handlers read.
#[derive(Clone)]
struct App {
    progress: Arc<Progress>,
    stall_secs: i64,
    /// Where series other processes hold are read.
    cache: Option<crate::cache::CacheReader>,
}

/// A running server; dropping it stops it.
pub struct Server {
    /// The address it listens on (useful with port 0).
    pub addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts serving `progress` on `listen` (e.g. `127.0.0.1:9898`, or port 0 for any); series it
/// does not hold are looked up in `cache`, if given.
pub fn serve(
    listen: &str,
    progress: Arc<Progress>,
    stall_secs: u64,
    cache: Option<crate::cache::CacheReader>,
) -> std::io::Result<Server> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let listener = runtime.block_on(tokio::net::TcpListener::bind(listen))?;
    let addr = listener.local_addr()?;
    let app = App {
        progress,
        stall_secs: stall_secs.min(i64::MAX as u64) as i64,
        cache,
    };
    let router = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/v1/forecasts/{store}/{sku}", get(forecast))
        .route("/v1/recommendations", get(recommendations))
        .with_state(app);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("stockcast-http".into())
        .spawn(move || {
            let served = runtime.block_on(async move {
                axum::serve(listener, router)
                    .with_graceful_shutdown(async {
                        let _ = rx.await;
                    })
                    .await
            });
            if let Err(e) = served {
                tracing::error!(error = %e, "HTTP server stopped");
            }
        })?;
    tracing::info!(%addr, "serving /metrics, /healthz, /readyz and /v1");
    Ok(Server {
        addr,
        shutdown: Some(tx),
        thread: Some(thread),
    })
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

async fn metrics(State(app): State<App>) -> Response {
    let p = &app.progress;
    p.refresh_lags(now());
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        p.metrics.render(),
    )
        .into_response()
}

async fn healthz(State(app): State<App>) -> Response {
    let silent = app.progress.stalled_for(now());
    if silent > app.stall_secs {
        let what = if app.progress.last_advance.load(Ordering::Relaxed) > 0 {
            "no epoch closed"
        } else {
            "no epoch closed since the start"
        };
        let msg = format!("{what} for {silent} s (limit {} s)\n", app.stall_secs);
        return (StatusCode::SERVICE_UNAVAILABLE, msg).into_response();
    }
    (StatusCode::OK, "ok\n").into_response()
}

async fn readyz(State(app): State<App>) -> Response {
    let p = &app.progress;
    let mut missing = Vec::new();
    if !p.assigned.load(Ordering::Relaxed) {
        missing.push("partitions not assigned yet");
    }
    if !p.model_loaded.load(Ordering::Relaxed) {
        missing.push("no forecaster loaded");
    }
    let failing = p.failing_sinks();
    let failed = format!("the last write failed in: {}", failing.join(", "));
    if !failing.is_empty() {
        missing.push(&failed);
    }
    if missing.is_empty() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        let body = missing.join("; ") + "\n";
        (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
    }
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

use crate::records::Latest;

/// The latest records; `None` if a writer panicked while holding them.
fn read_latest(app: &App) -> Option<std::sync::RwLockReadGuard<'_, Latest>> {
    app.progress.latest.read().ok()
}

fn unavailable() -> Response {
    let message = "the worker's state is unavailable (see its log)".to_string();
    error(StatusCode::INTERNAL_SERVER_ERROR, message)
}

async fn forecast(State(app): State<App>, Path((store, sku)): Path<(String, String)>) -> Response {
    let local = match read_latest(&app) {
        None => return unavailable(),
        Some(latest) => latest
            .get(&(Arc::from(store.as_str()), Arc::from(sku.as_str())))
            .cloned(),
    };
    if let Some(rec) = local {
        return Json(rec).into_response();
    }
    let not_found = || {
        let message = format!("no forecast for store `{store}`, SKU `{sku}`");
        error(StatusCode::NOT_FOUND, message)
    };
    let Some(cache) = app.cache.clone() else {
        return not_found();
    };
    let (s, k) = (store.clone(), sku.clone());
    match tokio::task::spawn_blocking(move || cache.get(&s, &k)).await {
        Ok(Ok(Some(rec))) => Json(rec).into_response(),
        Ok(Ok(None)) => not_found(),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "read API: the cache lookup failed");
            let message =
                format!("this process does not hold the series and the cache did not answer: {e}");
            error(StatusCode::SERVICE_UNAVAILABLE, message)
        }
        Err(_) => unavailable(),
    }
}

#[derive(Deserialize)]
struct RecommendationsQuery {
    store: Option<String>,
    limit: Option<String>,
}

/// Largest `limit` answered.
const MAX_LIMIT: usize = 10_000;

async fn recommendations(
    State(app): State<App>,
    Query(q): Query<RecommendationsQuery>,
) -> Response {
    let limit = match q.limit.as_deref().map(str::parse::<usize>) {
        None => 50,
        Some(Ok(n)) if (1..=MAX_LIMIT).contains(&n) => n,
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("`limit` must be an integer from 1 to {MAX_LIMIT}"),
            )
        }
    };
    if q.store.as_deref().is_some_and(str::is_empty) {
        return error(StatusCode::BAD_REQUEST, "`store` must not be empty".into());
    }
    let Some(latest) = read_latest(&app) else {
        return unavailable();
    };
    let mut rows: Vec<&crate::records::ForecastRecord> = latest
        .values()
        .filter(|r| q.store.as_deref().is_none_or(|s| s == &*r.store_id))
        .filter(|r| r.recommendation.order_qty.is_some_and(|o| o > 0.0))
        .collect();
    rows.sort_by(|a, b| {
        let qty = |r: &crate::records::ForecastRecord| r.recommendation.order_qty.unwrap_or(0.0);
        qty(b)
            .total_cmp(&qty(a))
            .then_with(|| (&a.store_id, &a.sku_id).cmp(&(&b.store_id, &b.sku_id)))
    });
    rows.truncate(limit);
    Json(rows).into_response()
}
