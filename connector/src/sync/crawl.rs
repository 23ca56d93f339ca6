//! Reading a scope from GitLab into an [`Inventory`].

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::Utc;
use futures::stream::{self, StreamExt, TryStreamExt};
use tokio::sync::watch;

use super::convert::{
    group_record, is_auth_failure, membership, project_record, shares_of, user_from_admin,
    user_from_member,
};
use super::users::{assign_users, enrich_users, read_roles};
use super::{Inventory, Progress, Scope, SyncError, SyncOptions};
use crate::api::{Group, Invitation, MemberRow, Project, Source, UsersQuery};
use crate::client::{Client, IdOrPath, InstanceKind};
use crate::error::Error;
use crate::model::{DirectMember, InvitationRecord, ReadFailure, ResourceRef, UserRecord};

/// One read of the per-resource phase.
#[derive(Debug, Clone, Copy)]
enum Task {
    GroupDetail(u64),
    Members(ResourceRef),
    Invitations(ResourceRef),
}

enum Outcome {
    GroupDetail(Group),
    Members(ResourceRef, Vec<MemberRow>),
    Invitations(ResourceRef, Vec<Invitation>),
}

fn source(r: ResourceRef) -> Source {
    match r {
        ResourceRef::Group(g) => Source::Group(IdOrPath::Id(g)),
        ResourceRef::Project(p) => Source::Project(IdOrPath::Id(p)),
    }
}

impl Task {
    fn describe(&self) -> (String, ResourceRef) {
        match *self {
            Task::GroupDetail(g) => (
                format!("details and shares of group {g}"),
                ResourceRef::Group(g),
            ),
            Task::Members(r) => (format!("members of {r}"), r),
            Task::Invitations(r) => (format!("pending invitations of {r}"), r),
        }
    }

    async fn run(self, client: Client) -> (Task, Result<Outcome, Error>) {
        let result = match self {
            Task::GroupDetail(g) => client
                .group(&IdOrPath::Id(g))
                .await
                .map(Outcome::GroupDetail),
            Task::Members(r) => client
                .member_rows(&source(r))
                .try_collect()
                .await
                .map(|m| Outcome::Members(r, m)),
            Task::Invitations(r) => client
                .invitations(&source(r), None)
                .try_collect()
                .await
                .map(|i| Outcome::Invitations(r, i)),
        };
        (self, result)
    }
}

fn failure(what: String, resource: Option<ResourceRef>, e: &Error) -> ReadFailure {
    ReadFailure {
        what,
        resource,
        route: e.route().map(|r| r.to_string()),
        code: e.code().to_string(),
        message: e.to_string(),
    }
}

struct Tracker {
    tx: Option<watch::Sender<Progress>>,
    client: Client,
    state: Progress,
}

impl Tracker {
    fn phase(&mut self, phase: &str) {
        self.state.phase = phase.to_string();
        self.send();
    }
    fn known(&mut self, n: u64) {
        self.state.lists_known += n;
        self.send();
    }
    fn done(&mut self, records: u64) {
        self.state.lists_done += 1;
        self.state.records += records;
        self.send();
    }
    fn send(&mut self) {
        if let Some(tx) = &self.tx {
            self.state.requests = self.client.request_count();
            let _ = tx.send(self.state.clone());
        }
    }
}

/// A read failure of the scope itself: the token, or the scope (no snapshot at all).
fn scope_error(scope: String, e: Error) -> SyncError {
    if is_auth_failure(&e) {
        SyncError::Auth(e)
    } else {
        SyncError::Scope { scope, source: e }
    }
}

/// What reading the tree found besides the inventory.
struct Tree {
    /// The scope's group when it is a top-level group (for enterprise users, roles, SAML).
    top_level: Option<Group>,
    /// Parents of the scope group: outside the scope, their members reach into it.
    outside_parents: Vec<u64>,
}

/// Reads the scope. Fails only when the scope itself or the token is unusable.
pub async fn crawl(client: &Client, opts: &SyncOptions) -> Result<Inventory, SyncError> {
    let me = client
        .current_user()
        .await
        .map_err(|e| scope_error(opts.scope.to_string(), e))?;
    let admin = me.is_admin == Some(true);
    let mut inv = Inventory {
        as_of: Utc::now().date_naive(),
        connector_user_id: me.id,
        ..Inventory::default()
    };
    let mut track = Tracker {
        tx: opts.progress.clone(),
        client: client.clone(),
        state: Progress::default(),
    };

    // 1. The tree.
    track.phase("tree");
    let tree = match &opts.scope {
        Scope::Group(r) => read_group_tree(client, r, &mut inv, &mut track).await?,
        Scope::Instance => read_instance_tree(client, admin, &mut inv, &mut track).await?,
    };

    // 2. Per-resource reads, bounded concurrency; users in parallel on self-managed.
    track.phase("memberships");
    let tasks = resource_tasks(&inv, opts.include_invitations);
    track.known(tasks.len() as u64 + 2);
    let mut member_users: HashMap<u64, UserRecord> = HashMap::new();
    let users_future = async {
        if !admin {
            return Ok(None);
        }
        let mut users = BTreeMap::new();
        let mut s = client.users(&UsersQuery::default());
        while let Some(u) = s.try_next().await? {
            users.insert(u.id, user_from_admin(&u));
        }
        Ok::<_, Error>(Some(users))
    };
    let concurrency = opts.concurrency.max(1);
    // With an admin token every user comes from `/users`: no second copy from member records.
    let keep_member_users = !admin;
    let tasks_future = run_tasks(
        client,
        tasks,
        concurrency,
        keep_member_users,
        &mut inv,
        &mut member_users,
        &mut track,
    );
    let (tasks_result, users_result) = tokio::join!(tasks_future, users_future);
    tasks_result?;

    // 3. Groups outside the scope whose members reach into it.
    track.phase("shared groups");
    let fetched = read_outside_groups(client, tree.outside_parents, &mut inv, &mut track).await?;
    let member_tasks: Vec<Task> = fetched
        .iter()
        .map(|g| Task::Members(ResourceRef::Group(*g)))
        .collect();
    run_tasks(
        client,
        member_tasks,
        concurrency,
        keep_member_users,
        &mut inv,
        &mut member_users,
        &mut track,
    )
    .await?;

    // 4. Users.
    track.phase("users");
    let all_users = match users_result {
        Ok(all) => all,
        Err(e) if is_auth_failure(&e) => return Err(SyncError::Auth(e)),
        Err(e) => {
            inv.errors
                .push(failure("users of the instance".into(), None, &e));
            None
        }
    };
    assign_users(
        &mut inv,
        all_users,
        member_users,
        opts.scope == Scope::Instance,
    );
    if !admin && let Some(top) = &tree.top_level {
        enrich_users(client, top.id, &mut inv).await?;
    }

    // 5. Custom roles and SAML group links, where visible.
    track.phase("roles");
    read_roles(client, admin, tree.top_level.as_ref(), &mut inv).await?;
    track.phase("done");
    Ok(inv)
}

/// The scope group, its descendants and its projects.
async fn read_group_tree(
    client: &Client,
    r: &IdOrPath,
    inv: &mut Inventory,
    track: &mut Tracker,
) -> Result<Tree, SyncError> {
    let root = client
        .group(r)
        .await
        .map_err(|e| scope_error(r.to_string(), e))?;
    inv.groups.insert(root.id, group_record(&root, true));
    inv.shares.insert(
        ResourceRef::Group(root.id),
        shares_of(ResourceRef::Group(root.id), &root.shared_with_groups),
    );
    let outside_parents: Vec<u64> = root.parent_id.into_iter().collect();
    let root_ref = IdOrPath::Id(root.id);
    let root_id = root.id;
    read_subgroups(client, root_id, inv).await?;
    track.done(inv.groups.len() as u64);
    let failed = read_list(
        client.group_projects(&root_ref, true),
        || {
            (
                format!("projects of group {root_id}"),
                Some(ResourceRef::Group(root_id)),
            )
        },
        |p| add_project(inv, &p),
    )
    .await?;
    inv.errors.extend(failed);
    track.done(inv.projects.len() as u64);
    Ok(Tree {
        top_level: root.parent_id.is_none().then_some(root),
        outside_parents,
    })
}

/// The descendants of a group in the scope; a list that cannot be read is a read failure.
async fn read_subgroups(client: &Client, group: u64, inv: &mut Inventory) -> Result<(), SyncError> {
    let failed = read_list(
        client.descendant_groups(&IdOrPath::Id(group)),
        || {
            (
                format!("subgroups of group {group}"),
                Some(ResourceRef::Group(group)),
            )
        },
        |g| {
            inv.groups.insert(g.id, group_record(&g, true));
        },
    )
    .await?;
    inv.errors.extend(failed);
    Ok(())
}

/// Every top-level group with its descendants, and every project (self-managed, admin).
async fn read_instance_tree(
    client: &Client,
    admin: bool,
    inv: &mut Inventory,
    track: &mut Tracker,
) -> Result<Tree, SyncError> {
    if !admin || client.instance() == InstanceKind::GitlabCom {
        return Err(SyncError::InstanceNeedsAdmin);
    }
    let tops: Vec<Group> = client
        .groups(true)
        .try_collect()
        .await
        .map_err(|e| scope_error("instance".into(), e))?;
    for t in &tops {
        inv.groups.insert(t.id, group_record(t, true));
        read_subgroups(client, t.id, inv).await?;
    }
    let failed = read_list(
        client.projects(&crate::api::ProjectsQuery::default()),
        || ("projects of the instance".to_string(), None),
        |p| add_project(inv, &p),
    )
    .await?;
    inv.errors.extend(failed);
    track.done((inv.groups.len() + inv.projects.len()) as u64);
    Ok(Tree {
        top_level: None,
        outside_parents: Vec::new(),
    })
}

/// The reads every resource in the scope needs: a detail per group whose shares are not known
/// yet, members, and invitations.
fn resource_tasks(inv: &Inventory, include_invitations: bool) -> Vec<Task> {
    let mut tasks: Vec<Task> = Vec::new();
    let in_scope_groups: Vec<u64> = inv
        .groups
        .values()
        .filter(|g| g.in_scope)
        .map(|g| g.id)
        .collect();
    let detail_done: BTreeSet<u64> = inv
        .shares
        .keys()
        .filter_map(|r| match r {
            ResourceRef::Group(g) => Some(*g),
            ResourceRef::Project(_) => None,
        })
        .collect();
    for g in &in_scope_groups {
        if !detail_done.contains(g) {
            tasks.push(Task::GroupDetail(*g));
        }
    }
    let resources = in_scope_groups
        .iter()
        .map(|g| ResourceRef::Group(*g))
        .chain(inv.projects.keys().map(|p| ResourceRef::Project(*p)));
    for r in resources {
        tasks.push(Task::Members(r));
        if include_invitations {
            tasks.push(Task::Invitations(r));
        }
    }
    tasks
}

/// Groups outside the scope that are shared into it (and the scope's ancestors, and theirs):
/// their members reach inside. Returns the groups read, whose members are read next.
async fn read_outside_groups(
    client: &Client,
    outside_parents: Vec<u64>,
    inv: &mut Inventory,
    track: &mut Tracker,
) -> Result<Vec<u64>, SyncError> {
    let known: BTreeSet<u64> = inv.groups.keys().copied().collect();
    let mut external: Vec<u64> = inv
        .shares
        .values()
        .flatten()
        .map(|s| s.shared_with_group_id)
        .filter(|g| !known.contains(g))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    external.extend(outside_parents);
    let mut fetched: Vec<u64> = Vec::new();
    while let Some(g) = external.pop() {
        if inv.groups.contains_key(&g) {
            continue;
        }
        track.known(2);
        match client.group(&IdOrPath::Id(g)).await {
            Ok(detail) => {
                inv.groups.insert(detail.id, group_record(&detail, false));
                if let Some(p) = detail.parent_id {
                    external.push(p);
                }
                fetched.push(detail.id);
            }
            Err(e) if is_auth_failure(&e) => return Err(SyncError::Auth(e)),
            Err(e) => inv.errors.push(failure(
                format!("group {g}, outside the scope, whose members have access inside it"),
                Some(ResourceRef::Group(g)),
                &e,
            )),
        }
        track.done(1);
    }
    Ok(fetched)
}

/// Streams a list into `each`. A failure after the client's retries is returned as a
/// [`ReadFailure`] (the snapshot becomes partial); an authentication failure stops the sync.
async fn read_list<T>(
    mut items: futures::stream::BoxStream<'static, Result<T, Error>>,
    what: impl FnOnce() -> (String, Option<ResourceRef>),
    mut each: impl FnMut(T),
) -> Result<Option<ReadFailure>, SyncError> {
    loop {
        match items.try_next().await {
            Ok(Some(item)) => each(item),
            Ok(None) => return Ok(None),
            Err(e) if is_auth_failure(&e) => return Err(SyncError::Auth(e)),
            Err(e) => {
                let (what, resource) = what();
                return Ok(Some(failure(what, resource, &e)));
            }
        }
    }
}

fn add_project(inv: &mut Inventory, p: &Project) {
    inv.projects.insert(p.id, project_record(p));
    let r = ResourceRef::Project(p.id);
    let shares = shares_of(r, &p.shared_with_groups);
    if !shares.is_empty() {
        inv.shares.insert(r, shares);
    }
}

async fn run_tasks(
    client: &Client,
    tasks: Vec<Task>,
    concurrency: usize,
    keep_member_users: bool,
    inv: &mut Inventory,
    member_users: &mut HashMap<u64, UserRecord>,
    track: &mut Tracker,
) -> Result<(), SyncError> {
    let mut results = stream::iter(tasks)
        .map(|t| t.run(client.clone()))
        .buffer_unordered(concurrency);
    while let Some((task, result)) = results.next().await {
        match result {
            Ok(Outcome::GroupDetail(g)) => {
                let r = ResourceRef::Group(g.id);
                let shares = shares_of(r, &g.shared_with_groups);
                track.done(shares.len() as u64);
                if !shares.is_empty() {
                    inv.shares.insert(r, shares);
                }
            }
            Ok(Outcome::Members(r, members)) => {
                track.done(members.len() as u64);
                let mut records: Vec<DirectMember> = Vec::with_capacity(members.len());
                for m in &members {
                    if keep_member_users {
                        member_users
                            .entry(m.id)
                            .or_insert_with(|| user_from_member(m));
                    }
                    records.push(membership(m));
                }
                records.sort_by_key(|m| m.user_id);
                records.dedup_by_key(|m| m.user_id);
                if !records.is_empty() {
                    inv.members.insert(r, records);
                }
            }
            Ok(Outcome::Invitations(r, invitations)) => {
                track.done(invitations.len() as u64);
                let records = invitation_records(r, &invitations);
                if !records.is_empty() {
                    inv.invitations.insert(r, records);
                }
            }
            Err(e) if is_auth_failure(&e) => return Err(SyncError::Auth(e)),
            Err(e) => {
                track.done(0);
                let (what, resource) = task.describe();
                inv.errors.push(failure(what, Some(resource), &e));
            }
        }
    }
    Ok(())
}

/// A resource's pending invitations as records, one per email. A list that changes while it is
/// paged (an invitation sent meanwhile shifts the pages) can name one invitation on two pages,
/// as it can a member: a snapshot holds each once (the first read).
fn invitation_records(r: ResourceRef, invitations: &[Invitation]) -> Vec<InvitationRecord> {
    let mut records: Vec<InvitationRecord> = invitations
        .iter()
        .map(|i| InvitationRecord {
            resource: r,
            email: i.invite_email.clone(),
            access_level: i.access_level.0,
            expires_at: i.expires_at,
        })
        .collect();
    // Stable: of two reads of one email, the first stays.
    records.sort_by(|a, b| a.email.cmp(&b.email));
    records.dedup_by(|later, first| later.email == first.email);
    records
}

#[cfg(test)]
mod invitation_tests {
    use super::*;

    #[test]
    fn an_invitation_read_on_two_pages_is_recorded_once() {
        let invite = |email: &str, level: u16| -> Invitation {
            serde_json::from_value(serde_json::json!({
                "invite_email": email,
                "access_level": level,
            }))
            .unwrap()
        };
        let r = ResourceRef::Group(3);
        let records = invitation_records(
            r,
            &[
                invite("b@x.io", 30),
                invite("a@x.io", 20),
                invite("b@x.io", 40),
            ],
        );
        let seen: Vec<(&str, u16)> = records
            .iter()
            .map(|i| (i.email.as_str(), i.access_level))
            .collect();
        assert_eq!(seen, [("a@x.io", 20), ("b@x.io", 30)]);
    }
}
