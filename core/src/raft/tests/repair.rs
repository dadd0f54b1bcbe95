//! Repair mode (protocol-aware recovery): a replica that lost entries it may have acknowledged
//! neither votes nor campaigns, makes its leader forget what it matched, and leaves the mode
//! only once it holds everything committed.

use crate::raft::*;
use crate::rng::Rng;

use super::{config, drain_synced, entry, msg, VecSource};

/// A replica of group {1, 2, 3} whose durable log holds entries of these terms (one index
/// each), at `term`, repairing up to `repair` if set.
fn restored(id: NodeId, terms: &[u64], term: u64, repair: Option<u64>) -> (Raft, VecSource) {
    let entries: Vec<Entry> = terms
        .iter()
        .enumerate()
        .map(|(i, t)| entry(i as u64 + 1, *t))
        .collect();
    let mut state = RaftState::bootstrap(Membership::new([1, 2, 3]));
    for e in &entries {
        state.log.push(e.index, e.last, e.term, None).unwrap();
    }
    state.hard_state.term = term;
    state.hard_state.repair = repair;
    (
        Raft::new(config(id), Rng::new(id), state).unwrap(),
        VecSource(entries),
    )
}

/// Delivers messages between `a` (id 1) and `b` (id 2) until neither has any; messages to
/// replica 3 are lost. `watch` sees every message delivered.
fn exchange(
    a: &mut Raft,
    a_log: &VecSource,
    b: &mut Raft,
    b_log: &VecSource,
    mut watch: impl FnMut(&Message, &Raft),
) {
    for _ in 0..100 {
        let mut moved = false;
        for m in drain_synced(a, a_log) {
            if m.to == 2 {
                moved = true;
                b.step(m.clone());
                watch(&m, a);
            }
        }
        for m in drain_synced(b, b_log) {
            if m.to == 1 {
                moved = true;
                a.step(m.clone());
                watch(&m, a);
            }
        }
        if !moved {
            return;
        }
    }
    panic!("the replicas never went quiet");
}

/// `rounds` leader ticks, each followed by an [`exchange`] with nothing watched.
fn tick_rounds(a: &mut Raft, a_log: &VecSource, b: &mut Raft, b_log: &VecSource, rounds: u32) {
    for _ in 0..rounds {
        a.tick();
        exchange(a, a_log, b, b_log, |_, _| {});
    }
}

/// Replica 1 elected over four entries of term 1, and replica 2 caught up with it.
fn elected_with_follower() -> (Raft, VecSource, Raft, VecSource) {
    let (mut leader, leader_log) = restored(1, &[1, 1, 1, 1], 1, None);
    let (mut healthy, healthy_log) = restored(2, &[1, 1, 1, 1], 1, None);
    elect(&mut leader, &leader_log);
    exchange(
        &mut leader,
        &leader_log,
        &mut healthy,
        &healthy_log,
        |_, _| {},
    );
    (leader, leader_log, healthy, healthy_log)
}

fn elect(r: &mut Raft, log: &VecSource) {
    r.campaign(true);
    drain_synced(r, log);
    let term = r.term();
    r.step(msg(
        3,
        r.id(),
        term,
        MessageBody::VoteResponse { granted: true },
    ));
    // Its first appends are left for `exchange` to deliver.
    assert!(r.is_leader());
}

#[test]
fn a_repairing_replica_grants_no_vote_and_never_campaigns() {
    let (mut r, log) = restored(2, &[1, 1], 1, Some(2));
    assert!(r.is_repairing());
    for pre in [true, false] {
        let body = if pre {
            MessageBody::PreVote {
                last_index: 9,
                last_term: 5,
            }
        } else {
            MessageBody::Vote {
                last_index: 9,
                last_term: 5,
                transfer: true,
            }
        };
        r.step(msg(1, 2, 5, body));
        let answers = drain_synced(&mut r, &log);
        assert!(
            answers.iter().all(|m| matches!(
                m.body,
                MessageBody::PreVoteResponse { granted: false }
                    | MessageBody::VoteResponse { granted: false }
            )),
            "a repairing replica granted: {answers:?}"
        );
        assert_eq!(r.vote(), None);
    }
    for _ in 0..100 {
        r.tick();
    }
    r.campaign(true);
    assert_eq!(r.role(), Role::Follower, "it campaigned");
    assert!(drain_synced(&mut r, &log).is_empty(), "it asked for votes");
}

#[test]
fn a_group_of_one_has_nothing_to_repair_from() {
    let mut state = RaftState::bootstrap(Membership::new([1]));
    state.hard_state.repair = Some(4);
    let mut r = Raft::new(config(1), Rng::new(1), state).unwrap();
    assert!(!r.is_repairing());
    // The cleared mode is stored with the next write.
    r.campaign(true);
    let rd = r.ready(&VecSource::default());
    assert_eq!(rd.write.unwrap().hard_state.unwrap().repair, None);
}

/// Replica 2 acknowledged the leader's whole log, then lost its tail to damage (it restarts
/// holding only the first two entries). The leader, which still counts its old match index,
/// forgets it on the first rejection that says `lost_data`, repairs it, and replica 2 leaves
/// repair mode only once it durably holds an entry of the leader's term that is committed.
#[test]
fn a_leader_forgets_what_a_damaged_follower_matched_and_repairs_it() {
    let (mut leader, leader_log, _, _) = elected_with_follower();
    let matched = leader.progress(2).unwrap().match_index;
    assert_eq!(
        matched,
        leader.last_index(),
        "replica 2 acknowledged it all"
    );
    let term = leader.term();

    // The damage: replica 2 comes back with two entries, in repair mode up to what it held.
    let (mut damaged, damaged_log) = restored(2, &[1, 1], term, Some(matched));
    leader.propose(bytes::Bytes::from_static(b"x"), 1).unwrap();
    let mut forgot = false;
    let mut repair_ended_at = None;
    exchange(
        &mut leader,
        &leader_log,
        &mut damaged,
        &damaged_log,
        |m, leader| {
            if let MessageBody::AppendRejected { lost_data, .. } = m.body {
                assert!(
                    lost_data.is_some(),
                    "a repairing replica's rejection says so"
                );
                forgot |= leader.progress(2).unwrap().match_index == 0;
            }
        },
    );
    assert!(
        forgot,
        "the leader kept the match index of a follower that lost data"
    );
    // Heartbeats carry the commit index the follower still lacks.
    for _ in 0..40 {
        leader.tick();
        exchange(
            &mut leader,
            &leader_log,
            &mut damaged,
            &damaged_log,
            |_, _| {},
        );
        if !damaged.is_repairing() && repair_ended_at.is_none() {
            repair_ended_at = Some(damaged.commit_index());
        }
    }
    assert_eq!(damaged.last_index(), leader.last_index());
    let ended = repair_ended_at.expect("the repair never ended");
    assert_eq!(
        damaged.log().term(ended),
        Some(term),
        "ended on an older term's entry"
    );
    assert!(
        ended >= matched,
        "ended below what it held before the damage"
    );
    assert_eq!(damaged.hard_state().repair, None);
}

/// A follower whose commit index already reaches old entries does not leave repair mode on
/// them: only an entry of its leader's term, committed, shows it holds everything committed.
#[test]
fn old_committed_entries_do_not_end_a_repair() {
    let (mut leader, leader_log) = restored(1, &[1, 1, 1], 1, None);
    let (mut damaged, damaged_log) = restored(2, &[1, 1, 1], 1, Some(1));
    elect(&mut leader, &leader_log);
    // Only heartbeats, which cannot prove the leader's commit index is known.
    let term = leader.term();
    damaged.step(msg(1, 2, term, MessageBody::Heartbeat { commit: 3 }));
    drain_synced(&mut damaged, &damaged_log);
    assert_eq!(damaged.commit_index(), 3);
    assert!(damaged.is_repairing());
}

/// Review finding: `leader_commit_seen` trusts any append accepted after the restart, including
/// one the leader sent *before* the damaged replica acknowledged the entries it then lost (a
/// duplicate or delayed message: the Raft module's own network model duplicates and reorders,
/// docs/raft.md). With `Damage::end` only a lower bound of what the replica held (a flipped bit
/// in the first batch of the tail), that stale append ends the repair while the leader still
/// counts the replica's lost acknowledgement, and the replica then votes for a candidate that
/// lacks committed entries.
#[test]
fn review_a_stale_append_delivered_after_the_restart_does_not_end_the_repair() {
    let six = [1, 1, 1, 1, 1, 1];
    let (mut leader, leader_log) = restored(1, &six, 1, None);
    let (mut healthy, healthy_log) = restored(2, &six, 1, None);
    elect(&mut leader, &leader_log); // term 2, its no-op at index 7
    let term = leader.term();
    // The first appends are lost.
    drain_synced(&mut leader, &leader_log);
    leader.propose(bytes::Bytes::from_static(b"x"), 1).unwrap(); // index 8
    drain_synced(&mut leader, &leader_log);
    // Replica 3 acknowledges 7..=8: committed with the leader.
    leader.step(msg(
        3,
        1,
        term,
        MessageBody::AppendAccepted {
            match_index: 8,
            repair_seen: 0,
        },
    ));
    drain_synced(&mut leader, &leader_log);
    assert_eq!(leader.commit_index(), 8);
    // The leader probes replica 2 again from 7, with commit 8: keep a copy of that append.
    let mut stale: Option<Message> = None;
    for _ in 0..20 {
        leader.tick();
        exchange(
            &mut leader,
            &leader_log,
            &mut healthy,
            &healthy_log,
            |m, _| {
                if let MessageBody::Append {
                    prev_index: 6,
                    commit,
                    ..
                } = m.body
                {
                    if m.to == 2 && commit >= 8 && stale.is_none() {
                        stale = Some(m.clone());
                    }
                }
            },
        );
        if stale.is_some() {
            break;
        }
    }
    let stale = stale.expect("the leader re-sent its probe");
    // Two more entries, committed by the leader and replica 2 only (replica 3 is cut off).
    leader.propose(bytes::Bytes::from_static(b"y"), 1).unwrap();
    leader.propose(bytes::Bytes::from_static(b"z"), 1).unwrap();
    tick_rounds(&mut leader, &leader_log, &mut healthy, &healthy_log, 4);
    assert_eq!(leader.commit_index(), 10, "9 and 10 committed");
    assert_eq!(leader.progress(2).unwrap().match_index, 10);

    // Replica 2 crashes; a bit flipped in the batch of index 7 cuts 7..=10. Recovery reads the
    // damaged batch's header, so `Damage::end` is 7 (it cannot see 8..=10 behind it).
    let (mut damaged, damaged_log) = restored(2, &six, term, Some(7));
    // The stale copy of the probe arrives after the restart.
    damaged.step(stale);
    drain_synced(&mut damaged, &damaged_log);
    let ended_early = !damaged.is_repairing();
    // The leader never heard `lost_data`: it still counts replica 2 at 10.
    assert_eq!(leader.progress(2).unwrap().match_index, 10);

    // The leader crashes. Replica 3 (log 1..=8) campaigns.
    let mut terms3 = six.to_vec();
    terms3.extend([term, term]);
    let (mut three, three_log) = restored(3, &terms3, term, None);
    three.campaign(true);
    for m in drain_synced(&mut three, &three_log) {
        if m.to == 2 {
            damaged.step(m);
        }
    }
    for m in drain_synced(&mut damaged, &damaged_log) {
        if m.to == 3 {
            three.step(m);
        }
    }
    drain_synced(&mut three, &three_log);
    assert!(
        !three.is_leader(),
        "replica 3 won term {} with replica 2's vote (repair ended by the stale append: \
         {ended_early}) although it lacks 9 and 10, which leader 1 committed",
        three.term()
    );
}

/// Replica 2's acknowledgement of the leader's whole log is still in flight when replica 2
/// crashes and comes back damaged. The leader forgets its match on the `lost_data` rejection;
/// the old acknowledgement, delivered after that, must not bring the match index back (it would
/// count entries replica 2 no longer holds toward the next commit).
#[test]
fn an_acknowledgement_sent_before_the_damage_does_not_count_after_the_leader_forgot() {
    let (mut leader, leader_log, mut healthy, healthy_log) = elected_with_follower();
    let term = leader.term();
    assert_eq!(
        leader.commit_index(),
        leader.last_index(),
        "the no-op committed"
    );
    // Replica 2 takes one more entry; keep its acknowledgement instead of delivering it.
    leader.propose(bytes::Bytes::from_static(b"x"), 1).unwrap();
    let mut stale = None;
    for _ in 0..10 {
        for m in drain_synced(&mut leader, &leader_log) {
            if m.to == 2 {
                healthy.step(m);
            }
        }
        for m in drain_synced(&mut healthy, &healthy_log) {
            if matches!(m.body, MessageBody::AppendAccepted { .. }) {
                stale = Some(m);
            }
        }
        if stale.is_some() {
            break;
        }
    }
    let stale = stale.expect("replica 2 acknowledged");
    let MessageBody::AppendAccepted { match_index, .. } = stale.body else {
        unreachable!()
    };
    assert_eq!(match_index, leader.last_index(), "it acknowledged it all");

    // Replica 2 comes back with two entries; a heartbeat draws its `lost_data` rejection.
    let (mut damaged, damaged_log) = restored(2, &[1, 1], term, Some(match_index));
    let committed = leader.commit_index();
    damaged.step(msg(1, 2, term, MessageBody::Heartbeat { commit: 0 }));
    let mut rejected = false;
    for m in drain_synced(&mut damaged, &damaged_log) {
        rejected |= matches!(
            m.body,
            MessageBody::AppendRejected {
                lost_data: Some(_),
                ..
            }
        );
        leader.step(m);
    }
    assert!(rejected, "the repairing replica said it lost data");
    assert_eq!(leader.progress(2).unwrap().match_index, 0, "forgotten");
    // The old acknowledgement arrives now.
    leader.step(stale);
    assert_eq!(
        leader.progress(2).unwrap().match_index,
        0,
        "an acknowledgement from before the damage counted after the leader forgot the match"
    );
    assert_eq!(
        leader.commit_index(),
        committed,
        "the entry replica 2 lost committed on its old acknowledgement"
    );
    // The repair itself still completes.
    tick_rounds(&mut leader, &leader_log, &mut damaged, &damaged_log, 40);
    assert!(!damaged.is_repairing(), "the repair never ended");
    assert_eq!(leader.progress(2).unwrap().match_index, leader.last_index());
}
