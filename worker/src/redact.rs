//! Text that may hold a secret, made safe to print: every URL that reaches a message or a log
//! passes [`redact_url`].

/// A URL with its password replaced, for messages and logs (`DATABASE_URL`, `NATS_URL`).
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("[redacted]"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}

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
        assert_eq!(
            redact_url("sqlite://x.db?mode=rwc"),
            "sqlite://x.db?mode=rwc"
        );
    }
}
