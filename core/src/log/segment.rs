//! One segment of a partition log: its place in the offset space, its size, and its two sparse
//! indexes. The bytes themselves live in storage; this is what the log keeps in memory.
//!
//! Index files are written once, when the segment is sealed (rolled), and end in a CRC-32C so a
//! damaged or torn index is detected and rebuilt from the segment instead of trusted.

use crate::batch::BatchHeader;

/// Sparse offset index entry: the batch starting at `position` begins at `base + relative_offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OffsetEntry {
    pub relative_offset: u32,
    pub position: u32,
}

/// Sparse time index entry: every batch before the one at `relative_offset` (exclusive) has a max
/// timestamp of at most `max_timestamp`... and `max_timestamp` is the largest timestamp up to and
/// including that batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeEntry {
    pub max_timestamp: i64,
    pub relative_offset: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    pub base_offset: u64,
    /// The offset after the last batch in this segment (== `base_offset` when empty).
    pub next_offset: u64,
    pub size_bytes: u64,
    /// Largest record timestamp in the segment (`i64::MIN` when empty). Drives time retention.
    pub max_timestamp: i64,
    /// Relative offset of the (first) batch holding `max_timestamp`.
    pub max_timestamp_relative: Option<u32>,
    /// When the first batch was appended (the shell's clock); drives `segment.ms` rolls.
    pub first_append_ms: Option<u64>,
    /// The first batch's max timestamp: the segment's age after a restart, when the append
    /// time is no longer known (Kafka rolls by it too).
    pub first_timestamp: Option<i64>,
    pub offset_index: Vec<OffsetEntry>,
    pub time_index: Vec<TimeEntry>,
    /// Bytes appended since the last index entry.
    pub bytes_since_index: u64,
    pub sealed: bool,
}

/// A segment's in-memory state just before one batch was appended: what truncating back to that
/// batch restores. Index entries are only ever appended, so their counts are enough.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentMark {
    next_offset: u64,
    size_bytes: u64,
    max_timestamp: i64,
    max_timestamp_relative: Option<u32>,
    first_append_ms: Option<u64>,
    first_timestamp: Option<i64>,
    offset_index_len: usize,
    time_index_len: usize,
    bytes_since_index: u64,
}

const INDEX_MAGIC: u32 = 0x534c_4958; // "SLIX"
const TIME_INDEX_MAGIC: u32 = 0x534c_5458; // "SLTX"

impl Segment {
    pub fn new(base_offset: u64) -> Segment {
        Segment {
            base_offset,
            next_offset: base_offset,
            size_bytes: 0,
            max_timestamp: i64::MIN,
            max_timestamp_relative: None,
            first_append_ms: None,
            first_timestamp: None,
            offset_index: Vec::new(),
            time_index: Vec::new(),
            bytes_since_index: 0,
            sealed: false,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.size_bytes == 0
    }

    /// Accounts for a batch written at the current end of the segment, and indexes it when at
    /// least `index_interval_bytes` were appended since the last entry (the first batch always).
    pub fn on_batch(
        &mut self,
        header: &BatchHeader,
        index_interval_bytes: u32,
        now_ms: Option<u64>,
    ) {
        assert!(
            header.base_offset as u64 >= self.next_offset,
            "batches must be appended in offset order"
        );
        assert!(!self.sealed, "append to a sealed segment");
        let relative = (header.base_offset as u64 - self.base_offset) as u32;
        let position = self.size_bytes as u32;
        if self.offset_index.is_empty() || self.bytes_since_index >= u64::from(index_interval_bytes)
        {
            self.offset_index.push(OffsetEntry {
                relative_offset: relative,
                position,
            });
            self.bytes_since_index = 0;
            let max_so_far = self.max_timestamp.max(header.max_timestamp);
            if self
                .time_index
                .last()
                .is_none_or(|last| max_so_far > last.max_timestamp)
            {
                self.time_index.push(TimeEntry {
                    max_timestamp: max_so_far,
                    relative_offset: relative,
                });
            }
        }
        self.bytes_since_index += header.total_bytes() as u64;
        self.size_bytes += header.total_bytes() as u64;
        self.next_offset = header.next_offset() as u64;
        if header.max_timestamp > self.max_timestamp || self.max_timestamp_relative.is_none() {
            self.max_timestamp = header.max_timestamp;
            self.max_timestamp_relative = Some(relative);
        }
        if self.first_append_ms.is_none() {
            self.first_append_ms = now_ms;
        }
        if self.first_timestamp.is_none() {
            self.first_timestamp = Some(header.max_timestamp);
        }
        // Time lookups skip every batch before an entry by its timestamp and retention goes by
        // `max_timestamp`: no entry may claim a later timestamp than the segment holds.
        assert!(
            self.time_index
                .last()
                .is_none_or(|e| e.max_timestamp <= self.max_timestamp),
            "the time index runs ahead of the segment's max timestamp"
        );
    }

    pub fn mark(&self) -> SegmentMark {
        // Marks are taken just before an append, and only the active segment takes appends.
        assert!(
            !self.sealed,
            "a mark of sealed segment {}",
            self.base_offset
        );
        SegmentMark {
            next_offset: self.next_offset,
            size_bytes: self.size_bytes,
            max_timestamp: self.max_timestamp,
            max_timestamp_relative: self.max_timestamp_relative,
            first_append_ms: self.first_append_ms,
            first_timestamp: self.first_timestamp,
            offset_index_len: self.offset_index.len(),
            time_index_len: self.time_index.len(),
            bytes_since_index: self.bytes_since_index,
        }
    }

    /// Truncation: back to the state at `mark` (taken from this segment), which makes it the
    /// active segment again. The final time-index entry sealing added goes with it.
    pub fn rewind(&mut self, mark: SegmentMark) {
        assert!(mark.next_offset >= self.base_offset && mark.next_offset <= self.next_offset);
        assert!(mark.size_bytes <= self.size_bytes);
        assert!(mark.offset_index_len <= self.offset_index.len());
        assert!(
            mark.time_index_len <= self.time_index.len(),
            "a mark with more time index entries than the segment"
        );
        self.next_offset = mark.next_offset;
        self.size_bytes = mark.size_bytes;
        self.max_timestamp = mark.max_timestamp;
        self.max_timestamp_relative = mark.max_timestamp_relative;
        self.first_append_ms = mark.first_append_ms;
        self.first_timestamp = mark.first_timestamp;
        self.offset_index.truncate(mark.offset_index_len);
        self.time_index.truncate(mark.time_index_len);
        self.bytes_since_index = mark.bytes_since_index;
        self.sealed = false;
        // Reads start at index entries: one past the cut would point into the bytes cut off.
        assert!(
            self.offset_index
                .last()
                .is_none_or(|e| u64::from(e.position) < self.size_bytes),
            "an offset index entry past the cut of segment {}",
            self.base_offset
        );
    }

    /// The last indexed batch starting at or before `offset`: its base offset and byte position.
    pub fn lookup_offset(&self, offset: u64) -> (u64, u32) {
        let relative = offset
            .saturating_sub(self.base_offset)
            .min(u64::from(u32::MAX)) as u32;
        let at = self
            .offset_index
            .partition_point(|e| e.relative_offset <= relative);
        let (found, position) = if at == 0 {
            (self.base_offset, 0)
        } else {
            let entry = self.offset_index[at - 1];
            (
                self.base_offset + u64::from(entry.relative_offset),
                entry.position,
            )
        };
        // A cursor scans forward from the entry, so it must not lie after the target.
        assert!(
            found <= offset.max(self.base_offset),
            "the index entry for offset {offset} lies after it"
        );
        (found, position)
    }

    /// An offset from which to scan for the first batch whose max timestamp is `>= timestamp`:
    /// every batch before it is known to be older.
    pub fn lookup_timestamp(&self, timestamp: i64) -> u64 {
        let at = self
            .time_index
            .partition_point(|e| e.max_timestamp < timestamp);
        if at == 0 {
            self.base_offset
        } else {
            // Every batch up to and including this entry's batch is older than `timestamp`, so
            // the scan may start at that batch (it will be skipped by its own max timestamp).
            self.base_offset + u64::from(self.time_index[at - 1].relative_offset)
        }
    }

    pub fn max_timestamp_relative_offset(&self) -> Option<u32> {
        self.max_timestamp_relative
    }

    pub fn encode_offset_index(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + self.offset_index.len() * 8 + 4);
        out.extend_from_slice(&INDEX_MAGIC.to_be_bytes());
        out.extend_from_slice(&(self.offset_index.len() as u32).to_be_bytes());
        for e in &self.offset_index {
            out.extend_from_slice(&e.relative_offset.to_be_bytes());
            out.extend_from_slice(&e.position.to_be_bytes());
        }
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_be_bytes());
        out
    }

    pub fn encode_time_index(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + self.time_index.len() * 12 + 4);
        out.extend_from_slice(&TIME_INDEX_MAGIC.to_be_bytes());
        out.extend_from_slice(&(self.time_index.len() as u32).to_be_bytes());
        for e in &self.time_index {
            out.extend_from_slice(&e.max_timestamp.to_be_bytes());
            out.extend_from_slice(&e.relative_offset.to_be_bytes());
        }
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_be_bytes());
        out
    }

    /// Loads both index files of a sealed segment whose size is known. `None` if either is
    /// missing, torn, fails its CRC, or disagrees with the segment (entries out of order or
    /// pointing past its end): the caller then rebuilds them by scanning the segment.
    pub fn decode_indexes(
        base_offset: u64,
        size_bytes: u64,
        offset_index: &[u8],
        time_index: &[u8],
    ) -> Option<(Vec<OffsetEntry>, Vec<TimeEntry>)> {
        let offsets = decode_checked(offset_index, INDEX_MAGIC, 8)?;
        let times = decode_checked(time_index, TIME_INDEX_MAGIC, 12)?;
        let offsets: Vec<OffsetEntry> = offsets
            .chunks_exact(8)
            .map(|c| OffsetEntry {
                relative_offset: u32::from_be_bytes(c[0..4].try_into().expect("4")),
                position: u32::from_be_bytes(c[4..8].try_into().expect("4")),
            })
            .collect();
        let times: Vec<TimeEntry> = times
            .chunks_exact(12)
            .map(|c| TimeEntry {
                max_timestamp: i64::from_be_bytes(c[0..8].try_into().expect("8")),
                relative_offset: u32::from_be_bytes(c[8..12].try_into().expect("4")),
            })
            .collect();
        let ordered = offsets
            .windows(2)
            .all(|w| w[0].relative_offset < w[1].relative_offset && w[0].position < w[1].position)
            && times.windows(2).all(|w| {
                w[0].relative_offset < w[1].relative_offset
                    && w[0].max_timestamp < w[1].max_timestamp
            });
        let in_bounds = offsets.iter().all(|e| u64::from(e.position) < size_bytes);
        let starts_at_zero = offsets
            .first()
            .is_none_or(|e| e.position == 0 && e.relative_offset == 0);
        let _ = base_offset;
        (ordered && in_bounds && starts_at_zero && size_bytes > 0 && !offsets.is_empty())
            .then_some((offsets, times))
    }

    pub fn check_invariants(&self) {
        assert!(self.next_offset >= self.base_offset);
        assert_eq!(
            self.size_bytes == 0,
            self.next_offset == self.base_offset,
            "empty iff no offsets"
        );
        assert!(self.size_bytes <= crate::limits::SEGMENT_BYTES_LIMIT);
        if self.size_bytes > 0 {
            assert_eq!(
                self.offset_index.first(),
                Some(&OffsetEntry {
                    relative_offset: 0,
                    position: 0
                })
            );
        }
        for w in self.offset_index.windows(2) {
            assert!(w[0].relative_offset < w[1].relative_offset && w[0].position < w[1].position);
        }
        for w in self.time_index.windows(2) {
            assert!(
                w[0].relative_offset < w[1].relative_offset
                    && w[0].max_timestamp < w[1].max_timestamp
            );
        }
        if let Some(last) = self.offset_index.last() {
            assert!(u64::from(last.position) < self.size_bytes);
            assert!(self.base_offset + u64::from(last.relative_offset) < self.next_offset);
        }
        if let Some(last) = self.time_index.last() {
            assert!(
                last.max_timestamp <= self.max_timestamp,
                "the time index runs ahead of the segment's max timestamp"
            );
        }
        assert!(
            self.bytes_since_index <= self.size_bytes,
            "more bytes since the last index entry than in the segment"
        );
        // Rolls seal only segments with data, and recovery never seals an empty one.
        assert!(
            !self.sealed || !self.is_empty(),
            "empty segment {} is sealed",
            self.base_offset
        );
    }
}

/// Checks magic, entry count against length, and the CRC trailer; returns the entry bytes.
fn decode_checked(buf: &[u8], magic: u32, entry_bytes: usize) -> Option<&[u8]> {
    if buf.len() < 12 {
        return None;
    }
    let (body, crc) = buf.split_at(buf.len() - 4);
    if crc32c::crc32c(body) != u32::from_be_bytes(crc.try_into().ok()?) {
        return None;
    }
    if u32::from_be_bytes(body[0..4].try_into().ok()?) != magic {
        return None;
    }
    let count = u32::from_be_bytes(body[4..8].try_into().ok()?) as usize;
    let entries = &body[8..];
    (entries.len() == count.checked_mul(entry_bytes)?).then_some(entries)
}

/// File names of a segment, Kafka style: the base offset zero-padded to 20 digits.
pub fn log_file_name(base_offset: u64) -> String {
    format!("{base_offset:020}.log")
}
pub fn index_file_name(base_offset: u64) -> String {
    format!("{base_offset:020}.index")
}
pub fn time_index_file_name(base_offset: u64) -> String {
    format!("{base_offset:020}.timeindex")
}

/// The base offset named by a `.log` file name, if it is one.
pub fn parse_log_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".log")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}
