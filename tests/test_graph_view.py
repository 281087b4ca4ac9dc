import numpy as np
import pytest

from vitrt.compiler.errors import SpecError
from vitrt.compiler.graph import GraphView
from vitrt.compiler.lower import lower
from vitrt.compiler.models import canonicalize

from conftest import tiny_vit


@pytest.fixture
def view():
    return GraphView.from_onnx(lower(canonicalize(tiny_vit()), batch=1))


def test_finds_block_nodes_and_weights_by_canonical_name(view):
    fc1 = view.block(1).linear("mlp.fc1")
    assert fc1.matmul.name == "blocks.1.mlp.fc1" and fc1.weight.name == "blocks.1.mlp.fc1.weight"
    assert (fc1.in_features, fc1.out_features) == (64, 256)
    assert fc1.bias.name == "blocks.1.mlp.fc1.bias" and fc1.bias_add.name == "blocks.1.mlp.fc1.bias_add"
    assert view.block(0).node("attn.softmax").op == "Softmax"
    assert [r.name for r in view.weight_linears()][-1] == "head"


def test_unknown_block_and_node_are_named(view):
    with pytest.raises(SpecError, match="block 5 does not exist"):
        view.block(5)
    with pytest.raises(SpecError, match="no node 'blocks.0.attn.nope'"):
        view.block(0).node("attn.nope")


def test_validation_names_the_missing_node(view):
    view.graph.nodes = [n for n in view.graph.nodes if n.name != "blocks.1.attn.v"]
    with pytest.raises(SpecError, match="no node 'blocks.1.attn.v'"):
        GraphView(view.graph, view.spec)


def test_validation_names_a_wrong_weight_shape(view):
    fc2 = view.block(0).linear("mlp.fc2")
    fc2.weight.values = np.zeros((128, 64), np.float32)
    with pytest.raises(SpecError, match=r"'blocks.0.mlp.fc2' has shape \(128, 64\), the spec implies \(256, 64\)"):
        GraphView(view.graph, view.spec)
