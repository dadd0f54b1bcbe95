"""pytest fixtures for the real-client tests: a `broker` running the real `sluice` binary.

The binary is `$SLUICE_BIN` if set, else `$CARGO_TARGET_DIR/release/sluice`, else
`<repo>/target/release/sluice` (build it with `cargo build --release -p sluice-node`).
Every broker listens on 127.0.0.1 only, on a free port, with a fresh data directory.
"""

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
LOG_TAIL_BYTES = 64 * 1024


def sluice_bin() -> Path:
    if os.environ.get("SLUICE_BIN"):
        return Path(os.environ["SLUICE_BIN"])
    target = Path(os.environ.get("CARGO_TARGET_DIR") or REPO / "target")
    if not target.is_absolute():
        target = REPO / target
    return target / "release" / "sluice"


def free_port() -> int:
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
    def start(self):
        assert self.proc is None or self.proc.poll() is not None, "broker already running"
        self.starts += 1
        # The broker reads SLUICE_* settings from the environment; keep the tests hermetic.
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
        env.setdefault("RUST_LOG", "info")
        env.setdefault("RUST_BACKTRACE", "1")
        with open(self.log_path, "ab") as log:
            log.write(f"\n===== test harness: start #{self.starts} of {self.binary} on {self.bootstrap} "
                      f"data-dir {self.data_dir} =====\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [str(self.binary), "serve", "--listen", self.bootstrap, "--data-dir", str(self.data_dir)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=str(self.data_dir.parent),
                env=env,
            )
        self._expect_running = True
        self.wait_ready()

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
    """Attaches the broker's log to the report of a failed setup or test."""
    report = yield
    broker = getattr(item, "funcargs", {}).get("broker") if report.when in ("setup", "call") else None
    if report.failed and isinstance(broker, Broker):
        state = "running" if broker.alive() else f"exited with status {broker.proc.returncode}"
        report.sections.append(
            (f"sluice broker log ({broker.log_path}, process {state})", broker.log_tail()))
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
