"""The compiler: lowering, the ViTSpec, the graph view, the pass manager, backends and ``compile()``.

Submodules are imported on use; ``import vitrt.compiler`` stays cheap and never touches TensorRT or CUDA.
"""

from .errors import VitrtError
from .spec import BlockSpec, ViTSpec

__all__ = ["BlockSpec", "ViTSpec", "VitrtError", "compile"]


def compile(*args, **kwargs):
    """See :func:`vitrt.compiler.api.compile`."""
    from .api import compile as _compile

    return _compile(*args, **kwargs)
