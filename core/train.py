"""Training and inference loops over a Network: one step, fit, predict, evaluate."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import DataError, TrainingError
from .loss import Loss
from .optimizer import Optimizer
from .passes import fuse_loss

if TYPE_CHECKING:
    from .graph import Network


def resolve_loss(net: Network, loss: str | Loss) -> Loss:
    if isinstance(loss, Loss):
        return loss
    key = ("loss", loss)
    if key not in net._resolved:
        from .registry import create_loss

        net._resolved[key] = create_loss(loss)
    return net._resolved[key]


def resolve_optimizer(net: Network, optimizer: str | Optimizer) -> Optimizer:
    """An optimizer given by name is created once per network, so its state persists."""
    if isinstance(optimizer, Optimizer):
        return optimizer
    key = ("optimizer", optimizer)
    if key not in net._resolved:
        from .registry import create_optimizer

        net._resolved[key] = create_optimizer(optimizer)
    return net._resolved[key]


def _single_output(net: Network, what: str) -> None:
    if len(net.outputs) != 1:
        raise TrainingError(f"{what} needs a network with one output; network "
                            f"{net.name!r} has {len(net.outputs)}")


def train_step(net: Network, x: Any, y: Any, *, loss: str | Loss,
               optimizer: str | Optimizer) -> float:
    """Forward, loss, backward and one optimizer update; returns the batch loss."""
    if len(net.outputs) != 1:
        _single_output(net, "train_step")
    loss_fn = resolve_loss(net, loss)
    opt = resolve_optimizer(net, optimizer)
    entry = net._loss_fusions.get(id(loss_fn))
    if entry is None or entry[0] is not loss_fn:  # the pair keeps the id from being reused
        if len(net._loss_fusions) > 16:
            net._loss_fusions.clear()
        entry = net._loss_fusions[id(loss_fn)] = (loss_fn, fuse_loss(net, loss_fn))
    fused = entry[1]
    if fused is not None:  # softmax cross-entropy on the logits, value and delta at once
        (logits,) = net._forward(x, True, fused.stop, (fused.slot,))
        value, delta = fused.value_and_grad(logits, np.asarray(y))
        net._backward([(fused.slot, delta)], False, len(delta))
    else:
        (prediction,) = net.forward(x, train=True)
        value, cache = loss_fn.forward(prediction, y)
        net.backward([loss_fn.backward(cache)], input_grads=False)
    opt.step(net.params, net.grads)
    return float(value)


def as_input_list(net: Network, x: Any) -> list[np.ndarray]:
    arrays = list(x) if isinstance(x, (list, tuple)) else [x]
    if len(arrays) != len(net.inputs):
        raise DataError(f"network {net.name!r} takes {len(net.inputs)} input array(s), "
                        f"got {len(arrays)}")
    return [np.asarray(a) for a in arrays]


def check_data(net: Network, xs: list[np.ndarray], y: Any, loss: Loss | None,
               what: str = "data") -> np.ndarray | None:
    """Reject inconsistent data before anything runs."""
    n = len(xs[0])
    for t, a in zip(net.inputs, xs):
        if a.ndim == 0 or a.shape[1:] != t.shape:
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
    if y is None:
        return None
    y = np.asarray(y)
    if y.ndim == 0 or len(y) != n:
        raise DataError(f"{what}: x has {n} samples but y has "
                        f"{len(y) if y.ndim else 'a scalar'}")
    if loss is not None:
        try:
            y = loss.check_target(net.outputs[0].shape, y)
        except DataError as exc:
            raise DataError(f"{what}: {exc}") from None
    return y


@dataclass
class History:
    """Per-epoch figures of a ``fit`` run."""

    loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"loss": self.loss, "val_loss": self.val_loss,
                "val_accuracy": self.val_accuracy, "seconds": self.seconds}


def show_progress(progress: bool | None) -> bool:
    """Progress bars go to a terminal unless switched off."""
    if progress is None:
        return sys.stderr.isatty()
    return progress


def fit(net: Network, x: Any, y: Any, *, loss: str | Loss = "softmax_cross_entropy",
        optimizer: str | Optimizer = "adam", epochs: int = 10, batch_size: int = 32,
        validation: tuple[Any, Any] | None = None, seed: int | None = None,
        shuffle: bool = True, progress: bool | None = None,
        on_epoch_end: Callable[[int, History], None] | None = None,
        checkpoint: str | os.PathLike[str] | None = None, resume: bool = False,
        checkpoint_every: int | None = None, detect_anomaly: bool = False,
        distributed: Any = None, bptt: int | None = None) -> History:
    """Train with mini-batches; a tqdm bar shows progress (off when not a terminal or
    when ``progress=False``). Runs with the same ``seed`` are identical.

    With ``checkpoint`` (a directory) the full training state is saved atomically at
    the start, after every epoch, every ``checkpoint_every`` batches, and when SIGINT
    or SIGTERM arrives (then ``checkpoint.TrainingInterrupted`` is raised); ``resume``
    continues from it, ending with the same weights as an uninterrupted run.
    ``detect_anomaly`` names the first node whose output or gradient became
    non-finite, before the optimizer applies it.

    ``distributed`` (True or a ``deltaprop.distributed.Distributed``, under mpiexec)
    trains data-parallel over MPI; ``batch_size`` is then per rank.

    ``bptt=k`` trains long sequences in chunks of k steps (see ``deltaprop.bptt``).
    """
    if bptt is not None:
        if checkpoint is not None or detect_anomaly or distributed:
            raise TrainingError("bptt does not combine with checkpoint, detect_anomaly or "
                                "distributed training yet")
        from .bptt import fit_truncated

        return fit_truncated(net, x, y, bptt=bptt, loss=loss, optimizer=optimizer,
                             epochs=epochs, batch_size=batch_size, validation=validation,
                             seed=seed, shuffle=shuffle, progress=progress,
                             on_epoch_end=on_epoch_end)
    from tqdm.auto import tqdm

    from .anomaly import AnomalyDetector, AnomalyError, checked_train_step
    from .checkpoint import Checkpointer, Position, data_digest, run_identity, stop_on_signals

    _single_output(net, "fit")
    loss_fn = resolve_loss(net, loss)
    opt = resolve_optimizer(net, optimizer)
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise DataError(f"epochs must be a non-negative integer, got {epochs!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise DataError(f"batch_size must be a positive integer, got {batch_size!r}")
    if resume and checkpoint is None:
        raise TrainingError("resume needs a checkpoint directory")
    xs = as_input_list(net, x)
    y = check_data(net, xs, y, loss_fn, "training data")
    if validation is not None:
        vx = as_input_list(net, validation[0])
        vy = check_data(net, vx, validation[1], loss_fn, "validation data")
    n = len(xs[0])
    if n == 0:
        raise DataError("training data is empty")
    if distributed:  # data-parallel over MPI: see deltaprop.distributed
        from .distributed import as_distributed

        if detect_anomaly:
            raise TrainingError("detect_anomaly does not work with distributed training yet")
        distributed = as_distributed(distributed)
        opt, batch_size, seed, progress = distributed.prepare_fit(
            net, opt, batch_size=batch_size, seed=seed, progress=progress, n_samples=n)
    rng = np.random.default_rng(seed)
    history = History()
    steps_per_epoch = -(-n // batch_size)
    pos = Position()
    saver = None
    if checkpoint is not None:
        identity = run_identity(net, opt, loss_fn, batch_size=batch_size, seed=seed,
                                shuffle=shuffle, digest=data_digest(xs, y))
        saver = Checkpointer(checkpoint, net, opt, identity, every=checkpoint_every)
        if distributed:
            saver = distributed.root_only(saver)
        restored = saver.resume(rng, n, steps_per_epoch) if resume else None
        if restored is not None:
            pos = restored
            history.loss = list(pos.history.get("loss", []))
            history.val_loss = list(pos.history.get("val_loss", []))
            history.val_accuracy = list(pos.history.get("val_accuracy", []))
        else:
            saver.save(pos, rng)  # a last good state exists from the start
    detector = AnomalyDetector() if detect_anomaly else None
    start = time.perf_counter()
    done = min(pos.epoch * steps_per_epoch + pos.batch, epochs * steps_per_epoch)
    bar = tqdm(total=epochs * steps_per_epoch, initial=done,
               disable=not show_progress(progress), unit="batch", dynamic_ncols=True,
               leave=True)
    try:  # numpy's overflow warnings are redundant: a non-finite loss stops training
        with stop_on_signals(saver is not None) as stop, np.errstate(
                over="ignore", invalid="ignore", divide="ignore"):
            for epoch in range(pos.epoch, epochs):
                if pos.order is None:
                    pos.order = rng.permutation(n) if shuffle else np.arange(n)
                order = pos.order
                bar.set_description(f"epoch {epoch + 1}/{epochs}")
                for b in range(pos.batch, steps_per_epoch):
                    idx = order[b * batch_size:(b + 1) * batch_size]
                    if detector is not None:
                        detector.where = f"epoch {epoch + 1}, batch {b + 1}"
                        try:
                            value = checked_train_step(net, [a[idx] for a in xs], y[idx],
                                                       loss=loss_fn, optimizer=opt,
                                                       detector=detector)
                        except AnomalyError as exc:
                            last = saver.last_good() if saver is not None else ""
                            raise AnomalyError(f"{exc}{last}") from None
                    elif distributed:
                        value = distributed.train_step(net, xs, y, idx, loss=loss_fn,
                                                       optimizer=opt, stop=stop)
                    else:
                        value = train_step(net, [a[idx] for a in xs], y[idx], loss=loss_fn,
                                           optimizer=opt)
                    if not np.isfinite(value):
                        last = saver.last_good() if saver is not None else ""
                        raise TrainingError(f"loss became {value} at epoch {epoch + 1}, batch "
                                            f"{b + 1}; lower the learning rate (detect_anomaly"
                                            f" / --detect-anomaly names the node){last}")
                    pos.epoch_loss += value * len(idx)
                    pos.batch = b + 1
                    bar.update(1)
                    if b % 10 == 0:
                        bar.set_postfix(loss=f"{value:.4f}")
                    if saver is not None:
                        if b + 1 < steps_per_epoch:
                            saver.after_batch(pos, rng)
                        if stop:
                            raise saver.interrupted(stop, pos, rng)
                history.loss.append(pos.epoch_loss / n)
                if validation is not None:
                    metrics = (distributed.evaluate(net, vx, vy, loss=loss_fn) if distributed
                               else evaluate(net, vx, vy, loss=loss_fn))
                    history.val_loss.append(metrics["loss"])
                    if "accuracy" in metrics:
                        history.val_accuracy.append(metrics["accuracy"])
                    bar.set_postfix(loss=f"{history.loss[-1]:.4f}",
                                    val_acc=f"{metrics.get('accuracy', float('nan')):.4f}")
                pos = Position(epoch + 1, 0, None, 0.0, history_lists(history))
                if saver is not None:
                    saver.save(pos, rng)
                if on_epoch_end is not None:
                    on_epoch_end(epoch, history)
                if stop and saver is not None:
                    raise saver.interrupted(stop, pos, rng)
    finally:
        bar.close()
    history.seconds = time.perf_counter() - start
    return history


def history_lists(history: History) -> dict[str, list[float]]:
    """The per-epoch figures a checkpoint keeps (copies)."""
    return {"loss": list(history.loss), "val_loss": list(history.val_loss),
            "val_accuracy": list(history.val_accuracy)}


def predict(net: Network, x: Any, *, batch_size: int = 256) -> Any:
    """Outputs for ``x`` in inference mode, batch by batch; a list for several outputs."""
    xs = as_input_list(net, x)
    n = len(xs[0])
    chunks: list[list[np.ndarray]] = [[] for _ in net.outputs]
    for start in range(0, n, batch_size):
        outs = net.forward([a[start:start + batch_size] for a in xs], train=False)
        for store, out in zip(chunks, outs):
            store.append(out)
    results = [np.concatenate(c) if c else np.empty((0, *t.shape))
               for c, t in zip(chunks, net.outputs)]
    return results[0] if len(results) == 1 else results


def accuracy(prediction: np.ndarray, target: np.ndarray) -> float:
    """Share of samples whose highest score is the target class (labels or one-hot)."""
    labels = target if target.ndim == 1 else target.argmax(axis=-1)
    return float(np.mean(prediction.argmax(axis=-1) == labels))


def evaluate(net: Network, x: Any, y: Any, *, loss: str | Loss = "softmax_cross_entropy",
             batch_size: int = 256) -> dict[str, float]:
    """Mean loss over ``(x, y)``, and accuracy when the loss is a classification loss."""
    _single_output(net, "evaluate")
    loss_fn = resolve_loss(net, loss)
    xs = as_input_list(net, x)
    y = check_data(net, xs, y, loss_fn, "evaluation data")
    assert y is not None
    prediction = predict(net, xs, batch_size=batch_size)
    total = 0.0
    for start in range(0, len(y), batch_size):
        value, _ = loss_fn.forward(prediction[start:start + batch_size],
                                   y[start:start + batch_size])
        total += float(value) * len(y[start:start + batch_size])
    metrics = {"loss": total / max(len(y), 1)}
    if loss_fn.classification:
        metrics["accuracy"] = accuracy(prediction, y)
    return metrics

