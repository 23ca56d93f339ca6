//! The stored history of one connector and scope: which snapshot and batches stand for a
//! time, records as of that time, names, and how long a record has held.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use gitlab_connector::model::{GroupRecord, ProjectRecord, Record, ResourceRef, UserRecord};
use serde::Serialize;

use super::{HistoryError, Ident, ResourceInfo, ResourceSel, UserInfo, UserSel};
use crate::store::{ChangeBatch, ChangeLine, RecordVersion, SnapshotInfo, Store};

/// The snapshots of one connector and scope, oldest first (pruned ones left out: their
/// records are gone).
pub struct Timeline<'a> {
    pub store: &'a Store,
    pub connector: String,
    pub scope: String,
    pub snapshots: Vec<SnapshotInfo>,
}

/// What an answer stands on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BasedOn {
    pub snapshot_id: String,
    pub complete: bool,
    /// When the snapshot's crawl finished: the time its records describe.
    pub finished_at: DateTime<Utc>,
    pub sha256: String,
    /// Live change batches laid over it up to the time asked about.
    pub change_batches: usize,
    pub last_change_batch_id: Option<i64>,
    pub last_change_at: Option<DateTime<Utc>>,
}

/// The state at one time: a snapshot and the batches applied on it by then.
pub struct Basis {
    pub at: DateTime<Utc>,
    pub snapshot: SnapshotInfo,
    pub batches: Vec<ChangeBatch>,
    /// Record key → line (`None`: removed) after the batches.
    pub overrides: BTreeMap<String, Option<String>>,
}

impl Basis {
    pub fn based_on(&self) -> BasedOn {
        let last = self.batches.last();
        BasedOn {
            snapshot_id: self.snapshot.snapshot_id.clone(),
            complete: self.snapshot.complete,
            finished_at: self.snapshot.finished_at,
            sha256: self.snapshot.sha256.clone(),
            change_batches: self.batches.len(),
            last_change_batch_id: last.map(|b| b.id),
            last_change_at: last.map(|b| b.applied_at),
        }
    }
}

/// One observation of a record: from a snapshot or a batch, at its time.
#[derive(Debug, Clone, Copy)]
struct Observation {
    time: DateTime<Utc>,
    level: Option<u16>,
}

/// When a record's level began to hold, and whether that is where the history starts (so it
/// may hold from earlier).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Since {
    pub time: DateTime<Utc>,
    pub history_start: bool,
}

/// The key of a record as the store orders it (connector/src/model, `Record::order_key`).
pub fn user_key(id: u64) -> String {
    format!("1/{id:020}")
}

pub fn resource_key(r: ResourceRef) -> String {
    match r {
        ResourceRef::Group(id) => format!("2/{id:020}"),
        ResourceRef::Project(id) => format!("3/{id:020}"),
    }
}

/// `9/g…/` : the access records on a resource.
pub fn access_prefix(r: ResourceRef) -> String {
    match r {
        ResourceRef::Group(id) => format!("9/g{id:020}/"),
        ResourceRef::Project(id) => format!("9/p{id:020}/"),
    }
}

/// A batch's change lines: record key and line (`None`: the record is gone).
pub type ChangeLines = Vec<(String, Option<String>)>;

/// When a record was changed by batches, and to which level (`None`: gone), oldest first.
pub type LevelChanges = Vec<(DateTime<Utc>, Option<u16>)>;

/// The change lines of a batch that a key filter keeps.
pub fn batch_lines(
    b: &ChangeBatch,
    keep: impl Fn(&str) -> bool,
) -> Result<ChangeLines, HistoryError> {
    let mut out = Vec::new();
    for line in b.changes.lines().filter(|l| !l.is_empty()) {
        let c: ChangeLine = serde_json::from_str(line).map_err(|e| {
            HistoryError::Store(crate::store::StoreError::Damaged {
                id: format!("change batch {}", b.id),
                message: format!("a change line is not valid: {e}"),
            })
        })?;
        if keep(&c.key) {
            out.push((c.key, c.record.map(|r| r.get().to_string())));
        }
    }
    Ok(out)
}

/// The level of an access record's line, reading nothing else of it.
pub fn access_level(line: &str) -> Option<u16> {
    #[derive(serde::Deserialize)]
    struct Level {
        access_level: u16,
    }
    serde_json::from_str::<Level>(line)
        .ok()
        .map(|l| l.access_level)
}

/// A stored version of an access record reduced to what "since" needs: the snapshots it is
/// valid in and its level.
#[derive(Debug, Clone, Copy)]
pub struct LevelVersion {
    pub valid_from: i64,
    pub valid_to: Option<i64>,
    pub level: Option<u16>,
}

impl LevelVersion {
    pub fn of(v: &RecordVersion) -> Self {
        Self {
            valid_from: v.valid_from,
            valid_to: v.valid_to,
            level: access_level(&v.content),
        }
    }

    fn valid_at(&self, seq: i64) -> bool {
        self.valid_from <= seq && self.valid_to.is_none_or(|to| to > seq)
    }
}

impl<'a> Timeline<'a> {
    /// The history of `connector`'s `scope` (the scope of its newest snapshot when `None`).
    pub async fn load(
        store: &'a Store,
        connector: &str,
        scope: Option<&str>,
    ) -> Result<Self, HistoryError> {
        let all = store.list_snapshots(Some(connector)).await?;
        let Some(newest) = all.last() else {
            return Err(HistoryError::NoSnapshots {
                connector: connector.into(),
            });
        };
        let scope = scope.unwrap_or(&newest.scope).to_string();
        let snapshots: Vec<SnapshotInfo> = all
            .iter()
            .filter(|s| s.scope == scope && s.pruned_at.is_none())
            .cloned()
            .collect();
        if snapshots.is_empty() {
            let mut known: Vec<&str> = all.iter().map(|s| s.scope.as_str()).collect();
            known.dedup();
            return Err(HistoryError::UnknownScope {
                connector: connector.into(),
                scope,
                known: known.join(", "),
            });
        }
        Ok(Self {
            store,
            connector: connector.into(),
            scope,
            snapshots,
        })
    }

    pub fn complete_snapshots(&self) -> impl Iterator<Item = &SnapshotInfo> {
        self.snapshots.iter().filter(|s| s.complete)
    }

    /// The state at `at`: an error for a time before the first snapshot finished.
    pub async fn basis(&self, at: DateTime<Utc>) -> Result<Basis, HistoryError> {
        let known: Vec<&SnapshotInfo> = self
            .snapshots
            .iter()
            .filter(|s| s.finished_at <= at)
            .collect();
        let snapshot = known
            .iter()
            .rev()
            .find(|s| s.complete)
            .or(known.last())
            .map(|s| (*s).clone())
            .ok_or_else(|| HistoryError::BeforeHistory {
                connector: self.connector.clone(),
                at,
                first: self.snapshots[0].finished_at,
            })?;
        let batches: Vec<ChangeBatch> = self
            .store
            .batches_on(&self.connector, &self.scope, snapshot.seq, None)
            .await?
            .into_iter()
            .filter(|b| b.applied_at <= at)
            .collect();
        let overrides = Store::overrides(&batches)?;
        Ok(Basis {
            at,
            snapshot,
            batches,
            overrides,
        })
    }

    /// Records with these keys at the basis (batches laid over the snapshot): key → line.
    pub async fn records(
        &self,
        basis: &Basis,
        keys: &[String],
    ) -> Result<HashMap<String, String>, HistoryError> {
        let mut out: HashMap<String, String> = self
            .store
            .records_at(&self.connector, &self.scope, basis.snapshot.seq, keys)
            .await?
            .into_iter()
            .map(|v| (v.key, v.content))
            .collect();
        for k in keys {
            match basis.overrides.get(k) {
                Some(Some(line)) => {
                    out.insert(k.clone(), line.clone());
                }
                Some(None) => {
                    out.remove(k);
                }
                None => {}
            }
        }
        Ok(out)
    }

    /// A record named `label` (username, full path) of the kind `key_prefix` at the basis.
    async fn named(
        &self,
        basis: &Basis,
        key_prefix: &str,
        label: &str,
        name_of: impl Fn(&Record) -> Option<&str>,
    ) -> Result<Option<Record>, HistoryError> {
        let stored = self
            .store
            .records_named(
                &self.connector,
                &self.scope,
                Some(basis.snapshot.seq),
                key_prefix,
                label,
                false,
                10,
            )
            .await?;
        let mut candidates: BTreeMap<String, Option<String>> = stored
            .into_iter()
            .map(|v| (v.key, Some(v.content)))
            .collect();
        for (k, v) in basis.overrides.range(key_prefix.to_string()..) {
            if !k.starts_with(key_prefix) {
                break;
            }
            candidates.insert(k.clone(), v.clone());
        }
        for (k, line) in candidates {
            let line = match basis.overrides.get(&k) {
                Some(over) => over.clone(),
                None => line,
            };
            let Some(record) = line.and_then(|l| serde_json::from_str::<Record>(&l).ok()) else {
                continue;
            };
            if name_of(&record) == Some(label) {
                return Ok(Some(record));
            }
        }
        Ok(None)
    }

    /// The resource a selector names at the basis, with its path.
    pub async fn resolve_resource(
        &self,
        basis: &Basis,
        sel: &ResourceSel,
    ) -> Result<ResourceInfo, HistoryError> {
        let not_found = || HistoryError::NotFound {
            what: sel.to_string(),
            connector: self.connector.clone(),
            at: basis.at,
        };
        let id = match sel.ident() {
            Ident::Id(id) => *id,
            Ident::Path(p) => {
                let record = self
                    .named(basis, sel.key_prefix(), p, |r| match r {
                        Record::Group(g) => Some(g.full_path.as_str()),
                        Record::Project(p) => Some(p.path_with_namespace.as_str()),
                        _ => None,
                    })
                    .await?
                    .ok_or_else(not_found)?;
                match record {
                    Record::Group(g) => g.id,
                    Record::Project(p) => p.id,
                    _ => return Err(not_found()),
                }
            }
        };
        let r = sel.with_id(id);
        let names = self.names(basis, &[r]).await?;
        match names.path(r) {
            Some(path) => Ok(ResourceInfo::new(r, Some(path.to_string()))),
            None => Err(not_found()),
        }
    }

    /// The user a selector names at the basis.
    pub async fn resolve_user(
        &self,
        basis: &Basis,
        sel: &UserSel,
    ) -> Result<UserRecord, HistoryError> {
        let not_found = || HistoryError::NotFound {
            what: sel.to_string(),
            connector: self.connector.clone(),
            at: basis.at,
        };
        let record = match sel {
            UserSel::Username(u) => {
                self.named(basis, "1/", u, |r| match r {
                    Record::User(u) => Some(u.username.as_str()),
                    _ => None,
                })
                .await?
            }
            UserSel::Id(id) => self
                .records(basis, &[user_key(*id)])
                .await?
                .into_values()
                .next()
                .and_then(|l| serde_json::from_str::<Record>(&l).ok()),
        };
        if let Some(Record::User(u)) = record {
            return Ok(u);
        }
        // Not in the state at that time (no membership in the scope then): the newest stored
        // record of them, so the answer is "nothing" rather than "who?".
        let (label, key) = match sel {
            UserSel::Username(u) => (Some(u.as_str()), None),
            UserSel::Id(id) => (None, Some(user_key(*id))),
        };
        let versions = match (label, key) {
            (Some(l), _) => {
                self.store
                    .records_named(&self.connector, &self.scope, None, "1/", l, false, 1)
                    .await?
            }
            (_, Some(k)) => {
                self.store
                    .versions_of_keys(&self.connector, &self.scope, &[k])
                    .await?
            }
            _ => Vec::new(),
        };
        match versions
            .iter()
            .max_by_key(|v| v.valid_from)
            .and_then(|v| serde_json::from_str::<Record>(&v.content).ok())
        {
            Some(Record::User(u)) => Ok(u),
            _ => Err(not_found()),
        }
    }

    /// Users at the basis, by id.
    pub async fn users(
        &self,
        basis: &Basis,
        ids: impl IntoIterator<Item = u64>,
    ) -> Result<HashMap<u64, UserInfo>, HistoryError> {
        let keys: Vec<String> = ids.into_iter().map(user_key).collect();
        let mut out = HashMap::new();
        for line in self.records(basis, &keys).await?.into_values() {
            // User keys only: the struct, not the tagged `Record` (which buffers every field).
            if let Ok(u) = serde_json::from_str::<UserRecord>(&line) {
                out.insert(u.id, user_info(&u));
            }
        }
        Ok(out)
    }

    /// Groups and projects at the basis: `resources`, their namespaces and every ancestor.
    pub async fn names(
        &self,
        basis: &Basis,
        resources: &[ResourceRef],
    ) -> Result<Names, HistoryError> {
        let mut names = Names::default();
        let mut wanted: HashSet<ResourceRef> = resources.iter().copied().collect();
        // A loop per level of nesting (GitLab allows 20), each one query per 500 keys.
        for _ in 0..32 {
            if wanted.is_empty() {
                break;
            }
            let keys: Vec<String> = wanted.iter().map(|r| resource_key(*r)).collect();
            names.missing.extend(wanted.drain());
            for line in self.records(basis, &keys).await?.into_values() {
                match serde_json::from_str::<Record>(&line) {
                    Ok(Record::Group(g)) => {
                        names.missing.remove(&ResourceRef::Group(g.id));
                        if let Some(p) = g.parent_id {
                            wanted.insert(ResourceRef::Group(p));
                        }
                        names.groups.insert(g.id, g);
                    }
                    Ok(Record::Project(p)) => {
                        names.missing.remove(&ResourceRef::Project(p.id));
                        wanted.insert(ResourceRef::Group(p.namespace_id));
                        names.projects.insert(p.id, p);
                    }
                    _ => {}
                }
            }
            wanted.retain(|r| !names.knows(*r));
        }
        Ok(names)
    }

    /// When the record `key` began to hold `level` without a break, seen at `at`: over the
    /// complete snapshots (from `versions`, the key's stored versions) and the batches that
    /// changed it (`batch_changes`: time and line, oldest first).
    pub fn since(
        &self,
        at: DateTime<Utc>,
        level: u16,
        versions: &[LevelVersion],
        batch_changes: &[(DateTime<Utc>, Option<u16>)],
    ) -> Since {
        let mut seen: Vec<Observation> = self
            .complete_snapshots()
            .filter(|s| s.finished_at <= at)
            .map(|s| Observation {
                time: s.finished_at,
                level: versions
                    .iter()
                    .find(|v| v.valid_at(s.seq))
                    .and_then(|v| v.level),
            })
            .collect();
        seen.extend(
            batch_changes
                .iter()
                .filter(|(t, _)| *t <= at)
                .map(|(time, level)| Observation {
                    time: *time,
                    level: *level,
                }),
        );
        seen.sort_by_key(|o| o.time);
        let mut since = Since {
            time: at,
            history_start: false,
        };
        for (i, o) in seen.iter().enumerate().rev() {
            if o.level != Some(level) {
                return since;
            }
            since = Since {
                time: o.time,
                history_start: i == 0,
            };
        }
        since
    }
}

pub fn user_info(u: &UserRecord) -> UserInfo {
    UserInfo {
        username: Some(u.username.clone()),
        name: Some(u.name.clone()),
        user_state: Some(u.state.clone()),
        user_kind: serde_json::to_value(u.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string)),
        is_admin: u.is_admin,
        two_factor_enabled: u.two_factor_enabled,
        last_activity_on: u.last_activity_on,
        last_sign_in_at: u.last_sign_in_at,
    }
}

/// Groups and projects by id, as of one time.
#[derive(Debug, Default)]
pub struct Names {
    pub groups: HashMap<u64, GroupRecord>,
    pub projects: HashMap<u64, ProjectRecord>,
    missing: HashSet<ResourceRef>,
}

impl Names {
    fn knows(&self, r: ResourceRef) -> bool {
        match r {
            ResourceRef::Group(id) => self.groups.contains_key(&id),
            ResourceRef::Project(id) => self.projects.contains_key(&id),
        }
    }

    pub fn path(&self, r: ResourceRef) -> Option<&str> {
        match r {
            ResourceRef::Group(id) => self.groups.get(&id).map(|g| g.full_path.as_str()),
            ResourceRef::Project(id) => self
                .projects
                .get(&id)
                .map(|p| p.path_with_namespace.as_str()),
        }
    }

    pub fn info(&self, r: ResourceRef) -> ResourceInfo {
        ResourceInfo::new(r, self.path(r).map(str::to_string))
    }

    /// The groups above a resource, nearest first.
    pub fn ancestors(&self, r: ResourceRef) -> Vec<u64> {
        let mut next = match r {
            ResourceRef::Group(id) => self.groups.get(&id).and_then(|g| g.parent_id),
            ResourceRef::Project(id) => self.projects.get(&id).map(|p| p.namespace_id),
        };
        let mut out = Vec::new();
        while let Some(g) = next {
            if out.contains(&g) || out.len() > 64 {
                break;
            }
            out.push(g);
            next = self.groups.get(&g).and_then(|g| g.parent_id);
        }
        out
    }
}
