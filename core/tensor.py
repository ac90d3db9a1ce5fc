"""Symbolic tensors: what the functional API passes between layers before any data runs.

A ``Tensor`` is output ``index`` of a ``Node``; a node is one application of a layer
to symbolic inputs, or a network input. Calling a layer on tensors records a node
(see ``Layer.__call__``); ``Network`` later orders the nodes and compiles them.
The generator that initializes layers as they are built lives here too, because
building happens when a layer is first called on tensors.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import ConfigError, GraphError, ShapeError

if TYPE_CHECKING:
    from .layer import Layer

Shape = tuple[int, ...]

_build_rng: contextvars.ContextVar[np.random.Generator | None] = contextvars.ContextVar(
    "deltaprop_build_rng", default=None)
_global_rng = np.random.default_rng()


def seed(value: int | None) -> None:
    """Seed the generator that initializes layers built through the functional API."""
    global _global_rng
    _global_rng = np.random.default_rng(value)


@contextlib.contextmanager
def seeded(value: int | None) -> Iterator[np.random.Generator]:
    """Within the block, layers are initialized from a generator seeded with ``value``."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                              or value < 0):
        raise ConfigError(f"seed must be a non-negative integer, got {value!r}")
    rng = np.random.default_rng(value)
    token = _build_rng.set(rng)
    try:
        yield rng
    finally:
        _build_rng.reset(token)


def build_rng() -> np.random.Generator:
    """The generator a layer built now is initialized from."""
    return _build_rng.get() or _global_rng


class Tensor:
    """A symbolic value: output ``index`` of ``node``, with its shape (batch left out)."""

    __slots__ = ("dtype", "index", "node", "shape")

    def __init__(self, node: Node, index: int, shape: Shape, dtype: str) -> None:
        self.node = node
        self.index = index
        self.shape = tuple(int(d) for d in shape)
        self.dtype = dtype

    def __repr__(self) -> str:
        return f"<Tensor {self.node.display_name}:{self.index} shape=(batch, *{self.shape})>"


class Node:
    """One application of a layer to symbolic inputs (or a network input)."""

    def __init__(self, layer: Layer | None, inputs: tuple[Tensor, ...],
                 output_shapes: Sequence[Shape], output_dtypes: Sequence[str],
                 name: str | None) -> None:
        self.layer = layer
        self.inputs = inputs
        self.name = name
        self.outputs = tuple(Tensor(self, i, s, d)
                             for i, (s, d) in enumerate(zip(output_shapes, output_dtypes)))

    def read_by(self, dtype: str, reader: str) -> None:
        """A layer of ``dtype`` (``reader`` names it) takes one of this node's outputs.
        Only an input whose dtype was left out cares (see ``Input``)."""

    @property
    def display_name(self) -> str:
        if self.name:
            return self.name
        if self.layer is not None:
            return self.layer.label or self.layer.name
        return "input"


class InputNode(Node):
    """A network input: no layer, one output. Without a dtype of its own it takes that
    of the first layer reading it (float32 until one does), and refuses a reader of
    another dtype."""

    def __init__(self, shape: Shape, dtype: str | None, name: str | None) -> None:
        super().__init__(None, (), [shape], [dtype or DEFAULT_DTYPE], name)
        self.dtype_given = dtype is not None
        self.first_reader: tuple[str, str] | None = None  # (dtype, who)

    def read_by(self, dtype: str, reader: str) -> None:
        if self.dtype_given:
            return
        if self.first_reader is None:
            self.first_reader = (dtype, reader)
            self.outputs[0].dtype = dtype
        elif self.first_reader[0] != dtype:
            first_dtype, first = self.first_reader
            raise GraphError(f"input {self.display_name!r} has no dtype of its own and is "
                             f"read by {first} of dtype {first_dtype} and by {reader} of "
                             f"dtype {dtype}; "
                             f"give the layers one dtype, or the input one "
                             f"(Input(..., dtype=...))")


#: the dtype of an input that no layer reads and whose dtype was left out
DEFAULT_DTYPE = "float32"


def Input(shape: int | Sequence[int], name: str | None = None, dtype: str | None = None
          ) -> Tensor:
    """A network input of ``shape`` (batch dimension left out). Without ``dtype`` it takes
    the dtype of the layers that read it (which must then agree), so float64 layers get
    float64 inputs; give it ("float32", "int64"...) to have the data converted to it."""
    if isinstance(shape, (int, np.integer)):
        shape = (int(shape),)
    try:
        shape = tuple(int(d) for d in shape)
    except (TypeError, ValueError):
        raise ShapeError(f"input {name or ''!r}: shape must be a list of integers, "
                         f"got {shape!r}") from None
    if any(d <= 0 for d in shape):
        raise ShapeError(f"input {name or ''!r}: shape entries must be positive, got {shape}")
    return InputNode(shape, None if dtype is None else np.dtype(dtype).name,
                     name).outputs[0]


def symbolic_inputs(inputs: Sequence[Any], where: str) -> tuple[Tensor, ...]:
    """The tensors a layer is called on: ``layer(a, b)`` or ``layer([a, b])``."""
    if len(inputs) == 1 and isinstance(inputs[0], (list, tuple)):
        inputs = tuple(inputs[0])
    for value in inputs:
        if not isinstance(value, Tensor):
            raise GraphError(f"{where}: layers are called on symbolic tensors "
                             f"(deltaprop.Input or another layer's output), got "
                             f"{type(value).__name__}; use network.forward for arrays")
    return tuple(inputs)


def format_shapes(shapes: Any) -> str:
    """``(batch, 3, 4), (batch,)``: shapes as the user sees them, batch included."""
    return ", ".join(f"(batch, {', '.join(map(str, s))})" if s else "(batch,)"
                     for s in shapes or ())
