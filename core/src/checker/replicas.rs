//! Cluster checkers over what the replicas of Raft groups report while they run (the simulator
//! feeds them; a replica reports through its host's observer hook):
//!
//! - **election safety:** at most one leader per term per group.
//! - **committed agreement:** no two replicas ever hold different committed entries at one
//!   offset, and no replica's committed entry ever changes (Raft's State Machine Safety, checked
//!   on the terms of committed entries: every entry carries its term as its batch's leader epoch,
//!   so two replicas whose committed prefixes have the same epoch runs hold the same entries by
//!   Raft's Log Matching). Byte-level agreement is checked at the end of a run from the
//!   replicas' storage (`sim`).

use std::collections::BTreeMap;
use std::fmt;

/// What a replica reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Observation {
    /// `node` became the leader of `group` in `term`.
    Leader { group: String, node: u64, term: u64 },
    /// `node`'s committed prefix of `group` is `[log_start, end)`, and `epochs` are its log's
    /// epoch runs as `(epoch, start offset)`, oldest first (runs may go past `end`).
    Committed {
        group: String,
        node: u64,
        log_start: u64,
        end: u64,
        epochs: Vec<(i32, u64)>,
    },
    /// `node`'s replica of `group` entered (`repairing`) or left repair mode: it lost data it
    /// may have acknowledged, and neither votes nor campaigns until it holds every committed
    /// entry again (protocol-aware recovery). The nemesis damages no other replica meanwhile.
    Repair {
        group: String,
        node: u64,
        repairing: bool,
    },
}

/// A broken cluster property, with what showed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub group: String,
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "group {}: {}", self.group, self.detail)
    }
}

/// At most this many violations are kept per group (all are counted), so a host that excuses a
/// group (a damaged disk on one node) still sees every other group's.
const VIOLATIONS_KEPT_PER_GROUP_MAX: usize = 20;

/// The longest committed prefix reported for a group: epoch runs over `[start, end)`.
#[derive(Debug, Default)]
struct Committed {
    start: u64,
    end: u64,
    /// Run start offset -> (epoch, the node that reported it).
    runs: BTreeMap<u64, (i32, u64)>,
}

fn epoch_at<V: Copy>(runs: &BTreeMap<u64, V>, offset: u64) -> Option<V> {
    runs.range(..=offset).next_back().map(|(_, v)| *v)
}

/// Feeds on [`Observation`]s; [`violations`](Self::violations) says what broke.
#[derive(Debug, Default)]
pub struct ReplicaChecker {
    /// (group, term) -> the node that led it.
    leaders: BTreeMap<(String, u64), u64>,
    committed: BTreeMap<String, Committed>,
    /// (group, node) -> the end of the node's committed prefix, as last reported.
    ends: BTreeMap<(String, u64), u64>,
    violations: Vec<Violation>,
    violation_count: u64,
    observations: u64,
    repairing: std::collections::BTreeSet<(String, u64)>,
    repairs_started: u64,
}

impl ReplicaChecker {
    pub fn new() -> ReplicaChecker {
        ReplicaChecker::default()
    }

    pub fn observe(&mut self, observation: Observation) {
        self.observations += 1;
        match observation {
            Observation::Leader { group, node, term } => {
                match self.leaders.get(&(group.clone(), term)) {
                    Some(first) if *first != node => {
                        let detail =
                            format!("two leaders in term {term}: nodes {first} and {node}");
                        self.violate(group, detail);
                    }
                    Some(_) => {}
                    None => {
                        self.leaders.insert((group, term), node);
                    }
                }
            }
            Observation::Committed {
                group,
                node,
                log_start,
                end,
                epochs,
            } => self.committed(group, node, log_start, end, &epochs),
            Observation::Repair {
                group,
                node,
                repairing,
            } => {
                if repairing {
                    self.repairing.insert((group, node));
                    self.repairs_started += 1;
                } else {
                    self.repairing.remove(&(group, node));
                }
            }
        }
    }

    /// Replicas in repair mode now: (group, node).
    pub fn repairing(&self) -> &std::collections::BTreeSet<(String, u64)> {
        &self.repairing
    }

    /// How many repairs have started.
    pub fn repairs_started(&self) -> u64 {
        self.repairs_started
    }

    fn committed(&mut self, group: String, node: u64, start: u64, end: u64, epochs: &[(i32, u64)]) {
        self.ends.insert((group.clone(), node), end);
        if end <= start {
            return;
        }
        // The report's runs over [start, end): the run covering `start` begins there.
        let mut runs: BTreeMap<u64, i32> = BTreeMap::new();
        for (epoch, run_start) in epochs {
            if *run_start < end {
                runs.insert((*run_start).max(start), *epoch);
            }
        }
        if runs.is_empty() {
            return;
        }
        let reference = self.committed.entry(group.clone()).or_default();
        if reference.runs.is_empty() {
            reference.start = start;
            reference.end = end;
            reference.runs = runs.iter().map(|(o, e)| (*o, (*e, node))).collect();
            return;
        }
        // Agreement on the overlap: both are step functions, so comparing at every step of
        // either (and at the overlap's start) compares them everywhere.
        let (lo, hi) = (start.max(reference.start), end.min(reference.end));
        let mut conflict = None;
        if lo < hi {
            let points = std::iter::once(lo)
                .chain(runs.range(lo..hi).map(|(o, _)| *o))
                .chain(reference.runs.range(lo..hi).map(|(o, _)| *o));
            for point in points {
                let (Some(mine), Some((theirs, by))) =
                    (epoch_at(&runs, point), epoch_at(&reference.runs, point))
                else {
                    continue;
                };
                if mine != theirs {
                    conflict = Some(format!(
                        "offset {point} committed in epoch {theirs} on node {by} and in epoch \
                         {mine} on node {node}"
                    ));
                    break;
                }
            }
        }
        // Extend the reference with what only this report covers.
        for (offset, epoch) in &runs {
            if *offset < reference.start || *offset >= reference.end {
                reference.runs.insert(*offset, (*epoch, node));
            }
        }
        if end > reference.end {
            if let Some(epoch) = epoch_at(&runs, reference.end) {
                reference.runs.entry(reference.end).or_insert((epoch, node));
            }
            reference.end = end;
        }
        if start < reference.start {
            reference.start = start;
        }
        if let Some(detail) = conflict {
            self.violate(group, detail);
        }
    }

    fn violate(&mut self, group: String, detail: String) {
        self.violation_count += 1;
        let kept = self.violations.iter().filter(|v| v.group == group).count();
        if kept < VIOLATIONS_KEPT_PER_GROUP_MAX {
            self.violations.push(Violation { group, detail });
        }
    }

    /// The first violations found (at most 20 per group).
    pub fn violations(&self) -> &[Violation] {
        &self.violations
    }

    pub fn violation_count(&self) -> u64 {
        self.violation_count
    }

    pub fn observations(&self) -> u64 {
        self.observations
    }

    /// How many (group, term) pairs had a leader.
    pub fn terms_led(&self) -> usize {
        self.leaders.len()
    }

    /// Where `node`'s committed prefix of `group` ended when it last reported.
    pub fn committed_end(&self, group: &str, node: u64) -> Option<u64> {
        self.ends.get(&(group.to_string(), node)).copied()
    }

    /// The leader of `group` in its highest term seen.
    pub fn latest_leader(&self, group: &str) -> Option<(u64, u64)> {
        self.leaders
            .range((group.to_string(), 0)..=(group.to_string(), u64::MAX))
            .next_back()
            .map(|((_, term), node)| (*term, *node))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn committed(node: u64, start: u64, end: u64, epochs: &[(i32, u64)]) -> Observation {
        Observation::Committed {
            group: "t-0".into(),
            node,
            log_start: start,
            end,
            epochs: epochs.to_vec(),
        }
    }

    fn leader(node: u64, term: u64) -> Observation {
        Observation::Leader {
            group: "t-0".into(),
            node,
            term,
        }
    }

    #[test]
    fn one_leader_per_term_passes_and_two_fail() {
        let mut c = ReplicaChecker::new();
        c.observe(leader(1, 1));
        c.observe(leader(1, 1));
        c.observe(leader(2, 2));
        assert!(c.violations().is_empty());
        assert_eq!(c.latest_leader("t-0"), Some((2, 2)));
        c.observe(leader(3, 2));
        assert_eq!(c.violation_count(), 1);
        assert!(c.violations()[0].detail.contains("two leaders in term 2"));
    }

    #[test]
    fn agreeing_prefixes_of_any_length_pass() {
        let mut c = ReplicaChecker::new();
        c.observe(committed(1, 0, 10, &[(1, 0), (2, 6)]));
        // A follower behind, one ahead with a later epoch past the old end, and one whose
        // log has runs beyond its commit that differ (uncommitted: not compared).
        c.observe(committed(2, 0, 5, &[(1, 0), (3, 5)]));
        c.observe(committed(3, 0, 20, &[(1, 0), (2, 6), (4, 12)]));
        c.observe(committed(1, 0, 20, &[(1, 0), (2, 6), (4, 12)]));
        assert!(c.violations().is_empty(), "{:?}", c.violations());
    }

    #[test]
    fn a_committed_offset_in_two_epochs_fails() {
        let mut c = ReplicaChecker::new();
        c.observe(committed(1, 0, 10, &[(1, 0), (2, 6)]));
        // Node 2 committed offsets 6.. in epoch 3: Figure 8's lost entry.
        c.observe(committed(2, 0, 12, &[(1, 0), (3, 6)]));
        assert_eq!(c.violation_count(), 1);
        assert!(
            c.violations()[0].detail.contains("offset 6"),
            "{}",
            c.violations()[0]
        );
    }

    #[test]
    fn a_change_inside_a_run_is_found_at_the_later_runs_start() {
        let mut c = ReplicaChecker::new();
        c.observe(committed(1, 0, 30, &[(1, 0), (2, 10)]));
        c.observe(committed(2, 0, 30, &[(1, 0), (2, 10), (5, 20)]));
        assert_eq!(c.violation_count(), 1);
        assert!(c.violations()[0].detail.contains("offset 20"));
    }

    #[test]
    fn reports_past_the_reference_extend_it_and_are_checked_later() {
        let mut c = ReplicaChecker::new();
        c.observe(committed(1, 0, 5, &[(1, 0)]));
        c.observe(committed(2, 0, 15, &[(1, 0), (2, 8)]));
        // The reference now covers 8..15 in epoch 2, learned from node 2.
        c.observe(committed(3, 0, 15, &[(1, 0), (3, 8)]));
        assert_eq!(c.violation_count(), 1);
        assert!(c.violations()[0].detail.contains("node 2"));
    }
}
