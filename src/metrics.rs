//! The worker's Prometheus metrics, declared once with their help texts.
//!
//! Labels come from bounded sets only: topic and partition (fixed by the topics' partition
//! counts), dead-letter reason (a fixed list of codes), sink name, model name and version (one
//! series at a time). Never a store or SKU.

use prometheus::{
    Counter, Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Every reason a record can be dead-lettered for: decoding (see
/// [`crate::decode::DecodeError::reason`]), naming, and the input stage's refusals.
pub const DEAD_LETTER_REASONS: [&str; 15] = [
    "malformed",
    "missing_field",
    "bad_number",
    "non_finite",
    "bad_time",
    "unknown_kind",
    "bad_bool",
    "invalid_value",
    "bad_id",
    "missing_key",
    "id_collision",
    "too_late",
    "before_epoch_zero",
    "future_time",
    "undeliverable",
];

/// A dead-letter reason: one of [`DEAD_LETTER_REASONS`].
pub type Reason = &'static str;

/// Reads a dead-letter reason sent between the processes of a cluster back into its code from
/// [`DEAD_LETTER_REASONS`], so that labels stay a bounded set.
pub fn dead_letter_reason<'de, D>(d: D) -> Result<Reason, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let text = <std::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(d)?;
    DEAD_LETTER_REASONS
        .iter()
        .find(|r| **r == text)
        .copied()
        .ok_or_else(|| serde::de::Error::custom(format!("unknown dead-letter reason `{text}`")))
}

/// The sinks whose writes are counted.
pub const SINKS: [&str; 3] = ["kafka", "postgres", "redis"];

/// Every metric of the worker, registered in one registry.
pub struct Metrics {
    registry: Registry,
    /// Every metric family's name, as declared.
    declared: Vec<String>,
    /// Input records consumed, by topic and partition.
    pub events_consumed: IntCounterVec,
    /// Records that could not be decoded or validated, by reason.
    pub decode_failures: IntCounterVec,
    /// Records refused and sent towards the dead-letter topic, by reason (counted when the
    /// worker decides, before the topic acknowledges).
    pub dead_letters: IntCounterVec,
    /// Dead letters acknowledged by the dead-letter topic, by reason.
    pub dead_letters_written: IntCounterVec,
    /// Dead letters decided and not yet acknowledged by the dead-letter topic.
    pub dead_letters_pending: IntGauge,
    /// Output records a sink refused for good (too large, not allowed), by sink and record kind;
    /// each is replaced by a small `undeliverable` dead letter.
    pub undeliverable: IntCounterVec,
    /// Events applied after their epoch had closed.
    pub late_events: IntCounter,
    /// Records between the position read and the partition's end, by topic and partition.
    pub consumer_lag: IntGaugeVec,
    /// Seconds the watermark is behind the wall clock.
    pub watermark_lag_seconds: Gauge,
    /// Seconds the end of the last closed epoch is behind the wall clock.
    pub epoch_lag_seconds: Gauge,
    /// Epochs closed.
    pub epochs_closed: IntCounter,
    /// Series whose features changed, per advance.
    pub keys_changed: Histogram,
    /// Series scored, per advance.
    pub keys_scored: Histogram,
    /// Seconds the output path waited for the scoring threads in one advance.
    pub scoring_seconds: Histogram,
    /// Series the baseline scored because the model could not.
    pub scoring_fallbacks: IntCounter,
    /// Forecasts not published because a later epoch of the same advance had a newer one.
    pub forecasts_superseded: IntCounter,
    /// Times a worker stopped reading because its process held `[output] max_held_series`.
    pub input_paused: IntCounter,
    /// Seconds the workers did not read because their process held `[output]
    /// max_held_series`, or too many advances waited to be closed.
    pub input_paused_seconds: Counter,
    /// Events this process's workers read and hold for epochs that cannot close yet.
    pub held_events: IntGauge,
    /// Partitions paused because their worker held `kafka.max_held_events`.
    pub partitions_paused: IntGauge,
    /// Pauses of a partition because its worker held `kafka.max_held_events`.
    pub partition_pauses: IntCounter,
    /// Seconds from an advance's report to its last acknowledgement.
    pub epoch_seconds: Histogram,
    /// Records or batches written, by sink.
    pub sink_writes: IntCounterVec,
    /// Writes that failed, by sink.
    pub sink_failures: IntCounterVec,
    /// Writes retried, by sink.
    pub sink_retries: IntCounterVec,
    /// Seconds a sink took to write a part of an advance, retries included, by sink.
    pub sink_write_seconds: HistogramVec,
    /// Commits of this process's input offsets.
    pub offset_commits: IntCounter,
    /// 1 for the forecaster scoring now, labelled with its name and version.
    pub model_info: IntGaugeVec,
    /// Series held in the worker's state.
    pub state_keys: IntGauge,
    /// Records held in the feature state.
    pub state_records: IntGauge,
    /// Series the read API holds a latest forecast of.
    pub api_series: IntGauge,
    /// Seconds a worker's thread spent exporting its state for a checkpoint (the stall).
    pub checkpoint_export_seconds: Histogram,
    /// Seconds from a checkpoint's cut to its manifest (complete checkpoints).
    pub checkpoint_seconds: Histogram,
    /// Bytes of the newest complete checkpoint.
    pub checkpoint_bytes: IntGauge,
    /// Wall-clock Unix seconds the newest complete checkpoint was written (0: none).
    pub checkpoint_written_at: IntGauge,
    /// Seconds since the newest complete checkpoint was written (0 before the first).
    pub checkpoint_age_seconds: Gauge,
    /// Checkpoints written completely.
    pub checkpoints_written: IntCounter,
    /// Checkpoint parts that could not be written, by reason.
    pub checkpoint_failures: IntCounterVec,
    /// Restores from a checkpoint at start.
    pub checkpoint_restores: IntCounter,
    /// Checkpoints passed over at start because a file was corrupt or torn.
    pub checkpoint_corrupt: IntCounter,
    /// Partitions read from their beginning whose oldest records were deleted.
    pub history_lost_partitions: IntGauge,
    /// Records buffered at a restored checkpoint's cut that retention deleted before they
    /// were read again.
    pub records_lost: IntCounterVec,
}

/// Powers of two from 1 to 2^20: counts of series per advance.
fn count_buckets() -> Vec<f64> {
    (0..=20).map(|k| f64::from(1u32 << k)).collect()
}

/// 1 ms to ~33 s.
fn seconds_buckets() -> Vec<f64> {
    prometheus::exponential_buckets(0.001, 2.0, 16).unwrap_or_default()
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Self {
        let registry = Registry::new();
        let mut declared = Vec::new();
        macro_rules! reg {
            ($m:expr) => {{
                let m = $m.expect("metric definitions are valid");
                declared.extend(
                    prometheus::core::Collector::desc(&m)
                        .iter()
                        .map(|d| d.fq_name.clone()),
                );
                registry
                    .register(Box::new(m.clone()))
                    .expect("metric names are unique");
                m
            }};
        }
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels)
        };
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
        };
        Metrics {
            events_consumed: reg!(counter_vec(
                "stockcast_events_consumed_total",
                "Input records consumed, by topic and partition.",
                &["topic", "partition"]
            )),
            decode_failures: reg!(counter_vec(
                "stockcast_decode_failures_total",
                "Input records that could not be decoded or validated, by reason.",
                &["reason"]
            )),
            dead_letters: reg!(counter_vec(
                "stockcast_dead_letters_total",
                "Input records refused and sent to the dead-letter topic, by reason (counted when decided).",
                &["reason"]
            )),
            dead_letters_written: reg!(counter_vec(
                "stockcast_dead_letters_written_total",
                "Dead letters acknowledged by the dead-letter topic, by reason.",
                &["reason"]
            )),
            dead_letters_pending: reg!(IntGauge::new(
                "stockcast_dead_letters_pending",
                "Dead letters decided and not yet acknowledged by the dead-letter topic."
            )),
            undeliverable: reg!(counter_vec(
                "stockcast_undeliverable_total",
                "Output records a sink refused for good (too large, not authorized), by sink and record kind; each becomes an `undeliverable` dead letter.",
                &["sink", "record"]
            )),
            late_events: reg!(IntCounter::new(
                "stockcast_late_events_total",
                "Events that arrived after their epoch had closed (applied in the open epoch)."
            )),
            consumer_lag: reg!(IntGaugeVec::new(
                Opts::new(
                    "stockcast_consumer_lag_records",
                    "Records between the next offset to read and the partition's end."
                ),
                &["topic", "partition"]
            )),
            watermark_lag_seconds: reg!(Gauge::new(
                "stockcast_watermark_lag_seconds",
                "Seconds the global watermark (event time) is behind the wall clock."
            )),
            epoch_lag_seconds: reg!(Gauge::new(
                "stockcast_epoch_lag_seconds",
                "Seconds the end of the last closed epoch is behind the wall clock."
            )),
            epochs_closed: reg!(IntCounter::new(
                "stockcast_epochs_closed_total",
                "Epochs closed."
            )),
            keys_changed: reg!(histogram(
                "stockcast_keys_changed",
                "Series whose features changed, per advance of the closed epochs.",
                count_buckets()
            )),
            keys_scored: reg!(histogram(
                "stockcast_keys_scored",
                "Series scored, per advance of the closed epochs.",
                count_buckets()
            )),
            scoring_seconds: reg!(histogram(
                "stockcast_scoring_seconds",
                "Seconds the output path waited for the scoring threads in one advance (they score \
                 the next part while it writes the previous one).",
                seconds_buckets()
            )),
            scoring_fallbacks: reg!(IntCounter::new(
                "stockcast_scoring_fallbacks_total",
                "Series scored by the baseline because the model could not score their batch \
                 (the records name the baseline and the reason; the error is logged)."
            )),
            forecasts_superseded: reg!(IntCounter::new(
                "stockcast_forecasts_superseded_total",
                "Forecasts left out because a later epoch of the same advance changed the series \
                 again ([output] catch_up = \"latest\"): a backfill or restart catching up."
            )),
            input_paused: reg!(IntCounter::new(
                "stockcast_input_paused_total",
                "Times a worker stopped reading and feeding the dataflow because its process held \
                 [output] max_held_series changed series its sinks had not written."
            )),
            input_paused_seconds: reg!(Counter::new(
                "stockcast_input_paused_seconds_total",
                "Seconds the workers spent not reading (summed over workers) because their \
                 process held [output] max_held_series changed series its sinks had not written, \
                 or 64 advances waited to be closed: how long the output path held the input back."
            )),
            held_events: reg!(IntGauge::new(
                "stockcast_held_events",
                "Events this process's workers read and hold for epochs that cannot close yet \
                 (event time waits on a slower, silent or unsettled partition)."
            )),
            partitions_paused: reg!(IntGauge::new(
                "stockcast_partitions_paused",
                "Input partitions this process's workers paused because they held \
                 [kafka] max_held_events events for epochs that cannot close yet."
            )),
            partition_pauses: reg!(IntCounter::new(
                "stockcast_partition_pauses_total",
                "Times a worker paused an input partition because it held [kafka] \
                 max_held_events events for epochs that cannot close yet."
            )),
            epoch_seconds: reg!(histogram(
                "stockcast_epoch_seconds",
                "Seconds from an advance reaching the sink to every output acknowledged.",
                seconds_buckets()
            )),
            sink_writes: reg!(counter_vec(
                "stockcast_sink_writes_total",
                "Records written and acknowledged, by sink.",
                &["sink"]
            )),
            sink_failures: reg!(counter_vec(
                "stockcast_sink_failures_total",
                "Writes that failed, by sink.",
                &["sink"]
            )),
            sink_retries: reg!(counter_vec(
                "stockcast_sink_retries_total",
                "Writes retried, by sink.",
                &["sink"]
            )),
            sink_write_seconds: reg!(HistogramVec::new(
                HistogramOpts::new(
                    "stockcast_sink_write_seconds",
                    "Seconds a sink took to write one part of an advance (up to 16,384 forecasts, \
                     or its progress records), from the first attempt to the acknowledgement, \
                     retries included; by sink."
                )
                .buckets(seconds_buckets()),
                &["sink"]
            )),
            offset_commits: reg!(IntCounter::new(
                "stockcast_offset_commits_total",
                "Commits of input offsets by this process (for the partitions its workers read), \
                 each after every process's outputs below them were acknowledged."
            )),
            model_info: reg!(IntGaugeVec::new(
                Opts::new(
                    "stockcast_model_info",
                    "1 for the forecaster scoring now, with its name and version."
                ),
                &["name", "version"]
            )),
            state_keys: reg!(IntGauge::new(
                "stockcast_state_keys",
                "Series known to the worker."
            )),
            state_records: reg!(IntGauge::new(
                "stockcast_state_records",
                "Records in the feature state of this process's workers (per-series periods with data in the window, reference attributes, promotions, clocks)."
            )),
            api_series: reg!(IntGauge::new(
                "stockcast_api_series",
                "Series whose latest forecast record the read API serves."
            )),
            checkpoint_export_seconds: reg!(histogram(
                "stockcast_checkpoint_export_seconds",
                "Seconds a timely worker spent exporting its state for a checkpoint (it processes nothing meanwhile).",
                seconds_buckets()
            )),
            checkpoint_seconds: reg!(histogram(
                "stockcast_checkpoint_seconds",
                "Seconds from a checkpoint's cut to its manifest being written.",
                seconds_buckets()
            )),
            checkpoint_bytes: reg!(IntGauge::new(
                "stockcast_checkpoint_bytes",
                "Bytes of the newest complete checkpoint."
            )),
            checkpoint_written_at: reg!(IntGauge::new(
                "stockcast_checkpoint_written_timestamp_seconds",
                "Unix time the newest complete checkpoint was written (0: none this run)."
            )),
            checkpoint_age_seconds: reg!(Gauge::new(
                "stockcast_checkpoint_age_seconds",
                "Seconds since the newest complete checkpoint was written (0 before the first)."
            )),
            checkpoints_written: reg!(IntCounter::new(
                "stockcast_checkpoints_total",
                "Checkpoints written completely (manifest included)."
            )),
            checkpoint_failures: reg!(counter_vec(
                "stockcast_checkpoint_failures_total",
                "Checkpoint parts or manifests not written, by reason (io, busy).",
                &["reason"]
            )),
            checkpoint_restores: reg!(IntCounter::new(
                "stockcast_checkpoint_restores_total",
                "Restores from a checkpoint at start."
            )),
            checkpoint_corrupt: reg!(IntCounter::new(
                "stockcast_checkpoint_corrupt_total",
                "Checkpoints passed over at start because a file was corrupt or torn."
            )),
            history_lost_partitions: reg!(IntGauge::new(
                "stockcast_history_lost_partitions",
                "Input partitions read from their beginning (no checkpoint) whose earliest offset is above 0: retention deleted history the features may need."
            )),
            records_lost: reg!(counter_vec(
                "stockcast_records_lost_total",
                "Input records that were buffered, not yet applied, at the restored checkpoint's cut and that retention deleted before the worker read them again: their events are lost.",
                &["topic", "partition"]
            )),
            registry,
            declared,
        }
        .touch()
    }

    /// Creates the series of every known label value, so each shows (at 0) before it first
    /// counts.
    fn touch(self) -> Self {
        for reason in DEAD_LETTER_REASONS {
            self.dead_letters.with_label_values(&[reason]);
            self.dead_letters_written.with_label_values(&[reason]);
            if reason != "too_late" && reason != "undeliverable" {
                self.decode_failures.with_label_values(&[reason]);
            }
        }
        for record in ["forecast", "dead_letter", "progress"] {
            self.undeliverable.with_label_values(&["kafka", record]);
        }
        for sink in SINKS {
            self.sink_writes.with_label_values(&[sink]);
            self.sink_failures.with_label_values(&[sink]);
            self.sink_retries.with_label_values(&[sink]);
        }
        for reason in ["io", "busy"] {
            self.checkpoint_failures.with_label_values(&[reason]);
        }
        self
    }

    /// Marks `name`/`version` as the forecaster scoring now (and no other).
    pub fn set_model(&self, name: &str, version: &str) {
        self.model_info.reset();
        self.model_info.with_label_values(&[name, version]).set(1);
    }

    /// The names of every metric family declared (a labelled family is exported once it has
    /// a series).
    pub fn names(&self) -> Vec<String> {
        self.declared.clone()
    }

    /// Every metric in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for well-formed families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_renders_with_its_help() {
        let m = Metrics::new();
        m.events_consumed.with_label_values(&["sales", "0"]).inc();
        m.dead_letters.with_label_values(&["malformed"]).inc();
        m.decode_failures.with_label_values(&["malformed"]).inc();
        m.consumer_lag.with_label_values(&["sales", "0"]).set(3);
        m.records_lost.with_label_values(&["sales", "0"]);
        m.sink_writes.with_label_values(&["kafka"]).inc();
        m.sink_failures.with_label_values(&["kafka"]);
        m.sink_retries.with_label_values(&["kafka"]);
        m.sink_write_seconds
            .with_label_values(&["kafka"])
            .observe(0.1);
        m.set_model("baseline-ma", "1");
        m.set_model("stockcast-mlp", "abc");
        let text = m.render();
        for name in m.names() {
            assert!(text.contains(&format!("# HELP {name} ")), "{name}");
        }
        assert!(text.contains("stockcast_model_info{name=\"stockcast-mlp\",version=\"abc\"} 1"));
        assert!(
            !text.contains("baseline-ma"),
            "only the current model is reported"
        );
    }
}
