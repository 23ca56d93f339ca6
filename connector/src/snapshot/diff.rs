//! Access added, removed and changed between two snapshots, as records a governance platform
//! can act on. Both inputs are access records sorted by (resource, user), as snapshots write
//! them, so the diff is a streaming merge.
//!
//! A partial snapshot on either side means removals cannot be trusted (something not read is
//! not something gone): they are suppressed, and the diff header says so.

use std::cmp::Ordering;

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

use crate::model::{AccessPath, AccessRecord, ResourceRef};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    AccessAdded,
    AccessRemoved,
    AccessChanged,
}

/// The effective access on one side of a change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessState {
    pub access_level: u16,
    /// When the effective level ends if nothing changes: the latest expiry of the paths that
    /// give it, `null` when one of them never expires.
    #[serde(with = "crate::api::common::date_or_timestamp")]
    pub expires_at: Option<NaiveDate>,
    pub paths: Vec<AccessPath>,
}

impl From<&AccessRecord> for AccessState {
    fn from(a: &AccessRecord) -> Self {
        let top: Vec<&AccessPath> = a
            .paths
            .iter()
            .filter(|p| p.access_level == a.access_level)
            .collect();
        let expires_at = if top.iter().any(|p| p.expires_at.is_none()) {
            None
        } else {
            top.iter().filter_map(|p| p.expires_at).max()
        };
        Self {
            access_level: a.access_level,
            expires_at,
            paths: a.paths.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiffRecord {
    pub change: Change,
    pub user_id: u64,
    #[serde(with = "crate::model::resource_wire")]
    pub resource: ResourceRef,
    pub before: Option<AccessState>,
    pub after: Option<AccessState>,
    /// For `access_changed`: which of `access_level`, `expires_at`, `paths` changed.
    pub changed: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiffCounts {
    pub added: u64,
    pub removed: u64,
    pub changed: u64,
    /// Removals seen but not reported because a side is partial.
    pub removals_suppressed: u64,
}

/// Merges two sorted access streams; `emit` receives each change in order.
pub fn diff<A, B, E>(
    before: A,
    after: B,
    report_removals: bool,
    mut emit: impl FnMut(DiffRecord) -> Result<(), E>,
) -> Result<DiffCounts, E>
where
    A: IntoIterator<Item = AccessRecord>,
    B: IntoIterator<Item = AccessRecord>,
{
    let key = |a: &AccessRecord| (a.resource, a.user_id);
    let mut counts = DiffCounts::default();
    let mut a = before.into_iter().peekable();
    let mut b = after.into_iter().peekable();
    loop {
        let order = match (a.peek(), b.peek()) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some(x), Some(y)) => key(x).cmp(&key(y)),
        };
        match order {
            Ordering::Less => {
                let old = a.next().expect("peeked");
                if report_removals {
                    counts.removed += 1;
                    emit(DiffRecord {
                        change: Change::AccessRemoved,
                        user_id: old.user_id,
                        resource: old.resource,
                        before: Some((&old).into()),
                        after: None,
                        changed: vec![],
                    })?;
                } else {
                    counts.removals_suppressed += 1;
                }
            }
            Ordering::Greater => {
                let new = b.next().expect("peeked");
                counts.added += 1;
                emit(DiffRecord {
                    change: Change::AccessAdded,
                    user_id: new.user_id,
                    resource: new.resource,
                    before: None,
                    after: Some((&new).into()),
                    changed: vec![],
                })?;
            }
            Ordering::Equal => {
                let (old, new) = (a.next().expect("peeked"), b.next().expect("peeked"));
                let (s_old, s_new) = (AccessState::from(&old), AccessState::from(&new));
                let mut changed = Vec::new();
                if s_old.access_level != s_new.access_level {
                    changed.push("access_level".to_string());
                }
                if s_old.expires_at != s_new.expires_at {
                    changed.push("expires_at".to_string());
                }
                if s_old.paths != s_new.paths {
                    changed.push("paths".to_string());
                }
                if !changed.is_empty() {
                    counts.changed += 1;
                    emit(DiffRecord {
                        change: Change::AccessChanged,
                        user_id: new.user_id,
                        resource: new.resource,
                        before: Some(s_old),
                        after: Some(s_new),
                        changed,
                    })?;
                }
            }
        }
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Via;

    fn rec(user: u64, r: ResourceRef, level: u16, exp: Option<NaiveDate>) -> AccessRecord {
        AccessRecord {
            user_id: user,
            resource: r,
            access_level: level,
            paths: vec![AccessPath {
                via: Via::Direct,
                group_id: None,
                access_level: level,
                expires_at: exp,
            }],
        }
    }

    #[test]
    fn added_removed_changed_and_suppressed_removals() {
        let g = ResourceRef::Group(1);
        let p = ResourceRef::Project(2);
        let d = NaiveDate::from_ymd_opt(2027, 1, 1);
        let before = vec![
            rec(1, g, 30, None),
            rec(2, g, 20, None),
            rec(1, p, 30, None),
        ];
        let after = vec![rec(1, g, 40, None), rec(3, g, 10, None), rec(1, p, 30, d)];
        let mut out = Vec::new();
        let counts = diff(before.clone(), after.clone(), true, |r| {
            out.push(r);
            Ok::<_, ()>(())
        })
        .unwrap();
        assert_eq!((counts.added, counts.removed, counts.changed), (1, 1, 2));
        assert_eq!(out[0].change, Change::AccessChanged);
        assert_eq!(out[0].changed, vec!["access_level", "paths"]);
        assert_eq!(out[1].change, Change::AccessRemoved);
        assert_eq!(out[2].change, Change::AccessAdded);
        assert_eq!(out[3].changed, vec!["expires_at", "paths"]);
        let mut out = Vec::new();
        let counts = diff(before, after, false, |r| {
            out.push(r);
            Ok::<_, ()>(())
        })
        .unwrap();
        assert_eq!((counts.removed, counts.removals_suppressed), (0, 1));
        assert!(out.iter().all(|r| r.change != Change::AccessRemoved));
    }
}

/// The first line of a diff.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiffHeader {
    /// `None` when there is no earlier snapshot: every access is then `access_added`.
    pub from_snapshot_id: Option<String>,
    pub to_snapshot_id: String,
    pub from_sha256: Option<String>,
    pub to_sha256: String,
    pub connector: String,
    pub scope: String,
    /// `false` when either snapshot is partial: removals cannot be told from unread data.
    pub removals_reported: bool,
    pub reason: Option<String>,
}

/// One NDJSON line of a diff.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum DiffLine {
    Diff(DiffHeader),
    AccessChange(DiffRecord),
    DiffSummary(DiffCounts),
}

#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        #[source]
        source: super::ReadError,
    },
    #[error("{path}: {message}")]
    NotASnapshot { path: String, message: String },
    #[error(
        "the snapshots are of different connectors or scopes ({a} vs {b}); diff snapshots of the same connector and scope"
    )]
    Mismatch { a: String, b: String },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

fn open(path: &std::path::Path) -> Result<std::io::BufReader<std::fs::File>, DiffError> {
    std::fs::File::open(path)
        .map(std::io::BufReader::new)
        .map_err(|e| DiffError::Read {
            path: path.display().to_string(),
            source: e.into(),
        })
}

fn header_and_summary(
    path: &std::path::Path,
) -> Result<(crate::model::SnapshotHeader, crate::model::Summary), DiffError> {
    let summary = super::verify(open(path)?).map_err(|e| DiffError::Read {
        path: path.display().to_string(),
        source: e,
    })?;
    let first = super::records(open(path)?).next();
    match first {
        Some(Ok(crate::model::Record::Snapshot(h))) => Ok((h, summary)),
        Some(Err(e)) => Err(DiffError::Read {
            path: path.display().to_string(),
            source: e,
        }),
        _ => Err(DiffError::NotASnapshot {
            path: path.display().to_string(),
            message: "the first line is not a snapshot header".into(),
        }),
    }
}

fn access_records(path: &std::path::Path) -> Result<impl Iterator<Item = AccessRecord>, DiffError> {
    Ok(super::records(open(path)?).filter_map(|r| match r {
        Ok(crate::model::Record::Access(a)) => Some(a),
        _ => None,
    }))
}

/// The header and summary of a file whose hash is not checked (a live-state export: a stored
/// snapshot with change batches laid over its records).
fn header_and_summary_unchecked(
    path: &std::path::Path,
) -> Result<(crate::model::SnapshotHeader, crate::model::Summary), DiffError> {
    let read = |e| DiffError::Read {
        path: path.display().to_string(),
        source: e,
    };
    let mut header = None;
    let mut summary = None;
    for r in super::records(open(path)?) {
        match r.map_err(read)? {
            crate::model::Record::Snapshot(h) if header.is_none() => header = Some(h),
            crate::model::Record::Summary(s) => summary = Some(s),
            _ => {}
        }
    }
    match (header, summary) {
        (Some(h), Some(s)) => Ok((h, s)),
        _ => Err(DiffError::NotASnapshot {
            path: path.display().to_string(),
            message: "no snapshot header or summary".into(),
        }),
    }
}

/// Diffs two snapshot files (both verified against their hashes first) into NDJSON lines.
pub fn diff_files(
    a: &std::path::Path,
    b: &std::path::Path,
    out: &mut impl std::io::Write,
) -> Result<DiffCounts, DiffError> {
    diff_checked(a, b, out, true)
}

/// Diffs a live-state export `a` (not checked against a hash: it is a snapshot with changes
/// laid over it) and a snapshot file `b` (checked).
pub fn diff_live_files(
    a: &std::path::Path,
    b: &std::path::Path,
    out: &mut impl std::io::Write,
) -> Result<DiffCounts, DiffError> {
    diff_checked(a, b, out, false)
}

fn diff_checked(
    a: &std::path::Path,
    b: &std::path::Path,
    out: &mut impl std::io::Write,
    check_a: bool,
) -> Result<DiffCounts, DiffError> {
    let (ha, sa) = if check_a {
        header_and_summary(a)?
    } else {
        header_and_summary_unchecked(a)?
    };
    let (hb, sb) = header_and_summary(b)?;
    if ha.connector != hb.connector || ha.scope != hb.scope {
        return Err(DiffError::Mismatch {
            a: format!("{}/{}", ha.connector, ha.scope),
            b: format!("{}/{}", hb.connector, hb.scope),
        });
    }
    let removals_reported = sa.complete && sb.complete;
    let header = DiffHeader {
        from_snapshot_id: Some(ha.snapshot_id),
        to_snapshot_id: hb.snapshot_id,
        from_sha256: Some(sa.sha256),
        to_sha256: sb.sha256,
        connector: ha.connector,
        scope: ha.scope,
        removals_reported,
        reason: (!removals_reported).then(|| {
            "a snapshot is partial: access it could not read is not reported as removed".to_string()
        }),
    };
    let mut write = |line: &DiffLine| -> std::io::Result<()> {
        serde_json::to_writer(&mut *out, line).map_err(std::io::Error::other)?;
        out.write_all(b"\n")
    };
    write(&DiffLine::Diff(header))?;
    let counts = diff(
        access_records(a)?,
        access_records(b)?,
        removals_reported,
        |r| write(&DiffLine::AccessChange(r)),
    )?;
    write(&DiffLine::DiffSummary(counts.clone()))?;
    Ok(counts)
}
