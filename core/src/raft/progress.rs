//! What a leader knows about one follower: how much of the log it holds, what to send next, and
//! the bounded window of appends in flight.

use super::types::NodeId;
use crate::limits::RAFT_INFLIGHT_APPENDS_MAX;

/// How the leader replicates to a follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressState {
    /// Where the follower's log matches is unknown: one append at a time, each waiting for its
    /// answer (or the next heartbeat answer, if lost).
    Probe,
    /// The follower's log matches up to `match_index`: appends are pipelined, up to the window.
    Replicate,
    /// The follower needs a snapshot at `index`; nothing else is sent until it answers.
    Snapshot { index: u64 },
}

/// The last indexes of the appends in flight, oldest first: a fixed ring, so a group's
/// progress never allocates.
#[derive(Clone, Debug)]
struct Inflights {
    last_indexes: [u64; RAFT_INFLIGHT_APPENDS_MAX],
    start: u8,
    len: u8,
    capacity: u8,
}

impl Inflights {
    fn new(capacity: usize) -> Inflights {
        assert!((1..=RAFT_INFLIGHT_APPENDS_MAX).contains(&capacity));
        Inflights {
            last_indexes: [0; RAFT_INFLIGHT_APPENDS_MAX],
            start: 0,
            len: 0,
            capacity: capacity as u8,
        }
    }

    fn is_full(&self) -> bool {
        self.len == self.capacity
    }

    fn push(&mut self, last_index: u64) {
        assert!(!self.is_full(), "in-flight window overflow");
        // Appends are pipelined in log order, so `free_to` can free from the front.
        assert!(
            self.len == 0 || self.get(self.len as usize - 1) < last_index,
            "in-flight appends out of order"
        );
        let at = (self.start as usize + self.len as usize) % RAFT_INFLIGHT_APPENDS_MAX;
        self.last_indexes[at] = last_index;
        self.len += 1;
        assert_eq!(
            self.get(self.len as usize - 1),
            last_index,
            "the in-flight append reads back"
        );
    }

    fn get(&self, i: usize) -> u64 {
        assert!(i < self.len as usize, "reading a free in-flight slot");
        self.last_indexes[(self.start as usize + i) % RAFT_INFLIGHT_APPENDS_MAX]
    }

    /// Frees every append whose last index is `<= index` (acknowledged).
    fn free_to(&mut self, index: u64) {
        while self.len > 0 && self.get(0) <= index {
            self.free_first();
        }
    }

    fn free_first(&mut self) {
        if self.len > 0 {
            self.start = ((self.start as usize + 1) % RAFT_INFLIGHT_APPENDS_MAX) as u8;
            self.len -= 1;
        }
    }

    fn clear(&mut self) {
        self.start = 0;
        self.len = 0;
    }
}

/// A follower as its leader sees it.
#[derive(Clone, Debug)]
pub(super) struct Progress {
    pub id: NodeId,
    /// The follower's log is known (durably) to match the leader's up to here.
    pub match_index: u64,
    /// The next entry to send. `match_index < next_index`.
    pub next_index: u64,
    pub state: ProgressState,
    /// In probe state: an append is out and unanswered.
    pub probe_sent: bool,
    /// Heard from since the last check-quorum round.
    pub recent_active: bool,
    /// Send an append from `next_index` even if it carries no entries: a heartbeat answer showed
    /// the follower behind, and a lost append in replicate state is only noticed this way.
    pub want_empty_append: bool,
    /// Heartbeat answers received while waiting on a snapshot; enough of them resend it.
    pub snapshot_heartbeats: u32,
    /// The commit index this follower has been told.
    pub commit_sent: u64,
    /// The id of the follower's repair whose `lost_data` this leader acted on (0: none). Every
    /// append echoes it: the follower counts an append toward the end of its repair only when
    /// it does, so an append sent before the leader forgot the follower's match cannot end it.
    pub repair_seen: u64,
    inflight: Inflights,
}

impl Progress {
    pub fn new(id: NodeId, next_index: u64, window: usize) -> Progress {
        assert!(next_index >= 1);
        Progress {
            id,
            match_index: 0,
            next_index,
            state: ProgressState::Probe,
            probe_sent: false,
            recent_active: false,
            want_empty_append: false,
            snapshot_heartbeats: 0,
            commit_sent: 0,
            repair_seen: 0,
            inflight: Inflights::new(window),
        }
    }

    /// Whether nothing may be sent now (the window or the probe is used up).
    pub fn is_paused(&self) -> bool {
        match self.state {
            ProgressState::Probe => self.probe_sent,
            ProgressState::Replicate => self.inflight.is_full(),
            ProgressState::Snapshot { .. } => true,
        }
    }

    pub fn inflight_len(&self) -> usize {
        self.inflight.len as usize
    }

    pub fn become_probe(&mut self, next_index: u64) {
        self.state = ProgressState::Probe;
        self.next_index = next_index.max(self.match_index + 1);
        self.probe_sent = false;
        self.inflight.clear();
    }

    /// The follower lost entries it had acknowledged (recovery found damage on its disk), in
    /// the repair with id `repair`: what it matched no longer holds, so it counts for nothing
    /// until it acknowledges again, and the leader probes from `next_index`.
    pub fn forget_match(&mut self, next_index: u64, repair: u64) {
        assert!(next_index >= 1, "index 0 is never sent");
        assert_ne!(repair, 0, "a repair has an id");
        self.repair_seen = repair;
        self.match_index = 0;
        self.commit_sent = 0;
        self.become_probe(next_index);
    }

    pub fn become_replicate(&mut self) {
        self.state = ProgressState::Replicate;
        self.next_index = self.match_index + 1;
        self.probe_sent = false;
        self.inflight.clear();
    }

    pub fn become_snapshot(&mut self, index: u64) {
        // Only a follower that needs entries at or below the log start gets a snapshot, and
        // it then holds the log up to `index`, beyond anything it matched.
        assert!(
            self.next_index <= index,
            "a snapshot for a follower that needs no dropped entry"
        );
        self.state = ProgressState::Snapshot { index };
        self.snapshot_heartbeats = 0;
        self.probe_sent = false;
        self.inflight.clear();
    }

    /// Storage could not provide what this follower needs: wait for the next heartbeat answer
    /// before trying again (instead of asking on every `ready`).
    pub fn pause_until_heartbeat(&mut self) {
        let next = self.next_index;
        self.become_probe(next);
        self.probe_sent = true;
        self.want_empty_append = false;
    }

    /// An append of entries up to `last_index` was sent (`None`: an append without entries).
    pub fn on_sent(&mut self, last_index: Option<u64>) {
        // Nothing is sent to a paused follower (see `Raft::send_append`).
        assert!(!self.is_paused(), "sent to a paused follower");
        self.want_empty_append = false;
        match self.state {
            ProgressState::Probe => self.probe_sent = true,
            ProgressState::Replicate => {
                if let Some(last) = last_index {
                    // An append carries entries from `next_index` on.
                    assert!(last >= self.next_index, "an append ended before next_index");
                    self.next_index = last + 1;
                    self.inflight.push(last);
                }
            }
            ProgressState::Snapshot { .. } => unreachable!("no appends while snapshotting"),
        }
    }

    /// The follower holds the log up to `index`. Returns whether that is news.
    pub fn on_accepted(&mut self, index: u64) -> bool {
        let news = index > self.match_index;
        if news {
            self.match_index = index;
            self.next_index = self.next_index.max(index + 1);
        }
        match self.state {
            ProgressState::Probe => {
                if index >= self.match_index {
                    self.become_replicate();
                }
            }
            ProgressState::Replicate => self.inflight.free_to(index),
            ProgressState::Snapshot { index: at } => {
                if self.match_index >= at {
                    self.become_probe(self.match_index + 1);
                }
            }
        }
        // Whatever state the acknowledgement moved to, the next append starts after the
        // matched prefix.
        assert!(self.match_index < self.next_index, "match < next");
        news
    }

    /// A heartbeat answer: the follower is alive, so a lost probe or append is retried.
    pub fn on_heartbeat_answered(&mut self, last_index: u64, resend_snapshot_after: u32) {
        assert!(
            resend_snapshot_after >= 1,
            "a snapshot resent on every answer"
        );
        match self.state {
            ProgressState::Probe => {
                self.probe_sent = false;
                if self.match_index < last_index {
                    self.want_empty_append = true;
                }
            }
            ProgressState::Replicate => {
                if self.inflight.is_full() {
                    self.inflight.free_first();
                }
                if self.match_index < last_index {
                    self.want_empty_append = true;
                }
            }
            ProgressState::Snapshot { .. } => {
                self.snapshot_heartbeats += 1;
                if self.snapshot_heartbeats >= resend_snapshot_after {
                    self.become_probe(self.match_index + 1);
                }
            }
        }
    }

    pub fn check_invariants(&self, last_index: u64) {
        assert!(self.match_index < self.next_index, "match < next");
        assert!(
            self.match_index <= last_index,
            "follower {} matched beyond the leader's log",
            self.id
        );
        assert!(self.next_index <= last_index + 1);
        assert!(self.inflight.len <= self.inflight.capacity);
        assert!(self.inflight.capacity as usize <= RAFT_INFLIGHT_APPENDS_MAX);
        let mut prev = self.match_index;
        for i in 0..self.inflight.len as usize {
            let last = self.inflight.get(i);
            assert!(
                last > prev && last < self.next_index,
                "in-flight appends ordered"
            );
            prev = last;
        }
        match self.state {
            ProgressState::Probe => assert_eq!(self.inflight.len, 0),
            ProgressState::Replicate => assert!(!self.probe_sent),
            ProgressState::Snapshot { index } => {
                assert_eq!(self.inflight.len, 0);
                // An acknowledgement of `index` or beyond ends the snapshot state.
                assert!(
                    self.match_index < index,
                    "follower {} still waits for a snapshot it holds",
                    self.id
                );
            }
        }
    }
}

/// A host's view of a follower's progress (for monitoring, or for Kafka's in-sync replicas).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProgressView {
    pub match_index: u64,
    pub next_index: u64,
    pub state: ProgressState,
    pub inflight: usize,
    pub recent_active: bool,
}

impl From<&Progress> for ProgressView {
    fn from(p: &Progress) -> ProgressView {
        ProgressView {
            match_index: p.match_index,
            next_index: p.next_index,
            state: p.state,
            inflight: p.inflight_len(),
            recent_active: p.recent_active,
        }
    }
}
