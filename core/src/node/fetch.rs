//! Fetch: read committed batches (never above the high watermark), honouring `max_bytes`,
//! `partition_max_bytes` and KIP-74's "at least one batch"; when fewer than `min_bytes` are
//! available, park the request until data arrives or `max_wait_ms` passes (long poll).

use bytes::{Bytes, BytesMut};

use super::api::{FetchRequest, FetchedPartition, Reply, RequestId, TopicKey};
use super::disk::LogReader;
use super::offsets::check_replica;
use super::{Node, TopicPartition, View};
use crate::log::{PartitionLog, ReadError, SegmentReader};
use crate::time::Instant;
use crate::ErrorCode;

/// A fetch parked until enough data arrives or its wait is over.
pub(super) struct FetchWaiter {
    request: RequestId,
    fetch: FetchRequest,
    pub deadline: Instant,
}

/// What one pass over a fetch request produced.
struct FetchResult {
    reply: Vec<(TopicKey, Vec<FetchedPartition>)>,
    bytes: usize,
    errors: bool,
}

impl Node {
    pub(super) fn fetch(&mut self, request: RequestId, fetch: FetchRequest, disk: &impl LogReader) {
        let result = self.read_fetch(&fetch, disk);
        if fetch.max_wait_ms <= 0
            || result.bytes >= fetch.min_bytes.max(0) as usize
            || result.errors
            || self.fetch_waiters.len() >= super::WAITERS_MAX
        {
            self.reply(request, Reply::Fetch(result.reply));
            return;
        }
        let wait_ms = fetch.max_wait_ms as u64;
        self.fetch_waiters.push(FetchWaiter {
            request,
            deadline: self.deadline_after(wait_ms),
            fetch,
        });
    }

    fn read_fetch(&self, fetch: &FetchRequest, disk: &impl LogReader) -> FetchResult {
        let mut remaining = fetch.max_bytes.map_or(usize::MAX, |m| m.max(0) as usize);
        let mut bytes = 0usize;
        let mut errors = false;
        let mut reply = Vec::with_capacity(fetch.topics.len());
        for (key, partitions) in &fetch.topics {
            let (name, unknown) = match key {
                TopicKey::Name(name) => (Some(name.clone()), ErrorCode::UnknownTopicOrPartition),
                TopicKey::Id(id) => (self.topic_ids.get(id).cloned(), ErrorCode::UnknownTopicId),
            };
            let mut results = Vec::with_capacity(partitions.len());
            for p in partitions {
                let mut data = FetchedPartition {
                    partition: p.partition,
                    error: ErrorCode::None,
                    high_watermark: -1,
                    last_stable_offset: -1,
                    log_start_offset: -1,
                    records: Bytes::new(),
                };
                let limit = (p.partition_max_bytes.max(0) as usize).min(remaining);
                let tp = name
                    .as_ref()
                    .map(|n| TopicPartition::new(n.clone(), p.partition));
                let hosted = tp
                    .as_ref()
                    .and_then(|tp| self.partitions.get(tp).map(|slot| (tp, slot)));
                match hosted {
                    None => {
                        data.error = match tp.as_ref().map(|tp| self.missing_partition_error(tp)) {
                            Some(ErrorCode::UnknownTopicOrPartition) | None => unknown,
                            Some(code) => code,
                        }
                    }
                    Some((tp, slot)) => match slot.replica() {
                        // Opening (or reopening after a storage failure): not serving yet.
                        None => data.error = ErrorCode::NotLeaderOrFollower,
                        Some(replica) => {
                            // Fencing (current leader epoch, v9+; -1 below) before leadership,
                            // as Kafka does; a refused partition reports no offsets.
                            let checked = check_replica(replica, p.current_leader_epoch);
                            let log = replica.log();
                            if checked.is_ok() {
                                data.high_watermark = log.kafka_high_watermark() as i64;
                                data.last_stable_offset = data.high_watermark;
                                data.log_start_offset = log.kafka_log_start_offset() as i64;
                            }
                            if let Err(code) = checked {
                                data.error = code;
                            } else if p.fetch_offset < 0
                                || (p.fetch_offset as u64) < log.kafka_log_start_offset()
                            {
                                // Below the log start (retention or DeleteRecords): gone.
                                data.error = ErrorCode::OffsetOutOfRange;
                            } else if limit > 0 || bytes == 0 {
                                let view = View {
                                    disk,
                                    log: slot.log(),
                                };
                                let from = log.offsets().log(p.fetch_offset as u64);
                                match read_records(log, &view, from, limit)
                                    .map(|raw| kafka_batches(log, raw))
                                {
                                    // KIP-74: only the first non-empty partition may exceed the
                                    // limit.
                                    Ok(records) if bytes > 0 && records.len() > limit => {}
                                    Ok(records) => {
                                        bytes += records.len();
                                        remaining = remaining.saturating_sub(records.len());
                                        data.records = records;
                                    }
                                    Err(e) => {
                                        if let ReadError::Corrupt(why) = &e {
                                            tracing::error!(%tp, offset = p.fetch_offset, "refusing to serve a damaged batch: {why}");
                                            self.read_damage.borrow_mut().push((
                                                tp.clone(),
                                                crate::replica::ReadDamage {
                                                    offset: from,
                                                    why: why.clone(),
                                                },
                                            ));
                                        }
                                        if matches!(e, ReadError::OffsetOutOfRange { .. }) {
                                            tracing::info!(%tp, offset = p.fetch_offset, log_end = log.kafka_log_end_offset(), high_watermark = log.kafka_high_watermark(), "fetch past the log end: OFFSET_OUT_OF_RANGE");
                                        }
                                        data.error = e.error_code();
                                    }
                                }
                            }
                        }
                    },
                }
                errors |= data.error != ErrorCode::None;
                results.push(data);
            }
            reply.push((key.clone(), results));
        }
        FetchResult {
            reply,
            bytes,
            errors,
        }
    }

    /// Answers parked fetches that now have enough data, or whose wait is over.
    pub(super) fn answer_fetch_waiters(&mut self, disk: &impl LogReader) {
        if self.fetch_waiters.is_empty() {
            return;
        }
        let now = self.now.instant;
        let data_arrived = std::mem::take(&mut self.high_watermark_moved);
        let waiters = std::mem::take(&mut self.fetch_waiters);
        for waiter in waiters {
            let expired = now >= waiter.deadline;
            if !expired && !data_arrived {
                self.fetch_waiters.push(waiter);
                continue;
            }
            let result = self.read_fetch(&waiter.fetch, disk);
            let enough = result.bytes >= waiter.fetch.min_bytes.max(0) as usize || result.errors;
            if enough || expired {
                self.reply(waiter.request, Reply::Fetch(result.reply));
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
pub(super) fn read_records(
    log: &PartitionLog,
    reader: &impl SegmentReader,
    offset: u64,
    limit: usize,
) -> Result<Bytes, ReadError> {
    let mut cursor = log.read(offset, limit.min(u32::MAX as usize) as u32)?;
    cursor.run(reader)?;
    let first = cursor.into_records();
    // The common case, decided by the first batch header: records to hand out.
    if first.is_empty() || crate::batch::holds_data_records(&first) || first.len() >= limit {
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
        cursor.run(reader)?;
        let records = cursor.into_records();
        let next = last_batch_end(&records);
        if records.is_empty() || records.len() > room || next <= at {
            break;
        }
        out.extend_from_slice(&records);
        if crate::batch::holds_data_records(&records) {
            break;
        }
        at = next;
    }
    Ok(out.freeze())
}

/// The batches of a read as clients see them: Raft's own entries left out, every other batch's
/// base offset its Kafka offset (outside the CRC, so the batch stays valid). Whole batches in,
/// whole batches out; the bytes are copied only when something changes.
pub(super) fn kafka_batches(log: &PartitionLog, raw: Bytes) -> Bytes {
    let mut out: Option<BytesMut> = None;
    let mut at = 0usize;
    while at < raw.len() {
        let Ok(header) = crate::batch::BatchHeader::parse(&raw[at..]) else {
            break;
        };
        let end = (at + header.total_bytes()).min(raw.len());
        let batch = &raw[at..end];
        let internal = header.is_control() && crate::batch::is_raft_internal_batch(batch);
        let kafka = log.kafka_offset(header.base_offset as u64) as i64;
        if internal || kafka != header.base_offset {
            let out = out.get_or_insert_with(|| BytesMut::from(&raw[..at]));
            if !internal {
                let from = out.len();
                out.extend_from_slice(batch);
                crate::batch::set_base_offset(&mut out[from..], kafka);
            }
        } else if let Some(out) = out.as_mut() {
            out.extend_from_slice(batch);
        }
        at = end;
    }
    match out {
        Some(out) => out.freeze(),
        None => raw,
    }
}

/// The offset after the last whole batch of `buf`.
fn last_batch_end(mut buf: &[u8]) -> u64 {
    let mut end = 0;
    while let Ok(header) = crate::batch::BatchHeader::parse(buf) {
        end = header.next_offset() as u64;
        match buf.get(header.total_bytes()..) {
            Some(rest) => buf = rest,
            None => break,
        }
    }
    end
}
