//! Jepsen-style tests of real sluice processes in network namespaces.
//!
//! [`net`] builds the test network: one namespace per node and one for the client, a bridge
//! between them, and partitions as nftables rules inside the namespaces.

pub mod net;
