"""deltaprop: a plugin-based neural-network framework whose backward pass is explicit.

Every layer passes data forward and a delta backward; the graph executor strings
layers together; layers, losses, optimizers and initializers come from plugins
found through the ``deltaprop`` entry-point group.

The package is layered, each layer importing only those below it (the contracts
are in ``pyproject.toml``, checked by ``lint-imports``):

    cli                          the ``deltaprop`` command
    testing                      the conformance kit, its pytest plugin, the scaffold
    io                           spec files, model files, data sets
    export                       ONNX export (the onnx package imported only then)
    network                      Network (a graph that trains), Sequential
    visual                       SVG drawings, the trace page (Network draws itself)
    training                     the one step and loop, checkpoints, anomaly
                                 detection, truncated BPTT, MPI, thread pools
    storage                      the npz container and the model file format
    graph                        Graph: nodes, parameters, plan; memory report, trace
    execution                    plan, passes, memory planning, executor, hooks
    registry                     plugin discovery
    layer, loss, optimizer,      the protocols plugins implement
    hookspecs, tensor
    errors, config, defaults     what everything uses (defaults: the training
                                 settings fit and the CLI share)
"""

from __future__ import annotations

import sys

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
from .execution.allocator import retain_freed_memory
from .execution.hooks import Hook
from .execution.state import CarriedState
from .export import export_onnx
from .graph.graph import Graph
from .hookspecs import hookimpl
from .io import data, spec
from .io.model import load, save
from .io.spec import load_spec
from .layer import Layer
from .loss import Loss
from .network import Network, Sequential
from .optimizer import Optimizer
from .registry import create, create_loss, create_optimizer, deltaprop_version, get_registry
from .tensor import Input, Tensor, seed
from .training import anomaly, bptt, checkpoint, distributed
from .training import loop as train
from .visual import curves as plot

__version__ = deltaprop_version()

# Modules of earlier versions, where they live now: ``import deltaprop.data`` and
# ``from deltaprop.distributed import Distributed`` keep working.
for _old, _module in {"data": data, "spec": spec, "anomaly": anomaly, "bptt": bptt,
                      "checkpoint": checkpoint, "distributed": distributed, "train": train,
                      "plot": plot}.items():
    sys.modules[f"{__name__}.{_old}"] = _module
del _old, _module

__all__ = [
    "CarriedState",
    "ConfigError",
    "DataError",
    "DeltapropError",
    "Graph",
    "GraphError",
    "Hook",
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
    "export_onnx",
    "get_registry",
    "hookimpl",
    "load",
    "load_spec",
    "retain_freed_memory",
    "save",
    "seed",
    "testing",
]
