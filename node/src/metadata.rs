//! Topic name and config rules (they live in core, where the metadata controller uses them too).
//!
//! The cluster's metadata itself is the metadata Raft log (`__cluster_metadata-0` in the data
//! directory), applied by every node; see docs/metadata.md.

pub use sluice_core::metadata::topic_config::{
    describe_topic_config, topic_log_config, validate_topic_name, TOPIC_CONFIG_NAMES,
    TOPIC_NAME_BYTES_MAX,
};
