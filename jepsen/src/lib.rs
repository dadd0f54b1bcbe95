//! Jepsen-style tests of real sluice processes.
//!
//! [`net`] builds the test network: one namespace per node and one for the client, a bridge
//! between them, and partitions as nftables rules inside the namespaces. [`faultfs`] is the
//! fault-injecting file system each node's data directory is mounted on.

pub mod faultfs;
pub mod net;
