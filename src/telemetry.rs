//! Logs and error reports: the tracing subscriber every command logs through, and optional
//! Sentry reporting for the long-running worker.
//!
//! Logs go to stderr, human-readable (coloured only on a terminal) or as JSON lines, filtered by
//! `RUST_LOG` (default `info`). With `[sentry] dsn` set, `run` also sends every `error!` event
//! (with its fields) to Sentry as an issue, earlier `warn!`/`info!` events riding along as
//! breadcrumbs, and a panic as a crash; without a DSN the Sentry layer does nothing.

use std::io::IsTerminal;

use sentry::integrations::tracing::{BreadcrumbLayer, ErrorLayer};
use tracing::Level;
use tracing_subscriber::filter::{filter_fn, LevelFilter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

use crate::config::SentryConfig;

/// Installs the subscriber: stderr logs plus the Sentry layer.
pub fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = if json {
        logs.json().boxed()
    } else {
        logs.with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
            .boxed()
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(logs)
        .with(BreadcrumbLayer::new().with_filter(filter_fn(|m| {
            matches!(*m.level(), Level::WARN | Level::INFO)
        })))
        .with(ErrorLayer::new().with_filter(LevelFilter::ERROR))
        .init();
}

/// Starts reporting to Sentry when `cfg` names a DSN (validated when the config resolved);
/// reports are flushed when the returned guard drops.
pub fn start_sentry(cfg: &SentryConfig) -> Option<sentry::ClientInitGuard> {
    if cfg.dsn.is_empty() {
        return None;
    }
    let mut options = sentry::ClientOptions::default();
    options.release = sentry::release_name!();
    options.environment = (!cfg.environment.is_empty()).then(|| cfg.environment.clone().into());
    let guard = sentry::init((cfg.dsn.as_str(), options));
    tracing::info!(dsn = %cfg.masked(), "reporting errors to Sentry");
    Some(guard)
}
