//! `gitlab-worker hooks install|status|uninstall` (docs/hooks.md, "Installing").

use std::io::Write;

use super::{HooksCommand, exit, fail};
use crate::hooks::manage;

pub async fn run(config: Option<&std::path::Path>, command: HooksCommand) -> u8 {
    let settings = match crate::config::Settings::load(config, true) {
        Ok(s) => s,
        Err(e) => return fail(&e.into()),
    };
    let connectors = match crate::app::connectors(&settings, false).await {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let wanted = match &command {
        HooksCommand::Install { connector, .. }
        | HooksCommand::Status { connector }
        | HooksCommand::Uninstall { connector, .. } => connector.clone(),
    };
    let chosen: Vec<_> = match &wanted {
        Some(id) => match connectors.iter().find(|(k, _)| k.as_str() == id) {
            Some((_, c)) => vec![c.clone()],
            None => {
                eprintln!(
                    "error: no connector {id:?} is configured; `gitlab-worker config show` lists them"
                );
                return exit::USAGE;
            }
        },
        None if matches!(command, HooksCommand::Install { .. }) && connectors.len() > 1 => {
            eprintln!("error: several connectors are configured: name one with --connector");
            return exit::USAGE;
        }
        None => connectors
            .values()
            .filter(|c| connectors.len() == 1 || c.settings.webhook_secret_file.is_some())
            .cloned()
            .collect(),
    };
    let mut out = std::io::stdout().lock();
    match command {
        HooksCommand::Install { url, system, .. } => {
            let c = &chosen[0];
            match manage::install(c, &url, system).await {
                Ok(found) => {
                    let _ = writeln!(out, "{}", serde_json::to_string(&found).unwrap_or_default());
                    eprintln!(
                        "the {} hook of connector {} sends to {}; its new secret is in {}",
                        found.kind,
                        found.connector,
                        found.hook.url,
                        c.settings
                            .webhook_secret_file
                            .as_ref()
                            .map(|p| p.display().to_string())
                            .unwrap_or_default()
                    );
                    exit::OK
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    match e {
                        manage::HookError::GitLab(_) | manage::HookError::Write { .. } => {
                            exit::FAILURE
                        }
                        _ => exit::USAGE,
                    }
                }
            }
        }
        HooksCommand::Status { .. } => {
            let mut healthy = true;
            for c in &chosen {
                match manage::find(c).await {
                    Ok(found) => {
                        if found.is_empty() {
                            healthy = false;
                            eprintln!(
                                "connector {}: no webhook installed (`gitlab-worker hooks install --url PUBLIC_URL`)",
                                c.settings.id
                            );
                        }
                        for f in found {
                            healthy &= f.healthy;
                            let _ =
                                writeln!(out, "{}", serde_json::to_string(&f).unwrap_or_default());
                        }
                    }
                    Err(e) => {
                        eprintln!("error: connector {}: {e}", c.settings.id);
                        return exit::FAILURE;
                    }
                }
            }
            if healthy { exit::OK } else { exit::FAILURE }
        }
        HooksCommand::Uninstall { system, .. } => {
            for c in &chosen {
                match manage::uninstall(c, system).await {
                    Ok(n) => eprintln!("connector {}: {n} webhook(s) removed", c.settings.id),
                    Err(e) => {
                        eprintln!("error: connector {}: {e}", c.settings.id);
                        return exit::FAILURE;
                    }
                }
            }
            exit::OK
        }
    }
}
