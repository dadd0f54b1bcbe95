//! Tests of the Raft state machine: unit tests per handler, named scenarios on the cluster
//! harness, property tests over random schedules, and the cost of idle groups.

mod idle;
#[cfg(feature = "planted-bugs")]
mod planted;
mod properties;
mod repair;
mod review;
mod scenarios;
mod unit;

use bytes::Bytes;

use crate::raft::*;

/// Entries served from a vector (the log's entries in order, the first starting at index 1).
#[derive(Default)]
pub(super) struct VecSource(pub(super) Vec<Entry>);

impl EntrySource for VecSource {
    fn entries(&self, lo: u64, hi: u64, _max_bytes: u64, out: &mut Vec<Entry>) {
        let whole = self.0.iter().filter(|e| e.index >= lo && e.last <= hi);
        out.extend(whole.cloned());
    }

    fn snapshot_data(&self, _index: u64) -> Option<Bytes> {
        Some(Bytes::new())
    }
}

/// Drains `r`, syncing every write at once; returns all messages.
pub(super) fn drain_synced(r: &mut Raft, source: &VecSource) -> Vec<Message> {
    let mut out = Vec::new();
    while r.has_ready() {
        let rd = r.ready(source);
        out.extend(rd.messages);
        if let Some(w) = rd.write {
            r.on_persisted(w.seq);
        }
    }
    out
}

pub(super) fn config(id: NodeId) -> RaftConfig {
    RaftConfig {
        election_ticks: 10,
        heartbeat_ticks: 2,
        ..RaftConfig::new(id)
    }
}

/// A normal entry occupying one index.
pub(super) fn entry(index: u64, term: u64) -> Entry {
    ranged(index, index, term)
}

/// A normal entry occupying `index..=last` (a batch of `last - index + 1` records).
pub(super) fn ranged(index: u64, last: u64, term: u64) -> Entry {
    Entry {
        index,
        last,
        term,
        kind: EntryKind::Normal,
        payload: Bytes::from(vec![index as u8; 4]),
    }
}

pub(super) fn msg(from: NodeId, to: NodeId, term: u64, body: MessageBody) -> Message {
    Message {
        from,
        to,
        term,
        body,
    }
}
