"""Calibration, the scale table (round trip, malformed tables), QAT with fixed 2:4 masks, and the Q/DQ graph
against the fake-quant twin on the digits reference (real data)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.conftest import tiny_vit
from vitrt.calib.data import load_data, synthetic
from vitrt.transforms.quant.fakequant import apply_scale_table, qat, quantize_twin, sparse_masks, table_from_twin
from vitrt.transforms.quant.scale_table import load_scale_table
from vitrt.compiler.errors import VitrtError
from vitrt.compiler.graph import GraphView
from vitrt.compiler.lower import lower
from vitrt.compiler.models import canonicalize
from vitrt.compiler.verify import run_onnx, run_torch
from vitrt.transforms.quant.graph_pass import QDQ_TOLERANCE, insert_qdq
from vitrt.transforms.quant.lint import lint_qdq


@pytest.fixture(scope="module")
def tiny():
    return canonicalize(tiny_vit(depth=2))


@pytest.fixture(scope="module")
def tiny_int8(tiny):
    return quantize_twin(tiny, "int8", synthetic(32, 32, seed=5))


def test_scale_table_round_trip(tiny, tiny_int8, tmp_path):
    qtwin, table = tiny_int8
    path = tmp_path / "scales.json"
    table.save(path)
    loaded = load_scale_table(path, tiny.spec, "int8")
    assert loaded.source == "file:scales.json" and list(loaded.entries) == list(table.entries)
    for name, entry in table.entries.items():
        assert loaded.entries[name].dtype == entry.dtype and loaded.entries[name].axis == entry.axis
        np.testing.assert_array_equal(loaded.entries[name].amax, entry.amax)
    data = json.loads(path.read_text())["tensors"]
    assert data["blocks.1.attn.q.weight"]["axis"] == 1 and len(data["blocks.1.attn.q.weight"]["scale"]) == 64
    assert data["patch_embed.weight"]["axis"] == 0 and data["blocks.0.attn.q.input"]["shape"] == []
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():  # the table alone reproduces the fake-quant twin exactly
        assert torch.equal(apply_scale_table(tiny, loaded)(x), qtwin(x))


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["tensors"].update({"blocks.9.attn.q.input": d["tensors"]["head.input"]}), "unknown tensor"),
    (lambda d: d["tensors"]["blocks.0.mlp.fc1.weight"].update(amax=[1.0] * 7), "has shape"),
    (lambda d: d["tensors"]["head.input"].update(amax=0.0), "positive"),
    (lambda d: d["tensors"]["blocks.1.attn.k.weight"].update(amax=[-1.0] * 64), "positive"),
    (lambda d: d["tensors"].pop("blocks.0.attn.v.input"), "no entry"),
    (lambda d: d.update(precision="fp8"), "precision"),
    (lambda d: d["tensors"]["blocks.0.attn.proj.weight"].update(axis=0), "axis"),
])
def test_malformed_scale_table_is_refused_in_one_line(tiny, tiny_int8, tmp_path, edit, message):
    data = tiny_int8[1].to_dict()
    edit(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(VitrtError, match=message) as info:
        load_scale_table(path, tiny.spec, "int8")
    assert "\n" not in str(info.value)


def test_malformed_scale_table_in_compile_writes_nothing(tiny, tiny_int8, tmp_path):
    from vitrt.cli import main

    data = tiny_int8[1].to_dict()
    data["tensors"]["head.input"]["amax"] = -2.0
    table = tmp_path / "bad.json"
    table.write_text(json.dumps(data))
    (tmp_path / "junk.json").write_text("{not json")
    out = tmp_path / "out"
    for bad in (table, tmp_path / "junk.json", tmp_path / "missing.json"):
        code = main(["compile", "vit_tiny_patch16_224", "--img-size", "32", "-o", str(out), "--precision", "int8",
                     "--scale-table", str(bad), "--quiet"])
        assert code == 2 and not out.exists()
    assert main(["compile", "vit_tiny_patch16_224", "-o", str(out), "--qat-epochs", "2", "--quiet"]) == 2


def test_calibration_methods_and_int4_table(tiny):
    data = synthetic(32, 32, seed=5)
    _, t_max = quantize_twin(tiny, "int8", data, method="max")
    _, t_pct = quantize_twin(tiny, "int8", data, method="percentile", percentile=99.0)
    a_max = t_max.entries["blocks.0.mlp.fc2.input"].amax
    a_pct = t_pct.entries["blocks.0.mlp.fc2.input"].amax
    assert 0 < a_pct < a_max  # percentile clips the tail max keeps
    np.testing.assert_array_equal(t_max.entries["blocks.0.mlp.fc2.weight"].amax,  # weights: max in both
                                  t_pct.entries["blocks.0.mlp.fc2.weight"].amax)
    w = tiny.blocks[0].mlp.fc2.weight.detach().T.abs()  # int4: max |w| per block of 64 input channels
    _, t4 = quantize_twin(tiny, "int4w")
    np.testing.assert_allclose(t4.entries["blocks.0.mlp.fc2.weight"].amax, w.reshape(4, 64, 64).amax(1).numpy())


def test_qat_keeps_2to4_masks_and_uses_prior_feature_weights():
    twin = canonicalize(tiny_vit(depth=1))
    with torch.no_grad():
        fc1 = twin.blocks[0].mlp.fc1
        w = fc1.weight.reshape(fc1.out_features, -1, 4)
        keep = w.abs().topk(2, dim=-1).indices
        fc1.weight.copy_((w * torch.zeros_like(w).scatter_(-1, keep, 1.0)).reshape_as(fc1.weight))
    zeros = fc1.weight == 0
    qtwin, table = quantize_twin(twin, "int8", synthetic(32, 32, seed=5))
    assert list(sparse_masks(qtwin)) == ["blocks.0.mlp.fc1"]
    before = qtwin.blocks[0].attn.q.weight.detach().clone()
    train = load_data("digits", 32, split="train", limit=64)
    stats = qat(qtwin, twin, train, epochs=1, lr=1e-3, batch_size=32, prior_feature_losses=[1.0, 2.0, 3.0])
    assert stats["feature_weights"] == "2:4 stage" and stats["sparse_layers_kept"] == 1
    assert np.isfinite(stats["loss"]).all()
    assert not torch.equal(before, qtwin.blocks[0].attn.q.weight)  # trained
    assert torch.equal(qtwin.blocks[0].mlp.fc1.weight == 0, zeros)  # the 2:4 zeros stay zero
    refreshed = table_from_twin(qtwin, "int8", source="qat")
    np.testing.assert_array_equal(refreshed.entries["head.input"].amax, table.entries["head.input"].amax)
    with pytest.raises(VitrtError, match="per-feature losses"):
        qat(qtwin, twin, train, epochs=1, prior_feature_losses=[1.0])


@pytest.fixture(scope="module")
def digits(digits_reference):
    model, _ = digits_reference
    return canonicalize(model)


@pytest.mark.parametrize("precision", ["int8", "fp8"])
def test_digits_qdq_graph_agrees_with_fake_quant_twin(digits, digits_test, precision):
    """Top-1 agreement >= 99.5 % on the digits test set (all 450 images for int8, 150 for fp8); logits equal to
    fp32 precision except where an activation rounding tie breaks differently (<= QDQ_TOLERANCE, see
    vitrt.transforms.quant.graph_pass), on average well below the quantization effect itself."""
    calib = load_data("digits", 32, split="train", limit=64)
    qtwin, table = quantize_twin(digits, precision, calib, quantize_attention=precision == "int8")
    view = GraphView.from_onnx(lower(digits, batch=None))
    insert_qdq(view, table, qtwin)
    model = view.to_onnx()
    assert lint_qdq(model) == []
    images = digits_test.images.numpy()[: 450 if precision == "int8" else 150]
    onnx_logits, twin_logits = run_onnx(model, images, 150), run_torch(qtwin, images)
    agreement = float((onnx_logits.argmax(1) == twin_logits.argmax(1)).mean())
    assert agreement >= 0.995
    err = np.abs(onnx_logits - twin_logits)
    # Most images have an activation whose rounding tie breaks differently (ONNX: x / s, modelopt: x · 127 / amax);
    # digits pixels are dyadic, so x · 127 / amax hits exact .5 ties at the patch-embedding input. A systematic
    # error (wrong scale, axis, placement) would be as large as the quantization effect itself; measured on the
    # 98.9 % reference: int8 0.19x (mean 0.0047 vs 0.025), fp8 < 0.1x.
    quant_effect = np.abs(twin_logits - run_torch(digits, images)).mean()
    assert float(err.mean()) <= 0.25 * float(quant_effect), (float(err.mean()), float(quant_effect))
    assert float(err.max()) <= QDQ_TOLERANCE[precision]


def test_compile_int8_writes_scale_table_and_reuses_it(tmp_path):
    import onnx
    from onnx import numpy_helper

    from vitrt.cli import main

    common = ["vit_tiny_patch16_224", "--img-size", "32", "--precision", "int8", "--calib-images", "16", "--quiet"]
    assert main(["compile", *common, "-o", str(tmp_path / "a"), "--verify"]) == 0
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    q = manifest["quantization"]
    assert q["precision"] == "int8" and q["scale_source"] == "calibration:max" and q["calib_data"] == "synthetic"
    assert q["layers"]["blocks.0.attn.q"] == {"input": "int8", "weight": "int8"} and len(q["layers"]) == 12 * 6 + 2
    assert manifest["verify"]["ok"] and manifest["verify"]["reference"] == "torch twin"
    table = tmp_path / "a" / "scale_table.json"
    assert main(["compile", *common, "-o", str(tmp_path / "b"), "--scale-table", str(table)]) == 0
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["quantization"]["scale_source"] == \
        "file:scale_table.json"
    a, b = (onnx.load(str(tmp_path / d / "model.onnx")) for d in "ab")  # (random timm weights differ per load)
    scales_b = {t.name: t for t in b.graph.initializer if t.name.endswith(".scale")}
    scales_a = [t for t in a.graph.initializer if t.name.endswith(".scale")]
    assert len(scales_a) == len(scales_b) == 2 * (12 * 6 + 2)
    for t in scales_a:  # every scale in the second graph is the one from the table
        np.testing.assert_array_equal(numpy_helper.to_array(t), numpy_helper.to_array(scales_b[t.name]))
