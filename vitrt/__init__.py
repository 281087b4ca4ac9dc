"""vitrt: a deployment compiler for timm Vision Transformers.

``vitrt.compile("deit_small_patch16_224", "OUT", backend="ort", verify=True, bench=True)`` lowers the model to
canonical ONNX, runs the compression passes, builds the backend artifact and writes a manifest. Importing
vitrt never imports TensorRT, Model Optimizer or CUDA: backends and heavy dependencies load on use.
"""

import contextlib

from vitrt._version import __version__
from vitrt.compiler.errors import VitrtError
from vitrt.compiler.spec import BlockSpec, ViTSpec

__all__ = ["__version__", "BlockSpec", "ViTSpec", "VitrtError", "compile", "synth"]


def compile(*args, **kwargs):
    """Compile a timm ViT; see :func:`vitrt.pipeline.driver.compile` for the arguments.

    Errors are :class:`VitrtError` subclasses (OptionError, OutputError, CheckpointError, DataError,
    UnsupportedModelError, ...) worded for Python: they name keywords (``force=True``), not flags. The caller's
    torch state is left as it was: its thread count (``threads=`` sets torch's, process-wide, while compiling)
    and its random number generator (the compile seeds its own).
    """
    import torch

    from vitrt.compiler.options import api_wording
    from vitrt.pipeline.config import CompileConfig
    from vitrt.pipeline.driver import compile as _compile

    threads = torch.get_num_threads()
    try:
        with torch.random.fork_rng(devices=[]), own_grad_mode():
            if kwargs.get("recipe") is not None:  # a replay: the recipe's options and plans, nothing planned again
                from vitrt.pipeline.recipe import compile_recipe

                model = args[0] if args else kwargs.pop("model", None)
                out = args[1] if len(args) > 1 else kwargs.pop("out", None)
                return compile_recipe(kwargs.pop("recipe"), model=model if isinstance(model, str) else None,
                                      module=None if isinstance(model, str) else model, out=out, **kwargs)
            return _compile(*args, **kwargs)
    except VitrtError as exc:
        # the same exception, its message in keyword wording: a subclass may take more than a message to build
        # (UnreachableTarget), and its attributes stay for a caller that reads them
        exc.args = (api_wording(str(exc), CompileConfig), *exc.args[1:])
        raise
    finally:
        torch.set_num_threads(threads)


def synth(*args, **kwargs):
    """See :func:`vitrt.calib.synthesis.synth` (``vitrt synth``: a synthetic metric set by model inversion). The
    caller's torch state is left as it was, as by :func:`compile`: its random number generator and grad mode."""
    import torch

    from vitrt.calib.synthesis import synth as _synth

    with torch.random.fork_rng(devices=[]), own_grad_mode():
        return _synth(*args, **kwargs)


@contextlib.contextmanager
def own_grad_mode():
    """Gradients on for vitrt's own training steps (importance scores, fine-tuning, QAT, model inversion) whatever
    the caller's mode: a pipeline that wraps deployment code in ``torch.no_grad()`` or ``torch.inference_mode()``
    would otherwise fail inside autograd. The caller's mode is back on return."""
    import torch

    with torch.inference_mode(False), torch.enable_grad():
        yield
