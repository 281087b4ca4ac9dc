"""The pass schedule a CompileConfig asks for. Passes are imported here, lazily, in dependency order."""

from __future__ import annotations

from .config import CompileConfig
from .pass_manager import Pass


def build_pipeline(config: CompileConfig) -> list[Pass]:
    """Function-changing passes first (in the order the compression stack needs), cleanup last."""
    from vitrt.passes.cleanup import CleanupPass

    return [CleanupPass()]
