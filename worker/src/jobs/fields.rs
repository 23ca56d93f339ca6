//! Validators for the values inside a job envelope. Each failure is a message that names the
//! field and says what is expected.

use chrono::{DateTime, NaiveDate, Utc};
use gitlab_connector::api::AccessLevel;
use gitlab_connector::client::IdOrPath;
use gitlab_connector::provision::{TargetRef, UserRef};
use serde_json::{Map, Value};

/// Longest free text accepted in an envelope field.
pub const MAX_TEXT: usize = 2000;

/// A rejection message.
pub type Fail = String;

/// The parameters object of an envelope.
pub type Fields = Map<String, Value>;

/// Longest piece of the input a rejection message repeats: an answer must never be an echo of
/// a huge job (its escaping would even make it bigger).
const ECHO: usize = 80;

/// A value from the job, as a rejection message shows it: JSON, cut to a few dozen characters.
pub fn shown(v: &Value) -> String {
    cut(v.to_string())
}

/// A string from the job, quoted and cut, as a rejection message shows it.
pub fn quoted(s: &str) -> String {
    cut(format!("{s:?}"))
}

fn cut(mut s: String) -> String {
    if s.len() > ECHO {
        let mut at = ECHO;
        while !s.is_char_boundary(at) {
            at -= 1;
        }
        s.truncate(at);
        s.push('…');
    }
    s
}

pub fn describe(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

pub fn only_keys(obj: &Fields, allowed: &[&str], what: &str) -> Result<(), Fail> {
    for k in obj.keys() {
        if !allowed.contains(&k.as_str()) {
            return Err(format!(
                "unknown field `{}` in {what}; allowed: {}",
                cut(k.clone()),
                allowed.join(", ")
            ));
        }
    }
    Ok(())
}

pub fn text(v: &Value, field: &str) -> Result<String, Fail> {
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

pub fn positive(v: &Value, field: &str) -> Result<u64, Fail> {
    match v.as_u64() {
        Some(n) if n > 0 => Ok(n),
        _ => Err(format!(
            "`{field}` must be a positive whole number, not {}",
            shown(v)
        )),
    }
}

pub fn user(v: Option<&Value>, field: &str) -> Result<UserRef, Fail> {
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
    let mut entries = o.iter();
    let (Some((k, val)), None) = (entries.next(), entries.next()) else {
        return Err(format!(
            "`{field}` must have exactly one of `id`, `username`, `email`"
        ));
    };
    match k.as_str() {
        "id" => Ok(UserRef::Id(positive(val, &format!("{field}.id"))?)),
        "username" => Ok(UserRef::Username(text(val, &format!("{field}.username"))?)),
        _ => Ok(UserRef::Email(email(val, &format!("{field}.email"))?)),
    }
}

pub fn email(v: &Value, field: &str) -> Result<String, Fail> {
    let e = text(v, field)?;
    let mut parts = e.split('@');
    let ok = matches!((parts.next(), parts.next(), parts.next()), (Some(l), Some(d), None) if !l.is_empty() && d.contains('.') && !d.starts_with('.') && !d.ends_with('.'))
        && !e.contains(char::is_whitespace);
    if ok {
        Ok(e)
    } else {
        Err(format!("`{field}` {} is not an email address", quoted(&e)))
    }
}

pub fn target(v: Option<&Value>) -> Result<TargetRef, Fail> {
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
    let mut entries = o.iter();
    let (Some((k, val)), None) = (entries.next(), entries.next()) else {
        return Err("`target` must have exactly one of `group`, `project`".into());
    };
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
        TargetRef::Group(r)
    } else {
        TargetRef::Project(r)
    })
}

pub fn access_level(v: Option<&Value>) -> Result<AccessLevel, Fail> {
    let Some(v) = v else {
        return Err("`access_level` is missing: a number (10 guest … 50 owner) or a name such as \"developer\"".into());
    };
    let level = match v {
        Value::Number(_) => v
            .as_u64()
            .and_then(|n| u16::try_from(n).ok())
            .map(AccessLevel)
            .ok_or_else(|| format!("`access_level` {} is not a level", shown(v)))?,
        Value::String(s) => s.parse::<AccessLevel>().map_err(|_| {
            format!(
                "`access_level` {}: unknown access level; give a number or a name such as \"developer\"",
                quoted(s)
            )
        })?,
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

/// A `YYYY-MM-DD` date that is not in the past.
pub fn date(v: &Value, field: &str, now: DateTime<Utc>) -> Result<NaiveDate, Fail> {
    let s = text(v, field)?;
    let d = NaiveDate::parse_from_str(&s, "%Y-%m-%d")
        .map_err(|_| format!("`{field}` {} is not a date (YYYY-MM-DD)", quoted(&s)))?;
    if d < now.date_naive() {
        return Err(format!("`{field}` {s} is in the past"));
    }
    Ok(d)
}

/// An RFC 3339 instant.
pub fn instant(v: &Value, field: &str) -> Result<DateTime<Utc>, Fail> {
    let s = text(v, field)?;
    Ok(DateTime::parse_from_rfc3339(&s)
        .map_err(|_| {
            format!(
                "`{field}` {} is not an RFC 3339 timestamp such as 2026-11-23T18:00:00Z",
                quoted(&s)
            )
        })?
        .with_timezone(&Utc))
}
