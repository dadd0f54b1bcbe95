//! Compaction checker: whether `cleanup.policy=compact` takes effect on every replica, and keeps
//! the latest value of every key, judged from the compaction probe of the `configs` scenario
//! ([`ConfigOp::Compaction`]).
//!
//! After the heal the probe switches compaction on for its topic (and waits until every broker
//! describes it), produces several values of each of a few keys with `acks=all`, then enough
//! records of other keys to seal the segments that hold them, waits (bounded) for the cleaners,
//! and reads every replica's stored log of the partition from its disk (a simulator-only
//! observation: Fetch only reads the leader). Kafka's guarantees, per replica, by the names
//! [`AnomalyKind::name`] reports:
//! - compaction-lost-latest: the latest value of every key is kept. A key's latest value is
//!   the value of its last acknowledged send; an indeterminate send of the key (whenever it was
//!   invoked: it may have landed after) may be the latest instead. The record of the key at the
//!   replica's highest offset must hold one of those values.
//! - compaction-not-in-force: once cleaned, an older value of a key is removed. The probe's
//!   *stated bound* is the set of superseded records: acknowledged sends of a key followed by
//!   another acknowledged send of the same key, all written before the records that sealed their
//!   segments. A replica that still holds every one of them after the wait compacted nothing
//!   below that bound (judged only if compaction was acknowledged and described everywhere).
//!
//! A replica is judged only if it holds the probe's last acknowledged record (it caught up);
//! whether the replicas hold the same committed bytes is replica agreement's business.

use std::collections::{BTreeMap, BTreeSet};

use super::{AnomalyKind, Findings, Stats};
use crate::history::{Key, Outcome};

/// One keyed record the probe produced (one batch of one record, `acks=all`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeSend {
    pub key: String,
    pub value: String,
    /// `Ok`: acknowledged; `Fail`: refused; `Info`: indeterminate.
    pub outcome: Outcome<()>,
}

/// One record as a replica stored it (a data batch's record; control batches are left out).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredRecord {
    /// The replica's log offset (Raft's, not the Kafka offset: only the order matters here).
    pub offset: u64,
    pub key: Option<String>,
    pub value: Option<String>,
}

/// One replica's stored records of the probed partition, read from its disk after the wait.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaRecords {
    pub node: i32,
    pub records: Vec<StoredRecord>,
}

/// What the compaction probe did and found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompactionProbe {
    pub topic: String,
    pub partition: i32,
    /// Whether the change to `cleanup.policy=compact` was acknowledged and every broker described
    /// it before the first send: only then must the cleaner have removed anything.
    pub compact_described: bool,
    /// Every send, in the order the probe made them (one at a time).
    pub sends: Vec<ProbeSend>,
    /// How long the probe waited for the cleaners after its last send.
    pub waited_ms: u64,
    pub replicas: Vec<ReplicaRecords>,
}

impl CompactionProbe {
    /// The sends whose values are certainly superseded: acknowledged, with a later acknowledged
    /// send of the same key. Indices into `sends`.
    pub fn superseded(&self) -> Vec<usize> {
        let mut later_acked: BTreeSet<&str> = BTreeSet::new();
        let mut out = Vec::new();
        for (i, s) in self.sends.iter().enumerate().rev() {
            if !s.outcome.is_ok() {
                continue;
            }
            if !later_acked.insert(s.key.as_str()) {
                out.push(i);
            }
        }
        out.reverse();
        out
    }

    /// Whether `replica` removed at least one superseded record (what the probe waits for).
    pub fn compacted_on(&self, replica: &ReplicaRecords) -> bool {
        let held = held_values(replica);
        self.superseded()
            .iter()
            .any(|&i| !held.contains(self.sends[i].value.as_str()))
    }
}

fn held_values(replica: &ReplicaRecords) -> BTreeSet<&str> {
    replica
        .records
        .iter()
        .filter_map(|r| r.value.as_deref())
        .collect()
}

/// Adds the compaction anomalies of one probe (history operation `op`) to `findings`.
pub(super) fn check(
    probe: &CompactionProbe,
    op: usize,
    stats: &mut Stats,
    findings: &mut Findings,
) {
    stats.compaction_probes += 1;
    let key = Key::new(&probe.topic, probe.partition);
    let Some(last_acked) = probe.sends.iter().rev().find(|s| s.outcome.is_ok()) else {
        return;
    };
    // Per key: the values its latest record may hold.
    let mut latest: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    let indeterminate: BTreeSet<&str> = probe
        .sends
        .iter()
        .filter(|s| matches!(s.outcome, Outcome::Info(_)))
        .map(|s| s.value.as_str())
        .collect();
    for s in &probe.sends {
        match s.outcome {
            Outcome::Ok(()) => {
                let allowed = latest.entry(s.key.as_str()).or_default();
                // An earlier acknowledged value is overwritten; indeterminate ones stay possible.
                allowed.retain(|v| indeterminate.contains(v));
                allowed.insert(s.value.as_str());
            }
            Outcome::Info(_) => {
                latest
                    .entry(s.key.as_str())
                    .or_default()
                    .insert(s.value.as_str());
            }
            Outcome::Fail(_) => {}
        }
    }
    // Keys with no acknowledged send promise nothing.
    latest.retain(|k, _| probe.sends.iter().any(|s| s.key == *k && s.outcome.is_ok()));
    let superseded = probe.superseded();
    for replica in &probe.replicas {
        let held = held_values(replica);
        if !held.contains(last_acked.value.as_str()) {
            stats.compaction_replicas_behind += 1;
            continue;
        }
        stats.compaction_replicas_judged += 1;
        let mut last_of: BTreeMap<&str, &StoredRecord> = BTreeMap::new();
        for r in &replica.records {
            if let Some(k) = r.key.as_deref() {
                let slot = last_of.entry(k).or_insert(r);
                if r.offset >= slot.offset {
                    *slot = r;
                }
            }
        }
        for (k, allowed) in &latest {
            let stored = last_of.get(k);
            let shown = stored.and_then(|r| r.value.as_deref());
            if shown.is_some_and(|v| allowed.contains(v)) {
                continue;
            }
            let allowed: Vec<&str> = allowed.iter().copied().collect();
            let detail = match stored {
                None => format!(
                    "broker {} holds no record of key {k:?}; its latest value ({}) is gone",
                    replica.node,
                    allowed.join(" or ")
                ),
                Some(r) => format!(
                    "broker {}'s latest record of key {k:?} (log offset {}) holds {:?}, not its \
                     latest value ({})",
                    replica.node,
                    r.offset,
                    r.value,
                    allowed.join(" or ")
                ),
            };
            findings.push(AnomalyKind::CompactionLostLatest, &key, detail, vec![op]);
        }
        let removed = superseded
            .iter()
            .filter(|&&i| !held.contains(probe.sends[i].value.as_str()))
            .count();
        stats.compaction_superseded_removed += removed as u64;
        stats.compaction_superseded_held += (superseded.len() - removed) as u64;
        if probe.compact_described && !superseded.is_empty() && removed == 0 {
            let detail = format!(
                "cleanup.policy=compact was in force, yet broker {} still holds all {} superseded \
                 records of the probe {} ms after its last send: nothing was compacted",
                replica.node,
                superseded.len(),
                probe.waited_ms
            );
            findings.push(AnomalyKind::CompactionNotInForce, &key, detail, vec![op]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::{check, CheckReport};
    use crate::history::{ConfigOp, History, OpKind};

    fn send(key: &str, value: &str, outcome: Outcome<()>) -> ProbeSend {
        ProbeSend {
            key: key.into(),
            value: value.into(),
            outcome,
        }
    }

    fn ok() -> Outcome<()> {
        Outcome::Ok(())
    }

    /// Sends a1 a2 a3 b1 b2, then the filler f1 that seals them.
    fn sends() -> Vec<ProbeSend> {
        vec![
            send("a", "a1", ok()),
            send("b", "b1", ok()),
            send("a", "a2", ok()),
            send("b", "b2", ok()),
            send("a", "a3", ok()),
            send("f", "f1", ok()),
        ]
    }

    fn replica(node: i32, held: &[(&str, &str)]) -> ReplicaRecords {
        ReplicaRecords {
            node,
            records: held
                .iter()
                .enumerate()
                .map(|(i, (k, v))| StoredRecord {
                    offset: 10 + i as u64,
                    key: Some(k.to_string()),
                    value: Some(v.to_string()),
                })
                .collect(),
        }
    }

    fn judge(sends: Vec<ProbeSend>, replicas: Vec<ReplicaRecords>) -> CheckReport {
        let probe = CompactionProbe {
            topic: "cfg".into(),
            partition: 0,
            compact_described: true,
            sends,
            waited_ms: 2000,
            replicas,
        };
        let mut history = History::new();
        history.push(
            1,
            OpKind::Config(ConfigOp::Compaction(Box::new(probe))),
            100,
            200,
        );
        check(&history)
    }

    #[test]
    fn compacted_replicas_that_keep_every_latest_value_are_valid() {
        let cleaned = [("a", "a3"), ("b", "b2"), ("f", "f1")];
        // One replica cleaned only part of it (b1 still there): some compaction is enough.
        let partly = [("b", "b1"), ("b", "b2"), ("a", "a3"), ("f", "f1")];
        let report = judge(sends(), vec![replica(0, &cleaned), replica(1, &partly)]);
        assert!(report.is_valid(), "{report}");
        assert_eq!(report.stats.compaction_replicas_judged, 2);
        assert_eq!(report.stats.compaction_superseded_removed, 3 + 2);
        assert!(
            report.to_string().contains("compaction-lost-latest: 0"),
            "{report}"
        );
    }

    #[test]
    fn a_replica_that_compacted_nothing_is_compaction_not_in_force() {
        let all = [
            ("a", "a1"),
            ("b", "b1"),
            ("a", "a2"),
            ("b", "b2"),
            ("a", "a3"),
            ("f", "f1"),
        ];
        let cleaned = [("a", "a3"), ("b", "b2"), ("f", "f1")];
        let report = judge(sends(), vec![replica(0, &cleaned), replica(2, &all)]);
        assert_eq!(
            report.count(AnomalyKind::CompactionNotInForce),
            1,
            "{report}"
        );
        assert!(report.anomalies[0].detail.contains("broker 2"), "{report}");
        assert_eq!(report.anomalies[0].key, Key::new("cfg", 0));
    }

    #[test]
    fn nothing_compacted_is_allowed_when_compaction_was_not_described() {
        let all = [
            ("a", "a1"),
            ("a", "a2"),
            ("a", "a3"),
            ("b", "b1"),
            ("b", "b2"),
        ];
        let mut probe_sends = sends();
        probe_sends.pop();
        let mut history = History::new();
        let probe = CompactionProbe {
            topic: "cfg".into(),
            partition: 0,
            compact_described: false,
            sends: probe_sends,
            waited_ms: 0,
            replicas: vec![replica(0, &all)],
        };
        history.push(
            1,
            OpKind::Config(ConfigOp::Compaction(Box::new(probe))),
            1,
            2,
        );
        assert!(check(&history).is_valid());
    }

    #[test]
    fn a_latest_value_removed_is_compaction_lost_latest() {
        // Key a's latest value a3 is gone and a2 survives: the cleaner kept the wrong record.
        let wrong = [("a", "a2"), ("b", "b2"), ("f", "f1")];
        // Key b is gone altogether.
        let gone = [("a", "a3"), ("f", "f1")];
        let report = judge(sends(), vec![replica(0, &wrong), replica(1, &gone)]);
        assert_eq!(
            report.count(AnomalyKind::CompactionLostLatest),
            2,
            "{report}"
        );
        assert!(report
            .anomalies
            .iter()
            .any(|a| a.detail.contains("holds no record of key \"b\"")));
    }

    #[test]
    fn an_indeterminate_send_may_be_the_latest_whenever_it_was_sent() {
        let mut s = sends();
        // b1 timed out: it may have landed after b2, and then b2 was rightly removed.
        s[1].outcome = Outcome::Info("timeout".into());
        let held = [("a", "a3"), ("b", "b1"), ("f", "f1")];
        let report = judge(s, vec![replica(0, &held)]);
        assert!(report.is_valid(), "{report}");
    }

    #[test]
    fn a_replica_that_has_not_caught_up_is_not_judged() {
        let behind = [("a", "a1"), ("b", "b1")];
        let report = judge(sends(), vec![replica(0, &behind)]);
        assert!(report.is_valid(), "{report}");
        assert_eq!(report.stats.compaction_replicas_behind, 1);
        assert_eq!(report.stats.compaction_replicas_judged, 0);
    }
}
