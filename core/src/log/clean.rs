//! Log compaction (`cleanup.policy=compact`) as a sans-IO state machine.
//!
//! A cleaning covers the *cleanable* segments: sealed, below the checkpoint's recovery point (so
//! fsynced, with valid indexes) and wholly below the high watermark (so committed: Raft never
//! truncates them). The active segment is never touched. Two passes over those segments:
//!
//! 1. **Map**: the offset of the latest record of every key.
//! 2. **Rewrite**, segment by segment: a record survives unless a later record has its key, or it
//!    is a tombstone (null value) that is the latest for its key and older than
//!    `delete.retention.ms` (by its own timestamp). Records without a key, control batches (Raft's
//!    epoch starts and membership, transaction markers), transactional and compressed batches are
//!    kept unchanged: the cleaner never drops what it cannot judge.
//!
//! Offsets never change. A batch that keeps some records keeps its base offset, last offset delta,
//! epoch, timestamps and producer fields; only its records and CRC are rewritten. A run of batches
//! that lose every record, within one leader epoch, becomes one empty batch covering the same
//! offsets (Kafka's clients skip empty batches, as they do after Kafka's own cleaner). So every
//! cleaned segment still covers a contiguous offset range batch by batch, epochs start where they
//! did, and Raft, recovery, replication and reads need no notion of gaps. The last batch of each
//! idempotent producer in the range keeps its header (with no records if need be), as Kafka does,
//! so producer state survives a rebuild from the log.
//!
//! The shell runs the steps in order ([`CleanStep`]); a segment is replaced by writing its cleaned
//! copy to a side file, syncing it, and renaming it over the segment (see
//! [`LogStore`](super::LogStore)), so a crash at any point leaves either the old or the new segment,
//! both complete. Batches that fail their CRC stop the cleaning: damage is never rewritten under
//! a fresh checksum.

use std::collections::{BTreeMap, VecDeque};

use crate::batch::{check_crc, encode_batch, BatchError, BatchHeader, Records};
use crate::limits::{BATCH_HEADER_BYTES, CLEANER_IO_BYTES};
use crate::planted::{Bug, Planted};

use super::{ReadIo, Segment};

/// The part from `from` on of an empty batch the cleaner left for removed batches: the same
/// batch over fewer offsets. Replicas clean independently, so a follower's log can end inside
/// such a batch of its leader (where its own log still has a batch boundary); Raft then sends
/// it this trimmed copy. `None` if `batch` is not such a stand-in or does not cover `from`.
pub fn trim_removed_run(batch: &[u8], from: u64) -> Option<Vec<u8>> {
    let header = BatchHeader::parse(batch).ok()?;
    let stand_in = header.record_count == 0
        && header.producer_id < 0
        && !header.is_control()
        && !header.is_transactional();
    let (base, last) = (header.base_offset as u64, header.last_offset() as u64);
    if !stand_in || from <= base || from > last || check_crc(batch, &header).is_err() {
        return None;
    }
    let trimmed = BatchHeader {
        base_offset: from as i64,
        last_offset_delta: (last - from) as i32,
        ..header
    };
    Some(encode_batch(&trimmed, &[], 0))
}

/// A sealed segment chosen for cleaning, as it was when the cleaning started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CleanTarget {
    pub base_offset: u64,
    pub size_bytes: u64,
    pub next_offset: u64,
}

/// A storage effect of a cleaning, for the shell to carry out in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CleanStep {
    /// Read this range of a segment and pass the bytes to `feed_clean`.
    Read(ReadIo),
    /// Create the segment's side file empty and copy the first `copy` bytes of the segment into
    /// it (the part cleaning left unchanged).
    Begin { segment: u64, copy: u64 },
    /// Append to the segment's side file.
    Write { segment: u64, bytes: Vec<u8> },
    /// The side file is complete: make it durable, replace the segment file with it, write these
    /// index files, then report with `on_clean_swapped`.
    Swap {
        segment: u64,
        offset_index: Vec<u8>,
        time_index: Vec<u8>,
    },
    /// The cleaning was abandoned: remove the segment's side file if there is one.
    Discard { segment: u64 },
}

/// What one finished cleaning did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CleanReport {
    pub segments: usize,
    pub segments_rewritten: usize,
    pub bytes_before: u64,
    pub bytes_after: u64,
    pub records_removed: u64,
    pub tombstones_removed: u64,
}

/// Why a cleaning stopped early.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CleanError {
    Corrupt { segment: u64, detail: String },
}

impl std::fmt::Display for CleanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CleanError::Corrupt { segment, detail } => {
                write!(
                    f,
                    "segment {segment} is damaged ({detail}); cleaning stopped"
                )
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pass {
    Map,
    Rewrite,
}

/// The cleaned copy of the segment being rewritten.
#[derive(Debug)]
struct Output {
    segment: Segment,
    /// Whether anything changed yet (then the side file exists).
    started: bool,
    /// Input bytes kept byte for byte before the first change.
    unchanged: u64,
    buf: Vec<u8>,
    /// Removed batches waiting to be written as one empty batch.
    filler: Option<BatchHeader>,
}

/// One cleaning in progress. Driven by `PartitionLog`, which checks before every step that the
/// segment at hand is still the one planned.
#[derive(Debug)]
pub struct Cleaner {
    targets: Vec<CleanTarget>,
    now_ms: i64,
    delete_retention_ms: i64,
    index_interval_bytes: u32,
    planted: Planted,
    pass: Pass,
    /// Index into `targets` of the segment being read.
    at: usize,
    /// Bytes of that segment read so far.
    position: u64,
    /// Read bytes not yet parsed (a batch cut by a read boundary).
    carry: Vec<u8>,
    /// Bytes the next read must bring at least.
    want: u64,
    latest: BTreeMap<Vec<u8>, u64>,
    /// Producer id -> base offset of its last batch in the range.
    producer_last: BTreeMap<i64, u64>,
    out: Option<Output>,
    steps: VecDeque<CleanStep>,
    /// The cleaned segment waiting for its swap to be reported.
    swapped: Option<Segment>,
    report: CleanReport,
    /// When the earliest tombstone kept becomes removable.
    tombstone_due_ms: Option<i64>,
}

impl Cleaner {
    pub fn new(
        targets: Vec<CleanTarget>,
        now_ms: u64,
        delete_retention_ms: i64,
        index_interval_bytes: u32,
        planted: Planted,
    ) -> Cleaner {
        assert!(!targets.is_empty());
        assert!(targets
            .windows(2)
            .all(|w| w[0].next_offset == w[1].base_offset));
        // Only sealed segments are cleaned, and a sealed segment holds at least one batch.
        debug_assert!(
            targets
                .iter()
                .all(|t| t.size_bytes > 0 && t.next_offset > t.base_offset),
            "an empty segment among the cleaning targets"
        );
        let report = CleanReport {
            segments: targets.len(),
            bytes_before: targets.iter().map(|t| t.size_bytes).sum(),
            ..CleanReport::default()
        };
        Cleaner {
            targets,
            now_ms: now_ms.min(i64::MAX as u64) as i64,
            delete_retention_ms,
            index_interval_bytes,
            planted,
            pass: Pass::Map,
            at: 0,
            position: 0,
            carry: Vec::new(),
            want: 0,
            latest: BTreeMap::new(),
            producer_last: BTreeMap::new(),
            out: None,
            steps: VecDeque::new(),
            swapped: None,
            report,
            tombstone_due_ms: None,
        }
    }

    pub fn targets(&self) -> &[CleanTarget] {
        &self.targets
    }

    /// The segment the next step concerns, if any is left.
    pub fn current(&self) -> Option<CleanTarget> {
        self.targets.get(self.at).copied()
    }

    /// The next effect, or `None` when the cleaning is complete.
    pub fn next_step(&mut self) -> Option<CleanStep> {
        loop {
            if let Some(step) = self.steps.pop_front() {
                return Some(step);
            }
            let target = *self.targets.get(self.at)?;
            if self.position < target.size_bytes {
                let left = target.size_bytes - self.position;
                let len = left.min(self.want.max(u64::from(CLEANER_IO_BYTES)));
                return Some(CleanStep::Read(ReadIo {
                    segment: target.base_offset,
                    position: self.position,
                    len: len as u32,
                }));
            }
            self.end_segment(target);
        }
    }

    fn end_segment(&mut self, target: CleanTarget) {
        if self.pass == Pass::Rewrite {
            let mut out = self.out.take().expect("an output per rewritten segment");
            if out.started {
                self.flush_filler(&mut out);
                if !out.buf.is_empty() {
                    self.steps.push_back(CleanStep::Write {
                        segment: target.base_offset,
                        bytes: std::mem::take(&mut out.buf),
                    });
                }
                out.segment.seal();
                assert_eq!(out.segment.next_offset, target.next_offset);
                // Records only go (their offsets stay, in an empty batch): never more bytes.
                assert!(
                    out.segment.size_bytes <= target.size_bytes,
                    "the cleaned copy of segment {} is larger than the segment",
                    target.base_offset
                );
                self.steps.push_back(CleanStep::Swap {
                    segment: target.base_offset,
                    offset_index: out.segment.encode_offset_index(),
                    time_index: out.segment.encode_time_index(),
                });
                self.report.segments_rewritten += 1;
                self.report.bytes_after += out.segment.size_bytes;
                self.swapped = Some(out.segment);
            } else {
                self.report.bytes_after += target.size_bytes;
            }
        }
        self.at += 1;
        self.position = 0;
        self.want = 0;
        if self.at == self.targets.len() && self.pass == Pass::Map {
            self.pass = Pass::Rewrite;
            self.at = 0;
        }
        if self.pass == Pass::Rewrite {
            if let Some(next) = self.targets.get(self.at) {
                self.out = Some(Output {
                    segment: Segment::new(next.base_offset),
                    started: false,
                    unchanged: 0,
                    buf: Vec::new(),
                    filler: None,
                });
            }
        }
    }

    /// The bytes of the last `Read`.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), CleanError> {
        let target = self.targets[self.at];
        let corrupt = |detail: String| CleanError::Corrupt {
            segment: target.base_offset,
            detail,
        };
        if bytes.is_empty() {
            return Err(corrupt(format!(
                "segment ends at byte {}, expected {}",
                self.position, target.size_bytes
            )));
        }
        self.position += bytes.len() as u64;
        self.carry.extend_from_slice(bytes);
        let carry = std::mem::take(&mut self.carry);
        let mut at = 0;
        self.want = 0;
        while at < carry.len() {
            let rest = &carry[at..];
            if rest.len() < BATCH_HEADER_BYTES {
                self.want = (BATCH_HEADER_BYTES - rest.len()) as u64;
                break;
            }
            let header = BatchHeader::parse(rest).map_err(|e| corrupt(e.to_string()))?;
            let total = header.total_bytes();
            if rest.len() < total {
                self.want = (total - rest.len()) as u64;
                break;
            }
            let batch = &rest[..total];
            check_crc(batch, &header).map_err(|e| corrupt(e.to_string()))?;
            match self.pass {
                Pass::Map => self.map_batch(&header, batch),
                Pass::Rewrite => self.rewrite_batch(&header, batch),
            }
            .map_err(|e| corrupt(e.to_string()))?;
            at += total;
        }
        self.carry = carry[at..].to_vec();
        if self.position >= target.size_bytes && !self.carry.is_empty() {
            return Err(corrupt(format!(
                "{} bytes after the last whole batch",
                self.carry.len()
            )));
        }
        Ok(())
    }

    /// Batches whose records the cleaner may judge: plain, uncompressed data.
    fn judged(header: &BatchHeader) -> bool {
        !header.is_control() && !header.is_transactional() && header.compression() == 0
    }

    fn map_batch(&mut self, header: &BatchHeader, batch: &[u8]) -> Result<(), BatchError> {
        if header.producer_id >= 0 {
            self.producer_last
                .insert(header.producer_id, header.base_offset as u64);
        }
        if !Self::judged(header) {
            return Ok(());
        }
        for record in Records::new(batch)? {
            let record = record?;
            if let Some(key) = record.key {
                let offset = header.base_offset as u64 + record.offset_delta as u64;
                self.latest.insert(key.to_vec(), offset);
            }
        }
        Ok(())
    }

    fn rewrite_batch(&mut self, header: &BatchHeader, batch: &[u8]) -> Result<(), BatchError> {
        let mut out = self.out.take().expect("an output per rewritten segment");
        let result = self.rewrite_into(&mut out, header, batch);
        self.out = Some(out);
        result
    }

    fn rewrite_into(
        &mut self,
        out: &mut Output,
        header: &BatchHeader,
        batch: &[u8],
    ) -> Result<(), BatchError> {
        let producer_last = header.producer_id >= 0
            && self.producer_last.get(&header.producer_id) == Some(&(header.base_offset as u64));
        if !Self::judged(header) {
            self.keep(out, header, batch);
            return Ok(());
        }
        if header.record_count == 0 {
            // Already empty (an earlier cleaning's stand-in): merged into a pending run of
            // removed batches when it can be, else kept as it is.
            let mergeable = !producer_last
                && out
                    .filler
                    .is_some_and(|f| f.partition_leader_epoch == header.partition_leader_epoch);
            if mergeable {
                self.remove(out, header);
            } else {
                self.keep(out, header, batch);
            }
            return Ok(());
        }
        let mut kept = Vec::with_capacity(batch.len());
        let mut count = 0;
        let mut removed = 0;
        let mut tombstones = 0;
        // The planted off-by-one counts a key's latest record as superseded by itself.
        let drops_latest = self.planted.is(Bug::CleanerDropsLatest);
        for record in Records::new(batch)? {
            let record = record?;
            let offset = header.base_offset as u64 + record.offset_delta as u64;
            let keep = match record.key {
                None => true,
                Some(key) => match self.latest.get(key) {
                    Some(&latest) if latest > offset || (drops_latest && latest == offset) => false,
                    _ if record.value.is_none() => {
                        let timestamp = header.record_timestamp(record.timestamp_delta);
                        let due = timestamp.saturating_add(self.delete_retention_ms);
                        if due <= self.now_ms {
                            tombstones += 1;
                            false
                        } else {
                            self.tombstone_due_ms =
                                Some(self.tombstone_due_ms.map_or(due, |d| d.min(due)));
                            true
                        }
                    }
                    _ => true,
                },
            };
            if keep {
                kept.extend_from_slice(record.raw);
                count += 1;
            } else {
                removed += 1;
            }
        }
        self.report.records_removed += removed;
        self.report.tombstones_removed += tombstones;
        if removed == 0 {
            self.keep(out, header, batch);
        } else if count > 0 || producer_last {
            let rewritten = encode_batch(header, &kept, count);
            let new_header = BatchHeader::parse(&rewritten).expect("just encoded");
            // Offsets and epochs never change: Raft, replicas and the epoch cache rely on them.
            assert!(
                new_header.base_offset == header.base_offset
                    && new_header.last_offset_delta == header.last_offset_delta
                    && new_header.partition_leader_epoch == header.partition_leader_epoch,
                "the rewritten batch at {} moved its offsets or epoch",
                header.base_offset
            );
            assert!(
                new_header.total_bytes() < batch.len(),
                "a batch that lost records did not shrink"
            );
            self.change(out);
            self.flush_filler(out);
            self.emit(out, &new_header, &rewritten);
        } else {
            self.remove(out, header);
        }
        Ok(())
    }

    /// Keeps a batch byte for byte.
    fn keep(&mut self, out: &mut Output, header: &BatchHeader, batch: &[u8]) {
        if out.started {
            self.flush_filler(out);
            self.emit(out, header, batch);
        } else {
            out.unchanged += batch.len() as u64;
            out.segment
                .on_batch(header, self.index_interval_bytes, None);
        }
    }

    /// Drops a batch whose every record went: its offsets join the pending empty batch.
    fn remove(&mut self, out: &mut Output, header: &BatchHeader) {
        self.change(out);
        match &mut out.filler {
            Some(f) if f.partition_leader_epoch == header.partition_leader_epoch => {
                f.last_offset_delta = (header.last_offset() - f.base_offset) as i32;
                f.max_timestamp = f.max_timestamp.max(header.max_timestamp);
            }
            _ => {
                self.flush_filler(out);
                out.filler = Some(BatchHeader {
                    attributes: 0,
                    producer_id: crate::batch::NO_PRODUCER_ID,
                    producer_epoch: -1,
                    base_sequence: crate::batch::NO_SEQUENCE,
                    record_count: 0,
                    ..*header
                });
            }
        }
    }

    /// Notes the first change in the current segment: from here on, output is written.
    fn change(&mut self, out: &mut Output) {
        if !out.started {
            out.started = true;
            self.steps.push_back(CleanStep::Begin {
                segment: out.segment.base_offset,
                copy: out.unchanged,
            });
        }
    }

    fn flush_filler(&mut self, out: &mut Output) {
        if let Some(filler) = out.filler.take() {
            let bytes = encode_batch(&filler, &[], 0);
            let header = BatchHeader::parse(&bytes).expect("just encoded");
            assert!(
                header.base_offset == filler.base_offset
                    && header.last_offset_delta == filler.last_offset_delta
                    && header.partition_leader_epoch == filler.partition_leader_epoch
                    && header.record_count == 0,
                "the empty batch for removed offsets from {} changed them",
                filler.base_offset
            );
            self.emit(out, &header, &bytes);
        }
    }

    fn emit(&mut self, out: &mut Output, header: &BatchHeader, bytes: &[u8]) {
        out.segment
            .on_batch(header, self.index_interval_bytes, None);
        out.buf.extend_from_slice(bytes);
        if out.buf.len() >= CLEANER_IO_BYTES as usize {
            self.steps.push_back(CleanStep::Write {
                segment: out.segment.base_offset,
                bytes: std::mem::take(&mut out.buf),
            });
        }
        assert!(
            out.buf.len() < CLEANER_IO_BYTES as usize,
            "the cleaner's write buffer is over its bound"
        );
    }

    /// The cleaned segment of the last `Swap`, to install in the log.
    pub fn take_swapped(&mut self) -> Option<Segment> {
        self.swapped.take()
    }

    /// The segment whose side file exists and is not swapped in yet, if any.
    pub fn side_file(&self) -> Option<u64> {
        self.out
            .as_ref()
            .filter(|o| o.started)
            .map(|o| o.segment.base_offset)
            .or(self.swapped.as_ref().map(|s| s.base_offset))
    }

    pub fn report(&self) -> CleanReport {
        self.report
    }

    pub fn tombstone_due_ms(&self) -> Option<i64> {
        self.tombstone_due_ms
    }
}
