"""Element-wise activations and softmax. Each caches its output, which is all its
derivative needs: s'(z) is written in terms of y = s(z)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.special import expit

from deltaprop import Layer, hookimpl
from deltaprop.errors import ConfigError, ShapeError
from deltaprop.loss import Loss

Grads = tuple[tuple[Any, ...], dict[str, np.ndarray]]


class Activation(Layer):
    """One input, same shape out; forward caches y and backward uses ``derivative(y)``."""

    elementwise = True
    examples = [{"config": {}, "input_shapes": [(5,)]},
                {"config": {}, "input_shapes": [(2, 3)]}]

    def __init__(self, *, dtype: str = "float32", label: str | None = None) -> None:
        super().__init__(dtype=dtype, label=label)

    def activate(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def backward_from_output(self, y: np.ndarray, g: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def forward(self, inputs: tuple[np.ndarray, ...], *, train: bool) -> tuple[Any, Any]:
        y = self.activate(inputs[0])
        return (y,), (y if train else None)

    def activate_into(self, x: np.ndarray) -> np.ndarray:
        """``activate`` writing into ``x`` (the executor proved nobody else holds it)."""
        raise NotImplementedError

    def forward_in_place(self, inputs: tuple[np.ndarray, ...], *, train: bool
                         ) -> tuple[Any, Any]:
        y = self.activate_into(inputs[0])
        return (y,), (y if train else None)

    def backward(self, cache: Any, grad_outputs: tuple[np.ndarray, ...], *,
                 needs_grad: Sequence[bool] | None = None) -> Grads:
        return (self.backward_from_output(cache, grad_outputs[0]),), {}


class Sigmoid(Activation):
    """s(z) = 1 / (1 + e^-z), s' = y (1 - y); computed by scipy's overflow-safe expit."""

    name = "sigmoid"

    can_work_in_place = True

    def activate(self, x: np.ndarray) -> np.ndarray:
        return expit(x)

    def activate_into(self, x: np.ndarray) -> np.ndarray:
        return expit(x, out=x)

    def backward_from_output(self, y: np.ndarray, g: np.ndarray) -> np.ndarray:
        return g * y * (1 - y)

    def describe_backward(self, input_shapes: Sequence[tuple[int, ...]]) -> str:
        return f"Δ = Δ' ⊙ σ′(z), σ′(z) = y ⊙ (1 - y); z, y {tuple(input_shapes[0])}"

    def saturation(self, output: np.ndarray) -> tuple[str, float]:
        """Outputs within 0.01 of 0 or 1, where σ′ < 0.01."""
        return "saturated", float(np.mean((output < 0.01) | (output > 0.99)))


class Tanh(Activation):
    """tanh, with derivative 1 - y^2."""

    name = "tanh"

    can_work_in_place = True

    def activate(self, x: np.ndarray) -> np.ndarray:
        return np.tanh(x)

    def activate_into(self, x: np.ndarray) -> np.ndarray:
        return np.tanh(x, out=x)

    def backward_from_output(self, y: np.ndarray, g: np.ndarray) -> np.ndarray:
        return g * (1 - y * y)

    def describe_backward(self, input_shapes: Sequence[tuple[int, ...]]) -> str:
        return f"Δ = Δ' ⊙ (1 - y²); z, y {tuple(input_shapes[0])}"

    def saturation(self, output: np.ndarray) -> tuple[str, float]:
        """Outputs beyond ±0.99, where tanh′ < 0.02."""
        return "saturated", float(np.mean(np.abs(output) > 0.99))


class ReLU(Activation):
    """max(z, 0); the delta passes where the output is positive."""

    name = "relu"
    kink_at_zero = True

    can_work_in_place = True

    def activate(self, x: np.ndarray) -> np.ndarray:
        return np.maximum(x, 0)

    def activate_into(self, x: np.ndarray) -> np.ndarray:
        return np.maximum(x, x.dtype.type(0), out=x)

    def backward_from_output(self, y: np.ndarray, g: np.ndarray) -> np.ndarray:
        return g * (y > 0)

    def describe_backward(self, input_shapes: Sequence[tuple[int, ...]]) -> str:
        return f"Δ = Δ' ⊙ [y > 0]; z, y {tuple(input_shapes[0])}"

    def saturation(self, output: np.ndarray) -> tuple[str, float]:
        """Units (positions past the batch axis) that are 0 for every sample of the
        batch: no delta passes through them."""
        if output.ndim < 2 or not len(output):
            return "dead", float(np.mean(output <= 0)) if output.size else 0.0
        return "dead", float(np.mean(~(output > 0).any(axis=0)))


class Softmax(Layer):
    """Normalised exponentials over ``axis``; backward is y * (g - sum(g * y)).

    Config:
        axis: the axis normalised over (the batch is axis 0; default the last).
    """

    name = "softmax"
    examples = [{"config": {}, "input_shapes": [(6,)]},
                {"config": {"axis": 1}, "input_shapes": [(3, 4)]}]

    def __init__(self, *, axis: int = -1, dtype: str = "float32",
                 label: str | None = None) -> None:
        super().__init__(dtype=dtype, label=label)
        if isinstance(axis, bool) or not isinstance(axis, int):
            raise ConfigError(f"softmax: axis must be an integer, got {axis!r}")
        self.axis = axis

    def build(self, input_shapes: Sequence[tuple[int, ...]], rng: Any = None
              ) -> tuple[tuple[int, ...]]:
        self.expect_inputs(input_shapes)
        shape = input_shapes[0]
        ndim = len(shape) + 1
        if not -ndim < self.axis < ndim or self.axis == 0:
            raise ShapeError(f"softmax axis {self.axis} does not name a non-batch axis of "
                             f"inputs of shape (batch, {', '.join(map(str, shape))})")
        return (tuple(shape),)

    def forward(self, inputs: tuple[np.ndarray, ...], *, train: bool) -> tuple[Any, Any]:
        x = inputs[0]
        e = np.exp(x - x.max(axis=self.axis, keepdims=True))
        e /= e.sum(axis=self.axis, keepdims=True)
        return (e,), (e if train else None)

    def loss_on_input(self, loss: Loss) -> Loss | None:
        """Over the last axis, a loss after the softmax may run on the logits in one pass."""
        assert self.input_shapes is not None
        last = self.axis in (-1, len(self.input_shapes[0]))
        return loss.after_softmax() if last else None

    def backward(self, cache: Any, grad_outputs: tuple[np.ndarray, ...], *,
                 needs_grad: Sequence[bool] | None = None) -> Grads:
        y, g = cache, grad_outputs[0]
        return (y * (g - (g * y).sum(axis=self.axis, keepdims=True)),), {}

    def describe_backward(self, input_shapes: Sequence[tuple[int, ...]]) -> str:
        return (f"Δ = y ⊙ (Δ' - Σ_k Δ'_k y_k), the sum over axis {self.axis}; "
                f"y {tuple(input_shapes[0])}")

    def saturation(self, output: np.ndarray) -> tuple[str, float]:
        """Distributions with one class above 0.99: Δ is then nearly zero."""
        return "saturated", float(np.mean(output.max(axis=self.axis) > 0.99))


@hookimpl
def deltaprop_register_layers() -> list[type[Layer]]:
    return [Sigmoid, Tanh, ReLU, Softmax]
