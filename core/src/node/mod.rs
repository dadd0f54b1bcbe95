//! One Sluice node as a single sans-IO state machine: every replica it hosts, its member of the
//! metadata quorum, the group coordinators, producer-id allocation, the table of client
//! requests waiting for an answer, and the protocol it speaks with its peers.
//!
//! **The contract** (quinn's shape). The host feeds inputs with [`Node::handle`] (a client
//! request, a peer message, a storage completion, or a timeout), drains everything the node
//! wants done with [`Node::poll_output`], and wakes it again by [`Node::poll_timeout`]:
//!
//! ```text
//! loop {
//!     input = next of: client request | peer message | storage completion | timeout
//!     node.handle(now, input, &disk)          // decides; reads stored bytes through `disk`
//!     while let Some(out) = node.poll_output() {
//!         Storage(op)  -> disk.execute(op)    // page-cache writes now; fsyncs as jobs off-loop
//!         Send         -> transport to the peer
//!         Reply        -> the client's connection
//!     }
//!     sleep until node.poll_timeout()
//! }
//! ```
//!
//! Outputs are data ([`Output`]); storage effects are [`StorageOp`]s for the [`Disk`] executor,
//! and each that promises an answer is answered by one [`StorageDone`] input. Anything that
//! depends on durability waits for it: an acks=all reply for the commit (a majority's fsyncs),
//! an acks=1 reply for its write to reach the OS, a vote or an append acknowledgement for the
//! fsync of the log and the stored hard state. Reads stay synchronous ([`LogReader`]; the reason
//! is in [`disk`]). Time arrives as [`Now`]: the monotonic instant for every timeout, the wall
//! clock only for record timestamps and retention.
//!
//! **Pipelined replication.** A leader's append leaves for its followers in the same drain as
//! the leader's own write of it; Raft counts the leader toward the commit only after its own
//! fsync. Followers acknowledge after theirs. No fsync runs on the host's event loop.
//!
//! **Peer and client input never panics the node.** Malformed peer messages are dropped and
//! counted; client requests get Kafka's error codes. A broken internal invariant panics
//! (`check_invariants`, run after every input in debug builds and the `ci` profile).

pub mod api;
pub mod disk;
mod hard_state;
pub mod peer;

mod admin;
mod config;
mod controller;
mod delete_records;
mod fetch;
mod groups;
mod offsets;
mod partitions;
mod produce;
mod producer_ids;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

pub use api::{ClientInfo, Reply, Request, RequestId, TopicKey};
pub use config::NodeConfig;
pub use disk::{Disk, Finished, Job, LogId, LogReader, OpenedLog, StorageDone, StorageOp};
pub use peer::{ControllerReply, ControllerRequest, GroupId, Leadership, PeerMessage};

use crate::batch::BatchCodec;
use crate::checker::replicas::Observation;
use crate::log::{ReadError, ReadIo, SegmentReader};
use crate::metadata::TopicId;
use crate::raft::NodeId;
use crate::rng::Rng;
use crate::time::{Instant, Now};

/// Client requests handled at most per [`Node::handle`] of a batch (the host may pass more
/// inputs between drains; this bounds the waiters a single call creates).
pub const WAITERS_MAX: usize = 64 * 1024;

/// A partition by topic name and index.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: i32,
}

impl TopicPartition {
    pub fn new(topic: impl Into<String>, partition: i32) -> TopicPartition {
        TopicPartition {
            topic: topic.into(),
            partition,
        }
    }

    /// Its directory under the data directory: `<topic>-<partition>`.
    pub fn dir(&self) -> std::path::PathBuf {
        std::path::PathBuf::from(self.to_string())
    }
}

impl std::fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.topic, self.partition)
    }
}

/// An input to [`Node::handle`].
#[derive(Debug)]
pub enum Input {
    /// [`Node::poll_timeout`] has passed (or the host just wants the node to look at the time).
    Timeout,
    /// A client request; its answer is an [`Output::Reply`] with the same id, except for an
    /// acks=0 produce, which gets none.
    Client {
        request: RequestId,
        body: Request,
        client: ClientInfo,
    },
    /// A message from a peer node (the transport knows who sent it).
    Peer { from: NodeId, message: PeerMessage },
    /// A storage op's completion.
    Storage(StorageDone),
}

/// What the node wants done (see [`Node::poll_output`]).
#[derive(Debug)]
pub enum Output {
    /// A storage effect, for [`Disk::execute`], in order.
    Storage(StorageOp),
    /// A message for a peer (the transport may drop it: every sender retries or repeats).
    Send { to: NodeId, message: PeerMessage },
    /// The answer to a client request.
    Reply { request: RequestId, reply: Reply },
    /// The node is registered with the controller and unfenced: it may serve clients (said once).
    Ready,
    /// A leadership or high-watermark change, for the simulator's checkers (only with
    /// [`NodeConfig::observe`]).
    Observe(Observation),
    /// The node cannot go on: its view of the cluster (the metadata log) cannot be kept. The
    /// host should stop the process.
    Stop { reason: String },
}

/// Reads of one log through the host's [`LogReader`].
struct View<'a, R> {
    disk: &'a R,
    log: LogId,
}

impl<R: LogReader> SegmentReader for View<'_, R> {
    fn read_at(&self, io: ReadIo) -> Result<bytes::Bytes, ReadError> {
        self.disk.read_at(self.log, io)
    }
}

/// What the node knows of a topic from the metadata image.
#[derive(Debug)]
struct TopicState {
    id: TopicId,
    configs: BTreeMap<String, String>,
    /// Each partition's replicas, preferred leader first.
    assignments: Vec<Vec<i32>>,
}

impl TopicState {
    fn partitions(&self) -> i32 {
        self.assignments.len() as i32
    }
}

/// The node (see the module docs).
pub struct Node {
    config: NodeConfig,
    /// Compresses and decompresses record batches for `compression.type` rewrites: a pure
    /// function the shell supplies (core carries no codec libraries).
    batch_codec: Box<dyn BatchCodec>,
    rng: Rng,
    /// Drawn at each start: tells the controller this is a new run of the node.
    incarnation: u64,
    /// The latest input's time.
    now: Now,
    outputs: VecDeque<Output>,
    next_log_id: u64,
    /// This node's member of the metadata quorum; topics and partitions follow its image.
    meta: controller::MetaSlot,
    /// The quorum's applied end when the partitions were last reconciled with the image.
    applied_metadata_end: u64,
    /// After the metadata log was reopened: the applied end before. The image is replayed from
    /// the start, and until the replay is back there it lacks topics this node hosts (a partial
    /// image would have their partitions closed and their directories removed), so the
    /// partitions are reconciled with it only from there on. Zero otherwise.
    metadata_replay_floor: u64,
    topics: BTreeMap<String, TopicState>,
    topic_ids: BTreeMap<TopicId, String>,
    partitions: BTreeMap<TopicPartition, partitions::LogSlot<crate::replica::Replica>>,
    /// Which hosted partition (or the metadata log) owns each log id.
    log_owners: BTreeMap<LogId, partitions::Owner>,
    /// Raft groups of the hosted partitions, for routing peers' messages.
    group_of: BTreeMap<GroupId, TopicPartition>,
    cluster: controller::ClusterState,
    producer_ids: producer_ids::ProducerIds,
    produce_waiters: Vec<produce::ProduceWaiter>,
    fetch_waiters: Vec<fetch::FetchWaiter>,
    admin: admin::AdminWaiters,
    groups: groups::Groups,
    /// Set when some high watermark moved; parked fetches then look again.
    high_watermark_moved: bool,
    next_retention: Instant,
    /// When the log cleaner looks for work next (sooner while a cleaning is under way).
    next_clean: Instant,
    /// When the scrubber reads its next step (`None`: scrubbing is off).
    next_scrub: Option<Instant>,
    /// The partition the scrubber read last; it goes on with the next one.
    scrubbed_last: Option<TopicPartition>,
    ready_sent: bool,
    /// Per Raft group: the last high watermark and leader term reported as observations.
    observed: BTreeMap<String, (u64, u64, bool)>,
    /// Peer messages dropped because they were malformed or not for this node.
    peer_messages_dropped: u64,
    /// Partitions with input since their last group-commit look.
    dirty: BTreeSet<TopicPartition>,
    /// Controller requests decided where no storage reader was at hand, sent after the input.
    pending_controller_calls: Vec<ControllerRequest>,
    /// Damaged batches reads met during this input (reads borrow the node immutably), handled
    /// at its end ([`Node::on_read_damage`]).
    read_damage: std::cell::RefCell<Vec<(TopicPartition, crate::replica::ReadDamage)>>,
}

impl Node {
    /// A node that first opens its metadata log (the [`StorageOp::Open`] it hands out), then the
    /// partitions the metadata assigns to it. `seed` drives every random choice it makes (topic
    /// ids, election jitter, member ids): the host draws it from the OS, the simulator from its
    /// seed. `batch_codec` compresses and decompresses the batches a topic's `compression.type`
    /// has the leader rewrite.
    pub fn new(
        config: NodeConfig,
        batch_codec: Box<dyn BatchCodec>,
        seed: u64,
        now: Now,
    ) -> Result<Node, String> {
        config.validate()?;
        let mut rng = Rng::new(seed);
        let incarnation = rng.next_u64();
        let mut node = Node {
            next_retention: now.instant.plus_millis(config.retention_check_interval_ms),
            next_clean: now.instant.plus_millis(config.log_cleaner_backoff_ms),
            next_scrub: (config.scrub_bytes_per_sec > 0)
                .then(|| now.instant.plus_millis(crate::limits::SCRUB_INTERVAL_MS)),
            scrubbed_last: None,
            cluster: controller::ClusterState::new(now.instant),
            config,
            batch_codec,
            rng,
            incarnation,
            now,
            outputs: VecDeque::new(),
            next_log_id: 0,
            meta: controller::MetaSlot::placeholder(),
            applied_metadata_end: 0,
            metadata_replay_floor: 0,
            topics: BTreeMap::new(),
            topic_ids: BTreeMap::new(),
            partitions: BTreeMap::new(),
            log_owners: BTreeMap::new(),
            group_of: BTreeMap::new(),
            producer_ids: producer_ids::ProducerIds::default(),
            produce_waiters: Vec::new(),
            fetch_waiters: Vec::new(),
            admin: admin::AdminWaiters::default(),
            groups: groups::Groups::default(),
            high_watermark_moved: false,
            ready_sent: false,
            observed: BTreeMap::new(),
            peer_messages_dropped: 0,
            dirty: BTreeSet::new(),
            pending_controller_calls: Vec::new(),
            read_damage: Default::default(),
        };
        node.open_metadata(Vec::new());
        Ok(node)
    }

    /// Takes one input and decides what follows. `disk` serves reads of stored bytes.
    pub fn handle(&mut self, now: Now, input: Input, disk: &impl LogReader) {
        // The monotonic clock never goes back here, whatever the host's does. The wall clock is
        // taken as the host reads it, as Kafka reads its own for every timestamp and retention
        // check: held at its largest reading, one reading a day ahead (an NTP step, a resumed
        // VM) kept retention deleting records as a day old until the next restart. Every use of
        // it is a comparison or saturates, so a step back is harmless.
        self.now = Now::new(self.now.instant.max(now.instant), now.wall_ms);
        match input {
            Input::Timeout => {}
            Input::Client {
                request,
                body,
                client,
            } => self.on_client(request, body, client, disk),
            Input::Peer { from, message } => self.on_peer_message(from, message, disk),
            Input::Storage(done) => self.on_storage(done, disk),
        }
        self.after_input(disk);
        if cfg!(any(debug_assertions, madsim)) {
            self.check_invariants();
        }
    }

    /// The next thing to do, in order.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When the node next wants an [`Input::Timeout`] (a tick, a deadline of a waiting request,
    /// a coordinator's timer, retention, the cleaner, a spaced group commit).
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut at = self
            .cluster
            .next_tick
            .min(self.next_retention)
            .min(self.next_clean);
        if let Some(scrub) = self.next_scrub {
            at = at.min(scrub);
        }
        let deadlines = self
            .produce_waiters
            .iter()
            .map(|w| w.deadline)
            .chain(self.fetch_waiters.iter().map(|w| w.deadline))
            .chain(self.admin.deadlines())
            .chain(self.producer_ids.deadlines())
            .chain(self.cluster.deadlines())
            .chain(self.groups.next_deadline())
            .chain(self.next_sync_start());
        for d in deadlines {
            at = at.min(d);
        }
        Some(at)
    }

    /// This node is registered and unfenced in its own image.
    pub fn is_ready(&self) -> bool {
        self.meta.quorum().is_some_and(|q| {
            q.image()
                .broker(self.config.node_id)
                .is_some_and(|b| !b.fenced && b.incarnation == self.incarnation)
        })
    }

    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// Turns [`Output::Observe`] on or off (the simulator's checkers).
    pub fn set_observe(&mut self, observe: bool) {
        self.config.observe = observe;
    }

    /// Partitions hosted here (open or opening).
    pub fn hosted_partitions(&self) -> usize {
        self.partitions.len()
    }

    /// Topics known from the metadata image.
    pub fn topic_count(&self) -> usize {
        self.topics.len()
    }

    /// Peer messages dropped as malformed, plus appends whose payload disagreed with their entry.
    pub fn peer_messages_dropped(&self) -> u64 {
        self.peer_messages_dropped
            + self
                .partitions
                .values()
                .filter_map(|p| p.replica())
                .map(|r| r.appends_refused())
                .sum::<u64>()
            + self
                .meta
                .quorum()
                .map_or(0, |q| q.replica().appends_refused())
    }

    /// Whether every log the node asked to open is open and nothing waits on storage to settle.
    pub fn is_settled(&self) -> bool {
        self.meta.quorum().is_some() && self.partitions.values().all(|p| p.replica().is_some())
    }

    /// Every machine's invariants, and the node's own: waiters within bounds, log ownership
    /// consistent.
    pub fn check_invariants(&self) {
        self.meta.check_invariants(&"the metadata log");
        for (tp, p) in &self.partitions {
            p.check_invariants(tp);
            assert_eq!(
                self.log_owners.get(&p.log()),
                Some(&partitions::Owner::Partition(tp.clone())),
                "{tp}: its log is owned by it"
            );
        }
        for (log, owner) in &self.log_owners {
            match owner {
                partitions::Owner::Metadata => {
                    assert_eq!(self.meta.log(), *log, "{log}: the metadata log")
                }
                partitions::Owner::Partition(tp) => assert_eq!(
                    self.partitions.get(tp).map(|p| p.log()),
                    Some(*log),
                    "{log}: owned by {tp}"
                ),
            }
        }
        assert!(self.produce_waiters.len() <= WAITERS_MAX);
        assert!(self.fetch_waiters.len() <= WAITERS_MAX);
        self.groups.check_invariants();
        self.cluster.check_invariants();
        for (name, t) in &self.topics {
            assert_eq!(
                self.topic_ids.get(&t.id),
                Some(name),
                "{name}: its id maps back"
            );
        }
    }

    // ---- Dispatch --------------------------------------------------------------------------

    fn on_client(
        &mut self,
        request: RequestId,
        body: Request,
        client: ClientInfo,
        disk: &impl LogReader,
    ) {
        let reply = match body {
            Request::Metadata(r) => Reply::Metadata(self.metadata(r)),
            Request::CreateTopics(r) => return self.create_topics(request, r, disk),
            Request::DeleteTopics(r) => return self.delete_topics(request, r, disk),
            Request::CreatePartitions(r) => return self.create_partitions(request, r, disk),
            Request::DescribeConfigs(r) => Reply::DescribeConfigs(self.describe_configs(r)),
            Request::AlterConfigs(r) => return self.alter_configs(request, r, disk),
            Request::ListOffsets(r) => Reply::ListOffsets(self.list_offsets(r, disk)),
            Request::DeleteRecords(r) => return self.delete_records(request, r, disk),
            Request::OffsetForLeaderEpoch(r) => {
                Reply::OffsetForLeaderEpoch(self.offset_for_leader_epoch(r))
            }
            Request::InitProducerId(r) => return self.init_producer_id(request, r),
            Request::Produce(r) => return self.produce(request, r, disk),
            Request::Fetch(r) => return self.fetch(request, r, disk),
            Request::FindCoordinator(r) => Reply::FindCoordinator(self.find_coordinator(r)),
            Request::JoinGroup(r) => return self.join_group(request, r, client, disk),
            Request::SyncGroup(r) => return self.sync_group(request, r, disk),
            Request::Heartbeat(r) => Reply::Heartbeat(self.heartbeat_group(r, disk)),
            Request::LeaveGroup(r) => {
                let (code, members) = self.leave_group(r, disk);
                Reply::LeaveGroup(code, members)
            }
            Request::OffsetCommit(r) => return self.offset_commit(request, r, disk),
            Request::OffsetFetch(r) => Reply::OffsetFetch(self.offset_fetch(r)),
            Request::OffsetDelete(r) => return self.offset_delete(request, r, disk),
            Request::DescribeGroups(r) => Reply::DescribeGroups(self.describe_groups(r)),
            Request::ListGroups(r) => {
                let (code, groups) = self.list_groups(&r);
                Reply::ListGroups(code, groups)
            }
            Request::DeleteGroups(r) => return self.delete_groups(request, r, disk),
            Request::Acls(r) => Reply::Acls(admin::acls(r)),
        };
        self.reply(request, reply);
    }

    fn reply(&mut self, request: RequestId, reply: Reply) {
        self.outputs.push_back(Output::Reply { request, reply });
    }

    fn send(&mut self, to: NodeId, message: PeerMessage) {
        debug_assert_ne!(to, self.config.node_id as u64, "nothing is sent to oneself");
        self.outputs.push_back(Output::Send { to, message });
    }

    /// After every input: time-driven work, then what became answerable.
    fn after_input(&mut self, disk: &impl LogReader) {
        let now = self.now.instant;
        if now >= self.cluster.next_tick {
            self.cluster.next_tick = now.plus_millis(self.config.raft_tick_ms.max(1));
            self.on_tick(disk);
        }
        if !self.ready_sent && self.is_ready() {
            self.ready_sent = true;
            self.outputs.push_back(Output::Ready);
        }
        if now >= self.next_retention {
            self.next_retention = now.plus_millis(self.config.retention_check_interval_ms);
            self.enforce_retention(disk);
        }
        if self.next_scrub.is_some_and(|at| now >= at) {
            self.next_scrub = Some(now.plus_millis(crate::limits::SCRUB_INTERVAL_MS));
            self.scrub_logs(disk);
        }
        if now >= self.next_clean {
            self.clean_logs(disk);
        }
        for request in std::mem::take(&mut self.pending_controller_calls) {
            let duplicate = match &request {
                ControllerRequest::CreateTopic { name, .. } => self.cluster.calling(
                    |r| matches!(r, ControllerRequest::CreateTopic { name: n, .. } if n == name),
                ),
                ControllerRequest::AllocateProducerIds { .. } => self
                    .cluster
                    .calling(|r| matches!(r, ControllerRequest::AllocateProducerIds { .. })),
                // Client requests are forwarded at once (`call_controller_for`), never queued.
                ControllerRequest::Heartbeat { .. } | ControllerRequest::AlterConfigs { .. } => {
                    false
                }
            };
            if !duplicate {
                self.call_controller(request, disk);
            }
        }
        self.drive_coordinators(disk);
        self.start_syncs();
        self.answer_produce_waiters();
        self.answer_fetch_waiters(disk);
        self.expire_admin_waiters();
        for (tp, damage) in self.read_damage.take() {
            self.on_read_damage(&tp, damage);
        }
    }

    fn next_log_id(&mut self) -> LogId {
        self.next_log_id += 1;
        LogId(self.next_log_id)
    }

    /// A spaced group commit's start, when one waits for `flush_interval_ms`.
    fn next_sync_start(&self) -> Option<Instant> {
        if self.config.flush_interval_ms == 0 {
            return None;
        }
        self.partitions
            .values()
            .filter_map(|p| p.next_sync_start(self.config.flush_interval_ms))
            .chain(self.meta.next_sync_start(self.config.flush_interval_ms))
            .min()
    }

    /// Milliseconds until `deadline`, for a request's timeout.
    fn deadline_after(&self, timeout_ms: u64) -> Instant {
        self.now.instant + Duration::from_millis(timeout_ms)
    }
}
