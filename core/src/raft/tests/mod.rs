//! Tests of the Raft state machine: unit tests per handler, named scenarios on the cluster
//! harness, and property tests over random schedules.

mod properties;
mod scenarios;
