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
//! - group-late-commit-accepted: a *late* commit (below) that the coordinator acknowledged, or
//!   refused with an error that does not fence its sender. A late commit must be refused with
//!   ILLEGAL_GENERATION (22), UNKNOWN_MEMBER_ID (25), REBALANCE_IN_PROGRESS (27) or
//!   FENCED_INSTANCE_ID (82), Kafka's answers to a zombie, or by a broker that is not (or not
//!   yet) the coordinator (COORDINATOR_LOAD_IN_PROGRESS 14, COORDINATOR_NOT_AVAILABLE 15,
//!   NOT_COORDINATOR 16); it may also be indeterminate (no answer).
//! - group-late-commit-visible: an OffsetFetch returned an offset that only late commits wrote
//!   (whatever their outcome): no commit that was not late and may have taken effect, invoked
//!   before the fetch completed, wrote it. Members start at the offset OffsetFetch returned
//!   (group-wrong-start checks it), so this also covers a late offset used as a start position.
//!
//! A commit is *late* when the history proves that the group had left the committer's
//! generation behind before the commit was invoked: some `Ok` join of the same group with a
//! higher generation completed before the commit's invocation. That is sound whatever the
//! outcomes of the other operations: an `Ok` join is a SyncGroup answered with an assignment,
//! which a coordinator sends only once the generation is stored in its log, so every later
//! coordinator of the group knows that generation or a newer one, and a group's generations
//! only grow (the workloads never delete their group). Indeterminate joins prove nothing and
//! are not used. Commits without a generation (negative: Kafka's commits from outside the
//! group) are never late. A member that lost its membership without a newer generation being
//! observed (its session expired and the group emptied, or it left) is not judged: a LeaveGroup
//! or an expiry is not stored, so a coordinator failover may restore the member.
//!
//! Late commits are judged only by the two late-commit kinds: they are left out of
//! group-commit-regressed and group-lost-commit's comparisons, which would otherwise report the
//! same defect again.
//!
//! An explicit reset ([`GroupOp::Reset`], `auto.offset.reset` after OFFSET_OUT_OF_RANGE) lets
//! the group-key's later commits go below the earlier ones: commits that completed before the
//! latest reset preceding an operation are not compared with it.

use std::collections::{BTreeMap, BTreeSet};

use super::{list, AnomalyKind, Findings, SendCounts, Stats};
use crate::history::{Acks, GroupOp, History, Key, OpKind, Outcome};
use crate::ErrorCode;

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
    /// Refused: it never took effect, unless it was late (a late commit must never be seen,
    /// whatever its sender was told).
    failed: bool,
    /// The history proves the group had a newer generation when it was invoked.
    late: bool,
}

/// Error codes that fence a late commit's sender: Kafka's answers to a zombie member.
const FENCING_CODES: [ErrorCode; 4] = [
    ErrorCode::IllegalGeneration,
    ErrorCode::UnknownMemberId,
    ErrorCode::RebalanceInProgress,
    ErrorCode::FencedInstanceId,
];

/// Error codes of a broker that is not (or not yet) the group's coordinator: it judged
/// nothing, and its client looks for the coordinator again.
const NOT_COORDINATOR_CODES: [ErrorCode; 3] = [
    ErrorCode::CoordinatorLoadInProgress,
    ErrorCode::CoordinatorNotAvailable,
    ErrorCode::NotCoordinator,
];

/// The `Ok` joins of one group ordered by completion, with the running maximum generation, to
/// find the newest generation known to be established before a given time.
struct Generations {
    /// (complete_ms, generation, op), ascending.
    joins: Vec<(u64, i32, usize)>,
    /// For each position: the (generation, op) of the highest generation up to it.
    running_max: Vec<(i32, usize)>,
}

impl Generations {
    fn new(mut joins: Vec<(u64, i32, usize)>) -> Generations {
        joins.sort_unstable();
        let mut running_max: Vec<(i32, usize)> = Vec::with_capacity(joins.len());
        for &(_, generation, op) in &joins {
            let best = match running_max.last() {
                Some(&(max, max_op)) if max >= generation => (max, max_op),
                _ => (generation, op),
            };
            running_max.push(best);
        }
        debug_assert_eq!(running_max.len(), joins.len());
        Generations { joins, running_max }
    }

    /// The highest generation (and the join that established it) of an `Ok` join that
    /// completed strictly before `t_ms`.
    fn newest_before(&self, t_ms: u64) -> Option<(i32, usize)> {
        let count = self
            .joins
            .partition_point(|&(complete_ms, _, _)| complete_ms < t_ms);
        count.checked_sub(1).map(|last| self.running_max[last])
    }
}

/// One commit operation, as gathered before it can be judged late.
struct CommitOp<'h> {
    op: usize,
    group: &'h str,
    member: &'h str,
    generation: i32,
    offsets: &'h [(Key, u64)],
    outcome: &'h Outcome<()>,
    error_code: Option<i16>,
    invoke_ms: u64,
    complete_ms: u64,
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
            .filter(|c| c.acked && !c.late)
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
    // Per group: (complete_ms, generation, op) of every `Ok` join.
    let mut joins: BTreeMap<&str, Vec<(u64, i32, usize)>> = BTreeMap::new();
    let mut commits: Vec<CommitOp<'_>> = Vec::new();

    for op in &history.ops {
        let OpKind::Group(group_op) = &op.kind else {
            continue;
        };
        stats.group_ops += 1;
        match group_op {
            GroupOp::Join { group, outcome } => {
                stats.group_joins += 1;
                if let Outcome::Ok(assignment) = outcome {
                    joins.entry(group.as_str()).or_default().push((
                        op.complete_ms,
                        assignment.generation,
                        op.index,
                    ));
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
                member,
                generation,
                offsets,
                outcome,
                error_code,
            } => {
                count(&mut stats.group_commits, outcome);
                // Judged once every join is known: a join recorded after the commit may
                // still have completed before it was invoked.
                commits.push(CommitOp {
                    op: op.index,
                    group,
                    member,
                    generation: *generation,
                    offsets,
                    outcome,
                    error_code: *error_code,
                    invoke_ms: op.invoke_ms,
                    complete_ms: op.complete_ms,
                });
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

    let generations: BTreeMap<&str, Generations> = joins
        .into_iter()
        .map(|(group, joins)| (group, Generations::new(joins)))
        .collect();
    for commit in &commits {
        let newer = generations
            .get(commit.group)
            .and_then(|g| g.newest_before(commit.invoke_ms))
            .filter(|&(newest, _)| commit.generation >= 0 && newest > commit.generation);
        if let Some((newest, join_op)) = newer {
            count(&mut stats.group_late_commits, commit.outcome);
            check_late_commit(commit, newest, join_op, findings);
        } else if commit.outcome.is_fail() {
            continue; // Refused: it never took effect.
        }
        for (key, offset) in commit.offsets {
            facts
                .entry((commit.group, key))
                .or_default()
                .commits
                .push(Commit {
                    op: commit.op,
                    offset: *offset,
                    invoke_ms: commit.invoke_ms,
                    complete_ms: commit.complete_ms,
                    acked: commit.outcome.is_ok(),
                    failed: commit.outcome.is_fail(),
                    late: newer.is_some(),
                });
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

fn count<T>(counts: &mut SendCounts, outcome: &Outcome<T>) {
    match outcome {
        Outcome::Ok(_) => counts.ok += 1,
        Outcome::Fail(_) => counts.fail += 1,
        Outcome::Info(_) => counts.info += 1,
    }
}

/// group-late-commit-accepted: `commit` was invoked after generation `newest` of its group was
/// established (by the join `join_op`), so the coordinator must have fenced it.
fn check_late_commit(commit: &CommitOp<'_>, newest: i32, join_op: usize, findings: &mut Findings) {
    debug_assert!(newest > commit.generation);
    let is_code = |codes: &[ErrorCode], code: i16| codes.iter().any(|c| c.code() == code);
    let answer = match (commit.outcome, commit.error_code) {
        (Outcome::Ok(()), _) => "was acknowledged".to_string(),
        (Outcome::Fail(_), Some(code))
            if !is_code(&FENCING_CODES, code) && !is_code(&NOT_COORDINATOR_CODES, code) =>
        {
            format!("was refused with error code {code}, which does not fence a zombie")
        }
        // Fenced, refused by a broker that is not the coordinator, not sent, or no answer.
        _ => return,
    };
    let detail = format!(
        "commit of group {} by member {} in generation {} {answer}, though generation {newest} was established before it was invoked",
        commit.group, commit.member, commit.generation
    );
    for (key, _) in commit.offsets {
        findings.push(
            AnomalyKind::LateCommitAccepted,
            key,
            detail.clone(),
            vec![join_op, commit.op],
        );
    }
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
    let mut by_invoke: Vec<&Commit> = facts
        .commits
        .iter()
        .filter(|c| c.acked && !c.late)
        .collect();
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

    // Offsets that some commit that may have taken effect wrote, by the time it was invoked:
    // commits that were not late, and, apart, late ones (whatever their outcome).
    let written_by = |late: bool| {
        let mut written: Vec<(u64, u64, usize)> = facts
            .commits
            .iter()
            .filter(|c| c.late == late)
            .map(|c| (c.offset, c.invoke_ms, c.op))
            .collect();
        written.sort_unstable();
        written
    };
    let (written, written_late) = (written_by(false), written_by(true));
    // The first commit in `written` that wrote `offset` and was invoked by `by_ms`.
    let writer = |written: &[(u64, u64, usize)], offset: u64, by_ms: u64| {
        let from = written.partition_point(|&(o, _, _)| o < offset);
        written[from..]
            .iter()
            .take_while(|&&(o, _, _)| o == offset)
            .find(|&&(_, invoke_ms, _)| invoke_ms <= by_ms)
            .map(|&(_, _, op)| op)
    };
    debug_assert!(facts.commits.iter().all(|c| c.late || !c.failed));

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
        if writer(&written, committed, fetched.complete_ms).is_none() {
            if let Some(late_op) = writer(&written_late, committed, fetched.complete_ms) {
                let detail = format!(
                    "OffsetFetch of group {group} returned offset {committed}, which only late commits (from a generation the group had left) wrote"
                );
                let ops = vec![late_op, fetched.op];
                findings.push(AnomalyKind::LateCommitVisible, key, detail, ops);
            } else {
                let detail = format!(
                    "OffsetFetch of group {group} returned offset {committed}, which no commit wrote"
                );
                findings.push(AnomalyKind::UnknownCommit, key, detail, vec![fetched.op]);
            }
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
            let join = Run::join_op(member, generation, partitions);
            self.op(process, join);
        }

        /// An `Ok` join of `member` into `generation`, handed `partitions`.
        fn join_op(member: &str, generation: i32, partitions: &[i32]) -> GroupOp {
            let assignment = Assignment {
                member: member.to_string(),
                generation,
                keys: partitions.iter().map(|p| key(*p)).collect(),
            };
            GroupOp::Join {
                group: GROUP.to_string(),
                outcome: Outcome::Ok(assignment),
            }
        }

        fn commit(&self, member: &str, generation: i32, partition: i32, offset: u64) -> GroupOp {
            GroupOp::Commit {
                group: GROUP.to_string(),
                member: member.to_string(),
                generation,
                offsets: vec![(key(partition), offset)],
                outcome: Outcome::Ok(()),
                error_code: None,
            }
        }

        /// A commit answered with `outcome` and `error_code`.
        fn commit_answered(
            &self,
            member: &str,
            generation: i32,
            partition: i32,
            offset: u64,
            outcome: Outcome<()>,
            error_code: Option<i16>,
        ) -> GroupOp {
            GroupOp::Commit {
                group: GROUP.to_string(),
                member: member.to_string(),
                generation,
                offsets: vec![(key(partition), offset)],
                outcome,
                error_code,
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
            let op = run.commit_answered("b", 1, 0, 4, outcome, None);
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
            error_code: None,
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

    /// `a` and `b` share generation 1; `a` stalls, and `b` rejoins alone as generation 2 and
    /// commits partition 0 at offset 5 (op 3 is the join of generation 2).
    fn zombie_run() -> Run {
        let mut run = Run::new();
        run.join(1, "a", 1, &[0]);
        run.join(2, "b", 1, &[1]);
        let commit = run.commit("a", 1, 0, 2);
        run.op(1, commit);
        run.join(2, "b", 2, &[0, 1]);
        let commit = run.commit("b", 2, 0, 5);
        run.op(2, commit);
        run
    }

    const ILLEGAL_GENERATION: i16 = 22;
    const UNKNOWN_MEMBER_ID: i16 = 25;
    const REBALANCE_IN_PROGRESS: i16 = 27;
    const NOT_COORDINATOR: i16 = 16;
    const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;

    #[test]
    fn a_late_commit_fenced_with_kafkas_codes_or_indeterminate_is_valid() {
        for (outcome, code) in [
            (Outcome::Fail("fenced".into()), Some(ILLEGAL_GENERATION)),
            (Outcome::Fail("fenced".into()), Some(UNKNOWN_MEMBER_ID)),
            (Outcome::Fail("fenced".into()), Some(REBALANCE_IN_PROGRESS)),
            (Outcome::Fail("not sent".into()), None),
            (Outcome::Info("no answer".into()), None),
            (Outcome::Info("moved".into()), Some(NOT_COORDINATOR)),
        ] {
            let mut run = zombie_run();
            let late = run.commit_answered("a", 1, 0, 9, outcome, code);
            run.op(1, late);
            let report = run.check();
            assert!(report.is_valid(), "{report}");
            assert_eq!(
                report.stats.group_late_commits.ok
                    + report.stats.group_late_commits.fail
                    + report.stats.group_late_commits.info,
                1,
                "{report}"
            );
        }
    }

    #[test]
    fn late_commit_accepted_is_an_acknowledged_commit_from_a_generation_left_behind() {
        let mut run = zombie_run();
        let late = run.commit("a", 1, 0, 3);
        let late_op = run.op(1, late);
        let report = run.check();
        // Below b's acknowledged 5, but reported once: as late, not as a regression too.
        let found = only(&report, AnomalyKind::LateCommitAccepted);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].contains("member a in generation 1 was acknowledged")
                && found[0].contains("generation 2 was established"),
            "{found:?}"
        );
        assert_eq!(report.anomalies[0].ops, vec![3, late_op]);
        assert_eq!(report.stats.group_late_commits.ok, 1);
        assert!(report
            .to_string()
            .contains("late commits ok/fail/info 1/0/0"));
    }

    #[test]
    fn late_commit_accepted_is_also_a_refusal_that_does_not_fence_the_zombie() {
        let mut run = zombie_run();
        let late = run.commit_answered(
            "a",
            1,
            0,
            9,
            Outcome::Fail("unknown partition".into()),
            Some(UNKNOWN_TOPIC_OR_PARTITION),
        );
        run.op(1, late);
        let found = only(&run.check(), AnomalyKind::LateCommitAccepted);
        assert!(found[0].contains("error code 3"), "{found:?}");
    }

    #[test]
    fn a_commit_invoked_before_the_newer_generation_completed_is_not_late() {
        // Kafka takes a commit of the current generation while the group prepares a
        // rebalance: only a newer generation's completion, seen before the commit began,
        // proves it late.
        let mut run = Run::new();
        run.join(1, "a", 1, &[0]);
        let join = Run::join_op("b", 2, &[0]);
        run.op_at(2, join, 20, 40);
        let commit = run.commit("a", 1, 0, 4);
        run.op_at(1, commit, 40, 45);
        let report = run.check();
        assert!(report.is_valid(), "{report}");
        assert_eq!(report.stats.group_late_commits, Default::default());
    }

    #[test]
    fn lateness_follows_real_time_not_the_order_operations_were_recorded_in() {
        let mut run = Run::new();
        run.join(1, "a", 1, &[0]);
        let commit = run.commit("a", 1, 0, 4);
        run.op_at(1, commit, 100, 110);
        // Recorded after the commit, but completed before it was invoked.
        let join = Run::join_op("b", 2, &[0]);
        run.op_at(2, join, 50, 60);
        only(&run.check(), AnomalyKind::LateCommitAccepted);
    }

    #[test]
    fn indeterminate_joins_and_commits_outside_a_generation_prove_nothing() {
        let mut run = Run::new();
        run.join(1, "a", 1, &[0]);
        let join = GroupOp::Join {
            group: GROUP.into(),
            outcome: Outcome::Info("sync timed out".into()),
        };
        run.op(2, join);
        let commit = run.commit("a", 1, 0, 4);
        run.op(1, commit);
        run.join(2, "b", 2, &[0]);
        // Kafka's commit from outside the group (generation -1) has no generation to outlive.
        let outside = run.commit("", -1, 0, 4);
        run.op(3, outside);
        let report = run.check();
        assert!(report.is_valid(), "{report}");
    }

    #[test]
    fn late_commit_visible_is_an_offset_fetch_returning_what_only_a_late_commit_wrote() {
        for (outcome, code) in [
            (Outcome::Fail("fenced".into()), Some(UNKNOWN_MEMBER_ID)),
            (Outcome::Info("no answer".into()), None),
        ] {
            let mut run = zombie_run();
            let late = run.commit_answered("a", 1, 0, 9, outcome, code);
            let late_op = run.op(1, late);
            let fetch = run.offset_fetch(3, "c", 3, &[(0, Some(9), 9)]);
            let report = run.check();
            // A refused commit wrote nothing, so without the late-commit check this would be
            // an unknown commit; an indeterminate one would pass unnoticed.
            let found = only(&report, AnomalyKind::LateCommitVisible);
            assert_eq!(found.len(), 1, "{found:?}");
            assert!(found[0].contains("only late commits"), "{found:?}");
            assert_eq!(report.anomalies[0].ops, vec![late_op, fetch]);
        }
    }

    #[test]
    fn an_acknowledged_late_commit_that_becomes_visible_is_reported_twice() {
        let mut run = zombie_run();
        let late = run.commit("a", 1, 0, 9);
        run.op(1, late);
        run.offset_fetch(3, "c", 3, &[(0, Some(9), 9)]);
        let report = run.check();
        assert_eq!(report.count(AnomalyKind::LateCommitAccepted), 1, "{report}");
        assert_eq!(report.count(AnomalyKind::LateCommitVisible), 1, "{report}");
        assert_eq!(report.anomaly_counts.values().sum::<u64>(), 2, "{report}");
    }

    #[test]
    fn an_offset_a_current_member_also_wrote_is_not_evidence_of_a_late_commit() {
        let mut run = zombie_run();
        let late = run.commit_answered("a", 1, 0, 7, Outcome::Info("no answer".into()), None);
        run.op(1, late);
        let commit = run.commit("b", 2, 0, 7);
        run.op(2, commit);
        run.offset_fetch(3, "c", 3, &[(0, Some(7), 7)]);
        assert!(run.check().is_valid(), "{}", run.check());
    }

    #[test]
    fn late_kinds_are_group_kinds_with_json_names() {
        for kind in [
            AnomalyKind::LateCommitAccepted,
            AnomalyKind::LateCommitVisible,
        ] {
            assert!(kind.is_group());
            assert!(AnomalyKind::ALL.contains(&kind));
        }
        let mut run = zombie_run();
        let late = run.commit("a", 1, 0, 3);
        run.op(1, late);
        let line = run.check().anomalies[0].to_json_line();
        assert!(
            line.starts_with("{\"kind\":\"group-late-commit-accepted\",\"topic\":\"t\""),
            "{line}"
        );
    }
}
