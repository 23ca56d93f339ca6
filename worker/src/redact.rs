//! Text that may hold a secret, made safe to print. Every URL that reaches a message or a log
//! passes [`redact_url`] (the connector's, so GitLab, NATS and database URLs share one rule);
//! text from GitLab or a proxy passes [`scrub`].

pub use gitlab_connector::secret::{redact_url, scrub};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_replaced() {
        let shown = redact_url("postgres://worker:hunter2@db/gitlab");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(
            shown.contains("redacted") && shown.contains("@db/gitlab"),
            "{shown}"
        );
    }
}
