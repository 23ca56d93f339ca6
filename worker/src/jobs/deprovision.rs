//! `deprovision`: within the connector's scope, remove every direct membership of a user,
//! cancel the pending invitations of their emails, revoke their tokens, and block, deactivate,
//! ban or delete the account as asked; then read everything again: anything left makes the job
//! `failed`. Every step re-reads first, so a redelivery after a crash halfway finishes the job.

use futures::TryStreamExt;
use gitlab_connector::Error as GitLabError;
use gitlab_connector::api::{User, UserAction};
use gitlab_connector::client::IdOrPath;
use gitlab_connector::provision::{self, MemberState, ProvisionError, Target, TargetKind, UserRef};
use serde::Serialize;
use serde_json::{Value, json};

use super::audit::AuditedError;
use super::codes::Code;
use super::context::JobContext;
use super::fields::{self, Fail, Fields, describe};
use super::guard;
use super::outcome::{Done, JobFailure};
use super::result::{Change, to_value};
use crate::connector::Connector;
use crate::policy::AccountAction;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeprovisionAction {
    RemoveMemberships,
    CancelInvitations,
    Block,
    Deactivate,
    Ban,
    Delete,
    RevokeTokens,
}

impl DeprovisionAction {
    pub const ALL: [(&'static str, DeprovisionAction); 7] = [
        ("remove_memberships", DeprovisionAction::RemoveMemberships),
        ("cancel_invitations", DeprovisionAction::CancelInvitations),
        ("block", DeprovisionAction::Block),
        ("deactivate", DeprovisionAction::Deactivate),
        ("ban", DeprovisionAction::Ban),
        ("delete", DeprovisionAction::Delete),
        ("revoke_tokens", DeprovisionAction::RevokeTokens),
    ];

    pub const DEFAULT: [DeprovisionAction; 2] = [
        DeprovisionAction::RemoveMemberships,
        DeprovisionAction::CancelInvitations,
    ];

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.iter().find(|(n, _)| *n == name).map(|(_, a)| *a)
    }

    /// The policy's name for an account action.
    pub fn account_action(self) -> Option<AccountAction> {
        match self {
            DeprovisionAction::Ban => Some(AccountAction::Ban),
            DeprovisionAction::Deactivate => Some(AccountAction::Deactivate),
            DeprovisionAction::Block => Some(AccountAction::Block),
            DeprovisionAction::Delete => Some(AccountAction::Delete),
            _ => None,
        }
    }

    /// The result's action for an account action, and the account state it leads to.
    fn account_change(self) -> Option<(&'static str, &'static str)> {
        match self {
            DeprovisionAction::Ban => Some(("ban_user", "banned")),
            DeprovisionAction::Deactivate => Some(("deactivate_user", "deactivated")),
            DeprovisionAction::Block => Some(("block_user", "blocked")),
            DeprovisionAction::Delete => Some(("delete_user", "deleted")),
            _ => None,
        }
    }
}

/// The account actions asked for, in the order they are applied.
pub fn account_actions(actions: &[DeprovisionAction]) -> Vec<DeprovisionAction> {
    [
        DeprovisionAction::Ban,
        DeprovisionAction::Deactivate,
        DeprovisionAction::Block,
        DeprovisionAction::Delete,
    ]
    .into_iter()
    .filter(|a| actions.contains(a))
    .collect()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Params {
    pub user: UserRef,
    pub actions: Vec<DeprovisionAction>,
}

impl Params {
    pub fn parse(p: &Fields) -> Result<Self, Fail> {
        fields::only_keys(p, &["user", "actions"], "`params` of a deprovision job")?;
        let actions = match p.get("actions") {
            None => DeprovisionAction::DEFAULT.to_vec(),
            Some(Value::Array(a)) => {
                if a.is_empty() {
                    return Err("`actions` is empty; leave it out for the default [\"remove_memberships\", \"cancel_invitations\"]".into());
                }
                let mut out = Vec::new();
                for v in a {
                    let name = v.as_str().ok_or_else(|| {
                        format!("`actions` entries must be strings, not {}", describe(v))
                    })?;
                    let action = DeprovisionAction::parse(name).ok_or_else(|| {
                        format!(
                            "`actions`: {} is not a deprovisioning action; use {}",
                            fields::quoted(name),
                            DeprovisionAction::ALL.map(|(n, _)| n).join(", ")
                        )
                    })?;
                    if out.contains(&action) {
                        return Err(format!("`actions` lists {} twice", fields::quoted(name)));
                    }
                    out.push(action);
                }
                out
            }
            Some(other) => {
                return Err(format!(
                    "`actions` must be an array of action names, not {}",
                    describe(other)
                ));
            }
        };
        Ok(Self {
            user: fields::user(p.get("user"), "user")?,
            actions,
        })
    }

    fn wants(&self, a: DeprovisionAction) -> bool {
        self.actions.contains(&a)
    }
}

/// Every group and project in the connector's scope.
async fn scope_resources(c: &Connector) -> Result<Vec<Target>, ProvisionError> {
    let client = &c.client;
    let Some(scope) = c.settings.scope.clone().filter(|s| s != "instance") else {
        return Err(ProvisionError::GitLab(GitLabError::InvalidConfig(
            "deprovisioning needs the connector's scope (GITLAB_SCOPE: a top-level group); the `instance` scope is not supported for deprovisioning yet".into(),
        )));
    };
    let root = client.group(&IdOrPath::parse(&scope)).await?;
    let mut out = vec![Target::known(
        TargetKind::Group,
        root.id,
        root.full_path.clone(),
    )];
    let groups: Vec<_> = client
        .descendant_groups(&IdOrPath::Id(root.id))
        .try_collect()
        .await?;
    out.extend(
        groups
            .iter()
            .map(|g| Target::known(TargetKind::Group, g.id, g.full_path.clone())),
    );
    let projects: Vec<_> = client
        .group_projects(&IdOrPath::Id(root.id), true)
        .try_collect()
        .await?;
    out.extend(
        projects
            .iter()
            .map(|p| Target::known(TargetKind::Project, p.id, p.path_with_namespace.clone())),
    );
    Ok(out)
}

/// What a user still holds in the scope.
struct Residue {
    members: Vec<(Target, MemberState)>,
    invitations: Vec<(Target, String)>,
}

/// The user's direct memberships and the emails' pending invitations in the scope.
async fn residue(
    c: &Connector,
    resources: &[Target],
    user_id: u64,
    emails: &[String],
    with_invitations: bool,
) -> Result<Residue, ProvisionError> {
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
    Ok(Residue {
        members,
        invitations,
    })
}

pub async fn execute(ctx: &mut JobContext<'_>, params: &Params) -> Result<Done, JobFailure> {
    if let Some(why) = ctx.connector.read_only_reason() {
        return Err(JobFailure::failed(Code::Forbidden, why));
    }
    let connector = ctx.connector.clone();
    for action in account_actions(&params.actions) {
        if let Some(a) = action.account_action() {
            connector
                .settings
                .policy
                .check_account_action(a)
                .map_err(guard::denied)?;
        }
    }
    let user = provision::resolve_user(&connector.client, &params.user).await?;
    guard::account_not_protected(&connector, &user).await?;
    let resources = scope_resources(&connector).await?;
    let emails: Vec<String> = [user.email.clone(), user.public_email.clone()]
        .into_iter()
        .flatten()
        .filter(|e| !e.is_empty())
        .collect();
    let with_inv = params.wants(DeprovisionAction::CancelInvitations);
    let found = residue(&connector, &resources, user.id, &emails, with_inv).await?;
    if params.wants(DeprovisionAction::RemoveMemberships) {
        remove_memberships(ctx, &connector, user.id, &found.members).await?;
    }
    cancel_invitations(ctx, &connector, &found.invitations).await?;
    if params.wants(DeprovisionAction::RevokeTokens) {
        revoke_tokens(ctx, &connector, user.id).await?;
    }
    for action in account_actions(&params.actions) {
        account_action(ctx, &connector, &user, action).await?;
    }
    if ctx.job.dry_run {
        return Ok(Done::Succeeded);
    }
    // Read again: what is left must be nothing.
    let left = residue(&connector, &resources, user.id, &emails, with_inv).await?;
    let mut residual: Vec<Value> = Vec::new();
    if params.wants(DeprovisionAction::RemoveMemberships) {
        residual.extend(left.members.iter().map(|(t, m)| json!({"via": "direct", "resource": t.reference(), "path": t.full_path, "access_level": m.access_level})));
    }
    residual.extend(left.invitations.iter().map(|(t, e)| json!({"via": "invitation", "resource": t.reference(), "path": t.full_path, "email": e})));
    let n = residual.len();
    ctx.report.residual_access = Some(Value::Array(residual));
    if n > 0 {
        return Err(JobFailure::transient(
            Code::ResidualAccess,
            format!(
                "{n} membership(s) or invitation(s) are still there after deprovisioning; see residual_access"
            ),
        ));
    }
    Ok(Done::by_changes(!ctx.report.changes.is_empty()))
}

async fn remove_memberships(
    ctx: &mut JobContext<'_>,
    connector: &Connector,
    user_id: u64,
    members: &[(Target, MemberState)],
) -> Result<(), JobFailure> {
    for (t, m) in members {
        let change = Change {
            action: "remove_member".into(),
            target: t.reference(),
            user_id: Some(user_id),
            email: None,
            before: Some(to_value(m)),
            after: None,
            note: None,
        };
        if !ctx.job.dry_run {
            ctx.audit()
                .remove_direct(&connector.client, &t.source(), user_id, &change)
                .await?;
        }
        ctx.report.changes.push(change);
    }
    Ok(())
}

async fn cancel_invitations(
    ctx: &mut JobContext<'_>,
    connector: &Connector,
    invitations: &[(Target, String)],
) -> Result<(), JobFailure> {
    for (t, email) in invitations {
        let change = Change {
            action: "cancel_invitation".into(),
            target: t.reference(),
            user_id: None,
            email: Some(email.clone()),
            before: None,
            after: None,
            note: None,
        };
        if !ctx.job.dry_run {
            match ctx
                .audit()
                .write(
                    &change,
                    connector.client.cancel_invitation(&t.source(), email),
                )
                .await
            {
                Ok(()) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e.into()),
            }
        }
        ctx.report.changes.push(change);
    }
    Ok(())
}

async fn revoke_tokens(
    ctx: &mut JobContext<'_>,
    connector: &Connector,
    user_id: u64,
) -> Result<(), JobFailure> {
    let tokens: Vec<_> = connector.client.user_tokens(user_id).try_collect().await?;
    for t in tokens.into_iter().filter(|t| t.active) {
        let change = Change {
            action: "revoke_token".into(),
            target: json!({"type": "user", "id": user_id}),
            user_id: Some(user_id),
            email: None,
            before: Some(json!({"token_id": t.id, "name": t.name})),
            after: None,
            note: None,
        };
        if !ctx.job.dry_run {
            ctx.audit()
                .write(&change, connector.client.revoke_token(t.id))
                .await?;
        }
        ctx.report.changes.push(change);
    }
    Ok(())
}

async fn account_action(
    ctx: &mut JobContext<'_>,
    connector: &Connector,
    user: &User,
    action: DeprovisionAction,
) -> Result<(), JobFailure> {
    let Some((name, _)) = action.account_change() else {
        return Ok(());
    };
    let client = &connector.client;
    let mut change = Change {
        action: name.into(),
        target: json!({"type": "user", "id": user.id}),
        user_id: Some(user.id),
        email: None,
        before: Some(json!({"state": user.state})),
        after: None,
        note: None,
    };
    if ctx.job.dry_run {
        ctx.report.changes.push(change);
        return Ok(());
    }
    change.after = Some(json!({ "state": action.account_change().map_or("", |(_, s)| s) }));
    let audit = ctx.audit();
    let answer = match action {
        DeprovisionAction::Ban => {
            audit
                .write(&change, client.user_action(user.id, UserAction::Ban))
                .await
        }
        DeprovisionAction::Block => {
            audit
                .write(&change, client.user_action(user.id, UserAction::Block))
                .await
        }
        DeprovisionAction::Delete => {
            audit
                .write(&change, client.delete_user(user.id, false))
                .await
        }
        _ => match audit
            .write(&change, client.user_action(user.id, UserAction::Deactivate))
            .await
        {
            Err(AuditedError::GitLab(
                GitLabError::Forbidden { message, .. } | GitLabError::Validation { message, .. },
            )) => {
                change.note = Some(format!(
                    "GitLab refused to deactivate ({message}); blocked instead"
                ));
                change.action = "block_user".into();
                change.after = Some(json!({ "state": "blocked" }));
                audit
                    .write(&change, client.user_action(user.id, UserAction::Block))
                    .await
            }
            other => other,
        },
    };
    match answer {
        Ok(()) => {}
        Err(e) if e.is_not_found() && action == DeprovisionAction::Delete => {}
        Err(e) => return Err(e.into()),
    }
    ctx.report.changes.push(change);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_actions_are_applied_in_a_fixed_order() {
        use DeprovisionAction::*;
        assert_eq!(
            account_actions(&[Delete, RemoveMemberships, Block, Ban]),
            vec![Ban, Block, Delete]
        );
        assert!(account_actions(&DeprovisionAction::DEFAULT).is_empty());
    }
}
