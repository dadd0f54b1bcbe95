//! The nemesis: faults injected into the brokers' nodes, their disks and their links, one at a
//! time, at seeded intervals, each logged with its simulated start and end.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use madsim::net::NetSim;
use madsim::runtime::Handle;
use madsim::task::NodeId;
use sluice_core::batch::BatchHeader;
use sluice_core::checker::replicas::ReplicaChecker;
use sluice_core::checker::retention::Retained;
use sluice_core::history::Key;
use sluice_core::rng::Rng;
use sluice_core::testing::{CrashMode, Faults, MemStorage};

use crate::params::Params;
use crate::trace::Trace;

/// The metadata quorum's log directory in a node's data directory.
const METADATA_DIR: &str = "__cluster_metadata-0";

/// A fault with a time span, for the timeline.
#[derive(Clone, Debug)]
pub struct FaultSpan {
    pub kind: &'static str,
    pub detail: String,
    pub start_ms: u64,
    pub end_ms: u64,
}

/// Synced data damaged on purpose: records of `partition` from `offset` on may be lost (there is
/// no other copy on a single node), but must never be served corrupted.
#[derive(Clone, Debug)]
pub struct MediaDamage {
    pub partition: i32,
    pub offset: u64,
}

/// One broker: its simulated node and its disk. Its Sluice node id is its index.
pub struct BrokerNode {
    pub id: NodeId,
    pub storage: MemStorage,
}

/// What the nemesis controls.
pub struct Cluster {
    pub handle: Handle,
    pub brokers: Vec<BrokerNode>,
    pub clients: Vec<NodeId>,
    /// The disk's normal fsync time (the seed's; a slow disk is slower).
    pub sync_latency: Duration,
    /// The workload topic's partition count (leader kills pick one).
    pub partitions: i32,
    /// What the replicas reported: who leads which partition now.
    pub replicas: Arc<Mutex<ReplicaChecker>>,
    /// What retention deleted, per workload partition (the `retention` scenarios): where each
    /// replica's log start sits in Kafka offsets.
    pub retained: Arc<Mutex<BTreeMap<Key, Retained>>>,
    /// The groups scenario: the `__consumer_offsets` partition of the workload's consumer
    /// group, whose leader (the group coordinator) half of the leader faults aim at.
    pub coordinator_partition: Option<i32>,
    /// The configs scenario: half of the leader faults aim at the controller (the metadata
    /// quorum's leader) instead.
    pub aim_at_controller: bool,
}

impl Cluster {
    /// A broker drawn at random (no draw on a single node, which keeps single-node seeds'
    /// streams as they were).
    fn pick(&self, rng: &mut Rng) -> usize {
        if self.brokers.len() == 1 {
            0
        } else {
            rng.below(self.brokers.len() as u64) as usize
        }
    }

    /// The brokers in a seeded random order.
    fn shuffled(&self, rng: &mut Rng) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.brokers.len()).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i as u64 + 1) as usize);
        }
        order
    }

    /// The broker that last became the leader of `partition` of the workload topic (in the
    /// groups scenario, half the time the group coordinator instead), or any broker if none has
    /// yet; and what it leads. In the configs scenario, half the time the controller instead.
    fn leader_or_any(&self, partition: u64, rng: &mut Rng) -> (usize, String) {
        let (group, target) = match (self.coordinator_partition, self.aim_at_controller) {
            (Some(p), _) if rng.chance(500) => {
                let group = format!("{}-{p}", sluice_core::group::OFFSETS_TOPIC);
                let target = format!("the group coordinator, {group}");
                (group, target)
            }
            (None, true) if rng.chance(500) => {
                let group = format!("{}-0", sluice_core::metadata::METADATA_TOPIC);
                let target = format!("the controller, {group}");
                (group, target)
            }
            _ => (
                format!("{}-{partition}", crate::client::TOPIC),
                format!("partition {partition}"),
            ),
        };
        let leader = self
            .replicas
            .lock()
            .expect("checker lock")
            .latest_leader(&group);
        let broker = match leader {
            Some((_, node)) if (node as usize) < self.brokers.len() => node as usize,
            _ => self.pick(rng),
        };
        (broker, target)
    }

    fn ids(&self, brokers: &[usize]) -> Vec<NodeId> {
        brokers.iter().map(|b| self.brokers[*b].id).collect()
    }
}

/// Drops every message between `a` and `b`, both ways.
fn cut(net: &NetSim, a: &[NodeId], b: &[NodeId]) {
    for x in a {
        for y in b {
            net.clog_link(*x, *y);
            net.clog_link(*y, *x);
        }
    }
}

/// The network's normal latency (madsim's default).
fn default_latency() -> std::ops::Range<Duration> {
    Duration::from_millis(1)..Duration::from_millis(10)
}

pub struct Nemesis {
    pub spans: Vec<FaultSpan>,
    pub damage: Vec<MediaDamage>,
    /// Brokers killed and not yet restarted.
    down: BTreeSet<usize>,
    /// Cluster runs: the broker whose replicas' disks the nemesis last damaged, and when it came
    /// back. No other broker is damaged until its repairs are done (see `may_damage`): the
    /// promise holds while at most one replica of a group at a time has lost data.
    damaged: Option<(usize, u64)>,
    /// Bits the nemesis flipped in replicas' synced data (cluster runs; nothing is excused).
    pub replica_flips: u64,
    /// Draws of the storage faults added after the others (which directory operation an I/O
    /// error hits, how a crash tears every file): a stream of its own, so that the draws of
    /// `run`'s stream, and with them the older faults of every seed, stay as they were.
    disk_rng: Rng,
}

impl Nemesis {
    pub fn new() -> Nemesis {
        Nemesis {
            spans: Vec::new(),
            damage: Vec::new(),
            down: BTreeSet::new(),
            damaged: None,
            replica_flips: 0,
            disk_rng: Rng::new(0),
        }
    }

    /// Power loss of broker `b`: its node stops and its disk keeps only what was synced (and
    /// a torn last write, in `mode`).
    fn kill(&mut self, cluster: &Cluster, b: usize, mode: CrashMode, trace: &Trace) -> u64 {
        let storage = &cluster.brokers[b].storage;
        let unsynced = storage.unsynced_bytes();
        cluster.handle.kill(cluster.brokers[b].id);
        storage.crash(mode);
        self.down.insert(b);
        trace.record(
            "nemesis",
            "broker-down",
            format!("broker {b}: {mode:?}, {unsynced} unsynced bytes lost or torn"),
        );
        unsynced
    }

    fn restart(&mut self, cluster: &Cluster, b: usize, trace: &Trace) {
        cluster.handle.restart(cluster.brokers[b].id);
        self.down.remove(&b);
        trace.record("nemesis", "broker-restarted", format!("broker {b}"));
    }

    /// Injects faults until `deadline_ms`, then heals everything.
    pub async fn run(
        &mut self,
        cluster: &Cluster,
        params: &Params,
        mut rng: Rng,
        trace: &Trace,
        deadline_ms: u64,
    ) {
        self.disk_rng = Rng::new(params.seed ^ 0xd15c_d15c_0bad_f00d);
        let kinds = params.faults.names();
        if kinds.is_empty() {
            tokio::time::sleep(Duration::from_millis(
                deadline_ms.saturating_sub(trace.now_ms()),
            ))
            .await;
            return;
        }
        loop {
            let wait = rng.between(params.fault_interval_ms.0, params.fault_interval_ms.1);
            if trace.now_ms() + wait >= deadline_ms {
                tokio::time::sleep(Duration::from_millis(
                    deadline_ms.saturating_sub(trace.now_ms()),
                ))
                .await;
                break;
            }
            tokio::time::sleep(Duration::from_millis(wait)).await;
            let kind = pick_weighted(&kinds, &params.fault_weights, &mut rng);
            let start_ms = trace.now_ms();
            let detail = self.inject(kind, cluster, &mut rng, trace).await;
            let end_ms = trace.now_ms();
            trace.record("nemesis", kind, format!("{detail} (until {end_ms} ms)"));
            self.spans.push(FaultSpan {
                kind,
                detail,
                start_ms,
                end_ms,
            });
        }
        self.heal(cluster, trace);
    }

    async fn inject(
        &mut self,
        kind: &'static str,
        cluster: &Cluster,
        rng: &mut Rng,
        trace: &Trace,
    ) -> String {
        let handle = &cluster.handle;
        match kind {
            "crash" | "torn-write" => {
                let mode = if kind == "crash" {
                    CrashMode::Clean
                } else {
                    CrashMode::TearLastWrite {
                        keep_bytes: rng.below(120),
                        garbage: rng.chance(500),
                    }
                };
                let b = cluster.pick(rng);
                // Half the tears tear every file: each keeps a prefix of its unsynced writes,
                // the next one in part (drawn from the disk stream, which leaves `rng` as it
                // was).
                let mut mode = match mode {
                    CrashMode::TearLastWrite { garbage, .. } if self.disk_rng.chance(500) => {
                        CrashMode::TearEach {
                            seed: self.disk_rng.next_u64(),
                            garbage,
                        }
                    }
                    mode => mode,
                };
                // A whole batch of garbage at the end cannot be told from a flipped bit, so a
                // replica treats it as damage and repairs (protocol-aware recovery): in a
                // cluster it counts against the one damaged broker at a time.
                let mut garbage_tear = false;
                if mode.garbage() {
                    if cluster.brokers.len() > 1 && !self.may_damage(cluster, b, trace.now_ms()) {
                        mode = mode.without_garbage();
                    } else {
                        garbage_tear = cluster.brokers.len() > 1;
                    }
                }
                if kind == "torn-write" {
                    // A tear needs a write in flight: wait (briefly) for one.
                    for _ in 0..500 {
                        if cluster.brokers[b].storage.unsynced_bytes() > 0 {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
                let unsynced = self.kill(cluster, b, mode, trace);
                if garbage_tear {
                    self.damaged = Some((b, u64::MAX));
                }
                tokio::time::sleep(Duration::from_millis(rng.between(50, 2_000))).await;
                self.restart(cluster, b, trace);
                if garbage_tear {
                    self.damaged = Some((b, trace.now_ms()));
                }
                format!("broker {b}: {mode:?}, {unsynced} unsynced bytes")
            }
            "kill-leader" => {
                // The leader of a partition the workload is producing to, as it is now.
                let partition = rng.below(cluster.partitions as u64);
                let (b, target) = cluster.leader_or_any(partition, rng);
                let unsynced = self.kill(cluster, b, CrashMode::Clean, trace);
                tokio::time::sleep(Duration::from_millis(rng.between(100, 3_000))).await;
                self.restart(cluster, b, trace);
                format!("broker {b} (leader of {target}), {unsynced} unsynced bytes")
            }
            "isolate-leader" => {
                // Cut the leader off, let a new one be elected, heal, and again: each round can
                // leave a deposed leader with an uncommitted suffix that the next must cut.
                let rounds = rng.between(1, 5);
                let mut cut_off = Vec::new();
                for _ in 0..rounds {
                    let partition = rng.below(cluster.partitions as u64);
                    let (b, _) = cluster.leader_or_any(partition, rng);
                    let others: Vec<usize> =
                        (0..cluster.brokers.len()).filter(|o| *o != b).collect();
                    let net = NetSim::current();
                    cut(&net, &cluster.ids(&[b]), &cluster.ids(&others));
                    tokio::time::sleep(Duration::from_millis(rng.between(200, 3_000))).await;
                    self.heal_brokers(cluster);
                    cut_off.push(b);
                    tokio::time::sleep(Duration::from_millis(rng.between(0, 1_000))).await;
                }
                format!("leaders cut off in turn: brokers {cut_off:?}")
            }
            "lagging-failover" => {
                let partition = rng.below(cluster.partitions as u64);
                let (leader, target) = cluster.leader_or_any(partition, rng);
                let others: Vec<usize> = (0..cluster.brokers.len())
                    .filter(|o| *o != leader)
                    .collect();
                let lagging = *rng.pick(&others);
                let rest: Vec<usize> = (0..cluster.brokers.len())
                    .filter(|o| *o != lagging)
                    .collect();
                let net = NetSim::current();
                cut(&net, &cluster.ids(&[lagging]), &cluster.ids(&rest));
                // A slow disk under the leader holds back its commit index (it counts only
                // what it has synced itself), so the survivor holds entries not yet known to
                // be committed.
                let slow = rng.chance(500);
                if slow {
                    let latency = Duration::from_millis(rng.between(20, 200));
                    cluster.brokers[leader].storage.set_sync_latency(latency);
                }
                tokio::time::sleep(Duration::from_millis(rng.between(300, 3_000))).await;
                let unsynced = self.kill(cluster, leader, CrashMode::Clean, trace);
                cluster.brokers[leader]
                    .storage
                    .set_sync_latency(cluster.sync_latency);
                tokio::time::sleep(Duration::from_millis(rng.between(0, 300))).await;
                self.heal_brokers(cluster);
                tokio::time::sleep(Duration::from_millis(rng.between(100, 3_000))).await;
                self.restart(cluster, leader, trace);
                format!(
                    "broker {lagging} cut off, then leader {leader} of {target} killed \
                     ({unsynced} unsynced bytes{})",
                    if slow { ", its disk slow" } else { "" }
                )
            }
            "rolling-restart" => {
                for b in 0..cluster.brokers.len() {
                    self.kill(cluster, b, CrashMode::Clean, trace);
                    tokio::time::sleep(Duration::from_millis(rng.between(50, 1_000))).await;
                    self.restart(cluster, b, trace);
                    tokio::time::sleep(Duration::from_millis(rng.between(300, 2_000))).await;
                }
                format!("{} brokers restarted in turn", cluster.brokers.len())
            }
            "partition" => {
                let order = cluster.shuffled(rng);
                let minority = rng.between(1, (order.len() as u64 - 1) / 2) as usize;
                let (a, b) = order.split_at(minority);
                self.split_for_a_while(cluster, a, b, rng).await;
                format!("brokers {a:?} | {b:?}")
            }
            "bridge" => {
                // Two sides that only the bridge node connects (Jepsen's bridge).
                let order = cluster.shuffled(rng);
                let (bridge, rest) = order.split_first().expect("a cluster has brokers");
                let (a, b) = rest.split_at(rest.len() / 2);
                self.split_for_a_while(cluster, a, b, rng).await;
                format!("brokers {a:?} | {b:?}, bridged by {bridge}")
            }
            "one-way" => {
                let order = cluster.shuffled(rng);
                let (from, to) = (order[0], order[1]);
                let net = NetSim::current();
                net.clog_link(cluster.brokers[from].id, cluster.brokers[to].id);
                tokio::time::sleep(Duration::from_millis(rng.between(500, 5_000))).await;
                self.heal_brokers(cluster);
                format!("broker {from} -/-> broker {to}")
            }
            "bit-flip" => self.flip_bit(cluster, rng),
            "replica-damage" | "hard-state-damage" => {
                let b = cluster.pick(rng);
                if !self.may_damage(cluster, b, trace.now_ms()) {
                    return format!("broker {b}: skipped, another broker's replicas still repair");
                }
                self.kill(cluster, b, CrashMode::Clean, trace);
                let detail = if kind == "replica-damage" {
                    flip_in_tail(&cluster.brokers[b].storage, rng)
                } else {
                    flip_in_hard_state(&cluster.brokers[b].storage, rng)
                };
                if detail.is_some() {
                    self.replica_flips += 1;
                    self.damaged = Some((b, u64::MAX));
                }
                tokio::time::sleep(Duration::from_millis(rng.between(50, 1_000))).await;
                self.restart(cluster, b, trace);
                if detail.is_some() {
                    self.damaged = Some((b, trace.now_ms()));
                }
                format!(
                    "broker {b}: {}",
                    detail.unwrap_or_else(|| "nothing synced to damage yet".into())
                )
            }
            "power-cut-all" => {
                let mut lost = 0;
                for b in 0..cluster.brokers.len() {
                    // Each loses its unsynced writes; some keep a prefix of their last one (a
                    // tear that ends the file inside a batch, never a whole garbage batch).
                    let mode = if rng.chance(500) {
                        let last = CrashMode::TearLastWrite {
                            keep_bytes: rng.below(120),
                            garbage: false,
                        };
                        if self.disk_rng.chance(500) {
                            CrashMode::TearEach {
                                seed: self.disk_rng.next_u64(),
                                garbage: false,
                            }
                        } else {
                            last
                        }
                    } else {
                        CrashMode::Clean
                    };
                    lost += self.kill(cluster, b, mode, trace);
                }
                tokio::time::sleep(Duration::from_millis(rng.between(100, 2_000))).await;
                for b in 0..cluster.brokers.len() {
                    self.restart(cluster, b, trace);
                }
                format!("every broker lost power ({lost} unsynced bytes)")
            }
            "recovery-crash" => {
                let b = cluster.pick(rng);
                self.kill(cluster, b, CrashMode::Clean, trace);
                tokio::time::sleep(Duration::from_millis(rng.between(50, 500))).await;
                self.restart(cluster, b, trace);
                // Soon enough to catch it opening its logs (each is recovered by a job of its
                // own, after the metadata log).
                let again = rng.between(0, 40);
                tokio::time::sleep(Duration::from_millis(again)).await;
                self.kill(cluster, b, CrashMode::Clean, trace);
                tokio::time::sleep(Duration::from_millis(rng.between(50, 500))).await;
                self.restart(cluster, b, trace);
                format!("broker {b} crashed again {again} ms into its restart")
            }
            "io-error" => {
                let sync = rng.chance(600);
                let mut faults = Faults {
                    fail_next_sync: sync,
                    fail_next_write: !sync,
                    ..Faults::default()
                };
                let mut what = if sync { "fsync" } else { "write" };
                // A third of them hit a directory operation or an open instead.
                if self.disk_rng.chance(333) {
                    faults = Faults::default();
                    what = match self.disk_rng.below(4) {
                        0 => {
                            faults.fail_next_sync_dir = true;
                            "directory sync"
                        }
                        1 => {
                            faults.fail_next_rename = true;
                            "rename"
                        }
                        2 => {
                            faults.fail_next_remove = true;
                            "file removal"
                        }
                        _ => {
                            faults.fail_next_open = true;
                            "open"
                        }
                    };
                }
                let b = cluster.pick(rng);
                cluster.brokers[b].storage.inject(faults);
                format!("broker {b}: next {what} fails")
            }
            "misdirected-write" => self.misdirect(cluster, rng, trace).await,
            "slow-disk" => {
                let b = cluster.pick(rng);
                let latency = Duration::from_millis(rng.between(10, 200));
                cluster.brokers[b].storage.set_sync_latency(latency);
                tokio::time::sleep(Duration::from_millis(rng.between(200, 3_000))).await;
                cluster.brokers[b]
                    .storage
                    .set_sync_latency(cluster.sync_latency);
                format!("broker {b}: fsync takes {} ms", latency.as_millis())
            }
            "clog" => {
                let net = NetSim::current();
                let client = *rng.pick(&cluster.clients);
                let both = rng.chance(500);
                let b = cluster.pick(rng);
                let broker = cluster.brokers[b].id;
                net.clog_link(client, broker);
                if both {
                    net.clog_link(broker, client);
                }
                tokio::time::sleep(Duration::from_millis(rng.between(100, 3_000))).await;
                net.unclog_link(client, broker);
                net.unclog_link(broker, client);
                format!(
                    "client node {client} {} broker {b}",
                    if both { "<-/->" } else { "-/->" }
                )
            }
            "latency" => {
                let net = NetSim::current();
                let high = Duration::from_millis(rng.between(20, 300));
                net.update_config(|c| c.send_latency = high / 2..high);
                tokio::time::sleep(Duration::from_millis(rng.between(300, 3_000))).await;
                net.update_config(|c| c.send_latency = default_latency());
                format!("latency up to {} ms", high.as_millis())
            }
            "pause" => {
                let b = cluster.pick(rng);
                handle.pause(cluster.brokers[b].id);
                tokio::time::sleep(Duration::from_millis(rng.between(100, 2_000))).await;
                handle.resume(cluster.brokers[b].id);
                format!("broker {b} paused")
            }
            other => unreachable!("unknown fault kind {other}"),
        }
    }

    /// Flips a bit inside the synced part of a random data segment file. The metadata log is
    /// spared: on one node it is the cluster's only copy of its metadata (topics, ids), and
    /// losing it loses every topic, which no checker could excuse record by record.
    fn flip_bit(&mut self, cluster: &Cluster, rng: &mut Rng) -> String {
        // On one node only: with replicas, a flipped bit cuts a replica's log below what it
        // acknowledged, which Raft (without protocol-aware recovery) cannot tolerate.
        assert_eq!(
            cluster.brokers.len(),
            1,
            "bit flips are a single-node fault"
        );
        let storage = &cluster.brokers[0].storage;
        let logs: Vec<PathBuf> = storage
            .paths()
            .into_iter()
            .filter(|p| {
                p.extension().is_some_and(|e| e == "log")
                    && !p.starts_with(METADATA_DIR)
                    && storage.durable_len(p) > 0
            })
            .collect();
        if logs.is_empty() {
            return "no synced segment yet".into();
        }
        let path = rng.pick(&logs).clone();
        let durable = storage.durable_len(&path);
        let bit = rng.below(durable * 8);
        let byte = bit / 8;
        let Some(bytes) = storage.read_file(&path) else {
            return "segment vanished".into();
        };
        if !storage.flip_bit(&path, bit) {
            return "flip missed".into();
        }
        let partition = partition_of(&path);
        let segment_base: u64 = path
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        // The batch holding the byte: everything from it on may be lost.
        let mut offset = segment_base;
        let mut at = 0usize;
        while let Ok(header) = BatchHeader::parse(&bytes[at.min(bytes.len())..]) {
            if at as u64 + header.total_bytes() as u64 > byte {
                break;
            }
            at += header.total_bytes();
            offset = header.next_offset().max(0) as u64;
        }
        // Clients see Kafka offsets: Raft's own entries below the damaged batch take none.
        // Those in segments retention deleted are no longer on disk: the deletion that moved
        // the log start to the first segment left says how many there were.
        let log_start = first_segment_base(storage, &path);
        let below_log_start = if log_start == 0 {
            0
        } else {
            let retained = cluster.retained.lock().expect("retention lock");
            retained
                .get(&crate::client::key(partition))
                .and_then(|r| {
                    r.deletions
                        .iter()
                        .rev()
                        .find(|(node, d)| *node == 0 && d.log_start_after == log_start)
                        // The last deleted segment ends at the log start; its Kafka offset
                        // there counts only records (a DeleteRecords start may lie higher).
                        .and_then(|(_, d)| {
                            let last = d.segments.last()?;
                            Some(d.log_start_after - last.kafka_next_offset)
                        })
                })
                // Unknown: assume every offset below the log start was Raft's own, which puts
                // the damage as low as it can be (excusing more, never less).
                .unwrap_or(log_start)
        };
        let kafka =
            offset - internal_entries_below(storage, &path, &bytes, offset) - below_log_start;
        self.damage.push(MediaDamage {
            partition,
            offset: kafka,
        });
        format!(
            "{} bit {bit} (batch at log offset {offset}, Kafka offset {kafka}, of partition {partition})",
            path.display()
        )
    }

    /// One append of a broker lands at a wrong, earlier offset of its file, and reaches the
    /// disk (with the older, synced and possibly acknowledged, bytes it overwrote, and the zeros
    /// left where it belonged) just before the broker loses power; then it restarts. The file is
    /// its log's active segment, at or above the checkpoint's recovery point, so recovery scans
    /// it, finds the damage, and the replica repairs it from its peers. (Had the broker run on,
    /// its log could roll and its checkpoint pass the damaged segment: damage below the recovery
    /// point is not repairable yet, see docs/simulation.md, "Limits of the model".) A cluster
    /// fault only: on one node the only copy is gone.
    async fn misdirect(&mut self, cluster: &Cluster, rng: &mut Rng, trace: &Trace) -> String {
        assert!(
            cluster.brokers.len() > 1,
            "misdirected writes are a cluster fault"
        );
        let b = cluster.pick(rng);
        if !self.may_damage(cluster, b, trace.now_ms()) {
            return format!("broker {b}: skipped, another broker's replicas still repair");
        }
        let storage = &cluster.brokers[b].storage;
        let back = rng.between(1, 4_096);
        storage.inject(Faults {
            misdirect_next_write: Some(back),
            ..storage.armed()
        });
        let mut landed = None;
        for _ in 0..2_000 {
            if storage.armed().misdirect_next_write.is_none() {
                // Nothing else runs before the power cut: no sync, roll or checkpoint.
                landed = storage.persist_misdirected();
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let Some(landed) = landed else {
            storage.inject(Faults {
                misdirect_next_write: None,
                ..storage.armed()
            });
            return format!("broker {b}: no append to misdirect");
        };
        self.damaged = Some((b, u64::MAX));
        self.replica_flips += 1;
        self.kill(cluster, b, CrashMode::Clean, trace);
        tokio::time::sleep(Duration::from_millis(rng.between(50, 1_000))).await;
        self.restart(cluster, b, trace);
        self.damaged = Some((b, trace.now_ms()));
        format!("broker {b}: {landed}")
    }

    /// Whether broker `b`'s disk may be damaged now: no other broker holds damage that may not
    /// be repaired yet (back for less than 5 s, or with a replica still repairing).
    fn may_damage(&self, cluster: &Cluster, b: usize, now_ms: u64) -> bool {
        let Some((last, back_ms)) = self.damaged else {
            return true;
        };
        if last == b {
            return true;
        }
        let repairing = cluster
            .replicas
            .lock()
            .expect("checker lock")
            .repairing()
            .iter()
            .any(|(_, node)| *node == last as u64);
        back_ms != u64::MAX && now_ms >= back_ms + 5_000 && !repairing
    }

    /// Cuts brokers `a` off from brokers `b` for 0.5–5 s, then reconnects every broker.
    async fn split_for_a_while(&self, cluster: &Cluster, a: &[usize], b: &[usize], rng: &mut Rng) {
        cut(&NetSim::current(), &cluster.ids(a), &cluster.ids(b));
        tokio::time::sleep(Duration::from_millis(rng.between(500, 5_000))).await;
        self.heal_brokers(cluster);
    }

    /// Reconnects every pair of brokers.
    fn heal_brokers(&self, cluster: &Cluster) {
        let net = NetSim::current();
        for a in &cluster.brokers {
            for b in &cluster.brokers {
                net.unclog_link(a.id, b.id);
            }
        }
    }

    /// Ends every fault: the liveness phase runs on a healed cluster.
    pub fn heal(&mut self, cluster: &Cluster, trace: &Trace) {
        let net = NetSim::current();
        self.heal_brokers(cluster);
        for client in &cluster.clients {
            for broker in &cluster.brokers {
                net.unclog_link(*client, broker.id);
                net.unclog_link(broker.id, *client);
            }
        }
        net.update_config(|c| c.send_latency = default_latency());
        for broker in &cluster.brokers {
            broker.storage.set_sync_latency(cluster.sync_latency);
            broker.storage.inject(Faults::default());
        }
        for b in std::mem::take(&mut self.down) {
            self.restart(cluster, b, trace);
        }
        trace.record("nemesis", "healed", "");
    }
}

impl Default for Nemesis {
    fn default() -> Nemesis {
        Nemesis::new()
    }
}

/// Picks one of `kinds` with the seed's weights (swarm testing).
fn pick_weighted(
    kinds: &[&'static str],
    weights: &std::collections::BTreeMap<&'static str, u32>,
    rng: &mut Rng,
) -> &'static str {
    let weight = |k: &&str| u64::from(weights.get(k).copied().unwrap_or(1).max(1));
    let total: u64 = kinds.iter().map(weight).sum();
    let mut at = rng.below(total);
    for kind in kinds {
        if at < weight(kind) {
            return kind;
        }
        at -= weight(kind);
    }
    unreachable!("a pick below the total weight")
}

/// The replica directories of a broker's disk: the workload's partitions, `__consumer_offsets`
/// and the metadata log.
fn replica_dirs(storage: &MemStorage) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = storage
        .paths()
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .filter_map(|p| p.parent().map(PathBuf::from))
        .collect();
    dirs.sort();
    dirs.dedup();
    dirs
}

/// Flips a bit in the synced data of a replica's log tail: a segment at or above its
/// checkpoint's recovery point, which the next recovery scans batch by batch. Damage below the
/// recovery point is caught by reads instead (never served), and is not in this model: a replica
/// cannot yet repair it from its peers (docs/simulation.md, "Limits of the model").
fn flip_in_tail(storage: &MemStorage, rng: &mut Rng) -> Option<String> {
    let mut candidates = Vec::new();
    for dir in replica_dirs(storage) {
        let recovery_point = storage
            .read_file(&dir.join(sluice_core::log::CHECKPOINT_FILE))
            .and_then(|b| sluice_core::log::Checkpoint::decode(&b))
            .map_or(0, |c| c.recovery_point);
        for path in storage.paths() {
            let in_tail = path.parent() == Some(dir.as_path())
                && path.extension().is_some_and(|e| e == "log")
                && path
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .and_then(|s| s.parse::<u64>().ok())
                    .is_some_and(|base| base >= recovery_point);
            if in_tail && storage.durable_len(&path) > 0 {
                candidates.push(path);
            }
        }
    }
    flip_synced_bit(storage, &candidates, rng)
}

/// Flips a bit in one of the two copies of a replica's Raft hard state.
fn flip_in_hard_state(storage: &MemStorage, rng: &mut Rng) -> Option<String> {
    let copies: Vec<PathBuf> = storage
        .paths()
        .into_iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n == "raft-state" || n == "raft-state-2")
                && storage.durable_len(p) > 0
        })
        .collect();
    flip_synced_bit(storage, &copies, rng)
}

/// Flips one bit in the synced part of one of `files` (which hold synced bytes), or `None` if
/// there is none.
fn flip_synced_bit(storage: &MemStorage, files: &[PathBuf], rng: &mut Rng) -> Option<String> {
    if files.is_empty() {
        return None;
    }
    let path = rng.pick(files);
    let bit = rng.below(storage.durable_len(path) * 8);
    storage
        .flip_bit(path, bit)
        .then(|| format!("flipped bit {bit} of {}", path.display()))
}

/// `sim-2/000….log` → 2.
fn partition_of(path: &std::path::Path) -> i32 {
    path.parent()
        .and_then(|d| d.file_name())
        .and_then(|n| n.to_str())
        .and_then(|n| n.rsplit_once('-'))
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or(-1)
}

/// The base offset of the first segment in the partition directory of `segment`: the log start.
fn first_segment_base(storage: &MemStorage, segment: &Path) -> u64 {
    let dir = segment.parent();
    storage
        .paths()
        .into_iter()
        .filter(|p| p.parent() == dir && p.extension().is_some_and(|e| e == "log"))
        .filter_map(|p| p.file_stem()?.to_str()?.parse::<u64>().ok())
        .min()
        .unwrap_or(0)
}

/// How many of Raft's own entries (which take a log offset but no Kafka offset) the partition
/// directory of `segment` holds below log offset `offset`, reading every segment file (the
/// flipped one as it was before the flip: `flipped`).
fn internal_entries_below(
    storage: &MemStorage,
    segment: &PathBuf,
    flipped: &[u8],
    offset: u64,
) -> u64 {
    let dir = segment.parent();
    let mut count = 0;
    for path in storage.paths() {
        if path.parent() != dir || path.extension().is_none_or(|e| e != "log") {
            continue;
        }
        let bytes = if &path == segment {
            flipped.to_vec()
        } else {
            storage.read_file(&path).unwrap_or_default()
        };
        let mut at = 0usize;
        while let Ok(header) = BatchHeader::parse(&bytes[at.min(bytes.len())..]) {
            let end = (at + header.total_bytes()).min(bytes.len());
            if (header.base_offset as u64) < offset
                && sluice_core::batch::is_raft_internal_batch(&bytes[at..end])
            {
                count += 1;
            }
            at = end;
            if at >= bytes.len() {
                break;
            }
        }
    }
    count
}
