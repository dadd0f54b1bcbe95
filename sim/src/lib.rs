//! Deterministic simulation of Sluice (docs/simulation.md).
//!
//! One seed decides everything: the workload mix, the fault kinds, rates and timing, the broker's
//! settings. The real `sluice-node` server runs on a madsim node over [`MemStorage`], clients on
//! other nodes speak the Kafka protocol through Sluice's own client, a nemesis injects faults, and
//! the Jepsen-style checkers of `sluice-core` judge the history.
//!
//! [`MemStorage`]: sluice_core::testing::MemStorage
#![cfg(madsim)]

pub mod agreement;
pub mod cli;
pub mod client;
pub mod compaction_probe;
pub mod config_probes;
pub mod configs;
pub mod groups;
pub mod nemesis;
pub mod ops;
pub mod params;
pub mod pipeline;
pub mod run;
pub mod timeline;
pub mod trace;
pub mod workload;
