//! What a node's decisions depend on: its identity, the cluster's shape, and the settings of
//! every machine it runs. The shell builds it from its configuration file and flags.

use crate::group::CoordinatorConfig;
use crate::log::LogConfig;
use crate::metadata::TopicDefaults;
use crate::planted::Planted;

/// A node's settings (the shell's `sluice serve` flags, resolved).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeConfig {
    /// Kafka's `node.id`.
    pub node_id: i32,
    /// Where clients reach this node (registered with the controller, shown by Metadata).
    pub advertised_host: String,
    pub advertised_port: u16,
    /// Every node of the cluster (this one included); one id for a single node.
    pub nodes: Vec<u64>,
    /// The metadata quorum's voters.
    pub controllers: Vec<u64>,
    /// Create unknown topics when a client asks for their metadata.
    pub auto_create_topics: bool,
    /// What `-1` means in CreateTopics, and the defaults every topic's log starts from.
    pub topic_defaults: TopicDefaults,
    /// Group commit: 0 fsyncs a log as soon as it has unsynced data and no fsync is in flight;
    /// N > 0 starts one at most every N ms.
    pub flush_interval_ms: u64,
    /// How often retention runs.
    pub retention_check_interval_ms: u64,
    /// How long the log cleaner waits between looks for compacted partitions with work.
    pub log_cleaner_backoff_ms: u64,
    /// How many bytes of synced log the scrubber reads back per second, checking every batch
    /// (0: no scrubbing). See `Node::scrub_logs`.
    pub scrub_bytes_per_sec: u64,
    /// Raft's clock: every Raft timeout is a whole number of these.
    pub raft_tick_ms: u64,
    pub election_timeout_ms: u64,
    /// Record bytes a leader sends a follower in one append at most.
    pub replica_fetch_max_bytes: u64,
    pub offsets_topic_partitions: i32,
    pub offsets_topic_replication_factor: i16,
    pub offsets_topic_segment_bytes: u64,
    /// The group coordinators' settings.
    pub groups: CoordinatorConfig,
    /// The broker's own settings as DescribeConfigs shows them (read-only): name and value.
    pub broker_configs: Vec<(String, String)>,
    /// Report leaderships and high watermarks as [`Output::Observe`](super::Output::Observe)
    /// (the simulator's cluster checkers).
    pub observe: bool,
    /// A deliberate defect the simulator plants for one run (never set outside it).
    pub planted: Planted,
}

impl NodeConfig {
    /// A single node with Sluice's defaults (tests; the shell fills in its own).
    pub fn single(node_id: i32) -> NodeConfig {
        let id = node_id as u64;
        NodeConfig {
            node_id,
            advertised_host: "127.0.0.1".to_string(),
            advertised_port: 9092,
            nodes: vec![id],
            controllers: vec![id],
            auto_create_topics: true,
            topic_defaults: TopicDefaults {
                num_partitions: 1,
                replication_factor: 1,
                log: LogConfig::default(),
            },
            flush_interval_ms: 0,
            retention_check_interval_ms: 300_000,
            log_cleaner_backoff_ms: 15_000,
            scrub_bytes_per_sec: crate::limits::SCRUB_BYTES_PER_SEC_DEFAULT,
            raft_tick_ms: 50,
            election_timeout_ms: 1_000,
            replica_fetch_max_bytes: crate::limits::RAFT_APPEND_BYTES_MAX_DEFAULT,
            offsets_topic_partitions: 16,
            offsets_topic_replication_factor: 3,
            offsets_topic_segment_bytes: crate::limits::OFFSETS_TOPIC_SEGMENT_BYTES_DEFAULT,
            groups: CoordinatorConfig::default(),
            broker_configs: Vec::new(),
            observe: false,
            planted: Planted::NONE,
        }
    }

    /// The election timeout in ticks (at least a few heartbeats long).
    pub fn election_ticks(&self) -> u32 {
        (self.election_timeout_ms / self.raft_tick_ms.max(1)).clamp(3, 10_000) as u32
    }

    /// Checks what the node relies on.
    pub fn validate(&self) -> Result<(), String> {
        if self.node_id < 0 {
            return Err("node_id must not be negative".into());
        }
        if !self.nodes.contains(&(self.node_id as u64)) {
            return Err(format!(
                "node {} is not among the nodes {:?}",
                self.node_id, self.nodes
            ));
        }
        if self.controllers.is_empty() || self.controllers.iter().any(|c| !self.nodes.contains(c)) {
            return Err(format!(
                "the controllers {:?} must be some of the nodes {:?}",
                self.controllers, self.nodes
            ));
        }
        if self.raft_tick_ms == 0 || self.election_timeout_ms < 2 * self.raft_tick_ms {
            return Err("election_timeout_ms must be at least two raft ticks".into());
        }
        if self.replica_fetch_max_bytes == 0 {
            return Err("replica_fetch_max_bytes must be positive".into());
        }
        if self.offsets_topic_partitions < 1 || self.offsets_topic_replication_factor < 1 {
            return Err("__consumer_offsets needs partitions and replicas".into());
        }
        self.topic_defaults.log.validate()
    }
}
