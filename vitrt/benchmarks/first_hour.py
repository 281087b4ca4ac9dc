"""A deployment engineer's first hour, as a script: every bad input refused with one line, fast, leaving nothing.

Each case runs ``vitrt ...`` in a fresh temporary directory as a new process (the way a user meets it) and records
the exit code, the error line, the seconds until the error, whether a traceback appeared and what was left on
disk. Writes OUT.md and OUT.json.

    python -m vitrt.benchmarks.first_hour -o benchmarks/results/first_hour
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from vitrt.compiler.options import command_line, module_main, option
from vitrt.compiler.output import result_file

OPTION, CHECKPOINT, START = "option/path/schedule", "checkpoint", "start-up"
LIMIT_S = {OPTION: 1.5, CHECKPOINT: 15.0, START: 1.5}


@dataclass(frozen=True)
class Case:
    name: str
    argv: tuple[str, ...]  # after "vitrt"; {tmp} is the case's empty working directory
    expect: str  # a phrase the error line must contain
    kind: str = OPTION
    setup: str = ""  # Python run first in {tmp} (makes the bad files the case needs)
    exit: int = 2  # the exit code a correct vitrt gives


TINY = "deit_tiny_patch16_224"
CASES = (
    Case("help", ("--help",), "usage: vitrt", kind=START, exit=0),
    Case("version", ("--version",), "vitrt", kind=START, exit=0),
    Case("image size not divisible by the patch", ("compile", TINY, "--img-size", "17", "-o", "{tmp}/out"),
         "not a multiple of"),
    Case("token-merge schedule of the wrong length", ("compile", TINY, "--tome-schedule", "0,4,4", "-o", "{tmp}/out"),
         "lists 3 values but the model has 12 blocks"),
    Case("token-merge schedule merging too much", ("compile", TINY, "--tome-schedule", "0,0,150" + ",0" * 9, "-o",
                                                   "{tmp}/out"), "asks for more merges"),
    Case("missing calibration data", ("compile", TINY, "--precision", "int8", "--calib-data", "{tmp}/imagenet",
                                      "-o", "{tmp}/out"), "neither digits, synthetic nor an existing directory"),
    Case("bad scale table", ("compile", TINY, "--precision", "int8", "--scale-table", "{tmp}/table.json", "-o",
                             "{tmp}/out"), "unknown tensor",
         setup="open('table.json', 'w').write('{\"tensors\": {\"nope.input\": {\"dtype\": \"int8\", \"amax\": 1}}}')"),
    Case("invalid choice", ("compile", TINY, "--precision", "int3", "-o", "{tmp}/out"), "invalid choice: 'int3'"),
    Case("unknown model", ("compile", "no_such_vit", "-o", "{tmp}/out"), "unknown model 'no_such_vit'"),
    Case("unsupported family", ("compile", "convnext_tiny", "-o", "{tmp}/out"), "unsupported architecture"),
    Case("output not empty", ("compile", TINY, "-o", "{tmp}/full"), "not empty; pass --force",
         setup="import os; os.mkdir('full'); open('full/keep', 'w').write('mine')"),
    Case("output parent cannot be created", ("compile", TINY, "-o", "{tmp}/file/out"),
         "cannot create the output's parent directory", setup="open('file', 'w').write('not a directory')"),
    Case("demo on a backend that is not installed", ("demo", "--backend", "trt", "-o", "{tmp}/demo"),
         "TensorRT is not installed"),
    Case("demo with batch 0", ("demo", "--batch", "0", "-o", "{tmp}/demo"), "--batch must be >= 1"),
    Case("offline --pretrained", ("compile", TINY, "--pretrained", "-o", "{tmp}/out"), "cannot be reached",
         kind=CHECKPOINT),
    Case("corrupt checkpoint", ("compile", TINY, "--checkpoint", "{tmp}/bad.pt", "-o", "{tmp}/out"),
         "is not a torch checkpoint", kind=CHECKPOINT, setup="open('bad.pt', 'wb').write(b'garbage')"),
    Case("checkpoint of another model", ("compile", TINY, "--checkpoint", "{tmp}/other.pt", "-o", "{tmp}/out"),
         "does not match", kind=CHECKPOINT,
         setup="import timm, torch; torch.save(timm.create_model('vit_small_patch16_224').state_dict(), 'other.pt')"),
)


@dataclass(frozen=True)
class FirstHourConfig:
    out: Path | None = option(None, "write OUT.md and OUT.json",
                              writes=".json", flag="-o/--out", type=Path, metavar="OUT")


def run_case(case: Case) -> dict:
    with tempfile.TemporaryDirectory(prefix="vitrt-first-hour-") as tmp, \
            tempfile.TemporaryDirectory(prefix="vitrt-first-hour-cache-") as cache:
        if case.setup:
            subprocess.run([sys.executable, "-c", case.setup], cwd=tmp, check=True)
        before = sorted(p.name for p in Path(tmp).iterdir())
        argv = [a.replace("{tmp}", tmp) for a in case.argv]
        # the vitrt this script belongs to, whatever the working directory
        # ... and an empty cache, as on a fresh machine (no timm registry, no digits reference, no hub downloads)
        env = {**os.environ, "XDG_CACHE_HOME": cache,
               "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]),
                                              os.environ.get("PYTHONPATH", "")])}
        cpu_before = _children_cpu()
        start = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "vitrt.cli", *argv], cwd=tmp, capture_output=True, text=True,
                                timeout=300, env=env, check=False)
        seconds = time.perf_counter() - start
        cpu_seconds = _children_cpu() - cpu_before
        after = sorted(p.name for p in Path(tmp).iterdir())
        files_after = sorted(str(p.relative_to(tmp)) for p in Path(tmp).rglob("*"))
    if case.exit == 0:  # --help / --version: the first line on stdout, no error line
        errors = [line for line in result.stdout.splitlines()[:1] if case.expect in line]
    else:
        errors = [line for line in result.stderr.splitlines() if ": error: " in line]
    line = errors[0].replace(tmp, "TMP") if errors else result.stderr.strip()[-200:]
    return {"case": case.name, "kind": case.kind, "command": "vitrt " + " ".join(case.argv).replace("{tmp}", "TMP"),
            "exit": result.returncode, "expected_exit": case.exit, "line": line,
            "one_line": len(errors) == 1 and case.expect in errors[0],
            "traceback": "Traceback" in result.stderr + result.stdout, "seconds": round(seconds, 2),
            "cpu_seconds": round(cpu_seconds, 2), "within_limit": seconds <= LIMIT_S[case.kind],
            "cpu_within_limit": cpu_seconds <= LIMIT_S[case.kind], "load_average": round(os.getloadavg()[0], 1),
            "left_behind": sorted(set(after) - set(before)), "files_after": files_after}


def _children_cpu() -> float:
    """User + system CPU seconds of the finished child processes: what a case costs, however loaded the machine."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(config: FirstHourConfig) -> int:
    rows = [run_case(case) for case in CASES]
    lines = ["| case | exit | wall s | CPU s (limit) | load | one line | traceback | left behind | error line |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['exit']} | {r['seconds']} | {r['cpu_seconds']} ({LIMIT_S[r['kind']]}) | "
                     f"{r['load_average']} | "
                     f"{'yes' if r['one_line'] else 'NO'} | {'YES' if r['traceback'] else 'no'} | "
                     f"{', '.join(r['left_behind']) or 'nothing'} | `{r['line']}` |")
    table = "\n".join(lines)
    print(table)
    if config.out is not None:
        command = command_line("python -m vitrt.benchmarks.first_hour")
        result_file(config.out, ".json").write_text(json.dumps({"command": command, "rows": rows}, indent=2) + "\n")
        cores = os.cpu_count()
        result_file(config.out, ".md").write_text(
            f"# First hour: bad input\n\nCommand:\n\n```\n{command}\n```\n\nEach case runs `vitrt ...` as a new "
            "process in an empty temporary directory with an empty cache (XDG_CACHE_HOME), as on a fresh machine. CPU s: the process's user + system time, the limit's "
            "measure here; wall s is what a user waits and equals CPU s plus waiting for a core, so it reads true "
            f"only on an idle machine ({cores} cores here, load average in the table).\n\n{table}\n")
    return 0 if all(r["exit"] == r["expected_exit"] and r["one_line"] and not r["traceback"] and not r["left_behind"]
                    for r in rows) else 1


if __name__ == "__main__":
    sys.exit(module_main(FirstHourConfig, run, description=__doc__.splitlines()[0]))
