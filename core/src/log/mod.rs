//! The partition log as a sans-IO state machine.
//!
//! Inputs: `append` (a producer's batches), `poll_sync` / `on_synced` (group commit),
//! `enforce_retention`, and reads planned with `read` / `offset_for_timestamp`. Outputs: the
//! [`LogOp`]s drained with `poll_op`, which the shell executes in order against its storage, and
//! [`SyncRequest`]s. Nothing here touches a file or a clock.
//!
//! Durability: the high watermark is the end of the prefix known to be fsynced (single node; with
//! replication it becomes the Raft commit index). Reads never go past it, and the shell releases an
//! acks=all reply only once the high watermark covers the batch.

mod read;
mod recovery;
mod segment;
mod store;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::{Bytes, BytesMut};

pub use read::{ReadCursor, ReadIo, ReadTarget, TimestampHit};
pub use recovery::{Checkpoint, Recovery, RecoveryIo, CHECKPOINT_FILE};
pub use segment::{
    index_file_name, log_file_name, parse_log_file_name, time_index_file_name, OffsetEntry,
    Segment, TimeEntry,
};
pub use store::{LogStore, SyncJob};

use crate::batch::{self, BatchError};
use crate::limits::*;
use crate::producer::{ProducerError, ProducerStateTable, SequenceCheck};
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
        }
    }
}

impl LogConfig {
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
    /// Remove a segment's files.
    DeleteSegment { base_offset: u64 },
    /// Cut a segment file to `len` bytes (recovery of a torn or corrupt tail).
    TruncateSegment { segment: u64, len: u64 },
    /// Durably and atomically replace the partition checkpoint (write a temporary file, fsync it,
    /// rename it over the old one, fsync the directory).
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
    /// Storage failed earlier; the log accepts nothing until recovered from disk.
    StorageFailed,
}

impl AppendError {
    pub fn error_code(&self) -> ErrorCode {
        match self {
            AppendError::Batch(e) => e.error_code(),
            AppendError::Producer(e) => e.error_code(),
            AppendError::StorageFailed => ErrorCode::KafkaStorageError,
        }
    }
}

impl std::fmt::Display for AppendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AppendError::Batch(e) => e.fmt(f),
            AppendError::Producer(e) => e.fmt(f),
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
    high_watermark: u64,
    ops: VecDeque<LogOp>,
    dirty_segments: BTreeSet<u64>,
    dirty_indexes: BTreeSet<u64>,
    dirty_dir: bool,
    sync_in_flight: bool,
    producers: ProducerStateTable,
    /// The checkpoint on disk says every segment below this is sealed and durable.
    recovery_point: u64,
    /// Producer state as of each segment base created since the last checkpoint; a checkpoint
    /// can move to such a base once it is durable.
    snapshots: VecDeque<(u64, Vec<u8>)>,
    storage_failed: bool,
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
            high_watermark: durable.offset,
            ops: VecDeque::new(),
            dirty_segments: BTreeSet::new(),
            dirty_indexes: BTreeSet::new(),
            dirty_dir: false,
            sync_in_flight: false,
            producers,
            recovery_point,
            snapshots: VecDeque::new(),
            storage_failed: false,
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
        self.config = config;
    }

    pub fn log_start_offset(&self) -> u64 {
        *self.segments.keys().next().expect("never empty")
    }

    /// The offset the next appended record gets (Kafka's LEO).
    pub fn log_end_offset(&self) -> u64 {
        self.active().next_offset
    }

    /// The end of the committed (fsynced) prefix; reads stop here.
    pub fn high_watermark(&self) -> u64 {
        self.high_watermark
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
        let header = batch::validate_produce(&records, self.config.message_bytes_max)
            .map_err(AppendError::Batch)?;
        if header.is_idempotent() {
            let state_may_be_lost = self.log_start_offset() > 0;
            match self
                .producers
                .check(&header, state_may_be_lost)
                .map_err(AppendError::Producer)?
            {
                SequenceCheck::Duplicate(_)
                    if crate::planted::active(crate::planted::Bug::IdempotenceOff) => {}
                SequenceCheck::Duplicate(meta) => {
                    return Ok(Appended {
                        base_offset: meta.first_offset,
                        last_offset: meta.last_offset,
                        duplicate: true,
                    })
                }
                SequenceCheck::Append => {}
            }
        }
        if self.should_roll(
            header.total_bytes() as u64,
            header.record_count as u64,
            now_ms,
        ) {
            self.roll();
        }
        let offset = self.log_end_offset();
        let mut assigned = header;
        assigned.base_offset = offset as i64;
        assigned.partition_leader_epoch = partition_leader_epoch;
        batch::set_base_offset(&mut records, offset as i64);
        batch::set_partition_leader_epoch(&mut records, partition_leader_epoch);
        self.producers.record(&assigned);
        let interval = self.config.index_interval_bytes;
        let segment = self.active_mut();
        let position = segment.size_bytes;
        let base = segment.base_offset;
        segment.on_batch(&assigned, interval, Some(now_ms));
        self.dirty_segments.insert(base);
        self.push_op(LogOp::Append {
            segment: base,
            position,
            bytes: records.freeze(),
        });
        if cfg!(any(debug_assertions, madsim)) {
            self.check_invariants();
        }
        Ok(Appended {
            base_offset: offset,
            last_offset: assigned.last_offset() as u64,
            duplicate: false,
        })
    }

    fn should_roll(&self, bytes: u64, records: u64, now_ms: u64) -> bool {
        let active = self.active();
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
        self.push_op(op);
        self.dirty_indexes.insert(sealed_base);
        self.segments.insert(next, Segment::new(next));
        self.push_op(LogOp::CreateSegment { base_offset: next });
        self.dirty_dir = true;
        let mut snapshot = Vec::new();
        self.producers.encode(&mut snapshot);
        self.snapshots.push_back((next, snapshot));
    }

    /// Starts a group commit if anything is unsynced and none is in flight.
    #[must_use]
    pub fn poll_sync(&mut self) -> Option<SyncRequest> {
        if self.sync_in_flight || self.storage_failed {
            return None;
        }
        let nothing_new =
            self.dirty_segments.is_empty() && self.dirty_indexes.is_empty() && !self.dirty_dir;
        if nothing_new && self.durable.offset == self.log_end_offset() {
            return None;
        }
        let active = self.active();
        let position = Position {
            offset: active.next_offset,
            segment: active.base_offset,
            byte: active.size_bytes,
        };
        self.sync_in_flight = true;
        Some(SyncRequest {
            segments: std::mem::take(&mut self.dirty_segments)
                .into_iter()
                .collect(),
            indexes: std::mem::take(&mut self.dirty_indexes)
                .into_iter()
                .collect(),
            dir: std::mem::take(&mut self.dirty_dir),
            offset: position.offset,
            position,
        })
    }

    /// The group commit `request` completed: everything it covered is durable.
    pub fn on_synced(&mut self, request: SyncRequest) {
        assert!(self.sync_in_flight, "on_synced without a sync in flight");
        self.sync_in_flight = false;
        if self.storage_failed {
            return;
        }
        assert!(
            request.position >= self.durable,
            "durability moved backwards"
        );
        self.durable = request.position;
        self.trusted = self.trusted.max(request.position);
        self.high_watermark = self.durable.offset;
        // Every segment before the one active at request time is now sealed with durable data
        // and indexes, so the checkpoint may move to that segment's base.
        let point = request.position.segment;
        let mut snapshot = None;
        while let Some((base, _)) = self.snapshots.front() {
            if *base > point {
                break;
            }
            snapshot = self.snapshots.pop_front();
        }
        if let Some((base, producers)) = snapshot {
            if base > self.recovery_point && self.segments.contains_key(&base) {
                self.recovery_point = base;
                let bytes = Checkpoint::encode_raw(base, &producers);
                self.push_op(LogOp::WriteCheckpoint { bytes });
            }
        }
        if cfg!(any(debug_assertions, madsim)) {
            self.check_invariants();
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
        let mut deleted = 0;
        let mut total = self.size_bytes();
        loop {
            let mut iter = self.segments.values();
            let (Some(oldest), Some(_next)) = (iter.next(), iter.next()) else {
                break;
            };
            // Only committed data goes, and never the segment the durable point is in.
            if oldest.next_offset > self.high_watermark
                || oldest.base_offset >= self.durable.segment
            {
                break;
            }
            let expired = self.config.retention_ms >= 0
                && oldest.max_timestamp < (now_ms as i64).saturating_sub(self.config.retention_ms);
            let oversized = self.config.retention_bytes >= 0
                && total.saturating_sub(oldest.size_bytes) >= self.config.retention_bytes as u64;
            if !(expired || oversized) {
                break;
            }
            let base = oldest.base_offset;
            total -= oldest.size_bytes;
            self.segments.remove(&base);
            self.dirty_segments.remove(&base);
            self.dirty_indexes.remove(&base);
            self.push_op(LogOp::DeleteSegment { base_offset: base });
            self.dirty_dir = true;
            deleted += 1;
        }
        if cfg!(any(debug_assertions, madsim)) {
            self.check_invariants();
        }
        deleted
    }

    /// Plans a read of whole batches starting with the one that holds `offset`, at most
    /// `max_bytes` (but always at least one whole batch, as Kafka does since KIP-74), never past
    /// the high watermark. `offset == high watermark` gives an empty read; offsets beyond the log
    /// end or below its start are out of range.
    pub fn read(&self, offset: u64, max_bytes: u32) -> Result<ReadCursor, ReadError> {
        if self.storage_failed {
            return Err(ReadError::StorageFailed);
        }
        if offset < self.log_start_offset() || offset > self.log_end_offset() {
            return Err(ReadError::OffsetOutOfRange {
                log_start_offset: self.log_start_offset(),
                log_end_offset: self.log_end_offset(),
            });
        }
        let planted = crate::planted::active(crate::planted::Bug::FetchPastHighWatermark);
        let readable_end = if planted {
            self.log_end_offset()
        } else {
            self.high_watermark
        };
        if offset >= readable_end {
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
        Ok(ReadCursor::new(
            ReadTarget::Offset(offset),
            segment.base_offset,
            (start_offset, u64::from(start)),
            self.visible_end(segment),
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
            .take_while(|s| s.base_offset < self.high_watermark)
            .find(|s| s.max_timestamp >= timestamp)?;
        let from = segment.lookup_timestamp(timestamp);
        let (start_offset, start) = segment.lookup_offset(from);
        Some(ReadCursor::new(
            ReadTarget::Timestamp(timestamp),
            segment.base_offset,
            (start_offset, u64::from(start)),
            self.visible_end(segment),
            0,
        ))
    }

    /// Bytes of `segment` below the high watermark.
    fn visible_end(&self, segment: &Segment) -> u64 {
        if crate::planted::active(crate::planted::Bug::FetchPastHighWatermark) {
            return segment.size_bytes;
        }
        use std::cmp::Ordering::*;
        match segment.base_offset.cmp(&self.durable.segment) {
            Less => segment.size_bytes,
            Equal => self.durable.byte,
            Greater => 0,
        }
    }

    pub fn check_invariants(&self) {
        assert!(
            !self.segments.is_empty(),
            "a log always has an active segment"
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
        assert!(
            self.high_watermark <= self.log_end_offset(),
            "high watermark above log end"
        );
        assert!(
            self.durable <= self.trusted,
            "durable data is always trusted"
        );
        assert_eq!(self.high_watermark, self.durable.offset);
        if self.durable.offset > self.log_start_offset() {
            let seg = self
                .segments
                .get(&self.durable.segment)
                .expect("durable point in a live segment");
            assert!(self.durable.byte <= seg.size_bytes);
            assert!(self.durable.offset <= seg.next_offset);
        }
        for base in self.dirty_segments.iter().chain(&self.dirty_indexes) {
            assert!(
                self.segments.contains_key(base),
                "dirty segment {base} does not exist"
            );
        }
        assert!(self.snapshots.iter().all(|(b, _)| *b > self.recovery_point));
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
mod review_tests;
#[cfg(test)]
mod testkit;
#[cfg(test)]
mod tests;
