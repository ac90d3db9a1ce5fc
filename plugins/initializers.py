"""Named, seeded parameter initializers (Glorot, He, LeCun, orthogonal...)."""

from __future__ import annotations

from typing import Any

import numpy as np

from deltaprop import hookimpl

Shape = tuple[int, ...]


def zeros(shape: Shape, *, fan_in: int, fan_out: int, rng: np.random.Generator) -> np.ndarray:
    return np.zeros(shape)


def ones(shape: Shape, *, fan_in: int, fan_out: int, rng: np.random.Generator) -> np.ndarray:
    return np.ones(shape)


def glorot_uniform(shape: Shape, *, fan_in: int, fan_out: int,
                   rng: np.random.Generator) -> np.ndarray:
    """Keeps activation variance steady through sigmoid/tanh layers (Glorot & Bengio)."""
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, shape)


def glorot_normal(shape: Shape, *, fan_in: int, fan_out: int,
                  rng: np.random.Generator) -> np.ndarray:
    return rng.standard_normal(shape) * np.sqrt(2.0 / (fan_in + fan_out))


def he_uniform(shape: Shape, *, fan_in: int, fan_out: int, rng: np.random.Generator) -> np.ndarray:
    """Variance 2/fan_in: suits ReLU, which zeroes half its inputs (He et al.)."""
    limit = np.sqrt(6.0 / fan_in)
    return rng.uniform(-limit, limit, shape)


def he_normal(shape: Shape, *, fan_in: int, fan_out: int, rng: np.random.Generator) -> np.ndarray:
    return rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)


def lecun_normal(shape: Shape, *, fan_in: int, fan_out: int,
                 rng: np.random.Generator) -> np.ndarray:
    return rng.standard_normal(shape) * np.sqrt(1.0 / fan_in)


def uniform_fan_in(shape: Shape, *, fan_in: int, fan_out: int,
                   rng: np.random.Generator) -> np.ndarray:
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): PyTorch's default for biases and recurrent cells."""
    limit = 1.0 / np.sqrt(fan_in)
    return rng.uniform(-limit, limit, shape)


def orthogonal(shape: Shape, *, fan_in: int, fan_out: int, rng: np.random.Generator) -> np.ndarray:
    """A (semi-)orthogonal matrix over the last axis: keeps recurrent gradients from
    exploding or vanishing at the start of training."""
    rows = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
    cols = shape[-1]
    a = rng.standard_normal((max(rows, cols), min(rows, cols)))
    q, r = np.linalg.qr(a)
    q *= np.sign(np.diag(r))
    q = q if rows >= cols else q.T
    return q[:rows, :cols].reshape(shape)


@hookimpl
def deltaprop_register_initializers() -> dict[str, Any]:
    return {f.__name__: f for f in (zeros, ones, glorot_uniform, glorot_normal, he_uniform,
                                    he_normal, lecun_normal, uniform_fan_in, orthogonal)}
