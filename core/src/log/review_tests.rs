//! Independent review of the partition log: scenario tests for suspected bugs and regression
//! tests for behaviour that was checked and found correct.
//!
//! Tests whose name starts with `bug_` FAIL on the code as reviewed: each demonstrates one
//! finding of the review report. Every other test passes and is kept as a regression test.

use std::collections::BTreeMap;
use std::path::PathBuf;

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

use super::testkit::{batch, header, small_config};
use super::*;
use crate::batch;
use crate::storage::{Storage, StorageFile};
use crate::testing::{CrashMode, Faults, MemStorage};

/// Recomputes the CRC-32C of a batch after its CRC-covered bytes were edited.
fn fix_crc(b: &mut [u8]) {
    let crc = crc32c::crc32c(&b[21..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
}

/// The log on `MemStorage`, without a model: scenario tests check what they need.
struct Rig {
    storage: MemStorage,
    dir: PathBuf,
    config: LogConfig,
    log: PartitionLog,
    store: LogStore<MemStorage>,
    now_ms: u64,
}

impl Rig {
    fn new(config: LogConfig) -> Rig {
        let storage = MemStorage::new();
        let dir = PathBuf::from("topic-0");
        let (log, store) = LogStore::open(storage.clone(), dir.clone(), config.clone()).unwrap();
        let mut rig = Rig {
            storage,
            dir,
            config,
            log,
            store,
            now_ms: 1_000_000,
        };
        rig.sync();
        rig
    }

    fn append(&mut self, bytes: &[u8]) -> Result<Appended, AppendError> {
        let result = self.log.append(BytesMut::from(bytes), 0, self.now_ms);
        self.store.apply_all(&mut self.log).unwrap();
        self.log.check_invariants();
        result
    }

    /// Group commits until nothing is left to sync, as the broker keeps doing (a checkpoint
    /// written by one sync's completion is made durable by the next).
    fn sync(&mut self) {
        for _ in 0..16 {
            let Some(request) = self.log.poll_sync() else {
                break;
            };
            self.store.sync_now(&mut self.log, request).unwrap();
        }
        assert_eq!(self.log.high_watermark(), self.log.log_end_offset());
    }

    fn reopen(&mut self) {
        let (log, store) =
            LogStore::open(self.storage.clone(), self.dir.clone(), self.config.clone()).unwrap();
        self.log = log;
        self.store = store;
        self.log.check_invariants();
    }

    fn crash(&mut self, mode: CrashMode) {
        self.storage.crash(mode);
        self.reopen();
    }

    /// Every committed batch from the log start, read the way a consumer would.
    fn read_all(&mut self) -> Vec<Vec<u8>> {
        let mut offset = self.log.log_start_offset();
        let mut out = Vec::new();
        while offset < self.log.high_watermark() {
            let mut cursor = self.log.read(offset, 1 << 20).unwrap();
            self.store.read(&mut cursor).unwrap();
            let got = cursor.into_records();
            assert!(
                !got.is_empty(),
                "empty read at {offset} below the high watermark"
            );
            for (h, range) in batch::split_batches(&got).unwrap() {
                if h.last_offset() as u64 >= offset {
                    out.push(got[range].to_vec());
                }
                offset = h.next_offset() as u64;
            }
        }
        out
    }

    fn read(&mut self, offset: u64, max_bytes: u32) -> Bytes {
        let mut cursor = self.log.read(offset, max_bytes).unwrap();
        self.store.read(&mut cursor).unwrap();
        cursor.into_records()
    }

    fn timestamp_lookup(&mut self, ts: i64) -> Option<TimestampHit> {
        let mut cursor = self.log.offset_for_timestamp(ts)?;
        self.store.read(&mut cursor).unwrap();
        cursor.into_timestamp_hit()
    }

    fn segment_bases(&self) -> Vec<u64> {
        self.log.segments().map(|s| s.base_offset).collect()
    }

    fn checkpoint_recovery_point(&self) -> Option<u64> {
        let file = self
            .storage
            .open(&self.dir.join(CHECKPOINT_FILE), false)
            .ok()?;
        let bytes = crate::storage::read_all(&file).ok()?;
        Checkpoint::decode(&bytes).map(|c| c.recovery_point)
    }
}

// ------------------------------------------------------------------------------------------------
// Findings of the review (failed before their fixes; now regression tests).
// ------------------------------------------------------------------------------------------------

/// Found in review: a request with a new batch and a retried one acknowledged the whole request
/// as a duplicate and dropped the new batch. Fixed as Kafka does it: a produce request carries
/// exactly one batch per partition; more are refused with INVALID_RECORD and nothing is written.
#[test]
fn a_request_with_more_than_one_batch_is_refused_and_writes_nothing() {
    let mut rig = Rig::new(small_config());
    let old = batch(2, 5, 0, Some((7, 0, 0)));
    rig.append(&old).unwrap();
    rig.sync();
    let end_before = rig.log.log_end_offset();
    let mut request = batch(1, 5, 0, Some((8, 0, 0)));
    request.extend_from_slice(&old);
    let err = rig.append(&request).unwrap_err();
    assert_eq!(err.error_code(), ErrorCode::InvalidRecord);
    rig.sync();
    assert_eq!(rig.log.log_end_offset(), end_before);
}

/// Found in review: the same idempotent batch twice in one request was acknowledged at offsets
/// never written. Such a request is now refused outright.
#[test]
fn the_same_batch_twice_in_one_request_is_refused() {
    let mut rig = Rig::new(small_config());
    rig.append(&batch(1, 5, 0, None)).unwrap();
    let one = batch(3, 5, 0, Some((9, 0, 0)));
    let request = [one.clone(), one].concat();
    assert_eq!(
        rig.append(&request).unwrap_err().error_code(),
        ErrorCode::InvalidRecord
    );
}

/// A sealed segment below the recovery point whose file is empty (damage, e.g. a file truncated
/// by fsck) but whose index files are intact: `decode_indexes` accepts a one-entry index for a
/// 0-byte segment (`position < size_bytes.max(1)`), and `from_parts` then trips the segment
/// invariant `last.position < size_bytes`. Core panics on disk input. (It also deletes every
/// later, intact segment as a "gap".)
#[test]
fn an_empty_sealed_segment_with_an_intact_index_does_not_panic_recovery() {
    let mut config = small_config();
    // One index entry per segment.
    config.index_interval_bytes = 1 << 20;
    let mut rig = Rig::new(config);
    for _ in 0..12 {
        rig.append(&batch(2, 40, 0, None)).unwrap();
        rig.sync();
    }
    let bases = rig.segment_bases();
    assert!(bases.len() >= 3);
    assert!(rig.checkpoint_recovery_point().unwrap() > bases[0]);
    let first = rig
        .storage
        .open(&rig.dir.join(log_file_name(bases[0])), false)
        .unwrap();
    first.truncate(0).unwrap();
    let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        LogStore::open(rig.storage.clone(), rig.dir.clone(), rig.config.clone())
    }));
    assert!(
        opened.is_ok(),
        "recovery panicked on a damaged segment file"
    );
}

/// Recovery trusts the listing's file length. If a read returns fewer bytes than asked without
/// being at the end the listing promised (a file shortened after the listing, a storage
/// implementation with short reads), `feed_segment` makes no progress and `next_io` asks for
/// the same range forever.
#[test]
fn recovery_makes_progress_on_a_short_read() {
    let good = {
        let mut b = batch(2, 400, 0, None);
        batch::set_base_offset(&mut b, 0);
        b
    };
    let listing = vec![(log_file_name(0), 4 * good.len() as u64)];
    let mut recovery = Recovery::new(small_config(), &listing, None);
    let mut steps = 0;
    let mut last = None;
    while let Some(io) = recovery.next_io() {
        steps += 1;
        assert!(
            steps < 100,
            "recovery still asking for {io:?} after {steps} reads"
        );
        match io {
            RecoveryIo::ReadSegment(read) => {
                // The header of the first batch only: less than asked, more than nothing.
                assert_ne!(Some(read), last, "no progress: the same read again");
                last = Some(read);
                recovery.feed_segment(&good[..100.min(read.len as usize)]);
            }
            RecoveryIo::ReadIndexes { .. } => recovery.feed_indexes(&[], &[]),
        }
    }
}

/// Found in review: a header maxTimestamp lower than the records' was trusted, hiding them from
/// timestamp lookups (and a higher one pinned time retention). Uncompressed batches whose header
/// disagrees with their records are now refused.
#[test]
fn a_header_max_timestamp_that_disagrees_with_the_records_is_repaired_before_the_log() {
    let mut rig = Rig::new(small_config());
    rig.append(&batch(1, 5, 1_000, None)).unwrap();
    // Records at 5000 and 5001, header says max 1000. Kafka's LogValidator sets maxTimestamp
    // from the records; the leader does the same before the batch enters the log.
    let mut lying = batch(2, 5, 5_000, None);
    lying[35..43].copy_from_slice(&1_000i64.to_be_bytes());
    fix_crc(&mut lying);
    let mut repaired = bytes::BytesMut::from(&lying[..]);
    let header = batch::accept_produce(
        &mut repaired,
        &batch::ProduceRules::structural(1 << 20),
        0,
        &batch::NoCodecs,
    )
    .unwrap();
    let lying = repaired.to_vec();
    assert_eq!(header.max_timestamp, 5_001);
    assert!(
        batch::check_crc(&lying, &header).is_ok(),
        "the repaired CRC"
    );
    let repaired = rig.append(&lying).unwrap();
    rig.sync();
    assert_eq!(
        rig.timestamp_lookup(5_000).map(|h| h.offset),
        Some(repaired.base_offset)
    );
}

/// `segment.ms` counts from `first_append_ms`, which lives only in memory: after a restart the
/// active segment's age starts again at the next append, so a partition restarted more often than
/// `segment.ms` never rolls, and time retention (which never deletes the active segment) never
/// frees anything. Kafka rolls by the first batch's timestamp, which survives restarts.
#[test]
fn segment_age_survives_a_restart() {
    let mut rig = Rig::new(small_config());
    rig.append(&batch(1, 1, rig.now_ms as i64, None)).unwrap();
    rig.sync();
    rig.reopen();
    rig.sync();
    rig.now_ms += rig.config.segment_ms + 1;
    rig.append(&batch(1, 1, rig.now_ms as i64, None)).unwrap();
    assert_eq!(
        rig.log.segments().count(),
        2,
        "a segment older than segment.ms did not roll after a restart"
    );
}

/// One bad batch in a sealed, checkpointed segment whose index is also damaged: the rebuild scan
/// is the tail scan, which truncates at the bad batch and deletes every later segment, although
/// they are intact, fsynced and below the checkpoint. Without the index damage the same bad
/// batch only fails the reads that reach it. The producer state from the checkpoint then still
/// remembers batches at offsets the log no longer has.
#[test]
fn a_bad_batch_in_a_sealed_segment_with_a_damaged_index_keeps_later_segments() {
    let mut rig = Rig::new(small_config());
    for seq in 0..30 {
        rig.append(&batch(2, 40, 0, Some((3, 0, seq * 2)))).unwrap();
        rig.sync();
    }
    let bases = rig.segment_bases();
    assert!(bases.len() > 4);
    let hw = rig.log.high_watermark();
    let damaged = bases[1];
    assert!(rig.checkpoint_recovery_point().unwrap() > bases[2]);
    // One bit in the records of the segment's last batch, and one in its offset index.
    let log_path = rig.dir.join(log_file_name(damaged));
    let len = rig.storage.open(&log_path, false).unwrap().len().unwrap();
    assert!(rig.storage.flip_bit(&log_path, (len - 3) * 8));
    assert!(rig
        .storage
        .flip_bit(&rig.dir.join(index_file_name(damaged)), 70));
    rig.crash(CrashMode::Clean);
    let end = rig.log.log_end_offset();
    let remembered_past_end: Vec<u64> = rig
        .log
        .producers()
        .get(3)
        .map(|e| {
            e.batches
                .iter()
                .map(|b| b.last_offset)
                .filter(|o| *o >= end)
                .collect()
        })
        .unwrap_or_default();
    assert!(
        remembered_past_end.is_empty(),
        "producer state remembers batches ending at {remembered_past_end:?}, past the log end {end}"
    );
    assert!(
        end >= bases[2],
        "one bad batch in segment {damaged} cut the log from {hw} to {end}"
    );
}

/// The idempotent-producer table is bounded: beyond `PRODUCERS_PER_PARTITION_MAX` the producer
/// with the oldest last batch is forgotten.
#[test]
fn the_producer_table_is_bounded() {
    let mut rig = Rig::new(small_config());
    let producers = crate::limits::PRODUCERS_PER_PARTITION_MAX as i64 + 500;
    for pid in 0..producers {
        rig.append(&batch(1, 1, 0, Some((pid, 0, 0)))).unwrap();
    }
    rig.sync();
    assert_eq!(
        rig.log.producers().len(),
        crate::limits::PRODUCERS_PER_PARTITION_MAX
    );
    assert!(
        rig.log.producers().get(0).is_none(),
        "the oldest producer is the one forgotten"
    );
    assert!(rig.log.producers().get(producers - 1).is_some());
}

/// Found in review: every batch of a multi-batch request held a deep copy of the whole request.
/// Requests now carry one batch, and its Append op shares the request's buffer (no copy).
#[test]
fn an_append_op_shares_the_request_buffer() {
    let mut rig = Rig::new(small_config());
    let request = BytesMut::from(&batch(3, 100, 0, None)[..]);
    let ptr = request.as_ptr() as usize;
    rig.log.append(request, 0, rig.now_ms).unwrap();
    let mut appended = None;
    while let Some(op) = rig.log.poll_op() {
        if let LogOp::Append { bytes, .. } = op {
            appended = Some(bytes);
        }
    }
    assert_eq!(
        appended.expect("an Append op").as_ptr() as usize,
        ptr,
        "the batch was copied"
    );
}

// ------------------------------------------------------------------------------------------------
// Checked and found correct: regression tests (these pass).
// ------------------------------------------------------------------------------------------------

/// Retries of each of the last five batches are duplicates after a power loss, including when
/// the checkpoint has moved past the segments that hold them.
#[test]
fn retries_of_the_last_five_batches_are_duplicates_after_a_crash_with_a_checkpoint() {
    let mut rig = Rig::new(small_config());
    let mut sent = Vec::new();
    for i in 0..40 {
        let seq: i32 = sent.iter().map(|b: &Vec<u8>| header(b).record_count).sum();
        let b = batch(1 + (i % 3) as u8, 60, 0, Some((5, 0, seq)));
        let a = rig.append(&b).unwrap();
        assert!(!a.duplicate);
        let mut stored = b.clone();
        batch::set_base_offset(&mut stored, a.base_offset as i64);
        sent.push(stored);
        rig.sync();
    }
    assert!(rig.checkpoint_recovery_point().unwrap() > 0);
    rig.crash(CrashMode::Clean);
    rig.sync();
    for original in &sent[sent.len() - 5..] {
        let mut retry = original.clone();
        batch::set_base_offset(&mut retry, 0);
        let a = rig.append(&retry).unwrap();
        assert!(a.duplicate);
        assert_eq!(a.base_offset, header(original).base_offset as u64);
        assert_eq!(a.last_offset, header(original).last_offset() as u64);
    }
    // The sixth from last is forgotten: out of order, not appended twice.
    let mut old = sent[sent.len() - 6].clone();
    batch::set_base_offset(&mut old, 0);
    assert_eq!(
        rig.append(&old).unwrap_err().error_code(),
        ErrorCode::OutOfOrderSequenceNumber
    );
}

/// Sequence numbers wrap from i32::MAX to 0 and dedup still works across a restart.
#[test]
fn sequence_wrap_is_followed_across_a_restart() {
    let mut rig = Rig::new(small_config());
    // A producer unknown to a log that starts at 0 must start at 0; get it near the wrap by
    // appending with a sequence close to i32::MAX after retention made the state "may be lost".
    let mut config = small_config();
    config.retention_bytes = 0;
    rig.log.set_config(config);
    for _ in 0..6 {
        rig.append(&batch(3, 60, 0, None)).unwrap();
    }
    rig.sync();
    rig.log.enforce_retention(rig.now_ms);
    rig.store.apply_all(&mut rig.log).unwrap();
    assert!(rig.log.log_start_offset() > 0);
    let near = batch(3, 5, 0, Some((11, 0, i32::MAX - 1)));
    let a = rig.append(&near).unwrap();
    // MAX-1, MAX, 0: the next sequence is 1.
    let wrapped = batch(2, 5, 0, Some((11, 0, 1)));
    let b = rig.append(&wrapped).unwrap();
    assert!(!b.duplicate);
    rig.sync();
    rig.crash(CrashMode::Clean);
    let mut retry = near.clone();
    batch::set_base_offset(&mut retry, 0);
    assert_eq!(rig.append(&retry).unwrap().base_offset, a.base_offset);
    let again = rig.append(&wrapped).unwrap();
    assert!(again.duplicate);
    assert_eq!(again.base_offset, b.base_offset);
    assert!(rig.append(&batch(1, 5, 0, Some((11, 0, 4)))).is_err());
    assert!(
        !rig.append(&batch(1, 5, 0, Some((11, 0, 3))))
            .unwrap()
            .duplicate
    );
}

/// An epoch bump survives a restart: the old epoch stays fenced.
#[test]
fn an_epoch_bump_is_remembered_across_a_restart() {
    let mut rig = Rig::new(small_config());
    rig.append(&batch(2, 5, 0, Some((4, 0, 0)))).unwrap();
    rig.append(&batch(2, 5, 0, Some((4, 1, 0)))).unwrap();
    rig.sync();
    rig.crash(CrashMode::Clean);
    let err = rig.append(&batch(1, 5, 0, Some((4, 0, 2)))).unwrap_err();
    assert_eq!(err.error_code(), ErrorCode::InvalidProducerEpoch);
    assert!(
        rig.append(&batch(2, 5, 0, Some((4, 1, 0))))
            .unwrap()
            .duplicate
    );
    assert!(
        !rig.append(&batch(1, 5, 0, Some((4, 1, 2))))
            .unwrap()
            .duplicate
    );
}

/// Retention can delete everything but the active segment, yet never the checkpoint's segment
/// (the recovery point follows the durable point), so the checkpoint stays usable and dedup
/// works after a crash.
#[test]
fn retention_never_deletes_the_checkpoints_segment() {
    let mut rig = Rig::new(small_config());
    let mut last = Vec::new();
    for seq in 0..20 {
        last = batch(2, 60, 0, Some((2, 0, seq * 2)));
        rig.append(&last).unwrap();
        rig.sync();
    }
    let rp = rig.checkpoint_recovery_point().unwrap();
    let mut config = small_config();
    config.retention_bytes = 0;
    rig.log.set_config(config);
    rig.log.enforce_retention(rig.now_ms);
    rig.store.apply_all(&mut rig.log).unwrap();
    assert!(rig.log.log_start_offset() > 0);
    assert!(
        rig.log.log_start_offset() <= rp,
        "the checkpoint's segment is gone"
    );
    assert!(rig.segment_bases().contains(&rp));
    // The group commit after retention makes the deletions durable.
    rig.sync();
    let before = rig.read_all();
    rig.crash(CrashMode::Clean);
    rig.sync();
    assert_eq!(rig.read_all(), before);
    let mut retry = last.clone();
    batch::set_base_offset(&mut retry, 0);
    assert!(rig.append(&retry).unwrap().duplicate);
}

/// A roll whose old segment was fsynced but whose new segment's directory entry was not: the
/// new segment disappears, everything synced survives.
#[test]
fn a_partially_synced_roll_recovers_to_the_synced_prefix() {
    let mut rig = Rig::new(small_config());
    for _ in 0..6 {
        rig.append(&batch(2, 60, 0, None)).unwrap();
    }
    rig.sync();
    let hw = rig.log.high_watermark();
    let before = rig.read_all();
    // Roll into a new segment, then sync only the old segment's file (no directory sync).
    let active = *rig.segment_bases().last().unwrap();
    while *rig.segment_bases().last().unwrap() == active {
        rig.append(&batch(2, 60, 0, None)).unwrap();
    }
    rig.storage
        .open(&rig.dir.join(log_file_name(active)), false)
        .unwrap()
        .sync()
        .unwrap();
    rig.crash(CrashMode::Clean);
    assert!(rig.log.log_end_offset() >= hw);
    rig.sync();
    let after = rig.read_all();
    assert_eq!(&after[..before.len()], &before[..]);
}

/// Retention interrupted after the .log file of a segment was removed durably but its index
/// files were not: the orphans are removed and the log starts at the next segment.
#[test]
fn an_interrupted_segment_deletion_is_finished_by_recovery() {
    let mut rig = Rig::new(small_config());
    for _ in 0..20 {
        rig.append(&batch(2, 60, 0, None)).unwrap();
    }
    rig.sync();
    let bases = rig.segment_bases();
    rig.storage
        .remove_file(&rig.dir.join(log_file_name(bases[0])))
        .unwrap();
    rig.storage.sync_dir(&rig.dir).unwrap();
    rig.crash(CrashMode::Clean);
    assert_eq!(rig.log.log_start_offset(), bases[1]);
    assert!(!rig.storage.exists(&rig.dir.join(index_file_name(bases[0]))));
    rig.sync();
    rig.read_all();
}

/// A process restart (no power loss) keeps page-cache data; it is recovered, but not served until
/// the first fsync after the restart.
#[test]
fn data_recovered_from_the_page_cache_is_not_served_before_an_fsync() {
    let mut rig = Rig::new(small_config());
    for _ in 0..8 {
        rig.append(&batch(2, 60, 0, None)).unwrap();
    }
    rig.sync();
    let hw = rig.log.high_watermark();
    rig.append(&batch(2, 60, 0, None)).unwrap();
    let end = rig.log.log_end_offset();
    rig.reopen();
    assert_eq!(rig.log.log_end_offset(), end);
    assert!(rig.log.high_watermark() <= hw);
    assert!(rig.read(hw, 1 << 20).is_empty());
    rig.sync();
    assert_eq!(rig.log.high_watermark(), end);
    assert!(!rig.read(hw, 1 << 20).is_empty());
}

/// KIP-74 and segment boundaries: a read returns at least one whole batch whatever `max_bytes`,
/// never more than `max_bytes` otherwise, and never crosses into the next segment.
#[test]
fn reads_return_whole_batches_within_a_segment() {
    let mut rig = Rig::new(small_config());
    for i in 0..40u8 {
        rig.append(&batch(1 + i % 3, 30 + usize::from(i) * 5, 0, None))
            .unwrap();
    }
    rig.sync();
    let segments: Vec<(u64, u64)> = rig
        .log
        .segments()
        .map(|s| (s.base_offset, s.next_offset))
        .collect();
    for offset in rig.log.log_start_offset()..rig.log.high_watermark() {
        for max_bytes in [0u32, 1, 61, 200, 650, 1 << 20] {
            let got = rig.read(offset, max_bytes);
            let batches = batch::split_batches(&got).unwrap();
            assert!(batches[0].0.base_offset as u64 <= offset);
            assert!(batches[0].0.last_offset() as u64 >= offset);
            assert!(batches.len() == 1 || got.len() <= max_bytes as usize);
            let (base, next) = *segments
                .iter()
                .find(|(b, n)| *b <= offset && offset < *n)
                .unwrap();
            let last = batches.last().unwrap().0;
            assert!(batches[0].0.base_offset as u64 >= base && last.next_offset() as u64 <= next);
            for w in batches.windows(2) {
                assert_eq!(w[0].0.next_offset(), w[1].0.base_offset);
            }
        }
    }
}

/// Timestamp lookups with non-monotonic timestamps across segments and index entries.
#[test]
fn timestamp_lookup_with_out_of_order_timestamps() {
    let mut rig = Rig::new(small_config());
    let stamps = [
        50i64, 10, 30, 80, 20, 90, 5, 85, 100, 60, 70, 95, 40, 120, 110,
    ];
    let mut placed = Vec::new();
    for ts in stamps {
        let a = rig.append(&batch(1, 120, ts, None)).unwrap();
        placed.push((a.base_offset, ts));
    }
    rig.sync();
    for target in 0..=125 {
        let expected = placed.iter().find(|(_, ts)| *ts >= target).map(|(o, _)| *o);
        assert_eq!(
            rig.timestamp_lookup(target).map(|h| h.offset),
            expected,
            "target {target}"
        );
    }
    rig.crash(CrashMode::Clean);
    rig.sync();
    for target in 0..=125 {
        let expected = placed.iter().find(|(_, ts)| *ts >= target).map(|(o, _)| *o);
        assert_eq!(
            rig.timestamp_lookup(target).map(|h| h.offset),
            expected,
            "target {target} after recovery"
        );
    }
}

/// Damaged or torn index files below the recovery point are rebuilt, and lookups agree.
#[test]
fn torn_and_damaged_index_files_are_rebuilt() {
    let mut rig = Rig::new(small_config());
    for i in 0..40u8 {
        rig.append(&batch(1 + i % 3, 40, i64::from(i) * 10, None))
            .unwrap();
        rig.sync();
    }
    let before = rig.read_all();
    let bases = rig.segment_bases();
    let idx = rig
        .storage
        .open(&rig.dir.join(index_file_name(bases[0])), false)
        .unwrap();
    idx.truncate(idx.len().unwrap() - 3).unwrap();
    assert!(rig
        .storage
        .flip_bit(&rig.dir.join(time_index_file_name(bases[1])), 100));
    rig.storage
        .remove_file(&rig.dir.join(index_file_name(bases[2])))
        .unwrap();
    rig.storage.sync_dir(&rig.dir).unwrap();
    rig.crash(CrashMode::Clean);
    rig.sync();
    assert_eq!(rig.read_all(), before);
    for offset in rig.log.log_start_offset()..rig.log.high_watermark() {
        let got = rig.read(offset, 1);
        assert!(header(&got).last_offset() as u64 >= offset);
    }
}

// ------------------------------------------------------------------------------------------------
// A model test with the faults the original one lacks: failed fsyncs and writes (fsyncgate cut
// and reopen), process restarts that keep the page cache, torn writes with garbage, epoch bumps
// and retries checked against the model.
// ------------------------------------------------------------------------------------------------

struct Model {
    rig: Rig,
    /// Every batch in the log, as stored, oldest first.
    batches: Vec<Vec<u8>>,
    /// The producer's epoch per id as the client knows it.
    epochs: BTreeMap<i64, i16>,
}

impl Model {
    fn next_offset(&self) -> u64 {
        self.batches
            .last()
            .map_or(self.rig.log.log_start_offset(), |b| {
                header(b).next_offset() as u64
            })
    }

    fn next_sequence(&self, pid: i64) -> (i16, i32) {
        let epoch = *self.epochs.get(&pid).unwrap_or(&0);
        match self.rig.log.producers().get(pid) {
            Some(e) if e.epoch == epoch => (epoch, e.batches.back().unwrap().last_sequence + 1),
            _ => (epoch, 0),
        }
    }

    fn append(&mut self, records: u8, value_len: usize, pid: Option<i64>) {
        if self.rig.log.storage_failed() {
            return;
        }
        let producer = pid.map(|pid| {
            let (epoch, seq) = self.next_sequence(pid);
            (pid, epoch, seq)
        });
        let bytes = batch(records, value_len, self.rig.now_ms as i64, producer);
        let appended = self
            .rig
            .log
            .append(BytesMut::from(&bytes[..]), 0, self.rig.now_ms)
            .unwrap();
        assert!(!appended.duplicate);
        assert_eq!(appended.base_offset, self.next_offset());
        let mut stored = bytes;
        batch::set_base_offset(&mut stored, appended.base_offset as i64);
        self.batches.push(stored);
        if self.rig.store.apply_all(&mut self.rig.log).is_err() {
            self.storage_failure();
        }
    }

    fn retry(&mut self, pick: usize) {
        if self.rig.log.storage_failed() {
            return;
        }
        let start = self.rig.log.log_start_offset();
        let candidates: Vec<Vec<u8>> = self
            .batches
            .iter()
            .filter(|b| {
                let h = header(b);
                h.is_idempotent()
                    && h.base_offset as u64 >= start
                    && self
                        .rig
                        .log
                        .producers()
                        .get(h.producer_id)
                        .is_some_and(|e| {
                            e.epoch == h.producer_epoch
                                && e.batches
                                    .iter()
                                    .any(|m| m.first_offset == h.base_offset as u64)
                        })
            })
            .cloned()
            .collect();
        if candidates.is_empty() {
            return;
        }
        let original = &candidates[pick % candidates.len()];
        let mut retry = original.clone();
        batch::set_base_offset(&mut retry, 0);
        let a = self
            .rig
            .log
            .append(BytesMut::from(&retry[..]), 0, self.rig.now_ms)
            .unwrap();
        assert!(
            a.duplicate,
            "a retry of a remembered batch was appended again"
        );
        assert_eq!(a.base_offset, header(original).base_offset as u64);
        assert_eq!(a.last_offset, header(original).last_offset() as u64);
    }

    fn sync(&mut self, fail: bool) {
        if fail {
            self.rig.storage.inject(Faults {
                fail_next_sync: true,
                ..Faults::default()
            });
        }
        let mut result = Ok(());
        // Until nothing is left (a checkpoint written by one completion rides on the next).
        for _ in 0..16 {
            let Some(request) = self.rig.log.poll_sync() else {
                break;
            };
            result = self.rig.store.sync_now(&mut self.rig.log, request);
            if result.is_err() {
                break;
            }
        }
        self.rig.storage.inject(Faults::default());
        if result.is_err() {
            self.storage_failure();
        }
    }

    /// What the broker does after a failed fsync or write: cut, reopen, check.
    fn storage_failure(&mut self) {
        self.rig.storage.inject(Faults::default());
        let durable_end = self.rig.log.high_watermark();
        for op in self.rig.log.failure_cut() {
            self.rig.store.apply(op).unwrap();
        }
        self.rig.reopen();
        self.after_reopen(durable_end);
    }

    fn crash(&mut self, mode: Option<CrashMode>) {
        let durable_end = self.rig.log.high_watermark();
        match mode {
            Some(mode) => self.rig.crash(mode),
            None => self.rig.reopen(),
        }
        self.after_reopen(durable_end);
    }

    fn after_reopen(&mut self, durable_end: u64) {
        let end = self.rig.log.log_end_offset();
        assert!(
            end >= durable_end,
            "lost durable data: end {end} < {durable_end}"
        );
        self.batches
            .retain(|b| header(b).next_offset() as u64 <= end);
        assert_eq!(self.next_offset(), end, "recovered log ends inside a batch");
        self.sync(false);
        self.check_producers();
        self.check_all();
    }

    /// Every remembered producer batch is in the log where the table says.
    fn check_producers(&self) {
        let end = self.rig.log.log_end_offset();
        for b in &self.batches {
            let h = header(b);
            if !h.is_idempotent() {
                continue;
            }
            let entry = self.rig.log.producers().get(h.producer_id).unwrap();
            for m in &entry.batches {
                assert!(m.last_offset < end, "producer state past the log end");
                if m.first_offset == h.base_offset as u64 {
                    assert_eq!(m.first_sequence, h.base_sequence);
                    assert_eq!(m.last_offset, h.last_offset() as u64);
                }
            }
        }
    }

    fn check_read(&mut self, offset: u64, max_bytes: u32) {
        if self.rig.log.storage_failed() {
            return;
        }
        let hw = self.rig.log.high_watermark();
        let mut cursor = match self.rig.log.read(offset, max_bytes) {
            Ok(c) => c,
            Err(ReadError::OffsetOutOfRange { .. }) => {
                assert!(
                    offset < self.rig.log.log_start_offset()
                        || offset > self.rig.log.log_end_offset()
                );
                return;
            }
            Err(e) => panic!("read {offset} failed: {e:?}"),
        };
        self.rig.store.read(&mut cursor).unwrap();
        let got = cursor.into_records();
        if offset >= hw {
            assert!(got.is_empty(), "served data at or above the high watermark");
            return;
        }
        let expected: Vec<&Vec<u8>> = self
            .batches
            .iter()
            .filter(|b| {
                header(b).last_offset() as u64 >= offset && (header(b).base_offset as u64) < hw
            })
            .collect();
        let mut at = 0;
        let mut count = 0;
        for b in &expected {
            if at == got.len() {
                break;
            }
            assert_eq!(&got[at..at + b.len()], &b[..]);
            at += b.len();
            count += 1;
        }
        assert_eq!(at, got.len());
        assert!(count >= 1);
        assert!(count == 1 || got.len() <= max_bytes as usize);
    }

    fn check_all(&mut self) {
        let seen = self.rig.read_all();
        let start = self.rig.log.log_start_offset();
        let hw = self.rig.log.high_watermark();
        let expected: Vec<Vec<u8>> = self
            .batches
            .iter()
            .filter(|b| {
                header(b).base_offset as u64 >= start && (header(b).next_offset() as u64) <= hw
            })
            .cloned()
            .collect();
        assert!(seen == expected, "the log's contents differ from the model");
    }
}

#[derive(Clone, Debug)]
enum Step {
    Append {
        records: u8,
        value_len: u16,
        pid: Option<i64>,
    },
    Retry {
        pick: u16,
    },
    BumpEpoch {
        pid: i64,
    },
    Sync,
    FailSync,
    FailWrite {
        records: u8,
    },
    Read {
        pick: u16,
        max_bytes: u16,
    },
    Retention {
        advance_ms: u16,
    },
    Crash {
        tear: Option<(u16, bool)>,
    },
    /// An append and a group commit while the next directory sync, rename, removal or open
    /// (`kind` 0 to 3) fails.
    FailOther {
        kind: u8,
        records: u8,
    },
    /// A crash that tears every file's unsynced writes (`CrashMode::TearEach`).
    CrashTearEach {
        seed: u64,
        garbage: bool,
    },
    Restart,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => (1u8..5, 0u16..120, proptest::option::of(1i64..3))
            .prop_map(|(records, value_len, pid)| Step::Append { records, value_len, pid }),
        2 => any::<u16>().prop_map(|pick| Step::Retry { pick }),
        1 => (1i64..3).prop_map(|pid| Step::BumpEpoch { pid }),
        4 => Just(Step::Sync),
        1 => Just(Step::FailSync),
        1 => (1u8..4).prop_map(|records| Step::FailWrite { records }),
        3 => (any::<u16>(), 1u16..800).prop_map(|(pick, max_bytes)| Step::Read { pick, max_bytes }),
        1 => (0u16..3000).prop_map(|advance_ms| Step::Retention { advance_ms }),
        1 => proptest::option::of((0u16..200, any::<bool>())).prop_map(|tear| Step::Crash { tear }),
        1 => Just(Step::Restart),
        1 => (0u8..4, 1u8..4).prop_map(|(kind, records)| Step::FailOther { kind, records }),
        1 => (any::<u64>(), any::<bool>()).prop_map(|(seed, garbage)| Step::CrashTearEach { seed, garbage }),
    ]
}

proptest! {
    #[test]
    fn the_log_matches_the_model_under_storage_faults(
        steps in proptest::collection::vec(step(), 1..80),
        retention in any::<bool>(),
    ) {
        let mut config = small_config();
        if retention {
            config.retention_bytes = 2000;
            config.retention_ms = 20_000;
        }
        let mut m = Model { rig: Rig::new(config), batches: Vec::new(), epochs: BTreeMap::new() };
        for step in steps {
            match step {
                Step::Append { records, value_len, pid } => m.append(records, usize::from(value_len), pid),
                Step::Retry { pick } => m.retry(usize::from(pick)),
                Step::BumpEpoch { pid } => {
                    *m.epochs.entry(pid).or_insert(0) += 1;
                }
                Step::Sync => m.sync(false),
                Step::FailSync => m.sync(true),
                Step::FailWrite { records } => {
                    m.rig.storage.inject(Faults { fail_next_write: true, ..Faults::default() });
                    m.append(records, 10, None);
                    m.rig.storage.inject(Faults::default());
                }
                Step::Read { pick, max_bytes } => {
                    let span = m.rig.log.log_end_offset() + 2;
                    m.check_read(u64::from(pick) % span, u32::from(max_bytes));
                }
                Step::Retention { advance_ms } => {
                    m.rig.now_ms += u64::from(advance_ms);
                    if !m.rig.log.storage_failed() {
                        m.rig.log.enforce_retention(m.rig.now_ms);
                        if m.rig.store.apply_all(&mut m.rig.log).is_err() {
                            m.storage_failure();
                        }
                        // The model keeps deleted batches: checks compare from the log start,
                        // and a crash before the next group commit may bring them back.
                    }
                }
                Step::Crash { tear } => {
                    let mode = match tear {
                        None => CrashMode::Clean,
                        Some((keep_bytes, garbage)) => CrashMode::TearLastWrite { keep_bytes: u64::from(keep_bytes), garbage },
                    };
                    m.crash(Some(mode));
                }
                Step::Restart => m.crash(None),
                Step::FailOther { kind, records } => {
                    let mut faults = Faults::default();
                    match kind {
                        0 => faults.fail_next_sync_dir = true,
                        1 => faults.fail_next_rename = true,
                        2 => faults.fail_next_remove = true,
                        _ => faults.fail_next_open = true,
                    }
                    m.rig.storage.inject(faults);
                    m.append(records, 10, None);
                    m.sync(false);
                }
                Step::CrashTearEach { seed, garbage } => m.crash(Some(CrashMode::TearEach { seed, garbage })),
            }
            m.rig.log.check_invariants();
        }
        m.sync(false);
        m.check_all();
    }
}
