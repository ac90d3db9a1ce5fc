"""Spec files: networks composed from the registry by name, in TOML or JSON.

    outputs = ["out"]
    [inputs]
    x = [64]                 # name -> shape (batch left out), or {shape=[...], dtype="int64"}
    [[nodes]]
    name = "hidden"
    layer = "dense"          # registry name
    inputs = ["x"]           # "node" or "node:k" for a node's k-th output
    units = 32               # the rest is the layer's config
    [train]                  # optional: loss, optimizer and its settings, epochs, batch_size

A node may instead say ``shares = "other"`` to apply the layer of node ``other``
again (shared weights). Everything is checked before any layer is built, and every
error names the file and the node.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import DeltapropError, FileError, SpecError, add_context
from ..network import Network
from ..registry import get_registry
from ..storage.files import TEXT_LIMIT, read_bytes
from ..tensor import Input, seeded

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

TOP_LEVEL_KEYS = {"inputs", "outputs", "nodes", "train", "dtype", "seed", "name"}
NODE_KEYS = {"name", "layer", "inputs", "shares"}
#: the [train] keys that are training settings; every other key configures the optimizer
TRAIN_KEYS = {"loss", "loss_weights", "optimizer", "epochs", "batch_size", "seed", "bptt"}
_REF = re.compile(r"^([^:\s]+)(?::(\d+))?$")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.@\-]*$")  # '@': "dense@2", a shared layer's 2nd use


def read_spec_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse a TOML or JSON spec file into a dict (no network is built)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".json", ".toml"):
        raise SpecError(f"spec file {str(path)!r}: expected a .toml or .json file")
    try:
        raw = read_bytes(path, "spec file", limit=TEXT_LIMIT)
    except FileError as exc:
        raise SpecError(str(exc)) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SpecError(f"spec file {str(path)!r}: not UTF-8 text") from None
    try:
        data = json.loads(text) if suffix == ".json" else tomllib.loads(text)
    except json.JSONDecodeError as exc:
        raise SpecError(f"spec file {str(path)!r}: invalid JSON at line {exc.lineno}, "
                        f"column {exc.colno}: {exc.msg}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"spec file {str(path)!r}: invalid TOML: {exc}") from None
    except RecursionError:
        raise SpecError(f"spec file {str(path)!r}: nested too deeply") from None
    if not isinstance(data, dict):
        raise SpecError(f"spec file {str(path)!r}: the top level must be a table/object")
    return data


def parse_ref(ref: Any, where: str) -> tuple[str, int]:
    if not isinstance(ref, str) or not _REF.match(ref):
        raise SpecError(f"{where}: bad reference {ref!r}; write \"node\" or \"node:k\"")
    m = _REF.match(ref)
    assert m is not None
    return m.group(1), int(m.group(2) or 0)


def _shape(value: Any, where: str) -> tuple[tuple[int, ...], str | None]:
    dtype = None
    if isinstance(value, Mapping):
        unknown = set(value) - {"shape", "dtype"}
        if unknown or "shape" not in value:
            raise SpecError(f"{where}: an input is a shape list or {{shape = [...], "
                            f"dtype = \"...\"}}, got keys {sorted(value)}")
        dtype = value.get("dtype")
        if dtype not in (None, "float32", "float64", "int32", "int64"):
            raise SpecError(f"{where}: dtype must be float32, float64, int32 or int64, "
                            f"got {dtype!r}")
        value = value["shape"]
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    # [] is one number per sample (sequence lengths, class ids): it must round-trip too
    if not isinstance(value, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in value
    ):
        raise SpecError(f"{where}: shape must be a list of positive integers, "
                        f"got {value!r}")
    return tuple(value), dtype


class _Checked:
    """A spec that passed every check that needs no layer built."""

    def __init__(self, spec: Any, source: str) -> None:
        self.source = source
        self.inputs: dict[str, tuple[tuple[int, ...], str]] = {}
        self.nodes: dict[str, dict[str, Any]] = {}
        if not isinstance(spec, Mapping):
            raise SpecError(f"{source}: a spec is a table/object, got {type(spec).__name__}")
        unknown = sorted(set(spec) - TOP_LEVEL_KEYS)
        if unknown:
            raise SpecError(f"{source}: unknown top-level key(s) {unknown}; expected "
                            f"{sorted(TOP_LEVEL_KEYS)}")
        self.dtype = spec.get("dtype", "float32")
        if self.dtype not in ("float32", "float64"):
            raise SpecError(f"{source}: dtype must be float32 or float64, got {self.dtype!r}")
        self.name = spec.get("name", "network")
        if not isinstance(self.name, str):
            raise SpecError(f"{source}: name must be a string")
        self.seed = spec.get("seed")
        if self.seed is not None and (isinstance(self.seed, bool)
                                      or not isinstance(self.seed, int)):
            raise SpecError(f"{source}: seed must be an integer, got {self.seed!r}")
        inputs = spec.get("inputs")
        if not isinstance(inputs, Mapping) or not inputs:
            raise SpecError(f"{source}: needs an [inputs] table of name = shape")
        for name, value in inputs.items():
            self._check_name(name, f"{source}: input")
            shape, dtype = _shape(value, f"{source}: input {name!r}")
            self.inputs[name] = (shape, dtype or self.dtype)
        nodes = spec.get("nodes")
        if not isinstance(nodes, list) or not nodes:
            raise SpecError(f"{source}: needs a list of nodes ([[nodes]] tables)")
        for i, node in enumerate(nodes):
            self._check_node(i, node)
        outputs = spec.get("outputs")
        if isinstance(outputs, str):
            outputs = [outputs]
        if not isinstance(outputs, list) or not outputs:
            raise SpecError(f"{source}: needs an outputs list of references")
        self.outputs = [self._check_ref(r, f"{source}: outputs") for r in outputs]
        self.order = self._topological_order()
        self._check_connected()
        train = spec.get("train", {})
        if not isinstance(train, Mapping):
            raise SpecError(f"{source}: [train] must be a table")
        self.train = dict(train)

    def _check_name(self, name: Any, what: str) -> None:
        if not isinstance(name, str) or not _NAME.match(name):
            raise SpecError(f"{what} name {name!r} must start with a letter or _ and use "
                            f"letters, digits, _ . - @")
        if name in self.inputs or name in self.nodes:
            raise SpecError(f"{what} name {name!r} is used twice")

    def _check_node(self, i: int, node: Any) -> None:
        where = f"{self.source}: node #{i + 1}"
        if not isinstance(node, Mapping):
            raise SpecError(f"{where}: must be a table/object")
        name = node.get("name")
        self._check_name(name, f"{where}:")
        assert isinstance(name, str)
        where = f"{self.source}: node {name!r}"
        if ("layer" in node) == ("shares" in node):
            raise SpecError(f"{where}: give exactly one of `layer` (a registry name) or "
                            f"`shares` (a node whose layer to reuse)")
        refs = node.get("inputs")
        if isinstance(refs, str):
            refs = [refs]
        if not isinstance(refs, list) or not refs:
            raise SpecError(f"{where}: `inputs` must be a non-empty list of references")
        parsed = [parse_ref(r, where) for r in refs]
        config = {k: v for k, v in node.items() if k not in NODE_KEYS}
        if "shares" in node:
            if config:
                raise SpecError(f"{where}: a node that shares a layer takes no config, got "
                                f"{sorted(config)}")
            if not isinstance(node["shares"], str):
                raise SpecError(f"{where}: `shares` must name a node")
        elif not isinstance(node["layer"], str):
            raise SpecError(f"{where}: `layer` must be a registry name (a string)")
        self.nodes[name] = {"layer": node.get("layer"), "shares": node.get("shares"),
                            "inputs": parsed, "config": config}

    def _check_ref(self, ref: Any, where: str) -> tuple[str, int]:
        name, k = parse_ref(ref, where)
        if name not in self.inputs and name not in self.nodes:
            raise SpecError(f"{where}: reference {ref!r} names no input or node")
        if name in self.inputs and k != 0:
            raise SpecError(f"{where}: input {name!r} has one output, not output {k}")
        return name, k

    def _topological_order(self) -> list[str]:
        for name, node in self.nodes.items():
            where = f"{self.source}: node {name!r}"
            for ref in node["inputs"]:
                if ref[0] not in self.inputs and ref[0] not in self.nodes:
                    raise SpecError(f"{where}: input reference {ref[0]!r} names no input "
                                    f"or node")
            if node["shares"] is not None:
                other = self.nodes.get(node["shares"])
                if other is None:
                    raise SpecError(f"{where}: shares the layer of {node['shares']!r}, "
                                    f"which is not a node")
                if other["shares"] is not None:
                    raise SpecError(f"{where}: shares {node['shares']!r}, which itself "
                                    f"shares; name the node that defines the layer")
        # Kahn's algorithm; a layer's defining node must come before its sharers
        deps = {name: {r[0] for r in node["inputs"] if r[0] in self.nodes}
                | ({node["shares"]} if node["shares"] else set())
                for name, node in self.nodes.items()}
        order: list[str] = []
        ready = [n for n in self.nodes if not deps[n]]
        users: dict[str, list[str]] = {n: [] for n in self.nodes}
        for n, d in deps.items():
            for m in d:
                users[m].append(n)
        remaining = {n: len(d) for n, d in deps.items()}
        while ready:
            n = ready.pop(0)
            order.append(n)
            for u in users[n]:
                remaining[u] -= 1
                if remaining[u] == 0:
                    ready.append(u)
        if len(order) != len(self.nodes):
            stuck = [n for n in self.nodes if n not in order]
            raise SpecError(f"{self.source}: the graph has a cycle through node(s) "
                            f"{', '.join(map(repr, stuck))}")
        return order

    def _check_connected(self) -> None:
        """Every node and input must lead to an output."""
        needed: set[str] = set()
        stack = [name for name, _ in self.outputs]
        while stack:
            n = stack.pop()
            if n in needed:
                continue
            needed.add(n)
            if n in self.nodes:
                node = self.nodes[n]
                stack.extend(r[0] for r in node["inputs"])
                if node["shares"]:
                    stack.append(node["shares"])
        for n in [*self.inputs, *self.nodes]:
            if n not in needed:
                kind = "input" if n in self.inputs else "node"
                raise SpecError(f"{self.source}: {kind} {n!r} is not connected to any output")


def check_spec(spec: Any, source: str = "spec") -> None:
    """Validate the structure of a spec without building any layer."""
    _Checked(spec, source)


def load_spec(path_or_dict: str | os.PathLike[str] | Mapping[str, Any], *,
              seed: int | None = None, source: str | None = None) -> Network:
    """Build a Network from a spec file path or dict; the ``[train]`` table ends up in
    ``network.train_config``. ``source`` names a dict's origin in error messages."""
    if isinstance(path_or_dict, Mapping):
        spec, source = path_or_dict, source or "spec"
    else:
        spec, source = read_spec_file(path_or_dict), f"spec file {str(path_or_dict)!r}"
    checked = _Checked(spec, source)
    registry = get_registry()
    layers: dict[str, Any] = {}
    for name in checked.order:
        node = checked.nodes[name]
        if node["shares"] is not None:
            continue
        config = dict(node["config"])
        config.setdefault("dtype", checked.dtype)
        try:
            layers[name] = registry.create(node["layer"], **config)
        except DeltapropError as exc:
            raise SpecError(f"{source}: node {name!r}: {exc}") from None
        layers[name].label = name
    seed = seed if seed is not None else checked.seed
    tensors: dict[str, Any] = {}
    with seeded(seed):
        net_inputs = []
        for name, (shape, dtype) in checked.inputs.items():
            tensors[name] = Input(shape, name=name, dtype=dtype)
            net_inputs.append(tensors[name])

        def resolve(ref: tuple[str, int], where: str) -> Any:
            value = tensors[ref[0]]
            if isinstance(value, tuple):
                if ref[1] >= len(value):
                    raise SpecError(f"{where}: node {ref[0]!r} has {len(value)} outputs; "
                                    f"output {ref[1]} does not exist")
                return value[ref[1]]
            if ref[1] != 0:
                raise SpecError(f"{where}: node {ref[0]!r} has one output; output {ref[1]} "
                                f"does not exist")
            return value

        for name in checked.order:
            node = checked.nodes[name]
            where = f"{source}: node {name!r}"
            args = [resolve(r, where) for r in node["inputs"]]
            layer = layers[node["shares"] or name]
            try:
                tensors[name] = layer(*args, name=name)
            except DeltapropError as exc:
                add_context(exc, source)
                raise
            except (MemoryError, OverflowError, ValueError) as exc:  # e.g. units = 10**12
                raise SpecError(f"{where} ({layer.name}): cannot build it for input shapes "
                                f"{[list(a.shape) for a in args]}: {exc}") from None
        outputs = [resolve(r, f"{source}: outputs") for r in checked.outputs]
    try:
        net = Network(net_inputs, outputs, name=checked.name)
    except DeltapropError as exc:
        raise SpecError(f"{source}: {exc}") from None
    net.train_config = checked.train
    return net
