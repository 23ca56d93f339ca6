//! GitLab's entities as snapshot records, and which of its errors stop a sync.

use crate::api::{Group, MemberRow, Project, User};
use crate::error::Error;
use crate::model::{
    DirectMember, GroupRecord, MembershipState, ProjectRecord, ResourceRef, ShareRecord, UserKind,
    UserRecord, user_kind,
};

pub(crate) fn group_record(g: &Group, in_scope: bool) -> GroupRecord {
    GroupRecord {
        id: g.id,
        full_path: g.full_path.clone(),
        name: g.name.clone(),
        parent_id: g.parent_id,
        in_scope,
    }
}

pub(crate) fn project_record(p: &Project) -> ProjectRecord {
    ProjectRecord {
        id: p.id,
        path_with_namespace: p.path_with_namespace.clone(),
        namespace_id: p.namespace.id,
        archived: p.archived,
    }
}

pub(crate) fn shares_of(r: ResourceRef, links: &[crate::api::SharedWithGroup]) -> Vec<ShareRecord> {
    let mut v: Vec<ShareRecord> = links
        .iter()
        .map(|l| ShareRecord {
            resource: r,
            shared_with_group_id: l.group_id,
            group_access: l.group_access_level.0,
            expires_at: l.expires_at,
            member_role_id: l.member_role_id,
        })
        .collect();
    v.sort_by_key(|s| s.shared_with_group_id);
    v
}

pub(crate) fn membership(m: &MemberRow) -> DirectMember {
    DirectMember {
        user_id: m.id,
        member_role_id: m.member_role.and_then(|r| std::num::NonZeroU64::new(r.id)),
        created_by_id: m
            .created_by
            .as_ref()
            .and_then(|c| std::num::NonZeroU64::new(c.id)),
        created_at_ms: m.created_at.map(|t| t.timestamp_millis()),
        expires_at: m.expires_at,
        access_level: m.access_level.0,
        state: if m.awaiting {
            MembershipState::Awaiting
        } else {
            MembershipState::Active
        },
    }
}

pub(crate) fn user_from_member(m: &MemberRow) -> UserRecord {
    UserRecord {
        id: m.id,
        username: m.username.clone(),
        name: m.name.clone(),
        state: m.state.clone().unwrap_or_default(),
        kind: user_kind(&m.username, m.bot),
        email: m.email.clone(),
        is_admin: None,
        two_factor_enabled: None,
        last_sign_in_at: None,
        last_activity_on: None,
        external: None,
    }
}

pub(crate) fn user_from_admin(u: &User) -> UserRecord {
    UserRecord {
        id: u.id,
        username: u.username.clone(),
        name: u.name.clone(),
        state: u.state.clone(),
        kind: match u.user_type.as_deref() {
            Some("service_account") => UserKind::ServiceAccount,
            Some(t) if t.ends_with("bot") => UserKind::Bot,
            _ => user_kind(&u.username, u.bot),
        },
        email: u.email.clone(),
        is_admin: u.is_admin,
        two_factor_enabled: u.two_factor_enabled,
        last_sign_in_at: u.last_sign_in_at.or(u.current_sign_in_at),
        last_activity_on: u.last_activity_on,
        external: u.external,
    }
}

pub(crate) fn is_auth_failure(e: &Error) -> bool {
    matches!(
        e,
        Error::TokenExpired { .. } | Error::TokenRevoked { .. } | Error::Unauthorized { .. }
    )
}
