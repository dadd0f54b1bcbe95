"""Crash tests with the real binary: kill -9, restart, and damaged segment tails."""

import re
import struct

import pytest

from helpers import (FIRST_LOG_OFFSET, FIRST_OFFSET, assert_rows_equal, expected_rows, produce_all, producer, read_partition, record,
                     unique_topic)

SEGMENT_RE = re.compile(r"^(\d{20})\.log$")


def test_acknowledged_records_survive_kill9(broker):
    topic = unique_topic("crash")
    n = 5000
    records = [record(i, "crash") for i in range(n)]
    p = producer(broker.bootstrap)
    reports = produce_all(p, topic, records)
    assert [o for _, o in reports] == list(range(FIRST_OFFSET, FIRST_OFFSET + n))
    del p

    broker.kill9()
    broker.restart()

    got = read_partition(broker.bootstrap, topic, min_count=n, timeout=60)
    assert_rows_equal(got, expected_rows(records, reports))

    # Still writable, right after the last record: the restarted leader's term-start entry takes
    # no Kafka offset.
    more = [record(i, "after") for i in range(3)]
    reports2 = produce_all(producer(broker.bootstrap), topic, more)
    end = FIRST_OFFSET + n
    assert reports2 == [(0, end), (0, end + 1), (0, end + 2)], reports2


# -- damaged segment tail --------------------------------------------------------------------

def partition_dir(broker, topic, partition=0):
    d = broker.data_dir / f"{topic}-{partition}"
    assert d.is_dir(), f"no partition directory {d}; data dir holds {sorted(p.name for p in broker.data_dir.iterdir())}"
    return d


def active_segment(broker, topic):
    d = partition_dir(broker, topic)
    segs = sorted((int(m.group(1)), p) for p in d.iterdir() if (m := SEGMENT_RE.match(p.name)))
    assert segs, f"no segment files in {d}: {sorted(p.name for p in d.iterdir())}"
    return segs[-1][1], segs[-1][0]


def batches(data: bytes):
    """Kafka v2 record batches laid end to end: [(position, base_offset, last_offset, length)]."""
    out = []
    pos = 0
    while pos < len(data):
        assert len(data) - pos >= 61, f"partial batch header at byte {pos}"
        base, length = struct.unpack_from(">qi", data, pos)
        (last_delta,) = struct.unpack_from(">i", data, pos + 23)
        assert data[pos + 16] == 2, f"magic {data[pos + 16]} at byte {pos}"
        size = 12 + length
        assert pos + size <= len(data), f"batch at byte {pos} runs past the end of the file"
        out.append((pos, base, base + last_delta, size))
        pos += size
    return out


DAMAGE = ["append_garbage", "truncate_tail", "flip_byte"]


@pytest.mark.parametrize("damage", DAMAGE)
def test_damaged_segment_tail(broker, damage):
    topic = unique_topic(f"tail-{damage.replace('_', '-')}")
    p = producer(broker.bootstrap, **{"linger.ms": 50})
    records, reports = [], []
    # Several flushed groups, then one record alone in its own (final) batch.
    for group in range(5):
        recs = [record(len(records) + i, "tail") for i in range(20)]
        reports += produce_all(p, topic, recs)
        records += recs
    last = [record(len(records), "tail-last")]
    reports += produce_all(p, topic, last)
    records += last
    n = len(records)
    assert [o for _, o in reports] == list(range(FIRST_OFFSET, FIRST_OFFSET + n))
    del p

    broker.kill9()

    seg, base = active_segment(broker, topic)
    data = seg.read_bytes()
    layout = batches(data)
    assert layout, "active segment is empty"
    pos, first, last_off, size = layout[-1]
    # Offsets in the segment file are log offsets: the term-start entry at 0 takes one.
    last_record = FIRST_LOG_OFFSET + n - 1
    assert (first, last_off) == (last_record, last_record), \
        f"last batch holds offsets {first}..{last_off}, not just {last_record}"
    assert pos + size == len(data)

    if damage == "append_garbage":
        with open(seg, "ab") as f:
            f.write(bytes((i * 37 + 11) % 256 for i in range(100)))
        survivors = n
    elif damage == "truncate_tail":
        assert size > 37
        with open(seg, "r+b") as f:
            f.truncate(len(data) - 37)
        survivors = n - 1
    else:
        # A byte inside the CRC-covered part (the last record's bytes) of the last batch.
        flip_at = pos + size - 3
        with open(seg, "r+b") as f:
            f.seek(flip_at)
            f.write(bytes([data[flip_at] ^ 0xFF]))
        survivors = n - 1

    broker.restart()

    got = read_partition(broker.bootstrap, topic, min_count=survivors, timeout=60)
    assert_rows_equal(got, expected_rows(records[:survivors], reports[:survivors]))

    # New records are accepted and land right after the survivors (the restarted leader's
    # term-start entry takes no Kafka offset).
    more = [record(i, "after-damage") for i in range(5)]
    reports2 = produce_all(producer(broker.bootstrap), topic, more)
    assert reports2 == [(0, FIRST_OFFSET + survivors + i) for i in range(5)], reports2
    got = read_partition(broker.bootstrap, topic, min_count=survivors + 5, timeout=60)
    assert_rows_equal(got, expected_rows(records[:survivors] + more, reports[:survivors] + reports2))

    # And they survive another crash.
    broker.kill9()
    broker.restart()
    got = read_partition(broker.bootstrap, topic, min_count=survivors + 5, timeout=60)
    assert_rows_equal(got, expected_rows(records[:survivors] + more, reports[:survivors] + reports2))
