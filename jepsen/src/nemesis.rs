//! The nemesis: a schedule of faults drawn from the run's seed (printed before the run starts),
//! then carried out against the real processes, network and file systems. Each fault heals
//! after its duration; at the end of the fault phase everything heals.
//!
//! Families (`--nemesis`): `kill` (kill -9 and restart), `pause` (SIGSTOP/SIGCONT),
//! `partition` (nftables: isolate a node, majority/minority, one-way, bridge, isolate a
//! partition's leader), `power-cut` (kill -9, drop every write the node did not fsync, restart;
//! one node or all at once), `bit-flip` (one replica: a bit of synced data of a partition's
//! log flipped while it is down), `all` (each fault drawn from every family above), and
//! `fail-fsync` (every fsync on the target nodes' file systems fails with EIO for a while).

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use sluice_core::rng::Rng;
use sluice_core::timeline::Band;

use crate::cluster::Cluster;
use crate::recorder::Recorder;
use crate::workload::keys;

/// At most this many faults in one schedule (a long run repeats the draws within it).
pub const FAULTS_MAX: usize = 10_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Kill,
    Pause,
    Partition,
    PowerCut,
    BitFlip,
    All,
    /// Not drawn by `all`, whose draws (and so its schedules per seed) stay as they were.
    FailFsync,
}

impl Family {
    /// In declaration order (`Family as usize` indexes it).
    pub const NAMES: [&'static str; 7] = [
        "kill",
        "pause",
        "partition",
        "power-cut",
        "bit-flip",
        "all",
        "fail-fsync",
    ];

    pub fn name(self) -> &'static str {
        Family::NAMES[self as usize]
    }

    pub fn from_name(name: &str) -> Option<Family> {
        Some(match name {
            "kill" => Family::Kill,
            "pause" => Family::Pause,
            "partition" => Family::Partition,
            "power-cut" => Family::PowerCut,
            "bit-flip" => Family::BitFlip,
            "all" => Family::All,
            "fail-fsync" => Family::FailFsync,
            _ => return None,
        })
    }
}

/// Which nodes a fault hits; resolved when it starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// One node drawn from the seed.
    One(usize),
    /// The leader of a key (drawn from the seed), as the client's metadata names it then.
    LeaderOf(usize),
    /// A minority: the first ⌊(N-1)/2⌋ nodes of a rotation drawn from the seed.
    Minority(usize),
    /// Every node.
    All,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    Kill(Target),
    Pause(Target),
    /// The target's nodes cut off from the rest, both ways (the client still reaches all).
    Isolate(Target),
    /// Packets from node `.0` to node `.1` dropped; the other way works.
    OneWay(usize, usize),
    /// Nodes `.0` and `.1` cannot talk; every other node talks to both.
    Bridge(usize, usize),
    PowerCut(Target),
    BitFlip(Target),
    /// Every fsync on the target's file systems fails with EIO (the data stays unsynced).
    FailFsync(Target),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::One(n) => write!(f, "n{n}"),
            Target::LeaderOf(k) => write!(f, "leader of {}", keys()[*k]),
            Target::Minority(r) => write!(f, "minority (rotation {r})"),
            Target::All => write!(f, "all nodes"),
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Kill(t) => write!(f, "kill -9 {t}"),
            Fault::Pause(t) => write!(f, "pause {t}"),
            Fault::Isolate(t) => write!(f, "isolate {t}"),
            Fault::OneWay(a, b) => write!(f, "drop n{a} -> n{b}"),
            Fault::Bridge(a, b) => write!(f, "bridge: n{a} x n{b}"),
            Fault::PowerCut(t) => write!(f, "power cut {t}"),
            Fault::BitFlip(t) => write!(f, "bit flip on {t}"),
            Fault::FailFsync(t) => write!(f, "failing fsyncs on {t}"),
        }
    }
}

/// One fault of the schedule: it starts `gap_ms` after the previous one healed and lasts
/// `duration_ms`.
#[derive(Clone, Copy, Debug)]
pub struct Step {
    pub gap_ms: u64,
    pub fault: Fault,
    pub duration_ms: u64,
}

/// Draws the schedule of `family` for `nodes` nodes and a fault phase of `phase_ms`.
pub fn schedule(family: Family, nodes: usize, phase_ms: u64, seed: u64) -> Vec<Step> {
    assert!(nodes >= 3, "faults need a majority to survive");
    let mut rng = Rng::new(seed ^ 0x6e65_6d65_7369_7300);
    let mut steps = Vec::new();
    let mut at_ms = 0;
    while steps.len() < FAULTS_MAX {
        let family = match family {
            Family::All => [
                Family::Kill,
                Family::Pause,
                Family::Partition,
                Family::PowerCut,
                Family::BitFlip,
            ][rng.below(5) as usize],
            f => f,
        };
        let node = |rng: &mut Rng| 1 + rng.below(nodes as u64) as usize;
        let target = |rng: &mut Rng| match rng.below(10) {
            0..=4 => Target::One(node(rng)),
            5..=7 => Target::LeaderOf(rng.below(keys().len() as u64) as usize),
            _ => Target::Minority(rng.below(nodes as u64) as usize),
        };
        let (fault, duration_ms) = match family {
            Family::Kill => (Fault::Kill(target(&mut rng)), rng.between(1_000, 8_000)),
            Family::Pause => (Fault::Pause(target(&mut rng)), rng.between(1_000, 10_000)),
            Family::Partition => {
                let fault = match rng.below(4) {
                    0 | 1 => Fault::Isolate(target(&mut rng)),
                    2 => {
                        let a = node(&mut rng);
                        let b = 1 + (a + rng.below(nodes as u64 - 1) as usize) % nodes;
                        Fault::OneWay(a, b)
                    }
                    _ => {
                        let a = node(&mut rng);
                        let b = 1 + (a + rng.below(nodes as u64 - 1) as usize) % nodes;
                        Fault::Bridge(a, b)
                    }
                };
                (fault, rng.between(2_000, 12_000))
            }
            Family::PowerCut => {
                // Every node at once half the time: only a coordinated power loss can lose a
                // write that every replica holds unsynced.
                let t = if rng.chance(500) {
                    Target::All
                } else {
                    target(&mut rng)
                };
                (Fault::PowerCut(t), rng.between(500, 4_000))
            }
            Family::BitFlip => (
                Fault::BitFlip(Target::One(node(&mut rng))),
                rng.between(500, 3_000),
            ),
            Family::FailFsync => (
                Fault::FailFsync(target(&mut rng)),
                rng.between(1_000, 6_000),
            ),
            Family::All => unreachable!("drawn above"),
        };
        let gap_ms = rng.between(2_000, 6_000);
        at_ms += gap_ms + duration_ms;
        if at_ms > phase_ms {
            break;
        }
        steps.push(Step {
            gap_ms,
            fault,
            duration_ms,
        });
    }
    steps
}

/// The nodes `target` names now.
fn resolve(target: Target, cluster: &Cluster, metadata: &BaseConsumer) -> Vec<usize> {
    let n = cluster.len();
    match target {
        Target::One(i) => vec![i],
        Target::All => (1..=n).collect(),
        Target::Minority(r) => (0..(n - 1) / 2).map(|k| 1 + (r + k) % n).collect(),
        Target::LeaderOf(k) => {
            let key = &keys()[k];
            let leader = metadata
                .fetch_metadata(Some(&key.topic), Duration::from_secs(2))
                .ok()
                .and_then(|m| {
                    m.topics()
                        .first()
                        .and_then(|t| t.partitions().iter().find(|p| p.id() == key.partition))
                        .map(|p| p.leader())
                });
            match leader {
                Some(l) if (1..=n as i32).contains(&l) => vec![l as usize],
                // No leader known: the key's partition number picks one.
                _ => vec![1 + (k % n)],
            }
        }
    }
}

/// Sleeps `ms`, in steps, unless `stop` is set; returns false if it was.
pub fn sleep_unless(stop: &AtomicBool, ms: u64) -> bool {
    let mut left = ms;
    while left > 0 {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        let step = left.min(100);
        std::thread::sleep(Duration::from_millis(step));
        left -= step;
    }
    !stop.load(Ordering::Relaxed)
}

/// Carries out `steps` until they end or `stop` is set, then heals everything. Returns the
/// bands (what ran when, on which nodes).
pub fn run(
    steps: &[Step],
    cluster: &Arc<Mutex<Cluster>>,
    recorder: &Recorder,
    stop: &AtomicBool,
    bootstrap: &str,
    seed: u64,
) -> Vec<Band> {
    let metadata: BaseConsumer = crate::workload::metadata_client(bootstrap);
    let mut rng = Rng::new(seed ^ 0xb17f_11b5);
    let mut bands = Vec::new();
    for step in steps {
        if !sleep_unless(stop, step.gap_ms) {
            break;
        }
        let start_ms = recorder.now_ms();
        let nodes = {
            let c = cluster.lock().expect("cluster lock");
            match step.fault {
                Fault::Kill(t)
                | Fault::Pause(t)
                | Fault::Isolate(t)
                | Fault::PowerCut(t)
                | Fault::BitFlip(t)
                | Fault::FailFsync(t) => resolve(t, &c, &metadata),
                Fault::OneWay(a, b) | Fault::Bridge(a, b) => vec![a, b],
            }
        };
        let detail = apply(step.fault, &nodes, cluster, &mut rng);
        recorder.event(format!("nemesis: {} -> {detail}", step.fault));
        let completed = sleep_unless(stop, step.duration_ms);
        let healed = heal(step.fault, &nodes, cluster);
        recorder.event(format!("nemesis: healed {} ({healed})", step.fault));
        bands.push(Band {
            kind: kind_name(step.fault).to_string(),
            start_ms,
            end_ms: recorder.now_ms(),
            detail: format!("{}: {detail}", step.fault),
        });
        if !completed {
            break;
        }
    }
    bands
}

fn kind_name(fault: Fault) -> &'static str {
    match fault {
        Fault::Kill(_) => "kill",
        Fault::Pause(_) => "pause",
        Fault::Isolate(_) | Fault::OneWay(..) | Fault::Bridge(..) => "partition",
        Fault::PowerCut(_) => "power-cut",
        Fault::BitFlip(_) => "bit-flip",
        Fault::FailFsync(_) => "fail-fsync",
    }
}

fn names(nodes: &[usize]) -> String {
    nodes
        .iter()
        .map(|n| format!("n{n}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Starts `fault` on `nodes`; returns what it did.
fn apply(fault: Fault, nodes: &[usize], cluster: &Arc<Mutex<Cluster>>, rng: &mut Rng) -> String {
    let mut c = cluster.lock().expect("cluster lock");
    match fault {
        Fault::Kill(_) => {
            for &n in nodes {
                c.kill(n);
            }
            format!("killed {}", names(nodes))
        }
        Fault::Pause(_) => {
            for &n in nodes {
                c.pause(n);
            }
            format!("paused {}", names(nodes))
        }
        Fault::Isolate(_) => {
            let rest: Vec<usize> = (1..=c.len()).filter(|n| !nodes.contains(n)).collect();
            match c.net().partition(&[nodes.to_vec(), rest.clone()]) {
                Ok(()) => format!("{} | {}", names(nodes), names(&rest)),
                Err(e) => format!("partition failed: {e}"),
            }
        }
        Fault::OneWay(a, b) => match c.net().cut(a, b) {
            Ok(()) => format!("n{a} -> n{b} dropped"),
            Err(e) => format!("cut failed: {e}"),
        },
        Fault::Bridge(a, b) => {
            let first = c.net().cut(a, b);
            let second = c.net().cut(b, a);
            match first.and(second) {
                Ok(()) => format!("n{a} x n{b}"),
                Err(e) => format!("cut failed: {e}"),
            }
        }
        Fault::PowerCut(_) => {
            let mut parts = Vec::new();
            for &n in nodes {
                c.kill(n);
            }
            for &n in nodes {
                match c.fs(n).drop_unsynced() {
                    Ok(d) => parts.push(format!(
                        "n{n}: {} bytes of {} files dropped, {} entries removed, {} restored, {} lost",
                        d.bytes_dropped,
                        d.files_restored,
                        d.entries_removed,
                        d.entries_restored,
                        d.entries_lost
                    )),
                    Err(e) => parts.push(format!("n{n}: the power cut failed: {e}")),
                }
            }
            format!("power cut: {}", parts.join("; "))
        }
        Fault::FailFsync(_) => {
            for &n in nodes {
                c.fs(n).set_fail_fsync(true);
            }
            format!("fsyncs fail on {}", names(nodes))
        }
        Fault::BitFlip(_) => {
            let mut parts = Vec::new();
            for &n in nodes {
                c.kill(n);
                let seed = rng.next_u64();
                let pick = |p: &std::path::Path| {
                    // A partition's log segment of the workload's topics (not the metadata log:
                    // its damage is the subject of the simulator's replica-damage fault).
                    p.extension().is_some_and(|e| e == "log")
                        && p.to_string_lossy().contains("jepsen-")
                };
                match c.fs(n).flip_bit(seed, &pick) {
                    Ok(Some(f)) => parts.push(format!(
                        "n{n}: bit {} of byte {} of {} flipped",
                        f.bit,
                        f.offset,
                        f.path.display()
                    )),
                    Ok(None) => parts.push(format!("n{n}: no synced data to flip")),
                    Err(e) => parts.push(format!("n{n}: the bit flip failed: {e}")),
                }
            }
            parts.join("; ")
        }
    }
}

/// Ends `fault`; returns what it did.
fn heal(fault: Fault, nodes: &[usize], cluster: &Arc<Mutex<Cluster>>) -> String {
    let mut c = cluster.lock().expect("cluster lock");
    match fault {
        Fault::Kill(_) | Fault::PowerCut(_) | Fault::BitFlip(_) => {
            let mut errors = Vec::new();
            for &n in nodes {
                if !c.is_running(n) {
                    if let Err(e) = c.start_node(n) {
                        errors.push(format!("n{n}: {e}"));
                    }
                }
            }
            if errors.is_empty() {
                format!("restarted {}", names(nodes))
            } else {
                format!("restart failed: {}", errors.join("; "))
            }
        }
        Fault::Pause(_) => {
            for &n in nodes {
                c.resume(n);
            }
            format!("resumed {}", names(nodes))
        }
        Fault::FailFsync(_) => {
            for &n in nodes {
                c.fs(n).set_fail_fsync(false);
            }
            format!("fsyncs work again on {}", names(nodes))
        }
        Fault::Isolate(_) | Fault::OneWay(..) | Fault::Bridge(..) => match c.net().heal() {
            Ok(()) => "network healed".into(),
            Err(e) => format!("heal failed: {e}"),
        },
    }
}

/// Heals everything at the end of the fault phase: the network, paused and dead nodes.
pub fn heal_all(cluster: &Arc<Mutex<Cluster>>) -> Result<(), String> {
    let mut c = cluster.lock().expect("cluster lock");
    c.net().heal().map_err(|e| format!("network heal: {e}"))?;
    c.revive_all().map_err(|e| format!("restart: {e}"))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn nodes_named(fault: Fault) -> Vec<usize> {
        match fault {
            Fault::OneWay(a, b) | Fault::Bridge(a, b) => vec![a, b],
            Fault::Kill(Target::One(n))
            | Fault::Pause(Target::One(n))
            | Fault::Isolate(Target::One(n))
            | Fault::PowerCut(Target::One(n))
            | Fault::BitFlip(Target::One(n))
            | Fault::FailFsync(Target::One(n)) => vec![n],
            _ => vec![],
        }
    }

    #[test]
    fn a_schedule_is_a_function_of_its_seed_and_fits_the_phase() {
        for family in [
            Family::Kill,
            Family::Pause,
            Family::Partition,
            Family::PowerCut,
            Family::BitFlip,
            Family::All,
            Family::FailFsync,
        ] {
            for nodes in [3, 5] {
                let steps = schedule(family, nodes, 120_000, 7);
                assert_eq!(
                    format!("{steps:?}"),
                    format!("{:?}", schedule(family, nodes, 120_000, 7))
                );
                assert!(steps.len() >= 5, "{family:?}: {}", steps.len());
                let total: u64 = steps.iter().map(|s| s.gap_ms + s.duration_ms).sum();
                assert!(total <= 120_000, "{family:?}: {total} ms");
                for s in &steps {
                    let named = nodes_named(s.fault);
                    assert!(named.iter().all(|n| (1..=nodes).contains(n)), "{}", s.fault);
                    if let [a, b] = named[..] {
                        assert_ne!(a, b, "{}", s.fault);
                    }
                }
            }
        }
        assert_ne!(
            format!("{:?}", schedule(Family::All, 3, 120_000, 1)),
            format!("{:?}", schedule(Family::All, 3, 120_000, 2))
        );
    }

    #[test]
    fn all_draws_from_every_family() {
        let kinds: BTreeSet<&str> = schedule(Family::All, 5, 3_600_000, 3)
            .iter()
            .map(|s| kind_name(s.fault))
            .collect();
        assert_eq!(
            kinds.into_iter().collect::<Vec<_>>(),
            ["bit-flip", "kill", "partition", "pause", "power-cut"]
        );
    }
}
