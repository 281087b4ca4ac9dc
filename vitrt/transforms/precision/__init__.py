"""Precision typing: the float graph becomes FP16 (TensorRT 11 takes precision only from the graph), with
LayerNorm and Softmax kept in FP32.

    plan.py        PrecisionPlan: dtype and the ops kept in fp32
    graph_pass.py  Fp16Pass: retypes tensors and constants, Casts around the kept ops
    twin.py        fp16_twin: the same on the torch twin
    stage.py       the Transform row that vitrt.pipeline.stages.STAGES lists
"""
