"""Reading a JSON file a user handed in (plans, scale tables, latency tables, manifests) with one-line errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vitrt.compiler.errors import VitrtError


def read_json(path, what: str, hint: str = "", error: type[VitrtError] = VitrtError) -> Any:
    """The parsed content of ``path``; ``what`` names the file in errors ("latency table"), ``hint`` says how
    to make a good one. Missing, unreadable or malformed files raise ``error`` with one line."""
    path = Path(path)
    suffix = f"; {hint}" if hint else ""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise error(f"{what} '{path}' does not exist{suffix}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"cannot read {what} '{path}': {getattr(exc, 'strerror', None) or type(exc).__name__}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{what} '{path}' is corrupt: not valid JSON ({exc.msg} at line {exc.lineno}){suffix}") from None
