"""Truncated backpropagation through time: long sequences trained in windows of ``k``
steps, the recurrent state carried from one window to the next but the gradient cut
at the window boundary, so memory is bounded by ``k`` whatever the sequence length.

The training loop drives it: each batch of sequences starts from a fresh
``CarriedState``, and every window runs the one training step with that state, so
each recurrent layer without initial-state inputs starts where the last window left
it (``Layer.forward_with_state``). The layers are handed their state; they know
nothing of windows. The network takes windows: its inputs and outputs have ``k``
steps on axis 1, the data has any multiple of ``k``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from ..errors import DataError
from ..execution.state import CarriedState
from ..graph.graph import Graph
from .step import TrainingStep


class SequenceWindows:
    """Cuts every input and target along axis 1 into windows of ``length`` steps."""

    def __init__(self, length: int) -> None:
        if isinstance(length, bool) or not isinstance(length, int) or length <= 0:
            raise DataError(f"bptt must be a positive integer (steps per window), got "
                            f"{length!r}")
        self.length = length

    def count(self, graph: Graph, xs: Sequence[np.ndarray], what: str) -> int:
        """Check that every input has a time axis that is a multiple of the window and
        that the network takes windows; returns the number of windows."""
        k = self.length
        T = xs[0].shape[1] if xs[0].ndim >= 2 else 0
        for t, a in zip(graph.inputs, xs, strict=True):
            if a.ndim < 2 or a.shape[1] != T:
                raise DataError(f"{what}: truncated BPTT needs every input with a time axis "
                                f"(axis 1) of one length; input {t.node.name!r} has shape "
                                f"{a.shape}")
            if t.shape[0] != k or a.shape[2:] != t.shape[1:]:
                raise DataError(f"{what}: with bptt={k} the network input {t.node.name!r} "
                                f"must take windows of shape ({k}, "
                                f"{', '.join(map(str, a.shape[2:]))}), it takes {t.shape}")
        for shape in graph.output_shapes:
            if not shape or shape[0] != k:
                raise DataError(f"{what}: with bptt={k} every network output must have {k} "
                                f"steps on axis 1 (return_sequences), one has shape "
                                f"(batch, {', '.join(map(str, shape))})")
        if T % k:
            raise DataError(f"{what}: sequences of {T} steps do not split into windows of "
                            f"bptt={k} steps")
        return T // k

    def output_shapes(self, graph: Graph, steps: int) -> list[tuple[int, ...]]:
        """The shapes targets of whole sequences of ``steps`` steps are checked against."""
        return [(steps, *shape[1:]) for shape in graph.output_shapes]

    def windows(self, xs: Sequence[np.ndarray], targets: Sequence[np.ndarray | None]
                ) -> Iterator[tuple[list[np.ndarray], list[np.ndarray | None]]]:
        k = self.length
        for start in range(0, xs[0].shape[1], k):
            part = slice(start, start + k)
            yield ([a[:, part] for a in xs],
                   [None if t is None else t[:, part] for t in targets])

    def train_batch(self, step: TrainingStep, xs: Sequence[np.ndarray],
                    targets: Sequence[np.ndarray]) -> float:
        """One batch of long sequences, window by window from a zero state: one
        optimizer update per window. Returns the mean loss over the windows."""
        state = CarriedState()
        losses = [step(wx, wy, state=state)  # type: ignore[arg-type]
                  for wx, wy in self.windows(xs, targets)]
        return float(np.mean(losses))
