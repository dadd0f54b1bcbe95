//! What a simulated process did: one recorded operation. Its line in the trace and the timeline
//! is `sluice_core::history::describe`.

use sluice_core::history::OpKind;

/// One recorded operation of one process, before the run merges them into a `History`.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub process: u32,
    pub kind: OpKind,
    pub invoke_ms: u64,
    pub complete_ms: u64,
}
