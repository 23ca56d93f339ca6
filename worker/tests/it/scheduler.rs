//! The JIT scheduler's claims are leases, failures are retried per grant with a backoff and
//! reported, and an undone grant's state and event are committed together.

use std::time::Duration;

use chrono::Utc;
use gitlab_sim::FaultRule;
use gitlab_worker::jobs::{Clock, Delivery, JobStatus};
use gitlab_worker::scheduler::{CLAIM_LEASE, FAILURES_BEFORE_ALERT, retry_delay, run_due};
use gitlab_worker::store::GrantState;
use serde_json::json;

use crate::common::{Env, env, job};

fn delivery(seq: u64) -> Delivery {
    Delivery {
        attempt: 1,
        attempt_budget: 0,
        deferrals: 0,
        stream_seq: seq,
        subject: None,
    }
}

async fn jit(e: &Env, id: &str, group: u64, user: u64, seq: u64) {
    let j = job(
        id,
        "grant",
        json!({"user": {"id": user}, "target": {"group": group}, "access_level": 30, "duration_seconds": 60}),
    );
    let h = e.handler.handle(&j, delivery(seq)).await.unwrap();
    assert_eq!(h.status, JobStatus::Succeeded, "{}", h.result);
}

/// Two users outside the scope group.
fn outsiders(e: &Env) -> (u64, u64, u64) {
    let (group, first) = e.group_and_outsider();
    let w = e.sim.sim.world.read().unwrap();
    let members = w.members.get(&gitlab_sim::Resource::Group(group));
    let second = w
        .users
        .values()
        .filter(|u| !u.is_admin && !u.is_bot() && u.state == "active" && u.id != first)
        .map(|u| u.id)
        .find(|id| members.is_none_or(|m| !m.contains_key(id)))
        .expect("a second outsider");
    (group, first, second)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_claim_left_by_a_dead_worker_is_taken_over_as_soon_as_it_lapses() {
    let mut e = env().await;
    let (group, user) = e.group_and_outsider();
    jit(&e, "lease-1", group, user, 1).await;
    let later = Utc::now() + chrono::Duration::seconds(120);
    // A worker claimed the grant and died: its claim lapsed five seconds ago.
    let claimed_at =
        later - chrono::Duration::from_std(CLAIM_LEASE).unwrap() - chrono::Duration::seconds(5);
    assert!(
        e.handler
            .store
            .claim_grant("lease-1", claimed_at, CLAIM_LEASE, false)
            .await
            .unwrap()
    );
    assert_eq!(
        e.handler
            .store
            .grant("lease-1")
            .await
            .unwrap()
            .unwrap()
            .state,
        GrantState::Ending
    );
    e.handler.clock = Clock::fixed(later);
    let done = run_due(&e.handler).await;
    assert_eq!(done.len(), 1, "the lapsed claim is taken over");
    assert_eq!(e.level(group, user), None, "the grant is undone");
    let g = e.handler.store.grant("lease-1").await.unwrap().unwrap();
    assert_eq!(g.state, GrantState::Ended);
    assert!(
        e.outbox_ids()
            .await
            .contains(&"jit_expiry lease-1".to_string())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_current_claim_is_left_to_its_worker() {
    let mut e = env().await;
    let (group, user) = e.group_and_outsider();
    jit(&e, "lease-2", group, user, 1).await;
    let later = Utc::now() + chrono::Duration::seconds(120);
    assert!(
        e.handler
            .store
            .claim_grant("lease-2", later, CLAIM_LEASE, false)
            .await
            .unwrap()
    );
    e.handler.clock = Clock::fixed(later + chrono::Duration::seconds(1));
    assert!(
        run_due(&e.handler).await.is_empty(),
        "another worker holds it"
    );
    assert_eq!(e.level(group, user), Some(30));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_undo_backs_off_for_its_grant_alone_and_alerts_once() {
    let mut e = env().await;
    let (group, failing, fine) = outsiders(&e);
    jit(&e, "fail-1", group, failing, 1).await;
    jit(&e, "ok-1", group, fine, 2).await;
    // Reading the failing grant's membership answers 503; the other one's works.
    e.sim
        .sim
        .config
        .lock()
        .unwrap()
        .faults
        .rules
        .push(FaultRule {
            path: format!("/groups/{group}/members/{failing}"),
            status: Some(503),
            method: Some("GET".into()),
            ..Default::default()
        });
    let mut now = Utc::now() + chrono::Duration::seconds(120);
    e.handler.clock = Clock::fixed(now);
    let done = run_due(&e.handler).await;
    assert_eq!(done.len(), 1, "the other grant is undone in the same tick");
    assert_eq!(done[0].grant_job_id, "ok-1");
    assert_eq!(e.level(group, fine), None);
    let g = e.handler.store.grant("fail-1").await.unwrap().unwrap();
    assert_eq!((g.state, g.undo_attempts), (GrantState::Active, 1));
    // Not before its backoff.
    assert!(run_due(&e.handler).await.is_empty());
    for attempt in 2..=FAILURES_BEFORE_ALERT + 1 {
        now += chrono::Duration::from_std(retry_delay(attempt - 1)).unwrap()
            + chrono::Duration::seconds(1);
        e.handler.clock = Clock::fixed(now);
        assert!(run_due(&e.handler).await.is_empty());
        let g = e.handler.store.grant("fail-1").await.unwrap().unwrap();
        assert_eq!(g.undo_attempts, attempt);
    }
    let alerts = e
        .outbox_ids()
        .await
        .into_iter()
        .filter(|id| id == "jit_expiry_failed fail-1")
        .count();
    assert_eq!(alerts, 1, "a person is told once");
    let alert = e
        .outbox()
        .await
        .into_iter()
        .find_map(|m| match m {
            gitlab_worker::store::OutboxMessage::Publish {
                msg_id, payload, ..
            } if msg_id == "jit_expiry_failed fail-1" => {
                Some(serde_json::from_str::<serde_json::Value>(&payload).unwrap())
            }
            _ => None,
        })
        .unwrap();
    assert_eq!(alert["cause"], "jit_expiry_failed");
    assert_eq!(alert["attempts"], FAILURES_BEFORE_ALERT);
    let schema_path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../schemas/gitlab-connector.event.v1.schema.json");
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(schema_path).unwrap()).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    assert!(validator.is_valid(&alert), "{alert}");
    // GitLab answers again: the next attempt undoes it.
    e.sim.sim.config.lock().unwrap().faults.rules.clear();
    now += chrono::Duration::from_std(retry_delay(FAILURES_BEFORE_ALERT + 1)).unwrap();
    e.handler.clock = Clock::fixed(now + chrono::Duration::seconds(1));
    assert_eq!(run_due(&e.handler).await.len(), 1);
    assert_eq!(e.level(group, failing), None);
}

#[test]
fn retry_delays_double_up_to_five_minutes() {
    assert_eq!(retry_delay(1), Duration::from_secs(1));
    assert_eq!(retry_delay(2), Duration::from_secs(2));
    assert_eq!(retry_delay(5), Duration::from_secs(16));
    assert_eq!(retry_delay(40), Duration::from_secs(300));
}
