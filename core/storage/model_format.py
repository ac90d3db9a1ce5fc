"""What a model file holds: the network's spec as JSON, its weights, and who provided
each layer (so a missing plugin can be named on load). Checkpoints extend it."""

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
    return {"format": FORMAT, "version": FORMAT_VERSION, "spec": net.to_spec(),
            "providers": providers, "params": list(net.params)}
