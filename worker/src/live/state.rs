//! The live state of one connector and scope: the newest complete snapshot with the change
//! batches stored on it laid over its records, held as an inventory so the next batch of facts
//! can be applied and access recomputed where they reach.

use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;

use chrono::Utc;
use gitlab_connector::live::{Fact, LiveScope};
use gitlab_connector::model::{Record, ResourceRef};
use gitlab_connector::sync::Inventory;

use crate::jobs::context::SpoolFile;
use crate::store::{ChangeBatch, SnapshotInfo, Store, StoreError};

pub struct LiveState {
    pub base: SnapshotInfo,
    /// The newest batch applied (`None`: the base alone).
    pub last_batch: Option<i64>,
    pub inv: Inventory,
    pub scope: LiveScope,
}

/// The scope root of an inventory: the in-scope group whose parent is not in scope; `None`
/// for the instance scope.
fn scope_of(scope: &str, inv: &Inventory) -> LiveScope {
    if scope.eq_ignore_ascii_case("instance") {
        return LiveScope { root: None };
    }
    let root = inv
        .groups
        .values()
        .filter(|g| g.in_scope)
        .find(|g| {
            g.parent_id
                .and_then(|p| inv.groups.get(&p))
                .is_none_or(|p| !p.in_scope)
        })
        .map(|g| g.id);
    // A scope with no group read: nothing is in it, so nothing new is either.
    LiveScope {
        root: Some(root.unwrap_or(0)),
    }
}

impl LiveState {
    /// The newest complete snapshot of `connector`/`scope` with its batches, or `None` when
    /// there is none yet (events wait for the first full sync).
    pub async fn load(
        store: &Store,
        spool_dir: &Path,
        connector: &str,
        scope: &str,
    ) -> Result<Option<Self>, StoreError> {
        let Some(base) = store.latest_snapshot(connector, scope, true).await? else {
            return Ok(None);
        };
        let batches = store.batches_on(connector, scope, base.seq, None).await?;
        let overrides = Store::overrides(&batches)?;
        crate::files::private_dir(spool_dir)?;
        let file = SpoolFile::new(spool_dir.join(format!(
            "live-{connector}-{:016x}.ndjson",
            fastrand::u64(..)
        )));
        let mut out = BufWriter::new(crate::files::create_private(file.path())?);
        store.export_with(&base, &overrides, &mut out).await?;
        out.flush()?;
        drop(out);
        let path = file.path().to_path_buf();
        let inv = tokio::task::spawn_blocking(move || read_inventory(&path))
            .await
            .map_err(|e| StoreError::Io(std::io::Error::other(e)))??;
        let scope_root = scope_of(scope, &inv);
        Ok(Some(Self {
            base,
            last_batch: batches.last().map(|b| b.id),
            inv,
            scope: scope_root,
        }))
    }

    /// Applies batches another worker stored after ours (their facts, in order).
    pub fn catch_up(&mut self, batches: &[ChangeBatch]) -> Result<(), StoreError> {
        for b in batches {
            let facts = facts_of(b)?;
            gitlab_connector::live::apply(
                &mut self.inv,
                self.scope,
                &facts,
                Utc::now().date_naive(),
            );
            self.last_batch = Some(b.id);
        }
        Ok(())
    }

    /// Facts read after this base's crawl began may be newer than what it read (a batch stored
    /// on the previous base while the sync ran): they are applied on it again, and what they
    /// still change is stored as the base's first batch, with its access events. True when
    /// one was stored.
    pub async fn replay_recent(
        &mut self,
        store: &Store,
        subjects: &crate::subjects::Subjects,
    ) -> Result<bool, StoreError> {
        if self.last_batch.is_some() {
            return Ok(false);
        }
        let recent = store
            .batches_read_since(
                &self.base.connector,
                &self.base.scope,
                self.base.seq,
                self.base.started_at,
            )
            .await?;
        if recent.is_empty() {
            return Ok(false);
        }
        let mut facts = Vec::new();
        let mut sources = Vec::new();
        for b in &recent {
            facts.extend(facts_of(b)?);
            sources.extend(b.source_events.iter().cloned());
        }
        let read_at = recent
            .iter()
            .map(|b| b.read_at)
            .min()
            .unwrap_or_else(Utc::now);
        let applied = gitlab_connector::live::apply(
            &mut self.inv,
            self.scope,
            &facts,
            Utc::now().date_naive(),
        );
        if applied.is_empty() {
            return Ok(false);
        }
        let invalid = |e: String| StoreError::Damaged {
            id: format!("replayed facts on snapshot {}", self.base.snapshot_id),
            message: e,
        };
        let base_id = self.base.snapshot_id.clone();
        let appended = store
            .append_batch(
                crate::store::NewBatch {
                    base: &self.base,
                    read_at,
                    cause: "gitlab_event",
                    source_events: &sources,
                    facts: serde_json::to_string(&facts).map_err(|e| invalid(e.to_string()))?,
                    changes: super::processor::change_lines(&applied.changes).map_err(invalid)?,
                    change_count: applied.changes.len() as i64,
                    access_changes: applied.access.len() as i64,
                },
                None,
                |b| crate::jobs::events::live_access_events(subjects, b, &base_id, &applied.access),
            )
            .await?;
        match appended {
            crate::store::Append::Stored(b) => {
                self.last_batch = Some(b.id);
                Ok(true)
            }
            crate::store::Append::Stale => Err(StoreError::Io(std::io::Error::other(
                "the live state changed while it was loaded (another worker stored a batch); it is loaded again",
            ))),
        }
    }

    pub fn knows(&self, r: ResourceRef) -> bool {
        match r {
            ResourceRef::Group(g) => self.inv.groups.contains_key(&g),
            ResourceRef::Project(p) => self.inv.projects.contains_key(&p),
        }
    }
}

pub fn facts_of(b: &ChangeBatch) -> Result<Vec<Fact>, StoreError> {
    serde_json::from_str(&b.facts).map_err(|e| StoreError::Damaged {
        id: format!("change batch {}", b.id),
        message: format!("its facts are not valid: {e}"),
    })
}

/// Body records only: access records are derived and skipped without being parsed.
fn read_inventory(path: &Path) -> Result<Inventory, StoreError> {
    let lines = BufReader::new(std::fs::File::open(path)?).lines();
    let records = lines.filter_map(|l| match l {
        Err(e) => Some(Err(StoreError::Io(e))),
        Ok(l) if l.starts_with("{\"type\":\"access\"") || l.is_empty() => None,
        Ok(l) => Some(
            serde_json::from_str::<Record>(&l).map_err(|e| StoreError::Damaged {
                id: path.display().to_string(),
                message: format!("a record is not valid: {e}"),
            }),
        ),
    });
    Inventory::from_records(records)
}
