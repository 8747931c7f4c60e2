//! Graceful shutdown on SIGINT and SIGTERM.
//!
//! The first signal sets the run's stop flag: the workers stop consuming, close the open epoch,
//! and the sink publishes and commits what it holds before the process exits 0. A second
//! signal exits at once with status 130, leaving offsets uncommitted (nothing is lost: the
//! next run rebuilds from the committed point).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Watches for SIGINT and SIGTERM on a thread of its own and sets `stop` on the first.
pub fn stop_on_signals(stop: Arc<AtomicBool>) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            runtime.block_on(async move {
                use tokio::signal::unix::{signal, SignalKind};
                let (Ok(mut term), Ok(mut int)) = (
                    signal(SignalKind::terminate()),
                    signal(SignalKind::interrupt()),
                ) else {
                    tracing::error!("cannot watch SIGTERM/SIGINT: they will kill the process");
                    return;
                };
                for n in 0.. {
                    let name = tokio::select! {
                        _ = term.recv() => "SIGTERM",
                        _ = int.recv() => "SIGINT",
                    };
                    if n > 0 {
                        tracing::warn!(signal = name, "second signal: exiting now");
                        std::process::exit(130);
                    }
                    tracing::info!(
                        signal = name,
                        "stopping: closing the open epoch, publishing and committing"
                    );
                    stop.store(true, Ordering::SeqCst);
                }
            });
        })?;
    Ok(())
}
