//! The history of a Kafka workload run: what every client process asked for and what it was told,
//! in the shape Jepsen's Kafka workload (`jepsen.tests.kafka`) records, so that [`crate::checker`]
//! can judge it with the same anomaly definitions.
//!
//! A history is pure data. The simulator and the Jepsen-style harness append one [`Op`] per
//! completed client operation; nothing here runs a client. Each operation carries its simulated
//! invoke and completion times so that a timeline can be drawn and so that the checker can tell
//! which sends completed before the final read began.
//!
//! Invariants the producer of a history must keep (the checker relies on them):
//! - every value sent to a key is unique across the whole history (the workload draws values from
//!   a counter), so a value names exactly one send;
//! - for each process, its operations appear in the order the process invoked them; a process
//!   runs one operation at a time, except that a pipelining producer's sends overlap (each is
//!   invoked at its own millisecond, in the order the producer numbered them);
//! - `ops[i].index == i` ([`History::push`] and the builders ensure it).

use std::collections::BTreeMap;
use std::fmt;

mod describe;

pub use describe::describe;

/// A Jepsen "key": one topic-partition, the unit that has a total order of offsets.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub topic: String,
    pub partition: i32,
}

impl Key {
    pub fn new(topic: impl Into<String>, partition: i32) -> Key {
        Key {
            topic: topic.into(),
            partition,
        }
    }
}

impl fmt::Display for Key {
    /// Kafka's usual `topic-partition` spelling.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.topic, self.partition)
    }
}

/// A message value. Unique per key across the whole history (the workload guarantees it).
pub type Value = u64;

/// What one poll (or the final read) returned: for each key, the `(offset, value)` pairs in the
/// order the consumer received them.
pub type Reads = BTreeMap<Key, Vec<(u64, Value)>>;

/// The producer's `acks` setting for one send.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Acks {
    /// `acks=0`: the broker does not answer, so an "ok" send carries no meaningful offset.
    Zero,
    /// `acks=1`: acknowledged by the leader; may be lost in a crash before it is synced.
    One,
    /// `acks=all` (`-1`): acknowledged only once durable; must never be lost.
    All,
}

impl Acks {
    /// The name as a Kafka client config would spell it.
    pub fn name(self) -> &'static str {
        match self {
            Acks::Zero => "0",
            Acks::One => "1",
            Acks::All => "all",
        }
    }
}

/// How an operation completed, in Jepsen's three-way split.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome<T> {
    /// It happened, and this is what it returned.
    Ok(T),
    /// It definitely did not take effect (for example the broker answered with an error code).
    Fail(String),
    /// Indeterminate: it may or may not have taken effect (timeout, connection lost, crash).
    Info(String),
}

impl<T> Outcome<T> {
    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Ok(_))
    }

    pub fn is_fail(&self) -> bool {
        matches!(self, Outcome::Fail(_))
    }

    pub fn is_info(&self) -> bool {
        matches!(self, Outcome::Info(_))
    }

    /// The returned value of an `Ok` outcome.
    pub fn ok(&self) -> Option<&T> {
        match self {
            Outcome::Ok(value) => Some(value),
            Outcome::Fail(_) | Outcome::Info(_) => None,
        }
    }
}

/// What an operation did, with its outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpKind {
    /// Produce one value to one key. `Ok` carries the offset the broker acknowledged (ignored for
    /// `acks=0`, where Kafka reports none).
    Send {
        key: Key,
        value: Value,
        acks: Acks,
        outcome: Outcome<u64>,
        /// The idempotent producer identity the value was sent under (its last attempt's), or
        /// `None` for a producer without idempotence. Judged by [`crate::checker::fencing`].
        producer: Option<ProducerStamp>,
    },
    /// One consumer poll. The reads are facts whatever the outcome: a poll records only what it
    /// actually received.
    Poll { reads: Reads, outcome: Outcome<()> },
    /// Replace the process's consumer assignment with `keys`, optionally seeking each to the
    /// beginning. It resets the process's poll-order tracking (see [`crate::checker`]).
    Assign {
        keys: Vec<Key>,
        seek_to_beginning: bool,
        outcome: Outcome<()>,
    },
    /// At the end of the test, a fresh consumer reads every key from the beginning to the end.
    /// Checked like a poll by a process with no history; its presence turns unseen acknowledged
    /// writes into anomalies.
    FinalRead { reads: Reads, outcome: Outcome<()> },
    /// What a subscribe-mode consumer — a member of a consumer group — did, judged by
    /// [`crate::checker::groups`]. Its polls are ordinary [`OpKind::Poll`]s of the same process.
    Group(GroupOp),
    /// A topic config change, or what a broker describes, judged by [`crate::checker::configs`].
    Config(ConfigOp),
}

/// One topic-config operation (IncrementalAlterConfigs, DescribeConfigs, and a produce that
/// probes whether a config is in force).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigOp {
    /// IncrementalAlterConfigs of one topic: sets `set`, removes the overrides named in
    /// `delete`. No name appears twice.
    Alter {
        topic: String,
        set: Vec<(String, String)>,
        delete: Vec<String>,
        outcome: Outcome<()>,
    },
    /// DescribeConfigs of one topic at one broker, after the cluster healed: `Ok` holds the
    /// topic's overrides (the configs whose source is the topic) as that broker shows them.
    Describe {
        topic: String,
        node: i32,
        outcome: Outcome<BTreeMap<String, String>>,
    },
    /// After the cluster healed and every broker described the same overrides: a produce of a
    /// `batch_bytes` batch to `topic` whose `max.message.bytes` was then `limit_bytes`. `Ok`
    /// holds the Kafka error code the partition leader answered (0: appended).
    SizeProbe {
        topic: String,
        limit_bytes: u64,
        batch_bytes: u64,
        outcome: Outcome<i16>,
    },
    /// The legacy AlterConfigs of one topic: `set` becomes the topic's whole set of overrides
    /// (every override it does not name is removed).
    Replace {
        topic: String,
        set: Vec<(String, String)>,
        outcome: Outcome<()>,
    },
    /// After the heal and the describes: the compaction probe, with every replica's stored
    /// records of the probed partition ([`crate::checker::compaction`]).
    Compaction(Box<crate::checker::compaction::CompactionProbe>),
}

/// One consumer-group operation. Member ids and generations are the coordinator's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GroupOp {
    /// JoinGroup (with its MEMBER_ID_REQUIRED round) then SyncGroup. `Ok`: the generation the
    /// member joined and the partitions the coordinator handed it.
    Join {
        group: String,
        outcome: Outcome<Assignment>,
    },
    /// OffsetCommit of the member's positions (the next offset it would consume) in
    /// `generation`. A member may commit late, with a generation the group has left behind (a
    /// "zombie" after a stall): whether it was late is the checker's judgement from the rest
    /// of the history, not something the member records.
    Commit {
        group: String,
        member: String,
        generation: i32,
        offsets: Vec<(Key, u64)>,
        outcome: Outcome<()>,
        /// The Kafka error code the coordinator answered with (the first partition's that is
        /// not 0), or `None` if it answered without an error or did not answer at all.
        error_code: Option<i16>,
    },
    /// OffsetFetch of the partitions the member was handed in `generation`. `Ok`: per partition
    /// the committed offset (`None`: nothing committed) and where the member starts consuming.
    OffsetFetch {
        group: String,
        member: String,
        generation: i32,
        outcome: Outcome<Vec<Position>>,
    },
    /// The member's position of `key` was out of range and it jumped to `to`
    /// (`auto.offset.reset`): an explicit reset, after which the group's commits of `key` may be
    /// lower than before.
    Reset {
        group: String,
        member: String,
        generation: i32,
        key: Key,
        from: u64,
        to: u64,
    },
    /// LeaveGroup.
    Leave {
        group: String,
        member: String,
        outcome: Outcome<()>,
    },
    /// The member's process was killed: no LeaveGroup, and its request in flight (recorded
    /// `Info`) may still take effect.
    Crash { group: String },
    /// At the end of the run: the highest high watermark any fetch reported, per partition.
    HighWatermarks { marks: Vec<(Key, u64)> },
}

/// An idempotent producer's identity: the producer id and epoch from InitProducerId. A newer
/// epoch of the same id fences the older ones (KIP-360's bump, or an older incarnation: a
/// zombie).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProducerStamp {
    pub producer_id: i64,
    pub epoch: i16,
}

impl fmt::Display for ProducerStamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "producer {} epoch {}", self.producer_id, self.epoch)
    }
}

/// What one member was handed in one generation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assignment {
    pub member: String,
    pub generation: i32,
    pub keys: Vec<Key>,
}

/// Where a member starts consuming one partition after a join.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Position {
    pub key: Key,
    /// What OffsetFetch returned (`None`: the group has no committed offset for it).
    pub committed: Option<u64>,
    /// The offset of its first fetch: the committed offset, or where the reset policy points.
    pub start: u64,
}

/// One operation as a client process recorded it, before a run merges every process's
/// operations into a [`History`] (the simulator's and the Jepsen harness's workloads).
#[derive(Clone, Debug)]
pub struct Recorded {
    pub process: u32,
    pub kind: OpKind,
    pub invoke_ms: u64,
    pub complete_ms: u64,
}

/// One completed client operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Op {
    /// Position in [`History::ops`]; anomalies name operations by it.
    pub index: usize,
    /// The client process (one operation at a time per process).
    pub process: u32,
    pub kind: OpKind,
    /// Simulated time the operation was invoked.
    pub invoke_ms: u64,
    /// Simulated time the operation completed (or was given up on, for `Info`).
    pub complete_ms: u64,
}

/// A whole run, in the order operations were recorded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct History {
    pub ops: Vec<Op>,
}

impl History {
    pub fn new() -> History {
        History { ops: Vec::new() }
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Appends an operation and returns its index.
    pub fn push(&mut self, process: u32, kind: OpKind, invoke_ms: u64, complete_ms: u64) -> usize {
        assert!(
            invoke_ms <= complete_ms,
            "operation completes ({complete_ms} ms) before it is invoked ({invoke_ms} ms)"
        );
        let index = self.ops.len();
        self.ops.push(Op {
            index,
            process,
            kind,
            invoke_ms,
            complete_ms,
        });
        debug_assert_eq!(self.ops[index].index, index);
        index
    }

    #[allow(clippy::too_many_arguments)]
    pub fn send(
        &mut self,
        process: u32,
        key: Key,
        value: Value,
        acks: Acks,
        outcome: Outcome<u64>,
        invoke_ms: u64,
        complete_ms: u64,
    ) -> usize {
        let kind = OpKind::Send {
            key,
            value,
            acks,
            outcome,
            producer: None,
        };
        self.push(process, kind, invoke_ms, complete_ms)
    }

    /// A send by the idempotent producer `producer`.
    #[allow(clippy::too_many_arguments)]
    pub fn send_as(
        &mut self,
        process: u32,
        producer: ProducerStamp,
        key: Key,
        value: Value,
        acks: Acks,
        outcome: Outcome<u64>,
        invoke_ms: u64,
        complete_ms: u64,
    ) -> usize {
        let index = self.send(process, key, value, acks, outcome, invoke_ms, complete_ms);
        if let OpKind::Send {
            producer: stamp, ..
        } = &mut self.ops[index].kind
        {
            *stamp = Some(producer);
        }
        index
    }

    pub fn poll(
        &mut self,
        process: u32,
        reads: Reads,
        outcome: Outcome<()>,
        invoke_ms: u64,
        complete_ms: u64,
    ) -> usize {
        self.push(
            process,
            OpKind::Poll { reads, outcome },
            invoke_ms,
            complete_ms,
        )
    }

    /// A successful poll that returned `pairs` for the single key `key`.
    pub fn poll_key(
        &mut self,
        process: u32,
        key: &Key,
        pairs: &[(u64, Value)],
        invoke_ms: u64,
        complete_ms: u64,
    ) -> usize {
        let reads = reads_of(key, pairs);
        self.poll(process, reads, Outcome::Ok(()), invoke_ms, complete_ms)
    }

    #[allow(clippy::too_many_arguments)]
    pub fn assign(
        &mut self,
        process: u32,
        keys: Vec<Key>,
        seek_to_beginning: bool,
        outcome: Outcome<()>,
        invoke_ms: u64,
        complete_ms: u64,
    ) -> usize {
        let kind = OpKind::Assign {
            keys,
            seek_to_beginning,
            outcome,
        };
        self.push(process, kind, invoke_ms, complete_ms)
    }

    pub fn final_read(
        &mut self,
        process: u32,
        reads: Reads,
        outcome: Outcome<()>,
        invoke_ms: u64,
        complete_ms: u64,
    ) -> usize {
        let kind = OpKind::FinalRead { reads, outcome };
        self.push(process, kind, invoke_ms, complete_ms)
    }
}

/// `Reads` holding `pairs` for one key (an empty `pairs` still names the key).
pub fn reads_of(key: &Key, pairs: &[(u64, Value)]) -> Reads {
    let mut reads = Reads::new();
    reads.insert(key.clone(), pairs.to_vec());
    reads
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builders_number_ops_in_order() {
        let key = Key::new("t", 0);
        let mut history = History::new();
        let send = history.send(1, key.clone(), 7, Acks::All, Outcome::Ok(0), 0, 2);
        let assign = history.assign(2, vec![key.clone()], true, Outcome::Ok(()), 3, 4);
        let poll = history.poll_key(2, &key, &[(0, 7)], 5, 6);
        let final_read = history.final_read(3, reads_of(&key, &[(0, 7)]), Outcome::Ok(()), 7, 9);
        assert_eq!((send, assign, poll, final_read), (0, 1, 2, 3));
        assert!(history.ops.iter().enumerate().all(|(i, op)| op.index == i));
        assert_eq!(history.len(), 4);
    }

    #[test]
    fn key_orders_by_topic_then_partition_and_displays_kafka_style() {
        assert!(Key::new("a", 9) < Key::new("b", 0));
        assert!(Key::new("a", 0) < Key::new("a", 1));
        assert_eq!(Key::new("orders", 3).to_string(), "orders-3");
    }

    #[test]
    fn outcome_accessors() {
        let ok: Outcome<u64> = Outcome::Ok(5);
        let fail: Outcome<u64> = Outcome::Fail("NOT_LEADER_OR_FOLLOWER".into());
        let info: Outcome<u64> = Outcome::Info("timeout".into());
        assert_eq!(ok.ok(), Some(&5));
        assert!(ok.is_ok() && fail.is_fail() && info.is_info());
        assert_eq!(fail.ok(), None);
        assert_eq!(info.ok(), None);
    }

    #[test]
    #[should_panic(expected = "before it is invoked")]
    fn push_rejects_time_running_backwards() {
        let mut history = History::new();
        history.poll(1, Reads::new(), Outcome::Ok(()), 5, 4);
    }
}
