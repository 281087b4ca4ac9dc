"""The compiler's IR layer: the ViTSpec, the torch twin and its lowering to canonical ONNX, the graph view, the
pass contract and manager, verification, backends and runners, the timing loop, the latency table, and atomic
output. It imports nothing from the layers above it (transforms, pipeline, CLI and benchmarks).

Submodules are imported on use; ``import vitrt.compiler`` stays cheap and never touches TensorRT or CUDA.
"""

from vitrt.compiler.errors import VitrtError
from vitrt.compiler.spec import BlockSpec, ViTSpec

__all__ = ["BlockSpec", "ViTSpec", "VitrtError"]
