//! The Raft log as Raft keeps it: a compact index of the whole log ([`LogMeta`]: the snapshot
//! boundary, runs of equal terms, the membership entries) plus payloads only for recent entries
//! (a cache that always holds whatever is not yet durable). Older payloads are read back through
//! the host's [`EntrySource`], so the log itself can live in the partition's segment files.
//!
//! The durability bookkeeping lives here too: every batch of storage work handed to the host is a
//! numbered write, and `persisted_index` is the longest prefix known to be on disk exactly as it
//! is in memory.

use std::collections::VecDeque;

use bytes::Bytes;

use super::types::{Entry, EntryKind, Membership, Snapshot, SnapshotMeta};
use crate::limits::{RAFT_ENTRY_SPAN_MAX, RAFT_INDEX_LIMIT};

/// Read access to the host's stored log.
///
/// Raft only asks for entries it knows to be durable (at or below the persisted index, above the
/// log start), so a host may serve them from its synced files.
pub trait EntrySource {
    /// Appends to `out`, in order, the whole entries that start at `lo` or later and end at `hi`
    /// or earlier, stopping once their payloads reach `max_bytes` (but always at least one).
    /// `lo` is always the first index of an entry (a batch's base offset + 1). Returning fewer
    /// (even none, after an I/O error) is allowed; Raft sends or applies what it got and asks
    /// again later.
    fn entries(&self, lo: u64, hi: u64, max_bytes: u64, out: &mut Vec<Entry>);

    /// The opaque state as of the log start boundary `index` (everything up to `index` applied),
    /// for a follower that needs a snapshot. `None` if the host cannot produce it now; Raft asks
    /// again later. A data partition, whose state is the log itself, returns empty bytes.
    fn snapshot_data(&self, index: u64) -> Option<Bytes>;
}

/// Why [`LogMeta::push`] or [`LogMeta::from_runs`] refused (a host rebuilding the index from a
/// damaged log).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogMetaError {
    /// An entry does not start right after the last one, or term runs do not start at the log
    /// start, do not strictly increase, or start beyond the last index.
    NotContiguous,
    /// Terms never decrease along a log (strictly increase from run to run), never fall below
    /// the snapshot's, and entries have terms of at least 1.
    BadTerm,
    /// An entry ends before it starts, spans more than [`RAFT_ENTRY_SPAN_MAX`] indexes, reaches
    /// [`RAFT_INDEX_LIMIT`], or is a membership entry spanning more than one index.
    BadSpan,
    /// Membership entries lie outside the log or are not in increasing index order.
    BadMembership,
}

/// A run of entries with one term: `(first index, term)`.
type TermRun = (u64, u64);

/// The shape of a log without its payloads: enough to check log matching at any index, to find
/// the membership in force, and to rebuild a replica after a restart.
///
/// It does not know where every entry starts and ends (that would cost memory per batch). The
/// indexes it does know to be the last index of an entry ([`LogMeta::is_known_end`]) are the
/// snapshot boundary, the last index, and the end of every term run; see "Ranged entries" in
/// docs/raft.md for why those are enough.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogMeta {
    /// Everything up to `snapshot.index` has been dropped.
    snapshot: SnapshotMeta,
    last_index: u64,
    /// Cover `first_index()..=last_index` exactly; first indexes and terms strictly increase.
    /// Terms change only with leaders, so this stays tiny however long the log. An entry never
    /// straddles two runs (it has one term), so every run ends where an entry ends.
    term_runs: Vec<TermRun>,
    /// Membership entries above the snapshot, by increasing index.
    configs: Vec<(u64, Membership)>,
}

impl LogMeta {
    /// An empty log starting after `snapshot` (for a new group: index 0, term 0, the initial
    /// voters; for a replica that is yet to be added: index 0, term 0, no voters).
    pub fn new(snapshot: SnapshotMeta) -> LogMeta {
        LogMeta {
            last_index: snapshot.index,
            snapshot,
            term_runs: Vec::new(),
            configs: Vec::new(),
        }
    }

    /// Rebuilds the index of a stored log without visiting its entries: the log starts after
    /// `snapshot` and ends at `last_index`; `runs` are `(first index, term)` of each run of equal
    /// terms, by increasing index (a Kafka leader-epoch cache of `(epoch, start offset)` pairs is
    /// exactly this, with `start offset + 1` as the first index); `configs` are the membership
    /// entries after the snapshot, by index. Everything is validated, since it comes from disk.
    pub fn from_runs(
        snapshot: SnapshotMeta,
        runs: Vec<(u64, u64)>,
        last_index: u64,
        configs: Vec<(u64, Membership)>,
    ) -> Result<LogMeta, LogMetaError> {
        if snapshot.index >= RAFT_INDEX_LIMIT || last_index >= RAFT_INDEX_LIMIT {
            return Err(LogMetaError::BadSpan);
        }
        if last_index < snapshot.index
            || runs.is_empty() != (last_index == snapshot.index)
            || runs.first().is_some_and(|run| run.0 != snapshot.index + 1)
            || runs.last().is_some_and(|run| run.0 > last_index)
            || runs.windows(2).any(|pair| pair[0].0 >= pair[1].0)
        {
            return Err(LogMetaError::NotContiguous);
        }
        if runs.first().is_some_and(|run| run.1 < snapshot.term.max(1))
            || runs.windows(2).any(|pair| pair[0].1 >= pair[1].1)
        {
            return Err(LogMetaError::BadTerm);
        }
        if configs
            .iter()
            .any(|c| c.0 <= snapshot.index || c.0 > last_index)
            || configs.windows(2).any(|pair| pair[0].0 >= pair[1].0)
        {
            return Err(LogMetaError::BadMembership);
        }
        let meta = LogMeta {
            snapshot,
            last_index,
            term_runs: runs,
            configs,
        };
        meta.check_invariants();
        Ok(meta)
    }

    /// Adds the next entry: its first and last index, its term and, for a membership entry,
    /// the voters it names. Used by hosts rebuilding the index entry by entry after a restart
    /// (see [`LogMeta::from_runs`] for the cheaper way).
    pub fn push(
        &mut self,
        index: u64,
        last: u64,
        term: u64,
        membership: Option<Membership>,
    ) -> Result<(), LogMetaError> {
        if index != self.last_index + 1 {
            return Err(LogMetaError::NotContiguous);
        }
        if last < index
            || last >= RAFT_INDEX_LIMIT
            || last - index >= RAFT_ENTRY_SPAN_MAX
            || (membership.is_some() && last != index)
        {
            return Err(LogMetaError::BadSpan);
        }
        if term == 0 || term < self.last_term() {
            return Err(LogMetaError::BadTerm);
        }
        if self.term_runs.last().is_none_or(|run| run.1 != term) {
            // Terms change rarely: grow exactly, so an idle group holds one run, not four.
            self.term_runs.reserve_exact(1);
            self.term_runs.push((index, term));
        }
        self.last_index = last;
        let is_membership = membership.is_some();
        if let Some(membership) = membership {
            self.configs.push((index, membership));
        }
        // The entry reads back: its first index in a run of its term (so both its ends are: an
        // entry never straddles two runs), and a membership entry in force from its index.
        assert_eq!(
            self.term(index),
            Some(term),
            "the pushed entry is in one run"
        );
        assert!(
            !is_membership || self.membership_index() == index,
            "a pushed membership entry is in force"
        );
        Ok(())
    }

    pub fn snapshot(&self) -> &SnapshotMeta {
        &self.snapshot
    }

    /// The first index still in the log (the log start offset).
    pub fn first_index(&self) -> u64 {
        self.snapshot.index + 1
    }

    pub fn last_index(&self) -> u64 {
        self.last_index
    }

    pub fn last_term(&self) -> u64 {
        self.term_runs
            .last()
            .map_or(self.snapshot.term, |run| run.1)
    }

    /// The term of the entry at `index`, known from the snapshot boundary to the last index.
    pub fn term(&self, index: u64) -> Option<u64> {
        if index < self.snapshot.index || index > self.last_index {
            return None;
        }
        if index == self.snapshot.index {
            return Some(self.snapshot.term);
        }
        let after = self.term_runs.partition_point(|run| run.0 <= index);
        assert!(after >= 1, "term runs start at the log start");
        Some(self.term_runs[after - 1].1)
    }

    /// The membership in force: the latest in the log, committed or not.
    pub fn membership(&self) -> &Membership {
        self.configs
            .last()
            .map_or(&self.snapshot.membership, |c| &c.1)
    }

    /// The index of the entry that set [`LogMeta::membership`] (the snapshot index if none does).
    pub fn membership_index(&self) -> u64 {
        self.configs.last().map_or(self.snapshot.index, |c| c.0)
    }

    /// The membership in force at `index` (at or after the snapshot boundary).
    pub fn membership_at(&self, index: u64) -> &Membership {
        // Configurations before the boundary were dropped with the entries that held them.
        assert!(
            index >= self.snapshot.index,
            "membership asked below the log start"
        );
        let after = self.configs.partition_point(|c| c.0 <= index);
        if after == 0 {
            &self.snapshot.membership
        } else {
            &self.configs[after - 1].1
        }
    }

    /// Whether `index` is known to be the last index of an entry (or the snapshot boundary):
    /// the snapshot index, the last index, or the end of a term run. `false` means "not known",
    /// not "not an end".
    pub fn is_known_end(&self, index: u64) -> bool {
        index == self.snapshot.index
            || index == self.last_index
            || (index > self.snapshot.index
                && index < self.last_index
                && self
                    .term_runs
                    .binary_search_by_key(&(index + 1), |run| run.0)
                    .is_ok())
    }

    /// The largest index `<= index` known to end an entry: `index` itself if it ends its term
    /// run, else the end of the run before (or the snapshot boundary). `index` is in the log.
    pub fn known_end_at_or_before(&self, index: u64) -> u64 {
        assert!(index >= self.snapshot.index && index <= self.last_index);
        if self.is_known_end(index) {
            return index;
        }
        let after = self.term_runs.partition_point(|run| run.0 <= index);
        let end = self.term_runs[after - 1].0 - 1;
        // The run containing `index` starts after the boundary, at or before `index`.
        assert!(
            end >= self.snapshot.index && end < index,
            "a known end lies between the log start and the index"
        );
        debug_assert!(self.is_known_end(end), "the end of a run is a known end");
        end
    }

    /// The largest index `<= index` whose term is `<= term`: where a log that disagrees at
    /// `index` may agree with this one. `None` if that lies below the snapshot boundary, where
    /// terms are no longer known.
    pub fn find_conflict_by_term(&self, index: u64, term: u64) -> Option<u64> {
        let mut at = index.min(self.last_index);
        if at < self.snapshot.index {
            return None;
        }
        for &(first, run_term) in self.term_runs.iter().rev() {
            if first > at {
                continue;
            }
            if run_term <= term {
                // The contract a leader relies on to skip back a whole term: at most `index`,
                // still in the log, with a term no later than the one asked about.
                assert!(
                    at <= index && at > self.snapshot.index,
                    "a conflict hint lies in the log, at or before the index asked"
                );
                debug_assert!(
                    self.term(at).is_some_and(|t| t <= term),
                    "a conflict hint's term is at most the one asked"
                );
                return Some(at);
            }
            at = first - 1;
        }
        debug_assert!(at == self.snapshot.index);
        (self.snapshot.term <= term).then_some(at)
    }

    /// Drops entries `index..`.
    fn truncate_from(&mut self, index: u64) {
        assert!(index > self.snapshot.index, "truncating into the snapshot");
        assert!(index <= self.last_index + 1);
        while self.term_runs.last().is_some_and(|run| run.0 >= index) {
            self.term_runs.pop();
        }
        while self.configs.last().is_some_and(|c| c.0 >= index) {
            self.configs.pop();
        }
        self.last_index = index - 1;
        // Cutting above the boundary leaves runs exactly when entries remain: the first run
        // starts at `snapshot.index + 1` and goes only if the cut is there.
        assert_eq!(
            self.term_runs.is_empty(),
            self.last_index == self.snapshot.index,
            "term runs cover exactly the entries left"
        );
    }

    /// Moves the log start boundary to just after `index`.
    fn compact_to(&mut self, index: u64) {
        assert!(self.snapshot.index <= index && index <= self.last_index);
        let (last_index, last_term) = (self.last_index, self.last_term());
        let membership_index = self.membership_index();
        let term = self.term(index).expect("index in the log");
        let membership = self.membership_at(index).clone();
        if index == self.last_index {
            self.term_runs.clear();
        } else {
            let containing = self.term_runs.partition_point(|run| run.0 <= index + 1) - 1;
            self.term_runs.drain(..containing);
            self.term_runs[0].0 = index + 1;
        }
        let kept = self.configs.partition_point(|c| c.0 <= index);
        self.configs.drain(..kept);
        self.snapshot = SnapshotMeta {
            index,
            term,
            membership,
        };
        // Compaction moves the start only: the end of the log, its last term and the
        // configuration in force are what they were.
        assert_eq!(
            (self.last_index, self.last_term()),
            (last_index, last_term),
            "compaction changed the end of the log"
        );
        assert_eq!(
            self.membership_index(),
            membership_index.max(index),
            "compaction changed the configuration in force"
        );
    }

    pub fn check_invariants(&self) {
        assert!(self.last_index >= self.snapshot.index);
        assert!(
            self.last_index < RAFT_INDEX_LIMIT,
            "indexes stay below the limit"
        );
        assert_eq!(
            self.term_runs.is_empty(),
            self.last_index == self.snapshot.index,
            "term runs cover exactly the entries"
        );
        if let Some(first) = self.term_runs.first() {
            assert_eq!(first.0, self.first_index());
            assert!(first.1 >= self.snapshot.term.max(1), "terms never decrease");
        }
        for pair in self.term_runs.windows(2) {
            assert!(pair[0].0 < pair[1].0 && pair[0].1 < pair[1].1);
        }
        if let Some(last) = self.term_runs.last() {
            assert!(last.0 <= self.last_index);
        }
        for pair in self.configs.windows(2) {
            assert!(pair[0].0 < pair[1].0);
        }
        for (index, _) in &self.configs {
            assert!(*index > self.snapshot.index && *index <= self.last_index);
        }
    }
}

/// The log of one replica: [`LogMeta`], the entry cache and the durability bookkeeping.
#[derive(Debug)]
pub(super) struct RaftLog {
    pub(super) meta: LogMeta,
    /// Whole entries `cache_first()..=last_index`, contiguous. Holds at least every entry above
    /// the persisted index (those may not be readable from storage yet) and every entry
    /// appended since the restart that is not applied yet (so a leader can count the
    /// uncommitted entries of its term).
    cache: VecDeque<Entry>,
    cache_bytes: u64,
    /// Entries up to here have been handed to the host in a write.
    written_index: u64,
    /// The next write must first delete every stored entry from this index on.
    truncate_from: Option<u64>,
    /// The next write must first replace the stored log with this snapshot.
    pending_snapshot: Option<Box<Snapshot>>,
    /// The stored log, as of the last write known to be synced, equals this log up to here.
    persisted_index: u64,
    /// Writes handed out and not yet known to be synced: `(seq, last index once written)`. A
    /// later truncation lowers the recorded index, since syncing that write then no longer makes
    /// the truncated part durable as it is now.
    unsynced: VecDeque<(u64, u64)>,
    /// The sequence number of the last write handed out.
    pub(super) seq_issued: u64,
    /// The sequence number of the last write known to be synced.
    pub(super) seq_persisted: u64,
}

/// A batch of storage work, in the order the host must apply it.
#[derive(Debug, Default)]
pub(super) struct WriteParts {
    pub snapshot: Option<Box<Snapshot>>,
    pub truncate_from: Option<u64>,
    pub entries: Vec<Entry>,
}

impl RaftLog {
    /// A log restored from storage: all of it is durable.
    pub(super) fn new(meta: LogMeta) -> RaftLog {
        let last = meta.last_index();
        RaftLog {
            meta,
            cache: VecDeque::new(),
            cache_bytes: 0,
            written_index: last,
            truncate_from: None,
            pending_snapshot: None,
            persisted_index: last,
            unsynced: VecDeque::new(),
            seq_issued: 0,
            seq_persisted: 0,
        }
    }

    pub(super) fn persisted_index(&self) -> u64 {
        self.persisted_index
    }

    pub(super) fn last_index(&self) -> u64 {
        self.meta.last_index()
    }

    pub(super) fn last_term(&self) -> u64 {
        self.meta.last_term()
    }

    fn cache_first(&self) -> u64 {
        self.cache
            .front()
            .map_or(self.meta.last_index() + 1, |e| e.index)
    }

    /// Whether `index` is known to be the last index of an entry: `Some(true)` if it is,
    /// `Some(false)` if the cache shows it inside an entry, `None` if nothing here tells.
    pub(super) fn is_end(&self, index: u64) -> Option<bool> {
        if self.meta.is_known_end(index) || index + 1 == self.cache_first() {
            return Some(true);
        }
        if index < self.cache_first() || index > self.meta.last_index() {
            return None;
        }
        let at = self.cache.partition_point(|e| e.last < index);
        // The cache is contiguous, so the first entry ending at or after `index` holds it.
        assert!(self.cache[at].index <= index, "a gap in the entry cache");
        Some(self.cache[at].last == index)
    }

    /// The largest index `<= index` known to end an entry (`index` itself if it does): the
    /// cache knows every boundary it covers, the term runs know theirs.
    pub(super) fn known_end_at_or_before(&self, index: u64) -> u64 {
        if self.is_end(index) == Some(true) {
            return index;
        }
        let from_runs = self.meta.known_end_at_or_before(index);
        let cached = self.cache.partition_point(|e| e.last <= index);
        let end = match cached {
            0 => from_runs,
            n => from_runs.max(self.cache[n - 1].last),
        };
        assert!(end < index, "the known end before an index is not below it");
        debug_assert_eq!(self.is_end(end), Some(true), "a known end is an end");
        end
    }

    /// Entries in the cache that start above `index`. For a leader and its commit index: every
    /// uncommitted entry appended since the restart, which includes all of its own term's.
    pub(super) fn cached_entries_after(&self, index: u64) -> u64 {
        (self.cache.len() - self.cache.partition_point(|e| e.index <= index)) as u64
    }

    /// Appends one entry after the last. The caller has validated it (bounds, term, payload).
    pub(super) fn append(&mut self, entry: Entry) {
        let membership = match entry.kind {
            EntryKind::Membership => {
                Some(Membership::decode(&entry.payload).expect("validated membership entry"))
            }
            EntryKind::Normal | EntryKind::Empty => None,
        };
        self.meta
            .push(entry.index, entry.last, entry.term, membership)
            .expect("validated entry");
        self.cache_bytes += entry.size_bytes();
        self.cache.push_back(entry);
        // Until a write hands it out the entry exists only here, so it must stay cached.
        assert!(
            self.written_index < self.meta.last_index(),
            "a new entry waits for a write"
        );
        assert_eq!(
            self.cache.back().map(|e| e.last),
            Some(self.meta.last_index()),
            "the cache ends where the log ends"
        );
    }

    /// Drops entries `index..` (a follower's divergent suffix). `index` is the first index of an
    /// entry; the caller knows this by log matching, and the cache checks it where it can.
    pub(super) fn truncate_from(&mut self, index: u64) {
        assert!(
            index <= self.meta.last_index(),
            "truncating beyond the end of the log"
        );
        assert_ne!(
            self.is_end(index - 1),
            Some(false),
            "truncating inside an entry"
        );
        self.meta.truncate_from(index);
        while self.cache.back().is_some_and(|e| e.index >= index) {
            let e = self.cache.pop_back().expect("non-empty");
            self.cache_bytes -= e.size_bytes();
        }
        if index <= self.written_index {
            self.truncate_from = Some(self.truncate_from.map_or(index, |t| t.min(index)));
            self.written_index = index - 1;
        }
        self.clamp_durable(index - 1);
        // The cut suffix no longer counts as handed out or durable: the next write deletes it
        // from storage before it writes anything after it.
        assert!(
            self.written_index < index && self.persisted_index < index,
            "a truncated entry still counts as written or durable"
        );
        assert!(
            self.cache.back().is_none_or(|e| e.last + 1 == index),
            "the cache ends where the log now ends"
        );
    }

    /// Replaces the whole log with a snapshot (a follower too far behind the leader's log start).
    pub(super) fn install_snapshot(&mut self, snapshot: Snapshot) {
        let index = snapshot.meta.index;
        self.meta = LogMeta::new(snapshot.meta.clone());
        self.cache.clear();
        self.cache_bytes = 0;
        self.truncate_from = None;
        self.written_index = index;
        self.pending_snapshot = Some(Box::new(snapshot));
        self.clamp_durable(index);
        assert_eq!(
            (self.meta.first_index(), self.meta.last_index()),
            (index + 1, index),
            "the log is empty after the installed snapshot"
        );
    }

    /// The host dropped entries up to `index`, which are durable and applied, and `index` ends
    /// an entry.
    pub(super) fn compact_to(&mut self, index: u64) {
        assert!(
            index <= self.persisted_index,
            "compacting unpersisted entries"
        );
        assert_ne!(
            self.is_end(index),
            Some(false),
            "compacting inside an entry"
        );
        self.meta.compact_to(index);
        while self.cache.front().is_some_and(|e| e.last <= index) {
            let e = self.cache.pop_front().expect("non-empty");
            self.cache_bytes -= e.size_bytes();
        }
        // `index` ends an entry, so no cached entry straddles the new log start.
        assert!(
            self.cache_first() > index,
            "a cached entry straddles the log start"
        );
    }

    /// Nothing stored may be trusted to equal this log beyond `index` until a later write syncs.
    fn clamp_durable(&mut self, index: u64) {
        // Both callers (truncation and snapshot install) have just cut the log to end here.
        assert_eq!(
            index,
            self.meta.last_index(),
            "durability is clamped to the new end of the log"
        );
        self.persisted_index = self.persisted_index.min(index);
        for (_, last) in self.unsynced.iter_mut() {
            *last = (*last).min(index);
        }
    }

    /// Whether the log has storage work not yet handed out.
    pub(super) fn has_unwritten(&self) -> bool {
        self.written_index < self.meta.last_index()
            || self.truncate_from.is_some()
            || self.pending_snapshot.is_some()
    }

    /// Hands out the pending storage work as write `seq`.
    pub(super) fn take_write(&mut self, seq: u64) -> WriteParts {
        assert_eq!(seq, self.seq_issued + 1);
        self.seq_issued = seq;
        let first = self.written_index + 1;
        let entries: Vec<Entry> = self
            .cache
            .iter()
            .skip_while(|e| e.index < first)
            .cloned()
            .collect();
        debug_assert!(entries.first().is_none_or(|e| e.index == first));
        let last = self.meta.last_index();
        // Everything above the written index is cached (it is above the persisted index), so
        // one write carries every unwritten entry, and successive writes tile the log.
        assert!(
            entries.last().map_or(first > last, |e| e.last == last),
            "a write leaves unwritten entries behind"
        );
        self.written_index = last;
        self.unsynced.push_back((seq, last));
        let parts = WriteParts {
            snapshot: self.pending_snapshot.take(),
            truncate_from: self.truncate_from.take(),
            entries,
        };
        // The host deletes, then appends: the deletion must start exactly where the appended
        // entries do, or stale entries would survive between them (or new ones be deleted).
        assert!(
            parts.truncate_from.is_none_or(|t| t == first),
            "a write truncates elsewhere than where its entries start"
        );
        // A snapshot replaces the whole stored log; its entries follow the boundary.
        assert!(
            parts.snapshot.is_none() || parts.truncate_from.is_none(),
            "a write both installs a snapshot and truncates"
        );
        assert!(
            parts.snapshot.as_ref().is_none_or(|s| s.meta.index < first),
            "a write's entries start inside its snapshot"
        );
        parts
    }

    /// Write `seq` (and every one before it) is synced. Returns whether anything changed.
    pub(super) fn on_persisted(&mut self, seq: u64) -> bool {
        assert!(seq <= self.seq_issued, "persisted a write never handed out");
        if seq <= self.seq_persisted {
            return false;
        }
        self.seq_persisted = seq;
        while self.unsynced.front().is_some_and(|w| w.0 <= seq) {
            let (_, last) = self.unsynced.pop_front().expect("non-empty");
            self.persisted_index = self.persisted_index.max(last);
        }
        // With every write synced, the durable prefix is exactly what was handed out: a
        // truncation lowered what each earlier write counts for, and nothing else lowers it.
        // (A snapshot not yet handed out is the one thing written ahead of the writes.)
        if seq == self.seq_issued && self.pending_snapshot.is_none() {
            assert_eq!(
                self.persisted_index, self.written_index,
                "every write is synced but the written log is not all durable"
            );
        }
        true
    }

    /// Drops cached payloads that are durable, applied and either older than `keep_from` or
    /// beyond the cache budget.
    pub(super) fn evict(&mut self, applied: u64, keep_from: u64, budget_bytes: u64) {
        assert!(applied <= self.meta.last_index(), "applied beyond the log");
        let evictable = self.persisted_index.min(applied);
        while let Some(front) = self.cache.front() {
            if front.last > evictable
                || (front.index >= keep_from && self.cache_bytes <= budget_bytes)
            {
                break;
            }
            self.cache_bytes -= front.size_bytes();
            self.cache.pop_front();
        }
        // An idle group holds no buffers.
        if self.cache.is_empty() && self.cache.capacity() > 0 {
            self.cache = VecDeque::new();
        }
        if self.unsynced.is_empty() && self.unsynced.capacity() > 0 {
            self.unsynced = VecDeque::new();
        }
        // Storage may not hold an entry above the persisted index yet: the cache is its only
        // copy and must survive any budget.
        assert!(
            self.cache_first() <= self.persisted_index.max(self.meta.snapshot().index) + 1,
            "evicted an entry that may not be durable"
        );
        assert!(
            !self.cache.is_empty() || self.cache_bytes == 0,
            "an empty cache counts bytes"
        );
    }

    /// Whole entries from `lo` (an entry's first index) to at most `hi` (an entry's last index)
    /// into `out`: at most `max_entries` of them and `max_bytes` of payload (but at least one),
    /// from the cache, or from storage for durable entries no longer cached. Returns how many
    /// were added.
    pub(super) fn read(
        &self,
        lo: u64,
        hi: u64,
        max_entries: usize,
        max_bytes: u64,
        source: &impl EntrySource,
        out: &mut Vec<Entry>,
    ) -> usize {
        assert!(lo >= self.meta.first_index() && lo <= hi && hi <= self.meta.last_index());
        assert!(max_entries >= 1);
        debug_assert_ne!(self.is_end(lo - 1), Some(false), "reads start at an entry");
        let start = out.len();
        let added = self.read_into(lo, hi, max_entries, max_bytes, source, out);
        assert!(
            added <= max_entries,
            "a read returned more entries than asked"
        );
        // Callers send these as one append or apply them in order: no gaps, no overlaps.
        debug_assert!(
            out[start..]
                .iter()
                .try_fold(lo, |next, e| (e.index == next && e.last <= hi)
                    .then_some(e.last + 1))
                .is_some(),
            "a read returned entries that are not contiguous from lo within hi"
        );
        added
    }

    /// [`RaftLog::read`] without its checks.
    fn read_into(
        &self,
        lo: u64,
        hi: u64,
        max_entries: usize,
        max_bytes: u64,
        source: &impl EntrySource,
        out: &mut Vec<Entry>,
    ) -> usize {
        let start = out.len();
        let mut bytes = 0;
        let mut next = lo;
        let cache_first = self.cache_first();
        if lo < cache_first {
            let end = hi.min(cache_first - 1);
            assert!(end <= self.persisted_index, "uncached entries are durable");
            source.entries(lo, end, max_bytes, out);
            // The host's answer is input: keep only the part that is what we asked for (whole
            // entries, contiguous from `lo`, with the terms this log has there).
            let mut valid = start;
            while valid < out.len() {
                let e = &out[valid];
                let fits = e.index == next
                    && e.bounds_are_valid()
                    && e.last <= end
                    && Some(e.term) == self.meta.term(e.index)
                    && Some(e.term) == self.meta.term(e.last);
                if !fits {
                    break;
                }
                next = e.last + 1;
                valid += 1;
            }
            debug_assert_eq!(valid, out.len(), "entry source returned other entries");
            out.truncate(valid.min(start + max_entries));
            next = out[start..].last().map_or(lo, |e| e.last + 1);
            bytes = out[start..].iter().map(Entry::size_bytes).sum();
            if next <= end || out.len() - start == max_entries {
                return out.len() - start;
            }
        }
        if next <= hi {
            let skip = self.cache.partition_point(|e| e.index < next);
            assert_eq!(self.cache[skip].index, next, "reads start at an entry");
            for e in self.cache.range(skip..) {
                if e.last > hi
                    || out.len() - start == max_entries
                    || (out.len() > start && bytes + e.size_bytes() > max_bytes)
                {
                    break;
                }
                bytes += e.size_bytes();
                out.push(e.clone());
            }
        }
        out.len() - start
    }

    pub(super) fn check_invariants(&self) {
        self.meta.check_invariants();
        let last = self.meta.last_index();
        let snapshot_index = self.meta.snapshot().index;
        assert!(self.persisted_index <= last, "persisted beyond the log");
        assert!(self.written_index <= last);
        assert!(
            self.cache_first() <= self.persisted_index.max(snapshot_index) + 1,
            "every entry that may not be durable is cached"
        );
        assert!(self.cache_first() >= self.meta.first_index());
        let mut bytes = 0;
        let mut next = self.cache_first();
        for e in &self.cache {
            assert!(e.bounds_are_valid());
            assert_eq!(e.index, next, "cache is contiguous");
            // Both ends in the term run of the entry's term: no entry straddles two runs.
            assert_eq!(
                (Some(e.term), Some(e.term)),
                (self.meta.term(e.index), self.meta.term(e.last)),
                "cache matches the index"
            );
            next = e.last + 1;
            bytes += e.size_bytes();
        }
        assert_eq!(next, last + 1, "the cache reaches the last index");
        assert_eq!(bytes, self.cache_bytes);
        // Durability is tracked in whole entries.
        assert_ne!(
            self.is_end(self.persisted_index.max(snapshot_index)),
            Some(false)
        );
        assert_ne!(self.is_end(self.written_index), Some(false));
        assert!(
            self.persisted_index <= self.written_index,
            "durable beyond what was handed out"
        );
        assert!(self.seq_persisted <= self.seq_issued);
        let mut prev = self.seq_persisted;
        for (seq, last_index) in &self.unsynced {
            assert!(*seq > prev && *seq <= self.seq_issued);
            assert!(*last_index <= last);
            assert!(
                *last_index <= self.written_index,
                "a write counts for more than was handed out"
            );
            assert_ne!(self.is_end(*last_index), Some(false));
            prev = *seq;
        }
        if let Some(t) = self.truncate_from {
            assert!(t > self.written_index && t > snapshot_index);
            // Truncation pulls the written index down to just before the cut, and nothing
            // but a write moves it up again (taking the truncation along).
            assert_eq!(
                t,
                self.written_index + 1,
                "a pending truncation starts elsewhere than after the written log"
            );
        }
        if let Some(snapshot) = &self.pending_snapshot {
            assert!(
                self.truncate_from.is_none(),
                "a truncation pending with a snapshot"
            );
            assert_eq!(
                &snapshot.meta,
                self.meta.snapshot(),
                "the snapshot to write is not the log start"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(terms: &[u64]) -> LogMeta {
        let mut m = LogMeta::new(SnapshotMeta::default());
        for (i, t) in terms.iter().enumerate() {
            m.push(i as u64 + 1, i as u64 + 1, *t, None).unwrap();
        }
        m.check_invariants();
        m
    }

    #[test]
    fn terms_are_found_by_run() {
        let m = meta(&[1, 1, 2, 2, 2, 5]);
        assert_eq!(m.term(0), Some(0));
        assert_eq!(m.term(2), Some(1));
        assert_eq!(m.term(3), Some(2));
        assert_eq!(m.term(6), Some(5));
        assert_eq!(m.term(7), None);
        assert_eq!(m.last_term(), 5);
        assert_eq!(
            m.clone().push(8, 8, 5, None),
            Err(LogMetaError::NotContiguous)
        );
        assert_eq!(m.clone().push(7, 7, 4, None), Err(LogMetaError::BadTerm));
    }

    #[test]
    fn conflict_search_skips_whole_terms() {
        let m = meta(&[1, 1, 2, 2, 2, 5]);
        assert_eq!(m.find_conflict_by_term(6, 4), Some(5));
        assert_eq!(m.find_conflict_by_term(6, 5), Some(6));
        assert_eq!(m.find_conflict_by_term(4, 1), Some(2));
        assert_eq!(m.find_conflict_by_term(9, 9), Some(6));
        assert_eq!(m.find_conflict_by_term(3, 0), Some(0));
    }

    /// A log after the snapshot `(10, term 2)`: entries 11..=14 (term 2), 15 (term 4), the
    /// membership entry 16 (term 4), 17..=20 (term 4).
    fn snapshot_10() -> SnapshotMeta {
        SnapshotMeta {
            index: 10,
            term: 2,
            membership: Membership::new([1, 2, 3]),
        }
    }

    #[test]
    fn from_runs_rebuilds_what_pushes_build() {
        let config = || vec![(16, Membership::new([1, 2]))];
        let meta = LogMeta::from_runs(snapshot_10(), vec![(11, 2), (15, 4)], 20, config()).unwrap();
        let mut pushed = LogMeta::new(snapshot_10());
        pushed.push(11, 14, 2, None).unwrap();
        pushed.push(15, 15, 4, None).unwrap();
        pushed
            .push(16, 16, 4, Some(Membership::new([1, 2])))
            .unwrap();
        pushed.push(17, 20, 4, None).unwrap();
        assert_eq!(meta, pushed);
        assert_eq!(
            (meta.term(14), meta.term(15), meta.term(20)),
            (Some(2), Some(4), Some(4))
        );
        assert_eq!(meta.membership_at(15), &Membership::new([1, 2, 3]));
        assert_eq!(meta.membership(), &Membership::new([1, 2]));
        // Known entry ends: the snapshot, the run ends, the last index. Not 12 or 17, which
        // only the entries themselves could tell.
        let known: Vec<u64> = (10..=20).filter(|i| meta.is_known_end(*i)).collect();
        assert_eq!(known, vec![10, 14, 20]);
        assert_eq!(meta.known_end_at_or_before(13), 10);
        assert_eq!(meta.known_end_at_or_before(17), 14);
        assert_eq!(meta.known_end_at_or_before(14), 14);
        // An empty log after the snapshot.
        let empty = LogMeta::from_runs(snapshot_10(), vec![], 10, vec![]).unwrap();
        assert_eq!(empty, LogMeta::new(snapshot_10()));
    }

    #[test]
    fn from_runs_refuses_a_damaged_index() {
        use LogMetaError::*;
        let from = |runs: Vec<(u64, u64)>, last: u64, configs: Vec<(u64, Membership)>| {
            LogMeta::from_runs(snapshot_10(), runs, last, configs)
        };
        let m = || Membership::new([1]);
        // Runs must start right after the snapshot, strictly increase, and lie in the log.
        assert_eq!(from(vec![(12, 2)], 20, vec![]), Err(NotContiguous));
        assert_eq!(from(vec![(11, 2), (11, 3)], 20, vec![]), Err(NotContiguous));
        assert_eq!(from(vec![(11, 2), (21, 3)], 20, vec![]), Err(NotContiguous));
        assert_eq!(from(vec![(11, 3), (9, 4)], 20, vec![]), Err(NotContiguous));
        // Entries need a run; no entries, no runs; the log never ends before its start.
        assert_eq!(from(vec![], 20, vec![]), Err(NotContiguous));
        assert_eq!(from(vec![(11, 2)], 10, vec![]), Err(NotContiguous));
        assert_eq!(from(vec![], 9, vec![]), Err(NotContiguous));
        // Terms strictly increase from run to run, from at least the snapshot's (and 1).
        assert_eq!(from(vec![(11, 3), (15, 3)], 20, vec![]), Err(BadTerm));
        assert_eq!(from(vec![(11, 4), (15, 3)], 20, vec![]), Err(BadTerm));
        assert_eq!(from(vec![(11, 1)], 20, vec![]), Err(BadTerm));
        let zero = LogMeta::from_runs(SnapshotMeta::default(), vec![(1, 0)], 5, vec![]);
        assert_eq!(zero, Err(BadTerm));
        // Membership entries inside the log, by increasing index.
        assert_eq!(from(vec![(11, 2)], 20, vec![(10, m())]), Err(BadMembership));
        assert_eq!(from(vec![(11, 2)], 20, vec![(21, m())]), Err(BadMembership));
        assert_eq!(
            from(vec![(11, 2)], 20, vec![(15, m()), (15, m())]),
            Err(BadMembership)
        );
        // Indexes stay below the limit.
        assert_eq!(from(vec![(11, 2)], RAFT_INDEX_LIMIT, vec![]), Err(BadSpan));
    }

    #[test]
    fn push_refuses_bad_spans() {
        let mut m = LogMeta::new(SnapshotMeta::default());
        assert_eq!(m.push(1, 0, 1, None), Err(LogMetaError::BadSpan));
        assert_eq!(
            m.push(1, RAFT_ENTRY_SPAN_MAX + 1, 1, None),
            Err(LogMetaError::BadSpan)
        );
        assert_eq!(
            m.push(1, 2, 1, Some(Membership::new([1]))),
            Err(LogMetaError::BadSpan)
        );
        assert_eq!(m.push(1, RAFT_ENTRY_SPAN_MAX, 1, None), Ok(()));
        assert_eq!(m.last_index(), RAFT_ENTRY_SPAN_MAX);
        let last = RAFT_INDEX_LIMIT - 1;
        let mut m =
            LogMeta::from_runs(SnapshotMeta::default(), vec![(1, 1)], last - 1, vec![]).unwrap();
        assert_eq!(m.push(last, last, 1, None), Ok(()));
        assert_eq!(
            m.push(last + 1, last + 1, 1, None),
            Err(LogMetaError::BadSpan)
        );
        m.check_invariants();
    }

    #[test]
    fn truncation_and_compaction_keep_the_index_exact() {
        let mut m = meta(&[1, 1, 2, 2, 2, 5]);
        m.configs.push((4, Membership::new([1, 2])));
        m.truncate_from(6);
        m.check_invariants();
        assert_eq!(m.last_term(), 2);
        m.compact_to(4);
        m.check_invariants();
        assert_eq!(m.snapshot().index, 4);
        assert_eq!(m.snapshot().term, 2);
        assert_eq!(m.snapshot().membership, Membership::new([1, 2]));
        assert_eq!(m.term(5), Some(2));
        assert_eq!(m.term(3), None);
        assert_eq!(m.find_conflict_by_term(5, 1), None);
        m.compact_to(5);
        m.check_invariants();
        assert_eq!(m.last_index(), 5);
        assert_eq!(m.last_term(), 2);
    }
}
