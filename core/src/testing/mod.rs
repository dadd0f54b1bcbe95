//! Test scaffolding, not production API: compiled for core's own tests and, with the `testing`
//! feature, for the simulator and the node's tests.
//!
//! - [`MemStorage`]: the simulated [`Storage`](crate::storage::Storage), which loses unsynced
//!   writes on a crash, tears the last write, flips bits and fails I/O on command.
//! - [`raft_harness`]: a whole Raft group over a simulated network and disk, with faults,
//!   checkers and seeded random schedules (the Raft tests and benchmarks).

pub mod mem_storage;
pub mod raft_harness;

pub use mem_storage::{CrashMode, Faults, MemFileHandle, MemStorage};
