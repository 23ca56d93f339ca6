//! Provisioning throughput and latency (docs/benchmark.md, "Provisioning throughput"): grant
//! and revoke jobs published at a steady rate to 1, 2 and 3 `gitlab-worker serve` processes
//! sharing one PostgreSQL database and one NATS server, against the simulator. Measured: jobs
//! answered per second and each job's time from publish to its result; then the same with four
//! large syncs running at once, to see whether grants wait behind them.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use gitlab_sim::{Mode, Resource, SimConfig, UserKind, World};
use serde_json::{Value, json};

use crate::machine::CpuSnapshot;
use crate::queries::{fresh_database, psql};
use crate::worker_job::{Killed, nats_server};

const TOKEN: &str = "sim-throughput-root-token-0001";

pub struct Options {
    pub jobs: usize,
    pub rate: u64,
    pub postgres: String,
    pub provision_concurrency: usize,
    /// Worker counts to run (1, 2, 3 by default).
    pub workers: Vec<usize>,
    /// Also run each with four large syncs.
    pub with_syncs: bool,
    /// Rounds of the whole set of runs. The p99 of one 20-second run moves 2–3× between runs
    /// of the same build on this machine, so the grant-p99 ratio is taken between medians.
    pub rounds: usize,
}

/// Groups the grants and revokes are spread over: GitLab allows 60 member deletions per minute
/// per group, so 250 revokes a second need at least 250 groups.
const TEAMS: usize = 500;

/// `org/t000..t499` with `half` members to revoke (r…, spread over the teams) and `half` users
/// to grant (g…), plus four scopes big0..big3 of 100 groups and 400 projects each for the syncs.
pub(crate) fn world(half: usize) -> World {
    let mut w = World::new(Mode::SelfManaged);
    let today = w.today();
    let root = w.add_user("root", UserKind::Human);
    w.users.get_mut(&root).unwrap().is_admin = true;
    let org = w.add_group("org", None);
    let teams: Vec<u64> = (0..TEAMS)
        .map(|t| w.add_group(&format!("t{t:03}"), Some(org)))
        .collect();
    for i in 0..half {
        w.add_user(&format!("g{i:05}"), UserKind::Human);
        let r = w.add_user(&format!("r{i:05}"), UserKind::Human);
        w.set_member(Resource::Group(teams[i % TEAMS]), r, 30, None);
    }
    let people: Vec<u64> = (0..2_000)
        .map(|i| w.add_user(&format!("p{i:04}"), UserKind::Human))
        .collect();
    for s in 0..4 {
        let top = w.add_group(&format!("big{s}"), None);
        for g in 0..100 {
            let sub = w.add_group(&format!("g{g}"), Some(top));
            for m in 0..10 {
                w.set_member(
                    Resource::Group(sub),
                    people[(g * 10 + m + s * 7) % 2_000],
                    30,
                    None,
                );
            }
            for p in 0..4 {
                let project = w.add_project(&format!("p{p}"), sub);
                for m in 0..5 {
                    let who = people[(g * 20 + p * 5 + m + s * 13) % 2_000];
                    w.set_member(Resource::Project(project), who, 20, None);
                }
            }
        }
    }
    w.add_token(
        root,
        "connector",
        TOKEN,
        &["api"],
        Some(today + chrono::Duration::days(90)),
    );
    w.reindex();
    w
}

pub(crate) fn job(id: String, kind: &str, params: Value) -> (String, String, String) {
    let body = json!({
        "schema": "gitlab-connector.job.v1",
        "job_id": id,
        "connector": "default",
        "kind": kind,
        "params": params,
    });
    (id, format!("gitlab.jobs.default.{kind}"), body.to_string())
}

/// Grants and revokes, alternating, each on user `u`'s team.
fn provisioning_jobs(n: usize) -> Vec<(String, String, String)> {
    (0..n)
        .map(|i| {
            let u = i / 2;
            let team = json!({"group": format!("org/t{:03}", u % TEAMS)});
            if i % 2 == 0 {
                job(
                    format!("grant-{u:05}"),
                    "grant",
                    json!({"user": {"username": format!("g{u:05}")}, "target": team, "access_level": 30}),
                )
            } else {
                job(
                    format!("revoke-{u:05}"),
                    "revoke",
                    json!({"user": {"username": format!("r{u:05}")}, "target": team}),
                )
            }
        })
        .collect()
}

/// Transactions committed in database `name` so far (pg_stat_database; the statistics are
/// flushed at each transaction's end, so a few may still be on their way).
fn commits(admin: &str, name: &str) -> anyhow::Result<i64> {
    let out = Command::new("psql")
        .args([
            admin,
            "-Atc",
            &format!("SELECT xact_commit FROM pg_stat_database WHERE datname = '{name}'"),
        ])
        .output()
        .context("running psql")?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .context("reading pg_stat_database.xact_commit")
}

/// user + system CPU seconds of a process so far (Linux /proc).
pub(crate) fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Starts `n` `gitlab-worker serve` processes on the simulator's token, scope `instance`,
/// with `env` on top (GITLAB_URL, DATABASE_URL, NATS_URL at least), and waits until each is
/// ready. Each logs (JSON, warnings) to `dir/worker-N.log`.
pub(crate) async fn start_workers(
    worker: &Path,
    dir: &Path,
    n: usize,
    env: &[(&str, String)],
) -> anyhow::Result<Vec<(Killed, std::path::PathBuf)>> {
    let mut procs = Vec::new();
    for i in 0..n {
        let log = dir.join(format!("worker-{i}.log"));
        let child = Command::new(worker)
            .arg("serve")
            .env_clear()
            .env("GITLAB_TOKEN", TOKEN)
            .env("GITLAB_SCOPE", "instance")
            .env("HTTP_LISTEN", "127.0.0.1:0")
            .env("SPOOL_DIR", dir.join(format!("spool-{i}")))
            .env("RECONCILE_INTERVAL_SECONDS", "0")
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "warn")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting gitlab-worker serve")?;
        procs.push((Killed(child), log));
    }
    for (_, log) in &procs {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !std::fs::read_to_string(log)?.contains("gitlab-worker: ready") {
            if Instant::now() > deadline {
                bail!("a worker did not start: {}", std::fs::read_to_string(log)?);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(procs)
}

/// What a run stands on: the simulator, a NATS server, a fresh PostgreSQL database, and the
/// workers on them (started last, with `env` on top of the three URLs).
pub(crate) struct Stack {
    pub sim: gitlab_sim::Running,
    pub nats_url: String,
    pub workers: Vec<(Killed, std::path::PathBuf)>,
    _nats: Killed,
    postgres: String,
    database: String,
}

impl Stack {
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn start(
        root: &Path,
        worker: &Path,
        dir: &Path,
        (world, config): (World, SimConfig),
        postgres: &str,
        database: &str,
        workers: usize,
        env: &[(&str, String)],
    ) -> anyhow::Result<Self> {
        let sim = gitlab_sim::start(world, config, "127.0.0.1:0").await?;
        let (nats, nats_url) = nats_server(root, dir)?;
        let db = fresh_database(postgres, database)?;
        let mut all = vec![
            ("GITLAB_URL", sim.url.clone()),
            ("DATABASE_URL", db),
            ("NATS_URL", nats_url.clone()),
        ];
        all.extend(env.iter().cloned());
        let workers = start_workers(worker, dir, workers, &all).await?;
        Ok(Self {
            sim,
            nats_url,
            workers,
            _nats: nats,
            postgres: postgres.to_string(),
            database: database.to_string(),
        })
    }

    /// Stops the workers and the simulator and drops the database.
    pub(crate) async fn stop(self) -> anyhow::Result<()> {
        drop(self.workers);
        self.sim.stop().await;
        psql(
            &self.postgres,
            &format!("DROP DATABASE IF EXISTS {}", self.database),
        )
    }
}

/// The width of the latency timeline's buckets (by publish time).
const TIMELINE_MS: u128 = 250;

/// One run: `workers` workers, the provisioning jobs at the steady rate, optionally with four
/// large syncs published just before them.
async fn run_once(
    root: &Path,
    worker: &Path,
    tmp: &Path,
    opts: &Options,
    workers: usize,
    with_syncs: bool,
) -> anyhow::Result<Value> {
    let dir = tmp.join(format!("tp-{workers}-{with_syncs}"));
    std::fs::create_dir_all(&dir)?;
    let name = format!("bench_tp_{}_{workers}_{with_syncs}", std::process::id());
    let stack = Stack::start(
        root,
        worker,
        &dir,
        (world(opts.jobs / 2), SimConfig::for_mode(Mode::SelfManaged)),
        &opts.postgres,
        &name,
        workers,
        &[(
            "WORKER_CONCURRENCY_PROVISION",
            opts.provision_concurrency.to_string(),
        )],
    )
    .await?;
    let procs = &stack.workers;
    let client = async_nats::connect(&stack.nats_url).await?;
    let js = async_nats::jetstream::new(client.clone());
    let mut results = client.subscribe("gitlab.results.>").await?;
    client.flush().await?;
    let jobs = provisioning_jobs(opts.jobs);
    let syncs: Vec<_> = if with_syncs {
        (0..4)
            .map(|s| {
                job(
                    format!("sync-big{s}"),
                    "sync",
                    json!({"scope": format!("big{s}")}),
                )
            })
            .collect()
    } else {
        Vec::new()
    };
    let cpu_before: Vec<f64> = procs.iter().map(|(p, _)| cpu_seconds(p.0.id())).collect();
    let machine_before = CpuSnapshot::take();
    let commits_before = commits(&opts.postgres, &name)?;
    let expected = jobs.len() + syncs.len();
    let collector = tokio::spawn(async move {
        let mut at: HashMap<String, (Instant, String)> = HashMap::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(900);
        while at.len() < expected {
            match tokio::time::timeout_at(deadline, results.next()).await {
                Ok(Some(m)) => {
                    let v: Value = serde_json::from_slice(&m.payload).unwrap_or_default();
                    if let Some(id) = v["job_id"].as_str() {
                        let status = v["status"].as_str().unwrap_or("").to_string();
                        at.entry(id.to_string()).or_insert((Instant::now(), status));
                    }
                }
                _ => break,
            }
        }
        at
    });
    let syncs_published = Instant::now();
    for s in &syncs {
        js.publish(s.1.clone(), s.2.clone().into()).await?.await?;
    }
    let start = Instant::now();
    let gap = Duration::from_secs_f64(1.0 / opts.rate as f64);
    let mut published: HashMap<String, Instant> = HashMap::new();
    let mut acks = Vec::new();
    for (i, (id, subject, body)) in jobs.iter().enumerate() {
        let due = start + gap * u32::try_from(i)?;
        tokio::time::sleep_until(due.into()).await;
        published.insert(id.clone(), Instant::now());
        let msg = async_nats::jetstream::message::PublishMessage::build()
            .payload(body.clone().into())
            .message_id(id);
        acks.push(js.send_publish(subject.clone(), msg).await?);
        if acks.len() >= 256 {
            for a in acks.drain(..) {
                a.await?;
            }
        }
    }
    for a in acks {
        a.await?;
    }
    let answered = collector.await?;
    let machine = CpuSnapshot::take().since(&machine_before);
    let cpu_workers: f64 = procs
        .iter()
        .zip(&cpu_before)
        .map(|((p, _), before)| cpu_seconds(p.0.id()) - before)
        .sum();
    let mut latencies: Vec<f64> = Vec::new();
    let mut grants: Vec<f64> = Vec::new();
    // The slowest job published in each quarter second: where in the run the tail is.
    let mut slowest: Vec<f64> = Vec::new();
    let mut last = start;
    let mut statuses: HashMap<String, usize> = HashMap::new();
    for (id, sent) in &published {
        if let Some((got, status)) = answered.get(id) {
            let ms = got.duration_since(*sent).as_secs_f64() * 1000.0;
            latencies.push(ms);
            let bucket = (sent.duration_since(start).as_millis() / TIMELINE_MS) as usize;
            if slowest.len() <= bucket {
                slowest.resize(bucket + 1, 0.0);
            }
            slowest[bucket] = slowest[bucket].max(ms.round());
            if id.starts_with("grant-") {
                grants.push(ms);
            }
            last = last.max(*got);
            *statuses.entry(status.clone()).or_default() += 1;
        }
    }
    latencies.sort_by(f64::total_cmp);
    grants.sort_by(f64::total_cmp);
    // Each sync's time from its publish to its result (they are published just before the
    // provisioning jobs start).
    let sync_s: Vec<f64> = syncs
        .iter()
        .filter_map(|s| answered.get(&s.0))
        .map(|(got, _)| got.duration_since(syncs_published).as_secs_f64())
        .collect();
    let wall = last.duration_since(start).as_secs_f64();
    let syncs_done = syncs
        .iter()
        .filter(|s| answered.get(&s.0).is_some_and(|(_, st)| st == "succeeded"))
        .count();
    let requests: u64 = stack.sim.sim.counts().values().map(|c| c.requests).sum();
    let db_commits = commits(&opts.postgres, &name)? - commits_before;
    stack.stop().await?;
    let out = json!({
        "workers": workers,
        "with_four_syncs": with_syncs,
        "syncs_succeeded": syncs_done,
        "jobs": jobs.len(),
        "answered": latencies.len(),
        "statuses": statuses,
        "offered_rate_per_s": opts.rate,
        "jobs_per_s": latencies.len() as f64 / wall.max(1e-9),
        "wall_s": wall,
        "latency_ms": {
            "p50": percentile(&latencies, 0.50),
            "p95": percentile(&latencies, 0.95),
            "p99": percentile(&latencies, 0.99),
            "max": latencies.last().copied().unwrap_or(0.0),
        },
        "grant_latency_ms": {
            "p50": percentile(&grants, 0.50),
            "p95": percentile(&grants, 0.95),
            "p99": percentile(&grants, 0.99),
            "max": grants.last().copied().unwrap_or(0.0),
        },
        "sync_publish_to_result_s": sync_s,
        "slowest_ms_by_publish_time": {"bucket_ms": TIMELINE_MS, "slowest": slowest},
        "worker_cpu_s": cpu_workers,
        "cpu_during_run": machine,
        "gitlab_requests": requests,
        "postgres_commits": db_commits,
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
    let sync_runs: &[bool] = if opts.with_syncs {
        &[false, true]
    } else {
        &[false]
    };
    // Rounds interleave the configurations, so a slow stretch of the machine falls on runs of
    // both kinds rather than on all runs of one.
    for round in 1..=opts.rounds.max(1) {
        for &with_syncs in sync_runs {
            for &workers in &opts.workers {
                eprintln!(
                    "== throughput round {round}/{}: {workers} worker(s){}",
                    opts.rounds.max(1),
                    if with_syncs {
                        ", four large syncs at once"
                    } else {
                        ""
                    }
                );
                let mut run = run_once(root, worker, tmp, opts, workers, with_syncs).await?;
                run["round"] = json!(round);
                runs.push(run);
            }
        }
    }
    let ratio: Vec<Value> = opts
        .workers
        .iter()
        .map(|&w| grant_p99_ratio(&runs, w as u64))
        .collect();
    Ok(json!({
        "jobs": opts.jobs,
        "offered_rate_per_s": opts.rate,
        "provision_concurrency": opts.provision_concurrency,
        "database": "postgresql",
        "rounds": opts.rounds.max(1),
        "runs": runs,
        "grant_p99_ratio": ratio,
    }))
}

/// For `workers`: each round's grant p99 without and with the syncs, each round's ratio, and
/// the ratio between the two medians (the target's number).
fn grant_p99_ratio(runs: &[Value], workers: u64) -> Value {
    let p99s = |syncs: bool| -> Vec<f64> {
        runs.iter()
            .filter(|r| r["workers"] == workers && r["with_four_syncs"] == syncs)
            .filter_map(|r| r["grant_latency_ms"]["p99"].as_f64())
            .collect()
    };
    let (without, with) = (p99s(false), p99s(true));
    let per_round: Vec<f64> = with.iter().zip(&without).map(|(a, b)| a / b).collect();
    let ratio = median(&with).zip(median(&without)).map(|(a, b)| a / b);
    json!({
        "workers": workers,
        "grant_p99_ms_without_syncs": without,
        "grant_p99_ms_with_syncs": with,
        "p99_with_syncs_over_without": ratio,
        "per_round": per_round,
    })
}

fn median(values: &[f64]) -> Option<f64> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(workers: u64, syncs: bool, p99: f64) -> Value {
        json!({"workers": workers, "with_four_syncs": syncs, "grant_latency_ms": {"p99": p99}})
    }

    #[test]
    fn the_ratio_is_taken_between_the_rounds_medians_of_one_worker_count() {
        let runs = [
            run(3, false, 128.0),
            run(3, true, 110.0),
            run(3, false, 51.0),
            run(3, true, 60.0),
            run(3, false, 54.0),
            run(3, true, 56.0),
            // Another worker count does not enter the ratio of three.
            run(1, false, 1.0),
            run(1, true, 1_000.0),
        ];
        let r = grant_p99_ratio(&runs, 3);
        assert_eq!(r["grant_p99_ms_without_syncs"], json!([128.0, 51.0, 54.0]));
        let ratio = r["p99_with_syncs_over_without"].as_f64().unwrap();
        assert!((ratio - 60.0 / 54.0).abs() < 1e-9, "{ratio}");
        assert_eq!(r["per_round"].as_array().unwrap().len(), 3);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }
}
