"""Consumer groups against a 3-node cluster: real confluent-kafka consumers in separate processes
(so one can be SIGKILLed and never say goodbye), kafka-python's group consumer, and `kcat -G`.

Each member process prints one line per event: `ASSIGN p,p,...` after every rebalance and
`MSG partition offset` for every record, committed synchronously before the line is printed.
"""

import shutil
import subprocess
import sys
import threading
import time

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from helpers import OP_TIMEOUT_S, producer, unique_topic

PARTITIONS = 6
SESSION_TIMEOUT_MS = 6000
RECORDS = 600

MEMBER = r"""
import sys
from confluent_kafka import Consumer
bootstrap, topic, group = sys.argv[1:4]
c = Consumer({
    "bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False,
    "auto.offset.reset": "earliest", "session.timeout.ms": %d, "heartbeat.interval.ms": 500,
})
def on_assign(consumer, partitions):
    print("ASSIGN " + ",".join(str(p.partition) for p in partitions), flush=True)
c.subscribe([topic], on_assign=on_assign)
while True:
    m = c.poll(0.2)
    if m is None or m.error():
        continue
    c.commit(message=m, asynchronous=False)
    print("MSG %%d %%d" %% (m.partition(), m.offset()), flush=True)
""" % SESSION_TIMEOUT_MS


class Member:
    """One consumer process and what it printed."""

    def __init__(self, bootstrap, topic, group):
        self.proc = subprocess.Popen([sys.executable, "-c", MEMBER, bootstrap, topic, group],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.assignment = None
        self.messages = []  # (partition, offset)
        self.lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            kind, _, rest = line.strip().partition(" ")
            with self.lock:
                if kind == "ASSIGN":
                    self.assignment = {int(p) for p in rest.split(",") if p}
                elif kind == "MSG":
                    p, o = rest.split()
                    self.messages.append((int(p), int(o)))

    def kill(self):
        self.proc.kill()
        self.proc.wait(timeout=10)

    def stop(self):
        if self.proc.poll() is None:
            self.kill()


def wait_for(what, timeout, probe, interval=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = probe()
        if result:
            return result
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


def covering_and_disjoint(members):
    sets = []
    for m in members:
        with m.lock:
            if m.assignment is None:
                return False
            sets.append(set(m.assignment))
    union = set().union(*sets)
    return union == set(range(PARTITIONS)) and sum(len(s) for s in sets) == PARTITIONS


def create_topic(bootstrap, topic):
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS, replication_factor=3)])[topic].result(OP_TIMEOUT_S)


def produce(bootstrap, topic, n, start=0):
    p = producer(bootstrap)
    for i in range(start, start + n):
        p.produce(topic, key=str(i).encode(), value=str(i).encode(), partition=i % PARTITIONS)
    assert p.flush(OP_TIMEOUT_S) == 0


def committed(bootstrap, group, topic):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        tps = c.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=OP_TIMEOUT_S)
        return {tp.partition: tp.offset for tp in tps}
    finally:
        c.close()


def test_three_members_share_partitions_and_survivors_take_over_a_killed_one(cluster3):
    bootstrap = cluster3.bootstrap
    topic, group = unique_topic("grp"), unique_topic("g")
    create_topic(bootstrap, topic)
    members = [Member(bootstrap, topic, group) for _ in range(3)]
    try:
        wait_for("a covering, disjoint assignment over three members", 60,
                 lambda: covering_and_disjoint(members))
        for m in members:
            assert len(m.assignment) == 2, [m.assignment for m in members]
        produce(bootstrap, topic, RECORDS)
        wait_for("every record consumed", 60,
                 lambda: len({mo for m in members for mo in m.messages}) >= RECORDS)

        victim, survivors = members[0], members[1:]
        taken = set(victim.assignment)
        killed_at = time.monotonic()
        victim.kill()
        wait_for("the survivors to own every partition", 60,
                 lambda: covering_and_disjoint(survivors))
        took_s = time.monotonic() - killed_at
        # Kafka's promise: the session timeout notices the dead member, then one rebalance.
        assert took_s < SESSION_TIMEOUT_MS / 1000 + 10, f"takeover took {took_s:.1f}s"
        assert taken <= set().union(*(m.assignment for m in survivors))

        produce(bootstrap, topic, RECORDS, start=RECORDS)
        seen = lambda: {mo for m in members for mo in m.messages}
        wait_for("the records after the kill consumed by the survivors", 60,
                 lambda: len(seen()) >= 2 * RECORDS)
        offsets = committed(bootstrap, group, topic)
        ends = {}
        for p, o in seen():
            ends[p] = max(ends.get(p, -1), o + 1)
        assert offsets == ends, "every partition's commit is at its last consumed record"
    finally:
        for m in members:
            m.stop()


def test_a_restarted_member_resumes_at_the_committed_offset(cluster3):
    bootstrap = cluster3.bootstrap
    topic, group = unique_topic("grp"), unique_topic("g")
    create_topic(bootstrap, topic)
    produce(bootstrap, topic, RECORDS)
    first = Member(bootstrap, topic, group)
    try:
        wait_for("some records consumed", 60, lambda: len(first.messages) >= RECORDS // 3)
        first.kill()
        offsets = committed(bootstrap, group, topic)
        printed = {}
        for p, o in first.messages:
            printed[p] = max(printed.get(p, -1), o + 1)
        # The member commits, then prints: a kill in between leaves the commit one ahead.
        for p in range(PARTITIONS):
            if p in printed:
                assert offsets[p] in (printed[p], printed[p] + 1), (p, offsets[p], printed[p])
    finally:
        first.stop()
    unprinted = sum(offsets[p] - printed[p] for p in printed)
    second = Member(bootstrap, topic, group)
    try:
        wait_for("the rest consumed", 60,
                 lambda: len(set(first.messages) | set(second.messages)) + unprinted >= RECORDS)
        for p in range(PARTITIONS):
            mine = sorted(o for q, o in second.messages if q == p)
            # A partition consumed to its end before the kill has nothing left to resume.
            if offsets[p] >= 0 and mine:
                assert mine[0] == offsets[p], f"partition {p}: resumed at {mine[0]}, committed {offsets[p]}"
        assert len(set(first.messages) | set(second.messages)) + unprinted == RECORDS, "nothing skipped"
    finally:
        second.stop()


def test_kafka_python_group_consumer_and_kcat_balanced_consumer(cluster3):
    bootstrap = cluster3.bootstrap
    topic = unique_topic("grp")
    create_topic(bootstrap, topic)
    produce(bootstrap, topic, RECORDS)

    from kafka import KafkaConsumer
    group = unique_topic("kp")
    kc = KafkaConsumer(topic, group_id=group, bootstrap_servers=bootstrap.split(","),
                       auto_offset_reset="earliest", enable_auto_commit=False,
                       consumer_timeout_ms=20000)
    got = set()
    try:
        for m in kc:
            got.add((m.partition, m.offset))
            if len(got) >= RECORDS:
                break
        kc.commit()
    finally:
        kc.close()
    assert len(got) == RECORDS
    ends = {}
    for p, o in got:
        ends[p] = max(ends.get(p, -1), o + 1)
    assert committed(bootstrap, group, topic) == ends

    kcat = shutil.which("kcat")
    if kcat is None:
        pytest.fail("kcat is not installed (scripts/test installs it)")
    out = subprocess.run([kcat, "-b", bootstrap, "-G", unique_topic("kcat"), "-o", "beginning",
                          "-c", str(RECORDS), "-f", "%p %o\n", topic],
                         capture_output=True, text=True, timeout=90)
    lines = {tuple(map(int, l.split())) for l in out.stdout.splitlines() if l.strip()}
    assert len(lines) == RECORDS, out.stderr[-2000:]
