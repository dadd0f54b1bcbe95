//! The node-to-node RPC transport over loopback: ordered delivery between three nodes, a peer
//! restarting on the same port, garbage at the acceptor, queue overflow and batching.
#![cfg(not(madsim))]

use std::net::SocketAddr;
use std::time::Duration;

use bincode::Options;
use serde::{Deserialize, Serialize};
use sluice_node::rpc::{
    encode_frame, encode_handshake, Config, Dropped, NodeId, Transport, HANDSHAKE_BYTES,
    PEER_QUEUE_MESSAGES_MAX_DEFAULT, PROTOCOL_VERSION,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc::Receiver;
use tokio::time::timeout;

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Msg {
    from: NodeId,
    seq: u64,
    body: String,
}

type Inbox = Receiver<(NodeId, Msg)>;

/// Every test finishes well within this, or fails.
const TEST_TIMEOUT: Duration = Duration::from_secs(20);

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

async fn node(id: NodeId, addr: SocketAddr, config: Config) -> (Transport<Msg>, Inbox) {
    Transport::bind(id, addr, config).await.unwrap()
}

/// Tells every transport the address of every other.
fn introduce(nodes: &[&Transport<Msg>]) {
    for a in nodes {
        for b in nodes {
            if a.id() != b.id() {
                a.set_peer(b.id(), b.local_addr());
            }
        }
    }
}

fn msg(from: NodeId, seq: u64) -> Msg {
    Msg {
        from,
        seq,
        body: format!("message {seq} from node {from}"),
    }
}

/// Sequence numbers from here up are warm-up messages, which `recv` skips.
const WARMUP_SEQ: u64 = 1 << 40;

/// The next message that is not a warm-up.
async fn recv(inbox: &mut Inbox) -> (NodeId, Msg) {
    loop {
        let (from, m) = timeout(TEST_TIMEOUT, inbox.recv())
            .await
            .expect("message within the test timeout")
            .expect("inbox open");
        if m.seq < WARMUP_SEQ {
            return (from, m);
        }
    }
}

/// Sends warm-up messages `from → to` until one arrives, so the connection is known to work. (A
/// message written into a connection that is about to be found dead is lost, which the transport
/// allows.) Later warm-ups may still arrive afterwards; `recv` skips them.
async fn send_until_delivered(from: &Transport<Msg>, to: NodeId, inbox: &mut Inbox) {
    let deadline = tokio::time::Instant::now() + TEST_TIMEOUT;
    let mut seq = WARMUP_SEQ;
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "node {} never reached node {to}",
            from.id()
        );
        // Drops while the peer is away are fine; only delivery matters.
        let _ = from.send(to, &msg(from.id(), seq));
        seq += 1;
        let wait = Duration::from_millis(200);
        while let Ok(Some((sender, m))) = timeout(wait, inbox.recv()).await {
            if sender == from.id() && m.seq >= WARMUP_SEQ {
                return;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_exchange_thousands_of_messages_in_order() {
    const PER_PAIR: u64 = 3000;
    let (a, mut a_in) = node(1, any_port(), Config::default()).await;
    let (b, mut b_in) = node(2, any_port(), Config::default()).await;
    let (c, mut c_in) = node(3, any_port(), Config::default()).await;
    introduce(&[&a, &b, &c]);
    let nodes = [&a, &b, &c];
    for seq in 0..PER_PAIR {
        for from in nodes {
            for to in nodes {
                if from.id() != to.id() {
                    from.send(to.id(), &msg(from.id(), seq)).unwrap();
                }
            }
        }
    }
    for (me, inbox) in [(1, &mut a_in), (2, &mut b_in), (3, &mut c_in)] {
        let mut next = std::collections::BTreeMap::<NodeId, u64>::new();
        for _ in 0..2 * PER_PAIR {
            let (from, m) = recv(inbox).await;
            assert_eq!(from, m.from);
            assert_ne!(from, me);
            let expected = next.entry(from).or_insert(0);
            assert_eq!(
                m.seq, *expected,
                "node {me} got node {from}'s messages out of order"
            );
            assert_eq!(m, msg(from, m.seq));
            *expected += 1;
        }
        assert_eq!(
            next.values().copied().collect::<Vec<_>>(),
            vec![PER_PAIR, PER_PAIR]
        );
    }
    for n in nodes {
        let m = n.metrics();
        assert_eq!(m.messages_sent, 2 * PER_PAIR, "{m:?}");
        assert_eq!(m.messages_received, 2 * PER_PAIR, "{m:?}");
        assert_eq!(
            m.messages_dropped_queue_full + m.messages_dropped_inbox_full,
            0,
            "{m:?}"
        );
        // One connection per pair: each node took part in exactly two.
        assert_eq!(m.connections, 2, "{m:?}");
    }
}

/// Waits until `from → to` works, then checks that 500 messages arrive in order.
async fn exchange(from: &Transport<Msg>, to: NodeId, inbox: &mut Inbox) {
    send_until_delivered(from, to, inbox).await;
    for seq in 0..500 {
        from.send(to, &msg(from.id(), seq)).unwrap();
    }
    for seq in 0..500 {
        assert_eq!(recv(inbox).await, (from.id(), msg(from.id(), seq)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_peer_is_reconnected_and_delivery_resumes() {
    let (a, mut a_in) = node(1, any_port(), Config::default()).await;
    let (b, mut b_in) = node(2, any_port(), Config::default()).await;
    let (c, mut c_in) = node(3, any_port(), Config::default()).await;
    introduce(&[&a, &b, &c]);
    // Node 2 is dialed by node 1 and dials node 3: its restart exercises both roles.
    exchange(&a, 2, &mut b_in).await;
    exchange(&c, 2, &mut b_in).await;
    exchange(&b, 1, &mut a_in).await;
    exchange(&b, 3, &mut c_in).await;

    let b_addr = b.local_addr();
    b.shutdown().await;
    drop(b_in);
    let (b, mut b_in) = node(2, b_addr, Config::default()).await;
    introduce(&[&a, &b, &c]);

    exchange(&a, 2, &mut b_in).await;
    exchange(&c, 2, &mut b_in).await;
    exchange(&b, 1, &mut a_in).await;
    exchange(&b, 3, &mut c_in).await;
    assert!(a.metrics().reconnects >= 1, "{:?}", a.metrics());
    assert!(c.metrics().reconnects >= 1, "{:?}", c.metrics());
}

/// Reads until the transport closes the connection; fails the test if it stays open.
async fn assert_closed(mut stream: TcpStream) {
    let mut buf = [0u8; 64];
    loop {
        match timeout(TEST_TIMEOUT, stream.read(&mut buf))
            .await
            .expect("connection closed in time")
        {
            Ok(0) | Err(_) => return,
            Ok(_) => continue,
        }
    }
}

/// Connects to `to` claiming to be node `id`, and reads the acceptor's handshake.
async fn impersonate(id: NodeId, to: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(to).await.unwrap();
    stream.write_all(&encode_handshake(id)).await.unwrap();
    let mut theirs = [0u8; HANDSHAKE_BYTES];
    stream.read_exact(&mut theirs).await.unwrap();
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_at_the_acceptor_closes_only_that_connection() {
    let (a, mut a_in) = node(1, any_port(), Config::default()).await;
    let (b, mut b_in) = node(5, any_port(), Config::default()).await;
    // Node 2 is in node 5's book but is played by the test.
    introduce(&[&a, &b]);
    b.set_peer(2, any_port());
    send_until_delivered(&a, 5, &mut b_in).await;

    let mut refused = Vec::new();
    // Not a handshake at all.
    let mut http = TcpStream::connect(b.local_addr()).await.unwrap();
    http.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    refused.push(http);
    // A future protocol version.
    let mut future = TcpStream::connect(b.local_addr()).await.unwrap();
    let mut hello = encode_handshake(2);
    hello[4..8].copy_from_slice(&(PROTOCOL_VERSION + 1).to_be_bytes());
    future.write_all(&hello).await.unwrap();
    refused.push(future);
    // A node that is not in the address book, and one that should have been dialed instead.
    for id in [3, 9] {
        let mut stranger = TcpStream::connect(b.local_addr()).await.unwrap();
        stranger.write_all(&encode_handshake(id)).await.unwrap();
        refused.push(stranger);
    }
    for stream in refused {
        assert_closed(stream).await;
    }
    assert_eq!(b.metrics().connections_refused, 4);

    // A well-introduced peer that then sends an oversized frame, or a frame that does not decode.
    let mut oversized = impersonate(2, b.local_addr()).await;
    oversized.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    assert_closed(oversized).await;
    let mut undecodable = impersonate(2, b.local_addr()).await;
    undecodable
        .write_all(&encode_frame(&[vec![0xff; 40]]))
        .await
        .unwrap();
    assert_closed(undecodable).await;
    // A valid frame from the impersonated node is delivered: the acceptor survived it all.
    let mut honest = impersonate(2, b.local_addr()).await;
    let body = bincode::DefaultOptions::new()
        .serialize(&msg(2, 7))
        .unwrap();
    honest.write_all(&encode_frame(&[body])).await.unwrap();
    assert_eq!(recv(&mut b_in).await, (2, msg(2, 7)));
    assert_eq!(b.metrics().connections_closed_malformed, 2);

    // The real peer's connection was never disturbed.
    let before = a.metrics().connections;
    a.send(5, &msg(1, 100)).unwrap();
    b.send(1, &msg(5, 100)).unwrap();
    assert_eq!(recv(&mut b_in).await, (1, msg(1, 100)));
    assert_eq!(recv(&mut a_in).await, (5, msg(5, 100)));
    assert_eq!(a.metrics().connections, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_peer_gets_keepalives_and_is_dropped_after_the_idle_timeout() {
    let config = Config {
        keepalive_interval_ms: 50,
        idle_timeout_ms: 300,
        ..Config::default()
    };
    let (b, _b_in) = node(5, any_port(), config).await;
    b.set_peer(2, any_port());
    let mut silent = impersonate(2, b.local_addr()).await;
    // Quiet for a keepalive interval, node 5 sends an empty frame: length 1, a count of 0.
    let mut keepalive = [0u8; 5];
    timeout(TEST_TIMEOUT, silent.read_exact(&mut keepalive))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(keepalive, [0, 0, 0, 1, 0]);
    // Hearing nothing back, it closes the connection.
    assert_closed(silent).await;
    assert_eq!(b.metrics().connections, 1);
}

#[tokio::test]
async fn full_queue_drops_and_counts() {
    // Node 2 is below node 7, so node 7 waits to be dialed; nobody dials, so nothing drains.
    let (n, _inbox) = node(7, any_port(), Config::default()).await;
    n.set_peer(2, any_port());
    let total = PEER_QUEUE_MESSAGES_MAX_DEFAULT as u64 + 904;
    let mut dropped = 0;
    for seq in 0..total {
        match n.send(2, &msg(7, seq)) {
            Ok(()) => assert!(seq < PEER_QUEUE_MESSAGES_MAX_DEFAULT as u64),
            Err(e) => {
                assert_eq!(e, Dropped::QueueFull);
                dropped += 1;
            }
        }
    }
    assert_eq!(dropped, 904);
    assert_eq!(n.metrics().messages_dropped_queue_full, 904);
    assert_eq!(n.send(4, &msg(7, 0)), Err(Dropped::NoRoute));
    assert_eq!(n.send(7, &msg(7, 0)), Err(Dropped::NoRoute));
    assert_eq!(n.metrics().messages_dropped_no_route, 2);

    // The byte limit, and the per-message limit, on a transport configured small.
    let config = Config {
        peer_queue_bytes_max: 1000,
        message_bytes_max: 200,
        ..Config::default()
    };
    let (small, _inbox) = node(8, any_port(), config).await;
    small.set_peer(2, any_port());
    let big = Msg {
        from: 8,
        seq: 0,
        body: "x".repeat(300),
    };
    assert_eq!(small.send(2, &big), Err(Dropped::TooLarge));
    let mut queued = 0;
    while small.send(2, &msg(8, queued)).is_ok() {
        queued += 1;
    }
    assert!(
        (20..=50).contains(&queued),
        "{queued} messages of ~25 bytes in 1000 bytes"
    );
    let m = small.metrics();
    assert_eq!(
        (m.messages_dropped_too_large, m.messages_dropped_queue_full),
        (1, 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_inbox_drops_and_counts() {
    let (a, _a_in) = node(1, any_port(), Config::default()).await;
    let (b, mut b_in) = node(
        2,
        any_port(),
        Config {
            inbox_messages_max: 10,
            ..Config::default()
        },
    )
    .await;
    introduce(&[&a, &b]);
    for seq in 0..100 {
        a.send(2, &msg(1, seq)).unwrap();
    }
    // The transport offers no event for "dropped at the inbox"; poll its counter.
    timeout(TEST_TIMEOUT, async {
        while b.metrics().messages_received < 100 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("all 100 messages reached node 2");
    assert_eq!(b.metrics().messages_dropped_inbox_full, 90);
    for seq in 0..10 {
        assert_eq!(recv(&mut b_in).await, (1, msg(1, seq)));
    }
}

#[tokio::test]
async fn back_to_back_messages_travel_in_few_frames() {
    let (a, _a_in) = node(1, any_port(), Config::default()).await;
    let (b, mut b_in) = node(2, any_port(), Config::default()).await;
    introduce(&[&a, &b]);
    send_until_delivered(&a, 2, &mut b_in).await;
    let frames_before = b.metrics().frames_received;
    for seq in 1..=1000 {
        a.send(2, &msg(1, seq)).unwrap();
    }
    for seq in 1..=1000 {
        assert_eq!(recv(&mut b_in).await, (1, msg(1, seq)));
    }
    let frames = b.metrics().frames_received - frames_before;
    assert!(frames <= 10, "1000 messages took {frames} frames");
}
