"""The transforms, one sub-package each, all of one shape (see :mod:`vitrt.transforms.base`): prune (NViT),
tome (ToMe / DFE / LGTM), sparsity (2:4, GPUSQ-ViT), quant (Q/DQ, PTQ / QAT), precision (fp16 typing).

Transforms import the compiler, the calibration layer and the kernels, never each other or anything above.
"""
