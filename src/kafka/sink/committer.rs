//! Offset commits on a thread of their own.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::TopicPartitionList;

/// A thread that commits offsets: librdkafka's synchronous commit waits for the group
/// coordinator for ever, so the sink waits for its answer here, where a stop can cut the wait.
pub(super) struct Committer {
    pub(super) requests: std::sync::mpsc::Sender<(u64, TopicPartitionList)>,
    pub(super) answers: std::sync::mpsc::Receiver<(u64, Result<(), String>)>,
    pub(super) next: u64,
}

impl Committer {
    pub(super) fn start(consumer: BaseConsumer) -> std::io::Result<Committer> {
        let (requests, rx) = std::sync::mpsc::channel::<(u64, TopicPartitionList)>();
        let (tx, answers) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("stockcast-commit".into())
            .spawn(move || {
                for (seq, tpl) in rx {
                    let result = consumer
                        .commit(&tpl, CommitMode::Sync)
                        .map_err(|e| e.to_string());
                    if tx.send((seq, result)).is_err() {
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

    /// Queues a commit; returns its number.
    pub(super) fn send(&mut self, tpl: TopicPartitionList) -> Result<u64, String> {
        self.next += 1;
        self.requests
            .send((self.next, tpl))
            .map_err(|_| "the committer thread stopped".to_string())?;
        Ok(self.next)
    }

    /// The answer to commit `seq`, if it comes within `wait` (answers to earlier commits that
    /// were given up on are skipped).
    pub(super) fn answer(
        &self,
        seq: u64,
        wait: Duration,
    ) -> Result<Option<Result<(), String>>, String> {
        use std::sync::mpsc::RecvTimeoutError;
        let until = Instant::now() + wait;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.answers.recv_timeout(left) {
                Ok((n, result)) if n == seq => return Ok(Some(result)),
                Ok(_) => continue,
                Err(RecvTimeoutError::Timeout) => return Ok(None),
                Err(RecvTimeoutError::Disconnected) => {
                    return Err("the committer thread stopped".into())
                }
            }
        }
    }
}
