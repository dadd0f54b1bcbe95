//! Metadata and administration: ApiVersions, Metadata (with auto topic creation), CreateTopics,
//! DeleteTopics, DescribeConfigs, IncrementalAlterConfigs, ListOffsets and InitProducerId.

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
use kafka_protocol::messages::incremental_alter_configs_request::{
    AlterConfigsResource, IncrementalAlterConfigsRequest,
};
use kafka_protocol::messages::incremental_alter_configs_response::{
    AlterConfigsResourceResponse, IncrementalAlterConfigsResponse,
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

use kafka_protocol::messages::ResponseKind;
use sluice_core::metadata::controller;
use sluice_core::metadata::{CreateTopicRequest, TopicRef};
use sluice_core::metadata::{Outcome as QuorumOutcome, Ticket};
use sluice_core::rng::Rng;
use std::collections::BTreeSet;
use tokio::time::{Duration, Instant};

use super::peers::{self, Reply, TicketOwner};
use super::{leader_epoch, now_ms, splitmix, Broker, TopicPartition, SERVED_APIS};
use crate::metadata::{describe_topic_config, validate_topic_name};
use crate::peer::ControllerRequest;

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

/// IncrementalAlterConfigs operations (APPEND = 2 and SUBTRACT = 3 edit list configs).
const OP_SET: i8 = 0;
const OP_DELETE: i8 = 1;

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
        let image = self.meta.quorum.image();
        let brokers: Vec<MetadataResponseBroker> = image
            .live_brokers()
            .map(|b| {
                MetadataResponseBroker::default()
                    .with_node_id(BrokerId(b.node_id))
                    .with_host(str_bytes(b.host.clone()))
                    .with_port(i32::from(b.port))
                    .with_rack(b.rack.clone().map(str_bytes))
            })
            .collect();
        let live: BTreeSet<i32> = image.live_brokers().map(|b| b.node_id).collect();
        let cluster_id = image
            .cluster_id()
            .map(|id| Uuid::from_bytes(id).to_string());
        let controller = self.meta.quorum.leader().map_or(-1, |l| l as i32);
        let mut response = MetadataResponse::default()
            .with_brokers(brokers)
            .with_cluster_id(cluster_id.map(str_bytes))
            .with_controller_id(BrokerId(controller));
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
                // As Kafka does: ask the controller, answer LEADER_NOT_AVAILABLE, and let the
                // client ask again.
                self.auto_create_topic(&name);
                topic.error_code = ErrorCode::LeaderNotAvailable.code();
                response.topics.push(topic);
                continue;
            }
            let state = &self.topics[&name];
            topic.topic_id = state.id;
            topic.is_internal = false;
            let topic_id = *state.id.as_bytes();
            topic.partitions = state
                .assignments
                .iter()
                .enumerate()
                .map(|(p, replicas)| {
                    let tp = TopicPartition {
                        topic: name.clone(),
                        partition: p as i32,
                    };
                    let leader = self.leader_of(&tp, topic_id);
                    let mut partition = MetadataResponsePartition::default()
                        .with_partition_index(p as i32)
                        .with_replica_nodes(replicas.iter().map(|r| BrokerId(*r)).collect())
                        .with_isr_nodes(
                            replicas
                                .iter()
                                .filter(|r| live.contains(r))
                                .map(|r| BrokerId(*r))
                                .collect(),
                        )
                        .with_offline_replicas(
                            replicas
                                .iter()
                                .filter(|r| !live.contains(r))
                                .map(|r| BrokerId(*r))
                                .collect(),
                        );
                    match leader {
                        Some((term, leader)) if live.contains(&(leader as i32)) => {
                            partition.leader_id = BrokerId(leader as i32);
                            partition.leader_epoch = i32::try_from(term).unwrap_or(i32::MAX);
                        }
                        _ => {
                            partition.error_code = ErrorCode::LeaderNotAvailable.code();
                            partition.leader_id = BrokerId(-1);
                            partition.leader_epoch = -1;
                        }
                    }
                    partition
                })
                .collect();
            response.topics.push(topic);
        }
        response
    }

    /// Asks the controller to create `name` with the defaults, once per topic at a time.
    pub(super) fn auto_create_topic(&mut self, name: &str) {
        let asked = self
            .calling(|r| matches!(r, ControllerRequest::CreateTopic { name: n, .. } if n == name));
        if !asked {
            tracing::info!(topic = name, "auto-creating topic");
            self.call_controller(ControllerRequest::CreateTopic {
                name: name.to_string(),
                num_partitions: -1,
                replication_factor: -1,
                configs: Vec::new(),
            });
        }
    }

    pub(super) fn create_topics(
        &mut self,
        request: CreateTopicsRequest,
        version: i16,
        reply: Option<Reply>,
    ) {
        let mut response = CreateTopicsResponse::default();
        let mut tickets = Vec::new();
        let is_controller = self.meta.quorum.is_active();
        let now = now_ms();
        for (index, t) in request.topics.into_iter().enumerate() {
            let name = t.name.0.to_string();
            let mut result = CreatableTopicResult::default().with_name(t.name.clone());
            let create = CreateTopicRequest {
                name: name.clone(),
                num_partitions: if t.assignments.is_empty() {
                    t.num_partitions
                } else {
                    -1
                },
                replication_factor: if t.assignments.is_empty() {
                    t.replication_factor
                } else {
                    -1
                },
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
            };
            let outcome: Result<Option<Ticket>, (ErrorCode, String)> = if !is_controller {
                Err((
                    ErrorCode::NotController,
                    "this node is not the active controller".to_string(),
                ))
            } else if request.validate_only {
                let defaults = peers::topic_defaults(&self.config);
                let mut rng = Rng::new(splitmix(&mut self.rng));
                controller::create_topic(self.meta.quorum.image(), &create, &defaults, &mut rng)
                    .map(|_| None)
                    .map_err(|e| (e.code(), e.message().to_string()))
            } else {
                let meta = &mut self.meta;
                meta.quorum
                    .create_topic(&create, now, &meta.store)
                    .map(Some)
                    .map_err(|e| (e.code, e.message))
            };
            match outcome {
                Ok(Some(ticket)) => tickets.push((ticket, index)),
                Ok(None) => {
                    if version >= 5 {
                        result.num_partitions = create.num_partitions;
                        result.replication_factor = create.replication_factor;
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
        let timeout = admin_timeout(request.timeout_ms);
        self.wait_for_admin(
            AdminResponse::Create(response, version),
            tickets,
            reply,
            timeout,
        );
        self.after_metadata_input();
    }

    /// Answers at once if nothing was proposed; otherwise once every ticket is answered.
    fn wait_for_admin(
        &mut self,
        response: AdminResponse,
        tickets: Vec<(Ticket, usize)>,
        reply: Option<Reply>,
        timeout: Duration,
    ) {
        let id = self.next_admin_waiter;
        self.next_admin_waiter += 1;
        let waiter = AdminWaiter {
            response,
            outstanding: tickets.iter().map(|(_, i)| *i).collect(),
            reply,
            deadline: Instant::now() + timeout,
        };
        for (ticket, index) in tickets {
            self.ticket_owners
                .insert(ticket, TicketOwner::Admin { waiter: id, index });
        }
        if waiter.outstanding.is_empty() {
            waiter.send();
        } else {
            self.admin_waiters.insert(id, waiter);
        }
    }

    /// A ticket of an admin request was answered by the quorum.
    pub(super) fn on_admin_result(
        &mut self,
        waiter: u64,
        index: usize,
        result: Result<QuorumOutcome, ErrorCode>,
    ) {
        let Some(w) = self.admin_waiters.get_mut(&waiter) else {
            return;
        };
        w.outstanding.remove(&index);
        let image = self.meta.quorum.image();
        match &mut w.response {
            AdminResponse::Create(response, version) => {
                let r = &mut response.topics[index];
                match result {
                    Ok(QuorumOutcome::TopicCreated { topic_id, .. }) => {
                        r.topic_id = Uuid::from_bytes(topic_id);
                        if *version >= 5 {
                            if let Some(topic) = image.topic(&topic_id) {
                                r.num_partitions = topic.partitions.len() as i32;
                                r.replication_factor = topic.replication_factor() as i16;
                                r.configs = Some(
                                    describe_topic_config(&self.config.log, &topic.configs)
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
                    }
                    Ok(other) => {
                        tracing::error!(?other, "unexpected answer to a topic creation");
                        r.error_code = ErrorCode::UnknownServerError.code();
                    }
                    Err(code) => {
                        r.error_code = code.code();
                        if *version >= 1 {
                            r.error_message = Some(str_bytes(format!("{code:?}")));
                        }
                    }
                }
            }
            AdminResponse::Delete(response, version) => {
                let r = &mut response.responses[index];
                if let Err(code) = result {
                    r.error_code = code.code();
                    if *version >= 5 {
                        r.error_message = Some(str_bytes(format!("{code:?}")));
                    }
                }
            }
            AdminResponse::Alter(response) => {
                let r = &mut response.responses[index];
                if let Err(code) = result {
                    r.error_code = code.code();
                    r.error_message = Some(str_bytes(format!("{code:?}")));
                }
            }
        }
        if w.outstanding.is_empty() {
            if let Some(w) = self.admin_waiters.remove(&waiter) {
                w.send();
            }
        }
    }

    /// Admin requests past their timeout: REQUEST_TIMED_OUT for what is still open (the
    /// change may still happen, as in Kafka).
    pub(super) fn expire_admin_waiters(&mut self, now: Instant) {
        let expired: Vec<u64> = self
            .admin_waiters
            .iter()
            .filter(|(_, w)| w.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            let Some(mut w) = self.admin_waiters.remove(&id) else {
                continue;
            };
            let code = ErrorCode::RequestTimedOut.code();
            for index in std::mem::take(&mut w.outstanding) {
                match &mut w.response {
                    AdminResponse::Create(r, _) => r.topics[index].error_code = code,
                    AdminResponse::Delete(r, _) => r.responses[index].error_code = code,
                    AdminResponse::Alter(r) => r.responses[index].error_code = code,
                }
            }
            w.send();
        }
        let (due, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.producer_id_waiters)
            .into_iter()
            .partition(|w| w.deadline <= now);
        self.producer_id_waiters = waiting;
        for w in due {
            let response = InitProducerIdResponse::default()
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1)
                .with_error_code(ErrorCode::RequestTimedOut.code());
            let _ = w.reply.send(ResponseKind::InitProducerId(response));
        }
    }

    pub(super) fn delete_topics(
        &mut self,
        request: DeleteTopicsRequest,
        version: i16,
        reply: Option<Reply>,
    ) {
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
        let is_controller = self.meta.quorum.is_active();
        let now = now_ms();
        let mut response = DeleteTopicsResponse::default();
        let mut tickets = Vec::new();
        for (index, (name, id)) in wanted.into_iter().enumerate() {
            let mut result = DeletableTopicResult::default()
                .with_name(name.clone().map(|n| TopicName(str_bytes(n))))
                .with_topic_id(id);
            let resolved = name.clone().or_else(|| self.topic_ids.get(&id).cloned());
            let outcome = match resolved {
                _ if !is_controller => Err((
                    ErrorCode::NotController,
                    "this node is not the active controller".to_string(),
                )),
                Some(n) if self.topics.contains_key(&n) => {
                    let topic_id = self.topics[&n].id;
                    if version >= 6 {
                        result.topic_id = topic_id;
                        result.name = Some(TopicName(str_bytes(n.clone())));
                    }
                    let meta = &mut self.meta;
                    meta.quorum
                        .delete_topic(TopicRef::Id(*topic_id.as_bytes()), now, &meta.store)
                        .map_err(|e| (e.code, e.message))
                }
                _ if name.is_none() => {
                    Err((ErrorCode::UnknownTopicId, format!("unknown topic id {id}")))
                }
                _ => Err((
                    ErrorCode::UnknownTopicOrPartition,
                    "unknown topic".to_string(),
                )),
            };
            match outcome {
                Ok(ticket) => tickets.push((ticket, index)),
                Err((code, message)) => {
                    result.error_code = code.code();
                    if version >= 5 {
                        result.error_message = Some(str_bytes(message));
                    }
                }
            }
            response.responses.push(result);
        }
        let timeout = admin_timeout(request.timeout_ms);
        self.wait_for_admin(
            AdminResponse::Delete(response, version),
            tickets,
            reply,
            timeout,
        );
        self.after_metadata_input();
    }

    /// Topic configs only: broker settings come from each node's config file. SET and DELETE
    /// are served; APPEND and SUBTRACT (list configs) are refused. Like CreateTopics, a node
    /// that is not the active controller answers NOT_CONTROLLER and the client asks the
    /// `controller_id` from Metadata.
    pub(super) fn incremental_alter_configs(
        &mut self,
        request: IncrementalAlterConfigsRequest,
        reply: Option<Reply>,
    ) {
        let is_controller = self.meta.quorum.is_active();
        let now = now_ms();
        let mut response = IncrementalAlterConfigsResponse::default();
        let mut tickets = Vec::new();
        for (index, resource) in request.resources.iter().enumerate() {
            let mut result = AlterConfigsResourceResponse::default()
                .with_resource_type(resource.resource_type)
                .with_resource_name(resource.resource_name.clone());
            let outcome =
                self.alter_topic_configs(resource, is_controller, request.validate_only, now);
            match outcome {
                Ok(Some(ticket)) => tickets.push((ticket, index)),
                Ok(None) => {}
                Err((code, message)) => {
                    tracing::debug!(resource = %resource.resource_name, "alter configs refused: {message}");
                    result.error_code = code.code();
                    result.error_message = Some(str_bytes(message));
                }
            }
            response.responses.push(result);
        }
        self.wait_for_admin(
            AdminResponse::Alter(response),
            tickets,
            reply,
            admin_timeout(0),
        );
        self.after_metadata_input();
    }

    /// Checks one resource of an IncrementalAlterConfigs and proposes it (a ticket), or only
    /// validates it (`None`).
    fn alter_topic_configs(
        &mut self,
        resource: &AlterConfigsResource,
        is_controller: bool,
        validate_only: bool,
        now: u64,
    ) -> Result<Option<Ticket>, (ErrorCode, String)> {
        let name = resource.resource_name.to_string();
        match resource.resource_type {
            RESOURCE_TOPIC => {}
            RESOURCE_BROKER => {
                return Err((
                    ErrorCode::InvalidRequest,
                    "broker configs are read-only: set them in each node's config file".into(),
                ))
            }
            other => {
                return Err((
                    ErrorCode::InvalidRequest,
                    format!("resource type {other} is not supported"),
                ))
            }
        }
        let mut set = Vec::new();
        let mut delete = Vec::new();
        for c in &resource.configs {
            let key = c.name.to_string();
            match (c.config_operation, &c.value) {
                (OP_SET, Some(value)) => set.push((key, value.to_string())),
                (OP_SET, None) => {
                    return Err((
                        ErrorCode::InvalidConfig,
                        format!("config {key:?}: SET needs a value"),
                    ))
                }
                (OP_DELETE, _) => delete.push(key),
                (op, _) => {
                    return Err((
                        ErrorCode::InvalidRequest,
                        format!(
                            "config {key:?}: operation {op} is not supported (only SET and DELETE)"
                        ),
                    ))
                }
            }
        }
        if validate_only {
            return controller::alter_configs(
                self.meta.quorum.image(),
                &name,
                &set,
                &delete,
                &self.config.log,
            )
            .map(|_| None)
            .map_err(|e| (e.code(), e.message().to_string()));
        }
        if !is_controller {
            return Err((
                ErrorCode::NotController,
                "this node is not the active controller".to_string(),
            ));
        }
        let meta = &mut self.meta;
        meta.quorum
            .alter_configs(&name, &set, &delete, now, &meta.store)
            .map(Some)
            .map_err(|e| (e.code, e.message))
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
                let missing = self.missing_partition_error(&tp);
                let checked = self
                    .partitions
                    .get_mut(&tp)
                    .ok_or(missing)
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
        reply: Option<Reply>,
    ) {
        let Some(reply) = reply else {
            return;
        };
        let mut response = InitProducerIdResponse::default()
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1);
        if request.transactional_id.is_some() {
            response.error_code = ErrorCode::TransactionalIdAuthorizationFailed.code();
            tracing::warn!(
                "InitProducerId with a transactional id: transactions are not supported yet"
            );
            let _ = reply.send(ResponseKind::InitProducerId(response));
            return;
        }
        // KIP-360: an idempotent producer may ask to bump its epoch after an error. Any id the
        // cluster handed out is known by the image's allocation watermark.
        if request.producer_id.0 >= 0
            && request.producer_epoch >= 0
            && request.producer_epoch < i16::MAX - 1
        {
            if request.producer_id.0 < self.meta.quorum.image().producer_id_end() {
                response.producer_id = request.producer_id;
                response.producer_epoch = request.producer_epoch + 1;
            } else {
                response.error_code = ErrorCode::InvalidProducerEpoch.code();
            }
            let _ = reply.send(ResponseKind::InitProducerId(response));
            return;
        }
        self.producer_id_waiters.push(ProducerIdWaiter {
            reply,
            deadline: Instant::now() + PRODUCER_ID_WAIT,
        });
        self.answer_producer_id_waiters();
    }

    /// Hands out producer ids from the blocks the controller gave this node, asking for another
    /// block when they run out.
    pub(super) fn answer_producer_id_waiters(&mut self) {
        while !self.producer_id_waiters.is_empty() {
            let Some((first, end)) = self.producer_ids.first_mut() else {
                break;
            };
            let id = *first;
            *first += 1;
            if *first >= *end {
                self.producer_ids.remove(0);
            }
            let w = self.producer_id_waiters.remove(0);
            let response = InitProducerIdResponse::default()
                .with_producer_id(ProducerId(id))
                .with_producer_epoch(0);
            let _ = w.reply.send(ResponseKind::InitProducerId(response));
        }
        let asked = self.calling(|r| matches!(r, ControllerRequest::AllocateProducerIds { .. }));
        if !self.producer_id_waiters.is_empty() && !asked {
            self.call_controller(ControllerRequest::AllocateProducerIds {
                node_id: self.config.node_id,
            });
        }
    }
}

/// How long an admin request waits for its records to commit. Kafka's ZooKeeper-era brokers
/// read a timeout of 0 as "answer once the change is written, without waiting for it to spread",
/// which here is the commit itself; so 0 (or less) waits like the default.
fn admin_timeout(timeout_ms: i32) -> Duration {
    let ms = if timeout_ms <= 0 {
        30_000
    } else {
        timeout_ms.min(600_000)
    };
    Duration::from_millis(ms as u64)
}

/// How long an InitProducerId waits for a block of ids before a retriable error.
const PRODUCER_ID_WAIT: Duration = Duration::from_secs(5);

pub(super) struct ProducerIdWaiter {
    reply: Reply,
    pub deadline: Instant,
}

pub(super) enum AdminResponse {
    Create(CreateTopicsResponse, i16),
    Delete(DeleteTopicsResponse, i16),
    Alter(IncrementalAlterConfigsResponse),
}

/// A CreateTopics, DeleteTopics or IncrementalAlterConfigs request waiting for its records to
/// commit.
pub(super) struct AdminWaiter {
    response: AdminResponse,
    /// Indexes of the topics still waiting.
    outstanding: BTreeSet<usize>,
    reply: Option<Reply>,
    pub deadline: Instant,
}

impl AdminWaiter {
    fn send(self) {
        let Some(reply) = self.reply else {
            return;
        };
        let _ = reply.send(match self.response {
            AdminResponse::Create(r, _) => ResponseKind::CreateTopics(r),
            AdminResponse::Delete(r, _) => ResponseKind::DeleteTopics(r),
            AdminResponse::Alter(r) => ResponseKind::IncrementalAlterConfigs(r),
        });
    }
}
