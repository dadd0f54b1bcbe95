"""pytest fixtures for the real-client tests: a `broker` running the real `sluice` binary.

The binary is `$SLUICE_BIN` if set, else `$CARGO_TARGET_DIR/release/sluice`, else
`<repo>/target/release/sluice` (build it with `cargo build --release -p sluice-node`).
Every broker listens on 127.0.0.1 only, on a free port, with a fresh data directory.
`cluster3` runs three `sluice serve` nodes the same way (ids 1-3, free Kafka and RPC ports);
SLUICE_TEST_LOG sets their log filter (SLUICE_LOG), e.g. SLUICE_TEST_LOG=info,sluice_core=debug.
"""

import os
import random
import signal
import socket
import struct
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
# A cluster node serves once a metadata quorum exists and it has registered; a restarted node
# registers only after its previous incarnation's session (6 s) expired.
CLUSTER_START_TIMEOUT_S = 30.0
LOG_TAIL_BYTES = 64 * 1024
CLUSTER_LOG_TAIL_BYTES = 24 * 1024


def sluice_bin() -> Path:
    if os.environ.get("SLUICE_BIN"):
        return Path(os.environ["SLUICE_BIN"])
    target = Path(os.environ.get("CARGO_TARGET_DIR") or REPO / "target")
    if not target.is_absolute():
        target = REPO / target
    return target / "release" / "sluice"


def ephemeral_port_range() -> tuple:
    """The kernel's range for the source ports of outgoing connections."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


# Ports handed out by free_port in this process, never handed out twice.
_given_ports = set()


def free_port() -> int:
    """A loopback port nothing listens on, below the ephemeral range. A port the kernel picks
    for `bind(0)` comes from the ephemeral range, where the nodes' own outgoing connections
    (RPC between nodes, clients) also take their source ports: one of those could take a
    listener's port between this call and the node's bind ("Address already in use"). Below the
    range only listeners take ports."""
    low, _ = ephemeral_port_range()
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(10000, max(10001, low))
        if port in _given_ports:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _given_ports.add(port)
        return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """One `sluice serve` process; kill9()/restart() keep its port and data directory."""

    def __init__(self, binary: Path, workdir: Path):
        self.binary = binary
        self.port = free_port()
        self.host = "127.0.0.1"
        self.bootstrap = f"{self.host}:{self.port}"
        self.data_dir = workdir / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / "sluice.log"
        self.proc = None
        self.starts = 0
        # True while the process is expected to be running: an exit we did not ask for is a crash.
        self._expect_running = False

    # -- lifecycle -------------------------------------------------------------------------
    def serve_args(self) -> list:
        """`sluice` arguments; subclasses add cluster flags."""
        return ["serve", "--listen", self.bootstrap, "--data-dir", str(self.data_dir)]

    def child_env(self) -> dict:
        # The broker reads SLUICE_* settings from the environment; keep the tests hermetic.
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
        env.setdefault("RUST_LOG", "info")
        env.setdefault("RUST_BACKTRACE", "1")
        return env

    def start(self):
        self.launch()
        self.wait_ready()

    def launch(self):
        """Spawns the process without waiting for it to accept connections."""
        assert self.proc is None or self.proc.poll() is not None, "broker already running"
        self.starts += 1
        with open(self.log_path, "ab") as log:
            log.write(f"\n===== test harness: start #{self.starts} of {self.binary} on {self.bootstrap} "
                      f"data-dir {self.data_dir} =====\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [str(self.binary), *self.serve_args()],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=str(self.data_dir.parent),
                env=self.child_env(),
            )
        self._expect_running = True

    def wait_ready(self, timeout: float = START_TIMEOUT_S):
        """Polls until the port accepts TCP connections; fails early if the process exits."""
        deadline = time.monotonic() + timeout
        last_err = None
        while time.monotonic() < deadline:
            code = self.proc.poll()
            if code is not None:
                self._expect_running = False
                raise RuntimeError(
                    f"sluice exited with status {code} before accepting connections on {self.bootstrap}\n"
                    f"--- {self.log_path} (tail) ---\n{self.log_tail()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return
            except OSError as e:
                last_err = e
                time.sleep(0.05)  # poll interval, not a wait for an event we could observe
        raise RuntimeError(
            f"sluice did not accept connections on {self.bootstrap} within {timeout}s (last error: {last_err})\n"
            f"--- {self.log_path} (tail) ---\n{self.log_tail()}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self):
        """SIGKILL, then wait for the process to be gone."""
        self._expect_running = False
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=STOP_TIMEOUT_S)
        self._note(f"killed with SIGKILL (status {self.proc.returncode})")

    def stop(self, timeout: float = STOP_TIMEOUT_S):
        """SIGTERM, then SIGKILL if the process is still there after `timeout` seconds."""
        self._expect_running = False
        if self.proc is None:
            return
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._note(f"did not exit within {timeout}s of SIGTERM; sending SIGKILL")
                self.proc.kill()
                self.proc.wait(timeout=STOP_TIMEOUT_S)
        self._note(f"stopped (status {self.proc.returncode})")

    def restart(self):
        """Same port, same data directory. Stops (SIGTERM) a still-running process first."""
        if self.alive():
            self.stop()
        self.start()

    def crashed(self) -> bool:
        """True if the process exited although the test did not stop it."""
        return self._expect_running and self.proc is not None and self.proc.poll() is not None

    # -- logs ------------------------------------------------------------------------------
    def _note(self, text: str):
        with open(self.log_path, "ab") as log:
            log.write(f"===== test harness: {text} =====\n".encode())

    def log_tail(self, limit: int = LOG_TAIL_BYTES) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(max(0, size - limit))
                data = f.read()
        except OSError as e:
            return f"(no log: {e})"
        text = data.decode("utf-8", "replace")
        if size > limit:
            text = f"[... {size - limit} earlier bytes in {self.log_path}]\n" + text
        return text


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Attaches the brokers' logs to the report of a failed setup or test."""
    report = yield
    if report.failed and report.when in ("setup", "call"):
        funcargs = getattr(item, "funcargs", {})
        brokers = []
        if isinstance(funcargs.get("broker"), Broker):
            brokers.append(("sluice broker", funcargs["broker"], LOG_TAIL_BYTES))
        if isinstance(funcargs.get("cluster3"), Cluster):
            brokers += [(f"sluice node {n.node_id}", n, CLUSTER_LOG_TAIL_BYTES) for n in funcargs["cluster3"].nodes]
        for title, b, limit in brokers:
            if b.proc is None:
                state = "never started"
            else:
                state = "running" if b.alive() else f"exited with status {b.proc.returncode}"
            report.sections.append((f"{title} log ({b.log_path}, process {state})", b.log_tail(limit)))
    return report


@pytest.fixture
def broker(tmp_path):
    binary = sluice_bin()
    if not os.access(binary, os.X_OK):
        pytest.fail(f"sluice binary not found at {binary}: run `cargo build --release -p sluice-node` "
                    f"or set SLUICE_BIN")
    b = Broker(binary, tmp_path)
    try:
        b.start()
        yield b
        if b.crashed():
            pytest.fail(f"the broker died during the test (status {b.proc.returncode})\n"
                        f"--- {b.log_path} (tail) ---\n{b.log_tail()}")
    finally:
        b.stop()


# -- a 3-node cluster -----------------------------------------------------------------------

def api_versions_answered(host: str, port: int, deadline: float, alive=lambda: True) -> bool:
    """Sends ApiVersions v0 on a raw connection and waits until it is answered or `deadline`
    (time.monotonic()) passes. A cluster node binds its Kafka port before it has registered with
    the controller and only accepts connections afterwards, so a TCP connect alone proves
    nothing: an answer does. Returns False if `alive()` turns false meanwhile."""
    client_id = b"sluice-test-probe"
    body = struct.pack(">hhih", 18, 0, 1, len(client_id)) + client_id
    frame = struct.pack(">i", len(body)) + body
    while time.monotonic() < deadline and alive():
        try:
            with socket.create_connection((host, port), timeout=0.5) as s:
                s.sendall(frame)
                got = b""
                # The request waits in the listen backlog until the node accepts connections.
                while len(got) < 8 and time.monotonic() < deadline and alive():
                    s.settimeout(0.5)
                    try:
                        chunk = s.recv(8 - len(got))
                    except socket.timeout:
                        continue
                    if not chunk:
                        break  # closed: try again on a new connection
                    got += chunk
                if len(got) == 8 and struct.unpack(">ii", got)[1] == 1:
                    return True
        except OSError:
            pass
        time.sleep(0.05)  # poll interval after a refused or closed connection
    return False


class ClusterNode(Broker):
    """One `sluice serve` member of a cluster (node ids 1..N, Kafka and RPC ports on loopback).
    `wait_ready` waits for an answered Kafka request, i.e. until the node has registered with
    the controller and serves clients."""

    def __init__(self, binary: Path, workdir: Path, node_id: int, extra_args=()):
        super().__init__(binary, workdir)
        self.node_id = node_id
        self.extra_args = list(extra_args)  # further `sluice serve` flags
        self.rpc_port = free_port()
        self.rpc_address = f"{self.host}:{self.rpc_port}"
        self.peers = ""  # set by Cluster once every node has its RPC port
        # SLUICE_TEST_LOG=debug (say) becomes the nodes' SLUICE_LOG filter.
        self.log_filter = os.environ.get("SLUICE_TEST_LOG", "info")

    def serve_args(self) -> list:
        return ["serve", "--node-id", str(self.node_id), "--listen", self.bootstrap,
                "--advertised-listener", self.bootstrap, "--rpc-listen", self.rpc_address,
                "--peers", self.peers, "--data-dir", str(self.data_dir), *self.extra_args]

    def child_env(self) -> dict:
        env = super().child_env()
        env["SLUICE_LOG"] = self.log_filter
        return env

    def wait_ready(self, timeout: float = CLUSTER_START_TIMEOUT_S):
        deadline = time.monotonic() + timeout
        if api_versions_answered(self.host, self.port, deadline, alive=self.alive):
            return
        if not self.alive():
            self._expect_running = False
            raise RuntimeError(
                f"node {self.node_id} exited with status {self.proc.returncode} before serving on {self.bootstrap}\n"
                f"--- {self.log_path} (tail) ---\n{self.log_tail()}")
        raise RuntimeError(
            f"node {self.node_id} did not answer ApiVersions on {self.bootstrap} within {timeout}s\n"
            f"--- {self.log_path} (tail) ---\n{self.log_tail()}")


class Cluster:
    """N nodes started together (a node serves only once a metadata quorum exists)."""

    def __init__(self, binary: Path, workdir: Path, nodes: int = 3, extra_args=()):
        self.nodes = [ClusterNode(binary, workdir / f"node-{i}", i, extra_args)
                      for i in range(1, nodes + 1)]
        peers = ",".join(f"{n.node_id}@{n.rpc_address}" for n in self.nodes)
        for n in self.nodes:
            n.peers = peers
        self.bootstrap = ",".join(n.bootstrap for n in self.nodes)

    def node(self, node_id: int) -> ClusterNode:
        return next(n for n in self.nodes if n.node_id == node_id)

    def start(self):
        for n in self.nodes:
            n.launch()
        for n in self.nodes:
            n.wait_ready()

    def kill_all(self):
        for n in self.nodes:
            if n.proc is not None:
                n._expect_running = False
                if n.alive():
                    n.proc.kill()
                try:
                    n.proc.wait(timeout=STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    pass
                n._note(f"test teardown: killed (status {n.proc.returncode})")


@pytest.fixture
def cluster3(tmp_path):
    """Three `sluice serve` processes on loopback (free Kafka and RPC ports, fresh data dirs),
    each answering Kafka requests. Killed (SIGKILL) at teardown, also after a failure; a node
    that died without the test asking for it fails the test."""
    binary = sluice_bin()
    if not os.access(binary, os.X_OK):
        pytest.fail(f"sluice binary not found at {binary}: run `cargo build --release -p sluice-node` "
                    f"or set SLUICE_BIN")
    c = Cluster(binary, tmp_path, 3)
    try:
        c.start()
        yield c
        crashed = [n for n in c.nodes if n.crashed()]
        if crashed:
            pytest.fail("nodes died during the test: " + "; ".join(
                f"node {n.node_id} (status {n.proc.returncode})\n--- {n.log_path} (tail) ---\n{n.log_tail(CLUSTER_LOG_TAIL_BYTES)}"
                for n in crashed))
    finally:
        c.kill_all()
