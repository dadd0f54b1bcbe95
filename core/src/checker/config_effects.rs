//! Topic configs in force in the logs: whether `segment.bytes`, `retention.ms` and
//! `retention.bytes` take effect on every replica of a partition, judged from each replica's
//! segment layout as its disk holds it at the end of a run ([`EffectsProbe`]; the simulator's
//! `configs` scenario reads it after a probe that writes a known sequence of batches once the
//! brokers describe the same configs).
//!
//! Per partition, by the names [`AnomalyKind::name`] reports, on every replica that holds the
//! whole log (a replica whose log ends below another's is counted as behind and not judged):
//! - segment-bytes-not-in-force: a segment that holds a probe batch is larger than
//!   `segment.bytes` and holds more than one batch, or a segment whose first batch is a probe
//!   batch was started although that batch would have fit into the segment before it. Kafka
//!   rolls exactly when the next batch would not fit (`LogSegment.shouldRoll`:
//!   `size > segment.bytes − batch`); a batch larger than `segment.bytes` gets a segment of
//!   its own. The other reasons to roll (`segment.ms`, full offset index) stay out of the
//!   probe's way: the probed topic keeps Kafka's 7-day `segment.ms`.
//! - retention-not-in-force: the oldest segment is due by Kafka's rule
//!   ([`super::retention::due`]: older than `retention.ms`, or the log stays at least
//!   `retention.bytes` long without it), is not the active (last) one and ends at or below the
//!   replica's committed end, yet it is still there at [`EffectsProbe::judged_at_ms`]: a time
//!   by which every replica has run a retention check after the probe's last append. Kafka
//!   deletes oldest first and stops at the first segment that is not due, so only the oldest
//!   one left is judged. The complement of retention-early ([`super::retention`]).

use super::retention::{due, Due};
use super::{AnomalyKind, Findings, Stats};
use crate::history::{History, Key, OpKind};

/// One batch of a replica's log as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchLayout {
    /// The log's own offsets (Raft's entries included).
    pub base_offset: u64,
    pub next_offset: u64,
    pub size_bytes: u64,
    pub max_timestamp: i64,
    /// Written by the probe (after the configs it checks were in force everywhere).
    pub probe: bool,
}

/// One segment of a replica's log as stored, oldest first in [`ReplicaLayout::segments`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentLayout {
    pub base_offset: u64,
    pub size_bytes: u64,
    pub batches: Vec<BatchLayout>,
}

impl SegmentLayout {
    fn next_offset(&self) -> u64 {
        self.batches
            .last()
            .map_or(self.base_offset, |b| b.next_offset)
    }

    /// The largest timestamp of any batch (`i64::MIN` when empty), as Kafka's time index keeps it.
    fn max_timestamp(&self) -> i64 {
        self.batches
            .iter()
            .map(|b| b.max_timestamp)
            .max()
            .unwrap_or(i64::MIN)
    }

    fn has_probe(&self) -> bool {
        self.batches.iter().any(|b| b.probe)
    }
}

/// One replica's log at the end of the probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaLayout {
    pub node: u64,
    /// The end of what the replica last reported committed (its high watermark, in the log's
    /// own offsets); `None` if it reported nothing.
    pub committed_end: Option<u64>,
    pub segments: Vec<SegmentLayout>,
}

impl ReplicaLayout {
    fn log_end(&self) -> u64 {
        self.segments.last().map_or(0, SegmentLayout::next_offset)
    }
}

/// What the configs in force are and what every replica of one partition holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EffectsProbe {
    pub key: Key,
    /// The `segment.bytes`, `retention.ms` and `retention.bytes` every broker described for the
    /// topic before the probe wrote (negative retention: off).
    pub segment_bytes: u64,
    pub retention_ms: i64,
    pub retention_bytes: i64,
    /// The brokers' wall clock (ms since the epoch) by which every replica ran a retention
    /// check after the probe's last append and after its high watermark reached its log end:
    /// the layouts were read later than that by at least one retention check interval plus
    /// the slack the probe states.
    pub judged_at_ms: u64,
    pub replicas: Vec<ReplicaLayout>,
}

/// Adds the anomalies of every probe to `findings`. They name the history's last config
/// operation (the probe's own have no op).
pub(super) fn check(
    history: &History,
    probes: &[EffectsProbe],
    stats: &mut Stats,
    findings: &mut Findings,
) {
    let Some(last) = history.ops.len().checked_sub(1) else {
        return;
    };
    let anchor = history
        .ops
        .iter()
        .rev()
        .find(|op| matches!(op.kind, OpKind::Config(_)))
        .map_or(last, |op| op.index);
    for probe in probes {
        let log_end = probe.replicas.iter().map(ReplicaLayout::log_end).max();
        for replica in &probe.replicas {
            if Some(replica.log_end()) < log_end {
                stats.config_effect_replicas_behind += 1;
                continue;
            }
            stats.config_effect_replicas += 1;
            for detail in segment_problems(probe, replica) {
                let detail = format!("broker {}: {detail}", replica.node);
                findings.push(
                    AnomalyKind::SegmentBytesNotInForce,
                    &probe.key,
                    detail,
                    vec![anchor],
                );
            }
            if let Some(detail) = retention_problem(probe, replica) {
                let detail = format!("broker {}: {detail}", replica.node);
                findings.push(
                    AnomalyKind::RetentionNotInForce,
                    &probe.key,
                    detail,
                    vec![anchor],
                );
            }
        }
    }
}

/// segment-bytes-not-in-force on one replica.
fn segment_problems(probe: &EffectsProbe, replica: &ReplicaLayout) -> Vec<String> {
    let limit = probe.segment_bytes;
    let mut problems = Vec::new();
    let mut previous: Option<&SegmentLayout> = None;
    for segment in &replica.segments {
        if segment.has_probe() && segment.size_bytes > limit && segment.batches.len() > 1 {
            problems.push(format!(
                "segment {} holds {} bytes in {} batches, above segment.bytes {limit}",
                segment.base_offset,
                segment.size_bytes,
                segment.batches.len()
            ));
        }
        if let (Some(before), Some(first)) = (previous, segment.batches.first()) {
            let contiguous = before.next_offset() == segment.base_offset;
            if contiguous && first.probe && before.size_bytes + first.size_bytes <= limit {
                problems.push(format!(
                    "segment {} was started for a {}-byte batch that fit into segment {} \
                     ({} bytes) under segment.bytes {limit}",
                    segment.base_offset, first.size_bytes, before.base_offset, before.size_bytes
                ));
            }
        }
        previous = Some(segment);
    }
    problems
}

/// retention-not-in-force on one replica: its oldest segment, if it is due.
fn retention_problem(probe: &EffectsProbe, replica: &ReplicaLayout) -> Option<String> {
    let [oldest, _, ..] = replica.segments.as_slice() else {
        return None;
    };
    let committed = replica
        .committed_end
        .is_some_and(|end| oldest.next_offset() <= end);
    let log_bytes: u64 = replica.segments.iter().map(|s| s.size_bytes).sum();
    let max_timestamp = oldest.max_timestamp();
    let Due { expired, oversized } = due(
        max_timestamp,
        oldest.size_bytes,
        log_bytes,
        probe.judged_at_ms,
        probe.retention_ms,
        probe.retention_bytes,
    );
    if !committed || !(expired || oversized) {
        return None;
    }
    let why = match (expired, oversized) {
        (true, true) => "by time and by size",
        (true, false) => "by time",
        _ => "by size",
    };
    Some(format!(
        "segment [{}, {}) is still there at {} ms although due {why} (largest timestamp \
         {max_timestamp}, retention.ms {}; log {log_bytes} bytes, segment {} bytes, \
         retention.bytes {})",
        oldest.base_offset,
        oldest.next_offset(),
        probe.judged_at_ms,
        probe.retention_ms,
        oldest.size_bytes,
        probe.retention_bytes
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{ConfigOp, Outcome};

    /// A segment of probe batches of the given sizes, starting at `base`, each one offset and
    /// stamped `timestamp`.
    fn segment(base: u64, sizes: &[u64], timestamp: i64) -> SegmentLayout {
        SegmentLayout {
            base_offset: base,
            size_bytes: sizes.iter().sum(),
            batches: sizes
                .iter()
                .enumerate()
                .map(|(i, size)| BatchLayout {
                    base_offset: base + i as u64,
                    next_offset: base + i as u64 + 1,
                    size_bytes: *size,
                    max_timestamp: timestamp,
                    probe: true,
                })
                .collect(),
        }
    }

    /// `segment.bytes` 1000, `retention.ms` 10,000, `retention.bytes` 2,000, judged at 100,000.
    fn probe(replicas: Vec<ReplicaLayout>) -> EffectsProbe {
        EffectsProbe {
            key: Key::new("cfg", 0),
            segment_bytes: 1000,
            retention_ms: 10_000,
            retention_bytes: 2000,
            judged_at_ms: 100_000,
            replicas,
        }
    }

    fn replica(node: u64, segments: Vec<SegmentLayout>) -> ReplicaLayout {
        let end = segments.last().map_or(0, SegmentLayout::next_offset);
        ReplicaLayout {
            node,
            committed_end: Some(end),
            segments,
        }
    }

    /// A layout Kafka's rules produce: recent batches (stamped 95,000) in segments rolled
    /// when the next batch would not fit, and no more than `retention.bytes` plus one segment.
    fn lawful() -> Vec<SegmentLayout> {
        vec![
            segment(10, &[400, 400], 95_000),
            segment(12, &[400, 400], 95_000),
            segment(14, &[700], 95_000),
            segment(15, &[400], 95_000),
        ]
    }

    fn kinds(probe: &EffectsProbe) -> Vec<AnomalyKind> {
        let mut history = History::new();
        history.push(
            1,
            OpKind::Config(ConfigOp::Alter {
                topic: "cfg".into(),
                set: vec![],
                delete: vec![],
                outcome: Outcome::Ok(()),
            }),
            0,
            1,
        );
        let mut stats = Stats::default();
        let mut findings = Findings::default();
        check(
            &history,
            std::slice::from_ref(probe),
            &mut stats,
            &mut findings,
        );
        let report = findings.into_report(stats);
        report.anomalies.iter().map(|a| a.kind).collect()
    }

    #[test]
    fn segments_rolled_at_segment_bytes_and_retention_done_are_valid() {
        let p = probe(vec![replica(0, lawful()), replica(1, lawful())]);
        assert_eq!(kinds(&p), vec![]);
        // A batch larger than segment.bytes has a segment of its own.
        let p = probe(vec![replica(
            0,
            vec![
                segment(10, &[400, 400], 95_000),
                segment(12, &[1500], 95_000),
            ],
        )]);
        assert_eq!(kinds(&p), vec![]);
    }

    #[test]
    fn a_segment_that_never_rolls_is_caught() {
        let segments = vec![
            segment(10, &[400, 400], 95_000),
            segment(12, &[700], 95_000),
            segment(13, &[400, 400, 400], 95_000),
        ];
        let p = probe(vec![replica(2, segments)]);
        assert_eq!(kinds(&p), vec![AnomalyKind::SegmentBytesNotInForce]);
    }

    #[test]
    fn a_segment_rolled_before_the_batch_would_not_fit_is_caught() {
        let segments = vec![
            segment(10, &[400, 400], 95_000),
            segment(12, &[400], 95_000),
            segment(13, &[400], 95_000),
        ];
        let p = probe(vec![replica(0, segments)]);
        assert_eq!(kinds(&p), vec![AnomalyKind::SegmentBytesNotInForce]);
    }

    #[test]
    fn a_segment_due_by_time_or_size_left_behind_is_caught() {
        // By time: the oldest segment's records are older than retention.ms.
        let mut segments = lawful();
        segments[0] = segment(10, &[400, 400], 50_000);
        let p = probe(vec![replica(0, segments.clone())]);
        assert_eq!(kinds(&p), vec![AnomalyKind::RetentionNotInForce]);
        // By size: one more segment in front, and the log stays above retention.bytes without it.
        let mut segments = lawful();
        segments.insert(0, segment(8, &[400, 400], 95_000));
        let p = probe(vec![replica(0, segments)]);
        assert_eq!(kinds(&p), vec![AnomalyKind::RetentionNotInForce]);
    }

    #[test]
    fn only_committed_sealed_segments_are_due() {
        let mut segments = lawful();
        segments[0] = segment(10, &[400, 400], 50_000);
        let mut r = replica(0, segments);
        r.committed_end = Some(11);
        assert_eq!(kinds(&probe(vec![r])), vec![]);
        // The active segment stays whatever its age.
        let r = replica(0, vec![segment(10, &[400], 0)]);
        assert_eq!(kinds(&probe(vec![r])), vec![]);
    }

    #[test]
    fn a_replica_behind_the_others_is_not_judged() {
        let mut behind = lawful();
        behind.pop();
        behind[0] = segment(10, &[400, 400], 50_000);
        let p = probe(vec![replica(0, lawful()), replica(1, behind)]);
        assert_eq!(kinds(&p), vec![]);
    }
}
