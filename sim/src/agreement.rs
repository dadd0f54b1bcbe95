//! Replica agreement at the end of a run, byte for byte: every batch below a replica's committed
//! end (as it last reported it) is read from its disk and compared with the other replicas'
//! batches at the same offset. Raft's Log Matching promises identical committed prefixes; this
//! checks what was actually stored, leader epoch field included.

use std::collections::BTreeMap;
use std::path::Path;

use sluice_core::batch::BatchHeader;
use sluice_core::checker::replicas::ReplicaChecker;
use sluice_core::testing::MemStorage;

use crate::client::TOPIC;
use crate::nemesis::Cluster;

/// The metadata log's directory (and Raft group name).
const METADATA_GROUP: &str = "__cluster_metadata-0";

/// At most this many disagreements are listed.
const PROBLEMS_MAX: usize = 10;

/// The batches of the log in directory `group` on `storage` that end at or below `end`, by base
/// offset. A batch that does not parse ends the scan of its segment (a torn tail).
pub(crate) fn committed_batches(
    storage: &MemStorage,
    group: &str,
    end: u64,
) -> BTreeMap<u64, Vec<u8>> {
    let mut segments: Vec<(u64, std::path::PathBuf)> = storage
        .paths()
        .into_iter()
        .filter(|p| p.parent() == Some(Path::new(group)))
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .filter_map(|p| {
            let base = p.file_stem()?.to_str()?.parse::<u64>().ok()?;
            Some((base, p))
        })
        .collect();
    segments.sort();
    let mut batches = BTreeMap::new();
    for (_, path) in segments {
        let Some(bytes) = storage.read_file(&path) else {
            continue;
        };
        let mut at = 0;
        while let Ok(header) = BatchHeader::parse(&bytes[at..]) {
            let total = header.total_bytes();
            if at + total > bytes.len() || header.next_offset() as u64 > end {
                break;
            }
            batches.insert(header.base_offset as u64, bytes[at..at + total].to_vec());
            at += total;
        }
    }
    batches
}

/// Every broker whose last reported metadata image differs from a replay, from scratch, of its
/// stored metadata log up to where it had applied it (`checker::images`).
pub fn image_replays(cluster: &Cluster, checker: &ReplicaChecker) -> Vec<String> {
    if cluster.brokers.len() < 2 {
        return Vec::new();
    }
    let mut problems = Vec::new();
    for (node, applied_end, image) in checker.metadata_images() {
        let Some(broker) = cluster.brokers.get(node as usize) else {
            continue;
        };
        let batches = committed_batches(&broker.storage, METADATA_GROUP, applied_end);
        let stored_end = batches
            .values()
            .next_back()
            .and_then(|b| BatchHeader::parse(b).ok())
            .map_or(0, |h| h.next_offset() as u64);
        if stored_end < applied_end {
            // The log no longer holds what the image was built from: the broker restarted since
            // it reported the image, found damage and cut its log, and is repairing it (its new
            // image is reported once it applies that far again). Committed agreement judges
            // the log itself.
            continue;
        }
        if let Some(v) = sluice_core::checker::images::check_replay(
            node,
            image,
            applied_end,
            batches.values().map(Vec::as_slice),
        ) {
            problems.push(v.to_string());
        }
    }
    problems
}

/// Every disagreement between replicas' committed batches, for the workload topic's
/// partitions and the metadata log.
pub fn compare(cluster: &Cluster, checker: &ReplicaChecker) -> Vec<String> {
    if cluster.brokers.len() < 2 {
        return Vec::new();
    }
    let mut groups: Vec<String> = (0..cluster.partitions)
        .map(|p| format!("{TOPIC}-{p}"))
        .collect();
    groups.push(METADATA_GROUP.to_string());
    let mut problems = Vec::new();
    for group in &groups {
        // Offset -> (broker, batch) of the first replica seen holding it.
        let mut seen: BTreeMap<u64, (usize, Vec<u8>)> = BTreeMap::new();
        for (b, broker) in cluster.brokers.iter().enumerate() {
            let Some(end) = checker.committed_end(group, b as u64) else {
                continue;
            };
            for (offset, batch) in committed_batches(&broker.storage, group, end) {
                match seen.get(&offset) {
                    Some((first, theirs)) if *theirs != batch => {
                        if problems.len() < PROBLEMS_MAX {
                            let epoch = |b: &[u8]| {
                                BatchHeader::parse(b).map_or(-1, |h| h.partition_leader_epoch)
                            };
                            problems.push(format!(
                                "group {group}: committed batches at offset {offset} differ \
                                 between broker {first} (epoch {}, {} bytes) and broker {b} \
                                 (epoch {}, {} bytes)",
                                epoch(theirs),
                                theirs.len(),
                                epoch(&batch),
                                batch.len()
                            ));
                        }
                    }
                    Some(_) => {}
                    None => {
                        seen.insert(offset, (b, batch));
                    }
                }
            }
        }
    }
    problems
}
