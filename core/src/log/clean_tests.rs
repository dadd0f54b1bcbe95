//! Compaction against a model: random keyed records (with tombstones, keyless records and
//! idempotent producers) in a log of many small segments, cleaned by the real [`LogStore::clean`]
//! on [`MemStorage`]; the model says exactly which records must survive. The crash test cuts the
//! power after every single storage operation of a cleaning in turn.

use std::collections::BTreeMap;
use std::path::PathBuf;

use bytes::BytesMut;
use proptest::prelude::*;

use super::testkit::{committed_batches, small_config};
use super::*;
use crate::batch::{self, BatchBuilder, NewRecord, Records};
use crate::storage::Storage;
use crate::testing::{CrashMode, Faults, MemStorage};

const DELETE_RETENTION_MS: i64 = 1_000;
const NOW_MS: u64 = 3_000;

#[derive(Clone, Debug)]
struct Rec {
    key: Option<u8>,
    /// `None`: a tombstone.
    value: Option<u8>,
    timestamp: i64,
}

#[derive(Clone, Debug)]
struct Spec {
    records: Vec<Rec>,
    producer: Option<i64>,
}

/// A record as read back: what must survive cleaning unchanged.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Seen {
    offset: u64,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    timestamp: i64,
    headers: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

fn spec() -> impl Strategy<Value = Spec> {
    let rec = (
        prop::option::weighted(0.9, 0u8..6),
        prop::option::weighted(0.8, 0u8..40),
        0i64..4_000,
    )
        .prop_map(|(key, value, timestamp)| Rec {
            key,
            value,
            timestamp,
        });
    (
        prop::collection::vec(rec, 1..4),
        prop::option::weighted(0.3, 1i64..3),
    )
        .prop_map(|(records, producer)| Spec { records, producer })
}

fn compact_config() -> LogConfig {
    LogConfig {
        compact: true,
        delete: false,
        delete_retention_ms: DELETE_RETENTION_MS,
        min_cleanable_dirty_ratio_bp: 0,
        ..small_config()
    }
}

struct Rig {
    storage: MemStorage,
    dir: PathBuf,
    config: LogConfig,
    log: PartitionLog,
    store: LogStore<MemStorage>,
    /// The last batch each producer appended, as stored.
    last_batch: BTreeMap<i64, Vec<u8>>,
}

impl Rig {
    fn build(specs: &[Spec]) -> Rig {
        let storage = MemStorage::new();
        let dir = PathBuf::from("t-0");
        let config = compact_config();
        // Written before the topic became compacted, so records without a key are there too
        // (a compacted topic refuses them from then on).
        let written_as = LogConfig {
            compact: false,
            delete: true,
            ..config.clone()
        };
        let (log, store) = LogStore::open(storage.clone(), dir.clone(), written_as).unwrap();
        let mut rig = Rig {
            storage,
            dir,
            config,
            log,
            store,
            last_batch: BTreeMap::new(),
        };
        rig.sync();
        let mut sequences: BTreeMap<i64, i32> = BTreeMap::new();
        for (n, spec) in specs.iter().enumerate() {
            let base_ts = spec.records.iter().map(|r| r.timestamp).min().unwrap();
            let mut b = BatchBuilder::new(base_ts);
            if let Some(pid) = spec.producer {
                b = b.idempotent(pid, 0, *sequences.get(&pid).unwrap_or(&0));
            }
            for (i, r) in spec.records.iter().enumerate() {
                b.push(&NewRecord {
                    timestamp: r.timestamp,
                    key: r.key.map(|k| vec![b'k', k]),
                    value: r.value.map(|len| vec![n as u8; usize::from(len)]),
                    headers: vec![(b"n".to_vec(), Some(vec![n as u8, i as u8]))],
                });
            }
            let bytes = b.build();
            let appended = rig
                .log
                .append(BytesMut::from(&bytes[..]), 0, 1_000_000)
                .unwrap();
            rig.store.apply_all(&mut rig.log).unwrap();
            if let Some(pid) = spec.producer {
                *sequences.entry(pid).or_default() += spec.records.len() as i32;
                let mut stored = bytes.clone();
                batch::set_base_offset(&mut stored, appended.base_offset as i64);
                rig.last_batch.insert(pid, stored);
            }
            rig.sync();
        }
        rig.log.set_config(rig.config.clone());
        rig
    }

    fn sync(&mut self) {
        while let Some(request) = self.log.poll_sync() {
            self.store.sync_now(&mut self.log, request).unwrap();
        }
        assert_eq!(self.log.high_watermark(), self.log.log_end_offset());
    }

    /// Runs cleaning to completion in small slices (so it is resumed many times).
    fn clean(&mut self) -> Option<CleanReport> {
        for _ in 0..100_000 {
            let progress = self.store.clean(&mut self.log, NOW_MS, 300).unwrap();
            assert!(progress.halted.is_none(), "{:?}", progress.halted);
            if !progress.more {
                self.log.check_invariants();
                return progress.finished;
            }
        }
        panic!("cleaning did not finish");
    }

    fn reopen(&mut self) {
        let (log, store) =
            LogStore::open(self.storage.clone(), self.dir.clone(), self.config.clone()).unwrap();
        self.log = log;
        self.store = store;
        // Recovery re-syncs the tail it replayed before serving it.
        self.sync();
        self.log.check_invariants();
    }

    /// Every record below the high watermark, checking that batches tile the offsets.
    fn records(&mut self) -> Vec<Seen> {
        let batches = committed_batches(&self.log, &mut self.store);
        let mut next = self.log.log_start_offset();
        let mut out = Vec::new();
        for b in batches {
            assert_eq!(b.base_offset, next, "batches must tile the offsets");
            next = b.last_offset + 1;
            let header = BatchHeader::parse(&b.bytes).unwrap();
            batch::check_crc(&b.bytes, &header).unwrap();
            assert!(header.record_count <= header.last_offset_delta + 1);
            if header.is_control() {
                continue;
            }
            for r in Records::new(&b.bytes).unwrap() {
                let r = r.unwrap();
                let offset = b.base_offset + r.offset_delta as u64;
                assert!(offset <= b.last_offset);
                out.push(Seen {
                    offset,
                    key: r.key.map(<[u8]>::to_vec),
                    value: r.value.map(<[u8]>::to_vec),
                    timestamp: header.base_timestamp + r.timestamp_delta,
                    headers: r
                        .headers
                        .iter()
                        .map(|(k, v)| (k.to_vec(), v.map(<[u8]>::to_vec)))
                        .collect(),
                });
            }
        }
        assert_eq!(next, self.log.high_watermark());
        out
    }

    /// End of what the next cleaning covers: the end of the sealed segments.
    fn cleanable_end(&self) -> u64 {
        self.log.segments().last().unwrap().base_offset
    }
}

/// What survives a cleaning of `[0, end)` at `NOW_MS`.
fn expected(before: &[Seen], end: u64) -> Vec<Seen> {
    let mut latest: BTreeMap<&[u8], u64> = BTreeMap::new();
    for r in before.iter().filter(|r| r.offset < end) {
        if let Some(k) = &r.key {
            latest.insert(k, r.offset);
        }
    }
    before
        .iter()
        .filter(|r| {
            r.offset >= end
                || match &r.key {
                    None => true,
                    Some(k) => {
                        latest[&k[..]] == r.offset
                            && !(r.value.is_none()
                                && r.timestamp + DELETE_RETENTION_MS <= NOW_MS as i64)
                    }
                }
        })
        .cloned()
        .collect()
}

/// Key -> value of its latest record, for keys whose latest record is not a tombstone.
fn live(records: &[Seen]) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut map = BTreeMap::new();
    for r in records {
        if let Some(k) = &r.key {
            match &r.value {
                Some(v) => map.insert(k.clone(), v.clone()),
                None => map.remove(k),
            };
        }
    }
    map
}

fn check_reads_from_every_offset(rig: &mut Rig, records: &[Seen]) {
    for offset in rig.log.log_start_offset()..rig.log.high_watermark() {
        // As a consumer does: fetch from the offset, then from after the last batch returned,
        // until a record at or after it shows up.
        let mut at = offset;
        let mut first = None;
        while first.is_none() && at < rig.log.high_watermark() {
            let mut cursor = rig.log.read(at, 1 << 20).unwrap();
            rig.store.read(&mut cursor).unwrap();
            let batches = cursor.into_batches();
            assert!(batches[0].base_offset <= at && at <= batches[0].last_offset);
            at = batches.last().unwrap().last_offset + 1;
            first = batches
                .iter()
                .filter(|b| b.control_type.is_none())
                .flat_map(|b| {
                    Records::new(&b.bytes)
                        .unwrap()
                        .map(|r| b.base_offset + r.unwrap().offset_delta as u64)
                        .collect::<Vec<_>>()
                })
                .find(|o| *o >= offset);
        }
        let want = records.iter().map(|r| r.offset).find(|o| *o >= offset);
        assert_eq!(first, want, "read at {offset}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn cleaning_keeps_exactly_the_latest_record_per_key(specs in prop::collection::vec(spec(), 1..60)) {
        let mut rig = Rig::build(&specs);
        let before = rig.records();
        let end = rig.cleanable_end();
        let sealed = rig.log.segments().count() - 1;
        let (start, log_end) = (rig.log.log_start_offset(), rig.log.log_end_offset());
        let report = rig.clean();
        if sealed == 0 {
            prop_assert!(report.is_none());
        } else {
            let report = report.expect("a cleaning ran");
            prop_assert_eq!(report.segments, sealed);
            let want = expected(&before, end);
            prop_assert_eq!(report.records_removed as usize, before.len() - want.len());
        }
        let after = rig.records();
        let want = expected(&before, end);
        prop_assert_eq!(&after, &want);
        prop_assert_eq!(live(&after), live(&before));
        prop_assert_eq!((rig.log.log_start_offset(), rig.log.log_end_offset()), (start, log_end));
        check_reads_from_every_offset(&mut rig, &after);

        // Nothing is left to do, and the cleaned log recovers to the same records.
        prop_assert!(rig.store.clean(&mut rig.log, NOW_MS, u64::MAX).unwrap().finished.is_none());
        rig.reopen();
        prop_assert_eq!(&rig.records(), &want);
        // A second cleaning (after a restart, the whole range again) removes nothing more.
        if let Some(report) = rig.clean() {
            prop_assert_eq!(report.records_removed, 0);
            prop_assert_eq!(report.segments_rewritten, 0);
        }
        prop_assert_eq!(&rig.records(), &want);
        prop_assert!(!rig.storage.paths().iter().any(|p| p.to_string_lossy().ends_with(CLEANED_SUFFIX)));

        // Rebuilt from the log alone (no checkpoint), each idempotent producer's last batch is
        // still known: its retry is a duplicate.
        let checkpoint = rig.dir.join(CHECKPOINT_FILE);
        if rig.storage.exists(&checkpoint) {
            rig.storage.remove_file(&checkpoint).unwrap();
        }
        rig.reopen();
        prop_assert_eq!(&rig.records(), &want);
        // (Checked as the topic was written: the retries may hold records without a key.)
        rig.log.set_config(LogConfig { compact: false, delete: true, ..rig.config.clone() });
        for (pid, last) in rig.last_batch.clone() {
            // A producer's retry carries base offset 0 (Kafka refuses any other).
            let mut retry = BytesMut::from(&last[..]);
            batch::set_base_offset(&mut retry, 0);
            let appended = rig.log.append(retry, 0, 1_000_000).unwrap();
            prop_assert!(appended.duplicate, "producer {}: retry appended again", pid);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn a_crash_at_any_point_of_a_cleaning_loses_nothing(
        specs in prop::collection::vec(spec(), 10..40),
        tear in any::<bool>(),
    ) {
        let mut reference = Rig::build(&specs);
        let before = reference.records();
        let want = expected(&before, reference.cleanable_end());
        for cut in 0u64.. {
            let mut rig = Rig::build(&specs);
            rig.storage.inject(Faults { power_cut_after_ops: Some(cut), ..Faults::default() });
            let mut finished = false;
            for _ in 0..100_000 {
                match rig.store.clean(&mut rig.log, NOW_MS, 300) {
                    Ok(p) if p.more => continue,
                    Ok(_) => finished = true,
                    Err(_) => rig.log.on_storage_failed(),
                }
                break;
            }
            let mode = if tear {
                CrashMode::TearLastWrite { keep_bytes: 17, garbage: true }
            } else {
                CrashMode::Clean
            };
            rig.storage.crash(mode);
            rig.reopen();
            prop_assert!(!rig.storage.paths().iter().any(|p| p.to_string_lossy().ends_with(CLEANED_SUFFIX)));
            let after = rig.records();
            // Each segment is the old one or the cleaned one: every record is an original one,
            // everything the cleaning keeps is there, and each key reads the same.
            prop_assert!(after.iter().all(|r| before.contains(r)));
            let missing: Vec<_> = want.iter().filter(|r| !after.contains(r)).collect();
            prop_assert!(missing.is_empty(), "cut {}: missing {:?}", cut, missing);
            prop_assert_eq!(live(&after), live(&before));
            // And cleaning again completes to exactly the model.
            rig.clean();
            prop_assert_eq!(&rig.records(), &want);
            if finished {
                break;
            }
        }
    }
}

/// Batches that lose all their records collapse into one empty batch per run within a leader
/// epoch, so epoch starts (Raft's term boundaries) stay where they were, and a follower fed the
/// cleaned batches accepts them.
#[test]
fn removed_batches_collapse_per_epoch_and_replicas_accept_cleaned_batches() {
    let storage = MemStorage::new();
    let dir = PathBuf::from("r-0");
    let config = LogConfig {
        segment_bytes_max: 400,
        ..compact_config()
    };
    let (mut log, mut store) =
        LogStore::open(storage.clone(), dir.clone(), config.clone()).unwrap();
    log.set_replicated();
    let mut offset = 0;
    let mut stamped = Vec::new();
    for epoch in 1..=3 {
        let start = batch::leader_epoch_start_batch(offset, epoch, 10);
        offset += 1;
        stamped.push(start);
        for _ in 0..4 {
            let mut b = BatchBuilder::new(10);
            b.push(&NewRecord {
                timestamp: 10,
                key: Some(b"same".to_vec()),
                value: Some(vec![epoch as u8; 30]),
                headers: vec![],
            });
            let mut bytes = b.build();
            batch::stamp(&mut bytes, offset, epoch);
            offset += 1;
            stamped.push(bytes);
        }
    }
    for b in &stamped {
        log.append_replicated(bytes::Bytes::from(b.clone()), 1_000)
            .unwrap();
        store.apply_all(&mut log).unwrap();
        while let Some(request) = log.poll_sync() {
            store.sync_now(&mut log, request).unwrap();
        }
        log.set_high_watermark(log.log_end_offset());
    }
    while let Some(request) = log.poll_sync() {
        store.sync_now(&mut log, request).unwrap();
    }
    let epochs_before = log.epoch_runs().to_vec();
    let report = loop {
        let p = store.clean(&mut log, NOW_MS, u64::MAX).unwrap();
        if !p.more {
            break p.finished.expect("a cleaning ran");
        }
    };
    assert!(report.records_removed > 0, "{report:?}");
    assert_eq!(log.epoch_runs(), &epochs_before[..]);
    let cleaned = committed_batches(&log, &mut store);
    for w in cleaned.windows(2) {
        assert_eq!(w[0].last_offset + 1, w[1].base_offset);
        // Two empty batches in a row only across an epoch change or a segment boundary.
        let empty = |b: &StoredBatch| BatchHeader::parse(&b.bytes).unwrap().record_count == 0;
        let boundary = log.segments().any(|s| s.base_offset == w[1].base_offset);
        if empty(&w[0]) && empty(&w[1]) && !boundary {
            assert_ne!(w[0].epoch, w[1].epoch);
        }
    }
    // A replica that never cleaned appends the cleaned batches as they come.
    let (mut follower, mut fstore) =
        LogStore::open(storage.clone(), PathBuf::from("f-0"), config.clone()).unwrap();
    follower.set_replicated();
    for b in &cleaned {
        follower.append_replicated(b.bytes.clone(), 1_000).unwrap();
        fstore.apply_all(&mut follower).unwrap();
    }
    assert_eq!(follower.log_end_offset(), log.log_end_offset());
    assert_eq!(follower.epoch_runs(), log.epoch_runs());
    // And after a restart the epochs come back the same from the cleaned segments.
    drop((log, store));
    let (log, _) = LogStore::open(storage, dir, config).unwrap();
    assert_eq!(log.epoch_runs(), &epochs_before[..]);
}

/// A flipped bit in a sealed segment stops the cleaning: the damage is never rewritten under a
/// fresh CRC, and nothing changes.
/// The planted `cleaner-drops-latest`: the rewrite counts a key's latest record as superseded
/// by itself, so a cleaning loses the latest value of every key in the cleaned range.
#[cfg(feature = "planted-bugs")]
#[test]
fn planted_cleaner_drops_latest_loses_the_latest_values() {
    let specs: Vec<Spec> = (0..30u8)
        .map(|n| Spec {
            records: vec![Rec {
                key: Some(n % 3),
                value: Some(5 + n),
                timestamp: 0,
            }],
            producer: None,
        })
        .collect();
    let mut rig = Rig::build(&specs);
    rig.config.planted =
        crate::planted::Planted::new(Some(crate::planted::Bug::CleanerDropsLatest));
    rig.log.set_config(rig.config.clone());
    let before = rig.records();
    let end = rig.cleanable_end();
    assert!(end > 0, "no sealed segment to clean");
    rig.clean().expect("a cleaning ran");
    let after = rig.records();
    assert!(
        after.len() < expected(&before, end).len(),
        "the latest records were kept"
    );
    assert_ne!(live(&after), live(&before));
}

#[test]
fn damage_halts_cleaning_and_changes_nothing() {
    let specs: Vec<Spec> = (0..30)
        .map(|i| Spec {
            records: vec![Rec {
                key: Some(i % 3),
                value: Some(20),
                timestamp: 5_000,
            }],
            producer: None,
        })
        .collect();
    let mut rig = Rig::build(&specs);
    let first = rig.log.segments().next().unwrap().base_offset;
    let path = rig.dir.join(log_file_name(first));
    assert!(rig.storage.flip_bit(&path, 8 * 70));
    let bytes_before = rig.storage.read_file(&path).unwrap();
    let progress = rig.store.clean(&mut rig.log, NOW_MS, u64::MAX).unwrap();
    let halted = progress.halted.expect("the damage was noticed");
    assert!(halted.to_string().contains("damaged"), "{halted}");
    assert_eq!(rig.storage.read_file(&path).unwrap(), bytes_before);
    assert!(
        !rig.log.cleaning_due(NOW_MS),
        "no cleaning until the partition is reopened"
    );
    assert!(!rig
        .storage
        .paths()
        .iter()
        .any(|p| p.to_string_lossy().ends_with(CLEANED_SUFFIX)));
}

/// Retention does not apply to a compact-only topic; a kept tombstone makes a cleaning due once
/// it is old enough to go.
#[test]
fn compacted_topics_skip_retention_and_tombstones_expire_later() {
    let specs: Vec<Spec> = (0..40)
        .map(|i| Spec {
            records: vec![Rec {
                key: Some(if i == 12 { 9 } else { i % 4 }),
                value: if i == 12 { None } else { Some(20) },
                timestamp: 2_500,
            }],
            producer: None,
        })
        .collect();
    let mut rig = Rig::build(&specs);
    rig.log.set_config(LogConfig {
        retention_ms: 0,
        retention_bytes: 0,
        ..rig.config.clone()
    });
    assert_eq!(rig.log.enforce_retention(1_000_000), 0);
    rig.clean().expect("cleaned");
    let tombstone_kept = rig.records().iter().any(|r| r.value.is_none());
    assert!(
        tombstone_kept,
        "the tombstone is younger than delete.retention.ms"
    );
    assert!(!rig.log.cleaning_due(NOW_MS));
    // At 2_500 + 1_000 it may go.
    assert!(rig.log.cleaning_due(3_500));
    let progress = rig.store.clean(&mut rig.log, 3_500, u64::MAX).unwrap();
    assert_eq!(progress.finished.map(|r| r.tombstones_removed), Some(1));
    assert!(rig.records().iter().all(|r| r.value.is_some()));
}

/// A compacted topic refuses a record without a key (INVALID_RECORD), as Kafka does.
#[test]
fn a_compacted_topic_refuses_records_without_a_key() {
    let mut rig = Rig::build(&[]);
    let mut b = BatchBuilder::new(10);
    b.push(&NewRecord {
        timestamp: 10,
        key: Some(b"k".to_vec()),
        value: Some(b"v".to_vec()),
        headers: vec![],
    });
    b.push(&NewRecord {
        timestamp: 10,
        key: None,
        value: Some(b"v".to_vec()),
        headers: vec![],
    });
    let err = rig
        .log
        .append(BytesMut::from(&b.build()[..]), 0, 1_000_000)
        .unwrap_err();
    assert_eq!(err.error_code(), crate::ErrorCode::InvalidRecord);
    rig.log.set_config(LogConfig {
        compact: false,
        delete: true,
        ..rig.config.clone()
    });
    assert!(rig
        .log
        .append(BytesMut::from(&b.build()[..]), 0, 1_000_000)
        .is_ok());
}
