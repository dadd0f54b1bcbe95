"""kcat (Debian's 1.7.1 on librdkafka 2.0.2) producing and consuming through sluice."""

import json
import shutil
import subprocess

import pytest

from helpers import FIRST_OFFSET, unique_topic

KCAT = shutil.which("kcat")
pytestmark = pytest.mark.skipif(KCAT is None, reason="kcat is not installed (apt-get install kcat)")

TIMEOUT_S = 60
# librdkafka settings so that kcat itself gives up well before the subprocess timeout.
BOUNDS = ["-X", "message.timeout.ms=20000", "-X", "socket.timeout.ms=10000"]


def kcat(*args, stdin: str | None = None) -> subprocess.CompletedProcess:
    cmd = [KCAT, *args]
    try:
        proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"kcat timed out after {TIMEOUT_S}s: {cmd}\nstderr: {e.stderr}") from None
    assert proc.returncode == 0, f"kcat failed ({proc.returncode}): {cmd}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
    return proc


def produce(bootstrap, topic, lines, headers, acks):
    args = ["-P", "-b", bootstrap, "-t", topic, "-K", ":", "-X", f"acks={acks}", *BOUNDS]
    for name, value in headers:
        args += ["-H", f"{name}={value}"]
    proc = kcat(*args, stdin="".join(f"{k}:{v}\n" for k, v in lines))
    assert "fail" not in proc.stderr.lower(), proc.stderr


def consume(bootstrap, topic):
    proc = kcat("-C", "-b", bootstrap, "-t", topic, "-o", "beginning", "-e", "-q", *BOUNDS,
                "-f", "%t|%p|%o|%k|%s|%h\n")
    return proc.stdout.splitlines()


def test_kcat_produce_consume_keys_values_headers_offsets(broker):
    topic = unique_topic("kcat")
    first = [(f"k{i:02d}", f"value {i} from kcat acks=1") for i in range(10)]
    second = [(f"k{i:02d}", f"value {i} from kcat acks=all") for i in range(10, 20)]
    h1 = [("k", "v"), ("src", "kcat-1")]
    h2 = [("k", "v2"), ("trace", "abc-123"), ("src", "kcat-2")]

    # The first produce auto-creates the topic (one partition).
    produce(broker.bootstrap, topic, first, h1, acks="1")
    produce(broker.bootstrap, topic, second, h2, acks="all")

    want = []
    for i, (k, v) in enumerate(first + second):
        hdrs = h1 if i < len(first) else h2
        want.append(f"{topic}|0|{FIRST_OFFSET + i}|{k}|{v}|" + ",".join(f"{n}={x}" for n, x in hdrs))
    got = consume(broker.bootstrap, topic)
    assert got == want


def test_kcat_metadata_lists_broker_and_topic(broker):
    topic = unique_topic("kcat-meta")
    produce(broker.bootstrap, topic, [("a", "b")], [], acks="all")
    meta = json.loads(kcat("-L", "-J", "-b", broker.bootstrap, "-t", topic, *BOUNDS).stdout)
    brokers = [(b["name"].rsplit(":", 1)[0], b["name"].rsplit(":", 1)[1]) for b in meta["brokers"]]
    assert brokers == [("127.0.0.1", str(broker.port))], meta["brokers"]
    topics = {t["topic"]: t for t in meta["topics"]}
    assert set(topics) == {topic}, meta["topics"]
    t = topics[topic]
    assert "error" not in t, t
    assert [p["partition"] for p in t["partitions"]] == [0], t
    assert t["partitions"][0]["leader"] == meta["brokers"][0]["id"], meta


def test_kcat_idempotent_producer(broker):
    topic = unique_topic("kcat-idem")
    lines = [(f"id{i}", f"idempotent {i}") for i in range(20)]
    args = ["-P", "-b", broker.bootstrap, "-t", topic, "-K", ":", "-X", "enable.idempotence=true",
            "-H", "mode=idempotent", *BOUNDS]
    proc = kcat(*args, stdin="".join(f"{k}:{v}\n" for k, v in lines))
    assert "fail" not in proc.stderr.lower(), proc.stderr
    want = [f"{topic}|0|{o}|{k}|{v}|mode=idempotent" for o, (k, v) in enumerate(lines, FIRST_OFFSET)]
    assert consume(broker.bootstrap, topic) == want


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_kcat_compressed_batches_round_trip(broker, codec):
    # The broker stores and serves a producer's compressed batch as sent; every codec librdkafka
    # offers must come back intact, in order, at consecutive offsets.
    topic = unique_topic(f"kcat-{codec}")
    lines = [(f"k{i:03d}", f"{codec} value {i} " + "x" * (i % 40)) for i in range(200)]
    proc = kcat("-P", "-b", broker.bootstrap, "-t", topic, "-K", ":", "-z", codec,
                "-X", "linger.ms=50", "-X", "acks=all", *BOUNDS,
                stdin="".join(f"{k}:{v}\n" for k, v in lines))
    assert "fail" not in proc.stderr.lower(), proc.stderr
    got = consume(broker.bootstrap, topic)
    want = [f"{topic}|0|{offset}|{k}|{v}|" for offset, (k, v) in enumerate(lines, FIRST_OFFSET)]
    assert got == want
