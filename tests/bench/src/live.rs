//! Live access: after the initial sync (a job through `gitlab-worker serve`), a stream of group
//! membership changes through the simulator's REST API at a steady rate; the simulator sends
//! GitLab's group webhook to the worker's receiver. Measured: the time from each change to the
//! access event that announces it (p50, p95, p99, max), GitLab requests per change (the
//! worker's re-reads), the worker's CPU. Then with 20% of deliveries dropped and 5% sent twice:
//! deliveries announced twice (none expected: a delivery GitLab sends twice is stored once, and
//! one read again changes nothing), the drift one reconcile finds, and what a second reconcile
//! (a fresh full sync compared with the live state record by record) finds after it (nothing
//! expected).

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use gitlab_sim::{Resource, Running};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::worker_job::{Killed, nats_server};

const SECRET: &str = "bench-live-hook-secret";

pub struct Options {
    pub rate_per_s: u64,
    pub seconds: u64,
    pub fault_changes: u64,
}

/// CPU seconds (user + system) the process used so far.
fn cpu_s(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// One REST call with the admin token: the status.
async fn rest(addr: &str, method: &str, path: &str, token: &str, body: &Value) -> u16 {
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return 0;
    };
    let body = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    let req = format!(
        "{method} /api/v4{path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nPRIVATE-TOKEN: {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    if s.write_all(req.as_bytes()).await.is_err() {
        return 0;
    }
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp).await;
    String::from_utf8_lossy(&resp)
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// The changes still waiting for their event, and what arrived.
#[derive(Default)]
struct Seen {
    pending: HashMap<(u64, u64), Instant>,
    latencies: Vec<f64>,
    /// (group, user) lines announced.
    announced: HashMap<(u64, u64), u32>,
}

/// Candidate (group, user) pairs in the scope, in a fixed pseudo-random order, each used once.
fn pairs(sim: &Running, n: usize) -> Vec<(u64, u64, bool)> {
    let w = sim.sim.world.read().unwrap();
    let top = w.index.group_by_path["org"];
    let groups: Vec<u64> = w
        .groups
        .keys()
        .copied()
        .filter(|g| w.ancestors_and_self(*g).contains(&top) && *g != top)
        .collect();
    let users: Vec<u64> = w
        .users
        .values()
        .filter(|u| !u.is_admin && !u.is_bot() && u.state == "active")
        .map(|u| u.id)
        .collect();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut used = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let g = groups[(next() % groups.len() as u64) as usize];
        let u = users[(next() % users.len() as u64) as usize];
        if used.insert((g, u)) {
            let member = w
                .members
                .get(&Resource::Group(g))
                .is_some_and(|m| m.contains_key(&u));
            out.push((g, u, member));
        }
    }
    out
}

/// Sends `changes` at `rate` per second; the (group, user) of each accepted one is pending.
async fn stream(
    addr: &str,
    token: &str,
    changes: &[(u64, u64, bool)],
    rate: u64,
    seen: &Arc<Mutex<Seen>>,
) -> (u64, u64) {
    let started = Instant::now();
    let (mut sent, mut refused) = (0u64, 0u64);
    let mut tasks = Vec::new();
    for (i, (g, u, member)) in changes.iter().copied().enumerate() {
        let due = started + Duration::from_secs_f64(i as f64 / rate as f64);
        tokio::time::sleep_until(due.into()).await;
        let (addr, token, seen) = (addr.to_string(), token.to_string(), seen.clone());
        tasks.push(tokio::spawn(async move {
            let at = Instant::now();
            // Pending before the call: the event can come back before the answer does.
            seen.lock().unwrap().pending.insert((g, u), at);
            let status = if member {
                rest(
                    &addr,
                    "DELETE",
                    &format!("/groups/{g}/members/{u}"),
                    &token,
                    &Value::Null,
                )
                .await
            } else {
                rest(
                    &addr,
                    "POST",
                    &format!("/groups/{g}/members"),
                    &token,
                    &json!({"user_id": u, "access_level": 40}),
                )
                .await
            };
            let ok = matches!(status, 201 | 204);
            if !ok {
                seen.lock().unwrap().pending.remove(&(g, u));
            }
            ok
        }));
    }
    for t in tasks {
        if t.await.unwrap_or(false) {
            sent += 1;
        } else {
            refused += 1;
        }
    }
    (sent, refused)
}

fn reads(sim: &Running) -> u64 {
    sim.sim
        .counts()
        .iter()
        .filter(|(route, _)| route.starts_with("GET "))
        .map(|(_, c)| c.requests)
        .sum()
}

async fn result_of(results: &mut consumer::pull::Stream, job_id: &str) -> anyhow::Result<Value> {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(3_600), results.next())
            .await
            .context("no result within an hour")?
            .context("the results stream ended")??;
        let v: Value = serde_json::from_slice(&m.payload)?;
        if v["job_id"] == job_id {
            if v["status"] != "succeeded" {
                bail!("job {job_id} answered {v}");
            }
            return Ok(v);
        }
    }
}

async fn publish_job(js: &jetstream::Context, job_id: &str, kind: &str) -> anyhow::Result<()> {
    let job = json!({"schema": "gitlab-connector.job.v1", "job_id": job_id, "connector": "default", "kind": kind, "params": {}});
    js.publish(
        format!("gitlab.jobs.default.{kind}"),
        job.to_string().into(),
    )
    .await?
    .await?;
    Ok(())
}

/// The access_change lines of the access events of `cause` that follow, until the last chunk.
async fn diff_lines(events: &Arc<Mutex<Vec<Value>>>, cause: &str) -> anyhow::Result<Vec<Value>> {
    let deadline = Instant::now() + Duration::from_secs(1_800);
    loop {
        {
            let evs = events.lock().unwrap();
            let of: Vec<&Value> = evs.iter().filter(|e| e["cause"] == cause).collect();
            if let Some(last) = of.last()
                && last["chunk"] == last["chunks"]
            {
                return Ok(of
                    .iter()
                    .flat_map(|e| e["lines"].as_array().cloned().unwrap_or_default())
                    .filter(|l| l["type"] == "access_change")
                    .collect());
            }
        }
        if Instant::now() > deadline {
            bail!("no complete {cause} access events");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn measure(
    root: &Path,
    worker: &Path,
    tmp: &Path,
    sim: &Running,
    token: &str,
    opts: &Options,
) -> anyhow::Result<Value> {
    let (_nats, nats_url) = nats_server(root, tmp)?;
    let stderr = tmp.join("worker.log");
    let secret = tmp.join("webhook-secret");
    std::fs::write(&secret, SECRET)?;
    let child = Command::new(worker)
        .arg("serve")
        .env_clear()
        .env("GITLAB_URL", &sim.url)
        .env("GITLAB_TOKEN", token)
        .env("GITLAB_SCOPE", "org")
        .env(
            "DATABASE_URL",
            format!("sqlite://{}?mode=rwc", tmp.join("worker.db").display()),
        )
        .env("NATS_URL", &nats_url)
        .env("HTTP_LISTEN", "127.0.0.1:0")
        .env("HOOKS_LISTEN", "127.0.0.1:0")
        .env("GITLAB_WEBHOOK_SECRET_FILE", &secret)
        .env("RECONCILE_INTERVAL_SECONDS", "0")
        .env("HOOK_CHECK_INTERVAL_SECONDS", "86400")
        .env("SPOOL_DIR", tmp.join("spool"))
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr)?)
        .spawn()
        .context("starting gitlab-worker serve")?;
    let pid = child.id();
    let _worker = Killed(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    let (hooks_addr, http_addr) = loop {
        let log = std::fs::read_to_string(&stderr)?;
        let ready = log
            .lines()
            .find_map(|l| l.strip_prefix("gitlab-worker: ready; http on "));
        if let Some(http) = ready
            && let Some(a) = log
                .lines()
                .find_map(|l| l.strip_prefix("gitlab-worker: hooks on "))
        {
            break (a.trim().to_string(), http.trim().to_string());
        }
        if Instant::now() > deadline {
            bail!("the worker did not start: {log}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let js = jetstream::new(async_nats::connect(&nats_url).await?);
    let results_stream = js.get_stream("GITLAB_RESULTS").await?;
    let mut results = results_stream
        .create_consumer(consumer::pull::Config {
            filter_subject: "gitlab.results.>".into(),
            ack_policy: consumer::AckPolicy::None,
            ..Default::default()
        })
        .await?
        .messages()
        .await?;

    eprintln!("   initial sync");
    let t0 = Instant::now();
    publish_job(&js, "live-initial", "sync").await?;
    result_of(&mut results, "live-initial").await?;
    let initial_sync_s = t0.elapsed().as_secs_f64();

    // GitLab's group webhook on the top-level group, registered through its API.
    let addr = sim.url.trim_start_matches("http://").to_string();
    let top = sim.sim.world.read().unwrap().index.group_by_path["org"];
    let status = rest(&addr, "POST", &format!("/groups/{top}/hooks"), token, &json!({"url": format!("http://{hooks_addr}/hooks/gitlab/default"), "token": SECRET, "member_events": true, "subgroup_events": true, "project_events": true, "push_events": false})).await;
    if status != 201 {
        bail!("registering the group webhook answered {status}");
    }

    // Every access event, from now on; live ones matched to the pending changes.
    let seen = Arc::new(Mutex::new(Seen::default()));
    let all_events: Arc<Mutex<Vec<Value>>> = Arc::default();
    let events = js.get_stream("GITLAB_EVENTS").await?;
    let mut msgs = events
        .create_consumer(consumer::pull::Config {
            filter_subject: "gitlab.events.default.access".into(),
            deliver_policy: consumer::DeliverPolicy::New,
            ack_policy: consumer::AckPolicy::None,
            ..Default::default()
        })
        .await?
        .messages()
        .await?;
    {
        let (seen, all_events) = (seen.clone(), all_events.clone());
        tokio::spawn(async move {
            while let Some(Ok(m)) = msgs.next().await {
                let at = Instant::now();
                let Ok(v) = serde_json::from_slice::<Value>(&m.payload) else {
                    continue;
                };
                if v["cause"] == "gitlab_event" {
                    let mut s = seen.lock().unwrap();
                    for l in v["lines"].as_array().into_iter().flatten() {
                        if l["resource"]["type"] != "group" {
                            continue;
                        }
                        let key = (
                            l["resource"]["id"].as_u64().unwrap_or(0),
                            l["user_id"].as_u64().unwrap_or(0),
                        );
                        *s.announced.entry(key).or_default() += 1;
                        if let Some(sent) = s.pending.remove(&key) {
                            s.latencies.push(at.duration_since(sent).as_secs_f64());
                        }
                    }
                    drop(s);
                    let mut slim = v.clone();
                    slim["lines"] = json!([]);
                    slim["line_count"] = json!(v["lines"].as_array().map_or(0, Vec::len));
                    all_events.lock().unwrap().push(slim);
                } else {
                    all_events.lock().unwrap().push(v);
                }
            }
        });
    }

    let n = (opts.rate_per_s * opts.seconds) as usize;
    let all_pairs = pairs(sim, n + opts.fault_changes as usize + 1);
    let (warm, rest_pairs) = all_pairs.split_at(1);
    let (main, faulty) = rest_pairs.split_at(n);

    eprintln!("   first change (the worker loads the live state)");
    let t0 = Instant::now();
    stream(&addr, token, warm, 1, &seen).await;
    wait_for(&seen, Duration::from_secs(600)).await;
    let first_event_s = t0.elapsed().as_secs_f64();
    seen.lock().unwrap().latencies.clear();

    eprintln!(
        "   {n} membership changes at {} per second",
        opts.rate_per_s
    );
    let (reads0, cpu0, t0) = (reads(sim), cpu_s(pid).unwrap_or(0.0), Instant::now());
    let (sent, refused) = stream(&addr, token, main, opts.rate_per_s, &seen).await;
    let stream_s = t0.elapsed().as_secs_f64();
    let missing = wait_for(&seen, Duration::from_secs(60)).await;
    let (reads1, cpu1, wall) = (
        reads(sim),
        cpu_s(pid).unwrap_or(0.0),
        t0.elapsed().as_secs_f64(),
    );
    let mut lat = std::mem::take(&mut seen.lock().unwrap().latencies);
    lat.sort_by(f64::total_cmp);
    let requests_per_change = (reads1 - reads0) as f64 / sent.max(1) as f64;
    let steady = json!({
        "changes": sent,
        "refused_by_gitlab": refused,
        "rate_per_s": opts.rate_per_s,
        "stream_s": stream_s,
        "announced": lat.len(),
        "not_announced": missing,
        "latency_s": {"p50": percentile(&lat, 0.5), "p95": percentile(&lat, 0.95), "p99": percentile(&lat, 0.99), "max": lat.last().copied().unwrap_or(f64::NAN)},
        "gitlab_requests_per_change": requests_per_change,
        "worker_cpu_s": cpu1 - cpu0,
        "worker_cpu_cores": (cpu1 - cpu0) / wall,
    });
    eprintln!("   {steady}");

    eprintln!(
        "   {} changes with 20% of deliveries dropped and 5% sent twice",
        faulty.len()
    );
    {
        let mut cfg = sim.sim.config.lock().unwrap();
        cfg.hook_faults.drop = 0.2;
        cfg.hook_faults.duplicate = 0.05;
    }
    seen.lock().unwrap().announced.clear();
    let attempts0 = sim.sim.hook_attempts().len();
    let (sent_f, _) = stream(&addr, token, faulty, opts.rate_per_s, &seen).await;
    let not_told = wait_for(&seen, Duration::from_secs(10)).await;
    *sim.sim.config.lock().unwrap() = {
        let mut c = sim.sim.config.lock().unwrap().clone();
        c.hook_faults = Default::default();
        c
    };
    let attempts = &sim.sim.hook_attempts()[attempts0..];
    let dropped = attempts.iter().filter(|a| a.dropped).count();
    let deliveries = attempts.len();
    let sent_twice = {
        let mut keys: HashMap<&str, usize> = HashMap::new();
        for a in attempts.iter().filter(|a| !a.dropped) {
            *keys.entry(a.idempotency_key.as_str()).or_default() += 1;
        }
        keys.values().filter(|n| **n > 1).count()
    };
    // A delivery named by two batches' events would be a duplicate announced twice.
    let announced_twice = {
        let mut ids: HashMap<String, usize> = HashMap::new();
        // Every chunk of a batch's event names its sources: the first stands for the batch.
        for e in all_events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e["cause"] == "gitlab_event" && e["chunk"] == 1)
        {
            for id in e["source_events"].as_array().into_iter().flatten() {
                *ids.entry(id.as_str().unwrap_or("").to_string())
                    .or_default() += 1;
            }
        }
        ids.values().filter(|n| **n > 1).count()
    };
    let receiver_duplicates = metric_sum(
        &http_addr,
        "gitlab_worker_hooks_received_total",
        "outcome=\"duplicate\"",
    )
    .await;

    eprintln!("   reconcile");
    let t0 = Instant::now();
    publish_job(&js, "live-reconcile", "reconcile").await?;
    result_of(&mut results, "live-reconcile").await?;
    let drift = diff_lines(&all_events, "reconcile").await?;
    let reconcile_s = t0.elapsed().as_secs_f64();
    let repaired = drift
        .iter()
        .filter(|l| l["resource"]["type"] == "group")
        .filter(|l| {
            let key = (
                l["resource"]["id"].as_u64().unwrap_or(0),
                l["user_id"].as_u64().unwrap_or(0),
            );
            seen.lock().unwrap().pending.contains_key(&key)
        })
        .count();

    // A second reconcile is a fresh full sync compared with the live state record by record:
    // its drift counts every record (users, groups, memberships, shares, …) that differs.
    eprintln!("   a second reconcile: a fresh full sync against the live state");
    let drift_before = metric_sum(&http_addr, "gitlab_worker_drift_total", "").await;
    all_events
        .lock()
        .unwrap()
        .retain(|e| e["cause"] != "reconcile");
    publish_job(&js, "live-after", "reconcile").await?;
    result_of(&mut results, "live-after").await?;
    let after = diff_lines(&all_events, "reconcile").await?;
    let record_differences =
        metric_sum(&http_addr, "gitlab_worker_drift_total", "").await - drift_before;
    let faults = json!({
        "changes": sent_f,
        "deliveries": deliveries,
        "dropped_deliveries": dropped,
        "changes_not_told": not_told,
        "deliveries_sent_twice": sent_twice,
        "receiver_answered_duplicate": receiver_duplicates,
        "deliveries_announced_twice": announced_twice,
        "reconcile_drift_lines": drift.len(),
        "reconcile_repaired_untold_changes": repaired,
        "reconcile_s": reconcile_s,
        "access_differences_after_reconcile": after.len(),
        "record_differences_after_reconcile": record_differences,
    });
    eprintln!("   {faults}");
    Ok(json!({
        "database": "sqlite",
        "initial_sync_s": initial_sync_s,
        "first_event_s": first_event_s,
        "steady": steady,
        "faults": faults,
    }))
}

/// The sum of a counter's series whose labels contain `filter`, from the worker's /metrics.
async fn metric_sum(addr: &str, name: &str, filter: &str) -> f64 {
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return f64::NAN;
    };
    let req = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return f64::NAN;
    }
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp).await;
    String::from_utf8_lossy(&resp)
        .lines()
        .filter(|l| l.starts_with(name) && l.contains(filter))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits until every pending change is announced, or `limit`; how many are still pending.
async fn wait_for(seen: &Arc<Mutex<Seen>>, limit: Duration) -> usize {
    let deadline = Instant::now() + limit;
    loop {
        let left = seen.lock().unwrap().pending.len();
        if left == 0 || Instant::now() > deadline {
            return left;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
