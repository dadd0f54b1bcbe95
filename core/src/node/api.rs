//! What clients ask a node and what it answers: Kafka's requests in core's own terms.
//!
//! The node's codec turns each decoded Kafka request into a [`Request`] and each [`Reply`] back
//! into the response of the request's version. Version differences that change what a request
//! *means* are resolved by the codec into plain fields here (a v0 Metadata request's empty topic
//! list means all topics, OffsetCommit v0 has no generation, JoinGroup v4+ requires a known
//! member id); what a version can *carry* in its response (error messages, topic ids, configs)
//! is the codec's business too, so replies carry everything and the codec drops what the
//! version has no field for.

use bytes::Bytes;

use crate::group::{
    CommitRequest, GroupDescription, JoinRequest, JoinResponse, ListedGroup, OffsetValue,
    SyncRequest, SyncResponse,
};
use crate::metadata::TopicId;
use crate::ErrorCode;

/// Names one client request until its reply; chosen by the host, unique among the requests it
/// has in flight.
pub type RequestId = u64;

/// A topic as a request names it: by name, or (Produce v13+, Fetch v13+, Metadata, DeleteTopics
/// v6+) by id.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum TopicKey {
    Name(String),
    Id(TopicId),
}

/// Who sent a request (JoinGroup records it; DescribeGroups shows it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientInfo {
    /// The request header's client id.
    pub client_id: String,
    /// The connection's address as Kafka shows it (`/127.0.0.1`), or empty.
    pub host: String,
}

/// A client request.
#[derive(Clone, Debug, PartialEq)]
pub enum Request {
    Metadata(MetadataRequest),
    CreateTopics(CreateTopicsRequest),
    DeleteTopics(DeleteTopicsRequest),
    CreatePartitions(CreatePartitionsRequest),
    DescribeConfigs(Vec<ConfigResource>),
    AlterConfigs(AlterConfigsRequest),
    ListOffsets(ListOffsetsRequest),
    DeleteRecords(DeleteRecordsRequest),
    OffsetForLeaderEpoch(Vec<(String, Vec<EpochQuery>)>),
    InitProducerId(InitProducerIdRequest),
    Produce(ProduceRequest),
    Fetch(FetchRequest),
    FindCoordinator(FindCoordinatorRequest),
    JoinGroup(JoinRequest),
    SyncGroup(SyncRequest),
    Heartbeat(HeartbeatRequest),
    LeaveGroup(LeaveRequest),
    OffsetCommit(CommitRequest),
    /// Per group: the partitions asked for, or `None` for every committed one.
    OffsetFetch(Vec<(String, Option<Vec<(String, i32)>>)>),
    OffsetDelete(OffsetDeleteRequest),
    DescribeGroups(Vec<String>),
    /// The states to list (empty: all).
    ListGroups(Vec<String>),
    DeleteGroups(Vec<String>),
    /// DescribeAcls, CreateAcls or DeleteAcls.
    Acls(AclRequest),
}

/// The answer to a [`Request`], of the same kind.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    Metadata(MetadataReply),
    CreateTopics(Vec<CreatedTopic>),
    DeleteTopics(Vec<DeletedTopic>),
    /// Per topic, in the request's order (a name the request repeats answers once).
    CreatePartitions(Vec<CreatedPartitions>),
    DescribeConfigs(Vec<DescribedResource>),
    AlterConfigs(Vec<AlteredResource>),
    ListOffsets(Vec<(String, Vec<ListedOffset>)>),
    /// Per topic and partition, in the request's order.
    DeleteRecords(Vec<(String, Vec<DeletedRecords>)>),
    OffsetForLeaderEpoch(Vec<(String, Vec<EpochEnd>)>),
    InitProducerId(ProducerIdReply),
    Produce(Vec<(TopicKey, Vec<ProducedPartition>)>),
    Fetch(Vec<(TopicKey, Vec<FetchedPartition>)>),
    FindCoordinator(Vec<(String, Result<BrokerAddress, (ErrorCode, String)>)>),
    JoinGroup(JoinResponse),
    SyncGroup(SyncResponse),
    Heartbeat(ErrorCode),
    /// A group-level error, then each member asked about (member id, instance id, error), in
    /// order.
    LeaveGroup(ErrorCode, Vec<(String, Option<String>, ErrorCode)>),
    /// Per partition, in the request's order.
    OffsetCommit(Vec<(String, i32, ErrorCode)>),
    /// Per group asked about: its error and its offsets (`None`: nothing committed).
    OffsetFetch(Vec<OffsetFetchGroup>),
    /// A group-level error, then per partition.
    OffsetDelete(ErrorCode, Vec<(String, i32, ErrorCode)>),
    DescribeGroups(Vec<(String, Result<GroupDescription, ErrorCode>)>),
    ListGroups(ErrorCode, Vec<ListedGroup>),
    DeleteGroups(Vec<(String, ErrorCode)>),
    /// One error for DescribeAcls, one per creation (CreateAcls) or per filter (DeleteAcls).
    Acls(AclReply),
}

// ---- Metadata -------------------------------------------------------------------------------

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MetadataRequest {
    /// `None`: every topic.
    pub topics: Option<Vec<TopicKey>>,
    /// Whether an unknown topic may be created (the broker's `auto_create_topics` must allow it
    /// too).
    pub allow_auto_create: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerAddress {
    pub node_id: i32,
    pub host: String,
    pub port: i32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerInfo {
    pub node_id: i32,
    pub host: String,
    pub port: i32,
    pub rack: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MetadataReply {
    pub brokers: Vec<BrokerInfo>,
    pub cluster_id: Option<[u8; 16]>,
    /// -1 while none is known.
    pub controller_id: i32,
    pub topics: Vec<TopicMetadata>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicMetadata {
    pub error: ErrorCode,
    pub name: Option<String>,
    /// All zero when unknown.
    pub topic_id: TopicId,
    pub is_internal: bool,
    pub partitions: Vec<PartitionMetadata>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionMetadata {
    pub error: ErrorCode,
    pub partition: i32,
    /// -1 while no leader is known.
    pub leader: i32,
    pub leader_epoch: i32,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
    pub offline: Vec<i32>,
}

// ---- Topic administration ---------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewTopic {
    pub name: String,
    /// -1: the broker's default (also when `assignment` is given).
    pub num_partitions: i32,
    /// -1: the broker's default (also when `assignment` is given).
    pub replication_factor: i16,
    /// Explicit replicas per partition.
    pub assignment: Option<Vec<(i32, Vec<i32>)>>,
    pub configs: Vec<(String, String)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreateTopicsRequest {
    pub topics: Vec<NewTopic>,
    pub validate_only: bool,
    pub timeout_ms: i32,
}

/// A config as DescribeConfigs (and CreateTopics v5+) report it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigEntry {
    pub name: String,
    pub value: String,
    /// Kafka's config source: 1 topic override, 5 default.
    pub source: i8,
    pub read_only: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreatedTopic {
    pub name: String,
    pub error: ErrorCode,
    pub message: Option<String>,
    pub topic_id: TopicId,
    /// -1 when unknown (an error).
    pub num_partitions: i32,
    pub replication_factor: i16,
    /// The topic's configs once created.
    pub configs: Option<Vec<ConfigEntry>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeleteTopicsRequest {
    pub topics: Vec<TopicKey>,
    pub timeout_ms: i32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeletedTopic {
    pub name: Option<String>,
    pub topic_id: TopicId,
    pub error: ErrorCode,
    pub message: Option<String>,
}

/// One topic of a CreatePartitions request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewPartitions {
    pub name: String,
    /// The partition count wanted (the current one plus those to add).
    pub count: i32,
    /// The replicas of each new partition, in partition order; `None`: the controller places
    /// them.
    pub assignment: Option<Vec<Vec<i32>>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreatePartitionsRequest {
    pub topics: Vec<NewPartitions>,
    pub validate_only: bool,
    pub timeout_ms: i32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreatedPartitions {
    pub name: String,
    pub error: ErrorCode,
    pub message: Option<String>,
}

/// Kafka's config resource types.
pub const RESOURCE_TOPIC: i8 = 2;
pub const RESOURCE_BROKER: i8 = 4;
/// Kafka's config sources.
pub const SOURCE_TOPIC: i8 = 1;
pub const SOURCE_DEFAULT: i8 = 5;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigResource {
    pub resource_type: i8,
    pub name: String,
    /// `None`: every config.
    pub keys: Option<Vec<String>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DescribedResource {
    pub resource_type: i8,
    pub name: String,
    pub error: ErrorCode,
    pub message: Option<String>,
    pub configs: Vec<ConfigEntry>,
}

/// IncrementalAlterConfigs operations (AlterConfigs, the legacy API, only sets: its request is
/// every config the resource is to override, each a [`CONFIG_SET`]).
pub const CONFIG_SET: i8 = 0;
pub const CONFIG_DELETE: i8 = 1;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigChange {
    pub name: String,
    /// [`CONFIG_SET`], [`CONFIG_DELETE`], or another (refused) Kafka operation.
    pub operation: i8,
    pub value: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlterResource {
    pub resource_type: i8,
    pub name: String,
    pub changes: Vec<ConfigChange>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlterConfigsRequest {
    pub resources: Vec<AlterResource>,
    pub validate_only: bool,
    /// The legacy AlterConfigs (API 33): each resource's changes replace all of its overrides
    /// (an override the request does not name is removed). IncrementalAlterConfigs: `false`.
    pub replace: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlteredResource {
    pub resource_type: i8,
    pub name: String,
    pub error: ErrorCode,
    pub message: Option<String>,
}

// ---- ACLs -------------------------------------------------------------------------------------

/// An ACL request: what a reply needs to have one entry per item asked about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AclRequest {
    Describe,
    /// CreateAcls with this many creations.
    Create(usize),
    /// DeleteAcls with this many filters.
    Delete(usize),
}

/// The answer to an [`AclRequest`]: the error of the request (Describe) or of each creation or
/// filter, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AclReply {
    pub request: AclRequest,
    pub error: ErrorCode,
    pub message: String,
}

// ---- Offsets ----------------------------------------------------------------------------------

/// ListOffsets' special timestamps.
pub const LATEST_TIMESTAMP: i64 = -1;
pub const EARLIEST_TIMESTAMP: i64 = -2;
pub const MAX_TIMESTAMP: i64 = -3;
pub const EARLIEST_LOCAL_TIMESTAMP: i64 = -4;
pub const LATEST_TIERED_TIMESTAMP: i64 = -5;

/// The `replica_id` of Kafka's debugging consumer, which ListOffsets also serves from followers.
pub const DEBUGGING_REPLICA_ID: i32 = -2;

/// Kafka's `NO_PARTITION_LEADER_EPOCH`: a client that sends it as its current leader epoch asks
/// for no fencing check.
pub const NO_LEADER_EPOCH: i32 = -1;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListOffsetsRequest {
    pub replica_id: i32,
    pub topics: Vec<(String, Vec<OffsetQuery>)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OffsetQuery {
    pub partition: i32,
    /// A timestamp, or one of the special ones (`LATEST_TIMESTAMP`, ...).
    pub timestamp: i64,
    /// [`NO_LEADER_EPOCH`] for no fencing check.
    pub current_leader_epoch: i32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListedOffset {
    pub partition: i32,
    pub error: ErrorCode,
    /// -1 when nothing was found.
    pub timestamp: i64,
    pub offset: i64,
    pub leader_epoch: i32,
}

/// DeleteRecords (API key 21): per partition, the Kafka offset the log should start at from now
/// on, or [`crate::replica::DELETE_TO_HIGH_WATERMARK`] (-1) for the high watermark.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeleteRecordsRequest {
    /// (topic, [(partition, offset)]).
    pub topics: Vec<(String, Vec<(i32, i64)>)>,
    /// How long the answer may wait for the change to commit (REQUEST_TIMED_OUT after).
    pub timeout_ms: i32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeletedRecords {
    pub partition: i32,
    /// The partition's log start (low watermark) after the deletion; -1 with an error.
    pub low_watermark: i64,
    pub error: ErrorCode,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EpochQuery {
    pub partition: i32,
    pub current_leader_epoch: i32,
    pub leader_epoch: i32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EpochEnd {
    pub partition: i32,
    pub error: ErrorCode,
    /// `(-1, -1)`: undefined.
    pub leader_epoch: i32,
    pub end_offset: i64,
}

// ---- Producers --------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitProducerIdRequest {
    pub transactional_id: Option<String>,
    /// -1 for a new producer; an existing one asks for an epoch bump (KIP-360).
    pub producer_id: i64,
    pub producer_epoch: i16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProducerIdReply {
    pub error: ErrorCode,
    pub producer_id: i64,
    pub producer_epoch: i16,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ProduceRequest {
    /// -1 (all), 0 (none: no reply) or 1 (leader); anything else is refused per partition.
    pub acks: i16,
    pub timeout_ms: i32,
    pub transactional: bool,
    pub topics: Vec<(TopicKey, Vec<(i32, Option<Bytes>)>)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProducedPartition {
    pub partition: i32,
    pub error: ErrorCode,
    pub message: Option<String>,
    /// -1 on error.
    pub base_offset: i64,
    pub log_start_offset: i64,
    /// The append time stamped on the batch of a `LogAppendTime` topic; -1 otherwise.
    pub log_append_time_ms: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchRequest {
    pub max_wait_ms: i32,
    pub min_bytes: i32,
    /// `None`: no response limit (versions before 3).
    pub max_bytes: Option<i32>,
    pub topics: Vec<(TopicKey, Vec<FetchQuery>)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FetchQuery {
    pub partition: i32,
    pub fetch_offset: i64,
    pub partition_max_bytes: i32,
    pub current_leader_epoch: i32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchedPartition {
    pub partition: i32,
    pub error: ErrorCode,
    /// -1 when refused.
    pub high_watermark: i64,
    pub last_stable_offset: i64,
    pub log_start_offset: i64,
    /// Whole record batches (empty when none).
    pub records: Bytes,
}

// ---- Groups -----------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FindCoordinatorRequest {
    /// 0: group; anything else (transactions) is refused for now.
    pub key_type: i8,
    pub keys: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeartbeatRequest {
    pub group_id: String,
    pub member_id: String,
    pub instance_id: Option<String>,
    pub generation: i32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaveRequest {
    pub group_id: String,
    /// (member id, instance id) of each member leaving.
    pub members: Vec<(String, Option<String>)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OffsetDeleteRequest {
    pub group_id: String,
    pub partitions: Vec<(String, i32)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OffsetFetchGroup {
    pub group_id: String,
    pub error: ErrorCode,
    pub offsets: Vec<(String, i32, Option<OffsetValue>)>,
}

impl Request {
    /// Whether the client expects no answer (acks=0 produce).
    pub fn expects_no_reply(&self) -> bool {
        matches!(self, Request::Produce(p) if p.acks == 0)
    }
}
