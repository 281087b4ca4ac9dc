"""Inference backends behind one interface; ``get_backend(name)`` imports them lazily."""

from vitrt.compiler.backends.base import BACKEND_NAMES, Backend, BuildOptions, LatencyStats, Runner, canonical_group, get_backend

__all__ = ["BACKEND_NAMES", "Backend", "BuildOptions", "LatencyStats", "Runner", "canonical_group", "get_backend"]
