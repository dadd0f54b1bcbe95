//! The cluster harness's checkers catch the planted Raft bugs (`core/src/planted.rs`). Compiled
//! only with the `planted-bugs` feature; each schedule plants its bug through its replicas'
//! configuration, so it runs beside every other test:
//!
//! `cargo test -p sluice-core --features planted-bugs --lib planted_raft_bugs -- --nocapture`

use std::panic::{catch_unwind, set_hook, take_hook};

use crate::planted::{Bug, Planted};
use crate::testing::raft_harness::Cluster;

/// Schedules tried per bug before giving up (seeds from 0). Measured: no-divergent-truncation
/// is caught by the 5th schedule (state-machine safety), commit-old-term by the 1st (the
/// leader's commit-rule invariant; before that invariant, the cluster checkers' leader
/// completeness caught it at the 12,137th, once a Figure 8 history came up: a follower
/// acknowledging an old entry but not the new leader's first, then a rival with a later last
/// term elected). vote-ignores-log is caught by the 4th (leader completeness), vote-twice by
/// the 8th (the harness's durability check: a vote granted that the voter's stored hard state
/// does not hold, since the planted grant leaves the first vote recorded; the simulator's
/// election-safety checker sees the two leaders it lets in).
const SCHEDULES_MAX: u64 = 50_000;

/// The panic message of a failed schedule: which checker (or invariant) caught the bug.
fn message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

#[test]
fn planted_raft_bugs_are_caught() {
    // Failing schedules are expected here; keep their panics quiet.
    let default_hook = take_hook();
    set_hook(Box::new(|_| {}));
    let mut report = Vec::new();
    for bug in [
        Bug::CommitOldTerm,
        Bug::NoDivergentTruncation,
        Bug::VoteTwice,
        Bug::VoteIgnoresLog,
    ] {
        let caught = (0..SCHEDULES_MAX).find_map(|seed| {
            catch_unwind(|| Cluster::run_schedule_with(seed, false, Planted::new(Some(bug))))
                .err()
                .map(|payload| (seed, message(payload.as_ref())))
        });
        report.push((bug, caught));
    }
    set_hook(default_hook);
    for (bug, caught) in &report {
        match caught {
            Some((seed, why)) => eprintln!(
                "{}: caught by seed {seed} ({} schedules): {}",
                bug.name(),
                seed + 1,
                why.lines().next().unwrap_or("")
            ),
            None => panic!("{}: not caught in {SCHEDULES_MAX} schedules", bug.name()),
        }
    }
    // Without a planted bug the same schedules pass (the sweep shows it); the first one here
    // confirms that nothing else planted it.
    Cluster::run_schedule(0);
}
