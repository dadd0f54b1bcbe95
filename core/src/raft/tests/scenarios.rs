//! Named scenarios: the classic traps, each driven step by step on the cluster harness (whose
//! checkers run after every step). Network: no loss, no delay; storage syncs at once unless a
//! scenario says otherwise.

use crate::raft::*;
use crate::testing::raft_harness::{Cluster, ClusterOptions};

fn calm(n: usize) -> Cluster {
    Cluster::new(ClusterOptions::calm(n), 7)
}

/// Delivers everything, except messages `drop` selects (checked before each delivery, so the
/// filter sees the cluster as it is then).
fn settle_dropping(c: &mut Cluster, drop: impl Fn(&Cluster, &Message) -> bool) {
    loop {
        let doomed: Vec<Message> = c.in_flight().filter(|m| drop(c, m)).cloned().collect();
        c.drop_in_flight(|m| doomed.contains(m));
        if c.deliver_one().is_none() && !c.sync_all() {
            return;
        }
    }
}

/// Forces `id` to campaign until it leads (a few rounds: its first tries may be at a term the
/// others already voted in).
fn elect(c: &mut Cluster, id: NodeId, drop: impl Fn(&Cluster, &Message) -> bool + Copy) {
    for _ in 0..5 {
        c.campaign(id, true);
        settle_dropping(c, drop);
        if c.raft(id).is_leader() {
            return;
        }
    }
    panic!("replica {id} was not elected");
}

fn nothing(_: &Cluster, _: &Message) -> bool {
    false
}

fn append_carries(m: &Message, index: u64) -> bool {
    matches!(&m.body, MessageBody::Append { entries, .. } if entries.iter().any(|e| e.index == index))
}

/// Ticks until some replica in `among` leads; returns it.
fn tick_until_leader(c: &mut Cluster, among: &[NodeId]) -> NodeId {
    for _ in 0..500 {
        c.tick();
        if let Some(l) = among
            .iter()
            .copied()
            .find(|id| c.is_up(*id) && c.raft(*id).is_leader())
        {
            return l;
        }
    }
    panic!("no leader among {among:?}");
}

#[test]
fn calm_cluster_elects_and_commits() {
    let mut c = calm(3);
    let leader = tick_until_leader(&mut c, &[0, 1, 2]);
    let (index, term) = c.propose(leader).unwrap();
    c.settle();
    for id in c.ids() {
        assert!(c.raft(id).commit_index() >= index);
        assert_eq!(c.raft(id).log().term(index), Some(term));
    }
}

/// Raft paper, Figure 8: a leader must not commit an entry of an earlier term by counting
/// replicas, because a replica with a later last term can still be elected and overwrite it.
/// Replicas 0..4 play S1..S5.
#[test]
fn figure_8_old_term_entries_are_not_committed_by_counting() {
    let mut options = ClusterOptions::calm(5);
    // One entry per append, so followers can be made to hold index 2 without index 3.
    options.append_entries_max = 1;
    let mut c = Cluster::new(options, 8);

    // (a) S1 leads term 1 and gets its entry 2 to S2 only.
    elect(&mut c, 0, nothing);
    assert_eq!(c.raft(0).term(), 1);
    c.partition(&[&[0, 1], &[2, 3, 4]]);
    let (x, x_term) = c.propose(0).unwrap();
    assert_eq!((x, x_term), (2, 1));
    c.settle();
    assert_eq!(c.raft(1).log().term(2), Some(1));

    // (b) S1 crashes; S5 is elected with S3 and S4 and appends entry 2 of its own term, which
    // nobody else receives.
    c.crash(0);
    c.partition(&[&[1], &[2, 3, 4]]);
    let from_s5 =
        |_: &Cluster, m: &Message| m.from == 4 && matches!(m.body, MessageBody::Append { .. });
    elect(&mut c, 4, from_s5);
    let s5_term = c.raft(4).term();
    assert_eq!(c.raft(4).log().term(2), Some(s5_term));

    // (c) S5 crashes; S1 restarts and is elected; it gets entry 2 (term 1) to S3 and S4, so a
    // majority holds it, but its own entry 3 reaches nobody.
    c.crash(4);
    c.restart(0);
    c.heal();
    let holds_entry_2_of_term_1 =
        |c: &Cluster, to: NodeId| c.is_up(to) && c.raft(to).log().term(2) == Some(1);
    let entry_3_to_holders = move |c: &Cluster, m: &Message| {
        m.from == 0 && append_carries(m, 3) && holds_entry_2_of_term_1(c, m.to)
    };
    elect(&mut c, 0, entry_3_to_holders);
    let s1_term = c.raft(0).term();
    assert!(s1_term > s5_term);
    for id in [0, 1, 2, 3] {
        assert_eq!(c.raft(id).log().term(2), Some(1), "replica {id}");
    }
    assert_eq!(c.raft(0).log().term(3), Some(s1_term));
    assert_eq!(c.raft(0).progress(2).unwrap().match_index, 2);
    assert_eq!(c.raft(0).progress(3).unwrap().match_index, 2);
    // The rule under test: a majority holds entry 2, but it is of an earlier term.
    assert_eq!(
        c.raft(0).commit_index(),
        1,
        "entry 2 of term 1 must not commit"
    );

    // (d) S1 crashes; S5 restarts and wins (its last term beats everyone's), overwriting entry 2
    // everywhere. Had S1 committed it, the checkers would have caught the loss here.
    c.crash(0);
    c.restart(4);
    elect(&mut c, 4, nothing);
    c.restart(0);
    c.ticks(2);
    c.settle();
    let leader_term = c.raft(4).term();
    let (y, _) = c.propose(4).unwrap();
    c.settle();
    for id in c.ids() {
        let raft = c.raft(id);
        assert_eq!(
            raft.log().term(2),
            Some(s5_term),
            "replica {id} kept the old entry 2"
        );
        assert!(raft.commit_index() >= y, "replica {id}");
        assert_eq!(raft.log().term(y), Some(leader_term));
    }
    assert!(
        c.stats.truncations >= 4,
        "S1..S4 each cut entry 2 of term 1"
    );
}

/// A leader cut off with a minority keeps accepting proposals; they never commit, it steps down
/// once it notices it has no quorum, and the proposals are truncated after the partition heals.
#[test]
fn partitioned_old_leader_never_commits_and_is_truncated() {
    let mut c = calm(5);
    elect(&mut c, 0, nothing);
    for _ in 0..3 {
        c.propose(0).unwrap();
    }
    c.settle();
    let committed = c.raft(0).commit_index();
    assert_eq!(committed, 4);

    c.partition(&[&[0, 1], &[2, 3, 4]]);
    let stale: Vec<(u64, u64)> = (0..5).map(|_| c.propose(0).unwrap()).collect();
    c.settle();
    assert_eq!(c.raft(0).commit_index(), committed);
    assert_eq!(
        c.raft(1).last_index(),
        committed + 5,
        "the minority follower has them"
    );

    let new_leader = tick_until_leader(&mut c, &[2, 3, 4]);
    let (fresh, fresh_term) = c.propose(new_leader).unwrap();
    c.settle();
    assert!(c.raft(new_leader).commit_index() >= fresh);
    // Check-quorum: within an election timeout or two the old leader stops leading.
    c.ticks(2 * u64::from(c.options.election_ticks));
    assert!(
        !c.raft(0).is_leader(),
        "check-quorum must depose the cut-off leader"
    );
    assert!(c.propose(0).is_none());
    assert_eq!(c.raft(0).commit_index(), committed);

    c.heal();
    c.ticks(u64::from(c.options.election_ticks));
    c.settle();
    for id in c.ids() {
        let raft = c.raft(id);
        assert!(raft.commit_index() >= fresh, "replica {id}");
        assert_eq!(raft.log().term(fresh), Some(fresh_term));
        for (index, term) in &stale {
            assert_ne!(
                raft.log().term(*index),
                Some(*term),
                "replica {id} kept stale entry {index}"
            );
        }
    }
    assert!(
        c.stats.truncations >= 2,
        "both minority replicas cut their suffix"
    );
}

/// A replica whose log is longer but ends in an older term must not win an election, and its
/// stale suffix is replaced.
#[test]
fn longer_but_stale_log_does_not_win() {
    let mut c = calm(3);
    elect(&mut c, 2, nothing);
    c.partition(&[&[2], &[0, 1]]);
    let stale: Vec<(u64, u64)> = (0..5).map(|_| c.propose(2).unwrap()).collect();
    c.settle();
    let leader = tick_until_leader(&mut c, &[0, 1]);
    let (fresh, fresh_term) = c.propose(leader).unwrap();
    c.settle();
    let other = 1 - leader;
    assert!(c.raft(2).last_index() > c.raft(other).last_index());
    assert!(c.raft(2).last_term() < c.raft(other).last_term());

    // Cut off, the old leader steps down (check-quorum).
    c.ticks(2 * u64::from(c.options.election_ticks));
    assert!(!c.raft(2).is_leader());

    // The new leader goes away; the long stale log competes with the short fresh one.
    c.crash(leader);
    c.partition(&[&[2, other]]);
    for _ in 0..3 {
        c.campaign(2, true);
        c.settle();
        assert!(!c.raft(2).is_leader(), "the stale log won an election");
    }
    assert_eq!(tick_until_leader(&mut c, &[2, other]), other);
    c.settle();
    assert!(
        c.checker
            .leaders()
            .iter()
            .all(|(term, id)| *id != 2 || *term == 1),
        "replica 2 led after term 1: {:?}",
        c.checker.leaders()
    );
    assert_eq!(c.raft(2).log().term(fresh), Some(fresh_term));
    for (index, term) in &stale {
        assert_ne!(c.raft(2).log().term(*index), Some(*term));
    }
    c.restart(leader);
    c.settle();
}

/// A replica cut off from the others keeps timing out. Pre-vote keeps its term where it was,
/// so when it comes back the leader is undisturbed.
#[test]
fn rejoining_candidate_does_not_disrupt_the_leader() {
    let mut c = calm(3);
    elect(&mut c, 0, nothing);
    let term = c.raft(0).term();
    c.isolate(2);
    let election_ticks = u64::from(c.options.election_ticks);
    c.ticks(20 * election_ticks);
    assert_eq!(
        c.raft(2).term(),
        term,
        "pre-vote: no term bump without a quorum"
    );
    assert_ne!(c.raft(2).role(), Role::Leader);
    assert!(c.raft(0).is_leader());

    c.heal();
    c.ticks(10 * election_ticks);
    assert!(c.raft(0).is_leader());
    assert_eq!(c.raft(0).term(), term, "the leader was disrupted");
    assert_eq!(c.raft(2).leader(), Some(0));
    assert_eq!(c.checker.leaders().len(), 1);
    let (index, _) = c.propose(0).unwrap();
    c.settle();
    assert!(c.raft(2).commit_index() >= index);
}

/// A replica that did move to a higher term while cut off (here: a forced campaign) is not
/// ignored forever: its answer to the leader's heartbeat makes the leader step down once, and
/// the group re-forms at the higher term around a replica with the whole log.
#[test]
fn rejoining_replica_with_a_higher_term_is_absorbed() {
    let mut c = calm(3);
    elect(&mut c, 0, nothing);
    c.isolate(2);
    for _ in 0..3 {
        c.propose(0).unwrap();
    }
    c.settle();
    c.campaign(2, true);
    c.campaign(2, true);
    let high = c.raft(2).term();
    assert!(high > c.raft(0).term());
    c.heal();
    let election_ticks = u64::from(c.options.election_ticks);
    c.ticks(10 * election_ticks);
    let leader = c.leader().unwrap();
    assert_ne!(leader, 2, "the replica missing entries cannot lead");
    assert!(c.raft(leader).term() > high);
    let (index, _) = c.propose(leader).unwrap();
    c.settle();
    assert!(c.raft(2).commit_index() >= index);
}

/// A replica removed while it was cut off never learns of its removal and keeps campaigning.
/// The lease makes the voters ignore it; the leader no longer talks to it.
#[test]
fn removed_replica_that_keeps_campaigning_does_not_disrupt() {
    let mut c = calm(4);
    elect(&mut c, 0, nothing);
    let term = c.raft(0).term();
    c.isolate(3);
    let index = c.change_membership(0, ConfChange::RemoveVoter(3)).unwrap();
    c.settle();
    assert!(c.raft(0).commit_index() >= index);
    assert!(c.raft(3).membership().contains(3), "replica 3 never heard");

    c.heal();
    let election_ticks = u64::from(c.options.election_ticks);
    c.ticks(30 * election_ticks);
    assert!(c.raft(0).is_leader());
    assert_eq!(
        c.raft(0).term(),
        term,
        "the removed replica disrupted the group"
    );
    assert_eq!(c.raft(3).term(), term, "its pre-votes never won");
    assert_eq!(c.checker.leaders().len(), 1);
    let (p, _) = c.propose(0).unwrap();
    c.settle();
    for id in 0..3 {
        assert!(c.raft(id).commit_index() >= p);
    }
}

/// A leader that removes itself keeps leading until the change commits, then hands over at
/// once (TimeoutNow to the most up-to-date voter) instead of leaving the group leaderless.
#[test]
fn removed_leader_steps_down_and_hands_over() {
    let mut c = calm(3);
    elect(&mut c, 0, nothing);
    c.propose(0).unwrap();
    c.settle();
    let index = c.change_membership(0, ConfChange::RemoveVoter(0)).unwrap();
    c.settle();
    assert!(!c.raft(0).is_leader());
    assert!(!c.raft(0).is_promotable());
    let leader = c
        .leader()
        .expect("handed over without waiting for a timeout");
    assert!(c.raft(leader).commit_index() >= index);
    assert_eq!(c.raft(leader).membership().voters(), &[1, 2]);
    let (p, _) = c.propose(leader).unwrap();
    c.settle();
    assert!(c.raft(1).commit_index() >= p && c.raft(2).commit_index() >= p);
    // The removed replica stays quiet.
    c.ticks(20 * u64::from(c.options.election_ticks));
    assert!(!c.raft(0).is_leader());
}

/// Adding a replica: it starts knowing no voters, catches up from the leader, and then counts.
#[test]
fn added_replica_catches_up_and_votes() {
    let mut options = ClusterOptions::calm(3);
    options.pool = 4;
    let mut c = Cluster::new(options, 9);
    elect(&mut c, 0, nothing);
    for _ in 0..10 {
        c.propose(0).unwrap();
    }
    c.settle();
    assert!(!c.raft(3).is_promotable());
    c.change_membership(0, ConfChange::AddVoter(3)).unwrap();
    c.settle();
    assert_eq!(c.raft(3).membership().voters(), &[0, 1, 2, 3]);
    assert_eq!(c.raft(3).commit_index(), c.raft(0).commit_index());
    // With 4 voters the quorum is 3: two replicas down stop commits, one does not.
    c.crash(1);
    let (p, _) = c.propose(0).unwrap();
    c.settle();
    assert!(c.raft(0).commit_index() >= p);
    c.crash(2);
    let (q, _) = c.propose(0).unwrap();
    c.settle();
    assert!(c.raft(0).commit_index() < q);
    c.restart(1);
    c.settle();
    c.ticks(2);
    c.settle();
    assert!(c.raft(0).commit_index() >= q);
}

/// Only one membership change may be uncommitted, and a new leader must first commit an entry
/// of its own term.
#[test]
fn membership_changes_go_one_at_a_time() {
    let mut options = ClusterOptions::calm(3);
    options.pool = 5;
    let mut c = Cluster::new(options, 10);
    // Elected, but its first entry reaches nobody: not committed, so no change yet.
    elect(&mut c, 0, |_, m| {
        m.from == 0 && matches!(m.body, MessageBody::Append { .. })
    });
    assert_eq!(
        c.change_membership(0, ConfChange::AddVoter(3)),
        Err(ConfChangeError::Pending)
    );
    c.ticks(2);
    c.settle();
    let first = c.change_membership(0, ConfChange::AddVoter(3)).unwrap();
    assert_eq!(
        c.change_membership(0, ConfChange::AddVoter(4)),
        Err(ConfChangeError::Pending)
    );
    assert_eq!(
        c.change_membership(0, ConfChange::RemoveVoter(1)),
        Err(ConfChangeError::Pending)
    );
    c.settle();
    assert!(c.raft(0).commit_index() >= first);
    assert_eq!(
        c.change_membership(0, ConfChange::AddVoter(3)),
        Err(ConfChangeError::AlreadyVoter)
    );
    c.change_membership(0, ConfChange::AddVoter(4)).unwrap();
    c.settle();
    c.ticks(2);
    c.settle();
    for id in c.ids() {
        assert_eq!(c.raft(id).membership().voters(), &[0, 1, 2, 3, 4]);
    }
}

#[test]
fn leadership_transfer_hands_over_to_a_caught_up_voter() {
    let mut c = calm(3);
    elect(&mut c, 0, nothing);
    c.isolate(2);
    for _ in 0..5 {
        c.propose(0).unwrap();
    }
    c.settle();
    c.transfer(0, 2).unwrap();
    assert_eq!(
        c.propose(0),
        None,
        "proposals wait while a transfer is under way"
    );
    c.settle();
    assert!(
        c.raft(0).is_leader(),
        "the target lacks entries: no TimeoutNow yet"
    );
    c.heal();
    c.ticks(2);
    c.settle();
    assert!(c.raft(2).is_leader(), "the caught-up target took over");
    assert_eq!(c.transfer(2, 9), Err(TransferError::NotVoter));
    // A transfer that cannot finish is abandoned after an election timeout.
    c.isolate(1);
    c.propose(2).unwrap();
    c.settle();
    c.transfer(2, 1).unwrap();
    assert!(c.propose(2).is_none());
    c.ticks(u64::from(c.options.election_ticks) + 1);
    assert!(c.raft(2).is_leader());
    assert!(
        c.propose(2).is_some(),
        "the abandoned transfer no longer blocks"
    );
    c.heal();
    c.settle();
}

/// A follower that falls behind the leader's log start is sent a snapshot, then the rest.
#[test]
fn lagging_follower_catches_up_from_a_snapshot() {
    let mut options = ClusterOptions::calm(3);
    options.append_entries_max = 3;
    let mut c = Cluster::new(options, 11);
    elect(&mut c, 0, nothing);
    c.isolate(2);
    for _ in 0..20 {
        c.propose(0).unwrap();
    }
    c.settle();
    c.compact(0, 15);
    c.compact(1, 10);
    assert_eq!(c.raft(0).log().first_index(), 16);
    c.heal();
    c.ticks(2);
    c.settle();
    assert_eq!(c.stats.snapshots_installed, 1);
    assert_eq!(c.raft(2).log().first_index(), 16);
    assert_eq!(c.raft(2).commit_index(), c.raft(0).commit_index());
    // The follower that took the snapshot can lead and serve the rest of the log.
    c.crash(0);
    let leader = tick_until_leader(&mut c, &[1, 2]);
    let (p, _) = c.propose(leader).unwrap();
    c.settle();
    c.restart(0);
    c.ticks(2);
    c.settle();
    assert!(c.raft(0).commit_index() >= p);
}

/// A crash loses whatever was not synced: a follower that crashes before syncing comes back
/// without the entries (and never acknowledged them), and the leader sends them again.
#[test]
fn crash_before_sync_loses_unacknowledged_entries_only() {
    let mut options = ClusterOptions::calm(3);
    options.sync_immediately = false;
    options.sync_now_per_mille = 0;
    options.sync_all_per_mille = 1000;
    let mut c = Cluster::new(options, 12);
    let leader = tick_until_leader(&mut c, &[0, 1, 2]);
    c.settle();
    let follower = (leader + 1) % 3;
    let (p, _) = c.propose(leader).unwrap();
    // Deliver the append but sync nothing: the follower holds the entry, unsynced, unacknowledged.
    while c.deliver_one().is_some() {}
    assert_eq!(c.raft(follower).last_index(), p);
    assert!(
        c.raft(follower).held_messages() > 0,
        "the ack waits for the sync"
    );
    assert!(c.raft(leader).progress(follower).unwrap().match_index < p);
    c.crash_keeping(follower, 0);
    c.restart(follower);
    assert!(c.raft(follower).last_index() < p);
    c.ticks(4);
    c.settle();
    assert!(c.raft(follower).commit_index() >= p);
}

/// Pipelined load on a network that reorders everything: after each batch, with no tick (so no
/// heartbeat) to help, every replica has committed and applied the whole batch. (Found by the
/// benchmark: a rejected empty append had counted as telling the follower the commit index.)
/// Entries span 1 to 8 indexes.
#[test]
fn pipelined_load_commits_everywhere_without_heartbeats() {
    for seed in 0..4 {
        let mut options = ClusterOptions::calm(3);
        options.inflight_appends_max = 2 + seed as usize;
        options.append_entries_max = 4;
        options.span_max = 8;
        let mut c = Cluster::new(options, seed);
        elect(&mut c, 0, nothing);
        let mut rng = crate::rng::Rng::new(seed);
        for _ in 0..300 {
            let count = rng.between(1, 24);
            let last = if rng.chance(500) {
                // One at a time: an append per proposal, pipelined.
                (0..count).map(|_| c.propose(0).unwrap().0).last().unwrap()
            } else {
                // All, then one `ready`: shared appends.
                let payloads: Vec<_> = (0..count)
                    .map(|i| (bytes::Bytes::from(vec![i as u8; 8]), rng.between(1, 8)))
                    .collect();
                c.propose_all(0, payloads).unwrap()
            };
            c.settle();
            for id in c.ids() {
                assert_eq!(c.raft(id).applied_index(), last, "seed {seed} replica {id}");
            }
            if rng.chance(50) {
                for id in c.ids() {
                    c.compact(id, last);
                }
            }
        }
    }
}
