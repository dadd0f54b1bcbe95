//! Node-to-node RPC: typed messages over one multiplexed TCP connection per node pair.
//!
//! A [`Transport<T>`] is one node's end. [`Transport::send`] never blocks: it encodes the message
//! and puts it on a bounded per-peer queue. A task per peer owns the pair's connection; its writer
//! takes everything queued and writes it as one frame, so the heartbeats of many Raft groups travel
//! together. Messages that arrive are handed to the owner on a bounded channel of `(from, msg)`.
//!
//! **Loss, not back-pressure.** A full peer queue, a full inbox, a frame lost with a broken
//! connection: each drops messages and counts them ([`Metrics`]). Raft tolerates loss like any
//! network's, and a stalled peer must never stall the node. Within one connection messages arrive
//! in the order they were sent (TCP ordering; no acks, no retransmission); across a reconnect a
//! suffix may be missing, never reordered.
//!
//! **One connection per pair: the lower node id dials.** For peers with a higher id this node
//! dials (using the address book) and reconnects with jittered exponential backoff; peers with a
//! lower id dial it, and it only accepts. Both directions share the connection (read and write
//! halves via `tokio::io::split`). If a lower-id peer dials again while its old connection still
//! looks alive (it restarted), the new connection replaces the old one. Every node must list every
//! peer in its address book (the address of a lower-id peer is unused, but accepts are refused
//! from ids not in the book).
//!
//! **Wire format.** The dialer sends a handshake of [`HANDSHAKE_BYTES`] (magic
//! [`HANDSHAKE_MAGIC`], [`PROTOCOL_VERSION`] and its node id, big-endian), and the acceptor
//! answers with its own, so each side knows who is at the other end. Then frames in both
//! directions: a 4-byte big-endian body length, then the body, which is a bincode
//! (`DefaultOptions`: varint, little-endian) `Vec<T>`. Bad handshakes, oversized or undecodable
//! frames close that one connection with a log line; peer bytes never panic the node.
//!
//! **Liveness.** A connection with nothing to send sends an empty frame every keepalive
//! interval; one that receives nothing for the idle timeout is closed (and redialed by the lower
//! id), so a peer that vanished without closing its socket is noticed. Writes have a timeout too.
//!
//! **In flight.** Each peer has one frame being written at most; the writer waits for it (with a
//! timeout) before building the next. Beyond that, the bound is the socket buffers and the queue.
//!
//! Sends to this node itself are refused ([`Dropped::NoRoute`]): local delivery is the owner's
//! business.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bincode::Options;
use serde::de::DeserializeOwned;
use serde::Serialize;
use sluice_core::rng::Rng;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// A node's id, as in the cluster configuration.
pub type NodeId = u64;

/// Where the owner receives `(sender, message)` for every message peers send.
pub type Inbox<T> = mpsc::Receiver<(NodeId, T)>;

/// The first bytes of every RPC connection ("Sluice RPC").
pub const HANDSHAKE_MAGIC: [u8; 4] = *b"SLRP";
/// Bumped whenever the frame format or the meaning of a message changes incompatibly.
pub const PROTOCOL_VERSION: u32 = 1;
/// Magic, version (u32) and node id (u64).
pub const HANDSHAKE_BYTES: usize = 16;
/// The body length that precedes every frame.
pub const FRAME_HEADER_BYTES: usize = 4;
/// The varint message count at the front of a frame body takes at most this many bytes.
const FRAME_COUNT_BYTES_MAX: usize = 9;

/// Default of [`Config::peer_queue_messages_max`].
pub const PEER_QUEUE_MESSAGES_MAX_DEFAULT: usize = 4096;
/// Default of [`Config::peer_queue_bytes_max`].
pub const PEER_QUEUE_BYTES_MAX_DEFAULT: u64 = 64 * 1024 * 1024;
/// Default of [`Config::message_bytes_max`]: a Raft append of 1 MiB payload plus its envelope.
pub const MESSAGE_BYTES_MAX_DEFAULT: usize = 2 * 1024 * 1024;
/// Default of [`Config::frame_bytes_max`].
pub const FRAME_BYTES_MAX_DEFAULT: usize = 4 * 1024 * 1024;
/// Default of [`Config::inbox_messages_max`].
pub const INBOX_MESSAGES_MAX_DEFAULT: usize = 16 * 1024;
/// Default of [`Config::backoff_min_ms`].
pub const BACKOFF_MIN_MS_DEFAULT: u64 = 50;
/// Default of [`Config::backoff_max_ms`].
pub const BACKOFF_MAX_MS_DEFAULT: u64 = 2000;
/// Default of [`Config::connect_timeout_ms`].
pub const CONNECT_TIMEOUT_MS_DEFAULT: u64 = 1000;
/// Default of [`Config::handshake_timeout_ms`].
pub const HANDSHAKE_TIMEOUT_MS_DEFAULT: u64 = 1000;
/// Default of [`Config::write_timeout_ms`].
pub const WRITE_TIMEOUT_MS_DEFAULT: u64 = 2000;
/// Default of [`Config::keepalive_interval_ms`].
pub const KEEPALIVE_INTERVAL_MS_DEFAULT: u64 = 500;
/// Default of [`Config::idle_timeout_ms`].
pub const IDLE_TIMEOUT_MS_DEFAULT: u64 = 5000;
/// Accepted connections in their handshake at once; more are closed at once.
pub const HANDSHAKES_PENDING_MAX: usize = 64;
/// Handshaken connections waiting for their peer's task to adopt them.
const INCOMING_PENDING_MAX: usize = 2;
/// Read buffer of one connection.
const READ_BUFFER_BYTES: usize = 64 * 1024;

const _: () = assert!(MESSAGE_BYTES_MAX_DEFAULT + FRAME_COUNT_BYTES_MAX <= FRAME_BYTES_MAX_DEFAULT);
const _: () = assert!(FRAME_BYTES_MAX_DEFAULT <= u32::MAX as usize);
const _: () =
    assert!(BACKOFF_MIN_MS_DEFAULT >= 1 && BACKOFF_MIN_MS_DEFAULT <= BACKOFF_MAX_MS_DEFAULT);
const _: () = assert!(MESSAGE_BYTES_MAX_DEFAULT as u64 <= PEER_QUEUE_BYTES_MAX_DEFAULT);
const _: () = assert!(
    IDLE_TIMEOUT_MS_DEFAULT >= 2 * KEEPALIVE_INTERVAL_MS_DEFAULT + WRITE_TIMEOUT_MS_DEFAULT
);

/// Limits and timings of one transport. `Config::default()` uses the `*_DEFAULT` constants.
#[derive(Clone, Debug)]
pub struct Config {
    /// Messages waiting for one peer at most; beyond it `send` drops.
    pub peer_queue_messages_max: usize,
    /// Encoded bytes waiting for one peer at most; beyond it `send` drops.
    pub peer_queue_bytes_max: u64,
    /// One encoded message at most; larger ones are refused by `send`.
    pub message_bytes_max: usize,
    /// One frame body at most, sent or received; a larger incoming frame closes the connection.
    pub frame_bytes_max: usize,
    /// Received messages waiting for the owner at most; beyond it they are dropped.
    pub inbox_messages_max: usize,
    /// First reconnect delay; doubles per failure up to `backoff_max_ms`, each drawn with jitter
    /// from `[delay / 2, delay]`.
    pub backoff_min_ms: u64,
    pub backoff_max_ms: u64,
    pub connect_timeout_ms: u64,
    pub handshake_timeout_ms: u64,
    /// A frame not written and flushed within this closes the connection (a dead peer whose
    /// socket buffer filled up).
    pub write_timeout_ms: u64,
    /// A connection with nothing to send for this long sends an empty frame, so the other side
    /// can tell a quiet peer from a dead one.
    pub keepalive_interval_ms: u64,
    /// A connection that receives nothing (not even a keepalive) for this long is closed: the
    /// peer crashed without closing it, or the network between is cut.
    pub idle_timeout_ms: u64,
    /// Seeds the reconnect jitter.
    pub seed: u64,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            peer_queue_messages_max: PEER_QUEUE_MESSAGES_MAX_DEFAULT,
            peer_queue_bytes_max: PEER_QUEUE_BYTES_MAX_DEFAULT,
            message_bytes_max: MESSAGE_BYTES_MAX_DEFAULT,
            frame_bytes_max: FRAME_BYTES_MAX_DEFAULT,
            inbox_messages_max: INBOX_MESSAGES_MAX_DEFAULT,
            backoff_min_ms: BACKOFF_MIN_MS_DEFAULT,
            backoff_max_ms: BACKOFF_MAX_MS_DEFAULT,
            connect_timeout_ms: CONNECT_TIMEOUT_MS_DEFAULT,
            handshake_timeout_ms: HANDSHAKE_TIMEOUT_MS_DEFAULT,
            write_timeout_ms: WRITE_TIMEOUT_MS_DEFAULT,
            keepalive_interval_ms: KEEPALIVE_INTERVAL_MS_DEFAULT,
            idle_timeout_ms: IDLE_TIMEOUT_MS_DEFAULT,
            seed: 0,
        }
    }
}

impl Config {
    fn validate(&self) -> io::Result<()> {
        let ok = self.peer_queue_messages_max >= 1
            && self.peer_queue_bytes_max >= self.message_bytes_max as u64
            && self.message_bytes_max >= 1
            && self.message_bytes_max + FRAME_COUNT_BYTES_MAX <= self.frame_bytes_max
            && self.frame_bytes_max <= u32::MAX as usize
            && self.inbox_messages_max >= 1
            && self.backoff_min_ms >= 1
            && self.backoff_min_ms <= self.backoff_max_ms
            && self.connect_timeout_ms >= 1
            && self.handshake_timeout_ms >= 1
            && self.write_timeout_ms >= 1
            && self.keepalive_interval_ms >= 1
            && self.idle_timeout_ms >= 2 * self.keepalive_interval_ms;
        if ok {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("inconsistent rpc config: {self:?}"),
            ))
        }
    }
}

/// Why `send` dropped a message (it is also counted in [`Metrics`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dropped {
    /// The peer's queue is at its message or byte limit.
    QueueFull,
    /// The encoded message exceeds `message_bytes_max`.
    TooLarge,
    /// The peer is not in the address book (or is this node).
    NoRoute,
    /// The message cannot be encoded by bincode (a bug in the message type).
    Unencodable,
}

/// Counters since the transport started.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Metrics {
    /// Messages written and flushed to a connection.
    pub messages_sent: u64,
    /// Frames written, keepalives (empty frames) included.
    pub frames_sent: u64,
    pub messages_dropped_queue_full: u64,
    pub messages_dropped_too_large: u64,
    pub messages_dropped_no_route: u64,
    pub messages_dropped_unencodable: u64,
    /// Messages in a frame whose connection broke while it was written.
    pub messages_dropped_write_failed: u64,
    /// Messages decoded from peers (including those then dropped at the inbox).
    pub messages_received: u64,
    /// Frames decoded, keepalives included.
    pub frames_received: u64,
    /// Received messages dropped because the inbox was full (or its receiver gone).
    pub messages_dropped_inbox_full: u64,
    /// Connections established with a peer (dialed or accepted, handshake done).
    pub connections: u64,
    /// Connections established with a peer that had one before.
    pub reconnects: u64,
    /// Incoming connections refused: bad handshake, unknown or wrong-side peer, too many pending.
    pub connections_refused: u64,
    /// Connections closed because a peer sent an oversized or undecodable frame.
    pub connections_closed_malformed: u64,
}

#[derive(Default)]
struct Counters {
    messages_sent: AtomicU64,
    frames_sent: AtomicU64,
    messages_dropped_queue_full: AtomicU64,
    messages_dropped_too_large: AtomicU64,
    messages_dropped_no_route: AtomicU64,
    messages_dropped_unencodable: AtomicU64,
    messages_dropped_write_failed: AtomicU64,
    messages_received: AtomicU64,
    frames_received: AtomicU64,
    messages_dropped_inbox_full: AtomicU64,
    connections: AtomicU64,
    reconnects: AtomicU64,
    connections_refused: AtomicU64,
    connections_closed_malformed: AtomicU64,
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// One node's end of the RPC mesh. Dropping it stops every task and closes every connection
/// (asynchronously; [`Transport::shutdown`] waits for it).
pub struct Transport<T: Serialize + DeserializeOwned + Send + 'static> {
    shared: Arc<Shared<T>>,
    acceptor: Option<JoinHandle<()>>,
    local_addr: SocketAddr,
}

struct Shared<T> {
    id: NodeId,
    config: Config,
    counters: Counters,
    inbox: mpsc::Sender<(NodeId, T)>,
    handshakes_pending: AtomicUsize,
    state: Mutex<State>,
}

struct State {
    /// Invariant: `peers` has exactly the keys of `addrs`, none of them this node's id.
    addrs: BTreeMap<NodeId, SocketAddr>,
    peers: BTreeMap<NodeId, PeerHandle>,
    rng: Rng,
}

struct PeerHandle {
    queue: mpsc::Sender<Vec<u8>>,
    queued_bytes: Arc<AtomicU64>,
    /// Handshaken connections from a lower-id peer; `None` for peers this node dials.
    incoming: Option<mpsc::Sender<TcpStream>>,
    task: JoinHandle<()>,
}

impl<T: Serialize + DeserializeOwned + Send + 'static> Transport<T> {
    /// Binds `addr` and serves as node `id`. Returns the transport and the receiver of every
    /// message peers send to it.
    pub async fn bind(
        id: NodeId,
        addr: SocketAddr,
        config: Config,
    ) -> io::Result<(Transport<T>, Inbox<T>)> {
        let listener = TcpListener::bind(addr).await?;
        Transport::serve(id, listener, config)
    }

    /// Serves as node `id` on an already bound listener. Must be called inside the runtime.
    pub fn serve(
        id: NodeId,
        listener: TcpListener,
        config: Config,
    ) -> io::Result<(Transport<T>, Inbox<T>)> {
        config.validate()?;
        let local_addr = listener.local_addr()?;
        let (inbox, inbox_rx) = mpsc::channel(config.inbox_messages_max);
        let rng = Rng::new(config.seed ^ id.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let shared = Arc::new(Shared {
            id,
            config,
            counters: Counters::default(),
            inbox,
            handshakes_pending: AtomicUsize::new(0),
            state: Mutex::new(State {
                addrs: BTreeMap::new(),
                peers: BTreeMap::new(),
                rng,
            }),
        });
        let acceptor = tokio::spawn(accept_loop(shared.clone(), listener));
        tracing::info!(node = id, %local_addr, "rpc transport listening");
        Ok((
            Transport {
                shared,
                acceptor: Some(acceptor),
                local_addr,
            },
            inbox_rx,
        ))
    }

    pub fn id(&self) -> NodeId {
        self.shared.id
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Adds a peer, or changes its address (the next dial uses it). Must be called inside the
    /// runtime. Ignores this node's own id.
    pub fn set_peer(&self, peer: NodeId, addr: SocketAddr) {
        if peer == self.shared.id {
            return;
        }
        let mut state = self.shared.state.lock().unwrap();
        state.addrs.insert(peer, addr);
        if !state.peers.contains_key(&peer) {
            let rng = state.rng.fork();
            let handle = spawn_peer(self.shared.clone(), peer, rng);
            state.peers.insert(peer, handle);
        }
        debug_assert!(state.addrs.keys().eq(state.peers.keys()));
    }

    /// Forgets a peer: its queue is dropped and its connection closed.
    pub fn remove_peer(&self, peer: NodeId) {
        let mut state = self.shared.state.lock().unwrap();
        state.addrs.remove(&peer);
        if let Some(handle) = state.peers.remove(&peer) {
            handle.task.abort();
        }
        debug_assert!(state.addrs.keys().eq(state.peers.keys()));
    }

    /// Queues `msg` for `to` without blocking. A dropped message is counted and reported; callers
    /// that tolerate loss (Raft) may ignore the error.
    pub fn send(&self, to: NodeId, msg: &T) -> Result<(), Dropped> {
        let counters = &self.shared.counters;
        let bytes = match codec(self.shared.config.message_bytes_max).serialize(msg) {
            Ok(bytes) => bytes,
            Err(e) => {
                return Err(if matches!(*e, bincode::ErrorKind::SizeLimit) {
                    add(&counters.messages_dropped_too_large, 1);
                    Dropped::TooLarge
                } else {
                    tracing::error!(to, "rpc message cannot be encoded: {e}");
                    add(&counters.messages_dropped_unencodable, 1);
                    Dropped::Unencodable
                });
            }
        };
        assert!(bytes.len() <= self.shared.config.message_bytes_max);
        let state = self.shared.state.lock().unwrap();
        let Some(peer) = state.peers.get(&to) else {
            add(&counters.messages_dropped_no_route, 1);
            return Err(Dropped::NoRoute);
        };
        let len = bytes.len() as u64;
        let before = peer.queued_bytes.fetch_add(len, Ordering::Relaxed);
        if before + len > self.shared.config.peer_queue_bytes_max
            || peer.queue.try_send(bytes).is_err()
        {
            // A closed queue means the peer's task is gone, which only happens as it is removed.
            peer.queued_bytes.fetch_sub(len, Ordering::Relaxed);
            add(&counters.messages_dropped_queue_full, 1);
            return Err(Dropped::QueueFull);
        }
        Ok(())
    }

    pub fn metrics(&self) -> Metrics {
        let c = &self.shared.counters;
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        Metrics {
            messages_sent: get(&c.messages_sent),
            frames_sent: get(&c.frames_sent),
            messages_dropped_queue_full: get(&c.messages_dropped_queue_full),
            messages_dropped_too_large: get(&c.messages_dropped_too_large),
            messages_dropped_no_route: get(&c.messages_dropped_no_route),
            messages_dropped_unencodable: get(&c.messages_dropped_unencodable),
            messages_dropped_write_failed: get(&c.messages_dropped_write_failed),
            messages_received: get(&c.messages_received),
            frames_received: get(&c.frames_received),
            messages_dropped_inbox_full: get(&c.messages_dropped_inbox_full),
            connections: get(&c.connections),
            reconnects: get(&c.reconnects),
            connections_refused: get(&c.connections_refused),
            connections_closed_malformed: get(&c.connections_closed_malformed),
        }
    }

    /// Stops every task and waits until the listener and the peer connections are closed, so the
    /// port can be bound again at once.
    pub async fn shutdown(mut self) {
        let tasks = self.abort_all();
        for task in tasks {
            let _ = task.await;
        }
    }

    fn abort_all(&mut self) -> Vec<JoinHandle<()>> {
        let mut tasks: Vec<JoinHandle<()>> = self.acceptor.take().into_iter().collect();
        let mut state = self.shared.state.lock().unwrap();
        state.addrs.clear();
        tasks.extend(
            std::mem::take(&mut state.peers)
                .into_values()
                .map(|peer| peer.task),
        );
        for task in &tasks {
            task.abort();
        }
        tasks
    }
}

impl<T: Serialize + DeserializeOwned + Send + 'static> Drop for Transport<T> {
    fn drop(&mut self) {
        self.abort_all();
    }
}

/// The encoding of messages and frame bodies. Peer input is decoded under a byte limit, so a
/// hostile length prefix cannot make us allocate beyond it.
fn codec(bytes_max: usize) -> impl Options + Copy {
    bincode::DefaultOptions::new().with_limit(bytes_max as u64)
}

/// Builds a frame of already encoded messages: its bytes decode as a bincode `Vec<T>`, because
/// bincode writes a sequence as its length (a varint, like a `u64`) followed by its elements.
pub fn encode_frame(messages: &[Vec<u8>]) -> Vec<u8> {
    let count = codec(FRAME_COUNT_BYTES_MAX)
        .serialize(&(messages.len() as u64))
        .expect("a u64 encodes");
    assert!(count.len() <= FRAME_COUNT_BYTES_MAX);
    let body_len = count.len() + messages.iter().map(Vec::len).sum::<usize>();
    let mut frame = Vec::with_capacity(FRAME_HEADER_BYTES + body_len);
    frame.extend_from_slice(
        &u32::try_from(body_len)
            .expect("frames are below 4 GiB")
            .to_be_bytes(),
    );
    frame.extend_from_slice(&count);
    for message in messages {
        frame.extend_from_slice(message);
    }
    assert_eq!(frame.len(), FRAME_HEADER_BYTES + body_len);
    frame
}

/// The handshake of node `id`.
pub fn encode_handshake(id: NodeId) -> [u8; HANDSHAKE_BYTES] {
    let mut bytes = [0u8; HANDSHAKE_BYTES];
    bytes[0..4].copy_from_slice(&HANDSHAKE_MAGIC);
    bytes[4..8].copy_from_slice(&PROTOCOL_VERSION.to_be_bytes());
    bytes[8..16].copy_from_slice(&id.to_be_bytes());
    bytes
}

/// The node id of a valid handshake.
fn decode_handshake(bytes: &[u8; HANDSHAKE_BYTES]) -> io::Result<NodeId> {
    if bytes[0..4] != HANDSHAKE_MAGIC {
        return Err(invalid(format!(
            "bad handshake magic {:02x?}",
            &bytes[0..4]
        )));
    }
    let version = u32::from_be_bytes(bytes[4..8].try_into().unwrap());
    if version != PROTOCOL_VERSION {
        return Err(invalid(format!(
            "protocol version {version}, expected {PROTOCOL_VERSION}"
        )));
    }
    Ok(u64::from_be_bytes(bytes[8..16].try_into().unwrap()))
}

fn invalid(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

async fn with_timeout<F: std::future::Future<Output = io::Result<R>>, R>(
    ms: u64,
    what: &str,
    f: F,
) -> io::Result<R> {
    match tokio::time::timeout(Duration::from_millis(ms), f).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("{what} timed out after {ms} ms"),
        )),
    }
}

async fn exchange_handshakes(
    stream: &mut TcpStream,
    ours: NodeId,
    dialer: bool,
) -> io::Result<NodeId> {
    let mut theirs = [0u8; HANDSHAKE_BYTES];
    if dialer {
        stream.write_all(&encode_handshake(ours)).await?;
        stream.flush().await?;
        stream.read_exact(&mut theirs).await?;
        decode_handshake(&theirs)
    } else {
        stream.read_exact(&mut theirs).await?;
        let id = decode_handshake(&theirs)?;
        stream.write_all(&encode_handshake(ours)).await?;
        stream.flush().await?;
        Ok(id)
    }
}

async fn accept_loop<T: DeserializeOwned + Send + 'static>(
    shared: Arc<Shared<T>>,
    listener: TcpListener,
) {
    loop {
        let (stream, from) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Usually out of file descriptors; pause rather than spin.
                tracing::warn!(node = shared.id, "rpc accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if shared.handshakes_pending.fetch_add(1, Ordering::Relaxed) >= HANDSHAKES_PENDING_MAX {
            shared.handshakes_pending.fetch_sub(1, Ordering::Relaxed);
            add(&shared.counters.connections_refused, 1);
            tracing::warn!(node = shared.id, %from, "rpc connection refused: too many handshakes pending");
            continue;
        }
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut stream = stream;
            let adopted = match handshake_incoming(&shared, &mut stream).await {
                Ok(incoming) => incoming.try_send(stream).map_err(|e| match e {
                    mpsc::error::TrySendError::Full(stream)
                    | mpsc::error::TrySendError::Closed(stream) => (
                        stream,
                        io::Error::other("too many connections pending from this peer"),
                    ),
                }),
                Err(e) => Err((stream, e)),
            };
            if let Err((stream, e)) = adopted {
                // Counted and logged before the stream closes, so whoever sees it closed sees both.
                add(&shared.counters.connections_refused, 1);
                tracing::warn!(node = shared.id, %from, "rpc connection refused: {e}");
                drop(stream);
            }
            shared.handshakes_pending.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// Handshakes an accepted connection; returns where to hand it to its peer's task.
async fn handshake_incoming<T>(
    shared: &Shared<T>,
    stream: &mut TcpStream,
) -> io::Result<mpsc::Sender<TcpStream>> {
    stream.set_nodelay(true)?;
    let ms = shared.config.handshake_timeout_ms;
    // Validate the claimed id before answering, so strangers learn nothing about us.
    let mut theirs = [0u8; HANDSHAKE_BYTES];
    with_timeout(ms, "handshake", stream.read_exact(&mut theirs)).await?;
    let peer = decode_handshake(&theirs)?;
    if peer >= shared.id {
        return Err(invalid(format!(
            "node {peer} dialed node {}, but the lower id dials",
            shared.id
        )));
    }
    let incoming = {
        let state = shared.state.lock().unwrap();
        match state.peers.get(&peer) {
            Some(handle) => handle
                .incoming
                .clone()
                .expect("lower-id peers have an incoming queue"),
            None => return Err(invalid(format!("node {peer} is not in the address book"))),
        }
    };
    with_timeout(ms, "handshake", async {
        stream.write_all(&encode_handshake(shared.id)).await?;
        stream.flush().await
    })
    .await?;
    Ok(incoming)
}

fn spawn_peer<T: DeserializeOwned + Send + 'static>(
    shared: Arc<Shared<T>>,
    peer: NodeId,
    rng: Rng,
) -> PeerHandle {
    assert_ne!(peer, shared.id);
    let (queue, queue_rx) = mpsc::channel(shared.config.peer_queue_messages_max);
    let queued_bytes = Arc::new(AtomicU64::new(0));
    let (incoming, incoming_rx) = if peer < shared.id {
        let (tx, rx) = mpsc::channel(INCOMING_PENDING_MAX);
        (Some(tx), Some(rx))
    } else {
        (None, None)
    };
    let link = Link {
        shared,
        peer,
        queue: queue_rx,
        queued_bytes: queued_bytes.clone(),
        incoming: incoming_rx,
        carry: None,
        rng,
    };
    let task = tokio::spawn(link.run());
    PeerHandle {
        queue,
        queued_bytes,
        incoming,
        task,
    }
}

/// The task that owns one peer's connection: dials or accepts it, writes the queue to it, reads
/// frames from it, and starts over when it breaks.
struct Link<T> {
    shared: Arc<Shared<T>>,
    peer: NodeId,
    queue: mpsc::Receiver<Vec<u8>>,
    queued_bytes: Arc<AtomicU64>,
    /// Connections accepted from the peer; `None` if this node dials.
    incoming: Option<mpsc::Receiver<TcpStream>>,
    /// A message taken from the queue that did not fit in the previous frame.
    carry: Option<Vec<u8>>,
    rng: Rng,
}

/// Why a connection's life ended.
enum End {
    /// The peer dialed again; this is the new connection.
    Replaced(TcpStream),
    /// The transport is shutting down or the peer was removed.
    Stopped,
    Broken(io::Error),
}

impl fmt::Display for End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            End::Replaced(_) => write!(f, "replaced by a new connection from the peer"),
            End::Stopped => write!(f, "stopped"),
            End::Broken(e) => write!(f, "{e}"),
        }
    }
}

impl<T: DeserializeOwned + Send + 'static> Link<T> {
    async fn run(mut self) {
        let (id, peer) = (self.shared.id, self.peer);
        let dials = id < peer;
        let mut backoff_ms = self.shared.config.backoff_min_ms;
        let mut connected_before = false;
        let mut next: Option<TcpStream> = None;
        loop {
            let stream = match next.take() {
                Some(stream) => stream,
                None if dials => match self.dial().await {
                    Ok(stream) => stream,
                    Err(e) => {
                        tracing::debug!(node = id, peer, "rpc dial failed: {e}");
                        self.back_off(&mut backoff_ms).await;
                        continue;
                    }
                },
                None => match self
                    .incoming
                    .as_mut()
                    .expect("acceptors have an incoming queue")
                    .recv()
                    .await
                {
                    Some(stream) => stream,
                    None => return,
                },
            };
            add(&self.shared.counters.connections, 1);
            if connected_before {
                add(&self.shared.counters.reconnects, 1);
            }
            connected_before = true;
            backoff_ms = self.shared.config.backoff_min_ms;
            tracing::debug!(node = id, peer, "rpc connection up");

            let mut writing = 0usize;
            let end = self.serve_connection(stream, &mut writing).await;
            // A frame cut off mid-write is lost with the connection.
            add(
                &self.shared.counters.messages_dropped_write_failed,
                writing as u64,
            );
            match end {
                End::Stopped => return,
                End::Replaced(stream) => {
                    tracing::info!(
                        node = id,
                        peer,
                        "rpc connection replaced by the peer's new one"
                    );
                    next = Some(stream);
                }
                End::Broken(e) => {
                    tracing::info!(node = id, peer, "rpc connection closed: {e}");
                    if dials {
                        self.back_off(&mut backoff_ms).await;
                    }
                }
            }
        }
    }

    async fn dial(&mut self) -> io::Result<TcpStream> {
        let config = &self.shared.config;
        let addr = self
            .shared
            .state
            .lock()
            .unwrap()
            .addrs
            .get(&self.peer)
            .copied();
        let addr = addr.ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address"))?;
        let mut stream = with_timeout(
            config.connect_timeout_ms,
            "connect",
            TcpStream::connect(addr),
        )
        .await?;
        stream.set_nodelay(true)?;
        let theirs = with_timeout(
            config.handshake_timeout_ms,
            "handshake",
            exchange_handshakes(&mut stream, self.shared.id, true),
        )
        .await?;
        if theirs != self.peer {
            return Err(invalid(format!(
                "{addr} is node {theirs}, expected node {}",
                self.peer
            )));
        }
        Ok(stream)
    }

    /// Sleeps the current backoff, drawn from `[delay / 2, delay]`, and doubles it.
    async fn back_off(&mut self, backoff_ms: &mut u64) {
        let sleep_ms = self.rng.between(*backoff_ms / 2, *backoff_ms);
        tokio::time::sleep(Duration::from_millis(sleep_ms)).await;
        *backoff_ms = (*backoff_ms * 2).min(self.shared.config.backoff_max_ms);
    }

    /// Runs one connection until it breaks, is replaced, or the transport stops. `writing` is the
    /// number of messages in a frame being written when it ended.
    async fn serve_connection(&mut self, stream: TcpStream, writing: &mut usize) -> End {
        let (reader, writer) = tokio::io::split(stream);
        let Link {
            shared,
            peer,
            queue,
            queued_bytes,
            incoming,
            carry,
            ..
        } = self;
        let shared: &Shared<T> = shared;
        tokio::select! {
            biased;
            replacement = next_incoming(incoming) => match replacement {
                Some(stream) => End::Replaced(stream),
                None => End::Stopped,
            },
            e = read_frames(shared, *peer, reader) => End::Broken(e),
            end = write_frames(shared, writer, queue, queued_bytes, carry, writing) => end,
        }
    }
}

async fn next_incoming(incoming: &mut Option<mpsc::Receiver<TcpStream>>) -> Option<TcpStream> {
    match incoming {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Reads frames and delivers their messages until the connection fails; never returns `Ok`.
async fn read_frames<T, R: AsyncRead + Unpin>(
    shared: &Shared<T>,
    peer: NodeId,
    reader: R,
) -> io::Error
where
    T: DeserializeOwned,
{
    let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, reader);
    let frame_bytes_max = shared.config.frame_bytes_max;
    let idle_timeout_ms = shared.config.idle_timeout_ms;
    let mut body = Vec::new();
    loop {
        let mut header = [0u8; FRAME_HEADER_BYTES];
        if let Err(e) = with_timeout(
            idle_timeout_ms,
            "idle connection",
            reader.read_exact(&mut header),
        )
        .await
        {
            return e;
        }
        let len = u32::from_be_bytes(header) as usize;
        if len == 0 || len > frame_bytes_max {
            add(&shared.counters.connections_closed_malformed, 1);
            return invalid(format!("frame of {len} bytes (limit {frame_bytes_max})"));
        }
        body.resize(len, 0);
        if let Err(e) = reader.read_exact(&mut body).await {
            return e;
        }
        let messages: Vec<T> = match codec(frame_bytes_max).deserialize(&body) {
            Ok(messages) => messages,
            Err(e) => {
                add(&shared.counters.connections_closed_malformed, 1);
                return invalid(format!("undecodable frame of {len} bytes: {e}"));
            }
        };
        add(&shared.counters.frames_received, 1);
        add(&shared.counters.messages_received, messages.len() as u64);
        for message in messages {
            if shared.inbox.try_send((peer, message)).is_err() {
                add(&shared.counters.messages_dropped_inbox_full, 1);
            }
        }
    }
}

/// Writes everything queued, one frame per wake-up (an empty one after a quiet keepalive
/// interval), until the connection fails or the queue closes.
async fn write_frames<T, W: AsyncWrite + Unpin>(
    shared: &Shared<T>,
    mut writer: W,
    queue: &mut mpsc::Receiver<Vec<u8>>,
    queued_bytes: &AtomicU64,
    carry: &mut Option<Vec<u8>>,
    writing: &mut usize,
) -> End {
    let config = &shared.config;
    let body_bytes_max = config.frame_bytes_max - FRAME_COUNT_BYTES_MAX;
    let keepalive_interval = Duration::from_millis(config.keepalive_interval_ms);
    let mut batch: Vec<Vec<u8>> = Vec::new();
    loop {
        // Wait for one message, then take whatever else is queued that fits. Idle for a
        // keepalive interval, send an empty frame.
        let first = match carry.take() {
            Some(message) => Some(message),
            None => match tokio::time::timeout(keepalive_interval, queue.recv()).await {
                Ok(Some(message)) => {
                    queued_bytes.fetch_sub(message.len() as u64, Ordering::Relaxed);
                    Some(message)
                }
                Ok(None) => return End::Stopped,
                Err(_) => None,
            },
        };
        batch.clear();
        let mut batch_bytes = 0;
        if let Some(first) = first {
            assert!(first.len() <= body_bytes_max);
            batch_bytes = first.len();
            batch.push(first);
        }
        while let Ok(message) = queue.try_recv() {
            queued_bytes.fetch_sub(message.len() as u64, Ordering::Relaxed);
            if batch_bytes + message.len() > body_bytes_max {
                *carry = Some(message);
                break;
            }
            batch_bytes += message.len();
            batch.push(message);
        }
        let frame = encode_frame(&batch);
        assert!(frame.len() <= FRAME_HEADER_BYTES + config.frame_bytes_max);
        *writing = batch.len();
        let written = with_timeout(config.write_timeout_ms, "frame write", async {
            writer.write_all(&frame).await?;
            writer.flush().await
        })
        .await;
        if let Err(e) = written {
            return End::Broken(e);
        }
        *writing = 0;
        add(&shared.counters.frames_sent, 1);
        add(&shared.counters.messages_sent, batch.len() as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_of_encoded_messages_decodes_as_a_bincode_vec() {
        for count in [0usize, 1, 250, 251, 70_000] {
            let values: Vec<(u64, String)> = (0..count as u64)
                .map(|i| (i * 7919, format!("m{i}")))
                .collect();
            let encoded: Vec<Vec<u8>> = values
                .iter()
                .map(|v| codec(1 << 20).serialize(v).unwrap())
                .collect();
            let frame = encode_frame(&encoded);
            let len = u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
            assert_eq!(len, frame.len() - FRAME_HEADER_BYTES);
            let decoded: Vec<(u64, String)> = codec(1 << 30).deserialize(&frame[4..]).unwrap();
            assert_eq!(decoded, values);
            assert_eq!(
                &frame[4..],
                codec(1 << 30).serialize(&values).unwrap().as_slice()
            );
        }
    }

    #[test]
    fn handshakes_round_trip_and_bad_ones_are_refused() {
        assert_eq!(decode_handshake(&encode_handshake(42)).unwrap(), 42);
        let mut bad_magic = encode_handshake(1);
        bad_magic[0] = b'X';
        assert!(decode_handshake(&bad_magic).is_err());
        let mut bad_version = encode_handshake(1);
        bad_version[7] ^= 0xff;
        assert!(decode_handshake(&bad_version).is_err());
    }

    #[test]
    fn decoding_hostile_frames_fails_without_allocating_their_claims() {
        // A count of 2^62 elements in a 10-byte body must fail, not allocate.
        let mut body = codec(16).serialize(&(1u64 << 62)).unwrap();
        body.push(0);
        assert!(codec(1024)
            .deserialize::<Vec<(u64, String)>>(&body)
            .is_err());
        // A string claiming 1 GiB inside a small frame, likewise.
        let mut body = codec(16).serialize(&1u64).unwrap();
        body.extend(codec(16).serialize(&7u64).unwrap());
        body.extend(codec(16).serialize(&(1u64 << 30)).unwrap());
        assert!(codec(1024)
            .deserialize::<Vec<(u64, String)>>(&body)
            .is_err());
    }

    #[test]
    fn default_config_is_consistent() {
        Config::default().validate().unwrap();
        let config = Config {
            frame_bytes_max: MESSAGE_BYTES_MAX_DEFAULT,
            ..Config::default()
        };
        assert!(config.validate().is_err());
    }
}
