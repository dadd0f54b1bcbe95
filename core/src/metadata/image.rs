//! The cluster metadata as every node holds it: the result of applying the committed metadata
//! records in order. Applying is total and deterministic, so every node that applied the same
//! prefix of the log holds an equal image.

use std::collections::BTreeMap;

use bytes::BufMut;

use super::codec::{put_count, put_opt_str, put_str, DecodeError, Reader};
use super::record::{
    put_assignments, put_pairs, read_assignments, read_pairs, BrokerId, MetadataRecord,
    PartitionAssignment, TopicId,
};
use super::topic_config::validate_topic_name;
use crate::limits::{TOPIC_PARTITIONS_MAX, TOPIC_REPLICAS_MAX};

/// The format version written by [`MetadataImage::encode`].
pub const IMAGE_VERSION: u8 = 1;

/// A registered broker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerRegistration {
    pub node_id: BrokerId,
    /// Drawn by the broker at each start; a new one means the broker restarted.
    pub incarnation: u64,
    pub host: String,
    pub port: u16,
    pub rack: Option<String>,
    /// A fenced broker is not live: no new replicas are placed on it and it leads nothing.
    pub fenced: bool,
}

/// A topic: its partitions' replica sets and its config overrides.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topic {
    pub name: String,
    pub topic_id: TopicId,
    /// Partition `i` is `partitions[i]`. All have the same number of replicas.
    pub partitions: Vec<PartitionAssignment>,
    pub configs: BTreeMap<String, String>,
}

impl Topic {
    pub fn replication_factor(&self) -> usize {
        self.partitions[0].replicas.len()
    }
}

/// What [`MetadataImage::apply`] did with a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    Changed,
    /// The record made no sense against this image (and changed nothing); why.
    Ignored(&'static str),
}

/// The applied state of the metadata log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MetadataImage {
    /// Keyed by `node_id`. Brokers are never removed, so replicas always name a registered one.
    brokers: BTreeMap<BrokerId, BrokerRegistration>,
    /// Keyed by `topic_id`.
    topics: BTreeMap<TopicId, Topic>,
    /// Name to id, exactly one entry per topic.
    topic_ids: BTreeMap<String, TopicId>,
    /// The offset of the last record applied; offsets only grow.
    last_applied_offset: Option<u64>,
    /// Producer ids below this are allocated (0 until the first block).
    producer_id_end: i64,
    /// Set once, by the first controller.
    cluster_id: Option<[u8; 16]>,
}

impl MetadataImage {
    /// The image before the first record.
    pub fn new() -> MetadataImage {
        MetadataImage::default()
    }

    pub fn last_applied_offset(&self) -> Option<u64> {
        self.last_applied_offset
    }

    /// Producer ids below this have been handed out in blocks.
    pub fn producer_id_end(&self) -> i64 {
        self.producer_id_end
    }

    pub fn cluster_id(&self) -> Option<[u8; 16]> {
        self.cluster_id
    }

    pub fn broker(&self, node_id: BrokerId) -> Option<&BrokerRegistration> {
        self.brokers.get(&node_id)
    }

    /// All registered brokers, by id.
    pub fn brokers(&self) -> impl Iterator<Item = &BrokerRegistration> {
        self.brokers.values()
    }

    /// The unfenced brokers, by id.
    pub fn live_brokers(&self) -> impl Iterator<Item = &BrokerRegistration> {
        self.brokers.values().filter(|b| !b.fenced)
    }

    pub fn topic(&self, topic_id: &TopicId) -> Option<&Topic> {
        self.topics.get(topic_id)
    }

    pub fn topic_by_name(&self, name: &str) -> Option<&Topic> {
        self.topic_ids.get(name).map(|id| &self.topics[id])
    }

    /// All topics, by name.
    pub fn topics(&self) -> impl Iterator<Item = &Topic> {
        self.topic_ids.values().map(|id| &self.topics[id])
    }

    /// Applies the committed record at `offset`. Total: a record that does not make sense here
    /// (an unknown topic, a name already taken, a replica on an unregistered broker) changes
    /// nothing but the last applied offset. The checks are structural only (no config values,
    /// no liveness), so nodes of different versions agree on them.
    ///
    /// # Panics
    /// If `offset` is not above the last applied offset: the host applies the log in order.
    pub fn apply(&mut self, offset: u64, record: &MetadataRecord) -> Applied {
        assert!(
            self.last_applied_offset.is_none_or(|last| offset > last),
            "metadata applied out of order: {offset} after {:?}",
            self.last_applied_offset
        );
        self.last_applied_offset = Some(offset);
        let applied = self.apply_record(record);
        #[cfg(debug_assertions)]
        self.check_invariants();
        applied
    }

    /// Applies `record` without moving the last applied offset: only the planted bug
    /// [`crate::planted::Bug::ConfigNotLogged`] does this (a change no log record carries).
    #[cfg_attr(not(feature = "planted-bugs"), allow(dead_code))]
    pub(super) fn apply_unlogged(&mut self, record: &MetadataRecord) -> Applied {
        self.apply_record(record)
    }

    fn apply_record(&mut self, record: &MetadataRecord) -> Applied {
        use Applied::{Changed, Ignored};
        match record {
            MetadataRecord::RegisterBroker {
                node_id,
                incarnation,
                host,
                port,
                rack,
            } => {
                if *node_id < 0 {
                    return Ignored("negative broker id");
                }
                if host.is_empty() {
                    return Ignored("empty host");
                }
                let registration = BrokerRegistration {
                    node_id: *node_id,
                    incarnation: *incarnation,
                    host: host.clone(),
                    port: *port,
                    rack: rack.clone(),
                    fenced: true,
                };
                self.brokers.insert(*node_id, registration);
                Changed
            }
            MetadataRecord::FenceBroker { node_id } | MetadataRecord::UnfenceBroker { node_id } => {
                let fence = matches!(record, MetadataRecord::FenceBroker { .. });
                match self.brokers.get_mut(node_id) {
                    None => Ignored("unknown broker"),
                    Some(b) if b.fenced == fence => Ignored("already so"),
                    Some(b) => {
                        b.fenced = fence;
                        Changed
                    }
                }
            }
            MetadataRecord::CreateTopic {
                name,
                topic_id,
                partitions,
                configs,
            } => {
                if validate_topic_name(name).is_err() {
                    return Ignored("invalid topic name");
                }
                if *topic_id == [0; 16] {
                    return Ignored("nil topic id");
                }
                if self.topic_ids.contains_key(name) || self.topics.contains_key(topic_id) {
                    return Ignored("topic exists");
                }
                if partitions.is_empty() {
                    return Ignored("no partitions");
                }
                if let Err(why) = self.check_assignments(partitions, partitions[0].replicas.len()) {
                    return Ignored(why);
                }
                let topic = Topic {
                    name: name.clone(),
                    topic_id: *topic_id,
                    partitions: partitions.clone(),
                    configs: configs.iter().cloned().collect(),
                };
                self.topic_ids.insert(name.clone(), *topic_id);
                self.topics.insert(*topic_id, topic);
                Changed
            }
            MetadataRecord::DeleteTopic { topic_id } => match self.topics.remove(topic_id) {
                None => Ignored("unknown topic"),
                Some(topic) => {
                    self.topic_ids.remove(&topic.name);
                    Changed
                }
            },
            MetadataRecord::AlterTopicConfig {
                topic_id,
                set,
                delete,
            } => match self.topics.get_mut(topic_id) {
                None => Ignored("unknown topic"),
                Some(topic) => {
                    for name in delete {
                        topic.configs.remove(name);
                    }
                    for (name, value) in set {
                        topic.configs.insert(name.clone(), value.clone());
                    }
                    Changed
                }
            },
            MetadataRecord::CreatePartitions { topic_id, new } => {
                let Some(topic) = self.topics.get(topic_id) else {
                    return Ignored("unknown topic");
                };
                if new.is_empty() {
                    return Ignored("no partitions");
                }
                if topic.partitions.len() + new.len() > TOPIC_PARTITIONS_MAX {
                    return Ignored("too many partitions");
                }
                if let Err(why) = self.check_assignments(new, topic.replication_factor()) {
                    return Ignored(why);
                }
                let topic = self.topics.get_mut(topic_id).expect("looked up above");
                topic.partitions.extend(new.iter().cloned());
                Changed
            }
            MetadataRecord::NoOp => Changed,
            MetadataRecord::AllocateProducerIds { node_id, end } => {
                if !self.brokers.contains_key(node_id) {
                    return Ignored("unknown broker");
                }
                if *end <= self.producer_id_end {
                    return Ignored("block already allocated");
                }
                self.producer_id_end = *end;
                Changed
            }
            MetadataRecord::SetClusterId { cluster_id } => {
                if self.cluster_id.is_some() {
                    return Ignored("cluster id already set");
                }
                self.cluster_id = Some(*cluster_id);
                Changed
            }
        }
    }

    /// Every partition has `replication_factor` (1..=max) distinct registered brokers.
    fn check_assignments(
        &self,
        partitions: &[PartitionAssignment],
        replication_factor: usize,
    ) -> Result<(), &'static str> {
        if partitions.len() > TOPIC_PARTITIONS_MAX {
            return Err("too many partitions");
        }
        if !(1..=TOPIC_REPLICAS_MAX).contains(&replication_factor) {
            return Err("bad replication factor");
        }
        for p in partitions {
            if p.replicas.len() != replication_factor {
                return Err("replication factors differ");
            }
            for (i, id) in p.replicas.iter().enumerate() {
                if !self.brokers.contains_key(id) {
                    return Err("replica on an unregistered broker");
                }
                if p.replicas[..i].contains(id) {
                    return Err("duplicate replica");
                }
            }
        }
        Ok(())
    }

    /// The first broken invariant, if any.
    pub fn violation(&self) -> Option<String> {
        for (id, b) in &self.brokers {
            if *id != b.node_id || *id < 0 {
                return Some(format!("broker {id} filed as {}", b.node_id));
            }
            if b.host.is_empty() {
                return Some(format!("broker {id} has no host"));
            }
        }
        if self.topic_ids.len() != self.topics.len() {
            return Some("topic maps differ in size".into());
        }
        for (name, id) in &self.topic_ids {
            match self.topics.get(id) {
                Some(t) if t.name == *name && t.topic_id == *id => {}
                _ => return Some(format!("topic {name:?} does not map back")),
            }
        }
        for topic in self.topics.values() {
            if validate_topic_name(&topic.name).is_err() || topic.topic_id == [0; 16] {
                return Some(format!("topic {:?} has a bad name or id", topic.name));
            }
            if topic.partitions.is_empty() {
                return Some(format!("topic {:?} has no partitions", topic.name));
            }
            if let Err(why) = self.check_assignments(&topic.partitions, topic.replication_factor())
            {
                return Some(format!("topic {:?}: {why}", topic.name));
            }
        }
        None
    }

    /// # Panics
    /// If an invariant is broken (see [`MetadataImage::violation`]).
    pub fn check_invariants(&self) {
        if let Some(v) = self.violation() {
            panic!("metadata image invariant: {v}");
        }
    }

    /// Appends the whole image, for a snapshot of the metadata log: a version byte, a CRC-32C of
    /// the rest, the last applied offset, the brokers and the topics (strings and counts as in
    /// records).
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut body = Vec::new();
        match self.last_applied_offset {
            None => body.put_u8(0),
            Some(offset) => {
                body.put_u8(1);
                body.put_u64(offset);
            }
        }
        body.put_i64(self.producer_id_end);
        match self.cluster_id {
            None => body.put_u8(0),
            Some(id) => {
                body.put_u8(1);
                body.put_slice(&id);
            }
        }
        put_count(&mut body, self.brokers.len());
        for b in self.brokers.values() {
            body.put_i32(b.node_id);
            body.put_u64(b.incarnation);
            put_str(&mut body, &b.host);
            body.put_u16(b.port);
            put_opt_str(&mut body, b.rack.as_deref());
            body.put_u8(u8::from(b.fenced));
        }
        put_count(&mut body, self.topics.len());
        for t in self.topics.values() {
            put_str(&mut body, &t.name);
            body.put_slice(&t.topic_id);
            put_assignments(&mut body, &t.partitions);
            put_pairs(&mut body, t.configs.iter());
        }
        out.put_u8(IMAGE_VERSION);
        out.put_u32(crc32c::crc32c(&body));
        out.put_slice(&body);
    }

    /// Decodes [`MetadataImage::encode`]'s output; anything else (a bad checksum, a broken
    /// invariant) is an error, never a panic.
    pub fn decode(bytes: &[u8]) -> Result<MetadataImage, DecodeError> {
        let mut r = Reader::new(bytes);
        let version = r.u8()?;
        if version != IMAGE_VERSION {
            return Err(DecodeError::UnknownVersion(version));
        }
        let crc = r.u32()?;
        if crc32c::crc32c(&bytes[5..]) != crc {
            return Err(DecodeError::BadChecksum);
        }
        let mut image = MetadataImage::new();
        if r.bool()? {
            image.last_applied_offset = Some(r.u64()?);
        }
        image.producer_id_end = r.u64()? as i64;
        if r.bool()? {
            image.cluster_id = Some(r.array()?);
        }
        // A broker takes at least 4 + 8 + 2 + 2 + 1 + 1 bytes.
        let brokers = r.count(18, usize::MAX, "broker count")?;
        for _ in 0..brokers {
            let b = BrokerRegistration {
                node_id: r.i32()?,
                incarnation: r.u64()?,
                host: r.string()?,
                port: r.u16()?,
                rack: r.opt_string()?,
                fenced: r.bool()?,
            };
            if image.brokers.insert(b.node_id, b).is_some() {
                return Err(DecodeError::Inconsistent("duplicate broker".into()));
            }
        }
        // A topic takes at least 2 + 16 + 4 + 4 bytes.
        let topics = r.count(26, usize::MAX, "topic count")?;
        for _ in 0..topics {
            let name = r.string()?;
            let topic_id = r.array()?;
            let partitions = read_assignments(&mut r)?;
            let pairs = read_pairs(&mut r)?;
            let pair_count = pairs.len();
            let configs: BTreeMap<String, String> = pairs.into_iter().collect();
            if configs.len() != pair_count {
                return Err(DecodeError::Inconsistent("duplicate config".into()));
            }
            let topic = Topic {
                name: name.clone(),
                topic_id,
                partitions,
                configs,
            };
            if image.topics.insert(topic_id, topic).is_some()
                || image.topic_ids.insert(name, topic_id).is_some()
            {
                return Err(DecodeError::Inconsistent("duplicate topic".into()));
            }
        }
        r.finish()?;
        if let Some(v) = image.violation() {
            return Err(DecodeError::Inconsistent(v));
        }
        Ok(image)
    }
}
