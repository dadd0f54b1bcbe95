//! The partition log as a Raft log (Redpanda-style): one record batch is one Raft entry, the
//! Raft index is the Kafka offset plus one, and `partitionLeaderEpoch` carries the term. Raft
//! decides offsets, terms, truncations and the commit index; the log stores.
//!
//! Single-node mode is the default: the high watermark follows group commits, as before. A host
//! running Raft calls [`PartitionLog::set_replicated`] once after opening the log; from then on
//! the high watermark is `min(Raft commit index, synced end)`, set with
//! [`PartitionLog::set_high_watermark`].
//!
//! - Leader: [`PartitionLog::check_produce`] runs the idempotent-producer checks without
//!   appending (so only batches that pass are proposed, and a retry gets its original offsets),
//!   [`crate::batch::stamp`] sets offset and term, and the batch comes back through
//!   `append_replicated` when Raft hands it to storage, like on every follower.
//! - Everyone: [`PartitionLog::append_replicated`] stores stamped batches at the log end and
//!   mirrors their producer state and epochs; [`PartitionLog::truncate_suffix`] drops an
//!   uncommitted suffix and takes that state back exactly, from the undo record kept for every
//!   batch above the high watermark; [`PartitionLog::read_durable`] serves Raft's entry reads up
//!   to the synced end (past the high watermark, which Raft's own entries must be).

use bytes::Bytes;

use super::{
    AppendError, Appended, LogOp, PartitionLog, Position, ReadCursor, ReadError, UNDEFINED_EPOCH,
};
use crate::batch::{self, BatchError, BatchHeader};
use crate::limits::RAFT_INDEX_LIMIT;
use crate::producer::{ProducerError, SequenceCheck};

/// The leader's verdict on a producer's batch before proposing it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProduceCheck {
    /// New data in sequence (or not idempotent): propose it.
    Append,
    /// A retry of a batch already in the log (committed or not): answer with its offsets once
    /// the high watermark covers them.
    Duplicate(Appended),
}

/// Result of [`PartitionLog::append_replicated`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplicaAppended {
    pub base_offset: u64,
    /// The last offset of the last batch.
    pub last_offset: u64,
    pub batches: usize,
}

/// Why replicated batches were refused. Nothing was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplicaAppendError {
    /// Framing, CRC or record counts are wrong.
    Batch(BatchError),
    /// A batch does not start at the log end (or right after the previous batch).
    NotContiguous {
        expected: u64,
        received: i64,
    },
    /// A batch's epoch is negative or below the log's latest.
    EpochDecreased {
        latest: i32,
        received: i32,
    },
    StorageFailed,
}

impl std::fmt::Display for ReplicaAppendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReplicaAppendError::Batch(e) => e.fmt(f),
            ReplicaAppendError::NotContiguous { expected, received } => {
                write!(f, "batch at offset {received}, expected {expected}")
            }
            ReplicaAppendError::EpochDecreased { latest, received } => {
                write!(f, "batch epoch {received} after epoch {latest}")
            }
            ReplicaAppendError::StorageFailed => {
                write!(f, "the log's storage failed; it must be recovered")
            }
        }
    }
}

/// Why a truncation was refused. Nothing changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TruncateError {
    /// Committed data is never truncated (a Raft bug if it is asked for).
    BelowHighWatermark {
        offset: u64,
        committed: u64,
    },
    /// The offset is inside a batch.
    NotBatchBoundary {
        offset: u64,
    },
    BeyondLogEnd {
        offset: u64,
        log_end_offset: u64,
    },
    StorageFailed,
}

impl PartitionLog {
    /// Switches to replicated mode: from now on the high watermark moves only by
    /// [`set_high_watermark`](Self::set_high_watermark). Call once, right after opening.
    pub fn set_replicated(&mut self) {
        self.replicated = true;
        self.commit_target = self.commit_target.max(self.high_watermark.offset);
    }

    pub fn is_replicated(&self) -> bool {
        self.replicated
    }

    /// Replicated mode: Raft committed everything below `offset` (the commit index as an offset:
    /// the end of the last committed batch). The high watermark becomes the largest batch
    /// boundary at most `offset` and the synced end, and follows later syncs up to `offset`.
    /// A value below an earlier one is ignored (after a restart Raft may know less than the
    /// log).
    pub fn set_high_watermark(&mut self, offset: u64) {
        assert!(self.replicated, "set_high_watermark in single-node mode");
        self.commit_target = self.commit_target.max(offset);
        self.follow_commit();
        if cfg!(any(debug_assertions, madsim)) {
            self.check_invariants();
        }
    }

    /// Moves the high watermark as far towards the commit target as durability allows.
    pub(super) fn follow_commit(&mut self) {
        // In single-node mode group commits move the high watermark to the synced end.
        assert!(
            self.replicated,
            "following a commit index in single-node mode"
        );
        let end = self.commit_target.min(self.durable.offset);
        if end <= self.high_watermark.offset || self.storage_failed {
            return;
        }
        let position = if end == self.durable.offset {
            self.durable
        } else {
            // The largest batch boundary at or below `end`: normally `end` itself.
            let at = self.undo.partition_point(|u| u.at.offset <= end);
            assert!(
                at > 0,
                "end is above the high watermark, so a batch starts below it"
            );
            self.undo[at - 1].at
        };
        self.set_committed(position);
        self.advance_checkpoint();
    }

    /// The leader's idempotent-producer check of a validated batch, without appending: a
    /// duplicate of a batch already in the log (committed or not) gets its original offsets.
    pub fn check_produce(&self, header: &BatchHeader) -> Result<ProduceCheck, AppendError> {
        if self.storage_failed {
            return Err(AppendError::StorageFailed);
        }
        if !header.is_idempotent() {
            return Ok(ProduceCheck::Append);
        }
        let state_may_be_lost = self.log_start_offset() > 0;
        let check = match self.producers.check(header, state_may_be_lost) {
            // Planted: an older epoch's batch is taken as new data, so a zombie incarnation of
            // the producer keeps appending after the bump.
            Err(ProducerError::FencedEpoch { .. })
                if self.config.planted.is(crate::planted::Bug::NoEpochFencing) =>
            {
                SequenceCheck::Append
            }
            check => check.map_err(AppendError::Producer)?,
        };
        Ok(match check {
            SequenceCheck::Duplicate(_)
                if self.config.planted.is(crate::planted::Bug::IdempotenceOff) =>
            {
                ProduceCheck::Append
            }
            // The batch's Kafka offset is its log offset translated, which is only known at or
            // above the translator's start: below it, answering a guess would give the client
            // an offset another record holds (sim seed 37 of `retention-cluster`: a retry of a
            // batch at Kafka offset 290 answered 289 once retention passed it and the next
            // term's start).
            SequenceCheck::Duplicate(meta) if !self.translator.is_exact(meta.first_offset) => {
                return Err(AppendError::Producer(
                    ProducerError::DuplicateOffsetUnknown {
                        first_sequence: meta.first_sequence,
                        last_sequence: meta.last_sequence,
                    },
                ));
            }
            SequenceCheck::Duplicate(meta) => ProduceCheck::Duplicate(Appended {
                base_offset: meta.first_offset,
                last_offset: meta.last_offset,
                duplicate: true,
            }),
            SequenceCheck::Append => ProduceCheck::Append,
        })
    }

    /// Stores batches whose base offset and epoch Raft already decided, at exactly the log end.
    /// All are checked (framing, CRC, contiguity, record counts, epochs never decreasing) before
    /// any is written. Producer state and the epoch cache follow the batches, so a follower's
    /// producer table mirrors the leader's and dedup survives a failover.
    pub fn append_replicated(
        &mut self,
        batches: Bytes,
        now_ms: u64,
    ) -> Result<ReplicaAppended, ReplicaAppendError> {
        if self.storage_failed {
            return Err(ReplicaAppendError::StorageFailed);
        }
        let parsed = batch::split_batches(&batches).map_err(ReplicaAppendError::Batch)?;
        let base_offset = self.log_end_offset();
        let mut expected = base_offset;
        let mut latest = self.epochs.latest_epoch();
        for (header, _) in &parsed {
            if header.base_offset != expected as i64 {
                return Err(ReplicaAppendError::NotContiguous {
                    expected,
                    received: header.base_offset,
                });
            }
            // Fewer records than offsets is a batch the leader's cleaner compacted; more is damage.
            if header.last_offset_delta < 0
                || header.record_count < 0
                || header.record_count > header.last_offset_delta + 1
            {
                return Err(ReplicaAppendError::Batch(BatchError::BadRecords(
                    "recordCount does not fit lastOffsetDelta",
                )));
            }
            let epoch = header.partition_leader_epoch;
            if epoch < 0 || latest.is_some_and(|latest| epoch < latest) {
                return Err(ReplicaAppendError::EpochDecreased {
                    latest: latest.unwrap_or(UNDEFINED_EPOCH),
                    received: epoch,
                });
            }
            latest = Some(epoch);
            expected += u64::from(header.last_offset_delta as u32) + 1;
            if expected >= RAFT_INDEX_LIMIT {
                return Err(ReplicaAppendError::Batch(BatchError::BadRecords(
                    "offsets past the largest Raft index",
                )));
            }
        }
        let count = parsed.len();
        let high_watermark = self.high_watermark.offset;
        for (header, range) in parsed {
            self.write_batch(&header, batches.slice(range), now_ms);
        }
        assert_eq!(self.log_end_offset(), expected);
        // The batches were checked above; from here on they are the log's own state.
        assert_eq!(
            self.epochs.latest_epoch(),
            latest,
            "the epoch cache does not end in the last batch's epoch"
        );
        assert_eq!(
            self.high_watermark.offset, high_watermark,
            "storing entries moved the high watermark: only Raft's commit index does"
        );
        if cfg!(any(debug_assertions, madsim)) {
            self.check_invariants();
        }
        Ok(ReplicaAppended {
            base_offset,
            last_offset: expected - 1,
            batches: count,
        })
    }

    /// Drops every batch at or after `offset` (Raft truncating a conflicting, uncommitted
    /// suffix). `offset` must be a batch boundary at or above the high watermark (and the commit
    /// target). Producer state goes back exactly to what it was before those batches (their undo
    /// records), the epoch cache loses the epochs that started there, and storage gets the ops:
    /// later segments deleted (newest first, so the files on disk are always a prefix of the old
    /// log), the segment holding `offset` cut and made active again. Nothing at or after
    /// `offset` counts as durable until the next sync, whatever was synced before.
    pub fn truncate_suffix(&mut self, offset: u64) -> Result<(), TruncateError> {
        if self.storage_failed {
            return Err(TruncateError::StorageFailed);
        }
        let log_end_offset = self.log_end_offset();
        if offset > log_end_offset {
            return Err(TruncateError::BeyondLogEnd {
                offset,
                log_end_offset,
            });
        }
        let committed = self
            .high_watermark
            .offset
            .max(self.commit_target.min(log_end_offset));
        if offset < committed {
            return Err(TruncateError::BelowHighWatermark { offset, committed });
        }
        if offset == log_end_offset {
            return Ok(());
        }
        let at = self.undo.partition_point(|u| u.at.offset < offset);
        if self.undo.get(at).is_none_or(|u| u.at.offset != offset) {
            return Err(TruncateError::NotBatchBoundary { offset });
        }
        let mut first = None;
        let mut deleted_any = false;
        while self.undo.len() > at {
            let undo = self.undo.pop_back().expect("len > at");
            if let Some(producer) = undo.producer {
                self.producers.undo(producer);
            }
            first = Some((undo.at, undo.mark));
        }
        let (cut, mark) = first.expect("at least the batch at offset");
        assert_eq!(cut.offset, offset);
        let later: Vec<u64> = self
            .segments
            .range(cut.segment + 1..)
            .map(|(base, _)| *base)
            .collect();
        for base in later.into_iter().rev() {
            self.segments.remove(&base);
            self.dirty_segments.remove(&base);
            self.dirty_indexes.remove(&base);
            self.push_op(LogOp::DeleteSegment { base_offset: base });
            self.dirty_dir = true;
            deleted_any = true;
        }
        let segment = self
            .segments
            .get_mut(&cut.segment)
            .expect("the batch's segment is below the cut");
        segment.rewind(mark);
        assert_eq!(segment.size_bytes, cut.byte);
        self.push_op(LogOp::TruncateSegment {
            segment: cut.segment,
            len: cut.byte,
        });
        self.push_op(LogOp::SyncCut {
            segment: cut.segment,
            dir: deleted_any,
        });
        self.dirty_segments.insert(cut.segment);
        // Its index files on disk are stale now; it is rescanned at recovery (it is at or above
        // the checkpoint) and they are rewritten when it is sealed again.
        self.dirty_indexes.remove(&cut.segment);
        self.epochs.truncate_from_end(offset);
        self.cut_internal(offset);
        // An uncommitted DeleteRecords that was cut never happened.
        self.pending_starts.retain(|(at, _)| *at < offset);
        self.snapshots.retain(|(base, _)| *base <= offset);
        self.durable = Self::clamp_position(self.durable, cut);
        self.trusted = Self::clamp_position(self.trusted, cut);
        if self.sync_in_flight {
            let lowest =
                self.cut_during_sync
                    .map_or(cut, |c| if c.offset <= cut.offset { c } else { cut });
            self.cut_during_sync = Some(lowest);
        }
        assert!(
            self.recovery_point <= offset,
            "truncation below the checkpoint"
        );
        assert_eq!(
            self.log_end_offset(),
            offset,
            "the log does not end at the cut"
        );
        assert_eq!(
            self.active().base_offset,
            cut.segment,
            "the cut segment is not the active one"
        );
        // Nothing past the cut may be taken for durable (or kept by a failure cut) until it is
        // written and synced again.
        assert!(
            self.durable.offset <= offset && self.trusted.offset <= offset,
            "durability reaches past the cut at {offset}"
        );
        assert!(
            self.undo.back().is_none_or(|u| u.next_offset == offset),
            "the undo records do not end at the cut"
        );
        if cfg!(any(debug_assertions, madsim)) {
            self.check_invariants();
        }
        Ok(())
    }

    fn clamp_position(position: Position, cut: Position) -> Position {
        if position.offset > cut.offset {
            cut
        } else {
            position
        }
    }

    /// Plans a read for Raft (its `EntrySource`): whole batches from the one holding `offset`,
    /// up to the synced end rather than the high watermark, since Raft replicates and applies
    /// entries it knows are durable but not yet committed. Split the result with
    /// [`ReadCursor::into_batches`].
    pub fn read_durable(&self, offset: u64, max_bytes: u32) -> Result<ReadCursor, ReadError> {
        self.check_readable(offset)?;
        self.plan_read(offset, max_bytes, self.durable.offset, self.durable)
    }
}
