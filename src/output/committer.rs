//! Input offsets committed once every sink acknowledged an advance, on a thread of their own:
//! librdkafka's synchronous commit waits for the group coordinator for ever, so the output path
//! waits for its answer here, where a stop can cut the wait.

use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};

use super::retry::backoff;
use super::sink::{Context, OutputError};
use crate::config::Resolved;
use crate::kafka::client::client_config;
use crate::kafka::offsets::commit_metadata;
use crate::pipeline::stream::Commit;

/// How long a commit may go unanswered before each warning.
const WARN_EVERY: Duration = Duration::from_secs(30);

/// Why offsets were not committed.
#[derive(Debug, thiserror::Error)]
pub(super) enum CommitError {
    /// The group coordinator refused or failed the commit.
    #[error("offset commit: {0}")]
    Refused(#[from] KafkaError),
    /// The committer thread is gone.
    #[error("the offset committer thread stopped")]
    ThreadGone,
    /// The run stopped before the commit was answered.
    #[error("stopping before the offset commit was answered")]
    Stopped,
}

/// A thread that commits offsets under the worker's consumer group.
pub(super) struct Committer {
    requests: Sender<(u64, TopicPartitionList)>,
    answers: Receiver<(u64, Result<(), KafkaError>)>,
    next: u64,
}

impl Committer {
    /// A committer for `cfg`'s consumer group (never subscribed: it only commits).
    pub(super) fn new(cfg: &Resolved) -> Result<Committer, OutputError> {
        let consumer: BaseConsumer = client_config(&cfg.kafka)
            .set("group.id", &cfg.kafka.group_id)
            .set("enable.auto.commit", "false")
            .create()
            .map_err(|e| OutputError::Kafka {
                client: "offset committer",
                error: cfg.kafka.scrub(e),
            })?;
        let (requests, rx) = mpsc::channel::<(u64, TopicPartitionList)>();
        let (tx, answers) = mpsc::channel();
        std::thread::Builder::new()
            .name("stockcast-commit".into())
            .spawn(move || {
                for (seq, tpl) in rx {
                    if tx
                        .send((seq, consumer.commit(&tpl, CommitMode::Sync)))
                        .is_err()
                    {
                        return;
                    }
                }
            })?;
        Ok(Committer {
            requests,
            answers,
            next: 0,
        })
    }

    /// Commits `commit`'s offsets with its frontier in the metadata, retrying until the
    /// coordinator answers yes; `Err` only once the run stops first.
    pub(super) fn commit(
        &mut self,
        commit: &Commit,
        cx: &mut Context<'_>,
    ) -> Result<(), CommitError> {
        let mut tpl = TopicPartitionList::new();
        for (p, offset) in &commit.offsets {
            let mut e = tpl.add_partition(&p.topic, p.partition);
            if e.set_offset(Offset::Offset(*offset)).is_err() {
                continue;
            }
            e.set_metadata(commit_metadata(commit.frontier));
        }
        let mut attempt = 0u32;
        let started = Instant::now();
        loop {
            let e = match self.commit_once(&tpl, cx) {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            if cx.stop.requested() {
                tracing::warn!(error = %e, "stopping with uncommitted offsets");
                return Err(e);
            }
            cx.stats.retries += 1;
            tracing::warn!(error = %e, waited_s = started.elapsed().as_secs(), "offset commit failed; retrying");
            cx.stop.sleep(backoff(attempt));
            attempt += 1;
        }
    }

    /// One commit, waited for until it is answered or, once the run is stopping, until the
    /// grace ends.
    fn commit_once(
        &mut self,
        tpl: &TopicPartitionList,
        cx: &Context<'_>,
    ) -> Result<(), CommitError> {
        self.next += 1;
        let seq = self.next;
        self.requests
            .send((seq, tpl.clone()))
            .map_err(|_| CommitError::ThreadGone)?;
        let started = Instant::now();
        let mut warned = Duration::ZERO;
        loop {
            match self.answers.recv_timeout(Duration::from_millis(100)) {
                Ok((n, result)) if n == seq => return Ok(result?),
                // The answer to an earlier commit that was given up on.
                Ok(_) => continue,
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Err(CommitError::ThreadGone),
            }
            if cx.stop.past_grace() {
                return Err(CommitError::Stopped);
            }
            if started.elapsed() >= warned + WARN_EVERY {
                warned = started.elapsed();
                tracing::warn!(
                    waited_s = warned.as_secs(),
                    "the offset commit is not answered yet (group coordinator unreachable?)"
                );
            }
        }
    }
}
