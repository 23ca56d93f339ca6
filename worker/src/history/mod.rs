//! Point-in-time answers for auditors (docs/auditors.md): who had access to a resource at a
//! time and how, what a user could reach, and every change with its cause. They stand on the
//! stored history: full snapshots (temporal record rows), the live change batches laid over
//! them, and the audit log of the worker's own writes.
//!
//! The state at a time T is the newest complete snapshot finished by T with the batches
//! applied on it by T (a partial snapshot only when no complete one is that old). "Since" is
//! the earliest observation (a snapshot or a batch) from which the access held at that level
//! without a break.

mod access;
mod changes;
pub mod render;
mod search;
mod timeline;

use std::fmt;

use chrono::{DateTime, NaiveDate, Utc};
use gitlab_connector::model::ResourceRef;
use serde::Serialize;

pub use access::{AccessAnswer, AccessRow, PathInfo, user_access, who};
pub use changes::{ChangeRow, HistoryAnswer, HistoryQuery, history};
pub use search::{Found, parse_time, search, snapshot_diff};
pub use timeline::{BasedOn, Timeline};

use crate::store::StoreError;

/// What a question could not answer.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error(
        "connector {connector:?} has no stored snapshot; run a sync first (`gitlab-worker sync` or a `sync` job)"
    )]
    NoSnapshots { connector: String },
    #[error(
        "{at} is before the first stored snapshot of connector {connector:?} ({first}); the history starts there, so nothing can be said about that time"
    )]
    BeforeHistory {
        connector: String,
        at: DateTime<Utc>,
        first: DateTime<Utc>,
    },
    #[error("{what} is not in the stored history of connector {connector:?} as of {at}")]
    NotFound {
        what: String,
        connector: String,
        at: DateTime<Utc>,
    },
    #[error("{0}")]
    BadSelector(String),
    #[error(
        "scope {scope:?} has no stored snapshot of connector {connector:?}; stored scopes: {known}"
    )]
    UnknownScope {
        connector: String,
        scope: String,
        known: String,
    },
    #[error("the stored history cannot be read: {0}")]
    Store(#[from] StoreError),
}

/// `group:PATH`, `project:PATH`, `group:ID`, `project:ID`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResourceSel {
    Group(Ident),
    Project(Ident),
}

/// A username, or `id:N`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserSel {
    Username(String),
    Id(u64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ident {
    Id(u64),
    Path(String),
}

const MAX_SELECTOR: usize = 1024;

impl ResourceSel {
    pub fn parse(s: &str) -> Result<Self, HistoryError> {
        let bad = || {
            HistoryError::BadSelector(format!(
                "{:?} is not a resource: write group:PATH, group:ID, project:PATH or project:ID (e.g. group:acme/platform)",
                truncate(s)
            ))
        };
        if s.len() > MAX_SELECTOR || s.chars().any(char::is_control) {
            return Err(bad());
        }
        let (kind, rest) = s.split_once(':').ok_or_else(bad)?;
        let rest = rest.trim();
        if rest.is_empty() {
            return Err(bad());
        }
        let ident = match rest.parse::<u64>() {
            Ok(id) => Ident::Id(id),
            Err(_) => Ident::Path(rest.trim_matches('/').to_string()),
        };
        match kind {
            "group" => Ok(ResourceSel::Group(ident)),
            "project" => Ok(ResourceSel::Project(ident)),
            _ => Err(bad()),
        }
    }

    /// The record key prefix of its kind: `2/` groups, `3/` projects.
    fn key_prefix(&self) -> &'static str {
        match self {
            ResourceSel::Group(_) => "2/",
            ResourceSel::Project(_) => "3/",
        }
    }

    fn ident(&self) -> &Ident {
        match self {
            ResourceSel::Group(i) | ResourceSel::Project(i) => i,
        }
    }

    fn with_id(&self, id: u64) -> ResourceRef {
        match self {
            ResourceSel::Group(_) => ResourceRef::Group(id),
            ResourceSel::Project(_) => ResourceRef::Project(id),
        }
    }
}

impl fmt::Display for ResourceSel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (kind, ident) = match self {
            ResourceSel::Group(i) => ("group", i),
            ResourceSel::Project(i) => ("project", i),
        };
        match ident {
            Ident::Id(id) => write!(f, "{kind} {id}"),
            Ident::Path(p) => write!(f, "{kind} {p:?}"),
        }
    }
}

impl UserSel {
    pub fn parse(s: &str) -> Result<Self, HistoryError> {
        let s = s.trim();
        if s.is_empty() || s.len() > MAX_SELECTOR || s.chars().any(char::is_control) {
            return Err(HistoryError::BadSelector(format!(
                "{:?} is not a user: write a username or id:N (e.g. id:42)",
                truncate(s)
            )));
        }
        match s.strip_prefix("id:") {
            Some(n) => n.trim().parse().map(UserSel::Id).map_err(|_| {
                HistoryError::BadSelector(format!(
                    "{:?} is not a user id: write id: followed by a number",
                    truncate(s)
                ))
            }),
            None => Ok(UserSel::Username(s.trim_start_matches('@').to_string())),
        }
    }
}

impl fmt::Display for UserSel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UserSel::Username(u) => write!(f, "user {u:?}"),
            UserSel::Id(id) => write!(f, "user {id}"),
        }
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

/// A group or project as answers name it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResourceInfo {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub id: u64,
    /// Its full path at the time asked about (`null` when no stored record names it).
    pub path: Option<String>,
}

impl ResourceInfo {
    pub fn new(r: ResourceRef, path: Option<String>) -> Self {
        let (kind, id) = match r {
            ResourceRef::Group(id) => ("group", id),
            ResourceRef::Project(id) => ("project", id),
        };
        Self { kind, id, path }
    }

    pub fn reference(&self) -> ResourceRef {
        if self.kind == "group" {
            ResourceRef::Group(self.id)
        } else {
            ResourceRef::Project(self.id)
        }
    }

    /// `group:acme/platform`, or `group:42` without a path.
    pub fn selector(&self) -> String {
        match &self.path {
            Some(p) => format!("{}:{p}", self.kind),
            None => format!("{}:{}", self.kind, self.id),
        }
    }
}

/// GitLab's name of an access level.
pub fn role(level: u16) -> &'static str {
    match level {
        0 => "no access",
        5 => "minimal access",
        10 => "guest",
        15 => "planner",
        20 => "reporter",
        30 => "developer",
        40 => "maintainer",
        50 => "owner",
        _ => "custom",
    }
}

/// The user columns every access row carries.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct UserInfo {
    pub username: Option<String>,
    pub name: Option<String>,
    pub user_state: Option<String>,
    pub user_kind: Option<String>,
    pub is_admin: Option<bool>,
    pub two_factor_enabled: Option<bool>,
    pub last_activity_on: Option<NaiveDate>,
    pub last_sign_in_at: Option<DateTime<Utc>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_parse_and_refuse_clearly() {
        assert_eq!(
            ResourceSel::parse("group:acme/platform").unwrap(),
            ResourceSel::Group(Ident::Path("acme/platform".into()))
        );
        assert_eq!(
            ResourceSel::parse("project:42").unwrap(),
            ResourceSel::Project(Ident::Id(42))
        );
        for bad in ["acme", "team:acme", "group:", "group:\u{7}x"] {
            let e = ResourceSel::parse(bad).unwrap_err().to_string();
            assert!(e.contains("group:PATH"), "{bad}: {e}");
        }
        assert_eq!(UserSel::parse("id:7").unwrap(), UserSel::Id(7));
        assert_eq!(
            UserSel::parse("@alice").unwrap(),
            UserSel::Username("alice".into())
        );
        assert!(UserSel::parse("id:x").is_err());
        assert!(UserSel::parse("").is_err());
    }
}
