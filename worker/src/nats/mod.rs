//! The NATS JetStream adapter (docs/contract.md, "NATS"): connection, streams and the shared
//! durable consumer, the serve loop, the ack policy, progress acks and the outbox publisher.

pub mod ack;
pub mod outbox;
pub mod progress;
pub mod serve;

use std::time::Duration;

use async_nats::jetstream::{self, consumer, object_store, stream};

use crate::config::NatsSettings;
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

/// The durable consumer every worker instance shares.
pub fn consumer_name(subjects: &Subjects) -> String {
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
    if s.url.starts_with("tls://") {
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
        .connect(url.as_str())
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

/// Creates or reconciles the streams, the object store bucket and the shared consumer.
pub async fn setup(
    js: &jetstream::Context,
    subjects: &Subjects,
    s: &NatsSettings,
    max_ack_pending: i64,
) -> Result<consumer::PullConsumer, NatsError> {
    let p = &subjects.prefix;
    let day = Duration::from_secs(86_400);
    let streams = [
        stream::Config {
            name: subjects.stream("JOBS"),
            subjects: vec![format!("{p}.jobs.>")],
            retention: stream::RetentionPolicy::WorkQueue,
            duplicate_window: Duration::from_secs(120),
            // Bounded, and a full queue refuses new jobs rather than dropping unprocessed ones:
            // a flood of jobs is answered at publish time instead of filling the server's disk.
            discard: stream::DiscardPolicy::New,
            max_messages: JOBS_MAX_MESSAGES,
            max_bytes: JOBS_MAX_BYTES,
            max_age: 7 * day,
            storage: stream::StorageType::File,
            ..Default::default()
        },
        stream::Config {
            name: subjects.stream("RESULTS"),
            subjects: vec![format!("{p}.results.>")],
            duplicate_window: Duration::from_secs(120),
            max_age: 30 * day,
            storage: stream::StorageType::File,
            ..Default::default()
        },
        stream::Config {
            name: subjects.stream("DLQ"),
            subjects: vec![format!("{p}.dlq.>")],
            duplicate_window: Duration::from_secs(120),
            max_age: 90 * day,
            storage: stream::StorageType::File,
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
            ..Default::default()
        },
        stream::Config {
            name: subjects.stream("EVENTS"),
            subjects: vec![format!("{p}.events.>")],
            duplicate_window: Duration::from_secs(120),
            max_age: 30 * day,
            storage: stream::StorageType::File,
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
    let bucket = subjects.snapshot_bucket();
    if js.get_object_store(&bucket).await.is_err() {
        js.create_object_store(object_store::Config {
            bucket: bucket.clone(),
            description: Some("full access snapshots, named by the snapshot events".into()),
            max_age: 90 * day,
            ..Default::default()
        })
        .await
        .map_err(|e| NatsError::ObjectStore {
            bucket: bucket.clone(),
            message: e.to_string(),
        })?;
    }
    let jobs = js
        .get_stream(subjects.stream("JOBS"))
        .await
        .map_err(|e| NatsError::Stream {
            stream: subjects.stream("JOBS"),
            message: e.to_string(),
        })?;
    let name = consumer_name(subjects);
    // create_consumer is create-or-update: configuration changes between releases apply.
    jobs.create_consumer(consumer::pull::Config {
        durable_name: Some(name.clone()),
        description: Some("gitlab-worker: shared by every worker instance".into()),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: s.ack_wait,
        max_deliver: s.max_deliver,
        max_ack_pending,
        filter_subject: subjects.jobs_all(),
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
