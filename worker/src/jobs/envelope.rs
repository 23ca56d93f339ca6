//! The job envelope (docs/contract.md, "Jobs"; `schemas/gitlab-connector.job.v1.schema.json`):
//! its common fields are parsed here, its parameters by the module of its kind. Anything
//! malformed or unknown is rejected with a message that names the field and says what is
//! expected: a typo must never execute (an unknown `dryrun` field silently ignored would turn a
//! dry run into a real grant).

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use super::codes::Code;
use super::fields::{Fail, Fields, describe, only_keys, quoted, shown, text};
use super::result::{JobError, JobResult, JobStatus, RESULT_SCHEMA};
use super::{deprovision, grant, invite, revoke, rotate, sync};
use crate::ids::{ConnectorId, JobId};
use crate::subjects::{UNKNOWN_CONNECTOR, UNKNOWN_KIND};

pub const JOB_SCHEMA: &str = "gitlab-connector.job.v1";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    Sync,
    Grant,
    Revoke,
    Invite,
    Deprovision,
    RotateToken,
    Reconcile,
}

impl JobKind {
    pub const ALL: [JobKind; 7] = [
        JobKind::Sync,
        JobKind::Grant,
        JobKind::Revoke,
        JobKind::Invite,
        JobKind::Deprovision,
        JobKind::RotateToken,
        JobKind::Reconcile,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Sync => "sync",
            JobKind::Grant => "grant",
            JobKind::Revoke => "revoke",
            JobKind::Invite => "invite",
            JobKind::Deprovision => "deprovision",
            JobKind::RotateToken => "rotate_token",
            JobKind::Reconcile => "reconcile",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// A job's parameters: one type per kind, each parsed and executed by its own module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobParams {
    Sync(sync::Params),
    Grant(grant::Params),
    Revoke(revoke::Params),
    Invite(invite::Params),
    Deprovision(deprovision::Params),
    RotateToken(rotate::Params),
    /// A full sync whose differences from the live state are drift (`cause: "reconcile"`).
    Reconcile(sync::Params),
}

impl JobParams {
    pub fn kind(&self) -> JobKind {
        match self {
            JobParams::Sync(_) => JobKind::Sync,
            JobParams::Grant(_) => JobKind::Grant,
            JobParams::Revoke(_) => JobKind::Revoke,
            JobParams::Invite(_) => JobKind::Invite,
            JobParams::Deprovision(_) => JobKind::Deprovision,
            JobParams::RotateToken(_) => JobKind::RotateToken,
            JobParams::Reconcile(_) => JobKind::Reconcile,
        }
    }

    /// The parameters of a job of `kind`.
    pub fn parse(kind: JobKind, p: &Fields, now: DateTime<Utc>) -> Result<Self, Fail> {
        Ok(match kind {
            JobKind::Sync => JobParams::Sync(sync::Params::parse(p)?),
            JobKind::Grant => JobParams::Grant(grant::Params::parse(p, now)?),
            JobKind::Revoke => JobParams::Revoke(revoke::Params::parse(p)?),
            JobKind::Invite => JobParams::Invite(invite::Params::parse(p, now)?),
            JobKind::Deprovision => JobParams::Deprovision(deprovision::Params::parse(p)?),
            JobKind::RotateToken => JobParams::RotateToken(rotate::Params::parse(p)?),
            JobKind::Reconcile => JobParams::Reconcile(sync::Params::parse(p)?),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub job_id: JobId,
    pub connector: ConnectorId,
    pub dry_run: bool,
    pub requested_by: Option<String>,
    pub reason: Option<String>,
    pub params: JobParams,
    /// sha256 (hex) of the canonical envelope: keys sorted, no whitespace. The job id binds it:
    /// the same id with another payload is not the same job, while a byte-different but
    /// equivalent envelope is.
    pub payload_sha256: String,
}

impl Job {
    pub fn kind(&self) -> JobKind {
        self.params.kind()
    }
}

/// Why a job was rejected, with what could be read of it (to address the result and DLQ copy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub job_id: Option<JobId>,
    pub connector: Option<ConnectorId>,
    pub kind: Option<JobKind>,
    /// `invalid_job` for a malformed envelope.
    pub code: Code,
    pub message: String,
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl JobResult {
    /// A result for a valid job, to be filled in by its handler.
    pub fn for_job(job: &Job, started_at: DateTime<Utc>, attempt: u32) -> Self {
        Self {
            schema: RESULT_SCHEMA.into(),
            job_id: job.job_id.to_string(),
            connector: job.connector.to_string(),
            kind: job.kind().as_str().into(),
            status: JobStatus::Noop,
            dry_run: job.dry_run,
            started_at,
            finished_at: started_at,
            attempt,
            changes: Vec::new(),
            error: None,
            snapshot: None,
            grant: None,
            residual_access: None,
            warnings: Vec::new(),
            changes_object: None,
        }
    }

    /// The answer to a job that could not be accepted.
    pub fn rejected(r: &Rejection, started_at: DateTime<Utc>, attempt: u32) -> Self {
        Self {
            schema: RESULT_SCHEMA.into(),
            job_id: r
                .job_id
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            connector: r
                .connector
                .as_ref()
                .map_or_else(|| UNKNOWN_CONNECTOR.into(), ToString::to_string),
            kind: r.kind.map_or(UNKNOWN_KIND, |k| k.as_str()).into(),
            status: JobStatus::Rejected,
            dry_run: false,
            started_at,
            finished_at: Utc::now(),
            attempt,
            changes: Vec::new(),
            error: Some(JobError::new(r.code, r.message.clone(), false)),
            snapshot: None,
            grant: None,
            residual_access: None,
            warnings: Vec::new(),
            changes_object: None,
        }
    }
}

/// Parses and validates a job envelope. `now` decides what "in the past" means.
pub fn parse_job(bytes: &[u8], now: DateTime<Utc>) -> Result<Job, Rejection> {
    let mut rejection = Rejection {
        job_id: None,
        connector: None,
        kind: None,
        code: Code::InvalidJob,
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
                    "the job is not valid JSON ({e}); publish a job envelope (docs/contract.md, \"Jobs\")"
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
        .and_then(|s| JobId::parse(s).ok());
    rejection.connector = obj
        .get("connector")
        .and_then(Value::as_str)
        .and_then(|s| ConnectorId::parse(s).ok());
    rejection.kind = obj
        .get("kind")
        .and_then(Value::as_str)
        .and_then(JobKind::parse);

    let mut job = checked(&obj, now).or_else(|message| reject(rejection, message))?;
    job.payload_sha256 = canonical_sha256(&Value::Object(obj));
    Ok(job)
}

/// sha256 of a JSON value written canonically: object keys in byte order, no whitespace.
pub fn canonical_sha256(v: &Value) -> String {
    use sha2::{Digest, Sha256};
    let mut text = String::new();
    canonical(v, &mut text);
    gitlab_connector::snapshot::hex(&Sha256::digest(text.as_bytes()))
}

fn canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_unstable();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                canonical(&map[k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// The envelope's fields, checked in order; the first problem is the rejection's message.
fn checked(obj: &Fields, now: DateTime<Utc>) -> Result<Job, Fail> {
    only_keys(
        obj,
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
                "`schema` {} is not supported; this worker accepts {JOB_SCHEMA:?}",
                shown(other)
            ));
        }
    }
    let job_id = text(
        obj.get("job_id")
            .ok_or("`job_id` is missing: every job needs a unique id (its idempotency key)")?,
        "job_id",
    )?;
    let job_id = JobId::parse(&job_id).map_err(|e| format!("`job_id` {e}"))?;
    let connector = text(
        obj.get("connector")
            .ok_or("`connector` is missing: name the connector (CONNECTOR_ID) the job is for")?,
        "connector",
    )?;
    let connector = ConnectorId::parse(&connector).map_err(|e| format!("`connector` {e}"))?;
    let kind_text = text(obj.get("kind").ok_or("`kind` is missing")?, "kind")?;
    let kind = JobKind::parse(&kind_text).ok_or_else(|| {
        format!(
            "`kind` {} is not a job kind; use one of {}",
            quoted(&kind_text),
            JobKind::ALL.map(JobKind::as_str).join(", ")
        )
    })?;
    let dry_run = match obj.get("dry_run") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return Err(format!(
                "`dry_run` must be true or false, not {}",
                shown(other)
            ));
        }
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
    let empty = Fields::new();
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
    let params = JobParams::parse(kind, params, now)?;
    Ok(Job {
        job_id,
        connector,
        dry_run,
        requested_by,
        reason,
        params,
        payload_sha256: String::new(),
    })
}
