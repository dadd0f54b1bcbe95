"""Kafka offsets across leader changes, with the real binary (issue 14, item 4): three `sluice
serve` processes, a one-partition topic with replication factor 3, its leader killed with SIGKILL
and restarted again and again — some leader changes with records written in between, some with
none. Kafka numbers a partition's records 0, 1, 2, … and nothing a client never sees takes an
offset (transaction markers aside, and this test writes none), so

- a consumer reading from the beginning gets exactly the offsets 0..N-1, each record at the
  offset its acks=all delivery report named, in produce order;
- a consumer group that consumed everything and committed (the offset after the last record it
  read, as a Kafka consumer commits its position) has lag = high watermark - committed offset = 0,
  also right after a leader change that wrote no data, as the consumer computes it
  (get_watermark_offsets / committed) and as `sluice group describe` shows it.

The test runs every step and reports every problem at the end, with the offsets it read."""

import os
import subprocess
import time

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from conftest import sluice_bin
from helpers import unique_topic, wait_for

# Bounds (seconds) of each wait below; together well under the pytest timeout.
METADATA_WAIT_S = 15.0
FAILOVER_WAIT_S = 15.0
REJOIN_WAIT_S = 30.0
SETTLE_WAIT_S = 15.0
FLUSH_S = 30.0
READ_S = 30.0
CLI_TIMEOUT_S = 30.0
# A high watermark read twice this far apart, unchanged, counts as settled after a leader change.
SETTLE_INTERVAL_S = 1.0
# Records written per batch.
BATCH = 10


def admin_of(bootstrap: str) -> AdminClient:
    return AdminClient({"bootstrap.servers": bootstrap})


def leader_of(admin: AdminClient, topic: str) -> int:
    """Partition 0's leader from a Metadata request (-1: none)."""
    t = admin.list_topics(topic, timeout=5).topics.get(topic)
    if t is None or t.error is not None or 0 not in t.partitions:
        return -1
    return t.partitions[0].leader


class Log:
    """What the test wrote: value -> the offset its delivery report named, in produce order."""

    def __init__(self, bootstrap: str, topic: str):
        self.topic = topic
        self.producer = Producer({
            "bootstrap.servers": bootstrap,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 5,
            "message.timeout.ms": int(FLUSH_S * 1000),
            "socket.timeout.ms": 10000,
            "topic.metadata.refresh.interval.ms": 1000,
        })
        self.acked = []  # [(value, offset)] in produce order
        self.next_seq = 0

    def produce(self, n: int, tag: str):
        reports = {}

        def on_delivery(err, msg):
            reports[msg.value()] = err if err is not None else msg.offset()

        values = []
        for _ in range(n):
            value = f"{tag}-{self.next_seq:06d}".encode()
            self.next_seq += 1
            values.append(value)
            self.producer.produce(self.topic, value=value, partition=0, on_delivery=on_delivery)
        left = self.producer.flush(FLUSH_S)
        assert left == 0, f"{left} records of batch {tag} undelivered after {FLUSH_S}s"
        failed = {v: e for v, e in reports.items() if not isinstance(e, int)}
        assert not failed, f"batch {tag}: delivery failed: {failed}"
        self.acked += [(v, reports[v]) for v in values]


def group_consumer(bootstrap: str, group: str) -> Consumer:
    return Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": True,
        "auto.offset.reset": "earliest",
        "socket.timeout.ms": 10000,
    })


def read_to_end(c: Consumer, tp: TopicPartition, what: str):
    """Polls an assigned partition until its end (a partition-EOF at or past the high
    watermark); returns the records' [(offset, value)] in the order received."""
    _, high = c.get_watermark_offsets(tp, timeout=10)
    out = []
    deadline = time.monotonic() + READ_S
    while True:
        assert time.monotonic() < deadline, (
            f"{what}: not at the high watermark {high} within {READ_S}s; read {out}")
        msg = c.poll(0.5)
        if msg is None:
            continue
        err = msg.error()
        if err is not None:
            if err.code() == KafkaError._PARTITION_EOF:
                if msg.offset() >= high:
                    return out
                continue
            raise KafkaException(err)
        out.append((msg.offset(), msg.value()))
        if msg.offset() >= high - 1:
            return out


def read_from_beginning(bootstrap: str, topic: str):
    """A fresh consumer (no group offsets) reads partition 0 from the beginning to its end."""
    c = group_consumer(bootstrap, unique_topic("reader"))
    try:
        tp = TopicPartition(topic, 0, OFFSET_BEGINNING)
        c.assign([tp])
        return read_to_end(c, tp, "reading from the beginning")
    finally:
        c.close()


def consume_and_commit(bootstrap: str, topic: str, group: str):
    """The group's consumer resumes at its committed offset, reads to the end and commits the
    offset after the last record it read. Returns the records it read."""
    c = group_consumer(bootstrap, group)
    try:
        tp = TopicPartition(topic, 0)
        c.assign([tp])
        read = read_to_end(c, tp, f"group {group} consuming")
        if read:
            commit = TopicPartition(topic, 0, read[-1][0] + 1)
            # The coordinator may be moving (its node killed a moment ago): try again, bounded.
            wait_for(f"group {group} committing {commit.offset}", SETTLE_WAIT_S,
                     lambda: c.commit(offsets=[commit], asynchronous=False) is not None)
        return read
    finally:
        c.close()


def lag_by_client(bootstrap: str, topic: str, group: str):
    """(high watermark, committed offset) of partition 0, as a consumer of the group reads
    them: lag is their difference. Waits until the high watermark stands still for
    SETTLE_INTERVAL_S (a new leader's first reading may still move) and is at least the
    committed offset."""
    c = group_consumer(bootstrap, group)
    tp = TopicPartition(topic, 0)
    try:
        committed = wait_for(f"group {group}'s committed offset", SETTLE_WAIT_S,
                             lambda: (lambda r: r[0].offset if r and r[0].offset >= 0 else None)(
                                 c.committed([tp], timeout=5)))
        previous = None
        deadline = time.monotonic() + SETTLE_WAIT_S
        while True:
            try:
                _, high = c.get_watermark_offsets(tp, timeout=5)
            except KafkaException as e:
                high = None
                last_error = e
            if high is not None and high == previous and high >= committed:
                return high, committed
            assert time.monotonic() < deadline, (
                f"partition 0's high watermark did not settle within {SETTLE_WAIT_S}s "
                f"(last {high}, committed {committed}, error {last_error if high is None else None})")
            previous = high
            time.sleep(SETTLE_INTERVAL_S)
    finally:
        c.close()


def lag_by_cli(bootstrap: str, topic: str, group: str):
    """`sluice group describe`: (current offset, log end offset, lag) of partition 0."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    proc = subprocess.run([str(sluice_bin()), "group", "describe", "--group", group,
                           "--bootstrap-server", bootstrap],
                          capture_output=True, text=True, timeout=CLI_TIMEOUT_S, env=env)
    assert proc.returncode == 0, f"sluice group describe failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}"
    lines = proc.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:1] == ["TOPIC"])
    for row in lines[header + 1:]:
        cells = row.split()
        if len(cells) >= 5 and cells[0] == topic and cells[1] == "0":
            return int(cells[2]), int(cells[3]), int(cells[4])
    raise AssertionError(f"no row for {topic} partition 0 in:\n{proc.stdout}")


class Failovers:
    """Kills partition 0's leader with SIGKILL and restarts it, counting leader changes."""

    def __init__(self, cluster, topic: str):
        self.cluster = cluster
        self.topic = topic
        self.admin = admin_of(cluster.bootstrap)
        self.history = []  # [(killed, new leader)]

    def kill_leader(self):
        """Kills the leader and waits until the survivors name a new one. Returns the victim."""
        old = wait_for("a leader of partition 0", METADATA_WAIT_S,
                       lambda: (lambda l: l if l > 0 else None)(leader_of(self.admin, self.topic)))
        victim = self.cluster.node(old)
        victim.kill9()
        survivors = admin_of(",".join(n.bootstrap for n in self.cluster.nodes if n is not victim))
        new = wait_for(f"a new leader of partition 0 after killing node {old}", FAILOVER_WAIT_S,
                       lambda: (lambda l: l if l not in (-1, old) else None)(leader_of(survivors, self.topic)))
        self.history.append((old, new))
        return victim

    def restart(self, victim):
        """Restarts the killed node and waits until it serves and knows partition 0's leader."""
        victim.launch()
        victim.wait_ready()
        alone = admin_of(victim.bootstrap)
        wait_for(f"node {victim.node_id} naming partition 0's leader", REJOIN_WAIT_S,
                 lambda: leader_of(alone, self.topic) > 0)


@pytest.mark.timeout(300)
def test_offsets_stay_contiguous_and_lag_zero_across_leader_changes(cluster3):
    bootstrap = cluster3.bootstrap
    topic, group = unique_topic("offsets"), unique_topic("offsets-group")
    admin = admin_of(bootstrap)
    wait_for("3 live brokers in metadata", METADATA_WAIT_S,
             lambda: len(admin.list_topics(timeout=5).brokers) == 3)
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=3)],
                        operation_timeout=10, request_timeout=15)[topic].result(timeout=20)
    wait_for("a leader of partition 0", METADATA_WAIT_S, lambda: leader_of(admin, topic) > 0)

    log = Log(bootstrap, topic)
    failovers = Failovers(cluster3, topic)
    problems = []
    lags = []  # (when, high watermark, committed, lag, CLI (current, end, lag))

    def expect_lag_zero(when: str):
        high, committed = lag_by_client(bootstrap, topic, group)
        cli = lag_by_cli(bootstrap, topic, group)
        lags.append((when, high, committed, high - committed, cli))
        if high - committed != 0:
            problems.append(f"{when}: lag {high - committed} (high watermark {high}, committed {committed})")
        if cli[2] != 0:
            problems.append(f"{when}: `sluice group describe` shows CURRENT-OFFSET {cli[0]}, "
                            f"LOG-END-OFFSET {cli[1]}, LAG {cli[2]}")

    def expect_contiguous(when: str):
        read = read_from_beginning(bootstrap, topic)
        offsets = [o for o, _ in read]
        n = len(log.acked)
        if offsets != list(range(n)):
            problems.append(f"{when}: a consumer from the beginning read offsets {compress(offsets)}, "
                            f"expected 0..{n - 1}")
        if [v for _, v in read] != [v for v, _ in log.acked]:
            problems.append(f"{when}: values read {[v for _, v in read][:5]}… differ from the "
                            f"{n} produced in order")
        if [o for _, o in log.acked] != offsets:
            problems.append(f"{when}: acknowledged offsets {compress([o for _, o in log.acked])} "
                            f"differ from the offsets read")
        return offsets

    # Before any leader change: the first record at offset 0.
    log.produce(BATCH, "a")
    expect_contiguous("before any leader change")
    consume_and_commit(bootstrap, topic, group)
    expect_lag_zero("after consuming everything, before any leader change")

    # 1: a leader change with no new data.
    victim = failovers.kill_leader()
    expect_lag_zero("right after leader change 1 (no new data)")
    failovers.restart(victim)

    # 2: records written while the old leader is down, more after it is back.
    victim = failovers.kill_leader()
    log.produce(BATCH, "b")
    failovers.restart(victim)
    log.produce(BATCH, "c")
    expect_contiguous("after leader change 2 (with writes)")
    consume_and_commit(bootstrap, topic, group)
    expect_lag_zero("after consuming everything again")

    # 3: no new data again.
    victim = failovers.kill_leader()
    expect_lag_zero("right after leader change 3 (no new data)")
    failovers.restart(victim)

    # 4: writes while down, then one more leader change with no data at the end of the log.
    victim = failovers.kill_leader()
    log.produce(BATCH, "d")
    failovers.restart(victim)
    consume_and_commit(bootstrap, topic, group)
    victim = failovers.kill_leader()
    expect_lag_zero("right after leader change 5 (no new data since the group consumed)")
    failovers.restart(victim)

    offsets = expect_contiguous(f"after {len(failovers.history)} leader changes")
    expect_lag_zero(f"after {len(failovers.history)} leader changes, the killed node back")

    print(f"\nleader changes (killed, new leader): {failovers.history}")
    print(f"records produced: {len(log.acked)}; offsets read from the beginning: {compress(offsets)}")
    for when, high, committed, lag, cli in lags:
        print(f"  {when}: high watermark {high}, committed {committed}, lag {lag}; CLI {cli}")
    assert len(failovers.history) >= 3
    assert not problems, "offsets are not Kafka's:\n  " + "\n  ".join(problems)


def compress(offsets) -> str:
    """`0..9, 11..20` for runs of consecutive offsets."""
    runs = []
    for o in offsets:
        if runs and o == runs[-1][1] + 1:
            runs[-1][1] = o
        else:
            runs.append([o, o])
    return ", ".join(f"{a}..{b}" if a != b else f"{a}" for a, b in runs) or "none"
