//! Retention: what time and size retention delete, and what clients may then miss.
//!
//! A broker reports every retention run that deleted segments ([`Deletion`], through the
//! replicas' observation hook: [`super::replicas::Observation::Retention`]); clients report the
//! log start offsets their fetches were told ([`ObservedStart`]). Both arrive through
//! [`super::offsets::OffsetFacts::retention`], per partition. Kafka's rules, checked per deletion:
//!
//! - **retention-early:** each deleted segment, oldest first, was due: its largest timestamp is
//!   older than `retention.ms` by the broker's clock at the deletion (`max_timestamp < now −
//!   retention.ms`), or the log stays at least `retention.bytes` long without it (Kafka's
//!   `shouldRetainSize`: `size − segment ≥ retention.bytes`), or it lies wholly below a
//!   DeleteRecords log start. Anything else deleted something inside `retention.ms` or within
//!   `retention.bytes` of the log end.
//! - **retention-past-hw:** no deleted segment reaches past the high watermark, the new log start
//!   is at most the high watermark, the active segment (the last) is never deleted, and the log
//!   start is where the last deleted segment ended, never below where it was.
//! - **log-start-unjustified:** every log start a client was told is 0, one that a deletion
//!   judged lawful above produced (on some replica), or at most the offset of a DeleteRecords
//!   that may have taken effect ([`DeleteRecordsCall`]): a log start nothing lawful explains
//!   means records were removed by something other than retention or DeleteRecords.
//! - **log-start-regressed:** an acknowledged DeleteRecords answered a low watermark below the
//!   offset it asked for (Kafka: the log start becomes the requested offset, or stays where it
//!   was if that is higher; the answer is the log start after the call). And, only when
//!   [`Retained::monotonic`] (one replica serves every fetch): a fetch invoked after another
//!   fetch, or an acknowledged DeleteRecords, completed was told a lower log start.
//!
//! The lost-write and unseen checkers ([`super`]) excuse an acknowledged value that no read
//! returned only when it sits below the highest log start a *lawful* deletion produced
//! ([`Retained::lawful_start`]); values at or above it must still be read. An unlawful deletion
//! excuses nothing (and is reported here).

use std::collections::BTreeMap;

use super::{AnomalyKind, Findings, Stats};
use crate::history::{History, Key, OpKind, Outcome};

/// One deleted segment, in the log's own offsets (Raft's entries included) and, for its end, in
/// the Kafka offsets clients see.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeletedSegment {
    pub base_offset: u64,
    /// One past the segment's last offset.
    pub next_offset: u64,
    /// `next_offset` as clients see it.
    pub kafka_next_offset: u64,
    /// The largest record timestamp in the segment (`i64::MIN` when it holds none).
    pub max_timestamp: i64,
    pub size_bytes: u64,
}

/// One retention run of one replica that deleted segments: what it deleted and everything the
/// rules above need about the log at that moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deletion {
    /// The broker's wall clock at the deletion, in ms since the epoch.
    pub now_ms: u64,
    pub retention_ms: i64,
    pub retention_bytes: i64,
    /// The log start DeleteRecords set (Kafka offset; 0 without one).
    pub delete_records_start: u64,
    /// The log's size before the deletion.
    pub size_bytes_before: u64,
    /// Oldest first.
    pub segments: Vec<DeletedSegment>,
    /// Segments left after the deletion (the active one among them).
    pub segments_left: usize,
    pub log_start_before: u64,
    pub log_start_after: u64,
    pub high_watermark: u64,
    pub log_end: u64,
    pub kafka_log_start_before: u64,
    pub kafka_log_start_after: u64,
    pub kafka_high_watermark: u64,
}

/// A log start a client's fetch was told (Kafka offset), with when the fetch was invoked and
/// when it completed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObservedStart {
    pub invoke_ms: u64,
    pub at_ms: u64,
    pub offset: u64,
}

/// One DeleteRecords of one partition a client sent (Kafka offsets).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeleteRecordsCall {
    pub invoke_ms: u64,
    pub complete_ms: u64,
    /// The offset the log start was asked to move to.
    pub offset: u64,
    /// `Ok(low watermark answered)`, `Fail` (refused: nothing moved) or `Info` (unknown: it
    /// may have moved the log start, then or later).
    pub outcome: Outcome<u64>,
}

/// What the system under test reported about retention on one partition.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Retained {
    /// Every deletion, with the node that made it, in the order reported.
    pub deletions: Vec<(u64, Deletion)>,
    /// Log starts clients were told.
    pub observed_starts: Vec<ObservedStart>,
    /// DeleteRecords calls clients made.
    pub delete_records: Vec<DeleteRecordsCall>,
    /// Whether the log start clients see must never go back (one node: every fetch is served
    /// by the same log). With replicas each runs retention on its own, so a new leader's log
    /// start may be lower than the old one's, as in Kafka.
    pub monotonic: bool,
}

impl Retained {
    /// The highest Kafka log start a lawful deletion produced, or a DeleteRecords that may have
    /// taken effect asked for: acknowledged values below it may be gone.
    pub fn lawful_start(&self) -> u64 {
        let deleted = self
            .deletions
            .iter()
            .filter(|(_, d)| judge(d).is_empty())
            .map(|(_, d)| d.kafka_log_start_after);
        let asked = self
            .delete_records
            .iter()
            .filter(|c| !matches!(c.outcome, Outcome::Fail(_)))
            .map(|c| c.offset);
        deleted.chain(asked).max().unwrap_or(0)
    }

    /// Whether anything moved (or may have moved) the log start: then it is not fixed at 0
    /// for the offsets checker.
    pub fn moves(&self) -> bool {
        !self.deletions.is_empty()
            || !self.observed_starts.is_empty()
            || !self.delete_records.is_empty()
    }
}

/// Whether Kafka's retention may delete the oldest segment of a log by time or by size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Due {
    /// Its largest timestamp is older than `retention.ms` at `now_ms` (Kafka's
    /// `deleteRetentionMsBreachedSegments`: `now − max_timestamp > retention.ms`).
    pub expired: bool,
    /// The log stays at least `retention.bytes` long without it (Kafka's
    /// `deleteRetentionSizeBreachedSegments`: `size − segment ≥ retention.bytes`).
    pub oversized: bool,
}

/// Kafka's rule for the oldest segment of a log of `log_bytes`: shared by the check that
/// nothing went early ([`judge`]) and the check that nothing due stays
/// ([`super::config_effects`]). A negative limit is off.
pub fn due(
    max_timestamp: i64,
    segment_bytes: u64,
    log_bytes: u64,
    now_ms: u64,
    retention_ms: i64,
    retention_bytes: i64,
) -> Due {
    Due {
        expired: retention_ms >= 0 && max_timestamp < (now_ms as i64).saturating_sub(retention_ms),
        oversized: retention_bytes >= 0
            && log_bytes.saturating_sub(segment_bytes) >= retention_bytes as u64,
    }
}

/// Why a deletion broke Kafka's rules, if it did (empty when lawful).
pub fn judge(d: &Deletion) -> Vec<(AnomalyKind, String)> {
    let mut problems = Vec::new();
    let mut size = d.size_bytes_before;
    let mut start = d.log_start_before;
    for s in &d.segments {
        let Due { expired, oversized } = due(
            s.max_timestamp,
            s.size_bytes,
            size,
            d.now_ms,
            d.retention_ms,
            d.retention_bytes,
        );
        let below_start =
            d.delete_records_start > 0 && s.kafka_next_offset <= d.delete_records_start;
        if !(expired || oversized || below_start) {
            problems.push((
                AnomalyKind::RetentionEarly,
                format!(
                    "segment [{}, {}) deleted although neither due by time (largest timestamp \
                     {}, now {}, retention.ms {}) nor by size (log {} bytes, segment {} bytes, \
                     retention.bytes {})",
                    s.base_offset,
                    s.next_offset,
                    s.max_timestamp,
                    d.now_ms,
                    d.retention_ms,
                    size,
                    s.size_bytes,
                    d.retention_bytes
                ),
            ));
        }
        if s.next_offset > d.high_watermark {
            problems.push((
                AnomalyKind::RetentionPastHighWatermark,
                format!(
                    "segment [{}, {}) deleted past the high watermark {}",
                    s.base_offset, s.next_offset, d.high_watermark
                ),
            ));
        }
        if s.base_offset != start {
            problems.push((
                AnomalyKind::RetentionPastHighWatermark,
                format!(
                    "segment [{}, {}) deleted out of order: the log started at {start}",
                    s.base_offset, s.next_offset
                ),
            ));
        }
        size = size.saturating_sub(s.size_bytes);
        start = s.next_offset;
    }
    if d.segments_left == 0 {
        problems.push((
            AnomalyKind::RetentionPastHighWatermark,
            "the active segment was deleted".to_string(),
        ));
    }
    if d.log_start_after != start
        || d.log_start_after > d.high_watermark
        || d.kafka_log_start_after > d.kafka_high_watermark
        || d.kafka_log_start_after < d.kafka_log_start_before
    {
        problems.push((
            AnomalyKind::RetentionPastHighWatermark,
            format!(
                "log start moved from {} (Kafka {}) to {} (Kafka {}) with the high watermark at \
                 {} (Kafka {}), the deleted segments ending at {start}",
                d.log_start_before,
                d.kafka_log_start_before,
                d.log_start_after,
                d.kafka_log_start_after,
                d.high_watermark,
                d.kafka_high_watermark
            ),
        ));
    }
    problems
}

/// The retention anomalies of every partition in `facts`. Broker-side anomalies name the final
/// read (or the last op): the history holds no op of their own.
pub(super) fn check(
    history: &History,
    facts: &BTreeMap<Key, Retained>,
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
        .find(|op| matches!(op.kind, OpKind::FinalRead { .. }))
        .map_or(last, |op| op.index);
    for (key, retained) in facts {
        for (node, d) in &retained.deletions {
            stats.retention_deletions += 1;
            stats.retention_segments_deleted += d.segments.len() as u64;
            for (kind, detail) in judge(d) {
                let detail = format!("broker {node} at {} ms: {detail}", d.now_ms);
                findings.push(kind, key, detail, vec![anchor]);
            }
        }
        // An acknowledged DeleteRecords tells its client the log start after it: a log start
        // like any fetch's, judged with them, and at least the offset it asked for.
        let mut observed_starts = retained.observed_starts.clone();
        for call in &retained.delete_records {
            let Outcome::Ok(low_watermark) = call.outcome else {
                continue;
            };
            stats.delete_records_ok += 1;
            if low_watermark < call.offset {
                let detail = format!(
                    "a DeleteRecords to offset {} (invoked at {} ms) answered low watermark \
                     {low_watermark}, below it",
                    call.offset, call.invoke_ms
                );
                findings.push(AnomalyKind::LogStartRegressed, key, detail, vec![anchor]);
            }
            observed_starts.push(ObservedStart {
                invoke_ms: call.invoke_ms,
                at_ms: call.complete_ms,
                offset: low_watermark,
            });
        }
        if retained.monotonic {
            regressions(key, &observed_starts, anchor, findings);
        }
        let lawful = retained.lawful_start();
        for observed in &observed_starts {
            stats.log_starts_observed += 1;
            if observed.offset > 0 && observed.offset > lawful {
                let detail = format!(
                    "a fetch at {} ms was told log start {}, but no lawful retention deletion \
                     or DeleteRecords moved it past {lawful}",
                    observed.at_ms, observed.offset
                );
                findings.push(AnomalyKind::LogStartUnjustified, key, detail, vec![anchor]);
            }
        }
    }
}

/// log-start-regressed: a fetch invoked after another completed and told a lower log start
/// (real-time order only: overlapping fetches may be served in either order).
fn regressions(key: &Key, observed: &[ObservedStart], anchor: usize, findings: &mut Findings) {
    let mut by_completion: Vec<&ObservedStart> = observed.iter().collect();
    by_completion.sort_by_key(|o| (o.at_ms, o.offset));
    let mut by_invocation: Vec<&ObservedStart> = observed.iter().collect();
    by_invocation.sort_by_key(|o| (o.invoke_ms, o.offset));
    // The highest log start among fetches completed before the current one was invoked.
    let mut completed = by_completion.iter().peekable();
    let mut highest: Option<&ObservedStart> = None;
    for o in by_invocation {
        while let Some(done) = completed.next_if(|c| c.at_ms < o.invoke_ms) {
            if highest.is_none_or(|h| done.offset > h.offset) {
                highest = Some(done);
            }
        }
        if let Some(h) = highest.filter(|h| o.offset < h.offset) {
            let detail = format!(
                "a fetch invoked at {} ms was told log start {}, after a fetch that completed at \
                 {} ms was told {}",
                o.invoke_ms, o.offset, h.at_ms, h.offset
            );
            findings.push(AnomalyKind::LogStartRegressed, key, detail, vec![anchor]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(base: u64, next: u64, max_timestamp: i64, size_bytes: u64) -> DeletedSegment {
        DeletedSegment {
            base_offset: base,
            next_offset: next,
            kafka_next_offset: next,
            max_timestamp,
            size_bytes,
        }
    }

    /// A log of 10 segments of 100 bytes over offsets [0, 100), high watermark 95; deleting its
    /// first `n` segments at 10,000 ms.
    fn deletion(n: u64, retention_ms: i64, retention_bytes: i64) -> Deletion {
        Deletion {
            now_ms: 10_000,
            retention_ms,
            retention_bytes,
            delete_records_start: 0,
            size_bytes_before: 1000,
            // Segment i's records are stamped up to 1,000 × (i + 1) ms.
            segments: (0..n)
                .map(|i| segment(i * 10, i * 10 + 10, 1000 * (i as i64 + 1), 100))
                .collect(),
            segments_left: (10 - n) as usize,
            log_start_before: 0,
            log_start_after: n * 10,
            high_watermark: 95,
            log_end: 100,
            kafka_log_start_before: 0,
            kafka_log_start_after: n * 10,
            kafka_high_watermark: 95,
        }
    }

    /// A history of one empty final read: what broker-side anomalies name.
    fn final_read_only() -> History {
        let mut history = History::new();
        history.push(
            0,
            OpKind::FinalRead {
                reads: Default::default(),
                outcome: crate::history::Outcome::Ok(()),
            },
            0,
            1,
        );
        history
    }

    fn kinds(d: &Deletion) -> Vec<AnomalyKind> {
        judge(d).into_iter().map(|(k, _)| k).collect()
    }

    #[test]
    fn a_deletion_by_time_takes_only_segments_older_than_retention_ms() {
        // now − retention.ms = 6,500: segments stamped up to 1,000 … 6,000 are due.
        assert!(kinds(&deletion(6, 3500, -1)).is_empty());
        assert_eq!(
            kinds(&deletion(7, 3500, -1)),
            vec![AnomalyKind::RetentionEarly]
        );
        // A segment whose largest timestamp is exactly the bound is kept.
        assert_eq!(
            kinds(&deletion(6, 4000, -1)),
            vec![AnomalyKind::RetentionEarly]
        );
    }

    #[test]
    fn a_deletion_by_size_keeps_at_least_retention_bytes() {
        // 1,000 bytes, retention.bytes 650: three segments go (700 left), a fourth would leave 600.
        assert!(kinds(&deletion(3, -1, 650)).is_empty());
        assert_eq!(
            kinds(&deletion(4, -1, 650)),
            vec![AnomalyKind::RetentionEarly]
        );
        // Exactly retention.bytes left is allowed.
        assert!(kinds(&deletion(4, -1, 600)).is_empty());
    }

    #[test]
    fn either_rule_may_delete_a_segment() {
        // Time covers the first two, size the next one.
        assert!(kinds(&deletion(3, 7500, 700)).is_empty());
        assert_eq!(
            kinds(&deletion(4, 7500, 700)),
            vec![AnomalyKind::RetentionEarly]
        );
    }

    #[test]
    fn nothing_at_or_above_the_high_watermark_is_deleted() {
        let mut d = deletion(3, 0, -1);
        d.high_watermark = 25;
        d.kafka_high_watermark = 25;
        let found = kinds(&d);
        assert!(
            found.contains(&AnomalyKind::RetentionPastHighWatermark),
            "{found:?}"
        );
        // Deleting the segment that ends at the high watermark is fine.
        d.high_watermark = 30;
        d.kafka_high_watermark = 30;
        assert!(kinds(&d).is_empty());
    }

    #[test]
    fn the_active_segment_is_never_deleted() {
        let mut d = deletion(10, 0, -1);
        d.now_ms = 20_000;
        d.high_watermark = 100;
        d.kafka_high_watermark = 100;
        assert_eq!(kinds(&d), vec![AnomalyKind::RetentionPastHighWatermark]);
    }

    #[test]
    fn the_log_start_follows_the_deleted_segments_and_never_goes_back() {
        let mut d = deletion(2, 0, -1);
        d.log_start_after = 30;
        assert_eq!(kinds(&d), vec![AnomalyKind::RetentionPastHighWatermark]);
        let mut d = deletion(2, 0, -1);
        d.kafka_log_start_before = 25;
        assert_eq!(kinds(&d), vec![AnomalyKind::RetentionPastHighWatermark]);
    }

    #[test]
    fn a_log_start_no_lawful_deletion_explains_is_flagged() {
        let key = Key::new("t", 0);
        let history = final_read_only();
        let mut retained = Retained::default();
        retained.deletions.push((0, deletion(3, 0, -1)));
        // Lawful, to 30; and an early one, to 40, which justifies nothing.
        retained.deletions.push((1, deletion(4, -1, 650)));
        assert_eq!(retained.lawful_start(), 30);
        retained.observed_starts.push(ObservedStart {
            invoke_ms: 4,
            at_ms: 5,
            offset: 30,
        });
        let run = |retained: &Retained| {
            let mut stats = Stats::default();
            let mut findings = Findings::default();
            let facts = BTreeMap::from([(key.clone(), retained.clone())]);
            check(&history, &facts, &mut stats, &mut findings);
            findings.into_report(stats)
        };
        let report = run(&retained);
        assert_eq!(report.count(AnomalyKind::RetentionEarly), 1);
        assert_eq!(report.count(AnomalyKind::LogStartUnjustified), 0);
        assert_eq!(report.stats.retention_deletions, 2);
        retained.observed_starts.push(ObservedStart {
            invoke_ms: 5,
            at_ms: 6,
            offset: 40,
        });
        assert_eq!(run(&retained).count(AnomalyKind::LogStartUnjustified), 1);
    }

    #[test]
    fn on_one_node_the_log_start_clients_see_never_goes_back() {
        let key = Key::new("t", 0);
        let history = final_read_only();
        let at = |invoke_ms, at_ms, offset| ObservedStart {
            invoke_ms,
            at_ms,
            offset,
        };
        let run = |observed: Vec<ObservedStart>, monotonic: bool| {
            let mut retained = Retained {
                monotonic,
                ..Retained::default()
            };
            retained.deletions.push((0, deletion(5, 0, -1)));
            retained.observed_starts = observed;
            let mut stats = Stats::default();
            let mut findings = Findings::default();
            let facts = BTreeMap::from([(key.clone(), retained)]);
            check(&history, &facts, &mut stats, &mut findings);
            findings
                .into_report(stats)
                .count(AnomalyKind::LogStartRegressed)
        };
        // Overlapping fetches may see the log starts in either order.
        assert_eq!(run(vec![at(10, 20, 50), at(12, 15, 30)], true), 0);
        // One invoked after the other completed must not see less.
        assert_eq!(run(vec![at(10, 20, 50), at(21, 25, 30)], true), 1);
        assert_eq!(run(vec![at(10, 20, 30), at(21, 25, 50)], true), 0);
        // With replicas it is not judged.
        assert_eq!(run(vec![at(10, 20, 50), at(21, 25, 30)], false), 0);
    }

    #[test]
    fn delete_records_moves_the_log_start_to_the_offset_it_asks_for() {
        let key = Key::new("t", 0);
        let history = final_read_only();
        let call = |invoke_ms, complete_ms, offset, outcome| DeleteRecordsCall {
            invoke_ms,
            complete_ms,
            offset,
            outcome,
        };
        let at = |invoke_ms, at_ms, offset| ObservedStart {
            invoke_ms,
            at_ms,
            offset,
        };
        let run = |calls: Vec<DeleteRecordsCall>, observed: Vec<ObservedStart>| {
            let retained = Retained {
                monotonic: true,
                delete_records: calls,
                observed_starts: observed,
                ..Retained::default()
            };
            let mut stats = Stats::default();
            let mut findings = Findings::default();
            let facts = BTreeMap::from([(key.clone(), retained)]);
            check(&history, &facts, &mut stats, &mut findings);
            let report = findings.into_report(stats);
            (
                report.count(AnomalyKind::LogStartUnjustified),
                report.count(AnomalyKind::LogStartRegressed),
            )
        };
        // Acknowledged at 17: fetches see it, and values below it may be gone.
        let ok = call(10, 20, 17, Outcome::Ok(17));
        assert_eq!(run(vec![ok.clone()], vec![at(21, 22, 17)]), (0, 0));
        let retained = Retained {
            delete_records: vec![ok.clone()],
            ..Retained::default()
        };
        assert_eq!(retained.lawful_start(), 17);
        assert!(retained.moves());
        // A start past what it asked for is unjustified; a refused call justifies nothing.
        assert_eq!(run(vec![ok.clone()], vec![at(21, 22, 18)]), (1, 0));
        let refused = call(10, 20, 17, Outcome::Fail("error code 1".into()));
        assert_eq!(run(vec![refused], vec![at(21, 22, 17)]), (1, 0));
        // An indeterminate one may have moved it, at any time after its invocation.
        let unknown = call(10, 20, 17, Outcome::Info("timed out".into()));
        assert_eq!(run(vec![unknown], vec![at(30, 31, 17)]), (0, 0));
        // Answered below the offset asked for.
        assert_eq!(run(vec![call(10, 20, 17, Outcome::Ok(12))], vec![]), (0, 1));
        // On one node a fetch after the acknowledgement must not see less (a log start lost in
        // a crash); one that overlaps it may.
        assert_eq!(run(vec![ok.clone()], vec![at(21, 22, 12)]), (0, 1));
        assert_eq!(run(vec![ok], vec![at(15, 22, 12)]), (0, 0));
    }
}
