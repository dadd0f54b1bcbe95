//! config-not-atomic: a change of several configs of one topic (an IncrementalAlterConfigs of
//! several names, or a legacy AlterConfigs, which rewrites every override) applies all or
//! nothing. [`super::configs`] judges each config name on its own; this judges a broker's
//! whole final describe of a topic: it must be what some set of whole changes gives, applied
//! one after another from the topic's initial state (no overrides) in an order consistent with
//! real time.
//!
//! The set: every acknowledged change that completed before the describe was invoked (must),
//! plus any change that may have taken effect (acknowledged or indeterminate, invoked before the
//! describe completed). A change's effect lies between its invocation and its completion (an
//! indeterminate one: any time after its invocation, and before the describe completed to be
//! visible).
//!
//! The search picks, for each config name, the change whose value the describe shows last (its
//! *winner*, or the initial state for a name shown without an override that no change in the
//! set touches), among the changes the per-name rule allows. Given winners, a schedule exists
//! if and only if: no winner or must-change touches a name left in its initial state; the
//! precedence "every other change in the set that touches a name comes before its winner"
//! has no cycle among the winners; and each winner's earliest effect time under it
//! (its invocation, after the invocations of the must-changes before it and the effects of
//! the winners before it) is not past its completion (or the describe's). Changes that are in
//! the set only by choice and win nothing are left out: an indeterminate change may never
//! have applied, and an acknowledged change that completed after the describe was invoked may
//! have applied after it. The candidates per name are few (values are random), but names shown
//! without an override may have many; the search stops after [`COMBINATIONS_MAX`]
//! combinations, and such a describe is counted as unjudged (`Stats::config_atomicity_unjudged`).

use std::collections::{BTreeMap, BTreeSet};

use super::configs::{Described, Write};

/// At most this many combinations of winners are tried for one describe.
pub const COMBINATIONS_MAX: u64 = 4096;

/// What the search found for one describe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Some set of whole changes explains it.
    Explained,
    /// None does: the ops of the changes that each explain some value of it.
    Unexplained(Vec<usize>),
    /// Too many combinations to try.
    Unjudged,
    /// Some value alone is not allowed: config-lost reports it.
    PerName,
}

/// One change (a history operation) as far as this describe is concerned.
#[derive(Clone, Debug)]
struct Change<'h> {
    invoke_ms: u64,
    complete_ms: u64,
    acked: bool,
    must: bool,
    touches: BTreeSet<&'h str>,
}

/// Judges `d`, one broker's final describe of a topic, against the topic's writes by name.
pub(super) fn judge(names: &BTreeMap<&str, Vec<Write>>, d: &Described) -> Verdict {
    if d.overrides.keys().any(|n| !names.contains_key(n.as_str())) {
        return Verdict::PerName;
    }
    let mut changes: BTreeMap<usize, Change> = BTreeMap::new();
    for (name, writes) in names {
        for w in writes.iter().filter(|w| w.invoke_ms <= d.complete_ms) {
            changes
                .entry(w.op)
                .or_insert_with(|| Change {
                    invoke_ms: w.invoke_ms,
                    complete_ms: w.complete_ms,
                    acked: w.acked,
                    must: w.acked && w.complete_ms < d.invoke_ms,
                    touches: BTreeSet::new(),
                })
                .touches
                .insert(name);
        }
    }
    // Per name: the latest invocation of a must-change touching it, and the candidate winners
    // (`None`: the initial state).
    let mut must_before: BTreeMap<&str, u64> = BTreeMap::new();
    let mut options: Vec<(&str, Vec<Option<usize>>)> = Vec::new();
    let mut combinations = 1u64;
    for (name, writes) in names {
        let shown = d.overrides.get(*name).map(String::as_str);
        let must: Vec<&Write> = writes
            .iter()
            .filter(|w| changes.get(&w.op).is_some_and(|c| c.must))
            .collect();
        let overwritten_before = must.iter().map(|w| w.invoke_ms).max();
        if let Some(at) = overwritten_before {
            must_before.insert(name, at);
        }
        let mut candidates: Vec<Option<usize>> = writes
            .iter()
            .filter(|w| w.invoke_ms <= d.complete_ms && w.value == shown)
            .filter(|w| !w.acked || overwritten_before.is_none_or(|at| at <= w.complete_ms))
            .map(|w| Some(w.op))
            .collect();
        candidates.dedup();
        if shown.is_none() && must.is_empty() {
            candidates.push(None);
        }
        if candidates.is_empty() {
            return Verdict::PerName;
        }
        combinations = combinations.saturating_mul(candidates.len() as u64);
        options.push((name, candidates));
    }
    if combinations > COMBINATIONS_MAX {
        return Verdict::Unjudged;
    }
    let mut pick = vec![0usize; options.len()];
    loop {
        let winners: BTreeMap<&str, Option<usize>> = options
            .iter()
            .zip(&pick)
            .map(|((name, candidates), &i)| (*name, candidates[i]))
            .collect();
        if schedulable(&winners, &changes, &must_before, d) {
            return Verdict::Explained;
        }
        // The next combination (an odometer over the candidates).
        let mut digit = 0;
        loop {
            if digit == pick.len() {
                let mut ops: Vec<usize> = vec![d.op];
                ops.extend(
                    options
                        .iter()
                        .flat_map(|(_, c)| c.iter().flatten().copied())
                        .collect::<BTreeSet<usize>>(),
                );
                return Verdict::Unexplained(ops);
            }
            pick[digit] += 1;
            if pick[digit] < options[digit].1.len() {
                break;
            }
            pick[digit] = 0;
            digit += 1;
        }
    }
}

/// Whether the changes can be ordered so that each name ends with its winner (see the module
/// documentation).
fn schedulable(
    winners: &BTreeMap<&str, Option<usize>>,
    changes: &BTreeMap<usize, Change>,
    must_before: &BTreeMap<&str, u64>,
    d: &Described,
) -> bool {
    let chosen: BTreeSet<usize> = winners.values().flatten().copied().collect();
    // A name left in its initial state: no change in the set touches it (the candidates already
    // left out names a must-change touches).
    for (name, winner) in winners {
        if winner.is_none() && chosen.iter().any(|c| changes[c].touches.contains(name)) {
            return false;
        }
    }
    // Precedence among winners: `v` before `w` when `v` touches a name `w` wins.
    let mut before: BTreeMap<usize, BTreeSet<usize>> = BTreeMap::new();
    for &w in &chosen {
        let won: Vec<&str> = winners
            .iter()
            .filter(|(_, x)| **x == Some(w))
            .map(|(n, _)| *n)
            .collect();
        let preds = chosen
            .iter()
            .filter(|&&v| v != w && won.iter().any(|n| changes[&v].touches.contains(n)))
            .copied()
            .collect();
        before.insert(w, preds);
    }
    // Earliest effect times, winners in topological order (a cycle: no schedule).
    let mut at: BTreeMap<usize, u64> = BTreeMap::new();
    while at.len() < chosen.len() {
        let ready = chosen
            .iter()
            .find(|w| !at.contains_key(w) && before[w].iter().all(|v| at.contains_key(v)));
        let Some(&w) = ready else {
            return false;
        };
        let change = &changes[&w];
        let mut earliest = change.invoke_ms;
        for (name, _) in winners.iter().filter(|(_, x)| **x == Some(w)) {
            earliest = earliest.max(must_before.get(name).copied().unwrap_or(0));
        }
        for v in &before[&w] {
            earliest = earliest.max(at[v]);
        }
        let deadline = if change.acked {
            change.complete_ms.min(d.complete_ms)
        } else {
            d.complete_ms
        };
        if earliest > deadline {
            return false;
        }
        at.insert(w, earliest);
    }
    true
}
