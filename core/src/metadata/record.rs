//! The records of the metadata Raft log and their binary encoding.
//!
//! Encoding (all integers big-endian): a format version byte ([`RECORD_VERSION`]), a kind byte,
//! then the record's fields in declaration order. Strings are a `u16` length and UTF-8 bytes
//! (at most [`crate::limits::METADATA_STRING_BYTES_MAX`]); sequences are a `u32` count, then the
//! elements; an `Option` is a 0/1 byte, then the value if 1. A payload decodes only if it is exactly one
//! record: no byte missing, none left over, every count within its limit.

use bytes::BufMut;

use super::codec::{put_count, put_opt_str, put_str, DecodeError, Reader};
use crate::limits::{TOPIC_CONFIGS_MAX, TOPIC_PARTITIONS_MAX, TOPIC_REPLICAS_MAX};

/// A broker's id, as Kafka's wire protocol carries it (INT32). Valid ids are `>= 0`.
pub type BrokerId = i32;
/// A topic id (Kafka's topic UUID, 16 bytes). The all-zero id is never a topic's.
pub type TopicId = [u8; 16];

/// The format version written by [`MetadataRecord::encode`].
pub const RECORD_VERSION: u8 = 1;

/// The replicas of one partition, preferred leader first.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PartitionAssignment {
    pub replicas: Vec<BrokerId>,
}

/// One entry of the metadata log. Records are facts decided by the controller; applying them
/// ([`super::MetadataImage::apply`]) never fails, it ignores what no longer makes sense.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MetadataRecord {
    /// A broker (re)joined with a new `incarnation` (a random id drawn at each start). It is
    /// fenced until an [`MetadataRecord::UnfenceBroker`] follows.
    RegisterBroker {
        node_id: BrokerId,
        incarnation: u64,
        host: String,
        port: u16,
        rack: Option<String>,
    },
    /// The broker must not lead or be placed on: its session expired or it is shutting down.
    FenceBroker {
        node_id: BrokerId,
    },
    /// The broker is caught up and alive.
    UnfenceBroker {
        node_id: BrokerId,
    },
    CreateTopic {
        name: String,
        topic_id: TopicId,
        /// Partition `i` is `partitions[i]`.
        partitions: Vec<PartitionAssignment>,
        /// Config overrides, by Kafka config name.
        configs: Vec<(String, String)>,
    },
    DeleteTopic {
        topic_id: TopicId,
    },
    /// Removes the overrides named in `delete`, then sets those in `set`.
    AlterTopicConfig {
        topic_id: TopicId,
        set: Vec<(String, String)>,
        delete: Vec<String>,
    },
    /// Appends partitions to a topic (Kafka's CreatePartitions).
    CreatePartitions {
        topic_id: TopicId,
        new: Vec<PartitionAssignment>,
    },
    /// Nothing; a controller writes one to commit its term or to test the log.
    NoOp,
    /// Producer ids below `end` are taken: the controller hands them out in blocks (Kafka's
    /// AllocateProducerIds), so ids stay unique across brokers and controller failovers.
    AllocateProducerIds {
        node_id: BrokerId,
        end: i64,
    },
    /// The cluster's id, chosen by the first controller; later ones are ignored.
    SetClusterId {
        cluster_id: [u8; 16],
    },
}

const KIND_REGISTER_BROKER: u8 = 1;
const KIND_FENCE_BROKER: u8 = 2;
const KIND_UNFENCE_BROKER: u8 = 3;
const KIND_CREATE_TOPIC: u8 = 4;
const KIND_DELETE_TOPIC: u8 = 5;
const KIND_ALTER_TOPIC_CONFIG: u8 = 6;
const KIND_CREATE_PARTITIONS: u8 = 7;
const KIND_NO_OP: u8 = 8;
const KIND_ALLOCATE_PRODUCER_IDS: u8 = 9;
const KIND_SET_CLUSTER_ID: u8 = 10;

/// The smallest encodings, for checking counts against the bytes left.
const PAIR_BYTES_MIN: usize = 4;
const STRING_BYTES_MIN: usize = 2;
const ASSIGNMENT_BYTES_MIN: usize = 4;

impl MetadataRecord {
    /// Appends the encoding of this record to `out`.
    ///
    /// # Panics
    /// If a string, count or replica list exceeds its limit: the controller builds records only
    /// from validated requests, so that is a bug, not input.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.put_u8(RECORD_VERSION);
        match self {
            MetadataRecord::RegisterBroker {
                node_id,
                incarnation,
                host,
                port,
                rack,
            } => {
                out.put_u8(KIND_REGISTER_BROKER);
                out.put_i32(*node_id);
                out.put_u64(*incarnation);
                put_str(out, host);
                out.put_u16(*port);
                put_opt_str(out, rack.as_deref());
            }
            MetadataRecord::FenceBroker { node_id } => {
                out.put_u8(KIND_FENCE_BROKER);
                out.put_i32(*node_id);
            }
            MetadataRecord::UnfenceBroker { node_id } => {
                out.put_u8(KIND_UNFENCE_BROKER);
                out.put_i32(*node_id);
            }
            MetadataRecord::CreateTopic {
                name,
                topic_id,
                partitions,
                configs,
            } => {
                out.put_u8(KIND_CREATE_TOPIC);
                put_str(out, name);
                out.put_slice(topic_id);
                put_assignments(out, partitions);
                put_pairs(out, configs.iter().map(|(k, v)| (k, v)));
            }
            MetadataRecord::DeleteTopic { topic_id } => {
                out.put_u8(KIND_DELETE_TOPIC);
                out.put_slice(topic_id);
            }
            MetadataRecord::AlterTopicConfig {
                topic_id,
                set,
                delete,
            } => {
                out.put_u8(KIND_ALTER_TOPIC_CONFIG);
                out.put_slice(topic_id);
                put_pairs(out, set.iter().map(|(k, v)| (k, v)));
                assert!(delete.len() <= TOPIC_CONFIGS_MAX, "too many configs");
                put_count(out, delete.len());
                for name in delete {
                    put_str(out, name);
                }
            }
            MetadataRecord::CreatePartitions { topic_id, new } => {
                out.put_u8(KIND_CREATE_PARTITIONS);
                out.put_slice(topic_id);
                put_assignments(out, new);
            }
            MetadataRecord::NoOp => out.put_u8(KIND_NO_OP),
            MetadataRecord::AllocateProducerIds { node_id, end } => {
                out.put_u8(KIND_ALLOCATE_PRODUCER_IDS);
                out.put_i32(*node_id);
                out.put_i64(*end);
            }
            MetadataRecord::SetClusterId { cluster_id } => {
                out.put_u8(KIND_SET_CLUSTER_ID);
                out.put_slice(cluster_id);
            }
        }
    }

    /// The encoding as a fresh buffer (a Raft entry payload).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }

    /// Decodes exactly one record; any other input is an error, never a panic.
    pub fn decode(bytes: &[u8]) -> Result<MetadataRecord, DecodeError> {
        let mut r = Reader::new(bytes);
        let version = r.u8()?;
        if version != RECORD_VERSION {
            return Err(DecodeError::UnknownVersion(version));
        }
        let record = match r.u8()? {
            KIND_REGISTER_BROKER => MetadataRecord::RegisterBroker {
                node_id: r.i32()?,
                incarnation: r.u64()?,
                host: r.string()?,
                port: r.u16()?,
                rack: r.opt_string()?,
            },
            KIND_FENCE_BROKER => MetadataRecord::FenceBroker { node_id: r.i32()? },
            KIND_UNFENCE_BROKER => MetadataRecord::UnfenceBroker { node_id: r.i32()? },
            KIND_CREATE_TOPIC => MetadataRecord::CreateTopic {
                name: r.string()?,
                topic_id: r.array()?,
                partitions: read_assignments(&mut r)?,
                configs: read_pairs(&mut r)?,
            },
            KIND_DELETE_TOPIC => MetadataRecord::DeleteTopic {
                topic_id: r.array()?,
            },
            KIND_ALTER_TOPIC_CONFIG => {
                let topic_id = r.array()?;
                let set = read_pairs(&mut r)?;
                let n = r.count(STRING_BYTES_MIN, TOPIC_CONFIGS_MAX, "config count")?;
                let delete = (0..n).map(|_| r.string()).collect::<Result<_, _>>()?;
                MetadataRecord::AlterTopicConfig {
                    topic_id,
                    set,
                    delete,
                }
            }
            KIND_CREATE_PARTITIONS => MetadataRecord::CreatePartitions {
                topic_id: r.array()?,
                new: read_assignments(&mut r)?,
            },
            KIND_NO_OP => MetadataRecord::NoOp,
            KIND_ALLOCATE_PRODUCER_IDS => MetadataRecord::AllocateProducerIds {
                node_id: r.i32()?,
                end: r.u64()? as i64,
            },
            KIND_SET_CLUSTER_ID => MetadataRecord::SetClusterId {
                cluster_id: r.array()?,
            },
            other => return Err(DecodeError::UnknownKind(other)),
        };
        r.finish()?;
        Ok(record)
    }
}

pub(super) fn put_assignments(out: &mut Vec<u8>, partitions: &[PartitionAssignment]) {
    assert!(
        partitions.len() <= TOPIC_PARTITIONS_MAX,
        "too many partitions"
    );
    put_count(out, partitions.len());
    for p in partitions {
        assert!(p.replicas.len() <= TOPIC_REPLICAS_MAX, "too many replicas");
        put_count(out, p.replicas.len());
        for id in &p.replicas {
            out.put_i32(*id);
        }
    }
}

pub(super) fn read_assignments(r: &mut Reader) -> Result<Vec<PartitionAssignment>, DecodeError> {
    let n = r.count(
        ASSIGNMENT_BYTES_MIN,
        TOPIC_PARTITIONS_MAX,
        "partition count",
    )?;
    let mut partitions = Vec::with_capacity(n);
    for _ in 0..n {
        let m = r.count(4, TOPIC_REPLICAS_MAX, "replica count")?;
        let replicas = (0..m).map(|_| r.i32()).collect::<Result<_, _>>()?;
        partitions.push(PartitionAssignment { replicas });
    }
    Ok(partitions)
}

pub(super) fn put_pairs<'a>(
    out: &mut Vec<u8>,
    pairs: impl ExactSizeIterator<Item = (&'a String, &'a String)>,
) {
    assert!(pairs.len() <= TOPIC_CONFIGS_MAX, "too many configs");
    put_count(out, pairs.len());
    for (name, value) in pairs {
        put_str(out, name);
        put_str(out, value);
    }
}

pub(super) fn read_pairs(r: &mut Reader) -> Result<Vec<(String, String)>, DecodeError> {
    let n = r.count(PAIR_BYTES_MIN, TOPIC_CONFIGS_MAX, "config count")?;
    (0..n).map(|_| Ok((r.string()?, r.string()?))).collect()
}
