"""confluent-kafka (librdkafka 2.x bundled) producer, consumer and admin client against sluice."""

import time

import pytest

from confluent_kafka import KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import (AclBinding, AclBindingFilter, AclOperation, AclPermissionType, AdminClient,
                                  ConfigResource, ConfigSource, NewPartitions, NewTopic, ResourcePatternType,
                                  ResourceType)

from helpers import (FIRST_OFFSET, OP_TIMEOUT_S, assert_rows_equal, consumer, expected_rows, produce_all, producer,
                     read_partition, record, unique_topic)


def admin(bootstrap):
    return AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": 10000})


def create_topic_error(bootstrap, name, partitions, replication=1):
    """Runs CreateTopics for one topic; returns None on success or the KafkaError code."""
    client = admin(bootstrap)  # must outlive the futures: destroying it fails them with _DESTROY
    futures = client.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=replication)],
        operation_timeout=10, request_timeout=OP_TIMEOUT_S)
    assert set(futures) == {name}
    try:
        futures[name].result(timeout=OP_TIMEOUT_S)
        return None
    except KafkaException as e:
        return e.args[0].code()


def test_produce_1000_acks_all_and_read_back_in_assign_mode(broker):
    topic = unique_topic("ck")
    records = [record(i, "ck") for i in range(1000)]
    p = producer(broker.bootstrap)  # acks=all; enable.idempotence left at its default
    reports = produce_all(p, topic, records)

    offsets = [o for _, o in reports]
    want = list(range(FIRST_OFFSET, FIRST_OFFSET + 1000))
    assert offsets == want, f"delivery offsets are not consecutive in send order: {offsets[:20]}..."

    # Assign mode: no group coordinator needed; nothing is committed.
    c = consumer(broker.bootstrap)
    got = []
    try:
        c.assign([TopicPartition(topic, 0, -2)])  # OFFSET_BEGINNING
        deadline = time.monotonic() + OP_TIMEOUT_S
        while len(got) < len(records):
            assert time.monotonic() < deadline, f"only {len(got)} of {len(records)} records read in time"
            msg = c.poll(0.5)
            if msg is None:
                continue
            if msg.error() is not None:
                assert msg.error().code() == KafkaError._PARTITION_EOF, msg.error()
                continue
            got.append((msg.offset(), msg.key(), msg.value(), list(msg.headers() or [])))
        lo, hi = c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10, cached=False)
        assert (lo, hi) == (0, FIRST_OFFSET + 1000)
    finally:
        c.close()
    assert_rows_equal(got, expected_rows(records, reports))


def test_idempotent_producer(broker):
    topic = unique_topic("ck-idem")
    records = [record(i, "idem") for i in range(300)]
    p = producer(broker.bootstrap, **{"enable.idempotence": True, "max.in.flight.requests.per.connection": 5})
    reports = produce_all(p, topic, records)
    assert [o for _, o in reports] == list(range(FIRST_OFFSET, FIRST_OFFSET + 300))
    assert_rows_equal(read_partition(broker.bootstrap, topic, min_count=300), expected_rows(records, reports))


def test_admin_create_topic_with_3_partitions_and_produce_to_each(broker):
    topic = unique_topic("ck-admin")
    assert create_topic_error(broker.bootstrap, topic, 3) is None

    md = admin(broker.bootstrap).list_topics(topic=topic, timeout=OP_TIMEOUT_S)
    assert md.topics[topic].error is None, md.topics[topic].error
    assert sorted(md.topics[topic].partitions) == [0, 1, 2]
    assert list(md.brokers) and all(b.host == "127.0.0.1" and b.port == broker.port for b in md.brokers.values())

    # Creating it again is an error.
    assert create_topic_error(broker.bootstrap, topic, 3) == KafkaError.TOPIC_ALREADY_EXISTS

    p = producer(broker.bootstrap)
    sent = {}
    for part in range(3):
        recs = [record(i, f"p{part}") for i in range(10 + part)]
        reports = produce_all(p, topic, recs, partition=part)
        assert reports == [(part, FIRST_OFFSET + i) for i in range(len(recs))], reports
        sent[part] = (recs, reports)
    for part, (recs, reports) in sent.items():
        got = read_partition(broker.bootstrap, topic, part, min_count=len(recs))
        assert_rows_equal(got, expected_rows(recs, reports, partition=part))


def test_admin_rejects_invalid_topics(broker):
    for bad in ["bad name!", "x" * 300, "..", "."]:
        assert create_topic_error(broker.bootstrap, bad, 1) == KafkaError.TOPIC_EXCEPTION, bad
    good = unique_topic("ck-parts")
    assert create_topic_error(broker.bootstrap, good, 0) == KafkaError.INVALID_PARTITIONS
    md = admin(broker.bootstrap).list_topics(timeout=OP_TIMEOUT_S)
    assert good not in md.topics and "bad name!" not in md.topics, sorted(md.topics)


def create_partitions_error(bootstrap, topic, count, validate_only=False):
    """Runs CreatePartitions for one topic; returns None on success or the KafkaError."""
    client = admin(bootstrap)
    futures = client.create_partitions([NewPartitions(topic, count)], operation_timeout=10,
                                       request_timeout=OP_TIMEOUT_S, validate_only=validate_only)
    try:
        futures[topic].result(timeout=OP_TIMEOUT_S)
        return None
    except KafkaException as e:
        return e.args[0]


def test_admin_create_partitions_grows_a_topic_whose_new_partition_takes_records(broker):
    topic = unique_topic("ck-grow")
    assert create_topic_error(broker.bootstrap, topic, 1) is None
    assert create_partitions_error(broker.bootstrap, topic, 3) is None
    md = admin(broker.bootstrap).list_topics(topic=topic, timeout=OP_TIMEOUT_S)
    assert sorted(md.topics[topic].partitions) == [0, 1, 2]
    assert all(p.leader >= 0 for p in md.topics[topic].partitions.values())

    recs = [record(i, "p2") for i in range(5)]
    reports = produce_all(producer(broker.bootstrap), topic, recs, partition=2)
    assert reports == [(2, FIRST_OFFSET + i) for i in range(len(recs))], reports
    got = read_partition(broker.bootstrap, topic, 2, min_count=len(recs))
    assert_rows_equal(got, expected_rows(recs, reports, partition=2))

    err = create_partitions_error(broker.bootstrap, topic, 2)
    assert err.code() == KafkaError.INVALID_PARTITIONS, err
    assert "would not be an increase" in err.str(), err
    assert create_partitions_error(broker.bootstrap, topic, 3).code() == KafkaError.INVALID_PARTITIONS
    assert create_partitions_error(broker.bootstrap, unique_topic("ck-none"), 2).code() == \
        KafkaError.UNKNOWN_TOPIC_OR_PART
    assert create_partitions_error(broker.bootstrap, topic, 6, validate_only=True) is None
    md = admin(broker.bootstrap).list_topics(topic=topic, timeout=OP_TIMEOUT_S)
    assert sorted(md.topics[topic].partitions) == [0, 1, 2], "validate_only changed nothing"


def topic_overrides(client, topic):
    """{name: value} of the topic's overrides, as DescribeConfigs shows them."""
    res = ConfigResource(ConfigResource.Type.TOPIC, topic)
    entries = client.describe_configs([res], request_timeout=OP_TIMEOUT_S)[res].result(timeout=OP_TIMEOUT_S)
    return {name: e.value for name, e in entries.items()
            if e.source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value}


@pytest.mark.filterwarnings("ignore:alter_configs has been deprecated:DeprecationWarning")
def test_admin_legacy_alter_configs_replaces_the_overrides(broker):
    """AlterConfigs (API 33, which librdkafka's alter_configs sends) replaces a topic's overrides;
    message.format.version, removed in Kafka 4, is accepted and not stored."""
    client = admin(broker.bootstrap)
    topic = unique_topic("ck-alter")
    assert create_topic_error(broker.bootstrap, topic, 1) is None

    def alter(configs):
        res = ConfigResource(ConfigResource.Type.TOPIC, topic, set_config=configs)
        return client.alter_configs([res], request_timeout=OP_TIMEOUT_S)[res]

    alter({"retention.ms": "3600000", "flush.ms": "12345678",
           "message.format.version": "0.10.0.0"}).result(timeout=OP_TIMEOUT_S)
    assert topic_overrides(client, topic) == {"retention.ms": "3600000", "flush.ms": "12345678"}
    alter({"segment.ms": "600000"}).result(timeout=OP_TIMEOUT_S)
    assert topic_overrides(client, topic) == {"segment.ms": "600000"}, "the others went back to defaults"
    try:
        alter({"retention.ms": "soon"}).result(timeout=OP_TIMEOUT_S)
        raise AssertionError("a bad value was accepted")
    except KafkaException as e:
        assert e.args[0].code() == KafkaError.INVALID_CONFIG, e
        assert "retention.ms" in e.args[0].str(), e
    assert topic_overrides(client, topic) == {"segment.ms": "600000"}, "a refused change changes nothing"


def test_admin_acls_answer_security_disabled(broker):
    """No authorizer (as Kafka without authorizer.class.name): ACL requests fail SECURITY_DISABLED."""
    client = admin(broker.bootstrap)
    binding = AclBinding(ResourceType.TOPIC, "t", ResourcePatternType.LITERAL, "User:alice", "*",
                         AclOperation.READ, AclPermissionType.ALLOW)
    for future in client.create_acls([binding], request_timeout=OP_TIMEOUT_S).values():
        try:
            future.result(timeout=OP_TIMEOUT_S)
            raise AssertionError("an ACL was accepted")
        except KafkaException as e:
            assert e.args[0].code() == KafkaError.SECURITY_DISABLED, e
    flt = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, None, None,
                           AclOperation.ANY, AclPermissionType.ANY)
    for future in client.delete_acls([flt], request_timeout=OP_TIMEOUT_S).values():
        try:
            future.result(timeout=OP_TIMEOUT_S)
            raise AssertionError("DeleteAcls answered without an error")
        except KafkaException as e:
            assert e.args[0].code() == KafkaError.SECURITY_DISABLED, e
    # librdkafka reads DescribeAcls' top-level error and drops it (its DescribeAclsResponse
    # parser): the answer shows as no ACLs.
    assert client.describe_acls(flt, request_timeout=OP_TIMEOUT_S).result(timeout=OP_TIMEOUT_S) == []
