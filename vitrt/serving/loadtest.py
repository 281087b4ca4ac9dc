"""``vitrt loadtest``: a bounded, loopback-only load generator for a served model, on tritonclient.

For each concurrency level, that many threads (one client each) send requests back to back until the level's
duration or its request budget runs out, whichever comes first; every request has a timeout and every thread
is joined with a deadline, so a run always ends by itself. Reported per level: requests sent, answered, errors
(with the first message), lost (sent but never answered), throughput (images/s answered), latency p50 / p90 /
p99 as the client saw it, top-1 with labelled data (``--data digits``), and from the server's Prometheus
metrics the requests Triton counted and the mean batch it executed (dynamic batching at work).

``--versus OUT`` runs the compiled OUT in this process through its own runner at ``--versus-batch`` between the
levels (before each level and after the last; the server idles meanwhile): each level's throughput is divided by
the mean of the in-process windows around it, so both sides share the machine's state of the moment. The
in-process windows are timed by the shared timing loop (:mod:`vitrt.compiler.timing`).
"""

from __future__ import annotations

import math
import re
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vitrt.compiler.errors import VitrtError
from vitrt.compiler.options import option
from vitrt.compiler.output import check_output_file
from vitrt.serving.client import RemoteModel, parse_endpoint

MAX_DURATION_S = 3600.0
MAX_CONCURRENCY = 256
JOIN_GRACE_S = 5.0


@dataclass(frozen=True)
class LoadtestConfig:
    url: str = option(None, "the server: http://127.0.0.1:8000 or grpc://127.0.0.1:8001 (loopback only)",
                      positional=True, metavar="URL")
    model: str | None = option(None, "the served model's name", metavar="NAME")
    concurrency: str = option("1,4,16", "comma-separated concurrency levels (requests in flight)", metavar="C1,C2,..")
    duration: float = option(10.0, "seconds per concurrency level", type=float, metavar="S")
    max_requests: int = option(100_000, "request budget per concurrency level", type=int, metavar="N")
    batch: int | None = option(None, "images per request (default 1; a static-shape model: its batch)", type=int,
                               metavar="B")
    data: str = option("synthetic", "request images: digits (the 450 labelled test images: top-1 through the "
                       "server) or synthetic (random)", choices=("digits", "synthetic"))
    timeout: float = option(10.0, "seconds a request may take before it counts as an error", type=float, metavar="S")
    metrics_url: str | None = option(None, "Triton's metrics (default http://HOST:8002/metrics beside a server on "
                                     "the default ports 8000/8001, else none; 'none' to skip)", metavar="URL")
    versus: Path | None = option(None, "a compiled OUT timed in this process between the levels, side by side",
                                 type=Path, metavar="OUT")
    versus_batch: int = option(8, "batch of the in-process runs", type=int, metavar="B")
    versus_seconds: float | None = option(None, "seconds per in-process window (default: min(duration, 10))",
                                          type=float, metavar="S")
    json: Path | None = option(None, "also write the results as JSON", writes="file", type=Path, metavar="PATH")
    quiet: bool = option(False, "no progress output")


def parse_levels(text: str) -> list[int]:
    try:
        levels = [int(part) for part in str(text).split(",")]
    except ValueError:
        levels = []
    if not levels or any(not 1 <= c <= MAX_CONCURRENCY for c in levels):
        raise VitrtError(f"--concurrency must be comma-separated integers in 1..{MAX_CONCURRENCY}, got '{text}'")
    return levels


def check(config: LoadtestConfig) -> None:
    if not config.url or not config.model:
        raise VitrtError("pass the server URL and --model NAME: vitrt loadtest http://127.0.0.1:8000 --model NAME")
    parse_endpoint(config.url)
    parse_levels(config.concurrency)
    if not 0 < config.duration <= MAX_DURATION_S:
        raise VitrtError(f"--duration must be in (0, {MAX_DURATION_S:.0f}] seconds, got {config.duration}")
    if config.max_requests < 1:
        raise VitrtError(f"--max-requests must be >= 1, got {config.max_requests}")
    if not (math.isfinite(config.timeout) and config.timeout > 0):
        raise VitrtError(f"--timeout must be a finite number of seconds > 0, got {config.timeout}")
    if config.versus_seconds is not None and not (math.isfinite(config.versus_seconds) and config.versus_seconds > 0):
        raise VitrtError(f"--versus-seconds must be a finite number of seconds > 0, got {config.versus_seconds}")
    if config.json is not None:
        check_output_file(config.json, "--json")
    if config.batch is not None and config.batch < 1:
        raise VitrtError(f"--batch must be >= 1, got {config.batch}")
    if config.versus_batch < 1:
        raise VitrtError(f"--versus-batch must be >= 1, got {config.versus_batch}")
    if config.versus is None and config.versus_batch != LoadtestConfig.versus_batch:
        raise VitrtError("--versus-batch is the batch of the --versus runs: add --versus OUT or drop --versus-batch")


# --- the server's own counts -------------------------------------------------------------------------
_METRIC = re.compile(r'^(nv_inference_(?:request_success|request_failure|count|exec_count))\{([^}]*)\}\s+(\S+)$')


def read_metrics(url: str | None, model: str) -> dict[str, float] | None:
    """Triton's request / inference / execution counters for ``model``; None when no metrics endpoint answers."""
    if url is None:
        return None
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return None
    counts: dict[str, float] = {}
    for line in text.splitlines():
        match = _METRIC.match(line)
        if match and f'model="{model}"' in match.group(2):
            counts[match.group(1)] = counts.get(match.group(1), 0.0) + float(match.group(3))
    return counts


DEFAULT_PORTS = {"http": "8000", "grpc": "8001"}  # vitrt serve's (and Triton's) defaults; metrics then on 8002


def metrics_url_for(config: LoadtestConfig) -> str | None:
    """Triton's metrics URL: --metrics-url, else port 8002 beside a server on the default ports; None when unknown
    (a server on other ports: guessing 8002 could read another server's counters)."""
    if config.metrics_url == "none":
        return None
    endpoint = parse_endpoint(config.url)
    host, port = endpoint.address.rsplit(":", 1)
    if config.metrics_url is None and port != DEFAULT_PORTS.get(endpoint.protocol):
        return None
    url = config.metrics_url or f"http://{host}:8002/metrics"
    parse_endpoint(url.rsplit("/metrics", 1)[0])  # loopback only, like the server URL
    return url


# --- one concurrency level -----------------------------------------------------------------------------
@dataclass
class LevelResult:
    concurrency: int
    seconds: float = 0.0
    sent: int = 0
    ok: int = 0
    errors: int = 0  # requests sent and answered with an error
    unconnected: int = 0  # client threads that could not connect (no request sent; e.g. the server stopping)
    correct: int = 0
    labelled: int = 0
    images: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    first_error: str | None = None
    server: dict | None = None  # deltas of Triton's counters over the level

    @property
    def lost(self) -> int:
        return self.sent - self.ok - self.errors

    def summary(self, batch: int) -> dict:
        lat = np.asarray(self.latencies_ms) if self.latencies_ms else np.asarray([np.nan])
        out = {"concurrency": self.concurrency, "seconds": round(self.seconds, 2), "requests": self.sent,
               "ok": self.ok, "errors": self.errors, "lost": self.lost, "unconnected": self.unconnected,
               "request_batch": batch,
               "images_per_s": round(self.images / self.seconds, 1) if self.seconds else 0.0,
               "p50_ms": round(float(np.percentile(lat, 50)), 3), "p90_ms": round(float(np.percentile(lat, 90)), 3),
               "p99_ms": round(float(np.percentile(lat, 99)), 3), "first_error": self.first_error}
        if self.labelled:
            out["top1"] = round(self.correct / self.labelled, 4)
        if self.server is not None:
            counted = self.server.get("nv_inference_request_success", 0) + self.server.get(
                "nv_inference_request_failure", 0)
            out["server_requests"] = int(counted)
            execs = self.server.get("nv_inference_exec_count", 0)
            out["server_mean_batch"] = round(self.server.get("nv_inference_count", 0) / execs, 2) if execs else None
        return out


class _Budget:
    """A shared, thread-safe request budget and image cursor."""

    def __init__(self, requests: int, images: int, batch: int):
        self.left, self.cursor, self.count, self.batch = requests, 0, images, batch
        self.lock = threading.Lock()

    def take(self) -> int | None:
        """The first image index of the next request, or None when the budget is spent."""
        with self.lock:
            if self.left <= 0:
                return None
            self.left -= 1
            start = self.cursor
            self.cursor = (self.cursor + self.batch) % self.count
            return start


def run_level(connect, concurrency: int, images: np.ndarray, labels: np.ndarray | None, batch: int,
              duration: float, max_requests: int, timeout: float) -> LevelResult:
    """``concurrency`` threads send requests of ``batch`` images until ``duration`` or ``max_requests``.

    ``connect()`` makes a RemoteModel; each thread makes its own, in that thread (tritonclient's HTTP client is
    bound to the thread that created it), before the clock starts.
    """
    from tritonclient.utils import InferenceServerException

    result = LevelResult(concurrency)
    budget = _Budget(max_requests, len(images), batch)
    lock = threading.Lock()
    deadline = [0.0]  # set when the last thread is connected, before any is released
    ready = threading.Barrier(concurrency + 1, timeout=timeout + JOIN_GRACE_S,
                              action=lambda: deadline.__setitem__(0, time.monotonic() + duration))

    def fail(exc: BaseException, connecting: bool = False) -> None:
        with lock:
            if connecting:  # not a request: counting it as an error would make ok + errors exceed what was sent
                result.unconnected += 1
            else:
                result.errors += 1
            result.first_error = result.first_error or _message(exc)

    def send(client: RemoteModel, start: int) -> None:
        index = np.arange(start, start + batch) % len(images)
        with lock:
            result.sent += 1
        t0 = time.perf_counter()
        try:
            logits = client.infer(images[index])
        except (InferenceServerException, OSError) as exc:
            fail(exc)
            return
        ms = (time.perf_counter() - t0) * 1000.0
        with lock:
            result.ok += 1
            result.images += batch
            result.latencies_ms.append(ms)
            if labels is not None:
                result.correct += int((np.asarray(logits).argmax(axis=1) == labels[index]).sum())
                result.labelled += batch

    def worker() -> None:
        try:
            client = connect()
        except VitrtError as exc:
            fail(exc, connecting=True)
            client = None
        try:
            ready.wait()
        except threading.BrokenBarrierError:
            return
        if client is None:
            return
        try:
            while time.monotonic() < deadline[0] and (start := budget.take()) is not None:
                send(client, start)
        finally:
            client.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    try:
        ready.wait()  # every client connected: the clock starts now
    except threading.BrokenBarrierError:
        deadline[0] = time.monotonic()
    start = deadline[0] - duration
    for thread in threads:  # every request has a timeout: threads end by deadline + timeout
        thread.join(timeout=max(0.0, deadline[0] + timeout + JOIN_GRACE_S - time.monotonic()))
    result.seconds = time.monotonic() - start
    return result


def _message(exc: Exception) -> str:
    text = exc.message() if callable(getattr(exc, "message", None)) else str(exc)
    return " ".join(str(text).split())[:300]


# --- the whole run -------------------------------------------------------------------------------------
def load_images(config: LoadtestConfig, input_dims: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray | None]:
    size = input_dims[-1]
    if config.data == "digits":
        from vitrt.calib.digits import digits_split

        _, test = digits_split(size)
        return test.images.numpy(), test.labels.numpy()
    rng = np.random.default_rng(0)
    return rng.standard_normal((256, *input_dims[-3:]), dtype=np.float32), None


def inprocess_images_per_s(call, images_per_call: int, seconds: float) -> float:
    """Images/s of ``call`` over a window of ``seconds``, through the shared timing loop."""
    from vitrt.compiler.timing import Timing, samples_ms

    samples = samples_ms(call, Timing(warmup=2, iterations=1, min_seconds=seconds))
    return images_per_call * len(samples) * 1000.0 / sum(samples)


def loadtest(config: LoadtestConfig, progress=None) -> dict:
    """Run every level (and the in-process windows with ``--versus``); returns the JSON-ready result."""
    check(config)
    levels = parse_levels(config.concurrency)
    log = progress.log if progress is not None else (lambda _m: None)
    probe = RemoteModel(config.url, config.model, config.timeout)
    batch = _request_batch(config, probe)
    if config.data == "digits" and probe.output_dims[-1] != 10:
        raise VitrtError(f"--data digits needs a 10-class model; '{config.model}' has {probe.output_dims[-1]} "
                         "outputs")
    images, labels = load_images(config, probe.input_dims)
    probe.close()
    versus = _versus(config, images) if config.versus else None
    metrics_url = metrics_url_for(config)
    if metrics_url is None and config.metrics_url != "none":
        log("server-side counts: n/a (the server is not on the default ports; pass --metrics-url to read them)")
    windows: list[float] = []
    rows = []
    for concurrency in levels:
        if versus is not None:
            log(f"in-process {config.versus}: batch {config.versus_batch} for {versus['seconds']:.0f} s")
            windows.append(inprocess_images_per_s(versus["call"], config.versus_batch, versus["seconds"]))
        log(f"concurrency {concurrency}: {config.duration:.0f} s or {config.max_requests} requests")
        before = read_metrics(metrics_url, config.model)
        result = run_level(lambda: RemoteModel(config.url, config.model, config.timeout), concurrency, images, labels,
                           batch, config.duration, config.max_requests, config.timeout)
        after = read_metrics(metrics_url, config.model)
        if before is not None and after is not None:
            result.server = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
        rows.append(result.summary(batch))
    out = {"url": config.url, "model": config.model, "protocol": parse_endpoint(config.url).protocol,
           "data": config.data, "request_batch": batch, "duration_s": config.duration,
           "max_requests": config.max_requests, "levels": rows}
    if versus is not None:
        log(f"in-process {config.versus}: batch {config.versus_batch} for {versus['seconds']:.0f} s")
        windows.append(inprocess_images_per_s(versus["call"], config.versus_batch, versus["seconds"]))
        for row, ratio in zip(rows, versus_ratios([row["images_per_s"] for row in rows], windows)):
            row["versus_in_process"] = ratio
        out["in_process"] = {"out": str(config.versus), "backend": versus["backend"], "batch": config.versus_batch,
                             "seconds_per_window": versus["seconds"],
                             "images_per_s_windows": [round(w, 1) for w in windows],
                             "images_per_s": round(float(np.median(windows)), 1)}
    return out


def versus_ratios(images_per_s: list[float], windows: list[float]) -> list[float]:
    """Each level's throughput over the mean of the in-process windows around it: ``windows`` holds one window
    before every level and one after the last (one more than the levels)."""
    return [round(rate / ((windows[i] + windows[i + 1]) / 2), 3) for i, rate in enumerate(images_per_s)]


def _request_batch(config: LoadtestConfig, model: RemoteModel) -> int:
    if model.request_batch is not None:
        if config.batch not in (None, model.request_batch):
            raise VitrtError(f"'{config.model}' takes requests of exactly batch {model.request_batch} (a static-shape "
                             f"engine); drop --batch or pass --batch {model.request_batch}")
        return model.request_batch
    batch = config.batch or 1
    if batch > model.max_batch_size:
        raise VitrtError(f"--batch {batch} exceeds the model's max_batch_size {model.max_batch_size}")
    return batch


def _versus(config: LoadtestConfig, images: np.ndarray) -> dict:
    from vitrt.compiler.backends import BuildOptions, get_backend
    from vitrt.compiler.timing import synced
    from vitrt.serving.artifact import open_artifact

    artifact = open_artifact(config.versus)
    if artifact.static_batch not in (None, config.versus_batch):
        raise VitrtError(f"--versus '{config.versus}' was compiled for batch {artifact.static_batch}; pass "
                         f"--versus-batch {artifact.static_batch}")
    runner = get_backend(artifact.backend).load(artifact.path, BuildOptions())
    chunk = images[np.arange(config.versus_batch) % len(images)]
    seconds = config.versus_seconds if config.versus_seconds is not None else min(config.duration, 10.0)
    return {"call": synced(runner, chunk), "backend": artifact.backend, "seconds": seconds}


def failure_line(result: dict) -> str | None:
    """Why ``result`` is not a measurement: the first level where failed and lost requests outnumber the answered
    ones (the figures then time refusals, not the model); None when every level mostly succeeded."""
    for row in result["levels"]:
        failed = row["errors"] + row["lost"]
        if failed > row["ok"]:
            return (f"at concurrency {row['concurrency']} {failed} of {row['requests']} requests failed (first: "
                    f"{row['first_error']}); the figures above do not measure the model")
    return None


def format_table(result: dict) -> str:
    has_top1 = any("top1" in r for r in result["levels"])
    has_versus = "in_process" in result
    head = ["concurrency", "requests", "ok", "errors", "lost", "server-counted", "images/s", "p50 ms", "p90 ms",
            "p99 ms", "server mean batch"] + (["top-1"] if has_top1 else []) + (
        [f"vs in-process b{result['in_process']['batch']}"] if has_versus else [])
    lines = [f"{result['model']} at {result['url']} ({result['protocol']}): requests of {result['request_batch']} "
             f"image(s), {result['data']} data, {result['duration_s']:g} s or {result['max_requests']} requests per "
             "level", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result["levels"]:
        cells = [r["concurrency"], r["requests"], r["ok"], r["errors"], r["lost"], r.get("server_requests", "n/a"),
                 f"{r['images_per_s']:.1f}", f"{r['p50_ms']:.2f}", f"{r['p90_ms']:.2f}", f"{r['p99_ms']:.2f}",
                 r.get("server_mean_batch") or "n/a"]
        cells += [f"{r['top1'] * 100:.2f} %" if "top1" in r else "n/a"] if has_top1 else []
        cells += [f"{r['versus_in_process']:.2f}x"] if has_versus else []
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    if has_versus:
        v = result["in_process"]
        lines.append(f"\nin-process {v['backend']} runner of {v['out']} at batch {v['batch']}: "
                     f"{v['images_per_s']:.1f} images/s (median of windows {v['images_per_s_windows']}, "
                     f"{v['seconds_per_window']:g} s each, before every level and after the last); vs in-process: a "
                     "level's images/s over the mean of the two windows around it, not over this median")
    if has_top1:
        lines.append("\ntop-1: the fraction of answered images classified as labelled, over every answer of the "
                     "level (the labelled images are sent in a cycle, so an image answered twice counts twice)")
    errors = [r for r in result["levels"] if r["first_error"]]
    for r in errors:
        lines.append(f"\nconcurrency {r['concurrency']}: first error: {r['first_error']}")
    return "\n".join(lines)
