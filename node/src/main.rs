//! `sluice`: a Kafka-compatible event log. `sluice` alone serves on 127.0.0.1:9092 with data in
//! ./data; `sluice serve --help` lists every setting.

use clap::{Parser, Subcommand};
use sluice_core::format;
use sluice_node::config::{Config, ServeArgs};
use sluice_node::lock::DataDirLock;
use sluice_node::storage::FileStorage;

#[derive(Parser, Debug)]
#[command(
    name = "sluice",
    version,
    about = "Sluice: a Kafka-compatible distributed event log"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a broker (the default when no command is given).
    Serve(ServeArgs),
    /// Load generators built on librdkafka (the rdkafka crate).
    #[cfg(not(madsim))]
    #[command(subcommand)]
    Bench(sluice_node::bench::BenchCommand),
    /// Start a local cluster of `sluice serve` processes on 127.0.0.1 for development.
    #[cfg(not(madsim))]
    Cluster(sluice_node::dev_cluster::ClusterArgs),
    /// List, describe, create and delete topics, and alter their configs.
    #[cfg(not(madsim))]
    Topic(sluice_node::cli::TopicArgs),
    /// List, describe and delete consumer groups, and reset their committed offsets.
    #[cfg(not(madsim))]
    Group(sluice_node::cli::GroupArgs),
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging();
    match cli.command.unwrap_or(Command::Serve(ServeArgs::default())) {
        Command::Serve(args) => serve(args),
        #[cfg(not(madsim))]
        Command::Cluster(args) => sluice_node::dev_cluster::run(args),
        #[cfg(not(madsim))]
        Command::Topic(args) => sluice_node::cli::run_topic(args),
        #[cfg(not(madsim))]
        Command::Group(args) => sluice_node::cli::run_group(args),
        #[cfg(not(madsim))]
        Command::Bench(cmd) => match sluice_node::bench::run(cmd) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("sluice bench: {e}");
                std::process::ExitCode::FAILURE
            }
        },
    }
}

/// SIGINT or SIGTERM (systemd's stop).
async fn shutdown_signal() {
    #[cfg(all(unix, not(madsim)))]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            biased;
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(all(unix, not(madsim))))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn serve(args: ServeArgs) -> std::process::ExitCode {
    #[allow(unused_mut)]
    let mut config = match Config::load(args) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("sluice: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    // Only a build with the `planted-bugs` feature (the Jepsen harness's planted-bug run) can
    // plant a bug; a broker built for use has no such code and ignores nothing here.
    #[cfg(feature = "planted-bugs")]
    if let Ok(name) = std::env::var("SLUICE_PLANTED_BUG") {
        let Some(bug) = sluice_core::planted::Bug::from_name(&name) else {
            eprintln!("sluice: SLUICE_PLANTED_BUG={name:?} names no planted bug");
            return std::process::ExitCode::from(2);
        };
        eprintln!("sluice: planting bug {name} (a test build)");
        config.plant(sluice_core::planted::Planted::new(Some(bug)));
    }
    // One thread for the event loop, the connections and the RPC links; fsyncs and recovery
    // run on tokio's blocking pool. The node is one task, so more worker threads only add
    // cross-thread wake-ups: measured on the 2-core build machine, a 3-node cluster at 300 k
    // and 500 k records/s used about a quarter less broker CPU per record this way, and one
    // broker at full speed was as fast (docs/benchmarks.md).
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sluice: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    // One broker per data directory: the lock is taken before anything in the directory is
    // read or written, and held until the process ends.
    let opened = FileStorage::new(&config.data_dir)
        .and_then(|storage| Ok((storage, DataDirLock::acquire(&config.data_dir)?)));
    let (storage, _lock) = match opened {
        Ok(opened) => opened,
        Err(e) => {
            eprintln!("sluice: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        tokio::select! {
            biased;
            _ = shutdown_signal() => {
                tracing::info!("shutting down; every acknowledged acks=all record is already on disk");
                Ok(())
            }
            result = sluice_node::server::serve(config, storage) => result,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice: {e}");
            // A data directory of another format is refused for good: like a configuration
            // error, restarting will not help (systemd's RestartPreventExitStatus=2).
            let refused = e
                .get_ref()
                .is_some_and(|inner| inner.is::<format::DataDirRefused>());
            if refused {
                std::process::ExitCode::from(2)
            } else {
                std::process::ExitCode::FAILURE
            }
        }
    }
}
