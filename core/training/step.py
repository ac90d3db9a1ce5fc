"""The training step: forward, loss, backward, gradient reduction, update.

Every way of training runs this one step; what differs is passed in. A ``Reducer``
says which part of a batch this process trains on and how its gradients meet those
of the other processes (``deltaprop.training.distributed`` sums them over MPI); a
``CarriedState`` starts recurrent layers from where the last window ended (truncated
BPTT); hooks watch every node, the loss and the update (anomaly detection). The loss
of each output goes through the plan's loss fusion and ``Loss.value_and_grad``, so
the arithmetic is the same in every mode.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import TrainingError
from ..execution.hooks import Hook, bound, overrides
from ..execution.passes import LossFusion
from ..execution.state import CarriedState
from ..graph.graph import Graph
from ..optimizer import Optimizer
from .losses import OutputLosses


class Reducer:
    """How one process's share of a step meets the others'. This one is a single
    process: its part is the whole batch and its gradients are the step's."""

    #: set by the training loop while it runs: a flag that signals set (see
    #: ``checkpoint.stop_on_signals``), which a reducer over processes shares with them
    stop: Any = None

    def part(self, idx: np.ndarray) -> np.ndarray:
        """The sample indices of a global batch this process trains on."""
        return idx

    def reduce(self, grads: dict[str, np.ndarray] | None, loss_sum: float, samples: int,
               params: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], float]:
        """The gradients to apply and the batch's mean loss, from this process's mean
        gradients (None when it had no samples), its summed loss and its sample count."""
        if grads is None or samples == 0:
            raise TrainingError("a training step needs at least one sample")
        return grads, loss_sum / samples

    def sum(self, values: np.ndarray, what: str) -> np.ndarray:
        """Sums over every process (evaluation figures); here, the values themselves."""
        return values

    def stopping(self) -> bool:
        """Whether training stops after the step just reduced: every process must answer
        the same, so a reducer over processes answers what the step agreed on, never a
        signal that reached this process alone after it."""
        return bool(self.stop)

    def agree_to_stop(self) -> bool:
        """Whether any process was asked to stop, decided together (at an epoch's end,
        where no step carries the request)."""
        return bool(self.stop)


class TrainingStep:
    """One optimizer update of ``graph`` from a batch: call it with the inputs and
    the targets of each trained output."""

    def __init__(self, graph: Graph, losses: OutputLosses, optimizer: Optimizer, *,
                 reducer: Reducer | None = None, hooks: Sequence[Hook] = ()) -> None:
        self.graph = graph
        self.losses = losses
        self.optimizer = optimizer
        self.reducer = reducer or Reducer()
        self.hooks = list(hooks)
        self._fusions: tuple[Any, ...] = ()  # (plan, fusions, skipped steps, slots)
        # what each hook watches, decided once: only node watchers go to the executor
        self._node_hooks = [h for h in self.hooks
                            if overrides(h, "forward_node") or overrides(h, "backward_node")]
        self._events = self._bind(self.hooks)

    @staticmethod
    def _bind(hooks: Sequence[Hook]) -> tuple[list[Any], ...]:
        return (bound(hooks, "loss_computed"), bound(hooks, "before_update"),
                bound(hooks, "after_update"), bound(hooks, "losses_chosen"))

    def _fused(self) -> tuple[list[LossFusion], frozenset[int], list[int] | None]:
        """Each output's loss fusion on the current plan, the steps training skips and
        the slots the losses read (None: the network's outputs), once per plan."""
        plan = self.graph.plan
        if not self._fusions or self._fusions[0] is not plan:
            fusions = [plan.loss_fusion(out.index, out.loss) for out in self.losses.outputs]
            slots = [f.slot for f in fusions]
            self._fusions = (plan, fusions, frozenset(f.skip for f in fusions
                                                      if f.skip is not None),
                             None if slots == plan.output_slots else slots)
        return self._fusions[1], self._fusions[2], self._fusions[3]

    def __call__(self, xs: Sequence[np.ndarray], targets: Sequence[np.ndarray], *,
                 state: CarriedState | None = None) -> float:
        """Train on this process's part of a batch; returns the batch's mean loss."""
        graph = self.graph
        samples = len(xs[0])  # checked by the executor's forward
        grads = None
        loss_sum = 0.0
        executor = graph.executor(self._node_hooks)
        # the network's own hooks see the step too
        loss_computed, before_update, after_update, losses_chosen = (
            self._bind([*graph.hooks, *self.hooks]) if graph.hooks else self._events)
        if samples:
            fusions, skip, slots = self._fused()
            for hook in losses_chosen:
                hook([(out.name, f.loss, f.slot) for out, f in zip(self.losses.outputs, fusions)])
            values = executor.forward(xs, train=True, outputs=slots, skip=skip, state=state)
            total = 0.0
            seeds = []
            for out, fusion, value, target in zip(self.losses.outputs, fusions, values,
                                                  targets):
                loss, delta = fusion.loss.value_and_grad(value, target)
                if out.weight != 1.0:
                    delta = delta * out.weight
                total += out.weight * loss
                seeds.append((fusion.slot, delta))
            for hook in loss_computed:
                hook(total, [(out.name, d) for out, (_, d) in zip(self.losses.outputs, seeds)])
            executor.backward_from(seeds, input_grads=False)
            grads, loss_sum = executor.grads, total * samples
        params = graph.params
        grads, mean_loss = self.reducer.reduce(grads, loss_sum, samples, params)
        for hook in before_update:
            hook(grads)
        self.optimizer.step(params, grads)
        for after in after_update:
            after(params, self.optimizer)
        executor.grads = grads  # the reduced gradients, which the update applied
        graph.keep_results(executor)
        return float(mean_loss)
