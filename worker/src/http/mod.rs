//! `/livez`, `/readyz` and `/metrics` (Prometheus).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;

use crate::connector::Connector;
use crate::store::Store;

pub struct Health {
    pub nats: Option<async_nats::Client>,
    pub store: Store,
    pub shutting_down: CancellationToken,
    pub metrics: Option<PrometheusHandle>,
    pub connectors: Vec<Arc<Connector>>,
}

/// Installs the process-wide Prometheus recorder once; later calls return the same handle.
pub fn install_metrics() -> Option<PrometheusHandle> {
    static HANDLE: std::sync::OnceLock<Option<PrometheusHandle>> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            metrics_exporter_prometheus::PrometheusBuilder::new()
                .install_recorder()
                .map_err(|e| tracing::warn!("metrics recorder not installed: {e}"))
                .ok()
        })
        .clone()
}

pub fn router(h: Arc<Health>) -> Router {
    Router::new()
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_page))
        .with_state(h)
}

async fn readyz(State(h): State<Arc<Health>>) -> impl IntoResponse {
    let mut problems = Vec::new();
    if h.shutting_down.is_cancelled() {
        problems.push("shutting down".to_string());
    }
    if let Some(n) = &h.nats
        && n.connection_state() != async_nats::connection::State::Connected
    {
        problems.push("NATS is not connected".into());
    }
    if let Err(e) = h.store.ping().await {
        problems.push(format!("database unreachable: {e}"));
    }
    if problems.is_empty() {
        (StatusCode::OK, "ready\n".to_string())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", problems.join("; ")),
        )
    }
}

async fn metrics_page(State(h): State<Arc<Health>>) -> impl IntoResponse {
    // GitLab client counters are kept by each client; copied into the registry at scrape time.
    for c in &h.connectors {
        let stats = c.client.stats();
        let id = c.settings.id.to_string();
        for (route, r) in &stats.routes {
            for (status, n) in &r.statuses {
                metrics::counter!("gitlab_worker_gitlab_requests_total", "connector" => id.clone(), "route" => route.clone(), "status" => status.to_string()).absolute(*n);
            }
            metrics::counter!("gitlab_worker_gitlab_rate_limit_waits_total", "connector" => id.clone(), "route" => route.clone()).absolute(r.rate_limit_waits);
            metrics::counter!("gitlab_worker_gitlab_rate_limit_wait_seconds_total", "connector" => id.clone(), "route" => route.clone()).absolute(r.rate_limit_wait_ms / 1000);
            metrics::counter!("gitlab_worker_gitlab_429_total", "connector" => id.clone(), "route" => route.clone()).absolute(r.too_many_requests);
            metrics::counter!("gitlab_worker_gitlab_retries_total", "connector" => id.clone(), "route" => route.clone()).absolute(r.retries);
        }
    }
    match &h.metrics {
        Some(m) => (StatusCode::OK, m.render()),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics recorder unavailable\n".into(),
        ),
    }
}

/// Serves until `stop` is cancelled. Returns the bound address (port 0 picks a free one).
pub async fn serve(
    addr: SocketAddr,
    h: Arc<Health>,
    stop: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = router(h);
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
    });
    Ok((bound, task))
}
