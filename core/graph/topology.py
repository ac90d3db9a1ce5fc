"""The shape of a graph: which nodes the outputs depend on, in what order, and under
which unique names. Both walks are iterative and linear, so depth and size are
limited by memory, not by Python's recursion limit."""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import GraphError
from ..layer import Layer
from ..tensor import InputNode, Node, Tensor


def order_nodes(name: str, inputs: Sequence[Tensor], outputs: Sequence[Tensor]) -> list[Node]:
    """Topological order of the nodes the outputs depend on, by iterative DFS; a cycle or
    an output reachable from an input not among ``inputs`` is a GraphError."""
    allowed = {id(t.node) for t in inputs}
    if len(allowed) != len(inputs):
        raise GraphError(f"network {name!r}: an input is listed twice")
    order: list[Node] = []
    state: dict[int, int] = {}  # 1 = on the stack, 2 = done
    for out in outputs:
        stack: list[tuple[Node, int]] = [(out.node, 0)]
        while stack:
            node, i = stack.pop()
            if i == 0:
                if state.get(id(node)) == 2:
                    continue
                if isinstance(node, InputNode) and id(node) not in allowed:
                    raise GraphError(
                        f"network {name!r}: output {out.node.display_name!r} is not "
                        f"connected to the network's inputs: it depends on input "
                        f"{node.display_name!r}, which is not among them")
                state[id(node)] = 1
            if i < len(node.inputs):
                stack.append((node, i + 1))
                child = node.inputs[i].node
                if state.get(id(child)) == 1:
                    raise GraphError(f"network {name!r}: cycle through node "
                                     f"{child.display_name!r}")
                if state.get(id(child)) != 2:
                    stack.append((child, 0))
            else:
                state[id(node)] = 2
                order.append(node)
    return order


class _Names:
    """Unique names: the base itself when free, else ``base_1``, ``base_2``..."""

    def __init__(self, taken: set[str]) -> None:
        self.taken = taken
        self.next_suffix: dict[str, int] = {}

    def fresh(self, base: str) -> str:
        if base not in self.taken:
            self.taken.add(base)
            return base
        k = self.next_suffix.get(base, 1)
        while f"{base}_{k}" in self.taken:
            k += 1
        self.next_suffix[base] = k + 1
        self.taken.add(f"{base}_{k}")
        return f"{base}_{k}"


def assign_names(name: str, inputs: Sequence[Tensor], nodes: Sequence[Node]) -> list[Layer]:
    """Give unlabelled layers, inputs and nodes unique names, in graph order; returns
    the distinct layers. A shared layer's second application is ``label@2``."""
    layers: list[Layer] = []
    seen_layers: set[int] = set()
    for node in nodes:
        if node.layer is not None and id(node.layer) not in seen_layers:
            seen_layers.add(id(node.layer))
            layers.append(node.layer)
    labels: set[str] = set()
    for layer in layers:
        if layer.label:
            if layer.label in labels:
                raise GraphError(f"network {name!r}: two different layers are "
                                 f"labelled {layer.label!r}")
            labels.add(layer.label)
    for t in inputs:
        if t.node.name:
            if t.node.name in labels:
                raise GraphError(f"network {name!r}: duplicate name {t.node.name!r}")
            labels.add(t.node.name)
    names = _Names(labels)
    for t in inputs:
        if not t.node.name:
            t.node.name = names.fresh("input")
    first_node: dict[int, Node] = {}
    for node in nodes:
        if node.layer is not None:
            first_node.setdefault(id(node.layer), node)
    # an unlabelled layer whose first node the user named takes that name, so that its
    # parameters are keyed as the spec that rebuilds it keys them; the rest get fresh ones
    for layer in layers:
        given = first_node[id(layer)].name
        if not layer.label and given and given not in labels:
            layer.label = given
            labels.add(given)
    for layer in layers:
        if not layer.label:
            layer.label = names.fresh(layer.name)
    uses: dict[int, int] = {}
    node_names: set[str] = {t.node.name for t in inputs if t.node.name}
    for node in nodes:
        if node.layer is None:
            continue
        k = uses[id(node.layer)] = uses.get(id(node.layer), 0) + 1
        if node.name is None:
            assert node.layer.label is not None
            node.name = node.layer.label if k == 1 else f"{node.layer.label}@{k}"
        if node.name in node_names:
            raise GraphError(f"network {name!r}: duplicate node name {node.name!r}")
        node_names.add(node.name)
    return layers
