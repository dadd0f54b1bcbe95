//! librdkafka (the `rdkafka` crate) against the real `sluice` binary: 500 keyed records with
//! headers go to a topic the producer's first send auto-creates, with acks=all; a consumer then
//! assigns every partition from the beginning and must read back exactly what was acknowledged —
//! the same keys, values, headers and timestamps, at the acknowledged offsets, in offset order,
//! and nothing else. A second test produces with each codec to topics whose `compression.type`
//! makes the broker rewrite the batches. A third moves low watermarks with DeleteRecords through
//! librdkafka's admin client; a consumer starting from the beginning starts there.
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

use kafka_protocol::messages::create_topics_request::{
    CreatableTopic, CreatableTopicConfig, CreateTopicsRequest,
};
use kafka_protocol::messages::describe_configs_request::{
    DescribeConfigsRequest, DescribeConfigsResource,
};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchRequest, FetchTopic};
use kafka_protocol::messages::{BrokerId, TopicName};
use kafka_protocol::protocol::StrBytes;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{DeliveryResult, Header, Headers, Message, OwnedHeaders, Timestamp};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use sluice_core::batch;
use sluice_node::client::Connection;

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
    let acked = produce(&broker.bootstrap(), TOPIC, &sent, &[]);
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
    let consumed = consume(&broker.bootstrap(), TOPIC, RECORDS);
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

/// A topic's `compression.type` decides the codec its batches are stored in, whatever codec the
/// producer used: the leader rewrites them once (Kafka's `LogValidator`), keeping every record
/// (keys, values, headers, timestamps) and the idempotent producer's id, epoch and sequences, so
/// offsets stay dense and a consumer reads exactly what was sent. `producer` keeps the
/// producer's codec.
#[test]
fn a_topics_compression_type_decides_the_stored_codec_and_records_read_back_unchanged() {
    const COMPRESSED_RECORDS: usize = 200;
    let broker = Broker::start();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let base_timestamp_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let sent: Vec<Record> = (0..COMPRESSED_RECORDS)
        .map(|i| record(i, base_timestamp_ms))
        .collect();
    // (what the producer compresses with, the topic's compression.type, the stored codec id)
    for (producer_codec, compression_type, stored_codec) in [
        ("lz4", "gzip", 1),
        ("none", "zstd", 4),
        ("gzip", "uncompressed", 0),
        ("snappy", "lz4", 3),
        ("zstd", "producer", 4),
    ] {
        let topic = format!("compress-{producer_codec}-as-{compression_type}");
        let case = format!("{producer_codec} on a {compression_type} topic");
        runtime.block_on(create_topic_with(
            &broker.bootstrap(),
            &topic,
            &[("compression.type", compression_type)],
        ));
        let acked = produce(
            &broker.bootstrap(),
            &topic,
            &sent,
            &[
                ("compression.codec", producer_codec),
                ("enable.idempotence", "true"),
                ("linger.ms", "20"),
            ],
        );
        let offsets: Vec<(i32, i64)> = (0..COMPRESSED_RECORDS as i64).map(|o| (0, o)).collect();
        assert_eq!(acked, offsets, "{case}: acknowledged offsets");

        // The batches as stored: the topic's codec, the producer's id and sequences.
        let batches = runtime.block_on(fetch_batches(
            &broker.bootstrap(),
            &topic,
            COMPRESSED_RECORDS,
        ));
        assert!(
            batches.len() < COMPRESSED_RECORDS,
            "{case}: records travel in batches of several ({} batches)",
            batches.len()
        );
        let producer_id = batches[0].producer_id;
        assert!(producer_id >= 0, "{case}: an idempotent producer's batches");
        for header in &batches {
            assert_eq!(header.compression(), stored_codec, "{case}: {header:?}");
            assert_eq!(
                (header.producer_id, header.producer_epoch),
                (producer_id, batches[0].producer_epoch),
                "{case}: {header:?}"
            );
            // One producer on a new topic: its sequence numbers are its offsets.
            assert_eq!(
                i64::from(header.base_sequence),
                header.base_offset,
                "{case}: {header:?}"
            );
        }
        let stored: i32 = batches.iter().map(|h| h.record_count).sum();
        assert_eq!(stored, COMPRESSED_RECORDS as i32, "{case}: records stored");

        // And a consumer reads back exactly what was sent, at the acknowledged offsets.
        let consumed = consume(&broker.bootstrap(), &topic, COMPRESSED_RECORDS);
        let want: Vec<(i64, Record)> = (0..).zip(sent.iter().cloned()).collect();
        assert_eq!(consumed.len(), 1, "{case}: one partition");
        for (index, (have, want)) in consumed[&0].iter().zip(&want).enumerate() {
            assert_eq!(have, want, "{case}: record {index}");
        }
        assert_eq!(
            consumed[&0].len(),
            COMPRESSED_RECORDS,
            "{case}: records read"
        );

        // DescribeConfigs shows the override as the topic's.
        let described = runtime.block_on(describe_topic(&broker.bootstrap(), &topic));
        assert!(
            described.contains(&(
                "compression.type".to_string(),
                compression_type.to_string(),
                1
            )),
            "{case}: {described:?}"
        );
        assert!(
            described.contains(&("compression.zstd.level".to_string(), "3".to_string(), 5)),
            "{case}: Kafka's default level: {described:?}"
        );
    }
    // A value Kafka does not know is refused, naming the config.
    let refused = runtime.block_on(async {
        let mut c = Connection::connect(&broker.bootstrap()).await.unwrap();
        let response = c
            .call(
                &create_topics(&["compression-brotli"], &[("compression.type", "brotli")]),
                7,
            )
            .await
            .unwrap();
        response.topics[0].clone()
    });
    assert_eq!(refused.error_code, 40, "INVALID_CONFIG");
    let message = refused
        .error_message
        .map(|m| m.to_string())
        .unwrap_or_default();
    assert!(message.contains("compression.type"), "{message}");
}

fn create_topics(names: &[&str], configs: &[(&str, &str)]) -> CreateTopicsRequest {
    let configs: Vec<CreatableTopicConfig> = configs
        .iter()
        .map(|(name, value)| {
            CreatableTopicConfig::default()
                .with_name(StrBytes::from_string(name.to_string()))
                .with_value(Some(StrBytes::from_string(value.to_string())))
        })
        .collect();
    CreateTopicsRequest::default()
        .with_timeout_ms(10_000)
        .with_topics(
            names
                .iter()
                .map(|name| {
                    CreatableTopic::default()
                        .with_name(TopicName(StrBytes::from_string(name.to_string())))
                        .with_num_partitions(1)
                        .with_replication_factor(1)
                        .with_configs(configs.clone())
                })
                .collect(),
        )
}

/// Creates a one-partition topic with `configs`, through Sluice's own client.
async fn create_topic_with(bootstrap: &str, topic: &str, configs: &[(&str, &str)]) {
    let mut c = Connection::connect(bootstrap).await.unwrap();
    let response = c.call(&create_topics(&[topic], configs), 7).await.unwrap();
    let result = &response.topics[0];
    assert_eq!(
        result.error_code, 0,
        "create {topic}: {:?}",
        result.error_message
    );
}

/// The headers of the batches of partition 0 of `topic` up to `records` records, fetched as a
/// consumer fetches them (each checked whole, with a good CRC).
async fn fetch_batches(bootstrap: &str, topic: &str, records: usize) -> Vec<batch::BatchHeader> {
    let mut c = Connection::connect(bootstrap).await.unwrap();
    let mut headers: Vec<batch::BatchHeader> = Vec::new();
    let mut next = 0i64;
    let deadline = Instant::now() + CONSUME_TIMEOUT;
    while next < records as i64 {
        assert!(
            Instant::now() < deadline,
            "fetched only up to offset {next}"
        );
        let request = FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(100)
            .with_min_bytes(1)
            .with_max_bytes(1 << 20)
            .with_session_epoch(-1)
            .with_topics(vec![FetchTopic::default()
                .with_topic(TopicName(StrBytes::from_string(topic.to_string())))
                .with_partitions(vec![FetchPartition::default()
                    .with_partition(0)
                    .with_fetch_offset(next)
                    .with_partition_max_bytes(1 << 20)
                    .with_current_leader_epoch(-1)
                    .with_last_fetched_epoch(-1)
                    .with_log_start_offset(-1)])]);
        let response = c.call(&request, 12).await.unwrap();
        let partition = &response.responses[0].partitions[0];
        assert_eq!(partition.error_code, 0, "fetch {topic} at {next}");
        let bytes = partition.records.clone().unwrap_or_default();
        if bytes.is_empty() {
            continue;
        }
        for (header, _) in batch::split_batches(&bytes).expect("whole batches, good CRCs") {
            if header.next_offset() > next {
                next = header.next_offset();
                headers.push(header);
            }
        }
    }
    headers
}

/// Every config DescribeConfigs shows for `topic`: (name, value, config source).
async fn describe_topic(bootstrap: &str, topic: &str) -> Vec<(String, String, i8)> {
    let mut c = Connection::connect(bootstrap).await.unwrap();
    let request =
        DescribeConfigsRequest::default().with_resources(vec![DescribeConfigsResource::default()
            .with_resource_type(2)
            .with_resource_name(StrBytes::from_string(topic.to_string()))
            .with_configuration_keys(None)]);
    let response = c.call(&request, 4).await.unwrap();
    assert_eq!(response.results[0].error_code, 0);
    response.results[0]
        .configs
        .iter()
        .map(|c| {
            (
                c.name.to_string(),
                c.value.as_ref().map(|v| v.to_string()).unwrap_or_default(),
                c.config_source,
            )
        })
        .collect()
}

/// Kafka's DeleteRecords through librdkafka's admin client (`rd_kafka_DeleteRecords`): the first
/// partition is cut to its end (-1, the high watermark), the others to half their records, one
/// offset past the end is OFFSET_OUT_OF_RANGE; the watermarks then report the new low
/// watermarks, and a consumer reading from the beginning starts at them.
#[test]
fn delete_records_moves_the_low_watermark_where_consumers_start() {
    let broker = Broker::start();
    let sent = records_now();
    let acked = produce(&broker.bootstrap(), TOPIC, &sent, &[]);
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
    let consumed = consume(&broker.bootstrap(), TOPIC, expected);
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

/// Sends every record to `topic` and returns the (partition, offset) each was acknowledged at.
/// `settings` are librdkafka settings on top of the test's own.
fn produce(
    bootstrap: &str,
    topic: &str,
    records: &[Record],
    settings: &[(&str, &str)],
) -> Vec<(i32, i64)> {
    let context = DeliveryLog {
        reports: Mutex::new(vec![None; records.len()]),
    };
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("enable.idempotence", "false")
        .set("max.in.flight.requests.per.connection", "1")
        .set("linger.ms", "5")
        .set(
            "message.timeout.ms",
            DELIVERY_TIMEOUT.as_millis().to_string(),
        );
    for (key, value) in settings {
        config.set(*key, *value);
    }
    let producer: BaseProducer<DeliveryLog> = config
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
        let mut message = BaseRecord::with_opaque_to(topic, index)
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

/// Reads every partition of `topic` from the beginning until `expected` records have arrived (and
/// `EXTRA_RECORDS_WAIT` more, to see any surplus), returning (offset, record) per partition in the
/// order received.
fn consume(bootstrap: &str, topic: &str, expected: usize) -> BTreeMap<i32, Vec<(i64, Record)>> {
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
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let described = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .expect("topic in metadata");
    assert!(
        described.error().is_none(),
        "topic error in metadata: {:?}",
        described.error()
    );
    assert!(!described.partitions().is_empty(), "topic has partitions");
    let mut assignment = TopicPartitionList::new();
    for partition in described.partitions() {
        assignment
            .add_partition_offset(topic, partition.id(), Offset::Beginning)
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
        assert_eq!(message.topic(), topic);
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
