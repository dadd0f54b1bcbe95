//! A deterministic in-memory Raft cluster: replicas, their storage, a faulty network and the
//! cluster-level checkers, all driven by one seeded [`Rng`]. No async, no threads, no clock:
//! time is the tick counter. Used by the property and scenario tests and by the benchmark.
//!
//! - Storage ([`SimStorage`]) is a synced state plus a queue of unsynced writes. A crash keeps a
//!   random prefix of the queue (the disk may have written some of it) and loses the rest; a
//!   restart rebuilds the replica from the synced state alone.
//! - The network drops, duplicates and delays (hence reorders) messages, and links can be cut
//!   one way or both ways.
//! - The state machine of every replica is a hash chain over the entries it applied; snapshot
//!   data is that hash, so a snapshot is checked like any applied entry.
//!
//! Checkers ([`Checker`]) run after every input to every replica and panic with the seed's
//! story on the first violation: election safety, log matching, leader completeness,
//! state-machine safety and monotonic commit. Liveness is checked by [`Cluster::run_schedule`]
//! once faults stop.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;

use crate::raft::*;
use crate::rng::Rng;

/// Folds `value` into a running hash (SplitMix64's finaliser over the sum).
fn mix(hash: u64, value: u64) -> u64 {
    let mut z = hash
        .rotate_left(5)
        .wrapping_add(value)
        .wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn hash_bytes(bytes: &[u8]) -> u64 {
    bytes.chunks(8).fold(bytes.len() as u64, |h, chunk| {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        mix(h, u64::from_le_bytes(word))
    })
}

/// The hash chain through `entry`, given the chain through the entry before it. It covers the
/// entry's bounds, term and kind, and the payload's length and first 64 bytes (the harness's
/// payloads are unique 8-byte counters; the cap keeps large payloads in the benchmark from
/// measuring the hash).
pub fn chain(prev: u64, entry: &Entry) -> u64 {
    let kind = match entry.kind {
        EntryKind::Normal => 1,
        EntryKind::Membership => 2,
        EntryKind::Empty => 3,
    };
    mix(
        mix(
            mix(mix(mix(prev, entry.index), entry.last), entry.term),
            kind,
        ),
        hash_bytes(&entry.payload[..entry.payload.len().min(64)]) ^ entry.payload.len() as u64,
    )
}

// ---- Storage -------------------------------------------------------------------------------

/// One replica's stored state: hard state, snapshot boundary (with the chain hash there as its
/// data) and the entries after it, each with the chain hash through it. Entries keep their
/// spans: the state only exists between entries (a batch applies whole), so chain hashes are
/// defined at entry ends and at the snapshot boundary.
#[derive(Clone, Debug, Default)]
pub struct StoredLog {
    pub hard_state: HardState,
    pub snapshot: SnapshotMeta,
    pub snapshot_chain: u64,
    pub entries: Vec<Entry>,
    chains: Vec<u64>,
}

impl StoredLog {
    fn bootstrap(membership: Membership) -> StoredLog {
        StoredLog {
            snapshot: SnapshotMeta {
                index: 0,
                term: 0,
                membership,
            },
            ..StoredLog::default()
        }
    }

    pub fn last_index(&self) -> u64 {
        self.entries.last().map_or(self.snapshot.index, |e| e.last)
    }

    /// The position in `entries` of the entry holding `index`.
    fn position(&self, index: u64) -> Option<usize> {
        if index <= self.snapshot.index || index > self.last_index() {
            return None;
        }
        Some(self.entries.partition_point(|e| e.last < index))
    }

    /// The chain hash through `index`, if the log holds it and an entry ends there (or it is the
    /// snapshot boundary).
    pub fn chain_at(&self, index: u64) -> Option<u64> {
        if index == self.snapshot.index {
            return Some(self.snapshot_chain);
        }
        let at = self.position(index)?;
        (self.entries[at].last == index).then(|| self.chains[at])
    }

    /// The entry holding `index`.
    pub fn entry(&self, index: u64) -> Option<&Entry> {
        self.position(index).map(|at| &self.entries[at])
    }

    /// The largest entry end (or the snapshot boundary) at or below `index`, which is at most the
    /// last index.
    pub fn end_at_or_before(&self, index: u64) -> u64 {
        match self.position(index) {
            Some(at) if self.entries[at].last != index => at
                .checked_sub(1)
                .map_or(self.snapshot.index, |before| self.entries[before].last),
            _ => index,
        }
    }

    /// Applies one write; calls `on_entry(entry, chain)` for every appended entry.
    fn apply(&mut self, write: &Write, mut on_entry: impl FnMut(&Entry, u64)) {
        if let Some(hs) = write.hard_state {
            self.hard_state = hs;
        }
        if let Some(snapshot) = &write.snapshot {
            self.snapshot = snapshot.meta.clone();
            self.snapshot_chain = decode_chain(&snapshot.data);
            self.entries.clear();
            self.chains.clear();
        }
        if let Some(from) = write.truncate_from {
            assert!(from > self.snapshot.index, "truncating into the snapshot");
            let keep = self.entries.partition_point(|e| e.index < from);
            assert!(
                self.entries.get(keep).is_none_or(|e| e.index == from),
                "truncating inside an entry"
            );
            self.entries.truncate(keep);
            self.chains.truncate(keep);
        }
        for e in &write.entries {
            assert_eq!(e.index, self.last_index() + 1, "write leaves a gap");
            assert!(e.bounds_are_valid(), "malformed entry written");
            let prev = self.chain_at(e.index - 1).expect("previous entry");
            let c = chain(prev, e);
            on_entry(e, c);
            self.entries.push(e.clone());
            self.chains.push(c);
        }
    }

    /// Drops entries up to `meta.index` (retention), keeping `chain`, the chain hash there, as
    /// the snapshot data. A log that does not hold that state there is left alone: it is the
    /// synced log of a replica whose installed snapshot is not synced yet, which may lack the
    /// boundary or hold a divergent suffix across it; syncing the snapshot replaces it.
    fn compact_to(&mut self, meta: &SnapshotMeta, chain: u64) {
        if meta.index <= self.snapshot.index || self.chain_at(meta.index) != Some(chain) {
            return;
        }
        let drop = self.entries.partition_point(|e| e.last <= meta.index);
        self.entries.drain(..drop);
        self.chains.drain(..drop);
        self.snapshot = meta.clone();
        self.snapshot_chain = chain;
    }

    /// The index a restarted replica is rebuilt from: from the term runs, as a host with a
    /// leader-epoch cache does, checked against the entry-by-entry rebuild.
    fn log_meta(&self) -> LogMeta {
        let mut runs: Vec<(u64, u64)> = Vec::new();
        let mut configs = Vec::new();
        let mut pushed = LogMeta::new(self.snapshot.clone());
        for e in &self.entries {
            if runs.last().is_none_or(|run| run.1 != e.term) {
                runs.push((e.index, e.term));
            }
            let membership = (e.kind == EntryKind::Membership)
                .then(|| Membership::decode(&e.payload).expect("stored membership"));
            if let Some(m) = &membership {
                configs.push((e.index, m.clone()));
            }
            pushed
                .push(e.index, e.last, e.term, membership)
                .expect("stored log is well formed");
        }
        let meta = LogMeta::from_runs(self.snapshot.clone(), runs, self.last_index(), configs)
            .expect("stored log is well formed");
        assert_eq!(meta, pushed, "both rebuilds agree");
        meta
    }
}

/// The durability rule, checked on every message as it leaves: a vote grant or an append
/// acknowledgement only claims what the sender's synced storage holds (unless the sender has
/// durably moved to a later term since, which makes the claim stale but harmless).
fn check_durable_claims(synced: &StoredLog, msg: &Message) {
    let durable_term = synced.hard_state.term;
    assert!(
        durable_term >= msg.term
            || !matches!(
                msg.body,
                MessageBody::VoteResponse { granted: true } | MessageBody::AppendAccepted { .. }
            ),
        "durability: {} sent {:?} at term {} but its synced term is {durable_term}",
        msg.from,
        msg.body,
        msg.term
    );
    if durable_term != msg.term {
        return;
    }
    match msg.body {
        MessageBody::VoteResponse { granted: true } => assert_eq!(
            synced.hard_state.vote,
            Some(msg.to),
            "durability: {} granted a vote it has not synced",
            msg.from
        ),
        MessageBody::AppendAccepted { match_index, .. } => assert!(
            synced.last_index() >= match_index,
            "durability: {} acknowledged {match_index} but synced only {}",
            msg.from,
            synced.last_index()
        ),
        _ => {}
    }
}

fn decode_chain(data: &[u8]) -> u64 {
    u64::from_be_bytes(data.try_into().expect("snapshot data is a chain hash"))
}

/// Synced state plus the writes not yet synced.
#[derive(Clone, Debug)]
pub struct SimStorage {
    synced: StoredLog,
    /// `synced` with every unsynced write applied: what reads after the writes would see.
    current: StoredLog,
    unsynced: VecDeque<Write>,
}

impl SimStorage {
    fn new(membership: Membership) -> SimStorage {
        let log = StoredLog::bootstrap(membership);
        SimStorage {
            synced: log.clone(),
            current: log,
            unsynced: VecDeque::new(),
        }
    }

    pub fn synced(&self) -> &StoredLog {
        &self.synced
    }

    pub fn current(&self) -> &StoredLog {
        &self.current
    }

    pub fn unsynced_writes(&self) -> usize {
        self.unsynced.len()
    }

    /// Syncs the oldest `count` writes; returns the last synced write's sequence number.
    fn sync(&mut self, count: usize) -> Option<u64> {
        let mut last = None;
        for _ in 0..count.min(self.unsynced.len()) {
            let write = self.unsynced.pop_front().expect("non-empty");
            self.synced.apply(&write, |_, _| {});
            last = Some(write.seq);
        }
        last
    }

    /// A crash: the disk kept the oldest `kept` unsynced writes and lost the rest.
    fn crash(&mut self, kept: usize) {
        self.sync(kept);
        self.unsynced.clear();
        self.current = self.synced.clone();
    }
}

impl EntrySource for SimStorage {
    fn entries(&self, lo: u64, hi: u64, max_bytes: u64, out: &mut Vec<Entry>) {
        let log = &self.synced;
        assert!(
            lo > log.snapshot.index && hi <= log.last_index(),
            "raft read {lo}..={hi}, but the synced log holds {}..={}",
            log.snapshot.index + 1,
            log.last_index()
        );
        let from = log.position(lo).expect("in range");
        assert_eq!(
            log.entries[from].index, lo,
            "raft read from inside an entry"
        );
        let mut bytes = 0;
        for e in &log.entries[from..] {
            if e.last > hi || (bytes > 0 && bytes + e.size_bytes() > max_bytes) {
                break;
            }
            bytes += e.size_bytes();
            out.push(e.clone());
        }
    }

    fn snapshot_data(&self, index: u64) -> Option<Bytes> {
        [&self.current, &self.synced]
            .into_iter()
            .find(|log| log.snapshot.index == index)
            .map(|log| Bytes::copy_from_slice(&log.snapshot_chain.to_be_bytes()))
    }
}

// ---- Checker -------------------------------------------------------------------------------

/// Cluster-wide safety properties, checked incrementally; every method panics on a violation.
#[derive(Debug, Default)]
pub struct Checker {
    /// Election safety: the one leader of each term.
    leaders: BTreeMap<u64, NodeId>,
    /// Log matching: every entry ever stored anywhere, by `(term, first index)`: its last index
    /// and the chain hash through it. Only the leader of a term creates its entries, once per
    /// index, so two entries of one term that overlap must be the same entry after the same
    /// prefix (equal chains mean equal prefixes): checked per index, entry boundaries included.
    stored: BTreeMap<(u64, u64), (u64, u64)>,
    /// State-machine safety: `(last index, chain hash through it)` of every committed entry, by
    /// index, after `(0, 0)` for the empty log. Commit indexes are entry ends.
    committed: Vec<(u64, u64)>,
    /// Leader completeness: for each term, the largest index some replica in that term saw
    /// committed (so it was committed in that term or before).
    committed_by_term: BTreeMap<u64, u64>,
}

impl Checker {
    pub fn new() -> Checker {
        Checker {
            committed: vec![(0, 0)],
            ..Checker::default()
        }
    }

    /// The highest index known committed.
    pub fn commit_index(&self) -> u64 {
        self.committed.last().expect("the empty log").0
    }

    pub fn leaders(&self) -> &BTreeMap<u64, NodeId> {
        &self.leaders
    }

    /// The chain hash through `index`, if it is committed and a committed entry ends there.
    pub fn committed_chain(&self, index: u64) -> Option<u64> {
        let at = self.committed.binary_search_by_key(&index, |c| c.0).ok()?;
        Some(self.committed[at].1)
    }

    fn on_stored(&mut self, id: NodeId, entry: &Entry, chain: u64) {
        let term = entry.term;
        // Entries of one term seen so far do not overlap, so only the last one starting at or
        // before this entry's end can overlap it.
        let overlapping = self
            .stored
            .range((term, 0)..=(term, entry.last))
            .next_back()
            .filter(|(_, (last, _))| *last >= entry.index);
        match overlapping {
            Some((&(_, first), &(last, seen))) => assert!(
                (first, last, seen) == (entry.index, entry.last, chain),
                "log matching: replica {id} stored entry {}..={} of term {term}, but \
                 {first}..={last} of that term was stored {}",
                entry.index,
                entry.last,
                if (first, last) == (entry.index, entry.last) {
                    "after a different prefix"
                } else {
                    "with other bounds"
                }
            ),
            None => {
                self.stored.insert((term, entry.index), (entry.last, chain));
            }
        }
    }

    /// A replica's commit index is `commit` (in `term`), and its log's chain there is `chain`.
    fn on_committed(&mut self, id: NodeId, term: u64, commit: u64, log: &StoredLog) {
        assert!(
            log.entry(commit).is_none_or(|e| e.last == commit),
            "state-machine safety: replica {id} committed {commit}, inside an entry"
        );
        let known = self.commit_index();
        if commit <= known {
            let chain = log.chain_at(commit).expect("committed entries are stored");
            assert_eq!(
                Some(chain),
                self.committed_chain(commit),
                "state-machine safety: replica {id} committed a different entry {commit}"
            );
        } else {
            // Extend the committed chain from this replica's log (it holds everything above
            // the last known commit: its snapshot is at most that).
            assert_eq!(
                log.chain_at(known),
                self.committed_chain(known),
                "state-machine safety: replica {id}'s committed prefix differs"
            );
            let from = log.entries.partition_point(|e| e.last <= known);
            for (e, chain) in log.entries[from..].iter().zip(&log.chains[from..]) {
                if e.last > commit {
                    break;
                }
                self.committed.push((e.last, *chain));
            }
            assert_eq!(
                self.commit_index(),
                commit,
                "replica {id} committed {commit} but does not hold it"
            );
        }
        let floor = self.committed_by_term.entry(term).or_insert(0);
        *floor = (*floor).max(commit);
    }

    /// A replica applied the state `chain` at `index` (an entry or a snapshot).
    fn on_applied(&self, id: NodeId, index: u64, chain: u64) {
        assert_eq!(
            self.committed_chain(index),
            Some(chain),
            "state-machine safety: replica {id} applied a state at {index} that was not committed"
        );
    }

    /// Replica `id` leads `term`.
    fn on_leader(&mut self, id: NodeId, term: u64) {
        let leader = *self.leaders.entry(term).or_insert(id);
        assert_eq!(
            leader, id,
            "election safety: replicas {leader} and {id} both lead term {term}"
        );
    }

    /// The leader `id` of `term`, whose whole log is stored in `log`, holds every entry
    /// committed in an earlier term.
    fn check_leader_complete(&self, id: NodeId, term: u64, log: &StoredLog) {
        let required = self
            .committed_by_term
            .range(..term)
            .map(|(_, c)| *c)
            .max()
            .unwrap_or(0);
        // A prefix dropped by a snapshot is checked through the snapshot's chain hash.
        let at = required.max(log.snapshot.index);
        assert_eq!(
            log.chain_at(at),
            self.committed_chain(at),
            "leader completeness: leader {id} of term {term} lacks committed entry {required}"
        );
    }
}

// ---- Network -------------------------------------------------------------------------------

/// Fault rates of the network, per message.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetworkFaults {
    pub drop_per_mille: u32,
    pub duplicate_per_mille: u32,
    /// Each copy is delayed by `0..=delay_ticks_max` ticks (so messages reorder).
    pub delay_ticks_max: u64,
}

#[derive(Debug)]
struct InFlight {
    deliver_at: u64,
    /// A random tie-break: messages due together are delivered in random order.
    order: u64,
    msg: Message,
}

#[derive(Debug, Default)]
struct Network {
    in_flight: Vec<InFlight>,
    /// Cut links, one way: `(from, to)`.
    cut: BTreeSet<(NodeId, NodeId)>,
    faults: NetworkFaults,
}

impl Network {
    fn send(&mut self, msg: Message, now: u64, rng: &mut Rng, stats: &mut Stats) {
        if self.cut.contains(&(msg.from, msg.to)) || rng.chance(self.faults.drop_per_mille) {
            stats.messages_dropped += 1;
            return;
        }
        let copies = 1 + u32::from(rng.chance(self.faults.duplicate_per_mille));
        for copy in 0..copies {
            let delay = if self.faults.delay_ticks_max == 0 {
                0
            } else {
                rng.below(self.faults.delay_ticks_max + 1)
            };
            if copy > 0 {
                stats.messages_duplicated += 1;
            }
            self.in_flight.push(InFlight {
                deliver_at: now + delay,
                order: rng.next_u64(),
                msg: msg.clone(),
            });
        }
    }

    /// Removes and returns the next message due by `now`, if any.
    fn next_due(&mut self, now: u64) -> Option<Message> {
        let at = self
            .in_flight
            .iter()
            .enumerate()
            .filter(|(_, m)| m.deliver_at <= now)
            .min_by_key(|(_, m)| (m.deliver_at, m.order))
            .map(|(i, _)| i)?;
        Some(self.in_flight.swap_remove(at).msg)
    }
}

// ---- Cluster -------------------------------------------------------------------------------

/// Counters of what a run did, for test reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub ticks: u64,
    pub messages_delivered: u64,
    pub messages_dropped: u64,
    pub messages_duplicated: u64,
    pub proposals: u64,
    pub committed: u64,
    pub leaders_elected: u64,
    pub crashes: u64,
    pub writes_lost: u64,
    pub snapshots_installed: u64,
    pub compactions: u64,
    pub conf_changes: u64,
    pub transfers: u64,
    pub truncations: u64,
    /// Ticks from the end of the faults to the first commit of a new proposal.
    pub liveness_ticks: u64,
    /// A hash of every event: equal for two runs of one seed.
    pub trace: u64,
}

impl Stats {
    /// Adds up the counters of many runs (`liveness_ticks` keeps the largest).
    pub fn add(&mut self, other: &Stats) {
        self.ticks += other.ticks;
        self.messages_delivered += other.messages_delivered;
        self.messages_dropped += other.messages_dropped;
        self.messages_duplicated += other.messages_duplicated;
        self.proposals += other.proposals;
        self.committed += other.committed;
        self.leaders_elected += other.leaders_elected;
        self.crashes += other.crashes;
        self.writes_lost += other.writes_lost;
        self.snapshots_installed += other.snapshots_installed;
        self.compactions += other.compactions;
        self.conf_changes += other.conf_changes;
        self.transfers += other.transfers;
        self.truncations += other.truncations;
        self.liveness_ticks = self.liveness_ticks.max(other.liveness_ticks);
        self.trace = mix(self.trace, other.trace);
    }
}

/// One replica: its Raft (absent while crashed), storage and state machine.
#[derive(Debug)]
pub struct Replica {
    pub id: NodeId,
    pub raft: Option<Raft>,
    pub storage: SimStorage,
    /// The state machine: the last applied index and the chain hash through it.
    applied_index: u64,
    applied_chain: u64,
    /// The commit index last observed in this incarnation.
    commit_seen: u64,
    /// The last term in which this replica was seen leading with its log fully stored (and
    /// checked for leader completeness).
    led_term: u64,
}

/// How a cluster behaves; [`ClusterOptions::random`] derives one from a seed.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// Replica ids are `0..pool`; the first `voters` form the initial group, the others may be
    /// added later.
    pub pool: usize,
    pub voters: usize,
    pub election_ticks: u32,
    pub heartbeat_ticks: u32,
    pub append_entries_max: usize,
    pub inflight_appends_max: usize,
    pub entry_cache_bytes_max: u64,
    pub uncommitted_entries_max: u64,
    /// Proposals occupy `1..=span_max` indexes (records of a batch), mostly at most 4.
    pub span_max: u64,
    pub network: NetworkFaults,
    /// Sync every write as soon as it is handed out (scenario tests); otherwise syncs happen at
    /// random points and at the end of each tick.
    pub sync_immediately: bool,
    /// Per mille, per drain of a replica: sync its writes at once.
    pub sync_now_per_mille: u32,
    /// Per mille, per replica at the end of a tick: sync all its writes (else a random part).
    pub sync_all_per_mille: u32,
    /// Per mille, per tick: how likely each kind of fault or action is.
    pub crash_per_mille: u32,
    pub restart_per_mille: u32,
    pub partition_per_mille: u32,
    pub propose_per_mille: u32,
    pub conf_change_per_mille: u32,
    pub compact_per_mille: u32,
    pub transfer_per_mille: u32,
    /// Ticks with faults before the liveness phase.
    pub fault_ticks: u64,
    /// Ticks the healed cluster gets to elect a leader and commit a new proposal.
    pub liveness_ticks_max: u64,
    /// Run the checkers (off only to measure Raft itself in the benchmark).
    pub checks: bool,
    /// The bug every replica plants (none outside the planted-bug tests).
    pub planted: crate::planted::Planted,
}

impl ClusterOptions {
    /// A calm cluster of `voters` replicas: no faults, immediate syncs, no random actions.
    pub fn calm(voters: usize) -> ClusterOptions {
        ClusterOptions {
            pool: voters,
            voters,
            election_ticks: 10,
            heartbeat_ticks: 2,
            append_entries_max: 64,
            inflight_appends_max: 8,
            entry_cache_bytes_max: 64 * 1024,
            uncommitted_entries_max: 1024,
            span_max: 1,
            network: NetworkFaults::default(),
            sync_immediately: true,
            sync_now_per_mille: 1000,
            sync_all_per_mille: 1000,
            crash_per_mille: 0,
            restart_per_mille: 0,
            partition_per_mille: 0,
            propose_per_mille: 0,
            conf_change_per_mille: 0,
            compact_per_mille: 0,
            transfer_per_mille: 0,
            fault_ticks: 0,
            liveness_ticks_max: 400,
            checks: true,
            planted: crate::planted::Planted::NONE,
        }
    }

    /// Everything drawn from `rng`: cluster size, fault rates, Raft limits small enough that
    /// batching, windows, probing, snapshots and truncation all happen in a short run.
    pub fn random(rng: &mut Rng) -> ClusterOptions {
        match rng.below(4) {
            0 => ClusterOptions::random_churn(rng),
            1 => ClusterOptions::random_crashes(rng),
            _ => ClusterOptions::random_mixed(rng),
        }
    }

    /// Membership changes, compaction and transfers, over a partitioned network.
    fn random_churn(rng: &mut Rng) -> ClusterOptions {
        let voters = rng.between(2, 5) as usize;
        ClusterOptions {
            pool: (voters + rng.between(1, 2) as usize).min(7),
            conf_change_per_mille: *rng.pick(&[50, 150]) as u32,
            compact_per_mille: *rng.pick(&[50, 200]) as u32,
            transfer_per_mille: *rng.pick(&[10, 50]) as u32,
            partition_per_mille: *rng.pick(&[20, 60]) as u32,
            ..ClusterOptions::random_mixed(rng)
        }
        .with_voters(voters)
    }

    /// Frequent crashes with writes left unsynced for long.
    fn random_crashes(rng: &mut Rng) -> ClusterOptions {
        ClusterOptions {
            crash_per_mille: *rng.pick(&[30, 80]) as u32,
            restart_per_mille: *rng.pick(&[100, 300]) as u32,
            sync_now_per_mille: 0,
            sync_all_per_mille: *rng.pick(&[100, 300]) as u32,
            ..ClusterOptions::random_mixed(rng)
        }
    }

    fn with_voters(mut self, voters: usize) -> ClusterOptions {
        self.voters = voters;
        self.pool = self.pool.max(voters);
        self
    }

    fn random_mixed(rng: &mut Rng) -> ClusterOptions {
        let voters = *rng.pick(&[1, 2, 3, 3, 3, 4, 5, 5]);
        let pool = (voters + rng.below(3) as usize).min(7);
        let election_ticks = rng.between(4, 12) as u32;
        ClusterOptions {
            pool,
            voters,
            election_ticks,
            heartbeat_ticks: rng.between(1, u64::from(election_ticks / 2)) as u32,
            append_entries_max: rng.between(1, 8) as usize,
            inflight_appends_max: rng.between(1, 4) as usize,
            entry_cache_bytes_max: rng.between(0, 400),
            uncommitted_entries_max: rng.between(4, 64),
            span_max: *rng.pick(&[1, 4, 4, 100]),
            network: NetworkFaults {
                drop_per_mille: *rng.pick(&[0, 10, 50, 200]) as u32,
                duplicate_per_mille: *rng.pick(&[0, 10, 100]) as u32,
                delay_ticks_max: *rng.pick(&[0, 1, 3, 8]),
            },
            sync_immediately: false,
            sync_now_per_mille: *rng.pick(&[0, 300, 900]) as u32,
            sync_all_per_mille: *rng.pick(&[300, 700, 1000]) as u32,
            crash_per_mille: *rng.pick(&[0, 5, 20]) as u32,
            restart_per_mille: *rng.pick(&[50, 200]) as u32,
            partition_per_mille: *rng.pick(&[0, 20, 60]) as u32,
            propose_per_mille: *rng.pick(&[200, 600, 1000]) as u32,
            conf_change_per_mille: if pool > voters || voters > 2 {
                *rng.pick(&[0, 10, 30]) as u32
            } else {
                0
            },
            compact_per_mille: *rng.pick(&[0, 20, 100]) as u32,
            transfer_per_mille: *rng.pick(&[0, 5, 20]) as u32,
            fault_ticks: rng.between(50, 250),
            // Up to ~30 election timeouts: far beyond what split votes and in-flight junk need.
            liveness_ticks_max: 60 * u64::from(election_ticks) + 100,
            checks: true,
            planted: crate::planted::Planted::NONE,
        }
    }

    fn raft_config(&self, id: NodeId) -> RaftConfig {
        RaftConfig {
            election_ticks: self.election_ticks,
            heartbeat_ticks: self.heartbeat_ticks,
            append_entries_max: self.append_entries_max,
            inflight_appends_max: self.inflight_appends_max,
            entry_cache_bytes_max: self.entry_cache_bytes_max,
            uncommitted_entries_max: self.uncommitted_entries_max,
            planted: self.planted,
            ..RaftConfig::new(id)
        }
    }
}

/// The cluster under test.
#[derive(Debug)]
pub struct Cluster {
    pub options: ClusterOptions,
    rng: Rng,
    replicas: Vec<Replica>,
    network: Network,
    pub checker: Checker,
    now: u64,
    next_payload: u64,
    pub stats: Stats,
    /// A hash of every event, to show that a seed replays exactly.
    trace: u64,
    /// Print every delivery and role change to stderr (for debugging a seed).
    pub verbose: bool,
}

/// Messages delivered per tick at most (a guard against a livelock in the harness itself).
const DELIVERIES_PER_TICK_MAX: usize = 100_000;

impl Cluster {
    pub fn new(options: ClusterOptions, seed: u64) -> Cluster {
        assert!(options.voters >= 1 && options.voters <= options.pool);
        let mut rng = Rng::new(seed);
        let initial = Membership::new(0..options.voters as NodeId);
        let mut replicas = Vec::new();
        for id in 0..options.pool as NodeId {
            let membership = if initial.contains(id) {
                initial.clone()
            } else {
                Membership::default()
            };
            let storage = SimStorage::new(membership.clone());
            let raft = Raft::new(
                options.raft_config(id),
                rng.fork(),
                RaftState::bootstrap(membership),
            )
            .expect("valid config");
            replicas.push(Replica {
                id,
                raft: Some(raft),
                storage,
                applied_index: 0,
                applied_chain: 0,
                commit_seen: 0,
                led_term: 0,
            });
        }
        let network = Network {
            faults: options.network,
            ..Network::default()
        };
        Cluster {
            options,
            rng,
            replicas,
            network,
            checker: Checker::new(),
            now: 0,
            next_payload: 0,
            stats: Stats::default(),
            trace: 0,
            verbose: false,
        }
    }

    /// Runs a random schedule: faults for `fault_ticks`, then heals everything and requires a
    /// leader and a newly committed proposal within `liveness_ticks_max`. Panics on any
    /// violation.
    pub fn run_schedule(seed: u64) -> Stats {
        Cluster::run_schedule_verbose(seed, false)
    }

    pub fn run_schedule_verbose(seed: u64, verbose: bool) -> Stats {
        Cluster::run_schedule_with(seed, verbose, crate::planted::Planted::NONE)
    }

    /// [`Cluster::run_schedule`] with every replica planting `planted`.
    pub fn run_schedule_with(seed: u64, verbose: bool, planted: crate::planted::Planted) -> Stats {
        let mut rng = Rng::new(seed);
        let options = ClusterOptions {
            planted,
            ..ClusterOptions::random(&mut rng)
        };
        if verbose {
            eprintln!("{options:?}");
        }
        let mut cluster = Cluster::new(options, rng.next_u64());
        cluster.verbose = verbose;
        for _ in 0..cluster.options.fault_ticks {
            cluster.random_actions();
            cluster.tick();
        }
        cluster.heal_all();
        cluster.assert_liveness();
        cluster.stats.trace = cluster.trace;
        cluster.stats
    }

    pub fn now(&self) -> u64 {
        self.now
    }

    pub fn trace(&self) -> u64 {
        self.trace
    }

    pub fn ids(&self) -> std::ops::Range<NodeId> {
        0..self.replicas.len() as NodeId
    }

    pub fn replica(&self, id: NodeId) -> &Replica {
        &self.replicas[id as usize]
    }

    /// The Raft of a live replica.
    pub fn raft(&self, id: NodeId) -> &Raft {
        self.replicas[id as usize]
            .raft
            .as_ref()
            .unwrap_or_else(|| panic!("replica {id} is down"))
    }

    pub fn is_up(&self, id: NodeId) -> bool {
        self.replicas[id as usize].raft.is_some()
    }

    /// The live replica that leads the highest term, if any.
    pub fn leader(&self) -> Option<NodeId> {
        self.replicas
            .iter()
            .filter_map(|r| r.raft.as_ref())
            .filter(|raft| raft.is_leader())
            .max_by_key(|raft| raft.term())
            .map(|raft| raft.id())
    }

    // ---- Faults and actions ------------------------------------------------------------------

    /// Cuts the link `from -> to`.
    pub fn cut(&mut self, from: NodeId, to: NodeId) {
        self.network.cut.insert((from, to));
    }

    /// Cuts every link to and from `id`.
    pub fn isolate(&mut self, id: NodeId) {
        for other in self.ids().filter(|o| *o != id) {
            self.cut(id, other);
            self.cut(other, id);
        }
    }

    /// Splits the replicas into groups that only talk within themselves.
    pub fn partition(&mut self, groups: &[&[NodeId]]) {
        self.network.cut.clear();
        let group_of = |id: NodeId| groups.iter().position(|g| g.contains(&id));
        for a in self.ids() {
            for b in self.ids() {
                if a != b && (group_of(a).is_none() || group_of(a) != group_of(b)) {
                    self.network.cut.insert((a, b));
                }
            }
        }
    }

    /// Restores every link.
    pub fn heal(&mut self) {
        self.network.cut.clear();
    }

    /// Drops every message in flight for which `filter` holds.
    pub fn drop_in_flight(&mut self, filter: impl Fn(&Message) -> bool) {
        self.network.in_flight.retain(|m| !filter(&m.msg));
    }

    pub fn in_flight(&self) -> impl Iterator<Item = &Message> {
        self.network.in_flight.iter().map(|m| &m.msg)
    }

    /// Crashes `id`: its unsynced writes are lost except a random prefix.
    pub fn crash(&mut self, id: NodeId) {
        let kept = if self.options.sync_immediately {
            0
        } else {
            let unsynced = self.replicas[id as usize].storage.unsynced.len();
            self.rng.below(unsynced as u64 + 1) as usize
        };
        self.crash_keeping(id, kept);
    }

    /// Crashes `id`, keeping exactly the oldest `kept` unsynced writes.
    pub fn crash_keeping(&mut self, id: NodeId, kept: usize) {
        let r = &mut self.replicas[id as usize];
        if r.raft.take().is_none() {
            return;
        }
        self.stats.crashes += 1;
        self.stats.writes_lost += r.storage.unsynced.len().saturating_sub(kept) as u64;
        r.storage.crash(kept);
        self.trace = mix(self.trace, 0xc0 ^ id);
    }

    /// Restarts `id` from its synced storage.
    pub fn restart(&mut self, id: NodeId) {
        let seed = self.rng.next_u64();
        let config = self.options.raft_config(id);
        let r = &mut self.replicas[id as usize];
        if r.raft.is_some() {
            return;
        }
        let log = &r.storage.synced;
        let state = RaftState {
            hard_state: log.hard_state,
            log: log.log_meta(),
            applied: log.snapshot.index,
        };
        let raft = Raft::new(config, Rng::new(seed), state).expect("restart");
        r.applied_index = log.snapshot.index;
        r.applied_chain = log.snapshot_chain;
        // Checked against the committed chain at the first drain.
        r.commit_seen = log.snapshot.index;
        r.raft = Some(raft);
        self.trace = mix(self.trace, 0xa0 ^ id);
        self.drain(id);
    }

    /// A proposal's span: `1..=span_max`, mostly at most 4 (no draw when it is always 1, so
    /// scenarios with single-index entries see the same randomness as before ranges).
    pub fn random_span(&mut self) -> u64 {
        match self.options.span_max {
            1 => 1,
            max if max > 4 && self.rng.chance(900) => self.rng.between(1, 4),
            max => self.rng.between(1, max),
        }
    }

    /// Proposes a fresh payload with a random span at `id`; returns the entry's last index and
    /// its term if `id` accepted it.
    pub fn propose(&mut self, id: NodeId) -> Option<(u64, u64)> {
        self.next_payload += 1;
        let payload = Bytes::copy_from_slice(&self.next_payload.to_be_bytes());
        let span = self.random_span();
        self.propose_bytes(id, payload, span)
    }

    pub fn propose_bytes(&mut self, id: NodeId, payload: Bytes, span: u64) -> Option<(u64, u64)> {
        let raft = self.replicas[id as usize].raft.as_mut()?;
        let (_, last) = raft.propose(payload, span).ok()?;
        let term = raft.term();
        self.stats.proposals += 1;
        self.trace = mix(self.trace, last);
        self.drain(id);
        Some((last, term))
    }

    /// Proposes every `(payload, span)` at `id`, then hands out the effects once (as a host does
    /// with everything that arrived in one loop iteration, so they travel in shared appends).
    /// Returns the last index, if `id` accepted them all.
    pub fn propose_all(
        &mut self,
        id: NodeId,
        proposals: impl IntoIterator<Item = (Bytes, u64)>,
    ) -> Option<u64> {
        let raft = self.replicas[id as usize].raft.as_mut()?;
        let mut last = None;
        for (payload, span) in proposals {
            last = Some(raft.propose(payload, span).ok()?.1);
            self.stats.proposals += 1;
        }
        self.drain(id);
        last
    }

    pub fn change_membership(
        &mut self,
        id: NodeId,
        change: ConfChange,
    ) -> Result<u64, ConfChangeError> {
        let raft = self.replicas[id as usize]
            .raft
            .as_mut()
            .ok_or(ConfChangeError::NotLeader { leader: None })?;
        let index = raft.propose_membership_change(change)?;
        self.stats.conf_changes += 1;
        self.drain(id);
        Ok(index)
    }

    pub fn transfer(&mut self, id: NodeId, to: NodeId) -> Result<(), TransferError> {
        let raft = self.replicas[id as usize]
            .raft
            .as_mut()
            .ok_or(TransferError::NotLeader { leader: None })?;
        raft.transfer_leadership(to)?;
        self.stats.transfers += 1;
        self.drain(id);
        Ok(())
    }

    pub fn campaign(&mut self, id: NodeId, force: bool) {
        if let Some(raft) = self.replicas[id as usize].raft.as_mut() {
            raft.campaign(force);
            self.drain(id);
        }
    }

    /// Drops `id`'s log up to `index` (at most what it applied, and back to an entry end), as
    /// retention would: it deletes whole batches.
    pub fn compact(&mut self, id: NodeId, index: u64) {
        let r = &mut self.replicas[id as usize];
        let Some(raft) = r.raft.as_mut() else {
            return;
        };
        let index = r
            .storage
            .current
            .end_at_or_before(index.min(raft.applied_index()));
        let meta = raft.compact(index).expect("applied");
        // The log as Raft has it holds the boundary (or is the snapshot installed there).
        let chain = r
            .storage
            .current
            .chain_at(meta.index)
            .expect("compaction at an entry end");
        r.storage.current.compact_to(&meta, chain);
        r.storage.synced.compact_to(&meta, chain);
        self.stats.compactions += 1;
        self.drain(id);
    }

    /// One random step of the fault phase.
    fn random_actions(&mut self) {
        let o = self.options.clone();
        if self.rng.chance(o.partition_per_mille) {
            self.random_partition();
        }
        for id in self.ids() {
            if self.is_up(id) {
                if self.rng.chance(o.crash_per_mille) {
                    self.crash(id);
                }
            } else if self.rng.chance(o.restart_per_mille) {
                self.restart(id);
            }
        }
        let target = self.leader().filter(|_| !self.rng.chance(200));
        let target = target.unwrap_or_else(|| self.rng.below(o.pool as u64));
        if self.rng.chance(o.propose_per_mille) {
            for _ in 0..self.rng.between(1, 3) {
                self.propose(target);
            }
        }
        if self.rng.chance(o.conf_change_per_mille) {
            let id = self.rng.below(o.pool as u64);
            let change = if self.raft_membership_contains(target, id) {
                ConfChange::RemoveVoter(id)
            } else {
                ConfChange::AddVoter(id)
            };
            let _ = self.change_membership(target, change);
        }
        if self.rng.chance(o.compact_per_mille) {
            let id = self.rng.below(o.pool as u64);
            if self.is_up(id) {
                let applied = self.raft(id).applied_index();
                let index = self.rng.below(applied + 1);
                self.compact(id, index);
            }
        }
        if self.rng.chance(o.transfer_per_mille) {
            let to = self.rng.below(o.pool as u64);
            let _ = self.transfer(target, to);
        }
    }

    fn raft_membership_contains(&self, at: NodeId, id: NodeId) -> bool {
        self.replicas[at as usize]
            .raft
            .as_ref()
            .is_some_and(|r| r.membership().contains(id))
    }

    fn random_partition(&mut self) {
        let ids: Vec<NodeId> = self.ids().collect();
        match self.rng.below(5) {
            0 => self.heal(),
            1 => {
                let id = *self.rng.pick(&ids);
                self.heal();
                self.isolate(id);
            }
            2 => {
                let mut a = Vec::new();
                let mut b = Vec::new();
                for id in &ids {
                    if self.rng.chance(500) {
                        a.push(*id);
                    } else {
                        b.push(*id);
                    }
                }
                self.partition(&[&a, &b]);
            }
            _ => {
                // One-way cuts.
                for _ in 0..self.rng.between(1, 3) {
                    let from = *self.rng.pick(&ids);
                    let to = *self.rng.pick(&ids);
                    if from != to {
                        self.cut(from, to);
                    }
                }
            }
        }
    }

    /// Ends the fault phase: every link restored, every replica up, no more loss, short delays.
    pub fn heal_all(&mut self) {
        self.heal();
        self.network.faults.drop_per_mille = 0;
        self.network.faults.duplicate_per_mille = 0;
        self.options.crash_per_mille = 0;
        // Raft's timing requirement: messages travel much faster than an election times out.
        self.network.faults.delay_ticks_max = self.network.faults.delay_ticks_max.min(1);
        for id in self.ids() {
            self.restart(id);
        }
    }

    /// Requires a leader and a newly committed proposal within `liveness_ticks_max` ticks.
    pub fn assert_liveness(&mut self) {
        let start = self.now;
        let mut proposal: Option<(NodeId, u64, u64)> = None;
        while self.now - start < self.options.liveness_ticks_max {
            self.tick();
            if let Some((id, index, term)) = proposal {
                let raft = self.raft(id);
                if raft.commit_index() >= index && raft.log().term(index) == Some(term) {
                    self.stats.liveness_ticks = self.now - start;
                    return;
                }
                if !raft.is_leader() || raft.term() != term {
                    proposal = None;
                }
            }
            if proposal.is_none() {
                if let Some(leader) = self.leader() {
                    proposal = self.propose(leader).map(|(i, t)| (leader, i, t));
                }
            }
        }
        let states: Vec<String> = self
            .replicas
            .iter()
            .filter_map(|r| r.raft.as_ref())
            .map(|r| {
                format!(
                    "{}: {:?} term {} commit {} last {} voters {:?}",
                    r.id(),
                    r.role(),
                    r.term(),
                    r.commit_index(),
                    r.last_index(),
                    r.membership().voters()
                )
            })
            .collect();
        panic!(
            "liveness: no new proposal committed within {} ticks of healing: {states:#?}",
            self.options.liveness_ticks_max
        );
    }

    // ---- Driving -----------------------------------------------------------------------------

    /// One tick: every live replica ticks, then every message due is delivered (including
    /// those sent during this tick with no delay), then storage syncs.
    pub fn tick(&mut self) {
        self.now += 1;
        self.stats.ticks += 1;
        for id in self.ids() {
            if let Some(raft) = self.replicas[id as usize].raft.as_mut() {
                raft.tick();
                self.drain(id);
            }
        }
        self.deliver_due();
        self.sync_round();
    }

    /// Ticks `n` times.
    pub fn ticks(&mut self, n: u64) {
        for _ in 0..n {
            self.tick();
        }
    }

    /// Delivers messages and syncs until nothing is left to do, without advancing time
    /// (so no timer fires).
    pub fn settle(&mut self) {
        for _ in 0..DELIVERIES_PER_TICK_MAX {
            let delivered = self.deliver_due();
            let synced = self.sync_all();
            if delivered == 0 && !synced {
                return;
            }
        }
        panic!("the cluster did not settle");
    }

    /// Delivers one message due now, if any; returns it.
    pub fn deliver_one(&mut self) -> Option<Message> {
        let msg = self.network.next_due(self.now)?;
        self.deliver(msg.clone());
        Some(msg)
    }

    fn deliver_due(&mut self) -> usize {
        let mut delivered = 0;
        while let Some(msg) = self.network.next_due(self.now) {
            self.deliver(msg);
            delivered += 1;
            assert!(delivered < DELIVERIES_PER_TICK_MAX, "message storm");
        }
        delivered
    }

    fn deliver(&mut self, msg: Message) {
        let to = msg.to;
        if self.network.cut.contains(&(msg.from, to)) {
            self.stats.messages_dropped += 1;
            return;
        }
        let Some(raft) = self.replicas[to as usize].raft.as_mut() else {
            self.stats.messages_dropped += 1;
            return;
        };
        self.trace = mix(mix(self.trace, msg.from), to);
        if self.verbose {
            let body = match &msg.body {
                MessageBody::Append {
                    prev_index,
                    prev_term,
                    entries,
                    commit,
                    repair_seen,
                } => format!(
                    "Append prev ({prev_index}, {prev_term}) entries {:?} commit {commit} repair {repair_seen}",
                    entries
                        .iter()
                        .map(|e| (e.index, e.last, e.term))
                        .collect::<Vec<_>>()
                ),
                other => format!("{other:?}"),
            };
            eprintln!(
                "t{} {} -> {} term {}: {body}",
                self.now, msg.from, to, msg.term
            );
        }
        self.stats.messages_delivered += 1;
        raft.step(msg);
        self.drain(to);
        // Crashes also strike mid-tick, when writes are most likely unsynced.
        if self.options.crash_per_mille > 0 && self.rng.chance(self.options.crash_per_mille / 4) {
            self.crash(to);
        }
    }

    /// End of a tick: each replica syncs all, some or none of its writes.
    fn sync_round(&mut self) {
        for id in self.ids() {
            let unsynced = self.replicas[id as usize].storage.unsynced.len();
            if unsynced == 0 || !self.is_up(id) {
                continue;
            }
            let count = if self.rng.chance(self.options.sync_all_per_mille) {
                unsynced
            } else {
                self.rng.below(unsynced as u64 + 1) as usize
            };
            self.sync(id, count);
        }
    }

    /// Syncs every write of every live replica; returns whether there were any.
    pub fn sync_all(&mut self) -> bool {
        let mut any = false;
        for id in self.ids() {
            let unsynced = self.replicas[id as usize].storage.unsynced.len();
            if unsynced > 0 && self.is_up(id) {
                self.sync(id, unsynced);
                any = true;
            }
        }
        any
    }

    fn sync(&mut self, id: NodeId, count: usize) {
        let r = &mut self.replicas[id as usize];
        let Some(raft) = r.raft.as_mut() else {
            return;
        };
        if let Some(seq) = r.storage.sync(count) {
            raft.on_persisted(seq);
            self.trace = mix(self.trace, seq);
            self.drain(id);
        }
    }

    /// Carries out everything replica `id` wants done, checking after each part.
    fn drain(&mut self, id: NodeId) {
        for _ in 0..1000 {
            let r = &mut self.replicas[id as usize];
            let Some(raft) = r.raft.as_mut() else {
                return;
            };
            if !raft.has_ready() {
                self.check_replica(id);
                return;
            }
            let ready = raft.ready(&r.storage);
            if let Some(write) = ready.write {
                if write.snapshot.is_some() {
                    self.stats.snapshots_installed += 1;
                }
                if write.truncate_from.is_some() {
                    self.stats.truncations += 1;
                }
                let checker = &mut self.checker;
                let checks = self.options.checks;
                r.storage.current.apply(&write, |e, chain| {
                    if checks {
                        checker.on_stored(id, e, chain)
                    }
                });
                if let Some(snapshot) = &write.snapshot {
                    r.applied_index = snapshot.meta.index;
                    r.applied_chain = decode_chain(&snapshot.data);
                    if checks {
                        checker.on_applied(id, r.applied_index, r.applied_chain);
                    }
                }
                let seq = write.seq;
                r.storage.unsynced.push_back(write);
                if self.options.sync_immediately || self.rng.chance(self.options.sync_now_per_mille)
                {
                    let count = r.storage.unsynced.len();
                    if let Some(synced) = r.storage.sync(count) {
                        debug_assert_eq!(synced, seq);
                        raft.on_persisted(synced);
                    }
                }
            }
            for msg in ready.messages {
                if self.options.checks {
                    check_durable_claims(&self.replicas[id as usize].storage.synced, &msg);
                }
                self.network
                    .send(msg, self.now, &mut self.rng, &mut self.stats);
            }
            // The commit index may have moved (a sync above): record it before applying.
            self.observe_commit(id);
            let r = &mut self.replicas[id as usize];
            for e in &ready.committed {
                assert_eq!(e.index, r.applied_index + 1, "entries applied in order");
                r.applied_index = e.last;
                r.applied_chain = chain(r.applied_chain, e);
                if self.options.checks {
                    self.checker.on_applied(id, e.last, r.applied_chain);
                }
            }
        }
        panic!("replica {id} always has more to do");
    }

    /// The cluster checks that concern replica `id`, once its storage reflects its log.
    fn check_replica(&mut self, id: NodeId) {
        if !self.options.checks {
            return;
        }
        let r = &mut self.replicas[id as usize];
        let Some(raft) = r.raft.as_ref() else {
            return;
        };
        raft.check_invariants();
        let log = &r.storage.current;
        assert_eq!(log.last_index(), raft.last_index(), "storage holds the log");
        self.observe_commit(id);
        let r = &mut self.replicas[id as usize];
        let Some(raft) = r.raft.as_ref() else {
            return;
        };
        let log = &r.storage.current;
        if raft.is_leader() {
            let term = raft.term();
            self.checker.on_leader(id, term);
            if r.led_term != term {
                r.led_term = term;
                self.stats.leaders_elected += 1;
                self.checker.check_leader_complete(id, term, log);
            }
        }
    }

    /// Monotonic commit, and state-machine safety of the committed prefix.
    fn observe_commit(&mut self, id: NodeId) {
        if !self.options.checks {
            return;
        }
        let r = &mut self.replicas[id as usize];
        let Some(raft) = r.raft.as_ref() else {
            return;
        };
        let commit = raft.commit_index();
        assert!(
            commit >= r.commit_seen,
            "replica {id}'s commit index went from {} to {commit}",
            r.commit_seen
        );
        if commit > r.commit_seen {
            self.checker
                .on_committed(id, raft.term(), commit, &r.storage.current);
            self.stats.committed = self.checker.commit_index();
            r.commit_seen = commit;
        }
    }
}

#[cfg(test)]
mod tests {
    //! The checkers must catch what they exist for.

    use super::*;

    /// A log of `(index, last, term, payload byte)` entries.
    fn log_with(entries: &[(u64, u64, u64, u8)]) -> StoredLog {
        let mut log = StoredLog::bootstrap(Membership::new([1]));
        let write = Write {
            seq: 1,
            hard_state: None,
            snapshot: None,
            truncate_from: None,
            entries: entries
                .iter()
                .map(|(index, last, term, byte)| Entry {
                    index: *index,
                    last: *last,
                    term: *term,
                    kind: EntryKind::Normal,
                    payload: Bytes::from(vec![*byte]),
                })
                .collect(),
        };
        log.apply(&write, |_, _| {});
        log
    }

    #[test]
    #[should_panic(expected = "election safety")]
    fn two_leaders_in_one_term_are_caught() {
        let mut c = Checker::new();
        c.on_leader(1, 3);
        c.on_leader(2, 3);
    }

    #[test]
    #[should_panic(expected = "log matching")]
    fn same_index_and_term_after_different_prefixes_is_caught() {
        let mut c = Checker::new();
        let a = log_with(&[(1, 1, 1, 0xa), (2, 2, 2, 0)]);
        let b = log_with(&[(1, 1, 1, 0xb), (2, 2, 2, 0)]);
        for log in [&a, &b] {
            for e in &log.entries {
                c.on_stored(1, e, log.chain_at(e.index).unwrap());
            }
        }
    }

    #[test]
    #[should_panic(expected = "with other bounds")]
    fn same_term_entries_with_other_bounds_are_caught() {
        let mut c = Checker::new();
        let a = log_with(&[(1, 3, 1, 0)]);
        let b = log_with(&[(1, 2, 1, 0), (3, 3, 1, 0)]);
        for log in [&a, &b] {
            for e in &log.entries {
                c.on_stored(1, e, log.chain_at(e.last).unwrap());
            }
        }
    }

    #[test]
    #[should_panic(expected = "inside an entry")]
    fn a_commit_inside_an_entry_is_caught() {
        let mut c = Checker::new();
        c.on_committed(1, 1, 2, &log_with(&[(1, 3, 1, 0)]));
    }

    #[test]
    #[should_panic(expected = "state-machine safety")]
    fn a_committed_entry_that_changes_is_caught() {
        let mut c = Checker::new();
        c.on_committed(1, 1, 2, &log_with(&[(1, 1, 1, 0), (2, 2, 1, 1)]));
        c.on_committed(2, 2, 2, &log_with(&[(1, 1, 1, 0), (2, 2, 2, 1)]));
    }

    #[test]
    #[should_panic(expected = "leader completeness")]
    fn a_leader_missing_a_committed_entry_is_caught() {
        let mut c = Checker::new();
        c.on_committed(1, 1, 2, &log_with(&[(1, 1, 1, 0), (2, 2, 1, 1)]));
        c.check_leader_complete(2, 2, &log_with(&[(1, 1, 1, 0)]));
    }

    #[test]
    #[should_panic(expected = "durability")]
    fn an_acknowledgement_beyond_the_synced_log_is_caught() {
        let mut log = log_with(&[(1, 1, 1, 0)]);
        log.hard_state.term = 1;
        let ack = Message {
            from: 1,
            to: 2,
            term: 1,
            body: MessageBody::AppendAccepted {
                match_index: 2,
                repair_seen: 0,
            },
        };
        check_durable_claims(&log, &ack);
    }
}
