//! Idempotent-producer state of one partition: the last few batches of every producer id, so a
//! retried batch is recognised and answered with its original offset, and a gap in sequence
//! numbers is refused (Kafka's `ProducerStateManager`, without transactions).

use std::collections::{BTreeMap, VecDeque};

use crate::batch::{wrapping_sequence, BatchHeader};
use crate::limits::{PRODUCERS_PER_PARTITION_MAX, PRODUCER_BATCHES_REMEMBERED};
use crate::ErrorCode;

/// Where one batch of an idempotent producer landed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchMeta {
    pub first_sequence: i32,
    pub last_sequence: i32,
    pub first_offset: u64,
    pub last_offset: u64,
    pub max_timestamp: i64,
}

/// What is remembered of one producer id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProducerEntry {
    pub epoch: i16,
    /// Oldest first; at most [`PRODUCER_BATCHES_REMEMBERED`].
    pub batches: VecDeque<BatchMeta>,
}

/// The verdict on an incoming idempotent batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SequenceCheck {
    /// New data in sequence: append it.
    Append,
    /// A retry of a batch already in the log: acknowledge with its original offsets.
    Duplicate(BatchMeta),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProducerError {
    /// The sequence does not follow the last one appended for this producer and epoch.
    OutOfOrder { expected: i32, received: i32 },
    /// The batch carries an epoch older than the producer's current one: a zombie.
    FencedEpoch { current: i16, received: i16 },
    /// A retry of a batch already in the log whose Kafka offset this replica can no longer
    /// tell (it lies below the log start, and Raft's entries there were only counted). Kafka's
    /// answer when it has not kept a duplicate's offsets: the client takes the batch as written
    /// with an unknown offset.
    DuplicateOffsetUnknown {
        first_sequence: i32,
        last_sequence: i32,
    },
}

impl ProducerError {
    pub fn error_code(self) -> ErrorCode {
        match self {
            ProducerError::OutOfOrder { .. } => ErrorCode::OutOfOrderSequenceNumber,
            ProducerError::FencedEpoch { .. } => ErrorCode::InvalidProducerEpoch,
            ProducerError::DuplicateOffsetUnknown { .. } => ErrorCode::DuplicateSequenceNumber,
        }
    }
}

impl std::fmt::Display for ProducerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProducerError::OutOfOrder { expected, received } => {
                write!(
                    f,
                    "out of order sequence: expected {expected}, received {received}"
                )
            }
            ProducerError::FencedEpoch { current, received } => {
                write!(
                    f,
                    "producer epoch {received} is older than current epoch {current}"
                )
            }
            ProducerError::DuplicateOffsetUnknown {
                first_sequence,
                last_sequence,
            } => {
                write!(
                    f,
                    "sequences {first_sequence}..={last_sequence} are a duplicate of a batch \
                     below the log start, whose offset is no longer known"
                )
            }
        }
    }
}

/// How to take back one [`ProducerStateTable::record`]: the log keeps one per batch above the
/// high watermark, so truncating an uncommitted suffix restores the table exactly as it was.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProducerUndo {
    producer_id: i64,
    /// The producer's entry before the batch; `None` if it was unknown.
    previous: Option<ProducerEntry>,
    /// A producer forgotten to keep the table bounded, with its entry.
    evicted: Option<(i64, ProducerEntry)>,
}

/// Producer ids to their recent batches. A `BTreeMap`, so snapshots are byte-identical for the
/// same state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProducerStateTable {
    producers: BTreeMap<i64, ProducerEntry>,
}

impl ProducerStateTable {
    pub fn new() -> ProducerStateTable {
        ProducerStateTable::default()
    }

    pub fn len(&self) -> usize {
        self.producers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }

    pub fn get(&self, producer_id: i64) -> Option<&ProducerEntry> {
        self.producers.get(&producer_id)
    }

    /// Checks an idempotent batch against the state. `state_may_be_lost` is true when the log no
    /// longer starts at offset 0, so retention may have removed this producer's batches; then an
    /// unknown producer may start at any sequence, as in Kafka after KIP-360.
    pub fn check(
        &self,
        header: &BatchHeader,
        state_may_be_lost: bool,
    ) -> Result<SequenceCheck, ProducerError> {
        debug_assert!(header.is_idempotent());
        let first = header.base_sequence;
        let last = header.last_sequence();
        let Some(entry) = self.producers.get(&header.producer_id) else {
            // Stricter than Kafka, which takes an unknown producer's first batch at any
            // sequence (`ProducerAppendInfo.checkSequence`). While the log still starts at
            // offset 0 nothing of this producer can have been removed by retention, so a first
            // batch above sequence 0 means its earlier batches never made it (e.g. cut from an
            // uncommitted suffix in a failover): taking it would reorder the producer's records
            // behind its own retry; the producer is told instead. (A producer evicted from a
            // full table, `PRODUCERS_PER_PARTITION_MAX`, is refused the same way: a known gap,
            // see the audit table in docs/architecture.md.)
            if first == 0 || state_may_be_lost {
                return Ok(SequenceCheck::Append);
            }
            return Err(ProducerError::OutOfOrder {
                expected: 0,
                received: first,
            });
        };
        if header.producer_epoch < entry.epoch {
            return Err(ProducerError::FencedEpoch {
                current: entry.epoch,
                received: header.producer_epoch,
            });
        }
        if header.producer_epoch > entry.epoch {
            // A bumped epoch restarts the sequence.
            if first != 0 {
                return Err(ProducerError::OutOfOrder {
                    expected: 0,
                    received: first,
                });
            }
            return Ok(SequenceCheck::Append);
        }
        if let Some(dup) = entry
            .batches
            .iter()
            .find(|b| b.first_sequence == first && b.last_sequence == last)
        {
            return Ok(SequenceCheck::Duplicate(*dup));
        }
        let expected = match entry.batches.back() {
            Some(latest) => wrapping_sequence(latest.last_sequence, 1),
            None => 0,
        };
        if first != expected {
            return Err(ProducerError::OutOfOrder {
                expected,
                received: first,
            });
        }
        Ok(SequenceCheck::Append)
    }

    /// Records a batch that is now in the log (offsets assigned). Also used when replaying the
    /// log during recovery and on followers, where no check is made: the log is the truth.
    /// Returns how to undo it (`None` for a batch without idempotence, which changes nothing).
    pub fn record(&mut self, header: &BatchHeader) -> Option<ProducerUndo> {
        if !header.is_idempotent() {
            return None;
        }
        let previous = self.producers.get(&header.producer_id).cloned();
        debug_assert!(header.base_offset >= 0);
        let meta = BatchMeta {
            first_sequence: header.base_sequence,
            last_sequence: header.last_sequence(),
            first_offset: header.base_offset as u64,
            last_offset: header.last_offset() as u64,
            max_timestamp: header.max_timestamp,
        };
        let entry = self
            .producers
            .entry(header.producer_id)
            .or_insert(ProducerEntry {
                epoch: header.producer_epoch,
                batches: VecDeque::new(),
            });
        if header.producer_epoch != entry.epoch {
            entry.epoch = header.producer_epoch;
            entry.batches.clear();
        }
        entry.batches.push_back(meta);
        while entry.batches.len() > PRODUCER_BATCHES_REMEMBERED {
            entry.batches.pop_front();
        }
        let mut evicted = None;
        if self.producers.len() > PRODUCERS_PER_PARTITION_MAX {
            let oldest = self
                .producers
                .iter()
                .min_by_key(|(id, e)| (e.batches.back().map_or(0, |b| b.last_offset), **id))
                .map(|(id, _)| *id)
                .expect("non-empty");
            // The batch just recorded is the newest, so it is never the one evicted.
            assert_ne!(oldest, header.producer_id);
            evicted = self.producers.remove(&oldest).map(|e| (oldest, e));
        }
        Some(ProducerUndo {
            producer_id: header.producer_id,
            previous,
            evicted,
        })
    }

    /// Takes back a `record`; undos must be applied newest first.
    pub fn undo(&mut self, undo: ProducerUndo) {
        match undo.previous {
            Some(entry) => {
                self.producers.insert(undo.producer_id, entry);
            }
            None => {
                let removed = self.producers.remove(&undo.producer_id);
                assert!(removed.is_some(), "undo of a producer never recorded");
            }
        }
        if let Some((id, entry)) = undo.evicted {
            let clash = self.producers.insert(id, entry);
            assert!(
                clash.is_none(),
                "an evicted producer came back before its undo"
            );
        }
    }

    /// Forgets every batch at or above `offset` (the log was truncated there). A producer left
    /// with no batch is forgotten entirely.
    pub fn truncate(&mut self, offset: u64) {
        for entry in self.producers.values_mut() {
            entry.batches.retain(|b| b.last_offset < offset);
        }
        self.producers.retain(|_, e| !e.batches.is_empty());
    }

    /// Serialises the table (used in the partition checkpoint, which carries its own CRC).
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&(self.producers.len() as u32).to_be_bytes());
        for (id, entry) in &self.producers {
            out.extend_from_slice(&id.to_be_bytes());
            out.extend_from_slice(&entry.epoch.to_be_bytes());
            out.push(entry.batches.len() as u8);
            for b in &entry.batches {
                out.extend_from_slice(&b.first_sequence.to_be_bytes());
                out.extend_from_slice(&b.last_sequence.to_be_bytes());
                out.extend_from_slice(&b.first_offset.to_be_bytes());
                out.extend_from_slice(&b.last_offset.to_be_bytes());
                out.extend_from_slice(&b.max_timestamp.to_be_bytes());
            }
        }
    }

    /// Inverse of [`encode`](Self::encode); `None` on any malformed input.
    pub fn decode(buf: &mut &[u8]) -> Option<ProducerStateTable> {
        fn take<const N: usize>(buf: &mut &[u8]) -> Option<[u8; N]> {
            let (head, rest) = buf.split_first_chunk::<N>()?;
            *buf = rest;
            Some(*head)
        }
        let count = u32::from_be_bytes(take(buf)?);
        let mut producers = BTreeMap::new();
        for _ in 0..count {
            let id = i64::from_be_bytes(take(buf)?);
            let epoch = i16::from_be_bytes(take(buf)?);
            let n = take::<1>(buf)?[0] as usize;
            if n == 0 || n > PRODUCER_BATCHES_REMEMBERED {
                return None;
            }
            let mut batches = VecDeque::with_capacity(n);
            for _ in 0..n {
                batches.push_back(BatchMeta {
                    first_sequence: i32::from_be_bytes(take(buf)?),
                    last_sequence: i32::from_be_bytes(take(buf)?),
                    first_offset: u64::from_be_bytes(take(buf)?),
                    last_offset: u64::from_be_bytes(take(buf)?),
                    max_timestamp: i64::from_be_bytes(take(buf)?),
                });
            }
            producers.insert(id, ProducerEntry { epoch, batches });
        }
        Some(ProducerStateTable { producers })
    }

    pub fn check_invariants(&self) {
        for entry in self.producers.values() {
            assert!(
                !entry.batches.is_empty() && entry.batches.len() <= PRODUCER_BATCHES_REMEMBERED
            );
            for pair in entry.batches.as_slices().0.windows(2) {
                assert!(
                    pair[0].last_offset < pair[1].first_offset,
                    "producer batches out of order"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{BatchBuilder, NewRecord};

    fn header(pid: i64, epoch: i16, seq: i32, n: i32, base_offset: i64) -> BatchHeader {
        let mut b = BatchBuilder::new(0).idempotent(pid, epoch, seq);
        for _ in 0..n {
            b.push(&NewRecord::default());
        }
        b.base_offset = base_offset;
        BatchHeader::parse(&b.build()).unwrap()
    }

    #[test]
    fn retry_of_a_recent_batch_is_a_duplicate_with_its_original_offsets() {
        let mut t = ProducerStateTable::new();
        let first = header(7, 0, 0, 3, 10);
        assert_eq!(t.check(&first, false), Ok(SequenceCheck::Append));
        t.record(&first);
        let second = header(7, 0, 3, 2, 13);
        assert_eq!(t.check(&second, false), Ok(SequenceCheck::Append));
        t.record(&second);
        match t.check(&header(7, 0, 0, 3, -1), false) {
            Ok(SequenceCheck::Duplicate(meta)) => {
                assert_eq!((meta.first_offset, meta.last_offset), (10, 12))
            }
            other => panic!("expected duplicate, got {other:?}"),
        }
        t.check_invariants();
    }

    #[test]
    fn a_gap_or_a_new_producer_mid_sequence_is_out_of_order() {
        let mut t = ProducerStateTable::new();
        assert_eq!(
            t.check(&header(1, 0, 5, 1, -1), false),
            Err(ProducerError::OutOfOrder {
                expected: 0,
                received: 5
            })
        );
        assert_eq!(
            t.check(&header(1, 0, 5, 1, -1), true),
            Ok(SequenceCheck::Append)
        );
        t.record(&header(1, 0, 0, 1, 0));
        assert_eq!(
            t.check(&header(1, 0, 2, 1, -1), false),
            Err(ProducerError::OutOfOrder {
                expected: 1,
                received: 2
            })
        );
    }

    #[test]
    fn old_epochs_are_fenced_and_new_epochs_restart_at_zero() {
        let mut t = ProducerStateTable::new();
        t.record(&header(1, 3, 0, 1, 0));
        assert_eq!(
            t.check(&header(1, 2, 1, 1, -1), false),
            Err(ProducerError::FencedEpoch {
                current: 3,
                received: 2
            })
        );
        assert_eq!(
            t.check(&header(1, 4, 0, 1, -1), false),
            Ok(SequenceCheck::Append)
        );
        assert!(t.check(&header(1, 4, 1, 1, -1), false).is_err());
    }

    #[test]
    fn only_the_last_five_batches_are_remembered_and_encoding_round_trips() {
        let mut t = ProducerStateTable::new();
        for i in 0..8 {
            t.record(&header(9, 0, i, 1, i64::from(i)));
        }
        assert_eq!(t.get(9).unwrap().batches.len(), PRODUCER_BATCHES_REMEMBERED);
        assert_eq!(
            t.check(&header(9, 0, 1, 1, -1), false)
                .unwrap_err()
                .error_code(),
            ErrorCode::OutOfOrderSequenceNumber
        );
        let mut buf = Vec::new();
        t.encode(&mut buf);
        let decoded = ProducerStateTable::decode(&mut &buf[..]).unwrap();
        assert_eq!(decoded, t);
        t.truncate(6);
        assert_eq!(t.get(9).unwrap().batches.back().unwrap().last_offset, 5);
        t.truncate(0);
        assert!(t.is_empty());
    }

    #[test]
    fn undo_restores_the_table_exactly_newest_first() {
        let mut t = ProducerStateTable::new();
        for i in 0..7 {
            t.record(&header(1, 0, i, 1, i64::from(i)));
        }
        let before = t.clone();
        let undos = [
            t.record(&header(1, 0, 7, 2, 7)).unwrap(),
            t.record(&header(2, 0, 0, 1, 9)).unwrap(),
            t.record(&header(1, 1, 0, 1, 10)).unwrap(),
        ];
        assert!(t.record(&header(-1, 0, -1, 1, 11)).is_none());
        assert_ne!(t, before);
        for undo in undos.into_iter().rev() {
            t.undo(undo);
        }
        assert_eq!(
            t, before,
            "the fifth-oldest batch evicted by the first record is back"
        );
        t.check_invariants();
    }
}
