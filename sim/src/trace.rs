//! The event trace of a run: every operation, fault and node event with its simulated time. Its
//! hash is what `--check-determinism` compares; its JSON lines are written for triage.

use std::sync::{Arc, Mutex};

use sluice_core::checker::retention::DeleteRecordsCall;
use tokio::time::Instant;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Simulated milliseconds since the run started.
    pub t_ms: u64,
    /// Who: `nemesis`, `client-2`, `broker`, `checker`.
    pub source: String,
    pub kind: String,
    pub detail: String,
}

/// Shared by every task of a run.
#[derive(Clone)]
pub struct Trace {
    events: Arc<Mutex<Vec<Event>>>,
    /// Set by the first call inside the simulation (madsim's clock exists only there), so a
    /// trace can be created outside and read after a panic.
    start: Arc<std::sync::OnceLock<Instant>>,
    /// Log starts above 0 that fetches were told: (partition, invoke_ms, complete_ms, offset),
    /// for the retention checker (kept apart from the events, which they would flood).
    log_starts: Arc<Mutex<Vec<(i32, u64, u64, u64)>>>,
    /// DeleteRecords calls, per partition, for the retention checker.
    delete_records: Arc<Mutex<Vec<(i32, DeleteRecordsCall)>>>,
}

impl Trace {
    pub fn new() -> Trace {
        Trace {
            events: Arc::new(Mutex::new(Vec::new())),
            start: Arc::new(std::sync::OnceLock::new()),
            log_starts: Arc::new(Mutex::new(Vec::new())),
            delete_records: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// A fetch invoked at `invoke_ms` (and completing now) was told these partitions' log
    /// starts; those above 0 are kept.
    pub fn observe_log_starts(
        &self,
        invoke_ms: u64,
        starts: &std::collections::BTreeMap<i32, u64>,
    ) {
        let complete_ms = self.now_ms();
        let mut kept = self.log_starts.lock().unwrap_or_else(|e| e.into_inner());
        for (partition, offset) in starts {
            if *offset > 0 {
                kept.push((*partition, invoke_ms, complete_ms, *offset));
            }
        }
    }

    /// Every log start above 0 a fetch was told, in order:
    /// (partition, invoke_ms, complete_ms, offset).
    pub fn log_starts(&self) -> Vec<(i32, u64, u64, u64)> {
        self.log_starts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A DeleteRecords of `partition` completed now (also recorded as an event).
    pub fn observe_delete_records(&self, source: &str, partition: i32, call: DeleteRecordsCall) {
        self.record(
            source,
            "op",
            format!(
                "delete-records {}-{partition} to {} -> {:?}",
                crate::client::TOPIC,
                call.offset,
                call.outcome
            ),
        );
        self.delete_records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((partition, call));
    }

    /// Every DeleteRecords call, in order of completion.
    pub fn delete_records(&self) -> Vec<(i32, DeleteRecordsCall)> {
        self.delete_records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn now_ms(&self) -> u64 {
        self.start.get_or_init(Instant::now).elapsed().as_millis() as u64
    }

    pub fn record(&self, source: &str, kind: &str, detail: impl Into<String>) {
        let event = Event {
            t_ms: self.now_ms(),
            source: source.to_string(),
            kind: kind.to_string(),
            detail: detail.into(),
        };
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(event);
    }

    pub fn events(&self) -> Vec<Event> {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn to_jsonl(&self) -> String {
        use std::fmt::Write as _;
        let events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        let bytes: usize = events
            .iter()
            .map(|e| 48 + e.source.len() + e.kind.len() + e.detail.len())
            .sum();
        let mut out = String::with_capacity(bytes);
        for e in events.iter() {
            let _ = write!(out, "{{\"t_ms\":{},\"source\":", e.t_ms);
            sluice_core::checker::push_json_string(&mut out, &e.source);
            out.push_str(",\"kind\":");
            sluice_core::checker::push_json_string(&mut out, &e.kind);
            out.push_str(",\"detail\":");
            sluice_core::checker::push_json_string(&mut out, &e.detail);
            out.push_str("}\n");
        }
        out
    }
}

impl Default for Trace {
    fn default() -> Trace {
        Trace::new()
    }
}

/// FNV-1a, 64 bits: a stable hash of the whole trace text.
pub fn hash(text: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// A JSON string literal.
pub fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    sluice_core::checker::push_json_string(&mut out, s);
    out
}
