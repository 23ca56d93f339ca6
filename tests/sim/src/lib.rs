//! A stateful GitLab REST v4 simulator: the GitLab our tests, the demo and the benchmark talk
//! to, built to GitLab's documented behaviour (docs/gitlab.md; docs/simulator.md).
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use gitlab_sim::{Mode, SeedSpec};
//! let sim = gitlab_sim::start_seeded(&SeedSpec::small(1, Mode::SelfManaged)).await?;
//! println!("{} {} {}", sim.running.url, sim.token, sim.scope);
//! # Ok(()) }
//! ```

mod access;
pub mod hooks;
// Handler helpers return a ready `Response` as their error, the axum idiom; its size is
// irrelevant for a test server.
#[allow(clippy::result_large_err)]
pub mod http;
pub mod model;
pub mod seed;

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use access::Path as AccessPath;
pub use http::{FaultRule, Faults, LogEntry, RouteCount, Sim, SimConfig, UserRateLimit};
pub use model::{Mode, Resource, UserKind, World};
pub use seed::{SeedSpec, Seeded};

/// A simulator serving on a local port. Dropping it stops the server.
pub struct Running {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    pub sim: Arc<Sim>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Running {
    /// Stops accepting connections and waits for the server task.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `world` on `listen` (`127.0.0.1:0` picks a free port).
pub async fn start(world: World, config: SimConfig, listen: &str) -> std::io::Result<Running> {
    let sim = Sim::new(world, config, 0x5eed);
    serve(sim, listen).await
}

/// A seeded simulator serving on a free loopback port, with the connector's token and scope.
pub struct SeededSim {
    pub running: Running,
    /// An admin's token on self-managed, a top-level group owner's on GitLab.com.
    pub token: String,
    /// The top-level group's full path.
    pub scope: String,
}

impl std::ops::Deref for SeededSim {
    type Target = Running;
    fn deref(&self) -> &Running {
        &self.running
    }
}

/// Generates the organisation `spec` describes and serves it on `127.0.0.1:0` with the
/// default configuration of its mode: the one bootstrap tests share.
pub async fn start_seeded(spec: &SeedSpec) -> std::io::Result<SeededSim> {
    let seeded = seed::generate(spec);
    let running = start(seeded.world, SimConfig::for_mode(spec.mode), "127.0.0.1:0").await?;
    Ok(SeededSim {
        running,
        token: seeded.token,
        scope: seeded.scope,
    })
}

pub async fn serve(sim: Arc<Sim>, listen: &str) -> std::io::Result<Running> {
    let listener = TcpListener::bind(listen).await?;
    let url = format!("http://{}", listener.local_addr()?);
    sim.set_base_url(url.clone());
    let app = http::router(sim.clone());
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = rx.await;
            })
            .await;
    });
    Ok(Running {
        url,
        sim,
        shutdown: Some(tx),
        task,
    })
}
