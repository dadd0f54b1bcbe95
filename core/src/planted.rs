//! Planted bugs: deliberate defects behind a test-only switch, to show that the simulator's
//! checkers catch the classes of bug they exist for (docs/simulation.md).
//!
//! Compiled in only with the `planted-bugs` feature (the simulator enables it); without it
//! [`Planted::is`] is a constant `false` and every planted branch disappears. With it, a bug is
//! chosen per simulation run through the configuration of the machines that plant it (no
//! process-global switch: runs on parallel threads plant their own).

/// The defects that can be planted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Bug {
    /// The broker answers acks=all before the batch is fsynced.
    AckBeforeFsync = 1,
    /// Recovery does not check batch CRCs, so a torn write with garbage is kept.
    SkipRecoveryCrc = 2,
    /// After recovery the next offset is one too small, so the next batch overlaps the last.
    RecoveryOffByOne = 3,
    /// Fetch serves data up to the log end instead of the high watermark.
    FetchPastHighWatermark = 4,
    /// A retried idempotent batch is appended again instead of answered with its offsets.
    IdempotenceOff = 5,
    /// A Raft leader commits by counting replicas even when the entry is of an earlier term
    /// (the Figure 8 current-term check is gone). Caught by the leader's commit-rule invariant
    /// (`Raft::check_invariants`) in the simulator's cluster scenario and by the Raft cluster
    /// harness (`raft::tests::planted`).
    CommitOldTerm = 6,
    /// A Raft follower whose log conflicts with the leader's keeps its divergent suffix (no
    /// truncation) and acknowledges the append anyway. Caught by the simulator's committed-
    /// agreement checker (`checker::replicas`) and by the Raft cluster harness.
    NoDivergentTruncation = 7,
    /// A group coordinator completing a generation also hands one partition of one member's
    /// assignment to another member, so two members consume it at once. Caught by the
    /// simulator's group checkers (`checker::groups`, group-double-owner) in `--scenario groups`.
    GroupDoubleAssign = 8,
    /// A truncation of a replica's log suffix also forgets the last Raft-internal entry (a
    /// leader-epoch start) before the cut in the offset translator, so every Kafka offset past
    /// it is one too large on that replica: an off-by-one in the offset mapping after a
    /// truncation. Caught by the simulator's offset checkers (offset-gap, inconsistent-offsets)
    /// in the cluster scenario.
    OffsetMapOffByOne = 9,
    /// A Raft follower that already voted in a term grants a second candidate's vote request in
    /// that term too (the check against its vote is gone; the vote it records stays the first,
    /// so its one-vote-per-term invariant does not see it). Two candidates of one term can then
    /// both win. Caught by the simulator's election-safety checker (`checker::replicas`: two
    /// leaders in one term) in the cluster scenario, and by the Raft cluster harness (its
    /// durability check: the grant claims a vote the voter's synced hard state does not hold).
    VoteTwice = 10,
    /// A Raft voter grants (pre-)votes without checking that the candidate's log is at least as
    /// up to date as its own, so a candidate missing committed entries can win. Caught by the
    /// simulator's leader-completeness checker (`checker::replicas`: a leader elected without
    /// an entry committed in an earlier term) in the cluster scenario, and by the Raft cluster
    /// harness (its leader-completeness check).
    VoteIgnoresLog = 11,
    /// A group coordinator accepts an OffsetCommit from an older generation, or from a member
    /// it no longer has, as if it came from the current generation: a zombie member's late
    /// commit overwrites what the partition's current owner committed. Caught by the
    /// simulator's group checkers (`checker::groups`, group-late-commit-accepted and
    /// group-late-commit-visible) in `--scenario groups`, whose members sometimes stall past
    /// their session and then commit late.
    StaleGenerationCommit = 12,
    /// A partition takes an idempotent producer's batch of an epoch older than the one its
    /// producer state holds (no INVALID_PRODUCER_EPOCH), so a zombie incarnation keeps
    /// appending after the epoch bump. Caught by the simulator's fencing checker
    /// (`checker::fencing`, zombie-write) against the pipelining producer's zombies.
    NoEpochFencing = 13,
    /// A Raft replica whose recovery found damage to data it may have acknowledged starts as if
    /// nothing happened (no repair mode): it votes and campaigns on a log that lost entries, so
    /// with the leader's help (it still counts the lost acknowledgements) or one more failure a
    /// committed entry is lost. Caught by the simulator's leader-completeness and lost-write
    /// checkers in the cluster scenario, whose nemesis flips bits in replicas' log tails.
    NoRepair = 14,
    /// The active controller applies a topic config change to its own metadata images and
    /// acknowledges it without writing a metadata record: the change is invisible to the other
    /// brokers and is gone after a controller failover or a restart. Caught by the simulator's
    /// config checkers (`checker::configs`: config-diverged, config-lost) and its image replay
    /// checker (`checker::images`) in `--scenario configs`.
    ConfigNotLogged = 15,
    /// Retention by size deletes the oldest segment while the log is at least
    /// `retention.bytes` long *before* the deletion (Kafka's rule: after it), so it may leave the
    /// log one segment short of `retention.bytes`. Caught by the simulator's retention checker
    /// (`checker::retention`, retention-early) in `--scenario retention`.
    RetentionSizeOffByOne = 16,
    /// The partition leader checks a producer's batch against the broker's default
    /// `max.message.bytes` (1 MiB), not the topic's: a topic's smaller limit is shown by
    /// DescribeConfigs but not in force. Caught by the simulator's config checker
    /// (`checker::configs`, config-not-in-force) in `--scenario configs`.
    MaxMessageBytesIgnored = 17,
    /// Recovery takes a partition's log start from its first segment's base offset and
    /// forgets the DeleteRecords log start its checkpoint holds, as if that had never been
    /// stored: after a crash (or a reopen after a failed fsync) the log start clients see
    /// moves back below an acknowledged DeleteRecords, and records it deleted are served
    /// again. Caught by the simulator's retention checker (`checker::retention`,
    /// log-start-regressed) in `--scenario retention`, whose clients call DeleteRecords.
    LogStartNotRecovered = 18,
    /// A partition's log keeps the `cleanup.policy` it was opened with when the topic's config
    /// changes (every other setting follows): compaction switched on after creation never runs
    /// until the broker restarts. Caught by the simulator's compaction checker
    /// (`checker::compaction`, compaction-not-in-force) in `--scenario configs`.
    CompactionIgnored = 19,
    /// The legacy AlterConfigs (API 33) merges the configs it names into the topic's overrides
    /// like IncrementalAlterConfigs, instead of replacing them all (Kafka: every override it
    /// does not name goes back to the default). Caught by the simulator's config checker
    /// (`checker::configs`, config-lost: an override a replace removed is still described) in
    /// `--scenario configs`, whose config processes sometimes use the legacy API.
    LegacyAlterConfigsMerges = 20,
    /// The controller writes a topic config change of several configs as one metadata record
    /// per config, each its own log entry, the next one at the first tick after the one before
    /// is applied, and answers once the last is applied: a failover in between leaves the
    /// change applied in part (its client sees NOT_CONTROLLER or a timeout), and a concurrent
    /// change can land between its configs. Caught by the simulator's config checkers
    /// (`checker::config_atomicity`, config-not-atomic) in `--scenario configs`.
    AlterConfigsNotAtomic = 21,
    /// A broker hands its partitions' logs the broker default `segment.bytes`, not the topic's
    /// override: DescribeConfigs (built from the metadata image) shows the override, but the
    /// logs roll at the default size. Caught by the simulator's config-effects checker
    /// (`checker::config_effects`, segment-bytes-not-in-force) in `--scenario configs`.
    SegmentBytesIgnored = 22,
    /// A broker hands its partitions' logs the broker default `retention.ms` and
    /// `retention.bytes`, not the topic's overrides: described, but not in force. Caught by the
    /// simulator's config-effects checker (`checker::config_effects`, retention-not-in-force)
    /// in `--scenario configs`.
    RetentionOverrideIgnored = 23,
    /// The cleaner's rewrite counts a key's latest record as superseded by itself (an
    /// off-by-one in the offset map's comparison: `latest >= offset` for `latest > offset`), so
    /// every keyed record in the cleaned range goes, the latest of each key with the rest.
    /// Caught by the simulator's compaction checker (`checker::compaction`,
    /// compaction-lost-latest) in `--scenario configs`.
    CleanerDropsLatest = 24,
    /// A follower's retention considers every sealed segment, ignoring its high watermark,
    /// durable point and checkpoint, as if whatever its leader sent were committed, so it
    /// deletes entries not yet committed. The log's own assertions that restate those bounds,
    /// and Raft's refusal to compact past its commit, are skipped with it, so that the retention
    /// checker is the one to see it: the simulator's retention checker (`checker::retention`,
    /// retention-past-hw) in `--scenario retention-cluster`.
    RetentionIgnoresHighWatermark = 25,
}

impl Bug {
    pub const ALL: [Bug; 25] = [
        Bug::AckBeforeFsync,
        Bug::SkipRecoveryCrc,
        Bug::RecoveryOffByOne,
        Bug::FetchPastHighWatermark,
        Bug::IdempotenceOff,
        Bug::CommitOldTerm,
        Bug::NoDivergentTruncation,
        Bug::GroupDoubleAssign,
        Bug::OffsetMapOffByOne,
        Bug::VoteTwice,
        Bug::VoteIgnoresLog,
        Bug::StaleGenerationCommit,
        Bug::NoEpochFencing,
        Bug::NoRepair,
        Bug::ConfigNotLogged,
        Bug::RetentionSizeOffByOne,
        Bug::MaxMessageBytesIgnored,
        Bug::LogStartNotRecovered,
        Bug::CompactionIgnored,
        Bug::LegacyAlterConfigsMerges,
        Bug::AlterConfigsNotAtomic,
        Bug::SegmentBytesIgnored,
        Bug::RetentionOverrideIgnored,
        Bug::CleanerDropsLatest,
        Bug::RetentionIgnoresHighWatermark,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Bug::AckBeforeFsync => "ack-before-fsync",
            Bug::SkipRecoveryCrc => "skip-recovery-crc",
            Bug::RecoveryOffByOne => "recovery-off-by-one",
            Bug::FetchPastHighWatermark => "fetch-past-high-watermark",
            Bug::IdempotenceOff => "idempotence-off",
            Bug::CommitOldTerm => "commit-old-term",
            Bug::NoDivergentTruncation => "no-divergent-truncation",
            Bug::GroupDoubleAssign => "group-double-assign",
            Bug::OffsetMapOffByOne => "offset-map-off-by-one",
            Bug::VoteTwice => "vote-twice",
            Bug::VoteIgnoresLog => "vote-ignores-log",
            Bug::StaleGenerationCommit => "stale-generation-commit",
            Bug::NoEpochFencing => "no-epoch-fencing",
            Bug::NoRepair => "no-repair",
            Bug::ConfigNotLogged => "config-not-logged",
            Bug::RetentionSizeOffByOne => "retention-size-off-by-one",
            Bug::MaxMessageBytesIgnored => "max-message-bytes-ignored",
            Bug::LogStartNotRecovered => "log-start-not-recovered",
            Bug::CompactionIgnored => "compaction-ignored",
            Bug::LegacyAlterConfigsMerges => "legacy-alter-configs-merges",
            Bug::AlterConfigsNotAtomic => "alter-configs-not-atomic",
            Bug::SegmentBytesIgnored => "segment-bytes-ignored",
            Bug::RetentionOverrideIgnored => "retention-override-ignored",
            Bug::CleanerDropsLatest => "cleaner-drops-latest",
            Bug::RetentionIgnoresHighWatermark => "retention-ignores-high-watermark",
        }
    }

    pub fn from_name(name: &str) -> Option<Bug> {
        Bug::ALL.into_iter().find(|b| b.name() == name)
    }
}

/// Which bug (if any) a state machine plants: part of its configuration
/// ([`RaftConfig`](crate::raft::RaftConfig), [`LogConfig`](crate::log::LogConfig),
/// [`CoordinatorConfig`](crate::group::CoordinatorConfig)), so each simulation run chooses its own
/// and two runs in one process never share one.
///
/// Without the `planted-bugs` feature it holds nothing and [`Planted::is`] is a constant `false`,
/// so every planted branch compiles away.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Planted {
    #[cfg(feature = "planted-bugs")]
    bug: Option<Bug>,
}

impl Planted {
    /// No bug: what every real configuration holds.
    pub const NONE: Planted = Planted {
        #[cfg(feature = "planted-bugs")]
        bug: None,
    };

    /// Plants `bug` (or none).
    #[cfg(feature = "planted-bugs")]
    pub const fn new(bug: Option<Bug>) -> Planted {
        Planted { bug }
    }

    /// The planted bug, if any.
    #[cfg(feature = "planted-bugs")]
    pub const fn bug(self) -> Option<Bug> {
        self.bug
    }

    /// Whether `bug` is planted.
    #[cfg(feature = "planted-bugs")]
    #[inline]
    pub fn is(self, bug: Bug) -> bool {
        self.bug == Some(bug)
    }

    /// Whether `bug` is planted: never, without the `planted-bugs` feature.
    #[cfg(not(feature = "planted-bugs"))]
    #[inline(always)]
    pub const fn is(self, _bug: Bug) -> bool {
        false
    }
}
