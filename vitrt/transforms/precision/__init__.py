"""Precision typing: the float graph becomes FP16 or BF16 (TensorRT 11 takes precision only from the graph), with
LayerNorm kept in FP32 (Softmax typed, so that TensorRT fuses the attention).

    plan.py        PrecisionPlan: dtype (fp16 | bf16) and the ops kept in fp32
    graph_pass.py  PrecisionTypingPass: retypes tensors and constants, Casts around the kept ops
    twin.py        typed_twin: the same on the torch twin
    stage.py       the Transform row that vitrt.pipeline.stages.STAGES lists

The stage runs when the target's activations are typed (:attr:`vitrt.compiler.target.TargetConfig.activation_dtype`):
``--precision fp16`` / ``bf16``, and ``int4w`` for TensorRT, whose INT4 weight-only form is W4A16.
"""
