//! `access who` and `access user`: effective access at a time, with every path as the chain
//! it comes through and since when it has held.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, NaiveDate, Utc};
use gitlab_connector::model::{AccessRecord, Record, ResourceRef, Via};
use serde::Serialize;

use super::timeline::{
    BasedOn, Basis, LevelChanges, LevelVersion, Names, Timeline, access_level, access_prefix,
    batch_lines, user_info,
};
use super::{HistoryError, ResourceInfo, ResourceSel, UserInfo, UserSel, role};
use crate::store::{RecordVersion, VersionFilter};

/// The answer to `who` or `user`.
#[derive(Debug, Clone, Serialize)]
pub struct AccessAnswer {
    pub as_of: DateTime<Utc>,
    pub connector: String,
    pub scope: String,
    pub based_on: BasedOn,
    /// The resource (`who`) or user (`user`) asked about.
    pub subject: serde_json::Value,
    pub rows: Vec<AccessRow>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AccessRow {
    pub user_id: u64,
    pub username: Option<String>,
    pub resource: ResourceInfo,
    pub access_level: u16,
    pub role: &'static str,
    pub paths: Vec<PathInfo>,
    /// Held at this level without a break since (the earliest observation in the history).
    pub since: DateTime<Utc>,
    /// `since` is the first stored observation: it may have held from earlier.
    pub since_history_start: bool,
    #[serde(flatten)]
    pub user: UserInfo,
}

#[derive(Debug, Clone, Serialize)]
pub struct PathInfo {
    pub via: Via,
    /// The ancestor (inherited) or the invited group (shared); `null` for direct.
    pub group_id: Option<u64>,
    pub group_path: Option<String>,
    pub access_level: u16,
    pub expires_at: Option<NaiveDate>,
    /// Where the access comes through, after the user: the membership's group down to the
    /// resource (inherited), the invited group then the resource (shared), or the resource.
    pub chain: Vec<ResourceInfo>,
}

/// Who had effective access to `resource` at `at`.
pub async fn who(
    timeline: &Timeline<'_>,
    resource: &ResourceSel,
    at: DateTime<Utc>,
) -> Result<AccessAnswer, HistoryError> {
    let basis = timeline.basis(at).await?;
    let info = timeline.resolve_resource(&basis, resource).await?;
    let r = info.reference();
    let filter = VersionFilter {
        key_prefix: "9/",
        resource: Some(r),
        ..VersionFilter::default()
    };
    let prefix = access_prefix(r);
    let needle = format!("\"key\":\"{prefix}");
    let rows = rows_at(timeline, &basis, &filter, &needle, |k| {
        k.starts_with(&prefix)
    })
    .await?;
    let mut rows = rows;
    rows.sort_by(|a, b| {
        (a.username.as_deref(), a.user_id).cmp(&(b.username.as_deref(), b.user_id))
    });
    Ok(AccessAnswer {
        as_of: at,
        connector: timeline.connector.clone(),
        scope: timeline.scope.clone(),
        based_on: basis.based_on(),
        subject: serde_json::to_value(&info).unwrap_or_default(),
        rows,
    })
}

/// What `user` could reach at `at`.
pub async fn user_access(
    timeline: &Timeline<'_>,
    user: &UserSel,
    at: DateTime<Utc>,
) -> Result<AccessAnswer, HistoryError> {
    let basis = timeline.basis(at).await?;
    let u = timeline.resolve_user(&basis, user).await?;
    let uid = i64::try_from(u.id).unwrap_or(i64::MAX);
    let filter = VersionFilter {
        key_prefix: "9/",
        user_id: Some(uid),
        ..VersionFilter::default()
    };
    let suffix = format!("/{:020}", u.id);
    let needle = format!("{suffix}\"");
    let mut rows = rows_at(timeline, &basis, &filter, &needle, |k| {
        k.starts_with("9/") && k.ends_with(&suffix)
    })
    .await?;
    rows.sort_by(|a, b| {
        (a.resource.kind, a.resource.path.as_deref(), a.resource.id).cmp(&(
            b.resource.kind,
            b.resource.path.as_deref(),
            b.resource.id,
        ))
    });
    let subject = serde_json::json!({
        "user_id": u.id,
        "username": u.username,
        "user": user_info(&u),
    });
    Ok(AccessAnswer {
        as_of: at,
        connector: timeline.connector.clone(),
        scope: timeline.scope.clone(),
        based_on: basis.based_on(),
        subject,
        rows,
    })
}

/// The access records a filter selects, as of the basis, with since, names and paths.
async fn rows_at(
    timeline: &Timeline<'_>,
    basis: &Basis,
    filter: &VersionFilter<'_>,
    needle: &str,
    keep: impl Fn(&str) -> bool,
) -> Result<Vec<AccessRow>, HistoryError> {
    let versions = timeline
        .store
        .record_versions(&timeline.connector, &timeline.scope, filter)
        .await?;
    let mut by_key: BTreeMap<&str, Vec<&RecordVersion>> = BTreeMap::new();
    for v in &versions {
        by_key.entry(v.key.as_str()).or_default().push(v);
    }
    // Each version's level read once, not once per snapshot it is valid in.
    let levels: HashMap<&str, Vec<LevelVersion>> = by_key
        .iter()
        .map(|(k, vs)| (*k, vs.iter().map(|v| LevelVersion::of(v)).collect()))
        .collect();
    // Every batch that touched these records, on any base: observations for `since`.
    let batches = timeline
        .store
        .batches_mentioning(
            &timeline.connector,
            &timeline.scope,
            Some(basis.at),
            &[needle.to_string()],
        )
        .await?;
    let mut batch_changes: HashMap<String, LevelChanges> = HashMap::new();
    for b in &batches {
        for (key, line) in batch_lines(b, &keep)? {
            let level = line.as_deref().and_then(access_level);
            batch_changes
                .entry(key)
                .or_default()
                .push((b.applied_at, level));
        }
    }
    // The records at the basis: the snapshot's versions, then the batches over them.
    let mut current: BTreeMap<String, String> = by_key
        .iter()
        .filter_map(|(k, vs)| {
            vs.iter()
                .find(|v| v.valid_at(basis.snapshot.seq))
                .map(|v| (k.to_string(), v.content.clone()))
        })
        .collect();
    for (k, v) in &basis.overrides {
        if keep(k) {
            match v {
                Some(line) => current.insert(k.clone(), line.clone()),
                None => current.remove(k),
            };
        }
    }
    // The struct, not the tagged `Record`: serde buffers a tagged enum's fields first.
    let records: Vec<AccessRecord> = current
        .values()
        .filter_map(|l| serde_json::from_str::<AccessRecord>(l).ok())
        .collect();
    let mut wanted: Vec<ResourceRef> = records.iter().map(|a| a.resource).collect();
    for a in &records {
        wanted.extend(
            a.paths
                .iter()
                .filter_map(|p| p.group_id.map(ResourceRef::Group)),
        );
    }
    wanted.sort();
    wanted.dedup();
    let names = timeline.names(basis, &wanted).await?;
    let users = timeline
        .users(basis, records.iter().map(|a| a.user_id))
        .await?;
    let empty = Vec::new();
    Ok(records
        .into_iter()
        .map(|a| {
            let key = Record::Access(a.clone()).order_key().unwrap_or_default();
            let since = timeline.since(
                basis.at,
                a.access_level,
                levels.get(key.as_str()).map_or(&[], Vec::as_slice),
                batch_changes.get(&key).unwrap_or(&empty),
            );
            let user = users.get(&a.user_id).cloned().unwrap_or_default();
            AccessRow {
                user_id: a.user_id,
                username: user.username.clone(),
                resource: names.info(a.resource),
                access_level: a.access_level,
                role: role(a.access_level),
                paths: a
                    .paths
                    .iter()
                    .map(|p| path_info(&names, a.resource, p))
                    .collect(),
                since: since.time,
                since_history_start: since.history_start,
                user,
            }
        })
        .collect())
}

fn path_info(
    names: &Names,
    resource: ResourceRef,
    p: &gitlab_connector::model::AccessPath,
) -> PathInfo {
    let chain = match (p.via, p.group_id) {
        (Via::Inherited, Some(g)) => {
            let ancestors = names.ancestors(resource);
            let upto = ancestors
                .iter()
                .position(|a| *a == g)
                .map_or(ancestors.len(), |i| i + 1);
            let mut chain: Vec<ResourceInfo> = ancestors[..upto]
                .iter()
                .rev()
                .map(|id| names.info(ResourceRef::Group(*id)))
                .collect();
            if upto == ancestors.len() && !ancestors.contains(&g) {
                chain.insert(0, names.info(ResourceRef::Group(g)));
            }
            chain.push(names.info(resource));
            chain
        }
        (Via::Shared, Some(g)) => vec![names.info(ResourceRef::Group(g)), names.info(resource)],
        _ => vec![names.info(resource)],
    };
    PathInfo {
        via: p.via,
        group_id: p.group_id,
        group_path: p
            .group_id
            .and_then(|g| names.path(ResourceRef::Group(g)).map(str::to_string)),
        access_level: p.access_level,
        expires_at: p.expires_at,
        chain,
    }
}

/// A path as one line of text: `inherited from acme (maintainer) until 2026-01-01`.
pub fn path_text(p: &PathInfo) -> String {
    let group = || {
        p.group_path
            .clone()
            .or_else(|| p.group_id.map(|g| format!("group {g}")))
            .unwrap_or_default()
    };
    let how = match p.via {
        Via::Direct => "direct".to_string(),
        Via::Inherited => format!("inherited from {}", group()),
        Via::Shared => format!("shared with {}", group()),
    };
    match p.expires_at {
        Some(d) => format!("{how} ({}) until {d}", role(p.access_level)),
        None => format!("{how} ({})", role(p.access_level)),
    }
}
