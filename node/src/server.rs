//! Kafka connections: read length-prefixed frames, decode, hand requests to the broker task, and
//! write responses back in request order (Kafka clients pipeline and match by order).
//!
//! Each connection is bounded: a frame larger than `frame_bytes_max` or one that does not decode
//! closes that connection only (and is logged); at most `requests_in_flight_max` requests wait
//! for answers before the connection stops reading.

use std::hash::{BuildHasher, Hasher};
use std::io;
use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestKind, ResponseKind};
use sluice_core::storage::Storage;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

use crate::broker::{Broker, Envelope};
use crate::codec::SERVED_APIS;
use crate::config::Config;
use crate::rpc::Transport;
use crate::wire::{api_versions_too_new, decode_request, encode_response, DecodeError};

/// Requests queued from all connections to the broker task.
const BROKER_QUEUE_MAX: usize = 4096;

/// Opens the data directory, connects to the peers, binds the listener, and serves until the
/// process ends. A failure to start names what it is about (the directory, the file, the
/// address).
pub async fn serve<S: Storage>(config: Config, storage: S) -> io::Result<()> {
    let mut broker = Broker::open(config.clone(), storage)?;
    connect_peers(&config, &mut broker).await?;
    let listener = TcpListener::bind(&config.listen)
        .await
        .map_err(|e| named(e, "cannot listen for Kafka clients on", &config.listen))?;
    let local = listener
        .local_addr()
        .map_err(|e| named(e, "no local address for", &config.listen))?;
    tracing::info!(listen = %local, data_dir = %config.data_dir.display(), "sluice is serving Kafka clients");
    run(config, broker, listener).await
}

/// `e` with what it is about: "cannot listen for Kafka clients on 127.0.0.1:9092: Address
/// already in use (os error 98)". The kind is kept.
fn named(e: io::Error, what: &str, about: &str) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {about}: {e}"))
}

/// Serves on an already bound listener (tests and the simulator bind first).
pub async fn run<S: Storage>(
    config: Config,
    broker: Broker<S>,
    listener: TcpListener,
) -> io::Result<()> {
    let (tx, rx) = mpsc::channel(BROKER_QUEUE_MAX);
    let (ready_tx, ready_rx) = oneshot::channel();
    let mut broker = broker;
    broker.notify_ready(ready_tx);
    tokio::spawn(broker.run(rx));
    // Like a Kafka broker, serve clients only once registered with the controller (clients
    // connecting earlier wait in the listen backlog).
    if ready_rx.await.is_err() {
        return Err(io::Error::other("the broker stopped before it was ready"));
    }
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors and the like: keep serving the connections we have.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let tx = tx.clone();
        let limits = (config.frame_bytes_max, config.requests_in_flight_max);
        tokio::spawn(async move {
            if let Err(e) = connection(stream, peer, tx, limits).await {
                tracing::debug!(%peer, "connection ended: {e}");
            }
        });
    }
}

/// Starts the node-to-node transport when the cluster has more than this node.
pub async fn connect_peers<S: Storage>(config: &Config, broker: &mut Broker<S>) -> io::Result<()> {
    if config.peers.len() <= 1 {
        return Ok(());
    }
    let me = config.node_id as u64;
    let listen = config
        .rpc_listen
        .as_deref()
        .ok_or_else(|| io::Error::other("rpc_listen is not set"))?;
    let addr = resolve(listen).await?;
    let rpc_config = crate::rpc::Config {
        seed: std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish(),
        ..crate::rpc::Config::default()
    };
    let (transport, inbox) = Transport::bind(me, addr, rpc_config).await.map_err(|e| {
        let about = if addr.to_string() == listen {
            listen.to_string()
        } else {
            format!("{listen} ({addr})")
        };
        named(e, "cannot listen for peers (rpc_listen) on", &about)
    })?;
    for (id, peer) in &config.peers {
        if *id != me {
            let addr = resolve(peer)
                .await
                .map_err(|e| io::Error::new(e.kind(), format!("peer {id}: {e}")))?;
            transport.set_peer(*id, addr);
        }
    }
    broker.attach_peers(transport, inbox);
    Ok(())
}

async fn resolve(addr: &str) -> io::Result<SocketAddr> {
    if let Ok(addr) = addr.parse() {
        return Ok(addr);
    }
    tokio::net::lookup_host(addr)
        .await
        .map_err(|e| named(e, "cannot resolve", addr))?
        .next()
        .ok_or_else(|| io::Error::other(format!("cannot resolve {addr}: no address")))
}

/// A response slot, in request order.
enum Slot {
    Ready(Bytes),
    Waiting {
        api_key: ApiKey,
        version: i16,
        correlation_id: i32,
        rx: oneshot::Receiver<ResponseKind>,
    },
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    broker: mpsc::Sender<Envelope>,
    (frame_bytes_max, in_flight_max): (u32, usize),
) -> io::Result<()> {
    let _ = stream.set_nodelay(true);
    let (mut reader, writer) = tokio::io::split(stream);
    let (slots_tx, slots_rx) = mpsc::channel(in_flight_max);
    let writer = tokio::spawn(write_responses(writer, slots_rx));
    let result = read_requests(&mut reader, peer, &broker, &slots_tx, frame_bytes_max).await;
    drop(slots_tx);
    // Answers already owed are still written before the connection closes.
    let _ = writer.await;
    result
}

async fn read_requests<R: tokio::io::AsyncRead + Unpin>(
    reader: &mut R,
    peer: SocketAddr,
    broker: &mpsc::Sender<Envelope>,
    slots: &mpsc::Sender<Slot>,
    frame_bytes_max: u32,
) -> io::Result<()> {
    loop {
        let Some(frame) = read_frame(reader, frame_bytes_max).await.inspect_err(|e| {
            tracing::warn!(%peer, "closing connection: {e}");
        })?
        else {
            return Ok(());
        };
        let request = match decode_request(frame) {
            Ok(request) => request,
            Err(DecodeError::ApiVersionsTooNew { correlation_id }) => {
                send_slot(slots, Slot::Ready(api_versions_too_new(correlation_id))).await?;
                continue;
            }
            Err(DecodeError::Invalid {
                correlation_id,
                why,
            }) => {
                tracing::warn!(%peer, ?correlation_id, "closing connection: {why}");
                return Err(io::Error::new(io::ErrorKind::InvalidData, why));
            }
        };
        if !SERVED_APIS.contains(&request.api_key) {
            let why = format!("{:?} is not supported by this broker", request.api_key);
            tracing::warn!(%peer, "closing connection: {why}");
            return Err(io::Error::new(io::ErrorKind::Unsupported, why));
        }
        let no_reply = matches!(&request.body, RequestKind::Produce(p) if p.acks == 0);
        let reply = if no_reply {
            None
        } else {
            let (tx, rx) = oneshot::channel();
            let slot = Slot::Waiting {
                api_key: request.api_key,
                version: request.version,
                correlation_id: request.correlation_id,
                rx,
            };
            send_slot(slots, slot).await?;
            Some(tx)
        };
        broker
            .send(Envelope {
                request,
                reply,
                peer: Some(peer),
            })
            .await
            .map_err(|_| io::Error::other("the broker has stopped"))?;
    }
}

async fn send_slot(slots: &mpsc::Sender<Slot>, slot: Slot) -> io::Result<()> {
    slots
        .send(slot)
        .await
        .map_err(|_| io::Error::other("response writer stopped"))
}

/// Reads one frame; `Ok(None)` on a clean end of stream between frames.
async fn read_frame<R: tokio::io::AsyncRead + Unpin>(
    reader: &mut R,
    frame_bytes_max: u32,
) -> io::Result<Option<Bytes>> {
    let mut len = [0u8; 4];
    match reader.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = i32::from_be_bytes(len);
    if len < 0 || len as u32 > frame_bytes_max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "frame of {len} bytes is outside 0..={frame_bytes_max} (socket.request.max.bytes)"
            ),
        ));
    }
    let mut frame = BytesMut::zeroed(len as usize);
    reader.read_exact(&mut frame).await?;
    Ok(Some(frame.freeze()))
}

async fn write_responses<W: tokio::io::AsyncWrite + Unpin>(
    writer: W,
    mut slots: mpsc::Receiver<Slot>,
) {
    let mut writer = BufWriter::with_capacity(64 * 1024, writer);
    while let Some(slot) = slots.recv().await {
        let bytes = match slot {
            Slot::Ready(bytes) => bytes,
            Slot::Waiting {
                api_key,
                version,
                correlation_id,
                rx,
            } => {
                let Ok(response) = rx.await else { return };
                match encode_response(api_key, version, correlation_id, &response) {
                    Ok(bytes) => bytes,
                    Err(e) => {
                        // A bug on our side; the client would hang waiting, so close instead.
                        tracing::error!("cannot encode response: {e}");
                        return;
                    }
                }
            }
        };
        if writer.write_all(&bytes).await.is_err() {
            return;
        }
        if slots.is_empty() && writer.flush().await.is_err() {
            return;
        }
    }
    let _ = writer.flush().await;
    let _ = writer.shutdown().await;
}
