"""The built-in losses. Each returns the batch mean and its gradient."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.special import expit, log_softmax

from deltaprop import hookimpl
from deltaprop.errors import DataError
from deltaprop.loss import Loss


def _batch_of(shape: tuple[int, ...]) -> str:
    """``(B, 10)``: a prediction shape with the batch axis named."""
    return "(" + ", ".join(["B", *map(str, shape)]) + ")"


class MSE(Loss):
    """Mean squared error over all elements (PyTorch's ``MSELoss`` convention)."""

    name = "mse"
    examples = [{"config": {}, "shape": (3,)}]

    def forward(self, prediction: np.ndarray, target: np.ndarray) -> tuple[float, Any]:
        diff = prediction - target
        return float(np.mean(diff * diff)), diff

    def backward(self, cache: Any) -> np.ndarray:
        return cache * (2.0 / cache.size)

    def describe_backward(self, prediction_shape: tuple[int, ...]) -> str:
        return f"Δ = 2 (ŷ - y) / n, n the elements of the batch; ŷ {_batch_of(prediction_shape)}"


class ClassTargets(Loss):
    """Predictions hold class scores on their last axis. Targets are integer class
    labels with the prediction's shape less that axis ((batch,) for (batch, C), or
    (batch, T) per step for (batch, T, C)), or one-hot / probability rows of the
    prediction's own shape."""

    classification = True

    def check_target(self, prediction_shape: tuple[int, ...], target: np.ndarray) -> np.ndarray:
        target = np.asarray(target)
        shape = tuple(prediction_shape)
        if (target.dtype.kind == "i" and target.shape[1:] == shape[:-1] and shape
                and not (target.size and np.maximum.reduce(_unsigned(target), axis=None)
                         >= shape[-1])):
            return target  # labels in range, checked in one pass (the training hot path)
        if not shape:
            raise DataError(f"loss {self.name!r}: predictions of shape (batch,) have no class "
                            f"axis")
        if target.shape[1:] == shape:
            rows = super().check_target(shape, target)
            bad = ~np.isfinite(rows) | (rows < 0)
            if bad.any():
                where = tuple(int(i) for i in np.argwhere(bad)[0])
                raise DataError(f"loss {self.name!r}: one-hot / probability rows must be "
                                f"finite and non-negative; target{list(where)} is "
                                f"{float(rows[where])}")
            return rows
        classes = shape[-1]
        labels_shape = ", ".join(["batch", *map(str, shape[:-1])])
        rows_shape = ", ".join(["batch", *map(str, shape)])
        if target.shape[1:] != shape[:-1]:
            raise DataError(f"loss {self.name!r}: targets must be class labels of shape "
                            f"({labels_shape}) or one-hot rows of shape ({rows_shape}), got "
                            f"shape {target.shape}")
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
        np.put_along_axis(out, target[..., None], 1, axis=-1)
        return out

    def sample_targets(self, rng: np.random.Generator, shape: tuple[int, ...],
                       dtype: str) -> np.ndarray:
        return rng.integers(0, shape[-1], size=shape[:-1])


def _unsigned(labels: np.ndarray) -> np.ndarray:
    """Signed labels seen as unsigned: a negative one becomes huge, so one ``max``
    finds labels below 0 and above the last class alike."""
    return labels.view(labels.dtype.str.replace("i", "u"))


def _positions(prediction: np.ndarray) -> int:
    """How many class distributions a prediction holds: every axis but the last."""
    return max(prediction.size // prediction.shape[-1], 1) if prediction.ndim else 1


class SoftmaxCrossEntropy(ClassTargets):
    """Cross-entropy of softmax(logits) over the last axis: the gradient is simply
    (softmax - target) / positions, and it is stable for large logits (log-sum-exp).
    Every position (all axes but the last) is one row of a (positions, classes) view."""

    name = "softmax_cross_entropy"
    examples = [{"config": {}, "shape": (5,)}, {"config": {}, "shape": (3, 4)}]

    def forward(self, prediction: np.ndarray, target: np.ndarray) -> tuple[float, Any]:
        logp = log_softmax(prediction, axis=-1)
        rows, labels = _rows(logp, target)
        n = len(rows)
        if labels.ndim == 2:
            total = float((labels * rows).sum())
        else:
            total = float(rows[np.arange(n), labels].sum())
        return -total / n, (logp, target)

    def backward(self, cache: Any) -> np.ndarray:
        logp, target = cache
        grad = np.exp(logp)
        rows, labels = _rows(grad, target)
        n = len(rows)
        if labels.ndim == 2:
            rows -= labels
        else:
            rows[np.arange(n), labels] -= 1
        rows /= n
        return rows.reshape(grad.shape)

    def value_and_grad(self, prediction: np.ndarray, target: np.ndarray
                       ) -> tuple[float, np.ndarray]:
        """Value and gradient in one pass over the logits: one exp, and the loss as
        log-sum-exp minus the target's logit, exact where log(softmax) would not be."""
        logits, labels = _rows(prediction, target)
        n = len(logits)
        shifted = logits - logits.max(axis=1, keepdims=True)
        e = np.exp(shifted)
        total = e.sum(axis=1, keepdims=True)
        if labels.ndim == 2:
            value = -float((labels * (shifted - np.log(total))).sum()) / n
            e /= total
            e -= labels
        else:
            picked = np.arange(n), labels
            value = (float(np.log(total).sum()) - float(shifted[picked].sum())) / n
            e /= total
            e[picked] -= 1
        e /= n
        return value, (e if e.shape == prediction.shape else e.reshape(prediction.shape))

    def describe_backward(self, prediction_shape: tuple[int, ...]) -> str:
        return (f"Δ = (softmax(z) - onehot(y)) / N, on the logits z, N the positions of "
                f"the batch; z {_batch_of(prediction_shape)}")


def _rows(prediction: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Class scores as (positions, classes) rows, and the targets to match: labels of
    shape (positions,) or one-hot rows. Views where the arrays allow."""
    if prediction.ndim == 2:  # one position per sample: nothing to reshape
        return prediction, target
    classes = prediction.shape[-1]
    rows = prediction.reshape(-1, classes)
    if target.ndim == prediction.ndim:
        return rows, target.reshape(-1, classes)
    return rows, target.reshape(-1)


class CrossEntropy(ClassTargets):
    """Cross-entropy of probabilities (the output of a softmax layer); prefer
    ``softmax_cross_entropy`` on logits, which is exact where this one clips."""

    name = "cross_entropy"
    examples = [{"config": {}, "shape": (4,)}, {"config": {}, "shape": (2, 3)}]
    eps = 1e-12

    def forward(self, prediction: np.ndarray, target: np.ndarray) -> tuple[float, Any]:
        p = np.clip(prediction, self.eps, None)
        onehot = self.one_hot(target, prediction)
        n = _positions(p)
        return float(-(onehot * np.log(p)).sum() / n), (p, onehot)

    def backward(self, cache: Any) -> np.ndarray:
        p, onehot = cache
        return -onehot / p / _positions(p)

    def after_softmax(self) -> Loss:
        """Cross-entropy of softmax(logits) is softmax cross-entropy of the logits."""
        return SoftmaxCrossEntropy()

    def sample_predictions(self, rng: np.random.Generator, shape: tuple[int, ...],
                           dtype: str) -> np.ndarray:
        e = np.exp(rng.standard_normal(shape))
        return (e / e.sum(axis=-1, keepdims=True)).astype(dtype)

    def describe_backward(self, prediction_shape: tuple[int, ...]) -> str:
        return (f"Δ = -onehot(y) / (p · N), N the positions of the batch; "
                f"p {_batch_of(prediction_shape)}")


class BinaryCrossEntropy(Loss):
    """Mean binary cross-entropy over all elements, on probabilities or, with
    ``from_logits``, on logits (then stable and exact).

    Config:
        from_logits: the output is a logit (no sigmoid applied yet), not a probability.
    """

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

    def describe_backward(self, prediction_shape: tuple[int, ...]) -> str:
        if self.from_logits:
            return f"Δ = (σ(z) - y) / n, on the logits z; z {_batch_of(prediction_shape)}"
        return f"Δ = (p - y) / (p (1 - p) n); p {_batch_of(prediction_shape)}"


@hookimpl
def deltaprop_register_losses() -> list[type[Loss]]:
    return [MSE, SoftmaxCrossEntropy, CrossEntropy, BinaryCrossEntropy]
