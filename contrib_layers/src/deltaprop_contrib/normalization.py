"""Batch and layer normalisation (PyTorch's ``BatchNorm*d`` and ``LayerNorm``).

Both normalise ``x`` to zero mean and unit variance and apply a learned scale
``gamma`` and shift ``beta``; backward is the textbook
``dx = inv_std * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))`` over the
normalised axes, with ``dxhat = g * gamma``.

Batch norm's running statistics are state, not weights: they live in ``params`` (so
``deltaprop.save`` / ``load`` keep them with the weights) and are listed in
``non_trainable``, so backward returns no gradient for them, the executor leaves them
out of ``net.grads`` and no optimizer touches them. A train-mode forward updates them
in place; inference uses them and changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from deltaprop import Layer, hookimpl
from deltaprop.config import number
from deltaprop.errors import ConfigError, ShapeError

Shape = tuple[int, ...]
Grads = tuple[tuple[Any, ...], dict[str, np.ndarray]]


def _normalize_backward(g_hat: np.ndarray, xhat: np.ndarray, inv_std: np.ndarray,
                        axes: tuple[int, ...]) -> np.ndarray:
    mean_g = g_hat.mean(axis=axes, keepdims=True)
    mean_gx = (g_hat * xhat).mean(axis=axes, keepdims=True)
    return inv_std * (g_hat - mean_g - xhat * mean_gx)


class BatchNorm(Layer):
    """Normalise each feature over the batch (and every other non-feature axis).

    Running statistics follow PyTorch: ``running = (1 - momentum) * running +
    momentum * batch_stat``, the variance unbiased; inference uses them.

    Config:
        axis: the feature axis, counted in the full array with the batch as axis 0 (so
            never 0): -1 for (batch, features) and channels-last, 1 for channels-first.
        momentum: weight of each training batch's statistics in the running ones, in
            [0, 1] (0: they never move).
        eps: added to the variance before its square root, > 0.
    """

    name = "batch_norm"
    recomputable = False  # a training forward moves the running statistics
    non_trainable = ("running_mean", "running_var")
    examples = [{"config": {}, "input_shapes": [(4,)]},
                {"config": {"momentum": 0.5}, "input_shapes": [(2, 3)]},
                {"config": {"axis": 1}, "input_shapes": [(2, 3, 3)]}]
    bad_input_shapes = [[()]]

    def __init__(self, *, axis: int = -1, momentum: float = 0.1, eps: float = 1e-5,
                 dtype: str = "float32", label: str | None = None) -> None:
        super().__init__(dtype=dtype, label=label)
        if isinstance(axis, bool) or not isinstance(axis, int) or axis == 0:
            raise ConfigError(f"batch_norm: axis must be a non-zero integer (axis 0 is the "
                              f"batch), got {axis!r}")
        self.axis = axis
        self.momentum = number("batch_norm", "momentum", momentum, low=0, high=1)
        self.eps = number("batch_norm", "eps", eps, low=0, low_open=True)

    def build(self, input_shapes: Sequence[Shape], rng: Any = None) -> tuple[Shape]:
        self.expect_inputs(input_shapes)
        shape = tuple(input_shapes[0])
        ndim = len(shape) + 1
        if not -ndim < self.axis < ndim or self.axis % ndim == 0:
            raise ShapeError(f"batch_norm: axis {self.axis} does not name a feature axis of "
                             f"inputs of shape (batch, {', '.join(map(str, shape))})")
        features = shape[self.axis % ndim - 1]
        self.add_param("gamma", (features,), "ones", rng)
        self.add_param("beta", (features,), "zeros", rng)
        self.add_param("running_mean", (features,), "zeros", rng)
        self.add_param("running_var", (features,), "ones", rng)
        return (shape,)

    def _layout(self, x: np.ndarray) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The reduced axes, and the shape that broadcasts a per-feature vector."""
        axis = self.axis % x.ndim
        broadcast = [1] * x.ndim
        broadcast[axis] = x.shape[axis]
        return tuple(a for a in range(x.ndim) if a != axis), tuple(broadcast)

    def forward(self, inputs: tuple[np.ndarray, ...], *, train: bool) -> tuple[Any, Any]:
        (x,) = inputs
        axes, bshape = self._layout(x)
        gamma = self.params["gamma"].reshape(bshape)
        beta = self.params["beta"].reshape(bshape)
        if not train:
            inv_std = 1 / np.sqrt(self.params["running_var"] + self.eps)
            scale = (self.params["gamma"] * inv_std).reshape(bshape)
            return ((x - self.params["running_mean"].reshape(bshape)) * scale + beta,), None
        mean = x.mean(axis=axes, keepdims=True)
        centered = x - mean
        var = (centered * centered).mean(axis=axes, keepdims=True)
        inv_std = 1 / np.sqrt(var + self.eps)
        xhat = centered * inv_std
        n = x.size // x.shape[self.axis % x.ndim]
        m = self.momentum
        running_mean, running_var = self.params["running_mean"], self.params["running_var"]
        running_mean *= 1 - m
        running_mean += m * mean.reshape(-1)
        running_var *= 1 - m
        running_var += (m * n / max(n - 1, 1)) * var.reshape(-1)
        return (xhat * gamma + beta,), (xhat, inv_std)

    def backward(self, cache: Any, grad_outputs: tuple[np.ndarray, ...], *,
                 needs_grad: Sequence[bool] | None = None) -> Grads:
        xhat, inv_std = cache
        (g,) = grad_outputs
        axes, bshape = self._layout(g)
        grads = {"gamma": (g * xhat).sum(axis=axes), "beta": g.sum(axis=axes)}
        if needs_grad is not None and not needs_grad[0]:
            return (None,), grads
        g_hat = g * self.params["gamma"].reshape(bshape)
        return (_normalize_backward(g_hat, xhat, inv_std, axes),), grads

    @classmethod
    def sample_inputs(cls, rng: np.random.Generator, input_shapes: Any, batch: int,
                      dtype: str) -> list[np.ndarray]:
        # a per-feature offset and scale, so normalising has something to undo
        xs = super().sample_inputs(rng, input_shapes, batch, dtype)
        return [(3 * x + 1).astype(dtype) for x in xs]


class LayerNorm(Layer):
    """Normalise each sample over its last axis (PyTorch's ``LayerNorm(features)``);
    ``gamma`` and ``beta`` have shape (features,).

    Config:
        eps: added to the variance before its square root, > 0.
        elementwise_affine: learn the scale ``gamma`` and shift ``beta`` (else the layer
            has no parameters).
    """

    name = "layer_norm"
    examples = [{"config": {}, "input_shapes": [(5,)]},
                {"config": {"eps": 1e-3}, "input_shapes": [(2, 4)]},
                {"config": {"elementwise_affine": False}, "input_shapes": [(3,)]}]
    bad_input_shapes = [[()]]

    def __init__(self, *, eps: float = 1e-5, elementwise_affine: bool = True,
                 dtype: str = "float32", label: str | None = None) -> None:
        super().__init__(dtype=dtype, label=label)
        self.eps = number("layer_norm", "eps", eps, low=0, low_open=True)
        self.elementwise_affine = bool(elementwise_affine)

    def build(self, input_shapes: Sequence[Shape], rng: Any = None) -> tuple[Shape]:
        self.expect_inputs(input_shapes)
        shape = tuple(input_shapes[0])
        if len(shape) < 1:
            raise ShapeError("layer_norm needs inputs with a feature axis, got shape (batch,)")
        if self.elementwise_affine:
            self.add_param("gamma", (shape[-1],), "ones", rng)
            self.add_param("beta", (shape[-1],), "zeros", rng)
        return (shape,)

    def forward(self, inputs: tuple[np.ndarray, ...], *, train: bool) -> tuple[Any, Any]:
        (x,) = inputs
        mean = x.mean(axis=-1, keepdims=True)
        centered = x - mean
        var = (centered * centered).mean(axis=-1, keepdims=True)
        inv_std = 1 / np.sqrt(var + self.eps)
        xhat = centered * inv_std
        y = xhat * self.params["gamma"] + self.params["beta"] if self.elementwise_affine \
            else xhat
        return (y,), ((xhat, inv_std) if train else None)

    def backward(self, cache: Any, grad_outputs: tuple[np.ndarray, ...], *,
                 needs_grad: Sequence[bool] | None = None) -> Grads:
        xhat, inv_std = cache
        (g,) = grad_outputs
        grads: dict[str, np.ndarray] = {}
        g_hat = g
        if self.elementwise_affine:
            lead = tuple(range(g.ndim - 1))
            grads = {"gamma": (g * xhat).sum(axis=lead), "beta": g.sum(axis=lead)}
            g_hat = g * self.params["gamma"]
        if needs_grad is not None and not needs_grad[0]:
            return (None,), grads
        return (_normalize_backward(g_hat, xhat, inv_std, (-1,)),), grads


@hookimpl
def deltaprop_register_layers() -> list[type[Layer]]:
    return [BatchNorm, LayerNorm]
