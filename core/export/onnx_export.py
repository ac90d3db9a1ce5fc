"""``export_onnx``: a network as an ONNX model, one converter per node.

The exporter reads the user graph (``Network.steps``), not the executed plan, so
fused nodes are written as their parts. Every node's converter is looked up before
anything is emitted, and the file is written only after the whole model passed
``onnx.checker.check_model(full_check=True)``, through a temporary file renamed into
place: a failed export leaves no file and keeps an old one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import DeltapropError, RegistryError
from ..layer import Layer, overrides
from ..network import Network
from ..registry import Registry, deltaprop_version, get_registry
from ..storage.files import atomic_write
from .onnx_graph import Converter, ExportContext, OnnxGraph, OperatorNode, element_type

#: the oldest opset written (Split, Squeeze and Unsqueeze take their sizes and axes as
#: inputs from 13 on, which the converters rely on)
MIN_OPSET = 13
#: what ``export_onnx`` writes without ``opset``: every ONNX Runtime since 1.12 runs it
DEFAULT_OPSET = 17
#: the registry kind converters are registered under
CONVERTER_KIND = "onnx_converter"
INSTALL_HINT = "pip install deltaprop[onnx]"
#: the symbolic name of the batch axis of every input and output
BATCH_AXIS = "batch"


class ExportError(DeltapropError):
    """A network that cannot be exported: no converter, an opset out of range."""


def _onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise ExportError(f"ONNX export needs the onnx package: {INSTALL_HINT}") from None
    return onnx


def find_converter(layer: Layer, where: str, registry: Registry | None = None) -> Converter:
    """The converter of ``layer``: its own ``to_onnx`` if it defines one, else the one a
    plugin registered for its registry name (when the layer is that registered class).
    Raises an ExportError naming ``where``, the layer and its plugin otherwise."""
    if overrides(layer, "to_onnx"):
        return _method_converter
    registry = registry or get_registry()
    try:
        registered = registry.get("layer", layer.name)
    except RegistryError:
        registered = None
    if registered is type(layer):
        if layer.name in registry.names(CONVERTER_KIND):
            converter: Converter = registry.get(CONVERTER_KIND, layer.name)
            return converter
        origin = f"from {registry.provider('layer', layer.name)}"
    else:
        origin = f"class {type(layer).__module__}.{type(layer).__qualname__}, not registered"
    raise ExportError(f"{where}: layer {layer.name!r} ({origin}) has no ONNX converter; "
                      f"see docs/onnx.md for adding one (Layer.to_onnx or the "
                      f"deltaprop_register_onnx_converters hook)")


def _method_converter(layer: Layer, ctx: ExportContext) -> Sequence[str]:
    return layer.to_onnx(ctx)


def check_opset(opset: Any) -> int:
    onnx = _onnx()
    newest = int(onnx.defs.onnx_opset_version())
    if isinstance(opset, bool) or not isinstance(opset, (int, np.integer)) or not (
            MIN_OPSET <= opset <= newest):
        raise ExportError(f"opset {opset!r} is not supported: deltaprop writes opsets "
                          f"{MIN_OPSET} to {newest} (the newest the installed onnx "
                          f"{onnx.__version__} knows)")
    return int(opset)


def _step_name(step: Any) -> str:
    return f"node {step.name!r}"


def build_model(net: Network, opset: int | None = None, registry: Registry | None = None
                ) -> Any:
    """The network as an ``onnx.ModelProto``, checked; nothing is written."""
    onnx = _onnx()
    opset = DEFAULT_OPSET if opset is None else check_opset(opset)
    registry = registry or get_registry()

    def find(layer: Layer, where: str) -> Converter:
        return find_converter(layer, where, registry)

    steps = list(net.steps)
    converters = [find(step.layer, _step_name(step)) for step in steps]  # all, up front
    graph = OnnxGraph(opset)
    input_names = [str(t.node.name) for t in net.inputs]  # (named by the Network)
    output_names = list(net.output_names)
    if len(set(output_names)) != len(output_names):
        raise ExportError(f"network {net.name!r}: an output is listed twice "
                          f"({', '.join(output_names)}); ONNX outputs need distinct names")
    graph.taken.update(input_names)
    graph.taken.update(output_names)
    value_of: dict[tuple[int, int], str] = {
        (id(t.node), 0): name for t, name in zip(net.inputs, input_names)}
    for step, converter in zip(steps, converters):
        node = step.node
        layer = step.layer
        ctx = ExportContext(graph, layer, step.name,
                            [value_of[(id(t.node), t.index)] for t in node.inputs],
                            [t.shape for t in node.inputs], [t.dtype for t in node.inputs],
                            find)
        try:
            produced = tuple(converter(layer, ctx))
        except DeltapropError as exc:
            raise ExportError(f"{_step_name(step)} (layer {layer.name!r}): {exc}") from None
        except Exception as exc:  # a converter's bug: name where (--debug shows the rest)
            raise ExportError(f"{_step_name(step)}: the ONNX converter of layer "
                              f"{layer.name!r} raised {type(exc).__name__}: {exc}") from exc
        if len(produced) != len(node.outputs):
            raise ExportError(f"{_step_name(step)}: the ONNX converter of layer "
                              f"{layer.name!r} returned {len(produced)} value(s) for "
                              f"{len(node.outputs)} output(s)")
        for t, value in zip(node.outputs, produced):
            value_of[(id(node), t.index)] = value
    helper = onnx.helper
    for t, name in zip(net.outputs, output_names):
        graph.nodes.append(OperatorNode("Identity", [value_of[(id(t.node), t.index)]], [name],
                                        graph.fresh(f"{name}/output"), {}))
    nodes = [helper.make_node(n.op_type, n.inputs, n.outputs, name=n.name, domain=n.domain,
                              **n.attributes) for n in graph.nodes]
    initializers = [onnx.numpy_helper.from_array(value, name)
                    for name, value in graph.initializers.items()]
    inputs = [helper.make_tensor_value_info(name, element_type(t.dtype), [BATCH_AXIS, *t.shape])
              for t, name in zip(net.inputs, input_names)]
    outputs = [helper.make_tensor_value_info(name, element_type(t.dtype),
                                             [BATCH_AXIS, *t.shape])
               for t, name in zip(net.outputs, output_names)]
    model_graph = helper.make_graph(nodes, net.name, inputs, outputs, initializers)
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(model_graph, opset_imports=opsets, producer_name="deltaprop",
                              producer_version=deltaprop_version())
    model.ir_version = helper.find_min_ir_version_for(opsets)
    helper.set_model_props(model, {"deltaprop_version": deltaprop_version(),
                                   "deltaprop_spec": json.dumps(net.to_spec())})
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"network {net.name!r}: the ONNX model fails onnx's checker "
                          f"(a converter's fault): {first}") from None
    return model


def export_onnx(net: Network, path: str | os.PathLike[str], opset: int | None = None) -> None:
    """Write ``net`` to ``path`` as an ONNX model of ``opset`` (default
    ``DEFAULT_OPSET``): input and output names kept, the batch axis dynamic,
    deltaprop's version and the network's spec in the metadata. Nothing is written
    unless every node converts and the model passes onnx's full check."""
    if not isinstance(net, Network):
        raise ExportError(f"export_onnx takes a deltaprop Network, got {type(net).__name__}")
    model = build_model(net, opset)
    data = model.SerializeToString()
    with atomic_write(path) as handle:
        handle.write(data)
