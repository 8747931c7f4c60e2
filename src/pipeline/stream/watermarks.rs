//! Asking the broker where silent partitions end, on a thread and client of the worker's own.
//!
//! A worker counts a silent partition as idle only once the broker confirmed that nothing is
//! left to read in it (`feeder::Feeder::check_idle`). The request may take long on a slow or
//! loaded broker, and never returns during an outage until its timeout: made on the worker's
//! thread, it would stop the worker's polling and stepping meanwhile. Here a thread of its own
//! makes one request at a time and hands back the answer; the worker asks about the next
//! partition once the last answer is in.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::kafka::wire::Partition;
use crate::pipeline::source::{Ends, PollError};

use super::options::*;

/// One worker's watermark requests.
pub(super) struct Watermarks {
    asks: mpsc::Sender<Ask>,
    answers: mpsc::Receiver<Answer>,
    /// The partition (index into the feeder's) asked about and not answered yet.
    pending: Option<usize>,
    /// How long recent successful answers took: the slowest, decaying by a tenth per answer.
    latency: Duration,
}

struct Ask {
    part: usize,
    partition: Partition,
}

/// The broker's answer about one partition.
pub(super) struct Answer {
    /// The partition, as an index into the feeder's.
    pub(super) part: usize,
    /// When the request was sent: the answer tells how things stood no earlier than this.
    pub(super) asked: Instant,
    /// How long the answer took.
    pub(super) took: Duration,
    /// Low and high watermarks.
    pub(super) result: Result<(i64, i64), PollError>,
}

impl Watermarks {
    /// Starts the requesting thread on `source`. The thread ends after its current request
    /// once this is dropped.
    pub(super) fn spawn(source: Box<dyn Ends>, worker: usize) -> std::io::Result<Watermarks> {
        let (asks, asked) = mpsc::channel::<Ask>();
        let (answer, answers) = mpsc::channel();
        std::thread::Builder::new()
            .name(format!("stockcast-idle-{worker}"))
            .spawn(move || {
                for ask in asked {
                    let asked = Instant::now();
                    let p = &ask.partition;
                    let result = source.ends(&p.topic, p.partition, IDLE_CHECK_TIMEOUT);
                    let done = Answer {
                        part: ask.part,
                        asked,
                        took: asked.elapsed(),
                        result,
                    };
                    if answer.send(done).is_err() {
                        return;
                    }
                }
            })?;
        Ok(Watermarks {
            asks,
            answers,
            pending: None,
            latency: Duration::ZERO,
        })
    }

    /// Whether a request is still unanswered.
    pub(super) fn busy(&self) -> bool {
        self.pending.is_some()
    }

    /// Asks where `partition` (the feeder's `part`) ends, unless a request is pending.
    pub(super) fn ask(&mut self, part: usize, partition: &Partition) {
        if self.pending.is_some() {
            return;
        }
        let ask = Ask {
            part,
            partition: partition.clone(),
        };
        // A send fails only once the thread is gone (it cannot panic on its own): then
        // nothing is ever confirmed idle, which holds time back but loses nothing.
        if self.asks.send(ask).is_ok() {
            self.pending = Some(part);
        }
    }

    /// The answers that arrived since the last call.
    pub(super) fn answers(&mut self) -> Vec<Answer> {
        let answers: Vec<Answer> = self.answers.try_iter().collect();
        for a in &answers {
            if self.pending == Some(a.part) {
                self.pending = None;
            }
            if a.result.is_ok() {
                self.latency = a.took.max(self.latency.mul_f64(0.9));
            }
        }
        answers
    }

    /// How long an answer that a partition is caught up stays good, for a worker reading
    /// `parts` partitions. Partitions are asked about one at a time, so a round over all of
    /// them takes `parts` answers: a window shorter than two rounds would rarely see every
    /// partition confirmed at once, and time would never pass a silent partition. Failed
    /// requests (an outage) do not lengthen it, so during an outage old confirmations lapse.
    pub(super) fn lasts(&self, parts: usize) -> Duration {
        let parts = u32::try_from(parts).unwrap_or(u32::MAX);
        IDLE_RECHECK * 3 + self.latency.saturating_mul(parts.saturating_mul(2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confirmations_last_two_rounds_of_the_slowest_recent_answer() {
        let (asks, _asked) = mpsc::channel();
        let (answer, answers) = mpsc::channel();
        let mut w = Watermarks {
            asks,
            answers,
            pending: Some(3),
            latency: Duration::ZERO,
        };
        assert_eq!(w.lasts(12), IDLE_RECHECK * 3);
        let t0 = Instant::now();
        answer
            .send(Answer {
                part: 3,
                asked: t0,
                took: Duration::from_millis(400),
                result: Ok((0, 10)),
            })
            .unwrap();
        let got = w.answers();
        assert_eq!(got.len(), 1);
        assert!(!w.busy());
        assert_eq!(
            w.lasts(12),
            IDLE_RECHECK * 3 + Duration::from_millis(400 * 24)
        );
        // A failed request (an outage) does not stretch the window.
        answer
            .send(Answer {
                part: 3,
                asked: t0,
                took: IDLE_CHECK_TIMEOUT,
                result: Err(PollError("no answer".into())),
            })
            .unwrap();
        w.answers();
        assert_eq!(w.lasts(1), IDLE_RECHECK * 3 + Duration::from_millis(800));
        // A faster answer lets it shrink, a tenth at a time.
        answer
            .send(Answer {
                part: 0,
                asked: t0,
                took: Duration::from_millis(10),
                result: Ok((0, 0)),
            })
            .unwrap();
        w.answers();
        assert_eq!(w.lasts(1), IDLE_RECHECK * 3 + Duration::from_millis(720));
    }
}
