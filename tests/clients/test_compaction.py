"""Log compaction (cleanup.policy=compact) seen through real clients: after the broker's cleaner
runs, confluent-kafka, kafka-python and kcat all read the latest record per key at its original
offset, skip the removed offsets, see a tombstoned key gone, and read the same after a restart.
`__consumer_offsets` is created compacted."""

import os
import shutil
import subprocess
import time

import pytest
from confluent_kafka import Consumer
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic
from kafka import KafkaConsumer, TopicPartition as KpTopicPartition

from conftest import Broker, sluice_bin
from helpers import OP_TIMEOUT_S, producer, read_partition, unique_topic

KCAT = shutil.which("kcat")
KEYS = 10
ROUNDS = 25
PADDING = 30


class CleanerBroker(Broker):
    """A broker whose cleaner looks for work every 100 ms instead of every 15 s."""

    def serve_args(self) -> list:
        return super().serve_args() + ["--log-cleaner-backoff-ms", "100"]


@pytest.fixture
def cleaner_broker(tmp_path):
    binary = sluice_bin()
    if not os.access(binary, os.X_OK):
        pytest.fail(f"sluice binary not found at {binary}")
    b = CleanerBroker(binary, tmp_path)
    try:
        b.start()
        yield b
        assert not b.crashed(), f"the broker died:\n{b.log_tail()}"
    finally:
        b.stop()


def create_compacted(bootstrap: str, topic: str):
    admin = AdminClient({"bootstrap.servers": bootstrap})
    config = {
        "cleanup.policy": "compact",
        "segment.bytes": "1024",
        "delete.retention.ms": "0",
        "min.cleanable.dirty.ratio": "0.01",
    }
    futures = admin.create_topics([NewTopic(topic, 1, 1, config=config)], operation_timeout=10)
    futures[topic].result(timeout=OP_TIMEOUT_S)
    return admin


def produce_history(bootstrap: str, topic: str):
    """KEYS keys updated ROUNDS times, then a tombstone for key 0, then PADDING records with keys
    of their own (so every update and the tombstone end up in sealed, cleanable segments).
    Returns {offset: (key, value)} of everything acknowledged."""
    p = producer(bootstrap, **{"linger.ms": 0})
    produced = {}

    def send(key: bytes, value):
        def cb(err, msg):
            assert err is None, err
            produced[msg.offset()] = (key, value)
        p.produce(topic, key=key, value=value, partition=0, on_delivery=cb)
        p.flush(OP_TIMEOUT_S)

    for r in range(ROUNDS):
        for k in range(KEYS):
            send(f"key-{k}".encode(), f"value-{k}-{r}".encode())
    send(b"key-0", None)
    for i in range(PADDING):
        send(f"pad-{i}".encode(), f"padding-{i}".encode())
    assert len(produced) == KEYS * ROUNDS + 1 + PADDING
    return produced


def expected_after_cleaning(produced):
    latest = {}
    for offset in sorted(produced):
        key, _ = produced[offset]
        latest[key] = offset
    keep = {o for o in latest.values() if produced[o][1] is not None}
    return [(o, produced[o][0], produced[o][1]) for o in sorted(keep)]


def confluent_rows(bootstrap, topic, min_count=0):
    return [(o, k, v) for (o, k, v, _h) in read_partition(bootstrap, topic, 0, min_count=min_count)]


def kafka_python_rows(bootstrap, topic, end_offset):
    c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                      consumer_timeout_ms=5000, request_timeout_ms=20000)
    try:
        tp = KpTopicPartition(topic, 0)
        c.assign([tp])
        c.seek_to_beginning(tp)
        rows = []
        deadline = time.monotonic() + OP_TIMEOUT_S
        while c.position(tp) < end_offset:
            assert time.monotonic() < deadline, f"kafka-python stuck at {c.position(tp)}"
            for records in c.poll(timeout_ms=500).values():
                rows.extend((m.offset, m.key, m.value) for m in records)
        return rows
    finally:
        c.close()


def kcat_rows(bootstrap, topic):
    out = subprocess.run(
        [KCAT, "-b", bootstrap, "-C", "-t", topic, "-p", "0", "-o", "beginning", "-e", "-q",
         "-f", "%o\t%k\t%s\n"],
        capture_output=True, timeout=60, check=True,
    ).stdout.decode()
    rows = []
    for line in out.splitlines():
        o, k, v = line.split("\t")
        rows.append((int(o), k.encode(), v.encode()))
    return rows


def test_compacted_topic_keeps_the_latest_record_per_key_for_every_client(cleaner_broker):
    bootstrap = cleaner_broker.bootstrap
    topic = unique_topic("compact")
    admin = create_compacted(bootstrap, topic)
    produced = produce_history(bootstrap, topic)
    want = expected_after_cleaning(produced)
    end_offset = max(produced) + 1

    # The cleaner runs in the background: wait (bounded) until a read shows it did its work.
    deadline = time.monotonic() + 60
    while True:
        got = confluent_rows(bootstrap, topic)
        if got == want or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert got == want, f"after cleaning: {len(got)} records, wanted {len(want)}"
    assert len(want) == (KEYS - 1) + PADDING
    # Offsets are preserved: each survivor is the record produced at that offset.
    assert all(produced[o] == (k, v) for (o, k, v) in got)

    assert kafka_python_rows(bootstrap, topic, end_offset) == want
    if KCAT:
        assert kcat_rows(bootstrap, topic) == want

    # The topic describes as compacted.
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    configs = admin.describe_configs([resource])[resource].result(timeout=OP_TIMEOUT_S)
    assert configs["cleanup.policy"].value == "compact"

    # A record without a key is refused, as Kafka does (INVALID_RECORD).
    errors = []
    p = producer(bootstrap, **{"retries": 0})
    p.produce(topic, key=None, value=b"keyless", partition=0,
              on_delivery=lambda err, msg: errors.append(err))
    p.flush(OP_TIMEOUT_S)
    assert len(errors) == 1 and errors[0] is not None, errors
    assert errors[0].name() == "INVALID_RECORD", errors[0]

    # The cleaned segments survive a restart unchanged.
    cleaner_broker.restart()
    assert confluent_rows(bootstrap, topic) == want


def test_consumer_offsets_is_compacted(broker):
    bootstrap = broker.bootstrap
    topic = unique_topic("offsets")
    p = producer(bootstrap)
    p.produce(topic, key=b"k", value=b"v", partition=0)
    p.flush(OP_TIMEOUT_S)
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": unique_topic("g"),
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    try:
        c.subscribe([topic])
        deadline = time.monotonic() + OP_TIMEOUT_S
        msg = None
        while msg is None or msg.error() is not None:
            assert time.monotonic() < deadline, "no record consumed"
            msg = c.poll(0.5)
        c.commit(message=msg, asynchronous=False)
    finally:
        c.close()
    admin = AdminClient({"bootstrap.servers": bootstrap})
    resource = ConfigResource(ConfigResource.Type.TOPIC, "__consumer_offsets")
    configs = admin.describe_configs([resource])[resource].result(timeout=OP_TIMEOUT_S)
    assert configs["cleanup.policy"].value == "compact"
    assert configs["segment.bytes"].value == str(100 * 1024 * 1024)
