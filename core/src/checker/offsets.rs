//! offset-gap: the offsets a consumer reads from a partition are contiguous from the log start.
//!
//! Kafka gives the records of a partition the offsets 0, 1, 2, … ("written with a monotonic
//! offset, unique within that partition, starting from 0"): nothing but a record takes an
//! offset, except the transaction markers (COMMIT/ABORT control batches), which clients skip.
//! So a consumer reading from the earliest offset must first see the partition's log start (0
//! unless retention or DeleteRecords moved it), and each record after one it read must sit at
//! the previous offset + 1. Consumers and lag dashboards rely on it: a group that read
//! everything shows lag = high watermark − committed offset = 0 only if no offset is taken by
//! anything a consumer never sees.
//!
//! The jepsen checkers ([`super`]) judge a read against the offsets *known* to hold values, so
//! an offset nobody ever saw a value at is not a poll-skip there; this checker is what says such
//! an offset should not exist.
//!
//! A *stream* is one reader's run of reads of one key from a known or unknown position:
//! - the final read ([`OpKind::FinalRead`]) reads every key from the log start;
//! - an assign that seeks to the beginning ([`OpKind::Assign`] with `seek_to_beginning`, `Ok`)
//!   starts each of its keys at the log start;
//! - a group member's OffsetFetch ([`GroupOp::OffsetFetch`], `Ok`) starts each partition at the
//!   [`Position::start`](crate::history::Position) it reports, and an explicit reset
//!   ([`GroupOp::Reset`]) at its `to`;
//! - any other assign (one that may have taken effect) and any other group operation of the
//!   process (join, leave, crash) restart its streams at an unknown position: from then on only
//!   the steps between records are judged, not where the stream began.
//!
//! offset-gap, per stream: the first record of a stream that starts at a known position `p` is
//! not at `p`, or a record after one at offset `o` is above `o + 1`. Reads below the expected
//! offset are the jepsen checkers' (nonmonotonic-poll) or the group checkers' (group-wrong-start)
//! business and are not reported here. A missing offset is excused only when
//! - it is known to hold a transaction marker ([`OffsetFacts::markers`]; the hook for
//!   transactions — Raft's own entries, a term start or a membership change, never excuse one);
//! - the partition is compacted ([`OffsetFacts::compacted`]) and the checker can tell that the
//!   record there was superseded: the value known to sit there (read by anyone, or acknowledged
//!   with acks=all at that offset) was a tombstone, or its record key sits again at a higher known
//!   offset. If no value is known to sit there, it is excused only if some send to the
//!   partition has no known offset (indeterminate, or acks=1/0 and never read) whose record was
//!   a tombstone or whose record key sits at a higher known offset: that record may have been
//!   written there and removed before anyone read it;
//! - or, for the first record of a stream, the partition's log start moved during the run
//!   ([`LogStart::Moving`]): then where a read from the earliest offset begins is not judged.
//!
//! Excused gaps are counted ([`Stats::offset_gaps_excused`]); the anomaly names the first
//! offset of the gap that nothing excuses: `expected offset E, got G`.

use std::collections::{BTreeMap, BTreeSet};

use super::{AnomalyKind, Findings, Reader, Stats};
use crate::history::{Acks, GroupOp, History, Key, OpKind, Outcome, Value};

/// Where a partition's log starts, for a consumer that reads from the earliest offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogStart {
    /// At this offset for the whole run (0 unless DeleteRecords or retention moved it before).
    At(u64),
    /// Moved during the run (retention, DeleteRecords): the first offset of a read from the
    /// earliest offset is not judged, only the steps after it.
    Moving,
}

/// One record written to a compacted partition, as compaction sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompactedRecord {
    /// The record's key (compaction keeps the latest record per key).
    pub record_key: Vec<u8>,
    /// A null value: compaction removes it (after `delete.retention.ms`) even when nothing
    /// supersedes it.
    pub tombstone: bool,
}

/// What a history cannot tell about a partition's offsets, from whoever ran the workload.
/// The default — every log starting at 0, nothing compacted, no transaction markers — is the
/// simulator's (its brokers run with retention off and no transactions).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OffsetFacts {
    /// Partitions whose log start is not 0 for the whole run.
    pub log_starts: BTreeMap<Key, LogStart>,
    /// Compacted partitions, with the record written by each value sent to them.
    pub compacted: BTreeMap<Key, BTreeMap<Value, CompactedRecord>>,
    /// Offsets known to hold a transaction marker (a COMMIT or ABORT control batch: it takes an
    /// offset in Kafka and clients skip it). Only markers: an offset taken by anything else a
    /// client never sees is the gap this checker exists to find.
    pub markers: BTreeMap<Key, BTreeSet<u64>>,
    /// What retention deleted and which log starts clients were told ([`super::retention`]).
    /// A partition retention deleted from has a moving log start.
    pub retention: BTreeMap<Key, super::retention::Retained>,
    /// Replicas' segment layouts after a config probe ([`super::config_effects`]).
    pub config_effects: Vec<super::config_effects::EffectsProbe>,
}

impl OffsetFacts {
    fn log_start(&self, key: &Key) -> LogStart {
        if self
            .retention
            .get(key)
            .is_some_and(super::retention::Retained::moves)
        {
            return LogStart::Moving;
        }
        self.log_starts.get(key).copied().unwrap_or(LogStart::At(0))
    }
}

/// Where a stream must begin, and why.
#[derive(Clone, Copy, Debug)]
struct Anchor {
    offset: u64,
    why: &'static str,
}

/// One reader's current stream of one key.
#[derive(Clone, Copy, Debug, Default)]
struct Stream {
    /// Where the stream's first record must be; `None` once it is read, or when unknown.
    first: Option<Anchor>,
    /// The (offset, op) of the last record read.
    last: Option<(u64, usize)>,
}

/// Checks every stream of `history`.
pub(super) fn check(
    history: &History,
    facts: &OffsetFacts,
    stats: &mut Stats,
    findings: &mut Findings,
) {
    let excuses = Excuses::new(history, facts);
    // (process, key) → the process's stream of that key.
    let mut streams: BTreeMap<(u32, &Key), Stream> = BTreeMap::new();
    let from_log_start = |key: &Key| match facts.log_start(key) {
        LogStart::At(offset) => Some(Anchor {
            offset,
            why: "the log start",
        }),
        LogStart::Moving => None,
    };
    for op in &history.ops {
        let process = op.process;
        match &op.kind {
            OpKind::Send { .. }
            | OpKind::Group(GroupOp::Commit { .. } | GroupOp::HighWatermarks { .. })
            | OpKind::Config(_) => {}
            OpKind::Poll { reads, .. } => {
                for (key, pairs) in reads {
                    let stream = streams.entry((process, key)).or_default();
                    let reader = Reader::Process(process);
                    judge(
                        reader, key, stream, pairs, op.index, &excuses, stats, findings,
                    );
                }
            }
            OpKind::FinalRead { reads, .. } => {
                for (key, pairs) in reads {
                    let mut stream = Stream {
                        first: from_log_start(key),
                        last: None,
                    };
                    let reader = Reader::Final;
                    judge(
                        reader,
                        key,
                        &mut stream,
                        pairs,
                        op.index,
                        &excuses,
                        stats,
                        findings,
                    );
                }
            }
            OpKind::Assign {
                keys,
                seek_to_beginning,
                outcome,
            } => {
                if outcome.is_fail() {
                    continue;
                }
                restart(&mut streams, process);
                if *seek_to_beginning && outcome.is_ok() {
                    for key in keys {
                        let first = from_log_start(key);
                        streams.insert((process, key), Stream { first, last: None });
                    }
                }
            }
            OpKind::Group(GroupOp::OffsetFetch {
                outcome: Outcome::Ok(positions),
                ..
            }) => {
                restart(&mut streams, process);
                for position in positions {
                    let first = Some(Anchor {
                        offset: position.start,
                        why: "its position after OffsetFetch",
                    });
                    streams.insert((process, &position.key), Stream { first, last: None });
                }
            }
            OpKind::Group(GroupOp::Reset { key, to, .. }) => {
                let first = Some(Anchor {
                    offset: *to,
                    why: "its position after a reset",
                });
                streams.insert((process, key), Stream { first, last: None });
            }
            OpKind::Group(_) => restart(&mut streams, process),
        }
    }
}

/// Forgets every stream of `process`: its next reads start at positions the checker does not
/// know.
fn restart(streams: &mut BTreeMap<(u32, &Key), Stream>, process: u32) {
    streams.retain(|&(p, _), _| p != process);
}

/// Judges `pairs`, read by `op` in `stream`, and moves the stream past them.
#[allow(clippy::too_many_arguments)]
fn judge(
    reader: Reader,
    key: &Key,
    stream: &mut Stream,
    pairs: &[(u64, Value)],
    op: usize,
    excuses: &Excuses<'_>,
    stats: &mut Stats,
    findings: &mut Findings,
) {
    let last_before = stream.last;
    for &(offset, _) in pairs {
        let expected = match (stream.last, stream.first) {
            (Some((previous, _)), _) => Some((previous + 1, None)),
            (None, Some(anchor)) => Some((anchor.offset, Some(anchor))),
            (None, None) => None,
        };
        if let Some((expected, anchor)) = expected {
            if offset > expected {
                match excuses.first_unexcused(key, expected, offset) {
                    None => stats.offset_gaps_excused += 1,
                    Some(missing) => {
                        let detail = match (anchor, stream.last) {
                            (Some(anchor), _) => format!(
                                "{reader} reading from {} ({}) first read offset {offset}: \
                                 expected offset {expected}, got {offset} (offset {missing} \
                                 missing)",
                                anchor.why, anchor.offset
                            ),
                            (None, Some((previous, _))) => format!(
                                "{reader} read offset {offset} after offset {previous}: \
                                 expected offset {expected}, got {offset} (offset {missing} \
                                 missing)"
                            ),
                            (None, None) => unreachable!("an expectation needs a last read"),
                        };
                        let mut ops = vec![op];
                        if let Some((_, previous_op)) = stream.last {
                            if previous_op != op {
                                ops.insert(0, previous_op);
                            }
                        }
                        findings.push(AnomalyKind::OffsetGap, key, detail, ops);
                    }
                }
            }
        }
        if stream.last.is_none() && stream.first.is_some() {
            stats.reads_from_known_start += 1;
        }
        stream.first = None;
        stream.last = Some((offset, op));
    }
    // A read moves the stream to its last record, and a stream once read has no anchor left.
    debug_assert!(pairs.is_empty() || stream.last.is_some_and(|(_, last_op)| last_op == op));
    debug_assert!(stream.last.is_none() || stream.first.is_none());
    debug_assert!(!pairs.is_empty() || stream.last == last_before);
}

/// One send to a compacted partition.
struct Sent {
    value: Value,
    /// Where an acknowledged acks=all send put it.
    offset: Option<u64>,
    /// Whether it may have been written (not a definite failure).
    written: bool,
}

/// What may legitimately leave an offset without a record for a consumer.
struct Excuses<'f> {
    facts: &'f OffsetFacts,
    /// Per compacted key: what the history says about its offsets.
    compacted: BTreeMap<&'f Key, CompactedLog<'f>>,
}

/// A compacted partition's records as far as the history places them.
#[derive(Default)]
struct CompactedLog<'f> {
    /// Offset → the values known to sit there (read by anyone, or acknowledged with acks=all).
    placed: BTreeMap<u64, BTreeSet<Value>>,
    /// Record key → the highest offset a value with that key is known to sit at.
    key_max: BTreeMap<&'f [u8], u64>,
    /// Sends with no known offset that may still have written a record.
    unplaced: Vec<Value>,
}

impl<'f> Excuses<'f> {
    fn new(history: &History, facts: &'f OffsetFacts) -> Excuses<'f> {
        let mut compacted: BTreeMap<&'f Key, CompactedLog<'f>> = BTreeMap::new();
        if facts.compacted.is_empty() {
            return Excuses { facts, compacted };
        }
        let mut sent: BTreeMap<&Key, Vec<Sent>> = BTreeMap::new();
        for op in &history.ops {
            match &op.kind {
                OpKind::Send {
                    key,
                    value,
                    acks,
                    outcome,
                    ..
                } => {
                    let (offset, written) = match outcome {
                        Outcome::Ok(offset) if *acks == Acks::All => (Some(*offset), true),
                        Outcome::Ok(_) | Outcome::Info(_) => (None, true),
                        Outcome::Fail(_) => (None, false),
                    };
                    let value = *value;
                    sent.entry(key).or_default().push(Sent {
                        value,
                        offset,
                        written,
                    });
                }
                OpKind::Poll { reads, .. } | OpKind::FinalRead { reads, .. } => {
                    for (key, pairs) in reads {
                        let Some((facts_key, _)) = facts.compacted.get_key_value(key) else {
                            continue;
                        };
                        let log = compacted.entry(facts_key).or_default();
                        for &(offset, value) in pairs {
                            log.placed.entry(offset).or_default().insert(value);
                        }
                    }
                }
                OpKind::Assign { .. } | OpKind::Group(_) | OpKind::Config(_) => {}
            }
        }
        for (facts_key, records) in &facts.compacted {
            let log = compacted.entry(facts_key).or_default();
            let sends = sent.remove(facts_key).unwrap_or_default();
            for send in &sends {
                if let Some(offset) = send.offset {
                    log.placed.entry(offset).or_default().insert(send.value);
                }
            }
            let read: BTreeSet<Value> = log.placed.values().flatten().copied().collect();
            log.unplaced = sends
                .iter()
                .filter(|send| send.written && send.offset.is_none() && !read.contains(&send.value))
                .map(|send| send.value)
                .collect();
            for (&offset, values) in &log.placed {
                for value in values {
                    if let Some(record) = records.get(value) {
                        let max = log.key_max.entry(&record.record_key).or_insert(offset);
                        *max = (*max).max(offset);
                    }
                }
            }
        }
        Excuses { facts, compacted }
    }

    /// The first offset in `from..to` that nothing excuses.
    fn first_unexcused(&self, key: &Key, from: u64, to: u64) -> Option<u64> {
        debug_assert!(from < to);
        let markers = self.facts.markers.get(key);
        (from..to).find(|offset| {
            let marker = markers.is_some_and(|m| m.contains(offset));
            !marker && !self.superseded(key, *offset)
        })
    }

    /// Whether compaction may have removed the record at `offset` of `key`.
    fn superseded(&self, key: &Key, offset: u64) -> bool {
        let (Some(records), Some(log)) = (self.facts.compacted.get(key), self.compacted.get(key))
        else {
            return false;
        };
        let removable = |value: &Value| {
            records.get(value).is_some_and(|record| {
                record.tombstone
                    || log
                        .key_max
                        .get(record.record_key.as_slice())
                        .is_some_and(|&max| max > offset)
            })
        };
        match log.placed.get(&offset) {
            // Every value seen there must be removable; two values at one offset is
            // inconsistent-offsets, reported elsewhere.
            Some(values) => values.iter().all(removable),
            None => log.unplaced.iter().any(removable),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::{check, check_with_facts, CheckOptions, CheckReport};
    use crate::history::{reads_of, Position};

    fn key() -> Key {
        Key::new("t", 0)
    }

    fn send(h: &mut History, value: Value, offset: u64) {
        let t = h.len() as u64 * 10;
        h.send(1, key(), value, Acks::All, Outcome::Ok(offset), t, t + 5);
    }

    fn poll(h: &mut History, process: u32, pairs: &[(u64, Value)]) -> usize {
        let t = h.len() as u64 * 10;
        h.poll_key(process, &key(), pairs, t, t + 5)
    }

    fn seek_to_beginning(h: &mut History, process: u32) {
        let t = h.len() as u64 * 10;
        h.assign(process, vec![key()], true, Outcome::Ok(()), t, t + 1);
    }

    fn final_read(h: &mut History, pairs: &[(u64, Value)]) -> usize {
        let t = h.len() as u64 * 10;
        h.final_read(99, reads_of(&key(), pairs), Outcome::Ok(()), t, t + 5)
    }

    /// The report's offset-gap details; it must hold no other kind.
    fn gaps(report: &CheckReport) -> Vec<String> {
        for a in &report.anomalies {
            assert_eq!(a.kind, AnomalyKind::OffsetGap, "unexpected {a}; {report}");
        }
        report.anomalies.iter().map(|a| a.detail.clone()).collect()
    }

    /// The report's offset-gap details, whatever else it holds (the jepsen checkers know
    /// nothing of compaction or of where a reader started).
    fn gaps_among_others(report: &CheckReport) -> Vec<String> {
        let gaps = report
            .anomalies
            .iter()
            .filter(|a| a.kind == AnomalyKind::OffsetGap);
        gaps.map(|a| a.detail.clone()).collect()
    }

    /// A log of `values` at offsets `first..`, each acknowledged with acks=all.
    fn sent(values: &[Value], first: u64) -> (History, Vec<(u64, Value)>) {
        let mut h = History::new();
        let pairs: Vec<(u64, Value)> = values
            .iter()
            .enumerate()
            .map(|(i, &v)| (first + i as u64, v))
            .collect();
        for &(offset, value) in &pairs {
            send(&mut h, value, offset);
        }
        (h, pairs)
    }

    #[test]
    fn contiguous_reads_from_zero_are_valid() {
        let (mut h, pairs) = sent(&[10, 11, 12, 13], 0);
        seek_to_beginning(&mut h, 2);
        poll(&mut h, 2, &pairs[..1]);
        poll(&mut h, 2, &[]);
        poll(&mut h, 2, &pairs[1..]);
        final_read(&mut h, &pairs);
        let report = check(&h);
        assert!(report.is_valid(), "{report}");
        // The assign's stream and the final read began where they must.
        assert_eq!(report.stats.reads_from_known_start, 2);
    }

    /// Today's single node: offset 0 is Raft's term-start entry, the first record sits at 1.
    #[test]
    fn a_first_record_at_one_is_a_gap_at_zero() {
        let (mut h, pairs) = sent(&[10, 11], 1);
        final_read(&mut h, &pairs);
        let report = check(&h);
        assert_eq!(
            gaps(&report),
            vec![
                "the final read reading from the log start (0) first read offset 1: expected \
                  offset 0, got 1 (offset 0 missing)"
            ]
        );
        assert_eq!(
            report.anomalies[0].to_string().split(' ').nth(1),
            Some("t-0:")
        );
    }

    /// Today's cluster: every leader change takes an offset for its term start.
    #[test]
    fn an_offset_taken_at_a_leader_change_is_a_gap() {
        let mut h = History::new();
        send(&mut h, 10, 0);
        send(&mut h, 11, 1);
        // A new leader's term start at offset 2, then the next record at 3.
        send(&mut h, 12, 3);
        seek_to_beginning(&mut h, 2);
        poll(&mut h, 2, &[(0, 10), (1, 11)]);
        let second = poll(&mut h, 2, &[(3, 12)]);
        let report = check(&h);
        assert_eq!(
            gaps(&report),
            vec![
                "process 2 read offset 3 after offset 1: expected offset 2, got 3 (offset 2 \
                  missing)"
            ]
        );
        assert_eq!(report.anomalies[0].ops, vec![second - 1, second]);
        // The jepsen checkers see nothing wrong: no value is known at offset 2.
        assert_eq!(report.count(AnomalyKind::PollSkip), 0);
    }

    #[test]
    fn a_gap_within_one_poll_names_that_poll_once() {
        let (mut h, _) = sent(&[10, 11], 0);
        send(&mut h, 12, 5);
        let read = final_read(&mut h, &[(0, 10), (1, 11), (5, 12)]);
        let report = check(&h);
        assert_eq!(report.count(AnomalyKind::OffsetGap), 1);
        assert_eq!(report.anomalies[0].ops, vec![read]);
        assert!(report.anomalies[0]
            .detail
            .contains("expected offset 2, got 5"));
    }

    /// The offset mapping off by one after a divergent suffix was truncated: a new leader cut
    /// offsets 4 and 5 (acks=1 appends nobody read) and its next records land one too high, or
    /// one too low.
    #[test]
    fn an_offset_mapping_off_by_one_after_truncation_is_caught() {
        let history = |shift_up: bool| {
            let (mut h, pairs) = sent(&[10, 11, 12, 13], 0);
            let t = h.len() as u64 * 10;
            h.send(3, key(), 20, Acks::One, Outcome::Ok(4), t, t + 1);
            h.send(3, key(), 21, Acks::One, Outcome::Ok(5), t + 2, t + 3);
            seek_to_beginning(&mut h, 2);
            poll(&mut h, 2, &pairs);
            // Truncated back to 4: the next records belong at 4, 5.
            let next = if shift_up { 5 } else { 3 };
            send(&mut h, 30, next);
            send(&mut h, 31, next + 1);
            poll(&mut h, 2, &[(next, 30), (next + 1, 31)]);
            let mut all = pairs.clone();
            all.extend([(next, 30), (next + 1, 31)]);
            final_read(&mut h, &all);
            h
        };
        let options = CheckOptions {
            acks1_offsets_final: false,
        };
        let up = crate::checker::check_with(&history(true), options);
        assert_eq!(up.count(AnomalyKind::OffsetGap), 2, "{up}");
        assert!(up
            .anomalies
            .iter()
            .all(|a| a.detail.contains("expected offset 4, got 5")));
        // One too low reuses offset 3: no gap, but two values at one offset and a read that
        // steps back, which the jepsen checkers report.
        let down = crate::checker::check_with(&history(false), options);
        assert_eq!(down.count(AnomalyKind::OffsetGap), 0, "{down}");
        assert!(down.count(AnomalyKind::InconsistentOffsets) > 0, "{down}");
        assert!(down.count(AnomalyKind::NonmonotonicPoll) > 0, "{down}");
    }

    #[test]
    fn a_stream_from_an_unknown_position_is_judged_on_its_steps_only() {
        let (mut h, pairs) = sent(&[10, 11, 12, 13, 14], 0);
        let t = h.len() as u64 * 10;
        // Assigned without a seek: it may start anywhere.
        h.assign(2, vec![key()], false, Outcome::Ok(()), t, t + 1);
        poll(&mut h, 2, &pairs[2..4]);
        poll(&mut h, 2, &pairs[4..]);
        // (Offsets 0 and 1, acknowledged and never read, are lost writes to the jepsen checkers.)
        assert!(gaps_among_others(&check(&h)).is_empty(), "{}", check(&h));
        // Reads before any assign are a stream from an unknown position too.
        poll(&mut h, 3, &pairs[1..2]);
        poll(&mut h, 3, &pairs[3..4]);
        let found = gaps_among_others(&check(&h));
        assert_eq!(found.len(), 1);
        assert!(found[0].contains("expected offset 2, got 3"), "{found:?}");
    }

    #[test]
    fn a_failed_assign_keeps_the_stream_and_an_indeterminate_one_forgets_it() {
        let (mut h, pairs) = sent(&[10, 11, 12, 13], 0);
        seek_to_beginning(&mut h, 2);
        poll(&mut h, 2, &pairs[..1]);
        let t = h.len() as u64 * 10;
        h.assign(2, vec![key()], true, Outcome::Fail("x".into()), t, t + 1);
        poll(&mut h, 2, &pairs[2..3]);
        assert_eq!(gaps_among_others(&check(&h)).len(), 1);

        let (mut h, pairs) = sent(&[10, 11, 12, 13], 0);
        seek_to_beginning(&mut h, 2);
        poll(&mut h, 2, &pairs[..1]);
        let t = h.len() as u64 * 10;
        h.assign(2, vec![key()], true, Outcome::Info("x".into()), t, t + 1);
        poll(&mut h, 2, &pairs[2..3]);
        assert!(gaps_among_others(&check(&h)).is_empty(), "{}", check(&h));
    }

    #[test]
    fn reading_backwards_is_not_a_gap() {
        let (mut h, pairs) = sent(&[10, 11, 12], 0);
        seek_to_beginning(&mut h, 2);
        poll(&mut h, 2, &pairs);
        poll(&mut h, 2, &pairs[1..]);
        let report = check(&h);
        assert_eq!(report.count(AnomalyKind::OffsetGap), 0, "{report}");
        assert!(report.count(AnomalyKind::NonmonotonicPoll) > 0);
    }

    #[test]
    fn a_group_member_starts_at_its_fetched_position_and_its_reset() {
        let (mut h, pairs) = sent(&[10, 11, 12, 13], 0);
        let position = |start| Position {
            key: key(),
            committed: Some(start),
            start,
        };
        let fetch = |h: &mut History, start| {
            let t = h.len() as u64 * 10;
            let kind = OpKind::Group(GroupOp::OffsetFetch {
                group: "g".into(),
                member: "m".into(),
                generation: 1,
                outcome: Outcome::Ok(vec![position(start)]),
            });
            h.push(2, kind, t, t + 1);
        };
        fetch(&mut h, 2);
        poll(&mut h, 2, &pairs[2..]);
        // (The group checkers object to a committed offset no commit wrote; not this one.)
        assert!(gaps_among_others(&check(&h)).is_empty(), "{}", check(&h));
        // Committed at 1 but its first record is at 2 (a hidden entry took offset 1).
        fetch(&mut h, 1);
        poll(&mut h, 2, &pairs[2..]);
        let found = gaps_among_others(&check(&h));
        assert_eq!(found.len(), 1);
        assert!(
            found[0].contains("its position after OffsetFetch (1)"),
            "{found:?}"
        );
        // An explicit reset to 0, then the first record at 1.
        let t = h.len() as u64 * 10;
        let reset = GroupOp::Reset {
            group: "g".into(),
            member: "m".into(),
            generation: 1,
            key: key(),
            from: 4,
            to: 0,
        };
        h.push(2, OpKind::Group(reset), t, t);
        poll(&mut h, 2, &pairs[1..]);
        assert_eq!(gaps_among_others(&check(&h)).len(), 2);
    }

    #[test]
    fn a_moved_log_start_is_where_reads_from_the_earliest_begin() {
        let (mut h, pairs) = sent(&[12, 13, 14], 2);
        final_read(&mut h, &pairs);
        let mut facts = OffsetFacts::default();
        facts.log_starts.insert(key(), LogStart::At(2));
        let options = CheckOptions::default();
        assert!(check_with_facts(&h, options, &facts).is_valid());
        facts.log_starts.insert(key(), LogStart::At(1));
        let report = check_with_facts(&h, options, &facts);
        assert!(gaps(&report)[0].contains("from the log start (1)"));
        // A log start that moved during the run: the first offset is not judged, the steps are.
        facts.log_starts.insert(key(), LogStart::Moving);
        assert!(check_with_facts(&h, options, &facts).is_valid());
        final_read(&mut h, &[(2, 12), (4, 14)]);
        let report = check_with_facts(&h, options, &facts);
        assert_eq!(gaps_among_others(&report).len(), 1, "{report}");
    }

    #[test]
    fn a_transaction_marker_excuses_its_offset_and_nothing_else() {
        let (mut h, _) = sent(&[10, 11], 0);
        send(&mut h, 12, 3);
        send(&mut h, 13, 5);
        final_read(&mut h, &[(0, 10), (1, 11), (3, 12), (5, 13)]);
        let mut facts = OffsetFacts::default();
        facts.markers.insert(key(), BTreeSet::from([2]));
        let report = check_with_facts(&h, CheckOptions::default(), &facts);
        assert_eq!(gaps(&report).len(), 1);
        assert!(gaps(&report)[0].contains("expected offset 4, got 5"));
        assert_eq!(report.stats.offset_gaps_excused, 1);
        facts.markers.insert(key(), BTreeSet::from([2, 4]));
        assert!(check_with_facts(&h, CheckOptions::default(), &facts).is_valid());
    }

    fn record(record_key: &str, tombstone: bool) -> CompactedRecord {
        CompactedRecord {
            record_key: record_key.as_bytes().to_vec(),
            tombstone,
        }
    }

    #[test]
    fn compaction_excuses_a_superseded_record_or_a_tombstone_only() {
        // Offsets: 0 a=10, 1 b=11, 2 a=12, 3 c=13 (tombstone), 4 b=14, 5 d=15.
        let (mut h, _) = sent(&[10, 11, 12, 13, 14, 15], 0);
        let mut facts = OffsetFacts::default();
        facts.compacted.insert(
            key(),
            BTreeMap::from([
                (10, record("a", false)),
                (11, record("b", false)),
                (12, record("a", false)),
                (13, record("c", true)),
                (14, record("b", false)),
                (15, record("d", false)),
            ]),
        );
        let options = CheckOptions::default();
        // Cleaned: 0 (a again at 2), 1 (b again at 4), 3 (a tombstone).
        // (The jepsen checkers report the cleaned acknowledged values as lost: they know
        // nothing of compaction.)
        final_read(&mut h, &[(2, 12), (4, 14), (5, 15)]);
        let report = check_with_facts(&h, options, &facts);
        assert!(gaps_among_others(&report).is_empty(), "{report}");
        assert_eq!(report.stats.offset_gaps_excused, 2);
        // Offset 4 holds b's latest record: compaction must keep it.
        final_read(&mut h, &[(2, 12), (5, 15)]);
        let report = check_with_facts(&h, options, &facts);
        let found = gaps_among_others(&report);
        assert_eq!(found.len(), 1, "{report}");
        assert!(
            !found[0].contains("(offset 0 missing)") && found[0].contains("(offset 4 missing)")
        );
        // Without compaction nothing is excused: two gaps in each read.
        let report = check(&h);
        assert_eq!(report.count(AnomalyKind::OffsetGap), 4, "{report}");
    }

    #[test]
    fn on_a_compacted_partition_an_offset_nobody_saw_needs_a_removable_unplaced_send() {
        let mut facts = OffsetFacts::default();
        facts.compacted.insert(
            key(),
            BTreeMap::from([
                (10, record("a", false)),
                (11, record("a", false)),
                (12, record("b", false)),
            ]),
        );
        let options = CheckOptions::default();
        // An indeterminate send of b (no later b): offset 1 cannot be told superseded.
        let mut h = History::new();
        send(&mut h, 10, 0);
        h.send(
            1,
            key(),
            12,
            Acks::All,
            Outcome::Info("timeout".into()),
            20,
            25,
        );
        send(&mut h, 11, 2);
        final_read(&mut h, &[(0, 10), (2, 11)]);
        let report = check_with_facts(&h, options, &facts);
        assert_eq!(gaps(&report).len(), 1, "{report}");
        // An indeterminate send of a, which sits again at 2: it may have been at 1 and cleaned.
        let mut h = History::new();
        send(&mut h, 10, 0);
        h.send(
            1,
            key(),
            11,
            Acks::One,
            Outcome::Info("timeout".into()),
            20,
            25,
        );
        send(&mut h, 12, 2);
        final_read(&mut h, &[(0, 10), (2, 12)]);
        // Value 12 is b: no a above offset 1 is known, so not excused …
        assert_eq!(
            check_with_facts(&h, options, &facts).count(AnomalyKind::OffsetGap),
            1
        );
        // … until a's later record is placed above it.
        let mut h = History::new();
        h.send(
            1,
            key(),
            11,
            Acks::One,
            Outcome::Info("timeout".into()),
            0,
            5,
        );
        send(&mut h, 12, 1);
        send(&mut h, 10, 2);
        final_read(&mut h, &[(1, 12), (2, 10)]);
        let report = check_with_facts(&h, options, &facts);
        assert!(report.is_valid(), "{report}");
    }
}
