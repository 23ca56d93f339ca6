//! The connector's policy applied to a job (docs/security.md): a violation is a `rejected`
//! result with code `policy_denied` whose message names the setting that denies it. Static rules
//! (levels, expiries, account actions) are checked before anything is read; the scope and the
//! protected accounts right after the target or user is resolved, before anything is written.

use gitlab_connector::api::User;
use gitlab_connector::model::{UserKind, user_kind};
use gitlab_connector::provision::Target;

use super::codes::Code;
use super::outcome::JobFailure;
use crate::connector::Connector;
use crate::policy::{self, Account, Denied, path_in_scope};

pub fn denied(d: Denied) -> JobFailure {
    JobFailure::rejected(Code::PolicyDenied, d.to_string())
}

/// The scope's path, or why the connector may not act anywhere (`Ok(None)`: the `instance`
/// scope, everything allowed).
async fn scope_path(connector: &Connector) -> Result<Option<&str>, JobFailure> {
    let path = connector.scope_path().await?;
    if path.is_none() && connector.settings.scope.as_deref() != Some("instance") {
        return Err(denied(Denied {
            setting: policy::SCOPE,
            message: format!(
                "connector {:?} has no scope: set GITLAB_SCOPE (or scope) to the top-level group jobs may act in",
                connector.settings.id.as_str()
            ),
        }));
    }
    Ok(path)
}

/// The group or project a job acts on lies in the connector's scope.
pub async fn target_in_scope(connector: &Connector, target: &Target) -> Result<(), JobFailure> {
    match scope_path(connector).await? {
        Some(scope) if !path_in_scope(scope, &target.full_path) => Err(denied(Denied {
            setting: policy::SCOPE,
            message: format!(
                "the {} {} is outside the connector's scope {scope}",
                target.kind, target.full_path
            ),
        })),
        _ => Ok(()),
    }
}

/// A sync's scope (the group's full path, or `None` for `instance`) lies in the connector's.
pub async fn sync_scope_allowed(
    connector: &Connector,
    wanted: Option<&str>,
) -> Result<(), JobFailure> {
    let scope = scope_path(connector).await?;
    let ok = match (scope, wanted) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(scope), Some(path)) => path_in_scope(scope, path),
    };
    if ok {
        return Ok(());
    }
    Err(denied(Denied {
        setting: policy::SCOPE,
        message: format!(
            "a sync of {} is outside the connector's scope {}; `instance` needs a connector whose scope is instance",
            wanted.unwrap_or("the instance"),
            scope.unwrap_or("")
        ),
    }))
}

/// The account is not protected: never an administrator, the token's own user, a bot or a
/// listed username.
pub async fn account_not_protected(connector: &Connector, user: &User) -> Result<(), JobFailure> {
    let token_user = connector.token_user().await?;
    let account = Account {
        username: &user.username,
        is_admin: user.is_admin == Some(true),
        is_token_user: user.id == token_user,
        is_bot: user_kind(&user.username, user.bot) != UserKind::Human,
    };
    match connector.settings.policy.protection(&account) {
        Some(d) => Err(denied(d)),
        None => Ok(()),
    }
}
