//! Topic-config checkers: what IncrementalAlterConfigs changed, what every broker describes
//! once the cluster healed, and whether `max.message.bytes` is in force, judged from the
//! [`ConfigOp`]s of a history.
//!
//! Per topic, by the names [`AnomalyKind::name`] reports:
//! - config-diverged: two brokers' last successful DescribeConfigs of the topic show different
//!   overrides. The metadata image is a function of the committed metadata log, so brokers that
//!   applied the same log describe the same overrides; the workload describes after the heal,
//!   until they agree or a bound passes.
//! - config-lost: a broker describes a value of a config (or its absence) that no change
//!   allows. Per config name, the values a describe may show are those of the changes that may
//!   have taken effect (acknowledged or indeterminate, invoked before the describe completed)
//!   and were not certainly overwritten: an acknowledged change is overwritten once another
//!   acknowledged change of the same name was invoked after it completed and completed before
//!   the describe was invoked. An indeterminate change may apply at any time after its
//!   invocation (a deposed controller's record can still commit), so it is never certainly
//!   overwritten. The topic's state before any change (no override: the workloads create their
//!   topics without) is allowed until an acknowledged change completed. So an acknowledged
//!   change lost across a controller failover or restart, or a value no change wrote, is
//!   reported. Each name is judged on its own here.
//! - config-not-atomic ([`super::config_atomicity`]): a broker's whole final describe of the
//!   topic, every value of which is allowed on its own, is not what any set of whole changes
//!   (all or nothing of each) gives, applied in an order consistent with real time.
//!   A legacy AlterConfigs (a [`ConfigOp::Replace`]) replaces the topic's whole set of
//!   overrides: for this model it writes the values it names and removes ("no override") every
//!   other config name the history mentions for the topic.
//! - config-not-in-force: after the describes agreed on `max.message.bytes`, a produce of a
//!   batch larger than it was appended, or one within it was refused with MESSAGE_TOO_LARGE.
//!
//! A failed change (a definite refusal) is not used. Only each broker's last successful
//! describe of a topic is judged: an earlier one may come from a broker still catching up with
//! the metadata log, whose configs are eventually consistent (as in Kafka).

use std::collections::{BTreeMap, BTreeSet};

use super::config_atomicity::Verdict;
use super::{AnomalyKind, Findings, Stats};
use crate::history::{ConfigOp, History, Key, OpKind, Outcome};
use crate::ErrorCode;

/// The key anomalies of a topic are filed under: the topic as a whole.
pub fn topic_key(topic: &str) -> Key {
    Key::new(topic, -1)
}

/// One change of one config name that may have taken effect.
#[derive(Clone, Debug)]
pub(super) struct Write<'h> {
    pub(super) op: usize,
    /// `None`: the override was deleted.
    pub(super) value: Option<&'h str>,
    pub(super) invoke_ms: u64,
    pub(super) complete_ms: u64,
    pub(super) acked: bool,
}

/// One successful describe of a topic.
#[derive(Clone, Copy, Debug)]
pub(super) struct Described<'h> {
    pub(super) op: usize,
    pub(super) node: i32,
    pub(super) overrides: &'h BTreeMap<String, String>,
    pub(super) invoke_ms: u64,
    pub(super) complete_ms: u64,
}

/// Adds the config anomalies of `history` to `findings`.
pub(super) fn check(history: &History, stats: &mut Stats, findings: &mut Findings) {
    // topic -> name -> writes; topic -> describes.
    let mut writes: BTreeMap<&str, BTreeMap<&str, Vec<Write>>> = BTreeMap::new();
    let mut describes: BTreeMap<&str, Vec<Described>> = BTreeMap::new();
    // Legacy replaces: (topic, the names they set, the write they made of every other name).
    let mut replaces: Vec<(&str, BTreeSet<&str>, Write)> = Vec::new();
    for op in &history.ops {
        let OpKind::Config(config) = &op.kind else {
            continue;
        };
        stats.config_ops += 1;
        match config {
            ConfigOp::Alter {
                topic,
                set,
                outcome,
                ..
            }
            | ConfigOp::Replace {
                topic,
                set,
                outcome,
                ..
            } => {
                let delete = match config {
                    ConfigOp::Alter { delete, .. } => delete.as_slice(),
                    _ => &[],
                };
                let acked = match outcome {
                    Outcome::Ok(()) => {
                        stats.config_alters.ok += 1;
                        true
                    }
                    Outcome::Info(_) => {
                        stats.config_alters.info += 1;
                        false
                    }
                    Outcome::Fail(_) => {
                        stats.config_alters.fail += 1;
                        continue;
                    }
                };
                if let ConfigOp::Replace { .. } = config {
                    stats.config_replaces += 1;
                    let removed = Write {
                        op: op.index,
                        value: None,
                        invoke_ms: op.invoke_ms,
                        complete_ms: op.complete_ms,
                        acked,
                    };
                    let named = set.iter().map(|(name, _)| name.as_str()).collect();
                    replaces.push((topic.as_str(), named, removed));
                }
                let names = writes.entry(topic.as_str()).or_default();
                let changes = set
                    .iter()
                    .map(|(name, value)| (name.as_str(), Some(value.as_str())))
                    .chain(delete.iter().map(|name| (name.as_str(), None)));
                for (name, value) in changes {
                    names.entry(name).or_default().push(Write {
                        op: op.index,
                        value,
                        invoke_ms: op.invoke_ms,
                        complete_ms: op.complete_ms,
                        acked,
                    });
                }
            }
            ConfigOp::Describe {
                topic,
                node,
                outcome: Outcome::Ok(overrides),
            } => {
                stats.config_describes += 1;
                describes
                    .entry(topic.as_str())
                    .or_default()
                    .push(Described {
                        op: op.index,
                        node: *node,
                        overrides,
                        invoke_ms: op.invoke_ms,
                        complete_ms: op.complete_ms,
                    });
            }
            ConfigOp::Describe { .. } => {}
            ConfigOp::Compaction(probe) => {
                super::compaction::check(probe, op.index, stats, findings);
            }
            ConfigOp::SizeProbe {
                topic,
                limit_bytes,
                batch_bytes,
                outcome,
            } => {
                stats.config_size_probes += 1;
                let Outcome::Ok(code) = outcome else {
                    continue;
                };
                let too_large = ErrorCode::MessageTooLarge.code();
                let wrong = if batch_bytes > limit_bytes {
                    (*code == 0).then(|| "was appended".to_string())
                } else {
                    (*code == too_large).then(|| "was refused as too large".to_string())
                };
                if let Some(what) = wrong {
                    let detail = format!(
                        "a {batch_bytes}-byte batch {what} although max.message.bytes was \
                         {limit_bytes}"
                    );
                    let key = topic_key(topic);
                    findings.push(AnomalyKind::ConfigNotInForce, &key, detail, vec![op.index]);
                }
            }
        }
    }
    // A replace removes every override it does not name: a write of "no override" for every
    // other name the history mentions for its topic (no other name can be described).
    for (topic, named, removed) in replaces {
        let mut mentioned: BTreeSet<&str> = writes
            .get(topic)
            .into_iter()
            .flat_map(|names| names.keys().copied())
            .collect();
        for d in describes.get(topic).into_iter().flatten() {
            mentioned.extend(d.overrides.keys().map(String::as_str));
        }
        let names = writes.entry(topic).or_default();
        for name in mentioned.difference(&named) {
            names.entry(name).or_default().push(removed.clone());
        }
    }
    let no_writes = BTreeMap::new();
    for (topic, described) in &describes {
        let key = topic_key(topic);
        // Each broker's last describe: an earlier one may come from a broker still catching up
        // with the metadata log (its configs are eventually consistent, as in Kafka).
        let mut last: BTreeMap<i32, Described> = BTreeMap::new();
        for d in described {
            last.insert(d.node, *d);
        }
        let described: Vec<Described> = last.into_values().collect();
        check_agreement(&key, &described, findings);
        let names = writes.get(topic).unwrap_or(&no_writes);
        let mentioned: BTreeSet<&str> = names
            .keys()
            .copied()
            .chain(
                described
                    .iter()
                    .flat_map(|d| d.overrides.keys().map(String::as_str)),
            )
            .collect();
        for name in mentioned {
            let changes = names.get(name).map_or(&[][..], Vec::as_slice);
            for d in &described {
                stats.config_values_checked += 1;
                check_value(&key, name, changes, d, findings);
            }
        }
        // The combination: all or nothing of each change (config_atomicity).
        for d in &described {
            match super::config_atomicity::judge(names, d) {
                Verdict::Explained => stats.config_atomicity_judged += 1,
                Verdict::Unjudged => stats.config_atomicity_unjudged += 1,
                Verdict::PerName => {}
                Verdict::Unexplained(ops) => {
                    stats.config_atomicity_judged += 1;
                    let detail = format!(
                        "broker {} describes {:?}: each value alone is allowed, but no set of \
                         whole changes applied in an order consistent with real time gives \
                         this combination",
                        d.node, d.overrides
                    );
                    findings.push(AnomalyKind::ConfigNotAtomic, &key, detail, ops);
                }
            }
        }
    }
}

/// config-diverged: the brokers' last describes of the topic show the same overrides.
fn check_agreement(key: &Key, described: &[Described], findings: &mut Findings) {
    let mut finals = described.iter();
    let Some(first) = finals.next() else {
        return;
    };
    for other in finals {
        if other.overrides != first.overrides {
            let detail = format!(
                "broker {} describes {:?} but broker {} describes {:?}",
                first.node, first.overrides, other.node, other.overrides
            );
            findings.push(
                AnomalyKind::ConfigDiverged,
                key,
                detail,
                vec![first.op, other.op],
            );
        }
    }
}

/// config-lost: the value `d` shows for `name` is one the changes allow.
fn check_value(key: &Key, name: &str, changes: &[Write], d: &Described, findings: &mut Findings) {
    let shown = d.overrides.get(name).map(String::as_str);
    // The latest invocation of an acknowledged change that completed before the describe was
    // invoked: an acknowledged change that completed before it is certainly overwritten.
    let settled: Vec<&Write> = changes
        .iter()
        .filter(|w| w.acked && w.complete_ms < d.invoke_ms)
        .collect();
    let overwritten_before = settled.iter().map(|w| w.invoke_ms).max();
    let mut allowed: Vec<Option<&str>> = changes
        .iter()
        .filter(|w| w.invoke_ms <= d.complete_ms)
        .filter(|w| !w.acked || overwritten_before.is_none_or(|at| at <= w.complete_ms))
        .map(|w| w.value)
        .collect();
    if settled.is_empty() {
        allowed.push(None);
    }
    if allowed.contains(&shown) {
        return;
    }
    let mut ops = vec![d.op];
    // The acknowledged changes the describe should have shown one of.
    ops.extend(
        settled
            .iter()
            .filter(|w| overwritten_before.is_none_or(|at| at <= w.complete_ms))
            .map(|w| w.op),
    );
    let expected: Vec<String> = allowed
        .iter()
        .map(|v| v.map_or("(no override)".to_string(), |v| format!("{v:?}")))
        .collect();
    let detail = format!(
        "broker {} describes {name}={} but the changes allow only {}",
        d.node,
        shown.map_or("(no override)".to_string(), |v| format!("{v:?}")),
        expected.join(" or ")
    );
    findings.push(AnomalyKind::ConfigLost, key, detail, ops);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::{check, CheckReport};

    /// A history of config operations, one process each unless said otherwise.
    #[derive(Default)]
    struct Run {
        history: History,
    }

    impl Run {
        fn alter(
            &mut self,
            set: &[(&str, &str)],
            delete: &[&str],
            outcome: Outcome<()>,
            at: (u64, u64),
        ) -> usize {
            let kind = OpKind::Config(ConfigOp::Alter {
                topic: "cfg".into(),
                set: set
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                delete: delete.iter().map(|k| k.to_string()).collect(),
                outcome,
            });
            self.history.push(1, kind, at.0, at.1)
        }

        fn describe(&mut self, node: i32, overrides: &[(&str, &str)], at: u64) -> usize {
            let overrides = overrides
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let kind = OpKind::Config(ConfigOp::Describe {
                topic: "cfg".into(),
                node,
                outcome: Outcome::Ok(overrides),
            });
            self.history.push(2, kind, at, at + 1)
        }

        fn probe(&mut self, limit_bytes: u64, batch_bytes: u64, code: i16) -> usize {
            let kind = OpKind::Config(ConfigOp::SizeProbe {
                topic: "cfg".into(),
                limit_bytes,
                batch_bytes,
                outcome: Outcome::Ok(code),
            });
            self.history.push(3, kind, 900, 901)
        }

        fn check(&self) -> CheckReport {
            check(&self.history)
        }
    }

    fn info() -> Outcome<()> {
        Outcome::Info("request timed out".into())
    }

    #[test]
    fn every_broker_showing_the_last_acknowledged_change_is_valid() {
        let mut run = Run::default();
        run.alter(&[("segment.bytes", "4096")], &[], Outcome::Ok(()), (10, 20));
        run.alter(
            &[("segment.bytes", "8192"), ("retention.ms", "1")],
            &[],
            Outcome::Ok(()),
            (30, 40),
        );
        run.alter(&[], &["retention.ms"], Outcome::Ok(()), (50, 60));
        for node in 0..3 {
            run.describe(node, &[("segment.bytes", "8192")], 100);
        }
        let report = run.check();
        assert!(report.is_valid(), "{report}");
        assert_eq!(report.stats.config_alters.ok, 3);
        assert_eq!(report.stats.config_describes, 3);
        assert!(report.to_string().contains("config-lost: 0"), "{report}");
    }

    #[test]
    fn an_acknowledged_change_lost_after_a_failover_is_config_lost() {
        let mut run = Run::default();
        run.alter(&[("segment.bytes", "4096")], &[], Outcome::Ok(()), (10, 20));
        let acked = run.alter(&[("segment.bytes", "8192")], &[], Outcome::Ok(()), (30, 40));
        let describe = run.describe(0, &[("segment.bytes", "4096")], 100);
        let report = run.check();
        assert_eq!(report.count(AnomalyKind::ConfigLost), 1, "{report}");
        assert_eq!(report.anomalies[0].ops, vec![describe, acked]);
        assert_eq!(report.anomalies[0].key, topic_key("cfg"));
    }

    #[test]
    fn an_acknowledged_change_missing_entirely_is_config_lost() {
        let mut run = Run::default();
        run.alter(
            &[("cleanup.policy", "compact")],
            &[],
            Outcome::Ok(()),
            (10, 20),
        );
        run.describe(1, &[], 100);
        assert_eq!(run.check().count(AnomalyKind::ConfigLost), 1);
    }

    #[test]
    fn a_value_no_change_wrote_is_config_lost() {
        let mut run = Run::default();
        run.describe(1, &[("retention.ms", "5")], 100);
        assert_eq!(run.check().count(AnomalyKind::ConfigLost), 1);
    }

    #[test]
    fn an_indeterminate_or_concurrent_change_may_or_may_not_show() {
        for shown in ["4096", "8192", "16384"] {
            let mut run = Run::default();
            run.alter(&[("segment.bytes", "4096")], &[], Outcome::Ok(()), (10, 50));
            // Concurrent with the first: either order is allowed.
            run.alter(&[("segment.bytes", "8192")], &[], Outcome::Ok(()), (20, 40));
            // Indeterminate, and invoked after both: it may have applied last, or never.
            run.alter(&[("segment.bytes", "16384")], &[], info(), (60, 70));
            run.describe(0, &[("segment.bytes", shown)], 100);
            let report = run.check();
            assert!(report.is_valid(), "{shown}: {report}");
        }
    }

    #[test]
    fn an_indeterminate_change_does_not_bring_back_an_overwritten_one() {
        let mut run = Run::default();
        run.alter(&[("segment.bytes", "4096")], &[], Outcome::Ok(()), (10, 20));
        run.alter(&[("segment.bytes", "16384")], &[], info(), (25, 26));
        run.alter(&[("segment.bytes", "8192")], &[], Outcome::Ok(()), (30, 40));
        run.describe(0, &[("segment.bytes", "4096")], 100);
        assert_eq!(run.check().count(AnomalyKind::ConfigLost), 1);
    }

    #[test]
    fn a_failed_change_must_not_show() {
        for (shown, lost) in [(&[("segment.bytes", "4096")][..], 1), (&[][..], 0)] {
            let mut run = Run::default();
            let refused = Outcome::Fail("INVALID_CONFIG".into());
            run.alter(&[("segment.bytes", "4096")], &[], refused, (10, 20));
            run.describe(0, shown, 100);
            assert_eq!(run.check().count(AnomalyKind::ConfigLost), lost);
        }
    }

    #[test]
    fn a_legacy_replace_removes_every_override_it_does_not_name() {
        let replace = |run: &mut Run, set: &[(&str, &str)], outcome, at: (u64, u64)| {
            let kind = OpKind::Config(ConfigOp::Replace {
                topic: "cfg".into(),
                set: set
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                outcome,
            });
            run.history.push(1, kind, at.0, at.1)
        };
        // Acknowledged: segment.bytes is gone, retention.ms is what it set.
        for (shown, lost) in [
            (&[("retention.ms", "5")][..], 0),
            (&[("retention.ms", "5"), ("segment.bytes", "4096")][..], 1),
            (&[][..], 1),
        ] {
            let mut run = Run::default();
            run.alter(&[("segment.bytes", "4096")], &[], Outcome::Ok(()), (10, 20));
            replace(
                &mut run,
                &[("retention.ms", "5")],
                Outcome::Ok(()),
                (30, 40),
            );
            run.describe(0, shown, 100);
            let report = run.check();
            assert_eq!(
                report.count(AnomalyKind::ConfigLost),
                lost,
                "{shown:?}: {report}"
            );
            assert_eq!(report.stats.config_replaces, 1);
        }
        // Indeterminate: either all of it or none of it may show, name by name.
        for shown in [
            &[("segment.bytes", "4096")][..],
            &[("retention.ms", "5")][..],
        ] {
            let mut run = Run::default();
            run.alter(&[("segment.bytes", "4096")], &[], Outcome::Ok(()), (10, 20));
            replace(&mut run, &[("retention.ms", "5")], info(), (30, 40));
            run.describe(0, shown, 100);
            assert!(run.check().is_valid(), "{shown:?}");
        }
    }

    #[test]
    fn a_change_of_several_configs_applied_in_part_is_config_not_atomic() {
        for (shown, not_atomic) in [
            (&[("a", "2"), ("b", "1")][..], 1),
            (&[("a", "1"), ("b", "2")][..], 1),
            (&[("a", "2"), ("b", "2")][..], 0),
            (&[("a", "1"), ("b", "1")][..], 0),
        ] {
            let mut run = Run::default();
            run.alter(&[("a", "1"), ("b", "1")], &[], Outcome::Ok(()), (10, 20));
            run.alter(&[("a", "2"), ("b", "2")], &[], info(), (30, 40));
            run.describe(0, shown, 100);
            let report = run.check();
            assert_eq!(report.count(AnomalyKind::ConfigLost), 0, "{report}");
            let found = report.count(AnomalyKind::ConfigNotAtomic);
            assert_eq!(found, not_atomic, "{shown:?}: {report}");
            assert_eq!(report.stats.config_atomicity_judged, 1);
        }
    }

    #[test]
    fn two_concurrent_changes_apply_one_after_the_other_never_interleaved() {
        for (shown, not_atomic) in [
            (&[("a", "1"), ("b", "2")][..], 1),
            (&[("a", "1"), ("b", "1")][..], 0),
            (&[("a", "2"), ("b", "2")][..], 0),
        ] {
            let mut run = Run::default();
            run.alter(&[("a", "1"), ("b", "1")], &[], Outcome::Ok(()), (10, 50));
            run.alter(&[("a", "2"), ("b", "2")], &[], Outcome::Ok(()), (20, 40));
            run.describe(0, shown, 100);
            let report = run.check();
            assert_eq!(
                report.count(AnomalyKind::ConfigNotAtomic),
                not_atomic,
                "{shown:?}"
            );
            assert!(report
                .anomalies
                .iter()
                .all(|a| a.kind != AnomalyKind::ConfigLost));
        }
    }

    #[test]
    fn a_legacy_replace_applies_whole_or_not_at_all() {
        let replace = ConfigOp::Replace {
            topic: "cfg".into(),
            set: vec![("b".into(), "1".into())],
            outcome: info(),
        };
        for (shown, not_atomic) in [
            // The replace set b but did not remove a: no order of whole changes gives it.
            (&[("a", "1"), ("b", "1")][..], 1),
            (&[("b", "1")][..], 0),
            (&[("a", "1")][..], 0),
        ] {
            let mut run = Run::default();
            run.alter(&[("a", "1")], &[], Outcome::Ok(()), (10, 20));
            run.history.push(1, OpKind::Config(replace.clone()), 30, 40);
            run.describe(0, shown, 100);
            let report = run.check();
            assert_eq!(
                report.count(AnomalyKind::ConfigNotAtomic),
                not_atomic,
                "{shown:?}"
            );
            assert_eq!(
                report.count(AnomalyKind::ConfigLost),
                0,
                "{shown:?}: {report}"
            );
        }
    }

    #[test]
    fn brokers_that_describe_different_overrides_diverge() {
        let mut run = Run::default();
        run.alter(&[("segment.bytes", "4096")], &[], info(), (10, 20));
        run.describe(0, &[("segment.bytes", "4096")], 100);
        run.describe(1, &[], 100);
        // Broker 2 disagreed first, then caught up: only its last describe counts.
        run.describe(2, &[], 100);
        run.describe(2, &[("segment.bytes", "4096")], 200);
        let report = run.check();
        assert_eq!(report.count(AnomalyKind::ConfigDiverged), 1, "{report}");
        assert_eq!(report.count(AnomalyKind::ConfigLost), 0, "{report}");
        assert!(AnomalyKind::ConfigDiverged.is_config() && !AnomalyKind::ConfigDiverged.is_group());
        assert!(report.anomalies[0]
            .to_json_line()
            .starts_with("{\"kind\":\"config-diverged\""));
    }

    #[test]
    fn a_batch_above_max_message_bytes_must_be_refused() {
        let mut run = Run::default();
        run.probe(1000, 999, 0);
        run.probe(1000, 1001, ErrorCode::MessageTooLarge.code());
        assert!(run.check().is_valid());
        let mut run = Run::default();
        run.probe(1000, 1001, 0);
        run.probe(1000, 1000, ErrorCode::MessageTooLarge.code());
        let report = run.check();
        assert_eq!(report.count(AnomalyKind::ConfigNotInForce), 2, "{report}");
    }

    #[test]
    fn histories_without_config_ops_report_no_config_kinds() {
        let report = check(&History::new());
        assert!(!report.to_string().contains("config-"), "{report}");
    }
}
