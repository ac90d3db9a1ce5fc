"""Anomaly detection: find the first node whose output or gradient became non-finite.

When the loss turns to NaN the interesting question is where it started. The
detector is a hook: it sees every node's outputs on the way forward, the loss, every
node's deltas and parameter gradients on the way back, and the summed gradients
before the update; the first non-finite array stops the step with the node's name,
before the optimizer can spread the damage into the weights. It costs one
``isfinite`` pass per array, so it is opt-in (``fit(detect_anomaly=True)``,
``--detect-anomaly``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import TrainingError
from ..execution.hooks import Hook
from ..execution.step import Step
from ..optimizer import Optimizer


class AnomalyError(TrainingError):
    """A node's output or gradient, the loss, or a parameter became NaN or infinite."""


def _bad(array: Any) -> str:
    """'' when finite, else a short count of what is wrong."""
    if array is None:
        return ""
    a = np.asarray(array)
    if not np.issubdtype(a.dtype, np.inexact) or np.isfinite(a).all():
        return ""
    nan = int(np.isnan(a).sum())
    return f"{nan} NaN and {a.size - nan - int(np.isfinite(a).sum())} infinite of {a.size} values"


class AnomalyDetector(Hook):
    """Checks arrays as the executor and the training step produce them; ``where`` (set
    at each batch, e.g. "epoch 2, batch 7") prefixes every message."""

    def __init__(self) -> None:
        self.where = ""

    def fail(self, message: str) -> AnomalyError:
        prefix = f"{self.where}: " if self.where else ""
        return AnomalyError(f"{prefix}{message}")

    @staticmethod
    def _node(step: Step) -> str:
        return f"node {step.name!r} ({step.layer.name})"

    @staticmethod
    def _bad_params(step: Step) -> str:
        bad = [p for p, v in step.layer.params.items() if _bad(v)]
        return f"; its parameter(s) {', '.join(bad)} were already non-finite" if bad else ""

    def batch_start(self, epoch: int, batch: int) -> None:
        self.where = f"epoch {epoch + 1}, batch {batch + 1}"

    def forward_node(self, step: Step, inputs: Sequence[np.ndarray | None],
                     outputs: Sequence[np.ndarray], cache: Any, cache_bytes: int) -> None:
        for i, out in enumerate(outputs):
            what = _bad(out)
            if what:
                raise self.fail(f"{self._node(step)} output {i} became non-finite in the "
                                f"forward pass ({what}) from finite inputs"
                                f"{self._bad_params(step)}")

    def backward_node(self, step: Step, grad_outputs: Sequence[np.ndarray],
                      grad_inputs: Sequence[np.ndarray | None],
                      grad_params: dict[str, np.ndarray]) -> None:
        for i, g in enumerate(grad_inputs):
            what = _bad(g)
            if what:
                raise self.fail(f"{self._node(step)} gradient for input {i} became "
                                f"non-finite in the backward pass ({what}) from finite "
                                f"output gradients{self._bad_params(step)}")
        for pname, g in grad_params.items():
            what = _bad(g)
            if what:
                raise self.fail(f"{self._node(step)} gradient of parameter {pname!r} "
                                f"became non-finite in the backward pass ({what})")

    def loss_computed(self, value: float, grads: Sequence[tuple[str, np.ndarray]]) -> None:
        if not np.isfinite(value):
            raise self.fail(f"the loss became non-finite ({value}) from finite network "
                            f"outputs")
        for output, grad in grads:
            what = _bad(grad)
            if what:
                raise self.fail(f"the gradient of the loss of output {output!r} became "
                                f"non-finite ({what})")

    def before_update(self, grads: dict[str, np.ndarray]) -> None:
        for key, g in grads.items():
            what = _bad(g)
            if what:  # a shared layer's summed gradient can overflow although each part did not
                raise self.fail(f"the summed gradient of parameter {key!r} became "
                                f"non-finite ({what})")

    def after_update(self, params: dict[str, np.ndarray], optimizer: Optimizer) -> None:
        """A finite gradient can still overflow a weight."""
        for key, value in params.items():
            what = _bad(value)
            if what:
                raise self.fail(f"parameter {key!r} became non-finite in the "
                                f"{optimizer.name} update (lr={optimizer.lr}) from finite "
                                f"gradients ({what})")
