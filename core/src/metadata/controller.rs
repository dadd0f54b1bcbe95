//! The controller's decisions: admin requests in, metadata records (or a Kafka error) out.
//! Pure functions of the image and their arguments; the controller proposes the records to the
//! metadata Raft group and answers the client once they are committed.
//!
//! A decision is made against the controller's image, which may be behind records it proposed
//! earlier; applying is total, so a record that lost such a race (two creations of one name) is
//! ignored on apply, and the controller reports the outcome it sees after applying.

use std::collections::{BTreeMap, BTreeSet};

use super::image::MetadataImage;
use super::placement::place_replicas;
use super::record::{BrokerId, MetadataRecord, PartitionAssignment, TopicId};
use super::topic_config::{
    is_ignored_topic_config, topic_log_config, validate_topic_name, TOPIC_CONFIG_NAMES,
};
use crate::group::OFFSETS_TOPIC;
use crate::limits::{
    METADATA_STRING_BYTES_MAX, TOPIC_CONFIGS_MAX, TOPIC_PARTITIONS_MAX, TOPIC_REPLICAS_MAX,
};
use crate::log::LogConfig;
use crate::rng::Rng;
use crate::ErrorCode;

/// An error enum whose variants each carry a message and map to one Kafka error code.
macro_rules! request_error {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $code:ident),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Debug, PartialEq, Eq)]
        pub enum $name {
            $($variant(String)),+
        }

        impl $name {
            pub fn code(&self) -> ErrorCode {
                match self {
                    $($name::$variant(_) => ErrorCode::$code),+
                }
            }

            /// A message for the response's `error_message`.
            pub fn message(&self) -> &str {
                match self {
                    $($name::$variant(m) => m),+
                }
            }
        }

        impl From<$name> for ErrorCode {
            fn from(e: $name) -> ErrorCode {
                e.code()
            }
        }
    };
}

request_error!(
    /// Why a topic was not created (CreateTopics, or auto-creation by Metadata).
    CreateTopicError {
        InvalidTopic => InvalidTopicException,
        TopicAlreadyExists => TopicAlreadyExists,
        InvalidPartitions => InvalidPartitions,
        InvalidReplicationFactor => InvalidReplicationFactor,
        InvalidReplicaAssignment => InvalidReplicaAssignment,
        InvalidConfig => InvalidConfig,
        InvalidRequest => InvalidRequest,
    }
);

request_error!(
    /// Why a topic was not deleted.
    DeleteTopicError {
        UnknownTopicOrPartition => UnknownTopicOrPartition,
        UnknownTopicId => UnknownTopicId,
    }
);

request_error!(
    /// Why a topic's configs were not altered (IncrementalAlterConfigs).
    AlterConfigsError {
        UnknownTopicOrPartition => UnknownTopicOrPartition,
        InvalidConfig => InvalidConfig,
        InvalidRequest => InvalidRequest,
    }
);

request_error!(
    /// Why partitions were not added (CreatePartitions).
    CreatePartitionsError {
        UnknownTopicOrPartition => UnknownTopicOrPartition,
        InvalidPartitions => InvalidPartitions,
        InvalidReplicationFactor => InvalidReplicationFactor,
        InvalidReplicaAssignment => InvalidReplicaAssignment,
        InvalidRequest => InvalidRequest,
    }
);

request_error!(
    /// Why a broker registration or heartbeat was refused.
    BrokerError {
        InvalidRequest => InvalidRequest,
        DuplicateBrokerRegistration => DuplicateBrokerRegistration,
        BrokerIdNotRegistered => BrokerIdNotRegistered,
        StaleBrokerEpoch => StaleBrokerEpoch,
    }
);

/// What `-1` means in a CreateTopics request (the brokers' `num.partitions`,
/// `default.replication.factor` and log settings).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicDefaults {
    pub num_partitions: i32,
    pub replication_factor: i16,
    pub log: LogConfig,
}

/// One topic of a CreateTopics request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CreateTopicRequest {
    pub name: String,
    /// -1: the default.
    pub num_partitions: i32,
    /// -1: the default.
    pub replication_factor: i16,
    /// Explicit replicas as `(partition index, brokers)`; then both counts above must be -1.
    pub assignment: Option<Vec<(i32, Vec<BrokerId>)>>,
    pub configs: Vec<(String, String)>,
}

/// Which topic a request names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TopicRef<'a> {
    Name(&'a str),
    Id(TopicId),
}

/// A broker's registration request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerRegistrationRequest {
    pub node_id: BrokerId,
    pub incarnation: u64,
    pub host: String,
    pub port: u16,
    pub rack: Option<String>,
}

/// Decides a topic creation: the `CreateTopic` record, or Kafka's error. The topic id and the
/// placement's tie-breaking come from `rng`.
pub fn create_topic(
    image: &MetadataImage,
    request: &CreateTopicRequest,
    defaults: &TopicDefaults,
    rng: &mut Rng,
) -> Result<MetadataRecord, CreateTopicError> {
    let name = &request.name;
    validate_topic_name(name).map_err(CreateTopicError::InvalidTopic)?;
    if image.topic_by_name(name).is_some() {
        return Err(CreateTopicError::TopicAlreadyExists(format!(
            "topic {name:?} already exists"
        )));
    }
    // Kafka: '.' and '_' collide in metric names, so "a.b" and "a_b" cannot both exist.
    let unified = name.replace('.', "_");
    if let Some(other) = image.topics().find(|t| t.name.replace('.', "_") == unified) {
        return Err(CreateTopicError::InvalidTopic(format!(
            "topic {name:?} collides with existing topic {:?}",
            other.name
        )));
    }
    let partitions = match &request.assignment {
        Some(assignment) => {
            if request.num_partitions != -1 || request.replication_factor != -1 {
                return Err(CreateTopicError::InvalidRequest(
                    "both a replica assignment and a partition count or replication factor \
                     were given"
                        .into(),
                ));
            }
            if assignment.len() > TOPIC_PARTITIONS_MAX {
                return Err(CreateTopicError::InvalidPartitions(format!(
                    "{} partitions, more than {TOPIC_PARTITIONS_MAX}",
                    assignment.len()
                )));
            }
            let mut sorted: Vec<&(i32, Vec<BrokerId>)> = assignment.iter().collect();
            sorted.sort_by_key(|(index, _)| *index);
            if sorted
                .iter()
                .enumerate()
                .any(|(i, (index, _))| usize::try_from(*index) != Ok(i))
            {
                return Err(CreateTopicError::InvalidReplicaAssignment(
                    "partition indexes must be 0, 1, ... without gaps or repeats".into(),
                ));
            }
            let replicas: Vec<&[BrokerId]> = sorted.iter().map(|(_, r)| r.as_slice()).collect();
            check_assignment(image, &replicas, None)
                .map_err(CreateTopicError::InvalidReplicaAssignment)?
        }
        None => {
            let count = match request.num_partitions {
                -1 => defaults.num_partitions,
                n => n,
            };
            if count <= 0 || count as usize > TOPIC_PARTITIONS_MAX {
                return Err(CreateTopicError::InvalidPartitions(format!(
                    "number of partitions must be in 1..={TOPIC_PARTITIONS_MAX}, got {count}"
                )));
            }
            let factor = match request.replication_factor {
                -1 => defaults.replication_factor,
                n => n,
            };
            let live = image.live_brokers().count();
            if factor <= 0 || factor as usize > TOPIC_REPLICAS_MAX || factor as usize > live {
                return Err(CreateTopicError::InvalidReplicationFactor(format!(
                    "replication factor must be in 1..={}, the live brokers (at most \
                     {TOPIC_REPLICAS_MAX}), got {factor}",
                    live.min(TOPIC_REPLICAS_MAX)
                )));
            }
            place_replicas(image, count as usize, factor as usize, rng.next_u64())
                .expect("factor checked against the live brokers")
        }
    };
    let configs = check_configs(&request.configs, &BTreeMap::new(), &[], &defaults.log)
        .map_err(CreateTopicError::InvalidConfig)?;
    Ok(MetadataRecord::CreateTopic {
        name: name.clone(),
        topic_id: new_topic_id(image, rng),
        partitions,
        configs: configs.into_iter().collect(),
    })
}

/// Decides a topic deletion.
pub fn delete_topic(
    image: &MetadataImage,
    topic: TopicRef,
) -> Result<MetadataRecord, DeleteTopicError> {
    let found = match topic {
        TopicRef::Name(name) => image.topic_by_name(name).ok_or_else(|| {
            DeleteTopicError::UnknownTopicOrPartition(format!("unknown topic {name:?}"))
        })?,
        TopicRef::Id(id) => image
            .topic(&id)
            .ok_or_else(|| DeleteTopicError::UnknownTopicId("unknown topic id".into()))?,
    };
    Ok(MetadataRecord::DeleteTopic {
        topic_id: found.topic_id,
    })
}

/// Decides an incremental config change of a topic: removes `delete`, sets `set`.
pub fn alter_configs(
    image: &MetadataImage,
    name: &str,
    set: &[(String, String)],
    delete: &[String],
    defaults: &LogConfig,
) -> Result<MetadataRecord, AlterConfigsError> {
    let topic = image.topic_by_name(name).ok_or_else(|| {
        AlterConfigsError::UnknownTopicOrPartition(format!("unknown topic {name:?}"))
    })?;
    // Configs Kafka 4 ignores are dropped here, after the duplicate check below sees them.
    let kept_set: Vec<(String, String)> = set
        .iter()
        .filter(|(k, _)| !is_ignored_topic_config(k))
        .cloned()
        .collect();
    let kept_delete: Vec<String> = delete
        .iter()
        .filter(|k| !is_ignored_topic_config(k))
        .cloned()
        .collect();
    let mut touched = BTreeSet::new();
    for key in set.iter().map(|(k, _)| k).chain(delete) {
        if !touched.insert(key) {
            return Err(AlterConfigsError::InvalidRequest(format!(
                "config {key:?} appears more than once"
            )));
        }
    }
    if let Some(unknown) = kept_delete
        .iter()
        .find(|k| !TOPIC_CONFIG_NAMES.contains(&k.as_str()))
    {
        return Err(AlterConfigsError::InvalidConfig(format!(
            "unknown topic config {unknown:?}"
        )));
    }
    check_configs(&kept_set, &topic.configs, &kept_delete, defaults)
        .map_err(AlterConfigsError::InvalidConfig)?;
    Ok(MetadataRecord::AlterTopicConfig {
        topic_id: topic.topic_id,
        set: kept_set,
        delete: kept_delete,
    })
}

/// Decides growing a topic to `count` partitions, with explicit replicas for the new ones
/// (partitions `current..count`, in order) or placed by the controller as for a new topic.
/// Kafka's checks in Kafka's order (`ReplicationControlManager.createPartitions`), with its
/// messages; `__consumer_offsets` is refused (see below).
pub fn create_partitions(
    image: &MetadataImage,
    name: &str,
    count: i32,
    assignment: Option<&[Vec<BrokerId>]>,
    rng: &mut Rng,
) -> Result<MetadataRecord, CreatePartitionsError> {
    let topic = image.topic_by_name(name).ok_or_else(|| {
        CreatePartitionsError::UnknownTopicOrPartition(format!("unknown topic {name:?}"))
    })?;
    // A group's partition is its id's hash modulo the topic's partition count (as in Kafka), so
    // growing the offsets topic would move every group to a partition that does not hold its
    // committed offsets. Kafka lets an operator do it; Sluice does not.
    if name == OFFSETS_TOPIC {
        return Err(CreatePartitionsError::InvalidRequest(format!(
            "the partition count of {OFFSETS_TOPIC} cannot change: every consumer group would \
             move to another partition and lose its committed offsets"
        )));
    }
    let current = topic.partitions.len();
    assert!(current >= 1, "a topic has partitions");
    let wanted = usize::try_from(count).ok();
    if wanted == Some(current) {
        return Err(CreatePartitionsError::InvalidPartitions(format!(
            "Topic already has {current} partition(s)."
        )));
    }
    let Some(wanted) = wanted.filter(|w| *w > current) else {
        return Err(CreatePartitionsError::InvalidPartitions(format!(
            "The topic {name} currently has {current} partition(s); {count} would not be an \
             increase."
        )));
    };
    if wanted > TOPIC_PARTITIONS_MAX {
        return Err(CreatePartitionsError::InvalidPartitions(format!(
            "number of partitions must be at most {TOPIC_PARTITIONS_MAX}, got {count}"
        )));
    }
    let added = wanted - current;
    let factor = topic.replication_factor();
    let new = match assignment {
        Some(assignment) => {
            if assignment.len() != added {
                return Err(CreatePartitionsError::InvalidReplicaAssignment(format!(
                    "Attempted to add {added} additional partition(s), but only {} \
                     assignment(s) were specified.",
                    assignment.len()
                )));
            }
            let replicas: Vec<&[BrokerId]> = assignment.iter().map(Vec::as_slice).collect();
            check_assignment(image, &replicas, Some(factor))
                .map_err(CreatePartitionsError::InvalidReplicaAssignment)?
        }
        None => place_replicas(image, added, factor, rng.next_u64()).ok_or_else(|| {
            CreatePartitionsError::InvalidReplicationFactor(format!(
                "Unable to replicate the partition {factor} time(s): only {} live broker(s)",
                image.live_brokers().count()
            ))
        })?,
    };
    assert_eq!(new.len(), added, "one assignment per new partition");
    assert!(
        new.iter().all(|p| p.replicas.len() == factor),
        "new partitions keep the topic's replication factor"
    );
    Ok(MetadataRecord::CreatePartitions {
        topic_id: topic.topic_id,
        new,
    })
}

/// Decides a broker's registration. `None` if the same incarnation is registered already with
/// the same endpoint (a retry). A different incarnation replaces the registration unless the
/// old one is unfenced and its session (last heartbeat `last_heartbeat_ms`) has not expired:
/// then two processes claim one id.
pub fn register_broker(
    image: &MetadataImage,
    request: &BrokerRegistrationRequest,
    last_heartbeat_ms: Option<u64>,
    now_ms: u64,
    session_timeout_ms: u64,
) -> Result<Option<MetadataRecord>, BrokerError> {
    if request.node_id < 0 {
        return Err(BrokerError::InvalidRequest(format!(
            "broker id {} is negative",
            request.node_id
        )));
    }
    let bad_string = |s: &str| s.is_empty() || s.len() > METADATA_STRING_BYTES_MAX;
    if bad_string(&request.host) || request.rack.as_deref().is_some_and(bad_string) {
        return Err(BrokerError::InvalidRequest(format!(
            "host and rack must be 1..={METADATA_STRING_BYTES_MAX} bytes"
        )));
    }
    if request.port == 0 {
        return Err(BrokerError::InvalidRequest("port 0".into()));
    }
    if let Some(existing) = image.broker(request.node_id) {
        if existing.incarnation == request.incarnation {
            let same = existing.host == request.host
                && existing.port == request.port
                && existing.rack == request.rack;
            if same {
                return Ok(None);
            }
        } else if !existing.fenced
            && last_heartbeat_ms.is_some_and(|at| !session_expired(at, now_ms, session_timeout_ms))
        {
            return Err(BrokerError::DuplicateBrokerRegistration(format!(
                "broker {} is registered by another live process",
                request.node_id
            )));
        }
    }
    Ok(Some(MetadataRecord::RegisterBroker {
        node_id: request.node_id,
        incarnation: request.incarnation,
        host: request.host.clone(),
        port: request.port,
        rack: request.rack.clone(),
    }))
}

/// Decides on a heartbeat of a broker that says it has caught up with the metadata log: an
/// `UnfenceBroker` record if it is fenced, nothing if it is live already.
pub fn unfence_broker(
    image: &MetadataImage,
    node_id: BrokerId,
    incarnation: u64,
) -> Result<Option<MetadataRecord>, BrokerError> {
    let broker = image.broker(node_id).ok_or_else(|| {
        BrokerError::BrokerIdNotRegistered(format!("broker {node_id} is not registered"))
    })?;
    if broker.incarnation != incarnation {
        return Err(BrokerError::StaleBrokerEpoch(format!(
            "broker {node_id} has registered again since"
        )));
    }
    Ok(broker
        .fenced
        .then_some(MetadataRecord::UnfenceBroker { node_id }))
}

/// A `FenceBroker` record for every live broker whose session expired: no heartbeat within
/// `session_timeout_ms` before `now_ms`, or none at all in `last_heartbeat_ms`. A new controller
/// therefore fills the map with its election time for every registered broker (as Kafka's does),
/// so that brokers get a full session to reach it. In broker id order.
pub fn fence_expired(
    image: &MetadataImage,
    last_heartbeat_ms: &BTreeMap<BrokerId, u64>,
    now_ms: u64,
    session_timeout_ms: u64,
) -> Vec<MetadataRecord> {
    image
        .live_brokers()
        .filter(|b| {
            last_heartbeat_ms
                .get(&b.node_id)
                .is_none_or(|at| session_expired(*at, now_ms, session_timeout_ms))
        })
        .map(|b| MetadataRecord::FenceBroker { node_id: b.node_id })
        .collect()
}

fn session_expired(last_heartbeat_ms: u64, now_ms: u64, session_timeout_ms: u64) -> bool {
    now_ms.saturating_sub(last_heartbeat_ms) > session_timeout_ms
}

/// Checks explicit replica lists: non-empty, at most [`TOPIC_REPLICAS_MAX`], distinct, all of
/// one length (`factor` if given), on live brokers.
fn check_assignment(
    image: &MetadataImage,
    partitions: &[&[BrokerId]],
    factor: Option<usize>,
) -> Result<Vec<PartitionAssignment>, String> {
    let Some(first) = partitions.first() else {
        return Err("the assignment is empty".into());
    };
    let factor = factor.unwrap_or(first.len());
    if !(1..=TOPIC_REPLICAS_MAX).contains(&factor) {
        return Err(format!(
            "a partition needs 1..={TOPIC_REPLICAS_MAX} replicas, got {factor}"
        ));
    }
    for (i, replicas) in partitions.iter().enumerate() {
        if replicas.len() != factor {
            return Err(format!(
                "partition {i} has {} replicas, the others {factor}",
                replicas.len()
            ));
        }
        for (j, id) in replicas.iter().enumerate() {
            if replicas[..j].contains(id) {
                return Err(format!("partition {i} lists broker {id} twice"));
            }
            if image.broker(*id).is_none_or(|b| b.fenced) {
                return Err(format!("broker {id} is not a live registered broker"));
            }
        }
    }
    Ok(partitions
        .iter()
        .map(|r| PartitionAssignment {
            replicas: r.to_vec(),
        })
        .collect())
}

/// The overrides `current` minus `delete` plus `set`, if valid: no name twice in `set`, values
/// within the string limit, and [`topic_log_config`] accepts them.
fn check_configs(
    set: &[(String, String)],
    current: &BTreeMap<String, String>,
    delete: &[String],
    defaults: &LogConfig,
) -> Result<BTreeMap<String, String>, String> {
    let mut merged = current.clone();
    for name in delete {
        merged.remove(name);
    }
    let mut seen = BTreeSet::new();
    for (name, value) in set {
        if !seen.insert(name) {
            return Err(format!("config {name:?} given twice"));
        }
        if is_ignored_topic_config(name) {
            continue;
        }
        if name.len() > METADATA_STRING_BYTES_MAX || value.len() > METADATA_STRING_BYTES_MAX {
            return Err(format!(
                "config names and values are at most {METADATA_STRING_BYTES_MAX} bytes"
            ));
        }
        merged.insert(name.clone(), value.clone());
    }
    topic_log_config(defaults, &merged).map_err(|(_, message)| message)?;
    assert!(merged.len() <= TOPIC_CONFIGS_MAX, "only known configs pass");
    Ok(merged)
}

/// A fresh random (version 4) UUID that no topic has.
fn new_topic_id(image: &MetadataImage, rng: &mut Rng) -> TopicId {
    // A collision needs ~2^61 topics; the bound only keeps the loop finite.
    for _ in 0..64 {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&rng.next_u64().to_be_bytes());
        id[8..].copy_from_slice(&rng.next_u64().to_be_bytes());
        id[6] = (id[6] & 0x0f) | 0x40;
        id[8] = (id[8] & 0x3f) | 0x80;
        if image.topic(&id).is_none() {
            return id;
        }
    }
    panic!("no fresh topic id in 64 draws: the rng is broken");
}
