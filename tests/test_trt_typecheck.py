"""The TensorRT backend is type-checked with mypy against ``tensorrt-stubs`` 10.13, and every TensorRT call it makes
is listed in one table (the docstring of ``vitrt.compiler.backends.trt``).

How the check is made honest. ``tensorrt-stubs`` 10.13.0.35.1 cannot be used as installed:

* its ``tensorrt`` and ``tensorrt_bindings`` packages have no ``py.typed`` (only its own ``tensorrt_stubs`` package
  has one), so mypy ignores them when installed (PEP 561); they are copied into a temporary directory that is
  put on ``mypy_path``;
* three kinds of lines in ``tensorrt_bindings/tensorrt.pyi`` are not what their authors meant, and are patched in
  the copy (:data:`STUB_PATCHES`, each with the exact number of lines it must change, so a different stub
  release fails here instead of being checked half-way):

  1. ``add_scale_nd(..., power: Weights = None, channel_axis: int)``: a parameter without default after defaulted
     ones, a SyntaxError; ``channel_axis`` is made keyword-only (1 line);
  2. ``get_workspace_size`` / ``configure_plugin`` / ``on_shape_change`` take a parameter named ``in``, a Python
     keyword, a SyntaxError; renamed ``in_`` (4 lines);
  3. the module defines ``bool: DataType`` (TensorRT's ``trt.bool`` alias), which shadows the builtin inside the
     stub: mypy reads every ``-> bool`` / ``: bool`` there as an invalid type and silently makes it ``Any``. They
     are qualified as ``builtins.bool`` (311 return and 26 parameter annotations);

* mypy's remaining complaints *inside* the stubs (``-> ...`` return annotations, an undefined ``capsule`` type,
  the missing ``tensorrt_libs``) are silenced for the stub modules only (``ignore_errors``); errors in vitrt's
  code are not. ``torch`` and ``numpy`` are not followed (``follow_imports = skip``: they are Any here) to keep
  the run well under 30 s; every TensorRT object is typed by the stubs. ``warn_unused_ignores`` makes the one
  ``type: ignore`` in the backend (detaching the profiler with ``None``, which the binding accepts and the stub
  omits) prove that it is needed.

The check proves it can fail: in the same mypy run, a scratch copy of ``trt.py`` with two deliberate wrong calls
(a str for ``set_timing_cache``'s bool, and ``build_engine``, which TensorRT 10 removed) must give exactly those
two errors. The test skips only when mypy itself is missing; without the stubs it fails and says how to install
them (``pip install --no-deps tensorrt-stubs==10.13.0.35.1``: its metadata pins ``tensorrt``, which no public
index can install).
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import shutil
from pathlib import Path

import pytest

import vitrt.compiler.backends.trt as trt_backend

ROOT = Path(__file__).resolve().parents[1]
BACKEND_FILES = [ROOT / "vitrt/compiler/backends/trt.py", ROOT / "vitrt/compiler/backends/trt_runner.py",
                 ROOT / "vitrt/serving/artifact.py"]  # every module that calls TensorRT
STUBS_VERSION = "10.13.0.35.1"
STUB_PATCHES = (  # (pattern, replacement, exact number of changes, why)
    (r"power: Weights = None, channel_axis: int\)", "power: Weights = None, *, channel_axis: int)", 1,
     "a parameter without default after defaulted ones"),
    (r"\bin: list\[", "in_: list[", 4, "a parameter named with the keyword 'in'"),
    (r"-> bool\b", "-> builtins.bool", 311, "the module's own 'bool: DataType' shadows the builtin"),
    (r"(\w): bool\b", r"\1: builtins.bool", 26, "the module's own 'bool: DataType' shadows the builtin"),
)
WRONG_CALLS = (  # (correct text in trt.py, deliberate mistake, what mypy must say)
    ("not config.set_timing_cache(cache, ignore_mismatch=False)",
     'not config.set_timing_cache(cache, ignore_mismatch="no")',
     'Argument "ignore_mismatch" to "set_timing_cache" of "IBuilderConfig" has incompatible type "str"'),
    ("builder.build_serialized_network(network, config)", "builder.build_engine(network, config)",
     '"Builder" has no attribute "build_engine"'),
)
MYPY_CONFIG = """[mypy]
python_version = 3.11
check_untyped_defs = True
warn_unused_ignores = True
follow_imports = silent
mypy_path = {mypy_path}
cache_dir = {cache_dir}
[mypy-tensorrt,tensorrt.*,tensorrt_bindings,tensorrt_bindings.*]
ignore_errors = True
[mypy-tensorrt_libs]
ignore_missing_imports = True
[mypy-torch,torch.*,numpy,numpy.*]
follow_imports = skip
"""
# Attribute names of the backend that the stubs also define but that are not TensorRT calls there.
NOT_TENSORRT = {"append": "list.append", "bool": "torch.bool", "bfloat16": "torch.bfloat16", "float16": "torch.float16",
                "float32": "torch.float32", "int8": "torch.int8", "int32": "torch.int32", "int64": "torch.int64",
                "uint8": "torch.uint8", "dtype": "torch.Tensor.dtype", "numpy": "torch.Tensor.numpy",
                "write": "file.write", "engine": "TrtRunner.engine", "logger": "TrtBackend.logger",
                "__init__": "IProfiler.__init__ (listed as the IProfiler subclass)"}


def installed_stubs() -> Path:
    try:
        dist = importlib.metadata.distribution("tensorrt-stubs")
    except importlib.metadata.PackageNotFoundError:
        pytest.fail(f"tensorrt-stubs is not installed: pip install --no-deps tensorrt-stubs=={STUBS_VERSION}")
    assert dist.version == STUBS_VERSION, f"the stub patches were written for tensorrt-stubs {STUBS_VERSION}"
    return Path(dist.locate_file("tensorrt_bindings/tensorrt.pyi")).parents[1]


def patched_stubs(target: Path) -> Path:
    site = installed_stubs()
    for package in ("tensorrt", "tensorrt_bindings"):
        shutil.copytree(site / package, target / package)
    path = target / "tensorrt_bindings" / "tensorrt.pyi"
    text = path.read_text()
    with pytest.raises(SyntaxError):
        compile(text, str(path), "exec")  # as shipped, the stub is not valid Python
    for pattern, replacement, count, why in STUB_PATCHES:
        text, changed = re.subn(pattern, replacement, text)
        assert changed == count, f"stub patch for '{why}' changed {changed} lines, expected {count}"
    text = text.replace("from __future__ import annotations\n", "from __future__ import annotations\nimport builtins\n", 1)
    compile(text, str(path), "exec")
    path.write_text(text)
    return target


def test_the_tensorrt_backend_type_checks_and_a_wrong_call_fails(tmp_path):
    mypy_api = pytest.importorskip("mypy.api")
    stubs = patched_stubs(tmp_path / "stubs")
    scratch = tmp_path / "scratch" / "wrong_trt_calls.py"
    scratch.parent.mkdir()
    text = BACKEND_FILES[0].read_text()
    lines = {}
    for correct, wrong, _ in WRONG_CALLS:
        assert text.count(correct) == 1, correct
        lines[wrong] = text[: text.index(correct)].count("\n") + 1
        text = text.replace(correct, wrong)
    scratch.write_text(text)
    config = tmp_path / "mypy.ini"
    config.write_text(MYPY_CONFIG.format(mypy_path=f"{stubs}:{ROOT}", cache_dir=tmp_path / "cache"))
    stdout, stderr, status = mypy_api.run(["--config-file", str(config), *map(str, BACKEND_FILES), str(scratch)])
    errors = [line for line in stdout.splitlines() if ": error:" in line]
    assert not [e for e in errors if "wrong_trt_calls.py" not in e], stdout + stderr
    for (_, wrong, message) in WRONG_CALLS:
        assert any(e.startswith(f"{scratch}:{lines[wrong]}:") and message in e for e in errors), stdout
    assert status == 1, stdout  # (the copy's own TrtBackend is another class to mypy: one more error there)


def test_every_tensorrt_call_is_listed_in_the_backend_table():
    stub = installed_stubs() / "tensorrt_bindings" / "tensorrt.pyi"
    text = stub.read_text()
    for pattern, replacement, _, _ in STUB_PATCHES:
        text = re.sub(pattern, replacement, text)
    defined = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            defined.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            defined.add(node.target.id)
    used = {node.attr for path in BACKEND_FILES for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Attribute)}
    table = trt_backend.__doc__
    unlisted = sorted(name for name in (used & defined) - set(NOT_TENSORRT) if not re.search(rf"\b{name}\b", table))
    assert unlisted == [], f"TensorRT calls missing from the table in vitrt/compiler/backends/trt.py: {unlisted}"
    assert "set_timing_cache" in used & defined and "execute_async_v3" in used & defined  # the scan sees calls
