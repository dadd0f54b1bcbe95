//! Tests of the Raft state machine: unit tests per handler, named scenarios on the cluster
//! harness, property tests over random schedules, and the cost of idle groups.

mod idle;
mod properties;
mod review;
mod scenarios;
mod unit;
