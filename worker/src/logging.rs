//! Tracing output: `pretty` on a terminal, `json` otherwise (`LOG_FORMAT` overrides).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

pub const DEFAULT_FILTER: &str =
    "info,hyper=warn,reqwest=warn,sqlx=warn,sea_orm=warn,async_nats=info";

/// The demo prints its own story; only warnings and errors are logged unless RUST_LOG says more.
pub const QUIET_FILTER: &str = "warn,sea_orm_migration=warn";

/// Installs the subscriber. `directives` is `RUST_LOG` (read by the configuration); when absent
/// or invalid, `default_filter` applies.
pub fn init_with(
    format: Option<&str>,
    directives: Option<&str>,
    default_filter: &str,
) -> Result<(), String> {
    let filter = directives
        .and_then(|d| EnvFilter::try_new(d).ok())
        .unwrap_or_else(|| EnvFilter::new(default_filter));
    let json = match format.map(str::to_ascii_lowercase).as_deref() {
        Some("json") => true,
        Some("pretty") => false,
        None | Some("") => !std::io::stderr().is_terminal(),
        Some(other) => {
            return Err(format!(
                "LOG_FORMAT={other:?} is not supported; use `pretty` or `json`"
            ));
        }
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init()
    } else {
        builder.try_init()
    };
    // Already initialised (tests running several commands in one process) is fine.
    let _ = result;
    Ok(())
}
