//! Reading again what events touched: one membership (`GET …/members/:user_id`), a group or
//! project with its shares, members and invitations, or a user. Requests run a few at a time;
//! the facts come back in the order of the touches (groups and projects first).

use std::collections::{BTreeSet, HashMap};

use futures::{StreamExt, TryStreamExt};

use super::{Fact, Touch};
use crate::api::{MemberRow, Source};
use crate::client::{Client, IdOrPath};
use crate::error::Error;
use crate::model::{InvitationRecord, MembershipRecord, ResourceRef, UserRecord};
use crate::sync::Inventory;
use crate::sync::convert::{
    group_record, membership, project_record, shares_of, user_from_admin, user_from_member,
};

/// Touches read at once.
const CONCURRENCY: usize = 8;

fn source(r: ResourceRef) -> Source {
    match r {
        ResourceRef::Group(g) => Source::group(IdOrPath::Id(g)),
        ResourceRef::Project(p) => Source::project(IdOrPath::Id(p)),
    }
}

fn or_gone<T>(r: Result<T, Error>) -> Result<Option<T>, Error> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

/// Reads the touches again. `admin`: the token may read any user in full (`GET /users/:id`),
/// as the full sync does; otherwise a new member's user record comes from the member entity.
pub async fn reread(
    client: &Client,
    inv: &Inventory,
    touches: &BTreeSet<Touch>,
    admin: bool,
) -> Result<Vec<Fact>, Error> {
    let known: BTreeSet<u64> = inv.users.keys().copied().collect();
    let known = &known;
    let mut facts: Vec<Fact> = futures::stream::iter(touches.iter().copied())
        .map(|t| read_one(client, known, t, admin))
        .buffered(CONCURRENCY)
        .try_concat()
        .await?;
    facts.extend(shared_in(client, inv, known, &facts, admin).await?);
    Ok(facts)
}

/// Groups outside the scope that the facts' shares name and the inventory does not know, with
/// their ancestors (all their members reach in through the share), as the full sync reads
/// them: detail and members.
async fn shared_in(
    client: &Client,
    inv: &Inventory,
    known_users: &BTreeSet<u64>,
    facts: &[Fact],
    admin: bool,
) -> Result<Vec<Fact>, Error> {
    let read: BTreeSet<u64> = facts
        .iter()
        .filter_map(|f| match f {
            Fact::Group { group_id, .. } => Some(*group_id),
            _ => None,
        })
        .collect();
    let mut wanted: Vec<u64> = facts
        .iter()
        .flat_map(|f| match f {
            Fact::Group { shares, .. } | Fact::Project { shares, .. } => shares.as_slice(),
            _ => &[],
        })
        .map(|s| s.shared_with_group_id)
        .filter(|g| !inv.groups.contains_key(g) && !read.contains(g))
        .collect();
    let mut out = Vec::new();
    let mut done = BTreeSet::new();
    while let Some(g) = wanted.pop() {
        if !done.insert(g) || inv.groups.contains_key(&g) || read.contains(&g) {
            continue;
        }
        let Some(detail) = or_gone(client.group(&IdOrPath::Id(g)).await)? else {
            continue;
        };
        wanted.extend(detail.parent_id);
        let (members, users) = members(client, known_users, ResourceRef::Group(g), admin).await?;
        out.push(Fact::Group {
            group_id: g,
            group: Some(group_record(&detail, false)),
            shares: vec![],
            members,
            invitations: vec![],
            descendants: vec![],
            projects: vec![],
            users,
            outside: true,
        });
    }
    Ok(out)
}

async fn user(client: &Client, row: &MemberRow, admin: bool) -> Result<UserRecord, Error> {
    if admin && let Some(u) = or_gone(client.user(row.id).await)? {
        return Ok(user_from_admin(&u));
    }
    Ok(user_from_member(row))
}

/// Members of a resource as records, and the users among them not known yet.
async fn members(
    client: &Client,
    known: &BTreeSet<u64>,
    r: ResourceRef,
    admin: bool,
) -> Result<(Vec<MembershipRecord>, Vec<UserRecord>), Error> {
    let rows: Vec<MemberRow> = client.member_rows(&source(r)).try_collect().await?;
    let mut users = HashMap::new();
    for row in rows.iter().filter(|m| !known.contains(&m.id)) {
        users.insert(row.id, user(client, row, admin).await?);
    }
    let members = rows.iter().map(|m| membership(m).record(r)).collect();
    Ok((members, users.into_values().collect()))
}

async fn invitations(client: &Client, r: ResourceRef) -> Result<Vec<InvitationRecord>, Error> {
    let mut v: Vec<InvitationRecord> = client
        .invitations(&source(r), None)
        .map_ok(|i| InvitationRecord {
            resource: r,
            email: i.invite_email,
            access_level: i.access_level.0,
            expires_at: i.expires_at,
        })
        .try_collect()
        .await?;
    v.sort_by(|a, b| a.email.cmp(&b.email));
    Ok(v)
}

async fn read_one(
    client: &Client,
    known: &BTreeSet<u64>,
    t: Touch,
    admin: bool,
) -> Result<Vec<Fact>, Error> {
    Ok(vec![match t {
        Touch::Member { resource, user_id } => {
            let row = client.member_row(&source(resource), user_id).await?;
            let user = match &row {
                Some(r) if !known.contains(&user_id) => Some(user(client, r, admin).await?),
                _ => None,
            };
            Fact::Member {
                resource,
                user_id,
                member: row.as_ref().map(|m| membership(m).record(resource)),
                user,
            }
        }
        Touch::Invitations { resource } => Fact::Invitations {
            resource,
            invitations: invitations(client, resource).await?,
        },
        Touch::User { user_id } => Fact::User {
            user_id,
            user: or_gone(client.user(user_id).await)?.map(|u| user_from_admin(&u)),
        },
        Touch::Group { group_id } => {
            let id = IdOrPath::Id(group_id);
            let Some(g) = or_gone(client.group(&id).await)? else {
                return Ok(vec![Fact::group_gone(group_id)]);
            };
            let r = ResourceRef::Group(group_id);
            let (members, users) = members(client, known, r, admin).await?;
            let descendants: Vec<_> = client
                .descendant_groups(&id)
                .map_ok(|d| group_record(&d, true))
                .try_collect()
                .await?;
            let projects: Vec<_> = client
                .group_projects(&id, true)
                .map_ok(|p| project_record(&p))
                .try_collect()
                .await?;
            Fact::Group {
                group_id,
                group: Some(group_record(&g, true)),
                shares: shares_of(r, &g.shared_with_groups),
                members,
                invitations: invitations(client, r).await?,
                descendants,
                projects,
                users,
                outside: false,
            }
        }
        Touch::Project { project_id } => {
            let Some(p) = or_gone(client.project(&IdOrPath::Id(project_id)).await)? else {
                return Ok(vec![Fact::project_gone(project_id)]);
            };
            let r = ResourceRef::Project(project_id);
            let (members, users) = members(client, known, r, admin).await?;
            Fact::Project {
                project_id,
                project: Some(project_record(&p)),
                shares: shares_of(r, &p.shared_with_groups),
                members,
                invitations: invitations(client, r).await?,
                users,
            }
        }
    }])
}
