"""Resumable training: checkpoints that survive a crash, and signals that save one.

A checkpoint is a model file (so ``deltaprop evaluate`` reads it) that also holds
everything the training loop needs to carry on exactly where it stopped: the
optimizer's state, the epoch and the batch position within it, that epoch's sample
order, the shuffling generator's state and the loss summed so far. Resuming from it
replays the remaining batches in the same order with the same state, so an
interrupted seeded run ends with the same weights, bit for bit, as one that never
stopped. Files are written atomically (temporary file, fsync, rename): a crash
during a save leaves the previous checkpoint in place.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import signal
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DeltapropError, FileError, ModelFileError, TrainingError
from ..graph.graph import Graph
from ..optimizer import Optimizer
from ..storage.lock import PidLock
from ..storage.model_format import PARAM_PREFIX, model_arrays, model_meta
from ..storage.npz import NpzReader, guarded, write_npz
from .losses import OutputLosses

CHECKPOINT_FILE = "checkpoint.npz"
CHECKPOINT_VERSION = 1
OPT_PREFIX = "optimizer:"
ORDER = "order"


class CheckpointError(ModelFileError):
    """A checkpoint that cannot be read, or that belongs to a different run."""


class TrainingInterrupted(TrainingError):
    """SIGINT or SIGTERM stopped training after a checkpoint was saved."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


@dataclass
class Position:
    """Where training stands: ``batch`` batches of epoch ``epoch`` (0-based) are done,
    in the sample ``order`` drawn for that epoch (None before it is drawn)."""

    epoch: int = 0
    batch: int = 0
    order: np.ndarray | None = None
    epoch_loss: float = 0.0  # loss summed over the samples of this epoch so far
    history: dict[str, list[float]] = field(default_factory=dict)

    def describe(self) -> str:
        return f"epoch {self.epoch + 1} after {self.batch} batch(es)"


def data_digest(xs: Sequence[np.ndarray], ys: Sequence[np.ndarray]) -> str:
    """A fingerprint of the training data, so a checkpoint is not resumed on other data."""
    h = hashlib.blake2b(digest_size=16)
    for a in [*xs, *ys]:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(memoryview(a).cast("B"))  # type: ignore[arg-type]
    return h.hexdigest()


def run_identity(net: Graph, optimizer: Optimizer, losses: OutputLosses, *,
                 batch_size: int, seed: int | None, shuffle: bool, digest: str
                 ) -> dict[str, Any]:
    """What must be equal for a checkpoint to continue this run (the epoch count may grow)."""
    return {"network": net.name, "nodes": net.to_spec().get("nodes"),
            "optimizer": optimizer.name,
            "optimizer_config": optimizer.get_config(), **losses.describe(),
            "batch_size": batch_size, "seed": seed, "shuffle": bool(shuffle), "data": digest}


def checkpoint_path(location: str | os.PathLike[str]) -> Path:
    """The checkpoint file of a directory (a path ending in .npz is taken as the file)."""
    path = Path(location)
    return path if path.suffix == ".npz" else path / CHECKPOINT_FILE


def save_checkpoint(location: str | os.PathLike[str], net: Graph, optimizer: Optimizer,
                    position: Position, rng: np.random.Generator,
                    identity: dict[str, Any]) -> Path:
    """Write a checkpoint atomically; the previous one stays until the rename."""
    path = checkpoint_path(location)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CheckpointError(f"checkpoint directory {str(path.parent)!r}: cannot create it "
                              f"({exc.strerror or exc})") from None
    opt_state = optimizer.state_dict()
    meta = model_meta(net)
    meta["checkpoint"] = {
        "version": CHECKPOINT_VERSION, "epoch": position.epoch, "batch": position.batch,
        "epoch_loss": position.epoch_loss, "history": position.history,
        "rng": rng.bit_generator.state, "run": identity,
        "optimizer_state": sorted(opt_state), "has_order": position.order is not None,
        "layer_generators": layer_generator_states(net),
    }
    arrays = model_arrays(net)
    arrays.update({OPT_PREFIX + k: np.asarray(v) for k, v in opt_state.items()})
    if position.order is not None:
        arrays[ORDER] = np.asarray(position.order, dtype=np.int64)
    write_npz(path, meta, arrays)
    return path


def layer_generator_states(net: Graph) -> dict[str, dict[str, Any]]:
    """Node name -> {attribute: generator state} for every layer that declares
    ``random_generators`` (dropout's mask generator), so a resumed run draws the same
    random numbers as the run that stopped."""
    return {str(layer.label): {attribute: dict(getattr(layer, attribute).bit_generator.state)
                               for attribute in layer.random_generators}
            for layer in net.layers if layer.random_generators}


def restore_layer_generators(net: Graph, states: Any, where: str) -> None:
    """Put back what ``layer_generator_states`` saved; every such generator must be there."""
    if not isinstance(states, dict):
        states = {}
    for layer in net.layers:
        saved = states.get(str(layer.label))
        for attribute in layer.random_generators:
            state = saved.get(attribute) if isinstance(saved, dict) else None
            if state is None:
                raise CheckpointError(f"{where}: lacks the random generator state of node "
                                      f"{layer.label!r} ({layer.name}); a resumed run would "
                                      f"draw other random numbers than the one that stopped")
            try:
                getattr(layer, attribute).bit_generator.state = state
            except (TypeError, ValueError, KeyError, OverflowError) as exc:
                raise CheckpointError(f"{where}: bad random generator state for node "
                                      f"{layer.label!r} ({layer.name}): {exc}") from None


@dataclass
class Checkpoint:
    """A checkpoint read and checked against a network: apply it with ``restore``."""

    path: Path
    position: Position
    rng_state: dict[str, Any]
    identity: dict[str, Any]
    params: dict[str, np.ndarray]
    optimizer_state: dict[str, np.ndarray]
    layer_generators: dict[str, Any] = field(default_factory=dict)

    def restore(self, net: Graph, optimizer: Optimizer, rng: np.random.Generator) -> None:
        """Put generator states, weights and optimizer state back (in place); the
        generators first, since they are the part that may be refused."""
        where = f"checkpoint {str(self.path)!r}"
        try:
            rng.bit_generator.state = self.rng_state
        except (TypeError, ValueError, KeyError, OverflowError) as exc:
            raise CheckpointError(f"{where}: bad generator state ({exc})") from None
        restore_layer_generators(net, self.layer_generators, where)
        for key, layer, pname in net.plan.param_index:
            layer.params[pname] = self.params[key]
        optimizer.load_state_dict(self.optimizer_state)


def load_checkpoint(location: str | os.PathLike[str], net: Graph) -> Checkpoint:
    """Read a checkpoint for ``net``: every array is checked against the network (names,
    shapes, dtypes) before anything is changed, and nothing is unpickled."""
    path = checkpoint_path(location)
    where = f"checkpoint {str(path)!r}"
    if not path.is_file():
        raise CheckpointError(f"{where}: no such file")
    try:
        return guarded(where, lambda: _read(path, where, net))
    except CheckpointError:
        raise
    except ModelFileError as exc:
        raise CheckpointError(str(exc)) from None


def _read(path: Path, where: str, net: Graph) -> Checkpoint:
    with NpzReader(path, kind="checkpoint") as reader:
        meta = reader.read_json()
        info = meta.get("checkpoint")
        if not isinstance(info, dict) or info.get("version") != CHECKPOINT_VERSION:
            raise CheckpointError(f"{where}: not a deltaprop checkpoint of version "
                                  f"{CHECKPOINT_VERSION}")
        epoch, batch = info.get("epoch"), info.get("batch")
        if not (_count(epoch) and _count(batch)):
            raise CheckpointError(f"{where}: bad position (epoch {epoch!r}, batch {batch!r})")
        history = info.get("history")
        if not isinstance(history, dict) or not all(
            isinstance(v, list) and all(isinstance(f, (int, float)) for f in v)
            for v in history.values()
        ):
            raise CheckpointError(f"{where}: bad training history")
        epoch_loss = info.get("epoch_loss")
        if isinstance(epoch_loss, bool) or not isinstance(epoch_loss, (int, float)):
            raise CheckpointError(f"{where}: bad running loss {epoch_loss!r}")
        rng_state, identity = info.get("rng"), info.get("run")
        if not isinstance(rng_state, dict) or not isinstance(identity, dict):
            raise CheckpointError(f"{where}: lacks the generator state or the run identity")
        keys = meta.get("params")
        expected = net.params
        if not isinstance(keys, list) or set(keys) != set(expected):
            raise CheckpointError(f"{where}: its parameters do not match network "
                                  f"{net.name!r} (was the spec changed?)")
        for key, value in expected.items():
            shape, dtype = reader.header(PARAM_PREFIX + key)
            if shape != value.shape or dtype != value.dtype:
                raise CheckpointError(f"{where}: its parameters do not match network "
                                      f"{net.name!r}: {key!r} is {dtype}{list(shape)} there, "
                                      f"{value.dtype}{list(value.shape)} here (was the spec "
                                      f"changed?)")
        params = {k: reader.read(PARAM_PREFIX + k, shape=v.shape, dtype=v.dtype)
                  for k, v in expected.items()}
        for key, value in params.items():
            if not np.isfinite(value).all():
                raise CheckpointError(f"{where}: parameter {key!r} holds NaN or infinite "
                                      f"values; it is not a state to resume from")
        names = info.get("optimizer_state")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise CheckpointError(f"{where}: bad optimizer state list")
        opt_state: dict[str, np.ndarray] = {}
        for name in names:
            if name == "t":
                t = reader.read(OPT_PREFIX + name, shape=(), dtype=np.int64)
                if int(t) < 0:
                    raise CheckpointError(f"{where}: negative optimizer step count")
                opt_state[name] = t
                continue
            key, sep, _ = name.rpartition("::")
            if not sep or key not in expected:
                raise CheckpointError(f"{where}: optimizer state {name!r} names no parameter")
            opt_state[name] = reader.read(OPT_PREFIX + name, shape=expected[key].shape,
                                          dtype=expected[key].dtype)
            if not np.isfinite(opt_state[name]).all():
                raise CheckpointError(f"{where}: optimizer state {name!r} holds NaN or "
                                      f"infinite values")
        if "t" not in opt_state:
            raise CheckpointError(f"{where}: lacks the optimizer's step count (its optimizer "
                                  f"state was removed?)")
        order = None
        if info.get("has_order"):
            shape, dtype = reader.header(ORDER)
            if len(shape) != 1 or dtype.kind not in "iu":
                raise CheckpointError(f"{where}: bad sample order")
            order = reader.read(ORDER).astype(np.int64)
    assert isinstance(epoch, int) and isinstance(batch, int)  # checked by _count above
    position = Position(epoch, batch, order, float(epoch_loss),
                        {k: [float(f) for f in v] for k, v in history.items()})
    return Checkpoint(path, position, rng_state, identity, params, opt_state,
                      info.get("layer_generators") or {})


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def check_resumable(ckpt: Checkpoint, identity: dict[str, Any], n_samples: int,
                    steps_per_epoch: int, epochs: int | None = None,
                    optimizer: Optimizer | None = None) -> None:
    """Refuse a checkpoint of another run (other data, layers, batch size, seed or
    optimizer), one that has done more epochs than asked, or one whose optimizer state
    lacks what the optimizer keeps."""
    where = f"checkpoint {str(ckpt.path)!r}"
    for key, value in identity.items():
        saved = ckpt.identity.get(key)
        if saved != value:
            what = ("the training data differ" if key == "data" else
                    _nodes_differ(saved, value) if key == "nodes" else
                    f"{key} was {saved!r}, now {value!r}")
            raise CheckpointError(f"{where} belongs to another run: {what}; resume with the "
                                  f"same settings or use a new checkpoint directory")
    pos = ckpt.position
    if pos.batch > steps_per_epoch or (pos.batch and pos.order is None):
        raise CheckpointError(f"{where}: batch position {pos.batch} does not fit "
                              f"{steps_per_epoch} batches per epoch")
    if pos.order is not None and (len(pos.order) != n_samples or not np.array_equal(
            np.sort(pos.order), np.arange(n_samples))):
        raise CheckpointError(f"{where}: the saved sample order is not a permutation of "
                              f"{n_samples} samples")
    if not math.isfinite(pos.epoch_loss):
        raise CheckpointError(f"{where}: the running loss is not finite")
    if epochs is not None and (pos.epoch > epochs or (pos.epoch == epochs and pos.batch)):
        raise CheckpointError(f"{where} has done {pos.describe()}, more than the {epochs} "
                              f"epoch(s) asked for; ask for at least {pos.epoch + bool(pos.batch)}"
                              f" epochs to continue it")
    done = pos.epoch * steps_per_epoch + pos.batch
    if optimizer is not None and done:
        steps = int(ckpt.optimizer_state.get("t", 0))
        if steps < done:
            raise CheckpointError(f"{where}: the optimizer made {steps} step(s) but "
                                  f"{done} batches are done; its state was reset or removed")
        missing = sorted(set(optimizer_slots(optimizer, ckpt.params))
                         - set(ckpt.optimizer_state))
        if missing:
            raise CheckpointError(f"{where}: lacks optimizer state {missing[0]!r}"
                                  f"{f' and {len(missing) - 1} more' if len(missing) > 1 else ''}"
                                  f" that {optimizer.name} keeps; resuming would restart it "
                                  f"from zero")


def optimizer_slots(optimizer: Optimizer, params: dict[str, np.ndarray]) -> list[str]:
    """The state entries ``optimizer`` keeps for ``params`` after a step, found by one
    step of a fresh copy on zero gradients (so any optimizer answers, by its own rules)."""
    try:
        probe = type(optimizer)(**optimizer.get_config())
        probe.step({k: v.copy() for k, v in params.items()},
                   {k: np.zeros_like(v) for k, v in params.items()})
        return list(probe.state_dict())
    except Exception:  # an optimizer that cannot be probed is not checked
        return []


def _nodes_differ(saved: Any, now: Any) -> str:
    """Which node's layer or config changed, for the refusal's message."""
    if not isinstance(saved, list) or not isinstance(now, list):
        return "it holds no description of its layers"
    if len(saved) != len(now):
        return f"the network had {len(saved)} nodes, now {len(now)}"
    for old, node in zip(saved, now):
        if old != node and isinstance(old, dict) and isinstance(node, dict):
            keys = sorted(k for k in set(old) | set(node) if old.get(k) != node.get(k))
            changes = ", ".join(f"{k}: {old.get(k)!r} -> {node.get(k)!r}" for k in keys)
            return f"node {old.get('name')!r} changed ({changes})"
    return "its layers differ"


class StopFlag:
    """Set by SIGINT/SIGTERM; the training loop saves a checkpoint at the next batch
    boundary and stops. A second signal stops at once (the last checkpoint stays)."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __bool__(self) -> bool:
        return self.signum is not None

    def handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            raise TrainingInterrupted(f"interrupted twice by {signal.Signals(signum).name}; "
                                      f"stopped without saving", signum)
        self.signum = signum


@contextlib.contextmanager
def stop_on_signals(enabled: bool = True) -> Iterator[StopFlag]:
    """Within the block SIGINT and SIGTERM set the yielded flag instead of killing the
    process (main thread only; elsewhere the flag never sets). A signal the process
    ignores stays ignored: whoever started it (``nohup``, a shell's background job)
    asked for that."""
    flag = StopFlag()
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = {sig: signal.signal(sig, flag.handle) for sig in (signal.SIGINT, signal.SIGTERM)
                if signal.getsignal(sig) is not signal.SIG_IGN}
    try:
        yield flag
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class Checkpointer:
    """Saves the training state of one ``fit`` run every epoch, every ``every`` batches,
    and when a signal asks training to stop."""

    def __init__(self, location: str | os.PathLike[str], net: Graph, optimizer: Optimizer,
                 identity: dict[str, Any], every: int | None = None) -> None:
        if every is not None and (isinstance(every, bool) or not isinstance(every, int)
                                  or every <= 0):
            raise TrainingError(f"checkpoint_every must be a positive integer, got {every!r}")
        self.path = checkpoint_path(location)
        self.net, self.optimizer, self.identity, self.every = net, optimizer, identity, every
        self.saved: Position | None = None
        self.first_save = True  # until a save, or a resume from an existing checkpoint
        self.lock = PidLock(self.path.parent / f"{self.path.name}.lock",
                            f"checkpoint {str(self.path)!r}")

    def acquire(self) -> None:
        """Take the directory's lock (creating the directory): a second run on the same
        checkpoint is refused with the first one's pid instead of racing it."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.lock.acquire()
        except FileError as exc:
            raise CheckpointError(str(exc)) from None
        except OSError as exc:
            raise CheckpointError(f"checkpoint directory {str(self.path.parent)!r}: cannot "
                                  f"create it ({exc.strerror or exc})") from None

    def release(self) -> None:
        self.lock.release()

    def remove_stale_temporaries(self) -> list[Path]:
        """Delete the half-written files of writers killed mid-save (never the checkpoint);
        only while holding the lock, so no live writer's file is taken away."""
        removed: list[Path] = []
        if not self.lock.held:
            return removed
        for tmp in self.path.parent.glob(f".{self.path.name}.*.tmp"):
            with contextlib.suppress(OSError):
                tmp.unlink()
                removed.append(tmp)
        return removed

    def resume(self, rng: np.random.Generator, n_samples: int, steps_per_epoch: int,
               epochs: int | None = None) -> Position | None:
        """Restore the run from the checkpoint, or None when there is none yet."""
        self.remove_stale_temporaries()
        if not self.path.is_file():
            return None
        ckpt = load_checkpoint(self.path, self.net)
        check_resumable(ckpt, self.identity, n_samples, steps_per_epoch, epochs,
                        self.optimizer)
        ckpt.restore(self.net, self.optimizer, rng)
        self.saved = ckpt.position
        self.first_save = False
        return ckpt.position

    def save(self, position: Position, rng: np.random.Generator) -> None:
        if self.first_save:  # never overwrite the checkpoint of a run not resumed
            if self.path.exists():
                raise CheckpointError(f"checkpoint {str(self.path)!r} already exists; "
                                      f"continue it with resume (--resume) or use another "
                                      f"directory")
            self.remove_stale_temporaries()
            self.first_save = False
        try:
            save_checkpoint(self.path, self.net, self.optimizer, position, rng, self.identity)
        except DeltapropError as exc:
            raise CheckpointError(f"saving the checkpoint failed: {exc}") from None
        self.saved = position

    def after_batch(self, position: Position, rng: np.random.Generator) -> None:
        if self.every and position.batch % self.every == 0:
            self.save(position, rng)

    def interrupted(self, flag: StopFlag, position: Position, rng: np.random.Generator
                    ) -> TrainingInterrupted:
        """Save now and describe the stop, for the caller to raise."""
        self.save(position, rng)
        assert flag.signum is not None
        name = signal.Signals(flag.signum).name
        return TrainingInterrupted(f"interrupted by {name} at {position.describe()}; "
                                   f"checkpoint saved in {str(self.path)!r} (continue with "
                                   f"--resume)", flag.signum)

    def last_good(self) -> str:
        if self.saved is None:
            return ""
        return (f"; the last good checkpoint ({self.saved.describe()}) is "
                f"{str(self.path)!r}")
