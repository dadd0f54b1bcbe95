//! `sluice bench produce|consume`: a load generator built on librdkafka (the `rdkafka` crate), so
//! the numbers are what a real Kafka client sees, not what a friendly in-house client would.
//!
//! Produce mode runs `--producers` librdkafka producers, each on its own thread, sending its share
//! of `--records` records of `--record-size` bytes, optionally paced to `--rate` records/s in total.
//! Every record's latency (from enqueue to the delivery report) goes into a log-bucketed histogram.
//! Consume mode assigns every partition of the topic from the beginning and reads until `--records`
//! records have arrived, or until every partition has sat at its end for 10 s (the topic holds
//! fewer records than asked for).
//!
//! Each run ends by itself: nothing waits past `--timeout-s`. The last line on stdout is one
//! machine-readable `RESULT key=value ...` line; the exit status is an error when the run timed out
//! or a record failed.

use std::future::Future;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::thread;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Message};
use rdkafka::metadata::Metadata;
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

/// Options of `sluice bench produce` and `sluice bench consume`. Consume mode reads only
/// `--bootstrap`, `--topic`, `--records` and `--timeout-s`.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Broker to connect to (librdkafka `bootstrap.servers`).
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub bootstrap: String,
    /// Topic to produce to or consume from.
    #[arg(long, default_value = "bench")]
    pub topic: String,
    /// Records to produce, or to read before stopping (warm-up records not included).
    #[arg(long, default_value_t = 1_000_000)]
    pub records: u64,
    /// Payload bytes per record (records have no key).
    #[arg(long, default_value_t = 100)]
    pub record_size: usize,
    /// Largest batch librdkafka builds per partition, in bytes (`batch.size`).
    #[arg(long, default_value_t = 1024 * 1024)]
    pub batch_size: usize,
    /// How long librdkafka waits to fill a batch, in milliseconds (`linger.ms`).
    #[arg(long, default_value_t = 5)]
    pub linger_ms: u64,
    /// Acknowledgements the producer asks for: 0, 1 or all.
    #[arg(long, default_value = "1", value_parser = ["0", "1", "all", "-1"])]
    pub acks: String,
    /// Partitions to create the topic with when it does not exist yet.
    #[arg(long, default_value_t = 1)]
    pub partitions: i32,
    /// Replication factor to create the topic with; -1 leaves it to the broker's default.
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    pub replication_factor: i32,
    /// Concurrent producer instances (each with its own connection and thread).
    #[arg(long, default_value_t = 1)]
    pub producers: usize,
    /// Compression codec (`compression.type`); gzip and zstd need the rdkafka crate's `libz` and
    /// `zstd` features.
    #[arg(long, default_value = "none", value_parser = ["none", "gzip", "snappy", "lz4", "zstd"])]
    pub compression: String,
    /// Records sent and acknowledged before measuring starts; they are not counted.
    #[arg(long, default_value_t = 0)]
    pub warmup_records: u64,
    /// Target records/s over all producers (0 = as fast as possible), to measure latency at a fixed load.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Wall-clock limit for the whole run, in seconds; the run stops and reports when it passes.
    #[arg(long, default_value_t = 300)]
    pub timeout_s: u64,
}

/// `sluice bench ...`.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum BenchCommand {
    /// Produce records and report records/s, MB/s and enqueue-to-acknowledgement latency.
    Produce(BenchArgs),
    /// Read records from the beginning of every partition and report records/s and MB/s.
    Consume(BenchArgs),
}

/// Runs one benchmark to completion, printing progress to stderr and results to stdout.
/// Blocking: the work runs on librdkafka's and the benchmark's own threads.
pub fn run(cmd: BenchCommand) -> Result<(), String> {
    match cmd {
        BenchCommand::Produce(args) => {
            validate(&args)?;
            produce(&args)
        }
        BenchCommand::Consume(args) => {
            validate(&args)?;
            consume(&args)
        }
    }
}

// Limits. Every loop below is bounded by the run's deadline; these keep the inputs sane.
const PRODUCERS_MAX: usize = 256;
const PARTITIONS_MAX: i32 = 100_000;
const RECORD_SIZE_MAX: usize = 64 * 1024 * 1024;
const BATCH_SIZE_MAX: usize = i32::MAX as usize;
const LINGER_MS_MAX: u64 = 900_000;
const TIMEOUT_S_MAX: u64 = 7 * 24 * 3600;
/// librdkafka's default `message.max.bytes`; raised when `--batch-size` asks for more.
const LIBRDKAFKA_MESSAGE_BYTES_MAX_DEFAULT: usize = 1_000_000;
/// librdkafka's largest `batch.num.messages`: set so `--batch-size` alone bounds a batch.
const LIBRDKAFKA_BATCH_MESSAGES_MAX: u32 = 1_000_000;
/// How long a metadata or admin request may take before the attempt is abandoned.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause before retrying a send that found librdkafka's queue full.
const QUEUE_FULL_BACKOFF: Duration = Duration::from_micros(200);
const CONSUMER_POLL_TIMEOUT: Duration = Duration::from_millis(100);
/// librdkafka `fetch.queue.backoff.ms` for consume mode (librdkafka's default is 1000).
const CONSUMER_FETCH_QUEUE_BACKOFF_MS: u32 = 5;
/// Consume mode gives up when every partition has sat at its end for this long, so asking for
/// more records than the topic holds does not wait for the whole `--timeout-s`.
const CONSUME_IDLE_AT_END_MAX: Duration = Duration::from_secs(10);
const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);
/// librdkafka warnings and errors printed per run; the rest are only counted.
const CLIENT_LOG_LINES_MAX: u32 = 20;
/// Set in a delivery opaque to mark a warm-up record, whose latency is not recorded.
const OPAQUE_WARMUP_FLAG: usize = 1 << (usize::BITS - 1);
/// MB in `mb_per_s`: 2^20 bytes, as in Kafka's own perf tools.
const MB: f64 = 1024.0 * 1024.0;

fn validate(args: &BenchArgs) -> Result<(), String> {
    let checks: [(bool, &str); 9] = [
        (!args.bootstrap.is_empty(), "--bootstrap must not be empty"),
        (!args.topic.is_empty(), "--topic must not be empty"),
        (args.records > 0, "--records must be at least 1"),
        (
            (1..=RECORD_SIZE_MAX).contains(&args.record_size),
            "--record-size out of range",
        ),
        (
            (1..=BATCH_SIZE_MAX).contains(&args.batch_size),
            "--batch-size out of range",
        ),
        (args.linger_ms <= LINGER_MS_MAX, "--linger-ms out of range"),
        (
            (1..=PARTITIONS_MAX).contains(&args.partitions),
            "--partitions out of range",
        ),
        (
            (1..=PRODUCERS_MAX).contains(&args.producers),
            "--producers out of range",
        ),
        (
            (1..=TIMEOUT_S_MAX).contains(&args.timeout_s),
            "--timeout-s out of range",
        ),
    ];
    for (ok, message) in checks {
        if !ok {
            return Err(message.to_string());
        }
    }
    if args.replication_factor == 0 || args.replication_factor < -1 {
        return Err("--replication-factor must be -1 or at least 1".to_string());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Produce
// ---------------------------------------------------------------------------------------------

/// Counters shared by the delivery callbacks of all producers.
struct ProduceStats {
    /// `Instant` that delivery opaques and `last_delivery_us` are measured from.
    origin: Instant,
    latency_us: Histogram,
    delivered: AtomicU64,
    failed: AtomicU64,
    /// Warm-up records acknowledged (successfully or not); not part of the results.
    warmup_done: AtomicU64,
    /// When the most recent measured record was acknowledged, in µs since `origin`.
    last_delivery_us: AtomicU64,
    first_error: Mutex<Option<String>>,
    log: ClientLog,
}

impl ProduceStats {
    fn now_us(&self) -> u64 {
        duration_us(self.origin.elapsed())
    }
}

struct ProduceContext {
    stats: Arc<ProduceStats>,
}

impl ClientContext for ProduceContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        self.stats.log.log(level, facility, message);
    }
    fn error(&self, error: KafkaError, reason: &str) {
        self.stats.log.error(&error, reason);
    }
}

impl ProducerContext for ProduceContext {
    /// The enqueue time in µs since `ProduceStats::origin`, or'ed with `OPAQUE_WARMUP_FLAG` for a
    /// warm-up record.
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: usize) {
        let stats = &self.stats;
        if opaque & OPAQUE_WARMUP_FLAG != 0 {
            stats.warmup_done.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let now_us = stats.now_us();
        match result {
            Ok(_) => {
                stats
                    .latency_us
                    .record(now_us.saturating_sub(opaque as u64));
                stats.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err((error, _)) => {
                stats.failed.fetch_add(1, Ordering::Relaxed);
                let mut first = stats.first_error.lock().unwrap();
                first.get_or_insert_with(|| error.to_string());
            }
        }
        stats.last_delivery_us.fetch_max(now_us, Ordering::Relaxed);
    }
}

/// What one producer thread did.
#[derive(Default)]
struct SenderReport {
    /// Measured records handed to librdkafka.
    enqueued: u64,
    /// Sends librdkafka refused for a reason other than a full queue.
    send_errors: u64,
    first_error: Option<String>,
}

fn produce(args: &BenchArgs) -> Result<(), String> {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.timeout_s);
    let log = ClientLog::default();
    let partitions = ensure_topic(args, deadline, &log)?;
    eprintln!(
        "bench produce: topic {} has {} partition(s); {} producer(s), {} records of {} B, acks={}, rate={}",
        args.topic,
        partitions,
        args.producers,
        args.records,
        args.record_size,
        args.acks,
        if args.rate == 0 { "max".to_string() } else { format!("{}/s", args.rate) },
    );

    let stats = Arc::new(ProduceStats {
        origin: started,
        latency_us: Histogram::new(),
        delivered: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        warmup_done: AtomicU64::new(0),
        last_delivery_us: AtomicU64::new(0),
        first_error: Mutex::new(None),
        log,
    });
    let config = producer_config(args);
    let mut producers = Vec::with_capacity(args.producers);
    for _ in 0..args.producers {
        let context = ProduceContext {
            stats: Arc::clone(&stats),
        };
        let producer: ThreadedProducer<ProduceContext> = config
            .create_with_context(context)
            .map_err(|e| format!("creating a producer: {e}"))?;
        producers.push(producer);
    }
    let payload = payload_pattern(args.record_size);

    // Warm-up: connections, metadata and the broker's first segment, then wait for every ack.
    if args.warmup_records > 0 {
        let shares = split(args.warmup_records, args.producers);
        thread::scope(|scope| {
            for (producer, &share) in producers.iter().zip(&shares) {
                let payload = &payload;
                scope.spawn(move || {
                    send_records(producer, args, payload, share, 0.0, deadline, |_| {
                        OPAQUE_WARMUP_FLAG
                    })
                });
            }
        });
        while stats.warmup_done.load(Ordering::Relaxed) < args.warmup_records {
            if Instant::now() >= deadline {
                return Err("timed out during warm-up".to_string());
            }
            thread::sleep(Duration::from_millis(1));
        }
        eprintln!(
            "bench produce: warm-up of {} records done",
            args.warmup_records
        );
    }

    // Measured run.
    let measure_start = Instant::now();
    let measure_start_us = stats.now_us();
    let shares = split(args.records, args.producers);
    let rate_per_producer = args.rate as f64 / args.producers as f64;
    let senders_running = AtomicUsize::new(args.producers);
    let mut reports: Vec<SenderReport> = Vec::with_capacity(args.producers);
    thread::scope(|scope| {
        let mut handles = Vec::with_capacity(args.producers);
        for (producer, &share) in producers.iter().zip(&shares) {
            let (payload, stats, senders_running) = (&payload, &stats, &senders_running);
            handles.push(scope.spawn(move || {
                let report = send_records(
                    producer,
                    args,
                    payload,
                    share,
                    rate_per_producer,
                    deadline,
                    |scheduled| {
                        // Latency counts from the scheduled send time when pacing, so a sender that
                        // fell behind (librdkafka's queue full) does not hide the delay it suffered.
                        let enqueue = scheduled.unwrap_or_else(Instant::now);
                        duration_us(enqueue.saturating_duration_since(stats.origin)) as usize
                    },
                );
                // Drain this producer's queue; the deadline bounds the wait.
                let _ = producer.flush(deadline.saturating_duration_since(Instant::now()));
                senders_running.fetch_sub(1, Ordering::Relaxed);
                report
            }));
        }
        let mut progress = Progress::new("produce", measure_start);
        while senders_running.load(Ordering::Relaxed) > 0 {
            thread::sleep(Duration::from_millis(10));
            progress.tick(stats.delivered.load(Ordering::Relaxed), args.records);
        }
        for handle in handles {
            reports.push(handle.join().expect("a producer thread panicked"));
        }
    });
    // `flush` can return just before the last delivery callbacks have run; wait for them.
    let enqueued: u64 = reports.iter().map(|r| r.enqueued).sum();
    let send_errors: u64 = reports.iter().map(|r| r.send_errors).sum();
    let acknowledged =
        || stats.delivered.load(Ordering::Relaxed) + stats.failed.load(Ordering::Relaxed);
    while acknowledged() < enqueued && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(1));
    }
    let delivered = stats.delivered.load(Ordering::Relaxed);
    let failed = stats.failed.load(Ordering::Relaxed);
    let last_us = stats.last_delivery_us.load(Ordering::Relaxed);
    let elapsed = if last_us > measure_start_us {
        Duration::from_micros(last_us - measure_start_us)
    } else {
        measure_start.elapsed()
    };
    drop(producers); // Purges whatever a timeout left behind, bounded by librdkafka (500 ms).

    let timed_out = delivered + failed + send_errors < args.records;
    let errors = failed
        + send_errors
        + args
            .records
            .saturating_sub(delivered + failed + send_errors);
    let seconds = elapsed.as_secs_f64().max(1e-9);
    let records_per_s = delivered as f64 / seconds;
    let mb_per_s = delivered as f64 * args.record_size as f64 / MB / seconds;
    let quantile_ms = |q: f64| {
        stats
            .latency_us
            .quantile(q)
            .map_or(f64::NAN, |us| us as f64 / 1000.0)
    };
    let (p50, p99, p999) = (quantile_ms(0.5), quantile_ms(0.99), quantile_ms(0.999));
    let max_ms = stats.latency_us.max() as f64 / 1000.0;
    let status = if timed_out {
        "timeout"
    } else if errors > 0 {
        "errors"
    } else {
        "ok"
    };

    println!(
        "produce: {delivered} records of {} B acknowledged in {:.3} s: {:.0} records/s, {:.2} MB/s",
        args.record_size, seconds, records_per_s, mb_per_s
    );
    println!("latency (enqueue to ack): p50 {p50:.3} ms, p99 {p99:.3} ms, p999 {p999:.3} ms, max {max_ms:.3} ms");
    println!("errors: {errors} ({failed} failed deliveries, {send_errors} refused sends, status {status})");
    println!(
        "RESULT mode=produce status={status} records={delivered} errors={errors} elapsed_s={seconds:.3} \
         records_per_s={records_per_s:.0} mb_per_s={mb_per_s:.3} p50_ms={p50:.3} p99_ms={p99:.3} \
         p999_ms={p999:.3} max_ms={max_ms:.3} record_size={} producers={} partitions={partitions} acks={} \
         rate={} batch_size={} linger_ms={} compression={}",
        args.record_size, args.producers, args.acks, args.rate, args.batch_size, args.linger_ms, args.compression,
    );

    let first_error = stats
        .first_error
        .lock()
        .unwrap()
        .clone()
        .or_else(|| reports.iter().find_map(|r| r.first_error.clone()));
    if let Some(error) = &first_error {
        eprintln!("bench produce: first error: {error}");
    }
    match status {
        "ok" => Ok(()),
        "timeout" => Err(format!(
            "timed out after {} s with {delivered} of {} records acknowledged",
            args.timeout_s, args.records
        )),
        _ => Err(format!(
            "{errors} records failed; first error: {}",
            first_error.unwrap_or_default()
        )),
    }
}

fn producer_config(args: &BenchArgs) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &args.bootstrap)
        .set("client.id", "sluice-bench")
        .set("acks", &args.acks)
        .set("compression.type", &args.compression)
        .set("linger.ms", args.linger_ms.to_string())
        .set("batch.size", args.batch_size.to_string())
        .set(
            "batch.num.messages",
            LIBRDKAFKA_BATCH_MESSAGES_MAX.to_string(),
        )
        .set(
            "message.max.bytes",
            args.batch_size
                .max(LIBRDKAFKA_MESSAGE_BYTES_MAX_DEFAULT)
                .to_string(),
        )
        // A record still unacknowledged at the deadline is reported as failed, not waited for.
        .set("message.timeout.ms", (args.timeout_s * 1000).to_string())
        // Idempotence needs InitProducerId; the benchmark measures the plain produce path.
        .set("enable.idempotence", "false");
    config
}

/// Sends `count` records through `producer`, paced to `rate_per_s` (0 = unpaced). `opaque` turns
/// the scheduled send time (when paced) into the record's delivery opaque.
fn send_records(
    producer: &ThreadedProducer<ProduceContext>,
    args: &BenchArgs,
    payload_pattern: &[u8],
    count: u64,
    rate_per_s: f64,
    deadline: Instant,
    opaque: impl Fn(Option<Instant>) -> usize,
) -> SenderReport {
    let mut report = SenderReport::default();
    let mut payload = payload_pattern.to_vec();
    let start = Instant::now();
    // The clock is read only when the next record is not yet known to be due: a sleep overshoots
    // by tens of microseconds, after which a run of records is due and goes out without a clock
    // read or a syscall each (at 700 k records/s those were a fifth of the sender's CPU, taken
    // from the brokers it shares the machine with). No record leaves before its scheduled time.
    let mut now = start;
    for index in 0..count {
        // Make each record distinct so compression sees realistic, not identical, records.
        let stamp = index.to_le_bytes();
        let stamped = stamp.len().min(payload.len());
        payload[..stamped].copy_from_slice(&stamp[..stamped]);

        let scheduled =
            (rate_per_s > 0.0).then(|| start + Duration::from_secs_f64(index as f64 / rate_per_s));
        match scheduled {
            Some(at) if at > now => {
                now = Instant::now();
                if at > now {
                    thread::sleep(at.min(deadline) - now);
                    now = Instant::now();
                }
            }
            Some(_) => {}
            None => now = Instant::now(),
        }
        let mut record =
            BaseRecord::with_opaque_to(&args.topic, opaque(scheduled)).payload(&payload[..]);
        loop {
            if now >= deadline {
                return report;
            }
            match producer.send::<[u8], [u8]>(record) {
                Ok(()) => {
                    report.enqueued += 1;
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    record = returned;
                    thread::sleep(QUEUE_FULL_BACKOFF);
                    now = Instant::now();
                }
                Err((error, _)) => {
                    report.send_errors += 1;
                    report.first_error.get_or_insert_with(|| error.to_string());
                    break;
                }
            }
        }
    }
    report
}

/// Pseudo-random bytes (xorshift64), so compressed runs do not compress a run of zeros.
fn payload_pattern(size: usize) -> Vec<u8> {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..size)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// Splits `total` into `parts` shares that differ by at most one.
fn split(total: u64, parts: usize) -> Vec<u64> {
    assert!(parts > 0);
    let parts_u64 = parts as u64;
    let shares: Vec<u64> = (0..parts_u64)
        .map(|i| total / parts_u64 + u64::from(i < total % parts_u64))
        .collect();
    assert_eq!(shares.iter().sum::<u64>(), total);
    shares
}

// ---------------------------------------------------------------------------------------------
// Topic setup
// ---------------------------------------------------------------------------------------------

/// Creates the topic with `--partitions` partitions unless it exists, waits until every partition
/// has a leader, and returns the partition count.
fn ensure_topic(args: &BenchArgs, deadline: Instant, log: &ClientLog) -> Result<i32, String> {
    let admin: AdminClient<BenchContext> = base_config(args)
        .create_with_context(BenchContext { log: log.clone() })
        .map_err(|e| format!("creating an admin client: {e}"))?;
    let existing = fetch_metadata(admin.inner(), &args.topic, deadline)
        .map(|m| topic_partitions(&m, &args.topic))?;
    if let Some(Ok(partitions)) = existing {
        if partitions != args.partitions {
            eprintln!(
                "bench: topic {} exists with {partitions} partition(s), not {}; using it as it is",
                args.topic, args.partitions
            );
        }
        return Ok(partitions);
    }
    let topic = NewTopic::new(
        &args.topic,
        args.partitions,
        TopicReplication::Fixed(args.replication_factor),
    );
    let options = AdminOptions::new()
        .request_timeout(Some(REQUEST_TIMEOUT))
        .operation_timeout(Some(REQUEST_TIMEOUT));
    let results = block_on(admin.create_topics([&topic], &options))
        .map_err(|e| format!("creating topic {}: {e}", args.topic))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => return Err(format!("creating topic {name}: {code}")),
        }
    }
    // A new topic may take a moment to show up with leaders everywhere.
    loop {
        let metadata = fetch_metadata(admin.inner(), &args.topic, deadline)?;
        if let Some(Ok(partitions)) = topic_partitions(&metadata, &args.topic) {
            return Ok(partitions);
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "topic {} did not become ready before the deadline",
                args.topic
            ));
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Metadata for `topic` alone. The client must have `allow.auto.create.topics=false` (see
/// `base_config`), or asking about a missing topic could create it with the broker's defaults.
fn fetch_metadata<C: ClientContext>(
    client: &rdkafka::client::Client<C>,
    topic: &str,
    deadline: Instant,
) -> Result<Metadata, String> {
    // Not all topics (`None`): librdkafka 2.12 encodes the null topic array of an all-topics
    // Metadata v9+ request in 4 bytes instead of 1 (librdkafka issue #5049), which a strict broker
    // rejects.
    let timeout = REQUEST_TIMEOUT.min(deadline.saturating_duration_since(Instant::now()));
    client
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| format!("fetching metadata: {e}"))
}

/// `None` when the topic is absent; `Some(Err)` while it exists but is not ready (an error on the
/// topic or a partition without a leader); `Some(Ok(count))` when ready.
fn topic_partitions(metadata: &Metadata, topic: &str) -> Option<Result<i32, ()>> {
    let found = metadata.topics().iter().find(|t| t.name() == topic)?;
    if let Some(error) = found.error() {
        return match RDKafkaErrorCode::from(error) {
            RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic => None,
            _ => Some(Err(())),
        };
    }
    let ready = !found.partitions().is_empty()
        && found
            .partitions()
            .iter()
            .all(|p| p.error().is_none() && p.leader() >= 0);
    Some(if ready {
        Ok(found.partitions().len() as i32)
    } else {
        Err(())
    })
}

fn base_config(args: &BenchArgs) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &args.bootstrap)
        .set("client.id", "sluice-bench")
        // Metadata requests about the topic must never create it; `ensure_topic` does that.
        .set("allow.auto.create.topics", "false");
    config
}

// ---------------------------------------------------------------------------------------------
// Consume
// ---------------------------------------------------------------------------------------------

fn consume(args: &BenchArgs) -> Result<(), String> {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.timeout_s);
    let log = ClientLog::default();
    // librdkafka's assign() wants a group.id, but assign mode never joins the group and nothing
    // is committed, so the group coordinator is not needed.
    let consumer: BaseConsumer<BenchContext> = base_config(args)
        .set("group.id", format!("sluice-bench-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // Should retention have removed the start of a partition, read from its new start rather
        // than librdkafka's default of jumping to the end.
        .set("auto.offset.reset", "earliest")
        // End-of-partition events tell a run that asked for more records than exist to stop.
        .set("enable.partition.eof", "true")
        // librdkafka stops fetching a partition whose local queue holds `queued.min.messages`
        // (100,000) and by default retries only after 1 s, which caps a fast reader at about
        // 100,000 records/s whatever the broker does; retry promptly instead.
        .set(
            "fetch.queue.backoff.ms",
            CONSUMER_FETCH_QUEUE_BACKOFF_MS.to_string(),
        )
        .create_with_context(BenchContext { log })
        .map_err(|e| format!("creating a consumer: {e}"))?;
    let metadata = fetch_metadata(consumer.client(), &args.topic, deadline)?;
    let partitions = match topic_partitions(&metadata, &args.topic) {
        Some(Ok(partitions)) => partitions,
        Some(Err(())) => {
            return Err(format!(
                "topic {} is not ready (error or leaderless partition)",
                args.topic
            ))
        }
        None => return Err(format!("topic {} does not exist", args.topic)),
    };
    let mut assignment = TopicPartitionList::with_capacity(partitions as usize);
    for partition in 0..partitions {
        assignment
            .add_partition_offset(&args.topic, partition, Offset::Beginning)
            .map_err(|e| format!("building the assignment: {e}"))?;
    }
    consumer
        .assign(&assignment)
        .map_err(|e| format!("assigning partitions: {e}"))?;
    eprintln!(
        "bench consume: reading {} records from {partitions} partition(s) of {}",
        args.records, args.topic
    );

    let read_start = Instant::now();
    let mut first_record_at: Option<Instant> = None;
    let mut last_record_at = read_start;
    let (mut records, mut bytes, mut errors) = (0u64, 0u64, 0u64);
    let mut first_error: Option<String> = None;
    // Which partitions last reported their end, and since when all of them have.
    let mut at_end = vec![false; partitions as usize];
    let mut all_at_end_since: Option<Instant> = None;
    let mut exhausted = false;
    let mut progress = Progress::new("consume", read_start);
    while records < args.records && Instant::now() < deadline {
        match consumer.poll(CONSUMER_POLL_TIMEOUT) {
            Some(Ok(message)) => {
                records += 1;
                bytes += message.payload().map_or(0, |p| p.len() as u64);
                last_record_at = Instant::now();
                first_record_at.get_or_insert(last_record_at);
                if let Some(end) = at_end.get_mut(message.partition() as usize) {
                    *end = false;
                }
                all_at_end_since = None;
            }
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                if let Some(end) = at_end.get_mut(partition as usize) {
                    *end = true;
                }
                if at_end.iter().all(|&end| end) {
                    all_at_end_since.get_or_insert_with(Instant::now);
                }
            }
            Some(Err(error)) => {
                errors += 1;
                first_error.get_or_insert_with(|| error.to_string());
            }
            None => {}
        }
        if all_at_end_since.is_some_and(|since| since.elapsed() >= CONSUME_IDLE_AT_END_MAX) {
            exhausted = true;
            break;
        }
        progress.tick(records, args.records);
    }

    let seconds = last_record_at
        .duration_since(read_start)
        .as_secs_f64()
        .max(1e-9);
    let records_per_s = records as f64 / seconds;
    let mb_per_s = bytes as f64 / MB / seconds;
    let first_record_ms = first_record_at.map_or(f64::NAN, |t| {
        t.duration_since(read_start).as_secs_f64() * 1000.0
    });
    let status = if records >= args.records {
        "ok"
    } else if exhausted {
        "exhausted"
    } else {
        "timeout"
    };
    println!("consume: {records} records ({bytes} payload bytes) in {seconds:.3} s: {records_per_s:.0} records/s, {mb_per_s:.2} MB/s");
    println!(
        "first record after {first_record_ms:.1} ms; {errors} consumer errors; status {status}"
    );
    println!(
        "RESULT mode=consume status={status} records={records} errors={errors} elapsed_s={seconds:.3} \
         records_per_s={records_per_s:.0} mb_per_s={mb_per_s:.3} first_record_ms={first_record_ms:.1} \
         partitions={partitions}"
    );
    if let Some(error) = &first_error {
        eprintln!("bench consume: first consumer error: {error}");
    }
    match status {
        "ok" => Ok(()),
        "exhausted" => Err(format!(
            "the topic holds only {records} of the {} records asked for (every partition at its \
             end for {} s)",
            args.records,
            CONSUME_IDLE_AT_END_MAX.as_secs()
        )),
        _ => Err(format!(
            "timed out after {} s with {records} of {} records read",
            args.timeout_s, args.records
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// Shared pieces
// ---------------------------------------------------------------------------------------------

/// Prints librdkafka's warnings and errors to stderr, at most `CLIENT_LOG_LINES_MAX` per run.
#[derive(Clone, Default)]
struct ClientLog {
    printed: Arc<AtomicU32>,
}

impl ClientLog {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        use RDKafkaLogLevel::{Alert, Critical, Emerg, Error, Warning};
        if matches!(level, Emerg | Alert | Critical | Error | Warning) {
            self.print(format_args!("librdkafka {facility}: {message}"));
        }
    }
    fn error(&self, error: &KafkaError, reason: &str) {
        // Consume mode asks for end-of-partition events; they are progress, not trouble.
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF) {
            return;
        }
        self.print(format_args!("librdkafka error: {error}: {reason}"));
    }
    fn print(&self, line: std::fmt::Arguments<'_>) {
        let n = self.printed.fetch_add(1, Ordering::Relaxed);
        if n < CLIENT_LOG_LINES_MAX {
            eprintln!("bench: {line}");
        } else if n == CLIENT_LOG_LINES_MAX {
            eprintln!("bench: further librdkafka messages suppressed");
        }
    }
}

/// Context for the admin client and the consumer.
struct BenchContext {
    log: ClientLog,
}

impl ClientContext for BenchContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        self.log.log(level, facility, message);
    }
    fn error(&self, error: KafkaError, reason: &str) {
        self.log.error(&error, reason);
    }
}

impl ConsumerContext for BenchContext {}

/// A progress line on stderr once per `PROGRESS_INTERVAL`.
struct Progress {
    mode: &'static str,
    start: Instant,
    next_at: Instant,
    last_count: u64,
}

impl Progress {
    fn new(mode: &'static str, start: Instant) -> Progress {
        Progress {
            mode,
            start,
            next_at: start + PROGRESS_INTERVAL,
            last_count: 0,
        }
    }

    fn tick(&mut self, count: u64, target: u64) {
        let now = Instant::now();
        if now < self.next_at {
            return;
        }
        let interval_s = (now - self.next_at + PROGRESS_INTERVAL).as_secs_f64();
        let rate = count.saturating_sub(self.last_count) as f64 / interval_s;
        eprintln!(
            "bench {}: {:>6.1} s  {count}/{target} records  {rate:.0} records/s",
            self.mode,
            now.duration_since(self.start).as_secs_f64(),
        );
        self.last_count = count;
        self.next_at = now + PROGRESS_INTERVAL;
    }
}

fn duration_us(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

/// Runs a future to completion on this thread. The rdkafka admin futures are completed by the admin
/// client's own polling thread, so no async runtime is needed to drive them.
fn block_on<F: Future>(future: F) -> F::Output {
    struct Unparker(thread::Thread);
    impl Wake for Unparker {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unparker(thread::current())));
    let mut context = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut context) {
            return output;
        }
        // A timeout as well as the wake-up, so a lost wake-up costs 100 ms rather than forever.
        thread::park_timeout(Duration::from_millis(100));
    }
}

/// A log-bucketed histogram of `u64` values that many threads record into without locks.
///
/// Values below `2 * SUB_BUCKETS` have a bucket each; above that every power of two is split into
/// `SUB_BUCKETS` equal buckets, so a reported value is within 1/128 (0.8 %) of a recorded one.
/// Memory is fixed (`BUCKETS` counters) whatever the number of records.
struct Histogram {
    counts: Box<[AtomicU64]>,
    max: AtomicU64,
}

impl Histogram {
    const SUB_BUCKET_BITS: u32 = 6;
    const SUB_BUCKETS: u64 = 1 << Self::SUB_BUCKET_BITS;
    const BUCKETS: usize =
        (2 * Self::SUB_BUCKETS + (63 - Self::SUB_BUCKET_BITS as u64) * Self::SUB_BUCKETS) as usize;

    fn new() -> Histogram {
        Histogram {
            counts: (0..Self::BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            max: AtomicU64::new(0),
        }
    }

    fn record(&self, value: u64) {
        self.counts[Self::index(value)].fetch_add(1, Ordering::Relaxed);
        self.max.fetch_max(value, Ordering::Relaxed);
    }

    fn max(&self) -> u64 {
        self.max.load(Ordering::Relaxed)
    }

    /// The value at quantile `q` (0 < q ≤ 1), as its bucket's midpoint; `None` when empty.
    fn quantile(&self, q: f64) -> Option<u64> {
        assert!(q > 0.0 && q <= 1.0);
        let counts: Vec<u64> = self
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (index, count) in counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Some(Self::midpoint(index).min(self.max()));
            }
        }
        unreachable!("rank {rank} is at most the total {total}")
    }

    fn index(value: u64) -> usize {
        if value < 2 * Self::SUB_BUCKETS {
            return value as usize;
        }
        let msb = 63 - value.leading_zeros();
        let shift = msb - Self::SUB_BUCKET_BITS;
        let index = 2 * Self::SUB_BUCKETS
            + u64::from(shift - 1) * Self::SUB_BUCKETS
            + ((value >> shift) - Self::SUB_BUCKETS);
        debug_assert!((index as usize) < Self::BUCKETS);
        index as usize
    }

    fn midpoint(index: usize) -> u64 {
        let index = index as u64;
        if index < 2 * Self::SUB_BUCKETS {
            return index;
        }
        let relative = index - 2 * Self::SUB_BUCKETS;
        let shift = relative / Self::SUB_BUCKETS + 1;
        let low = (relative % Self::SUB_BUCKETS + Self::SUB_BUCKETS) << shift;
        low + (1 << shift) / 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_keep_values_within_one_percent() {
        for value in (0..10_000u64).chain([1 << 20, 123_456_789, u64::MAX / 3, u64::MAX]) {
            let index = Histogram::index(value);
            assert!(index < Histogram::BUCKETS);
            let midpoint = Histogram::midpoint(index);
            let error = midpoint.abs_diff(value) as f64;
            assert!(
                error <= value as f64 / 100.0,
                "value {value} midpoint {midpoint}"
            );
            assert_eq!(Histogram::index(midpoint), index);
        }
        assert_eq!(Histogram::index(u64::MAX), Histogram::BUCKETS - 1);
    }

    #[test]
    fn histogram_quantiles_of_uniform_values() {
        let histogram = Histogram::new();
        assert_eq!(histogram.quantile(0.5), None);
        for value in 1..=10_000 {
            histogram.record(value);
        }
        let near = |q: f64, expected: f64| {
            let got = histogram.quantile(q).unwrap() as f64;
            assert!(
                (got - expected).abs() <= expected / 100.0,
                "q {q}: got {got}, expected {expected}"
            );
        };
        near(0.5, 5_000.0);
        near(0.99, 9_900.0);
        near(0.999, 9_990.0);
        near(1.0, 10_000.0);
        assert_eq!(histogram.max(), 10_000);
    }

    #[test]
    fn split_shares_differ_by_at_most_one() {
        assert_eq!(split(10, 3), vec![4, 3, 3]);
        assert_eq!(split(2, 4), vec![1, 1, 0, 0]);
    }
}
