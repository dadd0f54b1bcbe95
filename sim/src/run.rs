//! One seeded run: build the simulated cluster, run the workload and the nemesis (safety phase),
//! heal, check liveness, read everything back, and check the history.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_core::checker::offsets::OffsetFacts;
use sluice_core::checker::replicas::{Observation, ReplicaChecker};
use sluice_core::checker::retention::{ObservedStart, Retained};
use sluice_core::checker::{check_with_facts, AnomalyKind, CheckOptions, CheckReport};
use sluice_core::history::{History, Key, OpKind, Outcome};
use sluice_core::planted::{Bug, Planted};
use sluice_core::rng::Rng;
use sluice_core::testing::MemStorage;
use sluice_node::broker::Broker;
use sluice_node::config::{Config, ServeArgs};

use crate::client;
use crate::config_probes;
use crate::configs;
use crate::groups::{self, GroupLog};
use crate::nemesis::{BrokerNode, Cluster, FaultSpan, MediaDamage, Nemesis};
use crate::ops::Recorded;
use crate::params::{Params, Scenario};
use crate::trace::{hash, Trace};
use crate::workload;

/// How long the healed broker gets to serve produce and fetch again.
pub const LIVENESS_BOUND: Duration = Duration::from_secs(20);
/// A run that has not finished after this much simulated time is stuck.
pub const SIMULATED_TIME_LIMIT: Duration = Duration::from_secs(600);

const BROKER_PORT: u16 = 9092;
/// `log_cleaner_backoff_ms` in the configs scenario (the broker default is 15 s).
const CONFIGS_CLEANER_BACKOFF_MS: u64 = 100;
const RPC_PORT: u16 = 9093;

/// Broker `i`'s address in the simulated network.
fn broker_ip(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, i as u8 + 1))
}

/// How a run ended. The process exit codes are distinct per kind (see `cli`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    Ok,
    /// The checkers found an anomaly (or data that could not be read back).
    Correctness(String),
    /// The healed broker did not serve produce and fetch within the bound.
    Liveness(String),
    /// A panic: an invariant assertion, or the simulation itself.
    Crash(String),
}

impl Status {
    pub fn name(&self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Correctness(_) => "correctness",
            Status::Liveness(_) => "liveness",
            Status::Crash(_) => "crash",
        }
    }

    pub fn exit_code(&self) -> u8 {
        match self {
            Status::Ok => 0,
            Status::Correctness(_) => 1,
            Status::Liveness(_) => 2,
            Status::Crash(_) => 3,
        }
    }
}

/// Everything a run produced.
pub struct RunOutcome {
    pub params: Params,
    pub planted: Option<Bug>,
    pub status: Status,
    pub simulated_ms: u64,
    pub trace_jsonl: String,
    pub trace_hash: u64,
    pub history: History,
    pub report: Option<CheckReport>,
    pub spans: Vec<FaultSpan>,
    /// Ops to highlight in the timeline.
    pub offending_ops: Vec<usize>,
    pub excused: u64,
}

/// Runs one seed on a fresh thread with its own madsim runtime.
pub fn run_seed(seed: u64, scenario: Scenario, bug: Option<Bug>) -> RunOutcome {
    std::thread::Builder::new()
        .name(format!("sim-{seed}"))
        .spawn(move || run_on_this_thread(seed, scenario, bug))
        .expect("spawn simulation thread")
        .join()
        .expect("simulation thread")
}

fn run_on_this_thread(seed: u64, scenario: Scenario, bug: Option<Bug>) -> RunOutcome {
    let params = Params::from_seed(seed, scenario);
    let mut runtime =
        madsim::runtime::Runtime::with_seed_and_config(seed, madsim::Config::default());
    runtime.set_time_limit(SIMULATED_TIME_LIMIT);
    let run_params = params.clone();
    let trace = Trace::new();
    let run_trace = trace.clone();
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
        runtime.block_on(simulate(run_params, bug, run_trace))
    }));
    match result {
        Ok(outcome) => RunOutcome {
            planted: bug,
            ..outcome
        },
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic with a non-string payload".into());
            // The trace up to the panic is the triage material.
            let events = trace.events();
            let simulated_ms = events.last().map_or(0, |e| e.t_ms);
            let trace_jsonl = trace.to_jsonl();
            RunOutcome {
                params,
                planted: bug,
                status: Status::Crash(message),
                simulated_ms,
                trace_hash: hash(&trace_jsonl),
                trace_jsonl,
                history: History::new(),
                report: None,
                spans: Vec::new(),
                offending_ops: Vec::new(),
                excused: 0,
            }
        }
    }
}

fn broker_config(params: &Params, node: u32, bug: Option<Bug>) -> Config {
    let addr = SocketAddr::new(broker_ip(node), BROKER_PORT);
    let cluster = params.nodes > 1;
    let args = ServeArgs {
        listen: Some(addr.to_string()),
        data_dir: Some("data".into()),
        node_id: Some(node as i32),
        peers: cluster.then(|| {
            (0..params.nodes)
                .map(|j| format!("{j}@{}", SocketAddr::new(broker_ip(j), RPC_PORT)))
                .collect()
        }),
        rpc_listen: cluster.then(|| SocketAddr::new(broker_ip(node), RPC_PORT).to_string()),
        default_replication_factor: Some(params.replication_factor),
        election_timeout_ms: cluster.then_some(params.election_timeout_ms),
        replica_fetch_max_bytes: Some(params.replica_fetch_max_bytes),
        auto_create_topics: Some(false),
        segment_bytes: Some(params.segment_bytes),
        index_interval_bytes: Some(params.index_interval_bytes),
        flush_interval_ms: Some(params.flush_interval_ms),
        retention_ms: Some(params.retention.as_ref().map_or(-1, |r| r.retention_ms)),
        retention_bytes: Some(params.retention.as_ref().map_or(-1, |r| r.retention_bytes)),
        retention_check_interval_ms: params.retention.as_ref().map(|r| r.check_interval_ms).or(
            params
                .configs
                .as_ref()
                .map(|c| c.retention_check_interval_ms),
        ),
        ..ServeArgs::default()
    };
    let args = match &params.groups {
        None => args,
        Some(g) => ServeArgs {
            offsets_topic_partitions: Some(g.offsets_partitions),
            offsets_topic_replication_factor: Some(params.replication_factor),
            group_initial_rebalance_delay_ms: Some(g.initial_rebalance_delay_ms),
            group_min_session_timeout_ms: Some(100),
            offsets_topic_segment_bytes: Some(g.offsets_segment_bytes),
            log_cleaner_backoff_ms: Some(g.cleaner_backoff_ms),
            ..args
        },
    };
    // The configs scenario's compaction probe waits for the cleaner: let it look often.
    let args = match &params.configs {
        None => args,
        Some(_) => ServeArgs {
            log_cleaner_backoff_ms: Some(CONFIGS_CLEANER_BACKOFF_MS),
            ..args
        },
    };
    let mut config = Config::resolve(args).expect("simulation config is valid");
    config.plant(Planted::new(bug));
    config
}

async fn simulate(params: Params, bug: Option<Bug>, trace: Trace) -> RunOutcome {
    let mut rng = Rng::new(params.seed);
    let handle = madsim::runtime::Handle::current();
    trace.record("setup", "params", params.summary());

    let sync_latency = Duration::from_millis(params.sync_latency_ms);
    // What every replica reports, checked as it arrives (a panic here would be lost in a node
    // task, so violations are collected and judged at the end).
    let replicas = Arc::new(Mutex::new(ReplicaChecker::new()));
    // What retention deleted, per partition and replica, for the retention checker.
    let retained: Arc<Mutex<BTreeMap<Key, Retained>>> = Arc::default();
    let mut brokers = Vec::new();
    for i in 0..params.nodes {
        let storage = MemStorage::new();
        storage.set_sync_latency(sync_latency);
        let config = broker_config(&params, i, bug);
        let (node_storage, node_trace) = (storage.clone(), trace.clone());
        let observer_replicas = replicas.clone();
        let observer_retained = retained.clone();
        let observer_trace = trace.clone();
        let observer: sluice_node::broker::Observer = Arc::new(move |o: Observation| {
            if let Observation::Retention {
                group,
                node,
                deletion,
            } = o
            {
                observer_trace.record(
                    "replica",
                    "retention",
                    format!(
                        "{group}: broker {node} deleted {} segments, log start {} -> {} \
                         (Kafka {} -> {}), high watermark {}",
                        deletion.segments.len(),
                        deletion.log_start_before,
                        deletion.log_start_after,
                        deletion.kafka_log_start_before,
                        deletion.kafka_log_start_after,
                        deletion.high_watermark
                    ),
                );
                if let Some(key) = topic_key(&group) {
                    let mut retained = observer_retained.lock().expect("retention lock");
                    retained
                        .entry(key)
                        .or_default()
                        .deletions
                        .push((node, deletion));
                }
                return;
            }
            if let Observation::Leader {
                group, node, term, ..
            } = &o
            {
                observer_trace.record(
                    "replica",
                    "leader",
                    format!("{group} term {term}: broker {node}"),
                );
            }
            if let Observation::Repair {
                group,
                node,
                repairing,
            } = &o
            {
                let kind = if *repairing {
                    "repair-start"
                } else {
                    "repair-done"
                };
                observer_trace.record("replica", kind, format!("{group}: broker {node}"));
            }
            observer_replicas.lock().expect("checker lock").observe(o);
        });
        let node = handle
            .create_node()
            .name(format!("broker-{i}"))
            .ip(broker_ip(i))
            .init(move || {
                let storage = node_storage.clone();
                let storage_for_delay = node_storage.clone();
                let config = config.clone();
                let trace = node_trace.clone();
                let observer = observer.clone();
                async move {
                    // Recovery must never fail on anything a crash or the nemesis can do to
                    // the disk, except on an I/O error (an injected fault that fires during
                    // the start): then the process exits and its supervisor starts it again.
                    let mut broker = loop {
                        match Broker::open(config.clone(), storage.clone()) {
                            Ok(broker) => break broker,
                            Err(e) if e.kind() != std::io::ErrorKind::InvalidData => {
                                trace.record("broker", "start-failed", format!("broker {i}: {e}"));
                                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                            }
                            Err(e) => panic!("broker recovery failed: {e}"),
                        }
                    };
                    broker.set_observer(observer);
                    let disk = storage_for_delay.clone();
                    broker.set_sync_delay(Arc::new(move || disk.sync_latency()));
                    sluice_node::server::connect_peers(&config, &mut broker)
                        .await
                        .expect("bind the node-to-node listener");
                    trace.record("broker", "started", format!("broker {i}"));
                    let listener = tokio::net::TcpListener::bind(config.listen.as_str())
                        .await
                        .expect("bind");
                    let _ = sluice_node::server::run(config, broker, listener).await;
                }
            })
            .build();
        brokers.push(BrokerNode {
            id: node.id(),
            storage,
        });
    }
    let bootstrap: Vec<String> = (0..params.nodes)
        .map(|i| SocketAddr::new(broker_ip(i), BROKER_PORT).to_string())
        .collect();

    let mut client_nodes = Vec::new();
    for i in 0..params.clients {
        let node = handle
            .create_node()
            .name(format!("client-{i}"))
            .ip(IpAddr::V4(Ipv4Addr::new(10, 0, 1, i as u8 + 1)))
            .build();
        client_nodes.push(node);
    }
    let setup = handle
        .create_node()
        .name("setup")
        .ip(IpAddr::V4(Ipv4Addr::new(10, 0, 2, 1)))
        .build();
    {
        let (bootstrap, trace, partitions, rf) = (
            bootstrap.clone(),
            trace.clone(),
            params.partitions,
            params.replication_factor,
        );
        setup
            .spawn(async move { client::create_topic(&bootstrap, partitions, rf, &trace).await })
            .await
            .expect("setup");
    }
    if params.groups.is_some() {
        let (bootstrap, trace) = (bootstrap.clone(), trace.clone());
        setup
            .spawn(async move { groups::create_offsets_topic(&bootstrap, &trace).await })
            .await
            .expect("setup");
    }
    if params.configs.is_some() {
        let (bootstrap, trace, rf) = (bootstrap.clone(), trace.clone(), params.replication_factor);
        setup
            .spawn(async move {
                client::create_named_topic(&bootstrap, configs::CONFIG_TOPIC, 1, rf, &trace).await
            })
            .await
            .expect("setup");
    }
    let config_nodes: Vec<_> = (0..params.configs.as_ref().map_or(0, |c| c.processes))
        .map(|i| {
            handle
                .create_node()
                .name(format!("config-{i}"))
                .ip(IpAddr::V4(Ipv4Addr::new(10, 0, 4, i as u8 + 1)))
                .build()
        })
        .collect();
    let member_nodes: Vec<_> = (0..params.groups.as_ref().map_or(0, |g| g.members))
        .map(|m| {
            handle
                .create_node()
                .name(format!("member-{m}"))
                .ip(IpAddr::V4(Ipv4Addr::new(10, 0, 3, m as u8 + 1)))
                .build()
        })
        .collect();
    let group_log = GroupLog::default();

    // Safety phase: workload and nemesis together.
    let deadline_ms = trace.now_ms() + params.fault_phase_ms;
    let mut tasks = Vec::new();
    for (i, node) in client_nodes.iter().enumerate() {
        let (bootstrap, params, trace, client_rng) =
            (bootstrap.clone(), params.clone(), trace.clone(), rng.fork());
        tasks.push(node.spawn(workload::run_client(
            i as u32,
            bootstrap,
            params,
            client_rng,
            trace,
            deadline_ms,
        )));
    }
    let mut member_tasks = Vec::new();
    for (m, node) in member_nodes.iter().enumerate() {
        let (bootstrap, params, trace, log, member_rng) = (
            bootstrap.clone(),
            params.clone(),
            trace.clone(),
            group_log.clone(),
            rng.fork(),
        );
        member_tasks.push(node.spawn(groups::run_slot(
            m as u32,
            bootstrap,
            params,
            member_rng,
            log,
            trace,
            deadline_ms,
        )));
    }
    let mut config_tasks = Vec::new();
    for (i, node) in config_nodes.iter().enumerate() {
        let (bootstrap, params, trace, config_rng) =
            (bootstrap.clone(), params.clone(), trace.clone(), rng.fork());
        config_tasks.push(node.spawn(configs::run_process(
            i as u32,
            bootstrap,
            params,
            config_rng,
            trace,
            deadline_ms,
        )));
    }
    let cluster = Cluster {
        handle: handle.clone(),
        brokers,
        // Group members are clients too: a clogged member misses its heartbeats.
        clients: client_nodes
            .iter()
            .chain(&member_nodes)
            .chain(&config_nodes)
            .map(|n| n.id())
            .collect(),
        sync_latency,
        partitions: params.partitions,
        replicas: replicas.clone(),
        retained: retained.clone(),
        coordinator_partition: params
            .groups
            .as_ref()
            .map(|g| sluice_core::group::partition_for(groups::GROUP_ID, g.offsets_partitions)),
        aim_at_controller: params.configs.is_some(),
    };
    let mut nemesis = Nemesis::new();
    nemesis
        .run(&cluster, &params, rng.fork(), &trace, deadline_ms)
        .await;
    let mut recorded: Vec<Recorded> = Vec::new();
    for task in tasks {
        recorded.extend(task.await.expect("client task"));
    }
    for task in member_tasks {
        task.await.expect("member task");
    }
    for task in config_tasks {
        recorded.extend(task.await.expect("config task"));
    }
    recorded.extend(group_log.take_ops());
    nemesis.heal(&cluster, &trace);

    // Liveness phase, on the healed broker.
    let probe = handle
        .create_node()
        .name("probe")
        .ip(IpAddr::V4(Ipv4Addr::new(10, 0, 2, 2)))
        .build();
    // A partition whose synced data the nemesis damaged may refuse reads near the damage; probe
    // an undamaged one when there is one.
    let probe_partition = (0..params.partitions)
        .find(|p| !nemesis.damage.iter().any(|d| d.partition == *p))
        .unwrap_or(0);
    let (liveness, probe_ops) = {
        let (bootstrap, trace, process) = (bootstrap.clone(), trace.clone(), params.clients);
        probe
            .spawn(async move {
                workload::liveness(process, &bootstrap, probe_partition, LIVENESS_BOUND, &trace)
                    .await
            })
            .await
            .expect("probe")
    };
    recorded.extend(probe_ops);
    let (final_read, final_marks) = {
        let (bootstrap, trace, partitions) = (bootstrap.clone(), trace.clone(), params.partitions);
        let process = params.clients + 1;
        probe
            .spawn(
                async move { workload::final_read(process, &bootstrap, partitions, &trace).await },
            )
            .await
            .expect("probe")
    };
    // The group's committed offsets must be readable once the faults stop, and no higher than
    // the highest high watermark any fetch reported.
    let liveness = if params.groups.is_some() {
        let (bootstrap, probe_trace, partitions, log) = (
            bootstrap.clone(),
            trace.clone(),
            params.partitions,
            group_log.clone(),
        );
        let offsets = probe
            .spawn(async move {
                let trace = probe_trace;
                groups::final_offsets(&bootstrap, partitions, LIVENESS_BOUND, &log, &trace).await
            })
            .await
            .expect("probe");
        recorded.extend(group_log.take_ops());
        let mut marks = group_log.high_watermarks();
        for (p, hw) in final_marks {
            let mark = marks.entry(p).or_insert(0);
            *mark = (*mark).max(hw);
        }
        recorded.push(groups::record_high_watermarks(&marks, &trace));
        liveness.and_then(|took| offsets.map(|()| took))
    } else {
        liveness
    };
    if !matches!(
        &final_read.kind,
        OpKind::FinalRead {
            outcome: Outcome::Ok(()),
            ..
        }
    ) {
        let (bootstrap, trace) = (bootstrap.clone(), trace.clone());
        probe
            .spawn(async move { client::record_views(&bootstrap, &trace).await })
            .await
            .expect("probe");
    }
    recorded.push(final_read);
    if params.configs.is_some() {
        let (boot, tr) = (bootstrap.clone(), trace.clone());
        let ops = probe
            .spawn(async move { configs::final_configs(&boot, &tr).await })
            .await
            .expect("probe");
        recorded.extend(ops);
        // Then compaction on `cfg`; the config-effects probe after it switches `cfg` back to
        // `cleanup.policy=delete` (it sets what the brokers describe is in its way).
        let (boot, tr) = (bootstrap.clone(), trace.clone());
        let storages: Vec<_> = cluster.brokers.iter().map(|b| b.storage.clone()).collect();
        let ops = probe
            .spawn(async move { crate::compaction_probe::run(&boot, &storages, &tr).await })
            .await
            .expect("probe");
        recorded.extend(ops);
    }
    let mut effects = Vec::new();
    if params.configs.is_some() {
        let described = config_probes::agreed_overrides(&recorded);
        let (probe_bootstrap, probe_trace, seed) = (bootstrap.clone(), trace.clone(), params.seed);
        let interval = params
            .configs
            .as_ref()
            .map_or(0, |c| c.retention_check_interval_ms);
        let (ops, plan) = probe
            .spawn(config_probes::probe_effects(
                probe_bootstrap,
                probe_trace,
                described,
                seed,
                interval,
            ))
            .await
            .expect("probe");
        recorded.extend(ops);
        if let Some(plan) = plan {
            let checker = replicas.lock().expect("checker lock");
            effects.push(config_probes::layouts(&cluster, &checker, &plan, &trace));
        }
    }

    let history = to_history(recorded);
    let mut facts = OffsetFacts {
        config_effects: effects,
        ..OffsetFacts::default()
    };
    if params.retention.is_some() {
        facts.retention = retained.lock().expect("retention lock").clone();
        // One node serves every fetch from one log; a partition with no deletion reported has
        // none yet, but clients may still have been told a log start.
        for p in 0..params.partitions {
            facts.retention.entry(client::key(p)).or_default();
        }
        for r in facts.retention.values_mut() {
            r.monotonic = params.nodes == 1;
        }
        for (partition, call) in trace.delete_records() {
            facts
                .retention
                .entry(client::key(partition))
                .or_default()
                .delete_records
                .push(call);
        }
        for (partition, invoke_ms, at_ms, offset) in trace.log_starts() {
            facts
                .retention
                .entry(client::key(partition))
                .or_default()
                .observed_starts
                .push(ObservedStart {
                    invoke_ms,
                    at_ms,
                    offset,
                });
        }
    }
    let report = check_with_facts(
        &history,
        CheckOptions {
            acks1_offsets_final: params.nodes == 1,
        },
        &facts,
    );
    let replica_problems = {
        let checker = replicas.lock().expect("checker lock");
        trace.record(
            "checker",
            "replicas",
            format!(
                "{} observations, {} terms led, {} leader-completeness checks, {} violations",
                checker.observations(),
                checker.terms_led(),
                checker.completeness_checks(),
                checker.violation_count()
            ),
        );
        // On one node a flipped bit may cut committed data (there is no other copy); the
        // damaged partitions' changed commits are excused like their history anomalies.
        let damaged = |group: &str| {
            nemesis
                .damage
                .iter()
                .any(|d| group == format!("{}-{}", client::TOPIC, d.partition))
        };
        let mut problems: Vec<String> = checker
            .violations()
            .iter()
            .filter(|v| !damaged(&v.group))
            .map(|v| v.to_string())
            .collect();
        problems.extend(crate::agreement::compare(&cluster, &checker));
        let images = crate::agreement::image_replays(&cluster, &checker);
        trace.record(
            "checker",
            "metadata-images",
            format!(
                "{} images compared with a replay of their log, {} differ",
                checker.metadata_images().count(),
                images.len()
            ),
        );
        problems.extend(images);
        problems
    };
    let (status, offending_ops, excused) = judge(
        &params,
        &history,
        &report,
        &nemesis.damage,
        liveness,
        &replica_problems,
    );
    trace.record("checker", status.name(), format!("{report}"));
    let trace_jsonl = trace.to_jsonl();
    RunOutcome {
        simulated_ms: trace.now_ms(),
        trace_hash: hash(&trace_jsonl),
        trace_jsonl,
        params,
        planted: None,
        status,
        history,
        report: Some(report),
        spans: nemesis.spans,
        offending_ops,
        excused,
    }
}

/// The workload topic's key for a Raft group name (`topic-partition`); `None` for any other
/// log (the metadata log, the offsets topic).
fn topic_key(group: &str) -> Option<Key> {
    let partition = group.strip_prefix(client::TOPIC)?.strip_prefix('-')?;
    Some(client::key(partition.parse().ok()?))
}

/// Merges the processes' operations into one history ordered by invocation (each process is
/// sequential, so its own order is kept).
fn to_history(mut recorded: Vec<Recorded>) -> History {
    recorded.sort_by_key(|r| (r.invoke_ms, r.complete_ms, r.process));
    let mut history = History::new();
    for r in recorded {
        history.push(r.process, r.kind, r.invoke_ms, r.complete_ms);
    }
    history
}

/// Offsets of `partition` that an operation involved.
fn op_offsets(history: &History, op: usize, partition: i32) -> Vec<u64> {
    match &history.ops[op].kind {
        OpKind::Send {
            key,
            outcome: Outcome::Ok(offset),
            ..
        } if key.partition == partition => vec![*offset],
        OpKind::Poll { reads, .. } | OpKind::FinalRead { reads, .. } => reads
            .iter()
            .filter(|(k, _)| k.partition == partition)
            .flat_map(|(_, v)| v.iter().map(|(o, _)| *o))
            .collect(),
        _ => Vec::new(),
    }
}

/// The verdict. Anomalies explained by deliberate media damage (synced data the nemesis
/// corrupted: on a single node there is no other copy) are excused, except those that would mean
/// corrupted data was served.
fn judge(
    params: &Params,
    history: &History,
    report: &CheckReport,
    damage: &[MediaDamage],
    liveness: Result<u64, String>,
    replica_problems: &[String],
) -> (Status, Vec<usize>, u64) {
    // Replicas that disagree on committed data, or two leaders in a term: nothing excuses it.
    if let Some(first) = replica_problems.first() {
        return (
            Status::Correctness(format!(
                "replicas: {} problems; first: {first}",
                replica_problems.len()
            )),
            Vec::new(),
            0,
        );
    }
    let mut offending = Vec::new();
    let mut excused = 0;
    let mut unexplained = Vec::new();
    for anomaly in &report.anomalies {
        let serves_garbage = matches!(
            anomaly.kind,
            AnomalyKind::UnknownValue | AnomalyKind::AbortedRead
        );
        let damaged_from = damage
            .iter()
            .filter(|d| d.partition == anomaly.key.partition)
            .map(|d| d.offset)
            .min();
        let explained = !serves_garbage
            && damaged_from.is_some_and(|from| {
                anomaly.ops.iter().any(|op| {
                    op_offsets(history, *op, anomaly.key.partition)
                        .iter()
                        .any(|o| *o >= from)
                })
            });
        if explained {
            excused += 1;
        } else {
            offending.extend(anomaly.ops.iter().copied());
            unexplained.push(anomaly.to_string());
        }
    }
    // Counts beyond the kept anomalies are not excusable one by one; only excuse whole kinds
    // when every kept one was excused and the kind was not truncated.
    let truncated = report.anomaly_counts.iter().any(|(kind, count)| {
        *count as usize > report.anomalies.iter().filter(|a| a.kind == *kind).count()
    });
    if !unexplained.is_empty() || (truncated && damage.is_empty()) {
        let mut first = unexplained
            .first()
            .cloned()
            .unwrap_or_else(|| format!("{report}"));
        // The first gap in the offsets a consumer read says where offsets stopped being
        // Kafka's; show it even when anomalies of an earlier kind come first.
        let gap = AnomalyKind::OffsetGap.name();
        if !first.starts_with(gap) {
            let prefix = format!("{gap} ");
            if let Some(first_gap) = unexplained.iter().find(|a| a.starts_with(&prefix)) {
                first.push_str(&format!("; first {first_gap}"));
            }
        }
        return (
            Status::Correctness(format!("{} anomalies; first: {first}", unexplained.len())),
            offending,
            excused,
        );
    }
    // Committed data must be readable to the end unless the nemesis damaged that partition.
    if let Some(final_read) = history
        .ops
        .iter()
        .rev()
        .find(|op| matches!(op.kind, OpKind::FinalRead { .. }))
    {
        if let OpKind::FinalRead {
            outcome: Outcome::Info(why),
            ..
        } = &final_read.kind
        {
            let all_damaged =
                (0..params.partitions).all(|p| damage.iter().any(|d| d.partition == p));
            if damage.is_empty() || !all_damaged {
                let undamaged_problem = why.split("; ").any(|problem| {
                    let partition = problem
                        .strip_prefix("partition ")
                        .and_then(|r| r.split(':').next())
                        .and_then(|p| p.parse::<i32>().ok());
                    partition.is_none_or(|p| !damage.iter().any(|d| d.partition == p))
                });
                if undamaged_problem {
                    return (
                        Status::Correctness(format!("final read incomplete: {why}")),
                        vec![final_read.index],
                        excused,
                    );
                }
            }
        }
    }
    if let Err(why) = liveness {
        return (Status::Liveness(why), offending, excused);
    }
    (Status::Ok, offending, excused)
}
