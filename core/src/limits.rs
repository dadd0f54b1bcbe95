//! Named limits and defaults, checked against each other at compile time.
//!
//! Kafka's own defaults are used wherever Kafka has one, so a client tuned for Kafka behaves the
//! same here.

/// Size of the v2 record batch header, including the 12 bytes of base offset and batch length.
pub const BATCH_HEADER_BYTES: usize = 61;
/// The base offset and batch length fields that precede every batch ("log overhead" in Kafka).
pub const BATCH_LOG_OVERHEAD_BYTES: usize = 12;

/// `max.message.bytes`: the largest record batch a topic accepts (Kafka: 1 MiB + 12 bytes).
pub const MESSAGE_BYTES_MAX_DEFAULT: u32 = 1024 * 1024 + BATCH_LOG_OVERHEAD_BYTES as u32;
/// `message.timestamp.before.max.ms`: how far in the past a `CreateTime` record timestamp may
/// be (Kafka 4: unbounded).
pub const TIMESTAMP_BEFORE_MAX_MS_DEFAULT: i64 = i64::MAX;
/// `message.timestamp.after.max.ms`: how far in the future a `CreateTime` record timestamp may
/// be (Kafka 4: one hour; `ServerLogConfigs.LOG_MESSAGE_TIMESTAMP_AFTER_MAX_MS_DEFAULT`).
pub const TIMESTAMP_AFTER_MAX_MS_DEFAULT: i64 = 60 * 60 * 1000;
/// The most bytes a compressed batch's records may decompress to when the leader rewrites it
/// into the topic's `compression.type` (Kafka sets no bound). A producer's batch is at most
/// `max.message.bytes`, but a codec can expand a few KiB into gigabytes; 256 MiB is a ratio of
/// 256 for a default-sized batch, far beyond what real records compress by.
pub const RECORDS_DECOMPRESSED_BYTES_MAX: usize = 256 * 1024 * 1024;
/// `segment.bytes`: a segment rolls when an append would take it past this size (Kafka: 1 GiB).
pub const SEGMENT_BYTES_MAX_DEFAULT: u64 = 1024 * 1024 * 1024;
/// The smallest segment size accepted (Kafka: 14 bytes; we require room for one full batch header).
pub const SEGMENT_BYTES_MIN: u64 = BATCH_HEADER_BYTES as u64;
/// Segments are addressed by `u32` byte positions in the index, so a segment must fit in one.
pub const SEGMENT_BYTES_LIMIT: u64 = u32::MAX as u64;
/// `segment.ms`: a segment rolls once its first batch is this old (Kafka: 7 days).
pub const SEGMENT_MS_DEFAULT: u64 = 7 * 24 * 60 * 60 * 1000;
/// `retention.ms` (Kafka: 7 days).
pub const RETENTION_MS_DEFAULT: i64 = 7 * 24 * 60 * 60 * 1000;
/// `delete.retention.ms`: how long the cleaner keeps a tombstone (Kafka: 1 day).
pub const DELETE_RETENTION_MS_DEFAULT: i64 = 24 * 60 * 60 * 1000;
/// `min.cleanable.dirty.ratio` in parts per ten thousand (Kafka: 0.5).
pub const MIN_CLEANABLE_DIRTY_RATIO_BP_DEFAULT: u32 = 5_000;
/// `offsets.topic.segment.bytes` (Kafka: 100 MiB): small, so compaction reaches the offsets
/// topic's records soon.
pub const OFFSETS_TOPIC_SEGMENT_BYTES_DEFAULT: u64 = 100 * 1024 * 1024;
/// Bytes of storage I/O the broker gives compaction per step before serving requests again.
pub const CLEANER_STEP_BYTES: u64 = 16 * 1024 * 1024;

/// How often the scrubber reads a step of a log (`Node::scrub_logs`); a step is a tenth of a
/// second's worth of `scrub_bytes_per_sec`.
pub const SCRUB_INTERVAL_MS: u64 = 100;
/// The scrubber's default read rate per node (`sluice serve --scrub-bytes-per-sec`): one pass
/// over 100 GiB of logs in under four hours.
pub const SCRUB_BYTES_PER_SEC_DEFAULT: u64 = 8 * 1024 * 1024;
/// Bytes the cleaner reads per storage call, and how much cleaned output it buffers before a write.
pub const CLEANER_IO_BYTES: u32 = 1024 * 1024;
/// `index.interval.bytes`: bytes appended between two entries of the sparse indexes (Kafka: 4096).
pub const INDEX_INTERVAL_BYTES_DEFAULT: u32 = 4096;
/// Batches the recovery and read scanners skip at most to reach a target: an index entry is written
/// at least every `index.interval.bytes`, and every batch is at least a header long.
pub const SCAN_BATCHES_MAX: usize = 1 + INDEX_INTERVAL_BYTES_MAX as usize / BATCH_HEADER_BYTES;
/// The largest `index.interval.bytes` accepted; bounds the scan above.
pub const INDEX_INTERVAL_BYTES_MAX: u32 = 1024 * 1024;
/// Idempotent producers: how many recent batches per producer are remembered for dedup (Kafka: 5,
/// which is also the largest `max.in.flight.requests.per.connection` allowed with idempotence).
pub const PRODUCER_BATCHES_REMEMBERED: usize = 5;
/// Idempotent producers remembered per partition. Beyond it the producer whose last batch is
/// oldest is forgotten (its retries are then treated as new); Kafka expires by time instead
/// (`producer.id.expiration.ms`), which needs a clock in the log — this bound needs none.
pub const PRODUCERS_PER_PARTITION_MAX: usize = 10_000;
/// Raft indexes are Kafka offsets (INT64 on the wire): anything at or above this is refused as
/// malformed, so index arithmetic (`last + 1`) never overflows.
pub const RAFT_INDEX_LIMIT: u64 = i64::MAX as u64;
/// Raft: indexes one entry occupies at most. A record batch is one entry spanning its offsets,
/// and Kafka's `lastOffsetDelta` is an i32, so a batch holds at most `i32::MAX + 1` offsets.
/// Entries claiming more are refused as malformed.
pub const RAFT_ENTRY_SPAN_MAX: u64 = i32::MAX as u64 + 1;
/// Raft terms are Kafka leader epochs, an INT32 in every batch and on the wire: a peer's message
/// with a larger term is refused as malformed. Adopting one would leave the group unable to stamp
/// a batch with its epoch (every produce refused), and at `u64::MAX` the next election's
/// `term + 1` would overflow.
pub const RAFT_TERM_MAX: u64 = i32::MAX as u64;
/// Bytes read per step while scanning a segment during recovery.
pub const RECOVERY_READ_BYTES: u32 = 1024 * 1024;

const _: () = assert!(SEGMENT_BYTES_MAX_DEFAULT <= SEGMENT_BYTES_LIMIT);
const _: () = assert!(MESSAGE_BYTES_MAX_DEFAULT as u64 <= SEGMENT_BYTES_MAX_DEFAULT);
// A rewritten batch's length must fit `batchLength` (an i32).
const _: () = assert!(RECORDS_DECOMPRESSED_BYTES_MAX < i32::MAX as usize - BATCH_HEADER_BYTES);
const _: () = assert!(RECORDS_DECOMPRESSED_BYTES_MAX >= MESSAGE_BYTES_MAX_DEFAULT as usize);
const _: () = assert!(INDEX_INTERVAL_BYTES_DEFAULT <= INDEX_INTERVAL_BYTES_MAX);
const _: () = assert!(RECOVERY_READ_BYTES as usize >= BATCH_HEADER_BYTES);
const _: () = assert!(RAFT_ENTRY_SPAN_MAX >= 1 && RAFT_ENTRY_SPAN_MAX < RAFT_INDEX_LIMIT);

/// Raft: voters in one group at most. Commit and vote counting sort a fixed array this long, so
/// they never allocate.
pub const RAFT_VOTERS_MAX: usize = 9;
/// Raft: append messages in flight to one follower at most (the pipelining window). The window
/// is a fixed ring inside each follower's progress.
pub const RAFT_INFLIGHT_APPENDS_MAX: usize = 16;
/// Raft: entries in one append message at most (the default of `append_entries_max`).
pub const RAFT_APPEND_ENTRIES_MAX: usize = 256;
/// Raft default: payload bytes per append message (one entry is always sent, however large).
pub const RAFT_APPEND_BYTES_MAX_DEFAULT: u64 = 1024 * 1024;
/// Raft default: a leader refuses proposals while this many entries are uncommitted.
pub const RAFT_UNCOMMITTED_ENTRIES_MAX_DEFAULT: u64 = 4096;
/// Raft default: payload bytes of already-persisted entries kept in memory per group, so that
/// followers that keep up are served without reading storage.
pub const RAFT_ENTRY_CACHE_BYTES_MAX_DEFAULT: u64 = 256 * 1024;
/// Raft default: payload bytes of committed entries handed out for applying in one `Ready`.
pub const RAFT_APPLY_BYTES_MAX_DEFAULT: u64 = 4 * 1024 * 1024;
/// Raft: messages waiting in one group (to be sent, or held until a sync) at most. Beyond it new
/// messages are dropped, which Raft tolerates like any network loss.
pub const RAFT_QUEUED_MESSAGES_MAX: usize = 1024;
/// Raft default: the minimum election timeout in ticks; each timeout is drawn from
/// `[election_ticks, 2 * election_ticks)`.
pub const RAFT_ELECTION_TICKS_DEFAULT: u32 = 10;
/// Raft default: ticks between a leader's heartbeats.
pub const RAFT_HEARTBEAT_TICKS_DEFAULT: u32 = 2;

const _: () = assert!(RAFT_VOTERS_MAX >= 1 && RAFT_VOTERS_MAX <= u8::MAX as usize);
const _: () = assert!(RAFT_INFLIGHT_APPENDS_MAX >= 1 && RAFT_INFLIGHT_APPENDS_MAX <= 64);
const _: () = assert!(RAFT_HEARTBEAT_TICKS_DEFAULT < RAFT_ELECTION_TICKS_DEFAULT);
const _: () = assert!(RAFT_UNCOMMITTED_ENTRIES_MAX_DEFAULT >= RAFT_APPEND_ENTRIES_MAX as u64);
const _: () = assert!(RAFT_QUEUED_MESSAGES_MAX >= 2 * RAFT_VOTERS_MAX);

/// Metadata: partitions of one topic at most (also the node's `num_partitions` bound).
pub const TOPIC_PARTITIONS_MAX: usize = 10_000;
/// Metadata: replicas of one partition at most. Every partition is a Raft group, so its replica
/// set is a voter set.
pub const TOPIC_REPLICAS_MAX: usize = RAFT_VOTERS_MAX;
/// Metadata: config overrides of one topic at most (there are far fewer known topic configs).
pub const TOPIC_CONFIGS_MAX: usize = 64;
/// Metadata: bytes of any string in a metadata record (host, rack, config name or value).
/// Topic names are shorter still (249, Kafka's limit).
pub const METADATA_STRING_BYTES_MAX: usize = 1024;

const _: () = assert!(TOPIC_PARTITIONS_MAX <= i32::MAX as usize);
const _: () = assert!(TOPIC_REPLICAS_MAX <= u8::MAX as usize);
const _: () = assert!(TOPIC_CONFIGS_MAX <= u16::MAX as usize);
const _: () = assert!(METADATA_STRING_BYTES_MAX <= u16::MAX as usize);

/// Metadata quorum: controller requests waiting for their records to commit, plus answers not
/// yet taken by the host, at most. Beyond it requests are refused (`REQUEST_TIMED_OUT`, which
/// clients retry) rather than queued without bound.
pub const METADATA_REQUESTS_IN_FLIGHT_MAX: usize = 4096;
/// Metadata quorum default: a broker that has not heartbeated for this long is fenced.
pub const BROKER_SESSION_TIMEOUT_MS_DEFAULT: u64 = 6_000;
/// Metadata quorum default: producer ids handed out per AllocateProducerIds (Kafka: 1000).
pub const PRODUCER_ID_BLOCK_SIZE_DEFAULT: i64 = 1_000;

const _: () =
    assert!(METADATA_REQUESTS_IN_FLIGHT_MAX as u64 <= RAFT_UNCOMMITTED_ENTRIES_MAX_DEFAULT);
const _: () = assert!(PRODUCER_ID_BLOCK_SIZE_DEFAULT > 0);

/// Group coordinator: bytes of a group id, member id, instance id, client id or host at most
/// (Kafka bounds them only by the INT16 string length; records of `__consumer_offsets` must fit
/// a batch).
pub const GROUP_STRING_BYTES_MAX: usize = METADATA_STRING_BYTES_MAX;
/// Group coordinator: bytes of one member's protocol metadata or assignment at most.
pub const GROUP_MEMBER_BLOB_BYTES_MAX: usize = 64 * 1024;
/// Group coordinator: bytes of one `__consumer_offsets` record value at most (a group's record
/// carries every member's subscription and assignment).
pub const GROUP_RECORD_BYTES_MAX: usize = 1024 * 1024;
/// Group coordinator default: members of one group at most (Kafka's `group.max.size` is
/// unbounded; a bound keeps the group's record under GROUP_RECORD_BYTES_MAX for typical sizes).
pub const GROUP_MEMBERS_MAX_DEFAULT: usize = 1000;
/// Group coordinator: bytes of an offset commit's metadata string (Kafka's
/// `offset.metadata.max.bytes`).
pub const OFFSET_METADATA_BYTES_MAX: usize = 4096;
/// Group coordinator: partitions of one OffsetCommit at most.
pub const OFFSET_COMMIT_PARTITIONS_MAX: usize = 10_000;
/// Group coordinator: requests waiting on the coordinator (joins, syncs, commits) at most;
/// beyond it new ones are refused with COORDINATOR_NOT_AVAILABLE, which clients retry.
pub const GROUP_REQUESTS_IN_FLIGHT_MAX: usize = 10_000;
/// Group coordinator defaults, as Kafka's.
pub const GROUP_MIN_SESSION_TIMEOUT_MS_DEFAULT: u64 = 6_000;
pub const GROUP_MAX_SESSION_TIMEOUT_MS_DEFAULT: u64 = 1_800_000;
pub const GROUP_INITIAL_REBALANCE_DELAY_MS_DEFAULT: u64 = 3_000;
pub const OFFSETS_RETENTION_MS_DEFAULT: u64 = 7 * 24 * 60 * 60 * 1000;

const _: () = assert!(GROUP_STRING_BYTES_MAX <= i16::MAX as usize);
const _: () = assert!(OFFSET_METADATA_BYTES_MAX <= i16::MAX as usize);
const _: () = assert!(2 * GROUP_MEMBER_BLOB_BYTES_MAX <= GROUP_RECORD_BYTES_MAX);
const _: () = assert!(GROUP_MIN_SESSION_TIMEOUT_MS_DEFAULT <= GROUP_MAX_SESSION_TIMEOUT_MS_DEFAULT);

/// DeleteRecords: how long an answer waits for its log-start entries to commit at least,
/// whatever the request's `timeout_ms`. Kafka raises the log start in memory and answers at
/// once when the leader is the only in-sync replica, so clients ask with a timeout of 0
/// (librdkafka's test 0081 does); in Sluice even a group of one commits only after an fsync.
pub const DELETE_RECORDS_WAIT_MS_MIN: u64 = 1_000;
