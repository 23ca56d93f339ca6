//! Finding users and resources by name, and the difference between two snapshots.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use gitlab_connector::model::Record;

use super::HistoryError;
use super::changes::ChangeRow;
use super::timeline::Timeline;
use crate::store::{RecordVersion, SnapshotInfo, VersionFilter};

/// A user, group or project found by name.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Found {
    pub kind: &'static str,
    pub id: u64,
    pub name: String,
}

impl Found {
    /// Its page on the auditors' site.
    pub fn href(&self) -> String {
        match self.kind {
            "user" => format!("/users/{}", self.id),
            kind => format!("/resources/{kind}/{}", self.id),
        }
    }
}

/// Users, groups and projects whose name starts with `prefix`: as they are now, and those the
/// history knows that are no longer in the scope (a user whose access all ended).
pub async fn search(
    timeline: &Timeline<'_>,
    prefix: &str,
    limit: u64,
) -> Result<Vec<Found>, HistoryError> {
    let mut out: Vec<Found> = Vec::new();
    if prefix.is_empty() {
        return Ok(out);
    }
    let basis = timeline.basis(Utc::now()).await?;
    for key_prefix in ["1/", "2/", "3/"] {
        let mut seen = std::collections::HashSet::new();
        for seq in [Some(basis.snapshot.seq), None] {
            let rows = timeline
                .store
                .records_named(
                    &timeline.connector,
                    &timeline.scope,
                    seq,
                    key_prefix,
                    prefix,
                    true,
                    limit,
                )
                .await?;
            for v in rows {
                if !seen.insert(v.key.clone()) {
                    continue;
                }
                let line = match (seq, basis.overrides.get(&v.key)) {
                    (Some(_), Some(Some(l))) => l.clone(),
                    (Some(_), Some(None)) => continue,
                    _ => v.content,
                };
                out.extend(found(&line));
            }
        }
    }
    out.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    Ok(out)
}

fn found(line: &str) -> Option<Found> {
    match serde_json::from_str::<Record>(line) {
        Ok(Record::User(u)) => Some(Found {
            kind: "user",
            id: u.id,
            name: u.username,
        }),
        Ok(Record::Group(g)) => Some(Found {
            kind: "group",
            id: g.id,
            name: g.full_path,
        }),
        Ok(Record::Project(p)) => Some(Found {
            kind: "project",
            id: p.id,
            name: p.path_with_namespace,
        }),
        _ => None,
    }
}

/// Every access record that differs between snapshots `a` and `b` (either order), as
/// changes from `a` to `b`.
pub async fn snapshot_diff(
    timeline: &Timeline<'_>,
    a: &SnapshotInfo,
    b: &SnapshotInfo,
) -> Result<Vec<ChangeRow>, HistoryError> {
    if a.connector != b.connector || a.scope != b.scope {
        return Err(HistoryError::BadSelector(format!(
            "snapshots {} and {} are of different connectors or scopes",
            a.snapshot_id, b.snapshot_id
        )));
    }
    let (lo, hi) = (a.seq.min(b.seq), a.seq.max(b.seq));
    let versions = timeline
        .store
        .record_versions(
            &timeline.connector,
            &timeline.scope,
            &VersionFilter {
                key_prefix: "9/",
                changed_between: Some((lo, hi)),
                ..VersionFilter::default()
            },
        )
        .await?;
    let mut by_key: BTreeMap<&str, Vec<&RecordVersion>> = BTreeMap::new();
    for v in &versions {
        by_key.entry(v.key.as_str()).or_default().push(v);
    }
    let time: DateTime<Utc> = b.finished_at;
    let mut rows = Vec::new();
    for (key, vs) in by_key {
        let at = |seq: i64| {
            vs.iter()
                .find(|v| v.valid_at(seq))
                .map(|v| v.content.as_str())
        };
        if let Some(row) =
            super::changes::access_change(key, at(a.seq), at(b.seq), time, &b.snapshot_id)
        {
            rows.push(row);
        }
    }
    let basis = timeline.basis(b.finished_at).await?;
    super::changes::name_rows(timeline, &basis, &mut rows).await?;
    Ok(rows)
}

/// `--at`, `--since`, `--until` and the page's times: RFC 3339, a browser's date and time
/// without a zone (`2026-03-03T12:00`, read as UTC), or a date (its start, UTC).
pub fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    for f in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%dT%H:%M"] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(s, f) {
            return Ok(t.and_utc());
        }
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(d.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc());
    }
    Err(format!(
        "{:?} is not a time: write RFC 3339 (2026-03-03T12:00:00Z) or a date (2026-03-03, its start in UTC)",
        s.chars().take(60).collect::<String>()
    ))
}
