//! Tests of the Raft state machine: unit tests per handler, named scenarios on the cluster
//! harness, property tests over random schedules, and the cost of idle groups.

mod idle;
mod properties;
mod review;
mod scenarios;
mod unit;

use bytes::Bytes;

use crate::raft::*;

/// Entries served from a vector (index 1 first).
#[derive(Default)]
pub(super) struct VecSource(pub(super) Vec<Entry>);

impl EntrySource for VecSource {
    fn entries(&self, lo: u64, hi: u64, _max_bytes: u64, out: &mut Vec<Entry>) {
        out.extend(self.0[lo as usize - 1..hi as usize].iter().cloned());
    }

    fn snapshot_data(&self, _index: u64) -> Option<Bytes> {
        Some(Bytes::new())
    }
}

pub(super) fn config(id: NodeId) -> RaftConfig {
    RaftConfig {
        election_ticks: 10,
        heartbeat_ticks: 2,
        ..RaftConfig::new(id)
    }
}

pub(super) fn entry(index: u64, term: u64) -> Entry {
    Entry {
        index,
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
