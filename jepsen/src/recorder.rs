//! The run's history as the client processes record it: each operation with its wall-clock
//! invoke and complete times (milliseconds since the run started), merged into a core
//! [`History`] in completion order at the end, the order the checkers expect.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use sluice_core::history::{History, OpKind, Recorded};

/// At most this many operations are recorded; past it the workload stops issuing new ones (a
/// run of hours at full speed stays within memory, and the checkers' time stays bounded).
pub const OPS_MAX: usize = 2_000_000;

/// Shared by every client thread and the nemesis; cheap to clone.
#[derive(Clone, Debug)]
pub struct Recorder {
    start: Instant,
    ops: Arc<Mutex<Vec<Recorded>>>,
    /// Lines for the run's log (nemesis actions, phases), with their times.
    events: Arc<Mutex<Vec<(u64, String)>>>,
}

impl Recorder {
    pub fn new(start: Instant) -> Recorder {
        Recorder {
            start,
            ops: Arc::new(Mutex::new(Vec::new())),
            events: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Milliseconds since the run started.
    pub fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Records one completed operation; false once [`OPS_MAX`] are recorded.
    pub fn record(&self, process: u32, kind: OpKind, invoke_ms: u64) -> bool {
        let complete_ms = self.now_ms();
        assert!(
            invoke_ms <= complete_ms,
            "an operation completes after it is invoked"
        );
        let mut ops = self
            .ops
            .lock()
            .expect("no thread panics holding the history");
        if ops.len() >= OPS_MAX {
            return false;
        }
        ops.push(Recorded {
            process,
            kind,
            invoke_ms,
            complete_ms,
        });
        true
    }

    pub fn full(&self) -> bool {
        self.ops.lock().expect("history lock").len() >= OPS_MAX
    }

    pub fn len(&self) -> usize {
        self.ops.lock().expect("history lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Logs a line with the current time, also to stderr (progress of a long run).
    pub fn event(&self, line: impl Into<String>) {
        let line = line.into();
        let at_ms = self.now_ms();
        eprintln!("[{:>7.1} s] {line}", at_ms as f64 / 1000.0);
        self.events.lock().expect("event lock").push((at_ms, line));
    }

    pub fn events(&self) -> Vec<(u64, String)> {
        self.events.lock().expect("event lock").clone()
    }

    /// The history: operations in completion order (ties by invocation, then process).
    pub fn history(&self) -> History {
        let mut ops = self.ops.lock().expect("history lock").clone();
        ops.sort_by_key(|r| (r.complete_ms, r.invoke_ms, r.process));
        let mut history = History::new();
        for r in ops {
            history.push(r.process, r.kind, r.invoke_ms, r.complete_ms);
        }
        history
    }
}
