//! Offsets and leader epochs towards clients: ListOffsets (earliest, latest, by timestamp),
//! OffsetForLeaderEpoch (KIP-101/KIP-320: where an epoch a client read ends on the current
//! leader, so it can tell whether its log was truncated under it), and the fencing check they
//! share with Fetch.
//!
//! The leader epoch is the partition's Raft term; the end offsets come from the log's
//! leader-epoch cache (`PartitionLog::end_offset_for_epoch`, Kafka's
//! `LeaderEpochFileCache.endOffsetFor`).

use super::api::{
    EpochEnd, EpochQuery, ListOffsetsRequest, ListedOffset, DEBUGGING_REPLICA_ID,
    EARLIEST_LOCAL_TIMESTAMP, EARLIEST_TIMESTAMP, LATEST_TIERED_TIMESTAMP, LATEST_TIMESTAMP,
    MAX_TIMESTAMP, NO_LEADER_EPOCH,
};
use super::disk::LogReader;
use super::{Node, TopicPartition, View};
use crate::replica::Replica;
use crate::ErrorCode;

/// The replica's leader epoch as Kafka carries it (an `int32`). Terms grow by one per election
/// and batches carry them in a 32-bit `partitionLeaderEpoch`, so only a damaged `raft-state`
/// could hold a larger one; that is input from disk, so it saturates rather than panics.
pub(super) fn leader_epoch(replica: &Replica) -> i32 {
    i32::try_from(replica.term()).unwrap_or(i32::MAX)
}

/// Kafka's `Partition.getLocalLog`: first the client's idea of the current leader epoch (unless
/// it sent [`NO_LEADER_EPOCH`]) is compared with ours, then leadership is required. An older
/// epoch means the client's metadata is stale (FENCED_LEADER_EPOCH: refresh it); a newer one
/// means this replica has not yet heard of the election the client knows about
/// (UNKNOWN_LEADER_EPOCH: retry).
pub(super) fn check_leader(
    local_epoch: i32,
    is_leader: bool,
    current_leader_epoch: i32,
) -> Result<(), ErrorCode> {
    if current_leader_epoch != NO_LEADER_EPOCH {
        if current_leader_epoch < local_epoch {
            return Err(ErrorCode::FencedLeaderEpoch);
        }
        if current_leader_epoch > local_epoch {
            return Err(ErrorCode::UnknownLeaderEpoch);
        }
    }
    if !is_leader {
        return Err(ErrorCode::NotLeaderOrFollower);
    }
    Ok(())
}

/// [`check_leader`] for a replica.
pub(super) fn check_replica(replica: &Replica, current_leader_epoch: i32) -> Result<(), ErrorCode> {
    check_leader(
        leader_epoch(replica),
        replica.is_leader(),
        current_leader_epoch,
    )
}

impl Node {
    /// ListOffsets. Kafka serves it from the leader only, except to its debugging tool; the
    /// current leader epoch (v4+) fences clients with stale metadata.
    pub(super) fn list_offsets(
        &self,
        request: ListOffsetsRequest,
        disk: &impl LogReader,
    ) -> Vec<(String, Vec<ListedOffset>)> {
        let require_leader = request.replica_id != DEBUGGING_REPLICA_ID;
        request
            .topics
            .into_iter()
            .map(|(topic, queries)| {
                let results = queries
                    .iter()
                    .map(|q| {
                        let mut r = ListedOffset {
                            partition: q.partition,
                            error: ErrorCode::None,
                            timestamp: -1,
                            offset: -1,
                            leader_epoch: -1,
                        };
                        let tp = TopicPartition::new(topic.clone(), q.partition);
                        let missing = self.missing_partition_error(&tp);
                        let hosted = self.partitions.get(&tp).ok_or(missing).and_then(|slot| {
                            let replica =
                                slot.replica().ok_or(ErrorCode::NotLeaderOrFollower)?;
                            let epoch = leader_epoch(replica);
                            let is_leader = replica.is_leader() || !require_leader;
                            check_leader(epoch, is_leader, q.current_leader_epoch)?;
                            Ok((slot.log(), replica, epoch))
                        });
                        let (log_id, replica, epoch) = match hosted {
                            Ok(h) => h,
                            Err(code) => {
                                r.error = code;
                                return r;
                            }
                        };
                        r.leader_epoch = epoch;
                        let log = replica.log();
                        match q.timestamp {
                            LATEST_TIMESTAMP => r.offset = log.kafka_high_watermark() as i64,
                            EARLIEST_TIMESTAMP | EARLIEST_LOCAL_TIMESTAMP
                            | LATEST_TIERED_TIMESTAMP => {
                                r.offset = log.kafka_log_start_offset() as i64
                            }
                            MAX_TIMESTAMP | 0.. => {
                                let target = if q.timestamp == MAX_TIMESTAMP {
                                    log.segments()
                                        .filter(|s| s.base_offset < log.high_watermark())
                                        .map(|s| s.max_timestamp)
                                        .max()
                                } else {
                                    Some(q.timestamp)
                                };
                                let view = View { disk, log: log_id };
                                let found = target
                                    .and_then(|ts| log.offset_for_timestamp(ts))
                                    .map(|mut cursor| {
                                        cursor.run(&view).map(|()| cursor.into_timestamp_hit())
                                    });
                                match found {
                                    Some(Ok(Some(hit))) => {
                                        // A hit below DeleteRecords' log start (in a segment
                                        // it has not deleted yet) answers the log start.
                                        r.offset = log
                                            .kafka_offset(hit.offset)
                                            .max(log.kafka_log_start_offset())
                                            as i64;
                                        r.timestamp = hit.timestamp;
                                    }
                                    Some(Ok(None)) | None => {}
                                    Some(Err(e)) => {
                                        tracing::error!(%tp, "timestamp lookup failed: {e:?}");
                                        r.error = e.error_code();
                                    }
                                }
                            }
                            other => {
                                r.error = ErrorCode::InvalidRequest;
                                tracing::debug!(%tp, "ListOffsets with unknown special timestamp {other}");
                            }
                        }
                        r
                    })
                    .collect();
                (topic, results)
            })
            .collect()
    }

    /// OffsetForLeaderEpoch (v2+). Per partition, as Kafka's
    /// `ReplicaManager.lastOffsetForLeaderEpoch`: an unknown partition gets
    /// UNKNOWN_TOPIC_OR_PARTITION; then the fencing check and leadership (always required, for
    /// consumers and followers alike); then the largest epoch at most the requested one and
    /// where it ends: the start of the next epoch, or the log end offset for the latest epoch.
    ///
    /// Like Kafka, the end offset of the latest epoch is the leader's log end offset, not capped
    /// at the high watermark. That is safe for a consumer: it only compares the answer with its
    /// own position, which never passes the high watermark, and while this replica leads in that
    /// epoch nothing below its log end is cut. An epoch above every known one gets `(-1, -1)`
    /// with no error, as in Kafka.
    pub(super) fn offset_for_leader_epoch(
        &self,
        topics: Vec<(String, Vec<EpochQuery>)>,
    ) -> Vec<(String, Vec<EpochEnd>)> {
        topics
            .into_iter()
            .map(|(topic, queries)| {
                let results = queries
                    .iter()
                    .map(|q| {
                        let tp = TopicPartition::new(topic.clone(), q.partition);
                        let outcome = match self.partitions.get(&tp) {
                            None => Err(ErrorCode::UnknownTopicOrPartition),
                            Some(slot) => slot
                                .replica()
                                .ok_or(ErrorCode::NotLeaderOrFollower)
                                .and_then(|replica| {
                                    check_replica(replica, q.current_leader_epoch)?;
                                    let log = replica.log();
                                    let (epoch, end_offset) =
                                        log.kafka_end_offset_for_epoch(q.leader_epoch);
                                    // Either both undefined, or an epoch no later than asked
                                    // for that ends inside the log.
                                    assert_eq!(epoch == -1, end_offset == -1, "{tp}");
                                    assert!(
                                        end_offset == -1
                                            || (epoch <= q.leader_epoch
                                                && (0..=log.kafka_log_end_offset() as i64)
                                                    .contains(&end_offset)),
                                        "{tp}: epoch {} answered ({epoch}, {end_offset})",
                                        q.leader_epoch
                                    );
                                    // Rare (after leader changes) and decisive for a
                                    // consumer: an answer below its position is a truncation
                                    // it resets for.
                                    tracing::info!(
                                        %tp,
                                        asked = q.leader_epoch,
                                        epoch,
                                        end_offset,
                                        log_end = log.kafka_log_end_offset(),
                                        high_watermark = log.kafka_high_watermark(),
                                        "OffsetForLeaderEpoch answered"
                                    );
                                    Ok((epoch, end_offset))
                                }),
                        };
                        match outcome {
                            Ok((leader_epoch, end_offset)) => EpochEnd {
                                partition: q.partition,
                                error: ErrorCode::None,
                                leader_epoch,
                                end_offset,
                            },
                            Err(error) => EpochEnd {
                                partition: q.partition,
                                error,
                                leader_epoch: -1,
                                end_offset: -1,
                            },
                        }
                    })
                    .collect();
                (topic, results)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_epoch_is_checked_before_leadership_as_in_kafka() {
        assert_eq!(check_leader(5, true, NO_LEADER_EPOCH), Ok(()));
        assert_eq!(check_leader(5, true, 5), Ok(()));
        assert_eq!(check_leader(5, true, 4), Err(ErrorCode::FencedLeaderEpoch));
        assert_eq!(check_leader(5, true, 6), Err(ErrorCode::UnknownLeaderEpoch));
        // Only -1 turns the check off; another negative epoch is simply old.
        assert_eq!(check_leader(5, true, -2), Err(ErrorCode::FencedLeaderEpoch));
        assert_eq!(
            check_leader(5, false, NO_LEADER_EPOCH),
            Err(ErrorCode::NotLeaderOrFollower)
        );
        assert_eq!(
            check_leader(5, false, 5),
            Err(ErrorCode::NotLeaderOrFollower)
        );
        assert_eq!(
            check_leader(5, false, 4),
            Err(ErrorCode::FencedLeaderEpoch),
            "a stale client hears about its stale epoch first"
        );
    }
}
