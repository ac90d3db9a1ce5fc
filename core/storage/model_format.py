"""What a model file holds: the network's spec as JSON, its weights, who provided each
layer (so a missing plugin can be named on load) and, when known, the name and sample
shape of the data it was trained on. Checkpoints extend it."""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np

from ..errors import DeltapropError
from ..graph.graph import Graph
from ..registry import get_registry

FORMAT = "deltaprop-model"
FORMAT_VERSION = 1
PARAM_PREFIX = "param:"


def model_arrays(net: Graph) -> dict[str, np.ndarray]:
    """The weights of ``net`` under their member names in a model file."""
    return {PARAM_PREFIX + k: v for k, v in net.params.items()}


def model_meta(net: Graph) -> dict[str, Any]:
    """The metadata of a model file: spec, parameter list, and who provided each layer
    (so a missing plugin can be named on load). Checkpoints extend it."""
    registry = get_registry()
    providers = {}
    for layer in net.layers:
        with contextlib.suppress(DeltapropError):
            p = registry.provider("layer", layer.name)
            providers[layer.name] = {"plugin": p.plugin, "distribution": p.distribution,
                                     "version": p.version}
    meta = {"format": FORMAT, "version": FORMAT_VERSION, "spec": net.to_spec(),
            "providers": providers, "params": list(net.params)}
    if net.trained_on:  # optional: files without it (older ones) load the same
        meta["trained_on"] = dict(net.trained_on)
    return meta


def trained_on(meta: dict[str, Any]) -> dict[str, Any]:
    """What a model file says its network was trained on ({} when it does not say):
    ``name`` and ``source`` strings, ``sample_shape`` a list of positive integers."""
    value = meta.get("trained_on")
    if not isinstance(value, dict):
        return {}
    found: dict[str, Any] = {k: value[k] for k in ("name", "source")
                             if isinstance(value.get(k), str)}
    shape = value.get("sample_shape")
    if isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool)
                                       and d > 0 for d in shape):
        found["sample_shape"] = shape
    return found
