//! The dead letter: a record that could not be used, from a file or a topic, with why. It
//! imports nothing of the crate, so the input side (which makes dead letters) and the output
//! side (which writes them) both use it without depending on each other.

use serde::{Deserialize, Serialize};

/// A record that could not be used: a line of replay's `dead_letters.jsonl`, a record on
/// `stockcast.dead-letters`. The worker's only dead-letter type; where the record came from
/// and what of it is repeated depend on the input (a row of a file, a record on a topic), and
/// the JSON holds those fields at the top level:
///
/// ```text
/// {"file":"sales.csv","line":7,"reason":"malformed","detail":"...","record":"..."}
/// {"topic":"stockcast.sales","partition":0,"offset":41,"reason":"malformed","detail":"...",
///  "key":null,"value":"...","value_bytes":3,"value_truncated":false}
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeadLetterRecord {
    /// Where the record came from.
    #[serde(flatten)]
    pub source: DeadSource,
    /// Stable reason code (`malformed`, `missing_field`, `too_late`, ...).
    pub reason: String,
    /// Human-readable detail.
    pub detail: String,
    /// What of the record is repeated.
    #[serde(flatten)]
    pub content: DeadContent,
    /// The exact bytes of a refused Kafka value (at most
    /// [`crate::pipeline::stream::MAX_DEAD_VALUE_BYTES`]) and their full length: they travel
    /// beside the JSON, in the Kafka header [`crate::kafka::wire::ORIGINAL_VALUE_HEADER`].
    #[serde(skip)]
    pub original: Option<(Vec<u8>, usize)>,
}

/// Where a dead letter's record came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DeadSource {
    /// A record of an input topic (or, for `undeliverable`, of an output topic; partition and
    /// offset -1).
    Topic {
        /// The topic.
        topic: String,
        /// Its partition.
        partition: i32,
        /// Its offset.
        offset: i64,
    },
    /// A row of a dataset file.
    File {
        /// File name.
        file: String,
        /// 1-based line number.
        line: u64,
    },
}

/// What a dead letter repeats of its record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DeadContent {
    /// A file row, as read (or as decoded, where it was refused later).
    Row {
        /// The row's text.
        record: String,
    },
    /// A Kafka record's key and value.
    Message {
        /// The key, as text where it is UTF-8 (else lossily).
        key: Option<String>,
        /// The value, as text where it is UTF-8 (else lossily); at most
        /// [`crate::pipeline::stream::MAX_DEAD_VALUE_BYTES`] of the original: see `value_bytes`.
        value: Option<String>,
        /// The original value's length in bytes.
        #[serde(default)]
        value_bytes: usize,
        /// Whether `value` (and the header) hold only the start of the original value.
        #[serde(default)]
        value_truncated: bool,
    },
}

impl std::fmt::Display for DeadSource {
    /// `file:line`, or `topic/partition@offset`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeadSource::Topic {
                topic,
                partition,
                offset,
            } => write!(f, "{topic}/{partition}@{offset}"),
            DeadSource::File { file, line } => write!(f, "{file}:{line}"),
        }
    }
}

impl DeadLetterRecord {
    /// The dead letter of row `line` of `file`.
    pub fn row(file: &str, line: u64, reason: &str, detail: String, record: String) -> Self {
        DeadLetterRecord {
            source: DeadSource::File {
                file: file.to_string(),
                line,
            },
            reason: reason.to_string(),
            detail,
            content: DeadContent::Row { record },
            original: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::json;

    #[test]
    fn both_kinds_of_dead_letter_keep_their_json_and_read_back() {
        let row = DeadLetterRecord::row("sales.csv", 7, "malformed", "bad qty".into(), "x".into());
        let topic = DeadLetterRecord {
            source: DeadSource::Topic {
                topic: "t".into(),
                partition: 0,
                offset: 41,
            },
            reason: "malformed".into(),
            detail: "d".into(),
            content: DeadContent::Message {
                key: None,
                value: Some("v\u{0}".into()),
                value_bytes: 3,
                value_truncated: false,
            },
            original: None,
        };
        let row_json =
            r#"{"file":"sales.csv","line":7,"reason":"malformed","detail":"bad qty","record":"x"}"#;
        let topic_json = r#"{"topic":"t","partition":0,"offset":41,"reason":"malformed","detail":"d","key":null,"value":"v\u0000","value_bytes":3,"value_truncated":false}"#;
        let json = |r: &DeadLetterRecord| String::from_utf8(json::to_vec(r).unwrap()).unwrap();
        assert_eq!(json(&row), row_json);
        assert_eq!(json(&topic), topic_json);
        for (record, text) in [(row, row_json), (topic, topic_json)] {
            let back: DeadLetterRecord = serde_json::from_str(text).unwrap();
            assert_eq!(back, record);
        }
        // A consumer of the topic written before value_bytes existed.
        let old = r#"{"topic":"t","partition":1,"offset":2,"reason":"r","detail":"d","key":"k","value":null}"#;
        let back: DeadLetterRecord = serde_json::from_str(old).unwrap();
        assert!(matches!(
            back.content,
            DeadContent::Message { value_bytes: 0, .. }
        ));
    }
}
