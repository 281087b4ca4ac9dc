"""vitrt: a deployment compiler for timm Vision Transformers.

``vitrt.compile("deit_small_patch16_224", "OUT", backend="ort", verify=True, bench=True)`` lowers the model to
canonical ONNX, runs the compression passes, builds the backend artifact and writes a manifest. Importing
vitrt never imports TensorRT, Model Optimizer or CUDA: backends and heavy dependencies load on use.
"""

from ._version import __version__
from .compiler import BlockSpec, ViTSpec, VitrtError, compile

__all__ = ["__version__", "BlockSpec", "ViTSpec", "VitrtError", "compile"]
