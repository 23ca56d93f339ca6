//! `invite`: invite an email to a group or project. GitLab answers 201 with per-address errors,
//! and silently updates an existing member invited by email: both are read and reported. An
//! invitation already pending with the same level and expiry is not sent again (after a crash
//! between GitLab's write and the job's end, the redelivery finds it and finishes).

use chrono::{DateTime, NaiveDate, Utc};
use gitlab_connector::Error as GitLabError;
use gitlab_connector::api::{AccessLevel, CreateInvitation};
use gitlab_connector::provision::{self, MemberState, Target, TargetRef, UserRef};
use serde_json::json;

use super::audit::AuditedError;
use super::codes::Code;
use super::context::JobContext;
use super::fields::{self, Fail, Fields};
use super::guard;
use super::outcome::{Done, JobFailure};
use super::result::{Change, to_value};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Params {
    pub email: String,
    pub target: TargetRef,
    pub access_level: AccessLevel,
    pub expires_at: Option<NaiveDate>,
}

impl Params {
    pub fn parse(p: &Fields, now: DateTime<Utc>) -> Result<Self, Fail> {
        fields::only_keys(
            p,
            &["email", "target", "access_level", "expires_at"],
            "`params` of a invite job",
        )?;
        let email = fields::email(
            p.get("email")
                .ok_or("`email` is missing: the address to invite")?,
            "email",
        )?;
        Ok(Self {
            email,
            target: fields::target(p.get("target"))?,
            access_level: fields::access_level(p.get("access_level"))?,
            expires_at: p
                .get("expires_at")
                .map(|v| fields::date(v, "expires_at", now))
                .transpose()?,
        })
    }
}

pub async fn execute(ctx: &mut JobContext<'_>, params: &Params) -> Result<Done, JobFailure> {
    if let Some(why) = ctx.connector.read_only_reason() {
        return Err(JobFailure::failed(Code::Forbidden, why));
    }
    let connector = ctx.connector.clone();
    connector
        .settings
        .policy
        .check_level(params.access_level)
        .map_err(guard::denied)?;
    let target = provision::resolve_target(&connector.client, &params.target).await?;
    guard::target_in_scope(&connector, &target).await?;
    send(
        ctx,
        &target,
        &params.email,
        params.access_level,
        params.expires_at,
    )
    .await
}

/// GitLab's per-address errors as one message.
fn invitation_errors(errors: &std::collections::BTreeMap<String, String>) -> String {
    errors
        .iter()
        .map(|(k, v)| {
            if k.is_empty() {
                v.clone()
            } else {
                format!("{k}: {v}")
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Invites `email` to `target` (also used by a grant to an email no user has).
pub(super) async fn send(
    ctx: &mut JobContext<'_>,
    target: &Target,
    email: &str,
    level: AccessLevel,
    expires_at: Option<NaiveDate>,
) -> Result<Done, JobFailure> {
    let connector = ctx.connector.clone();
    let client = &connector.client;
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
    // The same invitation pending already: sent by an earlier attempt of this job (its
    // checkpoint says it was about to send), or by someone else. Sending again would be
    // answered "already invited" although what the job asks for is there.
    let same_pending = pending_before
        .as_ref()
        .is_some_and(|i| i.access_level == level && i.expires_at == expires_at);
    if same_pending && member_before.is_none() {
        let resumed = ctx.checkpoint().await.ok().flatten().is_some();
        change.before = None;
        if resumed {
            change.note = Some("sent by an earlier attempt of this job".into());
            ctx.report.changes.push(change);
            return Ok(Done::Succeeded);
        }
        ctx.report
            .warnings
            .push(format!("{email} has this invitation pending already"));
        return Ok(Done::Noop);
    }
    if ctx.job.dry_run {
        ctx.report.changes.push(change);
        return Ok(Done::Succeeded);
    }
    ctx.save_checkpoint(&json!({"invite": "sending"})).await?;
    let invitation = CreateInvitation {
        email: email.to_string(),
        access_level: level,
        expires_at,
        member_role_id: None,
    };
    match ctx
        .audit()
        .write(&change, client.invite(&target.source(), &invitation))
        .await
    {
        Ok(_) => {}
        Err(AuditedError::GitLab(GitLabError::InvitationErrors { errors, .. })) => {
            return Err(JobFailure::failed(
                Code::GitlabError,
                format!(
                    "GitLab refused the invitation: {}",
                    invitation_errors(&errors)
                ),
            ));
        }
        Err(e) => return Err(e.into()),
    }
    if let Some((id, before)) = &member_before {
        let after = client
            .direct_member(&target.source(), *id)
            .await
            .ok()
            .flatten()
            .map(|m| MemberState::of(&m));
        change.action = "update_member".into();
        change.after = after.as_ref().map(to_value);
        let note = format!(
            "{email} already belongs to a member: GitLab updated that membership instead of inviting (before: {}, after: {})",
            to_value(before),
            after
                .as_ref()
                .map_or("unknown".into(), |a| to_value(a).to_string())
        );
        ctx.report.warnings.push(note.clone());
        change.note = Some(note);
    }
    ctx.report.changes.push(change);
    Ok(Done::Succeeded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_address_errors_are_joined_with_their_field() {
        let errors = std::collections::BTreeMap::from([
            ("a@b.c".to_string(), "already invited".to_string()),
            (String::new(), "no".to_string()),
        ]);
        assert_eq!(invitation_errors(&errors), "no; a@b.c: already invited");
    }
}
