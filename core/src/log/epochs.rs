//! The leader-epoch cache of a partition (Kafka's `leader-epoch-checkpoint`): where each leader
//! epoch (Raft term) starts in the log. It answers OffsetForLeaderEpoch (KIP-101/KIP-320) and gives
//! the host the term runs Raft rebuilds its index from at restart.
//!
//! Kept in memory, persisted inside the partition checkpoint (as of its recovery point), and
//! rebuilt on recovery by replaying the batches after the checkpoint.

/// Kafka's "no epoch" answer (`UNDEFINED_EPOCH`).
pub const UNDEFINED_EPOCH: i32 = -1;
/// Kafka's "no offset" answer (`UNDEFINED_EPOCH_OFFSET`).
pub const UNDEFINED_EPOCH_OFFSET: i64 = -1;

/// An epoch and the first offset written in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EpochStart {
    pub epoch: i32,
    pub start_offset: u64,
}

/// (epoch, start offset) pairs, oldest first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaderEpochCache {
    /// Epochs strictly increase; start offsets strictly increase too (an epoch that wrote nothing
    /// has no entry, since entries are made by the batches themselves).
    entries: Vec<EpochStart>,
}

impl LeaderEpochCache {
    pub fn new() -> LeaderEpochCache {
        LeaderEpochCache::default()
    }

    pub fn entries(&self) -> &[EpochStart] {
        &self.entries
    }

    pub fn latest_epoch(&self) -> Option<i32> {
        self.entries.last().map(|e| e.epoch)
    }

    /// Whether a batch of `epoch` may follow the log (epochs never decrease along a log; a
    /// negative epoch is Kafka's "none" and is never stored).
    pub fn accepts(&self, epoch: i32) -> bool {
        epoch >= 0 && self.latest_epoch().is_none_or(|latest| epoch >= latest)
    }

    /// Notes a batch of `epoch` starting at `offset`, the log's end. A new epoch gets an entry.
    pub fn assign(&mut self, epoch: i32, offset: u64) {
        assert!(
            self.accepts(epoch),
            "epoch {epoch} after {:?}",
            self.latest_epoch()
        );
        assert!(self.entries.last().is_none_or(|e| e.start_offset <= offset));
        if self.latest_epoch() != Some(epoch) {
            // An entry without data (retention moved it to an empty log's end) gives way.
            if self
                .entries
                .last()
                .is_some_and(|e| e.start_offset == offset)
            {
                self.entries.pop();
            }
            self.entries.push(EpochStart {
                epoch,
                start_offset: offset,
            });
        }
        assert_eq!(
            self.latest_epoch(),
            Some(epoch),
            "the cache does not end in the epoch just assigned"
        );
    }

    /// The log was truncated: forget every epoch that starts at or after `end_offset`.
    pub fn truncate_from_end(&mut self, end_offset: u64) {
        while self
            .entries
            .last()
            .is_some_and(|e| e.start_offset >= end_offset)
        {
            self.entries.pop();
        }
    }

    /// The log now starts at `start_offset` (retention): drop the epochs wholly before it and move
    /// the one covering it to start there, as Kafka's `truncateFromStart` does.
    pub fn truncate_from_start(&mut self, start_offset: u64) {
        let covering = self
            .entries
            .partition_point(|e| e.start_offset <= start_offset);
        if covering == 0 {
            return;
        }
        self.entries.drain(..covering - 1);
        // The covering entry starts at or below the new start and the next one above it, so
        // moving its start keeps the start offsets strictly increasing.
        assert!(
            self.entries[0].start_offset <= start_offset
                && self
                    .entries
                    .get(1)
                    .is_none_or(|next| next.start_offset > start_offset),
            "epoch {} does not cover the new log start {start_offset}",
            self.entries[0].epoch
        );
        self.entries[0].start_offset = start_offset;
    }

    /// Kafka's `LeaderEpochFileCache.endOffsetFor`: the largest epoch at most `requested` and the
    /// offset where the next epoch starts (the log end for the latest epoch). A requested epoch
    /// below every known one gets itself and the first known start offset (the data before was
    /// removed, so a follower should replicate from there); one above every known epoch, or a
    /// cache with no epoch, gets `(UNDEFINED_EPOCH, UNDEFINED_EPOCH_OFFSET)`.
    pub fn end_offset_for(&self, requested: i32, log_end_offset: u64) -> (i32, i64) {
        let undefined = (UNDEFINED_EPOCH, UNDEFINED_EPOCH_OFFSET);
        if requested == UNDEFINED_EPOCH {
            return undefined;
        }
        if self.latest_epoch() == Some(requested) {
            return (requested, log_end_offset as i64);
        }
        let higher = self.entries.partition_point(|e| e.epoch <= requested);
        let Some(next) = self.entries.get(higher) else {
            return undefined;
        };
        let answer = match higher.checked_sub(1).map(|i| self.entries[i]) {
            Some(floor) => (floor.epoch, next.start_offset as i64),
            None => (requested, next.start_offset as i64),
        };
        // A follower truncates to the answer's offset: never a later epoch than asked for, and
        // never past this log's end.
        assert!(
            answer.0 <= requested && answer.1 <= log_end_offset as i64,
            "OffsetForLeaderEpoch({requested}) answered {answer:?} past the log end {log_end_offset}"
        );
        answer
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&(self.entries.len() as u32).to_be_bytes());
        for e in &self.entries {
            out.extend_from_slice(&e.epoch.to_be_bytes());
            out.extend_from_slice(&e.start_offset.to_be_bytes());
        }
    }

    /// Inverse of [`encode`](Self::encode); `None` on malformed input or broken ordering.
    pub fn decode(buf: &mut &[u8]) -> Option<LeaderEpochCache> {
        let (count, rest) = buf.split_first_chunk::<4>()?;
        let count = u32::from_be_bytes(*count) as usize;
        let bytes = count.checked_mul(12)?;
        if rest.len() < bytes {
            return None;
        }
        let entries: Vec<EpochStart> = rest[..bytes]
            .chunks_exact(12)
            .map(|c| EpochStart {
                epoch: i32::from_be_bytes(c[0..4].try_into().expect("4")),
                start_offset: u64::from_be_bytes(c[4..12].try_into().expect("8")),
            })
            .collect();
        *buf = &rest[bytes..];
        let ordered = entries.first().is_none_or(|e| e.epoch >= 0)
            && entries
                .windows(2)
                .all(|w| w[0].epoch < w[1].epoch && w[0].start_offset < w[1].start_offset);
        ordered.then_some(LeaderEpochCache { entries })
    }

    /// `log_start..=log_end` bounds the start offsets; the first entry covers the log start.
    pub fn check_invariants(&self, log_start_offset: u64, log_end_offset: u64) {
        for w in self.entries.windows(2) {
            assert!(w[0].epoch < w[1].epoch, "epochs must strictly increase");
            assert!(
                w[0].start_offset < w[1].start_offset,
                "epoch start offsets must increase"
            );
        }
        if let Some(first) = self.entries.first() {
            assert!(first.epoch >= 0);
            assert!(
                first.start_offset >= log_start_offset,
                "epoch entry below the log start"
            );
        }
        if let Some(last) = self.entries.last() {
            assert!(
                last.start_offset <= log_end_offset,
                "epoch entry past the log end"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(pairs: &[(i32, u64)]) -> LeaderEpochCache {
        let mut c = LeaderEpochCache::new();
        for &(epoch, start) in pairs {
            c.assign(epoch, start);
        }
        c
    }

    #[test]
    fn offset_for_leader_epoch_follows_kafka() {
        let c = cache(&[(2, 10), (5, 20), (6, 35)]);
        let end = 50;
        assert_eq!(c.end_offset_for(6, end), (6, 50), "latest: the log end");
        assert_eq!(
            c.end_offset_for(5, end),
            (5, 35),
            "exact: the next epoch's start"
        );
        assert_eq!(c.end_offset_for(3, end), (2, 20), "a gap: the floor epoch");
        assert_eq!(c.end_offset_for(4, end), (2, 20));
        assert_eq!(c.end_offset_for(1, end), (1, 10), "below the earliest");
        assert_eq!(c.end_offset_for(0, end), (0, 10));
        assert_eq!(c.end_offset_for(7, end), (-1, -1), "above the latest");
        assert_eq!(c.end_offset_for(UNDEFINED_EPOCH, end), (-1, -1));
        assert_eq!(LeaderEpochCache::new().end_offset_for(0, 0), (-1, -1));
    }

    #[test]
    fn truncation_from_either_end() {
        let mut c = cache(&[(1, 0), (2, 10), (4, 20)]);
        c.truncate_from_end(20);
        assert_eq!(c, cache(&[(1, 0), (2, 10)]));
        c.truncate_from_end(15);
        assert_eq!(
            c,
            cache(&[(1, 0), (2, 10)]),
            "the run of epoch 2 only shrinks"
        );
        c.truncate_from_start(12);
        assert_eq!(
            c,
            cache(&[(2, 12)]),
            "the entry covering the new start stays"
        );
        c.truncate_from_start(5);
        assert_eq!(c, cache(&[(2, 12)]));
        c.truncate_from_end(12);
        assert!(c.entries().is_empty());
    }

    #[test]
    fn encoding_round_trips_and_refuses_disorder() {
        let c = cache(&[(0, 0), (3, 7), (9, 100)]);
        let mut buf = Vec::new();
        c.encode(&mut buf);
        assert_eq!(LeaderEpochCache::decode(&mut &buf[..]), Some(c));
        let mut bad = Vec::new();
        cache(&[(3, 7)]).encode(&mut bad);
        bad[3] = 2;
        bad.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 9]);
        assert_eq!(LeaderEpochCache::decode(&mut &bad[..]), None);
    }
}
