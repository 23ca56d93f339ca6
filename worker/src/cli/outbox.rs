//! `gitlab-worker outbox parked|dismiss`: results and events that could not be published
//! (docs/running.md, "Parked messages").

use std::path::Path;

use super::{OutboxCommand, exit, fail, settings_and_store};

pub async fn run(config: Option<&Path>, command: OutboxCommand) -> u8 {
    let store = match settings_and_store(config, false).await {
        Ok((_, store)) => store,
        Err(code) => return code,
    };
    let code = match command {
        OutboxCommand::Parked { json } => match store.parked_outbox().await {
            Ok(rows) => {
                for r in &rows {
                    if json {
                        println!(
                            "{}",
                            serde_json::json!({
                                "id": r.id, "msg_id": r.msg_id, "subject": r.subject,
                                "bytes": r.bytes, "parked_at": r.parked_at, "reason": r.reason,
                            })
                        );
                    } else {
                        println!(
                            "{}\t{}\t{}\t{} bytes\t{}\t{}",
                            r.id,
                            r.parked_at.to_rfc3339(),
                            r.subject,
                            r.bytes,
                            r.msg_id,
                            r.reason
                        );
                    }
                }
                if rows.is_empty() && !json {
                    eprintln!("no parked messages");
                }
                exit::OK
            }
            Err(e) => fail(&e.into()),
        },
        OutboxCommand::Dismiss { id, all } => {
            if id.is_none() && !all {
                eprintln!(
                    "error: name the parked message to dismiss (its id from `gitlab-worker outbox parked`) or give --all"
                );
                let _ = store.close().await;
                return exit::USAGE;
            }
            match store.dismiss_parked(id).await {
                Ok(n) => {
                    eprintln!("{n} parked message(s) dismissed");
                    if n == 0 && id.is_some() {
                        exit::FAILURE
                    } else {
                        exit::OK
                    }
                }
                Err(e) => fail(&e.into()),
            }
        }
    };
    let _ = store.close().await;
    code
}
