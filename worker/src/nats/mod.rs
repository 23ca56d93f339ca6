//! The NATS JetStream adapter (docs/contract.md, "NATS"): connection, streams and the shared
//! durable consumer, the serve loop, the ack policy, progress acks and the outbox publisher.

pub mod ack;
pub mod budget;
pub mod outbox;
pub mod progress;
pub mod serve;

use std::time::Duration;

use async_nats::jetstream::{self, consumer, object_store, stream};

use crate::config::NatsSettings;
use crate::jobs::JobKind;
use crate::subjects::Subjects;

#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    #[error(
        "cannot connect to NATS at {url}: {message}; check NATS_URL and the credentials (NATS_CREDS_FILE, NATS_USER/NATS_PASSWORD or NATS_TOKEN)"
    )]
    Connect { url: String, message: String },
    #[error("cannot read NATS_CREDS_FILE {path}: {message}")]
    Creds { path: String, message: String },
    #[error(
        "cannot create or update the JetStream stream {stream}: {message}; JetStream must be enabled on the server (nats-server -js)"
    )]
    Stream { stream: String, message: String },
    #[error("cannot create or update the consumer {consumer}: {message}")]
    Consumer { consumer: String, message: String },
    #[error("cannot create the object store bucket {bucket}: {message}")]
    ObjectStore { bucket: String, message: String },
}

/// The two kinds of work, each pulled through a durable consumer every worker instance shares,
/// with its own concurrency: a grant never waits behind long syncs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Work {
    /// grant, revoke, invite, deprovision, rotate_token.
    Provision,
    /// sync, reconcile: long crawls.
    Sync,
}

impl Work {
    pub const ALL: [Work; 2] = [Work::Provision, Work::Sync];

    pub fn of(kind: JobKind) -> Self {
        match kind {
            JobKind::Sync | JobKind::Reconcile => Work::Sync,
            JobKind::Grant
            | JobKind::Revoke
            | JobKind::Invite
            | JobKind::Deprovision
            | JobKind::RotateToken => Work::Provision,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Work::Provision => "provision",
            Work::Sync => "sync",
        }
    }

    /// The job subjects this work's consumer takes (`<p>.jobs.*.<kind>`).
    pub fn subjects(self, subjects: &Subjects) -> Vec<String> {
        JobKind::ALL
            .into_iter()
            .filter(|k| Work::of(*k) == self)
            .map(|k| subjects.job("*", k.as_str()))
            .collect()
    }
}

/// The durable consumer of one kind of work, shared by every worker instance.
pub fn consumer_name(subjects: &Subjects, work: Work) -> String {
    format!("{}-worker-{}", subjects.prefix, work.as_str())
}

/// The single consumer of releases before the work split; its filter (every job) overlaps both
/// new ones, which a work-queue stream refuses, so it is removed at start.
fn legacy_consumer_name(subjects: &Subjects) -> String {
    format!("{}-worker", subjects.prefix)
}

/// Connects with the configured credentials and TLS. Reconnects forever after the first
/// connection; the first connection is retried for up to `initial_timeout`.
pub async fn connect(
    s: &NatsSettings,
    initial_timeout: Duration,
) -> Result<async_nats::Client, NatsError> {
    let mut opts = match &s.creds_file {
        Some(p) => async_nats::ConnectOptions::with_credentials_file(p)
            .await
            .map_err(|e| NatsError::Creds {
                path: p.display().to_string(),
                message: e.to_string(),
            })?,
        None => async_nats::ConnectOptions::new(),
    };
    if let (Some(u), Some(p)) = (&s.user, &s.password) {
        opts = opts.user_and_password(u.clone(), p.expose().to_string());
    }
    if let Some(t) = &s.token {
        opts = opts.token(t.expose().to_string());
    }
    if let Some(ca) = &s.tls_ca_file {
        opts = opts.add_root_certificates(ca.clone());
    }
    if let (Some(c), Some(k)) = (&s.tls_cert_file, &s.tls_key_file) {
        opts = opts.add_client_certificate(c.clone(), k.clone());
    }
    // NATS_URL may name every server of a cluster, comma-separated.
    let servers: Vec<&str> = s
        .url
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect();
    if servers.iter().any(|u| u.starts_with("tls://")) {
        opts = opts.require_tls(true);
    }
    let opts = opts
        .name("gitlab-worker")
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(5))
        .request_timeout(Some(Duration::from_secs(10)))
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Connected => tracing::info!("NATS connected"),
                async_nats::Event::Disconnected => {
                    tracing::warn!("NATS disconnected; reconnecting")
                }
                other => tracing::info!("NATS: {other}"),
            }
        });
    let url = s.url.clone();
    let client = opts
        .connect(servers)
        .await
        .map_err(|e| NatsError::Connect {
            url: crate::redact::redact_url(&url),
            message: e.to_string(),
        })?;
    // retry_on_initial_connect returns at once; wait for the first connection, bounded.
    let deadline = tokio::time::Instant::now() + initial_timeout;
    while client.connection_state() != async_nats::connection::State::Connected {
        if tokio::time::Instant::now() >= deadline {
            return Err(NatsError::Connect {
                url: crate::redact::redact_url(&url),
                message: format!(
                    "no connection within {:.1}s (is the server running?)",
                    initial_timeout.as_secs_f64()
                ),
            });
        }
        // A flush waits for the connection; bounded, so the deadline holds.
        if let Ok(Ok(())) = tokio::time::timeout(Duration::from_secs(1), client.flush()).await {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(client)
}

/// The most jobs the jobs stream holds waiting.
pub const JOBS_MAX_MESSAGES: i64 = 1_000_000;
/// The most bytes the jobs stream holds waiting (1 GiB).
pub const JOBS_MAX_BYTES: i64 = 1 << 30;

/// The most bytes of webhook deliveries kept (1 GiB): past it the receiver answers 503 and
/// GitLab retries.
pub const HOOKS_MAX_BYTES: i64 = 1 << 30;

/// The consumers `setup` makes: one per kind of work.
pub struct Consumers {
    pub provision: consumer::PullConsumer,
    pub sync: consumer::PullConsumer,
}

/// Creates or reconciles the streams, the object store bucket and the shared consumers (jobs
/// each may hold unacknowledged: `max_ack_pending` of the provisioning and of the sync pool).
pub async fn setup(
    js: &jetstream::Context,
    subjects: &Subjects,
    s: &NatsSettings,
    max_ack_pending: (i64, i64),
) -> Result<Consumers, NatsError> {
    let p = &subjects.prefix;
    let day = Duration::from_secs(86_400);
    let replicas = s.stream_replicas;
    // Only the kinds the worker knows: a job on any other subject is refused when published
    // (no stream takes it) instead of waiting in the queue for a consumer that never comes.
    let job_subjects = Work::ALL
        .into_iter()
        .flat_map(|w| w.subjects(subjects))
        .collect();
    // Before the jobs stream's subjects change: its filter covers subjects the stream no
    // longer takes.
    if let Ok(jobs) = js.get_stream(subjects.stream("JOBS")).await {
        remove_legacy_consumer(&jobs, subjects).await?;
    }
    let streams = [
        stream::Config {
            name: subjects.stream("JOBS"),
            subjects: job_subjects,
            retention: stream::RetentionPolicy::WorkQueue,
            duplicate_window: Duration::from_secs(120),
            // Bounded, and a full queue refuses new jobs rather than dropping unprocessed ones:
            // a flood of jobs is answered at publish time instead of filling the server's disk.
            discard: stream::DiscardPolicy::New,
            max_messages: JOBS_MAX_MESSAGES,
            max_bytes: JOBS_MAX_BYTES,
            max_age: 7 * day,
            storage: stream::StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        },
        stream::Config {
            name: subjects.stream("RESULTS"),
            subjects: vec![format!("{p}.results.>")],
            duplicate_window: Duration::from_secs(120),
            max_age: 30 * day,
            storage: stream::StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        },
        stream::Config {
            name: subjects.stream("DLQ"),
            subjects: vec![format!("{p}.dlq.>")],
            duplicate_window: Duration::from_secs(120),
            max_age: 90 * day,
            storage: stream::StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        },
        // GitLab's webhook deliveries, kept until the event processor has read them. The
        // duplicate window covers GitLab's retries of one delivery (same Idempotency-Key).
        stream::Config {
            name: subjects.stream("HOOKS"),
            subjects: vec![format!("{p}.hooks.>")],
            duplicate_window: Duration::from_secs(3_600),
            max_age: 7 * day,
            max_bytes: HOOKS_MAX_BYTES,
            discard: stream::DiscardPolicy::New,
            storage: stream::StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        },
        stream::Config {
            name: subjects.stream("EVENTS"),
            subjects: vec![format!("{p}.events.>")],
            duplicate_window: Duration::from_secs(120),
            max_age: 30 * day,
            storage: stream::StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        },
    ];
    for cfg in streams {
        let name = cfg.name.clone();
        let err = |e: &dyn std::fmt::Display| NatsError::Stream {
            stream: name.clone(),
            message: e.to_string(),
        };
        match js.get_stream(&cfg.name).await {
            Ok(_) => {
                js.update_stream(&cfg).await.map_err(|e| err(&e))?;
            }
            Err(_) => {
                js.create_stream(cfg.clone()).await.map_err(|e| err(&e))?;
            }
        }
    }
    snapshot_bucket(js, subjects, replicas, 90 * day).await?;
    let jobs = js
        .get_stream(subjects.stream("JOBS"))
        .await
        .map_err(|e| NatsError::Stream {
            stream: subjects.stream("JOBS"),
            message: e.to_string(),
        })?;
    Ok(Consumers {
        provision: work_consumer(&jobs, subjects, s, Work::Provision, max_ack_pending.0).await?,
        sync: work_consumer(&jobs, subjects, s, Work::Sync, max_ack_pending.1).await?,
    })
}

async fn remove_legacy_consumer(
    jobs: &stream::Stream,
    subjects: &Subjects,
) -> Result<(), NatsError> {
    let legacy = legacy_consumer_name(subjects);
    if jobs.consumer_info(&legacy).await.is_ok() {
        tracing::info!(consumer = %legacy, "removing the single job consumer of earlier releases: provisioning and syncs now have one each");
        jobs.delete_consumer(&legacy)
            .await
            .map_err(|e| NatsError::Consumer {
                consumer: legacy.clone(),
                message: e.to_string(),
            })?;
    }
    Ok(())
}

/// Creates the snapshot bucket, or reconciles the replicas of the stream behind it.
async fn snapshot_bucket(
    js: &jetstream::Context,
    subjects: &Subjects,
    replicas: usize,
    max_age: Duration,
) -> Result<(), NatsError> {
    let bucket = subjects.snapshot_bucket();
    let err = |e: &dyn std::fmt::Display| NatsError::ObjectStore {
        bucket: bucket.clone(),
        message: e.to_string(),
    };
    if js.get_object_store(&bucket).await.is_err() {
        js.create_object_store(object_store::Config {
            bucket: bucket.clone(),
            description: Some("full access snapshots, named by the snapshot events".into()),
            max_age,
            num_replicas: replicas,
            ..Default::default()
        })
        .await
        .map_err(|e| err(&e))?;
        return Ok(());
    }
    // An object store is a stream named OBJ_<bucket>: its replicas are reconciled like the
    // other streams'.
    let mut backing = js
        .get_stream(format!("OBJ_{bucket}"))
        .await
        .map_err(|e| err(&e))?;
    let mut config = backing.info().await.map_err(|e| err(&e))?.config.clone();
    if config.num_replicas != replicas {
        config.num_replicas = replicas;
        js.update_stream(&config).await.map_err(|e| err(&e))?;
    }
    Ok(())
}

/// Creates or updates the durable consumer of one kind of work (create_consumer is
/// create-or-update: configuration changes between releases apply).
async fn work_consumer(
    jobs: &stream::Stream,
    subjects: &Subjects,
    s: &NatsSettings,
    work: Work,
    max_ack_pending: i64,
) -> Result<consumer::PullConsumer, NatsError> {
    let name = consumer_name(subjects, work);
    jobs.create_consumer(consumer::pull::Config {
        durable_name: Some(name.clone()),
        description: Some(format!(
            "gitlab-worker: {} jobs, shared by every worker instance",
            work.as_str()
        )),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: s.ack_wait,
        // Deferrals (a job handed back to wait for a slot of a per-group limit) are
        // deliveries but not attempts: the worker counts attempts, NATS the deliveries.
        max_deliver: if s.max_deliver > 0 {
            s.max_deliver + i64::from(crate::jobs::DEFERRALS_MAX)
        } else {
            s.max_deliver
        },
        max_ack_pending,
        filter_subjects: work.subjects(subjects),
        ..Default::default()
    })
    .await
    .map_err(|e| NatsError::Consumer {
        consumer: name.clone(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_failed_connection_does_not_print_the_urls_credentials() {
        let settings = NatsSettings::for_url("nats://worker:natssecret0001@127.0.0.1:1");
        let e = connect(&settings, Duration::from_millis(300))
            .await
            .expect_err("nothing listens on port 1");
        let text = e.to_string();
        assert!(!text.contains("natssecret0001"), "{text}");
        assert!(text.contains("127.0.0.1:1"), "{text}");
    }
}
