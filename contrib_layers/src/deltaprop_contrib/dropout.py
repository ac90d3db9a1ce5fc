"""Dropout: in training, zero each element with probability ``rate`` and scale the
survivors by 1 / (1 - rate); at inference, the identity.

Seeding without per-call state: the layer owns a random generator made from ``seed``
when it is constructed. Each train-mode forward draws a fresh mask from it and puts
the mask in the cache, so backward needs nothing from the layer, two calls in flight
(a shared layer, or two forwards before their backwards) each keep their own mask,
and a run with the same seed draws the same sequence of masks. The generator is the
only thing a forward changes on the layer; it is part of the layer's state the way
batch-norm running statistics are, and the conformance kit replays train mode from a
copy of the layer taken before the call, so finite differences see one fixed mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from deltaprop import Layer, hookimpl
from deltaprop.config import non_negative_int, number
from deltaprop.errors import ConfigError


class Dropout(Layer):
    """Inverted dropout (PyTorch's ``nn.Dropout``), seeded.

    Config:
        rate: probability that an element is zeroed in training, in [0, 1) (0: the
            identity).
        seed: seed of the layer's mask generator, a non-negative int; the same seed
            draws the same masks (None: a fresh, unseeded generator).
    """

    name = "dropout"
    recomputable = False  # a training forward draws a fresh mask from the generator
    random_generators = ("_rng",)
    examples = [{"config": {"rate": 0.5, "seed": 1}, "input_shapes": [(6,)]},
                {"config": {"rate": 0.2, "seed": 2}, "input_shapes": [(3, 4)]},
                {"config": {"rate": 0.0}, "input_shapes": [(3,)]}]

    def __init__(self, *, rate: float = 0.5, seed: int | None = None, dtype: str = "float32",
                 label: str | None = None) -> None:
        super().__init__(dtype=dtype, label=label)
        self.rate = number("dropout", "rate", rate, low=0)
        if self.rate >= 1:
            raise ConfigError(f"dropout: rate must be < 1 (the fraction of elements "
                              f"dropped), got {rate!r}")
        self.seed = None if seed is None else non_negative_int("dropout", "seed", seed)
        self._rng = np.random.default_rng(self.seed)

    def forward(self, inputs: tuple[np.ndarray, ...], *, train: bool) -> tuple[Any, Any]:
        (x,) = inputs
        if not train or self.rate == 0:
            return (x,), None  # the identity: nothing to cache
        keep = self._rng.random(x.shape, dtype=np.float64) >= self.rate
        mask = keep.astype(x.dtype) * x.dtype.type(1 / (1 - self.rate))
        return (x * mask,), mask

    def backward(self, cache: Any, grad_outputs: tuple[np.ndarray, ...], *,
                 needs_grad: Sequence[bool] | None = None
                 ) -> tuple[tuple[Any, ...], dict[str, np.ndarray]]:
        (g,) = grad_outputs
        return (g if cache is None else g * cache,), {}


@hookimpl
def deltaprop_register_layers() -> list[type[Layer]]:
    return [Dropout]
