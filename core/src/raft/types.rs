//! The data Raft exchanges with its host and its peers: entries, hard state, membership,
//! snapshots, messages and the errors of the requests a host can make.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::limits::{RAFT_ENTRY_SPAN_MAX, RAFT_INDEX_LIMIT, RAFT_VOTERS_MAX};
use crate::ErrorCode;

/// A replica's identity within a group. Ids are chosen by the host; 0 is a valid id.
pub type NodeId = u64;

/// What must survive a crash besides the log: the current term, the vote cast in it and (as an
/// optimisation only) the commit index. Term and vote are synced before any message that depends
/// on them leaves (see [`super::Raft::on_persisted`]); the commit index may lag on disk.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HardState {
    pub term: u64,
    pub vote: Option<NodeId>,
    pub commit: u64,
    /// `Some(end)`: the replica lost data it may have acknowledged (recovery found damage) and
    /// has not yet caught up with a leader; `end` is the Raft index it held at most before the
    /// damage, as far as recovery could tell (0 if it could not). Until the repair ends the
    /// replica neither votes nor campaigns (see "Repair" in [`super::Raft`]). Stored, so a crash
    /// in the middle of a repair does not forget it.
    pub repair: Option<u64>,
}

/// What an entry carries.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum EntryKind {
    /// An opaque payload: a record batch for a data partition, metadata records for the
    /// metadata group.
    Normal,
    /// A new voter set, encoded with [`Membership::encode`]. It takes effect on every replica as
    /// soon as it is in the replica's log, committed or not.
    Membership,
    /// The empty entry a new leader appends at the start of its term, so that it can commit
    /// entries of earlier terms (Raft §5.4.2) without waiting for a client.
    Empty,
}

/// One log entry, occupying the indexes `index..=last`. A data partition's record batch with
/// offsets `base..=last_offset` is one entry at `base + 1 ..= last_offset + 1` (index 0 means
/// "nothing", so indexes are offsets plus one), and its `partitionLeaderEpoch` is the term.
/// [`EntryKind::Empty`] and [`EntryKind::Membership`] entries occupy exactly one index.
///
/// `(index, term)` identifies an entry and, by the log matching property, the whole log prefix up
/// to it: only the leader of `term` creates entries of that term, one per index, so two logs
/// holding `term` at any index `i` hold the same entry around `i` (same bounds, same payload)
/// and the same entries before it.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub index: u64,
    /// The entry's last index: `last >= index`.
    pub last: u64,
    pub term: u64,
    pub kind: EntryKind,
    pub payload: Bytes,
}

impl Entry {
    /// The bytes this entry counts for in message and cache budgets.
    pub fn size_bytes(&self) -> u64 {
        // A small fixed overhead, so that many empty entries still count.
        self.payload.len() as u64 + 16
    }

    /// How many indexes the entry occupies (the records of a batch). Callers have checked
    /// `last >= index`.
    pub fn span(&self) -> u64 {
        assert!(self.last >= self.index, "an entry ends before it starts");
        self.last - self.index + 1
    }

    /// Whether the bounds are well formed: `index..=last` within [`RAFT_ENTRY_SPAN_MAX`]
    /// indexes, below [`RAFT_INDEX_LIMIT`] (so `last + 1` never overflows), and exactly one index
    /// for the control kinds. Peer and storage input is checked with this before it is used.
    pub fn bounds_are_valid(&self) -> bool {
        self.index >= 1
            && self.last >= self.index
            && self.last < RAFT_INDEX_LIMIT
            && self.last - self.index < RAFT_ENTRY_SPAN_MAX
            && (self.kind == EntryKind::Normal || self.last == self.index)
    }
}

/// The voter set of a group: sorted, without duplicates, at most [`RAFT_VOTERS_MAX`] ids.
/// An empty set is the configuration of a replica that has not been added to a group yet.
// Deserialized through `Vec<NodeId>` and `TryFrom`, so a peer's bad voter list (unsorted,
// repeated, too long) is refused like `Membership::decode` refuses it, instead of breaking the
// invariants `new` asserts.
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(try_from = "Vec<NodeId>", into = "Vec<NodeId>")
)]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Membership {
    voters: Vec<NodeId>,
}

impl Membership {
    /// A voter set from any list of ids (sorted and deduplicated here).
    ///
    /// # Panics
    /// If there are more than [`RAFT_VOTERS_MAX`] distinct ids: group sizes are configuration,
    /// checked by the host before it creates a group.
    pub fn new(voters: impl IntoIterator<Item = NodeId>) -> Membership {
        let mut voters: Vec<NodeId> = voters.into_iter().collect();
        voters.sort_unstable();
        voters.dedup();
        assert!(voters.len() <= RAFT_VOTERS_MAX, "too many voters");
        Membership { voters }
    }

    pub fn voters(&self) -> &[NodeId] {
        &self.voters
    }

    pub fn contains(&self, id: NodeId) -> bool {
        self.voters.binary_search(&id).is_ok()
    }

    pub fn len(&self) -> usize {
        self.voters.len()
    }

    pub fn is_empty(&self) -> bool {
        self.voters.is_empty()
    }

    /// Votes (or acknowledgements) needed for a decision: a strict majority.
    pub fn quorum(&self) -> usize {
        self.voters.len() / 2 + 1
    }

    /// The voter set after a single-server change, or why the change is not allowed.
    pub fn apply(&self, change: ConfChange) -> Result<Membership, ConfChangeError> {
        let mut voters = self.voters.clone();
        let id = match change {
            ConfChange::AddVoter(id) | ConfChange::RemoveVoter(id) => id,
        };
        match change {
            ConfChange::AddVoter(id) => {
                let Err(at) = voters.binary_search(&id) else {
                    return Err(ConfChangeError::AlreadyVoter);
                };
                if voters.len() == RAFT_VOTERS_MAX {
                    return Err(ConfChangeError::TooManyVoters);
                }
                voters.insert(at, id);
            }
            ConfChange::RemoveVoter(id) => {
                let Ok(at) = voters.binary_search(&id) else {
                    return Err(ConfChangeError::NotVoter);
                };
                if voters.len() == 1 {
                    return Err(ConfChangeError::LastVoter);
                }
                voters.remove(at);
            }
        }
        // A single-server change moves exactly one id in or out, and `binary_search` placed
        // it so that the set stays sorted and unique (what `contains` and `decode` rely on).
        let added = matches!(change, ConfChange::AddVoter(_));
        assert_eq!(
            voters.len(),
            if added {
                self.len() + 1
            } else {
                self.len() - 1
            },
            "a single-server change moves exactly one voter"
        );
        debug_assert!(
            voters.windows(2).all(|w| w[0] < w[1]),
            "voters stay sorted and unique"
        );
        let membership = Membership { voters };
        assert_eq!(
            membership.contains(id),
            added,
            "the changed voter reads back"
        );
        Ok(membership)
    }

    /// The payload of an [`EntryKind::Membership`] entry: a u32 count, then each id as a u64,
    /// all big-endian.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(4 + 8 * self.voters.len());
        out.put_u32(self.voters.len() as u32);
        for id in &self.voters {
            out.put_u64(*id);
        }
        assert_eq!(
            out.len(),
            4 + 8 * self.voters.len(),
            "a count and one u64 per voter"
        );
        let bytes = out.freeze();
        debug_assert_eq!(
            Membership::decode(&bytes).as_ref(),
            Some(self),
            "membership encoding round-trips"
        );
        bytes
    }

    /// Decodes [`Membership::encode`]'s output; `None` for anything else (sorted, unique, at most
    /// [`RAFT_VOTERS_MAX`] ids, no trailing bytes), so a peer's bad payload never panics.
    pub fn decode(mut bytes: &[u8]) -> Option<Membership> {
        if bytes.len() < 4 {
            return None;
        }
        let count = bytes.get_u32() as usize;
        if count > RAFT_VOTERS_MAX || bytes.len() != count * 8 {
            return None;
        }
        let voters: Vec<NodeId> = (0..count).map(|_| bytes.get_u64()).collect();
        if voters.windows(2).any(|w| w[0] >= w[1]) {
            return None;
        }
        // The length check above made the payload exactly `count` ids: nothing is left over.
        assert!(bytes.is_empty(), "membership decoding left bytes unread");
        Some(Membership { voters })
    }
}

#[cfg(feature = "serde")]
impl TryFrom<Vec<NodeId>> for Membership {
    type Error = &'static str;

    fn try_from(voters: Vec<NodeId>) -> Result<Membership, &'static str> {
        if voters.len() > RAFT_VOTERS_MAX {
            return Err("too many voters");
        }
        if voters.windows(2).any(|w| w[0] >= w[1]) {
            return Err("voters not sorted and unique");
        }
        Ok(Membership { voters })
    }
}

#[cfg(feature = "serde")]
impl From<Membership> for Vec<NodeId> {
    fn from(membership: Membership) -> Vec<NodeId> {
        membership.voters
    }
}

/// A single-server membership change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfChange {
    AddVoter(NodeId),
    RemoveVoter(NodeId),
}

/// The log start boundary: everything up to `index` has been dropped from the log (retention,
/// compaction or an installed snapshot), and `term` and `membership` are what the log held there.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotMeta {
    pub index: u64,
    pub term: u64,
    pub membership: Membership,
}

/// A snapshot sent to a follower whose next entry the leader no longer has. `data` is opaque and
/// provided by the host ([`super::EntrySource::snapshot_data`]); for a data partition, whose
/// state is the log itself, it may be empty (the follower simply starts its log after `index`).
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub meta: SnapshotMeta,
    pub data: Bytes,
}

/// A message between two replicas of one group.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub from: NodeId,
    pub to: NodeId,
    /// The sender's term, except in a granted pre-vote response, which echoes the term asked for.
    pub term: u64,
    pub body: MessageBody,
}

#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MessageBody {
    /// "Would you vote for me at `term`?" — asked without changing any state (pre-vote).
    PreVote {
        last_index: u64,
        last_term: u64,
    },
    PreVoteResponse {
        granted: bool,
    },
    /// A real vote request. `transfer` marks an election started by a leadership transfer (or
    /// forced by the host), which replicas grant even if they heard from a leader recently.
    Vote {
        last_index: u64,
        last_term: u64,
        transfer: bool,
    },
    VoteResponse {
        granted: bool,
    },
    /// Entries `prev_index + 1 ..`, to follow the entry `(prev_index, prev_term)`.
    Append {
        prev_index: u64,
        prev_term: u64,
        entries: Vec<Entry>,
        commit: u64,
        /// The id of the follower's repair whose `lost_data` the leader acted on before sending
        /// this (0: none). Only an append that echoes the follower's current repair counts
        /// toward ending it (see "Repair" in [`super::Raft`]).
        repair_seen: u64,
    },
    /// The follower's log now matches the leader's up to `match_index` (durably).
    /// `repair_seen` echoes that of the append or snapshot acknowledged: a leader counts only
    /// acknowledgements sent after it forgot a repairing follower's match (an earlier one, still
    /// in flight, may speak for entries the follower lost since).
    AppendAccepted {
        match_index: u64,
        repair_seen: u64,
    },
    /// The follower does not hold `prev_index` with the term asked for. The hint lets the leader
    /// skip back a whole term at a time: the follower's largest index `<= prev_index` whose term
    /// is `<= prev_term` (or its last index, if that is smaller), with that entry's term.
    /// `hint_is_end` says whether the follower knows `hint_index` to be the last index of an
    /// entry in its log (it does not always: see "Ranged entries" in docs/raft.md).
    AppendRejected {
        prev_index: u64,
        hint_index: u64,
        hint_term: u64,
        hint_is_end: bool,
        /// `Some(id)`: the follower is repairing data it lost, in the repair `id` (see "Repair"
        /// in [`super::Raft`]). The leader must forget what it matched, which may include
        /// entries it no longer holds, and echo `id` in its appends from then on.
        lost_data: Option<u64>,
    },
    /// Leader liveness; `commit` is at most what the follower is known to hold.
    Heartbeat {
        commit: u64,
    },
    HeartbeatResponse,
    /// The leadership transfer target should start an election now.
    TimeoutNow,
    InstallSnapshot {
        snapshot: Snapshot,
        /// As in `Append`.
        repair_seen: u64,
    },
}

/// Why a proposal was not appended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProposeError {
    /// Only the leader appends; `leader` is the replica believed to lead, if known.
    NotLeader { leader: Option<NodeId> },
    /// Leadership is being handed over; retry at the new leader.
    TransferInProgress,
    /// The leader holds `uncommitted_entries_max` entries that are not committed yet: the
    /// followers are behind, so new work waits (back-pressure).
    TooManyUncommitted,
    /// The span is 0 or above [`RAFT_ENTRY_SPAN_MAX`] (a batch's `lastOffsetDelta` is an i32).
    BadSpan,
    /// The entry would end at or beyond [`RAFT_INDEX_LIMIT`] (the largest Kafka offset): the
    /// log can take no more.
    IndexLimit,
}

impl ProposeError {
    /// The Kafka error a produce request gets for this.
    pub fn error_code(&self) -> ErrorCode {
        match self {
            ProposeError::NotLeader { .. } | ProposeError::TransferInProgress => {
                ErrorCode::NotLeaderOrFollower
            }
            ProposeError::TooManyUncommitted => ErrorCode::NotEnoughReplicas,
            ProposeError::BadSpan => ErrorCode::InvalidRecord,
            ProposeError::IndexLimit => ErrorCode::UnknownServerError,
        }
    }
}

/// Why a membership change was not appended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfChangeError {
    NotLeader {
        leader: Option<NodeId>,
    },
    TransferInProgress,
    /// An earlier change is not committed yet, or this leader has not yet committed an entry of
    /// its own term (without that rule single-server changes are unsafe; Ongaro, raft-dev 2015).
    Pending,
    AlreadyVoter,
    NotVoter,
    /// A group keeps at least one voter.
    LastVoter,
    TooManyVoters,
    /// The leader holds `uncommitted_entries_max` uncommitted entries.
    TooManyUncommitted,
}

/// Why a leadership transfer did not start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransferError {
    NotLeader {
        leader: Option<NodeId>,
    },
    /// The target is not a voter of the current configuration.
    NotVoter,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn membership_encoding_round_trips_and_rejects_garbage() {
        let m = Membership::new([5, 1, 3, 3]);
        assert_eq!(m.voters(), &[1, 3, 5]);
        assert_eq!(m.quorum(), 2);
        assert_eq!(Membership::decode(&m.encode()), Some(m.clone()));
        assert_eq!(Membership::decode(&[]), None);
        assert_eq!(Membership::decode(&m.encode()[..10]), None);
        let mut unsorted = BytesMut::new();
        unsorted.put_u32(2);
        unsorted.put_u64(3);
        unsorted.put_u64(1);
        assert_eq!(Membership::decode(&unsorted), None);
        let mut huge = BytesMut::new();
        huge.put_u32(u32::MAX);
        assert_eq!(Membership::decode(&huge), None);
    }

    /// Which variant a body is; the match is exhaustive, so a new variant fails to compile
    /// here until the round-trip test below covers it.
    #[cfg(feature = "serde")]
    fn variant(body: &MessageBody) -> usize {
        match body {
            MessageBody::PreVote { .. } => 0,
            MessageBody::PreVoteResponse { .. } => 1,
            MessageBody::Vote { .. } => 2,
            MessageBody::VoteResponse { .. } => 3,
            MessageBody::Append { .. } => 4,
            MessageBody::AppendAccepted { .. } => 5,
            MessageBody::AppendRejected { .. } => 6,
            MessageBody::Heartbeat { .. } => 7,
            MessageBody::HeartbeatResponse => 8,
            MessageBody::TimeoutNow => 9,
            MessageBody::InstallSnapshot { .. } => 10,
        }
    }

    #[cfg(feature = "serde")]
    #[test]
    fn messages_of_every_variant_round_trip_through_bincode() {
        let entry = |index, last, term, kind, payload: &'static [u8]| Entry {
            index,
            last,
            term,
            kind,
            payload: Bytes::from_static(payload),
        };
        let snapshot = |index, data: &'static [u8]| Snapshot {
            meta: SnapshotMeta {
                index,
                term: 4,
                membership: Membership::new([0, 2, 7]),
            },
            data: Bytes::from_static(data),
        };
        let bodies = vec![
            MessageBody::PreVote {
                last_index: 0,
                last_term: 0,
            },
            MessageBody::PreVote {
                last_index: u64::MAX,
                last_term: 9,
            },
            MessageBody::PreVoteResponse { granted: true },
            MessageBody::PreVoteResponse { granted: false },
            MessageBody::Vote {
                last_index: 17,
                last_term: 3,
                transfer: false,
            },
            MessageBody::Vote {
                last_index: 1,
                last_term: 1,
                transfer: true,
            },
            MessageBody::VoteResponse { granted: true },
            MessageBody::VoteResponse { granted: false },
            MessageBody::Append {
                prev_index: 0,
                prev_term: 0,
                entries: vec![],
                commit: 0,
                repair_seen: 0,
            },
            MessageBody::Append {
                prev_index: 10,
                prev_term: 2,
                entries: vec![
                    entry(11, 11, 3, EntryKind::Empty, b""),
                    entry(12, 15, 3, EntryKind::Normal, b"a batch of four records"),
                    entry(
                        16,
                        16,
                        3,
                        EntryKind::Membership,
                        b"\0\0\0\x01\0\0\0\0\0\0\0\x05",
                    ),
                    entry(17, 17, 3, EntryKind::Normal, &[0xff; 300]),
                ],
                commit: 12,
                repair_seen: 0x5eed,
            },
            MessageBody::AppendAccepted {
                match_index: 42,
                repair_seen: 3,
            },
            MessageBody::AppendRejected {
                prev_index: 9,
                hint_index: 7,
                hint_term: 2,
                hint_is_end: false,
                lost_data: None,
            },
            MessageBody::AppendRejected {
                prev_index: 1,
                hint_index: 0,
                hint_term: 0,
                hint_is_end: true,
                lost_data: Some(0x5eed),
            },
            MessageBody::Heartbeat { commit: 5 },
            MessageBody::HeartbeatResponse,
            MessageBody::TimeoutNow,
            MessageBody::InstallSnapshot {
                snapshot: snapshot(100, b""),
                repair_seen: 0,
            },
            MessageBody::InstallSnapshot {
                snapshot: snapshot(7, b"image bytes"),
                repair_seen: 0,
            },
        ];
        let mut seen = [false; 11];
        for (i, body) in bodies.into_iter().enumerate() {
            seen[variant(&body)] = true;
            let msg = Message {
                from: i as u64,
                to: u64::MAX - i as u64,
                term: 3 + i as u64,
                body,
            };
            let bytes = bincode::serialize(&msg).expect("serialize");
            let back: Message = bincode::deserialize(&bytes).expect("deserialize");
            assert_eq!(back, msg);
            assert_eq!(bincode::serialize(&back).unwrap(), bytes, "stable encoding");
        }
        assert!(seen.iter().all(|s| *s), "every variant covered: {seen:?}");
        let hs = HardState {
            term: 8,
            vote: Some(2),
            commit: 30,
            repair: Some(40),
        };
        let back: HardState = bincode::deserialize(&bincode::serialize(&hs).unwrap()).unwrap();
        assert_eq!(back, hs);
    }

    #[cfg(feature = "serde")]
    #[test]
    fn a_bad_voter_list_is_refused_on_deserialize() {
        let good = Membership::new([1, 3]);
        let back: Membership = bincode::deserialize(&bincode::serialize(&good).unwrap()).unwrap();
        assert_eq!(back, good);
        for bad in [
            vec![3u64, 1],
            vec![2, 2],
            (0..=RAFT_VOTERS_MAX as u64).collect(),
        ] {
            let bytes = bincode::serialize(&bad).unwrap();
            assert!(
                bincode::deserialize::<Membership>(&bytes).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn single_server_changes() {
        let m = Membership::new([1, 2, 3]);
        assert_eq!(
            m.apply(ConfChange::AddVoter(4)).unwrap().voters(),
            &[1, 2, 3, 4]
        );
        assert_eq!(
            m.apply(ConfChange::RemoveVoter(2)).unwrap().voters(),
            &[1, 3]
        );
        assert_eq!(
            m.apply(ConfChange::AddVoter(2)),
            Err(ConfChangeError::AlreadyVoter)
        );
        assert_eq!(
            m.apply(ConfChange::RemoveVoter(9)),
            Err(ConfChangeError::NotVoter)
        );
        assert_eq!(
            Membership::new([1]).apply(ConfChange::RemoveVoter(1)),
            Err(ConfChangeError::LastVoter)
        );
    }
}
