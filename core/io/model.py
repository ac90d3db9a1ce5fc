"""Saving and loading networks: one ``.npz`` holding the spec as JSON and the weights.

Nothing is pickled on either side: arrays are read with ``allow_pickle=False`` after
their headers have been checked against what the spec declares, and the write is
atomic (temporary file, fsync, rename), so a crash mid-save leaves the old file.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..errors import DeltapropError, ModelFileError
from ..layer import parameter_budget
from ..network import Network
from ..registry import Registry, get_registry
from ..storage.model_format import (
    FORMAT,
    FORMAT_VERSION,
    PARAM_PREFIX,
    model_arrays,
    model_meta,
    trained_on,
)
from ..storage.npz import NpzReader, guarded, write_npz
from .spec import load_spec


def save(net: Network, path: str | os.PathLike[str]) -> None:
    """Write the network's spec and weights to ``path`` (a ``.npz``), atomically."""
    write_npz(path, model_meta(net), model_arrays(net))


def load(path: str | os.PathLike[str]) -> Network:
    """Rebuild the network saved at ``path``; the file is checked before anything runs."""
    where = f"model file {str(path)!r}"
    return guarded(where, lambda: _load(path))


def _load(path: str | os.PathLike[str]) -> Network:
    with NpzReader(path) as reader:
        where = reader.where
        meta = reader.read_json()
        if meta.get("format") != FORMAT:
            raise ModelFileError(f"{where}: not a deltaprop model (format "
                                 f"{meta.get('format')!r})")
        if meta.get("version") != FORMAT_VERSION:
            raise ModelFileError(f"{where}: format version {meta.get('version')!r} is not "
                                 f"supported (this deltaprop reads {FORMAT_VERSION})")
        spec, keys = meta.get("spec"), meta.get("params")
        if not isinstance(spec, dict) or not isinstance(keys, list) or not all(
            isinstance(k, str) for k in keys
        ):
            raise ModelFileError(f"{where}: metadata lacks a spec or a parameter list")
        _check_layers_installed(where, spec, meta.get("providers"), get_registry())
        members = [PARAM_PREFIX + k for k in keys]
        reader.reserve(members)
        with parameter_budget(reader.param_bytes(members) + 4096, where):
            try:
                net = load_spec(spec)
            except DeltapropError as exc:
                raise ModelFileError(f"{where}: {exc}") from None
        expected = net.params
        if set(expected) != set(keys):
            missing = sorted(set(expected) - set(keys))
            extra = sorted(set(keys) - set(expected))
            raise ModelFileError(f"{where}: parameters do not match the spec (missing: "
                                 f"{missing or 'none'}; unexpected: {extra or 'none'})")
        by_key = {key: (layer, pname) for key, layer, pname in net.plan.param_index}
        for key in keys:
            layer, pname = by_key[key]
            current = layer.params[pname]
            value = reader.read(PARAM_PREFIX + key, shape=current.shape, dtype=current.dtype)
            if not np.isfinite(value).all():
                raise ModelFileError(f"{where}: parameter {key!r} holds NaN or infinite "
                                     f"values")
            layer.params[pname] = value
        net.trained_on = trained_on(meta)
        return net


def _check_layers_installed(where: str, spec: dict[str, Any], providers: Any,
                            registry: Registry) -> None:
    installed = set(registry.names("layer"))
    nodes = spec.get("nodes")
    if not isinstance(nodes, list):
        return
    for node in nodes:
        layer = node.get("layer") if isinstance(node, dict) else None
        if isinstance(layer, str) and layer not in installed:
            origin = providers.get(layer) if isinstance(providers, dict) else None
            hint = ""
            if isinstance(origin, dict) and origin.get("plugin") in registry.disabled_plugins():
                raise ModelFileError(f"{where}: node {node.get('name')!r} uses layer {layer!r} "
                                     f"of plugin {origin.get('plugin')!r}, which is disabled "
                                     f"by DELTAPROP_DISABLE_PLUGINS")
            if isinstance(origin, dict) and origin.get("distribution"):
                hint = (f"; it was provided by plugin {origin.get('plugin')!r} of the "
                        f"distribution {origin['distribution']} {origin.get('version', '')}"
                        f": install it (pip install {origin['distribution']})")
            raise ModelFileError(f"{where}: node {node.get('name')!r} uses layer {layer!r}, "
                                 f"which no installed plugin provides{hint}")
