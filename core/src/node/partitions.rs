//! The logs a node hosts — every partition replica's and the metadata quorum's — through their
//! life: **opening** (recovery runs as a storage job off the host's loop), **open** (the machine
//! runs and its outputs become node outputs), **failed** (its storage failed: it waits for the
//! completions still owed to it, then is reopened from disk after a cut to what was durable, as
//! PostgreSQL does after fsyncgate), or **offline** (it could not be opened). Also the work
//! the node does on logs by itself: group commits, retention and compaction.

use std::collections::VecDeque;
use std::path::PathBuf;

use super::disk::{LogId, LogReader, StorageDone, StorageOp};
use super::{GroupId, Leadership, Node, Output, PeerMessage, TopicPartition, View};
use crate::log::{CleanStep, LogConfig, LogOp, PartitionLog, ReadError};
use crate::metadata::{MetadataQuorum, Outcome, QuorumOutput, Ticket};
use crate::raft::{Membership, RaftConfig};
use crate::replica::{ReadDamage, Replica, ReplicaOutput, ReplicaSync};
use crate::time::Instant;
use crate::ErrorCode;

/// Who owns a log id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Owner {
    Metadata,
    Partition(TopicPartition),
}

/// What a hosted machine hands out.
pub(super) enum MachineOutput {
    Replica(ReplicaOutput),
    Completion(Ticket, Result<Outcome, ErrorCode>),
}

/// What the node needs of a machine over a log: a data partition's [`Replica`], or the
/// [`MetadataQuorum`].
pub(super) trait Machine {
    fn replica(&self) -> &Replica;
    fn poll_output(&mut self) -> Option<MachineOutput>;
    fn poll_sync(&mut self) -> Option<ReplicaSync>;
    fn on_storage_failed(&mut self);
}

impl Machine for Replica {
    fn replica(&self) -> &Replica {
        self
    }
    fn poll_output(&mut self) -> Option<MachineOutput> {
        Replica::poll_output(self).map(MachineOutput::Replica)
    }
    fn poll_sync(&mut self) -> Option<ReplicaSync> {
        Replica::poll_sync(self)
    }
    fn on_storage_failed(&mut self) {
        Replica::on_storage_failed(self)
    }
}

impl Machine for MetadataQuorum {
    fn replica(&self) -> &Replica {
        MetadataQuorum::replica(self)
    }
    fn poll_output(&mut self) -> Option<MachineOutput> {
        MetadataQuorum::poll_output(self).map(|out| match out {
            QuorumOutput::Replica(r) => MachineOutput::Replica(r),
            QuorumOutput::Completion(t, r) => MachineOutput::Completion(t, r),
        })
    }
    fn poll_sync(&mut self) -> Option<ReplicaSync> {
        MetadataQuorum::poll_sync(self)
    }
    fn on_storage_failed(&mut self) {
        MetadataQuorum::on_storage_failed(self)
    }
}

/// One hosted log and its machine (see the module docs).
pub(super) struct LogSlot<M> {
    log: LogId,
    dir: PathBuf,
    config: LogConfig,
    /// The Raft group's voters.
    voters: Vec<u64>,
    /// How peers name the group.
    group: GroupId,
    /// The topic the directory belongs to (`None` for the metadata log).
    topic_id: Option<crate::metadata::TopicId>,
    state: State<M>,
    /// When a read's damage last reopened the log with a rescan (see
    /// [`RESCAN_BACKOFF_MS`]).
    last_rescan: Option<Instant>,
    /// Where the scrubber reads next (a log offset; see [`Node::scrub_logs`]).
    scrub_at: u64,
    /// The offset of the damage the last rescan was for: damage a rescan did not cut (a flip
    /// that leaves a batch's epoch plausible to recovery) is not rescanned for again.
    rescanned_for: Option<u64>,
}

/// At most one reopen with a rescan per log in this long: a read that keeps failing on damage
/// the rescan does not find (it checks what reads check, so this is a guard, not a plan) costs a
/// full scan of the log now and then, not one per fetch.
pub(super) const RESCAN_BACKOFF_MS: u64 = 10_000;

enum State<M> {
    Opening,
    Open(Box<Hosted<M>>),
    /// Storage failed; reopened once nothing is owed any more.
    Failed {
        cut: Vec<LogOp>,
        owed: Owed,
        /// The reopen distrusts the checkpoint and scans every segment (a read found damage).
        rescan: bool,
    },
    Offline,
}

/// Completions a failed log still waits for before it is reopened (a job of the old log must not
/// run beside the recovery of the new one).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Owed {
    sync: bool,
    hard_state: bool,
    swap: bool,
    /// Ticks to wait before opening again after an open failed on an I/O error.
    retry_ticks: u32,
}

/// Ticks between attempts to open a partition whose opening failed on an I/O error (a failed
/// fsync may pass; a disk that keeps failing is tried again at this pace, not in a loop).
pub(super) const OPEN_RETRY_TICKS: u32 = 10;

/// An open log's machine and the storage work in flight for it.
pub(super) struct Hosted<M> {
    pub machine: M,
    /// The group commit in flight (one at a time).
    sync: Option<ReplicaSync>,
    last_sync_start: Option<Instant>,
    /// Whether the machine led at the last look (a new leadership is announced).
    pub was_leader: bool,
    /// A cleaned segment being swapped in (the cleaner waits for it).
    pub swap: Option<u64>,
    /// The last write handed out, and the last reported as reaching the OS.
    next_write: u64,
    pub written: u64,
    /// The high watermark at the last drain (a move wakes parked fetches).
    high_watermark: u64,
}

/// What a drain produced besides node outputs.
#[derive(Default)]
pub(super) struct Drained {
    pub completions: Vec<(Ticket, Result<Outcome, ErrorCode>)>,
    pub reset: Option<u64>,
    /// The last write handed out: its place in the output queue and its sequence number.
    pub last_write: Option<(usize, u64)>,
}

impl<M: Machine> LogSlot<M> {
    fn opening(
        log: LogId,
        dir: PathBuf,
        config: LogConfig,
        voters: Vec<u64>,
        group: GroupId,
        topic_id: crate::metadata::TopicId,
    ) -> Self {
        LogSlot {
            log,
            dir,
            config,
            voters,
            group,
            topic_id: Some(topic_id),
            state: State::Opening,
            last_rescan: None,
            scrub_at: 0,
            rescanned_for: None,
        }
    }

    pub fn log(&self) -> LogId {
        self.log
    }

    pub fn hosted(&self) -> Option<&Hosted<M>> {
        match &self.state {
            State::Open(h) => Some(h),
            _ => None,
        }
    }

    pub fn hosted_mut(&mut self) -> Option<&mut Hosted<M>> {
        match &mut self.state {
            State::Open(h) => Some(h),
            _ => None,
        }
    }

    pub fn machine(&self) -> Option<&M> {
        self.hosted().map(|h| &h.machine)
    }

    pub fn replica(&self) -> Option<&Replica> {
        self.machine().map(Machine::replica)
    }

    pub fn group(&self) -> GroupId {
        self.group
    }

    pub fn set_config(&mut self, config: LogConfig) {
        self.config = config;
    }

    /// When a group commit held back by `flush_interval_ms` may start.
    pub fn next_sync_start(&self, interval_ms: u64) -> Option<Instant> {
        let h = self.hosted()?;
        if h.sync.is_some() {
            return None;
        }
        // Only when there is something to sync: an end above the high watermark may just wait
        // for other replicas, and a start in the past then would wake the host at once, again
        // and again.
        h.machine
            .replica()
            .log()
            .has_unsynced()
            .then(|| h.last_sync_start.map(|s| s.plus_millis(interval_ms)))
            .flatten()
    }

    pub fn check_invariants(&self, name: &dyn std::fmt::Display) {
        match &self.state {
            State::Open(h) => {
                h.machine.replica().check_invariants();
                assert!(
                    h.written <= h.next_write,
                    "{name}: written beyond what was handed out"
                );
                if let Some(segment) = h.swap {
                    assert!(
                        h.machine
                            .replica()
                            .log()
                            .segments()
                            .any(|s| s.base_offset == segment),
                        "{name}: swapping segment {segment}, which the log does not have"
                    );
                }
            }
            State::Failed { owed, .. } => {
                assert_ne!(
                    *owed,
                    Owed::default(),
                    "{name}: a failed log owed nothing is reopened"
                )
            }
            State::Opening | State::Offline => {}
        }
    }
}

/// Moves everything `hosted`'s machine hands out into node outputs, in order.
pub(super) fn drain<M: Machine>(
    hosted: &mut Hosted<M>,
    log: LogId,
    group: GroupId,
    outputs: &mut VecDeque<Output>,
) -> Drained {
    let mut drained = Drained::default();
    while let Some(out) = hosted.machine.poll_output() {
        match out {
            MachineOutput::Replica(ReplicaOutput::Op(op)) => {
                hosted.next_write += 1;
                drained.last_write = Some((outputs.len(), hosted.next_write));
                outputs.push_back(Output::Storage(StorageOp::Write {
                    log,
                    op,
                    report: None,
                }));
            }
            MachineOutput::Replica(ReplicaOutput::HardState(state)) => {
                outputs.push_back(Output::Storage(StorageOp::StoreHardState { log, state }))
            }
            MachineOutput::Replica(ReplicaOutput::Message(msg)) => {
                outputs.push_back(Output::Send {
                    to: msg.to,
                    message: PeerMessage::Raft { group, msg },
                })
            }
            MachineOutput::Replica(ReplicaOutput::Reset(offset)) => drained.reset = Some(offset),
            MachineOutput::Completion(ticket, result) => drained.completions.push((ticket, result)),
        }
    }
    drained
}

/// Asks that the write at `at` in the output queue be reported once done, and returns its
/// sequence number.
pub(super) fn report_write(outputs: &mut VecDeque<Output>, at: usize, seq: u64) -> u64 {
    match outputs.get_mut(at) {
        Some(Output::Storage(StorageOp::Write { report, .. })) => *report = Some(seq),
        other => unreachable!("a write was handed out at {at}: {other:?}"),
    }
    seq
}

impl Node {
    /// Starts opening a partition this node is a replica of.
    pub(super) fn open_partition(
        &mut self,
        tp: &TopicPartition,
        topic_id: crate::metadata::TopicId,
        log_config: LogConfig,
        voters: Vec<u64>,
    ) {
        let log = self.next_log_id();
        let group = GroupId::Partition {
            topic_id,
            partition: tp.partition,
        };
        let slot = LogSlot::opening(log, tp.dir(), log_config.clone(), voters, group, topic_id);
        self.outputs.push_back(Output::Storage(StorageOp::Open {
            log,
            dir: tp.dir(),
            config: log_config,
            cut: Vec::new(),
            topic_id: Some(topic_id),
            rescan: false,
        }));
        self.log_owners.insert(log, Owner::Partition(tp.clone()));
        self.group_of.insert(group, tp.clone());
        self.partitions.insert(tp.clone(), slot);
    }

    /// Stops hosting a partition (its topic was deleted); its directory goes with it.
    pub(super) fn close_partition(&mut self, tp: &TopicPartition) {
        let Some(slot) = self.partitions.remove(tp) else {
            return;
        };
        self.log_owners.remove(&slot.log);
        self.group_of.remove(&slot.group);
        self.dirty.remove(tp);
        self.outputs.push_back(Output::Storage(StorageOp::Close {
            log: slot.log,
            delete: true,
        }));
        self.fail_produce_waiters(tp, ErrorCode::UnknownTopicOrPartition);
    }

    /// A storage completion.
    pub(super) fn on_storage(&mut self, done: StorageDone, disk: &impl LogReader) {
        let log = done.log();
        let Some(owner) = self.log_owners.get(&log).cloned() else {
            // A late answer about a log that was closed or reopened since.
            return;
        };
        match owner {
            Owner::Metadata => self.on_metadata_storage(done, disk),
            Owner::Partition(tp) => self.on_partition_storage(&tp, done, disk),
        }
    }

    fn on_partition_storage(
        &mut self,
        tp: &TopicPartition,
        done: StorageDone,
        disk: &impl LogReader,
    ) {
        let Some(slot) = self.partitions.get_mut(tp) else {
            return;
        };
        let log = slot.log;
        match done {
            StorageDone::Opened { result, .. } => {
                let opened = match result {
                    Ok(opened) => opened,
                    Err(e) if e.retryable => {
                        tracing::error!(%tp, "opening the partition failed: {e}; trying again in {OPEN_RETRY_TICKS} ticks");
                        slot.retry_open_later();
                        return;
                    }
                    Err(e) => {
                        tracing::error!(%tp, "opening the partition failed: {e}; it stays offline");
                        slot.state = State::Offline;
                        return;
                    }
                };
                for repair in &opened.repairs {
                    tracing::warn!(%tp, "recovery: {repair}");
                }
                let me = self.config.node_id as u64;
                let raft = RaftConfig {
                    apply_entries: false,
                    election_ticks: self.config.election_ticks(),
                    append_bytes_max: self.config.replica_fetch_max_bytes,
                    planted: self.config.planted,
                    ..RaftConfig::new(me)
                };
                let new_group = opened.hard_state.term == 0 && opened.log.log_end_offset() == 0;
                let preferred = new_group && slot.voters.first() == Some(&me);
                let voters = Membership::new(slot.voters.iter().copied());
                let alone = voters.voters() == [me];
                let rng = self.rng.fork();
                let wall_ms = self.now.wall_ms;
                match Replica::open(raft, rng, opened.hard_state, opened.log, voters, 0, wall_ms) {
                    Ok(mut replica) => {
                        if alone || preferred {
                            // A group of one needs no election timeout; a new group's preferred
                            // replica wins its first election unopposed (the others have no log
                            // and no vote yet), as Kafka's controller names a new partition's
                            // leader at once.
                            replica.campaign(true, &View { disk, log });
                        }
                        tracing::debug!(%tp, log_end_offset = replica.log().log_end_offset(), "partition open");
                        slot.state = State::Open(Box::new(Hosted::new(replica)));
                        self.after_partition_input(tp, disk);
                    }
                    Err(e) => {
                        tracing::error!(%tp, "the partition's stored state is unusable: {e}; it stays offline");
                        slot.state = State::Offline;
                    }
                }
            }
            StorageDone::Written { seq, .. } => {
                if let Some(h) = slot.hosted_mut() {
                    h.written = h.written.max(seq);
                }
            }
            StorageDone::WriteFailed { error, .. } => {
                tracing::error!(%tp, "partition write failed: {error}; dropping unsynced data and reopening it");
                self.fail_partition(tp, false);
            }
            StorageDone::Synced { result, .. } => match &mut slot.state {
                State::Failed { owed, .. } => {
                    owed.sync = false;
                    self.maybe_reopen_partition(tp);
                }
                State::Open(h) => {
                    let sync = h.sync.take().expect("a sync in flight answered");
                    match result {
                        Ok(()) => {
                            h.machine.on_synced(sync, &View { disk, log });
                            self.after_partition_input(tp, disk);
                        }
                        Err(e) => {
                            tracing::error!(%tp, "fsync failed: {e}; dropping unsynced data and reopening the partition");
                            self.fail_partition(tp, false);
                        }
                    }
                }
                State::Opening | State::Offline => {}
            },
            StorageDone::HardStateStored { result, .. } => match &mut slot.state {
                State::Failed { owed, .. } => {
                    owed.hard_state = false;
                    self.maybe_reopen_partition(tp);
                }
                State::Open(h) => match result {
                    Ok(()) => {
                        h.machine.hard_state_persisted(&View { disk, log });
                        self.after_partition_input(tp, disk);
                    }
                    Err(e) => {
                        tracing::error!(%tp, "storing the Raft state failed: {e}; reopening the partition");
                        self.fail_partition(tp, false);
                        // This was the store the failed slot would wait for: it is done.
                        // Regression: simulator seed 305 of `--scenario cluster` (a write fault
                        // in a hard-state store left the partition failed for good).
                        if let Some(slot) = self.partitions.get_mut(tp) {
                            slot.settle_hard_state();
                        }
                        self.maybe_reopen_partition(tp);
                    }
                },
                State::Opening | State::Offline => {}
            },
            StorageDone::Swapped {
                segment, result, ..
            } => match &mut slot.state {
                State::Failed { owed, .. } => {
                    owed.swap = false;
                    self.maybe_reopen_partition(tp);
                }
                State::Open(h) => {
                    assert_eq!(
                        h.swap.take(),
                        Some(segment),
                        "{tp}: the swap in flight answered"
                    );
                    match result {
                        Ok(()) => {
                            h.machine.log_mut().on_clean_swapped(segment);
                            // The cleaning goes on at the next turn.
                            self.next_clean = self.now.instant;
                        }
                        Err(e) => {
                            tracing::error!(%tp, segment, "swapping in a cleaned segment failed: {e}; reopening the partition");
                            self.fail_partition(tp, false);
                        }
                    }
                }
                State::Opening | State::Offline => {}
            },
        }
    }

    /// Storage failed under a partition: nothing written since the last good sync is believed.
    /// Waiters get KAFKA_STORAGE_ERROR; the log is cut back and reopened from disk once the
    /// completions it is owed have come back; with `rescan`, distrusting its checkpoint (see
    /// [`Node::on_read_damage`]).
    fn fail_partition(&mut self, tp: &TopicPartition, rescan: bool) {
        let Some(slot) = self.partitions.get_mut(tp) else {
            return;
        };
        // The coordinator of an offsets partition goes with it (drive_coordinators sees it no
        // longer leads), answering its waiters NOT_COORDINATOR.
        fail_slot(slot, rescan);
        self.fail_produce_waiters(tp, ErrorCode::KafkaStorageError);
        self.maybe_reopen_partition(tp);
    }

    /// A read of `tp`'s log met a synced batch that fails its checks. Such damage lies below
    /// the checkpoint's recovery point (recovery scans everything above it) or came after the
    /// open; it is never served, but nothing else would repair it: a lagging follower would wait
    /// forever for the entries, and clients get KAFKA_STORAGE_ERROR. A replica with peers is
    /// reopened with a rescan ([`LogStore::distrust_checkpoint`](crate::log::LogStore)):
    /// recovery cuts the log at the damage and puts the replica in repair mode, as for damage it
    /// finds itself, and the leader (another replica, if this one led) brings it back. A group of
    /// one has nobody to repair from and keeps its log as it is.
    pub(super) fn on_read_damage(&mut self, tp: &TopicPartition, damage: ReadDamage) {
        let now = self.now.instant;
        let Some(slot) = self.partitions.get_mut(tp) else {
            return;
        };
        if slot.replica().is_none() {
            return;
        }
        if slot
            .last_rescan
            .is_some_and(|at| now < at.plus_millis(RESCAN_BACKOFF_MS))
        {
            return;
        }
        slot.last_rescan = Some(now);
        if slot.voters.len() < 2 {
            tracing::error!(%tp, offset = damage.offset, "a stored batch is damaged: {}; no other replica to repair it from", damage.why);
            return;
        }
        if slot.rescanned_for == Some(damage.offset) {
            tracing::error!(%tp, offset = damage.offset, "a stored batch is damaged: {}; a rescan for it already ran and did not cut it, so it stays (move the partition directory away to have it copied from the other replicas)", damage.why);
            return;
        }
        slot.rescanned_for = Some(damage.offset);
        tracing::error!(%tp, offset = damage.offset, "a stored batch is damaged: {}; reopening the partition to cut the damage and repair it from the other replicas", damage.why);
        self.fail_partition(tp, true);
    }

    /// The scrubber: reads the synced log of one open partition replica a step at a time
    /// (partitions in turn, a tenth of `scrub_bytes_per_sec` per step), checking every batch as
    /// any read does, and starts over at the log start after the end. Damage no client and no
    /// follower reads would otherwise sit on a replica until it is needed, perhaps when the
    /// other copies are gone (ZFS's scrub, TigerBeetle's grid scrubber); found, it is repaired
    /// as any read's damage is ([`Node::on_read_damage`]).
    pub(super) fn scrub_logs(&mut self, disk: &impl LogReader) {
        use std::ops::Bound;
        let per_step = 1000 / crate::limits::SCRUB_INTERVAL_MS;
        let budget = (self.config.scrub_bytes_per_sec / per_step).clamp(1, u64::from(u32::MAX));
        let after = match &self.scrubbed_last {
            Some(tp) => (Bound::Excluded(tp), Bound::Unbounded),
            None => (Bound::Unbounded, Bound::Unbounded),
        };
        let next = self
            .partitions
            .range::<TopicPartition, _>(after)
            .chain(self.partitions.iter())
            .find(|(_, slot)| slot.replica().is_some())
            .map(|(tp, _)| tp.clone());
        let Some(tp) = next else {
            return;
        };
        self.scrubbed_last = Some(tp.clone());
        let Some(slot) = self.partitions.get_mut(&tp) else {
            return;
        };
        let view = View {
            disk,
            log: slot.log,
        };
        let Some(log) = slot.replica().map(Replica::log) else {
            return;
        };
        // A replicated log's batches carry their Raft term in `partitionLeaderEpoch`, outside
        // the batch CRC; the epoch cache says what it must be.
        let replicated = slot.voters.len() > 1;
        let start = log.log_start_offset();
        let mut at = slot.scrub_at.max(start);
        let mut spent = 0u64;
        let mut damage = None;
        while spent < budget {
            let room = (budget - spent) as u32;
            let mut cursor = match log.read_durable(at, room) {
                Ok(cursor) => cursor,
                Err(ReadError::OffsetOutOfRange { .. }) => {
                    at = start;
                    break;
                }
                Err(_) => break,
            };
            match cursor.run(&view) {
                Ok(()) => {}
                Err(ReadError::Corrupt(why)) => {
                    damage = Some(ReadDamage { offset: at, why });
                    break;
                }
                Err(_) => break,
            }
            let batches = cursor.into_batches();
            if replicated {
                let stray = batches.iter().find_map(|b| {
                    let want = log.epoch_at(b.base_offset)?;
                    (b.epoch != want).then(|| ReadDamage {
                        offset: b.base_offset,
                        why: format!(
                            "the batch at {} has leader epoch {}, the epoch cache says {want} (a \
                             flipped bit outside the batch CRC)",
                            b.base_offset, b.epoch
                        ),
                    })
                });
                if stray.is_some() {
                    damage = stray;
                    break;
                }
            }
            let Some(last) = batches.last() else {
                // The synced end: the pass is over, the next one starts at the log start.
                at = start;
                break;
            };
            spent += batches.iter().map(|b| b.bytes.len() as u64).sum::<u64>();
            at = last.last_offset + 1;
        }
        slot.scrub_at = at;
        if let Some(damage) = damage {
            self.on_read_damage(&tp, damage);
        }
    }

    /// A tick for a partition whose opening failed: counts down to the next attempt.
    pub(super) fn tick_failed_partition(&mut self, tp: &TopicPartition) {
        let Some(slot) = self.partitions.get_mut(tp) else {
            return;
        };
        if slot.tick_open_retry() {
            self.maybe_reopen_partition(tp);
        }
    }

    fn maybe_reopen_partition(&mut self, tp: &TopicPartition) {
        let Some(slot) = self.partitions.get_mut(tp) else {
            return;
        };
        let old = slot.log;
        let new = LogId(self.next_log_id + 1);
        let Some(open) = take_reopen(slot, new) else {
            return;
        };
        self.next_log_id += 1;
        self.outputs.push_back(Output::Storage(StorageOp::Close {
            log: old,
            delete: false,
        }));
        self.outputs.push_back(Output::Storage(open));
        self.log_owners.remove(&old);
        self.log_owners.insert(new, Owner::Partition(tp.clone()));
        tracing::warn!(%tp, "reopening the partition from disk");
    }

    /// After any input to a partition's replica: its outputs, observations, and a new leadership
    /// announced to the peers. Returns the last write it handed out.
    pub(super) fn after_partition_input(
        &mut self,
        tp: &TopicPartition,
        _disk: &impl LogReader,
    ) -> Option<(usize, u64)> {
        let slot = self.partitions.get_mut(tp)?;
        let (log, group) = (slot.log, slot.group);
        let h = slot.hosted_mut()?;
        let drained = drain(h, log, group, &mut self.outputs);
        if let Some(damage) = h.machine.take_read_damage() {
            self.read_damage.get_mut().push((tp.clone(), damage));
        }
        if let Some(offset) = drained.reset {
            // A snapshot install: the leader's log starts past our end. Restarting a log at an
            // offset is not built yet; the replica stays behind and says so.
            tracing::error!(%tp, offset, "the leader's log starts past this replica's end; catching up from a snapshot is not supported yet");
        }
        let high_watermark = h.machine.high_watermark();
        if high_watermark != std::mem::replace(&mut h.high_watermark, high_watermark) {
            self.high_watermark_moved = true;
        }
        let is_leader = h.machine.is_leader();
        let was_leader = std::mem::replace(&mut h.was_leader, is_leader);
        let term = h.machine.term();
        if self.config.observe {
            let node = self.config.node_id as u64;
            observe(
                &mut self.outputs,
                &mut self.observed,
                node,
                tp.to_string(),
                &h.machine,
            );
        }
        self.dirty.insert(tp.clone());
        if is_leader && !was_leader {
            tracing::info!(%tp, term, "became the partition's leader");
            if let GroupId::Partition {
                topic_id,
                partition,
            } = group
            {
                let me = self.config.node_id as u64;
                self.cluster
                    .leaders
                    .insert((topic_id, partition), (term, me));
                let news = Leadership {
                    topic_id,
                    partition,
                    term,
                    leader: me,
                };
                self.broadcast(PeerMessage::Leaders(vec![news]));
            }
        }
        drained.last_write
    }

    /// Starts the group commits that are due: every open log with unsynced data and none in
    /// flight, unless `flush_interval_ms` spaces them out.
    pub(super) fn start_syncs(&mut self) {
        let now = self.now.instant;
        let interval = self.config.flush_interval_ms;
        start_sync(&mut self.meta, now, interval, &mut self.outputs);
        let dirty = std::mem::take(&mut self.dirty);
        for tp in dirty {
            let Some(slot) = self.partitions.get_mut(&tp) else {
                continue;
            };
            if start_sync(slot, now, interval, &mut self.outputs) == SyncStart::Waiting {
                self.dirty.insert(tp);
            }
        }
    }

    /// Retention on every open partition; deletions are written at once (their directory is
    /// synced by the next group commit).
    pub(super) fn enforce_retention(&mut self, disk: &impl LogReader) {
        let wall_ms = self.now.wall_ms;
        let mut changed = Vec::new();
        for (tp, slot) in &mut self.partitions {
            if let Some(h) = slot.hosted_mut() {
                if h.machine.enforce_retention(wall_ms) > 0 {
                    tracing::info!(%tp, log_start_offset = h.machine.log().log_start_offset(), "retention deleted segments");
                    changed.push(tp.clone());
                }
                let deletion = h.machine.log_mut().take_deletion();
                if let (Some(deletion), true) = (deletion, self.config.observe) {
                    use crate::checker::replicas::Observation;
                    self.outputs
                        .push_back(Output::Observe(Observation::Retention {
                            group: tp.to_string(),
                            node: self.config.node_id as u64,
                            deletion,
                        }));
                }
            }
        }
        for tp in changed {
            self.after_partition_input(&tp, disk);
        }
    }

    /// Log compaction for `cleanup.policy=compact` partitions: at most
    /// [`CLEANER_STEP_BYTES`](crate::limits::CLEANER_STEP_BYTES) of cleaning I/O per turn, one
    /// partition per turn; a cleaning under way goes on at the next turn, otherwise the cleaner
    /// looks again after `log_cleaner_backoff_ms`. Reads are synchronous; writes are storage
    /// ops; the swap of a cleaned segment runs off the loop, and the cleaning of that partition
    /// waits for it.
    pub(super) fn clean_logs(&mut self, disk: &impl LogReader) {
        let wall_ms = self.now.wall_ms;
        let budget = crate::limits::CLEANER_STEP_BYTES;
        let mut more = false;
        let mut failed = None;
        let mut worked = false;
        for (tp, slot) in &mut self.partitions {
            let log = slot.log;
            let Some(h) = slot.hosted_mut() else {
                continue;
            };
            if h.swap.is_some() || !h.machine.log().cleaning_due(wall_ms) {
                continue;
            }
            if worked {
                more = true;
                break;
            }
            worked = true;
            let view = View { disk, log };
            let mut spent = 0u64;
            while spent < budget {
                let Some(step) = h.machine.log_mut().next_clean_step(wall_ms) else {
                    if let Some(r) = h.machine.log_mut().take_clean_report() {
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
                    break;
                };
                match step {
                    CleanStep::Read(io) => {
                        let bytes = match crate::log::SegmentReader::read_at(&view, io) {
                            Ok(bytes) => bytes,
                            Err(e) => {
                                tracing::error!(%tp, "log cleaning could not read: {e:?}");
                                failed = Some(tp.clone());
                                break;
                            }
                        };
                        spent += bytes.len() as u64;
                        if let Err(e) = h.machine.log_mut().feed_clean(&bytes) {
                            tracing::error!(%tp, "log cleaning stopped: {e}");
                        }
                    }
                    CleanStep::Swap { segment, .. } => {
                        h.swap = Some(segment);
                        self.outputs
                            .push_back(Output::Storage(StorageOp::Clean { log, step }));
                        break;
                    }
                    CleanStep::Begin { copy, .. } => {
                        spent += copy;
                        self.outputs
                            .push_back(Output::Storage(StorageOp::Clean { log, step }));
                    }
                    CleanStep::Write { ref bytes, .. } => {
                        spent += bytes.len() as u64;
                        self.outputs
                            .push_back(Output::Storage(StorageOp::Clean { log, step }));
                    }
                    CleanStep::Discard { .. } => {
                        self.outputs
                            .push_back(Output::Storage(StorageOp::Clean { log, step }));
                    }
                }
            }
            if spent >= budget {
                more = true;
            }
        }
        if let Some(tp) = failed {
            self.fail_partition(&tp, false);
        }
        let wait_ms = if more {
            0
        } else {
            self.config.log_cleaner_backoff_ms
        };
        self.next_clean = self.now.instant.plus_millis(wait_ms);
    }
}

impl<M> Hosted<M> {
    pub fn new(machine: M) -> Hosted<M> {
        Hosted {
            machine,
            sync: None,
            last_sync_start: None,
            was_leader: false,
            swap: None,
            next_write: 0,
            written: 0,
            high_watermark: 0,
        }
    }
}

/// Whether a group commit started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum SyncStart {
    Started,
    /// Nothing to sync, or one is in flight (its completion looks again).
    Idle,
    /// Due, but spaced out by `flush_interval_ms`.
    Waiting,
}

pub(super) fn start_sync<M: Machine>(
    slot: &mut LogSlot<M>,
    now: Instant,
    interval_ms: u64,
    outputs: &mut VecDeque<Output>,
) -> SyncStart {
    let log = slot.log;
    let Some(h) = slot.hosted_mut() else {
        return SyncStart::Idle;
    };
    if h.sync.is_some() {
        return SyncStart::Idle;
    }
    if interval_ms > 0
        && h.last_sync_start
            .is_some_and(|s| now < s.plus_millis(interval_ms))
    {
        return if h.machine.replica().log().has_unsynced() {
            SyncStart::Waiting
        } else {
            SyncStart::Idle
        };
    }
    let Some(sync) = h.machine.poll_sync() else {
        return SyncStart::Idle;
    };
    h.last_sync_start = Some(now);
    outputs.push_back(Output::Storage(StorageOp::Sync {
        log,
        request: sync.request.clone(),
    }));
    h.sync = Some(sync);
    SyncStart::Started
}

/// Marks a slot failed, to be reopened with a rescan if `rescan`; returns the machine it held
/// (for what depends on it), if it was open.
pub(super) fn fail_slot<M: Machine>(slot: &mut LogSlot<M>, rescan: bool) -> Option<Box<Hosted<M>>> {
    let state = std::mem::replace(&mut slot.state, State::Opening);
    match state {
        State::Open(mut h) => {
            h.machine.on_storage_failed();
            let cut = h.machine.replica().log().failure_cut();
            let owed = Owed {
                sync: h.sync.is_some(),
                hard_state: h.machine.replica().hard_state_in_flight(),
                swap: h.swap.is_some(),
                retry_ticks: 0,
            };
            slot.state = State::Failed { cut, owed, rescan };
            Some(h)
        }
        other => {
            slot.state = other;
            None
        }
    }
}

/// Whether the slot's reopen is due (failed, nothing owed), with the cut to carry out.
pub(super) fn take_reopen<M>(slot: &mut LogSlot<M>, new_log: LogId) -> Option<StorageOp> {
    let State::Failed { cut, owed, rescan } = &mut slot.state else {
        return None;
    };
    if *owed != Owed::default() {
        return None;
    }
    let cut = std::mem::take(cut);
    let rescan = *rescan;
    slot.log = new_log;
    slot.state = State::Opening;
    Some(StorageOp::Open {
        log: new_log,
        dir: slot.dir.clone(),
        config: slot.config.clone(),
        cut,
        topic_id: slot.topic_id,
        rescan,
    })
}

impl<M> LogSlot<M> {
    /// A slot for the metadata log (see [`LogSlot::opening`]).
    pub(super) fn metadata(log: LogId, dir: PathBuf, config: LogConfig, voters: Vec<u64>) -> Self {
        LogSlot {
            log,
            dir,
            config,
            voters,
            group: GroupId::Metadata,
            topic_id: None,
            state: State::Opening,
            last_rescan: None,
            scrub_at: 0,
            rescanned_for: None,
        }
    }

    pub(super) fn voters(&self) -> &[u64] {
        &self.voters
    }

    pub(super) fn set_open(&mut self, machine: M) {
        self.state = State::Open(Box::new(Hosted::new(machine)));
    }

    pub(super) fn set_offline(&mut self) {
        self.state = State::Offline;
    }

    pub(super) fn is_offline(&self) -> bool {
        matches!(self.state, State::Offline)
    }

    /// Its opening failed on an I/O error that may pass: open it again in
    /// [`OPEN_RETRY_TICKS`] ticks ([`LogSlot::tick_open_retry`]).
    pub(super) fn retry_open_later(&mut self) {
        self.state = State::Failed {
            cut: Vec::new(),
            owed: Owed {
                retry_ticks: OPEN_RETRY_TICKS,
                ..Owed::default()
            },
            rescan: false,
        };
    }

    /// A tick for a slot whose opening failed: whether it is time to open it again.
    pub(super) fn tick_open_retry(&mut self) -> bool {
        let State::Failed { owed, .. } = &mut self.state else {
            return false;
        };
        if owed.retry_ticks == 0 {
            return false;
        }
        owed.retry_ticks -= 1;
        owed.retry_ticks == 0
    }

    /// A failed slot's hard-state store finished (with the error that failed it).
    pub(super) fn settle_hard_state(&mut self) {
        if let State::Failed { owed, .. } = &mut self.state {
            owed.hard_state = false;
        }
    }

    /// Records a completion a failed slot was owed; `true` if the slot is failed.
    pub(super) fn settle_owed(&mut self, done: &StorageDone) -> bool {
        let State::Failed { owed, .. } = &mut self.state else {
            return false;
        };
        match done {
            StorageDone::Synced { .. } => owed.sync = false,
            StorageDone::HardStateStored { .. } => owed.hard_state = false,
            StorageDone::Swapped { .. } => owed.swap = false,
            _ => {}
        }
        true
    }

    pub(super) fn take_sync(&mut self) -> Option<ReplicaSync> {
        match &mut self.state {
            State::Open(h) => h.sync.take(),
            _ => None,
        }
    }
}

/// Reports a replica's new leadership (with its log as elected) or high watermark as an
/// observation.
pub(super) fn observe(
    outputs: &mut VecDeque<Output>,
    observed: &mut std::collections::BTreeMap<String, (u64, u64, bool)>,
    node: u64,
    group: String,
    replica: &Replica,
) {
    use crate::checker::replicas::Observation;
    let last = observed.entry(group.clone()).or_insert((0, 0, false));
    let repairing = replica.raft().is_repairing();
    if repairing != last.2 {
        last.2 = repairing;
        if repairing {
            tracing::warn!(%group, "this replica lost data it may have acknowledged: it neither votes nor campaigns until it has caught up with a leader");
        } else {
            tracing::info!(%group, "repair done: this replica holds every committed entry again");
        }
        outputs.push_back(Output::Observe(Observation::Repair {
            group: group.clone(),
            node,
            repairing,
        }));
    }
    let term = replica.term();
    let log: &PartitionLog = replica.log();
    let epochs = || -> Vec<(i32, u64)> {
        log.epoch_runs()
            .iter()
            .map(|e| (e.epoch, e.start_offset))
            .collect()
    };
    if replica.is_leader() && last.1 != term {
        last.1 = term;
        outputs.push_back(Output::Observe(Observation::Leader {
            group: group.clone(),
            node,
            term,
            log_start: log.log_start_offset(),
            log_end: log.log_end_offset(),
            epochs: epochs(),
        }));
    }
    let hw = log.high_watermark();
    if hw != last.0 {
        last.0 = hw;
        outputs.push_back(Output::Observe(Observation::Committed {
            group,
            node,
            log_start: log.log_start_offset(),
            end: hw,
            epochs: epochs(),
            // A leader's commit index moves only by its own decisions, so the checker may
            // require what it reports of every later term's leader.
            leader_term: replica.is_leader().then_some(term),
        }));
    }
}
