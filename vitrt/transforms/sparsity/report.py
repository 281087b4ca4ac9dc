"""What a 2:4 compile adds to OUT: the manifest section, the per-feature losses (for QAT's W_j), the
compressed weights with ``--export-sparse``, and TensorRT's sparse-tactic layers after a trt build."""

from __future__ import annotations

import json
import re

from vitrt.compiler.weights import twin_initializers
from vitrt.transforms.base import Finished, ReportContext, StageReport
from vitrt.transforms.sparsity.export import write_sparse_weights
from vitrt.transforms.sparsity.plan import SparsityPlan


def report(plan: SparsityPlan, ctx: ReportContext) -> StageReport:
    files = {}
    if plan.finetune:
        losses = {key: plan.finetune[key] for key in ("feature_names", "per_feature_losses", "feature_weights")}
        files["sparse_feature_losses.json"] = lambda path: path.write_text(json.dumps(losses, indent=2))
    if plan.export:
        values = twin_initializers(ctx.twin_after)
        values = {d.initializer: values[d.initializer] for d in plan.eligible}
        files["sparse_weights.npz"] = lambda path: write_sparse_weights(path, plan.eligible, values)
    return StageReport(plan.report(), files)


def names(layer_name: str, canonical: str) -> bool:
    """Whether the TensorRT layer name holds ``canonical`` as a whole name (``blocks.3.attn.q`` is not in
    ``blocks.3.attn.qk``, ``head`` not in ``head_dist``)."""
    return re.search(rf"(?<![\w.]){re.escape(canonical)}(?!\w)", layer_name) is not None


def finish(plan: SparsityPlan, section: dict, finished: Finished) -> dict:
    """After a TensorRT build: which eligible layers run with sparse weights (the engine inspector's
    ``HasSparseWeights`` field)."""
    inspector = finished.build.get("engine_inspector")
    if inspector is None:
        return {}
    from vitrt.compiler.backends.trt import sparse_layers

    sparse = sparse_layers(inspector)
    report = {"backend": "trt", "sparse_tactic_layers": sparse,
              "eligible_with_sparse_tactic": [d.name for d in plan.eligible if any(names(s, d.name) for s in sparse)],
              "note": "from the inspector's HasSparseWeights per layer; a layer TensorRT fuses into a Myelin "
                      "{ForeignNode[...]} reports no such field, so a sparse kernel there is not listed"}
    section["tensorrt"] = report
    return {"sparse_tactics.json": lambda path: path.write_text(json.dumps(report, indent=2))}
