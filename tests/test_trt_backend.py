"""The TensorRT backend: what can be checked without TensorRT runs everywhere (layer attribution, the batch profile,
sparse weights from the inspector, the install hint); the runner itself is tested on a GPU with TensorRT
(``gpu``-marked, skipped without TensorRT and CUDA; TensorRT is never faked)."""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from conftest import tiny_vit
from vitrt.compiler.backends import BuildOptions, get_backend
from vitrt.compiler.backends.base import attribute_layers, canonical_group, layer_span
from vitrt.compiler.backends.trt import sparse_layers, tensorrt_available
from vitrt.compiler.errors import BackendUnavailableError, VitrtError
from vitrt.compiler.lower import lower
from vitrt.compiler.models import canonicalize
from vitrt.compiler.options import from_options
from vitrt.compiler.target import TargetConfig
from vitrt.compiler.verify import verification_inputs

HAS_TRT_GPU = tensorrt_available() and torch.cuda.is_available()
needs_trt = pytest.mark.skipif(not HAS_TRT_GPU, reason="needs TensorRT and a CUDA GPU")


@pytest.mark.parametrize("name, span", [
    ("{ForeignNode[blocks.0.attn.q...blocks.11.mlp.fc2]}", ("blocks.0", "blocks.11")),
    ("{ForeignNode[prefix_tokens...head.bias_add]}", ("stem", "head")),
    ("{ForeignNode[blocks.2.attn.q...blocks.2.attn.av]}", None),  # one block: an ordinary layer
    ("blocks.0.residual2 + blocks.1.norm1", ("blocks.0", "blocks.1")),
    ("blocks.0.attn.q + blocks.0.attn.q.bias_add", None), ("Reformatting CopyNode for Input Tensor 0 to norm", None),
])
def test_layer_span(name, span):
    assert layer_span(name) == span


def test_attribute_layers_keeps_spanning_layers_apart():
    groups, spanning = attribute_layers({"patch_embed": 1.0, "{ForeignNode[blocks.0.norm1...blocks.3.residual2]}": 8.0,
                                         "blocks.4.mlp.fc1 + blocks.4.mlp.act.erf": 0.5, "__myl_Res": 0.1,
                                         "head": 0.2}, canonical_group)
    assert groups == {"stem": 1.0, "blocks.4": 0.5, "head": 0.2, "other": 0.1}
    assert spanning == [{"layer": "{ForeignNode[blocks.0.norm1...blocks.3.residual2]}", "ms": 8.0,
                         "first": "blocks.0", "last": "blocks.3"}]


def test_batch_profile_from_the_target():
    assert from_options(TargetConfig, {"batch": 8}).batch_profile is None
    assert from_options(TargetConfig, {"batch": 8, "dynamic_batch": True}).batch_profile == (1, 8, 32)
    # a profile that ended at the batch it is tuned for took one image at --batch 1: a server could not batch
    assert from_options(TargetConfig, {"dynamic_batch": True}).batch_profile == (1, 1, 32)
    assert from_options(TargetConfig, {"batch": 64, "dynamic_batch": True}).batch_profile == (1, 64, 64)
    trt = {"backend": "trt", "batch": 8}
    config = from_options(TargetConfig, {**trt, "dynamic_batch": True, "min_batch": 2, "max_batch": 32})
    assert config.validate().batch_profile == (2, 8, 32)
    with pytest.raises(VitrtError, match="add --dynamic-batch"):
        from_options(TargetConfig, {**trt, "max_batch": 32}).validate()
    with pytest.raises(VitrtError, match="1 <= --min-batch <= --batch <= --max-batch, got 1 / 8 / 4"):
        from_options(TargetConfig, {**trt, "dynamic_batch": True, "max_batch": 4}).validate()
    with pytest.raises(VitrtError, match="--backend ort runs any batch of a --dynamic-batch graph: drop them"):
        from_options(TargetConfig, {"batch": 8, "dynamic_batch": True, "min_batch": 2}).validate()


def test_sparse_layers_come_from_has_sparse_weights_not_tactic_names():
    inspector = {"Layers": [{"Name": "blocks.0.mlp.fc1", "HasSparseWeights": 1, "TacticName": "sm80_xmma_gemm_tn"},
                            {"Name": "blocks.0.mlp.fc2", "HasSparseWeights": 0, "TacticName": "sm80_sparse_named_tn"},
                            "a layer name only (LAYER_NAMES_ONLY verbosity)"]}
    assert sparse_layers(inspector) == ["blocks.0.mlp.fc1"]


def test_type_stubs_alone_do_not_count_as_tensorrt():
    """tensorrt-stubs (a dev dependency) installs an empty 'tensorrt' namespace package; the backend must still say
    how to install TensorRT instead of failing on a missing attribute. Whether to skip is decided without asking
    tensorrt_available(), the function under test (one that always said yes would skip this test, not fail it)."""
    try:
        tensorrt = importlib.import_module("tensorrt")
    except ImportError:
        pytest.skip("no tensorrt package here, not even its type stubs")
    if hasattr(tensorrt, "Builder"):
        pytest.skip("the TensorRT runtime is installed: the missing-runtime message cannot be seen")
    assert not tensorrt_available()
    with pytest.raises(BackendUnavailableError, match=r"pip install 'vitrt\[trt\]'"):
        get_backend("trt")


# --- on a GPU with TensorRT --------------------------------------------------------------------------------------

@pytest.fixture
def tiny_onnx(tmp_path):
    twin = canonicalize(tiny_vit(depth=2))
    static, dynamic = tmp_path / "static.onnx", tmp_path / "dynamic.onnx"
    onnx.save(lower(twin, batch=2), str(static))
    onnx.save(lower(twin, batch=None), str(dynamic))
    return twin, static, dynamic


@pytest.mark.gpu
@needs_trt
def test_timing_cache_is_written_after_the_build_and_a_foreign_one_is_refused(tiny_onnx, tmp_path):
    _, static, _ = tiny_onnx
    backend, cache = get_backend("trt"), tmp_path / "trt.cache"
    (tmp_path / "a").mkdir()
    backend.build(static, tmp_path / "a", BuildOptions(timing_cache=cache))
    assert cache.is_file() and cache.stat().st_size > 0
    cache.write_bytes(b"not a timing cache")
    (tmp_path / "b").mkdir()
    with pytest.raises(VitrtError, match="refused the timing cache"):
        backend.build(static, tmp_path / "b", BuildOptions(timing_cache=cache))
    assert cache.read_bytes() == b"not a timing cache" and not (tmp_path / "b" / "model.plan").exists()


@pytest.mark.gpu
@needs_trt
def test_dynamic_batch_profile_buffers_and_timing(tiny_onnx, tmp_path):
    twin, _, dynamic = tiny_onnx
    backend = get_backend("trt")
    options = BuildOptions(batch_profile=(1, 4, 8))
    runner = backend.load(backend.build(dynamic, tmp_path, options), options)
    assert runner.batch is None
    for batch in (1, 8, 1):
        images = verification_inputs(twin.spec, batch=batch)
        with torch.no_grad():
            assert np.abs(runner.infer(images) - twin(torch.from_numpy(images)).numpy()).max() <= 1e-3  # TF32
    assert sorted(runner._bindings) == [(1, 3, 32, 32), (8, 3, 32, 32)]  # buffers once per shape
    with pytest.raises(VitrtError, match=r"rejected input shape \[9, 3, 32, 32\].*profile takes \[1, 3, 32, 32\]"):
        runner.infer(verification_inputs(twin.spec, batch=9))
    stats = runner.benchmark(verification_inputs(twin.spec, batch=4), warmup=2, iterations=5)
    assert stats.clock == "cuda" and stats.timer.startswith("CUDA events")
    assert set(stats.transfers_ms) == {"h2d_ms", "d2h_ms"}
    assert 0 < stats.median_ms and (stats.per_block_ms or stats.spanning_layers)
    assert runner.context.profiler is None  # detached after the per-layer pass


@pytest.mark.gpu
@needs_trt
def test_cuda_graph_replay_matches_enqueue(tiny_onnx, tmp_path):
    twin, static, _ = tiny_onnx
    backend = get_backend("trt")
    artifact = backend.build(static, tmp_path, BuildOptions())
    plain, graphed = backend.load(artifact, BuildOptions()), backend.load(artifact, BuildOptions(cuda_graph=True))
    images = verification_inputs(twin.spec, batch=2)
    assert np.array_equal(plain.infer(images), graphed.infer(images))
    assert graphed._bindings[(2, 3, 32, 32)].graph is not None


@pytest.mark.gpu
@needs_trt
def test_cuda_graphs_of_a_dynamic_batch_replay_right_when_shapes_alternate(tiny_onnx, tmp_path):
    """A captured graph keeps its context's state for its shape: each captured shape has a context of its own, so
    batch 1's graph replayed after batch 8 ran gives batch 1's answer (new images every call)."""
    twin, _, dynamic = tiny_onnx
    backend = get_backend("trt")
    options = BuildOptions(batch_profile=(1, 4, 8))
    artifact = backend.build(dynamic, tmp_path, options)
    plain = backend.load(artifact, options)
    graphed = backend.load(artifact, dataclasses.replace(options, cuda_graph=True))
    for seed, batch in enumerate((1, 8, 1, 8, 1)):
        images = verification_inputs(twin.spec, batch=batch, seed=seed)
        assert np.array_equal(plain.infer(images), graphed.infer(images)), (seed, batch)
    one, eight = graphed._bindings[(1, 3, 32, 32)], graphed._bindings[(8, 3, 32, 32)]
    assert one.graph is not None and eight.graph is not None and one.context is not eight.context


@pytest.mark.gpu
@needs_trt
def test_fp16_io_maps_through_torch(tmp_path):
    from vitrt.compiler.backends.trt_runner import torch_dtype
    import tensorrt as trt

    assert torch_dtype(trt.DataType.BF16) == torch.bfloat16 and torch_dtype(trt.DataType.FP8) == torch.float8_e4m3fn
    with pytest.raises(VitrtError, match="no torch type"):
        torch_dtype(trt.DataType.INT4)


# --- --no-build: the TensorRT-ready graph and manifest without TensorRT -------------------------------------------

def test_trtexec_command_builds_what_the_backend_would():
    from vitrt.compiler.backends.trt import trtexec_command

    static = trtexec_command("model.onnx", {"images": [3, 224, 224]}, BuildOptions())
    assert static == ("trtexec --onnx=model.onnx --stronglyTyped --saveEngine=model.plan --profilingVerbosity=detailed "
                      "--exportLayerInfo=engine_inspector.json")
    dynamic = trtexec_command("model.onnx", {"images": [3, 224, 224]},
                              BuildOptions(sparse_weights=True, batch_profile=(1, 8, 64), timing_cache="t.cache"))
    assert dynamic.endswith("--sparsity=enable --minShapes=images:1x3x224x224 --optShapes=images:8x3x224x224 "
                            f"--maxShapes=images:64x3x224x224 --timingCacheFile={Path('t.cache').absolute()}")
    # absolute: engine_build.command runs it after `cd OUT`, where a relative t.cache would be OUT/t.cache


def test_no_build_writes_the_trt_graph_and_how_to_build_it(tmp_path, capsys):
    import vitrt
    from vitrt.cli import main

    model = tiny_vit(depth=1, img_size=64)
    result = vitrt.compile(model, tmp_path / "out", name="tiny", batch=8, backend="trt", no_build=True,
                           precision="fp16", sparsity="2:4", dynamic_batch=True, max_batch=32, verify=True)
    manifest = result.manifest
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [".vitrt-output", "manifest.json", "model.onnx"]
    assert manifest["artifact"] is None and result.artifact_path is None and manifest["verify"]["ok"]
    assert manifest["backend"] == "trt" and manifest["batch_profile"] == [1, 8, 32]
    assert manifest["engine_build"] == {"built": False, "command": (
        "cd OUT && trtexec --onnx=model.onnx --stronglyTyped --saveEngine=model.plan --profilingVerbosity=detailed "
        "--exportLayerInfo=engine_inspector.json --sparsity=enable --minShapes=images:1x3x64x64 "
        "--optShapes=images:8x3x64x64 --maxShapes=images:32x3x64x64"),
        "requires": ["2:4 sparse weights: sparse tensor cores need compute capability >= 8.0 (Ampere or newer); older "
                     "GPUs build the dense engine"]}
    assert "no engine built (--no-build); build it on the GPU machine with: cd OUT && trtexec" in capsys.readouterr().err
    # what needs an engine says so in one line and writes nothing
    assert main(["export", "triton", str(tmp_path / "out"), "-o", str(tmp_path / "repo")]) == 2
    assert "holds no engine: it was compiled with --no-build" in capsys.readouterr().err
    assert not (tmp_path / "repo").exists()
    assert main(["bench", str(tmp_path / "out")]) == 2
    assert "holds no engine: it was compiled with --no-build" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--no-build"], "--no-build is for --backend trt"),
    (["--backend", "trt", "--no-build", "--bench"], "--no-build builds no engine to benchmark"),
])
def test_no_build_option_errors(tmp_path, capsys, argv, message):
    from vitrt.cli import main

    assert main(["compile", "vit_tiny_patch16_224", "-o", str(tmp_path / "out"), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and not (tmp_path / "out").exists()
