"""Gradient flow over training: each layer's gradient norm, epoch by epoch.

Vanishing (or exploding) gradients show as layers whose gradients are orders of
magnitude below (or above) the others and stay there. ``GradientFlow`` is a hook:
before every update it takes the norm of each layer's gradient (all its parameters
together: the square root of the summed squares) and at the end of each epoch keeps
the mean over the epoch's batches. ``deltaprop train --plot-gradients FILE.svg``
draws it (``deltaprop.visual.gradient_flow``).
"""

from __future__ import annotations

import math

import numpy as np

from ..execution.hooks import Hook
from ..graph.graph import Graph


class GradientFlow(Hook):
    """``norms[layer]``: per epoch, the mean over its batches of the norm of the
    layer's gradient; layers in the order they run forward (inputs first)."""

    def __init__(self, graph: Graph) -> None:
        self.layers: list[str] = []
        self._keys: dict[str, list[str]] = {}  # layer label -> its keys in ``grads``
        for key, _, _ in graph.plan.param_index:
            label = key.rsplit("/", 1)[0]
            if label not in self._keys:
                self.layers.append(label)
            self._keys.setdefault(label, []).append(key)
        self.norms: dict[str, list[float]] = {label: [] for label in self.layers}
        self._sums = dict.fromkeys(self.layers, 0.0)
        self._batches = 0

    def before_update(self, grads: dict[str, np.ndarray]) -> None:
        for label, keys in self._keys.items():
            total = 0.0
            for key in keys:
                g = grads.get(key)
                if g is not None:
                    flat = g.reshape(-1)
                    total += float(np.dot(flat, flat))
            self._sums[label] += math.sqrt(total)
        self._batches += 1

    def epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        for label in self.layers:
            self.norms[label].append(self._sums[label] / max(self._batches, 1))
        self._sums = dict.fromkeys(self.layers, 0.0)
        self._batches = 0
