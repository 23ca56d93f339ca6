//! Live access (docs/hooks.md): GitLab's deliveries in `<P>_HOOKS` become targeted re-reads,
//! applied to the live state (the newest complete snapshot with the change batches stored on
//! it), stored as hash-chained change batches, and announced as access events with
//! `cause: "gitlab_event"`.

pub mod audit;
pub mod processor;
pub mod reconcile;
pub mod state;

pub use processor::Processor;

use std::sync::Arc;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// What `serve` hands the live-access tasks.
pub struct Background<'a> {
    pub settings: &'a crate::config::Settings,
    pub store: &'a crate::store::Store,
    pub js: &'a async_nats::jetstream::Context,
    pub subjects: &'a crate::subjects::Subjects,
    pub connectors: Vec<Arc<crate::connector::Connector>>,
    pub stop: CancellationToken,
}

/// For every connector with a webhook secret: its event processor (in every worker; a lease
/// lets one at a time apply its events), the check of its hooks' health, and the reconcile
/// schedule. Their tasks end when `stop` is cancelled.
pub fn start(b: Background<'_>) -> Vec<JoinHandle<()>> {
    let hooked: Vec<_> = b
        .connectors
        .into_iter()
        .filter(|c| c.settings.webhook_secret.is_some())
        .collect();
    let mut tasks = Vec::new();
    for c in &hooked {
        let processor = Processor {
            store: b.store.clone(),
            js: b.js.clone(),
            subjects: b.subjects.clone(),
            connector: c.clone(),
            spool_dir: b.settings.spool_dir(),
            audit_every: b.settings.audit_poll_interval,
        };
        tasks.push(crate::app::supervise(
            "live access",
            b.stop.clone(),
            move |stop| processor.clone().run(stop),
        ));
        tasks.push(tokio::spawn(crate::hooks::manage::watch_health(
            c.clone(),
            b.settings.hook_check_interval,
            b.stop.clone(),
        )));
    }
    if let Some(every) = b.settings.reconcile_interval
        && !hooked.is_empty()
    {
        tasks.push(tokio::spawn(reconcile::schedule(
            b.js.clone(),
            b.subjects.clone(),
            hooked.iter().map(|c| c.settings.id.to_string()).collect(),
            every,
            b.stop.clone(),
        )));
    }
    tasks
}
