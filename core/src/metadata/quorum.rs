//! One node's member of the metadata Raft group (Kafka's KRaft quorum), sans-IO.
//!
//! [`MetadataQuorum`] wraps a [`Replica`] over the metadata partition log
//! (`__cluster_metadata-0`) and the [`MetadataImage`] built from it. The host drives it exactly
//! as it drives a data partition's replica (`step`, `tick`, `on_synced`, `hard_state_persisted`,
//! `poll_sync`), and drains one [`MetadataQuorum::poll_output`]: the replica's outputs, then the
//! controller's answers.
//!
//! **Log format.** One proposal is one ordinary Kafka record batch; each record's value is one
//! encoded [`MetadataRecord`] and its offset is the offset [`MetadataImage::apply`] gets. Raft's
//! own entries are control batches and are skipped. Every node applies the committed batches in
//! order. A committed record that does not decode is corruption or a bug: the node stops
//! applying and reports it ([`MetadataQuorum::apply_error`]) instead of panicking.
//!
//! **Restart.** The image is rebuilt by replaying the whole log from offset 0, so the log must
//! have no retention. (Writing image snapshots with [`MetadataImage::encode`] and compacting the
//! log behind them is future work.)
//!
//! **The controller** is the Raft leader once it has applied its own term's first entry (so its
//! image holds everything committed before its term, as KRaft's leader waits for its listener to
//! reach the epoch start offset). Until then, and on every other node, requests fail at once
//! with `NOT_CONTROLLER`. The active controller decides against a *speculative* image — the
//! committed image plus every record it has proposed — so requests in flight together see each
//! other (two creations of one name, two producer-id blocks, two partition increases).
//! A request that wrote records completes when its batch is committed and applied, with the
//! outcome the committed image shows; one that wrote nothing (a heartbeat of a live broker)
//! completes once everything the controller proposed before it is applied. Losing leadership
//! fails every waiting request with `NOT_CONTROLLER` (its records may still commit: the answer
//! is indeterminate, as in Kafka) and drops the speculative image.

use std::collections::{BTreeMap, VecDeque};

use bytes::BytesMut;

use super::controller::{self, CreateTopicRequest, TopicDefaults, TopicRef};
use super::image::{Applied, MetadataImage};
use super::record::{BrokerId, MetadataRecord, TopicId};
use crate::batch::{BatchBuilder, BatchHeader, NewRecord, Records};
use crate::limits::{
    BROKER_SESSION_TIMEOUT_MS_DEFAULT, METADATA_REQUESTS_IN_FLIGHT_MAX,
    PRODUCER_ID_BLOCK_SIZE_DEFAULT,
};
use crate::log::{PartitionLog, SegmentReader};
use crate::raft::{EntryKind, HardState, Membership, Message, NodeId, RaftConfig};
use crate::replica::{OpenError, Replica, ReplicaOutput, ReplicaSync};
use crate::rng::Rng;
use crate::time::Now;
use crate::ErrorCode;

/// The metadata log's topic; its one partition is the metadata Raft group.
pub const METADATA_TOPIC: &str = "__cluster_metadata";

/// Settings of one node's quorum member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuorumConfig {
    /// `apply_entries` is forced on: every node applies the log.
    pub raft: RaftConfig,
    /// A live broker without a heartbeat for longer than this is fenced.
    pub session_timeout_ms: u64,
    /// Producer ids per [`MetadataQuorum::allocate_producer_ids`] block.
    pub producer_id_block_size: i64,
    /// What `-1` means in CreateTopics, and the log settings configs are checked against.
    pub topic_defaults: TopicDefaults,
    /// The cluster id this node writes if it becomes the first controller (the log has none):
    /// drawn at random by the host, never derived from a clock here.
    pub cluster_id: [u8; 16],
}

impl QuorumConfig {
    pub fn new(id: NodeId, cluster_id: [u8; 16], topic_defaults: TopicDefaults) -> QuorumConfig {
        QuorumConfig {
            raft: RaftConfig::new(id),
            session_timeout_ms: BROKER_SESSION_TIMEOUT_MS_DEFAULT,
            producer_id_block_size: PRODUCER_ID_BLOCK_SIZE_DEFAULT,
            topic_defaults,
            cluster_id,
        }
    }
}

/// Names one controller request; its answer comes back with the same ticket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ticket(pub u64);

/// A request's result, as the committed image shows it after its records were applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    TopicCreated {
        topic_id: TopicId,
        partitions: usize,
    },
    TopicDeleted {
        topic_id: TopicId,
    },
    ConfigsAltered {
        topic_id: TopicId,
    },
    /// The topic now has `partitions` partitions.
    PartitionsCreated {
        topic_id: TopicId,
        partitions: usize,
    },
    /// A heartbeat's answer: the broker's registration as committed.
    Broker {
        node_id: BrokerId,
        incarnation: u64,
        fenced: bool,
    },
    /// Producer ids `first..end` belong to `node_id`.
    ProducerIds {
        node_id: BrokerId,
        first: i64,
        end: i64,
    },
}

/// What the quorum hands its host (see [`MetadataQuorum::poll_output`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QuorumOutput {
    /// As for a data partition's replica.
    Replica(ReplicaOutput),
    /// A controller request's answer.
    Completion(Ticket, Result<Outcome, ErrorCode>),
}

/// Why a request was refused before anything was proposed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControllerError {
    pub code: ErrorCode,
    /// For the response's `error_message`.
    pub message: String,
}

impl ControllerError {
    fn new(code: ErrorCode, message: impl Into<String>) -> ControllerError {
        ControllerError {
            code,
            message: message.into(),
        }
    }

    fn not_controller() -> ControllerError {
        ControllerError::new(
            ErrorCode::NotController,
            "this node is not the active controller",
        )
    }
}

macro_rules! controller_error_from {
    ($($error:ty),+) => {
        $(impl From<$error> for ControllerError {
            fn from(e: $error) -> ControllerError {
                ControllerError::new(e.code(), e.message())
            }
        })+
    };
}

controller_error_from!(
    controller::CreateTopicError,
    controller::DeleteTopicError,
    controller::AlterConfigsError,
    controller::CreatePartitionsError,
    controller::BrokerError
);

/// A committed metadata batch that could not be applied: corruption, or a bug in an encoder.
/// The node applies nothing after it; the host logs it and stops serving metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApplyError {
    /// The offset of the batch (or record) that failed.
    pub offset: u64,
    pub reason: String,
}

/// What a waiting request needs to compute its outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Request {
    CreateTopic {
        name: String,
    },
    DeleteTopic {
        topic_id: TopicId,
        by_name: bool,
    },
    AlterConfigs {
        topic_id: TopicId,
    },
    CreatePartitions {
        topic_id: TopicId,
    },
    Heartbeat {
        node_id: BrokerId,
        incarnation: u64,
    },
    ProducerIds {
        node_id: BrokerId,
        first: i64,
        end: i64,
    },
    /// The controller's own records (cluster id, fencing): nobody waits for an answer.
    Internal,
}

/// A batch this controller proposed: offsets and term.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Batch {
    base_offset: u64,
    last_offset: u64,
    term: u64,
}

#[derive(Clone, Debug)]
struct Pending {
    /// `None` for [`Request::Internal`].
    ticket: Option<Ticket>,
    request: Request,
    /// The request's own records, if it wrote any.
    batch: Option<Batch>,
    /// Answered once every offset up to this one is applied.
    wait_offset: u64,
}

/// Planted ([`Bug::AlterConfigsNotAtomic`](crate::planted::Bug)): the rest of a config change
/// written one config per entry, the next at the first tick after the one before is applied.
#[derive(Clone, Debug)]
struct Chained {
    ticket: Ticket,
    topic_id: TopicId,
    rest: VecDeque<MetadataRecord>,
    /// The last offset of the entry written before the next.
    after_offset: u64,
}

/// The controller's state, present exactly while this node is the active controller.
#[derive(Clone, Debug)]
struct Active {
    term: u64,
    /// The committed image plus every record proposed in this term.
    image: MetadataImage,
    /// Last heartbeat per broker. Seeded with the activation time for every registered broker,
    /// so a new controller gives each broker a full session before fencing it.
    last_heartbeat_ms: BTreeMap<BrokerId, u64>,
    /// The last offset this controller proposed, if any.
    last_proposed_offset: Option<u64>,
}

/// One node's member of the metadata Raft group: replica, image and (on the leader) the
/// controller. See the module docs.
#[derive(Debug)]
pub struct MetadataQuorum {
    config: QuorumConfig,
    replica: Replica,
    /// Committed records applied in order.
    image: MetadataImage,
    /// Offsets below this are applied (control batches included): Raft's applied index.
    applied_end: u64,
    /// Topic ids and placement ties.
    rng: Rng,
    active: Option<Active>,
    /// Waiting requests, by `wait_offset` (non-decreasing). Empty unless active.
    pending: VecDeque<Pending>,
    completions: Vec<(Ticket, Result<Outcome, ErrorCode>)>,
    /// Planted only: config changes written in part. Empty unless active.
    chained: Vec<Chained>,
    next_ticket: u64,
    /// The first committed batch that could not be applied; nothing after it is applied.
    apply_error: Option<ApplyError>,
    /// The latest time any input carried (inputs without one use it): the monotonic clock for
    /// broker sessions, the wall clock for record timestamps.
    now: Now,
}

impl MetadataQuorum {
    /// Opens the member over the recovered metadata log and the stored hard state, and replays
    /// the committed log into the image. `voters` are the quorum's members. Refuses a log with
    /// retention or one that does not start at offset 0: the image is rebuilt from the whole log.
    pub fn open(
        mut config: QuorumConfig,
        mut rng: Rng,
        hard_state: HardState,
        log: PartitionLog,
        voters: Membership,
        now: Now,
        reader: &impl SegmentReader,
    ) -> Result<MetadataQuorum, OpenError> {
        if log.config().retention_ms >= 0 || log.config().retention_bytes >= 0 {
            return Err(OpenError(
                "the metadata log must have no retention (retention.ms = retention.bytes = -1)"
                    .into(),
            ));
        }
        if log.log_start_offset() != 0 {
            return Err(OpenError(format!(
                "the metadata log starts at offset {}, and there are no image snapshots yet",
                log.log_start_offset()
            )));
        }
        if config.session_timeout_ms == 0 || config.producer_id_block_size <= 0 {
            return Err(OpenError(
                "session_timeout_ms and producer_id_block_size must be positive".into(),
            ));
        }
        config.raft.apply_entries = true;
        let replica = Replica::open(
            config.raft.clone(),
            rng.fork(),
            hard_state,
            log,
            voters,
            0,
            now.wall_ms,
        )?;
        let mut quorum = MetadataQuorum {
            config,
            replica,
            image: MetadataImage::new(),
            applied_end: 0,
            rng,
            active: None,
            pending: VecDeque::new(),
            completions: Vec::new(),
            chained: Vec::new(),
            next_ticket: 0,
            apply_error: None,
            now,
        };
        quorum.replica.poll(reader);
        quorum.after_input(reader);
        Ok(quorum)
    }

    // ---- Raft inputs (as for a data replica) -----------------------------------------------

    pub fn step(&mut self, msg: Message, now: Now, reader: &impl SegmentReader) {
        self.observe_time(now);
        self.replica.step(msg, now.wall_ms, reader);
        self.after_input(reader);
    }

    /// One tick of the Raft clock; on the active controller also fences brokers whose session
    /// expired and retries writing the cluster id.
    pub fn tick(&mut self, now: Now, reader: &impl SegmentReader) {
        self.observe_time(now);
        self.replica.tick(now.wall_ms, reader);
        self.after_input(reader);
        if let Some(active) = &self.active {
            let fence = controller::fence_expired(
                &active.image,
                &active.last_heartbeat_ms,
                now.mono_ms(),
                self.config.session_timeout_ms,
            );
            if !fence.is_empty() {
                // A refusal (the quorum is behind) is retried at the next tick.
                let _ = self.propose(fence, Request::Internal, None, reader);
            }
            self.propose_cluster_id(reader);
            self.advance_chained(reader);
        }
        self.after_input(reader);
    }

    /// Planted only: writes the next config of each change written in part whose entry before
    /// is applied; the last one carries the change's answer.
    fn advance_chained(&mut self, reader: &impl SegmentReader) {
        for mut c in std::mem::take(&mut self.chained) {
            if self.active.is_none() {
                self.completions
                    .push((c.ticket, Err(ErrorCode::NotController)));
                continue;
            }
            if c.after_offset >= self.applied_end {
                self.chained.push(c);
                continue;
            }
            let next = c.rest.pop_front().expect("a chain is never empty");
            let request = Request::AlterConfigs {
                topic_id: c.topic_id,
            };
            let last = c.rest.is_empty();
            let ticket = last.then_some(c.ticket);
            match self.propose(vec![next], request, ticket, reader) {
                Ok(()) if last => {}
                Ok(()) => {
                    c.after_offset = self
                        .active
                        .as_ref()
                        .and_then(|a| a.last_proposed_offset)
                        .expect("just proposed");
                    self.chained.push(c);
                }
                Err(e) => self.completions.push((c.ticket, Err(e.code))),
            }
        }
    }

    pub fn campaign(&mut self, force: bool, reader: &impl SegmentReader) {
        self.replica.campaign(force, reader);
        self.after_input(reader);
    }

    pub fn hard_state_persisted(&mut self, reader: &impl SegmentReader) {
        self.replica.hard_state_persisted(reader);
        self.after_input(reader);
    }

    pub fn on_synced(&mut self, sync: ReplicaSync, reader: &impl SegmentReader) {
        self.replica.on_synced(sync, reader);
        self.after_input(reader);
    }

    pub fn on_storage_failed(&mut self) {
        self.replica.on_storage_failed();
    }

    // ---- Controller requests ---------------------------------------------------------------

    /// CreateTopics, one topic.
    pub fn create_topic(
        &mut self,
        request: &CreateTopicRequest,
        now: Now,
        reader: &impl SegmentReader,
    ) -> Result<Ticket, ControllerError> {
        self.observe_time(now);
        self.check_active()?;
        let active = self.active.as_ref().expect("checked");
        let record = controller::create_topic(
            &active.image,
            request,
            &self.config.topic_defaults,
            &mut self.rng,
        )?;
        let name = request.name.clone();
        self.propose_request(vec![record], Request::CreateTopic { name }, reader)
    }

    /// DeleteTopics, one topic.
    pub fn delete_topic(
        &mut self,
        topic: TopicRef,
        now: Now,
        reader: &impl SegmentReader,
    ) -> Result<Ticket, ControllerError> {
        self.observe_time(now);
        self.check_active()?;
        let active = self.active.as_ref().expect("checked");
        let record = controller::delete_topic(&active.image, topic)?;
        let MetadataRecord::DeleteTopic { topic_id } = record else {
            unreachable!("delete_topic decides a DeleteTopic")
        };
        let by_name = matches!(topic, TopicRef::Name(_));
        self.propose_request(
            vec![record],
            Request::DeleteTopic { topic_id, by_name },
            reader,
        )
    }

    /// IncrementalAlterConfigs of one topic: removes `delete`, then sets `set`.
    pub fn alter_configs(
        &mut self,
        name: &str,
        set: &[(String, String)],
        delete: &[String],
        now: Now,
        reader: &impl SegmentReader,
    ) -> Result<Ticket, ControllerError> {
        self.observe_time(now);
        self.check_active()?;
        let active = self.active.as_ref().expect("checked");
        let record = controller::alter_configs(
            &active.image,
            name,
            set,
            delete,
            &self.config.topic_defaults.log,
        )?;
        let MetadataRecord::AlterTopicConfig { topic_id, .. } = record else {
            unreachable!("alter_configs decides an AlterTopicConfig")
        };
        if self
            .config
            .raft
            .planted
            .is(crate::planted::Bug::ConfigNotLogged)
        {
            // Planted: the controller changes its own images and answers at once; no record is
            // written, so no other node, and no replay of the log, ever sees the change.
            let active = self.active.as_mut().expect("checked");
            active.image.apply_unlogged(&record);
            self.image.apply_unlogged(&record);
            let ticket = self.issue_ticket();
            self.completions
                .push((ticket, Ok(Outcome::ConfigsAltered { topic_id })));
            return Ok(ticket);
        }
        if self
            .config
            .raft
            .planted
            .is(crate::planted::Bug::AlterConfigsNotAtomic)
            && matches!(&record, MetadataRecord::AlterTopicConfig { set, delete, .. }
                if set.len() + delete.len() > 1)
        {
            // Planted: one record per config, each its own entry, the next one written at the
            // first tick after the one before is applied; the answer waits for the last. A
            // failover in between leaves the change applied in part, and another change can
            // come in between.
            let MetadataRecord::AlterTopicConfig { set, delete, .. } = record else {
                unreachable!("matched above")
            };
            let mut singles: VecDeque<MetadataRecord> = set
                .into_iter()
                .map(|s| MetadataRecord::AlterTopicConfig {
                    topic_id,
                    set: vec![s],
                    delete: vec![],
                })
                .chain(
                    delete
                        .into_iter()
                        .map(|d| MetadataRecord::AlterTopicConfig {
                            topic_id,
                            set: vec![],
                            delete: vec![d],
                        }),
                )
                .collect();
            let first = singles.pop_front().expect("more than one");
            self.propose(vec![first], Request::Internal, None, reader)?;
            let ticket = self.issue_ticket();
            let after_offset = self
                .active
                .as_ref()
                .and_then(|a| a.last_proposed_offset)
                .expect("just proposed");
            self.chained.push(Chained {
                ticket,
                topic_id,
                rest: singles,
                after_offset,
            });
            self.after_input(reader);
            return Ok(ticket);
        }
        self.propose_request(vec![record], Request::AlterConfigs { topic_id }, reader)
    }

    /// CreatePartitions: grows `name` to `count` partitions.
    pub fn create_partitions(
        &mut self,
        name: &str,
        count: i32,
        assignment: Option<&[Vec<BrokerId>]>,
        now: Now,
        reader: &impl SegmentReader,
    ) -> Result<Ticket, ControllerError> {
        self.observe_time(now);
        self.check_active()?;
        let active = self.active.as_ref().expect("checked");
        let record =
            controller::create_partitions(&active.image, name, count, assignment, &mut self.rng)?;
        let MetadataRecord::CreatePartitions { topic_id, .. } = record else {
            unreachable!("create_partitions decides a CreatePartitions")
        };
        self.propose_request(vec![record], Request::CreatePartitions { topic_id }, reader)
    }

    /// A broker's heartbeat (which is also its registration). An unknown broker or a new
    /// incarnation is registered (fenced); a heartbeat of a broker whose registration is
    /// committed unfences it; otherwise nothing is written and the answer is the broker's
    /// state once everything proposed before is applied.
    #[allow(clippy::too_many_arguments)]
    pub fn broker_heartbeat(
        &mut self,
        node_id: BrokerId,
        incarnation: u64,
        host: &str,
        port: u16,
        rack: Option<&str>,
        now: Now,
        reader: &impl SegmentReader,
    ) -> Result<Ticket, ControllerError> {
        self.observe_time(now);
        let session_timeout_ms = self.config.session_timeout_ms;
        self.check_active()?;
        let active = self.active.as_ref().expect("checked");
        let request = controller::BrokerRegistrationRequest {
            node_id,
            incarnation,
            host: host.to_string(),
            port,
            rack: rack.map(str::to_string),
        };
        // Another incarnation of this controller's own node is certainly a finished run of
        // this process: it re-registers at once instead of waiting out the old session.
        let own = u64::try_from(node_id).is_ok_and(|id| id == self.config.raft.id);
        let last = if own {
            None
        } else {
            active.last_heartbeat_ms.get(&node_id).copied()
        };
        let mut record = controller::register_broker(
            &active.image,
            &request,
            last,
            now.mono_ms(),
            session_timeout_ms,
        )?;
        if record.is_none() {
            // Registered with this incarnation, at least speculatively. Unfence only once the
            // registration is committed: a broker is let in after a full round trip.
            let committed = self
                .image
                .broker(node_id)
                .is_some_and(|b| b.incarnation == incarnation);
            if committed {
                record = controller::unfence_broker(&active.image, node_id, incarnation)?;
            }
        }
        let active = self.active.as_mut().expect("checked above");
        active.last_heartbeat_ms.insert(node_id, now.mono_ms());
        let waiting = Request::Heartbeat {
            node_id,
            incarnation,
        };
        match record {
            Some(record) => self.propose_request(vec![record], waiting, reader),
            None => self.wait_request(waiting),
        }
    }

    /// AllocateProducerIds: the next block of `producer_id_block_size` ids for a registered
    /// broker. Blocks never overlap, across requests in flight and across controllers.
    pub fn allocate_producer_ids(
        &mut self,
        node_id: BrokerId,
        now: Now,
        reader: &impl SegmentReader,
    ) -> Result<Ticket, ControllerError> {
        self.observe_time(now);
        let block = self.config.producer_id_block_size;
        self.check_active()?;
        let active = self.active.as_ref().expect("checked");
        if active.image.broker(node_id).is_none() {
            return Err(ControllerError::new(
                ErrorCode::BrokerIdNotRegistered,
                format!("broker {node_id} is not registered"),
            ));
        }
        let first = active.image.producer_id_end();
        let Some(end) = first.checked_add(block) else {
            return Err(ControllerError::new(
                ErrorCode::UnknownServerError,
                "producer ids are exhausted",
            ));
        };
        let record = MetadataRecord::AllocateProducerIds { node_id, end };
        self.propose_request(
            vec![record],
            Request::ProducerIds {
                node_id,
                first,
                end,
            },
            reader,
        )
    }

    // ---- Outputs ---------------------------------------------------------------------------

    /// The next thing for the host: the replica's outputs in their order, then the answers to
    /// controller requests in the order they were decided.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<QuorumOutput> {
        if let Some(out) = self.replica.poll_output() {
            return Some(QuorumOutput::Replica(out));
        }
        if self.completions.is_empty() {
            return None;
        }
        let (ticket, result) = self.completions.remove(0);
        Some(QuorumOutput::Completion(ticket, result))
    }

    pub fn poll_sync(&mut self) -> Option<ReplicaSync> {
        self.replica.poll_sync()
    }

    // ---- State -----------------------------------------------------------------------------

    /// The committed image (everything applied so far).
    pub fn image(&self) -> &MetadataImage {
        &self.image
    }

    /// The image the active controller decides on: the committed image plus every record it
    /// proposed in its term (what its proposals are validated against); the committed image when
    /// not active.
    pub fn deciding_image(&self) -> &MetadataImage {
        self.active.as_ref().map_or(&self.image, |a| &a.image)
    }

    /// Offsets below this are applied.
    pub fn applied_end(&self) -> u64 {
        self.applied_end
    }

    pub fn leader(&self) -> Option<NodeId> {
        self.replica.leader()
    }

    /// The Raft leader (it may not be the active controller yet).
    pub fn is_leader(&self) -> bool {
        self.replica.is_leader()
    }

    /// The active controller: the leader, caught up with the log before its term.
    pub fn is_active(&self) -> bool {
        self.active.is_some()
    }

    pub fn term(&self) -> u64 {
        self.replica.term()
    }

    pub fn replica(&self) -> &Replica {
        &self.replica
    }

    pub fn apply_error(&self) -> Option<&ApplyError> {
        self.apply_error.as_ref()
    }

    pub fn check_invariants(&self) {
        self.replica.check_invariants();
        self.image.check_invariants();
        if self.apply_error.is_none() {
            assert_eq!(
                self.applied_end,
                self.replica.raft().applied_index(),
                "every committed entry handed out is applied"
            );
        }
        assert!(
            self.image
                .last_applied_offset()
                .is_none_or(|o| o < self.applied_end),
            "the image is within the applied prefix"
        );
        assert!(self.pending.len() + self.completions.len() <= METADATA_REQUESTS_IN_FLIGHT_MAX);
        match &self.active {
            None => assert!(
                self.pending.is_empty() && self.chained.is_empty(),
                "only the controller has waiters"
            ),
            Some(active) => {
                assert!(self.apply_error.is_none());
                assert!(self.replica.is_leader() && self.replica.term() == active.term);
                active.image.check_invariants();
                for b in active.image.brokers() {
                    assert!(active.last_heartbeat_ms.contains_key(&b.node_id) || b.fenced);
                }
                let mut batches = self.pending.iter().filter_map(|p| p.batch);
                if batches.next().is_none() {
                    assert_eq!(
                        active.image, self.image,
                        "with nothing in flight the speculative image is the committed one"
                    );
                }
                for b in self.pending.iter().filter_map(|p| p.batch) {
                    assert_eq!(b.term, active.term);
                    assert!(b.base_offset >= self.applied_end && b.last_offset >= b.base_offset);
                    assert!(active.last_proposed_offset >= Some(b.last_offset));
                }
            }
        }
        for pair in self.pending.iter().collect::<Vec<_>>().windows(2) {
            assert!(
                pair[0].wait_offset <= pair[1].wait_offset,
                "waiters in order"
            );
            if let (Some(a), Some(b)) = (pair[0].batch, pair[1].batch) {
                assert!(a.last_offset < b.base_offset, "batches in order");
            }
        }
        for p in &self.pending {
            assert!(
                p.wait_offset >= self.applied_end,
                "applied waiters are answered"
            );
        }
    }

    // ---- Internals -------------------------------------------------------------------------

    fn observe_time(&mut self, now: Now) {
        self.now = Now::new(
            self.now.instant.max(now.instant),
            self.now.wall_ms.max(now.wall_ms),
        );
    }

    /// Refuses a request unless this node is the active controller and has room for it.
    fn check_active(&self) -> Result<(), ControllerError> {
        if self.active.is_none() {
            return Err(ControllerError::not_controller());
        }
        if self.pending.len() + self.completions.len() >= METADATA_REQUESTS_IN_FLIGHT_MAX {
            return Err(ControllerError::new(
                ErrorCode::RequestTimedOut,
                "too many controller requests in flight",
            ));
        }
        Ok(())
    }

    fn issue_ticket(&mut self) -> Ticket {
        self.next_ticket += 1;
        Ticket(self.next_ticket)
    }

    fn propose_request(
        &mut self,
        records: Vec<MetadataRecord>,
        request: Request,
        reader: &impl SegmentReader,
    ) -> Result<Ticket, ControllerError> {
        let ticket = self.issue_ticket();
        self.propose(records, request, Some(ticket), reader)?;
        self.after_input(reader);
        Ok(ticket)
    }

    /// A request that writes nothing: answered once everything proposed before it is applied.
    fn wait_request(&mut self, request: Request) -> Result<Ticket, ControllerError> {
        let ticket = self.issue_ticket();
        let active = self.active.as_ref().expect("only the controller answers");
        match active.last_proposed_offset {
            Some(wait_offset) if wait_offset >= self.applied_end => {
                self.pending.push_back(Pending {
                    ticket: Some(ticket),
                    request,
                    batch: None,
                    wait_offset,
                });
            }
            _ => {
                let outcome = self.outcome(&request, None);
                self.completions.push((ticket, outcome));
            }
        }
        Ok(ticket)
    }

    /// Proposes `records` as one batch and applies them to the speculative image.
    fn propose(
        &mut self,
        records: Vec<MetadataRecord>,
        request: Request,
        ticket: Option<Ticket>,
        reader: &impl SegmentReader,
    ) -> Result<(), ControllerError> {
        assert!(!records.is_empty() && self.active.is_some());
        let now_ms = self.now.wall_ms;
        let timestamp = i64::try_from(now_ms).unwrap_or(i64::MAX);
        let mut builder = BatchBuilder::new(timestamp);
        for record in &records {
            builder.push(&NewRecord {
                timestamp,
                key: None,
                value: Some(record.to_bytes()),
                headers: vec![],
            });
        }
        let bytes = BytesMut::from(&builder.build()[..]);
        // The metadata log's batches are the controller's own, uncompressed, and its log keeps
        // them as they are (`compression.type=producer`): no codec is ever needed.
        let proposed = match self
            .replica
            .produce(bytes, now_ms, reader, &crate::batch::NoCodecs)
        {
            Ok(p) => p,
            Err(refusal) if refusal.code == ErrorCode::NotLeaderOrFollower => {
                return Err(ControllerError::not_controller())
            }
            Err(refusal) => {
                return Err(ControllerError::new(
                    refusal.code,
                    format!(
                        "the metadata log did not take the records: {}",
                        refusal.reason
                    ),
                ))
            }
        };
        assert!(!proposed.duplicate, "metadata batches are not idempotent");
        assert_eq!(
            proposed.last_offset - proposed.base_offset + 1,
            records.len() as u64
        );
        let active = self.active.as_mut().expect("checked above");
        assert_eq!(
            proposed.term, active.term,
            "proposed in the controller's term"
        );
        for (i, record) in records.iter().enumerate() {
            active.image.apply(proposed.base_offset + i as u64, record);
        }
        active.last_proposed_offset = Some(proposed.last_offset);
        self.pending.push_back(Pending {
            ticket,
            request,
            batch: Some(Batch {
                base_offset: proposed.base_offset,
                last_offset: proposed.last_offset,
                term: proposed.term,
            }),
            wait_offset: proposed.last_offset,
        });
        Ok(())
    }

    fn propose_cluster_id(&mut self, reader: &impl SegmentReader) {
        let Some(active) = &self.active else {
            return;
        };
        if active.image.cluster_id().is_none() {
            let record = MetadataRecord::SetClusterId {
                cluster_id: self.config.cluster_id,
            };
            let _ = self.propose(vec![record], Request::Internal, None, reader);
        }
    }

    /// After every input: apply what was committed, answer waiters, follow leadership.
    fn after_input(&mut self, reader: &impl SegmentReader) {
        loop {
            let committed = self.replica.take_committed();
            let mut own_term_started = false;
            for entry in committed {
                if self.apply_error.is_some() {
                    break;
                }
                if entry.kind == EntryKind::Empty && entry.term == self.replica.term() {
                    own_term_started = true;
                }
                self.apply_entry(&entry);
            }
            let took_effect = self.follow_leadership(own_term_started, reader);
            if !took_effect {
                break;
            }
        }
        if cfg!(any(debug_assertions, madsim)) {
            self.check_invariants();
        }
    }

    /// Applies one committed entry and answers the waiters it settles.
    fn apply_entry(&mut self, entry: &crate::raft::Entry) {
        let base_offset = entry.index - 1;
        let last_offset = entry.last - 1;
        let mut applied = Vec::new();
        if entry.kind == EntryKind::Normal {
            match decode_batch(&entry.payload, base_offset, last_offset) {
                Ok(records) => {
                    for (offset, record) in records {
                        applied.push(self.image.apply(offset, &record));
                    }
                }
                Err(e) => {
                    self.apply_error = Some(e);
                    return;
                }
            }
        }
        self.applied_end = entry.last;
        let this = Batch {
            base_offset,
            last_offset,
            term: entry.term,
        };
        while let Some(p) = self.pending.front() {
            if p.wait_offset > last_offset {
                break;
            }
            let p = self.pending.pop_front().expect("front exists");
            let Some(ticket) = p.ticket else {
                continue;
            };
            let result = match p.batch {
                Some(batch) if batch == this => self.outcome(&p.request, Some(&applied)),
                // Another entry took its place: it was cut by a new leader.
                Some(_) => Err(ErrorCode::NotController),
                None => self.outcome(&p.request, None),
            };
            self.completions.push((ticket, result));
        }
    }

    /// Activates or deactivates the controller. Returns whether it proposed anything (then the
    /// caller looks for newly committed entries again).
    fn follow_leadership(&mut self, own_term_started: bool, reader: &impl SegmentReader) -> bool {
        if self.apply_error.is_none() {
            if let Some(reset) = self.replica.take_reset() {
                self.apply_error = Some(ApplyError {
                    offset: reset,
                    reason: "a snapshot was installed; metadata image snapshots are not \
                             implemented"
                        .into(),
                });
            }
        }
        let leading_term =
            (self.replica.is_leader() && self.apply_error.is_none()).then(|| self.replica.term());
        if let Some(active) = &self.active {
            if leading_term != Some(active.term) {
                self.active = None;
                for c in std::mem::take(&mut self.chained) {
                    self.completions
                        .push((c.ticket, Err(ErrorCode::NotController)));
                }
                for p in std::mem::take(&mut self.pending) {
                    if let Some(ticket) = p.ticket {
                        self.completions
                            .push((ticket, Err(ErrorCode::NotController)));
                    }
                }
            }
        }
        if self.active.is_none() && own_term_started && leading_term.is_some() {
            // Everything before this term's first entry is applied: the image is complete.
            let now_ms = self.now.mono_ms();
            self.active = Some(Active {
                term: self.replica.term(),
                image: self.image.clone(),
                last_heartbeat_ms: self.image.brokers().map(|b| (b.node_id, now_ms)).collect(),
                last_proposed_offset: None,
            });
            self.propose_cluster_id(reader);
            return true;
        }
        false
    }

    /// A waiter's answer from the committed image; `applied` holds what applying its own
    /// records did.
    fn outcome(
        &self,
        request: &Request,
        applied: Option<&[Applied]>,
    ) -> Result<Outcome, ErrorCode> {
        let changed = applied.is_some_and(|a| a.iter().all(|x| *x == Applied::Changed));
        let image = &self.image;
        match request {
            Request::CreateTopic { name } => match image.topic_by_name(name) {
                Some(topic) if changed => Ok(Outcome::TopicCreated {
                    topic_id: topic.topic_id,
                    partitions: topic.partitions.len(),
                }),
                // The name was taken first (by another controller's record).
                Some(_) => Err(ErrorCode::TopicAlreadyExists),
                None => Err(ErrorCode::UnknownServerError),
            },
            Request::DeleteTopic { topic_id, by_name } => {
                if changed {
                    Ok(Outcome::TopicDeleted {
                        topic_id: *topic_id,
                    })
                } else if *by_name {
                    Err(ErrorCode::UnknownTopicOrPartition)
                } else {
                    Err(ErrorCode::UnknownTopicId)
                }
            }
            Request::AlterConfigs { topic_id } => {
                if changed {
                    Ok(Outcome::ConfigsAltered {
                        topic_id: *topic_id,
                    })
                } else {
                    Err(ErrorCode::UnknownTopicOrPartition)
                }
            }
            Request::CreatePartitions { topic_id } => match image.topic(topic_id) {
                Some(topic) if changed => Ok(Outcome::PartitionsCreated {
                    topic_id: *topic_id,
                    partitions: topic.partitions.len(),
                }),
                Some(_) => Err(ErrorCode::InvalidPartitions),
                None => Err(ErrorCode::UnknownTopicOrPartition),
            },
            Request::Heartbeat {
                node_id,
                incarnation,
            } => match image.broker(*node_id) {
                Some(b) if b.incarnation == *incarnation => Ok(Outcome::Broker {
                    node_id: *node_id,
                    incarnation: *incarnation,
                    fenced: b.fenced,
                }),
                Some(_) => Err(ErrorCode::StaleBrokerEpoch),
                None => Err(ErrorCode::BrokerIdNotRegistered),
            },
            Request::ProducerIds {
                node_id,
                first,
                end,
            } => {
                if changed {
                    Ok(Outcome::ProducerIds {
                        node_id: *node_id,
                        first: *first,
                        end: *end,
                    })
                } else if image.broker(*node_id).is_none() {
                    Err(ErrorCode::BrokerIdNotRegistered)
                } else {
                    Err(ErrorCode::UnknownServerError)
                }
            }
            Request::Internal => unreachable!("nobody waits for the controller's own records"),
        }
    }
}

/// The image a replay of the metadata log from scratch builds: `batches` are the log's batches
/// in offset order (as stored: data and control batches), each applied as
/// [`MetadataQuorum`] applies a committed entry. What a node's image must equal once it has
/// applied the same batches, however it got there (incrementally, across restarts).
pub fn replay_metadata_log<'a>(
    batches: impl IntoIterator<Item = &'a [u8]>,
) -> Result<MetadataImage, ApplyError> {
    let mut image = MetadataImage::new();
    let mut next_offset = 0u64;
    for bytes in batches {
        let header = BatchHeader::parse(bytes).map_err(|e| ApplyError {
            offset: next_offset,
            reason: format!("batch header: {e}"),
        })?;
        let (Ok(base_offset), Ok(last_offset)) = (
            u64::try_from(header.base_offset),
            u64::try_from(header.last_offset()),
        ) else {
            return Err(ApplyError {
                offset: next_offset,
                reason: "a negative offset".into(),
            });
        };
        if base_offset != next_offset || last_offset < base_offset {
            return Err(ApplyError {
                offset: next_offset,
                reason: format!("batch {base_offset}..={last_offset} where {next_offset} was next"),
            });
        }
        for (offset, record) in decode_batch(bytes, base_offset, last_offset)? {
            image.apply(offset, &record);
        }
        next_offset = last_offset + 1;
    }
    Ok(image)
}

/// The metadata records of a committed batch with their offsets; nothing for a control batch.
/// All records are decoded before any is applied, so a bad batch changes nothing.
fn decode_batch(
    bytes: &[u8],
    base_offset: u64,
    last_offset: u64,
) -> Result<Vec<(u64, MetadataRecord)>, ApplyError> {
    let fail = |reason: String| ApplyError {
        offset: base_offset,
        reason,
    };
    let header = BatchHeader::parse(bytes).map_err(|e| fail(format!("batch header: {e}")))?;
    if header.is_control() {
        return Ok(Vec::new());
    }
    if header.base_offset != base_offset as i64 || header.last_offset() != last_offset as i64 {
        return Err(fail(format!(
            "batch claims offsets {}..={}, stored at {base_offset}..={last_offset}",
            header.base_offset,
            header.last_offset()
        )));
    }
    let mut out = Vec::new();
    for record in Records::new(bytes).map_err(|e| fail(format!("batch: {e}")))? {
        let record = record.map_err(|e| fail(format!("record: {e}")))?;
        let offset = u64::try_from(record.offset_delta)
            .ok()
            .and_then(|d| base_offset.checked_add(d))
            .filter(|o| *o <= last_offset && out.last().is_none_or(|(p, _)| o > p))
            .ok_or_else(|| fail(format!("record offset delta {}", record.offset_delta)))?;
        let value = record
            .value
            .ok_or_else(|| fail(format!("record at offset {offset} has no value")))?;
        let decoded = MetadataRecord::decode(value).map_err(|e| ApplyError {
            offset,
            reason: format!("metadata record: {e:?}"),
        })?;
        out.push((offset, decoded));
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
