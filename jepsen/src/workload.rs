//! The workload, through an independent client: librdkafka (the `rdkafka` crate), as Jepsen's
//! Kafka queue workload does it.
//!
//! - Producer processes send unique values (per key) one at a time with an idempotent,
//!   `acks=all` producer, each to an explicit partition; a delivery report with an offset is
//!   `Ok`, anything else is indeterminate (`Info`): librdkafka may have written a batch whose
//!   answer it never saw.
//! - Consumer processes assign a random set of keys (sometimes seeking to the beginning), poll,
//!   and now and then crash: the consumer is dropped without closing and a new one starts.
//! - Subscriber processes join one consumer group and poll; each rebalance callback is recorded
//!   as an assignment (Jepsen allows poll-skip and nonmonotonic-poll across rebalances, and the
//!   core checker resets a process's poll order at an assignment). Their offsets are committed
//!   by librdkafka; the group checkers need member ids and generations, which librdkafka does
//!   not expose, so commits are not judged here (docs/jepsen.md).
//! - At the end, after the heal, every partition must take a write again (liveness), and a
//!   fresh consumer reads every key from the beginning up to its high watermark (the final read).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientContext;
use sluice_core::history::{Acks, Key, OpKind, Outcome, Reads, Value};
use sluice_core::rng::Rng;

use crate::recorder::Recorder;

/// The topics of the workload, each with [`PARTITIONS`] partitions and replication factor 3.
pub const TOPICS: [&str; 2] = ["jepsen-0", "jepsen-1"];
pub const PARTITIONS: i32 = 2;

/// Process numbers: producers from 0, consumers from 100, subscribers from 200.
pub const CONSUMER_PROCESS_BASE: u32 = 100;
pub const SUBSCRIBER_PROCESS_BASE: u32 = 200;
/// The liveness writes after the heal, and the final read.
pub const LIVENESS_PROCESS: u32 = 900;
pub const FINAL_READ_PROCESS: u32 = 901;

/// A value no send wrote: what a payload that is not a decimal number is recorded as, so the
/// checker reports it as unknown-value.
const GARBAGE_VALUE: Value = u64::MAX;

/// How long one send may wait for its delivery report (librdkafka's own `message.timeout.ms`
/// is shorter, so the report normally comes first).
const SEND_WAIT_MS: u64 = 15_000;
/// librdkafka gives up on a message after this long (then the send is indeterminate).
const MESSAGE_TIMEOUT_MS: u64 = 10_000;
/// One poll operation: at most this many messages, polling at most this long.
const POLL_MESSAGES_MAX: usize = 100;
const POLL_MS: u64 = 300;
/// A client crash every this many operations, per mille.
const CRASH_PER_MILLE: u32 = 10;

/// Every key of the workload.
pub fn keys() -> Vec<Key> {
    TOPICS
        .iter()
        .flat_map(|t| (0..PARTITIONS).map(move |p| Key::new(*t, p)))
        .collect()
}

/// What the workload needs to know.
#[derive(Clone, Debug)]
pub struct Settings {
    pub bootstrap: String,
    pub producers: u32,
    pub consumers: u32,
    pub subscribers: u32,
    pub seed: u64,
}

/// The next value of each key: unique per key across every producer.
#[derive(Debug, Default)]
pub struct Values {
    next: AtomicU64,
}

impl Values {
    fn next(&self) -> Value {
        self.next.fetch_add(1, Ordering::Relaxed) + 1
    }
}

fn base_config(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap)
        .set("socket.timeout.ms", "5000")
        .set("metadata.max.age.ms", "5000")
        .set("topic.metadata.refresh.interval.ms", "1000")
        .set("reconnect.backoff.max.ms", "1000")
        .set("log_level", "3");
    c
}

pub fn producer(bootstrap: &str) -> Result<FutureProducer, String> {
    base_config(bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("max.in.flight.requests.per.connection", "5")
        .set("linger.ms", "0")
        .set("request.timeout.ms", "5000")
        .set("message.timeout.ms", MESSAGE_TIMEOUT_MS.to_string())
        .create()
        .map_err(|e| format!("cannot create a producer for {bootstrap}: {e}"))
}

/// Sends `value` to `key` and waits for its delivery report.
pub fn send(
    runtime: &tokio::runtime::Runtime,
    producer: &FutureProducer,
    key: &Key,
    value: Value,
) -> Outcome<u64> {
    let payload = value.to_string();
    let record = FutureRecord::<(), String>::to(&key.topic)
        .partition(key.partition)
        .payload(&payload);
    let delivery = match producer.send_result(record) {
        Ok(d) => d,
        // Refused before it was queued (a full queue): never sent.
        Err((e, _)) => return Outcome::Fail(format!("not queued: {e}")),
    };
    let waited = runtime.block_on(async {
        tokio::time::timeout(Duration::from_millis(SEND_WAIT_MS), delivery).await
    });
    match waited {
        Ok(Ok(Ok(d))) if d.offset >= 0 => Outcome::Ok(d.offset as u64),
        Ok(Ok(Ok(d))) => Outcome::Info(format!("delivered without an offset ({})", d.offset)),
        Ok(Ok(Err((e, _)))) => Outcome::Info(e.to_string()),
        Ok(Err(_)) => Outcome::Info("the producer dropped the delivery report".into()),
        Err(_) => Outcome::Info(format!("no delivery report in {SEND_WAIT_MS} ms")),
    }
}

/// One producer process: sends until `stop`.
pub fn run_producer(
    process: u32,
    settings: &Settings,
    values: &Values,
    recorder: &Recorder,
    stop: &AtomicBool,
) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let keys = keys();
    let mut rng = Rng::new(settings.seed ^ (u64::from(process) << 32) ^ 0x5e4d);
    let mut producer = None;
    while !stop.load(Ordering::Relaxed) && !recorder.full() {
        if rng.chance(CRASH_PER_MILLE) {
            // A client crash: the producer is gone without a flush (nothing is in flight: one
            // send at a time); the next one gets a new producer id.
            producer = None;
        }
        let p = match &producer {
            Some(p) => p,
            None => match self::producer(&settings.bootstrap) {
                Ok(p) => producer.insert(p),
                Err(e) => {
                    recorder.event(format!("process {process}: {e}"));
                    std::thread::sleep(Duration::from_millis(500));
                    continue;
                }
            },
        };
        let key = keys[rng.below(keys.len() as u64) as usize].clone();
        let value = values.next();
        let invoke_ms = recorder.now_ms();
        let outcome = send(&runtime, p, &key, value);
        let failed = !outcome.is_ok();
        recorder.record(
            process,
            OpKind::Send {
                key,
                value,
                acks: Acks::All,
                outcome,
                producer: None,
            },
            invoke_ms,
        );
        if failed {
            if let Some((_, why)) = p.client().fatal_error() {
                // An idempotent producer that hit a fatal error (say, a sequence the broker
                // does not know) refuses every later send: the client gives it up, as a crash.
                recorder.event(format!(
                    "process {process}: producer fatal error ({why}): a new producer"
                ));
                producer = None;
            }
            // Back off, so a failing cluster is not flooded.
            std::thread::sleep(Duration::from_millis(rng.between(50, 150)));
        }
        std::thread::sleep(Duration::from_millis(rng.between(0, 10)));
    }
}

fn consumer_config(bootstrap: &str, group: &str) -> ClientConfig {
    let mut c = base_config(bootstrap);
    c.set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", "100")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "1000")
        // Notices (offset resets among them) reach the contexts' log filters.
        .set("log_level", "6");
    c
}

/// The value a payload holds.
fn value_of(payload: Option<&[u8]>) -> Value {
    payload
        .and_then(|p| std::str::from_utf8(p).ok())
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(GARBAGE_VALUE)
}

/// Polls `consumer` once: up to [`POLL_MESSAGES_MAX`] messages within [`POLL_MS`].
fn poll<C: ConsumerContext>(consumer: &BaseConsumer<C>) -> (Reads, Outcome<()>) {
    let deadline = Instant::now() + Duration::from_millis(POLL_MS);
    let mut reads: Reads = BTreeMap::new();
    let mut count = 0;
    let mut outcome = Outcome::Ok(());
    while count < POLL_MESSAGES_MAX {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match consumer.poll(left) {
            None => break,
            Some(Ok(m)) => {
                let key = Key::new(m.topic(), m.partition());
                let offset = u64::try_from(m.offset()).unwrap_or(0);
                reads
                    .entry(key)
                    .or_default()
                    .push((offset, value_of(m.payload())));
                count += 1;
            }
            Some(Err(e)) => {
                outcome = Outcome::Info(e.to_string());
                break;
            }
        }
    }
    (reads, outcome)
}

/// One consumer process (assign mode): assigns, polls and crashes until `stop`.
pub fn run_consumer(process: u32, settings: &Settings, recorder: &Recorder, stop: &AtomicBool) {
    let keys = keys();
    let mut rng = Rng::new(settings.seed ^ (u64::from(process) << 32) ^ 0xc0c0);
    let group = format!("jepsen-assign-{process}");
    let mut consumer: Option<BaseConsumer<ClientLog>> = None;
    while !stop.load(Ordering::Relaxed) && !recorder.full() {
        if consumer.is_some() && rng.chance(CRASH_PER_MILLE) {
            consumer = None;
        }
        let c = match &consumer {
            Some(c) if !rng.chance(100) => c,
            _ => {
                // A new consumer, or a new assignment of the current one.
                let c = match consumer.take() {
                    Some(c) => c,
                    None => match consumer_config(&settings.bootstrap, &group).create_with_context(
                        ClientLog {
                            process,
                            recorder: recorder.clone(),
                        },
                    ) {
                        Ok(c) => c,
                        Err(e) => {
                            recorder.event(format!("process {process}: no consumer: {e}"));
                            std::thread::sleep(Duration::from_millis(500));
                            continue;
                        }
                    },
                };
                let chosen: Vec<Key> = keys.iter().filter(|_| rng.chance(600)).cloned().collect();
                let chosen = if chosen.is_empty() {
                    vec![keys[rng.below(keys.len() as u64) as usize].clone()]
                } else {
                    chosen
                };
                let seek_to_beginning = rng.chance(500);
                // Without a seek, a key the consumer already reads keeps its position (as
                // Jepsen's workload), and a new one starts at the beginning. Always a concrete
                // offset, never a logical one (BEGINNING, END): librdkafka resolves a logical
                // offset with a ListOffsets of its own, and when the same partition is
                // assigned again before that answer arrives, it can still apply the stale
                // answer afterwards, moving the position under the new assignment. Seen here
                // as a jump back to 0 (a stale BEGINNING) and a skip to the log end (a stale
                // END), each right after two assigns in quick succession, with no reset or
                // truncation answered by any broker. The workload's topics keep everything
                // (no retention), so the beginning is offset 0.
                let positions: BTreeMap<Key, i64> = c
                    .position()
                    .map(|list| {
                        list.elements()
                            .iter()
                            .filter_map(|e| match e.offset() {
                                Offset::Offset(o) => Some((Key::new(e.topic(), e.partition()), o)),
                                _ => None,
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let mut list = TopicPartitionList::new();
                for k in &chosen {
                    let offset = match positions.get(k) {
                        Some(&o) if !seek_to_beginning => Offset::Offset(o),
                        _ => Offset::Offset(0),
                    };
                    list.add_partition_offset(&k.topic, k.partition, offset)
                        .expect("a valid offset");
                }
                let invoke_ms = recorder.now_ms();
                let outcome = match c.assign(&list) {
                    Ok(()) => Outcome::Ok(()),
                    Err(e) => Outcome::Fail(e.to_string()),
                };
                recorder.record(
                    process,
                    OpKind::Assign {
                        keys: chosen,
                        seek_to_beginning,
                        outcome,
                    },
                    invoke_ms,
                );
                consumer.insert(c)
            }
        };
        let invoke_ms = recorder.now_ms();
        let (reads, outcome) = poll(c);
        recorder.record(process, OpKind::Poll { reads, outcome }, invoke_ms);
    }
}

/// Passes a librdkafka log line to the run's events if it says the consumer moved its
/// position on its own (an offset reset, a detected truncation): what a reader of a poll
/// anomaly needs to see next to it.
fn forward_log(process: u32, recorder: &Recorder, fac: &str, message: &str) {
    let m = message.to_ascii_lowercase();
    if m.contains("reset") || m.contains("truncat") || m.contains("out of range") {
        recorder.event(format!("process {process}: librdkafka {fac}: {message}"));
    }
}

/// An assign-mode consumer's context: passes librdkafka's lines about offset resets to the
/// run's events.
struct ClientLog {
    process: u32,
    recorder: Recorder,
}

impl ClientContext for ClientLog {
    fn log(&self, _level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        forward_log(self.process, &self.recorder, fac, message);
    }
}

impl ConsumerContext for ClientLog {}

/// A subscriber's context: records each assignment the group hands it.
struct Rebalances {
    process: u32,
    recorder: Recorder,
}

impl ClientContext for Rebalances {
    fn log(&self, _level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        forward_log(self.process, &self.recorder, fac, message);
    }
}

impl ConsumerContext for Rebalances {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let keys = match rebalance {
            Rebalance::Assign(list) => list
                .elements()
                .iter()
                .map(|e| Key::new(e.topic(), e.partition()))
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect(),
            Rebalance::Revoke(_) => Vec::new(),
            Rebalance::Error(_) => return,
        };
        let at_ms = self.recorder.now_ms();
        self.recorder.record(
            self.process,
            OpKind::Assign {
                keys,
                seek_to_beginning: false,
                outcome: Outcome::Ok(()),
            },
            at_ms,
        );
    }
}

/// One subscriber process: a member of the group `jepsen-group`, polling and committing its
/// positions (librdkafka's auto commit), crashing now and then, until `stop`.
pub fn run_subscriber(process: u32, settings: &Settings, recorder: &Recorder, stop: &AtomicBool) {
    let mut rng = Rng::new(settings.seed ^ (u64::from(process) << 32) ^ 0x5ab5);
    let mut consumer: Option<BaseConsumer<Rebalances>> = None;
    while !stop.load(Ordering::Relaxed) && !recorder.full() {
        if consumer.is_some() && rng.chance(CRASH_PER_MILLE / 2) {
            // Dropped without leaving: the group notices at the session timeout.
            consumer = None;
        }
        let c = match &consumer {
            Some(c) => c,
            None => {
                let created = consumer_config(&settings.bootstrap, "jepsen-group")
                    .set("enable.auto.commit", "true")
                    .set("auto.commit.interval.ms", "500")
                    .create_with_context(Rebalances {
                        process,
                        recorder: recorder.clone(),
                    });
                let c: BaseConsumer<Rebalances> = match created {
                    Ok(c) => c,
                    Err(e) => {
                        recorder.event(format!("process {process}: no consumer: {e}"));
                        std::thread::sleep(Duration::from_millis(500));
                        continue;
                    }
                };
                if let Err(e) = c.subscribe(&TOPICS) {
                    recorder.event(format!("process {process}: subscribe: {e}"));
                    continue;
                }
                consumer.insert(c)
            }
        };
        let invoke_ms = recorder.now_ms();
        let (reads, outcome) = poll(c);
        recorder.record(process, OpKind::Poll { reads, outcome }, invoke_ms);
    }
}

/// The workload's threads, until [`Workload::stop`].
pub struct Workload {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    values: Arc<Values>,
}

impl Workload {
    pub fn start(settings: &Settings, recorder: &Recorder) -> Workload {
        let stop = Arc::new(AtomicBool::new(false));
        let values = Arc::new(Values::default());
        let mut threads = Vec::new();
        let spawn = |name: String, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name)
                .spawn(f)
                .expect("a client thread")
        };
        for i in 0..settings.producers {
            let (s, r, st, v) = (
                settings.clone(),
                recorder.clone(),
                stop.clone(),
                values.clone(),
            );
            threads.push(spawn(
                format!("producer-{i}"),
                Box::new(move || run_producer(i, &s, &v, &r, &st)),
            ));
        }
        for i in 0..settings.consumers {
            let (s, r, st) = (settings.clone(), recorder.clone(), stop.clone());
            let process = CONSUMER_PROCESS_BASE + i;
            threads.push(spawn(
                format!("consumer-{i}"),
                Box::new(move || run_consumer(process, &s, &r, &st)),
            ));
        }
        for i in 0..settings.subscribers {
            let (s, r, st) = (settings.clone(), recorder.clone(), stop.clone());
            let process = SUBSCRIBER_PROCESS_BASE + i;
            threads.push(spawn(
                format!("subscriber-{i}"),
                Box::new(move || run_subscriber(process, &s, &r, &st)),
            ));
        }
        Workload {
            stop,
            threads,
            values,
        }
    }

    /// Stops every client and waits for them (each finishes its operation in flight, bounded by
    /// the send wait).
    pub fn stop(self) -> Arc<Values> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        self.values
    }
}

/// After the heal: one acknowledged write to every key within `bound_ms`, retried. Returns the
/// keys that never took one.
pub fn liveness(
    settings: &Settings,
    values: &Values,
    recorder: &Recorder,
    bound_ms: u64,
) -> Vec<Key> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let deadline = Instant::now() + Duration::from_millis(bound_ms);
    let mut waiting: Vec<Key> = keys();
    let mut producer = None;
    while !waiting.is_empty() && Instant::now() < deadline {
        let p = match &producer {
            Some(p) => p,
            None => match self::producer(&settings.bootstrap) {
                Ok(p) => producer.insert(p),
                Err(e) => {
                    recorder.event(format!("liveness: {e}"));
                    std::thread::sleep(Duration::from_millis(500));
                    continue;
                }
            },
        };
        let mut still = Vec::new();
        for key in waiting {
            let value = values.next();
            let invoke_ms = recorder.now_ms();
            let outcome = send(&runtime, p, &key, value);
            let ok = outcome.is_ok();
            recorder.record(
                LIVENESS_PROCESS,
                OpKind::Send {
                    key: key.clone(),
                    value,
                    acks: Acks::All,
                    outcome,
                    producer: None,
                },
                invoke_ms,
            );
            if !ok {
                still.push(key);
            }
        }
        waiting = still;
    }
    waiting
}

/// The final read: a fresh consumer reads every key from the beginning to its high watermark,
/// within `bound_ms`. Returns the keys it could not finish (their watermark unknown or not
/// reached).
pub fn final_read(bootstrap: &str, recorder: &Recorder, bound_ms: u64) -> Vec<Key> {
    let deadline = Instant::now() + Duration::from_millis(bound_ms);
    let invoke_ms = recorder.now_ms();
    let consumer: BaseConsumer = match consumer_config(bootstrap, "jepsen-final-read").create() {
        Ok(c) => c,
        Err(e) => {
            recorder.event(format!("final read: no consumer: {e}"));
            return keys();
        }
    };
    let mut ends: BTreeMap<Key, i64> = BTreeMap::new();
    while ends.len() < keys().len() && Instant::now() < deadline {
        for key in keys() {
            if ends.contains_key(&key) {
                continue;
            }
            if let Ok((_, high)) =
                consumer.fetch_watermarks(&key.topic, key.partition, Duration::from_secs(2))
            {
                ends.insert(key, high);
            }
        }
    }
    let mut list = TopicPartitionList::new();
    for key in keys() {
        list.add_partition_offset(&key.topic, key.partition, Offset::Beginning)
            .expect("a valid offset");
    }
    let mut reads: Reads = BTreeMap::new();
    let mut outcome = Outcome::Ok(());
    if let Err(e) = consumer.assign(&list) {
        outcome = Outcome::Info(format!("assign: {e}"));
    }
    let done = |reads: &Reads, key: &Key, end: i64| {
        end <= 0
            || reads
                .get(key)
                .and_then(|r| r.last())
                .is_some_and(|(o, _)| *o as i64 >= end - 1)
    };
    while outcome.is_ok() && Instant::now() < deadline {
        if ends.len() == keys().len() && ends.iter().all(|(k, e)| done(&reads, k, *e)) {
            break;
        }
        let (batch, polled) = poll(&consumer);
        for (k, mut v) in batch {
            reads.entry(k).or_default().append(&mut v);
        }
        if let Outcome::Info(e) = polled {
            recorder.event(format!("final read: {e}"));
        }
    }
    let unfinished: Vec<Key> = keys()
        .into_iter()
        .filter(|k| !ends.get(k).is_some_and(|e| done(&reads, k, *e)))
        .collect();
    if !unfinished.is_empty() && outcome.is_ok() {
        outcome = Outcome::Info(format!("unfinished: {unfinished:?}"));
    }
    recorder.record(
        FINAL_READ_PROCESS,
        OpKind::FinalRead { reads, outcome },
        invoke_ms,
    );
    unfinished
}

/// A client for metadata lookups (the nemesis asks who leads a partition).
pub fn metadata_client(bootstrap: &str) -> BaseConsumer {
    consumer_config(bootstrap, "jepsen-metadata")
        .create()
        .expect("a consumer's configuration is valid")
}

/// Creates the workload's topics (replication factor 3), retrying until every one exists or
/// `bound_ms` passes.
pub fn create_topics(bootstrap: &str, recorder: &Recorder, bound_ms: u64) -> Result<(), String> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::types::RDKafkaErrorCode;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let admin: AdminClient<DefaultClientContext> = base_config(bootstrap)
        .create()
        .map_err(|e| format!("cannot create an admin client for {bootstrap}: {e}"))?;
    let deadline = Instant::now() + Duration::from_millis(bound_ms);
    let mut missing: Vec<&str> = TOPICS.to_vec();
    let mut last_error = String::new();
    while !missing.is_empty() && Instant::now() < deadline {
        let topics: Vec<NewTopic> = missing
            .iter()
            .map(|t| NewTopic::new(t, PARTITIONS, TopicReplication::Fixed(3)))
            .collect();
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(5)));
        match runtime.block_on(admin.create_topics(&topics, &options)) {
            Ok(results) => {
                let mut still = Vec::new();
                for (t, r) in missing.iter().zip(results) {
                    match r {
                        Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                        Err((_, code)) => {
                            last_error = format!("{t}: {code}");
                            still.push(*t);
                        }
                    }
                }
                missing = still;
            }
            Err(e) => last_error = e.to_string(),
        }
        if !missing.is_empty() {
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    if missing.is_empty() {
        recorder.event(format!("created topics {TOPICS:?}"));
        Ok(())
    } else {
        Err(format!(
            "topics {missing:?} not created within {bound_ms} ms at {bootstrap}: {last_error}"
        ))
    }
}
