//! GitLab's side of the hooks (docs/hooks.md, "Installing"): registering the connector's
//! webhook on the scope's top-level group (or a system hook), reading GitLab's view of it
//! (paused after 4 failures in a row, disabled after 40), and removing it. A hook is the
//! connector's when its URL ends with `/hooks/gitlab/<connector>`.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use futures::TryStreamExt;
use gitlab_connector::api::Hook;
use gitlab_connector::client::IdOrPath;
use gitlab_connector::{Error, Secret};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::connector::Connector;

/// A hook of the connector's, as GitLab shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Found {
    pub connector: String,
    /// `group` (with the group's path) or `system`.
    pub kind: &'static str,
    pub group: Option<String>,
    #[serde(flatten)]
    pub hook: Hook,
    /// GitLab sends its events (not paused or disabled).
    pub healthy: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error(
        "connector {0} has no webhook secret file: set GITLAB_WEBHOOK_SECRET_FILE (or its webhook_secret_file) to where the secret is to be kept"
    )]
    NoSecretFile(String),
    #[error(
        "connector {0} has no scope group to put a group webhook on (its scope is `instance` or unset): use --system on self-managed GitLab"
    )]
    NoGroup(String),
    #[error(
        "--url {0:?} is not an http(s) URL; give the public address GitLab reaches the receiver (HOOKS_LISTEN) at, e.g. https://worker.example.com"
    )]
    BadUrl(String),
    #[error("cannot write the webhook secret to {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("GitLab: {0}")]
    GitLab(#[from] Error),
}

/// The path every hook of `connector` ends with.
pub fn hook_path(connector: &str) -> String {
    format!("/hooks/gitlab/{connector}")
}

/// The full hook URL: `url` itself when it already ends with the connector's path.
pub fn hook_url(url: &str, connector: &str) -> Result<String, HookError> {
    let u = url.trim();
    if !(u.starts_with("https://") || u.starts_with("http://")) || u.len() > 2048 {
        return Err(HookError::BadUrl(url.to_string()));
    }
    let path = hook_path(connector);
    Ok(if u.ends_with(&path) {
        u.to_string()
    } else {
        format!("{}{path}", u.trim_end_matches('/'))
    })
}

/// The top-level group of the connector's scope.
async fn top_group(c: &Connector) -> Result<Option<String>, Error> {
    Ok(c.scope_path()
        .await?
        .and_then(|p| p.split('/').next().map(str::to_string)))
}

/// A new random secret: two random (v4) UUIDs, 244 bits from the operating system's generator, as hex.
pub fn new_secret() -> Secret {
    let a = uuid::Uuid::new_v4().simple().to_string();
    let b = uuid::Uuid::new_v4().simple().to_string();
    Secret::new(format!("{a}{b}"))
}

/// Replaces `path` with `secret` (mode 0600), written to a new file first and renamed over.
fn write_secret(path: &Path, secret: &Secret) -> Result<(), HookError> {
    let err = |source| HookError::Write {
        path: path.display().to_string(),
        source,
    };
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    // A folder that is not there yet is made private; an existing one is left as it is.
    if let Some(d) = dir.filter(|d| !d.exists()) {
        crate::files::private_dir(d).map_err(err)?;
    }
    let tmp = path.with_file_name(format!(
        ".{}.{:016x}.new",
        path.file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default(),
        fastrand::u64(..)
    ));
    let mut f = crate::files::create_private(&tmp).map_err(err)?;
    f.write_all(secret.expose().as_bytes())
        .and_then(|()| f.write_all(b"\n"))
        .and_then(|()| f.sync_all())
        .map_err(err)?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        err(e)
    })?;
    if let Some(d) = dir
        && let Ok(d) = std::fs::File::open(d)
    {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Registers the connector's hook at `url` with a new secret, written to the secret file
/// first (a hook that exists already with the URL is updated: running it twice leaves one).
pub async fn install(c: &Connector, url: &str, system: bool) -> Result<Found, HookError> {
    let id = c.settings.id.to_string();
    let url = hook_url(url, &id)?;
    let file = c
        .settings
        .webhook_secret_file
        .clone()
        .ok_or_else(|| HookError::NoSecretFile(id.clone()))?;
    let group = if system {
        None
    } else {
        Some(
            top_group(c)
                .await?
                .ok_or_else(|| HookError::NoGroup(id.clone()))?,
        )
    };
    let secret = new_secret();
    write_secret(&file, &secret)?;
    let client = &c.client;
    let (kind, hook) = match &group {
        None => {
            let old: Vec<Hook> = client.system_hooks().try_collect().await?;
            for h in old.iter().filter(|h| h.url == url) {
                client.delete_system_hook(h.id).await?;
            }
            ("system", client.add_system_hook(&url, &secret).await?)
        }
        Some(g) => {
            let gid = IdOrPath::parse(g);
            let old: Vec<Hook> = client.group_hooks(&gid).try_collect().await?;
            let hook = match old.iter().find(|h| h.url == url) {
                Some(h) => client.edit_group_hook(&gid, h.id, &url, &secret).await?,
                None => client.add_group_hook(&gid, &url, &secret).await?,
            };
            ("group", hook)
        }
    };
    Ok(Found {
        connector: id,
        kind,
        group,
        healthy: hook.is_executable(),
        hook,
    })
}

/// The connector's hooks on its top-level group and, where the token may list them, the
/// system hooks.
pub async fn find(c: &Connector) -> Result<Vec<Found>, Error> {
    let id = c.settings.id.to_string();
    let path = hook_path(&id);
    let mut out = Vec::new();
    if let Some(g) = top_group(c).await? {
        let hooks: Vec<Hook> = c
            .client
            .group_hooks(&IdOrPath::parse(&g))
            .try_collect()
            .await?;
        out.extend(
            hooks
                .into_iter()
                .filter(|h| h.url.ends_with(&path))
                .map(|h| Found {
                    connector: id.clone(),
                    kind: "group",
                    group: Some(g.clone()),
                    healthy: h.is_executable(),
                    hook: h,
                }),
        );
    }
    match c.client.system_hooks().try_collect::<Vec<Hook>>().await {
        Ok(hooks) => out.extend(
            hooks
                .into_iter()
                .filter(|h| h.url.ends_with(&path))
                .map(|h| Found {
                    connector: id.clone(),
                    kind: "system",
                    group: None,
                    healthy: h.is_executable(),
                    hook: h,
                }),
        ),
        // Not an administrator (or GitLab.com): there are no system hooks to see.
        Err(Error::Forbidden { .. }) => {}
        Err(e) if e.is_not_found() => {}
        Err(e) => return Err(e),
    }
    Ok(out)
}

/// Removes the connector's group hooks and, with `system`, its system hooks; how many.
pub async fn uninstall(c: &Connector, system: bool) -> Result<usize, Error> {
    let mut removed = 0;
    for f in find(c).await? {
        match (f.kind, &f.group) {
            ("group", Some(g)) => {
                c.client
                    .delete_group_hook(&IdOrPath::parse(g), f.hook.id)
                    .await?;
                removed += 1;
            }
            ("system", _) if system => {
                c.client.delete_system_hook(f.hook.id).await?;
                removed += 1;
            }
            _ => {}
        }
    }
    Ok(removed)
}

/// Checks GitLab's view of the connector's hooks every `every`: the gauge
/// `gitlab_worker_hook_healthy{connector}` is 1 while one is installed and none is paused or
/// disabled, else 0 with a log line saying why.
pub async fn watch_health(c: std::sync::Arc<Connector>, every: Duration, stop: CancellationToken) {
    let id = c.settings.id.to_string();
    loop {
        let healthy = match find(&c).await {
            Ok(found) if found.is_empty() => {
                tracing::warn!(connector = %id, "no GitLab webhook sends this connector's events: run `gitlab-worker hooks install`");
                false
            }
            Ok(found) => {
                for f in found.iter().filter(|f| !f.healthy) {
                    tracing::warn!(
                        connector = %id,
                        hook = f.hook.id,
                        kind = f.kind,
                        alert_status = f.hook.alert_status.as_deref().unwrap_or("-"),
                        disabled_until = ?f.hook.disabled_until,
                        "GitLab stopped sending this webhook's events (it failed too often); changes wait for the reconcile until it is fixed"
                    );
                }
                found.iter().all(|f| f.healthy)
            }
            Err(e) => {
                tracing::warn!(connector = %id, "cannot read the webhooks' state from GitLab: {e}");
                false
            }
        };
        metrics::gauge!("gitlab_worker_hook_healthy", "connector" => id.clone()).set(if healthy {
            1.0
        } else {
            0.0
        });
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hook_url_ends_with_the_connectors_path_once() {
        assert_eq!(
            hook_url("https://w.example.com/", "default").unwrap(),
            "https://w.example.com/hooks/gitlab/default"
        );
        assert_eq!(
            hook_url("https://w.example.com/hooks/gitlab/default", "default").unwrap(),
            "https://w.example.com/hooks/gitlab/default"
        );
        assert!(hook_url("ftp://x", "default").is_err());
        assert!(hook_url("worker.example.com", "default").is_err());
    }

    #[test]
    fn secrets_are_new_each_time_and_written_private() {
        use std::os::unix::fs::PermissionsExt;
        let (a, b) = (new_secret(), new_secret());
        assert_ne!(a.expose(), b.expose());
        assert_eq!(a.expose().len(), 64);
        let dir = std::env::temp_dir().join(format!("hook-secret-{}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("secret");
        std::fs::write(&path, "old").unwrap();
        write_secret(&path, &a).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap().trim(), a.expose());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "no file left behind"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
