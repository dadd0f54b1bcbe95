//! Workload clients in the spirit of Jepsen's Kafka workload: each process sends unique values to
//! random partitions (acks=all or acks=1), polls its assigned partitions in assign mode,
//! sometimes reassigns and seeks to the beginning, and records every operation with its invoke
//! and completion time and what it returned. At the end a fresh process reads every partition
//! from the beginning.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreateTopicsRequest};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchRequest, FetchTopic};
use kafka_protocol::messages::init_producer_id_request::InitProducerIdRequest;
use kafka_protocol::messages::metadata_request::{MetadataRequest, MetadataRequestTopic};
use kafka_protocol::messages::produce_request::{
    PartitionProduceData, ProduceRequest, TopicProduceData,
};
use kafka_protocol::messages::produce_response::PartitionProduceResponse;
use kafka_protocol::messages::{BrokerId, ProducerId, TopicName};
use kafka_protocol::protocol::StrBytes;
use sluice_core::batch::{split_batches, BatchBuilder, NewRecord, Records};
use sluice_core::history::{Acks, Key, OpKind, Outcome, Reads};
use sluice_core::rng::Rng;
use sluice_core::ErrorCode;
use sluice_node::client::Connection;

use crate::params::Params;
use crate::trace::Trace;

/// How long a client waits for any single response before calling the operation indeterminate.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a client waits to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// Fetch limits used by polls.
const POLL_MAX_BYTES: i32 = 64 * 1024;
pub(crate) const POLL_MAX_WAIT_MS: i32 = 100;

pub const TOPIC: &str = "sim";

/// One recorded operation of one process, before the run merges them into a `History`.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub process: u32,
    pub kind: OpKind,
    pub invoke_ms: u64,
    pub complete_ms: u64,
}

pub fn key(partition: i32) -> Key {
    Key::new(TOPIC, partition)
}

fn topic_name() -> TopicName {
    TopicName(StrBytes::from_static_str(TOPIC))
}

/// Why a call returned no response.
pub enum CallError {
    /// No connection could be made: the request was never sent.
    NotSent(String),
    /// Sent (or maybe sent) and then the connection failed or timed out.
    Unknown(String),
}

/// One broker connection, re-established on demand.
struct Conn {
    addr: String,
    conn: Option<Connection>,
}

impl Conn {
    /// Sends one request and waits for its response, within [`REQUEST_TIMEOUT`]. Any failure
    /// drops the connection (the next call reconnects).
    async fn call<R: kafka_protocol::protocol::Request>(
        &mut self,
        request: &R,
        version: i16,
    ) -> Result<R::Response, CallError> {
        self.call_within(request, version, REQUEST_TIMEOUT).await
    }

    /// As [`Conn::call`], waiting up to `timeout` for the response (a JoinGroup waits for the
    /// whole rebalance).
    async fn call_within<R: kafka_protocol::protocol::Request>(
        &mut self,
        request: &R,
        version: i16,
        timeout: Duration,
    ) -> Result<R::Response, CallError> {
        if self.conn.is_none() {
            let conn = tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect(&self.addr))
                .await
                .map_err(|_| CallError::NotSent("connect timed out".to_string()))?
                .map_err(|e| CallError::NotSent(format!("connect: {e}")))?;
            self.conn = Some(conn);
        }
        let conn = self.conn.as_mut().expect("connected above");
        match tokio::time::timeout(timeout, conn.call(request, version)).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) => {
                self.conn = None;
                Err(CallError::Unknown(format!("connection: {e}")))
            }
            Err(_) => {
                self.conn = None;
                Err(CallError::Unknown("request timed out".to_string()))
            }
        }
    }
}

/// A client of the cluster, like a Kafka client: it learns partition leaders from Metadata,
/// sends produce and fetch to the leader, and refreshes its metadata after an error that says
/// the leader moved (or a connection failure).
pub struct Client {
    /// Bootstrap addresses, tried in turn for Metadata and for requests any broker answers.
    bootstrap: Vec<String>,
    next_bootstrap: usize,
    /// Connections by broker address.
    conns: BTreeMap<String, Conn>,
    /// Broker id -> address, from the last Metadata.
    brokers: BTreeMap<i32, String>,
    /// Partition -> leader id, from the last Metadata.
    leaders: BTreeMap<i32, i32>,
    stale: bool,
}

impl Client {
    pub fn new(bootstrap: &[String]) -> Client {
        Client {
            bootstrap: bootstrap.to_vec(),
            next_bootstrap: 0,
            conns: BTreeMap::new(),
            brokers: BTreeMap::new(),
            leaders: BTreeMap::new(),
            stale: true,
        }
    }

    fn conn(&mut self, addr: &str) -> &mut Conn {
        self.conns.entry(addr.to_string()).or_insert_with(|| Conn {
            addr: addr.to_string(),
            conn: None,
        })
    }

    /// The next bootstrap broker in turn (a cluster's brokers may be down one at a time).
    fn any_broker(&mut self) -> String {
        let addr = self.bootstrap[self.next_bootstrap % self.bootstrap.len()].clone();
        self.next_bootstrap += 1;
        addr
    }

    /// Asks one broker for the workload topic's leaders.
    async fn refresh(&mut self) {
        let addr = self.any_broker();
        let Ok(response) = self.conn(&addr).call(&metadata_request(), 9).await else {
            return;
        };
        self.brokers = response
            .brokers
            .iter()
            .map(|b| (b.node_id.0, format!("{}:{}", b.host, b.port)))
            .collect();
        self.leaders.clear();
        for topic in &response.topics {
            for p in &topic.partitions {
                if p.error_code == 0 && p.leader_id.0 >= 0 {
                    self.leaders.insert(p.partition_index, p.leader_id.0);
                }
            }
        }
        self.stale = false;
    }

    /// Sends a request any broker answers (to the next in turn).
    pub async fn call<R: kafka_protocol::protocol::Request>(
        &mut self,
        request: &R,
        version: i16,
    ) -> Result<R::Response, String> {
        self.call_checked(request, version)
            .await
            .map_err(|e| match e {
                CallError::NotSent(why) | CallError::Unknown(why) => why,
            })
    }

    /// Like `call`, but tells a request that never left (no connection) from one whose fate is
    /// unknown.
    pub async fn call_checked<R: kafka_protocol::protocol::Request>(
        &mut self,
        request: &R,
        version: i16,
    ) -> Result<R::Response, CallError> {
        let addr = self.any_broker();
        self.conn(&addr).call(request, version).await
    }

    /// Sends a request to `partition`'s leader, refreshing the leaders first if they may have
    /// moved. A failed call marks them stale.
    pub async fn call_leader<R: kafka_protocol::protocol::Request>(
        &mut self,
        partition: i32,
        request: &R,
        version: i16,
    ) -> Result<R::Response, CallError> {
        let Some(addr) = self.leader_addr(partition).await else {
            return Err(CallError::NotSent(format!(
                "no leader known for partition {partition}"
            )));
        };
        self.call_at(&addr, request, version).await
    }

    /// Produces one partition's batch at its leader and returns that partition's answer; an
    /// error code marks the leaders stale, as a failed call does.
    pub async fn produce(
        &mut self,
        partition: i32,
        request: &ProduceRequest,
    ) -> Result<PartitionProduceResponse, CallError> {
        let mut response = self.call_leader(partition, request, 9).await?;
        let answer = response
            .responses
            .swap_remove(0)
            .partition_responses
            .swap_remove(0);
        if answer.error_code != 0 {
            self.stale = true;
        }
        Ok(answer)
    }

    /// The address of `partition`'s leader, refreshing the leaders first if they may have
    /// moved; `None` (and stale leaders) if no broker knows one.
    async fn leader_addr(&mut self, partition: i32) -> Option<String> {
        if self.stale || !self.leaders.contains_key(&partition) {
            self.refresh().await;
        }
        let addr = self
            .leaders
            .get(&partition)
            .and_then(|id| self.brokers.get(id))
            .cloned();
        if addr.is_none() {
            self.stale = true;
        }
        addr
    }

    /// Sends to the broker at `addr`; a failed call marks the leaders stale.
    pub(crate) async fn call_at<R: kafka_protocol::protocol::Request>(
        &mut self,
        addr: &str,
        request: &R,
        version: i16,
    ) -> Result<R::Response, CallError> {
        self.call_at_within(addr, request, version, REQUEST_TIMEOUT)
            .await
    }

    /// As [`Client::call_at`], waiting up to `timeout` for the response.
    pub(crate) async fn call_at_within<R: kafka_protocol::protocol::Request>(
        &mut self,
        addr: &str,
        request: &R,
        version: i16,
        timeout: Duration,
    ) -> Result<R::Response, CallError> {
        let result = self.conn(addr).call_within(request, version, timeout).await;
        if result.is_err() {
            self.stale = true;
        }
        result
    }
}

/// Creates the workload topic, retrying (at each broker in turn: one of them is the controller)
/// until a broker says it exists.
pub async fn create_topic(
    bootstrap: &[String],
    partitions: i32,
    replication_factor: i16,
    trace: &Trace,
) {
    let mut client = Client::new(bootstrap);
    let request = CreateTopicsRequest::default()
        .with_timeout_ms(5_000)
        .with_topics(vec![CreatableTopic::default()
            .with_name(topic_name())
            .with_num_partitions(partitions)
            .with_replication_factor(replication_factor)]);
    loop {
        match client.call(&request, 5).await {
            Ok(r)
                if r.topics[0].error_code == 0
                    || r.topics[0].error_code == ErrorCode::TopicAlreadyExists.code() =>
            {
                trace.record(
                    "setup",
                    "topic-created",
                    format!("{TOPIC} with {partitions} partitions, {replication_factor} replicas"),
                );
                return;
            }
            Ok(r) => trace.record(
                "setup",
                "create-topic-error",
                format!("error code {}", r.topics[0].error_code),
            ),
            Err(e) => trace.record("setup", "create-topic-error", e),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Metadata of the workload topic (never auto-created).
fn metadata_request() -> MetadataRequest {
    MetadataRequest::default()
        .with_topics(Some(vec![
            MetadataRequestTopic::default().with_name(Some(topic_name()))
        ]))
        .with_allow_auto_topic_creation(false)
}

fn produce_request(partition: i32, acks: i16, value: u64, timestamp: i64) -> ProduceRequest {
    produce_request_as(partition, acks, value, timestamp, None)
}

/// A produce request; `idempotent` is (producer id, epoch, sequence).
fn produce_request_as(
    partition: i32,
    acks: i16,
    value: u64,
    timestamp: i64,
    idempotent: Option<(i64, i16, i32)>,
) -> ProduceRequest {
    let mut builder = BatchBuilder::new(timestamp);
    if let Some((producer_id, epoch, sequence)) = idempotent {
        builder = builder.idempotent(producer_id, epoch, sequence);
    }
    builder.push(&NewRecord {
        timestamp,
        key: None,
        value: Some(value.to_be_bytes().to_vec()),
        headers: vec![],
    });
    ProduceRequest::default()
        .with_acks(acks)
        .with_timeout_ms(5_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(topic_name())
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(partition)
                .with_records(Some(Bytes::from(builder.build())))])])
}

fn fetch_request(cursors: &BTreeMap<i32, u64>, max_wait_ms: i32) -> FetchRequest {
    let partitions = cursors
        .iter()
        .map(|(p, offset)| {
            FetchPartition::default()
                .with_partition(*p)
                .with_fetch_offset(*offset as i64)
                .with_partition_max_bytes(POLL_MAX_BYTES)
                .with_current_leader_epoch(-1)
                .with_last_fetched_epoch(-1)
                .with_log_start_offset(-1)
        })
        .collect();
    FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(max_wait_ms)
        .with_min_bytes(1)
        .with_max_bytes(POLL_MAX_BYTES)
        .with_session_epoch(-1)
        .with_topics(vec![FetchTopic::default()
            .with_topic(topic_name())
            .with_partitions(partitions)])
}

/// `(offset, value)` of every record at or after `from` in the fetched bytes.
/// The `(offset, value)` pairs at or above `from`, and the offset after the last batch (data or
/// control) in the response, where the next fetch continues.
fn decode_values(records: &[u8], from: u64) -> Result<(Vec<(u64, u64)>, Option<u64>), String> {
    let mut out = Vec::new();
    if records.is_empty() {
        return Ok((out, None));
    }
    let batches = split_batches(records).map_err(|e| format!("fetched batch invalid: {e}"))?;
    let next = batches
        .last()
        .map(|(header, _)| header.next_offset().max(0) as u64);
    for (header, range) in batches {
        // Control batches (a leader's term start) carry no client records; Kafka clients skip
        // them too.
        if header.is_control() {
            continue;
        }
        let records =
            Records::new(&records[range]).map_err(|e| format!("fetched batch unreadable: {e}"))?;
        for record in records {
            let record = record.map_err(|e| format!("fetched record unreadable: {e}"))?;
            let offset = (header.base_offset + record.offset_delta) as u64;
            if offset < from {
                continue;
            }
            let value = record
                .value
                .and_then(|v| <[u8; 8]>::try_from(v).ok())
                .map(u64::from_be_bytes)
                .ok_or_else(|| {
                    format!("record at offset {offset} has a value that no client sent")
                })?;
            out.push((offset, value));
        }
    }
    Ok((out, next))
}

/// Produce error codes that mean the batch is not in the log and never will be: corrupt message,
/// unknown topic or partition, message too large, invalid acks, and not the leader (refused by
/// a follower, or appended by a leader whose entry a new leader then cut).
fn refused_before_write(code: i16) -> bool {
    [2, 3, 6, 10, 21].contains(&code)
}

/// Sends once; the outcome as the checker should see it.
async fn send_once(
    client: &mut Client,
    partition: i32,
    acks: i16,
    value: u64,
    timestamp: i64,
) -> Outcome<u64> {
    match client
        .produce(
            partition,
            &produce_request(partition, acks, value, timestamp),
        )
        .await
    {
        Ok(p) => {
            match p.error_code {
                0 => Outcome::Ok(p.base_offset as u64),
                // Refused before anything was written: definitely not in the log.
                code if refused_before_write(code) => Outcome::Fail(format!("error code {code}")),
                code => Outcome::Info(format!("error code {code}")),
            }
        }
        Err(CallError::NotSent(why)) => Outcome::Fail(why),
        Err(CallError::Unknown(why)) => Outcome::Info(why),
    }
}

/// Attempts per send of an idempotent producer (the first try and its retries).
const IDEMPOTENT_ATTEMPTS_MAX: u32 = 6;

/// An idempotent producer's identity and per-partition sequence numbers.
#[derive(Default)]
struct IdempotentProducer {
    id: Option<(i64, i16)>,
    sequences: BTreeMap<i32, i32>,
}

impl IdempotentProducer {
    /// Sends `value`, retrying the identical batch while its fate is unknown. The broker must
    /// answer a retry of a batch it already has with the original offset.
    async fn send(
        &mut self,
        client: &mut Client,
        partition: i32,
        acks: i16,
        value: u64,
        timestamp: i64,
    ) -> Outcome<u64> {
        let (producer_id, epoch) = match self.id {
            Some(id) => id,
            None => {
                let request = InitProducerIdRequest::default()
                    .with_transactional_id(None)
                    .with_producer_id(ProducerId(-1))
                    .with_producer_epoch(-1);
                match client.call_checked(&request, 4).await {
                    Ok(r) if r.error_code == 0 => {
                        let id = (r.producer_id.0, r.producer_epoch);
                        self.id = Some(id);
                        self.sequences.clear();
                        id
                    }
                    Ok(r) => {
                        return Outcome::Fail(format!("InitProducerId error code {}", r.error_code))
                    }
                    Err(CallError::NotSent(why) | CallError::Unknown(why)) => {
                        return Outcome::Fail(format!("InitProducerId: {why}"))
                    }
                }
            }
        };
        let sequence = *self.sequences.get(&partition).unwrap_or(&0);
        let request = produce_request_as(
            partition,
            acks,
            value,
            timestamp,
            Some((producer_id, epoch, sequence)),
        );
        let mut maybe_sent = false;
        let mut last = String::new();
        for attempt in 0..IDEMPOTENT_ATTEMPTS_MAX {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(50 << attempt.min(4))).await;
            }
            match client.produce(partition, &request).await {
                Ok(p) => {
                    match p.error_code {
                        0 => {
                            self.sequences.insert(partition, sequence.wrapping_add(1));
                            return Outcome::Ok(p.base_offset as u64);
                        }
                        code if refused_before_write(code) && !maybe_sent => {
                            return Outcome::Fail(format!("error code {code}"));
                        }
                        // The sequence no longer fits what the broker has (an acks=1 batch lost
                        // in a crash, say): start over as a new producer. This value's fate is
                        // unknown if an earlier attempt may have landed.
                        45 | 47 | 59 => {
                            self.id = None;
                            let why = format!("error code {}, producer reset", p.error_code);
                            return if maybe_sent {
                                Outcome::Info(why)
                            } else {
                                Outcome::Fail(why)
                            };
                        }
                        code => {
                            maybe_sent = true;
                            last = format!("error code {code}");
                        }
                    }
                }
                Err(CallError::NotSent(why)) => last = why,
                Err(CallError::Unknown(why)) => {
                    maybe_sent = true;
                    last = why;
                }
            }
        }
        // Gave up: the next value must not reuse this sequence, so start over as a new producer.
        self.id = None;
        if maybe_sent {
            Outcome::Info(format!("{last} after {IDEMPOTENT_ATTEMPTS_MAX} attempts"))
        } else {
            Outcome::Fail(format!("{last} after {IDEMPOTENT_ATTEMPTS_MAX} attempts"))
        }
    }
}

/// What a fetch of `cursors` returned.
pub(crate) struct Fetched {
    pub(crate) reads: Reads,
    /// Partitions whose fetch offset was out of range.
    pub(crate) out_of_range: Vec<i32>,
    /// Per-partition error codes other than out-of-range.
    pub(crate) errors: Vec<(i32, i16)>,
    pub(crate) high_watermarks: BTreeMap<i32, u64>,
    /// Where each partition's next fetch continues: past the last batch returned, control
    /// batches included (a log may end in one).
    pub(crate) next_offsets: BTreeMap<i32, u64>,
}

pub(crate) async fn fetch(
    client: &mut Client,
    cursors: &BTreeMap<i32, u64>,
    max_wait_ms: i32,
) -> Result<Fetched, String> {
    let mut fetched = Fetched {
        reads: Reads::new(),
        out_of_range: Vec::new(),
        errors: Vec::new(),
        high_watermarks: BTreeMap::new(),
        next_offsets: BTreeMap::new(),
    };
    // One fetch per leader, as a Kafka consumer sends them.
    let mut by_leader: BTreeMap<String, BTreeMap<i32, u64>> = BTreeMap::new();
    for (partition, cursor) in cursors {
        match client.leader_addr(*partition).await {
            Some(addr) => {
                by_leader
                    .entry(addr)
                    .or_default()
                    .insert(*partition, *cursor);
            }
            None => fetched
                .errors
                .push((*partition, ErrorCode::LeaderNotAvailable.code())),
        }
    }
    let mut failed = None;
    for (addr, group) in &by_leader {
        match client
            .call_at(addr, &fetch_request(group, max_wait_ms), 12)
            .await
        {
            Ok(response) => decode_fetch(&response, group, &mut fetched)?,
            Err(CallError::NotSent(why) | CallError::Unknown(why)) => {
                // Reported like a partition error; the poll is indeterminate, not failed.
                for partition in group.keys() {
                    fetched
                        .errors
                        .push((*partition, ErrorCode::UnknownServerError.code()));
                }
                failed = Some(why);
            }
        }
    }
    if let (Some(why), true) = (failed, fetched.high_watermarks.is_empty()) {
        return Err(why);
    }
    if !fetched.errors.is_empty() {
        client.stale = true;
    }
    Ok(fetched)
}

/// Adds one fetch response's partitions (those in `cursors`) to `fetched`.
fn decode_fetch(
    response: &kafka_protocol::messages::FetchResponse,
    cursors: &BTreeMap<i32, u64>,
    fetched: &mut Fetched,
) -> Result<(), String> {
    for topic in &response.responses {
        for p in &topic.partitions {
            let partition = p.partition_index;
            let Some(cursor) = cursors.get(&partition) else {
                continue;
            };
            match p.error_code {
                0 => {
                    fetched
                        .high_watermarks
                        .insert(partition, p.high_watermark.max(0) as u64);
                    let (values, next) =
                        decode_values(p.records.as_deref().unwrap_or(&[]), *cursor)?;
                    if let Some(next) = next {
                        fetched.next_offsets.insert(partition, next);
                    }
                    if !values.is_empty() {
                        fetched.reads.insert(key(partition), values);
                    }
                }
                code if code == ErrorCode::OffsetOutOfRange.code() => {
                    fetched.out_of_range.push(partition)
                }
                code => fetched.errors.push((partition, code)),
            }
        }
    }
    Ok(())
}

/// One client process, until `deadline_ms` of simulated time.
pub async fn run_client(
    process: u32,
    bootstrap: Vec<String>,
    params: Params,
    mut rng: Rng,
    trace: Trace,
    deadline_ms: u64,
) -> Vec<Recorded> {
    let source = format!("client-{process}");
    let mut client = Client::new(&bootstrap);
    let mut ops = Vec::new();
    let mut next_value: u64 = 0;
    let all: Vec<i32> = (0..params.partitions).collect();
    let mut cursors: BTreeMap<i32, u64> = all.iter().map(|p| (*p, 0)).collect();
    // Some processes are idempotent producers that retry indeterminate sends, as Kafka
    // clients do: the broker must recognise every retry, even across crashes.
    let mut idempotence = rng
        .chance(params.idempotent_per_mille)
        .then(IdempotentProducer::default);
    let record = |ops: &mut Vec<Recorded>, kind: OpKind, invoke_ms: u64, trace: &Trace| {
        let complete_ms = trace.now_ms();
        trace.record(&source, "op", describe(&kind));
        ops.push(Recorded {
            process,
            kind,
            invoke_ms,
            complete_ms,
        });
    };
    while trace.now_ms() < deadline_ms {
        let invoke_ms = trace.now_ms();
        let roll = rng.below(1000) as u32;
        if roll < params.send_per_mille {
            let partition = *rng.pick(&all);
            let all_acks = rng.chance(params.acks_all_per_mille);
            let (acks, acks_code) = if all_acks {
                (Acks::All, -1)
            } else {
                (Acks::One, 1)
            };
            // Unique per key across the run: the process in the high bits, a counter below.
            let value = (u64::from(process) << 40) | next_value;
            next_value += 1;
            let timestamp = 1_700_000_000_000 + invoke_ms as i64;
            let outcome = match idempotence.as_mut() {
                None => send_once(&mut client, partition, acks_code, value, timestamp).await,
                Some(producer) => {
                    producer
                        .send(&mut client, partition, acks_code, value, timestamp)
                        .await
                }
            };
            record(
                &mut ops,
                OpKind::Send {
                    key: key(partition),
                    value,
                    acks,
                    outcome,
                },
                invoke_ms,
                &trace,
            );
        } else if roll < params.send_per_mille + 60 {
            // Reassign: a random non-empty subset of partitions, sometimes seeking to the start.
            let mut keys: Vec<i32> = all.iter().copied().filter(|_| rng.chance(600)).collect();
            if keys.is_empty() {
                keys.push(*rng.pick(&all));
            }
            let seek = rng.chance(500);
            cursors = keys
                .iter()
                .map(|p| {
                    (
                        *p,
                        if seek {
                            0
                        } else {
                            cursors.get(p).copied().unwrap_or(0)
                        },
                    )
                })
                .collect();
            let kind = OpKind::Assign {
                keys: keys.iter().map(|p| key(*p)).collect(),
                seek_to_beginning: seek,
                outcome: Outcome::Ok(()),
            };
            record(&mut ops, kind, invoke_ms, &trace);
        } else {
            let (reads, outcome, reset) = match fetch(&mut client, &cursors, POLL_MAX_WAIT_MS).await
            {
                Ok(fetched) => {
                    // Past the last batch returned, like a Kafka consumer, which also steps over
                    // control batches.
                    for (partition, next) in &fetched.next_offsets {
                        if let Some(cursor) = cursors.get_mut(partition) {
                            *cursor = (*cursor).max(*next);
                        }
                    }
                    let outcome = if fetched.errors.is_empty() {
                        Outcome::Ok(())
                    } else {
                        Outcome::Info(format!("partition errors {:?}", fetched.errors))
                    };
                    (fetched.reads, outcome, !fetched.out_of_range.is_empty())
                }
                Err(e) => (Reads::new(), Outcome::Info(e), false),
            };
            record(&mut ops, OpKind::Poll { reads, outcome }, invoke_ms, &trace);
            if reset {
                // Out of range (the log lost unsynced records in a crash): like a consumer with
                // auto.offset.reset=earliest, start over — an assignment change for the checker.
                let invoke_ms = trace.now_ms();
                let keys: Vec<i32> = cursors.keys().copied().collect();
                cursors = keys.iter().map(|p| (*p, 0)).collect();
                let kind = OpKind::Assign {
                    keys: keys.iter().map(|p| key(*p)).collect(),
                    seek_to_beginning: true,
                    outcome: Outcome::Ok(()),
                };
                record(&mut ops, kind, invoke_ms, &trace);
            }
        }
        let think = rng.between(params.think_ms.0, params.think_ms.1);
        tokio::time::sleep(Duration::from_millis(think)).await;
    }
    ops
}

/// At the end: a fresh consumer reads every partition from the beginning up to its high
/// watermark. Partitions that cannot be read (a damaged batch) stop early; the outcome says so.
/// Also returns the highest high watermark each partition's fetches reported.
pub async fn final_read(
    process: u32,
    bootstrap: &[String],
    partitions: i32,
    trace: &Trace,
) -> (Recorded, BTreeMap<i32, u64>) {
    let invoke_ms = trace.now_ms();
    let mut client = Client::new(bootstrap);
    let mut reads = Reads::new();
    let mut marks: BTreeMap<i32, u64> = BTreeMap::new();
    let mut problems = Vec::new();
    for partition in 0..partitions {
        let mut cursor = 0u64;
        let mut values = Vec::new();
        let mut attempts = 0;
        loop {
            attempts += 1;
            if attempts > 10_000 {
                problems.push(format!(
                    "partition {partition}: gave up after {attempts} fetches"
                ));
                break;
            }
            let cursors = BTreeMap::from([(partition, cursor)]);
            match fetch(&mut client, &cursors, 0).await {
                Ok(fetched) => {
                    if let Some((_, code)) = fetched.errors.first() {
                        // The leader moved or is being elected: ask again (bounded).
                        let moving = [
                            ErrorCode::LeaderNotAvailable.code(),
                            ErrorCode::NotLeaderOrFollower.code(),
                            ErrorCode::UnknownServerError.code(),
                        ];
                        if moving.contains(code) && attempts <= 100 {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                        problems.push(format!(
                            "partition {partition}: error code {code} at offset {cursor}"
                        ));
                        break;
                    }
                    if !fetched.out_of_range.is_empty() {
                        problems.push(format!(
                            "partition {partition}: offset {cursor} out of range"
                        ));
                        break;
                    }
                    if let Some(read) = fetched.reads.get(&key(partition)) {
                        values.extend_from_slice(read);
                    }
                    if let Some(next) = fetched.next_offsets.get(&partition) {
                        cursor = cursor.max(*next);
                    }
                    let hw = fetched
                        .high_watermarks
                        .get(&partition)
                        .copied()
                        .unwrap_or(0);
                    let mark = marks.entry(partition).or_insert(0);
                    *mark = (*mark).max(hw);
                    if cursor >= hw
                        || (fetched.next_offsets.is_empty() && hw > cursor && attempts > 50)
                    {
                        if cursor < hw {
                            problems.push(format!("partition {partition}: stuck at {cursor} below high watermark {hw}"));
                        }
                        break;
                    }
                }
                Err(e) => {
                    if attempts > 100 {
                        problems.push(format!("partition {partition}: {e}"));
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        reads.insert(key(partition), values);
    }
    let outcome = if problems.is_empty() {
        Outcome::Ok(())
    } else {
        Outcome::Info(problems.join("; "))
    };
    let kind = OpKind::FinalRead { reads, outcome };
    trace.record("final-read", "op", describe(&kind));
    let recorded = Recorded {
        process,
        kind,
        invoke_ms,
        complete_ms: trace.now_ms(),
    };
    (recorded, marks)
}

/// Liveness: once faults have stopped, a fresh client (process `process`) must be able to produce
/// an acks=all record and read it back within `bound`. Its sends are part of the history.
pub async fn liveness(
    process: u32,
    bootstrap: &[String],
    partition: i32,
    bound: Duration,
    trace: &Trace,
) -> (Result<u64, String>, Vec<Recorded>) {
    let start = trace.now_ms();
    let mut client = Client::new(bootstrap);
    let mut ops = Vec::new();
    let mut last_error = String::from("no attempt");
    let mut attempt = 0u64;
    while trace.now_ms() - start < bound.as_millis() as u64 {
        attempt += 1;
        let value = (u64::from(process) << 40) | attempt;
        let invoke_ms = trace.now_ms();
        let outcome = match client
            .produce(
                partition,
                &produce_request(partition, -1, value, 1_700_000_000_000),
            )
            .await
        {
            Ok(p) if p.error_code == 0 => Outcome::Ok(p.base_offset as u64),
            Ok(p) => Outcome::Info(format!("error code {}", p.error_code)),
            Err(CallError::NotSent(why) | CallError::Unknown(why)) => Outcome::Info(why),
        };
        let kind = OpKind::Send {
            key: key(partition),
            value,
            acks: Acks::All,
            outcome: outcome.clone(),
        };
        trace.record("liveness", "op", describe(&kind));
        ops.push(Recorded {
            process,
            kind,
            invoke_ms,
            complete_ms: trace.now_ms(),
        });
        match outcome {
            Outcome::Ok(offset) => {
                let cursors = BTreeMap::from([(partition, offset)]);
                match fetch(&mut client, &cursors, 500).await {
                    Ok(f)
                        if f.reads
                            .get(&key(partition))
                            .is_some_and(|r| r.first() == Some(&(offset, value))) =>
                    {
                        let took = trace.now_ms() - start;
                        trace.record(
                            "liveness",
                            "ok",
                            format!("produced and fetched offset {offset} after {took} ms"),
                        );
                        return (Ok(took), ops);
                    }
                    Ok(_) => last_error = format!("fetch at {offset} did not return the record"),
                    Err(e) => last_error = e,
                }
            }
            Outcome::Info(why) | Outcome::Fail(why) => last_error = why,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (
        Err(format!(
            "no acks=all produce + fetch within {} ms: {last_error}",
            bound.as_millis()
        )),
        ops,
    )
}

/// For triage: every broker's view of the cluster (live brokers, controller, each partition's
/// leader), recorded in the trace.
pub async fn record_views(bootstrap: &[String], trace: &Trace) {
    for addr in bootstrap {
        let mut conn = Conn {
            addr: addr.clone(),
            conn: None,
        };
        let view = match conn.call(&metadata_request(), 9).await {
            Ok(r) => {
                let brokers: Vec<i32> = r.brokers.iter().map(|b| b.node_id.0).collect();
                let partitions: Vec<String> = r
                    .topics
                    .iter()
                    .flat_map(|t| &t.partitions)
                    .map(|p| {
                        format!(
                            "{}: leader {} epoch {} error {} isr {:?}",
                            p.partition_index,
                            p.leader_id.0,
                            p.leader_epoch,
                            p.error_code,
                            p.isr_nodes.iter().map(|b| b.0).collect::<Vec<_>>()
                        )
                    })
                    .collect();
                format!(
                    "live brokers {brokers:?}, controller {}; {}",
                    r.controller_id.0,
                    partitions.join("; ")
                )
            }
            Err(CallError::NotSent(why) | CallError::Unknown(why)) => why,
        };
        trace.record("view", addr, view);
    }
}

/// One line per operation for the trace.
pub fn describe(kind: &OpKind) -> String {
    fn outcome<T: std::fmt::Debug>(o: &Outcome<T>) -> String {
        match o {
            Outcome::Ok(v) => format!("ok {v:?}"),
            Outcome::Fail(why) => format!("fail ({why})"),
            Outcome::Info(why) => format!("info ({why})"),
        }
    }
    fn reads(r: &Reads) -> String {
        r.iter()
            .map(|(k, v)| {
                let first = v.first().map_or(String::new(), |(o, _)| o.to_string());
                let last = v.last().map_or(String::new(), |(o, _)| o.to_string());
                format!("{}:{}[{first}..{last}]", k.partition, v.len())
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
    match kind {
        OpKind::Send {
            key,
            value,
            acks,
            outcome: o,
        } => format!(
            "send {key} value={value:#x} acks={} -> {}",
            acks.name(),
            outcome(o)
        ),
        OpKind::Poll {
            reads: r,
            outcome: o,
        } => format!("poll {} -> {}", reads(r), outcome(o)),
        OpKind::Assign {
            keys,
            seek_to_beginning,
            ..
        } => {
            let keys: Vec<String> = keys.iter().map(|k| k.partition.to_string()).collect();
            format!(
                "assign [{}] seek_to_beginning={seek_to_beginning}",
                keys.join(",")
            )
        }
        OpKind::FinalRead {
            reads: r,
            outcome: o,
        } => format!("final-read {} -> {}", reads(r), outcome(o)),
        OpKind::Group(op) => crate::groups::describe_group(op),
    }
}
