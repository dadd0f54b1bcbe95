//! Raft as a sans-IO state machine: one [`Raft`] per replica of each group (a partition, or the
//! metadata quorum). See docs/raft.md.
//!
//! The shape follows raft-rs's `RawNode`, the determinism does not: election jitter comes from
//! an injected [`crate::rng::Rng`], and the test cluster (`testing::raft_harness`) is driven by one seed.
//!
//! ```text
//! host loop:  tick() every tick_ms        ─┐
//!             step(msg) for each message   ├─> ready(&source) -> Ready { write, messages, committed }
//!             propose(payload) / ...      ─┘       1. do the write, sync it, on_persisted(write.seq)
//!                                                  2. send the messages
//!                                                  3. apply the committed entries
//! ```
//!
//! Durability rule: a message that speaks for this replica's term, vote or log (a vote grant,
//! an append acknowledgement, a candidate's own vote) is held inside the state machine until
//! [`Raft::on_persisted`] confirms the write that made that state durable; [`Ready::messages`]
//! never needs to wait for anything.
//!
//! Storage stays abstract: writes are data ([`Write`]), reads of durable entries go through the
//! [`EntrySource`] trait, and a restart rebuilds the replica from a [`LogMeta`] (terms and
//! memberships by index), so the log can be the partition's own segment files.

mod log;
mod node;
mod progress;
mod types;

pub use log::{EntrySource, LogMeta, LogMetaError};
pub use node::{CompactError, Raft, RaftConfig, RaftState, Ready, RestoreError, Role, Write};
pub use progress::{ProgressState, ProgressView};
pub use types::{
    ConfChange, ConfChangeError, Entry, EntryKind, HardState, Membership, Message, MessageBody,
    NodeId, ProposeError, Snapshot, SnapshotMeta, TransferError,
};

#[cfg(test)]
mod tests;
