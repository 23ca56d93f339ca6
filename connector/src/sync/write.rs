//! Writing an [`Inventory`] as a snapshot: records in the order and shape of docs/contract.md
//! section 5, each kind sorted by its ids, access computed and streamed one resource at a time.

use std::io::{self, Write};

use chrono::{DateTime, Utc};

use super::{Inventory, SyncError, SyncOptions, crawl};
use crate::client::{Client, InstanceKind, Pacer, StatsSnapshot};
use crate::model::{
    AccessComputer, AccessInput, DirectMember, GroupRecord, ProjectRecord, Record, ResourceRef,
    SNAPSHOT_SCHEMA, SnapshotHeader, Summary, UserRecord,
};
use crate::snapshot::{Chunk, SnapshotWriter, write_ordered};

/// What identifies a snapshot.
#[derive(Debug, Clone)]
pub struct SnapshotMeta {
    pub snapshot_id: String,
    pub connector: String,
    pub scope: String,
    pub started_at: DateTime<Utc>,
}

impl SnapshotMeta {
    pub fn new(connector: &str, scope: &str) -> Self {
        Self {
            snapshot_id: uuid::Uuid::now_v7().to_string(),
            connector: connector.to_string(),
            scope: scope.to_string(),
            started_at: Utc::now(),
        }
    }
}

/// Records per part for the one-record-per-object kinds.
const RECORDS_PER_PART: usize = 2_000;
/// Resources per part for memberships and access (each resource has many lines).
const RESOURCES_PER_PART: usize = 100;

/// A run of consecutive snapshot records, encoded independently of the others.
enum Part<'a> {
    Users(&'a [&'a UserRecord]),
    Groups(&'a [&'a GroupRecord]),
    Projects(&'a [&'a ProjectRecord]),
    Members(&'a [(&'a ResourceRef, &'a Vec<DirectMember>)]),
    SharesInvitationsRolesLinks,
    Access(&'a [ResourceRef]),
}

impl Part<'_> {
    fn encode(
        &self,
        inv: &Inventory,
        computer: &AccessComputer<'_>,
        chunk: &mut Chunk,
    ) -> io::Result<()> {
        match self {
            Part::Users(users) => {
                for u in *users {
                    chunk.push(&Record::User((*u).clone()))?;
                }
            }
            Part::Groups(groups) => {
                for g in *groups {
                    chunk.push(&Record::Group((*g).clone()))?;
                }
            }
            Part::Projects(projects) => {
                for p in *projects {
                    chunk.push(&Record::Project((*p).clone()))?;
                }
            }
            Part::Members(members) => {
                for (r, members) in *members {
                    for m in *members {
                        chunk.push(&Record::Membership(m.record(**r)))?;
                    }
                }
            }
            Part::SharesInvitationsRolesLinks => {
                for s in inv.shares.values().flatten() {
                    chunk.push(&Record::Share(s.clone()))?;
                }
                for i in inv.invitations.values().flatten() {
                    chunk.push(&Record::Invitation(i.clone()))?;
                }
                for r in &inv.roles {
                    chunk.push(&Record::Role(r.clone()))?;
                }
                for l in &inv.saml_links {
                    chunk.push(&Record::SamlGroupLink(l.clone()))?;
                }
            }
            Part::Access(resources) => {
                for r in *resources {
                    for a in computer.access(*r) {
                        chunk.push(&Record::Access(a))?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Writes the whole snapshot; `prev_sha256` chains it to the previous one of the same
/// connector and scope. Records are encoded on every core (up to 4); in a sync that yields to
/// provisioning (`pacer`), each piece is paced, on this thread alone if provisioning runs when
/// the writing starts.
#[allow(clippy::too_many_arguments)]
pub fn write_snapshot<W: Write>(
    inv: &Inventory,
    meta: &SnapshotMeta,
    base_url: &str,
    instance: InstanceKind,
    prev_sha256: Option<String>,
    stats: &StatsSnapshot,
    pacer: Option<Pacer>,
    out: W,
) -> io::Result<(Summary, W)> {
    let mut w = SnapshotWriter::new(out);
    w.write(&Record::Snapshot(SnapshotHeader {
        schema: SNAPSHOT_SCHEMA.to_string(),
        snapshot_id: meta.snapshot_id.clone(),
        connector: meta.connector.clone(),
        base_url: base_url.to_string(),
        scope: meta.scope.clone(),
        started_at: meta.started_at,
        as_of: inv.as_of,
        instance: match instance {
            InstanceKind::GitlabCom => "gitlab-com".into(),
            InstanceKind::SelfManaged => "self-managed".into(),
        },
        connector_user_id: inv.connector_user_id,
    }))?;
    let users: Vec<&UserRecord> = inv.users.values().collect();
    let groups: Vec<&GroupRecord> = inv.groups.values().collect();
    let projects: Vec<&ProjectRecord> = inv.projects.values().collect();
    let members: Vec<(&ResourceRef, &Vec<DirectMember>)> = inv.members.iter().collect();
    let access: Vec<ResourceRef> = inv
        .groups
        .values()
        .filter(|g| g.in_scope)
        .map(|g| ResourceRef::Group(g.id))
        .chain(inv.projects.keys().map(|p| ResourceRef::Project(*p)))
        .collect();
    // Parts in snapshot order; a part is a few hundred kilobytes of lines at most.
    let mut parts: Vec<Part<'_>> = Vec::new();
    parts.extend(users.chunks(RECORDS_PER_PART).map(Part::Users));
    parts.extend(groups.chunks(RECORDS_PER_PART).map(Part::Groups));
    parts.extend(projects.chunks(RECORDS_PER_PART).map(Part::Projects));
    parts.extend(members.chunks(RESOURCES_PER_PART).map(Part::Members));
    parts.push(Part::SharesInvitationsRolesLinks);
    parts.extend(access.chunks(RESOURCES_PER_PART).map(Part::Access));

    let (parents, project_group) = inv.access_tree();
    let input = AccessInput {
        as_of: inv.as_of,
        parents: &parents,
        project_group: &project_group,
        members: &inv.members,
        shares: &inv.shares,
    };
    let threads = match &pacer {
        Some(p) if p.busy() => 1,
        _ => std::thread::available_parallelism().map_or(1, |n| n.get().min(4)),
    };
    write_ordered(
        &mut w,
        &parts,
        threads,
        || AccessComputer::new(input),
        |computer, part, chunk| {
            let started = std::time::Instant::now();
            let encoded = part.encode(inv, computer, chunk);
            if let Some(p) = &pacer {
                p.after(started.elapsed());
            }
            encoded
        },
    )?;
    w.finish(Summary {
        snapshot_id: meta.snapshot_id.clone(),
        complete: inv.is_complete(),
        counts: Default::default(),
        api_requests: stats.total_requests(),
        rate_limit_waits: stats.total_rate_limit_waits(),
        too_many_requests: stats.total_429s(),
        retries: stats.total_retries(),
        errors: inv.errors.clone(),
        warnings: inv.warnings.clone(),
        sha256: String::new(),
        prev_sha256,
        finished_at: Utc::now(),
    })
}

/// Crawls and writes; the writing runs on a blocking thread.
pub async fn run<W: Write + Send + 'static>(
    client: &Client,
    opts: &SyncOptions,
    meta: SnapshotMeta,
    prev_sha256: Option<String>,
    out: W,
) -> Result<(Summary, W), SyncError> {
    let inv = crawl(client, opts).await?;
    let stats = client.stats();
    let base_url = client.base_url().instance().to_string();
    let instance = client.instance();
    let pacer = Pacer::current();
    let written = tokio::task::spawn_blocking(move || {
        write_snapshot(
            &inv,
            &meta,
            &base_url,
            instance,
            prev_sha256,
            &stats,
            pacer,
            out,
        )
    })
    .await
    .map_err(|e| SyncError::Write(io::Error::other(e)))??;
    Ok(written)
}
