//! The worker's persistence, run identically on SQLite and on PostgreSQL: migrations, the job
//! idempotency key, the outbox, snapshots stored temporally (little written for little change,
//! every snapshot exported byte-identically) and the audit log.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use gitlab_connector::Client;
use gitlab_connector::Secret;
use gitlab_connector::api::{AccessLevel, AddMember, EditMember, RemoveMember, Source};
use gitlab_connector::client::{BaseUrl, ClientConfig, IdOrPath};
use gitlab_connector::model::{Record, ResourceRef};
use gitlab_connector::sync::{self, Scope, SnapshotMeta, SyncOptions};
use gitlab_e2e::{PgDb, sqlite_url, tempdir};
use gitlab_sim::{Mode, SeedSpec};
use gitlab_worker::store::{
    AuditEntry, Begin, GrantState, NewJob, OutboxLane, OutboxMessage, Settlement, Store,
};

enum Backend {
    Sqlite(PathBuf),
    Postgres(PgDb),
}

impl Backend {
    fn url(&self) -> String {
        match self {
            Backend::Sqlite(d) => sqlite_url(d),
            Backend::Postgres(db) => db.url.clone(),
        }
    }
}

async fn sqlite() -> Backend {
    Backend::Sqlite(tempdir("store"))
}

async fn postgres() -> Backend {
    Backend::Postgres(PgDb::create().await)
}

/// Runs one test body on both backends.
macro_rules! on_both {
    ($name:ident, $body:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread")]
            async fn sqlite() {
                super::$body(super::sqlite().await).await;
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn postgres() {
                super::$body(super::postgres().await).await;
            }
        }
    };
}

on_both!(migrations, migrations_apply_once);
on_both!(jobs, a_job_id_is_recorded_once_and_its_result_kept);
on_both!(outbox, outbox_rows_are_unique_by_message_id_and_marked_sent);
on_both!(
    temporal,
    snapshots_are_stored_temporally_and_exported_byte_identically
);
on_both!(audit, the_audit_log_keeps_every_write);
on_both!(
    settlement,
    a_jobs_end_commits_its_result_messages_and_settlement_together
);
on_both!(
    outbox_lanes,
    results_are_published_apart_from_announcements_and_each_lane_is_woken_for_its_own
);
on_both!(
    outbox_owners,
    workers_sharing_a_database_publish_their_own_outbox_rows_and_take_over_stale_ones
);
on_both!(
    changes,
    change_batches_are_chained_and_laid_over_their_snapshot
);
on_both!(
    replay,
    facts_read_during_a_sync_are_applied_again_on_its_snapshot
);
on_both!(
    point_in_time,
    answers_at_a_time_include_the_live_batches_before_it
);
on_both!(backfill, record_lookup_columns_are_backfilled_as_written);

/// The pool does not ping a connection on every checkout (a round trip per statement), yet a
/// connection the server dropped while it sat idle is found out and replaced before a
/// statement is sent on it.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_connections_dropped_while_idle_are_replaced_before_use() {
    let db = PgDb::create().await;
    let store = Store::open(&db.url).await.unwrap();
    assert!(store.job("none").await.unwrap().is_none());
    assert!(
        db.terminate_connections().await >= 1,
        "the store's connection was open"
    );
    // The condition under test is the connections' idle time itself.
    tokio::time::sleep(
        gitlab_worker::store::POOL_PING_AFTER_IDLE + std::time::Duration::from_millis(200),
    )
    .await;
    for n in 0..3 {
        store
            .job("none")
            .await
            .unwrap_or_else(|e| panic!("statement {n} after the server dropped the pool: {e}"));
    }
}

/// Records the first delivery of job `id` (of `kind`), as a worker does before running it.
async fn start_job(store: &Store, id: &str, kind: &str) {
    let begun = store
        .begin_job(
            &NewJob {
                job_id: id,
                connector: "default",
                kind,
                request: "{}",
                payload_sha256: "h",
                stream_seq: 1,
                delivered: 1,
                attempt_budget: 0,
            },
            std::time::Duration::from_secs(30),
        )
        .await
        .unwrap();
    assert!(matches!(begun, Begin::New), "{begun:?}");
}

/// The message ids of the outbox rows this store would publish next, oldest first.
async fn unsent_ids(store: &Store) -> Vec<String> {
    store
        .unsent_outbox(OutboxLane::Results, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|(_, m)| m.msg_id().to_string())
        .collect()
}

async fn migrations_apply_once(b: Backend) {
    let store = Store::connect(&b.url()).await.unwrap();
    assert_eq!(store.pending_migrations().await.unwrap(), 11);
    store.migrate().await.unwrap();
    assert_eq!(store.pending_migrations().await.unwrap(), 0);
    // Opening again (every command migrates on start) changes nothing.
    let again = Store::open(&b.url()).await.unwrap();
    assert_eq!(again.pending_migrations().await.unwrap(), 0);
    again.ping().await.unwrap();
}

async fn a_job_id_is_recorded_once_and_its_result_kept(b: Backend) {
    let store = Store::open(&b.url()).await.unwrap();
    let lease = std::time::Duration::from_secs(60);
    let begin = |seq| {
        let store = store.clone();
        async move {
            store
                .begin_job(
                    &NewJob {
                        job_id: "job-1",
                        connector: "default",
                        kind: "sync",
                        request: "{}",
                        payload_sha256: "h1",
                        stream_seq: seq,
                        delivered: 1,
                        attempt_budget: 0,
                    },
                    lease,
                )
                .await
                .unwrap()
        }
    };
    // Two deliveries racing: exactly one runs the job, the other finds it busy.
    let (x, y) = tokio::join!(begin(10), begin(11));
    let mut seen = [&x, &y].map(|b| format!("{b:?}"));
    seen.sort();
    assert_eq!(seen, ["Busy", "New"], "{x:?} {y:?}");
    assert_eq!(begin(12).await, Begin::Busy, "the lease is current");
    // The running delivery dies: once its lease is over another one resumes it.
    store.save_progress("job-1", "{\"step\":2}").await.unwrap();
    store.release_lease("job-1").await.unwrap();
    match begin(13).await {
        Begin::Resume {
            attempts, progress, ..
        } => {
            assert_eq!(attempts, 2);
            assert_eq!(progress.as_deref(), Some("{\"step\":2}"));
        }
        other => panic!("{other:?}"),
    }
    store.renew_lease("job-1", lease).await.unwrap();
    assert_eq!(begin(14).await, Begin::Busy);
    store
        .finish_job(
            "job-1",
            "succeeded",
            "{\"status\":\"succeeded\"}",
            vec![],
            &Default::default(),
        )
        .await
        .unwrap();
    match begin(15).await {
        Begin::Finished { result, stream_seq } => {
            assert_eq!(result, "{\"status\":\"succeeded\"}");
            assert!(
                stream_seq == 10 || stream_seq == 11,
                "the delivery that ran it"
            );
        }
        other => panic!("{other:?}"),
    }
    let row = store.job("job-1").await.unwrap().unwrap();
    assert_eq!(row.status.as_deref(), Some("succeeded"));
    assert_eq!(row.attempts, 2);
}

async fn outbox_rows_are_unique_by_message_id_and_marked_sent(b: Backend) {
    let store = Store::open(&b.url()).await.unwrap();
    start_job(&store, "j", "sync").await;
    let msg = |id: &str| OutboxMessage::Publish {
        msg_id: id.into(),
        subject: "gitlab.results.default.sync".into(),
        payload: format!("{{\"id\":\"{id}\"}}"),
    };
    store
        .finish_job(
            "j",
            "succeeded",
            "{}",
            vec![msg("a"), msg("b")],
            &Default::default(),
        )
        .await
        .unwrap();
    // The same message again (a retried commit) is not queued twice.
    store.enqueue(vec![msg("a"), msg("c")]).await.unwrap();
    let rows = store.unsent_outbox(OutboxLane::Results, 10).await.unwrap();
    let ids: Vec<&str> = rows.iter().map(|(_, m)| m.msg_id()).collect();
    assert_eq!(ids, ["a", "b", "c"], "in commit order");
    store.mark_sent(&[rows[0].0]).await.unwrap();
    let left = unsent_ids(&store).await;
    assert_eq!(left, ["b", "c"]);
    assert_eq!(rows[1].1, msg("b"));
}

/// A commit that announces something (a sync's snapshot object, events and access diff) goes
/// whole to the events lane, its result included, in commit order; a commit of a result alone
/// goes to the results lane, so its publisher never waits while a sync's snapshot is exported
/// and diffed. Each commit wakes its own lane's publisher only.
async fn results_are_published_apart_from_announcements_and_each_lane_is_woken_for_its_own(
    b: Backend,
) {
    use futures::FutureExt;
    let store = Store::open(&b.url()).await.unwrap();
    let commits = store.outbox_commits();
    let woken = |lane| commits.committed(lane).now_or_never().is_some();
    let publish = |id: &str, subject: &str| OutboxMessage::Publish {
        msg_id: id.into(),
        subject: subject.into(),
        payload: "{}".into(),
    };
    let ids = |rows: Vec<(i64, OutboxMessage)>| {
        rows.into_iter()
            .map(|(_, m)| m.msg_id().to_string())
            .collect::<Vec<_>>()
    };
    // A sync's commit: its object, its two events and its result.
    store
        .enqueue(vec![
            OutboxMessage::SnapshotObject {
                msg_id: "object s1".into(),
                object_name: "default/s1.ndjson".into(),
                snapshot_id: "s1".into(),
            },
            publish("snapshot s1", "gitlab.events.default.snapshot"),
            OutboxMessage::AccessEvents {
                msg_id: "access s1".into(),
                subject: "gitlab.events.default.access".into(),
                spec: "{}".into(),
            },
            publish("sync-1", "gitlab.results.default.sync"),
        ])
        .await
        .unwrap();
    assert!(
        woken(OutboxLane::Events),
        "a sync's commit wakes the events lane"
    );
    assert!(!woken(OutboxLane::Results), "and not the results lane");
    // A grant's result, committed after the sync's rows.
    start_job(&store, "grant-1", "grant").await;
    store
        .finish_job(
            "grant-1",
            "succeeded",
            "{}",
            vec![publish("grant-1", "gitlab.results.default.grant")],
            &Settlement::default(),
        )
        .await
        .unwrap();
    assert!(
        woken(OutboxLane::Results),
        "a result's commit wakes the results lane"
    );
    assert!(!woken(OutboxLane::Events));
    // A live change batch's event: an announcement, after the sync's.
    store
        .enqueue(vec![publish("live b1 1", "gitlab.events.default.access")])
        .await
        .unwrap();
    assert_eq!(
        ids(store.unsent_outbox(OutboxLane::Results, 10).await.unwrap()),
        ["grant-1"],
        "the grant's result does not wait behind the sync's announcements"
    );
    assert_eq!(
        ids(store.unsent_outbox(OutboxLane::Events, 10).await.unwrap()),
        [
            "object s1",
            "snapshot s1",
            "access s1",
            "sync-1",
            "live b1 1"
        ],
        "announcements keep their commit order, each commit's rows together"
    );
}

async fn workers_sharing_a_database_publish_their_own_outbox_rows_and_take_over_stale_ones(
    b: Backend,
) {
    use sea_orm::{ConnectionTrait, Statement};
    // Two workers (two stores: two owners) on one database.
    let first = Store::open(&b.url()).await.unwrap();
    let second = Store::open(&b.url()).await.unwrap();
    let msg = |id: &str| OutboxMessage::Publish {
        msg_id: id.into(),
        subject: "gitlab.results.default.grant".into(),
        payload: "{}".into(),
    };
    first.enqueue(vec![msg("first-1")]).await.unwrap();
    second.enqueue(vec![msg("second-1")]).await.unwrap();
    first.enqueue(vec![msg("first-2")]).await.unwrap();
    let ids = |rows: Vec<(i64, OutboxMessage)>| {
        rows.into_iter()
            .map(|(_, m)| m.msg_id().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ids(first.unsent_outbox(OutboxLane::Results, 10).await.unwrap()),
        ["first-1", "first-2"]
    );
    assert_eq!(
        ids(second.unsent_outbox(OutboxLane::Results, 10).await.unwrap()),
        ["second-1"]
    );
    // The first worker dies; its rows wait past the takeover time: the second publishes them,
    // in order, before its own newer ones.
    let db = sea_orm::Database::connect(b.url()).await.unwrap();
    let old = chrono::Utc::now()
        - chrono::Duration::from_std(gitlab_worker::store::OUTBOX_TAKEOVER).unwrap()
        - chrono::Duration::seconds(1);
    let old = match db.get_database_backend() {
        sea_orm::DbBackend::Sqlite => old.to_rfc3339_opts(chrono::SecondsFormat::Micros, false),
        _ => old.to_rfc3339(),
    };
    db.execute_raw(Statement::from_string(
        db.get_database_backend(),
        format!("UPDATE outbox SET created_at = '{old}' WHERE msg_id LIKE 'first-%'"),
    ))
    .await
    .unwrap();
    second.enqueue(vec![msg("second-2")]).await.unwrap();
    assert_eq!(
        ids(second.unsent_outbox(OutboxLane::Results, 10).await.unwrap()),
        ["first-1", "second-1", "first-2", "second-2"]
    );
}

async fn the_audit_log_keeps_every_write(b: Backend) {
    let store = Store::open(&b.url()).await.unwrap();
    for (i, action) in ["add_member", "remove_member"].into_iter().enumerate() {
        let id = store
            .audit_begin(AuditEntry {
                at: chrono::Utc::now(),
                connector: "default".into(),
                job_id: Some("grant-1".into()),
                action: action.into(),
                target: serde_json::json!({"type": "group", "id": 42}),
                user_id: Some(7),
                before: (i == 1).then(|| serde_json::json!({"access_level": 30})),
                after: (i == 0).then(|| serde_json::json!({"access_level": 30})),
                outcome: "pending".into(),
            })
            .await
            .unwrap();
        // Written ahead, completed after: the second write's answer never came.
        if i == 0 {
            store.audit_finish(id, "ok").await.unwrap();
        }
    }
    let entries = store.audit_entries(Some("grant-1")).await.unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0].outcome, "ok");
    assert_eq!(entries[1].outcome, "pending");
    assert_eq!(entries[0].action, "add_member");
    assert_eq!(entries[1].before.as_deref(), Some("{\"access_level\":30}"));
    assert!(store.audit_entries(Some("other")).await.unwrap().is_empty());
}

/// A job's end commits its result, the messages announcing it, the outcomes of its audited
/// writes and its grant's activation together (one statement on PostgreSQL); a job handed
/// back commits its outcomes alone.
async fn a_jobs_end_commits_its_result_messages_and_settlement_together(b: Backend) {
    let store = Store::open(&b.url()).await.unwrap();
    let entry = |job: &str, action: &str| AuditEntry {
        at: chrono::Utc::now(),
        connector: "default".into(),
        job_id: Some(job.into()),
        action: action.into(),
        target: serde_json::json!({"type": "group", "id": 42}),
        user_id: Some(7),
        before: None,
        after: Some(serde_json::json!({"access_level": 30})),
        outcome: "pending".into(),
    };
    let begin = |job: &'static str| {
        let store = store.clone();
        async move {
            store
                .begin_job(
                    &NewJob {
                        job_id: job,
                        connector: "default",
                        kind: "grant",
                        request: "{}",
                        payload_sha256: job,
                        stream_seq: 1,
                        delivered: 1,
                        attempt_budget: 0,
                    },
                    std::time::Duration::from_secs(30),
                )
                .await
                .unwrap()
        }
    };
    let grant = |job: &str| gitlab_worker::store::GrantRecord {
        job_id: job.into(),
        connector: "default".into(),
        target_kind: gitlab_connector::provision::TargetKind::Group,
        target_id: 42,
        target_path: "org".into(),
        user_id: 7,
        created: true,
        prior: None,
        applied: gitlab_connector::provision::MemberState {
            access_level: 30,
            expires_at: None,
            member_role_id: None,
        },
        expires_at: None,
        state: GrantState::Pending,
        ended_at: None,
        note: None,
        undo_attempts: 0,
        held_slot: None,
    };
    let result_msg = |id: &str| OutboxMessage::Publish {
        msg_id: id.into(),
        subject: "gitlab.results.default.grant".into(),
        payload: "{}".into(),
    };

    assert_eq!(begin("g-1").await, Begin::New);
    assert!(store.record_grant(grant("g-1")).await.unwrap());
    let add = store.audit_begin(entry("g-1", "add_member")).await.unwrap();
    let edit = store
        .audit_begin(entry("g-1", "update_member"))
        .await
        .unwrap();
    // A message id already in the outbox (a result published again) is kept, not an error.
    store.enqueue(vec![result_msg("already")]).await.unwrap();
    store
        .finish_job(
            "g-1",
            "succeeded",
            "{\"status\":\"succeeded\"}",
            vec![result_msg("already"), result_msg("result-g-1")],
            &Settlement {
                audit_outcomes: vec![(add, "ok".into()), (edit, "conflict".into())],
                grant_active: true,
            },
        )
        .await
        .unwrap();
    let outcomes: Vec<_> = store
        .audit_entries(Some("g-1"))
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.action, e.outcome))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("add_member".to_string(), "ok".to_string()),
            ("update_member".to_string(), "conflict".to_string())
        ]
    );
    assert_eq!(
        store.grant("g-1").await.unwrap().unwrap().state,
        GrantState::Active
    );
    let job = store.job("g-1").await.unwrap().unwrap();
    assert_eq!(job.status.as_deref(), Some("succeeded"));
    assert_eq!(job.result.as_deref(), Some("{\"status\":\"succeeded\"}"));
    let queued = unsent_ids(&store).await;
    assert_eq!(queued, ["already", "result-g-1"]);

    // Handed back: the outcomes are stored, the job is not finished, its grant stays pending.
    assert_eq!(begin("g-2").await, Begin::New);
    assert!(store.record_grant(grant("g-2")).await.unwrap());
    let add = store.audit_begin(entry("g-2", "add_member")).await.unwrap();
    store
        .settle(
            "g-2",
            &Settlement {
                audit_outcomes: vec![(add, "unavailable".into())],
                grant_active: false,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        store.audit_entries(Some("g-2")).await.unwrap()[0].outcome,
        "unavailable"
    );
    assert_eq!(
        store.grant("g-2").await.unwrap().unwrap().state,
        GrantState::Pending
    );
    assert!(store.job("g-2").await.unwrap().unwrap().result.is_none());
    // Nothing to settle is nothing written.
    store.settle("g-2", &Settlement::default()).await.unwrap();

    // A deprovision's many writes: more outcomes than one statement binds at a time.
    assert_eq!(begin("d-1").await, Begin::New);
    let mut outcomes = Vec::new();
    for n in 0..1_001 {
        let id = store
            .audit_begin(entry("d-1", "remove_member"))
            .await
            .unwrap();
        outcomes.push((id, if n == 500 { "not_found" } else { "ok" }.to_string()));
    }
    store
        .finish_job(
            "d-1",
            "succeeded",
            "{}",
            vec![],
            &Settlement {
                audit_outcomes: outcomes,
                grant_active: false,
            },
        )
        .await
        .unwrap();
    let stored = store.audit_entries(Some("d-1")).await.unwrap();
    assert_eq!(stored.len(), 1_001);
    assert_eq!(stored.iter().filter(|e| e.outcome == "ok").count(), 1_000);
    assert_eq!(stored[500].outcome, "not_found");
}

async fn sync_to(client: &Client, dir: &Path, name: &str, prev: Option<String>) -> PathBuf {
    let path = dir.join(name);
    let file = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    let opts = SyncOptions::new(Scope::parse("org").unwrap());
    let (summary, _) = sync::run(
        client,
        &opts,
        SnapshotMeta::new("default", "org"),
        prev,
        file,
    )
    .await
    .unwrap();
    assert!(summary.complete);
    path
}

fn body_lines(p: &Path) -> HashSet<String> {
    let text = std::fs::read_to_string(p).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    lines[1..lines.len() - 1]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

async fn export(store: &Store, id: &str) -> Vec<u8> {
    let snap = store.find_snapshot(id).await.unwrap();
    let mut out = Vec::new();
    store.export_snapshot(&snap, &mut out).await.unwrap();
    out
}

/// A seeded self-managed simulator (kept alive by the caller) and a client for it.
async fn seeded_client(seed: u64) -> (gitlab_sim::SeededSim, Client) {
    gitlab_connector::client::install_crypto_provider();
    let sim = gitlab_sim::start_seeded(&SeedSpec::small(seed, Mode::SelfManaged))
        .await
        .unwrap();
    let client = Client::new(ClientConfig::new(
        BaseUrl::parse(&sim.url).unwrap(),
        Secret::new(sim.token.clone()),
    ))
    .unwrap();
    (sim, client)
}

async fn snapshots_are_stored_temporally_and_exported_byte_identically(b: Backend) {
    let (_sim, client) = seeded_client(3).await;
    let dir = tempdir("temporal");
    let store = Store::open(&b.url()).await.unwrap();

    let a = sync_to(&client, &dir, "a.ndjson", None).await;
    let sa = store.store_snapshot(&a, None).await.unwrap();
    let all = body_lines(&a).len() as u64;
    assert_eq!(
        (sa.rows_inserted, sa.rows_closed, sa.rows_unchanged),
        (all, 0, 0)
    );

    // Change GitLab a little: one membership's level, one membership removed, one added.
    let records: Vec<Record> = gitlab_connector::snapshot::records(std::io::BufReader::new(
        std::fs::File::open(&a).unwrap(),
    ))
    .map(Result::unwrap)
    .collect();
    let group_members: Vec<(u64, u64, u16)> = records
        .iter()
        .filter_map(|r| match r {
            Record::Membership(m) => match m.resource {
                ResourceRef::Group(g) if m.access_level < 50 && m.access_level >= 10 => {
                    Some((g, m.user_id, m.access_level))
                }
                _ => None,
            },
            _ => None,
        })
        .collect();
    let (g, u1, level) = group_members[0];
    let (g2, u2, _) = *group_members.iter().find(|(_, u, _)| *u != u1).unwrap();
    let src = |g| Source::Group(IdOrPath::Id(g));
    client
        .edit_member(
            &src(g),
            u1,
            &EditMember {
                access_level: AccessLevel(if level == 40 { 30 } else { 40 }),
                expires_at: None,
                member_role_id: None,
            },
        )
        .await
        .unwrap();
    client
        .remove_member(
            &src(g2),
            u2,
            RemoveMember {
                skip_subresources: true,
                unassign_issuables: false,
            },
        )
        .await
        .unwrap();
    let member_of_g: HashSet<u64> = records
        .iter()
        .filter_map(|r| match r {
            Record::Membership(m) if m.resource == ResourceRef::Group(g) => Some(m.user_id),
            _ => None,
        })
        .collect();
    let newcomer = records
        .iter()
        .find_map(|r| match r {
            Record::User(u)
                if !member_of_g.contains(&u.id)
                    && u.kind == gitlab_connector::model::UserKind::Human =>
            {
                Some(u.id)
            }
            _ => None,
        })
        .unwrap();
    client
        .add_member(
            &src(g),
            &AddMember {
                user_id: newcomer,
                access_level: AccessLevel(20),
                expires_at: None,
                member_role_id: None,
            },
        )
        .await
        .unwrap();

    let bfile = sync_to(&client, &dir, "b.ndjson", Some(sa.info.sha256.clone())).await;
    let sb = store.store_snapshot(&bfile, None).await.unwrap();
    let (la, lb) = (body_lines(&a), body_lines(&bfile));
    let added = lb.difference(&la).count() as u64;
    let gone = la.difference(&lb).count() as u64;
    assert!(
        added >= 3 && added < all / 2,
        "a small change writes little: {added} of {all}"
    );
    assert_eq!(sb.rows_inserted, added);
    assert_eq!(sb.rows_closed, gone);
    assert_eq!(sb.rows_unchanged, lb.len() as u64 - added);
    assert_eq!(
        sb.info.prev_sha256.as_deref(),
        Some(sa.info.sha256.as_str())
    );

    // No change: nothing written at all.
    let c = sync_to(&client, &dir, "c.ndjson", Some(sb.info.sha256.clone())).await;
    let sc = store.store_snapshot(&c, None).await.unwrap();
    assert_eq!((sc.rows_inserted, sc.rows_closed), (0, 0));
    assert_eq!(sc.rows_unchanged, lb.len() as u64);

    // Every stored snapshot comes back exactly as written.
    for (file, info) in [(&a, &sa), (&bfile, &sb), (&c, &sc)] {
        assert_eq!(
            export(&store, &info.info.snapshot_id).await,
            std::fs::read(file).unwrap(),
            "{}",
            file.display()
        );
    }
    let listed = store.list_snapshots(Some("default")).await.unwrap();
    assert_eq!(listed.len(), 3);
    let latest = store
        .latest_snapshot("default", "org", true)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(latest.snapshot_id, sc.info.snapshot_id);
    // A unique prefix finds a snapshot; a shared one is refused.
    let id = &sc.info.snapshot_id;
    assert_eq!(
        store.find_snapshot(&id[..30]).await.unwrap().snapshot_id,
        *id
    );
    assert!(store.find_snapshot("0").await.is_err());
}

on_both!(
    retention,
    retention_keeps_pinned_and_base_snapshots_and_live_grants
);

/// Raises or lowers the first Developer/Reporter group membership of the scope by one step.
async fn change_one_level(client: &Client, snapshot: &Path) {
    let records: Vec<Record> = gitlab_connector::snapshot::records(std::io::BufReader::new(
        std::fs::File::open(snapshot).unwrap(),
    ))
    .map(Result::unwrap)
    .collect();
    let (g, u, level) = records
        .iter()
        .find_map(|r| match r {
            Record::Membership(m) => match m.resource {
                ResourceRef::Group(g) if (10..50).contains(&m.access_level) => {
                    Some((g, m.user_id, m.access_level))
                }
                _ => None,
            },
            _ => None,
        })
        .unwrap();
    client
        .edit_member(
            &Source::Group(IdOrPath::Id(g)),
            u,
            &EditMember {
                access_level: AccessLevel(if level == 30 { 20 } else { 30 }),
                expires_at: None,
                member_role_id: None,
            },
        )
        .await
        .unwrap();
}

async fn retention_keeps_pinned_and_base_snapshots_and_live_grants(b: Backend) {
    let (_sim, client) = seeded_client(5).await;
    let dir = tempdir("retention");
    let store = Store::open(&b.url()).await.unwrap();
    let mut stored = Vec::new();
    let mut prev = None;
    for name in ["a", "b", "c"] {
        let file = sync_to(&client, &dir, &format!("{name}.ndjson"), prev.clone()).await;
        let s = store.store_snapshot(&file, None).await.unwrap();
        prev = Some(s.info.sha256.clone());
        // A live change batch on it (an empty one does for retention).
        let appended = store
            .append_batch(
                gitlab_worker::store::NewBatch {
                    base: &s.info,
                    read_at: chrono::Utc::now(),
                    cause: "gitlab_event",
                    source_events: &[format!("hook default key:{name}")],
                    facts: "[]".into(),
                    changes: String::new(),
                    change_count: 0,
                    access_changes: 0,
                },
                None,
                |_| vec![],
            )
            .await
            .unwrap();
        assert!(matches!(appended, gitlab_worker::store::Append::Stored(_)));
        stored.push((file, s.info));
        change_one_level(&client, &stored.last().unwrap().0).await;
    }
    store
        .pin_snapshot(&stored[0].1.snapshot_id, true)
        .await
        .unwrap();
    // Two finished jobs, one of whose grant is still live, and a sent outbox message.
    for id in ["done-1", "live-grant-1"] {
        start_job(&store, id, "grant").await;
        store
            .finish_job(id, "succeeded", "{}", vec![], &Default::default())
            .await
            .unwrap();
    }
    let live = gitlab_worker::store::GrantRecord {
        job_id: "live-grant-1".into(),
        connector: "default".into(),
        target_kind: gitlab_connector::provision::TargetKind::Group,
        target_id: 1,
        target_path: "org".into(),
        user_id: 2,
        created: true,
        prior: None,
        applied: gitlab_connector::provision::MemberState {
            access_level: 30,
            expires_at: None,
            member_role_id: None,
        },
        expires_at: Some(chrono::Utc::now() + chrono::Duration::hours(1)),
        state: gitlab_worker::store::GrantState::Active,
        ended_at: None,
        note: None,
        undo_attempts: 0,
        held_slot: None,
    };
    store.record_grant(live).await.unwrap();
    store
        .enqueue(vec![OutboxMessage::Publish {
            msg_id: "sent-1".into(),
            subject: "gitlab.results.default.grant".into(),
            payload: "{}".into(),
        }])
        .await
        .unwrap();
    let (row, _) = store
        .unsent_outbox(OutboxLane::Results, 10)
        .await
        .unwrap()
        .remove(0);
    store.mark_sent(&[row]).await.unwrap();

    let pruned = store
        .apply_retention(chrono::Utc::now() + chrono::Duration::seconds(5))
        .await
        .unwrap();
    assert_eq!(pruned.snapshots, 1, "{pruned:?}");
    assert!(pruned.snapshot_records > 0, "{pruned:?}");
    assert_eq!(pruned.jobs, 1, "{pruned:?}");
    assert_eq!(pruned.outbox, 1, "{pruned:?}");
    assert_eq!(
        pruned.change_batches, 1,
        "the pruned snapshot's batch: {pruned:?}"
    );
    for (i, kept) in [(0, 1), (1, 0), (2, 1)] {
        let on = store
            .batches_on("default", "org", stored[i].1.seq, None)
            .await
            .unwrap();
        assert_eq!(on.len(), kept, "batches on snapshot {i}");
    }
    assert!(store.job("done-1").await.unwrap().is_none());
    assert!(
        store.job("live-grant-1").await.unwrap().is_some(),
        "its grant is live"
    );
    // The pinned snapshot and the base of the next diff export exactly as first written; the
    // pruned one says so, and its hashes stay for the chain.
    for i in [0, 2] {
        let mut out = Vec::new();
        let info = store.find_snapshot(&stored[i].1.snapshot_id).await.unwrap();
        store.export_snapshot(&info, &mut out).await.unwrap();
        assert_eq!(out, std::fs::read(&stored[i].0).unwrap(), "snapshot {i}");
    }
    let b_info = store.find_snapshot(&stored[1].1.snapshot_id).await.unwrap();
    assert!(b_info.pruned_at.is_some());
    assert_eq!(b_info.sha256, stored[1].1.sha256);
    let err = store
        .export_snapshot(&b_info, &mut Vec::new())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("retention"), "{err}");
    // Applying it again deletes nothing more.
    let again = store
        .apply_retention(chrono::Utc::now() + chrono::Duration::seconds(5))
        .await
        .unwrap();
    assert_eq!((again.snapshots, again.jobs, again.outbox), (0, 0, 0));
}

/// Live change batches: chained to their snapshot and to each other, appended only on the
/// newest state, laid over the snapshot's records to give the live state, and a batch changed
/// in the database breaks the chain.
async fn change_batches_are_chained_and_laid_over_their_snapshot(b: Backend) {
    use gitlab_connector::live::{Fact, apply};
    use gitlab_worker::live::state::LiveState;
    use gitlab_worker::store::{Append, ChangeLine, NewBatch};

    let (_sim, client) = seeded_client(4).await;
    let dir = tempdir("changes");
    let store = Store::open(&b.url()).await.unwrap();
    let a = sync_to(&client, &dir, "a.ndjson", None).await;
    store.store_snapshot(&a, None).await.unwrap();
    let spool = dir.join("spool");
    let mut live = LiveState::load(&store, &spool, "default", "org")
        .await
        .unwrap()
        .expect("a complete snapshot");
    assert_eq!(live.last_batch, None);

    // A member's level changes, as a re-read would report it.
    let (r, members) = live
        .inv
        .members
        .iter()
        .find(|(r, _)| matches!(r, ResourceRef::Group(_)))
        .map(|(r, m)| (*r, m.clone()))
        .unwrap();
    let mut m = members[0].record(r);
    m.access_level = if m.access_level == 40 { 30 } else { 40 };
    let facts = vec![Fact::Member {
        resource: r,
        user_id: m.user_id,
        member: Some(m.clone()),
        user: None,
    }];
    let today = chrono::Utc::now().date_naive();
    let applied = apply(&mut live.inv, live.scope, &facts, today);
    assert!(!applied.access.is_empty());
    let lines: String = applied
        .changes
        .iter()
        .map(|(k, v)| {
            let line = serde_json::to_string(&ChangeLine {
                key: k.clone(),
                record: v
                    .as_ref()
                    .map(|r| serde_json::value::to_raw_value(r).unwrap()),
            })
            .unwrap();
            format!("{line}\n")
        })
        .collect();
    let new = |last: Option<i64>| {
        let (lines, base) = (lines.clone(), live.base.clone());
        let facts = serde_json::to_string(&facts).unwrap();
        let store = store.clone();
        async move {
            store
                .append_batch(
                    NewBatch {
                        base: &base,
                        read_at: chrono::Utc::now(),
                        cause: "gitlab_event",
                        source_events: &["hook default key:k1".to_string()],
                        facts,
                        changes: lines,
                        change_count: 1,
                        access_changes: 1,
                    },
                    last,
                    |_| vec![],
                )
                .await
                .unwrap()
        }
    };
    let Append::Stored(first) = new(None).await else {
        panic!("appended on the newest state")
    };
    assert_eq!(
        first.prev_sha256, live.base.sha256,
        "the first batch chains to its snapshot"
    );
    assert_eq!(
        new(None).await,
        Append::Stale,
        "appended after a batch it did not see"
    );
    let Append::Stored(second) = new(Some(first.id)).await else {
        panic!("appended after the newest batch")
    };
    assert_eq!(second.prev_sha256, first.sha256);
    assert_eq!(store.verify_batches(&live.base).await.unwrap(), 2);

    // The live state loaded again is the snapshot with the batches laid over it.
    let again = LiveState::load(&store, &spool, "default", "org")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.last_batch, Some(second.id));
    assert_eq!(again.inv.members, live.inv.members);
    assert_eq!(again.inv.users, live.inv.users);

    // Changed outside the worker: the chain no longer holds.
    let db = sea_orm::Database::connect(b.url()).await.unwrap();
    use sea_orm::ConnectionTrait;
    db.execute_unprepared(&format!(
        "UPDATE change_batches SET changes = '' WHERE id = {}",
        first.id
    ))
    .await
    .unwrap();
    let err = store
        .verify_batches(&live.base)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains(&format!("change batch {}", first.id)), "{err}");
    assert!(err.contains("outside the worker"), "{err}");
}

/// A change hooks reported while a full sync was running (read after the crawl began, stored
/// on the previous snapshot) is applied again on the new snapshot, which may have missed it.
async fn facts_read_during_a_sync_are_applied_again_on_its_snapshot(b: Backend) {
    use gitlab_worker::live::state::LiveState;

    let (_sim, client) = seeded_client(6).await;
    let dir = tempdir("replay");
    let store = Store::open(&b.url()).await.unwrap();
    let spool = dir.join("spool");
    let a = sync_to(&client, &dir, "a.ndjson", None).await;
    store.store_snapshot(&a, None).await.unwrap();
    let mut live = LiveState::load(&store, &spool, "default", "org")
        .await
        .unwrap()
        .unwrap();

    // The next sync's crawl, then a change GitLab's hook reports, re-read and stored on A.
    let s2 = sync_to(&client, &dir, "s2.ndjson", None).await;
    let (r, m, level, _) = hook_reported_change(&client, &store, &mut live, "during-sync").await;

    // The sync's snapshot, stored after: it read the group before the change.
    store.store_snapshot(&s2, None).await.unwrap();
    let mut next = LiveState::load(&store, &spool, "default", "org")
        .await
        .unwrap()
        .unwrap();
    let level_of = |l: &LiveState| {
        l.inv.members[&r]
            .iter()
            .find(|x| x.user_id == m.user_id)
            .unwrap()
            .access_level
    };
    assert_eq!(
        level_of(&next),
        m.access_level,
        "the snapshot missed the change"
    );
    let subjects = gitlab_worker::subjects::Subjects::new("gitlab");
    assert!(next.replay_recent(&store, &subjects).await.unwrap());
    assert_eq!(level_of(&next), level);
    let on_s2 = store
        .batches_on("default", "org", next.base.seq, None)
        .await
        .unwrap();
    assert_eq!(on_s2.len(), 1);
    assert_eq!(on_s2[0].source_events, ["hook default key:during-sync"]);
    assert_eq!(on_s2[0].prev_sha256, next.base.sha256);
    // Loaded again, the live state has it; replaying again stores nothing more.
    let mut again = LiveState::load(&store, &spool, "default", "org")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(level_of(&again), level);
    assert!(!again.replay_recent(&store, &subjects).await.unwrap());
}

/// A group member's level changed through GitLab's API, re-read as a hook would make the
/// processor do, and stored as a live batch on `live`'s base: the resource, the member before,
/// the new level and the batch.
async fn hook_reported_change(
    client: &Client,
    store: &Store,
    live: &mut gitlab_worker::live::state::LiveState,
    delivery: &str,
) -> (
    ResourceRef,
    gitlab_connector::model::DirectMember,
    u16,
    gitlab_worker::store::ChangeBatch,
) {
    use gitlab_connector::live::{Touch, apply, reread};
    use gitlab_worker::store::{Append, ChangeLine, NewBatch};
    let (r, m) = live
        .inv
        .members
        .iter()
        .find(|(r, ms)| {
            matches!(r, ResourceRef::Group(_)) && ms.iter().any(|m| m.access_level < 50)
        })
        .map(|(r, ms)| (*r, *ms.iter().find(|m| m.access_level < 50).unwrap()))
        .unwrap();
    let ResourceRef::Group(g) = r else {
        unreachable!()
    };
    let level = if m.access_level == 40 { 30 } else { 40 };
    client
        .edit_member(
            &Source::Group(IdOrPath::Id(g)),
            m.user_id,
            &EditMember {
                access_level: AccessLevel(level),
                expires_at: m.expires_at,
                member_role_id: None,
            },
        )
        .await
        .unwrap();
    let touches = [Touch::Member {
        resource: r,
        user_id: m.user_id,
    }]
    .into_iter()
    .collect();
    let read_at = chrono::Utc::now();
    let facts = reread(client, &live.inv, &touches, true).await.unwrap();
    let applied = apply(&mut live.inv, live.scope, &facts, read_at.date_naive());
    let lines: String = applied
        .changes
        .iter()
        .map(|(k, v)| {
            serde_json::to_string(&ChangeLine {
                key: k.clone(),
                record: v
                    .as_ref()
                    .map(|r| serde_json::value::to_raw_value(r).unwrap()),
            })
            .unwrap()
                + "\n"
        })
        .collect();
    let stored = store
        .append_batch(
            NewBatch {
                base: &live.base,
                read_at,
                cause: "gitlab_event",
                source_events: &[format!("hook default key:{delivery}")],
                facts: serde_json::to_string(&facts).unwrap(),
                changes: lines,
                change_count: applied.changes.len() as i64,
                access_changes: applied.access.len() as i64,
            },
            None,
            |_| vec![],
        )
        .await
        .unwrap();
    let Append::Stored(batch) = stored else {
        panic!("appended on the newest state")
    };
    (r, m, level, *batch)
}

/// A hook-reported change between two syncs: answers before it show the old level, after it
/// the new one since the batch's time, and the next sync (which saw the same) neither breaks
/// "since" nor is listed as a change of its own.
async fn answers_at_a_time_include_the_live_batches_before_it(b: Backend) {
    use gitlab_worker::history::{self, HistoryQuery, ResourceSel, Timeline, UserSel};
    use gitlab_worker::live::state::LiveState;

    let (_sim, client) = seeded_client(9).await;
    let dir = tempdir("pit");
    let store = Store::open(&b.url()).await.unwrap();
    let spool = dir.join("spool");
    let a = sync_to(&client, &dir, "a.ndjson", None).await;
    let a = store.store_snapshot(&a, None).await.unwrap().info;
    let mut live = LiveState::load(&store, &spool, "default", "org")
        .await
        .unwrap()
        .unwrap();
    let (r, m, level, batch) = hook_reported_change(&client, &store, &mut live, "pit").await;
    let ResourceRef::Group(g) = r else {
        unreachable!()
    };
    let bfile = sync_to(&client, &dir, "b.ndjson", Some(a.sha256.clone())).await;
    let bsnap = store.store_snapshot(&bfile, None).await.unwrap().info;

    let timeline = Timeline::load(&store, "default", None).await.unwrap();
    let sel = ResourceSel::parse(&format!("group:{g}")).unwrap();
    let level_at = |answer: &history::AccessAnswer| {
        answer
            .rows
            .iter()
            .find(|row| row.user_id == m.user_id)
            .map(|row| (row.access_level, row.since))
    };
    let mid = a.finished_at + (batch.applied_at - a.finished_at) / 2;
    let before = history::who(&timeline, &sel, mid).await.unwrap();
    assert_eq!(before.based_on.change_batches, 0);
    assert_eq!(level_at(&before), Some((m.access_level, a.finished_at)));
    let after = history::who(&timeline, &sel, batch.applied_at)
        .await
        .unwrap();
    assert_eq!(after.based_on.snapshot_id, a.snapshot_id);
    assert_eq!(after.based_on.last_change_batch_id, Some(batch.id));
    assert_eq!(level_at(&after), Some((level, batch.applied_at)));
    let later = history::who(&timeline, &sel, bsnap.finished_at)
        .await
        .unwrap();
    assert_eq!(later.based_on.snapshot_id, bsnap.snapshot_id);
    assert_eq!(
        level_at(&later),
        Some((level, batch.applied_at)),
        "the sync that saw the same level does not break since"
    );
    // The user's own view agrees.
    let mine = history::user_access(&timeline, &UserSel::Id(m.user_id), batch.applied_at)
        .await
        .unwrap();
    let row = mine.rows.iter().find(|row| row.resource.id == g).unwrap();
    assert_eq!(row.access_level, level);

    // One change on the group, by the hook; the sync after it adds none.
    let h = history::history(
        &timeline,
        &HistoryQuery {
            user: Some(UserSel::Id(m.user_id)),
            resource: Some(sel),
            ..HistoryQuery::default()
        },
    )
    .await
    .unwrap();
    let changes: Vec<(&str, Option<i64>, Option<u64>)> = h
        .rows
        .iter()
        .map(|row| {
            (
                row.cause,
                row.batch_id,
                row.after.as_ref().and_then(|v| v["access_level"].as_u64()),
            )
        })
        .collect();
    assert_eq!(
        changes,
        [("gitlab_event", Some(batch.id), Some(u64::from(level)))]
    );
}

/// Rows stored before migration 8 get the lookup columns the writer gives new rows.
async fn record_lookup_columns_are_backfilled_as_written(b: Backend) {
    use sea_orm::{ConnectionTrait, Statement};
    let (_sim, client) = seeded_client(10).await;
    let dir = tempdir("backfill");
    let store = Store::open(&b.url()).await.unwrap();
    let a = sync_to(&client, &dir, "a.ndjson", None).await;
    store.store_snapshot(&a, None).await.unwrap();
    let db = sea_orm::Database::connect(b.url()).await.unwrap();
    let read = || async {
        db.query_all_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT record_key, user_id, resource, label FROM snapshot_records ORDER BY id",
        ))
        .await
        .unwrap()
        .iter()
        .map(|row| {
            (
                row.try_get::<String>("", "record_key").unwrap(),
                row.try_get::<Option<i64>>("", "user_id").unwrap(),
                row.try_get::<Option<String>>("", "resource").unwrap(),
                row.try_get::<Option<String>>("", "label").unwrap(),
            )
        })
        .collect::<Vec<_>>()
    };
    let written = read().await;
    assert!(
        written
            .iter()
            .any(|r| r.0.starts_with("9/") && r.1.is_some() && r.2.is_some())
    );
    assert!(
        written
            .iter()
            .any(|r| r.0.starts_with("2/") && r.3.is_some())
    );
    db.execute_unprepared(
        "UPDATE snapshot_records SET user_id = NULL, resource = NULL, label = NULL",
    )
    .await
    .unwrap();
    for sql in gitlab_worker::store::migration::record_lookup_backfill(db.get_database_backend()) {
        db.execute_unprepared(&sql).await.unwrap();
    }
    assert_eq!(read().await, written);
}
