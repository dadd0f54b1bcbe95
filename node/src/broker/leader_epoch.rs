//! Leader epochs towards clients (KIP-101, KIP-320): the fencing check that Fetch, ListOffsets and
//! OffsetForLeaderEpoch share, and OffsetForLeaderEpoch itself, which a client (or, later, a
//! follower) sends after a leader change to learn where an epoch it read ends on the new leader,
//! and so whether the log it read was truncated under it.
//!
//! The leader epoch is the partition's Raft term; the end offsets come from the log's leader-epoch
//! cache (`PartitionLog::end_offset_for_epoch`, Kafka's `LeaderEpochFileCache.endOffsetFor`).

use kafka_protocol::messages::offset_for_leader_epoch_request::OffsetForLeaderEpochRequest;
use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderEpochResponse, OffsetForLeaderTopicResult,
};
use sluice_core::replica::Replica;
use sluice_core::storage::Storage;
use sluice_core::ErrorCode;

use super::{Broker, TopicPartition};

/// Kafka's `NO_PARTITION_LEADER_EPOCH`: a client that sends it as its current leader epoch asks
/// for no fencing check.
pub(super) const NO_LEADER_EPOCH: i32 = -1;

/// The replica's leader epoch as Kafka carries it (an `int32`). Terms grow by one per election
/// and batches carry them in a 32-bit `partitionLeaderEpoch`, so only a damaged `raft-state`
/// could hold a larger one; that is input from disk, so it saturates rather than panics.
pub(super) fn leader_epoch(replica: &Replica) -> i32 {
    i32::try_from(replica.term()).unwrap_or(i32::MAX)
}

/// Kafka's `Partition.getLocalLog`: first the client's idea of the current leader epoch (unless it
/// sent [`NO_LEADER_EPOCH`]) is compared with ours, then leadership is required. An older epoch
/// means the client's metadata is stale (FENCED_LEADER_EPOCH: refresh it); a newer one means this
/// replica has not yet heard of the election the client knows about (UNKNOWN_LEADER_EPOCH: retry).
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

impl<S: Storage> Broker<S> {
    /// OffsetForLeaderEpoch (v2+; older versions are gone from Kafka 4.0's schemas). Per
    /// partition, as Kafka's `ReplicaManager.lastOffsetForLeaderEpoch`: an unknown partition gets
    /// UNKNOWN_TOPIC_OR_PARTITION; then the fencing check and leadership (always required, for
    /// consumers and followers alike); then the largest epoch at most the requested one and where
    /// it ends: the start of the next epoch, or the log end offset for the latest epoch.
    ///
    /// Like Kafka, the end offset of the latest epoch is the leader's log end offset, not capped at
    /// the high watermark, whoever asks (`replica_id` is not consulted). That is safe for a
    /// consumer: it only compares the answer with its own position, which never passes the high
    /// watermark, and while this replica leads in that epoch nothing below its log end is cut.
    /// An epoch above every known epoch gets `(-1, -1)` with no error, as in Kafka.
    pub(super) fn offset_for_leader_epoch(
        &mut self,
        request: OffsetForLeaderEpochRequest,
    ) -> OffsetForLeaderEpochResponse {
        let mut response = OffsetForLeaderEpochResponse::default();
        for topic in request.topics {
            let mut result = OffsetForLeaderTopicResult::default().with_topic(topic.topic.clone());
            for p in topic.partitions {
                // Defaults: leader epoch -1 and end offset -1 (UNDEFINED_EPOCH(_OFFSET)).
                let mut r = EpochEndOffset::default().with_partition(p.partition);
                let tp = TopicPartition {
                    topic: topic.topic.0.to_string(),
                    partition: p.partition,
                };
                let outcome = match self.partitions.get(&tp) {
                    None => Err(ErrorCode::UnknownTopicOrPartition),
                    Some(part) => check_replica(&part.replica, p.current_leader_epoch).map(|()| {
                        let log = part.replica.log();
                        let (epoch, end_offset) = log.end_offset_for_epoch(p.leader_epoch);
                        // Either both undefined, or an epoch no later than asked for that ends
                        // inside the log.
                        assert_eq!(
                            epoch == -1,
                            end_offset == -1,
                            "{tp}: ({epoch}, {end_offset})"
                        );
                        assert!(
                            end_offset == -1
                                || (epoch <= p.leader_epoch
                                    && (0..=log.log_end_offset() as i64).contains(&end_offset)),
                            "{tp}: epoch {} answered ({epoch}, {end_offset})",
                            p.leader_epoch
                        );
                        (epoch, end_offset)
                    }),
                };
                match outcome {
                    Ok((epoch, end_offset)) => {
                        r.leader_epoch = epoch;
                        r.end_offset = end_offset;
                    }
                    Err(code) => r.error_code = code.code(),
                }
                result.partitions.push(r);
            }
            response.topics.push(result);
        }
        response
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
