//! `revoke`: remove a user's direct membership (an email also loses its pending invitations),
//! or end the JIT grant a grant job made, early. The access left through other paths is
//! reported as `residual_access`: inherited- or shared-only access is a `noop`, never a fake
//! success.

use gitlab_connector::provision::{self, AccessView, MemberState, TargetRef, UserRef};
use serde_json::json;

use super::codes::Code;
use super::context::JobContext;
use super::fields::{self, Fail, Fields};
use super::guard;
use super::outcome::{Done, JobFailure};
use super::result::{Change, to_value};
use super::undo::undo_grant;
use crate::ids::JobId;
use crate::store::GrantState;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Params {
    /// End the grant made by this grant job (its prior state is restored).
    ByGrant { grant_job_id: JobId },
    /// Remove this user's direct membership on this target.
    ByMembership { user: UserRef, target: TargetRef },
}

impl Params {
    pub fn parse(p: &Fields) -> Result<Self, Fail> {
        fields::only_keys(
            p,
            &["user", "target", "grant_job_id"],
            "`params` of a revoke job",
        )?;
        match p.get("grant_job_id") {
            Some(g) => {
                if p.contains_key("user") || p.contains_key("target") {
                    return Err(
                        "give either `grant_job_id` or `user` and `target`, not both".into(),
                    );
                }
                let id = fields::text(g, "grant_job_id")?;
                let grant_job_id = JobId::parse(&id).map_err(|e| format!("`grant_job_id` {e}"))?;
                Ok(Params::ByGrant { grant_job_id })
            }
            None => Ok(Params::ByMembership {
                user: fields::user(p.get("user"), "user")?,
                target: fields::target(p.get("target"))?,
            }),
        }
    }
}

pub async fn execute(ctx: &mut JobContext<'_>, params: &Params) -> Result<Done, JobFailure> {
    if let Some(why) = ctx.connector.read_only_reason() {
        return Err(JobFailure::failed(Code::Forbidden, why));
    }
    match params {
        Params::ByGrant { grant_job_id } => by_grant(ctx, grant_job_id).await,
        Params::ByMembership { user, target } => by_membership(ctx, user, target).await,
    }
}

fn residual(view: &AccessView) -> serde_json::Value {
    to_value(&view.paths)
}

async fn by_grant(ctx: &mut JobContext<'_>, gid: &JobId) -> Result<Done, JobFailure> {
    let connector = ctx.connector.clone();
    let g = match ctx.store.grant(gid.as_str()).await? {
        Some(g) if g.connector == ctx.job.connector.as_str() => g,
        _ => {
            return Err(JobFailure::failed(
                Code::GrantNotFound,
                format!(
                    "no grant was made by job {:?} on connector {:?}",
                    gid.as_str(),
                    ctx.job.connector.as_str()
                ),
            ));
        }
    };
    if !g.state.is_live() {
        ctx.report
            .warnings
            .push(format!("the grant already ended ({})", g.state.as_str()));
        return Ok(Done::Noop);
    }
    if ctx.job.dry_run {
        ctx.report.changes.push(Change {
            action: if g.created {
                "remove_member"
            } else {
                "restore_member"
            }
            .into(),
            target: g.target().reference(),
            user_id: Some(g.user_id),
            email: None,
            before: Some(to_value(&g.applied)),
            after: g.prior.as_ref().map(to_value),
            note: Some("planned".into()),
        });
        return Ok(Done::Succeeded);
    }
    let _ = ctx
        .store
        .claim_grant(
            gid.as_str(),
            ctx.clock.now(),
            super::undo::CLAIM_LEASE,
            false,
        )
        .await;
    let why = format!("ended early by job {}", ctx.job.job_id);
    let undone = undo_grant(ctx.store, &connector, &g, &why).await?;
    let state = if undone.conflict.is_some() {
        GrantState::Conflict
    } else {
        GrantState::Ended
    };
    let _ = ctx
        .store
        .end_grant(gid.as_str(), state, undone.conflict.clone())
        .await;
    ctx.report.changes = undone.changes;
    if let Some(conflict) = undone.conflict {
        return Err(JobFailure::failed(Code::Conflict, conflict));
    }
    let target = provision::resolve_target(
        &connector.client,
        &TargetRef::by_id(g.target_kind, g.target_id),
    )
    .await?;
    if let Ok(view) = provision::access_on(&connector.client, &target, g.user_id).await {
        ctx.report.residual_access = Some(residual(&view));
    }
    Ok(Done::by_changes(!ctx.report.changes.is_empty()))
}

async fn by_membership(
    ctx: &mut JobContext<'_>,
    user_ref: &UserRef,
    target_ref: &TargetRef,
) -> Result<Done, JobFailure> {
    let connector = ctx.connector.clone();
    let client = &connector.client;
    let target = provision::resolve_target(client, target_ref).await?;
    guard::target_in_scope(&connector, &target).await?;
    let email = match user_ref {
        UserRef::Email(e) => Some(e.clone()),
        _ => None,
    };
    let user = match provision::resolve_user(client, user_ref).await {
        Ok(u) => Some(u),
        Err(provision::ProvisionError::UserNotFound(_)) if email.is_some() => None,
        Err(e) => return Err(e.into()),
    };
    if let Some(u) = &user {
        guard::account_not_protected(&connector, u).await?;
    }
    // Pending invitations of the email are cancelled too.
    if let Some(email) = &email {
        for inv in provision::pending_invitations(client, &target, email).await? {
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
            if !ctx.job.dry_run {
                ctx.audit()
                    .write(
                        &change,
                        client.cancel_invitation(&target.source(), &inv.invite_email),
                    )
                    .await?;
            }
            ctx.report.changes.push(change);
        }
    }
    let Some(user) = user else {
        if ctx.report.changes.is_empty() {
            ctx.report.warnings.push(format!(
                "no user and no pending invitation has the email {}",
                email.unwrap_or_default()
            ));
        }
        return Ok(Done::by_changes(!ctx.report.changes.is_empty()));
    };
    let direct = client.direct_member(&target.source(), user.id).await?;
    if let Some(direct) = &direct {
        let change = Change {
            action: "remove_member".into(),
            target: target.reference(),
            user_id: Some(user.id),
            email: None,
            before: Some(to_value(&MemberState::of(direct))),
            after: None,
            note: None,
        };
        if !ctx.job.dry_run {
            ctx.audit()
                .remove_direct(client, &target.source(), user.id, &change)
                .await?;
            // A JIT grant on this membership is over: the scheduler must not restore it.
            if let Err(e) = ctx
                .store
                .end_live_grants_on(
                    ctx.job.connector.as_str(),
                    target.kind,
                    target.id,
                    user.id,
                    format!("revoked by job {}", ctx.job.job_id),
                )
                .await
            {
                tracing::warn!(
                    "the grants on the removed membership could not be marked ended: {e}"
                );
            }
        }
        ctx.report.changes.push(change);
    }
    // What is left through other paths, read after the removal (the direct membership is
    // gone: GitLab answered the removal).
    let removed = !ctx.job.dry_run && direct.is_some();
    let after = provision::access_with_direct(
        client,
        &target,
        user.id,
        if removed { None } else { direct },
    )
    .await?;
    let residual: Vec<_> = after
        .paths
        .iter()
        .filter(|p| p.via != "direct")
        .cloned()
        .collect();
    ctx.report.residual_access = Some(to_value(&residual));
    if ctx.report.changes.is_empty() {
        ctx.report.warnings.push(if residual.is_empty() {
            "the user has no direct membership and no access on the target".into()
        } else {
            "the user has no direct membership: the access comes through the paths in residual_access, which a revoke on this target cannot remove".into()
        });
        return Ok(Done::Noop);
    }
    Ok(Done::Succeeded)
}
