"""The torch backend: the compiled graph imported back into torch, against ONNX Runtime on every transform.

Every transform is compiled with ``--backend torch --verify``; the torch artifact's logits must equal the graph's
semantics (ONNX Runtime, basic optimisations: what ``--verify`` runs) and the ort backend's artifact within the
compile's declared tolerance (fp32 1e-4, fp16 5e-2, int8 / fp8 0.25). GPU paths (2:4 semi-structured GEMMs,
_int_mm on CUDA, CUDA events, CUDA graphs) are marked ``gpu`` and skip without CUDA.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from vitrt.compiler.backends import BuildOptions, get_backend
from vitrt.compiler.backends.torch_import import import_onnx
from vitrt.compiler.errors import BackendUnavailableError, VitrtError
from vitrt.compiler.lower import lower
from vitrt.compiler.models import canonicalize, spec_of_timm
from vitrt.compiler.pass_manager import FP32_TOLERANCE
from vitrt.compiler.verify import run_onnx, verification_inputs
from vitrt.pipeline.driver import compile
from vitrt.transforms.prune.plan import BlockPlan, PruningPlan

from conftest import max_abs, tiny_vit

HAS_CUDA = torch.cuda.is_available()
SPARSE_GPU = HAS_CUDA and torch.cuda.get_device_capability() >= (8, 0)
QUANT = dict(calib_data="synthetic", calib_images=16)


def pruning_plan(model, tmp_path):
    spec = spec_of_timm(model)
    first, second = spec.blocks[0], spec.blocks[1]
    plan = PruningPlan(tuple(range(48)), (BlockPlan((1,), tuple(range(16)), tuple(range(16, 32)), tuple(range(0, 256, 2))),
                                          BlockPlan((), (), (), tuple(range(64)))),
                       spec.emb, PruningPlan.keep_all(spec).original_blocks)
    assert first.heads == 2 and second.mlp == 256
    path = tmp_path / "plan.json"
    plan.save(path)
    return path


# (options, model kwargs): every transform and the precisions on tiny distilled / plain ViTs
STACKS = {
    "fp32": {},
    "dynamic_batch": dict(dynamic_batch=True),
    "fp16": dict(precision="fp16"),
    "bf16": dict(precision="bf16"),
    "int8": dict(precision="int8", **QUANT),
    "int8_attention": dict(precision="int8", quantize_attention=True, **QUANT),
    "fp8": dict(precision="fp8", **QUANT),
    "int4w": dict(precision="int4w"),
    "sparsity_2to4": dict(sparsity="2:4", sparse_min_weights=256),
    "tome": dict(tome="3"),
    "lgtm_fp16": dict(tome="3", lgtm_window=2, dfe_skip=0, precision="fp16"),
    "pruned_sparse_int8": dict(prune=True, sparsity="2:4", sparse_min_weights=256, precision="int8", **QUANT),
}


@pytest.mark.parametrize("stack", sorted(STACKS))
def test_every_transform_runs_on_torch_like_onnx_runtime(stack, tmp_path):
    options = dict(STACKS[stack])
    model = tiny_vit(distilled=stack in ("fp16", "int8", "tome"), depth=2)
    if options.pop("prune", False):
        options["prune_plan"] = pruning_plan(model, tmp_path)
    result = compile(model, tmp_path / "out", backend="torch", batch=2, verify=True, quiet=True, **options)
    assert result.manifest["backend"] == "torch" and result.artifact_path.name == "model.torch.onnx"
    tolerance = result.manifest["verify"]["tolerance"]
    runner = get_backend("torch").load(result.artifact_path, BuildOptions())
    images = verification_inputs(result.twin.spec, 2, seed=3)
    got = runner.infer(images)
    graph = onnx.load(str(result.onnx_path))
    assert max_abs(got, run_onnx(graph, images, 2)) <= tolerance
    if stack == "bf16":
        pass  # ONNX Runtime's CPU provider has no bf16 kernels: the reference evaluator above is the peer
    elif stack != "int4w":
        ort = get_backend("ort")
        ort_runner = ort.load(ort.build(result.onnx_path, tmp_path, BuildOptions()), BuildOptions())
        assert max_abs(got, ort_runner.infer(images)) <= tolerance
    else:
        # ONNX Runtime's own INT4 kernel (MatMulNBits, fused at its "all" level) departs from the graph's
        # DequantizeLinear -> MatMul semantics by ~3e-3 on this model; torch runs the graph as written.
        assert max_abs(got, run_onnx(graph, images, 2)) <= FP32_TOLERANCE
    kernels = {k["kernel"] for k in runner.kernels.values()}
    assert kernels == ({"int8"} if "int8" in stack else {"dense"})


def test_build_records_kernels_and_fusions_and_benchmarks(tmp_path):
    twin = canonicalize(tiny_vit(depth=3))
    path = tmp_path / "model.onnx"
    onnx.save(lower(twin, batch=2), str(path))
    backend = get_backend("torch")
    artifact = backend.build(path, tmp_path, BuildOptions(sparse_weights=True))
    runner = backend.load(artifact, BuildOptions(threads=1))
    assert runner.batch == 2 and runner.clock == "wall" and "torch" in runner.device
    linears = [f"blocks.{i}.{n}" for i in range(3) for n in ("attn.q", "attn.k", "attn.v", "attn.proj", "mlp.fc1",
                                                              "mlp.fc2")] + ["head"]
    assert sorted(runner.kernels) == sorted(linears)
    # 2:4 kernels were asked for (sparse_weights), but this is a CPU: every linear says why it stayed dense
    assert all(k == {"kernel": "dense", "reason": "2:4 sparse GEMMs need CUDA (to_sparse_semi_structured is GPU-only)"}
               for k in runner.kernels.values())
    module = runner.graph_module
    targets = {getattr(n.target, "__name__", str(n.target)) for n in module.graph.nodes}
    assert {"scaled_dot_product_attention", "gelu", "layer_norm"} <= targets
    assert "softmax" not in targets and "erf" not in targets  # fused into SDPA and F.gelu
    images = verification_inputs(twin.spec, 2)
    with torch.no_grad():
        assert max_abs(runner.infer(images), twin(torch.from_numpy(images)).numpy()) <= FP32_TOLERANCE
    stats = runner.benchmark(images, warmup=1, iterations=3)
    assert stats.backend == "torch" and stats.clock == "wall" and stats.to_dict()["clock"] == "wall"
    assert {"stem", "blocks.0", "blocks.1", "blocks.2", "head"} <= set(stats.per_block_ms)
    assert stats.per_block_ms.get("other", 0.0) <= 0.1 * sum(stats.per_block_ms.values())


def _single_op_model(node, inputs, outputs, initializers=(), opset=17):
    graph = helper.make_graph([node], "op", inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8 if opset < 21 else 10
    return model


def _ort(model, feeds):
    import onnxruntime as ort

    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


def _torch(model, feeds):
    module = import_onnx(model).module
    out = module(*[torch.from_numpy(v) for v in feeds.values()])
    return [o.numpy() for o in (out if isinstance(out, tuple) else (out,))]


def test_topk_keeps_the_onnx_tie_order():
    """ONNX TopK returns equal values lower index first; torch.topk does not promise that."""
    x = np.array([[1.0, 3.0, 3.0, 0.0, 3.0, 1.0, 1.0, 2.0]] * 2, np.float32)
    k = helper.make_tensor("k", TensorProto.INT64, [1], [5])
    for largest in (0, 1):
        node = helper.make_node("TopK", ["x", "k"], ["v", "i"], axis=-1, largest=largest, sorted=1)
        model = _single_op_model(node, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
                                 [helper.make_tensor_value_info("v", TensorProto.FLOAT, None),
                                  helper.make_tensor_value_info("i", TensorProto.INT64, None)], [k])
        expected, got = _ort(model, {"x": x}), _torch(model, {"x": x})
        assert np.array_equal(expected[1], got[1]) and np.array_equal(expected[0], got[0])


def test_gather_nd_with_batch_dims_matches_onnx_runtime():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5, 3), dtype=np.float32)
    idx = rng.integers(0, 5, (2, 4, 1)).astype(np.int64)
    node = helper.make_node("GatherND", ["x", "i"], ["y"], batch_dims=1)
    model = _single_op_model(node, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5, 3]),
                                    helper.make_tensor_value_info("i", TensorProto.INT64, [2, 4, 1])],
                             [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    assert np.array_equal(_ort(model, {"x": x, "i": idx})[0], _torch(model, {"x": x, "i": idx})[0])


def test_quantize_linear_rounds_half_to_even_and_saturates_like_onnx_runtime():
    x = np.array([0.5, 1.5, 2.5, -0.5, -2.5, 126.5, 300.0, -300.0, 3.49], np.float32)
    scale = helper.make_tensor("s", TensorProto.FLOAT, [], [1.0])
    zp = helper.make_tensor("z", TensorProto.INT8, [], [0])
    node = helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"])
    model = _single_op_model(node, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [9])],
                             [helper.make_tensor_value_info("y", TensorProto.INT8, None)], [scale, zp])
    expected = _ort(model, {"x": x})[0]
    assert np.array_equal(expected, _torch(model, {"x": x})[0])
    assert expected.tolist() == [0, 2, 2, 0, -2, 126, 127, -128, 3]


def test_unsupported_op_is_refused_at_build_with_one_line(tmp_path):
    node = helper.make_node("Hardmax", ["x"], ["y"])
    model = _single_op_model(node, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                             [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    onnx.save(model, str(tmp_path / "m.onnx"))
    with pytest.raises(VitrtError, match="no implementation of ONNX op Hardmax") as exc:
        get_backend("torch").build(tmp_path / "m.onnx", tmp_path, BuildOptions())
    assert "\n" not in str(exc.value) and not (tmp_path / "model.torch.onnx").exists()


@pytest.mark.skipif(HAS_CUDA, reason="CUDA is present: the refusal cannot be observed")
def test_cuda_device_without_cuda_is_refused_before_any_work(tmp_path):
    with pytest.raises(BackendUnavailableError, match="torch.cuda.is_available"):
        compile(tiny_vit(), tmp_path / "out", backend="torch", device="cuda", quiet=True)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("options, message", [
    (dict(backend="ort", device="cuda"), "--backend ort runs on the CPU"),
    (dict(backend="ort", torch_compile="default"), "needs --backend torch"),
    (dict(backend="torch", cuda_graph=True), "--cuda-graph needs a GPU"),
    (dict(backend="torch", device="tpu"), "unknown device .tpu."),
    (dict(backend="torch", device="meta"), "the torch backend runs on cpu or cuda"),
])
def test_bad_device_options_are_one_line(options, message, tmp_path):
    with pytest.raises(VitrtError, match=message):
        compile(tiny_vit(), tmp_path / "out", quiet=True, **options)
    assert not (tmp_path / "out").exists()


def test_a_torch_out_is_benchmarked_again_from_its_artifact_and_beside_ort(tmp_path):
    from vitrt.benchmarks.harness import bench_target, format_bench, parse_backends

    compile(tiny_vit(), tmp_path / "out", backend="torch", batch=2, quiet=True)
    result = bench_target(str(tmp_path / "out"), [2], iterations=2, warmup=1)
    assert result["backend"] == "torch" and result["rows"][0]["batch"] == 2 and result["rows"][0]["median_ms"] > 0
    both = bench_target(str(tmp_path / "out"), [2], backend=parse_backends("torch,ort"), iterations=2, warmup=1,
                        rounds=2, threads=1, clock="cpu")
    assert [r["backend"] for r in both["rows"]] == ["torch", "ort"] and both["rows"][0]["speedup_vs_torch"] == 1.0
    assert both["rows"][1]["speedup_vs_torch"] > 0 and "torch vs ort side by side" in format_bench(both)
    with pytest.raises(VitrtError, match="distinct backends"):
        parse_backends("ort,ort")


# --- GPU (a lent H100/H200 machine; skipped here) -------------------------------------------------------
gpu = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")


@pytest.mark.gpu
@gpu
def test_cuda_fp16_sparse_and_int8_kernels(tmp_path):
    """fp16 + 2:4 on sm80+ runs to_sparse_semi_structured GEMMs, int8 runs torch._int_mm; both like ONNX Runtime."""
    model = tiny_vit(depth=2, embed_dim=128, num_heads=2, mlp_ratio=4)
    for name, options, kind in (("fp16_24", dict(precision="fp16", sparsity="2:4", sparse_min_weights=256), "sparse24"),
                                ("int8", dict(precision="int8", **QUANT), "int8")):
        result = compile(model, tmp_path / name, backend="torch", device="cuda", batch=16, verify=True, quiet=True,
                         **options)
        runner = get_backend("torch", "cuda").load(result.artifact_path, BuildOptions())
        images = verification_inputs(result.twin.spec, 16)
        assert max_abs(runner.infer(images), run_onnx(onnx.load(str(result.onnx_path)), images, 16)) \
            <= result.manifest["verify"]["tolerance"]
        block_kernels = {v["kernel"] for k, v in runner.kernels.items() if k.startswith("blocks.")}
        assert block_kernels == ({kind} if kind == "int8" or SPARSE_GPU else {"dense"}), runner.kernels
        stats = runner.benchmark(images, warmup=2, iterations=5)
        assert stats.clock == "cuda" and stats.median_ms > 0


@pytest.mark.gpu
@gpu
def test_cuda_graph_replay_and_torch_compile_agree_with_eager(tmp_path):
    result = compile(tiny_vit(depth=2), tmp_path / "eager", backend="torch", device="cuda", batch=4, quiet=True)
    images = verification_inputs(result.twin.spec, 4)
    eager = get_backend("torch", "cuda").load(result.artifact_path, BuildOptions()).infer(images)
    for name, options in (("graphs", dict(cuda_graph=True)), ("compiled", dict(torch_compile="default"))):
        other = compile(tiny_vit(depth=2), tmp_path / name, backend="torch", device="cuda", batch=4, quiet=True,
                        **options)
        runner = get_backend("torch", "cuda").load(other.artifact_path, BuildOptions())
        assert max_abs(runner.infer(images), eager) <= FP32_TOLERANCE * 10  # TF32-free fp32 kernels may reorder sums


@pytest.mark.gpu
@gpu
def test_cuda_clock_times_gpu_work():
    from vitrt.compiler.timing import Timing, samples_ms

    a = torch.randn(2048, 2048, device="cuda")
    samples = samples_ms(lambda: a @ a, Timing(warmup=2, iterations=5, clock="cuda"))
    assert len(samples) == 5 and all(s > 0 for s in samples)


def test_a_torch_table_predicts_and_is_refined_by_a_torch_compile(tmp_path):
    """The latency-table feedback loop on the torch backend: build, predict at --bench, refine from the measurement."""
    from vitrt.benchmarks.lut_build import build_table
    from vitrt.compiler.lut import LatencyTable
    from vitrt.compiler.timing import Timing

    lut = tmp_path / "torch_tiny.json"
    build_table(lut, backend="torch", grid="tiny", batch=2, timing=Timing(warmup=0, iterations=1))
    result = compile(tiny_vit(depth=2, mlp_ratio=2), tmp_path / "out", backend="torch", batch=2, bench=True,
                     bench_iters=3, bench_warmup=1, lut=lut, refine_lut=True, quiet=True)
    latency = result.manifest["latency"]
    assert latency["clock"] == "wall" and latency["predicted_ms"] > 0 and latency["median_ms"] > 0
    refined = LatencyTable.load(lut)
    assert {p["kind"] for p in refined.points} == {"stem", "block", "head"}


def test_a_compile_leaves_the_callers_torch_threads_and_random_state_alone(tmp_path):
    """threads= sets torch's thread count process-wide while compiling; vitrt.compile gives the caller back its own
    count and its random number generator where they were."""
    import vitrt

    torch.manual_seed(5)
    want = torch.rand(1)
    torch.manual_seed(5)
    before = torch.get_num_threads()
    other = 1 if before != 1 else 2
    vitrt.compile("digits", tmp_path / "out", backend="torch", threads=other, quiet=True)
    assert torch.get_num_threads() == before and torch.equal(torch.rand(1), want)
