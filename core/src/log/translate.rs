//! Kafka offsets over Raft's log: the offset translator.
//!
//! A partition's log is its Raft log. Every Raft entry takes log offsets (an entry at Raft index
//! `i` starts at log offset `i - 1`): a record batch as many as its records, and each of Raft's
//! own entries — the leader-epoch start a new leader writes, a membership change — one. Clients
//! must not see Raft's entries: Kafka's data records take offsets 0, 1, 2, … with no holes, and
//! a leader change writes nothing at a Kafka offset. So the log offsets of Raft's own entries
//! ("internal offsets") are counted and subtracted, as Redpanda's offset translator does:
//!
//! ```text
//! kafka(r) = r - |{ internal offsets below r }|
//! ```
//!
//! Only log offsets of data (or of a stand-in batch compaction left) are handed to clients
//! translated; an internal offset translates to the Kafka offset of the next data record.
//! Transaction markers will be control batches that *do* take a Kafka offset (as in Kafka):
//! only the control types of [`crate::batch::is_raft_internal`] are internal.
//!
//! The translator keeps the internal offsets at or above `start` (the log start when it last
//! moved) and only the count of those below, so retention forgets them as it deletes segments.
//! It is part of the checkpoint ([`super::recovery::Checkpoint`]) and is rebuilt from the
//! replayed tail on recovery; a truncation of the log's suffix cuts it at the same offset.

use super::UNDEFINED_EPOCH_OFFSET;

/// Kafka offsets of a log whose Raft-internal entries take log offsets. See the module docs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OffsetTranslator {
    /// Internal offsets below this one are only counted (`below`); those at or above it are
    /// listed.
    start: u64,
    /// How many internal offsets lie below `start`.
    below: u64,
    /// The internal offsets at or above `start`, strictly increasing.
    internal: Vec<u64>,
}

impl OffsetTranslator {
    pub fn new() -> OffsetTranslator {
        OffsetTranslator::default()
    }

    /// The Kafka offset of log offset `offset`: `offset` less the internal offsets below it. For
    /// an internal offset, the Kafka offset of the next data record. Offsets below `start`
    /// translate as if no internal offset lay between them and `start` (they are gone).
    pub fn kafka(&self, offset: u64) -> u64 {
        let listed = self.internal.partition_point(|&i| i < offset) as u64;
        let below = self.below.min(offset);
        let kafka = offset - below - listed;
        debug_assert!(kafka <= offset);
        kafka
    }

    /// The log offset of the data record at Kafka offset `kafka`: the smallest log offset that
    /// is not internal and translates to `kafka`.
    pub fn log(&self, kafka: u64) -> u64 {
        // `internal[j] - j` is non-decreasing (the offsets strictly increase), and exactly the
        // internal offsets with `internal[j] - below - j <= kafka` lie at or below the answer.
        let mut lo = 0usize;
        let mut hi = self.internal.len();
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.internal[mid] - self.below.min(self.internal[mid]) - mid as u64 <= kafka {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        let offset = kafka.saturating_add(self.below).saturating_add(lo as u64);
        // Read back: the answer is a data offset that translates to `kafka`.
        debug_assert!(offset == u64::MAX || self.kafka(offset) == kafka);
        debug_assert!(self.internal.binary_search(&offset).is_err());
        offset
    }

    /// Whether [`kafka`](Self::kafka) is exact for `offset`: at or above `start`, or below it
    /// with no internal offset below `start` at all. Below `start` with some, it is a guess: the
    /// counted internal offsets may lie above `offset` as well as below (a duplicate answered
    /// that way was one too low, sim seed 37 of `retention-cluster`).
    pub fn is_exact(&self, offset: u64) -> bool {
        offset >= self.start || self.below == 0
    }

    /// Like [`kafka`](Self::kafka) for an offset in a reply; -1 ("undefined") stays.
    pub fn kafka_i64(&self, offset: i64) -> i64 {
        if offset == UNDEFINED_EPOCH_OFFSET {
            return offset;
        }
        match u64::try_from(offset) {
            Ok(o) => self.kafka(o) as i64,
            Err(_) => offset,
        }
    }

    /// A Raft-internal entry was written at log offset `offset`, past every one known.
    pub fn record(&mut self, offset: u64) {
        assert!(
            offset >= self.start && self.internal.last().is_none_or(|&last| last < offset),
            "internal offset {offset} recorded out of order"
        );
        self.internal.push(offset);
    }

    /// The log's suffix from `offset` on was cut: forget the internal offsets there.
    pub fn truncate_from_end(&mut self, offset: u64) {
        let keep = self.internal.partition_point(|&i| i < offset);
        self.internal.truncate(keep);
        assert!(self.internal.last().is_none_or(|&last| last < offset));
    }

    /// The log now starts at `offset` (retention): the internal offsets below it are only
    /// counted from now on. Never moves `start` back.
    pub fn truncate_from_start(&mut self, offset: u64) {
        if offset <= self.start {
            return;
        }
        let gone = self.internal.partition_point(|&i| i < offset);
        let before = self.kafka(offset);
        self.internal.drain(..gone);
        self.below += gone as u64;
        self.start = offset;
        // Read back: the Kafka offset of the new start did not move.
        assert_eq!(self.kafka(offset), before, "retention moved Kafka offsets");
    }

    /// How many internal offsets lie below `offset` (for a leader-epoch start's anchor).
    pub fn internal_below(&self, offset: u64) -> u64 {
        offset - self.kafka(offset)
    }

    /// The internal offsets listed (at or above `start`), for tests and the invariants.
    pub fn listed(&self) -> &[u64] {
        &self.internal
    }

    pub fn start(&self) -> u64 {
        self.start
    }

    /// Recovery found the count of internal offsets below `start` elsewhere (an anchor in a
    /// leader-epoch start): sets it, for a translator rebuilt from a scan that began at `start`.
    pub fn with_base(start: u64, below: u64) -> OffsetTranslator {
        assert!(
            below <= start,
            "more internal offsets than offsets below {start}"
        );
        OffsetTranslator {
            start,
            below,
            internal: Vec::new(),
        }
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.start.to_be_bytes());
        out.extend_from_slice(&self.below.to_be_bytes());
        out.extend_from_slice(&(self.internal.len() as u32).to_be_bytes());
        for i in &self.internal {
            out.extend_from_slice(&i.to_be_bytes());
        }
    }

    /// Inverse of [`encode`](Self::encode); `None` on malformed input or broken ordering.
    pub fn decode(buf: &mut &[u8]) -> Option<OffsetTranslator> {
        let (start, rest) = buf.split_first_chunk::<8>()?;
        let (below, rest) = rest.split_first_chunk::<8>()?;
        let (count, rest) = rest.split_first_chunk::<4>()?;
        let count = u32::from_be_bytes(*count) as usize;
        let bytes = count.checked_mul(8)?;
        if rest.len() < bytes {
            return None;
        }
        let internal: Vec<u64> = rest[..bytes]
            .chunks_exact(8)
            .map(|c| u64::from_be_bytes(c.try_into().expect("8")))
            .collect();
        *buf = &rest[bytes..];
        let t = OffsetTranslator {
            start: u64::from_be_bytes(*start),
            below: u64::from_be_bytes(*below),
            internal,
        };
        t.is_valid().then_some(t)
    }

    fn is_valid(&self) -> bool {
        self.below <= self.start
            && self.internal.first().is_none_or(|&i| i >= self.start)
            && self.internal.windows(2).all(|w| w[0] < w[1])
    }

    pub fn check_invariants(&self) {
        assert!(self.is_valid(), "offset translator out of order: {self:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn translator(internal: &[u64]) -> OffsetTranslator {
        let mut t = OffsetTranslator::new();
        for &i in internal {
            t.record(i);
        }
        t
    }

    #[test]
    fn a_term_start_at_zero_puts_the_first_record_at_kafka_offset_zero() {
        // Log: 0 term start, 1..=3 records, 4 term start, 5..=6 records.
        let t = translator(&[0, 4]);
        assert_eq!(
            (1..=6).map(|o| t.kafka(o)).collect::<Vec<_>>(),
            vec![0, 1, 2, 3, 3, 4]
        );
        assert_eq!(
            (0..=5).map(|k| t.log(k)).collect::<Vec<_>>(),
            vec![1, 2, 3, 5, 6, 7]
        );
        // The log end (7) translates to the Kafka log end: five records.
        assert_eq!(t.kafka(7), 5);
        assert_eq!(t.kafka(0), 0);
    }

    #[test]
    fn retention_keeps_every_kafka_offset() {
        let mut t = translator(&[0, 4, 9]);
        let before: Vec<u64> = (5..20).map(|o| t.kafka(o)).collect();
        t.truncate_from_start(5);
        assert_eq!(t.listed(), &[9]);
        assert_eq!((5..20).map(|o| t.kafka(o)).collect::<Vec<_>>(), before);
        let mut bytes = Vec::new();
        t.encode(&mut bytes);
        let decoded = OffsetTranslator::decode(&mut bytes.as_slice()).unwrap();
        assert_eq!(decoded, t);
    }

    #[test]
    fn a_truncation_forgets_the_cut_term_starts() {
        let mut t = translator(&[0, 4, 9]);
        t.truncate_from_end(9);
        assert_eq!(t.listed(), &[0, 4]);
        t.truncate_from_end(4);
        assert_eq!(t.listed(), &[0]);
        // A data record now sits at 4: it is Kafka offset 3.
        assert_eq!(t.kafka(4), 3);
        assert_eq!(t.log(3), 4);
    }

    #[test]
    fn damaged_encodings_are_refused() {
        let mut bytes = Vec::new();
        translator(&[3, 7]).encode(&mut bytes);
        // Out of order.
        let mut swapped = bytes.clone();
        swapped[20..28].copy_from_slice(&9u64.to_be_bytes());
        assert!(OffsetTranslator::decode(&mut swapped.as_slice()).is_none());
        // Short.
        assert!(OffsetTranslator::decode(&mut &bytes[..bytes.len() - 1]).is_none());
        // More below than offsets.
        let mut below = bytes.clone();
        below[8..16].copy_from_slice(&1u64.to_be_bytes());
        assert!(OffsetTranslator::decode(&mut below.as_slice()).is_none());
    }

    /// The model: a log as a list of "internal or not" per offset.
    fn model_kafka(internal: &[bool], offset: u64) -> u64 {
        offset - internal[..offset as usize].iter().filter(|&&i| i).count() as u64
    }

    proptest! {
        #[test]
        fn translation_matches_the_model(
            kinds in proptest::collection::vec(proptest::bool::weighted(0.3), 1..60),
            start in 0usize..60,
            cut in 0usize..61,
        ) {
            let mut t = OffsetTranslator::new();
            for (o, &internal) in kinds.iter().enumerate() {
                if internal {
                    t.record(o as u64);
                }
            }
            let start = start.min(kinds.len());
            let cut = cut.clamp(start, kinds.len());
            t.truncate_from_start(start as u64);
            t.truncate_from_end(cut as u64);
            t.check_invariants();
            let kinds = &kinds[..cut];
            for o in start..=cut {
                prop_assert_eq!(t.kafka(o as u64), model_kafka(kinds, o as u64));
            }
            // Every data offset at or above the start is found again from its Kafka offset.
            for o in start..cut {
                if !kinds[o] {
                    prop_assert_eq!(t.log(model_kafka(kinds, o as u64)), o as u64);
                }
            }
            let mut bytes = Vec::new();
            t.encode(&mut bytes);
            prop_assert_eq!(OffsetTranslator::decode(&mut bytes.as_slice()), Some(t));
        }
    }
}
