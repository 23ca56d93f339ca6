//! Test harness for the end-to-end tests in tests/*.rs: a nats-server of the test's own
//! (restartable), a fresh PostgreSQL database, the built `gitlab-worker` as a child process,
//! and JetStream helpers to publish jobs and read results, DLQ copies and events.

pub mod webdriver;
use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

/// A fresh temporary folder for one test.
pub fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "gl-e2e-{name}-{}-{}",
        std::process::id(),
        uuid::Uuid::now_v7().simple()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn nats_server_bin() -> PathBuf {
    let p = std::env::var_os("NATS_SERVER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".tools/venv/bin/nats-server"));
    assert!(
        p.is_file(),
        "nats-server 2.15.1 not found at {}: run `bash scripts/test` once (it installs it into .tools/), or set NATS_SERVER_BIN",
        p.display()
    );
    p
}

/// A nats-server with JetStream of the test's own, on a fixed port so it can be restarted in
/// place with its store.
pub struct NatsServer {
    pub port: u16,
    pub url: String,
    extra: Vec<String>,
    store: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl NatsServer {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// With extra server arguments (`--auth TOKEN`, `--user U --pass P`, ...).
    pub fn start_with(extra: &[&str]) -> Self {
        let dir = tempdir("nats");
        let port = free_port();
        let mut s = Self {
            port,
            url: format!("nats://127.0.0.1:{port}"),
            extra: extra.iter().map(|a| a.to_string()).collect(),
            store: dir.join("store"),
            log: dir.join("nats.log"),
            child: None,
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let child = Command::new(nats_server_bin())
            .args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string()])
            .arg("--store_dir")
            .arg(&self.store)
            .arg("-l")
            .arg(&self.log)
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            // Each start appends to the log; count readiness lines.
            if log.matches("Server is ready").count() >= self.starts()
                && TcpStream::connect(("127.0.0.1", self.port)).is_ok()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "nats-server did not become ready: {log}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn starts(&self) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .matches("Starting nats-server")
            .count()
    }

    /// Stops the server gracefully (its store is flushed), then starts it again in place.
    pub fn restart(&mut self, down_for: Duration) {
        self.stop();
        std::thread::sleep(down_for);
        self.spawn();
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal(c.id(), "TERM");
            let _ = c.wait();
        }
    }
}

impl NatsServer {
    /// Kills the server at once (SIGKILL): no flush, no goodbye to its routes or clients.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts a killed or stopped server again with its store.
    pub fn start_again(&mut self) {
        if self.child.is_none() {
            self.spawn();
        }
    }
}

/// A client of every server in a comma-separated list.
pub async fn cluster_client(urls: &str) -> async_nats::Client {
    async_nats::connect(urls.split(',').collect::<Vec<_>>())
        .await
        .unwrap()
}

/// Three JetStream servers routed into one cluster on loopback ports, named `n0`..`n2`.
pub struct NatsCluster {
    pub nodes: Vec<NatsServer>,
    /// Every node's client URL, comma-separated (as `NATS_URL` takes them).
    pub url: String,
}

impl NatsCluster {
    /// Starts the three servers and waits until JetStream has elected its metadata leader.
    pub async fn start() -> Self {
        let nodes = tokio::task::spawn_blocking(|| {
            let routes: Vec<u16> = (0..3).map(|_| free_port()).collect();
            let all = routes
                .iter()
                .map(|p| format!("nats://127.0.0.1:{p}"))
                .collect::<Vec<_>>()
                .join(",");
            (0..3)
                .map(|i| {
                    let name = format!("n{i}");
                    let listen = format!("nats://127.0.0.1:{}", routes[i]);
                    NatsServer::start_with(&[
                        "-n",
                        &name,
                        "--cluster_name",
                        "gitlab-test",
                        "--cluster",
                        &listen,
                        "--routes",
                        &all,
                    ])
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap();
        let url = nodes
            .iter()
            .map(|n| n.url.clone())
            .collect::<Vec<_>>()
            .join(",");
        let js = jetstream::new(cluster_client(&url).await);
        let deadline = Instant::now() + Duration::from_secs(60);
        while js.query_account().await.is_err() {
            assert!(
                Instant::now() < deadline,
                "the NATS cluster elected no JetStream leader within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Self { nodes, url }
    }

    /// The index of the node leading `stream` (by server name `n<i>`).
    pub async fn leader_of(&self, js: &jetstream::Context, stream: &str) -> Option<usize> {
        let mut s = js.get_stream(stream).await.ok()?;
        let info = s.info().await.ok()?;
        let leader = info.cluster.as_ref()?.leader.clone()?;
        leader.strip_prefix('n')?.parse().ok()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(d) = self.store.parent() {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

pub fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

/// The administrative URL of the machine's PostgreSQL (docs/design.md, "Test services").
pub fn postgres_admin_url() -> String {
    std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A database of the test's own, dropped afterwards.
pub struct PgDb {
    pub url: String,
    name: String,
}

impl PgDb {
    pub async fn create() -> Self {
        let admin = postgres_admin_url();
        let name = format!("t_{}", uuid::Uuid::now_v7().simple());
        let db = sea_orm::Database::connect(&admin)
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL at {admin} is not reachable ({e}); docs/design.md: it runs on 127.0.0.1:5432"));
        sea_orm::ConnectionTrait::execute_unprepared(&db, &format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        let _ = db.close().await;
        let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
        Self {
            url: format!("{base}/{name}"),
            name,
        }
    }

    /// Ends every server process connected to this database, as a PostgreSQL restart or a
    /// proxy dropping idle connections would; returns how many it ended.
    pub async fn terminate_connections(&self) -> i64 {
        let admin = sea_orm::Database::connect(&postgres_admin_url())
            .await
            .expect("PostgreSQL is reachable");
        let row = sea_orm::ConnectionTrait::query_one_raw(
            &admin,
            sea_orm::Statement::from_string(
                sea_orm::DbBackend::Postgres,
                format!(
                    "SELECT count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity WHERE datname = '{}'",
                    self.name
                ),
            ),
        )
        .await
        .unwrap()
        .expect("one row");
        let _ = admin.close().await;
        row.try_get::<i64>("", "n").unwrap()
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs outside any runtime guarantee: a thread with a runtime of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                if let Ok(db) = sea_orm::Database::connect(&postgres_admin_url()).await {
                    let _ = sea_orm::ConnectionTrait::execute_unprepared(
                        &db,
                        &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
                    )
                    .await;
                    let _ = db.close().await;
                }
            });
        })
        .join();
    }
}

/// A SQLite database file in a fresh folder.
pub fn sqlite_url(dir: &Path) -> String {
    format!("sqlite://{}?mode=rwc", dir.join("worker.db").display())
}

/// The built `gitlab-worker serve`, as a child process with a clean environment.
pub struct Worker {
    child: Child,
    stderr: PathBuf,
    pub http: String,
}

impl Worker {
    pub fn serve(env: &[(&str, String)]) -> Self {
        let dir = tempdir("worker");
        let stderr = dir.join("stderr.log");
        let mut cmd = Command::new(assert_cmd::cargo::cargo_bin("gitlab-worker"));
        cmd.arg("serve")
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HTTP_LISTEN", "127.0.0.1:0")
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .env("SPOOL_DIR", &dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("start gitlab-worker");
        let mut w = Self {
            child,
            stderr,
            http: String::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let log = w.stderr();
            if let Some(line) = log.lines().find(|l| l.starts_with("gitlab-worker: ready")) {
                w.http = line.rsplit(' ').next().unwrap().to_string();
                return w;
            }
            if let Ok(Some(status)) = w.child.try_wait() {
                panic!("gitlab-worker exited ({status}) before it was ready:\n{log}");
            }
            assert!(Instant::now() < deadline, "gitlab-worker not ready:\n{log}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Where the worker's stderr goes (it outlives the worker, for diagnostics).
    pub fn stderr_path(&self) -> PathBuf {
        self.stderr.clone()
    }

    pub fn stderr(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.stderr) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn terminate(&self) {
        signal(self.child.id(), "TERM");
    }

    /// Waits for the process to exit, up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// GET on the worker's HTTP port: (status, body).
    pub fn get(&self, path: &str) -> (u16, String) {
        http(&self.http, "GET", path, &[], b"")
    }

    /// The webhook receiver's address (`HOOKS_LISTEN`), from the worker's start-up line.
    pub fn hooks_addr(&self) -> String {
        let log = self.stderr();
        log.lines()
            .find_map(|l| l.strip_prefix("gitlab-worker: hooks on "))
            .unwrap_or_else(|| panic!("the worker did not start its hook receiver:\n{log}"))
            .trim()
            .to_string()
    }
}

/// One HTTP/1.1 request to `addr`: (status, body).
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    use std::io::Write;
    let mut s = TcpStream::connect(addr).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head += &format!("{k}: {v}\r\n");
    }
    if method != "GET" {
        head += &format!("Content-Length: {}\r\n", body.len());
    }
    head += "\r\n";
    s.write_all(head.as_bytes()).unwrap();
    // A server may answer (413) and close before it read the whole body.
    let _ = s.write_all(body);
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let resp = String::from_utf8_lossy(&resp);
    let status = resp
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp.split_once("\r\n\r\n").map_or("", |x| x.1).to_string();
    (status, body)
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Publishes a job; with `msg_id`, as a producer following docs/contract.md does.
pub async fn publish_job(
    js: &jetstream::Context,
    subject: &str,
    payload: impl Into<bytes::Bytes>,
    msg_id: Option<&str>,
) -> jetstream::publish::PublishAck {
    let mut p = jetstream::message::PublishMessage::build().payload(payload.into());
    if let Some(id) = msg_id {
        p = p.message_id(id);
    }
    js.send_publish(subject.to_string(), p)
        .await
        .unwrap()
        .await
        .unwrap()
}

/// Reads messages of `stream` matching `filter` from the start, until `n` arrived or `timeout`.
pub async fn read_stream(
    js: &jetstream::Context,
    stream: &str,
    filter: &str,
    n: usize,
    timeout: Duration,
) -> Vec<jetstream::Message> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut out = Vec::new();
    // The stream may not exist until the worker created it.
    let s = loop {
        match js.get_stream(stream).await {
            Ok(s) => break s,
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("stream {stream}: {e}"),
        }
    };
    let c = s
        .create_consumer(consumer::pull::Config {
            filter_subject: filter.to_string(),
            deliver_policy: consumer::DeliverPolicy::All,
            ack_policy: consumer::AckPolicy::None,
            inactive_threshold: Duration::from_secs(60),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut msgs = c.messages().await.unwrap();
    while out.len() < n {
        match tokio::time::timeout_at(deadline, msgs.next()).await {
            Ok(Some(Ok(m))) => out.push(m),
            Ok(Some(Err(_))) => continue,
            Ok(None) | Err(_) => break,
        }
    }
    out
}

/// Messages currently in a stream (matching `filter`), read without waiting for more.
pub async fn count_stream(js: &jetstream::Context, stream: &str, filter: &str) -> usize {
    let mut s = js.get_stream(stream).await.unwrap();
    let info = s.info().await.unwrap();
    let total = usize::try_from(info.state.messages).unwrap();
    read_stream(js, stream, filter, total, Duration::from_secs(2))
        .await
        .len()
}

/// A sync job envelope.
pub fn sync_job(job_id: &str, connector: &str) -> String {
    serde_json::json!({
        "schema": "gitlab-connector.job.v1",
        "job_id": job_id,
        "connector": connector,
        "kind": "sync",
        "params": {}
    })
    .to_string()
}

/// A validator for one of the schemas in schemas/.
pub fn schema(file: &str) -> jsonschema::Validator {
    let path = workspace_root().join("schemas").join(file);
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    jsonschema::validator_for(&schema).unwrap()
}

/// Panics with every schema violation of `value`.
pub fn assert_valid(v: &jsonschema::Validator, value: &serde_json::Value) {
    let errors: Vec<String> = v.iter_errors(value).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{errors:?}\n{value}");
}

/// The built `gitlab-worker` with `args` and only `env` in its environment: its output.
pub async fn run_worker(args: &[&str], env: &[(String, String)]) -> std::process::Output {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let env = env.to_vec();
    tokio::task::spawn_blocking(move || {
        assert_cmd::Command::cargo_bin("gitlab-worker")
            .unwrap()
            .args(&args)
            .env_clear()
            .envs(env)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

/// The result envelope of `job_id` on the results stream, waiting up to a minute.
pub async fn job_result(js: &jetstream::Context, job_id: &str) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let all = read_stream(
            js,
            "GITLAB_RESULTS",
            "gitlab.results.>",
            1000,
            Duration::from_millis(300),
        )
        .await;
        if let Some(m) = all.iter().find(|m| {
            serde_json::from_slice::<serde_json::Value>(&m.payload).unwrap()["job_id"] == job_id
        }) {
            return serde_json::from_slice(&m.payload).unwrap();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no result for {job_id}"
        );
    }
}
