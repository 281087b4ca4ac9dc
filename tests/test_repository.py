"""The repository stays lean: no profiler dumps or build outputs tracked, and what vitrt writes is ignored."""

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def git(*args) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)


pytestmark = pytest.mark.skipif(git("rev-parse").returncode != 0, reason="not a git checkout")


def test_no_profiler_dumps_models_or_big_files_are_tracked():
    tracked = git("ls-files").stdout.splitlines()
    assert not [f for f in tracked if "onnxruntime_profile" in f or f.endswith((".onnx", ".plan", ".cache"))]
    big = [f for f in tracked if (ROOT / f).is_file() and (ROOT / f).stat().st_size > 3 * 2**20]
    assert big == []


@pytest.mark.parametrize("path", [
    "onnxruntime_profile__2026-11-21_14-42-25_511.json", "out/deit_small/model.onnx", "vitrt-demo/demo.md",
    "model.onnx", "x/model.plan", "trt.cache", "lut.json", "lut.png", "bench.json", "plan.json", "nvit.md",
    "dcvit_table8.json", ".vitrt_ort_profile_1.json"])
def test_outputs_of_the_readme_commands_are_ignored(path):
    assert git("check-ignore", "-q", "--no-index", path).returncode == 0, f"{path} is not ignored"


def test_no_merge_conflict_markers_are_committed():
    """A conflict resolved in a hurry once left its markers in the README's layout table."""
    tracked = [f for f in git("ls-files").stdout.splitlines() if f.endswith((".py", ".md", ".txt", ".toml", ".cfg"))]
    marked = [f for f in tracked if (ROOT / f).is_file() and any(
        line.startswith(("<<<<<<< ", ">>>>>>> ")) for line in (ROOT / f).read_text(errors="replace").splitlines())]
    assert marked == []
