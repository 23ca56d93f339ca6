//! The two identifiers that travel through every layer, each with its one validator: the
//! configuration, the job envelope, the handler and the store all use these types, so a value
//! one of them accepts is never refused by another.

use std::fmt;

/// Why an identifier was refused; the caller names the field or setting it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct IdError(String);

/// The id jobs use to address a configured GitLab (`CONNECTOR_ID`, `connectors[].id`, the
/// envelope's `connector`). It is one token of NATS subjects: 1 to 64 ASCII letters, digits,
/// `-` or `_`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct ConnectorId(String);

impl ConnectorId {
    pub const MAX_LEN: usize = 64;

    pub fn parse(s: &str) -> Result<Self, IdError> {
        if s.is_empty()
            || s.len() > Self::MAX_LEN
            || !s
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(IdError(format!(
                "{s:?} must be 1 to {} letters, digits, '-' or '_' (it is part of NATS subjects)",
                Self::MAX_LEN
            )));
        }
        Ok(Self(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Display, `AsRef<str>` and `Borrow<str>` (so a map keyed by the id is searched with `&str`).
macro_rules! text_id {
    ($t:ty) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $t {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::borrow::Borrow<str> for $t {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
    };
}

text_id!(ConnectorId);
text_id!(JobId);

/// A job's idempotency key (the envelope's `job_id`). It is sent as a `Nats-Msg-Id` header, so
/// it has no whitespace or control characters; 1 to 200 bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct JobId(String);

impl JobId {
    pub const MAX_LEN: usize = 200;

    pub fn parse(s: &str) -> Result<Self, IdError> {
        if s.is_empty() || s.len() > Self::MAX_LEN {
            return Err(IdError(format!(
                "must be 1 to {} characters (bytes in UTF-8)",
                Self::MAX_LEN
            )));
        }
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(IdError(
                "must not contain spaces or control characters (it is sent as the Nats-Msg-Id header)"
                    .into(),
            ));
        }
        Ok(Self(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connector_ids_are_subject_tokens_of_at_most_64_characters() {
        assert!(ConnectorId::parse("corp-eu_1").is_ok());
        assert!(ConnectorId::parse(&"a".repeat(64)).is_ok());
        for bad in ["", "a.b", "a b", "a*", ">", "é", &"a".repeat(65)] {
            assert!(ConnectorId::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn job_ids_are_header_safe() {
        assert!(JobId::parse("req-4711:x/y").is_ok());
        assert!(JobId::parse(&"é".repeat(100)).is_ok());
        for bad in [
            "",
            "a b",
            "a\nb",
            "a\u{7}",
            &"a".repeat(201),
            &"é".repeat(101),
        ] {
            assert!(JobId::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
