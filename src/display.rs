//! How the worker shows things to people: instants as RFC 3339 text, progress bars.

use chrono::{DateTime, Utc};

/// A progress bar on stderr, hidden unless `show`.
pub fn progress_bar(len: u64, template: &str, show: bool) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    if show {
        bar.set_style(
            indicatif::ProgressStyle::with_template(template)
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
    } else {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar
}

/// RFC 3339 text of an instant.
pub fn rfc3339(ts: i64) -> String {
    DateTime::<Utc>::from_timestamp(ts, 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| ts.to_string())
}
