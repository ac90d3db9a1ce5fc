"""The ONNX export check: a network exported by deltaprop computes in ONNX Runtime what
it computes in deltaprop.

ONNX Runtime is an engine written independently of deltaprop, so this is an outside
check of every converted layer's forward arithmetic. The conformance kit runs it on
every layer that has a converter when ``onnx`` and ``onnxruntime`` are installed (a
plugin author gets it for free); deltaprop's own tests run it on every registered
layer's examples and every spec under ``examples/``.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..config import construct
from ..errors import DeltapropError
from ..export import ExportError, export_onnx, find_converter
from ..layer import Layer
from ..network import Network
from ..registry import get_registry
from ..tensor import Input

#: relative error allowed: largest absolute difference over the output's largest magnitude
RTOL = 1e-5
#: batch sizes every check runs, so that a batch size written into the graph shows
BATCHES = (2, 5)


def onnxruntime_available() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime"))


def has_converter(layer: Layer) -> bool:
    """True when ``layer`` converts (its own ``to_onnx`` or a registered converter)."""
    try:
        find_converter(layer, "check", get_registry())
    except ExportError:
        return False
    return True


def session(path: str | os.PathLike[str]) -> Any:
    """An ONNX Runtime session on one thread (the tests share the machine)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def relative_error(expected: np.ndarray, actual: np.ndarray) -> float:
    """Largest absolute difference over the largest magnitude of ``expected`` (its
    scale), or the absolute difference when ``expected`` is all zeros."""
    if expected.shape != actual.shape:
        return float("inf")
    if expected.size == 0:
        return 0.0
    diff = float(np.max(np.abs(expected.astype(np.float64) - actual.astype(np.float64))))
    scale = float(np.max(np.abs(expected)))
    return diff / scale if scale > 0 else diff


def compare_with_onnxruntime(net: Network, batches: Sequence[Sequence[np.ndarray]], *,
                             opset: int | None = None, rtol: float = RTOL,
                             where: str = "") -> float:
    """Export ``net``, run it in ONNX Runtime on each list of input arrays in
    ``batches`` and compare every output with ``net.predict``; returns the largest
    relative error, raises AssertionError past ``rtol``."""
    where = where or f"network {net.name!r}"
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        export_onnx(net, path, opset=opset)
        runner = session(path)
        names = [i.name for i in runner.get_inputs()]
        if names != [t.node.name for t in net.inputs]:
            raise AssertionError(f"{where}: ONNX inputs {names}, the network's "
                                 f"{[t.node.name for t in net.inputs]}")
        outputs = [o.name for o in runner.get_outputs()]
        if outputs != net.output_names:
            raise AssertionError(f"{where}: ONNX outputs {outputs}, the network's "
                                 f"{net.output_names}")
        for arrays in batches:
            expected = net.predict(list(arrays))
            expected = expected if isinstance(expected, list) else [expected]
            actual = runner.run(None, dict(zip(names, arrays)))
            for name, e, a in zip(outputs, expected, actual):
                error = relative_error(np.asarray(e), np.asarray(a))
                worst = max(worst, error)
                if not error <= rtol:
                    raise AssertionError(
                        f"{where}: output {name!r} at batch {len(arrays[0])} differs from "
                        f"ONNX Runtime by {error:.2e} of its scale (allowed {rtol:.0e}); "
                        f"shapes {np.shape(e)} and {np.shape(a)}")
    return worst


def example_network(layer_class: type[Layer], input_shapes: Sequence[Sequence[int]], *,
                    check_seed: int = 0, **config: Any) -> tuple[Network, list[list[np.ndarray]]]:
    """The layer alone in a network, its parameters moved off their initial values
    (zero biases would hide a bias put in the wrong place) and its state moved by one
    training forward; with input arrays for each of ``BATCHES``."""
    rng = np.random.default_rng(check_seed)
    dtype = config.get("dtype", "float32")
    shapes = [tuple(s) for s in input_shapes]
    batches = [[np.array(a) for a in layer_class.sample_inputs(rng, shapes, batch, dtype)]
               for batch in BATCHES]
    layer = construct(layer_class, config)
    inputs = [Input(s, name=f"in{i}", dtype=a.dtype.name)
              for i, (s, a) in enumerate(zip(shapes, batches[0]))]
    outs = layer(*inputs)
    net = Network(inputs, list(outs) if isinstance(outs, tuple) else [outs],
                  name=f"export_{layer_class.name}")
    frozen = set(layer.non_trainable)
    for pname, value in layer.params.items():
        if pname not in frozen:
            value += (0.3 * rng.standard_normal(value.shape)).astype(value.dtype)
    net.forward(batches[-1], train=True)
    return net, batches


def check_onnx_export(layer_class: type[Layer], input_shapes: Sequence[Sequence[int]], *,
                      check_seed: int = 0, opset: int | None = None, rtol: float = RTOL,
                      **config: Any) -> float:
    """One example of a layer, exported and run in ONNX Runtime at two batch sizes;
    returns the largest relative error, raises AssertionError past ``rtol``."""
    net, batches = example_network(layer_class, input_shapes, check_seed=check_seed, **config)
    try:
        return compare_with_onnxruntime(net, batches, opset=opset, rtol=rtol,
                                        where=f"{layer_class.name} {list(input_shapes)}")
    except DeltapropError as exc:
        raise AssertionError(f"{layer_class.name}: the export failed: {exc}") from None


def exports(layer_class: type[Layer], input_shapes: Sequence[Sequence[int]],
            **config: Any) -> bool:
    """Whether the kit runs the export check on this case: the layer has a converter
    and onnx and onnxruntime are installed."""
    if not onnxruntime_available():
        return False
    try:
        layer = construct(layer_class, config)
    except DeltapropError:
        return False
    return has_converter(layer)
