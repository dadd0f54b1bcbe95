//! Jepsen-style tests of real `sluice serve` processes (docs/jepsen.md): each node in its own
//! network namespace ([`net`]: namespaces, a bridge, nftables cuts) with its data directory on a
//! fault-injecting FUSE file system ([`faultfs`]: unsynced writes kept apart and dropped at a
//! power cut, bit flips, failing fsyncs), a workload through librdkafka ([`workload`]), a nemesis
//! of kills, pauses, partitions, power cuts and bit flips ([`nemesis`]), and the same history
//! checkers as the simulator (`sluice_core::checker`).
#![cfg(not(madsim))]

pub mod agreement;
pub mod cluster;
pub mod faultfs;
pub mod nemesis;
pub mod net;
pub mod recorder;
pub mod run;
pub mod workload;
