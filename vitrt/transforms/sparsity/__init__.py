"""2:4 structured sparsity (GPUSQ-ViT): masks along the axis TensorRT checks, channel permutation, sparse
fine-tuning, and the FP16 / INT8 / INT4 compressed layouts (:mod:`vitrt.kernels.sparse24`).

    plan.py          layer decisions (eligibility and reasons), SparsityPlan (masks, weights), storage accounting
    permutation.py   channel-permutation search (pure numpy)
    planner.py       plan(twin, ctx, options): decide, permute, mask, fine-tune on a copy
    graph_pass.py    SparsityPass: masked weights into the graph
    twin.py          apply_plan: the same on the torch twin
    export.py        --export-sparse: compressed values + metadata
    report.py        manifest section, files, TensorRT's sparse tactics
    stage.py         the Transform row that vitrt.pipeline.stages.STAGES lists
"""
