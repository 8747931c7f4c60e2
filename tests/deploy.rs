//! The deployment files speak of metrics the worker exports: every `stockcast_*` name in the
//! Grafana dashboard and the alert rules exists in the registry (histograms through their
//! `_bucket`/`_sum`/`_count` series), and the dashboard shows every metric.

use std::collections::BTreeSet;
use std::path::Path;

use stockcast::metrics::Metrics;

/// Every `stockcast_...` token in `text`, with histogram series suffixes removed.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("stockcast_") {
        let start = i + at;
        let before_ok =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start;
        while end < bytes.len()
            && (bytes[end].is_ascii_lowercase()
                || bytes[end].is_ascii_digit()
                || bytes[end] == b'_')
        {
            end += 1;
        }
        if before_ok {
            let mut name = &text[start..end];
            for suffix in ["_bucket", "_sum", "_count"] {
                if let Some(base) = name.strip_suffix(suffix) {
                    if !base.ends_with("_total") {
                        name = base;
                    }
                }
            }
            out.insert(name.to_string());
        }
        i = end.max(start + 1);
    }
    out
}

fn read(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn dashboards_and_alerts_use_only_exported_metrics() {
    let exported: BTreeSet<String> = Metrics::new().names().into_iter().collect();
    let dashboard = read("deploy/grafana/stockcast.json");
    serde_json::from_str::<serde_json::Value>(&dashboard).expect("the dashboard is JSON");
    let alerts = read("deploy/prometheus/alerts.yaml");
    for (file, text) in [("dashboard", &dashboard), ("alerts", &alerts)] {
        let used = metric_names(text);
        assert!(!used.is_empty(), "{file} uses no metric");
        let unknown: Vec<&String> = used.difference(&exported).collect();
        assert!(
            unknown.is_empty(),
            "{file} uses metrics the worker does not export: {unknown:?}"
        );
    }
    let shown = metric_names(&dashboard);
    let missing: Vec<&String> = exported.difference(&shown).collect();
    assert!(
        missing.is_empty(),
        "the dashboard does not show {missing:?}"
    );
}

#[test]
fn the_name_scanner_reads_series_names() {
    let names = metric_names(
        "rate(stockcast_keys_changed_bucket[5m]) + stockcast_sink_writes_total x_stockcast_no",
    );
    let want: BTreeSet<String> = ["stockcast_keys_changed", "stockcast_sink_writes_total"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(names, want);
}
