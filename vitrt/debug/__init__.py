"""Accuracy debugging: where along the depth a compiled graph departs from its twin or from another artifact, which
compressed layers to revert to get the accuracy back, and how sensitive each layer is to quantization.

    points.py       the canonical probe points of a graph (block outputs, attention logits / probabilities, MLP
                    hidden, Q/DQ'd activations) and where each lives in the ONNX graph and in the torch twin
    probes.py       run a graph with every point marked as an output (ONNX Runtime, or another backend), run a twin
                    with hooks on the same points
    metrics.py      per-point error statistics accumulated over batches; tolerances; first divergence; largest
                    contributor
    compare.py      ``vitrt compare OUT`` (graph vs its twin) and ``vitrt compare A B`` (two artifacts): table + plot
    bisect.py       ``vitrt compare OUT --bisect``: the smallest set of compressed layers to revert, by halving
    sensitivity.py  ``vitrt sensitivity MODEL``: per-layer quantization sensitivity, ranked table + plot
    plots.py        the PNGs
"""
