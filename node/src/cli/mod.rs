//! `sluice topic …` and `sluice group …`: the admin command line, in the manner of Kafka's
//! `kafka-topics.sh` and `kafka-consumer-groups.sh`. It speaks the Kafka protocol to any node
//! (`--bootstrap-server`), so it works against any broker of the cluster, and prints aligned
//! plain-text tables to stdout. Errors go to stderr as `sluice <noun> <verb>: <KAFKA_ERROR>:
//! message` with exit status 1; a bad command line exits with 2 (clap).
//!
//! - [`admin`]: the connections, version negotiation, timeouts and the retries (controller,
//!   group coordinator, partition leaders).
//! - [`topic`] and [`group`]: one function per subcommand.
//! - [`parse`]: `k=v` lists, `topic:p,p` and `--to-datetime` values. [`table`]: the output.

mod admin;
mod group;
mod parse;
mod table;
mod topic;

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

pub use admin::error_name;

/// Where to connect and how long to wait; accepted before or after the subcommand.
#[derive(clap::Args, Debug, Clone)]
pub struct ConnectArgs {
    /// Brokers to bootstrap from, `HOST:PORT[,HOST:PORT…]`; any node of the cluster will do.
    #[arg(
        long = "bootstrap-server",
        alias = "bootstrap-servers",
        global = true,
        env = "SLUICE_BOOTSTRAP_SERVER",
        default_value = "127.0.0.1:9092"
    )]
    pub bootstrap_server: String,
    /// Bound on every connect and every request, and on the retries of one step.
    #[arg(long, global = true, default_value_t = 10_000)]
    pub timeout_ms: u64,
}

#[derive(clap::Args, Debug, Clone)]
pub struct TopicArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    #[command(subcommand)]
    pub command: TopicCommand,
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum TopicCommand {
    /// Topic names, one per line, sorted.
    List {
        /// Include internal topics such as `__consumer_offsets`.
        #[arg(long)]
        include_internal: bool,
    },
    /// Partitions (leader, replicas, in-sync replicas) and non-default configs.
    Describe {
        /// The topics to describe (repeatable); every topic if none is given.
        #[arg(long)]
        topic: Vec<String>,
        /// With no --topic: include internal topics too.
        #[arg(long)]
        include_internal: bool,
    },
    /// Create a topic.
    Create {
        #[arg(long)]
        topic: String,
        /// Number of partitions (the broker's `num_partitions` if not given).
        #[arg(long)]
        partitions: Option<i32>,
        /// Replicas per partition (the broker's `default_replication_factor` if not given).
        #[arg(long)]
        replication_factor: Option<i16>,
        /// A topic config `name=value` (repeatable, or comma-separated; `[a,b]` for a list).
        #[arg(long = "config")]
        config: Vec<String>,
        /// Succeed if the topic exists already.
        #[arg(long)]
        if_not_exists: bool,
    },
    /// Delete a topic and its data.
    Delete {
        #[arg(long)]
        topic: String,
        /// Succeed if the topic does not exist.
        #[arg(long)]
        if_exists: bool,
    },
    /// Add partitions to a topic (the count only grows; existing partitions keep their data,
    /// but keys may map to other partitions from now on).
    #[command(group(clap::ArgGroup::new("which").required(true)))]
    Alter {
        /// The topic (or --topic).
        #[arg(value_name = "TOPIC", group = "which")]
        name: Option<String>,
        #[arg(long, group = "which")]
        topic: Option<String>,
        /// The new partition count, larger than the current one.
        #[arg(long)]
        partitions: i32,
    },
    /// Delete a partition's records below an offset (Kafka's DeleteRecords): its log start
    /// moves there on every replica, and consumers reading from the beginning start there.
    DeleteRecords {
        #[arg(long)]
        topic: String,
        #[arg(long)]
        partition: i32,
        /// The new start offset; -1 for the high watermark (everything written so far).
        #[arg(long, allow_negative_numbers = true)]
        offset: i64,
    },
    /// Set or remove topic config overrides.
    #[command(group(clap::ArgGroup::new("change").required(true).multiple(true)))]
    AlterConfig {
        #[arg(long)]
        topic: String,
        /// `name=value[,name=value…]` to set (repeatable; `[a,b]` for a list value).
        #[arg(long, group = "change")]
        add_config: Vec<String>,
        /// `name[,name…]` to remove, so the broker default applies again (repeatable).
        #[arg(long, group = "change", value_delimiter = ',')]
        delete_config: Vec<String>,
    },
}

#[derive(clap::Args, Debug, Clone)]
pub struct GroupArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    #[command(subcommand)]
    pub command: GroupCommand,
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum GroupCommand {
    /// Every consumer group of the cluster (asks every broker): id, state, protocol type.
    List {
        /// Only groups in these states (`Empty`, `Stable`, `PreparingRebalance`, …; repeatable).
        #[arg(long)]
        state: Vec<String>,
    },
    /// A group's state, members with their assignments, and per partition the committed
    /// offset, the log end offset and the lag.
    Describe {
        #[arg(long)]
        group: String,
    },
    /// Move a group's committed offsets (dry run unless --execute); the group must have no
    /// members.
    ResetOffsets(ResetArgs),
    /// Delete groups without members: their committed offsets go too.
    Delete {
        /// The group to delete (repeatable).
        #[arg(long, required = true)]
        group: Vec<String>,
    },
}

#[derive(clap::Args, Debug, Clone)]
#[command(group(clap::ArgGroup::new("scope").required(true)))]
#[command(group(clap::ArgGroup::new("spec").required(true)))]
pub struct ResetArgs {
    #[arg(long)]
    pub group: String,
    /// `TOPIC` (every partition) or `TOPIC:P[,P…]` (repeatable).
    #[arg(long, group = "scope")]
    pub topic: Vec<String>,
    /// Every partition the group has a committed offset for.
    #[arg(long, group = "scope")]
    pub all_topics: bool,
    /// The log start offset.
    #[arg(long, group = "spec")]
    pub to_earliest: bool,
    /// The log end offset (nothing left to consume).
    #[arg(long, group = "spec")]
    pub to_latest: bool,
    /// This offset, moved into [log start, log end].
    #[arg(long, group = "spec", allow_hyphen_values = true)]
    pub to_offset: Option<i64>,
    /// The committed offset plus N (N may be negative), moved into [log start, log end].
    #[arg(long, group = "spec", allow_hyphen_values = true)]
    pub shift_by: Option<i64>,
    /// The first offset whose timestamp is at or after this time: RFC 3339 with a zone
    /// (`2026-11-20T08:00:00Z`, `…+01:00`) or milliseconds since the epoch. The log end if no
    /// record is that recent.
    #[arg(long, group = "spec")]
    pub to_datetime: Option<String>,
    /// Only show the new offsets (the default).
    #[arg(long, conflicts_with = "execute")]
    pub dry_run: bool,
    /// Commit the new offsets.
    #[arg(long)]
    pub execute: bool,
}

/// Why a command failed. Printed as `sluice <noun> <verb>: <this>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CliError {
    /// A Kafka error code from a broker, or one that names the problem best.
    Kafka { code: i16, message: String },
    /// Anything else: no broker reachable, a timeout, bad input.
    Failed(String),
}

impl CliError {
    pub fn kafka(code: i16, message: impl Into<String>) -> CliError {
        CliError::Kafka {
            code,
            message: message.into(),
        }
    }

    pub fn failed(message: impl Into<String>) -> CliError {
        CliError::Failed(message.into())
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CliError::Kafka { code, message } => write!(f, "{}: {message}", error_name(*code)),
            CliError::Failed(message) => f.write_str(message),
        }
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> CliError {
        CliError::Failed(format!("writing the output: {e}"))
    }
}

/// Runs `sluice topic …`, writing its tables to `out`.
pub fn topic(args: TopicArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let mut admin = admin::Admin::new(&args.connect)?;
    block_on(async move {
        match args.command {
            TopicCommand::List { include_internal } => {
                topic::list(&mut admin, include_internal, out).await
            }
            TopicCommand::Describe {
                topic,
                include_internal,
            } => topic::describe(&mut admin, &topic, include_internal, out).await,
            TopicCommand::Create {
                topic,
                partitions,
                replication_factor,
                config,
                if_not_exists,
            } => {
                let configs = parse::config_pairs(&config)?;
                let spec = topic::NewTopic {
                    name: topic,
                    partitions: partitions.unwrap_or(-1),
                    replication_factor: replication_factor.unwrap_or(-1),
                    configs,
                };
                topic::create(&mut admin, &spec, if_not_exists, out).await
            }
            TopicCommand::Delete { topic, if_exists } => {
                topic::delete(&mut admin, &topic, if_exists, out).await
            }
            TopicCommand::Alter {
                name,
                topic,
                partitions,
            } => {
                let name = name.or(topic).expect("clap requires one of them");
                topic::alter_partitions(&mut admin, &name, partitions, out).await
            }
            TopicCommand::DeleteRecords {
                topic,
                partition,
                offset,
            } => topic::delete_records(&mut admin, &topic, partition, offset, out).await,
            TopicCommand::AlterConfig {
                topic,
                add_config,
                delete_config,
            } => {
                let set = parse::config_pairs(&add_config)?;
                let delete: Vec<String> = delete_config
                    .into_iter()
                    .map(|k| k.trim().to_string())
                    .filter(|k| !k.is_empty())
                    .collect();
                topic::alter_config(&mut admin, &topic, &set, &delete, out).await
            }
        }
    })
}

/// Runs `sluice group …`, writing its tables to `out`.
pub fn group(args: GroupArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let mut admin = admin::Admin::new(&args.connect)?;
    block_on(async move {
        match args.command {
            GroupCommand::List { state } => group::list(&mut admin, &state, out).await,
            GroupCommand::Describe { group } => group::describe(&mut admin, &group, out).await,
            GroupCommand::ResetOffsets(reset) => {
                let plan = group::ResetPlan::from_args(&reset)?;
                group::reset_offsets(&mut admin, &plan, out).await
            }
            GroupCommand::Delete { group } => group::delete(&mut admin, &group, out).await,
        }
    })
}

/// `sluice topic …` from `main`: output to stdout, errors to stderr, the exit status.
pub fn run_topic(args: TopicArgs) -> ExitCode {
    let verb = match &args.command {
        TopicCommand::List { .. } => "list",
        TopicCommand::Describe { .. } => "describe",
        TopicCommand::Create { .. } => "create",
        TopicCommand::Delete { .. } => "delete",
        TopicCommand::Alter { .. } => "alter",
        TopicCommand::AlterConfig { .. } => "alter-config",
        TopicCommand::DeleteRecords { .. } => "delete-records",
    };
    finish("topic", verb, topic(args, &mut std::io::stdout().lock()))
}

/// `sluice group …` from `main`: output to stdout, errors to stderr, the exit status.
pub fn run_group(args: GroupArgs) -> ExitCode {
    let verb = match &args.command {
        GroupCommand::List { .. } => "list",
        GroupCommand::Describe { .. } => "describe",
        GroupCommand::ResetOffsets(_) => "reset-offsets",
        GroupCommand::Delete { .. } => "delete",
    };
    finish("group", verb, group(args, &mut std::io::stdout().lock()))
}

fn finish(noun: &str, verb: &str, result: Result<(), CliError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice {noun} {verb}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A warning on stderr that does not fail the command.
fn warn(message: impl std::fmt::Display) {
    eprintln!("warning: {message}");
}

fn block_on<F: std::future::Future<Output = Result<(), CliError>>>(
    future: F,
) -> Result<(), CliError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::failed(format!("cannot start the runtime: {e}")))?;
    let result = runtime.block_on(future);
    // Nothing may outlive the command: a connection still waiting is dropped at once.
    runtime.shutdown_timeout(Duration::from_millis(100));
    result
}
