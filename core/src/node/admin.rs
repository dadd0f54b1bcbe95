//! Metadata and administration: Metadata (with auto topic creation), CreateTopics,
//! DeleteTopics, CreatePartitions, DescribeConfigs and IncrementalAlterConfigs.
//!
//! Admin changes are decided by the active controller (the metadata quorum's leader) and
//! answered once their records are committed; any other node answers NOT_CONTROLLER and the
//! client asks the `controller_id` from Metadata.

use std::collections::{BTreeMap, BTreeSet};

use super::api::{
    AclReply, AclRequest, AlterConfigsRequest, AlterResource, AlteredResource, BrokerInfo,
    ConfigEntry, ConfigResource, CreatePartitionsRequest, CreateTopicsRequest, CreatedPartitions,
    CreatedTopic, DeleteTopicsRequest, DeletedTopic, DescribedResource, MetadataReply,
    MetadataRequest, PartitionMetadata, Reply, RequestId, TopicKey, TopicMetadata, CONFIG_DELETE,
    CONFIG_SET, RESOURCE_BROKER, RESOURCE_TOPIC, SOURCE_DEFAULT, SOURCE_TOPIC,
};
use super::controller::TicketOwner;
use super::disk::LogReader;
use super::{ControllerReply, ControllerRequest, Node, TopicPartition, View};
use crate::metadata::topic_config::{describe_topic_config, validate_topic_name};
use crate::metadata::{
    controller, CreateTopicRequest, MetadataImage, Outcome, Ticket, TopicId, TopicRef,
};
use crate::time::Instant;
use crate::ErrorCode;

/// Admin requests waiting for their records to commit, at most.
const ADMIN_WAITERS_MAX: usize = 1_024;

/// A CreateTopics, DeleteTopics, CreatePartitions or IncrementalAlterConfigs reply waiting for
/// its records.
struct AdminWaiter {
    request: RequestId,
    reply: Reply,
    /// Indexes of the entries still waiting.
    outstanding: BTreeSet<usize>,
    /// Created or grown topics whose partitions on this node must be serving before the answer
    /// (as the broker answered before its partitions opened off the loop: a client may produce
    /// at once).
    opening: Vec<TopicId>,
    /// Until when the answer also waits for every partition of `opening` to have a known
    /// leader ([`LEADER_WAIT_MS`] at most): past it, it answers without (a partition whose
    /// replicas cannot elect one must not hold the answer until the request's timeout).
    leaders_by: Instant,
    deadline: Instant,
}

/// How long a CreateTopics or CreatePartitions answer waits for the new partitions' leaders
/// after its records commit: a few election timeouts.
const LEADER_WAIT_MS: u64 = 5_000;

#[derive(Default)]
pub(super) struct AdminWaiters {
    waiters: BTreeMap<u64, AdminWaiter>,
    next: u64,
}

impl AdminWaiters {
    pub fn deadlines(&self) -> impl Iterator<Item = Instant> + '_ {
        self.waiters.values().map(|w| w.deadline)
    }
}

/// How long an admin request waits for its records to commit. Kafka's ZooKeeper-era brokers
/// read a timeout of 0 as "answer once the change is written, without waiting for it to
/// spread", which here is the commit itself; so 0 (or less) waits like the default.
fn admin_timeout_ms(timeout_ms: i32) -> u64 {
    if timeout_ms <= 0 {
        30_000
    } else {
        timeout_ms.min(600_000) as u64
    }
}

fn not_controller() -> (ErrorCode, String) {
    (
        ErrorCode::NotController,
        "this node is not the active controller".to_string(),
    )
}

impl Node {
    pub(super) fn metadata(&mut self, request: MetadataRequest) -> MetadataReply {
        let Some(quorum) = self.meta.quorum() else {
            return MetadataReply {
                controller_id: -1,
                ..MetadataReply::default()
            };
        };
        let image = quorum.image();
        let brokers: Vec<BrokerInfo> = image
            .live_brokers()
            .map(|b| BrokerInfo {
                node_id: b.node_id,
                host: b.host.clone(),
                port: i32::from(b.port),
                rack: b.rack.clone(),
            })
            .collect();
        let live: BTreeSet<i32> = image.live_brokers().map(|b| b.node_id).collect();
        let mut reply = MetadataReply {
            brokers,
            cluster_id: image.cluster_id(),
            controller_id: quorum.leader().map_or(-1, |l| l as i32),
            topics: Vec::new(),
        };
        let auto_create = self.config.auto_create_topics && request.allow_auto_create;
        let wanted: Vec<TopicKey> = match request.topics {
            None => self.topics.keys().cloned().map(TopicKey::Name).collect(),
            Some(list) => list,
        };
        for key in wanted {
            let name = match &key {
                TopicKey::Name(name) => Some(name.clone()),
                TopicKey::Id(id) => self.topic_ids.get(id).cloned(),
            };
            let mut topic = TopicMetadata {
                error: ErrorCode::None,
                name: name.clone(),
                topic_id: [0; 16],
                is_internal: false,
                partitions: Vec::new(),
            };
            let Some(name) = name else {
                topic.error = ErrorCode::UnknownTopicId;
                if let TopicKey::Id(id) = key {
                    topic.topic_id = id;
                }
                reply.topics.push(topic);
                continue;
            };
            let Some(state) = self.topics.get(&name) else {
                topic.error = if let Err(why) = validate_topic_name(&name) {
                    tracing::debug!("metadata for invalid topic name: {why}");
                    ErrorCode::InvalidTopicException
                } else if !auto_create {
                    ErrorCode::UnknownTopicOrPartition
                } else {
                    // As Kafka does: ask the controller, answer LEADER_NOT_AVAILABLE, and let
                    // the client ask again.
                    self.auto_create_topic(&name);
                    ErrorCode::LeaderNotAvailable
                };
                reply.topics.push(topic);
                continue;
            };
            topic.topic_id = state.id;
            // As before the facade; Kafka marks __consumer_offsets internal (a known difference).
            topic.is_internal = false;
            topic.partitions = state
                .assignments
                .iter()
                .enumerate()
                .map(|(p, replicas)| {
                    let tp = TopicPartition::new(name.clone(), p as i32);
                    let leader = self.leader_of(&tp, state.id);
                    let mut partition = PartitionMetadata {
                        error: ErrorCode::None,
                        partition: p as i32,
                        leader: -1,
                        leader_epoch: -1,
                        replicas: replicas.clone(),
                        isr: replicas
                            .iter()
                            .copied()
                            .filter(|r| live.contains(r))
                            .collect(),
                        offline: replicas
                            .iter()
                            .copied()
                            .filter(|r| !live.contains(r))
                            .collect(),
                    };
                    match leader {
                        Some((term, leader)) if live.contains(&(leader as i32)) => {
                            partition.leader = leader as i32;
                            partition.leader_epoch = i32::try_from(term).unwrap_or(i32::MAX);
                        }
                        _ => partition.error = ErrorCode::LeaderNotAvailable,
                    }
                    partition
                })
                .collect();
            reply.topics.push(topic);
        }
        reply
    }

    /// Asks the controller to create `name` with the defaults, once per topic at a time.
    pub(super) fn auto_create_topic(&mut self, name: &str) {
        let asked = self.controller_call_pending(
            |r| matches!(r, ControllerRequest::CreateTopic { name: n, .. } if n == name),
        );
        if !asked {
            tracing::info!(topic = name, "auto-creating topic");
            self.pending_controller_calls
                .push(ControllerRequest::CreateTopic {
                    name: name.to_string(),
                    num_partitions: -1,
                    replication_factor: -1,
                    configs: Vec::new(),
                });
        }
    }

    /// Whether a controller request matching `which` is waiting or about to be sent.
    pub(super) fn controller_call_pending(
        &self,
        which: impl Fn(&ControllerRequest) -> bool,
    ) -> bool {
        self.cluster.calling(&which) || self.pending_controller_calls.iter().any(&which)
    }

    pub(super) fn create_topics(
        &mut self,
        request: RequestId,
        create: CreateTopicsRequest,
        disk: &impl LogReader,
    ) {
        let is_controller = self.meta.quorum().is_some_and(|q| q.is_active());
        let mut results = Vec::with_capacity(create.topics.len());
        let mut proposals = Vec::new();
        for (index, t) in create.topics.into_iter().enumerate() {
            let mut result = CreatedTopic {
                name: t.name.clone(),
                error: ErrorCode::None,
                message: None,
                topic_id: [0; 16],
                num_partitions: -1,
                replication_factor: -1,
                configs: None,
            };
            let explicit = t.assignment.is_some();
            let request = CreateTopicRequest {
                name: t.name.clone(),
                num_partitions: if explicit { -1 } else { t.num_partitions },
                replication_factor: if explicit { -1 } else { t.replication_factor },
                assignment: t.assignment,
                configs: t.configs,
            };
            if !is_controller {
                let (code, message) = not_controller();
                result.error = code;
                result.message = Some(message);
            } else if create.validate_only {
                let quorum = self.meta.quorum().expect("the controller has a quorum");
                match controller::create_topic(
                    quorum.image(),
                    &request,
                    &self.config.topic_defaults,
                    &mut self.rng,
                ) {
                    Ok(_) => {
                        result.num_partitions = request.num_partitions;
                        result.replication_factor = request.replication_factor;
                    }
                    Err(e) => {
                        result.error = e.code();
                        result.message = Some(e.message().to_string());
                    }
                }
            } else {
                proposals.push((index, request));
            }
            results.push(result);
        }
        let mut reply = Reply::CreateTopics(results);
        let tickets =
            self.propose_admin(&mut reply, proposals, disk, |quorum, request, now, view| {
                quorum.create_topic(request, now, view)
            });
        self.wait_for_admin(request, reply, tickets, admin_timeout_ms(create.timeout_ms));
    }

    pub(super) fn delete_topics(
        &mut self,
        request: RequestId,
        delete: DeleteTopicsRequest,
        disk: &impl LogReader,
    ) {
        let is_controller = self.meta.quorum().is_some_and(|q| q.is_active());
        let mut results = Vec::with_capacity(delete.topics.len());
        let mut proposals = Vec::new();
        for (index, key) in delete.topics.into_iter().enumerate() {
            let (name, id) = match &key {
                TopicKey::Name(name) => (Some(name.clone()), [0; 16]),
                TopicKey::Id(id) => (None, *id),
            };
            let mut result = DeletedTopic {
                name: name.clone(),
                topic_id: id,
                error: ErrorCode::None,
                message: None,
            };
            let resolved = name.clone().or_else(|| self.topic_ids.get(&id).cloned());
            let outcome: Result<TopicId, (ErrorCode, String)> = match resolved {
                _ if !is_controller => Err(not_controller()),
                Some(n) if self.topics.contains_key(&n) => {
                    let topic_id = self.topics[&n].id;
                    result.topic_id = topic_id;
                    result.name = Some(n);
                    Ok(topic_id)
                }
                _ if name.is_none() => Err((
                    ErrorCode::UnknownTopicId,
                    format!("unknown topic id {}", hex(&id)),
                )),
                _ => Err((
                    ErrorCode::UnknownTopicOrPartition,
                    "unknown topic".to_string(),
                )),
            };
            match outcome {
                Ok(topic_id) => proposals.push((index, topic_id)),
                Err((code, message)) => {
                    result.error = code;
                    result.message = Some(message);
                }
            }
            results.push(result);
        }
        let mut reply = Reply::DeleteTopics(results);
        let tickets = self.propose_admin(
            &mut reply,
            proposals,
            disk,
            |quorum, topic_id, now, view| quorum.delete_topic(TopicRef::Id(*topic_id), now, view),
        );
        self.wait_for_admin(request, reply, tickets, admin_timeout_ms(delete.timeout_ms));
    }

    /// Grows topics (Kafka's CreatePartitions). As Kafka's `ControllerApis`: a name the request
    /// repeats is answered once with INVALID_REQUEST and not grown; every other topic is decided
    /// by the controller on its own. The answer waits until the new partitions hosted here
    /// serve, as CreateTopics does.
    pub(super) fn create_partitions(
        &mut self,
        request: RequestId,
        create: CreatePartitionsRequest,
        disk: &impl LogReader,
    ) {
        let is_controller = self.meta.quorum().is_some_and(|q| q.is_active());
        let mut seen = BTreeSet::new();
        let repeated: BTreeSet<String> = create
            .topics
            .iter()
            .filter(|t| !seen.insert(t.name.as_str()))
            .map(|t| t.name.clone())
            .collect();
        let mut answered = BTreeSet::new();
        let mut results = Vec::with_capacity(create.topics.len());
        let mut proposals = Vec::new();
        for t in create.topics {
            if !answered.insert(t.name.clone()) {
                continue;
            }
            let index = results.len();
            let mut result = CreatedPartitions {
                name: t.name.clone(),
                error: ErrorCode::None,
                message: None,
            };
            let refused = if repeated.contains(&t.name) {
                Some((
                    ErrorCode::InvalidRequest,
                    "Duplicate topic name.".to_string(),
                ))
            } else if !is_controller {
                Some(not_controller())
            } else if create.validate_only {
                let quorum = self.meta.quorum().expect("the controller has a quorum");
                controller::create_partitions(
                    quorum.image(),
                    &t.name,
                    t.count,
                    t.assignment.as_deref(),
                    &mut self.rng,
                )
                .err()
                .map(|e| (e.code(), e.message().to_string()))
            } else {
                proposals.push((index, t));
                None
            };
            if let Some((code, message)) = refused {
                tracing::debug!(topic = result.name, "create partitions refused: {message}");
                result.error = code;
                result.message = Some(message);
            }
            results.push(result);
        }
        assert!(results.len() == answered.len(), "one answer per name");
        let mut reply = Reply::CreatePartitions(results);
        let tickets = self.propose_admin(&mut reply, proposals, disk, |quorum, t, now, view| {
            quorum.create_partitions(&t.name, t.count, t.assignment.as_deref(), now, view)
        });
        self.wait_for_admin(request, reply, tickets, admin_timeout_ms(create.timeout_ms));
    }

    /// Topic configs only: broker settings come from each node's config file. SET and DELETE
    /// are served; APPEND and SUBTRACT (list configs) are refused.
    pub(super) fn alter_configs(
        &mut self,
        request: RequestId,
        alter: AlterConfigsRequest,
        disk: &impl LogReader,
    ) {
        let is_controller = self.meta.quorum().is_some_and(|q| q.is_active());
        let mut results = Vec::with_capacity(alter.resources.len());
        let mut proposals = Vec::new();
        let mut forwards = Vec::new();
        let mut refused = None;
        for (index, resource) in alter.resources.into_iter().enumerate() {
            let mut result = AlteredResource {
                resource_type: resource.resource_type,
                name: resource.name.clone(),
                error: ErrorCode::None,
                message: None,
            };
            let checked = check_alter_syntax(&resource);
            match checked {
                Ok((name, set, delete)) if !is_controller => {
                    forwards.push((
                        index,
                        ControllerRequest::AlterConfigs {
                            topic: name,
                            set,
                            delete,
                            replace: alter.replace,
                            validate_only: alter.validate_only,
                        },
                    ));
                }
                Ok(change) => match self.check_alter(change, alter.validate_only, alter.replace) {
                    Ok(Some(change)) => proposals.push((index, change)),
                    Ok(None) => {}
                    Err(refusal) => refused = Some(refusal),
                },
                Err(refusal) => refused = Some(refusal),
            }
            if let Some((code, message)) = refused.take() {
                tracing::debug!(resource = resource.name, "alter configs refused: {message}");
                result.error = code;
                result.message = Some(message);
            }
            results.push(result);
        }
        let mut reply = Reply::AlterConfigs(results);
        if !forwards.is_empty() {
            return self.forward_admin(request, reply, forwards, disk);
        }
        let tickets = self.propose_admin(
            &mut reply,
            proposals,
            disk,
            |quorum, (name, set, delete), now, view| {
                quorum.alter_configs(name, set, delete, now, view)
            },
        );
        self.wait_for_admin(request, reply, tickets, admin_timeout_ms(0));
    }

    /// Sends entries of a client's admin request to the active controller (this node is not
    /// it) and answers once each is answered, refused, or past the admin timeout.
    fn forward_admin(
        &mut self,
        request: RequestId,
        reply: Reply,
        forwards: Vec<(usize, ControllerRequest)>,
        disk: &impl LogReader,
    ) {
        if self.admin.waiters.len() >= ADMIN_WAITERS_MAX {
            let mut reply = reply;
            for (index, _) in &forwards {
                set_error(&mut reply, *index, ErrorCode::RequestTimedOut, None);
            }
            return self.reply(request, reply);
        }
        let id = self.admin.next;
        self.admin.next += 1;
        let waiter = AdminWaiter {
            request,
            reply,
            outstanding: forwards.iter().map(|(i, _)| *i).collect(),
            opening: Vec::new(),
            leaders_by: self.deadline_after(LEADER_WAIT_MS.min(admin_timeout_ms(0))),
            deadline: self.deadline_after(admin_timeout_ms(0)),
        };
        self.admin.waiters.insert(id, waiter);
        for (index, call) in forwards {
            self.call_controller_for(call, Some((id, index)), disk);
        }
    }

    /// The controller's answer to a forwarded entry of an admin request.
    pub(super) fn on_forwarded_admin(
        &mut self,
        waiter: u64,
        index: usize,
        answer: ControllerReply,
    ) {
        let Some(w) = self.admin.waiters.get_mut(&waiter) else {
            return;
        };
        if !w.outstanding.remove(&index) {
            return;
        }
        match answer {
            ControllerReply::Done => {}
            ControllerReply::Refused { code, message } => {
                set_error(&mut w.reply, index, error_code(code), Some(message))
            }
            ControllerReply::Error { code } => {
                let code = error_code(code);
                set_error(&mut w.reply, index, code, Some(format!("{code:?}")))
            }
            ControllerReply::ProducerIds { .. } => {
                tracing::error!("unexpected answer to a forwarded admin request");
                set_error(&mut w.reply, index, ErrorCode::UnknownServerError, None)
            }
        }
        self.answer_admin_waiter(waiter);
    }

    /// Decides one resource of an AlterConfigs or IncrementalAlterConfigs on the controller:
    /// the change to propose (topic name, configs to set, configs to delete), or `None` when it
    /// was only validated. With `replace` (AlterConfigs) every override of the topic that the
    /// request does not set is deleted, as of the image the controller decides on (committed
    /// plus proposed records), in the same step as the proposal, so no other change comes
    /// between.
    #[allow(clippy::type_complexity)]
    fn check_alter(
        &self,
        (name, set, delete): (String, Vec<(String, String)>, Vec<String>),
        validate_only: bool,
        replace: bool,
    ) -> Result<Option<(String, Vec<(String, String)>, Vec<String>)>, (ErrorCode, String)> {
        let Some(quorum) = self.meta.quorum() else {
            return Err(not_controller());
        };
        // Planted: the legacy API merges its configs into the overrides.
        let merges = self
            .config
            .planted
            .is(crate::planted::Bug::LegacyAlterConfigsMerges);
        let delete = if replace && !merges {
            replaced_overrides(quorum.deciding_image(), &name, &set)
        } else {
            delete
        };
        if validate_only {
            return controller::alter_configs(
                quorum.deciding_image(),
                &name,
                &set,
                &delete,
                &self.config.topic_defaults.log,
            )
            .map(|_| None)
            .map_err(|e| (e.code(), e.message().to_string()));
        }
        Ok(Some((name, set, delete)))
    }

    /// Proposes each entry through the quorum: a ticket per entry accepted, an error in its reply
    /// entry otherwise.
    fn propose_admin<T, R: LogReader>(
        &mut self,
        reply: &mut Reply,
        proposals: Vec<(usize, T)>,
        disk: &R,
        propose: impl Fn(
            &mut crate::metadata::MetadataQuorum,
            &T,
            crate::time::Now,
            &View<'_, R>,
        ) -> Result<Ticket, crate::metadata::ControllerError>,
    ) -> Vec<(Ticket, usize)> {
        if proposals.is_empty() {
            return Vec::new();
        }
        let now = self.now;
        let log = self.meta.log_id();
        let view = View { disk, log };
        let mut tickets = Vec::new();
        for (index, proposal) in proposals {
            let outcome = match self.meta.hosted_mut() {
                Some(h) => {
                    propose(&mut h.machine, &proposal, now, &view).map_err(|e| (e.code, e.message))
                }
                None => Err(not_controller()),
            };
            match outcome {
                Ok(ticket) => tickets.push((ticket, index)),
                Err((code, message)) => set_error(reply, index, code, Some(message)),
            }
        }
        self.after_metadata_input(disk);
        tickets
    }

    /// Answers at once if nothing was proposed; otherwise once every ticket is answered.
    fn wait_for_admin(
        &mut self,
        request: RequestId,
        reply: Reply,
        tickets: Vec<(Ticket, usize)>,
        timeout_ms: u64,
    ) {
        if tickets.is_empty() {
            return self.reply(request, reply);
        }
        if self.admin.waiters.len() >= ADMIN_WAITERS_MAX {
            // The proposals stand; the client hears a retriable timeout and asks again.
            let mut reply = reply;
            for (_, index) in &tickets {
                set_error(&mut reply, *index, ErrorCode::RequestTimedOut, None);
            }
            return self.reply(request, reply);
        }
        let id = self.admin.next;
        self.admin.next += 1;
        for (ticket, index) in &tickets {
            self.cluster.tickets.insert(
                *ticket,
                TicketOwner::Admin {
                    waiter: id,
                    index: *index,
                },
            );
        }
        let waiter = AdminWaiter {
            request,
            reply,
            outstanding: tickets.iter().map(|(_, i)| *i).collect(),
            opening: Vec::new(),
            leaders_by: self.deadline_after(LEADER_WAIT_MS.min(timeout_ms)),
            deadline: self.deadline_after(timeout_ms),
        };
        self.admin.waiters.insert(id, waiter);
    }

    /// A ticket of an admin request was answered by the quorum.
    pub(super) fn on_admin_result(
        &mut self,
        waiter: u64,
        index: usize,
        result: Result<Outcome, ErrorCode>,
    ) {
        let Some(w) = self.admin.waiters.get_mut(&waiter) else {
            return;
        };
        w.outstanding.remove(&index);
        let image = self.meta.quorum().map(|q| q.image());
        match (&mut w.reply, result) {
            (Reply::CreateTopics(results), Ok(Outcome::TopicCreated { topic_id, .. })) => {
                let r = &mut results[index];
                r.topic_id = topic_id;
                w.opening.push(topic_id);
                if let Some(topic) = image.and_then(|i| i.topic(&topic_id)) {
                    r.num_partitions = topic.partitions.len() as i32;
                    r.replication_factor = topic.replication_factor() as i16;
                    r.configs = Some(config_entries(
                        describe_topic_config(&self.config.topic_defaults.log, &topic.configs),
                        false,
                    ));
                }
            }
            (Reply::CreatePartitions(_), Ok(Outcome::PartitionsCreated { topic_id, .. })) => {
                w.opening.push(topic_id);
            }
            (reply, Ok(Outcome::TopicCreated { .. } | Outcome::PartitionsCreated { .. }))
            | (reply @ (Reply::CreateTopics(_) | Reply::CreatePartitions(_)), Ok(_)) => {
                tracing::error!("unexpected answer to an admin request");
                set_error(reply, index, ErrorCode::UnknownServerError, None);
            }
            (_, Ok(_)) => {}
            (reply, Err(code)) => set_error(reply, index, code, Some(format!("{code:?}"))),
        }
        self.answer_admin_waiter(waiter);
    }

    /// Answers an admin waiter once nothing is outstanding and its new topics serve here.
    fn answer_admin_waiter(&mut self, waiter: u64) {
        let Some(w) = self.admin.waiters.get(&waiter) else {
            return;
        };
        let need_leaders = self.now.instant < w.leaders_by;
        if !w.outstanding.is_empty()
            || !w
                .opening
                .iter()
                .all(|id| self.serving_here(id, need_leaders))
        {
            return;
        }
        let w = self.admin.waiters.remove(&waiter).expect("present");
        self.reply(w.request, w.reply);
    }

    /// Whether the partitions of topic `id` hosted here are open, and every partition of it has
    /// a leader this node knows (a partition here that failed to open does not hold the answer
    /// back). Kafka's CreateTopics and CreatePartitions answer with the leaders already in the
    /// metadata (the controller names them in the same records); here Raft elects them, so the
    /// answer waits for the elections, up to the request's timeout: a client that asks for
    /// metadata next finds every leader (librdkafka's admin client fails DeleteRecords or
    /// ListOffsets for a partition its metadata shows without one).
    fn serving_here(&self, id: &TopicId, need_leaders: bool) -> bool {
        let Some(name) = self.topic_ids.get(id) else {
            return true;
        };
        let me = self.config.node_id;
        let topic = &self.topics[name];
        topic.assignments.iter().enumerate().all(|(p, replicas)| {
            let tp = TopicPartition::new(name.clone(), p as i32);
            let led = !need_leaders || self.leader_of(&tp, *id).is_some();
            if !replicas.contains(&me) {
                return led;
            }
            match self.partitions.get(&tp) {
                None => true,
                Some(slot) if slot.is_offline() => true,
                Some(slot) => slot.replica().is_some() && led,
            }
        })
    }

    /// Admin requests past their timeout: REQUEST_TIMED_OUT for what is still open (the change
    /// may still happen, as in Kafka). Also times out InitProducerId waiters and sends the
    /// controller calls decided since the last input.
    pub(super) fn expire_admin_waiters(&mut self) {
        let opening: Vec<u64> = self
            .admin
            .waiters
            .iter()
            .filter(|(_, w)| w.outstanding.is_empty())
            .map(|(id, _)| *id)
            .collect();
        for id in opening {
            self.answer_admin_waiter(id);
        }
        let now = self.now.instant;
        let expired: Vec<u64> = self
            .admin
            .waiters
            .iter()
            .filter(|(_, w)| w.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            let Some(mut w) = self.admin.waiters.remove(&id) else {
                continue;
            };
            for index in std::mem::take(&mut w.outstanding) {
                set_error(&mut w.reply, index, ErrorCode::RequestTimedOut, None);
            }
            self.reply(w.request, w.reply);
        }
        self.answer_producer_id_waiters();
    }

    pub(super) fn describe_configs(
        &self,
        resources: Vec<ConfigResource>,
    ) -> Vec<DescribedResource> {
        resources
            .into_iter()
            .map(|resource| {
                let mut result = DescribedResource {
                    resource_type: resource.resource_type,
                    name: resource.name.clone(),
                    error: ErrorCode::None,
                    message: None,
                    configs: Vec::new(),
                };
                let name = &resource.name;
                let me = self.config.node_id.to_string();
                let entries: Result<Vec<ConfigEntry>, (ErrorCode, String)> = match resource
                    .resource_type
                {
                    RESOURCE_TOPIC => match self.topics.get(name) {
                        Some(topic) => Ok(config_entries(
                            describe_topic_config(&self.config.topic_defaults.log, &topic.configs),
                            false,
                        )),
                        None => Err((
                            ErrorCode::UnknownTopicOrPartition,
                            format!("unknown topic {name:?}"),
                        )),
                    },
                    RESOURCE_BROKER if name.is_empty() || *name == me => Ok(self
                        .config
                        .broker_configs
                        .iter()
                        .map(|(n, v)| ConfigEntry {
                            name: n.clone(),
                            value: v.clone(),
                            source: SOURCE_DEFAULT,
                            read_only: true,
                        })
                        .collect()),
                    RESOURCE_BROKER => Err((
                        ErrorCode::InvalidRequest,
                        format!("this is broker {me}, not {name:?}"),
                    )),
                    other => Err((
                        ErrorCode::InvalidRequest,
                        format!("resource type {other} is not supported"),
                    )),
                };
                match entries {
                    Ok(entries) => {
                        result.configs = entries
                            .into_iter()
                            .filter(|e| resource.keys.as_ref().is_none_or(|k| k.contains(&e.name)))
                            .collect()
                    }
                    Err((code, message)) => {
                        result.error = code;
                        result.message = Some(message);
                    }
                }
                result
            })
            .collect()
    }
}

/// Checks what any node can check of one resource of an AlterConfigs or
/// IncrementalAlterConfigs: topic configs only (broker settings come from each node's config
/// file), SET and DELETE only. The topic name, configs to set, and configs to delete.
#[allow(clippy::type_complexity)]
fn check_alter_syntax(
    resource: &AlterResource,
) -> Result<(String, Vec<(String, String)>, Vec<String>), (ErrorCode, String)> {
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
    for c in &resource.changes {
        match (c.operation, &c.value) {
            (CONFIG_SET, Some(value)) => set.push((c.name.clone(), value.clone())),
            (CONFIG_SET, None) => {
                return Err((
                    ErrorCode::InvalidConfig,
                    format!("config {:?}: SET needs a value", c.name),
                ))
            }
            (CONFIG_DELETE, _) => delete.push(c.name.clone()),
            (op, _) => {
                return Err((
                    ErrorCode::InvalidRequest,
                    format!(
                        "config {:?}: operation {op} is not supported (only SET and DELETE)",
                        c.name
                    ),
                ))
            }
        }
    }
    Ok((resource.name.clone(), set, delete))
}

/// The overrides of topic `name` that a legacy AlterConfigs setting `set` removes: every one it
/// does not set (none if the topic does not exist: the change is refused for that).
pub(super) fn replaced_overrides(
    image: &MetadataImage,
    name: &str,
    set: &[(String, String)],
) -> Vec<String> {
    image
        .topic_by_name(name)
        .map(|topic| {
            topic
                .configs
                .keys()
                .filter(|key| !set.iter().any(|(n, _)| n == *key))
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

/// A Kafka error code a peer sent, as core's (an unknown one is UNKNOWN_SERVER_ERROR).
fn error_code(code: i16) -> ErrorCode {
    ErrorCode::from_code(code).unwrap_or(ErrorCode::UnknownServerError)
}

/// Every ACL request, answered as Kafka answers it with no authorizer configured
/// (`authorizer.class.name` unset): SECURITY_DISABLED. Sluice has no authorizer, and no
/// authentication that would name a principal for an ACL to match (every client is
/// `User:ANONYMOUS`), so an ACL it stored could never be enforced; accepting one would only
/// suggest a protection that is not there.
pub(super) fn acls(request: AclRequest) -> AclReply {
    AclReply {
        request,
        error: ErrorCode::SecurityDisabled,
        message: "No Authorizer is configured on the broker".to_string(),
    }
}

/// Topic configs as entries: (name, value, whether the topic overrides it).
fn config_entries(configs: Vec<(&'static str, String, bool)>, read_only: bool) -> Vec<ConfigEntry> {
    configs
        .into_iter()
        .map(|(name, value, overridden)| ConfigEntry {
            name: name.to_string(),
            value,
            source: if overridden {
                SOURCE_TOPIC
            } else {
                SOURCE_DEFAULT
            },
            read_only,
        })
        .collect()
}

/// Sets the error of entry `index` of an admin reply.
fn set_error(reply: &mut Reply, index: usize, code: ErrorCode, message: Option<String>) {
    match reply {
        Reply::CreateTopics(r) => {
            let r = &mut r[index];
            r.error = code;
            r.message = message;
            r.num_partitions = -1;
            r.replication_factor = -1;
        }
        Reply::DeleteTopics(r) => {
            r[index].error = code;
            r[index].message = message;
        }
        Reply::CreatePartitions(r) => {
            r[index].error = code;
            r[index].message = message;
        }
        Reply::AlterConfigs(r) => {
            r[index].error = code;
            r[index].message = message;
        }
        other => unreachable!("not an admin reply: {other:?}"),
    }
}

/// Topic ids as Kafka prints UUIDs' bytes here: plain hex.
fn hex(id: &TopicId) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}
