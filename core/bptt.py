"""Truncated backpropagation through time: long sequences trained in chunks of ``k``
steps, the recurrent state carried from one chunk to the next but the gradient cut at
the chunk boundary, so memory is bounded by ``k`` whatever the sequence length.

The carry is explicit and scoped: inside ``carry_states()`` every recurrent layer
without initial-state inputs starts from the final state it reached on the previous
call (per layer, per application within one network pass) and records its new final
state. Outside that block, layers keep no state between calls. The same block serves
step-by-step generation (feed one step at a time, the state follows).
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import DataError, TrainingError

if TYPE_CHECKING:
    from .graph import Network
    from .loss import Loss
    from .optimizer import Optimizer
    from .train import History


class StateCarry:
    """Final states of the recurrent layers, keyed by (layer, application number)."""

    def __init__(self) -> None:
        self._states: dict[tuple[int, int], list[np.ndarray]] = {}
        self._seen: dict[int, int] = {}

    def new_pass(self) -> None:
        """Call before each network forward: application counters restart."""
        self._seen = {}

    def reset(self) -> None:
        """Forget every state (a new batch of sequences starts)."""
        self._states = {}
        self._seen = {}

    def slot(self, layer: Any, batch: int) -> CarriedSlot:
        n = self._seen.get(id(layer), 0)
        self._seen[id(layer)] = n + 1
        key = (id(layer), n)
        states = self._states.get(key)
        if states is not None and states[0].shape[0] != batch:
            states = None  # a batch of another size: start afresh
        return CarriedSlot(self, key, states)


class CarriedSlot:
    """What one layer application sees: the states to start from (or None) and where to
    keep its final states."""

    __slots__ = ("_carry", "_key", "states")

    def __init__(self, carry: StateCarry, key: tuple[int, int],
                 states: list[np.ndarray] | None) -> None:
        self._carry = carry
        self._key = key
        self.states = states

    def keep(self, finals: list[np.ndarray]) -> None:
        # copies: the next chunk must not see (or backpropagate into) this chunk's arrays
        self._carry._states[self._key] = [np.array(s) for s in finals]


_active: contextvars.ContextVar[StateCarry | None] = contextvars.ContextVar(
    "deltaprop_state_carry", default=None)


@contextlib.contextmanager
def carry_states() -> Iterator[StateCarry]:
    """Within the block, recurrent layers carry their state from call to call."""
    carry = StateCarry()
    token = _active.set(carry)
    try:
        yield carry
    finally:
        _active.reset(token)


def carried_state(layer: Any, batch: int) -> CarriedSlot | None:
    """For a recurrent layer's forward: its carried slot, or None outside ``carry_states``."""
    carry = _active.get()
    return None if carry is None else carry.slot(layer, batch)


def _chunks(net: Network, xs: list[np.ndarray], k: int, what: str) -> int:
    """Check that every input has a time axis that is a multiple of ``k`` and that the
    network takes ``k`` steps; returns the number of chunks."""
    T = xs[0].shape[1] if xs[0].ndim >= 2 else 0
    for t, a in zip(net.inputs, xs, strict=True):
        if a.ndim < 2 or a.shape[1] != T:
            raise DataError(f"{what}: truncated BPTT needs every input with a time axis "
                            f"(axis 1) of one length; input {t.node.name!r} has shape "
                            f"{a.shape}")
        if t.shape[0] != k or a.shape[2:] != t.shape[1:]:
            raise DataError(f"{what}: with bptt={k} the network input {t.node.name!r} must "
                            f"take chunks of shape ({k}, {', '.join(map(str, a.shape[2:]))}), "
                            f"it takes {t.shape}")
    if T % k:
        raise DataError(f"{what}: sequences of {T} steps do not split into chunks of "
                        f"bptt={k} steps")
    return T // k


def _chunk_loss(net: Network, loss_fn: Loss, xs: list[np.ndarray], y: np.ndarray,
                train: bool) -> tuple[float, Any, tuple[int, ...]]:
    """Forward one chunk; per-step class labels (batch, k) meet per-step predictions
    (batch, k, classes) by treating every step as a sample."""
    (pred,) = net.forward(xs, train=train)
    shape = pred.shape
    if y.ndim == 2 and pred.ndim == 3 and y.shape == pred.shape[:2]:
        value, cache = loss_fn.forward(pred.reshape(-1, shape[-1]), y.reshape(-1))
    else:
        value, cache = loss_fn.forward(pred, y)
    return float(value), cache, shape


def truncated_step(net: Network, xs: list[np.ndarray], y: np.ndarray, k: int, *,
                   loss: Loss, optimizer: Optimizer, carry: StateCarry) -> float:
    """One batch of long sequences: forward, backward and update chunk by chunk, the state
    carried between chunks. Returns the mean loss over the chunks."""
    n_chunks = _chunks(net, xs, k, "training data")
    if y.ndim < 2 or y.shape[1] != xs[0].shape[1]:
        raise DataError(f"training data: with bptt the targets need the same time axis as "
                        f"the inputs ({xs[0].shape[1]} steps), got shape {y.shape}")
    carry.reset()
    total = 0.0
    for c in range(n_chunks):
        part = slice(c * k, (c + 1) * k)
        carry.new_pass()
        value, cache, shape = _chunk_loss(net, loss, [a[:, part] for a in xs], y[:, part],
                                          train=True)
        net.backward([loss.backward(cache).reshape(shape)], input_grads=False)
        optimizer.step(net.params, net.grads)
        total += value
    return total / n_chunks


def evaluate_truncated(net: Network, xs: list[np.ndarray], y: np.ndarray, k: int, *,
                       loss: Loss, batch_size: int = 256) -> float:
    """Mean loss over long sequences read in chunks of ``k`` with the state carried."""
    n_chunks = _chunks(net, xs, k, "evaluation data")
    total, count = 0.0, 0
    with carry_states() as carry:
        for start in range(0, len(xs[0]), batch_size):
            rows = slice(start, start + batch_size)
            carry.reset()
            for c in range(n_chunks):
                part = slice(c * k, (c + 1) * k)
                carry.new_pass()
                value, _, _ = _chunk_loss(net, loss, [a[rows, part] for a in xs],
                                          y[rows, part], train=False)
                total += value * len(y[rows])
                count += len(y[rows])
    return total / max(count, 1)


def fit_truncated(net: Network, x: Any, y: Any, *, bptt: int, loss: Any, optimizer: Any,
                  epochs: int = 10, batch_size: int = 32,
                  validation: tuple[Any, Any] | None = None, seed: int | None = None,
                  shuffle: bool = True, progress: bool | None = None,
                  on_epoch_end: Callable[[int, History], None] | None = None) -> History:
    """``fit`` with truncated BPTT (``deltaprop.train.fit(..., bptt=k)`` lands here).

    ``x``: (samples, T, ...) with T a multiple of ``k``; the network takes (k, ...).
    ``y``: (samples, T, ...) per-step targets (class labels of shape (samples, T) for a
    softmax loss). Every batch of sequences starts from a zero state.
    """
    from tqdm.auto import tqdm

    from .train import History, as_input_list, resolve_loss, resolve_optimizer, show_progress

    if isinstance(bptt, bool) or not isinstance(bptt, int) or bptt <= 0:
        raise DataError(f"bptt must be a positive integer (steps per chunk), got {bptt!r}")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise DataError(f"epochs must be a non-negative integer, got {epochs!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise DataError(f"batch_size must be a positive integer, got {batch_size!r}")
    if len(net.outputs) != 1:
        raise TrainingError(f"fit needs a network with one output; network {net.name!r} "
                            f"has {len(net.outputs)}")
    loss_fn = resolve_loss(net, loss)
    opt = resolve_optimizer(net, optimizer)
    xs = as_input_list(net, x)
    y = np.asarray(y)
    _chunks(net, xs, bptt, "training data")
    n = len(xs[0])
    if n == 0 or len(y) != n:
        raise DataError(f"training data: x has {n} samples and y {len(y)}")
    if validation is not None:
        vx = as_input_list(net, validation[0])
        vy = np.asarray(validation[1])
    rng = np.random.default_rng(seed)
    history = History()
    steps = -(-n // batch_size)
    start = time.perf_counter()
    bar = tqdm(total=epochs * steps, disable=not show_progress(progress), unit="batch",
               dynamic_ncols=True, leave=True)
    try:
        with carry_states() as carry:
            for epoch in range(epochs):
                order = rng.permutation(n) if shuffle else np.arange(n)
                bar.set_description(f"epoch {epoch + 1}/{epochs}")
                total = 0.0
                for b in range(steps):
                    idx = order[b * batch_size:(b + 1) * batch_size]
                    value = truncated_step(net, [a[idx] for a in xs], y[idx], bptt,
                                           loss=loss_fn, optimizer=opt, carry=carry)
                    if not np.isfinite(value):
                        raise TrainingError(f"loss became {value} at epoch {epoch + 1}, "
                                            f"batch {b + 1}; lower the learning rate")
                    total += value * len(idx)
                    bar.update(1)
                    bar.set_postfix(loss=f"{value:.4f}")
                history.loss.append(total / n)
                if validation is not None:
                    history.val_loss.append(evaluate_truncated(net, vx, vy, bptt,
                                                               loss=loss_fn))
                if on_epoch_end is not None:
                    on_epoch_end(epoch, history)
    finally:
        bar.close()
    history.seconds = time.perf_counter() - start
    return history
