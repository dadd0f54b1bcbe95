//! History checkers: Jepsen's Kafka anomaly set (`jepsen.tests.kafka`), as pure functions of a
//! [`History`].
//!
//! [`check`] builds, for every key, the *version order*: each offset known to hold a value, with
//! the set of values seen there. The evidence is every `(offset, value)` any poll or final read
//! returned, plus every acknowledged send that promises its offset: `acks=all` sends, and `acks=1`
//! sends whose value some read confirmed. The dense index of an offset is its rank among the known
//! offsets, so an offset where no value is known is not a skip here (whether such an offset may
//! exist at all is [`offsets`]' question). Reads count whatever the poll's outcome: a poll
//! records only what it received.
//!
//! Anomalies, per key, by the names Jepsen reports them under ([`AnomalyKind::name`]):
//! - inconsistent-offsets: an offset holds more than one distinct value.
//! - duplicate: a value sits at more than one offset.
//! - lost-write: an `Ok` `acks=all` send at an offset at or below the highest offset any read
//!   returned, whose value no read returned.
//! - unseen: an `Ok` `acks=all` send above that offset, never read, that completed before an `Ok`
//!   final read began. Without such a final read these are only counted in [`Stats::unseen`].
//! - nonmonotonic-send: one process's successive acknowledged sends to a key (those that are
//!   evidence, as above) whose offsets do not strictly increase.
//! - poll-skip / nonmonotonic-poll: one process's successive reads of a key, across polls since
//!   its last assign and within one poll (Jepsen's int-poll-skip and int-nonmonotonic-poll), must
//!   step to exactly the next known offset; jumping over known offsets is a skip, staying or
//!   going back is nonmonotonic. A final read is checked as a fresh process. Any assign that may
//!   have taken effect (`Ok` or `Info`) restarts the process's tracking of every key; Jepsen
//!   keeps it for keys that stay assigned (the Java client keeps their positions), but a client
//!   may as well restart from a committed offset, so only an assign-free stretch is judged.
//! - G1a (aborted read): a read value whose send definitely failed.
//! - unknown-value: a read value that no send in the history wrote (Jepsen stops with
//!   `:no-writer-of` here; it means corruption or a broken harness).
//! - offset-gap ([`offsets`], Sluice's own, not Jepsen's): the offsets a consumer reads are
//!   contiguous from the log start — the first record of a read from the earliest offset sits
//!   at the log start, each next record at the previous offset + 1 — except where compaction
//!   removed a superseded record or a transaction marker sits ([`offsets::OffsetFacts`]).
//!
//! - zombie-write ([`fencing`], Sluice's own): a value sent under an idempotent producer's epoch
//!   after a newer epoch of the same producer id was acknowledged (`acks=all`) on that
//!   partition was read: the broker must have fenced that older incarnation.
//!
//! Topic configs ([`crate::history::ConfigOp`]) have theirs in [`configs`]: every broker
//! describes the same overrides after the heal (config-diverged), no acknowledged change is lost
//! and no value appears that no change wrote (config-lost), and `max.message.bytes` is in force
//! (config-not-in-force). [`config_effects`] judges replicas' segment layouts: segments roll at
//! the topic's `segment.bytes` (segment-bytes-not-in-force) and nothing its retention made due
//! outlives a retention check (retention-not-in-force). [`images`] compares a node's metadata
//! image with a replay of its metadata log from scratch.
//!
//! Consumer groups ([`crate::history::GroupOp`]) have their own checkers, in [`groups`]: one owner
//! per partition and generation, committed offsets that never go back or get lost, none above
//! the high watermark, members that resume exactly at the committed offset, and commits from a
//! generation the group had left behind that are fenced and never seen.
//!
//! Losing acknowledged `acks=1` or `acks=0` writes in a crash is allowed on a single node, so
//! those are counted ([`Stats::acks1_lost`]) and never reported as lost writes. For the same
//! reason an `acks=1` acknowledgement alone is not evidence of the log's content: after a crash
//! the offset it named may legitimately hold another value. `acks=0` offsets are never used.

pub mod compaction;
pub mod config_atomicity;
pub mod config_effects;
pub mod configs;
pub mod fencing;
pub mod groups;
pub mod images;
pub mod offsets;
pub mod replicas;
pub mod retention;

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;
use std::fmt::Write as _;

use crate::history::{Acks, GroupOp, History, Key, OpKind, Outcome, Value};

/// At most this many anomalies of each kind are kept in [`CheckReport::anomalies`]; all of them
/// are counted in [`CheckReport::anomaly_counts`]. A broken run can produce one per poll, and a
/// report is meant to be read.
pub const ANOMALIES_KEPT_PER_KIND_MAX: usize = 100;

/// At most this many offsets or values are listed in one anomaly's detail.
const DETAIL_ITEMS_MAX: usize = 8;

/// The kinds of anomaly [`check`] reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AnomalyKind {
    LostWrite,
    Duplicate,
    InconsistentOffsets,
    NonmonotonicSend,
    NonmonotonicPoll,
    PollSkip,
    Unseen,
    /// Jepsen's G1a.
    AbortedRead,
    UnknownValue,
    /// Offsets a consumer read that are not contiguous from the log start ([`offsets`]).
    OffsetGap,
    /// A value an older epoch of an idempotent producer sent after a newer epoch was
    /// acknowledged on the partition, read all the same ([`fencing`]).
    ZombieWrite,
    /// Retention deleted a segment neither due by time nor by size ([`retention`]).
    RetentionEarly,
    /// Retention deleted past the high watermark, the active segment, or moved the log start
    /// wrong ([`retention`]).
    RetentionPastHighWatermark,
    /// A client was told a log start that no lawful retention deletion produced
    /// ([`retention`]).
    LogStartUnjustified,
    /// A client was told a lower log start than a fetch completed before it was invoked (one
    /// node only; [`retention`]).
    LogStartRegressed,
    /// A partition handed to two members of a group in one generation.
    DoubleOwner,
    /// An acknowledged commit below one acknowledged before it was invoked.
    CommitRegressed,
    /// OffsetFetch returned less than a commit acknowledged before it was invoked.
    LostCommit,
    /// OffsetFetch returned an offset no commit wrote.
    UnknownCommit,
    /// A committed offset above the partition's high watermark.
    CommitAboveHighWatermark,
    /// A member that did not resume consuming at the committed offset.
    WrongStart,
    /// A commit from a generation the group had left behind (a zombie's) that the coordinator
    /// acknowledged, or refused with an error that does not fence its sender.
    LateCommitAccepted,
    /// OffsetFetch returned an offset that only late commits wrote.
    LateCommitVisible,
    /// Brokers that describe different overrides of one topic after the cluster healed.
    ConfigDiverged,
    /// A broker's final value of a topic config that no change allows: an acknowledged change
    /// was lost, or a value appeared that no change wrote.
    ConfigLost,
    /// A broker's final overrides of a topic that no set of whole changes explains (a change
    /// of several configs applied in part), though each value alone is allowed
    /// ([`config_atomicity`]).
    ConfigNotAtomic,
    /// A produce that the topic's `max.message.bytes` in force should have refused was
    /// appended, or one within it was refused as too large.
    ConfigNotInForce,
    /// A replica whose stored log, after the cleaner had its chance, still holds every
    /// superseded record the compaction probe wrote ([`compaction`]).
    CompactionNotInForce,
    /// A replica that no longer holds the latest value of a key of a compacted topic
    /// ([`compaction`]).
    CompactionLostLatest,
    /// A replica's log rolled segments at another size than the topic's `segment.bytes` in
    /// force ([`config_effects`]).
    SegmentBytesNotInForce,
    /// A replica kept a segment the topic's `retention.ms` or `retention.bytes` in force made
    /// due, past a retention check ([`config_effects`]).
    RetentionNotInForce,
}

impl AnomalyKind {
    /// Every kind, in report order.
    pub const ALL: [AnomalyKind; 31] = [
        AnomalyKind::LostWrite,
        AnomalyKind::Duplicate,
        AnomalyKind::InconsistentOffsets,
        AnomalyKind::NonmonotonicSend,
        AnomalyKind::NonmonotonicPoll,
        AnomalyKind::PollSkip,
        AnomalyKind::Unseen,
        AnomalyKind::AbortedRead,
        AnomalyKind::UnknownValue,
        AnomalyKind::OffsetGap,
        AnomalyKind::ZombieWrite,
        AnomalyKind::RetentionEarly,
        AnomalyKind::RetentionPastHighWatermark,
        AnomalyKind::LogStartUnjustified,
        AnomalyKind::LogStartRegressed,
        AnomalyKind::DoubleOwner,
        AnomalyKind::CommitRegressed,
        AnomalyKind::LostCommit,
        AnomalyKind::UnknownCommit,
        AnomalyKind::CommitAboveHighWatermark,
        AnomalyKind::WrongStart,
        AnomalyKind::LateCommitAccepted,
        AnomalyKind::LateCommitVisible,
        AnomalyKind::ConfigDiverged,
        AnomalyKind::ConfigLost,
        AnomalyKind::ConfigNotAtomic,
        AnomalyKind::ConfigNotInForce,
        AnomalyKind::CompactionNotInForce,
        AnomalyKind::CompactionLostLatest,
        AnomalyKind::SegmentBytesNotInForce,
        AnomalyKind::RetentionNotInForce,
    ];

    /// Whether the kind is one of the consumer-group checkers' ([`groups`]).
    pub fn is_group(self) -> bool {
        (AnomalyKind::DoubleOwner..=AnomalyKind::LateCommitVisible).contains(&self)
    }

    /// Whether the kind is one of the topic-config checkers' ([`configs`]).
    pub fn is_config(self) -> bool {
        self >= AnomalyKind::ConfigDiverged
    }

    /// Whether the kind is one of the retention checker's ([`retention`]).
    pub fn is_retention(self) -> bool {
        matches!(
            self,
            AnomalyKind::RetentionEarly
                | AnomalyKind::RetentionPastHighWatermark
                | AnomalyKind::LogStartUnjustified
                | AnomalyKind::LogStartRegressed
        )
    }

    /// Jepsen's name for the anomaly.
    pub fn name(self) -> &'static str {
        match self {
            AnomalyKind::LostWrite => "lost-write",
            AnomalyKind::Duplicate => "duplicate",
            AnomalyKind::InconsistentOffsets => "inconsistent-offsets",
            AnomalyKind::NonmonotonicSend => "nonmonotonic-send",
            AnomalyKind::NonmonotonicPoll => "nonmonotonic-poll",
            AnomalyKind::PollSkip => "poll-skip",
            AnomalyKind::Unseen => "unseen",
            AnomalyKind::AbortedRead => "G1a",
            AnomalyKind::UnknownValue => "unknown-value",
            AnomalyKind::OffsetGap => "offset-gap",
            AnomalyKind::ZombieWrite => "zombie-write",
            AnomalyKind::RetentionEarly => "retention-early",
            AnomalyKind::RetentionPastHighWatermark => "retention-past-hw",
            AnomalyKind::LogStartUnjustified => "log-start-unjustified",
            AnomalyKind::LogStartRegressed => "log-start-regressed",
            AnomalyKind::DoubleOwner => "group-double-owner",
            AnomalyKind::CommitRegressed => "group-commit-regressed",
            AnomalyKind::LostCommit => "group-lost-commit",
            AnomalyKind::UnknownCommit => "group-unknown-commit",
            AnomalyKind::CommitAboveHighWatermark => "group-commit-above-hw",
            AnomalyKind::WrongStart => "group-wrong-start",
            AnomalyKind::LateCommitAccepted => "group-late-commit-accepted",
            AnomalyKind::LateCommitVisible => "group-late-commit-visible",
            AnomalyKind::ConfigDiverged => "config-diverged",
            AnomalyKind::ConfigLost => "config-lost",
            AnomalyKind::ConfigNotAtomic => "config-not-atomic",
            AnomalyKind::ConfigNotInForce => "config-not-in-force",
            AnomalyKind::CompactionNotInForce => "compaction-not-in-force",
            AnomalyKind::CompactionLostLatest => "compaction-lost-latest",
            AnomalyKind::SegmentBytesNotInForce => "segment-bytes-not-in-force",
            AnomalyKind::RetentionNotInForce => "retention-not-in-force",
        }
    }
}

impl fmt::Display for AnomalyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One anomaly: what, where, a sentence saying why, and the operations involved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Anomaly {
    pub kind: AnomalyKind,
    pub key: Key,
    pub detail: String,
    /// Indices into [`History::ops`] of the offending operations, for highlighting in a timeline.
    pub ops: Vec<usize>,
}

impl Anomaly {
    /// One line of JSON (no trailing newline):
    /// `{"kind":"lost-write","topic":"t","partition":0,"detail":"…","ops":[3,9]}`.
    pub fn to_json_line(&self) -> String {
        let mut line = String::with_capacity(64 + self.detail.len());
        line.push_str("{\"kind\":");
        push_json_string(&mut line, self.kind.name());
        line.push_str(",\"topic\":");
        push_json_string(&mut line, &self.key.topic);
        let _ = write!(line, ",\"partition\":{}", self.key.partition);
        line.push_str(",\"detail\":");
        push_json_string(&mut line, &self.detail);
        line.push_str(",\"ops\":[");
        for (i, op) in self.ops.iter().enumerate() {
            if i > 0 {
                line.push(',');
            }
            let _ = write!(line, "{op}");
        }
        line.push_str("]}");
        line
    }
}

impl fmt::Display for Anomaly {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: {} (ops {:?})",
            self.kind, self.key, self.detail, self.ops
        )
    }
}

/// Sends of one `acks` level by outcome.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SendCounts {
    pub ok: u64,
    pub fail: u64,
    pub info: u64,
}

/// Counts that describe the run; none of them is an anomaly.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub sends_acks0: SendCounts,
    pub sends_acks1: SendCounts,
    pub sends_acks_all: SendCounts,
    /// Poll operations (final reads are counted apart).
    pub polls: u64,
    pub final_reads: u64,
    pub assigns: u64,
    /// `(offset, value)` pairs returned by polls and final reads, repeats included.
    pub values_read: u64,
    /// Keys that some send or read touched.
    pub keys: u64,
    /// Acknowledged `acks=1`/`acks=0` values never read although they should have been: at or
    /// below the highest offset read (`acks=1`), or sent before an `Ok` final read (both).
    /// Allowed after a crash on a single node; should be zero in a run without crashes.
    pub acks1_lost: u64,
    /// Acknowledged `acks=1`/`acks=0` values never read, with no read that should have seen them.
    pub acks1_unseen: u64,
    /// Acknowledged `acks=all` values never read and above the highest offset read, all of them:
    /// those that completed before an `Ok` final read began are also reported as unseen
    /// anomalies; the rest (no final read, or sent after it began) only appear here.
    pub unseen: u64,
    /// Reads whose first offset the offsets checker knew in advance (from the log start, or a
    /// group member's fetched position) and that returned a record: how much `offset-gap` had
    /// to bite on at the start of a log.
    pub reads_from_known_start: u64,
    /// Gaps (runs of missing offsets) in a read that transaction markers or compaction
    /// explained.
    pub offset_gaps_excused: u64,
    /// Sends by an idempotent producer invoked after a newer epoch of its producer id was
    /// acknowledged (`acks=all`) on the partition: the ones the broker must fence, and how
    /// much zombie-write had to bite on (displayed only when non-zero).
    pub sends_after_fence: u64,
    /// Retention runs that deleted segments, on any replica ([`retention`]; the retention
    /// counts are displayed only when non-zero).
    pub retention_deletions: u64,
    pub retention_segments_deleted: u64,
    /// Log starts clients' fetches were told, judged by log-start-unjustified.
    pub log_starts_observed: u64,
    /// Acknowledged values never read that sat below a log start lawful retention (or a
    /// DeleteRecords) produced.
    pub retention_excused: u64,
    /// Acknowledged DeleteRecords calls, judged by log-start-regressed and
    /// log-start-unjustified.
    pub delete_records_ok: u64,
    /// Consumer-group operations of any kind (none: the group counts are not displayed).
    pub group_ops: u64,
    /// JoinGroup + SyncGroup rounds, whatever their outcome.
    pub group_joins: u64,
    pub group_commits: SendCounts,
    pub group_offset_fetches: u64,
    pub group_resets: u64,
    pub group_leaves: u64,
    /// Members killed without LeaveGroup.
    pub group_crashes: u64,
    /// Commits from a generation the group had left behind ([`groups`]' *late* commits), by
    /// outcome: what the late-commit checkers had to bite on.
    pub group_late_commits: SendCounts,
    /// Topic-config operations of any kind (none: the config counts are not displayed).
    pub config_ops: u64,
    /// IncrementalAlterConfigs and legacy AlterConfigs by outcome.
    pub config_alters: SendCounts,
    /// Of those, legacy AlterConfigs (replace every override).
    pub config_replaces: u64,
    /// DescribeConfigs answered after the heal, and the (topic, config) pairs whose final value
    /// was judged against the changes.
    pub config_describes: u64,
    pub config_values_checked: u64,
    /// Final describes whose combination of values was judged as a whole
    /// ([`config_atomicity`]), and those left unjudged (too many combinations).
    pub config_atomicity_judged: u64,
    pub config_atomicity_unjudged: u64,
    /// Produces that probed `max.message.bytes` after the heal.
    pub config_size_probes: u64,
    /// Compaction probes after the heal ([`compaction`]), the replicas judged (and those not:
    /// behind the probe's last acknowledged record), and the probe's superseded records the
    /// judged replicas had removed or still held.
    pub compaction_probes: u64,
    pub compaction_replicas_judged: u64,
    pub compaction_replicas_behind: u64,
    pub compaction_superseded_removed: u64,
    pub compaction_superseded_held: u64,
    /// Replicas whose segment layout was judged against the topic's `segment.bytes` and
    /// retention in force, and those left unjudged because their log ended below another's
    /// ([`config_effects`]).
    pub config_effect_replicas: u64,
    pub config_effect_replicas_behind: u64,
}

impl Stats {
    pub fn sends(&self, acks: Acks) -> &SendCounts {
        match acks {
            Acks::Zero => &self.sends_acks0,
            Acks::One => &self.sends_acks1,
            Acks::All => &self.sends_acks_all,
        }
    }

    fn sends_mut(&mut self, acks: Acks) -> &mut SendCounts {
        match acks {
            Acks::Zero => &mut self.sends_acks0,
            Acks::One => &mut self.sends_acks1,
            Acks::All => &mut self.sends_acks_all,
        }
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sends ok/fail/info")?;
        for acks in [Acks::Zero, Acks::One, Acks::All] {
            let counts = self.sends(acks);
            write!(
                f,
                " acks={} {}/{}/{}",
                acks.name(),
                counts.ok,
                counts.fail,
                counts.info
            )?;
        }
        write!(
            f,
            ", polls: {}, final-reads: {}, assigns: {}, values-read: {}, keys: {}, \
             acks1-lost: {}, acks1-unseen: {}, acks-all-unseen: {}, reads-from-known-start: {}, \
             offset-gaps-excused: {}",
            self.polls,
            self.final_reads,
            self.assigns,
            self.values_read,
            self.keys,
            self.acks1_lost,
            self.acks1_unseen,
            self.unseen,
            self.reads_from_known_start,
            self.offset_gaps_excused,
        )?;
        if self.sends_after_fence > 0 {
            write!(f, ", sends-after-fence: {}", self.sends_after_fence)?;
        }
        if self.retention_deletions > 0 || self.log_starts_observed > 0 {
            write!(
                f,
                ", retention deletions: {}, segments deleted: {}, log starts observed: {}, \
                 retention-excused: {}",
                self.retention_deletions,
                self.retention_segments_deleted,
                self.log_starts_observed,
                self.retention_excused,
            )?;
        }
        if self.delete_records_ok > 0 {
            write!(f, ", delete-records ok: {}", self.delete_records_ok)?;
        }
        if self.group_ops > 0 {
            write!(
                f,
                ", group joins: {}, commits ok/fail/info {}/{}/{}, offset-fetches: {}, resets: {}, \
                 leaves: {}, member crashes: {}, late commits ok/fail/info {}/{}/{}",
                self.group_joins,
                self.group_commits.ok,
                self.group_commits.fail,
                self.group_commits.info,
                self.group_offset_fetches,
                self.group_resets,
                self.group_leaves,
                self.group_crashes,
                self.group_late_commits.ok,
                self.group_late_commits.fail,
                self.group_late_commits.info,
            )?;
        }
        if self.config_ops > 0 {
            write!(
                f,
                ", config alters ok/fail/info {}/{}/{} (legacy replaces {}), describes: {}, \
                 values checked: {}, combinations judged/unjudged: {}/{}, size probes: {}",
                self.config_alters.ok,
                self.config_alters.fail,
                self.config_alters.info,
                self.config_replaces,
                self.config_describes,
                self.config_values_checked,
                self.config_atomicity_judged,
                self.config_atomicity_unjudged,
                self.config_size_probes,
            )?;
        }
        if self.compaction_probes > 0 {
            write!(
                f,
                ", compaction probes: {}, replicas judged/behind: {}/{}, superseded records \
                 removed/held: {}/{}",
                self.compaction_probes,
                self.compaction_replicas_judged,
                self.compaction_replicas_behind,
                self.compaction_superseded_removed,
                self.compaction_superseded_held,
            )?;
        }
        if self.config_effect_replicas + self.config_effect_replicas_behind > 0 {
            write!(
                f,
                ", layouts judged: {}, behind: {}",
                self.config_effect_replicas, self.config_effect_replicas_behind,
            )?;
        }
        Ok(())
    }
}

/// The verdict on a history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckReport {
    /// Sorted by kind (in [`AnomalyKind::ALL`] order), then key, then discovery order; at most
    /// [`ANOMALIES_KEPT_PER_KIND_MAX`] per kind.
    pub anomalies: Vec<Anomaly>,
    /// Every kind, with how many anomalies of it were found (including any not kept).
    pub anomaly_counts: BTreeMap<AnomalyKind, u64>,
    pub stats: Stats,
}

impl CheckReport {
    /// True when no anomaly of any kind was found.
    pub fn is_valid(&self) -> bool {
        self.anomaly_counts.values().all(|&count| count == 0)
    }

    pub fn count(&self, kind: AnomalyKind) -> u64 {
        self.anomaly_counts.get(&kind).copied().unwrap_or(0)
    }
}

impl fmt::Display for CheckReport {
    /// `lost-write: 0, duplicate: 0, …, unknown-value: 0; sends ok/fail/info …` (the group
    /// kinds only for a history with group operations).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = AnomalyKind::ALL.iter().filter(|k| {
            let retention =
                self.stats.retention_deletions > 0 || self.stats.log_starts_observed > 0;
            (!k.is_group() || self.stats.group_ops > 0)
                && (!k.is_retention() || retention)
                && (!k.is_config() || self.stats.config_ops > 0)
                || self.count(**k) > 0
        });
        for (i, kind) in shown.enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{}: {}", kind, self.count(*kind))?;
        }
        write!(f, "; {}", self.stats)
    }
}

/// What the checker may assume about the system that produced a history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckOptions {
    /// An `acks=1` acknowledgement names where the value is, once any read saw the value: true
    /// of one broker, which never changes leader. With replicas a deposed leader can still
    /// acknowledge an `acks=1` append at an offset the new leader then reuses, while an
    /// idempotent retry put the value elsewhere; then only a read of the value at the
    /// acknowledged offset makes the acknowledgement evidence.
    pub acks1_offsets_final: bool,
}

impl Default for CheckOptions {
    fn default() -> CheckOptions {
        CheckOptions {
            acks1_offsets_final: true,
        }
    }
}

/// Checks a whole history of one broker ([`CheckOptions::default`]).
pub fn check(history: &History) -> CheckReport {
    check_with(history, CheckOptions::default())
}

/// Checks a whole history of a system whose logs all start at 0, with no compacted partition
/// and no transaction markers ([`offsets::OffsetFacts::default`]).
pub fn check_with(history: &History, options: CheckOptions) -> CheckReport {
    check_with_facts(history, options, &offsets::OffsetFacts::default())
}

/// Checks a whole history, with what it cannot tell about offsets (moved log starts, compacted
/// partitions, transaction markers) from `offset_facts`. Runs in O(n log n) in the number of
/// operations and values read.
pub fn check_with_facts(
    history: &History,
    options: CheckOptions,
    offset_facts: &offsets::OffsetFacts,
) -> CheckReport {
    let mut stats = Stats::default();
    let mut facts = gather(history, &mut stats);
    let mut findings = Findings::default();

    let final_read_invoke_ms = history
        .ops
        .iter()
        .filter_map(|op| match &op.kind {
            OpKind::FinalRead {
                outcome: Outcome::Ok(()),
                ..
            } => Some(op.invoke_ms),
            _ => None,
        })
        .max();

    let orders: Vec<KeyOrder> = facts
        .keys
        .iter_mut()
        .map(|key_facts| {
            let retained_below = offset_facts
                .retention
                .get(key_facts.key)
                .map_or(0, retention::Retained::lawful_start);
            check_key(
                key_facts,
                retained_below,
                final_read_invoke_ms,
                options,
                &mut stats,
                &mut findings,
            )
        })
        .collect();
    assert_eq!(orders.len(), facts.keys.len());

    check_process_order(history, &facts, &orders, &mut findings);
    fencing::check(history, &mut stats, &mut findings);
    groups::check(history, &mut stats, &mut findings);
    configs::check(history, &mut stats, &mut findings);
    offsets::check(history, offset_facts, &mut stats, &mut findings);
    retention::check(history, &offset_facts.retention, &mut stats, &mut findings);
    config_effects::check(
        history,
        &offset_facts.config_effects,
        &mut stats,
        &mut findings,
    );
    findings.into_report(stats)
}

/// What one send to a key did.
#[derive(Clone, Copy, Debug)]
struct SendFact {
    op: usize,
    acks: Acks,
    outcome: SendOutcome,
    complete_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SendOutcome {
    Ok { offset: u64 },
    Fail,
    Info,
}

/// Everything the history says about one key, before analysis.
struct KeyFacts<'h> {
    key: &'h Key,
    /// Each value's one send (values are unique per key).
    sends: BTreeMap<Value, SendFact>,
    /// Every `(offset, value, op)` any poll or final read returned.
    reads: Vec<(u64, Value, usize)>,
}

struct Facts<'h> {
    /// Key to its position in `keys`.
    ids: BTreeMap<&'h Key, usize>,
    keys: Vec<KeyFacts<'h>>,
}

impl<'h> Facts<'h> {
    fn id(&mut self, key: &'h Key) -> usize {
        if let Some(&id) = self.ids.get(key) {
            return id;
        }
        let id = self.keys.len();
        self.ids.insert(key, id);
        self.keys.push(KeyFacts {
            key,
            sends: BTreeMap::new(),
            reads: Vec::new(),
        });
        assert_eq!(self.ids.len(), self.keys.len());
        id
    }
}

/// The analysed version order of one key.
struct KeyOrder {
    /// Every offset known to hold a value, ascending; an offset's position is its dense index.
    offsets: Vec<u64>,
    /// Values some read returned, ascending, each with the first op that read it.
    read_values: Vec<(Value, usize)>,
    /// Every (value, offset) some read returned, ascending.
    read_at: Vec<(Value, u64)>,
    options: CheckOptions,
}

impl KeyOrder {
    fn was_read(&self, value: Value) -> bool {
        self.read_values
            .binary_search_by_key(&value, |&(v, _)| v)
            .is_ok()
    }

    fn was_read_at(&self, value: Value, offset: u64) -> bool {
        self.read_at.binary_search(&(value, offset)).is_ok()
    }

    fn dense_index(&self, offset: u64) -> usize {
        let index = self.offsets.binary_search(&offset);
        // Every read offset is part of the version order by construction.
        index.expect("a read offset is missing from the version order")
    }
}

/// First pass: sort every send and read by key, and count.
fn gather<'h>(history: &'h History, stats: &mut Stats) -> Facts<'h> {
    let mut facts = Facts {
        ids: BTreeMap::new(),
        keys: Vec::new(),
    };
    for (position, op) in history.ops.iter().enumerate() {
        assert_eq!(
            op.index, position,
            "history op indices must match positions"
        );
        match &op.kind {
            OpKind::Send {
                key,
                value,
                acks,
                outcome,
                ..
            } => {
                let counts = stats.sends_mut(*acks);
                let outcome = match outcome {
                    Outcome::Ok(offset) => {
                        counts.ok += 1;
                        SendOutcome::Ok { offset: *offset }
                    }
                    Outcome::Fail(_) => {
                        counts.fail += 1;
                        SendOutcome::Fail
                    }
                    Outcome::Info(_) => {
                        counts.info += 1;
                        SendOutcome::Info
                    }
                };
                let id = facts.id(key);
                let send = SendFact {
                    op: op.index,
                    acks: *acks,
                    outcome,
                    complete_ms: op.complete_ms,
                };
                let previous = facts.keys[id].sends.insert(*value, send);
                assert!(
                    previous.is_none(),
                    "history invariant broken: value {value} sent twice to {key}"
                );
            }
            OpKind::Poll { reads, .. } | OpKind::FinalRead { reads, .. } => {
                if matches!(op.kind, OpKind::Poll { .. }) {
                    stats.polls += 1;
                } else {
                    stats.final_reads += 1;
                }
                for (key, pairs) in reads {
                    let id = facts.id(key);
                    stats.values_read += pairs.len() as u64;
                    let key_reads = &mut facts.keys[id].reads;
                    key_reads.extend(
                        pairs
                            .iter()
                            .map(|&(offset, value)| (offset, value, op.index)),
                    );
                }
            }
            OpKind::Assign { .. } => stats.assigns += 1,
            // Counted by the group checkers.
            OpKind::Group(_) | OpKind::Config(_) => {}
        }
    }
    stats.keys = facts.keys.len() as u64;
    facts
}

/// Builds one key's version order and reports the anomalies that need only that order:
/// inconsistent-offsets, duplicate, lost-write, unseen, G1a and unknown-value.
fn check_key(
    facts: &mut KeyFacts<'_>,
    retained_below: u64,
    final_read_invoke_ms: Option<u64>,
    options: CheckOptions,
    stats: &mut Stats,
    findings: &mut Findings,
) -> KeyOrder {
    let key = facts.key;

    // Reads, one entry per (offset, value), each with the first op that read it.
    // Taken: from here on only the deduplicated evidence is needed.
    let mut reads = std::mem::take(&mut facts.reads);
    reads.sort_unstable();
    reads.dedup_by(|later, earlier| later.0 == earlier.0 && later.1 == earlier.1);
    // The highest offset read, with the first op that read it there.
    let read_max = reads.last().map(|&(offset, _, op)| (offset, op));

    let mut read_values: Vec<(Value, usize)> = reads.iter().map(|&(_, v, op)| (v, op)).collect();
    read_values.sort_unstable();
    read_values.dedup_by_key(|&mut (value, _)| value);
    let mut read_at: Vec<(Value, u64)> = reads.iter().map(|&(o, v, _)| (v, o)).collect();
    read_at.sort_unstable();
    let mut order = KeyOrder {
        offsets: Vec::new(),
        read_values,
        read_at,
        options,
    };

    // The version order's evidence: reads, and the acknowledgements that promise an offset.
    let mut evidence = reads;
    for (&value, send) in &facts.sends {
        if let SendOutcome::Ok { offset } = send.outcome {
            if send_is_evidence(send, value, &order) {
                evidence.push((offset, value, send.op));
            }
        }
    }
    evidence.sort_unstable();
    evidence.dedup_by(|later, earlier| later.0 == earlier.0 && later.1 == earlier.1);

    order.offsets = evidence.iter().map(|&(offset, _, _)| offset).collect();
    order.offsets.dedup();
    debug_assert!(order.offsets.windows(2).all(|w| w[0] < w[1]));

    // inconsistent-offsets: entries are unique per (offset, value), so a run longer than one at
    // an offset is several values.
    for run in evidence.chunk_by(|a, b| a.0 == b.0) {
        if run.len() > 1 {
            let offset = run[0].0;
            let values: Vec<Value> = run.iter().map(|&(_, v, _)| v).collect();
            let detail = format!("offset {offset} holds values {}", list(&values));
            findings.push(AnomalyKind::InconsistentOffsets, key, detail, run_ops(run));
        }
    }

    // duplicate: the same regrouping by value.
    let mut by_value: Vec<(Value, u64, usize)> = evidence
        .iter()
        .map(|&(offset, v, op)| (v, offset, op))
        .collect();
    by_value.sort_unstable();
    for run in by_value.chunk_by(|a, b| a.0 == b.0) {
        if run.len() > 1 {
            let value = run[0].0;
            let offsets: Vec<u64> = run.iter().map(|&(_, offset, _)| offset).collect();
            let detail = format!("value {value} sits at offsets {}", list(&offsets));
            findings.push(AnomalyKind::Duplicate, key, detail, run_ops(run));
        }
    }

    // G1a and unknown-value: who wrote what was read.
    for &(value, reader) in &order.read_values {
        match facts.sends.get(&value) {
            None => {
                let detail = format!("value {value} was read but never sent");
                findings.push(AnomalyKind::UnknownValue, key, detail, vec![reader]);
            }
            Some(send) if send.outcome == SendOutcome::Fail => {
                let detail = format!("value {value} was read although its send failed");
                findings.push(AnomalyKind::AbortedRead, key, detail, vec![send.op, reader]);
            }
            Some(_) => {}
        }
    }

    // lost-write and unseen: acknowledged values that no read returned.
    for (&value, send) in &facts.sends {
        let SendOutcome::Ok { offset } = send.outcome else {
            continue;
        };
        if order.was_read(value) {
            continue;
        }
        // Below a log start lawful retention produced: the record may be gone.
        if offset < retained_below {
            stats.retention_excused += 1;
            continue;
        }
        let below_read_max = read_max.is_some_and(|(max, _)| offset <= max);
        let before_final_read = final_read_invoke_ms.is_some_and(|t| send.complete_ms <= t);
        match send.acks {
            Acks::All if below_read_max => {
                let (max, max_reader) = read_max.expect("below_read_max implies a read");
                let detail = format!(
                    "value {value} acknowledged at offset {offset} (acks=all) was never read, \
                     though offset {max} was"
                );
                findings.push(
                    AnomalyKind::LostWrite,
                    key,
                    detail,
                    vec![send.op, max_reader],
                );
            }
            Acks::All => {
                stats.unseen += 1;
                if before_final_read {
                    let detail = format!(
                        "value {value} acknowledged at offset {offset} (acks=all) was never \
                         read, not even by the final read"
                    );
                    findings.push(AnomalyKind::Unseen, key, detail, vec![send.op]);
                }
            }
            Acks::One if below_read_max || before_final_read => stats.acks1_lost += 1,
            Acks::Zero if before_final_read => stats.acks1_lost += 1,
            Acks::One | Acks::Zero => stats.acks1_unseen += 1,
        }
    }
    order
}

/// Whether an `Ok` send's acknowledged offset is evidence of the log's content: `acks=all`
/// promises durability; an `acks=1` offset counts only once a read confirmed the value existed
/// (with replicas: existed at that offset, see [`CheckOptions`]); `acks=0` has no real offset.
fn send_is_evidence(send: &SendFact, value: Value, order: &KeyOrder) -> bool {
    let SendOutcome::Ok { offset } = send.outcome else {
        unreachable!("only Ok sends are evidence")
    };
    match send.acks {
        Acks::All => true,
        Acks::One if order.options.acks1_offsets_final => order.was_read(value),
        Acks::One => order.was_read_at(value, offset),
        Acks::Zero => false,
    }
}

/// The distinct ops of a run of evidence entries (op is the last field), in op order.
fn run_ops<A, B: Copy>(run: &[(A, B, usize)]) -> Vec<usize> {
    let mut ops: Vec<usize> = run.iter().map(|entry| entry.2).collect();
    ops.sort_unstable();
    ops.dedup();
    ops
}

/// Per process, in history order: nonmonotonic-send, poll-skip and nonmonotonic-poll.
fn check_process_order(
    history: &History,
    facts: &Facts<'_>,
    orders: &[KeyOrder],
    findings: &mut Findings,
) {
    // (process, key id) → (offset, op) of the last evidential send / the last read.
    let mut last_send: BTreeMap<(u32, usize), (u64, usize)> = BTreeMap::new();
    let mut last_read: BTreeMap<(u32, usize), (u64, usize)> = BTreeMap::new();

    for op in &history.ops {
        match &op.kind {
            OpKind::Send {
                key,
                value,
                outcome: Outcome::Ok(offset),
                ..
            } => {
                let id = facts.ids[key];
                let send = &facts.keys[id].sends[value];
                if !send_is_evidence(send, *value, &orders[id]) {
                    continue;
                }
                let previous = last_send.insert((op.process, id), (*offset, op.index));
                if let Some((previous_offset, previous_op)) = previous {
                    if *offset <= previous_offset {
                        let detail = format!(
                            "process {} sent value {value} to offset {offset} after a send to \
                             offset {previous_offset}",
                            op.process
                        );
                        let ops = vec![previous_op, op.index];
                        findings.push(AnomalyKind::NonmonotonicSend, key, detail, ops);
                    }
                }
            }
            OpKind::Send { .. } => {}
            OpKind::Poll { reads, .. } => {
                for (key, pairs) in reads {
                    let id = facts.ids[key];
                    let cursor = last_read.get(&(op.process, id)).copied();
                    let reader = Reader::Process(op.process);
                    let end =
                        check_reads(reader, key, &orders[id], cursor, pairs, op.index, findings);
                    if let Some(end) = end {
                        last_read.insert((op.process, id), end);
                    }
                }
            }
            OpKind::FinalRead { reads, .. } => {
                for (key, pairs) in reads {
                    let id = facts.ids[key];
                    let order = &orders[id];
                    check_reads(Reader::Final, key, order, None, pairs, op.index, findings);
                }
            }
            OpKind::Group(GroupOp::Commit { .. } | GroupOp::HighWatermarks { .. })
            | OpKind::Config(_) => {}
            OpKind::Assign { .. } | OpKind::Group(_) => {
                // A new assignment restarts every key's position (from the committed offset, the
                // reset policy or a seek), so poll order is tracked afresh. A failed assign
                // changed nothing; an indeterminate one might have, so it resets too. A group
                // member's join, OffsetFetch, reset, leave or crash is such a change (the group
                // checkers judge where it resumes).
                let changed = match &op.kind {
                    OpKind::Assign { outcome, .. } => !outcome.is_fail(),
                    _ => true,
                };
                if changed {
                    let process = op.process;
                    let tracked: Vec<(u32, usize)> = last_read
                        .range((process, 0)..=(process, usize::MAX))
                        .map(|(&entry, _)| entry)
                        .collect();
                    for entry in tracked {
                        last_read.remove(&entry);
                    }
                }
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Reader {
    Process(u32),
    Final,
}

impl fmt::Display for Reader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reader::Process(process) => write!(f, "process {process}"),
            Reader::Final => f.write_str("the final read"),
        }
    }
}

/// Checks that `pairs`, read by `op` after `cursor` (the reader's previous read of the key),
/// step through the version order one known offset at a time. Returns the new cursor.
fn check_reads(
    reader: Reader,
    key: &Key,
    order: &KeyOrder,
    cursor: Option<(u64, usize)>,
    pairs: &[(u64, Value)],
    op: usize,
    findings: &mut Findings,
) -> Option<(u64, usize)> {
    // (offset, dense index, op) of the previous read.
    let mut previous =
        cursor.map(|(offset, previous_op)| (offset, order.dense_index(offset), previous_op));
    for &(offset, _) in pairs {
        let to = order.dense_index(offset);
        if let Some((previous_offset, from, previous_op)) = previous {
            let place = if previous_op == op {
                "within one poll"
            } else {
                "in its next poll"
            };
            let ops = || {
                if previous_op == op {
                    vec![op]
                } else {
                    vec![previous_op, op]
                }
            };
            // The common case, one step forward, allocates nothing.
            match to.cmp(&(from + 1)) {
                Ordering::Equal => {}
                Ordering::Greater => {
                    let skipped = &order.offsets[from + 1..to];
                    let detail = format!(
                        "{reader} read offset {offset} after offset {previous_offset} {place}, \
                     skipping known offsets {}",
                        list(skipped)
                    );
                    findings.push(AnomalyKind::PollSkip, key, detail, ops());
                }
                Ordering::Less => {
                    let detail = format!(
                        "{reader} read offset {offset} after offset {previous_offset} {place}"
                    );
                    findings.push(AnomalyKind::NonmonotonicPoll, key, detail, ops());
                }
            }
        }
        previous = Some((offset, to, op));
    }
    debug_assert!(pairs.is_empty() || previous.is_some_and(|(_, _, last_op)| last_op == op));
    previous.map(|(offset, _, last_op)| (offset, last_op))
}

/// Formats at most [`DETAIL_ITEMS_MAX`] items as `[a, b, c]`, noting how many were left out.
fn list<T: fmt::Display>(items: &[T]) -> String {
    let mut out = String::from("[");
    for (i, item) in items.iter().take(DETAIL_ITEMS_MAX).enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let _ = write!(out, "{item}");
    }
    if items.len() > DETAIL_ITEMS_MAX {
        let _ = write!(out, ", … {} more", items.len() - DETAIL_ITEMS_MAX);
    }
    out.push(']');
    out
}

/// Appends `s` as a JSON string literal.
/// Appends `s` as a JSON string literal (shared with the simulator's trace).
pub fn push_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Anomalies as found, before sorting and trimming.
#[derive(Default)]
struct Findings {
    anomalies: Vec<Anomaly>,
}

impl Findings {
    fn push(&mut self, kind: AnomalyKind, key: &Key, detail: String, ops: Vec<usize>) {
        debug_assert!(!ops.is_empty(), "an anomaly names at least one op");
        self.anomalies.push(Anomaly {
            kind,
            key: key.clone(),
            detail,
            ops,
        });
    }

    fn into_report(mut self, stats: Stats) -> CheckReport {
        let mut anomaly_counts: BTreeMap<AnomalyKind, u64> =
            AnomalyKind::ALL.iter().map(|&kind| (kind, 0)).collect();
        for anomaly in &self.anomalies {
            *anomaly_counts
                .get_mut(&anomaly.kind)
                .expect("every kind is listed") += 1;
        }
        // Stable, so discovery order (history order) survives within a kind and key.
        self.anomalies
            .sort_by(|a, b| (a.kind, &a.key).cmp(&(b.kind, &b.key)));
        let mut kept_of_kind: BTreeMap<AnomalyKind, usize> = BTreeMap::new();
        self.anomalies.retain(|anomaly| {
            let kept = kept_of_kind.entry(anomaly.kind).or_insert(0);
            *kept += 1;
            *kept <= ANOMALIES_KEPT_PER_KIND_MAX
        });
        let total: u64 = anomaly_counts.values().sum();
        assert!(self.anomalies.len() as u64 <= total);
        CheckReport {
            anomalies: self.anomalies,
            anomaly_counts,
            stats,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{reads_of, Reads};
    use proptest::prelude::*;

    fn key() -> Key {
        Key::new("t", 0)
    }

    /// An `Ok` `acks=all` send of `value` to `key()`, acknowledged at `offset`.
    fn send_ok(history: &mut History, process: u32, value: Value, offset: u64) -> usize {
        let t = history.len() as u64 * 10;
        history.send(
            process,
            key(),
            value,
            Acks::All,
            Outcome::Ok(offset),
            t,
            t + 5,
        )
    }

    fn poll(history: &mut History, process: u32, pairs: &[(u64, Value)]) -> usize {
        let t = history.len() as u64 * 10;
        history.poll_key(process, &key(), pairs, t, t + 5)
    }

    fn final_read(history: &mut History, pairs: &[(u64, Value)]) -> usize {
        let t = history.len() as u64 * 10;
        history.final_read(99, reads_of(&key(), pairs), Outcome::Ok(()), t, t + 5)
    }

    /// Asserts that the report holds anomalies of exactly one kind, all on `key()`, and returns
    /// them.
    fn only(report: &CheckReport, kind: AnomalyKind) -> Vec<Anomaly> {
        assert!(
            !report.is_valid(),
            "expected {kind}, got a valid report: {report}"
        );
        for anomaly in &report.anomalies {
            assert_eq!(
                anomaly.kind, kind,
                "unexpected anomaly {anomaly}; report: {report}"
            );
            assert_eq!(anomaly.key, key());
        }
        assert_eq!(report.count(kind), report.anomalies.len() as u64);
        report.anomalies.clone()
    }

    /// The poll-skips of a report that holds poll-skips and offset-gaps only: skipping an offset
    /// known to hold a value is always a gap in the offsets read too.
    fn skips_and_gaps(report: &CheckReport) -> Vec<Anomaly> {
        let skips = report.count(AnomalyKind::PollSkip);
        assert!(skips > 0, "expected poll-skip: {report}");
        assert_eq!(report.count(AnomalyKind::OffsetGap), skips, "{report}");
        assert_eq!(
            report.anomalies.len() as u64,
            2 * skips,
            "unexpected anomalies: {report}"
        );
        let skips = report
            .anomalies
            .iter()
            .filter(|a| a.kind == AnomalyKind::PollSkip);
        skips.cloned().collect()
    }

    #[test]
    fn every_anomaly_kind_is_listed_once_with_its_own_name() {
        let names: std::collections::BTreeSet<&str> =
            AnomalyKind::ALL.iter().map(|k| k.name()).collect();
        assert_eq!(names.len(), AnomalyKind::ALL.len());
        assert!(AnomalyKind::ALL.windows(2).all(|w| w[0] < w[1]));
        let retention: Vec<AnomalyKind> = AnomalyKind::ALL
            .into_iter()
            .filter(|k| k.is_retention())
            .collect();
        assert_eq!(retention.len(), 4);
        assert!(retention.iter().all(|k| !k.is_group()));
    }

    /// Offsets 0..5 hold values 10..15 (acks=all); retention deleted the segment [0, 3), lawfully
    /// (`retention.ms` 0) or not (no limit at all), and the final read returns `read`.
    fn retained_history(lawful: bool, read: &[(u64, Value)]) -> (History, offsets::OffsetFacts) {
        let mut h = History::new();
        for i in 0..5 {
            send_ok(&mut h, 1, 10 + i, i);
        }
        final_read(&mut h, read);
        let deletion = retention::Deletion {
            now_ms: 10_000,
            retention_ms: if lawful { 0 } else { -1 },
            retention_bytes: -1,
            delete_records_start: 0,
            size_bytes_before: 500,
            segments: vec![retention::DeletedSegment {
                base_offset: 0,
                next_offset: 3,
                kafka_next_offset: 3,
                max_timestamp: 1,
                size_bytes: 300,
            }],
            segments_left: 1,
            log_start_before: 0,
            log_start_after: 3,
            high_watermark: 5,
            log_end: 5,
            kafka_log_start_before: 0,
            kafka_log_start_after: 3,
            kafka_high_watermark: 5,
        };
        let mut facts = offsets::OffsetFacts::default();
        let retained = facts.retention.entry(key()).or_default();
        retained.deletions.push((0, deletion));
        retained.observed_starts.push(retention::ObservedStart {
            invoke_ms: 0,
            at_ms: 1,
            offset: 3,
        });
        (h, facts)
    }

    #[test]
    fn values_below_a_lawful_log_start_are_excused_and_none_above_it() {
        let read = [(3, 13), (4, 14)];
        let (h, facts) = retained_history(true, &read);
        // Without what retention did, the three deleted values are lost writes.
        assert_eq!(check(&h).count(AnomalyKind::LostWrite), 3);
        let report = check_with_facts(&h, CheckOptions::default(), &facts);
        assert!(report.is_valid(), "{report}");
        assert_eq!(report.stats.retention_excused, 3);
        // A value at the log start itself must still be read.
        let (h, facts) = retained_history(true, &[(4, 14)]);
        let report = check_with_facts(&h, CheckOptions::default(), &facts);
        let lost = only(&report, AnomalyKind::LostWrite);
        assert_eq!(lost.len(), 1);
        assert!(lost[0].detail.contains("value 13"), "{}", lost[0].detail);
    }

    #[test]
    fn an_unlawful_deletion_excuses_nothing() {
        let (h, facts) = retained_history(false, &[(3, 13), (4, 14)]);
        let report = check_with_facts(&h, CheckOptions::default(), &facts);
        assert_eq!(report.count(AnomalyKind::RetentionEarly), 1, "{report}");
        assert_eq!(
            report.count(AnomalyKind::LogStartUnjustified),
            1,
            "{report}"
        );
        assert_eq!(report.count(AnomalyKind::LostWrite), 3, "{report}");
        assert_eq!(report.stats.retention_excused, 0);
    }

    #[test]
    fn clean_history_is_valid() {
        let mut h = History::new();
        h.assign(1, vec![key()], true, Outcome::Ok(()), 0, 1);
        send_ok(&mut h, 2, 10, 0);
        send_ok(&mut h, 2, 11, 1);
        poll(&mut h, 1, &[(0, 10)]);
        send_ok(&mut h, 3, 12, 2);
        poll(&mut h, 1, &[(1, 11), (2, 12)]);
        poll(&mut h, 1, &[]);
        final_read(&mut h, &[(0, 10), (1, 11), (2, 12)]);
        let report = check(&h);
        assert!(report.is_valid(), "{report}");
        assert!(report.anomalies.is_empty());
        assert_eq!(report.stats.sends_acks_all.ok, 3);
        assert_eq!((report.stats.polls, report.stats.final_reads), (3, 1));
        assert_eq!(report.stats.values_read, 6);
        assert_eq!(report.stats.keys, 1);
    }

    #[test]
    fn lost_write_is_an_acked_value_below_the_highest_read_offset_that_nobody_read() {
        let mut h = History::new();
        let lost = send_ok(&mut h, 1, 10, 0);
        send_ok(&mut h, 1, 11, 1);
        let reader = poll(&mut h, 2, &[(1, 11)]);
        let anomalies = only(&check(&h), AnomalyKind::LostWrite);
        assert_eq!(anomalies.len(), 1);
        assert_eq!(anomalies[0].ops, vec![lost, reader]);
        assert!(
            anomalies[0].detail.contains("value 10"),
            "{}",
            anomalies[0].detail
        );
    }

    #[test]
    fn duplicate_is_one_value_at_two_offsets() {
        let mut h = History::new();
        let send = send_ok(&mut h, 1, 10, 0);
        let reader = poll(&mut h, 2, &[(0, 10), (1, 10)]);
        let anomalies = only(&check(&h), AnomalyKind::Duplicate);
        assert_eq!(anomalies.len(), 1);
        assert_eq!(anomalies[0].ops, vec![send, reader]);
    }

    #[test]
    fn inconsistent_offsets_is_two_values_at_one_offset() {
        let mut h = History::new();
        let first = send_ok(&mut h, 1, 10, 0);
        let second = send_ok(&mut h, 2, 11, 0);
        let anomalies = only(&check(&h), AnomalyKind::InconsistentOffsets);
        assert_eq!(anomalies.len(), 1);
        assert_eq!(anomalies[0].ops, vec![first, second]);
        assert!(anomalies[0]
            .detail
            .contains("offset 0 holds values [10, 11]"));
    }

    #[test]
    fn nonmonotonic_send_is_a_process_sending_to_a_lower_offset() {
        let mut h = History::new();
        let first = send_ok(&mut h, 1, 10, 1);
        let second = send_ok(&mut h, 1, 11, 0);
        // Another process's send in between does not matter.
        send_ok(&mut h, 2, 12, 2);
        let anomalies = only(&check(&h), AnomalyKind::NonmonotonicSend);
        assert_eq!(anomalies.len(), 1);
        assert_eq!(anomalies[0].ops, vec![first, second]);
    }

    #[test]
    fn nonmonotonic_poll_across_polls() {
        let mut h = History::new();
        send_ok(&mut h, 1, 10, 0);
        send_ok(&mut h, 1, 11, 1);
        let first = poll(&mut h, 2, &[(0, 10), (1, 11)]);
        let second = poll(&mut h, 2, &[(1, 11)]);
        let anomalies = only(&check(&h), AnomalyKind::NonmonotonicPoll);
        assert_eq!(anomalies.len(), 1);
        assert_eq!(anomalies[0].ops, vec![first, second]);
        assert!(anomalies[0].detail.contains("in its next poll"));
    }

    #[test]
    fn nonmonotonic_poll_within_one_poll() {
        let mut h = History::new();
        send_ok(&mut h, 1, 10, 0);
        send_ok(&mut h, 1, 11, 1);
        let reader = poll(&mut h, 2, &[(1, 11), (0, 10)]);
        let anomalies = only(&check(&h), AnomalyKind::NonmonotonicPoll);
        assert_eq!(anomalies.len(), 1);
        assert_eq!(anomalies[0].ops, vec![reader]);
        assert!(anomalies[0].detail.contains("within one poll"));
    }

    #[test]
    fn poll_skip_across_polls() {
        let mut h = History::new();
        send_ok(&mut h, 1, 10, 0);
        send_ok(&mut h, 1, 11, 1);
        send_ok(&mut h, 1, 12, 2);
        // Another consumer reads offset 1, so it is not lost; process 2 jumps over it.
        poll(&mut h, 3, &[(1, 11)]);
        let first = poll(&mut h, 2, &[(0, 10)]);
        let second = poll(&mut h, 2, &[(2, 12)]);
        let anomalies = skips_and_gaps(&check(&h));
        assert_eq!(anomalies.len(), 1);
        assert_eq!(anomalies[0].ops, vec![first, second]);
        assert!(anomalies[0].detail.contains("skipping known offsets [1]"));
    }

    #[test]
    fn poll_skip_within_one_poll() {
        let mut h = History::new();
        send_ok(&mut h, 1, 10, 0);
        send_ok(&mut h, 1, 11, 1);
        send_ok(&mut h, 1, 12, 2);
        poll(&mut h, 3, &[(1, 11)]);
        let reader = poll(&mut h, 2, &[(0, 10), (2, 12)]);
        let anomalies = skips_and_gaps(&check(&h));
        assert_eq!(anomalies.len(), 1);
        assert_eq!(anomalies[0].ops, vec![reader]);
    }

    #[test]
    fn final_read_that_skips_is_a_poll_skip() {
        let mut h = History::new();
        send_ok(&mut h, 1, 10, 0);
        send_ok(&mut h, 1, 11, 1);
        send_ok(&mut h, 1, 12, 2);
        poll(&mut h, 3, &[(0, 10), (1, 11), (2, 12)]);
        let reader = final_read(&mut h, &[(0, 10), (2, 12)]);
        let anomalies = skips_and_gaps(&check(&h));
        assert_eq!(anomalies[0].ops, vec![reader]);
        assert!(anomalies[0].detail.starts_with("the final read"));
    }

    #[test]
    fn gaps_in_offsets_with_no_known_value_are_not_skips() {
        // Offsets 1 and 3 are transaction markers: nothing is known to live there.
        let mut h = History::new();
        send_ok(&mut h, 1, 10, 0);
        send_ok(&mut h, 1, 11, 2);
        send_ok(&mut h, 1, 12, 4);
        poll(&mut h, 2, &[(0, 10), (2, 11)]);
        poll(&mut h, 2, &[(4, 12)]);
        final_read(&mut h, &[(0, 10), (2, 11), (4, 12)]);
        let mut facts = offsets::OffsetFacts::default();
        facts.markers.insert(key(), [1, 3].into());
        let report = check_with_facts(&h, CheckOptions::default(), &facts);
        assert!(report.is_valid(), "{report}");
        // Offsets taken by anything else are gaps (offsets::tests), still not skips.
        let anomalies = only(&check(&h), AnomalyKind::OffsetGap);
        assert_eq!(anomalies.len(), 4);
    }

    #[test]
    fn unseen_is_an_anomaly_only_once_a_final_read_began_after_the_send() {
        let mut h = History::new();
        send_ok(&mut h, 1, 10, 0);
        let unseen = send_ok(&mut h, 1, 11, 1);
        poll(&mut h, 2, &[(0, 10)]);
        let report = check(&h);
        assert!(report.is_valid(), "{report}");
        assert_eq!(report.stats.unseen, 1);

        final_read(&mut h, &[(0, 10)]);
        // A send that completes after the final read began cannot be expected in it.
        send_ok(&mut h, 1, 12, 2);
        let report = check(&h);
        let anomalies = only(&report, AnomalyKind::Unseen);
        assert_eq!(anomalies.len(), 1);
        assert_eq!(anomalies[0].ops, vec![unseen]);
        assert_eq!(report.stats.unseen, 2);
    }

    #[test]
    fn aborted_read_is_reading_a_failed_send() {
        let mut h = History::new();
        let t = 0;
        let failed = h.send(
            1,
            key(),
            10,
            Acks::All,
            Outcome::Fail("NOT_LEADER".into()),
            t,
            1,
        );
        let reader = poll(&mut h, 2, &[(0, 10)]);
        let report = check(&h);
        let anomalies = only(&report, AnomalyKind::AbortedRead);
        assert_eq!(anomalies[0].ops, vec![failed, reader]);
        assert_eq!(report.stats.sends_acks_all.fail, 1);
    }

    #[test]
    fn indeterminate_send_that_was_read_is_fine() {
        let mut h = History::new();
        h.send(
            1,
            key(),
            10,
            Acks::All,
            Outcome::Info("timeout".into()),
            0,
            1,
        );
        h.send(
            1,
            key(),
            11,
            Acks::All,
            Outcome::Info("timeout".into()),
            2,
            3,
        );
        poll(&mut h, 2, &[(0, 10)]);
        final_read(&mut h, &[(0, 10)]);
        let report = check(&h);
        assert!(report.is_valid(), "{report}");
        assert_eq!(report.stats.sends_acks_all.info, 2);
    }

    #[test]
    fn unknown_value_is_reading_something_never_sent() {
        let mut h = History::new();
        let reader = poll(&mut h, 2, &[(0, 77)]);
        let anomalies = only(&check(&h), AnomalyKind::UnknownValue);
        assert_eq!(anomalies[0].ops, vec![reader]);
    }

    #[test]
    fn acks1_loss_after_a_crash_is_counted_not_flagged() {
        let mut h = History::new();
        // Acknowledged at offset 0 with acks=1, then lost in a crash; the log reuses offset 0.
        let t = 0;
        h.send(1, key(), 10, Acks::One, Outcome::Ok(0), t, 1);
        h.send(1, key(), 11, Acks::One, Outcome::Ok(1), t + 2, 3);
        h.send(1, key(), 12, Acks::All, Outcome::Ok(0), t + 4, 5);
        h.send(2, key(), 13, Acks::Zero, Outcome::Ok(0), t + 6, 7);
        h.send(2, key(), 14, Acks::One, Outcome::Ok(1), t + 8, 9);
        poll(&mut h, 3, &[(0, 12), (1, 14)]);
        final_read(&mut h, &[(0, 12), (1, 14)]);
        let report = check(&h);
        assert!(report.is_valid(), "{report}");
        // Values 10, 11 (acks=1, at or below the highest read offset) and 13 (acks=0, before the
        // final read).
        assert_eq!(report.stats.acks1_lost, 3);
        assert_eq!(report.stats.sends_acks1.ok, 3);
        assert_eq!(report.stats.sends_acks0.ok, 1);
    }

    #[test]
    fn acks1_send_confirmed_by_a_read_is_evidence() {
        // Once read, an acks=1 value's acknowledged offset must agree with where it was read.
        let mut h = History::new();
        h.send(1, key(), 10, Acks::One, Outcome::Ok(5), 0, 1);
        poll(&mut h, 2, &[(0, 10)]);
        only(&check(&h), AnomalyKind::Duplicate);
    }

    #[test]
    fn with_replicas_an_acks1_offset_counts_only_where_the_value_was_read() {
        // A deposed leader acknowledged value 10 at offset 5; an idempotent retry put it at 6
        // on the new leader, which reused offset 5 (its term start).
        let mut h = History::new();
        h.send(1, key(), 10, Acks::One, Outcome::Ok(5), 0, 1);
        poll(&mut h, 2, &[(6, 10)]);
        let replicas = CheckOptions {
            acks1_offsets_final: false,
        };
        let report = check_with(&h, replicas);
        assert!(report.anomalies.is_empty(), "{report}");
        // Read where it was acknowledged, it is evidence again: a second copy is a duplicate.
        poll(&mut h, 3, &[(5, 10)]);
        only(&check_with(&h, replicas), AnomalyKind::Duplicate);
    }

    #[test]
    fn acks1_unread_above_every_read_is_unseen_in_stats() {
        let mut h = History::new();
        h.send(1, key(), 10, Acks::One, Outcome::Ok(3), 0, 1);
        h.send(1, key(), 11, Acks::Zero, Outcome::Ok(0), 2, 3);
        let report = check(&h);
        assert!(report.is_valid(), "{report}");
        assert_eq!((report.stats.acks1_lost, report.stats.acks1_unseen), (0, 2));
    }

    #[test]
    fn assign_restarts_poll_order_but_a_failed_assign_does_not() {
        let mut h = History::new();
        send_ok(&mut h, 1, 10, 0);
        send_ok(&mut h, 1, 11, 1);
        poll(&mut h, 2, &[(0, 10), (1, 11)]);
        h.assign(2, vec![key()], true, Outcome::Ok(()), 100, 101);
        poll(&mut h, 2, &[(0, 10), (1, 11)]);
        assert!(check(&h).is_valid());

        h.assign(
            2,
            vec![key()],
            true,
            Outcome::Fail("UNKNOWN_TOPIC".into()),
            200,
            201,
        );
        let again = poll(&mut h, 2, &[(0, 10)]);
        let anomalies = only(&check(&h), AnomalyKind::NonmonotonicPoll);
        assert_eq!(anomalies[0].ops.last(), Some(&again));
    }

    #[test]
    fn processes_and_keys_are_tracked_separately() {
        let other = Key::new("u", 3);
        let mut h = History::new();
        send_ok(&mut h, 1, 10, 0);
        h.send(1, other.clone(), 10, Acks::All, Outcome::Ok(0), 10, 11);
        h.send(1, other.clone(), 11, Acks::All, Outcome::Ok(1), 12, 13);
        let mut reads = Reads::new();
        reads.insert(key(), vec![(0, 10)]);
        reads.insert(other.clone(), vec![(0, 10), (1, 11)]);
        h.poll(2, reads, Outcome::Ok(()), 20, 21);
        poll(&mut h, 3, &[(0, 10)]);
        let report = check(&h);
        assert!(report.is_valid(), "{report}");
        assert_eq!(report.stats.keys, 2);
    }

    #[test]
    fn anomalies_beyond_the_limit_are_counted_but_not_kept() {
        let mut h = History::new();
        let total = ANOMALIES_KEPT_PER_KIND_MAX + 5;
        for i in 0..total {
            poll(&mut h, 1, &[(i as u64, 1_000 + i as u64)]);
        }
        let report = check(&h);
        assert_eq!(report.count(AnomalyKind::UnknownValue), total as u64);
        assert_eq!(report.anomalies.len(), ANOMALIES_KEPT_PER_KIND_MAX);
        assert!(!report.is_valid());
    }

    #[test]
    fn report_display_and_json_are_deterministic_and_escaped() {
        let weird = Key::new("a\"b\\c\nd\u{1}", -1);
        let mut h = History::new();
        h.poll_key(1, &weird, &[(0, 5)], 0, 1);
        let report = check(&h);
        assert_eq!(
            report.to_string(),
            "lost-write: 0, duplicate: 0, inconsistent-offsets: 0, nonmonotonic-send: 0, \
             nonmonotonic-poll: 0, poll-skip: 0, unseen: 0, G1a: 0, unknown-value: 1, \
             offset-gap: 0, zombie-write: 0; sends ok/fail/info acks=0 0/0/0 acks=1 0/0/0 acks=all 0/0/0, \
             polls: 1, final-reads: 0, assigns: 0, values-read: 1, keys: 1, acks1-lost: 0, \
             acks1-unseen: 0, acks-all-unseen: 0, reads-from-known-start: 0, \
             offset-gaps-excused: 0"
        );
        assert_eq!(
            report.anomalies[0].to_json_line(),
            "{\"kind\":\"unknown-value\",\"topic\":\"a\\\"b\\\\c\\nd\\u0001\",\"partition\":-1,\
             \"detail\":\"value 5 was read but never sent\",\"ops\":[0]}"
        );
    }

    #[test]
    fn anomalies_are_sorted_by_kind_then_key() {
        let a = Key::new("a", 0);
        let b = Key::new("b", 0);
        let mut h = History::new();
        h.poll_key(1, &b, &[(0, 5)], 0, 1);
        h.poll_key(1, &a, &[(0, 6)], 2, 3);
        h.send(2, b.clone(), 7, Acks::All, Outcome::Ok(0), 4, 5);
        let report = check(&h);
        let order: Vec<(AnomalyKind, &str)> = report
            .anomalies
            .iter()
            .map(|anomaly| (anomaly.kind, anomaly.key.topic.as_str()))
            .collect();
        assert_eq!(
            order,
            vec![
                // Value 7 was acknowledged at offset 0, but every read there saw value 5.
                (AnomalyKind::LostWrite, "b"),
                (AnomalyKind::InconsistentOffsets, "b"),
                (AnomalyKind::UnknownValue, "a"),
                (AnomalyKind::UnknownValue, "b"),
            ]
        );
    }

    // ---- Generated executions of a correct log -------------------------------------------------

    const PROCESSES: u32 = 4;
    const KEYS: usize = 3;

    #[derive(Clone, Copy, Debug)]
    enum Fate {
        Ok,
        Fail,
        /// Timed out, but the broker appended it.
        InfoApplied,
        /// Timed out before the broker appended it.
        InfoLost,
    }

    #[derive(Clone, Debug)]
    enum Step {
        Send {
            process: u32,
            key: usize,
            acks: Acks,
            fate: Fate,
            /// Offsets taken before this one by transaction markers.
            gap: u64,
        },
        Poll {
            process: u32,
            records_max: usize,
        },
        Assign {
            process: u32,
            keys_mask: u8,
            seek_to_beginning: bool,
            position_seed: usize,
        },
    }

    fn step_strategy() -> impl Strategy<Value = Step> {
        let acks = prop_oneof![1 => Just(Acks::Zero), 1 => Just(Acks::One), 2 => Just(Acks::All)];
        let fate = prop_oneof![
            6 => Just(Fate::Ok),
            1 => Just(Fate::Fail),
            1 => Just(Fate::InfoApplied),
            1 => Just(Fate::InfoLost),
        ];
        let gap = prop_oneof![4 => Just(0u64), 1 => 1..3u64];
        prop_oneof![
            4 => (0..PROCESSES, 0..KEYS, acks, fate, gap).prop_map(
                |(process, key, acks, fate, gap)| Step::Send { process, key, acks, fate, gap }
            ),
            3 => (0..PROCESSES, 1..5usize)
                .prop_map(|(process, records_max)| Step::Poll { process, records_max }),
            1 => (0..PROCESSES, 0..8u8, any::<bool>(), any::<usize>()).prop_map(
                |(process, keys_mask, seek_to_beginning, position_seed)| Step::Assign {
                    process,
                    keys_mask,
                    seek_to_beginning,
                    position_seed,
                }
            ),
        ]
    }

    fn model_key(key: usize) -> Key {
        Key::new(["even", "odd"][key % 2], key as i32)
    }

    /// Runs `steps` against a model of a correct log (appends at the next offset, consumers read
    /// contiguously from their position) and records the history; optionally ends with a final
    /// read of every key by a fresh process.
    fn execute(steps: &[Step], with_final_read: bool) -> History {
        execute_with_markers(steps, with_final_read).0
    }

    /// [`execute`], with the offsets the model's transaction markers took.
    fn execute_with_markers(
        steps: &[Step],
        with_final_read: bool,
    ) -> (History, offsets::OffsetFacts) {
        let mut facts = offsets::OffsetFacts::default();
        let mut logs: Vec<Vec<(u64, Value)>> = vec![Vec::new(); KEYS];
        let mut offset_next = [0u64; KEYS];
        let mut value_next: Value = 1;
        // (process, key) → position in that key's log, for assigned keys.
        let mut positions: BTreeMap<(u32, usize), usize> = BTreeMap::new();
        // Per key, the prefix of the log that some consumer has read. A consumer assigned
        // without seeking starts inside it, as it would from an offset some consumer committed:
        // starting beyond it would leave values nobody reads, which the lost-write check rightly
        // reports.
        let mut read_prefix = [0usize; KEYS];
        let mut h = History::new();
        for (i, step) in steps.iter().enumerate() {
            let (t0, t1) = (i as u64 * 10, i as u64 * 10 + 7);
            match *step {
                Step::Send {
                    process,
                    key,
                    acks,
                    fate,
                    gap,
                } => {
                    let value = value_next;
                    value_next += 1;
                    let offset = offset_next[key] + gap;
                    if matches!(fate, Fate::Ok | Fate::InfoApplied) {
                        let markers = facts.markers.entry(model_key(key)).or_default();
                        markers.extend(offset_next[key]..offset);
                        logs[key].push((offset, value));
                        offset_next[key] = offset + 1;
                    }
                    let outcome = match fate {
                        Fate::Ok => Outcome::Ok(offset),
                        Fate::Fail => Outcome::Fail("NOT_ENOUGH_REPLICAS".into()),
                        Fate::InfoApplied | Fate::InfoLost => Outcome::Info("timeout".into()),
                    };
                    h.send(process, model_key(key), value, acks, outcome, t0, t1);
                }
                Step::Poll {
                    process,
                    records_max,
                } => {
                    let mut reads = Reads::new();
                    for (&(_, key), position) in
                        positions.range_mut((process, 0)..=(process, usize::MAX))
                    {
                        let log = &logs[key];
                        let end = (*position + records_max).min(log.len());
                        if end > *position {
                            reads.insert(model_key(key), log[*position..end].to_vec());
                            *position = end;
                            read_prefix[key] = read_prefix[key].max(end);
                        }
                    }
                    h.poll(process, reads, Outcome::Ok(()), t0, t1);
                }
                Step::Assign {
                    process,
                    keys_mask,
                    seek_to_beginning,
                    position_seed,
                } => {
                    positions.retain(|&(p, _), _| p != process);
                    let mut keys = Vec::new();
                    for key in (0..KEYS).filter(|k| keys_mask & (1 << k) != 0) {
                        let position = if seek_to_beginning {
                            0
                        } else {
                            position_seed % (read_prefix[key] + 1)
                        };
                        positions.insert((process, key), position);
                        keys.push(model_key(key));
                    }
                    h.assign(process, keys, seek_to_beginning, Outcome::Ok(()), t0, t1);
                }
            }
        }
        if with_final_read {
            let mut reads = Reads::new();
            for (key, log) in logs.iter().enumerate() {
                reads.insert(model_key(key), log.clone());
            }
            let t = steps.len() as u64 * 10;
            h.final_read(PROCESSES, reads, Outcome::Ok(()), t, t + 7);
        }
        (h, facts)
    }

    fn final_reads_mut(h: &mut History) -> &mut Reads {
        match &mut h.ops.last_mut().expect("a final read").kind {
            OpKind::FinalRead { reads, .. } => reads,
            other => panic!("the last op is not a final read: {other:?}"),
        }
    }

    proptest! {
        #[test]
        fn correct_executions_are_valid(
            steps in prop::collection::vec(step_strategy(), 0..200),
            with_final_read in any::<bool>(),
        ) {
            let (h, facts) = execute_with_markers(&steps, with_final_read);
            let report = check_with_facts(&h, CheckOptions::default(), &facts);
            prop_assert!(report.is_valid(), "{}\n{:?}", report, report.anomalies);
            prop_assert_eq!(report.stats.acks1_lost, 0);
            if with_final_read {
                prop_assert_eq!(report.stats.unseen + report.stats.acks1_unseen, 0);
            }
        }

        #[test]
        fn a_value_nobody_read_is_lost_or_unseen(
            steps in prop::collection::vec(step_strategy(), 20..150),
            pick in any::<usize>(),
        ) {
            let mut h = execute(&steps, true);
            let acked: Vec<(Key, Value)> = h.ops.iter().filter_map(|op| match &op.kind {
                OpKind::Send { key, value, acks: Acks::All, outcome: Outcome::Ok(_), .. } => {
                    Some((key.clone(), *value))
                }
                _ => None,
            }).collect();
            prop_assume!(!acked.is_empty());
            let (dropped_key, dropped) = acked[pick % acked.len()].clone();
            for op in &mut h.ops {
                if let OpKind::Poll { reads, .. } | OpKind::FinalRead { reads, .. } = &mut op.kind {
                    if let Some(pairs) = reads.get_mut(&dropped_key) {
                        pairs.retain(|&(_, value)| value != dropped);
                    }
                }
            }
            let report = check(&h);
            prop_assert!(
                report.count(AnomalyKind::LostWrite) + report.count(AnomalyKind::Unseen) > 0,
                "{}", report
            );
        }

        #[test]
        fn swapped_offsets_in_a_read_are_nonmonotonic(
            steps in prop::collection::vec(step_strategy(), 20..150),
            pick in any::<usize>(),
        ) {
            let mut h = execute(&steps, true);
            let reads = final_reads_mut(&mut h);
            let keys: Vec<Key> = reads.iter().filter(|(_, p)| p.len() >= 2).map(|(k, _)| k.clone()).collect();
            prop_assume!(!keys.is_empty());
            let pairs = reads.get_mut(&keys[pick % keys.len()]).expect("picked key");
            let i = pick % (pairs.len() - 1);
            let j = i + 1 + (pick / 7) % (pairs.len() - 1 - i);
            let (offset_i, offset_j) = (pairs[i].0, pairs[j].0);
            pairs[i].0 = offset_j;
            pairs[j].0 = offset_i;
            let report = check(&h);
            prop_assert!(report.count(AnomalyKind::NonmonotonicPoll) > 0, "{}", report);
        }

        #[test]
        fn a_value_read_at_a_second_offset_is_a_duplicate(
            steps in prop::collection::vec(step_strategy(), 20..150),
            pick in any::<usize>(),
            gap in 1..4u64,
        ) {
            let mut h = execute(&steps, true);
            let reads = final_reads_mut(&mut h);
            let keys: Vec<Key> = reads.iter().filter(|(_, p)| !p.is_empty()).map(|(k, _)| k.clone()).collect();
            prop_assume!(!keys.is_empty());
            let pairs = reads.get_mut(&keys[pick % keys.len()]).expect("picked key");
            let value = pairs[pick % pairs.len()].1;
            let offset_last = pairs.last().expect("not empty").0;
            pairs.push((offset_last + gap, value));
            let report = check(&h);
            prop_assert!(report.count(AnomalyKind::Duplicate) > 0, "{}", report);
        }
    }

    /// A rough throughput check; run with
    /// `cargo test --release -p sluice-core checker::tests::large_history -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn large_history_checks_quickly() {
        // A small deterministic generator, so the steps need no proptest runner.
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let ops = 1_000_000;
        let steps: Vec<Step> = (0..ops)
            .map(|_| {
                let r = next();
                let process = (r % u64::from(PROCESSES)) as u32;
                match (r >> 8) % 16 {
                    0 => Step::Assign {
                        process,
                        keys_mask: 0b111,
                        seek_to_beginning: false,
                        position_seed: (r >> 16) as usize,
                    },
                    1..=8 => Step::Send {
                        process,
                        key: ((r >> 16) % KEYS as u64) as usize,
                        acks: Acks::All,
                        fate: Fate::Ok,
                        gap: 0,
                    },
                    _ => Step::Poll {
                        process,
                        records_max: 10,
                    },
                }
            })
            .collect();
        let h = execute(&steps, true);
        let report = check(&h);
        assert!(report.is_valid(), "{report}");
    }
}
