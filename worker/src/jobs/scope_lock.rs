//! One sync per connector and scope at a time, across every worker sharing the database.
//!
//! Two syncs of one scope would read GitLab twice for one answer and race to store their
//! snapshots. The second waits (its message is kept alive by the progress ticker) until the
//! first has stored its snapshot, then runs: it was asked for after the first began, so the
//! first's answer may predate what it was asked to see.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::store::{Store, StoreError};

/// How long a holder that stopped renewing (a killed worker) keeps the scope.
const LEASE: Duration = Duration::from_secs(60);
/// How often the holder renews, and how often a waiting sync looks again.
const RENEW_EVERY: Duration = Duration::from_secs(15);
const RETRY_EVERY: Duration = Duration::from_millis(500);

/// Held while a sync of one scope runs and stores its snapshot; released when dropped.
#[derive(Debug)]
pub struct ScopeLock {
    stop: CancellationToken,
}

impl Drop for ScopeLock {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

pub fn lease_name(connector: &str, scope: &str) -> String {
    format!("sync/{connector}/{scope}")
}

/// Waits until this job holds the scope, then keeps renewing it until the lock is dropped.
/// `holder` names the job (two syncs in one worker exclude each other).
pub async fn acquire(store: &Store, name: String, holder: String) -> Result<ScopeLock, StoreError> {
    let mut waited = false;
    while !store.try_lease(&name, &holder, LEASE).await? {
        if !waited {
            tracing::info!(lease = %name, "another sync of this scope is running; this one waits for it");
            metrics::counter!("gitlab_worker_sync_waits_total").increment(1);
            waited = true;
        }
        tokio::time::sleep(RETRY_EVERY).await;
    }
    let stop = CancellationToken::new();
    let (store, stopped) = (store.clone(), stop.clone());
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stopped.cancelled() => break,
                _ = tokio::time::sleep(RENEW_EVERY) => {
                    match store.try_lease(&name, &holder, LEASE).await {
                        Ok(true) => {}
                        Ok(false) => tracing::warn!(lease = %name, "the scope's lease was taken over (this sync stalled past its lease)"),
                        Err(e) => tracing::warn!(lease = %name, "renewing the scope's lease failed: {e}"),
                    }
                }
            }
        }
        if let Err(e) = store.release_named_lease(&name, &holder).await {
            tracing::warn!(lease = %name, "releasing the scope's lease failed (it ends by itself): {e}");
        }
    });
    Ok(ScopeLock { stop })
}
