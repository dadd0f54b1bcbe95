//! The nemesis: faults injected into the broker's node, its disk and its links, one at a time,
//! at seeded intervals, each logged with its simulated start and end.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use madsim::net::NetSim;
use madsim::runtime::Handle;
use madsim::task::NodeId;
use sluice_core::batch::BatchHeader;
use sluice_core::rng::Rng;
use sluice_core::storage::{CrashMode, Faults, MemStorage};

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

/// What the nemesis controls.
pub struct Cluster {
    pub handle: Handle,
    pub broker: NodeId,
    pub broker_addr: SocketAddr,
    pub clients: Vec<NodeId>,
    pub storage: MemStorage,
    /// The disk's normal fsync time (the seed's; a slow disk is slower).
    pub sync_latency: Duration,
}

/// The network's normal latency (madsim's default).
fn default_latency() -> std::ops::Range<Duration> {
    Duration::from_millis(1)..Duration::from_millis(10)
}

pub struct Nemesis {
    pub spans: Vec<FaultSpan>,
    pub damage: Vec<MediaDamage>,
    broker_down: bool,
}

impl Nemesis {
    pub fn new() -> Nemesis {
        Nemesis {
            spans: Vec::new(),
            damage: Vec::new(),
            broker_down: false,
        }
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
            let kind = *rng.pick(&kinds);
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
                if kind == "torn-write" {
                    // A tear needs a write in flight: wait (briefly) for one.
                    for _ in 0..500 {
                        if cluster.storage.unsynced_bytes() > 0 {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
                let unsynced = cluster.storage.unsynced_bytes();
                handle.kill(cluster.broker);
                cluster.storage.crash(mode);
                self.broker_down = true;
                trace.record(
                    "nemesis",
                    "broker-down",
                    format!("{mode:?}, {unsynced} unsynced bytes lost or torn"),
                );
                tokio::time::sleep(Duration::from_millis(rng.between(50, 2_000))).await;
                handle.restart(cluster.broker);
                self.broker_down = false;
                trace.record("nemesis", "broker-restarted", "");
                format!("{mode:?}, {unsynced} unsynced bytes")
            }
            "bit-flip" => self.flip_bit(cluster, rng),
            "io-error" => {
                let sync = rng.chance(600);
                let faults = Faults {
                    fail_next_sync: sync,
                    fail_next_write: !sync,
                    ..Faults::default()
                };
                cluster.storage.inject(faults);
                if sync {
                    "next fsync fails".into()
                } else {
                    "next write fails".into()
                }
            }
            "slow-disk" => {
                let latency = Duration::from_millis(rng.between(10, 200));
                cluster.storage.set_sync_latency(latency);
                tokio::time::sleep(Duration::from_millis(rng.between(200, 3_000))).await;
                cluster.storage.set_sync_latency(cluster.sync_latency);
                format!("fsync takes {} ms", latency.as_millis())
            }
            "clog" => {
                let net = NetSim::current();
                let client = *rng.pick(&cluster.clients);
                let both = rng.chance(500);
                net.clog_link(client, cluster.broker);
                if both {
                    net.clog_link(cluster.broker, client);
                }
                tokio::time::sleep(Duration::from_millis(rng.between(100, 3_000))).await;
                net.unclog_link(client, cluster.broker);
                net.unclog_link(cluster.broker, client);
                format!(
                    "client node {client} {} broker",
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
                handle.pause(cluster.broker);
                tokio::time::sleep(Duration::from_millis(rng.between(100, 2_000))).await;
                handle.resume(cluster.broker);
                "broker paused".into()
            }
            other => unreachable!("unknown fault kind {other}"),
        }
    }

    /// Flips a bit inside the synced part of a random data segment file. The metadata log is
    /// spared: on one node it is the cluster's only copy of its metadata (topics, ids), and
    /// losing it loses every topic, which no checker could excuse record by record.
    fn flip_bit(&mut self, cluster: &Cluster, rng: &mut Rng) -> String {
        let logs: Vec<PathBuf> = cluster
            .storage
            .paths()
            .into_iter()
            .filter(|p| {
                p.extension().is_some_and(|e| e == "log")
                    && !p.starts_with(METADATA_DIR)
                    && cluster.storage.durable_len(p) > 0
            })
            .collect();
        if logs.is_empty() {
            return "no synced segment yet".into();
        }
        let path = rng.pick(&logs).clone();
        let durable = cluster.storage.durable_len(&path);
        let bit = rng.below(durable * 8);
        let byte = bit / 8;
        let Some(bytes) = cluster.storage.read_file(&path) else {
            return "segment vanished".into();
        };
        if !cluster.storage.flip_bit(&path, bit) {
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
        self.damage.push(MediaDamage { partition, offset });
        format!(
            "{} bit {bit} (batch at offset {offset} of partition {partition})",
            path.display()
        )
    }

    /// Ends every fault: the liveness phase runs on a healed broker.
    pub fn heal(&mut self, cluster: &Cluster, trace: &Trace) {
        let net = NetSim::current();
        for client in &cluster.clients {
            net.unclog_link(*client, cluster.broker);
            net.unclog_link(cluster.broker, *client);
        }
        net.update_config(|c| c.send_latency = default_latency());
        cluster.storage.set_sync_latency(cluster.sync_latency);
        cluster.storage.inject(Faults::default());
        if self.broker_down {
            cluster.handle.restart(cluster.broker);
            self.broker_down = false;
        }
        trace.record("nemesis", "healed", "");
    }
}

impl Default for Nemesis {
    fn default() -> Nemesis {
        Nemesis::new()
    }
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
