"""kafka-python 3.x (pure Python; idempotent producer by default) against sluice."""

import time

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from helpers import FIRST_OFFSET, assert_rows_equal, record, unique_topic

TIMEOUT_S = 30


def make_producer(bootstrap, **extra):
    conf = dict(
        bootstrap_servers=[bootstrap],
        request_timeout_ms=10000,
        delivery_timeout_ms=TIMEOUT_S * 1000,
        max_block_ms=TIMEOUT_S * 1000,
        linger_ms=5,
    )
    conf.update(extra)
    return KafkaProducer(**conf)


def produce(producer, topic, records):
    futures = [producer.send(topic, key=k, value=v, headers=h) for k, v, h in records]
    producer.flush(timeout=TIMEOUT_S)
    metas = [f.get(timeout=TIMEOUT_S) for f in futures]
    return [(m.topic, m.partition, m.offset) for m in metas]


def read_all(bootstrap, topic, partition=0):
    """assign + seek_to_beginning, then poll up to the partition's end offset."""
    tp = TopicPartition(topic, partition)
    consumer = KafkaConsumer(
        bootstrap_servers=[bootstrap],
        group_id=None,
        enable_auto_commit=False,
        consumer_timeout_ms=TIMEOUT_S * 1000,
        request_timeout_ms=15000,
        fetch_max_wait_ms=200,
    )
    try:
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        end = consumer.end_offsets([tp], timeout_ms=TIMEOUT_S * 1000)[tp]
        rows = []
        deadline = time.monotonic() + TIMEOUT_S
        while consumer.position(tp, timeout_ms=TIMEOUT_S * 1000) < end:
            assert time.monotonic() < deadline, f"read {len(rows)} records, end offset {end}"
            for part, msgs in consumer.poll(timeout_ms=500).items():
                assert part == tp, part
                for m in msgs:
                    rows.append((m.offset, m.key, m.value, list(m.headers)))
        return end, rows
    finally:
        consumer.close(autocommit=False)


def check(bootstrap, topic, records, metas):
    assert [(t, p) for t, p, _ in metas] == [(topic, 0)] * len(records)
    offsets = [o for _, _, o in metas]
    assert offsets == list(range(FIRST_OFFSET, FIRST_OFFSET + len(records))), offsets[:20]
    end, rows = read_all(bootstrap, topic)
    assert end == FIRST_OFFSET + len(records)
    want = [(o, k, v, list(h)) for o, (k, v, h) in zip(offsets, records)]
    assert_rows_equal(rows, want)


def test_default_producer_is_idempotent_500_records(broker):
    topic = unique_topic("kp")
    records = [record(i, "kp") for i in range(500)]
    producer = make_producer(broker.bootstrap)  # defaults: enable_idempotence=True, acks=all
    try:
        assert producer.config["enable_idempotence"] is True
        assert producer.config["acks"] == -1
        metas = produce(producer, topic, records)
    finally:
        producer.close(timeout=10)
    check(broker.bootstrap, topic, records, metas)


def test_acks_all_producer_500_records(broker):
    topic = unique_topic("kp-acks")
    records = [record(i, "kpa") for i in range(500)]
    producer = make_producer(broker.bootstrap, acks="all", enable_idempotence=False)
    try:
        metas = produce(producer, topic, records)
    finally:
        producer.close(timeout=10)
    check(broker.bootstrap, topic, records, metas)
