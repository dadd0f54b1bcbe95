//! Independent review: each test states a property the Raft state machine should have and
//! drives one replica through an exact message schedule. A failing test here is a finding.

use std::panic::{catch_unwind, AssertUnwindSafe};

use bytes::Bytes;

use crate::raft::*;
use crate::rng::Rng;

use super::{config, entry, msg, VecSource};

fn follower(id: NodeId, voters: &[NodeId], term: u64) -> Raft {
    let mut state = RaftState::bootstrap(Membership::new(voters.iter().copied()));
    state.hard_state.term = term;
    Raft::new(config(id), Rng::new(7), state).unwrap()
}

/// Steps `m` into `r`; returns whether that panicked (peer input must never panic).
fn step_panics(r: &mut Raft, m: Message) -> bool {
    catch_unwind(AssertUnwindSafe(|| r.step(m))).is_err()
}

/// FAILS (panic from peer input): an `InstallSnapshot` whose boundary is `u64::MAX` overflows
/// `LogMeta::first_index` / `RaftLog::cache_first` (`last_index + 1`) right after the install.
#[test]
fn review_install_snapshot_at_u64_max_is_dropped_not_panicking() {
    let mut r = follower(1, &[1, 2, 3], 1);
    let snapshot = Snapshot {
        meta: SnapshotMeta {
            index: u64::MAX,
            term: 1,
            membership: Membership::new([1, 2, 3]),
        },
        data: Bytes::new(),
    };
    let panicked = step_panics(
        &mut r,
        msg(
            2,
            1,
            1,
            MessageBody::InstallSnapshot {
                snapshot,
                repair_seen: 0,
            },
        ),
    );
    assert!(
        !panicked,
        "a malformed InstallSnapshot panicked the replica"
    );
}

/// FAILS (panic from peer input): `append_is_valid` computes `prev_index + 1 + i`, which
/// overflows for `prev_index == u64::MAX` with any entry.
#[test]
fn review_append_with_prev_index_u64_max_is_dropped_not_panicking() {
    let mut r = follower(1, &[1, 2, 3], 1);
    let panicked = step_panics(
        &mut r,
        msg(
            2,
            1,
            1,
            MessageBody::Append {
                prev_index: u64::MAX,
                prev_term: 1,
                entries: vec![entry(0, 1)],
                commit: 0,
                repair_seen: 0,
            },
        ),
    );
    assert!(!panicked, "a malformed Append panicked the replica");
}

/// FAILS in debug/madsim builds (panic from peer input): an append that disagrees with the
/// follower's snapshot boundary hits `debug_assert!(false, ...)` in `handle_append`. The doc
/// only announces a debug panic for a conflict with a committed *entry*; STYLE.md says peer
/// input never panics.
#[test]
fn review_append_disagreeing_with_snapshot_boundary_is_dropped_not_panicking() {
    let mut state = RaftState {
        hard_state: HardState {
            term: 3,
            vote: None,
            commit: 5,
            repair: None,
        },
        log: LogMeta::new(SnapshotMeta {
            index: 5,
            term: 2,
            membership: Membership::new([1, 2, 3]),
        }),
        applied: 5,
    };
    state.hard_state.commit = 5;
    let mut r = Raft::new(config(1), Rng::new(7), state).unwrap();
    let panicked = step_panics(
        &mut r,
        msg(
            2,
            1,
            3,
            MessageBody::Append {
                prev_index: 3,
                prev_term: 1,
                entries: vec![entry(4, 1), entry(5, 1)],
                commit: 0,
                repair_seen: 0,
            },
        ),
    );
    assert!(
        !panicked,
        "an Append disagreeing with the snapshot panicked"
    );
    assert_eq!(r.commit_index(), 5);
}

/// FAILS (contract / double apply): the commit index on disk lags (it is written only along
/// with other writes; a follower learns commits from heartbeats without any write), so a host
/// may restart having applied beyond the stored commit. `Raft::new` clamps `applied` down to
/// the stored commit and later hands the already-applied entries out again in
/// `Ready::committed`. Entries at or below `applied` are committed by definition, so the
/// restored commit could be `max(hard_state.commit, applied)` instead.
#[test]
fn review_restart_never_hands_out_already_applied_entries_again() {
    // First incarnation: a follower of {1, 2} gets 3 entries and learns commit 3 from a
    // heartbeat, which triggers no write; the host applies 1..=3.
    let mut r = follower(1, &[1, 2], 1);
    r.step(msg(
        2,
        1,
        1,
        MessageBody::Append {
            prev_index: 0,
            prev_term: 0,
            entries: vec![entry(1, 1), entry(2, 1), entry(3, 1)],
            commit: 0,
            repair_seen: 0,
        },
    ));
    let source = VecSource(vec![entry(1, 1), entry(2, 1), entry(3, 1)]);
    let rd = r.ready(&source);
    let w = rd.write.expect("entries written");
    // The replica started at term 1 (stored), so this write may carry no hard state.
    let stored_hs = w.hard_state.unwrap_or(HardState {
        term: 1,
        vote: None,
        commit: 0,
        repair: None,
    });
    r.on_persisted(w.seq);
    let _ = r.ready(&source);
    r.step(msg(2, 1, 1, MessageBody::Heartbeat { commit: 3 }));
    let rd = r.ready(&source);
    assert!(rd.write.is_none(), "a commit advance alone writes nothing");
    let applied: Vec<u64> = rd.committed.iter().map(|e| e.index).collect();
    assert_eq!(applied, vec![1, 2, 3]);
    assert_eq!(stored_hs.commit, 0, "the stored commit lags");

    // Restart from the synced state; the host's state machine is at 3.
    let mut log = LogMeta::new(SnapshotMeta {
        index: 0,
        term: 0,
        membership: Membership::new([1, 2]),
    });
    for e in &source.0 {
        log.push(e.index, e.last, e.term, None).unwrap();
    }
    let mut r = Raft::new(
        config(1),
        Rng::new(8),
        RaftState {
            hard_state: stored_hs,
            log,
            applied: 3,
        },
    )
    .unwrap();
    let applied_after_restart = r.applied_index();
    // The leader tells it the commit index again.
    r.step(msg(2, 1, 1, MessageBody::Heartbeat { commit: 3 }));
    let rd = r.ready(&source);
    let again: Vec<u64> = rd.committed.iter().map(|e| e.index).collect();
    assert!(
        again.is_empty() && applied_after_restart >= 3,
        "entries {again:?} were handed out again after a restart with applied = 3 \
         (applied_index() right after Raft::new = {applied_after_restart})"
    );
}
