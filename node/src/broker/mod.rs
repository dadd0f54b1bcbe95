//! The broker: one task that owns every partition and answers requests.
//!
//! The loop is short on purpose (STYLE.md, rule 9): take the next input (a request, a finished
//! fsync, or a timer), let the core state machines decide, execute their storage effects, start
//! group commits, and answer whatever became answerable. Connections never touch broker state;
//! they send decoded requests here and write back the responses in order.
//!
//! Durability contract (docs/architecture.md): acks=all is answered once the high watermark (the
//! end of the fsynced prefix) covers the batch; acks=1 once the batch was handed to the OS;
//! acks=0 gets no answer. Fetch never returns data above the high watermark.

mod admin;
mod fetch;
mod groups;
mod hard_state;
mod leader_epoch;
mod peers;
mod produce;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kafka_protocol::messages::{ApiKey, RequestKind, ResponseKind};
pub use sluice_core::checker::replicas::Observation;
use sluice_core::log::{LogConfig, LogStore, PartitionLog};
use sluice_core::raft::{HardState, Membership, RaftConfig};
use sluice_core::replica::{Replica, ReplicaSync};
use sluice_core::rng::Rng;
use sluice_core::storage::Storage;
use sluice_core::ErrorCode;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use uuid::Uuid;

use crate::config::Config;
use crate::peer::{GroupId, PeerMessage};
use crate::rpc::{Inbox, Transport};
use crate::wire::Request;
use peers::{ControllerCall, MetaGroup, TicketOwner};
use sluice_core::metadata::Ticket;
use sluice_core::metadata::TopicId;

pub use fetch::FetchWaiter;
pub use produce::ProduceWaiter;

/// A request from a connection; `reply` is `None` when the client expects no answer (acks=0).
#[derive(Debug)]
pub struct Envelope {
    pub request: Request,
    pub reply: Option<oneshot::Sender<ResponseKind>>,
    /// The client's address (DescribeGroups shows it as a member's host).
    pub peer: Option<std::net::SocketAddr>,
}

/// Requests handled per wake-up before the broker starts fsyncs and answers waiters; bounds the
/// latency one busy connection can add to the others.
const REQUESTS_PER_STEP_MAX: usize = 256;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: i32,
}

#[derive(Debug)]
struct TopicState {
    id: Uuid,
    partitions: i32,
    configs: BTreeMap<String, String>,
    log_config: LogConfig,
    /// Each partition's replicas, preferred leader first.
    assignments: Vec<Vec<i32>>,
}

struct PartitionState<S: Storage> {
    /// Raft over the partition log. Single node: a group of one voter, which elects itself at
    /// once and commits on its own fsync.
    replica: Replica,
    /// Behind a `RefCell` so the replica can read through it while the broker holds both.
    store: RefCell<LogStore<S>>,
    /// Bumped when the partition is reopened, so a late fsync result of the old instance is
    /// recognised and ignored.
    generation: u64,
    last_sync_start: Option<Instant>,
    /// Whether it led at the last look (a new leadership is announced to the peers).
    was_leader: bool,
}

struct SyncDone {
    tp: TopicPartition,
    generation: u64,
    request: ReplicaSync,
    result: io::Result<()>,
}

pub struct Broker<S: Storage> {
    config: Config,
    storage: S,
    /// This node's member of the metadata quorum; topics and partitions follow its image.
    meta: MetaGroup<S>,
    /// The quorum's applied end when the partitions were last reconciled with the image.
    applied_metadata_end: u64,
    /// The node-to-node transport and its inbox; absent on a node without peers (the inbox is
    /// taken by `run`).
    transport: Option<Transport<PeerMessage>>,
    inbox: Option<Inbox<PeerMessage>>,
    /// Drawn at each start: tells the controller this is a new run of the broker.
    incarnation: u64,
    topics: BTreeMap<String, TopicState>,
    topic_ids: BTreeMap<Uuid, String>,
    partitions: BTreeMap<TopicPartition, PartitionState<S>>,
    /// Partitions with appends not yet covered by a started fsync.
    dirty: BTreeSet<TopicPartition>,
    /// Raft groups of the hosted partitions, for routing peers' messages.
    group_of: BTreeMap<GroupId, TopicPartition>,
    /// Partition leaders announced by peers: (topic id, partition) -> (term, leader).
    leaders: BTreeMap<(TopicId, i32), (u64, u64)>,
    /// Quorum requests this node (as controller) waits on, and who asked.
    ticket_owners: BTreeMap<Ticket, TicketOwner>,
    /// Controller requests this node made, by call id.
    calls: BTreeMap<u64, ControllerCall>,
    next_call_id: u64,
    ticks: u64,
    next_tick: Instant,
    /// Producer id blocks from the controller: `[first, end)` ranges, the current one first.
    producer_ids: Vec<(i64, i64)>,
    producer_id_waiters: Vec<admin::ProducerIdWaiter>,
    admin_waiters: BTreeMap<u64, admin::AdminWaiter>,
    next_admin_waiter: u64,
    /// Told once this node is registered and unfenced (it may serve clients).
    ready: Option<oneshot::Sender<()>>,
    produce_waiters: Vec<ProduceWaiter>,
    fetch_waiters: Vec<FetchWaiter>,
    sync_tx: mpsc::UnboundedSender<SyncDone>,
    sync_rx: mpsc::UnboundedReceiver<SyncDone>,
    /// Set when a group commit moved some high watermark; parked fetches then look again.
    high_watermark_moved: bool,
    /// Seeded once from the OS (or madsim) and used for topic ids.
    rng: u64,
    next_retention: Instant,
    /// When the log cleaner looks for work next (sooner while a cleaning is under way).
    next_clean: Instant,
    /// Told about leaderships and commits (the simulator's cluster checkers); usually absent.
    observer: Option<Observer>,
    /// How long each fsync takes in simulated time (the simulator's slow disks); absent for real.
    sync_delay: Option<SyncDelay>,
    /// Per group: the last high watermark and leader term reported to the observer.
    observed: BTreeMap<String, (u64, u64)>,
    /// Group coordinators of the `__consumer_offsets` partitions this broker leads.
    coordinators: BTreeMap<i32, groups::CoordinatorSlot>,
    group_waiters: BTreeMap<sluice_core::group::RequestId, groups::GroupWaiter>,
    next_group_request: sluice_core::group::RequestId,
    /// DeleteGroups split over several coordinators: parent -> (answers so far, parts left);
    /// and each part's parent.
    group_gathers: BTreeMap<u64, (Vec<(String, ErrorCode)>, usize)>,
    group_parents: BTreeMap<u64, u64>,
}

/// Receives what the replicas on a broker report (see [`Broker::set_observer`]).
pub type Observer = std::sync::Arc<dyn Fn(Observation) + Send + Sync>;

/// Says how long the next fsync should take in simulated time (see [`Broker::set_sync_delay`]).
pub type SyncDelay = std::sync::Arc<dyn Fn() -> Duration + Send + Sync>;

/// Wall-clock milliseconds: record timestamps and retention are in Kafka's epoch milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn partition_dir(tp: &TopicPartition) -> PathBuf {
    PathBuf::from(format!("{}-{}", tp.topic, tp.partition))
}

impl<S: Storage> Broker<S> {
    /// Reports every replica's leaderships and high watermarks to `observer` from now on (the
    /// simulator checks them across nodes).
    pub fn set_observer(&mut self, observer: Observer) {
        self.observer = Some(observer);
    }

    /// Delays the completion of every fsync by what `delay` says at the time (the simulator's
    /// slow disks: its in-memory store syncs at once).
    pub fn set_sync_delay(&mut self, delay: SyncDelay) {
        self.sync_delay = Some(delay);
    }

    /// Opens the data directory: the metadata log first (its image names the partitions this
    /// node hosts), then every partition it assigns here.
    pub fn open(config: Config, storage: S) -> io::Result<Broker<S>> {
        let mut rng = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish()
            | 1;
        if storage.exists(std::path::Path::new(crate::metadata::LEGACY_METADATA_FILE)) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "this data directory was written by an older Sluice (it has {}); its topics \
                     would have to be re-created: start with an empty data directory",
                    crate::metadata::LEGACY_METADATA_FILE
                ),
            ));
        }
        let meta = Self::open_metadata(&config, &storage, &mut rng, 0)?;
        let (sync_tx, sync_rx) = mpsc::unbounded_channel();
        let incarnation = splitmix(&mut rng);
        let now = Instant::now();
        let mut broker = Broker {
            next_retention: now + Duration::from_millis(config.retention_check_interval_ms),
            next_clean: now + Duration::from_millis(config.log_cleaner_backoff_ms),
            next_tick: now,
            config,
            storage,
            meta,
            applied_metadata_end: 0,
            transport: None,
            inbox: None,
            incarnation,
            topics: BTreeMap::new(),
            topic_ids: BTreeMap::new(),
            partitions: BTreeMap::new(),
            dirty: BTreeSet::new(),
            group_of: BTreeMap::new(),
            leaders: BTreeMap::new(),
            ticket_owners: BTreeMap::new(),
            calls: BTreeMap::new(),
            next_call_id: 0,
            ticks: 0,
            producer_ids: Vec::new(),
            producer_id_waiters: Vec::new(),
            admin_waiters: BTreeMap::new(),
            next_admin_waiter: 0,
            ready: None,
            produce_waiters: Vec::new(),
            fetch_waiters: Vec::new(),
            sync_tx,
            sync_rx,
            high_watermark_moved: false,
            rng,
            observer: None,
            sync_delay: None,
            observed: BTreeMap::new(),
            coordinators: BTreeMap::new(),
            group_waiters: BTreeMap::new(),
            next_group_request: 0,
            group_gathers: BTreeMap::new(),
            group_parents: BTreeMap::new(),
        };
        broker.after_metadata_input();
        tracing::info!(
            metadata_end = broker.meta.quorum.replica().log().log_end_offset(),
            topics = broker.topics.len(),
            partitions = broker.partitions.len(),
            "data directory opened"
        );
        Ok(broker)
    }

    /// Connects the broker to its peers (a node of a multi-node cluster).
    pub fn attach_peers(&mut self, transport: Transport<PeerMessage>, inbox: Inbox<PeerMessage>) {
        self.transport = Some(transport);
        self.inbox = Some(inbox);
    }

    /// `ready` is told once this node is registered and unfenced: the listener should accept
    /// clients only then, as a Kafka broker serves only once it is RUNNING.
    pub fn notify_ready(&mut self, ready: oneshot::Sender<()>) {
        self.ready = Some(ready);
    }

    /// Recovers a partition's log and hard state and starts its replica. A single-node group
    /// elects itself at once, and so does the preferred replica (the first assigned) of a new
    /// group, as Kafka's controller names a new partition's leader at once instead of leaving
    /// it leaderless for an election timeout.
    fn open_partition(
        &mut self,
        tp: &TopicPartition,
        dir: PathBuf,
        log_config: LogConfig,
        generation: u64,
        voters: impl IntoIterator<Item = u64>,
    ) -> io::Result<PartitionState<S>> {
        let (hard_state, log, store) = open_replica_log(&self.storage, tp, dir, log_config)?;
        let me = self.config.node_id as u64;
        let raft_config = RaftConfig {
            apply_entries: false,
            election_ticks: peers::election_ticks(&self.config),
            append_bytes_max: self.config.replica_fetch_max_bytes,
            planted: self.config.planted,
            ..RaftConfig::new(me)
        };
        let voters: Vec<u64> = voters.into_iter().collect();
        let new_group = hard_state.term == 0 && log.log_end_offset() == 0;
        let preferred = new_group && voters.first() == Some(&me);
        let voters = Membership::new(voters);
        let alone = voters.voters() == [me];
        let rng = Rng::new(splitmix(&mut self.rng));
        let replica = Replica::open(raft_config, rng, hard_state, log, voters, 0, now_ms())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{tp}: {e}")))?;
        let store = RefCell::new(store);
        let mut part = PartitionState {
            replica,
            store,
            generation,
            last_sync_start: None,
            was_leader: false,
        };
        if alone || preferred {
            // A group of one needs no election timeout; a new group's preferred replica wins
            // its first election unopposed (the others have no log and no vote yet).
            part.replica.campaign(true, &part.store);
        }
        Ok(part)
    }

    /// Executes what a partition's replica asked for: storage ops, and the hard state (written
    /// durably here, before anything that depends on it can leave). Group commits are started
    /// separately ([`Broker::start_syncs`]).
    fn flush_partition(&mut self, tp: &TopicPartition) -> io::Result<()> {
        let Some(part) = self.partitions.get_mut(tp) else {
            return Ok(());
        };
        loop {
            while let Some(op) = part.replica.poll_op() {
                part.store.borrow_mut().apply(op)?;
            }
            if let Some(hs) = part.replica.take_hard_state() {
                let dir = part.store.borrow().dir().to_path_buf();
                hard_state::store(&self.storage, &dir, hs)?;
                part.replica.hard_state_persisted(&part.store);
                continue;
            }
            return Ok(());
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Runs until every sender of `requests` is gone.
    pub async fn run(mut self, mut requests: mpsc::Receiver<Envelope>) {
        let mut inbox = self.inbox.take();
        loop {
            let deadline = self.next_deadline();
            tokio::select! {
                biased;
                Some(done) = self.sync_rx.recv() => self.on_sync_done(done),
                Some((from, msg)) = async {
                    match inbox.as_mut() {
                        Some(inbox) => inbox.recv().await,
                        None => std::future::pending().await,
                    }
                } => {
                    self.on_peer_message(from, msg);
                    if let Some(inbox) = inbox.as_mut() {
                        for _ in 1..REQUESTS_PER_STEP_MAX {
                            match inbox.try_recv() {
                                Ok((from, msg)) => self.on_peer_message(from, msg),
                                Err(_) => break,
                            }
                        }
                    }
                }
                envelope = requests.recv() => {
                    let Some(envelope) = envelope else { break };
                    self.handle(envelope);
                    for _ in 1..REQUESTS_PER_STEP_MAX {
                        match requests.try_recv() {
                            Ok(envelope) => self.handle(envelope),
                            Err(_) => break,
                        }
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {}
            }
            self.after_step();
        }
        tracing::info!("broker stopped");
    }

    fn next_deadline(&self) -> Instant {
        let mut deadline = self.next_retention.min(self.next_tick).min(self.next_clean);
        for w in &self.producer_id_waiters {
            deadline = deadline.min(w.deadline);
        }
        for w in self.admin_waiters.values() {
            deadline = deadline.min(w.deadline);
        }
        for w in &self.produce_waiters {
            deadline = deadline.min(w.deadline);
        }
        for w in &self.fetch_waiters {
            deadline = deadline.min(w.deadline);
        }
        if let Some(at_ms) = self.next_coordinator_deadline_ms() {
            let wait_ms = at_ms.saturating_sub(now_ms());
            deadline = deadline.min(Instant::now() + Duration::from_millis(wait_ms));
        }
        if self.config.flush_interval_ms > 0 {
            let interval = Duration::from_millis(self.config.flush_interval_ms);
            for tp in &self.dirty {
                if let Some(start) = self.partitions.get(tp).and_then(|p| p.last_sync_start) {
                    deadline = deadline.min(start + interval);
                }
            }
        }
        deadline
    }

    fn handle(&mut self, envelope: Envelope) {
        let Envelope {
            request,
            reply,
            peer,
        } = envelope;
        let version = request.version;
        let response = match request.body {
            RequestKind::ApiVersions(_) => ResponseKind::ApiVersions(admin::api_versions()),
            RequestKind::Metadata(req) => ResponseKind::Metadata(self.metadata(req, version)),
            RequestKind::CreateTopics(req) => {
                self.create_topics(req, version, reply);
                return;
            }
            RequestKind::DeleteTopics(req) => {
                self.delete_topics(req, version, reply);
                return;
            }
            RequestKind::DescribeConfigs(req) => {
                ResponseKind::DescribeConfigs(self.describe_configs(req))
            }
            RequestKind::IncrementalAlterConfigs(req) => {
                self.incremental_alter_configs(req, reply);
                return;
            }
            RequestKind::ListOffsets(req) => {
                ResponseKind::ListOffsets(self.list_offsets(req, version))
            }
            RequestKind::OffsetForLeaderEpoch(req) => {
                ResponseKind::OffsetForLeaderEpoch(self.offset_for_leader_epoch(req))
            }
            RequestKind::InitProducerId(req) => {
                self.init_producer_id(req, reply);
                return;
            }
            RequestKind::Produce(req) => match self.produce(req, version) {
                produce::Outcome::Now(resp) => ResponseKind::Produce(resp),
                produce::Outcome::Wait(pending) => {
                    // acks=all never comes without a reply channel: only acks=0 has none.
                    if let Some(reply) = reply {
                        self.produce_waiters
                            .push(ProduceWaiter::new(pending, reply));
                    }
                    return;
                }
            },
            RequestKind::FindCoordinator(req) => {
                ResponseKind::FindCoordinator(self.find_coordinator(req, version))
            }
            RequestKind::JoinGroup(req) => {
                let client = groups::Client {
                    id: request.client_id.unwrap_or_default(),
                    // As Kafka's coordinator shows it (Java's `InetAddress.toString()`).
                    host: peer.map_or_else(String::new, |p| format!("/{}", p.ip())),
                };
                self.join_group(req, version, client, reply);
                return;
            }
            RequestKind::SyncGroup(req) => {
                self.sync_group(req, version, reply);
                return;
            }
            RequestKind::Heartbeat(req) => ResponseKind::Heartbeat(self.heartbeat_group(req)),
            RequestKind::LeaveGroup(req) => {
                ResponseKind::LeaveGroup(self.leave_group(req, version))
            }
            RequestKind::OffsetCommit(req) => {
                self.offset_commit(req, version, reply);
                return;
            }
            RequestKind::OffsetFetch(req) => {
                ResponseKind::OffsetFetch(self.offset_fetch(req, version))
            }
            RequestKind::OffsetDelete(req) => {
                self.offset_delete(req, version, reply);
                return;
            }
            RequestKind::DescribeGroups(req) => {
                ResponseKind::DescribeGroups(self.describe_groups(req, version))
            }
            RequestKind::ListGroups(req) => {
                ResponseKind::ListGroups(self.list_groups(req, version))
            }
            RequestKind::DeleteGroups(req) => {
                self.delete_groups(req, version, reply);
                return;
            }
            RequestKind::Fetch(req) => match self.fetch(req, version) {
                fetch::Outcome::Now(resp) => ResponseKind::Fetch(resp),
                fetch::Outcome::Wait(pending) => {
                    if let Some(reply) = reply {
                        self.fetch_waiters.push(FetchWaiter::new(pending, reply));
                    }
                    return;
                }
            },
            other => {
                // Connections only forward the APIs advertised in ApiVersions.
                tracing::warn!(api = ?request.api_key, "request for an API this broker does not serve: {other:?}");
                return;
            }
        };
        if let Some(reply) = reply {
            let _ = reply.send(response);
        }
    }

    /// After each batch of inputs: start group commits, answer waiters, run retention.
    fn after_step(&mut self) {
        let now = Instant::now();
        if now >= self.next_tick {
            self.next_tick = now + Duration::from_millis(self.config.raft_tick_ms.max(1));
            self.on_tick();
        }
        if self.ready.is_some() && self.is_ready() {
            tracing::info!(
                node_id = self.config.node_id,
                "registered with the controller; serving clients"
            );
            let _ = self.ready.take().map(|r| r.send(()));
        }
        if now >= self.next_retention {
            self.next_retention =
                now + Duration::from_millis(self.config.retention_check_interval_ms);
            self.enforce_retention();
        }
        if now >= self.next_clean {
            self.clean_logs();
        }
        self.drive_coordinators();
        self.start_syncs(now);
        self.answer_produce_waiters(now);
        self.answer_fetch_waiters(now);
        self.expire_admin_waiters(now);
    }

    fn start_syncs(&mut self, now: Instant) {
        let interval = Duration::from_millis(self.config.flush_interval_ms);
        let mut dirty = std::mem::take(&mut self.dirty);
        if dirty.remove(&peers::metadata_tp()) {
            self.start_metadata_sync(now);
        }
        for tp in dirty {
            let Some(part) = self.partitions.get_mut(&tp) else {
                continue;
            };
            if part
                .last_sync_start
                .is_some_and(|start| now < start + interval)
            {
                self.dirty.insert(tp);
                continue;
            }
            let Some(request) = part.replica.poll_sync() else {
                // Either nothing to sync, or one is in flight; its completion re-marks us dirty.
                continue;
            };
            part.last_sync_start = Some(now);
            let job = part.store.borrow_mut().sync_job(&request.request);
            let generation = part.generation;
            self.spawn_sync(tp, generation, request, job);
        }
    }

    /// Runs a group commit off the event loop; its result comes back as a [`SyncDone`].
    fn spawn_sync(
        &mut self,
        tp: TopicPartition,
        generation: u64,
        request: ReplicaSync,
        job: io::Result<sluice_core::log::SyncJob<S>>,
    ) {
        let job = match job {
            Ok(job) => job,
            Err(e) => {
                self.on_sync_done(SyncDone {
                    tp,
                    generation,
                    request,
                    result: Err(e),
                });
                return;
            }
        };
        let tx = self.sync_tx.clone();
        let delay = self.sync_delay.as_ref().map(|d| d());
        tokio::spawn(async move {
            if let Some(delay) = delay {
                tokio::time::sleep(delay).await;
            }
            // fsync blocks for milliseconds: keep it off the event loop. The simulated store
            // is in memory and madsim forbids blocking threads, so there it runs inline.
            #[cfg(not(madsim))]
            let result = tokio::task::spawn_blocking(move || job.run())
                .await
                .unwrap_or_else(|e| Err(io::Error::other(format!("fsync task failed: {e}"))));
            #[cfg(madsim)]
            let result = job.run();
            let _ = tx.send(SyncDone {
                tp,
                generation,
                request,
                result,
            });
        });
    }

    fn on_sync_done(&mut self, done: SyncDone) {
        let SyncDone {
            tp,
            generation,
            request,
            result,
        } = done;
        if tp == peers::metadata_tp() {
            self.on_metadata_sync_done(generation, request, result);
            return;
        }
        let Some(part) = self.partitions.get_mut(&tp) else {
            return;
        };
        if part.generation != generation {
            return;
        }
        match result {
            Ok(()) => {
                let before = part.replica.high_watermark();
                part.replica.on_synced(request, &part.store);
                self.high_watermark_moved |= part.replica.high_watermark() > before;
                // Appends made while this fsync ran need the next one.
                self.after_partition_input(&tp);
            }
            Err(e) => {
                tracing::error!(%tp, "fsync failed: {e}; dropping unsynced data and reopening the partition");
                part.replica.on_storage_failed();
                part.replica.log_mut().on_synced(request.request);
                self.recover_partition(&tp);
            }
        }
    }

    /// After a storage failure: cut the log back to what is trusted, reopen it from storage, and
    /// fail every request waiting on it. Like PostgreSQL after fsyncgate, nothing written since
    /// the last good fsync is believed.
    fn recover_partition(&mut self, tp: &TopicPartition) {
        let Some(topic) = self.topics.get(&tp.topic) else {
            return;
        };
        let log_config = topic.log_config.clone();
        let voters: Vec<u64> = topic
            .assignments
            .get(tp.partition as usize)
            .map(|r| r.iter().map(|b| *b as u64).collect())
            .unwrap_or_default();
        let Some(part) = self.partitions.remove(tp) else {
            return;
        };
        for op in part.replica.log().failure_cut() {
            if let Err(e) = part.store.borrow_mut().apply(op) {
                tracing::error!(%tp, "cutting the unsynced tail failed: {e}");
            }
        }
        let generation = part.generation + 1;
        let dir = part.store.borrow().dir().to_path_buf();
        drop(part);
        match self.open_partition(tp, dir, log_config, generation, voters) {
            Ok(part) => {
                tracing::warn!(%tp, log_end_offset = part.replica.log().log_end_offset(), "partition reopened after a storage failure");
                self.partitions.insert(tp.clone(), part);
                if let Err(e) = self.flush_partition(tp) {
                    tracing::error!(%tp, "partition could not be reopened: {e}; it stays offline");
                    self.partitions.remove(tp);
                }
                self.dirty.insert(tp.clone());
            }
            Err(e) => {
                tracing::error!(%tp, "partition could not be reopened: {e}; it stays offline");
            }
        }
        self.fail_produce_waiters(tp, ErrorCode::KafkaStorageError);
    }

    /// Log compaction for `cleanup.policy=compact` partitions: at most
    /// [`CLEANER_STEP_BYTES`](sluice_core::limits::CLEANER_STEP_BYTES) of cleaning I/O per call,
    /// so requests wait at most that long; a cleaning under way continues on the next turn of
    /// the loop, otherwise the cleaner looks again after `log_cleaner_backoff_ms`.
    fn clean_logs(&mut self) {
        let now = now_ms();
        let mut more = false;
        let mut worked = false;
        let mut failed = None;
        for (tp, part) in &mut self.partitions {
            if !part.replica.log().cleaning_due(now) {
                continue;
            }
            if worked {
                // One partition per turn; this one is next.
                more = true;
                break;
            }
            worked = true;
            let result = part.store.borrow_mut().clean(
                part.replica.log_mut(),
                now,
                sluice_core::limits::CLEANER_STEP_BYTES,
            );
            match result {
                Ok(progress) => {
                    more = progress.more;
                    if let Some(r) = progress.finished {
                        tracing::info!(
                            %tp,
                            segments = r.segments,
                            rewritten = r.segments_rewritten,
                            bytes_before = r.bytes_before,
                            bytes_after = r.bytes_after,
                            records_removed = r.records_removed,
                            tombstones_removed = r.tombstones_removed,
                            "log cleaned"
                        );
                    }
                    if let Some(e) = progress.halted {
                        tracing::error!(%tp, "log cleaning stopped: {e}");
                    }
                }
                Err(e) => {
                    tracing::error!(%tp, "log cleaning failed on storage: {e}");
                    part.replica.on_storage_failed();
                    failed = Some(tp.clone());
                    break;
                }
            }
        }
        if let Some(tp) = failed {
            self.recover_partition(&tp);
        }
        let wait = if more {
            Duration::ZERO
        } else {
            Duration::from_millis(self.config.log_cleaner_backoff_ms)
        };
        self.next_clean = Instant::now() + wait;
    }

    fn enforce_retention(&mut self) {
        let now = now_ms();
        let mut failed = Vec::new();
        for (tp, part) in &mut self.partitions {
            if part.replica.enforce_retention(now) > 0 {
                tracing::info!(%tp, log_start_offset = part.replica.log().log_start_offset(), "retention deleted segments");
                self.dirty.insert(tp.clone());
                failed.push(tp.clone());
            }
        }
        for tp in failed {
            if self.flush_partition(&tp).is_err() {
                self.recover_partition(&tp);
            }
        }
    }

    /// The error for a partition this broker does not host: NOT_LEADER_OR_FOLLOWER if it
    /// exists (another broker leads it; the client refreshes its metadata), else
    /// UNKNOWN_TOPIC_OR_PARTITION.
    fn missing_partition_error(&self, tp: &TopicPartition) -> ErrorCode {
        match self.topics.get(&tp.topic) {
            Some(t) if (0..t.partitions).contains(&tp.partition) => ErrorCode::NotLeaderOrFollower,
            _ => ErrorCode::UnknownTopicOrPartition,
        }
    }
}

/// Loads a replica's hard state and recovers its log, bounded by the stored term: no batch can
/// be of a term the replica never durably adopted, so a higher epoch is damage. (No stored hard
/// state at all: a new partition, or one written before replication.)
fn open_replica_log<S: Storage>(
    storage: &S,
    tp: &TopicPartition,
    dir: PathBuf,
    log_config: LogConfig,
) -> io::Result<(HardState, PartitionLog, LogStore<S>)> {
    let hard_state = hard_state::load(storage, &dir)?;
    let epoch_max = (hard_state != HardState::default())
        .then(|| i32::try_from(hard_state.term).unwrap_or(i32::MAX));
    let (log, store) = LogStore::open_bounded(storage.clone(), dir, log_config, epoch_max)?;
    for repair in store.repairs() {
        tracing::warn!(%tp, "recovery: {repair}");
    }
    Ok((hard_state, log, store))
}

impl std::fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.topic, self.partition)
    }
}

/// A version 4 UUID from the broker's PRNG.
fn random_uuid(state: &mut u64) -> Uuid {
    let bytes = (u128::from(splitmix(state)) << 64 | u128::from(splitmix(state))).to_be_bytes();
    uuid::Builder::from_random_bytes(bytes).into_uuid()
}

/// SplitMix64: a small, well-known PRNG step (for ids only; nothing decides by it).
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The APIs this broker serves; everything else is refused at the connection.
pub const SERVED_APIS: &[ApiKey] = &[
    ApiKey::Produce,
    ApiKey::Fetch,
    ApiKey::ListOffsets,
    ApiKey::Metadata,
    ApiKey::ApiVersions,
    ApiKey::CreateTopics,
    ApiKey::DeleteTopics,
    ApiKey::InitProducerId,
    ApiKey::DescribeConfigs,
    ApiKey::IncrementalAlterConfigs,
    ApiKey::OffsetForLeaderEpoch,
    ApiKey::FindCoordinator,
    ApiKey::JoinGroup,
    ApiKey::SyncGroup,
    ApiKey::Heartbeat,
    ApiKey::LeaveGroup,
    ApiKey::OffsetCommit,
    ApiKey::OffsetFetch,
    ApiKey::OffsetDelete,
    ApiKey::DescribeGroups,
    ApiKey::ListGroups,
    ApiKey::DeleteGroups,
];
