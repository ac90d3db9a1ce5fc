"""A graph as plain data: the spec dict that ``deltaprop.load_spec`` builds it back from.

Writing the format lives here, beside the graph it describes; reading, checking and
building it live in ``deltaprop.io.spec``.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import numpy as np

from ..tensor import Tensor

if TYPE_CHECKING:
    from .graph import Graph


def reference(t: Tensor) -> str:
    """How a spec names a value: ``node``, or ``node:k`` for output k of several."""
    assert t.node.name is not None
    if t.node.layer is None or len(t.node.outputs) == 1:
        return t.node.name
    return f"{t.node.name}:{t.index}"


def graph_to_spec(graph: Graph) -> dict[str, Any]:
    """The spec dict of a graph: the inverse of ``load_spec``."""
    inputs: dict[str, Any] = {}
    for t in graph.inputs:
        assert t.node.name is not None
        shape = list(t.shape)
        inputs[t.node.name] = shape if t.dtype == "float32" else {"shape": shape,
                                                                  "dtype": t.dtype}
    nodes = []
    first_node: dict[int, str] = {}
    for step in graph.steps:
        entry: dict[str, Any] = {"name": step.name}
        if id(step.layer) in first_node:
            entry["shares"] = first_node[id(step.layer)]
        else:
            first_node[id(step.layer)] = step.name
            entry["layer"] = step.layer.name
        entry["inputs"] = [reference(t) for t in step.node.inputs]
        if "shares" not in entry:
            entry.update(step.layer.get_config())
        nodes.append(entry)
    spec: dict[str, Any] = {"name": graph.name, "inputs": inputs,
                            "outputs": [reference(t) for t in graph.outputs], "nodes": nodes}
    if graph.train_config:
        spec["train"] = dict(graph.train_config)
    return json.loads(json.dumps(spec, default=_json_default))


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"not JSON data: {value!r}")
