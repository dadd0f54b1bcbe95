//! The sluice node: the thin shell that runs Sluice's core state machines on sockets and disk.
//!
//! Runs on tokio, or inside madsim when built with `RUSTFLAGS="--cfg madsim"` (tokio is
//! `madsim-tokio`). Everything it does to disk goes through the core's
//! [`Storage`](sluice_core::storage::Storage) trait: [`storage::FileStorage`] for real,
//! [`MemStorage`](sluice_core::testing::MemStorage) under simulation.

mod alloc;
#[cfg(not(madsim))]
pub mod bench;
pub mod broker;
#[cfg(not(madsim))]
pub mod cli;
pub mod client;
pub mod codec;
pub mod compression;
pub mod config;
#[cfg(not(madsim))]
pub mod dev_cluster;
pub mod lock;
pub mod metadata;
pub mod rpc;
pub mod server;
pub mod storage;
pub mod wire;
