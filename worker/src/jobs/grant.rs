//! `grant`: give a user a level on a group or project, permanently or until a precise expiry
//! (JIT). The grant is recorded before anything is written (`pending`: the state before, the
//! state intended, the precise expiry), so whatever a crash interrupts, the redelivery
//! completes it, or undoes it when its expiry has passed, and without a redelivery the JIT
//! scheduler undoes it at the expiry. The record also serves `revoke` by grant id.

use chrono::{DateTime, Duration as ChronoDuration, NaiveDate, NaiveTime, Utc};
use gitlab_connector::InstanceKind;
use gitlab_connector::api::{AccessLevel, AddMember, CreateUser, EditMember};
use gitlab_connector::provision::{
    self, AccessView, MemberState, ProvisionError, Target, TargetRef, UserRef,
};
use serde_json::json;

use super::audit::AuditedError;
use super::codes::Code;
use super::context::JobContext;
use super::fields::{self, Fail, Fields};
use super::outcome::{Done, JobFailure};
use super::result::{Change, to_value};
use super::undo::{CLAIM_LEASE, expire_grant};
use super::{guard, invite};
use crate::store::{GrantRecord, GrantState};

/// Longest JIT duration the envelope accepts.
pub const MAX_DURATION_SECONDS: u64 = 400 * 86_400;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrantExpiry {
    /// Seconds from when the grant takes effect.
    Duration(u64),
    At(DateTime<Utc>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Params {
    pub user: UserRef,
    pub target: TargetRef,
    pub access_level: AccessLevel,
    /// `None`: a permanent grant.
    pub expiry: Option<GrantExpiry>,
    pub member_role_id: Option<u64>,
}

impl Params {
    pub fn parse(p: &Fields, _now: DateTime<Utc>) -> Result<Self, Fail> {
        fields::only_keys(
            p,
            &[
                "user",
                "target",
                "access_level",
                "duration_seconds",
                "expires_at",
                "member_role_id",
            ],
            "`params` of a grant job",
        )?;
        let expiry = match (p.get("duration_seconds"), p.get("expires_at")) {
            (Some(_), Some(_)) => {
                return Err("give either `duration_seconds` or `expires_at`, not both".into());
            }
            (Some(d), None) => {
                let secs = fields::positive(d, "duration_seconds")?;
                if secs > MAX_DURATION_SECONDS {
                    return Err("`duration_seconds` is more than 400 days; use a permanent grant (no expiry) or a shorter duration".into());
                }
                Some(GrantExpiry::Duration(secs))
            }
            // Whether it is still ahead is decided when the job runs: a redelivery of a grant
            // written before its expiry must be able to undo it.
            (None, Some(e)) => Some(GrantExpiry::At(fields::instant(e, "expires_at")?)),
            (None, None) => None,
        };
        Ok(Self {
            user: fields::user(p.get("user"), "user")?,
            target: fields::target(p.get("target"))?,
            access_level: fields::access_level(p.get("access_level"))?,
            expiry,
            member_role_id: p
                .get("member_role_id")
                .map(|v| fields::positive(v, "member_role_id"))
                .transpose()?,
        })
    }
}

// Planning: what the grant sets, decided from what is there. Plain functions, unit-tested.

/// The precise instant a JIT grant ends.
pub fn precise_expiry(expiry: &GrantExpiry, started_at: DateTime<Utc>) -> DateTime<Utc> {
    match expiry {
        GrantExpiry::Duration(s) => {
            started_at + ChronoDuration::seconds(i64::try_from(*s).unwrap_or(i64::MAX / 1000))
        }
        GrantExpiry::At(t) => *t,
    }
}

/// GitLab's `expires_at` for a precise expiry: the date on or after it (GitLab removes a
/// membership during the day its date names), so GitLab's own expiry never ends it early.
pub fn gitlab_date(precise: DateTime<Utc>) -> NaiveDate {
    let d = precise.date_naive();
    if precise.time() == NaiveTime::MIN {
        d
    } else {
        d + ChronoDuration::days(1)
    }
}

/// The later of two membership expiries; no expiry (never) is the latest.
pub fn later_expiry(a: Option<NaiveDate>, b: Option<NaiveDate>) -> Option<NaiveDate> {
    match (a, b) {
        (None, _) | (_, None) => None,
        (Some(a), Some(b)) => Some(a.max(b)),
    }
}

/// The membership the grant sets: on an existing one, never lower its level, never shorten its
/// expiry, keep its custom role unless the job names one.
pub fn intended_state(
    prior: Option<&MemberState>,
    level: AccessLevel,
    expires_at: Option<NaiveDate>,
    member_role_id: Option<u64>,
) -> MemberState {
    match prior {
        Some(p) => MemberState {
            access_level: level.0.max(p.access_level),
            expires_at: later_expiry(p.expires_at, expires_at),
            member_role_id: member_role_id.or(p.member_role_id),
        },
        None => MemberState {
            access_level: level.0,
            expires_at,
            member_role_id,
        },
    }
}

pub async fn execute(ctx: &mut JobContext<'_>, params: &Params) -> Result<Done, JobFailure> {
    if let Some(why) = ctx.connector.read_only_reason() {
        return Err(JobFailure::failed(Code::Forbidden, why));
    }
    let connector = ctx.connector.clone();
    let client = &connector.client;
    // An earlier delivery wrote the grant ahead: it is completed (or, its expiry passed,
    // undone) from that record, never decided again from the job's parameters. A first
    // delivery has no earlier one to look for (and finds out at the write-ahead below if a
    // record outlived its job's row).
    if !ctx.job.dry_run
        && ctx.job.attempt > 1
        && let Some(ahead) = ctx.store.grant(ctx.job.job_id.as_str()).await?
    {
        return resume(ctx, ahead).await;
    }
    let precise = params
        .expiry
        .as_ref()
        .map(|e| precise_expiry(e, ctx.job.started_at));
    if let Some(p) = precise
        && p <= ctx.clock.now()
    {
        return Err(JobFailure::rejected(
            Code::InvalidJob,
            format!("`expires_at` {} is in the past", p.to_rfc3339()),
        ));
    }
    let lasts = precise.map(|p| (p - ctx.clock.now()).num_seconds());
    check_policy(&connector.settings.policy, params.access_level, lasts)?;
    let target = provision::resolve_target(client, &params.target).await?;
    guard::target_in_scope(&connector, &target).await?;
    let user = match provision::resolve_user(client, &params.user).await {
        Ok(u) => u,
        Err(ProvisionError::UserNotFound(_)) if matches!(params.user, UserRef::Email(_)) => {
            let UserRef::Email(email) = &params.user else {
                return Err(JobFailure::failed(
                    Code::Internal,
                    "an email user was expected",
                ));
            };
            return to_unknown_email(ctx, &target, email, params.access_level).await;
        }
        Err(e) => return Err(e.into()),
    };
    let gl_date = precise.map(gitlab_date);
    if let Some(p) = precise {
        ctx.report.grant = Some(json!({"expires_at": p, "gitlab_expires_at": gl_date}));
    }
    let view = provision::access_on(client, &target, user.id).await?;
    // SAML group links may rewrite the membership at the user's next sign-in.
    if let Some(top) = target.top_level_group()
        && let Some(links) = connector.saml_link_count(&top).await
        && links > 0
    {
        ctx.report.warnings.push(format!(
            "the top-level group has {links} SAML group link(s): a SAML sign-in may change this membership"
        ));
    }
    if view.effective_level >= params.access_level.0 && params.member_role_id.is_none() {
        ctx.report
            .warnings
            .push(already_has(&view, params.access_level));
        ctx.report.residual_access = Some(to_value(&view.paths));
        return Ok(Done::Noop);
    }
    let record = GrantRecord {
        job_id: ctx.job.job_id.to_string(),
        connector: ctx.job.connector.to_string(),
        target_kind: target.kind,
        target_id: target.id,
        target_path: target.full_path.clone(),
        user_id: user.id,
        created: view.direct.is_none(),
        prior: view.direct.clone(),
        applied: intended_state(
            view.direct.as_ref(),
            params.access_level,
            gl_date,
            params.member_role_id,
        ),
        expires_at: precise,
        state: GrantState::Pending,
        ended_at: None,
        note: None,
        undo_attempts: 0,
        held_slot: None,
    };
    if ctx.job.dry_run {
        ctx.report.changes.push(change_of(&record));
        return Ok(Done::Succeeded);
    }
    // Written ahead: from here a crash leaves a record that the redelivery completes, or that
    // the scheduler undoes at the expiry when no delivery comes back.
    if !ctx.store.record_grant(record.clone()).await?
        && let Some(ahead) = ctx.store.grant(ctx.job.job_id.as_str()).await?
    {
        return resume(ctx, ahead).await;
    }
    complete(ctx, &record, view.direct.as_ref()).await
}

/// The grant's change as results and the audit log name it.
fn change_of(g: &GrantRecord) -> Change {
    Change {
        action: if g.created {
            "add_member"
        } else {
            "update_member"
        }
        .into(),
        target: g.target().reference(),
        user_id: Some(g.user_id),
        email: None,
        before: g.prior.as_ref().map(to_value),
        after: Some(to_value(&g.applied)),
        note: None,
    }
}

/// Makes the membership what the written-ahead grant says (unless it is already), then marks
/// the grant active. A write GitLab refused ends the grant: nothing of it is in GitLab.
async fn complete(
    ctx: &mut JobContext<'_>,
    g: &GrantRecord,
    current: Option<&MemberState>,
) -> Result<Done, JobFailure> {
    let change = change_of(g);
    if current != Some(&g.applied) {
        let connector = ctx.connector.clone();
        let written = write_membership(
            ctx,
            &connector.client,
            &g.target(),
            g.user_id,
            current.is_none(),
            &g.applied,
            &change,
        )
        .await;
        if let Err(e) = written {
            let failure = JobFailure::from(e);
            if failure.status != crate::jobs::JobStatus::Failed || failure.hand_back {
                return Err(failure);
            }
            let note = format!("not written: {}", failure.error().message);
            ctx.store
                .end_grant(&g.job_id, GrantState::Ended, Some(note))
                .await?;
            return Err(failure);
        }
    }
    // Active from the commit of the job's result, in the same statement.
    ctx.settlement().grant_active = true;
    ctx.report.changes.push(change);
    Ok(Done::Succeeded)
}

/// A redelivery of a grant an earlier delivery wrote ahead.
async fn resume(ctx: &mut JobContext<'_>, g: GrantRecord) -> Result<Done, JobFailure> {
    if let Some(p) = g.expires_at {
        ctx.report.grant = Some(json!({"expires_at": p, "gitlab_expires_at": gitlab_date(p)}));
    }
    let expired = g.expires_at.is_some_and(|e| e <= ctx.clock.now());
    match g.state {
        GrantState::Pending | GrantState::Active if expired => undo_expired(ctx, g).await,
        GrantState::Pending => {
            let connector = ctx.connector.clone();
            let current = connector
                .client
                .direct_member(&g.target().source(), g.user_id)
                .await?
                .map(|m| MemberState::of(&m));
            complete(ctx, &g, current.as_ref()).await
        }
        GrantState::Active => {
            ctx.report.changes.push(change_of(&g));
            Ok(Done::Succeeded)
        }
        GrantState::Ending | GrantState::Ended | GrantState::Conflict => {
            ctx.report.changes.push(change_of(&g));
            ctx.report.warnings.push(format!(
                "the grant is {} already{}",
                if g.state == GrantState::Ending {
                    "being undone"
                } else {
                    "over"
                },
                g.note
                    .as_deref()
                    .map(|n| format!(": {n}"))
                    .unwrap_or_default()
            ));
            Ok(Done::Succeeded)
        }
    }
}

/// The grant's expiry passed before this delivery: what an earlier delivery wrote is undone
/// now (with its `jit_expiry` event), instead of rejecting the job and leaving it in GitLab.
async fn undo_expired(ctx: &mut JobContext<'_>, g: GrantRecord) -> Result<Done, JobFailure> {
    ctx.report.changes.push(change_of(&g));
    if !ctx
        .store
        .claim_grant(&g.job_id, ctx.clock.now(), CLAIM_LEASE, true)
        .await?
    {
        ctx.report.warnings.push(
            "the grant's expiry passed before this delivery; the JIT scheduler is undoing it"
                .into(),
        );
        return Ok(Done::Succeeded);
    }
    let connector = ctx.connector.clone();
    let why = "JIT grant expired before its job finished";
    match expire_grant(ctx.store, ctx.subjects, ctx.publish, &connector, &g, why).await {
        Ok(done) => {
            ctx.report.changes.extend(done.changes);
            ctx.report.warnings.push(match done.conflict {
                Some(c) => format!("the grant's expiry passed before this delivery: {c}"),
                None => "the grant's expiry passed before this delivery: what an earlier delivery wrote is undone".into(),
            });
            Ok(Done::Succeeded)
        }
        Err(e) => {
            // The claim lapses; the scheduler (or the next delivery) takes the undo over.
            Err(JobFailure::transient(
                Code::GitlabError,
                format!("the grant expired and could not be undone yet: {e}"),
            ))
        }
    }
}

/// The warning of a grant that is already in effect, naming the paths that give it.
fn already_has(view: &AccessView, level: AccessLevel) -> String {
    format!(
        "already has {} (≥ {}) through: {}",
        view.effective_level,
        level.0,
        view.paths
            .iter()
            .map(|p| match &p.group_path {
                Some(g) => format!("{} from {g}", p.via),
                None => p.via.to_string(),
            })
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// Sets the intended membership (a new member, or the full intended state of an existing
/// one), audited ahead.
async fn write_membership(
    ctx: &JobContext<'_>,
    client: &gitlab_connector::Client,
    target: &Target,
    user_id: u64,
    create: bool,
    intended: &MemberState,
    change: &Change,
) -> Result<(), AuditedError> {
    let source = target.source();
    let audit = ctx.audit();
    if create {
        let add = AddMember {
            user_id,
            access_level: intended.level(),
            expires_at: intended.expires_at,
            member_role_id: intended.member_role_id,
        };
        audit
            .write(change, client.add_member(&source, &add))
            .await
            .map(|_| ())
    } else {
        let edit = EditMember {
            access_level: intended.level(),
            expires_at: intended.expires_at,
            member_role_id: intended.member_role_id,
        };
        audit
            .write(change, client.edit_member(&source, user_id, &edit))
            .await
            .map(|_| ())
    }
}

/// The policy's static rules for a grant: its level, and how long it lasts (`None`: forever).
fn check_policy(
    policy: &crate::policy::Policy,
    level: AccessLevel,
    lasts_seconds: Option<i64>,
) -> Result<(), JobFailure> {
    policy.check_level(level).map_err(guard::denied)?;
    policy.check_expiry(lasts_seconds).map_err(guard::denied)
}

/// A username for a new account from an email's local part.
fn username_for(email: &str) -> String {
    email
        .split('@')
        .next()
        .unwrap_or("user")
        .chars()
        .map(|ch| {
            if ch.is_ascii_alphanumeric() || ch == '_' || ch == '-' || ch == '.' {
                ch
            } else {
                '_'
            }
        })
        .collect()
}

/// A grant to an email no user has: self-managed with an admin token may create the user when
/// the connector allows it; otherwise the email is invited.
async fn to_unknown_email(
    ctx: &mut JobContext<'_>,
    target: &Target,
    email: &str,
    level: AccessLevel,
) -> Result<Done, JobFailure> {
    let connector = ctx.connector.clone();
    let client = &connector.client;
    let admin = client
        .current_user()
        .await
        .ok()
        .and_then(|u| u.is_admin)
        .unwrap_or(false);
    let may_create = connector.settings.allow_create_users;
    if !(may_create && admin && client.instance() == InstanceKind::SelfManaged) {
        ctx.report.warnings.push(format!(
            "no GitLab user has the email {email}: an invitation is sent instead{}",
            if may_create {
                " (creating users needs self-managed GitLab and an administrator token)"
            } else {
                ""
            }
        ));
        return invite::send(ctx, target, email, level, None).await;
    }
    let username = username_for(email);
    let mut create_change = Change {
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
    if ctx.job.dry_run {
        ctx.report.changes.push(create_change);
        ctx.report.changes.push(Change {
            action: "add_member".into(),
            target: target.reference(),
            user_id: None,
            email: Some(email.into()),
            before: None,
            after: Some(json!({"access_level": level.0})),
            note: None,
        });
        return Ok(Done::Succeeded);
    }
    let new_user = CreateUser {
        email: email.to_string(),
        username: username.clone(),
        name: username,
        skip_confirmation: true,
        external: false,
    };
    let user = ctx
        .audit()
        .write(&create_change, client.create_user(&new_user))
        .await?;
    create_change.user_id = Some(user.id);
    ctx.report.changes.push(create_change);
    let member_change = Change {
        action: "add_member".into(),
        target: target.reference(),
        user_id: Some(user.id),
        email: None,
        before: None,
        after: Some(json!({"access_level": level.0, "expires_at": null, "member_role_id": null})),
        note: None,
    };
    let add = AddMember {
        user_id: user.id,
        access_level: level,
        expires_at: None,
        member_role_id: None,
    };
    ctx.audit()
        .write(&member_change, client.add_member(&target.source(), &add))
        .await?;
    ctx.report.changes.push(member_change);
    Ok(Done::Succeeded)
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn date(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).unwrap()
    }

    #[test]
    fn gitlab_dates_never_end_a_grant_early() {
        let midnight = Utc.with_ymd_and_hms(2026, 11, 23, 0, 0, 0).unwrap();
        assert_eq!(gitlab_date(midnight), date(2026, 11, 23));
        let evening = Utc.with_ymd_and_hms(2026, 11, 23, 18, 0, 1).unwrap();
        assert_eq!(gitlab_date(evening), date(2026, 11, 24));
    }

    #[test]
    fn no_expiry_is_the_latest() {
        assert_eq!(later_expiry(None, Some(date(2026, 1, 1))), None);
        assert_eq!(later_expiry(Some(date(2026, 1, 1)), None), None);
        assert_eq!(
            later_expiry(Some(date(2026, 1, 1)), Some(date(2026, 2, 1))),
            Some(date(2026, 2, 1))
        );
    }

    #[test]
    fn an_existing_membership_is_raised_never_lowered_or_shortened() {
        let prior = MemberState {
            access_level: 40,
            expires_at: Some(date(2027, 1, 1)),
            member_role_id: Some(9),
        };
        let s = intended_state(Some(&prior), AccessLevel(30), Some(date(2026, 12, 1)), None);
        assert_eq!(s, prior, "a lower, shorter grant changes nothing");
        let s = intended_state(Some(&prior), AccessLevel(50), None, Some(3));
        assert_eq!(
            s,
            MemberState {
                access_level: 50,
                expires_at: None,
                member_role_id: Some(3)
            }
        );
        let new = intended_state(None, AccessLevel(30), Some(date(2026, 12, 1)), None);
        assert_eq!(new.access_level, 30);
        assert_eq!(new.expires_at, Some(date(2026, 12, 1)));
    }

    #[test]
    fn durations_count_from_the_start_and_cannot_overflow() {
        let t = Utc.with_ymd_and_hms(2026, 11, 22, 10, 0, 0).unwrap();
        assert_eq!(
            precise_expiry(&GrantExpiry::Duration(3600), t),
            Utc.with_ymd_and_hms(2026, 11, 22, 11, 0, 0).unwrap()
        );
        let at = Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap();
        assert_eq!(precise_expiry(&GrantExpiry::At(at), t), at);
    }

    #[test]
    fn usernames_from_emails_keep_safe_characters_only() {
        assert_eq!(username_for("j.doe+x@example.com"), "j.doe_x");
    }
}
