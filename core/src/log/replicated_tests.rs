//! The partition log in replicated mode: a Raft replica's storage on `MemStorage`, with a model
//! (the list of batches the replica should hold) and exact expectations for producer state and
//! the leader-epoch cache, rebuilt from the model's batches.

use std::path::PathBuf;

use bytes::Bytes;
use proptest::prelude::*;

use super::testkit::{batch, committed_batches, header, small_config};
use super::*;
use crate::batch::{self, CONTROL_TYPE_LEADER_EPOCH_START, CONTROL_TYPE_MEMBERSHIP};
use crate::storage::{Storage, StorageFile};
use crate::testing::{CrashMode, MemStorage};

/// One replica: the log, its store, and every batch it should hold (stamped), oldest first.
struct Replica {
    storage: MemStorage,
    dir: PathBuf,
    config: LogConfig,
    log: PartitionLog,
    store: LogStore<MemStorage>,
    now_ms: u64,
    batches: Vec<Vec<u8>>,
    /// Every batch ever kept below the log start too (retention), for producer-state replay.
    deleted: Vec<Vec<u8>>,
    /// The log start as of the last group commit: deletions before it are durable, later ones
    /// may be undone by a crash (the segments come back, as in Kafka).
    durable_start: u64,
}

impl Replica {
    fn new(config: LogConfig) -> Replica {
        let storage = MemStorage::new();
        let dir = PathBuf::from("topic-0");
        let (mut log, store) =
            LogStore::open(storage.clone(), dir.clone(), config.clone()).unwrap();
        log.set_replicated();
        let mut r = Replica {
            storage,
            dir,
            config,
            log,
            store,
            now_ms: 1_000_000,
            batches: Vec::new(),
            deleted: Vec::new(),
            durable_start: 0,
        };
        r.sync();
        r
    }

    fn apply(&mut self) {
        self.store.apply_all(&mut self.log).unwrap();
        self.log.check_invariants();
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
        self.log.check_invariants();
        self.durable_start = self.log.log_start_offset();
    }

    /// A producer's batch as the leader stamps it: offset at the log end, `epoch`.
    fn stamped(&self, records: u8, producer: Option<(i64, i16, i32)>, epoch: i32) -> Vec<u8> {
        let mut b = batch(records, 20, self.now_ms as i64, producer);
        batch::stamp(&mut b, self.log.log_end_offset() as i64, epoch);
        b
    }

    fn append(&mut self, bytes: Vec<u8>) -> ReplicaAppended {
        let appended = self
            .log
            .append_replicated(Bytes::from(bytes.clone()), self.now_ms)
            .unwrap();
        self.apply();
        for (_, range) in batch::split_batches(&bytes).unwrap() {
            self.batches.push(bytes[range].to_vec());
        }
        appended
    }

    fn truncate(&mut self, offset: u64) {
        self.log.truncate_suffix(offset).unwrap();
        self.apply();
        self.batches
            .retain(|b| (header(b).base_offset as u64) < offset);
    }

    fn commit(&mut self, offset: u64) {
        self.log.set_high_watermark(offset);
        self.apply();
    }

    fn reopen(&mut self) {
        let (mut log, store) =
            LogStore::open(self.storage.clone(), self.dir.clone(), self.config.clone()).unwrap();
        log.set_replicated();
        self.log = log;
        self.store = store;
        self.log.check_invariants();
        let start = self.log.log_start_offset();
        assert!(
            start >= self.durable_start,
            "segments deleted before a group commit came back: start {start} < {}",
            self.durable_start
        );
        // Deleted segments whose removal no group commit synced are back.
        let back: Vec<Vec<u8>> = self
            .deleted
            .iter()
            .filter(|b| header(b).base_offset as u64 >= start)
            .cloned()
            .collect();
        if !back.is_empty() {
            self.deleted
                .retain(|b| (header(b).base_offset as u64) < start);
            self.batches.splice(0..0, back);
        }
        let end = self.log.log_end_offset();
        self.batches
            .retain(|b| header(b).next_offset() as u64 <= end);
        assert_eq!(
            self.batches
                .last()
                .map_or(self.log.log_start_offset(), |b| header(b).next_offset()
                    as u64),
            end,
            "recovered log ends inside a batch"
        );
    }

    fn crash(&mut self, mode: CrashMode) {
        self.storage.crash(mode);
        self.reopen();
    }

    fn retention(&mut self) {
        self.log.enforce_retention(self.now_ms);
        self.apply();
        let start = self.log.log_start_offset();
        let (gone, kept): (Vec<_>, Vec<_>) = self
            .batches
            .drain(..)
            .partition(|b| (header(b).base_offset as u64) < start);
        self.deleted.extend(gone);
        self.batches = kept;
    }

    /// Raft's read: every durable batch from `offset`, as the log stores it.
    fn read_durable(&mut self, offset: u64) -> Vec<StoredBatch> {
        let mut out = Vec::new();
        let mut at = offset;
        loop {
            let mut cursor = self.log.read_durable(at, 300).unwrap();
            self.store.read(&mut cursor).unwrap();
            let got = cursor.into_batches();
            let Some(last) = got.last() else { break };
            at = last.last_offset + 1;
            out.extend(got);
        }
        out
    }

    /// What a consumer sees: committed batches only.
    fn read_committed(&mut self) -> Vec<Vec<u8>> {
        committed_batches(&self.log, &mut self.store)
            .into_iter()
            .map(|b| b.bytes.to_vec())
            .collect()
    }

    /// The log equals the model: contents, producer state and epoch cache as a fresh replay of
    /// the model's batches would give them.
    fn check(&mut self) {
        let hw = self.log.high_watermark();
        let committed: Vec<Vec<u8>> = self
            .batches
            .iter()
            .filter(|b| (header(b).next_offset() as u64) <= hw)
            .cloned()
            .collect();
        assert!(
            self.read_committed() == committed,
            "committed contents differ"
        );
        let mut producers = ProducerStateTable::new();
        let mut epochs = LeaderEpochCache::new();
        for b in self.deleted.iter().chain(&self.batches) {
            let h = header(b);
            producers.record(&h);
            epochs.assign(h.partition_leader_epoch, h.base_offset as u64);
        }
        epochs.truncate_from_start(self.log.log_start_offset());
        // An empty log (cut back to its start) keeps no epoch, as Kafka's truncateFromEnd.
        epochs.truncate_from_end(self.log.log_end_offset());
        assert_eq!(
            self.log.producers(),
            &producers,
            "producer state differs from a replay"
        );
        assert_eq!(
            self.log.epoch_runs(),
            epochs.entries(),
            "epoch cache differs"
        );
        // Kafka offsets: every batch's as a count of the batches' offsets that are not Raft's
        // own entries, from the first batch ever written (retention forgets none of them).
        let mut kafka = 0u64;
        let start = self.log.log_start_offset();
        for b in self.deleted.iter().chain(&self.batches) {
            let h = header(b);
            let base = h.base_offset as u64;
            if base >= start {
                assert_eq!(
                    self.log.kafka_offset(base),
                    kafka,
                    "the Kafka offset of the batch at {base}"
                );
            }
            if !batch::is_raft_internal_batch(b) {
                kafka += (h.last_offset_delta + 1) as u64;
            }
        }
        assert_eq!(
            self.log.kafka_log_end_offset(),
            kafka,
            "the Kafka log end offset"
        );
    }
}

fn config() -> LogConfig {
    small_config()
}

#[test]
fn replicated_batches_append_at_the_log_end_and_mirror_producer_state() {
    let mut leader = Replica::new(config());
    let mut follower = Replica::new(config());
    let start = batch::leader_epoch_start_batch(0, 1, 5);
    leader.append(start.clone());
    for seq in 0..4 {
        let b = leader.stamped(2, Some((7, 0, seq * 2)), 1);
        leader.append(b);
    }
    // The follower gets them all in one message.
    let all: Vec<u8> = leader.batches.concat();
    let appended = follower.append(all);
    assert_eq!(
        (appended.base_offset, appended.last_offset, appended.batches),
        (0, 8, 5)
    );
    assert_eq!(follower.log.producers(), leader.log.producers());
    assert_eq!(
        follower.log.epoch_runs(),
        &[EpochStart {
            epoch: 1,
            start_offset: 0
        }]
    );
    // Each batch became one Append op at the right place: the store wrote them byte for byte.
    follower.sync();
    let read: Vec<Vec<u8>> = follower
        .read_durable(0)
        .into_iter()
        .map(|b| b.bytes.to_vec())
        .collect();
    assert_eq!(read, leader.batches);
    follower.check();
}

#[test]
fn replicated_appends_refuse_gaps_bad_crcs_and_older_epochs_and_write_nothing() {
    let mut r = Replica::new(config());
    r.append(r.stamped(2, None, 3));
    let ops_before = r.log.log_end_offset();
    let mut gap = batch(1, 5, 0, None);
    batch::stamp(&mut gap, 5, 3);
    assert_eq!(
        r.log.append_replicated(Bytes::from(gap), 0),
        Err(ReplicaAppendError::NotContiguous {
            expected: 2,
            received: 5
        })
    );
    let mut bad = r.stamped(1, None, 3);
    let last = bad.len() - 1;
    bad[last] ^= 1;
    assert!(matches!(
        r.log.append_replicated(Bytes::from(bad), 0),
        Err(ReplicaAppendError::Batch(BatchError::BadCrc { .. }))
    ));
    let old = r.stamped(1, None, 2);
    assert_eq!(
        r.log.append_replicated(Bytes::from(old), 0),
        Err(ReplicaAppendError::EpochDecreased {
            latest: 3,
            received: 2
        })
    );
    // A good batch followed by a bad one: neither is written.
    let good = r.stamped(1, None, 3);
    let mut second = batch(1, 5, 0, None);
    batch::stamp(&mut second, 3, 1);
    assert!(r
        .log
        .append_replicated(Bytes::from([good, second].concat()), 0)
        .is_err());
    assert_eq!(r.log.log_end_offset(), ops_before);
    assert!(r.log.poll_op().is_none(), "a refused append emitted ops");
    r.sync();
    r.check();
}

#[test]
fn the_leader_checks_before_proposing_and_sees_uncommitted_duplicates() {
    let mut r = Replica::new(config());
    let raw = batch(3, 10, 0, Some((9, 0, 0)));
    let header = batch::validate_produce(&raw, 1 << 20).unwrap();
    assert_eq!(r.log.check_produce(&header), Ok(ProduceCheck::Append));
    let mut stamped = raw.clone();
    batch::stamp(&mut stamped, r.log.log_end_offset() as i64, 1);
    r.append(stamped);
    assert_eq!(r.log.high_watermark(), 0, "nothing committed yet");
    // A retry while the batch is still uncommitted is a duplicate with its offsets.
    assert_eq!(
        r.log.check_produce(&header),
        Ok(ProduceCheck::Duplicate(Appended {
            base_offset: 0,
            last_offset: 2,
            duplicate: true
        }))
    );
    let gap = batch::validate_produce(&batch(1, 1, 0, Some((9, 0, 7))), 1 << 20).unwrap();
    assert_eq!(
        r.log.check_produce(&gap).unwrap_err().error_code(),
        ErrorCode::OutOfOrderSequenceNumber
    );
    assert_eq!(r.log.log_end_offset(), 3, "checking appends nothing");
}

#[test]
fn the_high_watermark_follows_the_commit_index_but_never_passes_the_synced_end() {
    let mut r = Replica::new(config());
    for _ in 0..3 {
        r.append(r.stamped(2, None, 1));
    }
    r.commit(4);
    assert_eq!(r.log.high_watermark(), 0, "not synced yet");
    r.sync();
    assert_eq!(
        r.log.high_watermark(),
        4,
        "the sync let it catch up with the commit index"
    );
    assert!(
        r.read_committed().len() == 2,
        "reads stop at the high watermark"
    );
    r.commit(3);
    assert_eq!(r.log.high_watermark(), 4, "never backwards");
    r.commit(100);
    assert_eq!(r.log.high_watermark(), 6, "clamped to the synced end");
    r.append(r.stamped(1, None, 1));
    assert_eq!(r.log.high_watermark(), 6);
    r.sync();
    assert_eq!(
        r.log.high_watermark(),
        7,
        "a commit index ahead of the log is followed later"
    );
    r.check();
}

#[test]
fn truncation_below_the_high_watermark_or_inside_a_batch_is_refused() {
    let mut r = Replica::new(config());
    for _ in 0..4 {
        r.append(r.stamped(2, None, 1));
    }
    r.sync();
    r.commit(4);
    assert_eq!(
        r.log.truncate_suffix(2),
        Err(TruncateError::BelowHighWatermark {
            offset: 2,
            committed: 4
        })
    );
    assert_eq!(
        r.log.truncate_suffix(5),
        Err(TruncateError::NotBatchBoundary { offset: 5 })
    );
    assert_eq!(
        r.log.truncate_suffix(9),
        Err(TruncateError::BeyondLogEnd {
            offset: 9,
            log_end_offset: 8
        })
    );
    assert_eq!(
        r.log.truncate_suffix(8),
        Ok(()),
        "at the log end: nothing to do"
    );
    r.truncate(4);
    assert_eq!(r.log.log_end_offset(), 4);
    r.check();
}

#[test]
fn a_truncated_batch_retried_is_new_again_and_producer_state_is_exactly_rolled_back() {
    let mut r = Replica::new(config());
    // Enough batches of one producer that the table forgot the oldest; truncation must bring
    // them back, not just drop the newest.
    for seq in 0..8 {
        r.append(r.stamped(1, Some((5, 0, seq)), 1));
    }
    r.sync();
    r.commit(3);
    let table_at_3 = {
        let mut t = ProducerStateTable::new();
        for b in &r.batches[..3] {
            t.record(&header(b));
        }
        t
    };
    r.truncate(3);
    assert_eq!(r.log.producers(), &table_at_3);
    // The producer's retry of seq 3 (truncated, never committed) is new data again...
    let retry = batch::validate_produce(&batch(1, 20, 0, Some((5, 0, 3))), 1 << 20).unwrap();
    assert_eq!(r.log.check_produce(&retry), Ok(ProduceCheck::Append));
    // ...while a retry of seq 2 (committed) is still a duplicate.
    let old = batch::validate_produce(&batch(1, 20, 0, Some((5, 0, 2))), 1 << 20).unwrap();
    assert!(matches!(
        r.log.check_produce(&old),
        Ok(ProduceCheck::Duplicate(_))
    ));
    // A new leader's epoch-bumped producer also rolls back to the old epoch.
    r.append(r.stamped(1, Some((5, 1, 0)), 2));
    r.truncate(3);
    assert_eq!(r.log.producers(), &table_at_3);
    r.check();
}

#[test]
fn truncation_across_segments_deletes_later_ones_and_reopens_the_cut_one() {
    let mut r = Replica::new(config());
    for i in 0..30u8 {
        r.append(r.stamped(2, Some((1, 0, i32::from(i) * 2)), 1 + i32::from(i / 10)));
    }
    r.sync();
    let bases: Vec<u64> = r.log.segments().map(|s| s.base_offset).collect();
    assert!(bases.len() > 4, "small segments rolled");
    // Cut in the middle of the second segment, then at a segment base.
    let cut = bases[1] + 2;
    r.commit(bases[1]);
    r.truncate(cut);
    assert_eq!(r.log.segments().count(), 2);
    assert_eq!(
        r.log.epoch_runs().last().unwrap().epoch,
        header(r.batches.last().unwrap()).partition_leader_epoch
    );
    // The reopened segment takes appends and rolls again.
    for i in 0..10 {
        r.append(r.stamped(1, None, 4 + i / 5));
    }
    r.sync();
    r.check();
    let base = r.log.segments().last().unwrap().base_offset;
    r.truncate(base);
    assert_eq!(r.log.log_end_offset(), base);
    r.sync();
    r.check();
    r.crash(CrashMode::Clean);
    r.sync();
    r.check();
}

#[test]
fn truncation_below_synced_data_is_not_durable_until_the_next_sync() {
    for mode in [
        CrashMode::Clean,
        CrashMode::TearLastWrite {
            keep_bytes: 30,
            garbage: false,
        },
        CrashMode::TearLastWrite {
            keep_bytes: 30,
            garbage: true,
        },
    ] {
        let mut r = Replica::new(config());
        for seq in 0..6 {
            r.append(r.stamped(2, Some((3, 0, seq * 2)), 1));
        }
        r.sync();
        r.commit(4);
        assert_eq!(r.log.high_watermark(), 4);
        // Raft truncates synced but uncommitted data and appends a new leader's entries.
        r.truncate(6);
        let start = batch::leader_epoch_start_batch(6, 2, 0);
        r.append(start);
        r.append(r.stamped(3, Some((3, 0, 6)), 2));
        let end = r.log.log_end_offset();
        // Raft may read only what is durable: nothing past the cut yet.
        assert_eq!(r.read_durable(4).last().map(|b| b.last_offset), Some(5));
        r.crash(mode);
        assert_eq!(
            r.log.log_end_offset(),
            6,
            "{mode:?}: unsynced batches after the cut are gone"
        );
        r.sync();
        r.check();
        // Again, synced this time.
        r.append(batch::leader_epoch_start_batch(6, 2, 0));
        r.append(r.stamped(3, Some((3, 0, 6)), 2));
        r.sync();
        assert_eq!(r.log.log_end_offset(), end);
        r.crash(mode);
        assert_eq!(r.log.log_end_offset(), end);
        r.sync();
        r.check();
        assert_eq!(
            r.log.epoch_runs(),
            &[
                EpochStart {
                    epoch: 1,
                    start_offset: 0
                },
                EpochStart {
                    epoch: 2,
                    start_offset: 6
                }
            ]
        );
    }
}

#[test]
fn a_sync_in_flight_during_a_truncation_does_not_vouch_for_what_replaced_the_cut() {
    let mut r = Replica::new(config());
    for _ in 0..4 {
        r.append(r.stamped(2, None, 1));
    }
    let request = r.log.poll_sync().unwrap();
    r.truncate(2);
    r.append(r.stamped(3, None, 2));
    r.store.sync_now(&mut r.log, request).unwrap();
    r.commit(5);
    assert_eq!(
        r.log.high_watermark(),
        2,
        "only the prefix before the cut was covered"
    );
    r.sync();
    assert_eq!(r.log.high_watermark(), 5);
    r.check();
}

#[test]
fn the_epoch_cache_survives_retention_and_recovery() {
    let mut c = config();
    c.retention_bytes = 1500;
    let mut r = Replica::new(c);
    for i in 0..40 {
        let epoch = 1 + i / 8;
        if i % 8 == 0 {
            r.append(batch::leader_epoch_start_batch(
                r.log.log_end_offset() as i64,
                epoch,
                0,
            ));
        }
        r.append(r.stamped(2, None, epoch));
    }
    r.sync();
    r.commit(r.log.log_end_offset());
    // The commit lets the checkpoint advance; the next group commit makes it durable, and only
    // then may retention delete the segments below it.
    r.sync();
    r.retention();
    let start = r.log.log_start_offset();
    assert!(start > 0);
    let runs = r.log.epoch_runs().to_vec();
    assert_eq!(
        runs[0].start_offset, start,
        "the first run covers the log start"
    );
    assert!(runs.len() >= 2);
    r.check();
    // OffsetForLeaderEpoch: below the earliest, an exact epoch, the latest.
    assert_eq!(r.log.end_offset_for_epoch(0), (0, start as i64));
    assert_eq!(
        r.log.end_offset_for_epoch(runs[0].epoch),
        (runs[0].epoch, runs[1].start_offset as i64)
    );
    let latest = runs.last().unwrap().epoch;
    assert_eq!(
        r.log.end_offset_for_epoch(latest),
        (latest, r.log.log_end_offset() as i64)
    );
    assert_eq!(r.log.end_offset_for_epoch(latest + 1), (-1, -1));
    // The checkpoint carries the epochs below it; recovery replays the rest.
    for mode in [
        CrashMode::Clean,
        CrashMode::TearLastWrite {
            keep_bytes: 10,
            garbage: true,
        },
    ] {
        r.append(r.stamped(1, None, latest + 1));
        r.crash(mode);
        r.sync();
        r.check();
    }
    // A full scan (no checkpoint) rebuilds the same cache.
    let before = r.log.epoch_runs().to_vec();
    let checkpoint = r.dir.join(CHECKPOINT_FILE);
    assert!(r.storage.flip_bit(&checkpoint, 40));
    r.reopen();
    assert_eq!(r.log.epoch_runs(), &before[..]);
}

/// Sim seed 35: the leader epoch is outside a batch's CRC, so a flipped bit can raise it. A
/// Raft replica never stores a batch of a term above its stored one, so recovery bounded by that
/// term cuts the batch as damage instead of handing Raft a log whose last term is above its own.
#[test]
fn recovery_bounded_by_the_stored_term_cuts_a_raised_epoch() {
    let mut r = Replica::new(config());
    r.append(batch::leader_epoch_start_batch(0, 1, -1));
    r.append(r.stamped(2, None, 1));
    r.append(batch::leader_epoch_start_batch(3, 2, -1));
    let last = r.stamped(3, None, 2);
    let last_len = last.len() as u64;
    r.append(last);
    r.sync();
    assert_eq!(r.log.epoch_at(0), Some(1));
    assert_eq!(r.log.epoch_at(2), Some(1));
    assert_eq!(r.log.epoch_at(3), Some(2));
    assert_eq!(r.log.epoch_at(6), Some(2));
    let segment = r.dir.join(segment::log_file_name(0));
    let len = r.storage.open(&segment, false).unwrap().len().unwrap();
    // Bit 1 of the epoch's most significant byte (batch byte 12): epoch 2 becomes 0x0200_0002.
    assert!(r.storage.flip_bit(&segment, (len - last_len + 12) * 8 + 1));

    // Unbounded (single-node) recovery cannot tell: the epoch still increases.
    let (log, _) = LogStore::open(r.storage.clone(), r.dir.clone(), r.config.clone()).unwrap();
    assert_eq!(log.log_end_offset(), 7);
    assert_eq!(log.epoch_runs().last().unwrap().epoch, 0x0200_0002);

    let (mut log, store) = LogStore::open_bounded(
        r.storage.clone(),
        r.dir.clone(),
        r.config.clone(),
        Some(2),
        0,
        |_| Ok(()),
    )
    .unwrap();
    log.set_replicated();
    assert_eq!(log.log_end_offset(), 4, "the damaged batch is cut");
    assert_eq!(log.epoch_runs().last().unwrap().epoch, 2);
    assert!(!store.repairs().is_empty(), "the cut is reported");
    log.check_invariants();
}

/// Regression (seed 824 of `--scenario cluster`, 5 nodes): a flipped sign bit of a stored
/// batch's leader epoch (outside the CRC) made it negative, which recovery took for a batch
/// without an epoch and kept; the replica never repaired it, and its committed metadata log
/// differed from its peers'. A replica stores no batch without an epoch: it is damage.
#[test]
fn a_flipped_sign_bit_of_a_replicas_epoch_is_damage() {
    let mut r = Replica::new(config());
    r.append(batch::leader_epoch_start_batch(0, 1, -1));
    let last = r.stamped(2, None, 1);
    let last_len = last.len() as u64;
    r.append(last);
    r.sync();
    let segment = r.dir.join(segment::log_file_name(0));
    let len = r.storage.open(&segment, false).unwrap().len().unwrap();
    // Bit 7 of the epoch's most significant byte (batch byte 12): epoch 1 becomes negative.
    assert!(r.storage.flip_bit(&segment, (len - last_len + 12) * 8 + 7));
    let mut damage = None;
    let (log, store) = LogStore::open_bounded(
        r.storage.clone(),
        r.dir.clone(),
        r.config.clone(),
        Some(1),
        0,
        |d| {
            damage = Some(d);
            Ok(())
        },
    )
    .unwrap();
    assert_eq!(log.log_end_offset(), 1, "the damaged batch is cut");
    assert!(damage.is_some(), "the cut is damage, not a torn tail");
    assert!(!store.repairs().is_empty(), "the cut is reported");
    log.check_invariants();
}

#[test]
fn raft_reads_whole_batches_with_epochs_and_control_types() {
    let mut r = Replica::new(config());
    r.append(batch::leader_epoch_start_batch(0, 4, 0));
    r.append(r.stamped(3, None, 4));
    r.append(batch::membership_batch(4, 4, b"1,2,3", 0));
    r.append(r.stamped(1, None, 4));
    assert!(r.read_durable(0).is_empty(), "nothing durable yet");
    r.sync();
    let got = r.read_durable(0);
    let summary: Vec<_> = got
        .iter()
        .map(|b| (b.base_offset, b.last_offset, b.epoch, b.control_type))
        .collect();
    assert_eq!(
        summary,
        vec![
            (0, 0, 4, Some(CONTROL_TYPE_LEADER_EPOCH_START)),
            (1, 3, 4, None),
            (4, 4, 4, Some(CONTROL_TYPE_MEMBERSHIP)),
            (5, 5, 4, None),
        ]
    );
    assert_eq!(batch::control_value(&got[2].bytes), Some(&b"1,2,3"[..]));
    assert_eq!(
        r.read_committed().len(),
        0,
        "consumers see nothing uncommitted"
    );
    // From the middle: the batch holding the offset comes first.
    assert_eq!(r.read_durable(2)[0].base_offset, 1);
}

#[test]
fn single_node_mode_is_unchanged_and_refuses_an_external_high_watermark() {
    let (mut log, _store) =
        LogStore::open(MemStorage::new(), PathBuf::from("t-0"), config()).unwrap();
    assert!(!log.is_replicated());
    let result =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| log.set_high_watermark(0)));
    assert!(result.is_err());
}

// ------------------------------------------------------------------------------------------------
// The model test: a replica driven through appends by several leaders (epochs), commits,
// truncations of the uncommitted suffix, syncs, retention and crashes.
// ------------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Step {
    Append {
        records: u8,
        pid: Option<i64>,
    },
    NewEpoch,
    Sync,
    Commit {
        pick: u16,
    },
    Truncate {
        pick: u16,
    },
    Retention {
        advance_ms: u16,
    },
    Crash {
        tear: Option<(u16, bool)>,
    },
    /// A crash that tears every file's unsynced writes (`CrashMode::TearEach`).
    CrashTearEach {
        seed: u64,
        garbage: bool,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => (1u8..4, proptest::option::of(1i64..3)).prop_map(|(records, pid)| Step::Append { records, pid }),
        1 => Just(Step::NewEpoch),
        3 => Just(Step::Sync),
        2 => any::<u16>().prop_map(|pick| Step::Commit { pick }),
        2 => any::<u16>().prop_map(|pick| Step::Truncate { pick }),
        1 => (0u16..3000).prop_map(|advance_ms| Step::Retention { advance_ms }),
        1 => proptest::option::of((0u16..200, any::<bool>())).prop_map(|tear| Step::Crash { tear }),
        1 => (any::<u64>(), any::<bool>()).prop_map(|(seed, garbage)| Step::CrashTearEach { seed, garbage }),
    ]
}

/// The next sequence of producer `pid` as the log knows it (what the leader would accept).
fn next_sequence(log: &PartitionLog, pid: i64) -> i32 {
    log.producers()
        .get(pid)
        .and_then(|e| e.batches.back())
        .map_or(0, |b| b.last_sequence + 1)
}

/// Runs `steps` against a replica and its model, checking invariants after every step.
fn run_steps(steps: Vec<Step>, retention: bool) {
    let mut c = config();
    if retention {
        c.retention_bytes = 1500;
        c.retention_ms = 20_000;
    }
    let mut r = Replica::new(c);
    let mut epoch = 1;
    for step in steps {
        match step {
            Step::Append { records, pid } => {
                let producer = pid.map(|pid| (pid, 0, next_sequence(&r.log, pid)));
                let epoch = epoch.max(r.log.epoch_runs().last().map_or(0, |e| e.epoch));
                r.append(r.stamped(records, producer, epoch));
            }
            Step::NewEpoch => {
                epoch = epoch.max(r.log.epoch_runs().last().map_or(0, |e| e.epoch)) + 1;
                r.append(batch::leader_epoch_start_batch(
                    r.log.log_end_offset() as i64,
                    epoch,
                    r.now_ms as i64,
                ));
            }
            Step::Sync => r.sync(),
            Step::Commit { pick } => {
                // Raft commits some batch boundary in the log (possibly not yet synced).
                let bounds: Vec<u64> = r
                    .batches
                    .iter()
                    .map(|b| header(b).next_offset() as u64)
                    .collect();
                if !bounds.is_empty() {
                    r.commit(bounds[usize::from(pick) % bounds.len()]);
                }
            }
            Step::Truncate { pick } => {
                let hw = r.log.high_watermark();
                let cuts: Vec<u64> = r
                    .batches
                    .iter()
                    .map(|b| header(b).base_offset as u64)
                    .filter(|o| *o >= hw)
                    .collect();
                if !cuts.is_empty() {
                    let cut = cuts[usize::from(pick) % cuts.len()];
                    // Raft's commit index never passes an entry it may still truncate.
                    if r.log.truncate_suffix(cut).is_ok() {
                        r.apply();
                        r.batches.retain(|b| (header(b).base_offset as u64) < cut);
                    }
                }
            }
            Step::Retention { advance_ms } => {
                r.now_ms += u64::from(advance_ms);
                r.retention();
            }
            Step::Crash { tear } => {
                let hw = r.log.high_watermark();
                let mode = match tear {
                    None => CrashMode::Clean,
                    Some((keep_bytes, garbage)) => CrashMode::TearLastWrite {
                        keep_bytes: u64::from(keep_bytes),
                        garbage,
                    },
                };
                r.crash(mode);
                assert!(r.log.log_end_offset() >= hw, "a crash lost committed data");
            }
            Step::CrashTearEach { seed, garbage } => {
                let hw = r.log.high_watermark();
                r.crash(CrashMode::TearEach { seed, garbage });
                assert!(r.log.log_end_offset() >= hw, "a crash lost committed data");
            }
        }
        r.log.check_invariants();
    }
    r.sync();
    r.check();
}

/// Shorthands for pinned step lists: an append without and with a producer, a clean crash.
fn a(records: u8) -> Step {
    Step::Append { records, pid: None }
}

fn p(records: u8, pid: i64) -> Step {
    Step::Append {
        records,
        pid: Some(pid),
    }
}

fn crash() -> Step {
    Step::Crash { tear: None }
}

/// Regression (a CI proptest run): retention deleted the checkpoint's segment, so the next
/// crash found a checkpoint naming no segment, rebuilt producer state from what was left and
/// forgot producer 2, whose only batch retention had deleted.
#[test]
fn retention_keeps_the_checkpoint_segment_so_a_crash_keeps_deleted_producers() {
    use Step::*;
    #[rustfmt::skip]
    let steps = vec![
        a(1), a(2), a(3), p(3, 2), a(1), a(2), Sync, a(3), a(3), a(2), a(1), a(2), a(2), a(1),
        a(3), a(2), a(1), a(1), Commit { pick: 43195 }, Sync, Truncate { pick: 0 }, crash(),
        a(3), a(1), Retention { advance_ms: 0 }, crash(),
    ];
    run_steps(steps, true);
}

/// Regression (the same proptest, after the fix above): a cut exactly at the recovery point
/// left the checkpoint's segment empty, recovery deleted it as an empty trailing segment, and
/// the voided checkpoint lost the producer state of a segment retention had deleted.
#[test]
fn a_cut_at_the_recovery_point_keeps_the_checkpoint_segment() {
    use Step::*;
    #[rustfmt::skip]
    let steps = vec![
        a(1), a(1), a(1), a(1), a(1), p(2, 2), Sync, a(3), a(2), a(2), a(1), a(2), a(2), a(1),
        a(3), a(2), a(1), a(3), Commit { pick: 43195 }, a(1), a(3), Sync,
        Retention { advance_ms: 0 }, Truncate { pick: 1437 }, crash(), crash(),
    ];
    run_steps(steps, true);
}

proptest! {
    #[test]
    fn a_replica_matches_the_model_through_truncations_and_crashes(
        steps in proptest::collection::vec(step(), 1..70),
        retention in any::<bool>(),
    ) {
        run_steps(steps, retention);
    }
}

/// A replica's log with Raft's entries among its batches, long enough for retention to delete
/// its first segments: (replica, the Kafka offset of every data batch kept, by log offset).
fn translated_replica(
    mid_epochs: bool,
    anchor_after_retention: bool,
) -> (Replica, Vec<(u64, u64)>) {
    let mut c = config();
    c.retention_bytes = 1500;
    let mut r = Replica::new(c);
    let mut epoch = 1;
    let new_epoch = |r: &mut Replica, epoch: &mut i32| {
        *epoch += 1;
        let kafka = r.log.kafka_log_end_offset() as i64;
        r.append(batch::leader_epoch_start_batch_at(
            r.log.log_end_offset() as i64,
            *epoch,
            kafka,
            -1,
        ));
    };
    new_epoch(&mut r, &mut epoch);
    for round in 0..30 {
        if round == 1 || (mid_epochs && round % 7 == 3) {
            new_epoch(&mut r, &mut epoch);
        }
        r.append(r.stamped(3, None, epoch));
        r.sync();
        let end = r.log.log_end_offset();
        r.commit(end);
    }
    r.retention();
    assert!(r.log.log_start_offset() > 0, "retention deleted nothing");
    if anchor_after_retention {
        new_epoch(&mut r, &mut epoch);
        r.append(r.stamped(2, None, epoch));
        r.sync();
        let end = r.log.log_end_offset();
        r.commit(end);
    }
    r.sync();
    r.check();
    let kafka = r
        .batches
        .iter()
        .map(|b| header(b).base_offset as u64)
        .map(|o| (o, r.log.kafka_offset(o)))
        .collect();
    (r, kafka)
}

#[test]
fn kafka_offsets_survive_a_restart_after_retention() {
    let (mut r, kafka) = translated_replica(true, false);
    assert!(
        kafka.iter().any(|(log, kafka)| log != kafka),
        "no Raft entry below the kept batches"
    );
    r.crash(CrashMode::Clean);
    r.check();
    for (log, k) in kafka {
        assert_eq!(r.log.kafka_offset(log), k, "batch at log offset {log}");
    }
}

#[test]
fn without_its_checkpoint_a_log_recovers_kafka_offsets_from_a_leader_epoch_start() {
    let (mut r, kafka) = translated_replica(true, true);
    r.storage.remove_file(&r.dir.join(CHECKPOINT_FILE)).unwrap();
    r.storage.sync_dir(&r.dir).unwrap();
    r.crash(CrashMode::Clean);
    r.check();
    for (log, k) in kafka {
        assert_eq!(r.log.kafka_offset(log), k, "batch at log offset {log}");
    }
}

#[test]
fn without_its_checkpoint_or_a_named_offset_a_shortened_log_is_not_opened() {
    let (r, _) = translated_replica(false, false);
    // The last leader-epoch start lies below the log start now.
    assert!(r
        .batches
        .iter()
        .all(|b| batch::leader_epoch_start_anchor(b).is_none()));
    r.storage.remove_file(&r.dir.join(CHECKPOINT_FILE)).unwrap();
    r.storage.sync_dir(&r.dir).unwrap();
    r.storage.crash(CrashMode::Clean);
    let err = match LogStore::open(r.storage.clone(), r.dir.clone(), r.config.clone()) {
        Ok((log, _)) => panic!(
            "a log whose Kafka offsets are unknown was opened: start {} {:?}",
            log.log_start_offset(),
            log.offsets()
        ),
        Err(e) => e,
    };
    let message = err.to_string();
    assert!(
        message.contains("topic-0") && message.contains("Kafka offsets"),
        "{message}"
    );
}

/// Regression (sim seed 37 of `retention-cluster`): a producer's batch, then the next term's
/// start, then retention past both. The translator only counts Raft's entries below the log
/// start, so the batch's log offset no longer translates to its Kafka offset (it came out one
/// too low: the offset of the record before it). A retry of that batch must not be answered
/// with it: the broker says DUPLICATE_SEQUENCE_NUMBER (written, offset unknown), as Kafka does
/// for a duplicate whose offsets it has not kept. A retry of a batch above the log start is
/// still answered with its exact offsets.
#[test]
fn a_retry_of_a_batch_below_the_log_start_is_not_answered_with_a_guessed_offset() {
    let mut c = config();
    c.retention_bytes = 1500;
    let mut r = Replica::new(c);
    r.append(batch::leader_epoch_start_batch_at(0, 1, 0, -1));
    r.append(r.stamped(3, None, 1));
    let retried = batch(3, 20, r.now_ms as i64, Some((7, 0, 0)));
    let mut stamped = retried.clone();
    let at = r.log.log_end_offset();
    batch::stamp(&mut stamped, at as i64, 1);
    r.append(stamped);
    let kafka = r.log.kafka_offset(at);
    // The next term starts after it: a Raft entry above the batch, below the later log start.
    let term_start = r.log.log_end_offset();
    r.append(batch::leader_epoch_start_batch_at(
        term_start as i64,
        2,
        r.log.kafka_log_end_offset() as i64,
        -1,
    ));
    for _ in 0..30 {
        r.append(r.stamped(3, None, 2));
        r.sync();
        let end = r.log.log_end_offset();
        r.commit(end);
    }
    let late = batch(2, 20, r.now_ms as i64, Some((8, 0, 0)));
    let mut stamped = late.clone();
    let late_at = r.log.log_end_offset();
    batch::stamp(&mut stamped, late_at as i64, 2);
    r.append(stamped);
    r.sync();
    let end = r.log.log_end_offset();
    r.commit(end);
    let late_kafka = r.log.kafka_offset(late_at);
    r.retention();
    r.sync();
    r.check();
    assert!(
        r.log.log_start_offset() > term_start,
        "retention kept the term start at {term_start}: log start {}",
        r.log.log_start_offset()
    );
    assert_ne!(
        r.log.kafka_offset(at),
        kafka,
        "the translation below the log start is exact here: the test shows nothing"
    );
    let header = batch::validate_produce(&retried, 1 << 20).unwrap();
    match r.log.check_produce(&header) {
        Err(e) => assert_eq!(e.error_code(), ErrorCode::DuplicateSequenceNumber, "{e}"),
        Ok(ProduceCheck::Duplicate(appended)) => panic!(
            "a retry of the batch at Kafka offset {kafka} was answered Kafka offset {}",
            r.log.kafka_offset(appended.base_offset)
        ),
        Ok(ProduceCheck::Append) => panic!("a retry of a batch in the log taken as new"),
    }
    let header = batch::validate_produce(&late, 1 << 20).unwrap();
    match r.log.check_produce(&header) {
        Ok(ProduceCheck::Duplicate(appended)) => {
            assert_eq!(appended.base_offset, late_at);
            assert_eq!(r.log.kafka_offset(appended.base_offset), late_kafka);
        }
        other => panic!("a retry above the log start answered {other:?}"),
    }
}

/// The producer's epoch 1 is in the log, so a batch of its epoch 0 (a zombie incarnation) is
/// refused with INVALID_PRODUCER_EPOCH — unless `no-epoch-fencing` is planted, which takes it.
#[cfg(feature = "planted-bugs")]
#[test]
fn planted_no_epoch_fencing_takes_a_zombies_batch() {
    use crate::planted::{Bug, Planted};
    for bug in [None, Some(Bug::NoEpochFencing)] {
        let mut r = Replica::new(LogConfig {
            planted: Planted::new(bug),
            ..config()
        });
        r.append(r.stamped(1, Some((5, 0, 0)), 1));
        r.append(r.stamped(1, Some((5, 1, 0)), 1));
        let zombie = batch::validate_produce(&batch(1, 20, 0, Some((5, 0, 1))), 1 << 20).unwrap();
        let check = r.log.check_produce(&zombie);
        match bug {
            None => assert_eq!(
                check.unwrap_err().error_code(),
                ErrorCode::InvalidProducerEpoch
            ),
            Some(_) => assert_eq!(check, Ok(ProduceCheck::Append)),
        }
    }
}
