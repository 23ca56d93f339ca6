//! `cargo run --release -p gitlab-bench -- --sizes small,medium`
//!
//! For each size: start the simulator with a seeded organisation, run the release
//! `gitlab-worker sync` against it as a child process (wall time, CPU time and peak RSS from
//! `wait4`), compare its API requests with the minimal number for that organisation, run it again
//! under the simulator's rate limit and under 20% transient 5xx, run the same sync as a job
//! through `gitlab-worker serve` and NATS (peak RSS of the whole job), run python-gitlab's
//! straightforward membership read, and write `bench/results/<size>.json`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use gitlab_sim::{Mode, Resource, SeedSpec, SimConfig, UserRateLimit, World};
use serde_json::{Value, json};

mod live;
mod machine;
mod queries;
mod shared_budget;
mod throughput;
mod worker_job;

#[derive(Parser)]
#[command(about = "Benchmark full syncs against seeded simulated organisations")]
struct Args {
    /// Comma-separated: small, medium, large.
    #[arg(long, default_value = "small,medium")]
    sizes: String,
    /// Where the JSON reports go.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    /// Sync concurrency (requests in flight).
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Skip the python-gitlab comparison.
    #[arg(long)]
    no_python: bool,
    /// Skip the throttled run.
    #[arg(long)]
    no_throttled: bool,
    /// Skip the runs with one request in five answered 5xx.
    #[arg(long)]
    no_faults: bool,
    /// GitLab's response time in the 5xx comparison (both of its runs).
    #[arg(long, default_value_t = 50)]
    fault_latency_ms: u64,
    /// Skip the sync job through `gitlab-worker serve` and NATS.
    #[arg(long)]
    no_worker_job: bool,
    /// Skip the live-access measurement (webhooks, membership changes, reconcile).
    #[arg(long)]
    no_live: bool,
    /// Membership changes per second in the live-access measurement.
    #[arg(long, default_value_t = 100)]
    live_rate: u64,
    /// How long the steady stream of changes lasts.
    #[arg(long, default_value_t = 60)]
    live_seconds: u64,
    /// Changes sent while 20% of deliveries are dropped and 5% duplicated.
    #[arg(long, default_value_t = 1_000)]
    live_fault_changes: u64,
    /// Skip the auditors' query latency (a history of snapshots on SQLite and PostgreSQL).
    #[arg(long)]
    no_queries: bool,
    /// Snapshots in the query benchmark's history.
    #[arg(long, default_value_t = 30)]
    query_snapshots: usize,
    /// Share of access records changed between two snapshots of that history.
    #[arg(long, default_value_t = 0.01)]
    query_churn: f64,
    /// PostgreSQL admin URL for the query benchmark (a database is created and dropped).
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    postgres_url: String,
    /// Runtime threads of the simulator. GitLab's own CPU is not on the client's machine; one
    /// simulator thread leaves the other core to the client under test (and python-gitlab is
    /// single-threaded anyway). With 2, the simulator competes with the sync for both cores.
    #[arg(long, default_value_t = 1)]
    sim_threads: usize,
    /// Also measure provisioning throughput and latency (1, 2 and 3 workers on PostgreSQL,
    /// without and with four large syncs): bench/results/throughput.json.
    #[arg(long)]
    throughput: bool,
    /// Grant and revoke jobs per throughput run.
    #[arg(long, default_value_t = 10_000)]
    throughput_jobs: usize,
    /// Jobs published per second in the throughput runs (a steady offered load; the target's
    /// 500 by default).
    #[arg(long, default_value_t = 500)]
    throughput_rate: u64,
    /// WORKER_CONCURRENCY_PROVISION of each worker in the throughput runs.
    #[arg(long, default_value_t = 8)]
    throughput_concurrency: usize,
    /// Worker counts of the throughput runs, comma-separated.
    #[arg(long, default_value = "1,2,3", value_delimiter = ',')]
    throughput_workers: Vec<usize>,
    /// Only the throughput runs without the four syncs (a quicker look).
    #[arg(long)]
    throughput_no_syncs: bool,
    /// Rounds of the throughput runs; the grant-p99 ratio is taken between the rounds' medians
    /// (one run's p99 moves 2–3× between runs of the same build on a 2-core machine).
    #[arg(long, default_value_t = 3)]
    throughput_rounds: usize,
    /// Also measure the GitLab budget shared by workers (three large syncs under the
    /// simulator's per-user limit, 1 and 3 workers): bench/results/shared-budget.json.
    #[arg(long)]
    shared_budget: bool,
    /// GitLab's per-user limit in the shared-budget runs (requests per minute).
    #[arg(long, default_value_t = 6_000)]
    budget_per_minute: u64,
    /// Worker counts of the shared-budget runs, comma-separated.
    #[arg(long, default_value = "1,3", value_delimiter = ',')]
    budget_workers: Vec<usize>,
    /// Python interpreter with python-gitlab (default: .tools/venv/bin/python).
    #[arg(long)]
    python: Option<PathBuf>,
}

fn spec(size: &str) -> anyhow::Result<SeedSpec> {
    let (users, groups, projects, memberships, shares, depth) = match size {
        "small" => (1_000, 50, 250, 8_000, 20, 4),
        "medium" => (10_000, 1_000, 5_000, 150_000, 100, 5),
        "large" => (100_000, 10_000, 50_000, 1_000_000, 500, 6),
        other => bail!("unknown size {other:?}; use small, medium or large"),
    };
    Ok(SeedSpec {
        seed: 42,
        users,
        groups,
        projects,
        depth,
        memberships,
        shares,
        mode: Mode::SelfManaged,
    })
}

/// The minimal number of requests to read what the sync must read: every list costs
/// max(1, ceil(records / 100)) requests (an empty list still takes one request to learn it is
/// empty), every single-record read one.
fn minimal_requests(w: &World, scope: &str) -> u64 {
    let pages = |n: usize| (n.div_ceil(100)).max(1) as u64;
    let top = w.group_by_ref(scope).expect("scope exists");
    let desc = w.descendants(top);
    let projects = w.projects_of(top, true);
    let members = |r: Resource| w.members.get(&r).map_or(0, |m| m.len());
    let invitations = |r: Resource| w.invitations.get(&r).map_or(0, |m| m.len());
    let mut n = 1; // GET /user
    n += 1; // GET /groups/:scope
    n += pages(desc.len()) + pages(projects.len());
    n += desc.len() as u64; // group details: shares are only in the detail entity
    for g in std::iter::once(top).chain(desc.iter().copied()) {
        n += pages(members(Resource::Group(g))) + pages(invitations(Resource::Group(g)));
    }
    for p in &projects {
        n += pages(members(Resource::Project(*p))) + pages(invitations(Resource::Project(*p)));
    }
    n += pages(w.users.len()); // admin GET /users, keyset
    n += 2; // custom roles, SAML group links
    // Groups outside the scope shared into it: detail and members each.
    let in_tree: std::collections::HashSet<u64> =
        std::iter::once(top).chain(desc.iter().copied()).collect();
    let external: std::collections::BTreeSet<u64> = w
        .shares
        .iter()
        .filter(|(r, _)| match r {
            Resource::Group(g) => in_tree.contains(g),
            Resource::Project(p) => projects.contains(p),
        })
        .flat_map(|(_, s)| s.keys().copied())
        .filter(|g| !in_tree.contains(g))
        .collect();
    for g in external {
        n += 1 + pages(members(Resource::Group(g)));
    }
    n
}

struct ChildRun {
    wall: Duration,
    user_s: f64,
    sys_s: f64,
    peak_rss_kb: u64,
    status: i32,
}

/// The child's `VmHWM` (peak resident set) from /proc.
///
/// Not `ru_maxrss`: Rust spawns with vfork semantics and Linux carries the *parent's* high-water
/// mark into the child at exec, so `ru_maxrss` would report this harness (which holds the whole
/// simulated organisation), not the sync.
pub(crate) fn vm_hwm_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Runs a command: wall time, CPU time from wait4, peak RSS sampled from /proc (VmHWM only
/// grows, so the last sample before exit misses at most the final 20 ms).
fn run_measured(cmd: &mut Command) -> anyhow::Result<ChildRun> {
    let start = Instant::now();
    let child = cmd.spawn().context("spawning the sync")?;
    let pid = child.id();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some(kb) = vm_hwm_kb(pid) {
                    peak = peak.max(kb);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            peak
        })
    };
    let mut status: libc::c_int = 0;
    let usage = wait4(pid as libc::pid_t, &mut status)?;
    let wall = start.elapsed();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let peak_rss_kb = sampler.join().unwrap_or(0);
    Ok(ChildRun {
        wall,
        user_s: usage.ru_utime.tv_sec as f64 + usage.ru_utime.tv_usec as f64 / 1e6,
        sys_s: usage.ru_stime.tv_sec as f64 + usage.ru_stime.tv_usec as f64 / 1e6,
        peak_rss_kb,
        status: if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else {
            -1
        },
    })
}

/// The only unsafe code in the workspace: libc's wait4, for the child's rusage.
#[allow(unsafe_code)]
fn wait4(pid: libc::pid_t, status: &mut libc::c_int) -> anyhow::Result<libc::rusage> {
    // SAFETY: rusage is plain old data, all-zero is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: pid is our own child, not yet reaped; both pointers are valid for the call.
    let r = unsafe { libc::wait4(pid, status, 0, &mut usage) };
    if r < 0 {
        bail!("wait4 failed: {}", std::io::Error::last_os_error());
    }
    Ok(usage)
}

fn summary_of(path: &Path) -> anyhow::Result<Value> {
    let text = std::fs::read_to_string(path)?;
    let last = text.lines().last().context("empty snapshot")?;
    Ok(serde_json::from_str(last)?)
}

fn records_in(path: &Path) -> anyhow::Result<u64> {
    Ok(std::fs::read_to_string(path)?.lines().count() as u64)
}

fn sync_command(worker: &Path, url: &str, token: &str, out: &Path, concurrency: usize) -> Command {
    let mut c = Command::new(worker);
    // --no-store: the benchmark measures the crawl and the snapshot file (issue 4); storing in
    // the database is the worker's and is not part of these numbers.
    c.args(["sync", "--no-store", "--scope", "org", "--out"])
        .arg(out)
        .args(["--concurrency", &concurrency.to_string()])
        .env("GITLAB_URL", url)
        .env("GITLAB_TOKEN", token)
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null());
    c
}

async fn bench_size(
    size: &str,
    args: &Args,
    worker: &Path,
    python: Option<&Path>,
) -> anyhow::Result<Value> {
    let spec = spec(size)?;
    eprintln!(
        "== {size}: generating {} users, {} groups, {} projects, {} memberships",
        spec.users, spec.groups, spec.projects, spec.memberships
    );
    let seeded = gitlab_sim::seed::generate(&spec);
    let minimal = minimal_requests(&seeded.world, "org");
    let world = seeded.world.clone();
    let mut cfg = SimConfig::for_mode(Mode::SelfManaged);
    cfg.endpoint_limits = false;
    let sim = gitlab_sim::start(seeded.world, cfg.clone(), "127.0.0.1:0").await?;
    let tmp = std::env::temp_dir().join(format!("gitlab-bench-{}-{size}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;

    eprintln!("== {size}: unthrottled sync");
    let out = tmp.join("snapshot.ndjson");
    let mut cmd = sync_command(worker, &sim.url, &seeded.token, &out, args.concurrency);
    let run = tokio::task::spawn_blocking(move || run_measured(&mut cmd)).await??;
    if run.status != 0 {
        bail!("the sync exited with {}", run.status);
    }
    let summary = summary_of(&out)?;
    let records = records_in(&out)?;
    let requests = summary["api_requests"].as_u64().unwrap_or(0);
    let unthrottled = json!({
        "wall_s": run.wall.as_secs_f64(),
        "cpu_user_s": run.user_s,
        "cpu_sys_s": run.sys_s,
        "peak_rss_mb": run.peak_rss_kb as f64 / 1024.0,
        "records": records,
        "records_per_s": records as f64 / run.wall.as_secs_f64(),
        "api_requests": requests,
        "too_many_requests": summary["too_many_requests"],
        "complete": summary["complete"],
        "counts": summary["counts"],
    });
    eprintln!("   {unthrottled}");
    drop(sim);

    let queries = if args.no_queries {
        Value::Null
    } else {
        eprintln!(
            "== {size}: auditors' queries over {} snapshots with {}% churn",
            args.query_snapshots,
            args.query_churn * 100.0
        );
        let dir = tmp.join("queries");
        std::fs::create_dir_all(&dir)?;
        let opts = queries::Options {
            snapshots: args.query_snapshots,
            churn: args.query_churn,
            postgres: args.postgres_url.clone(),
        };
        let (worker, out, dir2) = (worker.to_path_buf(), out.clone(), dir.clone());
        let v = tokio::task::spawn_blocking(move || queries::measure(&worker, &out, &dir2, &opts))
            .await??;
        if std::env::var_os("BENCH_KEEP_QUERY_DB").is_none() {
            std::fs::remove_dir_all(&dir).ok();
        }
        v
    };

    let throttled = if args.no_throttled {
        Value::Null
    } else {
        // A limit that makes the ideal run last max(40 s, 3 × the unthrottled run), in 5-second
        // windows: well below what this machine can do, so the limit, not the CPU, is measured.
        let period = 5u64;
        let ideal_s = (run.wall.as_secs_f64() * 3.0).max(40.0);
        let limit = ((requests as f64 * period as f64 / ideal_s).ceil() as u64).max(20);
        eprintln!("== {size}: sync under a rate limit of {limit} requests per {period} s");
        let mut cfg = cfg.clone();
        cfg.rate_limit = Some(UserRateLimit {
            limit,
            period_secs: period,
        });
        let sim = gitlab_sim::start(world.clone(), cfg, "127.0.0.1:0").await?;
        let out = tmp.join("throttled.ndjson");
        let mut cmd = sync_command(worker, &sim.url, &seeded.token, &out, args.concurrency);
        let run = tokio::task::spawn_blocking(move || run_measured(&mut cmd)).await??;
        let summary = summary_of(&out)?;
        let requests = summary["api_requests"].as_u64().unwrap_or(0);
        let ideal = requests as f64 / (limit as f64 / period as f64);
        let sim_429: u64 = sim
            .sim
            .counts()
            .values()
            .map(|c| c.statuses.get(&429).copied().unwrap_or(0))
            .sum();
        let v = json!({
            "limit": limit,
            "period_s": period,
            "api_requests": requests,
            "wall_s": run.wall.as_secs_f64(),
            "ideal_s": ideal,
            "wall_over_ideal": run.wall.as_secs_f64() / ideal,
            "too_many_requests": sim_429,
            "rate_limit_waits": summary["rate_limit_waits"],
            "complete": summary["complete"],
        });
        eprintln!("   {v}");
        v
    };

    let faults = if args.no_faults {
        Value::Null
    } else {
        // GitLab answers in tens of milliseconds, not the simulator's microseconds: both runs
        // get the same latency, so the comparison is of what the faults cost against a
        // realistic fault-free sync. RateLimit-* headers are on every response (a limit nobody
        // reaches), as GitLab sends them once a throttle is on, 5xx included.
        let mut cfg = cfg.clone();
        cfg.rate_limit = Some(UserRateLimit {
            limit: 100_000_000,
            period_secs: 60,
        });
        cfg.faults.latency_ms = args.fault_latency_ms;
        let mut timed = Vec::new();
        for error_rate in [0.0, 0.2] {
            eprintln!(
                "== {size}: sync at {} ms per request, {}% answered 500/502/503",
                args.fault_latency_ms,
                error_rate * 100.0
            );
            let mut cfg = cfg.clone();
            cfg.faults.error_rate = error_rate;
            let sim = gitlab_sim::start(world.clone(), cfg, "127.0.0.1:0").await?;
            let out = tmp.join("faults.ndjson");
            let mut cmd = sync_command(worker, &sim.url, &seeded.token, &out, args.concurrency);
            let run = tokio::task::spawn_blocking(move || run_measured(&mut cmd)).await??;
            let summary = summary_of(&out)?;
            if summary["complete"] != true {
                bail!("the sync at {error_rate} errors did not complete");
            }
            timed.push((run.wall.as_secs_f64(), summary["api_requests"].clone()));
        }
        let v = json!({
            "latency_ms": args.fault_latency_ms,
            "error_rate": 0.2,
            "fault_free_wall_s": timed[0].0,
            "wall_s": timed[1].0,
            "wall_over_fault_free": timed[1].0 / timed[0].0,
            "api_requests": timed[1].1,
        });
        eprintln!("   {v}");
        v
    };

    let worker_job = if args.no_worker_job {
        Value::Null
    } else {
        eprintln!("== {size}: the sync as a job through gitlab-worker serve (SQLite, NATS)");
        let sim = gitlab_sim::start(world.clone(), cfg.clone(), "127.0.0.1:0").await?;
        let dir = tmp.join("worker-job");
        std::fs::create_dir_all(&dir)?;
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let v = worker_job::measure(&root, worker, &dir, &sim.url, &seeded.token).await?;
        eprintln!("   {v}");
        v
    };

    let live = if args.no_live {
        Value::Null
    } else {
        eprintln!(
            "== {size}: live access from GitLab's webhooks (gitlab-worker serve, SQLite, NATS)"
        );
        let sim = gitlab_sim::start(world.clone(), cfg.clone(), "127.0.0.1:0").await?;
        let dir = tmp.join("live");
        std::fs::create_dir_all(&dir)?;
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let opts = live::Options {
            rate_per_s: args.live_rate,
            seconds: args.live_seconds,
            fault_changes: args.live_fault_changes,
        };
        let v = live::measure(&root, worker, &dir, &sim, &seeded.token, &opts).await?;
        eprintln!("   {v}");
        v
    };

    // The same reads as the python script plus what access needs (group shares, users), without
    // invitations: the like-for-like comparison.
    let like_for_like = if python.is_some() && !args.no_python {
        eprintln!("== {size}: sync without invitations (like for like with python-gitlab)");
        let mut cfg = SimConfig::for_mode(Mode::SelfManaged);
        cfg.endpoint_limits = false;
        let sim = gitlab_sim::start(world.clone(), cfg, "127.0.0.1:0").await?;
        let out = tmp.join("no-invitations.ndjson");
        let mut cmd = sync_command(worker, &sim.url, &seeded.token, &out, args.concurrency);
        cmd.arg("--no-invitations");
        let run = tokio::task::spawn_blocking(move || run_measured(&mut cmd)).await??;
        let summary = summary_of(&out)?;
        let v = json!({"wall_s": run.wall.as_secs_f64(), "api_requests": summary["api_requests"], "peak_rss_mb": run.peak_rss_kb as f64 / 1024.0});
        eprintln!("   {v}");
        v
    } else {
        Value::Null
    };

    let python_result = match python {
        Some(py) if !args.no_python => {
            eprintln!("== {size}: python-gitlab, the straightforward way");
            let mut cfg = SimConfig::for_mode(Mode::SelfManaged);
            cfg.endpoint_limits = false;
            let sim = gitlab_sim::start(world.clone(), cfg, "127.0.0.1:0").await?;
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python_members.py");
            let (py, url, token) = (py.to_path_buf(), sim.url.clone(), seeded.token.clone());
            let output = tokio::task::spawn_blocking(move || {
                Command::new(py)
                    .arg(script)
                    .env("GITLAB_URL", url)
                    .env("GITLAB_TOKEN", token)
                    .env("GITLAB_SCOPE", "org")
                    .output()
            })
            .await??;
            if !output.status.success() {
                bail!(
                    "python-gitlab failed: {}",
                    String::from_utf8_lossy(&output.stderr)
                );
            }
            let v: Value = serde_json::from_slice(&output.stdout)?;
            eprintln!("   {v}");
            v
        }
        _ => Value::Null,
    };
    let speedup = python_result["wall_s"]
        .as_f64()
        .map(|p| p / run.wall.as_secs_f64());
    let speedup_like_for_like = python_result["wall_s"]
        .as_f64()
        .zip(like_for_like["wall_s"].as_f64())
        .map(|(p, ours)| p / ours);
    if std::env::var_os("BENCH_KEEP_QUERY_DB").is_none() {
        std::fs::remove_dir_all(&tmp).ok();
    }
    Ok(json!({
        "size": size,
        "spec": spec,
        "machine": {"cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)},
        "concurrency": args.concurrency,
        "simulator_threads": args.sim_threads,
        "minimal_requests": minimal,
        "api_requests": requests,
        "requests_over_minimal": requests as f64 / minimal as f64,
        "unthrottled": unthrottled,
        "throttled": throttled,
        "python_gitlab": python_result,
        "speedup_vs_python_gitlab": speedup,
        "sync_without_invitations": like_for_like,
        "speedup_like_for_like": speedup_like_for_like,
        "faults": faults,
        "worker_job": worker_job,
        "live": live,
        "queries": queries,
    }))
}

// mimalloc: the simulator renders millions of small JSON values; the same allocator as the
// worker, so the benchmark's stand-in for GitLab takes less of the CPU it shares with the sync.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.sim_threads == 0 {
        bail!("--sim-threads must be at least 1");
    }
    // The harness itself only waits on child processes (on blocking threads), so this runtime's
    // worker threads are the simulator's.
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.sim_threads)
        .enable_all()
        .build()?
        .block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    eprintln!("== building the release gitlab-worker");
    let status = Command::new(env!("CARGO"))
        .args(["build", "--release", "-p", "gitlab-worker"])
        .current_dir(&root)
        .status()?;
    if !status.success() {
        bail!("cargo build --release -p gitlab-worker failed");
    }
    let worker = root.join("target/release/gitlab-worker");
    let python = args
        .python
        .clone()
        .unwrap_or_else(|| root.join(".tools/venv/bin/python"));
    let python = if python.exists() {
        Some(python)
    } else {
        eprintln!(
            "note: {} not found (run `bash scripts/test` once to create it); skipping python-gitlab",
            python.display()
        );
        None
    };
    std::fs::create_dir_all(&args.out)?;
    for size in args
        .sizes
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let report = bench_size(size, &args, &worker, python.as_deref()).await?;
        let path = args.out.join(format!("{size}.json"));
        std::fs::write(&path, serde_json::to_string_pretty(&report)? + "\n")?;
        eprintln!("== wrote {}", path.display());
    }
    if args.throughput {
        let tmp = std::env::temp_dir().join(format!("gitlab-bench-{}-tp", std::process::id()));
        std::fs::create_dir_all(&tmp)?;
        let opts = throughput::Options {
            jobs: args.throughput_jobs,
            rate: args.throughput_rate,
            postgres: args.postgres_url.clone(),
            provision_concurrency: args.throughput_concurrency,
            workers: args.throughput_workers.clone(),
            with_syncs: !args.throughput_no_syncs,
            rounds: args.throughput_rounds,
        };
        let mut report = throughput::measure(&root, &worker, &tmp, &opts).await?;
        report["machine"] =
            json!({"cpus": std::thread::available_parallelism().map_or(0, usize::from)});
        let path = args.out.join("throughput.json");
        std::fs::write(&path, serde_json::to_string_pretty(&report)? + "\n")?;
        eprintln!("== wrote {}", path.display());
        std::fs::remove_dir_all(&tmp).ok();
    }
    if args.shared_budget {
        let tmp = std::env::temp_dir().join(format!("gitlab-bench-{}-budget", std::process::id()));
        std::fs::create_dir_all(&tmp)?;
        let opts = shared_budget::Options {
            per_minute: args.budget_per_minute,
            postgres: args.postgres_url.clone(),
            workers: args.budget_workers.clone(),
        };
        let mut report = shared_budget::measure(&root, &worker, &tmp, &opts).await?;
        report["machine"] =
            json!({"cpus": std::thread::available_parallelism().map_or(0, usize::from)});
        let path = args.out.join("shared-budget.json");
        std::fs::write(&path, serde_json::to_string_pretty(&report)? + "\n")?;
        eprintln!("== wrote {}", path.display());
        std::fs::remove_dir_all(&tmp).ok();
    }
    Ok(())
}
