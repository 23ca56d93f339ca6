//! Undoing a grant (a JIT expiry, or a revoke by grant id): restore the prior membership
//! exactly, or remove the membership the grant created. A membership that is no longer what the
//! grant set was changed behind the worker's back: it is left alone and reported.

use gitlab_connector::api::EditMember;
use gitlab_connector::provision::{MemberState, ProvisionError};

use super::audit::Audit;
use super::result::{Change, to_value};
use crate::connector::Connector;
use crate::store::{GrantRecord, Store};

/// What undoing a grant must do, given the membership as it is now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UndoPlan {
    /// Already undone (GitLab's own expiry, someone else, or an earlier attempt).
    Nothing,
    /// The grant created the membership: remove it.
    Remove,
    /// The grant raised a membership: put back what was there.
    Restore(MemberState),
    /// The membership was changed since the grant: left as it is.
    Conflict(String),
}

pub fn plan_undo(current: Option<&MemberState>, g: &GrantRecord) -> UndoPlan {
    match (current, g.created) {
        (None, true) => UndoPlan::Nothing,
        (Some(cur), _) if g.prior.as_ref() == Some(cur) => UndoPlan::Nothing,
        (Some(cur), true) if *cur == g.applied => UndoPlan::Remove,
        (Some(cur), false) if *cur == g.applied => match &g.prior {
            Some(p) => UndoPlan::Restore(p.clone()),
            None => UndoPlan::Nothing,
        },
        (cur, _) => UndoPlan::Conflict(format!(
            "the membership was changed since the grant (now {}, the grant set {}): left as it is",
            cur.map_or("absent".to_string(), |c| to_value(c).to_string()),
            to_value(&g.applied)
        )),
    }
}

/// What undoing a grant did.
pub struct Undone {
    pub changes: Vec<Change>,
    /// Set when the membership was changed behind the worker's back: nothing was overwritten.
    pub conflict: Option<String>,
}

/// Reads the membership, plans, and writes (recorded in the audit log under the grant's job).
pub async fn undo_grant(
    store: &Store,
    connector: &Connector,
    g: &GrantRecord,
    why: &str,
) -> Result<Undone, ProvisionError> {
    let client = &connector.client;
    let target = g.target();
    let source = target.source();
    let current = client
        .direct_member(&source, g.user_id)
        .await?
        .map(|m| MemberState::of(&m));
    let audit = Audit::new(store, &g.connector, Some(&g.job_id));
    let change = |action: &str, after: Option<&MemberState>| Change {
        action: action.into(),
        target: target.reference(),
        user_id: Some(g.user_id),
        email: None,
        before: current.as_ref().map(to_value),
        after: after.map(to_value),
        note: Some(why.into()),
    };
    let mut changes = Vec::new();
    match plan_undo(current.as_ref(), g) {
        UndoPlan::Nothing => {}
        UndoPlan::Remove => {
            let c = change("remove_member", None);
            audit.remove_direct(client, &source, g.user_id, &c).await?;
            changes.push(c);
        }
        UndoPlan::Restore(p) => {
            let c = change("restore_member", Some(&p));
            let answer = client
                .edit_member(
                    &source,
                    g.user_id,
                    &EditMember {
                        access_level: p.level(),
                        expires_at: p.expires_at,
                        member_role_id: p.member_role_id,
                    },
                )
                .await
                .map(|_| ());
            audit.write(&c, answer).await?;
            changes.push(c);
        }
        UndoPlan::Conflict(message) => {
            return Ok(Undone {
                changes,
                conflict: Some(message),
            });
        }
    }
    Ok(Undone {
        changes,
        conflict: None,
    })
}

#[cfg(test)]
mod tests {
    use gitlab_connector::provision::TargetKind;

    use super::*;
    use crate::store::GrantState;

    fn state(level: u16) -> MemberState {
        MemberState {
            access_level: level,
            expires_at: None,
            member_role_id: None,
        }
    }

    fn grant(created: bool, prior: Option<MemberState>, applied: MemberState) -> GrantRecord {
        GrantRecord {
            job_id: "g".into(),
            connector: "default".into(),
            target_kind: TargetKind::Group,
            target_id: 1,
            target_path: "acme".into(),
            user_id: 7,
            created,
            prior,
            applied,
            expires_at: None,
            state: GrantState::Active,
            ended_at: None,
            note: None,
            undo_attempts: 0,
        }
    }

    #[test]
    fn a_created_membership_is_removed_unless_it_is_gone_or_changed() {
        let g = grant(true, None, state(30));
        assert_eq!(plan_undo(Some(&state(30)), &g), UndoPlan::Remove);
        assert_eq!(plan_undo(None, &g), UndoPlan::Nothing);
        assert!(matches!(
            plan_undo(Some(&state(40)), &g),
            UndoPlan::Conflict(m) if m.contains("changed since the grant")
        ));
    }

    #[test]
    fn a_raised_membership_is_restored_once() {
        let g = grant(false, Some(state(20)), state(40));
        assert_eq!(
            plan_undo(Some(&state(40)), &g),
            UndoPlan::Restore(state(20))
        );
        assert_eq!(plan_undo(Some(&state(20)), &g), UndoPlan::Nothing);
        assert!(matches!(plan_undo(None, &g), UndoPlan::Conflict(_)));
    }
}
