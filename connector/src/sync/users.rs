//! The users of a snapshot: who the memberships name, and what the token may read about them
//! (admin `/users`, or on GitLab.com billable members and enterprise users), custom roles and
//! SAML group links.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use futures::TryStreamExt;

use super::Inventory;
use super::SyncError;
use super::convert::{is_auth_failure, user_from_admin};
use crate::api::{Group, User};
use crate::client::{Client, IdOrPath, InstanceKind};
use crate::error::Error;
use crate::model::{RoleRecord, SamlGroupLinkRecord, UserRecord};

/// The user records: every user the memberships name, from admin `/users` where read (all of
/// them for the `instance` scope), else from the member records.
pub(super) fn assign_users(
    inv: &mut Inventory,
    all_users: Option<BTreeMap<u64, UserRecord>>,
    member_users: HashMap<u64, UserRecord>,
    instance: bool,
) {
    let referenced: BTreeSet<u64> = inv.members.values().flatten().map(|m| m.user_id).collect();
    for (id, u) in all_users.into_iter().flatten() {
        if instance || referenced.contains(&id) {
            inv.users.insert(id, u);
        }
    }
    let mut unknown = 0;
    for id in &referenced {
        if inv.users.contains_key(id) {
            continue;
        }
        match member_users.get(id) {
            Some(u) => {
                inv.users.insert(*id, u.clone());
            }
            None => unknown += 1,
        }
    }
    if unknown > 0 {
        inv.warnings.push(format!(
            "{unknown} users with memberships were not in GET /users (created during the sync?); they have no user record"
        ));
    }
}

/// GitLab.com without admin: last activity and login from `billable_members`, emails and 2FA of
/// enterprise users from `enterprise_users`. Not readable → a warning, not a partial snapshot.
pub(super) async fn enrich_users(
    client: &Client,
    top: u64,
    inv: &mut Inventory,
) -> Result<(), SyncError> {
    let group = IdOrPath::Id(top);
    let billable: Result<Vec<_>, Error> = client.billable_members(&group).try_collect().await;
    match billable {
        Ok(rows) => {
            for b in rows {
                if let Some(u) = inv.users.get_mut(&b.id) {
                    u.last_activity_on = b.last_activity_on.or(u.last_activity_on);
                    u.last_sign_in_at = b.last_login_at.or(u.last_sign_in_at);
                    if b.email.is_some() {
                        u.email = b.email;
                    }
                }
            }
        }
        Err(e) if is_auth_failure(&e) => return Err(SyncError::Auth(e)),
        Err(e) => inv.warnings.push(format!(
            "billable_members not readable, last activity and sign-in are unknown: {e}"
        )),
    }
    if client.instance() == InstanceKind::GitlabCom {
        let enterprise: Result<Vec<User>, Error> =
            client.enterprise_users(&group).try_collect().await;
        match enterprise {
            Ok(rows) => {
                for e in rows {
                    if let Some(u) = inv.users.get_mut(&e.id) {
                        let full = user_from_admin(&e);
                        u.email = full.email.or(u.email.take());
                        u.two_factor_enabled = full.two_factor_enabled;
                        u.last_sign_in_at = full.last_sign_in_at.or(u.last_sign_in_at);
                        u.last_activity_on = full.last_activity_on.or(u.last_activity_on);
                        u.external = full.external;
                    }
                }
            }
            Err(e) if is_auth_failure(&e) => return Err(SyncError::Auth(e)),
            Err(e) => inv.warnings.push(format!(
                "enterprise_users not readable, their emails are unknown: {e}"
            )),
        }
    }
    Ok(())
}

pub(super) async fn read_roles(
    client: &Client,
    admin: bool,
    top: Option<&Group>,
    inv: &mut Inventory,
) -> Result<(), SyncError> {
    let roles = if client.instance() == InstanceKind::GitlabCom {
        match top {
            Some(t) => Some(client.group_member_roles(&IdOrPath::Id(t.id)).await),
            None => None,
        }
    } else if admin {
        Some(client.instance_member_roles().await)
    } else {
        None
    };
    match roles {
        Some(Ok(roles)) => {
            inv.roles = roles
                .into_iter()
                .map(|r| RoleRecord {
                    id: r.id,
                    name: r.name,
                    base_access_level: r.base_access_level.0,
                    group_id: r.group_id,
                })
                .collect();
            inv.roles.sort_by_key(|r| r.id);
        }
        Some(Err(e)) if is_auth_failure(&e) => return Err(SyncError::Auth(e)),
        Some(Err(e)) => inv.warnings.push(format!("custom roles not readable: {e}")),
        None => {}
    }
    if let Some(t) = top {
        match client.saml_group_links(&IdOrPath::Id(t.id)).await {
            Ok(links) => {
                inv.saml_links = links
                    .into_iter()
                    .map(|l| SamlGroupLinkRecord {
                        group_id: t.id,
                        name: l.name,
                        access_level: l.access_level.0,
                        member_role_id: l.member_role_id,
                        provider: l.provider,
                    })
                    .collect();
                inv.saml_links
                    .sort_by(|a, b| (&a.name, &a.provider).cmp(&(&b.name, &b.provider)));
            }
            Err(e) if is_auth_failure(&e) => return Err(SyncError::Auth(e)),
            Err(e) => inv
                .warnings
                .push(format!("SAML group links not readable: {e}")),
        }
    }
    Ok(())
}
