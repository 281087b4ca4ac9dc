"""Low-rank approximation: a linear layer W[K, N] becomes two MatMuls of rank r (truncated SVD), r per layer from a
singular-value energy threshold or a parameter budget, aligned to 8 / 16.

    config.py      LowRankConfig: --lowrank ENERGY | --lowrank-budget F, --lowrank-layers, --lowrank-align, ...
    plan.py        LowRankPlan: per layer K, N, rank, energy kept; the factors (and fine-tuned weights) beside it
    planner.py     plan(twin, ctx, options): SVD on the twin, ranks, optional fine-tuning (the shared trainer)
    graph_pass.py  LowRankPass: MatMul(x, W) -> MatMul(MatMul(x, U), V) under the layer's canonical name
    twin.py        factor_twin: the same on the torch twin (LowRankLinear modules)
    report.py      manifest section, lowrank_plan.json (+ .npz)
    stage.py       the Transform row that vitrt.pipeline.stages.STAGES lists
"""
