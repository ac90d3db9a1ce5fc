"""Anomaly detection: find the first node whose output or gradient became non-finite.

When the loss turns to NaN the interesting question is where it started. With a
detector attached (``network.anomaly``), the executor hands it every node's outputs
on the way forward and every node's deltas and parameter gradients on the way back;
the first non-finite array stops the step with the node's name, before the
optimizer can spread the damage into the weights. It costs one ``isfinite`` pass
per array, so it is opt-in (``fit(detect_anomaly=True)``, ``--detect-anomaly``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import TrainingError

if TYPE_CHECKING:
    from .graph import Network, Step
    from .loss import Loss
    from .optimizer import Optimizer


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


class AnomalyDetector:
    """Checks arrays as the executor produces them; ``where`` (set by the training loop,
    e.g. "epoch 2, batch 7") prefixes every message."""

    def __init__(self) -> None:
        self.where = ""

    def _fail(self, message: str) -> AnomalyError:
        prefix = f"{self.where}: " if self.where else ""
        return AnomalyError(f"{prefix}{message}")

    def _node(self, step: Step) -> str:
        return f"node {step.name!r} ({step.layer.name})"

    def _bad_params(self, step: Step) -> str:
        bad = [p for p, v in step.layer.params.items() if _bad(v)]
        return f"; its parameter(s) {', '.join(bad)} were already non-finite" if bad else ""

    def check_forward(self, step: Step, outputs: Sequence[Any]) -> None:
        """Called by the executor after each node's forward (its inputs were checked)."""
        for i, out in enumerate(outputs):
            what = _bad(out)
            if what:
                raise self._fail(f"{self._node(step)} output {i} became non-finite in the "
                                 f"forward pass ({what}) from finite inputs"
                                 f"{self._bad_params(step)}")

    def check_backward(self, step: Step, grad_inputs: Sequence[Any],
                       grad_params: dict[str, Any]) -> None:
        """Called by the executor after each node's backward (its deltas were finite)."""
        for i, g in enumerate(grad_inputs):
            what = _bad(g)
            if what:
                raise self._fail(f"{self._node(step)} gradient for input {i} became "
                                 f"non-finite in the backward pass ({what}) from finite "
                                 f"output gradients{self._bad_params(step)}")
        for pname, g in grad_params.items():
            what = _bad(g)
            if what:
                raise self._fail(f"{self._node(step)} gradient of parameter {pname!r} "
                                 f"became non-finite in the backward pass ({what})")

    def check_loss(self, loss: Loss, value: float, grad: np.ndarray) -> None:
        if not np.isfinite(value):
            raise self._fail(f"loss {loss.name!r} became non-finite ({value}) from finite "
                             f"network outputs")
        what = _bad(grad)
        if what:
            raise self._fail(f"the gradient of loss {loss.name!r} became non-finite ({what})")

    def check_params(self, net: Network, optimizer: Optimizer) -> None:
        """After an optimizer step: a finite gradient can still overflow a weight."""
        for key, value in net.params.items():
            what = _bad(value)
            if what:
                raise self._fail(f"parameter {key!r} became non-finite in the "
                                 f"{optimizer.name} update (lr={optimizer.lr}) from finite "
                                 f"gradients ({what})")


@contextlib.contextmanager
def detecting(net: Network, detector: AnomalyDetector | None) -> Iterator[None]:
    """Attach ``detector`` to the network's executor within the block."""
    if detector is None:
        yield
        return
    previous = net.anomaly
    net.anomaly = detector
    try:
        yield
    finally:
        net.anomaly = previous


def checked_train_step(net: Network, x: Any, y: Any, *, loss: Loss, optimizer: Optimizer,
                       detector: AnomalyDetector) -> float:
    """``train.train_step`` with every array checked, and the update applied only when
    the loss and every gradient are finite (so the weights stay the last good ones)."""
    with detecting(net, detector):
        (prediction,) = net.forward(x, train=True)
        value, cache = loss.forward(prediction, y)
        grad = loss.backward(cache)
        detector.check_loss(loss, float(value), grad)
        net.backward([grad], input_grads=False)
    for key, g in net.grads.items():
        what = _bad(g)
        if what:  # a shared layer's summed gradient can overflow although each part did not
            raise detector._fail(f"the summed gradient of parameter {key!r} became "
                                 f"non-finite ({what})")
    optimizer.step(net.params, net.grads)
    detector.check_params(net, optimizer)
    return float(value)
