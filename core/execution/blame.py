"""Naming a layer that fails at run time: the node, the layer and the plugin that
provided it, in one line, whatever the layer raised or returned.

An exception from a layer's own code (a TypeError, a NotImplementedError of a missing
method) keeps its class, object and traceback; it gets the node as context and the
layer's provenance recorded on it, which the command line prints in one line. A step's
backward result is checked here the first time it runs at a batch size, since a wrong
shape would otherwise surface far from its cause (in an optimizer, or as silent
broadcasting); a layer whose gradient shapes change from call to call at the same
shapes is the conformance kit's to catch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import DeltapropError, LayerError, add_context, blame
from ..layer import Layer
from ..registry import get_registry


def provenance(layer: Layer) -> str:
    """``layer 'x' of plugin 'p' (dist 1.0)``, or of the module a class not registered
    comes from."""
    try:
        if get_registry().get("layer", layer.name) is type(layer):
            return f"layer {layer.name!r} of {get_registry().provider('layer', layer.name)}"
    except DeltapropError:
        pass
    return f"layer {layer.name!r} (class {type(layer).__qualname__} of module " \
           f"{type(layer).__module__})"


def layer_failure(node: str, layer: Layer, phase: str, exc: Exception) -> None:
    """Give ``exc`` from ``layer.<phase>`` at ``node`` the node as context and record the
    layer's provenance on it; the exception itself (class, object, frames) is kept for
    whoever catches it, and the command line prints it in one line."""
    add_context(exc, f"node {node!r} ({layer.name})")
    blame(exc, f"the {phase} of node {node!r}, {provenance(layer)}")


def check_gradients(node: str, layer: Layer, grad_ins: Any, grad_params: Any,
                    in_shapes: Sequence[tuple[int, ...]], batch: int,
                    params: dict[str, np.ndarray]) -> None:
    """Refuse a backward result that is not (input gradients, {param: gradient}) with
    the shapes of the inputs and the parameters. Runs on every backward step, so the
    layer's provenance (a registry lookup) is worked out only for a result refused."""
    problem = gradient_problem(grad_ins, grad_params, in_shapes, batch, params)
    if problem is not None:
        raise LayerError(f"node {node!r}: {provenance(layer)}: backward {problem}")


def gradient_problem(grad_ins: Any, grad_params: Any, in_shapes: Sequence[tuple[int, ...]],
                     batch: int, params: dict[str, np.ndarray]) -> str | None:
    """What is wrong with a backward result, or None."""
    if not isinstance(grad_ins, (tuple, list)) or not isinstance(grad_params, dict):
        return (f"must return (input gradients, {{param: gradient}}), got "
                f"{type(grad_ins).__name__} and {type(grad_params).__name__}")
    for i, (g, shape) in enumerate(zip(grad_ins, in_shapes)):
        if g is not None and _shape(g) != (batch, *shape):
            return (f"returned a gradient of shape {np.shape(g)} for input {i}, whose "
                    f"shape is {(batch, *shape)}")
    for pname, g in grad_params.items():
        if pname not in params:
            return (f"returned a gradient for {pname!r}, which is not one of its "
                    f"parameters ({', '.join(params) or 'none'})")
        if g is None or _shape(g) != params[pname].shape:
            got = "None" if g is None else f"shape {np.shape(g)}"
            return (f"returned {got} as the gradient of {pname!r}, whose shape is "
                    f"{params[pname].shape}")
    return None


def _shape(value: Any) -> tuple[int, ...]:
    return value.shape if isinstance(value, np.ndarray) else np.shape(value)
