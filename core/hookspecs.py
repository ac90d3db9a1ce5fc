"""The hooks a deltaprop plugin may implement.

A plugin is a module (or object) listed in the ``deltaprop`` entry-point group of its
distribution. Each hook is called once, on first use of the registry, and returns
what the plugin provides; the registry records the plugin as the provider of every
name it returns.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import pluggy

if TYPE_CHECKING:
    from .export.onnx_graph import Converter
    from .layer import Layer
    from .loss import Loss
    from .optimizer import Optimizer

PROJECT = "deltaprop"
hookspec = pluggy.HookspecMarker(PROJECT)
#: The marker plugins put on their hook functions.
hookimpl = pluggy.HookimplMarker(PROJECT)

#: ``initializer(shape, *, fan_in, fan_out, rng) -> array``
Initializer = Callable[..., np.ndarray]


@hookspec
def deltaprop_register_layers() -> list[type[Layer]]:
    """Return the Layer subclasses this plugin provides; each is registered under its
    class attribute ``name``."""
    raise NotImplementedError


@hookspec
def deltaprop_register_losses() -> list[type[Loss]]:
    """Return the Loss subclasses this plugin provides, registered under ``name``."""
    raise NotImplementedError


@hookspec
def deltaprop_register_optimizers() -> list[type[Optimizer]]:
    """Return the Optimizer subclasses this plugin provides, registered under ``name``."""
    raise NotImplementedError


@hookspec
def deltaprop_register_initializers() -> dict[str, Initializer]:
    """Return ``{name: initializer}``; an initializer is called as
    ``init(shape, fan_in=..., fan_out=..., rng=...)`` and returns an array of ``shape``."""
    raise NotImplementedError


@hookspec
def deltaprop_register_onnx_converters() -> dict[str, Converter]:
    """Return ``{layer name: converter}`` for ONNX export; a converter is called as
    ``converter(layer, ctx)`` with an ``ExportContext`` and returns one ONNX value name
    per output of the layer (docs/onnx.md). A layer may convert itself instead
    (``Layer.to_onnx``)."""
    raise NotImplementedError
