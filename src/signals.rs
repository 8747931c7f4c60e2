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

/// Exit status of a process that lost a peer of its timely cluster (EX_TEMPFAIL: restart it).
pub const PEER_LOST_EXIT: i32 = 75;

/// Makes the process exit with [`PEER_LOST_EXIT`] as soon as its timely cluster loses a
/// member. Timely's network threads panic with "timely communication error" when a peer's
/// connection ends without a clean shutdown (the peer process died: its kernel closed the
/// socket), but the worker threads would wait for that peer's progress forever. Exiting lets
/// the orchestrator restart the cluster, which resumes from the last checkpoint. A peer host
/// that vanishes without closing its connections is not seen here; `/healthz` fails after
/// `http.stall_secs` then.
pub fn exit_on_peer_loss() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.starts_with("timely communication error") {
            tracing::error!(
                error = message,
                exit_status = PEER_LOST_EXIT,
                "lost a peer of the timely cluster: exiting so that the cluster is restarted \
                 (it resumes from the last checkpoint)"
            );
            // Lets the log line (and a Sentry report) leave before the process ends.
            std::thread::sleep(std::time::Duration::from_millis(200));
            std::process::exit(PEER_LOST_EXIT);
        }
        previous(info);
    }));
}
