"""The loss protocol: a scalar from a prediction and a target, and its delta."""

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
    #: True when predictions are class scores, so accuracy is a meaningful metric.
    classification: ClassVar[bool] = False
    #: Cases for the registry-wide gradient check: ``{"config": {...}, "shape": shape}``.
    examples: ClassVar[list[dict[str, Any]]] = []

    def forward(self, prediction: np.ndarray, target: np.ndarray) -> tuple[float, Any]:
        raise NotImplementedError

    def backward(self, cache: Any) -> np.ndarray:
        raise NotImplementedError

    def check_target(self, prediction_shape: tuple[int, ...], target: np.ndarray) -> np.ndarray:
        """Validate (and convert) targets for predictions of ``prediction_shape`` (batch left
        out) before any training runs; the default wants the same shape."""
        target = np.asarray(target)
        if target.shape[1:] != tuple(prediction_shape):
            raise DataError(f"loss {self.name!r}: targets of shape {target.shape[1:]} do not "
                            f"match predictions of shape {tuple(prediction_shape)}")
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

    def __repr__(self) -> str:
        return f"<loss {self.name!r} {self.get_config()}>"
