"""The Huber loss (PyTorch's ``HuberLoss``): quadratic for small errors, linear for large
ones, so outliers pull with a bounded force."""

from __future__ import annotations

from typing import Any

import numpy as np

from deltaprop import hookimpl
from deltaprop.config import number
from deltaprop.loss import Loss


class Huber(Loss):
    """mean of 0.5 d^2 where |d| <= delta, else delta (|d| - 0.5 delta); d = pred - target.

    Config:
        delta: the error size where the loss turns from quadratic to linear, in the
            prediction's units, > 0.
    """

    name = "huber"
    examples = [{"config": {}, "shape": (3,)}, {"config": {"delta": 0.5}, "shape": (2, 3)}]

    def __init__(self, *, delta: float = 1.0) -> None:
        self.delta = number("huber", "delta", delta, low=0, low_open=True)

    def forward(self, prediction: np.ndarray, target: np.ndarray) -> tuple[float, Any]:
        diff = prediction - target
        absolute = np.abs(diff)
        small = absolute <= self.delta
        values = np.where(small, 0.5 * diff * diff, self.delta * (absolute - 0.5 * self.delta))
        return float(np.mean(values)), (diff, small)

    def backward(self, cache: Any) -> np.ndarray:
        diff, small = cache
        grad = np.where(small, diff, self.delta * np.sign(diff))
        return (grad * (1.0 / diff.size)).astype(diff.dtype, copy=False)

    def sample_predictions(self, rng: np.random.Generator, shape: tuple[int, ...],
                           dtype: str) -> np.ndarray:
        # errors on both sides of +-delta but never within 0.05 of the switch
        d = rng.uniform(0.1, 3.0, size=shape) * rng.choice([-1, 1], size=shape)
        near = np.abs(np.abs(d) - self.delta) < 0.05
        return (d + np.where(near, 0.1 * np.sign(d), 0)).astype(dtype)

    def sample_targets(self, rng: np.random.Generator, shape: tuple[int, ...],
                       dtype: str) -> np.ndarray:
        return np.zeros(shape, dtype=dtype)


@hookimpl
def deltaprop_register_losses() -> list[type[Loss]]:
    return [Huber]
