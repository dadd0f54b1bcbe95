//! Metadata tests: encodings (round trip, garbage), apply's totality, the controller's Kafka
//! error codes and replica placement.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::log::LogConfig;
use crate::rng::Rng;
use crate::ErrorCode;

// ---------------------------------------------------------------- helpers

fn defaults() -> TopicDefaults {
    TopicDefaults {
        num_partitions: 1,
        replication_factor: 1,
        log: LogConfig::default(),
    }
}

/// An image with brokers `0..n`, all live; broker `i` on rack `racks[i % racks.len()]` if any.
fn cluster(n: i32, racks: &[&str]) -> (MetadataImage, u64) {
    let mut image = MetadataImage::new();
    let mut offset = 0;
    for id in 0..n {
        let rack = (!racks.is_empty()).then(|| racks[id as usize % racks.len()].to_string());
        for record in [
            MetadataRecord::RegisterBroker {
                node_id: id,
                incarnation: 7,
                host: format!("b{id}"),
                port: 9092,
                rack,
            },
            MetadataRecord::UnfenceBroker { node_id: id },
        ] {
            offset += 1;
            assert_eq!(image.apply(offset, &record), Applied::Changed);
        }
    }
    (image, offset)
}

fn topic(name: &str, partitions: i32, factor: i16) -> CreateTopicRequest {
    CreateTopicRequest {
        name: name.into(),
        num_partitions: partitions,
        replication_factor: factor,
        assignment: None,
        configs: vec![],
    }
}

fn create(image: &mut MetadataImage, offset: &mut u64, request: &CreateTopicRequest) {
    let record = create_topic(image, request, &defaults(), &mut Rng::new(*offset)).unwrap();
    *offset += 1;
    assert_eq!(image.apply(*offset, &record), Applied::Changed);
}

fn create_err(image: &MetadataImage, request: &CreateTopicRequest) -> ErrorCode {
    create_topic(image, request, &defaults(), &mut Rng::new(1))
        .unwrap_err()
        .code()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

// ---------------------------------------------------------------- encodings

fn small_string() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[a-c]{1,3}",
        "[a-zA-Z0-9._-]{1,20}",
        ".{0,8}",
    ]
}

fn assignment() -> impl Strategy<Value = PartitionAssignment> {
    proptest::collection::vec(-1i32..6, 0..5).prop_map(|replicas| PartitionAssignment { replicas })
}

/// Topic ids from a small pool, so that records hit existing topics often.
fn topic_id() -> impl Strategy<Value = TopicId> {
    (0u8..5).prop_map(|i| {
        let mut id = [0u8; 16];
        id[15] = i;
        id
    })
}

fn config_pairs() -> impl Strategy<Value = Vec<(String, String)>> {
    proptest::collection::vec((small_string(), small_string()), 0..4)
}

fn record() -> impl Strategy<Value = MetadataRecord> {
    prop_oneof![
        (
            -1i32..6,
            0u64..3,
            small_string(),
            any::<u16>(),
            proptest::option::of(small_string())
        )
            .prop_map(|(node_id, incarnation, host, port, rack)| {
                MetadataRecord::RegisterBroker {
                    node_id,
                    incarnation,
                    host,
                    port,
                    rack,
                }
            }),
        (-1i32..6).prop_map(|node_id| MetadataRecord::FenceBroker { node_id }),
        (-1i32..6).prop_map(|node_id| MetadataRecord::UnfenceBroker { node_id }),
        (
            prop_oneof![
                Just("t".to_string()),
                Just("..".to_string()),
                small_string()
            ],
            topic_id(),
            proptest::collection::vec(assignment(), 0..4),
            config_pairs()
        )
            .prop_map(|(name, topic_id, partitions, configs)| {
                MetadataRecord::CreateTopic {
                    name,
                    topic_id,
                    partitions,
                    configs,
                }
            }),
        topic_id().prop_map(|topic_id| MetadataRecord::DeleteTopic { topic_id }),
        (
            topic_id(),
            config_pairs(),
            proptest::collection::vec(small_string(), 0..3)
        )
            .prop_map(|(topic_id, set, delete)| MetadataRecord::AlterTopicConfig {
                topic_id,
                set,
                delete
            }),
        (topic_id(), proptest::collection::vec(assignment(), 0..3))
            .prop_map(|(topic_id, new)| MetadataRecord::CreatePartitions { topic_id, new }),
        Just(MetadataRecord::NoOp),
        (0..4i32, 0..5000i64)
            .prop_map(|(node_id, end)| MetadataRecord::AllocateProducerIds { node_id, end }),
        any::<[u8; 16]>().prop_map(|cluster_id| MetadataRecord::SetClusterId { cluster_id }),
    ]
}

proptest! {
    #[test]
    fn records_round_trip_and_every_strict_prefix_is_refused(record in record()) {
        let bytes = record.to_bytes();
        prop_assert_eq!(MetadataRecord::decode(&bytes), Ok(record));
        for len in 0..bytes.len() {
            prop_assert!(MetadataRecord::decode(&bytes[..len]).is_err());
        }
        let mut longer = bytes.clone();
        longer.push(0);
        prop_assert_eq!(MetadataRecord::decode(&longer), Err(DecodeError::TrailingBytes(1)));
    }

    #[test]
    fn garbage_never_panics_and_what_decodes_re_encodes(
        bytes in proptest::collection::vec(any::<u8>(), 0..64),
        kind in 1u8..9,
    ) {
        for input in [bytes.clone(), [&[RECORD_VERSION, kind][..], &bytes].concat()] {
            if let Ok(record) = MetadataRecord::decode(&input) {
                prop_assert_eq!(record.to_bytes(), input.clone());
            }
            if let Ok(image) = MetadataImage::decode(&input) {
                image.check_invariants();
            }
        }
    }

    /// Apply is total: any record sequence keeps the invariants, never panics, is deterministic
    /// and survives a snapshot round trip.
    #[test]
    fn apply_is_total_and_deterministic(records in proptest::collection::vec(record(), 0..60)) {
        let mut image = MetadataImage::new();
        let mut again = MetadataImage::new();
        for (i, record) in records.iter().enumerate() {
            let offset = 10 + 2 * i as u64;
            let applied = image.apply(offset, record);
            prop_assert_eq!(again.apply(offset, record), applied);
            image.check_invariants();
            prop_assert_eq!(image.last_applied_offset(), Some(offset));
        }
        prop_assert_eq!(&image, &again);
        let mut snapshot = Vec::new();
        image.encode(&mut snapshot);
        prop_assert_eq!(MetadataImage::decode(&snapshot), Ok(image));
    }

    #[test]
    fn damaged_snapshots_are_refused(flip in any::<usize>()) {
        let (mut image, mut offset) = cluster(3, &["r1", "r2"]);
        create(&mut image, &mut offset, &topic("orders", 3, 2));
        let mut snapshot = Vec::new();
        image.encode(&mut snapshot);
        let at = flip % snapshot.len();
        snapshot[at] ^= 0x20;
        prop_assert!(MetadataImage::decode(&snapshot).is_err());
        prop_assert!(MetadataImage::decode(&snapshot[..at]).is_err());
    }
}

#[test]
fn apply_ignores_what_no_longer_makes_sense() {
    let (mut image, mut offset) = cluster(3, &[]);
    create(&mut image, &mut offset, &topic("t", 2, 2));
    let id = image.topic_by_name("t").unwrap().topic_id;
    let delete = MetadataRecord::DeleteTopic { topic_id: id };
    assert_eq!(image.apply(100, &delete), Applied::Changed);
    assert_eq!(image.apply(101, &delete), Applied::Ignored("unknown topic"));
    assert!(matches!(
        image.apply(
            102,
            &MetadataRecord::CreateTopic {
                name: "u".into(),
                topic_id: id,
                partitions: vec![PartitionAssignment {
                    replicas: vec![0, 9]
                }],
                configs: vec![],
            }
        ),
        Applied::Ignored(_)
    ));
    assert_eq!(
        image.apply(103, &MetadataRecord::FenceBroker { node_id: 42 }),
        Applied::Ignored("unknown broker")
    );
    assert_eq!(image.last_applied_offset(), Some(103));
    assert_eq!(image.topics().count(), 0);
    image.check_invariants();
}

#[test]
#[should_panic(expected = "out of order")]
fn applying_an_offset_twice_is_a_host_bug() {
    let mut image = MetadataImage::new();
    let _ = image.apply(5, &MetadataRecord::NoOp);
    let _ = image.apply(5, &MetadataRecord::NoOp);
}

// ---------------------------------------------------------------- controller

#[test]
fn create_topic_places_replicas_and_fills_defaults() {
    let (mut image, mut offset) = cluster(3, &[]);
    let mut request = topic("orders", -1, 3);
    request.configs = pairs(&[("retention.ms", "1000")]);
    create(&mut image, &mut offset, &request);
    let t = image.topic_by_name("orders").unwrap();
    assert_eq!(t.partitions.len(), 1, "num.partitions default");
    assert_eq!(t.replication_factor(), 3);
    assert_eq!(
        t.configs.get("retention.ms").map(String::as_str),
        Some("1000")
    );
    assert_eq!(t.topic_id[6] >> 4, 4, "a version 4 UUID");
}

#[test]
fn create_topic_refuses_bad_names_and_duplicates() {
    let (mut image, mut offset) = cluster(1, &[]);
    for bad in ["", ".", "..", "a b", &"x".repeat(250)] {
        assert_eq!(
            create_err(&image, &topic(bad, 1, 1)),
            ErrorCode::InvalidTopicException
        );
    }
    create(&mut image, &mut offset, &topic("a.b", 1, 1));
    assert_eq!(
        create_err(&image, &topic("a.b", 1, 1)),
        ErrorCode::TopicAlreadyExists
    );
    assert_eq!(
        create_err(&image, &topic("a_b", 1, 1)),
        ErrorCode::InvalidTopicException
    );
}

#[test]
fn create_topic_refuses_bad_counts() {
    let (mut image, _) = cluster(3, &[]);
    assert_eq!(
        create_err(&image, &topic("t", 0, 1)),
        ErrorCode::InvalidPartitions
    );
    assert_eq!(
        create_err(&image, &topic("t", -2, 1)),
        ErrorCode::InvalidPartitions
    );
    assert_eq!(
        create_err(&image, &topic("t", 10_001, 1)),
        ErrorCode::InvalidPartitions
    );
    assert_eq!(
        create_err(&image, &topic("t", 1, 0)),
        ErrorCode::InvalidReplicationFactor
    );
    assert_eq!(
        create_err(&image, &topic("t", 1, -3)),
        ErrorCode::InvalidReplicationFactor
    );
    assert_eq!(
        create_err(&image, &topic("t", 1, 4)),
        ErrorCode::InvalidReplicationFactor
    );
    // Fenced brokers do not count.
    let _ = image.apply(1000, &MetadataRecord::FenceBroker { node_id: 2 });
    assert_eq!(
        create_err(&image, &topic("t", 1, 3)),
        ErrorCode::InvalidReplicationFactor
    );
    assert!(create_topic(&image, &topic("t", 1, 2), &defaults(), &mut Rng::new(1)).is_ok());
}

#[test]
fn create_topic_checks_explicit_assignments() {
    let (mut image, _) = cluster(3, &[]);
    let _ = image.apply(1000, &MetadataRecord::FenceBroker { node_id: 2 });
    let with = |assignment: Vec<(i32, Vec<i32>)>| CreateTopicRequest {
        assignment: Some(assignment),
        ..topic("t", -1, -1)
    };
    let ok = create_topic(
        &image,
        &with(vec![(1, vec![1, 0]), (0, vec![0, 1])]),
        &defaults(),
        &mut Rng::new(1),
    );
    match ok.unwrap() {
        MetadataRecord::CreateTopic { partitions, .. } => {
            assert_eq!(partitions[0].replicas, vec![0, 1]);
            assert_eq!(partitions[1].replicas, vec![1, 0]);
        }
        other => panic!("{other:?}"),
    }
    for bad in [
        vec![],
        vec![(0, vec![])],
        vec![(0, vec![0, 0])],
        vec![(0, vec![0, 1]), (0, vec![1, 0])],
        vec![(1, vec![0])],
        vec![(0, vec![0]), (1, vec![0, 1])],
        vec![(0, vec![2])],
        vec![(0, vec![7])],
        vec![(0, (0..10).collect())],
    ] {
        assert_eq!(
            create_err(&image, &with(bad.clone())),
            ErrorCode::InvalidReplicaAssignment,
            "{bad:?}"
        );
    }
    let mut both = with(vec![(0, vec![0])]);
    both.num_partitions = 1;
    assert_eq!(create_err(&image, &both), ErrorCode::InvalidRequest);
}

#[test]
fn create_topic_validates_configs() {
    let (image, _) = cluster(1, &[]);
    for bad in [
        pairs(&[("nope", "1")]),
        pairs(&[("retention.ms", "soon")]),
        pairs(&[("segment.bytes", "1")]),
        pairs(&[("cleanup.policy", "shred")]),
        pairs(&[("min.cleanable.dirty.ratio", "1.5")]),
        pairs(&[("retention.ms", "1"), ("retention.ms", "2")]),
    ] {
        let request = CreateTopicRequest {
            configs: bad.clone(),
            ..topic("t", 1, 1)
        };
        assert_eq!(
            create_err(&image, &request),
            ErrorCode::InvalidConfig,
            "{bad:?}"
        );
    }
}

#[test]
fn delete_topic_by_name_and_id() {
    let (mut image, mut offset) = cluster(1, &[]);
    create(&mut image, &mut offset, &topic("t", 1, 1));
    let id = image.topic_by_name("t").unwrap().topic_id;
    assert_eq!(
        delete_topic(&image, TopicRef::Name("t")),
        Ok(MetadataRecord::DeleteTopic { topic_id: id })
    );
    assert_eq!(
        delete_topic(&image, TopicRef::Id(id)),
        Ok(MetadataRecord::DeleteTopic { topic_id: id })
    );
    assert_eq!(
        delete_topic(&image, TopicRef::Name("u"))
            .unwrap_err()
            .code(),
        ErrorCode::UnknownTopicOrPartition
    );
    assert_eq!(
        delete_topic(&image, TopicRef::Id([9; 16]))
            .unwrap_err()
            .code(),
        ErrorCode::UnknownTopicId
    );
}

#[test]
fn alter_configs_merges_and_validates() {
    let (mut image, mut offset) = cluster(1, &[]);
    let mut request = topic("t", 1, 1);
    request.configs = pairs(&[("retention.ms", "1000"), ("segment.ms", "5")]);
    create(&mut image, &mut offset, &request);
    let log = LogConfig::default();
    let record = alter_configs(
        &image,
        "t",
        &pairs(&[("retention.bytes", "10")]),
        &["segment.ms".into()],
        &log,
    )
    .unwrap();
    offset += 1;
    assert_eq!(image.apply(offset, &record), Applied::Changed);
    let configs = &image.topic_by_name("t").unwrap().configs;
    assert_eq!(
        configs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect::<Vec<_>>(),
        vec![("retention.bytes", "10"), ("retention.ms", "1000")]
    );
    let code = |set: &[(&str, &str)], delete: &[&str]| {
        let delete: Vec<String> = delete.iter().map(|s| s.to_string()).collect();
        alter_configs(&image, "t", &pairs(set), &delete, &log)
            .unwrap_err()
            .code()
    };
    assert_eq!(code(&[("nope", "1")], &[]), ErrorCode::InvalidConfig);
    assert_eq!(
        code(&[("retention.ms", "x")], &[]),
        ErrorCode::InvalidConfig
    );
    assert_eq!(code(&[], &["nope"]), ErrorCode::InvalidConfig);
    assert_eq!(
        code(&[("retention.ms", "1")], &["retention.ms"]),
        ErrorCode::InvalidRequest
    );
    assert_eq!(
        alter_configs(&image, "u", &[], &[], &log)
            .unwrap_err()
            .code(),
        ErrorCode::UnknownTopicOrPartition
    );
}

#[test]
fn create_partitions_grows_with_the_same_factor() {
    let (mut image, mut offset) = cluster(3, &[]);
    create(&mut image, &mut offset, &topic("t", 2, 2));
    let mut rng = Rng::new(3);
    let record = create_partitions(&image, "t", 5, None, &mut rng).unwrap();
    offset += 1;
    assert_eq!(image.apply(offset, &record), Applied::Changed);
    let t = image.topic_by_name("t").unwrap();
    assert_eq!(t.partitions.len(), 5);
    assert!(t.partitions.iter().all(|p| p.replicas.len() == 2));

    let code = |image: &MetadataImage, count: i32, assignment: Option<&[Vec<i32>]>| {
        create_partitions(image, "t", count, assignment, &mut Rng::new(1))
            .unwrap_err()
            .code()
    };
    assert_eq!(code(&image, 5, None), ErrorCode::InvalidPartitions);
    assert_eq!(code(&image, 4, None), ErrorCode::InvalidPartitions);
    assert_eq!(code(&image, 10_001, None), ErrorCode::InvalidPartitions);
    assert_eq!(
        code(&image, 6, Some(&[vec![0]])),
        ErrorCode::InvalidReplicaAssignment
    );
    assert_eq!(
        code(&image, 6, Some(&[vec![0, 1], vec![1, 2]])),
        ErrorCode::InvalidReplicaAssignment
    );
    assert_eq!(
        code(&image, 6, Some(&[vec![0, 9]])),
        ErrorCode::InvalidReplicaAssignment
    );
    assert!(create_partitions(&image, "t", 6, Some(&[vec![2, 0]]), &mut Rng::new(1)).is_ok());
    assert_eq!(
        create_partitions(&image, "u", 6, None, &mut Rng::new(1))
            .unwrap_err()
            .code(),
        ErrorCode::UnknownTopicOrPartition
    );
    let _ = image.apply(offset + 1, &MetadataRecord::FenceBroker { node_id: 0 });
    let _ = image.apply(offset + 2, &MetadataRecord::FenceBroker { node_id: 1 });
    assert_eq!(code(&image, 6, None), ErrorCode::InvalidReplicationFactor);
}

#[test]
fn create_partitions_answers_with_kafkas_messages_in_kafkas_order() {
    let (mut image, mut offset) = cluster(3, &[]);
    create(&mut image, &mut offset, &topic("t", 3, 2));
    let refused = |count: i32, assignment: Option<&[Vec<i32>]>| {
        let e = create_partitions(&image, "t", count, assignment, &mut Rng::new(1)).unwrap_err();
        (e.code(), e.message().to_string())
    };
    assert_eq!(
        refused(3, None),
        (
            ErrorCode::InvalidPartitions,
            "Topic already has 3 partition(s).".into()
        )
    );
    assert_eq!(
        refused(2, None),
        (
            ErrorCode::InvalidPartitions,
            "The topic t currently has 3 partition(s); 2 would not be an increase.".into()
        )
    );
    // The count is checked before the assignment, as in Kafka.
    assert_eq!(refused(-1, Some(&[])).0, ErrorCode::InvalidPartitions);
    assert_eq!(refused(i32::MIN, None).0, ErrorCode::InvalidPartitions);
    assert_eq!(
        refused(5, Some(&[vec![0, 1]])),
        (
            ErrorCode::InvalidReplicaAssignment,
            "Attempted to add 2 additional partition(s), but only 1 assignment(s) were \
             specified."
                .into()
        )
    );
    assert_eq!(
        refused(4, Some(&[vec![1, 1]])).0,
        ErrorCode::InvalidReplicaAssignment
    );
    assert_eq!(
        refused(4, Some(&[vec![]])).0,
        ErrorCode::InvalidReplicaAssignment
    );

    // Explicit replicas are taken as given, in partition order.
    let record = create_partitions(
        &image,
        "t",
        5,
        Some(&[vec![2, 0], vec![1, 2]]),
        &mut Rng::new(1),
    )
    .unwrap();
    let topic_id = image.topic_by_name("t").unwrap().topic_id;
    assert_eq!(
        record,
        MetadataRecord::CreatePartitions {
            topic_id,
            new: vec![
                PartitionAssignment {
                    replicas: vec![2, 0]
                },
                PartitionAssignment {
                    replicas: vec![1, 2]
                },
            ],
        }
    );
    offset += 1;
    assert_eq!(image.apply(offset, &record), Applied::Changed);
    let replicas: Vec<Vec<i32>> = image.topic_by_name("t").unwrap().partitions[3..]
        .iter()
        .map(|p| p.replicas.clone())
        .collect();
    assert_eq!(replicas, vec![vec![2, 0], vec![1, 2]]);
}

/// Groups map to `__consumer_offsets` partitions by the topic's partition count: growing it
/// would strand every group's committed offsets, so the controller refuses (Kafka allows it).
#[test]
fn create_partitions_refuses_the_offsets_topic() {
    let (mut image, mut offset) = cluster(1, &[]);
    create(
        &mut image,
        &mut offset,
        &topic(crate::group::OFFSETS_TOPIC, 2, 1),
    );
    let e = create_partitions(
        &image,
        crate::group::OFFSETS_TOPIC,
        4,
        None,
        &mut Rng::new(1),
    )
    .unwrap_err();
    assert_eq!(e.code(), ErrorCode::InvalidRequest, "{}", e.message());
}

/// The encoding of `CreatePartitions` is in metadata logs on disk: these bytes must keep
/// decoding to the same record.
#[test]
fn a_stored_create_partitions_record_still_decodes() {
    let mut bytes = vec![1u8, 7];
    bytes.extend_from_slice(&[0xab; 16]);
    bytes.extend_from_slice(&[0, 0, 0, 2]);
    bytes.extend_from_slice(&[0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 0]);
    bytes.extend_from_slice(&[0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 2]);
    let record = MetadataRecord::CreatePartitions {
        topic_id: [0xab; 16],
        new: vec![
            PartitionAssignment {
                replicas: vec![1, 0],
            },
            PartitionAssignment {
                replicas: vec![0, 2],
            },
        ],
    };
    assert_eq!(MetadataRecord::decode(&bytes), Ok(record.clone()));
    let mut encoded = Vec::new();
    record.encode(&mut encoded);
    assert_eq!(encoded, bytes);
}

/// Replaying a log with a `CreatePartitions` gives every image the grown topic; one that no
/// longer fits (an unknown topic, another replication factor) is ignored everywhere.
#[test]
fn create_partitions_replays_and_ignores_what_does_not_fit() {
    let (mut image, mut offset) = cluster(3, &[]);
    create(&mut image, &mut offset, &topic("t", 1, 2));
    let topic_id = image.topic_by_name("t").unwrap().topic_id;
    let grow = create_partitions(&image, "t", 3, None, &mut Rng::new(5)).unwrap();
    let mut replayed = image.clone();
    offset += 1;
    assert_eq!(image.apply(offset, &grow), Applied::Changed);
    assert_eq!(replayed.apply(offset, &grow), Applied::Changed);
    assert_eq!(image, replayed);
    assert_eq!(image.topic_by_name("t").unwrap().partitions.len(), 3);
    let odd_factor = MetadataRecord::CreatePartitions {
        topic_id,
        new: vec![PartitionAssignment {
            replicas: vec![0, 1, 2],
        }],
    };
    offset += 1;
    assert!(matches!(
        image.apply(offset, &odd_factor),
        Applied::Ignored(_)
    ));
    let unknown = MetadataRecord::CreatePartitions {
        topic_id: [9; 16],
        new: vec![PartitionAssignment {
            replicas: vec![0, 1],
        }],
    };
    offset += 1;
    assert!(matches!(image.apply(offset, &unknown), Applied::Ignored(_)));
    assert_eq!(image.topic_by_name("t").unwrap().partitions.len(), 3);
}

#[test]
fn brokers_register_fenced_and_unfence_on_heartbeat() {
    let mut image = MetadataImage::new();
    let request = BrokerRegistrationRequest {
        node_id: 1,
        incarnation: 10,
        host: "h".into(),
        port: 9092,
        rack: None,
    };
    let record = register_broker(&image, &request, None, 0, 100)
        .unwrap()
        .unwrap();
    let _ = image.apply(1, &record);
    assert!(image.broker(1).unwrap().fenced);
    assert_eq!(
        register_broker(&image, &request, None, 0, 100),
        Ok(None),
        "a retry"
    );
    let heartbeat = unfence_broker(&image, 1, 10).unwrap().unwrap();
    let _ = image.apply(2, &heartbeat);
    assert!(!image.broker(1).unwrap().fenced);
    assert_eq!(unfence_broker(&image, 1, 10), Ok(None));
    assert_eq!(
        unfence_broker(&image, 1, 11).unwrap_err().code(),
        ErrorCode::StaleBrokerEpoch
    );
    assert_eq!(
        unfence_broker(&image, 2, 10).unwrap_err().code(),
        ErrorCode::BrokerIdNotRegistered
    );

    // A second process with the same id while the first one's session is alive.
    let restarted = BrokerRegistrationRequest {
        incarnation: 11,
        ..request.clone()
    };
    assert_eq!(
        register_broker(&image, &restarted, Some(1000), 1050, 100)
            .unwrap_err()
            .code(),
        ErrorCode::DuplicateBrokerRegistration
    );
    // Once the session expired, the restart replaces the registration.
    assert!(register_broker(&image, &restarted, Some(1000), 1101, 100)
        .unwrap()
        .is_some());

    for bad in [
        BrokerRegistrationRequest {
            node_id: -1,
            ..request.clone()
        },
        BrokerRegistrationRequest {
            host: String::new(),
            ..request.clone()
        },
        BrokerRegistrationRequest {
            port: 0,
            ..request.clone()
        },
        BrokerRegistrationRequest {
            rack: Some(String::new()),
            ..request.clone()
        },
    ] {
        assert_eq!(
            register_broker(&image, &bad, None, 0, 100)
                .unwrap_err()
                .code(),
            ErrorCode::InvalidRequest
        );
    }
}

#[test]
fn expired_sessions_are_fenced_in_id_order() {
    let (mut image, _) = cluster(4, &[]);
    let _ = image.apply(1000, &MetadataRecord::FenceBroker { node_id: 3 });
    let heartbeats: BTreeMap<BrokerId, u64> = [(0, 500), (1, 900), (3, 0)].into_iter().collect();
    assert_eq!(
        fence_expired(&image, &heartbeats, 1000, 200),
        vec![
            MetadataRecord::FenceBroker { node_id: 0 },
            MetadataRecord::FenceBroker { node_id: 2 },
        ],
        "0 expired, 1 alive, 2 never heard of, 3 fenced already"
    );
    assert_eq!(fence_expired(&image, &heartbeats, 700, 200).len(), 1);
}

// ---------------------------------------------------------------- placement

fn counts(image: &MetadataImage) -> (BTreeMap<BrokerId, usize>, BTreeMap<BrokerId, usize>) {
    let mut replicas: BTreeMap<BrokerId, usize> =
        image.live_brokers().map(|b| (b.node_id, 0)).collect();
    let mut leaders = replicas.clone();
    for t in image.topics() {
        for p in &t.partitions {
            for r in &p.replicas {
                *replicas.entry(*r).or_default() += 1;
            }
            *leaders.entry(p.replicas[0]).or_default() += 1;
        }
    }
    (replicas, leaders)
}

fn spread(counts: &BTreeMap<BrokerId, usize>) -> usize {
    counts.values().max().unwrap() - counts.values().min().unwrap()
}

proptest! {
    #[test]
    fn fresh_cluster_placement_is_balanced(
        brokers in 1i32..14,
        rack_count in 0usize..4,
        partitions in 1usize..120,
        factor in 1usize..10,
        seed in any::<u64>(),
    ) {
        let factor = factor.min(brokers as usize);
        let racks: Vec<String> = (0..rack_count).map(|r| format!("r{r}")).collect();
        let racks: Vec<&str> = racks.iter().map(String::as_str).collect();
        let (mut image, offset) = cluster(brokers, &racks);
        let placed = place_replicas(&image, partitions, factor, seed).unwrap();
        prop_assert_eq!(&place_replicas(&image, partitions, factor, seed).unwrap(), &placed);
        let record = MetadataRecord::CreateTopic {
            name: "t".into(),
            topic_id: [1; 16],
            partitions: placed,
            configs: vec![],
        };
        prop_assert_eq!(image.apply(offset + 1, &record), Applied::Changed);
        let (replicas, leaders) = counts(&image);
        prop_assert!(spread(&replicas) <= 1, "replicas {:?}", replicas);
        prop_assert!(spread(&leaders) <= 1, "leaders {:?}", leaders);
    }

    /// Topic after topic, with some brokers fenced: every partition gets `factor` distinct live
    /// brokers, and placement depends on nothing but the image, the counts and the seed.
    #[test]
    fn placement_uses_distinct_live_brokers_and_is_a_function(
        brokers in 1i32..10,
        fenced in proptest::collection::vec(0i32..10, 0..4),
        topics in proptest::collection::vec((1usize..20, 1usize..5, any::<u64>()), 1..6),
    ) {
        let (mut image, mut offset) = cluster(brokers, &["a", "b", "c"]);
        for id in fenced {
            offset += 1;
            let _ = image.apply(offset, &MetadataRecord::FenceBroker { node_id: id });
        }
        let live: Vec<BrokerId> = image.live_brokers().map(|b| b.node_id).collect();
        for (i, (partitions, factor, seed)) in topics.into_iter().enumerate() {
            let Some(placed) = place_replicas(&image, partitions, factor, seed) else {
                prop_assert!(factor > live.len());
                continue;
            };
            let mut copy = Vec::new();
            image.encode(&mut copy);
            let copy = MetadataImage::decode(&copy).unwrap();
            prop_assert_eq!(&place_replicas(&copy, partitions, factor, seed).unwrap(), &placed);
            prop_assert_eq!(placed.len(), partitions);
            for p in &placed {
                prop_assert_eq!(p.replicas.len(), factor);
                let mut distinct = p.replicas.clone();
                distinct.sort_unstable();
                distinct.dedup();
                prop_assert_eq!(distinct.len(), factor);
                prop_assert!(p.replicas.iter().all(|r| live.contains(r)));
            }
            offset += 1;
            let mut id = [0u8; 16];
            id[0] = i as u8 + 1;
            let record = MetadataRecord::CreateTopic {
                name: format!("t{i}"),
                topic_id: id,
                partitions: placed,
                configs: vec![],
            };
            prop_assert_eq!(image.apply(offset, &record), Applied::Changed);
        }
    }
}

#[test]
fn placement_counts_existing_load() {
    let (mut image, mut offset) = cluster(3, &[]);
    // Brokers 0 and 1 already hold every replica of a topic, and 0 leads all of it.
    let record = MetadataRecord::CreateTopic {
        name: "old".into(),
        topic_id: [1; 16],
        partitions: vec![
            PartitionAssignment {
                replicas: vec![0, 1]
            };
            4
        ],
        configs: vec![],
    };
    offset += 1;
    let _ = image.apply(offset, &record);
    for seed in 0..10 {
        let placed = place_replicas(&image, 4, 2, seed).unwrap();
        assert!(placed.iter().all(|p| p.replicas.contains(&2)), "{placed:?}");
        assert!(placed.iter().all(|p| p.replicas[0] != 0), "{placed:?}");
    }
}

/// Racks come after balance, so they are best effort: on 6 brokers in 3 racks, every partition
/// of 3 replicas spans at least 2 racks and most span all 3 (80 of 120 when written).
#[test]
fn placement_spreads_racks_when_balance_allows() {
    let (image, _) = cluster(6, &["a", "b", "c"]);
    let rack = |id: BrokerId| image.broker(id).unwrap().rack.clone().unwrap();
    let mut all_three = 0;
    for seed in 0..20 {
        for p in place_replicas(&image, 6, 3, seed).unwrap() {
            let mut used: Vec<String> = p.replicas.iter().map(|&r| rack(r)).collect();
            used.sort();
            used.dedup();
            assert!(used.len() >= 2, "seed {seed}: {p:?}");
            all_three += usize::from(used.len() == 3);
        }
    }
    eprintln!("{all_three} of 120 partitions span 3 racks");
    assert!(
        all_three >= 80,
        "{all_three} of 120 partitions span 3 racks"
    );
}

#[test]
fn message_format_version_is_accepted_and_dropped_and_flush_ms_is_kept() {
    let (mut image, mut offset) = cluster(1, &[]);
    let mut request = topic("t", 1, 1);
    request.configs = pairs(&[("message.format.version", "0.10.0.0"), ("flush.ms", "1000")]);
    create(&mut image, &mut offset, &request);
    let configs = &image.topic_by_name("t").unwrap().configs;
    assert_eq!(configs.keys().collect::<Vec<_>>(), vec!["flush.ms"]);
    let log = LogConfig::default();
    let record = alter_configs(
        &image,
        "t",
        &pairs(&[("message.format.version", "2.8"), ("retention.ms", "5")]),
        &["message.format.version".into()],
        &log,
    );
    assert_eq!(
        record.unwrap_err().code(),
        ErrorCode::InvalidRequest,
        "named twice is refused even for an ignored config"
    );
    let record = alter_configs(
        &image,
        "t",
        &pairs(&[("message.format.version", "2.8")]),
        &["message.format.version".into(), "flush.ms".into()],
        &log,
    );
    assert_eq!(record.unwrap_err().code(), ErrorCode::InvalidRequest);
    let record = alter_configs(
        &image,
        "t",
        &pairs(&[("message.format.version", "2.8")]),
        &["flush.ms".into()],
        &log,
    )
    .unwrap();
    assert_eq!(
        record,
        MetadataRecord::AlterTopicConfig {
            topic_id: image.topic_by_name("t").unwrap().topic_id,
            set: vec![],
            delete: vec!["flush.ms".into()],
        }
    );
    for bad in [("flush.ms", "-1"), ("flush.messages", "1")] {
        let request = CreateTopicRequest {
            configs: pairs(&[bad]),
            ..topic("u", 1, 1)
        };
        assert_eq!(
            create_err(&image, &request),
            ErrorCode::InvalidConfig,
            "{bad:?}"
        );
    }
}
