"""Smooth and leaky activations: GELU, SiLU, leaky ReLU and ELU (PyTorch's definitions).

Each caches its input (GELU and SiLU need it: their derivatives are not functions of
the output alone) and returns ``g * f'(x)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.special import erf, expit

from deltaprop import Layer, hookimpl
from deltaprop.config import choice, number

Grads = tuple[tuple[Any, ...], dict[str, np.ndarray]]
_EXAMPLES = [{"config": {}, "input_shapes": [(5,)]}, {"config": {}, "input_shapes": [(2, 3)]}]


class InputActivation(Layer):
    """One input, same shape out; forward caches x, backward returns ``g * derivative(x)``."""

    elementwise = True
    examples = _EXAMPLES

    def activate(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def derivative(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def forward(self, inputs: tuple[np.ndarray, ...], *, train: bool) -> tuple[Any, Any]:
        (x,) = inputs
        return (self.activate(x),), (x if train else None)

    def backward(self, cache: Any, grad_outputs: tuple[np.ndarray, ...], *,
                 needs_grad: Sequence[bool] | None = None) -> Grads:
        return (grad_outputs[0] * self.derivative(cache),), {}


class KinkedActivation(InputActivation):
    """An activation with a kink at zero: the gradient check samples away from it."""

    kink_at_zero = True


class GELU(InputActivation):
    """x * Phi(x), Phi the standard normal CDF; ``approximate="tanh"`` uses the tanh
    formula of Hendrycks & Gimpel (as BERT and GPT-2 did).

    Config:
        approximate: "none" (the exact erf form) or "tanh" (the tanh approximation).
    """

    name = "gelu"
    examples = [*_EXAMPLES, {"config": {"approximate": "tanh"}, "input_shapes": [(4,)]}]

    def __init__(self, *, approximate: str = "none", dtype: str = "float32",
                 label: str | None = None) -> None:
        super().__init__(dtype=dtype, label=label)
        self.approximate = choice("gelu", "approximate", approximate, ["none", "tanh"])

    def activate(self, x: np.ndarray) -> np.ndarray:
        if self.approximate == "tanh":
            return 0.5 * x * (1 + np.tanh(_K * (x + 0.044715 * x ** 3)))
        return 0.5 * x * (1 + erf(x * _SQRT_HALF))

    def derivative(self, x: np.ndarray) -> np.ndarray:
        if self.approximate == "tanh":
            t = np.tanh(_K * (x + 0.044715 * x ** 3))
            return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * _K * (1 + 3 * 0.044715 * x * x)
        cdf = 0.5 * (1 + erf(x * _SQRT_HALF))
        pdf = np.exp(-0.5 * x * x) * _INV_SQRT_2PI
        return cdf + x * pdf


_SQRT_HALF = math.sqrt(0.5)
_INV_SQRT_2PI = 1 / math.sqrt(2 * math.pi)
_K = math.sqrt(2 / math.pi)


class SiLU(InputActivation):
    """x * sigmoid(x) (also called swish); derivative s (1 + x (1 - s))."""

    name = "silu"

    def __init__(self, *, dtype: str = "float32", label: str | None = None) -> None:
        super().__init__(dtype=dtype, label=label)

    def activate(self, x: np.ndarray) -> np.ndarray:
        return x * expit(x)

    def derivative(self, x: np.ndarray) -> np.ndarray:
        s = expit(x)
        return s * (1 + x * (1 - s))


class LeakyReLU(KinkedActivation):
    """x where positive, ``negative_slope * x`` elsewhere.

    Config:
        negative_slope: factor applied to negative inputs, >= 0 (0: plain ReLU).
    """

    name = "leaky_relu"
    examples = [*_EXAMPLES, {"config": {"negative_slope": 0.2}, "input_shapes": [(4,)]}]

    def __init__(self, *, negative_slope: float = 0.01, dtype: str = "float32",
                 label: str | None = None) -> None:
        super().__init__(dtype=dtype, label=label)
        self.negative_slope = number("leaky_relu", "negative_slope", negative_slope, low=0)

    def activate(self, x: np.ndarray) -> np.ndarray:
        return np.where(x > 0, x, x * self.negative_slope)

    def derivative(self, x: np.ndarray) -> np.ndarray:
        return np.where(x > 0, 1.0, self.negative_slope).astype(x.dtype)


class ELU(KinkedActivation):
    """x where positive, ``alpha * (exp(x) - 1)`` elsewhere (Clevert et al.).

    Config:
        alpha: scale of the negative part (outputs approach -alpha as x falls), >= 0.
    """

    name = "elu"
    examples = [*_EXAMPLES, {"config": {"alpha": 0.5}, "input_shapes": [(4,)]}]

    def __init__(self, *, alpha: float = 1.0, dtype: str = "float32",
                 label: str | None = None) -> None:
        super().__init__(dtype=dtype, label=label)
        self.alpha = number("elu", "alpha", alpha, low=0)

    def activate(self, x: np.ndarray) -> np.ndarray:
        # expm1 of min(x, 0): no overflow warning for large positive x
        return np.where(x > 0, x, self.alpha * np.expm1(np.minimum(x, 0)))

    def derivative(self, x: np.ndarray) -> np.ndarray:
        return np.where(x > 0, 1, self.alpha * np.exp(np.minimum(x, 0))).astype(x.dtype)


@hookimpl
def deltaprop_register_layers() -> list[type[Layer]]:
    return [GELU, SiLU, LeakyReLU, ELU]
