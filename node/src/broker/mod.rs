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
mod hard_state;
mod leader_epoch;
mod produce;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kafka_protocol::messages::{ApiKey, RequestKind, ResponseKind};
use sluice_core::log::{LogConfig, LogStore};
use sluice_core::raft::{Membership, RaftConfig};
use sluice_core::replica::{Replica, ReplicaSync};
use sluice_core::rng::Rng;
use sluice_core::storage::Storage;
use sluice_core::ErrorCode;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use uuid::Uuid;

use crate::config::Config;
use crate::metadata::{topic_log_config, Metadata, TopicMeta};
use crate::wire::Request;

pub use fetch::FetchWaiter;
pub use produce::ProduceWaiter;

/// A request from a connection; `reply` is `None` when the client expects no answer (acks=0).
#[derive(Debug)]
pub struct Envelope {
    pub request: Request,
    pub reply: Option<oneshot::Sender<ResponseKind>>,
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
    meta: Metadata,
    topics: BTreeMap<String, TopicState>,
    topic_ids: BTreeMap<Uuid, String>,
    partitions: BTreeMap<TopicPartition, PartitionState<S>>,
    /// Partitions with appends not yet covered by a started fsync.
    dirty: BTreeSet<TopicPartition>,
    next_producer_id: i64,
    produce_waiters: Vec<ProduceWaiter>,
    fetch_waiters: Vec<FetchWaiter>,
    sync_tx: mpsc::UnboundedSender<SyncDone>,
    sync_rx: mpsc::UnboundedReceiver<SyncDone>,
    /// Set when a group commit moved some high watermark; parked fetches then look again.
    high_watermark_moved: bool,
    /// Seeded once from the OS (or madsim) and used for topic ids.
    rng: u64,
    next_retention: Instant,
}

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
    /// Opens the data directory: loads metadata and recovers every partition.
    pub fn open(config: Config, storage: S) -> io::Result<Broker<S>> {
        let mut rng = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish()
            | 1;
        let fresh = Metadata::load(&storage)?.is_none();
        let meta = match Metadata::load(&storage)? {
            Some(meta) => meta,
            None => Metadata {
                cluster_id: random_uuid(&mut rng).to_string(),
                producer_id_reserved_end: 0,
                topics: Vec::new(),
            },
        };
        if fresh {
            meta.save(&storage)?;
        }
        let (sync_tx, sync_rx) = mpsc::unbounded_channel();
        let mut broker = Broker {
            next_producer_id: meta.producer_id_reserved_end,
            next_retention: Instant::now()
                + Duration::from_millis(config.retention_check_interval_ms),
            config,
            storage,
            meta: meta.clone(),
            topics: BTreeMap::new(),
            topic_ids: BTreeMap::new(),
            partitions: BTreeMap::new(),
            dirty: BTreeSet::new(),
            produce_waiters: Vec::new(),
            fetch_waiters: Vec::new(),
            sync_tx,
            sync_rx,
            high_watermark_moved: false,
            rng,
        };
        for topic in &meta.topics {
            broker.open_topic(topic)?;
        }
        tracing::info!(topics = broker.topics.len(), partitions = broker.partitions.len(), cluster_id = %broker.meta.cluster_id, "data directory opened");
        Ok(broker)
    }

    fn open_topic(&mut self, topic: &TopicMeta) -> io::Result<()> {
        let log_config = topic_log_config(&self.config.log, &topic.configs).map_err(|(_, e)| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("topic {}: {e}", topic.name),
            )
        })?;
        let id = Uuid::parse_str(&topic.id)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        for partition in 0..topic.partitions {
            let tp = TopicPartition {
                topic: topic.name.clone(),
                partition,
            };
            let part = self.open_partition(&tp, partition_dir(&tp), log_config.clone(), 0)?;
            self.partitions.insert(tp.clone(), part);
            self.flush_partition(&tp)?;
            self.dirty.insert(tp);
        }
        self.topic_ids.insert(id, topic.name.clone());
        self.topics.insert(
            topic.name.clone(),
            TopicState {
                id,
                partitions: topic.partitions,
                configs: topic.configs.clone(),
                log_config,
            },
        );
        Ok(())
    }

    /// Recovers a partition's log and hard state and starts its replica. A single-node group
    /// elects itself at once.
    fn open_partition(
        &mut self,
        tp: &TopicPartition,
        dir: PathBuf,
        log_config: LogConfig,
        generation: u64,
    ) -> io::Result<PartitionState<S>> {
        let (log, store) = LogStore::open(self.storage.clone(), dir.clone(), log_config)?;
        for repair in store.repairs() {
            tracing::warn!(%tp, "recovery: {repair}");
        }
        let hard_state = hard_state::load(&self.storage, &dir)?;
        let me = self.config.node_id as u64;
        let raft_config = RaftConfig {
            apply_entries: false,
            ..RaftConfig::new(me)
        };
        let rng = Rng::new(splitmix(&mut self.rng));
        let replica = Replica::open(
            raft_config,
            rng,
            hard_state,
            log,
            Membership::new([me]),
            0,
            now_ms(),
        )
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{tp}: {e}")))?;
        let store = RefCell::new(store);
        let mut part = PartitionState {
            replica,
            store,
            generation,
            last_sync_start: None,
        };
        part.replica.campaign(true, &part.store);
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

    fn new_topic_id(&mut self) -> Uuid {
        loop {
            let id = random_uuid(&mut self.rng);
            if !id.is_nil() && !self.topic_ids.contains_key(&id) {
                return id;
            }
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Runs until every sender of `requests` is gone.
    pub async fn run(mut self, mut requests: mpsc::Receiver<Envelope>) {
        loop {
            let deadline = self.next_deadline();
            tokio::select! {
                biased;
                Some(done) = self.sync_rx.recv() => self.on_sync_done(done),
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
        let mut deadline = self.next_retention;
        for w in &self.produce_waiters {
            deadline = deadline.min(w.deadline);
        }
        for w in &self.fetch_waiters {
            deadline = deadline.min(w.deadline);
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
        let Envelope { request, reply } = envelope;
        let version = request.version;
        let response = match request.body {
            RequestKind::ApiVersions(_) => ResponseKind::ApiVersions(admin::api_versions()),
            RequestKind::Metadata(req) => ResponseKind::Metadata(self.metadata(req, version)),
            RequestKind::CreateTopics(req) => {
                ResponseKind::CreateTopics(self.create_topics(req, version))
            }
            RequestKind::DeleteTopics(req) => {
                ResponseKind::DeleteTopics(self.delete_topics(req, version))
            }
            RequestKind::DescribeConfigs(req) => {
                ResponseKind::DescribeConfigs(self.describe_configs(req))
            }
            RequestKind::ListOffsets(req) => {
                ResponseKind::ListOffsets(self.list_offsets(req, version))
            }
            RequestKind::OffsetForLeaderEpoch(req) => {
                ResponseKind::OffsetForLeaderEpoch(self.offset_for_leader_epoch(req))
            }
            RequestKind::InitProducerId(req) => {
                ResponseKind::InitProducerId(self.init_producer_id(req))
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
        if now >= self.next_retention {
            self.next_retention =
                now + Duration::from_millis(self.config.retention_check_interval_ms);
            self.enforce_retention();
        }
        self.start_syncs(now);
        self.answer_produce_waiters(now);
        self.answer_fetch_waiters(now);
    }

    fn start_syncs(&mut self, now: Instant) {
        let interval = Duration::from_millis(self.config.flush_interval_ms);
        let dirty = std::mem::take(&mut self.dirty);
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
            let job = match job {
                Ok(job) => job,
                Err(e) => {
                    let done = SyncDone {
                        tp,
                        generation: part.generation,
                        request,
                        result: Err(e),
                    };
                    self.on_sync_done(done);
                    continue;
                }
            };
            let tx = self.sync_tx.clone();
            let generation = part.generation;
            #[cfg(madsim)]
            let latency = self.storage.simulated_sync_latency();
            tokio::spawn(async move {
                // fsync blocks for milliseconds: keep it off the event loop. The simulated store
                // is in memory and madsim forbids blocking threads, so there it runs inline.
                #[cfg(not(madsim))]
                let result = tokio::task::spawn_blocking(move || job.run())
                    .await
                    .unwrap_or_else(|e| Err(io::Error::other(format!("fsync task failed: {e}"))));
                #[cfg(madsim)]
                let result = {
                    tokio::time::sleep(latency).await;
                    job.run()
                };
                let _ = tx.send(SyncDone {
                    tp,
                    generation,
                    request,
                    result,
                });
            });
        }
    }

    fn on_sync_done(&mut self, done: SyncDone) {
        let SyncDone {
            tp,
            generation,
            request,
            result,
        } = done;
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
                if let Err(e) = self.flush_partition(&tp) {
                    tracing::error!(%tp, "checkpoint write failed: {e}");
                    self.recover_partition(&tp);
                    return;
                }
                // Appends made while this fsync ran need the next one.
                self.dirty.insert(tp);
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
        match self.open_partition(tp, dir, log_config, generation) {
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

    /// Creates a topic durably (metadata first, then the partition directories).
    fn create_topic(
        &mut self,
        name: &str,
        partitions: i32,
        configs: BTreeMap<String, String>,
    ) -> io::Result<Uuid> {
        let id = self.new_topic_id();
        let topic = TopicMeta {
            name: name.to_string(),
            id: id.to_string(),
            partitions,
            configs,
        };
        let mut meta = self.meta.clone();
        meta.topics.push(topic.clone());
        meta.save(&self.storage)?;
        self.meta = meta;
        self.open_topic(&topic)?;
        tracing::info!(topic = name, partitions, %id, "topic created");
        Ok(id)
    }

    fn delete_topic(&mut self, name: &str) -> io::Result<()> {
        let mut meta = self.meta.clone();
        meta.topics.retain(|t| t.name != name);
        meta.save(&self.storage)?;
        self.meta = meta;
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
            if let Some(part) = self.partitions.remove(&tp) {
                part.store.into_inner().delete()?;
            }
            self.fail_produce_waiters(&tp, ErrorCode::UnknownTopicOrPartition);
        }
        tracing::info!(topic = name, "topic deleted");
        Ok(())
    }

    /// Reserves producer ids durably in blocks, then hands them out from memory.
    fn allocate_producer_id(&mut self) -> io::Result<i64> {
        if self.next_producer_id >= self.meta.producer_id_reserved_end {
            let mut meta = self.meta.clone();
            meta.producer_id_reserved_end =
                self.next_producer_id + crate::metadata::PRODUCER_ID_BLOCK;
            meta.save(&self.storage)?;
            self.meta = meta;
        }
        let id = self.next_producer_id;
        self.next_producer_id += 1;
        Ok(id)
    }
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
    ApiKey::OffsetForLeaderEpoch,
];
