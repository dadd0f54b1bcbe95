"""`sluice topic …` and `sluice group …` against a 3-node cluster, next to real clients: the
topic table agrees with what each node's Metadata says, and `group describe` shows a running
confluent-kafka consumer (member, client id, host, assignment) and, once it has left, the lag of
the records produced after it."""

import os
import subprocess
import time

import pytest
from confluent_kafka import Consumer

from conftest import sluice_bin
from helpers import (OP_TIMEOUT_S, assert_rows_equal, expected_rows, node_metadata, produce_all, producer,
                     read_partition, record, unique_topic)

PARTITIONS = 3
CLI_TIMEOUT_S = 30


def sluice(bootstrap, *args, ok=True):
    """Runs the CLI; returns (status, stdout, stderr). With ok=True it must succeed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    proc = subprocess.run([str(sluice_bin()), *args, "--bootstrap-server", bootstrap],
                          capture_output=True, text=True, timeout=CLI_TIMEOUT_S, env=env)
    if ok:
        assert proc.returncode == 0, f"sluice {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}"
    return proc.returncode, proc.stdout, proc.stderr


def table(text, first_column):
    """The rows (lists of cells) of the table whose header starts with `first_column`."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.split()[:1] == [first_column]:
            rows = []
            for row in lines[i + 1:]:
                if not row.strip():
                    break
                rows.append(row.split())
            return rows
    raise AssertionError(f"no {first_column} table in:\n{text}")


def wait_for(what, timeout, probe, interval=0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = probe()
        if result:
            return result
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


def describe_partitions(bootstrap, topic):
    _, out, _ = sluice(bootstrap, "topic", "describe", "--topic", topic)
    return out, table(out.split("\n\n")[1], "TOPIC")


def produce_to(bootstrap, topic, counts):
    """counts[p] records to partition p."""
    p = producer(bootstrap)
    for partition, n in enumerate(counts):
        for i in range(n):
            p.produce(topic, key=f"{partition}-{i}".encode(), value=b"x", partition=partition)
    assert p.flush(OP_TIMEOUT_S) == 0


def test_topic_describe_shows_leaders_and_replicas_as_the_nodes_see_them(cluster3):
    bootstrap = cluster3.bootstrap
    topic = unique_topic("admin")
    _, out, _ = sluice(bootstrap, "topic", "create", "--topic", topic, "--partitions", str(PARTITIONS),
                       "--replication-factor", "3", "--config", "retention.ms=86400000")
    assert out == f"Created topic {topic}.\n"
    # A new partition's preferred replica campaigns at once; wait until every one has a leader.
    out, rows = wait_for("a leader for every partition", 20,
                         lambda: (lambda r: r if all(row[2] != "none" for row in r[1]) else None)(
                             describe_partitions(bootstrap, topic)))
    summary = table(out, "TOPIC")
    assert summary[0][0] == topic and summary[0][2:] == [str(PARTITIONS), "3", "retention.ms=86400000"], out
    assert [int(r[1]) for r in rows] == list(range(PARTITIONS)), out
    node = cluster3.nodes[0]
    seen = node_metadata(node.host, node.port, [topic])["topics"][topic]["partitions"]
    for name, partition, leader, replicas, isr, offline in rows:
        assert name == topic
        replicas = [int(r) for r in replicas.split(",")]
        assert sorted(replicas) == [1, 2, 3], out
        assert sorted(int(r) for r in isr.split(",")) == [1, 2, 3], out
        assert offline == "-", out
        assert int(leader) in replicas, out
        assert replicas == seen[int(partition)]["replicas"], (out, seen)
    # Leaders agree with the node's own Metadata once both have settled.
    wait_for("the CLI and node 1 to agree on the leaders", 20, lambda: [
        int(r[2]) for r in describe_partitions(bootstrap, topic)[1]] == [
        node_metadata(node.host, node.port, [topic])["topics"][topic]["partitions"][p]["leader"]
        for p in range(PARTITIONS)])

    _, out, _ = sluice(bootstrap, "topic", "list")
    assert topic in out.split()
    sluice(bootstrap, "topic", "delete", "--topic", topic)
    status, _, err = sluice(bootstrap, "topic", "describe", "--topic", topic, ok=False)
    assert status == 1 and "UNKNOWN_TOPIC_OR_PARTITION" in err, err


def test_group_describe_shows_a_running_consumer_and_the_lag_after_it_stops(cluster3):
    bootstrap = cluster3.bootstrap
    topic, group = unique_topic("admin"), unique_topic("g")
    sluice(bootstrap, "topic", "create", "--topic", topic, "--partitions", str(PARTITIONS),
           "--replication-factor", "3")
    produce_to(bootstrap, topic, [10, 10, 10])

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "client.id": "admin-cli-test",
                  "enable.auto.commit": False, "auto.offset.reset": "earliest",
                  "session.timeout.ms": 6000, "heartbeat.interval.ms": 500})
    try:
        c.subscribe([topic])
        consumed = 0
        deadline = time.monotonic() + OP_TIMEOUT_S
        while consumed < 30:
            assert time.monotonic() < deadline, f"consumed {consumed} of 30"
            m = c.poll(0.2)
            if m is not None and not m.error():
                consumed += 1
        c.commit(asynchronous=False)

        _, out, _ = sluice(bootstrap, "group", "describe", "--group", group)
        assert table(out, "GROUP") == [[group, "Stable", "consumer", "range", "1"]], out
        members = table(out, "MEMBER-ID")
        assert len(members) == 1, out
        member_id, instance, client_id, host, assignment = members[0]
        assert member_id.startswith("admin-cli-test-"), out
        assert (instance, client_id, host) == ("-", "admin-cli-test", "/127.0.0.1"), out
        assert assignment == f"{topic}:0,1,2", out
        offsets = table(out, "TOPIC")
        assert [r[1] for r in offsets] == ["0", "1", "2"], out
        for name, _, current, end, lag, owner in offsets:
            assert name == topic and current == end and lag == "0" and owner == member_id, out

        _, out, _ = sluice(bootstrap, "group", "list")
        assert [group, "Stable", "consumer"] in table(out, "GROUP"), out
    finally:
        c.close()

    produce_to(bootstrap, topic, [5, 0, 2])
    _, out, _ = sluice(bootstrap, "group", "describe", "--group", group)
    assert table(out, "GROUP") == [[group, "Empty", "consumer", "-", "0"]], out
    assert f"Group {group} has no active members." in out
    rows = table(out, "TOPIC")
    assert [(r[1], r[4], r[5]) for r in rows] == [("0", "5", "-"), ("1", "0", "-"), ("2", "2", "-")], out

    # Now that it is empty the group's offsets can be moved, then the group deleted.
    sluice(bootstrap, "group", "reset-offsets", "--group", group, "--all-topics", "--to-latest", "--execute")
    _, out, _ = sluice(bootstrap, "group", "describe", "--group", group)
    assert [r[4] for r in table(out, "TOPIC")] == ["0", "0", "0"], out
    _, out, _ = sluice(bootstrap, "group", "delete", "--group", group)
    assert out == f"Deleted group {group}.\n"
    _, out, _ = sluice(bootstrap, "group", "list")
    assert group not in out.split(), out


def test_topic_alter_adds_partitions_that_every_node_serves(cluster3):
    bootstrap = cluster3.bootstrap
    topic = unique_topic("admin-grow")
    sluice(bootstrap, "topic", "create", "--topic", topic, "--partitions", "1", "--replication-factor", "3")
    _, out, _ = sluice(bootstrap, "topic", "alter", topic, "--partitions", str(PARTITIONS))
    assert out == f"Topic {topic} now has {PARTITIONS} partitions.\n"
    # Every node replays the record, opens the new partitions and reports them.
    for node in cluster3.nodes:
        seen = wait_for(f"node {node.node_id} to report {PARTITIONS} partitions", 20, lambda: (
            lambda ps: ps if len(ps) == PARTITIONS else None)(
            node_metadata(node.host, node.port, [topic])["topics"][topic]["partitions"]))
        assert all(sorted(seen[p]["replicas"]) == [1, 2, 3] for p in range(PARTITIONS)), seen
    wait_for("a leader for every partition", 20,
             lambda: all(row[2] != "none" for row in describe_partitions(bootstrap, topic)[1]))

    recs = [record(i, "grown") for i in range(20)]
    reports = produce_all(producer(bootstrap), topic, recs, partition=PARTITIONS - 1)
    got = read_partition(bootstrap, topic, PARTITIONS - 1, min_count=len(recs))
    assert_rows_equal(got, expected_rows(recs, reports, partition=PARTITIONS - 1))

    status, _, err = sluice(bootstrap, "topic", "alter", "--topic", topic, "--partitions", "2", ok=False)
    assert status == 1 and err.startswith("sluice topic alter: INVALID_PARTITIONS: "), err
