//! One GitLab budget across workers (docs/benchmark.md, "Shared GitLab budget"): three large
//! syncs on 1 and 3 `gitlab-worker serve` processes sharing one token, under the simulator's
//! per-user limit, each worker told that limit. Measured: requests sent, requests answered 429
//! (the target is none) and the wall time against requests ÷ limit (the target is within 10%:
//! the workers together use the budget, they do not leave it idle).

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::bail;
use futures::StreamExt;
use gitlab_sim::{Mode, SimConfig, UserRateLimit};
use serde_json::{Value, json};

use crate::throughput::{Stack, job, world};

pub struct Options {
    /// GitLab's limit (requests per minute per user), told to each worker as well.
    pub per_minute: u64,
    pub postgres: String,
    /// Worker counts to run.
    pub workers: Vec<usize>,
}

/// Scopes synced at once (each a top-level group of 100 groups and 400 projects).
const SCOPES: [&str; 3] = ["big0", "big1", "big2"];

async fn run_once(
    root: &Path,
    worker: &Path,
    tmp: &Path,
    opts: &Options,
    workers: usize,
) -> anyhow::Result<Value> {
    let dir = tmp.join(format!("budget-{workers}"));
    std::fs::create_dir_all(&dir)?;
    let mut config = SimConfig::for_mode(Mode::SelfManaged);
    config.rate_limit = Some(UserRateLimit {
        limit: opts.per_minute,
        period_secs: 60,
    });
    let name = format!("bench_budget_{}_{workers}", std::process::id());
    let stack = Stack::start(
        root,
        worker,
        &dir,
        (world(0), config),
        &opts.postgres,
        &name,
        workers,
        &[
            ("GITLAB_RATE_LIMIT_PER_MINUTE", opts.per_minute.to_string()),
            ("WORKER_CONCURRENCY_SYNC", "2".into()),
            // Info, for the "snapshot stored" lines that say which worker ran a sync.
            ("RUST_LOG", "info".into()),
        ],
    )
    .await?;
    let client = async_nats::connect(&stack.nats_url).await?;
    let js = async_nats::jetstream::new(client.clone());
    let mut results = client.subscribe("gitlab.results.>").await?;
    client.flush().await?;
    stack.sim.sim.reset_log();
    let start = Instant::now();
    for scope in SCOPES {
        let (_, subject, body) = job(format!("sync-{scope}"), "sync", json!({"scope": scope}));
        js.publish(subject, body.into()).await?.await?;
    }
    let mut statuses: HashMap<String, String> = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1800);
    while statuses.len() < SCOPES.len() {
        match tokio::time::timeout_at(deadline, results.next()).await {
            Ok(Some(m)) => {
                let v: Value = serde_json::from_slice(&m.payload).unwrap_or_default();
                if let Some(id) = v["job_id"].as_str() {
                    statuses
                        .entry(id.to_string())
                        .or_insert_with(|| v["status"].as_str().unwrap_or("").to_string());
                }
            }
            _ => bail!("the syncs did not all answer within 30 minutes: {statuses:?}"),
        }
    }
    let wall = start.elapsed().as_secs_f64();
    let log = stack.sim.sim.requests();
    let requests = log.len() as f64;
    let throttled = log.iter().filter(|r| r.status == 429).count();
    // The shortest time the limit allows for that many requests: the workers pace them
    // evenly (no burst at the start), so the wall time can only come close to it from above.
    let rate = opts.per_minute as f64 / 60.0;
    let ideal = requests / rate;
    let ran_on = stack
        .workers
        .iter()
        .filter(|(_, log)| {
            std::fs::read_to_string(log).is_ok_and(|l| l.contains("snapshot stored"))
        })
        .count();
    stack.stop().await?;
    let out = json!({
        "workers": workers,
        "limit_per_minute": opts.per_minute,
        "syncs": statuses,
        "requests": requests,
        "answered_429": throttled,
        "wall_s": wall,
        "requests_over_limit_s": ideal,
        "wall_over_ideal": wall / ideal,
        "workers_that_stored_a_snapshot": ran_on,
    });
    eprintln!("   {out}");
    Ok(out)
}

pub async fn measure(
    root: &Path,
    worker: &Path,
    tmp: &Path,
    opts: &Options,
) -> anyhow::Result<Value> {
    let mut runs = Vec::new();
    for &workers in &opts.workers {
        eprintln!(
            "== shared budget: {} syncs on {workers} worker(s) at {}/min",
            SCOPES.len(),
            opts.per_minute
        );
        runs.push(run_once(root, worker, tmp, opts, workers).await?);
    }
    Ok(json!({
        "limit_per_minute": opts.per_minute,
        "scopes": SCOPES,
        "database": "postgresql",
        "runs": runs,
    }))
}
