//! Consumer-group checkers: what the coordinator handed the members of a group and what it
//! stored for them, judged from the [`GroupOp`]s of a history (and the polls of the members'
//! processes).
//!
//! Per group and partition (a *group-key*), by the names [`AnomalyKind::name`] reports:
//! - group-double-owner: in one generation the partition was handed to two members (two `Ok`
//!   joins of the same generation whose assignments share it).
//! - group-commit-regressed: an acknowledged commit below an acknowledged commit that completed
//!   before it was invoked. Concurrent commits may land in either order, so only operations
//!   that do not overlap in time are compared.
//! - group-lost-commit: an OffsetFetch that returned less than (or nothing instead of) a commit
//!   acknowledged before the fetch was invoked: an acknowledged commit was lost, and the next
//!   owner would consume from an older offset.
//! - group-unknown-commit: an OffsetFetch that returned an offset no commit that may have taken
//!   effect (acknowledged or indeterminate, invoked before the fetch completed) wrote.
//! - group-commit-above-hw: an acknowledged commit, or an offset OffsetFetch returned, above the
//!   partition's high watermark (the highest any fetch reported, [`GroupOp::HighWatermarks`]).
//! - group-wrong-start: a member that did not start consuming where the committed offset says:
//!   its first fetch position is not the offset OffsetFetch returned, or its first read of the
//!   partition afterwards lies below that position or skips an offset known to hold a value
//!   (read by anyone, or acknowledged with acks=all) at or above it.
//!
//! An explicit reset ([`GroupOp::Reset`], `auto.offset.reset` after OFFSET_OUT_OF_RANGE) lets
//! the group-key's later commits go below the earlier ones: commits that completed before the
//! latest reset preceding an operation are not compared with it.

use std::collections::{BTreeMap, BTreeSet};

use super::{list, AnomalyKind, Findings, Stats};
use crate::history::{Acks, GroupOp, History, Key, OpKind, Outcome};

/// A group and one of its partitions.
type GroupKey<'h> = (&'h str, &'h Key);

/// (group, generation, partition) -> the (member, op) of every `Ok` join that handed it out.
type Owners<'h> = BTreeMap<(&'h str, i32, &'h Key), Vec<(&'h str, usize)>>;

/// One commit of a group-key.
#[derive(Clone, Copy, Debug)]
struct Commit {
    op: usize,
    offset: u64,
    invoke_ms: u64,
    complete_ms: u64,
    acked: bool,
}

/// One `Ok` OffsetFetch answer for a group-key.
#[derive(Clone, Copy, Debug)]
struct Fetched {
    op: usize,
    committed: Option<u64>,
    invoke_ms: u64,
    complete_ms: u64,
}

/// Everything the history says about one group-key.
#[derive(Default)]
struct GroupKeyFacts {
    commits: Vec<Commit>,
    fetched: Vec<Fetched>,
    /// Times of explicit resets, ascending.
    resets_ms: Vec<u64>,
}

/// The acknowledged commits of a group-key in completion order, with running maxima that
/// restart after each reset, to find the highest commit acknowledged in `(latest reset, t)`.
struct AckedOrder {
    /// (complete_ms, offset, op), ascending by completion.
    acked: Vec<(u64, u64, usize)>,
    /// For each position: the (offset, op) of the highest commit from the segment's start (the
    /// first commit after the latest reset before it) up to it.
    running_max: Vec<(u64, usize)>,
    resets_ms: Vec<u64>,
}

impl AckedOrder {
    fn new(facts: &GroupKeyFacts) -> AckedOrder {
        let mut acked: Vec<(u64, u64, usize)> = facts
            .commits
            .iter()
            .filter(|c| c.acked)
            .map(|c| (c.complete_ms, c.offset, c.op))
            .collect();
        acked.sort_unstable();
        let mut running_max = Vec::with_capacity(acked.len());
        let mut best: Option<(u64, usize)> = None;
        let mut previous_reset = None;
        for &(complete_ms, offset, op) in &acked {
            let reset = latest_before(&facts.resets_ms, complete_ms);
            if reset != previous_reset {
                best = None;
                previous_reset = reset;
            }
            if best.is_none_or(|(max, _)| offset > max) {
                best = Some((offset, op));
            }
            running_max.push(best.expect("set above"));
        }
        debug_assert_eq!(running_max.len(), acked.len());
        AckedOrder {
            acked,
            running_max,
            resets_ms: facts.resets_ms.clone(),
        }
    }

    /// The highest commit acknowledged before `t_ms` and after the latest reset at or before
    /// `t_ms`.
    fn max_before(&self, t_ms: u64) -> Option<(u64, usize)> {
        let count = self
            .acked
            .partition_point(|&(complete_ms, _, _)| complete_ms < t_ms);
        let last = count.checked_sub(1)?;
        let reset = latest_before(&self.resets_ms, t_ms + 1);
        // The running maximum at `last` restarted at the latest reset before its completion; if
        // a reset came after it (and before `t_ms`), nothing in the window counts.
        if reset.is_some_and(|r| self.acked[last].0 <= r) {
            return None;
        }
        Some(self.running_max[last])
    }
}

/// The latest time in ascending `times` strictly before `t_ms`.
fn latest_before(times: &[u64], t_ms: u64) -> Option<u64> {
    let count = times.partition_point(|&t| t < t_ms);
    count.checked_sub(1).map(|i| times[i])
}

/// Judges every group operation of `history`; adds what it finds to `findings` and counts the
/// operations in `stats`.
pub(super) fn check(history: &History, stats: &mut Stats, findings: &mut Findings) {
    let mut facts: BTreeMap<GroupKey<'_>, GroupKeyFacts> = BTreeMap::new();
    let mut owners: Owners<'_> = BTreeMap::new();
    let mut high_watermarks: BTreeMap<&Key, u64> = BTreeMap::new();

    for op in &history.ops {
        let OpKind::Group(group_op) = &op.kind else {
            continue;
        };
        stats.group_ops += 1;
        match group_op {
            GroupOp::Join { group, outcome } => {
                stats.group_joins += 1;
                if let Outcome::Ok(assignment) = outcome {
                    for key in &assignment.keys {
                        owners
                            .entry((group.as_str(), assignment.generation, key))
                            .or_default()
                            .push((assignment.member.as_str(), op.index));
                    }
                }
            }
            GroupOp::Commit {
                group,
                offsets,
                outcome,
                ..
            } => {
                let counts = &mut stats.group_commits;
                match outcome {
                    Outcome::Ok(()) => counts.ok += 1,
                    Outcome::Fail(_) => counts.fail += 1,
                    Outcome::Info(_) => counts.info += 1,
                }
                if outcome.is_fail() {
                    continue; // Refused: it never took effect.
                }
                for (key, offset) in offsets {
                    facts
                        .entry((group.as_str(), key))
                        .or_default()
                        .commits
                        .push(Commit {
                            op: op.index,
                            offset: *offset,
                            invoke_ms: op.invoke_ms,
                            complete_ms: op.complete_ms,
                            acked: outcome.is_ok(),
                        });
                }
            }
            GroupOp::OffsetFetch { group, outcome, .. } => {
                stats.group_offset_fetches += 1;
                if let Outcome::Ok(positions) = outcome {
                    for position in positions {
                        facts
                            .entry((group.as_str(), &position.key))
                            .or_default()
                            .fetched
                            .push(Fetched {
                                op: op.index,
                                committed: position.committed,
                                invoke_ms: op.invoke_ms,
                                complete_ms: op.complete_ms,
                            });
                    }
                }
            }
            GroupOp::Reset { group, key, .. } => {
                stats.group_resets += 1;
                facts
                    .entry((group.as_str(), key))
                    .or_default()
                    .resets_ms
                    .push(op.invoke_ms);
            }
            GroupOp::Leave { .. } => stats.group_leaves += 1,
            GroupOp::Crash { .. } => stats.group_crashes += 1,
            GroupOp::HighWatermarks { marks } => {
                for (key, mark) in marks {
                    let entry = high_watermarks.entry(key).or_insert(0);
                    *entry = (*entry).max(*mark);
                }
            }
        }
    }

    check_owners(&owners, findings);
    for ((group, key), key_facts) in &mut facts {
        key_facts.resets_ms.sort_unstable();
        check_commits(
            group,
            key,
            key_facts,
            high_watermarks.get(key).copied(),
            findings,
        );
    }
    check_starts(history, findings);
}

/// group-double-owner.
fn check_owners(owners: &Owners<'_>, findings: &mut Findings) {
    for (&(group, generation, key), holders) in owners {
        let members: BTreeSet<&str> = holders.iter().map(|&(member, _)| member).collect();
        if members.len() < 2 {
            continue;
        }
        // The first op of each distinct member.
        let mut ops = Vec::new();
        let mut seen = BTreeSet::new();
        for &(member, op) in holders {
            if seen.insert(member) {
                ops.push(op);
            }
        }
        let names: Vec<&str> = members.into_iter().collect();
        let detail = format!(
            "group {group} generation {generation} handed the partition to {} members {}",
            names.len(),
            list(&names)
        );
        findings.push(AnomalyKind::DoubleOwner, key, detail, ops);
    }
}

/// group-commit-regressed, group-lost-commit, group-unknown-commit and group-commit-above-hw
/// for one group-key.
fn check_commits(
    group: &str,
    key: &Key,
    facts: &GroupKeyFacts,
    high_watermark: Option<u64>,
    findings: &mut Findings,
) {
    let order = AckedOrder::new(facts);

    // Acknowledged commits, in invocation order (ties by op), against what was acknowledged
    // before each was invoked.
    let mut by_invoke: Vec<&Commit> = facts.commits.iter().filter(|c| c.acked).collect();
    by_invoke.sort_by_key(|c| (c.invoke_ms, c.op));
    for commit in &by_invoke {
        if let Some((earlier, earlier_op)) = order.max_before(commit.invoke_ms) {
            if commit.offset < earlier {
                let detail = format!(
                    "group {group} committed offset {} (acknowledged), invoked after offset \
                     {earlier} was acknowledged",
                    commit.offset
                );
                let ops = vec![earlier_op, commit.op];
                findings.push(AnomalyKind::CommitRegressed, key, detail, ops);
            }
        }
        if let Some(mark) = high_watermark.filter(|m| commit.offset > *m) {
            let detail = format!(
                "group {group} committed offset {} (acknowledged), above the high watermark \
                 {mark}",
                commit.offset
            );
            findings.push(
                AnomalyKind::CommitAboveHighWatermark,
                key,
                detail,
                vec![commit.op],
            );
        }
    }

    // Offsets that some commit that may have taken effect wrote, by the time it was invoked.
    let mut written: Vec<(u64, u64)> = facts
        .commits
        .iter()
        .map(|c| (c.offset, c.invoke_ms))
        .collect();
    written.sort_unstable();
    let wrote = |offset: u64, by_ms: u64| {
        let from = written.partition_point(|&(o, _)| o < offset);
        written[from..]
            .iter()
            .take_while(|&&(o, _)| o == offset)
            .any(|&(_, invoke_ms)| invoke_ms <= by_ms)
    };

    for fetched in &facts.fetched {
        if let Some((earlier, earlier_op)) = order.max_before(fetched.invoke_ms) {
            if fetched.committed.is_none_or(|c| c < earlier) {
                let got = fetched
                    .committed
                    .map_or("no committed offset".to_string(), |c| format!("offset {c}"));
                let detail = format!(
                    "OffsetFetch of group {group} returned {got}, though offset {earlier} was \
                     acknowledged before it was invoked"
                );
                let ops = vec![earlier_op, fetched.op];
                findings.push(AnomalyKind::LostCommit, key, detail, ops);
            }
        }
        let Some(committed) = fetched.committed else {
            continue;
        };
        if !wrote(committed, fetched.complete_ms) {
            let detail = format!(
                "OffsetFetch of group {group} returned offset {committed}, which no commit wrote"
            );
            findings.push(AnomalyKind::UnknownCommit, key, detail, vec![fetched.op]);
        }
        if let Some(mark) = high_watermark.filter(|m| committed > *m) {
            let detail = format!(
                "OffsetFetch of group {group} returned offset {committed}, above the high \
                 watermark {mark}"
            );
            findings.push(
                AnomalyKind::CommitAboveHighWatermark,
                key,
                detail,
                vec![fetched.op],
            );
        }
    }
}

/// group-wrong-start: each member, after an OffsetFetch (or a reset), starts at the committed
/// offset (or the reset's target) and its first read of the partition is the first known value
/// at or after it.
fn check_starts(history: &History, findings: &mut Findings) {
    // Offsets known to hold a value: every read, and every acknowledged acks=all send (which
    // is committed, so it is in the log before anything above it becomes readable).
    let mut known: BTreeMap<&Key, BTreeSet<u64>> = BTreeMap::new();
    for op in &history.ops {
        match &op.kind {
            OpKind::Poll { reads, .. } | OpKind::FinalRead { reads, .. } => {
                for (key, pairs) in reads {
                    known
                        .entry(key)
                        .or_default()
                        .extend(pairs.iter().map(|&(o, _)| o));
                }
            }
            OpKind::Send {
                key,
                acks: Acks::All,
                outcome: Outcome::Ok(offset),
                ..
            } => {
                known.entry(key).or_default().insert(*offset);
            }
            _ => {}
        }
    }

    // (process, key) -> (group, start offset, the op that set it).
    let mut expected: BTreeMap<(u32, &Key), (&str, u64, usize)> = BTreeMap::new();
    for op in &history.ops {
        match &op.kind {
            OpKind::Group(GroupOp::OffsetFetch {
                group,
                outcome: Outcome::Ok(positions),
                ..
            }) => {
                clear_process(&mut expected, op.process);
                for p in positions {
                    if let Some(committed) = p.committed.filter(|c| *c != p.start) {
                        let detail = format!(
                            "process {} of group {group} started at offset {} although the \
                             committed offset was {committed}",
                            op.process, p.start
                        );
                        findings.push(AnomalyKind::WrongStart, &p.key, detail, vec![op.index]);
                    }
                    expected.insert((op.process, &p.key), (group.as_str(), p.start, op.index));
                }
            }
            OpKind::Group(GroupOp::Reset { group, key, to, .. }) => {
                expected.insert((op.process, key), (group.as_str(), *to, op.index));
            }
            OpKind::Group(
                GroupOp::Join { .. }
                | GroupOp::OffsetFetch { .. }
                | GroupOp::Leave { .. }
                | GroupOp::Crash { .. },
            ) => clear_process(&mut expected, op.process),
            OpKind::Poll { reads, .. } => {
                for (key, pairs) in reads {
                    let Some(&(first, _)) = pairs.first() else {
                        continue;
                    };
                    let Some((group, start, start_op)) = expected.remove(&(op.process, key)) else {
                        continue;
                    };
                    let skipped: Vec<u64> = match known.get(key) {
                        Some(k) if first > start => k.range(start..first).copied().collect(),
                        _ => Vec::new(),
                    };
                    if first < start {
                        let detail = format!(
                            "process {} of group {group} started at offset {start} but first \
                             read offset {first}",
                            op.process
                        );
                        let ops = vec![start_op, op.index];
                        findings.push(AnomalyKind::WrongStart, key, detail, ops);
                    } else if !skipped.is_empty() {
                        let detail = format!(
                            "process {} of group {group} started at offset {start} but first \
                             read offset {first}, skipping known offsets {}",
                            op.process,
                            list(&skipped)
                        );
                        let ops = vec![start_op, op.index];
                        findings.push(AnomalyKind::WrongStart, key, detail, ops);
                    }
                }
            }
            _ => {}
        }
    }
}

fn clear_process(expected: &mut BTreeMap<(u32, &Key), (&str, u64, usize)>, process: u32) {
    expected.retain(|&(p, _), _| p != process);
}

#[cfg(test)]
mod tests {
    use super::super::offsets::OffsetFacts;
    use super::super::{check, check_with_facts, AnomalyKind, CheckOptions, CheckReport};
    use crate::history::{Acks, Assignment, GroupOp, History, Key, OpKind, Outcome, Position};

    const GROUP: &str = "g";

    fn key(partition: i32) -> Key {
        Key::new("t", partition)
    }

    /// A history builder with a clock: each op takes 5 ms and the next starts 5 ms later, unless
    /// placed explicitly.
    struct Run {
        history: History,
    }

    impl Run {
        fn new() -> Run {
            Run {
                history: History::new(),
            }
        }

        fn now(&self) -> u64 {
            self.history.len() as u64 * 10
        }

        fn op(&mut self, process: u32, op: GroupOp) -> usize {
            let t = self.now();
            self.history.push(process, OpKind::Group(op), t, t + 5)
        }

        fn op_at(&mut self, process: u32, op: GroupOp, invoke_ms: u64, complete_ms: u64) -> usize {
            self.history
                .push(process, OpKind::Group(op), invoke_ms, complete_ms)
        }

        fn join(&mut self, process: u32, member: &str, generation: i32, partitions: &[i32]) {
            let assignment = Assignment {
                member: member.to_string(),
                generation,
                keys: partitions.iter().map(|p| key(*p)).collect(),
            };
            self.op(
                process,
                GroupOp::Join {
                    group: GROUP.to_string(),
                    outcome: Outcome::Ok(assignment),
                },
            );
        }

        fn commit(&self, member: &str, generation: i32, partition: i32, offset: u64) -> GroupOp {
            GroupOp::Commit {
                group: GROUP.to_string(),
                member: member.to_string(),
                generation,
                offsets: vec![(key(partition), offset)],
                outcome: Outcome::Ok(()),
            }
        }

        fn offset_fetch(
            &mut self,
            process: u32,
            member: &str,
            generation: i32,
            positions: &[(i32, Option<u64>, u64)],
        ) -> usize {
            let positions = positions
                .iter()
                .map(|&(p, committed, start)| Position {
                    key: key(p),
                    committed,
                    start,
                })
                .collect();
            self.op(
                process,
                GroupOp::OffsetFetch {
                    group: GROUP.to_string(),
                    member: member.to_string(),
                    generation,
                    outcome: Outcome::Ok(positions),
                },
            )
        }

        fn send(&mut self, partition: i32, value: u64, offset: u64) {
            let t = self.now();
            self.history.send(
                9,
                key(partition),
                value,
                Acks::All,
                Outcome::Ok(offset),
                t,
                t + 5,
            );
        }

        fn poll(&mut self, process: u32, partition: i32, pairs: &[(u64, u64)]) -> usize {
            let t = self.now();
            self.history
                .poll_key(process, &key(partition), pairs, t, t + 5)
        }

        fn check(&self) -> CheckReport {
            check(&self.history)
        }
    }

    /// The report's anomalies, which must all be of `kind`.
    fn only(report: &CheckReport, kind: AnomalyKind) -> Vec<String> {
        assert!(!report.is_valid(), "expected {kind}, got a valid report");
        for a in &report.anomalies {
            assert_eq!(a.kind, kind, "unexpected {a}; report: {report}");
        }
        report.anomalies.iter().map(|a| a.to_string()).collect()
    }

    /// Two members, a handover after a crash, commits and fetches that agree: valid.
    fn clean_run() -> Run {
        let mut run = Run::new();
        run.send(0, 1, 0);
        run.send(0, 2, 1);
        run.send(0, 3, 2);
        run.join(1, "a", 1, &[0]);
        run.join(2, "b", 1, &[1]);
        run.offset_fetch(1, "a", 1, &[(0, None, 0)]);
        run.poll(1, 0, &[(0, 1), (1, 2)]);
        let commit = run.commit("a", 1, 0, 2);
        run.op(1, commit);
        run.op(
            1,
            GroupOp::Crash {
                group: GROUP.into(),
            },
        );
        run.join(2, "b", 2, &[0, 1]);
        run.offset_fetch(2, "b", 2, &[(0, Some(2), 2), (1, None, 0)]);
        run.poll(2, 0, &[(2, 3)]);
        let commit = run.commit("b", 2, 0, 3);
        run.op(2, commit);
        run.op(
            3,
            GroupOp::HighWatermarks {
                marks: vec![(key(0), 3), (key(1), 0)],
            },
        );
        run
    }

    #[test]
    fn a_clean_group_history_is_valid() {
        let report = clean_run().check();
        assert!(report.is_valid(), "{report}");
        assert_eq!(report.stats.group_joins, 3);
        assert_eq!(report.stats.group_commits.ok, 2);
        assert_eq!(report.stats.group_crashes, 1);
        assert!(report.to_string().contains("group-double-owner: 0"));
        assert!(report.to_string().contains("member crashes: 1"));
    }

    #[test]
    fn group_kinds_are_not_displayed_without_group_operations() {
        let mut history = History::new();
        history.send(1, key(0), 7, Acks::All, Outcome::Ok(0), 0, 1);
        let shown = check(&history).to_string();
        assert!(!shown.contains("group-"), "{shown}");
    }

    #[test]
    fn double_owner_is_one_partition_handed_to_two_members_in_one_generation() {
        let mut run = Run::new();
        run.join(1, "a", 3, &[0, 1]);
        run.join(2, "b", 3, &[1]);
        // The next generation moving partition 1 is fine.
        run.join(1, "a", 4, &[0]);
        run.join(2, "b", 4, &[1]);
        let found = only(&run.check(), AnomalyKind::DoubleOwner);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("t-1") && found[0].contains("generation 3"));
        assert_eq!(run.check().anomalies[0].ops, vec![0, 1]);
    }

    #[test]
    fn the_same_member_handed_a_partition_twice_is_one_owner() {
        let mut run = Run::new();
        run.join(1, "a", 3, &[0]);
        run.join(1, "a", 3, &[0]);
        assert!(run.check().is_valid());
    }

    #[test]
    fn commit_regressed_is_an_acked_commit_below_one_acked_before_it_began() {
        let mut run = Run::new();
        let high = run.commit("a", 1, 0, 10);
        run.op(1, high);
        let low = run.commit("b", 2, 0, 7);
        run.op(2, low);
        let found = only(&run.check(), AnomalyKind::CommitRegressed);
        assert_eq!(found.len(), 1);
        assert!(found[0].contains("offset 7") && found[0].contains("offset 10"));
    }

    #[test]
    fn concurrent_commits_may_land_in_either_order() {
        let mut run = Run::new();
        let high = run.commit("a", 1, 0, 10);
        run.op_at(1, high, 0, 20);
        let low = run.commit("b", 1, 0, 7);
        run.op_at(2, low, 10, 30);
        assert!(run.check().is_valid(), "{}", run.check());
    }

    #[test]
    fn an_explicit_reset_allows_lower_commits_after_it() {
        let mut run = Run::new();
        let high = run.commit("a", 1, 0, 10);
        run.op(1, high);
        run.op(
            1,
            GroupOp::Reset {
                group: GROUP.into(),
                member: "a".into(),
                generation: 1,
                key: key(0),
                from: 10,
                to: 0,
            },
        );
        let low = run.commit("a", 1, 0, 3);
        run.op(1, low);
        run.offset_fetch(2, "b", 2, &[(0, Some(3), 3)]);
        assert!(run.check().is_valid(), "{}", run.check());
    }

    #[test]
    fn a_reset_in_the_same_millisecond_as_the_next_commit_still_counts() {
        // Seen in the simulator: a member reset its position (out of range) and committed the
        // lower offset within the same simulated millisecond.
        let mut run = Run::new();
        let high = run.commit("a", 1, 0, 10);
        run.op_at(1, high, 0, 5);
        let reset = GroupOp::Reset {
            group: GROUP.into(),
            member: "a".into(),
            generation: 1,
            key: key(0),
            from: 11,
            to: 0,
        };
        run.op_at(1, reset, 20, 20);
        let low = run.commit("a", 1, 0, 0);
        run.op_at(1, low, 20, 30);
        assert!(run.check().is_valid(), "{}", run.check());
    }

    #[test]
    fn failed_and_indeterminate_commits_are_not_compared() {
        let mut run = Run::new();
        let high = run.commit("a", 1, 0, 10);
        run.op(1, high);
        for outcome in [
            Outcome::Fail("illegal generation".into()),
            Outcome::Info("timeout".into()),
        ] {
            let GroupOp::Commit {
                group,
                member,
                generation,
                offsets,
                ..
            } = run.commit("b", 1, 0, 4)
            else {
                unreachable!()
            };
            let op = GroupOp::Commit {
                group,
                member,
                generation,
                offsets,
                outcome,
            };
            run.op(2, op);
        }
        assert!(run.check().is_valid(), "{}", run.check());
    }

    #[test]
    fn lost_commit_is_an_offset_fetch_below_an_earlier_acked_commit() {
        let mut run = Run::new();
        let first = run.commit("a", 1, 0, 5);
        run.op(1, first);
        let second = run.commit("a", 1, 0, 9);
        run.op(1, second);
        run.offset_fetch(2, "b", 2, &[(0, Some(5), 5)]);
        run.offset_fetch(2, "b", 3, &[(0, None, 0)]);
        let found = only(&run.check(), AnomalyKind::LostCommit);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].contains("returned offset 5") && found[0].contains("offset 9"));
        assert!(found[1].contains("no committed offset"));
    }

    #[test]
    fn an_offset_fetch_concurrent_with_a_commit_may_miss_it() {
        let mut run = Run::new();
        let commit = run.commit("a", 1, 0, 5);
        run.op_at(1, commit, 0, 20);
        let positions = vec![Position {
            key: key(0),
            committed: None,
            start: 0,
        }];
        let fetch = GroupOp::OffsetFetch {
            group: GROUP.into(),
            member: "b".into(),
            generation: 2,
            outcome: Outcome::Ok(positions),
        };
        run.op_at(2, fetch, 10, 30);
        assert!(run.check().is_valid(), "{}", run.check());
    }

    #[test]
    fn unknown_commit_is_an_offset_no_commit_wrote() {
        let mut run = Run::new();
        let commit = run.commit("a", 1, 0, 5);
        run.op(1, commit);
        run.offset_fetch(2, "b", 2, &[(0, Some(6), 6)]);
        let found = only(&run.check(), AnomalyKind::UnknownCommit);
        assert_eq!(found.len(), 1);
        assert!(found[0].contains("offset 6"));
    }

    #[test]
    fn an_indeterminate_commit_may_be_what_offset_fetch_returns() {
        let mut run = Run::new();
        let op = GroupOp::Commit {
            group: GROUP.into(),
            member: "a".into(),
            generation: 1,
            offsets: vec![(key(0), 6)],
            outcome: Outcome::Info("member crashed".into()),
        };
        run.op(1, op);
        run.offset_fetch(2, "b", 2, &[(0, Some(6), 6)]);
        assert!(run.check().is_valid(), "{}", run.check());
    }

    #[test]
    fn commit_above_hw_is_a_committed_offset_past_the_high_watermark() {
        let mut run = Run::new();
        let commit = run.commit("a", 1, 0, 12);
        run.op(1, commit);
        run.offset_fetch(2, "b", 2, &[(0, Some(12), 12)]);
        run.op(
            3,
            GroupOp::HighWatermarks {
                marks: vec![(key(0), 11)],
            },
        );
        let found = only(&run.check(), AnomalyKind::CommitAboveHighWatermark);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found.iter().all(|f| f.contains("high watermark 11")));
    }

    #[test]
    fn wrong_start_is_a_start_other_than_the_committed_offset() {
        let mut run = Run::new();
        let commit = run.commit("a", 1, 0, 3);
        run.op(1, commit);
        run.offset_fetch(2, "b", 2, &[(0, Some(3), 5)]);
        let found = only(&run.check(), AnomalyKind::WrongStart);
        assert!(found[0].contains("started at offset 5 although the committed offset was 3"));
    }

    #[test]
    fn wrong_start_is_a_first_read_that_skips_known_offsets_past_the_committed_one() {
        let mut run = Run::new();
        run.send(0, 1, 3);
        run.send(0, 2, 4);
        run.send(0, 3, 5);
        let commit = run.commit("a", 1, 0, 3);
        run.op(1, commit);
        run.poll(7, 0, &[(3, 1), (4, 2), (5, 3)]);
        run.offset_fetch(2, "b", 2, &[(0, Some(3), 3)]);
        run.poll(2, 0, &[(5, 3)]);
        // Skipping offsets is also a gap in the offsets the member read.
        let report = run.check();
        assert_eq!(report.count(AnomalyKind::OffsetGap), 1, "{report}");
        let found: Vec<String> = report
            .anomalies
            .iter()
            .filter(|a| a.kind == AnomalyKind::WrongStart)
            .map(|a| a.to_string())
            .collect();
        assert!(
            found[0].contains("skipping known offsets [3, 4]"),
            "{found:?}"
        );
    }

    #[test]
    fn wrong_start_is_a_first_read_below_the_committed_offset() {
        let mut run = Run::new();
        run.send(0, 1, 2);
        run.send(0, 2, 3);
        let commit = run.commit("a", 1, 0, 3);
        run.op(1, commit);
        run.offset_fetch(2, "b", 2, &[(0, Some(3), 3)]);
        run.poll(2, 0, &[(2, 1), (3, 2)]);
        let found = only(&run.check(), AnomalyKind::WrongStart);
        assert!(found[0].contains("first read offset 2"), "{found:?}");
    }

    #[test]
    fn a_gap_without_known_values_is_not_a_wrong_start() {
        let mut run = Run::new();
        run.send(0, 1, 7);
        let commit = run.commit("a", 1, 0, 3);
        run.op(1, commit);
        // Offsets 3..7 hold transaction markers: nothing known there.
        run.offset_fetch(2, "b", 2, &[(0, Some(3), 3)]);
        run.poll(2, 0, &[(7, 1)]);
        let mut facts = OffsetFacts::default();
        facts.markers.insert(key(0), (3..7).collect());
        let report = check_with_facts(&run.history, CheckOptions::default(), &facts);
        assert!(report.is_valid(), "{report}");
        // Offsets taken by anything else are a gap in what the member read, still not a wrong
        // start.
        only(&run.check(), AnomalyKind::OffsetGap);
    }

    #[test]
    fn a_members_join_restarts_its_poll_order() {
        let mut run = Run::new();
        run.send(0, 1, 0);
        run.send(0, 2, 1);
        run.join(1, "a", 1, &[0]);
        run.offset_fetch(1, "a", 1, &[(0, None, 0)]);
        run.poll(1, 0, &[(0, 1), (1, 2)]);
        // Back to the committed offset after a rebalance: not a nonmonotonic poll.
        run.join(1, "a", 2, &[0]);
        run.offset_fetch(1, "a", 2, &[(0, None, 0)]);
        run.poll(1, 0, &[(0, 1)]);
        assert!(run.check().is_valid(), "{}", run.check());
    }
}
