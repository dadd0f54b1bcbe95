//! The broker in-process over loopback TCP, spoken to through Sluice's own client: every API at
//! every advertised version, the error codes clients expect, long polls, idempotence, crash
//! recovery on the simulated store, and garbage on the wire.
#![cfg(not(madsim))]

use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::create_partitions_request::{
    CreatePartitionsAssignment, CreatePartitionsRequest, CreatePartitionsTopic,
};
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreateTopicsRequest};
use kafka_protocol::messages::delete_records_request::{
    DeleteRecordsPartition, DeleteRecordsRequest, DeleteRecordsTopic,
};
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::describe_configs_request::{
    DescribeConfigsRequest, DescribeConfigsResource,
};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchRequest, FetchTopic};
use kafka_protocol::messages::init_producer_id_request::InitProducerIdRequest;
use kafka_protocol::messages::list_offsets_request::{
    ListOffsetsPartition, ListOffsetsRequest, ListOffsetsTopic,
};
use kafka_protocol::messages::metadata_request::{MetadataRequest, MetadataRequestTopic};
use kafka_protocol::messages::offset_for_leader_epoch_request::{
    OffsetForLeaderEpochRequest, OffsetForLeaderPartition, OffsetForLeaderTopic,
};
use kafka_protocol::messages::offset_for_leader_epoch_response::EpochEndOffset;
use kafka_protocol::messages::produce_request::{
    PartitionProduceData, ProduceRequest, TopicProduceData,
};
use kafka_protocol::messages::{ApiKey, ApiVersionsRequest, DeleteTopicsRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use sluice_core::batch::{self, BatchBuilder, NewRecord};
use sluice_core::testing::{CrashMode, MemStorage};
use sluice_node::broker::Broker;
use sluice_node::client::Connection;
use sluice_node::config::{Config, ServeArgs};
use sluice_node::wire::supported_versions;
use tokio::runtime::Runtime;
use uuid::Uuid;

/// A broker on its own runtime; dropping the runtime is a process crash.
struct Node {
    runtime: Option<Runtime>,
    addr: String,
    storage: MemStorage,
    config: Config,
}

impl Node {
    fn start(storage: MemStorage, args: ServeArgs) -> Node {
        let config = Config::resolve(ServeArgs {
            listen: Some("127.0.0.1:0".into()),
            ..args
        })
        .unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let mut config = config;
        config.advertised_listener = addr.clone();
        let broker = Broker::open(config.clone(), storage.clone()).unwrap();
        runtime.spawn(sluice_node::server::run(config.clone(), broker, listener));
        Node {
            runtime: Some(runtime),
            addr,
            storage,
            config,
        }
    }

    /// Power loss: the process dies and unsynced bytes are gone; then the node restarts.
    fn crash_and_restart(&mut self) {
        self.runtime.take().unwrap().shutdown_background();
        self.storage.crash(CrashMode::Clean);
        let args = ServeArgs {
            auto_create_topics: Some(self.config.auto_create_topics),
            ..ServeArgs::default()
        };
        *self = Node::start(self.storage.clone(), args);
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

fn client_runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

fn records(n: u8, tag: &str) -> Vec<u8> {
    let mut b = BatchBuilder::new(1_700_000_000_000);
    for i in 0..n {
        b.push(&NewRecord {
            timestamp: 1_700_000_000_000 + i64::from(i),
            key: Some(format!("k{i}").into_bytes()),
            value: Some(format!("{tag}-{i}").into_bytes()),
            headers: vec![(b"h".to_vec(), Some(vec![i]))],
        });
    }
    b.build()
}

fn produce_request(topic: &str, partition: i32, acks: i16, batch: Vec<u8>) -> ProduceRequest {
    ProduceRequest::default()
        .with_acks(acks)
        .with_timeout_ms(5_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(name(topic))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(partition)
                .with_records(Some(Bytes::from(batch)))])])
}

fn fetch_request(topic: &str, topic_id: Uuid, offset: i64, max_wait_ms: i32) -> FetchRequest {
    FetchRequest::default()
        .with_replica_id(kafka_protocol::messages::BrokerId(-1))
        .with_max_wait_ms(max_wait_ms)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_session_epoch(-1)
        .with_topics(vec![FetchTopic::default()
            .with_topic(name(topic))
            .with_topic_id(topic_id)
            .with_partitions(vec![FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(offset)
                .with_partition_max_bytes(1 << 20)
                .with_current_leader_epoch(-1)
                .with_last_fetched_epoch(-1)
                .with_log_start_offset(-1)])])
}

/// ListOffsets of partition 0 of `topic` at `timestamp`, as a consumer asks it.
fn list_offsets_request(
    topic: &str,
    timestamp: i64,
    current_leader_epoch: i32,
) -> ListOffsetsRequest {
    ListOffsetsRequest::default()
        .with_replica_id(kafka_protocol::messages::BrokerId(-1))
        .with_topics(vec![ListOffsetsTopic::default()
            .with_name(name(topic))
            .with_partitions(vec![ListOffsetsPartition::default()
                .with_partition_index(0)
                .with_timestamp(timestamp)
                .with_current_leader_epoch(current_leader_epoch)])])
}

async fn create_topic(c: &mut Connection, topic: &str, partitions: i32) -> Uuid {
    let req = CreateTopicsRequest::default()
        .with_timeout_ms(5_000)
        .with_topics(vec![CreatableTopic::default()
            .with_name(name(topic))
            .with_num_partitions(partitions)
            .with_replication_factor(1)]);
    let resp = c.call(&req, 7).await.unwrap();
    assert_eq!(
        resp.topics[0].error_code, 0,
        "{:?}",
        resp.topics[0].error_message
    );
    resp.topics[0].topic_id
}

#[test]
fn api_versions_at_every_version_and_the_fallback_for_newer_ones() {
    let node = Node::start(MemStorage::new(), ServeArgs::default());
    client_runtime().block_on(async {
        let mut c = Connection::connect(&node.addr).await.unwrap();
        let range = supported_versions(ApiKey::ApiVersions);
        for v in range.min..=range.max {
            let resp = c.call(&ApiVersionsRequest::default(), v).await.unwrap();
            assert_eq!(resp.error_code, 0);
            let produce = resp
                .api_keys
                .iter()
                .find(|k| k.api_key == ApiKey::Produce as i16)
                .unwrap();
            assert_eq!(
                (produce.min_version, produce.max_version),
                (
                    supported_versions(ApiKey::Produce).min,
                    supported_versions(ApiKey::Produce).max
                )
            );
            assert!(resp
                .api_keys
                .iter()
                .any(|k| k.api_key == ApiKey::InitProducerId as i16));
        }
        // Version 99: the v0 body with UNSUPPORTED_VERSION, and the connection stays usable.
        let mut frame = vec![0u8; 4];
        frame.extend_from_slice(&(ApiKey::ApiVersions as i16).to_be_bytes());
        frame.extend_from_slice(&99i16.to_be_bytes());
        frame.extend_from_slice(&77i32.to_be_bytes());
        frame.extend_from_slice(&(-1i16).to_be_bytes());
        let len = (frame.len() - 4) as i32;
        frame[0..4].copy_from_slice(&len.to_be_bytes());
        c.send_raw(&frame).await.unwrap();
        let (correlation_id, body) = c.receive_raw().await.unwrap();
        assert_eq!(correlation_id, 77);
        assert_eq!(&body[0..2], &35i16.to_be_bytes());
        let resp = c.call(&ApiVersionsRequest::default(), 0).await.unwrap();
        assert_eq!(resp.error_code, 0);
    });
}

#[test]
fn every_version_of_every_served_api_round_trips() {
    let node = Node::start(MemStorage::new(), ServeArgs::default());
    client_runtime().block_on(async {
        let mut c = Connection::connect(&node.addr).await.unwrap();
        let topic_id = create_topic(&mut c, "versions", 1).await;
        for v in supported_versions(ApiKey::Metadata).min..=supported_versions(ApiKey::Metadata).max
        {
            // From v10 a topic may be named by its id alone.
            let topics = if v >= 10 {
                vec![MetadataRequestTopic::default()
                    .with_name(None)
                    .with_topic_id(topic_id)]
            } else {
                vec![MetadataRequestTopic::default().with_name(Some(name("versions")))]
            };
            let resp = c
                .call(&MetadataRequest::default().with_topics(Some(topics)), v)
                .await
                .unwrap();
            assert_eq!(resp.topics.len(), 1, "metadata v{v}");
            assert_eq!(resp.topics[0].error_code, 0, "metadata v{v}");
            assert_eq!(
                resp.topics[0].name.as_ref().map(|n| n.0.as_str()),
                Some("versions"),
                "metadata v{v}"
            );
            assert_eq!(resp.topics[0].partitions.len(), 1, "metadata v{v}");
            assert_eq!(
                resp.brokers[0].port.to_string(),
                node.addr.rsplit(':').next().unwrap()
            );
        }
        // Kafka offsets: the first record is at 0 (the leader's term-start entry takes none).
        let start = 0i64;
        let mut expected_offset = start;
        for v in supported_versions(ApiKey::Produce).min..=supported_versions(ApiKey::Produce).max {
            let mut req = produce_request("versions", 0, -1, records(3, &format!("v{v}")));
            if v >= 13 {
                req.topic_data[0].name = TopicName::default();
                req.topic_data[0].topic_id = topic_id;
            }
            let resp = c.call(&req, v).await.unwrap();
            let p = &resp.responses[0].partition_responses[0];
            assert_eq!(
                (p.error_code, p.base_offset),
                (0, expected_offset),
                "produce v{v}"
            );
            expected_offset += 3;
        }
        for v in supported_versions(ApiKey::Fetch).min..=supported_versions(ApiKey::Fetch).max {
            let mut req = fetch_request("versions", topic_id, 0, 0);
            if v >= 13 {
                req.topics[0].topic = TopicName::default();
            }
            let resp = c.call(&req, v).await.unwrap();
            let p = &resp.responses[0].partitions[0];
            assert_eq!(p.error_code, 0, "fetch v{v}");
            assert_eq!(p.high_watermark, expected_offset, "fetch v{v}");
            let records = p.records.as_ref().unwrap();
            let batches = batch::split_batches(records).unwrap();
            // The data batches only: Raft's term-start entry never reaches a client.
            assert_eq!(
                batches.len() as i64,
                (expected_offset - start) / 3,
                "fetch v{v}"
            );
            assert!(batches.iter().all(|(h, _)| !h.is_control()), "fetch v{v}");
            assert_eq!(batches[0].0.base_offset, 0, "fetch v{v}");
        }
        for v in supported_versions(ApiKey::ListOffsets).min
            ..=supported_versions(ApiKey::ListOffsets).max
        {
            for (ts, expected) in [
                (-2, 0),
                (-1, expected_offset),
                (1_700_000_000_001, start + 1),
            ] {
                let req = ListOffsetsRequest::default()
                    .with_replica_id(kafka_protocol::messages::BrokerId(-1))
                    .with_topics(vec![ListOffsetsTopic::default()
                        .with_name(name("versions"))
                        .with_partitions(vec![ListOffsetsPartition::default()
                            .with_partition_index(0)
                            .with_timestamp(ts)
                            .with_current_leader_epoch(-1)])]);
                let resp = c.call(&req, v).await.unwrap();
                let p = &resp.topics[0].partitions[0];
                assert_eq!(
                    (p.error_code, p.offset),
                    (0, expected),
                    "list offsets v{v} ts {ts}"
                );
            }
        }
        for v in supported_versions(ApiKey::DescribeConfigs).min
            ..=supported_versions(ApiKey::DescribeConfigs).max
        {
            let req = DescribeConfigsRequest::default().with_resources(vec![
                DescribeConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(StrBytes::from_static_str("versions"))
                    .with_configuration_keys(None),
            ]);
            let resp = c.call(&req, v).await.unwrap();
            assert_eq!(resp.results[0].error_code, 0);
            assert!(
                resp.results[0]
                    .configs
                    .iter()
                    .any(|c| c.name.as_str() == "retention.ms"),
                "describe configs v{v}"
            );
        }
        for v in supported_versions(ApiKey::InitProducerId).min
            ..=supported_versions(ApiKey::InitProducerId).max
        {
            let resp = c
                .call(
                    &InitProducerIdRequest::default()
                        .with_transactional_id(None)
                        .with_producer_id(kafka_protocol::messages::ProducerId(-1))
                        .with_producer_epoch(-1),
                    v,
                )
                .await
                .unwrap();
            assert_eq!(resp.error_code, 0, "init producer id v{v}");
            assert!(resp.producer_id.0 >= 0);
        }
        for v in supported_versions(ApiKey::CreateTopics).min
            ..=supported_versions(ApiKey::CreateTopics).max
        {
            let topic = format!("created-v{v}");
            let req = CreateTopicsRequest::default()
                .with_timeout_ms(1000)
                .with_topics(vec![CreatableTopic::default()
                    .with_name(name(&topic))
                    .with_num_partitions(2)
                    .with_replication_factor(-1)]);
            let resp = c.call(&req, v).await.unwrap();
            assert_eq!(resp.topics[0].error_code, 0, "create topics v{v}");
        }
        for v in supported_versions(ApiKey::DeleteTopics).min
            ..=supported_versions(ApiKey::DeleteTopics).max
        {
            let topic = format!(
                "created-v{}",
                supported_versions(ApiKey::CreateTopics).min + v
                    - supported_versions(ApiKey::DeleteTopics).min
            );
            let req = if v >= 6 {
                DeleteTopicsRequest::default().with_topics(vec![
                    DeleteTopicState::default().with_name(Some(name(&topic)))
                ])
            } else {
                DeleteTopicsRequest::default().with_topic_names(vec![name(&topic)])
            };
            let resp = c.call(&req, v).await.unwrap();
            assert_eq!(
                resp.responses[0].error_code, 0,
                "delete topics v{v} ({topic})"
            );
        }
        // DeleteRecords: each version moves the low watermark one record further, which
        // ListOffsets EARLIEST then reports; past the high watermark is OFFSET_OUT_OF_RANGE.
        for v in supported_versions(ApiKey::DeleteRecords).min
            ..=supported_versions(ApiKey::DeleteRecords).max
        {
            let delete = |offset: i64| {
                DeleteRecordsRequest::default()
                    .with_timeout_ms(5_000)
                    .with_topics(vec![DeleteRecordsTopic::default()
                        .with_name(name("versions"))
                        .with_partitions(vec![DeleteRecordsPartition::default()
                            .with_partition_index(0)
                            .with_offset(offset)])])
            };
            let low = i64::from(v) + 1;
            let resp = c.call(&delete(low), v).await.unwrap();
            let p = &resp.topics[0].partitions[0];
            assert_eq!(
                (p.error_code, p.low_watermark),
                (0, low),
                "delete records v{v}"
            );
            let resp = c.call(&delete(expected_offset + 1), v).await.unwrap();
            let p = &resp.topics[0].partitions[0];
            assert_eq!(
                (p.error_code, p.low_watermark),
                (1, -1),
                "delete records v{v}"
            );
            let resp = c
                .call(&list_offsets_request("versions", -2, -1), 1)
                .await
                .unwrap();
            assert_eq!(
                resp.topics[0].partitions[0].offset, low,
                "delete records v{v}"
            );
        }
    });
}

/// A CreatePartitions request growing each `(topic, count)`; `assignment` for every topic.
fn create_partitions_request(
    topics: &[(&str, i32)],
    assignment: Option<Vec<Vec<i32>>>,
    validate_only: bool,
) -> CreatePartitionsRequest {
    CreatePartitionsRequest::default()
        .with_timeout_ms(5_000)
        .with_validate_only(validate_only)
        .with_topics(
            topics
                .iter()
                .map(|(topic, count)| {
                    CreatePartitionsTopic::default()
                        .with_name(name(topic))
                        .with_count(*count)
                        .with_assignments(assignment.as_ref().map(|a| {
                            a.iter()
                                .map(|ids| {
                                    CreatePartitionsAssignment::default().with_broker_ids(
                                        ids.iter()
                                            .map(|id| kafka_protocol::messages::BrokerId(*id))
                                            .collect(),
                                    )
                                })
                                .collect()
                        }))
                })
                .collect(),
        )
}

/// The values of the data records of `topic`-`partition` from offset 0.
async fn fetch_values(c: &mut Connection, topic: &str, partition: i32) -> Vec<String> {
    let mut req = fetch_request(topic, Uuid::nil(), 0, 0);
    req.topics[0].partitions[0].partition = partition;
    let resp = c.call(&req, 12).await.unwrap();
    let p = &resp.responses[0].partitions[0];
    assert_eq!(p.error_code, 0, "fetch {topic}-{partition}");
    let records = p.records.clone().unwrap_or_default();
    let mut values = Vec::new();
    for (header, range) in batch::split_batches(&records).unwrap() {
        if header.is_control() {
            continue;
        }
        for r in batch::Records::new(&records[range]).unwrap() {
            let value = r.unwrap().value.unwrap_or_default();
            values.push(String::from_utf8_lossy(value).into_owned());
        }
    }
    values
}

/// CreatePartitions at every version grows a topic one partition at a time; each answer comes
/// once the new partition serves, so a produce right after it lands. Then Kafka's refusals.
#[test]
fn create_partitions_at_every_version_grows_a_topic_that_serves_at_once() {
    const INVALID_PARTITIONS: i16 = sluice_core::ErrorCode::InvalidPartitions as i16;
    const INVALID_REPLICA_ASSIGNMENT: i16 = sluice_core::ErrorCode::InvalidReplicaAssignment as i16;
    const INVALID_REQUEST: i16 = sluice_core::ErrorCode::InvalidRequest as i16;
    const UNKNOWN_TOPIC_OR_PARTITION: i16 = sluice_core::ErrorCode::UnknownTopicOrPartition as i16;
    let node = Node::start(MemStorage::new(), ServeArgs::default());
    client_runtime().block_on(async {
        let mut c = Connection::connect(&node.addr).await.unwrap();
        let resp = c.call(&ApiVersionsRequest::default(), 3).await.unwrap();
        let advertised = resp
            .api_keys
            .iter()
            .find(|k| k.api_key == ApiKey::CreatePartitions as i16)
            .expect("CreatePartitions is advertised");
        assert_eq!((advertised.min_version, advertised.max_version), (0, 3));

        create_topic(&mut c, "grow", 1).await;
        let range = supported_versions(ApiKey::CreatePartitions);
        let mut count = 1;
        for v in range.min..=range.max {
            count += 1;
            let req = create_partitions_request(&[("grow", count)], None, false);
            let resp = c.call(&req, v).await.unwrap();
            assert_eq!(resp.results.len(), 1, "v{v}");
            let r = &resp.results[0];
            assert_eq!(
                (r.name.0.as_str(), r.error_code, r.error_message.as_ref()),
                ("grow", 0, None),
                "create partitions v{v}"
            );
            let p = count - 1;
            let tag = format!("p{p}");
            let resp = c
                .call(&produce_request("grow", p, -1, records(2, &tag)), 9)
                .await
                .unwrap();
            assert_eq!(
                resp.responses[0].partition_responses[0].error_code, 0,
                "produce to grow-{p} right after v{v}"
            );
            assert_eq!(
                fetch_values(&mut c, "grow", p).await,
                vec![format!("{tag}-0"), format!("{tag}-1")]
            );
        }
        let metadata = MetadataRequest::default().with_topics(Some(vec![
            MetadataRequestTopic::default().with_name(Some(name("grow"))),
        ]));
        let resp = c.call(&metadata, 12).await.unwrap();
        let partitions = &resp.topics[0].partitions;
        assert_eq!(partitions.len(), count as usize);
        assert!(
            partitions
                .iter()
                .all(|p| p.error_code == 0 && p.leader_id.0 >= 0),
            "every partition has a leader: {partitions:?}"
        );

        let answers = |resp: &kafka_protocol::messages::CreatePartitionsResponse| {
            resp.results
                .iter()
                .map(|r| {
                    (
                        r.name.0.to_string(),
                        r.error_code,
                        r.error_message.as_ref().map(|m| m.to_string()),
                    )
                })
                .collect::<Vec<_>>()
        };
        let req = create_partitions_request(&[("grow", count), ("nope", 2)], None, false);
        let resp = c.call(&req, 3).await.unwrap();
        assert_eq!(
            answers(&resp),
            vec![
                (
                    "grow".into(),
                    INVALID_PARTITIONS,
                    Some(format!("Topic already has {count} partition(s)."))
                ),
                (
                    "nope".into(),
                    UNKNOWN_TOPIC_OR_PARTITION,
                    Some("unknown topic \"nope\"".into())
                ),
            ]
        );
        let req = create_partitions_request(&[("grow", 1)], None, false);
        let resp = c.call(&req, 0).await.unwrap();
        assert_eq!(resp.results[0].error_code, INVALID_PARTITIONS);
        let req = create_partitions_request(&[("grow", 9), ("grow", 10)], None, false);
        let resp = c.call(&req, 3).await.unwrap();
        assert_eq!(
            answers(&resp),
            vec![(
                "grow".into(),
                INVALID_REQUEST,
                Some("Duplicate topic name.".into())
            )]
        );
        let req = create_partitions_request(&[("grow", count + 1)], Some(vec![vec![7]]), false);
        let resp = c.call(&req, 3).await.unwrap();
        assert_eq!(resp.results[0].error_code, INVALID_REPLICA_ASSIGNMENT);
        let req = create_partitions_request(&[("grow", count + 4)], None, true);
        let resp = c.call(&req, 3).await.unwrap();
        assert_eq!(resp.results[0].error_code, 0, "validate only");
        let resp = c.call(&metadata, 12).await.unwrap();
        assert_eq!(
            resp.topics[0].partitions.len(),
            count as usize,
            "nothing grew"
        );
    });
}

#[test]
fn clients_get_the_error_codes_they_expect() {
    let node = Node::start(
        MemStorage::new(),
        ServeArgs {
            auto_create_topics: Some(false),
            message_bytes_max: Some(2000),
            ..ServeArgs::default()
        },
    );
    client_runtime().block_on(async {
        let mut c = Connection::connect(&node.addr).await.unwrap();
        let create = |topic: &str, partitions: i32, rf: i16| {
            CreateTopicsRequest::default()
                .with_timeout_ms(1000)
                .with_topics(vec![CreatableTopic::default()
                    .with_name(name(topic))
                    .with_num_partitions(partitions)
                    .with_replication_factor(rf)])
        };
        let code = |r: kafka_protocol::messages::CreateTopicsResponse| r.topics[0].error_code;
        assert_eq!(
            code(c.call(&create("bad name!", 1, 1), 7).await.unwrap()),
            17
        );
        assert_eq!(
            code(c.call(&create(&"x".repeat(250), 1, 1), 7).await.unwrap()),
            17
        );
        assert_eq!(code(c.call(&create("zero", 0, 1), 7).await.unwrap()), 37);
        assert_eq!(code(c.call(&create("rf3", 1, 3), 7).await.unwrap()), 38);
        assert_eq!(code(c.call(&create("ok", 1, 1), 7).await.unwrap()), 0);
        assert_eq!(code(c.call(&create("ok", 1, 1), 7).await.unwrap()), 36);

        let metadata = c
            .call(
                &MetadataRequest::default()
                    .with_topics(Some(vec![
                        MetadataRequestTopic::default().with_name(Some(name("missing")))
                    ]))
                    .with_allow_auto_topic_creation(true),
                12,
            )
            .await
            .unwrap();
        assert_eq!(metadata.topics[0].error_code, 3, "auto-create is off");

        let produce = |topic: &str, batch: Vec<u8>| produce_request(topic, 0, 1, batch);
        let p = |r: kafka_protocol::messages::ProduceResponse| {
            r.responses[0].partition_responses[0].error_code
        };
        assert_eq!(
            p(c.call(&produce("missing", records(1, "a")), 9)
                .await
                .unwrap()),
            3
        );
        let mut corrupt = records(2, "a");
        let last = corrupt.len() - 1;
        corrupt[last] ^= 1;
        assert_eq!(p(c.call(&produce("ok", corrupt), 9).await.unwrap()), 2);
        let big = {
            let mut b = BatchBuilder::new(0);
            b.push(&NewRecord {
                value: Some(vec![0; 3000]),
                ..NewRecord::default()
            });
            b.build()
        };
        assert_eq!(p(c.call(&produce("ok", big), 9).await.unwrap()), 10);
        let mut bad_acks = produce("ok", records(1, "a"));
        bad_acks.acks = 2;
        assert_eq!(p(c.call(&bad_acks, 9).await.unwrap()), 21);
        assert_eq!(
            p(c.call(&produce("ok", records(1, "a")), 9).await.unwrap()),
            0
        );

        let f = c
            .call(&fetch_request("ok", Uuid::nil(), 5, 0), 12)
            .await
            .unwrap();
        assert_eq!(
            f.responses[0].partitions[0].error_code, 1,
            "fetch beyond the log end"
        );
        let f = c
            .call(&fetch_request("missing", Uuid::nil(), 0, 0), 12)
            .await
            .unwrap();
        assert_eq!(f.responses[0].partitions[0].error_code, 3);
    });
}

#[test]
fn idempotent_retries_get_their_original_offsets_and_gaps_are_refused() {
    let node = Node::start(MemStorage::new(), ServeArgs::default());
    client_runtime().block_on(async {
        let mut c = Connection::connect(&node.addr).await.unwrap();
        create_topic(&mut c, "idem", 1).await;
        let init = c
            .call(
                &InitProducerIdRequest::default()
                    .with_transactional_id(None)
                    .with_producer_id(kafka_protocol::messages::ProducerId(-1))
                    .with_producer_epoch(-1),
                4,
            )
            .await
            .unwrap();
        assert_eq!(init.error_code, 0);
        let pid = init.producer_id.0;
        let batch = |seq: i32, n: u8| {
            let mut b = BatchBuilder::new(0).idempotent(pid, init.producer_epoch, seq);
            for i in 0..n {
                b.push(&NewRecord {
                    value: Some(vec![i]),
                    ..NewRecord::default()
                });
            }
            b.build()
        };
        let send = |bytes: Vec<u8>| produce_request("idem", 0, -1, bytes);
        let first = c.call(&send(batch(0, 3)), 9).await.unwrap().responses[0].partition_responses
            [0]
        .clone();
        let second = c.call(&send(batch(3, 2)), 9).await.unwrap().responses[0].partition_responses
            [0]
        .clone();
        let retry = c.call(&send(batch(0, 3)), 9).await.unwrap().responses[0].partition_responses
            [0]
        .clone();
        let base = first.base_offset;
        assert_eq!(first.error_code, 0);
        assert_eq!((second.error_code, second.base_offset), (0, base + 3));
        assert_eq!(
            (retry.error_code, retry.base_offset),
            (0, base),
            "a retry is acknowledged with its original offset"
        );
        let gap = c.call(&send(batch(9, 1)), 9).await.unwrap().responses[0].partition_responses[0]
            .clone();
        assert_eq!(gap.error_code, 45);
        let f = c
            .call(&fetch_request("idem", Uuid::nil(), 0, 0), 12)
            .await
            .unwrap();
        assert_eq!(
            f.responses[0].partitions[0].high_watermark,
            base + 5,
            "the retry wrote nothing"
        );
    });
}

#[test]
fn a_long_poll_returns_when_data_arrives_and_acks_zero_gets_no_response() {
    let node = Node::start(MemStorage::new(), ServeArgs::default());
    client_runtime().block_on(async {
        let mut c = Connection::connect(&node.addr).await.unwrap();
        create_topic(&mut c, "poll", 1).await;
        // A 30 s long poll: it must come back as soon as the record is committed.
        let mut poller = Connection::connect(&node.addr).await.unwrap();
        let id = poller
            .send(&fetch_request("poll", Uuid::nil(), 0, 30_000), 12)
            .await
            .unwrap();
        // acks=0: no response at all, so the next response on this connection is the metadata one.
        c.send(&produce_request("poll", 0, 0, records(2, "zero")), 9)
            .await
            .unwrap();
        let meta = c
            .call(&MetadataRequest::default().with_topics(None), 12)
            .await
            .unwrap();
        assert_eq!(meta.topics.len(), 1);
        let (got, _) = tokio::time::timeout(Duration::from_secs(10), poller.receive_raw())
            .await
            .expect("long poll answered")
            .unwrap();
        assert_eq!(got, id);
    });
}

#[test]
fn acknowledged_records_survive_a_crash_and_unacknowledged_offsets_are_not_served() {
    let mut node = Node::start(MemStorage::new(), ServeArgs::default());
    let rt = client_runtime();
    let acked: Vec<i64> = rt.block_on(async {
        let mut c = Connection::connect(&node.addr).await.unwrap();
        create_topic(&mut c, "durable", 1).await;
        let mut offsets = Vec::new();
        for i in 0..20 {
            let resp = c
                .call(
                    &produce_request("durable", 0, -1, records(5, &format!("b{i}"))),
                    9,
                )
                .await
                .unwrap();
            let p = &resp.responses[0].partition_responses[0];
            assert_eq!(p.error_code, 0);
            offsets.push(p.base_offset);
        }
        offsets
    });
    node.crash_and_restart();
    rt.block_on(async {
        let mut c = Connection::connect(&node.addr).await.unwrap();
        let mut offset = 0;
        let mut seen = Vec::new();
        while seen.len() < acked.len() {
            let f = c
                .call(&fetch_request("durable", Uuid::nil(), offset, 1000), 12)
                .await
                .unwrap();
            let p = &f.responses[0].partitions[0];
            assert_eq!(p.error_code, 0, "{p:?}");
            for (h, _) in batch::split_batches(p.records.as_ref().unwrap()).unwrap() {
                // Term-start control batches (one per leader term, so one per restart) are
                // not records.
                if !h.is_control() {
                    seen.push(h.base_offset);
                }
                offset = h.next_offset();
            }
        }
        assert_eq!(
            seen, acked,
            "every acknowledged batch is back at its acknowledged offset"
        );
    });
}

#[test]
fn garbage_on_one_connection_leaves_the_others_working() {
    let node = Node::start(
        MemStorage::new(),
        ServeArgs {
            frame_bytes_max: Some(1 << 20),
            ..ServeArgs::default()
        },
    );
    client_runtime().block_on(async {
        let mut good = Connection::connect(&node.addr).await.unwrap();
        create_topic(&mut good, "survivor", 1).await;
        let garbage: Vec<Vec<u8>> = vec![
            (2i32 << 20).to_be_bytes().to_vec(), // Longer than the frame limit.
            (-5i32).to_be_bytes().to_vec(),      // Negative length.
            [&12i32.to_be_bytes()[..], &[0xff; 12]].concat(), // Unknown API key.
            [&3i32.to_be_bytes()[..], &[1, 2, 3]].concat(), // Too short for a header.
            [&10i32.to_be_bytes()[..], &[0, 3, 0, 12, 0, 0, 0, 1, 0, 9]].concat(), // Metadata v12 with a bad client id.
            (0..200u8).map(|i| i.wrapping_mul(37)).collect(),
        ];
        for g in garbage {
            let mut bad = Connection::connect(&node.addr).await.unwrap();
            bad.send_raw(&g).await.unwrap();
            // The broker closes the connection (or waits for more bytes); either way the good
            // connection keeps working.
            let _ = tokio::time::timeout(Duration::from_millis(200), bad.receive_raw()).await;
            let resp = good
                .call(&produce_request("survivor", 0, -1, records(1, "ok")), 9)
                .await
                .unwrap();
            assert_eq!(resp.responses[0].partition_responses[0].error_code, 0);
        }
        let f = good
            .call(&fetch_request("survivor", Uuid::nil(), 0, 0), 12)
            .await
            .unwrap();
        // Six records, at Kafka offsets 0..=5.
        assert_eq!(f.responses[0].partitions[0].high_watermark, 6);
    });
}

/// One OffsetForLeaderEpoch question: (topic, partition, current leader epoch, epoch asked for).
type EpochQuestion<'a> = (&'a str, i32, i32, i32);

async fn offset_for_leader_epoch(
    c: &mut Connection,
    version: i16,
    questions: &[EpochQuestion<'_>],
) -> Vec<EpochEndOffset> {
    let topics = questions
        .iter()
        .map(|&(topic, partition, current, epoch)| {
            OffsetForLeaderTopic::default()
                .with_topic(name(topic))
                .with_partitions(vec![OffsetForLeaderPartition::default()
                    .with_partition(partition)
                    .with_current_leader_epoch(current)
                    .with_leader_epoch(epoch)])
        })
        .collect();
    let req = OffsetForLeaderEpochRequest::default()
        .with_replica_id(kafka_protocol::messages::BrokerId(-1))
        .with_topics(topics);
    let resp = c.call(&req, version).await.unwrap();
    assert_eq!(resp.topics.len(), questions.len());
    resp.topics
        .into_iter()
        .zip(questions)
        .map(|(t, q)| {
            assert_eq!(t.topic.0.as_str(), q.0);
            assert_eq!(t.partitions.len(), 1);
            t.partitions.into_iter().next().unwrap()
        })
        .collect()
}

/// (error code, leader epoch, end offset) of an answer.
fn epoch_answer(r: &EpochEndOffset) -> (i16, i32, i64) {
    (r.error_code, r.leader_epoch, r.end_offset)
}

/// The partition's leader epoch as Metadata reports it.
async fn current_epoch(c: &mut Connection, topic: &str) -> i32 {
    let meta = c
        .call(
            &MetadataRequest::default().with_topics(Some(vec![
                MetadataRequestTopic::default().with_name(Some(name(topic)))
            ])),
            12,
        )
        .await
        .unwrap();
    meta.topics[0].partitions[0].leader_epoch
}

/// Appends `n` acks=all batches to partition 0 and returns the log end offset after them.
async fn produce_acked(c: &mut Connection, topic: &str, n: usize) -> i64 {
    let mut end = -1;
    for i in 0..n {
        let resp = c
            .call(
                &produce_request(topic, 0, -1, records(2, &format!("r{i}"))),
                9,
            )
            .await
            .unwrap();
        let p = &resp.responses[0].partition_responses[0];
        assert_eq!(p.error_code, 0);
        end = p.base_offset + 2;
    }
    end
}

#[test]
fn offset_for_leader_epoch_answers_for_every_term_a_partition_went_through() {
    // Every start of a single-voter partition is a new Raft term, i.e. a new leader epoch, whose
    // term-start control batch sits at the log end the previous term left.
    let mut node = Node::start(MemStorage::new(), ServeArgs::default());
    let rt = client_runtime();
    let mut term_ends = Vec::new(); // (epoch, the log end offset when it ended)
    rt.block_on(async {
        let mut c = Connection::connect(&node.addr).await.unwrap();
        create_topic(&mut c, "epochs", 1).await;
        let epoch = current_epoch(&mut c, "epochs").await;
        term_ends.push((epoch, produce_acked(&mut c, "epochs", 3).await));
    });
    for _ in 0..2 {
        node.crash_and_restart();
        rt.block_on(async {
            let mut c = Connection::connect(&node.addr).await.unwrap();
            let epoch = current_epoch(&mut c, "epochs").await;
            assert_eq!(
                epoch,
                term_ends.last().unwrap().0 + 1,
                "a restart is a new term"
            );
            term_ends.push((epoch, produce_acked(&mut c, "epochs", 2).await));
        });
    }
    let [(first, first_end), (second, second_end), (current, log_end)] = term_ends[..] else {
        unreachable!()
    };
    assert!(first >= 1, "so that an epoch below every epoch exists");
    rt.block_on(async {
        let mut c = Connection::connect(&node.addr).await.unwrap();
        let range = supported_versions(ApiKey::OffsetForLeaderEpoch);
        assert_eq!((range.min, range.max), (2, 4));
        for v in range.min..=range.max {
            let ask = |epoch: i32| ("epochs", 0, -1, epoch);
            let answers = offset_for_leader_epoch(
                &mut c,
                v,
                &[
                    ask(current),
                    ask(second),
                    ask(first),
                    ask(first - 1),
                    ask(current + 1),
                    ask(-1),
                ],
            )
            .await;
            let answers: Vec<_> = answers.iter().map(epoch_answer).collect();
            assert_eq!(
                answers,
                vec![
                    // The current epoch ends at the log end.
                    (0, current, log_end),
                    // An older epoch ends where the next one started.
                    (0, second, second_end),
                    (0, first, first_end),
                    // Below every epoch: itself and the first epoch's start (the log start).
                    (0, first - 1, 0),
                    // Above every epoch: Kafka's UNDEFINED_EPOCH(_OFFSET), with no error.
                    (0, -1, -1),
                    (0, -1, -1),
                ],
                "OffsetForLeaderEpoch v{v}"
            );
        }
    });
}

#[test]
fn leader_epoch_fencing_and_unknown_partitions_in_offset_for_leader_epoch_fetch_and_list_offsets() {
    let mut node = Node::start(MemStorage::new(), ServeArgs::default());
    let rt = client_runtime();
    rt.block_on(async {
        let mut c = Connection::connect(&node.addr).await.unwrap();
        create_topic(&mut c, "fenced", 2).await;
        produce_acked(&mut c, "fenced", 1).await;
    });
    // A second term, so that an older epoch exists.
    node.crash_and_restart();
    rt.block_on(async {
        let mut c = Connection::connect(&node.addr).await.unwrap();
        let api_versions = c.call(&ApiVersionsRequest::default(), 3).await.unwrap();
        assert!(api_versions
            .api_keys
            .iter()
            .any(|k| k.api_key == ApiKey::OffsetForLeaderEpoch as i16
                && (k.min_version, k.max_version) == (2, 4)));
        let epoch = current_epoch(&mut c, "fenced").await;
        let log_end = produce_acked(&mut c, "fenced", 1).await;
        assert!(epoch >= 1);
        for v in 2..=4 {
            let answers = offset_for_leader_epoch(
                &mut c,
                v,
                &[
                    ("fenced", 0, epoch, epoch),
                    ("fenced", 0, epoch - 1, epoch),
                    ("fenced", 0, epoch + 1, epoch),
                    ("fenced", 5, epoch, epoch),
                    ("missing", 0, -1, epoch),
                ],
            )
            .await;
            let answers: Vec<_> = answers.iter().map(epoch_answer).collect();
            assert_eq!(
                answers,
                vec![
                    (0, epoch, log_end),
                    (74, -1, -1), // FENCED_LEADER_EPOCH: the client's metadata is stale.
                    (75, -1, -1), // UNKNOWN_LEADER_EPOCH: the client is ahead of this replica.
                    (3, -1, -1),  // UNKNOWN_TOPIC_OR_PARTITION
                    (3, -1, -1),
                ],
                "OffsetForLeaderEpoch v{v}"
            );
        }

        // Fetch carries the current leader epoch from v9.
        let fetch = supported_versions(ApiKey::Fetch);
        let topic_id = metadata_topic_id(&mut c, "fenced").await;
        for v in 9.max(fetch.min)..=fetch.max {
            for (current, code) in [(-1, 0), (epoch, 0), (epoch - 1, 74), (epoch + 1, 75)] {
                let mut req = fetch_request("fenced", Uuid::nil(), 0, 0);
                req.topics[0].partitions[0].current_leader_epoch = current;
                if v >= 13 {
                    req.topics[0].topic = TopicName::default();
                    req.topics[0].topic_id = topic_id;
                }
                let resp = c.call(&req, v).await.unwrap();
                let p = &resp.responses[0].partitions[0];
                assert_eq!(p.error_code, code, "fetch v{v} with epoch {current}");
                let expected_hw = if code == 0 { log_end } else { -1 };
                assert_eq!(p.high_watermark, expected_hw, "fetch v{v}");
            }
        }

        // ListOffsets carries it from v4, and reports the leader epoch only when it answers.
        let list = supported_versions(ApiKey::ListOffsets);
        for v in list.min..=list.max {
            for (current, code) in [(-1, 0), (epoch, 0), (epoch - 1, 74), (epoch + 1, 75)] {
                if v < 4 && current != -1 {
                    continue;
                }
                let req = list_offsets_request("fenced", -1, current);
                let resp = c.call(&req, v).await.unwrap();
                let p = &resp.topics[0].partitions[0];
                let expected = if code == 0 {
                    (0, log_end, if v >= 4 { epoch } else { -1 })
                } else {
                    (code, -1, -1)
                };
                assert_eq!(
                    (p.error_code, p.offset, p.leader_epoch),
                    expected,
                    "list offsets v{v} with epoch {current}"
                );
            }
        }
    });
}

async fn metadata_topic_id(c: &mut Connection, topic: &str) -> Uuid {
    let meta = c
        .call(
            &MetadataRequest::default().with_topics(Some(vec![
                MetadataRequestTopic::default().with_name(Some(name(topic)))
            ])),
            12,
        )
        .await
        .unwrap();
    meta.topics[0].topic_id
}

/// `v` clamped into `api`'s advertised range.
fn clamp_version(api: ApiKey, v: i16) -> i16 {
    let range = supported_versions(api);
    v.clamp(range.min, range.max)
}

/// Asks FindCoordinator until `__consumer_offsets` exists and has a leader (the first call
/// creates it); returns the coordinator's port.
async fn find_coordinator(c: &mut Connection, group: &str, version: i16) -> i32 {
    use kafka_protocol::messages::FindCoordinatorRequest;
    for _ in 0..200 {
        let mut req = FindCoordinatorRequest::default();
        if version >= 4 {
            req.coordinator_keys = vec![StrBytes::from_string(group.to_string())];
        } else {
            req.key = StrBytes::from_string(group.to_string());
        }
        let resp = c.call(&req, version).await.unwrap();
        let (code, port) = if version >= 4 {
            (resp.coordinators[0].error_code, resp.coordinators[0].port)
        } else {
            (resp.error_code, resp.port)
        };
        if code == 0 {
            return port;
        }
        assert_eq!(
            code, 15,
            "COORDINATOR_NOT_AVAILABLE while __consumer_offsets is created"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no coordinator for {group} after 200 tries");
}

#[test]
fn every_version_of_the_group_apis_round_trips() {
    use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
    use kafka_protocol::messages::leave_group_request::MemberIdentity;
    use kafka_protocol::messages::offset_commit_request::{
        OffsetCommitRequestPartition, OffsetCommitRequestTopic,
    };
    use kafka_protocol::messages::offset_fetch_request::{
        OffsetFetchRequestGroup, OffsetFetchRequestTopic, OffsetFetchRequestTopics,
    };
    use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
    use kafka_protocol::messages::{
        DeleteGroupsRequest, DescribeGroupsRequest, GroupId, HeartbeatRequest, JoinGroupRequest,
        LeaveGroupRequest, ListGroupsRequest, OffsetCommitRequest, OffsetFetchRequest,
        SyncGroupRequest,
    };
    let node = Node::start(
        MemStorage::new(),
        ServeArgs {
            group_initial_rebalance_delay_ms: Some(0),
            ..ServeArgs::default()
        },
    );
    let s = |x: &str| StrBytes::from_string(x.to_string());
    client_runtime().block_on(async {
        let mut c = Connection::connect(&node.addr).await.unwrap();
        create_topic(&mut c, "grouped", 2).await;
        let join = supported_versions(ApiKey::JoinGroup);
        for v in join.min..=join.max {
            let group = format!("group-v{v}");
            let port =
                find_coordinator(&mut c, &group, clamp_version(ApiKey::FindCoordinator, v)).await;
            assert_eq!(port.to_string(), node.addr.rsplit(':').next().unwrap());
            let join_req = |member: &str| {
                JoinGroupRequest::default()
                    .with_group_id(GroupId(s(&group)))
                    .with_session_timeout_ms(10_000)
                    .with_rebalance_timeout_ms(if v >= 1 { 10_000 } else { -1 })
                    .with_member_id(s(member))
                    .with_protocol_type(s("consumer"))
                    .with_protocols(vec![JoinGroupRequestProtocol::default()
                        .with_name(s("range"))
                        .with_metadata(Bytes::from_static(b"meta"))])
            };
            let mut resp = c.call(&join_req(""), v).await.unwrap();
            if v >= 4 {
                assert_eq!(resp.error_code, 79, "join v{v}: MEMBER_ID_REQUIRED");
                let member = resp.member_id.to_string();
                resp = c.call(&join_req(&member), v).await.unwrap();
            }
            assert_eq!(resp.error_code, 0, "join v{v}");
            assert_eq!(resp.generation_id, 1, "join v{v}");
            assert_eq!(
                resp.leader, resp.member_id,
                "join v{v}: the only member leads"
            );
            assert_eq!(resp.members.len(), 1, "join v{v}");
            let member = resp.member_id.clone();

            let sv = clamp_version(ApiKey::SyncGroup, v);
            let mut sync = SyncGroupRequest::default()
                .with_group_id(GroupId(s(&group)))
                .with_generation_id(1)
                .with_member_id(member.clone())
                .with_assignments(vec![SyncGroupRequestAssignment::default()
                    .with_member_id(member.clone())
                    .with_assignment(Bytes::from_static(b"assigned"))]);
            if sv >= 5 {
                sync.protocol_type = Some(s("consumer"));
                sync.protocol_name = Some(s("range"));
            }
            let resp = c.call(&sync, sv).await.unwrap();
            assert_eq!(resp.error_code, 0, "sync v{sv}");
            assert_eq!(&resp.assignment[..], b"assigned", "sync v{sv}");

            let hv = clamp_version(ApiKey::Heartbeat, v);
            let hb = HeartbeatRequest::default()
                .with_group_id(GroupId(s(&group)))
                .with_generation_id(1)
                .with_member_id(member.clone());
            assert_eq!(
                c.call(&hb, hv).await.unwrap().error_code,
                0,
                "heartbeat v{hv}"
            );
            let stale = hb.clone().with_generation_id(0);
            assert_eq!(
                c.call(&stale, hv).await.unwrap().error_code,
                22,
                "heartbeat v{hv}"
            );

            let cv = clamp_version(ApiKey::OffsetCommit, v);
            let commit = OffsetCommitRequest::default()
                .with_group_id(GroupId(s(&group)))
                .with_generation_id_or_member_epoch(1)
                .with_member_id(member.clone())
                .with_topics(vec![OffsetCommitRequestTopic::default()
                    .with_name(name("grouped"))
                    .with_partitions(vec![OffsetCommitRequestPartition::default()
                        .with_partition_index(1)
                        .with_committed_offset(40 + i64::from(v))
                        .with_committed_metadata(Some(s("md")))])]);
            let resp = c.call(&commit, cv).await.unwrap();
            assert_eq!(resp.topics[0].partitions[0].error_code, 0, "commit v{cv}");

            let fv = clamp_version(ApiKey::OffsetFetch, v);
            let fetched = if fv >= 8 {
                let req = OffsetFetchRequest::default().with_groups(vec![
                    OffsetFetchRequestGroup::default()
                        .with_group_id(GroupId(s(&group)))
                        .with_topics(Some(vec![OffsetFetchRequestTopics::default()
                            .with_name(name("grouped"))
                            .with_partition_indexes(vec![0, 1])])),
                ]);
                let resp = c.call(&req, fv).await.unwrap();
                let p = &resp.groups[0].topics[0].partitions;
                (p[0].committed_offset, p[1].committed_offset)
            } else {
                let req = OffsetFetchRequest::default()
                    .with_group_id(GroupId(s(&group)))
                    .with_topics(Some(vec![OffsetFetchRequestTopic::default()
                        .with_name(name("grouped"))
                        .with_partition_indexes(vec![0, 1])]));
                let resp = c.call(&req, fv).await.unwrap();
                let p = &resp.topics[0].partitions;
                (p[0].committed_offset, p[1].committed_offset)
            };
            assert_eq!(fetched, (-1, 40 + i64::from(v)), "offset fetch v{fv}");

            let dv = clamp_version(ApiKey::DescribeGroups, v);
            let resp = c
                .call(
                    &DescribeGroupsRequest::default().with_groups(vec![GroupId(s(&group))]),
                    dv,
                )
                .await
                .unwrap();
            assert_eq!(
                resp.groups[0].group_state.as_str(),
                "Stable",
                "describe v{dv}"
            );
            assert_eq!(
                &resp.groups[0].members[0].member_assignment[..],
                b"assigned"
            );

            let lv = clamp_version(ApiKey::ListGroups, v);
            let resp = c.call(&ListGroupsRequest::default(), lv).await.unwrap();
            assert!(
                resp.groups.iter().any(|g| g.group_id.0.as_str() == group),
                "list v{lv}"
            );

            let leave_v = clamp_version(ApiKey::LeaveGroup, v);
            let mut leave = LeaveGroupRequest::default().with_group_id(GroupId(s(&group)));
            if leave_v >= 3 {
                leave.members = vec![MemberIdentity::default().with_member_id(member.clone())];
            } else {
                leave.member_id = member.clone();
            }
            let resp = c.call(&leave, leave_v).await.unwrap();
            assert_eq!(resp.error_code, 0, "leave v{leave_v}");

            let del_v = clamp_version(ApiKey::DeleteGroups, v);
            let resp = c
                .call(
                    &DeleteGroupsRequest::default()
                        .with_groups_names(vec![GroupId(s(&group)), GroupId(s("never-was"))]),
                    del_v,
                )
                .await
                .unwrap();
            // Answered per group (the two may live in different coordinator partitions).
            let codes: std::collections::BTreeMap<String, i16> = resp
                .results
                .iter()
                .map(|r| (r.group_id.0.to_string(), r.error_code))
                .collect();
            let want = [(group.clone(), 0), ("never-was".to_string(), 69)];
            assert_eq!(codes, want.into_iter().collect(), "delete groups v{del_v}");
        }
    });
}

/// A batch whose records carry `timestamps` but whose header claims `max_timestamp`, under a CRC
/// that matches the claim: what a client rounding sub-millisecond timestamps sends.
fn batch_claiming(timestamps: &[i64], max_timestamp: i64) -> Vec<u8> {
    let mut b = BatchBuilder::new(timestamps[0]);
    for (i, t) in timestamps.iter().enumerate() {
        b.push(&NewRecord {
            timestamp: *t,
            key: Some(vec![i as u8]),
            value: Some(b"v".to_vec()),
            headers: vec![],
        });
    }
    let mut bytes = b.build();
    bytes[35..43].copy_from_slice(&max_timestamp.to_be_bytes());
    let crc = crc32c::crc32c(&bytes[21..]);
    bytes[17..21].copy_from_slice(&crc.to_be_bytes());
    bytes
}

/// The producer's batch at `base_offset` as a consumer fetches it, checked whole.
async fn fetch_batch(
    c: &mut Connection,
    topic: &str,
    base_offset: i64,
) -> (batch::BatchHeader, Bytes) {
    let f = c
        .call(&fetch_request(topic, Uuid::nil(), base_offset, 0), 12)
        .await
        .unwrap();
    let part = &f.responses[0].partitions[0];
    assert_eq!(part.error_code, 0);
    let records = part.records.clone().expect("records");
    let (header, range) = batch::split_batches(&records)
        .expect("whole batches with good CRCs")
        .into_iter()
        .find(|(h, _)| h.base_offset == base_offset)
        .expect("the produced batch");
    (header, records.slice(range))
}

#[test]
fn a_wrong_max_timestamp_is_repaired_and_log_append_time_stamps_the_append_time() {
    use kafka_protocol::messages::create_topics_request::CreatableTopicConfig;
    let node = Node::start(MemStorage::new(), ServeArgs::default());
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    client_runtime().block_on(async {
        let mut c = Connection::connect(&node.addr).await.unwrap();
        create_topic(&mut c, "create-time", 1).await;
        let lat = CreateTopicsRequest::default()
            .with_timeout_ms(5_000)
            .with_topics(vec![CreatableTopic::default()
                .with_name(name("append-time"))
                .with_num_partitions(1)
                .with_replication_factor(1)
                .with_configs(vec![CreatableTopicConfig::default()
                    .with_name(StrBytes::from_static_str("message.timestamp.type"))
                    .with_value(Some(StrBytes::from_static_str("LogAppendTime")))])]);
        assert_eq!(c.call(&lat, 7).await.unwrap().topics[0].error_code, 0);

        let partition = |r: kafka_protocol::messages::ProduceResponse| {
            let p = r.responses[0].partition_responses[0].clone();
            (
                p.error_code,
                p.base_offset,
                p.log_append_time_ms,
                p.error_message,
            )
        };
        let sent = batch_claiming(&[now_ms - 3, now_ms - 1, now_ms - 2], now_ms);
        // Sluice used to refuse this with CORRUPT_MESSAGE; Kafka recomputes maxTimestamp.
        let (code, base, append_ms, _) = partition(
            c.call(&produce_request("create-time", 0, -1, sent.clone()), 9)
                .await
                .unwrap(),
        );
        assert_eq!((code, append_ms), (0, -1));
        let (header, stored) = fetch_batch(&mut c, "create-time", base).await;
        assert_eq!(header.max_timestamp, now_ms - 1);
        assert!(!header.is_log_append_time());
        assert_eq!(stored[61..], sent[61..], "the records as produced");

        let (code, base, append_ms, _) = partition(
            c.call(&produce_request("append-time", 0, -1, sent), 9)
                .await
                .unwrap(),
        );
        assert_eq!(code, 0);
        assert!(
            append_ms >= now_ms,
            "the broker's append time, not {append_ms}"
        );
        let (header, _) = fetch_batch(&mut c, "append-time", base).await;
        assert!(header.is_log_append_time());
        assert_eq!(header.max_timestamp, append_ms);

        // Refusals carry Kafka's codes and say why.
        let future = batch_claiming(&[now_ms + 2 * 3_600_000], now_ms + 2 * 3_600_000);
        let (code, base, _, message) = partition(
            c.call(&produce_request("create-time", 0, 1, future), 9)
                .await
                .unwrap(),
        );
        assert_eq!((code, base), (32, -1), "INVALID_TIMESTAMP");
        let message = message.expect("a message from v8 on").to_string();
        assert!(
            message.contains("create-time-0") && message.contains("timestamp"),
            "{message}"
        );
        let mut offset_set = batch_claiming(&[now_ms], now_ms);
        batch::set_base_offset(&mut offset_set, 5);
        let (code, ..) = partition(
            c.call(&produce_request("create-time", 0, 1, offset_set), 9)
                .await
                .unwrap(),
        );
        assert_eq!(
            code, 87,
            "INVALID_RECORD: a producer's base offset must be 0"
        );
        let (code, ..) = partition(
            c.call(&produce_request("create-time", 0, 1, Vec::new()), 9)
                .await
                .unwrap(),
        );
        assert_eq!(code, 87, "INVALID_RECORD: no batch");
    });
}
