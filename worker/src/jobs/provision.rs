//! Provisioning jobs: `grant` (permanent or JIT), `revoke`, `invite`, `deprovision`. Every write
//! is read back first (the client re-reads before a retry), recorded in the audit log, and
//! skipped in a dry run, whose result lists the planned changes.

use chrono::{DateTime, Duration as ChronoDuration, NaiveDate, NaiveTime, Utc};
use futures::TryStreamExt;
use gitlab_connector::api::{
    AccessLevel, AddMember, Capability, CreateInvitation, CreateUser, EditMember, RemoveMember,
    Source, UserAction,
};
use gitlab_connector::client::IdOrPath;
use gitlab_connector::provision::{
    self, AccessView, MemberState, ProvisionError, Target, TargetRef, UserRef,
};
use gitlab_connector::{Error as GlError, InstanceKind};
use serde_json::{Value, json};

use super::envelope::{
    DeprovisionAction, GrantExpiry, Job, JobParams, TargetSelector, UserSelector,
};
use super::handler::{Connector, Handler, Outcome};
use super::result::{Change, JobError, JobResult, JobStatus};
use crate::store::AuditEntry;
use crate::store::entity::grant;

fn fail(mut r: JobResult, code: &str, message: String, retry: bool) -> Outcome {
    r.status = JobStatus::Failed;
    r.finished_at = Utc::now();
    r.error = Some(JobError {
        code: code.into(),
        message,
        retryable: retry,
    });
    Outcome { result: r, retry }
}

fn from_error(r: JobResult, e: ProvisionError) -> Outcome {
    let retry = e.is_transient();
    fail(r, e.code(), e.to_string(), retry)
}

fn done(mut r: JobResult, status: JobStatus) -> Outcome {
    r.status = status;
    r.finished_at = Utc::now();
    Outcome {
        result: r,
        retry: false,
    }
}

pub(crate) fn user_ref(u: &UserSelector) -> UserRef {
    match u {
        UserSelector::Id(id) => UserRef::Id(*id),
        UserSelector::Username(n) => UserRef::Username(n.clone()),
        UserSelector::Email(e) => UserRef::Email(e.clone()),
    }
}

pub(crate) fn target_ref(t: &TargetSelector) -> TargetRef {
    match t {
        TargetSelector::Group(r) => TargetRef::Group(r.clone()),
        TargetSelector::Project(r) => TargetRef::Project(r.clone()),
    }
}

/// GitLab's `expires_at` for a precise expiry: the date on or after it (GitLab removes a
/// membership during the day its date names).
pub fn gitlab_date(precise: DateTime<Utc>) -> NaiveDate {
    let d = precise.date_naive();
    if precise.time() == NaiveTime::MIN {
        d
    } else {
        d + ChronoDuration::days(1)
    }
}

fn state_json(s: &MemberState) -> Value {
    serde_json::to_value(s).expect("serializes")
}

async fn audit(h: &Handler, job_id: Option<&str>, connector: &str, change: &Change, outcome: &str) {
    let entry = AuditEntry {
        at: Utc::now(),
        connector: connector.to_string(),
        job_id: job_id.map(str::to_string),
        action: change.action.clone(),
        target: change.target.clone(),
        user_id: change.user_id,
        before: change.before.clone(),
        after: change.after.clone(),
        outcome: outcome.to_string(),
    };
    if let Err(e) = h.store.audit(entry).await {
        tracing::error!("the audit log could not be written: {e}");
    }
}

/// Removes a user's direct membership on `source` only (`skip_subresources`), recording the
/// write in the audit log. A membership already gone is not an error and leaves no entry.
async fn remove_direct(
    h: &Handler,
    job_id: Option<&str>,
    connector: &str,
    source: &Source,
    user_id: u64,
    change: &Change,
) -> Result<(), GlError> {
    let Some(c) = h.connectors.get(connector) else {
        unreachable!("the connector was resolved")
    };
    let options = RemoveMember {
        skip_subresources: true,
        unassign_issuables: false,
    };
    match c.client.remove_member(source, user_id, options).await {
        Ok(()) => {
            audit(h, job_id, connector, change, "ok").await;
            Ok(())
        }
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) => {
            audit(h, job_id, connector, change, e.code()).await;
            Err(e)
        }
    }
}

/// Why a read-only (read_api) connector cannot run a provisioning job.
fn read_only(c: &Connector) -> Option<String> {
    (c.capability == Some(Capability::SyncOnly)).then(|| {
        format!(
            "connector {:?} has a read_api token: provisioning needs a token with the `api` scope",
            c.settings.id
        )
    })
}

fn paths_json(v: &AccessView) -> Value {
    serde_json::to_value(&v.paths).expect("serializes")
}

// ------------------------------------------------------------------------------------------
// grant

pub(crate) async fn grant(h: &Handler, c: &Connector, job: &Job, r: JobResult) -> Outcome {
    let JobParams::Grant {
        user,
        target,
        access_level,
        expiry,
        member_role_id,
    } = &job.params
    else {
        unreachable!("routed by kind")
    };
    if let Some(why) = read_only(c) {
        return fail(r, "forbidden", why, false);
    }
    let client = &c.client;
    let target = match provision::resolve_target(client, &target_ref(target)).await {
        Ok(t) => t,
        Err(e) => return from_error(r, e),
    };
    let user = match provision::resolve_user(client, &user_ref(user)).await {
        Ok(u) => u,
        Err(ProvisionError::UserNotFound(_)) if matches!(user, UserSelector::Email(_)) => {
            let UserSelector::Email(email) = user else {
                unreachable!()
            };
            return grant_to_unknown_email(h, c, job, r, &target, email, *access_level).await;
        }
        Err(e) => return from_error(r, e),
    };
    let precise = expiry.as_ref().map(|e| match e {
        GrantExpiry::Duration(s) => r.started_at + ChronoDuration::seconds(*s as i64),
        GrantExpiry::At(t) => *t,
    });
    let gl_date = precise.map(gitlab_date);
    let mut r = r;
    if let Some(p) = precise {
        r.grant = Some(json!({"expires_at": p, "gitlab_expires_at": gl_date}));
    }
    let view = match provision::access_on(client, &target, user.id).await {
        Ok(v) => v,
        Err(e) => return from_error(r, e),
    };
    // SAML group links may rewrite the membership at the user's next sign-in.
    if let Some(top) = target.top_level_group()
        && let Ok(links) = client.saml_group_links(&IdOrPath::Id(top)).await
        && !links.is_empty()
    {
        r.warnings.push(format!(
            "the top-level group has {} SAML group link(s): a SAML sign-in may change this membership",
            links.len()
        ));
    }

    // A checkpoint from an earlier attempt holds the state before our write.
    let checkpoint: Option<Value> = h
        .store
        .job(&job.job_id)
        .await
        .ok()
        .flatten()
        .and_then(|j| j.progress)
        .and_then(|p| serde_json::from_str(&p).ok());
    let (prior, created) = match &checkpoint {
        Some(cp) => (
            serde_json::from_value::<Option<MemberState>>(cp["prior"].clone()).unwrap_or(None),
            cp["created"].as_bool().unwrap_or(false),
        ),
        None => (view.direct.clone(), view.direct.is_none()),
    };

    if checkpoint.is_none() && view.effective_level >= access_level.0 && member_role_id.is_none() {
        r.warnings.push(format!(
            "already has {} (≥ {}) through: {}",
            view.effective_level,
            access_level.0,
            view.paths
                .iter()
                .map(|p| match &p.group_path {
                    Some(g) => format!("{} from {g}", p.via),
                    None => p.via.to_string(),
                })
                .collect::<Vec<_>>()
                .join(", ")
        ));
        r.residual_access = Some(paths_json(&view));
        return done(r, JobStatus::Noop);
    }

    let intended = match &prior {
        Some(p) => MemberState {
            access_level: access_level.0.max(p.access_level),
            // The later of the two expiries; none (never) is the latest.
            expires_at: match (p.expires_at, gl_date) {
                (None, _) | (_, None) => None,
                (Some(a), Some(b)) => Some(a.max(b)),
            },
            member_role_id: member_role_id.or(p.member_role_id),
        },
        None => MemberState {
            access_level: access_level.0,
            expires_at: gl_date,
            member_role_id: *member_role_id,
        },
    };
    let change = Change {
        action: if created {
            "add_member"
        } else {
            "update_member"
        }
        .into(),
        target: target.reference(),
        user_id: Some(user.id),
        email: None,
        before: prior.as_ref().map(state_json),
        after: Some(state_json(&intended)),
        note: None,
    };
    if job.dry_run {
        r.changes.push(change);
        return done(r, JobStatus::Succeeded);
    }
    if checkpoint.is_none() {
        let cp = json!({"prior": prior, "created": created, "intended": intended});
        if let Err(e) = h.store.save_progress(&job.job_id, &cp.to_string()).await {
            return fail(r, "internal", format!("the job store: {e}"), true);
        }
    }
    let source = target.source();
    let current = view.direct.clone();
    if current.as_ref() != Some(&intended) {
        let res = if current.is_none() {
            client
                .add_member(
                    &source,
                    &AddMember {
                        user_id: user.id,
                        access_level: intended.level(),
                        expires_at: intended.expires_at,
                        member_role_id: intended.member_role_id,
                    },
                )
                .await
                .map(|_| ())
        } else {
            client
                .edit_member(
                    &source,
                    user.id,
                    &EditMember {
                        access_level: intended.level(),
                        expires_at: intended.expires_at,
                        member_role_id: intended.member_role_id,
                    },
                )
                .await
                .map(|_| ())
        };
        if let Err(e) = res {
            audit(h, Some(&job.job_id), &job.connector, &change, e.code()).await;
            return from_error(r, e.into());
        }
        audit(h, Some(&job.job_id), &job.connector, &change, "ok").await;
    }
    let record = grant::Model {
        job_id: job.job_id.clone(),
        connector: job.connector.clone(),
        target_type: target.kind.into(),
        target_id: target.id as i64,
        target_path: target.full_path.clone(),
        user_id: user.id as i64,
        created,
        prior: prior.as_ref().map(|p| state_json(p).to_string()),
        applied: state_json(&intended).to_string(),
        expires_at: precise,
        state: "active".into(),
        ended_at: None,
        note: None,
        updated_at: Utc::now(),
    };
    if let Err(e) = h.store.record_grant(record).await {
        return fail(r, "internal", format!("the job store: {e}"), true);
    }
    r.changes.push(change);
    done(r, JobStatus::Succeeded)
}

/// A grant to an email no user has: self-managed with an admin token may create the user when
/// the connector allows it; otherwise the email is invited.
async fn grant_to_unknown_email(
    h: &Handler,
    c: &Connector,
    job: &Job,
    mut r: JobResult,
    target: &Target,
    email: &str,
    level: AccessLevel,
) -> Outcome {
    let client = &c.client;
    let admin = client
        .current_user()
        .await
        .ok()
        .and_then(|u| u.is_admin)
        .unwrap_or(false);
    if c.settings.allow_create_users && admin && client.instance() == InstanceKind::SelfManaged {
        let local = email.split('@').next().unwrap_or("user");
        let username: String = local
            .chars()
            .map(|ch| {
                if ch.is_ascii_alphanumeric() || ch == '_' || ch == '-' || ch == '.' {
                    ch
                } else {
                    '_'
                }
            })
            .collect();
        let create = CreateUser {
            email: email.to_string(),
            username: username.clone(),
            name: username.clone(),
            skip_confirmation: true,
            external: false,
        };
        let change = Change {
            action: "create_user".into(),
            target: target.reference(),
            user_id: None,
            email: Some(email.into()),
            before: None,
            after: Some(
                json!({"username": username, "email": email, "password": "random, not stored"}),
            ),
            note: None,
        };
        if job.dry_run {
            r.changes.push(change);
            r.changes.push(Change {
                action: "add_member".into(),
                target: target.reference(),
                user_id: None,
                email: Some(email.into()),
                before: None,
                after: Some(json!({"access_level": level.0})),
                note: None,
            });
            return done(r, JobStatus::Succeeded);
        }
        let user = match client.create_user(&create).await {
            Ok(u) => u,
            Err(e) => return from_error(r, e.into()),
        };
        let mut change = change;
        change.user_id = Some(user.id);
        audit(h, Some(&job.job_id), &job.connector, &change, "ok").await;
        r.changes.push(change);
        let add = AddMember {
            user_id: user.id,
            access_level: level,
            expires_at: None,
            member_role_id: None,
        };
        let member_change = Change {
            action: "add_member".into(),
            target: target.reference(),
            user_id: Some(user.id),
            email: None,
            before: None,
            after: Some(
                json!({"access_level": level.0, "expires_at": null, "member_role_id": null}),
            ),
            note: None,
        };
        if let Err(e) = client.add_member(&target.source(), &add).await {
            audit(
                h,
                Some(&job.job_id),
                &job.connector,
                &member_change,
                e.code(),
            )
            .await;
            return from_error(r, e.into());
        }
        audit(h, Some(&job.job_id), &job.connector, &member_change, "ok").await;
        r.changes.push(member_change);
        return done(r, JobStatus::Succeeded);
    }
    r.warnings.push(format!(
        "no GitLab user has the email {email}: an invitation is sent instead{}",
        if c.settings.allow_create_users {
            " (creating users needs self-managed GitLab and an administrator token)"
        } else {
            ""
        }
    ));
    invite_email(h, job, r, target, email, level, None).await
}

// ------------------------------------------------------------------------------------------
// undo (JIT expiry, revoke by grant id)

/// What undoing a grant did.
pub struct Undone {
    pub changes: Vec<Change>,
    /// Set when the membership was changed behind the worker's back: nothing was overwritten.
    pub conflict: Option<String>,
}

/// Undoes a grant: restores the prior membership exactly, or removes the membership the grant
/// created. A membership that no longer is what the grant set is left alone and reported.
pub async fn undo_grant(
    h: &Handler,
    c: &Connector,
    g: &grant::Model,
    why: &str,
) -> Result<Undone, ProvisionError> {
    let client = &c.client;
    let source = if g.target_type == "group" {
        Source::Group(IdOrPath::Id(g.target_id as u64))
    } else {
        Source::Project(IdOrPath::Id(g.target_id as u64))
    };
    let target = json!({"type": g.target_type, "id": g.target_id});
    let user_id = g.user_id as u64;
    let applied: MemberState = serde_json::from_str(&g.applied)
        .map_err(|e| ProvisionError::GitLab(GlError::InvalidConfig(e.to_string())))?;
    let prior: Option<MemberState> = g
        .prior
        .as_deref()
        .and_then(|p| serde_json::from_str(p).ok());
    let current = client
        .direct_member(&source, user_id)
        .await?
        .map(|m| MemberState::of(&m));
    let mut changes = Vec::new();
    match (&current, g.created) {
        (None, true) => {
            // Already gone (GitLab's own expiry, or removed by someone): nothing to undo.
        }
        (Some(cur), _) if prior.as_ref() == Some(cur) => {
            // Already restored (an earlier attempt).
        }
        (Some(cur), created) if *cur == applied => {
            if created {
                let change = Change {
                    action: "remove_member".into(),
                    target: target.clone(),
                    user_id: Some(user_id),
                    email: None,
                    before: Some(state_json(cur)),
                    after: None,
                    note: Some(why.into()),
                };
                remove_direct(h, Some(&g.job_id), &g.connector, &source, user_id, &change).await?;
                changes.push(change);
            } else if let Some(p) = &prior {
                let change = Change {
                    action: "restore_member".into(),
                    target: target.clone(),
                    user_id: Some(user_id),
                    email: None,
                    before: Some(state_json(cur)),
                    after: Some(state_json(p)),
                    note: Some(why.into()),
                };
                let res = client
                    .edit_member(
                        &source,
                        user_id,
                        &EditMember {
                            access_level: p.level(),
                            expires_at: p.expires_at,
                            member_role_id: p.member_role_id,
                        },
                    )
                    .await;
                if let Err(e) = res {
                    audit(h, Some(&g.job_id), &g.connector, &change, e.code()).await;
                    return Err(e.into());
                }
                audit(h, Some(&g.job_id), &g.connector, &change, "ok").await;
                changes.push(change);
            }
        }
        (cur, _) => {
            let message = format!(
                "the membership was changed since the grant (now {}, the grant set {}): left as it is",
                cur.as_ref()
                    .map_or("absent".to_string(), |c| state_json(c).to_string()),
                state_json(&applied)
            );
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

// ------------------------------------------------------------------------------------------
// revoke

pub(crate) async fn revoke(h: &Handler, c: &Connector, job: &Job, r: JobResult) -> Outcome {
    let JobParams::Revoke {
        user,
        target,
        grant_job_id,
    } = &job.params
    else {
        unreachable!("routed by kind")
    };
    if let Some(why) = read_only(c) {
        return fail(r, "forbidden", why, false);
    }
    let mut r = r;
    let client = &c.client;
    if let Some(gid) = grant_job_id {
        let g = match h.store.grant(gid).await {
            Ok(Some(g)) if g.connector == job.connector => g,
            Ok(_) => {
                return fail(
                    r,
                    "grant_not_found",
                    format!(
                        "no grant was made by job {gid:?} on connector {:?}",
                        job.connector
                    ),
                    false,
                );
            }
            Err(e) => return fail(r, "internal", format!("the job store: {e}"), true),
        };
        if g.state != "active" && g.state != "ending" {
            r.warnings
                .push(format!("the grant already ended ({})", g.state));
            return done(r, JobStatus::Noop);
        }
        if job.dry_run {
            r.changes.push(Change {
                action: if g.created {
                    "remove_member"
                } else {
                    "restore_member"
                }
                .into(),
                target: json!({"type": g.target_type, "id": g.target_id}),
                user_id: Some(g.user_id as u64),
                email: None,
                before: serde_json::from_str(&g.applied).ok(),
                after: g
                    .prior
                    .as_deref()
                    .and_then(|p| serde_json::from_str(p).ok()),
                note: Some("planned".into()),
            });
            return done(r, JobStatus::Succeeded);
        }
        let _ = h.store.claim_grant(gid).await;
        let undone = match undo_grant(h, c, &g, &format!("ended early by job {}", job.job_id)).await
        {
            Ok(u) => u,
            Err(e) => return from_error(r, e),
        };
        let state = if undone.conflict.is_some() {
            "conflict"
        } else {
            "ended"
        };
        let _ = h.store.end_grant(gid, state, undone.conflict.clone()).await;
        r.changes = undone.changes;
        if let Some(conflict) = undone.conflict {
            return fail(r, "conflict", conflict, false);
        }
        let target = Target {
            kind: if g.target_type == "group" {
                "group"
            } else {
                "project"
            },
            id: g.target_id as u64,
            full_path: g.target_path.clone(),
            ancestors: Vec::new(),
        };
        let target = match provision::resolve_target(
            client,
            &if target.kind == "group" {
                TargetRef::Group(IdOrPath::Id(target.id))
            } else {
                TargetRef::Project(IdOrPath::Id(target.id))
            },
        )
        .await
        {
            Ok(t) => t,
            Err(e) => return from_error(r, e),
        };
        if let Ok(view) = provision::access_on(client, &target, g.user_id as u64).await {
            r.residual_access = Some(paths_json(&view));
        }
        let status = if r.changes.is_empty() {
            JobStatus::Noop
        } else {
            JobStatus::Succeeded
        };
        return done(r, status);
    }
    let (Some(user_sel), Some(target_sel)) = (user, target) else {
        unreachable!("validated by the envelope")
    };
    let target = match provision::resolve_target(client, &target_ref(target_sel)).await {
        Ok(t) => t,
        Err(e) => return from_error(r, e),
    };
    let email = match user_sel {
        UserSelector::Email(e) => Some(e.clone()),
        _ => None,
    };
    let user = match provision::resolve_user(client, &user_ref(user_sel)).await {
        Ok(u) => Some(u),
        Err(ProvisionError::UserNotFound(_)) if email.is_some() => None,
        Err(e) => return from_error(r, e),
    };
    // Pending invitations of the email are cancelled too.
    if let Some(email) = &email {
        match provision::pending_invitations(client, &target, email).await {
            Ok(invs) => {
                for inv in invs {
                    let change = Change {
                        action: "cancel_invitation".into(),
                        target: target.reference(),
                        user_id: None,
                        email: Some(inv.invite_email.clone()),
                        before: Some(
                            json!({"access_level": inv.access_level.0, "expires_at": inv.expires_at}),
                        ),
                        after: None,
                        note: None,
                    };
                    if !job.dry_run {
                        if let Err(e) = client
                            .cancel_invitation(&target.source(), &inv.invite_email)
                            .await
                        {
                            audit(h, Some(&job.job_id), &job.connector, &change, e.code()).await;
                            return from_error(r, e.into());
                        }
                        audit(h, Some(&job.job_id), &job.connector, &change, "ok").await;
                    }
                    r.changes.push(change);
                }
            }
            Err(e) => return from_error(r, e),
        }
    }
    let Some(user) = user else {
        let status = if r.changes.is_empty() {
            JobStatus::Noop
        } else {
            JobStatus::Succeeded
        };
        if r.changes.is_empty() {
            r.warnings.push(format!(
                "no user and no pending invitation has the email {}",
                email.unwrap_or_default()
            ));
        }
        return done(r, status);
    };
    let view = match provision::access_on(client, &target, user.id).await {
        Ok(v) => v,
        Err(e) => return from_error(r, e),
    };
    if let Some(direct) = &view.direct {
        let change = Change {
            action: "remove_member".into(),
            target: target.reference(),
            user_id: Some(user.id),
            email: None,
            before: Some(state_json(direct)),
            after: None,
            note: None,
        };
        if !job.dry_run {
            let removed = remove_direct(
                h,
                Some(&job.job_id),
                &job.connector,
                &target.source(),
                user.id,
                &change,
            )
            .await;
            if let Err(e) = removed {
                return from_error(r, e.into());
            }
            // A JIT grant on this membership is over: the scheduler must not restore it.
            if let Ok(active) = h
                .store
                .active_grants_on(
                    &job.connector,
                    target.kind,
                    target.id as i64,
                    user.id as i64,
                )
                .await
            {
                for g in active {
                    let _ = h
                        .store
                        .end_grant(
                            &g.job_id,
                            "ended",
                            Some(format!("revoked by job {}", job.job_id)),
                        )
                        .await;
                }
            }
        }
        r.changes.push(change);
    }
    // What is left through other paths, read after the removal.
    let after = if job.dry_run || view.direct.is_none() {
        view.clone()
    } else {
        match provision::access_on(client, &target, user.id).await {
            Ok(v) => v,
            Err(e) => return from_error(r, e),
        }
    };
    let residual: Vec<_> = after
        .paths
        .iter()
        .filter(|p| p.via != "direct")
        .cloned()
        .collect();
    r.residual_access = Some(serde_json::to_value(&residual).expect("serializes"));
    if r.changes.is_empty() {
        r.warnings.push(if residual.is_empty() {
            "the user has no direct membership and no access on the target".into()
        } else {
            "the user has no direct membership: the access comes through the paths in residual_access, which a revoke on this target cannot remove".into()
        });
        return done(r, JobStatus::Noop);
    }
    done(r, JobStatus::Succeeded)
}

// ------------------------------------------------------------------------------------------
// invite

pub(crate) async fn invite(h: &Handler, c: &Connector, job: &Job, r: JobResult) -> Outcome {
    let JobParams::Invite {
        email,
        target,
        access_level,
        expires_at,
    } = &job.params
    else {
        unreachable!("routed by kind")
    };
    if let Some(why) = read_only(c) {
        return fail(r, "forbidden", why, false);
    }
    let target = match provision::resolve_target(&c.client, &target_ref(target)).await {
        Ok(t) => t,
        Err(e) => return from_error(r, e),
    };
    invite_email(h, job, r, &target, email, *access_level, *expires_at).await
}

async fn invite_email(
    h: &Handler,
    job: &Job,
    mut r: JobResult,
    target: &Target,
    email: &str,
    level: AccessLevel,
    expires_at: Option<NaiveDate>,
) -> Outcome {
    let Some(c) = h.connectors.get(&job.connector) else {
        unreachable!("the connector was resolved")
    };
    let client = &c.client;
    // An existing member with this email is updated by GitLab without a word: read it first.
    let member_before = match provision::resolve_user(client, &UserRef::Email(email.into())).await {
        Ok(u) => client
            .direct_member(&target.source(), u.id)
            .await
            .ok()
            .flatten()
            .map(|m| (u.id, MemberState::of(&m))),
        Err(_) => None,
    };
    let pending_before = provision::pending_invitations(client, target, email)
        .await
        .ok()
        .and_then(|v| v.into_iter().next());
    let mut change = Change {
        action: "invite".into(),
        target: target.reference(),
        user_id: member_before.as_ref().map(|(id, _)| *id),
        email: Some(email.into()),
        before: match (&member_before, &pending_before) {
            (Some((_, m)), _) => Some(json!({"member": m})),
            (None, Some(i)) => Some(
                json!({"invitation": {"access_level": i.access_level.0, "expires_at": i.expires_at}}),
            ),
            (None, None) => None,
        },
        after: Some(json!({"access_level": level.0, "expires_at": expires_at})),
        note: None,
    };
    if job.dry_run {
        r.changes.push(change);
        return done(r, JobStatus::Succeeded);
    }
    let res = client
        .invite(
            &target.source(),
            &CreateInvitation {
                email: email.to_string(),
                access_level: level,
                expires_at,
                member_role_id: None,
            },
        )
        .await;
    match res {
        Ok(_) => {}
        Err(GlError::InvitationErrors { errors, .. }) => {
            audit(
                h,
                Some(&job.job_id),
                &job.connector,
                &change,
                "invitation_errors",
            )
            .await;
            let message = errors
                .iter()
                .map(|(k, v)| {
                    if k.is_empty() {
                        v.clone()
                    } else {
                        format!("{k}: {v}")
                    }
                })
                .collect::<Vec<_>>()
                .join("; ");
            return fail(
                r,
                "gitlab_error",
                format!("GitLab refused the invitation: {message}"),
                false,
            );
        }
        Err(e) => {
            audit(h, Some(&job.job_id), &job.connector, &change, e.code()).await;
            return from_error(r, e.into());
        }
    }
    if let Some((id, before)) = &member_before {
        let after = client
            .direct_member(&target.source(), *id)
            .await
            .ok()
            .flatten()
            .map(|m| MemberState::of(&m));
        change.action = "update_member".into();
        change.after = after.as_ref().map(state_json);
        change.note = Some(format!(
            "{email} already belongs to a member: GitLab updated that membership instead of inviting (before: {}, after: {})",
            state_json(before),
            after
                .as_ref()
                .map_or("unknown".into(), |a| state_json(a).to_string())
        ));
        r.warnings.push(change.note.clone().unwrap_or_default());
    }
    audit(h, Some(&job.job_id), &job.connector, &change, "ok").await;
    r.changes.push(change);
    done(r, JobStatus::Succeeded)
}

// ------------------------------------------------------------------------------------------
// deprovision

/// Every group and project in the connector's scope.
async fn scope_resources(c: &Connector) -> Result<Vec<Target>, ProvisionError> {
    let client = &c.client;
    let Some(scope) = c.settings.scope.clone().filter(|s| s != "instance") else {
        return Err(ProvisionError::GitLab(GlError::InvalidConfig(
            "deprovisioning needs the connector's scope (GITLAB_SCOPE: a top-level group); the `instance` scope is not supported for deprovisioning yet".into(),
        )));
    };
    let root = client.group(&IdOrPath::parse(&scope)).await?;
    let mut out = vec![Target {
        kind: "group",
        id: root.id,
        full_path: root.full_path.clone(),
        ancestors: Vec::new(),
    }];
    let groups: Vec<_> = client
        .descendant_groups(&IdOrPath::Id(root.id))
        .try_collect()
        .await?;
    out.extend(groups.iter().map(|g| Target {
        kind: "group",
        id: g.id,
        full_path: g.full_path.clone(),
        ancestors: Vec::new(),
    }));
    let projects: Vec<_> = client
        .group_projects(&IdOrPath::Id(root.id), true)
        .try_collect()
        .await?;
    out.extend(projects.iter().map(|p| Target {
        kind: "project",
        id: p.id,
        full_path: p.path_with_namespace.clone(),
        ancestors: Vec::new(),
    }));
    Ok(out)
}

/// The user's direct memberships and the email's pending invitations in the scope.
async fn residue(
    c: &Connector,
    resources: &[Target],
    user_id: u64,
    emails: &[String],
    with_invitations: bool,
) -> Result<(Vec<(Target, MemberState)>, Vec<(Target, String)>), ProvisionError> {
    let mut members = Vec::new();
    let mut invitations = Vec::new();
    for t in resources {
        if let Some(m) = c.client.direct_member(&t.source(), user_id).await? {
            members.push((t.clone(), MemberState::of(&m)));
        }
        if with_invitations {
            for email in emails {
                for inv in provision::pending_invitations(&c.client, t, email).await? {
                    invitations.push((t.clone(), inv.invite_email));
                }
            }
        }
    }
    Ok((members, invitations))
}

pub(crate) async fn deprovision(h: &Handler, c: &Connector, job: &Job, r: JobResult) -> Outcome {
    let JobParams::Deprovision { user, actions } = &job.params else {
        unreachable!("routed by kind")
    };
    if let Some(why) = read_only(c) {
        return fail(r, "forbidden", why, false);
    }
    let mut r = r;
    let client = &c.client;
    let user = match provision::resolve_user(client, &user_ref(user)).await {
        Ok(u) => u,
        Err(e) => return from_error(r, e),
    };
    let resources = match scope_resources(c).await {
        Ok(x) => x,
        Err(e) => return from_error(r, e),
    };
    let emails: Vec<String> = [user.email.clone(), user.public_email.clone()]
        .into_iter()
        .flatten()
        .filter(|e| !e.is_empty())
        .collect();
    let wants = |a: DeprovisionAction| actions.contains(&a);
    let with_inv = wants(DeprovisionAction::CancelInvitations);
    let (members, invitations) = match residue(c, &resources, user.id, &emails, with_inv).await {
        Ok(x) => x,
        Err(e) => return from_error(r, e),
    };
    let write = !job.dry_run;
    if wants(DeprovisionAction::RemoveMemberships) {
        for (t, m) in &members {
            let change = Change {
                action: "remove_member".into(),
                target: t.reference(),
                user_id: Some(user.id),
                email: None,
                before: Some(state_json(m)),
                after: None,
                note: None,
            };
            if write {
                let removed = remove_direct(
                    h,
                    Some(&job.job_id),
                    &job.connector,
                    &t.source(),
                    user.id,
                    &change,
                )
                .await;
                if let Err(e) = removed {
                    return from_error(r, e.into());
                }
            }
            r.changes.push(change);
        }
    }
    for (t, email) in &invitations {
        let change = Change {
            action: "cancel_invitation".into(),
            target: t.reference(),
            user_id: None,
            email: Some(email.clone()),
            before: None,
            after: None,
            note: None,
        };
        if write {
            match client.cancel_invitation(&t.source(), email).await {
                Ok(()) => audit(h, Some(&job.job_id), &job.connector, &change, "ok").await,
                Err(e) if e.is_not_found() => {}
                Err(e) => return from_error(r, e.into()),
            }
        }
        r.changes.push(change);
    }
    if wants(DeprovisionAction::RevokeTokens) {
        let tokens: Result<Vec<_>, _> = client.user_tokens(user.id).try_collect().await;
        match tokens {
            Ok(tokens) => {
                for t in tokens.into_iter().filter(|t| t.active) {
                    let change = Change {
                        action: "revoke_token".into(),
                        target: json!({"type": "user", "id": user.id}),
                        user_id: Some(user.id),
                        email: None,
                        before: Some(json!({"token_id": t.id, "name": t.name})),
                        after: None,
                        note: None,
                    };
                    if write {
                        if let Err(e) = client.revoke_token(t.id).await {
                            audit(h, Some(&job.job_id), &job.connector, &change, e.code()).await;
                            return from_error(r, e.into());
                        }
                        audit(h, Some(&job.job_id), &job.connector, &change, "ok").await;
                    }
                    r.changes.push(change);
                }
            }
            Err(e) => return from_error(r, e.into()),
        }
    }
    let account: Vec<(DeprovisionAction, &str)> = [
        (DeprovisionAction::Ban, "ban_user"),
        (DeprovisionAction::Deactivate, "deactivate_user"),
        (DeprovisionAction::Block, "block_user"),
        (DeprovisionAction::Delete, "delete_user"),
    ]
    .into_iter()
    .filter(|(a, _)| wants(*a))
    .collect();
    for (a, name) in account {
        let mut change = Change {
            action: name.into(),
            target: json!({"type": "user", "id": user.id}),
            user_id: Some(user.id),
            email: None,
            before: Some(json!({"state": user.state})),
            after: None,
            note: None,
        };
        if !write {
            r.changes.push(change);
            continue;
        }
        let res = match a {
            DeprovisionAction::Ban => client.user_action(user.id, UserAction::Ban).await,
            DeprovisionAction::Block => client.user_action(user.id, UserAction::Block).await,
            DeprovisionAction::Delete => client.delete_user(user.id, false).await,
            DeprovisionAction::Deactivate => {
                match client.user_action(user.id, UserAction::Deactivate).await {
                    Err(GlError::Forbidden { message, .. })
                    | Err(GlError::Validation { message, .. }) => {
                        change.note = Some(format!(
                            "GitLab refused to deactivate ({message}); blocked instead"
                        ));
                        change.action = "block_user".into();
                        client.user_action(user.id, UserAction::Block).await
                    }
                    other => other,
                }
            }
            _ => Ok(()),
        };
        match res {
            Ok(()) => {
                change.after = Some(json!({"state": match change.action.as_str() {
                    "ban_user" => "banned", "block_user" => "blocked", "deactivate_user" => "deactivated", _ => "deleted"
                }}));
                audit(h, Some(&job.job_id), &job.connector, &change, "ok").await;
            }
            Err(e) if e.is_not_found() && a == DeprovisionAction::Delete => {}
            Err(e) => {
                audit(h, Some(&job.job_id), &job.connector, &change, e.code()).await;
                return from_error(r, e.into());
            }
        }
        r.changes.push(change);
    }
    if job.dry_run {
        return done(r, JobStatus::Succeeded);
    }
    // Read again: what is left must be nothing.
    let (left_members, left_inv) = match residue(c, &resources, user.id, &emails, with_inv).await {
        Ok(x) => x,
        Err(e) => return from_error(r, e),
    };
    let mut residual: Vec<Value> = Vec::new();
    if wants(DeprovisionAction::RemoveMemberships) {
        residual.extend(left_members.iter().map(|(t, m)| json!({"via": "direct", "resource": t.reference(), "path": t.full_path, "access_level": m.access_level})));
    }
    residual.extend(left_inv.iter().map(|(t, e)| json!({"via": "invitation", "resource": t.reference(), "path": t.full_path, "email": e})));
    r.residual_access = Some(Value::Array(residual.clone()));
    if !residual.is_empty() {
        return fail(
            r,
            "residual_access",
            format!(
                "{} membership(s) or invitation(s) are still there after deprovisioning; see residual_access",
                residual.len()
            ),
            true,
        );
    }
    let status = if r.changes.is_empty() {
        JobStatus::Noop
    } else {
        JobStatus::Succeeded
    };
    done(r, status)
}
