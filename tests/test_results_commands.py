"""Every figure under benchmarks/results stays reproducible by its command: each recorded command still parses
with today's CLI (``vitrt ...``) or the benchmark module's own config class (``python -m vitrt.benchmarks.X``)."""

import argparse
import importlib
import inspect
import json
import re
import shlex
from pathlib import Path

import pytest

from vitrt.cli import build_parser
from vitrt.compiler.options import add_arguments

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def recorded_commands() -> list[str]:
    commands = set()
    for md in RESULTS.glob("*.md"):
        text = re.sub(r"\\\n\s*", " ", md.read_text())  # join continued lines
        for block in re.findall(r"```(?:bash|sh)?\n(.*?)```", text, flags=re.S):
            commands.update(line.strip() for line in block.splitlines()
                            if line.strip().startswith(("vitrt ", "python -m vitrt.")))
    for js in RESULTS.glob("*.json"):
        data = json.loads(js.read_text())
        for entry in (data if isinstance(data, list) else [data]):
            if isinstance(entry, dict) and isinstance(entry.get("command"), str):
                commands.add(entry["command"])
            for value in (entry.values() if isinstance(entry, dict) else []):
                if isinstance(value, dict) and isinstance(value.get("command"), str):
                    commands.add(value["command"])
    return sorted(c for c in commands if c.startswith(("vitrt ", "python -m vitrt.")))


def module_parser(module_name: str) -> argparse.ArgumentParser:
    module = importlib.import_module(module_name)
    config_name = re.search(r"module_main\((\w+)", inspect.getsource(module)).group(1)
    parser = argparse.ArgumentParser(prog=module_name)
    add_arguments(parser, getattr(module, config_name))
    return parser


def test_there_are_recorded_commands():
    assert len(recorded_commands()) >= 12


@pytest.mark.parametrize("command", recorded_commands())
def test_recorded_command_parses(command):
    argv = shlex.split(command)
    if argv[0] == "vitrt":
        args = build_parser().parse_args(argv[1:])
        assert callable(args.func)
    else:
        module_parser(argv[2]).parse_args(argv[3:])
