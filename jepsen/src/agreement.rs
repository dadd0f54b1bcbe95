//! Replica agreement after the heal, read from the nodes' disks: every replica of a workload
//! partition, and every node's copy of the metadata log, must hold the same batches, byte for
//! byte, at the same offsets (Raft's Log Matching, checked on what was actually stored, leader
//! epoch field included). The simulator's counterpart is `sim/src/agreement.rs`.
//!
//! The logs are read from each node's backing directory (what its disk holds) while the nodes
//! still run, after the final read. A replica may still be catching up, so the comparison waits
//! (bounded) until every replica of a group ends at the same offset; then it compares the prefix
//! every replica holds. `__consumer_offsets` is left out: each replica compacts on its own, so
//! its bytes differ by design.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sluice_core::batch::BatchHeader;

/// At most this many disagreements are listed.
const PROBLEMS_MAX: usize = 20;

/// The metadata log's directory.
pub const METADATA_GROUP: &str = "__cluster_metadata-0";

/// What the comparison found.
#[derive(Clone, Debug, Default)]
pub struct Agreement {
    /// Batches compared (each offset of each group once, whatever the number of replicas).
    pub batches_compared: u64,
    /// Groups whose replicas never ended at the same offset within the bound: (group, each
    /// node's end).
    pub behind: Vec<(String, Vec<u64>)>,
    pub problems: Vec<String>,
}

/// The batches of the log in `dir` (every `*.log` segment, in offset order), by base offset.
/// A batch that does not parse or does not fit ends its segment's scan (a tail being written,
/// or a torn one).
pub fn batches(dir: &Path) -> BTreeMap<u64, Vec<u8>> {
    let mut segments: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "log"))
                .filter_map(|p| Some((p.file_stem()?.to_str()?.parse::<u64>().ok()?, p)))
                .collect()
        })
        .unwrap_or_default();
    segments.sort();
    let mut out = BTreeMap::new();
    for (_, path) in segments {
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        let mut at = 0;
        while let Ok(header) = BatchHeader::parse(&bytes[at..]) {
            let total = header.total_bytes();
            if total == 0 || at + total > bytes.len() {
                break;
            }
            out.insert(header.base_offset as u64, bytes[at..at + total].to_vec());
            at += total;
        }
    }
    out
}

/// Where a log's batches end (the offset after its last batch).
fn end_of(batches: &BTreeMap<u64, Vec<u8>>) -> u64 {
    batches
        .values()
        .next_back()
        .and_then(|b| BatchHeader::parse(b).ok())
        .map_or(0, |h| h.next_offset() as u64)
}

/// Compares `groups` across the nodes' disks (`disks[i]`: node i+1's backing directory),
/// waiting up to `bound_ms` for the replicas of each group to end at the same offset.
pub fn compare(groups: &[String], disks: &[PathBuf], bound_ms: u64) -> Agreement {
    let deadline = Instant::now() + Duration::from_millis(bound_ms);
    let read = |group: &str| -> Vec<BTreeMap<u64, Vec<u8>>> {
        disks.iter().map(|d| batches(&d.join(group))).collect()
    };
    let mut agreement = Agreement::default();
    for group in groups {
        let mut replicas = read(group);
        loop {
            let ends: Vec<u64> = replicas.iter().map(end_of).collect();
            if ends.iter().all(|e| *e == ends[0]) {
                break;
            }
            if Instant::now() >= deadline {
                agreement.behind.push((group.clone(), ends));
                break;
            }
            std::thread::sleep(Duration::from_millis(250));
            replicas = read(group);
        }
        judge(group, &replicas, &mut agreement);
    }
    agreement
}

/// Every replica's batches below the smallest end must be the same, at the same offsets.
fn judge(group: &str, replicas: &[BTreeMap<u64, Vec<u8>>], agreement: &mut Agreement) {
    let Some(common_end) = replicas.iter().map(end_of).min() else {
        return;
    };
    let mut offsets: BTreeMap<u64, ()> = BTreeMap::new();
    for r in replicas {
        for (&o, b) in r.range(..common_end) {
            // A batch that reaches past the common end is in the prefix only in part.
            if BatchHeader::parse(b).is_ok_and(|h| h.next_offset() as u64 <= common_end) {
                offsets.insert(o, ());
            }
        }
    }
    for &offset in offsets.keys() {
        agreement.batches_compared += 1;
        let held: Vec<Option<&Vec<u8>>> = replicas.iter().map(|r| r.get(&offset)).collect();
        let first = held[0];
        for (i, h) in held.iter().enumerate().skip(1) {
            if *h != first && agreement.problems.len() < PROBLEMS_MAX {
                let describe = |b: Option<&Vec<u8>>| match b {
                    None => "no batch there".to_string(),
                    Some(b) => format!(
                        "epoch {}, {} bytes",
                        BatchHeader::parse(b).map_or(-1, |h| h.partition_leader_epoch),
                        b.len()
                    ),
                };
                agreement.problems.push(format!(
                    "{group}: the batches at offset {offset} (below every replica's end \
                     {common_end}) differ: n1 holds {}, n{} holds {}",
                    describe(first),
                    i + 1,
                    describe(*h)
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::batch::{BatchBuilder, NewRecord};

    fn batch(base: u64, values: &[&[u8]], epoch: i32) -> Vec<u8> {
        let mut b = BatchBuilder::new(0);
        for v in values {
            b.push(&NewRecord {
                timestamp: 0,
                key: None,
                value: Some(v.to_vec()),
                headers: vec![],
            });
        }
        let mut bytes = b.build();
        sluice_core::batch::stamp(&mut bytes, base as i64, epoch);
        bytes
    }

    fn log(batches: &[Vec<u8>]) -> BTreeMap<u64, Vec<u8>> {
        batches
            .iter()
            .map(|b| (BatchHeader::parse(b).unwrap().base_offset as u64, b.clone()))
            .collect()
    }

    #[test]
    fn equal_prefixes_agree_and_a_replica_behind_is_judged_on_its_prefix() {
        let a = [
            batch(0, &[b"a", b"b"], 1),
            batch(2, &[b"c"], 1),
            batch(3, &[b"d"], 2),
        ];
        let mut found = Agreement::default();
        judge("t-0", &[log(&a), log(&a[..2])], &mut found);
        assert!(found.problems.is_empty(), "{:?}", found.problems);
        assert_eq!(found.batches_compared, 2);
    }

    #[test]
    fn a_different_batch_below_the_common_end_is_a_problem() {
        let a = [batch(0, &[b"a"], 1), batch(1, &[b"b"], 1)];
        let b = [batch(0, &[b"a"], 1), batch(1, &[b"x"], 2)];
        let mut found = Agreement::default();
        judge("t-0", &[log(&a), log(&b)], &mut found);
        assert_eq!(found.problems.len(), 1, "{:?}", found.problems);
        assert!(
            found.problems[0].contains("offset 1"),
            "{}",
            found.problems[0]
        );
    }

    #[test]
    fn segments_are_read_in_offset_order_and_a_torn_tail_ends_the_scan() {
        let dir = std::env::temp_dir().join(format!("sluice-agreement-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let first = [batch(0, &[b"a"], 1), batch(1, &[b"b"], 1)].concat();
        let mut second = batch(2, &[b"c"], 1);
        let torn = batch(3, &[b"d"], 1);
        second.extend_from_slice(&torn[..torn.len() - 3]);
        std::fs::write(dir.join("00000000000000000000.log"), first).unwrap();
        std::fs::write(dir.join("00000000000000000002.log"), second).unwrap();
        let read = batches(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(read.keys().copied().collect::<Vec<_>>(), vec![0, 1, 2]);
        assert_eq!(end_of(&read), 3);
    }
}
