"""Hooks: the one way to watch deltaprop work.

A ``Hook`` sees each node as the executor runs it (forward and backward) and each
training step and epoch as the training loop runs them. Subclass it and override the
methods you need; the others cost nothing, because the executor and the loop call
only the methods a hook overrides. Anomaly detection, the memory report and the
progress bar are hooks; so is anything a user writes to look inside a real step.

Attach a hook to every call on a network with ``net.add_hook(hook)`` (or for a block,
``with net.hooked(hook):``), or to one training run with ``fit(..., hooks=[hook])``.
A hook may raise to stop the call (anomaly detection does); it must not change the
arrays it is shown.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ..loss import Loss
    from ..optimizer import Optimizer
    from .step import Step


class Hook:
    """Observer of the executor and the training loop; every method does nothing here."""

    # -- the executor ---------------------------------------------------------------------
    def forward_node(self, step: Step, inputs: Sequence[np.ndarray | None],
                     outputs: Sequence[np.ndarray], cache: Any, cache_bytes: int) -> None:
        """After ``step`` ran forward. ``inputs`` are None where the step consumed its
        input in place; ``cache`` is what backward will get (None in inference), of
        which ``cache_bytes`` are newly held because of this step."""

    def backward_node(self, step: Step, grad_outputs: Sequence[np.ndarray],
                      grad_inputs: Sequence[np.ndarray | None],
                      grad_params: dict[str, np.ndarray]) -> None:
        """After ``step`` ran backward: the deltas it got (one per output, summed over
        the output's readers), the deltas it passed to its inputs (None where none is
        wanted) and its parameter gradients (keyed by parameter name)."""

    # -- the training step ----------------------------------------------------------------
    def losses_chosen(self, losses: Sequence[tuple[str, Loss, int]]) -> None:
        """Before the forward of a training step: per trained output, its name, the
        loss training computes (with loss fusion, the one on the skipped step's input)
        and the plan slot that loss reads, where its delta enters backward."""

    def loss_computed(self, value: float, grads: Sequence[tuple[str, np.ndarray]]) -> None:
        """After the loss of a training step: its (weighted) value, and per output the
        delta that backward starts from."""

    def before_update(self, grads: dict[str, np.ndarray]) -> None:
        """After backward (and, across processes, the gradient reduction), before the
        optimizer applies ``grads``."""

    def after_update(self, params: dict[str, np.ndarray], optimizer: Optimizer) -> None:
        """After the optimizer updated ``params``."""

    # -- the training loop ----------------------------------------------------------------
    def batch_start(self, epoch: int, batch: int) -> None:
        """Before batch ``batch`` (0-based) of epoch ``epoch`` (0-based) trains."""

    def batch_end(self, epoch: int, batch: int, loss: float) -> None:
        """After batch ``batch`` (0-based) of epoch ``epoch`` (0-based) trained."""

    def epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        """After epoch ``epoch``: its mean training loss and any validation figures."""


#: (hook class, method) -> whether the class overrides it, decided once per class
_overridden: dict[tuple[type, str], bool] = {}


def overrides(hook: Hook, method: str) -> bool:
    """True when ``hook``'s class defines its own ``method``."""
    key = (type(hook), method)
    found = _overridden.get(key)
    if found is None:
        found = _overridden[key] = getattr(type(hook), method) is not getattr(Hook, method)
    return found


def bound(hooks: Sequence[Hook], method: str) -> list[Callable[..., None]]:
    """The bound ``method`` of each hook that overrides it, in order."""
    if not hooks:
        return []
    return [getattr(h, method) for h in hooks if overrides(h, method)]
