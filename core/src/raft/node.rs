//! One replica of one Raft group: the state machine behind [`Raft`].
//!
//! Inputs are method calls (`tick`, `step`, `propose`, `propose_membership_change`,
//! `transfer_leadership`, `campaign`, `compact`, `on_persisted`); outputs leave as data through
//! [`Raft::ready`]. Nothing here reads a clock, a file or a socket, and the only randomness is
//! the election jitter drawn from the injected [`Rng`].

use std::collections::VecDeque;
use std::num::NonZeroU64;

use bytes::Bytes;

use super::log::{EntrySource, LogMeta, RaftLog};
use super::progress::{Progress, ProgressView};
use super::types::*;
use crate::limits::*;
use crate::planted::{Bug, Planted};
use crate::rng::Rng;

/// Settings of one group's replica. Time is counted in ticks: the host calls [`Raft::tick`] at a
/// fixed interval of its choosing (one timer for all groups), and every timeout is a number of
/// those ticks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RaftConfig {
    pub id: NodeId,
    /// The minimum election timeout. Each timeout is drawn uniformly from
    /// `[election_ticks, 2 * election_ticks)`; it is also the leader lease (vote requests are
    /// ignored this long after hearing from a leader) and the check-quorum period.
    pub election_ticks: u32,
    /// A leader sends heartbeats this often.
    pub heartbeat_ticks: u32,
    /// Entries per append message at most.
    pub append_entries_max: usize,
    /// Payload bytes per append message at most (one entry is always sent).
    pub append_bytes_max: u64,
    /// Appends in flight to one follower at most.
    pub inflight_appends_max: usize,
    /// A leader refuses proposals while this many entries are uncommitted.
    pub uncommitted_entries_max: u64,
    /// Payload bytes of durable entries kept in memory.
    pub entry_cache_bytes_max: u64,
    /// Payload bytes of committed entries per [`Ready`].
    pub apply_bytes_max: u64,
    /// Whether [`Ready::committed`] hands out committed entries. A data partition, whose state
    /// is the log itself, has nothing to apply: with `false` the applied index simply follows
    /// the commit index and no entry is read back.
    pub apply_entries: bool,
    /// A deliberate defect for the simulator's checker tests (nothing outside them).
    pub planted: Planted,
}

impl RaftConfig {
    pub fn new(id: NodeId) -> RaftConfig {
        RaftConfig {
            id,
            election_ticks: RAFT_ELECTION_TICKS_DEFAULT,
            heartbeat_ticks: RAFT_HEARTBEAT_TICKS_DEFAULT,
            append_entries_max: RAFT_APPEND_ENTRIES_MAX,
            append_bytes_max: RAFT_APPEND_BYTES_MAX_DEFAULT,
            inflight_appends_max: RAFT_INFLIGHT_APPENDS_MAX,
            uncommitted_entries_max: RAFT_UNCOMMITTED_ENTRIES_MAX_DEFAULT,
            entry_cache_bytes_max: RAFT_ENTRY_CACHE_BYTES_MAX_DEFAULT,
            apply_bytes_max: RAFT_APPLY_BYTES_MAX_DEFAULT,
            apply_entries: true,
            planted: Planted::NONE,
        }
    }

    /// Checks ranges; the error names the offending setting.
    pub fn validate(&self) -> Result<(), String> {
        if self.heartbeat_ticks == 0 || self.heartbeat_ticks >= self.election_ticks {
            return Err("heartbeat_ticks must be in 1..election_ticks".into());
        }
        if self.election_ticks > u32::MAX / 2 {
            return Err("election_ticks is too large".into());
        }
        if !(1..=RAFT_APPEND_ENTRIES_MAX).contains(&self.append_entries_max) {
            return Err(format!(
                "append_entries_max must be in 1..={RAFT_APPEND_ENTRIES_MAX}"
            ));
        }
        if !(1..=RAFT_INFLIGHT_APPENDS_MAX).contains(&self.inflight_appends_max) {
            return Err(format!(
                "inflight_appends_max must be in 1..={RAFT_INFLIGHT_APPENDS_MAX}"
            ));
        }
        if self.uncommitted_entries_max < 2 {
            return Err("uncommitted_entries_max must be at least 2".into());
        }
        if self.append_bytes_max == 0 || self.apply_bytes_max == 0 {
            return Err("byte limits must be positive".into());
        }
        Ok(())
    }
}

/// What a replica is doing in its current term.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Follower,
    /// Asking whether it could win an election, without changing its term.
    PreCandidate,
    Candidate,
    Leader,
}

/// What a replica restarts from: its synced hard state and an index of its synced log.
#[derive(Clone, Debug)]
pub struct RaftState {
    pub hard_state: HardState,
    pub log: LogMeta,
    /// The last index already applied to the host's state machine (clamped to the snapshot
    /// boundary and the commit index). For a host that rebuilds its state from the snapshot,
    /// the snapshot index.
    pub applied: u64,
}

impl RaftState {
    /// A member of a new group: empty log, the given voters (the same on every initial member).
    pub fn bootstrap(membership: Membership) -> RaftState {
        RaftState {
            hard_state: HardState::default(),
            log: LogMeta::new(SnapshotMeta {
                index: 0,
                term: 0,
                membership,
            }),
            applied: 0,
        }
    }

    /// A replica about to be added to an existing group: it knows no voters (so it never
    /// campaigns) until the leader's log or snapshot tells it.
    pub fn joining() -> RaftState {
        RaftState::bootstrap(Membership::default())
    }
}

/// Why a replica could not be rebuilt from its stored state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RestoreError {
    Config(String),
    /// The stored term is below the term of a stored entry: the hard state is damaged or stale.
    TermBelowLog {
        term: u64,
        last_term: u64,
    },
}

/// Why [`Raft::compact`] refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompactError {
    /// Only entries already applied (hence committed and durable) may be dropped.
    NotApplied { applied: u64 },
    /// The index lies inside an entry: a log is only ever cut between entries.
    NotEntryEnd,
}

/// Storage work for the host, to be done in field order, then synced, then confirmed with
/// [`Raft::on_persisted`]`(seq)`. Writes must be applied in `seq` order; confirming `seq`
/// confirms every earlier write too.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Write {
    pub seq: u64,
    /// Replace the stored hard state.
    pub hard_state: Option<HardState>,
    /// Replace the whole stored log (and the state machine) with this snapshot.
    pub snapshot: Option<Snapshot>,
    /// Delete every stored entry from this index on.
    pub truncate_from: Option<u64>,
    /// Append these after the stored log's last entry.
    pub entries: Vec<Entry>,
}

/// Everything a replica wants done, as data. Do the write (if any) first — it may install a
/// snapshot the committed entries build on — then send the messages (they never depend on the
/// write: messages that do are held back until [`Raft::on_persisted`] confirms it), then apply
/// the committed entries in order.
#[must_use]
#[derive(Debug, Default)]
pub struct Ready {
    pub write: Option<Write>,
    pub messages: Vec<Message>,
    /// Newly committed entries, in index order, each handed out exactly once.
    pub committed: Vec<Entry>,
}

impl Ready {
    pub fn is_empty(&self) -> bool {
        self.write.is_none() && self.messages.is_empty() && self.committed.is_empty()
    }
}

/// A leadership transfer under way.
#[derive(Clone, Copy, Debug)]
struct Transfer {
    to: NodeId,
    elapsed_ticks: u32,
    timeout_now_sent: bool,
}

/// One replica of one Raft group.
///
/// **Repair** (protocol-aware recovery, after Alagappan et al., FAST 2018). Raft assumes stable
/// storage: a replica that acknowledged an entry still holds it. A replica whose recovery cut
/// data that may have been synced (a flipped bit, a write the disk lost) breaks that, and with
/// one more failure a committed entry could be lost: its shortened log makes it vote for a
/// candidate without the entry. So it starts in repair mode ([`HardState::repair`]): it grants
/// no vote and never campaigns; every rejection it sends says `lost_data` with the repair's id,
/// and a leader that reads it forgets the follower's match index (which may count entries it no
/// longer holds) and echoes the id in its appends from then on. The repair ends when the replica
/// durably holds its leader's log up to the commit index of an append that echoed the id, that
/// index is an entry of the leader's term, and it reaches the index the replica held before the
/// damage (when recovery could tell). An append without the echo (sent before the leader forgot
/// the match, and delivered late) does not count. The other replicas stay a majority while one
/// repairs; if every replica of a group lost data at once, nothing can be repaired from peers
/// and the group stays without a leader (docs/architecture.md, "Protocol-aware recovery").
/// A repair in progress (see "Repair" in [`Raft`]).
#[derive(Clone, Copy, Debug)]
struct Repair {
    /// The replica lacks entries up to this index at most (0: unknown).
    end: u64,
    /// Drawn when the replica opens: its `lost_data` rejections carry it, and only an append
    /// that echoes it (`repair_seen`) counts toward the end of the repair. An append the leader
    /// sent before it forgot this replica's match (delayed, reordered or queued across the
    /// restart) echoes something else.
    id: NonZeroU64,
}

#[derive(Debug)]
pub struct Raft {
    config: RaftConfig,
    rng: Rng,
    role: Role,
    term: u64,
    vote: Option<NodeId>,
    /// The leader of `term`, once heard from (or `id` when leading).
    leader: Option<NodeId>,
    log: RaftLog,
    /// Never decreases; never above the durable prefix (or the snapshot boundary).
    commit: u64,
    /// An index known to be committed in this log (from a leader of this log), possibly not
    /// yet durable here; `commit` follows it as the log becomes durable.
    commit_hint: u64,
    applied: u64,
    /// Term or vote changed since the last write: the next write carries the hard state, and
    /// messages that depend on them wait for it.
    hard_state_dirty: bool,
    /// The commit index changed since the last write (written along, never waited for).
    commit_dirty: bool,
    election_elapsed: u32,
    /// This round's randomized election timeout, in `[election_ticks, 2 * election_ticks)`.
    election_timeout: u32,
    heartbeat_elapsed: u32,
    heartbeat_due: bool,
    /// Pre-candidate or candidate: the answers so far (voters only, once each).
    votes: Vec<(NodeId, bool)>,
    /// Leader: one entry per voter other than itself, sorted by id.
    progress: Vec<Progress>,
    /// Leader: the index of its term's first (empty) entry.
    term_start_index: u64,
    /// Leader: the commit index it was elected with. Until an entry of its own term commits,
    /// its commit index stays here (Raft §5.4.2), which `check_invariants` asserts apart from
    /// the commit computation itself.
    commit_at_election: u64,
    transfer: Option<Transfer>,
    /// Messages to hand out with the next `Ready`.
    outbox: Vec<Message>,
    /// Messages held until write `.0` is synced: vote grants, append acknowledgements and the
    /// candidate's own vote (addressed to itself).
    held: VecDeque<(u64, Message)>,
    /// Messages dropped because a queue was full (a host that does not drain `ready`).
    messages_dropped: u64,
    /// Repair mode (see the type's docs): set while this replica may lack entries it
    /// acknowledged.
    repair: Option<Repair>,
    /// Follower: the largest commit index a leader of this term has sent in an append this
    /// replica accepted (not capped by what it holds, unlike `commit_hint`), counting, while
    /// repairing, only appends that echo `repair_id`. A repair ends only once the commit index
    /// here has caught up with it. Such an append was sent after the leader forgot this
    /// replica's match, so the leader no longer counts acknowledgements the replica lost, and
    /// its commit index covers every entry that counted them.
    leader_commit_seen: u64,
    /// Follower: it accepted an append from the leader of this term (while repairing: one that
    /// echoes `repair_id`).
    append_accepted: bool,
}

impl Raft {
    /// A replica restored from its synced state (or bootstrapped: [`RaftState::bootstrap`]).
    /// It starts as a follower with a fresh randomized election timeout.
    pub fn new(config: RaftConfig, rng: Rng, state: RaftState) -> Result<Raft, RestoreError> {
        config.validate().map_err(RestoreError::Config)?;
        let RaftState {
            hard_state,
            log,
            applied,
        } = state;
        if hard_state.term < log.last_term() {
            return Err(RestoreError::TermBelowLog {
                term: hard_state.term,
                last_term: log.last_term(),
            });
        }
        let snapshot_index = log.snapshot().index;
        // Entries the host has applied were committed, even if the commit index on disk lags
        // (a follower learns commits from heartbeats without writing them): start from the later
        // of the two, so nothing already applied is handed out again.
        let commit = hard_state
            .commit
            .max(applied)
            .clamp(snapshot_index, log.last_index());
        let mut rng = rng;
        let repair = hard_state
            .repair
            // Planted: the damage recovery found is ignored.
            .filter(|_| !config.planted.is(Bug::NoRepair))
            .map(|end| Repair {
                end,
                id: NonZeroU64::new(rng.next_u64()).unwrap_or(NonZeroU64::MIN),
            });
        let mut raft = Raft {
            rng,
            role: Role::Follower,
            term: hard_state.term,
            vote: hard_state.vote,
            leader: None,
            log: RaftLog::new(log),
            commit,
            commit_hint: commit,
            applied: applied.clamp(snapshot_index, commit),
            hard_state_dirty: false,
            commit_dirty: false,
            election_elapsed: 0,
            election_timeout: config.election_ticks,
            heartbeat_elapsed: 0,
            heartbeat_due: false,
            votes: Vec::new(),
            progress: Vec::new(),
            term_start_index: 0,
            commit_at_election: 0,
            transfer: None,
            outbox: Vec::new(),
            held: VecDeque::new(),
            messages_dropped: 0,
            repair,
            leader_commit_seen: 0,
            append_accepted: false,
            config,
        };
        if raft.repair.is_some() && raft.log.meta.membership().voters() == [raft.config.id] {
            // A group of one has no peer to repair from: what recovery kept is all there is.
            raft.repair = None;
            raft.hard_state_dirty = true;
        }
        raft.reset_election_timer();
        raft.check_invariants();
        Ok(raft)
    }

    // ---- Accessors -------------------------------------------------------------------------

    pub fn id(&self) -> NodeId {
        self.config.id
    }

    pub fn config(&self) -> &RaftConfig {
        &self.config
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn term(&self) -> u64 {
        self.term
    }

    pub fn vote(&self) -> Option<NodeId> {
        self.vote
    }

    /// The leader of the current term, if known.
    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }

    pub fn is_leader(&self) -> bool {
        self.role == Role::Leader
    }

    /// The commit index: for a data partition, the high watermark.
    pub fn commit_index(&self) -> u64 {
        self.commit
    }

    /// The last index handed out in [`Ready::committed`] (or covered by a snapshot).
    pub fn applied_index(&self) -> u64 {
        self.applied
    }

    /// The end of the log prefix known to be durable here.
    pub fn persisted_index(&self) -> u64 {
        self.log.persisted_index()
    }

    pub fn last_index(&self) -> u64 {
        self.log.last_index()
    }

    pub fn last_term(&self) -> u64 {
        self.log.last_term()
    }

    /// The log's shape: boundary, terms, memberships.
    pub fn log(&self) -> &LogMeta {
        &self.log.meta
    }

    /// The membership in force (the latest in the log, committed or not).
    pub fn membership(&self) -> &Membership {
        self.log.meta.membership()
    }

    pub fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            vote: self.vote,
            commit: self.commit,
            repair: self.repair.map(|r| r.end),
        }
    }

    /// Whether this replica is repairing data it lost (see "Repair" in the type's docs).
    pub fn is_repairing(&self) -> bool {
        self.repair.is_some()
    }

    /// Leader: what it knows of follower `id`.
    pub fn progress(&self, id: NodeId) -> Option<ProgressView> {
        self.progress_index(id)
            .map(|i| ProgressView::from(&self.progress[i]))
    }

    /// Messages dropped because a queue was full.
    pub fn messages_dropped(&self) -> u64 {
        self.messages_dropped
    }

    /// Messages held until a write is synced.
    pub fn held_messages(&self) -> usize {
        self.held.len()
    }

    /// Whether this replica may campaign: it is a voter of its latest configuration, or of the
    /// one before while the latest (which removes it) is not known to be committed. Without the
    /// second case a leader removing itself could leave the group stuck: cut off before the
    /// change commits, it steps down, and the remaining voters, still in the old configuration,
    /// may need it (its log is the only complete one) to elect anyone.
    pub fn is_promotable(&self) -> bool {
        let meta = &self.log.meta;
        let me = self.config.id;
        // A replica repairing lost entries could win without them (see "Repair").
        if self.repair.is_some() {
            return false;
        }
        meta.membership().contains(me)
            || (meta.membership_index() > self.commit
                && meta.membership_at(meta.membership_index() - 1).contains(me))
    }

    // ---- Inputs ----------------------------------------------------------------------------

    /// One tick of the host's clock. On an idle follower this is a counter increment.
    pub fn tick(&mut self) {
        let before = self.monotonic();
        if self.role == Role::Leader {
            self.tick_leader();
        } else {
            self.election_elapsed = self.election_elapsed.saturating_add(1);
            if self.election_elapsed >= self.election_timeout && self.is_promotable() {
                self.start_pre_vote();
            }
        }
        // A replica that could lead never sits on an expired election timer: that is what
        // makes a group without a leader elect one.
        assert!(
            self.role == Role::Leader
                || self.election_elapsed < self.election_timeout
                || !self.is_promotable(),
            "an expired election timer started no campaign"
        );
        self.check_monotonic(before);
        self.debug_check();
    }

    /// A message from a peer. Malformed or misaddressed messages are dropped.
    pub fn step(&mut self, msg: Message) {
        if msg.to != self.config.id || msg.from == self.config.id {
            return;
        }
        let before = self.monotonic();
        self.step_inner(msg);
        self.check_monotonic(before);
        self.debug_check();
    }

    /// Leader: appends a normal entry occupying `span` indexes (a record batch of `span`
    /// records); returns its first and last index. It is committed once
    /// [`Raft::commit_index`] reaches the last index with the entry still at the term it was
    /// proposed in (`term()` now).
    pub fn propose(&mut self, payload: Bytes, span: u64) -> Result<(u64, u64), ProposeError> {
        self.check_can_append().map_err(|e| match e {
            AppendBlock::NotLeader => ProposeError::NotLeader {
                leader: self.leader,
            },
            AppendBlock::Transfer => ProposeError::TransferInProgress,
            AppendBlock::Full => ProposeError::TooManyUncommitted,
        })?;
        if span == 0 || span > RAFT_ENTRY_SPAN_MAX {
            return Err(ProposeError::BadSpan);
        }
        // The last index is `last_index + span`, which must stay below the limit (no overflow:
        // both terms are below 2^63).
        if self.log.last_index() + span >= RAFT_INDEX_LIMIT {
            return Err(ProposeError::IndexLimit);
        }
        let before = self.monotonic();
        let bounds = self.append_entry(EntryKind::Normal, payload, span);
        // Committing needs the entry durable here first, so it cannot be committed yet.
        assert!(bounds.0 > self.commit, "a new entry is already committed");
        self.check_monotonic(before);
        self.debug_check();
        Ok(bounds)
    }

    /// Leader: appends a single-server membership change; returns its index. The new voter set
    /// is in force at once (on every replica as soon as the entry reaches it). Only one change
    /// may be uncommitted, and only after this leader has committed an entry of its own term.
    pub fn propose_membership_change(
        &mut self,
        change: ConfChange,
    ) -> Result<u64, ConfChangeError> {
        self.check_can_append().map_err(|e| match e {
            AppendBlock::NotLeader => ConfChangeError::NotLeader {
                leader: self.leader,
            },
            AppendBlock::Transfer => ConfChangeError::TransferInProgress,
            AppendBlock::Full => ConfChangeError::TooManyUncommitted,
        })?;
        if self.commit < self.term_start_index || self.log.meta.membership_index() > self.commit {
            return Err(ConfChangeError::Pending);
        }
        // The same rule read from the log rather than from `term_start_index`: the committed
        // entry the change builds on is of this leader's term.
        assert_eq!(
            self.log.meta.term(self.commit),
            Some(self.term),
            "a membership change before the leader committed in its term"
        );
        let before = self.monotonic();
        let membership = self.log.meta.membership().apply(change)?;
        let (index, _) = self.append_entry(EntryKind::Membership, membership.encode(), 1);
        // The new voter set is in force at once, on the leader as on every follower.
        assert_eq!(
            self.log.meta.membership_index(),
            index,
            "the change is not the configuration in force"
        );
        debug_assert_eq!(
            self.log.meta.membership(),
            &membership,
            "the new voter set does not read back from the log"
        );
        match change {
            ConfChange::AddVoter(id) if id != self.config.id => {
                // Probe from the change itself: the new voter learns of it first.
                let mut progress = Progress::new(id, index, self.config.inflight_appends_max);
                // A new voter counts as alive for its first check-quorum round.
                progress.recent_active = true;
                let at = self.progress.partition_point(|p| p.id < id);
                self.progress.insert(at, progress);
            }
            ConfChange::AddVoter(_) => {}
            ConfChange::RemoveVoter(id) => self.progress.retain(|p| p.id != id),
        }
        // The quorum changed; so may the commit index.
        self.maybe_commit();
        self.check_monotonic(before);
        self.debug_check();
        Ok(index)
    }

    /// Leader: hands leadership to voter `to` once it has the whole log (it is sent
    /// `TimeoutNow`). Proposals are refused meanwhile; the attempt ends after an election
    /// timeout.
    pub fn transfer_leadership(&mut self, to: NodeId) -> Result<(), TransferError> {
        if self.role != Role::Leader {
            return Err(TransferError::NotLeader {
                leader: self.leader,
            });
        }
        if to == self.config.id {
            return Ok(());
        }
        if !self.log.meta.membership().contains(to) {
            return Err(TransferError::NotVoter);
        }
        // Progress tracks exactly the other voters, so the target's catching up can be seen.
        assert!(
            self.progress_index(to).is_some(),
            "a transfer target without progress"
        );
        self.transfer = Some(Transfer {
            to,
            elapsed_ticks: 0,
            timeout_now_sent: false,
        });
        self.maybe_send_timeout_now();
        self.debug_check();
        Ok(())
    }

    /// Starts an election now. Unforced, it is what an election timeout does (pre-vote first,
    /// so it fails without disruption if a leader is alive). Forced, it skips pre-vote and
    /// asks voters to ignore their leader lease, as a leadership transfer does: use it for an
    /// operator's "elect this replica" and in tests, never on a timer.
    pub fn campaign(&mut self, force: bool) {
        if self.role == Role::Leader || !self.is_promotable() {
            return;
        }
        let before = self.monotonic();
        if force {
            self.start_election(true);
        } else {
            self.start_pre_vote();
        }
        // Not a leader yet, even alone: its own vote counts only once it is durable.
        assert!(
            matches!(self.role, Role::PreCandidate | Role::Candidate),
            "a campaign left the replica {:?}",
            self.role
        );
        self.check_monotonic(before);
        self.debug_check();
    }

    /// The host dropped the log prefix up to `index` (retention or compaction); `index` must be
    /// applied and the last index of an entry (retention drops whole batches). Returns the new
    /// boundary, which the host stores with its snapshot. Followers that need dropped entries
    /// are sent a snapshot ([`EntrySource::snapshot_data`]).
    pub fn compact(&mut self, index: u64) -> Result<SnapshotMeta, CompactError> {
        if index > self.applied {
            return Err(CompactError::NotApplied {
                applied: self.applied,
            });
        }
        // Only refutable where the cache covers `index`; elsewhere the host's word is taken.
        if index > self.log.meta.snapshot().index && self.log.is_end(index) == Some(false) {
            return Err(CompactError::NotEntryEnd);
        }
        if index > self.log.meta.snapshot().index {
            self.log.compact_to(index);
        }
        // The log start covers what the host dropped, and never more than was applied.
        let boundary = self.log.meta.snapshot().index;
        assert!(
            boundary >= index && boundary <= self.applied,
            "the log start is not where the host compacted"
        );
        self.debug_check();
        Ok(self.log.meta.snapshot().clone())
    }

    /// Write `seq` (and every earlier one) is synced. Releases the messages that waited for it
    /// and may advance the commit index.
    pub fn on_persisted(&mut self, seq: u64) {
        let before = self.monotonic();
        if !self.log.on_persisted(seq) {
            return;
        }
        let mut released = 0;
        while self.held.front().is_some_and(|(need, _)| *need <= seq) {
            let (need, msg) = self.held.pop_front().expect("non-empty");
            // A message leaves only after every write before the one it waited for: an
            // acknowledgement never overtakes the vote it depends on.
            assert!(
                need >= released,
                "held messages released out of write order"
            );
            released = need;
            if msg.to == self.config.id {
                self.step_inner(msg);
            } else {
                self.push_outbox(msg);
            }
        }
        if self.role == Role::Leader {
            self.maybe_commit();
        } else {
            self.advance_follower_commit();
        }
        self.check_monotonic(before);
        self.debug_check();
    }

    // ---- Outputs ---------------------------------------------------------------------------

    /// Whether [`Raft::ready`] has anything to hand out. Cheap; a host with many groups calls it
    /// after each input.
    pub fn has_ready(&self) -> bool {
        !self.outbox.is_empty()
            || self.pending_write()
            || self.applied < self.commit
            || (self.role == Role::Leader
                && (self.heartbeat_due || (0..self.progress.len()).any(|i| self.has_work_for(i))))
    }

    /// Hands out everything there is to do: a storage write, messages, committed entries.
    /// Entries no longer cached are read through `source`.
    pub fn ready(&mut self, source: &impl EntrySource) -> Ready {
        let before = self.monotonic();
        if self.role == Role::Leader {
            self.send_leader_messages(source);
        }
        let mut ready = Ready::default();
        if self.pending_write() {
            let seq = self.log.seq_issued + 1;
            let parts = self.log.take_write(seq);
            let hard_state =
                (self.hard_state_dirty || self.commit_dirty).then(|| self.hard_state());
            self.hard_state_dirty = false;
            self.commit_dirty = false;
            ready.write = Some(Write {
                seq,
                hard_state,
                snapshot: parts.snapshot.map(|s| *s),
                truncate_from: parts.truncate_from,
                entries: parts.entries,
            });
            // One write takes everything pending, so messages held for it wait for no later one.
            assert!(!self.pending_write(), "a write left work pending");
        }
        ready.messages = std::mem::take(&mut self.outbox);
        if self.applied < self.commit && !self.config.apply_entries {
            self.applied = self.commit;
        }
        if self.applied < self.commit {
            self.log.read(
                self.applied + 1,
                self.commit,
                usize::MAX,
                self.config.apply_bytes_max,
                source,
                &mut ready.committed,
            );
            if let Some(e) = ready.committed.last() {
                self.applied = e.last;
            }
        }
        self.evict_cache();
        if self.held.is_empty() && self.held.capacity() > 0 {
            // An idle group holds no buffer.
            self.held = VecDeque::new();
        }
        assert!(
            self.applied <= self.commit,
            "applied beyond the commit index"
        );
        // Writes are numbered in the order they are handed out; the host syncs them in it.
        assert_eq!(
            self.log.seq_issued,
            before.seq_issued + u64::from(ready.write.is_some()),
            "writes handed out out of sequence"
        );
        self.check_monotonic(before);
        self.debug_check();
        ready
    }

    // ---- Elections -------------------------------------------------------------------------

    fn reset_election_timer(&mut self) {
        self.election_elapsed = 0;
        let t = u64::from(self.config.election_ticks);
        self.election_timeout = self.rng.between(t, 2 * t - 1) as u32;
    }

    /// Heard from a leader within the minimum election timeout: vote requests are ignored.
    fn in_lease(&self) -> bool {
        self.leader.is_some() && self.election_elapsed < self.config.election_ticks
    }

    fn start_pre_vote(&mut self) {
        assert_ne!(self.role, Role::Leader, "a leader campaigns");
        assert!(
            self.is_promotable(),
            "a replica that may not lead campaigns"
        );
        self.role = Role::PreCandidate;
        self.leader = None;
        self.transfer = None;
        self.reset_election_timer();
        self.votes.clear();
        let body = MessageBody::PreVote {
            last_index: self.log.last_index(),
            last_term: self.log.last_term(),
        };
        self.send_to_voters(self.term + 1, body, false);
        self.record_vote(self.config.id, true);
    }

    fn start_election(&mut self, transfer: bool) {
        assert_ne!(self.role, Role::Leader, "a leader starts an election");
        self.term += 1;
        self.vote = Some(self.config.id);
        self.hard_state_dirty = true;
        self.role = Role::Candidate;
        self.leader = None;
        self.transfer = None;
        self.reset_election_timer();
        self.votes.clear();
        let body = MessageBody::Vote {
            last_index: self.log.last_index(),
            last_term: self.log.last_term(),
            transfer,
        };
        self.send_to_voters(self.term, body, true);
        // Our own vote counts only once it is durable, like anyone else's.
        self.send_durable(self.config.id, MessageBody::VoteResponse { granted: true });
    }

    fn send_to_voters(&mut self, term: u64, body: MessageBody, durable: bool) {
        // A durable message always speaks for the current term (`send_durable` stamps it).
        assert!(
            !durable || term == self.term,
            "a durable message for another term"
        );
        let me = self.config.id;
        let voters: [Option<NodeId>; RAFT_VOTERS_MAX] = {
            let mut out = [None; RAFT_VOTERS_MAX];
            for (slot, v) in out.iter_mut().zip(self.log.meta.membership().voters()) {
                *slot = Some(*v);
            }
            out
        };
        for to in voters.into_iter().flatten().filter(|v| *v != me) {
            if durable {
                self.send_durable(to, body.clone());
            } else {
                self.send_now(to, term, body.clone());
            }
        }
    }

    fn handle_vote_request(&mut self, from: NodeId, term: u64, pre: bool, last: (u64, u64)) {
        // `step_inner` dropped stale requests and adopted the term of a real one.
        assert!(
            term >= self.term && (pre || term == self.term),
            "a vote request of another term"
        );
        let (last_index, last_term) = last;
        let up_to_date = (last_term, last_index) >= (self.log.last_term(), self.log.last_index())
            || self.config.planted.is(Bug::VoteIgnoresLog);
        let free = self.vote == Some(from) || (self.vote.is_none() && self.leader.is_none());
        // Planted: a follower that voted for another candidate in this term (and knows no
        // leader) grants this one too.
        let twice = !pre
            && self.config.planted.is(Bug::VoteTwice)
            && self.role == Role::Follower
            && self.vote.is_some()
            && self.leader.is_none();
        // A replica repairing lost entries judges "up to date" against a log that is missing
        // some: it grants nothing until the repair ends (see "Repair").
        let granted =
            up_to_date && (free || twice || (pre && term > self.term)) && self.repair.is_none();
        if pre {
            // A grant echoes the term asked for, so the pre-candidate can tell rounds apart.
            let term = if granted { term } else { self.term };
            self.send_now(from, term, MessageBody::PreVoteResponse { granted });
        } else if granted {
            // A leader or candidate has voted for itself in this term, so it is never free.
            assert!(
                !matches!(self.role, Role::Leader | Role::Candidate),
                "a {:?} voted for another replica in its own term",
                self.role
            );
            // A second grant (planted) leaves the first vote recorded.
            if free {
                self.vote = Some(from);
                self.hard_state_dirty = true;
            }
            self.election_elapsed = 0;
            self.send_durable(from, MessageBody::VoteResponse { granted: true });
        } else {
            self.send_now(
                from,
                self.term,
                MessageBody::VoteResponse { granted: false },
            );
        }
    }

    fn record_vote(&mut self, from: NodeId, granted: bool) {
        assert!(
            matches!(self.role, Role::PreCandidate | Role::Candidate),
            "votes counted outside a campaign"
        );
        let membership = self.log.meta.membership();
        if !membership.contains(from) || self.votes.iter().any(|v| v.0 == from) {
            return;
        }
        let (quorum, voters) = (membership.quorum(), membership.len());
        self.votes.push((from, granted));
        // One answer per voter: a quorum of answers is a quorum of replicas.
        assert!(self.votes.len() <= voters, "more answers than voters");
        let yes = self.votes.iter().filter(|v| v.1).count();
        let no = self.votes.len() - yes;
        if yes >= quorum {
            match self.role {
                Role::PreCandidate => self.start_election(false),
                Role::Candidate => self.become_leader(),
                Role::Follower | Role::Leader => {
                    unreachable!("votes are only counted by candidates")
                }
            }
        } else if no > voters - quorum {
            self.become_follower(self.term, None);
        }
    }

    fn become_follower(&mut self, term: u64, leader: Option<NodeId>) {
        assert!(term >= self.term);
        assert_ne!(leader, Some(self.config.id), "a follower of itself");
        if term > self.term {
            self.term = term;
            self.vote = None;
            self.hard_state_dirty = true;
            self.leader_commit_seen = 0;
            self.append_accepted = false;
        }
        self.role = Role::Follower;
        self.leader = leader;
        self.transfer = None;
        self.heartbeat_due = false;
        self.reset_election_timer();
        // Free what only leaders and candidates use: an idle follower holds no buffers.
        self.progress = Vec::new();
        self.votes = Vec::new();
    }

    /// A leader of the current term spoke: follow it, and restart the election timer.
    fn follow(&mut self, leader: NodeId) {
        // Callers check: a leader hears no other leader of its own term.
        assert_ne!(self.role, Role::Leader, "a leader follows another");
        if self.role != Role::Follower {
            self.become_follower(self.term, Some(leader));
        }
        self.leader = Some(leader);
        self.election_elapsed = 0;
    }

    fn become_leader(&mut self) {
        assert_eq!(self.role, Role::Candidate);
        assert_eq!(
            self.vote,
            Some(self.config.id),
            "a candidate voted for itself"
        );
        self.role = Role::Leader;
        self.leader = Some(self.config.id);
        self.votes = Vec::new();
        self.transfer = None;
        self.heartbeat_elapsed = 0;
        self.election_elapsed = 0;
        let next = self.log.last_index() + 1;
        let me = self.config.id;
        let window = self.config.inflight_appends_max;
        let voters = self.log.meta.membership().voters();
        let followers = voters.iter().filter(|v| **v != me).count();
        let mut progress = Vec::with_capacity(followers);
        progress.extend(
            voters
                .iter()
                .filter(|v| **v != me)
                .map(|v| Progress::new(*v, next, window)),
        );
        self.progress = progress;
        self.term_start_index = self.append_entry(EntryKind::Empty, Bytes::new(), 1).0;
        self.commit_at_election = self.commit;
        // The term's first entry follows the log this replica was elected with, above anything
        // committed: it is the entry whose commit lets the earlier ones commit (Raft §5.4.2).
        assert_eq!(
            self.term_start_index, next,
            "the term does not start right after the elected log"
        );
        assert!(
            self.commit < self.term_start_index,
            "the term's first entry was committed at election"
        );
    }

    // ---- Messages --------------------------------------------------------------------------

    fn step_inner(&mut self, msg: Message) {
        use MessageBody::*;
        let Message {
            from,
            to: _,
            term,
            body,
        } = msg;
        if let PreVote { .. } | Vote { .. } = body {
            let transfer = matches!(body, Vote { transfer: true, .. });
            // While a leader is known to be alive, nobody may start a new term: this is what
            // keeps a partitioned or removed replica from disrupting the group.
            if term > self.term && !transfer && self.in_lease() {
                return;
            }
        }
        if term > self.term {
            match body {
                // Asks about a future term; changes nothing here.
                PreVote { .. } => {}
                // Echoes the term we asked about; checked below.
                PreVoteResponse { granted: true } => {}
                Append { .. } | Heartbeat { .. } | InstallSnapshot { .. } => {
                    self.become_follower(term, Some(from))
                }
                _ => self.become_follower(term, None),
            }
        } else if term < self.term {
            match body {
                // A stale leader (or pre-candidate) learns the newer term from the answer and
                // steps down. Without this a replica that moved to a higher term while cut off
                // could never rejoin: check-quorum and the lease keep it from forcing the term up.
                Append { .. } | Heartbeat { .. } | InstallSnapshot { .. } => {
                    self.send_now(from, self.term, HeartbeatResponse)
                }
                PreVote { .. } => {
                    self.send_now(from, self.term, PreVoteResponse { granted: false })
                }
                _ => {}
            }
            return;
        }
        // From here on the message is of the current term, except a pre-vote question or
        // grant, which speak of the next one and change no term.
        assert!(
            term == self.term
                || (term > self.term
                    && matches!(body, PreVote { .. } | PreVoteResponse { granted: true })),
            "a message of another term past the term check"
        );
        match body {
            PreVote {
                last_index,
                last_term,
            } => self.handle_vote_request(from, term, true, (last_index, last_term)),
            Vote {
                last_index,
                last_term,
                ..
            } => self.handle_vote_request(from, term, false, (last_index, last_term)),
            PreVoteResponse { granted } => {
                let asked = self.term + 1;
                let current_round = if granted {
                    term == asked
                } else {
                    term == self.term
                };
                if self.role == Role::PreCandidate && current_round {
                    self.record_vote(from, granted);
                }
            }
            VoteResponse { granted } => {
                if self.role == Role::Candidate {
                    self.record_vote(from, granted);
                }
            }
            Append {
                prev_index,
                prev_term,
                entries,
                commit,
                repair_seen,
            } => {
                if self.role != Role::Leader {
                    self.follow(from);
                    let append = (prev_index, prev_term, entries, commit, repair_seen);
                    self.handle_append(from, term, append);
                }
            }
            Heartbeat { commit } => {
                if self.role != Role::Leader {
                    self.follow(from);
                    let known = commit.min(self.log.last_index());
                    self.commit_hint = self.commit_hint.max(known);
                    self.advance_follower_commit();
                    self.send_now(from, self.term, HeartbeatResponse);
                    if self.repair.is_some() && !self.append_accepted {
                        // A leader with nothing new to send only heartbeats, and may still count
                        // what this replica lost: tell it, so it probes and repairs us now.
                        let body = MessageBody::AppendRejected {
                            prev_index: self.log.last_index() + 1,
                            hint_index: self.log.last_index(),
                            hint_term: self.log.last_term(),
                            hint_is_end: true,
                            lost_data: self.repair.map(|r| r.id.get()),
                        };
                        self.send_now(from, self.term, body);
                    }
                }
            }
            InstallSnapshot {
                snapshot,
                repair_seen,
            } => {
                if self.role != Role::Leader {
                    self.follow(from);
                    self.handle_snapshot(from, term, snapshot, repair_seen);
                }
            }
            TimeoutNow => {
                if self.role == Role::Follower && self.leader == Some(from) && self.is_promotable()
                {
                    self.start_election(true);
                }
            }
            AppendAccepted {
                match_index,
                repair_seen,
            } => self.handle_accepted(from, match_index, repair_seen),
            AppendRejected {
                prev_index,
                hint_index,
                hint_term,
                hint_is_end,
                lost_data,
            } => self.handle_rejected(
                from,
                prev_index,
                (hint_index, hint_term, hint_is_end),
                lost_data,
            ),
            HeartbeatResponse => self.handle_heartbeat_response(from),
        }
    }

    /// Whether an append from a leader at `term` is well formed: whole entries with valid bounds
    /// ([`Entry::bounds_are_valid`]: a span of 1 to `RAFT_ENTRY_SPAN_MAX` indexes, exactly 1 for
    /// control entries, below `RAFT_INDEX_LIMIT`), each starting right after the one before and
    /// the first right after `prev_index`, terms that never decrease and never exceed the
    /// leader's, decodable membership payloads.
    fn append_is_valid(term: u64, prev_index: u64, prev_term: u64, entries: &[Entry]) -> bool {
        // Indexes are Kafka offsets: they stay below i64::MAX, so `+ 1` never overflows.
        if prev_term > term || prev_index >= RAFT_INDEX_LIMIT {
            return false;
        }
        let mut next = prev_index + 1;
        let mut last_term = prev_term.max(1);
        for e in entries {
            if e.index != next || !e.bounds_are_valid() || e.term < last_term || e.term > term {
                return false;
            }
            if e.kind == EntryKind::Membership && Membership::decode(&e.payload).is_none() {
                return false;
            }
            next = e.last + 1;
            last_term = e.term;
        }
        true
    }

    /// `append` is the message's `(prev_index, prev_term, entries, commit, repair_seen)`.
    fn handle_append(&mut self, from: NodeId, term: u64, append: (u64, u64, Vec<Entry>, u64, u64)) {
        let (mut prev_index, mut prev_term, mut entries, commit, repair_seen) = append;
        if !Self::append_is_valid(term, prev_index, prev_term, &entries) {
            return;
        }
        // `step_inner` made us a follower of `from` in `term`.
        assert_eq!(
            (self.role, self.leader, self.term),
            (Role::Follower, Some(from), term),
            "an append handled outside following its leader's term"
        );
        let snapshot = self.log.meta.snapshot();
        let (snapshot_index, snapshot_term) = (snapshot.index, snapshot.term);
        if prev_index < snapshot_index {
            // Entries up to the snapshot boundary are committed, hence the same as ours: one of
            // those sent, if they reach that far, ends exactly at the boundary, with its term.
            let below = entries.partition_point(|e| e.last < snapshot_index);
            match entries.get(below) {
                None => {
                    self.send_durable(
                        from,
                        MessageBody::AppendAccepted {
                            match_index: snapshot_index,
                            repair_seen,
                        },
                    );
                    return;
                }
                Some(e) if e.last != snapshot_index || e.term != snapshot_term => {
                    // Impossible from a correct leader; peer input never panics a replica.
                    self.messages_dropped += 1;
                    return;
                }
                Some(_) => {}
            }
            prev_index = snapshot_index;
            prev_term = snapshot_term;
            entries.drain(..=below);
        }
        // Trimmed or not, the entries still follow `prev_index` directly, at or after our start.
        assert!(
            prev_index >= snapshot_index
                && entries.first().is_none_or(|e| e.index == prev_index + 1),
            "the entries do not follow prev_index"
        );
        match self.log.meta.term(prev_index) {
            None => {
                let body = MessageBody::AppendRejected {
                    prev_index,
                    hint_index: self.log.last_index(),
                    hint_term: self.log.last_term(),
                    hint_is_end: true,
                    lost_data: self.repair.map(|r| r.id.get()),
                };
                self.send_now(from, self.term, body);
                return;
            }
            Some(t) if t != prev_term => {
                let hint_index = self
                    .log
                    .meta
                    .find_conflict_by_term(prev_index, prev_term)
                    .unwrap_or(snapshot_index);
                let hint_term = self.log.meta.term(hint_index).expect("hint is in the log");
                let body = MessageBody::AppendRejected {
                    prev_index,
                    hint_index,
                    hint_term,
                    hint_is_end: self.log.is_end(hint_index) == Some(true),
                    lost_data: self.repair.map(|r| r.id.get()),
                };
                self.send_now(from, self.term, body);
                return;
            }
            Some(_) => {}
        }
        // From here on every index compared is an entry end in both logs. `prev_index` ends an
        // entry in the leader's log, and we hold the same term there, so by log matching we hold
        // the same entry there (or it is our snapshot boundary). Likewise each entry below that
        // we already hold with its term is the same entry, ending where the leader's does. So
        // the first conflicting entry starts right after a shared entry end: cutting there cuts
        // between entries in our log too. A leader contradicting that is broken or the message
        // forged; peer input never panics a replica, so such a message is dropped.
        if self.log.is_end(prev_index) == Some(false) {
            self.messages_dropped += 1;
            return;
        }
        let last_new = entries.last().map_or(prev_index, |e| e.last);
        let last = self.log.last_index();
        let mut first_new = entries.len();
        for (i, e) in entries.iter().enumerate() {
            if e.index > last {
                first_new = i;
                break;
            }
            if self.log.meta.term(e.index) == Some(e.term) {
                if e.last > last || self.log.is_end(e.last) == Some(false) {
                    self.messages_dropped += 1;
                    return;
                }
                continue;
            }
            if e.index <= self.commit {
                // A committed entry never changes; a leader that says otherwise is broken
                // (or the message is forged). Peer input never panics a replica: drop it.
                // The cluster checkers catch a committed entry changing anywhere.
                self.messages_dropped += 1;
                return;
            }
            if self.config.planted.is(Bug::NoDivergentTruncation) {
                // Planted: keep the divergent suffix, append nothing, and acknowledge anyway.
                break;
            }
            debug_assert_ne!(self.log.is_end(e.index - 1), Some(false));
            self.log.truncate_from(e.index);
            // Committed entries never change: a cut reaches uncommitted entries only.
            assert!(
                self.commit <= self.log.last_index(),
                "truncation cut into committed entries"
            );
            first_new = i;
            break;
        }
        // Whether they follow matched entries, our last entry or a cut, the new entries start
        // right after the log.
        assert!(
            entries
                .get(first_new)
                .is_none_or(|e| e.index == self.log.last_index() + 1),
            "new entries do not start after the log"
        );
        for e in entries.drain(first_new..) {
            self.log.append(e);
        }
        // The acknowledgement speaks for the log: it holds every index acknowledged, and the
        // acknowledged index ends an entry (the leader resumes after it).
        assert!(
            last_new <= self.log.last_index(),
            "acknowledging entries the log does not hold"
        );
        debug_assert_ne!(
            self.log.is_end(last_new),
            Some(false),
            "acknowledging up to the middle of an entry"
        );
        self.commit_hint = self.commit_hint.max(commit.min(last_new));
        // While repairing, only an append sent after the leader heard this repair's `lost_data`
        // may end it.
        if self.repair.is_none_or(|r| r.id.get() == repair_seen) {
            self.leader_commit_seen = self.leader_commit_seen.max(commit);
            self.append_accepted = true;
        }
        self.advance_follower_commit();
        self.send_durable(
            from,
            MessageBody::AppendAccepted {
                match_index: last_new,
                repair_seen,
            },
        );
    }

    fn handle_snapshot(&mut self, from: NodeId, term: u64, snapshot: Snapshot, repair_seen: u64) {
        assert_eq!(
            (self.role, self.term),
            (Role::Follower, term),
            "a snapshot handled outside following its leader's term"
        );
        let meta = &snapshot.meta;
        if meta.term > term
            || meta.membership.len() > RAFT_VOTERS_MAX
            || meta.index >= RAFT_INDEX_LIMIT
        {
            self.messages_dropped += 1;
            return;
        }
        if meta.index <= self.commit {
            self.send_durable(
                from,
                MessageBody::AppendAccepted {
                    match_index: self.commit,
                    repair_seen,
                },
            );
            return;
        }
        if self.log.meta.term(meta.index) == Some(meta.term) {
            // We hold the snapshot's last entry, hence everything before it.
            let index = meta.index;
            self.commit_hint = self.commit_hint.max(index);
            self.advance_follower_commit();
            self.send_durable(
                from,
                MessageBody::AppendAccepted {
                    match_index: index,
                    repair_seen,
                },
            );
            return;
        }
        let index = meta.index;
        self.log.install_snapshot(snapshot);
        self.set_commit(index);
        self.commit_hint = self.commit_hint.max(index);
        // The host installs the snapshot (from the write) before applying anything after it.
        // It lies above the commit index, so applying it never goes back.
        assert!(self.applied <= index, "a snapshot rewinds what was applied");
        self.applied = index;
        self.send_durable(
            from,
            MessageBody::AppendAccepted {
                match_index: index,
                repair_seen,
            },
        );
    }

    // ---- Leader ----------------------------------------------------------------------------

    fn tick_leader(&mut self) {
        assert_eq!(self.role, Role::Leader);
        self.heartbeat_elapsed += 1;
        self.election_elapsed += 1;
        if let Some(transfer) = &mut self.transfer {
            transfer.elapsed_ticks += 1;
            if transfer.elapsed_ticks >= self.config.election_ticks {
                self.transfer = None;
            }
        }
        if self.election_elapsed >= self.config.election_ticks {
            self.election_elapsed = 0;
            if !self.quorum_recently_active() {
                // Check-quorum: a leader cut off from a majority stops acting as one.
                self.become_follower(self.term, None);
                return;
            }
        }
        if self.heartbeat_elapsed >= self.config.heartbeat_ticks {
            self.heartbeat_elapsed = 0;
            self.heartbeat_due = true;
        }
    }

    /// Whether a majority (counting this leader if it is a voter) was heard from since the last
    /// call; starts the next round.
    fn quorum_recently_active(&mut self) -> bool {
        let membership = self.log.meta.membership();
        let mut active = usize::from(membership.contains(self.config.id));
        for p in self.progress.iter_mut() {
            active += usize::from(p.recent_active);
            p.recent_active = false;
        }
        // Progress tracks the other voters only: a removed replica keeps no one in power.
        assert!(
            active <= self.log.meta.membership().len(),
            "more replicas active than voters"
        );
        active >= self.log.meta.membership().quorum()
    }

    fn progress_index(&self, id: NodeId) -> Option<usize> {
        self.progress.binary_search_by_key(&id, |p| p.id).ok()
    }

    fn check_can_append(&self) -> Result<(), AppendBlock> {
        if self.role != Role::Leader {
            return Err(AppendBlock::NotLeader);
        }
        if self.transfer.is_some() {
            return Err(AppendBlock::Transfer);
        }
        // Entries, not indexes: one batch may span many indexes. The cache holds every entry
        // this leader appended until it is applied; uncommitted entries of earlier terms from
        // before a restart are not counted (they are few, and reading storage to count them is
        // not worth it).
        if self.log.cached_entries_after(self.commit) >= self.config.uncommitted_entries_max {
            return Err(AppendBlock::Full);
        }
        Ok(())
    }

    /// Appends an entry of `span` indexes (checked by the caller); returns its bounds.
    fn append_entry(&mut self, kind: EntryKind, payload: Bytes, span: u64) -> (u64, u64) {
        assert_eq!(self.role, Role::Leader);
        assert!(span >= 1);
        // Only the leader of a term creates its entries: log matching rests on it.
        assert_eq!(
            self.leader,
            Some(self.config.id),
            "appending without leading the term"
        );
        let index = self.log.last_index() + 1;
        let last = index + span - 1;
        self.log.append(Entry {
            index,
            last,
            term: self.term,
            kind,
            payload,
        });
        assert_eq!(
            (self.log.last_index(), self.log.last_term()),
            (last, self.term),
            "the new entry does not end the log in the leader's term"
        );
        (index, last)
    }

    /// Commits the largest index a quorum of the current voters holds durably, if this leader
    /// wrote it (Raft §5.4.2: counting replicas never commits an earlier term's entry).
    fn maybe_commit(&mut self) {
        assert_eq!(
            self.role,
            Role::Leader,
            "a follower counts acknowledgements"
        );
        let membership = self.log.meta.membership();
        let mut matched = [0u64; RAFT_VOTERS_MAX];
        for (slot, voter) in matched.iter_mut().zip(membership.voters()) {
            *slot = if *voter == self.config.id {
                self.log.persisted_index()
            } else {
                self.progress_index(*voter)
                    .map_or(0, |i| self.progress[i].match_index)
            };
        }
        let n = membership.len();
        let quorum = membership.quorum();
        // A leader was elected by voters, and the last voter is never removed.
        assert!(quorum <= n, "a leader's configuration has no voters");
        matched[..n].sort_unstable_by(|a, b| b.cmp(a));
        // Never beyond what this leader holds durably itself: the commit index is the
        // partition's high watermark, and the leader serves reads below it from synced data.
        // Match indexes and the persisted index are entry ends, so the commit index is one too.
        let index = matched[quorum - 1].min(self.log.persisted_index());
        let own_term = self.log.meta.term(index) == Some(self.term)
            || self.config.planted.is(Bug::CommitOldTerm);
        if index > self.commit && own_term {
            self.set_commit(index);
            let membership = self.log.meta.membership();
            if !membership.contains(self.config.id)
                && self.commit >= self.log.meta.membership_index()
            {
                // Our removal is committed: hand over to the most up-to-date voter at once
                // (instead of leaving the group leaderless for an election timeout), then stop.
                if let Some(best) = self.progress.iter().max_by_key(|p| p.match_index) {
                    let to = best.id;
                    self.send_now(to, self.term, MessageBody::TimeoutNow);
                }
                self.become_follower(self.term, None);
            }
        }
    }

    fn set_commit(&mut self, index: u64) {
        assert!(index >= self.commit, "commit index moved backwards");
        // The commit index is the high watermark: reads below it are served from synced data.
        assert!(
            index
                <= self
                    .log
                    .persisted_index()
                    .max(self.log.meta.snapshot().index),
            "committing beyond the durable log"
        );
        self.commit = index;
        self.commit_dirty = true;
    }

    fn advance_follower_commit(&mut self) {
        assert_ne!(
            self.role,
            Role::Leader,
            "a leader commits by counting replicas"
        );
        let durable = self.commit_hint.min(self.log.persisted_index());
        if durable > self.commit {
            self.set_commit(durable);
        }
        self.maybe_end_repair();
    }

    /// Ends a repair once this replica durably holds its leader's log up to the commit index of
    /// an append it accepted, that index is an entry of the leader's own term, and it reaches
    /// what recovery knows the replica held before the damage. The leader holds every committed
    /// entry (Leader Completeness), and an entry of its term commits only with everything before
    /// it, so this replica then holds every entry that was ever committed, including any that
    /// counted its lost acknowledgements (see `leader_commit_seen`).
    fn maybe_end_repair(&mut self) {
        let Some(Repair { end, .. }) = self.repair else {
            return;
        };
        let caught_up = self.role == Role::Follower
            && self.leader.is_some()
            && self.leader_commit_seen > 0
            && self.commit >= self.leader_commit_seen
            && self.commit >= end
            && self.log.meta.term(self.commit) == Some(self.term);
        if caught_up {
            self.repair = None;
            self.hard_state_dirty = true;
        }
    }

    fn handle_accepted(&mut self, from: NodeId, match_index: u64, repair_seen: u64) {
        if self.role != Role::Leader || match_index > self.log.last_index() {
            return;
        }
        let Some(i) = self.progress_index(from) else {
            return;
        };
        if repair_seen != self.progress[i].repair_seen {
            // Sent before this leader forgot the follower's match for a repair: it may speak
            // for entries the follower has lost since.
            return;
        }
        self.progress[i].recent_active = true;
        if self.progress[i].on_accepted(match_index) {
            self.maybe_send_timeout_now();
            self.maybe_commit();
        }
    }

    /// `hint` is the rejection's `(hint_index, hint_term, hint_is_end)`.
    fn handle_rejected(
        &mut self,
        from: NodeId,
        prev_index: u64,
        hint: (u64, u64, bool),
        lost_data: Option<u64>,
    ) {
        if self.role != Role::Leader {
            return;
        }
        let Some(i) = self.progress_index(from) else {
            return;
        };
        if let Some(repair) = lost_data {
            // The follower lost entries it may have acknowledged to this leader: its match
            // index no longer holds and must not count toward a commit. Probe from its hint,
            // echoing the repair's id from now on.
            let next = if prev_index == 0 {
                1
            } else {
                self.resume_after_rejection(prev_index, hint).max(1)
            };
            let next = next.min(self.log.last_index() + 1);
            self.progress[i].recent_active = true;
            self.progress[i].forget_match(next, repair.max(1));
            return;
        }
        let pr = &self.progress[i];
        use super::progress::ProgressState::*;
        let answers_last_send = match pr.state {
            Replicate => prev_index > pr.match_index,
            Probe => prev_index.checked_add(1) == Some(pr.next_index),
            Snapshot { .. } => false,
        };
        let pr = &mut self.progress[i];
        pr.recent_active = true;
        // Whatever commit index the rejected append carried was not learned; tell it again.
        pr.commit_sent = 0;
        if !answers_last_send || prev_index == 0 {
            return;
        }
        let next = self.resume_after_rejection(prev_index, hint);
        self.progress[i].become_probe(next.min(prev_index).max(1));
    }

    /// The next index to send a follower that rejected an append after `prev_index`. It skips
    /// back past every index the follower cannot hold (the hint names its last index that might
    /// match ours), to just after an index that ends an entry in this log: the next append's
    /// `prev_index` must be an entry end, or the follower could not tell a match from a
    /// coincidence and a divergent entry could survive half-cut. See "Ranged entries" in
    /// docs/raft.md.
    fn resume_after_rejection(&self, prev_index: u64, hint: (u64, u64, bool)) -> u64 {
        let (hint_index, hint_term, hint_is_end) = hint;
        let Some(j) = self
            .log
            .meta
            .find_conflict_by_term(hint_index.min(prev_index - 1), hint_term)
        else {
            // Below our log start: the next append finds no term there and sends the snapshot.
            return self.log.meta.snapshot().index;
        };
        // Log matching: the follower holds `hint_term` at `hint_index`, where one of its
        // entries ends; if this log holds that term there, it holds the same entry. A hint that
        // claims an end inside an entry this log knows (its cache) is not believed: a correct
        // follower cannot send one, and trusting it would put `next_index` inside an entry.
        let ends_by_hint = j == hint_index
            && hint_is_end
            && self.log.meta.term(j) == Some(hint_term)
            && self.log.is_end(j) != Some(false);
        // Otherwise fall back to the nearest earlier index known to end an entry (the end of
        // the term run before, the snapshot boundary, or a cached entry's end). Entries the
        // follower already holds with the same term are acknowledged without truncation, so
        // this only costs re-sending them.
        let next = if ends_by_hint {
            j + 1
        } else {
            self.log.known_end_at_or_before(j) + 1
        };
        // The search started below `prev_index`: a rejection never moves the follower forward.
        assert!(next <= prev_index, "a rejection moved next_index forward");
        next
    }

    fn handle_heartbeat_response(&mut self, from: NodeId) {
        if self.role != Role::Leader {
            return;
        }
        let Some(i) = self.progress_index(from) else {
            return;
        };
        let resend_after = (self.config.election_ticks / self.config.heartbeat_ticks).max(1);
        let last = self.log.last_index();
        let pr = &mut self.progress[i];
        pr.recent_active = true;
        pr.on_heartbeat_answered(last, resend_after);
    }

    fn maybe_send_timeout_now(&mut self) {
        let Some(transfer) = self.transfer else {
            return;
        };
        if transfer.timeout_now_sent {
            return;
        }
        assert_eq!(self.role, Role::Leader, "a transfer outside leadership");
        let caught_up = self
            .progress_index(transfer.to)
            .is_some_and(|i| self.progress[i].match_index == self.log.last_index());
        if caught_up {
            self.send_now(transfer.to, self.term, MessageBody::TimeoutNow);
            if let Some(t) = &mut self.transfer {
                t.timeout_now_sent = true;
            }
        }
    }

    /// Whether follower `i` has something to be sent now.
    fn has_work_for(&self, i: usize) -> bool {
        let pr = &self.progress[i];
        let sendable =
            !pr.is_paused() && (pr.next_index <= self.log.last_index() || pr.want_empty_append);
        sendable || pr.commit_sent < self.commit.min(pr.match_index)
    }

    fn send_leader_messages(&mut self, source: &impl EntrySource) {
        assert_eq!(self.role, Role::Leader);
        let heartbeat = std::mem::take(&mut self.heartbeat_due);
        for i in 0..self.progress.len() {
            let mut sent = false;
            // Pipelining: keep sending while there are entries and room in the window.
            while self.send_append(i, source) {
                sent = true;
                let pr = &self.progress[i];
                if pr.next_index > self.log.last_index()
                    || pr.state != super::progress::ProgressState::Replicate
                {
                    break;
                }
            }
            let pr = &mut self.progress[i];
            let known = self.commit.min(pr.match_index);
            if heartbeat || (!sent && pr.commit_sent < known) {
                pr.commit_sent = pr.commit_sent.max(known);
                let to = pr.id;
                self.send_now(to, self.term, MessageBody::Heartbeat { commit: known });
            }
        }
    }

    /// Sends follower `i` one append (or the snapshot) if it needs one and may get one now.
    fn send_append(&mut self, i: usize, source: &impl EntrySource) -> bool {
        let last = self.log.last_index();
        let pr = &self.progress[i];
        if pr.is_paused() || (pr.next_index > last && !pr.want_empty_append) {
            return false;
        }
        let next = pr.next_index;
        let prev_index = next - 1;
        let Some(prev_term) = self.log.meta.term(prev_index) else {
            return self.send_snapshot(i, source);
        };
        let mut entries = Vec::new();
        if next <= last {
            let (max_entries, max_bytes) =
                (self.config.append_entries_max, self.config.append_bytes_max);
            if self
                .log
                .read(next, last, max_entries, max_bytes, source, &mut entries)
                == 0
            {
                // Storage did not answer; retry after the next heartbeat.
                self.progress[i].pause_until_heartbeat();
                return false;
            }
        }
        // The append passes the follower's `append_is_valid`: terms from `prev_term` up to this
        // leader's (the log's terms never decrease and never pass the leader's).
        assert!(prev_term <= self.term, "an append from an older term's log");
        debug_assert!(
            entries
                .iter()
                .all(|e| e.term >= prev_term && e.term <= self.term),
            "an append whose terms a follower refuses"
        );
        let commit = self.commit;
        let sent_to = entries.last().map_or(prev_index, |e| e.last);
        let pr = &mut self.progress[i];
        pr.on_sent(entries.last().map(|e| e.last));
        pr.commit_sent = pr.commit_sent.max(commit.min(sent_to));
        let (to, repair_seen) = (pr.id, pr.repair_seen);
        let body = MessageBody::Append {
            prev_index,
            prev_term,
            entries,
            commit,
            repair_seen,
        };
        self.send_now(to, self.term, body);
        true
    }

    fn send_snapshot(&mut self, i: usize, source: &impl EntrySource) -> bool {
        let meta = self.log.meta.snapshot().clone();
        let Some(data) = source.snapshot_data(meta.index) else {
            self.progress[i].pause_until_heartbeat();
            return false;
        };
        let index = meta.index;
        self.progress[i].become_snapshot(index);
        let to = self.progress[i].id;
        let snapshot = Snapshot { meta, data };
        let repair_seen = self.progress[i].repair_seen;
        let body = MessageBody::InstallSnapshot {
            snapshot,
            repair_seen,
        };
        self.send_now(to, self.term, body);
        true
    }

    // ---- Output queues ---------------------------------------------------------------------

    fn pending_write(&self) -> bool {
        self.hard_state_dirty || self.log.has_unwritten()
    }

    fn push_outbox(&mut self, msg: Message) {
        // A replica steps what it says to itself (its own vote); `step` would drop it.
        assert_ne!(msg.to, self.config.id, "a message to self in the outbox");
        if self.outbox.len() >= RAFT_QUEUED_MESSAGES_MAX {
            self.messages_dropped += 1;
            return;
        }
        self.outbox.push(msg);
    }

    fn send_now(&mut self, to: NodeId, term: u64, body: MessageBody) {
        let msg = Message {
            from: self.config.id,
            to,
            term,
            body,
        };
        self.push_outbox(msg);
    }

    /// Sends once everything written or to be written so far is synced: the message speaks
    /// for this replica's current term, vote and log.
    fn send_durable(&mut self, to: NodeId, body: MessageBody) {
        let need = self.log.seq_issued + u64::from(self.pending_write());
        let msg = Message {
            from: self.config.id,
            to,
            term: self.term,
            body,
        };
        if need <= self.log.seq_persisted {
            assert_ne!(to, self.config.id, "a message to self is always held");
            self.push_outbox(msg);
            return;
        }
        // Writes are issued in order, so holding in arrival order holds in write order, which
        // `on_persisted` relies on to release from the front.
        assert!(
            self.held.back().is_none_or(|(n, _)| *n <= need),
            "a message held for an earlier write than the one before it"
        );
        // A newer acknowledgement to the same leader supersedes one still held.
        if let Some((held_need, held)) = self.held.back_mut() {
            if let (
                MessageBody::AppendAccepted {
                    match_index: old, ..
                },
                MessageBody::AppendAccepted {
                    match_index: new, ..
                },
            ) = (&held.body, &msg.body)
            {
                if held.to == msg.to && held.term == msg.term && new >= old {
                    *held_need = need;
                    *held = msg;
                    return;
                }
            }
        }
        if self.held.len() >= RAFT_QUEUED_MESSAGES_MAX {
            self.messages_dropped += 1;
            return;
        }
        self.held.push_back((need, msg));
    }

    fn evict_cache(&mut self) {
        // A leader keeps what some follower still lacks (within the budget); others keep
        // nothing they have applied.
        let keep_from = if self.role == Role::Leader {
            self.progress
                .iter()
                .map(|p| p.match_index + 1)
                .min()
                .unwrap_or(u64::MAX)
        } else {
            u64::MAX
        };
        self.log
            .evict(self.applied, keep_from, self.config.entry_cache_bytes_max);
    }

    // ---- Invariants ------------------------------------------------------------------------

    /// What no input may take back, captured before one for [`Raft::check_monotonic`].
    fn monotonic(&self) -> Monotonic {
        Monotonic {
            term: self.term,
            vote: self.vote,
            commit: self.commit,
            applied: self.applied,
            seq_issued: self.log.seq_issued,
        }
    }

    /// Checks an input against the state before it. These hold whatever peers send: they are
    /// what Raft's safety rests on, so the code must keep them on its own.
    fn check_monotonic(&self, before: Monotonic) {
        assert!(self.term >= before.term, "the term went backwards");
        // One vote per term (election safety): once cast, it stays until the term moves on.
        assert!(
            self.term > before.term || before.vote.is_none() || self.vote == before.vote,
            "voted for {:?}, then {:?}, in term {}",
            before.vote,
            self.vote,
            self.term
        );
        assert!(
            self.commit >= before.commit,
            "the commit index went backwards"
        );
        assert!(
            self.applied >= before.applied,
            "applied entries were taken back"
        );
        // Writes are handed out only by `ready`, one at a time.
        assert!(
            self.log.seq_issued <= before.seq_issued + 1,
            "writes handed out in a batch"
        );
    }

    fn debug_check(&self) {
        if cfg!(any(debug_assertions, madsim)) {
            self.check_invariants();
        }
    }

    pub fn check_invariants(&self) {
        // A replica repairing lost entries never campaigns, so it only ever follows.
        assert!(
            self.repair.is_none() || self.role == Role::Follower,
            "a {:?} in repair mode",
            self.role
        );
        self.log.check_invariants();
        let meta = &self.log.meta;
        let me = self.config.id;
        let snapshot_index = meta.snapshot().index;
        assert!(
            self.term >= meta.last_term(),
            "an entry's term is above ours"
        );
        assert!(self.commit <= meta.last_index(), "committed beyond the log");
        assert!(self.commit >= snapshot_index, "the snapshot is committed");
        assert!(
            self.commit <= self.log.persisted_index().max(snapshot_index),
            "committed entries are durable here"
        );
        assert!(self.applied >= snapshot_index && self.applied <= self.commit);
        // Commit and apply move by whole entries.
        assert_ne!(
            self.log.is_end(self.commit),
            Some(false),
            "commit inside an entry"
        );
        assert_ne!(
            self.log.is_end(self.applied),
            Some(false),
            "applied inside an entry"
        );
        assert!(self.election_timeout >= self.config.election_ticks);
        assert!(self.election_timeout < 2 * self.config.election_ticks);
        match self.role {
            Role::Leader => {
                assert_eq!(self.vote, Some(me), "a leader voted for itself");
                assert_eq!(self.leader, Some(me));
                assert!(self.votes.is_empty());
                let others = meta.membership().voters().iter().filter(|v| **v != me);
                assert!(
                    others.eq(self.progress.iter().map(|p| &p.id)),
                    "progress tracks exactly the other voters"
                );
                for p in &self.progress {
                    p.check_invariants(meta.last_index());
                    // Appends resume after an entry end (or below the log start, which sends
                    // the snapshot), and acknowledgements are of entry ends.
                    assert_ne!(self.log.is_end(p.match_index), Some(false));
                    if p.next_index > snapshot_index {
                        assert_ne!(self.log.is_end(p.next_index - 1), Some(false));
                    }
                }
                if self.term_start_index > snapshot_index {
                    assert_eq!(
                        meta.term(self.term_start_index),
                        Some(self.term),
                        "the leader's first entry is of its term"
                    );
                }
                // A leader never truncates and appends only in its term, after its first entry.
                assert!(
                    self.term_start_index >= 1 && self.term_start_index <= meta.last_index(),
                    "the leader's first entry is not in its log"
                );
                assert_eq!(
                    meta.last_term(),
                    self.term,
                    "a leader's log ends in another term"
                );
                assert!(
                    self.commit >= self.commit_at_election,
                    "a leader's commit index went below its election's"
                );
                // Its timers wrap before they expire (check-quorum, heartbeats).
                assert!(self.election_elapsed < self.config.election_ticks);
                assert!(self.heartbeat_elapsed < self.config.heartbeat_ticks);
                for p in &self.progress {
                    assert!(
                        p.commit_sent <= self.commit,
                        "follower {} told a commit index beyond the leader's",
                        p.id
                    );
                }
                if let Some(transfer) = self.transfer {
                    // Membership changes are refused while a transfer is under way.
                    assert!(
                        self.progress_index(transfer.to).is_some(),
                        "transferring to {}, which is not a follower",
                        transfer.to
                    );
                }
                // Entries of earlier terms commit only with one of the leader's own (Figure 8):
                // the commit index stays where the election left it until it reaches the term's
                // first entry.
                assert!(
                    self.commit == self.commit_at_election || self.commit >= self.term_start_index,
                    "a leader committed entries of an earlier term by counting replicas \
                     (commit {}, elected at {}, its term starts at {})",
                    self.commit,
                    self.commit_at_election,
                    self.term_start_index
                );
            }
            Role::Candidate => {
                assert_eq!(self.vote, Some(me), "a candidate voted for itself");
                assert!(self.progress.is_empty() && self.leader.is_none());
            }
            Role::PreCandidate | Role::Follower => {
                assert!(self.progress.is_empty());
                assert_ne!(self.leader, Some(me));
                assert!(self.transfer.is_none());
                // Hearing from a leader ends a pre-vote; a follower counts no votes.
                assert!(
                    self.role == Role::Follower || self.leader.is_none(),
                    "a pre-candidate that knows a leader"
                );
                assert!(
                    self.role == Role::PreCandidate || self.votes.is_empty(),
                    "a follower holds votes"
                );
            }
        }
        assert!(
            self.role == Role::Leader || !self.heartbeat_due,
            "a heartbeat due outside leadership"
        );
        assert!(self.votes.len() <= RAFT_VOTERS_MAX);
        assert!(self.outbox.len() <= RAFT_QUEUED_MESSAGES_MAX);
        assert!(self.held.len() <= RAFT_QUEUED_MESSAGES_MAX);
        let mut need = self.log.seq_persisted;
        for (n, _) in &self.held {
            assert!(*n > self.log.seq_persisted, "a releasable message is held");
            assert!(*n >= need, "held messages are in write order");
            assert!(*n <= self.log.seq_issued + 1);
            need = *n;
        }
    }
}

/// The part of a replica's state that only moves forward (see [`Raft::check_monotonic`]).
#[derive(Clone, Copy)]
struct Monotonic {
    term: u64,
    vote: Option<NodeId>,
    commit: u64,
    applied: u64,
    seq_issued: u64,
}

/// Why a leader cannot append now.
enum AppendBlock {
    NotLeader,
    Transfer,
    Full,
}
