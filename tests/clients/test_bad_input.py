"""Garbage on the wire (raw sockets) and invalid admin requests: the broker must survive them,
answer or close as Kafka does, and keep serving real clients afterwards.

Wire format (Kafka protocol guide): a request is [int32 length][header][body]; request header v1 is
int16 api_key, int16 api_version, int32 correlation_id, nullable string client_id (int16 length +
bytes); header v2 adds a tagged-field section (varint count). Response: [int32 length][int32
correlation_id][body] (ApiVersions responses always use response header v0).
"""

import random
import socket
import struct
import time

import pytest

from helpers import roundtrip

API_VERSIONS = 18
UNSUPPORTED_VERSION = 35
IO_TIMEOUT_S = 10.0


def connect(broker) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", broker.port), timeout=IO_TIMEOUT_S)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def header_v1(api_key, api_version, correlation_id, client_id=b"sluice-bad-input"):
    return struct.pack(">hhih", api_key, api_version, correlation_id, len(client_id)) + client_id


def header_v2(api_key, api_version, correlation_id, client_id=b"sluice-bad-input"):
    return header_v1(api_key, api_version, correlation_id, client_id) + b"\x00"  # no tagged fields


def frame(payload: bytes) -> bytes:
    return struct.pack(">i", len(payload)) + payload


def recv_exact(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise EOFError(f"connection closed after {len(buf)} of {n} bytes")
        buf += chunk
    return buf


def read_response(s):
    """Returns (correlation_id, body) of one response, or None if the broker closed the connection."""
    try:
        head = s.recv(4)
        if not head:
            return None
        head += recv_exact(s, 4 - len(head))
        (length,) = struct.unpack(">i", head)
        assert 4 <= length < 64 * 1024 * 1024, f"implausible response length {length}"
        payload = recv_exact(s, length)
    except (ConnectionResetError, EOFError):
        return None
    return struct.unpack_from(">i", payload)[0], payload[4:]


def wait_closed(s, timeout=IO_TIMEOUT_S):
    """True once the broker has closed the connection (EOF or reset); False on timeout. Anything the
    broker sends first is discarded."""
    s.settimeout(0.5)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if not s.recv(65536):
                return True
        except socket.timeout:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return True
    return False


def send_all(s, data):
    """Sends as much as the broker accepts; it may close the connection part-way."""
    try:
        s.sendall(data)
        return True
    except (ConnectionResetError, BrokenPipeError):
        return False


def assert_healthy(broker):
    assert broker.alive(), f"broker died (status {broker.proc.returncode})"
    roundtrip(broker.bootstrap, "after-bad")
    assert broker.alive()


def test_frame_length_200_mib_is_refused(broker):
    with connect(broker) as s:
        send_all(s, struct.pack(">i", 200 * 1024 * 1024) + header_v1(3, 1, 1) + b"\x00" * 1024)
        assert wait_closed(s), "broker kept a connection open after a 200 MiB length prefix"
    assert_healthy(broker)


def test_negative_frame_length_is_refused(broker):
    with connect(broker) as s:
        send_all(s, struct.pack(">i", -5) + b"\x00" * 16)
        assert wait_closed(s), "broker kept a connection open after a negative length prefix"
    assert_healthy(broker)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_bytes(broker, seed):
    rng = random.Random(seed)
    with connect(broker) as s:
        send_all(s, bytes(rng.getrandbits(8) for _ in range(8192)))
    # Random bytes inside a plausible frame, so that they reach header and body decoding.
    for api_key in [0, 1, 2, 3, 18, 19, 22, rng.randrange(0, 100)]:
        for _ in range(5):
            body = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 300)))
            version = rng.choice([0, 1, 3, 4, 7, 9, 12, 13, -1, 32767])
            with connect(broker) as s:
                send_all(s, frame(header_v2(api_key, version, rng.randrange(1 << 31)) + body))
                # Either a response or a close; the broker must not hang the test or die.
                s.settimeout(0.5)
                try:
                    s.recv(65536)
                except (socket.timeout, ConnectionResetError):
                    pass
            assert broker.alive(), f"broker died on api_key={api_key} version={version} body={body.hex()}"
    assert_healthy(broker)


def test_truncated_frame_then_close(broker):
    for cut in [1, 3, 4, 10, 60]:
        request = frame(header_v2(API_VERSIONS, 3, 7) + b"\x05sluice\x021\x00" + b"\x00" * 64)
        with connect(broker) as s:
            send_all(s, request[:cut])
        # Also a frame header promising more than is ever sent.
        with connect(broker) as s:
            send_all(s, struct.pack(">i", 1000) + request[4:4 + cut])
    assert_healthy(broker)


def test_unknown_api_key_is_answered_or_closed(broker):
    correlation = 424242
    with connect(broker) as s:
        send_all(s, frame(header_v1(999, 0, correlation) + b"\x00\x00\x00\x00"))
        resp = read_response(s)
        if resp is not None:
            assert resp[0] == correlation, f"response correlation id {resp[0]}, sent {correlation}"
        else:
            pass  # closed, as Kafka does
    assert_healthy(broker)


def test_api_versions_v99_gets_unsupported_version_v0_response(broker):
    correlation = 0x1234_5678
    # ApiVersions v3+ body: client_software_name, client_software_version (compact strings), tags.
    body = b"\x0csluice-test\x041.0\x00"
    with connect(broker) as s:
        assert send_all(s, frame(header_v2(API_VERSIONS, 99, correlation) + body))
        resp = read_response(s)
    assert resp is not None, "broker closed the connection instead of answering ApiVersions v99"
    corr, payload = resp
    assert corr == correlation
    # v0 body: error_code int16, api_keys array (int32 count, then int16 key, min, max each).
    error_code, count = struct.unpack_from(">hi", payload)
    assert error_code == UNSUPPORTED_VERSION
    assert count >= 0 and len(payload) == 6 + 6 * count, f"not a v0 body: {payload.hex()}"
    ranges = {k: (lo, hi) for k, lo, hi in struct.iter_unpack(">hhh", payload[6:])}
    if API_VERSIONS in ranges:
        lo, hi = ranges[API_VERSIONS]
        assert 0 == lo <= 3 <= hi < 99, ranges[API_VERSIONS]

    # The same connection-level sanity with a supported version: v0 answers with error 0.
    with connect(broker) as s:
        assert send_all(s, frame(header_v1(API_VERSIONS, 0, 5)))
        resp = read_response(s)
    assert resp is not None and resp[0] == 5
    error_code, count = struct.unpack_from(">hi", resp[1])
    assert error_code == 0 and count > 0 and len(resp[1]) == 6 + 6 * count
    assert_healthy(broker)


def test_many_connections_opened_and_dropped(broker):
    socks = [connect(broker) for _ in range(50)]
    for i, s in enumerate(socks):
        if i % 2:
            send_all(s, frame(header_v1(API_VERSIONS, 0, i))[: i % 10])
        s.close()
    assert_healthy(broker)
