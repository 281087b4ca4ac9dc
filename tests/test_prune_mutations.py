"""Tests from two mutation audits of vitrt/transforms/prune and vitrt/transforms/lowrank: each pins a behaviour that a
surviving mutation changed without any other test noticing.

Tiny models, no training beyond what a function does on its own, no wall clock, no network.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from conftest import DIGITS_LUT, tiny_vit
from vitrt.calib.digits import ImageSet
from vitrt.compiler.cost import block_flops, vit_flops
from vitrt.compiler.errors import VitrtError
from vitrt.compiler.graph import GraphView
from vitrt.compiler.lower import lower
from vitrt.compiler.models import canonicalize
from vitrt.compiler.pass_manager import PassContext, PassManager
from vitrt.compiler.target import TargetConfig
from vitrt.compiler.weights import parameter_state
from vitrt.transforms.base import PlanContext
from vitrt.transforms.prune import dcvit, planner
from vitrt.transforms.prune.config import PruneConfig
from vitrt.transforms.prune.gates import gated_forward, hessian_importance, ones_gates
from vitrt.transforms.prune.graph_pass import PrunePass
from vitrt.transforms.prune.plan import BlockPlan, PlanError, PruningPlan
from vitrt.transforms.prune.search import SearchConfig, revit_dims, search

BATCH = 2


def _twin(depth=3, **kwargs):
    return canonicalize(tiny_vit(depth=depth, **kwargs))


def _flops(spec):
    return float(vit_flops(spec))


def _mixed_plan(spec):
    """Block 0: one head, half the MLP; block 1: attention removed; block 2: MLP removed (tiny_vit depth 3)."""
    plan = PruningPlan.keep_all(spec)
    blocks = list(plan.blocks)
    blocks[0] = BlockPlan((1,), tuple(range(16)), tuple(range(16)), tuple(range(0, 256, 2)))
    blocks[1] = BlockPlan((), (), (), tuple(range(32, 64)))
    blocks[2] = BlockPlan((0, 1), tuple(range(16)), tuple(range(16)), ())
    return dataclasses.replace(plan, blocks=tuple(blocks)).validate()


# --- the plan as data ---------------------------------------------------------------------------------------
def test_summary_counts_kept_heads_and_mlp_against_the_dense_totals():
    """summary(): 'kept/total' over the original dims, and which blocks lost attention vs MLP."""
    spec = _twin().spec
    summary = _mixed_plan(spec).summary()
    assert summary["heads"] == "3/6" and summary["mlp"] == "160/768" and summary["emb"] == "64/64"
    assert summary["attention_removed"] == [1] and summary["mlp_removed"] == [2]


def test_a_plan_keeping_no_emb_channel_is_refused():
    """validate(): an empty emb is refused with one line (not left to a later shape error)."""
    plan = PruningPlan.keep_all(_twin().spec)
    with pytest.raises(PlanError, match="keeps no emb channel"):
        dataclasses.replace(plan, emb=()).validate()


def test_a_block_keeping_heads_but_no_v_dim_is_refused():
    """validate(): heads kept with qk dims but no v dim is refused (either empty is enough)."""
    plan = PruningPlan.keep_all(_twin().spec)
    blocks = list(plan.blocks)
    blocks[0] = BlockPlan((0,), tuple(range(16)), (), blocks[0].mlp)
    with pytest.raises(PlanError, match="block 0 keeps 1 heads but no qk or v dim"):
        dataclasses.replace(plan, blocks=tuple(blocks)).validate()


def test_a_plan_for_another_emb_is_refused_even_when_the_blocks_match():
    """check_matches(): the emb is compared on its own, not only through the block dims."""
    spec = _twin().spec
    plan = PruningPlan.keep_all(spec)
    with pytest.raises(PlanError, match="made for emb 64, the model has emb 32"):
        plan.check_matches(spec.replace(emb=32))


def test_a_plan_naming_the_block_one_past_the_last_is_refused(tmp_path):
    """from_dict(): block key == depth is an unknown block (off-by-one in the key check)."""
    data = json.loads(PruningPlan.keep_all(_twin().spec).to_json())
    data["blocks"]["3"] = data["blocks"]["0"]
    with pytest.raises(PlanError, match="unknown block '3'"):
        PruningPlan.from_dict(data)


def test_a_plan_naming_a_block_other_than_by_its_index_is_refused():
    """from_dict(): "01" is not block 1's key (it was accepted, then ignored for the entry under "1")."""
    data = json.loads(PruningPlan.keep_all(_twin().spec).to_json())
    data["blocks"]["01"] = {"heads": [], "qk": [], "v": [], "mlp": []}
    with pytest.raises(PlanError, match="unknown block '01'"):
        PruningPlan.from_dict(data)


def test_unsorted_or_boolean_indices_are_refused():
    """from_dict(): kept indices must be ascending integers (true/false are not indices)."""
    data = json.loads(PruningPlan.keep_all(_twin().spec).to_json())
    unsorted = json.loads(json.dumps(data))
    unsorted["blocks"]["0"]["mlp"] = [1, 0] + list(range(2, 256))
    with pytest.raises(PlanError, match="sorted ascending"):
        PruningPlan.from_dict(unsorted)
    boolean = json.loads(json.dumps(data))
    boolean["blocks"]["0"]["heads"] = [False, True]
    boolean.pop("dims")
    with pytest.raises(PlanError, match="expected a list of integer indices"):
        PruningPlan.from_dict(boolean)


# --- the graph pass -------------------------------------------------------------------------------------------
def test_a_keep_all_plan_with_fine_tuned_weights_modifies_graph_and_twin():
    """PrunePass: a plan that keeps every index but carries weights is a change; the twin gets the weights."""
    twin = _twin(depth=2)
    weights = {name: value + 0.5 for name, value in parameter_state(twin).items()}
    plan = PruningPlan.keep_all(twin.spec).with_weights(weights)
    view = GraphView.from_onnx(lower(twin, batch=BATCH))
    result = PassManager([PrunePass(plan)], check_properties=True).run(view, PassContext(), twin=twin)
    assert result.records[0].modified
    state = result.twin.state_dict()
    assert all(torch.equal(state[k], torch.from_numpy(np.asarray(v))) for k, v in weights.items())


def test_pass_stats_count_removed_attention_and_mlp_separately():
    """PrunePass stats: attention_removed and mlp_removed count their own branches."""
    twin = _twin()
    plan = PruningPlan.keep_all(twin.spec)
    blocks = list(plan.blocks)
    blocks[0] = BlockPlan((), (), (), blocks[0].mlp)
    blocks[1] = BlockPlan((), (), (), blocks[1].mlp)
    plan = dataclasses.replace(plan, blocks=tuple(blocks)).validate()
    result = PrunePass(plan).run(GraphView.from_onnx(lower(twin, batch=BATCH)), PassContext())
    assert result.stats["attention_removed"] == 2 and result.stats["mlp_removed"] == 0


# --- importance -----------------------------------------------------------------------------------------------
def test_hessian_importance_is_a_mean_over_batches():
    """eq. 6 averages (dL/dg)^2 over batches: identical batches give the one-batch score, not a multiple."""
    twin = _twin(depth=2)
    image = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    data = ImageSet(image.repeat(16, 1, 1, 1), None)
    one = hessian_importance(twin, data, batch_size=8, batches=1)
    two = hessian_importance(twin, data, batch_size=8, batches=2)
    assert all(torch.allclose(one[k], two[k], rtol=1e-4, atol=1e-12) for k in one)
    assert float(one["blocks.0.heads"].sum()) > 0


def test_hessian_importance_uses_the_given_teacher():
    """Without labels the loss is KL + CE to the *teacher's* logits (DC-ViT scores a compressed student this way)."""
    twin = _twin(depth=2)
    other = copy.deepcopy(twin)
    with torch.no_grad():
        other.head.weight.copy_(torch.randn(other.head.weight.shape, generator=torch.Generator().manual_seed(1)))
    data = ImageSet(torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(2)), None)
    own = hessian_importance(twin, data, batch_size=8, batches=1)
    same = hessian_importance(twin, data, batch_size=8, batches=1, teacher=copy.deepcopy(twin))
    taught = hessian_importance(twin, data, batch_size=8, batches=1, teacher=other)
    assert torch.allclose(own["blocks.0.mlp"], same["blocks.0.mlp"])
    assert not torch.allclose(own["blocks.0.mlp"], taught["blocks.0.mlp"])


def test_hessian_importance_uses_the_labels_when_the_data_has_them():
    """Labelled data: L is cross entropy with the labels (checked against the gate gradient computed directly)."""
    twin = _twin(depth=2)
    images = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        labels = (twin(images).argmax(1) + 1) % 10  # never the model's own argmax
    scores = hessian_importance(twin, ImageSet(images, labels), batch_size=8, batches=1)
    gates = {k: g.requires_grad_(True) for k, g in ones_gates(twin.spec).items()}
    loss = torch.nn.functional.cross_entropy(gated_forward(twin, gates, images), labels)
    grads = dict(zip(gates, torch.autograd.grad(loss, list(gates.values()))))
    assert torch.allclose(scores["blocks.1.heads"], grads["blocks.1.heads"] ** 2, rtol=1e-4)


# --- search ---------------------------------------------------------------------------------------------------
def _uniform(spec, value=100.0):
    from vitrt.transforms.prune.gates import gate_sizes

    return {key: torch.full((n,), value) for key, n in gate_sizes(spec).items()}


def test_search_removes_the_least_important_indices_of_a_unit():
    """A removal takes the unit's lowest-scored kept indices (here MLP channels 0..15), never the highest."""
    spec = _twin(depth=1).spec

    def importance(kept):
        scores = _uniform(spec)
        scores["blocks.0.heads"] = torch.full((2,), 1e4)
        scores["blocks.0.mlp"] = torch.arange(256, dtype=torch.float32)
        return scores
    result = search(spec, importance, _flops, SearchConfig(target=0.999, eta=0.0, rounds=1))
    assert result.steps == 1 and result.plan.blocks[0].mlp == tuple(range(16, 256))


def test_search_can_remove_a_blocks_last_head():
    """heads >= 1 unless the last head goes: an unimportant single head (with its qk/v) is removed, attention too."""
    spec = _twin(depth=1, num_heads=1).spec

    def importance(kept):
        scores = _uniform(spec, 1.0)
        for kind in ("heads", "qk", "v"):
            scores[f"blocks.0.{kind}"] = torch.zeros_like(scores[f"blocks.0.{kind}"])
        return scores
    result = search(spec, importance, _flops, SearchConfig(target=0.999, eta=0.05, rounds=1))
    assert result.removed["heads"] == 1 and result.plan.blocks[0] == BlockPlan((), (), (), tuple(range(256)))


def test_alignment_drops_the_least_important_indices():
    """The first step cuts unaligned dims to their rule by importance (emb 72 -> the 64 most important)."""
    spec = _twin(depth=1, embed_dim=72, num_heads=3, mlp_ratio=3.0).spec  # emb 72, qk/v 24, mlp 216

    def importance(kept):
        return {key: torch.arange(len(s), 0, -1, dtype=torch.float32) for key, s in _uniform(spec).items()}
    plan = search(spec, importance, _flops, SearchConfig(target=1.0)).plan  # alignment only
    assert plan.emb == tuple(range(64)) and plan.blocks[0].qk == tuple(range(24))  # qk 24 is aligned
    assert plan.blocks[0].mlp == tuple(range(208))


def test_revit_heads_round_to_the_nearest_even_count():
    """Table 6: H = eps*EMB/100 to the nearest even number (>= 1): emb 64, eps 2 -> 1.28 -> 2 heads."""
    spec = _twin(depth=4).spec  # emb 64, 2 heads
    assert [d["heads"] for d in revit_dims(spec)] == [1, 2, 2, 1]


# --- the planner ----------------------------------------------------------------------------------------------
class _FewImages(PlanContext):
    def data(self, source, split="train", limit=None, labelled=False):
        return super().data(source, split, limit=min(limit or 16, 16), labelled=labelled)


def _ctx(twin, **kwargs):
    return _FewImages(target=TargetConfig(batch=BATCH), teacher=copy.deepcopy(twin), **kwargs)


def test_planner_reports_the_pruned_models_flops_and_emb():
    """plan().meta flops/params 'after' are the pruned spec's; report_fields' emb is the kept count."""
    twin = _twin(depth=4)
    plan = planner.plan(twin, _ctx(twin), PruneConfig(revit=True, importance="magnitude"))
    pruned = plan.pruned_spec(twin.spec)
    assert plan.meta["flops"] == {"before": vit_flops(twin.spec), "after": vit_flops(pruned)}
    emb_pruned = dataclasses.replace(plan, emb=tuple(range(48)))
    assert planner.report_fields(emb_pruned)["emb"] == 48


def test_planner_passes_eta_to_the_search(monkeypatch):
    """--eta reaches the search: at 0 the least important unit goes (MLP), at 1e3 the biggest saving (EMB)."""
    twin = _twin()
    monkeypatch.setattr(planner, "latency_model", lambda ctx: _flops)
    removed = [planner.plan(twin, _ctx(twin), PruneConfig(fraction=0.999, eta=eta, importance="magnitude"))
               .meta["removed_units"] for eta in (0.0, 1e3)]
    assert removed[0]["mlp"] == 1 and removed[1]["emb"] == 1


def test_planner_latency_model_refuses_to_extrapolate_outside_the_table():
    """latency_model(): a spec outside the table's grid raises (the search skips that removal), no clamping."""
    from vitrt.compiler.lut import LatencyTable

    twin = _twin(depth=1, patch_size=4)  # img 32, patch 4: the digits table's stem
    ctx = PlanContext(target=TargetConfig(batch=8), teacher=twin, lut=LatencyTable.load(DIGITS_LUT))
    latency = planner.latency_model(ctx)
    assert latency(twin.spec) > 0
    wide = twin.spec.with_blocks([dataclasses.replace(twin.spec.blocks[0], mlp=384)])  # the grid stops at 256
    with pytest.raises(VitrtError):
        latency(wide)


# --- options --------------------------------------------------------------------------------------------------
def test_nvit_options_accept_their_bounds_and_refuse_beyond():
    """--prune 1 and --eta 0 are valid; eta nan/inf, negative fine-tuning epochs, and fine-tuning without
    pruning are refused."""
    assert PruneConfig(fraction=1.0).validate().fraction == 1.0
    assert PruneConfig(fraction=0.5, eta=0.0).validate().eta == 0.0
    for eta in (float("nan"), float("inf"), -0.1):
        with pytest.raises(VitrtError, match="--eta must be a finite number >= 0"):
            PruneConfig(fraction=0.5, eta=eta).validate()
    with pytest.raises(VitrtError, match="--finetune-epochs must be >= 0"):
        PruneConfig(fraction=0.5, finetune_epochs=-1).validate()
    with pytest.raises(VitrtError, match="fine-tunes a pruned model"):
        PruneConfig(finetune_epochs=1).validate()
    with pytest.raises(VitrtError, match="--prune-samples must be >= 1"):
        PruneConfig(fraction=0.5, samples=0).validate()


def test_dcvit_options_refuse_out_of_range_values():
    """--dcvit-macs 1, --few-shot 0, negative epochs, --dcvit-mlp outside [0, 1] and --finetune-epochs are
    refused by validate(), one line each."""
    base = dict(dcvit_macs=0.7, data="digits")
    for extra, message in (({"dcvit_macs": 1.0}, r"must be a fraction of the MACs in \(0, 1\)"),
                           ({"few_shot": 0}, "--few-shot 0 must be >= 1"),
                           ({"dcvit_epochs": -1}, "--dcvit-epochs -1 must be >= 0"),
                           ({"dcvit_score_epochs": -2}, "--dcvit-score-epochs -2 must be >= 0"),
                           ({"dcvit_mlp": 1.5}, r"--dcvit-mlp 1.5 must be a fraction in \[0, 1\]"),
                           ({"dcvit_mlp": -0.1}, r"must be a fraction in \[0, 1\]"),
                           ({"finetune_epochs": 2}, "NViT's fine-tuning")):
        with pytest.raises(VitrtError, match=message) as info:
            PruneConfig(**{**base, **extra}).validate()
        assert "\n" not in str(info.value)


def test_dcvit_settings_from_options():
    """settings_from(): every given DC-ViT knob reaches the Settings; the defaults are the documented ones."""
    from vitrt.transforms.prune.dcvit_structure import Settings, settings_from

    defaults = Settings(macs=0.7)
    assert (defaults.mlp, defaults.epochs, defaults.score_epochs, defaults.lr) == (0.5, 50, 10, 2e-4)
    options = PruneConfig(dcvit_macs=0.6, data="digits", importance="magnitude", dcvit_mlp=0.25, dcvit_epochs=3,
                          dcvit_score_epochs=0, dcvit_lr=1e-4, dcvit_refit=True).validate()
    s = settings_from(options, seed=7)
    assert (s.macs, s.importance, s.mlp, s.epochs, s.score_epochs, s.lr, s.refit, s.seed) == \
        (0.6, "magnitude", 0.25, 3, 0, 1e-4, True, 7)


def test_a_learning_rate_of_one_is_refused():
    """check_finetune(): the rate must lie in the open interval (0, 1)."""
    from vitrt.transforms.prune.dcvit_structure import check_finetune

    with pytest.raises(VitrtError, match="must be a learning rate in"):
        check_finetune(1.0, "block")


# --- DC-ViT structure -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dc_twin():
    return canonicalize(tiny_vit(depth=4))  # emb 64, 2 heads, mlp 256, 17 tokens


def test_whole_block_removal_never_lands_above_the_target(dc_twin):
    """--dcvit-whole-blocks: the fewest whole blocks whose removal reaches the target (rounded up, not nearest)."""
    spec = dc_twin.spec
    for target in np.arange(0.30, 0.96, 0.05):
        shape = dcvit.structure(spec, dcvit.Settings(macs=float(target), whole_blocks=True))
        assert shape.macs_fraction <= target + 1e-9
        if shape.blocks > 1:
            fewer = 1 - (shape.blocks - 1) * (1 - shape.macs_fraction) / shape.blocks
            assert fewer > target


def test_a_spare_of_exactly_sixteen_channels_is_handed_out(dc_twin):
    """Two attention modules and 16 MLP channels to remove at --dcvit-mlp 1: widths 256 and 240 (the spare 16
    goes to the first block), landing exactly on the target."""
    from vitrt.compiler.cost import block_flops

    spec = dc_twin.spec
    block = spec.blocks[0]
    attention = block_flops(spec.emb, block) - block_flops(spec.emb, dataclasses.replace(block, heads=0))
    macs = 1 - (2 * attention + 16 * 4 * block.tokens * spec.emb) / vit_flops(spec)
    shape = dcvit.structure(spec, dcvit.Settings(macs=macs, mlp=1.0))
    assert shape.mlp == (256, 240) and shape.macs_fraction == pytest.approx(macs)


def test_candidate_width_rounds_the_preferred_fraction_to_the_nearest_aligned_width(dc_twin):
    """candidate_width(): 0.3 of 256 = 76.8 channels -> 80 (nearest multiple of 16), 0.5 -> 128."""
    spec = dc_twin.spec
    assert dcvit.candidate_width(spec, dcvit.Settings(macs=0.7, mlp=0.3)) == 80
    assert dcvit.candidate_width(spec, dcvit.Settings(macs=0.7)) == 128


def test_dcvit_refuses_a_model_whose_blocks_lack_attention_or_mlp(dc_twin):
    """uniform_block(): blocks alike but without attention (or MLP) are refused in one line, not a ZeroDivision."""
    spec = dc_twin.spec
    for change in ({"heads": 0, "qk": 0, "v": 0}, {"mlp": 0}):
        bare = spec.with_blocks([dataclasses.replace(b, **change) for b in spec.blocks])
        with pytest.raises(VitrtError, match="all alike and complete"):
            dcvit.structure(bare, dcvit.Settings(macs=0.7))


# --- DC-ViT compression ---------------------------------------------------------------------------------------
def test_the_mimicked_prefix_trains_the_whole_stem(dc_twin):
    """MimicPrefix.trainable(): patch embedding, cls token, position embedding and blocks up to ``last``."""
    prefix = dcvit.MimicPrefix(dc_twin, 1)
    ids = {id(p) for p in prefix.trainable()}
    assert {id(dc_twin.pos_embed), id(dc_twin.cls_token), id(dc_twin.patch_embed.weight)} <= ids
    assert id(dc_twin.blocks[1].mlp.fc1.weight) in ids and id(dc_twin.blocks[2].mlp.fc1.weight) not in ids


def test_the_refit_survives_collinear_kept_channels(dc_twin):
    """refit_mlp(): the ridge term keeps the solve finite when two kept channels are identical."""
    twin = copy.deepcopy(dc_twin)
    with torch.no_grad():
        twin.blocks[1].mlp.fc1.weight[1].copy_(twin.blocks[1].mlp.fc1.weight[0])
        twin.blocks[1].mlp.fc1.bias[1].copy_(twin.blocks[1].mlp.fc1.bias[0])
    images = ImageSet(torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(5)), None)
    scores = torch.zeros(256)
    scores[:16] = 1.0  # keep channels 0..15, 0 and 1 identical
    student, _ = dcvit.compress_block(twin, PruningPlan.keep_all(twin.spec), 1, 16, scores, refit_on=images)
    fc2 = student.blocks[1].mlp.fc2
    assert torch.isfinite(fc2.weight).all() and fc2.weight.abs().max() < 1e3


def test_refit_with_no_kept_channel_removes_the_block(dc_twin):
    """compress_block(width 0, refit_on=...): nothing to refit, the block is removed whole (no crash)."""
    images = ImageSet(torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(6)), None)
    student, plan = dcvit.compress_block(dc_twin, PruningPlan.keep_all(dc_twin.spec), 2, 0, None, refit_on=images)
    assert plan.blocks[2] == BlockPlan((), (), (), ()) and student.blocks[2].attn is None


def test_the_mlp_only_ranking_keeps_the_attention_of_each_candidate(dc_twin, monkeypatch):
    """recoverability() under mlp_only scores each block with its MLP removed and its attention kept."""
    calls = []
    real = dcvit.compress_block

    def spy(*args, **kwargs):
        calls.append(kwargs.get("keep_attention", False))
        return real(*args, **kwargs)

    class Metric:
        def evaluate(self, model):
            return {"loss": 0.0}

    monkeypatch.setattr(dcvit, "compress_block", spy)
    few = ImageSet(torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(7)), None)
    settings = dcvit.Settings(macs=0.7, mlp_only=True, score_epochs=0, epochs=0)
    dcvit.recoverability(dc_twin, dc_twin, few, Metric(), settings)
    assert calls == [True] * 4


# --- low rank -------------------------------------------------------------------------------------------------
def test_rank_for_energy_never_exceeds_the_number_of_singular_values():
    """rank_for_energy(): rounding up to the alignment stops at full rank (20 values, align 16 -> 20)."""
    from vitrt.transforms.lowrank.planner import rank_for_energy

    assert rank_for_energy(np.ones(20), 1.0, 16) == (20, pytest.approx(1.0))


def test_low_rank_factors_are_balanced():
    """factors_for(): u and weight both carry sqrt(S), so their Frobenius norms are equal (fine-tuning range)."""
    from vitrt.transforms.lowrank.planner import factors_for

    weight = np.random.default_rng(0).standard_normal((48, 32)) * np.linspace(5, 0.1, 32)
    f = factors_for(weight, np.zeros(48), 8)
    assert np.linalg.norm(f["u"]) == pytest.approx(np.linalg.norm(f["weight"]), rel=1e-5)
    assert np.allclose(f["weight"] @ f["u"], np.linalg.svd(weight)[0][:, :8] * np.linalg.svd(weight)[1][:8]
                       @ np.linalg.svd(weight)[2][:8], atol=1e-4)


def test_candidate_layers_skip_attention_that_pruning_removed():
    """candidate_layers(): a block without attention offers no attn.* layer (its linears do not exist)."""
    from vitrt.transforms.lowrank.planner import candidate_layers

    spec = _twin().spec
    blocks = list(spec.blocks)
    blocks[1] = dataclasses.replace(blocks[1], heads=0, qk=0, v=0)
    names = candidate_layers(spec.replace(blocks=tuple(blocks)), "blocks.*.attn.*")
    assert not any(n.startswith("blocks.1.") for n in names) and "blocks.0.attn.q" in names


def test_candidate_layers_come_in_model_order():
    """candidate_layers(): the union of the patterns, listed in the model's order (not the patterns')."""
    from vitrt.transforms.lowrank.planner import candidate_layers

    names = candidate_layers(_twin(depth=2).spec, "blocks.1.mlp.fc1,blocks.0.mlp.fc2")
    assert names == ["blocks.0.mlp.fc2", "blocks.1.mlp.fc1"]


def test_lowrank_refuses_negative_fine_tuning_epochs():
    """LowRankConfig.validate(): --lowrank-finetune-epochs -1 is refused."""
    from vitrt.transforms.lowrank.config import LowRankConfig

    with pytest.raises(VitrtError, match="--lowrank-finetune-epochs must be >= 0"):
        LowRankConfig(energy=0.9, finetune_epochs=-1).validate()


def test_lowrank_plan_refuses_a_rank_above_the_layer_and_a_layer_twice():
    """LowRankPlan: rank > min(K, N) and a duplicated layer are refused (one line)."""
    from vitrt.transforms.lowrank.plan import LayerRank, LowRankPlan, LowRankPlanError

    def factors(name, k, n, r):
        return {f"{name}.u": np.zeros((r, k)), f"{name}.weight": np.zeros((n, r)), f"{name}.bias": np.zeros(n)}

    with pytest.raises(LowRankPlanError, match="rank 80 is outside 0..64"):
        LowRankPlan((LayerRank("blocks.0.mlp.fc1", 64, 128, 80, 1.0),), 16, factors("blocks.0.mlp.fc1", 64, 128, 80))
    layer = LayerRank("blocks.0.mlp.fc1", 64, 128, 16, 0.5)
    with pytest.raises(LowRankPlanError, match="lists a layer twice"):
        LowRankPlan((layer, layer), 16, factors("blocks.0.mlp.fc1", 64, 128, 16))


def test_lowrank_pass_reports_the_parameters_it_saved():
    """LowRankPass stats: params_saved = sum of K*N - r*(K + N) over the factored layers."""
    from vitrt.transforms.lowrank import planner as lowrank_planner
    from vitrt.transforms.lowrank.graph_pass import LowRankPass

    twin = _twin(depth=2, mlp_ratio=2.0)
    plan = lowrank_planner.plan_with_ranks(twin, {"blocks.0.mlp.fc1": 16})
    result = LowRankPass(plan).run(GraphView.from_onnx(lower(twin, batch=BATCH)), PassContext())
    assert result.stats["params_saved"] == 64 * 128 - 16 * (64 + 128)


def test_search_rescores_with_a_removed_attention_branch_fully_gone():
    """After a block's last head goes, later re-scorings see its qk/v kept lists empty (the branch is gone), and
    importance is never re-scored once the target is met."""
    from vitrt.transforms.prune.search import _State

    spec = _twin(depth=2, num_heads=1).spec
    state, goal, calls = _State(spec), 0.6 * _flops(spec), []

    def importance(kept):
        calls.append(({k: list(v) for k, v in kept.items()}, _flops(state.spec_of(kept))))
        scores = _uniform(spec, 1.0)
        for kind in ("heads", "qk", "v"):
            scores[f"blocks.0.{kind}"] = torch.zeros_like(scores[f"blocks.0.{kind}"])
        return scores
    result = search(spec, importance, _flops, SearchConfig(target=0.6, eta=0.05, rounds=8))
    assert result.plan.blocks[0].heads == () and len(calls) >= 2
    later = [kept for kept, _ in calls[1:]]
    assert all(kept["blocks.0.qk"] == [] and kept["blocks.0.v"] == [] for kept in later if not kept["blocks.0.heads"])
    assert any(not kept["blocks.0.heads"] for kept in later)
    assert all(ms > goal for _, ms in calls)


def test_the_dcvit_metric_set_reads_at_most_the_limit(dc_twin):
    """metric_set(): --dcvit-metric reads at most METRIC_LIMIT images of its source."""
    from vitrt.calib.data import synthetic

    limits = []

    class Ctx(PlanContext):
        def data(self, source, split="train", limit=None, labelled=False):
            limits.append((source, limit))
            return synthetic(32, 4, seed=0)

    ctx = Ctx(target=TargetConfig(batch=BATCH), teacher=dc_twin)
    options = PruneConfig(dcvit_macs=0.7, data="digits", dcvit_metric="synth:somewhere").validate()
    metric, info = dcvit.metric_set(ctx, options)
    assert limits == [("synth:somewhere", dcvit.METRIC_LIMIT)] and info["source"] == "synth:somewhere"


# --- a bug the audit found: negative MLP widths where attention outweighs the MLP ------------------------------
@pytest.mark.parametrize("macs", [0.78, 0.7, 0.5, 0.3])
def test_structure_widths_stay_in_range_when_attention_outweighs_the_mlp(macs):
    """structure(): every compressed block keeps 0..mlp channels and the fraction it reports is the real one, at or
    below the target, also when a block's attention costs more MACs than its MLP (257 tokens, MLP ratio 1)."""
    spec = canonicalize(tiny_vit(depth=4, patch_size=2, mlp_ratio=1.0)).spec
    block = spec.blocks[0]
    shape = dcvit.structure(spec, dcvit.Settings(macs=macs))
    assert all(0 <= w <= block.mlp for w in shape.mlp)
    compressed = dataclasses.replace(spec, blocks=tuple(
        dataclasses.replace(block, heads=0, mlp=w) for w in shape.mlp) + spec.blocks[shape.blocks:])
    assert shape.macs_fraction == pytest.approx(_flops(compressed) / _flops(spec))
    assert shape.macs_fraction <= macs + 1e-9


# --- from the second audit (the mutations the first did not run) ----------------------------------------------
@pytest.fixture(scope="module")
def dc_spec(dc_twin):
    return dc_twin.spec


def _costs(spec):
    block = spec.blocks[0]
    attention = block_flops(spec.emb, block) - block_flops(spec.emb, dataclasses.replace(block, heads=0))
    mlp = block_flops(spec.emb, block) - attention
    return attention, mlp / block.mlp, vit_flops(spec)


# --- DC-ViT structure -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("preferred", [0.0, 0.5, 1.0])
def test_structure_lands_within_one_aligned_step_per_block_below_every_target(dc_spec, preferred):
    """structure() on a fine grid of targets and preferred fractions: never more blocks than the model has, widths
    aligned and in range, the reported fraction the real one, at or below the target and at most 16 MLP channels
    per compressed block below it (an MLP-heavy model: no attention module overshoots on its own)."""
    spec = dc_spec
    attention, channel, dense = _costs(spec)
    for macs in np.linspace(0.12, 0.9, 157):
        macs = float(macs)
        shape = dcvit.structure(spec, dcvit.Settings(macs=macs, mlp=preferred))
        assert 1 <= shape.blocks <= spec.depth
        assert all(w % 16 == 0 and 0 <= w <= spec.blocks[0].mlp for w in shape.mlp)
        compressed = spec.with_blocks([dataclasses.replace(b, heads=0, mlp=shape.mlp[i]) if i < shape.blocks else b
                                       for i, b in enumerate(spec.blocks)])
        fraction = vit_flops(compressed) / dense
        assert fraction == pytest.approx(shape.macs_fraction, abs=1e-12)
        assert macs - 16 * channel * shape.blocks / dense - 1e-12 <= fraction <= macs + 1e-9, macs


@pytest.mark.parametrize("k", [1.5, 2.6])
def test_no_more_blocks_lose_attention_than_the_saving_pays_for(dc_spec, k):
    """At --dcvit-mlp 1 the preferred count rounds up past what the saving pays for (k attention modules' worth,
    k = 1.5 or 2.6): floor(k) blocks are compressed, not round(k) with whole MLPs far below the target."""
    attention, channel, dense = _costs(dc_spec)
    macs = 1 - k * attention / dense
    shape = dcvit.structure(dc_spec, dcvit.Settings(macs=macs, mlp=1.0))
    assert shape.blocks == math.floor(k)
    assert macs - 16 * channel * shape.blocks / dense <= shape.macs_fraction <= macs + 1e-9


def test_a_fractional_channel_count_to_remove_rounds_up(dc_spec):
    """Two attention modules and 16.5 MLP channels to remove at --dcvit-mlp 1: 17 channels, aligned to 32 (widths
    240 and 240), never 16 (256 and 240), which would land above the target."""
    attention, channel, dense = _costs(dc_spec)
    macs = 1 - (2 * attention + 16.5 * channel) / dense
    shape = dcvit.structure(dc_spec, dcvit.Settings(macs=macs, mlp=1.0))
    assert shape.mlp == (240, 240) and shape.macs_fraction <= macs


# --- DC-ViT compression ---------------------------------------------------------------------------------------
def test_compress_refits_each_compressed_blocks_mlp_with_refit_set(dc_twin):
    """compress() with ``Settings.refit`` (--dcvit-refit) re-solves each compressed block's fc2 on the few-shot
    images before the (here: no) fine-tuning: same structure as without, different fc2 weights, and exactly the
    weights compress_block(refit_on=few_shot) gives."""
    import torch

    from vitrt.calib.digits import ImageSet
    from vitrt.calib.synthesis import MetricSet
    from vitrt.transforms.prune.plan import PruningPlan

    twin = dc_twin
    images = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0)).clamp(-1, 1)
    few_shot = ImageSet(images, None)
    metric = MetricSet.of(ImageSet(images[:2], None), twin)
    plain = dcvit.Settings(macs=0.8, epochs=0, importance="magnitude")
    assert dcvit.structure(twin.spec, plain).blocks == 1
    found, _ = dcvit.compress(twin, twin, few_shot, metric, plain, [2, 0, 1, 3])
    refit, _ = dcvit.compress(twin, twin, few_shot, metric, dataclasses.replace(plain, refit=True), [2, 0, 1, 3])
    assert refit.blocks == found.blocks and found.blocks[2].heads == ()
    changed = {k for k, v in refit.weights.items() if not np.array_equal(np.asarray(v), np.asarray(found.weights[k]))}
    assert changed == {"blocks.2.mlp.fc2.weight", "blocks.2.mlp.fc2.bias"}
    width = dcvit.structure(twin.spec, plain).mlp[0]
    scores = dcvit.mlp_scores(twin, few_shot, twin, "magnitude", 0)[2]
    expected, _ = dcvit.compress_block(twin, PruningPlan.keep_all(twin.spec), 2, width, scores, refit_on=few_shot)
    assert torch.allclose(torch.as_tensor(np.asarray(refit.weights["blocks.2.mlp.fc2.weight"])),
                          expected.blocks[2].mlp.fc2.weight, atol=1e-6)


# --- the search -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("target", [0.0, -0.5, 1.5, float("nan")])
def test_search_refuses_a_target_outside_the_unit_interval(dc_spec, target):
    """search() itself refuses a latency fraction outside (0, 1] (nan included) before any work: 1.5 or nan would
    otherwise return the dense plan as if pruned, 0 would strip every unit before failing."""
    from vitrt.compiler.errors import VitrtError
    from vitrt.transforms.prune.search import SearchConfig, search

    calls = []

    def importance(kept):
        calls.append(1)
        raise AssertionError("importance scored for an invalid target")
    with pytest.raises(VitrtError, match="must be a latency fraction"):
        search(dc_spec, importance, vit_flops, SearchConfig(target=target))
    assert not calls


def test_revit_keeps_at_most_64_v_dims_per_head(dc_spec):
    """Table 6: V = 64 per head, whatever the model has above it (a 128-wide head keeps 64), never more than the
    model has (32 stays 32)."""
    from vitrt.transforms.prune.search import revit_dims

    wide = dc_spec.with_blocks([dataclasses.replace(b, v=128) for b in dc_spec.blocks])
    assert [d["v"] for d in revit_dims(wide)] == [64] * 4
    assert [d["v"] for d in revit_dims(dc_spec)] == [32] * 4


# --- low rank -------------------------------------------------------------------------------------------------
def _plan_lowrank(twin, **options):
    from vitrt.compiler.target import TargetConfig
    from vitrt.transforms.base import PlanContext
    from vitrt.transforms.lowrank import planner
    from vitrt.transforms.lowrank.config import LowRankConfig

    config = LowRankConfig(**options).validate()
    return planner.plan(twin, PlanContext(target=TargetConfig(batch=2), teacher=twin), config)


def test_a_layer_left_dense_keeps_all_its_parameters(dc_twin):
    """LayerRank.params_after of a layer left dense is its K·N weights (not 0): the plan's summary and the budget
    rule count it."""
    from vitrt.transforms.lowrank.plan import LayerRank

    assert LayerRank("blocks.0.mlp.fc1", 16, 24, 0, 1.0, "full rank").params_after == 16 * 24
    plan = _plan_lowrank(dc_twin, energy=1.0, layers="blocks.*.mlp.*")
    summary = plan.summary()
    assert summary["factored"] == 0 and summary["params_after"] == summary["params_before"] == 4 * 2 * 64 * 256


# --- the NViT planner -----------------------------------------------------------------------------------------
def test_nvit_fine_tuning_runs_at_the_compile_seed(dc_twin, monkeypatch):
    """planner.finetune(): the shared trainer gets the context's seed (--seed), not the TrainConfig default."""
    import types

    from vitrt.compiler.target import TargetConfig
    from vitrt.transforms.base import PlanContext
    from vitrt.transforms.prune import planner
    from vitrt.transforms.prune.config import PruneConfig

    seen = []

    def fake_train(student, data, objective, config, **kwargs):
        seen.append(config)
        return types.SimpleNamespace(history=[{"total": 1.0}], seconds=0.0)

    class Ctx(PlanContext):
        def data(self, source, split="train", limit=None, labelled=False):
            return None

    monkeypatch.setattr(planner, "train", fake_train)
    ctx = Ctx(target=TargetConfig(batch=2), teacher=dc_twin, seed=7)
    options = PruneConfig(fraction=0.9, data="synthetic", finetune_epochs=1).validate()
    record = planner.finetune(dc_twin, ctx, options, 1)
    assert [(c.seed, c.epochs) for c in seen] == [(7, 1)] and record["epochs"] == 1


def test_a_given_plan_is_matched_and_its_pruned_spec_passed_on_before_any_work(dc_spec, tmp_path):
    """PruneConfig.check() with --prune-plan: the plan is read and matched against the model's spec (a plan for
    another model is refused there, before any weights load) and the pruned spec is what later sections are
    checked against."""
    from vitrt.compiler.errors import VitrtError
    from vitrt.compiler.target import TargetConfig
    from vitrt.transforms.prune.config import PruneConfig
    from vitrt.transforms.prune.plan import BlockPlan, PruningPlan

    keep = PruningPlan.keep_all(dc_spec)
    blocks = list(keep.blocks)
    blocks[1] = BlockPlan(blocks[1].heads, blocks[1].qk, blocks[1].v, tuple(range(128)))
    plan = dataclasses.replace(keep, blocks=tuple(blocks)).validate()
    path = tmp_path / "plan.json"
    plan.save(path)
    options = PruneConfig(plan=path).validate()
    pruned = options.check(dc_spec, TargetConfig(batch=2))
    assert pruned == plan.pruned_spec(dc_spec) and pruned.blocks[1].mlp == 128
    other = dc_spec.with_blocks(list(dc_spec.blocks[:3]))
    with pytest.raises(VitrtError):
        options.check(other, TargetConfig(batch=2))
