//! The broker's part in the cluster: it hosts its member of the metadata quorum, keeps its
//! partitions in step with the metadata image, talks to its peers (Raft messages of every group,
//! controller requests, leadership), heartbeats to the controller, and ticks every Raft group.
//!
//! One node without peers is a cluster of one: the same code runs with a single-voter metadata
//! quorum and no transport.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io;

use kafka_protocol::messages::ResponseKind;
use sluice_core::checker::replicas::Observation;
use sluice_core::log::{LogConfig, LogStore};
use sluice_core::metadata::{
    CreateTopicRequest, MetadataQuorum, Outcome as QuorumOutcome, QuorumConfig, Ticket,
    TopicDefaults, TopicId, METADATA_TOPIC,
};
use sluice_core::raft::{Membership, Message};
use sluice_core::replica::{Replica, ReplicaSync};
use sluice_core::rng::Rng;
use sluice_core::storage::Storage;
use sluice_core::ErrorCode;
use tokio::sync::oneshot;
use tokio::time::{Duration, Instant};
use uuid::Uuid;

use super::{hard_state, now_ms, partition_dir, splitmix, Broker, TopicPartition, TopicState};
use crate::metadata::topic_log_config;
use crate::peer::{ControllerReply, ControllerRequest, GroupId, Leadership, PeerMessage};
use crate::rpc::NodeId;

/// How often a broker heartbeats to the controller and announces the partitions it leads, in
/// Raft ticks.
const HEARTBEAT_TICKS: u64 = 10;
/// A forwarded controller request not answered by then is given up (the caller retries).
const CONTROLLER_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The metadata quorum member and its log.
pub(super) struct MetaGroup<S: Storage> {
    pub quorum: MetadataQuorum,
    pub store: RefCell<LogStore<S>>,
    pub generation: u64,
    pub last_sync_start: Option<Instant>,
}

/// Who waits for a quorum ticket on this node (the active controller).
pub(super) enum TicketOwner {
    /// A peer's forwarded request.
    Remote { from: NodeId, id: u64 },
    /// One topic of a local CreateTopics or DeleteTopics request.
    Admin { waiter: u64, index: usize },
    /// A local call (heartbeat, auto-creation, producer ids) made as if forwarded.
    Local { call: u64 },
}

/// A controller request this node made (forwarded, or to its own quorum), waiting for an answer.
pub(super) struct ControllerCall {
    pub request: ControllerRequest,
    pub deadline: Instant,
}

/// The partition of the metadata log, as a key in the sync machinery.
pub(super) fn metadata_tp() -> TopicPartition {
    TopicPartition {
        topic: METADATA_TOPIC.to_string(),
        partition: 0,
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

impl<S: Storage> Broker<S> {
    /// Opens the metadata log and its quorum member (voters: the configured controllers).
    pub(super) fn open_metadata(
        config: &crate::config::Config,
        storage: &S,
        rng: &mut u64,
        generation: u64,
    ) -> io::Result<MetaGroup<S>> {
        let tp = metadata_tp();
        let (hard_state, log, store) = super::open_replica_log(
            storage,
            &tp,
            partition_dir(&tp),
            metadata_log_config(&config.log),
        )?;
        let me = config.node_id as u64;
        let cluster_id = *super::random_uuid(rng).as_bytes();
        let mut quorum_config = QuorumConfig::new(me, cluster_id, topic_defaults(config));
        quorum_config.raft.election_ticks = election_ticks(config);
        quorum_config.raft.append_bytes_max = config.replica_fetch_max_bytes;
        quorum_config.raft.planted = config.planted;
        let store = RefCell::new(store);
        let voters = Membership::new(config.controllers.iter().copied());
        let quorum = MetadataQuorum::open(
            quorum_config,
            Rng::new(splitmix(rng)),
            hard_state,
            log,
            voters,
            now_ms(),
            &store,
        )
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{tp}: {e}")))?;
        let mut group = MetaGroup {
            quorum,
            store,
            generation,
            last_sync_start: None,
        };
        if config.controllers == [me] {
            // A quorum of one needs no election timeout.
            group.quorum.campaign(true, &group.store);
        }
        Ok(group)
    }

    /// Executes the quorum's storage ops and hard state, like `flush_partition` for data.
    pub(super) fn flush_metadata(&mut self) -> io::Result<()> {
        let meta = &mut self.meta;
        loop {
            while let Some(op) = meta.quorum.poll_op() {
                meta.store.borrow_mut().apply(op)?;
            }
            if let Some(hs) = meta.quorum.take_hard_state() {
                let dir = meta.store.borrow().dir().to_path_buf();
                hard_state::store(&self.storage, &dir, hs)?;
                meta.quorum.hard_state_persisted(&meta.store);
                continue;
            }
            return Ok(());
        }
    }

    /// After any input to the quorum: storage, messages, answers, and the partitions that the
    /// newly applied records add or remove.
    pub(super) fn after_metadata_input(&mut self) {
        if let Err(e) = self.flush_metadata() {
            // The metadata log is this node's view of the cluster; without it nothing is safe.
            tracing::error!("metadata log write failed: {e}; reopening it");
            self.recover_metadata();
            return;
        }
        self.dirty.insert(metadata_tp());
        if let Some(observer) = &self.observer {
            let node = self.config.node_id as u64;
            let group = metadata_tp().to_string();
            observe(
                observer,
                &mut self.observed,
                node,
                group,
                self.meta.quorum.replica(),
            );
        }
        for msg in self.meta.quorum.take_messages() {
            self.send_raft(GroupId::Metadata, msg);
        }
        for (ticket, result) in self.meta.quorum.take_completions() {
            self.on_ticket(ticket, result);
        }
        if self.meta.quorum.applied_end() != self.applied_metadata_end {
            self.applied_metadata_end = self.meta.quorum.applied_end();
            self.reconcile();
        }
    }

    pub(super) fn recover_metadata(&mut self) {
        let generation = self.meta.generation + 1;
        for op in self.meta.quorum.replica().log().failure_cut() {
            if let Err(e) = self.meta.store.borrow_mut().apply(op) {
                tracing::error!("cutting the metadata log's unsynced tail failed: {e}");
            }
        }
        match Self::open_metadata(&self.config, &self.storage, &mut self.rng, generation) {
            Ok(meta) => {
                self.meta = meta;
                self.applied_metadata_end = 0;
                self.after_metadata_input();
            }
            Err(e) => {
                // Nothing sensible is left to do: a node must not act on a view it cannot keep.
                tracing::error!("the metadata log cannot be reopened: {e}; stopping");
                std::process::exit(70);
            }
        }
    }

    /// Makes the hosted partitions match the image: opens new ones this node is a replica of,
    /// deletes the partitions of deleted topics.
    pub(super) fn reconcile(&mut self) {
        let image = self.meta.quorum.image();
        let me = self.config.node_id;
        let wanted: BTreeMap<String, sluice_core::metadata::Topic> = image
            .topics()
            .map(|t| (t.name.clone(), t.clone()))
            .collect();
        // Deleted (or re-created under the same name with a new id): drop the old one first.
        let gone: Vec<String> = self
            .topics
            .iter()
            .filter(|(name, state)| {
                wanted
                    .get(*name)
                    .is_none_or(|t| Uuid::from_bytes(t.topic_id) != state.id)
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in gone {
            if let Err(e) = self.delete_local_topic(&name) {
                tracing::error!(topic = name, "deleting the topic's partitions failed: {e}");
            }
        }
        for (name, topic) in wanted {
            let id = Uuid::from_bytes(topic.topic_id);
            let log_config = match topic_log_config(&self.config.log, &topic.configs) {
                Ok(c) => c,
                Err((_, e)) => {
                    tracing::error!(topic = name, "the topic's configs are unusable here: {e}");
                    continue;
                }
            };
            let assignments: Vec<Vec<i32>> = topic
                .partitions
                .iter()
                .map(|a| a.replicas.clone())
                .collect();
            let known = self.topics.contains_key(&name);
            let altered = self
                .topics
                .get(&name)
                .is_some_and(|t| t.id == id && t.configs != topic.configs);
            self.topic_ids.insert(id, name.clone());
            self.topics.insert(
                name.clone(),
                TopicState {
                    id,
                    partitions: assignments.len() as i32,
                    configs: topic.configs.clone(),
                    log_config: log_config.clone(),
                    assignments: assignments.clone(),
                },
            );
            if !known {
                tracing::info!(topic = name, partitions = assignments.len(), %id, "topic created");
            }
            if altered {
                // IncrementalAlterConfigs: retention and segment settings apply to the open
                // partitions from their next append or retention run.
                tracing::info!(topic = name, configs = ?topic.configs, "topic configs altered");
                for p in 0..assignments.len() {
                    let tp = TopicPartition {
                        topic: name.clone(),
                        partition: p as i32,
                    };
                    if let Some(part) = self.partitions.get_mut(&tp) {
                        part.replica.log_mut().set_config(log_config.clone());
                    }
                }
            }
            for (p, replicas) in assignments.iter().enumerate() {
                let tp = TopicPartition {
                    topic: name.clone(),
                    partition: p as i32,
                };
                if !replicas.contains(&me) || self.partitions.contains_key(&tp) {
                    continue;
                }
                let voters = replicas.iter().map(|r| *r as u64);
                match self.open_partition(&tp, partition_dir(&tp), log_config.clone(), 0, voters) {
                    Ok(part) => {
                        self.partitions.insert(tp.clone(), part);
                        self.group_of.insert(
                            GroupId::Partition {
                                topic_id: topic.topic_id,
                                partition: p as i32,
                            },
                            tp.clone(),
                        );
                        self.after_partition_input(&tp);
                    }
                    Err(e) => {
                        tracing::error!(%tp, "opening the partition failed: {e}; it stays offline")
                    }
                }
            }
        }
    }

    fn delete_local_topic(&mut self, name: &str) -> io::Result<()> {
        let Some(topic) = self.topics.remove(name) else {
            return Ok(());
        };
        self.topic_ids.remove(&topic.id);
        for partition in 0..topic.partitions {
            let tp = TopicPartition {
                topic: name.to_string(),
                partition,
            };
            self.dirty.remove(&tp);
            self.group_of.remove(&GroupId::Partition {
                topic_id: *topic.id.as_bytes(),
                partition,
            });
            self.leaders.remove(&(*topic.id.as_bytes(), partition));
            if let Some(part) = self.partitions.remove(&tp) {
                part.store.into_inner().delete()?;
            }
            self.fail_produce_waiters(&tp, ErrorCode::UnknownTopicOrPartition);
        }
        tracing::info!(topic = name, "topic deleted");
        Ok(())
    }

    /// After any input to a partition's replica: storage, then its messages.
    pub(super) fn after_partition_input(&mut self, tp: &TopicPartition) {
        if let Err(e) = self.flush_partition(tp) {
            tracing::error!(%tp, "partition write failed: {e}");
            self.recover_partition(tp);
            return;
        }
        let Some(part) = self.partitions.get_mut(tp) else {
            return;
        };
        if let Some(observer) = &self.observer {
            let node = self.config.node_id as u64;
            observe(
                observer,
                &mut self.observed,
                node,
                tp.to_string(),
                &part.replica,
            );
        }
        if let Some(offset) = part.replica.take_reset() {
            // A snapshot install: the leader's log starts past our end. Restarting a log at an
            // offset is not built yet; the replica stays behind and says so.
            tracing::error!(%tp, offset, "the leader's log starts past this replica's end; catching up from a snapshot is not supported yet");
        }
        let messages = part.replica.take_messages();
        let was_leader = part.was_leader;
        let is_leader = part.replica.is_leader();
        part.was_leader = is_leader;
        let term = part.replica.term();
        self.dirty.insert(tp.clone());
        if messages.is_empty() && was_leader == is_leader {
            return;
        }
        let Some(topic_id) = self.topics.get(&tp.topic).map(|t| *t.id.as_bytes()) else {
            return;
        };
        let group = GroupId::Partition {
            topic_id,
            partition: tp.partition,
        };
        for msg in messages {
            self.send_raft(group, msg);
        }
        if is_leader && !was_leader {
            tracing::info!(%tp, term, "became the partition's leader");
            let me = self.config.node_id as u64;
            let news = Leadership {
                topic_id,
                partition: tp.partition,
                term,
                leader: me,
            };
            self.leaders.insert((topic_id, tp.partition), (term, me));
            self.broadcast(PeerMessage::Leaders(vec![news]));
        }
    }

    /// Sends to one peer. Drops are counted by the transport; every sender here retries (Raft)
    /// or repeats (heartbeats, announcements) or times out (controller calls).
    fn send_peer(&self, to: NodeId, msg: &PeerMessage) {
        if let Some(transport) = &self.transport {
            let _ = transport.send(to, msg);
        }
    }

    fn send_raft(&self, group: GroupId, msg: Message) {
        self.send_peer(msg.to, &PeerMessage::Raft { group, msg });
    }

    fn broadcast(&self, msg: PeerMessage) {
        for peer in self.config.peers.keys() {
            if *peer != self.config.node_id as u64 {
                self.send_peer(*peer, &msg);
            }
        }
    }

    /// A message from a peer.
    pub(super) fn on_peer_message(&mut self, from: NodeId, msg: PeerMessage) {
        let now = now_ms();
        match msg {
            PeerMessage::Raft { group, msg } => {
                if msg.from != from || msg.to != self.config.node_id as u64 {
                    tracing::warn!(from, "dropping a Raft message with a forged sender");
                    return;
                }
                match group {
                    GroupId::Metadata => {
                        self.meta.quorum.step(msg, now, &self.meta.store);
                        self.after_metadata_input();
                    }
                    GroupId::Partition { .. } => {
                        let Some(tp) = self.group_of.get(&group).cloned() else {
                            // Not (yet) known here: the metadata log will tell us; Raft retries.
                            return;
                        };
                        if let Some(part) = self.partitions.get_mut(&tp) {
                            part.replica.step(msg, now, &part.store);
                            self.after_partition_input(&tp);
                        }
                    }
                }
            }
            PeerMessage::Controller { id, request } => {
                match self.controller_call(&request, now) {
                    Ok(ticket) => {
                        self.ticket_owners
                            .insert(ticket, TicketOwner::Remote { from, id });
                    }
                    Err(code) => self.reply_to(from, id, ControllerReply::Error { code }),
                }
                self.after_metadata_input();
            }
            PeerMessage::ControllerReply { id, reply } => self.on_controller_reply(id, reply),
            PeerMessage::Leaders(news) => {
                for l in news {
                    let entry = self
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

    fn reply_to(&self, to: NodeId, id: u64, reply: ControllerReply) {
        self.send_peer(to, &PeerMessage::ControllerReply { id, reply });
    }

    /// Whether a controller request matching `which` is already waiting for its answer.
    pub(super) fn calling(&self, which: impl Fn(&ControllerRequest) -> bool) -> bool {
        self.calls.values().any(|c| which(&c.request))
    }

    /// Hands a controller request to this node's quorum (which refuses unless it is the active
    /// controller).
    fn controller_call(&mut self, request: &ControllerRequest, now: u64) -> Result<Ticket, i16> {
        let meta = &mut self.meta;
        let result = match request {
            ControllerRequest::Heartbeat {
                node_id,
                incarnation,
                host,
                port,
                rack,
            } => meta.quorum.broker_heartbeat(
                *node_id,
                *incarnation,
                host,
                *port,
                rack.as_deref(),
                now,
                &meta.store,
            ),
            ControllerRequest::CreateTopic {
                name,
                num_partitions,
                replication_factor,
                configs,
            } => meta.quorum.create_topic(
                &CreateTopicRequest {
                    name: name.clone(),
                    num_partitions: *num_partitions,
                    replication_factor: *replication_factor,
                    assignment: None,
                    configs: configs.clone(),
                },
                now,
                &meta.store,
            ),
            ControllerRequest::AllocateProducerIds { node_id } => meta
                .quorum
                .allocate_producer_ids(*node_id, now, &meta.store),
        };
        result.map_err(|e| e.code.code())
    }

    /// Sends a controller request to the active controller, which may be this node.
    pub(super) fn call_controller(&mut self, request: ControllerRequest) {
        let id = self.next_call_id;
        self.next_call_id += 1;
        let me = self.config.node_id as u64;
        match self.meta.quorum.leader() {
            Some(leader) if leader == me => match self.controller_call(&request, now_ms()) {
                Ok(ticket) => {
                    self.ticket_owners
                        .insert(ticket, TicketOwner::Local { call: id });
                    self.after_metadata_input();
                }
                Err(code) => {
                    tracing::debug!(?request, code, "controller request refused");
                    return;
                }
            },
            Some(leader) => self.send_peer(
                leader,
                &PeerMessage::Controller {
                    id,
                    request: request.clone(),
                },
            ),
            None => return,
        }
        // A heartbeat is given up at the next one's time: a lost one (a dropped link) must
        // not hold back the next, or the session expires while the link is back.
        let timeout = match request {
            ControllerRequest::Heartbeat { .. } => {
                Duration::from_millis(HEARTBEAT_TICKS * self.config.raft_tick_ms)
            }
            _ => CONTROLLER_CALL_TIMEOUT,
        };
        self.calls.insert(
            id,
            ControllerCall {
                request,
                deadline: Instant::now() + timeout,
            },
        );
    }

    fn on_ticket(&mut self, ticket: Ticket, result: Result<QuorumOutcome, ErrorCode>) {
        let Some(owner) = self.ticket_owners.remove(&ticket) else {
            return;
        };
        let reply = match &result {
            Ok(QuorumOutcome::ProducerIds { first, end, .. }) => ControllerReply::ProducerIds {
                first: *first,
                end: *end,
            },
            Ok(_) => ControllerReply::Done,
            Err(code) => ControllerReply::Error { code: code.code() },
        };
        match owner {
            TicketOwner::Remote { from, id } => self.reply_to(from, id, reply),
            TicketOwner::Local { call } => self.on_controller_reply(call, reply),
            TicketOwner::Admin { waiter, index } => self.on_admin_result(waiter, index, result),
        }
    }

    fn on_controller_reply(&mut self, id: u64, reply: ControllerReply) {
        let Some(call) = self.calls.remove(&id) else {
            return;
        };
        match (&call.request, reply) {
            (
                ControllerRequest::AllocateProducerIds { .. },
                ControllerReply::ProducerIds { first, end },
            ) => {
                tracing::info!(first, end, "producer id block allocated");
                self.producer_ids.push((first, end));
                self.answer_producer_id_waiters();
            }
            (_, ControllerReply::Error { code }) => {
                tracing::debug!(request = ?call.request, code, "controller request failed");
            }
            _ => {}
        }
    }

    /// Every Raft tick: tick every group, heartbeat and announce leadership now and then, and
    /// give up on controller calls that got no answer.
    pub(super) fn on_tick(&mut self) {
        let now = now_ms();
        self.ticks += 1;
        self.meta.quorum.tick(now, &self.meta.store);
        self.after_metadata_input();
        let tps: Vec<TopicPartition> = self.partitions.keys().cloned().collect();
        for tp in &tps {
            if let Some(part) = self.partitions.get_mut(tp) {
                part.replica.tick(now, &part.store);
            }
            self.after_partition_input(tp);
        }
        let instant = Instant::now();
        self.calls.retain(|_, call| call.deadline > instant);
        // Until registered and unfenced, every tick: a starting broker serves no client before.
        if self.ticks % HEARTBEAT_TICKS == 1 || !self.is_ready() {
            self.heartbeat();
        }
        if self.ticks % HEARTBEAT_TICKS == 1 {
            self.announce_leadership();
        }
    }

    fn heartbeat(&mut self) {
        let (host, port) = crate::config::split_host_port(&self.config.advertised_listener)
            .expect("validated at start");
        let request = ControllerRequest::Heartbeat {
            node_id: self.config.node_id,
            incarnation: self.incarnation,
            host: host.to_string(),
            port,
            rack: None,
        };
        // One heartbeat in flight at a time.
        if !self.calling(|r| matches!(r, ControllerRequest::Heartbeat { .. })) {
            self.call_controller(request);
        }
    }

    fn announce_leadership(&mut self) {
        let mut news = Vec::new();
        for (tp, part) in &self.partitions {
            if !part.replica.is_leader() {
                continue;
            }
            if let Some(topic) = self.topics.get(&tp.topic) {
                news.push(Leadership {
                    topic_id: *topic.id.as_bytes(),
                    partition: tp.partition,
                    term: part.replica.term(),
                    leader: self.config.node_id as u64,
                });
            }
        }
        if !news.is_empty() {
            self.broadcast(PeerMessage::Leaders(news));
        }
    }

    /// This node is registered and unfenced in its own image: it may serve clients.
    pub(super) fn is_ready(&self) -> bool {
        self.meta
            .quorum
            .image()
            .broker(self.config.node_id)
            .is_some_and(|b| !b.fenced && b.incarnation == self.incarnation)
    }

    /// The leader of a partition and its term as this node knows it: its own replica's view if
    /// it hosts one, else the latest announcement.
    pub(super) fn leader_of(&self, tp: &TopicPartition, topic_id: TopicId) -> Option<(u64, u64)> {
        let local = self
            .partitions
            .get(tp)
            .and_then(|p| Some((p.replica.term(), p.replica.leader()?)));
        let heard = self.leaders.get(&(topic_id, tp.partition)).copied();
        match (local, heard) {
            (Some(l), Some(h)) if h.0 > l.0 => Some(h),
            (Some(l), _) => Some(l),
            (None, h) => h,
        }
    }

    /// Starts an fsync of the metadata log if it has unsynced writes.
    pub(super) fn start_metadata_sync(&mut self, now: Instant) {
        let meta = &mut self.meta;
        let Some(request) = meta.quorum.poll_sync() else {
            return;
        };
        meta.last_sync_start = Some(now);
        let job = meta.store.borrow_mut().sync_job(&request.request);
        self.spawn_sync(metadata_tp(), self.meta.generation, request, job);
    }

    pub(super) fn on_metadata_sync_done(
        &mut self,
        generation: u64,
        request: ReplicaSync,
        result: io::Result<()>,
    ) {
        if self.meta.generation != generation {
            return;
        }
        match result {
            Ok(()) => {
                self.meta.quorum.on_synced(request, &self.meta.store);
                self.after_metadata_input();
            }
            Err(e) => {
                tracing::error!("metadata log fsync failed: {e}; reopening it");
                self.meta.quorum.on_storage_failed();
                self.recover_metadata();
            }
        }
    }
}

/// What -1 means in a CreateTopics request: this node's configured defaults.
pub(super) fn topic_defaults(config: &crate::config::Config) -> TopicDefaults {
    TopicDefaults {
        num_partitions: config.num_partitions,
        replication_factor: config.default_replication_factor,
        log: config.log.clone(),
    }
}

/// Election timeout in ticks (at least a few heartbeats long).
pub(super) fn election_ticks(config: &crate::config::Config) -> u32 {
    (config.election_timeout_ms / config.raft_tick_ms.max(1)).clamp(3, 10_000) as u32
}

/// The reply channel type the admin waiters keep.
pub(super) type Reply = oneshot::Sender<ResponseKind>;

/// Reports a replica's new leadership or high watermark to the observer.
fn observe(
    observer: &super::Observer,
    observed: &mut BTreeMap<String, (u64, u64)>,
    node: u64,
    group: String,
    replica: &Replica,
) {
    let last = observed.entry(group.clone()).or_insert((0, 0));
    let term = replica.term();
    if replica.is_leader() && last.1 != term {
        last.1 = term;
        observer(Observation::Leader {
            group: group.clone(),
            node,
            term,
        });
    }
    let log = replica.log();
    let hw = log.high_watermark();
    if hw != last.0 {
        last.0 = hw;
        observer(Observation::Committed {
            group,
            node,
            log_start: log.log_start_offset(),
            end: hw,
            epochs: log
                .epoch_runs()
                .iter()
                .map(|e| (e.epoch, e.start_offset))
                .collect(),
        });
    }
}
