"""The README's examples copy-paste in order on a fresh clone.

Statically (default run): every output directory is used once (unless the line says --force), and every file or
directory a line reads exists in the repository or is written by an earlier line. Dynamically (``-m slow``): every
line runs, in order, in one scratch directory with the repository's files, and none fails — lines marked
``# needs TensorRT`` must end with the one-line install hint where TensorRT is missing, ``vitrt serve`` runs in the
background for the lines after it.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"

# Flags whose value a command writes; every other path-like value is read.
OUTPUT_FLAGS = {"-o", "--out", "--json", "--json-out", "--timing-cache", "--save", "--record"}
# Values that name a data source or a URL, not a file.
NOT_PATHS = re.compile(r"^(digits|synthetic|synth:.*|https?://.*|grpc://.*|[\d.,:]+|\d+/\d+)$")  # 0/2: a --shard
PLACEHOLDER = re.compile(r"^[A-Z][A-Z_]+$")  # PATH, OUT, LUT: not copy-pasteable
NEEDS_TRT = "# needs TensorRT"
NEEDS_GPU = "# needs a CUDA GPU"


@dataclass(frozen=True)
class Example:
    line: int  # 1-based line in README.md
    text: str  # the command as written, comment removed
    comment: str

    @property
    def argv(self) -> list[str]:
        return shlex.split(self.text)

    @property
    def runs_here(self) -> bool:
        """pip set-up lines run in the environment the test already has: only a vitrt command after them runs."""
        return not self.text.startswith("pip ") or " && vitrt " in self.text

    @property
    def command(self) -> str:
        """What runs: the vitrt part of a "pip install ... && vitrt ..." line, else the line."""
        return "vitrt " + self.text.split(" && vitrt ", 1)[1] if self.text.startswith("pip ") else self.text


def examples() -> list[Example]:
    found, inside = [], False
    for number, raw in enumerate(README.read_text().splitlines(), 1):
        if raw.startswith("```"):
            inside = raw.strip() == "```bash"
            continue
        if not inside or not raw.strip():
            continue
        text, _, comment = raw.partition("  #")
        found.append(Example(number, text.strip(), ("#" + comment).strip() if comment else ""))
    return found


def written_and_read(example: Example) -> tuple[list[str], list[str]]:
    """(paths the command writes, paths it reads), from its flags and positional arguments."""
    argv = example.argv
    if argv[0] == "python":  # a Python one-liner: the quoted file names it saves or compiles into
        return re.findall(r"'([\w./-]+\.pt|out/[\w./-]+)'", example.text), []
    if argv[0] != "vitrt":
        return [], []
    written, read = [], []
    for previous, token in zip(argv, argv[1:]):
        if token.startswith("-") or NOT_PATHS.match(token) or previous in ("--model", "--name"):
            continue
        if PLACEHOLDER.match(token):
            read.append(token)  # never written: a placeholder the reader would have to replace
            continue
        if previous in OUTPUT_FLAGS:
            written.append(token)
        elif "/" in token or re.search(r"\.(pt|json|onnx|cache|plan)$", token):
            read.append(token)
    if "--shard" in argv[:-1] and argv[1:3] == ["lut", "build"]:  # a shard writes LUT.partK-of-N.json
        from vitrt.benchmarks.lut_build import parse_shard, shard_path

        written = [str(shard_path(path, parse_shard(argv[argv.index("--shard") + 1]))) for path in written]
    return written, read


def test_the_checker_sees_reads_writes_and_placeholders():
    assert written_and_read(Example(1, "vitrt compile m -o out/a --lut lut.json --sparse-data PATH --data digits",
                                    "")) == (["out/a"], ["lut.json", "PATH"])
    assert written_and_read(Example(2, "vitrt export triton out/a -o repo --model m --name n", "")) == (["repo"],
                                                                                                      ["out/a"])


def test_readme_examples_copy_paste_in_order():
    made: dict[str, int] = {}
    problems = []
    for example in examples():
        written, read = written_and_read(example)
        for path in read:
            covered = not PLACEHOLDER.match(path) and (REPO / path).exists() or any(path == m or path.startswith(m.rstrip("/") + "/") for m in made)
            if not covered:
                problems.append(f"README.md:{example.line} reads '{path}', which no earlier line writes")
        for path in written:
            if path in made and "--force" not in example.argv and not example.text.startswith("vitrt lut build"):
                problems.append(f"README.md:{example.line} writes '{path}' again (line {made[path]}): use a new "
                                "name or --force")
            made.setdefault(path, example.line)
    assert problems == []


# --- running them ------------------------------------------------------------------------------------------------

def _tensorrt_available() -> bool:
    from vitrt.compiler.backends.trt import tensorrt_available

    return tensorrt_available()


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _run(example: Example, cwd: Path, env: dict, log) -> None:
    command = example.command
    if command.startswith("python "):
        command = command.replace("python ", f"{sys.executable} ", 1)
    start = time.perf_counter()
    result = subprocess.run(command, shell=True, cwd=cwd, env=env, capture_output=True, text=True, timeout=3600,
                            check=False)
    seconds = time.perf_counter() - start
    log.write(f"{seconds:8.1f} s  exit {result.returncode}  README.md:{example.line}  {command}\n")
    log.flush()
    if NEEDS_TRT in example.comment and not _tensorrt_available():
        assert result.returncode == 2 and "TensorRT is not installed" in result.stderr, (example, result.stderr)
        return
    if NEEDS_GPU in example.comment and not _cuda_available():
        assert result.returncode == 2 and "needs CUDA" in result.stderr, (example, result.stderr)
        return
    assert result.returncode == 0, f"README.md:{example.line}: {example.text}\n{result.stderr[-3000:]}"


@pytest.mark.slow
def test_readme_examples_run_in_order(tmp_path):
    """Every example in order in one directory (hours of CPU in all: the demo, training, latency tables).

    ``VITRT_README_WORK=DIR`` keeps the scratch copy in DIR and ``VITRT_README_FROM=N`` starts at README line N in
    it, so a long run stopped by a failure resumes after the fix with the earlier lines' outputs in place (the
    README and vitrt are copied again; the outputs are kept).
    """
    work = Path(os.environ.get("VITRT_README_WORK", tmp_path / "clone"))
    first_line = int(os.environ.get("VITRT_README_FROM", "0"))
    shutil.copytree(REPO, work, ignore=shutil.ignore_patterns(".git", "out", "vitrt-demo", "*.egg-info"),
                    dirs_exist_ok=True)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(work)}  # the copy's vitrt, whatever the installed one points at
    results = Path(os.environ.get("VITRT_README_LOG", tmp_path / "readme_examples.log"))
    server = None
    try:
        with open(results, "a" if first_line else "w") as log:
            for example in examples():
                if not example.runs_here or example.line < first_line:
                    continue
                if example.argv[:2] == ["vitrt", "serve"]:
                    server = subprocess.Popen(example.argv, cwd=work, env=env, stdout=subprocess.DEVNULL,
                                              stderr=subprocess.PIPE, text=True, start_new_session=True)
                    _wait_for_server(server)
                    log.write(f"           serving  README.md:{example.line}  {example.text}\n")
                    continue
                _run(example, work, env, log)
    finally:
        if server is not None:
            os.killpg(server.pid, signal.SIGINT)
            server.wait(timeout=60)


def _wait_for_server(server: subprocess.Popen, timeout: float = 180) -> None:
    """Until ``vitrt serve`` logs its one ready line on stderr (the model is loaded, not only the server up)."""
    import queue
    import threading

    lines: queue.Queue = queue.Queue()

    def pump(stream):
        for line in stream:
            lines.put(line)

    threading.Thread(target=pump, args=(server.stderr,), daemon=True).start()  # keeps draining it afterwards
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"vitrt serve exited {server.returncode}: {''.join(lines.queue)[-2000:]}")
        try:
            if " ready in " in lines.get(timeout=1):
                return
        except queue.Empty:
            continue
    raise AssertionError("vitrt serve did not become ready")
