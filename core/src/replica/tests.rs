//! A three-replica partition on in-memory storage: the partition log as the Raft log, end to end
//! through storage (every op applied, every sync run, crashes losing unsynced bytes).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::path::PathBuf;

use bytes::BytesMut;

use super::*;
use crate::log::testkit::{batch, committed_batches, small_config};
use crate::log::{LogConfig, LogStore};
use crate::raft::{HardState, Membership, Message, RaftConfig};
use crate::storage::Storage;
use crate::testing::{CrashMode, MemStorage};

struct Node {
    storage: MemStorage,
    store: RefCell<LogStore<MemStorage>>,
    replica: Replica,
    /// The hard state as durably stored.
    hard_state: HardState,
}

struct Group {
    nodes: Vec<Option<Node>>,
    storages: Vec<MemStorage>,
    stored_hard_states: Vec<HardState>,
    network: VecDeque<Message>,
    /// Links cut in both directions.
    isolated: Vec<bool>,
    now_ms: u64,
    config: LogConfig,
}

fn raft_config(id: u64) -> RaftConfig {
    RaftConfig {
        apply_entries: false,
        ..RaftConfig::new(id)
    }
}

fn open(id: u64, storage: &MemStorage, hard_state: HardState, config: &LogConfig) -> Node {
    let (log, store) =
        LogStore::open(storage.clone(), PathBuf::from("p"), config.clone()).expect("open");
    let replica = Replica::open(
        raft_config(id),
        Rng::new(id + 1),
        hard_state,
        log,
        Membership::new([0, 1, 2]),
        0,
        0,
    )
    .expect("replica");
    Node {
        storage: storage.clone(),
        store: RefCell::new(store),
        replica,
        hard_state,
    }
}

impl Group {
    fn new() -> Group {
        Group::with_config(small_config())
    }

    fn with_config(config: LogConfig) -> Group {
        let storages: Vec<MemStorage> = (0..3).map(|_| MemStorage::new()).collect();
        let nodes = (0..3)
            .map(|id| {
                Some(open(
                    id,
                    &storages[id as usize],
                    HardState::default(),
                    &config,
                ))
            })
            .collect();
        Group {
            nodes,
            storages,
            stored_hard_states: vec![HardState::default(); 3],
            network: VecDeque::new(),
            isolated: vec![false; 3],
            now_ms: 1_000,
            config,
        }
    }

    /// Executes everything a node's replica asked for: ops, hard state, syncs, messages.
    fn flush(&mut self, id: usize) {
        let Some(node) = self.nodes[id].as_mut() else {
            return;
        };
        loop {
            let mut acted = false;
            while let Some(out) = node.replica.poll_output() {
                acted = true;
                match out {
                    ReplicaOutput::Op(op) => node.store.borrow_mut().apply(op).expect("apply"),
                    ReplicaOutput::HardState(hs) => {
                        node.hard_state = hs;
                        self.stored_hard_states[id] = hs;
                        node.replica.hard_state_persisted(&node.store);
                    }
                    ReplicaOutput::Message(msg) => self.network.push_back(msg),
                    ReplicaOutput::Reset(offset) => panic!("unexpected reset to {offset}"),
                }
            }
            if acted {
                continue;
            }
            if let Some(sync) = node.replica.poll_sync() {
                let job = node
                    .store
                    .borrow_mut()
                    .sync_job(&sync.request)
                    .expect("job");
                job.run().expect("sync");
                node.replica.on_synced(sync, &node.store);
                continue;
            }
            break;
        }
        let _ = &node.storage;
    }

    fn deliver_all(&mut self) {
        for _ in 0..100_000 {
            for id in 0..3 {
                self.flush(id);
            }
            let Some(msg) = self.network.pop_front() else {
                return;
            };
            let (from, to) = (msg.from as usize, msg.to as usize);
            if self.isolated[from] || self.isolated[to] {
                continue;
            }
            if let Some(node) = self.nodes[to].as_mut() {
                node.replica.step(msg, self.now_ms, &node.store);
            }
        }
        panic!("messages never settled");
    }

    fn tick(&mut self, n: u32) {
        for _ in 0..n {
            self.now_ms += 10;
            for node in self.nodes.iter_mut().flatten() {
                node.replica.tick(self.now_ms, &node.store);
            }
            self.deliver_all();
        }
    }

    fn leader(&self) -> Option<usize> {
        let leaders: Vec<usize> = (0..3)
            .filter(|&i| {
                !self.isolated[i]
                    && self.nodes[i]
                        .as_ref()
                        .is_some_and(|n| n.replica.is_leader())
            })
            .collect();
        leaders.first().copied()
    }

    fn elect(&mut self) -> usize {
        for _ in 0..200 {
            if let Some(l) = self.leader() {
                return l;
            }
            self.tick(1);
        }
        panic!("no leader elected");
    }

    fn produce(&mut self, id: usize, bytes: Vec<u8>) -> Result<Proposed, ErrorCode> {
        let node = self.nodes[id].as_mut().expect("up");
        let result = node.replica.produce(
            BytesMut::from(&bytes[..]),
            self.now_ms,
            &node.store,
            &crate::batch::compression::ToyCodec,
        );
        self.deliver_all();
        result.map_err(|refusal| refusal.code)
    }

    fn crash(&mut self, id: usize) {
        self.nodes[id] = None;
        self.storages[id].crash(CrashMode::Clean);
        self.network
            .retain(|m| m.from as usize != id && m.to as usize != id);
    }

    fn restart(&mut self, id: usize) {
        self.nodes[id] = Some(open(
            id as u64,
            &self.storages[id],
            self.stored_hard_states[id],
            &self.config,
        ));
        self.deliver_all();
    }

    /// Every batch of a node's log up to its high watermark, as stored bytes.
    fn committed_batches(&self, id: usize) -> Vec<(u64, i32, Bytes)> {
        let node = self.nodes[id].as_ref().expect("up");
        committed_batches(node.replica.log(), &mut node.store.borrow_mut())
            .into_iter()
            .map(|b| (b.base_offset, b.epoch, b.bytes))
            .collect()
    }

    /// Replica agreement: the committed prefixes are byte-identical wherever they overlap.
    fn assert_agreement(&self) {
        let logs: Vec<_> = (0..3)
            .filter(|&i| self.nodes[i].is_some())
            .map(|i| self.committed_batches(i))
            .collect();
        for pair in logs.windows(2) {
            let n = pair[0].len().min(pair[1].len());
            assert_eq!(pair[0][..n], pair[1][..n], "committed prefixes differ");
        }
        for node in self.nodes.iter().flatten() {
            node.replica.check_invariants();
        }
    }
}

#[test]
fn batches_commit_on_a_majority_and_logs_agree_byte_for_byte() {
    let mut g = Group::new();
    let leader = g.elect();
    let mut expected = Vec::new();
    for i in 0..40u8 {
        let p = g
            .produce(leader, batch(1 + i % 5, 20, 1_000 + i64::from(i), None))
            .expect("produce");
        assert!(!p.duplicate);
        expected.push(p);
    }
    g.tick(2);
    let node = g.nodes[leader].as_ref().unwrap();
    for p in &expected {
        assert_eq!(node.replica.is_committed(p), Some(true), "{p:?}");
    }
    // Offsets are contiguous batches: the term-start control batch, then the producers'.
    let batches = g.committed_batches(leader);
    assert_eq!(
        batches[0].0, 0,
        "the log starts with the term's control batch"
    );
    assert_eq!(batches.len(), 41);
    assert!(batches
        .iter()
        .all(|b| i64::from(b.1) == node.replica.term() as i64));
    let hw = node.replica.high_watermark();
    assert_eq!(hw, expected.last().unwrap().last_offset + 1);
    for id in 0..3 {
        assert_eq!(g.nodes[id].as_ref().unwrap().replica.high_watermark(), hw);
    }
    g.assert_agreement();
}

#[test]
fn a_follower_refuses_produce_with_not_leader() {
    let mut g = Group::new();
    let leader = g.elect();
    let follower = (leader + 1) % 3;
    assert_eq!(
        g.produce(follower, batch(1, 5, 0, None)),
        Err(ErrorCode::NotLeaderOrFollower)
    );
}

#[test]
fn an_isolated_leaders_suffix_is_cut_and_the_new_leaders_log_wins() {
    let mut g = Group::new();
    let old = g.elect();
    for i in 0..5 {
        g.produce(old, batch(2, 10, i, None)).unwrap();
    }
    // Cut the leader off; its new proposals never reach a majority.
    g.isolated[old] = true;
    let mut lost = Vec::new();
    for i in 0..5 {
        lost.push(g.produce(old, batch(3, 10, 100 + i, None)).unwrap());
    }
    let new = g.elect();
    assert_ne!(new, old);
    let mut kept = Vec::new();
    for i in 0..5 {
        kept.push(g.produce(new, batch(1, 10, 200 + i, None)).unwrap());
    }
    // The old leader returns: it steps down and its divergent suffix is truncated.
    g.isolated[old] = false;
    g.tick(30);
    let old_node = g.nodes[old].as_ref().unwrap();
    assert!(!old_node.replica.is_leader());
    for p in &lost {
        assert_eq!(old_node.replica.is_committed(p), Some(false), "{p:?}");
    }
    for p in &kept {
        assert_eq!(old_node.replica.is_committed(p), Some(true), "{p:?}");
    }
    g.assert_agreement();
}

#[test]
fn a_crashed_replica_recovers_its_raft_state_from_the_log_and_catches_up() {
    let mut g = Group::new();
    let leader = g.elect();
    for i in 0..10 {
        g.produce(leader, batch(2, 30, i, None)).unwrap();
    }
    let follower = (leader + 1) % 3;
    g.crash(follower);
    for i in 0..10 {
        g.produce(leader, batch(2, 30, 100 + i, None)).unwrap();
    }
    g.restart(follower);
    g.tick(5);
    let hw = g.nodes[leader].as_ref().unwrap().replica.high_watermark();
    assert_eq!(
        g.nodes[follower].as_ref().unwrap().replica.high_watermark(),
        hw
    );
    // And the leader itself crashing loses nothing committed.
    g.crash(leader);
    let new = g.elect();
    g.produce(new, batch(1, 5, 500, None)).unwrap();
    g.restart(leader);
    g.tick(5);
    assert!(g.nodes[leader].as_ref().unwrap().replica.high_watermark() > hw);
    g.assert_agreement();
}

#[test]
fn idempotent_producer_state_survives_a_failover() {
    let mut g = Group::new();
    let old = g.elect();
    let first = g.produce(old, batch(3, 10, 0, Some((7, 0, 0)))).unwrap();
    g.tick(2);
    g.crash(old);
    let new = g.elect();
    assert_ne!(new, old);
    // The producer retries the batch at the new leader: recognised, same offsets, nothing new.
    let retry = g.produce(new, batch(3, 10, 0, Some((7, 0, 0)))).unwrap();
    assert!(retry.duplicate);
    assert_eq!(
        (retry.base_offset, retry.last_offset),
        (first.base_offset, first.last_offset)
    );
    let next = g.produce(new, batch(1, 10, 0, Some((7, 0, 3)))).unwrap();
    assert!(!next.duplicate);
    assert_eq!(
        g.produce(new, batch(1, 10, 0, Some((7, 0, 9)))),
        Err(ErrorCode::OutOfOrderSequenceNumber)
    );
}

/// A restarted replica whose state machine replays the log (the metadata quorum) must not spin
/// when its recovered tail is durable to Raft but not yet readable (not synced again): applying
/// waits for the sync. Found with three real nodes (tests/clients/test_failover.py): the
/// restarted node's broker task looped in `drive` forever and the node never served again.
#[test]
fn a_restarted_replica_applies_its_recovered_tail_once_it_is_synced_again() {
    let mut g = Group::new();
    let leader = g.elect();
    for i in 0..5 {
        g.produce(leader, batch(2, 30, i, None)).unwrap();
    }
    let follower = (leader + 1) % 3;
    let commit = g.nodes[follower]
        .as_ref()
        .unwrap()
        .replica
        .raft()
        .commit_index();
    assert!(commit > 0);
    g.crash(follower);
    let storage = g.storages[follower].clone();
    let (log, store) =
        LogStore::open(storage.clone(), PathBuf::from("p"), small_config()).expect("open");
    let mut replica = Replica::open(
        RaftConfig {
            apply_entries: true,
            ..RaftConfig::new(follower as u64)
        },
        Rng::new(7),
        // The stored commit index is ahead of what the restarted log can read yet.
        HardState {
            commit,
            ..g.stored_hard_states[follower]
        },
        log,
        Membership::new([0, 1, 2]),
        0,
        g.now_ms,
    )
    .expect("replica");
    let store = RefCell::new(store);
    // Before the recovered tail is synced: returns (it used to loop forever), applies at most
    // what lies before the tail.
    replica.tick(g.now_ms + 10, &store);
    let mut applied = replica.take_committed();
    assert!(applied.last().map_or(0, |e| e.last) < commit, "{applied:?}");
    // Once synced, the next input applies everything committed.
    while let Some(out) = replica.poll_output() {
        if let ReplicaOutput::Op(op) = out {
            store.borrow_mut().apply(op).expect("apply");
        }
    }
    let sync = replica
        .poll_sync()
        .expect("the recovered tail needs a sync");
    store
        .borrow_mut()
        .sync_job(&sync.request)
        .expect("job")
        .run()
        .expect("sync");
    replica.on_synced(sync, &store);
    replica.tick(g.now_ms + 20, &store);
    applied.extend(replica.take_committed());
    assert_eq!(applied.last().map(|e| e.last), Some(commit), "{applied:?}");
    assert_eq!(applied.first().map(|e| e.index), Some(1));
}

/// Replicas compact independently: a follower that was down comes back with its log ending
/// inside a run of batches the leader's cleaner merged into one empty batch, and still catches
/// up (the leader sends the part of that batch from the follower's end on).
#[test]
fn a_follower_catches_up_from_inside_a_run_its_leader_compacted() {
    let config = LogConfig {
        compact: true,
        delete: false,
        min_cleanable_dirty_ratio_bp: 0,
        ..small_config()
    };
    let mut g = Group::with_config(config);
    let leader = g.elect();
    for i in 0..3 {
        g.produce(leader, batch(1, 30, i, None)).unwrap();
    }
    let follower = (leader + 1) % 3;
    g.crash(follower);
    // One key over and over: every record but the last is superseded.
    for i in 0..40 {
        g.produce(leader, batch(1, 30, 100 + i, None)).unwrap();
    }
    g.tick(2);
    // Both live replicas clean, then restart (so no entry is served from memory).
    let mut removed = 0;
    for id in (0..3).filter(|&id| id != follower) {
        let node = g.nodes[id].as_mut().unwrap();
        let mut store = node.store.borrow_mut();
        let progress = store
            .clean(node.replica.log_mut(), 1_000_000, u64::MAX)
            .unwrap();
        removed += progress.finished.expect("cleaned").records_removed;
    }
    assert!(removed > 20, "{removed}");
    for id in (0..3).filter(|&id| id != follower) {
        g.crash(id);
        g.restart(id);
    }
    let leader = g.elect();
    g.produce(leader, batch(1, 30, 999, None)).unwrap();
    let end = g.nodes[leader]
        .as_ref()
        .unwrap()
        .replica
        .log()
        .log_end_offset();
    g.restart(follower);
    g.tick(20);
    let f = g.nodes[follower].as_ref().unwrap();
    assert_eq!(f.replica.log().log_end_offset(), end);
    let hw = g.nodes[leader].as_ref().unwrap().replica.high_watermark();
    assert_eq!(f.replica.high_watermark(), hw);
    // Both read the same latest value at the end.
    let last = |id: usize| g.committed_batches(id).last().cloned().map(|b| b.2);
    assert_eq!(last(follower), last(leader));
    for node in g.nodes.iter().flatten() {
        node.replica.check_invariants();
    }
}

/// Peer input never panics a follower: an append whose payload disagrees with its entry (base
/// offset, span, epoch, CRC, not a batch at all) is dropped and counted, and the log is untouched.
/// (It used to reach `append_replicated`, whose refusal was an assertion.)
#[test]
fn an_append_whose_payload_disagrees_with_its_entry_is_dropped_and_counted() {
    use crate::raft::{Entry, EntryKind, MessageBody};
    let config = small_config();
    let storage = MemStorage::new();
    let mut node = open(1, &storage, HardState::default(), &config);
    let good = |base: i64, epoch: i32| {
        let mut b = batch(2, 10, 0, None);
        batch::stamp(&mut b, base, epoch);
        b
    };
    let entry = |index: u64, last: u64, term: u64, payload: Vec<u8>| Entry {
        index,
        last,
        term,
        kind: EntryKind::Normal,
        payload: bytes::Bytes::from(payload),
    };
    let mut flipped = good(0, 1);
    let at = flipped.len() - 1;
    flipped[at] ^= 1;
    let bad = [
        entry(1, 2, 1, good(5, 1)), // another base offset
        entry(1, 3, 1, good(0, 1)), // another span
        entry(1, 2, 1, good(0, 2)), // another epoch
        entry(1, 2, 1, flipped),    // a bad CRC
        entry(1, 2, 1, b"not a batch".to_vec()),
        entry(0, 0, 1, good(0, 1)),                        // index 0
        entry(1, 4, 1, [good(0, 1), good(2, 1)].concat()), // two batches
    ];
    for (i, e) in bad.into_iter().enumerate() {
        let msg = Message {
            from: 0,
            to: 1,
            term: 1,
            body: MessageBody::Append {
                prev_index: 0,
                prev_term: 0,
                entries: vec![e],
                commit: 0,
                repair_seen: 0,
            },
        };
        node.replica.step(msg, 0, &node.store);
        assert_eq!(node.replica.appends_refused(), i as u64 + 1);
        assert_eq!(
            node.replica.log().log_end_offset(),
            0,
            "nothing was appended"
        );
        node.replica.check_invariants();
    }
    // The same append with a payload that agrees is taken.
    let msg = Message {
        from: 0,
        to: 1,
        term: 1,
        body: MessageBody::Append {
            prev_index: 0,
            prev_term: 0,
            entries: vec![entry(1, 2, 1, good(0, 1))],
            commit: 0,
            repair_seen: 0,
        },
    };
    node.replica.step(msg, 0, &node.store);
    assert_eq!(node.replica.appends_refused(), 7);
    assert_eq!(node.replica.log().log_end_offset(), 2);
}

/// A producer's batch whose `maxTimestamp` is not its records' largest timestamp (a client
/// rounding sub-millisecond timestamps), with a CRC that matches the wrong value.
fn batch_claiming_max_timestamp(max_timestamp: i64) -> Vec<u8> {
    let mut sent = batch(3, 10, 900, None);
    sent[35..43].copy_from_slice(&max_timestamp.to_be_bytes());
    let crc = crc32c::crc32c(&sent[21..]);
    sent[17..21].copy_from_slice(&crc.to_be_bytes());
    sent
}

/// The stored batch at `offset` on every replica, which must all agree.
fn stored_everywhere(g: &Group, offset: u64) -> Bytes {
    g.assert_agreement();
    let mut stored = (0..3).map(|id| {
        let batches = g.committed_batches(id);
        let found = batches.into_iter().find(|b| b.0 == offset);
        found.expect("committed on every replica").2
    });
    let first = stored.next().expect("three replicas");
    assert!(stored.all(|b| b == first), "replicas store different bytes");
    for id in 0..3 {
        let node = g.nodes[id].as_ref().expect("up");
        assert_eq!(node.replica.appends_refused(), 0, "a follower refused");
    }
    first
}

#[test]
fn the_leader_repairs_max_timestamp_once_and_every_replica_stores_the_repair() {
    let mut g = Group::new();
    let leader = g.elect();
    let sent = batch_claiming_max_timestamp(903);
    let p = g
        .produce(leader, sent.clone())
        .expect("Kafka repairs a wrong maxTimestamp; it does not refuse it");
    g.tick(2);
    let stored = stored_everywhere(&g, p.base_offset);
    let header = batch::BatchHeader::parse(&stored).unwrap();
    assert_eq!(header.max_timestamp, 902, "the records' largest timestamp");
    assert_eq!(batch::check_crc(&stored, &header), Ok(()));
    assert_eq!(stored[61..], sent[61..], "the records are the producer's");
}

#[test]
fn a_log_append_time_topic_stores_the_leaders_append_time_on_every_replica() {
    let config = LogConfig {
        timestamp_type: batch::TimestampType::LogAppendTime,
        ..small_config()
    };
    let mut g = Group::with_config(config);
    let leader = g.elect();
    let append_ms = g.now_ms;
    let p = g
        .produce(leader, batch_claiming_max_timestamp(903))
        .unwrap();
    g.tick(2);
    let stored = stored_everywhere(&g, p.base_offset);
    let header = batch::BatchHeader::parse(&stored).unwrap();
    assert!(header.is_log_append_time());
    assert_eq!(header.max_timestamp, append_ms as i64);
    assert_eq!(batch::check_crc(&stored, &header), Ok(()));
}

#[test]
fn the_leader_rewrites_into_the_topics_codec_once_and_every_replica_stores_it() {
    use batch::compression::ToyCodec;
    use batch::{BatchCodec, Codec, CompressionType};
    let config = LogConfig {
        compression_type: CompressionType::Codec(Codec::Zstd),
        ..small_config()
    };
    let mut g = Group::with_config(config);
    let leader = g.elect();
    let sent = batch(3, 10, 900, Some((7, 0, 0)));
    let first = g.produce(leader, sent.clone()).unwrap();
    let second = g
        .produce(leader, batch(2, 10, 910, Some((7, 0, 3))))
        .unwrap();
    g.tick(2);
    // Offsets as for any batch: the rewrite keeps the record count.
    assert_eq!(
        (first.last_offset - first.base_offset, second.base_offset),
        (2, first.last_offset + 1)
    );
    let stored = stored_everywhere(&g, first.base_offset);
    let header = batch::BatchHeader::parse(&stored).unwrap();
    assert_eq!(header.compression(), Codec::Zstd.id());
    assert_eq!(batch::check_crc(&stored, &header), Ok(()));
    assert_eq!(
        (
            header.producer_id,
            header.base_sequence,
            header.record_count
        ),
        (7, 0, 3)
    );
    let records = ToyCodec
        .decompress(Codec::Zstd, &stored[61..], 1 << 20)
        .unwrap();
    assert_eq!(records, sent[61..], "the producer's records, recompressed");
    // A retry of the rewritten batch is still recognised by its sequence numbers.
    let retry = g.produce(leader, sent).unwrap();
    assert!(retry.duplicate);
    assert_eq!(retry.base_offset, first.base_offset);
}

#[test]
fn a_refused_batch_reaches_no_replica_and_says_why() {
    let mut g = Group::new();
    let leader = g.elect();
    let mut future = batch(1, 10, g.now_ms as i64 + 2 * 3_600_000, None);
    let node = g.nodes[leader].as_mut().unwrap();
    let end = node.replica.log().log_end_offset();
    let refusal = node
        .replica
        .produce(
            BytesMut::from(&future[..]),
            g.now_ms,
            &node.store,
            &crate::batch::NoCodecs,
        )
        .unwrap_err();
    assert_eq!(refusal.code, ErrorCode::InvalidTimestamp);
    assert!(refusal.reason.contains("timestamp"), "{refusal}");
    assert_eq!(node.replica.log().log_end_offset(), end);
    // A batch from a producer with its base offset set is refused before Raft sees it.
    batch::set_base_offset(&mut future, 3);
    assert_eq!(
        g.produce(leader, future),
        Err(ErrorCode::InvalidRecord),
        "base offset 3"
    );
}

// ---- DeleteRecords: a replicated log start ---------------------------------------------------

impl Group {
    fn delete_records(&mut self, id: usize, offset: i64) -> Result<LogStartChange, ErrorCode> {
        let node = self.nodes[id].as_mut().expect("up");
        let result = node
            .replica
            .delete_records(offset, self.now_ms, &node.store);
        self.deliver_all();
        result.map_err(|refusal| refusal.code)
    }

    /// Kafka's low watermark on every replica that is up.
    fn log_starts(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .flatten()
            .map(|n| n.replica.log().kafka_log_start_offset())
            .collect()
    }

    fn crash_all_and_restart(&mut self) {
        for id in 0..3 {
            self.crash(id);
        }
        for id in 0..3 {
            self.restart(id);
        }
    }
}

/// Ten batches of two records: Kafka offsets 0..20.
fn twenty_records(g: &mut Group, leader: usize) {
    for i in 0..10 {
        g.produce(leader, batch(2, 30, 1_000 + i, None)).unwrap();
    }
}

#[test]
fn a_committed_log_start_entry_raises_the_log_start_on_every_replica() {
    let mut g = Group::new();
    let leader = g.elect();
    twenty_records(&mut g, leader);
    let log_end = g.nodes[leader]
        .as_ref()
        .unwrap()
        .replica
        .log()
        .log_end_offset();
    let Ok(LogStartChange::Proposed(p)) = g.delete_records(leader, 7) else {
        panic!("a log start past the current one is proposed")
    };
    g.tick(2);
    assert_eq!(
        g.nodes[leader].as_ref().unwrap().replica.is_committed(&p),
        Some(true)
    );
    assert_eq!(g.log_starts(), vec![7, 7, 7]);
    for node in g.nodes.iter().flatten() {
        let log = node.replica.log();
        // The entry took a log offset and no Kafka offset; nothing was deleted from disk yet.
        assert_eq!(log.log_end_offset(), log_end + 1);
        assert_eq!(log.kafka_high_watermark(), 20);
        assert_eq!(log.log_start_offset(), 0);
        assert_eq!(log.pending_log_starts().count(), 0);
    }
    // At or below the log start: answered at once, nothing proposed.
    assert_eq!(
        g.delete_records(leader, 7),
        Ok(LogStartChange::Done { low_watermark: 7 })
    );
    assert_eq!(
        g.delete_records(leader, 2),
        Ok(LogStartChange::Done { low_watermark: 7 })
    );
    // The next record still gets Kafka offset 20.
    let p = g.produce(leader, batch(1, 5, 2_000, None)).unwrap();
    let log = g.nodes[leader].as_ref().unwrap().replica.log();
    assert_eq!(log.kafka_offset(p.base_offset), 20);
    g.assert_agreement();
}

#[test]
fn delete_records_to_minus_one_takes_the_high_watermark_and_past_it_is_out_of_range() {
    let mut g = Group::new();
    let leader = g.elect();
    twenty_records(&mut g, leader);
    for bad in [21, -2, -1001, i64::MIN, i64::MAX] {
        assert_eq!(
            g.delete_records(leader, bad),
            Err(ErrorCode::OffsetOutOfRange),
            "{bad}"
        );
    }
    let follower = (leader + 1) % 3;
    assert_eq!(
        g.delete_records(follower, 3),
        Err(ErrorCode::NotLeaderOrFollower)
    );
    assert!(matches!(
        g.delete_records(leader, -1),
        Ok(LogStartChange::Proposed(_))
    ));
    g.tick(2);
    assert_eq!(g.log_starts(), vec![20, 20, 20]);
    assert_eq!(
        g.delete_records(leader, 20),
        Ok(LogStartChange::Done { low_watermark: 20 })
    );
}

#[test]
fn a_compacted_topic_refuses_delete_records_with_policy_violation() {
    let mut g = Group::with_config(LogConfig {
        delete: false,
        compact: true,
        ..small_config()
    });
    let leader = g.elect();
    twenty_records(&mut g, leader);
    assert_eq!(g.delete_records(leader, 3), Err(ErrorCode::PolicyViolation));
}

#[test]
fn an_uncommitted_log_start_entry_cut_with_the_suffix_changes_nothing() {
    let mut g = Group::new();
    let old = g.elect();
    twenty_records(&mut g, old);
    // The leader is cut off: its log-start entry never reaches a majority.
    g.isolated[old] = true;
    let Ok(LogStartChange::Proposed(lost)) = g.delete_records(old, 15) else {
        panic!("proposed")
    };
    {
        let log = g.nodes[old].as_ref().unwrap().replica.log();
        assert_eq!(log.pending_log_starts().count(), 1);
        assert_eq!(
            log.kafka_log_start_offset(),
            0,
            "not committed, not applied"
        );
    }
    let new = g.elect();
    assert_ne!(new, old);
    g.produce(new, batch(3, 10, 5_000, None)).unwrap();
    g.isolated[old] = false;
    g.tick(30);
    let old_node = g.nodes[old].as_ref().unwrap();
    assert_eq!(old_node.replica.is_committed(&lost), Some(false));
    assert_eq!(old_node.replica.log().pending_log_starts().count(), 0);
    assert_eq!(g.log_starts(), vec![0, 0, 0]);
    g.assert_agreement();
    // And it stays so after a restart (nothing of the cut entry is replayed).
    g.crash_all_and_restart();
    g.elect();
    g.tick(5);
    assert_eq!(g.log_starts(), vec![0, 0, 0]);
}

/// Enough data to roll several 700-byte segments, so the checkpoint moves past the entry.
fn many_records(g: &mut Group, leader: usize, from: i64) {
    for i in 0..40 {
        g.produce(leader, batch(2, 60, from + i, None)).unwrap();
    }
    g.tick(3);
}

#[test]
fn a_raised_log_start_survives_a_restart_through_the_checkpoint_and_without_it() {
    let mut g = Group::new();
    let leader = g.elect();
    many_records(&mut g, leader, 1_000);
    assert!(matches!(
        g.delete_records(leader, 33),
        Ok(LogStartChange::Proposed(_))
    ));
    many_records(&mut g, leader, 2_000);
    assert_eq!(g.log_starts(), vec![33, 33, 33]);
    // The entry lies below every replica's checkpoint now, which records the log start.
    for (id, storage) in g.storages.iter().enumerate() {
        let bytes = storage
            .read_file(&PathBuf::from("p/checkpoint"))
            .expect("a checkpoint");
        let checkpoint = crate::log::Checkpoint::decode(&bytes).expect("intact");
        assert_eq!(checkpoint.log_start, 33, "replica {id}");
    }
    // Restart every replica: read back from the checkpoint at once, before any election.
    g.crash_all_and_restart();
    assert_eq!(g.log_starts(), vec![33, 33, 33]);
    g.elect();
    g.tick(3);
    assert_eq!(g.log_starts(), vec![33, 33, 33]);
    // Without checkpoints: a full scan replays the entry, which applies once committed again.
    for storage in &g.storages {
        storage.remove_file(&PathBuf::from("p/checkpoint")).unwrap();
        storage.sync_dir(&PathBuf::from("p")).unwrap();
    }
    g.crash_all_and_restart();
    let leader = g.elect();
    g.tick(3);
    assert_eq!(g.log_starts(), vec![33, 33, 33]);
    // Still not reversible, and the log keeps serving.
    assert_eq!(
        g.delete_records(leader, 10),
        Ok(LogStartChange::Done { low_watermark: 33 })
    );
    g.assert_agreement();
}

#[test]
fn retention_deletes_the_segments_wholly_below_the_log_start_and_nothing_else() {
    let mut g = Group::new();
    let leader = g.elect();
    many_records(&mut g, leader, 1_000);
    many_records(&mut g, leader, 2_000);
    // Retention by time and size is off: without DeleteRecords nothing goes.
    for id in 0..3 {
        let node = g.nodes[id].as_mut().unwrap();
        assert_eq!(node.replica.enforce_retention(g.now_ms), 0);
    }
    assert!(matches!(
        g.delete_records(leader, 101),
        Ok(LogStartChange::Proposed(_))
    ));
    many_records(&mut g, leader, 3_000);
    for id in 0..3 {
        g.flush(id);
        let now_ms = g.now_ms;
        let node = g.nodes[id].as_mut().unwrap();
        let segments_before = node.replica.log().segments().count();
        let deleted = node.replica.enforce_retention(now_ms);
        let log = node.replica.log();
        assert!(deleted > 0, "replica {id} deleted nothing");
        assert_eq!(log.segments().count(), segments_before - deleted);
        // Kafka's low watermark did not move; the first segment left holds it (or later data
        // the checkpoint's segment keeps).
        assert_eq!(log.kafka_log_start_offset(), 101);
        let first = log.segments().next().unwrap();
        assert!(log.kafka_offset(first.base_offset) <= 101);
        assert!(
            log.kafka_offset(first.next_offset) > 101
                || first.base_offset >= log.log_start_offset(),
            "a segment wholly below the log start was kept"
        );
        node.replica.check_invariants();
        g.flush(id);
    }
    // The deletions and the log start survive a restart.
    g.crash_all_and_restart();
    assert_eq!(g.log_starts(), vec![101, 101, 101]);
    let leader = g.elect();
    g.tick(3);
    let p = g.produce(leader, batch(1, 5, 9_000, None)).unwrap();
    g.tick(2);
    let log = g.nodes[leader].as_ref().unwrap().replica.log();
    assert_eq!(
        log.kafka_offset(p.base_offset),
        240,
        "no Kafka offset moved"
    );
    g.assert_agreement();
}

/// A follower takes a well-formed log-start entry as a normal entry (that is how the leader
/// replicates it) and refuses one that names no offset, or any other of Raft's own batches.
#[test]
fn a_follower_checks_the_payload_of_a_log_start_entry() {
    use crate::raft::{Entry, EntryKind};
    let entry = |payload: Vec<u8>| Entry {
        index: 4,
        last: 4,
        term: 2,
        kind: EntryKind::Normal,
        payload: Bytes::from(payload),
    };
    assert_eq!(
        check_entry_payload(&entry(batch::log_start_batch(3, 2, 17, -1))),
        Ok(())
    );
    let mut negative = Vec::new();
    negative.extend_from_slice(&0i16.to_be_bytes());
    negative.extend_from_slice(&(-5i64).to_be_bytes());
    let malformed = [
        batch::control_batch(3, 2, batch::CONTROL_TYPE_LOG_START, &negative, -1),
        batch::control_batch(3, 2, batch::CONTROL_TYPE_LOG_START, b"short", -1),
        batch::leader_epoch_start_batch(3, 2, -1),
        batch::membership_batch(3, 2, b"voters", -1),
    ];
    for (i, bytes) in malformed.into_iter().enumerate() {
        assert!(check_entry_payload(&entry(bytes)).is_err(), "case {i}");
    }
}

/// A checkpoint written before the log start existed ("SLC2") still decodes, with log start 0.
#[test]
fn a_version_two_checkpoint_decodes_with_log_start_zero() {
    use crate::log::Checkpoint;
    let mut g = Group::new();
    let leader = g.elect();
    many_records(&mut g, leader, 1_000);
    let bytes = g.storages[leader]
        .read_file(&PathBuf::from("p/checkpoint"))
        .expect("a checkpoint");
    let current = Checkpoint::decode(&bytes).expect("intact");
    assert_eq!(current.log_start, 0);
    // The same body in version 2: its magic, no log start, its own CRC.
    let mut v2 = bytes[..bytes.len() - 4 - 8].to_vec();
    v2[0..4].copy_from_slice(&0x534c_4332u32.to_be_bytes());
    let crc = crc32c::crc32c(&v2);
    v2.extend_from_slice(&crc.to_be_bytes());
    assert_eq!(Checkpoint::decode(&v2), Some(current.clone()));
    // A version-3 body cut short is damage, not version 2.
    let mut cut = bytes[..bytes.len() - 4 - 8].to_vec();
    let crc = crc32c::crc32c(&cut);
    cut.extend_from_slice(&crc.to_be_bytes());
    assert_eq!(Checkpoint::decode(&cut), None);
    let with_start = Checkpoint {
        log_start: 42,
        ..current
    };
    assert_eq!(Checkpoint::decode(&with_start.encode()), Some(with_start));
}

/// Review finding: when a replica's repair ends, Raft hands out a hard state with
/// `repair: None`, but `Replica::execute` stores a hard state only when the term or the vote
/// changed (the commit index "rides along"), so the end of the repair is never stored: after
/// any later restart the replica is in repair mode again, and with a second replica that
/// really lost data the group can have a majority that refuses every vote.
#[test]
fn review_the_end_of_a_repair_is_stored() {
    let mut g = Group::new();
    let leader = g.elect();
    for i in 0..5 {
        g.produce(leader, batch(2, 10, i, None)).unwrap();
    }
    g.tick(2);
    let f = (leader + 1) % 3;
    g.crash(f);
    // What `node::disk::open` stores when recovery finds damage.
    g.stored_hard_states[f].repair = Some(1);
    g.restart(f);
    assert!(g.nodes[f].as_ref().unwrap().replica.raft().is_repairing());
    g.produce(leader, batch(1, 10, 100, None)).unwrap();
    g.tick(10);
    assert!(
        !g.nodes[f].as_ref().unwrap().replica.raft().is_repairing(),
        "the repair never ended"
    );
    assert_eq!(
        g.stored_hard_states[f].repair, None,
        "the repair ended in memory but its end was never stored"
    );
}

/// The planted `log-start-not-recovered`: recovery forgets the DeleteRecords log start its
/// checkpoint holds, so after a restart the log start is back at the first segment's base (the
/// simulator's retention checker calls it log-start-regressed).
/// `cargo test -p sluice-core --features planted-bugs --lib planted_log_start`
#[cfg(feature = "planted-bugs")]
#[test]
fn planted_log_start_not_recovered_moves_the_log_start_back_after_a_restart() {
    use crate::planted::{Bug, Planted};
    let restarted_start = |bug: Option<Bug>| {
        let mut config = small_config();
        config.planted = Planted::new(bug);
        let mut g = Group::with_config(config);
        let leader = g.elect();
        many_records(&mut g, leader, 1_000);
        assert!(matches!(
            g.delete_records(leader, 33),
            Ok(LogStartChange::Proposed(_))
        ));
        // The entry ends up below every replica's checkpoint, which alone records the start.
        many_records(&mut g, leader, 2_000);
        assert_eq!(g.log_starts(), vec![33, 33, 33]);
        g.crash_all_and_restart();
        g.log_starts()
    };
    assert_eq!(restarted_start(None), vec![33, 33, 33]);
    assert_eq!(
        restarted_start(Some(Bug::LogStartNotRecovered)),
        vec![0, 0, 0]
    );
}
