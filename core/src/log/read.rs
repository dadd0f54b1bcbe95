//! Reads as small sans-IO state machines: the log plans a read, the shell performs the byte reads
//! the cursor asks for (`next_io`) and feeds the results back (`feed`), until the cursor is done.
//!
//! A cursor first seeks: from the sparse index position it reads batch headers and skips batches
//! that end before the target (at most [`SCAN_BATCHES_MAX`], since an index entry is written every
//! `index.interval.bytes`). Then it reads the batches to return in one go and checks each one's
//! CRC: a batch that fails its CRC is never returned.

use bytes::Bytes;

use crate::batch::{check_crc, BatchHeader, Records};
use crate::limits::{BATCH_HEADER_BYTES, SCAN_BATCHES_MAX};

use super::ReadError;

/// One whole, CRC-checked batch of a read, with what Raft needs to know of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredBatch {
    pub base_offset: u64,
    pub last_offset: u64,
    /// `partitionLeaderEpoch`: the Raft term.
    pub epoch: i32,
    /// For a control batch, its control type (see `batch::control_type_of`).
    pub control_type: Option<i16>,
    pub bytes: Bytes,
}

/// The shell's side of a read: the bytes of a segment file range a cursor asks for.
pub trait SegmentReader {
    fn read_at(&self, io: ReadIo) -> Result<Bytes, ReadError>;
}

/// What a cursor looks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadTarget {
    /// The batch holding this offset and the batches after it.
    Offset(u64),
    /// The first record with a timestamp at or after this one.
    Timestamp(i64),
}

/// A byte range of a segment file the cursor needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadIo {
    pub segment: u64,
    pub position: u64,
    pub len: u32,
}

/// Result of a timestamp search.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimestampHit {
    pub offset: u64,
    pub timestamp: i64,
}

#[derive(Debug)]
enum State {
    /// Reading the header at `position`; `skipped` batches so far.
    Seek {
        skipped: usize,
    },
    /// Reading `len` bytes of whole batches at `position`.
    Fetch {
        len: u32,
    },
    Done,
}

#[derive(Debug)]
pub struct ReadCursor {
    target: ReadTarget,
    segment: u64,
    position: u64,
    /// The base offset the batch at `position` must have.
    expected_offset: u64,
    /// Bytes of the segment that may be read (high watermark).
    visible_end: u64,
    max_bytes: u32,
    state: State,
    records: Bytes,
    hit: Option<TimestampHit>,
}

impl ReadCursor {
    /// `start` is an index entry: the base offset and byte position of a batch.
    pub(super) fn new(
        target: ReadTarget,
        segment: u64,
        start: (u64, u64),
        visible_end: u64,
        max_bytes: u32,
    ) -> Self {
        let (expected_offset, position) = start;
        let state = if position < visible_end {
            State::Seek { skipped: 0 }
        } else {
            State::Done
        };
        ReadCursor {
            target,
            segment,
            position,
            expected_offset,
            visible_end,
            max_bytes,
            state,
            records: Bytes::new(),
            hit: None,
        }
    }

    pub(super) fn empty() -> Self {
        ReadCursor::new(ReadTarget::Offset(0), 0, (0, 0), 0, 0)
    }

    /// The next read the shell must perform, or `None` when the cursor is done.
    pub fn next_io(&self) -> Option<ReadIo> {
        let len = match self.state {
            State::Seek { .. } => BATCH_HEADER_BYTES as u32,
            State::Fetch { len } => len,
            State::Done => return None,
        };
        Some(ReadIo {
            segment: self.segment,
            position: self.position,
            len,
        })
    }

    /// Feeds the bytes read for the last `next_io`. A short read means the data the index or the
    /// log promised is not there: the segment is damaged.
    pub fn feed(&mut self, bytes: Bytes) -> Result<(), ReadError> {
        let io = self.next_io().expect("feed after the cursor is done");
        if bytes.len() < io.len as usize {
            self.state = State::Done;
            return Err(corrupt(
                io,
                format!("short read: {} of {} bytes", bytes.len(), io.len),
            ));
        }
        match self.state {
            State::Seek { skipped } => self.on_header(io, &bytes, skipped),
            State::Fetch { .. } => self.on_batches(io, bytes),
            State::Done => unreachable!("next_io returned Some"),
        }
    }

    fn on_header(&mut self, io: ReadIo, bytes: &[u8], skipped: usize) -> Result<(), ReadError> {
        let header = BatchHeader::parse(bytes).map_err(|e| {
            self.state = State::Done;
            corrupt(io, e.to_string())
        })?;
        let total = header.total_bytes() as u64;
        if header.base_offset != self.expected_offset as i64 {
            self.state = State::Done;
            let why = format!(
                "batch has base offset {}, expected {}",
                header.base_offset, self.expected_offset
            );
            return Err(corrupt(io, why));
        }
        if self.position + total > self.visible_end {
            self.state = State::Done;
            return Err(corrupt(
                io,
                "batch crosses the end of the readable data".into(),
            ));
        }
        let skip = match self.target {
            ReadTarget::Offset(offset) => header.last_offset() < offset as i64,
            ReadTarget::Timestamp(ts) => header.max_timestamp < ts,
        };
        if !skip {
            let len = match self.target {
                ReadTarget::Offset(_) => {
                    let available = self.visible_end - self.position;
                    total.max(u64::from(self.max_bytes)).min(available)
                }
                ReadTarget::Timestamp(_) => total,
            };
            // Past the visible end lie bytes that are not committed (or not synced): a read
            // never asks for them, whatever the headers it has seen claim.
            assert!(
                self.position + len <= self.visible_end,
                "a fetch of {len} bytes at {} passes the visible end {}",
                self.position,
                self.visible_end
            );
            self.state = State::Fetch { len: len as u32 };
            return Ok(());
        }
        self.position += total;
        self.expected_offset = header.next_offset() as u64;
        if self.position >= self.visible_end {
            self.state = State::Done;
        } else if matches!(self.target, ReadTarget::Offset(_)) && skipped > SCAN_BATCHES_MAX {
            // The offset index promises the target within one index interval (at most
            // SCAN_BATCHES_MAX + 1 batches); a longer scan means it is damaged. Timestamp scans
            // are bounded by the segment instead, as in Kafka.
            self.state = State::Done;
            return Err(corrupt(
                io,
                "target not found within the index interval".into(),
            ));
        } else {
            self.state = State::Seek {
                skipped: skipped + 1,
            };
        }
        Ok(())
    }

    fn on_batches(&mut self, io: ReadIo, bytes: Bytes) -> Result<(), ReadError> {
        self.state = State::Done;
        let mut end = 0usize;
        let mut first_bytes = 0usize;
        while end < bytes.len() {
            let rest = &bytes[end..];
            let Ok(header) = BatchHeader::parse(rest) else {
                break;
            };
            let total = header.total_bytes();
            if total > rest.len() {
                break;
            }
            let continuous = if header.base_offset == self.expected_offset as i64 {
                Ok(())
            } else {
                Err(crate::batch::BatchError::BadRecords(
                    "base offset breaks the offset sequence",
                ))
            };
            if let Err(e) = check_crc(&rest[..total], &header).and(continuous) {
                if end == 0 {
                    return Err(corrupt(io, e.to_string()));
                }
                // Serve what came before; the next read starts at the bad batch and fails there.
                break;
            }
            if end > 0 && end + total > self.max_bytes as usize {
                break;
            }
            if let ReadTarget::Timestamp(ts) = self.target {
                self.hit = Some(first_record_at_or_after(&rest[..total], &header, ts));
                return Ok(());
            }
            self.expected_offset = header.next_offset() as u64;
            if end == 0 {
                first_bytes = total;
            }
            end += total;
        }
        if end == 0 {
            return Err(corrupt(io, "no whole batch at the read position".into()));
        }
        // KIP-74: at most `max_bytes`, unless the first batch alone is larger.
        assert!(
            end <= (self.max_bytes as usize).max(first_bytes),
            "a read of {end} bytes passes max_bytes {}",
            self.max_bytes
        );
        self.records = bytes.slice(..end);
        Ok(())
    }

    /// Reads everything the cursor asks for through `reader`, to completion.
    pub fn run(&mut self, reader: &impl SegmentReader) -> Result<(), ReadError> {
        while let Some(io) = self.next_io() {
            self.feed(reader.read_at(io)?)?;
        }
        Ok(())
    }

    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// The whole batches read (for an offset target); empty when there was nothing to read.
    pub fn into_records(self) -> Bytes {
        debug_assert!(self.is_done());
        self.records
    }

    /// The whole batches read (for an offset target), one by one.
    pub fn into_batches(self) -> Vec<StoredBatch> {
        let records = self.into_records();
        let mut out = Vec::new();
        let mut at = 0;
        // Every batch here passed its header and CRC checks in `on_batches`.
        while let Ok(header) = BatchHeader::parse(&records[at..]) {
            let end = at + header.total_bytes();
            let bytes = records.slice(at..end);
            out.push(StoredBatch {
                base_offset: header.base_offset as u64,
                last_offset: header.last_offset() as u64,
                epoch: header.partition_leader_epoch,
                control_type: crate::batch::control_type_of(&bytes),
                bytes,
            });
            at = end;
        }
        debug_assert_eq!(at, records.len());
        // `on_batches` served only batches that continue the offset sequence.
        debug_assert!(
            out.windows(2)
                .all(|w| w[1].base_offset.checked_sub(1) == Some(w[0].last_offset)),
            "the batches of a read are not contiguous"
        );
        out
    }

    /// The record found (for a timestamp target).
    pub fn into_timestamp_hit(self) -> Option<TimestampHit> {
        debug_assert!(self.is_done());
        self.hit
    }
}

/// The first record of `batch` with a timestamp `>= ts` (the batch's max timestamp is). For a
/// compressed batch, whose records core cannot read, the batch's first offset.
fn first_record_at_or_after(batch: &[u8], header: &BatchHeader, ts: i64) -> TimestampHit {
    let fallback = TimestampHit {
        offset: header.base_offset as u64,
        timestamp: header.max_timestamp,
    };
    let Ok(records) = Records::new(batch) else {
        return fallback;
    };
    for record in records {
        let Ok(record) = record else { return fallback };
        let timestamp = header.record_timestamp(record.timestamp_delta);
        if timestamp >= ts {
            return TimestampHit {
                offset: (header.base_offset + record.offset_delta) as u64,
                timestamp,
            };
        }
    }
    fallback
}

fn corrupt(io: ReadIo, why: String) -> ReadError {
    ReadError::Corrupt(format!(
        "segment {} at byte {}: {why}",
        io.segment, io.position
    ))
}
