//! Tests of the node facade: whole nodes on the simulated disk, driven only through `handle`,
//! `poll_output` and `poll_timeout`, as a host drives them.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;

use super::api::*;
use super::*;
use crate::batch::{BatchBuilder, NewRecord};
use crate::group::{CommitPartition, CommitRequest, JoinRequest};
use crate::raft::{Entry, EntryKind, Message, MessageBody};
use crate::testing::{CrashMode, MemStorage};
use crate::time::{Instant, Now};
use crate::ErrorCode;

/// One node, its disk, and what it answered.
struct Host {
    node: Node,
    disk: Disk<MemStorage>,
    storage: MemStorage,
    /// Blocking jobs, run one at a time when the harness says (their order is the disk's).
    jobs: VecDeque<Job<MemStorage>>,
    done: VecDeque<StorageDone>,
    replies: BTreeMap<RequestId, Reply>,
    ready: bool,
    stopped: Option<String>,
    /// What the node handed out in the order it did, for tests that check order.
    trace: Vec<String>,
    /// Kinds of jobs (`job_kind`) kept back in `held` instead of run: the host's thread pool
    /// runs jobs in any order, so a test may finish one after jobs handed out later.
    hold: Vec<&'static str>,
    held: VecDeque<Job<MemStorage>>,
    /// The next group-commit job of this log fails its first fsync.
    fail_sync_of: Option<LogId>,
}

/// A job's kind as its `Debug` names it: open, sync, cut, hard-state, swap, delete.
fn job_kind(job: &Job<MemStorage>) -> String {
    let text = format!("{job:?}");
    text.trim_end_matches(')')
        .rsplit(' ')
        .next()
        .unwrap_or_default()
        .to_string()
}

impl Host {
    fn start(config: NodeConfig, storage: MemStorage, seed: u64, now: Now) -> Host {
        let node = Node::new(
            config,
            Box::new(crate::batch::compression::ToyCodec),
            seed,
            now,
        )
        .expect("valid config");
        Host {
            node,
            disk: Disk::new(storage.clone()),
            storage,
            jobs: VecDeque::new(),
            done: VecDeque::new(),
            replies: BTreeMap::new(),
            ready: false,
            stopped: None,
            trace: Vec::new(),
            hold: Vec::new(),
            held: VecDeque::new(),
            fail_sync_of: None,
        }
    }

    /// Lets the held jobs run (after every job queued now) and holds nothing more.
    fn release(&mut self) {
        self.hold.clear();
        self.jobs.extend(self.held.drain(..));
    }

    /// Carries out the node's outputs: storage now (jobs queued), messages into `network`.
    fn drain(&mut self, me: u64, network: &mut VecDeque<(u64, u64, PeerMessage)>) {
        let mut done = Vec::new();
        let mut jobs = Vec::new();
        while let Some(out) = self.node.poll_output() {
            match out {
                Output::Storage(op) => {
                    self.trace.push(match &op {
                        StorageOp::Write { op, .. } => {
                            format!("write {op:?}").chars().take(40).collect()
                        }
                        StorageOp::Sync { .. } => "sync".into(),
                        StorageOp::StoreHardState { .. } => "hard-state".into(),
                        StorageOp::Open { .. } => "open".into(),
                        StorageOp::Clean { .. } => "clean".into(),
                        StorageOp::Close { .. } => "close".into(),
                    });
                    self.disk.execute(op, &mut done, &mut jobs);
                }
                Output::Send { to, message } => {
                    self.trace.push(format!("send to {to}"));
                    network.push_back((me, to, message));
                }
                Output::Reply { request, reply } => {
                    assert!(
                        self.replies.insert(request, reply).is_none(),
                        "request {request} answered twice"
                    );
                }
                Output::Ready => self.ready = true,
                Output::Observe(_) => {}
                Output::Stop { reason } => self.stopped = Some(reason),
            }
        }
        self.done.extend(done);
        self.jobs.extend(jobs);
    }

    /// Runs every queued job and feeds every completion, until the node is quiet.
    fn settle(&mut self, me: u64, now: Now, network: &mut VecDeque<(u64, u64, PeerMessage)>) {
        for _ in 0..10_000 {
            self.drain(me, network);
            if let Some(d) = self.done.pop_front() {
                self.node.handle(now, Input::Storage(d), &self.disk);
                continue;
            }
            if let Some(job) = self.jobs.pop_front() {
                let kind = job_kind(&job);
                if self.hold.iter().any(|k| *k == kind) {
                    self.held.push_back(job);
                    continue;
                }
                if kind == "sync" && self.fail_sync_of == Some(job.log()) {
                    self.fail_sync_of = None;
                    self.storage.inject(crate::testing::Faults {
                        fail_next_sync: true,
                        ..Default::default()
                    });
                }
                let finished = job.run();
                let (mut done, mut jobs) = (Vec::new(), Vec::new());
                self.disk.finish(finished, &mut done, &mut jobs);
                self.done.extend(done);
                self.jobs.extend(jobs);
                continue;
            }
            return;
        }
        panic!("the node never settled");
    }
}

/// A cluster of hosts on one simulated clock and network.
struct Cluster {
    hosts: Vec<Option<Host>>,
    storages: Vec<MemStorage>,
    configs: Vec<NodeConfig>,
    network: VecDeque<(u64, u64, PeerMessage)>,
    now: Now,
    next_request: RequestId,
    seed: u64,
    /// Links that drop everything: (from, to).
    cut: Vec<(u64, u64)>,
}

fn config(node_id: i32, nodes: usize) -> NodeConfig {
    let ids: Vec<u64> = (0..nodes as u64).collect();
    let mut c = NodeConfig::single(node_id);
    c.nodes = ids.clone();
    c.controllers = ids;
    c.topic_defaults.replication_factor = nodes.min(3) as i16;
    c.offsets_topic_partitions = 2;
    c.offsets_topic_replication_factor = nodes.min(3) as i16;
    c.groups.initial_rebalance_delay_ms = 0;
    c.groups.min_session_timeout_ms = 100;
    c.observe = true;
    c
}

impl Cluster {
    fn new(nodes: usize, seed: u64) -> Cluster {
        Cluster::with(nodes, seed, |_| {})
    }

    /// A cluster whose nodes' configs `tweak` changes first.
    fn with(nodes: usize, seed: u64, tweak: impl Fn(&mut NodeConfig)) -> Cluster {
        let now = Now::new(Instant::from_millis(1_000), 1_700_000_000_000);
        let storages: Vec<MemStorage> = (0..nodes).map(|_| MemStorage::new()).collect();
        let configs: Vec<NodeConfig> = (0..nodes)
            .map(|i| {
                let mut c = config(i as i32, nodes);
                tweak(&mut c);
                c
            })
            .collect();
        let hosts = (0..nodes)
            .map(|i| {
                Some(Host::start(
                    configs[i].clone(),
                    storages[i].clone(),
                    seed + i as u64,
                    now,
                ))
            })
            .collect();
        let mut c = Cluster {
            hosts,
            storages,
            configs,
            network: VecDeque::new(),
            now,
            next_request: 0,
            seed,
            cut: Vec::new(),
        };
        c.settle();
        c
    }

    fn host(&mut self, i: usize) -> &mut Host {
        self.hosts[i].as_mut().expect("host is up")
    }

    /// Lets every node and the network run until nothing moves (no time passes).
    fn settle(&mut self) {
        for _ in 0..100_000 {
            let now = self.now;
            for (i, host) in self.hosts.iter_mut().enumerate() {
                if let Some(h) = host {
                    h.settle(i as u64, now, &mut self.network);
                }
            }
            let Some((from, to, message)) = self.network.pop_front() else {
                return;
            };
            if self.cut.contains(&(from, to)) {
                continue;
            }
            if let Some(h) = self.hosts[to as usize].as_mut() {
                h.node.handle(now, Input::Peer { from, message }, &h.disk);
                h.node.check_invariants();
            }
        }
        panic!("the cluster never settled");
    }

    /// Advances time by `ms` in ticks, settling after each.
    fn advance(&mut self, ms: u64) {
        let step = 10;
        let mut left = ms;
        while left > 0 {
            let d = step.min(left);
            left -= d;
            self.now = Now::new(
                self.now.instant + Duration::from_millis(d),
                self.now.wall_ms + d,
            );
            let now = self.now;
            for host in self.hosts.iter_mut().flatten() {
                if host.node.poll_timeout().is_some_and(|t| t <= now.instant) {
                    host.node.handle(now, Input::Timeout, &host.disk);
                }
            }
            self.settle();
        }
    }

    fn request(&mut self, at: usize, body: Request) -> RequestId {
        self.next_request += 1;
        let id = self.next_request;
        let now = self.now;
        let h = self.host(at);
        h.node.handle(
            now,
            Input::Client {
                request: id,
                body,
                client: ClientInfo {
                    client_id: "test".into(),
                    host: "/127.0.0.1".into(),
                },
            },
            &h.disk,
        );
        self.settle();
        id
    }

    /// Sends `body` and waits (advancing time) for its answer.
    fn call(&mut self, at: usize, body: Request) -> Reply {
        let id = self.request(at, body);
        for _ in 0..1_000 {
            if let Some(r) = self.host(at).replies.remove(&id) {
                return r;
            }
            self.advance(10);
        }
        panic!("request {id} to node {at} was never answered");
    }

    fn wait_ready(&mut self) {
        for _ in 0..2_000 {
            if self.hosts.iter().flatten().all(|h| h.ready) {
                return;
            }
            self.advance(10);
        }
        panic!("the cluster never became ready");
    }

    /// Kills node `i` (losing unsynced data as `mode` says) and starts it again.
    fn crash(&mut self, i: usize, mode: CrashMode) {
        self.hosts[i] = None;
        self.network
            .retain(|(from, to, _)| *from != i as u64 && *to != i as u64);
        self.storages[i].crash(mode);
        self.seed += 100;
        let host = Host::start(
            self.configs[i].clone(),
            self.storages[i].clone(),
            self.seed,
            self.now,
        );
        self.hosts[i] = Some(host);
        self.settle();
    }

    /// The partition's leader, as the nodes that host it see it.
    fn leader_of(&mut self, topic: &str, partition: i32) -> Option<usize> {
        let reply = self.call(
            0,
            Request::Metadata(MetadataRequest {
                topics: Some(vec![TopicKey::Name(topic.into())]),
                allow_auto_create: false,
            }),
        );
        let Reply::Metadata(m) = reply else {
            unreachable!()
        };
        let p = m.topics.first()?.partitions.get(partition as usize)?;
        (p.leader >= 0).then_some(p.leader as usize)
    }

    fn create_topic(&mut self, name: &str, partitions: i32) {
        for _ in 0..100 {
            let controller = self.controller();
            let reply = self.call(
                controller,
                Request::CreateTopics(CreateTopicsRequest {
                    topics: vec![NewTopic {
                        name: name.into(),
                        num_partitions: partitions,
                        replication_factor: -1,
                        assignment: None,
                        configs: Vec::new(),
                    }],
                    validate_only: false,
                    timeout_ms: 5_000,
                }),
            );
            let Reply::CreateTopics(r) = reply else {
                unreachable!()
            };
            match r[0].error {
                ErrorCode::None => break,
                ErrorCode::NotController => self.advance(100),
                other => panic!("CreateTopics: {other:?}"),
            }
        }
        for p in 0..partitions {
            for _ in 0..500 {
                if self.leader_of(name, p).is_some() {
                    break;
                }
                self.advance(20);
            }
        }
    }

    fn controller(&mut self) -> usize {
        let Reply::Metadata(m) = self.call(
            0,
            Request::Metadata(MetadataRequest {
                topics: Some(Vec::new()),
                allow_auto_create: false,
            }),
        ) else {
            unreachable!()
        };
        m.controller_id.max(0) as usize
    }
}

fn records(values: &[&[u8]], now_ms: i64) -> Bytes {
    let mut b = BatchBuilder::new(now_ms);
    for v in values {
        b.push(&NewRecord {
            timestamp: now_ms,
            key: None,
            value: Some(v.to_vec()),
            headers: Vec::new(),
        });
    }
    Bytes::from(b.build())
}

fn produce(topic: &str, partition: i32, acks: i16, batch: Bytes) -> Request {
    Request::Produce(ProduceRequest {
        acks,
        timeout_ms: 5_000,
        transactional: false,
        topics: vec![(TopicKey::Name(topic.into()), vec![(partition, Some(batch))])],
    })
}

fn fetch(topic: &str, partition: i32, offset: i64) -> Request {
    Request::Fetch(FetchRequest {
        max_wait_ms: 0,
        min_bytes: 0,
        max_bytes: Some(1 << 20),
        topics: vec![(
            TopicKey::Name(topic.into()),
            vec![FetchQuery {
                partition,
                fetch_offset: offset,
                partition_max_bytes: 1 << 20,
                current_leader_epoch: NO_LEADER_EPOCH,
            }],
        )],
    })
}

fn produced(reply: Reply) -> ProducedPartition {
    let Reply::Produce(mut topics) = reply else {
        panic!("not a produce reply: {reply:?}")
    };
    topics.remove(0).1.remove(0)
}

fn fetched(reply: Reply) -> FetchedPartition {
    let Reply::Fetch(mut topics) = reply else {
        panic!("not a fetch reply: {reply:?}")
    };
    topics.remove(0).1.remove(0)
}

/// Every value of the partition from offset 0 up to its high watermark, read as a consumer does
/// (a read stops at a segment's end).
fn read_all(c: &mut Cluster, at: usize, topic: &str, partition: i32) -> Vec<Vec<u8>> {
    let mut offset = 0;
    let mut out = Vec::new();
    for _ in 0..1_000 {
        let f = fetched(c.call(at, fetch(topic, partition, offset)));
        assert_eq!(f.error, ErrorCode::None, "{f:?}");
        if f.records.is_empty() {
            if offset >= f.high_watermark {
                return out;
            }
            panic!(
                "an empty read at {offset} below the high watermark {}",
                f.high_watermark
            );
        }
        out.extend(values(&f.records));
        let (last, _) = crate::batch::split_batches(&f.records)
            .unwrap()
            .pop()
            .unwrap();
        offset = last.next_offset();
    }
    panic!("never reached the high watermark");
}

/// The values of the data records in `records`.
fn values(records: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for (h, range) in crate::batch::split_batches(records).unwrap_or_default() {
        if h.is_control() {
            continue;
        }
        for r in crate::batch::Records::new(&records[range]).unwrap() {
            out.push(r.unwrap().value.unwrap_or_default().to_vec());
        }
    }
    out
}

#[test]
fn a_single_node_serves_produce_and_fetch_through_the_facade() {
    let mut c = Cluster::new(1, 1);
    c.wait_ready();
    c.create_topic("t", 1);
    let now = c.now.wall_ms as i64;
    let all = produced(c.call(0, produce("t", 0, -1, records(&[b"a", b"b"], now))));
    assert_eq!(all.error, ErrorCode::None, "{all:?}");
    let one = produced(c.call(0, produce("t", 0, 1, records(&[b"c"], now))));
    assert_eq!(one.error, ErrorCode::None);
    assert_eq!(one.base_offset, all.base_offset + 2);
    // acks=0: no answer, but the data is there.
    let silent = c.request(0, produce("t", 0, 0, records(&[b"d"], now)));
    c.advance(100);
    assert!(!c.host(0).replies.contains_key(&silent));
    let f = fetched(c.call(0, fetch("t", 0, 0)));
    assert_eq!(f.error, ErrorCode::None);
    assert_eq!(
        values(&f.records),
        vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec(), b"d".to_vec()]
    );
    assert_eq!(f.high_watermark, all.base_offset + 4);
    c.host(0).node.check_invariants();
}

/// An acks=1 reply leaves only once its write reached the OS (a `Written` completion), and an
/// acks=all reply only once the fsync covering it completed.
#[test]
fn acks_wait_for_their_storage_completions() {
    let mut c = Cluster::new(1, 2);
    c.wait_ready();
    c.create_topic("t", 1);
    let now = c.now;
    let h = c.host(0);
    let mut network = VecDeque::new();
    h.node.handle(
        now,
        Input::Client {
            request: 900,
            body: produce("t", 0, 1, records(&[b"x"], 0)),
            client: ClientInfo::default(),
        },
        &h.disk,
    );
    // Nothing answered before the write was carried out.
    assert!(h.replies.is_empty());
    h.drain(0, &mut network);
    assert!(
        !h.replies.contains_key(&900),
        "answered before its write completed"
    );
    let written = h
        .done
        .iter()
        .any(|d| matches!(d, StorageDone::Written { .. }));
    assert!(written, "the disk reports the write");
    h.settle(0, now, &mut network);
    assert!(h.replies.contains_key(&900));
    // acks=all: the fsync job must run first.
    h.node.handle(
        now,
        Input::Client {
            request: 901,
            body: produce("t", 0, -1, records(&[b"y"], 0)),
            client: ClientInfo::default(),
        },
        &h.disk,
    );
    h.drain(0, &mut network);
    while let Some(d) = h.done.pop_front() {
        h.node.handle(now, Input::Storage(d), &h.disk);
        h.drain(0, &mut network);
    }
    assert!(
        !h.replies.contains_key(&901),
        "acks=all answered before its fsync"
    );
    assert!(h.jobs.iter().any(|j| format!("{j:?}").contains("sync")));
    h.settle(0, now, &mut network);
    assert_eq!(
        produced(h.replies.remove(&901).unwrap()).error,
        ErrorCode::None
    );
}

/// Pipelined replication: the leader's append leaves for its followers in the same drain as
/// its own write of the batch, before any fsync has completed.
#[test]
fn the_leader_sends_an_append_before_its_own_fsync_completes() {
    let mut c = Cluster::new(3, 3);
    c.wait_ready();
    c.create_topic("t", 1);
    let leader = c.leader_of("t", 0).expect("a leader");
    let now = c.now;
    let h = c.host(leader);
    h.trace.clear();
    h.node.handle(
        now,
        Input::Client {
            request: 77,
            body: produce("t", 0, -1, records(&[b"p"], 0)),
            client: ClientInfo::default(),
        },
        &h.disk,
    );
    let mut network = VecDeque::new();
    h.drain(leader as u64, &mut network);
    let write = h.trace.iter().position(|t| t.starts_with("write Append"));
    let send = h.trace.iter().position(|t| t.starts_with("send"));
    let sync = h.trace.iter().position(|t| t == "sync");
    assert!(write.is_some() && send.is_some(), "{:?}", h.trace);
    assert!(write < send, "{:?}", h.trace);
    assert!(
        sync.is_some(),
        "the leader's own fsync is requested at once: {:?}",
        h.trace
    );
    assert!(
        network.iter().any(|(_, _, m)| matches!(m, PeerMessage::Raft { msg, .. } if matches!(msg.body, MessageBody::Append { ref entries, .. } if !entries.is_empty()))),
        "an append with the batch went out: {:?}",
        h.trace
    );
    assert!(
        h.jobs.iter().any(|j| format!("{j:?}").contains("sync")),
        "its fsync has not run yet"
    );
    c.network.extend(network);
    c.settle();
    let reply = c
        .host(leader)
        .replies
        .remove(&77)
        .expect("committed after the fsyncs");
    assert_eq!(produced(reply).error, ErrorCode::None);
}

#[test]
fn a_three_node_cluster_replicates_and_survives_a_leader_crash() {
    let mut c = Cluster::new(3, 4);
    c.wait_ready();
    c.create_topic("t", 1);
    let leader = c.leader_of("t", 0).expect("a leader");
    let wall = c.now.wall_ms as i64;
    for v in [b"1", b"2", b"3"] {
        let p = produced(c.call(leader, produce("t", 0, -1, records(&[v], wall))));
        assert_eq!(p.error, ErrorCode::None);
    }
    c.crash(leader, CrashMode::Clean);
    let mut new_leader = None;
    for _ in 0..400 {
        c.advance(20);
        new_leader = c.leader_of("t", 0).filter(|l| *l != leader);
        if new_leader.is_some() {
            break;
        }
    }
    let new_leader = new_leader.expect("a new leader after the crash");
    let p = produced(c.call(new_leader, produce("t", 0, -1, records(&[b"4"], wall))));
    assert_eq!(p.error, ErrorCode::None);
    assert_eq!(
        read_all(&mut c, new_leader, "t", 0),
        vec![b"1".to_vec(), b"2".to_vec(), b"3".to_vec(), b"4".to_vec()]
    );
    for h in c.hosts.iter().flatten() {
        h.node.check_invariants();
    }
}

#[test]
fn a_consumer_group_joins_syncs_and_commits_through_the_facade() {
    let mut c = Cluster::new(1, 5);
    c.wait_ready();
    c.create_topic("t", 1);
    let coordinator = loop {
        let Reply::FindCoordinator(found) = c.call(
            0,
            Request::FindCoordinator(FindCoordinatorRequest {
                key_type: 0,
                keys: vec!["g".into()],
            }),
        ) else {
            unreachable!()
        };
        match &found[0].1 {
            Ok(b) => break b.node_id,
            Err(_) => c.advance(50),
        }
    };
    assert_eq!(coordinator, 0);
    let join = |member_id: &str| {
        Request::JoinGroup(JoinRequest {
            group_id: "g".into(),
            member_id: member_id.into(),
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 10_000,
            protocol_type: "consumer".into(),
            protocols: vec![("range".into(), vec![])],
            require_known_member_id: true,
            ..JoinRequest::default()
        })
    };
    let joined = loop {
        let Reply::JoinGroup(j) = c.call(0, join("")) else {
            unreachable!()
        };
        match j.error {
            ErrorCode::MemberIdRequired => {
                let Reply::JoinGroup(j) = c.call(0, join(&j.member_id)) else {
                    unreachable!()
                };
                break j;
            }
            ErrorCode::CoordinatorLoadInProgress | ErrorCode::NotCoordinator => c.advance(50),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(joined.error, ErrorCode::None);
    let Reply::SyncGroup(s) = c.call(
        0,
        Request::SyncGroup(crate::group::SyncRequest {
            group_id: "g".into(),
            member_id: joined.member_id.clone(),
            generation: joined.generation,
            assignments: vec![(joined.member_id.clone(), b"mine".to_vec())],
            ..crate::group::SyncRequest::default()
        }),
    ) else {
        unreachable!()
    };
    assert_eq!(
        (s.error, s.assignment.as_slice()),
        (ErrorCode::None, &b"mine"[..])
    );
    let Reply::OffsetCommit(r) = c.call(
        0,
        Request::OffsetCommit(CommitRequest {
            group_id: "g".into(),
            generation: joined.generation,
            member_id: joined.member_id.clone(),
            instance_id: None,
            partitions: vec![CommitPartition {
                topic: "t".into(),
                partition: 0,
                offset: 42,
                leader_epoch: -1,
                metadata: None,
            }],
        }),
    ) else {
        unreachable!()
    };
    assert_eq!(r, vec![("t".to_string(), 0, ErrorCode::None)]);
    let Reply::OffsetFetch(groups) = c.call(0, Request::OffsetFetch(vec![("g".into(), None)]))
    else {
        unreachable!()
    };
    assert_eq!(groups[0].offsets[0].2.as_ref().map(|v| v.offset), Some(42));
}

fn commit_outside_a_generation(group_id: &str, partitions: &[(&str, i32)]) -> Request {
    Request::OffsetCommit(CommitRequest {
        group_id: group_id.into(),
        generation: -1,
        member_id: String::new(),
        instance_id: None,
        partitions: partitions
            .iter()
            .map(|(topic, partition)| CommitPartition {
                topic: (*topic).into(),
                partition: *partition,
                offset: 7,
                leader_epoch: -1,
                metadata: None,
            })
            .collect(),
    })
}

/// Committing offsets does not create topics: as in Kafka, a partition of a topic the node does
/// not know (or past the topic's partitions) is answered UNKNOWN_TOPIC_OR_PARTITION and nothing
/// is stored for it, while the known partitions of the same request are committed (librdkafka's
/// test 0030, do_nonexist_commit).
#[test]
fn an_offset_commit_for_a_topic_that_does_not_exist_is_refused_per_partition() {
    let mut c = Cluster::new(1, 21);
    c.wait_ready();
    c.create_topic("t", 2);
    let sorted = |mut r: Vec<(String, i32, ErrorCode)>| {
        r.sort();
        r
    };
    // FindCoordinator creates the offsets topic on first use.
    for attempt in 0.. {
        assert!(attempt < 200, "no coordinator for g");
        let Reply::FindCoordinator(found) = c.call(
            0,
            Request::FindCoordinator(FindCoordinatorRequest {
                key_type: 0,
                keys: vec!["g".into()],
            }),
        ) else {
            unreachable!()
        };
        if found[0].1.is_ok() {
            break;
        }
        c.advance(50);
    }
    // Until the coordinator is up, the known partition gets a retriable coordinator error.
    let mut answer = Vec::new();
    for attempt in 0.. {
        assert!(
            attempt < 200,
            "the commit never reached a loaded coordinator"
        );
        let Reply::OffsetCommit(r) = c.call(
            0,
            commit_outside_a_generation("g", &[("t", 1), ("nope", 0), ("t", 2)]),
        ) else {
            unreachable!()
        };
        let known = r
            .iter()
            .find(|(t, p, _)| t == "t" && *p == 1)
            .expect("answered");
        match known.2 {
            ErrorCode::CoordinatorNotAvailable
            | ErrorCode::CoordinatorLoadInProgress
            | ErrorCode::NotCoordinator => c.advance(50),
            _ => {
                answer = r;
                break;
            }
        }
    }
    assert_eq!(
        sorted(answer),
        vec![
            ("nope".to_string(), 0, ErrorCode::UnknownTopicOrPartition),
            ("t".to_string(), 1, ErrorCode::None),
            ("t".to_string(), 2, ErrorCode::UnknownTopicOrPartition),
        ]
    );
    // A commit of unknown partitions only is answered at once, whatever the coordinator.
    let Reply::OffsetCommit(r) = c.call(
        0,
        commit_outside_a_generation("another-group", &[("nope", 0), ("nope", 1)]),
    ) else {
        unreachable!()
    };
    assert_eq!(
        sorted(r),
        vec![
            ("nope".to_string(), 0, ErrorCode::UnknownTopicOrPartition),
            ("nope".to_string(), 1, ErrorCode::UnknownTopicOrPartition),
        ]
    );
    let Reply::OffsetFetch(groups) = c.call(0, Request::OffsetFetch(vec![("g".into(), None)]))
    else {
        unreachable!()
    };
    let stored: Vec<(String, i32)> = groups[0]
        .offsets
        .iter()
        .filter(|o| o.2.is_some())
        .map(|o| (o.0.clone(), o.1))
        .collect();
    assert_eq!(
        stored,
        vec![("t".to_string(), 1)],
        "only the known partition is stored"
    );
    c.host(0).node.check_invariants();
}

/// A node whose storage fails an fsync drops what was not durable, fails the waiting produce
/// with KAFKA_STORAGE_ERROR, reopens the partition from disk, and serves again.
#[test]
fn a_failed_fsync_fails_the_waiters_and_the_partition_is_reopened() {
    let mut c = Cluster::new(1, 6);
    c.wait_ready();
    c.create_topic("t", 1);
    let wall = c.now.wall_ms as i64;
    let ok = produced(c.call(0, produce("t", 0, -1, records(&[b"kept"], wall))));
    assert_eq!(ok.error, ErrorCode::None);
    c.storages[0].inject(crate::testing::Faults {
        fail_next_sync: true,
        ..Default::default()
    });
    let failed = produced(c.call(0, produce("t", 0, -1, records(&[b"lost"], wall))));
    assert_eq!(failed.error, ErrorCode::KafkaStorageError);
    let mut served = None;
    for _ in 0..200 {
        c.advance(20);
        let p = produced(c.call(0, produce("t", 0, -1, records(&[b"after"], wall))));
        if p.error == ErrorCode::None {
            served = Some(p);
            break;
        }
    }
    assert!(served.is_some(), "the reopened partition serves again");
    let got = read_all(&mut c, 0, "t", 0);
    assert_eq!(got.first(), Some(&b"kept".to_vec()));
    assert!(
        got.contains(&b"after".to_vec()),
        "{:?}",
        got.iter()
            .map(|v| String::from_utf8_lossy(v).to_string())
            .collect::<Vec<_>>()
    );
    assert!(
        !got.contains(&b"lost".to_vec()),
        "an unacknowledged, unsynced batch came back"
    );
}

/// A failed directory sync, rename, removal or open (the checkpoint's rename, the directory
/// sync of a group commit after a roll, a new segment's creation) is handled as a failed fsync:
/// the node does not panic, the partition is reopened from disk and serves again, and every
/// acknowledged record is still there.
#[test]
fn a_failed_directory_sync_rename_or_open_reopens_the_partition_and_loses_nothing_acknowledged() {
    type Arm = fn(&mut crate::testing::Faults);
    let kinds: [(&str, Arm); 4] = [
        ("directory sync", |f| f.fail_next_sync_dir = true),
        ("rename", |f| f.fail_next_rename = true),
        ("open", |f| f.fail_next_open = true),
        ("remove", |f| f.fail_next_remove = true),
    ];
    for (what, arm) in kinds {
        let mut c = Cluster::with(1, 31, |config| {
            config.topic_defaults.log.segment_bytes_max = 300;
        });
        c.wait_ready();
        c.create_topic("t", 1);
        let wall = c.now.wall_ms as i64;
        let mut faults = crate::testing::Faults::default();
        arm(&mut faults);
        c.storages[0].inject(faults);
        let mut acked = Vec::new();
        for i in 0..120 {
            let value = format!("{what}-{i:03}-{}", "x".repeat(60));
            let p = produced(c.call(0, produce("t", 0, -1, records(&[value.as_bytes()], wall))));
            // A produce may fail while the log (or the metadata log) is reopened.
            if p.error == ErrorCode::None {
                acked.push(value.into_bytes());
            }
            c.advance(20);
        }
        let fired = {
            let armed = c.storages[0].armed();
            !(armed.fail_next_sync_dir
                || armed.fail_next_rename
                || armed.fail_next_open
                || armed.fail_next_remove)
        };
        if what != "remove" {
            // Nothing removes a file of a growing partition without retention.
            assert!(fired, "the {what} fault never fired");
        }
        assert!(
            acked.len() > 60,
            "{what}: the partition did not serve again"
        );
        let got = read_all(&mut c, 0, "t", 0);
        for value in &acked {
            assert!(
                got.contains(value),
                "{what}: an acknowledged record was lost"
            );
        }
        c.host(0).node.check_invariants();
    }
}

// ---- CreatePartitions ------------------------------------------------------------------------

fn grow(name: &str, count: i32, assignment: Option<Vec<Vec<i32>>>) -> NewPartitions {
    NewPartitions {
        name: name.into(),
        count,
        assignment,
    }
}

fn create_partitions(
    c: &mut Cluster,
    at: usize,
    topics: Vec<NewPartitions>,
    validate_only: bool,
) -> Vec<CreatedPartitions> {
    let Reply::CreatePartitions(r) = c.call(
        at,
        Request::CreatePartitions(CreatePartitionsRequest {
            topics,
            validate_only,
            timeout_ms: 5_000,
        }),
    ) else {
        unreachable!()
    };
    r
}

fn partition_count(c: &mut Cluster, at: usize, topic: &str) -> usize {
    let Reply::Metadata(m) = c.call(
        at,
        Request::Metadata(MetadataRequest {
            topics: Some(vec![TopicKey::Name(topic.into())]),
            allow_auto_create: false,
        }),
    ) else {
        unreachable!()
    };
    m.topics[0].partitions.len()
}

/// A topic grown from 1 to 3 partitions on 3 nodes: every node replays the record and opens
/// the new partitions' Raft groups, each gets a leader, and the new partitions take records.
#[test]
fn added_partitions_open_on_every_replica_get_leaders_and_serve() {
    let mut c = Cluster::new(3, 41);
    c.wait_ready();
    c.create_topic("t", 1);
    let before: Vec<usize> = (0..3).map(|i| c.host(i).node.hosted_partitions()).collect();
    let controller = c.controller();
    let r = create_partitions(&mut c, controller, vec![grow("t", 3, None)], false);
    assert_eq!(
        r,
        vec![CreatedPartitions {
            name: "t".into(),
            error: ErrorCode::None,
            message: None,
        }]
    );
    for (i, hosted) in before.into_iter().enumerate() {
        // Replication factor 3 on 3 nodes: every node hosts both new partitions.
        assert_eq!(c.host(i).node.hosted_partitions(), hosted + 2, "node {i}");
        assert_eq!(partition_count(&mut c, i, "t"), 3, "node {i}");
    }
    let wall = c.now.wall_ms as i64;
    for p in 1..3 {
        let leader = wait_for_leader(&mut c, "t", p);
        let v = format!("p{p}");
        let ok = produced(c.call(leader, produce("t", p, -1, records(&[v.as_bytes()], wall))));
        assert_eq!(ok.error, ErrorCode::None, "t-{p}: {ok:?}");
        assert_eq!(show(&read_all(&mut c, leader, "t", p)), vec![v]);
    }
    for h in c.hosts.iter().flatten() {
        h.node.check_invariants();
    }
}

/// On one node the answer comes once the new partition leads here, so a client may produce to
/// it at once; a restart replays the record and opens the partition again with its records.
#[test]
fn a_grown_topic_serves_at_once_and_after_a_restart() {
    let mut c = Cluster::new(1, 42);
    c.wait_ready();
    c.create_topic("t", 1);
    let r = create_partitions(&mut c, 0, vec![grow("t", 2, None)], false);
    assert_eq!(r[0].error, ErrorCode::None, "{r:?}");
    let wall = c.now.wall_ms as i64;
    let ok = produced(c.call(0, produce("t", 1, -1, records(&[b"new"], wall))));
    assert_eq!(ok.error, ErrorCode::None, "{ok:?}");
    c.crash(0, CrashMode::Clean);
    c.wait_ready();
    wait_for_leader(&mut c, "t", 1);
    assert_eq!(partition_count(&mut c, 0, "t"), 2);
    assert_eq!(show(&read_all(&mut c, 0, "t", 1)), vec!["new".to_string()]);
}

/// The new partition's log opens off the loop (a job); the answer waits for it, as
/// CreateTopics does, so a client that produces right after the answer finds it serving.
#[test]
fn the_answer_waits_until_the_new_partition_has_opened() {
    let mut c = Cluster::new(1, 45);
    c.wait_ready();
    c.create_topic("t", 1);
    c.host(0).hold = vec!["open"];
    let id = c.request(
        0,
        Request::CreatePartitions(CreatePartitionsRequest {
            topics: vec![grow("t", 2, None)],
            validate_only: false,
            timeout_ms: 5_000,
        }),
    );
    c.advance(500);
    assert_eq!(c.host(0).held.len(), 1, "t-1's open is held");
    assert!(
        !c.host(0).replies.contains_key(&id),
        "answered before the new partition opened"
    );
    c.host(0).release();
    c.settle();
    c.advance(100);
    let Some(Reply::CreatePartitions(r)) = c.host(0).replies.remove(&id) else {
        panic!("no answer once the partition opened")
    };
    assert_eq!(r[0].error, ErrorCode::None, "{r:?}");
    let wall = c.now.wall_ms as i64;
    let ok = produced(c.call(0, produce("t", 1, -1, records(&[b"x"], wall))));
    assert_eq!(ok.error, ErrorCode::None, "{ok:?}");
}

#[test]
fn create_partitions_refusals_come_with_kafkas_codes() {
    let mut c = Cluster::new(1, 43);
    c.wait_ready();
    c.create_topic("t", 2);
    c.create_topic("u", 1);
    let codes = |r: &[CreatedPartitions]| -> Vec<(String, ErrorCode)> {
        r.iter().map(|t| (t.name.clone(), t.error)).collect()
    };
    // A repeated name is answered once and not grown; the others go ahead.
    let r = create_partitions(
        &mut c,
        0,
        vec![grow("t", 3, None), grow("u", 2, None), grow("t", 4, None)],
        false,
    );
    assert_eq!(
        codes(&r),
        vec![
            ("t".into(), ErrorCode::InvalidRequest),
            ("u".into(), ErrorCode::None)
        ]
    );
    assert_eq!(r[0].message.as_deref(), Some("Duplicate topic name."));
    assert_eq!(partition_count(&mut c, 0, "t"), 2);
    assert_eq!(partition_count(&mut c, 0, "u"), 2);

    let r = create_partitions(
        &mut c,
        0,
        vec![
            grow("t", 2, None),
            grow("t1", 1, None),
            grow("u", 3, Some(vec![vec![7]])),
            grow("u", 1, None),
        ],
        false,
    );
    assert_eq!(r.len(), 3, "{r:?}");
    assert_eq!(r[0].error, ErrorCode::InvalidPartitions);
    assert_eq!(
        r[0].message.as_deref(),
        Some("Topic already has 2 partition(s).")
    );
    assert_eq!(r[1].error, ErrorCode::UnknownTopicOrPartition);
    assert_eq!(r[2].error, ErrorCode::InvalidRequest, "u is repeated");

    let r = create_partitions(&mut c, 0, vec![grow("u", 3, Some(vec![vec![7]]))], false);
    assert_eq!(r[0].error, ErrorCode::InvalidReplicaAssignment, "{r:?}");
    let r = create_partitions(&mut c, 0, vec![grow("u", 1, None)], false);
    assert_eq!(r[0].error, ErrorCode::InvalidPartitions, "{r:?}");

    // validate_only decides but writes nothing.
    let r = create_partitions(&mut c, 0, vec![grow("t", 5, None)], true);
    assert_eq!(r[0].error, ErrorCode::None, "{r:?}");
    let r = create_partitions(&mut c, 0, vec![grow("t", 1, None)], true);
    assert_eq!(r[0].error, ErrorCode::InvalidPartitions, "{r:?}");
    assert_eq!(partition_count(&mut c, 0, "t"), 2);
    let r = create_partitions(&mut c, 0, vec![grow("t", 3, Some(vec![vec![0]]))], false);
    assert_eq!(r[0].error, ErrorCode::None, "{r:?}");
    assert_eq!(partition_count(&mut c, 0, "t"), 3);
}

#[test]
fn create_partitions_at_a_node_that_is_not_the_controller_answers_not_controller() {
    let mut c = Cluster::new(3, 44);
    c.wait_ready();
    c.create_topic("t", 1);
    let controller = c.controller();
    let follower = (controller + 1) % 3;
    let r = create_partitions(&mut c, follower, vec![grow("t", 2, None)], false);
    assert_eq!(r[0].error, ErrorCode::NotController, "{r:?}");
    let r = create_partitions(&mut c, follower, vec![grow("t", 2, None)], true);
    assert_eq!(r[0].error, ErrorCode::NotController, "{r:?}");
    assert_eq!(partition_count(&mut c, follower, "t"), 1);
}

// ---- Found in review: topic lifecycle, storage jobs, failures -------------------------------

fn delete_topic(c: &mut Cluster, at: usize, name: &str) {
    let Reply::DeleteTopics(r) = c.call(
        at,
        Request::DeleteTopics(DeleteTopicsRequest {
            topics: vec![TopicKey::Name(name.into())],
            timeout_ms: 5_000,
        }),
    ) else {
        unreachable!()
    };
    assert_eq!(r[0].error, ErrorCode::None, "DeleteTopics {name}: {r:?}");
}

fn create_topics_request(name: &str, assignment: Option<Vec<(i32, Vec<i32>)>>) -> Request {
    Request::CreateTopics(CreateTopicsRequest {
        topics: vec![NewTopic {
            name: name.into(),
            num_partitions: if assignment.is_some() { -1 } else { 1 },
            replication_factor: -1,
            assignment,
            configs: Vec::new(),
        }],
        validate_only: false,
        timeout_ms: 5_000,
    })
}

fn wait_for_leader(c: &mut Cluster, topic: &str, partition: i32) -> usize {
    for _ in 0..500 {
        if let Some(l) = c.leader_of(topic, partition) {
            return l;
        }
        c.advance(20);
    }
    panic!("{topic}-{partition} never got a leader");
}

fn show(values: &[Vec<u8>]) -> Vec<String> {
    values
        .iter()
        .map(|v| String::from_utf8_lossy(v).to_string())
        .collect()
}

/// A topic deleted while one of its partitions is being (re)opened — its recovery is a job off
/// the loop, here after a failed fsync — must still lose its directory: a topic created later
/// under the same name must not serve the deleted topic's records.
#[test]
fn a_topic_deleted_while_its_partition_reopens_leaves_no_data_behind() {
    let mut c = Cluster::new(1, 21);
    c.wait_ready();
    c.create_topic("t", 1);
    let wall = c.now.wall_ms as i64;
    let ok = produced(c.call(0, produce("t", 0, -1, records(&[b"old"], wall))));
    assert_eq!(ok.error, ErrorCode::None);
    // The next fsync fails: the partition is reopened from disk, and its recovery is slow.
    c.host(0).hold = vec!["open"];
    c.storages[0].inject(crate::testing::Faults {
        fail_next_sync: true,
        ..Default::default()
    });
    let failed = produced(c.call(0, produce("t", 0, -1, records(&[b"lost"], wall))));
    assert_eq!(failed.error, ErrorCode::KafkaStorageError);
    assert_eq!(
        c.host(0).held.len(),
        1,
        "the partition's reopen is under way"
    );
    delete_topic(&mut c, 0, "t");
    c.host(0).release();
    c.settle();
    let left: Vec<_> = c.storages[0]
        .paths()
        .into_iter()
        .filter(|p| p.starts_with("t-0"))
        .collect();
    c.create_topic("t", 1);
    let got = read_all(&mut c, 0, "t", 0);
    assert!(
        got.is_empty(),
        "a re-created topic serves the deleted topic's records: {:?}",
        show(&got)
    );
    assert!(
        left.is_empty(),
        "the deleted topic's files stayed: {left:?}"
    );
}

/// The deletion of a topic's directory is a job off the loop, and a partition's recovery is
/// another: the host runs them on a thread pool in any order. A topic re-created under the same
/// name while the old directory is still being removed must neither recover the old records
/// nor lose its own acknowledged ones when the removal completes.
#[test]
fn a_topic_recreated_while_its_old_directory_is_being_removed_keeps_its_acknowledged_records() {
    let mut c = Cluster::new(1, 22);
    c.wait_ready();
    c.create_topic("t", 1);
    let wall = c.now.wall_ms as i64;
    let ok = produced(c.call(0, produce("t", 0, -1, records(&[b"old"], wall))));
    assert_eq!(ok.error, ErrorCode::None);
    c.host(0).hold = vec!["delete"];
    delete_topic(&mut c, 0, "t");
    assert_eq!(
        c.host(0).held.len(),
        1,
        "the old directory's removal is under way"
    );
    // Re-created at once (as `kafka-topics --delete` then `--create` in a script).
    c.request(0, create_topics_request("t", None));
    // The removal finishes after the new partition's recovery ran.
    c.host(0).release();
    c.settle();
    let leader = wait_for_leader(&mut c, "t", 0);
    let new = produced(c.call(leader, produce("t", 0, -1, records(&[b"new"], wall))));
    assert_eq!(new.error, ErrorCode::None, "{new:?}");
    let before_crash = read_all(&mut c, 0, "t", 0);
    c.crash(0, CrashMode::Clean);
    c.wait_ready();
    wait_for_leader(&mut c, "t", 0);
    let after_crash = read_all(&mut c, 0, "t", 0);
    assert_eq!(
        (show(&before_crash), show(&after_crash)),
        (vec!["new".to_string()], vec!["new".to_string()]),
        "the re-created topic holds exactly its own acknowledged record, before and after a crash"
    );
}

/// A job of a log that was closed for deletion may still be running (a hard state being
/// stored, a group commit, a swap): the host's pool runs jobs in any order. The directory
/// must be gone once every job has finished, whatever the order.
#[test]
fn a_deleted_log_directory_is_not_brought_back_by_a_job_still_running() {
    use crate::log::LogConfig;
    use crate::raft::HardState;
    let storage = MemStorage::new();
    let mut disk = Disk::new(storage.clone());
    let (mut done, mut jobs) = (Vec::new(), Vec::new());
    let log = LogId(1);
    let dir = std::path::PathBuf::from("t-0");
    disk.execute(
        StorageOp::Open {
            log,
            dir: dir.clone(),
            config: LogConfig::default(),
            cut: Vec::new(),
            topic_id: None,
            rescan: false,
        },
        &mut done,
        &mut jobs,
    );
    let open = jobs.pop().expect("an open job");
    disk.finish(open.run(), &mut done, &mut jobs);
    assert!(matches!(
        done.pop(),
        Some(StorageDone::Opened { result: Ok(_), .. })
    ));
    disk.execute(
        StorageOp::StoreHardState {
            log,
            state: HardState {
                term: 3,
                vote: Some(1),
                commit: 0,
                repair: None,
            },
        },
        &mut done,
        &mut jobs,
    );
    disk.execute(StorageOp::Close { log, delete: true }, &mut done, &mut jobs);
    // Newest first: the removal runs before the hard state's job finishes.
    while let Some(job) = jobs.pop() {
        let mut more = Vec::new();
        disk.finish(job.run(), &mut done, &mut more);
        jobs.extend(more);
    }
    let left: Vec<_> = storage
        .paths()
        .into_iter()
        .filter(|p| p.starts_with(&dir))
        .collect();
    assert!(
        left.is_empty() && !crate::storage::Storage::exists(&storage, &dir),
        "the deleted log's directory came back: {left:?}"
    );
}

/// After its metadata log fails (an fsync error), a node reopens it and replays the image from
/// the start. Until the replay is back where it was, the image lacks topics this node hosts;
/// they must not be deleted (directories removed) meanwhile. Here the metadata log has rolled
/// (as it does after `segment.ms`, a week by default), so the reopened log's durable prefix, a
/// partial image, is applied first.
#[test]
fn a_metadata_log_reopen_does_not_delete_the_topics_its_replay_has_not_reached() {
    let mut c = Cluster::with(1, 23, |config| {
        config.topic_defaults.log.segment_bytes_max = 512;
    });
    c.wait_ready();
    for i in 0..8 {
        c.create_topic(&format!("early-{i}"), 1);
    }
    c.create_topic("t", 1);
    let wall = c.now.wall_ms as i64;
    let ok = produced(c.call(0, produce("t", 0, -1, records(&[b"precious"], wall))));
    assert_eq!(ok.error, ErrorCode::None);
    let meta = c.host(0).node.meta.log_id();
    let segments = c
        .host(0)
        .node
        .meta
        .quorum()
        .map(|q| q.replica().log().segments().count())
        .unwrap();
    assert!(segments > 1, "the metadata log rolled");
    // The metadata log's next group commit fails: it is reopened and its image replayed.
    c.host(0).fail_sync_of = Some(meta);
    c.request(0, create_topics_request("trigger", None));
    assert_ne!(
        c.host(0).node.meta.log_id(),
        meta,
        "the metadata log was reopened"
    );
    c.advance(2_000);
    assert!(c.host(0).stopped.is_none());
    wait_for_leader(&mut c, "t", 0);
    let got = read_all(&mut c, 0, "t", 0);
    assert_eq!(
        show(&got),
        vec!["precious".to_string()],
        "an acknowledged record survives a metadata log reopen"
    );
}

/// The same with default settings on three nodes: a node's stored Raft commit index only moves
/// with a term or vote change, so a reopened metadata log first replays up to the commit of the
/// last election; topics created since must not be deleted (their directories removed) on the
/// way. Here the topic has one replica, so what it acknowledged exists nowhere else.
#[test]
fn a_metadata_log_reopen_does_not_delete_topics_created_since_the_last_election() {
    let mut c = Cluster::new(3, 25);
    c.wait_ready();
    c.create_topic("early", 1);
    // A controller restart: the others adopt a new term (and store it, with the commit index).
    let old_controller = c.controller();
    c.crash(old_controller, CrashMode::Clean);
    c.advance(3_000);
    c.wait_ready();
    let node = (old_controller + 1) % 3;
    let mut created = false;
    for _ in 0..50 {
        let controller = c.controller();
        let Reply::CreateTopics(r) = c.call(
            controller,
            create_topics_request("solo", Some(vec![(0, vec![node as i32])])),
        ) else {
            unreachable!()
        };
        match r[0].error {
            ErrorCode::None => {
                created = true;
                break;
            }
            ErrorCode::NotController => c.advance(100),
            other => panic!("CreateTopics: {other:?}"),
        }
    }
    assert!(created);
    assert_eq!(wait_for_leader(&mut c, "solo", 0), node);
    let wall = c.now.wall_ms as i64;
    let ok = produced(c.call(node, produce("solo", 0, -1, records(&[b"precious"], wall))));
    assert_eq!(ok.error, ErrorCode::None);
    // The node's next metadata group commit fails: it reopens the log and replays the image.
    let meta = c.host(node).node.meta.log_id();
    c.host(node).fail_sync_of = Some(meta);
    let controller = c.controller();
    c.request(controller, create_topics_request("trigger", None));
    c.advance(2_000);
    assert_ne!(
        c.host(node).node.meta.log_id(),
        meta,
        "the metadata log was reopened"
    );
    assert!(c.hosts.iter().flatten().all(|h| h.stopped.is_none()));
    wait_for_leader(&mut c, "solo", 0);
    let got = read_all(&mut c, node, "solo", 0);
    assert_eq!(
        show(&got),
        vec!["precious".to_string()],
        "an acknowledged record survives a metadata log reopen"
    );
}

/// With `flush_interval_ms`, a log whose end is above its high watermark only because the
/// commit waits for other replicas has nothing to sync: the node must not ask to be woken at
/// once, again and again (the host's loop would spin).
#[test]
fn a_spaced_group_commit_does_not_spin_while_a_commit_waits_for_followers() {
    let mut c = Cluster::with(3, 24, |config| config.flush_interval_ms = 50);
    c.wait_ready();
    c.create_topic("t", 1);
    let leader = c.leader_of("t", 0).expect("a leader");
    for other in 0..3u64 {
        if other != leader as u64 {
            c.cut.push((leader as u64, other));
            c.cut.push((other, leader as u64));
        }
    }
    let wall = c.now.wall_ms as i64;
    c.request(leader, produce("t", 0, -1, records(&[b"waits"], wall)));
    c.advance(200);
    let now = c.now;
    let h = c.host(leader);
    let slot = h.node.partitions.get(&TopicPartition::new("t", 0)).unwrap();
    let log = slot.replica().unwrap().log();
    assert!(
        log.log_end_offset() > log.high_watermark(),
        "the commit waits"
    );
    h.node.handle(now, Input::Timeout, &h.disk);
    let mut network = VecDeque::new();
    h.settle(leader as u64, now, &mut network);
    let next = h.node.poll_timeout().expect("a timeout");
    assert!(
        next > now.instant,
        "the node asks to be woken at {next:?}, not after now ({:?}): a busy loop",
        now.instant
    );
}

/// Retention compares record timestamps with the wall clock. A wall clock that read a day ahead
/// once (an NTP step, a resumed VM) and was corrected must not keep the node a day ahead:
/// records produced afterwards, stamped with the right time, are not an hour old and must stay
/// (Kafka reads its clock afresh for every retention check).
#[test]
fn a_wall_clock_that_jumped_ahead_once_does_not_keep_retention_deleting_new_records() {
    let mut c = Cluster::with(1, 26, |config| {
        config.retention_check_interval_ms = 1_000;
        config.topic_defaults.log.segment_bytes_max = 200;
        config.topic_defaults.log.retention_ms = 3_600_000;
    });
    c.wait_ready();
    c.create_topic("t", 1);
    let glitch = Now::new(c.now.instant, c.now.wall_ms + 86_400_000);
    {
        let h = c.host(0);
        h.node.handle(glitch, Input::Timeout, &h.disk);
    }
    c.settle();
    // The clock is right again; records produced now carry the right time.
    for i in 0..10u8 {
        let wall = c.now.wall_ms as i64;
        let p = produced(c.call(0, produce("t", 0, -1, records(&[&[b'a' + i]], wall))));
        assert_eq!(p.error, ErrorCode::None);
    }
    c.advance(3_000);
    let tp = TopicPartition::new("t", 0);
    let start = c.host(0).node.partitions[&tp]
        .replica()
        .unwrap()
        .log()
        .log_start_offset();
    assert_eq!(
        start, 0,
        "retention deleted records produced seconds ago, as if they were a day old"
    );
}

/// A replica that stored a topic's deletion (but had not heard it committed) and restarted
/// replays the creation and the deletion in one step: it must still remove the partition's
/// directory, or a topic created later under the same name recovers the deleted records.
#[test]
fn a_restarted_replica_removes_a_deleted_topics_directory_it_replays_at_once() {
    let mut c = Cluster::new(3, 29);
    c.wait_ready();
    c.create_topic("t", 1);
    let leader = wait_for_leader(&mut c, "t", 0);
    let wall = c.now.wall_ms as i64;
    let ok = produced(c.call(leader, produce("t", 0, -1, records(&[b"old"], wall))));
    assert_eq!(ok.error, ErrorCode::None);
    c.advance(500);
    let controller = c.controller();
    let node = (controller + 1) % 3;
    assert!(c.storages[node]
        .paths()
        .iter()
        .any(|p| p.starts_with("t-0")));
    // The deletion reaches the replica, which stores it and acknowledges it; then the link from
    // the controller to it fails, so it never hears that the deletion committed.
    c.next_request += 1;
    let id = c.next_request;
    let now = c.now;
    {
        let h = c.host(controller);
        h.node.handle(
            now,
            Input::Client {
                request: id,
                body: Request::DeleteTopics(DeleteTopicsRequest {
                    topics: vec![TopicKey::Name("t".into())],
                    timeout_ms: 5_000,
                }),
                client: ClientInfo::default(),
            },
            &h.disk,
        );
    }
    for _ in 0..10_000 {
        for (i, host) in c.hosts.iter_mut().enumerate() {
            if let Some(h) = host {
                h.settle(i as u64, now, &mut c.network);
            }
        }
        let Some((from, to, message)) = c.network.pop_front() else {
            break;
        };
        if c.cut.contains(&(from, to)) {
            continue;
        }
        let carries_entries = matches!(
            &message,
            PeerMessage::Raft { group: GroupId::Metadata, msg }
                if matches!(&msg.body, MessageBody::Append { entries, .. } if !entries.is_empty())
        );
        if let Some(h) = c.hosts[to as usize].as_mut() {
            h.node.handle(now, Input::Peer { from, message }, &h.disk);
        }
        if to == node as u64 && carries_entries {
            c.cut.push((controller as u64, node as u64));
        }
    }
    assert!(
        c.hosts[node]
            .as_ref()
            .unwrap()
            .node
            .topics
            .contains_key("t"),
        "the replica has not applied the deletion yet"
    );
    c.crash(node, CrashMode::Clean);
    c.cut.clear();
    c.advance(3_000);
    // A topic created later under the same name, here with that replica alone.
    let controller = c.controller();
    let Reply::CreateTopics(r) = c.call(
        controller,
        create_topics_request("t", Some(vec![(0, vec![node as i32])])),
    ) else {
        unreachable!()
    };
    assert_eq!(r[0].error, ErrorCode::None);
    wait_for_leader(&mut c, "t", 0);
    let got = read_all(&mut c, node, "t", 0);
    assert!(
        got.is_empty(),
        "a topic re-created under a deleted topic's name serves its records: {:?}",
        show(&got)
    );
    // Until then the deleted topic's directory stays on that replica (a leak of disk space,
    // not of records): Kafka removes such stray logs once the metadata is loaded; Sluice does
    // not yet.
}

/// A heartbeat from the partition's leader, as the follower `target` would get it, but with
/// term `term`.
fn forged_heartbeat(c: &mut Cluster, target: usize, tp: &TopicPartition, term: u64) -> PeerMessage {
    let h = c.host(target);
    let slot = h.node.partitions.get(tp).expect("hosted");
    let leader = slot.replica().and_then(|r| r.leader()).expect("a leader");
    PeerMessage::Raft {
        group: slot.group(),
        msg: Message {
            from: leader,
            to: target as u64,
            term,
            body: MessageBody::Heartbeat { commit: 0 },
        },
    }
}

/// Raft terms are Kafka leader epochs (`int32`). A peer's message with an enormous term (a bug,
/// a damaged frame) must not panic a node: here every replica of the group adopts the term,
/// and the next election adds one to it.
#[test]
fn a_peer_message_with_the_largest_term_does_not_panic_a_node() {
    let mut c = Cluster::new(3, 27);
    c.wait_ready();
    c.create_topic("t", 1);
    let tp = TopicPartition::new("t", 0);
    let leader = c.leader_of("t", 0).expect("a leader");
    let follower = (leader + 1) % 3;
    let message = forged_heartbeat(&mut c, follower, &tp, u64::MAX);
    let now = c.now;
    let h = c.host(follower);
    h.node.handle(
        now,
        Input::Peer {
            from: leader as u64,
            message,
        },
        &h.disk,
    );
    c.settle();
    c.advance(5_000);
    for h in c.hosts.iter().flatten() {
        h.node.check_invariants();
        assert!(h.stopped.is_none());
    }
}

/// The same with a term past `i32::MAX` but far from `u64::MAX`: the partition must not be
/// left unable to take a produce (no leader epoch fits a Kafka batch any more) by one message.
#[test]
fn a_peer_message_with_a_term_beyond_any_leader_epoch_does_not_brick_a_partition() {
    let mut c = Cluster::new(3, 28);
    c.wait_ready();
    c.create_topic("t", 1);
    let tp = TopicPartition::new("t", 0);
    let leader = c.leader_of("t", 0).expect("a leader");
    let follower = (leader + 1) % 3;
    let message = forged_heartbeat(&mut c, follower, &tp, 1 << 40);
    let now = c.now;
    let h = c.host(follower);
    h.node.handle(
        now,
        Input::Peer {
            from: leader as u64,
            message,
        },
        &h.disk,
    );
    c.settle();
    c.advance(5_000);
    let wall = c.now.wall_ms as i64;
    let mut last = None;
    for _ in 0..50 {
        if let Some(l) = c.leader_of("t", 0) {
            let p = produced(c.call(l, produce("t", 0, -1, records(&[b"after"], wall))));
            if p.error == ErrorCode::None {
                return;
            }
            last = Some(p.error);
        }
        c.advance(200);
    }
    panic!("the partition takes no produce any more: {last:?}");
}

// ---- Peer and client input never panics a node -----------------------------------------------

fn arb_entry() -> impl Strategy<Value = Entry> {
    (
        0u64..40,
        0u64..4,
        0u64..6,
        0u8..4,
        proptest::collection::vec(any::<u8>(), 0..80),
    )
        .prop_map(|(index, span, term, kind, payload)| {
            let kind = match kind {
                0 => EntryKind::Empty,
                1 => EntryKind::Membership,
                _ => EntryKind::Normal,
            };
            let payload = if kind == EntryKind::Normal && payload.len() > 60 {
                // Sometimes a real batch, sometimes one whose fields disagree with the entry.
                let mut b = BatchBuilder::new(0);
                b.push(&NewRecord {
                    timestamp: 0,
                    key: None,
                    value: Some(payload[..8].to_vec()),
                    headers: Vec::new(),
                });
                let mut bytes = b.build();
                crate::batch::stamp(&mut bytes, index.saturating_sub(1) as i64, term as i32);
                bytes
            } else {
                payload
            };
            Entry {
                index,
                last: index + span,
                term,
                kind,
                payload: Bytes::from(payload),
            }
        })
}

fn arb_body() -> impl Strategy<Value = MessageBody> {
    prop_oneof![
        (0u64..40, 0u64..6).prop_map(|(last_index, last_term)| MessageBody::PreVote {
            last_index,
            last_term
        }),
        any::<bool>().prop_map(|granted| MessageBody::PreVoteResponse { granted }),
        (0u64..40, 0u64..6, any::<bool>()).prop_map(|(last_index, last_term, transfer)| {
            MessageBody::Vote {
                last_index,
                last_term,
                transfer,
            }
        }),
        any::<bool>().prop_map(|granted| MessageBody::VoteResponse { granted }),
        (
            0u64..40,
            0u64..6,
            proptest::collection::vec(arb_entry(), 0..3),
            0u64..50,
            0u64..4
        )
            .prop_map(|(prev_index, prev_term, entries, commit, repair_seen)| {
                MessageBody::Append {
                    prev_index,
                    prev_term,
                    entries,
                    commit,
                    repair_seen,
                }
            }),
        (0u64..60).prop_map(|match_index| MessageBody::AppendAccepted {
            match_index,
            repair_seen: 0
        }),
        (
            0u64..40,
            0u64..40,
            0u64..6,
            any::<bool>(),
            proptest::option::of(1u64..4)
        )
            .prop_map(
                |(prev_index, hint_index, hint_term, hint_is_end, lost_data)| {
                    MessageBody::AppendRejected {
                        prev_index,
                        hint_index,
                        hint_term,
                        hint_is_end,
                        lost_data,
                    }
                }
            ),
        (0u64..60).prop_map(|commit| MessageBody::Heartbeat { commit }),
        Just(MessageBody::HeartbeatResponse),
        Just(MessageBody::TimeoutNow),
    ]
}

fn arb_peer_message() -> impl Strategy<Value = (u64, PeerMessage)> {
    let raft = (
        0u64..4,
        0u64..4,
        0u64..8,
        arb_body(),
        any::<bool>(),
        0i32..3,
    )
        .prop_map(|(from, to, term, body, metadata, partition)| {
            let group = if metadata {
                GroupId::Metadata
            } else {
                GroupId::Partition {
                    topic_id: [partition as u8; 16],
                    partition,
                }
            };
            (
                from,
                PeerMessage::Raft {
                    group,
                    msg: Message {
                        from,
                        to,
                        term,
                        body,
                    },
                },
            )
        });
    let other = prop_oneof![
        (0u64..4, any::<u64>(), 0i32..4).prop_map(|(from, id, node_id)| (
            from,
            PeerMessage::Controller {
                id,
                request: ControllerRequest::AllocateProducerIds { node_id },
            }
        )),
        (0u64..4, any::<u64>(), "[a-z]{0,6}", -2i32..4).prop_map(|(from, id, name, p)| (
            from,
            PeerMessage::Controller {
                id,
                request: ControllerRequest::CreateTopic {
                    name,
                    num_partitions: p,
                    replication_factor: p as i16,
                    configs: vec![],
                },
            }
        )),
        (
            0u64..4,
            any::<u64>(),
            "[a-z]{0,2}",
            "[a-z.]{0,14}",
            "[-0-9a-z]{0,4}",
            any::<(bool, bool)>()
        )
            .prop_map(|(from, id, topic, key, value, (replace, validate_only))| (
                from,
                PeerMessage::Controller {
                    id,
                    request: ControllerRequest::AlterConfigs {
                        topic,
                        set: vec![(key.clone(), value)],
                        delete: vec![key],
                        replace,
                        validate_only,
                    },
                }
            )),
        (0u64..4, 0u64..16, -40i16..120, "[a-z ]{0,8}").prop_map(|(from, id, code, message)| (
            from,
            PeerMessage::ControllerReply {
                id,
                reply: ControllerReply::Refused { code, message },
            }
        )),
        // Small ids reach the calls this node has in flight; blocks may be empty or negative.
        (0u64..4, 0u64..16, -3i64..5, -3i64..5).prop_map(|(from, id, first, end)| (
            from,
            PeerMessage::ControllerReply {
                id,
                reply: ControllerReply::ProducerIds { first, end },
            }
        )),
        (0u64..4, 0u64..16, -40i16..40).prop_map(|(from, id, code)| (
            from,
            PeerMessage::ControllerReply {
                id,
                reply: ControllerReply::Error { code },
            }
        )),
        (0u64..4, 0u64..9, 0u64..4, 0i32..3).prop_map(|(from, term, leader, partition)| (
            from,
            PeerMessage::Leaders(vec![Leadership {
                topic_id: [0; 16],
                partition,
                term,
                leader,
            }])
        )),
    ];
    prop_oneof![4 => raft, 1 => other]
}

fn arb_request() -> impl Strategy<Value = Request> {
    let topic = prop_oneof![Just("t".to_string()), "[a-z.]{0,4}"];
    prop_oneof![
        (
            topic.clone(),
            -1i32..3,
            -2i16..3,
            proptest::collection::vec(any::<u8>(), 0..120)
        )
            .prop_map(|(t, p, acks, bytes)| {
                let batch = if bytes.len() > 100 {
                    records(&[&bytes[..10]], 0)
                } else {
                    Bytes::from(bytes)
                };
                produce(&t, p, acks, batch)
            }),
        (topic.clone(), -1i32..3, -5i64..20).prop_map(|(t, p, o)| fetch(&t, p, o)),
        (topic.clone(), any::<bool>()).prop_map(|(t, auto)| Request::Metadata(MetadataRequest {
            topics: Some(vec![TopicKey::Name(t)]),
            allow_auto_create: auto,
        })),
        (topic.clone(), -2i32..5, -2i16..4).prop_map(
            |(name, num_partitions, replication_factor)| {
                Request::CreateTopics(CreateTopicsRequest {
                    topics: vec![NewTopic {
                        name,
                        num_partitions,
                        replication_factor,
                        assignment: None,
                        configs: vec![],
                    }],
                    validate_only: false,
                    timeout_ms: 1_000,
                })
            }
        ),
        (topic.clone(), -1i32..4, any::<bool>()).prop_map(|(name, count, validate_only)| {
            Request::CreatePartitions(CreatePartitionsRequest {
                topics: vec![grow(&name, count, None)],
                validate_only,
                timeout_ms: 1_000,
            })
        }),
        (topic.clone(), -1i32..3, -6i64..10, -2i32..3).prop_map(|(t, p, ts, e)| {
            Request::ListOffsets(ListOffsetsRequest {
                replica_id: -1,
                topics: vec![(
                    t,
                    vec![OffsetQuery {
                        partition: p,
                        timestamp: ts,
                        current_leader_epoch: e,
                    }],
                )],
            })
        }),
        (topic.clone(), -1i32..3, -2i32..5).prop_map(|(t, p, e)| Request::OffsetForLeaderEpoch(
            vec![(
                t,
                vec![EpochQuery {
                    partition: p,
                    current_leader_epoch: -1,
                    leader_epoch: e
                }]
            )]
        )),
        (-2i64..5, -2i16..3).prop_map(|(producer_id, producer_epoch)| Request::InitProducerId(
            InitProducerIdRequest {
                transactional_id: None,
                producer_id,
                producer_epoch
            }
        )),
        ("[a-z]{0,3}", -2i32..3, "[a-z]{0,3}").prop_map(|(group_id, generation, member_id)| {
            Request::OffsetCommit(CommitRequest {
                group_id,
                generation,
                member_id,
                instance_id: None,
                partitions: vec![CommitPartition {
                    topic: "t".into(),
                    partition: 0,
                    offset: 5,
                    leader_epoch: -1,
                    metadata: None,
                }],
            })
        }),
        ("[a-z]{0,3}", "[a-z]{0,3}").prop_map(|(group_id, member_id)| Request::JoinGroup(
            JoinRequest {
                group_id,
                member_id,
                session_timeout_ms: 200,
                rebalance_timeout_ms: 200,
                protocol_type: "consumer".into(),
                protocols: vec![("range".into(), vec![1, 2])],
                require_known_member_id: false,
                ..JoinRequest::default()
            }
        )),
        "[a-z]{0,3}".prop_map(|g| Request::FindCoordinator(FindCoordinatorRequest {
            key_type: 0,
            keys: vec![g]
        })),
        "[a-z]{0,3}".prop_map(|g| Request::DescribeGroups(vec![g])),
        "[a-z]{0,3}".prop_map(|g| Request::DeleteGroups(vec![g])),
        Just(Request::ListGroups(vec![])),
        (topic, 0i8..6).prop_map(|(name, resource_type)| Request::DescribeConfigs(vec![
            ConfigResource {
                resource_type,
                name,
                keys: None
            }
        ])),
    ]
}

#[derive(Clone, Debug)]
enum Poke {
    Peer(u64, PeerMessage),
    /// An append built against the target's own log (so Raft takes it), whose payload disagrees
    /// with its entry as `corruption` says (5: it agrees, and diverges from the leader's log).
    ForgedAppend {
        partition: u8,
        corruption: u8,
        records: u8,
    },
    Client(Request),
    Advance(u16),
}

/// An append for `tp` at the end of `target`'s log, from the leader it knows (or a peer).
fn forged_append(
    c: &mut Cluster,
    target: usize,
    tp: &TopicPartition,
    corruption: u8,
    records_n: u8,
) -> Option<(u64, PeerMessage)> {
    let h = c.host(target);
    let slot = h.node.partitions.get(tp)?;
    let group = slot.group();
    let replica = slot.replica()?;
    let raft = replica.raft();
    let (last_index, last_term, term) = (raft.last_index(), raft.last_term(), raft.term());
    let me = target as u64;
    let from = replica
        .leader()
        .filter(|l| *l != me)
        .unwrap_or((me + 1) % 3);
    let values: Vec<Vec<u8>> = (0..records_n.max(1)).map(|i| vec![i; 4]).collect();
    let refs: Vec<&[u8]> = values.iter().map(|v| v.as_slice()).collect();
    let mut bytes = records(&refs, 0).to_vec();
    let span = u64::from(records_n.max(1));
    crate::batch::stamp(&mut bytes, last_index as i64, term as i32);
    let mut last = last_index + span;
    match corruption {
        0 => crate::batch::set_base_offset(&mut bytes, last_index as i64 + 5),
        1 => crate::batch::set_partition_leader_epoch(&mut bytes, term as i32 + 1),
        2 => {
            let at = bytes.len() - 1;
            bytes[at] ^= 0x40;
        }
        3 => last += 1,
        4 => bytes = b"garbage that is no batch".to_vec(),
        _ => {}
    }
    let entry = Entry {
        index: last_index + 1,
        last,
        term,
        kind: EntryKind::Normal,
        payload: Bytes::from(bytes),
    };
    let msg = Message {
        from,
        to: me,
        term,
        body: MessageBody::Append {
            prev_index: last_index,
            prev_term: last_term,
            entries: vec![entry],
            commit: 0,
            repair_seen: 0,
        },
    };
    Some((from, PeerMessage::Raft { group, msg }))
}

fn arb_poke() -> impl Strategy<Value = Poke> {
    prop_oneof![
        3 => arb_peer_message().prop_map(|(from, m)| Poke::Peer(from, m)),
        3 => (0u8..2, 0u8..6, 1u8..4).prop_map(|(partition, corruption, records)| Poke::ForgedAppend { partition, corruption, records }),
        3 => arb_request().prop_map(Poke::Client),
        1 => (1u16..500).prop_map(Poke::Advance),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Arbitrary peer messages (forged senders, wrong groups, appends whose payloads disagree
    /// with their entries, stale or future terms, bogus controller answers) and arbitrary client
    /// requests, fed into a node of a running three-node cluster: no input panics it, and every
    /// invariant holds after each step.
    #[test]
    fn no_peer_or_client_input_panics_a_node(pokes in proptest::collection::vec(arb_poke(), 1..40), seed in 0u64..1_000) {
        let mut c = Cluster::new(3, seed);
        c.wait_ready();
        c.create_topic("t", 2);
        let target = (seed % 3) as usize;
        for poke in pokes {
            match poke {
                Poke::Peer(from, message) => {
                    let now = c.now;
                    let h = c.host(target);
                    h.node.handle(now, Input::Peer { from, message }, &h.disk);
                    h.node.check_invariants();
                    c.settle();
                }
                Poke::ForgedAppend { partition, corruption, records } => {
                    let tp = TopicPartition::new("t", i32::from(partition));
                    if let Some((from, message)) = forged_append(&mut c, target, &tp, corruption, records) {
                        let now = c.now;
                        let h = c.host(target);
                        h.node.handle(now, Input::Peer { from, message }, &h.disk);
                        h.node.check_invariants();
                        c.settle();
                    }
                }
                Poke::Client(body) => {
                    c.request(target, body);
                }
                Poke::Advance(ms) => c.advance(u64::from(ms)),
            }
            for h in c.hosts.iter().flatten() {
                h.node.check_invariants();
                prop_assert!(h.stopped.is_none(), "a node stopped: {:?}", h.stopped);
            }
        }
    }
}

// ---- Decisions that moved from the shell into the node -----------------------------------------

fn init(producer_id: i64, producer_epoch: i16, transactional: bool) -> Request {
    Request::InitProducerId(InitProducerIdRequest {
        transactional_id: transactional.then(|| "tx".to_string()),
        producer_id,
        producer_epoch,
    })
}

fn producer_id(reply: Reply) -> ProducerIdReply {
    let Reply::InitProducerId(p) = reply else {
        panic!("not an InitProducerId reply: {reply:?}")
    };
    p
}

/// New producers get ids from the block the controller allocated to the node, one after the
/// other; a known id asking again gets its epoch bumped (KIP-360); an id the cluster never
/// handed out is refused; a transactional id is refused until transactions exist.
#[test]
fn producer_ids_come_from_blocks_and_known_ids_get_their_epoch_bumped() {
    let mut c = Cluster::new(1, 11);
    c.wait_ready();
    let first = producer_id(c.call(0, init(-1, -1, false)));
    assert_eq!((first.error, first.producer_epoch), (ErrorCode::None, 0));
    let second = producer_id(c.call(0, init(-1, -1, false)));
    assert_eq!(
        second.producer_id,
        first.producer_id + 1,
        "the next id of the block"
    );
    let bumped = producer_id(c.call(0, init(first.producer_id, 3, false)));
    assert_eq!(
        (bumped.error, bumped.producer_id, bumped.producer_epoch),
        (ErrorCode::None, first.producer_id, 4)
    );
    let unknown = producer_id(c.call(0, init(first.producer_id + 1_000_000, 0, false)));
    assert_eq!(unknown.error, ErrorCode::InvalidProducerEpoch);
    let tx = producer_id(c.call(0, init(-1, -1, true)));
    assert_eq!(tx.error, ErrorCode::TransactionalIdAuthorizationFailed);
}

/// A node that does not host a partition learns its leader from the leader's announcement, and a
/// stale announcement (an older term) does not override a newer one.
#[test]
fn leadership_announcements_keep_the_latest_term() {
    let mut c = Cluster::new(3, 12);
    c.wait_ready();
    let controller = c.controller();
    let Reply::CreateTopics(r) = c.call(
        controller,
        Request::CreateTopics(CreateTopicsRequest {
            topics: vec![NewTopic {
                name: "solo".into(),
                num_partitions: 1,
                replication_factor: 1,
                assignment: None,
                configs: vec![],
            }],
            validate_only: false,
            timeout_ms: 5_000,
        }),
    ) else {
        unreachable!()
    };
    assert_eq!(r[0].error, ErrorCode::None);
    let topic_id = r[0].topic_id;
    let mut leader = None;
    for _ in 0..300 {
        c.advance(20);
        leader = c.leader_of("solo", 0);
        if leader.is_some() {
            break;
        }
    }
    let leader = leader.expect("the single replica leads") as u64;
    let other = (0..3).find(|n| *n != leader).unwrap() as usize;
    assert!(
        !c.host(other)
            .node
            .partitions
            .contains_key(&TopicPartition::new("solo", 0)),
        "node {other} does not host the partition"
    );
    let term = c.host(other).node.cluster.leaders[&(topic_id, 0)].0;
    let stale_leader = (0..3).find(|n| *n != leader && *n != other as u64).unwrap();
    let now = c.now;
    let h = c.host(other);
    h.node.handle(
        now,
        Input::Peer {
            from: stale_leader,
            message: PeerMessage::Leaders(vec![Leadership {
                topic_id,
                partition: 0,
                term: term.saturating_sub(1),
                leader: stale_leader,
            }]),
        },
        &h.disk,
    );
    assert_eq!(
        h.node.cluster.leaders[&(topic_id, 0)],
        (term, leader),
        "the stale one is ignored"
    );
    h.node.handle(
        now,
        Input::Peer {
            from: stale_leader,
            message: PeerMessage::Leaders(vec![Leadership {
                topic_id,
                partition: 0,
                term: term + 1,
                leader: stale_leader,
            }]),
        },
        &h.disk,
    );
    assert_eq!(
        h.node.cluster.leaders[&(topic_id, 0)],
        (term + 1, stale_leader)
    );
}

/// DeleteGroups for groups of two `__consumer_offsets` partitions goes to both coordinators and
/// comes back as one answer; a group with members is refused with NON_EMPTY_GROUP.
#[test]
fn delete_groups_fans_out_over_coordinators_and_gathers_one_answer() {
    let mut c = Cluster::new(1, 13);
    c.wait_ready();
    c.create_topic("t", 1);
    // Two groups on different partitions of the 2-partition offsets topic.
    let a = "a".to_string();
    let b = (0..100)
        .map(|i| format!("g{i}"))
        .find(|g| crate::group::partition_for(g, 2) != crate::group::partition_for(&a, 2))
        .unwrap();
    for g in [&a, &b] {
        // FindCoordinator creates the offsets topic on first use.
        for attempt in 0.. {
            assert!(attempt < 200, "no coordinator for {g}");
            let Reply::FindCoordinator(found) = c.call(
                0,
                Request::FindCoordinator(FindCoordinatorRequest {
                    key_type: 0,
                    keys: vec![g.clone()],
                }),
            ) else {
                unreachable!()
            };
            if found[0].1.is_ok() {
                break;
            }
            c.advance(50);
        }
        for attempt in 0.. {
            assert!(attempt < 200, "the commit of {g} never succeeded");
            let Reply::OffsetCommit(r) = c.call(
                0,
                Request::OffsetCommit(CommitRequest {
                    group_id: g.clone(),
                    generation: -1,
                    member_id: String::new(),
                    instance_id: None,
                    partitions: vec![CommitPartition {
                        topic: "t".into(),
                        partition: 0,
                        offset: 1,
                        leader_epoch: -1,
                        metadata: None,
                    }],
                }),
            ) else {
                unreachable!()
            };
            match r[0].2 {
                ErrorCode::None => break,
                ErrorCode::CoordinatorNotAvailable
                | ErrorCode::CoordinatorLoadInProgress
                | ErrorCode::NotCoordinator => c.advance(50),
                other => panic!("commit: {other:?}"),
            }
        }
    }
    let Reply::DeleteGroups(mut results) = c.call(
        0,
        Request::DeleteGroups(vec![a.clone(), b.clone(), "unknown".into()]),
    ) else {
        unreachable!()
    };
    results.sort();
    let mut expected = vec![
        (a.clone(), ErrorCode::None),
        (b.clone(), ErrorCode::None),
        ("unknown".to_string(), ErrorCode::GroupIdNotFound),
    ];
    expected.sort();
    assert_eq!(results, expected);
    assert!(
        c.host(0).node.groups.check_gathers_empty(),
        "the gather is gone once answered"
    );
}

/// One heartbeat to the controller in flight at a time, given up at the next one's time: a
/// restarted node (a new incarnation, unregistered, so it heartbeats every tick) that cannot
/// reach the controller never has two waiting, serves no client, and registers once the link
/// heals.
#[test]
fn a_node_has_one_heartbeat_in_flight_and_registers_after_a_cut_heals() {
    let mut c = Cluster::new(3, 14);
    c.wait_ready();
    let controller = c.controller() as u64;
    let other = (0..3u64).find(|n| *n != controller).unwrap();
    c.cut.push((other, controller));
    c.crash(other as usize, CrashMode::Clean);
    let mut tried = 0;
    for _ in 0..300 {
        c.advance(10);
        let h = c.host(other as usize);
        let heartbeats = h
            .node
            .cluster
            .calls
            .values()
            .filter(|call| matches!(call.request, ControllerRequest::Heartbeat { .. }))
            .count();
        assert!(heartbeats <= 1, "{heartbeats} heartbeats in flight");
        tried += heartbeats;
        assert!(
            !h.ready,
            "a node the controller never heard from serves clients"
        );
    }
    assert!(tried > 0, "the restarted node tried to heartbeat");
    c.cut.clear();
    for _ in 0..500 {
        if c.host(other as usize).ready {
            return;
        }
        c.advance(10);
    }
    panic!("node {other} never registered after the heal");
}

/// The internal offsets topic is written only by coordinators; acks outside -1, 0, 1 are refused.
#[test]
fn produce_refuses_the_internal_topic_and_unknown_acks() {
    let mut c = Cluster::new(1, 15);
    c.wait_ready();
    c.create_topic("t", 1);
    let internal = produced(c.call(0, produce("__consumer_offsets", 0, -1, records(&[b"x"], 0))));
    assert_eq!(internal.error, ErrorCode::InvalidTopicException);
    let acks = produced(c.call(0, produce("t", 0, 2, records(&[b"x"], 0))));
    assert_eq!(acks.error, ErrorCode::InvalidRequiredAcks);
    let missing = produced(c.call(0, produce("t", 7, 1, records(&[b"x"], 0))));
    assert_eq!(missing.error, ErrorCode::UnknownTopicOrPartition);
}

#[test]
fn the_coordinator_maps_offsets_append_errors_as_kafka_does() {
    use super::groups::coordinator_error;
    assert_eq!(
        coordinator_error(ErrorCode::NotLeaderOrFollower),
        ErrorCode::NotCoordinator
    );
    assert_eq!(
        coordinator_error(ErrorCode::UnknownTopicOrPartition),
        ErrorCode::NotCoordinator
    );
    assert_eq!(
        coordinator_error(ErrorCode::MessageTooLarge),
        ErrorCode::InvalidCommitOffsetSize
    );
    assert_eq!(
        coordinator_error(ErrorCode::RequestTimedOut),
        ErrorCode::CoordinatorNotAvailable
    );
    assert_eq!(
        coordinator_error(ErrorCode::KafkaStorageError),
        ErrorCode::NotCoordinator
    );
    assert_eq!(
        coordinator_error(ErrorCode::CorruptMessage),
        ErrorCode::UnknownServerError
    );
}

// ---- Hostile client values -----------------------------------------------------------------

fn edge_i32() -> impl Strategy<Value = i32> {
    prop_oneof![Just(i32::MIN), Just(i32::MAX), Just(-1), Just(0), -3i32..5,]
}

fn edge_i64() -> impl Strategy<Value = i64> {
    prop_oneof![
        Just(i64::MIN),
        Just(i64::MAX),
        Just(-1),
        Just(-2),
        Just(-3),
        Just(-4),
        Just(-5),
        Just(0),
        0i64..30,
    ]
}

fn edge_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("t".to_string()),
        Just(String::new()),
        Just(crate::group::OFFSETS_TOPIC.to_string()),
        Just("a".repeat(300)),
        "[a-z._-]{0,5}",
    ]
}

/// Every request kind with values a broken or hostile client may send: extreme and negative
/// numbers, empty and oversized names, the internal topic.
fn arb_hostile_request() -> impl Strategy<Value = Request> {
    prop_oneof![
        (edge_name(), edge_i32(), any::<i16>(), edge_i32()).prop_map(|(t, p, acks, timeout_ms)| {
            Request::Produce(ProduceRequest {
                acks,
                timeout_ms,
                transactional: false,
                topics: vec![(TopicKey::Name(t), vec![(p, Some(records(&[b"x"], 0)))])],
            })
        }),
        (
            edge_name(),
            edge_i32(),
            edge_i64(),
            edge_i32(),
            edge_i32(),
            edge_i32(),
            edge_i32()
        )
            .prop_map(|(t, p, offset, wait, min, max, epoch)| {
                Request::Fetch(FetchRequest {
                    // A long poll may wait, but not for days in a test.
                    max_wait_ms: wait.clamp(i32::MIN, 2_000),
                    min_bytes: min,
                    max_bytes: Some(max),
                    topics: vec![(
                        TopicKey::Name(t),
                        vec![FetchQuery {
                            partition: p,
                            fetch_offset: offset,
                            partition_max_bytes: max,
                            current_leader_epoch: epoch,
                        }],
                    )],
                })
            }),
        (edge_name(), edge_i32(), edge_i64(), edge_i32(), edge_i32()).prop_map(
            |(t, p, ts, epoch, replica_id)| Request::ListOffsets(ListOffsetsRequest {
                replica_id,
                topics: vec![(
                    t,
                    vec![OffsetQuery {
                        partition: p,
                        timestamp: ts,
                        current_leader_epoch: epoch,
                    }],
                )],
            })
        ),
        (edge_name(), edge_i32(), edge_i32(), edge_i32()).prop_map(|(t, p, current, epoch)| {
            Request::OffsetForLeaderEpoch(vec![(
                t,
                vec![EpochQuery {
                    partition: p,
                    current_leader_epoch: current,
                    leader_epoch: epoch,
                }],
            )])
        }),
        (
            edge_name(),
            edge_i32(),
            any::<i16>(),
            proptest::option::of(proptest::collection::vec(
                (edge_i32(), proptest::collection::vec(edge_i32(), 0..4)),
                0..3
            )),
            edge_i32(),
            any::<bool>()
        )
            .prop_map(|(name, n, rf, assignment, timeout_ms, validate_only)| {
                Request::CreateTopics(CreateTopicsRequest {
                    topics: vec![NewTopic {
                        name,
                        num_partitions: n,
                        replication_factor: rf,
                        assignment,
                        configs: vec![("retention.ms".into(), "-7".into())],
                    }],
                    validate_only,
                    timeout_ms,
                })
            }),
        (edge_name(), edge_i32(), any::<[u8; 16]>(), any::<bool>()).prop_map(
            |(name, timeout_ms, id, by_id)| Request::DeleteTopics(DeleteTopicsRequest {
                topics: vec![if by_id {
                    TopicKey::Id(id)
                } else {
                    TopicKey::Name(name)
                }],
                timeout_ms,
            })
        ),
        (
            proptest::collection::vec(edge_name(), 0..3),
            edge_i32(),
            proptest::option::of(proptest::collection::vec(
                proptest::collection::vec(edge_i32(), 0..4),
                0..3
            )),
            edge_i32(),
            any::<bool>()
        )
            .prop_map(|(names, count, assignment, timeout_ms, validate_only)| {
                Request::CreatePartitions(CreatePartitionsRequest {
                    topics: names
                        .into_iter()
                        .map(|name| grow(&name, count, assignment.clone()))
                        .collect(),
                    validate_only,
                    timeout_ms,
                })
            }),
        (
            any::<i8>(),
            edge_name(),
            any::<i8>(),
            "[a-z.]{0,20}",
            proptest::option::of("[-0-9a-z]{0,6}"),
            any::<(bool, bool)>()
        )
            .prop_map(
                |(resource_type, name, operation, key, value, (validate_only, replace))| {
                    Request::AlterConfigs(AlterConfigsRequest {
                        resources: vec![AlterResource {
                            resource_type,
                            name,
                            changes: vec![ConfigChange {
                                name: key,
                                operation,
                                value,
                            }],
                        }],
                        validate_only,
                        replace,
                    })
                }
            ),
        (0..3u8, 0..4usize).prop_map(|(kind, n)| Request::Acls(match kind {
            0 => AclRequest::Describe,
            1 => AclRequest::Create(n),
            _ => AclRequest::Delete(n),
        })),
        (any::<i64>(), any::<i16>()).prop_map(|(producer_id, producer_epoch)| {
            Request::InitProducerId(InitProducerIdRequest {
                transactional_id: None,
                producer_id,
                producer_epoch,
            })
        }),
        (any::<i8>(), edge_name()).prop_map(|(key_type, g)| Request::FindCoordinator(
            FindCoordinatorRequest {
                key_type,
                keys: vec![g]
            }
        )),
        ("[a-z]{0,2}", "[a-z-]{0,3}", edge_i32(), edge_i32()).prop_map(
            |(group_id, member_id, session, rebalance)| Request::JoinGroup(JoinRequest {
                group_id,
                member_id,
                session_timeout_ms: session,
                rebalance_timeout_ms: rebalance,
                protocol_type: "consumer".into(),
                protocols: vec![("range".into(), vec![])],
                require_known_member_id: false,
                ..JoinRequest::default()
            })
        ),
        ("[a-z]{0,2}", "[a-z-]{0,3}", edge_i32()).prop_map(|(group_id, member_id, generation)| {
            Request::SyncGroup(crate::group::SyncRequest {
                group_id,
                member_id: member_id.clone(),
                generation,
                assignments: vec![(member_id, vec![1])],
                ..crate::group::SyncRequest::default()
            })
        }),
        ("[a-z]{0,2}", "[a-z-]{0,3}", edge_i32()).prop_map(|(group_id, member_id, generation)| {
            Request::Heartbeat(HeartbeatRequest {
                group_id,
                member_id,
                instance_id: None,
                generation,
            })
        }),
        ("[a-z]{0,2}", "[a-z-]{0,3}").prop_map(|(group_id, member_id)| Request::LeaveGroup(
            LeaveRequest {
                group_id,
                members: vec![(member_id, None)],
            }
        )),
        ("[a-z]{0,2}", edge_i32(), edge_i64(), edge_name()).prop_map(
            |(group_id, generation, offset, topic)| Request::OffsetCommit(CommitRequest {
                group_id,
                generation,
                member_id: String::new(),
                instance_id: None,
                partitions: vec![CommitPartition {
                    topic,
                    partition: generation,
                    offset,
                    leader_epoch: generation,
                    metadata: Some("m".repeat(10)),
                }],
            })
        ),
        ("[a-z]{0,2}", edge_name(), edge_i32())
            .prop_map(|(g, t, p)| Request::OffsetFetch(vec![(g, Some(vec![(t, p)]))])),
        ("[a-z]{0,2}", edge_name(), edge_i32()).prop_map(|(group_id, t, p)| {
            Request::OffsetDelete(OffsetDeleteRequest {
                group_id,
                partitions: vec![(t, p)],
            })
        }),
        proptest::collection::vec("[a-z]{0,2}", 0..4).prop_map(Request::DeleteGroups),
        proptest::collection::vec("[A-Za-z]{0,6}", 0..3).prop_map(Request::ListGroups),
        (edge_name(), edge_i32(), edge_i64(), edge_i32()).prop_map(|(t, p, offset, timeout_ms)| {
            Request::DeleteRecords(DeleteRecordsRequest {
                topics: vec![(t, vec![(p, offset)])],
                // The answer may wait for a commit, but not for days in a test.
                timeout_ms: timeout_ms.clamp(i32::MIN, 2_000),
            })
        }),
        (any::<i8>(), edge_name()).prop_map(|(resource_type, name)| Request::DescribeConfigs(
            vec![ConfigResource {
                resource_type,
                name,
                keys: Some(vec![]),
            }]
        )),
    ]
}

#[derive(Clone, Debug)]
enum HostilePoke {
    Client(Request),
    Advance(u16),
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// Hostile values in every kind of client request, sent to any node of a running
    /// three-node cluster (groups coordinated there once FindCoordinator created their topic):
    /// no node panics or stops, every invariant holds, and no request is answered twice (the
    /// harness checks that).
    #[test]
    fn no_hostile_client_request_panics_a_node(
        pokes in proptest::collection::vec(
            prop_oneof![
                6 => (arb_hostile_request()).prop_map(HostilePoke::Client),
                1 => (1u16..800).prop_map(HostilePoke::Advance),
            ],
            1..40,
        ),
        seed in 0u64..1_000,
    ) {
        let mut c = Cluster::new(3, seed);
        c.wait_ready();
        c.create_topic("t", 2);
        let mut at = (seed % 3) as usize;
        for poke in pokes {
            match poke {
                HostilePoke::Client(body) => {
                    c.request(at, body);
                    at = (at + 1) % 3;
                }
                HostilePoke::Advance(ms) => c.advance(u64::from(ms)),
            }
            for h in c.hosts.iter().flatten() {
                h.node.check_invariants();
                prop_assert!(h.stopped.is_none(), "a node stopped: {:?}", h.stopped);
            }
        }
    }
}

// ---- Kafka offsets: Raft's own entries take none --------------------------------------------

fn list_offset(c: &mut Cluster, at: usize, topic: &str, timestamp: i64) -> i64 {
    let reply = c.call(
        at,
        Request::ListOffsets(ListOffsetsRequest {
            replica_id: -1,
            topics: vec![(
                topic.into(),
                vec![OffsetQuery {
                    partition: 0,
                    timestamp,
                    current_leader_epoch: NO_LEADER_EPOCH,
                }],
            )],
        }),
    );
    let Reply::ListOffsets(mut topics) = reply else {
        panic!("not a ListOffsets reply: {reply:?}")
    };
    let listed = topics.remove(0).1.remove(0);
    assert_eq!(listed.error, ErrorCode::None, "{listed:?}");
    listed.offset
}

/// The Kafka offset of every record a consumer reads from offset 0, and the batches' control
/// flags (a consumer must never see one of Raft's own entries).
fn kafka_offsets(c: &mut Cluster, at: usize, topic: &str) -> Vec<i64> {
    let mut offset = 0;
    let mut out = Vec::new();
    for _ in 0..1_000 {
        let f = fetched(c.call(at, fetch(topic, 0, offset)));
        assert_eq!(f.error, ErrorCode::None, "{f:?}");
        if f.records.is_empty() {
            assert!(offset >= f.high_watermark, "an empty read below the end");
            return out;
        }
        let batches = crate::batch::split_batches(&f.records).unwrap();
        for (h, range) in &batches {
            assert!(!h.is_control(), "a control batch reached a consumer: {h:?}");
            let records = crate::batch::Records::new(&f.records[range.clone()]).unwrap();
            for (i, _) in records.enumerate() {
                out.push(h.base_offset + i as i64);
            }
            offset = h.next_offset();
        }
    }
    panic!("never reached the high watermark");
}

fn new_leader_after_crash(c: &mut Cluster, leader: usize) -> usize {
    c.crash(leader, CrashMode::Clean);
    for _ in 0..400 {
        c.advance(20);
        if let Some(l) = c.leader_of("t", 0).filter(|l| *l != leader) {
            return l;
        }
    }
    panic!("no new leader after the crash of {leader}");
}

/// Kafka's model: records take offsets 0, 1, 2, … and a leader change writes nothing at a Kafka
/// offset. Raft's term-start entries used to take one each (the first record was at 1, and
/// every failover left a hole), and a group that had read everything showed lag 1 after a
/// leader change with no new data.
#[test]
fn kafka_offsets_start_at_zero_and_leader_changes_take_none() {
    let mut c = Cluster::new(3, 7);
    c.wait_ready();
    c.create_topic("t", 1);
    let mut leader = c.leader_of("t", 0).expect("a leader");
    let wall = c.now.wall_ms as i64;
    let first = produced(c.call(leader, produce("t", 0, -1, records(&[b"a", b"b"], wall))));
    assert_eq!((first.error, first.base_offset), (ErrorCode::None, 0));
    assert_eq!(list_offset(&mut c, leader, "t", EARLIEST_TIMESTAMP), 0);
    assert_eq!(list_offset(&mut c, leader, "t", LATEST_TIMESTAMP), 2);
    // Two leader changes with no new data: the end stays at 2 (a consumer that read everything
    // has lag 0).
    for _ in 0..2 {
        leader = new_leader_after_crash(&mut c, leader);
        // The new leader commits its term-start entry before it answers at the new end.
        for _ in 0..100 {
            if list_offset(&mut c, leader, "t", LATEST_TIMESTAMP) == 2 {
                break;
            }
            c.advance(20);
        }
        assert_eq!(list_offset(&mut c, leader, "t", LATEST_TIMESTAMP), 2);
        let f = fetched(c.call(leader, fetch("t", 0, 2)));
        assert_eq!((f.error, f.high_watermark), (ErrorCode::None, 2), "{f:?}");
        assert!(f.records.is_empty());
    }
    let next = produced(c.call(leader, produce("t", 0, -1, records(&[b"c"], wall))));
    assert_eq!((next.error, next.base_offset), (ErrorCode::None, 2));
    leader = new_leader_after_crash(&mut c, leader);
    let last = produced(c.call(leader, produce("t", 0, -1, records(&[b"d", b"e"], wall))));
    assert_eq!((last.error, last.base_offset), (ErrorCode::None, 3));
    assert_eq!(kafka_offsets(&mut c, leader, "t"), vec![0, 1, 2, 3, 4]);
    assert_eq!(
        read_all(&mut c, leader, "t", 0),
        vec![
            b"a".to_vec(),
            b"b".to_vec(),
            b"c".to_vec(),
            b"d".to_vec(),
            b"e".to_vec()
        ]
    );
    // Every replica translates the same way (followers serve ListOffsets to the debug
    // consumer, and any of them may lead next).
    for h in c.hosts.iter().flatten() {
        h.node.check_invariants();
    }
    // A fetch past the end is out of range, one at the end is empty.
    let f = fetched(c.call(leader, fetch("t", 0, 6)));
    assert_eq!(f.error, ErrorCode::OffsetOutOfRange);
    let f = fetched(c.call(leader, fetch("t", 0, 5)));
    assert_eq!((f.error, f.high_watermark), (ErrorCode::None, 5));
    // OffsetForLeaderEpoch speaks Kafka offsets: the epoch of "c" ends where "d" starts.
    let epoch_of_d = leader_epoch_of(&mut c, leader, 3);
    let reply = c.call(
        leader,
        Request::OffsetForLeaderEpoch(vec![(
            "t".into(),
            vec![EpochQuery {
                partition: 0,
                current_leader_epoch: NO_LEADER_EPOCH,
                leader_epoch: epoch_of_d - 1,
            }],
        )]),
    );
    let Reply::OffsetForLeaderEpoch(mut topics) = reply else {
        panic!("not an OffsetForLeaderEpoch reply")
    };
    let end = topics.remove(0).1.remove(0);
    assert_eq!((end.error, end.end_offset), (ErrorCode::None, 3), "{end:?}");
}

/// The partition leader epoch of the batch holding Kafka offset `offset`.
fn leader_epoch_of(c: &mut Cluster, at: usize, offset: i64) -> i32 {
    let f = fetched(c.call(at, fetch("t", 0, offset)));
    let (h, _) = crate::batch::split_batches(&f.records)
        .unwrap_or_else(|e| panic!("{e:?}: {f:?}"))
        .remove(0);
    h.partition_leader_epoch
}

// ---- AlterConfigs (legacy), ignored configs, ACLs --------------------------------------------

fn alter(
    c: &mut Cluster,
    at: usize,
    name: &str,
    set: &[(&str, &str)],
    replace: bool,
) -> AlteredResource {
    let Reply::AlterConfigs(mut r) = c.call(
        at,
        Request::AlterConfigs(AlterConfigsRequest {
            resources: vec![AlterResource {
                resource_type: RESOURCE_TOPIC,
                name: name.into(),
                changes: set
                    .iter()
                    .map(|(k, v)| ConfigChange {
                        name: (*k).into(),
                        operation: CONFIG_SET,
                        value: Some((*v).into()),
                    })
                    .collect(),
            }],
            validate_only: false,
            replace,
        }),
    ) else {
        unreachable!()
    };
    r.remove(0)
}

/// The topic's overrides, as DescribeConfigs shows them.
fn overrides(c: &mut Cluster, at: usize, name: &str) -> Vec<(String, String)> {
    let Reply::DescribeConfigs(r) = c.call(
        at,
        Request::DescribeConfigs(vec![ConfigResource {
            resource_type: RESOURCE_TOPIC,
            name: name.into(),
            keys: None,
        }]),
    ) else {
        unreachable!()
    };
    assert_eq!(r[0].error, ErrorCode::None, "{r:?}");
    r[0].configs
        .iter()
        .filter(|e| e.source == SOURCE_TOPIC)
        .map(|e| (e.name.clone(), e.value.clone()))
        .collect()
}

/// The legacy AlterConfigs replaces a topic's overrides (what it does not name goes back to the
/// default); IncrementalAlterConfigs only changes what it names. `message.format.version`,
/// which Kafka 4 removed, is accepted and dropped by both.
#[test]
fn legacy_alter_configs_replaces_every_override_and_kafka_4_ignored_configs_are_dropped() {
    let mut c = Cluster::new(1, 5);
    c.wait_ready();
    c.create_topic("t", 1);
    let r = alter(
        &mut c,
        0,
        "t",
        &[("retention.ms", "1000"), ("segment.ms", "5000")],
        false,
    );
    assert_eq!(r.error, ErrorCode::None, "{r:?}");
    let r = alter(
        &mut c,
        0,
        "t",
        &[
            ("flush.ms", "12345678"),
            ("message.format.version", "0.10.0.0"),
        ],
        false,
    );
    assert_eq!(r.error, ErrorCode::None, "{r:?}");
    c.settle();
    assert_eq!(
        overrides(&mut c, 0, "t"),
        vec![
            ("flush.ms".to_string(), "12345678".to_string()),
            ("retention.ms".to_string(), "1000".to_string()),
            ("segment.ms".to_string(), "5000".to_string()),
        ],
        "incremental: the earlier overrides stay, message.format.version is not stored"
    );
    let r = alter(
        &mut c,
        0,
        "t",
        &[
            ("retention.bytes", "4096"),
            ("message.format.version", "0.10.0.0"),
        ],
        true,
    );
    assert_eq!(r.error, ErrorCode::None, "{r:?}");
    c.settle();
    assert_eq!(
        overrides(&mut c, 0, "t"),
        vec![("retention.bytes".to_string(), "4096".to_string())],
        "legacy: every override the request does not name is removed"
    );
    let r = alter(&mut c, 0, "t", &[("flush.ms", "-1")], true);
    assert_eq!(r.error, ErrorCode::InvalidConfig, "{r:?}");
    let r = alter(&mut c, 0, "t", &[("flush.messages", "1")], true);
    assert_eq!(r.error, ErrorCode::InvalidConfig, "{r:?}");
    let r = alter(&mut c, 0, "nope", &[("retention.ms", "1")], true);
    assert_eq!(r.error, ErrorCode::UnknownTopicOrPartition, "{r:?}");
    c.settle();
    assert_eq!(
        overrides(&mut c, 0, "t"),
        vec![("retention.bytes".to_string(), "4096".to_string())],
        "a refused replacement changes nothing"
    );
}

/// Like Kafka without an authorizer: every ACL request answers SECURITY_DISABLED, one entry
/// per creation or filter.
#[test]
fn acl_requests_answer_security_disabled() {
    let mut c = Cluster::new(1, 6);
    c.wait_ready();
    for request in [
        AclRequest::Describe,
        AclRequest::Create(2),
        AclRequest::Delete(3),
    ] {
        let Reply::Acls(r) = c.call(0, Request::Acls(request.clone())) else {
            unreachable!()
        };
        assert_eq!(r.request, request);
        assert_eq!(r.error, ErrorCode::SecurityDisabled);
        assert!(r.message.contains("Authorizer"), "{r:?}");
    }
}

/// Java's admin client sends (Incremental)AlterConfigs to any broker and Kafka's brokers
/// forward them to the controller; librdkafka sends an AlterConfigs naming a broker resource to
/// that broker. A node that is not the controller forwards each topic resource, answers with the
/// controller's verdict (its message too), and the change is applied cluster-wide.
#[test]
fn alter_configs_at_a_node_that_is_not_the_controller_is_forwarded() {
    let mut c = Cluster::new(3, 45);
    c.wait_ready();
    c.create_topic("t", 1);
    let follower = (c.controller() + 1) % 3;
    let r = alter(
        &mut c,
        follower,
        "t",
        &[("retention.ms", "1000"), ("segment.ms", "5000")],
        false,
    );
    assert_eq!(r.error, ErrorCode::None, "{r:?}");
    c.settle();
    for at in 0..3 {
        assert_eq!(
            overrides(&mut c, at, "t"),
            vec![
                ("retention.ms".to_string(), "1000".to_string()),
                ("segment.ms".to_string(), "5000".to_string()),
            ],
            "node {at}"
        );
    }
    // The legacy API's replacement is decided on the controller's image.
    let r = alter(&mut c, follower, "t", &[("retention.bytes", "4096")], true);
    assert_eq!(r.error, ErrorCode::None, "{r:?}");
    c.settle();
    assert_eq!(
        overrides(&mut c, follower, "t"),
        vec![("retention.bytes".to_string(), "4096".to_string())]
    );
    // Refusals carry the controller's code and message.
    let r = alter(&mut c, follower, "t", &[("retention.ms", "soon")], false);
    assert_eq!(r.error, ErrorCode::InvalidConfig, "{r:?}");
    assert!(
        r.message.as_deref().unwrap_or("").contains("retention.ms"),
        "{r:?}"
    );
    let r = alter(&mut c, follower, "nope", &[("retention.ms", "1")], false);
    assert_eq!(r.error, ErrorCode::UnknownTopicOrPartition, "{r:?}");
    // validate_only is decided by the controller too, and writes nothing.
    let Reply::AlterConfigs(r) = c.call(
        follower,
        Request::AlterConfigs(AlterConfigsRequest {
            resources: vec![AlterResource {
                resource_type: RESOURCE_TOPIC,
                name: "t".into(),
                changes: vec![ConfigChange {
                    name: "segment.ms".into(),
                    operation: CONFIG_SET,
                    value: Some("7000".into()),
                }],
            }],
            validate_only: true,
            replace: false,
        }),
    ) else {
        unreachable!()
    };
    assert_eq!(r[0].error, ErrorCode::None, "{r:?}");
    c.settle();
    assert_eq!(
        overrides(&mut c, follower, "t"),
        vec![("retention.bytes".to_string(), "4096".to_string())]
    );
}

// ---- DeleteRecords ----------------------------------------------------------------------------

fn delete_records(c: &mut Cluster, at: usize, topic: &str, offset: i64) -> DeletedRecords {
    let reply = c.call(
        at,
        Request::DeleteRecords(DeleteRecordsRequest {
            topics: vec![(topic.into(), vec![(0, offset)])],
            timeout_ms: 5_000,
        }),
    );
    let Reply::DeleteRecords(mut topics) = reply else {
        panic!("not a DeleteRecords reply: {reply:?}")
    };
    topics.remove(0).1.remove(0)
}

/// Kafka's DeleteRecords: the low watermark moves on the leader and every replica once the
/// change commits; ListOffsets EARLIEST, Fetch's log start and a fetch below it agree; the
/// change takes no Kafka offset; and a leader elected afterwards serves the same low
/// watermark (the change is in the log every replica holds, not in the old leader's memory).
#[test]
fn delete_records_moves_the_low_watermark_and_a_new_leader_keeps_it() {
    let mut c = Cluster::new(3, 11);
    c.wait_ready();
    c.create_topic("t", 1);
    let leader = c.leader_of("t", 0).expect("a leader");
    let wall = c.now.wall_ms as i64;
    for i in 0..5u8 {
        let p = produced(c.call(leader, produce("t", 0, -1, records(&[&[i], &[i]], wall))));
        assert_eq!(
            (p.error, p.base_offset),
            (ErrorCode::None, i64::from(i) * 2)
        );
    }
    let follower = (leader + 1) % 3;
    let refused = delete_records(&mut c, follower, "t", 3);
    assert_eq!(refused.error, ErrorCode::NotLeaderOrFollower, "{refused:?}");
    for bad in [11, -2, -1001] {
        let refused = delete_records(&mut c, leader, "t", bad);
        assert_eq!(
            refused.error,
            ErrorCode::OffsetOutOfRange,
            "{bad}: {refused:?}"
        );
        assert_eq!(refused.low_watermark, -1);
    }
    let unknown = delete_records(&mut c, leader, "nope", 0);
    assert_eq!(unknown.error, ErrorCode::UnknownTopicOrPartition);
    let internal = delete_records(&mut c, leader, "__consumer_offsets", 0);
    assert_eq!(internal.error, ErrorCode::InvalidTopicException);

    let deleted = delete_records(&mut c, leader, "t", 3);
    assert_eq!((deleted.error, deleted.low_watermark), (ErrorCode::None, 3));
    assert_eq!(list_offset(&mut c, leader, "t", EARLIEST_TIMESTAMP), 3);
    assert_eq!(list_offset(&mut c, leader, "t", LATEST_TIMESTAMP), 10);
    let below = fetched(c.call(leader, fetch("t", 0, 2)));
    assert_eq!(below.error, ErrorCode::OffsetOutOfRange, "{below:?}");
    let at = fetched(c.call(leader, fetch("t", 0, 3)));
    assert_eq!(
        (at.error, at.log_start_offset),
        (ErrorCode::None, 3),
        "{at:?}"
    );
    // A lower offset does not move it back, and is answered with where it is.
    let lower = delete_records(&mut c, leader, "t", 1);
    assert_eq!((lower.error, lower.low_watermark), (ErrorCode::None, 3));
    // The log-start entry took no Kafka offset.
    let next = produced(c.call(leader, produce("t", 0, -1, records(&[b"x"], wall))));
    assert_eq!(
        (next.error, next.base_offset, next.log_start_offset),
        (ErrorCode::None, 10, 3)
    );
    // -1 is the high watermark.
    let all = delete_records(&mut c, leader, "t", -1);
    assert_eq!((all.error, all.low_watermark), (ErrorCode::None, 11));
    c.advance(200);
    for h in c.hosts.iter().flatten() {
        let replica = h.node.partitions[&TopicPartition::new("t", 0)]
            .replica()
            .expect("open");
        assert_eq!(replica.log().kafka_log_start_offset(), 11, "every replica");
    }

    let new = new_leader_after_crash(&mut c, leader);
    for _ in 0..100 {
        if list_offset(&mut c, new, "t", LATEST_TIMESTAMP) == 11 {
            break;
        }
        c.advance(20);
    }
    assert_eq!(list_offset(&mut c, new, "t", EARLIEST_TIMESTAMP), 11);
    let f = fetched(c.call(new, fetch("t", 0, 10)));
    assert_eq!(f.error, ErrorCode::OffsetOutOfRange, "{f:?}");
    let f = fetched(c.call(new, fetch("t", 0, 11)));
    assert_eq!(
        (f.error, f.log_start_offset, f.high_watermark),
        (ErrorCode::None, 11, 11)
    );
    // The crashed leader came back from its disk with the same low watermark.
    c.advance(500);
    let back = c.hosts[leader].as_ref().expect("restarted");
    let replica = back.node.partitions[&TopicPartition::new("t", 0)]
        .replica()
        .expect("open");
    assert_eq!(replica.log().kafka_log_start_offset(), 11);
}

/// Kafka's CreateTopics answers with the new partitions' leaders already in the metadata; a
/// client that asks the same broker for metadata next (librdkafka's admin client before
/// DeleteRecords, say) must find a leader for every partition, also those this broker does not
/// host.
#[test]
fn create_topics_answers_once_every_new_partition_has_a_known_leader() {
    let mut c = Cluster::new(3, 47);
    c.wait_ready();
    let controller = c.controller();
    for (name, replication_factor) in [("one", 1), ("three", 3)] {
        let Reply::CreateTopics(r) = c.call(
            controller,
            Request::CreateTopics(CreateTopicsRequest {
                topics: vec![NewTopic {
                    name: name.into(),
                    num_partitions: 9,
                    replication_factor,
                    assignment: None,
                    configs: Vec::new(),
                }],
                validate_only: false,
                timeout_ms: 5_000,
            }),
        ) else {
            unreachable!()
        };
        assert_eq!(r[0].error, ErrorCode::None, "{r:?}");
        let Reply::Metadata(m) = c.call(
            controller,
            Request::Metadata(MetadataRequest {
                topics: Some(vec![TopicKey::Name(name.into())]),
                allow_auto_create: false,
            }),
        ) else {
            unreachable!()
        };
        let leaders: Vec<i32> = m.topics[0].partitions.iter().map(|p| p.leader).collect();
        assert_eq!(leaders.len(), 9, "{m:?}");
        assert!(
            leaders.iter().all(|l| *l >= 0),
            "{name}: partitions without a leader right after CreateTopics: {leaders:?}"
        );
    }
}

/// One AlterConfigs with thousands of resources at a node that is not the controller must not
/// fill the node's controller calls: the excess is answered REQUEST_TIMED_OUT, and the node keeps
/// heartbeating (it is not fenced, it keeps serving).
#[test]
fn a_huge_forwarded_alter_configs_does_not_starve_the_heartbeats() {
    let mut c = Cluster::new(3, 48);
    c.wait_ready();
    c.create_topic("t", 1);
    let follower = (c.controller() + 1) % 3;
    let resources: Vec<AlterResource> = (0..3_000)
        .map(|i| AlterResource {
            resource_type: RESOURCE_TOPIC,
            name: format!("missing-{i}"),
            changes: vec![ConfigChange {
                name: "retention.ms".into(),
                operation: CONFIG_SET,
                value: Some("1000".into()),
            }],
        })
        .collect();
    let Reply::AlterConfigs(r) = c.call(
        follower,
        Request::AlterConfigs(AlterConfigsRequest {
            resources,
            validate_only: false,
            replace: false,
        }),
    ) else {
        unreachable!()
    };
    assert_eq!(r.len(), 3_000);
    let timed_out = r
        .iter()
        .filter(|a| a.error == ErrorCode::RequestTimedOut)
        .count();
    let unknown = r
        .iter()
        .filter(|a| a.error == ErrorCode::UnknownTopicOrPartition)
        .count();
    assert_eq!(timed_out + unknown, 3_000, "{:?}", &r[..3]);
    // All resources are forwarded in one step, so at most the budget of forwarded calls (256
    // of the 1,024 controller calls) reaches the controller; heartbeats keep the rest.
    assert!(unknown <= 256, "{unknown} forwarded at once");
    // Sessions are a few seconds: the follower must still be registered and serving after.
    c.advance(10_000);
    let r = alter(&mut c, follower, "t", &[("retention.ms", "2000")], false);
    assert_eq!(r.error, ErrorCode::None, "{r:?}");
    assert!(c.host(follower).ready);
}

/// After a process kill (not a power loss) the page cache still holds writes that were never
/// synced, and recovery reads them like the rest. A Raft replica counts its recovered log as
/// persisted from the start (it votes and acknowledges on it), so opening a log syncs what
/// recovery read before the replica exists. An open that fails on an I/O error is retried.
#[test]
fn opening_a_log_makes_the_recovered_tail_durable_and_a_failed_open_is_retryable() {
    use crate::log::LogConfig;
    use crate::storage::{Storage, StorageFile};
    use crate::testing::Faults;
    let storage = MemStorage::new();
    let dir = std::path::PathBuf::from("t-0");
    let open = |disk: &mut Disk<MemStorage>, log: LogId| {
        let (mut done, mut jobs) = (Vec::new(), Vec::new());
        disk.execute(
            StorageOp::Open {
                log,
                dir: dir.clone(),
                config: LogConfig::default(),
                cut: Vec::new(),
                topic_id: None,
                rescan: false,
            },
            &mut done,
            &mut jobs,
        );
        let job = jobs.pop().expect("an open job");
        disk.finish(job.run(), &mut done, &mut jobs);
        match done.pop() {
            Some(StorageDone::Opened { result, .. }) => result.map(|o| o.log.log_end_offset()),
            other => panic!("{other:?}"),
        }
    };
    let mut disk = Disk::new(storage.clone());
    assert_eq!(open(&mut disk, LogId(1)), Ok(0));
    // A batch written by the killed process, never synced: it is in the page cache only.
    let segment = dir.join(crate::log::log_file_name(0));
    let bytes = crate::log::testkit::batch(3, 10, 1_000, None);
    storage
        .open(&segment, false)
        .unwrap()
        .append(&bytes)
        .unwrap();
    assert!(storage.unsynced_bytes() > 0);
    // The next fsync fails: the open says it may be tried again.
    storage.inject(Faults {
        fail_next_sync: true,
        ..Faults::default()
    });
    let mut disk = Disk::new(storage.clone());
    let failed = open(&mut disk, LogId(2)).unwrap_err();
    assert!(failed.retryable, "{failed}");
    assert!(
        failed.message.contains("t-0"),
        "names the directory: {failed}"
    );
    // The failed fsync dropped the dirty pages (fsyncgate): reopened, the log is what the disk
    // holds, and all of it is durable.
    let mut disk = Disk::new(storage.clone());
    assert_eq!(open(&mut disk, LogId(3)), Ok(0));
    storage
        .open(&segment, false)
        .unwrap()
        .append(&bytes)
        .unwrap();
    let mut disk = Disk::new(storage.clone());
    assert_eq!(open(&mut disk, LogId(4)), Ok(3));
    assert_eq!(
        storage.unsynced_bytes(),
        0,
        "the recovered tail was not synced"
    );
}

/// Review finding: `disk::open` carries out a failed predecessor's cut through `LogStore::open`,
/// whose recovery applies its own repairs with a no-op `on_damage`: damage it finds in the
/// synced tail is cut before `hard_state::load` and `open_bounded` run, so the reopened replica
/// is not in repair mode although it lost synced (maybe acknowledged) batches. A failing disk
/// gives exactly this pair: a write or fsync error (the failure cut) and damaged data.
#[test]
fn review_damage_found_while_carrying_out_a_failure_cut_puts_the_replica_in_repair_mode() {
    use crate::log::{LogConfig, LogOp};
    use crate::storage::{Storage, StorageFile};
    let dir = std::path::PathBuf::from("t-0");
    let open = |storage: &MemStorage, log: LogId, cut: Vec<LogOp>| {
        let mut disk = Disk::new(storage.clone());
        let (mut done, mut jobs) = (Vec::new(), Vec::new());
        disk.execute(
            StorageOp::Open {
                log,
                dir: dir.clone(),
                config: LogConfig::default(),
                cut,
                topic_id: None,
                rescan: false,
            },
            &mut done,
            &mut jobs,
        );
        let job = jobs.pop().expect("an open job");
        disk.finish(job.run(), &mut done, &mut jobs);
        match done.pop() {
            Some(StorageDone::Opened { result, .. }) => {
                let opened = result.expect("opened");
                (opened.log.log_end_offset(), opened.hard_state.repair)
            }
            other => panic!("{other:?}"),
        }
    };
    // Three synced batches (offsets 0..9), a bit flipped inside the second one.
    let damaged_disk = || {
        let storage = MemStorage::new();
        assert_eq!(open(&storage, LogId(1), Vec::new()), (0, None));
        let segment = dir.join(crate::log::log_file_name(0));
        let file = storage.open(&segment, false).unwrap();
        let mut second_end = 0;
        for base in [0i64, 3, 6] {
            let mut bytes = crate::log::testkit::batch(3, 10, 1_000, None);
            crate::batch::set_base_offset(&mut bytes, base);
            file.append(&bytes).unwrap();
            if base == 3 {
                second_end = file.len().unwrap();
            }
        }
        file.sync().unwrap();
        assert!(storage.flip_bit(&segment, (second_end - 2) * 8));
        (storage, file.len().unwrap())
    };
    // Control: a plain open finds the damage and stores the repair bound.
    let (storage, _) = damaged_disk();
    let (end, repair) = open(&storage, LogId(2), Vec::new());
    assert_eq!(end, 3);
    assert!(
        repair.is_some(),
        "a plain open puts the replica in repair mode"
    );
    // The same disk reopened after a storage failure, with its (here harmless) failure cut.
    let (storage, len) = damaged_disk();
    let cut = vec![LogOp::TruncateSegment { segment: 0, len }];
    let (end, repair) = open(&storage, LogId(2), cut);
    assert_eq!(end, 3, "the damaged batch and the one after it are gone");
    assert!(
        repair.is_some(),
        "synced batches 3..9 were cut by the failure cut's recovery, without repair mode"
    );
}

/// Jepsen finding (`scripts/jepsen --nemesis bit-flip --seed 2`): a bit flipped in a sealed
/// segment below a replica's recovery point, which recovery trusts unread, was never served but
/// never repaired either: the leader could not read the batch for a lagging follower, which
/// waited for it forever, and clients got KAFKA_STORAGE_ERROR. Now the first read that meets the
/// damage reopens the replica with a rescan: recovery cuts the log at the damaged batch, the
/// replica goes into repair mode, and the leader (another replica, since this one led) brings
/// it back. Every replica then holds every acknowledged record again.
#[test]
fn damage_below_the_recovery_point_found_by_a_client_read_is_cut_and_repaired_from_the_peers() {
    damaged_leader_is_repaired(false);
}

/// The same damage met by Raft: the leader reads the damaged batch for a follower that lagged
/// behind it (the jepsen run's case).
#[test]
fn damage_below_the_recovery_point_found_by_a_replication_read_is_cut_and_repaired() {
    damaged_leader_is_repaired(true);
}

fn damaged_leader_is_repaired(follower_lags: bool) {
    let mut c = Cluster::with(3, 11, |config| {
        config.topic_defaults.log.segment_bytes_max = 1024;
    });
    c.wait_ready();
    c.create_topic("t", 1);
    let leader = c.leader_of("t", 0).expect("a leader");
    let lagging = (leader + 1) % 3;
    if follower_lags {
        c.cut.push((leader as u64, lagging as u64));
        c.cut.push((lagging as u64, leader as u64));
    }
    // A lagging follower's entries must come from the disk, not the leader's entry cache
    // (RAFT_ENTRY_CACHE_BYTES_MAX_DEFAULT, 256 KiB): 30 values of 12 KB overflow it.
    let want = produce_values(&mut c, leader, 30, if follower_lags { 12_000 } else { 80 });
    c.advance(500);
    let tp = TopicPartition::new("t", 0);
    flip_below_recovery_point(&c, leader, &tp, b"value 000", in_record);
    if follower_lags {
        c.cut.clear();
    } else {
        let first = fetched(c.call(leader, fetch("t", 0, 0)));
        assert_eq!(
            first.error,
            ErrorCode::KafkaStorageError,
            "the damaged batch is never served"
        );
    }
    let mut healed = false;
    for _ in 0..1_000 {
        c.advance(20);
        let Some(now_leader) = c.leader_of("t", 0) else {
            continue;
        };
        let all_hold_everything = (0..3).all(|i| {
            let h = c.host(i);
            h.node
                .partitions
                .get(&tp)
                .and_then(|slot| slot.replica())
                .is_some_and(|r| {
                    !r.raft().is_repairing()
                        && r.log().kafka_high_watermark() >= want.len() as u64
                        && r.log().kafka_log_end_offset() >= want.len() as u64
                })
        });
        // Checked on the replicas first: a client's fetch would find the damage itself.
        if all_hold_everything
            && fetched(c.call(now_leader, fetch("t", 0, 0))).error == ErrorCode::None
            && read_all(&mut c, now_leader, "t", 0) == want
        {
            healed = true;
            break;
        }
    }
    assert!(healed, "the damaged replica was cut and repaired");
    // Every replica's own log holds every record (the old leader was repaired, not bypassed).
    for i in 0..3 {
        assert_eq!(
            show(&read_replica(&mut c, i, &tp)),
            show(&want),
            "replica {i}"
        );
    }
    for h in c.hosts.iter().flatten() {
        h.node.check_invariants();
    }
}

/// The values of the data records in replica `i`'s own log below its high watermark, read from
/// its disk (a follower answers fetches NOT_LEADER_OR_FOLLOWER).
fn read_replica(c: &mut Cluster, i: usize, tp: &TopicPartition) -> Vec<Vec<u8>> {
    try_read_replica(c, i, tp).expect("a good read")
}

/// [`read_replica`], or why not: not open, or a read failed.
fn try_read_replica(
    c: &mut Cluster,
    i: usize,
    tp: &TopicPartition,
) -> Result<Vec<Vec<u8>>, String> {
    let h = c.host(i);
    let slot = h.node.partitions.get(tp).ok_or("not hosted")?;
    let log = slot.replica().ok_or("not open")?.log();
    let view = View {
        disk: &h.disk,
        log: slot.log(),
    };
    let mut out = Vec::new();
    let mut at = log.log_start_offset();
    while at < log.high_watermark() {
        let raw =
            super::fetch::read_records(log, &view, at, 1 << 20).map_err(|e| format!("{e:?}"))?;
        let Some((last, _)) = crate::batch::split_batches(&raw).unwrap().pop() else {
            break;
        };
        out.extend(values(&raw));
        at = last.next_offset() as u64;
    }
    Ok(out)
}

/// Damage that nobody reads: a bit flipped in a follower's checkpointed segment. No client
/// fetches from a follower and the leader sends it nothing it has, so only the scrubber
/// (`Node::scrub_logs`) meets it; then the follower is cut and repaired like any read's damage.
/// With scrubbing off the damage stays (the control half).
#[test]
fn the_scrubber_finds_damage_nobody_reads_and_the_replica_is_repaired() {
    for scrub in [true, false] {
        let (healed, why) = damaged_follower(scrub);
        assert_eq!(healed, scrub, "scrubbing {scrub}: {why}");
    }
}

/// Flips a bit in a record below a follower's recovery point, runs the cluster for 5 s and
/// says whether that replica's log then reads back whole with the epochs its epoch cache gives.
fn damaged_follower(scrub: bool) -> (bool, String) {
    let mut c = Cluster::with(3, 13, |config| {
        config.topic_defaults.log.segment_bytes_max = 1024;
        if !scrub {
            config.scrub_bytes_per_sec = 0;
        }
    });
    c.wait_ready();
    c.create_topic("t", 1);
    let leader = c.leader_of("t", 0).expect("a leader");
    let follower = (leader + 1) % 3;
    let want = produce_values(&mut c, leader, 30, 80);
    c.advance(500);
    let tp = TopicPartition::new("t", 0);
    assert_eq!(read_replica(&mut c, follower, &tp), want);
    flip_below_recovery_point(&c, follower, &tp, b"value 005", in_record);
    let mut last = String::new();
    for _ in 0..250 {
        c.advance(20);
        let epochs_agree = |c: &mut Cluster| {
            let h = c.host(follower);
            let Some(slot) = h.node.partitions.get(&tp) else {
                return false;
            };
            let Some(log) = slot.replica().map(crate::replica::Replica::log) else {
                return false;
            };
            let view = View {
                disk: &h.disk,
                log: slot.log(),
            };
            let Ok(mut cursor) = log.read_durable(0, 1 << 20) else {
                return false;
            };
            cursor.run(&view).is_ok()
                && cursor
                    .into_batches()
                    .iter()
                    .all(|b| log.epoch_at(b.base_offset) == Some(b.epoch))
        };
        if !epochs_agree(&mut c) {
            last = "a batch's epoch is not the epoch cache's".into();
            continue;
        }
        match try_read_replica(&mut c, follower, &tp) {
            Ok(values) if values == want => return (true, "whole".into()),
            Ok(values) => last = format!("{} of {} values", values.len(), want.len()),
            Err(e) => last = e,
        }
    }
    (false, last)
}

/// Produces `count` values of topic `t` partition 0 at `leader`, acks=all, one batch each:
/// "value NNN " and `pad` bytes. Returns them.
fn produce_values(c: &mut Cluster, leader: usize, count: usize, pad: usize) -> Vec<Vec<u8>> {
    let wall = c.now.wall_ms as i64;
    let mut want = Vec::new();
    for i in 0..count {
        let value = format!("value {i:03} {}", "x".repeat(pad));
        let p = produced(c.call(
            leader,
            produce("t", 0, -1, records(&[value.as_bytes()], wall)),
        ));
        assert_eq!(p.error, ErrorCode::None);
        want.push(value.into_bytes());
    }
    want
}

/// A bit in the middle of the needle: inside the record, under the batch CRC.
fn in_record(_batch_start: u64, needle_at: u64) -> u64 {
    (needle_at + 4) * 8
}

/// Flips a bit of the batch holding `needle` on node `i`, in a segment below the recovery
/// point of its checkpoint, which recovery trusts unread: the bit `which(batch start, needle
/// position)` of the segment file.
fn flip_below_recovery_point(
    c: &Cluster,
    i: usize,
    tp: &TopicPartition,
    needle: &[u8],
    which: impl Fn(u64, u64) -> u64,
) {
    use crate::log::{log_file_name, parse_log_file_name, Checkpoint, CHECKPOINT_FILE};
    use crate::storage::{read_all as read_file, Storage};
    let dir = tp.dir();
    let storage = &c.storages[i];
    let checkpoint = read_file(&storage.open(&dir.join(CHECKPOINT_FILE), false).unwrap())
        .ok()
        .and_then(|b| Checkpoint::decode(&b))
        .expect("a checkpoint");
    let (segment, bit) = storage
        .list(&dir)
        .unwrap()
        .iter()
        .filter_map(|name| parse_log_file_name(name))
        .filter(|base| *base < checkpoint.recovery_point)
        .find_map(|base| {
            let segment = dir.join(log_file_name(base));
            let bytes = read_file(&storage.open(&segment, false).unwrap()).unwrap();
            let at = bytes.windows(needle.len()).position(|w| w == needle)?;
            let (_, range) = crate::batch::split_batches(&bytes)
                .ok()?
                .into_iter()
                .find(|(_, r)| r.contains(&at))?;
            Some((segment, which(range.start as u64, at as u64)))
        })
        .expect("the record below the recovery point");
    assert!(storage.flip_bit(&segment, bit));
}
