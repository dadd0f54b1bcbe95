//! The node's part in the cluster: its member of the metadata quorum, the hosted partitions kept
//! in step with the metadata image, the peer protocol (Raft messages of every group, controller
//! requests and their answers, leadership announcements), heartbeats to the controller, and the
//! Raft clock of every group.
//!
//! One node without peers is a cluster of one: the same code runs with a single-voter quorum.

use std::collections::BTreeMap;

use super::disk::{LogId, LogReader, StorageDone, StorageOp};
use super::partitions::{self, drain, fail_slot, take_reopen, LogSlot, Owner};
use super::{
    ControllerReply, ControllerRequest, GroupId, Leadership, Node, Output, PeerMessage,
    TopicPartition, TopicState, View,
};
use crate::checker::replicas::Observation;
use crate::log::LogConfig;
use crate::metadata::{
    controller, topic_config::topic_log_config, CreateTopicRequest, MetadataQuorum, Outcome,
    QuorumConfig, Ticket, TopicId, METADATA_TOPIC,
};
use crate::raft::{Membership, NodeId};
use crate::time::Instant;
use crate::ErrorCode;

/// How often a node heartbeats to the controller and announces the partitions it leads, in
/// Raft ticks.
pub(super) const HEARTBEAT_TICKS: u64 = 10;
/// A forwarded controller request not answered by then is given up (the caller retries).
const CONTROLLER_CALL_TIMEOUT_MS: u64 = 10_000;
/// Controller calls a node keeps waiting at most (heartbeat, topic creations, id blocks).
const CONTROLLER_CALLS_MAX: usize = 1024;
/// Of those, at most this many forwarded for clients (AlterConfigs resources): one request with
/// thousands of resources must not fill the table, where heartbeats, auto-creation and
/// producer-id calls wait too. A forward past it is answered REQUEST_TIMED_OUT (retriable).
const FORWARDED_CALLS_MAX: usize = 256;

/// The metadata log's slot.
pub(super) type MetaSlot = LogSlot<MetadataQuorum>;

impl MetaSlot {
    /// The slot before the metadata log is first opened.
    pub(super) fn placeholder() -> MetaSlot {
        let mut slot =
            MetaSlot::metadata(LogId(0), metadata_dir(), LogConfig::default(), Vec::new());
        slot.set_offline();
        slot
    }

    pub(super) fn quorum(&self) -> Option<&MetadataQuorum> {
        self.machine()
    }

    pub(super) fn log_id(&self) -> LogId {
        self.log()
    }
}

/// Who waits for a quorum ticket on this node (the active controller).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum TicketOwner {
    /// A peer's forwarded request.
    Remote { from: NodeId, id: u64 },
    /// One topic of a local CreateTopics, DeleteTopics, CreatePartitions or
    /// IncrementalAlterConfigs request.
    Admin { waiter: u64, index: usize },
    /// A local call (heartbeat, auto-creation, producer ids) made as if forwarded.
    Local { call: u64 },
}

/// A controller request this node made (forwarded, or to its own quorum), waiting for an answer.
#[derive(Clone, Debug)]
pub(super) struct ControllerCall {
    pub request: ControllerRequest,
    pub deadline: Instant,
    /// The entry (admin waiter, index) of a client's request that this call answers.
    pub admin: Option<(u64, usize)>,
}

/// Cluster bookkeeping outside the Raft groups.
pub(super) struct ClusterState {
    /// Partition leaders announced by peers: (topic id, partition) -> (term, leader).
    pub leaders: BTreeMap<(TopicId, i32), (u64, u64)>,
    /// Quorum requests this node (as controller) waits on, and who asked.
    pub tickets: BTreeMap<Ticket, TicketOwner>,
    /// Controller requests this node made, by call id.
    pub calls: BTreeMap<u64, ControllerCall>,
    next_call_id: u64,
    pub ticks: u64,
    pub next_tick: Instant,
}

impl ClusterState {
    pub fn new(now: Instant) -> ClusterState {
        ClusterState {
            leaders: BTreeMap::new(),
            tickets: BTreeMap::new(),
            calls: BTreeMap::new(),
            next_call_id: 0,
            ticks: 0,
            next_tick: now,
        }
    }

    pub fn deadlines(&self) -> impl Iterator<Item = Instant> + '_ {
        self.calls.values().map(|c| c.deadline)
    }

    /// Whether a controller request matching `which` is already waiting for its answer.
    pub fn calling(&self, which: impl Fn(&ControllerRequest) -> bool) -> bool {
        self.calls.values().any(|c| which(&c.request))
    }

    pub fn check_invariants(&self) {
        assert!(
            self.calls.len() <= CONTROLLER_CALLS_MAX + 1,
            "controller calls are bounded"
        );
        assert!(
            self.calls.keys().all(|id| *id < self.next_call_id),
            "call ids are issued in order"
        );
    }
}

/// The metadata log keeps everything: the image is rebuilt from it at start.
fn metadata_log_config(base: &LogConfig) -> LogConfig {
    LogConfig {
        retention_ms: -1,
        retention_bytes: -1,
        ..base.clone()
    }
}

/// The metadata log's directory.
fn metadata_dir() -> std::path::PathBuf {
    TopicPartition::new(METADATA_TOPIC, 0).dir()
}

impl Node {
    /// Starts opening the metadata log (after carrying out `cut`, a failed predecessor's).
    pub(super) fn open_metadata(&mut self, cut: Vec<crate::log::LogOp>) {
        let log = self.next_log_id();
        let config = metadata_log_config(&self.config.topic_defaults.log);
        let old = self.meta.log_id();
        self.meta = MetaSlot::metadata(
            log,
            metadata_dir(),
            config.clone(),
            self.config.controllers.clone(),
        );
        if self.log_owners.remove(&old).is_some() {
            self.outputs.push_back(Output::Storage(StorageOp::Close {
                log: old,
                delete: false,
            }));
        }
        self.log_owners.insert(log, Owner::Metadata);
        self.outputs.push_back(Output::Storage(StorageOp::Open {
            log,
            dir: metadata_dir(),
            config,
            cut,
            topic_id: None,
            rescan: false,
        }));
    }

    pub(super) fn on_metadata_storage(&mut self, done: StorageDone, disk: &impl LogReader) {
        let log = self.meta.log_id();
        if self.meta.settle_owed(&done) {
            self.maybe_reopen_metadata();
            return;
        }
        match done {
            StorageDone::Opened { result, .. } => {
                let opened = match result {
                    Ok(opened) => opened,
                    Err(e) if e.retryable => {
                        // A failed fsync at start (or at a reopen) may pass: try again.
                        let ticks = super::partitions::OPEN_RETRY_TICKS;
                        tracing::error!(
                            "opening the metadata log failed: {e}; trying again in {ticks} ticks"
                        );
                        self.meta.retry_open_later();
                        return;
                    }
                    Err(e) => return self.stop(format!("the metadata log cannot be opened: {e}")),
                };
                for repair in &opened.repairs {
                    tracing::warn!(log = METADATA_TOPIC, "recovery: {repair}");
                }
                // What was applied before a reopen is committed and was durable, so the
                // failure cut left it; only a disk that lost synced data makes it shorter.
                let recovered_end = opened.log.log_end_offset();
                self.metadata_replay_floor = self.metadata_replay_floor.min(recovered_end);
                let me = self.config.node_id as u64;
                let cluster_id = {
                    let a = self.rng.next_u64().to_be_bytes();
                    let b = self.rng.next_u64().to_be_bytes();
                    let mut id = [0u8; 16];
                    id[..8].copy_from_slice(&a);
                    id[8..].copy_from_slice(&b);
                    id
                };
                let mut quorum_config =
                    QuorumConfig::new(me, cluster_id, self.config.topic_defaults.clone());
                quorum_config.raft.election_ticks = self.config.election_ticks();
                quorum_config.raft.append_bytes_max = self.config.replica_fetch_max_bytes;
                quorum_config.raft.planted = self.config.planted;
                let voters = Membership::new(self.meta.voters().iter().copied());
                let view = View { disk, log };
                match MetadataQuorum::open(
                    quorum_config,
                    self.rng.fork(),
                    opened.hard_state,
                    opened.log,
                    voters,
                    self.now,
                    &view,
                ) {
                    Ok(mut quorum) => {
                        if self.config.controllers == [me] {
                            // A quorum of one needs no election timeout.
                            quorum.campaign(true, &view);
                        }
                        tracing::info!(
                            metadata_end = quorum.replica().log().log_end_offset(),
                            "metadata log open"
                        );
                        self.meta.set_open(quorum);
                        self.applied_metadata_end = 0;
                        self.after_metadata_input(disk);
                    }
                    Err(e) => self.stop(format!("the metadata log is unusable: {e}")),
                }
            }
            StorageDone::Written { seq, .. } => {
                if let Some(h) = self.meta.hosted_mut() {
                    h.written = h.written.max(seq);
                }
            }
            StorageDone::WriteFailed { error, .. } => {
                tracing::error!("metadata log write failed: {error}; reopening it");
                self.fail_metadata();
            }
            StorageDone::Synced { result, .. } => {
                let Some(sync) = self.meta.take_sync() else {
                    return;
                };
                match result {
                    Ok(()) => {
                        if let Some(h) = self.meta.hosted_mut() {
                            h.machine.on_synced(sync, &View { disk, log });
                        }
                        self.after_metadata_input(disk);
                    }
                    Err(e) => {
                        tracing::error!("metadata log fsync failed: {e}; reopening it");
                        self.fail_metadata();
                    }
                }
            }
            StorageDone::HardStateStored { result, .. } => match result {
                Ok(()) => {
                    if let Some(h) = self.meta.hosted_mut() {
                        h.machine.hard_state_persisted(&View { disk, log });
                    }
                    self.after_metadata_input(disk);
                }
                Err(e) => {
                    tracing::error!("storing the metadata Raft state failed: {e}; reopening it");
                    fail_slot(&mut self.meta, false);
                    // This was the store the failed slot would wait for (simulator seed 305 of
                    // `--scenario cluster`: the metadata log stayed failed and the broker fenced).
                    self.meta.settle_hard_state();
                    self.maybe_reopen_metadata();
                }
            },
            StorageDone::Swapped { .. } => {}
        }
    }

    /// The metadata log's storage failed: it is reopened from disk (its image replayed again).
    fn fail_metadata(&mut self) {
        fail_slot(&mut self.meta, false);
        self.maybe_reopen_metadata();
    }

    fn maybe_reopen_metadata(&mut self) {
        let old = self.meta.log_id();
        let new = LogId(self.next_log_id + 1);
        let Some(open) = take_reopen(&mut self.meta, new) else {
            return;
        };
        self.next_log_id += 1;
        self.log_owners.remove(&old);
        self.log_owners.insert(new, Owner::Metadata);
        self.outputs.push_back(Output::Storage(StorageOp::Close {
            log: old,
            delete: false,
        }));
        self.outputs.push_back(Output::Storage(open));
        self.metadata_replay_floor = self.metadata_replay_floor.max(self.applied_metadata_end);
        self.applied_metadata_end = 0;
        tracing::warn!("reopening the metadata log from disk");
    }

    /// The node cannot go on.
    fn stop(&mut self, reason: String) {
        tracing::error!("{reason}; stopping");
        self.meta.set_offline();
        self.outputs.push_back(Output::Stop { reason });
    }

    /// After any input to the quorum: its outputs, the answers it decided, and the partitions
    /// that newly applied records add or remove.
    pub(super) fn after_metadata_input(&mut self, disk: &impl LogReader) {
        let log = self.meta.log_id();
        let Some(h) = self.meta.hosted_mut() else {
            return;
        };
        let drained = drain(h, log, GroupId::Metadata, &mut self.outputs);
        if self.config.observe {
            partitions::observe(
                &mut self.outputs,
                &mut self.observed,
                self.config.node_id as u64,
                TopicPartition::new(METADATA_TOPIC, 0).to_string(),
                h.machine.replica(),
            );
        }
        let applied_end = h.machine.applied_end();
        if let Some(e) = h.machine.apply_error() {
            tracing::error!("the metadata log cannot be applied: {e:?}");
        }
        // The image first, so an answer about a new topic finds its partitions opening here.
        // After a reopen, only once the replay is back where it was (see
        // `metadata_replay_floor`).
        if applied_end != self.applied_metadata_end && applied_end >= self.metadata_replay_floor {
            self.metadata_replay_floor = 0;
            self.applied_metadata_end = applied_end;
            if self.config.observe {
                let image = self.meta.quorum().expect("hosted above").image().clone();
                self.outputs
                    .push_back(Output::Observe(Observation::MetadataImage {
                        node: self.config.node_id as u64,
                        applied_end,
                        image: Box::new(image),
                    }));
            }
            self.reconcile(disk);
        }
        for (ticket, result) in drained.completions {
            self.on_ticket(ticket, result);
        }
    }

    /// Makes the hosted partitions match the image: opens new ones this node is a replica of
    /// (of new topics, and those CreatePartitions added to known ones), closes (and deletes)
    /// those of deleted topics, hands altered configs to open logs.
    fn reconcile(&mut self, _disk: &impl LogReader) {
        let Some(quorum) = self.meta.quorum() else {
            return;
        };
        let me = self.config.node_id;
        let wanted: BTreeMap<String, crate::metadata::Topic> = quorum
            .image()
            .topics()
            .map(|t| (t.name.clone(), t.clone()))
            .collect();
        // Deleted (or re-created under the same name with a new id): drop the old one first.
        let gone: Vec<String> = self
            .topics
            .iter()
            .filter(|(name, state)| wanted.get(*name).is_none_or(|t| t.topic_id != state.id))
            .map(|(name, _)| name.clone())
            .collect();
        for name in gone {
            self.delete_local_topic(&name);
        }
        for (name, topic) in wanted {
            let mut log_config =
                match topic_log_config(&self.config.topic_defaults.log, &topic.configs) {
                    Ok(c) => c,
                    Err((_, e)) => {
                        tracing::error!(topic = name, "the topic's configs are unusable here: {e}");
                        continue;
                    }
                };
            let defaults = &self.config.topic_defaults.log;
            // Planted: the partitions' logs keep the broker default instead of the topic's
            // override (DescribeConfigs, built from the image, still shows the override).
            if defaults
                .planted
                .is(crate::planted::Bug::SegmentBytesIgnored)
            {
                log_config.segment_bytes_max = defaults.segment_bytes_max;
            }
            if defaults
                .planted
                .is(crate::planted::Bug::RetentionOverrideIgnored)
            {
                log_config.retention_ms = defaults.retention_ms;
                log_config.retention_bytes = defaults.retention_bytes;
            }
            if name == crate::group::OFFSETS_TOPIC {
                // An offsets topic created before it carried `compression.type=producer` must
                // not take a compressing broker default: its coordinator reads its batches back
                // without codecs.
                log_config.compression_type = crate::batch::CompressionType::Producer;
            }
            let assignments: Vec<Vec<i32>> = topic
                .partitions
                .iter()
                .map(|a| a.replicas.clone())
                .collect();
            let known = self.topics.contains_key(&name);
            // CreatePartitions only appends: the partitions known here keep their replicas.
            let had = match self.topics.get(&name) {
                Some(t) if t.id == topic.topic_id => {
                    assert!(
                        assignments.starts_with(&t.assignments),
                        "{name}: a topic's partitions are only ever appended"
                    );
                    t.assignments.len()
                }
                _ => assignments.len(),
            };
            let altered = self
                .topics
                .get(&name)
                .is_some_and(|t| t.id == topic.topic_id && t.configs != topic.configs);
            self.topic_ids.insert(topic.topic_id, name.clone());
            self.topics.insert(
                name.clone(),
                TopicState {
                    id: topic.topic_id,
                    configs: topic.configs.clone(),
                    assignments: assignments.clone(),
                },
            );
            if !known {
                tracing::info!(
                    topic = name,
                    partitions = assignments.len(),
                    "topic created"
                );
            }
            if had < assignments.len() {
                tracing::info!(
                    topic = name,
                    from = had,
                    to = assignments.len(),
                    "partitions added"
                );
            }
            if altered {
                // IncrementalAlterConfigs: retention and segment settings apply to the open
                // partitions from their next append or retention run.
                tracing::info!(topic = name, configs = ?topic.configs, "topic configs altered");
                for p in 0..assignments.len() {
                    let tp = TopicPartition::new(name.clone(), p as i32);
                    if let Some(slot) = self.partitions.get_mut(&tp) {
                        slot.set_config(log_config.clone());
                        if let Some(h) = slot.hosted_mut() {
                            h.machine.log_mut().set_config(log_config.clone());
                        }
                    }
                }
            }
            for (p, replicas) in assignments.iter().enumerate() {
                let tp = TopicPartition::new(name.clone(), p as i32);
                if !replicas.contains(&me) || self.partitions.contains_key(&tp) {
                    continue;
                }
                let voters = replicas.iter().map(|r| *r as u64).collect();
                self.open_partition(&tp, topic.topic_id, log_config.clone(), voters);
            }
        }
    }

    fn delete_local_topic(&mut self, name: &str) {
        let Some(topic) = self.topics.remove(name) else {
            return;
        };
        self.topic_ids.remove(&topic.id);
        for partition in 0..topic.partitions() {
            let tp = TopicPartition::new(name, partition);
            self.cluster.leaders.remove(&(topic.id, partition));
            self.close_partition(&tp);
        }
        tracing::info!(topic = name, "topic deleted");
    }

    /// Sends to every other node.
    pub(super) fn broadcast(&mut self, message: PeerMessage) {
        let me = self.config.node_id as u64;
        for peer in self.config.nodes.clone() {
            if peer != me {
                self.send(peer, message.clone());
            }
        }
    }

    /// A message from a peer. Anything not addressed to this node by the node that sent it is
    /// dropped and counted.
    pub(super) fn on_peer_message(
        &mut self,
        from: NodeId,
        message: PeerMessage,
        disk: &impl LogReader,
    ) {
        let me = self.config.node_id as u64;
        if from == me || !self.config.nodes.contains(&from) {
            self.peer_messages_dropped += 1;
            return;
        }
        match message {
            PeerMessage::Raft { group, msg } => {
                if msg.from != from || msg.to != me {
                    tracing::warn!(from, "dropping a Raft message with a forged sender");
                    self.peer_messages_dropped += 1;
                    return;
                }
                if msg.term > crate::limits::RAFT_TERM_MAX {
                    tracing::warn!(
                        from,
                        term = msg.term,
                        "dropping a Raft message with a term beyond any leader epoch"
                    );
                    self.peer_messages_dropped += 1;
                    return;
                }
                let wall_ms = self.now.wall_ms;
                match group {
                    GroupId::Metadata => {
                        let log = self.meta.log_id();
                        let now = self.now;
                        if let Some(h) = self.meta.hosted_mut() {
                            h.machine.step(msg, now, &View { disk, log });
                            self.after_metadata_input(disk);
                        }
                    }
                    GroupId::Partition { .. } => {
                        let Some(tp) = self.group_of.get(&group).cloned() else {
                            // Not (yet) known here: the metadata log will tell us; Raft retries.
                            return;
                        };
                        let Some(slot) = self.partitions.get_mut(&tp) else {
                            return;
                        };
                        let log = slot.log();
                        if let Some(h) = slot.hosted_mut() {
                            h.machine.step(msg, wall_ms, &View { disk, log });
                            self.after_partition_input(&tp, disk);
                        }
                    }
                }
            }
            PeerMessage::Controller { id, request } => {
                match self.controller_call(&request, disk) {
                    Ok(ticket) => {
                        self.cluster
                            .tickets
                            .insert(ticket, TicketOwner::Remote { from, id });
                    }
                    Err(reply) => self.send(from, PeerMessage::ControllerReply { id, reply }),
                }
                self.after_metadata_input(disk);
            }
            PeerMessage::ControllerReply { id, reply } => self.on_controller_reply(id, reply),
            PeerMessage::Leaders(news) => {
                for l in news {
                    let entry = self
                        .cluster
                        .leaders
                        .entry((l.topic_id, l.partition))
                        .or_insert((0, 0));
                    if l.term >= entry.0 {
                        *entry = (l.term, l.leader);
                    }
                }
            }
        }
    }

    /// Hands a controller request to this node's quorum (which refuses unless it is the active
    /// controller): a ticket for the records it proposed, or the answer now (a refusal, or the
    /// verdict of a validate-only check).
    fn controller_call(
        &mut self,
        request: &ControllerRequest,
        disk: &impl LogReader,
    ) -> Result<Ticket, ControllerReply> {
        let log = self.meta.log_id();
        let now = self.now;
        let Some(h) = self.meta.hosted_mut() else {
            return Err(ControllerReply::Error {
                code: ErrorCode::NotController.code(),
            });
        };
        let quorum = &mut h.machine;
        let view = View { disk, log };
        let result = match request {
            ControllerRequest::Heartbeat {
                node_id,
                incarnation,
                host,
                port,
                rack,
            } => quorum.broker_heartbeat(
                *node_id,
                *incarnation,
                host,
                *port,
                rack.as_deref(),
                now,
                &view,
            ),
            ControllerRequest::CreateTopic {
                name,
                num_partitions,
                replication_factor,
                configs,
            } => quorum.create_topic(
                &CreateTopicRequest {
                    name: name.clone(),
                    num_partitions: *num_partitions,
                    replication_factor: *replication_factor,
                    assignment: None,
                    configs: configs.clone(),
                },
                now,
                &view,
            ),
            ControllerRequest::AllocateProducerIds { node_id } => {
                quorum.allocate_producer_ids(*node_id, now, &view)
            }
            ControllerRequest::AlterConfigs {
                topic,
                set,
                delete,
                replace,
                validate_only,
            } => {
                if !quorum.is_active() {
                    return Err(ControllerReply::Error {
                        code: ErrorCode::NotController.code(),
                    });
                }
                // Planted: the legacy API merges its configs into the overrides.
                let merges = self
                    .config
                    .planted
                    .is(crate::planted::Bug::LegacyAlterConfigsMerges);
                let delete = if *replace && !merges {
                    super::admin::replaced_overrides(quorum.deciding_image(), topic, set)
                } else {
                    delete.clone()
                };
                if *validate_only {
                    let verdict = controller::alter_configs(
                        quorum.deciding_image(),
                        topic,
                        set,
                        &delete,
                        &self.config.topic_defaults.log,
                    );
                    return Err(match verdict {
                        Ok(_) => ControllerReply::Done,
                        Err(e) => ControllerReply::Refused {
                            code: e.code().code(),
                            message: e.message().to_string(),
                        },
                    });
                }
                return quorum
                    .alter_configs(topic, set, &delete, now, &view)
                    .map_err(|e| ControllerReply::Refused {
                        code: e.code.code(),
                        message: e.message,
                    });
            }
        };
        result.map_err(|e| ControllerReply::Error {
            code: e.code.code(),
        })
    }

    /// Sends a controller request to the active controller, which may be this node.
    pub(super) fn call_controller(&mut self, request: ControllerRequest, disk: &impl LogReader) {
        self.call_controller_for(request, None, disk)
    }

    /// [`Self::call_controller`] on behalf of entry `admin` (waiter, index) of a client's
    /// request, which the answer (or a refusal to send) goes to.
    pub(super) fn call_controller_for(
        &mut self,
        request: ControllerRequest,
        admin: Option<(u64, usize)>,
        disk: &impl LogReader,
    ) {
        let unsent = |code: ErrorCode| ControllerReply::Error { code: code.code() };
        let forwarded = self
            .cluster
            .calls
            .values()
            .filter(|c| c.admin.is_some())
            .count();
        if admin.is_some() && forwarded >= FORWARDED_CALLS_MAX {
            tracing::debug!(
                ?request,
                "too many forwarded client calls waiting; not sent"
            );
            if let Some((waiter, index)) = admin {
                self.on_forwarded_admin(waiter, index, unsent(ErrorCode::RequestTimedOut));
            }
            return;
        }
        // A heartbeat always goes (one is in flight at most): a full table must not get this
        // node fenced.
        let is_heartbeat = matches!(request, ControllerRequest::Heartbeat { .. });
        if self.cluster.calls.len() >= CONTROLLER_CALLS_MAX && !is_heartbeat {
            tracing::warn!(?request, "too many controller calls waiting; not sent");
            if let Some((waiter, index)) = admin {
                self.on_forwarded_admin(waiter, index, unsent(ErrorCode::RequestTimedOut));
            }
            return;
        }
        let id = self.cluster.next_call_id;
        self.cluster.next_call_id += 1;
        let me = self.config.node_id as u64;
        match self.meta.quorum().and_then(MetadataQuorum::leader) {
            Some(leader) if leader == me => match self.controller_call(&request, disk) {
                Ok(ticket) => {
                    self.cluster
                        .tickets
                        .insert(ticket, TicketOwner::Local { call: id });
                    self.after_metadata_input(disk);
                }
                Err(reply) => {
                    tracing::debug!(?request, ?reply, "controller request refused");
                    if let Some((waiter, index)) = admin {
                        self.on_forwarded_admin(waiter, index, reply);
                    }
                    return;
                }
            },
            Some(leader) => self.send(
                leader,
                PeerMessage::Controller {
                    id,
                    request: request.clone(),
                },
            ),
            None => {
                if let Some((waiter, index)) = admin {
                    self.on_forwarded_admin(waiter, index, unsent(ErrorCode::NotController));
                }
                return;
            }
        }
        // A heartbeat is given up at the next one's time: a lost one (a dropped link) must
        // not hold back the next, or the session expires while the link is back.
        let timeout_ms = match request {
            ControllerRequest::Heartbeat { .. } => HEARTBEAT_TICKS * self.config.raft_tick_ms,
            _ => CONTROLLER_CALL_TIMEOUT_MS,
        };
        let deadline = self.now.instant.plus_millis(timeout_ms);
        self.cluster.calls.insert(
            id,
            ControllerCall {
                request,
                deadline,
                admin,
            },
        );
    }

    fn on_ticket(&mut self, ticket: Ticket, result: Result<Outcome, ErrorCode>) {
        let Some(owner) = self.cluster.tickets.remove(&ticket) else {
            return;
        };
        let reply = match &result {
            Ok(Outcome::ProducerIds { first, end, .. }) => ControllerReply::ProducerIds {
                first: *first,
                end: *end,
            },
            Ok(_) => ControllerReply::Done,
            Err(code) => ControllerReply::Error { code: code.code() },
        };
        match owner {
            TicketOwner::Remote { from, id } => {
                self.send(from, PeerMessage::ControllerReply { id, reply })
            }
            TicketOwner::Local { call } => self.on_controller_reply(call, reply),
            TicketOwner::Admin { waiter, index } => self.on_admin_result(waiter, index, result),
        }
    }

    fn on_controller_reply(&mut self, id: u64, reply: ControllerReply) {
        let Some(call) = self.cluster.calls.remove(&id) else {
            return;
        };
        if let Some((waiter, index)) = call.admin {
            return self.on_forwarded_admin(waiter, index, reply);
        }
        match (&call.request, reply) {
            (
                ControllerRequest::AllocateProducerIds { .. },
                ControllerReply::ProducerIds { first, end },
            ) => {
                if first < 0 || first >= end {
                    // A peer's answer is input: an empty or negative block is refused, and the
                    // next InitProducerId asks again.
                    tracing::warn!(first, end, "dropping a producer id block that holds no ids");
                    self.peer_messages_dropped += 1;
                    return;
                }
                tracing::info!(first, end, "producer id block allocated");
                self.on_producer_ids(first, end);
            }
            (_, ControllerReply::Error { code }) => {
                tracing::debug!(request = ?call.request, code, "controller request failed");
            }
            _ => {}
        }
    }

    /// Every Raft tick: tick every group, heartbeat and announce leadership now and then, and
    /// give up on controller calls that got no answer.
    pub(super) fn on_tick(&mut self, disk: &impl LogReader) {
        self.cluster.ticks += 1;
        let now = self.now;
        let log = self.meta.log_id();
        if let Some(h) = self.meta.hosted_mut() {
            h.machine.tick(now, &View { disk, log });
            self.after_metadata_input(disk);
        } else if self.meta.tick_open_retry() {
            self.maybe_reopen_metadata();
        }
        let tps: Vec<TopicPartition> = self.partitions.keys().cloned().collect();
        for tp in &tps {
            let Some(slot) = self.partitions.get_mut(tp) else {
                continue;
            };
            let log = slot.log();
            if let Some(h) = slot.hosted_mut() {
                h.machine.tick(now.wall_ms, &View { disk, log });
                self.after_partition_input(tp, disk);
            } else {
                self.tick_failed_partition(tp);
            }
        }
        let instant = now.instant;
        let expired: Vec<u64> = self
            .cluster
            .calls
            .iter()
            .filter(|(_, call)| call.deadline <= instant)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            let call = self.cluster.calls.remove(&id).expect("listed");
            if let Some((waiter, index)) = call.admin {
                let timed_out = ErrorCode::RequestTimedOut.code();
                self.on_forwarded_admin(waiter, index, ControllerReply::Error { code: timed_out });
            }
        }
        // Until registered and unfenced, every tick: a starting node serves no client before.
        if self.cluster.ticks % HEARTBEAT_TICKS == 1 || !self.is_ready() {
            self.heartbeat(disk);
        }
        if self.cluster.ticks % HEARTBEAT_TICKS == 1 {
            self.announce_leadership();
        }
    }

    fn heartbeat(&mut self, disk: &impl LogReader) {
        // One heartbeat in flight at a time.
        if self
            .cluster
            .calling(|r| matches!(r, ControllerRequest::Heartbeat { .. }))
        {
            return;
        }
        let request = ControllerRequest::Heartbeat {
            node_id: self.config.node_id,
            incarnation: self.incarnation,
            host: self.config.advertised_host.clone(),
            port: self.config.advertised_port,
            rack: None,
        };
        self.call_controller(request, disk);
    }

    fn announce_leadership(&mut self) {
        let me = self.config.node_id as u64;
        let news: Vec<Leadership> = self
            .partitions
            .values()
            .filter_map(|slot| {
                let replica = slot.replica()?;
                let GroupId::Partition {
                    topic_id,
                    partition,
                } = slot.group()
                else {
                    return None;
                };
                replica.is_leader().then(|| Leadership {
                    topic_id,
                    partition,
                    term: replica.term(),
                    leader: me,
                })
            })
            .collect();
        if !news.is_empty() {
            self.broadcast(PeerMessage::Leaders(news));
        }
    }

    /// The leader of a partition and its term as this node knows it: its own replica's view if
    /// it hosts one, else the latest announcement.
    pub(super) fn leader_of(&self, tp: &TopicPartition, topic_id: TopicId) -> Option<(u64, u64)> {
        let local = self
            .partitions
            .get(tp)
            .and_then(|p| p.replica())
            .and_then(|r| Some((r.term(), r.leader()?)));
        let heard = self.cluster.leaders.get(&(topic_id, tp.partition)).copied();
        match (local, heard) {
            (Some(l), Some(h)) if h.0 > l.0 => Some(h),
            (Some(l), _) => Some(l),
            (None, h) => h,
        }
    }

    /// The error for a partition this node does not host: NOT_LEADER_OR_FOLLOWER if it exists
    /// (another node leads it; the client refreshes its metadata), else
    /// UNKNOWN_TOPIC_OR_PARTITION.
    pub(super) fn missing_partition_error(&self, tp: &TopicPartition) -> ErrorCode {
        match self.topics.get(&tp.topic) {
            Some(t) if (0..t.partitions()).contains(&tp.partition) => {
                ErrorCode::NotLeaderOrFollower
            }
            _ => ErrorCode::UnknownTopicOrPartition,
        }
    }
}
