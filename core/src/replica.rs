//! One replica of a partition: Raft running over the partition log, which *is* the Raft log.
//!
//! **Mapping.** Raft index = Kafka offset + 1 (index 0 is "nothing"). A record batch with offsets
//! `base..=last` is one entry over indexes `base + 1 ..= last + 1`; its `partitionLeaderEpoch` is
//! the entry's term. Raft's term-start entry and membership entries are stored as one-record
//! Kafka control batches ([`batch::leader_epoch_start_batch`], [`batch::membership_batch`]),
//! which Kafka clients skip. The high watermark is the commit index (`commit` indexes = the
//! offsets below `commit`), and never passes the synced end.
//!
//! **Flow.** Every input (`produce`, `step`, `tick`, `on_synced`, `hard_state_persisted`) drives
//! Raft until it has nothing ready, executing each Raft write against the partition log at once:
//! a truncation becomes [`PartitionLog::truncate_suffix`], entries become
//! [`PartitionLog::append_replicated`]. Everything for the host leaves through one drain,
//! [`Replica::poll_output`], in the order it must be carried out: the log's storage effects, a
//! hard state to store, messages to peers. Group commits are started by the host when it wants
//! one ([`Replica::poll_sync`]), so it can space them out.
//!
//! **Pipelining.** Messages never wait for the leader's own writes: an append leaves for the
//! followers in the same drain as the leader's write of it, and Raft counts the leader toward
//! the commit only once its own sync confirms the entry.
//!
//! **Durability.** Raft is told a write is persisted (`on_persisted(seq)`) only when every write
//! up to `seq` is on disk: its log changes covered by a completed sync, and its hard state
//! written by the host. The host must durably write a [`ReplicaOutput::HardState`] before calling
//! [`Replica::hard_state_persisted`]; until then no write is confirmed, so no vote or
//! acknowledgement that depends on it can leave. One hard state is in the host's hands at a
//! time (the host writes it off its event loop; two at once would race on the file); a newer
//! one waits for the confirmation.
//!
//! **Peer input.** An append whose payload disagrees with its entry (not one whole batch with a
//! good CRC, or another offset span or epoch than the entry's) is dropped before Raft sees it,
//! and counted ([`Replica::appends_refused`]): a peer can never make the log refuse what Raft
//! accepted.

use std::cell::RefCell;
use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

use crate::batch::{self, CONTROL_TYPE_LEADER_EPOCH_START, CONTROL_TYPE_MEMBERSHIP};
use crate::log::{
    AppendError, LogOp, PartitionLog, ProduceCheck, ReadError, SegmentReader, StoredBatch,
    SyncRequest,
};
use crate::planted::Bug;
use crate::raft::{
    Entry, EntryKind, EntrySource, HardState, LogMeta, Membership, Message, MessageBody, Raft,
    RaftConfig, RaftState, Ready, Role, SnapshotMeta,
};
use crate::rng::Rng;
use crate::{ErrorCode, Refusal};

/// Kafka's timestamp of a record without one.
const NO_TIMESTAMP: i64 = -1;

/// A batch the leader accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Proposed {
    pub base_offset: u64,
    pub last_offset: u64,
    /// The term (leader epoch) it was proposed in: it is committed once the high watermark passes
    /// `last_offset` while the log still holds this term at `base_offset`.
    pub term: u64,
    /// A retry of a batch already in the log: nothing new was proposed.
    pub duplicate: bool,
}

/// DeleteRecords' offset meaning "the high watermark".
pub const DELETE_TO_HIGH_WATERMARK: i64 = -1;

/// What a leader did with a DeleteRecords offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogStartChange {
    /// The log start was already there: this is the low watermark.
    Done { low_watermark: u64 },
    /// A log-start entry was proposed; the low watermark moves once it is committed.
    Proposed(Proposed),
}

/// A group commit handed to the host, with the last Raft write it covers.
#[derive(Debug)]
pub struct ReplicaSync {
    pub request: SyncRequest,
    seq: u64,
}

/// What a replica hands its host (see [`Replica::poll_output`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplicaOutput {
    /// A storage effect of the log, to carry out in order.
    Op(LogOp),
    /// A term or vote to store durably, then confirm with [`Replica::hard_state_persisted`].
    HardState(HardState),
    /// A message for a peer replica.
    Message(Message),
    /// A snapshot was installed: the host must drop the whole log and start it empty at this
    /// offset (every replica holds the data below it; this one lagged behind retention).
    Reset(u64),
}

/// Why a replica could not be opened from its stored state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenError(pub String);

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug)]
pub struct Replica {
    raft: Raft,
    log: PartitionLog,
    /// Seqs of Raft writes that changed the log and are not yet covered by a completed sync.
    unsynced: VecDeque<u64>,
    /// The last Raft write executed against the log.
    written_seq: u64,
    /// The last seq reported to Raft as persisted.
    persisted_seq: u64,
    /// A term or vote the host must make durable (see the module docs).
    hard_state: Option<HardState>,
    /// A hard state is in the host's hands and not yet confirmed durable.
    hard_state_in_flight: bool,
    /// Appends from peers dropped because their payload disagreed with their entries.
    appends_refused: u64,
    /// The last hard state handed out (its term and vote are durable or about to be).
    stored_hard_state: HardState,
    messages: VecDeque<Message>,
    /// Committed entries for a host that applies them (the metadata group).
    committed: Vec<Entry>,
    /// An installed snapshot: the host must restart the log empty at this offset.
    reset_to: Option<u64>,
    /// Segment ages (rolling by `segment.ms`) use this.
    now_ms: u64,
    /// A batch Raft asked for failed its checks on reading (see [`Replica::take_read_damage`]).
    read_damage: Option<ReadDamage>,
}

/// A stored batch that failed its checks when it was read back: its log offset (where the read
/// started) and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadDamage {
    pub offset: u64,
    pub why: String,
}

impl Replica {
    /// A replica over a recovered `log` (switched to replicated mode here) and the hard state the
    /// host stored. `voters` is the group's membership (the partition's replicas). `applied` is
    /// the last index the host's state machine holds: the log start for a host that replays the
    /// log (the metadata group), ignored when `config.apply_entries` is false.
    pub fn open(
        config: RaftConfig,
        rng: Rng,
        hard_state: HardState,
        mut log: PartitionLog,
        voters: Membership,
        applied: u64,
        now_ms: u64,
    ) -> Result<Replica, OpenError> {
        log.set_replicated();
        // A group whose only voter is this replica: every entry its recovered log holds is on
        // its disk, and the next election (which it always wins) commits them all, so they are
        // committed now. Taking them so at once keeps what they did in force across a restart:
        // a DeleteRecords log start acknowledged before it (committed, but in the replayed
        // tail) would otherwise go back until that election's commit, and a fetch in between
        // would serve deleted records (`retention` seed 13).
        let alone = voters.voters() == [config.id];
        let meta = log_meta(&log, voters)?;
        // The log's recovered high watermark was a commit index once (it only ever moves to
        // one), and the stored commit index may lag: take the larger.
        let recovered = if alone {
            meta.last_index()
        } else {
            log.high_watermark()
        };
        let hard_state = HardState {
            commit: hard_state.commit.max(recovered).min(meta.last_index()),
            ..hard_state
        };
        let applied = if config.apply_entries {
            applied.max(meta.snapshot().index)
        } else {
            hard_state.commit
        };
        let state = RaftState {
            hard_state,
            log: meta,
            applied,
        };
        let raft = Raft::new(config, rng, state).map_err(|e| OpenError(format!("{e:?}")))?;
        let mut replica = Replica {
            raft,
            log,
            unsynced: VecDeque::new(),
            written_seq: 0,
            persisted_seq: 0,
            hard_state: None,
            hard_state_in_flight: false,
            appends_refused: 0,
            stored_hard_state: hard_state,
            messages: VecDeque::new(),
            committed: Vec::new(),
            reset_to: None,
            read_damage: None,
            now_ms,
        };
        replica.log.set_high_watermark(replica.raft.commit_index());
        Ok(replica)
    }

    // ---- Inputs ----------------------------------------------------------------------------

    /// Leader: validates a producer's batch (rewriting it into the topic's `compression.type`
    /// through `codec`), answers a retried idempotent batch with its original offsets, and
    /// proposes anything new (stamped with its offsets and the term).
    pub fn produce(
        &mut self,
        mut records: BytesMut,
        now_ms: u64,
        reader: &impl SegmentReader,
        codec: &dyn batch::BatchCodec,
    ) -> Result<Proposed, Refusal> {
        self.now_ms = now_ms;
        self.check_leader_can_write()?;
        // Validated and repaired once, here on the leader, before the batch enters Raft: every
        // replica stores these bytes (followers check their CRC against the entry).
        let header = self
            .log
            .config()
            .validate_produce(&mut records, now_ms, codec)
            .map_err(AppendError::Batch)?;
        let term = self.raft.term();
        match self.log.check_produce(&header)? {
            ProduceCheck::Duplicate(appended) => {
                let term = self
                    .term_at(appended.base_offset)
                    .unwrap_or(self.raft.term());
                return Ok(Proposed {
                    base_offset: appended.base_offset,
                    last_offset: appended.last_offset,
                    term,
                    duplicate: true,
                });
            }
            ProduceCheck::Append => {}
        }
        // Raft appends at the next index in the current term; stamp the batch to match before
        // it goes into Raft's cache and to the followers.
        let first = self.raft.last_index() + 1;
        let Ok(epoch) = i32::try_from(term) else {
            return Err(Refusal::new(
                ErrorCode::UnknownServerError,
                format!("term {term} is beyond any leader epoch"),
            ));
        };
        batch::stamp(&mut records, (first - 1) as i64, epoch);
        let span = u64::from(header.last_offset_delta as u32) + 1;
        let (index, last) = self
            .raft
            .propose(records.freeze(), span)
            .map_err(|e| Refusal::new(e.error_code(), format!("Raft refused it: {e:?}")))?;
        assert_eq!(index, first, "Raft appends at the next index");
        self.drive(reader);
        Ok(Proposed {
            base_offset: index - 1,
            last_offset: last - 1,
            term,
            duplicate: false,
        })
    }

    /// Leader: DeleteRecords (Kafka's `Partition.deleteRecordsOnLeader`). `offset` is a Kafka
    /// offset, or -1 for the high watermark. A log start already at or past it is answered at
    /// once ([`LogStartChange::Done`]); otherwise a log-start entry is proposed, and the log
    /// start moves on every replica when it commits ([`LogStartChange::Proposed`]).
    pub fn delete_records(
        &mut self,
        offset: i64,
        now_ms: u64,
        reader: &impl SegmentReader,
    ) -> Result<LogStartChange, Refusal> {
        self.now_ms = now_ms;
        self.check_leader_can_write()?;
        if !self.log.config().delete {
            return Err(Refusal::new(
                ErrorCode::PolicyViolation,
                "records of a compacted topic cannot be deleted (cleanup.policy=compact)",
            ));
        }
        let high_watermark = self.log.kafka_high_watermark();
        let target = if offset == DELETE_TO_HIGH_WATERMARK {
            high_watermark
        } else {
            match u64::try_from(offset) {
                Ok(o) if o <= high_watermark => o,
                _ => {
                    return Err(Refusal::new(
                        ErrorCode::OffsetOutOfRange,
                        format!(
                            "offset {offset} is not in [0, high watermark {high_watermark}] (or -1)"
                        ),
                    ))
                }
            }
        };
        let low_watermark = self.log.kafka_log_start_offset();
        if target <= low_watermark {
            return Ok(LogStartChange::Done { low_watermark });
        }
        let term = self.raft.term();
        let Ok(epoch) = i32::try_from(term) else {
            return Err(Refusal::new(
                ErrorCode::UnknownServerError,
                format!("term {term} is beyond any leader epoch"),
            ));
        };
        let first = self.raft.last_index() + 1;
        let entry = batch::log_start_batch((first - 1) as i64, epoch, target, NO_TIMESTAMP);
        let (index, last) = self
            .raft
            .propose(Bytes::from(entry), 1)
            .map_err(|e| Refusal::new(e.error_code(), format!("Raft refused it: {e:?}")))?;
        assert_eq!(
            (index, last),
            (first, first),
            "a log-start entry is one index"
        );
        self.drive(reader);
        // The entry is Raft-internal: it takes no Kafka offset, and it names at most the Kafka
        // offset where it stands (the target is at most the high watermark below it).
        debug_assert!(
            self.log
                .pending_log_starts()
                .any(|&(at, kafka)| at == index - 1 && kafka == target)
                || self.log.log_end_offset() < index
        );
        Ok(LogStartChange::Proposed(Proposed {
            base_offset: index - 1,
            last_offset: index - 1,
            term,
            duplicate: false,
        }))
    }

    /// A leader whose storage works: what every client write needs first.
    fn check_leader_can_write(&self) -> Result<(), Refusal> {
        if self.storage_failed() {
            return Err(AppendError::StorageFailed.into());
        }
        if !self.raft.is_leader() {
            return Err(Refusal::new(
                ErrorCode::NotLeaderOrFollower,
                "this replica is not the leader",
            ));
        }
        Ok(())
    }

    /// A message from a peer replica. An append whose payload disagrees with its entries is
    /// dropped and counted (see the module docs).
    pub fn step(&mut self, msg: Message, now_ms: u64, reader: &impl SegmentReader) {
        self.now_ms = now_ms;
        if let MessageBody::Append { entries, .. } = &msg.body {
            if let Err(why) = entries.iter().try_for_each(check_entry_payload) {
                self.appends_refused += 1;
                debug_assert!(!why.is_empty());
                return;
            }
        }
        self.raft.step(msg);
        self.drive(reader);
    }

    /// One tick of the host's Raft clock.
    pub fn tick(&mut self, now_ms: u64, reader: &impl SegmentReader) {
        self.now_ms = now_ms;
        self.raft.tick();
        self.drive(reader);
    }

    /// Starts an election now (see [`Raft::campaign`]).
    pub fn campaign(&mut self, force: bool, reader: &impl SegmentReader) {
        self.raft.campaign(force);
        self.drive(reader);
    }

    /// The host made the last [`ReplicaOutput::HardState`] durable.
    pub fn hard_state_persisted(&mut self, reader: &impl SegmentReader) {
        assert!(
            self.hard_state_in_flight,
            "hard_state_persisted without a hard state handed out"
        );
        self.hard_state_in_flight = false;
        self.drive(reader);
    }

    /// The group commit `sync` completed.
    pub fn on_synced(&mut self, sync: ReplicaSync, reader: &impl SegmentReader) {
        self.log.on_synced(sync.request);
        while self.unsynced.front().is_some_and(|s| *s <= sync.seq) {
            self.unsynced.pop_front();
        }
        self.drive(reader);
    }

    /// Retention: deletes whole committed segments past `retention.ms` / `retention.bytes` and
    /// moves Raft's log start with them. Returns how many segments went.
    pub fn enforce_retention(&mut self, now_ms: u64) -> usize {
        let leads = self.raft.is_leader();
        self.log.set_leads(leads);
        let deleted = self.log.enforce_retention(now_ms);
        if deleted > 0 {
            // The log start is a batch boundary below the high watermark, so applied and an
            // entry end; a refusal would only leave Raft believing in entries it cannot read.
            if let Err(e) = self.raft.compact(self.log.log_start_offset()) {
                // The planted retention bug deletes past the commit index, which Raft refuses.
                debug_assert!(
                    self.log
                        .config()
                        .planted
                        .is(Bug::RetentionIgnoresHighWatermark),
                    "compaction to the log start refused: {e:?}"
                );
            }
        }
        deleted
    }

    /// Hands out what Raft has ready without a new input: after [`Replica::open`], the
    /// committed entries a host that replays the log (`apply_entries`) applies first.
    pub fn poll(&mut self, reader: &impl SegmentReader) {
        self.drive(reader);
    }

    /// Storage failed (a write or an fsync): the log accepts nothing more; the host reopens the
    /// partition from disk (after `log.failure_cut()`), which restarts this replica.
    pub fn on_storage_failed(&mut self) {
        self.log.on_storage_failed();
    }

    // ---- Outputs ---------------------------------------------------------------------------

    /// The next thing for the host to do, in order: the log's storage effects, then a hard
    /// state to store (one at a time), then messages, then a log reset.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<ReplicaOutput> {
        if let Some(op) = self.log.poll_op() {
            return Some(ReplicaOutput::Op(op));
        }
        if !self.hard_state_in_flight {
            if let Some(hs) = self.hard_state.take() {
                assert!(
                    hs.term >= self.stored_hard_state.term,
                    "a stored term never goes back"
                );
                self.stored_hard_state = hs;
                self.hard_state_in_flight = true;
                return Some(ReplicaOutput::HardState(hs));
            }
        }
        if !self.messages.is_empty() {
            return self.messages.pop_front().map(ReplicaOutput::Message);
        }
        self.reset_to.take().map(ReplicaOutput::Reset)
    }

    /// Starts a group commit if the log has anything unsynced and none is in flight.
    pub fn poll_sync(&mut self) -> Option<ReplicaSync> {
        let request = self.log.poll_sync()?;
        Some(ReplicaSync {
            request,
            seq: self.written_seq,
        })
    }

    /// Committed entries, for a host that applies them (`apply_entries`: the metadata quorum,
    /// which applies them itself before handing anything on).
    pub fn take_committed(&mut self) -> Vec<Entry> {
        std::mem::take(&mut self.committed)
    }

    /// A snapshot install the host has not been handed yet (the metadata quorum, which cannot
    /// restart its image from a snapshot, takes it to stop applying).
    pub(crate) fn take_reset(&mut self) -> Option<u64> {
        self.reset_to.take()
    }

    /// Appends from peers dropped because their payload disagreed with their entries.
    pub fn appends_refused(&self) -> u64 {
        self.appends_refused
    }

    /// Whether a hard state was handed out and not yet confirmed.
    pub fn hard_state_in_flight(&self) -> bool {
        self.hard_state_in_flight
    }

    /// Damage a read of Raft's entries found since the last call: a synced batch that fails its
    /// checks. Raft gets nothing for it and asks again and again (a lagging follower would wait
    /// forever), so the host reopens the log to cut the damage and repair it from peers.
    pub fn take_read_damage(&mut self) -> Option<ReadDamage> {
        self.read_damage.take()
    }

    // ---- State -----------------------------------------------------------------------------

    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    pub fn log(&self) -> &PartitionLog {
        &self.log
    }

    pub fn log_mut(&mut self) -> &mut PartitionLog {
        &mut self.log
    }

    pub fn is_leader(&self) -> bool {
        self.raft.role() == Role::Leader
    }

    pub fn leader(&self) -> Option<u64> {
        self.raft.leader()
    }

    /// The current term: Kafka's leader epoch.
    pub fn term(&self) -> u64 {
        self.raft.term()
    }

    pub fn high_watermark(&self) -> u64 {
        self.log.high_watermark()
    }

    pub fn storage_failed(&self) -> bool {
        self.log.storage_failed()
    }

    /// The term of the batch holding `offset`, while it is in the log.
    pub fn term_at(&self, offset: u64) -> Option<u64> {
        self.raft.log().term(offset.checked_add(1)?)
    }

    /// Whether the batch proposed as `proposed` is committed: the high watermark passed it and
    /// the log still holds it (same term at its base offset). `Some(false)` means it was cut
    /// by a new leader and will never commit.
    pub fn is_committed(&self, proposed: &Proposed) -> Option<bool> {
        match self.term_at(proposed.base_offset) {
            Some(term) if term != proposed.term => Some(false),
            None if proposed.base_offset >= self.log.log_end_offset() => Some(false),
            _ if self.log.high_watermark() > proposed.last_offset => Some(true),
            _ => None,
        }
    }

    pub fn check_invariants(&self) {
        self.raft.check_invariants();
        self.log.check_invariants();
        if !self.storage_failed() && self.reset_to.is_none() {
            assert_eq!(
                self.raft.last_index(),
                self.log.log_end_offset(),
                "the Raft log and the partition log end together"
            );
        }
        assert!(
            self.log.high_watermark() <= self.raft.commit_index().max(self.log.log_start_offset())
        );
        assert!(self.persisted_seq <= self.written_seq);
    }

    // ---- Internals -------------------------------------------------------------------------

    /// Runs Raft until it has nothing ready, executing its writes against the log.
    fn drive(&mut self, reader: &impl SegmentReader) {
        loop {
            if self.raft.has_ready() {
                let source = LogSource {
                    log: &self.log,
                    reader,
                    damage: RefCell::new(None),
                };
                let ready = self.raft.ready(&source);
                if let Some(damage) = source.damage.into_inner() {
                    self.read_damage.get_or_insert(damage);
                }
                // Raft stays ready while committed entries wait to be read back, but the log
                // only serves synced data: a restarted replica whose recovered tail is not yet
                // synced again (or a failed read) gets nothing until the next sync. Without
                // this check that was an endless loop (metadata quorum, `apply_entries`; sim
                // seed 39 hung the same way on a damaged batch).
                let idle = ready.is_empty();
                self.execute(ready);
                if !idle {
                    continue;
                }
            }
            // Every write up to `durable` has its log changes synced; none has a hard state
            // still waiting for the host.
            let durable = self
                .unsynced
                .front()
                .map_or(self.written_seq, |first| first - 1);
            let hard_state_stored = self.hard_state.is_none() && !self.hard_state_in_flight;
            if hard_state_stored && durable > self.persisted_seq && !self.storage_failed() {
                assert!(
                    durable <= self.written_seq,
                    "persisted beyond what was written"
                );
                self.persisted_seq = durable;
                self.raft.on_persisted(durable);
                continue;
            }
            break;
        }
        if !self.storage_failed() && self.reset_to.is_none() {
            self.log.set_high_watermark(self.raft.commit_index());
        }
        if cfg!(any(debug_assertions, madsim)) {
            self.check_invariants();
        }
    }

    fn execute(&mut self, ready: Ready) {
        if let Some(write) = ready.write {
            self.written_seq = write.seq;
            if let Some(hs) = write.hard_state {
                // The repair mode is stored too: a replica that forgot its repair ended would
                // refuse votes again after every restart (found by review).
                let stored = &self.stored_hard_state;
                if (hs.term, hs.vote, hs.repair) != (stored.term, stored.vote, stored.repair) {
                    self.hard_state = Some(hs);
                } else {
                    // The commit index alone is an optimisation on disk; it rides along with
                    // the next term or vote change.
                    self.stored_hard_state.commit = hs.commit;
                }
            }
            let mut changed_log = false;
            if let Some(snapshot) = write.snapshot {
                self.reset_to = Some(snapshot.meta.index);
                changed_log = true;
            }
            if let Some(from) = write.truncate_from {
                changed_log = true;
                if !self.storage_failed() && self.reset_to.is_none() {
                    self.log
                        .truncate_suffix(from - 1)
                        .unwrap_or_else(|e| panic!("Raft truncation at index {from}: {e:?}"));
                }
            }
            for entry in write.entries {
                changed_log = true;
                if self.storage_failed() || self.reset_to.is_some() {
                    continue;
                }
                let kafka_offset = self.log.kafka_offset(entry.index - 1);
                let bytes = entry_bytes(&entry, kafka_offset);
                match self.log.append_replicated(bytes, self.now_ms) {
                    // The log has marked itself failed; the host reopens the partition.
                    Ok(_) | Err(crate::log::ReplicaAppendError::StorageFailed) => {}
                    // The leader stamped and checked this batch and Raft checked the entry's
                    // bounds: a refusal here is a broken invariant.
                    Err(e) => {
                        panic!(
                            "entry {}..={} refused by the log: {e:?}",
                            entry.index, entry.last
                        )
                    }
                }
            }
            if changed_log {
                self.unsynced.push_back(write.seq);
            }
        }
        self.messages.extend(ready.messages);
        if self.raft.config().apply_entries {
            self.committed.extend(ready.committed);
        }
    }
}

/// Whether a peer's entry carries what it says: a control entry carries no batch (every replica
/// builds its control batch itself); a normal entry is exactly one whole batch with a good CRC,
/// over the entry's offsets (`index - 1 ..= last - 1`; fewer records than offsets is a batch a
/// cleaner compacted), stamped with the entry's term.
fn check_entry_payload(entry: &Entry) -> Result<(), &'static str> {
    if entry.kind != EntryKind::Normal {
        return Ok(());
    }
    let (Some(base), Some(last)) = (entry.index.checked_sub(1), entry.last.checked_sub(1)) else {
        return Err("an entry at index 0");
    };
    let batches = batch::split_batches(&entry.payload).map_err(|_| "not whole batches")?;
    let [(header, range)] = batches.as_slice() else {
        return Err("not exactly one batch");
    };
    debug_assert_eq!(
        range.len(),
        entry.payload.len(),
        "split_batches covers the buffer"
    );
    if u64::try_from(header.base_offset) != Ok(base) {
        return Err("a base offset other than the entry's");
    }
    if u64::try_from(header.last_offset()) != Ok(last) {
        return Err("an offset span other than the entry's");
    }
    if u64::try_from(header.partition_leader_epoch) != Ok(entry.term) {
        return Err("an epoch other than the entry's term");
    }
    // Raft's own entries take no Kafka offset: a normal entry posing as one would move every
    // Kafka offset after it on this replica alone. The one a leader proposes as a normal entry,
    // DeleteRecords' log start, must be well formed (one record naming an offset).
    if header.is_control() && batch::is_raft_internal_batch(&entry.payload) {
        if batch::control_type_of(&entry.payload) != Some(batch::CONTROL_TYPE_LOG_START) {
            return Err("a normal entry carrying one of Raft's own control batches");
        }
        if batch::log_start_of(&entry.payload).is_none() {
            return Err("a log-start entry that names no offset");
        }
    }
    if header.record_count < 0 || header.record_count > header.last_offset_delta + 1 {
        return Err("a record count that does not fit the offsets");
    }
    Ok(())
}

/// The stored form of an entry: the batch itself, or a control batch for Raft's own entries.
/// Every replica builds the control batches itself, so they must not depend on anything
/// local (a clock): their timestamp is Kafka's "no timestamp", and replicas stay
/// byte-identical. A leader-epoch start names the Kafka offset where it stands
/// (`kafka_offset`, the same on every replica that holds the same log before it), so a log
/// rebuilt without its checkpoint recovers its Kafka offsets.
fn entry_bytes(entry: &Entry, kafka_offset: u64) -> Bytes {
    let offset = (entry.index - 1) as i64;
    let epoch = entry.term as i32;
    match entry.kind {
        EntryKind::Normal => entry.payload.clone(),
        EntryKind::Empty => Bytes::from(batch::leader_epoch_start_batch_at(
            offset,
            epoch,
            kafka_offset as i64,
            NO_TIMESTAMP,
        )),
        EntryKind::Membership => Bytes::from(batch::membership_batch(
            offset,
            epoch,
            &entry.payload,
            NO_TIMESTAMP,
        )),
    }
}

/// Raft's view of the stored log: whole batches up to the synced end, read through the host.
struct LogSource<'a, R> {
    log: &'a PartitionLog,
    reader: &'a R,
    /// The first damaged batch a read met.
    damage: RefCell<Option<ReadDamage>>,
}

impl<R: SegmentReader> EntrySource for LogSource<'_, R> {
    fn entries(&self, lo: u64, hi: u64, max_bytes: u64, out: &mut Vec<Entry>) {
        let Ok(mut cursor) = self
            .log
            .read_durable(lo - 1, max_bytes.min(u64::from(u32::MAX)) as u32)
        else {
            return;
        };
        // Returning fewer entries (none, after an I/O error) is allowed: Raft asks again.
        match cursor.run(self.reader) {
            Ok(()) => {}
            Err(ReadError::Corrupt(why)) => {
                self.damage.borrow_mut().get_or_insert(ReadDamage {
                    offset: lo - 1,
                    why,
                });
                return;
            }
            Err(_) => return,
        }
        for mut batch in cursor.into_batches() {
            if batch.base_offset + 1 < lo {
                // A run of batches this replica's cleaner removed, which the reader's log still
                // has as separate entries: send the part from `lo` on.
                match crate::log::trim_removed_run(&batch.bytes, lo - 1) {
                    Some(trimmed) => {
                        batch.base_offset = lo - 1;
                        batch.bytes = Bytes::from(trimmed);
                    }
                    None => continue,
                }
            }
            if batch.last_offset + 1 > hi {
                break;
            }
            // The epoch cache is the authority on terms (the batch's epoch field is outside its
            // CRC, and a flipped bit there must not reach a follower as a different term).
            if let Some(epoch) = self.log.epoch_at(batch.base_offset) {
                if epoch != batch.epoch {
                    let mut bytes = BytesMut::from(&batch.bytes[..]);
                    batch::set_partition_leader_epoch(&mut bytes, epoch);
                    batch.bytes = bytes.freeze();
                    batch.epoch = epoch;
                }
            }
            out.push(entry_of(batch));
        }
    }

    fn snapshot_data(&self, _index: u64) -> Option<Bytes> {
        // A follower behind the log start would restart its log there, but restarting a log at
        // an offset (with the Kafka offset, leader epochs and producer state there) is not
        // built yet (docs/architecture.md, Known limits). Sending it a snapshot would move its
        // Raft log past its partition log, so nothing is sent: it stays behind, and the group
        // runs on the other replicas.
        None
    }
}

/// Raft's entry for a batch read back from the log.
pub fn entry_of(batch: StoredBatch) -> Entry {
    let (kind, payload) = match batch.control_type {
        Some(CONTROL_TYPE_LEADER_EPOCH_START) => (EntryKind::Empty, Bytes::new()),
        Some(CONTROL_TYPE_MEMBERSHIP) => (
            EntryKind::Membership,
            batch::control_value(&batch.bytes)
                .map(Bytes::copy_from_slice)
                .unwrap_or_default(),
        ),
        _ => (EntryKind::Normal, batch.bytes),
    };
    Entry {
        index: batch.base_offset + 1,
        last: batch.last_offset + 1,
        term: batch.epoch.max(0) as u64,
        kind,
        payload,
    }
}

/// Raft's index of a recovered log: its term runs come from the log's leader-epoch cache.
///
/// The snapshot boundary is the log start. Its term is the epoch covering the log start, which
/// is exact when the log is empty and otherwise at least the true term of the dropped entry
/// before it; everything below the log start is committed and identical on every replica, so
/// the boundary term only decides whether a follower is sent a snapshot or an append there.
fn log_meta(log: &PartitionLog, voters: Membership) -> Result<LogMeta, OpenError> {
    let start = log.log_start_offset();
    let end = log.log_end_offset();
    let epochs = log.epoch_runs();
    let boundary_term = epochs
        .iter()
        .take_while(|e| e.start_offset <= start)
        .last()
        .map_or(0, |e| e.epoch.max(0) as u64);
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for e in epochs {
        let first = e.start_offset.max(start) + 1;
        if first > end {
            continue;
        }
        let term = e.epoch.max(0) as u64;
        match runs.last_mut() {
            // A run the log start cut into nothing is replaced by the next one.
            Some(last) if last.0 == first => *last = (first, term),
            _ => runs.push((first, term)),
        }
    }
    let snapshot = SnapshotMeta {
        index: start,
        term: if start == 0 { 0 } else { boundary_term },
        membership: voters,
    };
    LogMeta::from_runs(snapshot, runs, end, Vec::new())
        .map_err(|e| OpenError(format!("the log's epochs do not form a Raft log: {e:?}")))
}

#[cfg(test)]
mod tests;
