"""The compression stack composes: random stacks either compile and verify or are refused with one line.

A stack is drawn from every axis a compile moves — a pruning plan (with removed attention and MLP), a token-merge
schedule (ToMe, DFE, LGTM), 2:4 sparsity, the precision (fp32, fp16, bf16, int8, fp8, int4w), static or dynamic batch,
plain or distilled model, batch size — on tiny timm ViTs. Each stack must either compile with ``--verify`` (every
pass checked against its twin and its graph properties, the final graph within the declared tolerance), or be
refused with a VitrtError whose message is one line, leaving nothing behind. Never a traceback.

The default run checks a fixed sample of 20 stacks; ``python -m pytest -m slow tests/test_composition.py`` draws
200 (the number recorded in benchmarks/results/composition.md).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from vitrt.compiler.errors import VitrtError
from vitrt.compiler.models import spec_of_timm
from vitrt.pipeline.driver import compile
from vitrt.transforms.prune.plan import BlockPlan, PruningPlan

from conftest import tiny_vit

DEPTH = 3
# bf16 needs --backend trt (ONNX Runtime has no bf16 kernels): on the default ort backend its stacks are refused
# in one line; tests/test_precision.py composes bf16 with pruning, merging and 2:4 under the pass manager.
PRECISIONS = ("fp32", "fp16", "bf16", "int8", "fp8", "int4w")


@st.composite
def pruning_plans(draw, spec):
    """Random kept indices: emb, and per block heads (0 = attention removed), qk / v dims, MLP (0 = removed)."""
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))

    def keep(size, count):
        return tuple(sorted(rng.choice(size, count, replace=False).tolist()))

    emb = keep(spec.emb, draw(st.sampled_from([spec.emb, 48, 32])))
    blocks = []
    for b in spec.blocks:
        heads = draw(st.sampled_from([b.heads, 1, 0]))
        qk = keep(b.qk, draw(st.sampled_from([b.qk, 16, 24]))) if heads else ()
        v = keep(b.v, draw(st.sampled_from([b.v, 16]))) if heads else ()
        mlp = keep(b.mlp, draw(st.sampled_from([b.mlp, 128, 64, 0])))
        blocks.append(BlockPlan(keep(b.heads, heads), qk, v, mlp))
    base = PruningPlan.keep_all(spec)
    return PruningPlan(emb, tuple(blocks), base.original_emb, base.original_blocks)


@st.composite
def stacks(draw):
    distilled = draw(st.booleans())
    model = tiny_vit(distilled=distilled, depth=DEPTH)
    spec = spec_of_timm(model)
    options: dict = {"precision": draw(st.sampled_from(PRECISIONS))}
    dynamic = draw(st.booleans())
    options.update(dynamic_batch=dynamic, batch=draw(st.integers(1, 3)))
    plan = draw(st.none() | pruning_plans(spec))
    merge = draw(st.sampled_from(["none", "tome", "dfe", "lgtm", "ramp"]))
    if merge != "none":
        options["tome"] = "3,0.5" if merge == "ramp" else str(draw(st.integers(1, 5)))
        options["dfe_skip"] = 1 if merge == "dfe" else 0
        if merge == "lgtm":
            options["lgtm_window"] = 2
    if draw(st.booleans()):
        options.update(sparsity="2:4", sparse_min_weights=256)
    if options["precision"] in ("int8", "fp8"):
        options.update(calib_data="synthetic", calib_images=16)
    return model, plan, options


def check_stack(model, plan, options, tmp_path):
    out = tmp_path / "out"
    if plan is not None:
        plan.save(tmp_path / "plan.json")
        options = {**options, "prune_plan": tmp_path / "plan.json"}
    try:
        result = compile(model, out, verify=True, quiet=True, **options)
    except VitrtError as exc:
        assert "\n" not in str(exc) and str(exc), f"refusal is not one line: {exc!r}"
        assert not out.exists(), "a refused compile left OUT behind"
        event(f"refused: {str(exc)[:60]}")
        return "refused"
    event(f"compiled {options['precision']}")
    for feature, present in (("pruned", plan is not None), ("merged", "tome" in options),
                             ("2:4", "sparsity" in options), ("dynamic batch", options["dynamic_batch"])):
        if present:
            event(f"compiled with {feature}")
    verify = result.manifest["verify"]
    assert verify["ok"] and verify["max_abs_err"] <= verify["tolerance"], verify
    assert (out / "model.onnx").is_file() and (out / result.manifest["artifact"]).is_file()
    return "compiled"


COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
              print_blob=True)


@settings(max_examples=20, derandomize=True, **COMMON)
@given(stack=stacks())
def test_a_fixed_sample_of_stacks_composes(stack, tmp_path_factory):
    check_stack(*stack, tmp_path_factory.mktemp("stack"))


@pytest.mark.slow
@settings(max_examples=200, **COMMON)
@given(stack=stacks())
def test_random_stacks_compose(stack, tmp_path_factory):
    check_stack(*stack, tmp_path_factory.mktemp("stack"))
