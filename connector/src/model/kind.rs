//! Human, service account or bot, from what GitLab shows.
//!
//! GitLab's member and billable-member entities carry no user type, so on GitLab.com the kind is
//! derived from GitLab's own username conventions: service accounts are created as
//! `service_account_…` (`service_account_group_<id>_<hash>`), project and group access-token bots
//! as `project_<id>_bot_<hash>` / `group_<id>_bot_<hash>`. Where the API does say (`bot` on
//! `/users`), that wins for bots.

use super::UserKind;

pub fn user_kind(username: &str, bot_flag: Option<bool>) -> UserKind {
    if username.starts_with("service_account_") {
        return UserKind::ServiceAccount;
    }
    if bot_flag == Some(true) || is_token_bot(username) {
        return UserKind::Bot;
    }
    UserKind::Human
}

fn is_token_bot(username: &str) -> bool {
    let rest = username
        .strip_prefix("project_")
        .or_else(|| username.strip_prefix("group_"));
    let Some(rest) = rest else { return false };
    let Some((id, tail)) = rest.split_once("_bot") else {
        return false;
    };
    !id.is_empty()
        && id.chars().all(|c| c.is_ascii_digit())
        && (tail.is_empty() || tail.starts_with('_'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_follow_gitlab_conventions() {
        assert_eq!(
            user_kind("service_account_group_22_f1e2", None),
            UserKind::ServiceAccount
        );
        assert_eq!(
            user_kind("project_278964_bot_e2f5ad8b2a7d47d8", None),
            UserKind::Bot
        );
        assert_eq!(user_kind("group_9_bot_1", None), UserKind::Bot);
        assert_eq!(user_kind("project_bot", None), UserKind::Human);
        assert_eq!(user_kind("alice", Some(true)), UserKind::Bot);
        assert_eq!(user_kind("group_lead", None), UserKind::Human);
        assert_eq!(user_kind("alice", None), UserKind::Human);
    }
}
