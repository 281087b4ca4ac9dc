"""Reading an ONNX file a user handed over (an OUT's model, a graph to lint): one line when it is not a model."""

from __future__ import annotations

from pathlib import Path

from vitrt.compiler.errors import VitrtError


def read_onnx(path: str | Path, *, fix: str = "compile OUT again", external_data: bool = False):
    """The ``onnx.ModelProto`` in ``path``; a one-line VitrtError (ending in ``fix``) for a missing, unreadable or
    corrupt file, or one protobuf reads as an empty model (no nodes or no opset), instead of protobuf's traceback."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=external_data)
    except Exception as exc:  # noqa: BLE001 - DecodeError, OSError, ValueError ...: the user's file, one line
        first = (str(exc) or type(exc).__name__).splitlines()[0]
        raise VitrtError(f"cannot read '{path}' as an ONNX model ({first}); {fix}") from None
    if not model.graph.node or not model.opset_import:  # protobuf reads an empty (or foreign) file as an empty model
        raise VitrtError(f"'{path}' is not an ONNX model (no graph nodes or no opset); {fix}")
    return model
