//! librdkafka (the `rdkafka` crate) against the real `sluice` binary: 500 keyed records with
//! headers go to a topic the producer's first send auto-creates, with acks=all; a consumer then
//! assigns every partition from the beginning and must read back exactly what was acknowledged —
//! the same keys, values, headers and timestamps, at the acknowledged offsets, in offset order,
//! and nothing else. Then DeleteRecords through librdkafka's admin client moves each
//! partition's low watermark, and a consumer starting from the beginning starts there.
#![cfg(not(madsim))]

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{DeliveryResult, Header, Headers, Message, OwnedHeaders, Timestamp};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

const RECORDS: usize = 500;
const TOPIC: &str = "rdkafka-round-trip";
/// Bounds on every wait, so a broken broker fails the test instead of hanging it.
const BROKER_START_TIMEOUT: Duration = Duration::from_secs(30);
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);
const CONSUME_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the consumer keeps polling after the last expected record, to catch extra records.
const EXTRA_RECORDS_WAIT: Duration = Duration::from_secs(1);
const BROKER_LOG_TAIL_BYTES: u64 = 16 * 1024;

/// A record as the test sends it and expects to read it back.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Record {
    key: Vec<u8>,
    value: Option<Vec<u8>>,
    headers: Vec<(String, Option<Vec<u8>>)>,
    timestamp_ms: i64,
}

/// Record `i`: a unique key; a value whose length and bytes vary (every 100th is empty, every
/// 100th a tombstone); headers with text and binary values, an empty value, a null value and a
/// repeated key, whose order must survive.
fn record(i: usize, base_timestamp_ms: i64) -> Record {
    let value = match i % 100 {
        98 => Some(Vec::new()),
        99 => None,
        _ => Some((0..(i * 37) % 1000).map(|j| (i * 31 + j) as u8).collect()),
    };
    let mut headers = vec![
        ("seq".to_string(), Some(i.to_string().into_bytes())),
        ("binary".to_string(), Some(vec![0, 255, i as u8, 10])),
    ];
    if i.is_multiple_of(3) {
        headers.push(("empty".to_string(), Some(Vec::new())));
    }
    if i.is_multiple_of(10) {
        headers.push(("null".to_string(), None));
    }
    if i.is_multiple_of(7) {
        headers.push(("dup".to_string(), Some(b"first".to_vec())));
        headers.push(("dup".to_string(), Some(b"second".to_vec())));
    }
    Record {
        key: format!("key-{i:04}").into_bytes(),
        value,
        headers,
        timestamp_ms: base_timestamp_ms + i as i64,
    }
}

/// The `RECORDS` records of a test, timestamped from now.
fn records_now() -> Vec<Record> {
    let base_timestamp_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    (0..RECORDS).map(|i| record(i, base_timestamp_ms)).collect()
}

#[test]
fn produced_records_read_back_exactly_at_their_acknowledged_offsets() {
    let broker = Broker::start();
    let sent = records_now();

    // Produce with acks=all; the delivery reports say where each record landed.
    let acked = produce(&broker.bootstrap(), &sent);
    let mut expected: BTreeMap<i32, Vec<(i64, Record)>> = BTreeMap::new();
    for (record, &(partition, offset)) in sent.iter().zip(&acked) {
        expected
            .entry(partition)
            .or_default()
            .push((offset, record.clone()));
    }
    // One producer, one connection, one request in flight: within a partition, records land in
    // send order, and in a new topic their offsets are 0, 1, 2, ... (the leader's term-start
    // entry takes no Kafka offset).
    for (partition, records) in &expected {
        let offsets: Vec<i64> = records.iter().map(|(offset, _)| *offset).collect();
        let dense: Vec<i64> = (0..records.len() as i64).collect();
        assert_eq!(
            offsets, dense,
            "acknowledged offsets of partition {partition}, in send order"
        );
    }

    // Consume everything from the beginning, in assign mode.
    let consumed = consume(&broker.bootstrap(), RECORDS);
    assert_eq!(
        consumed.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "partitions that hold records"
    );
    // Record by record first, so a mismatch names the first offending record.
    for (partition, records) in &expected {
        let got = &consumed[partition];
        for (index, (want, have)) in records.iter().zip(got).enumerate() {
            assert_eq!(
                have, want,
                "partition {partition}, record {index} of the partition"
            );
        }
        assert_eq!(
            got.len(),
            records.len(),
            "records read from partition {partition}"
        );
    }
    let consumed_count: usize = consumed.values().map(Vec::len).sum();
    assert_eq!(consumed_count, RECORDS, "records read back");
}

/// Kafka's DeleteRecords through librdkafka's admin client (`rd_kafka_DeleteRecords`): the first
/// partition is cut to its end (-1, the high watermark), the others to half their records, one
/// offset past the end is OFFSET_OUT_OF_RANGE; the watermarks then report the new low
/// watermarks, and a consumer reading from the beginning starts at them.
#[test]
fn delete_records_moves_the_low_watermark_where_consumers_start() {
    let broker = Broker::start();
    let sent = records_now();
    let acked = produce(&broker.bootstrap(), &sent);
    let mut counts: BTreeMap<i32, i64> = BTreeMap::new();
    for (partition, _) in &acked {
        *counts.entry(*partition).or_default() += 1;
    }
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .create()
        .expect("create admin client");
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let first = *counts.keys().next().expect("a partition holds records");
    let mut want: BTreeMap<i32, i64> = BTreeMap::new();
    let mut offsets = TopicPartitionList::new();
    for (&partition, &count) in &counts {
        let (offset, low) = if partition == first {
            (Offset::End, count)
        } else {
            (Offset::Offset(count / 2), count / 2)
        };
        offsets
            .add_partition_offset(TOPIC, partition, offset)
            .unwrap();
        want.insert(partition, low);
    }
    let result = runtime
        .block_on(admin.delete_records(&offsets, &options))
        .expect("DeleteRecords");
    for element in result.elements() {
        element
            .error()
            .unwrap_or_else(|e| panic!("partition {}: {e}", element.partition()));
        assert_eq!(
            element.offset(),
            Offset::Offset(want[&element.partition()]),
            "low watermark of partition {}",
            element.partition()
        );
    }
    // Past the high watermark: refused, nothing moves.
    let mut past = TopicPartitionList::new();
    past.add_partition_offset(TOPIC, first, Offset::Offset(counts[&first] + 1))
        .unwrap();
    let refused = runtime
        .block_on(admin.delete_records(&past, &options))
        .expect("DeleteRecords");
    let error = refused.elements()[0].error().expect_err("past the end");
    assert!(
        error.to_string().contains("out of range"),
        "OFFSET_OUT_OF_RANGE, not: {error}"
    );

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("group.id", "sluice-rdkafka-delete-records")
        .create()
        .expect("create consumer");
    for (&partition, &count) in &counts {
        let (low, high) = consumer
            .fetch_watermarks(TOPIC, partition, Duration::from_secs(10))
            .expect("watermarks");
        assert_eq!(
            (low, high),
            (want[&partition], count),
            "partition {partition}"
        );
    }
    drop(consumer);
    let expected: usize = counts
        .iter()
        .map(|(partition, count)| (count - want[partition]) as usize)
        .sum();
    let consumed = consume(&broker.bootstrap(), expected);
    for (partition, records) in &consumed {
        assert_eq!(
            records.first().map(|(offset, _)| *offset),
            Some(want[partition]),
            "partition {partition} starts at its low watermark"
        );
        assert_eq!(records.len() as i64, counts[partition] - want[partition]);
    }
    assert!(
        !consumed.contains_key(&first),
        "the first partition was emptied"
    );
}

/// Where a record was acknowledged, (partition, offset), or why it failed.
type DeliveryReport = Result<(i32, i64), String>;

/// Collects the delivery report of each record, by its index in the send order.
struct DeliveryLog {
    reports: Mutex<Vec<Option<DeliveryReport>>>,
}

impl ClientContext for DeliveryLog {}

impl ProducerContext for DeliveryLog {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, index: usize) {
        let report = match result {
            Ok(message) => Ok((message.partition(), message.offset())),
            Err((error, _)) => Err(error.to_string()),
        };
        let mut reports = self.reports.lock().unwrap();
        assert!(
            reports[index].is_none(),
            "two delivery reports for record {index}"
        );
        reports[index] = Some(report);
    }
}

/// Sends every record and returns the (partition, offset) each was acknowledged at.
fn produce(bootstrap: &str, records: &[Record]) -> Vec<(i32, i64)> {
    let context = DeliveryLog {
        reports: Mutex::new(vec![None; records.len()]),
    };
    let producer: BaseProducer<DeliveryLog> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("enable.idempotence", "false")
        .set("max.in.flight.requests.per.connection", "1")
        .set("linger.ms", "5")
        .set(
            "message.timeout.ms",
            DELIVERY_TIMEOUT.as_millis().to_string(),
        )
        .create_with_context(context)
        .expect("create producer");
    for (index, record) in records.iter().enumerate() {
        let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
        for (key, value) in &record.headers {
            headers = headers.insert(Header {
                key,
                value: value.as_deref(),
            });
        }
        let mut message = BaseRecord::with_opaque_to(TOPIC, index)
            .key(&record.key[..])
            .headers(headers)
            .timestamp(record.timestamp_ms);
        if let Some(value) = &record.value {
            message = message.payload(&value[..]);
        }
        // 500 records never fill librdkafka's queue (100,000 messages by default).
        producer
            .send::<[u8], [u8]>(message)
            .map_err(|(error, _)| error)
            .expect("enqueue record");
        producer.poll(Duration::ZERO);
    }
    producer
        .flush(DELIVERY_TIMEOUT)
        .expect("flush: every record acknowledged in time");

    let reports = producer.context().reports.lock().unwrap().clone();
    reports
        .into_iter()
        .enumerate()
        .map(|(index, report)| match report {
            Some(Ok(position)) => position,
            Some(Err(error)) => panic!("record {index} failed: {error}"),
            None => panic!("record {index} has no delivery report"),
        })
        .collect()
}

/// Reads every partition of `TOPIC` from the beginning until `expected` records have arrived (and
/// `EXTRA_RECORDS_WAIT` more, to see any surplus), returning (offset, record) per partition in the
/// order received.
fn consume(bootstrap: &str, expected: usize) -> BTreeMap<i32, Vec<(i64, Record)>> {
    // librdkafka's assign() wants a group.id, but assign mode never joins the group and nothing
    // is committed, so the group coordinator is not needed.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set(
            "group.id",
            format!("sluice-rdkafka-test-{}", std::process::id()),
        )
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // An out-of-range offset must fail the test, not silently jump to the end of the partition.
        .set("auto.offset.reset", "error")
        .set("enable.partition.eof", "false")
        .create()
        .expect("create consumer");
    let metadata = consumer
        .fetch_metadata(Some(TOPIC), Duration::from_secs(10))
        .expect("metadata");
    let topic = metadata
        .topics()
        .iter()
        .find(|t| t.name() == TOPIC)
        .expect("topic in metadata");
    assert!(
        topic.error().is_none(),
        "topic error in metadata: {:?}",
        topic.error()
    );
    assert!(!topic.partitions().is_empty(), "topic has partitions");
    let mut assignment = TopicPartitionList::new();
    for partition in topic.partitions() {
        assignment
            .add_partition_offset(TOPIC, partition.id(), Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).expect("assign");

    let mut consumed: BTreeMap<i32, Vec<(i64, Record)>> = BTreeMap::new();
    let mut count = 0;
    let deadline = Instant::now() + CONSUME_TIMEOUT;
    let mut stop_at = deadline;
    while Instant::now() < stop_at {
        let Some(result) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let message = result.expect("consumer error");
        assert_eq!(message.topic(), TOPIC);
        let headers = message.headers().map_or_else(Vec::new, |headers| {
            headers
                .iter()
                .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                .collect()
        });
        let Timestamp::CreateTime(timestamp_ms) = message.timestamp() else {
            panic!(
                "offset {}: timestamp {:?}, not CreateTime",
                message.offset(),
                message.timestamp()
            )
        };
        let record = Record {
            key: message.key().expect("every record has a key").to_vec(),
            value: message.payload().map(<[u8]>::to_vec),
            headers,
            timestamp_ms,
        };
        consumed
            .entry(message.partition())
            .or_default()
            .push((message.offset(), record));
        count += 1;
        if count == expected {
            stop_at = Instant::now() + EXTRA_RECORDS_WAIT;
        }
    }
    assert!(
        count >= expected,
        "read only {count} of {expected} records within {CONSUME_TIMEOUT:?}"
    );
    consumed
}

/// One `sluice serve` child process on a free port with a fresh data directory. Dropping it kills
/// the process and removes the directory (after printing the broker's log if the test failed).
struct Broker {
    child: Child,
    port: u16,
    root: PathBuf,
}

impl Broker {
    fn start() -> Broker {
        let port = free_port();
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let root = std::env::temp_dir().join(format!(
            "sluice-rdkafka-test-{}-{nanos}",
            std::process::id()
        ));
        let data_dir = root.join("data");
        fs::create_dir_all(&data_dir).expect("create the data directory");
        let log = File::create(root.join("sluice.log")).expect("create the broker log");
        let child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(&data_dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log file handle"))
            .stderr(log)
            .spawn()
            .expect("spawn sluice");
        // From here on the guard owns the process and the directory.
        let mut broker = Broker { child, port, root };
        broker.wait_ready();
        broker
    }

    fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Polls until the port accepts TCP connections; fails early if the process exits.
    fn wait_ready(&mut self) {
        let address = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + BROKER_START_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll the broker process") {
                panic!("sluice exited with {status} before accepting connections on {address}");
            }
            match TcpStream::connect_timeout(&address, Duration::from_millis(500)) {
                Ok(_) => return,
                Err(error) if Instant::now() >= deadline => {
                    panic!("sluice did not accept connections on {address} within {BROKER_START_TIMEOUT:?}: {error}")
                }
                Err(_) => thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    fn log_tail(&self) -> String {
        let Ok(mut file) = File::open(self.root.join("sluice.log")) else {
            return "(no log)".to_string();
        };
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = file.seek(SeekFrom::Start(size.saturating_sub(BROKER_LOG_TAIL_BYTES)));
        let mut bytes = Vec::new();
        let _ = file.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!(
                "--- sluice log (tail) ---\n{}\n--- end of sluice log ---",
                self.log_tail()
            );
        }
        let _ = fs::remove_dir_all(&self.root);
    }
}

/// A port that was free a moment ago: bind port 0, read the port, release it.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local address").port()
}
