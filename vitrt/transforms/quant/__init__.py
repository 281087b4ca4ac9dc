"""Quantization carried by the graph: Q/DQ for INT8 / FP8 (weights per channel, activations per tensor) and
INT4 weight-only (block-wise), with ranges from PTQ calibration or GPUSQ-ViT's QAT on the torch twin.

    scale_table.py   ScaleTable: canonical tensor name -> format and range (JSON), validation
    fakequant.py     modelopt fake quantizers on the twin, calibration, table <-> twin
    qat.py           sparse-distillation-aware QAT on the shared trainer
    plan.py          QuantPlan: precision, table, attention flag, QAT weights
    planner.py       plan(twin, ctx, options)
    graph_pass.py    QDQPass: Q/DQ insertion (TensorRT placement; postcondition: vitrt.compiler.trt_lint's Q/DQ rules)
    twin.py          apply_plan: the fake-quant twin
    report.py        manifest section, scale_table.json
    stage.py         the Transform row that vitrt.pipeline.stages.STAGES lists
"""
