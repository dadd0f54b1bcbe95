//! The group coordinator of one `__consumer_offsets` partition (Kafka's classic group protocol).
//!
//! Group states, as Kafka's `GroupMetadata`:
//!
//! ```text
//!  Empty ──join──▶ PreparingRebalance ──all joined / rebalance timeout──▶ CompletingRebalance
//!    ▲                 ▲        │ (no member left)                             │ leader's SyncGroup
//!    └─────────────────┼────────┘                                              ▼ committed
//!                      └──── join of a new member, leave, session expiry ─── Stable
//! ```
//!
//! Inputs carry `now` (the monotonic clock for sessions, rebalances and every deadline; the wall
//! clock for commit timestamps and offset retention); outputs are drained with [`GroupCoordinator::poll_output`]: records to
//! append to the partition, and replies. A reply that promises durability (SyncGroup, which
//! hands out the assignment, OffsetCommit, OffsetDelete, DeleteGroups) leaves only after the
//! host reports the records it depends on committed.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::codec::{GroupValue, MemberValue, OffsetValue, OffsetsRecord};
use crate::limits::{
    GROUP_INITIAL_REBALANCE_DELAY_MS_DEFAULT, GROUP_MAX_SESSION_TIMEOUT_MS_DEFAULT,
    GROUP_MEMBERS_MAX_DEFAULT, GROUP_MEMBER_BLOB_BYTES_MAX, GROUP_MIN_SESSION_TIMEOUT_MS_DEFAULT,
    GROUP_REQUESTS_IN_FLIGHT_MAX, GROUP_STRING_BYTES_MAX, OFFSETS_RETENTION_MS_DEFAULT,
    OFFSET_COMMIT_PARTITIONS_MAX, OFFSET_METADATA_BYTES_MAX,
};
use crate::rng::Rng;
use crate::time::Now;
use crate::ErrorCode;

/// The host's handle on a request waiting for its reply.
pub type RequestId = u64;
/// Names one [`Output::Append`], so the host can say where it landed.
pub type WriteId = u64;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoordinatorConfig {
    pub min_session_timeout_ms: u64,
    pub max_session_timeout_ms: u64,
    /// How long a new (empty) group waits for more members before its first generation.
    pub initial_rebalance_delay_ms: u64,
    /// How long offsets of a group without members are kept.
    pub offsets_retention_ms: u64,
    /// How often expired offsets are looked for.
    pub offsets_retention_check_interval_ms: u64,
    pub group_members_max: usize,
    /// A deliberate defect for the simulator's checker tests (nothing outside them).
    pub planted: crate::planted::Planted,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        CoordinatorConfig {
            min_session_timeout_ms: GROUP_MIN_SESSION_TIMEOUT_MS_DEFAULT,
            max_session_timeout_ms: GROUP_MAX_SESSION_TIMEOUT_MS_DEFAULT,
            initial_rebalance_delay_ms: GROUP_INITIAL_REBALANCE_DELAY_MS_DEFAULT,
            offsets_retention_ms: OFFSETS_RETENTION_MS_DEFAULT,
            offsets_retention_check_interval_ms: 600_000,
            group_members_max: GROUP_MEMBERS_MAX_DEFAULT,
            planted: crate::planted::Planted::NONE,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum GroupState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
}

impl GroupState {
    /// The name Kafka's DescribeGroups and ListGroups use.
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JoinRequest {
    pub group_id: String,
    /// Empty for a member joining for the first time.
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub protocol_type: String,
    /// (name, metadata), most preferred first.
    pub protocols: Vec<(String, Vec<u8>)>,
    /// JoinGroup v4+: a first join gets MEMBER_ID_REQUIRED and a member id to rejoin with.
    pub require_known_member_id: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JoinedMember {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub metadata: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinResponse {
    pub error: ErrorCode,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub leader: String,
    pub member_id: String,
    /// Every member with its metadata for the chosen protocol, for the leader only.
    pub members: Vec<JoinedMember>,
}

impl JoinResponse {
    fn error(error: ErrorCode, member_id: &str) -> JoinResponse {
        JoinResponse {
            error,
            generation: -1,
            protocol_type: None,
            protocol_name: None,
            leader: String::new(),
            member_id: member_id.to_string(),
            members: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncRequest {
    pub group_id: String,
    pub member_id: String,
    pub instance_id: Option<String>,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    /// The leader's assignment: (member id, assignment).
    pub assignments: Vec<(String, Vec<u8>)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncResponse {
    pub error: ErrorCode,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub assignment: Vec<u8>,
}

impl SyncResponse {
    fn error(error: ErrorCode) -> SyncResponse {
        SyncResponse {
            error,
            protocol_type: None,
            protocol_name: None,
            assignment: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitPartition {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommitRequest {
    pub group_id: String,
    /// -1 (with an empty member id) for a commit outside any generation: allowed only while the
    /// group has no members, as Kafka allows for consumers that assign partitions themselves.
    pub generation: i32,
    pub member_id: String,
    pub instance_id: Option<String>,
    pub partitions: Vec<CommitPartition>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberDescription {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub metadata: Vec<u8>,
    pub assignment: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupDescription {
    /// "Dead" for a group this coordinator does not know.
    pub state: &'static str,
    pub protocol_type: String,
    pub protocol: String,
    pub members: Vec<MemberDescription>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedGroup {
    pub group_id: String,
    pub protocol_type: String,
    pub state: &'static str,
}

/// A reply to a request that waited (see [`Output`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Join(JoinResponse),
    Sync(SyncResponse),
    /// Per partition, in the request's order.
    Commit(Vec<(String, i32, ErrorCode)>),
    /// A group-level error, then per partition.
    DeleteOffsets(ErrorCode, Vec<(String, i32, ErrorCode)>),
    /// Per group, in the request's order.
    DeleteGroups(Vec<(String, ErrorCode)>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Append these records to the partition, then call [`GroupCoordinator::appended`].
    Append {
        write: WriteId,
        records: Vec<OffsetsRecord>,
    },
    Reply {
        request: RequestId,
        reply: Reply,
    },
}

#[derive(Clone, Debug)]
struct Member {
    id: String,
    instance_id: Option<String>,
    client_id: String,
    client_host: String,
    session_timeout_ms: u64,
    rebalance_timeout_ms: u64,
    protocols: Vec<(String, Vec<u8>)>,
    assignment: Vec<u8>,
    awaiting_join: Option<RequestId>,
    awaiting_sync: Option<RequestId>,
    last_heartbeat_ms: u64,
    /// Order of joining, for choosing a leader deterministically (the earliest joined).
    joined_seq: u64,
}

impl Member {
    fn metadata_for(&self, protocol: &str) -> Vec<u8> {
        self.protocols
            .iter()
            .find(|(name, _)| name == protocol)
            .map(|(_, m)| m.clone())
            .unwrap_or_default()
    }

    fn session_deadline_ms(&self) -> Option<u64> {
        (self.awaiting_join.is_none() && self.awaiting_sync.is_none()).then(|| {
            self.last_heartbeat_ms
                .saturating_add(self.session_timeout_ms)
        })
    }
}

#[derive(Clone, Debug)]
struct Group {
    state: GroupState,
    protocol_type: Option<String>,
    protocol: Option<String>,
    generation: i32,
    leader: Option<String>,
    members: BTreeMap<String, Member>,
    /// Member ids handed out with MEMBER_ID_REQUIRED, not yet joined: id -> expiry.
    pending: BTreeMap<String, u64>,
    /// Static members: instance id -> member id.
    statics: BTreeMap<String, String>,
    /// When PreparingRebalance ends even if not every member rejoined.
    rebalance_deadline_ms: u64,
    /// A new group's first rebalance waits `initial_rebalance_delay_ms` for more members;
    /// `Some(start)` while that window is open.
    initial_window_start_ms: Option<u64>,
    state_since_ms: u64,
    offsets: BTreeMap<(String, i32), OffsetValue>,
    /// The leader's assignment of this generation, being written.
    sync_write: Option<WriteId>,
}

impl Group {
    fn new(now: Now) -> Group {
        Group {
            state: GroupState::Empty,
            protocol_type: None,
            protocol: None,
            generation: 0,
            leader: None,
            members: BTreeMap::new(),
            pending: BTreeMap::new(),
            statics: BTreeMap::new(),
            rebalance_deadline_ms: 0,
            initial_window_start_ms: None,
            state_since_ms: now.wall_ms,
            offsets: BTreeMap::new(),
            sync_write: None,
        }
    }

    fn max_rebalance_timeout_ms(&self) -> u64 {
        self.members
            .values()
            .map(|m| m.rebalance_timeout_ms)
            .max()
            .unwrap_or(0)
    }

    /// Whether a member's protocols have one in common with every current member (and the same
    /// protocol type): Kafka's `supportsProtocols`.
    fn supports(&self, protocol_type: &str, protocols: &[(String, Vec<u8>)]) -> bool {
        if self.members.is_empty() {
            return !protocol_type.is_empty() && !protocols.is_empty();
        }
        self.protocol_type.as_deref() == Some(protocol_type)
            && protocols.iter().any(|(name, _)| {
                self.members
                    .values()
                    .all(|m| m.protocols.iter().any(|(n, _)| n == name))
            })
    }

    /// The protocol every member supports that most members prefer (ties: the smallest name).
    fn select_protocol(&self) -> Option<String> {
        let first = self.members.values().next()?;
        let candidates: Vec<&String> = first
            .protocols
            .iter()
            .map(|(n, _)| n)
            .filter(|n| {
                self.members
                    .values()
                    .all(|m| m.protocols.iter().any(|(p, _)| &p == n))
            })
            .collect();
        let mut votes: BTreeMap<&String, usize> = BTreeMap::new();
        for m in self.members.values() {
            if let Some((vote, _)) = m.protocols.iter().find(|(p, _)| candidates.contains(&p)) {
                *votes.entry(vote).or_insert(0) += 1;
            }
        }
        let best = votes.values().copied().max()?;
        votes
            .into_iter()
            .find(|(_, n)| *n == best)
            .map(|(name, _)| name.clone())
    }

    fn to_value(&self, now: Now, assignments: Option<&BTreeMap<String, Vec<u8>>>) -> GroupValue {
        let protocol = self.protocol.clone().unwrap_or_default();
        GroupValue {
            protocol_type: self.protocol_type.clone().unwrap_or_default(),
            generation: self.generation,
            protocol: self.protocol.clone(),
            leader: self.leader.clone(),
            current_state_timestamp_ms: now.wall_ms as i64,
            members: self
                .members
                .values()
                .map(|m| MemberValue {
                    member_id: m.id.clone(),
                    instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    rebalance_timeout_ms: m.rebalance_timeout_ms as i32,
                    session_timeout_ms: m.session_timeout_ms as i32,
                    subscription: m.metadata_for(&protocol),
                    assignment: match assignments {
                        Some(a) => a.get(&m.id).cloned().unwrap_or_default(),
                        None => m.assignment.clone(),
                    },
                })
                .collect(),
        }
    }

    /// Topics the members subscribe to, if the group speaks the consumer protocol.
    fn subscribed_topics(&self) -> Option<BTreeSet<String>> {
        if self.protocol_type.as_deref() != Some("consumer") {
            return None;
        }
        let protocol = self.protocol.as_deref()?;
        let mut topics = BTreeSet::new();
        for m in self.members.values() {
            if let Some(t) = super::consumer_subscription_topics(&m.metadata_for(protocol)) {
                topics.extend(t);
            }
        }
        Some(topics)
    }
}

#[derive(Debug)]
enum WriteEffect {
    /// A generation's assignment: on commit the group becomes Stable and the syncs are answered.
    Sync {
        group: String,
        generation: i32,
        assignments: BTreeMap<String, Vec<u8>>,
    },
    Commit {
        group: String,
        request: RequestId,
        offsets: Vec<(String, i32, OffsetValue)>,
        results: Vec<(String, i32, ErrorCode)>,
    },
    DeleteOffsets {
        group: String,
        request: RequestId,
        removed: Vec<(String, i32)>,
        results: Vec<(String, i32, ErrorCode)>,
    },
    DeleteGroups {
        request: RequestId,
        results: Vec<(String, ErrorCode)>,
    },
    /// A record whose success nobody waits for (an emptied group, expired offsets).
    Background,
}

#[derive(Debug)]
struct PendingWrite {
    /// Offset of the write's last record, once appended.
    last_offset: Option<u64>,
    effect: WriteEffect,
}

/// The coordinator of every group that hashes to one `__consumer_offsets` partition.
#[derive(Debug)]
pub struct GroupCoordinator {
    config: CoordinatorConfig,
    rng: Rng,
    groups: BTreeMap<String, Group>,
    writes: BTreeMap<WriteId, PendingWrite>,
    next_write: WriteId,
    next_join_seq: u64,
    next_expiry_check_ms: u64,
    out: VecDeque<Output>,
}

impl GroupCoordinator {
    pub fn new(config: CoordinatorConfig, rng: Rng, now: Now) -> GroupCoordinator {
        GroupCoordinator {
            next_expiry_check_ms: now
                .mono_ms()
                .saturating_add(config.offsets_retention_check_interval_ms),
            config,
            rng,
            groups: BTreeMap::new(),
            writes: BTreeMap::new(),
            next_write: 0,
            next_join_seq: 0,
            out: VecDeque::new(),
        }
    }

    /// The next output, in the order they arose.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// Rebuilds state from one record of the partition, read in offset order by a new leader
    /// before it serves (members come back as they were written, their sessions starting now).
    pub fn replay(&mut self, record: OffsetsRecord, now: Now) {
        match record {
            OffsetsRecord::Offset {
                group,
                topic,
                partition,
                value,
            } => match value {
                Some(v) => {
                    let g = self.groups.entry(group).or_insert_with(|| Group::new(now));
                    g.offsets.insert((topic, partition), v);
                }
                None => {
                    if let Some(g) = self.groups.get_mut(&group) {
                        g.offsets.remove(&(topic, partition));
                    }
                }
            },
            OffsetsRecord::Group { group, value: None } => {
                self.groups.remove(&group);
            }
            OffsetsRecord::Group {
                group,
                value: Some(v),
            } => {
                let g = self.groups.entry(group).or_insert_with(|| Group::new(now));
                let offsets = std::mem::take(&mut g.offsets);
                *g = Group::new(now);
                g.offsets = offsets;
                g.protocol_type = Some(v.protocol_type.clone()).filter(|t| !t.is_empty());
                g.generation = v.generation;
                g.protocol = v.protocol.clone();
                for m in v.members {
                    let seq = self.next_join_seq;
                    self.next_join_seq += 1;
                    if let Some(instance) = &m.instance_id {
                        g.statics.insert(instance.clone(), m.member_id.clone());
                    }
                    g.members.insert(
                        m.member_id.clone(),
                        Member {
                            id: m.member_id,
                            instance_id: m.instance_id,
                            client_id: m.client_id,
                            client_host: m.client_host,
                            session_timeout_ms: m.session_timeout_ms.max(0) as u64,
                            rebalance_timeout_ms: m.rebalance_timeout_ms.max(0) as u64,
                            protocols: vec![(
                                v.protocol.clone().unwrap_or_default(),
                                m.subscription,
                            )],
                            assignment: m.assignment,
                            awaiting_join: None,
                            awaiting_sync: None,
                            last_heartbeat_ms: now.mono_ms(),
                            joined_seq: seq,
                        },
                    );
                }
                if g.members.is_empty() || g.protocol.is_none() {
                    g.members.clear();
                    g.statics.clear();
                    g.state = GroupState::Empty;
                } else {
                    g.state = GroupState::Stable;
                    g.leader = v.leader.filter(|l| g.members.contains_key(l));
                    if g.leader.is_none() {
                        // A record without a usable leader: let the members agree afresh.
                        g.leader = g.members.keys().next().cloned();
                    }
                }
            }
        }
    }

    // ---------------------------------------------------------------------------------------
    // JoinGroup

    pub fn join(&mut self, now: Now, request: RequestId, req: JoinRequest) {
        if let Err(code) = self.check_join(&req) {
            self.reply(
                request,
                Reply::Join(JoinResponse::error(code, &req.member_id)),
            );
            return;
        }
        let group_id = req.group_id.clone();
        self.groups
            .entry(group_id.clone())
            .or_insert_with(|| Group::new(now));
        if req.member_id.is_empty() {
            self.join_new_member(now, request, req);
        } else {
            self.join_known_member(now, request, req);
        }
        self.forget_if_unused(&group_id);
    }

    fn check_join(&self, req: &JoinRequest) -> Result<(), ErrorCode> {
        if req.group_id.is_empty() || req.group_id.len() > GROUP_STRING_BYTES_MAX {
            return Err(ErrorCode::InvalidGroupId);
        }
        let session = u64::try_from(req.session_timeout_ms).unwrap_or(0);
        if session < self.config.min_session_timeout_ms
            || session > self.config.max_session_timeout_ms
        {
            return Err(ErrorCode::InvalidSessionTimeout);
        }
        let too_long = [
            &req.member_id,
            &req.client_id,
            &req.client_host,
            &req.protocol_type,
        ]
        .into_iter()
        .chain(req.instance_id.as_ref())
        .any(|s| s.len() > GROUP_STRING_BYTES_MAX)
            || req.protocols.iter().any(|(name, metadata)| {
                name.len() > GROUP_STRING_BYTES_MAX || metadata.len() > GROUP_MEMBER_BLOB_BYTES_MAX
            });
        if too_long || req.instance_id.as_deref() == Some("") {
            return Err(ErrorCode::InvalidRequest);
        }
        if req.protocol_type.is_empty() || req.protocols.is_empty() {
            return Err(ErrorCode::InconsistentGroupProtocol);
        }
        if let Some(g) = self.groups.get(&req.group_id) {
            if !g.supports(&req.protocol_type, &req.protocols) {
                return Err(ErrorCode::InconsistentGroupProtocol);
            }
        }
        Ok(())
    }

    fn new_member_id(&mut self, prefix: &str) -> String {
        format!(
            "{prefix}-{:016x}{:016x}",
            self.rng.next_u64(),
            self.rng.next_u64()
        )
    }

    fn join_new_member(&mut self, now: Now, request: RequestId, req: JoinRequest) {
        let prefix = req
            .instance_id
            .clone()
            .unwrap_or_else(|| req.client_id.clone());
        let new_id = self.new_member_id(&prefix);
        let g = self.groups.get_mut(&req.group_id).expect("created by join");
        if let Some(instance) = &req.instance_id {
            if let Some(old_id) = g.statics.get(instance).cloned() {
                // A static member restarted: it takes over its old identity's place under a
                // new member id, and the old id is fenced.
                self.replace_static_member(now, request, req, old_id, new_id);
                return;
            }
        }
        if g.members.len() + g.pending.len() >= self.config.group_members_max {
            self.reply(
                request,
                Reply::Join(JoinResponse::error(ErrorCode::GroupMaxSizeReached, "")),
            );
            return;
        }
        if req.require_known_member_id && req.instance_id.is_none() {
            let deadline = now.mono_ms().saturating_add(req.session_timeout_ms as u64);
            g.pending.insert(new_id.clone(), deadline);
            self.reply(
                request,
                Reply::Join(JoinResponse::error(ErrorCode::MemberIdRequired, &new_id)),
            );
            return;
        }
        self.add_member_and_rebalance(now, request, req, new_id);
    }

    fn join_known_member(&mut self, now: Now, request: RequestId, req: JoinRequest) {
        let g = self.groups.get_mut(&req.group_id).expect("created by join");
        if g.pending.remove(&req.member_id).is_some() {
            let id = req.member_id.clone();
            self.add_member_and_rebalance(now, request, req, id);
            return;
        }
        if let Err(code) = check_member(g, &req.member_id, req.instance_id.as_deref()) {
            self.reply(
                request,
                Reply::Join(JoinResponse::error(code, &req.member_id)),
            );
            return;
        }
        let member = g.members.get_mut(&req.member_id).expect("checked");
        member.last_heartbeat_ms = now.mono_ms();
        let unchanged = member.protocols == req.protocols;
        let is_leader = g.leader.as_deref() == Some(req.member_id.as_str());
        match g.state {
            GroupState::PreparingRebalance => {
                update_member(member, &req);
                if let Some(old) = member.awaiting_join.replace(request) {
                    // The client gave up on its earlier join and sent another.
                    let id = req.member_id.clone();
                    self.reply(
                        old,
                        Reply::Join(JoinResponse::error(ErrorCode::UnknownMemberId, &id)),
                    );
                }
                self.maybe_complete_join(now, &req.group_id);
            }
            GroupState::CompletingRebalance | GroupState::Stable
                if unchanged && !(g.state == GroupState::Stable && is_leader) =>
            {
                // The member missed its join response: answer with the current generation.
                let response = join_response(g, &req.member_id);
                self.reply(request, Reply::Join(response));
            }
            GroupState::CompletingRebalance | GroupState::Stable => {
                update_member(member, &req);
                member.awaiting_join = Some(request);
                self.prepare_rebalance(now, &req.group_id);
            }
            GroupState::Empty => {
                unreachable!("an Empty group has no members (check_invariants)")
            }
        }
    }

    fn replace_static_member(
        &mut self,
        now: Now,
        request: RequestId,
        req: JoinRequest,
        old_id: String,
        new_id: String,
    ) {
        let g = self.groups.get_mut(&req.group_id).expect("created by join");
        let mut member = g
            .members
            .remove(&old_id)
            .expect("static members are members");
        let mut fenced = Vec::new();
        fenced.extend(member.awaiting_join.take().map(|r| (r, true)));
        fenced.extend(member.awaiting_sync.take().map(|r| (r, false)));
        let unchanged = member.protocols == req.protocols;
        member.id = new_id.clone();
        member.last_heartbeat_ms = now.mono_ms();
        update_member(&mut member, &req);
        if g.leader.as_deref() == Some(old_id.as_str()) {
            g.leader = Some(new_id.clone());
        }
        g.statics
            .insert(req.instance_id.clone().expect("static"), new_id.clone());
        let is_leader = g.leader.as_deref() == Some(new_id.as_str());
        let state = g.state;
        g.members.insert(new_id.clone(), member);
        for (r, join) in fenced {
            let reply = if join {
                Reply::Join(JoinResponse::error(ErrorCode::FencedInstanceId, &old_id))
            } else {
                Reply::Sync(SyncResponse::error(ErrorCode::FencedInstanceId))
            };
            self.reply(r, reply);
        }
        let g = self.groups.get_mut(&req.group_id).expect("created by join");
        if state == GroupState::Stable && unchanged && !is_leader {
            // KIP-345: a restarted static follower rejoins without a rebalance; it gets the
            // current generation and its SyncGroup returns the assignment it had.
            let response = join_response(g, &new_id);
            self.reply(request, Reply::Join(response));
            return;
        }
        g.members.get_mut(&new_id).expect("inserted").awaiting_join = Some(request);
        if state == GroupState::PreparingRebalance {
            self.maybe_complete_join(now, &req.group_id);
        } else {
            self.prepare_rebalance(now, &req.group_id);
        }
    }

    fn add_member_and_rebalance(
        &mut self,
        now: Now,
        request: RequestId,
        req: JoinRequest,
        id: String,
    ) {
        let seq = self.next_join_seq;
        self.next_join_seq += 1;
        let g = self.groups.get_mut(&req.group_id).expect("created by join");
        if g.members.is_empty() {
            g.protocol_type = Some(req.protocol_type.clone());
        }
        if let Some(instance) = &req.instance_id {
            g.statics.insert(instance.clone(), id.clone());
        }
        let mut member = Member {
            id: id.clone(),
            instance_id: req.instance_id.clone(),
            client_id: String::new(),
            client_host: String::new(),
            session_timeout_ms: 0,
            rebalance_timeout_ms: 0,
            protocols: Vec::new(),
            assignment: Vec::new(),
            awaiting_join: Some(request),
            awaiting_sync: None,
            last_heartbeat_ms: now.mono_ms(),
            joined_seq: seq,
        };
        update_member(&mut member, &req);
        g.members.insert(id, member);
        if let Some(start) = g.initial_window_start_ms {
            // KIP-134: each member joining in a new group's first rebalance extends the wait,
            // up to the rebalance timeout.
            g.rebalance_deadline_ms = now
                .mono_ms()
                .saturating_add(self.config.initial_rebalance_delay_ms)
                .min(start.saturating_add(g.max_rebalance_timeout_ms()));
        }
        if g.state == GroupState::PreparingRebalance {
            self.maybe_complete_join(now, &req.group_id);
        } else {
            self.prepare_rebalance(now, &req.group_id);
        }
    }

    /// Starts a rebalance: every member must rejoin within the rebalance timeout.
    fn prepare_rebalance(&mut self, now: Now, group_id: &str) {
        let g = self.groups.get_mut(group_id).expect("known group");
        let mut failed_syncs = Vec::new();
        if g.state == GroupState::CompletingRebalance {
            for m in g.members.values_mut() {
                failed_syncs.extend(m.awaiting_sync.take());
            }
            g.sync_write = None;
        }
        let was_empty = g.state == GroupState::Empty;
        g.state = GroupState::PreparingRebalance;
        g.state_since_ms = now.wall_ms;
        let timeout = g.max_rebalance_timeout_ms();
        if was_empty && self.config.initial_rebalance_delay_ms > 0 {
            g.initial_window_start_ms = Some(now.mono_ms());
            g.rebalance_deadline_ms = now
                .mono_ms()
                .saturating_add(self.config.initial_rebalance_delay_ms.min(timeout));
        } else {
            g.initial_window_start_ms = None;
            g.rebalance_deadline_ms = now.mono_ms().saturating_add(timeout);
        }
        for r in failed_syncs {
            self.reply(
                r,
                Reply::Sync(SyncResponse::error(ErrorCode::RebalanceInProgress)),
            );
        }
        self.maybe_complete_join(now, group_id);
    }

    fn maybe_complete_join(&mut self, now: Now, group_id: &str) {
        let Some(g) = self.groups.get(group_id) else {
            return;
        };
        if g.state != GroupState::PreparingRebalance || g.initial_window_start_ms.is_some() {
            return;
        }
        if g.pending.is_empty() && g.members.values().all(|m| m.awaiting_join.is_some()) {
            self.complete_join(now, group_id);
        }
    }

    /// Ends PreparingRebalance: members that did not rejoin are dropped, and either the group
    /// is empty now or a new generation starts with the chosen protocol and a leader.
    fn complete_join(&mut self, now: Now, group_id: &str) {
        let g = self.groups.get_mut(group_id).expect("known group");
        let gone: Vec<String> = g
            .members
            .values()
            .filter(|m| m.awaiting_join.is_none())
            .map(|m| m.id.clone())
            .collect();
        for id in gone {
            remove_member(g, &id);
        }
        g.initial_window_start_ms = None;
        g.sync_write = None;
        g.generation += 1;
        g.state_since_ms = now.wall_ms;
        if g.members.is_empty() {
            g.state = GroupState::Empty;
            g.protocol = None;
            g.leader = None;
            let value = g.to_value(now, None);
            self.append(
                vec![OffsetsRecord::Group {
                    group: group_id.to_string(),
                    value: Some(value),
                }],
                WriteEffect::Background,
            );
            return;
        }
        g.protocol = g.select_protocol();
        debug_assert!(g.protocol.is_some(), "joins keep a common protocol");
        if !g.leader.as_ref().is_some_and(|l| g.members.contains_key(l)) {
            g.leader = g
                .members
                .values()
                .min_by_key(|m| m.joined_seq)
                .map(|m| m.id.clone());
        }
        g.state = GroupState::CompletingRebalance;
        let mut replies = Vec::new();
        let ids: Vec<String> = g.members.keys().cloned().collect();
        for id in ids {
            let response = join_response(g, &id);
            let m = g.members.get_mut(&id).expect("member");
            m.last_heartbeat_ms = now.mono_ms();
            m.assignment.clear();
            if let Some(r) = m.awaiting_join.take() {
                replies.push((r, response));
            }
        }
        for (r, response) in replies {
            self.reply(r, Reply::Join(response));
        }
    }

    // ---------------------------------------------------------------------------------------
    // SyncGroup, Heartbeat, LeaveGroup

    pub fn sync(&mut self, now: Now, request: RequestId, req: SyncRequest) {
        let Some(g) = self.groups.get_mut(&req.group_id) else {
            self.reply(
                request,
                Reply::Sync(SyncResponse::error(ErrorCode::UnknownMemberId)),
            );
            return;
        };
        let checked = check_member(g, &req.member_id, req.instance_id.as_deref()).and_then(|()| {
            if req.generation != g.generation {
                Err(ErrorCode::IllegalGeneration)
            } else if req
                .protocol_type
                .as_ref()
                .is_some_and(|t| Some(t) != g.protocol_type.as_ref())
                || req
                    .protocol_name
                    .as_ref()
                    .is_some_and(|p| Some(p) != g.protocol.as_ref())
            {
                Err(ErrorCode::InconsistentGroupProtocol)
            } else {
                Ok(())
            }
        });
        if let Err(code) = checked {
            self.reply(request, Reply::Sync(SyncResponse::error(code)));
            return;
        }
        let member = g.members.get_mut(&req.member_id).expect("checked");
        member.last_heartbeat_ms = now.mono_ms();
        match g.state {
            GroupState::Empty => unreachable!("an Empty group has no members"),
            GroupState::PreparingRebalance => {
                self.reply(
                    request,
                    Reply::Sync(SyncResponse::error(ErrorCode::RebalanceInProgress)),
                );
            }
            GroupState::Stable => {
                let response = SyncResponse {
                    error: ErrorCode::None,
                    protocol_type: g.protocol_type.clone(),
                    protocol_name: g.protocol.clone(),
                    assignment: member.assignment.clone(),
                };
                self.reply(request, Reply::Sync(response));
            }
            GroupState::CompletingRebalance => {
                let previous = member.awaiting_sync.replace(request);
                let is_leader = g.leader.as_deref() == Some(req.member_id.as_str());
                if let Some(old) = previous {
                    self.reply(
                        old,
                        Reply::Sync(SyncResponse::error(ErrorCode::RebalanceInProgress)),
                    );
                }
                let g = self.groups.get_mut(&req.group_id).expect("known group");
                if !is_leader || g.sync_write.is_some() {
                    return;
                }
                let mut assignments = BTreeMap::new();
                for (id, assignment) in req.assignments {
                    if g.members.contains_key(&id)
                        && assignment.len() <= GROUP_MEMBER_BLOB_BYTES_MAX
                    {
                        assignments.insert(id, assignment);
                    }
                }
                let value = g.to_value(now, Some(&assignments));
                let generation = g.generation;
                let write = self.append(
                    vec![OffsetsRecord::Group {
                        group: req.group_id.clone(),
                        value: Some(value),
                    }],
                    WriteEffect::Sync {
                        group: req.group_id.clone(),
                        generation,
                        assignments,
                    },
                );
                self.groups
                    .get_mut(&req.group_id)
                    .expect("known group")
                    .sync_write = Some(write);
            }
        }
    }

    /// Heartbeat: keeps the member's session; REBALANCE_IN_PROGRESS tells it to rejoin.
    pub fn heartbeat(
        &mut self,
        now: Now,
        group_id: &str,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
    ) -> ErrorCode {
        let Some(g) = self.groups.get_mut(group_id) else {
            return ErrorCode::UnknownMemberId;
        };
        if let Err(code) = check_member(g, member_id, instance_id) {
            return code;
        }
        if generation != g.generation {
            return ErrorCode::IllegalGeneration;
        }
        g.members
            .get_mut(member_id)
            .expect("checked")
            .last_heartbeat_ms = now.mono_ms();
        match g.state {
            GroupState::PreparingRebalance => ErrorCode::RebalanceInProgress,
            _ => ErrorCode::None,
        }
    }

    /// LeaveGroup of `(member id, instance id)` pairs (v3+ may name a static member by instance
    /// id alone). Returns the group-level error and one per member.
    pub fn leave(
        &mut self,
        now: Now,
        group_id: &str,
        members: &[(String, Option<String>)],
    ) -> (ErrorCode, Vec<ErrorCode>) {
        let Some(g) = self.groups.get_mut(group_id) else {
            return (
                ErrorCode::UnknownMemberId,
                vec![ErrorCode::UnknownMemberId; members.len()],
            );
        };
        let mut results = Vec::with_capacity(members.len());
        let mut removed = Vec::new();
        for (member_id, instance_id) in members {
            let target = match instance_id {
                Some(instance) => match g.statics.get(instance) {
                    None => Err(ErrorCode::UnknownMemberId),
                    Some(id) if !member_id.is_empty() && id != member_id => {
                        Err(ErrorCode::FencedInstanceId)
                    }
                    Some(id) => Ok(id.clone()),
                },
                None if g.pending.remove(member_id).is_some() => {
                    results.push(ErrorCode::None);
                    continue;
                }
                None if g.members.contains_key(member_id) => Ok(member_id.clone()),
                None => Err(ErrorCode::UnknownMemberId),
            };
            match target {
                Ok(id) => {
                    removed.extend(remove_member(g, &id));
                    results.push(ErrorCode::None);
                }
                Err(code) => results.push(code),
            }
        }
        let changed = results.contains(&ErrorCode::None);
        for (r, join) in removed {
            self.reply_member_gone(r, join);
        }
        if changed {
            self.after_members_removed(now, group_id);
        }
        (ErrorCode::None, results)
    }

    fn reply_member_gone(&mut self, request: RequestId, join: bool) {
        let reply = if join {
            Reply::Join(JoinResponse::error(ErrorCode::UnknownMemberId, ""))
        } else {
            Reply::Sync(SyncResponse::error(ErrorCode::UnknownMemberId))
        };
        self.reply(request, reply);
    }

    fn after_members_removed(&mut self, now: Now, group_id: &str) {
        let Some(g) = self.groups.get(group_id) else {
            return;
        };
        match g.state {
            GroupState::Empty => {}
            // The last member left: the group is empty now, whoever still holds a member id
            // from MEMBER_ID_REQUIRED (its rejoin starts a rebalance of an Empty group).
            _ if g.members.is_empty() => self.complete_join(now, group_id),
            GroupState::Stable | GroupState::CompletingRebalance => {
                self.prepare_rebalance(now, group_id)
            }
            GroupState::PreparingRebalance => self.maybe_complete_join(now, group_id),
        }
    }

    // ---------------------------------------------------------------------------------------
    // Offsets

    pub fn commit_offsets(&mut self, now: Now, request: RequestId, req: CommitRequest) {
        let refuse = |code: ErrorCode| {
            Reply::Commit(
                req.partitions
                    .iter()
                    .map(|p| (p.topic.clone(), p.partition, code))
                    .collect(),
            )
        };
        if req.group_id.is_empty() || req.group_id.len() > GROUP_STRING_BYTES_MAX {
            self.reply(request, refuse(ErrorCode::InvalidGroupId));
            return;
        }
        if self.writes.len() >= GROUP_REQUESTS_IN_FLIGHT_MAX
            || req.partitions.len() > OFFSET_COMMIT_PARTITIONS_MAX
        {
            let code = if req.partitions.len() > OFFSET_COMMIT_PARTITIONS_MAX {
                ErrorCode::InvalidCommitOffsetSize
            } else {
                ErrorCode::CoordinatorNotAvailable
            };
            self.reply(request, refuse(code));
            return;
        }
        let stale_accepted = self
            .config
            .planted
            .is(crate::planted::Bug::StaleGenerationCommit);
        let code = match self.groups.get_mut(&req.group_id) {
            None if req.generation < 0 => {
                self.groups.insert(req.group_id.clone(), Group::new(now));
                ErrorCode::None
            }
            None => ErrorCode::IllegalGeneration,
            Some(g) => match check_member(g, &req.member_id, req.instance_id.as_deref()) {
                _ if req.generation < 0 && g.state == GroupState::Empty => ErrorCode::None,
                // The planted bug `stale-generation-commit`: a zombie's commit, from an older
                // generation or a member the group dropped, is taken as if it were current.
                _ if stale_accepted && (0..g.generation).contains(&req.generation) => {
                    ErrorCode::None
                }
                Err(code) => code,
                Ok(()) if req.generation != g.generation => ErrorCode::IllegalGeneration,
                Ok(()) if g.state == GroupState::CompletingRebalance => {
                    ErrorCode::RebalanceInProgress
                }
                Ok(()) => {
                    g.members
                        .get_mut(&req.member_id)
                        .expect("checked")
                        .last_heartbeat_ms = now.mono_ms();
                    ErrorCode::None
                }
            },
        };
        if code != ErrorCode::None {
            self.reply(request, refuse(code));
            return;
        }
        let mut offsets = Vec::new();
        let mut results = Vec::with_capacity(req.partitions.len());
        let mut records = Vec::new();
        for p in req.partitions {
            let metadata = p.metadata.unwrap_or_default();
            if metadata.len() > OFFSET_METADATA_BYTES_MAX {
                results.push((p.topic, p.partition, ErrorCode::OffsetMetadataTooLarge));
                continue;
            }
            if p.topic.is_empty() || p.topic.len() > GROUP_STRING_BYTES_MAX {
                results.push((p.topic, p.partition, ErrorCode::UnknownTopicOrPartition));
                continue;
            }
            let value = OffsetValue {
                offset: p.offset,
                leader_epoch: p.leader_epoch,
                metadata,
                commit_timestamp_ms: now.wall_ms as i64,
            };
            records.push(OffsetsRecord::Offset {
                group: req.group_id.clone(),
                topic: p.topic.clone(),
                partition: p.partition,
                value: Some(value.clone()),
            });
            offsets.push((p.topic.clone(), p.partition, value));
            results.push((p.topic, p.partition, ErrorCode::None));
        }
        if records.is_empty() {
            self.reply(request, Reply::Commit(results));
            self.forget_if_unused(&req.group_id);
            return;
        }
        self.append(
            records,
            WriteEffect::Commit {
                group: req.group_id,
                request,
                offsets,
                results,
            },
        );
    }

    /// OffsetFetch: the committed offsets of `partitions` (every partition with one if `None`);
    /// a partition without one is answered with offset -1, as Kafka does.
    pub fn fetch_offsets(
        &self,
        group_id: &str,
        partitions: Option<&[(String, i32)]>,
    ) -> Vec<(String, i32, Option<OffsetValue>)> {
        let offsets = self.groups.get(group_id).map(|g| &g.offsets);
        match partitions {
            None => offsets
                .into_iter()
                .flatten()
                .map(|((t, p), v)| (t.clone(), *p, Some(v.clone())))
                .collect(),
            Some(wanted) => wanted
                .iter()
                .map(|(t, p)| {
                    let v = offsets.and_then(|o| o.get(&(t.clone(), *p))).cloned();
                    (t.clone(), *p, v)
                })
                .collect(),
        }
    }

    /// OffsetDelete: allowed for partitions of topics no member subscribes to.
    pub fn delete_offsets(
        &mut self,
        request: RequestId,
        group_id: &str,
        partitions: &[(String, i32)],
    ) {
        let Some(g) = self.groups.get(group_id) else {
            self.reply(
                request,
                Reply::DeleteOffsets(ErrorCode::GroupIdNotFound, Vec::new()),
            );
            return;
        };
        let subscribed = match g.state {
            GroupState::Empty => Some(BTreeSet::new()),
            _ => g.subscribed_topics(),
        };
        let Some(subscribed) = subscribed else {
            self.reply(
                request,
                Reply::DeleteOffsets(ErrorCode::NonEmptyGroup, Vec::new()),
            );
            return;
        };
        let mut results = Vec::with_capacity(partitions.len());
        let mut removed = Vec::new();
        let mut records = Vec::new();
        for (topic, partition) in partitions {
            if subscribed.contains(topic) {
                results.push((topic.clone(), *partition, ErrorCode::GroupSubscribedToTopic));
                continue;
            }
            results.push((topic.clone(), *partition, ErrorCode::None));
            if g.offsets.contains_key(&(topic.clone(), *partition)) {
                removed.push((topic.clone(), *partition));
                records.push(OffsetsRecord::Offset {
                    group: group_id.to_string(),
                    topic: topic.clone(),
                    partition: *partition,
                    value: None,
                });
            }
        }
        if records.is_empty() {
            self.reply(request, Reply::DeleteOffsets(ErrorCode::None, results));
            return;
        }
        self.append(
            records,
            WriteEffect::DeleteOffsets {
                group: group_id.to_string(),
                request,
                removed,
                results,
            },
        );
    }

    // ---------------------------------------------------------------------------------------
    // Admin: DescribeGroups, ListGroups, DeleteGroups

    pub fn describe(&self, group_id: &str) -> GroupDescription {
        let Some(g) = self.groups.get(group_id) else {
            return GroupDescription {
                state: "Dead",
                protocol_type: String::new(),
                protocol: String::new(),
                members: Vec::new(),
            };
        };
        let protocol = g.protocol.clone().unwrap_or_default();
        GroupDescription {
            state: g.state.name(),
            protocol_type: g.protocol_type.clone().unwrap_or_default(),
            protocol: if g.state == GroupState::Stable {
                protocol.clone()
            } else {
                String::new()
            },
            members: g
                .members
                .values()
                .map(|m| MemberDescription {
                    member_id: m.id.clone(),
                    instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    metadata: m.metadata_for(&protocol),
                    assignment: if g.state == GroupState::Stable {
                        m.assignment.clone()
                    } else {
                        Vec::new()
                    },
                })
                .collect(),
        }
    }

    /// Every group, or those in one of `states` (Kafka's names) if any are given.
    pub fn list(&self, states: &[String]) -> Vec<ListedGroup> {
        self.groups
            .iter()
            .filter(|(_, g)| states.is_empty() || states.iter().any(|s| s == g.state.name()))
            .map(|(id, g)| ListedGroup {
                group_id: id.clone(),
                protocol_type: g.protocol_type.clone().unwrap_or_default(),
                state: g.state.name(),
            })
            .collect()
    }

    /// DeleteGroups: only groups without members; their offsets and metadata are tombstoned.
    pub fn delete_groups(&mut self, request: RequestId, group_ids: &[String]) {
        let mut results = Vec::with_capacity(group_ids.len());
        let mut records = Vec::new();
        for id in group_ids {
            let code = match self.groups.get(id) {
                None => ErrorCode::GroupIdNotFound,
                Some(g) if g.state != GroupState::Empty || !g.pending.is_empty() => {
                    ErrorCode::NonEmptyGroup
                }
                Some(_) => {
                    let g = self.groups.remove(id).expect("present");
                    records.extend(tombstones(id, &g));
                    ErrorCode::None
                }
            };
            results.push((id.clone(), code));
        }
        if records.is_empty() {
            self.reply(request, Reply::DeleteGroups(results));
            return;
        }
        self.append(records, WriteEffect::DeleteGroups { request, results });
    }

    // ---------------------------------------------------------------------------------------
    // Time

    /// The earliest time [`GroupCoordinator::tick`] has something to do.
    pub fn next_deadline_ms(&self) -> u64 {
        let mut deadline = self.next_expiry_check_ms;
        for g in self.groups.values() {
            if g.state == GroupState::PreparingRebalance {
                deadline = deadline.min(g.rebalance_deadline_ms);
            }
            for m in g.members.values() {
                if let Some(d) = m.session_deadline_ms() {
                    deadline = deadline.min(d);
                }
            }
            for d in g.pending.values() {
                deadline = deadline.min(*d);
            }
        }
        deadline
    }

    /// Expires sessions, ends rebalances that ran out of time, and drops expired offsets.
    pub fn tick(&mut self, now: Now) {
        let ids: Vec<String> = self.groups.keys().cloned().collect();
        for id in &ids {
            let Some(g) = self.groups.get_mut(id) else {
                continue;
            };
            let expired: Vec<String> = g
                .members
                .values()
                .filter(|m| m.session_deadline_ms().is_some_and(|d| d <= now.mono_ms()))
                .map(|m| m.id.clone())
                .collect();
            let pending_before = g.pending.len();
            g.pending.retain(|_, d| *d > now.mono_ms());
            let mut changed = g.pending.len() != pending_before;
            let mut gone = Vec::new();
            for m in &expired {
                gone.extend(remove_member(g, m));
                changed = true;
            }
            for (r, join) in gone {
                self.reply_member_gone(r, join);
            }
            if changed {
                self.after_members_removed(now, id);
            }
            let Some(g) = self.groups.get_mut(id) else {
                continue;
            };
            if g.state == GroupState::PreparingRebalance && g.rebalance_deadline_ms <= now.mono_ms()
            {
                match g.initial_window_start_ms.take() {
                    Some(start) => {
                        // The new group's wait for more members is over; from here on it is an
                        // ordinary rebalance bounded by the rebalance timeout.
                        g.rebalance_deadline_ms =
                            start.saturating_add(g.max_rebalance_timeout_ms());
                        if g.rebalance_deadline_ms <= now.mono_ms() {
                            self.complete_join(now, id);
                        } else {
                            self.maybe_complete_join(now, id);
                        }
                    }
                    None => self.complete_join(now, id),
                }
            }
        }
        if now.mono_ms() >= self.next_expiry_check_ms {
            self.next_expiry_check_ms = now
                .mono_ms()
                .saturating_add(self.config.offsets_retention_check_interval_ms);
            self.expire_offsets(now);
        }
    }

    /// Offsets of a group without members expire `offsets_retention_ms` after the group
    /// emptied or after they were committed, whichever is later (KIP-211); a group left with
    /// neither members nor offsets is deleted.
    fn expire_offsets(&mut self, now: Now) {
        let retention = self.config.offsets_retention_ms;
        let mut records = Vec::new();
        let mut dead = Vec::new();
        for (id, g) in &mut self.groups {
            if g.state != GroupState::Empty || !g.pending.is_empty() {
                continue;
            }
            let since = g.state_since_ms;
            let expired: Vec<(String, i32)> = g
                .offsets
                .iter()
                .filter(|(_, v)| {
                    let base = since.max(u64::try_from(v.commit_timestamp_ms).unwrap_or(0));
                    base.saturating_add(retention) <= now.wall_ms
                })
                .map(|(k, _)| k.clone())
                .collect();
            for (topic, partition) in expired {
                g.offsets.remove(&(topic.clone(), partition));
                records.push(OffsetsRecord::Offset {
                    group: id.clone(),
                    topic,
                    partition,
                    value: None,
                });
            }
            if g.offsets.is_empty() {
                dead.push(id.clone());
            }
        }
        for id in dead {
            if self
                .writes
                .values()
                .any(|w| w.effect.group() == Some(id.as_str()))
            {
                continue; // A commit to it is in flight.
            }
            self.groups.remove(&id);
            records.push(OffsetsRecord::Group {
                group: id,
                value: None,
            });
        }
        if !records.is_empty() {
            self.append(records, WriteEffect::Background);
        }
    }

    // ---------------------------------------------------------------------------------------
    // Writes

    fn append(&mut self, records: Vec<OffsetsRecord>, effect: WriteEffect) -> WriteId {
        let write = self.next_write;
        self.next_write += 1;
        self.writes.insert(
            write,
            PendingWrite {
                last_offset: None,
                effect,
            },
        );
        self.out.push_back(Output::Append { write, records });
        write
    }

    /// The host appended `write` (its last record at `last_offset`), or could not (`Err`: the
    /// error its requests get, e.g. NOT_COORDINATOR when the partition has another leader).
    pub fn appended(&mut self, write: WriteId, result: Result<u64, ErrorCode>) {
        match result {
            Ok(last_offset) => {
                if let Some(w) = self.writes.get_mut(&write) {
                    w.last_offset = Some(last_offset);
                }
            }
            Err(code) => {
                if let Some(w) = self.writes.remove(&write) {
                    self.fail_write(w.effect, code);
                }
            }
        }
    }

    /// The partition's high watermark moved: writes below it are committed and their replies
    /// leave, in log order.
    pub fn on_high_watermark(&mut self, now: Now, high_watermark: u64) {
        let done: Vec<WriteId> = self
            .writes
            .iter()
            .filter(|(_, w)| w.last_offset.is_some_and(|o| o < high_watermark))
            .map(|(id, _)| *id)
            .collect();
        for id in done {
            let w = self.writes.remove(&id).expect("listed");
            self.complete_write(now, w.effect);
        }
    }

    /// Leadership of the partition is gone: every waiting request gets NOT_COORDINATOR (the
    /// client finds the new coordinator) and the coordinator is dropped by the host.
    pub fn shutdown(mut self) -> Vec<(RequestId, Reply)> {
        let mut replies = Vec::new();
        for (_, w) in std::mem::take(&mut self.writes) {
            self.fail_write(w.effect, ErrorCode::NotCoordinator);
        }
        let groups = std::mem::take(&mut self.groups);
        for g in groups.into_values() {
            for m in g.members.into_values() {
                if let Some(r) = m.awaiting_join {
                    self.out.push_back(Output::Reply {
                        request: r,
                        reply: Reply::Join(JoinResponse::error(ErrorCode::NotCoordinator, &m.id)),
                    });
                }
                if let Some(r) = m.awaiting_sync {
                    self.out.push_back(Output::Reply {
                        request: r,
                        reply: Reply::Sync(SyncResponse::error(ErrorCode::NotCoordinator)),
                    });
                }
            }
        }
        for o in self.out {
            if let Output::Reply { request, reply } = o {
                replies.push((request, reply));
            }
        }
        replies
    }

    fn complete_write(&mut self, now: Now, effect: WriteEffect) {
        match effect {
            WriteEffect::Sync {
                group,
                generation,
                mut assignments,
            } => {
                let Some(g) = self.groups.get_mut(&group) else {
                    return;
                };
                if g.generation != generation || g.state != GroupState::CompletingRebalance {
                    return; // A newer rebalance overtook this one.
                }
                if self
                    .config
                    .planted
                    .is(crate::planted::Bug::GroupDoubleAssign)
                {
                    let ids: Vec<String> = g.members.keys().cloned().collect();
                    plant_double_assign(&ids, &mut assignments);
                }
                g.sync_write = None;
                g.state = GroupState::Stable;
                g.state_since_ms = now.wall_ms;
                let mut replies = Vec::new();
                for m in g.members.values_mut() {
                    m.assignment = assignments.get(&m.id).cloned().unwrap_or_default();
                    if let Some(r) = m.awaiting_sync.take() {
                        replies.push((
                            r,
                            SyncResponse {
                                error: ErrorCode::None,
                                protocol_type: g.protocol_type.clone(),
                                protocol_name: g.protocol.clone(),
                                assignment: m.assignment.clone(),
                            },
                        ));
                    }
                }
                for (r, response) in replies {
                    self.reply(r, Reply::Sync(response));
                }
            }
            WriteEffect::Commit {
                group,
                request,
                offsets,
                results,
            } => {
                let g = self.groups.entry(group).or_insert_with(|| Group::new(now));
                for (topic, partition, value) in offsets {
                    g.offsets.insert((topic, partition), value);
                }
                self.reply(request, Reply::Commit(results));
            }
            WriteEffect::DeleteOffsets {
                group,
                request,
                removed,
                results,
            } => {
                if let Some(g) = self.groups.get_mut(&group) {
                    for key in removed {
                        g.offsets.remove(&key);
                    }
                }
                self.reply(request, Reply::DeleteOffsets(ErrorCode::None, results));
            }
            WriteEffect::DeleteGroups { request, results } => {
                self.reply(request, Reply::DeleteGroups(results));
            }
            WriteEffect::Background => {}
        }
    }

    fn fail_write(&mut self, effect: WriteEffect, code: ErrorCode) {
        match effect {
            WriteEffect::Sync {
                group, generation, ..
            } => {
                let Some(g) = self.groups.get_mut(&group) else {
                    return;
                };
                if g.generation != generation || g.state != GroupState::CompletingRebalance {
                    return;
                }
                g.sync_write = None;
                let mut replies = Vec::new();
                for m in g.members.values_mut() {
                    replies.extend(m.awaiting_sync.take());
                }
                for r in replies {
                    self.reply(r, Reply::Sync(SyncResponse::error(code)));
                }
            }
            WriteEffect::Commit {
                request, results, ..
            } => {
                let failed = results.into_iter().map(|(t, p, _)| (t, p, code)).collect();
                self.reply(request, Reply::Commit(failed));
            }
            WriteEffect::DeleteOffsets {
                request, results, ..
            } => {
                let failed = results.into_iter().map(|(t, p, _)| (t, p, code)).collect();
                self.reply(request, Reply::DeleteOffsets(ErrorCode::None, failed));
            }
            WriteEffect::DeleteGroups { request, results } => {
                let failed = results
                    .into_iter()
                    .map(|(g, c)| (g, if c == ErrorCode::None { code } else { c }))
                    .collect();
                self.reply(request, Reply::DeleteGroups(failed));
            }
            WriteEffect::Background => {}
        }
    }

    fn reply(&mut self, request: RequestId, reply: Reply) {
        self.out.push_back(Output::Reply { request, reply });
    }

    /// Drops a group a failed join or an empty commit created and nothing refers to.
    fn forget_if_unused(&mut self, group_id: &str) {
        let unused = self.groups.get(group_id).is_some_and(|g| {
            g.state == GroupState::Empty
                && g.generation == 0
                && g.members.is_empty()
                && g.pending.is_empty()
                && g.offsets.is_empty()
        }) && !self
            .writes
            .values()
            .any(|w| w.effect.group() == Some(group_id));
        if unused {
            self.groups.remove(group_id);
        }
    }

    // ---------------------------------------------------------------------------------------
    // Inspection

    pub fn group_state(&self, group_id: &str) -> Option<GroupState> {
        self.groups.get(group_id).map(|g| g.state)
    }

    pub fn generation(&self, group_id: &str) -> Option<i32> {
        self.groups.get(group_id).map(|g| g.generation)
    }

    /// Each member's assignment, for Stable groups (the simulator's ownership checker).
    pub fn assignments(&self, group_id: &str) -> Vec<(String, Vec<u8>)> {
        self.groups
            .get(group_id)
            .filter(|g| g.state == GroupState::Stable)
            .map(|g| {
                g.members
                    .values()
                    .map(|m| (m.id.clone(), m.assignment.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn check_invariants(&self) {
        for (id, g) in &self.groups {
            assert_eq!(
                g.members.is_empty(),
                g.state == GroupState::Empty,
                "{id}: a group is Empty exactly when it has no members ({:?})",
                g.state
            );
            if matches!(
                g.state,
                GroupState::CompletingRebalance | GroupState::Stable
            ) {
                let leader = g.leader.as_ref().expect("a generation has a leader");
                assert!(
                    g.members.contains_key(leader),
                    "{id}: the leader is a member"
                );
                assert!(g.protocol.is_some(), "{id}: a generation has a protocol");
                assert!(g.generation >= 1, "{id}: a generation was started");
            }
            for m in g.members.values() {
                assert!(
                    m.awaiting_join.is_none() || g.state == GroupState::PreparingRebalance,
                    "{id}: joins wait only while preparing a rebalance"
                );
                assert!(
                    m.awaiting_sync.is_none() || g.state == GroupState::CompletingRebalance,
                    "{id}: syncs wait only while completing a rebalance"
                );
                if let Some(instance) = &m.instance_id {
                    assert_eq!(g.statics.get(instance), Some(&m.id), "{id}: static map");
                }
            }
            assert_eq!(
                g.statics.len(),
                g.members
                    .values()
                    .filter(|m| m.instance_id.is_some())
                    .count(),
                "{id}: every static mapping names a member"
            );
            assert!(
                g.sync_write.is_none() || g.state == GroupState::CompletingRebalance,
                "{id}: an assignment is written only while completing a rebalance"
            );
            assert!(
                g.initial_window_start_ms.is_none() || g.state == GroupState::PreparingRebalance,
                "{id}: the initial wait belongs to a rebalance"
            );
        }
        let mut last = None;
        for w in self.writes.values() {
            if let Some(o) = w.last_offset {
                assert!(last.is_none_or(|l| l < o), "writes land in log order");
                last = Some(o);
            }
        }
    }
}

impl WriteEffect {
    fn group(&self) -> Option<&str> {
        match self {
            WriteEffect::Sync { group, .. }
            | WriteEffect::Commit { group, .. }
            | WriteEffect::DeleteOffsets { group, .. } => Some(group),
            WriteEffect::DeleteGroups { .. } | WriteEffect::Background => None,
        }
    }
}

/// UNKNOWN_MEMBER_ID or FENCED_INSTANCE_ID unless `member_id` is a member (and, for a static
/// member, still the one holding `instance_id`).
fn check_member(g: &Group, member_id: &str, instance_id: Option<&str>) -> Result<(), ErrorCode> {
    if let Some(instance) = instance_id {
        if let Some(holder) = g.statics.get(instance) {
            if holder != member_id {
                return Err(ErrorCode::FencedInstanceId);
            }
        }
    }
    if g.members.contains_key(member_id) {
        Ok(())
    } else {
        Err(ErrorCode::UnknownMemberId)
    }
}

fn update_member(m: &mut Member, req: &JoinRequest) {
    m.client_id = req.client_id.clone();
    m.client_host = req.client_host.clone();
    m.session_timeout_ms = req.session_timeout_ms.max(0) as u64;
    m.rebalance_timeout_ms = req.rebalance_timeout_ms.max(req.session_timeout_ms).max(0) as u64;
    m.protocols = req.protocols.clone();
}

/// Removes a member; returns its waiting requests (request, is a join).
fn remove_member(g: &mut Group, id: &str) -> Vec<(RequestId, bool)> {
    let Some(m) = g.members.remove(id) else {
        return Vec::new();
    };
    if let Some(instance) = &m.instance_id {
        g.statics.remove(instance);
    }
    if g.leader.as_deref() == Some(id) {
        g.leader = None;
    }
    let mut waiting = Vec::new();
    waiting.extend(m.awaiting_join.map(|r| (r, true)));
    waiting.extend(m.awaiting_sync.map(|r| (r, false)));
    waiting
}

fn join_response(g: &Group, member_id: &str) -> JoinResponse {
    let leader = g.leader.clone().unwrap_or_default();
    let protocol = g.protocol.clone().unwrap_or_default();
    let members = if leader == member_id {
        g.members
            .values()
            .map(|m| JoinedMember {
                member_id: m.id.clone(),
                instance_id: m.instance_id.clone(),
                metadata: m.metadata_for(&protocol),
            })
            .collect()
    } else {
        Vec::new()
    };
    JoinResponse {
        error: ErrorCode::None,
        generation: g.generation,
        protocol_type: g.protocol_type.clone(),
        protocol_name: g.protocol.clone(),
        leader,
        member_id: member_id.to_string(),
        members,
    }
}

/// The planted bug `group-double-assign`: the first partition of the first member (in id order)
/// that has one is also handed to the next member.
fn plant_double_assign(ids: &[String], assignments: &mut BTreeMap<String, Vec<u8>>) {
    use super::ConsumerAssignment;
    let decoded = |id: &String| {
        ConsumerAssignment::decode(assignments.get(id).map_or(&[][..], |a| a.as_slice()))
    };
    let Some((i, topic, partition)) = ids.iter().enumerate().find_map(|(i, id)| {
        let a = decoded(id)?;
        let (topic, partition) = a.first()?;
        Some((i, topic.to_string(), partition))
    }) else {
        return;
    };
    if ids.len() < 2 {
        return;
    }
    let other = &ids[(i + 1) % ids.len()];
    if let Some(mut a) = decoded(other) {
        a.add(&topic, partition);
        assignments.insert(other.clone(), a.encode());
    }
}

fn tombstones(id: &str, g: &Group) -> Vec<OffsetsRecord> {
    let mut records: Vec<OffsetsRecord> = g
        .offsets
        .keys()
        .map(|(topic, partition)| OffsetsRecord::Offset {
            group: id.to_string(),
            topic: topic.clone(),
            partition: *partition,
            value: None,
        })
        .collect();
    records.push(OffsetsRecord::Group {
        group: id.to_string(),
        value: None,
    });
    records
}
