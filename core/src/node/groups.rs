//! Consumer groups: FindCoordinator, the group APIs, and the coordinators this node runs.
//!
//! A group lives in one partition of `__consumer_offsets` ([`group::partition_for`]). This node
//! coordinates the groups of every such partition it leads: when it becomes leader it waits
//! until its high watermark covers the log it had then (entries of earlier terms commit with the
//! first of its own), replays the partition into a fresh [`GroupCoordinator`], and only then
//! answers (COORDINATOR_LOAD_IN_PROGRESS before). Losing leadership drops the coordinator and
//! answers its waiting requests NOT_COORDINATOR, so clients look for the new one.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;

use super::api::{
    BrokerAddress, FindCoordinatorRequest, HeartbeatRequest, LeaveRequest, OffsetDeleteRequest,
    OffsetFetchGroup, Reply, RequestId,
};
use super::disk::LogReader;
use super::{ClientInfo, ControllerRequest, Node, TopicPartition, View};
use crate::batch::{BatchBuilder, NewRecord, Records};
use crate::group::{
    self, CommitRequest, GroupCoordinator, GroupDescription, JoinRequest, ListedGroup,
    OffsetsRecord, Output as GroupOutput, Reply as GroupReply, SyncRequest, OFFSETS_TOPIC,
};
use crate::limits::GROUP_STRING_BYTES_MAX;
use crate::time::Instant;
use crate::ErrorCode;

/// The coordinator of one `__consumer_offsets` partition this node leads.
struct CoordinatorSlot {
    /// The term it leads in; another term means another coordinator.
    term: u64,
    /// While loading: the log end when leadership began, which the high watermark must reach.
    load_until: Option<u64>,
    coordinator: GroupCoordinator,
}

/// The node's coordinators and the group requests waiting on them.
#[derive(Default)]
pub(super) struct Groups {
    coordinators: BTreeMap<i32, CoordinatorSlot>,
    /// Coordinator request ids (this node's own numbering) to the client requests they answer.
    waiters: BTreeMap<group::RequestId, RequestId>,
    next: group::RequestId,
    /// DeleteGroups split over several coordinators: parent -> (answers so far, parts left);
    /// and each part's parent.
    gathers: BTreeMap<group::RequestId, (Vec<(String, ErrorCode)>, usize)>,
    parents: BTreeMap<group::RequestId, group::RequestId>,
    /// OffsetCommit partitions of topics this node does not know, answered
    /// UNKNOWN_TOPIC_OR_PARTITION together with the coordinator's answer for the others.
    commit_unknown: BTreeMap<group::RequestId, Vec<(String, i32, ErrorCode)>>,
}

impl Groups {
    /// The earliest coordinator timer.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.coordinators
            .values()
            .filter(|s| s.load_until.is_none())
            .map(|s| Instant::from_millis(s.coordinator.next_deadline_ms()))
            .min()
    }

    fn issue(&mut self) -> group::RequestId {
        self.next += 1;
        self.next
    }

    /// No DeleteGroups is being gathered (tests).
    #[cfg(test)]
    pub fn check_gathers_empty(&self) -> bool {
        self.gathers.is_empty() && self.parents.is_empty()
    }

    pub fn check_invariants(&self) {
        for slot in self.coordinators.values() {
            slot.coordinator.check_invariants();
        }
        for (sub, parent) in &self.parents {
            assert!(sub > parent, "a part is issued after its parent");
            assert!(self.gathers.contains_key(parent), "a part's parent gathers");
        }
        for (parent, (_, left)) in &self.gathers {
            assert!(*left > 0, "a finished gather is answered");
            assert!(
                self.waiters.contains_key(parent),
                "a gather answers a request"
            );
        }
        for (id, unknown) in &self.commit_unknown {
            assert!(
                !unknown.is_empty(),
                "only commits with unknown partitions are kept"
            );
            assert!(
                self.waiters.contains_key(id),
                "unknown partitions wait with their commit"
            );
        }
    }
}

/// Kafka's mapping of an append error of `__consumer_offsets` to what the group coordinator
/// answers (`GroupMetadataManager`): the client looks for the coordinator again, retries, or
/// gives up.
pub(super) fn coordinator_error(append: ErrorCode) -> ErrorCode {
    match append {
        // A storage failure reopens the partition: this node stops coordinating it for now.
        ErrorCode::NotLeaderOrFollower
        | ErrorCode::UnknownTopicOrPartition
        | ErrorCode::KafkaStorageError => ErrorCode::NotCoordinator,
        ErrorCode::MessageTooLarge | ErrorCode::RecordListTooLarge => {
            ErrorCode::InvalidCommitOffsetSize
        }
        ErrorCode::NotEnoughReplicas | ErrorCode::RequestTimedOut => {
            ErrorCode::CoordinatorNotAvailable
        }
        _ => ErrorCode::UnknownServerError,
    }
}

/// At most `max` bytes of `s`, cut at a character boundary (the coordinator refuses longer
/// member strings; a long client id should not keep a client out of its group).
fn truncated(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

impl Node {
    fn offsets_partitions(&self) -> Option<i32> {
        self.topics.get(OFFSETS_TOPIC).map(|t| t.partitions())
    }

    /// The partition of `group_id`, if this node coordinates it and has loaded it; else the
    /// error the client gets.
    fn coordinator_for(&self, group_id: &str) -> Result<i32, ErrorCode> {
        let Some(partitions) = self.offsets_partitions() else {
            return Err(ErrorCode::CoordinatorNotAvailable);
        };
        let partition = group::partition_for(group_id, partitions);
        match self.groups.coordinators.get(&partition) {
            None => Err(ErrorCode::NotCoordinator),
            Some(slot) if slot.load_until.is_some() => Err(ErrorCode::CoordinatorLoadInProgress),
            Some(_) => Ok(partition),
        }
    }

    fn coordinator_mut(&mut self, partition: i32) -> &mut GroupCoordinator {
        &mut self
            .groups
            .coordinators
            .get_mut(&partition)
            .expect("looked up")
            .coordinator
    }

    /// The coordinator partition of `group_id` with a coordinator request id that answers
    /// `request`; or, when this node is not that coordinator, `request` answered with
    /// `refuse(code)`.
    fn route_group(
        &mut self,
        group_id: &str,
        request: RequestId,
        refuse: impl FnOnce(ErrorCode) -> Reply,
    ) -> Option<(i32, group::RequestId)> {
        match self.coordinator_for(group_id) {
            Ok(partition) => {
                let id = self.groups.issue();
                self.groups.waiters.insert(id, request);
                Some((partition, id))
            }
            Err(code) => {
                self.reply(request, refuse(code));
                None
            }
        }
    }

    // ---- FindCoordinator -----------------------------------------------------------------

    pub(super) fn find_coordinator(
        &mut self,
        request: FindCoordinatorRequest,
    ) -> Vec<(String, Result<BrokerAddress, (ErrorCode, String)>)> {
        request
            .keys
            .into_iter()
            .map(|key| {
                let found = self.locate_coordinator(&key, request.key_type);
                (key, found)
            })
            .collect()
    }

    /// The node leading the group's `__consumer_offsets` partition. The topic is created on
    /// first use, as Kafka does; until it has a leader the answer is COORDINATOR_NOT_AVAILABLE,
    /// which clients retry.
    fn locate_coordinator(
        &mut self,
        key: &str,
        key_type: i8,
    ) -> Result<BrokerAddress, (ErrorCode, String)> {
        if key_type != 0 {
            return Err((
                ErrorCode::InvalidRequest,
                "only group coordinators exist (transactions are not supported yet)".into(),
            ));
        }
        if key.is_empty() {
            return Err((ErrorCode::InvalidGroupId, "the group id is empty".into()));
        }
        let Some(topic) = self.topics.get(OFFSETS_TOPIC) else {
            self.create_offsets_topic();
            return Err((
                ErrorCode::CoordinatorNotAvailable,
                "creating __consumer_offsets".into(),
            ));
        };
        let partition = group::partition_for(key, topic.partitions());
        let tp = TopicPartition::new(OFFSETS_TOPIC, partition);
        let leader = self.leader_of(&tp, topic.id);
        let image = self.meta.quorum().map(|q| q.image());
        let broker = leader.and_then(|(_, leader)| {
            image?
                .live_brokers()
                .find(|b| b.node_id == leader as i32)
                .map(|b| BrokerAddress {
                    node_id: b.node_id,
                    host: b.host.clone(),
                    port: i32::from(b.port),
                })
        });
        broker.ok_or_else(|| {
            (
                ErrorCode::CoordinatorNotAvailable,
                format!("{tp} has no leader yet"),
            )
        })
    }

    fn create_offsets_topic(&mut self) {
        let asked = self.controller_call_pending(
            |r| matches!(r, ControllerRequest::CreateTopic { name, .. } if name == OFFSETS_TOPIC),
        );
        if asked {
            return;
        }
        let live = self
            .meta
            .quorum()
            .map_or(1, |q| q.image().live_brokers().count().max(1));
        let replication_factor = self
            .config
            .offsets_topic_replication_factor
            .min(i16::try_from(live).unwrap_or(i16::MAX));
        tracing::info!(
            partitions = self.config.offsets_topic_partitions,
            replication_factor,
            "creating {OFFSETS_TOPIC}"
        );
        // Compacted, as in Kafka: the latest record per group and per committed partition
        // stays, and a deleted group's or expired offset's tombstone goes after
        // delete.retention.ms. `compression.type=producer`, as Kafka's offsets topic: the
        // coordinator's batches are stored as it writes them (uncompressed; it reads them back
        // without codecs), whatever the broker's default.
        self.pending_controller_calls
            .push(ControllerRequest::CreateTopic {
                name: OFFSETS_TOPIC.to_string(),
                num_partitions: self.config.offsets_topic_partitions,
                replication_factor,
                configs: vec![
                    ("cleanup.policy".to_string(), "compact".to_string()),
                    ("compression.type".to_string(), "producer".to_string()),
                    (
                        "segment.bytes".to_string(),
                        self.config.offsets_topic_segment_bytes.to_string(),
                    ),
                ],
            });
    }

    // ---- Membership ----------------------------------------------------------------------

    pub(super) fn join_group(
        &mut self,
        request: RequestId,
        mut join: JoinRequest,
        client: ClientInfo,
        disk: &impl LogReader,
    ) {
        let member_id = join.member_id.clone();
        let Some((partition, id)) = self.route_group(&join.group_id.clone(), request, |code| {
            Reply::JoinGroup(group::JoinResponse {
                error: code,
                generation: -1,
                protocol_type: None,
                protocol_name: None,
                leader: String::new(),
                member_id,
                members: Vec::new(),
            })
        }) else {
            return;
        };
        join.client_id = truncated(client.client_id, GROUP_STRING_BYTES_MAX);
        join.client_host = truncated(client.host, GROUP_STRING_BYTES_MAX);
        let now = self.now;
        self.coordinator_mut(partition).join(now, id, join);
        self.drain_coordinator(partition, disk);
    }

    pub(super) fn sync_group(
        &mut self,
        request: RequestId,
        sync: SyncRequest,
        disk: &impl LogReader,
    ) {
        let Some((partition, id)) = self.route_group(&sync.group_id.clone(), request, |code| {
            Reply::SyncGroup(group::SyncResponse {
                error: code,
                protocol_type: None,
                protocol_name: None,
                assignment: Vec::new(),
            })
        }) else {
            return;
        };
        let now = self.now;
        self.coordinator_mut(partition).sync(now, id, sync);
        self.drain_coordinator(partition, disk);
    }

    pub(super) fn heartbeat_group(
        &mut self,
        hb: HeartbeatRequest,
        disk: &impl LogReader,
    ) -> ErrorCode {
        match self.coordinator_for(&hb.group_id) {
            Err(code) => code,
            Ok(partition) => {
                let now = self.now;
                let code = self.coordinator_mut(partition).heartbeat(
                    now,
                    &hb.group_id,
                    &hb.member_id,
                    hb.instance_id.as_deref(),
                    hb.generation,
                );
                self.drain_coordinator(partition, disk);
                code
            }
        }
    }

    pub(super) fn leave_group(
        &mut self,
        leave: LeaveRequest,
        disk: &impl LogReader,
    ) -> (ErrorCode, Vec<(String, Option<String>, ErrorCode)>) {
        match self.coordinator_for(&leave.group_id) {
            Err(code) => (code, Vec::new()),
            Ok(partition) => {
                let now = self.now;
                let (code, results) =
                    self.coordinator_mut(partition)
                        .leave(now, &leave.group_id, &leave.members);
                self.drain_coordinator(partition, disk);
                let members = leave
                    .members
                    .into_iter()
                    .zip(results)
                    .map(|((member, instance), code)| (member, instance, code))
                    .collect();
                (code, members)
            }
        }
    }

    // ---- Offsets -------------------------------------------------------------------------

    /// As Kafka (`KafkaApis.handleOffsetCommitRequest`): partitions of topics missing from this
    /// node's metadata are answered UNKNOWN_TOPIC_OR_PARTITION and never reach the coordinator
    /// (committing offsets does not create topics); the others go to the group's coordinator.
    pub(super) fn offset_commit(
        &mut self,
        request: RequestId,
        mut commit: CommitRequest,
        disk: &impl LogReader,
    ) {
        let (known, unknown): (Vec<_>, Vec<_>) = std::mem::take(&mut commit.partitions)
            .into_iter()
            .partition(|p| {
                self.topics
                    .get(&p.topic)
                    .is_some_and(|t| (0..t.partitions()).contains(&p.partition))
            });
        let unknown: Vec<(String, i32, ErrorCode)> = unknown
            .into_iter()
            .map(|p| (p.topic, p.partition, ErrorCode::UnknownTopicOrPartition))
            .collect();
        commit.partitions = known;
        if commit.partitions.is_empty() && !unknown.is_empty() {
            self.reply(request, Reply::OffsetCommit(unknown));
            return;
        }
        let refused: Vec<(String, i32)> = commit
            .partitions
            .iter()
            .map(|p| (p.topic.clone(), p.partition))
            .collect();
        let unknown_refused = unknown.clone();
        let Some((partition, id)) = self.route_group(&commit.group_id.clone(), request, |code| {
            Reply::OffsetCommit(
                refused
                    .into_iter()
                    .map(|(t, p)| (t, p, code))
                    .chain(unknown_refused)
                    .collect(),
            )
        }) else {
            return;
        };
        if !unknown.is_empty() {
            self.groups.commit_unknown.insert(id, unknown);
        }
        let now = self.now;
        self.coordinator_mut(partition)
            .commit_offsets(now, id, commit);
        self.drain_coordinator(partition, disk);
    }

    pub(super) fn offset_fetch(
        &mut self,
        groups: Vec<(String, Option<Vec<(String, i32)>>)>,
    ) -> Vec<OffsetFetchGroup> {
        groups
            .into_iter()
            .map(|(group_id, wanted)| match self.coordinator_for(&group_id) {
                Err(error) => OffsetFetchGroup {
                    group_id,
                    error,
                    offsets: Vec::new(),
                },
                Ok(partition) => {
                    let offsets = self
                        .coordinator_mut(partition)
                        .fetch_offsets(&group_id, wanted.as_deref());
                    OffsetFetchGroup {
                        group_id,
                        error: ErrorCode::None,
                        offsets,
                    }
                }
            })
            .collect()
    }

    pub(super) fn offset_delete(
        &mut self,
        request: RequestId,
        delete: OffsetDeleteRequest,
        disk: &impl LogReader,
    ) {
        let Some((partition, id)) = self.route_group(&delete.group_id.clone(), request, |code| {
            Reply::OffsetDelete(code, Vec::new())
        }) else {
            return;
        };
        self.coordinator_mut(partition)
            .delete_offsets(id, &delete.group_id, &delete.partitions);
        self.drain_coordinator(partition, disk);
    }

    // ---- Admin ---------------------------------------------------------------------------

    pub(super) fn describe_groups(
        &mut self,
        group_ids: Vec<String>,
    ) -> Vec<(String, Result<GroupDescription, ErrorCode>)> {
        group_ids
            .into_iter()
            .map(|group_id| {
                let described = self
                    .coordinator_for(&group_id)
                    .map(|partition| self.coordinator_mut(partition).describe(&group_id));
                (group_id, described)
            })
            .collect()
    }

    /// The groups of every coordinator on this node (admin clients ask every broker).
    pub(super) fn list_groups(&self, states: &[String]) -> (ErrorCode, Vec<ListedGroup>) {
        let mut groups = Vec::new();
        for slot in self.groups.coordinators.values() {
            if slot.load_until.is_none() {
                groups.extend(slot.coordinator.list(states));
            }
        }
        let loading = self
            .groups
            .coordinators
            .values()
            .any(|s| s.load_until.is_some());
        let code = if loading {
            ErrorCode::CoordinatorLoadInProgress
        } else {
            ErrorCode::None
        };
        (code, groups)
    }

    pub(super) fn delete_groups(
        &mut self,
        request: RequestId,
        group_ids: Vec<String>,
        disk: &impl LogReader,
    ) {
        // One request per coordinator partition; the answers are gathered under `parent`.
        let mut refused = Vec::new();
        let mut by_partition: BTreeMap<i32, Vec<String>> = BTreeMap::new();
        for group_id in group_ids {
            match self.coordinator_for(&group_id) {
                Err(code) => refused.push((group_id, code)),
                Ok(p) => by_partition.entry(p).or_default().push(group_id),
            }
        }
        if by_partition.is_empty() {
            return self.reply(request, Reply::DeleteGroups(refused));
        }
        let parent = self.groups.issue();
        self.groups.waiters.insert(parent, request);
        self.groups
            .gathers
            .insert(parent, (refused, by_partition.len()));
        for (partition, ids) in by_partition {
            let sub = self.groups.issue();
            self.groups.parents.insert(sub, parent);
            self.coordinator_mut(partition).delete_groups(sub, &ids);
            self.drain_coordinator(partition, disk);
        }
    }

    // ---- Driving the coordinators --------------------------------------------------------

    /// Starts, loads, advances or drops the coordinator of every `__consumer_offsets`
    /// partition hosted here, and runs their timers.
    pub(super) fn drive_coordinators(&mut self, disk: &impl LogReader) {
        // Runs after every input: a range of the ordered map, not a scan of every partition.
        let first = TopicPartition::new(OFFSETS_TOPIC, 0);
        let hosted: BTreeSet<i32> = self
            .partitions
            .range(first..)
            .take_while(|(tp, _)| tp.topic == OFFSETS_TOPIC)
            .map(|(tp, _)| tp.partition)
            .chain(self.groups.coordinators.keys().copied())
            .collect();
        let now = self.now;
        for partition in hosted {
            let tp = TopicPartition::new(OFFSETS_TOPIC, partition);
            let leading = self
                .partitions
                .get(&tp)
                .and_then(|slot| slot.replica())
                .and_then(|r| {
                    (r.is_leader() && !r.storage_failed())
                        .then(|| (r.term(), r.high_watermark(), r.log().log_end_offset()))
                });
            let stale = match (self.groups.coordinators.get(&partition), leading) {
                (Some(slot), Some((term, _, _))) => slot.term != term,
                (Some(_), None) => true,
                (None, _) => false,
            };
            if stale {
                let slot = self
                    .groups
                    .coordinators
                    .remove(&partition)
                    .expect("present");
                tracing::info!(%tp, "no longer the group coordinator of this partition");
                for (id, reply) in slot.coordinator.shutdown() {
                    self.answer_group(id, reply);
                }
            }
            let Some((term, high_watermark, log_end)) = leading else {
                continue;
            };
            if !self.groups.coordinators.contains_key(&partition) {
                let coordinator =
                    GroupCoordinator::new(self.config.groups.clone(), self.rng.fork(), now);
                self.groups.coordinators.insert(
                    partition,
                    CoordinatorSlot {
                        term,
                        load_until: Some(log_end),
                        coordinator,
                    },
                );
            }
            let slot = self.groups.coordinators.get(&partition).expect("inserted");
            if let Some(until) = slot.load_until {
                if high_watermark < until {
                    continue;
                }
                match self.load_coordinator(&tp, disk) {
                    Ok(records) => {
                        let slot = self
                            .groups
                            .coordinators
                            .get_mut(&partition)
                            .expect("inserted");
                        slot.load_until = None;
                        tracing::info!(%tp, term, records, "group coordinator loaded");
                    }
                    Err(e) => {
                        tracing::error!(%tp, "loading the group coordinator failed: {e}");
                        continue;
                    }
                }
            }
            let slot = self
                .groups
                .coordinators
                .get_mut(&partition)
                .expect("inserted");
            slot.coordinator.on_high_watermark(now, high_watermark);
            if slot.coordinator.next_deadline_ms() <= now.mono_ms() {
                slot.coordinator.tick(now);
            }
            self.drain_coordinator(partition, disk);
        }
    }

    /// Replays the committed records of the partition into its fresh coordinator.
    fn load_coordinator(
        &mut self,
        tp: &TopicPartition,
        disk: &impl LogReader,
    ) -> Result<usize, String> {
        let slot = self.partitions.get(tp).ok_or("partition gone")?;
        let replica = slot.replica().ok_or("partition not open")?;
        let view = View {
            disk,
            log: slot.log(),
        };
        let log = replica.log();
        let mut offset = log.log_start_offset();
        let end = log.high_watermark();
        let mut decoded = Vec::new();
        while offset < end {
            let mut cursor = log.read(offset, 1 << 20).map_err(|e| format!("{e:?}"))?;
            cursor.run(&view).map_err(|e| format!("{e:?}"))?;
            let batches = cursor.into_batches();
            if batches.is_empty() {
                return Err(format!(
                    "no batch at {offset}, below the high watermark {end}"
                ));
            }
            for b in batches {
                assert!(b.last_offset >= offset, "reads move forward");
                offset = b.last_offset + 1;
                if b.control_type.is_some() {
                    continue;
                }
                let records = Records::new(&b.bytes)
                    .map_err(|e| format!("batch at {}: {e:?}", b.base_offset))?;
                for r in records {
                    let r = r.map_err(|e| format!("batch at {}: {e:?}", b.base_offset))?;
                    let Some(key) = r.key else { continue };
                    match OffsetsRecord::decode(key, r.value) {
                        Ok(record) => decoded.push(record),
                        // Kafka skips what it cannot read too; a damaged record is reported.
                        Err(e) => {
                            tracing::warn!(%tp, "skipping a record at batch {}: {e}", b.base_offset)
                        }
                    }
                }
            }
        }
        let count = decoded.len();
        let now = self.now;
        let slot = self
            .groups
            .coordinators
            .get_mut(&tp.partition)
            .ok_or("coordinator gone")?;
        for record in decoded {
            slot.coordinator.replay(record, now);
        }
        slot.coordinator.check_invariants();
        Ok(count)
    }

    /// Executes a coordinator's outputs: appends its records, sends its replies.
    fn drain_coordinator(&mut self, partition: i32, disk: &impl LogReader) {
        loop {
            let Some(slot) = self.groups.coordinators.get_mut(&partition) else {
                return;
            };
            let Some(output) = slot.coordinator.poll_output() else {
                if cfg!(any(debug_assertions, madsim)) {
                    slot.coordinator.check_invariants();
                }
                return;
            };
            match output {
                GroupOutput::Reply { request, reply } => self.answer_group(request, reply),
                GroupOutput::Append { write, records } => {
                    let result = self.append_group_records(partition, &records, disk);
                    if let Some(slot) = self.groups.coordinators.get_mut(&partition) {
                        slot.coordinator.appended(write, result);
                    }
                }
            }
        }
    }

    fn append_group_records(
        &mut self,
        partition: i32,
        records: &[OffsetsRecord],
        disk: &impl LogReader,
    ) -> Result<u64, ErrorCode> {
        let wall_ms = self.now.wall_ms as i64;
        let mut builder = BatchBuilder::new(wall_ms);
        for r in records {
            let (key, value) = r.encode();
            builder.push(&NewRecord {
                timestamp: wall_ms,
                key: Some(key),
                value,
                headers: Vec::new(),
            });
        }
        let count = builder.len() as u64;
        assert!(count > 0, "a coordinator appends records");
        let batch = Bytes::from(builder.build());
        let tp = TopicPartition::new(OFFSETS_TOPIC, partition);
        match self.append(&tp, Some(batch), disk) {
            Ok(appended) => Ok(appended.proposed.base_offset + count - 1),
            Err((code, _)) => Err(coordinator_error(code)),
        }
    }

    fn answer_group(&mut self, id: group::RequestId, reply: GroupReply) {
        if let Some(parent) = self.groups.parents.remove(&id) {
            // One coordinator's part of a DeleteGroups.
            let GroupReply::DeleteGroups(results) = reply else {
                unreachable!("only DeleteGroups is split");
            };
            let Some((gathered, outstanding)) = self.groups.gathers.get_mut(&parent) else {
                return;
            };
            gathered.extend(results);
            *outstanding -= 1;
            if *outstanding == 0 {
                let (all, _) = self.groups.gathers.remove(&parent).expect("present");
                if let Some(request) = self.groups.waiters.remove(&parent) {
                    self.reply(request, Reply::DeleteGroups(all));
                }
            }
            return;
        }
        let unknown = self.groups.commit_unknown.remove(&id);
        let Some(request) = self.groups.waiters.remove(&id) else {
            return;
        };
        let reply = match reply {
            GroupReply::Join(j) => Reply::JoinGroup(j),
            GroupReply::Sync(s) => Reply::SyncGroup(s),
            GroupReply::Commit(mut results) => {
                results.extend(unknown.into_iter().flatten());
                Reply::OffsetCommit(results)
            }
            GroupReply::DeleteOffsets(code, results) => Reply::OffsetDelete(code, results),
            GroupReply::DeleteGroups(results) => Reply::DeleteGroups(results),
        };
        self.reply(request, reply);
    }
}
