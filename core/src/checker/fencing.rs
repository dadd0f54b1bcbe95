//! Producer fencing, Sluice's own check (Jepsen's Kafka workload has no epochs): once a newer
//! epoch of an idempotent producer id is in a partition, the broker refuses the older epochs'
//! batches there (INVALID_PRODUCER_EPOCH), so an older incarnation that keeps sending after an
//! epoch bump — a zombie — appends nothing.
//!
//! The rule, per partition (key) and producer id:
//! - a *fence* is an `Ok` `acks=all` send stamped with epoch `e'` of the producer id: once it
//!   is acknowledged the epoch is durable (synced on one node, committed with replicas), so the
//!   partition's producer state holds `e'` from then on;
//! - a send stamped with an older epoch `e < e'` of the same id that was *invoked* after such a
//!   fence completed must never take effect: if any poll or the final read returned its value,
//!   or the broker acknowledged it with `acks=all`, that is a zombie-write.
//!
//! Only the partition where the newer epoch was acknowledged counts. For a non-transactional
//! producer Kafka keeps no epoch anywhere but in each partition's producer state (KIP-360's bump
//! is answered without recording anything), so an older epoch is fenced partition by partition,
//! as the newer one arrives; Sluice does the same (`producer::ProducerStateTable::check`). An
//! `acks=1` acknowledgement is no fence: a crash may lose it, and with it the newer epoch.
//! A send invoked before the fence may land either way (it raced the bump), and is not judged.
//! [`Stats::sends_after_fence`] counts the sends the rule judged.

use std::collections::BTreeMap;
use std::ops::Bound;

use super::{AnomalyKind, Findings, Stats};
use crate::history::{Acks, History, Key, OpKind, Outcome, Value};

/// Finds zombie-writes in `history` (see the module documentation).
pub(super) fn check(history: &History, stats: &mut Stats, findings: &mut Findings) {
    // (key, producer id) → epoch → the earliest acks=all acknowledgement (completion, op).
    let mut fences: BTreeMap<(&Key, i64), BTreeMap<i16, (u64, usize)>> = BTreeMap::new();
    for op in &history.ops {
        if let OpKind::Send {
            key,
            acks: Acks::All,
            outcome: Outcome::Ok(_),
            producer: Some(stamp),
            ..
        } = &op.kind
        {
            let by_epoch = fences.entry((key, stamp.producer_id)).or_default();
            let earliest = by_epoch
                .entry(stamp.epoch)
                .or_insert((op.complete_ms, op.index));
            if op.complete_ms < earliest.0 {
                *earliest = (op.complete_ms, op.index);
            }
        }
    }
    // Without an acknowledged epoch nothing is fenced.
    if fences.is_empty() {
        return;
    }
    // Where each value was first read, and by which op.
    let mut first_read: BTreeMap<(&Key, Value), (u64, usize)> = BTreeMap::new();
    for op in &history.ops {
        if let OpKind::Poll { reads, .. } | OpKind::FinalRead { reads, .. } = &op.kind {
            for (key, pairs) in reads {
                for &(offset, value) in pairs {
                    first_read.entry((key, value)).or_insert((offset, op.index));
                }
            }
        }
    }
    for op in &history.ops {
        let OpKind::Send {
            key,
            value,
            acks,
            outcome,
            producer: Some(stamp),
        } = &op.kind
        else {
            continue;
        };
        let Some(by_epoch) = fences.get(&(key, stamp.producer_id)) else {
            continue;
        };
        // The earliest acknowledgement of a newer epoch that completed before this send began.
        let fence = by_epoch
            .range((Bound::Excluded(stamp.epoch), Bound::Unbounded))
            .map(|(&epoch, &(complete_ms, fence_op))| (complete_ms, epoch, fence_op))
            .filter(|&(complete_ms, _, _)| complete_ms < op.invoke_ms)
            .min();
        let Some((fenced_ms, fence_epoch, fence_op)) = fence else {
            continue;
        };
        stats.sends_after_fence += 1;
        let (took_effect, witness) = match (first_read.get(&(key, *value)), outcome, acks) {
            (Some(&(offset, reader)), _, _) => (format!("was read at offset {offset}"), reader),
            (None, Outcome::Ok(offset), Acks::All) => (
                format!("was acknowledged at offset {offset} (acks=all)"),
                op.index,
            ),
            _ => continue,
        };
        let detail = format!(
            "value {value} sent by {stamp} (process {}, invoked at {} ms) {took_effect}, though \
             epoch {fence_epoch} of that producer was acknowledged (acks=all) on this partition \
             at {fenced_ms} ms: the older epoch should have been fenced",
            op.process, op.invoke_ms
        );
        let mut ops = vec![op.index, fence_op, witness];
        ops.sort_unstable();
        ops.dedup();
        findings.push(AnomalyKind::ZombieWrite, key, detail, ops);
    }
}

#[cfg(test)]
mod tests {
    use crate::checker::{check, check_with, AnomalyKind, CheckOptions};
    use crate::history::{reads_of, Acks, History, Key, Outcome, ProducerStamp};

    fn key() -> Key {
        Key::new("t", 0)
    }

    const OLD: ProducerStamp = ProducerStamp {
        producer_id: 7,
        epoch: 0,
    };
    const NEW: ProducerStamp = ProducerStamp {
        producer_id: 7,
        epoch: 1,
    };

    /// The producer's first epoch writes value 1 at offset 0; after the bump, the new epoch's
    /// value 2 is acknowledged (acks=all) at offset 1, completing at 20 ms.
    fn bumped() -> History {
        let mut h = History::new();
        h.send_as(1, OLD, key(), 1, Acks::All, Outcome::Ok(0), 0, 5);
        h.send_as(1, NEW, key(), 2, Acks::All, Outcome::Ok(1), 10, 20);
        h
    }

    #[test]
    fn a_zombie_send_after_the_newer_epoch_was_acknowledged_must_not_be_read() {
        let mut h = bumped();
        // The zombie still holds epoch 0; its send begins after the fence and is appended.
        h.send_as(2, OLD, key(), 3, Acks::One, Outcome::Ok(2), 30, 35);
        h.final_read(
            9,
            reads_of(&key(), &[(0, 1), (1, 2), (2, 3)]),
            Outcome::Ok(()),
            40,
            45,
        );
        let report = check(&h);
        assert_eq!(report.count(AnomalyKind::ZombieWrite), 1, "{report}");
        assert_eq!(report.anomalies.len(), 1, "nothing else is wrong: {report}");
        let anomaly = &report.anomalies[0];
        assert_eq!(anomaly.ops, vec![1, 2, 3], "zombie send, fence, reader");
        assert!(anomaly.detail.contains("producer 7 epoch 0"), "{anomaly}");
        assert_eq!(report.stats.sends_after_fence, 1);
    }

    #[test]
    fn the_older_epoch_needs_no_acknowledgement_of_its_own() {
        let mut h = History::new();
        h.send_as(1, OLD, key(), 1, Acks::One, Outcome::Ok(0), 0, 5);
        h.send_as(1, NEW, key(), 2, Acks::All, Outcome::Ok(1), 10, 20);
        h.send_as(2, OLD, key(), 3, Acks::One, Outcome::Ok(2), 30, 35);
        h.final_read(
            9,
            reads_of(&key(), &[(0, 1), (1, 2), (2, 3)]),
            Outcome::Ok(()),
            40,
            45,
        );
        let report = check(&h);
        assert_eq!(report.count(AnomalyKind::ZombieWrite), 1, "{report}");
    }

    #[test]
    fn a_zombie_acknowledged_with_acks_all_is_caught_even_unread() {
        let mut h = bumped();
        h.send_as(2, OLD, key(), 3, Acks::All, Outcome::Ok(2), 30, 35);
        // No read at all: the acknowledgement alone says the broker took it.
        let report = check(&h);
        assert_eq!(report.count(AnomalyKind::ZombieWrite), 1, "{report}");
    }

    #[test]
    fn a_fenced_zombie_refused_by_the_broker_is_fine() {
        let mut h = bumped();
        let refused = Outcome::Fail("error code 47".into());
        h.send_as(2, OLD, key(), 3, Acks::All, refused, 30, 35);
        h.send_as(
            2,
            OLD,
            key(),
            4,
            Acks::All,
            Outcome::Info("timeout".into()),
            36,
            40,
        );
        h.final_read(
            9,
            reads_of(&key(), &[(0, 1), (1, 2)]),
            Outcome::Ok(()),
            50,
            55,
        );
        let report = check(&h);
        assert!(report.is_valid(), "{report}");
        assert_eq!(report.stats.sends_after_fence, 2, "both were judged");
    }

    #[test]
    fn a_zombie_send_that_raced_the_bump_may_land() {
        let mut h = History::new();
        h.send_as(1, OLD, key(), 1, Acks::All, Outcome::Ok(0), 0, 5);
        h.send_as(1, NEW, key(), 2, Acks::All, Outcome::Ok(2), 10, 20);
        // Invoked at 15 ms, before the newer epoch's acknowledgement completed at 20 ms.
        h.send_as(2, OLD, key(), 3, Acks::One, Outcome::Ok(1), 15, 18);
        h.final_read(
            9,
            reads_of(&key(), &[(0, 1), (1, 3), (2, 2)]),
            Outcome::Ok(()),
            40,
            45,
        );
        let report = check(&h);
        assert!(report.is_valid(), "{report}");
        assert_eq!(report.stats.sends_after_fence, 0);
    }

    #[test]
    fn only_an_acks_all_acknowledgement_on_the_same_partition_and_id_fences() {
        let other = Key::new("t", 1);
        let mut h = History::new();
        h.send_as(1, OLD, key(), 1, Acks::All, Outcome::Ok(0), 0, 5);
        // Epoch 1 acknowledged with acks=1 here (a crash may lose it) and with acks=all on
        // another partition; another producer id's epoch 5 acknowledged here.
        h.send_as(1, NEW, key(), 2, Acks::One, Outcome::Ok(1), 10, 20);
        h.send_as(1, NEW, other.clone(), 3, Acks::All, Outcome::Ok(0), 10, 20);
        let stranger = ProducerStamp {
            producer_id: 8,
            epoch: 5,
        };
        h.send_as(3, stranger, key(), 4, Acks::All, Outcome::Ok(2), 21, 22);
        h.send_as(2, OLD, key(), 5, Acks::All, Outcome::Ok(3), 30, 35);
        let mut reads = reads_of(&key(), &[(0, 1), (1, 2), (2, 4), (3, 5)]);
        reads.insert(other, vec![(0, 3)]);
        h.final_read(9, reads, Outcome::Ok(()), 40, 45);
        let report = check_with(&h, CheckOptions::default());
        assert!(report.is_valid(), "{report}");
        assert_eq!(report.stats.sends_after_fence, 0);
    }
}
