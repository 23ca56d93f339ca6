//! `gitlab-worker access who|user|history` (docs/auditors.md): point-in-time answers.

use chrono::Utc;

use super::{AccessCommand, AnswerFormat, exit, fail, settings_and_store};
use crate::history::{self, HistoryError, HistoryQuery, ResourceSel, Timeline, UserSel, render};
use crate::store::Store;

/// Which connector a question is about: the one named, the only one configured, or the only
/// one with stored snapshots.
pub(crate) async fn pick_connector(
    store: &Store,
    settings: &crate::config::Settings,
    named: Option<String>,
) -> Result<String, String> {
    if let Some(c) = named {
        return Ok(c);
    }
    if settings.connectors.len() == 1
        && let Some(id) = settings.connectors.keys().next()
    {
        return Ok(id.to_string());
    }
    let mut stored: Vec<String> = store
        .list_snapshots(None)
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|s| s.connector)
        .collect();
    stored.sort();
    stored.dedup();
    match stored.len() {
        0 => Err("no snapshot is stored yet; run a sync first".into()),
        1 => Ok(stored.remove(0)),
        _ => Err(format!(
            "several connectors have stored snapshots ({}); name one with --connector",
            stored.join(", ")
        )),
    }
}

pub async fn run(config: Option<&std::path::Path>, command: AccessCommand) -> u8 {
    let (settings, store) = match settings_and_store(config, false).await {
        Ok(x) => x,
        Err(code) => return code,
    };
    let common = command.common().clone();
    let connector = match pick_connector(&store, &settings, common.connector).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::USAGE;
        }
    };
    let answer = async {
        let timeline = Timeline::load(&store, &connector, common.scope.as_deref()).await?;
        let at = common.at.unwrap_or_else(Utc::now);
        Ok::<_, HistoryError>(match command {
            AccessCommand::Who { resource, .. } => {
                let sel = ResourceSel::parse(&resource)?;
                let a = history::who(&timeline, &sel, at).await?;
                match common.format {
                    AnswerFormat::Json => json(&a),
                    AnswerFormat::Csv => render::access_csv(&a),
                    AnswerFormat::Table => render::access_table(&a, false),
                }
            }
            AccessCommand::User { user, .. } => {
                let sel = UserSel::parse(&user)?;
                let a = history::user_access(&timeline, &sel, at).await?;
                match common.format {
                    AnswerFormat::Json => json(&a),
                    AnswerFormat::Csv => render::access_csv(&a),
                    AnswerFormat::Table => render::access_table(&a, true),
                }
            }
            AccessCommand::History {
                user,
                resource,
                since,
                until,
                ..
            } => {
                let q = HistoryQuery {
                    user: user.as_deref().map(UserSel::parse).transpose()?,
                    resource: resource.as_deref().map(ResourceSel::parse).transpose()?,
                    since,
                    until: until.or(common.at),
                };
                let h = history::history(&timeline, &q).await?;
                match common.format {
                    AnswerFormat::Json => json(&h),
                    AnswerFormat::Csv => render::history_csv(&h),
                    AnswerFormat::Table => render::history_table(&h),
                }
            }
        })
    }
    .await;
    match answer {
        Ok(text) => {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
                Ok(()) => exit::OK,
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => exit::OK,
                Err(e) => {
                    eprintln!("error: cannot write the answer: {e}");
                    exit::FAILURE
                }
            }
        }
        Err(HistoryError::BadSelector(e)) => {
            eprintln!("error: {e}");
            exit::USAGE
        }
        Err(HistoryError::Store(e)) => fail(&e.into()),
        Err(e) => {
            eprintln!("error: {e}");
            exit::FAILURE
        }
    }
}

/// One compact document (answers run to tens of megabytes; `jq .` pretty-prints).
fn json(v: &impl serde::Serialize) -> String {
    let mut s = serde_json::to_string(v).unwrap_or_default();
    s.push('\n');
    s
}

pub use crate::history::parse_time;
