"""``Network``: a graph you can train, and ``Sequential``, a chain of layers as one.

The graph (``deltaprop.graph``) holds the nodes, the parameters and the compiled plan;
this class adds the training front: ``fit``, ``train_step``, ``evaluate`` and
``predict``, which run the one training step and loop of ``deltaprop.training``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from . import defaults
from .errors import GraphError
from .execution.hooks import Hook
from .execution.state import CarriedState
from .graph.graph import Graph
from .graph.trace import TraceRecorder
from .layer import Layer
from .optimizer import Optimizer
from .tensor import Input, Tensor, seeded
from .training import loop
from .training.bptt import SequenceWindows
from .training.distributed import as_distributed
from .training.losses import LossSpec, resolve_optimizer
from .visual.graph_svg import network_svg
from .visual.trace_page import Trace

Weights = Sequence[float] | Mapping[str, float] | None


class Network(Graph):
    """A directed acyclic graph of layers from ``inputs`` to ``outputs`` that trains.

    See ``deltaprop.graph.Graph`` for ``forward``, ``backward``, ``plan``, hooks and
    the graph-pass options (``fuse``, ``recompute``, ``plan_memory``).
    """

    def train_step(self, x: Any, y: Any, *, loss: LossSpec, optimizer: str | Optimizer,
                   loss_weights: Weights = None) -> float:
        """One forward, backward and optimizer step on a batch; returns the loss (for
        several outputs, the weighted total; see ``fit`` for ``loss`` and ``y``)."""
        return loop.train_step(self, x, y, loss=loss, optimizer=optimizer,
                               loss_weights=loss_weights)

    def fit(self, x: Any, y: Any, *, loss: LossSpec = defaults.LOSS,
            optimizer: str | Optimizer = defaults.OPTIMIZER, lr: float | None = None,
            epochs: int = defaults.EPOCHS, batch_size: int = defaults.BATCH_SIZE,
            validation: tuple[Any, Any] | None = None, seed: int | None = defaults.SEED,
            shuffle: bool = True, progress: bool | None = None,
            on_epoch_end: Callable[[int, loop.History], None] | None = None,
            checkpoint: str | os.PathLike[str] | None = None, resume: bool = False,
            checkpoint_every: int | None = None, detect_anomaly: bool = False,
            distributed: Any = None, bptt: int | None = None, loss_weights: Weights = None,
            hooks: Sequence[Hook] = (), **optimizer_settings: Any) -> loop.History:
        """Train on ``(x, y)`` with mini-batches; runs with the same ``seed`` are identical
        (the defaults are those of ``deltaprop train``: see ``deltaprop.defaults``).

        ``x`` is an array, or a list with one array per input. With one output ``y`` is
        an array and ``loss`` one loss; with several, ``y`` is a list (one array per
        output) or a dict keyed by output name (``output_names``), and ``loss`` one
        loss for all, a list, or a dict keyed by output name (an output left out is
        not trained), weighted by ``loss_weights`` (a list or dict, default 1 each).
        An output of shape (N, T, C) trains with class labels of shape (N, T) or
        one-hot targets of its own shape. An optimizer given by name is created once
        per network and keeps its state; ``lr`` and any other keyword
        (``momentum=0.9``...) configure it (without ``lr``, the optimizer's own).

        A tqdm bar shows progress (off when not a terminal or with ``progress=False``);
        ``hooks`` watch every node and step of this run (see ``deltaprop.Hook``).
        With ``checkpoint`` (a directory) the training state is saved atomically at the
        start, after every epoch, every ``checkpoint_every`` batches, and when SIGINT
        or SIGTERM arrives (then ``TrainingInterrupted`` is raised); ``resume``
        continues from it, ending with the same weights as an uninterrupted run.
        ``detect_anomaly`` names the first node whose output or gradient became
        non-finite, before the optimizer applies it. ``distributed`` (True or a
        ``deltaprop.distributed.Distributed``, under mpiexec) trains data-parallel over
        MPI, ``batch_size`` then being per rank. ``bptt=k`` trains long sequences in
        windows of k steps, the recurrent state carried between them (the network
        takes k steps). Every combination of these runs the same step.
        """
        if lr is not None:
            optimizer_settings["lr"] = lr
        if optimizer_settings:
            optimizer = resolve_optimizer(self, optimizer, optimizer_settings)
        return loop.fit(self, x, y, loss=loss, optimizer=optimizer, epochs=epochs,
                        batch_size=batch_size, validation=validation, seed=seed,
                        shuffle=shuffle, progress=progress, on_epoch_end=on_epoch_end,
                        checkpoint=checkpoint, resume=resume,
                        checkpoint_every=checkpoint_every, detect_anomaly=detect_anomaly,
                        distributed=distributed, bptt=bptt, loss_weights=loss_weights,
                        hooks=hooks)

    @contextlib.contextmanager
    def trace(self) -> Iterator[Trace]:
        """Within the block, record the training step run on this network (the last
        one, when several run): ``t.table()``, ``t.to_dict()``, ``t.save("trace.html")``."""
        recorder = TraceRecorder(self)
        with self.hooked(recorder):
            yield Trace(recorder)

    def to_svg(self, *, fused: bool = False) -> str:
        """The network as a standalone SVG picture (``fused``: as the plan runs it)."""
        return network_svg(self, fused=fused)

    def _repr_svg_(self) -> str:  # Jupyter shows a network as its picture
        return self.to_svg()

    def predict(self, x: Any, *, batch_size: int = 256,
                state: CarriedState | None = None) -> Any:
        """Outputs for ``x`` in inference mode, batch by batch; a list for several
        outputs. ``state`` carries recurrent state from the last call (generation)."""
        return loop.predict(self, x, batch_size=batch_size, state=state)

    def evaluate(self, x: Any, y: Any, *, loss: LossSpec = defaults.LOSS,
                 batch_size: int = 256, loss_weights: Weights = None,
                 distributed: Any = None, bptt: int | None = None) -> dict[str, float]:
        """Mean loss over ``(x, y)`` and, for classifying outputs, the accuracy (over
        every step of a sequence output). With several outputs, ``"loss"`` is the
        weighted total and each output adds ``"<name>/loss"`` and
        ``"<name>/accuracy"``. ``distributed`` splits the data over MPI ranks and sums
        the figures; ``bptt=k`` reads long sequences in windows of k steps."""
        mpi = as_distributed(distributed)
        return loop.evaluate(self, x, y, loss=loss, batch_size=batch_size,
                             loss_weights=loss_weights,
                             reducer=mpi.reducer() if mpi is not None else None,
                             windows=SequenceWindows(bptt) if bptt is not None else None)


def Sequential(layers: Sequence[Layer], input_shape: int | Sequence[int], *,
               seed: int | None = None, name: str = "sequential",
               input_dtype: str | None = None, fuse: bool = True,
               recompute: bool | int = False, plan_memory: bool = True) -> Network:
    """A chain of single-input, single-output layers, over the same graph machinery."""
    if not layers:
        raise GraphError("Sequential needs at least one layer")
    dtype = input_dtype or layers[0].dtype
    with seeded(seed) if seed is not None else contextlib.nullcontext():
        x = Input(input_shape, name="input", dtype=dtype)
        y = x
        for layer in layers:
            if not isinstance(layer, Layer):
                raise GraphError(f"Sequential takes layers, got {type(layer).__name__}")
            y = layer(y)
            if not isinstance(y, Tensor):
                raise GraphError(f"Sequential: layer {layer.name!r} has several outputs; "
                                 f"use the functional API")
    return Network(x, y, name=name, fuse=fuse, recompute=recompute, plan_memory=plan_memory)
