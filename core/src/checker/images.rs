//! Metadata image replay: every node's metadata image (built incrementally as records commit,
//! across controller changes and restarts) equals the image a replay of that node's metadata log
//! from scratch builds ([`replay_metadata_log`]). The image is a function of the log, so any
//! difference is state that a restart, or another node, would not have: a change applied
//! without a record, or an apply that depends on history.

use super::replicas::Violation;
use crate::metadata::{replay_metadata_log, MetadataImage};

/// The metadata log's Raft group, as violations name it.
pub const METADATA_GROUP: &str = "__cluster_metadata-0";

/// Compares `live`, the image `node` reported after applying the log below `applied_end`, with
/// a replay of `batches`: the node's stored metadata log batches that end at or below
/// `applied_end`, in offset order.
pub fn check_replay<'a>(
    node: u64,
    live: &MetadataImage,
    applied_end: u64,
    batches: impl IntoIterator<Item = &'a [u8]>,
) -> Option<Violation> {
    let violation = |detail: String| {
        Some(Violation {
            group: METADATA_GROUP.to_string(),
            detail: format!("broker {node}: {detail}"),
        })
    };
    let replayed = match replay_metadata_log(batches) {
        Ok(image) => image,
        Err(e) => {
            return violation(format!(
                "its metadata log below {applied_end} does not replay: {e:?}"
            ))
        }
    };
    if replayed == *live {
        return None;
    }
    violation(format!(
        "its metadata image after applying the log below {applied_end} differs from a replay \
         of that log from scratch: {}",
        difference(live, &replayed)
    ))
}

/// The first difference between a live image and a replayed one, in words.
fn difference(live: &MetadataImage, replayed: &MetadataImage) -> String {
    if live.last_applied_offset() != replayed.last_applied_offset() {
        return format!(
            "last applied offset {:?}, replayed {:?}",
            live.last_applied_offset(),
            replayed.last_applied_offset()
        );
    }
    for topic in live.topics() {
        match replayed.topic_by_name(&topic.name) {
            None => return format!("topic {:?} exists only live", topic.name),
            Some(r) if r.configs != topic.configs => {
                return format!(
                    "topic {:?} has configs {:?}, replayed {:?}",
                    topic.name, topic.configs, r.configs
                )
            }
            Some(r) if r != topic => {
                return format!("topic {:?} differs: {topic:?}, replayed {r:?}", topic.name)
            }
            Some(_) => {}
        }
    }
    if let Some(t) = replayed
        .topics()
        .find(|t| live.topic_by_name(&t.name).is_none())
    {
        return format!("topic {:?} exists only in the replay", t.name);
    }
    if !live.brokers().eq(replayed.brokers()) {
        return "the broker registrations differ".into();
    }
    "the producer id blocks or the cluster id differ".into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{BatchBuilder, NewRecord};
    use crate::metadata::{MetadataRecord, PartitionAssignment};

    /// One metadata batch at `base` holding `records`.
    fn batch(base: u64, records: &[MetadataRecord]) -> Vec<u8> {
        let mut builder = BatchBuilder::new(0);
        for r in records {
            builder.push(&NewRecord {
                timestamp: 0,
                key: None,
                value: Some(r.to_bytes()),
                headers: vec![],
            });
        }
        let mut bytes = builder.build();
        bytes[..8].copy_from_slice(&(base as i64).to_be_bytes());
        // The CRC covers the attributes onwards, not the base offset: still valid.
        bytes
    }

    fn log() -> (Vec<Vec<u8>>, Vec<(u64, MetadataRecord)>) {
        let topic_id = [7; 16];
        let records = vec![
            MetadataRecord::RegisterBroker {
                node_id: 0,
                incarnation: 1,
                host: "h".into(),
                port: 9092,
                rack: None,
            },
            MetadataRecord::CreateTopic {
                name: "cfg".into(),
                topic_id,
                partitions: vec![PartitionAssignment { replicas: vec![0] }],
                configs: vec![],
            },
            MetadataRecord::AlterTopicConfig {
                topic_id,
                set: vec![("segment.bytes".into(), "4096".into())],
                delete: vec![],
            },
        ];
        let batches = vec![batch(0, &records[..2]), batch(2, &records[2..])];
        let numbered = records
            .into_iter()
            .enumerate()
            .map(|(i, r)| (i as u64, r))
            .collect();
        (batches, numbered)
    }

    #[test]
    fn an_image_applied_record_by_record_equals_the_replay() {
        let (batches, records) = log();
        let mut live = MetadataImage::new();
        for (offset, record) in &records {
            live.apply(*offset, record);
        }
        assert_eq!(
            check_replay(1, &live, 3, batches.iter().map(Vec::as_slice)),
            None
        );
        let replayed = replay_metadata_log(batches.iter().map(Vec::as_slice)).unwrap();
        let topic = replayed.topic_by_name("cfg").unwrap();
        assert_eq!(topic.configs["segment.bytes"], "4096");
    }

    #[test]
    fn a_config_change_no_record_carries_is_a_violation() {
        let (batches, records) = log();
        let mut live = MetadataImage::new();
        for (offset, record) in &records[..2] {
            live.apply(*offset, record);
        }
        // The change reached the live image, but the log holds only the first batch.
        live.apply(2, &records[2].1);
        let v = check_replay(1, &live, 2, batches[..1].iter().map(Vec::as_slice))
            .expect("the live image has a config the log does not");
        assert_eq!(v.group, METADATA_GROUP);
        assert!(v.detail.contains("last applied offset"), "{v}");
        // Same offsets, different configs.
        let mut live = MetadataImage::new();
        for (offset, record) in &records[..2] {
            live.apply(*offset, record);
        }
        live.apply(
            2,
            &MetadataRecord::AlterTopicConfig {
                topic_id: [7; 16],
                set: vec![("segment.bytes".into(), "8192".into())],
                delete: vec![],
            },
        );
        let v = check_replay(1, &live, 3, batches.iter().map(Vec::as_slice)).unwrap();
        assert!(v.detail.contains("has configs"), "{v}");
    }

    #[test]
    fn a_log_with_a_hole_does_not_replay() {
        let (batches, _) = log();
        let v = check_replay(
            1,
            &MetadataImage::new(),
            3,
            batches[1..].iter().map(Vec::as_slice),
        )
        .unwrap();
        assert!(v.detail.contains("does not replay"), "{v}");
    }
}
