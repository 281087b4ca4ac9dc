"""Progress on stderr: named steps with their duration, and tqdm bars for long loops."""

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
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=f"[vitrt] {desc}", file=self.stream, disable=not self.enabled, leave=False,
                    dynamic_ncols=True)


QUIET = Progress(enabled=False)


def progress_for(config) -> Progress:
    """Progress on stderr unless the command's config says ``quiet``."""
    return Progress(enabled=not getattr(config, "quiet", False))
