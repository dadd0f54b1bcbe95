"""Failover with the real binary: three `sluice serve` processes, a continuous idempotent acks=all
producer, kill -9 of partition 0's leader, a new leader, the killed node's restart and rejoin;
then every acknowledged record must be read back exactly once, where it was acknowledged."""

import logging
import threading
import time
from collections import defaultdict

import pytest
from confluent_kafka import KafkaError, KafkaException, OFFSET_BEGINNING, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from helpers import consumer, node_metadata, unique_topic, wait_for

PARTITIONS = 3
# Bounds (seconds) of each wait below; together well under the pytest timeout.
METADATA_WAIT_S = 15.0
FAILOVER_WAIT_S = 15.0
REJOIN_WAIT_S = 30.0
PROGRESS_WAIT_S = 15.0
FLUSH_S = 30.0
READ_S = 30.0
# Acknowledged records to wait for in each phase, and the producer's pace: at most
# IN_FLIGHT_MAX records unacknowledged, a short pause after each round over the partitions.
WARMUP_ACKS = 300
AFTER_FAILOVER_ACKS = 300
AFTER_REJOIN_ACKS = 300
IN_FLIGHT_MAX = 300
ROUND_PAUSE_S = 0.002


def value_of(partition: int, seq: int) -> bytes:
    return f"p{partition}-{seq:09d}".encode()


def parse_value(value: bytes):
    p, seq = value.decode().split("-")
    return int(p[1:]), int(seq)


class ContinuousProducer:
    """A thread producing records with unique increasing values per partition (round robin over
    the partitions) until stopped; it records every delivery report."""

    def __init__(self, bootstrap: str, topic: str):
        self.topic = topic
        self.p = Producer({
            "bootstrap.servers": bootstrap,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 5,
            # A record not delivered within this fails; the failover must be quicker.
            "message.timeout.ms": 25000,
            "socket.timeout.ms": 10000,
            "topic.metadata.refresh.interval.ms": 1000,
        })
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.sent = defaultdict(int)        # partition -> records handed to produce()
        self.acked = defaultdict(list)      # partition -> [(seq, offset, time)] in report order
        self.failed = defaultdict(list)     # partition -> [(seq, error)]
        self.in_flight = 0
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, name="producer", daemon=True)
        self.crash = None

    def _on_delivery(self, partition, seq):
        def cb(err, msg):
            with self.cond:
                self.in_flight -= 1
                if err is not None:
                    self.failed[partition].append((seq, err))
                else:
                    assert msg.partition() == partition, (msg.partition(), partition)
                    self.acked[partition].append((seq, msg.offset(), time.monotonic()))
                self.cond.notify_all()
        return cb

    def _run(self):
        try:
            while not self.stop_event.is_set():
                for partition in range(PARTITIONS):
                    with self.lock:
                        if self.in_flight >= IN_FLIGHT_MAX:
                            break
                        seq = self.sent[partition]
                        self.sent[partition] += 1
                        self.in_flight += 1
                    while True:
                        try:
                            self.p.produce(self.topic, value=value_of(partition, seq), partition=partition,
                                           on_delivery=self._on_delivery(partition, seq))
                            break
                        except BufferError:
                            self.p.poll(0.05)
                self.p.poll(ROUND_PAUSE_S)
        except BaseException as e:  # reported by stop()
            self.crash = e

    def start(self):
        self.thread.start()

    def stop_and_flush(self) -> int:
        self.stop_event.set()
        self.thread.join(timeout=10)
        assert not self.thread.is_alive(), "the producer thread did not stop"
        if self.crash is not None:
            raise self.crash
        return self.p.flush(FLUSH_S)

    def acked_count(self, partition=None, since=None) -> int:
        with self.lock:
            parts = range(PARTITIONS) if partition is None else [partition]
            return sum(1 for p in parts for (_, _, t) in self.acked[p] if since is None or t >= since)

    def wait_acks(self, n: int, what: str, partition=None, since=None, timeout=PROGRESS_WAIT_S):
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                have = sum(1 for p in (range(PARTITIONS) if partition is None else [partition])
                           for (_, _, t) in self.acked[p] if since is None or t >= since)
                if have >= n:
                    return
                left = deadline - time.monotonic()
                assert left > 0 and self.crash is None, (
                    f"{what}: {have} of {n} acknowledgements within {timeout}s "
                    f"(errors so far: {self.error_summary()}; producer crash: {self.crash!r})")
                self.cond.wait(min(left, 0.5))

    def error_summary(self) -> str:
        errs = defaultdict(int)
        for p in range(PARTITIONS):
            for _, err in self.failed[p]:
                errs[err.name()] += 1
        return dict(errs).__repr__()


def partition_leaders(admin: AdminClient, topic: str) -> dict:
    """{partition: leader id (-1 if none)} from a Metadata request."""
    md = admin.list_topics(topic, timeout=5)
    t = md.topics.get(topic)
    if t is None or t.error is not None:
        return {}
    return {p.id: p.leader for p in t.partitions.values()}


def leaders_seen_by(node, topic: str) -> dict:
    """{partition: leader} as `node` alone answers Metadata."""
    md = node_metadata(node.host, node.port, [topic])
    return {p: v["leader"] for p, v in md["topics"][topic]["partitions"].items()}


def knows_all_leaders(node, topic: str):
    seen = leaders_seen_by(node, topic)
    return seen if len(seen) == PARTITIONS and all(v >= 0 for v in seen.values()) else None


class _ListHandler(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        self.lines.append(self.format(record))


def read_all(cluster, topic: str):
    """Every partition from the beginning up to its high watermark: {partition: [(offset, value)]}."""
    client_log = _ListHandler()
    logger = logging.getLogger(f"read-all-{topic}")
    logger.propagate = False
    logger.addHandler(client_log)
    c = consumer(cluster.bootstrap, debug="metadata,topic,broker", logger=logger)
    out = {p: [] for p in range(PARTITIONS)}
    try:
        highs = {}
        for p in range(PARTITIONS):
            try:
                _, highs[p] = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            except KafkaException as e:
                views = {}
                for n in cluster.nodes:
                    try:
                        views[n.node_id] = node_metadata(n.host, n.port, [topic])
                    except Exception as err:  # noqa: BLE001 - a diagnostic
                        views[n.node_id] = repr(err)
                raise AssertionError(
                    f"watermarks of {topic}[{p}]: {e}\nMetadata as each node answers it now: {views}\n"
                    f"consumer log (tail):\n" + "\n".join(client_log.lines[-80:])) from e
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
        done = {p for p in range(PARTITIONS) if highs[p] <= 0}
        deadline = time.monotonic() + READ_S
        while len(done) < PARTITIONS:
            assert time.monotonic() < deadline, (
                f"reading {topic}: partitions {sorted(set(range(PARTITIONS)) - done)} not read up to their "
                f"high watermarks {highs} within {READ_S}s; got {[(p, len(v), v[-1][0] if v else None) for p, v in out.items()]}")
            msg = c.poll(0.5)
            if msg is None:
                continue
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    if msg.offset() >= highs[msg.partition()]:
                        done.add(msg.partition())
                    continue
                raise KafkaException(err)
            assert msg.topic() == topic
            out[msg.partition()].append((msg.offset(), msg.value()))
            if msg.offset() >= highs[msg.partition()] - 1:
                done.add(msg.partition())
        return out, highs
    finally:
        c.close()


def check_history(prod: ContinuousProducer, read: dict) -> list:
    """Problems found comparing the delivery reports with what was read (empty if none)."""
    problems = []
    for p in range(PARTITIONS):
        acked = prod.acked[p]
        failed_seqs = {seq for seq, _ in prod.failed[p]}
        rows = read[p]
        # Acknowledgements of one partition come in produce order at increasing offsets.
        for (s1, o1, _), (s2, o2, _) in zip(acked, acked[1:]):
            if not (s1 < s2 and o1 < o2):
                problems.append(f"p{p}: acknowledged out of order: seq {s1}@{o1} then seq {s2}@{o2}")
                break
        # What was read: increasing offsets, values we sent to this partition, each at most once.
        at_offset = {}
        seen = defaultdict(list)
        prev = None
        for offset, value in rows:
            if prev is not None and offset <= prev:
                problems.append(f"p{p}: read offset {offset} after {prev}")
            prev = offset
            try:
                vp, seq = parse_value(value)
            except Exception:
                problems.append(f"p{p}: read a value we never sent at offset {offset}: {value!r}")
                continue
            if vp != p or seq >= prod.sent[p]:
                problems.append(f"p{p}: read a value we never sent to it at offset {offset}: {value!r}")
            at_offset[offset] = seq
            seen[seq].append(offset)
        dups = {seq: offs for seq, offs in seen.items() if len(offs) > 1}
        if dups:
            sample = sorted(dups.items())[:5]
            problems.append(f"p{p}: {len(dups)} values read more than once (seq: offsets): {sample}")
        # The per-partition order of values is the produce order (idempotence keeps it).
        seqs = [at_offset[o] for o, _ in rows if o in at_offset]
        for a, b in zip(seqs, seqs[1:]):
            if a >= b:
                problems.append(f"p{p}: value seq {b} read after seq {a}")
                break
        # Every acknowledged record exactly where it was acknowledged.
        lost, moved = [], []
        for seq, offset, _ in acked:
            if seq not in seen:
                lost.append((seq, offset))
            elif seen[seq] != [offset]:
                moved.append((seq, offset, seen[seq]))
        if lost:
            problems.append(f"p{p}: {len(lost)} acknowledged records not read back (seq, acked offset): {lost[:10]}")
        if moved:
            problems.append(f"p{p}: {len(moved)} acknowledged records read at other offsets "
                            f"(seq, acked offset, read offsets): {moved[:10]}")
        # Records neither acknowledged nor failed would mean a missing delivery report.
        reported = {seq for seq, _, _ in acked} | failed_seqs
        unreported = [s for s in range(prod.sent[p]) if s not in reported]
        if unreported:
            problems.append(f"p{p}: {len(unreported)} records without a delivery report: {unreported[:10]}")
    return problems


@pytest.mark.timeout(150)
def test_leader_failover_keeps_acknowledged_records(cluster3):
    t_start = time.monotonic()
    topic = unique_topic("failover")
    admin = AdminClient({"bootstrap.servers": cluster3.bootstrap})

    # All three brokers registered, then the topic, then a leader for every partition.
    wait_for("3 live brokers in metadata", METADATA_WAIT_S,
             lambda: len(admin.list_topics(timeout=5).brokers) == 3)
    futures = admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS, replication_factor=3)],
                                  operation_timeout=10, request_timeout=15)
    futures[topic].result(timeout=20)
    leaders = wait_for("a leader for every partition", METADATA_WAIT_S,
                       lambda: (lambda l: l if len(l) == PARTITIONS and all(v >= 0 for v in l.values()) else None)(
                           partition_leaders(admin, topic)))
    print(f"\ntopic {topic}: leaders {leaders}")

    prod = ContinuousProducer(cluster3.bootstrap, topic)
    prod.start()
    summary = {}
    try:
        prod.wait_acks(WARMUP_ACKS, "warm-up")

        # Kill partition 0's leader.
        leaders = partition_leaders(admin, topic)
        old_leader = leaders[0]
        assert old_leader in (1, 2, 3), leaders
        victim = cluster3.node(old_leader)
        acked_before = prod.acked_count()
        t_kill = time.monotonic()
        victim.kill9()

        # A new leader for partition 0 (metadata from the survivors).
        survivors = AdminClient({"bootstrap.servers": ",".join(
            n.bootstrap for n in cluster3.nodes if n is not victim)})
        new_leaders = wait_for(
            "metadata naming a new leader of partition 0", FAILOVER_WAIT_S,
            lambda: (lambda l: l if l.get(0, -1) not in (-1, old_leader) else None)(
                partition_leaders(survivors, topic)))
        t_new_leader = time.monotonic()
        # Writes to partition 0 acknowledged by the new leader.
        prod.wait_acks(AFTER_FAILOVER_ACKS, "partition 0 after failover", partition=0, since=t_new_leader)
        t_p0_acked = min(t for (_, _, t) in prod.acked[0] if t >= t_new_leader)

        # Restart the killed node; wait until it serves again and metadata lists it.
        t_restart = time.monotonic()
        victim.launch()
        victim.wait_ready()
        t_serving = time.monotonic()
        wait_for(f"node {victim.node_id} live in metadata", REJOIN_WAIT_S,
                 lambda: victim.node_id in admin.list_topics(timeout=5).brokers)
        t_rejoined = time.monotonic()
        # It has rejoined every partition's group: it knows each partition's leader itself.
        wait_for(f"node {victim.node_id} naming a leader for every partition", REJOIN_WAIT_S,
                 lambda: knows_all_leaders(victim, topic))
        t_caught_up = time.monotonic()
        prod.wait_acks(AFTER_REJOIN_ACKS, "after the rejoin", since=t_rejoined)
        final_leaders = {n.node_id: leaders_seen_by(n, topic) for n in cluster3.nodes}
    finally:
        left = prod.stop_and_flush()
    t_flushed = time.monotonic()
    assert left == 0, f"{left} records still undelivered after flush({FLUSH_S})"

    read, highs = read_all(cluster3, topic)
    t_read = time.monotonic()

    acked = prod.acked_count()
    failed = sum(len(v) for v in prod.failed.values())
    summary = {
        "acked": acked,
        "acked per partition": {p: len(prod.acked[p]) for p in range(PARTITIONS)},
        "acked after kill": prod.acked_count(since=t_kill),
        "delivery errors": failed,
        "error kinds": prod.error_summary(),
        "killed": f"node {old_leader} (leader of p0, leaders {leaders})",
        "new p0 leader": new_leaders[0],
        "failover (kill -> new leader in metadata)": f"{t_new_leader - t_kill:.2f}s",
        "kill -> first p0 ack after failover": f"{t_p0_acked - t_kill:.2f}s",
        "restart -> serving / live in metadata / knows every leader": f"{t_serving - t_restart:.2f}s / {t_rejoined - t_restart:.2f}s / {t_caught_up - t_restart:.2f}s",
        "final leaders (per node asked)": final_leaders,
        "high watermarks": highs,
        "read": {p: len(read[p]) for p in range(PARTITIONS)},
        "total time": f"{t_read - t_start:.1f}s (flush {t_flushed - t_rejoined:.1f}s after rejoin, read {t_read - t_flushed:.1f}s)",
    }
    print("failover summary:")
    for k, v in summary.items():
        print(f"  {k}: {v}")

    problems = check_history(prod, read)
    assert not problems, "history check failed:\n  " + "\n  ".join(problems)
    assert acked > acked_before, "nothing acknowledged after the kill"
    assert prod.acked_count(partition=0, since=t_kill) > 0, "partition 0 took no writes after the kill"
