//! One test run: network, file systems and nodes up; the workload and the nemesis for the fault
//! phase; heal; a recovery period; liveness; the final read; the core checkers; the report.
//! Everything the run created is removed at the end, also when it fails or is interrupted.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_core::checker::{self, CheckOptions, CheckReport};
use sluice_core::history::describe;
use sluice_core::timeline::{self, Band, Timeline};

use crate::agreement;
use crate::cluster::{Cluster, Exited, NodeSettings};
use crate::nemesis::{self, Family, Step};
use crate::net::{self, Net};
use crate::recorder::Recorder;
use crate::workload::{self, Settings, Workload};

/// How long the cluster may take to come up and create the topics.
const SETUP_BOUND_MS: u64 = 60_000;
/// After the heal, the workload runs on this long before it stops.
const RECOVERY_MS: u64 = 10_000;
/// Every partition must take a write within this long after the recovery period.
const LIVENESS_BOUND_MS: u64 = 60_000;
/// The final read must finish within this long.
const FINAL_READ_BOUND_MS: u64 = 60_000;
/// Replicas of a log have this long to end at the same offset before they are compared.
const AGREEMENT_BOUND_MS: u64 = 15_000;

/// Exit statuses, as the simulator's.
pub const EXIT_CORRECTNESS: u8 = 1;
pub const EXIT_LIVENESS: u8 = 2;
pub const EXIT_CRASH: u8 = 3;
/// Setup failed (not a verdict on Sluice): the environment, the build, a refused argument.
pub const EXIT_SETUP: u8 = 4;
pub const EXIT_INTERRUPTED: u8 = 130;

/// Set by SIGINT/SIGTERM: the run stops, cleans up and exits.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

#[derive(Clone, Debug)]
pub struct RunSettings {
    /// Names and addresses of this run (0..=99); runs at once need distinct ids.
    pub id: u8,
    pub nodes: usize,
    pub family: Family,
    pub seed: u64,
    /// The fault phase, in ms.
    pub phase_ms: u64,
    /// Where the run writes its report, history, timeline, node logs and data.
    pub out: PathBuf,
    pub node: NodeSettings,
    pub producers: u32,
    pub consumers: u32,
    pub subscribers: u32,
}

/// How a run ended.
#[derive(Debug)]
pub enum Verdict {
    Valid,
    Correctness(usize),
    /// Replicas stored different batches below every replica's end (a correctness failure).
    Disagreement(usize),
    Crash(Exited),
    Liveness(String),
    Setup(String),
    Interrupted,
}

impl Verdict {
    pub fn exit_code(&self) -> u8 {
        match self {
            Verdict::Valid => 0,
            Verdict::Correctness(_) | Verdict::Disagreement(_) => EXIT_CORRECTNESS,
            Verdict::Liveness(_) => EXIT_LIVENESS,
            Verdict::Crash(_) => EXIT_CRASH,
            Verdict::Setup(_) => EXIT_SETUP,
            Verdict::Interrupted => EXIT_INTERRUPTED,
        }
    }
}

/// The command that repeats this run (the faults' times and the processes' interleaving are
/// real, so a repeat is the same schedule, not the same history).
pub fn replay_command(s: &RunSettings) -> String {
    let mut c = format!(
        "scripts/jepsen --nemesis {} --nodes {} --seed {} --time-limit {}",
        s.family.name(),
        s.nodes,
        s.seed,
        s.phase_ms / 1000
    );
    if let Some(w) = s
        .node
        .serve_args
        .windows(2)
        .find(|w| w[0] == "--flush-interval-ms")
    {
        let _ = write!(c, " --flush-interval-ms {}", w[1]);
    }
    if let Some(bug) = &s.node.planted_bug {
        let _ = write!(c, " --planted-bug {bug}");
    }
    c
}

/// Removes what a killed run with this id left: its nodes (by the pids it wrote down), its
/// mounts and its namespaces.
pub fn clean_leftovers(id: u8, out: &Path) {
    let pids = out.join("pids");
    if let Ok(text) = std::fs::read_to_string(&pids) {
        for pid in text.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            // Only a process that is still a sluice broker of this run's directory: a pid
            // may have been reused since.
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains("serve") && cmdline.contains(&out.display().to_string()) {
                eprintln!("cleaning up: killing leftover node pid {pid}");
                unsafe {
                    libc::kill(pid, libc::SIGCONT);
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
        let _ = std::fs::remove_file(&pids);
    }
    match crate::faultfs::unmount_stale(out) {
        Ok(unmounted) => {
            for m in unmounted {
                eprintln!("cleaning up: unmounted leftover {}", m.display());
            }
        }
        Err(e) => eprintln!("cleaning up mounts under {}: {e}", out.display()),
    }
    match net::clean_leftovers(Some(id)) {
        Ok(removed) => {
            for ns in removed {
                eprintln!("cleaning up: removed leftover namespace {ns}");
            }
        }
        Err(e) => eprintln!("cleaning up namespaces of run {id}: {e}"),
    }
}

/// Runs one test and writes its report under `settings.out`.
pub fn run(settings: &RunSettings) -> Verdict {
    let start = Instant::now();
    let recorder = Recorder::new(start);
    clean_leftovers(settings.id, &settings.out);
    let data = settings.out.join("nodes");
    let _ = std::fs::remove_dir_all(&data);
    if let Err(e) = std::fs::create_dir_all(&data) {
        return Verdict::Setup(format!("cannot create {}: {e}", data.display()));
    }
    let steps = nemesis::schedule(
        settings.family,
        settings.nodes,
        settings.phase_ms,
        settings.seed,
    );
    recorder.event(format!(
        "run {}: {} nodes, nemesis {}, seed {}, fault phase {} s, {} faults scheduled",
        settings.id,
        settings.nodes,
        settings.family.name(),
        settings.seed,
        settings.phase_ms / 1000,
        steps.len()
    ));
    for (i, s) in steps.iter().enumerate() {
        eprintln!(
            "  fault {i}: after {} ms, {} for {} ms",
            s.gap_ms, s.fault, s.duration_ms
        );
    }
    let net = match Net::create(settings.id, settings.nodes) {
        Ok(net) => net,
        Err(e) => return Verdict::Setup(format!("network of run {}: {e}", settings.id)),
    };
    // The client's threads (librdkafka's included) are all spawned after this, so they live
    // in the client's namespace; the nodes are started in theirs by `ip netns exec`.
    if let Err(e) = net.enter_client() {
        return Verdict::Setup(format!("cannot enter the client namespace: {e}"));
    }
    let cluster = match Cluster::start(net, settings.nodes, &data, settings.node.clone()) {
        Ok(c) => c,
        Err(e) => return Verdict::Setup(e.to_string()),
    };
    let bootstrap = cluster.bootstrap();
    write_pids(&settings.out, &cluster);
    let cluster = Arc::new(Mutex::new(cluster));
    let (verdict, bands) = phases(settings, &steps, &cluster, &recorder, &bootstrap);
    let cluster = Arc::try_unwrap(cluster)
        .map_err(|_| ())
        .expect("every other holder of the cluster has ended")
        .into_inner()
        .expect("cluster lock");
    let data_bytes = du(&data);
    if let Err(e) = cluster.shutdown() {
        eprintln!("cleaning up run {}: {e}", settings.id);
    }
    let _ = std::fs::remove_file(settings.out.join("pids"));
    let verdict = report(settings, &steps, &bands, &recorder, verdict, data_bytes);
    eprintln!(
        "run {} ended in {:.1} s: {}",
        settings.id,
        start.elapsed().as_secs_f64(),
        verdict_line(&verdict)
    );
    verdict
}

fn write_pids(out: &Path, cluster: &Cluster) {
    let pids: String = (1..=cluster.len())
        .filter_map(|i| cluster.pid(i))
        .map(|p| format!("{p}\n"))
        .collect();
    let _ = std::fs::write(out.join("pids"), pids);
}

fn du(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => du(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Sleeps `ms` while watching for crashed nodes and interruptions; rewrites the pid file when
/// the nemesis restarted a node.
fn watch(cluster: &Arc<Mutex<Cluster>>, out: &Path, ms: u64) -> Result<(), Verdict> {
    let deadline = Instant::now() + Duration::from_millis(ms);
    let mut written = None;
    while Instant::now() < deadline {
        if INTERRUPTED.load(Ordering::Relaxed) {
            return Err(Verdict::Interrupted);
        }
        {
            let mut c = cluster.lock().expect("cluster lock");
            if let Some(exited) = c.check_alive() {
                return Err(Verdict::Crash(exited));
            }
            let pids: Vec<Option<u32>> = (1..=c.len()).map(|i| c.pid(i)).collect();
            if written.as_ref() != Some(&pids) {
                write_pids(out, &c);
                written = Some(pids);
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

fn phases(
    settings: &RunSettings,
    steps: &[Step],
    cluster: &Arc<Mutex<Cluster>>,
    recorder: &Recorder,
    bootstrap: &str,
) -> (Verdict, Vec<Band>) {
    if let Err(e) = workload::create_topics(bootstrap, recorder, SETUP_BOUND_MS) {
        let crashed = cluster.lock().expect("cluster lock").check_alive();
        return match crashed {
            Some(exited) => (Verdict::Crash(exited), Vec::new()),
            None => (Verdict::Setup(e), Vec::new()),
        };
    }
    let workload_settings = Settings {
        bootstrap: bootstrap.to_string(),
        producers: settings.producers,
        consumers: settings.consumers,
        subscribers: settings.subscribers,
        seed: settings.seed,
    };
    recorder.event("workload started");
    let workload = Workload::start(&workload_settings, recorder);
    let stop = Arc::new(AtomicBool::new(false));
    let nemesis = {
        let (steps, cluster, recorder, stop) = (
            steps.to_vec(),
            cluster.clone(),
            recorder.clone(),
            stop.clone(),
        );
        let (bootstrap, seed) = (bootstrap.to_string(), settings.seed);
        std::thread::Builder::new()
            .name("nemesis".into())
            .spawn(move || nemesis::run(&steps, &cluster, &recorder, &stop, &bootstrap, seed))
            .expect("the nemesis thread")
    };
    let watched = watch(cluster, &settings.out, settings.phase_ms);
    stop.store(true, Ordering::Relaxed);
    let bands = nemesis.join().expect("the nemesis does not panic");
    if let Err(verdict) = watched {
        let _ = workload.stop();
        return (verdict, bands);
    }
    recorder.event("fault phase over: healing everything");
    if let Err(e) = nemesis::heal_all(cluster) {
        let _ = workload.stop();
        return (Verdict::Setup(format!("heal: {e}")), bands);
    }
    if let Err(verdict) = watch(cluster, &settings.out, RECOVERY_MS) {
        let _ = workload.stop();
        return (verdict, bands);
    }
    let values = workload.stop();
    recorder.event(format!(
        "workload stopped after {} operations",
        recorder.len()
    ));
    let stuck = workload::liveness(&workload_settings, &values, recorder, LIVENESS_BOUND_MS);
    if let Some(exited) = cluster.lock().expect("cluster lock").check_alive() {
        return (Verdict::Crash(exited), bands);
    }
    if !stuck.is_empty() {
        return (
            Verdict::Liveness(format!(
                "partitions {stuck:?} took no acknowledged write within {LIVENESS_BOUND_MS} ms of the heal"
            )),
            bands,
        );
    }
    recorder.event("liveness: every partition took a write");
    let unfinished = workload::final_read(bootstrap, recorder, FINAL_READ_BOUND_MS);
    if let Some(exited) = cluster.lock().expect("cluster lock").check_alive() {
        return (Verdict::Crash(exited), bands);
    }
    if !unfinished.is_empty() {
        return (
            Verdict::Liveness(format!(
                "the final read did not reach the high watermark of {unfinished:?} within {FINAL_READ_BOUND_MS} ms"
            )),
            bands,
        );
    }
    recorder.event("final read done");
    let disks: Vec<PathBuf> = {
        let c = cluster.lock().expect("cluster lock");
        (1..=c.len())
            .map(|i| c.backing_dir(i).to_path_buf())
            .collect()
    };
    let mut groups: Vec<String> = workload::keys()
        .iter()
        .map(|k| format!("{}-{}", k.topic, k.partition))
        .collect();
    groups.push(agreement::METADATA_GROUP.to_string());
    let found = agreement::compare(&groups, &disks, AGREEMENT_BOUND_MS);
    recorder.event(format!(
        "replica agreement: {} batches compared in {} logs, {} problems, {} logs still apart",
        found.batches_compared,
        groups.len(),
        found.problems.len(),
        found.behind.len()
    ));
    for (group, ends) in &found.behind {
        recorder.event(format!(
            "replica agreement: {group} replicas end at {ends:?}"
        ));
    }
    if !found.problems.is_empty() {
        for p in &found.problems {
            recorder.event(format!("replica agreement: {p}"));
        }
        return (Verdict::Disagreement(found.problems.len()), bands);
    }
    (Verdict::Valid, bands)
}

fn verdict_line(v: &Verdict) -> String {
    match v {
        Verdict::Valid => "valid (0 anomalies)".into(),
        Verdict::Correctness(n) => format!("correctness: {n} anomalies"),
        Verdict::Disagreement(n) => {
            format!("correctness: replicas disagree ({n} batches differ; see the events)")
        }
        Verdict::Crash(e) => format!("crash: node n{} exited on its own ({})", e.node, e.status),
        Verdict::Liveness(why) => format!("liveness: {why}"),
        Verdict::Setup(why) => format!("setup failed: {why}"),
        Verdict::Interrupted => "interrupted".into(),
    }
}

/// Judges the history (unless setup failed or the run was interrupted), writes report.txt,
/// history.txt and timeline.html, and returns the final verdict.
fn report(
    settings: &RunSettings,
    steps: &[Step],
    bands: &[Band],
    recorder: &Recorder,
    verdict: Verdict,
    data_bytes: u64,
) -> Verdict {
    let history = recorder.history();
    let judged: Option<CheckReport> = match verdict {
        Verdict::Setup(_) | Verdict::Interrupted => None,
        _ => Some(checker::check_with(
            &history,
            CheckOptions {
                acks1_offsets_final: false,
            },
        )),
    };
    let anomalies = judged.as_ref().map_or(0, |r| r.anomalies.len());
    let verdict = match verdict {
        // Anomalies outrank the rest: a wrong answer is the worst finding.
        v @ (Verdict::Valid | Verdict::Crash(_) | Verdict::Liveness(_)) if anomalies > 0 => {
            match v {
                Verdict::Valid => eprintln!("{anomalies} anomalies in the history"),
                _ => eprintln!(
                    "{anomalies} anomalies in the history; besides, {}",
                    verdict_line(&v)
                ),
            }
            Verdict::Correctness(anomalies)
        }
        v => v,
    };
    let mut text = String::new();
    let _ = writeln!(text, "sluice jepsen run {}", settings.id);
    let _ = writeln!(text, "verdict: {}", verdict_line(&verdict));
    let _ = writeln!(text, "repeat: {}", replay_command(settings));
    let _ = writeln!(
        text,
        "nodes {}, producers {}, consumers {}, subscribers {}, fault phase {} s, data on disk at the end {} KiB",
        settings.nodes,
        settings.producers,
        settings.consumers,
        settings.subscribers,
        settings.phase_ms / 1000,
        data_bytes / 1024
    );
    let _ = writeln!(text, "operations: {}", history.len());
    if let Some(r) = &judged {
        let _ = writeln!(text, "checker: {r}");
        for a in &r.anomalies {
            let _ = writeln!(text, "anomaly {}: {} {}", a.kind.name(), a.key, a.detail);
            for &i in a.ops.iter().take(4) {
                if let Some(op) = history.ops.get(i) {
                    let _ = writeln!(text, "    {}", op_in_full(op));
                }
            }
        }
    }
    let _ = writeln!(text, "\nschedule ({} faults):", steps.len());
    for (i, s) in steps.iter().enumerate() {
        let _ = writeln!(
            text,
            "  {i}: after {} ms, {} for {} ms",
            s.gap_ms, s.fault, s.duration_ms
        );
    }
    let _ = writeln!(text, "\nwhat ran:");
    for b in bands {
        let _ = writeln!(
            text,
            "  {:>8} .. {:>8} ms  {}: {}",
            b.start_ms, b.end_ms, b.kind, b.detail
        );
    }
    let _ = writeln!(text, "\nevents:");
    for (at, line) in recorder.events() {
        let _ = writeln!(text, "  {at:>8} ms  {line}");
    }
    if let Verdict::Crash(e) = &verdict {
        let _ = writeln!(text, "\nlog tail of n{}:\n{}", e.node, e.log_tail);
    }
    write_file(&settings.out.join("report.txt"), &text);
    let mut lines = String::new();
    for op in &history.ops {
        let _ = writeln!(
            lines,
            "#{} p{} {}..{} ms {}",
            op.index,
            op.process,
            op.invoke_ms,
            op.complete_ms,
            describe(&op.kind)
        );
    }
    write_file(&settings.out.join("history.txt"), &lines);
    let offending: Vec<usize> = judged
        .iter()
        .flat_map(|r| r.anomalies.iter().flat_map(|a| a.ops.iter().copied()))
        .collect();
    let title = format!("sluice jepsen: {}", replay_command(settings));
    let heading = verdict_line(&verdict);
    let summary = format!(
        "{} nodes, nemesis {}, seed {}, {} operations",
        settings.nodes,
        settings.family.name(),
        settings.seed,
        history.len()
    );
    let replay = replay_command(settings);
    let html = timeline::render(&Timeline {
        title: &title,
        heading: &heading,
        summary: &summary,
        history: &history,
        end_ms: recorder.now_ms(),
        bands,
        offending_ops: &offending,
        report: judged.as_ref(),
        replay: &replay,
        label: &process_label,
    });
    write_file(&settings.out.join("timeline.html"), &html);
    eprintln!(
        "report: {} ({} operations{})",
        settings.out.join("report.txt").display(),
        history.len(),
        judged
            .as_ref()
            .map(|r| format!("; {r}"))
            .unwrap_or_default()
    );
    verdict
}

fn write_file(path: &Path, text: &str) {
    if let Err(e) = std::fs::write(path, text) {
        eprintln!("cannot write {}: {e}", path.display());
    }
}

/// A process's row in the timeline.
fn process_label(process: u32) -> String {
    match process {
        workload::FINAL_READ_PROCESS => "final read".into(),
        workload::LIVENESS_PROCESS => "liveness".into(),
        p if p >= workload::SUBSCRIBER_PROCESS_BASE => {
            format!("subscriber {}", p - workload::SUBSCRIBER_PROCESS_BASE)
        }
        p if p >= workload::CONSUMER_PROCESS_BASE => {
            format!("consumer {}", p - workload::CONSUMER_PROCESS_BASE)
        }
        p => format!("producer {p}"),
    }
}

/// An operation with every key named and every offset read (as ranges): what an anomaly's
/// reader needs, where history.txt shows only counts.
fn op_in_full(op: &sluice_core::history::Op) -> String {
    use sluice_core::history::OpKind;
    let reads = |reads: &sluice_core::history::Reads| {
        reads
            .iter()
            .map(|(k, v)| {
                let mut ranges: Vec<(u64, u64)> = Vec::new();
                for &(o, _) in v {
                    match ranges.last_mut() {
                        Some((_, end)) if *end + 1 == o => *end = o,
                        _ => ranges.push((o, o)),
                    }
                }
                let ranges: Vec<String> = ranges
                    .iter()
                    .map(|(a, b)| {
                        if a == b {
                            a.to_string()
                        } else {
                            format!("{a}-{b}")
                        }
                    })
                    .collect();
                format!("{k}@[{}]", ranges.join(","))
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    let what = match &op.kind {
        OpKind::Poll { reads: r, outcome } => format!("poll {} -> {outcome:?}", reads(r)),
        OpKind::FinalRead { reads: r, outcome } => {
            format!("final read {} -> {outcome:?}", reads(r))
        }
        OpKind::Assign {
            keys,
            seek_to_beginning,
            outcome,
        } => format!(
            "assign {} seek_to_beginning={seek_to_beginning} -> {outcome:?}",
            keys.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        ),
        other => describe(other),
    };
    format!(
        "#{} p{} {}..{} ms {what}",
        op.index, op.process, op.invoke_ms, op.complete_ms
    )
}
