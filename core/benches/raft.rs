//! Criterion benchmarks of Raft's CPU cost (no storage, no network): entries committed per second
//! among three in-memory replicas, and the cost of single inputs on one replica. Results are
//! recorded in docs/raft.md.

use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sluice_core::raft::*;
use sluice_core::rng::Rng;
use sluice_core::testing::raft_harness::{Cluster, ClusterOptions};

/// Proposals → committed on all three replicas: the leader takes a batch of proposals (then one
/// `ready`, so they share appends), and the batch is replicated, acknowledged, committed and
/// applied everywhere (the harness delivers every message and syncs every write at once; its
/// checkers are off).
fn commit_throughput(c: &mut Criterion) {
    let mut group = c.benchmark_group("commit_3_replicas");
    for (batch, payload_bytes) in [(1usize, 100usize), (16, 100), (256, 100), (64, 1024)] {
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_with_input(
            BenchmarkId::new(format!("{payload_bytes}B"), batch),
            &batch,
            |b, &batch| {
                let mut options = ClusterOptions::calm(3);
                options.checks = false;
                options.append_entries_max = 256;
                let mut cluster = Cluster::new(options, 1);
                cluster.campaign(0, true);
                cluster.settle();
                let payload = Bytes::from(vec![b'x'; payload_bytes]);
                let mut proposed = 0u64;
                b.iter(|| {
                    let last = cluster
                        .propose_all(0, std::iter::repeat_n((payload.clone(), 1), batch))
                        .unwrap();
                    cluster.settle();
                    assert!(
                        cluster.raft(2).applied_index() >= last,
                        "last {last}: {:?}",
                        (0..3)
                            .map(|id| {
                                let r = cluster.raft(id);
                                (
                                    r.role(),
                                    r.term(),
                                    r.commit_index(),
                                    r.applied_index(),
                                    r.last_index(),
                                    r.messages_dropped(),
                                )
                            })
                            .collect::<Vec<_>>()
                    );
                    proposed += batch as u64;
                    if proposed >= 8192 {
                        // Keep the in-memory logs short, as retention would.
                        proposed = 0;
                        for id in 0..3 {
                            cluster.compact(id, last);
                        }
                    }
                })
            },
        );
    }
    group.finish();
}

struct NoStorage;

impl EntrySource for NoStorage {
    fn entries(&self, _lo: u64, _hi: u64, _max_bytes: u64, _out: &mut Vec<Entry>) {}

    fn snapshot_data(&self, _index: u64) -> Option<Bytes> {
        None
    }
}

fn replica(id: NodeId, election_ticks: u32) -> Raft {
    let config = RaftConfig {
        election_ticks,
        ..RaftConfig::new(id)
    };
    Raft::new(
        config,
        Rng::new(id),
        RaftState::bootstrap(Membership::new([1, 2, 3])),
    )
    .unwrap()
}

/// Runs `ready` and confirms its write at once, until nothing is left.
fn drain(r: &mut Raft) -> usize {
    let mut messages = 0;
    while r.has_ready() {
        let rd = r.ready(&NoStorage);
        messages += rd.messages.len();
        if let Some(w) = rd.write {
            r.on_persisted(w.seq);
        }
    }
    messages
}

fn step_cost(c: &mut Criterion) {
    let mut group = c.benchmark_group("step");
    let payload = Bytes::from(vec![b'x'; 100]);

    // A follower takes a one-entry append: step, write, sync confirmation, acknowledgement.
    group.bench_function("follower_append_1x100B_to_ack", |b| {
        let mut f = replica(2, 10);
        let mut index = 0;
        b.iter(|| {
            index += 1;
            f.step(Message {
                from: 1,
                to: 2,
                term: 1,
                body: MessageBody::Append {
                    prev_index: index - 1,
                    prev_term: u64::from(index > 1),
                    entries: vec![Entry {
                        index,
                        last: index,
                        term: 1,
                        kind: EntryKind::Normal,
                        payload: payload.clone(),
                    }],
                    commit: index - 1,
                    repair_seen: 0,
                },
            });
            assert_eq!(drain(&mut f), 1);
            if index & 0x1fff == 0 {
                f.compact(f.applied_index()).unwrap();
            }
        })
    });

    // A leader takes one follower's acknowledgement (which commits the entry); only the step is
    // timed, the proposal and the sends are set up outside.
    group.bench_function("leader_append_accepted", |b| {
        let mut l = replica(1, 10);
        l.campaign(true);
        drain(&mut l);
        let term = l.term();
        l.step(Message {
            from: 2,
            to: 1,
            term,
            body: MessageBody::VoteResponse { granted: true },
        });
        drain(&mut l);
        b.iter_custom(|iterations| {
            let mut timed = Duration::ZERO;
            for _ in 0..iterations {
                let (_, index) = l.propose(payload.clone(), 1).unwrap();
                drain(&mut l);
                let ack = Message {
                    from: 2,
                    to: 1,
                    term,
                    body: MessageBody::AppendAccepted {
                        match_index: index,
                        repair_seen: 0,
                    },
                };
                let start = Instant::now();
                l.step(ack);
                timed += start.elapsed();
                drain(&mut l);
                if index & 0x1fff == 0 {
                    l.compact(l.applied_index()).unwrap();
                }
            }
            timed
        })
    });

    // An idle follower's heartbeat: step and the answer.
    group.bench_function("follower_heartbeat", |b| {
        let mut f = replica(2, 10);
        b.iter(|| {
            f.step(Message {
                from: 1,
                to: 2,
                term: 1,
                body: MessageBody::Heartbeat { commit: 0 },
            });
            assert_eq!(drain(&mut f), 1);
        })
    });

    // An idle follower's tick (its timeout never fires here).
    group.bench_function("follower_tick", |b| {
        let mut f = replica(2, u32::MAX / 2);
        b.iter(|| f.tick())
    });
    group.finish();
}

criterion_group!(benches, commit_throughput, step_cost);
criterion_main!(benches);
