//! The CLI's view of a cluster: one connection per broker address (ApiVersions first, so every
//! request goes at the newest version both sides speak), every connect and request bounded by
//! `--timeout-ms`, and the retries Kafka's admin client makes: Metadata from any reachable
//! broker, topic changes at the active controller (again after NOT_CONTROLLER), group requests
//! at the group's coordinator (again after NOT_COORDINATOR, COORDINATOR_NOT_AVAILABLE,
//! COORDINATOR_LOAD_IN_PROGRESS), ListOffsets at each partition's leader (again after a
//! leadership change). Every retry loop is bounded by [`RETRIES_MAX`] and by the timeout.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::RangeInclusive;
use std::time::Duration;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::find_coordinator_request::FindCoordinatorRequest;
use kafka_protocol::messages::list_offsets_request::{
    ListOffsetsPartition, ListOffsetsRequest, ListOffsetsTopic,
};
use kafka_protocol::messages::metadata_request::{MetadataRequest, MetadataRequestTopic};
use kafka_protocol::messages::metadata_response::MetadataResponse;
use kafka_protocol::messages::{ApiKey, ApiVersionsRequest, BrokerId, TopicName};
use kafka_protocol::protocol::{Request, StrBytes};
use sluice_core::ErrorCode;
use tokio::time::{sleep, timeout, Instant};

use super::{CliError, ConnectArgs};
use crate::client::Connection;

/// Tries of one step that keeps meeting a retriable error.
pub(super) const RETRIES_MAX: u32 = 20;
const BACKOFF_MIN_MS: u64 = 50;
const BACKOFF_MAX_MS: u64 = 1_000;
const BOOTSTRAP_SERVERS_MAX: usize = 64;

// The error codes the CLI reacts to.
pub(super) const UNKNOWN_TOPIC_OR_PARTITION: i16 = ErrorCode::UnknownTopicOrPartition as i16;
pub(super) const LEADER_NOT_AVAILABLE: i16 = ErrorCode::LeaderNotAvailable as i16;
pub(super) const NOT_LEADER_OR_FOLLOWER: i16 = ErrorCode::NotLeaderOrFollower as i16;
const REQUEST_TIMED_OUT: i16 = ErrorCode::RequestTimedOut as i16;
const COORDINATOR_LOAD_IN_PROGRESS: i16 = ErrorCode::CoordinatorLoadInProgress as i16;
const COORDINATOR_NOT_AVAILABLE: i16 = ErrorCode::CoordinatorNotAvailable as i16;
const NOT_COORDINATOR: i16 = ErrorCode::NotCoordinator as i16;
pub(super) const UNSUPPORTED_VERSION: i16 = ErrorCode::UnsupportedVersion as i16;
pub(super) const NOT_CONTROLLER: i16 = ErrorCode::NotController as i16;
const FENCED_LEADER_EPOCH: i16 = ErrorCode::FencedLeaderEpoch as i16;
const UNKNOWN_LEADER_EPOCH: i16 = ErrorCode::UnknownLeaderEpoch as i16;

/// Metadata from v4: earlier versions create the topics they ask about.
const METADATA_VERSIONS: RangeInclusive<i16> = 4..=12;
const FIND_COORDINATOR_VERSIONS: RangeInclusive<i16> = 0..=4;
const LIST_OFFSETS_VERSIONS: RangeInclusive<i16> = 1..=7;

/// ListOffsets' special timestamps.
pub(super) const LATEST: i64 = -1;
pub(super) const EARLIEST: i64 = -2;

/// Kafka's name of an error code (`NOT_COORDINATOR`), from the protocol crate's complete table;
/// `UNKNOWN_ERROR_CODE_<n>` for a code it does not know.
pub fn error_name(code: i16) -> String {
    match ResponseError::try_from_code(code) {
        None => "NONE".to_string(),
        Some(ResponseError::Unknown(code)) => format!("UNKNOWN_ERROR_CODE_{code}"),
        Some(known) => screaming_snake(&format!("{known:?}")),
    }
}

/// `NotLeaderOrFollower` → `NOT_LEADER_OR_FOLLOWER`.
fn screaming_snake(camel: &str) -> String {
    let mut out = String::with_capacity(camel.len() + 8);
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

fn api_name(key: i16) -> String {
    ApiKey::try_from(key).map_or_else(|_| format!("API {key}"), |k| format!("{k:?}"))
}

pub(super) fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

pub(super) fn topic_name(s: &str) -> TopicName {
    TopicName(str_bytes(s))
}

/// Waits before try number `attempt` (1, 2, …) of a step.
pub(super) async fn backoff(attempt: u32) {
    let ms = (BACKOFF_MIN_MS << attempt.min(5)).min(BACKOFF_MAX_MS);
    sleep(Duration::from_millis(ms)).await;
}

/// One open connection and the versions the broker behind it speaks.
struct Conn {
    connection: Connection,
    /// API key → (min, max) from ApiVersions.
    versions: BTreeMap<i16, (i16, i16)>,
}

/// The one offset a ListOffsets found, or why not.
pub(super) type OffsetResult = Result<i64, CliError>;

pub(super) struct Admin {
    bootstrap: Vec<String>,
    timeout: Duration,
    conns: BTreeMap<String, Conn>,
    /// Addresses that failed during this command; tried again only when nothing else is left.
    unreachable: BTreeSet<String>,
    /// Broker id → `host:port`, from the last Metadata.
    brokers: BTreeMap<i32, String>,
    /// The active controller per the last Metadata.
    controller: Option<i32>,
    /// Group id → its coordinator's address, until it stops being the coordinator.
    coordinators: BTreeMap<String, String>,
}

impl Admin {
    pub fn new(args: &ConnectArgs) -> Result<Admin, CliError> {
        let bootstrap: Vec<String> = args
            .bootstrap_server
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        if bootstrap.is_empty() {
            return Err(CliError::failed("--bootstrap-server names no broker"));
        }
        if bootstrap.len() > BOOTSTRAP_SERVERS_MAX {
            return Err(CliError::failed(format!(
                "--bootstrap-server names {} brokers; at most {BOOTSTRAP_SERVERS_MAX}",
                bootstrap.len()
            )));
        }
        for addr in &bootstrap {
            let port = addr
                .rsplit_once(':')
                .map(|(host, port)| (host, port.parse::<u16>()));
            if !matches!(port, Some((host, Ok(_))) if !host.is_empty()) {
                return Err(CliError::failed(format!(
                    "--bootstrap-server: {addr:?} is not HOST:PORT"
                )));
            }
        }
        if args.timeout_ms == 0 {
            return Err(CliError::failed("--timeout-ms must be at least 1"));
        }
        Ok(Admin {
            bootstrap,
            timeout: Duration::from_millis(args.timeout_ms),
            conns: BTreeMap::new(),
            unreachable: BTreeSet::new(),
            brokers: BTreeMap::new(),
            controller: None,
            coordinators: BTreeMap::new(),
        })
    }

    pub fn timeout_ms(&self) -> u128 {
        self.timeout.as_millis()
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// How long a broker may wait for a topic change to commit: a little less than the CLI
    /// waits for its answer, so that a slow change comes back as REQUEST_TIMED_OUT.
    pub fn broker_timeout_ms(&self) -> i32 {
        let ms = self.timeout_ms();
        i32::try_from(ms - ms / 5).unwrap_or(i32::MAX).max(1)
    }

    /// When a retry loop starting now must give up.
    fn deadline(&self) -> Instant {
        Instant::now() + self.timeout
    }

    /// The connection to `addr`, opened (with ApiVersions) if there is none.
    async fn conn(&mut self, addr: &str) -> Result<&mut Conn, CliError> {
        if !self.conns.contains_key(addr) {
            match self.open(addr).await {
                Ok(conn) => {
                    self.unreachable.remove(addr);
                    self.conns.insert(addr.to_string(), conn);
                }
                Err(e) => {
                    self.unreachable.insert(addr.to_string());
                    return Err(e);
                }
            }
        }
        Ok(self.conns.get_mut(addr).expect("just opened"))
    }

    async fn open(&self, addr: &str) -> Result<Conn, CliError> {
        let mut connection = match timeout(self.timeout, Connection::connect(addr)).await {
            Err(_) => {
                return Err(CliError::failed(format!(
                    "{addr}: no connection within {} ms",
                    self.timeout_ms()
                )))
            }
            Ok(Err(e)) => return Err(CliError::failed(format!("{addr}: {e}"))),
            Ok(Ok(c)) => c,
        };
        let request = ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str("sluice-cli"))
            .with_client_software_version(StrBytes::from_static_str(env!("CARGO_PKG_VERSION")));
        let response = match timeout(self.timeout, connection.call(&request, 3)).await {
            Err(_) => {
                return Err(CliError::failed(format!(
                    "{addr}: no answer to ApiVersions within {} ms",
                    self.timeout_ms()
                )))
            }
            Ok(Err(e)) => return Err(CliError::failed(format!("{addr}: ApiVersions: {e}"))),
            Ok(Ok(r)) => r,
        };
        if response.error_code != 0 {
            return Err(CliError::kafka(
                response.error_code,
                format!("{addr} refused ApiVersions v3"),
            ));
        }
        let versions = response
            .api_keys
            .iter()
            .map(|k| (k.api_key, (k.min_version, k.max_version)))
            .collect();
        Ok(Conn {
            connection,
            versions,
        })
    }

    /// Whether the broker at `addr` serves `key` at all.
    pub async fn serves(&mut self, addr: &str, key: ApiKey) -> Result<bool, CliError> {
        Ok(self.conn(addr).await?.versions.contains_key(&(key as i16)))
    }

    /// Sends the request `build` makes for the newest version in `versions` that the broker at
    /// `addr` speaks, and waits (bounded) for its answer. A connection that failed or timed out
    /// is closed, so the next call opens a fresh one.
    pub async fn call<R: Request>(
        &mut self,
        addr: &str,
        versions: RangeInclusive<i16>,
        build: impl FnOnce(i16) -> R,
    ) -> Result<(R::Response, i16), CliError> {
        let wait = self.timeout;
        let wait_ms = self.timeout_ms();
        let conn = self.conn(addr).await?;
        let name = api_name(R::KEY);
        let Some(&(min, max)) = conn.versions.get(&R::KEY) else {
            return Err(CliError::kafka(
                UNSUPPORTED_VERSION,
                format!("the broker at {addr} does not serve {name}"),
            ));
        };
        let version = (*versions.end()).min(max);
        if version < *versions.start() || version < min {
            return Err(CliError::kafka(
                UNSUPPORTED_VERSION,
                format!(
                    "the broker at {addr} speaks {name} v{min}-{max}; sluice needs v{}-{}",
                    versions.start(),
                    versions.end()
                ),
            ));
        }
        let request = build(version);
        let result = timeout(wait, conn.connection.call(&request, version)).await;
        match result {
            Ok(Ok(response)) => Ok((response, version)),
            Ok(Err(e)) => {
                self.drop_conn(addr);
                Err(CliError::failed(format!("{addr}: {name}: {e}")))
            }
            Err(_) => {
                self.drop_conn(addr);
                Err(CliError::failed(format!(
                    "{addr}: no answer to {name} within {wait_ms} ms"
                )))
            }
        }
    }

    fn drop_conn(&mut self, addr: &str) {
        self.conns.remove(addr);
        self.unreachable.insert(addr.to_string());
    }

    /// The address of a broker that accepts connections: an open one, else the bootstrap
    /// servers and then the brokers Metadata named, those that failed before last.
    pub async fn any_broker(&mut self) -> Result<String, CliError> {
        if let Some(addr) = self.conns.keys().next() {
            return Ok(addr.clone());
        }
        let mut candidates: Vec<String> = Vec::new();
        for addr in self.bootstrap.iter().chain(self.brokers.values()) {
            if !candidates.contains(addr) {
                candidates.push(addr.clone());
            }
        }
        candidates.sort_by_key(|a| self.unreachable.contains(a));
        let mut errors = Vec::new();
        for addr in candidates {
            match self.conn(&addr).await {
                Ok(_) => return Ok(addr),
                Err(e) => errors.push(e.to_string()),
            }
        }
        Err(CliError::failed(format!(
            "no broker reachable: {}",
            errors.join("; ")
        )))
    }

    /// Metadata for `topics` (`None`: every topic; empty: brokers and controller only) from any
    /// reachable broker; never creates a topic. Remembers the brokers and the controller.
    pub async fn metadata(
        &mut self,
        topics: Option<&[String]>,
    ) -> Result<MetadataResponse, CliError> {
        let wanted: Option<Vec<MetadataRequestTopic>> = topics.map(|t| {
            t.iter()
                .map(|n| MetadataRequestTopic::default().with_name(Some(topic_name(n))))
                .collect()
        });
        let tries = self.bootstrap.len() + self.brokers.len() + 1;
        let mut last = None;
        for _ in 0..tries {
            let addr = self.any_broker().await?;
            let request = MetadataRequest::default()
                .with_topics(wanted.clone())
                .with_allow_auto_topic_creation(false);
            match self.call(&addr, METADATA_VERSIONS, |_| request).await {
                Ok((response, _)) => {
                    self.brokers = response
                        .brokers
                        .iter()
                        .map(|b| (b.node_id.0, format!("{}:{}", b.host.as_str(), b.port)))
                        .collect();
                    self.controller =
                        (response.controller_id.0 >= 0).then_some(response.controller_id.0);
                    return Ok(response);
                }
                // That broker went away: ask another.
                Err(e @ CliError::Failed(_)) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| CliError::failed("no broker answered Metadata")))
    }

    /// The brokers the last Metadata listed: (id, address).
    pub fn brokers(&self) -> Vec<(i32, String)> {
        self.brokers
            .iter()
            .map(|(id, a)| (*id, a.clone()))
            .collect()
    }

    fn broker_addr(&self, id: BrokerId) -> Option<String> {
        self.brokers.get(&id.0).cloned()
    }

    /// Sends a topic change to the active controller: where Metadata says it is, and again
    /// after `not_controller(response)` (a node that is not the controller answers
    /// NOT_CONTROLLER; the controller may have just moved).
    pub async fn controller_call<R: Request>(
        &mut self,
        versions: RangeInclusive<i16>,
        build: impl Fn(i16) -> R,
        not_controller: impl Fn(&R::Response) -> bool,
    ) -> Result<(R::Response, i16, String), CliError> {
        let deadline = self.deadline();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let outcome = match self.metadata(Some(&[])).await {
                Err(e) => Err(e),
                Ok(_) => {
                    let addr = match self.controller.and_then(|c| self.broker_addr(BrokerId(c))) {
                        Some(addr) => addr,
                        None => self.any_broker().await?,
                    };
                    self.call(&addr, versions.clone(), &build)
                        .await
                        .map(|(r, v)| (r, v, addr))
                }
            };
            let why = match outcome {
                Ok((response, _, _)) if not_controller(&response) => CliError::kafka(
                    NOT_CONTROLLER,
                    format!("no active controller answered after {attempt} tries (is a majority of the nodes up?)"),
                ),
                Ok(done) => return Ok(done),
                Err(e @ CliError::Failed(_)) => e,
                Err(e) => return Err(e),
            };
            if attempt >= RETRIES_MAX || Instant::now() >= deadline {
                return Err(why);
            }
            backoff(attempt).await;
        }
    }

    /// The address of `group`'s coordinator (FindCoordinator; the first one creates
    /// `__consumer_offsets`, so COORDINATOR_NOT_AVAILABLE is retried).
    pub async fn coordinator(&mut self, group: &str) -> Result<String, CliError> {
        if let Some(addr) = self.coordinators.get(group) {
            return Ok(addr.clone());
        }
        let deadline = self.deadline();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let found = match self.any_broker().await {
                Err(e) => Err(e),
                Ok(addr) => self.find_coordinator(&addr, group).await,
            };
            let why = match found {
                Ok(addr) => {
                    self.coordinators.insert(group.to_string(), addr.clone());
                    return Ok(addr);
                }
                Err(e @ CliError::Failed(_)) => e,
                Err(CliError::Kafka { code, message })
                    if matches!(
                        code,
                        COORDINATOR_NOT_AVAILABLE | COORDINATOR_LOAD_IN_PROGRESS | NOT_COORDINATOR
                    ) =>
                {
                    CliError::Kafka { code, message }
                }
                Err(e) => return Err(e),
            };
            if attempt >= RETRIES_MAX || Instant::now() >= deadline {
                return Err(why);
            }
            backoff(attempt).await;
        }
    }

    async fn find_coordinator(&mut self, addr: &str, group: &str) -> Result<String, CliError> {
        let (response, version) = self
            .call(addr, FIND_COORDINATOR_VERSIONS, |v| {
                let request = FindCoordinatorRequest::default().with_key_type(0);
                if v >= 4 {
                    request.with_coordinator_keys(vec![str_bytes(group)])
                } else {
                    request.with_key(str_bytes(group))
                }
            })
            .await?;
        let (code, message, host, port) = if version >= 4 {
            let Some(c) = response.coordinators.first() else {
                return Err(CliError::failed(format!(
                    "{addr} answered FindCoordinator without a coordinator"
                )));
            };
            (
                c.error_code,
                c.error_message.clone(),
                c.host.clone(),
                c.port,
            )
        } else {
            (
                response.error_code,
                response.error_message.clone(),
                response.host.clone(),
                response.port,
            )
        };
        if code != 0 {
            let message = message.map_or_else(String::new, |m| m.to_string());
            return Err(CliError::kafka(
                code,
                format!("finding the coordinator of group {group:?}: {message}"),
            ));
        }
        Ok(format!("{}:{port}", host.as_str()))
    }

    /// Sends a request about `group` to its coordinator and returns the answer unless
    /// `error(response)` says the coordinator moved (NOT_COORDINATOR,
    /// COORDINATOR_NOT_AVAILABLE: find it again) or is loading (COORDINATOR_LOAD_IN_PROGRESS:
    /// wait); then tries again, bounded.
    pub async fn group_call<R: Request>(
        &mut self,
        group: &str,
        versions: RangeInclusive<i16>,
        build: impl Fn(i16) -> R,
        error: impl Fn(&R::Response) -> i16,
    ) -> Result<(R::Response, i16), CliError> {
        let deadline = self.deadline();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let addr = self.coordinator(group).await?;
            let why = match self.call(&addr, versions.clone(), &build).await {
                Ok((response, version)) => match error(&response) {
                    code @ (NOT_COORDINATOR | COORDINATOR_NOT_AVAILABLE) => {
                        self.coordinators.remove(group);
                        CliError::kafka(code, format!("the coordinator of group {group:?} moved"))
                    }
                    code @ COORDINATOR_LOAD_IN_PROGRESS => CliError::kafka(
                        code,
                        format!("the coordinator of group {group:?} is still loading"),
                    ),
                    _ => return Ok((response, version)),
                },
                Err(e @ CliError::Failed(_)) => {
                    self.coordinators.remove(group);
                    e
                }
                Err(e) => return Err(e),
            };
            if attempt >= RETRIES_MAX || Instant::now() >= deadline {
                return Err(why);
            }
            backoff(attempt).await;
        }
    }

    /// The address of the leader of `topic`-`partition` per a fresh Metadata; `None` while the
    /// partition has none (an election).
    pub async fn partition_leader(
        &mut self,
        topic: &str,
        partition: i32,
    ) -> Result<Option<String>, CliError> {
        let metadata = self.metadata(Some(&[topic.to_string()])).await?;
        let Some(t) = metadata
            .topics
            .iter()
            .find(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == topic))
        else {
            return Err(CliError::failed(format!("no metadata for topic {topic:?}")));
        };
        match t.error_code {
            0 | LEADER_NOT_AVAILABLE => {}
            code => return Err(CliError::kafka(code, format!("topic {topic:?}"))),
        }
        let Some(p) = t.partitions.iter().find(|p| p.partition_index == partition) else {
            return Err(CliError::kafka(
                UNKNOWN_TOPIC_OR_PARTITION,
                format!("topic {topic:?} has no partition {partition}"),
            ));
        };
        Ok(self.broker_addr(p.leader_id).filter(|_| p.leader_id.0 >= 0))
    }

    /// The offset of each partition at `timestamp` (`LATEST`, `EARLIEST` or a time in ms; -1
    /// when no record is that recent), asked of each partition's leader. Partitions whose
    /// leader is moving are asked again, bounded; the others fail alone.
    pub async fn list_offsets(
        &mut self,
        partitions: &[(String, i32)],
        timestamp: i64,
    ) -> BTreeMap<(String, i32), OffsetResult> {
        let mut done: BTreeMap<(String, i32), OffsetResult> = BTreeMap::new();
        let mut pending: BTreeSet<(String, i32)> = partitions.iter().cloned().collect();
        let deadline = self.deadline();
        let mut attempt = 0;
        while !pending.is_empty() {
            attempt += 1;
            let mut retry: BTreeMap<(String, i32), CliError> = BTreeMap::new();
            let topics: Vec<String> = pending
                .iter()
                .map(|(t, _)| t.clone())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            let metadata = match self.metadata(Some(&topics)).await {
                Ok(m) => m,
                Err(e) => {
                    done.extend(pending.iter().map(|tp| (tp.clone(), Err(e.clone()))));
                    break;
                }
            };
            let mut by_leader: BTreeMap<String, Vec<(String, i32)>> = BTreeMap::new();
            for (t, p) in &pending {
                let tp = (t.clone(), *p);
                let topic = metadata
                    .topics
                    .iter()
                    .find(|m| m.name.as_ref().is_some_and(|n| n.0.as_str() == t));
                let Some(topic) = topic else {
                    done.insert(
                        tp,
                        Err(CliError::failed(format!("no metadata for topic {t:?}"))),
                    );
                    continue;
                };
                if topic.error_code == LEADER_NOT_AVAILABLE {
                    retry.insert(
                        tp,
                        CliError::kafka(LEADER_NOT_AVAILABLE, format!("{t}-{p}")),
                    );
                    continue;
                }
                if topic.error_code != 0 {
                    done.insert(
                        tp,
                        Err(CliError::kafka(topic.error_code, format!("topic {t:?}"))),
                    );
                    continue;
                }
                let Some(partition) = topic.partitions.iter().find(|m| m.partition_index == *p)
                else {
                    done.insert(
                        tp,
                        Err(CliError::kafka(
                            UNKNOWN_TOPIC_OR_PARTITION,
                            format!("topic {t:?} has no partition {p}"),
                        )),
                    );
                    continue;
                };
                match self.broker_addr(partition.leader_id) {
                    Some(addr) if partition.leader_id.0 >= 0 => {
                        by_leader.entry(addr).or_default().push(tp)
                    }
                    _ => {
                        retry.insert(
                            tp,
                            CliError::kafka(LEADER_NOT_AVAILABLE, format!("{t}-{p} has no leader")),
                        );
                    }
                }
            }
            for (addr, tps) in by_leader {
                let mut grouped: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
                for (t, p) in &tps {
                    grouped.entry(t.as_str()).or_default().push(*p);
                }
                let request = ListOffsetsRequest::default()
                    .with_replica_id(BrokerId(-1))
                    .with_topics(
                        grouped
                            .iter()
                            .map(|(t, ps)| {
                                ListOffsetsTopic::default()
                                    .with_name(topic_name(t))
                                    .with_partitions(
                                        ps.iter()
                                            .map(|p| {
                                                ListOffsetsPartition::default()
                                                    .with_partition_index(*p)
                                                    .with_current_leader_epoch(-1)
                                                    .with_timestamp(timestamp)
                                            })
                                            .collect(),
                                    )
                            })
                            .collect(),
                    );
                let response = match self.call(&addr, LIST_OFFSETS_VERSIONS, |_| request).await {
                    Ok((r, _)) => r,
                    Err(e) => {
                        retry.extend(tps.into_iter().map(|tp| (tp, e.clone())));
                        continue;
                    }
                };
                for tp in tps {
                    let answer = response
                        .topics
                        .iter()
                        .filter(|t| t.name.0.as_str() == tp.0)
                        .flat_map(|t| t.partitions.iter())
                        .find(|p| p.partition_index == tp.1);
                    let Some(answer) = answer else {
                        let e = CliError::failed(format!(
                            "{addr} did not answer for {}-{}",
                            tp.0, tp.1
                        ));
                        done.insert(tp, Err(e));
                        continue;
                    };
                    let code = answer.error_code;
                    let what = format!("offsets of {}-{} at {addr}", tp.0, tp.1);
                    match code {
                        0 => {
                            done.insert(tp, Ok(answer.offset));
                        }
                        NOT_LEADER_OR_FOLLOWER
                        | LEADER_NOT_AVAILABLE
                        | UNKNOWN_TOPIC_OR_PARTITION
                        | REQUEST_TIMED_OUT
                        | FENCED_LEADER_EPOCH
                        | UNKNOWN_LEADER_EPOCH => {
                            retry.insert(tp, CliError::kafka(code, what));
                        }
                        _ => {
                            done.insert(tp, Err(CliError::kafka(code, what)));
                        }
                    }
                }
            }
            pending = retry.keys().cloned().collect();
            if pending.is_empty() {
                break;
            }
            if attempt >= RETRIES_MAX || Instant::now() >= deadline {
                done.extend(retry.into_iter().map(|(tp, e)| (tp, Err(e))));
                break;
            }
            backoff(attempt).await;
        }
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_names_are_kafkas() {
        assert_eq!(error_name(16), "NOT_COORDINATOR");
        assert_eq!(error_name(6), "NOT_LEADER_OR_FOLLOWER");
        assert_eq!(error_name(68), "NON_EMPTY_GROUP");
        assert_eq!(error_name(-1), "UNKNOWN_SERVER_ERROR");
        assert_eq!(error_name(17), "INVALID_TOPIC_EXCEPTION");
        assert_eq!(error_name(0), "NONE");
        assert_eq!(error_name(9999), "UNKNOWN_ERROR_CODE_9999");
    }

    #[test]
    fn bootstrap_servers_are_checked() {
        let args = |s: &str, timeout_ms| ConnectArgs {
            bootstrap_server: s.to_string(),
            timeout_ms,
        };
        assert!(Admin::new(&args("a:1, b:2", 1)).is_ok());
        for bad in ["", " , ", "nohost", ":9092", "host:port", "host:99999"] {
            assert!(Admin::new(&args(bad, 1)).is_err(), "{bad:?}");
        }
        assert!(Admin::new(&args("a:1", 0)).is_err());
    }
}
