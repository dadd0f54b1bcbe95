"""Shared helpers for the real-client tests (confluent-kafka side and small utilities)."""

import time
import uuid

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

# Bounds for everything that talks to the broker.
OP_TIMEOUT_S = 30.0

# Every partition is a Raft group, and a new leader's first entry is a term-start control batch
# (docs/architecture.md): a new partition holds one at offset 0, so the first record is at offset
# 1, and each leader change (a single node's restart, too) takes one more offset. Kafka clients
# skip control batches, as they do transaction markers.
FIRST_OFFSET = 1


def unique_topic(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def record(i: int, tag: str = "r"):
    """A distinct (key, value, headers) triple for record number i."""
    key = f"key-{tag}-{i}".encode()
    value = f"value-{tag}-{i}-".encode() + bytes([i % 251]) * (i % 17)
    headers = [("idx", str(i).encode()), ("tag", tag.encode())]
    if i % 3 == 0:
        headers.append(("empty", b""))
    return key, value, headers


def producer(bootstrap: str, **extra) -> Producer:
    conf = {
        "bootstrap.servers": bootstrap,
        "acks": "all",
        "message.timeout.ms": int(OP_TIMEOUT_S * 1000),
        "socket.timeout.ms": 10000,
        "linger.ms": 5,
    }
    conf.update(extra)
    return Producer(conf)


def produce_all(p: Producer, topic: str, records, partition=None, flush_timeout=OP_TIMEOUT_S):
    """Produces (key, value, headers) records, flushes, and returns the delivery reports as a list
    of (partition, offset) in send order; raises if any delivery failed or did not complete."""
    reports = [None] * len(records)
    errors = []

    def on_delivery(i):
        def cb(err, msg):
            if err is not None:
                errors.append((i, err))
            else:
                reports[i] = (msg.partition(), msg.offset())
        return cb

    for i, (key, value, headers) in enumerate(records):
        kwargs = {"key": key, "value": value, "headers": headers, "on_delivery": on_delivery(i)}
        if partition is not None:
            kwargs["partition"] = partition
        while True:
            try:
                p.produce(topic, **kwargs)
                break
            except BufferError:  # local queue full: let deliveries drain
                p.poll(0.1)
        p.poll(0)
    left = p.flush(flush_timeout)
    assert not errors, f"delivery failures: {errors[:10]} ({len(errors)} in all)"
    assert left == 0, f"{left} messages still undelivered after flush({flush_timeout})"
    missing = [i for i, r in enumerate(reports) if r is None]
    assert not missing, f"no delivery report for records {missing[:10]} ({len(missing)} in all)"
    return reports


def consumer(bootstrap: str, **extra) -> Consumer:
    conf = {
        "bootstrap.servers": bootstrap,
        # Needed by the client API; assign() mode never talks to the group coordinator as long as
        # nothing is committed (auto commit off, no commit() calls).
        "group.id": "sluice-test-" + uuid.uuid4().hex[:8],
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": True,
        "auto.offset.reset": "earliest",
        "socket.timeout.ms": 10000,
    }
    conf.update(extra)
    return Consumer(conf)


def read_partition(bootstrap: str, topic: str, partition: int = 0, timeout: float = OP_TIMEOUT_S,
                   min_count: int = 0):
    """Reads a partition from the beginning to its end (the first partition-EOF event once at least
    `min_count` records were read). Returns [(offset, key, value, headers)] in the order received."""
    c = consumer(bootstrap)
    out = []
    try:
        c.assign([TopicPartition(topic, partition, -2)])  # OFFSET_BEGINNING
        deadline = time.monotonic() + timeout
        while True:
            if time.monotonic() > deadline:
                last = out[-1][0] if out else None
                raise AssertionError(
                    f"reading {topic}[{partition}]: no end of partition within {timeout}s; "
                    f"got {len(out)} records (last offset {last}), wanted at least {min_count}")
            msg = c.poll(0.5)
            if msg is None:
                continue
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    if len(out) >= min_count:
                        return out
                    continue
                raise KafkaException(err)
            assert msg.topic() == topic and msg.partition() == partition, (msg.topic(), msg.partition())
            out.append((msg.offset(), msg.key(), msg.value(), list(msg.headers() or [])))
    finally:
        c.close()


def expected_rows(records, reports, partition=0):
    """The rows read_partition should return for records acknowledged with these reports."""
    rows = []
    for (key, value, headers), (p, offset) in zip(records, reports):
        assert p == partition, f"record delivered to partition {p}, expected {partition}"
        rows.append((offset, key, value, list(headers)))
    return rows


def assert_rows_equal(got, want):
    """Exact comparison with a readable first difference."""
    for i, (g, w) in enumerate(zip(got, want)):
        assert g == w, f"row {i} differs:\n  read: {g!r}\n  sent: {w!r}"
    assert len(got) == len(want), f"read {len(got)} records, expected {len(want)}; " \
        f"extra/missing tail: read {got[len(want):][:3]!r} sent {want[len(got):][:3]!r}"


def roundtrip(bootstrap: str, tag: str = "ping"):
    """Produces one record (acks=all) to a fresh topic and reads it back; returns the topic."""
    topic = unique_topic(tag)
    recs = [record(0, tag)]
    p = producer(bootstrap)
    reports = produce_all(p, topic, recs)
    assert reports == [(0, FIRST_OFFSET)], reports
    assert_rows_equal(read_partition(bootstrap, topic, min_count=1), expected_rows(recs, reports))
    return topic
