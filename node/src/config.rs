//! Node configuration: defaults, a TOML file, environment variables and flags, in rising order of
//! precedence. Every setting has a flag, an environment variable `SLUICE_<NAME>` and a TOML key
//! `<name>` (snake case), and `sluice serve --help` lists them all with their defaults.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use sluice_core::batch::{CompressionLevels, CompressionType};
use sluice_core::limits;
use sluice_core::log::LogConfig;

/// Settings for `sluice serve`. Every field is optional here so that the TOML file can fill in
/// what the command line leaves out; [`Config::resolve`] applies the defaults.
#[derive(clap::Args, Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeArgs {
    /// TOML file with any of the settings below (keys in snake_case).
    #[arg(long, env = "SLUICE_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Address to listen on for Kafka clients [default: 127.0.0.1:9092].
    #[arg(long, env = "SLUICE_LISTEN")]
    pub listen: Option<String>,
    /// host:port clients are told to connect to (Metadata) [default: the listen address].
    #[arg(long, env = "SLUICE_ADVERTISED_LISTENER")]
    pub advertised_listener: Option<String>,
    /// Directory for all data [default: ./data].
    #[arg(long, env = "SLUICE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// This node's id (Kafka broker.id / node.id) [default: 0].
    #[arg(long, env = "SLUICE_NODE_ID")]
    pub node_id: Option<i32>,
    /// Create unknown topics when a client asks for their metadata [default: true].
    #[arg(long, env = "SLUICE_AUTO_CREATE_TOPICS")]
    pub auto_create_topics: Option<bool>,
    /// Partitions of an auto-created topic (num.partitions) [default: 1].
    #[arg(long, env = "SLUICE_NUM_PARTITIONS")]
    pub num_partitions: Option<i32>,
    /// Largest request frame accepted; larger ones close the connection (socket.request.max.bytes)
    /// [default: 104857600].
    #[arg(long, env = "SLUICE_FRAME_BYTES_MAX")]
    pub frame_bytes_max: Option<u32>,
    /// Requests one connection may have in flight before the broker stops reading from it
    /// (queued.max.requests) [default: 500].
    #[arg(long, env = "SLUICE_REQUESTS_IN_FLIGHT_MAX")]
    pub requests_in_flight_max: Option<usize>,
    /// Group commit: 0 fsyncs a partition as soon as data arrives and no fsync is in flight
    /// (appends arriving meanwhile share the next fsync); N > 0 fsyncs at most every N ms, trading
    /// acks=all latency and consumer visibility for fewer fsyncs [default: 0].
    #[arg(long, env = "SLUICE_FLUSH_INTERVAL_MS")]
    pub flush_interval_ms: Option<u64>,
    /// Default segment.bytes for topics [default: 1073741824].
    #[arg(long, env = "SLUICE_SEGMENT_BYTES")]
    pub segment_bytes: Option<u64>,
    /// Default segment.ms for topics [default: 604800000].
    #[arg(long, env = "SLUICE_SEGMENT_MS")]
    pub segment_ms: Option<u64>,
    /// Default retention.ms for topics; -1 keeps data forever [default: 604800000].
    #[arg(long, env = "SLUICE_RETENTION_MS", allow_hyphen_values = true)]
    pub retention_ms: Option<i64>,
    /// Default retention.bytes per partition; -1 for no limit [default: -1].
    #[arg(long, env = "SLUICE_RETENTION_BYTES", allow_hyphen_values = true)]
    pub retention_bytes: Option<i64>,
    /// Default max.message.bytes (largest record batch) [default: 1048588].
    #[arg(long, env = "SLUICE_MESSAGE_BYTES_MAX")]
    pub message_bytes_max: Option<u32>,
    /// Default index.interval.bytes [default: 4096].
    #[arg(long, env = "SLUICE_INDEX_INTERVAL_BYTES")]
    pub index_interval_bytes: Option<u32>,
    /// Default compression.type for topics (Kafka's broker compression.type): uncompressed,
    /// zstd, lz4, snappy, gzip, or producer to keep the producer's codec [default: producer].
    #[arg(long, env = "SLUICE_COMPRESSION_TYPE")]
    pub compression_type: Option<String>,
    /// Default compression.gzip.level: 1 to 9, or -1 for zlib's default [default: -1].
    #[arg(
        long,
        env = "SLUICE_COMPRESSION_GZIP_LEVEL",
        allow_hyphen_values = true
    )]
    pub compression_gzip_level: Option<i32>,
    /// Default compression.lz4.level: 1 to 17 [default: 9].
    #[arg(long, env = "SLUICE_COMPRESSION_LZ4_LEVEL")]
    pub compression_lz4_level: Option<i32>,
    /// Default compression.zstd.level: -131072 to 22 [default: 3].
    #[arg(
        long,
        env = "SLUICE_COMPRESSION_ZSTD_LEVEL",
        allow_hyphen_values = true
    )]
    pub compression_zstd_level: Option<i32>,
    /// How often retention runs (log.retention.check.interval.ms) [default: 300000].
    #[arg(long, env = "SLUICE_RETENTION_CHECK_INTERVAL_MS")]
    pub retention_check_interval_ms: Option<u64>,
    /// How long the log cleaner waits between looks for compacted partitions with work
    /// (log.cleaner.backoff.ms) [default: 15000].
    #[arg(long, env = "SLUICE_LOG_CLEANER_BACKOFF_MS")]
    pub log_cleaner_backoff_ms: Option<u64>,
    /// Bytes of synced log per second the scrubber reads back in the background, checking every
    /// batch, so that damage no client or follower reads is found and repaired from the other
    /// replicas; 0 turns it off [default: 8388608].
    #[arg(long, env = "SLUICE_SCRUB_BYTES_PER_SEC")]
    pub scrub_bytes_per_sec: Option<u64>,
    /// Every node of the cluster as `id@host:rpc_port`, this node included, comma separated
    /// (the same list on every node). Unset or empty: a single node that needs no peers.
    #[arg(long, env = "SLUICE_PEERS", value_delimiter = ',')]
    pub peers: Option<Vec<String>>,
    /// Address to listen on for node-to-node RPC [default: this node's address in `peers`].
    #[arg(long, env = "SLUICE_RPC_LISTEN")]
    pub rpc_listen: Option<String>,
    /// Replication factor of topics created without one (default.replication.factor)
    /// [default: 3, or the cluster size if smaller].
    #[arg(long, env = "SLUICE_DEFAULT_REPLICATION_FACTOR")]
    pub default_replication_factor: Option<i16>,
    /// Raft's clock: every timeout below is a whole number of ticks [default: 50].
    #[arg(long, env = "SLUICE_RAFT_TICK_MS")]
    pub raft_tick_ms: Option<u64>,
    /// A follower that hears nothing from its leader for this long (randomised up to twice it)
    /// starts an election [default: 1000].
    #[arg(long, env = "SLUICE_ELECTION_TIMEOUT_MS")]
    pub election_timeout_ms: Option<u64>,
    /// Record bytes a leader sends a follower in one append at most (Kafka's
    /// replica.fetch.max.bytes; one batch is always sent, however large) [default: 1048576].
    #[arg(long, env = "SLUICE_REPLICA_FETCH_MAX_BYTES")]
    pub replica_fetch_max_bytes: Option<u64>,
    /// Partitions of `__consumer_offsets`, fixed when it is first created
    /// (offsets.topic.num.partitions) [default: 16].
    #[arg(long, env = "SLUICE_OFFSETS_TOPIC_PARTITIONS")]
    pub offsets_topic_partitions: Option<i32>,
    /// Replication factor of `__consumer_offsets` (offsets.topic.replication.factor), lowered
    /// to the number of live brokers when it is created [default: 3].
    #[arg(long, env = "SLUICE_OFFSETS_TOPIC_REPLICATION_FACTOR")]
    pub offsets_topic_replication_factor: Option<i16>,
    /// Segment size of `__consumer_offsets` (offsets.topic.segment.bytes) [default: 104857600].
    #[arg(long, env = "SLUICE_OFFSETS_TOPIC_SEGMENT_BYTES")]
    pub offsets_topic_segment_bytes: Option<u64>,
    /// How long a new consumer group waits for more members before its first rebalance
    /// (group.initial.rebalance.delay.ms) [default: 3000].
    #[arg(long, env = "SLUICE_GROUP_INITIAL_REBALANCE_DELAY_MS")]
    pub group_initial_rebalance_delay_ms: Option<u64>,
    /// Smallest session timeout a group member may ask for (group.min.session.timeout.ms)
    /// [default: 6000].
    #[arg(long, env = "SLUICE_GROUP_MIN_SESSION_TIMEOUT_MS")]
    pub group_min_session_timeout_ms: Option<u64>,
    /// Largest session timeout a group member may ask for (group.max.session.timeout.ms)
    /// [default: 1800000].
    #[arg(long, env = "SLUICE_GROUP_MAX_SESSION_TIMEOUT_MS")]
    pub group_max_session_timeout_ms: Option<u64>,
    /// How long committed offsets of a group without members are kept
    /// (offsets.retention.minutes, in ms) [default: 604800000].
    #[arg(long, env = "SLUICE_OFFSETS_RETENTION_MS")]
    pub offsets_retention_ms: Option<u64>,
}

/// The resolved configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub listen: String,
    pub advertised_listener: String,
    pub data_dir: PathBuf,
    pub node_id: i32,
    pub auto_create_topics: bool,
    pub num_partitions: i32,
    pub frame_bytes_max: u32,
    pub requests_in_flight_max: usize,
    pub flush_interval_ms: u64,
    /// Defaults for topics that do not override them.
    pub log: LogConfig,
    pub retention_check_interval_ms: u64,
    pub log_cleaner_backoff_ms: u64,
    pub scrub_bytes_per_sec: u64,
    /// The cluster's nodes by id with their RPC addresses; empty for a single node.
    pub peers: BTreeMap<u64, String>,
    pub rpc_listen: Option<String>,
    /// The metadata quorum's voters: every node (this node alone when `peers` is empty). Raft
    /// learners are not implemented, so a node that is not a voter could not follow the metadata
    /// log; a cluster therefore has at most [`limits::RAFT_VOTERS_MAX`] nodes for now.
    pub controllers: Vec<u64>,
    pub default_replication_factor: i16,
    pub raft_tick_ms: u64,
    pub election_timeout_ms: u64,
    pub replica_fetch_max_bytes: u64,
    pub offsets_topic_partitions: i32,
    pub offsets_topic_replication_factor: i16,
    pub offsets_topic_segment_bytes: u64,
    /// The group coordinator's settings.
    pub groups: sluice_core::group::CoordinatorConfig,
    /// A deliberate defect the simulator plants for one run (never set outside it).
    pub planted: sluice_core::planted::Planted,
}

/// Kafka's `socket.request.max.bytes`.
pub const FRAME_BYTES_MAX_DEFAULT: u32 = 100 * 1024 * 1024;
/// Kafka's `queued.max.requests`.
pub const REQUESTS_IN_FLIGHT_MAX_DEFAULT: usize = 500;
/// Partitions a single topic may have.
pub const PARTITIONS_PER_TOPIC_MAX: i32 = 10_000;

impl Default for Config {
    fn default() -> Config {
        Config::resolve(ServeArgs::default()).expect("defaults are valid")
    }
}

impl Config {
    /// What the core node decides with: everything above but the shell's own settings
    /// (listeners, data directory, frame and connection limits), which it only describes.
    pub fn node_config(&self) -> sluice_core::node::NodeConfig {
        let (host, port) =
            split_host_port(&self.advertised_listener).expect("validated when resolved");
        let nodes = if self.peers.is_empty() {
            vec![self.node_id as u64]
        } else {
            self.peers.keys().copied().collect()
        };
        sluice_core::node::NodeConfig {
            node_id: self.node_id,
            advertised_host: host,
            advertised_port: port,
            nodes,
            controllers: self.controllers.clone(),
            auto_create_topics: self.auto_create_topics,
            topic_defaults: sluice_core::metadata::TopicDefaults {
                num_partitions: self.num_partitions,
                replication_factor: self.default_replication_factor,
                log: self.log.clone(),
            },
            flush_interval_ms: self.flush_interval_ms,
            retention_check_interval_ms: self.retention_check_interval_ms,
            log_cleaner_backoff_ms: self.log_cleaner_backoff_ms,
            scrub_bytes_per_sec: self.scrub_bytes_per_sec,
            raft_tick_ms: self.raft_tick_ms,
            election_timeout_ms: self.election_timeout_ms,
            replica_fetch_max_bytes: self.replica_fetch_max_bytes,
            offsets_topic_partitions: self.offsets_topic_partitions,
            offsets_topic_replication_factor: self.offsets_topic_replication_factor,
            offsets_topic_segment_bytes: self.offsets_topic_segment_bytes,
            groups: self.groups.clone(),
            broker_configs: self.broker_configs(),
            observe: false,
            planted: self.planted,
        }
    }

    /// The broker settings DescribeConfigs shows (read-only), by their Kafka names.
    fn broker_configs(&self) -> Vec<(String, String)> {
        [
            (
                "auto.create.topics.enable",
                self.auto_create_topics.to_string(),
            ),
            ("num.partitions", self.num_partitions.to_string()),
            ("log.retention.ms", self.log.retention_ms.to_string()),
            ("log.retention.bytes", self.log.retention_bytes.to_string()),
            ("log.segment.bytes", self.log.segment_bytes_max.to_string()),
            ("log.roll.ms", self.log.segment_ms.to_string()),
            ("message.max.bytes", self.log.message_bytes_max.to_string()),
            (
                "log.index.interval.bytes",
                self.log.index_interval_bytes.to_string(),
            ),
            (
                "log.retention.check.interval.ms",
                self.retention_check_interval_ms.to_string(),
            ),
            (
                "compression.type",
                self.log.compression_type.name().to_string(),
            ),
            (
                "compression.gzip.level",
                self.log.compression_levels.gzip.to_string(),
            ),
            (
                "compression.lz4.level",
                self.log.compression_levels.lz4.to_string(),
            ),
            (
                "compression.zstd.level",
                self.log.compression_levels.zstd.to_string(),
            ),
            ("socket.request.max.bytes", self.frame_bytes_max.to_string()),
            (
                "queued.max.requests",
                self.requests_in_flight_max.to_string(),
            ),
        ]
        .into_iter()
        .map(|(n, v)| (n.to_string(), v))
        .collect()
    }

    /// Plants `planted` in every state machine this node runs: its logs, Raft groups, group
    /// coordinators and the broker itself (the simulator's checker tests).
    pub fn plant(&mut self, planted: sluice_core::planted::Planted) {
        self.planted = planted;
        self.log.planted = planted;
        self.groups.planted = planted;
    }

    /// Reads the TOML file named by `args.config` (if any) and applies defaults.
    pub fn load(args: ServeArgs) -> Result<Config, String> {
        let file = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
                toml::from_str::<ServeArgs>(&text)
                    .map_err(|e| format!("invalid config file {}: {e}", path.display()))?
            }
            None => ServeArgs::default(),
        };
        Config::resolve(args.overlay(file))
    }

    /// Applies defaults to whatever is unset and checks the result.
    pub fn resolve(a: ServeArgs) -> Result<Config, String> {
        let listen = a.listen.unwrap_or_else(|| "127.0.0.1:9092".to_string());
        let node_id = a.node_id.unwrap_or(0);
        let peers = parse_peers(a.peers.as_deref().unwrap_or(&[]))?;
        if !peers.is_empty() && !peers.contains_key(&(node_id as u64)) {
            return Err(format!(
                "node_id {node_id} is not in peers ({})",
                peers
                    .keys()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if peers.len() > limits::RAFT_VOTERS_MAX {
            return Err(format!(
                "a cluster has at most {} nodes for now (every node is a metadata voter)",
                limits::RAFT_VOTERS_MAX
            ));
        }
        let controllers = if peers.is_empty() {
            vec![node_id as u64]
        } else {
            peers.keys().copied().collect()
        };
        let rpc_listen = a
            .rpc_listen
            .or_else(|| peers.get(&(node_id as u64)).cloned());
        let nodes = peers.len().max(1);
        let log_defaults = LogConfig::default();
        let compression_type = match a.compression_type.as_deref() {
            None => log_defaults.compression_type,
            Some(value) => CompressionType::parse(value).ok_or_else(|| {
                format!(
                    "compression_type {value:?} is not one of {}",
                    CompressionType::NAMES.join(", ")
                )
            })?,
        };
        let levels = log_defaults.compression_levels;
        let compression_levels = CompressionLevels {
            gzip: a.compression_gzip_level.unwrap_or(levels.gzip),
            lz4: a.compression_lz4_level.unwrap_or(levels.lz4),
            zstd: a.compression_zstd_level.unwrap_or(levels.zstd),
        };
        let config = Config {
            advertised_listener: a.advertised_listener.unwrap_or_else(|| listen.clone()),
            listen,
            data_dir: a.data_dir.unwrap_or_else(|| PathBuf::from("./data")),
            node_id,
            auto_create_topics: a.auto_create_topics.unwrap_or(true),
            num_partitions: a.num_partitions.unwrap_or(1),
            frame_bytes_max: a.frame_bytes_max.unwrap_or(FRAME_BYTES_MAX_DEFAULT),
            requests_in_flight_max: a
                .requests_in_flight_max
                .unwrap_or(REQUESTS_IN_FLIGHT_MAX_DEFAULT),
            flush_interval_ms: a.flush_interval_ms.unwrap_or(0),
            log: LogConfig {
                segment_bytes_max: a.segment_bytes.unwrap_or(log_defaults.segment_bytes_max),
                segment_ms: a.segment_ms.unwrap_or(log_defaults.segment_ms),
                retention_ms: a.retention_ms.unwrap_or(log_defaults.retention_ms),
                retention_bytes: a.retention_bytes.unwrap_or(log_defaults.retention_bytes),
                index_interval_bytes: a
                    .index_interval_bytes
                    .unwrap_or(log_defaults.index_interval_bytes),
                message_bytes_max: a
                    .message_bytes_max
                    .unwrap_or(limits::MESSAGE_BYTES_MAX_DEFAULT),
                compression_type,
                compression_levels,
                ..log_defaults
            },
            retention_check_interval_ms: a.retention_check_interval_ms.unwrap_or(300_000),
            log_cleaner_backoff_ms: a.log_cleaner_backoff_ms.unwrap_or(15_000),
            scrub_bytes_per_sec: a
                .scrub_bytes_per_sec
                .unwrap_or(limits::SCRUB_BYTES_PER_SEC_DEFAULT),
            default_replication_factor: a.default_replication_factor.unwrap_or(3.min(nodes as i16)),
            raft_tick_ms: a.raft_tick_ms.unwrap_or(50),
            election_timeout_ms: a.election_timeout_ms.unwrap_or(1000),
            replica_fetch_max_bytes: a
                .replica_fetch_max_bytes
                .unwrap_or(limits::RAFT_APPEND_BYTES_MAX_DEFAULT),
            offsets_topic_partitions: a.offsets_topic_partitions.unwrap_or(16),
            offsets_topic_replication_factor: a.offsets_topic_replication_factor.unwrap_or(3),
            offsets_topic_segment_bytes: a
                .offsets_topic_segment_bytes
                .unwrap_or(limits::OFFSETS_TOPIC_SEGMENT_BYTES_DEFAULT),
            groups: sluice_core::group::CoordinatorConfig {
                initial_rebalance_delay_ms: a
                    .group_initial_rebalance_delay_ms
                    .unwrap_or(limits::GROUP_INITIAL_REBALANCE_DELAY_MS_DEFAULT),
                min_session_timeout_ms: a
                    .group_min_session_timeout_ms
                    .unwrap_or(limits::GROUP_MIN_SESSION_TIMEOUT_MS_DEFAULT),
                max_session_timeout_ms: a
                    .group_max_session_timeout_ms
                    .unwrap_or(limits::GROUP_MAX_SESSION_TIMEOUT_MS_DEFAULT),
                offsets_retention_ms: a
                    .offsets_retention_ms
                    .unwrap_or(limits::OFFSETS_RETENTION_MS_DEFAULT),
                ..sluice_core::group::CoordinatorConfig::default()
            },
            peers,
            rpc_listen,
            controllers,
            planted: sluice_core::planted::Planted::NONE,
        };
        if config.node_id < 0 {
            return Err("node_id must not be negative".into());
        }
        if config.default_replication_factor < 1 {
            return Err("default_replication_factor must be positive".into());
        }
        if config.raft_tick_ms == 0 || config.raft_tick_ms > 10_000 {
            return Err("raft_tick_ms must be in 1..=10000".into());
        }
        if config.replica_fetch_max_bytes == 0 {
            return Err("replica_fetch_max_bytes must be positive".into());
        }
        if config.election_timeout_ms < 2 * config.raft_tick_ms {
            return Err("election_timeout_ms must be at least two raft ticks".into());
        }
        config.log.validate()?;
        if !(1..=PARTITIONS_PER_TOPIC_MAX).contains(&config.offsets_topic_partitions) {
            return Err(format!(
                "offsets_topic_partitions must be in 1..={PARTITIONS_PER_TOPIC_MAX}"
            ));
        }
        if !(limits::SEGMENT_BYTES_MIN..=limits::SEGMENT_BYTES_LIMIT)
            .contains(&config.offsets_topic_segment_bytes)
        {
            return Err(format!(
                "offsets_topic_segment_bytes must be in {}..={}",
                limits::SEGMENT_BYTES_MIN,
                limits::SEGMENT_BYTES_LIMIT
            ));
        }
        if config.log_cleaner_backoff_ms == 0 {
            return Err("log_cleaner_backoff_ms must be positive".into());
        }
        if !(1..=limits::TOPIC_REPLICAS_MAX as i16)
            .contains(&config.offsets_topic_replication_factor)
        {
            return Err(format!(
                "offsets_topic_replication_factor must be in 1..={}",
                limits::TOPIC_REPLICAS_MAX
            ));
        }
        if config.groups.min_session_timeout_ms > config.groups.max_session_timeout_ms {
            return Err(
                "group_min_session_timeout_ms must not exceed group_max_session_timeout_ms".into(),
            );
        }
        if !(1..=PARTITIONS_PER_TOPIC_MAX).contains(&config.num_partitions) {
            return Err(format!(
                "num_partitions must be in 1..={PARTITIONS_PER_TOPIC_MAX}"
            ));
        }
        if config.frame_bytes_max < 1024 {
            return Err("frame_bytes_max must be at least 1024".into());
        }
        if config.requests_in_flight_max == 0 {
            return Err("requests_in_flight_max must be positive".into());
        }
        if config.retention_check_interval_ms == 0 {
            return Err("retention_check_interval_ms must be positive".into());
        }
        split_host_port(&config.advertised_listener)?;
        Ok(config)
    }
}

impl ServeArgs {
    /// Fields set here win over those of `file`.
    fn overlay(self, file: ServeArgs) -> ServeArgs {
        ServeArgs {
            config: self.config,
            listen: self.listen.or(file.listen),
            advertised_listener: self.advertised_listener.or(file.advertised_listener),
            data_dir: self.data_dir.or(file.data_dir),
            node_id: self.node_id.or(file.node_id),
            auto_create_topics: self.auto_create_topics.or(file.auto_create_topics),
            num_partitions: self.num_partitions.or(file.num_partitions),
            frame_bytes_max: self.frame_bytes_max.or(file.frame_bytes_max),
            requests_in_flight_max: self.requests_in_flight_max.or(file.requests_in_flight_max),
            flush_interval_ms: self.flush_interval_ms.or(file.flush_interval_ms),
            segment_bytes: self.segment_bytes.or(file.segment_bytes),
            segment_ms: self.segment_ms.or(file.segment_ms),
            retention_ms: self.retention_ms.or(file.retention_ms),
            retention_bytes: self.retention_bytes.or(file.retention_bytes),
            message_bytes_max: self.message_bytes_max.or(file.message_bytes_max),
            index_interval_bytes: self.index_interval_bytes.or(file.index_interval_bytes),
            compression_type: self.compression_type.or(file.compression_type),
            compression_gzip_level: self.compression_gzip_level.or(file.compression_gzip_level),
            compression_lz4_level: self.compression_lz4_level.or(file.compression_lz4_level),
            compression_zstd_level: self.compression_zstd_level.or(file.compression_zstd_level),
            retention_check_interval_ms: self
                .retention_check_interval_ms
                .or(file.retention_check_interval_ms),
            log_cleaner_backoff_ms: self.log_cleaner_backoff_ms.or(file.log_cleaner_backoff_ms),
            scrub_bytes_per_sec: self.scrub_bytes_per_sec.or(file.scrub_bytes_per_sec),
            peers: self.peers.or(file.peers),
            rpc_listen: self.rpc_listen.or(file.rpc_listen),
            default_replication_factor: self
                .default_replication_factor
                .or(file.default_replication_factor),
            raft_tick_ms: self.raft_tick_ms.or(file.raft_tick_ms),
            election_timeout_ms: self.election_timeout_ms.or(file.election_timeout_ms),
            replica_fetch_max_bytes: self
                .replica_fetch_max_bytes
                .or(file.replica_fetch_max_bytes),
            offsets_topic_partitions: self
                .offsets_topic_partitions
                .or(file.offsets_topic_partitions),
            offsets_topic_replication_factor: self
                .offsets_topic_replication_factor
                .or(file.offsets_topic_replication_factor),
            offsets_topic_segment_bytes: self
                .offsets_topic_segment_bytes
                .or(file.offsets_topic_segment_bytes),
            group_initial_rebalance_delay_ms: self
                .group_initial_rebalance_delay_ms
                .or(file.group_initial_rebalance_delay_ms),
            group_min_session_timeout_ms: self
                .group_min_session_timeout_ms
                .or(file.group_min_session_timeout_ms),
            group_max_session_timeout_ms: self
                .group_max_session_timeout_ms
                .or(file.group_max_session_timeout_ms),
            offsets_retention_ms: self.offsets_retention_ms.or(file.offsets_retention_ms),
        }
    }
}

/// Parses `id@host:port` entries; ids must be unique.
fn parse_peers(entries: &[String]) -> Result<BTreeMap<u64, String>, String> {
    let mut peers = BTreeMap::new();
    for entry in entries {
        let entry = entry.trim();
        if entry.is_empty() {
            continue;
        }
        let (id, addr) = entry
            .split_once('@')
            .ok_or_else(|| format!("peer {entry:?} is not id@host:port"))?;
        let id: u64 = id
            .parse()
            .map_err(|_| format!("peer {entry:?} has an invalid node id"))?;
        if id > i32::MAX as u64 {
            return Err(format!(
                "peer {entry:?}: node ids are Kafka broker ids (i32)"
            ));
        }
        split_host_port(addr)?;
        if peers.insert(id, addr.to_string()).is_some() {
            return Err(format!("node id {id} appears twice in peers"));
        }
    }
    Ok(peers)
}

/// Splits `host:port` (IPv6 hosts in brackets).
pub fn split_host_port(addr: &str) -> Result<(String, u16), String> {
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| format!("{addr:?} is not host:port"))?;
    let port = port
        .parse()
        .map_err(|_| format!("{addr:?} has an invalid port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("{addr:?} has an empty host"));
    }
    Ok((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_documented_ones() {
        let c = Config::default();
        assert_eq!(c.listen, "127.0.0.1:9092");
        assert_eq!(c.advertised_listener, "127.0.0.1:9092");
        assert_eq!(c.data_dir, PathBuf::from("./data"));
        assert_eq!(c.log.message_bytes_max, 1_048_588);
        assert_eq!(c.frame_bytes_max, 104_857_600);
    }

    #[test]
    fn command_line_wins_over_the_file_and_bad_values_are_refused() {
        let file: ServeArgs =
            toml::from_str("listen = \"127.0.0.1:1\"\nnum_partitions = 3\nretention_ms = -1")
                .unwrap();
        let args = ServeArgs {
            listen: Some("127.0.0.1:2".into()),
            ..ServeArgs::default()
        };
        let c = Config::resolve(args.overlay(file)).unwrap();
        assert_eq!(
            (c.listen.as_str(), c.num_partitions, c.log.retention_ms),
            ("127.0.0.1:2", 3, -1)
        );
        assert!(toml::from_str::<ServeArgs>("no_such_key = 1").is_err());
        let bad = ServeArgs {
            num_partitions: Some(0),
            ..ServeArgs::default()
        };
        assert!(Config::resolve(bad).unwrap_err().contains("num_partitions"));
    }

    #[test]
    fn the_broker_compression_defaults_reach_every_topic_and_describe_configs() {
        let c = Config::default();
        assert_eq!(c.log.compression_type, CompressionType::Producer);
        let file: ServeArgs = toml::from_str(
            "compression_type = \"zstd\"\ncompression_zstd_level = -5\ncompression_gzip_level = 9",
        )
        .unwrap();
        let c = Config::resolve(file).unwrap();
        let log = &c.node_config().topic_defaults.log;
        assert_eq!(
            log.compression_type,
            CompressionType::Codec(sluice_core::batch::Codec::Zstd)
        );
        assert_eq!(
            (log.compression_levels.gzip, log.compression_levels.zstd),
            (9, -5)
        );
        let shown = c.broker_configs();
        assert!(shown.contains(&("compression.type".to_string(), "zstd".to_string())));
        assert!(shown.contains(&("compression.lz4.level".to_string(), "9".to_string())));
        for bad in [
            "compression_type = \"none\"",
            "compression_lz4_level = 18",
            "compression_gzip_level = 0",
        ] {
            let file: ServeArgs = toml::from_str(bad).unwrap();
            let err = Config::resolve(file).unwrap_err();
            assert!(err.contains("compression"), "{bad}: {err}");
        }
    }

    #[test]
    fn cluster_settings() {
        let single = Config::default();
        assert!(single.peers.is_empty());
        assert_eq!(single.controllers, vec![0]);
        assert_eq!(single.default_replication_factor, 1);

        let file: ServeArgs = toml::from_str(
            "node_id = 2\npeers = [\"1@10.0.0.1:9093\", \"2@10.0.0.2:9093\", \"3@10.0.0.3:9093\"]",
        )
        .unwrap();
        let c = Config::resolve(file).unwrap();
        assert_eq!(c.controllers, vec![1, 2, 3]);
        assert_eq!(c.rpc_listen.as_deref(), Some("10.0.0.2:9093"));
        assert_eq!(c.default_replication_factor, 3);

        let outsider = ServeArgs {
            node_id: Some(4),
            peers: Some(vec!["1@a:1".into(), "2@b:1".into()]),
            ..ServeArgs::default()
        };
        assert!(Config::resolve(outsider)
            .unwrap_err()
            .contains("not in peers"));
        let twice = ServeArgs {
            node_id: Some(1),
            peers: Some(vec!["1@a:1".into(), "1@b:1".into()]),
            ..ServeArgs::default()
        };
        assert!(Config::resolve(twice).unwrap_err().contains("twice"));
    }
}
