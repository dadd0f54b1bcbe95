//! The partition log as a sans-IO state machine.
//!
//! Inputs: `append` (a producer's batches), `poll_sync` / `on_synced` (group commit),
//! `enforce_retention`, and reads planned with `read` / `offset_for_timestamp`. Outputs: the
//! [`LogOp`]s drained with `poll_op`, which the shell executes in order against its storage, and
//! [`SyncRequest`]s. Nothing here touches a file or a clock.
//!
//! Durability: in single-node mode the high watermark is the end of the prefix known to be
//! fsynced. In replicated mode (see [`replicated`]) the host sets it from the Raft commit index,
//! never past the synced end. Reads never go past it, and the shell releases an acks=all reply only
//! once the high watermark covers the batch.

mod clean;
mod epochs;
mod read;
mod recovery;
mod replicated;
mod segment;
mod store;
mod translate;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::{Bytes, BytesMut};

pub use clean::{trim_removed_run, CleanError, CleanReport, CleanStep, CleanTarget, Cleaner};
pub use epochs::{EpochStart, LeaderEpochCache, UNDEFINED_EPOCH, UNDEFINED_EPOCH_OFFSET};
pub use read::{ReadCursor, ReadIo, ReadTarget, SegmentReader, StoredBatch, TimestampHit};
pub use recovery::{Checkpoint, Damage, Recovery, RecoveryIo, CHECKPOINT_FILE};
pub use replicated::{ProduceCheck, ReplicaAppendError, ReplicaAppended, TruncateError};
pub use segment::{
    index_file_name, log_file_name, parse_log_file_name, time_index_file_name, OffsetEntry,
    Segment, SegmentMark, TimeEntry,
};
pub use store::{CleanProgress, LogStore, SwapJob, SyncJob, CLEANED_SUFFIX};
pub use translate::OffsetTranslator;

use crate::batch::{
    self, BatchCodec, BatchError, BatchHeader, CompressionLevels, CompressionType, ProduceRules,
    TimestampType,
};
use crate::limits::*;
use crate::planted::{Bug, Planted};
use crate::producer::{ProducerError, ProducerStateTable, ProducerUndo};
use crate::ErrorCode;

/// Per-topic log settings (Kafka topic config names in the doc comments).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogConfig {
    /// `segment.bytes`
    pub segment_bytes_max: u64,
    /// `segment.ms`
    pub segment_ms: u64,
    /// `retention.ms`; negative means keep forever.
    pub retention_ms: i64,
    /// `retention.bytes`; negative means no size limit.
    pub retention_bytes: i64,
    /// `index.interval.bytes`
    pub index_interval_bytes: u32,
    /// `max.message.bytes`
    pub message_bytes_max: u32,
    /// `cleanup.policy` includes `delete`: retention by time and size applies.
    pub delete: bool,
    /// `cleanup.policy` includes `compact`: the cleaner keeps the latest record per key.
    pub compact: bool,
    /// `delete.retention.ms`: how long a tombstone outlives the records it deleted.
    pub delete_retention_ms: i64,
    /// `min.cleanable.dirty.ratio`, in parts per ten thousand: cleaning starts once this share
    /// of the cleanable bytes has not been cleaned yet.
    pub min_cleanable_dirty_ratio_bp: u32,
    /// `message.timestamp.type`.
    pub timestamp_type: TimestampType,
    /// `message.timestamp.before.max.ms`: a `CreateTime` timestamp further in the past than
    /// this is refused (INVALID_TIMESTAMP).
    pub timestamp_before_max_ms: i64,
    /// `message.timestamp.after.max.ms`: a `CreateTime` timestamp further in the future than
    /// this is refused (INVALID_TIMESTAMP).
    pub timestamp_after_max_ms: i64,
    /// `compression.type`: the codec the leader stores batches in (`producer`: as sent).
    pub compression_type: CompressionType,
    /// `compression.gzip.level`, `compression.lz4.level`, `compression.zstd.level`.
    pub compression_levels: CompressionLevels,
    /// A deliberate defect for the simulator's checker tests (nothing outside them).
    pub planted: Planted,
}

impl Default for LogConfig {
    fn default() -> LogConfig {
        LogConfig {
            segment_bytes_max: SEGMENT_BYTES_MAX_DEFAULT,
            segment_ms: SEGMENT_MS_DEFAULT,
            retention_ms: RETENTION_MS_DEFAULT,
            retention_bytes: -1,
            index_interval_bytes: INDEX_INTERVAL_BYTES_DEFAULT,
            message_bytes_max: MESSAGE_BYTES_MAX_DEFAULT,
            delete: true,
            compact: false,
            delete_retention_ms: DELETE_RETENTION_MS_DEFAULT,
            min_cleanable_dirty_ratio_bp: MIN_CLEANABLE_DIRTY_RATIO_BP_DEFAULT,
            timestamp_type: TimestampType::CreateTime,
            timestamp_before_max_ms: TIMESTAMP_BEFORE_MAX_MS_DEFAULT,
            timestamp_after_max_ms: TIMESTAMP_AFTER_MAX_MS_DEFAULT,
            compression_type: CompressionType::Producer,
            compression_levels: CompressionLevels::default(),
            planted: Planted::NONE,
        }
    }
}

impl LogConfig {
    /// What this topic demands of a producer's batch (Kafka's `LogValidator` inputs).
    pub fn produce_rules(&self) -> ProduceRules {
        ProduceRules {
            // Planted: the topic's limit is not in force, only the broker default.
            message_bytes_max: if self.planted.is(Bug::MaxMessageBytesIgnored) {
                MESSAGE_BYTES_MAX_DEFAULT.max(self.message_bytes_max)
            } else {
                self.message_bytes_max
            },
            keys_required: self.compact,
            timestamp_type: self.timestamp_type,
            timestamp_before_max_ms: self.timestamp_before_max_ms,
            timestamp_after_max_ms: self.timestamp_after_max_ms,
            compression_type: self.compression_type,
            compression_levels: self.compression_levels,
        }
    }

    /// A producer's batch checked as this topic takes it at the wall clock `now_ms`, and
    /// repaired as Kafka repairs it (rewritten into `compression.type` through `codec`,
    /// `maxTimestamp`, CRC): [`batch::accept_produce`].
    pub fn validate_produce(
        &self,
        records: &mut BytesMut,
        now_ms: u64,
        codec: &dyn BatchCodec,
    ) -> Result<BatchHeader, BatchError> {
        let now_ms = i64::try_from(now_ms).unwrap_or(i64::MAX);
        batch::accept_produce(records, &self.produce_rules(), now_ms, codec)
    }

    /// Checks ranges; the error names the offending setting.
    pub fn validate(&self) -> Result<(), String> {
        if !(SEGMENT_BYTES_MIN..=SEGMENT_BYTES_LIMIT).contains(&self.segment_bytes_max) {
            return Err(format!(
                "segment.bytes must be in {SEGMENT_BYTES_MIN}..={SEGMENT_BYTES_LIMIT}, got {}",
                self.segment_bytes_max
            ));
        }
        if self.segment_ms == 0 {
            return Err("segment.ms must be positive".into());
        }
        if self.index_interval_bytes > INDEX_INTERVAL_BYTES_MAX {
            return Err(format!(
                "index.interval.bytes must be at most {INDEX_INTERVAL_BYTES_MAX}"
            ));
        }
        if !self.delete && !self.compact {
            return Err("cleanup.policy must name delete, compact or both".into());
        }
        if self.delete_retention_ms < 0 {
            return Err("delete.retention.ms must not be negative".into());
        }
        if self.min_cleanable_dirty_ratio_bp > 10_000 {
            return Err("min.cleanable.dirty.ratio must be in 0..=1".into());
        }
        if self.timestamp_before_max_ms < 0 || self.timestamp_after_max_ms < 0 {
            return Err(
                "message.timestamp.before.max.ms and after.max.ms must not be negative".into(),
            );
        }
        self.compression_levels.validate()?;
        if (self.message_bytes_max as usize) < BATCH_HEADER_BYTES {
            return Err(format!(
                "max.message.bytes must be at least {BATCH_HEADER_BYTES}"
            ));
        }
        Ok(())
    }
}

/// A storage effect for the shell to carry out, in the order emitted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogOp {
    /// Create the (empty) segment file for `base_offset`.
    CreateSegment { base_offset: u64 },
    /// Append `bytes` to the segment file, whose length must be `position` before the write.
    Append {
        segment: u64,
        position: u64,
        bytes: Bytes,
    },
    /// Write the index files of a segment that has just been sealed.
    WriteIndexes {
        segment: u64,
        offset_index: Vec<u8>,
        time_index: Vec<u8>,
    },
    /// Remove a segment's files. The removal becomes durable with the next group commit, which
    /// syncs the directory (the log marks it dirty).
    DeleteSegment { base_offset: u64 },
    /// Cut a segment file to `len` bytes (recovery of a torn or corrupt tail, or a truncation of
    /// the uncommitted suffix).
    TruncateSegment { segment: u64, len: u64 },
    /// A barrier after a truncation of the uncommitted suffix: fsync the cut `segment` and, if
    /// `dir`, the directory (segments after it were deleted), before any later op of this log
    /// runs. Otherwise a crash could bring back the cut tail or a deleted segment behind data
    /// written after the cut, and recovery could take the mix for one log. The shell runs it off
    /// its event loop and holds this log's later ops until it completes.
    SyncCut { segment: u64, dir: bool },
    /// Write the next partition checkpoint to its temporary file. The next group commit
    /// ([`SyncRequest::checkpoint`]) fsyncs it, renames it over the checkpoint and fsyncs the
    /// directory, so the replacement is atomic and never waits on the shell's event loop.
    WriteCheckpoint { bytes: Vec<u8> },
}

/// One group commit: fsync these files, then the directory if `dir`, then report back with
/// [`PartitionLog::on_synced`]. Everything appended before the request was made is covered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncRequest {
    /// Segment `.log` files with unsynced appends.
    pub segments: Vec<u64>,
    /// Segments whose index files were written and not yet synced.
    pub indexes: Vec<u64>,
    /// Whether files were created or removed since the last sync.
    pub dir: bool,
    /// Whether the checkpoint written to its temporary file by the last
    /// [`LogOp::WriteCheckpoint`] is to be made durable: fsync it, rename it over the checkpoint,
    /// then fsync the directory (`dir` is set too).
    pub checkpoint: bool,
    /// The log end offset when the request was made: durable once the request completes.
    pub offset: u64,
    position: Position,
}

/// A point in the log: an offset and where its batch starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Position {
    offset: u64,
    segment: u64,
    byte: u64,
}

/// How to take back one batch: where it started, and the state it changed.
#[derive(Clone, Debug)]
struct Undo {
    at: Position,
    next_offset: u64,
    /// Its segment just before it.
    mark: SegmentMark,
    producer: Option<ProducerUndo>,
}

/// Result of a successful append.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    pub base_offset: u64,
    pub last_offset: u64,
    /// True when this was a retry of a batch already in the log; nothing was written.
    pub duplicate: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AppendError {
    Batch(BatchError),
    Producer(ProducerError),
    /// The leader epoch is older than the log's latest (a deposed leader).
    FencedLeaderEpoch {
        latest: i32,
        received: i32,
    },
    /// Storage failed earlier; the log accepts nothing until recovered from disk.
    StorageFailed,
}

impl AppendError {
    pub fn error_code(&self) -> ErrorCode {
        match self {
            AppendError::Batch(e) => e.error_code(),
            AppendError::Producer(e) => e.error_code(),
            AppendError::FencedLeaderEpoch { .. } => ErrorCode::FencedLeaderEpoch,
            AppendError::StorageFailed => ErrorCode::KafkaStorageError,
        }
    }
}

impl From<AppendError> for crate::Refusal {
    fn from(e: AppendError) -> crate::Refusal {
        crate::Refusal::new(e.error_code(), e.to_string())
    }
}

impl std::fmt::Display for AppendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AppendError::Batch(e) => e.fmt(f),
            AppendError::Producer(e) => e.fmt(f),
            AppendError::FencedLeaderEpoch { latest, received } => {
                write!(
                    f,
                    "leader epoch {received} is older than the log's {latest}"
                )
            }
            AppendError::StorageFailed => {
                write!(f, "the log's storage failed; it must be recovered")
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadError {
    /// Kafka's OFFSET_OUT_OF_RANGE: below the log start or above the log end.
    OffsetOutOfRange {
        log_start_offset: u64,
        log_end_offset: u64,
    },
    /// Stored bytes failed their check: never served.
    Corrupt(String),
    StorageFailed,
}

impl ReadError {
    pub fn error_code(&self) -> ErrorCode {
        match self {
            ReadError::OffsetOutOfRange { .. } => ErrorCode::OffsetOutOfRange,
            ReadError::Corrupt(_) | ReadError::StorageFailed => ErrorCode::KafkaStorageError,
        }
    }
}

/// The log of one partition replica.
#[derive(Debug)]
pub struct PartitionLog {
    config: LogConfig,
    /// By base offset; contiguous: each segment's `next_offset` is the next one's base. The last
    /// one is the active segment. Never empty.
    segments: BTreeMap<u64, Segment>,
    /// End of the fsynced prefix.
    durable: Position,
    /// End of the prefix that may be kept if storage fails: what was durable, or what was found
    /// on disk at recovery (whichever is later). Everything after it was written by this run
    /// and never confirmed by an fsync.
    trusted: Position,
    /// Reads stop here. Single node: always `durable`. Replicated: set by the host from the Raft
    /// commit index, never past `durable`, never backwards (Raft never truncates what is
    /// committed).
    high_watermark: Position,
    /// Whether the high watermark comes from outside (Raft) rather than from group commits.
    replicated: bool,
    /// Replicated mode: the Raft commit index as an offset; the high watermark follows it as far
    /// as the synced end allows. Never decreases.
    commit_target: u64,
    /// Where each leader epoch starts.
    epochs: LeaderEpochCache,
    /// Kafka offsets over the log's offsets: Raft's own entries take none.
    translator: OffsetTranslator,
    /// The Kafka log start DeleteRecords set (the largest one a committed log-start entry
    /// named; 0 if none). Clients see `max(this, kafka(first segment base))`. Never decreases,
    /// never passes the Kafka high watermark; stored in every checkpoint.
    kafka_start: u64,
    /// Log-start entries written and not yet committed, oldest first: (log offset, the Kafka
    /// offset it names, at most its own Kafka offset). Each lies in `[high watermark, log end)`;
    /// a commit past one applies it to `kafka_start`, a truncation forgets it.
    pending_starts: VecDeque<(u64, u64)>,
    /// One record per batch in `[high watermark, log end)`, oldest first: how to take it back
    /// when Raft truncates the uncommitted suffix. Bounded by what is appended and not yet
    /// committed (Raft bounds a leader's uncommitted entries; recovery adds the replayed tail).
    undo: VecDeque<Undo>,
    /// The lowest truncation point since the sync in flight was requested: that sync makes
    /// nothing at or past it durable.
    cut_during_sync: Option<Position>,
    ops: VecDeque<LogOp>,
    dirty_segments: BTreeSet<u64>,
    dirty_indexes: BTreeSet<u64>,
    dirty_dir: bool,
    sync_in_flight: bool,
    producers: ProducerStateTable,
    /// The checkpoint on disk says every segment below this is sealed and durable.
    recovery_point: u64,
    /// A checkpoint written to its temporary file, for the next group commit to make durable:
    /// the segment base it names.
    checkpoint_pending: Option<u64>,
    /// The checkpoint the group commit in flight makes durable. While it flies no other is
    /// written (the temporary file is that sync's to rename).
    checkpoint_in_flight: Option<u64>,
    /// The checkpoint (producer state and epochs) as of each segment base created since the last
    /// one was written; the checkpoint moves to such a base once it is durable and committed.
    snapshots: VecDeque<(u64, Vec<u8>)>,
    storage_failed: bool,
    /// Compaction in progress (`cleanup.policy=compact`).
    cleaner: Option<Cleaner>,
    /// End of the range the last finished cleaning covered (0 after opening: the first cleaning
    /// after a restart covers everything cleanable).
    cleaned_end: u64,
    /// When the earliest tombstone the last cleaning kept becomes removable.
    tombstone_due_ms: Option<i64>,
    /// A side file of an abandoned cleaning, for the shell to remove.
    discard: Option<u64>,
    /// A cleaning found damage: none until the partition is reopened (and recovered).
    cleaning_halted: bool,
    /// Whether the replica holding this log leads it: read only by the planted retention bug,
    /// which only followers have (set by [`crate::replica::Replica`] before each retention run).
    leads: bool,
    last_clean: Option<CleanReport>,
    /// What the last retention run that deleted segments did, until the host takes it
    /// ([`PartitionLog::take_deletion`]) for the simulator's retention checker.
    last_deletion: Option<crate::checker::retention::Deletion>,
}

impl PartitionLog {
    /// A new, empty log starting at offset 0.
    pub fn create(config: LogConfig) -> PartitionLog {
        let mut log =
            PartitionLog::from_parts(config, vec![Segment::new(0)], ProducerStateTable::new(), 0);
        log.push_op(LogOp::CreateSegment { base_offset: 0 });
        log.dirty_dir = true;
        log
    }

    /// Used by `create` and by recovery. `segments` must be contiguous and non-empty; all of
    /// them are considered durable except what recovery marks dirty afterwards.
    fn from_parts(
        config: LogConfig,
        segments: Vec<Segment>,
        producers: ProducerStateTable,
        recovery_point: u64,
    ) -> PartitionLog {
        assert!(!segments.is_empty());
        let last = segments.last().expect("non-empty");
        let durable = Position {
            offset: last.next_offset,
            segment: last.base_offset,
            byte: last.size_bytes,
        };
        let mut log = PartitionLog {
            config,
            segments: segments.into_iter().map(|s| (s.base_offset, s)).collect(),
            durable,
            trusted: durable,
            high_watermark: durable,
            replicated: false,
            commit_target: 0,
            epochs: LeaderEpochCache::new(),
            translator: OffsetTranslator::new(),
            kafka_start: 0,
            pending_starts: VecDeque::new(),
            undo: VecDeque::new(),
            cut_during_sync: None,
            ops: VecDeque::new(),
            dirty_segments: BTreeSet::new(),
            dirty_indexes: BTreeSet::new(),
            dirty_dir: false,
            sync_in_flight: false,
            producers,
            recovery_point,
            checkpoint_pending: None,
            checkpoint_in_flight: None,
            snapshots: VecDeque::new(),
            storage_failed: false,
            cleaner: None,
            cleaned_end: 0,
            tombstone_due_ms: None,
            discard: None,
            cleaning_halted: false,
            leads: false,
            last_clean: None,
            last_deletion: None,
        };
        if let Some(last) = log.segments.values_mut().last() {
            last.sealed = false;
        }
        log.check_invariants();
        log
    }

    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    /// Topic config changes (retention, segment size) apply from the next append or retention run.
    pub fn set_config(&mut self, config: LogConfig) {
        let (delete, compact) = (self.config.delete, self.config.compact);
        self.config = config;
        // Planted: a changed cleanup.policy is not taken up.
        if self.config.planted.is(Bug::CompactionIgnored) {
            (self.config.delete, self.config.compact) = (delete, compact);
        }
    }

    pub fn log_start_offset(&self) -> u64 {
        *self.segments.keys().next().expect("never empty")
    }

    /// The offset the next appended record gets (Kafka's LEO).
    pub fn log_end_offset(&self) -> u64 {
        self.active().next_offset
    }

    /// The end of the committed prefix (fsynced, or in replicated mode committed by Raft); reads
    /// stop here.
    pub fn high_watermark(&self) -> u64 {
        self.high_watermark.offset
    }

    /// Where each leader epoch starts, oldest first (the first one covers the log start): the
    /// term runs Raft rebuilds its index from at a restart.
    pub fn epoch_runs(&self) -> &[EpochStart] {
        self.epochs.entries()
    }

    /// The leader epoch of the batch holding `offset`, from the leader-epoch cache (which is
    /// checked at recovery; a batch's own epoch field is outside its CRC).
    pub fn epoch_at(&self, offset: u64) -> Option<i32> {
        let runs = self.epochs.entries();
        let i = runs.partition_point(|e| e.start_offset <= offset);
        i.checked_sub(1).map(|i| runs[i].epoch)
    }

    /// Kafka's OffsetForLeaderEpoch for this replica: see [`LeaderEpochCache::end_offset_for`].
    pub fn end_offset_for_epoch(&self, epoch: i32) -> (i32, i64) {
        self.epochs.end_offset_for(epoch, self.log_end_offset())
    }

    /// Kafka offsets over this log's offsets (Raft's own entries take none).
    pub fn offsets(&self) -> &OffsetTranslator {
        &self.translator
    }

    /// The Kafka offset of log offset `offset`.
    pub fn kafka_offset(&self, offset: u64) -> u64 {
        self.translator.kafka(offset)
    }

    /// The high watermark as clients see it.
    pub fn kafka_high_watermark(&self) -> u64 {
        self.translator.kafka(self.high_watermark.offset)
    }

    /// The log start offset as clients see it (Kafka's low watermark): where the first
    /// segment starts, or where committed DeleteRecords moved it, whichever is later.
    pub fn kafka_log_start_offset(&self) -> u64 {
        self.translator
            .kafka(self.log_start_offset())
            .max(self.kafka_start)
    }

    /// The Kafka log start every log-start entry written so far names, committed or not: what
    /// a checkpoint at the log end records (it is written only once everything below it is
    /// committed).
    fn kafka_start_written(&self) -> u64 {
        self.pending_starts
            .iter()
            .map(|(_, kafka)| *kafka)
            .fold(self.kafka_start, u64::max)
    }

    /// Log-start entries written and not yet committed: (log offset, Kafka offset named).
    pub fn pending_log_starts(&self) -> impl Iterator<Item = &(u64, u64)> {
        self.pending_starts.iter()
    }

    /// The log end offset as clients see it.
    pub fn kafka_log_end_offset(&self) -> u64 {
        self.translator.kafka(self.log_end_offset())
    }

    /// Kafka's OffsetForLeaderEpoch in Kafka offsets.
    pub fn kafka_end_offset_for_epoch(&self, epoch: i32) -> (i32, i64) {
        let (epoch, end) = self.end_offset_for_epoch(epoch);
        (epoch, self.translator.kafka_i64(end))
    }

    /// A Raft-internal entry was written at `offset`.
    fn record_internal(&mut self, offset: u64) {
        self.translator.record(offset);
    }

    /// The log's suffix from `offset` on was cut.
    fn cut_internal(&mut self, offset: u64) {
        self.translator.truncate_from_end(offset);
        if self.config.planted.is(Bug::OffsetMapOffByOne) {
            // Planted: the cut also forgets the last of Raft's entries before it, so every
            // Kafka offset past that entry is one too large on this replica.
            if let Some(&last) = self.translator.listed().last() {
                self.translator.truncate_from_end(last);
            }
        }
    }

    pub fn size_bytes(&self) -> u64 {
        self.segments.values().map(|s| s.size_bytes).sum()
    }

    pub fn segments(&self) -> impl Iterator<Item = &Segment> {
        self.segments.values()
    }

    pub fn producers(&self) -> &ProducerStateTable {
        &self.producers
    }

    pub fn storage_failed(&self) -> bool {
        self.storage_failed
    }

    fn active(&self) -> &Segment {
        self.segments.values().next_back().expect("never empty")
    }

    fn active_mut(&mut self) -> &mut Segment {
        self.segments.values_mut().next_back().expect("never empty")
    }

    fn push_op(&mut self, op: LogOp) {
        self.ops.push_back(op);
    }

    /// The next storage effect to execute, in order.
    #[must_use]
    pub fn poll_op(&mut self) -> Option<LogOp> {
        self.ops.pop_front()
    }

    /// Validates and appends a producer's batch (one produce request's data for this partition;
    /// Kafka accepts exactly one batch per partition). The offset is assigned by rewriting the
    /// batch's base offset in place. A retried idempotent batch is recognised and answered with
    /// its original offsets without writing anything.
    pub fn append(
        &mut self,
        mut records: BytesMut,
        partition_leader_epoch: i32,
        now_ms: u64,
    ) -> Result<Appended, AppendError> {
        if self.storage_failed {
            return Err(AppendError::StorageFailed);
        }
        let header = self
            .config
            // A log without a node has no codecs (tests and benchmarks): a batch `compression.type`
            // would rewrite from or into a compressed codec is refused here. The node's replicas
            // use the codecs the shell gave the node.
            .validate_produce(&mut records, now_ms, &batch::NoCodecs)
            .map_err(AppendError::Batch)?;
        if let ProduceCheck::Duplicate(appended) = self.check_produce(&header)? {
            return Ok(appended);
        }
        // A single-node log has no leader changes; a stored epoch above the broker's can only
        // come from damage to that field (the CRC does not cover it). Keep epochs monotonic
        // instead of refusing every later produce.
        let partition_leader_epoch = match self.epochs.latest_epoch() {
            Some(latest) if !self.replicated && partition_leader_epoch >= 0 => {
                partition_leader_epoch.max(latest)
            }
            _ => partition_leader_epoch,
        };
        if partition_leader_epoch >= 0 && !self.epochs.accepts(partition_leader_epoch) {
            return Err(AppendError::FencedLeaderEpoch {
                latest: self.epochs.latest_epoch().unwrap_or(UNDEFINED_EPOCH),
                received: partition_leader_epoch,
            });
        }
        let offset = self.log_end_offset();
        let mut assigned = header;
        assigned.base_offset = offset as i64;
        assigned.partition_leader_epoch = partition_leader_epoch;
        batch::stamp(&mut records, offset as i64, partition_leader_epoch);
        self.write_batch(&assigned, records.freeze(), now_ms);
        assert_eq!(
            self.log_end_offset(),
            assigned.next_offset() as u64,
            "the appended batch does not end the log"
        );
        // Fetch answers and OffsetForLeaderEpoch read the epoch from the cache, so the cache must
        // know the epoch the batch was stamped with.
        assert!(
            partition_leader_epoch < 0
                || self.epochs.latest_epoch() == Some(partition_leader_epoch),
            "the epoch cache does not end in the appended batch's epoch"
        );
        // The batch is not durable yet: only a group commit (or Raft) may move reads over it.
        assert!(
            self.high_watermark.offset <= offset,
            "an append moved the high watermark"
        );
        if cfg!(any(debug_assertions, madsim)) {
            self.check_invariants();
        }
        Ok(Appended {
            base_offset: offset,
            last_offset: assigned.last_offset() as u64,
            duplicate: false,
        })
    }

    /// Appends one whole, checked batch whose base offset is the log end: rolls if due, updates
    /// producer state and the epoch cache, keeps its undo record, and emits the write.
    fn write_batch(&mut self, header: &BatchHeader, bytes: Bytes, now_ms: u64) {
        assert_eq!(header.base_offset as u64, self.log_end_offset());
        assert_eq!(bytes.len(), header.total_bytes());
        // After a storage failure nothing written can be trusted; callers refuse first.
        assert!(!self.storage_failed, "a batch written after storage failed");
        if self.should_roll(
            header.total_bytes() as u64,
            header.record_count as u64,
            now_ms,
        ) {
            self.roll();
        }
        let producer = self.producers.record(header);
        if header.partition_leader_epoch >= 0 {
            self.epochs
                .assign(header.partition_leader_epoch, header.base_offset as u64);
        }
        if header.is_control() && batch::is_raft_internal_batch(&bytes) {
            let offset = header.base_offset as u64;
            if let Some(named) = batch::log_start_of(&bytes) {
                // Every replica holds the same log below this entry, so the cap is the same
                // everywhere: a log start never passes the entry that set it.
                let kafka = named.min(self.translator.kafka(offset));
                self.pending_starts.push_back((offset, kafka));
            }
            self.record_internal(offset);
        }
        let interval = self.config.index_interval_bytes;
        let segment = self.active_mut();
        let at = Position {
            offset: segment.next_offset,
            segment: segment.base_offset,
            byte: segment.size_bytes,
        };
        let mark = segment.mark();
        segment.on_batch(header, interval, Some(now_ms));
        // The Append below writes the bytes at `at.byte`: the segment in memory must end where
        // the file will, or reads and recovery disagree with the file.
        assert_eq!(
            segment.size_bytes,
            at.byte + bytes.len() as u64,
            "the segment did not grow by the batch's bytes"
        );
        // Undo records cover exactly [high watermark, log end), so this batch's record must start
        // where the last one ends (the planted off-by-one moves the log end under them).
        if !self.config.planted.is(Bug::RecoveryOffByOne) {
            assert_eq!(
                self.undo
                    .back()
                    .map_or(self.high_watermark.offset, |u| u.next_offset),
                at.offset,
                "the undo records do not end where the batch starts"
            );
        }
        self.undo.push_back(Undo {
            at,
            next_offset: header.next_offset() as u64,
            mark,
            producer,
        });
        self.dirty_segments.insert(at.segment);
        self.push_op(LogOp::Append {
            segment: at.segment,
            position: at.byte,
            bytes,
        });
    }

    fn should_roll(&self, bytes: u64, records: u64, now_ms: u64) -> bool {
        let active = self.active();
        assert!(!active.sealed, "the active segment is sealed");
        if active.is_empty() {
            return false;
        }
        let too_big = active.size_bytes + bytes > self.config.segment_bytes_max;
        // After a restart the append time is gone; the first batch's timestamp (capped at now, so a
        // clock far ahead cannot hold a segment open) stands in for it.
        let first = active.first_append_ms.or_else(|| {
            active
                .first_timestamp
                .map(|t| t.clamp(0, now_ms as i64) as u64)
        });
        let too_old =
            first.is_some_and(|first| now_ms.saturating_sub(first) >= self.config.segment_ms);
        // Index entries hold offsets relative to the base as u32.
        let offsets_full = active.next_offset + records - active.base_offset > u64::from(u32::MAX);
        too_big || too_old || offsets_full
    }

    /// Seals the active segment (writes its indexes) and starts a new one at the log end.
    fn roll(&mut self) {
        let next = self.log_end_offset();
        let active = self.active_mut();
        assert!(!active.is_empty(), "rolling an empty segment");
        active.seal();
        let op = LogOp::WriteIndexes {
            segment: active.base_offset,
            offset_index: active.encode_offset_index(),
            time_index: active.encode_time_index(),
        };
        let sealed_base = active.base_offset;
        // Recovery trusts these files for every segment below the checkpoint without a scan, so
        // they must decode to exactly the indexes the log has used.
        if let LogOp::WriteIndexes {
            offset_index,
            time_index,
            ..
        } = &op
        {
            debug_assert!(
                Segment::decode_indexes(sealed_base, active.size_bytes, offset_index, time_index)
                    == Some((active.offset_index.clone(), active.time_index.clone())),
                "the index files of segment {sealed_base} do not decode to its indexes"
            );
        }
        self.push_op(op);
        self.dirty_indexes.insert(sealed_base);
        self.segments.insert(next, Segment::new(next));
        self.push_op(LogOp::CreateSegment { base_offset: next });
        self.dirty_dir = true;
        assert!(
            self.active().base_offset == next && self.active().is_empty(),
            "a roll leaves an empty active segment at the log end"
        );
        // The checkpoint advances through the snapshots in order, so their bases must not go
        // back. (One may repeat: recovery keeps the snapshot of an emptied trailing segment it
        // removed, at the log end, where the next roll can start a segment again.)
        assert!(
            self.snapshots.back().is_none_or(|(base, _)| *base <= next),
            "a snapshot at {next} after a later one"
        );
        let snapshot = Checkpoint::encode_parts(
            next,
            &self.producers,
            &self.epochs,
            &self.translator,
            self.kafka_start_written(),
        );
        self.snapshots.push_back((next, snapshot));
    }

    /// Whether a group commit would have anything to make durable (data past the synced end,
    /// index or checkpoint files, directory entries). Not the same as an end above the high
    /// watermark: a replica's synced entries may wait for the others.
    pub fn has_unsynced(&self) -> bool {
        let nothing_new = self.dirty_segments.is_empty()
            && self.dirty_indexes.is_empty()
            && !self.dirty_dir
            && self.checkpoint_pending.is_none();
        !self.storage_failed && !(nothing_new && self.durable.offset == self.log_end_offset())
    }

    /// Starts a group commit if anything is unsynced and none is in flight.
    #[must_use]
    pub fn poll_sync(&mut self) -> Option<SyncRequest> {
        if self.sync_in_flight || !self.has_unsynced() {
            return None;
        }
        let active = self.active();
        let position = Position {
            offset: active.next_offset,
            segment: active.base_offset,
            byte: active.size_bytes,
        };
        self.sync_in_flight = true;
        assert!(
            self.checkpoint_in_flight.is_none(),
            "one sync in flight at a time"
        );
        self.checkpoint_in_flight = self.checkpoint_pending.take();
        let checkpoint = self.checkpoint_in_flight.is_some();
        let request = SyncRequest {
            segments: std::mem::take(&mut self.dirty_segments)
                .into_iter()
                .collect(),
            indexes: std::mem::take(&mut self.dirty_indexes)
                .into_iter()
                .collect(),
            dir: std::mem::take(&mut self.dirty_dir) || checkpoint,
            checkpoint,
            offset: position.offset,
            position,
        };
        assert!(
            request.offset >= self.durable.offset,
            "a sync never covers less"
        );
        // Durability moves to `request.position` when this completes, so every segment holding
        // bytes past the durable point must be among the files it syncs.
        debug_assert!(
            self.segments
                .range(self.durable.segment..)
                .all(|(base, segment)| {
                    let unsynced = if *base == self.durable.segment {
                        segment.size_bytes > self.durable.byte
                    } else {
                        !segment.is_empty()
                    };
                    !unsynced || request.segments.contains(base)
                }),
            "a group commit misses a segment with unsynced bytes"
        );
        assert!(
            !request.checkpoint || request.dir,
            "a renamed checkpoint needs its directory"
        );
        Some(request)
    }

    /// The group commit `request` completed: everything it covered is durable.
    pub fn on_synced(&mut self, request: SyncRequest) {
        assert!(self.sync_in_flight, "on_synced without a sync in flight");
        assert_eq!(
            request.checkpoint,
            self.checkpoint_in_flight.is_some(),
            "the completed sync is the one in flight"
        );
        self.sync_in_flight = false;
        let cut = self.cut_during_sync.take();
        let checkpoint = self.checkpoint_in_flight.take();
        if self.storage_failed {
            return;
        }
        if let Some(base) = checkpoint {
            // Renamed over the old one and its directory synced: recovery starts there now.
            assert!(
                base >= self.recovery_point,
                "the checkpoint moved backwards"
            );
            self.recovery_point = base;
        }
        // A truncation while the sync ran: what it covered past the cut is gone, and what was
        // appended there since is not covered.
        let covered = match cut {
            Some(cut) if cut.offset < request.position.offset => cut,
            _ => request.position,
        };
        // Only a truncation shortens the log, and one during the sync is in `cut`.
        assert!(
            covered.offset <= self.log_end_offset(),
            "a sync covered more than the log holds"
        );
        assert!(
            covered.offset >= self.durable.offset,
            "durability moved backwards"
        );
        self.durable = covered;
        if covered.offset >= self.trusted.offset {
            self.trusted = covered;
        }
        if self.replicated {
            self.follow_commit();
        } else {
            self.set_committed(self.durable);
        }
        // Also when the high watermark did not move: a checkpoint held back while the last one
        // flew may be due.
        self.advance_checkpoint();
        if cfg!(any(debug_assertions, madsim)) {
            self.check_invariants();
        }
    }

    /// The high watermark moves to `position` (at or below the synced end); undo records below
    /// it are dropped, since nothing committed is ever truncated.
    fn set_committed(&mut self, position: Position) {
        assert!(
            position.offset >= self.high_watermark.offset,
            "high watermark moved back"
        );
        assert!(
            position.offset <= self.durable.offset,
            "high watermark past the synced end"
        );
        self.high_watermark = position;
        while let Some(&(offset, kafka)) = self.pending_starts.front() {
            if offset >= position.offset {
                break;
            }
            self.pending_starts.pop_front();
            // Committed: every replica applies it at this same point of the log.
            assert!(
                kafka <= self.translator.kafka(position.offset),
                "a log start past the high watermark"
            );
            self.kafka_start = self.kafka_start.max(kafka);
        }
        while self
            .undo
            .front()
            .is_some_and(|u| u.at.offset < position.offset)
        {
            let undo = self.undo.pop_front().expect("front exists");
            assert!(
                undo.next_offset <= position.offset,
                "high watermark inside a batch"
            );
        }
        assert!(
            self.undo
                .front()
                .is_none_or(|u| u.at.offset == position.offset),
            "the undo records do not start at the high watermark"
        );
    }

    /// Moves the checkpoint to the latest segment base that is durable (every segment before the
    /// durable point's segment is sealed with durable data and indexes) and committed (so no
    /// truncation can ever go below the checkpoint and invalidate its snapshot).
    fn advance_checkpoint(&mut self) {
        if self.checkpoint_in_flight.is_some() {
            // The sync in flight renames the temporary file; the next one is written after it.
            return;
        }
        let point = self.durable.segment.min(self.high_watermark.offset);
        let mut snapshot = None;
        while let Some((base, _)) = self.snapshots.front() {
            if *base > point {
                break;
            }
            snapshot = self.snapshots.pop_front();
        }
        if let Some((base, bytes)) = snapshot {
            let latest = self.checkpoint_pending.unwrap_or(self.recovery_point);
            if base > latest && self.segments.contains_key(&base) {
                // Recovery starts at the checkpoint without a scan of what is below it, and
                // truncation never goes below the high watermark: both must cover the base.
                assert!(
                    base <= self.durable.segment && base <= self.high_watermark.offset,
                    "a checkpoint at {base} past the durable segment or the high watermark"
                );
                self.checkpoint_pending = Some(base);
                self.push_op(LogOp::WriteCheckpoint { bytes });
            }
        }
    }

    /// An fsync (or write) failed. After fsyncgate nothing written since the last good sync can
    /// be trusted, so the log stops accepting and serving new data; the shell must reopen the
    /// partition from storage (recovery), which drops whatever did not reach the disk.
    pub fn on_storage_failed(&mut self) {
        self.storage_failed = true;
    }

    /// After a storage failure: the ops that cut the log back to what is trusted (see `trusted`),
    /// dropping everything this run wrote without a confirmed fsync. The shell executes them and
    /// then reopens the partition with [`LogStore::open`].
    pub fn failure_cut(&self) -> Vec<LogOp> {
        let mut ops = vec![LogOp::TruncateSegment {
            segment: self.trusted.segment,
            len: self.trusted.byte,
        }];
        for base in self
            .segments
            .range(self.trusted.segment + 1..)
            .map(|(b, _)| *b)
        {
            ops.push(LogOp::DeleteSegment { base_offset: base });
        }
        ops
    }

    /// Deletes whole sealed segments past `retention.ms` (by their largest timestamp) or beyond
    /// `retention.bytes`, oldest first, advancing the log start offset. Never deletes the active
    /// segment or anything not yet below the high watermark. Returns how many were deleted.
    pub fn enforce_retention(&mut self, now_ms: u64) -> usize {
        // Compacted-only topics keep everything the cleaner keeps; retention also waits for a
        // cleaning in progress to finish, so the segments it reads stay.
        if self.cleaner.is_some() {
            return 0;
        }
        let mut deleted = 0;
        let mut total = self.size_bytes();
        let mut report = crate::checker::retention::Deletion {
            now_ms,
            retention_ms: self.config.retention_ms,
            retention_bytes: self.config.retention_bytes,
            delete_records_start: self.kafka_start,
            size_bytes_before: total,
            segments: Vec::new(),
            segments_left: 0,
            log_start_before: self.log_start_offset(),
            log_start_after: 0,
            high_watermark: self.high_watermark.offset,
            log_end: self.log_end_offset(),
            kafka_log_start_before: self.kafka_log_start_offset(),
            kafka_log_start_after: 0,
            kafka_high_watermark: self.kafka_high_watermark(),
        };
        // The planted bug: a follower's retention judges every sealed segment by time and size
        // alone, as if whatever its leader sent were committed.
        let unbounded = self.config.planted.is(Bug::RetentionIgnoresHighWatermark);
        let ignores_bounds = unbounded && !self.leads;
        loop {
            let mut iter = self.segments.values();
            let (Some(oldest), Some(_next)) = (iter.next(), iter.next()) else {
                break;
            };
            // Only committed data goes, never the segment the durable point is in, and never
            // the checkpoint's segment: recovery starts there with the checkpoint's producer
            // state and epochs, which cover everything deleted before it. Deleting it would
            // leave a checkpoint that names no segment, so a crash would rebuild producer state
            // and epochs from what is left and forget the deleted segments' share.
            if !ignores_bounds
                && (oldest.next_offset > self.high_watermark.offset
                    || oldest.base_offset >= self.durable.segment
                    || oldest.base_offset >= self.recovery_point)
            {
                break;
            }
            let delete = self.config.delete;
            let expired = delete
                && self.config.retention_ms >= 0
                && oldest.max_timestamp < (now_ms as i64).saturating_sub(self.config.retention_ms);
            // The planted off-by-one deletes while the log is at least retention.bytes long
            // before the deletion, so it may end one segment short of retention.bytes.
            let left = if self.config.planted.is(Bug::RetentionSizeOffByOne) {
                total
            } else {
                total.saturating_sub(oldest.size_bytes)
            };
            let oversized = delete
                && self.config.retention_bytes >= 0
                && left >= self.config.retention_bytes as u64;
            // Kafka's deleteLogStartOffsetBreachedSegments: every record of the segment lies
            // below the log start DeleteRecords set (also on a compacted topic, as in Kafka).
            // Without one, a segment of Raft's own entries alone (below Kafka offset 0) stays:
            // a log start above 0 changes how an unknown idempotent producer is judged.
            let below_start = self.kafka_start > 0
                && self.translator.kafka(oldest.next_offset) <= self.kafka_start;
            if !(expired || oversized || below_start) {
                break;
            }
            let base = oldest.base_offset;
            report
                .segments
                .push(crate::checker::retention::DeletedSegment {
                    base_offset: base,
                    next_offset: oldest.next_offset,
                    kafka_next_offset: self.translator.kafka(oldest.next_offset),
                    max_timestamp: oldest.max_timestamp,
                    size_bytes: oldest.size_bytes,
                });
            total -= oldest.size_bytes;
            self.segments.remove(&base);
            self.dirty_segments.remove(&base);
            self.dirty_indexes.remove(&base);
            self.push_op(LogOp::DeleteSegment { base_offset: base });
            self.dirty_dir = true;
            deleted += 1;
        }
        let kafka_start_before = self.kafka_log_start_offset();
        self.epochs.truncate_from_start(self.log_start_offset());
        self.translator.truncate_from_start(self.log_start_offset());
        // Deleting segments wholly below the DeleteRecords start leaves clients' low watermark
        // where it was; retention may only raise it.
        assert!(
            self.kafka_log_start_offset() >= kafka_start_before,
            "retention moved the log start back"
        );
        // A deletion is durable only with a directory sync, so the next group commit must do one.
        assert!(
            deleted == 0 || self.dirty_dir,
            "segments deleted without a directory sync to follow"
        );
        assert!(
            unbounded || self.log_start_offset() <= self.high_watermark.offset,
            "retention deleted uncommitted data"
        );
        if deleted > 0 {
            report.segments_left = self.segments.len();
            report.log_start_after = self.log_start_offset();
            report.kafka_log_start_after = self.kafka_log_start_offset();
            self.last_deletion = Some(report);
        }
        if cfg!(any(debug_assertions, madsim)) {
            self.check_invariants();
        }
        deleted
    }

    /// Whether the replica holding this log leads it (only the planted retention bug asks).
    pub fn set_leads(&mut self, leads: bool) {
        self.leads = leads;
    }

    /// What the last retention run that deleted segments did, once (for the simulator's
    /// retention checker, [`crate::checker::retention`]).
    pub fn take_deletion(&mut self) -> Option<crate::checker::retention::Deletion> {
        self.last_deletion.take()
    }

    /// The segments compaction may rewrite now, oldest first: sealed, below the checkpoint's
    /// recovery point (fsynced, with valid index files) and wholly below the high watermark
    /// (committed, so never truncated).
    fn cleanable(&self) -> Vec<CleanTarget> {
        self.segments
            .values()
            .take_while(|s| {
                s.sealed
                    && s.base_offset < self.recovery_point
                    && s.base_offset < self.durable.segment
                    && s.base_offset < self.high_watermark.segment
                    && s.next_offset <= self.high_watermark.offset
            })
            .map(|s| CleanTarget {
                base_offset: s.base_offset,
                size_bytes: s.size_bytes,
                next_offset: s.next_offset,
            })
            .collect()
    }

    /// Whether compaction has work: a cleaning in progress, enough bytes not cleaned yet
    /// (`min.cleanable.dirty.ratio` of the cleanable bytes), or a kept tombstone now old enough
    /// to go.
    pub fn cleaning_due(&self, now_ms: u64) -> bool {
        if !self.config.compact || self.storage_failed || self.cleaning_halted {
            return false;
        }
        if self.cleaner.is_some() || self.discard.is_some() {
            return true;
        }
        let targets = self.cleanable();
        let total: u64 = targets.iter().map(|t| t.size_bytes).sum();
        let dirty: u64 = targets
            .iter()
            .filter(|t| t.base_offset >= self.cleaned_end)
            .map(|t| t.size_bytes)
            .sum();
        let ratio = u128::from(self.config.min_cleanable_dirty_ratio_bp);
        (dirty > 0 && u128::from(dirty) * 10_000 >= u128::from(total) * ratio)
            || (total > 0
                && self
                    .tombstone_due_ms
                    .is_some_and(|due| due <= now_ms.min(i64::MAX as u64) as i64))
    }

    /// The next storage effect of compaction, starting a cleaning when one is due; `None` when
    /// there is nothing (more) to do. See [`clean`] for what a cleaning does and
    /// [`LogStore::clean`] for the shell's side.
    pub fn next_clean_step(&mut self, now_ms: u64) -> Option<CleanStep> {
        if let Some(segment) = self.discard.take() {
            return Some(CleanStep::Discard { segment });
        }
        if self.cleaner.is_none() {
            if !self.cleaning_due(now_ms) {
                return None;
            }
            self.cleaner = Some(Cleaner::new(
                self.cleanable(),
                now_ms,
                self.config.delete_retention_ms,
                self.config.index_interval_bytes,
                self.config.planted,
            ));
        }
        let cleaner = self.cleaner.as_mut().expect("set above");
        // Sealed segments below the high watermark do not change; this guards against a log
        // that did change under a cleaning anyway (storage failure, or a bug elsewhere).
        if let Some(target) = cleaner.current() {
            let intact = !self.storage_failed
                && self.segments.get(&target.base_offset).is_some_and(|s| {
                    s.sealed
                        && s.size_bytes == target.size_bytes
                        && s.next_offset == target.next_offset
                });
            if !intact {
                let side = cleaner.side_file();
                self.cleaner = None;
                return side.map(|segment| CleanStep::Discard { segment });
            }
        }
        if let Some(step) = cleaner.next_step() {
            return Some(step);
        }
        let cleaner = self.cleaner.take().expect("set above");
        self.cleaned_end = cleaner
            .targets()
            .last()
            .map_or(self.cleaned_end, |t| t.next_offset);
        self.tombstone_due_ms = cleaner.tombstone_due_ms();
        self.last_clean = Some(cleaner.report());
        None
    }

    /// The bytes of the last [`CleanStep::Read`]. On damage the cleaning is abandoned (and no
    /// other starts until the partition is reopened); the error is for the shell to log.
    pub fn feed_clean(&mut self, bytes: &[u8]) -> Result<(), CleanError> {
        let cleaner = self
            .cleaner
            .as_mut()
            .expect("feed_clean without a cleaning");
        if let Err(e) = cleaner.feed(bytes) {
            self.discard = cleaner.side_file();
            self.cleaner = None;
            self.cleaning_halted = true;
            return Err(e);
        }
        Ok(())
    }

    /// The shell carried out the last [`CleanStep::Swap`]: the segment file is the cleaned one.
    pub fn on_clean_swapped(&mut self, segment: u64) {
        let cleaned = self
            .cleaner
            .as_mut()
            .and_then(Cleaner::take_swapped)
            .expect("a swap was handed out");
        assert_eq!(cleaned.base_offset, segment);
        let old = self
            .segments
            .get_mut(&segment)
            .expect("the cleaned segment exists");
        assert!(old.sealed && old.next_offset == cleaned.next_offset);
        // Compaction only drops records (offsets stay with an empty batch), so the copy is never
        // larger; a larger one would hold bytes the cleaner did not read.
        assert!(
            cleaned.size_bytes <= old.size_bytes,
            "cleaning grew segment {segment}"
        );
        *old = cleaned;
        if cfg!(any(debug_assertions, madsim)) {
            self.check_invariants();
        }
    }

    /// What the last finished cleaning did, once.
    pub fn take_clean_report(&mut self) -> Option<CleanReport> {
        self.last_clean.take()
    }

    /// Storage is healthy and `offset` lies within `log start ..= log end`.
    fn check_readable(&self, offset: u64) -> Result<(), ReadError> {
        if self.storage_failed {
            return Err(ReadError::StorageFailed);
        }
        if offset < self.log_start_offset() || offset > self.log_end_offset() {
            return Err(ReadError::OffsetOutOfRange {
                log_start_offset: self.log_start_offset(),
                log_end_offset: self.log_end_offset(),
            });
        }
        Ok(())
    }

    /// Plans a read of whole batches starting with the one that holds `offset`, at most
    /// `max_bytes` (but always at least one whole batch, as Kafka does since KIP-74), never past
    /// the high watermark. `offset == high watermark` gives an empty read; offsets beyond the log
    /// end or below its start are out of range.
    pub fn read(&self, offset: u64, max_bytes: u32) -> Result<ReadCursor, ReadError> {
        self.check_readable(offset)?;
        let planted = self.config.planted.is(Bug::FetchPastHighWatermark);
        let readable_end = if planted {
            self.log_end_offset()
        } else {
            self.high_watermark.offset
        };
        self.plan_read(offset, max_bytes, readable_end, self.high_watermark)
    }

    /// Plans a read of whole batches from the one holding `offset` up to `end` (whose position
    /// is `end_position`).
    fn plan_read(
        &self,
        offset: u64,
        max_bytes: u32,
        end: u64,
        end_position: Position,
    ) -> Result<ReadCursor, ReadError> {
        if offset >= end {
            return Ok(ReadCursor::empty());
        }
        let (_, segment) = self
            .segments
            .range(..=offset)
            .next_back()
            .expect("offset >= log start");
        assert!(
            offset < segment.next_offset,
            "offset below the high watermark lies in a segment"
        );
        let (start_offset, start) = segment.lookup_offset(offset);
        let visible_end = self.visible_end(segment, end_position);
        // The index entry is a batch at or before `offset`, which is below `end`, so it starts
        // in the visible part; otherwise the read would come back empty below the end.
        assert!(
            u64::from(start) < visible_end,
            "the read of offset {offset} starts past the visible end"
        );
        Ok(ReadCursor::new(
            ReadTarget::Offset(offset),
            segment.base_offset,
            (start_offset, u64::from(start)),
            visible_end,
            max_bytes,
        ))
    }

    /// Plans the search for the first record whose timestamp is `>= timestamp` (ListOffsets by
    /// timestamp). `None` when no committed record is that new.
    pub fn offset_for_timestamp(&self, timestamp: i64) -> Option<ReadCursor> {
        if self.storage_failed {
            return None;
        }
        let segment = self
            .segments
            .values()
            .take_while(|s| s.base_offset < self.high_watermark.offset)
            .find(|s| s.max_timestamp >= timestamp)?;
        let from = segment.lookup_timestamp(timestamp);
        let (start_offset, start) = segment.lookup_offset(from);
        Some(ReadCursor::new(
            ReadTarget::Timestamp(timestamp),
            segment.base_offset,
            (start_offset, u64::from(start)),
            self.visible_end(segment, self.high_watermark),
            0,
        ))
    }

    /// Bytes of `segment` below `end` (the high watermark, or the synced end for Raft).
    fn visible_end(&self, segment: &Segment, end: Position) -> u64 {
        if self.config.planted.is(Bug::FetchPastHighWatermark) {
            return segment.size_bytes;
        }
        use std::cmp::Ordering::*;
        match segment.base_offset.cmp(&end.segment) {
            Less => segment.size_bytes,
            Equal => end.byte,
            Greater => 0,
        }
    }

    pub fn check_invariants(&self) {
        assert!(
            !self.segments.is_empty(),
            "a log always has an active segment"
        );
        self.translator.check_invariants();
        assert!(
            self.translator.start() <= self.log_start_offset()
                && self
                    .translator
                    .listed()
                    .last()
                    .is_none_or(|&last| last < self.log_end_offset()),
            "the offset translator lists offsets outside the log"
        );
        let mut expected_base = None;
        for (base, segment) in &self.segments {
            assert_eq!(*base, segment.base_offset);
            if let Some(expected) = expected_base {
                assert_eq!(*base, expected, "segments must be contiguous");
                assert!(segment.base_offset > 0 || expected == 0);
            }
            segment.check_invariants();
            let is_active = *base == self.active().base_offset;
            assert_eq!(
                segment.sealed, !is_active,
                "exactly the non-active segments are sealed"
            );
            expected_base = Some(segment.next_offset);
        }
        let hw = self.high_watermark.offset;
        assert!(hw <= self.log_end_offset(), "high watermark above log end");
        assert!(
            self.durable.offset <= self.trusted.offset,
            "durable data is always trusted"
        );
        assert!(
            hw <= self.durable.offset,
            "high watermark past the synced end"
        );
        // The planted retention bug deletes past the high watermark; the retention checker,
        // not this restatement of its rule, is to catch it.
        let retention_unbounded = self.config.planted.is(Bug::RetentionIgnoresHighWatermark);
        assert!(
            retention_unbounded || hw >= self.log_start_offset(),
            "high watermark below the log start"
        );
        if !self.replicated {
            assert_eq!(
                hw, self.durable.offset,
                "single node: committed means synced"
            );
        }
        assert!(
            self.recovery_point <= hw || self.recovery_point <= self.log_start_offset(),
            "the checkpoint passed the high watermark"
        );
        // The undo records cover exactly [high watermark, log end), batch by batch.
        let mut expected = hw;
        for undo in &self.undo {
            assert_eq!(undo.at.offset, expected, "undo records must be contiguous");
            assert!(undo.next_offset > undo.at.offset);
            expected = undo.next_offset;
        }
        if !self.config.planted.is(Bug::RecoveryOffByOne) {
            assert_eq!(
                expected,
                self.log_end_offset(),
                "undo records must reach the log end"
            );
        }
        self.epochs
            .check_invariants(self.log_start_offset(), self.log_end_offset());
        if self.durable.offset > self.log_start_offset() {
            let seg = self
                .segments
                .get(&self.durable.segment)
                .expect("durable point in a live segment");
            assert!(self.durable.byte <= seg.size_bytes);
            assert!(self.durable.offset <= seg.next_offset);
        }
        // The failure cut keeps a prefix of the trusted point's segment: one in a deleted
        // segment would cut nothing there and keep the untrusted segments after it.
        if self.trusted.offset > self.log_start_offset() {
            assert!(
                self.segments.contains_key(&self.trusted.segment),
                "the trusted point lies in a deleted segment"
            );
        }
        // Reads see the bytes of the high watermark's segment up to its byte position: past the
        // segment's end they would come back short and be taken for damage.
        if let Some(seg) = self.segments.get(&self.high_watermark.segment) {
            assert!(
                self.high_watermark.byte <= seg.size_bytes,
                "the high watermark lies past the end of segment {}",
                seg.base_offset
            );
        }
        if self.replicated {
            assert!(
                hw <= self.commit_target,
                "the high watermark passed the Raft commit index"
            );
        }
        for base in self.dirty_segments.iter().chain(&self.dirty_indexes) {
            assert!(
                self.segments.contains_key(base),
                "dirty segment {base} does not exist"
            );
        }
        assert!(self.snapshots.iter().all(|(b, _)| *b > self.recovery_point));
        assert!(
            self.checkpoint_in_flight.is_none() || self.sync_in_flight,
            "a checkpoint flies only with a sync"
        );
        for base in self
            .checkpoint_pending
            .iter()
            .chain(&self.checkpoint_in_flight)
        {
            assert!(
                *base >= self.recovery_point,
                "a newer checkpoint names an older segment"
            );
            assert!(
                *base <= self.high_watermark.offset.max(self.log_start_offset()),
                "a checkpoint past the high watermark"
            );
        }
        // DeleteRecords' log start: committed, so at most the high watermark; the entries not
        // yet committed lie between the high watermark and the log end, each one of Raft's own
        // entries, naming at most its own Kafka offset.
        assert!(
            self.kafka_start <= self.translator.kafka(hw),
            "the log start passed the high watermark"
        );
        let mut previous = None;
        for &(offset, kafka) in &self.pending_starts {
            assert!(
                offset >= hw && offset < self.log_end_offset(),
                "an uncommitted log start at {offset} outside [high watermark, log end)"
            );
            assert!(
                previous.is_none_or(|p| p < offset),
                "uncommitted log starts out of order"
            );
            assert!(
                self.translator.listed().binary_search(&offset).is_ok(),
                "the log start entry at {offset} is not one of Raft's own entries"
            );
            assert!(
                kafka <= self.translator.kafka(offset),
                "a log start past its own entry"
            );
            previous = Some(offset);
        }
        self.producers.check_invariants();
    }
}

impl Segment {
    /// Marks the segment read-only and gives its time index a final entry for its largest
    /// timestamp, so lookups and retention see it without scanning.
    fn seal(&mut self) {
        self.sealed = true;
        if let Some(relative) = self.max_timestamp_relative_offset() {
            if self
                .time_index
                .last()
                .is_none_or(|e| self.max_timestamp > e.max_timestamp)
            {
                self.time_index.push(TimeEntry {
                    max_timestamp: self.max_timestamp,
                    relative_offset: relative,
                });
            }
        }
    }
}

#[cfg(test)]
mod clean_tests;
#[cfg(test)]
mod replicated_tests;
#[cfg(test)]
mod review_tests;
#[cfg(test)]
pub(crate) mod testkit;
#[cfg(test)]
mod tests;
