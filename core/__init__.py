"""deltaprop: a plugin-based neural-network framework whose backward pass is explicit.

Every layer passes data forward and a delta backward; the graph executor strings
layers together; layers, losses, optimizers and initializers come from plugins
found through the ``deltaprop`` entry-point group.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from . import testing
from .errors import (
    ConfigError,
    DataError,
    DeltapropError,
    GraphError,
    ModelFileError,
    PluginError,
    RegistryError,
    ShapeError,
    SpecError,
    TrainingError,
)
from .graph import Input, Network, Sequential, Tensor, seed
from .hookspecs import hookimpl
from .io import load, save
from .layer import Layer
from .loss import Loss
from .optimizer import Optimizer
from .registry import create, create_loss, create_optimizer, get_registry
from .spec import load_spec

try:
    __version__ = version("deltaprop")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "ConfigError",
    "DataError",
    "DeltapropError",
    "GraphError",
    "Input",
    "Layer",
    "Loss",
    "ModelFileError",
    "Network",
    "Optimizer",
    "PluginError",
    "RegistryError",
    "Sequential",
    "ShapeError",
    "SpecError",
    "Tensor",
    "TrainingError",
    "__version__",
    "create",
    "create_loss",
    "create_optimizer",
    "get_registry",
    "hookimpl",
    "load",
    "load_spec",
    "save",
    "seed",
    "testing",
]
