"""Networks built around each registered layer from its ``examples``, shared by the
registry-wide pass, memory and float32 tests (so a new plugin layer is covered)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import deltaprop
from deltaprop.layer import derivative_from_output

registry = deltaprop.get_registry()


def layer_examples() -> list[Any]:
    cases = []
    for name in registry.names("layer"):
        cls = registry.get("layer", name)
        for i, example in enumerate(cls.examples):
            cases.append(pytest.param(cls, example, id=f"{name}-{i}"))
    return cases


def fusable_activations() -> list[str]:
    """Registered element-wise layers whose derivative is written from their output."""
    names = []
    for name in registry.names("layer"):
        cls = registry.get("layer", name)
        if cls.elementwise and cls.n_inputs == 1 and callable(
                getattr(cls, "backward_from_output", None)):
            try:
                if derivative_from_output(cls()):
                    names.append(name)
            except TypeError:  # needs configuration: not a plain activation
                continue
    return names


def build_around(cls: type, example: dict[str, Any], *, dtype: str, activation: str | None,
                 seed: int = 0, **options: Any) -> tuple[deltaprop.Network, list[np.ndarray]]:
    """Inputs -> the layer of ``example`` -> ``activation`` on each float output, and
    matching sample inputs (from the layer's own ``sample_inputs``)."""
    rng = np.random.default_rng(seed)
    shapes = [tuple(s) for s in example["input_shapes"]]
    xs = cls.sample_inputs(rng, shapes, 3, dtype)
    with deltaprop.tensor.seeded(seed):
        inputs = [deltaprop.Input(s, name=f"x{i}", dtype=x.dtype.name)
                  for i, (s, x) in enumerate(zip(shapes, xs))]
        layer = deltaprop.create(cls.name, dtype=dtype, **example["config"])
        out = layer(*inputs)
        outs = list(out) if isinstance(out, tuple) else [out]
        if activation is not None:
            outs = [deltaprop.create(activation, dtype=dtype)(o)
                    if np.issubdtype(np.dtype(o.dtype), np.floating) else o for o in outs]
    return deltaprop.Network(inputs, outs, **options), xs
