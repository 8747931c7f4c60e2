//! The sink producer's delivery reports, per attempt, and which refusals are for good.

use rdkafka::producer::{DeliveryResult, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientContext;

/// The broker's answers to one delivery attempt, by index into its batch.
#[derive(Default)]
pub(super) struct Answers {
    /// Which attempt the answers belong to (answers to an earlier one are ignored).
    pub(super) generation: u32,
    pub(super) answers: Vec<Option<Result<(), rdkafka::error::KafkaError>>>,
    pub(super) outstanding: usize,
}

/// The sink producer's context: records every delivery report of the current attempt.
#[derive(Default)]
pub struct SinkAcks(std::sync::Mutex<Answers>);

impl SinkAcks {
    /// Starts attempt `todo` of a batch of `len`; returns the attempt's generation.
    pub(super) fn start(&self, len: usize, todo: &[usize]) -> u32 {
        let mut a = self.0.lock().unwrap_or_else(|p| p.into_inner());
        a.generation = a.generation.wrapping_add(1);
        a.answers = vec![Some(Ok(())); len];
        for &i in todo {
            a.answers[i] = None;
        }
        a.outstanding = todo.len();
        a.generation
    }

    /// Records an answer given at once by `send`.
    pub(super) fn answer(&self, index: usize, result: Result<(), rdkafka::error::KafkaError>) {
        let mut a = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot @ None) = a.answers.get_mut(index) {
            *slot = Some(result);
            a.outstanding -= 1;
        }
    }

    pub(super) fn outstanding(&self) -> usize {
        self.0.lock().map(|a| a.outstanding).unwrap_or(0)
    }

    /// The answer to each of `todo` (`None`: none yet).
    pub(super) fn take(
        &self,
        todo: &[usize],
    ) -> Vec<(usize, Option<Result<(), rdkafka::error::KafkaError>>)> {
        let mut a = self.0.lock().unwrap_or_else(|p| p.into_inner());
        todo.iter()
            .map(|&i| (i, a.answers.get_mut(i).and_then(Option::take)))
            .collect()
    }
}

impl ClientContext for SinkAcks {}

impl ProducerContext for SinkAcks {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: usize) {
        let (generation, index) = ((opaque >> 32) as u32, opaque & 0xffff_ffff);
        let mut a = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if a.generation != generation {
            return;
        }
        let answer = result.as_ref().map(|_| ()).map_err(|(e, _)| e.clone());
        if let Some(slot @ None) = a.answers.get_mut(index) {
            *slot = Some(answer);
            a.outstanding -= 1;
        }
    }
}

/// Whether a broker or client error refuses this one record for good: producing it again
/// cannot succeed (too large, invalid, not authorized). Everything else is retried.
pub(super) fn refused_for_good(e: &rdkafka::error::KafkaError) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        e.rdkafka_error_code(),
        Some(
            C::MessageSizeTooLarge
                | C::InvalidMessageSize
                | C::MessageBatchTooLarge
                | C::InvalidRecord
                | C::InvalidTopic
                | C::TopicAuthorizationFailed
                | C::ClusterAuthorizationFailed
                | C::PolicyViolation
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::error::KafkaError;

    #[test]
    fn only_refusals_of_the_record_itself_are_permanent() {
        let produce = |code| KafkaError::MessageProduction(code);
        for code in [
            RDKafkaErrorCode::MessageSizeTooLarge,
            RDKafkaErrorCode::InvalidRecord,
            RDKafkaErrorCode::TopicAuthorizationFailed,
        ] {
            assert!(refused_for_good(&produce(code)), "{code:?}");
        }
        for code in [
            RDKafkaErrorCode::MessageTimedOut,
            RDKafkaErrorCode::AllBrokersDown,
            RDKafkaErrorCode::NotEnoughReplicas,
            RDKafkaErrorCode::UnknownTopicOrPartition,
        ] {
            assert!(!refused_for_good(&produce(code)), "{code:?}");
        }
    }

    #[test]
    fn answers_of_an_earlier_attempt_are_ignored() {
        let acks = SinkAcks::default();
        let first = acks.start(3, &[0, 1, 2]);
        acks.answer(1, Ok(()));
        let second = acks.start(3, &[0, 2]);
        assert_ne!(first, second);
        assert_eq!(acks.outstanding(), 2);
        acks.answer(2, Err(KafkaError::Canceled));
        let answers = acks.take(&[0, 2]);
        assert!(answers[0].1.is_none(), "no answer yet");
        assert!(matches!(answers[1].1, Some(Err(_))));
    }
}
