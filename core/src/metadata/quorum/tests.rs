//! A three-node metadata quorum on in-memory storage, driven deterministically: every log op
//! applied, syncs run (at once, or held back and lost in a crash), messages delivered in order
//! or, in the randomized test, dropped, delayed and reordered.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::PathBuf;

use super::*;
use crate::log::testkit::{committed_batches, small_config};
use crate::log::{LogConfig, LogStore};
use crate::metadata::controller::CreateTopicRequest;
use crate::testing::{CrashMode, MemStorage};

const NODES: usize = 3;
const TICK_MS: u64 = 100;

/// Both clocks at `ms` (the tests move them together).
fn at(ms: u64) -> crate::time::Now {
    crate::time::Now::new(crate::time::Instant::from_millis(ms), ms)
}

struct Node {
    store: RefCell<LogStore<MemStorage>>,
    quorum: MetadataQuorum,
    /// A group commit the "disk" has not finished yet (lost if the node crashes).
    held_sync: Option<ReplicaSync>,
}

/// One answer as the test saw it: which node, which of its lives, which ticket.
type Answer = (usize, u64, Ticket, Result<Outcome, ErrorCode>);

struct Cluster {
    nodes: Vec<Option<Node>>,
    storages: Vec<MemStorage>,
    hard_states: Vec<HardState>,
    /// Restarts per node, so each life draws other randomness and its tickets are told apart.
    lives: Vec<u64>,
    /// `(deliver at tick, message)`.
    network: Vec<(u64, Message)>,
    isolated: Vec<bool>,
    now_ms: u64,
    ticks: u64,
    rng: Rng,
    /// Randomized mode: drop rate, delay, reordering, held syncs.
    drop_per_mille: u32,
    delay_ticks_max: u64,
    hold_sync_per_mille: u32,
    reorder: bool,
    answers: Vec<Answer>,
    /// The image every node held after applying the offsets below the key.
    images_at: BTreeMap<u64, Vec<u8>>,
    /// The bug every node plants (from its next start).
    planted: crate::planted::Planted,
}

fn topic_defaults() -> TopicDefaults {
    TopicDefaults {
        num_partitions: 2,
        replication_factor: 1,
        log: LogConfig::default(),
    }
}

fn config(id: usize) -> QuorumConfig {
    QuorumConfig::new(id as u64, [id as u8 + 1; 16], topic_defaults())
}

fn topic(name: &str) -> CreateTopicRequest {
    CreateTopicRequest {
        name: name.into(),
        num_partitions: -1,
        replication_factor: -1,
        assignment: None,
        configs: vec![],
    }
}

impl Cluster {
    fn new(seed: u64) -> Cluster {
        let storages: Vec<MemStorage> = (0..NODES).map(|_| MemStorage::new()).collect();
        let mut c = Cluster {
            nodes: (0..NODES).map(|_| None).collect(),
            storages,
            hard_states: vec![HardState::default(); NODES],
            lives: vec![0; NODES],
            network: Vec::new(),
            isolated: vec![false; NODES],
            now_ms: 1_000_000,
            ticks: 0,
            rng: Rng::new(seed),
            drop_per_mille: 0,
            delay_ticks_max: 0,
            hold_sync_per_mille: 0,
            reorder: false,
            answers: Vec::new(),
            images_at: BTreeMap::new(),
            planted: crate::planted::Planted::NONE,
        };
        for id in 0..NODES {
            c.start(id);
        }
        c
    }

    /// A cluster whose every node plants `bug`.
    #[cfg(feature = "planted-bugs")]
    fn planted(seed: u64, bug: crate::planted::Bug) -> Cluster {
        let mut c = Cluster::new(seed);
        c.planted = crate::planted::Planted::new(Some(bug));
        for id in 0..NODES {
            c.crash(id, CrashMode::Clean);
            c.start(id);
        }
        c
    }

    fn start(&mut self, id: usize) {
        assert!(self.nodes[id].is_none());
        self.lives[id] += 1;
        let (log, store) = LogStore::open(
            self.storages[id].clone(),
            PathBuf::from("__cluster_metadata-0"),
            small_config(),
        )
        .expect("open log");
        let store = RefCell::new(store);
        let seed = self.rng.next_u64() ^ (id as u64) << 32 ^ self.lives[id];
        let mut node_config = config(id);
        node_config.raft.planted = self.planted;
        let quorum = MetadataQuorum::open(
            node_config,
            Rng::new(seed),
            self.hard_states[id],
            log,
            Membership::new(0..NODES as u64),
            at(self.now_ms),
            &store,
        )
        .expect("open quorum");
        self.nodes[id] = Some(Node {
            store,
            quorum,
            held_sync: None,
        });
        self.flush(id);
    }

    fn crash(&mut self, id: usize, mode: CrashMode) {
        self.nodes[id] = None;
        self.storages[id].crash(mode);
    }

    fn q(&self, id: usize) -> &MetadataQuorum {
        &self.nodes[id].as_ref().expect("node is up").quorum
    }

    /// Executes what node `id` asked for and records its answers and image.
    fn flush(&mut self, id: usize) {
        let Some(node) = self.nodes[id].as_mut() else {
            return;
        };
        let at = self.ticks + self.rng.between(0, self.delay_ticks_max);
        loop {
            let mut acted = false;
            while let Some(out) = node.quorum.poll_output() {
                acted = true;
                match out {
                    QuorumOutput::Replica(ReplicaOutput::Op(op)) => {
                        node.store.borrow_mut().apply(op).expect("apply op")
                    }
                    QuorumOutput::Replica(ReplicaOutput::HardState(hs)) => {
                        self.hard_states[id] = hs;
                        node.quorum.hard_state_persisted(&node.store);
                    }
                    QuorumOutput::Replica(ReplicaOutput::Message(msg)) => {
                        self.network.push((at, msg))
                    }
                    QuorumOutput::Replica(ReplicaOutput::Reset(_)) => {}
                    QuorumOutput::Completion(ticket, result) => {
                        self.answers.push((id, self.lives[id], ticket, result))
                    }
                }
            }
            if acted {
                continue;
            }
            if node.held_sync.is_none() {
                if let Some(sync) = node.quorum.poll_sync() {
                    if self.rng.chance(self.hold_sync_per_mille) {
                        node.held_sync = Some(sync);
                    } else {
                        run_sync(node, sync);
                    }
                    continue;
                }
            }
            break;
        }
        node.quorum.check_invariants();
        let q = &node.quorum;
        assert_eq!(q.apply_error(), None, "node {id}");
        let mut image = Vec::new();
        q.image().encode(&mut image);
        let seen = self
            .images_at
            .entry(q.applied_end())
            .or_insert(image.clone());
        assert!(
            *seen == image,
            "node {id} holds another image after applying offsets below {}",
            q.applied_end()
        );
    }

    fn flush_all(&mut self) {
        for id in 0..NODES {
            self.flush(id);
        }
    }

    /// Delivers every message due by now (and those they cause, if due too).
    fn deliver_due(&mut self) {
        for _ in 0..10_000 {
            self.flush_all();
            let (mut due, later): (Vec<_>, Vec<_>) = self
                .network
                .drain(..)
                .partition(|(at, _)| *at <= self.ticks);
            self.network = later;
            if due.is_empty() {
                return;
            }
            if self.reorder {
                for i in (1..due.len()).rev() {
                    due.swap(i, self.rng.below(i as u64 + 1) as usize);
                }
            }
            for (_, msg) in due {
                let (from, to) = (msg.from as usize, msg.to as usize);
                if self.isolated[from] || self.isolated[to] || self.rng.chance(self.drop_per_mille)
                {
                    continue;
                }
                if let Some(node) = self.nodes[to].as_mut() {
                    node.quorum.step(msg, at(self.now_ms), &node.store);
                }
                self.flush(to);
            }
        }
        panic!("messages never settled");
    }

    fn tick(&mut self, n: u32) {
        for _ in 0..n {
            self.ticks += 1;
            self.now_ms += TICK_MS;
            for id in 0..NODES {
                let Some(node) = self.nodes[id].as_mut() else {
                    continue;
                };
                if node.held_sync.is_some() && self.rng.chance(500) {
                    let sync = node.held_sync.take().expect("held");
                    run_sync(node, sync);
                }
                node.quorum.tick(at(self.now_ms), &node.store);
                self.flush(id);
            }
            self.deliver_due();
        }
    }

    fn active(&self) -> Option<usize> {
        (0..NODES).find(|&i| {
            !self.isolated[i] && self.nodes[i].as_ref().is_some_and(|n| n.quorum.is_active())
        })
    }

    /// Ticks until some reachable node is the active controller.
    fn elect(&mut self) -> usize {
        for _ in 0..500 {
            if let Some(id) = self.active() {
                return id;
            }
            self.tick(1);
        }
        panic!("no active controller");
    }

    /// Runs a request at node `id` and delivers what follows.
    fn request(
        &mut self,
        id: usize,
        f: impl FnOnce(
            &mut MetadataQuorum,
            crate::time::Now,
            &RefCell<LogStore<MemStorage>>,
        ) -> Result<Ticket, ControllerError>,
    ) -> Result<Ticket, ControllerError> {
        let now = at(self.now_ms);
        let node = self.nodes[id].as_mut().expect("node is up");
        let result = f(&mut node.quorum, now, &node.store);
        self.flush(id);
        self.deliver_due();
        result
    }

    fn create_topic(&mut self, id: usize, name: &str) -> Result<Ticket, ControllerError> {
        self.request(id, |q, now, r| q.create_topic(&topic(name), now, r))
    }

    fn heartbeat(
        &mut self,
        id: usize,
        broker: BrokerId,
        incarnation: u64,
    ) -> Result<Ticket, ControllerError> {
        self.request(id, |q, now, r| {
            q.broker_heartbeat(broker, incarnation, "host", 9092, None, now, r)
        })
    }

    /// The answer to `ticket` of node `id`'s current life, once there is one.
    fn answer(&self, id: usize, ticket: Ticket) -> Option<Result<Outcome, ErrorCode>> {
        let life = self.lives[id];
        let mut found = self
            .answers
            .iter()
            .filter(|(n, l, t, _)| (*n, *l, *t) == (id, life, ticket))
            .map(|(_, _, _, r)| r.clone());
        let first = found.next();
        assert!(found.next().is_none(), "ticket {ticket:?} answered twice");
        first
    }

    /// Ticks until `ticket` of node `id` is answered.
    fn await_answer(&mut self, id: usize, ticket: Ticket) -> Result<Outcome, ErrorCode> {
        for _ in 0..200 {
            if let Some(answer) = self.answer(id, ticket) {
                return answer;
            }
            self.tick(1);
        }
        panic!("ticket {ticket:?} of node {id} never answered");
    }

    /// Registers and unfences brokers `ids` through node `id` (two heartbeats each).
    fn live_brokers(&mut self, id: usize, ids: &[BrokerId]) {
        for &b in ids {
            let t = self.heartbeat(id, b, 1).expect("registered");
            let registered = self.await_answer(id, t);
            assert_eq!(
                registered,
                Ok(Outcome::Broker {
                    node_id: b,
                    incarnation: 1,
                    fenced: true
                })
            );
            let t = self.heartbeat(id, b, 1).expect("unfenced");
            assert_eq!(
                self.await_answer(id, t),
                Ok(Outcome::Broker {
                    node_id: b,
                    incarnation: 1,
                    fenced: false
                })
            );
        }
    }

    /// Ticks until every node has applied the same prefix, then checks their images are equal.
    fn assert_converged(&mut self) {
        for _ in 0..300 {
            let ends: Vec<u64> = (0..NODES).map(|i| self.q(i).applied_end()).collect();
            let last = self.q(0).replica().raft().last_index();
            if ends.iter().all(|e| *e == ends[0])
                && (0..NODES).all(|i| self.q(i).replica().raft().last_index() == last)
                && ends[0] == last
            {
                for i in 1..NODES {
                    assert_eq!(self.q(i).image(), self.q(0).image(), "node {i} differs");
                }
                return;
            }
            self.tick(1);
        }
        panic!("nodes never converged");
    }

    /// Every metadata record in node `id`'s committed log, with its offset.
    fn committed_records(&self, id: usize) -> Vec<(u64, MetadataRecord)> {
        let node = self.nodes[id].as_ref().expect("up");
        committed_batches(node.quorum.replica().log(), &mut node.store.borrow_mut())
            .into_iter()
            .flat_map(|b| decode_batch(&b.bytes, b.base_offset, b.last_offset).expect("decodes"))
            .collect()
    }
}

fn run_sync(node: &mut Node, sync: ReplicaSync) {
    let job = node
        .store
        .borrow_mut()
        .sync_job(&sync.request)
        .expect("sync job");
    job.run().expect("sync");
    node.quorum.on_synced(sync, &node.store);
}

fn topic_created(r: &Result<Outcome, ErrorCode>) -> TopicId {
    match r {
        Ok(Outcome::TopicCreated { topic_id, .. }) => *topic_id,
        other => panic!("expected a created topic, got {other:?}"),
    }
}

#[test]
fn three_nodes_elect_a_controller_and_agree_on_a_created_topic() {
    let mut c = Cluster::new(1);
    let leader = c.elect();
    c.live_brokers(leader, &[1, 2, 3]);
    let t = c.create_topic(leader, "orders").expect("proposed");
    let answer = c.await_answer(leader, t);
    let topic_id = topic_created(&answer);
    assert_eq!(
        answer,
        Ok(Outcome::TopicCreated {
            topic_id,
            partitions: 2
        })
    );
    c.assert_converged();
    for id in 0..NODES {
        let image = c.q(id).image();
        assert_eq!(
            image.topic_by_name("orders").map(|t| t.topic_id),
            Some(topic_id)
        );
        assert_eq!(
            image.cluster_id(),
            Some([leader as u8 + 1; 16]),
            "the first controller's id"
        );
        assert_eq!(image.live_brokers().count(), 3);
    }
}

#[test]
fn requests_at_a_follower_fail_with_not_controller_at_once() {
    let mut c = Cluster::new(2);
    let leader = c.elect();
    let follower = (leader + 1) % NODES;
    let err = c.create_topic(follower, "a").unwrap_err();
    assert_eq!(err.code, ErrorCode::NotController);
    assert_eq!(ErrorCode::NotController.code(), 41);
    assert_eq!(
        c.heartbeat(follower, 1, 1).unwrap_err().code,
        ErrorCode::NotController
    );
    let err = c
        .request(follower, |q, now, r| q.allocate_producer_ids(1, now, r))
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::NotController);
    assert!(c.q(follower).image().topic_by_name("a").is_none());
}

#[test]
fn validation_errors_come_back_at_once_with_kafka_codes() {
    let mut c = Cluster::new(3);
    let leader = c.elect();
    // No live broker yet: the replication factor cannot be met.
    let err = c.create_topic(leader, "a").unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidReplicationFactor);
    c.live_brokers(leader, &[1]);
    assert_eq!(
        c.create_topic(leader, "bad/name").unwrap_err().code,
        ErrorCode::InvalidTopicException
    );
    let err = c
        .request(leader, |q, now, r| {
            q.delete_topic(TopicRef::Name("nope"), now, r)
        })
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::UnknownTopicOrPartition);
    let err = c
        .request(leader, |q, now, r| q.allocate_producer_ids(7, now, r))
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::BrokerIdNotRegistered);
}

#[test]
fn a_crashed_leader_is_replaced_and_catches_up_on_restart() {
    let mut c = Cluster::new(4);
    let old = c.elect();
    c.live_brokers(old, &[1, 2]);
    let t = c.create_topic(old, "before").unwrap();
    let before = topic_created(&c.await_answer(old, t));
    // A proposal the old leader never gets to sync: lost with it.
    c.hold_sync_per_mille = 1000;
    c.isolated[old] = true;
    let lost = c.create_topic(old, "lost").unwrap();
    c.hold_sync_per_mille = 0;
    c.crash(old, CrashMode::Clean);
    c.isolated[old] = false;
    let new = c.elect();
    assert_ne!(new, old);
    for name in ["after-1", "after-2"] {
        let t = c.create_topic(new, name).unwrap();
        topic_created(&c.await_answer(new, t));
    }
    let alter = c
        .request(new, |q, now, r| {
            q.alter_configs(
                "before",
                &[("retention.ms".into(), "1000".into())],
                &[],
                now,
                r,
            )
        })
        .unwrap();
    assert_eq!(
        c.await_answer(new, alter),
        Ok(Outcome::ConfigsAltered { topic_id: before })
    );
    let grow = c
        .request(new, |q, now, r| {
            q.create_partitions("before", 5, None, now, r)
        })
        .unwrap();
    assert_eq!(
        c.await_answer(new, grow),
        Ok(Outcome::PartitionsCreated {
            topic_id: before,
            partitions: 5
        })
    );
    c.start(old);
    assert!(
        c.answer(old, lost).is_none(),
        "a new life has no old tickets"
    );
    c.assert_converged();
    let image = c.q(old).image();
    assert!(image.topic_by_name("lost").is_none());
    assert!(image.topic_by_name("after-2").is_some());
    assert_eq!(image.topic(&before).unwrap().partitions.len(), 5);
    assert_eq!(
        image
            .topic(&before)
            .unwrap()
            .configs
            .get("retention.ms")
            .map(String::as_str),
        Some("1000")
    );
}

#[test]
fn a_whole_cluster_restart_rebuilds_every_image_from_the_log() {
    let mut c = Cluster::new(5);
    let leader = c.elect();
    c.live_brokers(leader, &[1, 2, 3]);
    for name in ["a", "b", "c"] {
        let t = c.create_topic(leader, name).unwrap();
        c.await_answer(leader, t).unwrap();
    }
    let t = c
        .request(leader, |q, now, r| {
            q.delete_topic(TopicRef::Name("b"), now, r)
        })
        .unwrap();
    c.await_answer(leader, t).unwrap();
    c.assert_converged();
    let before = c.q(0).image().clone();
    for id in 0..NODES {
        c.crash(id, CrashMode::Clean);
    }
    c.network.clear();
    for id in 0..NODES {
        c.start(id);
        // Replayed at open, before any message, up to what the node knows is committed (its
        // stored commit index or the log's recovered high watermark; the rest is confirmed by
        // the next leader).
        let replayed = c.q(id).image().last_applied_offset();
        assert!(replayed.is_some() && replayed <= before.last_applied_offset());
    }
    let leader = c.elect();
    c.assert_converged();
    for id in 0..NODES {
        let image = c.q(id).image();
        for topic in before.topics() {
            assert_eq!(image.topic(&topic.topic_id), Some(topic), "node {id}");
        }
        assert_eq!(image.brokers().count(), 3);
        assert_eq!(image.cluster_id(), before.cluster_id());
    }
    let t = c.create_topic(leader, "d").unwrap();
    c.await_answer(leader, t).unwrap();
    c.assert_converged();
}

#[test]
fn heartbeats_register_and_unfence_and_silence_fences() {
    let mut c = Cluster::new(6);
    let leader = c.elect();
    c.live_brokers(leader, &[1, 2]);
    // Broker 1 keeps heartbeating, broker 2 goes silent.
    let session_ticks = BROKER_SESSION_TIMEOUT_MS_DEFAULT / TICK_MS;
    for _ in 0..session_ticks + 5 {
        c.heartbeat(leader, 1, 1).unwrap();
        c.tick(1);
    }
    c.assert_converged();
    let image = c.q(leader).image();
    assert!(!image.broker(1).unwrap().fenced);
    assert!(image.broker(2).unwrap().fenced, "silent broker fenced");
    // It comes back: its next heartbeats unfence it.
    let t = c.heartbeat(leader, 2, 1).unwrap();
    assert_eq!(
        c.await_answer(leader, t),
        Ok(Outcome::Broker {
            node_id: 2,
            incarnation: 1,
            fenced: false
        })
    );
    // A restart of broker 1 (new incarnation) while the old one is live is refused...
    assert_eq!(
        c.heartbeat(leader, 1, 2).unwrap_err().code,
        ErrorCode::DuplicateBrokerRegistration
    );
    // ...and accepted once the old session expired.
    c.tick(session_ticks as u32 + 2);
    let t = c.heartbeat(leader, 1, 2).unwrap();
    assert_eq!(
        c.await_answer(leader, t),
        Ok(Outcome::Broker {
            node_id: 1,
            incarnation: 2,
            fenced: true
        })
    );
    // The old process is now stale.
    let t = c.heartbeat(leader, 1, 2).unwrap();
    c.await_answer(leader, t).unwrap();
    let err = c.heartbeat(leader, 1, 1).unwrap_err();
    assert_eq!(err.code, ErrorCode::DuplicateBrokerRegistration);
}

#[test]
fn a_new_controller_gives_every_broker_a_full_session() {
    let mut c = Cluster::new(7);
    let old = c.elect();
    c.live_brokers(old, &[1, 2, 3]);
    // The brokers heartbeated at the old controller long ago (from the new one's view it has
    // no times at all); a new controller must not fence them at once.
    c.tick(20);
    c.crash(old, CrashMode::Clean);
    let new = c.elect();
    let activated_ms = c.now_ms;
    c.tick(1);
    assert_eq!(
        c.q(new).image().live_brokers().count(),
        3,
        "nobody fenced at once"
    );
    // Brokers 1 and 2 find the new controller; broker 3 never does.
    let session_ticks = BROKER_SESSION_TIMEOUT_MS_DEFAULT / TICK_MS;
    while c.now_ms < activated_ms + BROKER_SESSION_TIMEOUT_MS_DEFAULT - TICK_MS {
        assert!(
            !c.q(new).image().broker(3).unwrap().fenced,
            "fenced before its session ended"
        );
        c.heartbeat(new, 1, 1).unwrap();
        c.heartbeat(new, 2, 1).unwrap();
        c.tick(1);
    }
    for _ in 0..5 {
        c.heartbeat(new, 1, 1).unwrap();
        c.heartbeat(new, 2, 1).unwrap();
        c.tick(1);
    }
    let image = c.q(new).image();
    assert!(image.broker(3).unwrap().fenced);
    assert!(!image.broker(1).unwrap().fenced && !image.broker(2).unwrap().fenced);
    assert!(session_ticks > 5);
}

#[test]
fn producer_id_blocks_are_disjoint_across_requests_and_controllers() {
    let mut c = Cluster::new(8);
    let old = c.elect();
    c.live_brokers(old, &[1, 2]);
    // Three requests in flight together: each sees the ones before it.
    let tickets: Vec<Ticket> = (0..3)
        .map(|i| {
            let node = c.nodes[old].as_mut().unwrap();
            node.quorum
                .allocate_producer_ids(1 + i % 2, at(c.now_ms), &node.store)
                .unwrap()
        })
        .collect();
    c.flush(old);
    c.deliver_due();
    let mut blocks = Vec::new();
    for t in tickets {
        match c.await_answer(old, t) {
            Ok(Outcome::ProducerIds { first, end, .. }) => blocks.push((first, end)),
            other => panic!("{other:?}"),
        }
    }
    c.crash(old, CrashMode::Clean);
    let new = c.elect();
    for _ in 0..2 {
        let t = c
            .request(new, |q, now, r| q.allocate_producer_ids(2, now, r))
            .unwrap();
        match c.await_answer(new, t) {
            Ok(Outcome::ProducerIds {
                first,
                end,
                node_id: 2,
            }) => blocks.push((first, end)),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        blocks,
        vec![
            (0, 1000),
            (1000, 2000),
            (2000, 3000),
            (3000, 4000),
            (4000, 5000)
        ]
    );
    assert_eq!(c.q(new).image().producer_id_end(), 5000);
}

#[test]
fn racing_creations_of_one_name_have_one_winner() {
    let mut c = Cluster::new(9);
    let l1 = c.elect();
    c.live_brokers(l1, &[1]);
    // At one controller the second request sees the first before it commits.
    let first = c.create_topic(l1, "x").unwrap();
    let err = c.create_topic(l1, "x").unwrap_err();
    assert_eq!(err.code, ErrorCode::TopicAlreadyExists);
    let x = topic_created(&c.await_answer(l1, first));
    // Two controllers: the deposed one's creation of "y" is cut; its caller is told
    // NOT_CONTROLLER, the new controller's creation wins everywhere.
    c.isolated[l1] = true;
    let lost = c.create_topic(l1, "y").unwrap();
    let l2 = c.elect();
    assert_ne!(l1, l2);
    let t = c.create_topic(l2, "y").unwrap();
    let y = topic_created(&c.await_answer(l2, t));
    c.isolated[l1] = false;
    assert_eq!(c.await_answer(l1, lost), Err(ErrorCode::NotController));
    c.assert_converged();
    for id in 0..NODES {
        let image = c.q(id).image();
        assert_eq!(image.topic_by_name("x").unwrap().topic_id, x);
        assert_eq!(image.topic_by_name("y").unwrap().topic_id, y);
    }
    // A record that lost on apply (ignored: the name was taken) is reported as Kafka does.
    let q = c.q(l2);
    assert_eq!(
        q.outcome(
            &Request::CreateTopic { name: "y".into() },
            Some(&[Applied::Ignored("topic exists")])
        ),
        Err(ErrorCode::TopicAlreadyExists)
    );
    assert_eq!(
        q.outcome(
            &Request::DeleteTopic {
                topic_id: [9; 16],
                by_name: false
            },
            Some(&[Applied::Ignored("unknown topic")])
        ),
        Err(ErrorCode::UnknownTopicId)
    );
}

#[test]
fn a_corrupt_committed_record_stops_applying_and_is_reported() {
    let mut c = Cluster::new(10);
    let leader = c.elect();
    c.live_brokers(leader, &[1]);
    c.assert_converged();
    let before = c.q(leader).image().clone();
    // A batch whose second record is not a metadata record, written past the controller.
    let mut b = BatchBuilder::new(0);
    b.push(&NewRecord {
        value: Some(MetadataRecord::NoOp.to_bytes()),
        ..NewRecord::default()
    });
    b.push(&NewRecord {
        value: Some(vec![1, 200, 3]),
        ..NewRecord::default()
    });
    let node = c.nodes[leader].as_mut().unwrap();
    let proposed = node
        .quorum
        .replica
        .produce(
            BytesMut::from(&b.build()[..]),
            c.now_ms,
            &node.store,
            &crate::batch::NoCodecs,
        )
        .unwrap();
    // Drive without the harness's "no apply error" check.
    for _ in 0..20 {
        c.ticks += 1;
        c.now_ms += TICK_MS;
        for id in 0..NODES {
            let node = c.nodes[id].as_mut().unwrap();
            node.quorum.tick(at(c.now_ms), &node.store);
            loop {
                let mut acted = false;
                while let Some(out) = node.quorum.poll_output() {
                    acted = true;
                    match out {
                        QuorumOutput::Replica(ReplicaOutput::Op(op)) => {
                            node.store.borrow_mut().apply(op).unwrap()
                        }
                        QuorumOutput::Replica(ReplicaOutput::HardState(_)) => {
                            node.quorum.hard_state_persisted(&node.store)
                        }
                        QuorumOutput::Replica(ReplicaOutput::Message(m)) => c.network.push((0, m)),
                        _ => {}
                    }
                }
                if acted {
                    continue;
                }
                if let Some(sync) = node.quorum.poll_sync() {
                    run_sync(node, sync);
                    continue;
                }
                break;
            }
        }
        for (_, msg) in std::mem::take(&mut c.network) {
            let node = c.nodes[msg.to as usize].as_mut().unwrap();
            node.quorum.step(msg, at(c.now_ms), &node.store);
        }
    }
    for id in 0..NODES {
        let q = c.q(id);
        let err = q.apply_error().expect("reported");
        assert_eq!(
            err.offset,
            proposed.base_offset + 1,
            "the bad record's offset"
        );
        assert!(err.reason.contains("metadata record"), "{err:?}");
        assert_eq!(q.image(), &before, "nothing of the bad batch applied");
        assert!(!q.is_active());
        q.check_invariants();
    }
    let node = c.nodes[leader].as_mut().unwrap();
    let err = node
        .quorum
        .create_topic(&topic("z"), at(c.now_ms), &node.store)
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::NotController);
}

#[test]
fn a_metadata_log_with_retention_is_refused() {
    let storage = MemStorage::new();
    let mut log_config = small_config();
    log_config.retention_ms = 1000;
    let (log, store) = LogStore::open(storage, PathBuf::from("m"), log_config).unwrap();
    let err = MetadataQuorum::open(
        config(0),
        Rng::new(1),
        HardState::default(),
        log,
        Membership::new([0]),
        at(0),
        &RefCell::new(store),
    )
    .unwrap_err();
    assert!(err.0.contains("retention"), "{err}");
}

/// One randomized run: faults first (loss, delay, reordering, held syncs, crashes with torn
/// writes, isolation), requests of every kind at random nodes, then a healed network where a
/// controller must emerge and serve, and every node must converge. Throughout, any two nodes
/// that applied the same prefix hold equal images (checked in `flush`).
fn random_run(seed: u64) -> Stats {
    let mut stats = Stats::default();
    let mut c = Cluster::new(seed);
    let mut rng = Rng::new(seed ^ 0x5eed);
    c.drop_per_mille = rng.between(0, 150) as u32;
    c.delay_ticks_max = rng.between(0, 3);
    c.hold_sync_per_mille = rng.between(0, 600) as u32;
    c.reorder = true;
    let names = ["a", "b", "c", "d.e", "d_e"];
    let mut incarnations: [u64; 4] = [1; 4];
    let fault_ticks = rng.between(100, 400);
    for _ in 0..fault_ticks {
        // Faults: at most one node down at a time, so the rest can make progress.
        let down = (0..NODES).filter(|&i| c.nodes[i].is_none()).count();
        if down == 0 && rng.chance(15) {
            let id = rng.below(NODES as u64) as usize;
            let mode = if rng.chance(500) {
                CrashMode::Clean
            } else {
                CrashMode::TearLastWrite {
                    keep_bytes: rng.below(200),
                    garbage: rng.chance(500),
                }
            };
            c.crash(id, mode);
            stats.crashes += 1;
        } else if down > 0 && rng.chance(100) {
            let id = (0..NODES).find(|&i| c.nodes[i].is_none()).unwrap();
            c.start(id);
        }
        if rng.chance(10) {
            let id = rng.below(NODES as u64) as usize;
            c.isolated[id] = !c.isolated[id];
        }
        // Requests, at any node that is up (most go to a non-controller and are refused).
        for _ in 0..rng.below(3) {
            let id = rng.below(NODES as u64) as usize;
            if c.nodes[id].is_none() {
                continue;
            }
            let name = *rng.pick(&names);
            let broker = rng.below(4) as BrokerId;
            let choice = rng.below(100);
            if choice < 15 && rng.chance(100) {
                incarnations[broker as usize] += 1;
            }
            let incarnation = incarnations[broker as usize];
            let _ = c.request(id, |q, now, r| match choice {
                0..=39 => q.broker_heartbeat(broker, incarnation, "h", 1, None, now, r),
                40..=59 => q.create_topic(&topic(name), now, r),
                60..=67 => q.delete_topic(TopicRef::Name(name), now, r),
                68..=75 => q.alter_configs(
                    name,
                    &[("retention.ms".into(), format!("{}", now.wall_ms))],
                    &[],
                    now,
                    r,
                ),
                76..=83 => {
                    q.create_partitions(name, 3 + (now.wall_ms / TICK_MS % 3) as i32, None, now, r)
                }
                _ => q.allocate_producer_ids(broker, now, r),
            });
        }
        c.tick(1);
    }
    // Heal: every node up, no loss, short delays, syncs at once.
    c.drop_per_mille = 0;
    c.delay_ticks_max = 1;
    c.hold_sync_per_mille = 0;
    c.isolated = vec![false; NODES];
    for id in 0..NODES {
        if c.nodes[id].is_none() {
            c.start(id);
        }
    }
    // Liveness: a controller emerges and serves. Leadership may still move while restarted
    // nodes rejoin, so a refused or deposed request is retried.
    let mut leader = c.elect();
    let mut created = false;
    for _ in 0..20 {
        leader = c.elect();
        // A live broker to place the topic on (the fault phase's may all be fenced).
        for _ in 0..2 {
            if let Ok(t) = c.heartbeat(leader, 9, 1) {
                let _ = c.await_answer(leader, t);
            }
        }
        let result = c
            .create_topic(leader, "final")
            .map_err(|e| e.code)
            .and_then(|t| c.await_answer(leader, t));
        match result {
            Ok(Outcome::TopicCreated { .. }) | Err(ErrorCode::TopicAlreadyExists) => {
                created = true;
                break;
            }
            Err(ErrorCode::NotController | ErrorCode::InvalidReplicationFactor) => continue,
            other => panic!("the final creation got {other:?}"),
        }
    }
    assert!(created, "a healed cluster never served a request");
    c.assert_converged();
    check_answers(&c, leader);
    for (_, _, _, result) in &c.answers {
        match result {
            Ok(Outcome::TopicCreated { .. }) => stats.topics_created += 1,
            Ok(Outcome::ProducerIds { .. }) => stats.producer_blocks += 1,
            Ok(Outcome::Broker { fenced: false, .. }) => stats.heartbeats_live += 1,
            Ok(_) => stats.other_ok += 1,
            Err(ErrorCode::NotController) => stats.deposed += 1,
            Err(_) => stats.other_err += 1,
        }
    }
    let records = c.committed_records(leader);
    stats.fenced += records
        .iter()
        .filter(|(_, r)| matches!(r, MetadataRecord::FenceBroker { .. }))
        .count() as u64;
    stats.terms += c.q(leader).term();
    stats
}

#[derive(Debug, Default)]
struct Stats {
    crashes: u64,
    terms: u64,
    topics_created: u64,
    producer_blocks: u64,
    heartbeats_live: u64,
    other_ok: u64,
    deposed: u64,
    other_err: u64,
    fenced: u64,
}

/// The answers agree with the committed log: every acknowledged creation is in it, producer-id
/// blocks never overlap, answers come once per ticket.
fn check_answers(c: &Cluster, id: usize) {
    let records = c.committed_records(id);
    let created: Vec<TopicId> = records
        .iter()
        .filter_map(|(_, r)| match r {
            MetadataRecord::CreateTopic { topic_id, .. } => Some(*topic_id),
            _ => None,
        })
        .collect();
    let mut blocks = Vec::new();
    let mut tickets = std::collections::BTreeSet::new();
    for (node, life, ticket, result) in &c.answers {
        assert!(tickets.insert((*node, *life, *ticket)), "answered twice");
        match result {
            Ok(Outcome::TopicCreated { topic_id, .. }) => {
                assert!(created.contains(topic_id), "acknowledged creation lost");
            }
            Ok(Outcome::ProducerIds { first, end, .. }) => blocks.push((*first, *end)),
            _ => {}
        }
    }
    blocks.sort();
    for pair in blocks.windows(2) {
        assert!(
            pair[0].1 <= pair[1].0,
            "producer-id blocks overlap: {pair:?}"
        );
    }
    let granted_end = blocks.last().map_or(0, |b| b.1);
    assert!(c.q(id).image().producer_id_end() >= granted_end);
}

#[test]
fn random_faults_keep_every_image_equal_at_equal_offsets() {
    let seeds: u64 = std::env::var("QUORUM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let first: u64 = std::env::var("QUORUM_FIRST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut total = Stats::default();
    for seed in first..first + seeds {
        if std::env::var("QUORUM_VERBOSE").is_ok() {
            eprintln!("seed {seed}");
        }
        let stats = match std::panic::catch_unwind(|| random_run(seed)) {
            Ok(stats) => stats,
            Err(e) => {
                eprintln!("seed {seed} failed");
                std::panic::resume_unwind(e);
            }
        };
        total.crashes += stats.crashes;
        total.terms += stats.terms;
        total.topics_created += stats.topics_created;
        total.producer_blocks += stats.producer_blocks;
        total.heartbeats_live += stats.heartbeats_live;
        total.other_ok += stats.other_ok;
        total.deposed += stats.deposed;
        total.other_err += stats.other_err;
        total.fenced += stats.fenced;
    }
    eprintln!("{seeds} runs: {total:?}");
    // The harness must not go quiet: faults and every kind of answer happen.
    if seeds >= 100 {
        assert!(total.crashes >= seeds / 2, "{total:?}");
        assert!(total.terms >= 2 * seeds, "{total:?}");
        assert!(total.topics_created >= seeds, "{total:?}");
        assert!(total.producer_blocks >= seeds / 2, "{total:?}");
        assert!(total.deposed >= 10, "{total:?}");
        assert!(total.fenced >= 10, "{total:?}");
        assert!(total.other_ok >= seeds, "{total:?}");
    }
}

/// Found by the sweep: a restarted node whose stored commit index is past its log's recovered
/// (not yet re-synced) tail spun forever in `Replica::drive`, since Raft stayed ready with
/// committed entries the log would not serve until the next sync.
#[test]
fn regression_seed_4_replay_waits_for_the_recovered_tail_to_sync() {
    random_run(4);
}

/// The planted `config-not-logged`: the controller changes its image for a config change
/// that no record carries, so its image differs from every other node's at the same applied
/// offset: the harness's image agreement check (as the simulator's image replay checker)
/// catches it at once.
#[cfg(feature = "planted-bugs")]
#[test]
#[should_panic(expected = "holds another image after applying offsets below")]
fn planted_config_not_logged_is_caught_by_image_agreement() {
    let mut c = Cluster::planted(4, crate::planted::Bug::ConfigNotLogged);
    let leader = c.elect();
    c.live_brokers(leader, &[1, 2]);
    let t = c.create_topic(leader, "cfg").unwrap();
    topic_created(&c.await_answer(leader, t));
    let _ = c.request(leader, |q, now, r| {
        q.alter_configs(
            "cfg",
            &[("segment.bytes".into(), "4096".into())],
            &[],
            now,
            r,
        )
    });
}

/// A change of two configs, then the controller crashes before its next tick; returns the new
/// controller's overrides of the topic and the old controller's answer, if it gave one.
fn alter_two_configs_then_fail_over(
    mut c: Cluster,
) -> (BTreeMap<String, String>, Option<Result<Outcome, ErrorCode>>) {
    let leader = c.elect();
    c.live_brokers(leader, &[1, 2]);
    let t = c.create_topic(leader, "cfg").unwrap();
    let id = topic_created(&c.await_answer(leader, t));
    let alter = c
        .request(leader, |q, now, r| {
            q.alter_configs(
                "cfg",
                &[
                    ("retention.ms".into(), "1000".into()),
                    ("segment.bytes".into(), "4096".into()),
                ],
                &[],
                now,
                r,
            )
        })
        .unwrap();
    let answer = c.answer(leader, alter);
    c.crash(leader, CrashMode::Clean);
    let new = c.elect();
    assert_ne!(new, leader);
    let configs = c.q(new).image().topic(&id).unwrap().configs.clone();
    (configs.into_iter().collect(), answer)
}

#[test]
fn a_change_of_several_configs_commits_whole_before_a_failover() {
    let (configs, answer) = alter_two_configs_then_fail_over(Cluster::new(5));
    assert!(
        matches!(answer, Some(Ok(Outcome::ConfigsAltered { .. }))),
        "{answer:?}"
    );
    assert_eq!(
        configs.get("segment.bytes").map(String::as_str),
        Some("4096"),
        "{configs:?}"
    );
    assert_eq!(
        configs.get("retention.ms").map(String::as_str),
        Some("1000")
    );
}

/// The planted `alter-configs-not-atomic` writes one config per entry, the next at a tick:
/// the failover leaves the change unanswered and applied in part (what the simulator's
/// config-not-atomic catches).
#[cfg(feature = "planted-bugs")]
#[test]
fn planted_alter_configs_not_atomic_leaves_a_change_in_part() {
    let c = Cluster::planted(5, crate::planted::Bug::AlterConfigsNotAtomic);
    let (configs, answer) = alter_two_configs_then_fail_over(c);
    assert_eq!(answer, None);
    assert_eq!(
        configs.get("retention.ms").map(String::as_str),
        Some("1000")
    );
    assert_eq!(configs.get("segment.bytes"), None, "{configs:?}");
}
