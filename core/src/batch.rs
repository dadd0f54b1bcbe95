//! Kafka record batches (magic v2): parsing, validation and the few in-place edits the log makes.
//!
//! Layout of a batch (all integers big-endian); the CRC-32C covers `attributes` to the end:
//!
//! ```text
//!  0 baseOffset i64 | 8 batchLength i32 | 12 partitionLeaderEpoch i32 | 16 magic i8 | 17 crc u32
//! 21 attributes i16 | 23 lastOffsetDelta i32 | 27 baseTimestamp i64 | 35 maxTimestamp i64
//! 43 producerId i64 | 51 producerEpoch i16 | 53 baseSequence i32 | 57 recordCount i32 | 61 records
//! ```
//!
//! Nothing here panics on any input: bytes come from clients and from disk.

use bytes::BytesMut;

use crate::limits::{BATCH_HEADER_BYTES, BATCH_LOG_OVERHEAD_BYTES};

pub mod compression;
pub use compression::{
    recompression, BatchCodec, Codec, CompressionLevels, CompressionType, NoCodecs, Recompression,
};

const OFFSET_BATCH_LENGTH: usize = 8;
const OFFSET_LEADER_EPOCH: usize = 12;
const OFFSET_MAGIC: usize = 16;
const OFFSET_CRC: usize = 17;
const OFFSET_ATTRIBUTES: usize = 21;
const OFFSET_MAX_TIMESTAMP: usize = 35;

/// Compression codec bits of `attributes`.
const ATTR_COMPRESSION_MASK: i16 = 0x07;
/// Set: every record's timestamp is the batch's `maxTimestamp`, the broker's append time.
const ATTR_LOG_APPEND_TIME: i16 = 0x08;
const ATTR_TRANSACTIONAL: i16 = 0x10;
const ATTR_CONTROL: i16 = 0x20;

/// `producerId` of a batch from a producer without idempotence.
pub const NO_PRODUCER_ID: i64 = -1;
/// `baseSequence` of a batch from a producer without idempotence.
pub const NO_SEQUENCE: i32 = -1;
/// Kafka's timestamp of a record (or batch) without one.
pub const NO_TIMESTAMP: i64 = -1;
/// Highest compression codec id Kafka knows (zstd).
const COMPRESSION_MAX: u8 = 4;

/// The fixed-size header of a v2 record batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    /// Bytes after the `batchLength` field; the whole batch is `12 + batch_length` bytes.
    pub batch_length: i32,
    pub partition_leader_epoch: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub record_count: i32,
}

/// Why a batch was rejected. Maps onto Kafka error codes in [`BatchError::error_code`]; the
/// `Display` text is the reason the broker logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BatchError {
    /// Fewer bytes than the header or than `batchLength` says.
    Truncated { have: usize, need: usize },
    /// `batchLength` is too small to hold a header, or negative.
    BadLength(i32),
    /// Only magic 2 (Kafka 0.11+) batches are supported.
    UnsupportedMagic(i8),
    /// The stored CRC-32C does not match the bytes.
    BadCrc { stored: u32, computed: u32 },
    /// `recordCount`, `lastOffsetDelta` and the records themselves disagree, or a record does
    /// not parse.
    BadRecords(&'static str),
    /// The batch is larger than `max.message.bytes`.
    TooLarge { bytes: usize, max: u32 },
    /// The request carried no batch at all.
    Empty,
    /// More than one batch for one partition (Kafka accepts exactly one with magic v2).
    MultipleBatches(usize),
    /// Bytes after the batch that are not a whole batch.
    TrailingBytes(usize),
    /// A producer's batch must start at offset 0 (the broker assigns offsets).
    BaseOffsetNotZero(i64),
    /// `lastOffsetDelta + 1` and `recordCount` disagree, or either is not positive.
    CountMismatch {
        record_count: i32,
        last_offset_delta: i32,
    },
    /// Producers may not write control batches.
    ControlBatch,
    /// A producer id without a base sequence.
    SequenceMissing {
        producer_id: i64,
        base_sequence: i32,
    },
    /// Compression codec bits 5..=7 name no codec.
    UnknownCompression(u8),
    /// A record timestamp outside `[now - message.timestamp.before.max.ms, now +
    /// message.timestamp.after.max.ms]` on a `CreateTime` topic.
    TimestampOutOfRange { timestamp: i64, min: i64, max: i64 },
    /// The producer set the `LogAppendTime` timestamp type (only the broker may).
    LogAppendTimeFromProducer,
    /// A record without a key sent to a compacted topic (Kafka refuses it too: compaction
    /// keeps the latest record per key, so a keyless record has no meaning there).
    KeylessRecordInCompactedTopic,
    /// A compressed batch the leader must rewrite (`compression.type`) whose records do not
    /// decompress with its codec.
    Undecompressable { codec: &'static str, reason: String },
    /// The leader could not compress a batch it rewrites (the broker's failure, not the
    /// producer's).
    Uncompressable { codec: &'static str, reason: String },
}

impl BatchError {
    /// Kafka's code for this refusal of a producer's batch (what `KafkaApis`,
    /// `UnifiedLog.analyzeAndValidateRecords` and `LogValidator` answer; see the audit table in
    /// docs/architecture.md).
    pub fn error_code(&self) -> crate::ErrorCode {
        use crate::ErrorCode;
        match self {
            BatchError::BadLength(_)
            | BatchError::BadCrc { .. }
            | BatchError::TrailingBytes(_)
            | BatchError::UnknownCompression(_)
            | BatchError::Undecompressable { .. } => ErrorCode::CorruptMessage,
            BatchError::Uncompressable { .. } => ErrorCode::UnknownServerError,
            // Kafka sees no batch in a buffer cut short and says "at least one record batch".
            BatchError::Truncated { .. }
            | BatchError::Empty
            | BatchError::BadRecords(_)
            | BatchError::MultipleBatches(_)
            | BatchError::BaseOffsetNotZero(_)
            | BatchError::CountMismatch { .. }
            | BatchError::ControlBatch
            | BatchError::SequenceMissing { .. }
            | BatchError::KeylessRecordInCompactedTopic => ErrorCode::InvalidRecord,
            // Produce v3+ (all Sluice serves) must carry magic 2; Kafka's iterator calls any
            // other magic corrupt.
            BatchError::UnsupportedMagic(0 | 1) => ErrorCode::InvalidRecord,
            BatchError::UnsupportedMagic(_) => ErrorCode::CorruptMessage,
            BatchError::TooLarge { .. } => ErrorCode::MessageTooLarge,
            BatchError::TimestampOutOfRange { .. } | BatchError::LogAppendTimeFromProducer => {
                ErrorCode::InvalidTimestamp
            }
        }
    }
}

impl std::fmt::Display for BatchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BatchError::Truncated { have, need } => {
                write!(f, "record batch truncated: {have} bytes, need {need}")
            }
            BatchError::BadLength(n) => write!(f, "record batch length {n} is invalid"),
            BatchError::UnsupportedMagic(m) => {
                write!(f, "record batch magic {m} is not supported (only v2)")
            }
            BatchError::BadCrc { stored, computed } => write!(
                f,
                "record batch CRC mismatch: stored {stored:#010x}, computed {computed:#010x}"
            ),
            BatchError::BadRecords(why) => write!(f, "record batch records invalid: {why}"),
            BatchError::TooLarge { bytes, max } => {
                write!(
                    f,
                    "record batch of {bytes} bytes exceeds max.message.bytes {max}"
                )
            }
            BatchError::Empty => write!(f, "no record batch in request"),
            BatchError::KeylessRecordInCompactedTopic => {
                write!(f, "compacted topic cannot accept a record without a key")
            }
            BatchError::MultipleBatches(n) => {
                write!(
                    f,
                    "{n} record batches for one partition; exactly one is accepted"
                )
            }
            BatchError::TrailingBytes(n) => {
                write!(f, "{n} bytes after the record batch are not a whole batch")
            }
            BatchError::BaseOffsetNotZero(o) => {
                write!(f, "a produced batch must have base offset 0, not {o}")
            }
            BatchError::CountMismatch {
                record_count,
                last_offset_delta,
            } => write!(
                f,
                "recordCount {record_count} does not match lastOffsetDelta {last_offset_delta} \
                 (or is not positive)"
            ),
            BatchError::ControlBatch => write!(f, "producers may not send control batches"),
            BatchError::SequenceMissing {
                producer_id,
                base_sequence,
            } => write!(
                f,
                "producer id {producer_id} with invalid base sequence {base_sequence}"
            ),
            BatchError::UnknownCompression(c) => write!(f, "unknown compression codec {c}"),
            BatchError::Undecompressable { codec, reason } => write!(
                f,
                "the records do not decompress with {codec} ({reason}); the topic's \
                 compression.type needs them rewritten"
            ),
            BatchError::Uncompressable { codec, reason } => {
                write!(
                    f,
                    "the broker could not compress the batch with {codec}: {reason}"
                )
            }
            BatchError::TimestampOutOfRange { timestamp, max, .. } if timestamp > max => write!(
                f,
                "record timestamp {timestamp} is later than {max}, the latest \
                 message.timestamp.after.max.ms allows"
            ),
            BatchError::TimestampOutOfRange { timestamp, min, .. } => write!(
                f,
                "record timestamp {timestamp} is earlier than {min}, the earliest \
                 message.timestamp.before.max.ms allows"
            ),
            BatchError::LogAppendTimeFromProducer => write!(
                f,
                "the producer set timestamp type LogAppendTime, which only the broker may"
            ),
        }
    }
}

impl std::error::Error for BatchError {}

fn i16_at(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}
fn i32_at(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn i64_at(b: &[u8], at: usize) -> i64 {
    i64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

impl BatchHeader {
    /// Parses the header at the start of `buf`. Checks only what the header alone can tell:
    /// length sanity and magic. The CRC needs the whole batch ([`check_crc`]).
    pub fn parse(buf: &[u8]) -> Result<BatchHeader, BatchError> {
        // Magic first, as Kafka's batch iterator reads it: a v0/v1 message set is shorter than a
        // v2 header and must be told apart from a cut v2 batch.
        if let Some(&magic) = buf.get(OFFSET_MAGIC) {
            if magic as i8 != 2 {
                return Err(BatchError::UnsupportedMagic(magic as i8));
            }
        }
        if buf.len() < BATCH_HEADER_BYTES {
            return Err(BatchError::Truncated {
                have: buf.len(),
                need: BATCH_HEADER_BYTES,
            });
        }
        let batch_length = i32_at(buf, OFFSET_BATCH_LENGTH);
        if batch_length < (BATCH_HEADER_BYTES - BATCH_LOG_OVERHEAD_BYTES) as i32 {
            return Err(BatchError::BadLength(batch_length));
        }
        let magic = buf[OFFSET_MAGIC] as i8;
        if magic != 2 {
            return Err(BatchError::UnsupportedMagic(magic));
        }
        let header = BatchHeader {
            base_offset: i64_at(buf, 0),
            batch_length,
            partition_leader_epoch: i32_at(buf, OFFSET_LEADER_EPOCH),
            magic,
            crc: u32::from_be_bytes(buf[OFFSET_CRC..OFFSET_CRC + 4].try_into().expect("4 bytes")),
            attributes: i16_at(buf, OFFSET_ATTRIBUTES),
            last_offset_delta: i32_at(buf, 23),
            base_timestamp: i64_at(buf, 27),
            max_timestamp: i64_at(buf, 35),
            producer_id: i64_at(buf, 43),
            producer_epoch: i16_at(buf, 51),
            base_sequence: i32_at(buf, 53),
            record_count: i32_at(buf, 57),
        };
        Ok(header)
    }

    /// Total size of the batch on disk and on the wire.
    pub fn total_bytes(&self) -> usize {
        BATCH_LOG_OVERHEAD_BYTES + self.batch_length as usize
    }

    /// Offset of the last record in the batch.
    pub fn last_offset(&self) -> i64 {
        self.base_offset + i64::from(self.last_offset_delta)
    }

    /// The offset after this batch.
    pub fn next_offset(&self) -> i64 {
        self.last_offset() + 1
    }

    pub fn compression(&self) -> u8 {
        (self.attributes & ATTR_COMPRESSION_MASK) as u8
    }

    pub fn is_transactional(&self) -> bool {
        self.attributes & ATTR_TRANSACTIONAL != 0
    }

    pub fn is_control(&self) -> bool {
        self.attributes & ATTR_CONTROL != 0
    }

    /// The broker stamped every record with its append time, kept in `maxTimestamp`.
    pub fn is_log_append_time(&self) -> bool {
        self.attributes & ATTR_LOG_APPEND_TIME != 0
    }

    /// The timestamp of a record with this `timestampDelta`: the append time for a
    /// `LogAppendTime` batch, else `baseTimestamp + delta` (Kafka's `DefaultRecord`).
    pub fn record_timestamp(&self, timestamp_delta: i64) -> i64 {
        if self.is_log_append_time() {
            self.max_timestamp
        } else {
            self.base_timestamp.saturating_add(timestamp_delta)
        }
    }

    /// True when the producer asked for idempotent delivery of this batch.
    pub fn is_idempotent(&self) -> bool {
        self.producer_id >= 0 && self.base_sequence >= 0
    }

    /// Sequence number of the last record of the batch (sequences wrap at `i32::MAX`).
    pub fn last_sequence(&self) -> i32 {
        wrapping_sequence(self.base_sequence, self.last_offset_delta)
    }
}

/// Kafka's sequence arithmetic: sequences wrap from `i32::MAX` to 0.
pub fn wrapping_sequence(base: i32, delta: i32) -> i32 {
    let sum = i64::from(base) + i64::from(delta);
    (sum % (i64::from(i32::MAX) + 1)) as i32
}

/// Checks the CRC-32C of one whole batch (`batch.len()` must be the batch's total size).
pub fn check_crc(batch: &[u8], header: &BatchHeader) -> Result<(), BatchError> {
    debug_assert_eq!(batch.len(), header.total_bytes());
    let computed = crc32c::crc32c(&batch[OFFSET_ATTRIBUTES..]);
    if computed == header.crc {
        Ok(())
    } else {
        Err(BatchError::BadCrc {
            stored: header.crc,
            computed,
        })
    }
}

/// Overwrites the base offset of a batch. The CRC does not cover it, so the batch stays valid.
pub fn set_base_offset(batch: &mut [u8], base_offset: i64) {
    batch[0..8].copy_from_slice(&base_offset.to_be_bytes());
}

/// Overwrites the partition leader epoch of a batch (not covered by the CRC either).
pub fn set_partition_leader_epoch(batch: &mut [u8], epoch: i32) {
    batch[OFFSET_LEADER_EPOCH..OFFSET_LEADER_EPOCH + 4].copy_from_slice(&epoch.to_be_bytes());
}

/// Stamps a batch with the offset and epoch (Raft term) the log gives it. Neither field is
/// covered by the CRC (it starts at `attributes`), so the batch stays valid; the leader calls this
/// before proposing a producer's batch, and a follower stores the stamped bytes as they are.
pub fn stamp(batch: &mut [u8], base_offset: i64, partition_leader_epoch: i32) {
    set_base_offset(batch, base_offset);
    set_partition_leader_epoch(batch, partition_leader_epoch);
}

/// Control record type (Sluice-private, above Kafka's own 0..=6) of the batch that opens a
/// leader epoch: Raft's term-start entry. Its value is version i16 0 and the epoch i32.
pub const CONTROL_TYPE_LEADER_EPOCH_START: i16 = 100;
/// Control record type of a Raft membership entry; its value is the opaque payload.
pub const CONTROL_TYPE_MEMBERSHIP: i16 = 101;
/// Control record type of the entry a leader appends for DeleteRecords: once committed it raises
/// the partition's log start (Kafka's low watermark) to the Kafka offset its value names.
/// Value: version i16 0, then the Kafka offset i64.
pub const CONTROL_TYPE_LOG_START: i16 = 102;

/// A control batch (attributes bit 5) of one record whose key is version 0 and `control_type`,
/// as Kafka's transaction markers are: it occupies one offset and consumers skip it. Producer id,
/// epoch and sequence are "none", so it never touches idempotent-producer state.
pub fn control_batch(
    base_offset: i64,
    partition_leader_epoch: i32,
    control_type: i16,
    value: &[u8],
    timestamp_ms: i64,
) -> Vec<u8> {
    let mut key = Vec::with_capacity(4);
    key.extend_from_slice(&0i16.to_be_bytes());
    key.extend_from_slice(&control_type.to_be_bytes());
    let mut b = BatchBuilder::new(timestamp_ms);
    b.base_offset = base_offset;
    b.partition_leader_epoch = partition_leader_epoch;
    b.control = true;
    b.push(&NewRecord {
        timestamp: timestamp_ms,
        key: Some(key),
        value: Some(value.to_vec()),
        headers: Vec::new(),
    });
    let out = b.build();
    debug_assert_eq!(control_type_of(&out), Some(control_type));
    out
}

/// Whether a control batch of `control_type` is one of Raft's own entries: it takes a log
/// offset but no Kafka offset ([`crate::log::OffsetTranslator`]). Kafka's own control batches
/// (transaction markers, types 0 and 1) take a Kafka offset and are not internal.
pub fn is_raft_internal(control_type: i16) -> bool {
    matches!(
        control_type,
        CONTROL_TYPE_LEADER_EPOCH_START | CONTROL_TYPE_MEMBERSHIP | CONTROL_TYPE_LOG_START
    )
}

/// Whether `batch` (one whole batch) is one of Raft's own entries.
pub fn is_raft_internal_batch(batch: &[u8]) -> bool {
    control_type_of(batch).is_some_and(is_raft_internal)
}

/// The control batch that opens `epoch` at `base_offset`, naming the Kafka offset there (the
/// count of Raft's own entries below it is `base_offset - kafka_offset`): value version 1,
/// i16 1, i32 epoch, i64 Kafka offset. A log rebuilt without its checkpoint, after retention
/// deleted its start, recovers its Kafka offsets from the first one it finds.
pub fn leader_epoch_start_batch_at(
    base_offset: i64,
    epoch: i32,
    kafka_offset: i64,
    timestamp_ms: i64,
) -> Vec<u8> {
    let mut value = Vec::with_capacity(14);
    value.extend_from_slice(&1i16.to_be_bytes());
    value.extend_from_slice(&epoch.to_be_bytes());
    value.extend_from_slice(&kafka_offset.to_be_bytes());
    control_batch(
        base_offset,
        epoch,
        CONTROL_TYPE_LEADER_EPOCH_START,
        &value,
        timestamp_ms,
    )
}

/// The Kafka offset a leader-epoch start batch (value version 1) names, if it is one.
pub fn leader_epoch_start_anchor(batch: &[u8]) -> Option<u64> {
    if control_type_of(batch)? != CONTROL_TYPE_LEADER_EPOCH_START {
        return None;
    }
    let value = control_value(batch)?;
    if value.len() != 14 || value[0..2] != 1i16.to_be_bytes() {
        return None;
    }
    u64::try_from(i64::from_be_bytes(value[6..14].try_into().ok()?)).ok()
}

/// The control batch that opens `epoch` (Raft's first entry of a term) at `base_offset`, with
/// no Kafka offset named (value version 0).
pub fn leader_epoch_start_batch(base_offset: i64, epoch: i32, timestamp_ms: i64) -> Vec<u8> {
    let mut value = Vec::with_capacity(6);
    value.extend_from_slice(&0i16.to_be_bytes());
    value.extend_from_slice(&epoch.to_be_bytes());
    control_batch(
        base_offset,
        epoch,
        CONTROL_TYPE_LEADER_EPOCH_START,
        &value,
        timestamp_ms,
    )
}

/// The control batch of a Raft membership entry carrying `payload`.
pub fn membership_batch(
    base_offset: i64,
    epoch: i32,
    payload: &[u8],
    timestamp_ms: i64,
) -> Vec<u8> {
    control_batch(
        base_offset,
        epoch,
        CONTROL_TYPE_MEMBERSHIP,
        payload,
        timestamp_ms,
    )
}

/// The control batch a leader appends for DeleteRecords: the log starts at Kafka offset
/// `kafka_offset` once it is committed (see [`CONTROL_TYPE_LOG_START`]).
pub fn log_start_batch(
    base_offset: i64,
    epoch: i32,
    kafka_offset: u64,
    timestamp_ms: i64,
) -> Vec<u8> {
    let mut value = Vec::with_capacity(10);
    value.extend_from_slice(&0i16.to_be_bytes());
    value.extend_from_slice(&(kafka_offset as i64).to_be_bytes());
    let out = control_batch(
        base_offset,
        epoch,
        CONTROL_TYPE_LOG_START,
        &value,
        timestamp_ms,
    );
    debug_assert_eq!(log_start_of(&out), Some(kafka_offset));
    out
}

/// The Kafka log start a DeleteRecords batch names: `None` unless `batch` is one, well formed
/// (one record, value version 0, a non-negative offset).
pub fn log_start_of(batch: &[u8]) -> Option<u64> {
    if control_type_of(batch)? != CONTROL_TYPE_LOG_START {
        return None;
    }
    let header = BatchHeader::parse(batch).ok()?;
    if header.record_count != 1 || header.last_offset_delta != 0 {
        return None;
    }
    let value = control_value(batch)?;
    if value.len() != 10 || value[0..2] != 0i16.to_be_bytes() {
        return None;
    }
    u64::try_from(i64::from_be_bytes(value[2..10].try_into().ok()?)).ok()
}

/// The control type of one whole batch: `None` unless it is an uncompressed control batch whose
/// first record has a well-formed control key (version i16, type i16).
pub fn control_type_of(batch: &[u8]) -> Option<i16> {
    let header = BatchHeader::parse(batch).ok()?;
    if !header.is_control() {
        return None;
    }
    let record = Records::new(batch).ok()?.next()?.ok()?;
    let key = record.key?;
    if key.len() < 4 {
        return None;
    }
    Some(i16::from_be_bytes([key[2], key[3]]))
}

/// The value of the first record of a control batch (the payload of a membership entry).
pub fn control_value(batch: &[u8]) -> Option<&[u8]> {
    control_type_of(batch)?;
    Records::new(batch).ok()?.next()?.ok()?.value
}

/// Splits `buf` into whole batches, checking each header and CRC. Returns the headers and the byte
/// range of each batch. Used on produce input, where the whole buffer must be valid.
pub fn split_batches(buf: &[u8]) -> Result<Vec<(BatchHeader, std::ops::Range<usize>)>, BatchError> {
    let mut batches = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        let header = BatchHeader::parse(&buf[at..])?;
        let end = at
            .checked_add(header.total_bytes())
            .filter(|end| *end <= buf.len())
            .ok_or(BatchError::Truncated {
                have: buf.len() - at,
                need: header.total_bytes(),
            })?;
        check_crc(&buf[at..end], &header)?;
        batches.push((header, at..end));
        at = end;
    }
    if batches.is_empty() {
        return Err(BatchError::Empty);
    }
    Ok(batches)
}

/// Kafka's `message.timestamp.type`: whose clock a record's timestamp is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TimestampType {
    /// The producer's (checked against `message.timestamp.before/after.max.ms`).
    #[default]
    CreateTime,
    /// The leader's when it appends the batch: the broker overwrites `maxTimestamp`.
    LogAppendTime,
}

/// How a topic takes a producer's batch: the inputs of Kafka's `LogValidator` and of
/// `UnifiedLog.analyzeAndValidateRecords`' size check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProduceRules {
    /// `max.message.bytes`: the largest batch, its log overhead included.
    pub message_bytes_max: u32,
    /// `cleanup.policy` includes `compact`: every record needs a key.
    pub keys_required: bool,
    /// `message.timestamp.type`.
    pub timestamp_type: TimestampType,
    /// `message.timestamp.before.max.ms`: how far in the past a `CreateTime` timestamp may be.
    pub timestamp_before_max_ms: i64,
    /// `message.timestamp.after.max.ms`: how far in the future a `CreateTime` timestamp may be.
    pub timestamp_after_max_ms: i64,
    /// `compression.type`: the codec batches are stored in (`producer`: as sent).
    pub compression_type: CompressionType,
    /// `compression.{gzip,lz4,zstd}.level`: what a rewrite compresses with.
    pub compression_levels: CompressionLevels,
}

impl ProduceRules {
    /// Only the checks every produced batch must pass whatever its topic: no key requirement,
    /// `CreateTime`, any timestamp, any size up to `message_bytes_max`.
    pub fn structural(message_bytes_max: u32) -> ProduceRules {
        ProduceRules {
            message_bytes_max,
            keys_required: false,
            timestamp_type: TimestampType::CreateTime,
            timestamp_before_max_ms: i64::MAX,
            timestamp_after_max_ms: i64::MAX,
            compression_type: CompressionType::Producer,
            compression_levels: CompressionLevels::default(),
        }
    }
}

/// What [`check_produce`] found: the batch's header and the `maxTimestamp` Kafka would store.
struct Verdict {
    header: BatchHeader,
    /// `maxTimestamp` as `LogValidator` sets it (`None`: keep the producer's).
    max_timestamp: Option<i64>,
}

/// Validates a producer's data for one partition as Kafka does for magic v2 (checks in Kafka's
/// order: `KafkaApis` / `ProduceRequest.validateRecords`, then
/// `UnifiedLog.analyzeAndValidateRecords`, then `LogValidator`), without repairing anything:
/// the structural checks of [`ProduceRules::structural`]. Returns the header as sent.
pub fn validate_produce(buf: &[u8], message_bytes_max: u32) -> Result<BatchHeader, BatchError> {
    check_produce(buf, &ProduceRules::structural(message_bytes_max), 0).map(|v| v.header)
}

/// Validates a producer's batch for a topic with `rules` at the leader's wall clock `now_ms` and
/// repairs it as Kafka's `LogValidator` does: a batch not in the topic's `compression.type` is
/// rebuilt in that codec through `codec` (its records read, checked and kept as they are); then
/// `maxTimestamp` is set from the records (or to `now_ms` on a `LogAppendTime` topic, which also
/// sets the timestamp-type bit) and the CRC is recomputed. Offsets and the leader epoch are
/// stamped later ([`stamp`]). The leader runs this once, before the batch enters Raft, so every
/// replica stores the same bytes. Returns the header of the batch as it now is.
pub fn accept_produce(
    buf: &mut BytesMut,
    rules: &ProduceRules,
    now_ms: i64,
    codec: &dyn BatchCodec,
) -> Result<BatchHeader, BatchError> {
    let header = check_batch(buf, rules)?;
    let verdict = match recompression(&header, rules.compression_type, &rules.compression_levels) {
        Recompression::Keep => check_records(buf, header, rules, now_ms)?,
        Recompression::Rewrite { to, level } => {
            // Kafka's validator reads every record of a batch it rebuilds: keys, timestamps and
            // the largest timestamp are checked as in an uncompressed batch.
            let records = compression::records_uncompressed(buf, &header, codec)?;
            let mut plain = header;
            plain.attributes &= !ATTR_COMPRESSION_MASK;
            let plain = encode_batch(&plain, &records, header.record_count);
            let mut verdict = check_records(&plain, BatchHeader::parse(&plain)?, rules, now_ms)?;
            let rebuilt = compression::rewrite(&header, &records, to, level, codec)?;
            // `UnifiedLog.append` checks the size again when validation changed it.
            if rebuilt.len() > rules.message_bytes_max as usize {
                return Err(BatchError::TooLarge {
                    bytes: rebuilt.len(),
                    max: rules.message_bytes_max,
                });
            }
            buf.clear();
            buf.extend_from_slice(&rebuilt);
            verdict.header = BatchHeader::parse(buf)?;
            assert_eq!(verdict.header.compression(), to.id());
            verdict
        }
    };
    let mut header = verdict.header;
    let (log_append_time, max_timestamp) = match rules.timestamp_type {
        TimestampType::LogAppendTime => (true, now_ms),
        TimestampType::CreateTime => (false, verdict.max_timestamp.unwrap_or(header.max_timestamp)),
    };
    if header.is_log_append_time() != log_append_time || header.max_timestamp != max_timestamp {
        header.attributes = if log_append_time {
            header.attributes | ATTR_LOG_APPEND_TIME
        } else {
            header.attributes & !ATTR_LOG_APPEND_TIME
        };
        header.max_timestamp = max_timestamp;
        let batch = &mut buf[..header.total_bytes()];
        batch[OFFSET_ATTRIBUTES..OFFSET_ATTRIBUTES + 2]
            .copy_from_slice(&header.attributes.to_be_bytes());
        batch[OFFSET_MAX_TIMESTAMP..OFFSET_MAX_TIMESTAMP + 8]
            .copy_from_slice(&max_timestamp.to_be_bytes());
        header.crc = crc32c::crc32c(&batch[OFFSET_ATTRIBUTES..]);
        batch[OFFSET_CRC..OFFSET_CRC + 4].copy_from_slice(&header.crc.to_be_bytes());
    }
    // Read back: what is stored is exactly what was decided, and it passes its CRC.
    debug_assert_eq!(BatchHeader::parse(buf), Ok(header));
    debug_assert_eq!(check_crc(buf, &header), Ok(()));
    assert_eq!(header.max_timestamp, max_timestamp);
    Ok(header)
}

fn check_produce(buf: &[u8], rules: &ProduceRules, now_ms: i64) -> Result<Verdict, BatchError> {
    let header = check_batch(buf, rules)?;
    check_records(buf, header, rules, now_ms)
}

/// The checks of the batch as a whole, in Kafka's order: `KafkaApis`, then
/// `UnifiedLog.analyzeAndValidateRecords`, then the header part of `LogValidator.validateBatch`.
fn check_batch(buf: &[u8], rules: &ProduceRules) -> Result<BatchHeader, BatchError> {
    // KafkaApis: exactly one batch, magic 2.
    if buf.is_empty() {
        return Err(BatchError::Empty);
    }
    let header = BatchHeader::parse(buf)?;
    let total = header.total_bytes();
    if buf.len() < total {
        return Err(BatchError::Truncated {
            have: buf.len(),
            need: total,
        });
    }
    if buf.len() > total {
        // Stricter than Kafka: its batch iterator stops at a cut batch and `UnifiedLog` drops
        // those bytes without a word. Acknowledging a request part of which was thrown away
        // hides a framing bug in the producer; no client sends one.
        return Err(match split_batches(&buf[total..]) {
            Ok(more) => BatchError::MultipleBatches(1 + more.len()),
            Err(_) => BatchError::TrailingBytes(buf.len() - total),
        });
    }
    // UnifiedLog.analyzeAndValidateRecords: base offset, size, CRC.
    if header.base_offset != 0 {
        return Err(BatchError::BaseOffsetNotZero(header.base_offset));
    }
    if total > rules.message_bytes_max as usize {
        return Err(BatchError::TooLarge {
            bytes: total,
            max: rules.message_bytes_max,
        });
    }
    check_crc(buf, &header)?;
    // LogValidator.validateBatch.
    if header.record_count <= 0 || header.last_offset_delta != header.record_count - 1 {
        return Err(BatchError::CountMismatch {
            record_count: header.record_count,
            last_offset_delta: header.last_offset_delta,
        });
    }
    if header.is_control() {
        return Err(BatchError::ControlBatch);
    }
    if header.producer_id >= 0 && header.base_sequence < 0 {
        return Err(BatchError::SequenceMissing {
            producer_id: header.producer_id,
            base_sequence: header.base_sequence,
        });
    }
    if header.compression() > COMPRESSION_MAX {
        return Err(BatchError::UnknownCompression(header.compression()));
    }
    // More lenient than Kafka, whose `UnifiedLog.append` refuses a batch larger than
    // `segment.bytes` (RECORD_LIST_TOO_LARGE): Sluice puts such a batch alone in a segment, and
    // allows segments far below Kafka 4's 1 MiB minimum (its own tests roll 1 KiB segments), where
    // that refusal would turn away ordinary batches.
    Ok(header)
}

/// `LogValidator`'s checks of the records (timestamps, keys) and the largest timestamp: every
/// record of an uncompressed batch; the header's `maxTimestamp` of a compressed one.
fn check_records(
    buf: &[u8],
    header: BatchHeader,
    rules: &ProduceRules,
    now_ms: i64,
) -> Result<Verdict, BatchError> {
    let min = now_ms.saturating_sub(rules.timestamp_before_max_ms);
    let max = now_ms.saturating_add(rules.timestamp_after_max_ms);
    // LogValidator.validateTimestamp, for one record's timestamp.
    let check_timestamp = |timestamp: i64| -> Result<(), BatchError> {
        match rules.timestamp_type {
            TimestampType::CreateTime if timestamp != NO_TIMESTAMP => {
                if (min..=max).contains(&timestamp) {
                    Ok(())
                } else {
                    Err(BatchError::TimestampOutOfRange {
                        timestamp,
                        min,
                        max,
                    })
                }
            }
            _ if header.is_log_append_time() => Err(BatchError::LogAppendTimeFromProducer),
            _ => Ok(()),
        }
    };
    if header.compression() != 0 {
        // Core carries no codecs: the records of a compressed batch cannot be read, so keys are
        // not checked and `maxTimestamp` is trusted. It bounds every record's timestamp from
        // above, so a `maxTimestamp` outside the window means a record Kafka would refuse (one
        // above it, or all below it); a single old record among newer ones cannot be seen.
        check_timestamp(header.max_timestamp)?;
        return Ok(Verdict {
            header,
            max_timestamp: None,
        });
    }
    // LogValidator.assignOffsetsNonCompressed: every record, keys and timestamps, and the
    // largest timestamp (from NO_TIMESTAMP, as Kafka starts it).
    let mut expected_delta = 0i64;
    let mut max_timestamp = NO_TIMESTAMP;
    // A timestamp refusal outranks a key refusal, as in Kafka's `processRecordErrors`.
    let mut key_error = None;
    for record in Records::new(buf)? {
        let record = record?;
        // Stricter than Kafka, which keeps an uncompressed batch's offset deltas as sent: a
        // consumer computes each record's offset from its delta, so a batch whose deltas are not
        // 0..n would read back at offsets the log never assigned (Kafka rewrites them only in
        // compressed batches, by re-encoding). No client sends one.
        if record.offset_delta != expected_delta {
            return Err(BatchError::BadRecords("record offset deltas are not 0..n"));
        }
        if rules.keys_required && record.key.is_none() && key_error.is_none() {
            key_error = Some(BatchError::KeylessRecordInCompactedTopic);
        }
        let timestamp = header.record_timestamp(record.timestamp_delta);
        check_timestamp(timestamp)?;
        max_timestamp = max_timestamp.max(timestamp);
        expected_delta += 1;
    }
    if expected_delta != i64::from(header.record_count) {
        return Err(BatchError::BadRecords(
            "recordCount does not match the records",
        ));
    }
    if let Some(e) = key_error {
        return Err(e);
    }
    Ok(Verdict {
        header,
        max_timestamp: Some(max_timestamp),
    })
}

/// One record of an uncompressed batch, borrowed from the batch bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    pub timestamp_delta: i64,
    pub offset_delta: i64,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub headers: Vec<(&'a [u8], Option<&'a [u8]>)>,
    /// The whole record as stored, length prefix included: what the cleaner copies unchanged.
    pub raw: &'a [u8],
}

/// Iterator over the records of one uncompressed batch. Yields an error (and then stops) on the
/// first malformed record.
pub struct Records<'a> {
    buf: &'a [u8],
    at: usize,
    left: i32,
    failed: bool,
}

impl<'a> Records<'a> {
    /// `batch` must be one whole batch; compressed batches are refused.
    pub fn new(batch: &'a [u8]) -> Result<Records<'a>, BatchError> {
        let header = BatchHeader::parse(batch)?;
        if header.compression() != 0 {
            return Err(BatchError::BadRecords("compressed batch"));
        }
        if batch.len() != header.total_bytes() {
            return Err(BatchError::Truncated {
                have: batch.len(),
                need: header.total_bytes(),
            });
        }
        if header.record_count < 0 {
            return Err(BatchError::BadRecords("negative record count"));
        }
        Ok(Records {
            buf: batch,
            at: BATCH_HEADER_BYTES,
            left: header.record_count,
            failed: false,
        })
    }

    fn record(&mut self) -> Result<Record<'a>, BatchError> {
        let start = self.at;
        let length = self.varint()?;
        let length =
            usize::try_from(length).map_err(|_| BatchError::BadRecords("negative length"))?;
        let end = self
            .at
            .checked_add(length)
            .filter(|end| *end <= self.buf.len())
            .ok_or(BatchError::BadRecords("record overruns the batch"))?;
        let _attributes = self.bytes(1)?;
        let timestamp_delta = self.varint()?;
        let offset_delta = self.varint()?;
        let key = self.nullable_bytes()?;
        let value = self.nullable_bytes()?;
        let header_count = self.varint()?;
        if header_count < 0 || header_count > length as i64 {
            return Err(BatchError::BadRecords("invalid header count"));
        }
        let mut headers = Vec::with_capacity(header_count as usize);
        for _ in 0..header_count {
            let key = self
                .nullable_bytes()?
                .ok_or(BatchError::BadRecords("null header key"))?;
            let value = self.nullable_bytes()?;
            headers.push((key, value));
        }
        if self.at != end {
            return Err(BatchError::BadRecords(
                "record length does not match its fields",
            ));
        }
        Ok(Record {
            timestamp_delta,
            offset_delta,
            key,
            value,
            headers,
            raw: &self.buf[start..end],
        })
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8], BatchError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|end| *end <= self.buf.len())
            .ok_or(BatchError::BadRecords("field overruns the batch"))?;
        let out = &self.buf[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn nullable_bytes(&mut self) -> Result<Option<&'a [u8]>, BatchError> {
        let len = self.varint()?;
        if len < 0 {
            return Ok(None);
        }
        let len = usize::try_from(len).map_err(|_| BatchError::BadRecords("length too large"))?;
        self.bytes(len).map(Some)
    }

    /// Zig-zag varint (Kafka's `varint`/`varlong`), at most 10 bytes.
    fn varint(&mut self) -> Result<i64, BatchError> {
        let mut raw: u64 = 0;
        for i in 0..10 {
            let byte = *self
                .buf
                .get(self.at)
                .ok_or(BatchError::BadRecords("varint overruns"))?;
            self.at += 1;
            raw |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok((raw >> 1) as i64 ^ -((raw & 1) as i64));
            }
        }
        Err(BatchError::BadRecords("varint longer than 10 bytes"))
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<Record<'a>, BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        if self.left == 0 {
            if self.at != self.buf.len() {
                self.failed = true;
                return Some(Err(BatchError::BadRecords("bytes after the last record")));
            }
            return None;
        }
        self.left -= 1;
        let record = self.record();
        self.failed = record.is_err();
        Some(record)
    }
}

/// Whether a run of whole batches holds at least one record a consumer will see (not only empty
/// batches left by compaction, or control batches). Stops at the first batch that does not parse.
pub fn holds_data_records(mut buf: &[u8]) -> bool {
    while let Ok(header) = BatchHeader::parse(buf) {
        if header.record_count > 0 && !header.is_control() {
            return true;
        }
        let Some(rest) = buf.get(header.total_bytes()..) else {
            return false;
        };
        buf = rest;
    }
    false
}

/// Encodes a batch with `header`'s fields (its own `batchLength`, `crc` and `recordCount` are
/// ignored) around `records`, `record_count` whole records as stored (each with its length
/// prefix), and computes the CRC. The log cleaner uses it to write a batch that lost records to
/// compaction (same base offset, last offset delta, epoch and producer fields) and the empty
/// batches that stand for removed ones.
pub fn encode_batch(header: &BatchHeader, records: &[u8], record_count: i32) -> Vec<u8> {
    let mut out = Vec::with_capacity(BATCH_HEADER_BYTES + records.len());
    out.extend_from_slice(&header.base_offset.to_be_bytes());
    let batch_length = (BATCH_HEADER_BYTES - BATCH_LOG_OVERHEAD_BYTES + records.len()) as i32;
    out.extend_from_slice(&batch_length.to_be_bytes());
    out.extend_from_slice(&header.partition_leader_epoch.to_be_bytes());
    out.push(2);
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&header.attributes.to_be_bytes());
    out.extend_from_slice(&header.last_offset_delta.to_be_bytes());
    out.extend_from_slice(&header.base_timestamp.to_be_bytes());
    out.extend_from_slice(&header.max_timestamp.to_be_bytes());
    out.extend_from_slice(&header.producer_id.to_be_bytes());
    out.extend_from_slice(&header.producer_epoch.to_be_bytes());
    out.extend_from_slice(&header.base_sequence.to_be_bytes());
    out.extend_from_slice(&record_count.to_be_bytes());
    out.extend_from_slice(records);
    let crc = crc32c::crc32c(&out[OFFSET_ATTRIBUTES..]);
    out[OFFSET_CRC..OFFSET_CRC + 4].copy_from_slice(&crc.to_be_bytes());
    out
}

/// Builds uncompressed v2 batches. Used by tests, benchmarks and the simulator's client; the broker
/// itself never re-encodes a producer's batch.
#[derive(Clone, Debug, Default)]
pub struct BatchBuilder {
    pub base_offset: i64,
    pub partition_leader_epoch: i32,
    pub base_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    /// Sets the control bit of `attributes` (see [`control_batch`]).
    pub control: bool,
    records: Vec<u8>,
    count: i32,
    max_timestamp: i64,
}

/// One record to put in a batch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NewRecord {
    pub timestamp: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

fn put_varint(out: &mut Vec<u8>, v: i64) {
    let mut raw = ((v << 1) ^ (v >> 63)) as u64;
    loop {
        if raw < 0x80 {
            out.push(raw as u8);
            return;
        }
        out.push((raw as u8 & 0x7f) | 0x80);
        raw >>= 7;
    }
}

fn put_nullable(out: &mut Vec<u8>, bytes: &Option<Vec<u8>>) {
    match bytes {
        None => put_varint(out, -1),
        Some(b) => {
            put_varint(out, b.len() as i64);
            out.extend_from_slice(b);
        }
    }
}

impl BatchBuilder {
    /// A builder for a non-idempotent producer's batch whose first record has `base_timestamp`.
    pub fn new(base_timestamp: i64) -> BatchBuilder {
        BatchBuilder {
            base_timestamp,
            max_timestamp: base_timestamp,
            producer_id: NO_PRODUCER_ID,
            producer_epoch: -1,
            base_sequence: NO_SEQUENCE,
            ..BatchBuilder::default()
        }
    }

    pub fn idempotent(mut self, producer_id: i64, producer_epoch: i16, base_sequence: i32) -> Self {
        self.producer_id = producer_id;
        self.producer_epoch = producer_epoch;
        self.base_sequence = base_sequence;
        self
    }

    pub fn push(&mut self, record: &NewRecord) -> &mut Self {
        let mut body = Vec::with_capacity(16);
        body.push(0); // Record attributes: unused in v2.
        put_varint(&mut body, record.timestamp - self.base_timestamp);
        put_varint(&mut body, i64::from(self.count));
        put_nullable(&mut body, &record.key);
        put_nullable(&mut body, &record.value);
        put_varint(&mut body, record.headers.len() as i64);
        for (key, value) in &record.headers {
            put_nullable(&mut body, &Some(key.clone()));
            put_nullable(&mut body, value);
        }
        put_varint(&mut self.records, body.len() as i64);
        self.records.extend_from_slice(&body);
        self.count += 1;
        self.max_timestamp = self.max_timestamp.max(record.timestamp);
        self
    }

    pub fn len(&self) -> i32 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Encodes the batch, CRC included.
    pub fn build(&self) -> Vec<u8> {
        let header = BatchHeader {
            base_offset: self.base_offset,
            batch_length: 0,
            partition_leader_epoch: self.partition_leader_epoch,
            magic: 2,
            crc: 0,
            attributes: if self.control { ATTR_CONTROL } else { 0 },
            last_offset_delta: (self.count - 1).max(0),
            base_timestamp: self.base_timestamp,
            max_timestamp: self.max_timestamp,
            producer_id: self.producer_id,
            producer_epoch: self.producer_epoch,
            base_sequence: self.base_sequence,
            record_count: self.count,
        };
        encode_batch(&header, &self.records, self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(i: u8) -> NewRecord {
        NewRecord {
            timestamp: 1_000 + i64::from(i),
            key: Some(vec![b'k', i]),
            value: if i.is_multiple_of(3) {
                None
            } else {
                Some(vec![i; i as usize])
            },
            headers: vec![(b"h".to_vec(), Some(vec![i])), (b"n".to_vec(), None)],
        }
    }

    fn batch(n: u8) -> Vec<u8> {
        let mut b = BatchBuilder::new(1_000);
        for i in 0..n {
            b.push(&record(i));
        }
        b.build()
    }

    #[test]
    fn built_batch_round_trips_through_the_parser() {
        let bytes = batch(5);
        let header = validate_produce(&bytes, 1 << 20).unwrap();
        assert_eq!(header.total_bytes(), bytes.len());
        assert_eq!(header.record_count, 5);
        assert_eq!(header.last_offset_delta, 4);
        assert_eq!(header.max_timestamp, 1_004);
        let records: Vec<_> = Records::new(&bytes).unwrap().map(Result::unwrap).collect();
        assert_eq!(records.len(), 5);
        for (i, r) in records.iter().enumerate() {
            let expected = record(i as u8);
            assert_eq!(r.offset_delta, i as i64);
            assert_eq!(r.key, expected.key.as_deref());
            assert_eq!(r.value, expected.value.as_deref());
            assert_eq!(r.headers.len(), 2);
            assert_eq!(r.headers[1], (&b"n"[..], None));
        }
    }

    #[test]
    fn every_single_bit_flip_is_rejected() {
        let bytes = batch(3);
        for bit in 0..bytes.len() * 8 {
            let mut bad = bytes.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            let at = bit / 8;
            // The base offset and leader epoch are outside the CRC by design.
            if at < 8 || (12..16).contains(&at) {
                continue;
            }
            assert!(
                validate_produce(&bad, 1 << 20).is_err(),
                "bit {bit} flip accepted"
            );
        }
    }

    #[test]
    fn size_limit_counts_the_whole_batch() {
        let bytes = batch(4);
        let err = validate_produce(&bytes, bytes.len() as u32 - 1).unwrap_err();
        assert_eq!(
            err,
            BatchError::TooLarge {
                bytes: bytes.len(),
                max: bytes.len() as u32 - 1
            }
        );
        assert_eq!(err.error_code(), crate::ErrorCode::MessageTooLarge);
        assert!(validate_produce(&bytes, bytes.len() as u32).is_ok());
    }

    #[test]
    fn a_short_or_empty_buffer_holds_no_batch_as_kafka_sees_it() {
        // Kafka's batch iterator yields nothing for a batch cut short, and KafkaApis answers
        // "at least one record batch" with INVALID_RECORD.
        let bytes = batch(2);
        assert_eq!(validate_produce(&[], 1 << 20), Err(BatchError::Empty));
        for len in 1..bytes.len() {
            let err = validate_produce(&bytes[..len], 1 << 20).unwrap_err();
            assert_eq!(
                err.error_code(),
                crate::ErrorCode::InvalidRecord,
                "len {len}: {err}"
            );
        }
    }

    #[test]
    fn rewriting_base_offset_keeps_the_crc_valid() {
        let mut bytes = batch(2);
        set_base_offset(&mut bytes, 77);
        set_partition_leader_epoch(&mut bytes, 9);
        let (header, _) = split_batches(&bytes).unwrap()[0];
        assert_eq!((header.base_offset, header.partition_leader_epoch), (77, 9));
        assert_eq!(header.last_offset(), 78);
    }

    #[test]
    fn control_batches_parse_with_the_ordinary_parser_and_are_recognised() {
        let start = leader_epoch_start_batch(41, 7, 1_000);
        let (header, range) = split_batches(&start).unwrap()[0].clone();
        assert_eq!(range, 0..start.len());
        assert!(header.is_control() && !header.is_idempotent());
        assert_eq!((header.base_offset, header.partition_leader_epoch), (41, 7));
        assert_eq!((header.record_count, header.last_offset_delta), (1, 0));
        assert_eq!(
            control_type_of(&start),
            Some(CONTROL_TYPE_LEADER_EPOCH_START)
        );
        assert_eq!(control_value(&start), Some(&[0, 0, 0, 0, 0, 7][..]));
        let members = membership_batch(42, 7, b"voters 1 2 3", 1_001);
        assert_eq!(control_type_of(&members), Some(CONTROL_TYPE_MEMBERSHIP));
        assert_eq!(control_value(&members), Some(&b"voters 1 2 3"[..]));
        // A producer may not send one, and an ordinary batch is not one.
        assert!(validate_produce(&members, 1 << 20).is_err());
        assert_eq!(control_type_of(&batch(2)), None);
    }

    #[test]
    fn stamping_sets_offset_and_epoch_outside_the_crc() {
        let mut bytes = batch(3);
        stamp(&mut bytes, 1_000, 12);
        let (header, _) = split_batches(&bytes).unwrap()[0];
        assert_eq!(
            (header.base_offset, header.partition_leader_epoch),
            (1_000, 12)
        );
    }

    #[test]
    fn sequences_wrap_like_kafka() {
        assert_eq!(wrapping_sequence(i32::MAX, 1), 0);
        assert_eq!(wrapping_sequence(5, 4), 9);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::arbitrary::any::<u8>(), 0..512)) {
            let _ = validate_produce(&bytes, 1 << 20);
            if let Ok(records) = Records::new(&bytes) {
                for r in records.take(1000) { let _ = r; }
            }
        }

        #[test]
        fn mutated_valid_batches_never_panic(
            n in 1u8..6,
            edits in proptest::collection::vec((0usize..4096, proptest::arbitrary::any::<u8>()), 1..8),
        ) {
            let mut bytes = batch(n);
            for (at, b) in edits {
                let at = at % bytes.len();
                bytes[at] = b;
            }
            // Fix the CRC so the record walker, not just the CRC, sees the damage.
            let crc = crc32c::crc32c(&bytes[OFFSET_ATTRIBUTES..]);
            bytes[OFFSET_CRC..OFFSET_CRC + 4].copy_from_slice(&crc.to_be_bytes());
            let _ = validate_produce(&bytes, 1 << 20);
        }
    }
}

/// Kafka's produce rules, one test per check (refusal codes and repairs).
#[cfg(test)]
mod produce_tests;
