"""Test helpers for the serving tests: free loopback ports, a `vitrt serve` subprocess that is always cleaned up,
and the process tree it started (to prove no server process outlives it)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

READY_S = 30.0  # the bound on `vitrt serve` becoming ready
WORKTREE = Path(__file__).resolve().parents[1]


def free_ports(count: int = 3) -> list[int]:
    sockets = []
    for _ in range(count):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        sockets.append(s)
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def http_status(url: str, data: bytes | None = None, headers: dict | None = None) -> tuple[int, str]:
    method = "POST" if data is not None else "GET"
    request = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")
    except OSError:
        return 0, ""


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (from /proc's parent links)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class ServeProcess:
    """``vitrt serve OUT`` on free loopback ports in its own session; stopped (and killed if need be) on exit."""

    def __init__(self, out: Path, *args: str, log_dir: Path):
        self.http_port, self.grpc_port, self.metrics_port = free_ports(3)
        self.stderr_path = log_dir / f"serve-{self.http_port}.err"
        self.stdout_path = log_dir / f"serve-{self.http_port}.out"
        env = {**os.environ, "PYTHONPATH": f"{WORKTREE}:{os.environ.get('PYTHONPATH', '')}"}
        self.started = time.monotonic()
        with open(self.stdout_path, "w") as out_f, open(self.stderr_path, "w") as err_f:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "vitrt.cli", "serve", str(out), "--http-port", str(self.http_port),
                 "--grpc-port", str(self.grpc_port), "--metrics-port", str(self.metrics_port), *args],
                stdout=out_f, stderr=err_f, env=env, start_new_session=True)
        self.tree: set[int] = set()

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc(self) -> str:
        return f"grpc://127.0.0.1:{self.grpc_port}"

    @property
    def metrics(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 90.0) -> float:
        """Seconds until the ready line was logged and /v2/health/ready answers 200."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"vitrt serve exited with {self.process.returncode}: {self.stderr()[-2000:]}")
            if "[vitrt] serving" in self.stderr() and http_status(f"{self.http}/v2/health/ready")[0] == 200:
                self.tree = descendants(self.process.pid)
                return time.monotonic() - self.started
            time.sleep(0.2)
        raise AssertionError(f"vitrt serve not ready after {timeout} s: {self.stderr()[-2000:]}")

    def stop(self, sig=signal.SIGTERM, timeout: float = 60.0, group: bool = False) -> int:
        """Send ``sig`` to the process (``group``: to its whole process group, as a terminal's Ctrl+C does); wait for
        the exit code (everything it started is killed if it does not exit in time)."""
        if self.process.poll() is None:
            self.tree |= descendants(self.process.pid)
            if group:
                os.killpg(self.process.pid, sig)
            else:
                self.process.send_signal(sig)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.returncode

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        for pid in self.tree:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)

    def orphans(self, wait: float = 10.0) -> set[int]:
        """Processes this server started that are still alive (given ``wait`` seconds to go)."""
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            left = {pid for pid in self.tree if alive(pid)}
            if not left:
                return set()
            time.sleep(0.2)
        return left

    def __enter__(self) -> "ServeProcess":
        return self

    def __exit__(self, *_) -> None:
        self.stop(timeout=45)
        if any(alive(pid) for pid in self.tree):
            self.kill()
