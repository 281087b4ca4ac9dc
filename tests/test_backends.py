"""Backends: ONNX Runtime for real; TensorRT skipped where it is not installed (never faked)."""

import onnx
import pytest
import torch

from vitrt.compiler.backends import BuildOptions, LatencyStats, canonical_group, get_backend
from vitrt.compiler.backends.trt import tensorrt_available
from vitrt.compiler.errors import BackendUnavailableError, VitrtError
from vitrt.compiler.lower import lower
from vitrt.compiler.models import canonicalize
from vitrt.compiler.verify import FP32_TOLERANCE, verification_inputs

from conftest import max_abs, tiny_vit

HAS_TRT = tensorrt_available()
HAS_CUDA = torch.cuda.is_available()


@pytest.fixture
def built(tmp_path):
    twin = canonicalize(tiny_vit(depth=3))
    path = tmp_path / "model.onnx"
    onnx.save(lower(twin, batch=2), str(path))
    return twin, path


@pytest.mark.parametrize("name, group", [
    ("blocks.3.attn.q", "blocks.3"), ("blocks.11.mlp.fc2/MatMulAddFusion", "blocks.11"),
    ("blocks.0.attn.q + blocks.0.attn.q.bias_add", "blocks.0"), ("{ForeignNode[blocks.2.attn.q...blocks.2.attn.av]}", "blocks.2"),
    ("patch_embed.flatten", "stem"), ("pos_embed", "stem"), ("prefix_tokens.concat", "stem"),
    ("norm", "head"), ("head.bias_add", "head"), ("head_dist", "head"), ("gemm_input_reshape_token_8", None),
    ("blocks.1", "blocks.1"), ("blocks.10x", None), ("normalize", None),
])
def test_canonical_group_of_backend_layer_names(name, group):
    assert canonical_group(name) == group


def test_latency_stats_percentiles():
    stats = LatencyStats.from_samples(list(range(1, 101)), backend="ort", device="cpu", batch=4)
    assert stats.median_ms == 50.5 and stats.p90_ms == pytest.approx(90.1) and stats.p99_ms == pytest.approx(99.01)
    assert stats.images_per_s == pytest.approx(4 * 1000 / 50.5)


def test_ort_build_infer_benchmark_and_per_block(built, tmp_path):
    twin, path = built
    backend = get_backend("ort")
    artifact = backend.build(path, tmp_path, BuildOptions())
    assert artifact.name == "model.ort.onnx" and artifact.is_file()
    runner = backend.load(artifact, BuildOptions(threads=1))
    assert runner.batch == 2
    images = verification_inputs(twin.spec, batch=2)
    with torch.no_grad():
        assert max_abs(runner.infer(images), twin(torch.from_numpy(images)).numpy()) <= FP32_TOLERANCE
    stats = runner.benchmark(images, warmup=2, iterations=5)
    assert stats.iterations == 5 and 0 < stats.median_ms <= stats.p90_ms <= stats.p99_ms
    groups = stats.per_block_ms
    assert {"stem", "blocks.0", "blocks.1", "blocks.2", "head"} <= set(groups)
    # Almost all time is attributed to canonical groups, not lost in "other".
    assert groups.get("other", 0.0) <= 0.1 * sum(groups.values())
    assert not list(tmp_path.glob(".vitrt_ort_profile*"))


def test_unknown_backend_is_refused():
    with pytest.raises(VitrtError, match="unknown backend 'tvm'"):
        get_backend("tvm")


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed: the missing-runtime message cannot be observed")
def test_trt_backend_without_tensorrt_says_how_to_install():
    with pytest.raises(BackendUnavailableError, match=r"pip install 'vitrt\[trt\]'"):
        get_backend("trt")


@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_TRT and HAS_CUDA), reason="needs TensorRT and a CUDA GPU")
def test_trt_build_and_run(built, tmp_path):
    twin, path = built
    backend = get_backend("trt")
    artifact = backend.build(path, tmp_path, BuildOptions(timing_cache=tmp_path / "cache.bin"))
    assert artifact.is_file() and (tmp_path / "engine_inspector.json").is_file() and (tmp_path / "cache.bin").is_file()
    runner = backend.load(artifact, BuildOptions())
    images = verification_inputs(twin.spec, batch=2)
    with torch.no_grad():
        assert max_abs(runner.infer(images), twin(torch.from_numpy(images)).numpy()) <= 1e-3  # TF32 may be on
    stats = runner.benchmark(images, warmup=2, iterations=5)
    assert "blocks.0" in stats.per_block_ms
