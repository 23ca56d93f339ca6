//! `gitlab-worker snapshots list|show|diff|export`: what an auditor reads from the store.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use gitlab_connector::model::{Record, ResourceRef, Via};

use super::{ExportFormat, SnapshotsCommand, exit};
use crate::history::render::csv_field;
use crate::store::{Store, StoreError};

pub async fn run(config: Option<&Path>, command: SnapshotsCommand) -> u8 {
    // Two snapshot files need no database.
    if let SnapshotsCommand::Diff { a, b } = &command
        && Path::new(a).is_file()
        && Path::new(b).is_file()
    {
        return diff_files(Path::new(a), Path::new(b));
    }
    let store = match super::settings_and_store(config, false).await {
        Ok((_, store)) => store,
        Err(code) => return code,
    };
    let code = match execute(&store, command).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            exit::FAILURE
        }
    };
    let _ = store.close().await;
    code
}

fn diff_files(a: &Path, b: &Path) -> u8 {
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    match gitlab_connector::snapshot::diff::diff_files(a, b, &mut out) {
        Ok(_) => match out.flush() {
            Ok(()) => exit::OK,
            Err(e) => {
                eprintln!("error: cannot write the diff: {e}");
                exit::FAILURE
            }
        },
        Err(e) => {
            eprintln!("error: {e}");
            exit::FAILURE
        }
    }
}

/// A temporary export of a stored snapshot, removed when dropped.
struct TempExport(PathBuf);

impl Drop for TempExport {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

async fn export_to_temp(store: &Store, id: &str) -> Result<TempExport, StoreError> {
    let snap = store.find_snapshot(id).await?;
    let path = std::env::temp_dir().join(format!(
        "gitlab-worker-{}-{}.ndjson",
        std::process::id(),
        snap.snapshot_id
    ));
    let guard = TempExport(path);
    let mut f = BufWriter::new(std::fs::File::create(&guard.0)?);
    store.export_snapshot(&snap, &mut f).await?;
    Ok(guard)
}

/// `snapshots changes`: the chain checked first, then the batches.
async fn changes(
    store: &Store,
    id: &str,
    json: bool,
    out: &mut impl Write,
) -> Result<(), StoreError> {
    let snap = store.find_snapshot(id).await?;
    let checked = store.verify_batches(&snap).await?;
    let batches = store
        .batches_on(&snap.connector, &snap.scope, snap.seq, None)
        .await?;
    for b in &batches {
        if json {
            writeln!(
                out,
                "{}",
                serde_json::to_string(b).map_err(std::io::Error::other)?
            )?;
        } else {
            writeln!(
                out,
                "{:>8} {} {:<13} {:>6} records {:>6} access  {}",
                b.id,
                b.applied_at.format("%Y-%m-%dT%H:%M:%SZ"),
                b.cause,
                b.change_count,
                b.access_changes,
                &b.sha256[..16]
            )?;
        }
    }
    eprintln!(
        "{checked} change batch(es) on snapshot {}: hash chain intact",
        snap.snapshot_id
    );
    Ok(())
}

async fn execute(store: &Store, command: SnapshotsCommand) -> Result<u8, StoreError> {
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    match command {
        SnapshotsCommand::List { connector, json } => {
            let list = store.list_snapshots(connector.as_deref()).await?;
            if json {
                for s in &list {
                    writeln!(
                        out,
                        "{}",
                        serde_json::to_string(s).map_err(std::io::Error::other)?
                    )?;
                }
            } else if list.is_empty() {
                eprintln!(
                    "no snapshots stored yet: run `gitlab-worker sync` or publish a sync job"
                );
            } else {
                writeln!(
                    out,
                    "{:<38} {:<12} {:<20} {:<20} {:<8} {:>9}  sha256",
                    "snapshot_id", "connector", "scope", "started_at", "complete", "records"
                )?;
                for s in &list {
                    writeln!(
                        out,
                        "{:<38} {:<12} {:<20} {:<20} {:<8} {:>9}  {}",
                        s.snapshot_id,
                        s.connector,
                        s.scope,
                        s.started_at.format("%Y-%m-%dT%H:%M:%SZ"),
                        if s.complete { "yes" } else { "PARTIAL" },
                        s.record_count,
                        &s.sha256[..s.sha256.len().min(16)]
                    )?;
                }
            }
        }
        SnapshotsCommand::Changes { id, json } => changes(store, &id, json, &mut out).await?,
        SnapshotsCommand::Show { id } => {
            let snap = store.find_snapshot(&id).await?;
            let info = &snap;
            let header: serde_json::Value =
                serde_json::from_str(&snap.header).map_err(std::io::Error::other)?;
            let summary: serde_json::Value =
                serde_json::from_str(&snap.summary).map_err(std::io::Error::other)?;
            let shown = serde_json::json!({"snapshot": info, "header": header, "summary": summary});
            writeln!(
                out,
                "{}",
                serde_json::to_string_pretty(&shown).map_err(std::io::Error::other)?
            )?;
        }
        SnapshotsCommand::Diff { a, b } => {
            let path_or_export =
                |s: &str| -> Option<PathBuf> { Path::new(s).is_file().then(|| PathBuf::from(s)) };
            let (_ga, pa) = match path_or_export(&a) {
                Some(p) => (None, p),
                None => {
                    let g = export_to_temp(store, &a).await?;
                    let p = g.0.clone();
                    (Some(g), p)
                }
            };
            let (_gb, pb) = match path_or_export(&b) {
                Some(p) => (None, p),
                None => {
                    let g = export_to_temp(store, &b).await?;
                    let p = g.0.clone();
                    (Some(g), p)
                }
            };
            drop(out);
            return Ok(diff_files(&pa, &pb));
        }
        SnapshotsCommand::Import { file } => {
            let first = BufReader::new(std::fs::File::open(&file)?)
                .lines()
                .next()
                .transpose()?
                .unwrap_or_default();
            if let Ok(Record::Snapshot(h)) = serde_json::from_str::<Record>(&first)
                && store.find_snapshot(&h.snapshot_id).await.is_ok()
            {
                eprintln!(
                    "snapshot {} is already stored; nothing to do",
                    h.snapshot_id
                );
                return Ok(exit::OK);
            }
            let stored = store.store_snapshot(&file, None).await?;
            eprintln!(
                "snapshot {} stored ({} record rows written, {} unchanged)",
                stored.info.snapshot_id, stored.rows_inserted, stored.rows_unchanged
            );
        }
        SnapshotsCommand::Pin { id } => {
            store.pin_snapshot(&id, true).await?;
            eprintln!("snapshot {id} pinned: retention keeps it");
        }
        SnapshotsCommand::Unpin { id } => {
            store.pin_snapshot(&id, false).await?;
            eprintln!("snapshot {id} unpinned");
        }
        SnapshotsCommand::Export { id, format } => {
            let snap = store.find_snapshot(&id).await?;
            match format {
                ExportFormat::Ndjson => store.export_snapshot(&snap, &mut out).await?,
                ExportFormat::Csv => {
                    let tmp = export_to_temp(store, &snap.snapshot_id).await?;
                    write_csv(&tmp.0, &mut out)?;
                }
            }
        }
    }
    out.flush()?;
    Ok(exit::OK)
}

/// One CSV row per access record, with the user's name and the resource's path resolved.
pub(crate) fn write_csv(path: &Path, out: &mut impl Write) -> Result<(), StoreError> {
    writeln!(
        out,
        "user_id,username,user_state,resource_type,resource_id,resource_path,access_level,paths,last_activity_on"
    )?;
    let mut users: HashMap<u64, (String, String, String)> = HashMap::new();
    let mut paths: HashMap<ResourceRef, String> = HashMap::new();
    for line in BufReader::new(std::fs::File::open(path)?).lines() {
        let line = line?;
        let Ok(record) = serde_json::from_str::<Record>(&line) else {
            continue;
        };
        match record {
            Record::User(u) => {
                let active = u
                    .last_activity_on
                    .map(|d| d.to_string())
                    .unwrap_or_default();
                users.insert(u.id, (u.username.clone(), u.state.clone(), active));
            }
            Record::Group(g) => {
                paths.insert(ResourceRef::Group(g.id), g.full_path.clone());
            }
            Record::Project(p) => {
                paths.insert(ResourceRef::Project(p.id), p.path_with_namespace.clone());
            }
            Record::Access(a) => {
                let (username, state, active) = users.get(&a.user_id).cloned().unwrap_or_default();
                let (rtype, rid) = match a.resource {
                    ResourceRef::Group(id) => ("group", id),
                    ResourceRef::Project(id) => ("project", id),
                };
                let via: Vec<String> = a
                    .paths
                    .iter()
                    .map(|p| {
                        let v = match p.via {
                            Via::Direct => "direct".to_string(),
                            Via::Inherited => format!(
                                "inherited from group {}",
                                p.group_id.map_or_else(String::new, |g| g.to_string())
                            ),
                            Via::Shared => format!(
                                "shared with group {}",
                                p.group_id.map_or_else(String::new, |g| g.to_string())
                            ),
                        };
                        match p.expires_at {
                            Some(d) => format!("{v} at {} until {d}", p.access_level),
                            None => format!("{v} at {}", p.access_level),
                        }
                    })
                    .collect();
                writeln!(
                    out,
                    "{},{},{},{},{},{},{},{},{}",
                    a.user_id,
                    csv_field(&username),
                    csv_field(&state),
                    rtype,
                    rid,
                    csv_field(paths.get(&a.resource).map_or("", String::as_str)),
                    a.access_level,
                    csv_field(&via.join("; ")),
                    active
                )?;
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::history::render::csv_field;

    #[test]
    fn formulas_stay_text() {
        assert_eq!(
            csv_field("=HYPERLINK(\"http://x\")"),
            "\"'=HYPERLINK(\"\"http://x\"\")\""
        );
        assert_eq!(csv_field("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(csv_field("-2+3"), "'-2+3");
        assert_eq!(csv_field("\tx"), "'\tx");
        assert_eq!(csv_field("alice"), "alice");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
    }
}
