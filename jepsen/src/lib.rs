//! Jepsen-style tests of real sluice processes. So far: [`faultfs`], the fault-injecting file
//! system each node's data directory is mounted on.

pub mod faultfs;
