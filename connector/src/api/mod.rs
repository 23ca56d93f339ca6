//! Typed GitLab endpoints: request and response structs, one module per resource.
//! Unknown JSON fields are ignored; fields GitLab documents as sometimes absent are `Option`.

pub mod audit;
pub mod common;
pub mod groups;
pub mod hooks;
pub mod invitations;
pub mod members;
pub mod projects;
pub mod tokens;
pub mod users;

pub use audit::AuditEvent;
pub use common::{AccessLevel, UserSummary};
pub use groups::{BillableMember, Group, MemberRole, SamlGroupLink, SharedWithGroup};
pub use hooks::Hook;
pub use invitations::{CreateInvitation, Invitation, InvitationAccepted};
pub use members::{
    AddMember, EditMember, IdRef, Member, MemberRoleRef, MemberRow, RemoveMember, Source,
};
pub use projects::{Project, ProjectNamespace, ProjectsQuery};
pub use tokens::{Capability, PersonalAccessToken, RotatedToken, TokenCheck, TokenProblem};
pub use users::{CreateUser, User, UserAction, UsersQuery};
