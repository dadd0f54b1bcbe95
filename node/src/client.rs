//! Sluice's own minimal async Kafka client: one connection, typed requests from the
//! `kafka-protocol` crate, responses matched by correlation id. Compiles on tokio and under
//! madsim, so tests, the simulator's workloads and the CLI can share it.

use std::io;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, Request, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest response frame accepted.
const RESPONSE_BYTES_MAX: usize = 256 * 1024 * 1024;

pub struct Connection {
    stream: TcpStream,
    next_correlation_id: i32,
    client_id: StrBytes,
}

impl Connection {
    pub async fn connect(addr: &str) -> io::Result<Connection> {
        let stream = TcpStream::connect(addr).await?;
        let _ = stream.set_nodelay(true);
        Ok(Connection {
            stream,
            next_correlation_id: 1,
            client_id: StrBytes::from_static_str("sluice"),
        })
    }

    /// Sends `request` at `version` without waiting (for acks=0 produce); returns its
    /// correlation id.
    pub async fn send<R: Request>(&mut self, request: &R, version: i16) -> io::Result<i32> {
        let correlation_id = self.next_correlation_id;
        self.next_correlation_id = self.next_correlation_id.wrapping_add(1);
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(correlation_id)
            .with_client_id(Some(self.client_id.clone()));
        let mut buf = BytesMut::with_capacity(128);
        buf.put_i32(0);
        header
            .encode(&mut buf, R::header_version(version))
            .map_err(io::Error::other)?;
        request
            .encode(&mut buf, version)
            .map_err(io::Error::other)?;
        let len = (buf.len() - 4) as i32;
        buf[0..4].copy_from_slice(&len.to_be_bytes());
        self.stream.write_all(&buf).await?;
        self.stream.flush().await?;
        Ok(correlation_id)
    }

    /// Sends raw bytes (tests of malformed input).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    /// Reads the next response frame: its correlation id and the bytes after it.
    pub async fn receive_raw(&mut self) -> io::Result<(i32, Bytes)> {
        let len = self.stream.read_i32().await?;
        let len = usize::try_from(len)
            .ok()
            .filter(|l| (4..=RESPONSE_BYTES_MAX).contains(l))
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("response frame length {len}"),
                )
            })?;
        let mut frame = BytesMut::zeroed(len);
        self.stream.read_exact(&mut frame).await?;
        let mut frame = frame.freeze();
        let correlation_id = frame.get_i32();
        Ok((correlation_id, frame))
    }

    /// Sends `request` and waits for its response.
    pub async fn call<R: Request>(&mut self, request: &R, version: i16) -> io::Result<R::Response> {
        let correlation_id = self.send(request, version).await?;
        self.receive::<R>(correlation_id, version).await
    }

    /// Reads the next response, which must answer the request sent as `correlation_id` at
    /// `version`: a broker answers one connection's requests in order, so a client that
    /// pipelines (sends several before reading) reads their answers in the order it sent them.
    pub async fn receive<R: Request>(
        &mut self,
        correlation_id: i32,
        version: i16,
    ) -> io::Result<R::Response> {
        let (got, mut body) = self.receive_raw().await?;
        if got != correlation_id {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("expected correlation id {correlation_id}, got {got}"),
            ));
        }
        let api_key = ApiKey::try_from(R::KEY).map_err(|_| io::Error::other("unknown API key"))?;
        // The correlation id was consumed; a v1 response header adds tagged fields after it.
        if api_key.response_header_version(version) >= 1 {
            let mut with_id = BytesMut::with_capacity(4 + body.len());
            with_id.put_i32(got);
            with_id.extend_from_slice(&body);
            let mut with_id = with_id.freeze();
            ResponseHeader::decode(&mut with_id, 1).map_err(io::Error::other)?;
            body = with_id;
        }
        let response = R::Response::decode(&mut body, version).map_err(io::Error::other)?;
        if body.has_remaining() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} bytes after the response", body.remaining()),
            ));
        }
        Ok(response)
    }
}
