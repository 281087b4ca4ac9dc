"""Progress in a log file: plain lines at most every interval, never tqdm's carriage returns or cursor codes."""

from __future__ import annotations

import io

from vitrt.compiler.progress import LineBar, Progress


def test_a_log_file_gets_plain_lines_with_eta_and_a_closing_line_only_after_one(monkeypatch):
    import time
    from types import SimpleNamespace

    import vitrt.compiler.progress as progress

    # a still clock: the lines below read 00:00 however long a loaded machine keeps this test off the CPU (on the
    # real clock, a pause of 1/3 s between the bar's start and its first update makes the ETA read 00:01)
    monkeypatch.setattr(progress, "time", SimpleNamespace(monotonic=lambda: 100.0, perf_counter=time.perf_counter))
    stream = io.StringIO()  # not a terminal
    with Progress(stream=stream).bar(3, "short loop") as bar:
        bar.update(3)
    assert stream.getvalue() == ""  # a short loop stays silent: its step says how long it took

    bar = LineBar(4, "rung 1 (2 epochs)", stream, interval_s=0.0)
    bar.update(1)
    bar.set_postfix(loss="0.123")
    bar.n = 3  # how the pruning search moves its bar
    bar.refresh()
    bar.close()
    bar.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3, lines
    assert lines[0].startswith("[vitrt] rung 1 (2 epochs): 1/4 (00:00 elapsed, ETA 00:00)")
    assert lines[1].startswith("[vitrt] rung 1 (2 epochs): 3/4 (") and lines[1].endswith(", loss=0.123")
    assert lines[2] == "[vitrt] rung 1 (2 epochs): 3/4 in 00:00, loss=0.123"  # closed once, where it stood
    assert "\r" not in stream.getvalue() and "\x1b" not in stream.getvalue()


def test_quiet_progress_prints_nothing_and_a_terminal_gets_tqdm():
    quiet = io.StringIO()
    with Progress(enabled=False, stream=quiet).bar(2, "x") as bar:
        bar.update(2)
    assert quiet.getvalue() == ""

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    with Progress(stream=terminal).bar(2, "drawn") as bar:
        bar.update(2)
    assert "[vitrt] drawn" in terminal.getvalue() and "\r" in terminal.getvalue()
