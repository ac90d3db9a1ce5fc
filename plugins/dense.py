"""The dense (fully connected) layer: y = x @ W + b over the last axis."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from deltaprop import Layer, hookimpl
from deltaprop.config import positive_int
from deltaprop.errors import ShapeError


class Dense(Layer):
    """Fully connected: y = x @ W + b. ``W`` has shape (in_features, units) and ``b``
    (units,); inputs of shape (..., in_features) are mapped over their last axis (so a
    sequence of vectors needs no wrapper).

    Config:
        units: output features (the size of the new last axis).
        use_bias: add the bias ``b``.
        kernel_initializer: initializer of ``W`` (a registry name, see `deltaprop layers
            --kind initializer`).
        bias_initializer: initializer of ``b``.
    """

    name = "dense"
    examples = [
        {"config": {"units": 3}, "input_shapes": [(4,)]},
        {"config": {"units": 2, "use_bias": False}, "input_shapes": [(3, 5)]},
    ]

    def __init__(self, units: int, *, use_bias: bool = True,
                 kernel_initializer: str = "glorot_uniform", bias_initializer: str = "zeros",
                 dtype: str = "float32", label: str | None = None) -> None:
        super().__init__(dtype=dtype, label=label)
        self.units = positive_int("dense", "units", units)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = kernel_initializer
        self.bias_initializer = bias_initializer

    def build(self, input_shapes: Sequence[tuple[int, ...]], rng: Any = None
              ) -> tuple[tuple[int, ...]]:
        self.expect_inputs(input_shapes)
        (shape,) = input_shapes
        if len(shape) < 1:
            raise ShapeError("dense needs inputs with a feature axis, got shape (batch,)")
        fan_in = shape[-1]
        self.add_param("W", (fan_in, self.units), self.kernel_initializer, rng,
                       fan_in=fan_in, fan_out=self.units)
        if self.use_bias:
            self.add_param("b", (self.units,), self.bias_initializer, rng,
                           fan_in=fan_in, fan_out=self.units)
        return ((*shape[:-1], self.units),)

    def forward(self, inputs: tuple[np.ndarray, ...], *, train: bool) -> tuple[Any, Any]:
        (x,) = inputs
        y = x @ self.params["W"]
        if self.use_bias:
            y += self.params["b"]
        return (y,), (x if train else None)

    def backward(self, cache: Any, grad_outputs: tuple[np.ndarray, ...], *,
                 needs_grad: Sequence[bool] | None = None) -> tuple[Any, dict[str, np.ndarray]]:
        x = cache
        (g,) = grad_outputs
        W = self.params["W"]
        if x.ndim == 2:
            grads = {"W": x.T @ g}
        else:
            grads = {"W": x.reshape(-1, x.shape[-1]).T @ g.reshape(-1, g.shape[-1])}
        if self.use_bias:
            grads["b"] = g.sum(axis=tuple(range(g.ndim - 1)))
        dx = g @ W.T if needs_grad is None or needs_grad[0] else None
        return (dx,), grads

    def describe_backward(self, input_shapes: Sequence[tuple[int, ...]]) -> str:
        W = self.params["W"]
        rule = "Δ = Δ' · Wᵀ, ∂L/∂W = xᵀ · Δ'"
        if self.use_bias:
            rule += ", ∂L/∂b = Σ_batch Δ'"
        out = (*input_shapes[0][:-1], self.units)
        return f"{rule}; W {W.shape}, x {tuple(input_shapes[0])}, Δ' {out}"


@hookimpl
def deltaprop_register_layers() -> list[type[Layer]]:
    return [Dense]
