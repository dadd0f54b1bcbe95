//! Cluster checkers over what the replicas of Raft groups report while they run (the simulator
//! feeds them; a replica reports through its host's observer hook):
//!
//! - **election safety:** at most one leader per term per group.
//! - **leader completeness:** a leader elected in term `t` holds, when elected, every entry
//!   committed in a term before `t` (Raft's Leader Completeness). What a leader of term `v`
//!   reports committed was committed in a term at most `v` (a leader's commit index moves only
//!   by its own decisions, above what it inherited), so every leader of a later term must hold
//!   it, with the same epoch runs, above its own log start (retention may have removed what is
//!   below). A commit reported after a later term's leader was elected (a deposed leader whose
//!   majority acknowledged before voting) is checked against that leader's log as it was at its
//!   election.
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
    /// `node` became the leader of `group` in `term`. Its log as it was elected spans
    /// `[log_start, log_end)`, and `epochs` are its epoch runs as `(epoch, start offset)`, oldest
    /// first (the run of `term` itself may already be there: a new leader's first entry).
    Leader {
        group: String,
        node: u64,
        term: u64,
        log_start: u64,
        log_end: u64,
        epochs: Vec<(i32, u64)>,
    },
    /// `node`'s committed prefix of `group` is `[log_start, end)`, and `epochs` are its log's
    /// epoch runs as `(epoch, start offset)`, oldest first (runs may go past `end`).
    /// `leader_term` is the term `node` leads the group in as it reports (`None` for a
    /// follower): then everything below `end` was committed in a term at most that one.
    Committed {
        group: String,
        node: u64,
        log_start: u64,
        end: u64,
        epochs: Vec<(i32, u64)>,
        leader_term: Option<u64>,
    },
    /// `node`'s replica of `group` entered (`repairing`) or left repair mode: it lost data it
    /// may have acknowledged, and neither votes nor campaigns until it holds every committed
    /// entry again (protocol-aware recovery). The nemesis damages no other replica meanwhile.
    Repair {
        group: String,
        node: u64,
        repairing: bool,
    },
    /// `node` applied the metadata log below `applied_end`, and `image` is its metadata image
    /// as it holds it then (built incrementally, record by record, since the node started).
    /// Kept (the last per node) for [`super::images`], which compares it with a replay of the
    /// node's log from scratch; not counted as an observation.
    MetadataImage {
        node: u64,
        applied_end: u64,
        image: Box<crate::metadata::MetadataImage>,
    },
    /// `node`'s retention deleted segments of `group`'s log (judged by
    /// [`super::retention`], not here).
    Retention {
        group: String,
        node: u64,
        deletion: super::retention::Deletion,
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

/// A node's committed report: `[start, end)` in epoch runs.
#[derive(Debug)]
struct Report {
    start: u64,
    end: u64,
    epochs: Vec<(i32, u64)>,
}

/// A leader's log as it was elected, kept so that commits of earlier terms reported later can
/// still be checked against it.
#[derive(Debug)]
struct Elected {
    node: u64,
    log_start: u64,
    log_end: u64,
    /// Run start offset -> epoch, over `[log_start, log_end)`.
    runs: BTreeMap<u64, i32>,
    /// The offsets below this were checked against the commits of earlier terms.
    checked_end: u64,
}

fn epoch_at<V: Copy>(runs: &BTreeMap<u64, V>, offset: u64) -> Option<V> {
    runs.range(..=offset).next_back().map(|(_, v)| *v)
}

/// The runs of `epochs` over `[start, end)`: the run covering `start` begins there.
fn runs_over(start: u64, end: u64, epochs: &[(i32, u64)]) -> BTreeMap<u64, i32> {
    let mut runs = BTreeMap::new();
    for (epoch, run_start) in epochs {
        if *run_start < end {
            runs.insert((*run_start).max(start), *epoch);
        }
    }
    runs
}

/// Feeds on [`Observation`]s; [`violations`](Self::violations) says what broke.
#[derive(Debug, Default)]
pub struct ReplicaChecker {
    /// (group, term) -> the leader elected in it, with its log at election.
    leaders: BTreeMap<(String, u64), Elected>,
    committed: BTreeMap<String, Committed>,
    /// group -> (term -> the end of the longest committed prefix a leader of that term
    /// reported).
    decided: BTreeMap<String, BTreeMap<u64, u64>>,
    /// (group, node) -> the end of the node's committed prefix, as last reported.
    ends: BTreeMap<(String, u64), u64>,
    violations: Vec<Violation>,
    violation_count: u64,
    observations: u64,
    /// Committed ranges compared with a later term's leader's log (to show the check bites).
    completeness_checks: u64,
    repairing: std::collections::BTreeSet<(String, u64)>,
    repairs_started: u64,
    /// (group, node) -> its last committed report that was compared with (or added to) the
    /// reference.
    compared: BTreeMap<(String, u64), Report>,
    /// node -> (applied end, metadata image) as last reported.
    images: BTreeMap<u64, (u64, Box<crate::metadata::MetadataImage>)>,
}

impl ReplicaChecker {
    pub fn new() -> ReplicaChecker {
        ReplicaChecker::default()
    }

    /// Each node's last reported metadata image, with the applied end it was reported at.
    pub fn metadata_images(
        &self,
    ) -> impl Iterator<Item = (u64, u64, &crate::metadata::MetadataImage)> + '_ {
        self.images
            .iter()
            .map(|(node, (end, image))| (*node, *end, image.as_ref()))
    }

    pub fn observe(&mut self, observation: Observation) {
        if let Observation::MetadataImage {
            node,
            applied_end,
            image,
        } = observation
        {
            self.images.insert(node, (applied_end, image));
            return;
        }
        self.observations += 1;
        match observation {
            Observation::MetadataImage { .. } => unreachable!("kept above"),
            Observation::Leader {
                group,
                node,
                term,
                log_start,
                log_end,
                epochs,
            } => self.leader(group, node, term, log_start, log_end, &epochs),
            Observation::Committed {
                group,
                node,
                log_start,
                end,
                epochs,
                leader_term,
            } => {
                self.committed(group.clone(), node, log_start, end, &epochs);
                if let Some(term) = leader_term {
                    self.decided(group, term, end);
                }
            }
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
            Observation::Retention { .. } => {}
        }
    }

    fn leader(
        &mut self,
        group: String,
        node: u64,
        term: u64,
        log_start: u64,
        log_end: u64,
        epochs: &[(i32, u64)],
    ) {
        assert!(log_start <= log_end, "a leader's log ends before it starts");
        match self.leaders.get(&(group.clone(), term)) {
            Some(first) if first.node != node => {
                let detail = format!(
                    "two leaders in term {term}: nodes {} and {node}",
                    first.node
                );
                self.violate(group, detail);
            }
            Some(_) => {}
            None => {
                let elected = Elected {
                    node,
                    log_start,
                    log_end,
                    runs: runs_over(log_start, log_end, epochs),
                    checked_end: 0,
                };
                self.leaders.insert((group.clone(), term), elected);
                // Everything leaders of earlier terms reported committed (so far: later
                // reports of theirs are checked as they come, in `decided`).
                let decided_end = self
                    .decided
                    .get(&group)
                    .and_then(|by_term| by_term.range(..term).map(|(_, end)| *end).max());
                if let Some(end) = decided_end {
                    self.check_complete(&group, term, end);
                }
            }
        }
    }

    /// A leader of `term` reported `[.., end)` committed: every leader of a later term must
    /// hold it.
    fn decided(&mut self, group: String, term: u64, end: u64) {
        let longest = self
            .decided
            .entry(group.clone())
            .or_default()
            .entry(term)
            .or_insert(0);
        if end <= *longest {
            return;
        }
        *longest = end;
        // Usually none: a leader reports commits while it leads the latest term.
        let later: Vec<u64> = self
            .leaders
            .range((group.clone(), term.saturating_add(1))..=(group.clone(), u64::MAX))
            .map(|((_, t), _)| *t)
            .collect();
        for t in later {
            self.check_complete(&group, t, end);
        }
    }

    /// Leader completeness: the leader of `term`, as elected, holds the reference's committed
    /// entries below `end` (committed in earlier terms) with the same epochs, above its log
    /// start.
    fn check_complete(&mut self, group: &str, term: u64, end: u64) {
        let Some(elected) = self.leaders.get_mut(&(group.to_string(), term)) else {
            return;
        };
        if end <= elected.checked_end {
            return;
        }
        let from = std::mem::replace(&mut elected.checked_end, end);
        let Some(reference) = self.committed.get(group) else {
            return;
        };
        let lo = from.max(elected.log_start).max(reference.start);
        let hi = end.min(reference.end);
        if lo >= hi {
            return;
        }
        self.completeness_checks += 1;
        // Where both logs exist, compare them at every step of either (and at `lo`), as the
        // agreement check does; then the leader must not end before the committed range.
        // The leader's log may end before `lo` (then nothing is held to compare).
        let held = hi.min(elected.log_end).max(lo);
        let points = std::iter::once(lo)
            .chain(elected.runs.range(lo..held).map(|(o, _)| *o))
            .chain(reference.runs.range(lo..held).map(|(o, _)| *o));
        let mut detail = None;
        for point in points.filter(|p| *p < held) {
            let (Some(mine), Some((theirs, by))) = (
                epoch_at(&elected.runs, point),
                epoch_at(&reference.runs, point),
            ) else {
                continue;
            };
            if mine != theirs {
                detail = Some(format!(
                    "node {} was elected leader in term {term} holding offset {point} in epoch \
                     {mine}, but it was committed in epoch {theirs} (node {by}) in an earlier term",
                    elected.node
                ));
                break;
            }
        }
        if detail.is_none() && elected.log_end < hi {
            detail = Some(format!(
                "node {} was elected leader in term {term} with its log ending at offset {}, \
                 but offsets up to {} were committed in earlier terms",
                elected.node,
                elected.log_end,
                hi - 1
            ));
        }
        if let Some(detail) = detail {
            self.violate(group.to_string(), detail);
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
        let runs = runs_over(start, end, epochs);
        if runs.is_empty() {
            return;
        }
        // What this node's previous report already settled: `[start, its end)` lay inside the
        // reference afterwards (compared with it, or added from it), and the reference never
        // changes inside its range. So if this report starts at the same offset and has the same
        // epoch runs below that end, only the offsets from there on are new.
        let key = (group.clone(), node);
        let settled = match self.compared.get(&key) {
            Some(seen)
                if seen.start == start
                    && seen
                        .epochs
                        .iter()
                        .filter(|(_, s)| *s < seen.end)
                        .eq(epochs.iter().filter(|(_, s)| *s < seen.end)) =>
            {
                seen.end
            }
            _ => start,
        };
        self.compared.insert(
            key,
            Report {
                start,
                end,
                epochs: epochs.to_vec(),
            },
        );
        let reference = self.committed.entry(group.clone()).or_default();
        if reference.runs.is_empty() {
            reference.start = start;
            reference.end = end;
            reference.runs = runs.iter().map(|(o, e)| (*o, (*e, node))).collect();
            return;
        }
        // Agreement on the overlap: both are step functions, so comparing at every step of
        // either (and at the overlap's start) compares them everywhere.
        let (lo, hi) = (
            start.max(reference.start).max(settled),
            end.min(reference.end),
        );
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

    /// How many committed ranges were compared with a later term's leader's log as elected.
    pub fn completeness_checks(&self) -> u64 {
        self.completeness_checks
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
            .map(|((_, term), elected)| (*term, elected.node))
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
            leader_term: None,
        }
    }

    /// What the leader of `term` reports committed.
    fn decided(node: u64, term: u64, end: u64, epochs: &[(i32, u64)]) -> Observation {
        Observation::Committed {
            group: "t-0".into(),
            node,
            log_start: 0,
            end,
            epochs: epochs.to_vec(),
            leader_term: Some(term),
        }
    }

    fn leader(node: u64, term: u64) -> Observation {
        elected(node, term, 0, 0, &[])
    }

    /// `node` elected in `term` with its log `[log_start, log_end)` in `epochs`.
    fn elected(
        node: u64,
        term: u64,
        log_start: u64,
        log_end: u64,
        epochs: &[(i32, u64)],
    ) -> Observation {
        Observation::Leader {
            group: "t-0".into(),
            node,
            term,
            log_start,
            log_end,
            epochs: epochs.to_vec(),
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

    /// A node's later report is compared only where it is new, unless its start or its epoch
    /// runs below its previous end changed: then all of it is compared again.
    #[test]
    fn a_node_that_rewrites_its_own_committed_prefix_fails() {
        let mut c = ReplicaChecker::new();
        c.observe(committed(1, 0, 10, &[(1, 0), (2, 6)]));
        c.observe(committed(2, 0, 4, &[(1, 0)]));
        c.observe(committed(2, 0, 8, &[(1, 0), (2, 6)]));
        assert!(c.violations().is_empty(), "{:?}", c.violations());
        // Node 2 now says offsets 2.. are of epoch 3: below the end it reported before.
        c.observe(committed(2, 0, 12, &[(1, 0), (3, 2)]));
        assert_eq!(c.violation_count(), 1);
        assert!(
            c.violations()[0].detail.contains("offset 2"),
            "{}",
            c.violations()[0]
        );
        // Same runs, a later start (retention): compared again, and still agrees elsewhere.
        let mut c = ReplicaChecker::new();
        c.observe(committed(1, 0, 10, &[(1, 0), (2, 6)]));
        c.observe(committed(2, 0, 10, &[(1, 0), (2, 6)]));
        c.observe(committed(2, 3, 12, &[(1, 0), (2, 6)]));
        assert!(c.violations().is_empty(), "{:?}", c.violations());
        // A node whose earlier report was judged keeps being judged where it is new.
        c.observe(committed(3, 0, 10, &[(1, 0), (2, 6)]));
        c.observe(committed(1, 0, 14, &[(1, 0), (2, 6), (5, 12)]));
        c.observe(committed(3, 0, 14, &[(1, 0), (2, 6), (4, 12)]));
        assert_eq!(c.violation_count(), 1);
        assert!(
            c.violations()[0].detail.contains("offset 12"),
            "{}",
            c.violations()[0]
        );
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

    #[test]
    fn leaders_holding_every_earlier_commit_pass() {
        let mut c = ReplicaChecker::new();
        c.observe(elected(1, 1, 0, 0, &[]));
        c.observe(decided(1, 1, 10, &[(1, 0)]));
        // Holds the commit, an uncommitted tail of term 1 and its own first entry.
        c.observe(elected(2, 2, 0, 13, &[(1, 0), (2, 12)]));
        c.observe(decided(2, 2, 13, &[(1, 0), (2, 12)]));
        // Retention removed offsets below 11: only what is left is compared.
        c.observe(elected(3, 3, 11, 14, &[(1, 11), (2, 12), (3, 13)]));
        // Everything committed is gone from this one's log (below its start).
        c.observe(elected(1, 4, 14, 15, &[(4, 14)]));
        assert!(c.violations().is_empty(), "{:?}", c.violations());
        // Terms 2 and 3 were compared; term 4's leader had nothing left to compare.
        assert_eq!(c.completeness_checks(), 2);
    }

    #[test]
    fn a_leader_missing_an_entry_committed_in_an_earlier_term_fails() {
        let mut c = ReplicaChecker::new();
        c.observe(elected(1, 1, 0, 0, &[]));
        c.observe(decided(1, 1, 10, &[(1, 0)]));
        c.observe(committed(2, 0, 10, &[(1, 0)]));
        // Node 3 missed offsets 6..10 and was elected anyway (a vote that ignored the log).
        c.observe(elected(3, 2, 0, 7, &[(1, 0), (2, 6)]));
        assert_eq!(c.violation_count(), 1, "{:?}", c.violations());
        let detail = &c.violations()[0].detail;
        assert!(detail.contains("offset 6 in epoch 2"), "{detail}");
    }

    #[test]
    fn a_leader_whose_log_ends_before_an_earlier_commit_fails() {
        let mut c = ReplicaChecker::new();
        c.observe(elected(1, 1, 0, 0, &[]));
        c.observe(decided(1, 1, 10, &[(1, 0)]));
        c.observe(elected(2, 3, 0, 4, &[(1, 0)]));
        assert_eq!(c.violation_count(), 1, "{:?}", c.violations());
        let detail = &c.violations()[0].detail;
        assert!(detail.contains("log ending at offset 4"), "{detail}");
        assert!(detail.contains("up to 9"), "{detail}");
    }

    #[test]
    fn a_leader_whose_log_ends_below_the_known_commits_fails() {
        let mut c = ReplicaChecker::new();
        c.observe(elected(1, 1, 0, 0, &[]));
        // Only offsets 5..10 were reported (the reporter's log starts at 5).
        c.observe(Observation::Committed {
            group: "t-0".into(),
            node: 1,
            log_start: 5,
            end: 10,
            epochs: vec![(1, 0)],
            leader_term: Some(1),
        });
        c.observe(elected(2, 2, 0, 3, &[(1, 0)]));
        assert_eq!(c.violation_count(), 1, "{:?}", c.violations());
        let detail = &c.violations()[0].detail;
        assert!(detail.contains("log ending at offset 3"), "{detail}");
    }

    #[test]
    fn commits_of_the_leaders_own_or_later_terms_are_not_required_of_it() {
        let mut c = ReplicaChecker::new();
        c.observe(elected(1, 2, 0, 5, &[(1, 0), (2, 4)]));
        // The leader of term 4 committed offsets 0..20, after term 3's leader (elected with
        // less, and deposed since) was elected: it owed none of them.
        c.observe(elected(2, 3, 0, 4, &[(1, 0)]));
        c.observe(elected(3, 4, 0, 6, &[(1, 0), (2, 4), (4, 5)]));
        c.observe(decided(3, 4, 20, &[(1, 0), (2, 4), (4, 5)]));
        // A follower's report says nothing about the term its entries were committed in.
        c.observe(committed(1, 0, 20, &[(1, 0), (2, 4), (4, 5)]));
        assert!(c.violations().is_empty(), "{:?}", c.violations());
    }

    #[test]
    fn a_commit_reported_after_a_later_leaders_election_is_checked_against_its_log_then() {
        let mut c = ReplicaChecker::new();
        c.observe(elected(1, 2, 0, 5, &[(1, 0), (2, 4)]));
        c.observe(decided(1, 2, 4, &[(1, 0), (2, 4)]));
        // Node 2 wins term 3 without offsets 4..8, which term 2's leader then reports
        // committed (a majority acknowledged them in term 2).
        c.observe(elected(2, 3, 0, 5, &[(1, 0), (3, 4)]));
        assert!(c.violations().is_empty(), "{:?}", c.violations());
        c.observe(decided(1, 2, 8, &[(1, 0), (2, 4)]));
        assert_eq!(c.violation_count(), 1, "{:?}", c.violations());
        let detail = &c.violations()[0].detail;
        assert!(
            detail.contains("term 3 holding offset 4 in epoch 3"),
            "{detail}"
        );
        // Checked once: the same commit reported again adds nothing.
        c.observe(decided(1, 2, 8, &[(1, 0), (2, 4)]));
        assert_eq!(c.violation_count(), 1);
    }
}
