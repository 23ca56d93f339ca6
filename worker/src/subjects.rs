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

    pub fn jobs_all(&self) -> String {
        format!("{}.jobs.>", self.prefix)
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

    /// `<p>.events.<connector>.<kind>` (`snapshot`, `access`).
    pub fn event(&self, connector: &str, kind: &str) -> String {
        format!(
            "{}.events.{}.{kind}",
            self.prefix,
            connector_token(connector)
        )
    }

    pub fn snapshot_bucket(&self) -> String {
        self.stream("SNAPSHOTS")
    }
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
    }
}
