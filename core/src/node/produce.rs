//! Produce: validate and append each partition's batch on its leader, then answer at once
//! (acks=0 gets nothing, a retried duplicate is answered with its original offsets), once the
//! batch reached the OS (acks=1), or once it is committed on a majority that fsynced it
//! (acks=all).

use bytes::BytesMut;

use super::api::{DeletedRecords, ProduceRequest, ProducedPartition, Reply, RequestId, TopicKey};
use super::disk::{LogId, LogReader};
use super::partitions::report_write;
use super::{Node, TopicPartition, View};
use crate::batch::TimestampType;
use crate::group::OFFSETS_TOPIC;
use crate::planted::Bug;
use crate::replica::Proposed;
use crate::time::Instant;
use crate::ErrorCode;

/// What a partition of a produce (or of a DeleteRecords) waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Wait {
    /// acks=1: the write with this sequence number reached the OS.
    Written { log: LogId, seq: u64 },
    /// acks=all: the batch is committed.
    Committed(Proposed),
}

/// A reply waiting on writes to its partitions: a produce's (acks=1 or all), or a
/// DeleteRecords' (its log-start entries committed). Both share the deadline, the failure of a
/// partition and the answer path.
pub(super) struct ProduceWaiter {
    pub request: RequestId,
    pub reply: WaiterReply,
    /// (partition, what it waits for, index of the topic and partition in the reply).
    pub waits: Vec<(TopicPartition, Wait, usize, usize)>,
    pub deadline: Instant,
}

/// The reply a [`ProduceWaiter`] completes.
pub(super) enum WaiterReply {
    Produce(Vec<(TopicKey, Vec<ProducedPartition>)>),
    DeleteRecords(Vec<(String, Vec<DeletedRecords>)>),
}

impl WaiterReply {
    /// Partition `p` of topic `t` failed: no offsets, the error.
    fn fail(&mut self, t: usize, p: usize, code: ErrorCode) {
        match self {
            WaiterReply::Produce(topics) => {
                let r = &mut topics[t].1[p];
                r.error = code;
                r.base_offset = -1;
                r.log_append_time_ms = -1;
            }
            WaiterReply::DeleteRecords(topics) => {
                let r = &mut topics[t].1[p];
                r.error = code;
                r.low_watermark = -1;
            }
        }
    }

    pub fn into_reply(self) -> Reply {
        match self {
            WaiterReply::Produce(topics) => Reply::Produce(topics),
            WaiterReply::DeleteRecords(topics) => Reply::DeleteRecords(topics),
        }
    }
}

impl Node {
    pub(super) fn produce(
        &mut self,
        request: RequestId,
        produce: ProduceRequest,
        disk: &impl LogReader,
    ) {
        let acks = produce.acks;
        let mut reply = Vec::with_capacity(produce.topics.len());
        let mut waits = Vec::new();
        for (t, (key, partitions)) in produce.topics.into_iter().enumerate() {
            let name = match &key {
                TopicKey::Name(name) => Some(name.clone()),
                TopicKey::Id(id) => self.topic_ids.get(id).cloned(),
            };
            let mut results = Vec::with_capacity(partitions.len());
            for (p, (partition, records)) in partitions.into_iter().enumerate() {
                let mut result = ProducedPartition {
                    partition,
                    error: ErrorCode::None,
                    message: None,
                    base_offset: -1,
                    log_start_offset: -1,
                    log_append_time_ms: -1,
                };
                let outcome = if !matches!(acks, -1..=1) {
                    Err((
                        ErrorCode::InvalidRequiredAcks,
                        format!("acks must be -1, 0 or 1, not {acks}"),
                    ))
                } else if produce.transactional {
                    Err((
                        ErrorCode::InvalidRequest,
                        "transactions are not supported yet".to_string(),
                    ))
                } else {
                    match &name {
                        None => Err((
                            ErrorCode::UnknownTopicId,
                            format!("unknown topic id {key:?}"),
                        )),
                        Some(name) if name == OFFSETS_TOPIC => Err((
                            ErrorCode::InvalidTopicException,
                            format!("{name} is internal: only group coordinators write to it"),
                        )),
                        Some(name) => {
                            let tp = TopicPartition::new(name.clone(), partition);
                            self.append(&tp, records, disk).map(|a| (tp, a))
                        }
                    }
                };
                match outcome {
                    Ok((tp, appended)) => {
                        result.base_offset = appended.kafka_base_offset as i64;
                        result.log_start_offset = appended.log_start_offset as i64;
                        result.log_append_time_ms = appended.log_append_time_ms;
                        let early = self.config.planted.is(Bug::AckBeforeFsync);
                        let wait = match acks {
                            -1 if !appended.committed && !early => {
                                Some(Wait::Committed(appended.proposed))
                            }
                            1 => appended.write.map(|(log, seq)| Wait::Written { log, seq }),
                            _ => None,
                        };
                        if let Some(wait) = wait {
                            waits.push((tp, wait, t, p));
                        }
                    }
                    Err((code, message)) => {
                        result.error = code;
                        result.message = Some(message);
                    }
                }
                results.push(result);
            }
            reply.push((key, results));
        }
        if acks == 0 {
            return;
        }
        if waits.is_empty() {
            self.reply(request, Reply::Produce(reply));
            return;
        }
        let timeout_ms = u64::try_from(produce.timeout_ms).unwrap_or(0).max(1);
        self.produce_waiters.push(ProduceWaiter {
            request,
            reply: WaiterReply::Produce(reply),
            waits,
            deadline: self.deadline_after(timeout_ms),
        });
    }

    /// Appends one partition's batch on its leader (a client's, or a group coordinator's
    /// records).
    pub(super) fn append(
        &mut self,
        tp: &TopicPartition,
        records: Option<bytes::Bytes>,
        disk: &impl LogReader,
    ) -> Result<Appended, (ErrorCode, String)> {
        let wall_ms = self.now.wall_ms;
        let missing = self.missing_partition_error(tp);
        let batch_codec = &*self.batch_codec;
        let Some(slot) = self.partitions.get_mut(tp) else {
            return Err((missing, format!("{tp}: {missing:?} on this broker")));
        };
        let log = slot.log();
        let Some(h) = slot.hosted_mut() else {
            return Err((
                ErrorCode::NotLeaderOrFollower,
                format!("{tp} is opening on this broker"),
            ));
        };
        let Some(records) = records else {
            // Kafka has no answer of its own for null records (its handler fails with
            // UNKNOWN_SERVER_ERROR); it is the empty set's "at least one record batch".
            let code = ErrorCode::InvalidRecord;
            tracing::debug!(%tp, "produce rejected: {code:?}: null records");
            return Err((
                code,
                format!("{tp}: null records; one record batch is required"),
            ));
        };
        // Usually the only reference to this buffer, so no copy; the log rewrites base offsets.
        let records = records
            .try_into_mut()
            .unwrap_or_else(|shared| BytesMut::from(&shared[..]));
        let proposed = h
            .machine
            .produce(records, wall_ms, &View { disk, log }, batch_codec)
            .map_err(|refusal| {
                tracing::debug!(%tp, "produce rejected: {refusal}");
                (refusal.code, format!("{tp}: {}", refusal.reason))
            })?;
        // Clients see Kafka offsets: Raft's own entries take none.
        let log_start_offset = h.machine.log().kafka_log_start_offset();
        let kafka_base_offset = h.machine.log().kafka_offset(proposed.base_offset);
        let log_append_time =
            h.machine.log().config().timestamp_type == TimestampType::LogAppendTime;
        let log_append_time_ms = if log_append_time && !proposed.duplicate {
            wall_ms as i64
        } else {
            -1
        };
        let committed = h.machine.is_committed(&proposed) == Some(true);
        // Pipelined: the append leaves for the followers in this same drain.
        let last_write = self.after_partition_input(tp, disk);
        let write = last_write.map(|(at, seq)| (log, report_write(&mut self.outputs, at, seq)));
        assert!(
            proposed.duplicate || write.is_some(),
            "{tp}: a new batch was written"
        );
        Ok(Appended {
            proposed,
            kafka_base_offset,
            log_start_offset,
            log_append_time_ms,
            committed,
            write,
        })
    }

    /// Answers produce waiters whose partitions are all done, and times out the rest.
    pub(super) fn answer_produce_waiters(&mut self) {
        if self.produce_waiters.is_empty() {
            return;
        }
        let now = self.now.instant;
        let waiters = std::mem::take(&mut self.produce_waiters);
        for mut waiter in waiters {
            let states: Vec<Option<Result<(), ErrorCode>>> = waiter
                .waits
                .iter()
                .map(|(tp, wait, _, _)| self.wait_state(tp, wait))
                .collect();
            let done = states.iter().all(Option::is_some);
            if !done && now < waiter.deadline {
                self.produce_waiters.push(waiter);
                continue;
            }
            for ((tp, _, t, p), state) in waiter.waits.iter().zip(states) {
                let code = match state {
                    Some(Ok(())) => {
                        if let WaiterReply::DeleteRecords(topics) = &mut waiter.reply {
                            // Committed, so applied: the low watermark as of now.
                            topics[*t].1[*p].low_watermark = self
                                .partitions
                                .get(tp)
                                .and_then(|slot| slot.replica())
                                .map_or(-1, |r| r.log().kafka_log_start_offset() as i64);
                        }
                        continue;
                    }
                    Some(Err(code)) => code,
                    None => ErrorCode::RequestTimedOut,
                };
                waiter.reply.fail(*t, *p, code);
            }
            self.reply(waiter.request, waiter.reply.into_reply());
        }
    }

    /// Whether a partition's wait is over: `Some(Ok)` done, `Some(Err)` failed for good, `None`
    /// still waiting.
    pub(super) fn wait_state(
        &self,
        tp: &TopicPartition,
        wait: &Wait,
    ) -> Option<Result<(), ErrorCode>> {
        let Some(slot) = self.partitions.get(tp) else {
            return Some(Err(ErrorCode::UnknownTopicOrPartition));
        };
        match wait {
            Wait::Written { log, seq } => {
                if slot.log() != *log {
                    // Reopened: the write may not have survived.
                    return Some(Err(ErrorCode::KafkaStorageError));
                }
                let h = slot.hosted()?;
                (h.written >= *seq).then_some(Ok(()))
            }
            Wait::Committed(proposed) => match slot.replica()?.is_committed(proposed) {
                Some(true) => Some(Ok(())),
                // Cut by a new leader: never committed, so the producer may retry.
                Some(false) => Some(Err(ErrorCode::NotLeaderOrFollower)),
                None => None,
            },
        }
    }

    /// Fails the waits on one partition (its storage failed, or it was deleted).
    pub(super) fn fail_produce_waiters(&mut self, tp: &TopicPartition, code: ErrorCode) {
        let now = self.now.instant;
        for waiter in &mut self.produce_waiters {
            let mut hit = false;
            let reply = &mut waiter.reply;
            waiter.waits.retain(|(wtp, _, t, p)| {
                if wtp != tp {
                    return true;
                }
                reply.fail(*t, *p, code);
                hit = true;
                false
            });
            if hit && waiter.waits.is_empty() {
                // Answered by the next pass (nothing left to wait for).
                waiter.deadline = now;
            }
        }
    }
}

/// A batch in the log.
pub(super) struct Appended {
    pub proposed: Proposed,
    /// The Kafka offset of the batch's first record.
    pub kafka_base_offset: u64,
    /// The log start offset as clients see it.
    pub log_start_offset: u64,
    /// The append time stamped on the batch (a `LogAppendTime` topic), else -1.
    pub log_append_time_ms: i64,
    /// Committed already (a duplicate of a committed batch, or a group of one that synced).
    pub committed: bool,
    /// The write that carries it and its sequence number (none for a duplicate).
    pub write: Option<(LogId, u64)>,
}
