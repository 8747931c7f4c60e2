//! The Kafka client settings every producer, consumer and admin client starts from, the input
//! topics, which worker reads which partition, and the producer context of `load` and the demo.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::producer::{BaseProducer, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientConfig, ClientContext};

use crate::config::KafkaConfig;
use crate::source::files::FileKind;

/// The client configuration every producer, consumer and admin client starts from.
pub fn client_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &kafka.brokers);
    for (k, v) in &kafka.client {
        c.set(k, v);
    }
    c
}

/// How long [`Reporting::flush`] waits for delivery reports at a time.
const FLUSH_WAIT: Duration = Duration::from_millis(4);
/// How long each of its calls to librdkafka's flush lasts.
const FLUSH_KICK_MS: i32 = 1;

/// A producer whose delivery reports wake the thread waiting for them as they arrive.
///
/// rust-rdkafka's `poll(timeout)` polls until its deadline, and hands librdkafka the time left
/// in whole milliseconds, rounded down: once less than one is left it polls without waiting,
/// again and again, until the deadline passes. Every 4 ms wait of the sink's flush ended that
/// way (6-8% of the sink writer's samples in profiles of the kafka bench with
/// `catch_up = "every_epoch"`). So librdkafka writes to an eventfd when a report (or any other
/// event) lands in the producer's empty queue, the waiting thread sleeps in `poll(2)` on it,
/// and serves the queue without waiting. Where the eventfd cannot be made, it waits as
/// rust-rdkafka does.
pub struct Reporting<C: ProducerContext> {
    /// Dropped before `producer` (fields drop in order): librdkafka's handle must outlive
    /// every reference to its queues.
    signal: Option<ReportSignal>,
    producer: BaseProducer<C>,
}

impl<C: ProducerContext> Reporting<C> {
    pub fn new(producer: BaseProducer<C>) -> Reporting<C> {
        let signal = ReportSignal::new(&producer)
            .inspect_err(|e| tracing::debug!(error = %e, "delivery reports polled, no eventfd"))
            .ok();
        Reporting { signal, producer }
    }

    /// Serves the delivery reports that arrive within `timeout`. With the eventfd it returns as
    /// soon as some were served; without, at the timeout.
    pub fn serve(&self, timeout: Duration) {
        match &self.signal {
            Some(signal) => signal.serve(&self.producer, timeout),
            None => self.producer.poll(timeout),
        }
    }

    /// Sends what the producer holds, lingering batches too, and serves its delivery reports,
    /// for up to `slice` or until none is outstanding.
    ///
    /// librdkafka sends a batch still within its `linger.ms` at once only while a call to its
    /// flush lasts. rust-rdkafka's `flush` calls it with no wait and then polls, so through it
    /// the last batches of every write waited out the linger (50 ms per chunk of forecasts: a
    /// tenth of the kafka bench's wall time). A flush call that lasts throughout costs CPU
    /// instead: while it lasts, librdkafka's broker thread spins on the batches the in-flight
    /// limit holds back (a fifth more CPU for the whole worker in that bench). So this serves
    /// the reports for up to [`FLUSH_WAIT`] at a time, and calls librdkafka's flush for
    /// [`FLUSH_KICK_MS`] only after a wait in which nothing was answered, when what is left is
    /// likely lingering. (With reports as events, as here, librdkafka's flush waits for them to
    /// be served, which this thread does between the calls.)
    pub fn flush(&self, slice: Duration) {
        let end = Instant::now() + slice;
        let mut left = self.producer.in_flight_count();
        while left > 0 && Instant::now() < end {
            self.serve(FLUSH_WAIT);
            let now = self.producer.in_flight_count();
            if now == left {
                // SAFETY: the handle is the producer's, alive while it is borrowed here, and
                // librdkafka's flush may be called from any thread.
                unsafe {
                    rdkafka::bindings::rd_kafka_flush(
                        self.producer.client().native_ptr(),
                        FLUSH_KICK_MS,
                    );
                }
            }
            left = now;
        }
    }
}

impl<C: ProducerContext> std::ops::Deref for Reporting<C> {
    type Target = BaseProducer<C>;

    fn deref(&self) -> &BaseProducer<C> {
        &self.producer
    }
}

/// An eventfd librdkafka writes to when an event lands in a producer's empty main queue (its
/// delivery reports go there), and the reference to that queue it holds.
struct ReportSignal {
    fd: OwnedFd,
    queue: NonNull<rdkafka::bindings::rd_kafka_queue_t>,
}

// SAFETY: the queue reference is librdkafka's, whose queue calls are thread-safe.
unsafe impl Send for ReportSignal {}
unsafe impl Sync for ReportSignal {}

/// What librdkafka writes to the eventfd: eventfds take 8-byte counts.
const WAKE: [u8; 8] = 1u64.to_ne_bytes();

impl ReportSignal {
    fn new<C: ProducerContext>(producer: &BaseProducer<C>) -> std::io::Result<ReportSignal> {
        // SAFETY: plain syscall; the result is checked before it is owned.
        let raw = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `raw` is a new descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: the handle is alive; the queue reference returned is released in `drop`,
        // which runs before the producer's (see `Reporting`).
        let queue =
            unsafe { rdkafka::bindings::rd_kafka_queue_get_main(producer.client().native_ptr()) };
        let queue = NonNull::new(queue)
            .ok_or_else(|| std::io::Error::other("librdkafka gave no main queue"))?;
        // SAFETY: librdkafka copies the payload; `fd` outlives the queue reference's io event,
        // which `drop` turns off first.
        unsafe {
            rdkafka::bindings::rd_kafka_queue_io_event_enable(
                queue.as_ptr(),
                fd.as_raw_fd(),
                WAKE.as_ptr().cast(),
                WAKE.len(),
            );
        }
        Ok(ReportSignal { fd, queue })
    }

    /// Waits up to `timeout` for the eventfd, then serves every event queued, without waiting.
    fn serve<C: ProducerContext>(&self, producer: &BaseProducer<C>, timeout: Duration) {
        if self.queued() == 0 {
            let mut wait = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // Whole milliseconds, rounded up: a wait is never cut short to nothing.
            let ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
            // SAFETY: one valid pollfd; an interrupted or failed wait only returns early.
            unsafe { libc::poll(&mut wait, 1, ms) };
        }
        let mut count = [0u8; 8];
        // SAFETY: reads at most 8 bytes into `count`; the fd is non-blocking, and an empty
        // eventfd only fails with EAGAIN.
        unsafe { libc::read(self.fd.as_raw_fd(), count.as_mut_ptr().cast(), count.len()) };
        // One event per call of a zero-timeout poll, as many as are queued now; each marks the
        // queue served, so an event that arrives meanwhile writes to the eventfd again, and
        // the next wait ends at once.
        for _ in 0..self.queued() {
            producer.poll(Duration::ZERO);
        }
    }

    fn queued(&self) -> usize {
        // SAFETY: the queue reference is held until `drop`.
        unsafe { rdkafka::bindings::rd_kafka_queue_length(self.queue.as_ptr()) }
    }
}

impl Drop for ReportSignal {
    fn drop(&mut self) {
        // SAFETY: turns the io event off before the eventfd closes, then releases the queue
        // reference taken in `new`, while the producer's handle is still alive.
        unsafe {
            rdkafka::bindings::rd_kafka_queue_io_event_enable(
                self.queue.as_ptr(),
                -1,
                std::ptr::null(),
                0,
            );
            rdkafka::bindings::rd_kafka_queue_destroy(self.queue.as_ptr());
        }
    }
}

/// A producer context counting records the broker did not acknowledge.
#[derive(Default)]
pub struct Acks {
    failed: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl Acks {
    /// Starts a new count.
    pub fn reset(&self) {
        self.failed.store(0, Ordering::Relaxed);
    }

    /// `Err` naming the count and the last error if any record failed since [`Acks::reset`].
    pub fn check(&self) -> Result<(), String> {
        let failed = self.failed.load(Ordering::Relaxed);
        if failed == 0 {
            return Ok(());
        }
        let last = self.last_error.lock().ok().and_then(|l| l.clone());
        Err(format!(
            "{failed} records not acknowledged (last error: {})",
            last.unwrap_or_default()
        ))
    }
}

impl ClientContext for Acks {}

impl ProducerContext for Acks {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            self.failed.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut last) = self.last_error.lock() {
                *last = Some(e.to_string());
            }
        }
    }
}

/// The input topics with their record kinds, in a fixed order.
pub fn input_topics(kafka: &KafkaConfig) -> [(FileKind, &str); 6] {
    FileKind::ALL.map(|kind| (kind, kafka.topics.input(kind)))
}

/// The worker that reads partition `partition` of every input topic.
pub fn partition_owner(partition: i32, partition_offset: u32, peers: usize) -> usize {
    ((partition as u64 + partition_offset as u64) % peers.max(1) as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::config::FromClientConfigAndContext;
    use rdkafka::producer::BaseRecord;

    /// A producer whose one record fails after 100 ms: no broker listens on port 1.
    fn failing() -> Reporting<Acks> {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", "127.0.0.1:1")
            .set("message.timeout.ms", "100");
        let producer = BaseProducer::from_config_and_context(&c, Acks::default()).unwrap();
        Reporting::new(producer)
    }

    #[test]
    fn a_delivery_report_ends_the_wait_and_is_served() {
        let p = failing();
        assert!(p.signal.is_some(), "no eventfd");
        p.send(BaseRecord::<(), [u8]>::to("t").payload(b"x"))
            .unwrap();
        let started = Instant::now();
        // Waits far longer than the report takes (librdkafka times messages out within about
        // a second): each ends when something was served (the report, or the failed
        // connections' errors before it), none at its timeout.
        let mut waits = 0;
        while p.in_flight_count() > 0 && started.elapsed() < Duration::from_secs(60) {
            p.serve(Duration::from_secs(30));
            waits += 1;
        }
        let waited = started.elapsed();
        assert_eq!(p.in_flight_count(), 0, "after {waited:?}");
        assert!(waited < Duration::from_secs(20), "{waited:?}");
        assert!(waits < 100, "{waits} waits in {waited:?}");
        assert!(p.context().check().is_err());
    }

    #[test]
    fn waits_sleep_rather_than_spin() {
        let p = failing();
        let started = Instant::now();
        let mut waits = 0;
        while started.elapsed() < Duration::from_millis(300) {
            p.serve(Duration::from_millis(50));
            waits += 1;
        }
        // Six 50 ms waits, and one more for each event served early: a spin would make
        // thousands.
        assert!(waits < 100, "{waits} waits");
        p.flush(Duration::from_millis(50));
    }

    #[test]
    fn partitions_spread_over_workers_with_the_offset() {
        let owners: Vec<usize> = (0..4).map(|p| partition_owner(p, 0, 2)).collect();
        assert_eq!(owners, vec![0, 1, 0, 1]);
        let owners: Vec<usize> = (0..4).map(|p| partition_owner(p, 1, 3)).collect();
        assert_eq!(owners, vec![1, 2, 0, 1]);
        assert_eq!(partition_owner(5, 0, 1), 0);
    }
}
