"""Shared helpers for the real-client tests (confluent-kafka side and small utilities)."""

import socket
import struct
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


# -- a raw Metadata request to one broker ---------------------------------------------------
# Client libraries send Metadata to whichever broker they like; asking one particular node what
# it believes (a rejoined node, say) takes a request of our own: Metadata v1, non-flexible.

def _read_exact(sock, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError(f"connection closed after {len(buf)} of {n} bytes")
        buf += chunk
    return buf


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def take(self, fmt: str):
        size = struct.calcsize(fmt)
        values = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return values[0] if len(values) == 1 else values

    def string(self):
        n = self.take(">h")
        if n < 0:
            return None
        s = self.data[self.pos:self.pos + n].decode()
        self.pos += n
        return s

    def array(self, item):
        return [item() for _ in range(self.take(">i"))]


def node_metadata(host: str, port: int, topics, timeout: float = 5.0) -> dict:
    """Metadata v1 asked of the broker at host:port alone. Returns {"brokers": {id: (host, port)},
    "controller": id, "topics": {name: {"error": code, "partitions": {index: {"error", "leader",
    "replicas", "isr"}}}}}."""
    client_id = b"sluice-test-metadata"
    body = struct.pack(">hhih", 3, 1, 7, len(client_id)) + client_id
    body += struct.pack(">i", len(topics))
    for t in topics:
        name = t.encode()
        body += struct.pack(">h", len(name)) + name
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.settimeout(timeout)
        s.sendall(struct.pack(">i", len(body)) + body)
        size = struct.unpack(">i", _read_exact(s, 4))[0]
        r = _Reader(_read_exact(s, size))
    assert r.take(">i") == 7, "correlation id"
    brokers = {}
    for _ in range(r.take(">i")):
        node_id = r.take(">i")
        bhost = r.string()
        bport = r.take(">i")
        r.string()  # rack
        brokers[node_id] = (bhost, bport)
    controller = r.take(">i")
    out_topics = {}
    for _ in range(r.take(">i")):
        error = r.take(">h")
        name = r.string()
        r.take(">?")  # is_internal
        partitions = {}
        for _ in range(r.take(">i")):
            perror, index, leader = r.take(">hii")
            replicas = r.array(lambda: r.take(">i"))
            isr = r.array(lambda: r.take(">i"))
            partitions[index] = {"error": perror, "leader": leader, "replicas": replicas, "isr": isr}
        out_topics[name] = {"error": error, "partitions": partitions}
    return {"brokers": brokers, "controller": controller, "topics": out_topics}


def wait_for(what: str, timeout: float, probe, interval: float = 0.1):
    """Polls `probe()` (a Metadata lookup, say: there is no event to subscribe to) until it returns a
    truthy value; fails after `timeout` seconds with the last value or error."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            last = probe()
            if last:
                return last
        except KafkaException as e:
            last = e
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s (last: {last!r})")
        time.sleep(interval)
