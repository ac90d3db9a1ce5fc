"""Which loss trains which output, with what weight, against which targets.

``loss`` is one loss (a registry name or a ``Loss``) for a one-output network, or for
every output of several; a list with one entry per output; or a dict keyed by output
name (``net.output_names``). An output whose entry is None, or which a dict leaves
out, is not trained. ``loss_weights`` (a list or a dict, default 1 each) weighs each
output's loss in the total that backward differentiates. Targets follow the same
shape: one array for one output, else a list or a dict keyed by output name.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ConfigError, DataError
from ..graph.graph import Graph
from ..loss import Loss
from ..optimizer import Optimizer
from ..registry import create_loss, create_optimizer

LossSpec = str | Loss | Sequence[str | Loss | None] | Mapping[str, str | Loss]

#: components a network was trained with by name: an optimizer created once keeps its
#: state from one ``fit`` or ``train_step`` to the next
_named: weakref.WeakKeyDictionary[Graph, dict[Any, Any]] = weakref.WeakKeyDictionary()


def components(graph: Graph) -> dict[Any, Any]:
    """What training keeps for ``graph`` between calls (by name: losses, optimizers)."""
    found = _named.get(graph)
    if found is None:
        found = _named[graph] = {}
    return found


def resolve_loss(graph: Graph, loss: str | Loss) -> Loss:
    if isinstance(loss, Loss):
        return loss
    return _by_name(graph, "loss", loss, create_loss)


def resolve_optimizer(graph: Graph, optimizer: str | Optimizer,
                      settings: Mapping[str, Any] | None = None) -> Optimizer:
    """An optimizer given by name is created once per network (and per ``settings``,
    its config such as ``lr``), so its state persists from one call to the next."""
    if isinstance(optimizer, Optimizer):
        if settings:
            raise ConfigError(f"network {graph.name!r}: optimizer settings "
                              f"{', '.join(sorted(settings))} given with an optimizer "
                              f"object; set them when you create it, or name the optimizer "
                              f"(optimizer={optimizer.name!r})")
        return optimizer
    if not settings:
        return _by_name(graph, "optimizer", optimizer, create_optimizer)
    if not isinstance(optimizer, str):
        raise ConfigError(f"network {graph.name!r}: an optimizer is a registry name or a "
                          f"deltaprop.Optimizer, got {type(optimizer).__name__}")
    named = components(graph)
    key = ("optimizer", optimizer, tuple(sorted((k, repr(v)) for k, v in settings.items())))
    if key not in named:
        try:
            named[key] = create_optimizer(optimizer, **settings)
        except ConfigError as exc:
            raise ConfigError(f"fit: {exc} (a keyword fit does not take is the "
                              f"optimizer's)") from None
    return named[key]


def _by_name(graph: Graph, kind: str, name: Any, create: Callable[[str], Any]) -> Any:
    """The ``kind`` registered as ``name``, created once per network."""
    if not isinstance(name, str):
        raise ConfigError(f"network {graph.name!r}: a {kind} is a registry name or a "
                          f"deltaprop.{kind.capitalize()}, got {type(name).__name__}")
    named = components(graph)
    if (kind, name) not in named:
        named[kind, name] = create(name)
    return named[kind, name]


@dataclass(frozen=True)
class OutputLoss:
    """Output ``index`` (named ``name``) trains with ``loss``, weighted ``weight``."""

    index: int
    name: str
    loss: Loss
    weight: float


class OutputLosses:
    """The trained outputs of a network, each with its loss and weight."""

    def __init__(self, graph: Graph, loss: LossSpec,
                 loss_weights: Sequence[float] | Mapping[str, float] | None = None) -> None:
        self.graph = graph
        names = graph.output_names
        per_output = self._per_output(graph, names, loss, "loss", None)
        weights = self._per_output(graph, names, 1.0 if loss_weights is None else loss_weights,
                                   "loss_weights", 1.0)
        self.outputs: list[OutputLoss] = []
        for i, (name, entry, weight) in enumerate(zip(names, per_output, weights)):
            if entry is None:
                continue
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not (
                    np.isfinite(weight) and weight >= 0):
                raise ConfigError(f"loss_weights: output {name!r} has weight {weight!r}; "
                                  f"weights are finite numbers >= 0")
            self.outputs.append(OutputLoss(i, name, resolve_loss(graph, entry), float(weight)))
        if not self.outputs:
            raise ConfigError(f"network {graph.name!r}: no output has a loss to train with")
        #: one output: targets are one array, metrics are unprefixed
        self.single = len(graph.outputs) == 1
        self.output_shapes = [tuple(shape) for shape in graph.output_shapes]

    @staticmethod
    def _per_output(graph: Graph, names: list[str], value: Any, what: str,
                    left_out: Any) -> list[Any]:
        """One entry per output from one value, a list, or a dict by output name (an
        output a dict leaves out gets ``left_out``)."""
        n = len(names)
        if isinstance(value, Mapping):
            _known_outputs(graph, names, value, what, ConfigError)
            return [value.get(name, left_out) for name in names]
        if isinstance(value, (list, tuple)):
            if len(value) != n:
                raise ConfigError(f"{what}: network {graph.name!r} has {n} output(s) "
                                  f"({', '.join(map(repr, names))}), got {len(value)} entries")
            return list(value)
        return [value] * n

    def describe(self) -> dict[str, Any]:
        """What a checkpoint records of the losses, so a resume cannot change them."""
        if self.single:
            (out,) = self.outputs
            return {"loss": out.loss.name, "loss_config": out.loss.get_config()}
        return {"loss": {o.name: o.loss.name for o in self.outputs},
                "loss_config": {o.name: o.loss.get_config() for o in self.outputs},
                "loss_weights": {o.name: o.weight for o in self.outputs}}

    # -- targets -----------------------------------------------------------------------------
    def split_targets(self, y: Any) -> list[Any]:
        """One target per trained output, from an array, a list or a dict."""
        if self.single:
            return [y]
        names = self.graph.output_names
        if isinstance(y, Mapping):
            _known_outputs(self.graph, names, y, "targets", DataError)
            missing = [o.name for o in self.outputs if o.name not in y]
            if missing:
                raise DataError(f"targets: no targets for output(s) "
                                f"{', '.join(map(repr, missing))}")
            return [y[o.name] for o in self.outputs]
        if isinstance(y, (list, tuple)) and len(y) == len(names):
            return [y[o.index] for o in self.outputs]
        raise DataError(f"targets: network {self.graph.name!r} has {len(names)} outputs "
                        f"({', '.join(map(repr, names))}): give a list with one target array "
                        f"per output, or a dict keyed by output name")

    def check_targets(self, y: Any, n_samples: int, what: str,
                      output_shapes: Sequence[tuple[int, ...]] | None = None
                      ) -> list[np.ndarray]:
        """Every trained output's targets, checked against its prediction shape (or the
        ``output_shapes`` given, for windows of a longer sequence) and converted."""
        shapes = output_shapes or self.output_shapes
        checked = []
        for out, target in zip(self.outputs, [y] if self.single else self.split_targets(y)):
            target = np.asarray(target)
            try:
                if target.ndim == 0 or len(target) != n_samples:
                    raise DataError(f"x has {n_samples} samples but y has "
                                    f"{len(target) if target.ndim else 'a scalar'}")
                checked.append(out.loss.check_target(shapes[out.index], target))
            except DataError as exc:
                label = what if self.single else f"{what}: output {out.name!r}"
                raise DataError(f"{label}: {exc}") from None
        return checked


def _known_outputs(graph: Graph, names: list[str], given: Mapping[str, Any], what: str,
                   error: type[Exception]) -> None:
    """Raise ``error`` when a dict keyed by output name names no output of ``graph``."""
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise error(f"{what}: {', '.join(map(repr, unknown))} name(s) no output of network "
                    f"{graph.name!r}; its outputs are {', '.join(map(repr, names))}")
