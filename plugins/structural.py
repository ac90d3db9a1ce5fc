"""Layers that route values rather than compute: add, concat, split, flatten, reshape,
transpose.
They carry no parameters and cache only the shapes their backward needs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from deltaprop import Layer, hookimpl
from deltaprop.config import positive_int
from deltaprop.errors import ConfigError, ShapeError

Shape = tuple[int, ...]
Grads = tuple[tuple[Any, ...], dict[str, np.ndarray]]


def _axis(owner: str, axis: Any) -> int:
    if isinstance(axis, bool) or not isinstance(axis, int) or axis == 0:
        raise ConfigError(f"{owner}: axis must be a non-zero integer (axis 0 is the batch), "
                          f"got {axis!r}")
    return axis


def _resolve_axis(owner: str, axis: int, shape: Shape) -> int:
    """The axis as an index into the non-batch shape."""
    ndim = len(shape) + 1
    if not -ndim < axis < ndim:
        raise ShapeError(f"{owner}: axis {axis} is out of range for inputs of shape "
                         f"(batch, {', '.join(map(str, shape))})")
    return (axis % ndim) - 1


class Add(Layer):
    """Element-wise sum of n inputs of one shape; each input receives the whole delta."""

    name = "add"
    n_inputs = None
    examples = [{"config": {}, "input_shapes": [(4,), (4,)]},
                {"config": {}, "input_shapes": [(2, 3), (2, 3), (2, 3)]}]

    def __init__(self, *, dtype: str = "float32", label: str | None = None) -> None:
        super().__init__(dtype=dtype, label=label)

    def build(self, input_shapes: Sequence[Shape], rng: Any = None) -> tuple[Shape]:
        self.expect_inputs(input_shapes)
        first = tuple(input_shapes[0])
        for shape in input_shapes[1:]:
            if tuple(shape) != first:
                raise ShapeError(f"add needs inputs of one shape, got {first} and {tuple(shape)}")
        return (first,)

    def forward(self, inputs: tuple[np.ndarray, ...], *, train: bool) -> tuple[Any, Any]:
        total = inputs[0] + inputs[1] if len(inputs) > 1 else inputs[0].copy()
        for x in inputs[2:]:
            total += x
        return (total,), (len(inputs) if train else None)

    def backward(self, cache: Any, grad_outputs: tuple[np.ndarray, ...], *,
                 needs_grad: Sequence[bool] | None = None) -> Grads:
        # the same array for every input: the executor never writes into it in place
        return (grad_outputs[0],) * cache, {}

    def describe_backward(self, input_shapes: Sequence[Shape]) -> str:
        return (f"Δ_i = Δ' for each of the {len(input_shapes)} inputs (a sum passes its "
                f"delta unchanged); Δ' {tuple(input_shapes[0])}")


class Concat(Layer):
    """Joins n inputs along ``axis`` (counted with the batch axis as 0, default last).

    Config:
        axis: the axis joined along (the batch is axis 0; default the last).
    """

    name = "concat"
    n_inputs = None
    examples = [{"config": {}, "input_shapes": [(2,), (3,)]},
                {"config": {"axis": 1}, "input_shapes": [(1, 4), (2, 4), (3, 4)]}]

    def __init__(self, *, axis: int = -1, dtype: str = "float32",
                 label: str | None = None) -> None:
        super().__init__(dtype=dtype, label=label)
        self.axis = _axis("concat", axis)

    def build(self, input_shapes: Sequence[Shape], rng: Any = None) -> tuple[Shape]:
        self.expect_inputs(input_shapes)
        first = tuple(input_shapes[0])
        ax = _resolve_axis("concat", self.axis, first)
        for shape in input_shapes[1:]:
            if len(shape) != len(first) or any(
                a != b for i, (a, b) in enumerate(zip(shape, first)) if i != ax
            ):
                raise ShapeError(f"concat along axis {self.axis} needs inputs that agree on "
                                 f"every other axis, got {first} and {tuple(shape)}")
        out = list(first)
        out[ax] = sum(s[ax] for s in input_shapes)
        self._ax = ax + 1
        return (tuple(out),)

    def forward(self, inputs: tuple[np.ndarray, ...], *, train: bool) -> tuple[Any, Any]:
        y = np.concatenate(inputs, axis=self._ax)
        sizes = [x.shape[self._ax] for x in inputs]
        return (y,), (sizes if train else None)

    def backward(self, cache: Any, grad_outputs: tuple[np.ndarray, ...], *,
                 needs_grad: Sequence[bool] | None = None) -> Grads:
        bounds = np.cumsum(cache)[:-1]
        return tuple(np.split(grad_outputs[0], bounds, axis=self._ax)), {}

    def describe_backward(self, input_shapes: Sequence[Shape]) -> str:
        parts = " | ".join(str(tuple(s)) for s in input_shapes)
        return f"Δ_i = the slice of Δ' input i filled, along axis {self.axis}: {parts}"


class Split(Layer):
    """Cuts one input along ``axis`` into ``sections`` equal parts, or parts of the
    listed sizes: a node with several outputs.

    Config:
        sections: a number of equal parts, or a list of part sizes.
        axis: the axis cut along (the batch is axis 0; default the last).
    """

    name = "split"
    examples = [{"config": {"sections": 2}, "input_shapes": [(6,)]},
                {"config": {"sections": [1, 3], "axis": 1}, "input_shapes": [(4, 2)]}]

    def __init__(self, sections: int | list[int] = 2, *, axis: int = -1,
                 dtype: str = "float32", label: str | None = None) -> None:
        super().__init__(dtype=dtype, label=label)
        if isinstance(sections, (list, tuple)):
            self.sections: int | list[int] = [positive_int("split", "sections", s)
                                              for s in sections]
            if not self.sections:
                raise ConfigError("split: sections must not be an empty list")
        else:
            self.sections = positive_int("split", "sections", sections)
        self.axis = _axis("split", axis)

    def build(self, input_shapes: Sequence[Shape], rng: Any = None) -> tuple[Shape, ...]:
        self.expect_inputs(input_shapes)
        shape = tuple(input_shapes[0])
        ax = _resolve_axis("split", self.axis, shape)
        n = shape[ax]
        if isinstance(self.sections, int):
            if n % self.sections:
                raise ShapeError(f"split: axis {self.axis} of size {n} does not divide into "
                                 f"{self.sections} equal sections")
            sizes = [n // self.sections] * self.sections
        else:
            sizes = list(self.sections)
            if sum(sizes) != n:
                raise ShapeError(f"split: sections {sizes} add up to {sum(sizes)}, but axis "
                                 f"{self.axis} has size {n}")
        self._ax = ax + 1
        self._bounds = np.cumsum(sizes)[:-1]
        outs = []
        for size in sizes:
            out = list(shape)
            out[ax] = size
            outs.append(tuple(out))
        return tuple(outs)

    def forward(self, inputs: tuple[np.ndarray, ...], *, train: bool) -> tuple[Any, Any]:
        return tuple(np.split(inputs[0], self._bounds, axis=self._ax)), (True if train else None)

    def backward(self, cache: Any, grad_outputs: tuple[np.ndarray, ...], *,
                 needs_grad: Sequence[bool] | None = None) -> Grads:
        return (np.concatenate(grad_outputs, axis=self._ax),), {}

    def describe_backward(self, input_shapes: Sequence[Shape]) -> str:
        return (f"Δ = the deltas of the parts put side by side along axis {self.axis} "
                f"(0 for a part nobody read); x {tuple(input_shapes[0])}")


class Reshape(Layer):
    """Gives each sample a new shape with the same number of values; one entry may be -1.

    Config:
        target_shape: the new shape of a sample (batch left out); one entry may be -1.
    """

    name = "reshape"
    examples = [{"config": {"target_shape": [3, 2]}, "input_shapes": [(6,)]},
                {"config": {"target_shape": [-1]}, "input_shapes": [(2, 3)]}]

    def __init__(self, target_shape: list[int], *, dtype: str = "float32",
                 label: str | None = None) -> None:
        super().__init__(dtype=dtype, label=label)
        if not isinstance(target_shape, (list, tuple)) or not all(
            isinstance(d, int) and not isinstance(d, bool) and (d > 0 or d == -1)
            for d in target_shape
        ) or list(target_shape).count(-1) > 1:
            raise ConfigError(f"reshape: target_shape must be a list of positive integers with "
                              f"at most one -1, got {target_shape!r}")
        self.target_shape = tuple(target_shape)

    def build(self, input_shapes: Sequence[Shape], rng: Any = None) -> tuple[Shape]:
        self.expect_inputs(input_shapes)
        size = int(np.prod(input_shapes[0]))
        known = int(np.prod([d for d in self.target_shape if d != -1]))
        if -1 in self.target_shape:
            if size % known:
                raise ShapeError(f"reshape: {size} values per sample do not fit "
                                 f"{list(self.target_shape)}")
            out = tuple(size // known if d == -1 else d for d in self.target_shape)
        else:
            out = self.target_shape
        if int(np.prod(out)) != size:
            raise ShapeError(f"reshape: {size} values per sample do not fit "
                             f"{list(self.target_shape)}")
        return (out,)

    def forward(self, inputs: tuple[np.ndarray, ...], *, train: bool) -> tuple[Any, Any]:
        x = inputs[0]
        assert self.output_shapes is not None
        return (x.reshape(len(x), *self.output_shapes[0]),), (x.shape if train else None)

    def backward(self, cache: Any, grad_outputs: tuple[np.ndarray, ...], *,
                 needs_grad: Sequence[bool] | None = None) -> Grads:
        return (grad_outputs[0].reshape(cache),), {}

    def describe_backward(self, input_shapes: Sequence[Shape]) -> str:
        return f"Δ = Δ' reshaped back to {tuple(input_shapes[0])}"


class Flatten(Reshape):
    """Each sample to one vector: the bridge from convolutions to dense layers."""

    name = "flatten"
    examples = [{"config": {}, "input_shapes": [(2, 3, 2)]}]

    def __init__(self, *, dtype: str = "float32", label: str | None = None) -> None:
        super().__init__([-1], dtype=dtype, label=label)


class Transpose(Layer):
    """Permutes the non-batch axes of each sample, as Keras's Permute: ``axes = [2, 1]``
    turns (batch, T, F) into (batch, F, T), e.g. an embedding's (steps, features) into
    conv1d's (channels, length). The output is a view of the input.

    Config:
        axes: the new order of the non-batch axes, numbered from 1 (a permutation of 1 to
            the number of axes): output axis i is input axis ``axes[i - 1]``.
    """

    name = "transpose"
    examples = [{"config": {"axes": [2, 1]}, "input_shapes": [(3, 4)],
                 "bad_input_shapes": [[(3, 4, 2)], [(6,)]]},
                {"config": {"axes": [3, 1, 2]}, "input_shapes": [(2, 3, 4)]}]

    def __init__(self, axes: list[int], *, dtype: str = "float32",
                 label: str | None = None) -> None:
        super().__init__(dtype=dtype, label=label)
        if not isinstance(axes, (list, tuple)) or not axes or not all(
            isinstance(a, int) and not isinstance(a, bool) for a in axes
        ) or sorted(axes) != list(range(1, len(axes) + 1)):
            raise ConfigError(f"transpose: axes must be a permutation of the non-batch axes "
                              f"numbered from 1 (e.g. [2, 1]), got {axes!r}")
        self.axes = tuple(axes)
        self._forward = (0, *self.axes)
        self._backward = tuple(int(i) for i in np.argsort(self._forward))

    def build(self, input_shapes: Sequence[Shape], rng: Any = None) -> tuple[Shape]:
        self.expect_inputs(input_shapes, ndim=len(self.axes))
        shape = tuple(input_shapes[0])
        return (tuple(shape[a - 1] for a in self.axes),)

    def forward(self, inputs: tuple[np.ndarray, ...], *, train: bool) -> tuple[Any, Any]:
        return (inputs[0].transpose(self._forward),), (True if train else None)

    def backward(self, cache: Any, grad_outputs: tuple[np.ndarray, ...], *,
                 needs_grad: Sequence[bool] | None = None) -> Grads:
        return (grad_outputs[0].transpose(self._backward),), {}


@hookimpl
def deltaprop_register_layers() -> list[type[Layer]]:
    return [Add, Concat, Split, Flatten, Reshape, Transpose]
