//! The command line behind `scripts/sim`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Instant;

use clap::Parser;
use sluice_core::planted::Bug;

use crate::params::Scenario;
use crate::run::{run_seed, RunOutcome, Status};
use crate::timeline;

/// Exit code when two runs of one seed differ.
const EXIT_NONDETERMINISM: u8 = 4;
/// Exit code for bad arguments.
const EXIT_USAGE: u8 = 64;

#[derive(Parser, Debug)]
#[command(
    name = "sluice-sim",
    about = "Deterministic simulation of Sluice: seeded faults, Jepsen-style checkers, exact replay",
    after_help = "Exit codes: 0 ok, 1 correctness (an anomaly), 2 liveness, 3 crash (panic), 4 nondeterminism, 64 usage.\n\
                  Failing seeds print their replay command and write target/sim-runs/<seed>/ (trace.jsonl, history.txt, report.txt, timeline.html)."
)]
struct Args {
    /// Run (or replay) exactly this seed; always writes its triage directory.
    #[arg(long, conflicts_with = "seeds")]
    seed: Option<u64>,
    /// Run a range of seeds, `A..B` (B excluded).
    #[arg(long)]
    seeds: Option<String>,
    /// Fault selection: default, no-faults, crash, disk, network (one node); cluster, split
    /// (3 or 5 replicating nodes); groups (cluster, plus a consumer group); retention (one
    /// node, retention by time and size on); retention-cluster (retention on a cluster).
    #[arg(long, default_value = "default")]
    scenario: String,
    /// Plant a deliberate bug: ack-before-fsync, skip-recovery-crc, recovery-off-by-one,
    /// fetch-past-high-watermark, idempotence-off, commit-old-term, no-divergent-truncation,
    /// offset-map-off-by-one, vote-twice, vote-ignores-log, group-double-assign.
    #[arg(long)]
    planted_bug: Option<String>,
    /// With --planted-bug: succeed as soon as a seed fails (the checkers caught the bug), fail if
    /// no seed in the range does.
    #[arg(long, requires = "planted_bug")]
    expect_failure: bool,
    /// Run every seed twice and compare the hashes of their full event traces.
    #[arg(long)]
    check_determinism: bool,
    /// Keep running the range after a failing seed.
    #[arg(long)]
    keep_going: bool,
    /// Seeds run at once (each on its own thread and runtime).
    #[arg(long, default_value_t = 1)]
    jobs: usize,
    /// Where triage directories go.
    #[arg(long, default_value = "target/sim-runs")]
    out: PathBuf,
}

fn parse_range(s: &str) -> Option<(u64, u64)> {
    let (a, b) = s.split_once("..")?;
    let (a, b) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    (a < b).then_some((a, b))
}

fn replay_command(seed: u64, scenario: Scenario, bug: Option<Bug>) -> String {
    let mut cmd = format!("scripts/sim --seed {seed}");
    if scenario != Scenario::Default {
        cmd.push_str(&format!(" --scenario {}", scenario.name()));
    }
    if let Some(bug) = bug {
        cmd.push_str(&format!(" --planted-bug {}", bug.name()));
    }
    cmd
}

/// Writes `out/<seed>/`: the trace, the history, the report and the timeline.
fn write_triage(out: &Path, run: &RunOutcome, replay: &str) -> std::io::Result<PathBuf> {
    let dir = out.join(run.params.seed.to_string());
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("trace.jsonl"), &run.trace_jsonl)?;
    let mut history = String::new();
    for op in &run.history.ops {
        history.push_str(&format!(
            "#{} p{} {}..{} ms {}\n",
            op.index,
            op.process,
            op.invoke_ms,
            op.complete_ms,
            sluice_core::history::describe(&op.kind)
        ));
    }
    std::fs::write(dir.join("history.txt"), history)?;
    let mut report = format!(
        "{}\nstatus: {:?}\nreplay: {replay}\n",
        run.params.summary(),
        run.status
    );
    if let Some(r) = &run.report {
        report.push_str(&format!("{r}\n"));
        for a in &r.anomalies {
            report.push_str(&format!("{}\n", a.to_json_line()));
        }
    }
    report.push_str(&format!("excused (media damage): {}\n", run.excused));
    std::fs::write(dir.join("report.txt"), report)?;
    std::fs::write(dir.join("timeline.html"), timeline::render(run, replay))?;
    Ok(dir)
}

fn describe_status(run: &RunOutcome) -> String {
    match &run.status {
        Status::Ok => "ok".into(),
        Status::Correctness(why) | Status::Liveness(why) | Status::Crash(why) => {
            format!("{}: {why}", run.status.name())
        }
    }
}

pub fn main() -> ExitCode {
    let args = Args::parse();
    // The brokers' own logs, each line in its broker's span, for triage of one seed:
    // SLUICE_LOG=info (or e.g. sluice_node=debug) scripts/sim --seed N.
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_writer(std::io::stderr)
            .init();
    }
    let Some(scenario) = Scenario::from_name(&args.scenario) else {
        eprintln!(
            "unknown scenario {:?}; choose one of: default, no-faults, crash, disk, network, \
             cluster, split, groups, configs",
            args.scenario
        );
        return ExitCode::from(EXIT_USAGE);
    };
    let bug = match args.planted_bug.as_deref().map(|n| (n, Bug::from_name(n))) {
        None => None,
        Some((_, Some(bug))) => Some(bug),
        Some((name, None)) => {
            let names: Vec<&str> = Bug::ALL.iter().map(|b| b.name()).collect();
            eprintln!(
                "unknown planted bug {name:?}; choose one of: {}",
                names.join(", ")
            );
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let (first, end, single) = match (args.seed, args.seeds.as_deref()) {
        (Some(seed), _) => (seed, seed + 1, true),
        (None, Some(range)) => match parse_range(range) {
            Some((a, b)) => (a, b, false),
            None => {
                eprintln!("--seeds takes A..B with A < B, got {range:?}");
                return ExitCode::from(EXIT_USAGE);
            }
        },
        (None, None) => {
            eprintln!("give --seed N or --seeds A..B (see --help)");
            return ExitCode::from(EXIT_USAGE);
        }
    };

    let started = Instant::now();
    let mut last_progress = Instant::now();
    let (mut ran, mut failed, mut simulated_ms) = (0u64, 0u64, 0u64);
    let mut exit = 0u8;
    let jobs = args.jobs.max(1) as u64;
    // Each worker takes the next seed as soon as it is free (a slow seed does not hold up the
    // other worker); results are judged and printed in seed order, so the output, the first
    // failing seed and "caught by seed N after K seeds" do not depend on timing. Workers run at
    // most `window` seeds ahead of the oldest unjudged one, which bounds the outcomes held.
    let (work_tx, work_rx) = mpsc::channel::<u64>();
    let work_rx = Arc::new(Mutex::new(work_rx));
    let (done_tx, done_rx) = mpsc::channel::<(u64, RunOutcome, Option<RunOutcome>)>();
    for _ in 0..jobs {
        let work_rx = Arc::clone(&work_rx);
        let done_tx = done_tx.clone();
        let twice = args.check_determinism;
        std::thread::spawn(move || loop {
            let next = work_rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
            let Ok(s) = next else { break };
            let a = run_seed(s, scenario, bug);
            let b = twice.then(|| run_seed(s, scenario, bug));
            if done_tx.send((s, a, b)).is_err() {
                break;
            }
        });
    }
    drop(done_tx);
    let window = 16 * jobs;
    let (mut next_seed, mut next_judged, mut in_flight) = (first, first, 0u64);
    let mut finished: BTreeMap<u64, (RunOutcome, Option<RunOutcome>)> = BTreeMap::new();
    // Returning from main ends the process, and with it any seed still running on a worker.
    'outer: while next_judged < end {
        while in_flight < jobs && next_seed < end && next_seed < next_judged + window {
            work_tx
                .send(next_seed)
                .expect("the workers outlive the range");
            next_seed += 1;
            in_flight += 1;
        }
        let Ok((s, a, b)) = done_rx.recv() else {
            eprintln!("every simulation worker died (a panic outside a run?)");
            return ExitCode::from(Status::Crash(String::new()).exit_code());
        };
        in_flight -= 1;
        finished.insert(s, (a, b));
        while let Some((run, again)) = finished.remove(&next_judged) {
            next_judged += 1;
            ran += 1;
            simulated_ms += run.simulated_ms;
            let replay = replay_command(run.params.seed, scenario, bug);
            if let Some(again) = &again {
                if again.trace_hash != run.trace_hash || again.status != run.status {
                    failed += 1;
                    let diff = run
                        .trace_jsonl
                        .lines()
                        .zip(again.trace_jsonl.lines())
                        .find(|(a, b)| a != b)
                        .map(|(a, b)| format!("first difference:\n  run 1: {a}\n  run 2: {b}"))
                        .unwrap_or_else(|| "one trace is a prefix of the other".into());
                    eprintln!(
                        "NONDETERMINISTIC seed {}: trace hashes {:016x} and {:016x}\n{diff}\nreplay: {replay}",
                        run.params.seed, run.trace_hash, again.trace_hash
                    );
                    exit = EXIT_NONDETERMINISM;
                    if !args.keep_going {
                        break 'outer;
                    }
                    continue;
                }
                if single {
                    println!("deterministic: both runs hashed {:016x}", run.trace_hash);
                }
            }
            let failed_now = run.status != Status::Ok;
            if single || failed_now {
                let dir = write_triage(&args.out, &run, &replay);
                let dir = dir
                    .map(|d| d.display().to_string())
                    .unwrap_or_else(|e| format!("(not written: {e})"));
                let report = run
                    .report
                    .as_ref()
                    .map(|r| r.to_string())
                    .unwrap_or_default();
                println!(
                    "seed {} {}\n  {}\n  {} ops, {} simulated ms, trace {:016x}, excused {}\n  {report}\n  triage: {dir}\n  replay: {replay}",
                    run.params.seed,
                    describe_status(&run),
                    run.params.summary(),
                    run.history.len(),
                    run.simulated_ms,
                    run.trace_hash,
                    run.excused,
                );
            }
            if failed_now {
                failed += 1;
                if args.expect_failure {
                    println!(
                        "planted bug {} caught by seed {} ({}) after {ran} seeds",
                        bug.map_or("?", |b| b.name()),
                        run.params.seed,
                        run.status.name()
                    );
                    return ExitCode::SUCCESS;
                }
                if exit == 0 {
                    exit = run.status.exit_code();
                }
                if !args.keep_going {
                    break 'outer;
                }
            }
        }
        if last_progress.elapsed().as_secs() >= 1 && !single {
            last_progress = Instant::now();
            eprintln!(
                "[{ran}/{}] {failed} failed, {:.0} simulated s in {:.1} wall s",
                end - first,
                simulated_ms as f64 / 1000.0,
                started.elapsed().as_secs_f64()
            );
        }
    }
    let wall = started.elapsed().as_secs_f64();
    println!(
        "{ran} seeds, {failed} failed, {:.0} simulated s in {wall:.1} wall s ({:.0}x real time, {:.0} seeds/min)",
        simulated_ms as f64 / 1000.0,
        simulated_ms as f64 / 1000.0 / wall.max(1e-9),
        ran as f64 * 60.0 / wall.max(1e-9)
    );
    if args.expect_failure {
        println!(
            "planted bug {} NOT caught in seeds {first}..{end}",
            bug.map_or("?", |b| b.name())
        );
        return ExitCode::from(1);
    }
    ExitCode::from(exit)
}
