//! Helpers shared by the log's test modules.

use super::{LogConfig, LogStore, PartitionLog, StoredBatch};
use crate::batch::{BatchBuilder, BatchHeader, NewRecord};
use crate::storage::Storage;

/// Every committed batch of `log` (log start to high watermark), read through `store` as a
/// consumer reads it; asserts that no read passes the high watermark.
pub fn committed_batches<S: Storage>(
    log: &PartitionLog,
    store: &mut LogStore<S>,
) -> Vec<StoredBatch> {
    let mut offset = log.log_start_offset();
    let mut out = Vec::new();
    while offset < log.high_watermark() {
        let mut cursor = log.read(offset, 1 << 20).expect("read");
        store.read(&mut cursor).expect("read");
        let batches = cursor.into_batches();
        assert!(!batches.is_empty(), "no batch at {offset}, below the HW");
        for b in batches {
            assert!(b.last_offset < log.high_watermark(), "read past the HW");
            offset = b.last_offset + 1;
            out.push(b);
        }
    }
    out
}

/// Small segments and index intervals so a short run rolls, indexes and deletes a lot.
pub fn small_config() -> LogConfig {
    LogConfig {
        segment_bytes_max: 700,
        segment_ms: 10_000,
        retention_ms: -1,
        retention_bytes: -1,
        index_interval_bytes: 150,
        message_bytes_max: 1 << 20,
        ..LogConfig::default()
    }
}

/// One batch; `producer` is (producer id, epoch, base sequence).
pub fn batch(
    records: u8,
    value_len: usize,
    timestamp: i64,
    producer: Option<(i64, i16, i32)>,
) -> Vec<u8> {
    let mut b = BatchBuilder::new(timestamp);
    if let Some((pid, epoch, seq)) = producer {
        b = b.idempotent(pid, epoch, seq);
    }
    for i in 0..records {
        b.push(&NewRecord {
            timestamp: timestamp + i64::from(i),
            key: Some(vec![i]),
            value: Some(vec![b'v'; value_len]),
            headers: vec![],
        });
    }
    b.build()
}

pub fn header(b: &[u8]) -> BatchHeader {
    BatchHeader::parse(b).unwrap()
}
