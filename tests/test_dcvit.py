"""DC-ViT as a planning mode of the pruning transform (vitrt.transforms.prune.dcvit): the MACs solver, block
compression on the twin and in the plan, prefix-only feature mimicking, recoverability, and the compile
(``--dcvit-macs``) verified against the pruned twin with ONNX Runtime.

Tiny models and one or two fine-tuning epochs keep this fast; the digits figures are a benchmark
(``python -m vitrt.benchmarks.dcvit_sweep``, benchmarks/results/dcvit.md).
"""

from __future__ import annotations

import copy
import dataclasses
import json

import onnx
import pytest
import torch

from conftest import tiny_vit
from vitrt.calib.digits import ImageSet
from vitrt.calib.synthesis import SynthesisConfig, synthesize
from vitrt.compiler.cost import vit_flops
from vitrt.compiler.errors import VitrtError
from vitrt.compiler.models import canonicalize
from vitrt.compiler.pass_manager import FP32_TOLERANCE
from vitrt.transforms.prune import dcvit
from vitrt.transforms.prune.config import PruneConfig
from vitrt.transforms.prune.plan import PruningPlan
from vitrt.transforms.prune.twin import apply_plan


@pytest.fixture(scope="module")
def twin():
    return canonicalize(tiny_vit(depth=4))  # emb 64, 2 heads, mlp 256, 17 tokens


@pytest.fixture(scope="module")
def few_shot():
    return ImageSet(torch.randn(12, 3, 32, 32, generator=torch.Generator().manual_seed(0)).clamp(-1, 1), None)


@pytest.fixture(scope="module")
def metric_dir(tmp_path_factory, twin):
    out = tmp_path_factory.mktemp("metric") / "set"
    synthesize(twin, out, SynthesisConfig(images=8, iterations=3, batch_size=8), mean=0.5, std=0.5, model="tiny")
    return out


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("target", [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3])
def test_structure_lands_on_the_target_from_below(twin, target):
    spec = twin.spec
    shape = dcvit.structure(spec, dcvit.Settings(macs=target))
    assert all(w % 16 == 0 and 0 <= w <= 256 for w in shape.mlp)
    compressed = spec.with_blocks([dataclasses.replace(b, heads=0, mlp=shape.mlp[i]) if i < shape.blocks else b
                                   for i, b in enumerate(spec.blocks)])
    fraction = vit_flops(compressed) / vit_flops(spec)
    assert fraction == pytest.approx(shape.macs_fraction, abs=1e-9)
    channel = 4 * 17 * 64 / vit_flops(spec)  # MACs fraction of one MLP channel
    assert target - 16 * channel * shape.blocks <= fraction <= target + 1e-9


def test_structure_prefers_the_mlp_fraction_and_refuses_the_unreachable(twin):
    spec = twin.spec
    half = dcvit.structure(spec, dcvit.Settings(macs=0.4))
    fewest = dcvit.structure(spec, dcvit.Settings(macs=0.4, mlp=0.0))  # the official code's rule: fewest blocks
    assert fewest.blocks < half.blocks and sum(fewest.mlp) / fewest.blocks < sum(half.mlp) / half.blocks
    whole = dcvit.structure(spec, dcvit.Settings(macs=0.7, whole_blocks=True))
    assert set(whole.mlp) == {0} and whole.macs_fraction <= 0.7
    with pytest.raises(VitrtError, match="more than removing one attention module"):
        dcvit.structure(spec, dcvit.Settings(macs=0.99))
    with pytest.raises(VitrtError, match="below what removing every block"):
        dcvit.structure(spec, dcvit.Settings(macs=0.01))
    deit = spec.with_blocks([dataclasses.replace(spec.blocks[0], mlp=128)] + list(spec.blocks[1:]))
    with pytest.raises(VitrtError, match="blocks are all alike"):
        dcvit.structure(deit, dcvit.Settings(macs=0.7))


def test_compressing_a_block_keeps_plan_and_student_in_step(twin):
    """The student sliced from its own weights equals the original twin sliced by the composed plan."""
    before = _state(twin)
    plan = PruningPlan.keep_all(twin.spec)
    scores = torch.arange(256, dtype=torch.float32)  # channel j scores j: the top 128 are 128..255
    student, plan = dcvit.compress_block(twin, plan, 2, 128, scores)
    assert plan.blocks[2].heads == () and plan.blocks[2].mlp == tuple(range(128, 256))
    scores = -torch.arange(256, dtype=torch.float32)  # now the first 64 win
    student, plan = dcvit.compress_block(student, plan, 0, 64, scores)
    assert set(dcvit.mlp_scores(student, None, twin, "magnitude", 0)) == {1, 3}  # compressed blocks are done
    assert [b.heads for b in student.spec.blocks] == [0, 2, 0, 2]
    assert [len(b.mlp) for b in plan.blocks] == [64, 256, 128, 256] and plan.blocks[0].mlp == tuple(range(64))
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(student(images), apply_plan(twin, plan)(images), atol=1e-6)
    assert all(torch.equal(v, before[k]) for k, v in twin.state_dict().items())  # the input twin is untouched


def test_the_mlp_only_ablation_keeps_every_attention_module(twin, few_shot, metric_dir):
    """``Settings.mlp_only``: whole MLPs go and attention stays — on the MACs target, in the plan and on the twin,
    through the ranking and the progressive compression."""
    from vitrt.calib.synthesis import MetricSet, load_metric_set

    spec = twin.spec
    settings = dcvit.Settings(macs=0.7, mlp_only=True, epochs=0, score_epochs=0)
    shape = dcvit.structure(spec, settings)
    assert set(shape.mlp) == {0} and shape.macs_fraction <= 0.7
    fewer = spec.with_blocks([dataclasses.replace(b, mlp=0) if i < shape.blocks - 1 else b
                              for i, b in enumerate(spec.blocks)])
    assert vit_flops(fewer) / vit_flops(spec) > 0.7  # the fewest MLPs that reach the target
    with pytest.raises(VitrtError, match="below what removing every MLP reaches"):
        dcvit.structure(spec, dataclasses.replace(settings, macs=0.2))
    before = _state(twin)
    student, plan = dcvit.compress_block(twin, PruningPlan.keep_all(spec), 1, 0, None, keep_attention=True)
    assert plan.blocks[1].mlp == () and plan.blocks[1].heads == PruningPlan.keep_all(spec).blocks[1].heads
    assert [(b.heads, b.mlp) for b in student.spec.blocks] == [(2, 256), (2, 0), (2, 256), (2, 256)]
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():  # the block is its attention branch alone: the original adds its MLP on top of that
        x = twin.blocks[0](twin.embed(images))
        attended = student.blocks[1](x)
        original = twin.blocks[1]
        assert torch.allclose(original(x), attended + original.mlp(original.norm2(attended)), atol=1e-5)
        assert torch.allclose(student(images), apply_plan(twin, plan)(images), atol=1e-6)
    metric = MetricSet.of(load_metric_set(metric_dir), twin)
    ranked = dcvit.recoverability(twin, twin, few_shot, metric, settings)
    found, info = dcvit.compress(twin, twin, few_shot, metric, settings, [r["block"] for r in ranked])
    compressed = {i for i, b in enumerate(found.blocks) if not b.mlp}
    assert compressed == set(info["blocks"]) and len(compressed) == shape.blocks
    assert all(len(b.heads) == 2 for b in found.blocks)
    assert all(torch.equal(v, before[k]) for k, v in twin.state_dict().items())


def _block_error(original, compressed, index: int, images: torch.Tensor) -> float:
    """Relative error of ``compressed``'s block ``index`` against ``original``'s on the same inputs."""
    with torch.no_grad():
        x = original.embed(images)
        for block in original.blocks[:index]:
            x = block(x)
        want = original.blocks[index](x)
        return ((compressed.blocks[index](x) - want).norm() / (want - x).norm()).item()


def test_refit_lets_the_kept_mlp_stand_in_for_the_whole_block(twin):
    images = torch.randn(48, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    fit, held_out = ImageSet(images[:32], None), images[32:]
    scores = torch.rand(256, generator=torch.Generator().manual_seed(3))
    plan = PruningPlan.keep_all(twin.spec)
    before = _state(twin)
    plain, plain_plan = dcvit.compress_block(twin, plan, 1, 128, scores)
    refit, refit_plan = dcvit.compress_block(twin, plan, 1, 128, scores, refit_on=fit)
    assert refit_plan == plain_plan  # the refit changes weights, never the structure
    changed = {k for k, v in refit.state_dict().items() if not torch.equal(v, plain.state_dict()[k])}
    assert changed == {"blocks.1.mlp.fc2.weight", "blocks.1.mlp.fc2.bias"}
    for images in (fit.images, held_out):  # the attention's part of the residual is now carried by the MLP
        assert _block_error(twin, refit, 1, images) < 0.7 * _block_error(twin, plain, 1, images)
    assert all(torch.equal(v, before[k]) for k, v in twin.state_dict().items())
    # A block that already has no attention and keeps every channel is reproduced (up to the ridge term)
    keep = torch.arange(128, dtype=torch.float32)
    again, _ = dcvit.compress_block(plain, plain_plan, 1, 128, keep, refit_on=fit)
    assert _block_error(plain, again, 1, held_out) < 0.03


def test_mimicking_updates_only_the_prefix(twin, few_shot):
    student, _ = dcvit.compress_block(copy.deepcopy(twin), PruningPlan.keep_all(twin.spec), 1, 128,
                                      torch.rand(256, generator=torch.Generator().manual_seed(0)))
    before = _state(student)
    result = dcvit.mimic(student, twin, few_shot, last=2, epochs=2, seed=0)
    after = student.state_dict()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed and all(k.startswith(("patch_embed", "cls_token", "pos_embed", "blocks.0.", "blocks.1.",
                                         "blocks.2.")) for k in changed)
    assert "blocks.3.mlp.fc1.weight" not in changed and "head.weight" not in changed and "norm.weight" not in changed
    assert result["mse_last"] < result["mse_first"] and result["last_updated_block"] == 2


def test_the_fine_tuning_learning_rate_sets_the_step(twin, few_shot):
    """``lr`` is the fine-tuning's peak learning rate: AdamW's first steps move a parameter by about lr each, so a
    tenth of the rate moves the prefix about a tenth as far (the ranking keeps the default)."""
    start, _ = dcvit.compress_block(copy.deepcopy(twin), PruningPlan.keep_all(twin.spec), 1, 128,
                                    torch.rand(256, generator=torch.Generator().manual_seed(0)))
    moved = {}
    for lr in (2e-4, 2e-5):
        student = copy.deepcopy(start)
        record = dcvit.mimic(student, twin, few_shot, last=2, epochs=1, seed=0, lr=lr)
        assert record["lr"] == lr
        moved[lr] = (student.blocks[0].mlp.fc1.weight - start.blocks[0].mlp.fc1.weight).abs().max().item()
    assert 5 < moved[2e-4] / moved[2e-5] < 20
    assert dcvit.Settings(macs=0.7).lr == dcvit.FINETUNE.lr


def test_mimicking_the_final_features_still_updates_only_the_prefix(twin, few_shot):
    """``feature="final"`` (the official code's pre_GAP): the loss is on the whole model's normalised tokens, the
    later blocks pass gradients back but stay as they are, and the final features come closer to the teacher's."""
    start, _ = dcvit.compress_block(copy.deepcopy(twin), PruningPlan.keep_all(twin.spec), 1, 128,
                                    torch.rand(256, generator=torch.Generator().manual_seed(0)))
    student = copy.deepcopy(start)
    before = _state(student)
    images = few_shot.images[:16]
    with torch.no_grad():
        final = dcvit.MimicPrefix(student, 1, "final").forward_with_features(images)[1][0]
        block = dcvit.MimicPrefix(student, 1).forward_with_features(images)[1][0]
        assert torch.equal(final, student.forward_features(images))
        assert torch.equal(block, student.blocks[1](student.blocks[0](student.embed(images))))
        gap_before = (student.forward_features(images) - twin.forward_features(images)).pow(2).mean()
    result = dcvit.mimic(student, twin, few_shot, last=1, epochs=3, seed=0, feature="final")
    after = student.state_dict()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed and all(k.startswith(("patch_embed", "cls_token", "pos_embed", "blocks.0.", "blocks.1."))
                           for k in changed)
    with torch.no_grad():
        gap_after = (student.forward_features(images) - twin.forward_features(images)).pow(2).mean()
    assert result["feature"] == "final" and gap_after < gap_before
    block = copy.deepcopy(start)  # the same steps aimed at block 1's output leave the final tokens farther away
    dcvit.mimic(block, twin, few_shot, last=1, epochs=3, seed=0)
    with torch.no_grad():
        assert gap_after < (block.forward_features(images) - twin.forward_features(images)).pow(2).mean()
    assert not any(p.grad is not None for p in student.blocks[2:].parameters())  # later blocks: no gradients kept
    assert all(p.requires_grad for p in student.parameters())  # and trainable again afterwards
    with pytest.raises(VitrtError, match="one of block, final"):
        dcvit.mimic(student, twin, few_shot, last=1, epochs=1, seed=0, feature="logits")


def test_recoverability_scores_every_block(twin, few_shot, metric_dir):
    from vitrt.calib.synthesis import MetricSet, load_metric_set

    ranked = dcvit.recoverability(twin, twin, few_shot, MetricSet.of(load_metric_set(metric_dir), twin), dcvit.Settings(
        macs=0.7, score_epochs=1, importance="magnitude"))
    assert sorted(r["block"] for r in ranked) == [0, 1, 2, 3]
    losses = [r["metric_loss"] for r in ranked]
    assert losses == sorted(losses) and len(set(losses)) == 4


def test_a_candidate_is_scored_after_mimicking_the_block_after_it(twin, few_shot, metric_dir):
    """(c): block i's score is the metric loss once it alone is compressed and the prefix up to block i + 1 is
    fine-tuned to the dense model's output there (recomputed here step by step from the contract)."""
    from vitrt.calib.synthesis import MetricSet, load_metric_set

    metric = MetricSet.of(load_metric_set(metric_dir), twin)
    settings = dcvit.Settings(macs=0.7, score_epochs=1, importance="magnitude")
    ranked = {r["block"]: r["metric_loss"] for r in dcvit.recoverability(twin, twin, few_shot, metric, settings)}
    width = dcvit.candidate_width(twin.spec, settings)
    scores = dcvit.mlp_scores(twin, few_shot, twin, "magnitude", settings.seed)
    for index in (1, 3):  # block 3 is the last: its prefix ends at itself
        student, _ = dcvit.compress_block(twin, PruningPlan.keep_all(twin.spec), index, width, scores[index])
        dcvit.mimic(student, twin, few_shot, min(index + 1, 3), 1, settings.seed)
        assert metric.evaluate(student)["loss"] == pytest.approx(ranked[index], rel=1e-6)


def test_progressive_compression_fine_tunes_up_to_the_block_after_the_last_compressed(twin, few_shot, metric_dir):
    """(d): after each compressed block the prefix up to the block after the deepest one compressed so far is
    fine-tuned (not the block after the current one: compressing block 0 after block 2 still updates block 3)."""
    from vitrt.calib.synthesis import MetricSet, load_metric_set

    metric = MetricSet.of(load_metric_set(metric_dir), twin)
    settings = dcvit.Settings(macs=0.6, epochs=1, importance="magnitude")
    assert dcvit.structure(twin.spec, settings).blocks >= 2
    plan, info = dcvit.compress(twin, twin, few_shot, metric, settings, [2, 0, 1, 3])
    updated = [step["finetune"]["last_updated_block"] for step in info["steps"]]
    assert updated and all(u == 3 for u in updated)
    _, early = dcvit.compress(twin, twin, few_shot, metric, settings, [0, 1, 2, 3])
    assert [s["finetune"]["last_updated_block"] for s in early["steps"]][:2] == [1, 2]


def test_the_fine_tuning_settings_reach_every_step_and_not_the_ranking(twin, few_shot, metric_dir):
    """``Settings.lr`` / ``feature`` set the progressive fine-tuning; the recoverability ranking keeps the defaults,
    so runs at other rates compress the same blocks (and pair seed by seed with recorded ones)."""
    from vitrt.calib.synthesis import MetricSet, load_metric_set

    metric = MetricSet.of(load_metric_set(metric_dir), twin)
    plain = dcvit.Settings(macs=0.6, epochs=1, score_epochs=1, importance="magnitude")
    other = dataclasses.replace(plain, lr=1e-6, feature="final")
    assert dcvit.recoverability(twin, twin, few_shot, metric, other) == \
        dcvit.recoverability(twin, twin, few_shot, metric, plain)
    _, info = dcvit.compress(twin, twin, few_shot, metric, other, [2, 0, 1, 3])
    assert {(s["finetune"]["lr"], s["finetune"]["feature"]) for s in info["steps"]} == {(1e-6, "final")}
    for bad, match in (({"lr": float("inf")}, "learning rate in"), ({"feature": "logits"}, "one of block, final")):
        with pytest.raises(VitrtError, match=match):
            dataclasses.replace(plain, **bad)


def test_dcvit_options_are_checked():
    with pytest.raises(VitrtError, match="--few-shot is a DC-ViT option"):
        PruneConfig(few_shot=10).validate()
    with pytest.raises(VitrtError, match="not on noise"):
        PruneConfig(dcvit_macs=0.7).validate()
    with pytest.raises(VitrtError, match="alternatives"):
        PruneConfig(dcvit_macs=0.7, fraction=0.5, data="digits").validate()
    with pytest.raises(VitrtError, match="drop --dcvit-mlp"):
        PruneConfig(dcvit_macs=0.7, data="digits", dcvit_mlp=0.5, dcvit_whole_blocks=True).validate()
    with pytest.raises(VitrtError, match="no MLP to refit"):
        PruneConfig(dcvit_macs=0.7, data="digits", dcvit_refit=True, dcvit_whole_blocks=True).validate()
    with pytest.raises(VitrtError, match="alternatives"):
        PruneConfig(dcvit_macs=0.7, data="digits", dcvit_mlp_only=True, dcvit_whole_blocks=True).validate()
    with pytest.raises(VitrtError, match="drop --dcvit-mlp and --dcvit-refit"):
        PruneConfig(dcvit_macs=0.7, data="digits", dcvit_mlp_only=True, dcvit_refit=True).validate()
    with pytest.raises(VitrtError, match="--dcvit-mlp-only is a DC-ViT option"):
        PruneConfig(dcvit_mlp_only=True).validate()
    with pytest.raises(VitrtError, match="--dcvit-refit is a DC-ViT option"):
        PruneConfig(dcvit_refit=True).validate()
    with pytest.raises(VitrtError, match=r"in \(0, 1\)"):
        PruneConfig(dcvit_macs=1.5, data="digits").validate()
    with pytest.raises(VitrtError, match="would rank blocks on noise"):
        PruneConfig(dcvit_macs=0.7, data="digits", dcvit_metric="synthetic").validate()
    with pytest.raises(VitrtError, match="--dcvit-lr is a DC-ViT option"):
        PruneConfig(dcvit_lr=3e-5).validate()
    with pytest.raises(VitrtError, match="--dcvit-epochs 0 fine-tunes nothing"):
        PruneConfig(dcvit_macs=0.7, data="digits", dcvit_lr=3e-5, dcvit_epochs=0).validate()
    for lr in (0.0, -1e-4, 2.0, float("nan")):
        with pytest.raises(VitrtError, match="must be a learning rate in"):
            PruneConfig(dcvit_macs=0.7, data="digits", dcvit_lr=lr).validate()
    assert PruneConfig(dcvit_macs=0.7, data="digits").validate().enabled


def test_an_unreachable_target_is_refused_from_the_spec_alone(twin, capsys):
    """The structure needs only the spec: ``check`` refuses before any weights exist (the CLI before a download)."""
    from vitrt.cli import main

    with pytest.raises(VitrtError, match="keeps more than removing one attention module allows"):
        PruneConfig(dcvit_macs=0.999, data="digits").validate().check(twin.spec, None)
    assert PruneConfig(dcvit_macs=0.7, data="digits").validate().check(twin.spec, None) is None
    assert main(["compile", "deit_tiny_patch16_224", "--pretrained", "-o", "/nonexistent/out", "--dcvit-macs",
                 "0.999", "--data", "digits"]) == 2  # refused from timm's config: no download, no model built
    assert "keeps more than removing one attention module allows" in capsys.readouterr().err


def test_the_compile_notes_what_it_could_not_do_as_asked(tmp_path, metric_dir, twin):
    """Fewer few-shot images than asked for, and compressed blocks left with no MLP: said and recorded."""
    import vitrt

    whole_two = dcvit.structure(twin.spec, dcvit.Settings(macs=0.6, whole_blocks=True)).macs_fraction
    result = vitrt.compile(tiny_vit(depth=4), tmp_path / "out", quiet=True, batch=2, dcvit_macs=whole_two,
                           dcvit_mlp=0.0, data=f"synth:{metric_dir}", few_shot=500, dcvit_epochs=0,
                           dcvit_score_epochs=0, dcvit_metric=f"synth:{metric_dir}")
    m = result.manifest
    assert m["pruning"]["dcvit"]["few_shot"] == {"data": f"synth:{metric_dir}", "images": 8, "requested": 500}
    notes = [a["note"] for a in m["adjustments"]]
    assert any("500 few-shot images asked for" in n and "holds 8" in n for n in notes)
    assert any("2 of the 2 compressed blocks keep no MLP channel" in n for n in notes)


def test_a_model_whose_attention_outweighs_its_mlp_is_compressed_below_the_target_and_says_so(tmp_path, metric_dir):
    """257 tokens and MLP ratio 1: two attention modules already remove more than 0.3 of the MACs, so the structure
    keeps whole MLPs (it returned negative widths) and the compile notes where it landed; verified as usual."""
    import vitrt

    result = vitrt.compile(tiny_vit(depth=4, patch_size=2, mlp_ratio=1.0), tmp_path / "out", quiet=True, batch=2,
                           dcvit_macs=0.7, data=f"synth:{metric_dir}", few_shot=8, dcvit_epochs=0,
                           dcvit_score_epochs=0, dcvit_metric=f"synth:{metric_dir}", verify=True)
    m = result.manifest
    blocks = m["spec_after"]["blocks"]
    assert sum(1 for b in blocks if b["heads"] == 0) == 2 and all(b["mlp"] == 64 for b in blocks)
    assert m["verify"]["ok"]
    notes = [a["note"] for a in m["adjustments"]]
    assert any("attention costs more MACs than its MLP" in n and "0.573 of the MACs" in n for n in notes)


def test_compile_dcvit_verified_against_the_pruned_twin(tmp_path, metric_dir):
    """``vitrt.compile(..., dcvit_macs=0.7)``: attention removed and MLPs shrunk where the plan says, the ONNX
    verified against the fine-tuned pruned twin, the plan (with weights) round-tripping into a second compile."""
    import vitrt
    from vitrt.compiler.verify import run_onnx, run_torch

    model = tiny_vit(depth=4)
    state = _state(model)
    result = vitrt.compile(model, tmp_path / "dc", quiet=True, verify=True, batch=2, dcvit_macs=0.7, data="digits",
                           few_shot=16, dcvit_epochs=1, dcvit_score_epochs=0, dcvit_refit=True, dcvit_lr=3e-5,
                           dcvit_metric=f"synth:{metric_dir}",
                           metric_set=f"synth:{metric_dir}", eval_data="digits")
    m = result.manifest
    assert m["verify"]["ok"] and m["verify"]["max_abs_err"] <= FP32_TOLERANCE
    section = m["pruning"]
    info = section["dcvit"]
    assert section["source"] == "dcvit" and sorted(section["summary"]["attention_removed"]) == sorted(info["blocks"])
    assert [m["spec_after"]["blocks"][b]["mlp"] for b in info["blocks"]] == info["mlp"]
    assert m["flops"]["after"] / m["flops"]["before"] == pytest.approx(info["macs_fraction"])
    assert info["macs_fraction"] <= 0.7
    assert info["accuracy"]["images"] == 450 and len(info["recoverability"]) == 4 and info["few_shot"]["images"] == 16
    assert info["refit"] and info["lr"] == 3e-5 and all(s["finetune"]["lr"] == 3e-5 for s in info["steps"])
    assert m["accuracy"]["metric"]["compiled"]["loss"] == pytest.approx(info["metric"]["compressed"]["loss"], abs=1e-4)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())  # the caller's model is untouched
    saved = json.loads((tmp_path / "dc" / "pruning_plan.json").read_text())
    assert saved["weights_file"] == "pruning_plan.npz" and saved["meta"]["dcvit"]["blocks"] == info["blocks"]
    again = vitrt.compile(model, tmp_path / "again", quiet=True, verify=True, batch=2,
                          prune_plan=tmp_path / "dc" / "pruning_plan.json")
    assert again.manifest["verify"]["ok"] and again.manifest["spec_after"] == m["spec_after"]
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5)).numpy()
    first = run_onnx(onnx.load(tmp_path / "dc" / "model.onnx"), images, 2)
    second = run_onnx(onnx.load(tmp_path / "again" / "model.onnx"), images, 2)
    assert abs(first - second).max() <= 1e-6
    assert abs(run_torch(result.twin, images) - first).max() <= FP32_TOLERANCE


def test_compile_with_mlp_only_keeps_attention_and_verifies(tmp_path, metric_dir):
    """``--dcvit-mlp-only`` through the compile: whole MLPs gone, every attention module kept, the ONNX verified
    against the twin, the choice in the manifest."""
    import vitrt

    result = vitrt.compile(tiny_vit(depth=4), tmp_path / "mlp", quiet=True, verify=True, batch=2, dcvit_macs=0.7,
                           data="digits", few_shot=8, dcvit_epochs=0, dcvit_score_epochs=0, dcvit_mlp_only=True,
                           dcvit_metric=f"synth:{metric_dir}")
    m = result.manifest
    info = m["pruning"]["dcvit"]
    assert m["verify"]["ok"] and m["verify"]["max_abs_err"] <= FP32_TOLERANCE and info["mlp_only"]
    blocks = m["spec_after"]["blocks"]
    assert all(b["heads"] == 2 for b in blocks) and {i for i, b in enumerate(blocks) if not b["mlp"]} == set(
        info["blocks"])
    assert m["flops"]["after"] / m["flops"]["before"] == pytest.approx(info["macs_fraction"])
    assert info["macs_fraction"] <= 0.7


def test_benchmark_configs(tmp_path):
    """The sweep and ranking benchmarks: what they would run, and their one-line refusals (nothing trains)."""
    from vitrt.benchmarks.dcvit_ranking import DcvitRankingConfig, variants
    from vitrt.benchmarks.dcvit_sweep import DcvitSweepConfig, few_shot_images, jobs

    with pytest.raises(VitrtError, match="--metric-set SET"):
        DcvitSweepConfig().validate()
    with pytest.raises(VitrtError, match="fractions in"):
        DcvitSweepConfig(metric_set=tmp_path, targets="0.7,1.2").validate()
    config = DcvitSweepConfig(metric_set=tmp_path, targets="0.9,0.7", baseline=0.7, seeds=2).validate()
    planned = jobs(config, dcvit.Settings(macs=0.5))
    assert len(planned) == 2 + 6 * 2 - 1  # the sweep's 0.7 row (seed 0) is also the comparison's
    assert {(m, s) for m, f, _, s in planned if f == 0.7} == {
        (m, s) for m in ("dcvit", "dcvit_no_finetune", "dcvit_fewest_blocks", "dcvit_fewest_blocks_no_finetune",
                         "whole_blocks", "whole_blocks_no_finetune") for s in (0, 1)}
    later = DcvitSweepConfig(metric_set=tmp_path, targets="", baseline=0.7, methods="dcvit", seeds=2,
                             first_seed=3).validate()
    assert [(m, s) for m, _, _, s in jobs(later, dcvit.Settings(macs=0.5))] == [
        ("dcvit", 3), ("dcvit_no_finetune", 3), ("dcvit", 4), ("dcvit_no_finetune", 4)]
    train = ImageSet(torch.zeros(450, 3, 4, 4), None)
    assert len(few_shot_images(train, later, 3).images) == 100
    with pytest.raises(VitrtError, match="seed 4 needs training images 400..499"):
        few_shot_images(train, later, 4)
    with pytest.raises(VitrtError, match="--first-seed must be >= 0"):
        DcvitSweepConfig(metric_set=tmp_path, baseline=0.7, first_seed=-1).validate()
    refit = [(m, s.refit) for m, _, s, _ in jobs(later, dcvit.Settings(macs=0.5, refit=True))]
    assert refit[:2] == [("dcvit_refit", True), ("dcvit_refit_no_finetune", True)]  # beside recorded plain rows
    whole = DcvitSweepConfig(metric_set=tmp_path, targets="", baseline=0.7, methods="whole_blocks").validate()
    assert [(m, s.refit) for m, _, s, _ in jobs(whole, dcvit.Settings(macs=0.5, refit=True))] == [
        ("whole_blocks", False), ("whole_blocks_no_finetune", False)]
    ablation = DcvitSweepConfig(metric_set=tmp_path, targets="", baseline=0.7, methods="mlp_only").validate()
    assert [(m, s.mlp_only, s.refit) for m, _, s, _ in jobs(ablation, dcvit.Settings(macs=0.5, refit=True))] == [
        ("mlp_only", True, False), ("mlp_only_no_finetune", True, False)]  # not a default method
    assert "mlp_only" not in DcvitSweepConfig().compared
    only = DcvitSweepConfig(metric_set=tmp_path, targets="", baseline=0.7, methods="whole_blocks").validate()
    assert [m for m, *_ in jobs(only, dcvit.Settings(macs=0.5))] == ["whole_blocks", "whole_blocks_no_finetune"]
    with pytest.raises(VitrtError, match="--methods must name"):
        DcvitSweepConfig(metric_set=tmp_path, baseline=0.7, methods="dcvit,blocks").validate()
    with pytest.raises(VitrtError, match="--workers must be >= 1"):
        DcvitSweepConfig(metric_set=tmp_path, workers=0).validate()
    for bad, match in (({"lr": 0.0}, "--lr 0 must be"), ({"lr": float("inf")}, "--lr inf must be"),
                       ({"feature": "x"}, "one of block, final")):
        with pytest.raises(VitrtError, match=match):
            DcvitSweepConfig(metric_set=tmp_path, **bad).validate()
    from vitrt.benchmarks.dcvit_sweep import base_settings

    wired = base_settings(DcvitSweepConfig(metric_set=tmp_path, lr=3e-5, feature="final", epochs=7, refit=True))
    assert (wired.lr, wired.feature, wired.epochs, wired.refit) == (3e-5, "final", 7, True)
    names = [name for name, _ in variants(DcvitRankingConfig(metric_set=tmp_path))]
    assert len(names) == 10 and "int8 PTQ (synthetic calibration)" in names and "ToMe r=8" in names
    (tmp_path / "dcvit_0.7.plan.json").write_text("{}")
    picked = variants(DcvitRankingConfig(metric_set=tmp_path, dcvit_plans=f"{tmp_path / 'none'},{tmp_path}",
                                         plans="dcvit_0.7"))
    assert picked[-1] == ("dcvit 0.7", {"prune_plan": tmp_path / "dcvit_0.7.plan.json"})
    with pytest.raises(VitrtError, match="no whole_blocks_0.7.plan.json"):
        variants(DcvitRankingConfig(metric_set=tmp_path, dcvit_plans=str(tmp_path), plans="whole_blocks_0.7"))


def test_ranking_combines_recorded_results(tmp_path):
    """``dcvit_ranking --combine``: rows of a ranking and a sweep result ranked together (nothing compiled); results
    on another metric set are refused."""
    from vitrt.benchmarks.dcvit_ranking import DcvitRankingConfig, run

    def row(name, top1, loss, **extra):
        return {"name": name, "top1": top1, "metric_loss": loss, "metric_top1": 1 - loss, "macs_fraction": 1.0,
                "verify_max_abs_err": 0.0, "verify_tolerance": 1e-4, **extra}

    ranking = {"metric_set": "SET", "dense_top1": 0.9889, "seconds": 1.0, "int8": {"calib_images": 250},
               "rows": [row("dense fp32", 0.9889, 0.0, metric_ce=0.1),
                        row("int8 PTQ (digits calibration)", 0.98, 0.01, metric_ce=0.2),
                        row("int8 PTQ (synthetic calibration)", 0.97, 0.02, metric_ce=0.3)]}
    sweep = {"metric_set": "SET", "dense_top1": 0.988889, "seconds": 2.0,
             "rows": [row("dcvit_0.7", 0.95, 0.05), row("dcvit_0.5", 0.90, 0.04)]}
    (tmp_path / "ranking.json").write_text(json.dumps(ranking))
    (tmp_path / "sweep.json").write_text(json.dumps(sweep))
    both = f"{tmp_path / 'ranking.json'},{tmp_path / 'sweep.json'}"
    result = run(DcvitRankingConfig(combine=both))
    assert [r["name"] for r in result["rows"]][-2:] == ["sweep: dcvit_0.7", "sweep: dcvit_0.5"]
    assert result["variants"] == 5 and result["spearman_metric_loss_vs_top1"] == pytest.approx(0.9)
    assert result["spearman_metric_ce_vs_top1"] == pytest.approx(1.0)  # over the 3 rows that have a CE
    assert result["int8"]["extra_loss_points"] == pytest.approx(1.0)
    (tmp_path / "sweep.json").write_text(json.dumps({**sweep, "metric_set": "OTHER"}))
    with pytest.raises(VitrtError, match="one metric set"):
        run(DcvitRankingConfig(combine=both))


@pytest.mark.slow
def test_without_a_metric_set_the_compile_grows_one(tmp_path, monkeypatch):
    """``--dcvit-macs`` without ``--dcvit-metric`` synthesises a metric set from the model itself (here 6 images and
    3 iterations instead of DC-ViT's 50 and 2,000)."""
    import vitrt

    monkeypatch.setattr(dcvit, "METRIC_IMAGES", 6)
    monkeypatch.setattr(dcvit, "METRIC_ITERATIONS", 3)
    result = vitrt.compile(tiny_vit(depth=4), tmp_path / "out", quiet=True, batch=2, dcvit_macs=0.7, data="digits",
                           few_shot=8, dcvit_epochs=1, dcvit_score_epochs=0, importance="magnitude")
    info = result.manifest["pruning"]["dcvit"]
    assert info["metric_set"]["images"] == 6 and info["metric_set"]["iterations"] == 3
    assert len(info["recoverability"]) == 4 and info["macs_fraction"] <= 0.7


def test_the_cli_refuses_dcvit_knobs_without_dcvit_macs(tmp_path, capsys):
    from vitrt.cli import main

    assert main(["compile", "deit_tiny_patch16_224", "-o", str(tmp_path / "x"), "--few-shot", "8"]) == 2
    assert "--few-shot is a DC-ViT option" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_sweep_overlay_draws_recorded_results(tmp_path):
    """``dcvit_sweep --overlay``: recorded sweeps side by side (nothing runs); labels name the refit and untuned rows."""
    from vitrt.benchmarks.dcvit_sweep import DcvitSweepConfig, benchmark, style

    assert style("dcvit_fewest_blocks_refit_no_finetune")[1:] == (
        "DC-ViT, fewest blocks (official code's rule) + LS refit, no fine-tuning", True)
    assert style("whole_blocks") == ("s", "whole blocks removed", False)
    with pytest.raises(VitrtError, match="add -o OUT"):
        DcvitSweepConfig(overlay="a.json").validate()

    def sweep(method, epochs, top1):
        rows = [{"method": method, "seed": 0, "target": f, "macs_fraction": f, "top1": t} for f, t in top1]
        return {"rows": rows, "epochs": epochs, "seconds": 1.0, "dense_top1": 0.99}

    (tmp_path / "a.json").write_text(json.dumps(sweep("dcvit", 5, [(0.9, 0.98), (0.7, 0.97)])))
    (tmp_path / "b.json").write_text(json.dumps(sweep("dcvit_refit", 0, [(0.7, 0.96)])))
    config = DcvitSweepConfig(overlay=f"{tmp_path / 'a.json'},{tmp_path / 'b.json'}", out=tmp_path / "both")
    assert benchmark(config) == 0
    table = (tmp_path / "both.md").read_text()
    assert "| a | dcvit | 5 | 1.0 | 0.900: 98.00 %, 0.700: 97.00 % |" in table and "| b | dcvit_refit | 0 |" in table
    assert (tmp_path / "both.png").stat().st_size > 0
    with pytest.raises(VitrtError, match="no result file"):
        benchmark(DcvitSweepConfig(overlay=str(tmp_path / "c.json"), out=tmp_path / "c"))


def test_seed_spread_combines_sweep_results(tmp_path):
    """``dcvit_seeds``: rows of two sweep results at one baseline, sample std and per-seed paired differences;
    results of other settings or with a seed twice are refused (nothing trained)."""
    from vitrt.benchmarks.dcvit_seeds import DcvitSeedsConfig, benchmark, combine

    def result(seeds, top1, epochs=50):
        rows = [{"method": m, "target": 0.67, "seed": s, "macs_fraction": 0.668, "top1": t[m], "metric_loss": 0.01}
                for s, t in zip(seeds, top1) for m in t]
        return {"rows": rows, "few_shot": 100, "metric_set": "set", "epochs": epochs, "score_epochs": 5,
                "preferred_mlp": 0.5, "dense_top1": 0.99}

    first = result([0, 1], [{"dcvit": 0.98, "whole_blocks": 0.97}, {"dcvit": 0.96, "whole_blocks": 0.97}])
    second = result([2], [{"dcvit": 0.97, "whole_blocks": 0.97}])
    out = combine([first, second], 0.67)
    dcvit_row = next(m for m in out["methods"] if m["method"] == "dcvit")
    assert dcvit_row["seeds"] == [0, 1, 2] and dcvit_row["top1_mean"] == pytest.approx(0.97)
    assert dcvit_row["top1_std"] == pytest.approx(0.01)  # sample std (n - 1)
    (pair,) = out["pairs"]
    assert pair["difference"] == pytest.approx([0.01, -0.01, 0.0])
    assert (pair["ahead"], pair["tied"], pair["behind"]) == (1, 1, 1)
    assert "test_kl_ratio" not in pair  # rows recorded before the test KL was measured
    # 95 % CI of the paired mean: 0 ± t(0.975, 2) · 0.01 / sqrt(3) = ± 0.02484; it includes 0: a tie
    assert pair["ci95"] == pytest.approx([-0.024841, 0.024841], abs=1e-5) and pair["verdict"] == "tie"
    fewest = result([0], [{"dcvit_fewest_blocks": 0.99, "whole_blocks": 0.97}])
    for row, kl in zip(fewest["rows"], (0.004, 0.008)):
        row["test_kl"] = kl
    (pair,) = combine([fewest], 0.67)["pairs"]
    assert pair["methods"] == ["dcvit_fewest_blocks", "whole_blocks"] and pair["difference"] == pytest.approx([0.02])
    assert pair["test_kl_ratio"] == pytest.approx([0.5]) and pair["test_kl_closer"] == 1
    assert pair["ci95"] is None and pair["verdict"] == "one seed" and pair["test_kl_sign_p"] == pytest.approx(1.0)
    larger = result([0], [{"whole_blocks": 0.995}])
    for row in larger["rows"]:
        row["target"] = 0.76  # whole blocks run at another target: paired with DC-ViT at 0.67 on request
    (pair,) = combine([fewest, larger], 0.67, whole_blocks_at=0.76)["pairs"]
    assert pair["difference"] == pytest.approx([-0.005])
    refit = result([0], [{"dcvit_refit": 0.975, "dcvit_refit_no_finetune": 0.96}])  # a refit run beside recorded rows
    plain = result([0], [{"dcvit": 0.98, "whole_blocks": 0.97, "whole_blocks_no_finetune": 0.91}])
    pairs = {tuple(p["methods"]): p["difference"] for p in combine([plain, refit], 0.67)["pairs"]}
    assert pairs == {("dcvit", "whole_blocks"): pytest.approx([0.01]),
                     ("dcvit_refit", "whole_blocks"): pytest.approx([0.005]),
                     ("dcvit_refit_no_finetune", "whole_blocks_no_finetune"): pytest.approx([0.05])}
    ablation = result([0], [{"mlp_only": 0.98, "mlp_only_no_finetune": 0.95, "whole_blocks": 0.97,
                              "whole_blocks_no_finetune": 0.91}])
    pairs = {tuple(p["methods"]): p["difference"] for p in combine([ablation], 0.67)["pairs"]}
    assert pairs == {("mlp_only", "whole_blocks"): pytest.approx([0.01]),
                     ("mlp_only_no_finetune", "whole_blocks_no_finetune"): pytest.approx([0.04])}
    from vitrt.benchmarks.dcvit_seeds import paired_interval, sign_test, verdict

    assert verdict(paired_interval([0.01, 0.02, 0.015])) == "ahead"  # every seed ahead, little spread
    assert verdict(paired_interval([-0.01, -0.02, -0.015])) == "behind"
    assert verdict(paired_interval([0.022, -0.0022, 0.0044, 0.0022])) == "tie"  # ahead on average, not beyond noise
    assert sign_test(12, 12) == pytest.approx(2 * 0.5 ** 12) and sign_test(0, 0) == 1.0
    with pytest.raises(VitrtError, match="differ in epochs"):
        combine([first, result([2], [{"dcvit": 0.97}], epochs=10)], 0.67)
    lower = result([2], [{"dcvit": 0.97}])
    assert combine([first, {**lower, "lr": 2e-4, "feature": "block"}], 0.67)["lr"] == 2e-4  # recorded before: 2e-4
    for key, value in (("lr", 3e-5), ("feature", "final")):  # another fine-tuning is another experiment
        with pytest.raises(VitrtError, match=f"differ in {key}"):
            combine([first, {**lower, key: value}], 0.67)
    with pytest.raises(VitrtError, match="seed 0 is in more than one"):
        combine([first, first], 0.67)
    # --choose-lr: every method and seed keeps the learning rate of lowest metric loss, the labels play no part
    def tuned(lr, dcvit, whole):  # (top-1, metric loss) per method for seeds 0 and 1
        out = result([0, 1], [{"dcvit": dcvit[0][0], "whole_blocks": whole[0][0]},
                              {"dcvit": dcvit[1][0], "whole_blocks": whole[1][0]}])
        for row in out["rows"]:
            row["metric_loss"] = (dcvit if row["method"] == "dcvit" else whole)[row["seed"]][1]
        return {**out, "lr": lr}

    low = tuned(3e-5, dcvit=[(0.98, 0.01), (0.97, 0.03)], whole=[(0.96, 0.04), (0.95, 0.05)])
    high = tuned(2e-4, dcvit=[(0.99, 0.02), (0.96, 0.02)], whole=[(0.975, 0.01), (0.97, 0.06)])
    chosen = combine([low, high], 0.67, choose_lr=True)
    by_method = {m["method"]: m for m in chosen["methods"]}
    assert by_method["dcvit"]["lr"] == [3e-5, 2e-4] and by_method["dcvit"]["top1"] == [0.98, 0.96]
    assert by_method["whole_blocks"]["lr"] == [2e-4, 3e-5] and by_method["whole_blocks"]["top1"] == [0.975, 0.95]
    assert chosen["pairs"][0]["difference"] == pytest.approx([0.005, 0.01])
    assert chosen["lr_candidates"] == [3e-5, 2e-4] and chosen["lr"] is None
    assert by_method["dcvit"]["lr_candidates"] == [3e-5, 2e-4]
    reordered = combine([high, low], 0.67, choose_lr=True)  # the files' order does not matter
    assert [m["lr"] for m in reordered["methods"]] == [m["lr"] for m in chosen["methods"]]
    with pytest.raises(VitrtError, match="with the same lr"):  # a file twice, another between them
        combine([low, high, low], 0.67, choose_lr=True)
    diverged = tuned(1e-1, dcvit=[(0.5, float("nan")), (0.5, float("inf"))], whole=[(0.97, 0.04), (0.97, 0.01)])
    for files in ([diverged, low], [low, diverged]):  # a diverged run is never chosen; on a tie the lower lr is
        both = {m["method"]: m["lr"] for m in combine(files, 0.67, choose_lr=True)["methods"]}
        assert both == {"dcvit": [3e-5, 3e-5], "whole_blocks": [3e-5, 0.1]}  # seed 0: 0.04 at both rates
    with pytest.raises(VitrtError, match="differ in lr"):
        combine([low, high], 0.67)
    with pytest.raises(VitrtError, match="in more than one result with the same lr"):
        combine([low, low], 0.67, choose_lr=True)
    (tmp_path / "low.json").write_text(json.dumps(low))
    (tmp_path / "high.json").write_text(json.dumps(high))
    assert benchmark(DcvitSeedsConfig(results=f"{tmp_path / 'low.json'},{tmp_path / 'high.json'}", baseline=0.67,
                                      choose_lr=True, out=tmp_path / "chosen")) == 0
    text = (tmp_path / "chosen.md").read_text()
    assert "| dcvit | 0.668 | 0, 1 | 3e-05, 0.0002 (of 3e-05, 0.0002) | 98.00, 96.00 |" in text
    assert "lowest metric loss of 3e-05, 0.0002" in text
    untuned = [{**low, "rows": [{**row, "method": "dcvit_no_finetune"} for row in low["rows"][:1]]},
               {**high, "rows": [{**row, "method": "dcvit_no_finetune"} for row in high["rows"][:1]]}]
    (row,) = combine(untuned, 0.67, choose_lr=True)["methods"]
    assert row["lr"] == [None]  # not fine-tuned: the same model whatever the lr
    zero = [{**r, "rows": [{**row, "epochs": 0} for row in r["rows"][:1]]} for r in (low, high)]  # --epochs 0
    (row,) = combine(zero, 0.67, choose_lr=True)["methods"]
    assert row["lr"] == [None]
    with pytest.raises(VitrtError, match="no rows at --baseline 0.7"):
        combine([first], 0.7)
    (tmp_path / "a.json").write_text(json.dumps(first))
    assert benchmark(DcvitSeedsConfig(results=str(tmp_path / "a.json"), baseline=0.67, out=tmp_path / "o")) == 0
    assert "| dcvit − whole_blocks | 0, 1 | +1.00, -1.00 |" in (tmp_path / "o.md").read_text()
    # a dot in OUT is part of the name (it used to be taken for a suffix: -o seeds_0.7 wrote seeds_0.md)
    assert benchmark(DcvitSeedsConfig(results=str(tmp_path / "a.json"), baseline=0.67, out=tmp_path / "s_0.7")) == 0
    assert (tmp_path / "s_0.7.md").is_file() and (tmp_path / "s_0.7.json").is_file()
    assert not (tmp_path / "s_0.md").exists()


def test_seed_spread_chooses_the_mimicked_feature_by_the_metric_loss(tmp_path):
    """``--choose-feature`` (alone or with ``--choose-lr``): each method and seed keeps the fine-tuning of lowest
    metric loss among results that differ in the mimicked feature (and lr); the labels play no part."""
    from vitrt.benchmarks.dcvit_seeds import DcvitSeedsConfig, benchmark, combine

    def run(lr, feature, dcvit, whole):  # (top-1, metric loss) per method for seeds 0 and 1
        rows = [{"method": m, "target": 0.67, "seed": s, "macs_fraction": 0.668, "top1": v[s][0],
                 "metric_loss": v[s][1]} for m, v in (("dcvit", dcvit), ("whole_blocks", whole)) for s in (0, 1)]
        rows.append({"method": "whole_blocks_no_finetune", "target": 0.67, "seed": 0, "macs_fraction": 0.668,
                     "top1": 0.9, "metric_loss": 0.5})
        return {"rows": rows, "few_shot": 100, "metric_set": "set", "epochs": 50, "score_epochs": 5,
                "preferred_mlp": 0.25, "dense_top1": 0.99, "lr": lr, "feature": feature}

    block = run(2e-4, "block", dcvit=[(0.98, 0.03), (0.97, 0.01)], whole=[(0.985, 0.02), (0.98, 0.02)])
    final = run(2e-4, "final", dcvit=[(0.99, 0.02), (0.99, 0.02)], whole=[(0.97, 0.03), (0.99, 0.02)])
    with pytest.raises(VitrtError, match="differ in feature"):
        combine([block, final], 0.67)
    chosen = combine([final, block], 0.67, choose_feature=True)
    by_method = {m["method"]: m for m in chosen["methods"]}
    assert by_method["dcvit"]["feature"] == ["final", "block"] and by_method["dcvit"]["top1"] == [0.99, 0.97]
    # seed 1 of whole blocks ties at 0.02: the block feature, whatever the files' order
    assert by_method["whole_blocks"]["feature"] == ["block", "block"]
    assert by_method["whole_blocks_no_finetune"]["feature"] == [None]  # untrained: no fine-tuning to choose
    assert chosen["pairs"][0]["difference"] == pytest.approx([0.005, -0.01])
    assert chosen["feature"] is None and chosen["feature_candidates"] == ["block", "final"] and chosen["lr"] == 2e-4
    with pytest.raises(VitrtError, match="with the same feature"):
        combine([block, final, block], 0.67, choose_feature=True)
    with pytest.raises(VitrtError, match="differ in lr"):  # choosing the feature does not let the lr differ
        combine([block, {**final, "lr": 3e-5}], 0.67, choose_feature=True)
    slow = run(3e-5, "final", dcvit=[(0.995, 0.001), (0.9, 0.5)], whole=[(0.9, 0.5), (0.9, 0.5)])
    both = combine([block, final, slow], 0.67, choose_lr=True, choose_feature=True)
    dcvit = next(m for m in both["methods"] if m["method"] == "dcvit")
    assert list(zip(dcvit["lr"], dcvit["feature"])) == [(3e-5, "final"), (2e-4, "block")]
    with pytest.raises(VitrtError, match="with the same lr and feature"):
        combine([block, final, slow, slow], 0.67, choose_lr=True, choose_feature=True)
    for name, data in (("block", block), ("final", final), ("slow", slow)):
        (tmp_path / f"{name}.json").write_text(json.dumps(data))
    files = ",".join(str(tmp_path / f"{n}.json") for n in ("block", "final", "slow"))
    assert benchmark(DcvitSeedsConfig(results=files, baseline=0.67, choose_lr=True, choose_feature=True,
                                      out=tmp_path / "chosen")) == 0
    text = (tmp_path / "chosen.md").read_text()
    assert "| dcvit | 0.668 | 0, 1 | 3e-05 final, 0.0002 block (of 3e-05, 0.0002; block, final) | 99.50, 97.00 |" \
        in text
    assert "the feature of lowest metric loss of block, final" in text


def test_sweep_table_shows_the_test_kl_where_rows_carry_it():
    """Rows recorded before the test KL was measured still format (a dash), newer rows show it."""
    from vitrt.benchmarks.dcvit_sweep import format_table

    row = {"method": "whole_blocks", "target": 0.7, "seed": 0, "macs_fraction": 0.668, "params_fraction": 0.67,
           "blocks": [5, 6], "mlp": [0, 0], "top1": 0.98, "metric_loss": 0.002, "verify_max_abs_err": 1e-6}
    table = format_table({"dense_top1": 0.99, "comparison": [], "rows": [row, {**row, "seed": 1, "test_kl": 0.00611}]})
    assert "| -1.00 | – | 0.002000 |" in table and "| -1.00 | 0.00611 | 0.002000 |" in table


def test_the_mlp_only_ablation_reaches_a_target_that_every_mlp_meets_exactly(twin):
    """A target equal to what removing all the MLPs leaves is reachable (n == depth), one below it is not."""
    from vitrt.compiler.cost import vit_flops

    spec = twin.spec
    none_left = spec.with_blocks([dataclasses.replace(b, mlp=0) for b in spec.blocks])
    exact = vit_flops(none_left) / vit_flops(spec)
    shape = dcvit.structure(spec, dcvit.Settings(macs=exact, mlp_only=True))
    assert shape.mlp == (0,) * spec.depth and shape.macs_fraction == pytest.approx(exact)
    with pytest.raises(VitrtError, match="below what removing every MLP reaches"):
        dcvit.structure(spec, dcvit.Settings(macs=exact - 0.01, mlp_only=True))


def test_spare_mlp_channels_go_to_the_first_block_up_to_its_full_width(twin):
    """Two attention modules and 10 MLP channels to remove with a preferred fraction of 1: the 16-aligned widths
    are 240 and 240 + the spare 16 = 256, the whole MLP, for the most recoverable block."""
    from vitrt.compiler.cost import block_flops

    spec = twin.spec
    block = spec.blocks[0]
    attention = block_flops(spec.emb, block) - block_flops(spec.emb, dataclasses.replace(block, heads=0))
    channel = 4 * block.tokens * spec.emb
    macs = 1 - (2 * attention + 10 * channel) / vit_flops(spec)
    assert dcvit.structure(spec, dcvit.Settings(macs=macs, mlp=1.0)).mlp == (256, 240)
