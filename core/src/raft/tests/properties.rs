//! Property tests: random schedules on the cluster harness. Each schedule derives everything
//! (cluster size, Raft limits, fault rates, the faults themselves) from one seed, runs a fault
//! phase with the safety checkers on after every step, then heals and requires liveness.

use proptest::prelude::*;

use crate::testing::raft_harness::{Cluster, Stats};

/// Schedules run by the deterministic sweep (on top of proptest's random seeds).
const SWEEP_SCHEDULES: u64 = 3000;

proptest! {
    // PROPTEST_CASES applies (256 by default).
    #![proptest_config(ProptestConfig::default())]

    #[test]
    fn random_schedules_are_safe_and_live(seed in any::<u64>()) {
        Cluster::run_schedule(seed);
    }
}

/// Seeds `0..SWEEP_SCHEDULES`: the same schedules on every run, so a failure names its seed,
/// and the faults they exercise are counted to show the harness is not calm by accident.
#[test]
fn schedule_sweep_is_safe_and_live() {
    let mut total = Stats::default();
    for seed in 0..SWEEP_SCHEDULES {
        let stats = std::panic::catch_unwind(|| Cluster::run_schedule(seed))
            .unwrap_or_else(|_| panic!("schedule seed {seed} failed (rerun: SEED={seed} cargo test -p sluice-core --lib debug_seed -- --ignored --nocapture)"));
        total.add(&stats);
    }
    eprintln!("{SWEEP_SCHEDULES} schedules: {total:?}");
    assert!(total.leaders_elected > SWEEP_SCHEDULES);
    assert!(total.crashes > 1000 && total.writes_lost > 100);
    assert!(total.truncations > 100, "divergent suffixes were cut");
    assert!(total.snapshots_installed > 50);
    assert!(total.conf_changes > 500 && total.transfers > 100);
    assert!(total.messages_dropped > 0 && total.messages_duplicated > 0);
}

#[test]
fn a_schedule_replays_exactly() {
    for seed in [1, 99, 12345] {
        assert_eq!(Cluster::run_schedule(seed), Cluster::run_schedule(seed));
    }
    assert_ne!(
        Cluster::run_schedule(1).trace,
        Cluster::run_schedule(2).trace
    );
}

/// Replays one seed with every delivery printed:
/// `SEED=n cargo test -p sluice-core --lib debug_seed -- --ignored --nocapture`.
#[test]
#[ignore]
fn debug_seed() {
    let seed = std::env::var("SEED").expect("SEED").parse().expect("a u64");
    Cluster::run_schedule_verbose(seed, true);
}

/// A longer hunt, opt-in: `SCHEDULES=200000 [FIRST_SEED=n] cargo test --release -p sluice-core
/// --lib long_schedule_sweep -- --ignored --nocapture`.
#[test]
#[ignore]
fn long_schedule_sweep() {
    let count: u64 = std::env::var("SCHEDULES").map_or(100_000, |s| s.parse().expect("a u64"));
    let first: u64 = std::env::var("FIRST_SEED").map_or(1_000_000, |s| s.parse().expect("a u64"));
    let mut total = Stats::default();
    for seed in first..first + count {
        let stats = std::panic::catch_unwind(|| Cluster::run_schedule(seed))
            .unwrap_or_else(|_| panic!("schedule seed {seed} failed"));
        if stats.liveness_ticks > 250 {
            eprintln!("seed {seed}: liveness took {} ticks", stats.liveness_ticks);
        }
        total.add(&stats);
    }
    eprintln!("{count} schedules from seed {first}: {total:?}");
}
