"""Progress on stderr: named steps with their duration, and bars for long loops — tqdm on a terminal (or in a
notebook), plain lines at most every half minute in a log file (a redirected tqdm fills a log with carriage
returns and, for nested bars, cursor movements)."""

from __future__ import annotations

import contextlib
import sys
import time


class Progress:
    def __init__(self, enabled: bool = True, stream=None):
        self.enabled = enabled
        self.stream = stream or sys.stderr

    def log(self, message: str) -> None:
        if self.enabled:
            print(f"[vitrt] {message}", file=self.stream, flush=True)

    @contextlib.contextmanager
    def step(self, message: str):
        """Announce ``message`` and, when the step finishes, how long it took."""
        self.log(f"{message} ...")
        start = time.perf_counter()
        yield
        self.log(f"{message}: done in {time.perf_counter() - start:.1f}s")

    def bar(self, total: int, desc: str):
        """A progress bar over ``total`` steps: ``update(k)``, ``n``/``refresh()``, ``set_postfix``, ``close()``,
        usable as a context manager (the subset of tqdm's interface vitrt uses)."""
        if self.enabled and not _interactive(self.stream):
            return LineBar(total, desc, self.stream)
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=f"[vitrt] {desc}", file=self.stream, disable=not self.enabled, leave=False,
                    dynamic_ncols=True)


class Renamed(Progress):
    """``progress``'s messages with a staging directory's path shown as the directory it becomes: a command that
    compiles into its own staging area (the demo) would otherwise announce paths that are gone when it ends."""

    def __init__(self, progress: Progress, staging, final):
        super().__init__(progress.enabled, progress.stream)
        self.staging, self.final = str(staging), str(final)

    def log(self, message: str) -> None:
        super().log(message.replace(self.staging, self.final))


def _interactive(stream) -> bool:
    if "ipykernel" in sys.modules:  # a notebook: tqdm.auto draws a widget there
        return True
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class LineBar:
    """Progress for a stream that is not a terminal: one line ``[vitrt] desc: n/total (elapsed, ETA)`` at most
    every ``interval_s``, and a closing line only for a loop that printed one (short loops stay silent: their
    step already says how long it took)."""

    def __init__(self, total: int, desc: str, stream, interval_s: float = 30.0):
        self.total, self.desc, self.stream, self.interval_s = total, desc, stream, interval_s
        self.n = 0
        self.postfix = ""
        self.start = self.last = time.monotonic()
        self.printed = False
        self.closed = False

    def update(self, k: int = 1) -> None:
        self.n += k
        self.refresh()

    def set_postfix(self, **values) -> None:
        self.postfix = ", ".join(f"{key}={value}" for key, value in values.items())

    def refresh(self) -> None:
        now = time.monotonic()
        if now - self.last >= self.interval_s:
            self.last = now
            self._line(f"{self.n}/{self.total} ({_clock(now - self.start)} elapsed{self._eta(now)})")

    def close(self) -> None:
        if not self.closed and self.printed:
            self._line(f"{self.n}/{self.total} in {_clock(time.monotonic() - self.start)}")
        self.closed = True

    def _eta(self, now: float) -> str:
        if not 0 < self.n < self.total:
            return ""
        return f", ETA {_clock((now - self.start) * (self.total - self.n) / self.n)}"

    def _line(self, text: str) -> None:
        suffix = f", {self.postfix}" if self.postfix else ""
        print(f"[vitrt] {self.desc}: {text}{suffix}", file=self.stream, flush=True)
        self.printed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes:02d}:{seconds:02d}"


QUIET = Progress(enabled=False)


def progress_for(config) -> Progress:
    """Progress on stderr unless the command's config says ``quiet``."""
    return Progress(enabled=not getattr(config, "quiet", False))
