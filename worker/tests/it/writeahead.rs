//! Write-ahead: every GitLab write has a record before it is sent, so a crash at any point
//! leaves something the redelivery or the scheduler completes or undoes; a write whose audit
//! entry cannot be stored is not made; a job whose last delivery died is still answered.

use std::time::Duration;

use chrono::Utc;
use gitlab_sim::Resource;
use gitlab_worker::jobs::{Delivery, JobResult, JobStatus};
use gitlab_worker::scheduler::run_due;
use gitlab_worker::store::{AuditEntry, GrantState, Store};
use serde_json::json;

use crate::common::{begun, env, job, pending_grant};

fn delivery(attempt: u32, stream_seq: u64) -> Delivery {
    Delivery {
        attempt,
        attempt_budget: 0,
        deferrals: 0,
        stream_seq,
        subject: None,
    }
}

fn parsed(result: &str) -> JobResult {
    serde_json::from_str(result).unwrap()
}

/// The audit entry a first delivery wrote ahead of its GitLab write.
async fn audited_ahead(store: &Store, job_id: &str, group: u64, user: u64) {
    store
        .audit_begin(AuditEntry {
            at: Utc::now(),
            connector: "default".into(),
            job_id: Some(job_id.into()),
            action: "update_member".into(),
            target: json!({"type": "group", "id": group}),
            user_id: Some(user),
            before: Some(json!({"access_level": 30})),
            after: Some(json!({"access_level": 40})),
            outcome: "pending".into(),
        })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_grant_whose_expiry_passed_before_its_redelivery_is_undone_not_rejected() {
    let e = env().await;
    let (group, user) = e.group_and_outsider();
    // A Developer was raised to Maintainer for 2 seconds; the worker died right after
    // GitLab's write, and the redelivery comes after the expiry.
    let expired = Utc::now() - chrono::Duration::seconds(1);
    let payload = job(
        "late-1",
        "grant",
        json!({"user": {"id": user}, "target": {"group": group}, "access_level": 40, "expires_at": (expired - chrono::Duration::seconds(1)).to_rfc3339()}),
    );
    begun(&e, "late-1", "grant", &payload, Duration::ZERO, false).await;
    let g = pending_grant("late-1", group, user, Some(30), 40, Some(expired));
    let applied_date = g.applied.expires_at;
    e.handler.store.record_grant(g).await.unwrap();
    audited_ahead(&e.handler.store, "late-1", group, user).await;
    e.sim
        .sim
        .world
        .write()
        .unwrap()
        .set_member(Resource::Group(group), user, 40, applied_date);
    tokio::time::sleep(Duration::from_millis(5)).await;

    let h = e.handler.handle(&payload, delivery(2, 1)).await.unwrap();
    let r = parsed(&h.result);
    assert_eq!(r.status, JobStatus::Succeeded, "{}", h.result);
    let actions: Vec<&str> = r.changes.iter().map(|c| c.action.as_str()).collect();
    assert_eq!(actions, ["update_member", "restore_member"], "{}", h.result);
    assert!(
        r.warnings.iter().any(|w| w.contains("expiry passed")),
        "{}",
        h.result
    );
    assert_eq!(e.level(group, user), Some(30), "the upgrade is undone");
    let g = e.handler.store.grant("late-1").await.unwrap().unwrap();
    assert_eq!(g.state, GrantState::Ended);
    // The audit log shows the write (its answer never came) and the undo.
    let audit = e.handler.store.audit_entries(Some("late-1")).await.unwrap();
    let seen: Vec<(&str, &str)> = audit
        .iter()
        .map(|a| (a.action.as_str(), a.outcome.as_str()))
        .collect();
    assert_eq!(
        seen,
        [("update_member", "pending"), ("restore_member", "ok")]
    );
    // One jit_expiry event, with the id the scheduler would have used.
    let ids = e.outbox_ids().await;
    assert_eq!(
        ids.iter().filter(|i| *i == "jit_expiry late-1").count(),
        1,
        "{ids:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_grant_with_an_expiry_in_the_past_is_rejected_when_nothing_was_written() {
    let e = env().await;
    let (group, user) = e.group_and_outsider();
    let payload = job(
        "past-1",
        "grant",
        json!({"user": {"id": user}, "target": {"group": group}, "access_level": 30, "expires_at": "2020-01-01T00:00:00Z"}),
    );
    let h = e.handler.handle(&payload, delivery(1, 1)).await.unwrap();
    let r = parsed(&h.result);
    assert_eq!(r.status, JobStatus::Rejected, "{}", h.result);
    assert!(r.error.unwrap().message.contains("is in the past"));
    assert!(e.writes().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pending_grant_is_undone_by_the_scheduler_once_no_delivery_runs_its_job() {
    let e = env().await;
    let (group, user) = e.group_and_outsider();
    let expired = Utc::now() - chrono::Duration::seconds(1);
    let payload = job(
        "orphan-1",
        "grant",
        json!({"user": {"id": user}, "target": {"group": group}, "access_level": 30, "duration_seconds": 60}),
    );
    // A delivery is running the job (its lease is current): the scheduler leaves it alone.
    begun(
        &e,
        "orphan-1",
        "grant",
        &payload,
        Duration::from_secs(60),
        false,
    )
    .await;
    let g = pending_grant("orphan-1", group, user, None, 30, Some(expired));
    let date = g.applied.expires_at;
    e.handler.store.record_grant(g).await.unwrap();
    e.sim
        .sim
        .world
        .write()
        .unwrap()
        .set_member(Resource::Group(group), user, 30, date);
    assert!(run_due(&e.handler).await.is_empty());
    assert_eq!(e.level(group, user), Some(30));
    // The delivery died (its lease ran out) and NATS has no more deliveries for it.
    e.handler.store.release_lease("orphan-1").await.unwrap();
    let done = run_due(&e.handler).await;
    assert_eq!(done.len(), 1);
    assert_eq!(
        e.level(group, user),
        None,
        "the membership it created is removed"
    );
    assert_eq!(
        e.handler
            .store
            .grant("orphan-1")
            .await
            .unwrap()
            .unwrap()
            .state,
        GrantState::Ended
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn no_write_is_made_when_its_audit_entry_cannot_be_stored() {
    let mut e = env().await;
    let (group, user) = e.group_and_outsider();
    let dir = std::env::temp_dir().join(format!("gw-audit-{}", fastrand::u64(..)));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.join("w.db").display());
    e.handler.store = Store::open(&url).await.unwrap();
    // The audit table refuses every insert (a full disk, a permission gone).
    let db = sea_orm::Database::connect(&url).await.unwrap();
    use sea_orm::ConnectionTrait;
    db.execute_unprepared(
        "CREATE TRIGGER audit_down BEFORE INSERT ON audit_log BEGIN SELECT RAISE(FAIL, 'audit log unavailable'); END;",
    )
    .await
    .unwrap();
    e.sim.sim.reset_log();
    let payload = job(
        "noaudit-1",
        "grant",
        json!({"user": {"id": user}, "target": {"group": group}, "access_level": 30}),
    );
    let h = e.handler.handle(&payload, delivery(1, 1)).await.unwrap();
    assert!(
        e.writes().is_empty(),
        "nothing may be written without its audit entry: {:?}",
        e.writes()
    );
    assert_eq!(e.level(group, user), None);
    let r = parsed(&h.result);
    assert!(
        r.error.as_ref().unwrap().message.contains("audit log"),
        "{}",
        h.result
    );
    // Retried once the audit log works again: the grant is made then.
    db.execute_unprepared("DROP TRIGGER audit_down")
        .await
        .unwrap();
    let h = e.handler.handle(&payload, delivery(2, 1)).await.unwrap();
    assert_eq!(
        parsed(&h.result).status,
        JobStatus::Succeeded,
        "{}",
        h.result
    );
    assert_eq!(e.level(group, user), Some(30));
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invitation_sent_before_a_crash_is_not_sent_again() {
    let e = env().await;
    let (group, _) = e.group_and_outsider();
    let payload = job(
        "inv-1",
        "invite",
        json!({"email": "fresh.person@example.org", "target": {"group": group}, "access_level": 30}),
    );
    let first = e.handler.handle(&payload, delivery(1, 1)).await.unwrap();
    assert_eq!(
        parsed(&first.result).status,
        JobStatus::Succeeded,
        "{}",
        first.result
    );
    // The worker died after GitLab's write and before the result was committed: the job is
    // running again with its checkpoint, as a redelivery finds it.
    let again = job(
        "inv-2",
        "invite",
        json!({"email": "fresh.person@example.org", "target": {"group": group}, "access_level": 30}),
    );
    begun(&e, "inv-2", "invite", &again, Duration::ZERO, false).await;
    e.handler
        .store
        .save_progress("inv-2", &json!({"invite": "sending"}).to_string())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    e.sim.sim.reset_log();
    let h = e.handler.handle(&again, delivery(2, 2)).await.unwrap();
    let r = parsed(&h.result);
    assert_eq!(r.status, JobStatus::Succeeded, "{}", h.result);
    assert_eq!(
        r.changes[0].note.as_deref(),
        Some("sent by an earlier attempt of this job")
    );
    assert!(e.writes().is_empty(), "not sent twice: {:?}", e.writes());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_whose_last_delivery_died_is_answered_failed_with_a_dlq_copy() {
    let e = env().await;
    let (group, user) = e.group_and_outsider();
    let payload = job(
        "dead-1",
        "grant",
        json!({"user": {"id": user}, "target": {"group": group}, "access_level": 30}),
    );
    // A delivery that is not the last: a redelivery will come, nothing is answered.
    begun(
        &e,
        "dead-0",
        "grant",
        &job(
            "dead-0",
            "grant",
            json!({"user": {"id": user}, "target": {"group": group}, "access_level": 30}),
        ),
        Duration::ZERO,
        false,
    )
    .await;
    // The last delivery began and died; its lease ran out.
    begun(&e, "dead-1", "grant", &payload, Duration::ZERO, true).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    // Within the grace period nothing is answered yet.
    assert_eq!(e.handler.answer_abandoned().await.unwrap(), 0);
    let stored = e.handler.store.job("dead-1").await.unwrap().unwrap();
    assert!(stored.result.is_none());
    tokio::time::sleep(gitlab_worker::jobs::abandoned::ABANDON_GRACE).await;
    assert_eq!(e.handler.answer_abandoned().await.unwrap(), 1);
    assert_eq!(
        e.handler.answer_abandoned().await.unwrap(),
        0,
        "answered once"
    );
    let stored = e.handler.store.job("dead-1").await.unwrap().unwrap();
    let r = parsed(stored.result.as_deref().unwrap());
    assert_eq!(r.status, JobStatus::Failed);
    assert!(r.error.unwrap().message.contains("last delivery"));
    let ids = e.outbox_ids().await;
    assert!(ids.contains(&"dead-1".to_string()), "{ids:?}");
    assert!(ids.contains(&"dead-1 abandoned".to_string()), "{ids:?}");
    assert!(!ids.iter().any(|i| i.starts_with("dead-0")), "{ids:?}");
    // A delivery that comes after all is answered from the stored result.
    let h = e.handler.handle(&payload, delivery(9, 1)).await.unwrap();
    assert!(h.repeated);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_past_its_deadline_is_stopped_handed_back_then_failed_on_its_last_delivery() {
    let mut e = env().await;
    let (group, user) = e.group_and_outsider();
    e.handler.timeouts.grant = Duration::from_millis(150);
    e.sim.sim.config.lock().unwrap().faults.latency_ms = 400;
    let payload = job(
        "slow-1",
        "grant",
        json!({"user": {"id": user}, "target": {"group": group}, "access_level": 30}),
    );
    let h = e.handler.handle(&payload, delivery(1, 1)).await.unwrap();
    assert!(
        matches!(
            h.disposition,
            gitlab_worker::jobs::Disposition::Retry { .. }
        ),
        "{:?} {}",
        h.disposition,
        h.result
    );
    let last = Delivery {
        attempt: 8,
        attempt_budget: 8,
        deferrals: 0,
        stream_seq: 1,
        subject: None,
    };
    let h = e.handler.handle(&payload, last).await.unwrap();
    let r = parsed(&h.result);
    assert_eq!(r.status, JobStatus::Failed, "{}", h.result);
    let err = r.error.unwrap();
    assert_eq!(err.code, "timeout");
    assert!(
        err.message.contains("JOB_TIMEOUT_SECONDS_GRANT"),
        "{}",
        err.message
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revoke_resumed_after_its_write_reports_the_earlier_removal_and_confirms_its_entry() {
    let e = env().await;
    let (group, user) = e.group_and_outsider();
    e.sim
        .sim
        .world
        .write()
        .unwrap()
        .set_member(Resource::Group(group), user, 30, None);
    let payload = job(
        "rv-1",
        "revoke",
        json!({"user": {"id": user}, "target": {"group": group}}),
    );
    // The first delivery wrote its entry ahead, GitLab removed the member, and the worker died
    // before the answer was recorded.
    begun(&e, "rv-1", "revoke", &payload, Duration::ZERO, false).await;
    e.handler
        .store
        .audit_begin(AuditEntry {
            at: Utc::now(),
            connector: "default".into(),
            job_id: Some("rv-1".into()),
            action: "remove_member".into(),
            target: json!({"type": "group", "id": group}),
            user_id: Some(user),
            before: Some(json!({"access_level": 30})),
            after: None,
            outcome: "pending".into(),
        })
        .await
        .unwrap();
    e.sim
        .sim
        .world
        .write()
        .unwrap()
        .members
        .get_mut(&Resource::Group(group))
        .unwrap()
        .remove(&user);
    tokio::time::sleep(Duration::from_millis(5)).await;
    let h = e.handler.handle(&payload, delivery(2, 2)).await.unwrap();
    let r = parsed(&h.result);
    assert_eq!(
        r.status,
        JobStatus::Succeeded,
        "not a noop: the job did remove it"
    );
    assert_eq!(r.changes.len(), 1, "{}", h.result);
    assert_eq!(r.changes[0].action, "remove_member");
    assert!(
        r.changes[0]
            .note
            .as_deref()
            .unwrap()
            .contains("earlier delivery"),
        "{}",
        h.result
    );
    assert!(e.writes().is_empty(), "not sent again: {:?}", e.writes());
    let entries = e.handler.store.audit_entries(Some("rv-1")).await.unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].outcome, "confirmed");
}
