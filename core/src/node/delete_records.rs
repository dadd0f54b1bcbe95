//! DeleteRecords (API key 21): raise partitions' log start (Kafka's low watermark), replicated
//! through Raft.
//!
//! Kafka's `ReplicaManager.deleteRecords`: per partition, on its leader, an offset (-1: the high
//! watermark) at most the high watermark becomes the log start unless it already is past it;
//! the answer waits until the change is durable on the replicas, up to the request's timeout
//! (at least [`crate::limits::DELETE_RECORDS_WAIT_MS_MIN`]: a commit needs an fsync here).
//! Here the leader proposes a log-start entry ([`crate::replica::Replica::delete_records`]);
//! every replica moves its log start when that entry commits, and the answer rides the same
//! waiter as an acks=all produce ([`super::produce`]).

use super::api::{DeleteRecordsRequest, DeletedRecords, RequestId};
use super::disk::LogReader;
use super::produce::{ProduceWaiter, Wait, WaiterReply};
use super::{Node, TopicPartition, View};
use crate::group::OFFSETS_TOPIC;
use crate::replica::LogStartChange;
use crate::ErrorCode;

impl Node {
    pub(super) fn delete_records(
        &mut self,
        request: RequestId,
        delete: DeleteRecordsRequest,
        disk: &impl LogReader,
    ) {
        // The waiters are bounded: a node with as many answers waiting proposes nothing more
        // and says so (clients retry a timeout).
        let full = self.produce_waiters.len() >= super::WAITERS_MAX;
        let mut reply = Vec::with_capacity(delete.topics.len());
        let mut waits = Vec::new();
        for (t, (topic, partitions)) in delete.topics.into_iter().enumerate() {
            let mut results = Vec::with_capacity(partitions.len());
            for (p, (partition, offset)) in partitions.into_iter().enumerate() {
                let mut result = DeletedRecords {
                    partition,
                    low_watermark: -1,
                    error: ErrorCode::None,
                };
                let tp = TopicPartition::new(topic.clone(), partition);
                if full {
                    result.error = ErrorCode::RequestTimedOut;
                    results.push(result);
                    continue;
                }
                match self.delete_records_on_leader(&tp, offset, disk) {
                    Ok(LogStartChange::Done { low_watermark }) => {
                        result.low_watermark = low_watermark as i64;
                    }
                    Ok(LogStartChange::Proposed(proposed)) => {
                        waits.push((tp, Wait::Committed(proposed), t, p));
                    }
                    Err(code) => result.error = code,
                }
                results.push(result);
            }
            reply.push((topic, results));
        }
        let reply = WaiterReply::DeleteRecords(reply);
        let timeout_ms = u64::try_from(delete.timeout_ms)
            .unwrap_or(0)
            .max(crate::limits::DELETE_RECORDS_WAIT_MS_MIN);
        // Always through the waiter: a group of one may have committed the entry already, and
        // the next pass answers it with the low watermark it applied.
        let deadline = if waits.is_empty() {
            self.now.instant
        } else {
            self.deadline_after(timeout_ms)
        };
        if full {
            self.reply(request, reply.into_reply());
            return;
        }
        self.produce_waiters.push(ProduceWaiter {
            request,
            reply,
            waits,
            deadline,
        });
    }

    /// One partition of a DeleteRecords, on its leader.
    fn delete_records_on_leader(
        &mut self,
        tp: &TopicPartition,
        offset: i64,
        disk: &impl LogReader,
    ) -> Result<LogStartChange, ErrorCode> {
        if tp.topic == OFFSETS_TOPIC {
            // Kafka: "Cannot delete records of internal topic".
            return Err(ErrorCode::InvalidTopicException);
        }
        let wall_ms = self.now.wall_ms;
        let missing = self.missing_partition_error(tp);
        let slot = self.partitions.get_mut(tp).ok_or(missing)?;
        let log = slot.log();
        let h = slot.hosted_mut().ok_or(ErrorCode::NotLeaderOrFollower)?;
        let change = h
            .machine
            .delete_records(offset, wall_ms, &View { disk, log })
            .map_err(|refusal| {
                tracing::debug!(%tp, offset, "delete records refused: {refusal}");
                refusal.code
            })?;
        if let LogStartChange::Proposed(_) = change {
            // Pipelined like a produce: the entry leaves for the followers in this drain.
            self.after_partition_input(tp, disk);
        }
        Ok(change)
    }
}
