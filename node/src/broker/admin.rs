//! Metadata and administration: ApiVersions, Metadata (with auto topic creation), CreateTopics,
//! DeleteTopics, DescribeConfigs, ListOffsets and InitProducerId.

use std::collections::BTreeMap;

use kafka_protocol::messages::api_versions_response::{ApiVersion, ApiVersionsResponse};
use kafka_protocol::messages::create_topics_request::CreateTopicsRequest;
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult, CreateTopicsResponse,
};
use kafka_protocol::messages::delete_topics_request::DeleteTopicsRequest;
use kafka_protocol::messages::delete_topics_response::{
    DeletableTopicResult, DeleteTopicsResponse,
};
use kafka_protocol::messages::describe_configs_request::DescribeConfigsRequest;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResponse, DescribeConfigsResult,
};
use kafka_protocol::messages::init_producer_id_request::InitProducerIdRequest;
use kafka_protocol::messages::init_producer_id_response::InitProducerIdResponse;
use kafka_protocol::messages::list_offsets_request::ListOffsetsRequest;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::metadata_request::MetadataRequest;
use kafka_protocol::messages::metadata_response::{
    MetadataResponse, MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, ProducerId, TopicName};
use kafka_protocol::protocol::StrBytes;
use sluice_core::storage::Storage;
use sluice_core::ErrorCode;
use uuid::Uuid;

use super::{leader_epoch, Broker, TopicPartition, SERVED_APIS};
use crate::config::{split_host_port, PARTITIONS_PER_TOPIC_MAX};
use crate::metadata::{describe_topic_config, topic_log_config, validate_topic_name};

/// A config as DescribeConfigs reports it: name, value, source.
type ConfigEntry = (String, String, i8);

/// The `replica_id` of Kafka's debugging consumer, which ListOffsets also serves from followers.
const DEBUGGING_REPLICA_ID: i32 = -2;

/// ListOffsets special timestamps.
const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;
const EARLIEST_LOCAL: i64 = -4;
const LATEST_TIERED: i64 = -5;

/// DescribeConfigs resource types and config sources.
const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;
const SOURCE_TOPIC: i8 = 1;
const SOURCE_DEFAULT: i8 = 5;

fn str_bytes(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}

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

impl<S: Storage> Broker<S> {
    pub(super) fn metadata(&mut self, request: MetadataRequest, version: i16) -> MetadataResponse {
        let (host, port) =
            split_host_port(&self.config.advertised_listener).expect("validated at start");
        let node_id = self.config.node_id;
        let broker = MetadataResponseBroker::default()
            .with_node_id(BrokerId(node_id))
            .with_host(str_bytes(host))
            .with_port(i32::from(port));
        let mut response = MetadataResponse::default()
            .with_brokers(vec![broker])
            .with_cluster_id(Some(str_bytes(self.meta.cluster_id.clone())))
            .with_controller_id(BrokerId(node_id));
        // v0: an empty list means all topics; v1+: null means all topics.
        let wanted: Option<Vec<(Option<String>, Uuid)>> = match request.topics {
            None => None,
            Some(t) if t.is_empty() && version == 0 => None,
            Some(t) => Some(
                t.into_iter()
                    .map(|t| (t.name.map(|n| n.0.to_string()), t.topic_id))
                    .collect(),
            ),
        };
        let auto_create =
            self.config.auto_create_topics && (version < 4 || request.allow_auto_topic_creation);
        let names: Vec<(Option<String>, Uuid)> = match wanted {
            None => self
                .topics
                .keys()
                .map(|n| (Some(n.clone()), Uuid::nil()))
                .collect(),
            Some(list) => list,
        };
        for (name, id) in names {
            let name = name.or_else(|| self.topic_ids.get(&id).cloned());
            let Some(name) = name else {
                let topic = MetadataResponseTopic::default()
                    .with_error_code(ErrorCode::UnknownTopicId.code())
                    .with_topic_id(id);
                response.topics.push(topic);
                continue;
            };
            let mut topic = MetadataResponseTopic::default()
                .with_name(Some(TopicName(str_bytes(name.clone()))));
            if !self.topics.contains_key(&name) {
                if let Err(why) = validate_topic_name(&name) {
                    tracing::debug!("metadata for invalid topic name: {why}");
                    topic.error_code = ErrorCode::InvalidTopicException.code();
                    response.topics.push(topic);
                    continue;
                }
                if !auto_create {
                    topic.error_code = ErrorCode::UnknownTopicOrPartition.code();
                    response.topics.push(topic);
                    continue;
                }
                if let Err(e) =
                    self.create_topic(&name, self.config.num_partitions, BTreeMap::new())
                {
                    tracing::error!(topic = name, "auto-creating topic failed: {e}");
                    topic.error_code = ErrorCode::KafkaStorageError.code();
                    response.topics.push(topic);
                    continue;
                }
            }
            let state = &self.topics[&name];
            topic.topic_id = state.id;
            topic.is_internal = false;
            topic.partitions = (0..state.partitions)
                .map(|p| {
                    let tp = TopicPartition {
                        topic: name.clone(),
                        partition: p,
                    };
                    let epoch = self
                        .partitions
                        .get(&tp)
                        .map_or(0, |part| leader_epoch::leader_epoch(&part.replica));
                    MetadataResponsePartition::default()
                        .with_partition_index(p)
                        .with_leader_id(BrokerId(node_id))
                        .with_leader_epoch(epoch)
                        .with_replica_nodes(vec![BrokerId(node_id)])
                        .with_isr_nodes(vec![BrokerId(node_id)])
                })
                .collect();
            response.topics.push(topic);
        }
        response
    }

    pub(super) fn create_topics(
        &mut self,
        request: CreateTopicsRequest,
        version: i16,
    ) -> CreateTopicsResponse {
        let mut response = CreateTopicsResponse::default();
        for t in request.topics {
            let name = t.name.0.to_string();
            let mut result = CreatableTopicResult::default().with_name(t.name.clone());
            let configs: BTreeMap<String, String> = t
                .configs
                .iter()
                .filter_map(|c| Some((c.name.to_string(), c.value.as_ref()?.to_string())))
                .collect();
            let partitions = if !t.assignments.is_empty() {
                t.assignments.len() as i32
            } else if t.num_partitions == -1 {
                self.config.num_partitions
            } else {
                t.num_partitions
            };
            let outcome: Result<(), (ErrorCode, String)> = (|| {
                validate_topic_name(&name).map_err(|e| (ErrorCode::InvalidTopicException, e))?;
                if self.topics.contains_key(&name) {
                    return Err((
                        ErrorCode::TopicAlreadyExists,
                        format!("topic {name:?} already exists"),
                    ));
                }
                if !(1..=PARTITIONS_PER_TOPIC_MAX).contains(&partitions) {
                    return Err((ErrorCode::InvalidPartitions, format!("number of partitions must be in 1..={PARTITIONS_PER_TOPIC_MAX}, got {partitions}")));
                }
                if !(t.replication_factor == -1 || t.replication_factor == 1)
                    && t.assignments.is_empty()
                {
                    return Err((
                        ErrorCode::InvalidReplicationFactor,
                        format!(
                            "replication factor {} is larger than the 1 available broker",
                            t.replication_factor
                        ),
                    ));
                }
                if t.assignments
                    .iter()
                    .any(|a| a.broker_ids.iter().map(|b| b.0).ne([self.config.node_id]))
                {
                    return Err((
                        ErrorCode::InvalidReplicaAssignment,
                        format!(
                            "replicas may only be assigned to broker {}",
                            self.config.node_id
                        ),
                    ));
                }
                topic_log_config(&self.config.log, &configs)?;
                if request.validate_only {
                    return Ok(());
                }
                let id = self
                    .create_topic(&name, partitions, configs.clone())
                    .map_err(|e| {
                        (
                            ErrorCode::KafkaStorageError,
                            format!("creating the topic failed: {e}"),
                        )
                    })?;
                result.topic_id = id;
                Ok(())
            })();
            match outcome {
                Ok(()) => {
                    if version >= 5 {
                        result.num_partitions = partitions;
                        result.replication_factor = 1;
                        let described = describe_topic_config(&self.config.log, &configs);
                        result.configs = Some(
                            described
                                .into_iter()
                                .map(|(name, value, is_override)| {
                                    CreatableTopicConfigs::default()
                                        .with_name(str_bytes(name))
                                        .with_value(Some(str_bytes(value)))
                                        .with_config_source(if is_override {
                                            SOURCE_TOPIC
                                        } else {
                                            SOURCE_DEFAULT
                                        })
                                })
                                .collect(),
                        );
                    }
                }
                Err((code, message)) => {
                    tracing::debug!(topic = name, "create topic refused: {message}");
                    result.error_code = code.code();
                    if version >= 1 {
                        result.error_message = Some(str_bytes(message));
                    }
                    if version >= 5 {
                        result.num_partitions = -1;
                        result.replication_factor = -1;
                    }
                }
            }
            response.topics.push(result);
        }
        response
    }

    pub(super) fn delete_topics(
        &mut self,
        request: DeleteTopicsRequest,
        version: i16,
    ) -> DeleteTopicsResponse {
        let wanted: Vec<(Option<String>, Uuid)> = if version >= 6 {
            request
                .topics
                .into_iter()
                .map(|t| (t.name.map(|n| n.0.to_string()), t.topic_id))
                .collect()
        } else {
            request
                .topic_names
                .into_iter()
                .map(|n| (Some(n.0.to_string()), Uuid::nil()))
                .collect()
        };
        let mut response = DeleteTopicsResponse::default();
        for (name, id) in wanted {
            let mut result = DeletableTopicResult::default()
                .with_name(name.clone().map(|n| TopicName(str_bytes(n))))
                .with_topic_id(id);
            let resolved = name.clone().or_else(|| self.topic_ids.get(&id).cloned());
            let outcome = match resolved {
                Some(n) if self.topics.contains_key(&n) => {
                    if version >= 6 {
                        result.topic_id = self.topics[&n].id;
                        result.name = Some(TopicName(str_bytes(n.clone())));
                    }
                    self.delete_topic(&n).map_err(|e| {
                        (
                            ErrorCode::KafkaStorageError,
                            format!("deleting failed: {e}"),
                        )
                    })
                }
                _ if name.is_none() => {
                    Err((ErrorCode::UnknownTopicId, format!("unknown topic id {id}")))
                }
                _ => Err((
                    ErrorCode::UnknownTopicOrPartition,
                    "unknown topic".to_string(),
                )),
            };
            if let Err((code, message)) = outcome {
                result.error_code = code.code();
                if version >= 5 {
                    result.error_message = Some(str_bytes(message));
                }
            }
            response.responses.push(result);
        }
        response
    }

    pub(super) fn describe_configs(
        &mut self,
        request: DescribeConfigsRequest,
    ) -> DescribeConfigsResponse {
        let mut response = DescribeConfigsResponse::default();
        for resource in request.resources {
            let mut result = DescribeConfigsResult::default()
                .with_resource_type(resource.resource_type)
                .with_resource_name(resource.resource_name.clone());
            let name = resource.resource_name.to_string();
            let entries: Result<Vec<ConfigEntry>, (ErrorCode, String)> = match resource
                .resource_type
            {
                RESOURCE_TOPIC => match self.topics.get(&name) {
                    Some(topic) => Ok(describe_topic_config(&self.config.log, &topic.configs)
                        .into_iter()
                        .map(|(n, v, o)| {
                            (
                                n.to_string(),
                                v,
                                if o { SOURCE_TOPIC } else { SOURCE_DEFAULT },
                            )
                        })
                        .collect()),
                    None => Err((
                        ErrorCode::UnknownTopicOrPartition,
                        format!("unknown topic {name:?}"),
                    )),
                },
                RESOURCE_BROKER if name.is_empty() || name == self.config.node_id.to_string() => {
                    Ok(self.broker_configs())
                }
                RESOURCE_BROKER => Err((
                    ErrorCode::InvalidRequest,
                    format!("this is broker {}, not {name:?}", self.config.node_id),
                )),
                other => Err((
                    ErrorCode::InvalidRequest,
                    format!("resource type {other} is not supported"),
                )),
            };
            match entries {
                Ok(entries) => {
                    let keys = resource
                        .configuration_keys
                        .map(|k| k.into_iter().map(|s| s.to_string()).collect::<Vec<_>>());
                    result.configs = entries
                        .into_iter()
                        .filter(|(n, _, _)| keys.as_ref().is_none_or(|k| k.contains(n)))
                        .map(|(n, v, source)| {
                            DescribeConfigsResourceResult::default()
                                .with_name(str_bytes(n))
                                .with_value(Some(str_bytes(v)))
                                .with_config_source(source)
                                .with_read_only(resource.resource_type == RESOURCE_BROKER)
                        })
                        .collect();
                }
                Err((code, message)) => {
                    result.error_code = code.code();
                    result.error_message = Some(str_bytes(message));
                }
            }
            response.results.push(result);
        }
        response
    }

    fn broker_configs(&self) -> Vec<ConfigEntry> {
        let c = &self.config;
        [
            (
                "auto.create.topics.enable",
                c.auto_create_topics.to_string(),
            ),
            ("num.partitions", c.num_partitions.to_string()),
            ("log.retention.ms", c.log.retention_ms.to_string()),
            ("log.retention.bytes", c.log.retention_bytes.to_string()),
            ("log.segment.bytes", c.log.segment_bytes_max.to_string()),
            ("log.roll.ms", c.log.segment_ms.to_string()),
            ("message.max.bytes", c.log.message_bytes_max.to_string()),
            (
                "log.index.interval.bytes",
                c.log.index_interval_bytes.to_string(),
            ),
            (
                "log.retention.check.interval.ms",
                c.retention_check_interval_ms.to_string(),
            ),
            ("socket.request.max.bytes", c.frame_bytes_max.to_string()),
            ("queued.max.requests", c.requests_in_flight_max.to_string()),
        ]
        .into_iter()
        .map(|(n, v)| (n.to_string(), v, SOURCE_DEFAULT))
        .collect()
    }

    pub(super) fn list_offsets(
        &mut self,
        request: ListOffsetsRequest,
        version: i16,
    ) -> ListOffsetsResponse {
        let mut response = ListOffsetsResponse::default();
        for topic in request.topics {
            let mut topic_response =
                ListOffsetsTopicResponse::default().with_name(topic.name.clone());
            for p in topic.partitions {
                let mut r = ListOffsetsPartitionResponse::default()
                    .with_partition_index(p.partition_index)
                    .with_timestamp(-1)
                    .with_offset(-1);
                let tp = TopicPartition {
                    topic: topic.name.0.to_string(),
                    partition: p.partition_index,
                };
                // Kafka serves ListOffsets from the leader only, except to its debugging tool;
                // the current leader epoch (v4+; -1 below) fences clients with stale metadata.
                let require_leader = request.replica_id.0 != DEBUGGING_REPLICA_ID;
                let checked = self
                    .partitions
                    .get_mut(&tp)
                    .ok_or(ErrorCode::UnknownTopicOrPartition)
                    .and_then(|part| {
                        let epoch = leader_epoch::leader_epoch(&part.replica);
                        let is_leader = part.replica.is_leader() || !require_leader;
                        leader_epoch::check_leader(epoch, is_leader, p.current_leader_epoch)
                            .map(|()| (part, epoch))
                    });
                match checked {
                    Err(code) => r.error_code = code.code(),
                    Ok((part, epoch)) => {
                        if version >= 4 {
                            r.leader_epoch = epoch;
                        }
                        let log = part.replica.log();
                        match p.timestamp {
                            LATEST => r.offset = log.high_watermark() as i64,
                            EARLIEST | EARLIEST_LOCAL | LATEST_TIERED => {
                                r.offset = log.log_start_offset() as i64
                            }
                            MAX_TIMESTAMP | 0.. => {
                                let target = if p.timestamp == MAX_TIMESTAMP {
                                    log.segments()
                                        .filter(|s| s.base_offset < log.high_watermark())
                                        .map(|s| s.max_timestamp)
                                        .max()
                                } else {
                                    Some(p.timestamp)
                                };
                                let found = target.and_then(|ts| log.offset_for_timestamp(ts)).map(
                                    |mut cursor| {
                                        part.store
                                            .borrow_mut()
                                            .read(&mut cursor)
                                            .map(|()| cursor.into_timestamp_hit())
                                    },
                                );
                                match found {
                                    Some(Ok(Some(hit))) => {
                                        r.offset = hit.offset as i64;
                                        r.timestamp = hit.timestamp;
                                    }
                                    Some(Ok(None)) | None => {}
                                    Some(Err(e)) => {
                                        tracing::error!(%tp, "timestamp lookup failed: {e:?}");
                                        r.error_code = e.error_code().code();
                                    }
                                }
                            }
                            other => {
                                r.error_code = ErrorCode::InvalidRequest.code();
                                tracing::debug!(%tp, "ListOffsets with unknown special timestamp {other}");
                            }
                        }
                    }
                }
                topic_response.partitions.push(r);
            }
            response.topics.push(topic_response);
        }
        response
    }

    pub(super) fn init_producer_id(
        &mut self,
        request: InitProducerIdRequest,
    ) -> InitProducerIdResponse {
        let mut response = InitProducerIdResponse::default()
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1);
        if request.transactional_id.is_some() {
            response.error_code = ErrorCode::TransactionalIdAuthorizationFailed.code();
            tracing::warn!(
                "InitProducerId with a transactional id: transactions are not supported yet"
            );
            return response;
        }
        // KIP-360: an idempotent producer may ask to bump its epoch after an error.
        if request.producer_id.0 >= 0
            && request.producer_epoch >= 0
            && request.producer_epoch < i16::MAX - 1
        {
            if request.producer_id.0 < self.next_producer_id {
                response.producer_id = request.producer_id;
                response.producer_epoch = request.producer_epoch + 1;
                return response;
            }
            response.error_code = ErrorCode::InvalidProducerEpoch.code();
            return response;
        }
        match self.allocate_producer_id() {
            Ok(id) => {
                response.producer_id = ProducerId(id);
                response.producer_epoch = 0;
            }
            Err(e) => {
                tracing::error!("allocating a producer id failed: {e}");
                response.error_code = ErrorCode::KafkaStorageError.code();
            }
        }
        response
    }
}
