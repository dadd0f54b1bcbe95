//! Consumer groups: the group coordinator of one `__consumer_offsets` partition, and the records
//! it keeps there.
//!
//! A group maps to one partition of `__consumer_offsets` ([`partition_for`]); that partition's
//! Raft leader is the group's coordinator. The coordinator ([`GroupCoordinator`]) is a pure state
//! machine: membership (JoinGroup, SyncGroup, Heartbeat, LeaveGroup, session and rebalance
//! timeouts, static members) changes in memory at once, as in Kafka; what must survive a
//! failover (a generation's assignment, committed offsets, deletions) goes out as records to
//! append ([`Output::Append`]), and the reply that depends on them leaves only once the host
//! reports them committed ([`GroupCoordinator::on_high_watermark`]). A new leader rebuilds every
//! group by replaying the partition ([`GroupCoordinator::replay`]).

mod assignment;
mod codec;
mod coordinator;
#[cfg(test)]
mod tests;

pub use assignment::ConsumerAssignment;
pub use codec::{DecodeError, GroupValue, MemberValue, OffsetValue, OffsetsRecord};
pub use coordinator::{
    CommitPartition, CommitRequest, CoordinatorConfig, GroupCoordinator, GroupDescription,
    GroupState, JoinRequest, JoinResponse, JoinedMember, ListedGroup, MemberDescription, Output,
    Reply, RequestId, SyncRequest, SyncResponse, WriteId,
};

/// The name of the internal topic that holds groups and committed offsets.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// The `__consumer_offsets` partition that holds `group_id`: Java's `String.hashCode` modulo the
/// partition count, exactly as Kafka computes it (`Utils.abs(groupId.hashCode) % partitions`),
/// so tools that reason about the mapping agree.
pub fn partition_for(group_id: &str, partitions: i32) -> i32 {
    assert!(partitions > 0, "__consumer_offsets has partitions");
    let mut hash: i32 = 0;
    for unit in group_id.encode_utf16() {
        hash = hash.wrapping_mul(31).wrapping_add(i32::from(unit));
    }
    // Kafka's Utils.abs maps i32::MIN to 0 (it masks the sign bit).
    (hash & 0x7fff_ffff) % partitions
}

/// The topics a consumer-protocol member subscribes to, read from its `ConsumerProtocolSubscription`
/// metadata (version, then an array of topic names); `None` if it is not one.
pub fn consumer_subscription_topics(metadata: &[u8]) -> Option<Vec<String>> {
    let version = i16::from_be_bytes(metadata.get(0..2)?.try_into().ok()?);
    if version < 0 {
        return None;
    }
    let count = i32::from_be_bytes(metadata.get(2..6)?.try_into().ok()?);
    if count < 0 || count as usize > metadata.len() {
        return None;
    }
    let mut at = 6;
    let mut topics = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let len = i16::from_be_bytes(metadata.get(at..at + 2)?.try_into().ok()?);
        at += 2;
        let len = usize::try_from(len).ok()?;
        let name = std::str::from_utf8(metadata.get(at..at + len)?).ok()?;
        at += len;
        topics.push(name.to_string());
    }
    Some(topics)
}
