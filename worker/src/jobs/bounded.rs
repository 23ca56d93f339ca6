//! Results are bounded by construction: whatever a job did, its result message stays far below
//! NATS's max payload (1 MiB by default). A result whose change list, warnings or error would
//! make it larger keeps the first of them inline and moves the whole list to the object store
//! (`results/<connector>/<job_id>.changes.ndjson`, one change per line), named in the result
//! with its sha256, so a platform reads everything and no message can block another.

use serde_json::json;
use sha2::{Digest, Sha256};

use super::result::JobResult;
use crate::store::OutboxMessage;
use crate::subjects::{Subjects, msg_id};

/// A result up to this size is published as it is.
pub const RESULT_INLINE_BYTES: usize = 256 * 1024;
/// Inline changes kept in a result whose list moved to the object store.
const INLINE_CHANGES_BYTES: usize = 64 * 1024;
/// Warnings kept inline; the rest are counted in a last warning.
const MAX_WARNINGS: usize = 100;
/// Characters of an error message kept (GitLab's and the worker's messages are far shorter;
/// this bounds what an odd answer can make of one).
const MAX_ERROR_CHARS: usize = 8 * 1024;

fn cut(s: &mut String, max: usize) {
    if s.len() > max {
        let mut at = max;
        while !s.is_char_boundary(at) {
            at -= 1;
        }
        s.truncate(at);
        s.push_str("… (cut)");
    }
}

/// Bounds `result` in place; returns the object upload to commit before the result message
/// (the outbox publishes in order, so the object exists before a result names it).
pub fn bound(result: &mut JobResult, subjects: &Subjects) -> Option<OutboxMessage> {
    if let Some(e) = &mut result.error {
        cut(&mut e.message, MAX_ERROR_CHARS);
    }
    for w in &mut result.warnings {
        cut(w, MAX_ERROR_CHARS);
    }
    if result.warnings.len() > MAX_WARNINGS {
        let more = result.warnings.len() - MAX_WARNINGS + 1;
        result.warnings.truncate(MAX_WARNINGS - 1);
        result
            .warnings
            .push(format!("… and {more} more warnings (not kept)"));
    }
    let size = serde_json::to_vec(result).map_or(usize::MAX, |v| v.len());
    if size <= RESULT_INLINE_BYTES {
        return None;
    }
    // Each change serialized once: its line goes into the object and counts toward what
    // stays inline.
    let mut ndjson = String::new();
    let mut kept = 0usize;
    for c in &result.changes {
        ndjson.push_str(&serde_json::to_string(c).unwrap_or_else(|_| "null".into()));
        ndjson.push('\n');
        if ndjson.len() <= INLINE_CHANGES_BYTES {
            kept += 1;
        }
    }
    let total = result.changes.len();
    result.changes.truncate(kept);
    let name = format!(
        "results/{}/{}.changes.ndjson",
        result.connector, result.job_id
    );
    let sha = format!("{:x}", Sha256::digest(ndjson.as_bytes()));
    result.changes_object = Some(json!({
        "bucket": subjects.snapshot_bucket(),
        "name": name,
        "sha256": sha,
        "bytes": ndjson.len(),
        "changes": total,
    }));
    Some(OutboxMessage::Object {
        msg_id: msg_id::result_object(&result.job_id),
        object_name: name,
        payload: ndjson,
    })
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use serde_json::json;

    use super::*;
    use crate::jobs::result::{Change, JobError, JobStatus, RESULT_SCHEMA};

    fn result(changes: usize, warnings: usize, message: usize) -> JobResult {
        JobResult {
            schema: RESULT_SCHEMA.into(),
            job_id: "j".into(),
            connector: "default".into(),
            kind: "deprovision".into(),
            status: JobStatus::Failed,
            dry_run: false,
            started_at: Utc::now(),
            finished_at: Utc::now(),
            attempt: 1,
            changes: (0..changes)
                .map(|i| Change {
                    action: "remove_member".into(),
                    target: json!({"type": "project", "id": i}),
                    user_id: Some(7),
                    email: None,
                    before: Some(json!({"access_level": 30, "expires_at": null})),
                    after: None,
                    note: None,
                })
                .collect(),
            error: Some(JobError {
                code: "gitlab_error".into(),
                message: "\"".repeat(message),
                retryable: false,
            }),
            snapshot: None,
            grant: None,
            residual_access: None,
            warnings: (0..warnings).map(|i| format!("warning {i}")).collect(),
            changes_object: None,
        }
    }

    #[test]
    fn a_small_result_is_left_as_it_is() {
        let mut r = result(10, 3, 100);
        let before = r.clone();
        assert!(bound(&mut r, &Subjects::new("gitlab")).is_none());
        assert_eq!(r, before);
    }

    #[test]
    fn a_large_change_list_moves_to_the_object_store_whole() {
        let mut r = result(7_000, 0, 10);
        let object = bound(&mut r, &Subjects::new("gitlab")).expect("an object");
        let size = serde_json::to_vec(&r).unwrap().len();
        assert!(size <= RESULT_INLINE_BYTES, "{size}");
        assert!(!r.changes.is_empty() && r.changes.len() < 7_000);
        let OutboxMessage::Object { payload, .. } = object else {
            panic!("an object upload");
        };
        assert_eq!(payload.lines().count(), 7_000);
        let meta = r.changes_object.unwrap();
        assert_eq!(meta["changes"], 7_000);
        assert_eq!(
            meta["sha256"],
            format!("{:x}", Sha256::digest(payload.as_bytes()))
        );
    }

    #[test]
    fn warnings_and_messages_are_cut() {
        let mut r = result(0, 5_000, 3_000_000);
        bound(&mut r, &Subjects::new("gitlab"));
        assert_eq!(r.warnings.len(), MAX_WARNINGS);
        assert!(r.warnings.last().unwrap().contains("4901 more"));
        assert!(r.error.unwrap().message.len() <= MAX_ERROR_CHARS + 16);
    }
}
