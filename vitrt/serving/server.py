"""``vitrt serve``: a compiled OUT behind a real Triton Inference Server, on 127.0.0.1 only.

PyTriton starts the Triton server it bundles (2.51, Python backend) and forwards every batch Triton forms to a
callable in this process; that callable runs vitrt's own runner for the artifact's backend
(``get_backend(manifest backend).load(artifact)``), so what is served is exactly the compiled artifact — also a
``--backend torch`` OUT, on the device it was compiled for (``vitrt export triton`` refuses that one: Triton has no
native backend for vitrt's torch runner). Triton
itself does the rest: HTTP and gRPC endpoints, request validation against the model configuration (shape, data
type, batch size — wrong requests get a 4xx naming the expected input), dynamic batching, the health endpoints
(``/v2/health/live``, ``/v2/health/ready``, ``/v2/models/<name>/ready``) and Prometheus metrics
(``http://127.0.0.1:<metrics-port>/metrics``). The model's inputs, outputs and batching are those
``vitrt export triton`` writes (:func:`vitrt.serving.repository.batching_for`), so clients see the same model.

Lifecycle: one log line when ready, one when stopped. SIGINT or SIGTERM stops the server gracefully: the model is
unloaded, so Triton refuses new requests for it at once and finishes those it holds, queued or executing (up to
``--drain-timeout`` seconds), while this process keeps executing them; then the server exits and the command
returns 0. The server runs in its own process group, so a Ctrl+C in the terminal reaches this process only,
and it dies with this process (PDEATHSIG): no server outlives ``vitrt serve``.

Why LD_LIBRARY_PATH: the Python backend stub links ``libpython3.X.so``. The dynamic loader finds the system's
copy first, whose standard library and site-packages differ from this interpreter's (a venv or pyenv Python):
the model then fails to load (``No module named 'numpy'``, or ``'_thread.RLock' object has no attribute
'_recursion_count'`` when the patch releases differ). The running interpreter's own library directory goes first.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vitrt.compiler.errors import VitrtError
from vitrt.compiler.options import option, section
from vitrt.compiler.output import check_output_file
from vitrt.serving.artifact import CompiledArtifact, open_artifact
from vitrt.serving.repository import SERVE_HINT, Batching, BatchingOptions, batching_for, check_model_name

LOOPBACK = "127.0.0.1"
READY_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class ServeConfig:
    out: Path = option(None, "the compiled OUT directory (vitrt compile MODEL -o OUT)", positional=True, type=Path,
                       metavar="OUT")
    name: str | None = option(None, "model name on the server (default: the manifest's model name)", metavar="N")
    http_port: int = option(8000, "HTTP port on 127.0.0.1 (default 8000)", type=int, metavar="PORT")
    grpc_port: int = option(8001, "gRPC port on 127.0.0.1 (default 8001)", type=int, metavar="PORT")
    metrics_port: int = option(8002, "Prometheus metrics port on 127.0.0.1 (default 8002)", type=int, metavar="PORT")
    batching: BatchingOptions = section(BatchingOptions)
    threads: int | None = option(None, "intra-op threads: ONNX Runtime's per instance; torch's process-wide", type=int,
                                 metavar="N")
    drain_timeout: int = option(30, "seconds a stop waits for the requests in flight (default 30)", type=int,
                                metavar="S")
    server_log: Path | None = option(None, "write Triton's own log here (default: a temporary file, shown on failure)",
                                     writes="file", type=Path, metavar="PATH")


@dataclass
class ServeStats:
    """Counters of what this process executed (updated by the instances' threads)."""

    requests: int = 0
    batches: int = 0
    images: int = 0
    after_stop: int = 0  # requests executed after the stop signal: the drained ones
    stopping: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, requests: int, images: int) -> None:
        with self.lock:
            self.requests += requests
            self.batches += 1
            self.images += images
            if self.stopping:
                self.after_stop += requests


class InferenceHandler:
    """One model instance: the batch Triton formed -> the runner -> one response per request.

    Triton has already checked every request against the configuration (input name, data type, dims, batch),
    so the arrays here have the engine's shape; a dynamic batch runs as one runner call.
    """

    def __init__(self, runner, artifact: CompiledArtifact, batching: Batching, stats: ServeStats):
        self.runner, self.batching, self.stats = runner, batching, stats
        self.input, self.output = artifact.inputs[0], artifact.outputs[0]

    def __call__(self, requests):
        arrays = [np.asarray(request[self.input.name]) for request in requests]
        if self.batching.dynamic:
            logits = self.runner.infer(np.concatenate(arrays))
            bounds = np.cumsum([len(a) for a in arrays])[:-1]
            results = np.split(logits, bounds)
        else:  # a static engine: each request is exactly its batch
            results = [self.runner.infer(a) for a in arrays]
        self.stats.record(len(requests), sum(len(a) for a in arrays))
        return [{self.output.name: np.ascontiguousarray(r, dtype=self.output.dtype)} for r in results]


class StopSignal:
    """SIGINT / SIGTERM set an event instead of killing the process (restored on exit)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.event = threading.Event()
        self.received: str | None = None

    def __enter__(self) -> "StopSignal":
        self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def _handle(self, signum, _frame) -> None:
        self.received = self.received or signal.Signals(signum).name
        self.event.set()

    def __exit__(self, *_) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def server_in_own_process_group() -> None:
    """Give the Triton server process its own process group (PyTriton starts it through ``sh``; this turns on
    ``sh``'s ``new_group`` default in this process). A Ctrl+C in the terminal, or a kill sent to the whole group,
    then reaches only this process, which drains the model before it stops the server; signalled directly, Triton
    would begin its own shutdown, which keeps accepting requests until those in flight are done. The server still
    dies with this process (PyTriton sets PDEATHSIG)."""
    import sh

    sh.Command._call_args["new_group"] = True


def use_interpreter_libpython() -> None:
    """Put this interpreter's libpython directory first for the server and its Python backend stubs (module doc)."""
    libdir = sysconfig.get_config_var("LIBDIR")
    paths = [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(":") if p and p != libdir]
    if libdir:
        os.environ["LD_LIBRARY_PATH"] = ":".join([libdir, *paths])


def check_ports(config: ServeConfig) -> None:
    ports = {"--http-port": config.http_port, "--grpc-port": config.grpc_port, "--metrics-port": config.metrics_port}
    if len(set(ports.values())) != len(ports):
        raise VitrtError(f"--http-port, --grpc-port and --metrics-port must differ, got {sorted(ports.values())}")
    for flag, port in ports.items():
        if not 1 <= port <= 65535:
            raise VitrtError(f"{flag} must be a port number 1..65535, got {port}")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((LOOPBACK, port))
            except OSError:
                raise VitrtError(f"port {port} on {LOOPBACK} is in use; choose another {flag}") from None


def http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def wait_ready(http_port: int, name: str, deadline: float, alive) -> None:
    base = f"http://{LOOPBACK}:{http_port}/v2"
    while time.monotonic() < deadline and alive():
        if http_ok(f"{base}/health/ready") and http_ok(f"{base}/models/{name}/ready"):
            return
        time.sleep(0.1)
    raise VitrtError(f"the Triton server did not become ready within {READY_TIMEOUT_S:.0f} s")


def drain(http_port: int, name: str, token: str | None, timeout: float) -> str | None:
    """Unload the model: Triton refuses new requests for it at once and unloads it once the requests it holds
    (queued or executing) are done. None when that happened within ``timeout`` seconds, else what went wrong.

    Stopping the server alone would not do: Triton keeps accepting requests while it waits for those in flight,
    so under steady load the wait only ends at its exit timeout.
    """
    from pytriton.triton import TRITON_ACCESS_HEADER

    base = f"http://{LOOPBACK}:{http_port}/v2/repository"
    headers = {"Content-Type": "application/json", **({TRITON_ACCESS_HEADER: token} if token else {})}

    def post(url: str) -> bytes:
        request = urllib.request.Request(url, data=b"{}", headers=headers, method="POST")
        with urllib.request.urlopen(request, timeout=max(timeout, 1.0)) as response:
            return response.read()

    deadline = time.monotonic() + timeout
    try:
        post(f"{base}/models/{name}/unload")
        while time.monotonic() < deadline:
            states = {m.get("name"): m.get("state") for m in json.loads(post(f"{base}/index"))}
            if states.get(name) not in ("READY", "UNLOADING"):
                return None
            time.sleep(0.05)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return f"the model could not be unloaded ({getattr(exc, 'reason', None) or exc})"
    return f"requests still in flight after {timeout:g} s"


def log_tail(path: Path, lines: int = 3) -> str:
    """The last error lines of Triton's log (for one-line failure messages)."""
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "no server log"
    errors = [line.split("\\n")[0][:200] for line in text if line.startswith("E")]
    return " | ".join((errors or text)[-lines:]) or "empty server log"


def serve(config: ServeConfig, log=print) -> ServeStats:
    """Serve ``config.out`` until SIGINT / SIGTERM; returns what was executed. Bad input: one-line VitrtError."""
    start = time.monotonic()
    if config.out is None:
        raise VitrtError("pass the compiled OUT: vitrt serve OUT")
    artifact = open_artifact(config.out)
    artifact.check_single_io()
    if config.name is not None and not config.name:
        raise VitrtError("--name is empty: pass a model name, or leave --name out for the manifest's")
    name = check_model_name(config.name or artifact.default_name())
    batching = batching_for(artifact, config.batching)
    if config.drain_timeout < 0:
        raise VitrtError(f"--drain-timeout must be >= 0, got {config.drain_timeout}")
    if config.threads is not None and config.threads < 1:
        raise VitrtError(f"--threads must be >= 1, got {config.threads}")
    if config.server_log is not None:
        check_output_file(config.server_log, "--server-log")
    check_ports(config)
    try:
        from pytriton.exceptions import PyTritonError
        from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
        from pytriton.triton import Triton, TritonConfig
        from tritonclient.utils import InferenceServerException
    except ImportError:
        raise VitrtError(f"vitrt serve needs PyTriton: {SERVE_HINT}") from None
    from vitrt.compiler.backends import BuildOptions, get_backend

    backend = get_backend(artifact.backend)
    runners = [backend.load(artifact.path, BuildOptions(threads=config.threads)) for _ in range(batching.instances)]
    stats = ServeStats()
    use_interpreter_libpython()
    server_in_own_process_group()

    def tensors(items):
        return [Tensor(name=t.name, dtype=np.dtype(t.dtype).type,
                       shape=t.shape[1:] if batching.dynamic else t.shape) for t in items]

    model_config = ModelConfig(batching=batching.dynamic, max_batch_size=batching.max_batch_size,
                               batcher=DynamicBatcher(max_queue_delay_microseconds=batching.queue_delay_us,
                                                      preferred_batch_size=list(batching.preferred) or None))
    with tempfile.TemporaryDirectory(prefix="vitrt-serve-") as tmp, StopSignal() as stop:
        server_log = Path(config.server_log or Path(tmp) / "tritonserver.log").absolute()
        triton = Triton(config=TritonConfig(
            http_address=LOOPBACK, http_port=config.http_port, grpc_address=LOOPBACK, grpc_port=config.grpc_port,
            metrics_address=LOOPBACK, metrics_port=config.metrics_port, strict_readiness=True,
            exit_timeout_secs=config.drain_timeout, log_file=server_log), workspace=Path(tmp) / "workspace")
        try:
            triton.bind(name, [InferenceHandler(r, artifact, batching, stats) for r in runners],
                        inputs=tensors(artifact.inputs), outputs=tensors(artifact.outputs), config=model_config,
                        strict=True)
            triton.run()
            wait_ready(config.http_port, name, start + READY_TIMEOUT_S, triton.is_alive)
            log(f"[vitrt] serving {name} ({artifact.backend}: {artifact.path}; {describe(batching, artifact)}) on "
                f"http://{LOOPBACK}:{config.http_port} grpc://{LOOPBACK}:{config.grpc_port} metrics "
                f"http://{LOOPBACK}:{config.metrics_port}/metrics; ready in {time.monotonic() - start:.1f} s "
                f"(pid {os.getpid()}; SIGINT/SIGTERM to stop)")
            while not stop.event.wait(0.25):
                if not triton.is_alive():
                    raise VitrtError(f"the Triton server stopped unexpectedly: {log_tail(server_log)}")
            stats.stopping = True
            drain_problem = drain(config.http_port, name, triton.get_access_token(), config.drain_timeout)
        except (PyTritonError, InferenceServerException) as exc:  # a model that fails to load: the latter
            text = exc.message() if callable(getattr(exc, "message", None)) else getattr(exc, "message", str(exc))
            raise VitrtError(f"Triton could not serve '{config.out}': {str(text).strip().splitlines()[0]}") from None
        except TimeoutError:
            raise VitrtError(f"the Triton server did not start: {log_tail(server_log)}") from None
        finally:
            triton.stop()  # the server (SIGINT, exit timeout = drain timeout), then the proxies to this process
            deadline = time.monotonic() + config.drain_timeout + 10
            while triton.is_alive() and time.monotonic() < deadline:  # a stop another thread began
                time.sleep(0.1)
    log(f"[vitrt] stopped {name} on {stop.received}: {stats.requests} requests in {stats.batches} batches "
        f"({stats.images} images), {stats.after_stop} finished after the signal"
        f"{f' (drain: {drain_problem})' if drain_problem else ''}; up {time.monotonic() - start:.1f} s")
    return stats


def describe(batching: Batching, artifact: CompiledArtifact) -> str:
    if not batching.dynamic:
        return f"static batch {artifact.static_batch}, max_batch_size 0"
    preferred = f", preferred {list(batching.preferred)}" if batching.preferred else ""
    return (f"dynamic batching up to {batching.max_batch_size}, queue delay {batching.queue_delay_us} us{preferred}, "
            f"{batching.instances} instance(s)")
