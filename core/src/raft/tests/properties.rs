//! Property tests: random schedules on the cluster harness.

use crate::raft::cluster::{Cluster, Stats};

#[test]
fn a_few_seeds() {
    let mut total = Stats::default();
    let mut max_live = 0;
    for seed in 0..5000 {
        let s = Cluster::run_schedule(seed);
        total.ticks += s.ticks;
        total.messages_delivered += s.messages_delivered;
        total.committed += s.committed;
        total.leaders_elected += s.leaders_elected;
        total.crashes += s.crashes;
        total.writes_lost += s.writes_lost;
        total.snapshots_installed += s.snapshots_installed;
        total.compactions += s.compactions;
        total.conf_changes += s.conf_changes;
        total.transfers += s.transfers;
        total.truncations += s.truncations;
        total.liveness_ticks += s.liveness_ticks;
        max_live = max_live.max(s.liveness_ticks);
    }
    eprintln!("{total:?} max liveness {max_live}");
}

#[test]
#[ignore]
fn debug_seed() {
    let seed = std::env::var("SEED").unwrap().parse().unwrap();
    Cluster::run_schedule_verbose(seed, true);
}
