//! Consumer groups: FindCoordinator, the group APIs, and the coordinators this broker runs.
//!
//! A group lives in one partition of `__consumer_offsets` (`sluice_core::group::partition_for`).
//! This broker coordinates the groups of every such partition it leads: when it becomes leader
//! it waits until its high watermark covers the log it had then (entries of earlier terms commit
//! with the first of its own), replays the partition into a fresh [`GroupCoordinator`], and only
//! then answers (COORDINATOR_LOAD_IN_PROGRESS before). Losing leadership drops the coordinator
//! and answers its waiting requests NOT_COORDINATOR, so clients look for the new one.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use kafka_protocol::messages::delete_groups_request::DeleteGroupsRequest;
use kafka_protocol::messages::delete_groups_response::{
    DeletableGroupResult, DeleteGroupsResponse,
};
use kafka_protocol::messages::describe_groups_request::DescribeGroupsRequest;
use kafka_protocol::messages::describe_groups_response::{
    DescribeGroupsResponse, DescribedGroup, DescribedGroupMember,
};
use kafka_protocol::messages::find_coordinator_request::FindCoordinatorRequest;
use kafka_protocol::messages::find_coordinator_response::{Coordinator, FindCoordinatorResponse};
use kafka_protocol::messages::heartbeat_request::HeartbeatRequest;
use kafka_protocol::messages::heartbeat_response::HeartbeatResponse;
use kafka_protocol::messages::join_group_request::JoinGroupRequest;
use kafka_protocol::messages::join_group_response::{JoinGroupResponse, JoinGroupResponseMember};
use kafka_protocol::messages::leave_group_request::LeaveGroupRequest;
use kafka_protocol::messages::leave_group_response::{LeaveGroupResponse, MemberResponse};
use kafka_protocol::messages::list_groups_request::ListGroupsRequest;
use kafka_protocol::messages::list_groups_response::{self, ListGroupsResponse};
use kafka_protocol::messages::offset_commit_request::OffsetCommitRequest;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponse, OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_delete_request::OffsetDeleteRequest;
use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponse, OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequest;
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponse, OffsetFetchResponseGroup, OffsetFetchResponsePartition,
    OffsetFetchResponsePartitions, OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::sync_group_request::SyncGroupRequest;
use kafka_protocol::messages::sync_group_response::SyncGroupResponse;
use kafka_protocol::messages::{BrokerId, GroupId, ResponseKind, TopicName};
use kafka_protocol::protocol::StrBytes;
use sluice_core::batch::{BatchBuilder, NewRecord, Records};
use sluice_core::group::{
    self, CommitPartition, CommitRequest, GroupCoordinator, JoinRequest, OffsetsRecord, Output,
    Reply, RequestId, SyncRequest, OFFSETS_TOPIC,
};
use sluice_core::limits::GROUP_STRING_BYTES_MAX;
use sluice_core::rng::Rng;
use sluice_core::storage::Storage;
use sluice_core::ErrorCode;
use tokio::sync::oneshot;

use super::{now_ms, splitmix, Broker, TopicPartition};
use crate::peer::ControllerRequest;

/// The coordinator of one `__consumer_offsets` partition this broker leads.
pub(super) struct CoordinatorSlot {
    /// The term it leads in; another term means another coordinator.
    term: u64,
    /// While loading: the log end when leadership began, which the high watermark must reach.
    load_until: Option<u64>,
    coordinator: GroupCoordinator,
}

/// Who sent a JoinGroup: the header's client id and the connection's address.
pub(super) struct Client {
    pub id: String,
    pub host: String,
}

/// At most `max` bytes of `s`, cut at a character boundary (the coordinator refuses longer
/// member strings; a long client id should not keep a client out of its group).
fn truncated(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// A group request waiting on its coordinator.
pub(super) struct GroupWaiter {
    reply: oneshot::Sender<ResponseKind>,
    version: i16,
}

fn str_bytes(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}

fn string(s: &StrBytes) -> String {
    s.as_str().to_string()
}

/// Where a group's coordinator is: (node id, host, port), or why it cannot be named.
type Located = Result<(i32, String, i32), (ErrorCode, String)>;

impl<S: Storage> Broker<S> {
    fn offsets_partitions(&self) -> Option<i32> {
        self.topics.get(OFFSETS_TOPIC).map(|t| t.partitions)
    }

    /// The partition of `group_id`, if this broker coordinates it and has loaded it; else the
    /// error the client gets.
    fn coordinator_for(&self, group_id: &str) -> Result<i32, ErrorCode> {
        let Some(partitions) = self.offsets_partitions() else {
            return Err(ErrorCode::CoordinatorNotAvailable);
        };
        let partition = group::partition_for(group_id, partitions);
        match self.coordinators.get(&partition) {
            None => Err(ErrorCode::NotCoordinator),
            Some(slot) if slot.load_until.is_some() => Err(ErrorCode::CoordinatorLoadInProgress),
            Some(_) => Ok(partition),
        }
    }

    fn coordinator_mut(&mut self, partition: i32) -> &mut GroupCoordinator {
        &mut self
            .coordinators
            .get_mut(&partition)
            .expect("looked up")
            .coordinator
    }

    /// The coordinator partition of `group_id`, with `reply` parked for the coordinator's
    /// answer; `None` when this broker is not that coordinator, after answering `reply` with
    /// `refuse(code)`.
    fn route_group(
        &mut self,
        group_id: &str,
        reply: Option<oneshot::Sender<ResponseKind>>,
        version: i16,
        refuse: impl FnOnce(ErrorCode) -> ResponseKind,
    ) -> Option<(i32, RequestId)> {
        match self.coordinator_for(group_id) {
            Ok(partition) => Some((partition, self.wait_group(reply, version))),
            Err(code) => {
                send(reply, refuse(code));
                None
            }
        }
    }

    fn wait_group(
        &mut self,
        reply: Option<oneshot::Sender<ResponseKind>>,
        version: i16,
    ) -> RequestId {
        let id = self.next_group_request;
        self.next_group_request += 1;
        if let Some(reply) = reply {
            self.group_waiters
                .insert(id, GroupWaiter { reply, version });
        }
        id
    }

    // -------------------------------------------------------------------------------------------
    // FindCoordinator

    pub(super) fn find_coordinator(
        &mut self,
        request: FindCoordinatorRequest,
        version: i16,
    ) -> FindCoordinatorResponse {
        let keys: Vec<String> = if version >= 4 {
            request.coordinator_keys.iter().map(string).collect()
        } else {
            vec![string(&request.key)]
        };
        let found: Vec<(String, Located)> = keys
            .into_iter()
            .map(|key| {
                let result = self.locate_coordinator(&key, request.key_type);
                (key, result)
            })
            .collect();
        if version >= 4 {
            let coordinators = found
                .into_iter()
                .map(|(key, result)| {
                    let c = Coordinator::default().with_key(str_bytes(key));
                    match result {
                        Ok((node, host, port)) => c
                            .with_node_id(BrokerId(node))
                            .with_host(str_bytes(host))
                            .with_port(port),
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
        let (_, result) = found.into_iter().next().expect("one key");
        match result {
            Ok((node, host, port)) => FindCoordinatorResponse::default()
                .with_node_id(BrokerId(node))
                .with_host(str_bytes(host))
                .with_port(port),
            Err((code, message)) => FindCoordinatorResponse::default()
                .with_error_code(code.code())
                .with_error_message((version >= 1).then(|| str_bytes(message)))
                .with_node_id(BrokerId(-1))
                .with_port(-1),
        }
    }

    /// The broker leading the group's `__consumer_offsets` partition. The topic is created on
    /// first use, as Kafka does; until it has a leader the answer is COORDINATOR_NOT_AVAILABLE,
    /// which clients retry.
    fn locate_coordinator(&mut self, key: &str, key_type: i8) -> Located {
        if key_type != 0 {
            return Err((
                ErrorCode::InvalidRequest,
                "only group coordinators exist (transactions are not supported yet)".into(),
            ));
        }
        if key.is_empty() {
            return Err((ErrorCode::InvalidGroupId, "the group id is empty".into()));
        }
        let Some(topic) = self.topics.get(OFFSETS_TOPIC) else {
            self.create_offsets_topic();
            return Err((
                ErrorCode::CoordinatorNotAvailable,
                "creating __consumer_offsets".into(),
            ));
        };
        let partition = group::partition_for(key, topic.partitions);
        let topic_id = *topic.id.as_bytes();
        let tp = TopicPartition {
            topic: OFFSETS_TOPIC.to_string(),
            partition,
        };
        let image = self.meta.quorum.image();
        let leader = self
            .leader_of(&tp, topic_id)
            .and_then(|(_, leader)| image.live_brokers().find(|b| b.node_id == leader as i32));
        match leader {
            Some(b) => Ok((b.node_id, b.host.clone(), i32::from(b.port))),
            None => Err((
                ErrorCode::CoordinatorNotAvailable,
                format!("{tp} has no leader yet"),
            )),
        }
    }

    fn create_offsets_topic(&mut self) {
        let asked = self.calling(
            |r| matches!(r, ControllerRequest::CreateTopic { name, .. } if name == OFFSETS_TOPIC),
        );
        if asked {
            return;
        }
        let live = self.meta.quorum.image().live_brokers().count().max(1);
        let replication_factor = self
            .config
            .offsets_topic_replication_factor
            .min(i16::try_from(live).unwrap_or(i16::MAX));
        tracing::info!(
            partitions = self.config.offsets_topic_partitions,
            replication_factor,
            "creating {OFFSETS_TOPIC}"
        );
        // Compacted, as in Kafka: the latest record per group and per committed partition stays,
        // and a deleted group's or expired offset's tombstone goes after delete.retention.ms.
        self.call_controller(ControllerRequest::CreateTopic {
            name: OFFSETS_TOPIC.to_string(),
            num_partitions: self.config.offsets_topic_partitions,
            replication_factor,
            configs: vec![
                ("cleanup.policy".to_string(), "compact".to_string()),
                (
                    "segment.bytes".to_string(),
                    self.config.offsets_topic_segment_bytes.to_string(),
                ),
            ],
        });
    }

    // -------------------------------------------------------------------------------------------
    // Membership

    pub(super) fn join_group(
        &mut self,
        request: JoinGroupRequest,
        version: i16,
        client: Client,
        reply: Option<oneshot::Sender<ResponseKind>>,
    ) {
        let group_id = string(&request.group_id.0);
        let member_id = request.member_id.clone();
        let Some((partition, id)) = self.route_group(&group_id, reply, version, |code| {
            ResponseKind::JoinGroup(
                JoinGroupResponse::default()
                    .with_error_code(code.code())
                    .with_generation_id(-1)
                    .with_member_id(member_id),
            )
        }) else {
            return;
        };
        let join = JoinRequest {
            group_id,
            member_id: string(&request.member_id),
            instance_id: request.group_instance_id.as_ref().map(string),
            client_id: truncated(client.id, GROUP_STRING_BYTES_MAX),
            client_host: truncated(client.host, GROUP_STRING_BYTES_MAX),
            session_timeout_ms: request.session_timeout_ms,
            // v0 has no rebalance timeout: it is the session timeout.
            rebalance_timeout_ms: if version >= 1 {
                request.rebalance_timeout_ms
            } else {
                request.session_timeout_ms
            },
            protocol_type: string(&request.protocol_type),
            protocols: request
                .protocols
                .iter()
                .map(|p| (string(&p.name), p.metadata.to_vec()))
                .collect(),
            require_known_member_id: version >= 4,
        };
        self.coordinator_mut(partition).join(now_ms(), id, join);
        self.drain_coordinator(partition);
    }

    pub(super) fn sync_group(
        &mut self,
        request: SyncGroupRequest,
        version: i16,
        reply: Option<oneshot::Sender<ResponseKind>>,
    ) {
        let group_id = string(&request.group_id.0);
        let Some((partition, id)) = self.route_group(&group_id, reply, version, |code| {
            ResponseKind::SyncGroup(SyncGroupResponse::default().with_error_code(code.code()))
        }) else {
            return;
        };
        let sync = SyncRequest {
            group_id,
            member_id: string(&request.member_id),
            instance_id: request.group_instance_id.as_ref().map(string),
            generation: request.generation_id,
            protocol_type: request.protocol_type.as_ref().map(string),
            protocol_name: request.protocol_name.as_ref().map(string),
            assignments: request
                .assignments
                .iter()
                .map(|a| (string(&a.member_id), a.assignment.to_vec()))
                .collect(),
        };
        self.coordinator_mut(partition).sync(now_ms(), id, sync);
        self.drain_coordinator(partition);
    }

    pub(super) fn heartbeat_group(&mut self, request: HeartbeatRequest) -> HeartbeatResponse {
        let group_id = string(&request.group_id.0);
        let code = match self.coordinator_for(&group_id) {
            Err(code) => code,
            Ok(partition) => {
                let code = self.coordinator_mut(partition).heartbeat(
                    now_ms(),
                    &group_id,
                    request.member_id.as_str(),
                    request.group_instance_id.as_ref().map(|s| s.as_str()),
                    request.generation_id,
                );
                self.drain_coordinator(partition);
                code
            }
        };
        HeartbeatResponse::default().with_error_code(code.code())
    }

    pub(super) fn leave_group(
        &mut self,
        request: LeaveGroupRequest,
        version: i16,
    ) -> LeaveGroupResponse {
        let group_id = string(&request.group_id.0);
        let members: Vec<(String, Option<String>)> = if version >= 3 {
            request
                .members
                .iter()
                .map(|m| {
                    (
                        string(&m.member_id),
                        m.group_instance_id.as_ref().map(string),
                    )
                })
                .collect()
        } else {
            vec![(string(&request.member_id), None)]
        };
        let (code, results) = match self.coordinator_for(&group_id) {
            Err(code) => (code, Vec::new()),
            Ok(partition) => {
                let out = self
                    .coordinator_mut(partition)
                    .leave(now_ms(), &group_id, &members);
                self.drain_coordinator(partition);
                out
            }
        };
        let mut response = LeaveGroupResponse::default();
        if version >= 3 {
            response.error_code = code.code();
            response.members = members
                .into_iter()
                .zip(results)
                .map(|((member_id, instance_id), code)| {
                    MemberResponse::default()
                        .with_member_id(str_bytes(member_id))
                        .with_group_instance_id(instance_id.map(str_bytes))
                        .with_error_code(code.code())
                })
                .collect();
        } else {
            // One member: its error is the response's.
            let member_code = results.first().copied().unwrap_or(code);
            response.error_code = if code.is_none() { member_code } else { code }.code();
        }
        response
    }

    // -------------------------------------------------------------------------------------------
    // Offsets

    pub(super) fn offset_commit(
        &mut self,
        request: OffsetCommitRequest,
        version: i16,
        reply: Option<oneshot::Sender<ResponseKind>>,
    ) {
        let group_id = string(&request.group_id.0);
        let partitions: Vec<CommitPartition> = request
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
            .collect();
        let Some((partition, id)) = self.route_group(&group_id, reply, version, |code| {
            let results = partitions
                .iter()
                .map(|p| (p.topic.clone(), p.partition, code))
                .collect();
            ResponseKind::OffsetCommit(commit_response(results))
        }) else {
            return;
        };
        let commit = CommitRequest {
            group_id,
            // v0 has no generation: a commit outside any generation.
            generation: if version >= 1 {
                request.generation_id_or_member_epoch
            } else {
                -1
            },
            member_id: string(&request.member_id),
            instance_id: request.group_instance_id.as_ref().map(string),
            partitions,
        };
        self.coordinator_mut(partition)
            .commit_offsets(now_ms(), id, commit);
        self.drain_coordinator(partition);
    }

    pub(super) fn offset_fetch(
        &mut self,
        request: OffsetFetchRequest,
        version: i16,
    ) -> OffsetFetchResponse {
        if version >= 8 {
            let groups = request
                .groups
                .iter()
                .map(|g| {
                    let wanted: Option<Vec<(String, i32)>> = g.topics.as_ref().map(|topics| {
                        topics
                            .iter()
                            .flat_map(|t| {
                                t.partition_indexes.iter().map(|p| (string(&t.name.0), *p))
                            })
                            .collect()
                    });
                    let (code, offsets) = self.fetch_group_offsets(&string(&g.group_id.0), wanted);
                    let topics = by_topic(offsets.into_iter().map(|(topic, partition, value)| {
                        let p = OffsetFetchResponsePartitions::default()
                            .with_partition_index(partition)
                            .with_committed_offset(value.as_ref().map_or(-1, |v| v.offset))
                            .with_committed_leader_epoch(
                                value.as_ref().map_or(-1, |v| v.leader_epoch),
                            )
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
                        .with_group_id(g.group_id.clone())
                        .with_error_code(code.code())
                        .with_topics(topics)
                })
                .collect();
            return OffsetFetchResponse::default().with_groups(groups);
        }
        let wanted: Option<Vec<(String, i32)>> = request.topics.as_ref().map(|topics| {
            topics
                .iter()
                .flat_map(|t| t.partition_indexes.iter().map(|p| (string(&t.name.0), *p)))
                .collect()
        });
        let (code, offsets) = self.fetch_group_offsets(&string(&request.group_id.0), wanted);
        let topics = by_topic(offsets.into_iter().map(|(topic, partition, value)| {
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
            if version < 2 && !code.is_none() {
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

    fn fetch_group_offsets(
        &mut self,
        group_id: &str,
        wanted: Option<Vec<(String, i32)>>,
    ) -> (ErrorCode, Vec<(String, i32, Option<group::OffsetValue>)>) {
        match self.coordinator_for(group_id) {
            Err(code) => (code, Vec::new()),
            Ok(partition) => {
                let offsets = self
                    .coordinator_mut(partition)
                    .fetch_offsets(group_id, wanted.as_deref());
                (ErrorCode::None, offsets)
            }
        }
    }

    pub(super) fn offset_delete(
        &mut self,
        request: OffsetDeleteRequest,
        version: i16,
        reply: Option<oneshot::Sender<ResponseKind>>,
    ) {
        let group_id = string(&request.group_id.0);
        let Some((partition, id)) = self.route_group(&group_id, reply, version, |code| {
            ResponseKind::OffsetDelete(OffsetDeleteResponse::default().with_error_code(code.code()))
        }) else {
            return;
        };
        let partitions: Vec<(String, i32)> = request
            .topics
            .iter()
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .map(|p| (string(&t.name.0), p.partition_index))
            })
            .collect();
        self.coordinator_mut(partition)
            .delete_offsets(id, &group_id, &partitions);
        self.drain_coordinator(partition);
    }

    // -------------------------------------------------------------------------------------------
    // Admin

    pub(super) fn describe_groups(
        &mut self,
        request: DescribeGroupsRequest,
        version: i16,
    ) -> DescribeGroupsResponse {
        let groups = request
            .groups
            .iter()
            .map(|g| {
                let group_id = string(&g.0);
                let mut described = DescribedGroup::default().with_group_id(g.clone());
                if version >= 3 {
                    described.authorized_operations = i32::MIN;
                }
                match self.coordinator_for(&group_id) {
                    Err(code) => described.with_error_code(code.code()),
                    Ok(partition) => {
                        let d = self.coordinator_mut(partition).describe(&group_id);
                        described
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
                            )
                    }
                }
            })
            .collect();
        DescribeGroupsResponse::default().with_groups(groups)
    }

    /// The groups of every coordinator on this broker (admin clients ask every broker).
    pub(super) fn list_groups(
        &mut self,
        request: ListGroupsRequest,
        version: i16,
    ) -> ListGroupsResponse {
        let states: Vec<String> = request.states_filter.iter().map(string).collect();
        let mut groups = Vec::new();
        for slot in self.coordinators.values() {
            if slot.load_until.is_some() {
                continue;
            }
            for g in slot.coordinator.list(&states) {
                let mut listed = list_groups_response::ListedGroup::default()
                    .with_group_id(GroupId(str_bytes(g.group_id)))
                    .with_protocol_type(str_bytes(g.protocol_type));
                if version >= 4 {
                    listed.group_state = str_bytes(g.state);
                }
                groups.push(listed);
            }
        }
        let loading = self.coordinators.values().any(|s| s.load_until.is_some());
        let code = if loading {
            ErrorCode::CoordinatorLoadInProgress
        } else {
            ErrorCode::None
        };
        ListGroupsResponse::default()
            .with_error_code(code.code())
            .with_groups(groups)
    }

    pub(super) fn delete_groups(
        &mut self,
        request: DeleteGroupsRequest,
        version: i16,
        reply: Option<oneshot::Sender<ResponseKind>>,
    ) {
        // One request per coordinator partition; the answers are gathered under `parent`.
        let mut refused = Vec::new();
        let mut by_partition: BTreeMap<i32, Vec<String>> = BTreeMap::new();
        for g in &request.groups_names {
            let group_id = string(&g.0);
            match self.coordinator_for(&group_id) {
                Err(code) => refused.push((group_id, code)),
                Ok(p) => by_partition.entry(p).or_default().push(group_id),
            }
        }
        if by_partition.is_empty() {
            send(
                reply,
                ResponseKind::DeleteGroups(delete_groups_response(refused)),
            );
            return;
        }
        let parent = self.wait_group(reply, version);
        self.group_gathers
            .insert(parent, (refused, by_partition.len()));
        for (partition, ids) in by_partition {
            let sub = self.next_group_request;
            self.next_group_request += 1;
            self.group_parents.insert(sub, parent);
            self.coordinator_mut(partition).delete_groups(sub, &ids);
            self.drain_coordinator(partition);
        }
    }

    // -------------------------------------------------------------------------------------------
    // Driving the coordinators

    /// Starts, loads, advances or drops the coordinator of every `__consumer_offsets`
    /// partition hosted here, and runs their timers.
    pub(super) fn drive_coordinators(&mut self) {
        // Runs after every step: a range of the ordered map, not a scan of every partition.
        let first = TopicPartition {
            topic: OFFSETS_TOPIC.to_string(),
            partition: 0,
        };
        let hosted: BTreeSet<i32> = self
            .partitions
            .range(first..)
            .take_while(|(tp, _)| tp.topic == OFFSETS_TOPIC)
            .map(|(tp, _)| tp.partition)
            .chain(self.coordinators.keys().copied())
            .collect();
        let now = now_ms();
        for partition in hosted {
            let tp = TopicPartition {
                topic: OFFSETS_TOPIC.to_string(),
                partition,
            };
            let leading = self.partitions.get(&tp).and_then(|p| {
                (p.replica.is_leader() && !p.replica.storage_failed()).then(|| {
                    (
                        p.replica.term(),
                        p.replica.high_watermark(),
                        p.replica.log().log_end_offset(),
                    )
                })
            });
            let stale = match (self.coordinators.get(&partition), leading) {
                (Some(slot), Some((term, _, _))) => slot.term != term,
                (Some(_), None) => true,
                (None, _) => false,
            };
            if stale {
                let slot = self.coordinators.remove(&partition).expect("present");
                tracing::info!(%tp, "no longer the group coordinator of this partition");
                for (id, reply) in slot.coordinator.shutdown() {
                    self.answer_group(id, reply);
                }
            }
            let Some((term, high_watermark, log_end)) = leading else {
                continue;
            };
            if !self.coordinators.contains_key(&partition) {
                let rng = Rng::new(splitmix(&mut self.rng));
                let coordinator = GroupCoordinator::new(self.config.groups.clone(), rng, now);
                self.coordinators.insert(
                    partition,
                    CoordinatorSlot {
                        term,
                        load_until: Some(log_end),
                        coordinator,
                    },
                );
            }
            let slot = self.coordinators.get_mut(&partition).expect("inserted");
            if let Some(until) = slot.load_until {
                if high_watermark < until {
                    continue;
                }
                let loaded = self.load_coordinator(&tp, now);
                let slot = self.coordinators.get_mut(&partition).expect("inserted");
                match loaded {
                    Ok(records) => {
                        slot.load_until = None;
                        tracing::info!(%tp, term, records, "group coordinator loaded");
                    }
                    Err(e) => {
                        tracing::error!(%tp, "loading the group coordinator failed: {e}");
                        continue;
                    }
                }
            }
            let slot = self.coordinators.get_mut(&partition).expect("inserted");
            slot.coordinator.on_high_watermark(now, high_watermark);
            if slot.coordinator.next_deadline_ms() <= now {
                slot.coordinator.tick(now);
            }
            self.drain_coordinator(partition);
        }
    }

    /// The earliest coordinator timer, in wall-clock ms.
    pub(super) fn next_coordinator_deadline_ms(&self) -> Option<u64> {
        self.coordinators
            .values()
            .filter(|s| s.load_until.is_none())
            .map(|s| s.coordinator.next_deadline_ms())
            .min()
    }

    /// Replays the committed records of the partition into its fresh coordinator.
    fn load_coordinator(&mut self, tp: &TopicPartition, now: u64) -> Result<usize, String> {
        let part = self.partitions.get(tp).ok_or("partition gone")?;
        let log = part.replica.log();
        let mut offset = log.log_start_offset();
        let end = log.high_watermark();
        let mut decoded = Vec::new();
        while offset < end {
            let mut cursor = log.read(offset, 1 << 20).map_err(|e| format!("{e:?}"))?;
            part.store
                .borrow_mut()
                .read(&mut cursor)
                .map_err(|e| format!("{e:?}"))?;
            let batches = cursor.into_batches();
            if batches.is_empty() {
                return Err(format!(
                    "no batch at {offset}, below the high watermark {end}"
                ));
            }
            for b in batches {
                offset = b.last_offset + 1;
                if b.control_type.is_some() {
                    continue;
                }
                let records = Records::new(&b.bytes)
                    .map_err(|e| format!("batch at {}: {e:?}", b.base_offset))?;
                for r in records {
                    let r = r.map_err(|e| format!("batch at {}: {e:?}", b.base_offset))?;
                    let Some(key) = r.key else { continue };
                    match OffsetsRecord::decode(key, r.value) {
                        Ok(record) => decoded.push(record),
                        // Kafka skips what it cannot read too; a damaged record is reported.
                        Err(e) => {
                            tracing::warn!(%tp, "skipping a record at batch {}: {e}", b.base_offset)
                        }
                    }
                }
            }
        }
        let count = decoded.len();
        let slot = self
            .coordinators
            .get_mut(&tp.partition)
            .ok_or("coordinator gone")?;
        for record in decoded {
            slot.coordinator.replay(record, now);
        }
        slot.coordinator.check_invariants();
        Ok(count)
    }

    /// Executes a coordinator's outputs: appends its records, sends its replies.
    fn drain_coordinator(&mut self, partition: i32) {
        loop {
            let Some(slot) = self.coordinators.get_mut(&partition) else {
                return;
            };
            let Some(output) = slot.coordinator.poll_output() else {
                if cfg!(debug_assertions) {
                    slot.coordinator.check_invariants();
                }
                return;
            };
            match output {
                Output::Reply { request, reply } => self.answer_group(request, reply),
                Output::Append { write, records } => {
                    let result = self.append_group_records(partition, &records);
                    if let Some(slot) = self.coordinators.get_mut(&partition) {
                        slot.coordinator.appended(write, result);
                    }
                }
            }
        }
    }

    fn append_group_records(
        &mut self,
        partition: i32,
        records: &[OffsetsRecord],
    ) -> Result<u64, ErrorCode> {
        let now = now_ms();
        let mut builder = BatchBuilder::new(now as i64);
        for r in records {
            let (key, value) = r.encode();
            builder.push(&NewRecord {
                timestamp: now as i64,
                key: Some(key),
                value,
                headers: Vec::new(),
            });
        }
        let count = builder.len() as u64;
        let batch = Bytes::from(builder.build());
        match self.append_internal(OFFSETS_TOPIC, partition, batch, now) {
            Ok(base_offset) => Ok(base_offset + count - 1),
            // Kafka's mapping of append errors for the group coordinator.
            Err(code) => Err(match code {
                ErrorCode::NotLeaderOrFollower | ErrorCode::UnknownTopicOrPartition => {
                    ErrorCode::NotCoordinator
                }
                ErrorCode::MessageTooLarge | ErrorCode::RecordListTooLarge => {
                    ErrorCode::InvalidCommitOffsetSize
                }
                ErrorCode::NotEnoughReplicas | ErrorCode::RequestTimedOut => {
                    ErrorCode::CoordinatorNotAvailable
                }
                _ => ErrorCode::UnknownServerError,
            }),
        }
    }

    fn answer_group(&mut self, request: RequestId, reply: Reply) {
        if let Some(parent) = self.group_parents.remove(&request) {
            // One coordinator's part of a DeleteGroups.
            let Reply::DeleteGroups(results) = reply else {
                unreachable!("only DeleteGroups is split");
            };
            let Some((gathered, outstanding)) = self.group_gathers.get_mut(&parent) else {
                return;
            };
            gathered.extend(results);
            *outstanding -= 1;
            if *outstanding == 0 {
                let (all, _) = self.group_gathers.remove(&parent).expect("present");
                if let Some(waiter) = self.group_waiters.remove(&parent) {
                    let _ = waiter
                        .reply
                        .send(ResponseKind::DeleteGroups(delete_groups_response(all)));
                }
            }
            return;
        }
        let Some(waiter) = self.group_waiters.remove(&request) else {
            return; // acks-less or the connection is gone
        };
        let version = waiter.version;
        let response = match reply {
            Reply::Join(j) => {
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
            Reply::Sync(s) => {
                let mut response = SyncGroupResponse::default()
                    .with_error_code(s.error.code())
                    .with_assignment(Bytes::from(s.assignment));
                if version >= 5 {
                    response.protocol_type = s.protocol_type.map(str_bytes);
                    response.protocol_name = s.protocol_name.map(str_bytes);
                }
                ResponseKind::SyncGroup(response)
            }
            Reply::Commit(results) => ResponseKind::OffsetCommit(commit_response(results)),
            Reply::DeleteOffsets(code, results) => {
                let topics = by_topic(results.into_iter().map(|(topic, partition, code)| {
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
                .collect();
                ResponseKind::OffsetDelete(
                    OffsetDeleteResponse::default()
                        .with_error_code(code.code())
                        .with_topics(topics),
                )
            }
            Reply::DeleteGroups(results) => {
                ResponseKind::DeleteGroups(delete_groups_response(results))
            }
        };
        let _ = waiter.reply.send(response);
    }
}

fn send(reply: Option<oneshot::Sender<ResponseKind>>, response: ResponseKind) {
    if let Some(reply) = reply {
        let _ = reply.send(response);
    }
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

fn commit_response(results: Vec<(String, i32, ErrorCode)>) -> OffsetCommitResponse {
    let topics = by_topic(results.into_iter().map(|(topic, partition, code)| {
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
    .collect();
    OffsetCommitResponse::default().with_topics(topics)
}

fn delete_groups_response(results: Vec<(String, ErrorCode)>) -> DeleteGroupsResponse {
    DeleteGroupsResponse::default().with_results(
        results
            .into_iter()
            .map(|(id, code)| {
                DeletableGroupResult::default()
                    .with_group_id(GroupId(str_bytes(id)))
                    .with_error_code(code.code())
            })
            .collect(),
    )
}
