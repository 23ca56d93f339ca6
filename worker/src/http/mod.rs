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
    // Degraded: a result or event could not be published and waits for an operator.
    match h.store.parked_count().await {
        Ok(0) | Err(_) => {}
        Ok(n) => problems.push(format!(
            "{n} outbox message(s) could not be published and are parked (see `gitlab-worker outbox parked`)"
        )),
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

/// How long a client may take to send a request's headers.
pub const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// How long one connection may last, whatever it does (health and metrics answer in
/// milliseconds; a slow or stuck client must not hold a connection open).
pub const CONNECTION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Serves until `stop` is cancelled. Returns the bound address (port 0 picks a free one).
pub async fn serve(
    addr: SocketAddr,
    h: Arc<Health>,
    stop: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    serve_with(
        addr,
        router(h),
        stop,
        HEADER_READ_TIMEOUT,
        CONNECTION_TIMEOUT,
    )
    .await
}

/// Serves `app` over HTTP/1 with a header-read timeout and a per-connection deadline.
pub async fn serve_with(
    addr: SocketAddr,
    app: Router,
    stop: CancellationToken,
    header_read: std::time::Duration,
    connection: std::time::Duration,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let connections = tokio_util::task::TaskTracker::new();
        loop {
            let accepted = tokio::select! {
                _ = stop.cancelled() => break,
                a = listener.accept() => a,
            };
            let Ok((stream, _)) = accepted else {
                continue;
            };
            let service = hyper_util::service::TowerToHyperService::new(app.clone());
            connections.spawn(async move {
                let mut http = hyper::server::conn::http1::Builder::new();
                http.timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(header_read);
                let conn = http.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                let _ = tokio::time::timeout(connection, conn).await;
            });
        }
        connections.close();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), connections.wait()).await;
    });
    Ok((bound, task))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn a_client_that_never_finishes_its_headers_is_disconnected() {
        let app = Router::new().route("/livez", get(|| async { "ok\n" }));
        let stop = CancellationToken::new();
        let (addr, task) = serve_with(
            "127.0.0.1:0".parse().unwrap(),
            app,
            stop.clone(),
            Duration::from_millis(200),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
        // A complete request is answered.
        let mut ok = tokio::net::TcpStream::connect(addr).await.unwrap();
        ok.write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        ok.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        // Half a request line, then silence: the server hangs up.
        let started = Instant::now();
        let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET /livez HTTP/1.1\r\n").await.unwrap();
        let mut buf = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut buf))
            .await
            .expect("the server closed the connection")
            .ok();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        stop.cancel();
        task.await.unwrap();
    }
}
