//! The shared GitLab budget of workers using one connector's token (docs/scale-out.md), kept in
//! the NATS KV bucket `<P>_BUDGET`.
//!
//! Why NATS and not PostgreSQL: every worker already holds a NATS connection (SQLite-backed
//! workers have no shared database at all), a reservation is one compare-and-set on one key
//! with no transaction or row lock, and the bucket is replicated like the streams on a cluster.
//!
//! Each key `<connector>.<lane>` holds the budget's timeline: the time (Unix nanoseconds)
//! from which the next reservation may start. A reservation moves it forward by the requests it
//! takes times the refill interval, with the key's revision as the guard, so two workers never
//! get the same slot.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, kv};
use gitlab_connector::client::{Reservation, SharedBudget};

use super::NatsError;
use crate::subjects::Subjects;

/// Compare-and-set attempts before a reservation gives up (and the worker paces itself alone
/// for that reservation): only reached under heavy contention or a failing server.
const ATTEMPTS: usize = 32;

/// Opens (or creates) the budget bucket, reconciling its replicas and making its reads go to
/// the stream leader.
pub async fn bucket(
    js: &jetstream::Context,
    subjects: &Subjects,
    replicas: usize,
) -> Result<kv::Store, NatsError> {
    let name = subjects.stream("BUDGET");
    let err = |e: &dyn std::fmt::Display| NatsError::ObjectStore {
        bucket: name.clone(),
        message: e.to_string(),
    };
    let config = kv::Config {
        bucket: name.clone(),
        description: "GitLab request budgets shared by the workers using one token".into(),
        history: 1,
        // A timeline untouched this long is in the past: forgetting it changes nothing.
        max_age: Duration::from_secs(3_600),
        num_replicas: replicas,
        ..Default::default()
    };
    let opened = match js.get_key_value(&name).await {
        Ok(store) => store,
        // Another worker starting at the same time may have created it first (and already
        // changed its configuration below, so this creation is refused): open theirs.
        Err(_) => match js.create_key_value(config).await {
            Ok(store) => store,
            Err(created) => js.get_key_value(&name).await.map_err(|_| err(&created))?,
        },
    };
    let mut stream = js
        .get_stream(format!("KV_{name}"))
        .await
        .map_err(|e| err(&e))?;
    let mut current = stream.info().await.map_err(|e| err(&e))?.config.clone();
    if current.num_replicas == replicas && !current.allow_direct {
        return Ok(opened);
    }
    current.num_replicas = replicas;
    // A reservation reads a timeline and then writes it guarded by the revision it read. Direct
    // gets (the KV default) may be answered by a replica that has not caught up: the key looks
    // absent or older than it is, the guarded write is refused again and again, and the worker
    // gives up sharing for that request. Reads from the stream's leader are never behind.
    current.allow_direct = false;
    js.update_stream(&current).await.map_err(|e| err(&e))?;
    // Reopened: the store decides at opening whether its reads are direct.
    js.get_key_value(&name).await.map_err(|e| err(&e))
}

/// Keys this worker keeps a turn (and its last write) for, at most; beyond it the keys no
/// reservation is using are forgotten.
const KNOWN_MAX: usize = 4_096;

/// A key's revision and value as this worker last wrote it.
type Written = Option<(u64, SystemTime)>;

/// One connector's budget in the bucket.
pub struct KvBudget {
    kv: kv::Store,
    connector: String,
    /// Each key's turn: one reservation of a key at a time in this worker, so its jobs queue
    /// here rather than race each other's compare-and-set on NATS (twenty revokes of one group
    /// arriving at once would otherwise lose to one another until some ran out of attempts).
    /// The turn holds the key as this worker last wrote it: a worker alone on a key (a group's
    /// deletions, usually) then reserves with one round trip, a write guarded by that revision,
    /// instead of a read and a write; when another worker wrote meanwhile the guard fails and
    /// the key is read.
    turns: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<Written>>>>,
}

impl KvBudget {
    pub fn new(kv: kv::Store, connector: &str) -> Self {
        Self {
            kv,
            connector: connector.to_string(),
            turns: Default::default(),
        }
    }

    /// The turn of `key` in this worker.
    fn turn(&self, key: &str) -> Arc<tokio::sync::Mutex<Written>> {
        let mut turns = self.turns.lock().unwrap_or_else(PoisonError::into_inner);
        if turns.len() >= KNOWN_MAX {
            // Only keys no reservation is using are forgotten.
            turns.retain(|_, turn| Arc::strong_count(turn) > 1);
        }
        turns.entry(key.to_string()).or_default().clone()
    }

    /// One compare-and-set on `key`, holding its turn (`known`: what this worker last wrote).
    async fn reserve_once(
        &self,
        key: &str,
        known: &mut Written,
        requests: u32,
        interval: Duration,
    ) -> Result<Option<SystemTime>, String> {
        let (next, revision) = match known.take() {
            Some((revision, next)) => (Some(next), Some(revision)),
            None => match self.kv.entry(key).await.map_err(|e| e.to_string())? {
                Some(e) if e.operation == kv::Operation::Put => {
                    (decode(&e.value), Some(e.revision))
                }
                Some(e) => (None, Some(e.revision)),
                None => (None, None),
            },
        };
        let now = SystemTime::now();
        let start = next.map_or(now, |t| t.max(now));
        let end = start + interval * requests;
        // Any outcome but a write of ours leaves `known` empty: the key is read next time.
        let written = match revision {
            Some(r) => match self.kv.update(key, encode(end), r).await {
                Ok(revision) => Some(revision),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision || lost_race(&e) => {
                    None
                }
                // It may have been written: read it next time.
                Err(e) => return Err(e.to_string()),
            },
            None => match self.kv.create(key, encode(end)).await {
                Ok(revision) => Some(revision),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists || lost_race(&e) => None,
                Err(e) => return Err(e.to_string()),
            },
        };
        // Another worker wrote it when nothing was written.
        Ok(written.map(|revision| {
            *known = Some((revision, end));
            start
        }))
    }
}

impl SharedBudget for KvBudget {
    fn reserve<'a>(&'a self, lane: &'a str, requests: u32, interval: Duration) -> Reservation<'a> {
        Box::pin(async move {
            let key = format!("{}.{lane}", self.connector);
            let turn = self.turn(&key);
            let mut known = turn.lock().await;
            for _ in 0..ATTEMPTS {
                if let Some(start) = self
                    .reserve_once(&key, &mut known, requests, interval)
                    .await?
                {
                    return Ok(start);
                }
                metrics::counter!("gitlab_worker_budget_conflicts_total").increment(1);
            }
            Err(format!(
                "{ATTEMPTS} workers' reservations in a row won the race"
            ))
        })
    }
}

/// Whether a refused write lost to another writer. On a replicated stream NATS (2.11 on)
/// answers a write whose expected revision is stale with error 10164, which async-nats does not
/// classify as a wrong revision (only 10071): without this every lost race on a cluster would
/// read as the budget being unreachable.
fn lost_race(e: &(dyn std::error::Error + 'static)) -> bool {
    use async_nats::jetstream::ErrorCode;
    let mut cause = Some(e);
    while let Some(err) = cause {
        if let Some(refusal) = err.downcast_ref::<async_nats::jetstream::Error>() {
            return matches!(
                refusal.error_code(),
                ErrorCode::STREAM_WRONG_LAST_SEQUENCE
                    | ErrorCode::STREAM_WRONG_LAST_SEQUENCE_CONSTANT
            );
        }
        cause = err.source();
    }
    false
}

fn encode(t: SystemTime) -> bytes::Bytes {
    let nanos = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos();
    bytes::Bytes::from(nanos.to_string())
}

/// A value another writer left malformed counts as no timeline (the budget starts now).
fn decode(b: &[u8]) -> Option<SystemTime> {
    let nanos: u64 = std::str::from_utf8(b).ok()?.trim().parse().ok()?;
    UNIX_EPOCH.checked_add(Duration::from_nanos(nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timeline_round_trips_and_garbage_reads_as_none() {
        let t = UNIX_EPOCH + Duration::from_nanos(1_764_000_000_123_456_789);
        assert_eq!(decode(&encode(t)), Some(t));
        assert_eq!(decode(b"soon"), None);
        assert_eq!(decode(b"-5"), None);
        assert_eq!(decode(&[0xff, 0xfe]), None);
    }
}
