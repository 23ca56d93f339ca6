//! GitLab (or a proxy in front of it) answering what no client should have to believe: waits of
//! three thousand years, resets in the past, bodies of 100 MB, pages whose next page is
//! themselves, and one request in five failing with 5xx. Each ends in a clear answer for the job
//! that met it, and the worker goes on serving the next one.

use std::collections::BTreeMap;
use std::time::Duration;

use gitlab_connector::client::RetryPolicy;
use gitlab_sim::{FaultRule, Resource, UserRateLimit};
use gitlab_worker::jobs::{Delivery, JobResult, JobStatus};
use serde_json::json;

use crate::common::{Env, env, job};

fn delivery(stream_seq: u64) -> Delivery {
    Delivery {
        attempt: 1,
        attempt_budget: 0,
        deferrals: 0,
        stream_seq,
        subject: None,
    }
}

/// A subgroup of the scope that has direct members: its member list is where the faults go.
fn subgroup_with_members(e: &Env) -> u64 {
    let world = e.sim.sim.world.read().unwrap();
    let top = world
        .groups
        .values()
        .find(|g| g.full_path == e.sim.scope)
        .unwrap()
        .id;
    world
        .groups
        .values()
        .filter(|g| g.parent_id == Some(top))
        .map(|g| g.id)
        .find(|id| {
            world
                .members
                .get(&Resource::Group(*id))
                .is_some_and(|m| !m.is_empty())
        })
        .expect("a subgroup with members")
}

fn headers(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Runs a sync job with `rule` on the subgroup's member list and returns its result; the hang
/// guard only turns a loop into a failure message instead of a stuck suite.
async fn sync_with(e: &Env, seq: u64, rule: FaultRule) -> JobResult {
    e.sim.sim.config.lock().unwrap().faults.rules = vec![rule];
    let sync = job(&format!("sync-{seq}"), "sync", json!({}));
    let h = tokio::time::timeout(
        Duration::from_secs(120),
        e.handler.handle(&sync, delivery(seq)),
    )
    .await
    .expect("the sync ends instead of looping or waiting")
    .expect("the handler answers");
    e.sim.sim.config.lock().unwrap().faults.rules.clear();
    serde_json::from_str(&h.result).unwrap()
}

/// After each fault, a grant on the same connector runs as if nothing happened: no lock was
/// poisoned, no pause was taken for the whole connector.
async fn still_serving(e: &Env, seq: u64) {
    let (group, user) = e.group_and_outsider();
    let grant = job(
        &format!("after-{seq}"),
        "grant",
        json!({"user": {"id": user}, "target": {"group": group}, "access_level": 30}),
    );
    let h = tokio::time::timeout(
        Duration::from_secs(30),
        e.handler.handle(&grant, delivery(seq + 1000)),
    )
    .await
    .expect("the next job is not held up")
    .unwrap();
    assert_eq!(h.status, JobStatus::Succeeded, "{}", h.result);
    let revoke = job(
        &format!("undo-{seq}"),
        "revoke",
        json!({"user": {"id": user}, "target": {"group": group}}),
    );
    let h = e
        .handler
        .handle(&revoke, delivery(seq + 2000))
        .await
        .unwrap();
    assert_eq!(h.status, JobStatus::Succeeded, "{}", h.result);
}

/// The read error the result names for the subgroup's members.
fn named_error(r: &JobResult, group: u64, code: &str) {
    assert_eq!(r.status, JobStatus::Failed, "{r:?}");
    let error = r.error.as_ref().unwrap();
    assert_eq!(error.code, "partial_snapshot", "{}", error.message);
    assert!(
        error.message.contains(&format!("group {group}")) && error.message.contains(code),
        "the answer names what could not be read and why: {}",
        error.message
    );
    let snapshot = r
        .snapshot
        .as_ref()
        .expect("the partial snapshot is reported");
    assert_eq!(snapshot["complete"], false);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retry_after_of_three_thousand_years_is_a_read_error_not_a_pause() {
    let e = env().await;
    let group = subgroup_with_members(&e);
    let r = sync_with(
        &e,
        1,
        FaultRule {
            path: format!("/groups/{group}/members"),
            status: Some(429),
            headers: headers(&[("retry-after", "99999999999")]),
            ..Default::default()
        },
    )
    .await;
    named_error(&r, group, "rate_limited");
    still_serving(&e, 1).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rate_limit_reset_in_the_past_is_ignored_on_answers_and_on_429s() {
    let e = env().await;
    let group = subgroup_with_members(&e);
    // On ordinary answers it changes nothing: the sync completes.
    let r = sync_with(
        &e,
        1,
        FaultRule {
            path: format!("/groups/{group}"),
            headers: headers(&[
                ("ratelimit-reset", "-1"),
                ("ratelimit-remaining", "0"),
                ("ratelimit-limit", "-1"),
            ]),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(r.status, JobStatus::Succeeded, "{r:?}");
    // On a 429 (which this client is not allowed to retry) it is the job's rate_limited read.
    let r = sync_with(
        &e,
        2,
        FaultRule {
            path: format!("/groups/{group}/members"),
            status: Some(429),
            headers: headers(&[("ratelimit-reset", "-1"), ("ratelimit-remaining", "0")]),
            ..Default::default()
        },
    )
    .await;
    named_error(&r, group, "rate_limited");
    still_serving(&e, 2).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_100_mb_body_is_refused_at_the_limit_not_buffered() {
    let e = env().await;
    let group = subgroup_with_members(&e);
    let r = sync_with(
        &e,
        1,
        FaultRule {
            path: format!("/groups/{group}/members"),
            body_bytes: Some(100 * 1024 * 1024),
            ..Default::default()
        },
    )
    .await;
    named_error(&r, group, "response_too_large");
    still_serving(&e, 1).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_page_whose_next_page_is_itself_ends_the_list_with_an_error() {
    let e = env().await;
    let group = subgroup_with_members(&e);
    let r = sync_with(
        &e,
        1,
        FaultRule {
            path: format!("/groups/{group}/members"),
            headers: headers(&[("link", "<{self}>; rel=\"next\"")]),
            ..Default::default()
        },
    )
    .await;
    named_error(&r, group, "page_loop");
    let requests = e
        .sim
        .sim
        .requests()
        .into_iter()
        .filter(|q| q.path.starts_with(&format!("/groups/{group}/members")))
        .count();
    assert!(
        requests <= 3,
        "the loop is noticed at once, not after {requests} requests"
    );
    still_serving(&e, 1).await;
}

/// GitLab sends `RateLimit-*` on every response once a throttle is on, 5xx included; a server
/// error used to be waited out until `RateLimit-Reset` for the whole connector. With one request
/// in five failing and a limit nobody reaches, the sync completes with per-request retries and
/// no rate-limit wait at all. (How long it takes against a fault-free sync is measured by the
/// benchmark, `faults` in bench/results.)
#[tokio::test(flavor = "multi_thread")]
async fn one_request_in_five_failing_with_5xx_is_retried_per_request_without_a_connector_pause() {
    let mut e = env().await;
    e.with_retries(RetryPolicy {
        min_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(200),
        max_retries: 12,
        ..RetryPolicy::default()
    });
    {
        let mut config = e.sim.sim.config.lock().unwrap();
        config.rate_limit = Some(UserRateLimit {
            limit: 1_000_000,
            period_secs: 60,
        });
        config.faults.error_rate = 0.2;
    }
    let sync = job("sync-5xx", "sync", json!({}));
    let h = e.handler.handle(&sync, delivery(1)).await.unwrap();
    let r: JobResult = serde_json::from_str(&h.result).unwrap();
    assert_eq!(r.status, JobStatus::Succeeded, "{r:?}");
    let requests = e.sim.sim.requests();
    let errors = requests.iter().filter(|q| q.status >= 500).count();
    assert!(errors > 0, "the faults were on");
    let stats = e.client().stats();
    assert_eq!(
        stats.total_retries(),
        errors as u64,
        "each 5xx retried once"
    );
    assert_eq!(
        stats
            .routes
            .values()
            .map(|r| r.rate_limit_wait_ms)
            .sum::<u64>(),
        0,
        "no request waited for the rate-limit window: {stats:?}"
    );
}
