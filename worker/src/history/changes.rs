//! `access history`: every change of effective access (from snapshot to snapshot, and each
//! live batch), and every write the worker made in GitLab, with its cause.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use gitlab_connector::model::{AccessRecord, Record, ResourceRef};
use serde::Serialize;
use serde_json::Value;

use super::timeline::{ChangeLines, Timeline, access_prefix, batch_lines};
use super::{HistoryError, ResourceInfo, ResourceSel, UserSel};
use crate::store::{AuditRow, ChangeBatch, RecordVersion, SnapshotInfo, VersionFilter};

/// What to list.
#[derive(Debug, Clone, Default)]
pub struct HistoryQuery {
    pub user: Option<UserSel>,
    pub resource: Option<ResourceSel>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct HistoryAnswer {
    pub connector: String,
    pub scope: String,
    pub since: Option<DateTime<Utc>>,
    pub until: DateTime<Utc>,
    /// The first stored snapshot: changes before it are not known.
    pub history_starts: DateTime<Utc>,
    pub rows: Vec<ChangeRow>,
}

/// One change. `record` is `access` (effective access: `before`/`after` carry `access_level`
/// and `paths`) or `membership`/`invitation`/… for the worker's own writes (GitLab's member
/// state before and after).
#[derive(Debug, Clone, Serialize)]
pub struct ChangeRow {
    pub time: DateTime<Utc>,
    pub user_id: Option<u64>,
    pub username: Option<String>,
    pub resource: Option<ResourceInfo>,
    pub record: String,
    pub before: Option<Value>,
    pub after: Option<Value>,
    /// `sync`, `reconcile`, `gitlab_event`, `provisioning` or `jit_expiry`.
    pub cause: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_id: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl ChangeRow {
    fn new(time: DateTime<Utc>, record: &str, cause: &'static str) -> Self {
        Self {
            time,
            user_id: None,
            username: None,
            resource: None,
            record: record.into(),
            before: None,
            after: None,
            cause,
            snapshot_id: None,
            batch_id: None,
            job_id: None,
            job_kind: None,
            action: None,
            requested_by: None,
            reason: None,
        }
    }
}

/// What an access record's change is judged by: level and paths.
fn access_state(line: Option<&str>) -> Option<AccessRecord> {
    match serde_json::from_str::<Record>(line?) {
        Ok(Record::Access(a)) => Some(a),
        _ => None,
    }
}

fn state_value(a: &Option<AccessRecord>) -> Option<Value> {
    a.as_ref()
        .map(|a| serde_json::json!({"access_level": a.access_level, "paths": a.paths}))
}

/// Every change the query selects, oldest first.
pub async fn history(
    timeline: &Timeline<'_>,
    q: &HistoryQuery,
) -> Result<HistoryAnswer, HistoryError> {
    let until = q.until.unwrap_or_else(Utc::now);
    let newest = timeline.basis(until).await?;
    let user = match &q.user {
        Some(sel) => Some(timeline.resolve_user(&newest, sel).await?),
        None => None,
    };
    let resource = match &q.resource {
        Some(sel) => Some(timeline.resolve_resource(&newest, sel).await?),
        None => None,
    };
    let uid = user.as_ref().map(|u| u.id);
    let res = resource.as_ref().map(ResourceInfo::reference);
    let keep = |k: &str| {
        k.starts_with("9/")
            && res.is_none_or(|r| k.starts_with(&access_prefix(r)))
            && uid.is_none_or(|u| k.ends_with(&format!("/{u:020}")))
    };
    let needles: Vec<String> = match (res, uid) {
        (Some(r), _) => vec![format!("\"key\":\"{}", access_prefix(r))],
        (None, Some(u)) => vec![format!("/{u:020}\"")],
        (None, None) => vec!["\"key\":\"9/".to_string()],
    };
    let batches = timeline
        .store
        .batches_mentioning(&timeline.connector, &timeline.scope, Some(until), &needles)
        .await?;
    let mut batch_keys: BTreeSet<String> = BTreeSet::new();
    let mut parsed: Vec<(&ChangeBatch, ChangeLines)> = Vec::new();
    for b in &batches {
        let lines = batch_lines(b, keep)?;
        batch_keys.extend(lines.iter().map(|(k, _)| k.clone()));
        parsed.push((b, lines));
    }
    let snaps: Vec<&SnapshotInfo> = timeline
        .complete_snapshots()
        .filter(|s| s.finished_at <= until)
        .collect();
    let versions = versions(timeline, q, &snaps, res, uid, &batch_keys).await?;
    let mut by_key: BTreeMap<&str, Vec<&RecordVersion>> = BTreeMap::new();
    for v in versions.iter().filter(|v| keep(&v.key)) {
        by_key.entry(v.key.as_str()).or_default().push(v);
    }
    for k in &batch_keys {
        by_key.entry(k.as_str()).or_default();
    }
    let causes = snapshot_causes(timeline, &snaps).await?;
    let mut rows = Vec::new();
    for (key, vs) in &by_key {
        key_changes(key, vs, &snaps, &parsed, &causes, &mut rows);
    }
    rows.retain(|r| q.since.is_none_or(|s| r.time >= s));
    rows.extend(audit_changes(timeline, q.since, until, uid.map(|u| u as i64), res).await?);
    rows.sort_by_key(|r| r.time);
    name_rows(timeline, &newest, &mut rows).await?;
    Ok(HistoryAnswer {
        connector: timeline.connector.clone(),
        scope: timeline.scope.clone(),
        since: q.since,
        until,
        history_starts: timeline.snapshots[0].finished_at,
        rows,
    })
}

/// The stored versions the question needs: all of a user's or resource's; otherwise those
/// that began or ended in the time asked about, and every version of what batches touched.
async fn versions(
    timeline: &Timeline<'_>,
    q: &HistoryQuery,
    snaps: &[&SnapshotInfo],
    res: Option<ResourceRef>,
    uid: Option<u64>,
    batch_keys: &BTreeSet<String>,
) -> Result<Vec<RecordVersion>, HistoryError> {
    let mut filter = VersionFilter {
        key_prefix: "9/",
        user_id: uid.map(|u| u as i64),
        resource: res,
        changed_between: None,
    };
    if res.is_none() && uid.is_none() {
        // From the last snapshot before the window: its versions are the "before".
        let from = q.since.map_or(0, |t| {
            snaps
                .iter()
                .rev()
                .find(|s| s.finished_at < t)
                .map_or(0, |s| s.seq)
        });
        let to = snaps.last().map_or(0, |s| s.seq);
        filter.changed_between = Some((from, to));
    }
    let mut out = timeline
        .store
        .record_versions(&timeline.connector, &timeline.scope, &filter)
        .await?;
    if filter.changed_between.is_some() && !batch_keys.is_empty() {
        let keys: Vec<String> = batch_keys.iter().cloned().collect();
        out.extend(
            timeline
                .store
                .versions_of_keys(&timeline.connector, &timeline.scope, &keys)
                .await?,
        );
        out.sort_by(|a, b| (&a.key, a.valid_from).cmp(&(&b.key, b.valid_from)));
        out.dedup();
    }
    Ok(out)
}

/// `sync` or `reconcile` for each snapshot, by the kind of the job that took it.
async fn snapshot_causes(
    timeline: &Timeline<'_>,
    snaps: &[&SnapshotInfo],
) -> Result<HashMap<i64, &'static str>, HistoryError> {
    let mut out = HashMap::new();
    for s in snaps {
        let kind = match &s.job_id {
            Some(j) => timeline.store.job(j).await?.map(|j| j.kind),
            None => None,
        };
        out.insert(
            s.seq,
            if kind.as_deref() == Some("reconcile") {
                "reconcile"
            } else {
                "sync"
            },
        );
    }
    Ok(out)
}

/// The changes of one access record: from each complete snapshot to the next (against the
/// previous one's live state), and each batch that changed it.
fn key_changes(
    key: &str,
    versions: &[&RecordVersion],
    snaps: &[&SnapshotInfo],
    batches: &[(&ChangeBatch, ChangeLines)],
    causes: &HashMap<i64, &'static str>,
    rows: &mut Vec<ChangeRow>,
) {
    // Each version read once, not once per snapshot it is valid in.
    let parsed: Vec<(&RecordVersion, Option<AccessRecord>)> = versions
        .iter()
        .map(|v| (*v, access_state(Some(&v.content))))
        .collect();
    let at = |seq: i64| {
        parsed
            .iter()
            .find(|(v, _)| v.valid_at(seq))
            .and_then(|(_, a)| a.clone())
    };
    // The batches on each base that changed this key, in order.
    let mut on_base: BTreeMap<i64, Vec<(&ChangeBatch, Option<&str>)>> = BTreeMap::new();
    for (b, lines) in batches {
        for (k, line) in lines {
            if k == key {
                on_base
                    .entry(b.base_seq)
                    .or_default()
                    .push((b, line.as_deref()));
            }
        }
    }
    let mut prev_live: Option<Option<AccessRecord>> = None;
    for s in snaps {
        let snap_state = at(s.seq);
        if let Some(before) = prev_live.take()
            && before != snap_state
        {
            let mut row = ChangeRow::new(s.finished_at, "access", causes[&s.seq]);
            row.before = state_value(&before);
            row.after = state_value(&snap_state);
            row.snapshot_id = Some(s.snapshot_id.clone());
            fill_key(&mut row, key);
            rows.push(row);
        }
        let mut live = snap_state;
        for (b, line) in on_base.get(&s.seq).map(Vec::as_slice).unwrap_or(&[]) {
            let after = access_state(*line);
            if after != live {
                let cause = if b.cause == "reconcile" {
                    "reconcile"
                } else {
                    "gitlab_event"
                };
                let mut row = ChangeRow::new(b.applied_at, "access", cause);
                row.before = state_value(&live);
                row.after = state_value(&after);
                row.batch_id = Some(b.id);
                fill_key(&mut row, key);
                rows.push(row);
            }
            live = after;
        }
        prev_live = Some(live);
    }
}

/// User and resource from an access key (`9/g…/…`).
fn fill_key(row: &mut ChangeRow, key: &str) {
    let mut parts = key.splitn(3, '/');
    let (_, res, user) = (parts.next(), parts.next(), parts.next());
    row.user_id = user.and_then(|u| u.parse().ok());
    row.resource = res.and_then(|r| {
        let id = r.get(1..)?.parse().ok()?;
        let r = match r.as_bytes().first()? {
            b'g' => ResourceRef::Group(id),
            _ => ResourceRef::Project(id),
        };
        Some(ResourceInfo::new(r, None))
    });
}

/// The worker's own successful writes in GitLab, with the job that asked for them.
async fn audit_changes(
    timeline: &Timeline<'_>,
    since: Option<DateTime<Utc>>,
    until: DateTime<Utc>,
    uid: Option<i64>,
    res: Option<ResourceRef>,
) -> Result<Vec<ChangeRow>, HistoryError> {
    let entries = timeline
        .store
        .audit_writes(&timeline.connector, uid, since, Some(until))
        .await?;
    let mut rows = Vec::new();
    for e in entries {
        let target = audit_target(&e);
        if res.is_some() && target != res {
            continue;
        }
        if let Some(row) = audit_row(timeline, e, target).await? {
            rows.push(row);
        }
    }
    Ok(rows)
}

fn audit_target(e: &AuditRow) -> Option<ResourceRef> {
    let t: Value = serde_json::from_str(&e.target).ok()?;
    let id = t.get("id")?.as_u64()?;
    match t.get("type")?.as_str()? {
        "group" => Some(ResourceRef::Group(id)),
        "project" => Some(ResourceRef::Project(id)),
        _ => None,
    }
}

async fn audit_row(
    timeline: &Timeline<'_>,
    e: AuditRow,
    target: Option<ResourceRef>,
) -> Result<Option<ChangeRow>, HistoryError> {
    let job = match &e.job_id {
        Some(j) => timeline.store.job(j).await?,
        None => None,
    };
    let request: Value = job
        .as_ref()
        .and_then(|j| serde_json::from_str(&j.request).ok())
        .unwrap_or_default();
    let kind = job.as_ref().map(|j| j.kind.clone());
    // An undo recorded under a grant's job after its expiry is the JIT expiry; before it, a
    // `revoke` ended the grant early.
    let undo = matches!(e.action.as_str(), "remove_member" | "restore_member");
    let mut cause = "provisioning";
    if undo && kind.as_deref() == Some("grant") {
        let grant = match &e.job_id {
            Some(j) => timeline.store.grant(j).await?,
            None => None,
        };
        if grant.and_then(|g| g.expires_at).is_some_and(|x| x <= e.at) {
            cause = "jit_expiry";
        }
    }
    let record = match e.action.as_str() {
        "invite" | "cancel_invitation" => "invitation",
        "create_user" | "block_user" | "delete_user" | "revoke_token" | "rotate_token" => "user",
        _ => "membership",
    };
    let mut row = ChangeRow::new(e.at, record, cause);
    row.user_id = e.user_id.and_then(|u| u64::try_from(u).ok());
    row.resource = target.map(|r| ResourceInfo::new(r, None));
    row.before = e
        .before
        .as_deref()
        .and_then(|b| serde_json::from_str(b).ok());
    row.after = e
        .after
        .as_deref()
        .and_then(|a| serde_json::from_str(a).ok());
    row.job_id = e.job_id;
    row.job_kind = kind;
    row.action = Some(e.action);
    let text = |k: &str| request.get(k).and_then(Value::as_str).map(str::to_string);
    row.requested_by = text("requested_by");
    row.reason = text("reason");
    Ok(Some(row))
}

/// The change of one access record between two lines (`None`: absent), if any.
pub(super) fn access_change(
    key: &str,
    before: Option<&str>,
    after: Option<&str>,
    time: DateTime<Utc>,
    snapshot_id: &str,
) -> Option<ChangeRow> {
    let (before, after) = (access_state(before), access_state(after));
    if before == after {
        return None;
    }
    let mut row = ChangeRow::new(time, "access", "sync");
    row.before = state_value(&before);
    row.after = state_value(&after);
    row.snapshot_id = Some(snapshot_id.to_string());
    fill_key(&mut row, key);
    Some(row)
}

/// Usernames and resource paths, as of the newest state asked about.
pub(super) async fn name_rows(
    timeline: &Timeline<'_>,
    basis: &super::timeline::Basis,
    rows: &mut [ChangeRow],
) -> Result<(), HistoryError> {
    let resources: Vec<ResourceRef> = rows
        .iter()
        .filter_map(|r| r.resource.as_ref().map(ResourceInfo::reference))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let names = timeline.names(basis, &resources).await?;
    let users = timeline
        .users(basis, rows.iter().filter_map(|r| r.user_id))
        .await?;
    for row in rows {
        if let Some(r) = &mut row.resource {
            r.path = names.path(r.reference()).map(str::to_string);
        }
        row.username = row
            .user_id
            .and_then(|u| users.get(&u))
            .and_then(|u| u.username.clone());
    }
    Ok(())
}
