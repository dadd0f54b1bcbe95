//! The broker's event loop: the shell around the core [`Node`].
//!
//! One task owns the node and its [`Disk`]. Its loop takes the next input — a finished storage
//! job, a peer message, a client request, or the node's timeout — hands it to
//! [`Node::handle`], then carries out everything [`Node::poll_output`] gives: storage ops on the
//! disk (page-cache writes at once, blocking work as jobs on other threads), messages to the
//! transport, replies to their connections. It decides nothing: every policy is the node's.
//!
//! Connections never touch broker state; they send decoded requests here (an [`Envelope`]) and
//! write back the responses in order.

use std::collections::{BTreeMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kafka_protocol::messages::{ApiKey, ResponseKind};
pub use sluice_core::checker::replicas::Observation;
use sluice_core::format;
use sluice_core::node::{
    ClientInfo, Disk, Finished, Input, Job, Node, Output, PeerMessage, RequestId, StorageDone,
};
use sluice_core::storage::Storage;
use sluice_core::time::{Instant as CoreInstant, Now};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::codec::{self, Decoded};
use crate::config::Config;
use crate::rpc::{Inbox, Transport};
use crate::wire::Request;

/// A request from a connection; `reply` is `None` when the client expects no answer (acks=0).
#[derive(Debug)]
pub struct Envelope {
    pub request: Request,
    pub reply: Option<oneshot::Sender<ResponseKind>>,
    /// The client's address (DescribeGroups shows it as a member's host).
    pub peer: Option<std::net::SocketAddr>,
}

/// Inputs of one kind handled per wake-up before outputs are carried out; bounds the latency one
/// busy connection (or peer) can add to the others.
const INPUTS_PER_STEP_MAX: usize = 256;
/// Storage completions fed back in one round of carrying out outputs; the rest wait for the next
/// turn of the loop (a bound on one turn, not on the node).
const COMPLETIONS_PER_STEP_MAX: usize = 4096;

/// Receives what the replicas on a broker report (see [`Broker::set_observer`]).
pub type Observer = std::sync::Arc<dyn Fn(Observation) + Send + Sync>;

/// Says how long the next fsync should take in simulated time (see [`Broker::set_sync_delay`]).
pub type SyncDelay = std::sync::Arc<dyn Fn() -> Duration + Send + Sync>;

/// A reply owed to a connection: where it goes, and the version to encode it in.
struct Owed {
    reply: oneshot::Sender<ResponseKind>,
    api_key: ApiKey,
    version: i16,
}

pub struct Broker<S: Storage> {
    config: Config,
    node: Node,
    disk: Disk<S>,
    /// The monotonic clock's origin for the node.
    origin: Instant,
    transport: Option<Transport<PeerMessage>>,
    inbox: Option<Inbox<PeerMessage>>,
    owed: BTreeMap<RequestId, Owed>,
    next_request: RequestId,
    jobs_tx: mpsc::UnboundedSender<Finished<S>>,
    jobs_rx: mpsc::UnboundedReceiver<Finished<S>>,
    /// Storage completions not yet handed to the node.
    done: VecDeque<StorageDone>,
    observer: Option<Observer>,
    sync_delay: Option<SyncDelay>,
    /// Told once the node is registered and unfenced (it may serve clients).
    ready: Option<oneshot::Sender<()>>,
    is_ready: bool,
}

/// Wall-clock milliseconds: record timestamps and retention are in Kafka's epoch milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl<S: Storage> Broker<S> {
    /// Opens the data directory: checks its format (core's [`format`] decides; a new directory
    /// gets the current version), then the metadata log (its image names the partitions this
    /// node hosts), then every partition it assigns here, before anything is served. A directory
    /// of another format is refused with an `InvalidData` error carrying a
    /// [`format::DataDirRefused`].
    pub fn open(config: Config, storage: S) -> io::Result<Broker<S>> {
        let decision = format::open_data_dir(&storage, &config.data_dir)?;
        match decision {
            format::Decision::Initialise => tracing::info!(
                data_dir = %config.data_dir.display(),
                format = format::FORMAT_VERSION,
                "new data directory: format version stored"
            ),
            format::Decision::Upgrade { from } => tracing::info!(
                data_dir = %config.data_dir.display(),
                from,
                to = format::FORMAT_VERSION,
                "data directory format upgraded (an older sluice now refuses it)"
            ),
            format::Decision::Open { .. } => {}
        }
        // Seeded once from the OS (or madsim): ids, election jitter, member ids.
        let seed = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        let origin = Instant::now();
        let now = Now::new(CoreInstant::ZERO, now_ms());
        let codecs = Box::new(crate::compression::KafkaCodecs);
        let node = Node::new(config.node_config(), codecs, seed, now)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let (jobs_tx, jobs_rx) = mpsc::unbounded_channel();
        let mut broker = Broker {
            disk: Disk::new(storage),
            config,
            node,
            origin,
            transport: None,
            inbox: None,
            owed: BTreeMap::new(),
            next_request: 0,
            jobs_tx,
            jobs_rx,
            done: VecDeque::new(),
            observer: None,
            sync_delay: None,
            ready: None,
            is_ready: false,
        };
        broker.open_synchronously()?;
        tracing::info!(
            data_dir = %broker.config.data_dir.display(),
            topics = broker.node.topic_count(),
            partitions = broker.node.hosted_partitions(),
            "data directory opened"
        );
        Ok(broker)
    }

    /// Runs the node's start (recovery of every log) to completion on this thread: nothing is
    /// served before it, as before a Kafka broker is RUNNING.
    fn open_synchronously(&mut self) -> io::Result<()> {
        for _ in 0..1_000_000 {
            let mut jobs = Vec::new();
            if let Some(reason) = self.carry_out(&mut jobs) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "cannot open the data directory {}: {reason}",
                        self.config.data_dir.display()
                    ),
                ));
            }
            if jobs.is_empty() && self.done.is_empty() {
                return Ok(());
            }
            // A finished job may release others (the removal of a closed log's directory,
            // an open that waited for it): they run in this same round.
            let mut jobs = VecDeque::from(jobs);
            while let Some(job) = jobs.pop_front() {
                let finished = job.run();
                let mut more = Vec::new();
                let mut done = Vec::new();
                self.disk.finish(finished, &mut done, &mut more);
                self.done.extend(done);
                jobs.extend(more);
            }
            self.feed_done();
        }
        Err(io::Error::other(format!(
            "the data directory {} never finished opening",
            self.config.data_dir.display()
        )))
    }

    /// Reports every replica's leaderships and high watermarks to `observer` from now on (the
    /// simulator checks them across nodes).
    pub fn set_observer(&mut self, observer: Observer) {
        self.observer = Some(observer);
        self.node.set_observe(true);
    }

    /// Delays the completion of every fsync by what `delay` says at the time (the simulator's
    /// slow disks: its in-memory store syncs at once).
    pub fn set_sync_delay(&mut self, delay: SyncDelay) {
        self.sync_delay = Some(delay);
    }

    /// Connects the broker to its peers (a node of a multi-node cluster).
    pub fn attach_peers(&mut self, transport: Transport<PeerMessage>, inbox: Inbox<PeerMessage>) {
        self.transport = Some(transport);
        self.inbox = Some(inbox);
    }

    /// `ready` is told once this node is registered and unfenced: the listener should accept
    /// clients only then, as a Kafka broker serves only once it is RUNNING.
    pub fn notify_ready(&mut self, ready: oneshot::Sender<()>) {
        if self.is_ready {
            let _ = ready.send(());
        } else {
            self.ready = Some(ready);
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Runs until every sender of `requests` is gone.
    pub async fn run(mut self, mut requests: mpsc::Receiver<Envelope>) {
        let mut inbox = self.inbox.take();
        loop {
            let deadline = self.deadline();
            tokio::select! {
                biased;
                Some(finished) = self.jobs_rx.recv() => {
                    self.finish(finished);
                    for _ in 1..INPUTS_PER_STEP_MAX {
                        match self.jobs_rx.try_recv() {
                            Ok(finished) => self.finish(finished),
                            Err(_) => break,
                        }
                    }
                }
                Some((from, message)) = async {
                    match inbox.as_mut() {
                        Some(inbox) => inbox.recv().await,
                        None => std::future::pending().await,
                    }
                } => {
                    self.handle(Input::Peer { from, message });
                    if let Some(inbox) = inbox.as_mut() {
                        for _ in 1..INPUTS_PER_STEP_MAX {
                            match inbox.try_recv() {
                                Ok((from, message)) => self.handle(Input::Peer { from, message }),
                                Err(_) => break,
                            }
                        }
                    }
                }
                envelope = requests.recv() => {
                    let Some(envelope) = envelope else { break };
                    self.on_request(envelope);
                    for _ in 1..INPUTS_PER_STEP_MAX {
                        match requests.try_recv() {
                            Ok(envelope) => self.on_request(envelope),
                            Err(_) => break,
                        }
                    }
                }
                _ = tokio::time::sleep_until(deadline) => self.handle(Input::Timeout),
            }
            self.step();
        }
        tracing::info!("broker stopped");
    }

    fn now(&self) -> Now {
        Now::new(CoreInstant::from_duration(self.origin.elapsed()), now_ms())
    }

    /// When the node next wants a timeout, on tokio's clock.
    fn deadline(&self) -> Instant {
        match self.node.poll_timeout() {
            Some(at) => self.origin + at.since_origin(),
            None => Instant::now() + Duration::from_secs(3600),
        }
    }

    fn handle(&mut self, input: Input) {
        let now = self.now();
        self.node.handle(now, input, &self.disk);
    }

    fn on_request(&mut self, envelope: Envelope) {
        let Envelope {
            request,
            reply,
            peer,
        } = envelope;
        let version = request.version;
        match codec::decode(request.body, version) {
            Decoded::Answer(response) => {
                if let Some(reply) = reply {
                    let _ = reply.send(response);
                }
            }
            Decoded::Unsupported => {
                // Connections only forward the APIs advertised in ApiVersions.
                tracing::warn!(api = ?request.api_key, "request for an API this broker does not serve");
            }
            Decoded::Core(body) => {
                self.next_request += 1;
                let id = self.next_request;
                if let Some(reply) = reply {
                    self.owed.insert(
                        id,
                        Owed {
                            reply,
                            api_key: request.api_key,
                            version,
                        },
                    );
                }
                let client = ClientInfo {
                    client_id: request.client_id.unwrap_or_default(),
                    // As Kafka's coordinator shows it (Java's `InetAddress.toString()`).
                    host: peer.map_or_else(String::new, |p| format!("/{}", p.ip())),
                };
                self.handle(Input::Client {
                    request: id,
                    body,
                    client,
                });
            }
        }
    }

    /// A storage job finished.
    fn finish(&mut self, finished: Finished<S>) {
        let mut done = Vec::new();
        let mut jobs = Vec::new();
        self.disk.finish(finished, &mut done, &mut jobs);
        self.done.extend(done);
        self.spawn_jobs(jobs);
    }

    /// Carries out the node's outputs and feeds back what the disk answered at once, until the
    /// node has nothing more (or the turn's bound is reached).
    fn step(&mut self) {
        for _ in 0..COMPLETIONS_PER_STEP_MAX {
            let mut jobs = Vec::new();
            if let Some(reason) = self.carry_out(&mut jobs) {
                self.stop(&reason);
            }
            self.spawn_jobs(jobs);
            if self.done.is_empty() {
                return;
            }
            self.feed_done();
        }
    }

    /// Hands every waiting storage completion to the node.
    fn feed_done(&mut self) {
        while let Some(done) = self.done.pop_front() {
            let now = self.now();
            self.node.handle(now, Input::Storage(done), &self.disk);
        }
    }

    /// Carries out every output of the node; blocking storage work goes to `jobs`. Returns why
    /// the node stopped, if it did.
    fn carry_out(&mut self, jobs: &mut Vec<Job<S>>) -> Option<String> {
        let mut done = Vec::new();
        let mut stop = None;
        while let Some(output) = self.node.poll_output() {
            match output {
                Output::Storage(op) => self.disk.execute(op, &mut done, jobs),
                Output::Send { to, message } => {
                    // Drops are counted by the transport; every sender retries or repeats.
                    if let Some(transport) = &self.transport {
                        let _ = transport.send(to, &message);
                    }
                }
                Output::Reply { request, reply } => {
                    if let Some(owed) = self.owed.remove(&request) {
                        let response = codec::encode(reply, owed.api_key, owed.version);
                        let _ = owed.reply.send(response);
                    }
                }
                Output::Ready => {
                    self.is_ready = true;
                    tracing::info!(
                        node_id = self.config.node_id,
                        "registered with the controller; serving clients"
                    );
                    if let Some(ready) = self.ready.take() {
                        let _ = ready.send(());
                    }
                }
                Output::Observe(observation) => {
                    if let Some(observer) = &self.observer {
                        observer(observation);
                    }
                }
                Output::Stop { reason } => stop = Some(reason),
            }
        }
        self.done.extend(done);
        stop
    }

    /// Runs blocking storage work off the event loop. The simulated store is in memory and
    /// madsim forbids blocking threads, so there it runs in a task after the simulated delay.
    fn spawn_jobs(&self, jobs: Vec<Job<S>>) {
        for job in jobs {
            let tx = self.jobs_tx.clone();
            let delay = match (&self.sync_delay, job.blocks_on_fsync()) {
                (Some(d), true) => Some(d()),
                _ => None,
            };
            tokio::spawn(async move {
                if let Some(delay) = delay {
                    tokio::time::sleep(delay).await;
                }
                #[cfg(not(madsim))]
                let finished = match tokio::task::spawn_blocking(move || job.run()).await {
                    Ok(finished) => finished,
                    Err(e) => panic!("a storage job panicked: {e}"),
                };
                #[cfg(madsim)]
                let finished = job.run();
                let _ = tx.send(finished);
            });
        }
    }

    fn stop(&mut self, reason: &str) {
        // Nothing sensible is left to do: a node must not act on a view it cannot keep.
        tracing::error!("{reason}; stopping");
        #[cfg(not(madsim))]
        std::process::exit(70);
        #[cfg(madsim)]
        panic!("the node stopped: {reason}");
    }
}
