//! Produce: validate and append each partition's batches, then answer at once (acks=0/1) or once
//! the high watermark covers every appended batch (acks=all).

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::produce_request::ProduceRequest;
use kafka_protocol::messages::produce_response::{
    PartitionProduceResponse, ProduceResponse, TopicProduceResponse,
};
use kafka_protocol::messages::ResponseKind;
use kafka_protocol::protocol::StrBytes;
use sluice_core::replica::Proposed;
use sluice_core::storage::Storage;
use sluice_core::ErrorCode;
use tokio::sync::oneshot;
use tokio::time::{Duration, Instant};

use super::{now_ms, Broker, TopicPartition};

pub(super) enum Outcome {
    Now(ProduceResponse),
    Wait(PendingProduce),
}

/// An acks=all response waiting for group commit.
pub(super) struct PendingProduce {
    response: ProduceResponse,
    /// (partition, the proposed batch, index of the topic and partition in the response).
    waits: Vec<(TopicPartition, Proposed, usize, usize)>,
    deadline: Instant,
}

pub struct ProduceWaiter {
    pending: PendingProduce,
    reply: oneshot::Sender<ResponseKind>,
    pub deadline: Instant,
}

impl ProduceWaiter {
    pub(super) fn new(
        pending: PendingProduce,
        reply: oneshot::Sender<ResponseKind>,
    ) -> ProduceWaiter {
        ProduceWaiter {
            deadline: pending.deadline,
            pending,
            reply,
        }
    }
}

impl<S: Storage> Broker<S> {
    pub(super) fn produce(&mut self, request: ProduceRequest, version: i16) -> Outcome {
        let acks = request.acks;
        let now = now_ms();
        let mut response = ProduceResponse::default();
        let mut waits = Vec::new();
        for (t, topic_data) in request.topic_data.into_iter().enumerate() {
            let name = if version >= 13 {
                self.topic_ids.get(&topic_data.topic_id).cloned()
            } else {
                Some(topic_data.name.0.to_string())
            };
            let mut topic_response = TopicProduceResponse::default()
                .with_name(topic_data.name.clone())
                .with_topic_id(topic_data.topic_id);
            for (p, data) in topic_data.partition_data.into_iter().enumerate() {
                let mut partition_response = PartitionProduceResponse::default()
                    .with_index(data.index)
                    .with_base_offset(-1)
                    .with_log_append_time_ms(-1)
                    .with_log_start_offset(-1);
                let result = if !matches!(acks, -1..=1) {
                    Err((
                        ErrorCode::InvalidRequiredAcks,
                        format!("acks must be -1, 0 or 1, not {acks}"),
                    ))
                } else if request.transactional_id.is_some() {
                    Err((
                        ErrorCode::InvalidRequest,
                        "transactions are not supported yet".to_string(),
                    ))
                } else {
                    match &name {
                        None => Err((
                            ErrorCode::UnknownTopicId,
                            format!("unknown topic id {}", topic_data.topic_id),
                        )),
                        Some(name) if name == sluice_core::group::OFFSETS_TOPIC => Err((
                            ErrorCode::InvalidTopicException,
                            format!("{name} is internal: only group coordinators write to it"),
                        )),
                        Some(name) => self.append(name, data.index, data.records, now),
                    }
                };
                match result {
                    Ok((appended, log_start_offset, committed)) => {
                        partition_response.base_offset = appended.base_offset as i64;
                        partition_response.log_start_offset = log_start_offset as i64;
                        let planted_early_ack = self
                            .config
                            .planted
                            .is(sluice_core::planted::Bug::AckBeforeFsync);
                        if acks == -1 && !committed && !planted_early_ack {
                            let tp = TopicPartition {
                                topic: name.clone().expect("appended"),
                                partition: data.index,
                            };
                            waits.push((tp, appended, t, p));
                        }
                    }
                    Err((code, message)) => {
                        partition_response.error_code = code.code();
                        if version >= 8 {
                            partition_response.error_message = Some(StrBytes::from_string(message));
                        }
                    }
                }
                topic_response.partition_responses.push(partition_response);
            }
            response.responses.push(topic_response);
        }
        if waits.is_empty() {
            return Outcome::Now(response);
        }
        let timeout = Duration::from_millis(u64::try_from(request.timeout_ms).unwrap_or(0).max(1));
        Outcome::Wait(PendingProduce {
            response,
            waits,
            deadline: Instant::now() + timeout,
        })
    }

    /// Appends one partition's records and applies the resulting storage ops.
    /// Appends a batch the broker built itself (a group coordinator's records); returns its
    /// base offset.
    pub(super) fn append_internal(
        &mut self,
        topic: &str,
        partition: i32,
        batch: Bytes,
        now: u64,
    ) -> Result<u64, ErrorCode> {
        self.append(topic, partition, Some(batch), now)
            .map(|(appended, _, _)| appended.base_offset)
            .map_err(|(code, _)| code)
    }

    fn append(
        &mut self,
        topic: &str,
        partition: i32,
        records: Option<Bytes>,
        now: u64,
    ) -> Result<(Proposed, u64, bool), (ErrorCode, String)> {
        let tp = TopicPartition {
            topic: topic.to_string(),
            partition,
        };
        let Some(part) = self.partitions.get_mut(&tp) else {
            let code = self.missing_partition_error(&tp);
            return Err((code, format!("{tp}: {code:?} on this broker")));
        };
        let Some(records) = records else {
            return Err((ErrorCode::CorruptMessage, "no records".to_string()));
        };
        // Usually the only reference to this buffer, so no copy; the log rewrites base offsets.
        let records = records
            .try_into_mut()
            .unwrap_or_else(|shared| BytesMut::from(&shared[..]));
        let appended = part
            .replica
            .produce(records, now, &part.store)
            .map_err(|code| {
                tracing::debug!(%tp, "produce rejected: {code:?}");
                (code, format!("{code:?}"))
            })?;
        if let Err(e) = self.flush_partition(&tp) {
            tracing::error!(%tp, "append failed: {e}");
            self.recover_partition(&tp);
            return Err((ErrorCode::KafkaStorageError, format!("storage failed: {e}")));
        }
        let part = &self.partitions[&tp];
        let log_start_offset = part.replica.log().log_start_offset();
        let committed = part.replica.is_committed(&appended) == Some(true);
        self.dirty.insert(tp);
        Ok((appended, log_start_offset, committed))
    }

    /// Answers acks=all waiters whose batches are all committed, and times out the rest.
    pub(super) fn answer_produce_waiters(&mut self, now: Instant) {
        let waiters = std::mem::take(&mut self.produce_waiters);
        for mut waiter in waiters {
            let mut done = true;
            for (tp, proposed, _, _) in &waiter.pending.waits {
                let committed = self
                    .partitions
                    .get(tp)
                    .map(|p| p.replica.is_committed(proposed));
                // Waiting only while the batch may still commit.
                done &= !matches!(committed, Some(None));
            }
            if done || now >= waiter.deadline {
                for (tp, proposed, t, p) in &waiter.pending.waits {
                    let committed = self
                        .partitions
                        .get(tp)
                        .map(|p| p.replica.is_committed(proposed));
                    let code = match committed {
                        Some(Some(true)) => continue,
                        Some(None) => ErrorCode::RequestTimedOut,
                        // Cut by a new leader: never committed, so the producer may retry.
                        Some(Some(false)) => ErrorCode::NotLeaderOrFollower,
                        None => ErrorCode::UnknownTopicOrPartition,
                    };
                    let r = &mut waiter.pending.response.responses[*t].partition_responses[*p];
                    r.error_code = code.code();
                    r.base_offset = -1;
                }
                let _ = waiter
                    .reply
                    .send(ResponseKind::Produce(waiter.pending.response));
            } else {
                self.produce_waiters.push(waiter);
            }
        }
    }

    /// Fails the waiters of one partition (its storage failed or it was deleted).
    pub(super) fn fail_produce_waiters(&mut self, tp: &TopicPartition, code: ErrorCode) {
        for waiter in &mut self.produce_waiters {
            let mut hit = false;
            waiter.pending.waits.retain(|(wtp, _, t, p)| {
                if wtp != tp {
                    return true;
                }
                let r = &mut waiter.pending.response.responses[*t].partition_responses[*p];
                r.error_code = code.code();
                r.base_offset = -1;
                hit = true;
                false
            });
            if hit && waiter.pending.waits.is_empty() {
                // Answered by the next answer_produce_waiters pass (nothing left to wait for).
                waiter.deadline = Instant::now();
            }
        }
    }
}
