//! The partition log against a simple model: a list of batches. Every step runs the real log with
//! [`LogStore`] on [`MemStorage`], so crashes drop exactly the unsynced bytes.

use std::path::PathBuf;

use bytes::BytesMut;
use proptest::prelude::*;

use super::testkit::{batch, header, small_config};
use super::*;
use crate::batch;
use crate::storage::{Storage, StorageFile};
use crate::testing::{CrashMode, Faults, MemStorage};

/// A log under test plus the model.
struct Harness {
    storage: MemStorage,
    dir: PathBuf,
    config: LogConfig,
    log: PartitionLog,
    store: LogStore<MemStorage>,
    /// Every batch in the log, as stored (offsets assigned), oldest first.
    batches: Vec<Vec<u8>>,
    now_ms: u64,
    /// Next sequence per idempotent producer id.
    sequences: BTreeMap<i64, i32>,
    /// The log start as of the last group commit: retention's deletions are durable from then
    /// on (a crash before it may bring deleted segments back, as in Kafka, whose log start
    /// after an unclean shutdown is its last checkpointed one).
    durable_start: u64,
}

impl Harness {
    fn new(config: LogConfig) -> Harness {
        let storage = MemStorage::new();
        let dir = PathBuf::from("topic-0");
        let (log, store) = LogStore::open(storage.clone(), dir.clone(), config.clone()).unwrap();
        let mut h = Harness {
            storage,
            dir,
            config,
            log,
            store,
            batches: Vec::new(),
            now_ms: 1_000_000,
            sequences: BTreeMap::new(),
            durable_start: 0,
        };
        h.sync();
        h
    }

    fn append(&mut self, records: u8, value_len: usize, producer: Option<i64>) -> Appended {
        let producer = producer.map(|pid| (pid, 0, *self.sequences.get(&pid).unwrap_or(&0)));
        let bytes = batch(records, value_len, self.now_ms as i64, producer);
        let appended = self
            .log
            .append(BytesMut::from(&bytes[..]), 0, self.now_ms)
            .unwrap();
        self.store.apply_all(&mut self.log).unwrap();
        assert!(!appended.duplicate);
        assert_eq!(appended.base_offset, self.next_offset());
        let mut stored = bytes.clone();
        batch::set_base_offset(&mut stored, appended.base_offset as i64);
        self.batches.push(stored);
        if let Some((pid, _, seq)) = producer {
            self.sequences.insert(pid, seq + i32::from(records));
        }
        self.log.check_invariants();
        appended
    }

    fn next_offset(&self) -> u64 {
        self.batches
            .last()
            .map_or(self.log.log_start_offset(), |b| {
                header(b).next_offset() as u64
            })
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
        self.durable_start = self.log.log_start_offset();
    }

    /// Reads from `offset` and checks the result against the model.
    fn check_read(&mut self, offset: u64, max_bytes: u32) {
        let hw = self.log.high_watermark();
        let mut cursor = match self.log.read(offset, max_bytes) {
            Ok(c) => c,
            Err(ReadError::OffsetOutOfRange { .. }) => {
                assert!(offset < self.log.log_start_offset() || offset > self.log.log_end_offset());
                return;
            }
            Err(e) => panic!("read {offset} failed: {e:?}"),
        };
        self.store.read(&mut cursor).unwrap();
        let got = cursor.into_records();
        let expected: Vec<&Vec<u8>> = self
            .batches
            .iter()
            .filter(|b| {
                header(b).last_offset() as u64 >= offset && (header(b).base_offset as u64) < hw
            })
            .collect();
        if offset >= hw {
            assert!(
                got.is_empty(),
                "read at or above the high watermark returned data"
            );
            return;
        }
        // The result is a non-empty prefix of the expected batches, within max_bytes unless it
        // is a single batch (KIP-74).
        let mut at = 0;
        let mut count = 0;
        for b in &expected {
            if at == got.len() {
                break;
            }
            assert_eq!(
                &got[at..at + b.len()],
                &b[..],
                "batch {count} of a read at {offset} differs"
            );
            at += b.len();
            count += 1;
        }
        assert_eq!(
            at,
            got.len(),
            "read returned bytes beyond whole expected batches"
        );
        assert!(
            count >= 1,
            "a read below the high watermark returned nothing"
        );
        assert!(
            count == 1 || got.len() <= max_bytes as usize,
            "read exceeded max_bytes"
        );
        let next = expected.get(count).map(|b| b.len());
        if let Some(next_len) = next {
            // It stopped only because the next batch would not fit (or it hit the segment end).
            let segment_end = self
                .log
                .segments()
                .any(|s| s.next_offset == header(expected[count]).base_offset as u64);
            assert!(
                got.len() + next_len > max_bytes as usize || segment_end,
                "read stopped early"
            );
        }
    }

    /// Simulated power loss and restart.
    fn crash(&mut self, mode: CrashMode) {
        self.restart(mode, true);
    }

    /// Restart; `durable_intact` is false when a test damaged durable data on purpose.
    fn restart(&mut self, mode: CrashMode, durable_intact: bool) {
        let durable_end = self.log.high_watermark();
        self.storage.crash(mode);
        let (log, store) =
            LogStore::open(self.storage.clone(), self.dir.clone(), self.config.clone()).unwrap();
        self.log = log;
        self.store = store;
        self.log.check_invariants();
        // Deletions synced by a group commit stay deleted; later ones may come back.
        assert!(
            self.log.log_start_offset() >= self.durable_start || !durable_intact,
            "segments deleted before a group commit came back: start {} < {}",
            self.log.log_start_offset(),
            self.durable_start
        );
        self.sync();
        // Everything durable survived; unsynced batches may survive only whole and in order.
        let end = self.log.log_end_offset();
        assert!(
            end >= durable_end || !durable_intact,
            "a crash lost durable data: end {end} < durable {durable_end}"
        );
        self.batches
            .retain(|b| (header(b).next_offset() as u64) <= end);
        assert_eq!(self.next_offset(), end, "recovered log ends inside a batch");
        self.sequences.retain(|_, _| true);
        self.check_all();
    }

    /// Reads the whole log from the start and compares it byte for byte.
    fn check_all(&mut self) {
        let mut offset = self.log.log_start_offset();
        let mut seen = Vec::new();
        while offset < self.log.high_watermark() {
            let mut cursor = self.log.read(offset, 1 << 20).unwrap();
            self.store.read(&mut cursor).unwrap();
            let got = cursor.into_records();
            let batches = batch::split_batches(&got).unwrap();
            for (h, range) in batches {
                if h.last_offset() as u64 >= offset {
                    seen.push(got[range].to_vec());
                }
                offset = h.next_offset() as u64;
            }
        }
        let expected: Vec<Vec<u8>> = self
            .batches
            .iter()
            .filter(|b| header(b).base_offset as u64 >= self.log.log_start_offset())
            .cloned()
            .collect();
        let summary = |bs: &[Vec<u8>]| -> Vec<(i64, usize, u32)> {
            bs.iter()
                .map(|b| (header(b).base_offset, b.len(), header(b).crc))
                .collect()
        };
        assert_eq!(
            summary(&seen),
            summary(&expected),
            "the log's contents differ from the model"
        );
        assert!(
            seen == expected,
            "same offsets, sizes and CRCs but different bytes"
        );
    }
}

use std::collections::BTreeMap;

#[test]
fn appends_get_consecutive_offsets_and_read_back_byte_for_byte() {
    let mut h = Harness::new(small_config());
    for i in 0..40u8 {
        h.append(1 + i % 4, 10 + usize::from(i) * 3, None);
    }
    h.sync();
    assert!(
        h.log.segments().count() > 3,
        "small segments must have rolled"
    );
    h.check_all();
    for offset in 0..h.log.log_end_offset() + 1 {
        h.check_read(offset, 200);
    }
}

#[test]
fn reads_stop_at_the_high_watermark_until_the_sync_completes() {
    let mut h = Harness::new(small_config());
    h.append(3, 10, None);
    assert_eq!(h.log.high_watermark(), 0);
    let mut cursor = h.log.read(0, 1000).unwrap();
    h.store.read(&mut cursor).unwrap();
    assert!(cursor.into_records().is_empty());
    let request = h.log.poll_sync().unwrap();
    h.append(2, 10, None);
    assert!(h.log.poll_sync().is_none(), "one group commit at a time");
    h.store.sync_now(&mut h.log, request).unwrap();
    assert_eq!(
        h.log.high_watermark(),
        3,
        "the second append was not covered by the first sync"
    );
    h.sync();
    assert_eq!(h.log.high_watermark(), 5);
}

#[test]
fn a_crash_loses_only_unsynced_batches_and_recovery_rebuilds_producer_state() {
    let mut h = Harness::new(small_config());
    for _ in 0..10 {
        h.append(2, 30, Some(7));
    }
    h.sync();
    let durable = h.log.high_watermark();
    h.append(2, 30, Some(7));
    h.append(2, 30, Some(7));
    h.crash(CrashMode::Clean);
    assert_eq!(h.log.log_end_offset(), durable);
    // The producer's last durable batch is recognised as a duplicate after recovery.
    let last = h.batches.last().unwrap().clone();
    let mut retry = last.clone();
    batch::set_base_offset(&mut retry, 0);
    let appended = h
        .log
        .append(BytesMut::from(&retry[..]), 0, h.now_ms)
        .unwrap();
    assert!(appended.duplicate);
    assert_eq!(appended.base_offset, header(&last).base_offset as u64);
    // And a gap is refused.
    let gap = batch(1, 1, 0, Some((7, 0, 999)));
    let err = h
        .log
        .append(BytesMut::from(&gap[..]), 0, h.now_ms)
        .unwrap_err();
    assert_eq!(err.error_code(), ErrorCode::OutOfOrderSequenceNumber);
}

#[test]
fn a_torn_or_corrupt_tail_is_cut_and_the_log_keeps_serving() {
    for damage in 0..3 {
        let mut h = Harness::new(small_config());
        for _ in 0..6 {
            h.append(2, 40, None);
        }
        h.sync();
        let active = h.log.segments().last().unwrap().base_offset;
        let path = h.dir.join(log_file_name(active));
        let file = h.storage.open(&path, false).unwrap();
        let len = file.len().unwrap();
        match damage {
            0 => file.append(&[0xAB; 100]).unwrap(),
            1 => file.truncate(len - 7).unwrap(),
            _ => assert!(h.storage.flip_bit(&path, (len - 20) * 8)),
        }
        file.sync().unwrap();
        let before = h.batches.len();
        h.restart(CrashMode::Clean, false);
        let lost = before - h.batches.len();
        assert_eq!(lost, if damage == 0 { 0 } else { 1 }, "damage {damage}");
        h.append(1, 5, None);
        h.sync();
        h.check_all();
    }
}

#[test]
fn a_damaged_index_is_rebuilt_and_a_flipped_bit_in_sealed_data_is_never_served() {
    let mut h = Harness::new(small_config());
    for _ in 0..30 {
        h.append(2, 40, None);
    }
    h.sync();
    let sealed: Vec<u64> = h.log.segments().map(|s| s.base_offset).collect();
    assert!(sealed.len() > 2);
    let index = h.dir.join(index_file_name(sealed[1]));
    assert!(h.storage.flip_bit(&index, 70));
    h.crash(CrashMode::Clean);
    h.check_all();
    // Damage the first batch of a sealed segment: reads of it fail, nothing wrong is served.
    let path = h.dir.join(log_file_name(sealed[0]));
    assert!(h.storage.flip_bit(&path, 30 * 8));
    let mut cursor = h.log.read(0, 1000).unwrap();
    let err = h.store.read(&mut cursor).unwrap_err();
    assert_eq!(err.error_code(), ErrorCode::KafkaStorageError);
}

#[test]
fn retention_by_size_and_time_deletes_whole_old_segments() {
    let mut config = small_config();
    config.retention_bytes = 1500;
    let mut h = Harness::new(config.clone());
    for _ in 0..40 {
        h.append(2, 40, None);
    }
    h.sync();
    assert!(h.log.enforce_retention(h.now_ms) > 0);
    h.store.apply_all(&mut h.log).unwrap();
    let sealed_bytes: u64 = h.log.size_bytes() - h.log.segments().last().unwrap().size_bytes;
    assert!(
        h.log.size_bytes() - h.log.segments().next().unwrap().size_bytes < 1500
            || sealed_bytes == 0
    );
    assert!(h.log.log_start_offset() > 0);
    h.check_all();
    let start = h.log.log_start_offset();
    h.sync();
    h.crash(CrashMode::Clean);
    assert_eq!(
        h.log.log_start_offset(),
        start,
        "deleted segments stay deleted after a crash once a group commit synced the directory"
    );

    let mut config = small_config();
    config.retention_ms = 5_000;
    let mut h = Harness::new(config);
    for _ in 0..20 {
        h.append(2, 40, None);
    }
    h.sync();
    assert_eq!(h.log.enforce_retention(h.now_ms), 0, "nothing is old yet");
    h.now_ms += 6_000;
    h.append(1, 1, None);
    h.sync();
    assert!(h.log.enforce_retention(h.now_ms) > 0);
    h.store.apply_all(&mut h.log).unwrap();
    assert_eq!(
        h.log.segments().count(),
        1,
        "only the active segment is left"
    );
    h.check_all();
}

#[test]
fn segments_roll_by_age() {
    let mut h = Harness::new(small_config());
    h.append(1, 1, None);
    h.now_ms += 10_001;
    h.append(1, 1, None);
    assert_eq!(h.log.segments().count(), 2);
}

#[test]
fn timestamp_lookup_finds_the_first_record_at_or_after() {
    let mut h = Harness::new(small_config());
    for _ in 0..30 {
        h.append(3, 20, None);
        h.now_ms += 10;
    }
    h.sync();
    for (i, b) in h.batches.clone().iter().enumerate() {
        let hd = header(b);
        for delta in 0..3 {
            let ts = hd.base_timestamp + delta;
            let mut cursor = h.log.offset_for_timestamp(ts).unwrap();
            h.store.read(&mut cursor).unwrap();
            let hit = cursor.into_timestamp_hit().unwrap();
            assert_eq!(
                hit.offset,
                hd.base_offset as u64 + delta as u64,
                "batch {i} delta {delta}"
            );
            assert_eq!(hit.timestamp, ts);
        }
    }
    assert!(h.log.offset_for_timestamp(i64::MAX).is_none());
}

#[test]
fn a_failed_fsync_never_acknowledges_and_the_cut_drops_what_it_covered() {
    let mut h = Harness::new(small_config());
    h.append(2, 10, None);
    h.sync();
    h.append(2, 10, None);
    h.storage.inject(Faults {
        fail_next_sync: true,
        ..Faults::default()
    });
    let request = h.log.poll_sync().unwrap();
    assert!(h.store.sync_now(&mut h.log, request).is_err());
    assert_eq!(
        h.log.high_watermark(),
        2,
        "the failed sync must not move the high watermark"
    );
    assert!(h
        .log
        .append(BytesMut::from(&batch(1, 1, 0, None)[..]), 0, 0)
        .is_err());
    for op in h.log.failure_cut() {
        h.store.apply(op).unwrap();
    }
    let (log, store) = LogStore::open(h.storage.clone(), h.dir.clone(), h.config.clone()).unwrap();
    h.log = log;
    h.store = store;
    h.batches.truncate(1);
    h.sync();
    h.check_all();
}

#[derive(Clone, Debug)]
enum Step {
    Append {
        records: u8,
        value_len: u16,
        idempotent: bool,
    },
    Sync,
    Read {
        pick: u16,
        max_bytes: u16,
    },
    Retention {
        advance_ms: u16,
    },
    Crash {
        tear: Option<u16>,
    },
    /// A crash that tears every file's unsynced writes (`CrashMode::TearEach`).
    CrashTearEach {
        seed: u64,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (1u8..5, 0u16..120, any::<bool>()).prop_map(|(records, value_len, idempotent)| Step::Append { records, value_len, idempotent }),
        3 => Just(Step::Sync),
        3 => (any::<u16>(), 1u16..800).prop_map(|(pick, max_bytes)| Step::Read { pick, max_bytes }),
        1 => (0u16..3000).prop_map(|advance_ms| Step::Retention { advance_ms }),
        1 => proptest::option::of(0u16..200).prop_map(|tear| Step::Crash { tear }),
        1 => any::<u64>().prop_map(|seed| Step::CrashTearEach { seed }),
    ]
}

proptest! {


    /// Any sequence of appends, group commits, reads, retention runs and crashes keeps the log
    /// equal to the model: nothing durable is lost, nothing unsynced is served, offsets never
    /// change, and reads return exactly the right whole batches.
    #[test]
    fn the_log_matches_the_model(steps in proptest::collection::vec(step(), 1..60), retention in any::<bool>()) {
        let mut config = small_config();
        if retention {
            config.retention_bytes = 2000;
            config.retention_ms = 20_000;
        }
        let mut h = Harness::new(config);
        for step in steps {
            match step {
                Step::Append { records, value_len, idempotent } => {
                    h.append(records, usize::from(value_len), idempotent.then_some(1));
                }
                Step::Sync => h.sync(),
                Step::Read { pick, max_bytes } => {
                    let span = h.log.log_end_offset() + 2;
                    h.check_read(u64::from(pick) % span, u32::from(max_bytes));
                }
                Step::Retention { advance_ms } => {
                    h.now_ms += u64::from(advance_ms);
                    h.log.enforce_retention(h.now_ms);
                    h.store.apply_all(&mut h.log).unwrap();
                    // The model keeps deleted batches: reads compare from the log start, and a
                    // crash before the next group commit may bring them back.
                }
                Step::Crash { .. } | Step::CrashTearEach { .. } => {
                    let mode = match step {
                        Step::Crash { tear: None } => CrashMode::Clean,
                        Step::Crash { tear: Some(keep_bytes) } => CrashMode::TearLastWrite { keep_bytes: u64::from(keep_bytes), garbage: keep_bytes % 2 == 1 },
                        Step::CrashTearEach { seed } => CrashMode::TearEach { seed, garbage: seed % 2 == 1 },
                        _ => unreachable!("a crash step"),
                    };
                    // The producer's sequence must follow what survived.
                    h.crash(mode);
                    let next = h.log.producers().get(1).and_then(|e| e.batches.back()).map(|b| b.last_sequence + 1);
                    match next {
                        Some(seq) => { h.sequences.insert(1, seq); }
                        None => { h.sequences.remove(&1); }
                    }
                }
            }
            h.log.check_invariants();
        }
        h.sync();
        h.check_all();
    }
}

#[test]
fn a_retry_of_an_older_batch_of_the_last_five_is_a_duplicate() {
    let mut h = Harness::new(small_config());
    let b0 = batch(3, 1, 0, Some((0, 0, 0)));
    let b1 = batch(2, 1, 0, Some((0, 0, 3)));
    let a0 = h.log.append(BytesMut::from(&b0[..]), 0, 0).unwrap();
    let a1 = h.log.append(BytesMut::from(&b1[..]), 0, 0).unwrap();
    let a2 = h.log.append(BytesMut::from(&b0[..]), 0, 0).unwrap();
    assert_eq!(
        (a0.base_offset, a1.base_offset, a2.base_offset, a2.duplicate),
        (0, 3, 0, true)
    );
}

#[test]
fn a_flipped_bit_in_a_base_offset_is_caught_although_the_crc_does_not_cover_it() {
    let mut h = Harness::new(small_config());
    for _ in 0..30 {
        h.append(2, 40, None);
    }
    h.sync();
    let first = h.log.segments().next().unwrap().base_offset;
    // Byte 7 is the lowest byte of the first batch's base offset.
    assert!(h.storage.flip_bit(&h.dir.join(log_file_name(first)), 7 * 8));
    for restart in [false, true] {
        if restart {
            h.storage.crash(CrashMode::Clean);
            let (log, store) =
                LogStore::open(h.storage.clone(), h.dir.clone(), h.config.clone()).unwrap();
            (h.log, h.store) = (log, store);
        }
        let mut cursor = h.log.read(0, 1000).unwrap();
        let err = h.store.read(&mut cursor).unwrap_err();
        assert_eq!(
            err.error_code(),
            ErrorCode::KafkaStorageError,
            "restart {restart}"
        );
    }
}

/// Regression, found by the simulator (seed 1880): the first batch of the checkpoint's segment
/// is damaged, recovery cuts that segment away, and the checkpoint must stop vouching for it —
/// otherwise the next roll re-creates a segment at the same base and the log's invariants (and a
/// later recovery) trust a stale checkpoint.
#[test]
fn losing_the_checkpoints_segment_resets_the_checkpoint() {
    let mut h = Harness::new(small_config());
    for _ in 0..20 {
        h.append(2, 40, None);
        h.sync();
    }
    let active = h.log.segments().last().unwrap().base_offset;
    assert!(active > 0);
    // Bit 8 is in the first batch's base offset: recovery's continuity check rejects it.
    assert!(h.storage.flip_bit(&h.dir.join(log_file_name(active)), 8));
    h.restart(CrashMode::Clean, false);
    assert!(
        h.log.log_end_offset() <= active,
        "the damaged segment was cut"
    );
    for _ in 0..20 {
        h.append(2, 40, None);
        h.sync();
    }
    h.log.check_invariants();
    h.crash(CrashMode::Clean);
    h.check_all();
}

/// Recovery tells a torn tail (a prefix of the last write, which was never synced, so never
/// acknowledged) from damage to data that may have been synced (which a Raft replica must
/// repair from its peers before it votes again: see `raft`'s repair mode).
#[test]
fn recovery_tells_a_torn_tail_from_damage_to_synced_data() {
    for case in ["intact", "torn", "flip-last", "flip-first", "garbage"] {
        let mut h = Harness::new(small_config());
        for _ in 0..4 {
            h.append(2, 40, None);
        }
        h.sync();
        let active = h.log.segments().last().unwrap().base_offset;
        let path = h.dir.join(log_file_name(active));
        let file = h.storage.open(&path, false).unwrap();
        let len = file.len().unwrap();
        let last_base = header(h.batches.last().unwrap()).base_offset as u64;
        let expected = match case {
            "intact" => None,
            "torn" => {
                file.truncate(len - 7).unwrap();
                None
            }
            "flip-last" => {
                assert!(h.storage.flip_bit(&path, (len - 20) * 8));
                Some(last_base)
            }
            "flip-first" => {
                // Inside the first batch's records (past its 61-byte header).
                assert!(h.storage.flip_bit(&path, 70 * 8));
                Some(active)
            }
            _ => {
                // A whole batch's length of garbage: the size reached the disk, the data did
                // not. It cannot be told from a flipped bit, so it counts as damage.
                let garbage = vec![0xA5; h.batches.last().unwrap().len()];
                file.append(&garbage).unwrap();
                Some(h.next_offset())
            }
        };
        file.sync().unwrap();
        let mut seen = None;
        let (log, _) = LogStore::open_bounded(
            h.storage.clone(),
            h.dir.clone(),
            h.config.clone(),
            None,
            0,
            |damage| {
                seen = Some(damage);
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(seen.map(|d| d.first_lost), expected, "{case}");
        if let Some(d) = seen {
            // A flipped bit leaves the damaged batch's header readable; garbage does not.
            let header_reads = case != "garbage";
            assert_eq!(d.end > d.first_lost, header_reads, "{case}: {d:?}");
            assert_eq!(
                log.log_end_offset(),
                d.first_lost,
                "{case}: cut at the damage"
            );
        }
    }
}

/// Review finding: a flipped bit in the length field of a synced batch of the newest segment
/// makes the batch seem to run past the end of the file, which `feed_segment` classifies as a
/// torn tail (`cut_by_end`): that batch and every later synced batch are cut, and
/// `Recovery::damage` reports nothing, so a Raft replica starts without repair mode on a log
/// that lost acknowledged entries.
#[test]
fn review_a_flipped_bit_in_a_batch_length_is_damage_not_a_torn_tail() {
    let mut h = Harness::new(small_config());
    for _ in 0..4 {
        h.append(2, 40, None);
    }
    h.sync();
    let end_before = h.log.log_end_offset();
    let active = h.log.segments().last().unwrap().base_offset;
    let path = h.dir.join(log_file_name(active));
    // Byte 9 of the segment's first batch: bits 16..23 of its big-endian batch length (the
    // batch is far smaller, so the bit was 0 and the length grows by 2^20).
    assert!(h.storage.flip_bit(&path, 9 * 8 + 4));
    let mut seen = None;
    let (log, _) = LogStore::open_bounded(
        h.storage.clone(),
        h.dir.clone(),
        h.config.clone(),
        None,
        0,
        |damage| {
            seen = Some(damage);
            Ok(())
        },
    )
    .unwrap();
    assert!(
        log.log_end_offset() < end_before,
        "synced batches were cut: {} < {end_before}",
        log.log_end_offset()
    );
    assert!(
        seen.is_some(),
        "synced batches {}..{end_before} were cut as a torn tail, without damage",
        log.log_end_offset()
    );
}

/// The planted `retention-ignores-high-watermark`: with a tight `retention.bytes`, retention
/// deletes sealed segments not yet synced (on one node: not yet committed), and the retention
/// checker names the deletion past the high watermark.
#[cfg(feature = "planted-bugs")]
#[test]
fn planted_retention_ignores_high_watermark_deletes_uncommitted_segments() {
    use crate::checker::retention::judge;
    use crate::checker::AnomalyKind;
    let mut config = small_config();
    config.retention_bytes = 700;
    config.planted =
        crate::planted::Planted::new(Some(crate::planted::Bug::RetentionIgnoresHighWatermark));
    let mut h = Harness::new(config);
    for _ in 0..10 {
        h.append(2, 40, None);
    }
    h.sync();
    for _ in 0..30 {
        h.append(2, 40, None);
    }
    let high_watermark = h.log.high_watermark();
    assert!(h.log.enforce_retention(h.now_ms) > 0);
    assert!(h.log.log_start_offset() > high_watermark);
    let deletion = h.log.take_deletion().expect("a deletion is reported");
    let problems = judge(&deletion);
    assert!(
        problems
            .iter()
            .any(|(kind, _)| *kind == AnomalyKind::RetentionPastHighWatermark),
        "{problems:?}"
    );
}

/// Retention by size, as the simulator's retention checker sees it: the deletion the log
/// reports is lawful (`checker::retention::judge`), and with the planted off-by-one the
/// checker names the segment it deleted one too many.
#[test]
fn retention_reports_each_deletion_for_the_retention_checker() {
    use crate::checker::retention::judge;
    let run = |config: LogConfig| {
        let mut h = Harness::new(config);
        for _ in 0..40 {
            h.append(2, 40, None);
        }
        h.sync();
        let size_before = h.log.size_bytes();
        assert!(h.log.enforce_retention(h.now_ms) > 0);
        let deletion = h.log.take_deletion().expect("a deletion is reported");
        assert!(h.log.take_deletion().is_none(), "reported once");
        assert_eq!(deletion.size_bytes_before, size_before);
        assert_eq!(deletion.log_start_after, h.log.log_start_offset());
        assert_eq!(deletion.segments_left, h.log.segments().count());
        judge(&deletion)
    };
    let mut config = small_config();
    config.retention_bytes = 1500;
    assert_eq!(run(config.clone()), Vec::new());
    #[cfg(feature = "planted-bugs")]
    {
        use crate::checker::AnomalyKind;
        config.planted =
            crate::planted::Planted::new(Some(crate::planted::Bug::RetentionSizeOffByOne));
        let problems = run(config);
        assert!(
            problems
                .iter()
                .any(|(kind, _)| *kind == AnomalyKind::RetentionEarly),
            "{problems:?}"
        );
    }
}
