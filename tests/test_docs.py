"""Documentation that can run, runs: docs/architecture.md's Python blocks execute in order (the worked
"add a transform" walkthrough), and the package table names modules that exist."""

import importlib
import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"


def test_architecture_walkthrough_runs():
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) >= 5
    namespace: dict = {"__name__": "architecture_walkthrough"}
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), namespace)
    assert namespace["result"].view.spec.num_classes == 3


def test_the_package_table_names_real_modules():
    text = DOC.read_text()
    for package in re.findall(r"\| `(vitrt\.\w+)`", text):
        importlib.import_module(package)
    for module in ("spec", "twin", "models", "lower", "graph", "weights", "pass_manager", "cleanup", "verify",
                   "timing", "lut", "options", "target", "output"):
        assert f"`{module}`" in text
        importlib.import_module(f"vitrt.compiler.{module}")
