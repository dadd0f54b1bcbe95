//! The Kafka codec between the wire and the core: each decoded request becomes a core
//! [`Request`] (version differences that change what a request means are resolved here), and
//! each core [`Reply`] becomes the response of the request's version (fields a version lacks are
//! left out). ApiVersions is the codec's own: it describes what the codec speaks.

use bytes::Bytes;
use kafka_protocol::messages::alter_configs_response::{
    AlterConfigsResourceResponse as LegacyAlterConfigsResourceResponse, AlterConfigsResponse,
};
use kafka_protocol::messages::api_versions_response::{ApiVersion, ApiVersionsResponse};
use kafka_protocol::messages::create_acls_response::{AclCreationResult, CreateAclsResponse};
use kafka_protocol::messages::create_partitions_response::{
    CreatePartitionsResponse, CreatePartitionsTopicResult,
};
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult, CreateTopicsResponse,
};
use kafka_protocol::messages::delete_acls_response::{DeleteAclsFilterResult, DeleteAclsResponse};
use kafka_protocol::messages::delete_groups_response::{
    DeletableGroupResult, DeleteGroupsResponse,
};
use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsResponse, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::delete_topics_response::{
    DeletableTopicResult, DeleteTopicsResponse,
};
use kafka_protocol::messages::describe_acls_response::DescribeAclsResponse;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResponse, DescribeConfigsResult,
};
use kafka_protocol::messages::describe_groups_response::{
    DescribeGroupsResponse, DescribedGroup, DescribedGroupMember,
};
use kafka_protocol::messages::fetch_response::{
    FetchResponse, FetchableTopicResponse, PartitionData,
};
use kafka_protocol::messages::find_coordinator_response::{Coordinator, FindCoordinatorResponse};
use kafka_protocol::messages::heartbeat_response::HeartbeatResponse;
use kafka_protocol::messages::incremental_alter_configs_response::{
    AlterConfigsResourceResponse, IncrementalAlterConfigsResponse,
};
use kafka_protocol::messages::init_producer_id_response::InitProducerIdResponse;
use kafka_protocol::messages::join_group_response::{JoinGroupResponse, JoinGroupResponseMember};
use kafka_protocol::messages::leave_group_response::{LeaveGroupResponse, MemberResponse};
use kafka_protocol::messages::list_groups_response::{ListGroupsResponse, ListedGroup};
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::metadata_response::{
    MetadataResponse, MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponse, OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponse, OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponse, OffsetFetchResponseGroup, OffsetFetchResponsePartition,
    OffsetFetchResponsePartitions, OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderEpochResponse, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::produce_response::{
    PartitionProduceResponse, ProduceResponse, TopicProduceResponse,
};
use kafka_protocol::messages::sync_group_response::SyncGroupResponse;
use kafka_protocol::messages::{
    ApiKey, BrokerId, GroupId, ProducerId, RequestKind, ResponseKind, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use sluice_core::group::{CommitPartition, CommitRequest, JoinRequest, SyncRequest};
use sluice_core::node::api::*;
use sluice_core::ErrorCode;
use uuid::Uuid;

/// The APIs this broker serves; everything else is refused at the connection.
pub const SERVED_APIS: &[ApiKey] = &[
    ApiKey::Produce,
    ApiKey::Fetch,
    ApiKey::ListOffsets,
    ApiKey::DeleteRecords,
    ApiKey::Metadata,
    ApiKey::ApiVersions,
    ApiKey::CreateTopics,
    ApiKey::DeleteTopics,
    ApiKey::CreatePartitions,
    ApiKey::InitProducerId,
    ApiKey::DescribeConfigs,
    ApiKey::AlterConfigs,
    ApiKey::IncrementalAlterConfigs,
    ApiKey::DescribeAcls,
    ApiKey::CreateAcls,
    ApiKey::DeleteAcls,
    ApiKey::OffsetForLeaderEpoch,
    ApiKey::FindCoordinator,
    ApiKey::JoinGroup,
    ApiKey::SyncGroup,
    ApiKey::Heartbeat,
    ApiKey::LeaveGroup,
    ApiKey::OffsetCommit,
    ApiKey::OffsetFetch,
    ApiKey::OffsetDelete,
    ApiKey::DescribeGroups,
    ApiKey::ListGroups,
    ApiKey::DeleteGroups,
];

/// Every served API with the full version range the protocol crate supports, old non-flexible
/// versions included (librdkafka 2.0 needs them).
pub fn api_versions() -> ApiVersionsResponse {
    let api_keys = SERVED_APIS
        .iter()
        .map(|key| {
            let range = crate::wire::supported_versions(*key);
            ApiVersion::default()
                .with_api_key(*key as i16)
                .with_min_version(range.min)
                .with_max_version(range.max)
        })
        .collect();
    ApiVersionsResponse::default().with_api_keys(api_keys)
}

/// What a decoded request is for.
pub enum Decoded {
    /// The codec answers it itself.
    Answer(ResponseKind),
    /// For the core.
    Core(Request),
    /// An API this broker does not serve (connections refuse those before they get here).
    Unsupported,
}

fn str_bytes(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}

fn string(s: &StrBytes) -> String {
    s.as_str().to_string()
}

fn topic_key(name: &TopicName, id: Uuid, by_id: bool) -> TopicKey {
    if by_id {
        TopicKey::Id(*id.as_bytes())
    } else {
        TopicKey::Name(string(&name.0))
    }
}

/// A core request for a decoded Kafka request of `version`.
pub fn decode(body: RequestKind, version: i16) -> Decoded {
    let request = match body {
        RequestKind::ApiVersions(_) => {
            return Decoded::Answer(ResponseKind::ApiVersions(api_versions()))
        }
        RequestKind::Metadata(r) => Request::Metadata(MetadataRequest {
            // v0: an empty list means all topics; v1+: null means all topics.
            topics: match r.topics {
                None => None,
                Some(t) if t.is_empty() && version == 0 => None,
                Some(t) => Some(
                    t.into_iter()
                        .map(|t| match t.name {
                            Some(name) => TopicKey::Name(string(&name.0)),
                            None => TopicKey::Id(*t.topic_id.as_bytes()),
                        })
                        .collect(),
                ),
            },
            allow_auto_create: version < 4 || r.allow_auto_topic_creation,
        }),
        RequestKind::CreateTopics(r) => Request::CreateTopics(CreateTopicsRequest {
            topics: r
                .topics
                .into_iter()
                .map(|t| NewTopic {
                    name: string(&t.name.0),
                    num_partitions: t.num_partitions,
                    replication_factor: t.replication_factor,
                    assignment: (!t.assignments.is_empty()).then(|| {
                        t.assignments
                            .iter()
                            .map(|a| {
                                (
                                    a.partition_index,
                                    a.broker_ids.iter().map(|b| b.0).collect(),
                                )
                            })
                            .collect()
                    }),
                    configs: t
                        .configs
                        .iter()
                        .filter_map(|c| Some((c.name.to_string(), c.value.as_ref()?.to_string())))
                        .collect(),
                })
                .collect(),
            validate_only: r.validate_only,
            timeout_ms: r.timeout_ms,
        }),
        RequestKind::DeleteTopics(r) => Request::DeleteTopics(DeleteTopicsRequest {
            topics: if version >= 6 {
                r.topics
                    .into_iter()
                    .map(|t| match t.name {
                        Some(name) => TopicKey::Name(string(&name.0)),
                        None => TopicKey::Id(*t.topic_id.as_bytes()),
                    })
                    .collect()
            } else {
                r.topic_names
                    .iter()
                    .map(|n| TopicKey::Name(string(&n.0)))
                    .collect()
            },
            timeout_ms: r.timeout_ms,
        }),
        RequestKind::CreatePartitions(r) => Request::CreatePartitions(CreatePartitionsRequest {
            topics: r
                .topics
                .into_iter()
                .map(|t| NewPartitions {
                    name: string(&t.name.0),
                    count: t.count,
                    assignment: t.assignments.map(|assignments| {
                        assignments
                            .iter()
                            .map(|a| a.broker_ids.iter().map(|b| b.0).collect())
                            .collect()
                    }),
                })
                .collect(),
            validate_only: r.validate_only,
            timeout_ms: r.timeout_ms,
        }),
        RequestKind::DescribeConfigs(r) => Request::DescribeConfigs(
            r.resources
                .into_iter()
                .map(|res| ConfigResource {
                    resource_type: res.resource_type,
                    name: res.resource_name.to_string(),
                    keys: res
                        .configuration_keys
                        .map(|k| k.iter().map(|s| s.to_string()).collect()),
                })
                .collect(),
        ),
        RequestKind::IncrementalAlterConfigs(r) => Request::AlterConfigs(AlterConfigsRequest {
            resources: r
                .resources
                .into_iter()
                .map(|res| AlterResource {
                    resource_type: res.resource_type,
                    name: res.resource_name.to_string(),
                    changes: res
                        .configs
                        .iter()
                        .map(|c| ConfigChange {
                            name: c.name.to_string(),
                            operation: c.config_operation,
                            value: c.value.as_ref().map(|v| v.to_string()),
                        })
                        .collect(),
                })
                .collect(),
            validate_only: r.validate_only,
            replace: false,
        }),
        // The legacy API: the configs given are all the resource is to override. A config with
        // a null value is not set (so it goes too).
        RequestKind::AlterConfigs(r) => Request::AlterConfigs(AlterConfigsRequest {
            resources: r
                .resources
                .into_iter()
                .map(|res| AlterResource {
                    resource_type: res.resource_type,
                    name: res.resource_name.to_string(),
                    changes: res
                        .configs
                        .iter()
                        .filter_map(|c| {
                            Some(ConfigChange {
                                name: c.name.to_string(),
                                operation: CONFIG_SET,
                                value: Some(c.value.as_ref()?.to_string()),
                            })
                        })
                        .collect(),
                })
                .collect(),
            validate_only: r.validate_only,
            replace: true,
        }),
        RequestKind::DescribeAcls(_) => Request::Acls(AclRequest::Describe),
        RequestKind::CreateAcls(r) => Request::Acls(AclRequest::Create(r.creations.len())),
        RequestKind::DeleteAcls(r) => Request::Acls(AclRequest::Delete(r.filters.len())),
        RequestKind::ListOffsets(r) => Request::ListOffsets(ListOffsetsRequest {
            replica_id: r.replica_id.0,
            topics: r
                .topics
                .into_iter()
                .map(|t| {
                    let queries = t
                        .partitions
                        .iter()
                        .map(|p| OffsetQuery {
                            partition: p.partition_index,
                            timestamp: p.timestamp,
                            current_leader_epoch: p.current_leader_epoch,
                        })
                        .collect();
                    (string(&t.name.0), queries)
                })
                .collect(),
        }),
        RequestKind::DeleteRecords(r) => Request::DeleteRecords(DeleteRecordsRequest {
            topics: r
                .topics
                .into_iter()
                .map(|t| {
                    let partitions = t
                        .partitions
                        .iter()
                        .map(|p| (p.partition_index, p.offset))
                        .collect();
                    (string(&t.name.0), partitions)
                })
                .collect(),
            timeout_ms: r.timeout_ms,
        }),
        RequestKind::OffsetForLeaderEpoch(r) => Request::OffsetForLeaderEpoch(
            r.topics
                .into_iter()
                .map(|t| {
                    let queries = t
                        .partitions
                        .iter()
                        .map(|p| EpochQuery {
                            partition: p.partition,
                            current_leader_epoch: p.current_leader_epoch,
                            leader_epoch: p.leader_epoch,
                        })
                        .collect();
                    (string(&t.topic.0), queries)
                })
                .collect(),
        ),
        RequestKind::InitProducerId(r) => Request::InitProducerId(InitProducerIdRequest {
            transactional_id: r.transactional_id.map(|t| t.to_string()),
            producer_id: r.producer_id.0,
            producer_epoch: r.producer_epoch,
        }),
        RequestKind::Produce(r) => Request::Produce(ProduceRequest {
            acks: r.acks,
            timeout_ms: r.timeout_ms,
            transactional: r.transactional_id.is_some(),
            topics: r
                .topic_data
                .into_iter()
                .map(|t| {
                    let key = topic_key(&t.name, t.topic_id, version >= 13);
                    let partitions = t
                        .partition_data
                        .into_iter()
                        .map(|p| (p.index, p.records))
                        .collect();
                    (key, partitions)
                })
                .collect(),
        }),
        RequestKind::Fetch(r) => Request::Fetch(FetchRequest {
            max_wait_ms: r.max_wait_ms,
            min_bytes: r.min_bytes,
            max_bytes: (version >= 3).then_some(r.max_bytes),
            topics: r
                .topics
                .into_iter()
                .map(|t| {
                    let key = topic_key(&t.topic, t.topic_id, version >= 13);
                    let queries = t
                        .partitions
                        .iter()
                        .map(|p| FetchQuery {
                            partition: p.partition,
                            fetch_offset: p.fetch_offset,
                            partition_max_bytes: p.partition_max_bytes,
                            current_leader_epoch: p.current_leader_epoch,
                        })
                        .collect();
                    (key, queries)
                })
                .collect(),
        }),
        RequestKind::FindCoordinator(r) => Request::FindCoordinator(FindCoordinatorRequest {
            key_type: r.key_type,
            keys: if version >= 4 {
                r.coordinator_keys.iter().map(string).collect()
            } else {
                vec![string(&r.key)]
            },
        }),
        RequestKind::JoinGroup(r) => Request::JoinGroup(JoinRequest {
            group_id: string(&r.group_id.0),
            member_id: string(&r.member_id),
            instance_id: r.group_instance_id.as_ref().map(string),
            // Filled in by the core from the connection (ClientInfo).
            client_id: String::new(),
            client_host: String::new(),
            session_timeout_ms: r.session_timeout_ms,
            // v0 has no rebalance timeout: it is the session timeout.
            rebalance_timeout_ms: if version >= 1 {
                r.rebalance_timeout_ms
            } else {
                r.session_timeout_ms
            },
            protocol_type: string(&r.protocol_type),
            protocols: r
                .protocols
                .iter()
                .map(|p| (string(&p.name), p.metadata.to_vec()))
                .collect(),
            require_known_member_id: version >= 4,
        }),
        RequestKind::SyncGroup(r) => Request::SyncGroup(SyncRequest {
            group_id: string(&r.group_id.0),
            member_id: string(&r.member_id),
            instance_id: r.group_instance_id.as_ref().map(string),
            generation: r.generation_id,
            protocol_type: r.protocol_type.as_ref().map(string),
            protocol_name: r.protocol_name.as_ref().map(string),
            assignments: r
                .assignments
                .iter()
                .map(|a| (string(&a.member_id), a.assignment.to_vec()))
                .collect(),
        }),
        RequestKind::Heartbeat(r) => Request::Heartbeat(HeartbeatRequest {
            group_id: string(&r.group_id.0),
            member_id: string(&r.member_id),
            instance_id: r.group_instance_id.as_ref().map(string),
            generation: r.generation_id,
        }),
        RequestKind::LeaveGroup(r) => Request::LeaveGroup(LeaveRequest {
            group_id: string(&r.group_id.0),
            members: if version >= 3 {
                r.members
                    .iter()
                    .map(|m| {
                        (
                            string(&m.member_id),
                            m.group_instance_id.as_ref().map(string),
                        )
                    })
                    .collect()
            } else {
                vec![(string(&r.member_id), None)]
            },
        }),
        RequestKind::OffsetCommit(r) => Request::OffsetCommit(CommitRequest {
            group_id: string(&r.group_id.0),
            // v0 has no generation: a commit outside any generation.
            generation: if version >= 1 {
                r.generation_id_or_member_epoch
            } else {
                -1
            },
            member_id: string(&r.member_id),
            instance_id: r.group_instance_id.as_ref().map(string),
            partitions: r
                .topics
                .iter()
                .flat_map(|t| {
                    t.partitions.iter().map(|p| CommitPartition {
                        topic: string(&t.name.0),
                        partition: p.partition_index,
                        offset: p.committed_offset,
                        leader_epoch: if version >= 6 {
                            p.committed_leader_epoch
                        } else {
                            -1
                        },
                        metadata: p.committed_metadata.as_ref().map(string),
                    })
                })
                .collect(),
        }),
        RequestKind::OffsetFetch(r) => Request::OffsetFetch(if version >= 8 {
            r.groups
                .iter()
                .map(|g| {
                    let wanted = g.topics.as_ref().map(|topics| {
                        topics
                            .iter()
                            .flat_map(|t| {
                                t.partition_indexes.iter().map(|p| (string(&t.name.0), *p))
                            })
                            .collect()
                    });
                    (string(&g.group_id.0), wanted)
                })
                .collect()
        } else {
            let wanted = r.topics.as_ref().map(|topics| {
                topics
                    .iter()
                    .flat_map(|t| t.partition_indexes.iter().map(|p| (string(&t.name.0), *p)))
                    .collect()
            });
            vec![(string(&r.group_id.0), wanted)]
        }),
        RequestKind::OffsetDelete(r) => Request::OffsetDelete(OffsetDeleteRequest {
            group_id: string(&r.group_id.0),
            partitions: r
                .topics
                .iter()
                .flat_map(|t| {
                    t.partitions
                        .iter()
                        .map(|p| (string(&t.name.0), p.partition_index))
                })
                .collect(),
        }),
        RequestKind::DescribeGroups(r) => {
            Request::DescribeGroups(r.groups.iter().map(|g| string(&g.0)).collect())
        }
        RequestKind::ListGroups(r) => {
            Request::ListGroups(r.states_filter.iter().map(string).collect())
        }
        RequestKind::DeleteGroups(r) => {
            Request::DeleteGroups(r.groups_names.iter().map(|g| string(&g.0)).collect())
        }
        _ => return Decoded::Unsupported,
    };
    Decoded::Core(request)
}

/// The Kafka response of `version` for a core reply.
/// The response of `api_key` v`version` for a core reply (AlterConfigs and
/// IncrementalAlterConfigs share one reply).
pub fn encode(reply: Reply, api_key: ApiKey, version: i16) -> ResponseKind {
    match reply {
        Reply::Metadata(m) => ResponseKind::Metadata(metadata(m)),
        Reply::CreateTopics(topics) => ResponseKind::CreateTopics(
            CreateTopicsResponse::default().with_topics(
                topics
                    .into_iter()
                    .map(|t| {
                        let mut r = CreatableTopicResult::default()
                            .with_name(TopicName(str_bytes(t.name)))
                            .with_error_code(t.error.code())
                            .with_topic_id(Uuid::from_bytes(t.topic_id));
                        if version >= 1 && t.error != ErrorCode::None {
                            r.error_message = t.message.map(str_bytes);
                        }
                        if version >= 5 {
                            r.num_partitions = t.num_partitions;
                            r.replication_factor = t.replication_factor;
                            r.configs = t.configs.map(|configs| {
                                configs
                                    .into_iter()
                                    .map(|c| {
                                        CreatableTopicConfigs::default()
                                            .with_name(str_bytes(c.name))
                                            .with_value(Some(str_bytes(c.value)))
                                            .with_config_source(c.source)
                                    })
                                    .collect()
                            });
                        }
                        r
                    })
                    .collect(),
            ),
        ),
        Reply::DeleteTopics(topics) => ResponseKind::DeleteTopics(
            DeleteTopicsResponse::default().with_responses(
                topics
                    .into_iter()
                    .map(|t| {
                        let mut r = DeletableTopicResult::default()
                            .with_name(t.name.map(|n| TopicName(str_bytes(n))))
                            .with_error_code(t.error.code());
                        if version >= 6 {
                            r.topic_id = Uuid::from_bytes(t.topic_id);
                        }
                        if version >= 5 && t.error != ErrorCode::None {
                            r.error_message = t.message.map(str_bytes);
                        }
                        r
                    })
                    .collect(),
            ),
        ),
        Reply::CreatePartitions(topics) => ResponseKind::CreatePartitions(
            CreatePartitionsResponse::default().with_results(
                topics
                    .into_iter()
                    .map(|t| {
                        CreatePartitionsTopicResult::default()
                            .with_name(TopicName(str_bytes(t.name)))
                            .with_error_code(t.error.code())
                            .with_error_message(t.message.map(str_bytes))
                    })
                    .collect(),
            ),
        ),
        Reply::DescribeConfigs(resources) => ResponseKind::DescribeConfigs(
            DescribeConfigsResponse::default().with_results(
                resources
                    .into_iter()
                    .map(|res| {
                        DescribeConfigsResult::default()
                            .with_resource_type(res.resource_type)
                            .with_resource_name(str_bytes(res.name))
                            .with_error_code(res.error.code())
                            .with_error_message(res.message.map(str_bytes))
                            .with_configs(
                                res.configs
                                    .into_iter()
                                    .map(|c| {
                                        DescribeConfigsResourceResult::default()
                                            .with_name(str_bytes(c.name))
                                            .with_value(Some(str_bytes(c.value)))
                                            .with_config_source(c.source)
                                            .with_read_only(c.read_only)
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            ),
        ),
        Reply::AlterConfigs(resources) if api_key == ApiKey::AlterConfigs => {
            ResponseKind::AlterConfigs(
                AlterConfigsResponse::default().with_responses(
                    resources
                        .into_iter()
                        .map(|res| {
                            LegacyAlterConfigsResourceResponse::default()
                                .with_resource_type(res.resource_type)
                                .with_resource_name(str_bytes(res.name))
                                .with_error_code(res.error.code())
                                .with_error_message(res.message.map(str_bytes))
                        })
                        .collect(),
                ),
            )
        }
        Reply::Acls(acls) => {
            let code = acls.error.code();
            let message = || Some(str_bytes(acls.message.clone()));
            match acls.request {
                AclRequest::Describe => ResponseKind::DescribeAcls(
                    DescribeAclsResponse::default()
                        .with_error_code(code)
                        .with_error_message(message()),
                ),
                AclRequest::Create(n) => ResponseKind::CreateAcls(
                    CreateAclsResponse::default().with_results(
                        (0..n)
                            .map(|_| {
                                AclCreationResult::default()
                                    .with_error_code(code)
                                    .with_error_message(message())
                            })
                            .collect(),
                    ),
                ),
                AclRequest::Delete(n) => ResponseKind::DeleteAcls(
                    DeleteAclsResponse::default().with_filter_results(
                        (0..n)
                            .map(|_| {
                                DeleteAclsFilterResult::default()
                                    .with_error_code(code)
                                    .with_error_message(message())
                            })
                            .collect(),
                    ),
                ),
            }
        }
        Reply::AlterConfigs(resources) => ResponseKind::IncrementalAlterConfigs(
            IncrementalAlterConfigsResponse::default().with_responses(
                resources
                    .into_iter()
                    .map(|res| {
                        AlterConfigsResourceResponse::default()
                            .with_resource_type(res.resource_type)
                            .with_resource_name(str_bytes(res.name))
                            .with_error_code(res.error.code())
                            .with_error_message(res.message.map(str_bytes))
                    })
                    .collect(),
            ),
        ),
        Reply::ListOffsets(topics) => ResponseKind::ListOffsets(
            ListOffsetsResponse::default().with_topics(
                topics
                    .into_iter()
                    .map(|(name, partitions)| {
                        ListOffsetsTopicResponse::default()
                            .with_name(TopicName(str_bytes(name)))
                            .with_partitions(
                                partitions
                                    .into_iter()
                                    .map(|p| {
                                        let mut r = ListOffsetsPartitionResponse::default()
                                            .with_partition_index(p.partition)
                                            .with_error_code(p.error.code())
                                            .with_timestamp(p.timestamp)
                                            .with_offset(p.offset);
                                        if version >= 4 && p.error == ErrorCode::None {
                                            r.leader_epoch = p.leader_epoch;
                                        }
                                        r
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            ),
        ),
        Reply::DeleteRecords(topics) => ResponseKind::DeleteRecords(
            DeleteRecordsResponse::default().with_topics(
                topics
                    .into_iter()
                    .map(|(name, partitions)| {
                        DeleteRecordsTopicResult::default()
                            .with_name(TopicName(str_bytes(name)))
                            .with_partitions(
                                partitions
                                    .into_iter()
                                    .map(|p| {
                                        DeleteRecordsPartitionResult::default()
                                            .with_partition_index(p.partition)
                                            .with_low_watermark(p.low_watermark)
                                            .with_error_code(p.error.code())
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            ),
        ),
        Reply::OffsetForLeaderEpoch(topics) => ResponseKind::OffsetForLeaderEpoch(
            OffsetForLeaderEpochResponse::default().with_topics(
                topics
                    .into_iter()
                    .map(|(name, partitions)| {
                        OffsetForLeaderTopicResult::default()
                            .with_topic(TopicName(str_bytes(name)))
                            .with_partitions(
                                partitions
                                    .into_iter()
                                    .map(|p| {
                                        EpochEndOffset::default()
                                            .with_partition(p.partition)
                                            .with_error_code(p.error.code())
                                            .with_leader_epoch(p.leader_epoch)
                                            .with_end_offset(p.end_offset)
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            ),
        ),
        Reply::InitProducerId(p) => ResponseKind::InitProducerId(
            InitProducerIdResponse::default()
                .with_error_code(p.error.code())
                .with_producer_id(ProducerId(p.producer_id))
                .with_producer_epoch(p.producer_epoch),
        ),
        Reply::Produce(topics) => ResponseKind::Produce(
            ProduceResponse::default().with_responses(
                topics
                    .into_iter()
                    .map(|(key, partitions)| {
                        let (name, id) = key_fields(&key);
                        TopicProduceResponse::default()
                            .with_name(name)
                            .with_topic_id(id)
                            .with_partition_responses(
                                partitions
                                    .into_iter()
                                    .map(|p| {
                                        let mut r = PartitionProduceResponse::default()
                                            .with_index(p.partition)
                                            .with_error_code(p.error.code())
                                            .with_base_offset(p.base_offset)
                                            .with_log_append_time_ms(p.log_append_time_ms)
                                            .with_log_start_offset(p.log_start_offset);
                                        if version >= 8 && p.error != ErrorCode::None {
                                            r.error_message = p.message.map(str_bytes);
                                        }
                                        r
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            ),
        ),
        Reply::Fetch(topics) => ResponseKind::Fetch(
            FetchResponse::default().with_responses(
                topics
                    .into_iter()
                    .map(|(key, partitions)| {
                        let (name, id) = key_fields(&key);
                        FetchableTopicResponse::default()
                            .with_topic(name)
                            .with_topic_id(id)
                            .with_partitions(
                                partitions
                                    .into_iter()
                                    .map(|p| {
                                        PartitionData::default()
                                            .with_partition_index(p.partition)
                                            .with_error_code(p.error.code())
                                            .with_high_watermark(p.high_watermark)
                                            .with_last_stable_offset(p.last_stable_offset)
                                            .with_log_start_offset(p.log_start_offset)
                                            // An empty buffer, not null: librdkafka rejects a
                                            // null record set.
                                            .with_records(Some(p.records))
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            ),
        ),
        Reply::FindCoordinator(found) => {
            ResponseKind::FindCoordinator(find_coordinator(found, version))
        }
        Reply::JoinGroup(j) => {
            let mut response = JoinGroupResponse::default()
                .with_error_code(j.error.code())
                .with_generation_id(j.generation)
                .with_protocol_name(j.protocol_name.map(str_bytes))
                .with_leader(str_bytes(j.leader))
                .with_member_id(str_bytes(j.member_id))
                .with_members(
                    j.members
                        .into_iter()
                        .map(|m| {
                            JoinGroupResponseMember::default()
                                .with_member_id(str_bytes(m.member_id))
                                .with_group_instance_id(if version >= 5 {
                                    m.instance_id.map(str_bytes)
                                } else {
                                    None
                                })
                                .with_metadata(Bytes::from(m.metadata))
                        })
                        .collect(),
                );
            if version >= 7 {
                response.protocol_type = j.protocol_type.map(str_bytes);
            }
            if version < 7 && response.protocol_name.is_none() {
                response.protocol_name = Some(StrBytes::default());
            }
            ResponseKind::JoinGroup(response)
        }
        Reply::SyncGroup(s) => {
            let mut response = SyncGroupResponse::default()
                .with_error_code(s.error.code())
                .with_assignment(Bytes::from(s.assignment));
            if version >= 5 {
                response.protocol_type = s.protocol_type.map(str_bytes);
                response.protocol_name = s.protocol_name.map(str_bytes);
            }
            ResponseKind::SyncGroup(response)
        }
        Reply::Heartbeat(code) => {
            ResponseKind::Heartbeat(HeartbeatResponse::default().with_error_code(code.code()))
        }
        Reply::LeaveGroup(code, members) => {
            let mut response = LeaveGroupResponse::default();
            if version >= 3 {
                response.error_code = code.code();
                response.members = members
                    .into_iter()
                    .map(|(member_id, instance_id, c)| {
                        MemberResponse::default()
                            .with_member_id(str_bytes(member_id))
                            .with_group_instance_id(instance_id.map(str_bytes))
                            .with_error_code(c.code())
                    })
                    .collect();
            } else {
                // One member: its error is the response's.
                let member_code = members.first().map_or(code, |(_, _, c)| *c);
                response.error_code = if code == ErrorCode::None {
                    member_code
                } else {
                    code
                }
                .code();
            }
            ResponseKind::LeaveGroup(response)
        }
        Reply::OffsetCommit(results) => ResponseKind::OffsetCommit(
            OffsetCommitResponse::default().with_topics(
                by_topic(results.into_iter().map(|(topic, partition, code)| {
                    let p = OffsetCommitResponsePartition::default()
                        .with_partition_index(partition)
                        .with_error_code(code.code());
                    (topic, p)
                }))
                .map(|(name, partitions)| {
                    OffsetCommitResponseTopic::default()
                        .with_name(name)
                        .with_partitions(partitions)
                })
                .collect(),
            ),
        ),
        Reply::OffsetFetch(groups) => ResponseKind::OffsetFetch(offset_fetch(groups, version)),
        Reply::OffsetDelete(code, results) => ResponseKind::OffsetDelete(
            OffsetDeleteResponse::default()
                .with_error_code(code.code())
                .with_topics(
                    by_topic(results.into_iter().map(|(topic, partition, code)| {
                        let p = OffsetDeleteResponsePartition::default()
                            .with_partition_index(partition)
                            .with_error_code(code.code());
                        (topic, p)
                    }))
                    .map(|(name, partitions)| {
                        OffsetDeleteResponseTopic::default()
                            .with_name(name)
                            .with_partitions(partitions)
                    })
                    .collect(),
                ),
        ),
        Reply::DescribeGroups(groups) => ResponseKind::DescribeGroups(
            DescribeGroupsResponse::default().with_groups(
                groups
                    .into_iter()
                    .map(|(group_id, described)| {
                        let mut g =
                            DescribedGroup::default().with_group_id(GroupId(str_bytes(group_id)));
                        if version >= 3 {
                            g.authorized_operations = i32::MIN;
                        }
                        match described {
                            Err(code) => g.with_error_code(code.code()),
                            Ok(d) => g
                                .with_group_state(str_bytes(d.state))
                                .with_protocol_type(str_bytes(d.protocol_type))
                                .with_protocol_data(str_bytes(d.protocol))
                                .with_members(
                                    d.members
                                        .into_iter()
                                        .map(|m| {
                                            DescribedGroupMember::default()
                                                .with_member_id(str_bytes(m.member_id))
                                                .with_group_instance_id(if version >= 4 {
                                                    m.instance_id.map(str_bytes)
                                                } else {
                                                    None
                                                })
                                                .with_client_id(str_bytes(m.client_id))
                                                .with_client_host(str_bytes(m.client_host))
                                                .with_member_metadata(Bytes::from(m.metadata))
                                                .with_member_assignment(Bytes::from(m.assignment))
                                        })
                                        .collect(),
                                ),
                        }
                    })
                    .collect(),
            ),
        ),
        Reply::ListGroups(code, groups) => ResponseKind::ListGroups(
            ListGroupsResponse::default()
                .with_error_code(code.code())
                .with_groups(
                    groups
                        .into_iter()
                        .map(|g| {
                            let mut listed = ListedGroup::default()
                                .with_group_id(GroupId(str_bytes(g.group_id)))
                                .with_protocol_type(str_bytes(g.protocol_type));
                            if version >= 4 {
                                listed.group_state = str_bytes(g.state);
                            }
                            listed
                        })
                        .collect(),
                ),
        ),
        Reply::DeleteGroups(results) => ResponseKind::DeleteGroups(
            DeleteGroupsResponse::default().with_results(
                results
                    .into_iter()
                    .map(|(id, code)| {
                        DeletableGroupResult::default()
                            .with_group_id(GroupId(str_bytes(id)))
                            .with_error_code(code.code())
                    })
                    .collect(),
            ),
        ),
    }
}

fn key_fields(key: &TopicKey) -> (TopicName, Uuid) {
    match key {
        TopicKey::Name(name) => (TopicName(str_bytes(name.clone())), Uuid::nil()),
        TopicKey::Id(id) => (TopicName::default(), Uuid::from_bytes(*id)),
    }
}

fn metadata(m: MetadataReply) -> MetadataResponse {
    MetadataResponse::default()
        .with_brokers(
            m.brokers
                .into_iter()
                .map(|b| {
                    MetadataResponseBroker::default()
                        .with_node_id(BrokerId(b.node_id))
                        .with_host(str_bytes(b.host))
                        .with_port(b.port)
                        .with_rack(b.rack.map(str_bytes))
                })
                .collect(),
        )
        .with_cluster_id(
            m.cluster_id
                .map(|id| str_bytes(Uuid::from_bytes(id).to_string())),
        )
        .with_controller_id(BrokerId(m.controller_id))
        .with_topics(
            m.topics
                .into_iter()
                .map(|t| {
                    MetadataResponseTopic::default()
                        .with_error_code(t.error.code())
                        .with_name(t.name.map(|n| TopicName(str_bytes(n))))
                        .with_topic_id(Uuid::from_bytes(t.topic_id))
                        .with_is_internal(t.is_internal)
                        .with_partitions(
                            t.partitions
                                .into_iter()
                                .map(|p| {
                                    let ids = |v: Vec<i32>| v.into_iter().map(BrokerId).collect();
                                    MetadataResponsePartition::default()
                                        .with_error_code(p.error.code())
                                        .with_partition_index(p.partition)
                                        .with_leader_id(BrokerId(p.leader))
                                        .with_leader_epoch(p.leader_epoch)
                                        .with_replica_nodes(ids(p.replicas))
                                        .with_isr_nodes(ids(p.isr))
                                        .with_offline_replicas(ids(p.offline))
                                })
                                .collect(),
                        )
                })
                .collect(),
        )
}

fn find_coordinator(
    found: Vec<(String, Result<BrokerAddress, (ErrorCode, String)>)>,
    version: i16,
) -> FindCoordinatorResponse {
    if version >= 4 {
        let coordinators = found
            .into_iter()
            .map(|(key, result)| {
                let c = Coordinator::default().with_key(str_bytes(key));
                match result {
                    Ok(b) => c
                        .with_node_id(BrokerId(b.node_id))
                        .with_host(str_bytes(b.host))
                        .with_port(b.port),
                    Err((code, message)) => c
                        .with_node_id(BrokerId(-1))
                        .with_port(-1)
                        .with_error_code(code.code())
                        .with_error_message(Some(str_bytes(message))),
                }
            })
            .collect();
        return FindCoordinatorResponse::default().with_coordinators(coordinators);
    }
    match found.into_iter().next().map(|(_, result)| result) {
        Some(Ok(b)) => FindCoordinatorResponse::default()
            .with_node_id(BrokerId(b.node_id))
            .with_host(str_bytes(b.host))
            .with_port(b.port),
        Some(Err((code, message))) => FindCoordinatorResponse::default()
            .with_error_code(code.code())
            .with_error_message((version >= 1).then(|| str_bytes(message)))
            .with_node_id(BrokerId(-1))
            .with_port(-1),
        None => FindCoordinatorResponse::default()
            .with_error_code(ErrorCode::InvalidRequest.code())
            .with_node_id(BrokerId(-1))
            .with_port(-1),
    }
}

fn offset_fetch(groups: Vec<OffsetFetchGroup>, version: i16) -> OffsetFetchResponse {
    if version >= 8 {
        let groups = groups
            .into_iter()
            .map(|g| {
                let topics = by_topic(g.offsets.into_iter().map(|(topic, partition, value)| {
                    let p = OffsetFetchResponsePartitions::default()
                        .with_partition_index(partition)
                        .with_committed_offset(value.as_ref().map_or(-1, |v| v.offset))
                        .with_committed_leader_epoch(value.as_ref().map_or(-1, |v| v.leader_epoch))
                        .with_metadata(Some(str_bytes(
                            value.map(|v| v.metadata).unwrap_or_default(),
                        )));
                    (topic, p)
                }))
                .map(|(name, partitions)| {
                    OffsetFetchResponseTopics::default()
                        .with_name(name)
                        .with_partitions(partitions)
                })
                .collect();
                OffsetFetchResponseGroup::default()
                    .with_group_id(GroupId(str_bytes(g.group_id)))
                    .with_error_code(g.error.code())
                    .with_topics(topics)
            })
            .collect();
        return OffsetFetchResponse::default().with_groups(groups);
    }
    let Some(g) = groups.into_iter().next() else {
        return OffsetFetchResponse::default();
    };
    let code = g.error;
    let topics = by_topic(g.offsets.into_iter().map(|(topic, partition, value)| {
        let mut p = OffsetFetchResponsePartition::default()
            .with_partition_index(partition)
            .with_committed_offset(value.as_ref().map_or(-1, |v| v.offset))
            .with_metadata(Some(str_bytes(
                value
                    .as_ref()
                    .map(|v| v.metadata.clone())
                    .unwrap_or_default(),
            )));
        if version >= 5 {
            p.committed_leader_epoch = value.as_ref().map_or(-1, |v| v.leader_epoch);
        }
        if version < 2 && code != ErrorCode::None {
            p.error_code = code.code(); // v0-1 have no top-level error
        }
        (topic, p)
    }))
    .map(|(name, partitions)| {
        OffsetFetchResponseTopic::default()
            .with_name(name)
            .with_partitions(partitions)
    })
    .collect();
    let mut response = OffsetFetchResponse::default().with_topics(topics);
    if version >= 2 {
        response.error_code = code.code();
    }
    response
}

/// Per-partition rows gathered into per-topic entries (consecutive rows of one topic share an
/// entry), in the rows' order, as the responses list them.
fn by_topic<P>(
    rows: impl IntoIterator<Item = (String, P)>,
) -> impl Iterator<Item = (TopicName, Vec<P>)> {
    let mut topics: Vec<(String, Vec<P>)> = Vec::new();
    for (topic, partition) in rows {
        match topics.last_mut() {
            Some((name, partitions)) if *name == topic => partitions.push(partition),
            _ => topics.push((topic, vec![partition])),
        }
    }
    topics
        .into_iter()
        .map(|(name, partitions)| (TopicName(str_bytes(name)), partitions))
}
