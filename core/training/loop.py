"""The training loop and its companions: ``fit``, ``train_step``, ``evaluate``, ``predict``.

One loop serves every mode. It shuffles, cuts batches and calls the one
``TrainingStep``; truncated BPTT (``bptt=k``) changes how a batch is run (window by
window, state carried), MPI (``distributed``) which part of each batch this process
runs and how gradients and figures are summed, anomaly detection and progress are
hooks, and checkpoints record the loop's position so a resumed run ends bit for bit
where an uninterrupted one would.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import defaults
from ..errors import DataError, TrainingError
from ..execution.hooks import Hook, bound
from ..execution.state import CarriedState
from ..graph.graph import Graph
from ..loss import Loss
from ..optimizer import Optimizer
from .anomaly import AnomalyDetector, AnomalyError
from .bptt import SequenceWindows
from .checkpoint import Checkpointer, Position, data_digest, run_identity, stop_on_signals
from .distributed import as_distributed
from .losses import LossSpec, OutputLosses, components, resolve_optimizer
from .progress import ProgressBar, show_progress
from .step import Reducer, TrainingStep

Weights = Sequence[float] | Mapping[str, float] | None


def as_input_list(graph: Graph, x: Any) -> list[np.ndarray]:
    arrays = list(x) if isinstance(x, (list, tuple)) else [x]
    if len(arrays) != len(graph.inputs):
        raise DataError(f"network {graph.name!r} takes {len(graph.inputs)} input array(s), "
                        f"got {len(arrays)}")
    return [np.asarray(a) for a in arrays]


def check_inputs(graph: Graph, xs: list[np.ndarray], what: str = "data",
                 windows: SequenceWindows | None = None) -> int:
    """Reject inconsistent inputs before anything runs; returns the sample count."""
    n = len(xs[0]) if xs[0].ndim else 0
    for t, a in zip(graph.inputs, xs):
        # with windows the time axis is longer than the network's (SequenceWindows.count)
        if a.ndim == 0 or (windows is None and a.shape[1:] != t.shape):
            raise DataError(f"{what}: input {t.node.name!r} expects samples of shape "
                            f"{t.shape}, got {a.shape[1:] if a.ndim else 'a scalar'}")
        if len(a) != n:
            raise DataError(f"{what}: inputs have {n} and {len(a)} samples")
        if not np.issubdtype(a.dtype, np.number):
            raise DataError(f"{what}: input {t.node.name!r} is not numeric ({a.dtype})")
        if np.issubdtype(a.dtype, np.floating) and not np.all(np.isfinite(a)):
            bad = int(np.argwhere(~np.isfinite(a.reshape(len(a), -1)))[0, 0])
            raise DataError(f"{what}: input {t.node.name!r} has NaN or infinite values "
                            f"(first at sample {bad})")
    if windows is not None:
        windows.count(graph, xs, what)
    return n


def check_data(graph: Graph, xs: list[np.ndarray], y: Any, losses: OutputLosses | None,
               what: str = "data", windows: SequenceWindows | None = None
               ) -> list[np.ndarray]:
    """Inputs and the targets of every trained output, checked together."""
    n = check_inputs(graph, xs, what, windows)
    if losses is None:
        return []
    shapes = None if windows is None else windows.output_shapes(graph, xs[0].shape[1])
    return losses.check_targets(y, n, what, shapes)


@dataclass
class History:
    """Per-epoch figures of a ``fit`` run: the mean training loss, and with validation
    data the loss (the weighted total for several outputs), the accuracy (of a single
    classifying output) and every figure ``evaluate`` gives."""

    loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)
    val_metrics: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"loss": self.loss, "val_loss": self.val_loss,
                "val_accuracy": self.val_accuracy, "val_metrics": self.val_metrics,
                "seconds": self.seconds}

    def record(self, metrics: dict[str, float]) -> None:
        self.val_metrics.append(dict(metrics))
        self.val_loss.append(metrics["loss"])
        if "accuracy" in metrics:
            self.val_accuracy.append(metrics["accuracy"])


#: history keys of a checkpoint that hold one ``val_metrics`` figure per epoch
METRIC_PREFIX = "val_metrics/"


def history_lists(history: History) -> dict[str, list[float]]:
    """The per-epoch figures a checkpoint keeps (copies); each figure of ``val_metrics``
    as a list of its own, so that the history stays lists of numbers."""
    lists = {"loss": list(history.loss), "val_loss": list(history.val_loss),
             "val_accuracy": list(history.val_accuracy)}
    for name in history.val_metrics[0] if history.val_metrics else ():
        lists[METRIC_PREFIX + name] = [m[name] for m in history.val_metrics]
    return lists


def restore_history(history: History, lists: dict[str, list[float]]) -> None:
    """Put back what ``history_lists`` kept."""
    history.loss = list(lists.get("loss", []))
    history.val_loss = list(lists.get("val_loss", []))
    history.val_accuracy = list(lists.get("val_accuracy", []))
    figures = {k[len(METRIC_PREFIX):]: v for k, v in lists.items()
               if k.startswith(METRIC_PREFIX)}
    epochs = min((len(v) for v in figures.values()), default=0)
    history.val_metrics = [{name: values[i] for name, values in figures.items()}
                           for i in range(epochs)]


def _count(value: Any, what: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        kind = "positive" if low > 0 else "non-negative"
        raise DataError(f"{what} must be a {kind} integer, got {value!r}")
    return value


def train_step(graph: Graph, x: Any, y: Any, *, loss: LossSpec,
               optimizer: str | Optimizer, loss_weights: Weights = None) -> float:
    """Forward, loss, backward and one optimizer update on a batch; returns the loss
    (the weighted total for several outputs)."""
    step = _step_for(graph, loss, resolve_optimizer(graph, optimizer), loss_weights)
    xs = list(x) if isinstance(x, (list, tuple)) else [x]  # the executor checks them
    samples = len(xs[0]) if np.ndim(xs[0]) else 0
    return step(xs, step.losses.check_targets(y, samples, "targets"))


def _step_for(graph: Graph, loss: LossSpec, optimizer: Optimizer,
              loss_weights: Weights) -> TrainingStep:
    """The training step of ``train_step`` calls with one loss and optimizer, built once
    (a loss given as a list or dict, or weighted, is set up anew each call)."""
    if loss_weights is not None or not isinstance(loss, (str, Loss)):
        return TrainingStep(graph, OutputLosses(graph, loss, loss_weights), optimizer)
    steps = components(graph).setdefault("steps", {})
    key = (loss if isinstance(loss, str) else id(loss), id(optimizer))
    entry = steps.get(key)
    if entry is None or entry[0] is not optimizer or (
            isinstance(loss, Loss) and entry[1].losses.outputs[0].loss is not loss):
        if len(steps) > 16:
            steps.clear()
        step = TrainingStep(graph, OutputLosses(graph, loss), optimizer)
        entry = steps[key] = (optimizer, step)
    return entry[1]


def fit(graph: Graph, x: Any, y: Any, *, loss: LossSpec = defaults.LOSS,
        optimizer: str | Optimizer = defaults.OPTIMIZER, epochs: int = defaults.EPOCHS,
        batch_size: int = defaults.BATCH_SIZE,
        validation: tuple[Any, Any] | None = None, seed: int | None = defaults.SEED,
        shuffle: bool = True, progress: bool | None = None,
        on_epoch_end: Callable[[int, History], None] | None = None,
        checkpoint: str | os.PathLike[str] | None = None, resume: bool = False,
        checkpoint_every: int | None = None, detect_anomaly: bool = False,
        distributed: Any = None, bptt: int | None = None, loss_weights: Weights = None,
        hooks: Sequence[Hook] = ()) -> History:
    """Train with mini-batches; see ``deltaprop.Network.fit``."""
    epochs = _count(epochs, "epochs", 0)
    batch_size = _count(batch_size, "batch_size", 1)
    if seed is not None:
        seed = _count(seed, "seed", 0)
    if resume and checkpoint is None:
        raise TrainingError("resume needs a checkpoint directory")
    losses = OutputLosses(graph, loss, loss_weights)
    opt = resolve_optimizer(graph, optimizer)
    windows = SequenceWindows(bptt) if bptt is not None else None
    xs = as_input_list(graph, x)
    ys = check_data(graph, xs, y, losses, "training data", windows)
    if validation is not None:
        vx = as_input_list(graph, validation[0])
        vy = check_data(graph, vx, validation[1], losses, "validation data", windows)
    n = len(xs[0])
    if n == 0:
        raise DataError("training data is empty")
    mpi = as_distributed(distributed)
    # a hash of every sample: taken once, and only when ranks or a checkpoint compare it
    digest = data_digest(xs, ys) if mpi is not None or checkpoint is not None else None
    reducer: Reducer = Reducer()
    if mpi is not None:
        batch_size, seed, progress = mpi.prepare(graph, opt, batch_size=batch_size,
                                                 seed=seed, progress=progress, n_samples=n,
                                                 data_digest=digest)
        reducer = mpi.reducer()
    rng = np.random.default_rng(seed)
    history = History()
    steps_per_epoch = -(-n // batch_size)
    pos = Position()
    saver: Any = None
    if checkpoint is not None:
        assert digest is not None  # taken above whenever there is a checkpoint
        identity = run_identity(graph, opt, losses, batch_size=batch_size, seed=seed,
                                shuffle=shuffle, digest=digest)
        saver = Checkpointer(checkpoint, graph, opt, identity, every=checkpoint_every)
        if mpi is not None:
            saver = mpi.root_only(saver)
        saver.acquire()  # the directory's lock, held until fit returns
        try:
            restored = saver.resume(rng, n, steps_per_epoch, epochs) if resume else None
            if restored is not None:
                pos = restored
                restore_history(history, pos.history)
            else:
                saver.save(pos, rng)  # a last good state exists from the start
        except BaseException:
            saver.release()
            raise
    done = min(pos.epoch * steps_per_epoch + pos.batch, epochs * steps_per_epoch)
    bar = (ProgressBar(epochs, steps_per_epoch, done=done) if show_progress(progress)
           else None)
    watchers: list[Hook] = [*([bar] if bar is not None else []), *hooks]
    if detect_anomaly:
        watchers.append(AnomalyDetector())
    step = TrainingStep(graph, losses, opt, reducer=reducer, hooks=watchers)
    watching = [*graph.hooks, *watchers]  # the network's own hooks see the loop too
    batch_start, batch_end = bound(watching, "batch_start"), bound(watching, "batch_end")
    epoch_end = bound(watching, "epoch_end")
    start = time.perf_counter()
    try:  # numpy's overflow warnings are redundant: a non-finite loss stops training
        with stop_on_signals(saver is not None) as stop, np.errstate(
                over="ignore", invalid="ignore", divide="ignore"):
            reducer.stop = stop
            for epoch in range(pos.epoch, epochs):
                if pos.order is None:
                    pos.order = rng.permutation(n) if shuffle else np.arange(n)
                order = pos.order
                for b in range(pos.batch, steps_per_epoch):
                    batch = order[b * batch_size:(b + 1) * batch_size]
                    idx = reducer.part(batch)
                    bx = [a[idx] for a in xs]
                    by = [t[idx] for t in ys]
                    for hook in batch_start:
                        hook(epoch, b)
                    try:
                        value = (windows.train_batch(step, bx, by) if windows is not None
                                 else step(bx, by))
                    except AnomalyError as exc:
                        last = saver.last_good() if saver is not None else ""
                        raise AnomalyError(f"{exc}{last}") from None
                    if not np.isfinite(value):
                        last = saver.last_good() if saver is not None else ""
                        raise TrainingError(f"loss became {value} at epoch {epoch + 1}, batch "
                                            f"{b + 1}; lower the learning rate (detect_anomaly"
                                            f" / --detect-anomaly names the node){last}")
                    pos.epoch_loss += value * len(batch)
                    pos.batch = b + 1
                    for hook in batch_end:
                        hook(epoch, b, value)
                    if saver is not None:
                        if b + 1 < steps_per_epoch:
                            saver.after_batch(pos, rng)
                        if reducer.stopping():  # what every process agreed on
                            raise saver.interrupted(stop, pos, rng)
                history.loss.append(pos.epoch_loss / n)
                metrics = {"loss": history.loss[-1]}
                if validation is not None:
                    figures = evaluate(graph, vx, vy, loss=losses, batch_size=256,
                                       reducer=reducer, windows=windows, checked=True)
                    history.record(figures)
                    metrics.update({f"val_{k}": v for k, v in figures.items()})
                for hook in epoch_end:
                    hook(epoch, metrics)
                pos = Position(epoch + 1, 0, None, 0.0, history_lists(history))
                if saver is not None:
                    saver.save(pos, rng)
                if on_epoch_end is not None:
                    on_epoch_end(epoch, history)
                if saver is not None and reducer.agree_to_stop():
                    raise saver.interrupted(stop, pos, rng)
    finally:
        reducer.stop = None
        if bar is not None:
            bar.close()
        if saver is not None:
            saver.release()
    history.seconds = time.perf_counter() - start
    return history


def predict(graph: Graph, x: Any, *, batch_size: int = 256,
            state: CarriedState | None = None) -> Any:
    """Outputs for ``x`` in inference mode, batch by batch; a list for several outputs."""
    xs = as_input_list(graph, x)
    n = len(xs[0])
    chunks: list[list[np.ndarray]] = [[] for _ in graph.outputs]
    for start in range(0, n, batch_size):
        outs = graph.executor().forward([a[start:start + batch_size] for a in xs],
                                        state=state)
        for store, out in zip(chunks, outs):
            store.append(out)
    results = [np.concatenate(c) if c else np.empty((0, *t.shape))
               for c, t in zip(chunks, graph.outputs)]
    return results[0] if len(results) == 1 else results


def correct(prediction: np.ndarray, target: np.ndarray) -> int:
    """How many positions' highest score is the target class (labels or one-hot)."""
    labels = target if target.ndim < prediction.ndim else target.argmax(axis=-1)
    return int(np.sum(prediction.argmax(axis=-1) == labels))


def accuracy(prediction: np.ndarray, target: np.ndarray) -> float:
    """Share of positions whose highest score is the target class (labels or one-hot)."""
    return correct(prediction, target) / _class_positions(prediction)


def evaluate(graph: Graph, x: Any, y: Any, *, loss: LossSpec | OutputLosses =
             defaults.LOSS, batch_size: int = 256, loss_weights: Weights = None,
             reducer: Reducer | None = None, windows: SequenceWindows | None = None,
             checked: bool = False) -> dict[str, float]:
    """Mean loss over ``(x, y)`` (per position, as the loss defines), and the accuracy
    of classifying outputs. With several outputs: ``loss`` is the weighted total and
    each output adds ``"<name>/loss"`` (and ``"<name>/accuracy"``)."""
    losses = loss if isinstance(loss, OutputLosses) else OutputLosses(graph, loss, loss_weights)
    reducer = reducer or Reducer()
    if checked:
        xs, ys = x, y
    else:
        xs = as_input_list(graph, x)
        ys = check_data(graph, xs, y, losses, "evaluation data", windows)
    n_out = len(losses.outputs)
    sums = np.zeros(2 * n_out)  # per output: the loss times its positions, and correct
    positions = np.zeros(n_out)
    mine = reducer.part(np.arange(len(xs[0])))
    for start in range(0, len(mine), batch_size):
        rows = mine[start:start + batch_size]
        bx = [a[rows] for a in xs]
        by = [t[rows] for t in ys]
        pieces = [(bx, by)] if windows is None else list(windows.windows(bx, by))
        state = CarriedState() if windows is not None else None
        for px, py in pieces:
            outs = graph.executor().forward(px, state=state)
            for i, (out, target) in enumerate(zip(losses.outputs, py, strict=True)):
                prediction = outs[out.index]
                value, _ = out.loss.forward(prediction, target)
                share = _positions(prediction, out.loss)
                sums[2 * i] += float(value) * share
                positions[i] += share
                if out.loss.classification:
                    sums[2 * i + 1] += correct(prediction, target)
    sums = reducer.sum(np.concatenate([sums, positions]), "allreduce of the evaluation metrics")
    sums, positions = sums[:2 * n_out], sums[2 * n_out:]
    metrics: dict[str, float] = {}
    total = 0.0
    for i, out in enumerate(losses.outputs):
        mean = float(sums[2 * i] / max(positions[i], 1))
        total += out.weight * mean
        prefix = "" if losses.single else f"{out.name}/"
        metrics[f"{prefix}loss"] = mean
        if out.loss.classification:
            metrics[f"{prefix}accuracy"] = float(sums[2 * i + 1] / max(positions[i], 1))
    if not losses.single:
        metrics = {"loss": total, **metrics}
    return metrics


def _positions(prediction: np.ndarray, loss: Loss) -> int:
    """How many terms a loss averages over (see ``deltaprop.loss``): class
    distributions for a class loss, elements otherwise."""
    return _class_positions(prediction) if loss.classification else int(prediction.size)


def _class_positions(prediction: np.ndarray) -> int:
    """How many class distributions a prediction holds: every axis but the last."""
    return max(prediction.size // prediction.shape[-1], 1)
