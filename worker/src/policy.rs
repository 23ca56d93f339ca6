//! Who may ask for what: a connector's policy (docs/security.md). Anyone who can publish one
//! message to NATS would otherwise hold the full power of the GitLab token; these rules bound
//! what a job may do, whoever published it. The rules here are plain data and plain checks; the
//! jobs apply them before they write anything.

use std::collections::BTreeSet;
use std::fmt;

use gitlab_connector::api::AccessLevel;

/// The account actions a deprovisioning may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AccountAction {
    Block,
    Deactivate,
    Ban,
    Delete,
}

impl AccountAction {
    pub const ALL: [AccountAction; 4] = [
        AccountAction::Block,
        AccountAction::Deactivate,
        AccountAction::Ban,
        AccountAction::Delete,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AccountAction::Block => "block",
            AccountAction::Deactivate => "deactivate",
            AccountAction::Ban => "ban",
            AccountAction::Delete => "delete",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

/// A policy rule that denies a job: the setting that denies it and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    /// `max_grant_level` / `GITLAB_MAX_GRANT_LEVEL`, …
    pub setting: &'static str,
    pub message: String,
}

impl fmt::Display for Denied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "denied by {}: {}", self.setting, self.message)
    }
}

pub const SCOPE: &str = "the connector's scope (scope / GITLAB_SCOPE)";
pub const MAX_GRANT_LEVEL: &str = "max_grant_level / GITLAB_MAX_GRANT_LEVEL";
pub const MAX_JIT_SECONDS: &str = "max_jit_seconds / GITLAB_MAX_JIT_SECONDS";
pub const ALLOW_PERMANENT_GRANTS: &str = "allow_permanent_grants / GITLAB_ALLOW_PERMANENT_GRANTS";
pub const ACCOUNT_ACTIONS: &str = "account_actions / GITLAB_ACCOUNT_ACTIONS";
pub const PROTECTED_USERS: &str = "protected_users / GITLAB_PROTECTED_USERS";

/// One connector's policy. The defaults allow what an access-request flow needs and nothing an
/// operator would not expect from a queue message: up to Maintainer, JIT grants up to 30 days,
/// blocking or deactivating accounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub max_grant_level: AccessLevel,
    pub max_jit_seconds: u64,
    pub allow_permanent_grants: bool,
    pub account_actions: BTreeSet<AccountAction>,
    /// Lower-cased usernames never deprovisioned or stripped of memberships or tokens.
    pub protected_users: BTreeSet<String>,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            max_grant_level: AccessLevel::MAINTAINER,
            max_jit_seconds: 30 * 86_400,
            allow_permanent_grants: true,
            account_actions: BTreeSet::from([AccountAction::Block, AccountAction::Deactivate]),
            protected_users: BTreeSet::new(),
        }
    }
}

fn level_name(l: AccessLevel) -> String {
    l.name()
        .map_or_else(|| l.0.to_string(), |n| format!("{n} ({})", l.0))
}

impl Policy {
    /// A grant or an invitation at `level`.
    pub fn check_level(&self, level: AccessLevel) -> Result<(), Denied> {
        if level.0 > self.max_grant_level.0 {
            return Err(Denied {
                setting: MAX_GRANT_LEVEL,
                message: format!(
                    "{} is above the connector's maximum, {}; configure a higher max_grant_level to allow it",
                    level_name(level),
                    level_name(self.max_grant_level)
                ),
            });
        }
        Ok(())
    }

    /// A grant ending `seconds` from now (`None`: permanent).
    pub fn check_expiry(&self, seconds: Option<i64>) -> Result<(), Denied> {
        match seconds {
            None if !self.allow_permanent_grants => Err(Denied {
                setting: ALLOW_PERMANENT_GRANTS,
                message: "permanent grants are not allowed on this connector; give duration_seconds or expires_at".into(),
            }),
            Some(s) if s > i64::try_from(self.max_jit_seconds).unwrap_or(i64::MAX) => Err(Denied {
                setting: MAX_JIT_SECONDS,
                message: format!(
                    "the grant would last {s} s, more than the connector's maximum of {} s",
                    self.max_jit_seconds
                ),
            }),
            _ => Ok(()),
        }
    }

    pub fn check_account_action(&self, action: AccountAction) -> Result<(), Denied> {
        if !self.account_actions.contains(&action) {
            return Err(Denied {
                setting: ACCOUNT_ACTIONS,
                message: format!(
                    "the account action {:?} is not allowed on this connector (allowed: {}); list it in account_actions to allow it",
                    action.as_str(),
                    self.account_actions
                        .iter()
                        .map(|a| a.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
        Ok(())
    }

    /// Why an account is protected, if it is: administrators, the token's own user, bots, and
    /// the listed usernames.
    pub fn protection(&self, account: &Account<'_>) -> Option<Denied> {
        let why = if account.is_admin {
            "it is an administrator"
        } else if account.is_token_user {
            "it is the connector's own service account (the token's user)"
        } else if account.is_bot {
            "it is a bot"
        } else if self
            .protected_users
            .contains(&account.username.to_lowercase())
        {
            "it is listed in protected_users"
        } else {
            return None;
        };
        Some(Denied {
            setting: PROTECTED_USERS,
            message: format!(
                "the account {:?} is protected: {why}; jobs never deprovision it or remove its memberships or tokens",
                account.username
            ),
        })
    }
}

/// What the protection rules need to know about an account.
pub struct Account<'a> {
    pub username: &'a str,
    pub is_admin: bool,
    pub is_token_user: bool,
    pub is_bot: bool,
}

/// Whether a group or project path lies in the subtree of the scope group's path (GitLab paths
/// compare case-insensitively).
pub fn path_in_scope(scope_path: &str, path: &str) -> bool {
    let (scope, path) = (scope_path.to_lowercase(), path.to_lowercase());
    let scope = scope.trim_matches('/');
    path == scope
        || path
            .strip_prefix(scope)
            .is_some_and(|rest| rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_allow_up_to_maintainer_and_thirty_days() {
        let p = Policy::default();
        assert!(p.check_level(AccessLevel::MAINTAINER).is_ok());
        let owner = p.check_level(AccessLevel(50)).unwrap_err();
        assert_eq!(owner.setting, MAX_GRANT_LEVEL);
        assert!(owner.message.contains("owner"), "{}", owner.message);
        assert!(p.check_expiry(Some(30 * 86_400)).is_ok());
        assert_eq!(
            p.check_expiry(Some(30 * 86_400 + 1)).unwrap_err().setting,
            MAX_JIT_SECONDS
        );
        assert!(p.check_expiry(None).is_ok());
        let strict = Policy {
            allow_permanent_grants: false,
            ..Policy::default()
        };
        assert_eq!(
            strict.check_expiry(None).unwrap_err().setting,
            ALLOW_PERMANENT_GRANTS
        );
        assert!(p.check_account_action(AccountAction::Block).is_ok());
        assert_eq!(
            p.check_account_action(AccountAction::Delete)
                .unwrap_err()
                .setting,
            ACCOUNT_ACTIONS
        );
    }

    #[test]
    fn admins_the_token_user_bots_and_listed_users_are_protected() {
        let p = Policy {
            protected_users: BTreeSet::from(["breakglass".to_string()]),
            ..Policy::default()
        };
        let account = |username, is_admin, is_token_user, is_bot| Account {
            username,
            is_admin,
            is_token_user,
            is_bot,
        };
        assert!(
            p.protection(&account("jdoe", false, false, false))
                .is_none()
        );
        for a in [
            account("root", true, false, false),
            account("svc", false, true, false),
            account("project_7_bot_x", false, false, true),
            account("BreakGlass", false, false, false),
        ] {
            assert_eq!(p.protection(&a).unwrap().setting, PROTECTED_USERS);
        }
    }

    #[test]
    fn scope_containment_is_by_whole_path_segments() {
        assert!(path_in_scope("acme", "acme"));
        assert!(path_in_scope("acme", "ACME/platform/api"));
        assert!(!path_in_scope("acme", "acme-evil"));
        assert!(!path_in_scope("acme", "acmeplatform/x"));
        assert!(!path_in_scope("acme/platform", "acme"));
        assert!(!path_in_scope("acme", "other/acme"));
    }
}
