//! Undoing a grant (a JIT expiry, or a revoke by grant id): restore the prior membership
//! exactly, or remove the membership the grant created. A membership that is no longer what the
//! grant set was changed behind the worker's back: it is left alone and reported.

use gitlab_connector::api::EditMember;
use gitlab_connector::provision::{MemberState, ProvisionError};

use super::audit::{Audit, AuditedError};
use super::outcome::JobFailure;
use super::result::{Change, to_value};
use chrono::Utc;
use serde_json::json;

use super::events::EVENT_SCHEMA;
use crate::connector::Connector;
use crate::store::{GrantRecord, GrantState, OutboxMessage, Store, StoreError};
use crate::subjects::{Subjects, msg_id};

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

/// Why an undo did not finish: reading the membership, or writing it (GitLab refused, or the
/// audit log could not be written ahead and nothing was sent).
#[derive(Debug, thiserror::Error)]
pub enum UndoError {
    #[error(transparent)]
    Read(#[from] ProvisionError),
    #[error(transparent)]
    Write(#[from] AuditedError),
}

impl From<gitlab_connector::Error> for UndoError {
    fn from(e: gitlab_connector::Error) -> Self {
        UndoError::Read(e.into())
    }
}

impl From<UndoError> for JobFailure {
    fn from(e: UndoError) -> Self {
        match e {
            UndoError::Read(r) => r.into(),
            UndoError::Write(w) => w.into(),
        }
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
) -> Result<Undone, UndoError> {
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
            let edit = EditMember {
                access_level: p.level(),
                expires_at: p.expires_at,
                member_role_id: p.member_role_id,
            };
            audit
                .write(&c, client.edit_member(&source, g.user_id, &edit))
                .await?;
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

/// How long a claim on a grant lasts without a renewal.
pub const CLAIM_LEASE: std::time::Duration = std::time::Duration::from_secs(15);

/// What one expiry did: the event announcing it (committed with the grant's new state).
#[derive(Debug, Clone)]
pub struct Expired {
    pub grant_job_id: String,
    pub changes: Vec<Change>,
    pub conflict: Option<String>,
    pub event: serde_json::Value,
}

/// Why an expiry did not finish; the claim lapses and the undo is tried again.
#[derive(Debug, thiserror::Error)]
pub enum ExpireError {
    #[error(transparent)]
    Undo(#[from] UndoError),
    #[error(
        "the undone grant could not be recorded ({0}); the next attempt finds the membership restored and records it"
    )]
    Record(StoreError),
}

/// Undoes a claimed JIT grant (renewing the claim meanwhile) and records its end with its
/// `jit_expiry` event in one transaction. Whoever does it (the scheduler, or the grant's own
/// redelivery after its expiry) sends the same event id, so it is announced once.
pub async fn expire_grant(
    store: &Store,
    subjects: &Subjects,
    publish: bool,
    c: &Connector,
    g: &GrantRecord,
    why: &str,
) -> Result<Expired, ExpireError> {
    let renewal = {
        let (store, job_id) = (store.clone(), g.job_id.clone());
        tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
            loop {
                tokio::time::sleep(CLAIM_LEASE / 3).await;
                if let Err(e) = store.renew_grant_claim(&job_id, CLAIM_LEASE).await {
                    tracing::warn!("cannot renew the claim on the grant: {e}");
                }
            }
        }))
    };
    let undone = undo_grant(store, c, g, why).await;
    renewal.abort();
    let Undone { changes, conflict } = undone?;
    let state = if conflict.is_some() {
        GrantState::Conflict
    } else {
        GrantState::Ended
    };
    let event = json!({
        "schema": EVENT_SCHEMA,
        "type": "access",
        "cause": "jit_expiry",
        "connector": g.connector,
        "grant_job_id": g.job_id,
        "user_id": g.user_id,
        "target": {"type": g.target_kind.as_str(), "id": g.target_id, "path": g.target_path},
        "expires_at": g.expires_at,
        "undone_at": Utc::now(),
        "changes": changes,
        "conflict": conflict,
    });
    let outbox = if publish {
        vec![OutboxMessage::Publish {
            msg_id: msg_id::jit_expiry(&g.job_id),
            subject: subjects.event(&g.connector, "access"),
            payload: event.to_string(),
        }]
    } else {
        Vec::new()
    };
    store
        .end_grant_with(&g.job_id, state, conflict.clone(), outbox)
        .await
        .map_err(ExpireError::Record)?;
    Ok(Expired {
        grant_job_id: g.job_id.clone(),
        changes,
        conflict,
        event,
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
            held_slot: None,
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
