//! The handler's exactly-once, lease and republish rules, driven through `handle()`.

use std::time::Duration;

use gitlab_sim::{FaultRule, Resource};
use gitlab_worker::jobs::{Delivery, Disposition, JobResult, JobStatus};
use serde_json::json;

use crate::common::{begun, env, job};

fn delivery(attempt: u32, last_attempt: bool, stream_seq: u64) -> Delivery {
    Delivery {
        attempt,
        attempt_budget: if last_attempt { attempt } else { 0 },
        deferrals: 0,
        stream_seq,
        subject: None,
    }
}

fn parsed(result: &str) -> JobResult {
    serde_json::from_str(result).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_id_runs_once_and_its_result_is_republished_under_its_own_message_ids() {
    let e = env().await;
    let (group, user) = e.group_and_outsider();
    let grant = job(
        "grant-1",
        "grant",
        json!({"user": {"id": user}, "target": {"group": group}, "access_level": "developer"}),
    );
    e.sim.sim.reset_log();
    let first = e
        .handler
        .handle(&grant, delivery(1, false, 10))
        .await
        .unwrap();
    assert_eq!(first.status, JobStatus::Succeeded, "{}", first.result);
    assert!(!first.repeated);
    assert_eq!(first.disposition, Disposition::Done { dead_letter: false });
    assert_eq!(e.level(group, user), Some(30));
    let writes = e.writes();
    assert_eq!(writes.len(), 1, "one write in GitLab: {writes:?}");

    // The same job id published again (another stream message): answered from the store.
    let again = e
        .handler
        .handle(&grant, delivery(1, false, 11))
        .await
        .unwrap();
    assert!(again.repeated);
    assert_eq!(
        again.result, first.result,
        "the stored result, byte for byte"
    );
    // The message that ran it, redelivered (its ack was lost): the first message id again.
    let redelivered = e
        .handler
        .handle(&grant, delivery(2, false, 10))
        .await
        .unwrap();
    assert!(redelivered.repeated);
    assert_eq!(e.writes().len(), 1, "nothing executed twice");
    assert_eq!(
        e.outbox_ids().await,
        vec!["grant-1".to_string(), "grant-1 repeat 11".to_string()],
        "a repeat gets an id of its own; a redelivery reuses the first id, so NATS drops it"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_running_in_another_delivery_is_handed_back_until_its_last_delivery() {
    let e = env().await;
    let (group, user) = e.group_and_outsider();
    let grant = job(
        "busy-1",
        "grant",
        json!({"user": {"id": user}, "target": {"group": group}, "access_level": 30}),
    );
    // Another delivery holds a current lease on the job id.
    begun(
        &e,
        "busy-1",
        "grant",
        &grant,
        Duration::from_secs(60),
        false,
    )
    .await;
    e.sim.sim.reset_log();
    let h = e
        .handler
        .handle(&grant, delivery(2, false, 6))
        .await
        .unwrap();
    assert!(
        matches!(h.disposition, Disposition::Retry { delay } if delay >= Duration::from_secs(1)),
        "{:?}",
        h.disposition
    );
    let last = e
        .handler
        .handle(&grant, delivery(8, true, 6))
        .await
        .unwrap();
    // Its deliveries ran out while the job runs elsewhere: answered failed (this message was
    // not executed) and dead-lettered, under a message id of its own.
    assert_eq!(last.disposition, Disposition::Done { dead_letter: true });
    let r = parsed(&last.result);
    assert_eq!(r.status, JobStatus::Failed, "{}", last.result);
    assert_eq!(r.error.as_ref().unwrap().code, "conflict");
    assert!(
        e.outbox_ids()
            .await
            .contains(&"busy-1 rejected 6".to_string())
    );
    assert!(
        e.writes().is_empty(),
        "a busy job is not executed: {:?}",
        e.writes()
    );
    assert_eq!(e.level(group, user), None);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_delivery_waits_in_place_for_a_dead_holders_lease_and_runs_the_job_without_spending_a_delivery()
 {
    let e = env().await;
    let (group, user) = e.group_and_outsider();
    let grant = job(
        "dead-holder-1",
        "grant",
        json!({"user": {"id": user}, "target": {"group": group}, "access_level": 30}),
    );
    // A delivery took the job id and died: its 300 ms lease is not renewed. The handler
    // waits up to 1.5 s (common::env) in place.
    begun(
        &e,
        "dead-holder-1",
        "grant",
        &grant,
        Duration::from_millis(300),
        false,
    )
    .await;
    e.sim.sim.reset_log();
    let h = e
        .handler
        .handle(&grant, delivery(2, false, 7))
        .await
        .unwrap();
    // Answered by this very delivery: no hand-back, which would spend one of its deliveries.
    assert_eq!(h.disposition, Disposition::Done { dead_letter: false });
    assert_eq!(h.status, JobStatus::Succeeded, "{}", h.result);
    assert_eq!(e.level(group, user), Some(30));
    assert_eq!(e.writes().len(), 1, "{:?}", e.writes());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_grant_resumed_after_a_crash_keeps_the_prior_state_written_ahead() {
    let e = env().await;
    let (group, user) = e.group_and_outsider();
    let grant = job(
        "crash-1",
        "grant",
        json!({"user": {"id": user}, "target": {"group": group}, "access_level": 40, "duration_seconds": 3600}),
    );
    // The first delivery wrote the grant ahead (the Reporter membership before, Maintainer
    // intended), wrote to GitLab and died before the answer; its lease has run out.
    begun(&e, "crash-1", "grant", &grant, Duration::ZERO, false).await;
    let expires = chrono::Utc::now() + chrono::Duration::hours(1);
    let date = gitlab_worker::jobs::grant::gitlab_date(expires);
    e.handler
        .store
        .record_grant(crate::common::pending_grant(
            "crash-1",
            group,
            user,
            Some(20),
            40,
            Some(expires),
        ))
        .await
        .unwrap();
    e.sim
        .sim
        .world
        .write()
        .unwrap()
        .set_member(Resource::Group(group), user, 40, Some(date));
    tokio::time::sleep(Duration::from_millis(5)).await; // past the zero-length lease
    e.sim.sim.reset_log();

    let h = e
        .handler
        .handle(&grant, delivery(2, false, 1))
        .await
        .unwrap();
    let r = parsed(&h.result);
    assert_eq!(r.status, JobStatus::Succeeded, "{}", h.result);
    assert_eq!(r.attempt, 2);
    assert_eq!(r.changes[0].action, "update_member");
    assert_eq!(
        r.changes[0].before,
        Some(json!({"access_level": 20, "expires_at": null, "member_role_id": null}))
    );
    assert_eq!(
        r.grant.as_ref().unwrap()["expires_at"],
        json!(expires),
        "the expiry written ahead, not one counted from the redelivery"
    );
    assert!(
        e.writes().is_empty(),
        "the write was already in effect: {:?}",
        e.writes()
    );
    let g = e.handler.store.grant("crash-1").await.unwrap().unwrap();
    assert_eq!(g.state, gitlab_worker::store::GrantState::Active);
    assert_eq!(g.prior.map(|p| p.access_level), Some(20));

    // Ending the grant restores what was there before the first delivery.
    let revoke = job("crash-1-end", "revoke", json!({"grant_job_id": "crash-1"}));
    let h = e
        .handler
        .handle(&revoke, delivery(1, false, 2))
        .await
        .unwrap();
    assert_eq!(
        parsed(&h.result).status,
        JobStatus::Succeeded,
        "{}",
        h.result
    );
    assert_eq!(e.level(group, user), Some(20));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_transient_failure_is_retried_and_answered_failed_on_the_last_delivery() {
    let e = env().await;
    let (group, user) = e.group_and_outsider();
    e.sim
        .sim
        .config
        .lock()
        .unwrap()
        .faults
        .rules
        .push(FaultRule {
            path: format!("/groups/{group}"),
            status: Some(503),
            method: Some("GET".into()),
            ..Default::default()
        });
    let grant = job(
        "flaky-1",
        "grant",
        json!({"user": {"id": user}, "target": {"group": group}, "access_level": 30}),
    );
    let h = e
        .handler
        .handle(&grant, delivery(1, false, 3))
        .await
        .unwrap();
    assert!(
        matches!(h.disposition, Disposition::Retry { .. }),
        "{:?}",
        h.disposition
    );
    assert!(
        e.outbox_ids().await.is_empty(),
        "no result while the job may still succeed"
    );

    let last = e
        .handler
        .handle(&grant, delivery(8, true, 3))
        .await
        .unwrap();
    assert_eq!(last.disposition, Disposition::Done { dead_letter: true });
    let r = parsed(&last.result);
    assert_eq!(r.status, JobStatus::Failed);
    assert_eq!(r.attempt, 2, "the second delivery that reached the handler");
    let error = r.error.unwrap();
    assert_eq!(error.code, "gitlab_error");
    assert!(error.retryable);
    assert_eq!(e.outbox_ids().await, vec!["flaky-1".to_string()]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rejected_job_does_not_claim_its_id() {
    let e = env().await;
    let (group, user) = e.group_and_outsider();
    let broken = job(
        "fixme-1",
        "grant",
        json!({"user": {"id": user}, "target": {"group": group}, "access_level": "admin"}),
    );
    let h = e
        .handler
        .handle(&broken, delivery(1, false, 20))
        .await
        .unwrap();
    assert_eq!(h.status, JobStatus::Rejected);
    assert_eq!(h.disposition, Disposition::Done { dead_letter: true });
    assert!(h.error.as_ref().unwrap().message.contains("access_level"));
    assert!(e.handler.store.job("fixme-1").await.unwrap().is_none());

    // The corrected job reuses the id and runs.
    let fixed = job(
        "fixme-1",
        "grant",
        json!({"user": {"id": user}, "target": {"group": group}, "access_level": "reporter"}),
    );
    let h = e
        .handler
        .handle(&fixed, delivery(1, false, 21))
        .await
        .unwrap();
    assert_eq!(h.status, JobStatus::Succeeded, "{}", h.result);
    assert!(!h.repeated);
    assert_eq!(e.level(group, user), Some(20));
    assert_eq!(
        e.outbox_ids().await,
        vec!["fixme-1 rejected 20".to_string(), "fixme-1".to_string()]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_connector_is_rejected_naming_the_configured_ones() {
    let e = env().await;
    let mut bytes: serde_json::Value =
        serde_json::from_slice(&job("x-1", "sync", json!({}))).unwrap();
    bytes["connector"] = json!("elsewhere");
    let h = e
        .handler
        .handle(&serde_json::to_vec(&bytes).unwrap(), delivery(1, false, 30))
        .await
        .unwrap();
    assert_eq!(h.status, JobStatus::Rejected);
    let error = h.error.unwrap();
    assert_eq!(error.code, "unknown_connector");
    assert!(
        error.message.contains("configured: default"),
        "{}",
        error.message
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_oversized_job_is_rejected_unread_and_the_next_job_runs() {
    let e = env().await;
    let (group, user) = e.group_and_outsider();
    let filler = "A".repeat(2 * 1024 * 1024);
    let big = job(
        "big-1",
        "grant",
        json!({"user": {"id": user}, "target": {"group": group}, "access_level": 30, "reason": filler}),
    );
    let h = e
        .handler
        .handle(&big, delivery(1, false, 40))
        .await
        .unwrap();
    assert_eq!(h.status, JobStatus::Rejected);
    assert!(
        h.result.len() < 2_000,
        "the answer echoes the job: {} bytes",
        h.result.len()
    );
    assert!(!h.result.contains("AAAA"));
    assert!(h.error.unwrap().message.contains("NATS_MAX_JOB_BYTES"));
    let normal = job(
        "small-1",
        "grant",
        json!({"user": {"id": user}, "target": {"group": group}, "access_level": 30}),
    );
    let h = e
        .handler
        .handle(&normal, delivery(1, false, 41))
        .await
        .unwrap();
    assert_eq!(h.status, JobStatus::Succeeded, "{}", h.result);
    assert_eq!(
        e.outbox_ids().await,
        vec!["rejected 40".to_string(), "small-1".to_string()]
    );
}

/// The GitLab requests of the handled jobs, as routes, in order.
fn routes(e: &crate::common::Env) -> Vec<String> {
    e.sim
        .sim
        .requests()
        .into_iter()
        .filter(|r| !r.path.starts_with("/_sim"))
        .map(|r| r.route)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_grant_and_a_revoke_read_only_what_they_decide_from() {
    let e = env().await;
    let (subgroup, user) = {
        let world = e.sim.sim.world.read().unwrap();
        let sub = world
            .groups
            .values()
            .find(|g| g.parent_id.is_some() && g.full_path.starts_with(&e.sim.scope))
            .expect("a subgroup of the scope")
            .clone();
        // A user with no membership on it or above it: no access to explain.
        let above: Vec<Resource> = world
            .groups
            .values()
            .filter(|g| sub.full_path.starts_with(&format!("{}/", g.full_path)) || g.id == sub.id)
            .map(|g| Resource::Group(g.id))
            .collect();
        let user = world
            .users
            .values()
            .filter(|u| !u.is_admin && !u.is_bot() && u.state == "active")
            .map(|u| u.id)
            .find(|id| {
                above
                    .iter()
                    .all(|r| world.members.get(r).is_none_or(|m| !m.contains_key(id)))
            })
            .expect("a user with no access to the subgroup");
        (sub, user)
    };
    let target = json!({"group": subgroup.full_path});
    let grant = |id: &str| {
        job(
            id,
            "grant",
            json!({"user": {"id": user}, "target": target, "access_level": 30}),
        )
    };
    e.sim.sim.reset_log();
    let first = e
        .handler
        .handle(&grant("lean-1"), delivery(1, false, 1))
        .await
        .unwrap();
    assert_eq!(first.status, JobStatus::Succeeded, "{}", first.result);
    // The group's parent is not read (nothing is inherited to explain); the top-level
    // group's SAML links are read once.
    assert_eq!(
        routes(&e),
        [
            "GET /groups/:id",
            "GET /users/:id",
            "GET /groups/:id/members/:user_id",
            "GET /groups/:id/members/all/:user_id",
            "GET /groups/:id/saml_group_links",
            "POST /groups/:id/members",
        ]
    );
    // Its write's outcome and the grant's activation were committed with the result.
    let store = &e.handler.store;
    let outcomes = |job: &'static str| async move {
        store
            .audit_entries(Some(job))
            .await
            .unwrap()
            .into_iter()
            .map(|a| (a.action, a.outcome))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        outcomes("lean-1").await,
        [("add_member".to_string(), "ok".to_string())]
    );
    let state = |job: &'static str| async move { store.grant(job).await.unwrap().unwrap().state };
    assert_eq!(
        state("lean-1").await,
        gitlab_worker::store::GrantState::Active
    );

    let revoke = job(
        "lean-revoke-1",
        "revoke",
        json!({"user": {"id": user}, "target": target}),
    );
    e.sim.sim.reset_log();
    let revoked = e
        .handler
        .handle(&revoke, delivery(1, false, 2))
        .await
        .unwrap();
    assert_eq!(revoked.status, JobStatus::Succeeded, "{}", revoked.result);
    assert_eq!(parsed(&revoked.result).residual_access, Some(json!([])));
    // The direct membership is read once, before its removal; after it only what is left.
    assert_eq!(
        routes(&e),
        [
            "GET /groups/:id",
            "GET /users/:id",
            // The token's own user (never revoked): read once per worker.
            "GET /user",
            "GET /groups/:id/members/:user_id",
            "DELETE /groups/:id/members/:user_id",
            "GET /groups/:id/members/all/:user_id",
        ]
    );
    assert_eq!(
        outcomes("lean-revoke-1").await,
        [("remove_member".to_string(), "ok".to_string())]
    );
    assert_eq!(
        state("lean-1").await,
        gitlab_worker::store::GrantState::Ended,
        "the revoke ended the grant on the membership it removed"
    );

    // A second grant under the same top-level group reuses its SAML links.
    e.sim.sim.reset_log();
    let again = e
        .handler
        .handle(&grant("lean-2"), delivery(1, false, 3))
        .await
        .unwrap();
    assert_eq!(again.status, JobStatus::Succeeded, "{}", again.result);
    assert!(
        !routes(&e).iter().any(|r| r.contains("saml")),
        "{:?}",
        routes(&e)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_first_delivery_that_finds_its_grant_already_recorded_completes_that_record() {
    let e = env().await;
    let (group, user) = e.group_and_outsider();
    // A grant record under this job id outlived its job's row: the record is the grant, not
    // what this delivery would plan from its parameters (level 40).
    e.handler
        .store
        .record_grant(crate::common::pending_grant(
            "orphan-1", group, user, None, 30, None,
        ))
        .await
        .unwrap();
    let grant = job(
        "orphan-1",
        "grant",
        json!({"user": {"id": user}, "target": {"group": group}, "access_level": 40}),
    );
    let h = e
        .handler
        .handle(&grant, delivery(1, false, 1))
        .await
        .unwrap();
    assert_eq!(h.status, JobStatus::Succeeded, "{}", h.result);
    assert_eq!(e.level(group, user), Some(30), "{}", h.result);
    let g = e.handler.store.grant("orphan-1").await.unwrap().unwrap();
    assert_eq!(g.state, gitlab_worker::store::GrantState::Active);
    assert_eq!(g.applied.access_level, 30);
}
