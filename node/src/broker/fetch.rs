//! Fetch: read committed batches (never above the high watermark), honouring `max_bytes`,
//! `partition_max_bytes` and KIP-74's "at least one batch"; when fewer than `min_bytes` are
//! available, park the request until data arrives or `max_wait_ms` passes (long poll).

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::fetch_request::FetchRequest;
use kafka_protocol::messages::fetch_response::{
    FetchResponse, FetchableTopicResponse, PartitionData,
};
use kafka_protocol::messages::ResponseKind;
use sluice_core::log::{LogStore, PartitionLog, ReadError};
use sluice_core::storage::Storage;
use sluice_core::ErrorCode;
use tokio::sync::oneshot;
use tokio::time::{Duration, Instant};

use super::{leader_epoch, Broker, TopicPartition};

pub(super) enum Outcome {
    Now(FetchResponse),
    Wait(PendingFetch),
}

pub(super) struct PendingFetch {
    request: FetchRequest,
    version: i16,
    deadline: Instant,
}

pub struct FetchWaiter {
    pending: PendingFetch,
    reply: oneshot::Sender<ResponseKind>,
    pub deadline: Instant,
}

impl FetchWaiter {
    pub(super) fn new(pending: PendingFetch, reply: oneshot::Sender<ResponseKind>) -> FetchWaiter {
        FetchWaiter {
            deadline: pending.deadline,
            pending,
            reply,
        }
    }
}

/// What one pass over a fetch request produced.
struct FetchResult {
    response: FetchResponse,
    bytes: usize,
    errors: bool,
}

impl<S: Storage> Broker<S> {
    pub(super) fn fetch(&mut self, request: FetchRequest, version: i16) -> Outcome {
        let result = self.read_fetch(&request, version);
        if request.max_wait_ms <= 0
            || result.bytes >= request.min_bytes.max(0) as usize
            || result.errors
        {
            return Outcome::Now(result.response);
        }
        let wait = Duration::from_millis(request.max_wait_ms as u64);
        Outcome::Wait(PendingFetch {
            request,
            version,
            deadline: Instant::now() + wait,
        })
    }

    fn read_fetch(&mut self, request: &FetchRequest, version: i16) -> FetchResult {
        let mut remaining = if version >= 3 {
            request.max_bytes.max(0) as usize
        } else {
            usize::MAX
        };
        let mut bytes = 0usize;
        let mut errors = false;
        let mut response = FetchResponse::default();
        for topic in &request.topics {
            let name = if version >= 13 {
                self.topic_ids.get(&topic.topic_id).cloned()
            } else {
                Some(topic.topic.0.to_string())
            };
            let mut topic_response = FetchableTopicResponse::default()
                .with_topic(topic.topic.clone())
                .with_topic_id(topic.topic_id);
            for p in &topic.partitions {
                let mut data = PartitionData::default()
                    .with_partition_index(p.partition)
                    .with_high_watermark(-1)
                    .with_last_stable_offset(-1)
                    .with_log_start_offset(-1)
                    // An empty buffer, not null: librdkafka rejects a null record set.
                    .with_records(Some(Bytes::new()));
                let unknown = if version >= 13 {
                    ErrorCode::UnknownTopicId
                } else {
                    ErrorCode::UnknownTopicOrPartition
                };
                let tp = name.as_ref().map(|n| TopicPartition {
                    topic: n.clone(),
                    partition: p.partition,
                });
                let limit = (p.partition_max_bytes.max(0) as usize).min(remaining);
                let missing = match &tp {
                    Some(tp) if !self.partitions.contains_key(tp) => {
                        Some(match self.missing_partition_error(tp) {
                            ErrorCode::UnknownTopicOrPartition => unknown,
                            code => code,
                        })
                    }
                    Some(_) => None,
                    None => Some(unknown),
                };
                match tp.and_then(|tp| self.partitions.get_mut(&tp).map(|part| (tp, part))) {
                    None => data.error_code = missing.unwrap_or(unknown).code(),
                    Some((tp, part)) => {
                        // Fencing (current leader epoch, v9+; -1 below) before leadership, as
                        // Kafka does; a refused partition reports no offsets.
                        let checked =
                            leader_epoch::check_replica(&part.replica, p.current_leader_epoch);
                        let log = part.replica.log();
                        if checked.is_ok() {
                            data.high_watermark = log.high_watermark() as i64;
                            data.last_stable_offset = data.high_watermark;
                            data.log_start_offset = log.log_start_offset() as i64;
                        }
                        if let Err(code) = checked {
                            data.error_code = code.code();
                        } else if p.fetch_offset < 0 {
                            data.error_code = ErrorCode::OffsetOutOfRange.code();
                        } else if limit > 0 || bytes == 0 {
                            let read = read_records(
                                log,
                                &mut part.store.borrow_mut(),
                                p.fetch_offset as u64,
                                limit,
                            );
                            match read {
                                // KIP-74: only the first non-empty partition may exceed the limit.
                                Ok(records) if bytes > 0 && records.len() > limit => {}
                                Ok(records) => {
                                    bytes += records.len();
                                    remaining = remaining.saturating_sub(records.len());
                                    data.records = Some(records);
                                }
                                Err(e) => {
                                    if let ReadError::Corrupt(why) = &e {
                                        tracing::error!(%tp, offset = p.fetch_offset, "refusing to serve a damaged batch: {why}");
                                    }
                                    data.error_code = e.error_code().code();
                                }
                            }
                        }
                    }
                }
                errors |= data.error_code != 0;
                topic_response.partitions.push(data);
            }
            response.responses.push(topic_response);
        }
        FetchResult {
            response,
            bytes,
            errors,
        }
    }

    /// Answers parked fetches that now have enough data, or whose wait is over.
    pub(super) fn answer_fetch_waiters(&mut self, now: Instant) {
        if self.fetch_waiters.is_empty() {
            return;
        }
        let data_arrived = std::mem::take(&mut self.high_watermark_moved);
        let waiters = std::mem::take(&mut self.fetch_waiters);
        for waiter in waiters {
            if waiter.reply.is_closed() {
                continue; // The connection is gone.
            }
            let expired = now >= waiter.deadline;
            if !expired && !data_arrived {
                self.fetch_waiters.push(waiter);
                continue;
            }
            let result = self.read_fetch(&waiter.pending.request, waiter.pending.version);
            let enough =
                result.bytes >= waiter.pending.request.min_bytes.max(0) as usize || result.errors;
            if enough || expired {
                let _ = waiter.reply.send(ResponseKind::Fetch(result.response));
            } else {
                self.fetch_waiters.push(waiter);
            }
        }
    }
}

/// Reads whole batches from `offset` for a fetch: at least one (KIP-74), at most `limit` bytes
/// after the first. A read stops at a segment's end; when all it found were batches no consumer
/// sees a record in (compaction's empty batches, control batches), the next segment is read
/// too, so one fetch makes progress past a run of cleaned segments. (librdkafka takes a
/// response without records for a too-small fetch size and gives up after ten in a row.)
fn read_records<S: Storage>(
    log: &PartitionLog,
    store: &mut LogStore<S>,
    offset: u64,
    limit: usize,
) -> Result<Bytes, ReadError> {
    let mut cursor = log.read(offset, limit.min(u32::MAX as usize) as u32)?;
    store.read(&mut cursor)?;
    let first = cursor.into_records();
    // The common case, decided by the first batch header: records to hand out.
    if first.is_empty() || sluice_core::batch::holds_data_records(&first) || first.len() >= limit {
        return Ok(first);
    }
    let mut at = last_batch_end(&first);
    if at >= log.high_watermark() {
        return Ok(first);
    }
    let mut out = BytesMut::from(&first[..]);
    while out.len() < limit && at < log.high_watermark() {
        let room = limit - out.len();
        let mut cursor = log.read(at, room.min(u32::MAX as usize) as u32)?;
        store.read(&mut cursor)?;
        let records = cursor.into_records();
        let next = last_batch_end(&records);
        if records.is_empty() || records.len() > room || next <= at {
            break;
        }
        out.extend_from_slice(&records);
        if sluice_core::batch::holds_data_records(&records) {
            break;
        }
        at = next;
    }
    Ok(out.freeze())
}

/// The offset after the last whole batch of `buf`.
fn last_batch_end(mut buf: &[u8]) -> u64 {
    let mut end = 0;
    while let Ok(header) = sluice_core::batch::BatchHeader::parse(buf) {
        end = header.next_offset() as u64;
        match buf.get(header.total_bytes()..) {
            Some(rest) => buf = rest,
            None => break,
        }
    }
    end
}
