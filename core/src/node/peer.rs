//! What nodes say to each other (the node's RPC transport carries them, bincode-encoded): Raft
//! messages of every group, requests to the active controller and their answers, and partition
//! leadership.
//!
//! Every message is small and self-contained; the transport may drop any of them (Raft and the
//! periodic senders below retry by design), so nothing here depends on delivery.

use crate::metadata::TopicId;
use crate::raft::Message;

/// A Raft group: the metadata quorum, or one partition (by topic id, which survives renames and
/// tells a re-created topic from the deleted one of the same name).
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum GroupId {
    Metadata,
    Partition { topic_id: TopicId, partition: i32 },
}

/// A request only the active controller can decide. Nodes that are not the controller send
/// these to the node they believe leads the metadata quorum.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ControllerRequest {
    /// "I am alive": registers the broker (a new incarnation re-registers it) and keeps it
    /// unfenced. Sent every heartbeat interval.
    Heartbeat {
        node_id: i32,
        incarnation: u64,
        host: String,
        port: u16,
        rack: Option<String>,
    },
    /// A topic created on a client's behalf (auto-creation on Metadata or Produce).
    CreateTopic {
        name: String,
        num_partitions: i32,
        replication_factor: i16,
        /// Config overrides (the internal `__consumer_offsets` keeps its records forever).
        configs: Vec<(String, String)>,
    },
    /// The next block of producer ids for this node's InitProducerId answers.
    AllocateProducerIds { node_id: i32 },
    /// One topic of a client's AlterConfigs or IncrementalAlterConfigs sent to a node that is
    /// not the controller (Kafka's brokers forward these; Java's admin client sends them to any
    /// broker). `replace`: the legacy API's meaning (overrides not in `set` are deleted, as of
    /// the controller's image).
    AlterConfigs {
        topic: String,
        set: Vec<(String, String)>,
        delete: Vec<String>,
        replace: bool,
        validate_only: bool,
    },
}

/// The controller's answer to a [`ControllerRequest`].
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ControllerReply {
    /// The request's records are committed (a heartbeat's or a topic's; the requester learns the
    /// rest from the metadata log).
    Done,
    /// Producer ids `first..end` belong to the requester.
    ProducerIds { first: i64, end: i64 },
    /// Refused, with a Kafka error code (NOT_CONTROLLER: ask the new controller).
    Error { code: i16 },
    /// Refused, with a Kafka error code and the message for the client.
    Refused { code: i16, message: String },
}

/// One partition's leader as the sender knows it.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leadership {
    pub topic_id: TopicId,
    pub partition: i32,
    pub term: u64,
    pub leader: u64,
}

#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Clone, Debug, PartialEq)]
pub enum PeerMessage {
    /// A Raft message of `group`. Its `from` must be the sending node; anything else is dropped.
    Raft {
        group: GroupId,
        msg: Message,
    },
    /// To the active controller; answered with [`PeerMessage::ControllerReply`] and the same id.
    Controller {
        id: u64,
        request: ControllerRequest,
    },
    ControllerReply {
        id: u64,
        reply: ControllerReply,
    },
    /// The partitions the sender leads, sent to every node periodically and whenever it wins an
    /// election, so every broker can answer Metadata with each partition's leader.
    Leaders(Vec<Leadership>),
}

#[cfg(all(test, feature = "serde"))]
mod tests {
    use super::*;
    use crate::raft::MessageBody;
    use bincode::Options;

    fn options() -> impl Options {
        bincode::DefaultOptions::new()
    }

    #[test]
    fn every_message_kind_round_trips_through_bincode() {
        let messages = vec![
            PeerMessage::Raft {
                group: GroupId::Partition {
                    topic_id: [7; 16],
                    partition: 3,
                },
                msg: Message {
                    from: 1,
                    to: 2,
                    term: 9,
                    body: MessageBody::PreVote {
                        last_index: 10,
                        last_term: 8,
                    },
                },
            },
            PeerMessage::Controller {
                id: 5,
                request: ControllerRequest::Heartbeat {
                    node_id: 2,
                    incarnation: 77,
                    host: "10.0.0.2".into(),
                    port: 9092,
                    rack: Some("a".into()),
                },
            },
            PeerMessage::Controller {
                id: 6,
                request: ControllerRequest::CreateTopic {
                    name: "t".into(),
                    num_partitions: -1,
                    replication_factor: -1,
                    configs: vec![("retention.ms".into(), "-1".into())],
                },
            },
            PeerMessage::ControllerReply {
                id: 6,
                reply: ControllerReply::ProducerIds {
                    first: 1000,
                    end: 2000,
                },
            },
            PeerMessage::ControllerReply {
                id: 7,
                reply: ControllerReply::Error { code: 41 },
            },
            PeerMessage::Leaders(vec![Leadership {
                topic_id: [1; 16],
                partition: 0,
                term: 4,
                leader: 3,
            }]),
        ];
        for m in messages {
            let bytes = options().serialize(&m).unwrap();
            let back: PeerMessage = options().deserialize(&bytes).unwrap();
            assert_eq!(back, m);
        }
    }
}
