//! What a simulated process did: one recorded operation (`sluice_core::history::Recorded`).
//! Its line in the trace and the timeline is `sluice_core::history::describe`.

pub use sluice_core::history::Recorded;
