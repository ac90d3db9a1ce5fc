"""The optimizer protocol: update parameters in place from their gradients, keeping
per-parameter state that can be saved and restored (for checkpoints)."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from .config import Configurable
from .errors import ConfigError


class Optimizer(Configurable):
    """Base class of every optimizer.

    ``step(params, grads)`` updates the arrays of ``params`` in place (so the network
    sees the change without re-binding). State lives in ``self.state``: a dict from
    parameter key to a dict of named arrays, plus the step counter ``self.t``.
    """

    kind: ClassVar[str] = "optimizer"
    name: ClassVar[str] = ""

    def __init__(self, *, lr: float = 0.01) -> None:
        self.lr = lr
        self.t = 0
        self.state: dict[str, dict[str, np.ndarray]] = {}

    def step(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray]) -> None:
        self.t += 1
        for key, grad in grads.items():
            self.update(key, params[key], grad)

    def update(self, key: str, param: np.ndarray, grad: np.ndarray) -> None:
        """Update one parameter in place."""
        raise NotImplementedError

    def slot(self, key: str, slot: str, like: np.ndarray) -> np.ndarray:
        """A zero-initialised state array for parameter ``key`` (momentum, moments...)."""
        slots = self.state.setdefault(key, {})
        if slot not in slots:
            slots[slot] = np.zeros_like(like)
        return slots[slot]

    def state_dict(self) -> dict[str, np.ndarray]:
        """Flat ``{"<param key>::<slot>": array}`` plus ``"t"``, for saving."""
        flat = {f"{key}::{slot}": value for key, slots in self.state.items()
                for slot, value in slots.items()}
        flat["t"] = np.asarray(self.t, dtype=np.int64)
        return flat

    def load_state_dict(self, flat: dict[str, np.ndarray]) -> None:
        state: dict[str, dict[str, np.ndarray]] = {}
        for name, value in flat.items():
            if name == "t":
                continue
            key, sep, slot = name.rpartition("::")
            if not sep:
                raise ConfigError(f"optimizer {self.name!r}: bad state entry {name!r}")
            state.setdefault(key, {})[slot] = np.array(value)
        self.t = int(flat.get("t", 0))
        self.state = state

    def __repr__(self) -> str:
        return f"<optimizer {self.name!r} {self.get_config()}>"
