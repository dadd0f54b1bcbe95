//! Consumer-group members in the workload (`--scenario groups`): subscribe-mode consumers that
//! speak Kafka's classic group protocol to the cluster like a Kafka client. Each member finds
//! its coordinator (FindCoordinator), joins (JoinGroup, with the MEMBER_ID_REQUIRED round), and
//! if it is the leader computes a range or round-robin assignment of the workload topic for
//! everyone (SyncGroup); it then fetches its committed offsets (OffsetFetch), consumes its
//! partitions from there, commits its positions now and then with its generation and member id,
//! and rejoins when its heartbeat task (Kafka's heartbeat thread) hears that a rebalance is
//! under way, dropping the positions of the partitions it gave up. NOT_COORDINATOR,
//! COORDINATOR_NOT_AVAILABLE, COORDINATOR_LOAD_IN_PROGRESS, a lost connection: it looks for the
//! coordinator again. Each member slot runs incarnations one after another: some crash (the task
//! is killed, no LeaveGroup), the rest leave gracefully, and a new incarnation joins afresh.
//! Some incarnations (`GroupParams::zombie_per_mille`) stall once: the whole member stops, its
//! heartbeats too, for longer than its session and rebalance timeouts, so that the group
//! rebalances without it; then, like a consumer back from a long GC pause that finishes what
//! it was doing, it commits with its old generation and member id for the partitions it no
//! longer owns (a zombie's commit, which the coordinator must fence), and rejoins.
//!
//! Every join, commit, OffsetFetch, reset, leave and crash is recorded as a
//! [`GroupOp`] for `sluice_core::checker::groups`; polls are ordinary `Poll`s, so the Jepsen
//! checkers judge what the members read too.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition as AssignedTopic;
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::{
    OffsetFetchRequestGroup, OffsetFetchRequestTopic, OffsetFetchRequestTopics,
};
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::{
    ConsumerProtocolAssignment, ConsumerProtocolSubscription, FindCoordinatorRequest, GroupId,
    HeartbeatRequest, JoinGroupRequest, LeaveGroupRequest, OffsetCommitRequest, OffsetFetchRequest,
    OffsetFetchResponse, SyncGroupRequest, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use sluice_core::history::{describe, Assignment, GroupOp, Key, OpKind, Outcome, Position, Reads};
use sluice_core::rng::Rng;
use sluice_core::ErrorCode;

use crate::client::{self, fetch, key, CallError, Client, TOPIC};
use crate::ops::Recorded;
use crate::params::{GroupParams, Params};
use crate::trace::Trace;

/// The workload's consumer group.
pub const GROUP_ID: &str = "sim-group";
/// Member slot `m` records its operations as process `MEMBER_PROCESS_BASE + m`.
pub const MEMBER_PROCESS_BASE: u32 = 1000;
/// The process of the OffsetFetch after the heal.
pub const FINAL_OFFSETS_PROCESS: u32 = MEMBER_PROCESS_BASE + 100;

/// The assignors every member offers, by name; each member prefers one of them.
const ASSIGNORS: [&str; 2] = ["range", "roundrobin"];
/// Rounds of MEMBER_ID_REQUIRED (or a lost member id) one join tries before giving up.
const JOIN_ATTEMPTS_MAX: u32 = 3;
/// OffsetFetch attempts after a join before rejoining.
const OFFSET_FETCH_ATTEMPTS_MAX: u32 = 5;
/// Mixed into the seed of each member slot's own PRNG for stalls, so that the slot's other
/// draws (and so the seeds of runs without stalls) are the same as before stalls existed.
const ZOMBIE_SEED_SALT: u64 = 0x2b1e_5ea1_c0ff_ee00;
/// A stall lasts the session and rebalance timeouts plus this much more at most, so that the
/// group has rebalanced without the staller when it wakes (unless faults delayed it).
const STALL_MARGIN_MS_MAX: u64 = 1_500;

/// What every member incarnation of a run records, shared so that a killed incarnation's work
/// survives it.
#[derive(Clone, Default)]
pub struct GroupLog {
    inner: Arc<Mutex<LogInner>>,
}

#[derive(Default)]
struct LogInner {
    ops: Vec<Recorded>,
    /// Per process: the operation in flight, as it is recorded if the process is killed.
    in_flight: BTreeMap<u32, Recorded>,
    /// The highest high watermark any member's fetch reported, per partition.
    high_watermarks: BTreeMap<i32, u64>,
}

impl GroupLog {
    fn lock(&self) -> std::sync::MutexGuard<'_, LogInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, trace: &Trace, source: &str, process: u32, kind: OpKind, invoke_ms: u64) {
        trace.record(source, "op", describe(&kind));
        self.lock().ops.push(Recorded {
            process,
            kind,
            invoke_ms,
            complete_ms: trace.now_ms(),
        });
    }

    /// Notes an operation in flight: if the process is killed before [`GroupLog::end`], `kind`
    /// (an indeterminate outcome) is recorded as completing at the kill.
    fn begin(&self, process: u32, kind: OpKind, invoke_ms: u64) {
        let pending = Recorded {
            process,
            kind,
            invoke_ms,
            complete_ms: invoke_ms,
        };
        self.lock().in_flight.insert(process, pending);
    }

    fn end(&self, process: u32) {
        self.lock().in_flight.remove(&process);
    }

    /// Member slot `process` was killed: its operation in flight has an unknown fate.
    pub fn crash(&self, process: u32, trace: &Trace, source: &str) {
        let now = trace.now_ms();
        let pending = self.lock().in_flight.remove(&process);
        if let Some(mut pending) = pending {
            pending.complete_ms = now;
            trace.record(source, "op", describe(&pending.kind));
            self.lock().ops.push(pending);
        }
        let kind = OpKind::Group(GroupOp::Crash {
            group: GROUP_ID.to_string(),
        });
        self.record(trace, source, process, kind, now);
    }

    fn observe(&self, high_watermarks: &BTreeMap<i32, u64>) {
        let mut inner = self.lock();
        for (p, hw) in high_watermarks {
            let mark = inner.high_watermarks.entry(*p).or_insert(0);
            *mark = (*mark).max(*hw);
        }
    }

    pub fn high_watermarks(&self) -> BTreeMap<i32, u64> {
        self.lock().high_watermarks.clone()
    }

    pub fn take_ops(&self) -> Vec<Recorded> {
        let mut inner = self.lock();
        assert!(inner.in_flight.is_empty(), "every member has stopped");
        std::mem::take(&mut inner.ops)
    }
}

fn ms(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

fn group_id() -> GroupId {
    GroupId(StrBytes::from_static_str(GROUP_ID))
}

fn topic_name() -> TopicName {
    TopicName(StrBytes::from_static_str(TOPIC))
}

fn is(code: i16, error: ErrorCode) -> bool {
    code == error.code()
}

/// The consumer protocol's subscription to the workload topic, with its version in front.
fn subscription() -> Bytes {
    let version = 1;
    let mut buf = BytesMut::new();
    buf.put_i16(version);
    ConsumerProtocolSubscription::default()
        .with_topics(vec![StrBytes::from_static_str(TOPIC)])
        .encode(&mut buf, version)
        .expect("a subscription encodes");
    buf.freeze()
}

fn encode_assignment(partitions: &[i32]) -> Bytes {
    let version = 0;
    let mut buf = BytesMut::new();
    buf.put_i16(version);
    let topics = if partitions.is_empty() {
        Vec::new()
    } else {
        vec![AssignedTopic::default()
            .with_topic(topic_name())
            .with_partitions(partitions.to_vec())]
    };
    ConsumerProtocolAssignment::default()
        .with_assigned_partitions(topics)
        .encode(&mut buf, version)
        .expect("an assignment encodes");
    buf.freeze()
}

/// The workload topic's partitions in an assignment (empty bytes: none).
fn decode_assignment(bytes: &Bytes) -> Result<Vec<i32>, String> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let mut buf = bytes.clone();
    if buf.remaining() < 2 {
        return Err("assignment too short".into());
    }
    let version = buf.get_i16().min(3);
    let assignment = ConsumerProtocolAssignment::decode(&mut buf, version)
        .map_err(|e| format!("assignment undecodable: {e}"))?;
    let mut partitions: Vec<i32> = assignment
        .assigned_partitions
        .iter()
        .filter(|t| t.topic.0.as_str() == TOPIC)
        .flat_map(|t| t.partitions.iter().copied())
        .collect();
    partitions.sort_unstable();
    partitions.dedup();
    Ok(partitions)
}

/// The leader's assignment of the topic's `partitions` to `members` with the assignor the
/// coordinator chose: Kafka's range (consecutive runs, the first members one longer) or
/// round-robin. Members are taken in member id order, as Kafka's assignors sort them.
fn assign(
    protocol: &str,
    members: &[JoinGroupResponseMember],
    partitions: i32,
) -> Vec<(String, Vec<i32>)> {
    let mut ids: Vec<String> = members
        .iter()
        .filter(|m| {
            sluice_core::group::consumer_subscription_topics(&m.metadata)
                .is_some_and(|topics| topics.iter().any(|t| t == TOPIC))
        })
        .map(|m| m.member_id.as_str().to_string())
        .collect();
    ids.sort();
    ids.dedup();
    let mut out: Vec<(String, Vec<i32>)> = ids.iter().map(|id| (id.clone(), Vec::new())).collect();
    if out.is_empty() {
        return out;
    }
    let n = out.len() as i32;
    if protocol == "roundrobin" {
        for p in 0..partitions {
            out[(p % n) as usize].1.push(p);
        }
    } else {
        let (each, extra) = (partitions / n, partitions % n);
        let mut next = 0;
        for (i, (_, owned)) in out.iter_mut().enumerate() {
            let count = each + i32::from((i as i32) < extra);
            owned.extend(next..next + count);
            next += count;
        }
    }
    // Members whose metadata did not parse get nothing, but still an answer.
    for m in members {
        let id = m.member_id.as_str();
        if !out.iter().any(|(o, _)| o == id) {
            out.push((id.to_string(), Vec::new()));
        }
    }
    out
}

/// What a member and its heartbeat task share.
#[derive(Default)]
struct Shared {
    /// The coordinator's address, once found (either may look for it again).
    coordinator: Option<String>,
    /// (member id, generation) while the member is in a generation: the heartbeat task keeps
    /// its session alive.
    generation: Option<(String, i32)>,
    /// The error a heartbeat of that generation got that ends it: the member rejoins.
    rejoin: Option<i16>,
}

type SharedState = Arc<Mutex<Shared>>;

fn lock(shared: &SharedState) -> std::sync::MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// One FindCoordinator at the next broker in turn: the coordinator's address, if it named one.
async fn find_coordinator(client: &mut Client, version: i16) -> Option<String> {
    let mut request = FindCoordinatorRequest::default().with_key_type(0);
    if version >= 4 {
        request.coordinator_keys = vec![StrBytes::from_static_str(GROUP_ID)];
    } else {
        request.key = StrBytes::from_static_str(GROUP_ID);
    }
    let r = client.call_checked(&request, version).await.ok()?;
    let (code, host, port) = match r.coordinators.first() {
        Some(c) if version >= 4 => (c.error_code, c.host.clone(), c.port),
        _ => (r.error_code, r.host.clone(), r.port),
    };
    (code == 0).then(|| format!("{host}:{port}"))
}

/// A member's heartbeat task (Kafka's heartbeat thread, KIP-62): every third of the session
/// timeout, while the member is in a generation, a Heartbeat on its own connection. An error
/// that ends the generation is handed to the member; NOT_COORDINATOR or a lost connection sends
/// it looking for the coordinator.
async fn heartbeat_loop(
    shared: SharedState,
    bootstrap: Vec<String>,
    session_timeout_ms: u64,
    trace: Trace,
    source: String,
) {
    let mut client = Client::new(&bootstrap);
    let interval = ms((session_timeout_ms / 3).max(1));
    loop {
        tokio::time::sleep(interval).await;
        let (coordinator, generation) = {
            let shared = lock(&shared);
            (shared.coordinator.clone(), shared.generation.clone())
        };
        let Some((member_id, generation)) = generation else {
            continue;
        };
        let Some(addr) = coordinator else {
            if let Some(addr) = find_coordinator(&mut client, 2).await {
                lock(&shared).coordinator.get_or_insert(addr);
            }
            continue;
        };
        let request = HeartbeatRequest::default()
            .with_group_id(group_id())
            .with_generation_id(generation)
            .with_member_id(StrBytes::from_string(member_id.clone()));
        let code = match client.call_at(&addr, &request, 3).await {
            Ok(r) => r.error_code,
            Err(CallError::NotSent(why) | CallError::Unknown(why)) => {
                trace.record(&source, "heartbeat", format!("failed: {why}"));
                let mut shared = lock(&shared);
                if shared.coordinator.as_deref() == Some(addr.as_str()) {
                    shared.coordinator = None;
                }
                continue;
            }
        };
        if code == 0 || is(code, ErrorCode::CoordinatorLoadInProgress) {
            continue;
        }
        trace.record(
            &source,
            "heartbeat",
            format!("generation {generation}: error code {code}"),
        );
        let mut shared = lock(&shared);
        if is(code, ErrorCode::NotCoordinator) || is(code, ErrorCode::CoordinatorNotAvailable) {
            if shared.coordinator.as_deref() == Some(addr.as_str()) {
                shared.coordinator = None;
            }
        } else if shared.generation == Some((member_id, generation)) {
            shared.rejoin = Some(code);
        }
    }
}

/// What a member does after an answer from its coordinator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Next {
    /// Carry on in this generation.
    Stay,
    /// Join again (the generation is over, or this member is no longer in it).
    Rejoin,
}

/// One incarnation of a member.
struct Member {
    process: u32,
    source: String,
    client: Client,
    settings: GroupParams,
    partitions: i32,
    /// What the member shares with its heartbeat task (the coordinator's address among it).
    shared: SharedState,
    member_id: String,
    generation: i32,
    /// The partitions handed to this member in `generation`.
    assigned: Vec<i32>,
    /// Per owned partition: the next offset to fetch.
    positions: BTreeMap<i32, u64>,
    /// Per owned partition: the position last committed (so unchanged ones are not sent).
    committed: BTreeMap<i32, u64>,
    preferred: usize,
    find_coordinator_version: i16,
    offset_fetch_version: i16,
    think_ms: (u64, u64),
    rng: Rng,
    /// When this incarnation stalls and for how long (then it commits late, once), if it does.
    stall: Option<(u64, u64)>,
    /// Draws of the stall (its length, the zombie's offsets), apart from `rng`.
    zombie_rng: Rng,
    log: GroupLog,
    trace: Trace,
}

impl Member {
    fn now(&self) -> u64 {
        self.trace.now_ms()
    }

    fn record(&self, kind: OpKind, invoke_ms: u64) {
        self.log
            .record(&self.trace, &self.source, self.process, kind, invoke_ms);
    }

    /// Backs off for a moment before trying again.
    async fn backoff(&mut self) {
        let pause = self.rng.between(50, 200);
        tokio::time::sleep(ms(pause)).await;
    }

    fn known_coordinator(&self) -> Option<String> {
        lock(&self.shared).coordinator.clone()
    }

    fn forget_coordinator(&self) {
        lock(&self.shared).coordinator = None;
    }

    /// The coordinator's address: FindCoordinator at the brokers in turn until one names it,
    /// or `None` once `stop_at_ms` has passed.
    async fn coordinator(&mut self, stop_at_ms: u64) -> Option<String> {
        while self.known_coordinator().is_none() && self.now() < stop_at_ms {
            let version = self.find_coordinator_version;
            if let Some(addr) = find_coordinator(&mut self.client, version).await {
                lock(&self.shared).coordinator = Some(addr);
                break;
            }
            self.backoff().await;
        }
        self.known_coordinator()
    }

    /// What a group error code means for this member: a lost member id is forgotten, a
    /// coordinator that is not one any more is looked for again.
    fn on_error(&mut self, code: i16) -> Next {
        if is(code, ErrorCode::UnknownMemberId) || is(code, ErrorCode::FencedInstanceId) {
            self.member_id.clear();
            Next::Rejoin
        } else if is(code, ErrorCode::IllegalGeneration) || is(code, ErrorCode::RebalanceInProgress)
        {
            Next::Rejoin
        } else {
            if is(code, ErrorCode::NotCoordinator) || is(code, ErrorCode::CoordinatorNotAvailable) {
                self.forget_coordinator();
            }
            Next::Stay
        }
    }

    fn call_timeout(&self) -> Duration {
        ms(self.settings.rebalance_timeout_ms + 1_000)
    }

    /// JoinGroup then SyncGroup, recorded as one operation. True once the member has a
    /// generation and its assignment.
    async fn join(&mut self, stop_at_ms: u64) -> bool {
        let Some(addr) = self.coordinator(stop_at_ms).await else {
            return false;
        };
        let invoke_ms = self.now();
        let outcome = self.join_and_sync(&addr).await;
        let joined = outcome.is_ok();
        let outcome = match outcome {
            Outcome::Ok(partitions) => {
                self.generation_started(&partitions);
                Outcome::Ok(Assignment {
                    member: self.member_id.clone(),
                    generation: self.generation,
                    keys: partitions.iter().map(|p| key(*p)).collect(),
                })
            }
            Outcome::Fail(why) => Outcome::Fail(why),
            Outcome::Info(why) => Outcome::Info(why),
        };
        let kind = OpKind::Group(GroupOp::Join {
            group: GROUP_ID.to_string(),
            outcome,
        });
        self.record(kind, invoke_ms);
        joined
    }

    fn generation_started(&mut self, partitions: &[i32]) {
        self.assigned = partitions.to_vec();
        self.positions.clear();
        self.committed.clear();
    }

    async fn join_and_sync(&mut self, addr: &str) -> Outcome<Vec<i32>> {
        let mut protocols: Vec<JoinGroupRequestProtocol> = ASSIGNORS
            .iter()
            .map(|name| {
                JoinGroupRequestProtocol::default()
                    .with_name(StrBytes::from_static_str(name))
                    .with_metadata(subscription())
            })
            .collect();
        protocols.rotate_left(self.preferred);
        let mut attempts = 0;
        let joined = loop {
            attempts += 1;
            let request = JoinGroupRequest::default()
                .with_group_id(group_id())
                .with_session_timeout_ms(self.settings.session_timeout_ms as i32)
                .with_rebalance_timeout_ms(self.settings.rebalance_timeout_ms as i32)
                .with_member_id(StrBytes::from_string(self.member_id.clone()))
                .with_protocol_type(StrBytes::from_static_str("consumer"))
                .with_protocols(protocols.clone());
            let timeout = self.call_timeout();
            let response = match self.client.call_at_within(addr, &request, 5, timeout).await {
                Ok(r) => r,
                Err(CallError::NotSent(why) | CallError::Unknown(why)) => {
                    self.forget_coordinator();
                    return Outcome::Info(format!("JoinGroup: {why}"));
                }
            };
            let code = response.error_code;
            if is(code, ErrorCode::MemberIdRequired) && attempts < JOIN_ATTEMPTS_MAX {
                // KIP-394: join again with the member id the coordinator handed out.
                self.member_id = response.member_id.as_str().to_string();
                continue;
            }
            if code != 0 {
                self.on_error(code);
                return Outcome::Fail(format!("JoinGroup error code {code}"));
            }
            break response;
        };
        self.member_id = joined.member_id.as_str().to_string();
        self.generation = joined.generation_id;
        let leader = joined.leader.as_str() == self.member_id;
        let protocol = joined
            .protocol_name
            .as_ref()
            .map_or(String::new(), |p| p.as_str().to_string());
        let assignments = if leader {
            assign(&protocol, &joined.members, self.partitions)
                .into_iter()
                .map(|(id, partitions)| {
                    SyncGroupRequestAssignment::default()
                        .with_member_id(StrBytes::from_string(id))
                        .with_assignment(encode_assignment(&partitions))
                })
                .collect()
        } else {
            Vec::new()
        };
        let request = SyncGroupRequest::default()
            .with_group_id(group_id())
            .with_generation_id(self.generation)
            .with_member_id(StrBytes::from_string(self.member_id.clone()))
            .with_assignments(assignments);
        let timeout = self.call_timeout();
        match self.client.call_at_within(addr, &request, 3, timeout).await {
            Ok(r) if r.error_code == 0 => match decode_assignment(&r.assignment) {
                Ok(partitions) => Outcome::Ok(partitions),
                Err(why) => Outcome::Fail(why),
            },
            Ok(r) => {
                self.on_error(r.error_code);
                Outcome::Fail(format!(
                    "SyncGroup of generation {} error code {}",
                    self.generation, r.error_code
                ))
            }
            Err(CallError::NotSent(why) | CallError::Unknown(why)) => {
                self.forget_coordinator();
                Outcome::Info(format!("SyncGroup: {why}"))
            }
        }
    }

    fn offset_fetch_request(&self) -> OffsetFetchRequest {
        let partitions = self.assigned.clone();
        if self.offset_fetch_version >= 8 {
            OffsetFetchRequest::default().with_groups(vec![OffsetFetchRequestGroup::default()
                .with_group_id(group_id())
                .with_topics(Some(vec![OffsetFetchRequestTopics::default()
                    .with_name(topic_name())
                    .with_partition_indexes(partitions)]))])
        } else {
            OffsetFetchRequest::default()
                .with_group_id(group_id())
                .with_topics(Some(vec![OffsetFetchRequestTopic::default()
                    .with_name(topic_name())
                    .with_partition_indexes(partitions)]))
        }
    }

    /// Where to start: OffsetFetch of the assigned partitions, each started at its committed
    /// offset, or at the beginning (`auto.offset.reset=earliest`) if there is none. False if the
    /// coordinator would not answer (the member rejoins).
    async fn start_positions(&mut self, stop_at_ms: u64) -> bool {
        if self.assigned.is_empty() {
            return true;
        }
        let invoke_ms = self.now();
        let mut last = String::from("no attempt");
        let mut outcome = None;
        for _ in 0..OFFSET_FETCH_ATTEMPTS_MAX {
            let Some(addr) = self.coordinator(stop_at_ms).await else {
                break;
            };
            let request = self.offset_fetch_request();
            let version = self.offset_fetch_version;
            match self.client.call_at(&addr, &request, version).await {
                Ok(response) => match committed_offsets(&response, version) {
                    Ok(committed) => {
                        outcome = Some(committed);
                        break;
                    }
                    Err(code) => {
                        self.on_error(code);
                        last = format!("OffsetFetch error code {code}");
                    }
                },
                Err(CallError::NotSent(why) | CallError::Unknown(why)) => {
                    self.forget_coordinator();
                    last = format!("OffsetFetch: {why}");
                }
            }
            self.backoff().await;
        }
        let (member, generation) = (self.member_id.clone(), self.generation);
        let kind = |outcome| {
            OpKind::Group(GroupOp::OffsetFetch {
                group: GROUP_ID.to_string(),
                member,
                generation,
                outcome,
            })
        };
        let Some(committed) = outcome else {
            self.record(kind(Outcome::Fail(last)), invoke_ms);
            return false;
        };
        let mut positions = Vec::new();
        for p in self.assigned.clone() {
            let offset = committed.get(&p).copied().flatten();
            let start = offset.unwrap_or(0);
            self.positions.insert(p, start);
            if let Some(offset) = offset {
                self.committed.insert(p, offset);
            }
            positions.push(Position {
                key: key(p),
                committed: offset,
                start,
            });
        }
        self.record(kind(Outcome::Ok(positions)), invoke_ms);
        true
    }

    /// One fetch of the owned partitions, recorded as a poll.
    async fn poll(&mut self) {
        let invoke_ms = self.now();
        let (reads, outcome) =
            match fetch(&mut self.client, &self.positions, client::POLL_MAX_WAIT_MS).await {
                Ok(fetched) => {
                    self.log.observe(&fetched.high_watermarks);
                    for (partition, next) in &fetched.next_offsets {
                        if let Some(position) = self.positions.get_mut(partition) {
                            *position = (*position).max(*next);
                        }
                    }
                    let outcome = if fetched.errors.is_empty() {
                        Outcome::Ok(())
                    } else {
                        Outcome::Info(format!("partition errors {:?}", fetched.errors))
                    };
                    let out_of_range = fetched.out_of_range.clone();
                    self.record(
                        OpKind::Poll {
                            reads: fetched.reads,
                            outcome,
                        },
                        invoke_ms,
                    );
                    for partition in out_of_range {
                        self.reset(partition);
                    }
                    return;
                }
                Err(e) => (Reads::new(), Outcome::Info(e)),
            };
        self.record(OpKind::Poll { reads, outcome }, invoke_ms);
    }

    /// `auto.offset.reset=earliest` after OFFSET_OUT_OF_RANGE.
    fn reset(&mut self, partition: i32) {
        let Some(position) = self.positions.get_mut(&partition) else {
            return;
        };
        let from = *position;
        *position = 0;
        let kind = OpKind::Group(GroupOp::Reset {
            group: GROUP_ID.to_string(),
            member: self.member_id.clone(),
            generation: self.generation,
            key: key(partition),
            from,
            to: 0,
        });
        let now = self.now();
        self.record(kind, now);
    }

    /// Commits the owned partitions' positions that moved since their last commit.
    async fn commit(&mut self, stop_at_ms: u64) -> Next {
        let offsets: Vec<(i32, u64)> = self
            .positions
            .iter()
            .filter(|(p, o)| self.committed.get(p) != Some(o))
            .map(|(p, o)| (*p, *o))
            .collect();
        self.commit_offsets(offsets, stop_at_ms).await
    }

    /// The stall of a zombie: no heartbeats and no polls for longer than the session and
    /// rebalance timeouts, then a commit of the partitions it owned with its old generation and
    /// member id. The offsets are its positions moved on to somewhere at or below the highest
    /// high watermark seen, as if it had processed records it had buffered: a commit no current
    /// owner is likely to make, so that one that became visible would show, and one a
    /// coordinator rightly took (the member was not replaced after all, e.g. because a new
    /// coordinator restarted its session) is still a commit of offsets that exist.
    async fn stall_then_commit_late(&mut self, stall_ms: u64, stop_at_ms: u64) {
        lock(&self.shared).generation = None;
        self.trace.record(
            &self.source,
            "stall",
            format!(
                "generation {} member {}: {stall_ms} ms without heartbeats or polls",
                self.generation, self.member_id
            ),
        );
        tokio::time::sleep(ms(stall_ms)).await;
        let high_watermarks = self.log.high_watermarks();
        let positions: Vec<(i32, u64)> = self.positions.iter().map(|(p, o)| (*p, *o)).collect();
        let offsets: Vec<(i32, u64)> = positions
            .into_iter()
            .map(|(p, position)| {
                let top = high_watermarks.get(&p).copied().unwrap_or(0);
                let offset = if top > position {
                    self.zombie_rng.between(position + 1, top)
                } else {
                    position
                };
                (p, offset)
            })
            .collect();
        self.trace.record(
            &self.source,
            "zombie-commit",
            format!("generation {} offsets {offsets:?}", self.generation),
        );
        self.commit_offsets(offsets.clone(), stop_at_ms).await;
        // A commit the coordinator took is the member's progress: it claimed to have processed
        // the records below, so its position moves there, and a later commit of its old
        // position (at the end of the run, or when its partitions are revoked) does not take
        // the group's offset back. Kafka's commits are last-writer-wins, and the checkers judge
        // a commit below an earlier acknowledged one as lost or regressed (groups seed 37: an
        // accepted zombie commit of 365, then the member's final commit of its position 356).
        for (p, offset) in offsets {
            if self.committed.get(&p) == Some(&offset) {
                if let Some(position) = self.positions.get_mut(&p) {
                    *position = (*position).max(offset);
                }
            }
        }
    }

    /// OffsetCommit of `offsets` with the member's generation and member id.
    async fn commit_offsets(&mut self, offsets: Vec<(i32, u64)>, stop_at_ms: u64) -> Next {
        if offsets.is_empty() || self.generation <= 0 {
            return Next::Stay;
        }
        let Some(addr) = self.coordinator(stop_at_ms).await else {
            return Next::Stay;
        };
        let invoke_ms = self.now();
        let (member, generation) = (self.member_id.clone(), self.generation);
        let keyed: Vec<(Key, u64)> = offsets.iter().map(|(p, o)| (key(*p), *o)).collect();
        let kind = |outcome, error_code| {
            OpKind::Group(GroupOp::Commit {
                group: GROUP_ID.to_string(),
                member: member.clone(),
                generation,
                offsets: keyed.clone(),
                outcome,
                error_code,
            })
        };
        self.log.begin(
            self.process,
            kind(
                Outcome::Info("the member was killed with the commit in flight".into()),
                None,
            ),
            invoke_ms,
        );
        let request = OffsetCommitRequest::default()
            .with_group_id(group_id())
            .with_generation_id_or_member_epoch(self.generation)
            .with_member_id(StrBytes::from_string(self.member_id.clone()))
            .with_topics(vec![OffsetCommitRequestTopic::default()
                .with_name(topic_name())
                .with_partitions(
                    offsets
                        .iter()
                        .map(|(p, o)| {
                            OffsetCommitRequestPartition::default()
                                .with_partition_index(*p)
                                .with_committed_offset(*o as i64)
                                .with_committed_leader_epoch(-1)
                                .with_committed_metadata(Some(StrBytes::default()))
                        })
                        .collect(),
                )]);
        let mut error_code = None;
        let (outcome, next) = match self.client.call_at(&addr, &request, 7).await {
            Ok(r) => {
                let code = r
                    .topics
                    .iter()
                    .flat_map(|t| &t.partitions)
                    .map(|p| p.error_code)
                    .find(|c| *c != 0)
                    .unwrap_or(0);
                if code == 0 {
                    for (p, o) in &offsets {
                        self.committed.insert(*p, *o);
                    }
                    (Outcome::Ok(()), Next::Stay)
                } else {
                    error_code = Some(code);
                    let next = self.on_error(code);
                    let why = format!("error code {code}");
                    // Refused before anything was written, or perhaps written by a coordinator
                    // that lost its leadership before it could answer.
                    let refused = [
                        ErrorCode::IllegalGeneration,
                        ErrorCode::UnknownMemberId,
                        ErrorCode::RebalanceInProgress,
                        ErrorCode::FencedInstanceId,
                        ErrorCode::CoordinatorLoadInProgress,
                    ]
                    .iter()
                    .any(|e| is(code, *e));
                    let outcome = if refused {
                        Outcome::Fail(why)
                    } else {
                        Outcome::Info(why)
                    };
                    (outcome, next)
                }
            }
            Err(CallError::NotSent(why)) => {
                self.forget_coordinator();
                (Outcome::Fail(why), Next::Stay)
            }
            Err(CallError::Unknown(why)) => {
                self.forget_coordinator();
                (Outcome::Info(why), Next::Stay)
            }
        };
        self.log.end(self.process);
        self.record(kind(outcome, error_code), invoke_ms);
        next
    }

    async fn leave(&mut self) {
        let Some(addr) = self.known_coordinator() else {
            return;
        };
        let invoke_ms = self.now();
        let request = LeaveGroupRequest::default()
            .with_group_id(group_id())
            .with_members(vec![MemberIdentity::default()
                .with_member_id(StrBytes::from_string(self.member_id.clone()))]);
        let outcome = match self.client.call_at(&addr, &request, 3).await {
            Ok(r) => {
                let code = r
                    .members
                    .iter()
                    .map(|m| m.error_code)
                    .find(|c| *c != 0)
                    .unwrap_or(r.error_code);
                if code == 0 {
                    Outcome::Ok(())
                } else {
                    Outcome::Fail(format!("error code {code}"))
                }
            }
            Err(CallError::NotSent(why)) => Outcome::Fail(why),
            Err(CallError::Unknown(why)) => Outcome::Info(why),
        };
        let kind = OpKind::Group(GroupOp::Leave {
            group: GROUP_ID.to_string(),
            member: self.member_id.clone(),
            outcome,
        });
        self.record(kind, invoke_ms);
    }

    /// Runs until `stop_at_ms`, then commits and leaves the group. Its heartbeat task keeps
    /// the session meanwhile, as a Kafka consumer's heartbeat thread does.
    async fn run(mut self, stop_at_ms: u64) {
        'session: while self.now() < stop_at_ms {
            lock(&self.shared).generation = None;
            // The partitions of the last generation are revoked (their positions committed if
            // the coordinator allowed it): never commit them again, whatever comes next.
            self.generation_started(&[]);
            if !self.join(stop_at_ms).await {
                self.backoff().await;
                continue;
            }
            {
                let mut shared = lock(&self.shared);
                shared.generation = Some((self.member_id.clone(), self.generation));
                shared.rejoin = None;
            }
            if !self.start_positions(stop_at_ms).await {
                continue;
            }
            let mut next_commit_ms = self.now() + self.commit_interval();
            while self.now() < stop_at_ms {
                if !self.positions.is_empty() {
                    self.poll().await;
                }
                let rejoin = lock(&self.shared).rejoin.take();
                if let Some(code) = rejoin {
                    if is(code, ErrorCode::RebalanceInProgress) {
                        // As a Kafka consumer does when its partitions are revoked: commit what
                        // it consumed (refused if the generation is already over).
                        self.commit(stop_at_ms).await;
                    }
                    self.on_error(code);
                    continue 'session;
                }
                let stall_due = self.stall.filter(|&(at_ms, _)| self.now() >= at_ms);
                if let Some((_, stall_ms)) = stall_due.filter(|_| !self.positions.is_empty()) {
                    self.stall = None;
                    // Whatever the coordinator answers, the zombie's generation is over for it.
                    self.stall_then_commit_late(stall_ms, stop_at_ms).await;
                    continue 'session;
                }
                if self.now() >= next_commit_ms {
                    next_commit_ms = self.now() + self.commit_interval();
                    if self.commit(stop_at_ms).await == Next::Rejoin {
                        continue 'session;
                    }
                }
                let think = self.rng.between(self.think_ms.0, self.think_ms.1);
                tokio::time::sleep(ms(think)).await;
            }
        }
        lock(&self.shared).generation = None;
        if self.generation > 0 && !self.member_id.is_empty() {
            // Bounded: the nemesis may still hold the coordinator out of reach.
            let bound_ms = self.now() + 5_000;
            self.commit(bound_ms).await;
            self.leave().await;
        }
    }

    fn commit_interval(&mut self) -> u64 {
        let (lo, hi) = self.settings.commit_interval_ms;
        self.rng.between(lo, hi)
    }
}

/// The committed offset per partition of an OffsetFetch answer, or the group's (or first
/// partition's) error code.
fn committed_offsets(
    response: &OffsetFetchResponse,
    version: i16,
) -> Result<BTreeMap<i32, Option<u64>>, i16> {
    let mut out = BTreeMap::new();
    let mut push = |partition: i32, offset: i64, code: i16| {
        if code != 0 {
            return Err(code);
        }
        out.insert(partition, u64::try_from(offset).ok());
        Ok(())
    };
    if version >= 8 {
        let group = response
            .groups
            .first()
            .ok_or(ErrorCode::UnknownServerError.code())?;
        if group.error_code != 0 {
            return Err(group.error_code);
        }
        for t in group.topics.iter().filter(|t| t.name.0.as_str() == TOPIC) {
            for p in &t.partitions {
                push(p.partition_index, p.committed_offset, p.error_code)?;
            }
        }
    } else {
        if response.error_code != 0 {
            return Err(response.error_code);
        }
        for t in response
            .topics
            .iter()
            .filter(|t| t.name.0.as_str() == TOPIC)
        {
            for p in &t.partitions {
                push(p.partition_index, p.committed_offset, p.error_code)?;
            }
        }
    }
    Ok(out)
}

/// Member slot `slot` until `deadline_ms`: one incarnation after another, each living a drawn
/// while and then killed (no LeaveGroup) or leaving gracefully, the next starting after a
/// pause. The last one leaves at the deadline.
pub async fn run_slot(
    slot: u32,
    bootstrap: Vec<String>,
    params: Params,
    mut rng: Rng,
    log: GroupLog,
    trace: Trace,
    deadline_ms: u64,
) {
    let settings = params.groups.clone().expect("the groups scenario");
    let process = MEMBER_PROCESS_BASE + slot;
    let source = format!("member-{slot}");
    let mut zombie_rng = Rng::new(params.seed ^ ZOMBIE_SEED_SALT ^ u64::from(slot));
    tokio::time::sleep(ms(rng.between(0, 300))).await;
    while trace.now_ms() + 200 < deadline_ms {
        let life_ms = rng.between(settings.lifetime_ms.0, settings.lifetime_ms.1);
        let crash = rng.chance(settings.crash_per_mille);
        // A stalling incarnation lives the stall longer, so that the stall is over (and the
        // zombie has committed) before its end comes.
        let stall = (settings.zombie_per_mille > 0 && zombie_rng.chance(settings.zombie_per_mille))
            .then(|| {
                let margin_ms = zombie_rng.between(100, STALL_MARGIN_MS_MAX);
                let stall_ms =
                    settings.session_timeout_ms + settings.rebalance_timeout_ms + margin_ms;
                (
                    trace.now_ms() + zombie_rng.between(300, life_ms.max(300)),
                    stall_ms,
                )
            });
        let end_ms = trace.now_ms() + life_ms + stall.map_or(0, |(_, stall_ms)| stall_ms);
        let crash = crash && end_ms < deadline_ms;
        let stop_at_ms = if crash {
            deadline_ms
        } else {
            end_ms.min(deadline_ms)
        };
        let shared = SharedState::default();
        let member = Member {
            process,
            source: source.clone(),
            client: Client::new(&bootstrap),
            settings: settings.clone(),
            partitions: params.partitions,
            shared: shared.clone(),
            member_id: String::new(),
            generation: -1,
            assigned: Vec::new(),
            positions: BTreeMap::new(),
            committed: BTreeMap::new(),
            preferred: rng.below(ASSIGNORS.len() as u64) as usize,
            find_coordinator_version: if rng.chance(500) { 4 } else { 2 },
            offset_fetch_version: if rng.chance(500) { 8 } else { 7 },
            think_ms: params.think_ms,
            rng: rng.fork(),
            stall,
            zombie_rng: zombie_rng.fork(),
            log: log.clone(),
            trace: trace.clone(),
        };
        trace.record(
            &source,
            "start",
            if crash {
                format!("to be killed at {end_ms} ms")
            } else {
                format!("to leave at {stop_at_ms} ms")
            } + &stall.map_or(String::new(), |(at_ms, stall_ms)| {
                format!(", to stall at {at_ms} ms for {stall_ms} ms")
            }),
        );
        let heartbeat = tokio::spawn(heartbeat_loop(
            shared,
            bootstrap.clone(),
            settings.session_timeout_ms,
            trace.clone(),
            source.clone(),
        ));
        let handle = tokio::spawn(member.run(stop_at_ms));
        if crash {
            tokio::time::sleep(ms(end_ms.saturating_sub(trace.now_ms()))).await;
            handle.abort();
            heartbeat.abort();
            let _ = handle.await;
            log.crash(process, &trace, &source);
        } else {
            let _ = handle.await;
            heartbeat.abort();
        }
        let _ = heartbeat.await;
        tokio::time::sleep(ms(rng.between(50, 1_000))).await;
    }
}

/// Creates `__consumer_offsets` before the faults start (FindCoordinator creates it on first
/// use), so that it gets a replica on every broker, and waits until it has a coordinator.
pub async fn create_offsets_topic(bootstrap: &[String], trace: &Trace) {
    let mut client = Client::new(bootstrap);
    let request = FindCoordinatorRequest::default()
        .with_key(StrBytes::from_static_str(GROUP_ID))
        .with_key_type(0);
    loop {
        match client.call(&request, 2).await {
            Ok(r) if r.error_code == 0 => {
                trace.record(
                    "setup",
                    "group-coordinator",
                    format!("{GROUP_ID}: broker {} ({}:{})", r.node_id.0, r.host, r.port),
                );
                return;
            }
            Ok(r) => trace.record(
                "setup",
                "find-coordinator",
                format!("error code {}", r.error_code),
            ),
            Err(e) => trace.record("setup", "find-coordinator", e),
        }
        tokio::time::sleep(ms(100)).await;
    }
}

/// After the heal: the group's committed offsets must be readable (OffsetFetch outside any
/// generation) within `bound`; the answer is recorded for the checkers.
pub async fn final_offsets(
    bootstrap: &[String],
    partitions: i32,
    bound: Duration,
    log: &GroupLog,
    trace: &Trace,
) -> Result<(), String> {
    let start = trace.now_ms();
    let mut member = Member {
        process: FINAL_OFFSETS_PROCESS,
        source: "final-offsets".to_string(),
        client: Client::new(bootstrap),
        settings: GroupParams {
            members: 0,
            offsets_partitions: 0,
            session_timeout_ms: 0,
            rebalance_timeout_ms: 0,
            initial_rebalance_delay_ms: 0,
            commit_interval_ms: (0, 0),
            lifetime_ms: (0, 0),
            crash_per_mille: 0,
            offsets_segment_bytes: 0,
            cleaner_backoff_ms: 0,
            zombie_per_mille: 0,
        },
        partitions,
        shared: SharedState::default(),
        member_id: String::new(),
        generation: -1,
        assigned: (0..partitions).collect(),
        positions: BTreeMap::new(),
        committed: BTreeMap::new(),
        preferred: 0,
        find_coordinator_version: 2,
        offset_fetch_version: 7,
        think_ms: (0, 0),
        rng: Rng::new(0),
        stall: None,
        zombie_rng: Rng::new(0),
        log: log.clone(),
        trace: trace.clone(),
    };
    let stop_at_ms = start + bound.as_millis() as u64;
    while trace.now_ms() < stop_at_ms {
        if member.start_positions(stop_at_ms).await {
            return Ok(());
        }
    }
    Err(format!(
        "the group coordinator did not answer OffsetFetch within {} ms",
        bound.as_millis()
    ))
}

/// The highest high watermarks seen, recorded for the checkers.
pub fn record_high_watermarks(marks: &BTreeMap<i32, u64>, trace: &Trace) -> Recorded {
    let kind = OpKind::Group(GroupOp::HighWatermarks {
        marks: marks.iter().map(|(p, hw)| (key(*p), *hw)).collect(),
    });
    trace.record("final-read", "op", describe(&kind));
    let now = trace.now_ms();
    Recorded {
        process: FINAL_OFFSETS_PROCESS,
        kind,
        invoke_ms: now,
        complete_ms: now,
    }
}
