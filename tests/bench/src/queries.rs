//! Point-in-time query latency (docs/benchmark.md, "Auditors' queries"): from one real
//! snapshot of the organisation, a history of `snapshots` snapshots a day apart with `churn`
//! of the access records changing between each two (a level changed, a record gone, a gone
//! one back), imported with `gitlab-worker snapshots import` into SQLite and into PostgreSQL;
//! then `access who|user|history` run as a user would, through the release binary, timed
//! wall-clock from process start to exit.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};
use gitlab_connector::model::{Record, SnapshotHeader, Summary};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

pub struct Options {
    pub snapshots: usize,
    pub churn: f64,
    /// Admin URL of the PostgreSQL server the benchmark creates its database on.
    pub postgres: String,
}

/// What an access line becomes in one snapshot.
#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Original,
    Level(u16),
    Gone,
}

fn mix(a: u64, b: u64) -> u64 {
    let mut x = a.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    x ^= x >> 31;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^ (x >> 29)
}

struct Source {
    header: SnapshotHeader,
    summary: Summary,
    /// Body lines; access lines are parsed once for their level changes.
    body: Vec<String>,
    access: Vec<usize>,
}

fn read_source(path: &Path) -> anyhow::Result<Source> {
    let mut lines: Vec<String> = BufReader::new(std::fs::File::open(path)?)
        .lines()
        .collect::<Result<_, _>>()?;
    let Record::Summary(summary) = serde_json::from_str(&lines.pop().context("empty snapshot")?)?
    else {
        bail!("the snapshot's last line is not its summary");
    };
    let Record::Snapshot(header) = serde_json::from_str(&lines.remove(0))? else {
        bail!("the snapshot's first line is not its header");
    };
    let access = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.starts_with("{\"type\":\"access\""))
        .map(|(i, _)| i)
        .collect();
    Ok(Source {
        header,
        summary,
        body: lines,
        access,
    })
}

/// The line as the worker writes it (field order included), at another level.
fn with_level(line: &str, level: u16) -> anyhow::Result<String> {
    let Record::Access(mut a) = serde_json::from_str(line)? else {
        bail!("not an access record: {line}");
    };
    a.access_level = level;
    if let Some(p) = a.paths.first_mut() {
        p.access_level = level;
    }
    Ok(serde_json::to_string(&Record::Access(a))?)
}

/// Writes snapshot `i` of the history; returns its sha256.
fn write_snapshot(
    src: &Source,
    states: &[State],
    i: usize,
    n: usize,
    prev: Option<&str>,
    out: &Path,
) -> anyhow::Result<String> {
    let day = chrono::Duration::days(1);
    let started = chrono::Utc::now() - day * i32::try_from(n - i)?;
    let id = format!("bench-{i:03}-{}", std::process::id());
    let mut header = src.header.clone();
    header.snapshot_id = id.clone();
    header.started_at = started;
    let mut w = BufWriter::new(std::fs::File::create(out)?);
    let mut h = Sha256::new();
    let mut put = |line: &str, w: &mut BufWriter<std::fs::File>| -> std::io::Result<()> {
        h.update(line.as_bytes());
        h.update(b"\n");
        w.write_all(line.as_bytes())?;
        w.write_all(b"\n")
    };
    put(&serde_json::to_string(&Record::Snapshot(header))?, &mut w)?;
    let mut slot = HashMap::new();
    for (k, idx) in src.access.iter().enumerate() {
        slot.insert(*idx, k);
    }
    let mut access = 0u64;
    for (idx, line) in src.body.iter().enumerate() {
        match slot.get(&idx).map(|k| states[*k]) {
            None | Some(State::Original) => put(line, &mut w)?,
            Some(State::Level(l)) => put(&with_level(line, l)?, &mut w)?,
            Some(State::Gone) => continue,
        }
        if slot.contains_key(&idx) {
            access += 1;
        }
    }
    let sha = hex(&h.finalize());
    let mut summary = src.summary.clone();
    summary.snapshot_id = id;
    summary.sha256 = sha.clone();
    summary.prev_sha256 = prev.map(str::to_string);
    summary.counts.insert("access".into(), access);
    summary.finished_at = started + chrono::Duration::seconds(60);
    w.write_all(serde_json::to_string(&Record::Summary(summary))?.as_bytes())?;
    w.write_all(b"\n")?;
    w.flush()?;
    Ok(sha)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Writes the history's snapshots oldest first, handing each file to `store` and deleting it
/// after (a large organisation's thirty files would not fit on every disk); the number of
/// access records changed.
fn build_history(
    src: &Source,
    opts: &Options,
    dir: &Path,
    mut store: impl FnMut(&Path) -> anyhow::Result<()>,
) -> anyhow::Result<u64> {
    let mut states = vec![State::Original; src.access.len()];
    let per_mille = (opts.churn * 1000.0).round().max(1.0) as u64;
    let mut prev: Option<String> = None;
    let mut changed = 0u64;
    for i in 0..opts.snapshots {
        if i > 0 {
            for (k, s) in states.iter_mut().enumerate() {
                let r = mix(i as u64, k as u64);
                if r % 1000 >= per_mille {
                    continue;
                }
                changed += 1;
                *s = match *s {
                    State::Original if r.is_multiple_of(2) => State::Gone,
                    State::Original => State::Level([10, 20, 30, 40][(r / 2 % 4) as usize]),
                    _ => State::Original,
                };
            }
        }
        let path = dir.join(format!("history-{i:03}.ndjson"));
        let sha = write_snapshot(src, &states, i, opts.snapshots, prev.as_deref(), &path)?;
        store(&path)?;
        std::fs::remove_file(&path)?;
        prev = Some(sha);
    }
    Ok(changed)
}

fn import(worker: &Path, db: &str, file: &Path) -> anyhow::Result<f64> {
    let start = Instant::now();
    let out = worker_cmd(worker, db)
        .args(["snapshots", "import"])
        .arg(file)
        .output()?;
    if !out.status.success() {
        bail!("import failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(start.elapsed().as_secs_f64())
}

/// The resource and the user with the most access records (the largest answers).
fn biggest(src: &Source) -> anyhow::Result<(String, String, usize, usize)> {
    let mut by_res: HashMap<String, usize> = HashMap::new();
    let mut by_user: HashMap<u64, usize> = HashMap::new();
    for idx in &src.access {
        let v: Value = serde_json::from_str(&src.body[*idx])?;
        let r = format!(
            "{}:{}",
            v["resource"]["type"].as_str().unwrap_or_default(),
            v["resource"]["id"]
        );
        *by_res.entry(r).or_default() += 1;
        *by_user
            .entry(v["user_id"].as_u64().unwrap_or(0))
            .or_default() += 1;
    }
    let (r, rn) = by_res
        .into_iter()
        .max_by_key(|(k, n)| (*n, k.clone()))
        .context("no access record")?;
    let (u, un) = by_user
        .into_iter()
        .max_by_key(|(k, n)| (*n, *k))
        .context("no access record")?;
    Ok((r, format!("id:{u}"), rn, un))
}

fn worker_cmd(worker: &Path, db: &str) -> Command {
    let mut c = Command::new(worker);
    c.env_clear()
        .env("DATABASE_URL", db)
        .env("CONNECTOR_ID", "default")
        .env("RUST_LOG", "warn");
    c
}

/// Median and max wall time of three runs, and the answer's row count.
fn time_query(worker: &Path, db: &str, args: &[String]) -> anyhow::Result<Value> {
    let mut walls = Vec::new();
    let mut rows = 0;
    for _ in 0..3 {
        let start = Instant::now();
        let out = worker_cmd(worker, db)
            .args(args)
            .args(["--format", "json"])
            .output()?;
        walls.push(start.elapsed().as_secs_f64());
        if !out.status.success() {
            bail!("{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let v: Value = serde_json::from_slice(&out.stdout)?;
        rows = v["rows"].as_array().map_or(0, Vec::len);
    }
    walls.sort_by(f64::total_cmp);
    Ok(json!({"wall_s": walls[1], "max_s": walls[2], "rows": rows}))
}

fn measure_db(
    worker: &Path,
    db: &str,
    targets: &(String, String, usize, usize),
    mid: &str,
    last_day: &str,
) -> anyhow::Result<Value> {
    let (res, user, _, _) = targets;
    let q = |args: &[&str]| -> anyhow::Result<Value> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let v = time_query(worker, db, &args)?;
        eprintln!("   {args:?}: {v}");
        Ok(v)
    };
    Ok(json!({
        "who_now": q(&["access", "who", res])?,
        "who_mid_history": q(&["access", "who", res, "--at", mid])?,
        "who_by_path": q(&["access", "who", "group:org", "--at", mid])?,
        "user_now": q(&["access", "user", user])?,
        "user_mid_history": q(&["access", "user", user, "--at", mid])?,
        "history_user": q(&["access", "history", "--user", user])?,
        "history_resource": q(&["access", "history", "--resource", res])?,
        "history_last_day_all": q(&["access", "history", "--since", last_day])?,
    }))
}

pub(crate) fn psql(admin: &str, sql: &str) -> anyhow::Result<()> {
    let out = Command::new("psql")
        .args([admin, "-q", "-c", sql])
        .output()
        .context("running psql")?;
    if !out.status.success() {
        bail!("psql {sql}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// Creates database `name` afresh beside the admin URL's database; its URL.
pub(crate) fn fresh_database(admin: &str, name: &str) -> anyhow::Result<String> {
    psql(admin, &format!("DROP DATABASE IF EXISTS {name}"))?;
    psql(admin, &format!("CREATE DATABASE {name}"))?;
    let base = admin.rsplit_once('/').map_or(admin, |(b, _)| b);
    Ok(format!("{base}/{name}"))
}

pub fn measure(
    worker: &Path,
    snapshot: &Path,
    dir: &Path,
    opts: &Options,
) -> anyhow::Result<Value> {
    let src = read_source(snapshot)?;
    let targets = biggest(&src)?;
    let sqlite = format!("sqlite://{}?mode=rwc", dir.join("queries.db").display());
    let name = format!("bench_queries_{}", std::process::id());
    let pg = fresh_database(&opts.postgres, &name)?;
    let result = (|| {
        let (mut on_sqlite, mut on_pg) = (Vec::new(), Vec::new());
        let changed = build_history(&src, opts, dir, |f| {
            on_sqlite.push(import(worker, &sqlite, f)?);
            on_pg.push(import(worker, &pg, f)?);
            eprintln!(
                "   snapshot {} imported: SQLite {:.1} s, PostgreSQL {:.1} s",
                on_sqlite.len(),
                on_sqlite.last().unwrap_or(&0.0),
                on_pg.last().unwrap_or(&0.0)
            );
            Ok(())
        })?;
        eprintln!(
            "   {} snapshots, {} access records, {changed} access changes; largest resource {} ({} users), largest user {} ({} resources)",
            opts.snapshots,
            src.access.len(),
            targets.0,
            targets.2,
            targets.1,
            targets.3
        );
        // Between snapshots n/2 and n/2+1 (a day apart, each finished 60 s after it started).
        let half = i32::try_from(opts.snapshots / 2)?;
        let mid = (chrono::Utc::now() - chrono::Duration::days(i64::from(half))
            + chrono::Duration::hours(12))
        .to_rfc3339();
        let last_day = (chrono::Utc::now() - chrono::Duration::hours(36)).to_rfc3339();
        let avg = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
        eprintln!("== queries on SQLite");
        let mut s = measure_db(worker, &sqlite, &targets, &mid, &last_day)?;
        s["import_s_per_snapshot"] = json!(avg(&on_sqlite));
        s["first_import_s"] = json!(on_sqlite.first());
        eprintln!("== queries on PostgreSQL");
        let mut p = measure_db(worker, &pg, &targets, &mid, &last_day)?;
        p["import_s_per_snapshot"] = json!(avg(&on_pg));
        p["first_import_s"] = json!(on_pg.first());
        Ok::<_, anyhow::Error>(json!({
            "snapshots": opts.snapshots,
            "churn": opts.churn,
            "access_records": src.access.len(),
            "access_changes": changed,
            "largest_resource": {"selector": targets.0, "users": targets.2},
            "largest_user": {"selector": targets.1, "resources": targets.3},
            "sqlite": s,
            "postgres": p,
        }))
    })();
    // BENCH_KEEP_QUERY_DB=1 keeps both databases for reading plans (EXPLAIN ANALYZE).
    if std::env::var_os("BENCH_KEEP_QUERY_DB").is_some() {
        eprintln!("   kept: {pg} and {sqlite}");
    } else {
        psql(&opts.postgres, &format!("DROP DATABASE IF EXISTS {name}"))?;
    }
    result
}
