"""The ONNX graph being written, and the view of it one converter gets.

A converter never imports ``onnx``: it emits operators by type name with numpy
constants through an ``ExportContext``, and the exporter turns the collected nodes
into protobuf at the end. Value names are made unique here, so a converter may name
things freely (``ctx.op("MatMul", ...)`` gives ``<node>/MatMul``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import DeltapropError
from ..tensor import Shape

if TYPE_CHECKING:
    from ..layer import Layer

#: numpy dtype name -> ONNX TensorProto element type
ELEMENT_TYPES = {"float32": 1, "uint8": 2, "int8": 3, "uint16": 4, "int16": 5, "int32": 6,
                 "int64": 7, "bool": 9, "float16": 10, "float64": 11, "uint32": 12,
                 "uint64": 13}


def element_type(dtype: Any) -> int:
    """The ONNX element type of a numpy dtype (``TensorProto.FLOAT`` for float32)."""
    name = np.dtype(dtype).name
    if name not in ELEMENT_TYPES:
        raise DeltapropError(f"ONNX export: dtype {name} has no ONNX element type")
    return ELEMENT_TYPES[name]


@dataclass
class OperatorNode:
    """One ONNX operator: what ``onnx.helper.make_node`` takes."""

    op_type: str
    inputs: list[str]
    outputs: list[str]
    name: str
    attributes: dict[str, Any]
    domain: str = ""


@dataclass
class OnnxGraph:
    """Operators and initializers in the order they were emitted, and every value name
    taken so far (network inputs and outputs are reserved before any converter runs)."""

    opset: int
    nodes: list[OperatorNode] = field(default_factory=list)
    initializers: dict[str, np.ndarray] = field(default_factory=dict)
    taken: set[str] = field(default_factory=set)
    #: id of a parameter array -> its initializer name (shared layers add it once)
    param_names: dict[int, str] = field(default_factory=dict)

    def fresh(self, hint: str) -> str:
        """``hint``, or ``hint_2``, ``hint_3``... whichever is still free."""
        name, k = hint, 1
        while name in self.taken:
            k += 1
            name = f"{hint}_{k}"
        self.taken.add(name)
        return name

    def add_initializer(self, value: np.ndarray, hint: str) -> str:
        name = self.fresh(hint)
        self.initializers[name] = value
        return name


Converter = Callable[["Layer", "ExportContext"], Sequence[str]]


class ExportContext:
    """What a converter gets for one node: the layer, the ONNX names of the node's
    inputs, their shapes and dtypes (batch left out), the opset, and ways to emit
    operators. A converter returns one value name per output of the layer.

    ``shapes`` leave the batch out, as everywhere in deltaprop; the exported graph
    keeps the batch axis dynamic, so a converter must not write the batch size into
    a shape (``Reshape`` takes 0 for "copy this axis" and -1 for "the rest").
    """

    def __init__(self, graph: OnnxGraph, layer: Layer, name: str, inputs: Sequence[str],
                 input_shapes: Sequence[Shape], input_dtypes: Sequence[str],
                 find: Callable[[Layer, str], Converter]) -> None:
        self.graph = graph
        self.layer = layer
        self.name = name
        self.inputs = tuple(inputs)
        self.input_shapes = tuple(tuple(s) for s in input_shapes)
        self.input_dtypes = tuple(input_dtypes)
        self._find = find

    @property
    def opset(self) -> int:
        """The default-domain opset being written: pick operators available in it."""
        return self.graph.opset

    @property
    def output_shapes(self) -> tuple[Shape, ...]:
        return tuple(self.layer.output_shapes or ())

    def op(self, op_type: str, inputs: Sequence[str], **attributes: Any) -> str:
        """Emit one operator with one output; returns the output's name. An optional
        input left out in the middle is written ``""``."""
        return self.op_outputs(op_type, inputs, 1, **attributes)[0]

    def op_outputs(self, op_type: str, inputs: Sequence[str], n_outputs: int,
                   **attributes: Any) -> tuple[str, ...]:
        """Emit one operator with ``n_outputs`` outputs; returns their names."""
        base = f"{self.name}/{op_type}"
        node_name = self.graph.fresh(base)
        outputs = [node_name if n_outputs == 1 else self.graph.fresh(f"{node_name}:{k}")
                   for k in range(n_outputs)]
        self.graph.nodes.append(OperatorNode(op_type, list(inputs), outputs, node_name,
                                             attributes))
        return tuple(outputs)

    def param(self, name: str) -> str:
        """The initializer holding the layer's parameter ``name`` as it is (named like
        the parameter's key in ``Network.params``; added once for a shared layer)."""
        value = self.layer.params[name]
        known = self.graph.param_names.get(id(value))
        if known is None:
            known = self.graph.add_initializer(np.asarray(value), f"{self.name}/{name}")
            self.graph.param_names[id(value)] = known
        return known

    def constant(self, value: Any, name: str = "const", dtype: Any = None) -> str:
        """An initializer holding ``value``: an array as given, or a list or number
        (integers become int64, as ONNX's shape and axes inputs want; floats the
        layer's dtype unless ``dtype`` says otherwise)."""
        if isinstance(value, np.ndarray) and dtype is None:
            array = value
        else:
            array = np.asarray(value)
            if dtype is None:
                dtype = np.int64 if np.issubdtype(array.dtype, np.integer) else self.layer.dtype
            array = array.astype(dtype)
        return self.graph.add_initializer(np.ascontiguousarray(array), f"{self.name}/{name}")

    def element_type(self, dtype: Any) -> int:
        """The ONNX element type of ``dtype``, for ``Cast``'s ``to``."""
        return element_type(dtype)

    def convert(self, layer: Layer, inputs: Sequence[str], input_shapes: Sequence[Shape],
                input_dtypes: Sequence[str] | None = None) -> tuple[str, ...]:
        """Convert a layer this one wraps (``time_distributed``) on ONNX values
        ``inputs`` of ``input_shapes``, through that layer's own converter."""
        converter = self._find(layer, f"{self.name} (wrapping {layer.name!r})")
        inner = ExportContext(self.graph, layer, self.name, inputs, input_shapes,
                              input_dtypes or [layer.dtype] * len(inputs), self._find)
        return tuple(converter(layer, inner))

    # -- shortcuts for what many converters need ------------------------------------------
    def reshape(self, x: str, shape: Sequence[int]) -> str:
        return self.op("Reshape", [x, self.constant(list(shape), "shape")])

    def transpose(self, x: str, perm: Sequence[int]) -> str:
        return self.op("Transpose", [x], perm=list(perm))

    def squeeze(self, x: str, axes: Sequence[int]) -> str:
        return self.op("Squeeze", [x, self.constant(list(axes), "axes")])

    def unsqueeze(self, x: str, axes: Sequence[int]) -> str:
        return self.op("Unsqueeze", [x, self.constant(list(axes), "axes")])

    def reduce_mean(self, x: str, axes: Sequence[int], keepdims: bool = True) -> str:
        """ReduceMean in either of its forms (axes an attribute before opset 18)."""
        if self.opset >= 18:
            return self.op("ReduceMean", [x, self.constant(list(axes), "axes")],
                           keepdims=int(keepdims))
        return self.op("ReduceMean", [x], axes=list(axes), keepdims=int(keepdims))
