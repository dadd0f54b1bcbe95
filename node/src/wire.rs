//! Kafka framing: a 4-byte big-endian length, then a request header and body
//! (<https://kafka.apache.org/protocol#protocol_common>). Decoding never panics on client bytes.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::{Decodable, Encodable, Message, VersionRange};

/// A request ready for the broker.
#[derive(Debug)]
pub struct Request {
    pub api_key: ApiKey,
    pub version: i16,
    pub correlation_id: i32,
    pub client_id: Option<String>,
    pub body: RequestKind,
}

/// Why a frame could not be turned into a [`Request`].
#[derive(Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// ApiVersions at a version above the newest we know: answered with a v0 body and
    /// UNSUPPORTED_VERSION so the client can retry with a version we support (KIP-511).
    ApiVersionsTooNew { correlation_id: i32 },
    /// An API key we do not know, a version outside the supported range, or a malformed body.
    /// Kafka closes the connection in these cases; so do we, after logging.
    Invalid {
        correlation_id: Option<i32>,
        why: String,
    },
}

/// The versions of `api_key` both the request and the response types of the protocol crate can
/// handle. `ApiKey::valid_versions` alone can promise more (InitProducerId v6 in 0.18), and a
/// promise we cannot decode would close the client's connection.
pub fn supported_versions(api_key: ApiKey) -> VersionRange {
    use kafka_protocol::messages::*;
    fn both<R: kafka_protocol::protocol::Request>() -> VersionRange {
        R::VERSIONS.intersect(&<R::Response as Message>::VERSIONS)
    }
    fn capped(range: VersionRange, max: i16) -> VersionRange {
        VersionRange {
            min: range.min,
            max: range.max.min(max),
        }
    }
    let typed = match api_key {
        ApiKey::Produce => both::<ProduceRequest>(),
        ApiKey::Fetch => both::<FetchRequest>(),
        ApiKey::ListOffsets => both::<ListOffsetsRequest>(),
        ApiKey::DeleteRecords => both::<DeleteRecordsRequest>(),
        ApiKey::Metadata => both::<MetadataRequest>(),
        ApiKey::ApiVersions => both::<ApiVersionsRequest>(),
        ApiKey::CreateTopics => both::<CreateTopicsRequest>(),
        ApiKey::DeleteTopics => both::<DeleteTopicsRequest>(),
        ApiKey::CreatePartitions => both::<CreatePartitionsRequest>(),
        ApiKey::InitProducerId => both::<InitProducerIdRequest>(),
        ApiKey::DescribeConfigs => both::<DescribeConfigsRequest>(),
        ApiKey::AlterConfigs => both::<AlterConfigsRequest>(),
        ApiKey::IncrementalAlterConfigs => both::<IncrementalAlterConfigsRequest>(),
        ApiKey::DescribeAcls => both::<DescribeAclsRequest>(),
        ApiKey::CreateAcls => both::<CreateAclsRequest>(),
        ApiKey::DeleteAcls => both::<DeleteAclsRequest>(),
        ApiKey::OffsetForLeaderEpoch => both::<OffsetForLeaderEpochRequest>(),
        // Group APIs up to the last version of the classic protocol's layout: later versions
        // name topics by id (OffsetCommit 10, OffsetFetch 10) or carry KIP-848/932 fields
        // (FindCoordinator 6, ListGroups 5) the coordinator does not speak.
        ApiKey::FindCoordinator => capped(both::<FindCoordinatorRequest>(), 4),
        ApiKey::JoinGroup => capped(both::<JoinGroupRequest>(), 9),
        ApiKey::SyncGroup => capped(both::<SyncGroupRequest>(), 5),
        ApiKey::Heartbeat => capped(both::<HeartbeatRequest>(), 4),
        ApiKey::LeaveGroup => capped(both::<LeaveGroupRequest>(), 5),
        ApiKey::OffsetCommit => capped(both::<OffsetCommitRequest>(), 8),
        ApiKey::OffsetFetch => capped(both::<OffsetFetchRequest>(), 8),
        ApiKey::OffsetDelete => capped(both::<OffsetDeleteRequest>(), 0),
        ApiKey::DescribeGroups => capped(both::<DescribeGroupsRequest>(), 5),
        ApiKey::ListGroups => capped(both::<ListGroupsRequest>(), 4),
        ApiKey::DeleteGroups => capped(both::<DeleteGroupsRequest>(), 2),
        other => other.valid_versions(),
    };
    typed.intersect(&api_key.valid_versions())
}

/// Decodes one frame (without its length prefix).
pub fn decode_request(mut frame: Bytes) -> Result<Request, DecodeError> {
    if frame.len() < 8 {
        return Err(DecodeError::Invalid {
            correlation_id: None,
            why: format!("frame of {} bytes is too short for a header", frame.len()),
        });
    }
    let raw_key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let invalid = |why: String| DecodeError::Invalid {
        correlation_id: Some(correlation_id),
        why,
    };
    let api_key =
        ApiKey::try_from(raw_key).map_err(|_| invalid(format!("unknown API key {raw_key}")))?;
    let range = supported_versions(api_key);
    if version > range.max && api_key == ApiKey::ApiVersions {
        return Err(DecodeError::ApiVersionsTooNew { correlation_id });
    }
    if version < range.min || version > range.max {
        return Err(invalid(format!(
            "{api_key:?} v{version} is outside the supported range {range}"
        )));
    }
    let header_version = api_key.request_header_version(version);
    let header = RequestHeader::decode(&mut frame, header_version)
        .map_err(|e| invalid(format!("bad {api_key:?} request header: {e}")))?;
    let body = RequestKind::decode(api_key, &mut frame, version)
        .map_err(|e| invalid(format!("bad {api_key:?} v{version} body: {e}")))?;
    if frame.has_remaining() {
        // librdkafka 2.x sends stray zero bytes after some Metadata requests (its issue #5049);
        // Kafka ignores trailing bytes, and so do we.
        tracing::debug!(
            "{} bytes after the {api_key:?} v{version} body ignored",
            frame.remaining()
        );
    }
    Ok(Request {
        api_key,
        version,
        correlation_id,
        client_id: header.client_id.map(|s| s.to_string()),
        body,
    })
}

/// Encodes a response frame, length prefix included.
pub fn encode_response(
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &ResponseKind,
) -> anyhow_free::Result<Bytes> {
    let mut buf = BytesMut::with_capacity(64);
    buf.put_i32(0); // Length, filled in below.
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    header
        .encode(&mut buf, api_key.response_header_version(version))
        .map_err(|e| format!("encoding {api_key:?} response header: {e}"))?;
    body.encode(&mut buf, version)
        .map_err(|e| format!("encoding {api_key:?} v{version} response: {e}"))?;
    let len = (buf.len() - 4) as i32;
    buf[0..4].copy_from_slice(&len.to_be_bytes());
    Ok(buf.freeze())
}

/// The ApiVersions v0 response with UNSUPPORTED_VERSION (35) that tells a client which versions
/// of ApiVersions we speak.
pub fn api_versions_too_new(correlation_id: i32) -> Bytes {
    let mut buf = BytesMut::with_capacity(20);
    let range = supported_versions(ApiKey::ApiVersions);
    buf.put_i32(4 + 2 + 4 + 6);
    buf.put_i32(correlation_id);
    buf.put_i16(sluice_core::ErrorCode::UnsupportedVersion.code());
    buf.put_i32(1);
    buf.put_i16(ApiKey::ApiVersions as i16);
    buf.put_i16(range.min);
    buf.put_i16(range.max);
    buf.freeze()
}

/// A tiny error alias so this module does not pull in `anyhow`.
pub mod anyhow_free {
    pub type Result<T> = std::result::Result<T, String>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::{ApiVersionsRequest, MetadataRequest};
    use kafka_protocol::protocol::StrBytes;

    fn frame(api_key: ApiKey, version: i16, body: &RequestKind) -> Bytes {
        let mut buf = BytesMut::new();
        RequestHeader::default()
            .with_request_api_key(api_key as i16)
            .with_request_api_version(version)
            .with_correlation_id(42)
            .with_client_id(Some(StrBytes::from_static_str("t")))
            .encode(&mut buf, api_key.request_header_version(version))
            .unwrap();
        body.encode(&mut buf, version).unwrap();
        buf.freeze()
    }

    #[test]
    fn every_supported_version_of_a_request_decodes() {
        for version in ApiKey::Metadata.valid_versions().min..=ApiKey::Metadata.valid_versions().max
        {
            let req = decode_request(frame(
                ApiKey::Metadata,
                version,
                &RequestKind::Metadata(MetadataRequest::default()),
            ))
            .unwrap();
            assert_eq!(
                (req.api_key, req.version, req.correlation_id),
                (ApiKey::Metadata, version, 42)
            );
        }
    }

    #[test]
    fn too_new_api_versions_gets_the_v0_fallback_and_other_keys_are_invalid() {
        let mut f = frame(
            ApiKey::ApiVersions,
            3,
            &RequestKind::ApiVersions(ApiVersionsRequest::default()),
        )
        .to_vec();
        f[2..4].copy_from_slice(&99i16.to_be_bytes());
        assert!(matches!(
            decode_request(Bytes::from(f)),
            Err(DecodeError::ApiVersionsTooNew { correlation_id: 42 })
        ));
        let reply = api_versions_too_new(42);
        assert_eq!(&reply[4..8], &42i32.to_be_bytes());
        assert_eq!(&reply[8..10], &35i16.to_be_bytes());
        let mut unknown = frame(
            ApiKey::Metadata,
            1,
            &RequestKind::Metadata(MetadataRequest::default()),
        )
        .to_vec();
        unknown[0..2].copy_from_slice(&999i16.to_be_bytes());
        assert!(matches!(
            decode_request(Bytes::from(unknown)),
            Err(DecodeError::Invalid {
                correlation_id: Some(42),
                ..
            })
        ));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_frames_never_panic(bytes in proptest::collection::vec(proptest::arbitrary::any::<u8>(), 0..256)) {
            let _ = decode_request(Bytes::from(bytes));
        }

        #[test]
        fn arbitrary_bodies_after_a_valid_header_never_panic(
            key in 0i16..80, version in 0i16..20,
            body in proptest::collection::vec(proptest::arbitrary::any::<u8>(), 0..256),
        ) {
            let mut f = BytesMut::new();
            f.put_i16(key);
            f.put_i16(version);
            f.put_i32(7);
            f.put_i16(-1); // Null client id.
            f.extend_from_slice(&body);
            let _ = decode_request(f.freeze());
        }
    }
}
