//! Replica placement: which live brokers hold each new partition, preferred leader first.
//!
//! Greedy, one partition at a time, over the load of the whole cluster (replicas and preferred
//! leaderships per broker, counted across all topics and the partitions placed so far):
//!
//! 1. The leader is the live broker with the fewest preferred leaderships, then the fewest
//!    replicas.
//! 2. Each follower is the live broker not yet chosen with the fewest replicas, then the *most*
//!    leaderships (a broker that leads little will be wanted as a leader soon; using it as a
//!    follower now would overload it with replicas then), then one on a rack this partition
//!    does not use yet.
//! 3. Remaining ties go to a fixed order of the live brokers: shuffled by the seed, then
//!    interleaved by rack (first broker of each rack, then the second, ...).
//!
//! On a fresh cluster this keeps both the replica counts and the leader counts of any two
//! brokers within one of each other (a property test checks it); racks are best effort, after
//! balance.

use std::collections::BTreeMap;

use super::image::MetadataImage;
use super::record::{BrokerId, PartitionAssignment};
use crate::limits::TOPIC_REPLICAS_MAX;
use crate::rng::Rng;

/// Load and position of one live broker.
struct Candidate<'a> {
    node_id: BrokerId,
    rack: Option<&'a str>,
    replicas: u64,
    leaders: u64,
}

/// Places `partitions` new partitions of `replication_factor` replicas on the live brokers of
/// `image`. `None` if the factor is 0, above [`TOPIC_REPLICAS_MAX`] or above the number of
/// live brokers. A function of its arguments only.
pub fn place_replicas(
    image: &MetadataImage,
    partitions: usize,
    replication_factor: usize,
    seed: u64,
) -> Option<Vec<PartitionAssignment>> {
    let mut load: BTreeMap<BrokerId, (u64, u64)> = BTreeMap::new();
    for topic in image.topics() {
        for p in &topic.partitions {
            for id in &p.replicas {
                load.entry(*id).or_default().0 += 1;
            }
            load.entry(p.replicas[0]).or_default().1 += 1;
        }
    }
    let candidates: Vec<Candidate> = image
        .live_brokers()
        .map(|b| {
            let (replicas, leaders) = load.get(&b.node_id).copied().unwrap_or_default();
            Candidate {
                node_id: b.node_id,
                rack: b.rack.as_deref(),
                replicas,
                leaders,
            }
        })
        .collect();
    if replication_factor == 0
        || replication_factor > TOPIC_REPLICAS_MAX
        || replication_factor > candidates.len()
    {
        return None;
    }
    let candidates = &mut tie_break_order(candidates, seed);

    let mut placed = Vec::with_capacity(partitions);
    let mut chosen: Vec<usize> = Vec::with_capacity(replication_factor);
    for _ in 0..partitions {
        chosen.clear();
        let leader = (0..candidates.len())
            .min_by_key(|&i| (candidates[i].leaders, candidates[i].replicas, i))
            .expect("at least one live broker");
        chosen.push(leader);
        while chosen.len() < replication_factor {
            let follower = (0..candidates.len())
                .filter(|i| !chosen.contains(i))
                .min_by_key(|&i| {
                    let c = &candidates[i];
                    let rack_used =
                        c.rack.is_some() && chosen.iter().any(|&j| candidates[j].rack == c.rack);
                    (c.replicas, u64::MAX - c.leaders, rack_used, i)
                })
                .expect("replication factor <= live brokers");
            chosen.push(follower);
        }
        candidates[leader].leaders += 1;
        for &i in &chosen {
            candidates[i].replicas += 1;
        }
        placed.push(PartitionAssignment {
            replicas: chosen.iter().map(|&i| candidates[i].node_id).collect(),
        });
    }
    debug_assert!(placed
        .iter()
        .all(|p| p.replicas.len() == replication_factor));
    Some(placed)
}

/// Shuffles the candidates with the seed (Fisher-Yates), then interleaves racks: the first
/// broker of every rack in order of first appearance, then the second of each, and so on. A
/// broker without a rack is a rack of its own.
fn tie_break_order(candidates: Vec<Candidate>, seed: u64) -> Vec<Candidate> {
    let mut candidates = candidates;
    let mut rng = Rng::new(seed);
    for i in (1..candidates.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        candidates.swap(i, j);
    }
    // Per rack: (order of first appearance, brokers seen so far).
    let mut racks: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    let mut groups = 0;
    let mut keyed: Vec<((usize, usize), Candidate)> = Vec::with_capacity(candidates.len());
    for c in candidates {
        let key = match c.rack {
            None => {
                groups += 1;
                (0, groups - 1)
            }
            Some(rack) => {
                let entry = racks.entry(rack).or_insert_with(|| {
                    groups += 1;
                    (groups - 1, 0)
                });
                entry.1 += 1;
                (entry.1 - 1, entry.0)
            }
        };
        keyed.push((key, c));
    }
    keyed.sort_by_key(|(key, _)| *key);
    keyed.into_iter().map(|(_, c)| c).collect()
}
