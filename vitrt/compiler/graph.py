"""The graph view: canonical ONNX as an onnx-graphsurgeon graph plus its ViTSpec, addressed by canonical name.

Passes never search the graph for patterns: they ask the view for ``view.block(3).linear("attn.q")`` and
get the MatMul node, its ``B[K, N]`` weight and its bias. On construction the view checks that every node
and weight the spec implies exists with the implied shape, and names the first thing that does not.
"""

from __future__ import annotations

import collections
import contextlib
from dataclasses import dataclass

import onnx
import onnx_graphsurgeon as gs

from vitrt.compiler.errors import SpecError
from vitrt.compiler.lower import finalize
from vitrt.compiler.spec import BLOCK_LINEAR_NAMES, ViTSpec

BLOCK_LINEARS = BLOCK_LINEAR_NAMES


@contextlib.contextmanager
def quiet_graphsurgeon():
    """Keep graphsurgeon's console warnings out of vitrt's output: it prints to stdout when it meets a float8
    tensor (FP8 Q/DQ graphs; it keeps them in their ONNX type), which would break ``--quiet``. Its logger's
    severity is raised only inside and restored afterwards."""
    from onnx_graphsurgeon.logger import G_LOGGER

    severity = G_LOGGER.severity
    G_LOGGER.severity = G_LOGGER.ERROR
    try:
        yield
    finally:
        G_LOGGER.severity = severity


def set_opset(graph: gs.Graph, opset: int) -> None:
    """Raise the default-domain opset (graphsurgeon exports ``import_domains`` when set, else ``opset``)."""
    graph.opset = opset
    if graph.import_domains is not None:
        graph.import_domains = [d for d in graph.import_domains if d.domain not in ("", "ai.onnx")] + \
            [onnx.helper.make_opsetid("", opset)]


QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
ONNX_FLOAT_TYPES = {"fp16": "tensor(float16)", "bf16": "tensor(bfloat16)"}  # the typed activations' schema names


def typed_qdq_opset(dtype: str, opset: int) -> int:
    """The first opset from ``opset`` whose QuantizeLinear and DequantizeLinear take ``dtype`` (fp16 | bf16)
    scales (19 for both). Typing a quantized graph's activations types its Q/DQ scales (DequantizeLinear's output
    type is its scale's), so such a graph needs it."""
    onnx_type = ONNX_FLOAT_TYPES[dtype]
    for candidate in range(opset, onnx.defs.onnx_opset_version() + 1):
        if all(any(onnx_type in c.allowed_type_strs for c in onnx.defs.get_schema(op, candidate).type_constraints)
               for op in QDQ_OPS):
            return candidate
    raise SpecError(f"no ONNX opset up to {onnx.defs.onnx_opset_version()} has {onnx_type} Q/DQ scales")


def import_graph(model: onnx.ModelProto) -> gs.Graph:
    """``gs.import_onnx``, quietly."""
    with quiet_graphsurgeon():
        return gs.import_onnx(model)


@dataclass
class LinearRef:
    """A canonical linear layer: ``bias_add(MatMul(x, weight[K, N]), bias)``."""

    name: str
    matmul: gs.Node
    weight: gs.Constant
    bias_add: gs.Node | None
    bias: gs.Constant | None

    @property
    def in_features(self) -> int:
        return int(self.weight.shape[0])

    @property
    def out_features(self) -> int:
        return int(self.weight.shape[1])


def dequantized_constant(tensor) -> gs.Constant | None:
    """The quantized weight initializer behind a DequantizeLinear (the Q/DQ pass's weight form), else None."""
    if isinstance(tensor, gs.Variable) and len(tensor.inputs) == 1 and tensor.inputs[0].op == "DequantizeLinear" \
            and isinstance(tensor.inputs[0].inputs[0], gs.Constant):
        return tensor.inputs[0].inputs[0]
    return None


class BlockView:
    def __init__(self, view: "GraphView", index: int):
        self.view, self.index = view, index
        self.prefix = f"blocks.{index}"
        self.spec = view.spec.blocks[index]

    def name(self, local: str) -> str:
        return f"{self.prefix}.{local}"

    def node(self, local: str) -> gs.Node:
        return self.view.node(self.name(local))

    def linear(self, local: str) -> LinearRef:
        return self.view.linear(self.name(local))

    def linears(self) -> list[LinearRef]:
        """The block's weight MatMuls that exist under its spec (attention and MLP may be removed)."""
        names = [n for n in BLOCK_LINEARS if (n.startswith("attn") and self.spec.heads) or (n.startswith("mlp") and self.spec.mlp)]
        return [self.linear(n) for n in names]

    def expected_weight_shapes(self) -> dict[str, tuple[int, int]]:
        """B[K, N] of every weight MatMul the spec implies. A layer factored to rank r (``spec.ranks``) is two
        MatMuls: ``<layer>.u`` with U[K, r], then ``<layer>`` itself with V[r, N] (and the layer's bias)."""
        emb, b = self.view.spec.emb, self.spec
        shapes = {}
        if b.heads:
            shapes.update({"attn.q": (emb, b.heads * b.qk), "attn.k": (emb, b.heads * b.qk),
                           "attn.v": (emb, b.heads * b.v), "attn.proj": (b.heads * b.v, emb)})
        if b.mlp:
            shapes.update({"mlp.fc1": (emb, b.mlp), "mlp.fc2": (b.mlp, emb)})
        ranks = self.view.spec.ranks
        for local, (k, n) in list(shapes.items()):
            rank = ranks.get(self.name(local))
            if rank is not None:
                shapes[local] = (rank, n)
                shapes[f"{local}.u"] = (k, rank)
        return shapes


class GraphView:
    """A gs.Graph together with its ViTSpec; validated against the spec on construction."""

    def __init__(self, graph: gs.Graph, spec: ViTSpec, *, validate: bool = True):
        self.graph, self.spec = graph, spec
        self._index()
        if validate:
            self.validate()

    @classmethod
    def from_onnx(cls, model: onnx.ModelProto, *, validate: bool = True) -> "GraphView":
        return cls(import_graph(model), ViTSpec.from_onnx(model), validate=validate)

    def to_onnx(self) -> onnx.ModelProto:
        """Export (toposorted, dead nodes removed, shapes inferred, spec attached, checked)."""
        return finalize(self.graph, self.spec)

    def with_spec(self, spec: ViTSpec) -> "GraphView":
        return GraphView(self.graph, spec)

    def _index(self) -> None:
        self._nodes = {node.name: node for node in self.graph.nodes}

    def refresh(self) -> None:
        """Re-index node names after a pass added or removed nodes."""
        self._index()

    # --- lookup ----------------------------------------------------------------------------------
    def has_node(self, name: str) -> bool:
        return name in self._nodes

    def node(self, name: str) -> gs.Node:
        try:
            return self._nodes[name]
        except KeyError:
            raise SpecError(f"graph has no node '{name}': not a canonical vitrt graph or the spec does not match it") from None

    def linear(self, name: str) -> LinearRef:
        matmul = self.node(name)
        weight = matmul.inputs[1] if len(matmul.inputs) == 2 else None
        weight = dequantized_constant(weight) or weight
        if matmul.op != "MatMul" or len(matmul.inputs) != 2 or not isinstance(weight, gs.Constant):
            raise SpecError(f"node '{name}' should be a MatMul with a constant weight, found {matmul.op}")
        bias_add = self._nodes.get(f"{name}.bias_add")
        bias = None
        if bias_add is not None:
            bias = next((t for t in bias_add.inputs if isinstance(t, gs.Constant)), None)
        return LinearRef(name, matmul, weight, bias_add, bias)

    def block(self, index: int) -> BlockView:
        if not 0 <= index < self.spec.depth:
            raise SpecError(f"block {index} does not exist: the model has {self.spec.depth} blocks")
        return BlockView(self, index)

    def blocks(self) -> list[BlockView]:
        return [BlockView(self, i) for i in range(self.spec.depth)]

    def weight_linears(self) -> list[LinearRef]:
        """Every weight MatMul: the blocks' six projections, then the head(s)."""
        refs = [ref for block in self.blocks() for ref in block.linears()]
        refs.append(self.linear("head"))
        if self.spec.distilled:
            refs.append(self.linear("head_dist"))
        return refs

    def op_counts(self) -> dict[str, int]:
        return dict(sorted(collections.Counter(node.op for node in self.graph.nodes).items()))

    # --- validation ------------------------------------------------------------------------------
    def validate(self) -> None:
        spec = self.spec
        conv_weight = self.node("patch_embed").inputs[1]
        self._expect_shape("patch_embed", dequantized_constant(conv_weight) or conv_weight, (spec.emb, spec.in_chans, spec.patch, spec.patch))
        for block in self.blocks():
            for local, shape in block.expected_weight_shapes().items():
                ref = block.linear(local)
                self._expect_shape(ref.name, ref.weight, shape)
                if ref.bias is not None:
                    self._expect_shape(f"{ref.name}.bias", ref.bias, (shape[1],))
        heads = ("head", "head_dist") if spec.distilled else ("head",)
        for name in heads:
            self._expect_shape(name, self.linear(name).weight, (spec.emb, spec.num_classes))

    @staticmethod
    def _expect_shape(name: str, tensor, shape) -> None:
        if tuple(tensor.shape) != tuple(shape):
            raise SpecError(f"weight of '{name}' has shape {tuple(tensor.shape)}, the spec implies {tuple(shape)}")
