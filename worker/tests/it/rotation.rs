//! One token rotation at a time per connector, in one process and across workers: two
//! `rotate_token` jobs at once rotate once, nothing presents a revoked token (which would make
//! GitLab revoke the whole token family), and every worker goes on with the new token.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use gitlab_connector::client::{BaseUrl, RetryPolicy};
use gitlab_connector::{Client, InstanceKind, Secret};
use gitlab_sim::SeededSim;
use gitlab_worker::config::{ClientLimits, ConnectorSettings, TokenSource};
use gitlab_worker::connector::Connector;
use gitlab_worker::ids::ConnectorId;
use gitlab_worker::jobs::{Clock, Delivery, Disposition, Handler, JobStatus};
use gitlab_worker::policy::Policy;
use gitlab_worker::store::Store;
use gitlab_worker::subjects::Subjects;
use serde_json::json;

use crate::common::{env, job};

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "gitlab-worker-it-{name}-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A worker's handler whose connector reads its token from `token_file`.
fn worker(sim: &SeededSim, store: Store, token_file: &Path, spool: &Path) -> Handler {
    let id = ConnectorId::parse("default").unwrap();
    let token = std::fs::read_to_string(token_file).unwrap();
    let settings = ConnectorSettings {
        id: id.clone(),
        url: BaseUrl::parse(&sim.url).unwrap(),
        token: Secret::new(token.trim()),
        token_source: TokenSource::File(token_file.to_path_buf()),
        token_file: Some(token_file.to_path_buf()),
        scope: Some(sim.scope.clone()),
        rate_limit_per_minute: None,
        instance: Some(InstanceKind::SelfManaged),
        allow_create_users: false,
        rotate_when_days_left: 0,
        policy: Policy::default(),
        limits: ClientLimits::default(),
        webhook_secret: None,
        webhook_secret_file: None,
    };
    let mut config = settings.client_config();
    config.retry = RetryPolicy::none();
    Handler {
        store,
        connectors: BTreeMap::from([(
            id,
            Arc::new(Connector::new(settings, Client::new(config).unwrap(), None)),
        )]),
        subjects: Subjects::new("gitlab"),
        spool_dir: spool.to_path_buf(),
        publish: true,
        lease: Duration::from_secs(30),
        busy_wait: Duration::from_millis(1_500),
        clock: Clock::system(),
        max_job_bytes: 256 * 1024,
        timeouts: Default::default(),
    }
}

fn delivery(attempt: u32, seq: u64) -> Delivery {
    Delivery {
        attempt,
        attempt_budget: 0,
        deferrals: 0,
        stream_seq: seq,
        subject: None,
    }
}

fn rotations(sim: &SeededSim) -> usize {
    sim.sim
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path.contains("personal_access_tokens/self/rotate"))
        .count()
}

/// The token in the file works in GitLab (it was not revoked, nor its family).
async fn file_token_works(sim: &SeededSim, token_file: &Path) -> bool {
    let token = std::fs::read_to_string(token_file).unwrap();
    let c = Client::new(gitlab_connector::ClientConfig::new(
        BaseUrl::parse(&sim.url).unwrap(),
        Secret::new(token.trim()),
    ))
    .unwrap();
    c.token_self().await.is_ok_and(|t| t.active)
}

#[tokio::test(flavor = "multi_thread")]
async fn two_rotations_at_once_in_one_worker_rotate_once() {
    let e = env().await;
    let dir = temp_dir("rot1");
    let file = dir.join("token");
    std::fs::write(&file, format!("{}\n", e.sim.token)).unwrap();
    let h = worker(
        &e.sim,
        Store::open("sqlite::memory:").await.unwrap(),
        &file,
        &dir,
    );
    e.sim.sim.reset_log();
    let (job_a, job_b) = (
        job("rot-a", "rotate_token", json!({})),
        job("rot-b", "rotate_token", json!({})),
    );
    let (a, b) = tokio::join!(
        h.handle(&job_a, delivery(1, 1)),
        h.handle(&job_b, delivery(1, 2)),
    );
    let mut statuses = [a.unwrap().status, b.unwrap().status];
    statuses.sort_by_key(|s| *s as u8);
    assert_eq!(statuses, [JobStatus::Succeeded, JobStatus::Noop]);
    assert_eq!(rotations(&e.sim), 1);
    assert!(file_token_works(&e.sim, &file).await);
    // The worker goes on with the new token.
    let c = &h.connectors["default"].client;
    assert!(c.token_self().await.unwrap().active);
}

#[tokio::test(flavor = "multi_thread")]
async fn two_rotations_at_once_on_two_workers_rotate_once_and_both_keep_working() {
    let e = env().await;
    let dir = temp_dir("rot2");
    let file = dir.join("token");
    std::fs::write(&file, format!("{}\n", e.sim.token)).unwrap();
    let db = format!("sqlite://{}?mode=rwc", dir.join("shared.db").display());
    let first = worker(
        &e.sim,
        Store::open(&db).await.unwrap(),
        &file,
        &dir.join("s1"),
    );
    let second = worker(
        &e.sim,
        Store::open(&db).await.unwrap(),
        &file,
        &dir.join("s2"),
    );
    e.sim.sim.reset_log();
    let job_a = job("rot-a", "rotate_token", json!({}));
    let job_b = job("rot-b", "rotate_token", json!({}));
    let (a, b) = tokio::join!(
        first.handle(&job_a, delivery(1, 1)),
        second.handle(&job_b, delivery(1, 2)),
    );
    let (a, mut b) = (a.unwrap(), b.unwrap());
    if let Disposition::Retry { .. } = b.disposition {
        // The other worker held the rotation: the redelivery finds the new token in the file.
        b = second.handle(&job_b, delivery(2, 2)).await.unwrap();
    }
    let a = if let Disposition::Retry { .. } = a.disposition {
        first.handle(&job_a, delivery(2, 1)).await.unwrap()
    } else {
        a
    };
    let mut statuses = [a.status, b.status];
    statuses.sort_by_key(|s| *s as u8);
    assert_eq!(
        statuses,
        [JobStatus::Succeeded, JobStatus::Noop],
        "{}\n{}",
        a.result,
        b.result
    );
    assert_eq!(rotations(&e.sim), 1, "one rotation");
    assert!(
        file_token_works(&e.sim, &file).await,
        "no family revocation"
    );
    for h in [&first, &second] {
        let c = &h.connectors["default"].client;
        assert!(
            c.token_self().await.unwrap().active,
            "a worker lost its token"
        );
    }
}
