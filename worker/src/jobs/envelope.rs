//! Parsing and validating the job envelope. Anything malformed or unknown is rejected with a
//! message that names the field and says what is expected: a typo must never execute (an
//! unknown `dryrun` field silently ignored would turn a dry run into a real grant).

use chrono::{DateTime, NaiveDate, Utc};
use gitlab_connector::api::AccessLevel;
use gitlab_connector::client::IdOrPath;
use serde::Serialize;
use serde_json::{Map, Value};

pub const JOB_SCHEMA: &str = "gitlab-connector.job.v1";
const MAX_TEXT: usize = 2000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    Sync,
    Grant,
    Revoke,
    Invite,
    Deprovision,
    RotateToken,
}

impl JobKind {
    pub const ALL: [JobKind; 6] = [
        JobKind::Sync,
        JobKind::Grant,
        JobKind::Revoke,
        JobKind::Invite,
        JobKind::Deprovision,
        JobKind::RotateToken,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Sync => "sync",
            JobKind::Grant => "grant",
            JobKind::Revoke => "revoke",
            JobKind::Invite => "invite",
            JobKind::Deprovision => "deprovision",
            JobKind::RotateToken => "rotate_token",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// `U` of interface.md: exactly one of `id`, `username`, `email`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UserSelector {
    Id(u64),
    Username(String),
    Email(String),
}

/// `T` of interface.md: a group or a project, by full path or id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetSelector {
    Group(IdOrPath),
    Project(IdOrPath),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrantExpiry {
    /// Seconds from when the grant takes effect.
    Duration(u64),
    At(DateTime<Utc>),
}

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
    const ALL: [(&'static str, DeprovisionAction); 7] = [
        ("remove_memberships", DeprovisionAction::RemoveMemberships),
        ("cancel_invitations", DeprovisionAction::CancelInvitations),
        ("block", DeprovisionAction::Block),
        ("deactivate", DeprovisionAction::Deactivate),
        ("ban", DeprovisionAction::Ban),
        ("delete", DeprovisionAction::Delete),
        ("revoke_tokens", DeprovisionAction::RevokeTokens),
    ];
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobParams {
    Sync {
        scope: Option<String>,
    },
    Grant {
        user: UserSelector,
        target: TargetSelector,
        access_level: AccessLevel,
        expiry: Option<GrantExpiry>,
        member_role_id: Option<u64>,
    },
    /// Remove a membership, or end the JIT grant made by `grant_job_id` early.
    Revoke {
        user: Option<UserSelector>,
        target: Option<TargetSelector>,
        grant_job_id: Option<String>,
    },
    Invite {
        email: String,
        target: TargetSelector,
        access_level: AccessLevel,
        expires_at: Option<NaiveDate>,
    },
    Deprovision {
        user: UserSelector,
        actions: Vec<DeprovisionAction>,
    },
    RotateToken {
        min_days_left: Option<u32>,
    },
}

impl JobParams {
    pub fn kind(&self) -> JobKind {
        match self {
            JobParams::Sync { .. } => JobKind::Sync,
            JobParams::Grant { .. } => JobKind::Grant,
            JobParams::Revoke { .. } => JobKind::Revoke,
            JobParams::Invite { .. } => JobKind::Invite,
            JobParams::Deprovision { .. } => JobKind::Deprovision,
            JobParams::RotateToken { .. } => JobKind::RotateToken,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub job_id: String,
    pub connector: String,
    pub dry_run: bool,
    pub requested_by: Option<String>,
    pub reason: Option<String>,
    pub params: JobParams,
}

impl Job {
    pub fn kind(&self) -> JobKind {
        self.params.kind()
    }
}

/// Why a job was rejected, with what could be read of it (to address the result and DLQ copy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub job_id: Option<String>,
    pub connector: Option<String>,
    pub kind: Option<JobKind>,
    pub message: String,
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

type Fail = String;

fn describe(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn only_keys(obj: &Map<String, Value>, allowed: &[&str], what: &str) -> Result<(), Fail> {
    for k in obj.keys() {
        if !allowed.contains(&k.as_str()) {
            return Err(format!(
                "unknown field `{k}` in {what}; allowed: {}",
                allowed.join(", ")
            ));
        }
    }
    Ok(())
}

fn text(v: &Value, field: &str) -> Result<String, Fail> {
    match v {
        Value::String(s) if s.trim().is_empty() => Err(format!("`{field}` is empty")),
        Value::String(s) if s.len() > MAX_TEXT => {
            Err(format!("`{field}` is longer than {MAX_TEXT} characters"))
        }
        Value::String(s) => Ok(s.clone()),
        other => Err(format!(
            "`{field}` must be a string, not {}",
            describe(other)
        )),
    }
}

fn positive(v: &Value, field: &str) -> Result<u64, Fail> {
    match v.as_u64() {
        Some(n) if n > 0 => Ok(n),
        _ => Err(format!(
            "`{field}` must be a positive whole number, not {v}"
        )),
    }
}

fn user(v: Option<&Value>, field: &str) -> Result<UserSelector, Fail> {
    let Some(v) = v else {
        return Err(format!(
            "`{field}` is missing: give {{\"id\": N}}, {{\"username\": \"…\"}} or {{\"email\": \"…\"}}"
        ));
    };
    let Value::Object(o) = v else {
        return Err(format!(
            "`{field}` must be an object such as {{\"username\": \"jdoe\"}}, not {}",
            describe(v)
        ));
    };
    only_keys(o, &["id", "username", "email"], &format!("`{field}`"))?;
    if o.len() != 1 {
        return Err(format!(
            "`{field}` must have exactly one of `id`, `username`, `email`"
        ));
    }
    let (k, val) = o.iter().next().expect("one key");
    match k.as_str() {
        "id" => Ok(UserSelector::Id(positive(val, &format!("{field}.id"))?)),
        "username" => Ok(UserSelector::Username(text(
            val,
            &format!("{field}.username"),
        )?)),
        _ => {
            let e = text(val, &format!("{field}.email"))?;
            check_email(&e, &format!("{field}.email"))?;
            Ok(UserSelector::Email(e))
        }
    }
}

fn check_email(e: &str, field: &str) -> Result<(), Fail> {
    let mut parts = e.split('@');
    let ok = matches!((parts.next(), parts.next(), parts.next()), (Some(l), Some(d), None) if !l.is_empty() && d.contains('.') && !d.starts_with('.') && !d.ends_with('.'))
        && !e.contains(char::is_whitespace);
    if ok {
        Ok(())
    } else {
        Err(format!("`{field}` {e:?} is not an email address"))
    }
}

fn target(v: Option<&Value>) -> Result<TargetSelector, Fail> {
    let Some(v) = v else {
        return Err("`target` is missing: give {\"group\": \"path or id\"} or {\"project\": \"path or id\"}".into());
    };
    let Value::Object(o) = v else {
        return Err(format!(
            "`target` must be an object such as {{\"group\": \"acme/platform\"}}, not {}",
            describe(v)
        ));
    };
    only_keys(o, &["group", "project"], "`target`")?;
    if o.len() != 1 {
        return Err("`target` must have exactly one of `group`, `project`".into());
    }
    let (k, val) = o.iter().next().expect("one key");
    let r = match val {
        Value::Number(_) => IdOrPath::Id(positive(val, &format!("target.{k}"))?),
        Value::String(_) => IdOrPath::parse(&text(val, &format!("target.{k}"))?),
        other => {
            return Err(format!(
                "`target.{k}` must be a full path or an id, not {}",
                describe(other)
            ));
        }
    };
    Ok(if k == "group" {
        TargetSelector::Group(r)
    } else {
        TargetSelector::Project(r)
    })
}

fn access_level(v: Option<&Value>) -> Result<AccessLevel, Fail> {
    let Some(v) = v else {
        return Err("`access_level` is missing: a number (10 guest … 50 owner) or a name such as \"developer\"".into());
    };
    let level = match v {
        Value::Number(_) => v
            .as_u64()
            .and_then(|n| u16::try_from(n).ok())
            .map(AccessLevel)
            .ok_or_else(|| format!("`access_level` {v} is not a level"))?,
        Value::String(s) => s
            .parse::<AccessLevel>()
            .map_err(|e| format!("`access_level`: {e}"))?,
        other => {
            return Err(format!(
                "`access_level` must be a number or a name, not {}",
                describe(other)
            ));
        }
    };
    if ![5, 10, 15, 20, 25, 30, 40, 50].contains(&level.0) {
        return Err(format!(
            "`access_level` {} cannot be granted; use 5 (minimal_access), 10 (guest), 15 (planner), 20 (reporter), 25 (security_manager), 30 (developer), 40 (maintainer) or 50 (owner)",
            level.0
        ));
    }
    Ok(level)
}

fn date(v: &Value, field: &str, now: DateTime<Utc>) -> Result<NaiveDate, Fail> {
    let s = text(v, field)?;
    let d = NaiveDate::parse_from_str(&s, "%Y-%m-%d")
        .map_err(|_| format!("`{field}` {s:?} is not a date (YYYY-MM-DD)"))?;
    if d < now.date_naive() {
        return Err(format!("`{field}` {s} is in the past"));
    }
    Ok(d)
}

fn params_for(
    kind: JobKind,
    p: &Map<String, Value>,
    now: DateTime<Utc>,
) -> Result<JobParams, Fail> {
    let what = format!("`params` of a {} job", kind.as_str());
    match kind {
        JobKind::Sync => {
            only_keys(p, &["scope"], &what)?;
            Ok(JobParams::Sync {
                scope: p.get("scope").map(|v| text(v, "scope")).transpose()?,
            })
        }
        JobKind::Grant => {
            only_keys(
                p,
                &[
                    "user",
                    "target",
                    "access_level",
                    "duration_seconds",
                    "expires_at",
                    "member_role_id",
                ],
                &what,
            )?;
            let expiry = match (p.get("duration_seconds"), p.get("expires_at")) {
                (Some(_), Some(_)) => {
                    return Err("give either `duration_seconds` or `expires_at`, not both".into());
                }
                (Some(d), None) => {
                    let secs = positive(d, "duration_seconds")?;
                    if secs > 400 * 86_400 {
                        return Err("`duration_seconds` is more than 400 days; use a permanent grant (no expiry) or a shorter duration".into());
                    }
                    Some(GrantExpiry::Duration(secs))
                }
                (None, Some(e)) => {
                    let s = text(e, "expires_at")?;
                    let t = DateTime::parse_from_rfc3339(&s)
                        .map_err(|_| format!("`expires_at` {s:?} is not an RFC 3339 timestamp such as 2026-11-23T18:00:00Z"))?
                        .with_timezone(&Utc);
                    if t <= now {
                        return Err(format!("`expires_at` {s} is in the past"));
                    }
                    Some(GrantExpiry::At(t))
                }
                (None, None) => None,
            };
            Ok(JobParams::Grant {
                user: user(p.get("user"), "user")?,
                target: target(p.get("target"))?,
                access_level: access_level(p.get("access_level"))?,
                expiry,
                member_role_id: p
                    .get("member_role_id")
                    .map(|v| positive(v, "member_role_id"))
                    .transpose()?,
            })
        }
        JobKind::Revoke => {
            only_keys(p, &["user", "target", "grant_job_id"], &what)?;
            match p.get("grant_job_id") {
                Some(g) => {
                    if p.contains_key("user") || p.contains_key("target") {
                        return Err(
                            "give either `grant_job_id` or `user` and `target`, not both".into(),
                        );
                    }
                    Ok(JobParams::Revoke {
                        user: None,
                        target: None,
                        grant_job_id: Some(text(g, "grant_job_id")?),
                    })
                }
                None => Ok(JobParams::Revoke {
                    user: Some(user(p.get("user"), "user")?),
                    target: Some(target(p.get("target"))?),
                    grant_job_id: None,
                }),
            }
        }
        JobKind::Invite => {
            only_keys(p, &["email", "target", "access_level", "expires_at"], &what)?;
            let email = text(
                p.get("email")
                    .ok_or("`email` is missing: the address to invite")?,
                "email",
            )?;
            check_email(&email, "email")?;
            Ok(JobParams::Invite {
                email,
                target: target(p.get("target"))?,
                access_level: access_level(p.get("access_level"))?,
                expires_at: p
                    .get("expires_at")
                    .map(|v| date(v, "expires_at", now))
                    .transpose()?,
            })
        }
        JobKind::Deprovision => {
            only_keys(p, &["user", "actions"], &what)?;
            let actions = match p.get("actions") {
                None => vec![
                    DeprovisionAction::RemoveMemberships,
                    DeprovisionAction::CancelInvitations,
                ],
                Some(Value::Array(a)) => {
                    if a.is_empty() {
                        return Err("`actions` is empty; leave it out for the default [\"remove_memberships\", \"cancel_invitations\"]".into());
                    }
                    let mut out = Vec::new();
                    for v in a {
                        let name = v.as_str().ok_or_else(|| {
                            format!("`actions` entries must be strings, not {}", describe(v))
                        })?;
                        let action = DeprovisionAction::ALL
                            .iter()
                            .find(|(n, _)| *n == name)
                            .map(|(_, a)| *a)
                            .ok_or_else(|| {
                                format!(
                                    "unknown deprovisioning action {name:?}; use {}",
                                    DeprovisionAction::ALL
                                        .iter()
                                        .map(|(n, _)| *n)
                                        .collect::<Vec<_>>()
                                        .join(", ")
                                )
                            })?;
                        if out.contains(&action) {
                            return Err(format!("action {name:?} is listed twice"));
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
            Ok(JobParams::Deprovision {
                user: user(p.get("user"), "user")?,
                actions,
            })
        }
        JobKind::RotateToken => {
            only_keys(p, &["min_days_left"], &what)?;
            let min_days_left = match p.get("min_days_left") {
                None => None,
                Some(v) => Some(v.as_u64().and_then(|n| u32::try_from(n).ok()).ok_or_else(
                    || format!("`min_days_left` must be a whole number of days, not {v}"),
                )?),
            };
            Ok(JobParams::RotateToken { min_days_left })
        }
    }
}

/// Parses and validates a job envelope. `now` decides what "in the past" means.
pub fn parse_job(bytes: &[u8], now: DateTime<Utc>) -> Result<Job, Rejection> {
    let mut rejection = Rejection {
        job_id: None,
        connector: None,
        kind: None,
        message: String::new(),
    };
    let reject = |mut r: Rejection, message: String| {
        r.message = message;
        Err(r)
    };
    let value: Value = match serde_json::from_slice(bytes) {
        Ok(v) => v,
        Err(e) => {
            return reject(
                rejection,
                format!(
                    "the job is not valid JSON ({e}); publish a job envelope (interface.md section 3)"
                ),
            );
        }
    };
    let Value::Object(obj) = value else {
        return reject(
            rejection,
            format!("the job must be a JSON object, not {}", describe(&value)),
        );
    };
    // Salvage what addresses the answer before anything else can fail.
    rejection.job_id = obj
        .get("job_id")
        .and_then(Value::as_str)
        .filter(|s| valid_job_id(s).is_ok())
        .map(String::from);
    rejection.connector = obj
        .get("connector")
        .and_then(Value::as_str)
        .filter(|s| valid_connector(s).is_ok())
        .map(String::from);
    rejection.kind = obj
        .get("kind")
        .and_then(Value::as_str)
        .and_then(JobKind::parse);

    let checked = (|| -> Result<Job, Fail> {
        only_keys(
            &obj,
            &[
                "schema",
                "job_id",
                "connector",
                "kind",
                "dry_run",
                "requested_by",
                "reason",
                "params",
            ],
            "the job envelope",
        )?;
        match obj.get("schema") {
            None => return Err(format!("`schema` is missing: set it to {JOB_SCHEMA:?}")),
            Some(Value::String(s)) if s == JOB_SCHEMA => {}
            Some(other) => {
                return Err(format!(
                    "`schema` {other} is not supported; this worker accepts {JOB_SCHEMA:?}"
                ));
            }
        }
        let job_id = text(
            obj.get("job_id")
                .ok_or("`job_id` is missing: every job needs a unique id (its idempotency key)")?,
            "job_id",
        )?;
        valid_job_id(&job_id)?;
        let connector = text(
            obj.get("connector").ok_or(
                "`connector` is missing: name the connector (CONNECTOR_ID) the job is for",
            )?,
            "connector",
        )?;
        valid_connector(&connector)?;
        let kind_text = text(obj.get("kind").ok_or("`kind` is missing")?, "kind")?;
        let kind = JobKind::parse(&kind_text).ok_or_else(|| {
            format!(
                "unknown kind {kind_text:?}; use one of {}",
                JobKind::ALL.map(JobKind::as_str).join(", ")
            )
        })?;
        let dry_run = match obj.get("dry_run") {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => return Err(format!("`dry_run` must be true or false, not {other}")),
        };
        let requested_by = obj
            .get("requested_by")
            .filter(|v| !v.is_null())
            .map(|v| text(v, "requested_by"))
            .transpose()?;
        let reason = obj
            .get("reason")
            .filter(|v| !v.is_null())
            .map(|v| text(v, "reason"))
            .transpose()?;
        let empty = Map::new();
        let params = match obj.get("params") {
            None | Some(Value::Null) => &empty,
            Some(Value::Object(p)) => p,
            Some(other) => {
                return Err(format!(
                    "`params` must be an object, not {}",
                    describe(other)
                ));
            }
        };
        let params = params_for(kind, params, now)?;
        Ok(Job {
            job_id,
            connector,
            dry_run,
            requested_by,
            reason,
            params,
        })
    })();
    checked.or_else(|message| reject(rejection, message))
}

fn valid_job_id(s: &str) -> Result<(), Fail> {
    if s.is_empty() || s.len() > 200 {
        return Err("`job_id` must be 1 to 200 characters".into());
    }
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("`job_id` must not contain spaces or control characters (it is sent as the Nats-Msg-Id header)".into());
    }
    Ok(())
}

fn valid_connector(s: &str) -> Result<(), Fail> {
    if s.is_empty()
        || s.len() > 64
        || !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(format!(
            "`connector` {s:?} must be 1 to 64 letters, digits, '-' or '_' (it is part of NATS subjects)"
        ));
    }
    Ok(())
}
