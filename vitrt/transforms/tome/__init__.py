"""Static token merging: ToMe's bipartite soft matching with a dense feature extractor (DFE) and local-global
merging (LGTM), every token count fixed at compile time.

    schedule.py    TomeSchedule (what the user asked) and MergePlan (resolved for one spec): the plan
    solve.py       constant r for a FLOPs or latency-table fraction
    planner.py     plan(twin, ctx, options): schedule resolved (or solved) for the spec the stage meets
    graph_pass.py  TokenMergePass: TopK / GatherND / one-hot MatMul merge subgraphs (no Scatter)
    twin.py        apply_plan: the same merge on the torch twin, op for op
    report.py      manifest section, token_merge.png, the measured speedup
    stage.py       the Transform row that vitrt.pipeline.stages.STAGES lists
"""
