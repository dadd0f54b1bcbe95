//! `sluice-jepsen`: one Jepsen-style test of real sluice processes. Run it through
//! `scripts/jepsen`, which builds the broker and installs what the test needs (docs/jepsen.md).

#[cfg(not(madsim))]
fn main() -> std::process::ExitCode {
    cli::main()
}

#[cfg(madsim)]
fn main() -> std::process::ExitCode {
    eprintln!("sluice-jepsen runs real processes; build it without --cfg madsim");
    std::process::ExitCode::from(64)
}

#[cfg(not(madsim))]
mod cli {
    use std::path::PathBuf;
    use std::process::ExitCode;

    use clap::Parser;
    use sluice_jepsen::cluster::NodeSettings;
    use sluice_jepsen::nemesis::Family;
    use sluice_jepsen::run::{self, RunSettings, EXIT_SETUP, INTERRUPTED};

    #[derive(Parser, Debug)]
    #[command(
        name = "sluice-jepsen",
        about = "Runs real sluice nodes in network namespaces under real faults and checks the history (docs/jepsen.md)"
    )]
    struct Args {
        /// Which faults: kill, pause, partition, power-cut, bit-flip, or all.
        #[arg(long, default_value = "all")]
        nemesis: String,
        /// Number of nodes (3 or 5).
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Seed of the fault schedule and the workload's choices.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Length of the fault phase, in seconds (recovery, liveness and the final read follow).
        #[arg(long, default_value_t = 120)]
        time_limit: u64,
        /// Run id 0..=99: names the namespaces and the subnet; runs at once need distinct ids.
        #[arg(long, default_value_t = 0)]
        id: u8,
        /// The sluice binary.
        #[arg(long, default_value = "target/release/sluice")]
        sluice: PathBuf,
        /// Where the report, history, timeline, logs and data go [default: target/jepsen/<nemesis>-<seed>].
        #[arg(long)]
        out: Option<PathBuf>,
        /// Plant this bug in every node (needs a sluice built with the planted-bugs feature).
        #[arg(long)]
        planted_bug: Option<String>,
        #[arg(long, default_value_t = 3)]
        producers: u32,
        #[arg(long, default_value_t = 2)]
        consumers: u32,
        #[arg(long, default_value_t = 2)]
        subscribers: u32,
        /// The nodes' group commit interval (`sluice serve --flush-interval-ms`): N > 0 lets
        /// up to N ms of acknowledged-to-be writes wait for their fsync, so a power cut finds
        /// more unsynced data (an ack before that fsync is what it must never lose).
        #[arg(long)]
        flush_interval_ms: Option<u64>,
        /// Only remove what a killed run with this id left behind (namespaces, mounts, nodes).
        #[arg(long)]
        clean: bool,
    }

    extern "C" fn on_signal(_: libc::c_int) {
        INTERRUPTED.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn main() -> ExitCode {
        let args = Args::parse();
        let Some(family) = Family::from_name(&args.nemesis) else {
            eprintln!(
                "sluice-jepsen: unknown nemesis {:?}; one of {}",
                args.nemesis,
                Family::NAMES.join(", ")
            );
            return ExitCode::from(EXIT_SETUP);
        };
        if !(3..=5).contains(&args.nodes) || args.id > 99 {
            eprintln!("sluice-jepsen: --nodes must be 3..=5 and --id 0..=99");
            return ExitCode::from(EXIT_SETUP);
        }
        let out = args.out.clone().unwrap_or_else(|| {
            PathBuf::from(format!("target/jepsen/{}-{}", args.nemesis, args.seed))
        });
        if let Err(e) = std::fs::create_dir_all(&out) {
            eprintln!("sluice-jepsen: cannot create {}: {e}", out.display());
            return ExitCode::from(EXIT_SETUP);
        }
        let out = out.canonicalize().unwrap_or(out);
        if args.clean {
            run::clean_leftovers(args.id, &out);
            return ExitCode::SUCCESS;
        }
        if !args.sluice.exists() {
            eprintln!(
                "sluice-jepsen: no sluice binary at {} (cargo build --release -p sluice-node)",
                args.sluice.display()
            );
            return ExitCode::from(EXIT_SETUP);
        }
        // SAFETY: the handler only stores to an atomic.
        let handler = on_signal as extern "C" fn(libc::c_int) as *const () as libc::sighandler_t;
        unsafe {
            libc::signal(libc::SIGINT, handler);
            libc::signal(libc::SIGTERM, handler);
        }
        let settings = RunSettings {
            id: args.id,
            nodes: args.nodes,
            family,
            seed: args.seed,
            phase_ms: args.time_limit.saturating_mul(1000),
            out,
            node: NodeSettings {
                binary: args.sluice.canonicalize().unwrap_or(args.sluice),
                planted_bug: args.planted_bug,
                serve_args: [
                    "--election-timeout-ms",
                    "1000",
                    "--default-replication-factor",
                    "3",
                    "--group-initial-rebalance-delay-ms",
                    "0",
                ]
                .into_iter()
                .map(String::from)
                .chain(
                    args.flush_interval_ms
                        .into_iter()
                        .flat_map(|ms| ["--flush-interval-ms".to_string(), ms.to_string()]),
                )
                .collect(),
            },
            producers: args.producers,
            consumers: args.consumers,
            subscribers: args.subscribers,
        };
        let verdict = run::run(&settings);
        ExitCode::from(verdict.exit_code())
    }
}
