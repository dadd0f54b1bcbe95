//! Sluice core: the deterministic, sans-IO state machines that decide everything.
//!
//! Nothing in this crate reads a clock, draws randomness, spawns a thread or touches a file or a
//! socket. Time comes in as `now_ms` arguments; storage effects go out as data
//! ([`log::LogOp`]) and come back as inputs ([`log::PartitionLog::on_synced`]). The one place that
//! calls storage, [`log::LogStore`], does so through the [`storage::Storage`] trait, which the node
//! implements with files and tests implement in memory (`testing::MemStorage`, behind the
//! `testing` feature).

pub mod batch;
pub mod checker;
mod error;
pub mod format;
pub mod group;
pub mod history;
pub mod limits;
pub mod log;
pub mod metadata;
pub mod node;
pub mod planted;
pub mod producer;
pub mod raft;
pub mod replica;
pub mod rng;
pub mod storage;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod time;
pub mod timeline;

pub use error::{ErrorCode, Refusal};
