//! Subject, stream and bucket names (docs/contract.md, "NATS"). Every name the worker
//! publishes to or consumes from is built here.

use crate::ids::ConnectorId;

/// The connector segment of result and DLQ subjects when the job's connector could not be read.
pub const UNKNOWN_CONNECTOR: &str = "unknown";
/// The kind segment of result and DLQ subjects when the job's kind could not be read.
pub const UNKNOWN_KIND: &str = "invalid";

#[derive(Debug, Clone)]
pub struct Subjects {
    pub prefix: String,
}

impl Subjects {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_string(),
        }
    }

    /// `<P>_<NAME>`: streams and buckets use the upper-cased prefix.
    pub fn stream(&self, name: &str) -> String {
        format!("{}_{name}", self.prefix.to_uppercase())
    }

    /// Where a job of `kind` for `connector` is published.
    pub fn job(&self, connector: &str, kind: &str) -> String {
        format!("{}.jobs.{connector}.{kind}", self.prefix)
    }

    pub fn result(&self, connector: &str, kind: &str) -> String {
        format!(
            "{}.results.{}.{}",
            self.prefix,
            connector_token(connector),
            kind_token(kind)
        )
    }

    pub fn dlq(&self, connector: &str, kind: &str) -> String {
        format!(
            "{}.dlq.{}.{}",
            self.prefix,
            connector_token(connector),
            kind_token(kind)
        )
    }

    /// `<p>.hooks.<connector>`: GitLab's webhook deliveries as received.
    pub fn hooks(&self, connector: &str) -> String {
        format!("{}.hooks.{}", self.prefix, connector_token(connector))
    }

    /// `<p>.events.<connector>.<kind>` (`snapshot`, `access`).
    pub fn event(&self, connector: &str, kind: &str) -> String {
        format!(
            "{}.events.{}.{kind}",
            self.prefix,
            connector_token(connector)
        )
    }

    /// Where the DLQ notice of an outbox message that cannot be published goes: beside the
    /// jobs of the same connector and kind (a result or event subject), else under `outbox`.
    pub fn dlq_for_outbox(&self, subject: &str) -> String {
        let rest = subject.strip_prefix(&format!("{}.", self.prefix));
        match rest.map(|r| r.split('.').collect::<Vec<_>>()).as_deref() {
            Some([_class, connector, kind]) => self.dlq(connector, kind),
            _ => self.dlq(UNKNOWN_CONNECTOR, "outbox"),
        }
    }

    pub fn snapshot_bucket(&self) -> String {
        self.stream("SNAPSHOTS")
    }
}

/// Whether `subject` is an event subject, `<p>.events.<connector>.<kind>` (of any prefix).
pub fn is_event(subject: &str) -> bool {
    let mut tokens = subject.rsplitn(4, '.');
    let (kind, connector, class, prefix) =
        (tokens.next(), tokens.next(), tokens.next(), tokens.next());
    class == Some("events")
        && [kind, connector, prefix]
            .iter()
            .all(|t| t.is_some_and(|t| !t.is_empty()))
}

/// A subject token from text a job supplied: anything that is not a valid connector id (empty,
/// or with dots, wildcards or spaces) becomes `unknown`, so a malformed job cannot address
/// other subjects.
fn connector_token(s: &str) -> &str {
    if ConnectorId::parse(s).is_ok() {
        s
    } else {
        UNKNOWN_CONNECTOR
    }
}

fn kind_token(s: &str) -> &str {
    if !s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
        s
    } else {
        UNKNOWN_KIND
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_from_a_job_cannot_address_other_subjects() {
        let s = Subjects::new("gitlab");
        assert_eq!(s.result("corp", "grant"), "gitlab.results.corp.grant");
        assert_eq!(s.result("a.b", "grant"), "gitlab.results.unknown.grant");
        assert_eq!(s.dlq("corp", "x.>"), "gitlab.dlq.corp.invalid");
        assert_eq!(s.event("*", "access"), "gitlab.events.unknown.access");
        assert_eq!(s.stream("JOBS"), "GITLAB_JOBS");
        assert_eq!(
            s.dlq_for_outbox("gitlab.results.corp.grant"),
            "gitlab.dlq.corp.grant"
        );
        assert_eq!(
            s.dlq_for_outbox("gitlab.events.corp.snapshot"),
            "gitlab.dlq.corp.snapshot"
        );
        assert_eq!(
            s.dlq_for_outbox("results/corp/j.changes.ndjson"),
            "gitlab.dlq.unknown.outbox"
        );
    }

    #[test]
    fn event_subjects_are_told_from_results_and_dlq_notices() {
        for prefix in ["gitlab", "acme.iam"] {
            let s = Subjects::new(prefix);
            assert!(is_event(&s.event("corp", "access")));
            assert!(is_event(&s.event("corp", "snapshot")));
            assert!(!is_event(&s.result("corp", "grant")));
            assert!(!is_event(&s.result("events", "grant")));
            assert!(!is_event(&s.dlq("corp", "sync")));
        }
        // A result's change-list object name is not a subject at all.
        assert!(!is_event("results/corp/j.changes.ndjson"));
        assert!(!is_event("events.corp.access"));
        assert!(!is_event("gitlab.events..access"));
    }
}

/// Every `Nats-Msg-Id` the worker publishes, in namespaces no job id can reach: a job's first
/// result carries its job id (the contract), and every other message id contains a space, which
/// a job id never does ([`crate::ids::JobId`]). So no job, whatever its id, can make another
/// message look like a duplicate.
pub mod msg_id {
    /// A job's result.
    pub fn result(job_id: &str) -> String {
        job_id.to_string()
    }

    /// A stored result published again for another message carrying the same job id.
    pub fn repeat(job_id: &str, stream_seq: u64) -> String {
        format!("{job_id} repeat {stream_seq}")
    }

    /// The answer to a job that was not accepted (`job_id` empty when it could not be read).
    pub fn rejected(job_id: &str, stream_seq: u64) -> String {
        if job_id.is_empty() {
            format!("rejected {stream_seq}")
        } else {
            format!("{job_id} rejected {stream_seq}")
        }
    }

    pub fn snapshot_event(snapshot_id: &str) -> String {
        format!("snapshot {snapshot_id}")
    }

    pub fn access_event(snapshot_id: &str, chunk: usize) -> String {
        format!("access {snapshot_id} {chunk}")
    }

    /// The outbox row that publishes a snapshot's access events (not a message id itself).
    pub fn access_events(snapshot_id: &str) -> String {
        format!("access-events {snapshot_id}")
    }

    /// A webhook delivery: GitLab's `Idempotency-Key` (stable across its retries), else the
    /// event's UUID and the body's hash, else the hash alone.
    pub fn hook(connector: &str, key: &str) -> String {
        format!("hook {connector} {key}")
    }

    /// Chunk `chunk` of the access event of a live change batch (named by its chained hash).
    pub fn live_access(batch_sha256: &str, chunk: usize) -> String {
        format!("live {batch_sha256} {chunk}")
    }

    pub fn snapshot_object(snapshot_id: &str) -> String {
        format!("object {snapshot_id}")
    }

    /// A result's full change list in the object store (the result keeps the first changes).
    pub fn result_object(job_id: &str) -> String {
        format!("result_object {job_id}")
    }

    /// The DLQ copy of a job whose last delivery died.
    pub fn abandoned(job_id: &str) -> String {
        format!("{job_id} abandoned")
    }

    /// The DLQ notice of an outbox message that could not be published (its own message id).
    pub fn parked(original_msg_id: &str) -> String {
        format!("parked {original_msg_id}")
    }

    pub fn jit_expiry(grant_job_id: &str) -> String {
        format!("jit_expiry {grant_job_id}")
    }

    pub fn jit_expiry_failed(grant_job_id: &str) -> String {
        format!("jit_expiry_failed {grant_job_id}")
    }

    /// The DLQ copy of the message at `stream_seq` of the jobs stream.
    pub fn dlq(stream_seq: u64) -> String {
        format!("dlq {stream_seq}")
    }
}

#[cfg(test)]
mod msg_id_tests {
    use super::msg_id;
    use crate::ids::JobId;

    #[test]
    fn no_job_id_can_take_another_message_id() {
        for other in [
            msg_id::repeat("g", 5),
            msg_id::rejected("g", 5),
            msg_id::rejected("", 5),
            msg_id::snapshot_event("s"),
            msg_id::access_event("s", 1),
            msg_id::snapshot_object("s"),
            msg_id::jit_expiry("g"),
            msg_id::live_access("s", 1),
            msg_id::jit_expiry_failed("g"),
            msg_id::dlq(5),
        ] {
            assert!(
                JobId::parse(&other).is_err(),
                "{other:?} could be a job's result id"
            );
        }
        assert_eq!(msg_id::result("g:expired"), "g:expired");
    }
}
