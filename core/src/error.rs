//! Kafka error codes. Every error Sluice returns to a client is one of these, so each request's own
//! error enum maps onto this one one-to-one (see `From` impls next to those enums).

/// A Kafka protocol error code (the `error_code` INT16 of every response).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(i16)]
pub enum ErrorCode {
    None = 0,
    OffsetOutOfRange = 1,
    CorruptMessage = 2,
    UnknownTopicOrPartition = 3,
    InvalidFetchSize = 4,
    LeaderNotAvailable = 5,
    NotLeaderOrFollower = 6,
    RequestTimedOut = 7,
    MessageTooLarge = 10,
    OffsetMetadataTooLarge = 12,
    CoordinatorLoadInProgress = 14,
    CoordinatorNotAvailable = 15,
    NotCoordinator = 16,
    InvalidTopicException = 17,
    RecordListTooLarge = 18,
    NotEnoughReplicas = 19,
    InvalidRequiredAcks = 21,
    IllegalGeneration = 22,
    InconsistentGroupProtocol = 23,
    InvalidGroupId = 24,
    UnknownMemberId = 25,
    InvalidSessionTimeout = 26,
    RebalanceInProgress = 27,
    InvalidCommitOffsetSize = 28,
    InvalidTimestamp = 32,
    UnsupportedVersion = 35,
    TopicAlreadyExists = 36,
    InvalidPartitions = 37,
    InvalidReplicationFactor = 38,
    InvalidReplicaAssignment = 39,
    InvalidRequest = 42,
    UnsupportedForMessageFormat = 43,
    PolicyViolation = 44,
    OutOfOrderSequenceNumber = 45,
    DuplicateSequenceNumber = 46,
    InvalidProducerEpoch = 47,
    InvalidConfig = 40,
    /// The node is not the active controller (the metadata quorum's caught-up leader).
    NotController = 41,
    ClusterAuthorizationFailed = 31,
    TransactionalIdAuthorizationFailed = 53,
    /// An ACL API on a broker with no authorizer (Sluice has none: no authentication either).
    SecurityDisabled = 54,
    KafkaStorageError = 56,
    UnknownProducerId = 59,
    NonEmptyGroup = 68,
    GroupIdNotFound = 69,
    MemberIdRequired = 79,
    GroupMaxSizeReached = 81,
    FencedInstanceId = 82,
    GroupSubscribedToTopic = 86,
    UnknownServerError = -1,
    FencedLeaderEpoch = 74,
    UnknownLeaderEpoch = 75,
    StaleBrokerEpoch = 77,
    InvalidRecord = 87,
    UnknownTopicId = 100,
    DuplicateBrokerRegistration = 101,
    BrokerIdNotRegistered = 102,
}

impl ErrorCode {
    pub fn code(self) -> i16 {
        self as i16
    }

    pub fn is_none(self) -> bool {
        self == ErrorCode::None
    }

    /// The error of Kafka code `code`, if it is one Sluice knows (a peer's answer carries
    /// codes as numbers).
    pub fn from_code(code: i16) -> Option<ErrorCode> {
        Some(match code {
            c if c == ErrorCode::None as i16 => ErrorCode::None,
            c if c == ErrorCode::OffsetOutOfRange as i16 => ErrorCode::OffsetOutOfRange,
            c if c == ErrorCode::CorruptMessage as i16 => ErrorCode::CorruptMessage,
            c if c == ErrorCode::UnknownTopicOrPartition as i16 => {
                ErrorCode::UnknownTopicOrPartition
            }
            c if c == ErrorCode::InvalidFetchSize as i16 => ErrorCode::InvalidFetchSize,
            c if c == ErrorCode::LeaderNotAvailable as i16 => ErrorCode::LeaderNotAvailable,
            c if c == ErrorCode::NotLeaderOrFollower as i16 => ErrorCode::NotLeaderOrFollower,
            c if c == ErrorCode::RequestTimedOut as i16 => ErrorCode::RequestTimedOut,
            c if c == ErrorCode::MessageTooLarge as i16 => ErrorCode::MessageTooLarge,
            c if c == ErrorCode::OffsetMetadataTooLarge as i16 => ErrorCode::OffsetMetadataTooLarge,
            c if c == ErrorCode::CoordinatorLoadInProgress as i16 => {
                ErrorCode::CoordinatorLoadInProgress
            }
            c if c == ErrorCode::CoordinatorNotAvailable as i16 => {
                ErrorCode::CoordinatorNotAvailable
            }
            c if c == ErrorCode::NotCoordinator as i16 => ErrorCode::NotCoordinator,
            c if c == ErrorCode::InvalidTopicException as i16 => ErrorCode::InvalidTopicException,
            c if c == ErrorCode::RecordListTooLarge as i16 => ErrorCode::RecordListTooLarge,
            c if c == ErrorCode::NotEnoughReplicas as i16 => ErrorCode::NotEnoughReplicas,
            c if c == ErrorCode::InvalidRequiredAcks as i16 => ErrorCode::InvalidRequiredAcks,
            c if c == ErrorCode::IllegalGeneration as i16 => ErrorCode::IllegalGeneration,
            c if c == ErrorCode::InconsistentGroupProtocol as i16 => {
                ErrorCode::InconsistentGroupProtocol
            }
            c if c == ErrorCode::InvalidGroupId as i16 => ErrorCode::InvalidGroupId,
            c if c == ErrorCode::UnknownMemberId as i16 => ErrorCode::UnknownMemberId,
            c if c == ErrorCode::InvalidSessionTimeout as i16 => ErrorCode::InvalidSessionTimeout,
            c if c == ErrorCode::RebalanceInProgress as i16 => ErrorCode::RebalanceInProgress,
            c if c == ErrorCode::InvalidCommitOffsetSize as i16 => {
                ErrorCode::InvalidCommitOffsetSize
            }
            c if c == ErrorCode::InvalidTimestamp as i16 => ErrorCode::InvalidTimestamp,
            c if c == ErrorCode::UnsupportedVersion as i16 => ErrorCode::UnsupportedVersion,
            c if c == ErrorCode::TopicAlreadyExists as i16 => ErrorCode::TopicAlreadyExists,
            c if c == ErrorCode::InvalidPartitions as i16 => ErrorCode::InvalidPartitions,
            c if c == ErrorCode::InvalidReplicationFactor as i16 => {
                ErrorCode::InvalidReplicationFactor
            }
            c if c == ErrorCode::InvalidReplicaAssignment as i16 => {
                ErrorCode::InvalidReplicaAssignment
            }
            c if c == ErrorCode::InvalidRequest as i16 => ErrorCode::InvalidRequest,
            c if c == ErrorCode::UnsupportedForMessageFormat as i16 => {
                ErrorCode::UnsupportedForMessageFormat
            }
            c if c == ErrorCode::OutOfOrderSequenceNumber as i16 => {
                ErrorCode::OutOfOrderSequenceNumber
            }
            c if c == ErrorCode::DuplicateSequenceNumber as i16 => {
                ErrorCode::DuplicateSequenceNumber
            }
            c if c == ErrorCode::InvalidProducerEpoch as i16 => ErrorCode::InvalidProducerEpoch,
            c if c == ErrorCode::InvalidConfig as i16 => ErrorCode::InvalidConfig,
            c if c == ErrorCode::NotController as i16 => ErrorCode::NotController,
            c if c == ErrorCode::ClusterAuthorizationFailed as i16 => {
                ErrorCode::ClusterAuthorizationFailed
            }
            c if c == ErrorCode::TransactionalIdAuthorizationFailed as i16 => {
                ErrorCode::TransactionalIdAuthorizationFailed
            }
            c if c == ErrorCode::SecurityDisabled as i16 => ErrorCode::SecurityDisabled,
            c if c == ErrorCode::KafkaStorageError as i16 => ErrorCode::KafkaStorageError,
            c if c == ErrorCode::UnknownProducerId as i16 => ErrorCode::UnknownProducerId,
            c if c == ErrorCode::NonEmptyGroup as i16 => ErrorCode::NonEmptyGroup,
            c if c == ErrorCode::GroupIdNotFound as i16 => ErrorCode::GroupIdNotFound,
            c if c == ErrorCode::MemberIdRequired as i16 => ErrorCode::MemberIdRequired,
            c if c == ErrorCode::GroupMaxSizeReached as i16 => ErrorCode::GroupMaxSizeReached,
            c if c == ErrorCode::FencedInstanceId as i16 => ErrorCode::FencedInstanceId,
            c if c == ErrorCode::GroupSubscribedToTopic as i16 => ErrorCode::GroupSubscribedToTopic,
            c if c == ErrorCode::UnknownServerError as i16 => ErrorCode::UnknownServerError,
            c if c == ErrorCode::FencedLeaderEpoch as i16 => ErrorCode::FencedLeaderEpoch,
            c if c == ErrorCode::UnknownLeaderEpoch as i16 => ErrorCode::UnknownLeaderEpoch,
            c if c == ErrorCode::StaleBrokerEpoch as i16 => ErrorCode::StaleBrokerEpoch,
            c if c == ErrorCode::InvalidRecord as i16 => ErrorCode::InvalidRecord,
            c if c == ErrorCode::UnknownTopicId as i16 => ErrorCode::UnknownTopicId,
            c if c == ErrorCode::DuplicateBrokerRegistration as i16 => {
                ErrorCode::DuplicateBrokerRegistration
            }
            c if c == ErrorCode::BrokerIdNotRegistered as i16 => ErrorCode::BrokerIdNotRegistered,
            _ => return None,
        })
    }
}

/// A refused part of a request: the code the client gets and, for the broker's debug log, what
/// was wrong (naming the topic-partition once the caller knows it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub code: ErrorCode,
    pub reason: String,
}

impl Refusal {
    pub fn new(code: ErrorCode, reason: impl Into<String>) -> Refusal {
        let refusal = Refusal {
            code,
            reason: reason.into(),
        };
        debug_assert!(!refusal.code.is_none(), "a refusal carries an error");
        refusal
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.code, self.reason)
    }
}

#[cfg(test)]
mod tests {
    use super::ErrorCode;

    #[test]
    fn every_code_maps_back() {
        for code in -1..=120i16 {
            if let Some(e) = ErrorCode::from_code(code) {
                assert_eq!(e.code(), code);
            }
        }
        assert_eq!(ErrorCode::from_code(54), Some(ErrorCode::SecurityDisabled));
        assert_eq!(ErrorCode::from_code(41), Some(ErrorCode::NotController));
        assert_eq!(ErrorCode::from_code(9999), None);
    }
}
