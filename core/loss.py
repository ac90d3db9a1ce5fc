"""The loss protocol: a scalar from a prediction and a target, and its delta.

How every loss reduces: it is the mean of its terms over every position of the
prediction, where a position is one element for an element-wise loss (``mse``,
``binary_cross_entropy``) and one class distribution (the last axis) for a class loss
(``softmax_cross_entropy``, ``cross_entropy``). So a prediction of shape (N, T, C)
with labels of shape (N, T) averages over the N * T steps, as PyTorch does.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from .config import Configurable
from .errors import DataError


class Loss(Configurable):
    """Base class of every loss. ``forward`` returns ``(mean loss, cache)`` and
    ``backward(cache)`` the gradient of that mean with respect to the prediction."""

    kind: ClassVar[str] = "loss"
    name: ClassVar[str] = ""
    #: True when predictions are class scores on the last axis, so accuracy is meaningful.
    classification: ClassVar[bool] = False
    #: Cases for the registry-wide gradient check: ``{"config": {...}, "shape": shape}``.
    examples: ClassVar[list[dict[str, Any]]] = []

    def forward(self, prediction: np.ndarray, target: np.ndarray) -> tuple[float, Any]:
        raise NotImplementedError(f"loss {self.name!r} does not implement forward")

    def backward(self, cache: Any) -> np.ndarray:
        raise NotImplementedError(f"loss {self.name!r} does not implement backward")

    def value_and_grad(self, prediction: np.ndarray, target: np.ndarray
                       ) -> tuple[float, np.ndarray]:
        """The loss and its gradient, as training needs them. The default runs
        ``forward`` then ``backward``; a loss that can do both in one pass overrides it."""
        value, cache = self.forward(prediction, target)
        return float(value), self.backward(cache)

    def after_softmax(self) -> Loss | None:
        """The loss on logits ``z`` equal to this loss applied to ``softmax(z)`` over the
        last axis, or None (the default) when there is none. A network ending in a
        softmax layer is then trained on its logits with that loss (see
        ``Layer.loss_on_input``)."""
        return None

    def check_target(self, prediction_shape: tuple[int, ...], target: np.ndarray) -> np.ndarray:
        """Validate (and convert) targets for predictions of ``prediction_shape`` (batch left
        out) before any training runs; the default wants the same shape."""
        target = np.asarray(target)
        if target.shape[1:] != tuple(prediction_shape):
            raise DataError(f"loss {self.name!r}: targets of shape {target.shape[1:]} per "
                            f"sample do not match predictions of shape "
                            f"{tuple(prediction_shape)}")
        if not np.issubdtype(target.dtype, np.number) or not np.all(np.isfinite(target)):
            raise DataError(f"loss {self.name!r}: targets must be finite numbers")
        return target

    def sample_predictions(self, rng: np.random.Generator, shape: tuple[int, ...],
                           dtype: str) -> np.ndarray:
        """Predictions of ``shape`` (batch included) in the loss's domain, for the
        gradient check."""
        return rng.standard_normal(shape).astype(dtype)

    def sample_targets(self, rng: np.random.Generator, shape: tuple[int, ...],
                       dtype: str) -> np.ndarray:
        """Targets for predictions of ``shape`` (batch included), for the gradient check."""
        return rng.standard_normal(shape).astype(dtype)

    def describe_backward(self, prediction_shape: tuple[int, ...]) -> str | None:
        """The delta this loss starts backward from, in the notation of the docs, for
        predictions of ``prediction_shape`` (batch left out); None (the default) when
        the loss does not say. Shown at the top of a trace."""
        return None

    def __repr__(self) -> str:
        return f"<loss {self.name!r} {self.get_config()}>"
