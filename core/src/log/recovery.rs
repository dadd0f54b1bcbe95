//! Opening a partition log from storage, as a sans-IO state machine.
//!
//! The shell lists the partition directory (names and lengths) and reads the checkpoint; then it
//! loops on [`Recovery::next_io`] / `feed_*` and finally calls [`Recovery::finish`], executing the
//! repair ops it returns like any other [`LogOp`].
//!
//! What is checked:
//! - Segments below the checkpoint's recovery point were sealed and fsynced with their indexes;
//!   their index files are loaded and validated (CRC, order, bounds) and rebuilt by a scan if bad.
//!   Their batches are still CRC-checked on every read.
//! - Segments at or above the recovery point (the tail) are scanned batch by batch: header, CRC
//!   and offset continuity. The first bad batch and everything after it is cut off (a torn or
//!   corrupt tail), later segments are deleted, indexes are rebuilt, and idempotent-producer state
//!   is replayed from the checkpoint's snapshot.
//! - A missing, torn or corrupt checkpoint means a full scan from the first segment.

use std::collections::{BTreeMap, VecDeque};

use super::epochs::LeaderEpochCache;
use super::read::ReadIo;
use super::segment::{parse_log_file_name, Segment};
use super::translate::OffsetTranslator;
use super::{LogConfig, LogOp, PartitionLog, Position, Undo};
use crate::batch::{self, check_crc, BatchHeader};
use crate::limits::RECOVERY_READ_BYTES;
use crate::producer::ProducerStateTable;

/// The checkpoint file of a partition.
pub const CHECKPOINT_FILE: &str = "checkpoint";
/// Where a new checkpoint is written before it is renamed over the old one.
pub const CHECKPOINT_TMP_FILE: &str = "checkpoint.tmp";
/// "SLC3": version 3 added the DeleteRecords log start. A version 2 checkpoint ("SLC2", the
/// same without it) decodes with log start 0; a version 1 checkpoint ("SLCP") does not decode,
/// which costs one full scan after an upgrade and never a wrong epoch cache.
const CHECKPOINT_MAGIC: u32 = 0x534c_4333;
const CHECKPOINT_MAGIC_V2: u32 = 0x534c_4332;

/// The durable facts a partition keeps besides its segments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// Every segment with a smaller base offset is sealed, fsynced, and has valid index files.
    pub recovery_point: u64,
    /// Idempotent-producer state as of `recovery_point`.
    pub producers: ProducerStateTable,
    /// The leader epochs that start before `recovery_point`.
    pub epochs: LeaderEpochCache,
    /// Raft's own entries below `recovery_point` (Kafka offsets), and the count of those below
    /// the log start when it was written. With `recovery_point` 0 (a checkpoint that vouches
    /// for nothing) it lists none and keeps only that count.
    pub offsets: OffsetTranslator,
    /// The Kafka log start DeleteRecords set below `recovery_point` (its entries there are
    /// committed: a checkpoint is written only below the high watermark), 0 if none.
    pub log_start: u64,
}

impl Checkpoint {
    pub(super) fn encode_parts(
        recovery_point: u64,
        producers: &ProducerStateTable,
        epochs: &LeaderEpochCache,
        offsets: &OffsetTranslator,
        log_start: u64,
    ) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(&CHECKPOINT_MAGIC.to_be_bytes());
        out.extend_from_slice(&recovery_point.to_be_bytes());
        producers.encode(&mut out);
        epochs.encode(&mut out);
        offsets.encode(&mut out);
        out.extend_from_slice(&log_start.to_be_bytes());
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_be_bytes());
        // Recovery takes producer state and epochs from this file alone: one that does not
        // decode to what was encoded would cost a full scan or, worse, restore other state.
        debug_assert!(
            Checkpoint::decode(&out).is_some_and(|c| c.recovery_point == recovery_point
                && c.producers == *producers
                && c.epochs == *epochs
                && c.offsets == *offsets
                && c.log_start == log_start),
            "the checkpoint at {recovery_point} does not decode to what was encoded"
        );
        out
    }

    pub fn encode(&self) -> Vec<u8> {
        Checkpoint::encode_parts(
            self.recovery_point,
            &self.producers,
            &self.epochs,
            &self.offsets,
            self.log_start,
        )
    }

    /// `None` for anything but an intact checkpoint.
    pub fn decode(bytes: &[u8]) -> Option<Checkpoint> {
        if bytes.len() < 16 {
            return None;
        }
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        if crc32c::crc32c(body) != u32::from_be_bytes(crc.try_into().ok()?) {
            return None;
        }
        let magic = u32::from_be_bytes(body[0..4].try_into().ok()?);
        if magic != CHECKPOINT_MAGIC && magic != CHECKPOINT_MAGIC_V2 {
            return None;
        }
        let recovery_point = u64::from_be_bytes(body[4..12].try_into().ok()?);
        let mut rest = &body[12..];
        let producers = ProducerStateTable::decode(&mut rest)?;
        let epochs = LeaderEpochCache::decode(&mut rest)?;
        let offsets = OffsetTranslator::decode(&mut rest)?;
        let log_start = if magic == CHECKPOINT_MAGIC {
            let (bytes, tail) = rest.split_first_chunk::<8>()?;
            rest = tail;
            u64::from_be_bytes(*bytes)
        } else {
            0
        };
        // Every listed offset lies below the recovery point.
        if offsets
            .listed()
            .last()
            .is_some_and(|&l| l >= recovery_point)
        {
            return None;
        }
        rest.is_empty().then_some(Checkpoint {
            recovery_point,
            producers,
            epochs,
            offsets,
            log_start,
        })
    }

    /// A checkpoint that vouches for nothing: the next recovery scans and replays every segment
    /// from `log_start` (the first one). It keeps only what no scan can find again, the count of
    /// Raft's own entries below `log_start`; retention deletes nothing while it stands.
    pub fn vouching_for_nothing(log_start: u64, internal_below: u64) -> Checkpoint {
        Checkpoint {
            recovery_point: 0,
            producers: ProducerStateTable::new(),
            epochs: LeaderEpochCache::new(),
            offsets: OffsetTranslator::with_base(log_start, internal_below),
            // The log start comes back from the log-start entries recovery replays (those below
            // `log_start` went with their segments).
            log_start: 0,
        }
    }

    /// This checkpoint, made to vouch for nothing ([`Checkpoint::vouching_for_nothing`]) for a
    /// log whose first segment starts at `first_segment`: what a recovery must start from when a
    /// read found damage the checkpoint's promise hid (a batch below the recovery point that
    /// fails its checks). `None` when it already vouches for nothing, or cannot say how many of
    /// Raft's entries lie below `first_segment`.
    pub fn distrusted(&self, first_segment: u64) -> Option<Checkpoint> {
        if self.recovery_point == 0
            || first_segment < self.offsets.start()
            || first_segment > self.recovery_point
        {
            return None;
        }
        Some(Checkpoint::vouching_for_nothing(
            first_segment,
            self.offsets.internal_below(first_segment),
        ))
    }
}

/// A read recovery needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecoveryIo {
    /// Read both index files of this segment whole (missing files as empty) and call
    /// [`Recovery::feed_indexes`].
    ReadIndexes { segment: u64 },
    /// Read this range of a segment file and call [`Recovery::feed_segment`].
    ReadSegment(ReadIo),
}

#[derive(Debug)]
struct Scan {
    segment: Segment,
    file_len: u64,
    /// Replay batches into producer state (tail segments only).
    replay: bool,
    /// Bytes the next read must cover at least (a batch longer than one read step).
    want: u32,
    /// Bytes the last read asked for; a shorter answer means the file shrank.
    requested: u64,
}

#[derive(Debug)]
pub struct Recovery {
    config: LogConfig,
    /// Segment files still to open: base offset and file length.
    pending: VecDeque<(u64, u64)>,
    /// Segments recovered so far, in order.
    recovered: Vec<Segment>,
    scanning: Option<Scan>,
    waiting_indexes: Option<(u64, u64)>,
    recovery_point: u64,
    producers: ProducerStateTable,
    epochs: LeaderEpochCache,
    /// Raft's own entries: from the checkpoint, then the replayed tail.
    offsets: OffsetTranslator,
    /// Whether `offsets` came from a checkpoint (which knows the count below the log start).
    offsets_known: bool,
    /// The first leader-epoch start of the replayed tail that names its Kafka offset: (log
    /// offset, Kafka offset). Without a checkpoint it tells the count below the log start.
    anchor: Option<(u64, u64)>,
    /// The DeleteRecords log start of the checkpoint (0 without one).
    log_start: u64,
    /// Log-start entries of the replayed tail: (log offset, Kafka offset named). Not known to be
    /// committed; the log applies them when its high watermark passes them.
    log_starts: Vec<(u64, u64)>,
    /// Undo records of the replayed tail (see `PartitionLog::undo`).
    undo: VecDeque<Undo>,
    snapshots: VecDeque<(u64, Vec<u8>)>,
    repairs: Vec<LogOp>,
    /// Segments whose index files must be (re)written after recovery.
    rewrite_indexes: Vec<u64>,
    /// The first segment that was scanned as part of the tail.
    tail_start: Option<u64>,
    stopped: bool,
    dir_changed: bool,
    epoch_max: Option<i32>,
    /// The first log offset of data that was cut or removed although it may have been synced
    /// (see [`Recovery::damage`]); `None` when only a torn tail, which was never synced, went.
    damage: Option<u64>,
    /// The log end before the damage, as far as the bytes tell for sure: past the base offset
    /// of a damaged batch whose header still reads, or of a removed segment with bytes.
    damaged_end: u64,
    /// See [`Recovery::with_commit_floor`].
    commit_floor: u64,
}

/// What recovery threw away although it may have been synced (see [`Recovery::damage`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Damage {
    /// The first log offset lost.
    pub first_lost: u64,
    /// The log end before the damage, as far as recovery can tell for sure (at least
    /// `first_lost`; the true end may be larger).
    pub end: u64,
}

impl Recovery {
    /// `files` is the partition directory listing with each file's length; `checkpoint` the
    /// checkpoint file's bytes if it exists.
    pub fn new(config: LogConfig, files: &[(String, u64)], checkpoint: Option<&[u8]>) -> Recovery {
        let segments: BTreeMap<u64, u64> = files
            .iter()
            .filter_map(|(name, len)| Some((parse_log_file_name(name)?, *len)))
            .collect();
        let mut repairs = Vec::new();
        // Index files without a segment are leftovers of a deletion that did not finish.
        for (name, _) in files {
            let base = name
                .strip_suffix(".index")
                .or_else(|| name.strip_suffix(".timeindex"))
                .and_then(|d| d.parse::<u64>().ok());
            if let Some(base) = base {
                if !segments.contains_key(&base) {
                    repairs.push(LogOp::DeleteSegment { base_offset: base });
                }
            }
        }
        let checkpoint = checkpoint.and_then(Checkpoint::decode).filter(|c| {
            // A recovery point must name a segment that exists; otherwise trust nothing.
            c.recovery_point == 0 || segments.contains_key(&c.recovery_point)
        });
        let (recovery_point, producers, epochs, offsets, offsets_known, log_start) =
            match checkpoint {
                Some(c) => (
                    c.recovery_point,
                    c.producers,
                    c.epochs,
                    c.offsets,
                    true,
                    c.log_start,
                ),
                None => (
                    0,
                    ProducerStateTable::new(),
                    LeaderEpochCache::new(),
                    OffsetTranslator::new(),
                    false,
                    0,
                ),
            };
        // Segments below the checkpoint's log start were deleted by retention before it was
        // written, and the deletion did not reach the disk: finish it (the checkpoint knows only
        // how many of Raft's own entries they held, not where).
        let mut segments = segments;
        let deleted: Vec<u64> = segments
            .range(..offsets.start())
            .map(|(base, _)| *base)
            .collect();
        for base in deleted {
            segments.remove(&base);
            repairs.push(LogOp::DeleteSegment { base_offset: base });
        }
        Recovery {
            config,
            pending: segments.into_iter().collect(),
            recovered: Vec::new(),
            scanning: None,
            waiting_indexes: None,
            recovery_point,
            producers,
            epochs,
            offsets,
            offsets_known,
            anchor: None,
            log_start,
            log_starts: Vec::new(),
            undo: VecDeque::new(),
            snapshots: VecDeque::new(),
            dir_changed: !repairs.is_empty(),
            repairs,
            rewrite_indexes: Vec::new(),
            tail_start: None,
            stopped: false,
            epoch_max: None,
            damage: None,
            damaged_end: 0,
            commit_floor: 0,
        }
    }

    /// Where recovery cut or removed data that may have been synced, and so acknowledged: the
    /// first log offset lost, or `None` if all it cut was a torn tail. Call after the last read.
    ///
    /// Only the last write before a crash can be torn, and it was never synced: a batch cut off
    /// by the end of the newest segment is such a tail. Anything else recovery throws away — a
    /// whole batch that fails its CRC or its epoch bound, a header that does not parse with more
    /// bytes after it, a segment after a cut or a gap — was damaged on the medium, or is the
    /// remains of a write the disk claimed to have synced. A Raft replica that loses such data
    /// may have acknowledged it, so it must not vote until peers have repaired it (see
    /// `raft`'s repair mode). A whole batch with garbage in it (a tear in which the file's size
    /// reached the disk and its data did not) is counted as damage too: it cannot be told from a
    /// flipped bit, and the cautious reading costs only a repair.
    pub fn damage(&self) -> Option<Damage> {
        self.damage.map(|first_lost| Damage {
            first_lost,
            end: self.damaged_end.max(first_lost),
        })
    }

    fn note_damage(&mut self, offset: u64, end: u64) {
        self.damage = Some(self.damage.map_or(offset, |d| d.min(offset)));
        self.damaged_end = self.damaged_end.max(end);
    }

    /// Epochs above `max` are damage: a Raft replica never stores a batch of a term it has not
    /// durably adopted, so the host passes its stored term. The epoch field is outside the
    /// batch CRC; without this bound a flipped bit could raise it undetected.
    pub fn with_epoch_max(mut self, max: i32) -> Recovery {
        self.epoch_max = Some(max);
        self
    }

    /// Offsets below `offset` are known committed (a Raft replica's stored commit index): a
    /// cut below it is damage even where it looks like a torn tail.
    pub fn with_commit_floor(mut self, offset: u64) -> Recovery {
        self.commit_floor = offset;
        self
    }

    /// The next read to perform, or `None` when [`finish`](Self::finish) may be called.
    pub fn next_io(&mut self) -> Option<RecoveryIo> {
        loop {
            if let Some(scan) = &mut self.scanning {
                if scan.segment.size_bytes < scan.file_len {
                    let left = scan.file_len - scan.segment.size_bytes;
                    let len = left.min(u64::from(RECOVERY_READ_BYTES.max(scan.want))) as u32;
                    // An empty read would look like a file that ended early.
                    assert!(len > 0, "a recovery read of no bytes");
                    scan.requested = u64::from(len);
                    return Some(RecoveryIo::ReadSegment(ReadIo {
                        segment: scan.segment.base_offset,
                        position: scan.segment.size_bytes,
                        len,
                    }));
                }
                self.end_scan();
                continue;
            }
            if let Some((base, _)) = self.waiting_indexes {
                return Some(RecoveryIo::ReadIndexes { segment: base });
            }
            let (base, len) = self.pending.pop_front()?;
            if self.stopped
                || self
                    .recovered
                    .last()
                    .is_some_and(|prev| prev.next_offset != base)
            {
                // After a cut-off tail, or after a gap in the offsets, nothing later can be trusted.
                self.stopped = true;
                // A segment with bytes held its base offset at least.
                self.note_damage(base, if len > 0 { base + 1 } else { base });
                self.repairs
                    .push(LogOp::DeleteSegment { base_offset: base });
                self.dir_changed = true;
                continue;
            }
            let is_last = self.pending.is_empty();
            if base < self.recovery_point && !is_last {
                self.waiting_indexes = Some((base, len));
            } else {
                self.start_scan(base, len, true);
            }
        }
    }

    fn start_scan(&mut self, base: u64, file_len: u64, tail: bool) {
        assert!(
            self.scanning.is_none() && self.waiting_indexes.is_none(),
            "segment {base} scanned while another is being recovered"
        );
        if tail {
            if self.tail_start.is_none() {
                self.tail_start = Some(base);
            } else {
                // The checkpoint advances through the snapshots in order.
                assert!(
                    self.snapshots.back().is_none_or(|(b, _)| *b < base),
                    "a snapshot at {base} after a later one"
                );
                let log_start = self
                    .log_starts
                    .iter()
                    .map(|(_, kafka)| *kafka)
                    .fold(self.log_start, u64::max);
                let snapshot = Checkpoint::encode_parts(
                    base,
                    &self.producers,
                    &self.epochs,
                    &self.offsets,
                    log_start,
                );
                self.snapshots.push_back((base, snapshot));
            }
        }
        self.scanning = Some(Scan {
            segment: Segment::new(base),
            file_len,
            replay: tail,
            want: 0,
            requested: 0,
        });
    }

    /// Feeds both index files of the segment named by the last `ReadIndexes`.
    pub fn feed_indexes(&mut self, offset_index: &[u8], time_index: &[u8]) {
        let (base, len) = self
            .waiting_indexes
            .take()
            .expect("feed_indexes without ReadIndexes");
        let next_base = self
            .pending
            .front()
            .map(|(b, _)| *b)
            .expect("a sealed segment has a successor");
        // The listing is ordered by base offset, and `next_io` let this segment through only if
        // it continues the ones recovered so far.
        assert!(base < next_base, "segment {base} listed before {next_base}");
        assert!(
            self.recovered
                .last()
                .is_none_or(|prev| prev.next_offset == base),
            "segment {base} does not continue the recovered log"
        );
        match Segment::decode_indexes(base, len, offset_index, time_index) {
            Some((offsets, times))
                if offsets
                    .last()
                    .is_none_or(|e| base + u64::from(e.relative_offset) < next_base) =>
            {
                let mut segment = Segment::new(base);
                segment.size_bytes = len;
                segment.next_offset = if len == 0 { base } else { next_base };
                if let Some(last) = times.last() {
                    segment.max_timestamp = last.max_timestamp;
                    segment.max_timestamp_relative = Some(last.relative_offset);
                }
                segment.offset_index = offsets;
                segment.time_index = times;
                segment.sealed = true;
                self.recovered.push(segment);
            }
            _ => {
                // Rebuild by scanning; producer state for this range comes from the checkpoint.
                self.rewrite_indexes.push(base);
                self.start_scan(base, len, false);
            }
        }
    }

    /// Feeds the bytes of the last `ReadSegment`.
    pub fn feed_segment(&mut self, bytes: &[u8]) {
        let interval = self.config.index_interval_bytes;
        // No batch longer than this was ever appended: a length field claiming more is a
        // flipped bit, not the start of a torn write (the length is outside the CRC).
        let batch_bytes_max =
            self.config.message_bytes_max as usize + crate::limits::BATCH_LOG_OVERHEAD_BYTES;
        let scan = self
            .scanning
            .as_mut()
            .expect("feed_segment without ReadSegment");
        scan.want = 0;
        if (bytes.len() as u64) < scan.requested {
            // The file is shorter than listed (it shrank, or storage misbehaved): scan what is
            // there, and let a cut-off batch count as torn.
            scan.file_len = scan.segment.size_bytes + bytes.len() as u64;
        }
        let chunk_end = scan.segment.size_bytes + bytes.len() as u64;
        let size_before = scan.segment.size_bytes;
        let mut at = 0usize;
        let mut bad = bytes.is_empty();
        // Whether the bad data is a prefix of one batch cut off by the end of the file: what a
        // torn last write leaves (see `Recovery::damage`).
        let mut cut_by_end = bad;
        // The end of a bad batch whose header still reads (a bound for `Damage::end`).
        let mut bad_end = 0u64;
        while at < bytes.len() {
            let rest = &bytes[at..];
            let header = match BatchHeader::parse(rest) {
                Ok(h) => h,
                // A header cut by the end of this read, with more file to come: read on.
                Err(_)
                    if rest.len() < crate::limits::BATCH_HEADER_BYTES
                        && chunk_end < scan.file_len =>
                {
                    break
                }
                Err(_) => {
                    bad = true;
                    cut_by_end = rest.len() < crate::limits::BATCH_HEADER_BYTES
                        && chunk_end >= scan.file_len;
                    break;
                }
            };
            let total = header.total_bytes();
            if total > rest.len() {
                let position = scan.segment.size_bytes;
                if position + total as u64 > scan.file_len {
                    bad = true; // Torn: the batch runs past the end of the file.
                    cut_by_end = total <= batch_bytes_max;
                } else {
                    scan.want = total as u32; // Read the whole batch next time.
                }
                break;
            }
            let continuous = header.base_offset == scan.segment.next_offset as i64;
            let skip_crc = self.config.planted.is(crate::planted::Bug::SkipRecoveryCrc);
            let crc_ok = skip_crc || check_crc(&rest[..total], &header).is_ok();
            // An epoch is outside the CRC: one that goes backwards is damage, like a bad CRC.
            let epoch = header.partition_leader_epoch;
            // A replica (`epoch_max` set) stores only batches of a term, never one without
            // an epoch: a negative epoch there is a flipped sign bit.
            let epoch_ok = !scan.replay
                || (epoch < 0 && self.epoch_max.is_none())
                || (self.epochs.accepts(epoch) && self.epoch_max.is_none_or(|max| epoch <= max));
            if !continuous || header.last_offset_delta < 0 || !crc_ok || !epoch_ok {
                bad = true;
                if continuous {
                    // The batch held its base offset at least. Its offset delta is not
                    // believed: a flipped bit may sit there.
                    bad_end = scan.segment.next_offset + 1;
                }
                break;
            }
            let start = Position {
                offset: scan.segment.next_offset,
                segment: scan.segment.base_offset,
                byte: scan.segment.size_bytes,
            };
            let mark = scan.segment.mark();
            scan.segment.on_batch(&header, interval, None);
            if scan.replay {
                let producer = self.producers.record(&header);
                if epoch >= 0 {
                    self.epochs.assign(epoch, start.offset);
                }
                if header.is_control() && batch::is_raft_internal_batch(&rest[..total]) {
                    self.offsets.record(start.offset);
                    if let Some(kafka) = batch::log_start_of(&rest[..total]) {
                        self.log_starts.push((start.offset, kafka));
                    }
                    if self.anchor.is_none() {
                        self.anchor = batch::leader_epoch_start_anchor(&rest[..total])
                            .map(|kafka| (start.offset, kafka));
                    }
                }
                // The log takes these as its undo records, which cover the tail batch by batch.
                assert!(
                    self.undo
                        .back()
                        .is_none_or(|u| u.next_offset == start.offset),
                    "the replayed batch at {} does not follow the last one",
                    start.offset
                );
                self.undo.push_back(Undo {
                    at: start,
                    next_offset: header.next_offset() as u64,
                    mark,
                    producer,
                });
            }
            at += total;
        }
        // Exactly the batches accepted above count as the segment's bytes; a cut or a rebuild
        // below starts from there.
        assert_eq!(
            scan.segment.size_bytes,
            size_before + at as u64,
            "segment {} accounts for bytes it did not accept",
            scan.segment.base_offset
        );
        if bad && !scan.replay {
            // Rebuilding the index of a sealed, durable segment: the damage is not a torn tail
            // and cutting here would throw away every later segment. Index what is good; reads
            // of the damaged batch fail their checks and are never served.
            scan.segment.size_bytes = scan.file_len;
        } else if bad {
            // A torn or corrupt tail: cut the segment at its last good batch; everything after
            // it goes.
            let base = scan.segment.base_offset;
            let len = scan.segment.size_bytes;
            let first_lost = scan.segment.next_offset;
            scan.file_len = len;
            self.repairs
                .push(LogOp::TruncateSegment { segment: base, len });
            self.stopped = true;
            // A cut below the stored commit index loses committed, hence synced, data: never
            // a torn tail, whatever it looks like.
            if !(cut_by_end && self.pending.is_empty()) || first_lost < self.commit_floor {
                self.note_damage(first_lost, bad_end);
            }
        }
    }

    fn end_scan(&mut self) {
        let scan = self.scanning.take().expect("scanning");
        let mut segment = scan.segment;
        if !scan.replay {
            if segment.is_empty() && self.recovered.is_empty() {
                // The oldest segment lost all its data: drop it, and the log starts at the next.
                self.repairs.push(LogOp::DeleteSegment {
                    base_offset: segment.base_offset,
                });
                self.rewrite_indexes.retain(|b| *b != segment.base_offset);
                self.dir_changed = true;
                return;
            }
            // A rebuilt sealed segment ends where the next one begins, whatever its damage.
            if let (false, Some((next_base, _))) = (segment.is_empty(), self.pending.front()) {
                segment.next_offset = segment.next_offset.max(*next_base);
            }
        }
        if segment.is_empty() && !self.pending.is_empty() {
            // An empty segment before others: the later ones cannot follow it (a gap); next_io
            // deletes them and this one stays as the active segment.
            self.stopped = true;
        }
        if !self.pending.is_empty() && !self.stopped {
            segment.seal();
            if !self.rewrite_indexes.contains(&segment.base_offset) {
                self.rewrite_indexes.push(segment.base_offset);
            }
        }
        // `next_io` deletes any segment after a gap, so the recovered ones are contiguous.
        assert!(
            self.recovered
                .last()
                .is_none_or(|prev| prev.next_offset == segment.base_offset),
            "recovered segment {} does not continue the log",
            segment.base_offset
        );
        self.recovered.push(segment);
    }

    /// Why the Kafka offsets of this log cannot be recovered, if they cannot: retention deleted
    /// its start, the checkpoint (which counts Raft's entries there) is gone or damaged, and no
    /// leader-epoch start in what is left names its Kafka offset. Guessing would move every
    /// offset a consumer committed, so the log is not opened. (Repair from peers comes with
    /// protocol-aware recovery.) Call after the last read, before [`finish`](Self::finish).
    pub fn kafka_offsets_lost(&self) -> Option<String> {
        let log_start = self.recovered.first().map_or(0, |s| s.base_offset);
        (log_start > 0 && !self.offsets_known && self.anchor.is_none()).then(|| {
            format!(
                "the checkpoint is missing or damaged and the log starts at {log_start} (retention \
                 deleted the rest): the Kafka offsets of its records cannot be recovered"
            )
        })
    }

    /// The offset translator of the recovered log `[log_start, log_end)`.
    fn recovered_offsets(&self, log_start: u64, log_end: u64) -> OffsetTranslator {
        let mut offsets = if self.offsets_known || log_start == 0 {
            self.offsets.clone()
        } else {
            // Rebuilt from a scan of everything left: the first named Kafka offset tells how
            // many of Raft's entries lay below the log start.
            let (at, kafka) = self
                .anchor
                .expect("kafka_offsets_lost is checked before finish");
            let listed_between = self
                .offsets
                .listed()
                .iter()
                .filter(|&&i| i >= log_start && i < at)
                .count() as u64;
            let below = (at - kafka).saturating_sub(listed_between).min(log_start);
            let mut rebuilt = OffsetTranslator::with_base(log_start, below);
            for &i in self.offsets.listed().iter().filter(|&&i| i >= log_start) {
                rebuilt.record(i);
            }
            rebuilt
        };
        offsets.truncate_from_start(log_start);
        offsets.truncate_from_end(log_end);
        offsets
    }

    /// Builds the recovered log. Returns it with the repairs to execute first (truncations,
    /// deletions, rewritten indexes). The recovered tail is fsynced by the first group commit
    /// before the high watermark moves past it, because a process crash can leave unsynced
    /// bytes in the page cache that reads see but a power loss would not keep.
    pub fn finish(mut self) -> (PartitionLog, Vec<LogOp>) {
        assert!(
            self.scanning.is_none() && self.waiting_indexes.is_none() && self.pending.is_empty()
        );
        if self.recovered.is_empty() {
            let mut log = PartitionLog::create(self.config);
            let mut ops = self.repairs;
            while let Some(op) = log.poll_op() {
                ops.push(op);
            }
            return (log, ops);
        }
        // If truncation emptied segments at the end, keep just one empty active segment. The
        // checkpoint's segment stays even when empty (a cut exactly at the recovery point):
        // deleting it would void the checkpoint and with it the producer state and epochs of
        // every segment retention has already deleted.
        while self.recovered.len() > 1
            && self.recovered.last().is_some_and(|s| {
                s.is_empty() && (self.recovery_point == 0 || s.base_offset != self.recovery_point)
            })
        {
            let empty = self.recovered.pop().expect("len > 1");
            self.repairs.push(LogOp::DeleteSegment {
                base_offset: empty.base_offset,
            });
            self.dir_changed = true;
        }
        if let Some(last) = self.recovered.last_mut() {
            last.sealed = false;
        }
        let active_base = self
            .recovered
            .last()
            .map(|s| s.base_offset)
            .expect("non-empty");
        let log_start = self.recovered.first().map_or(0, |s| s.base_offset);
        let log_end = self.recovered.last().map_or(0, |s| s.next_offset);
        self.offsets = self.recovered_offsets(log_start, log_end);
        let mut ops = self.repairs;
        for segment in &self.recovered {
            if segment.base_offset != active_base
                && self.rewrite_indexes.contains(&segment.base_offset)
            {
                ops.push(LogOp::WriteIndexes {
                    segment: segment.base_offset,
                    offset_index: segment.encode_offset_index(),
                    time_index: segment.encode_time_index(),
                });
            }
        }
        // If the segment the checkpoint names did not survive (its tail was cut away), the
        // checkpoint's promise "everything below is sealed and durable" and its producer snapshot
        // no longer describe this log: replace it with an empty one (the next recovery scans
        // everything) until a group commit writes a fresh checkpoint.
        // Regression: simulator seed 1880 (a bit flip in the first batch of the checkpoint's
        // segment, then a failed fsync and a reopen).
        let checkpoint_alive = self.recovery_point == 0
            || self
                .recovered
                .iter()
                .any(|s| s.base_offset == self.recovery_point);
        if !checkpoint_alive {
            self.recovery_point = 0;
            // It keeps the count of Raft's entries below the log start: the next recovery
            // replays everything from there, and retention deletes nothing while it stands.
            let empty =
                Checkpoint::vouching_for_nothing(log_start, self.offsets.internal_below(log_start));
            ops.push(LogOp::WriteCheckpoint {
                bytes: empty.encode(),
            });
        }
        // The recovered tail: the segments scanned and replayed. If none survived (trailing
        // segments emptied by a cut and removed), the log ends in segments that were sealed
        // below the checkpoint, which are durable.
        let tail_start = self
            .tail_start
            .filter(|t| self.recovered.iter().any(|s| s.base_offset == *t))
            .unwrap_or(log_end);
        assert!(
            tail_start <= log_end,
            "the replayed tail starts past the log end"
        );
        let tail: Vec<u64> = self
            .recovered
            .iter()
            .map(|s| s.base_offset)
            .filter(|b| *b >= tail_start)
            .collect();
        let rewritten: Vec<u64> = self
            .rewrite_indexes
            .iter()
            .copied()
            .filter(|b| *b != active_base)
            .collect();
        // Producer state may remember batches that did not survive (a cut tail, deleted segments).
        self.producers.truncate(log_end);
        // Start first, then end, as a live log applies them (retention, then a suffix cut): an
        // empty log keeps no epoch, not the one that covered its deleted prefix.
        self.epochs.truncate_from_start(log_start);
        self.epochs.truncate_from_end(log_end);
        self.undo.retain(|u| u.at.offset >= tail_start);
        let mut log = PartitionLog::from_parts(
            self.config,
            self.recovered,
            self.producers,
            self.recovery_point,
        );
        // Snapshots taken while the count of Raft's entries below the log start was not yet
        // known (a scan without a checkpoint of a log retention shortened) would persist a
        // wrong count: the next rolls take fresh ones.
        let snapshots_known = self.offsets_known || log_start == 0;
        log.snapshots = self
            .snapshots
            .into_iter()
            .filter(|(b, _)| *b > log.recovery_point && snapshots_known)
            .collect();
        log.epochs = self.epochs;
        log.translator = self.offsets;
        log.undo = self.undo;
        log.mark_recovered_tail(tail_start, &tail, &rewritten, self.dir_changed);
        // The checkpoint's log start is committed; the replayed tail's entries are not known to
        // be, so they wait for the high watermark (which starts at the tail). Entries cut off
        // with a damaged tail are gone; each named offset is capped where its entry stands, as
        // when it was first written.
        let high_watermark = log.high_watermark();
        // The planted defect forgets the checkpoint's DeleteRecords start: the log start is
        // where the first segment begins.
        let forget_start = log
            .config
            .planted
            .is(crate::planted::Bug::LogStartNotRecovered);
        log.kafka_start = if checkpoint_alive && !forget_start {
            self.log_start.min(log.translator.kafka(high_watermark))
        } else {
            0
        };
        for (offset, kafka) in self.log_starts {
            if offset < log.log_start_offset() || offset >= log.log_end_offset() {
                continue;
            }
            assert!(
                offset >= high_watermark,
                "a replayed log start at {offset} below the recovered high watermark"
            );
            let kafka = kafka.min(log.translator.kafka(offset));
            log.pending_starts.push_back((offset, kafka));
        }
        log.check_invariants();
        if !checkpoint_alive {
            // The empty checkpoint written among the repairs becomes durable with the first
            // group commit.
            log.checkpoint_pending = Some(0);
        }
        if log.config.planted.is(crate::planted::Bug::RecoveryOffByOne) {
            let active = log.active_mut();
            if active.next_offset > active.base_offset {
                active.next_offset -= 1;
            }
        }
        (log, ops)
    }
}

impl PartitionLog {
    /// After recovery: nothing from `tail_start` on is known to be durable until fsynced again.
    /// It is not known to be committed either, so the high watermark starts there in both modes
    /// (the checkpoint never passes the high watermark, so that is at most the old one).
    fn mark_recovered_tail(&mut self, tail_start: u64, tail: &[u64], indexes: &[u64], dir: bool) {
        if tail_start < self.log_end_offset() {
            let segment = self.segments.get(&tail_start).expect("tail segment exists");
            self.durable = super::Position {
                offset: segment.base_offset,
                segment: segment.base_offset,
                byte: 0,
            };
        }
        self.trusted = self.trusted.max(self.durable);
        self.high_watermark = self.durable;
        // Nothing of the replayed tail is known to be synced or committed yet.
        assert_eq!(
            self.high_watermark.offset,
            tail_start.min(self.log_end_offset()),
            "the recovered high watermark is not the start of the replayed tail"
        );
        self.dirty_segments.extend(tail.iter().copied());
        self.dirty_indexes.extend(indexes.iter().copied());
        self.dirty_dir |= dir;
        self.check_invariants();
    }
}
