"""Head-aligned structural pruning (NViT): EMB, heads, QK and V dims per head, MLP channels, per block; and
DC-ViT's dense few-shot block compression (attention removed, MLP reduced) as a planning mode.

    plan.py        PruningPlan: kept indices per group (JSON), alignment rules
    gates.py       structural gates on the twin, NViT's Hessian importance (eq. 6), magnitude baseline
    search.py      latency-aware greedy search (eq. 7), ReViT dims (Table 6)
    planner.py     plan(twin, ctx, options): importance + search (or a given plan, or DC-ViT) + fine-tuning
    dcvit.py       DC-ViT: MACs -> blocks and MLP widths, recoverability, progressive feature-mimicking compression
    graph_pass.py  PrunePass: slices the canonical ONNX
    twin.py        apply_plan: the same slicing on the torch twin
    report.py      manifest section, pruning_plan.json, pruning_dims.png
    stage.py       the Transform row that vitrt.pipeline.stages.STAGES lists
"""
