//! Criterion benchmarks of the partition log's CPU cost (no storage): validating a producer's
//! batch, and appending it (validation, producer checks, offset assignment, indexing). Results
//! are recorded in docs/benchmarks.md.

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sluice_core::batch::{validate_produce, BatchBuilder, NewRecord};
use sluice_core::log::{LogConfig, PartitionLog};

/// A batch of `records` records of `value_bytes` each, keyed, as a producer would send it.
fn batch(records: usize, value_bytes: usize) -> Vec<u8> {
    let mut b = BatchBuilder::new(1_700_000_000_000);
    for i in 0..records {
        b.push(&NewRecord {
            timestamp: 1_700_000_000_000 + i as i64,
            key: Some(format!("key-{i:08}").into_bytes()),
            value: Some(vec![b'x'; value_bytes]),
            headers: vec![],
        });
    }
    b.build()
}

fn validation(c: &mut Criterion) {
    let mut group = c.benchmark_group("validate_produce");
    for (records, value_bytes) in [(1, 100), (100, 100), (1000, 100), (16, 1024)] {
        let bytes = batch(records, value_bytes);
        group.throughput(Throughput::Elements(records as u64));
        group.bench_with_input(
            BenchmarkId::new(format!("{value_bytes}B"), records),
            &bytes,
            |b, bytes| b.iter(|| validate_produce(bytes, 1 << 20).unwrap()),
        );
    }
    group.finish();
}

fn append(c: &mut Criterion) {
    let mut group = c.benchmark_group("append");
    for (records, value_bytes) in [(1, 100), (100, 100), (1000, 100), (16, 1024)] {
        let bytes = batch(records, value_bytes);
        group.throughput(Throughput::Elements(records as u64));
        group.bench_with_input(
            BenchmarkId::new(format!("{value_bytes}B"), records),
            &bytes,
            |b, bytes| {
                let mut log = PartitionLog::create(LogConfig::default());
                let mut now_ms = 1_700_000_000_000;
                b.iter(|| {
                    now_ms += 1;
                    let appended = log.append(BytesMut::from(&bytes[..]), 0, now_ms).unwrap();
                    // Drain the effects as the shell would, and keep group commits going.
                    while log.poll_op().is_some() {}
                    if let Some(request) = log.poll_sync() {
                        log.on_synced(request);
                        while log.poll_op().is_some() {}
                    }
                    appended
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, validation, append);
criterion_main!(benches);
