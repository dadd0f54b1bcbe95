//! The cluster metadata as a pure, deterministic state machine. See docs/metadata.md.
//!
//! ```text
//! admin request ──> controller::create_topic(&image, ..) ──> MetadataRecord ──> metadata Raft log
//!                                                                                    │ committed
//!                          every node: MetadataImage::apply(offset, &record) <───────┘
//! ```
//!
//! - [`MetadataRecord`]: the log's entries, with a versioned, length-checked encoding.
//! - [`MetadataImage`]: brokers, topics and configs; `apply` is total; snapshots via
//!   `encode`/`decode`.
//! - [`controller`]: the decisions (Kafka validation and error codes) and broker liveness.
//! - [`placement`]: balanced, rack-aware, seeded replica placement.
//! - [`MetadataQuorum`]: one node's member of the metadata Raft group: replica, image and (on
//!   the leader) the controller.
//! - [`topic_config`]: topic name and config rules shared with the broker.

mod codec;
pub mod controller;
mod image;
pub mod placement;
mod quorum;
mod record;
pub mod topic_config;

pub use codec::DecodeError;
pub use controller::{
    alter_configs, create_partitions, create_topic, delete_topic, fence_expired, register_broker,
    unfence_broker, AlterConfigsError, BrokerError, BrokerRegistrationRequest,
    CreatePartitionsError, CreateTopicError, CreateTopicRequest, DeleteTopicError, TopicDefaults,
    TopicRef,
};
pub use image::{Applied, BrokerRegistration, MetadataImage, Topic, IMAGE_VERSION};
pub use placement::place_replicas;
pub use quorum::{
    replay_metadata_log, ApplyError, ControllerError, MetadataQuorum, Outcome, QuorumConfig,
    QuorumOutput, Ticket, METADATA_TOPIC,
};
pub use record::{BrokerId, MetadataRecord, PartitionAssignment, TopicId, RECORD_VERSION};

#[cfg(test)]
mod tests;
