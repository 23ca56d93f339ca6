//! Who may ask for what: each rule of the connector's policy, the subject check, job ids bound to
//! their payload, and message ids no job id can take. Every denial is `rejected` with the code
//! and a message naming the setting, and nothing is written in GitLab.

use std::collections::BTreeSet;

use gitlab_sim::{Resource, UserKind};
use gitlab_worker::jobs::{Clock, Delivery, JobResult, JobStatus};
use gitlab_worker::policy::Policy;
use serde_json::{Value, json};

use crate::common::{Env, env, env_with, job};

fn delivery(stream_seq: u64, subject: Option<&str>) -> Delivery {
    Delivery {
        attempt: 1,
        attempt_budget: 0,
        deferrals: 0,
        stream_seq,
        subject: subject.map(str::to_string),
    }
}

async fn run(e: &Env, bytes: &[u8], seq: u64) -> JobResult {
    let h = e.handler.handle(bytes, delivery(seq, None)).await.unwrap();
    serde_json::from_str(&h.result).unwrap()
}

/// The job is rejected with `code`, its message names `setting`, and GitLab saw no write.
async fn assert_denied(e: &Env, bytes: &[u8], seq: u64, code: &str, setting: &str) {
    e.sim.sim.reset_log();
    let r = run(e, bytes, seq).await;
    assert_eq!(r.status, JobStatus::Rejected, "{r:?}");
    let error = r.error.expect("an error");
    assert_eq!(error.code, code, "{}", error.message);
    assert!(
        error.message.contains(setting),
        "{:?} does not name {setting}",
        error.message
    );
    assert!(e.writes().is_empty(), "written: {:?}", e.writes());
}

fn grant(id: &str, user: u64, target: Value, level: Value, extra: Value) -> Vec<u8> {
    let mut params = json!({"user": {"id": user}, "target": target, "access_level": level});
    if let (Value::Object(p), Value::Object(x)) = (&mut params, extra) {
        p.extend(x);
    }
    job(id, "grant", params)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_published_on_another_kinds_subject_is_rejected_unexecuted() {
    let e = env().await;
    let (_, user) = e.group_and_outsider();
    let deprovision = job("sneaky-1", "deprovision", json!({"user": {"id": user}}));
    e.sim.sim.reset_log();
    let h = e
        .handler
        .handle(&deprovision, delivery(3, Some("gitlab.jobs.default.sync")))
        .await
        .unwrap();
    assert_eq!(h.status, JobStatus::Rejected);
    let error = h.error.unwrap();
    assert_eq!(error.code, "subject_mismatch");
    assert!(
        error.message.contains("gitlab.jobs.default.deprovision"),
        "{}",
        error.message
    );
    assert!(e.writes().is_empty());
    assert!(
        e.handler.store.job("sneaky-1").await.unwrap().is_none(),
        "a rejected job does not claim its id"
    );
    // On its own subject the same job is accepted (and runs).
    let ok = e
        .handler
        .handle(
            &deprovision,
            delivery(4, Some("gitlab.jobs.default.deprovision")),
        )
        .await
        .unwrap();
    assert_ne!(ok.status, JobStatus::Rejected, "{}", ok.result);
}

#[tokio::test(flavor = "multi_thread")]
async fn targets_and_sync_scopes_outside_the_connector_scope_are_denied() {
    let e = env().await;
    let (_, user) = e.group_and_outsider();
    let outside = {
        let mut w = e.sim.sim.world.write().unwrap();
        let g = w.add_group("elsewhere", None);
        w.reindex();
        g
    };
    let setting = "scope / GITLAB_SCOPE";
    for (i, target) in [json!({"group": outside}), json!({"group": "elsewhere"})]
        .into_iter()
        .enumerate()
    {
        let j = grant(&format!("out-{i}"), user, target, json!(30), json!({}));
        assert_denied(&e, &j, 10 + i as u64, "policy_denied", setting).await;
    }
    let invite = job(
        "out-invite",
        "invite",
        json!({"email": "x@example.com", "target": {"group": "elsewhere"}, "access_level": 30}),
    );
    assert_denied(&e, &invite, 20, "policy_denied", setting).await;
    let revoke = job(
        "out-revoke",
        "revoke",
        json!({"user": {"id": user}, "target": {"group": outside}}),
    );
    assert_denied(&e, &revoke, 21, "policy_denied", setting).await;
    for (i, scope) in ["instance", "elsewhere"].into_iter().enumerate() {
        let sync = job(&format!("out-sync-{i}"), "sync", json!({"scope": scope}));
        assert_denied(&e, &sync, 30 + i as u64, "policy_denied", setting).await;
    }
    // Inside the scope, by path or by id, a sync is allowed.
    let inside = job("in-sync", "sync", json!({"scope": e.sim.scope}));
    assert_eq!(run(&e, &inside, 40).await.status, JobStatus::Succeeded);
}

#[tokio::test(flavor = "multi_thread")]
async fn levels_durations_and_permanent_grants_follow_the_policy() {
    let e = env().await;
    let (group, user) = e.group_and_outsider();
    let target = json!({"group": group});
    let level = "max_grant_level / GITLAB_MAX_GRANT_LEVEL";
    assert_denied(
        &e,
        &grant("owner-1", user, target.clone(), json!("owner"), json!({})),
        1,
        "policy_denied",
        level,
    )
    .await;
    assert_denied(
        &e,
        &grant(
            "owner-jit",
            user,
            target.clone(),
            json!(50),
            json!({"duration_seconds": 600}),
        ),
        2,
        "policy_denied",
        level,
    )
    .await;
    let invite = job(
        "owner-invite",
        "invite",
        json!({"email": "x@example.com", "target": {"group": group}, "access_level": "owner"}),
    );
    assert_denied(&e, &invite, 3, "policy_denied", level).await;
    let jit = "max_jit_seconds / GITLAB_MAX_JIT_SECONDS";
    assert_denied(
        &e,
        &grant(
            "long-1",
            user,
            target.clone(),
            json!(30),
            json!({"duration_seconds": 31 * 86_400}),
        ),
        4,
        "policy_denied",
        jit,
    )
    .await;
    let far = (chrono::Utc::now() + chrono::Duration::days(40)).to_rfc3339();
    assert_denied(
        &e,
        &grant(
            "long-2",
            user,
            target.clone(),
            json!(30),
            json!({"expires_at": far}),
        ),
        5,
        "policy_denied",
        jit,
    )
    .await;

    let strict = env_with(Policy {
        allow_permanent_grants: false,
        max_grant_level: gitlab_connector::api::AccessLevel::OWNER,
        ..Policy::default()
    })
    .await;
    let (group, user) = strict.group_and_outsider();
    let permanent = grant(
        "perm-1",
        user,
        json!({"group": group}),
        json!(30),
        json!({}),
    );
    assert_denied(
        &strict,
        &permanent,
        6,
        "policy_denied",
        "allow_permanent_grants / GITLAB_ALLOW_PERMANENT_GRANTS",
    )
    .await;
    // Owner configured explicitly, for a bounded time: allowed.
    let owner = grant(
        "owner-ok",
        user,
        json!({"group": group}),
        json!("owner"),
        json!({"duration_seconds": 600}),
    );
    assert_eq!(run(&strict, &owner, 7).await.status, JobStatus::Succeeded);
    assert_eq!(strict.level(group, user), Some(50));
}

#[tokio::test(flavor = "multi_thread")]
async fn ban_and_delete_must_be_allowed_explicitly() {
    let e = env().await;
    let (_, user) = e.group_and_outsider();
    let actions = "account_actions / GITLAB_ACCOUNT_ACTIONS";
    for (i, action) in ["ban", "delete"].into_iter().enumerate() {
        let j = job(
            &format!("acct-{i}"),
            "deprovision",
            json!({"user": {"id": user}, "actions": ["remove_memberships", action]}),
        );
        assert_denied(&e, &j, 1 + i as u64, "policy_denied", actions).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn protected_accounts_are_never_deprovisioned_or_stripped() {
    let listed = env()
        .await
        .user_where(|u| !u.is_admin && !u.is_bot() && u.state == "active");
    let e = env_with(Policy {
        protected_users: BTreeSet::from([listed.1.to_lowercase()]),
        ..Policy::default()
    })
    .await;
    let admin = e.user_where(|u| u.is_admin);
    let bot = e.user_where(|u| u.kind == UserKind::ProjectBot);
    let token_user = {
        let w = e.sim.sim.world.read().unwrap();
        w.tokens
            .values()
            .find(|t| t.value == e.sim.token)
            .map(|t| t.user_id)
            .expect("the token's user")
    };
    let group = e.group_and_outsider().0;
    let setting = "protected_users / GITLAB_PROTECTED_USERS";
    for (i, user) in [admin.0, bot.0, token_user, listed.0]
        .into_iter()
        .enumerate()
    {
        let deprovision = job(
            &format!("prot-{i}"),
            "deprovision",
            json!({"user": {"id": user}}),
        );
        assert_denied(&e, &deprovision, 1 + i as u64, "policy_denied", setting).await;
        let revoke = job(
            &format!("prot-revoke-{i}"),
            "revoke",
            json!({"user": {"id": user}, "target": {"group": group}}),
        );
        assert_denied(&e, &revoke, 20 + i as u64, "policy_denied", setting).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_id_binds_its_payload() {
    let e = env().await;
    let (group, user) = e.group_and_outsider();
    let first = grant(
        "bound-1",
        user,
        json!({"group": group}),
        json!(20),
        json!({}),
    );
    assert_eq!(run(&e, &first, 1).await.status, JobStatus::Succeeded);
    // The same id, another payload (a deprovision): refused, and the first result is not
    // published to it.
    let other = job("bound-1", "deprovision", json!({"user": {"id": user}}));
    assert_denied(&e, &other, 2, "job_id_conflict", "bound-1").await;
    assert_eq!(e.level(group, user), Some(20), "nothing was undone");
    // The same job, written differently (key order, whitespace): the same job.
    let v: Value = serde_json::from_slice(&first).unwrap();
    let mut reordered = String::from("{\n");
    let obj = v.as_object().unwrap();
    for (i, k) in obj.keys().rev().enumerate() {
        if i > 0 {
            reordered.push_str(",\n  ");
        }
        reordered.push_str(&format!("{}: {}", Value::String(k.clone()), obj[k]));
    }
    reordered.push_str("\n}");
    let h = e
        .handler
        .handle(reordered.as_bytes(), delivery(3, None))
        .await
        .unwrap();
    assert!(h.repeated, "{}", h.result);
    assert_eq!(h.status, JobStatus::Succeeded);
    assert_eq!(
        e.outbox_ids().await,
        vec![
            "bound-1".to_string(),
            "bound-1 rejected 2".to_string(),
            "bound-1 repeat 3".to_string()
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_named_like_an_expiry_event_does_not_suppress_it() {
    let mut e = env().await;
    let (group, user) = e.group_and_outsider();
    // A job whose id is what an expiry event's message id used to be.
    let squatter = job("g1:expired", "sync", json!({}));
    assert_eq!(run(&e, &squatter, 1).await.status, JobStatus::Succeeded);
    let jit = grant(
        "g1",
        user,
        json!({"group": group}),
        json!(30),
        json!({"duration_seconds": 60}),
    );
    assert_eq!(run(&e, &jit, 2).await.status, JobStatus::Succeeded);
    e.handler.clock = Clock::fixed(chrono::Utc::now() + chrono::Duration::seconds(120));
    let expired = gitlab_worker::scheduler::run_due(&e.handler).await;
    assert_eq!(expired.len(), 1);
    assert_eq!(e.level(group, user), None, "the grant was undone");
    let ids = e.outbox_ids().await;
    assert!(ids.contains(&"g1:expired".to_string()), "{ids:?}");
    assert!(
        ids.contains(&"jit_expiry g1".to_string()),
        "the expiry event is queued: {ids:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn members_of_the_scope_are_still_provisioned_normally() {
    let e = env().await;
    let (group, user) = e.group_and_outsider();
    let project = {
        let w = e.sim.sim.world.read().unwrap();
        w.projects
            .values()
            .find(|p| {
                p.path_with_namespace
                    .starts_with(&format!("{}/", e.sim.scope))
            })
            .map(|p| p.id)
            .expect("a project in the scope")
    };
    let j = grant(
        "in-1",
        user,
        json!({"project": project}),
        json!("maintainer"),
        json!({"duration_seconds": 3600}),
    );
    assert_eq!(run(&e, &j, 1).await.status, JobStatus::Succeeded);
    let w = e.sim.sim.world.read().unwrap();
    let level = w
        .members
        .get(&Resource::Project(project))
        .and_then(|m| m.get(&user))
        .map(|m| m.access_level);
    assert_eq!(level, Some(40));
    let _ = group;
}
