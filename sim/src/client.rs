//! The simulator's Kafka client: connections with timeouts, leader-aware routing from Metadata,
//! the requests the workloads send and the decoding of what they read. Shared by the data
//! workload (`workload`) and the consumer-group members (`groups`).

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreateTopicsRequest};
use kafka_protocol::messages::delete_records_request::{
    DeleteRecordsPartition, DeleteRecordsRequest, DeleteRecordsTopic,
};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchRequest, FetchTopic};
use kafka_protocol::messages::metadata_request::{MetadataRequest, MetadataRequestTopic};
use kafka_protocol::messages::produce_request::{
    PartitionProduceData, ProduceRequest, TopicProduceData,
};
use kafka_protocol::messages::produce_response::PartitionProduceResponse;
use kafka_protocol::messages::{BrokerId, TopicName};
use kafka_protocol::protocol::StrBytes;
use sluice_core::batch::{split_batches, BatchBuilder, NewRecord, Records};
use sluice_core::history::{Key, Reads};
use sluice_core::ErrorCode;
use sluice_node::client::Connection;

use crate::trace::Trace;

/// How long a client waits for any single response before calling the operation indeterminate.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a client waits to connect.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// Fetch limits used by polls.
const POLL_MAX_BYTES: i32 = 64 * 1024;
pub(crate) const POLL_MAX_WAIT_MS: i32 = 100;
/// How long a DeleteRecords may wait for its log-start entry to commit (below
/// [`REQUEST_TIMEOUT`], so a slow commit is answered REQUEST_TIMED_OUT rather than dropped).
const DELETE_RECORDS_TIMEOUT_MS: i32 = 1_500;

pub const TOPIC: &str = "sim";

pub fn key(partition: i32) -> Key {
    Key::new(TOPIC, partition)
}

pub(crate) fn topic_name() -> TopicName {
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

    /// DeleteRecords of one partition at its leader: the log start is to move to `offset`.
    /// Returns the partition's (error code, low watermark); an error code marks the leaders
    /// stale.
    pub(crate) async fn delete_records(
        &mut self,
        partition: i32,
        offset: u64,
    ) -> Result<(i16, i64), CallError> {
        let request = DeleteRecordsRequest::default()
            .with_timeout_ms(DELETE_RECORDS_TIMEOUT_MS)
            .with_topics(vec![DeleteRecordsTopic::default()
                .with_name(topic_name())
                .with_partitions(vec![DeleteRecordsPartition::default()
                    .with_partition_index(partition)
                    .with_offset(offset as i64)])]);
        let response = self.call_leader(partition, &request, 2).await?;
        let answer = response
            .topics
            .first()
            .and_then(|t| t.partitions.first())
            .map_or((ErrorCode::UnknownServerError.code(), -1), |p| {
                (p.error_code, p.low_watermark)
            });
        if answer.0 != 0 {
            self.stale = true;
        }
        Ok(answer)
    }

    /// Marks the leaders stale: the next request refreshes them first (after an error from a
    /// connection the client manages itself).
    pub(crate) fn mark_stale(&mut self) {
        self.stale = true;
    }

    /// The address of `partition`'s leader, refreshing the leaders first if they may have
    /// moved; `None` (and stale leaders) if no broker knows one.
    pub(crate) async fn leader_addr(&mut self, partition: i32) -> Option<String> {
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

    /// The bootstrap address of the next broker in turn.
    pub(crate) fn next_broker(&mut self) -> String {
        self.any_broker()
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
    create_named_topic(bootstrap, TOPIC, partitions, replication_factor, trace).await
}

/// Creates topic `name` without config overrides, as [`create_topic`] does the workload topic.
pub async fn create_named_topic(
    bootstrap: &[String],
    name: &str,
    partitions: i32,
    replication_factor: i16,
    trace: &Trace,
) {
    let mut client = Client::new(bootstrap);
    let request = CreateTopicsRequest::default()
        .with_timeout_ms(5_000)
        .with_topics(vec![CreatableTopic::default()
            .with_name(TopicName(StrBytes::from_string(name.to_string())))
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
                    format!("{name} with {partitions} partitions, {replication_factor} replicas"),
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
pub(crate) fn metadata_request() -> MetadataRequest {
    MetadataRequest::default()
        .with_topics(Some(vec![
            MetadataRequestTopic::default().with_name(Some(topic_name()))
        ]))
        .with_allow_auto_topic_creation(false)
}

pub(crate) fn produce_request(
    partition: i32,
    acks: i16,
    value: u64,
    timestamp: i64,
) -> ProduceRequest {
    produce_request_as(partition, acks, value, timestamp, None)
}

/// A produce request; `idempotent` is (producer id, epoch, sequence).
pub(crate) fn produce_request_as(
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

pub(crate) fn fetch_request(cursors: &BTreeMap<i32, u64>, max_wait_ms: i32) -> FetchRequest {
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
pub(crate) fn decode_values(
    records: &[u8],
    from: u64,
) -> Result<(Vec<(u64, u64)>, Option<u64>), String> {
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

/// What a fetch of `cursors` returned.
pub(crate) struct Fetched {
    pub(crate) reads: Reads,
    /// Partitions whose fetch offset was out of range.
    pub(crate) out_of_range: Vec<i32>,
    /// Per-partition error codes other than out-of-range.
    pub(crate) errors: Vec<(i32, i16)>,
    pub(crate) high_watermarks: BTreeMap<i32, u64>,
    /// The log start each partition's answer reported (also with OFFSET_OUT_OF_RANGE).
    pub(crate) log_starts: BTreeMap<i32, u64>,
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
        log_starts: BTreeMap::new(),
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
pub(crate) fn decode_fetch(
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
            if p.log_start_offset >= 0 {
                fetched
                    .log_starts
                    .insert(partition, p.log_start_offset as u64);
            }
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
