//! Answers as CSV and as a text table; the CLI and the auditors' page print the same bytes.

use std::fmt::Write as _;

use super::access::path_text;
use super::{AccessAnswer, HistoryAnswer, role};

/// A CSV cell. Text that a spreadsheet would run as a formula (starting with `=`, `+`, `-`, `@`,
/// a tab or a carriage return: OWASP's CSV injection list) is prefixed with `'`; a GitLab
/// display name such as `=HYPERLINK(…)` must stay text.
pub fn csv_field(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{s}")
    } else {
        s.to_string()
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

fn opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref().map(ToString::to_string).unwrap_or_default()
}

pub const ACCESS_CSV_HEADER: &str = "as_of,snapshot_id,user_id,username,user_state,user_kind,is_admin,two_factor_enabled,last_activity_on,resource_type,resource_id,resource_path,access_level,role,paths,since,since_history_start";

/// One row per user and resource.
pub fn access_csv(a: &AccessAnswer) -> String {
    let mut out = String::new();
    out.push_str(ACCESS_CSV_HEADER);
    out.push('\n');
    let as_of = a.as_of.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    for r in &a.rows {
        let paths: Vec<String> = r.paths.iter().map(path_text).collect();
        let _ = writeln!(
            out,
            "{as_of},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
            a.based_on.snapshot_id,
            r.user_id,
            csv_field(&opt(&r.username)),
            csv_field(&opt(&r.user.user_state)),
            opt(&r.user.user_kind),
            opt(&r.user.is_admin),
            opt(&r.user.two_factor_enabled),
            opt(&r.user.last_activity_on),
            r.resource.kind,
            r.resource.id,
            csv_field(&opt(&r.resource.path)),
            r.access_level,
            r.role,
            csv_field(&paths.join("; ")),
            r.since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            r.since_history_start,
        );
    }
    out
}

pub const HISTORY_CSV_HEADER: &str = "time,user_id,username,resource_type,resource_id,resource_path,record,before_level,after_level,before,after,cause,snapshot_id,batch_id,job_id,job_kind,action,requested_by,reason";

fn level_of(v: &Option<serde_json::Value>) -> String {
    v.as_ref()
        .and_then(|v| v.get("access_level"))
        .and_then(serde_json::Value::as_u64)
        .map(|l| l.to_string())
        .unwrap_or_default()
}

pub fn history_csv(h: &HistoryAnswer) -> String {
    let mut out = String::new();
    out.push_str(HISTORY_CSV_HEADER);
    out.push('\n');
    for r in &h.rows {
        let json =
            |v: &Option<serde_json::Value>| v.as_ref().map(|v| v.to_string()).unwrap_or_default();
        let _ = writeln!(
            out,
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
            r.time.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            opt(&r.user_id),
            csv_field(&opt(&r.username)),
            r.resource.as_ref().map_or("", |x| x.kind),
            opt(&r.resource.as_ref().map(|x| x.id)),
            csv_field(&opt(&r.resource.as_ref().and_then(|x| x.path.clone()))),
            r.record,
            level_of(&r.before),
            level_of(&r.after),
            csv_field(&json(&r.before)),
            csv_field(&json(&r.after)),
            r.cause,
            opt(&r.snapshot_id),
            opt(&r.batch_id),
            csv_field(&opt(&r.job_id)),
            opt(&r.job_kind),
            opt(&r.action),
            csv_field(&opt(&r.requested_by)),
            csv_field(&opt(&r.reason)),
        );
    }
    out
}

/// Left-aligned columns for a terminal; control characters in names are shown escaped.
fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let clean = |s: &str| -> String { s.chars().flat_map(char::escape_default).collect() };
    let rows: Vec<Vec<String>> = rows
        .into_iter()
        .map(|r| {
            r.into_iter()
                .map(|c| {
                    if c.chars().any(char::is_control) {
                        clean(&c)
                    } else {
                        c
                    }
                })
                .collect()
        })
        .collect();
    let mut width: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            width[i] = width[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let n = cells.len();
        for (i, c) in cells.into_iter().enumerate() {
            if i + 1 == n {
                out.push_str(c);
            } else {
                let _ = write!(out, "{c:<w$}  ", w = width[i]);
            }
        }
        out.push('\n');
    };
    line(header.to_vec(), &mut out);
    for r in &rows {
        line(r.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

pub fn access_table(a: &AccessAnswer, by_user: bool) -> String {
    let mut out = format!(
        "as of {} — snapshot {} ({}){}\n\n",
        a.as_of.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        a.based_on.snapshot_id,
        if a.based_on.complete {
            "complete"
        } else {
            "PARTIAL: some lists could not be read"
        },
        match a.based_on.change_batches {
            0 => String::new(),
            n => format!(" + {n} live change batch(es)"),
        }
    );
    let rows = a
        .rows
        .iter()
        .map(|r| {
            let first = if by_user {
                r.resource.selector()
            } else {
                format!("{} ({})", opt(&r.username), r.user_id)
            };
            vec![
                first,
                format!("{} {}", r.access_level, role(r.access_level)),
                r.since.format("%Y-%m-%d %H:%M").to_string()
                    + if r.since_history_start {
                        " or earlier"
                    } else {
                        ""
                    },
                opt(&r.user.last_activity_on),
                r.paths.iter().map(path_text).collect::<Vec<_>>().join("; "),
            ]
        })
        .collect();
    let first = if by_user { "resource" } else { "user" };
    out.push_str(&table(
        &[first, "level", "since", "last activity", "paths"],
        rows,
    ));
    let _ = writeln!(out, "\n{} row(s)", a.rows.len());
    out
}

pub fn history_table(h: &HistoryAnswer) -> String {
    let rows = h
        .rows
        .iter()
        .map(|r| {
            let cause = match (&r.job_id, &r.snapshot_id, r.batch_id) {
                (Some(j), _, _) => format!("{} (job {j})", r.cause),
                (_, Some(s), _) => format!("{} (snapshot {s})", r.cause),
                (_, _, Some(b)) => format!("{} (batch {b})", r.cause),
                _ => r.cause.to_string(),
            };
            vec![
                r.time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                format!("{} ({})", opt(&r.username), opt(&r.user_id)),
                r.resource
                    .as_ref()
                    .map(|x| x.selector())
                    .unwrap_or_default(),
                r.action.clone().unwrap_or_else(|| r.record.clone()),
                format!(
                    "{} → {}",
                    blank(level_of(&r.before)),
                    blank(level_of(&r.after))
                ),
                cause,
            ]
        })
        .collect();
    let mut out = table(
        &["time", "user", "resource", "change", "level", "cause"],
        rows,
    );
    let _ = writeln!(
        out,
        "\n{} change(s); the history starts {}",
        h.rows.len(),
        h.history_starts
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    out
}

fn blank(s: String) -> String {
    if s.is_empty() { "none".into() } else { s }
}
