"""The built-in losses. Each returns the batch mean and its gradient."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.special import expit, log_softmax

from deltaprop import hookimpl
from deltaprop.errors import DataError
from deltaprop.loss import Loss


class MSE(Loss):
    """Mean squared error over all elements (PyTorch's ``MSELoss`` convention)."""

    name = "mse"
    examples = [{"config": {}, "shape": (3,)}]

    def forward(self, prediction: np.ndarray, target: np.ndarray) -> tuple[float, Any]:
        diff = prediction - target
        return float(np.mean(diff * diff)), diff

    def backward(self, cache: Any) -> np.ndarray:
        return cache * (2.0 / cache.size)


class ClassTargets(Loss):
    """Targets are integer class labels of shape (batch,) or one-hot / probability rows
    of the prediction's shape."""

    classification = True

    def check_target(self, prediction_shape: tuple[int, ...], target: np.ndarray) -> np.ndarray:
        target = np.asarray(target)
        classes = prediction_shape[-1] if prediction_shape else 0
        if target.shape[1:] == tuple(prediction_shape) and len(prediction_shape) == 1:
            return super().check_target(prediction_shape, target)
        if target.ndim != 1 or len(prediction_shape) != 1:
            raise DataError(f"loss {self.name!r}: targets must be class labels of shape "
                            f"(batch,) or rows of shape {tuple(prediction_shape)}, got shape "
                            f"{target.shape[1:]} per sample")
        if target.dtype.kind == "f":
            if not np.all(np.isfinite(target)) or not np.all(target == np.round(target)):
                raise DataError(f"loss {self.name!r}: class labels must be whole numbers")
            target = target.astype(np.int64)
        if target.dtype.kind not in "iu":
            raise DataError(f"loss {self.name!r}: class labels must be integers, got "
                            f"{target.dtype}")
        if target.size and (target.min() < 0 or target.max() >= classes):
            bad = target[(target < 0) | (target >= classes)][0]
            raise DataError(f"loss {self.name!r}: label {int(bad)} is out of range for "
                            f"{classes} classes (0..{classes - 1})")
        return target

    @staticmethod
    def one_hot(target: np.ndarray, like: np.ndarray) -> np.ndarray:
        if target.ndim == like.ndim:
            return target.astype(like.dtype, copy=False)
        out = np.zeros_like(like)
        out[np.arange(len(target)), target] = 1
        return out

    def sample_targets(self, rng: np.random.Generator, shape: tuple[int, ...],
                       dtype: str) -> np.ndarray:
        return rng.integers(0, shape[-1], size=shape[0])


class SoftmaxCrossEntropy(ClassTargets):
    """Cross-entropy of softmax(logits): fused, so the gradient is simply
    (softmax - target) / batch, and stable for large logits (log-sum-exp)."""

    name = "softmax_cross_entropy"
    examples = [{"config": {}, "shape": (5,)}]

    def forward(self, prediction: np.ndarray, target: np.ndarray) -> tuple[float, Any]:
        logp = log_softmax(prediction, axis=-1)
        n = len(prediction)
        if target.ndim == 1:
            value = -logp[np.arange(n), target].sum() / n
        else:
            value = -(target * logp).sum() / n
        return float(value), (logp, target)

    def backward(self, cache: Any) -> np.ndarray:
        logp, target = cache
        grad = np.exp(logp)
        if target.ndim == 1:
            grad[np.arange(len(grad)), target] -= 1
        else:
            grad -= target
        grad /= len(grad)
        return grad


class CrossEntropy(ClassTargets):
    """Cross-entropy of probabilities (the output of a softmax layer); prefer
    ``softmax_cross_entropy`` on logits, which is exact where this one clips."""

    name = "cross_entropy"
    examples = [{"config": {}, "shape": (4,)}]
    eps = 1e-12

    def forward(self, prediction: np.ndarray, target: np.ndarray) -> tuple[float, Any]:
        p = np.clip(prediction, self.eps, None)
        onehot = self.one_hot(target, prediction)
        return float(-(onehot * np.log(p)).sum() / len(p)), (p, onehot)

    def backward(self, cache: Any) -> np.ndarray:
        p, onehot = cache
        return -onehot / p / len(p)

    def sample_predictions(self, rng: np.random.Generator, shape: tuple[int, ...],
                           dtype: str) -> np.ndarray:
        e = np.exp(rng.standard_normal(shape))
        return (e / e.sum(axis=-1, keepdims=True)).astype(dtype)


class BinaryCrossEntropy(Loss):
    """Mean binary cross-entropy over all elements, on probabilities or, with
    ``from_logits``, on logits (then stable and exact)."""

    name = "binary_cross_entropy"
    classification = False
    examples = [{"config": {}, "shape": (3,)}, {"config": {"from_logits": True}, "shape": (2,)}]
    eps = 1e-12

    def __init__(self, *, from_logits: bool = False) -> None:
        self.from_logits = bool(from_logits)

    def check_target(self, prediction_shape: tuple[int, ...], target: np.ndarray) -> np.ndarray:
        target = super().check_target(prediction_shape, target)
        if target.size and (target.min() < 0 or target.max() > 1):
            raise DataError(f"loss {self.name!r}: targets must lie in [0, 1]")
        return target

    def forward(self, prediction: np.ndarray, target: np.ndarray) -> tuple[float, Any]:
        if self.from_logits:
            # log(1 + e^-|z|) + max(z, 0) - z t, without overflow
            z = prediction
            value = np.logaddexp(0, -np.abs(z)) + np.maximum(z, 0) - z * target
            return float(value.mean()), (expit(z), target)
        p = np.clip(prediction, self.eps, 1 - self.eps)
        value = -(target * np.log(p) + (1 - target) * np.log1p(-p))
        return float(value.mean()), (p, target)

    def backward(self, cache: Any) -> np.ndarray:
        p, target = cache
        if self.from_logits:
            return (p - target) / p.size
        return (p - target) / (p * (1 - p)) / p.size

    def sample_predictions(self, rng: np.random.Generator, shape: tuple[int, ...],
                           dtype: str) -> np.ndarray:
        if self.from_logits:
            return rng.standard_normal(shape).astype(dtype)
        return rng.uniform(0.05, 0.95, shape).astype(dtype)

    def sample_targets(self, rng: np.random.Generator, shape: tuple[int, ...],
                       dtype: str) -> np.ndarray:
        return rng.uniform(0, 1, shape).astype(dtype)


@hookimpl
def deltaprop_register_losses() -> list[type[Loss]]:
    return [MSE, SoftmaxCrossEntropy, CrossEntropy, BinaryCrossEntropy]
