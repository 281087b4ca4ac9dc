"""Atomic output directories: everything is written to a hidden sibling and renamed into place at the end.

A run that fails (or is interrupted) leaves neither a half-written OUT nor a changed old one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from vitrt.compiler.errors import VitrtError


def check_output_dir(out: Path, force: bool) -> None:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise VitrtError(f"output '{out}' exists and is not a directory; choose another -o")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise VitrtError(f"output directory '{out}' is not empty; pass --force to replace it or choose another -o")


@contextlib.contextmanager
def atomic_output_dir(out: Path, force: bool):
    """Yield a staging directory that becomes ``out`` only if the block finishes without an exception."""
    out = Path(out).absolute()
    check_output_dir(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))
    try:
        yield staging
        old = None
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.replace(out, old)
        os.replace(staging, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_json(path: Path, data) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)
