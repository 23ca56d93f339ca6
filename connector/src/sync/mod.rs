//! The full sync: read everything that decides access in a scope, compute effective access, and
//! write the snapshot.
//!
//! Fetch plan (every list read once, no `GET /users/:id` fan-out, no `members/all`):
//! 1. `GET /user` (who the token is, admin or not);
//! 2. the scope: `GET /groups/:id`, `…/descendant_groups`, `…/projects?include_subgroups=true`
//!    (project lists carry their shares); for `instance`: `GET /groups?top_level_only`, their
//!    descendants and `GET /projects` (keyset);
//! 3. per group: `GET /groups/:id` (group shares are only in the detail entity), members,
//!    invitations; per project: members, invitations — concurrently, bounded;
//! 4. groups outside the scope that are shared into it, and the scope's ancestors, with their
//!    members (their members reach into the scope);
//! 5. users: admin `GET /users` (keyset) on self-managed; otherwise the member records plus
//!    `billable_members` and `enterprise_users` where the token may read them;
//! 6. custom roles and SAML group links where visible.
//!
//! A list that cannot be read after the client's retries is recorded and makes the snapshot
//! partial; an authentication failure stops the sync.

pub(crate) mod convert;
mod crawl;
mod users;
mod write;

use std::collections::BTreeMap;

use chrono::NaiveDate;
use serde::Serialize;
use tokio::sync::watch;

pub use crawl::crawl;
pub use write::{SnapshotMeta, run, write_snapshot};

use crate::client::IdOrPath;
use crate::error::Error;
use crate::model::{
    DirectMember, GroupRecord, InvitationRecord, ProjectRecord, ReadFailure, ResourceRef,
    RoleRecord, SamlGroupLinkRecord, ShareRecord, UserRecord,
};

/// What to sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// A group (normally top-level) and everything below it.
    Group(IdOrPath),
    /// The whole instance (self-managed, admin token).
    Instance,
}

impl Scope {
    pub fn parse(s: &str) -> Result<Self, String> {
        let t = s.trim().trim_matches('/');
        if t.is_empty() {
            return Err("the scope is empty; set GITLAB_SCOPE to a top-level group path or id, or `instance`".into());
        }
        if t.eq_ignore_ascii_case("instance") {
            return Ok(Scope::Instance);
        }
        Ok(Scope::Group(IdOrPath::parse(t)))
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::Group(g) => write!(f, "{g}"),
            Scope::Instance => f.write_str("instance"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct SyncOptions {
    pub scope: Scope,
    /// Requests in flight at once; enough to keep the rate limiter saturated.
    pub concurrency: usize,
    /// Read pending invitations (one list per group and project).
    pub include_invitations: bool,
    /// Receives progress while the crawl runs.
    pub progress: Option<watch::Sender<Progress>>,
}

impl SyncOptions {
    pub fn new(scope: Scope) -> Self {
        Self {
            scope,
            concurrency: 16,
            include_invitations: true,
            progress: None,
        }
    }
}

/// Where a running sync is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Progress {
    pub phase: String,
    /// Lists (and detail reads) finished.
    pub lists_done: u64,
    /// Lists known so far; grows while the tree is discovered.
    pub lists_known: u64,
    pub requests: u64,
    pub records: u64,
}

/// Why a sync produced no snapshot at all.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("cannot read the scope `{scope}`: {source}")]
    Scope {
        scope: String,
        #[source]
        source: Error,
    },
    #[error("the sync stopped because GitLab rejected the token: {0}")]
    Auth(#[source] Error),
    #[error(
        "scope `instance` needs an administrator token on self-managed GitLab; set GITLAB_SCOPE to a top-level group instead"
    )]
    InstanceNeedsAdmin,
    #[error("could not write the snapshot: {0}")]
    Write(#[from] std::io::Error),
}

/// Everything read, in compact normalized form.
#[derive(Debug, Clone, Default)]
pub struct Inventory {
    pub as_of: NaiveDate,
    pub connector_user_id: u64,
    pub users: BTreeMap<u64, UserRecord>,
    pub groups: BTreeMap<u64, GroupRecord>,
    pub projects: BTreeMap<u64, ProjectRecord>,
    /// Direct memberships by resource, sorted by user.
    pub members: BTreeMap<ResourceRef, Vec<DirectMember>>,
    pub shares: BTreeMap<ResourceRef, Vec<ShareRecord>>,
    pub invitations: BTreeMap<ResourceRef, Vec<InvitationRecord>>,
    pub roles: Vec<RoleRecord>,
    pub saml_links: Vec<SamlGroupLinkRecord>,
    pub errors: Vec<ReadFailure>,
    pub warnings: Vec<String>,
}

impl Inventory {
    pub fn is_complete(&self) -> bool {
        self.errors.is_empty()
    }
}
