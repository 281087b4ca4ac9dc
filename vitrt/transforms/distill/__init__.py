"""Knowledge-distillation fine-tuning: the twin a compile has made so far (pruned, merged) learns from the dense
model (the empirical study's distillation: soft logits at temperature t plus hard labels, eq. 4).

    config.py      DistillConfig: --distill-epochs N, --distill-data
    plan.py        DistillPlan: the fine-tuned twin parameters and the training record
    planner.py     plan(twin, ctx, options): the shared trainer, teacher = the dense twin
    graph_pass.py  DistillPass: writes the parameters into the graph (structure unchanged)
    stage.py       the Transform row that vitrt.pipeline.stages.STAGES lists
"""
