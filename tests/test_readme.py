"""Documentation that can run, runs: every `vitrt ...` command in the README parses with the real CLI, and
the README's test command is exactly what CI runs."""

import re
import shlex
from pathlib import Path

import pytest

from vitrt.cli import build_parser

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    lines = [line.split("  #")[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line.startswith("vitrt ")]


@pytest.mark.parametrize("command", readme_commands())
def test_readme_command_parses(command):
    args = build_parser().parse_args(shlex.split(command)[1:])
    assert callable(args.func)


def test_ci_runs_the_readme_test_command():
    ci = (README.parent / ".ci" / "run").read_text()
    test_command = 'pip install -e ".[dev]" && python -m pytest -q -n 2 --dist loadgroup'
    assert test_command in README.read_text()
    assert 'pip install -q -e ".[dev]" && python3 -m pytest -q -n 2 --dist loadgroup' in ci
    stubs = 'pip install --no-deps "tensorrt-stubs==10.13.0.35.1"'  # tests/test_trt_typecheck.py needs them
    assert stubs in README.read_text() and stubs.replace("install", "install -q") in ci
    assert len(readme_commands()) >= 10
