//! A pipelining idempotent producer, as a Kafka producer with `enable.idempotence=true` and
//! `max.in.flight.requests.per.connection=5` behaves, plus the zombies its epoch bumps leave.
//!
//! The workload process hands its sends to a sender task (Kafka's sender thread) through a
//! bounded queue and goes on polling. Per partition the sender keeps up to
//! [`IN_FLIGHT_PER_PARTITION_MAX`] Produce requests in flight on one connection to the
//! partition's leader (the broker answers a connection's requests in order), each batch
//! numbered with the partition's next sequence when it is first sent. A batch is retried with
//! the identical producer id, epoch and sequence until it is answered; when one attempt fails
//! the connection is dropped and every batch that was in flight behind it is resent after it, in
//! order (the broker would refuse them as out of order until it has the first, as Kafka's client
//! resends them once the earlier batch is resolved). A batch whose sequence the broker no
//! longer accepts (OUT_OF_ORDER_SEQUENCE_NUMBER at the head of the partition,
//! INVALID_PRODUCER_EPOCH, UNKNOWN_PRODUCER_ID), or that ran out of attempts, is given up with
//! every batch of its partition that went out, and the producer bumps its epoch (KIP-360's
//! InitProducerId with its id and epoch; a new id if that is refused). Batches not yet sent are
//! numbered afresh under the new identity, and only once the partition's batches of the old one
//! are resolved, so a partition's batches land in the order they were sent.
//!
//! Now and then the producer bumps its epoch on purpose, and the old incarnation lives on as a
//! *zombie*: a task on the same client node that keeps sending new values under the old
//! producer id and epoch, continuing its sequences, for a drawn while. Its sends are recorded
//! under a process of their own ([`ZOMBIE_PROCESS_BASE`]) with their producer stamp; once the
//! new epoch is acknowledged on a partition the broker must refuse them there, which
//! `sluice_core::checker::fencing` judges (zombie-write).

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use kafka_protocol::messages::init_producer_id_request::InitProducerIdRequest;
use kafka_protocol::messages::{ProduceRequest, ProducerId};
use sluice_core::history::{describe, Acks, OpKind, Outcome, ProducerStamp};
use sluice_core::rng::Rng;
use sluice_node::client::Connection;
use tokio::sync::mpsc;

use crate::client::{key, produce_request_as, CallError, Client, CONNECT_TIMEOUT, REQUEST_TIMEOUT};
use crate::ops::Recorded;
use crate::params::{Params, PipelineParams};
use crate::trace::Trace;
use crate::workload::{record_timestamp, refused_before_write};

/// Produce requests one partition keeps in flight at most: Kafka's
/// `max.in.flight.requests.per.connection` with idempotence, which the broker's memory of the
/// last five batches per producer and partition (`PRODUCER_BATCHES_REMEMBERED`) is sized for.
pub const IN_FLIGHT_PER_PARTITION_MAX: usize = 5;
/// Sends queued for the sender at most; beyond it the workload waits (Kafka's `buffer.memory`).
pub const QUEUED_SENDS_MAX: usize = 32;
/// Batches the sender holds at most (queued, in flight and waiting for a retry); beyond it
/// the workload's queue fills and the workload waits.
const BATCHES_HELD_MAX: usize = 64;
/// Attempts per batch (the first try and its retries).
const ATTEMPTS_MAX: u32 = 6;
/// Voluntary epoch bumps per producer at most: each zombie takes a process number of its own.
const BUMPS_MAX: u32 = 99;
/// Zombie `b` of client process `p` records its sends as process
/// `ZOMBIE_PROCESS_BASE + p * 100 + b` (above the group members' numbers).
pub const ZOMBIE_PROCESS_BASE: u32 = 2000;
/// Produce request version (as the rest of the workload).
const PRODUCE_VERSION: i16 = 9;
/// The broker's answer to a retried batch it has but whose offset it no longer knows.
const DUPLICATE_SEQUENCE_NUMBER: i16 = 46;

/// Error codes that retire the producer's identity for a partition: the sequence no longer
/// fits what the broker has (OUT_OF_ORDER_SEQUENCE_NUMBER), the epoch was fenced
/// (INVALID_PRODUCER_EPOCH, PRODUCER_FENCED), or the broker forgot the producer
/// (UNKNOWN_PRODUCER_ID).
fn retires_identity(code: i16) -> bool {
    [45, 47, 59, 90].contains(&code)
}

/// Backoff before the next attempt after `attempts` tries.
fn backoff_ms(attempts: u32) -> u64 {
    50 << attempts.clamp(1, 4)
}

/// One send the workload asked for.
pub struct SendJob {
    pub partition: i32,
    pub acks: Acks,
    pub value: u64,
    pub invoke_ms: u64,
}

fn acks_code(acks: Acks) -> i16 {
    match acks {
        Acks::All => -1,
        Acks::One => 1,
        Acks::Zero => 0,
    }
}

struct Batch {
    job: SendJob,
    /// The identity and sequence it was numbered with at its first attempt; every retry is
    /// identical.
    numbered: Option<(ProducerStamp, i32)>,
    attempts: u32,
    /// Some attempt ended without an answer (or with one that does not say it was refused),
    /// so the batch may be in the log.
    maybe_written: bool,
    last_error: String,
}

/// One partition's queue and connection.
struct Lane {
    partition: i32,
    conn: Option<Connection>,
    /// In the order the workload sent them; the first `in_flight.len()` are in flight on
    /// `conn`, in this order.
    queue: VecDeque<Batch>,
    /// (correlation id, deadline in simulated ms) of each request in flight.
    in_flight: VecDeque<(i32, u64)>,
    /// The next sequence of the producer's current identity here.
    next_sequence: i32,
    /// No attempt before this simulated time (backoff after an error).
    retry_at_ms: u64,
}

/// The sender task's state.
pub struct Sender {
    process: u32,
    bootstrap: Vec<String>,
    client: Client,
    params: Params,
    pipeline: PipelineParams,
    rng: Rng,
    trace: Trace,
    source: String,
    deadline_ms: u64,
    lanes: BTreeMap<i32, Lane>,
    /// The current identity; `None` until InitProducerId answers (again).
    identity: Option<ProducerStamp>,
    /// The identity to bump from when a new one is needed (KIP-360); `None`: ask for a new id.
    bump_from: Option<ProducerStamp>,
    next_bump_ms: u64,
    bumps: u32,
    zombies: Vec<tokio::task::JoinHandle<Vec<Recorded>>>,
    ops: Vec<Recorded>,
    /// When the workload invoked the last send: the history orders a process's operations by
    /// invocation, so each send must have a millisecond of its own.
    last_invoke_ms: Option<u64>,
}

impl Sender {
    pub fn new(
        process: u32,
        bootstrap: Vec<String>,
        params: Params,
        mut rng: Rng,
        trace: Trace,
        deadline_ms: u64,
    ) -> Sender {
        let pipeline = params
            .pipeline
            .clone()
            .expect("a sender runs only with pipeline parameters");
        assert_eq!(pipeline.process, process);
        let lanes = (0..params.partitions)
            .map(|partition| {
                let lane = Lane {
                    partition,
                    conn: None,
                    queue: VecDeque::new(),
                    in_flight: VecDeque::new(),
                    next_sequence: 0,
                    retry_at_ms: 0,
                };
                (partition, lane)
            })
            .collect();
        let next_bump_ms =
            trace.now_ms() + rng.between(pipeline.bump_interval_ms.0, pipeline.bump_interval_ms.1);
        Sender {
            process,
            client: Client::new(&bootstrap),
            bootstrap,
            params,
            pipeline,
            rng,
            trace,
            source: format!("client-{process}"),
            deadline_ms,
            lanes,
            identity: None,
            bump_from: None,
            next_bump_ms,
            bumps: 0,
            zombies: Vec::new(),
            ops: Vec::new(),
            last_invoke_ms: None,
        }
    }

    /// Runs until the workload closed the queue and every send is resolved; returns the sends'
    /// operations and the zombies'.
    pub async fn run(mut self, mut queue: mpsc::Receiver<SendJob>) -> Vec<Recorded> {
        let mut open = true;
        loop {
            while open && self.held() < BATCHES_HELD_MAX {
                match queue.try_recv() {
                    Ok(job) => self.enqueue(job),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => open = false,
                }
            }
            if self.idle() {
                if !open {
                    break;
                }
                match queue.recv().await {
                    Some(job) => self.enqueue(job),
                    None => open = false,
                }
                continue;
            }
            self.ensure_identity().await;
            if open {
                self.maybe_bump().await;
            }
            self.send_ready().await;
            self.check_invariants();
            self.wait_for_progress().await;
        }
        assert!(self.lanes.values().all(|l| l.in_flight.is_empty()));
        let mut ops = std::mem::take(&mut self.ops);
        for zombie in std::mem::take(&mut self.zombies) {
            ops.extend(zombie.await.expect("zombie task"));
        }
        ops
    }

    fn enqueue(&mut self, job: SendJob) {
        assert!(
            self.last_invoke_ms.is_none_or(|last| last < job.invoke_ms),
            "two sends of one process invoked in the same millisecond"
        );
        self.last_invoke_ms = Some(job.invoke_ms);
        let lane = self
            .lanes
            .get_mut(&job.partition)
            .expect("a known partition");
        lane.queue.push_back(Batch {
            job,
            numbered: None,
            attempts: 0,
            maybe_written: false,
            last_error: String::new(),
        });
    }

    fn check_invariants(&self) {
        for lane in self.lanes.values() {
            assert!(lane.in_flight.len() <= IN_FLIGHT_PER_PARTITION_MAX);
            assert!(lane.in_flight.len() <= lane.queue.len());
            assert!(lane.conn.is_some() || lane.in_flight.is_empty());
            // Numbered batches come first, each identity's in sequence order.
            let numbered: Vec<(ProducerStamp, i32)> =
                lane.queue.iter().map_while(|b| b.numbered).collect();
            assert!(lane
                .queue
                .iter()
                .skip(numbered.len())
                .all(|b| b.numbered.is_none()));
            for pair in numbered.windows(2) {
                assert!(pair[0].0 != pair[1].0 || pair[0].1.wrapping_add(1) == pair[1].1);
            }
        }
        assert!(self.held() <= BATCHES_HELD_MAX);
    }

    fn held(&self) -> usize {
        self.lanes.values().map(|l| l.queue.len()).sum()
    }

    fn idle(&self) -> bool {
        self.lanes.values().all(|l| l.queue.is_empty())
    }

    /// Asks for an identity when the producer has none: a bump of the retired one, or a new id.
    async fn ensure_identity(&mut self) {
        if self.identity.is_some() {
            return;
        }
        let (id, epoch) = self
            .bump_from
            .map_or((-1, -1), |s| (s.producer_id, s.epoch));
        let request = InitProducerIdRequest::default()
            .with_transactional_id(None)
            .with_producer_id(ProducerId(id))
            .with_producer_epoch(epoch);
        let why = match self.client.call_checked(&request, 4).await {
            Ok(r) if r.error_code == 0 => {
                let stamp = ProducerStamp {
                    producer_id: r.producer_id.0,
                    epoch: r.producer_epoch,
                };
                self.trace
                    .record(&self.source, "producer-id", format!("{stamp}"));
                self.take_identity(stamp);
                return;
            }
            Ok(r) => {
                // The bump was refused: start over as a new producer id.
                self.bump_from = None;
                format!("InitProducerId error code {}", r.error_code)
            }
            Err(CallError::NotSent(why) | CallError::Unknown(why)) => {
                format!("InitProducerId: {why}")
            }
        };
        // Nothing can be numbered without an identity: count an attempt against the batches
        // waiting for one (never sent, so they fail once out of attempts), and wait a little.
        let now = self.trace.now_ms();
        let mut given_up = Vec::new();
        for lane in self.lanes.values_mut() {
            lane.retry_at_ms = now + backoff_ms(1);
            while lane.queue.front().is_some_and(|b| b.numbered.is_none()) {
                let batch = lane.queue.front_mut().expect("non-empty");
                batch.attempts += 1;
                batch.last_error = why.clone();
                if batch.attempts < ATTEMPTS_MAX {
                    break;
                }
                given_up.push(lane.queue.pop_front().expect("non-empty"));
            }
        }
        for batch in given_up {
            self.resolve(
                batch,
                Outcome::Fail(format!("{why} after {ATTEMPTS_MAX} attempts")),
            );
        }
    }

    /// Takes a new identity: every partition's sequence restarts at 0 under it.
    fn take_identity(&mut self, stamp: ProducerStamp) {
        self.identity = Some(stamp);
        self.bump_from = None;
        for lane in self.lanes.values_mut() {
            lane.next_sequence = 0;
        }
    }

    /// A voluntary epoch bump when one is due; the old incarnation lives on as a zombie.
    async fn maybe_bump(&mut self) {
        let now = self.trace.now_ms();
        let Some(old) = self.identity else {
            return;
        };
        if now < self.next_bump_ms || now >= self.deadline_ms || self.bumps >= BUMPS_MAX {
            return;
        }
        let (lo, hi) = self.pipeline.bump_interval_ms;
        self.next_bump_ms = now + self.rng.between(lo, hi);
        let request = InitProducerIdRequest::default()
            .with_transactional_id(None)
            .with_producer_id(ProducerId(old.producer_id))
            .with_producer_epoch(old.epoch);
        let Ok(r) = self.client.call_checked(&request, 4).await else {
            return;
        };
        if r.error_code != 0 {
            return;
        }
        let new = ProducerStamp {
            producer_id: r.producer_id.0,
            epoch: r.producer_epoch,
        };
        // The zombie continues the old incarnation's sequences, after every batch this
        // producer numbered under it.
        let sequences: BTreeMap<i32, i32> = self
            .lanes
            .values()
            .map(|l| (l.partition, l.next_sequence))
            .collect();
        let zombie_process = ZOMBIE_PROCESS_BASE + self.process * 100 + self.bumps;
        self.bumps += 1;
        let (lo, hi) = self.pipeline.zombie_lifetime_ms;
        let until_ms = (self.trace.now_ms() + self.rng.between(lo, hi)).min(self.deadline_ms);
        self.trace.record(
            &self.source,
            "epoch-bump",
            format!(
                "{old} -> {new}; zombie process {zombie_process} keeps {old} until {until_ms} ms"
            ),
        );
        let zombie = Zombie {
            process: zombie_process,
            stamp: old,
            sequences,
            client: Client::new(&self.bootstrap),
            partitions: self.params.partitions,
            acks_all_per_mille: self.params.acks_all_per_mille,
            think_ms: self.params.think_ms,
            clock_timestamps: self.params.retention.is_some(),
            rng: self.rng.fork(),
            trace: self.trace.clone(),
            until_ms,
        };
        self.zombies.push(tokio::spawn(zombie.run()));
        self.take_identity(new);
    }

    /// Sends every batch that may go: up to the in-flight limit per partition, numbering new
    /// batches under the current identity once the partition's older ones are resolved.
    async fn send_ready(&mut self) {
        let now = self.trace.now_ms();
        let partitions: Vec<i32> = self.lanes.keys().copied().collect();
        for partition in partitions {
            loop {
                let lane = &self.lanes[&partition];
                let next = lane.in_flight.len();
                if now < lane.retry_at_ms
                    || next >= IN_FLIGHT_PER_PARTITION_MAX
                    || next >= lane.queue.len()
                {
                    break;
                }
                if lane.queue[next].attempts >= ATTEMPTS_MAX {
                    if next == 0 && lane.queue[0].numbered.is_none() {
                        // Never sent (no identity, no connection): definitely not written.
                        let lane = self.lanes.get_mut(&partition).expect("known");
                        let batch = lane.queue.pop_front().expect("non-empty");
                        let why = format!("{} after {ATTEMPTS_MAX} attempts", batch.last_error);
                        self.resolve(batch, Outcome::Fail(why));
                        continue;
                    }
                    if next == 0 {
                        self.retire(partition, "out of attempts");
                        continue;
                    }
                    // It goes first once the batches ahead of it are resolved.
                    break;
                }
                if lane.queue[next].numbered.is_none() {
                    let Some(identity) = self.identity else {
                        break;
                    };
                    // A batch of an older identity still unresolved goes first: numbering this
                    // one now could let it land ahead of that one.
                    let older_ahead = lane
                        .queue
                        .iter()
                        .take(next)
                        .any(|b| b.numbered.map(|(s, _)| s) != Some(identity));
                    if older_ahead {
                        break;
                    }
                    let lane = self.lanes.get_mut(&partition).expect("known");
                    lane.queue[next].numbered = Some((identity, lane.next_sequence));
                    lane.next_sequence = lane.next_sequence.wrapping_add(1);
                }
                if self.lanes[&partition].conn.is_none() {
                    assert_eq!(next, 0, "requests in flight without a connection");
                    if let Err(why) = self.connect(partition).await {
                        let lane = self.lanes.get_mut(&partition).expect("known");
                        let head = lane.queue.front_mut().expect("non-empty");
                        head.attempts += 1;
                        head.last_error = why;
                        lane.retry_at_ms = now + backoff_ms(head.attempts);
                        break;
                    }
                }
                let lane = self.lanes.get_mut(&partition).expect("known");
                let batch = &mut lane.queue[next];
                let (stamp, sequence) = batch.numbered.expect("numbered above");
                let request: ProduceRequest = produce_request_as(
                    partition,
                    acks_code(batch.job.acks),
                    batch.job.value,
                    record_timestamp(
                        self.params.retention.is_some(),
                        &self.trace,
                        batch.job.invoke_ms,
                    ),
                    Some((stamp.producer_id, stamp.epoch, sequence)),
                );
                batch.attempts += 1;
                let conn = lane.conn.as_mut().expect("connected above");
                match conn.send(&request, PRODUCE_VERSION).await {
                    Ok(correlation_id) => {
                        let sent_ms = self.trace.now_ms();
                        let deadline = sent_ms + REQUEST_TIMEOUT.as_millis() as u64;
                        lane.in_flight.push_back((correlation_id, deadline));
                    }
                    Err(e) => {
                        // Part of it may have left: its fate is unknown like the rest in flight.
                        lane.in_flight.push_back((0, now));
                        self.drop_connection(partition, 0, format!("connection: {e}"));
                        break;
                    }
                }
            }
        }
    }

    async fn connect(&mut self, partition: i32) -> Result<(), String> {
        let Some(addr) = self.client.leader_addr(partition).await else {
            return Err(format!("no leader known for partition {partition}"));
        };
        let conn = tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect(&addr))
            .await
            .map_err(|_| "connect timed out".to_string())?
            .map_err(|e| {
                self.client.mark_stale();
                format!("connect: {e}")
            })?;
        self.lanes.get_mut(&partition).expect("known").conn = Some(conn);
        Ok(())
    }

    /// Waits for the oldest answer due (the request in flight with the earliest deadline), or,
    /// with nothing in flight, for the earliest backoff to end.
    async fn wait_for_progress(&mut self) {
        let now = self.trace.now_ms();
        let due = self
            .lanes
            .values()
            .filter_map(|l| {
                l.in_flight
                    .front()
                    .map(|&(id, deadline)| (deadline, l.partition, id))
            })
            .min();
        let Some((deadline, partition, correlation_id)) = due else {
            let wake_ms = self
                .lanes
                .values()
                .filter(|l| !l.queue.is_empty())
                .map(|l| l.retry_at_ms)
                .min()
                .unwrap_or(now)
                .max(now + 1);
            tokio::time::sleep(Duration::from_millis(wake_ms - now)).await;
            return;
        };
        let wait = Duration::from_millis(deadline.saturating_sub(now));
        let conn = self.lanes.get_mut(&partition).expect("known").conn.as_mut();
        let conn = conn.expect("requests in flight have a connection");
        let answer = tokio::time::timeout(
            wait,
            conn.receive::<ProduceRequest>(correlation_id, PRODUCE_VERSION),
        )
        .await;
        match answer {
            Ok(Ok(response)) => {
                let code_and_offset = response
                    .responses
                    .first()
                    .and_then(|t| t.partition_responses.first())
                    .map(|p| (p.error_code, p.base_offset));
                match code_and_offset {
                    Some(answer) => self.on_answer(partition, answer),
                    None => self.drop_connection(partition, 0, "an empty answer".to_string()),
                }
            }
            Ok(Err(e)) => self.drop_connection(partition, 0, format!("connection: {e}")),
            Err(_) => self.drop_connection(partition, 0, "request timed out".to_string()),
        }
        let lane = &self.lanes[&partition];
        if lane.conn.is_none()
            && lane
                .queue
                .front()
                .is_some_and(|b| b.attempts >= ATTEMPTS_MAX)
        {
            self.retire(partition, "out of attempts");
        }
    }

    /// The answer to the partition's oldest request in flight (its head batch).
    fn on_answer(&mut self, partition: i32, (code, base_offset): (i16, i64)) {
        let lane = self.lanes.get_mut(&partition).expect("known");
        lane.in_flight
            .pop_front()
            .expect("an answer to a request in flight");
        if code == 0 {
            let batch = lane.queue.pop_front().expect("in flight");
            self.resolve(batch, Outcome::Ok(base_offset.max(0) as u64));
            return;
        }
        if code == DUPLICATE_SEQUENCE_NUMBER {
            // A retry of a batch the broker has, whose offset it can no longer tell (below its
            // log start): written, as Kafka's client takes it, with no offset to check.
            let batch = lane.queue.pop_front().expect("in flight");
            let why = format!("error code {code}: a duplicate, offset unknown");
            self.resolve(batch, Outcome::Info(why));
            return;
        }
        self.client.mark_stale();
        let head = lane.queue.front_mut().expect("in flight");
        head.last_error = format!("error code {code}");
        if !refused_before_write(code) && !retires_identity(code) {
            // A timeout of acks=all, say: it may still be written.
            head.maybe_written = true;
        }
        if retires_identity(code) {
            self.retire(partition, &format!("error code {code}"));
            return;
        }
        // Retry from this batch on: the ones behind it are resent after it, in order.
        let why = format!("behind a batch answered with error code {code}");
        self.drop_connection(partition, 1, why);
    }

    /// Drops the partition's connection: every request still in flight on it (the batches from
    /// `first` on; those before were answered) has an unknown fate and is resent, in order,
    /// after a backoff.
    fn drop_connection(&mut self, partition: i32, first: usize, why: String) {
        let now = self.trace.now_ms();
        let lane = self.lanes.get_mut(&partition).expect("known");
        lane.conn = None;
        let in_flight = lane.in_flight.len();
        lane.in_flight.clear();
        for batch in lane.queue.iter_mut().skip(first).take(in_flight) {
            batch.maybe_written = true;
            batch.last_error.clone_from(&why);
        }
        let attempts = lane.queue.front().map_or(1, |b| b.attempts);
        lane.retry_at_ms = now + backoff_ms(attempts);
        self.client.mark_stale();
    }

    /// Gives up every batch of the partition that went out under an identity (retrying it under
    /// a new one could write it twice) and retires the current identity if they used it: its
    /// sequence here may now have a hole. Batches never sent are numbered afresh later.
    fn retire(&mut self, partition: i32, why: &str) {
        let lane = self.lanes.get_mut(&partition).expect("known");
        lane.conn = None;
        lane.in_flight.clear();
        let mut kept = VecDeque::new();
        let mut given_up = Vec::new();
        for batch in lane.queue.drain(..) {
            if batch.numbered.is_none() {
                kept.push_back(batch);
            } else {
                given_up.push(batch);
            }
        }
        lane.queue = kept;
        let mut retire_identity = false;
        for batch in given_up {
            retire_identity |= batch
                .numbered
                .is_some_and(|(stamp, _)| Some(stamp) == self.identity);
            let detail = format!(
                "{why}; given up after {} attempts ({})",
                batch.attempts, batch.last_error
            );
            let outcome = if batch.maybe_written {
                Outcome::Info(detail)
            } else {
                Outcome::Fail(detail)
            };
            self.resolve(batch, outcome);
        }
        if retire_identity {
            self.bump_from = self.identity.take();
        }
    }

    fn resolve(&mut self, batch: Batch, outcome: Outcome<u64>) {
        let kind = OpKind::Send {
            key: key(batch.job.partition),
            value: batch.job.value,
            acks: batch.job.acks,
            outcome,
            producer: batch.numbered.map(|(stamp, _)| stamp),
        };
        self.trace.record(&self.source, "op", describe(&kind));
        self.ops.push(Recorded {
            process: self.process,
            kind,
            invoke_ms: batch.job.invoke_ms,
            complete_ms: self.trace.now_ms(),
        });
    }
}

/// An older incarnation of the producer that keeps sending under its producer id and epoch
/// after the bump, one request at a time, until `until_ms`.
struct Zombie {
    process: u32,
    stamp: ProducerStamp,
    /// The next sequence per partition under `stamp`.
    sequences: BTreeMap<i32, i32>,
    client: Client,
    partitions: i32,
    acks_all_per_mille: u32,
    think_ms: (u64, u64),
    /// Record timestamps from the simulated wall clock ([`record_timestamp`]).
    clock_timestamps: bool,
    rng: Rng,
    trace: Trace,
    until_ms: u64,
}

impl Zombie {
    async fn run(mut self) -> Vec<Recorded> {
        let source = format!("zombie-{}", self.process);
        let mut ops = Vec::new();
        let mut next_value: u64 = 0;
        loop {
            let think = self.rng.between(self.think_ms.0, self.think_ms.1);
            tokio::time::sleep(Duration::from_millis(think)).await;
            let invoke_ms = self.trace.now_ms();
            if invoke_ms >= self.until_ms {
                break;
            }
            let partition = self.rng.below(self.partitions as u64) as i32;
            let acks = if self.rng.chance(self.acks_all_per_mille) {
                Acks::All
            } else {
                Acks::One
            };
            let value = (u64::from(self.process) << 40) | next_value;
            next_value += 1;
            let sequence = self.sequences.get(&partition).copied().unwrap_or(0);
            let request = produce_request_as(
                partition,
                acks_code(acks),
                value,
                record_timestamp(self.clock_timestamps, &self.trace, invoke_ms),
                Some((self.stamp.producer_id, self.stamp.epoch, sequence)),
            );
            // One attempt per value: a refusal says this request was not written, and nothing
            // else of this value was ever sent.
            let outcome = match self.client.produce(partition, &request).await {
                Ok(p) if p.error_code == 0 => Outcome::Ok(p.base_offset.max(0) as u64),
                Ok(p) if refused_before_write(p.error_code) || retires_identity(p.error_code) => {
                    Outcome::Fail(format!("error code {}", p.error_code))
                }
                Ok(p) => Outcome::Info(format!("error code {}", p.error_code)),
                Err(CallError::NotSent(why)) => Outcome::Fail(why),
                Err(CallError::Unknown(why)) => Outcome::Info(why),
            };
            // A sequence that may be in the log is never reused for another value (the broker
            // would answer the new value with the old one's offset).
            if !outcome.is_fail() {
                self.sequences.insert(partition, sequence.wrapping_add(1));
            }
            let kind = OpKind::Send {
                key: key(partition),
                value,
                acks,
                outcome,
                producer: Some(self.stamp),
            };
            self.trace.record(&source, "op", describe(&kind));
            ops.push(Recorded {
                process: self.process,
                kind,
                invoke_ms,
                complete_ms: self.trace.now_ms(),
            });
        }
        ops
    }
}
