"""Checks that a layer, loss or network honours the protocol, for the built-ins and for
plugin authors alike: float64 finite-difference gradients of inputs and parameters,
and the rules that let the executor share layers and free caches."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .config import construct
from .layer import Layer
from .loss import Loss


@dataclass
class GradientReport:
    """Largest absolute and relative differences between analytic and numeric gradients."""

    checked: list[str] = field(default_factory=list)
    max_abs_error: float = 0.0
    max_rel_error: float = 0.0

    def add(self, what: str, analytic: np.ndarray, numeric: np.ndarray, rtol: float,
            atol: float) -> None:
        analytic = np.asarray(analytic, dtype=np.float64)
        if analytic.shape != numeric.shape:
            raise AssertionError(f"{what}: gradient has shape {analytic.shape}, "
                                 f"expected {numeric.shape}")
        diff = np.abs(analytic - numeric)
        abs_err = float(diff.max(initial=0.0))
        rel_err = float((diff / (np.abs(numeric) + atol)).max(initial=0.0))
        self.max_abs_error = max(self.max_abs_error, abs_err)
        self.max_rel_error = max(self.max_rel_error, rel_err)
        self.checked.append(what)
        if not np.allclose(analytic, numeric, rtol=rtol, atol=atol):
            worst = np.unravel_index(int(np.argmax(diff - rtol * np.abs(numeric))), diff.shape)
            raise AssertionError(
                f"{what}: analytic gradient differs from finite differences; at index "
                f"{tuple(int(i) for i in worst)} analytic {analytic[worst]:.8g}, numeric "
                f"{numeric[worst]:.8g} (max abs error {abs_err:.3g})")


def numeric_gradient(f: Callable[[], float], x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Central differences of the scalar ``f()`` with respect to ``x`` (changed in place
    and restored)."""
    grad = np.zeros(x.shape, dtype=np.float64)
    flat = x.reshape(-1)
    gflat = grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        up = f()
        flat[i] = old - eps
        down = f()
        flat[i] = old
        gflat[i] = (up - down) / (2 * eps)
    return grad


def make_layer(layer_class: type[Layer], input_shapes: Sequence[Sequence[int]],
               seed: int = 0, **config: Any) -> Layer:
    """Construct (through the same path as the registry) and build a layer."""
    layer = construct(layer_class, config)
    shapes = tuple(tuple(s) for s in input_shapes)
    out = layer.build(shapes, rng=np.random.default_rng(seed))
    layer.input_shapes = shapes
    layer.output_shapes = tuple(tuple(s) for s in out)
    return layer


def check_layer(layer_class: type[Layer], input_shapes: Sequence[Sequence[int]], *,
                batch: int = 3, seed: int = 0, rtol: float = 1e-5, atol: float = 1e-7,
                **config: Any) -> GradientReport:
    """Float64 finite-difference check of a layer's input and parameter gradients.

    The scalar checked is ``sum_k <outputs_k, R_k>`` for random ``R_k``, so every
    output and every element is exercised. Raises AssertionError on a mismatch.
    """
    config = {**config, "dtype": "float64"}
    layer = make_layer(layer_class, input_shapes, seed=seed, **config)
    rng = np.random.default_rng(seed + 1)
    inputs = [np.array(x) for x in layer_class.sample_inputs(rng, layer.input_shapes or (),
                                                             batch, "float64")]
    outputs, cache = layer.forward(tuple(inputs), train=True)
    if len(outputs) != len(layer.output_shapes or ()):
        raise AssertionError(f"{layer_class.name}: forward returned {len(outputs)} outputs, "
                             f"build declared {len(layer.output_shapes or ())}")
    for out, shape in zip(outputs, layer.output_shapes or ()):
        if out.shape[1:] != tuple(shape) or out.shape[0] != batch:
            raise AssertionError(f"{layer_class.name}: output of shape {out.shape}, build "
                                 f"declared (batch={batch}, *{tuple(shape)})")
        if out.dtype != np.float64:
            raise AssertionError(f"{layer_class.name}: float64 layer returned {out.dtype}")
    weights = [rng.standard_normal(o.shape) for o in outputs]

    def objective() -> float:
        outs, _ = layer.forward(tuple(inputs), train=False)
        return float(sum(np.sum(o * w) for o, w in zip(outs, weights)))

    grad_inputs, grad_params = layer.backward(cache, tuple(w.copy() for w in weights))
    report = GradientReport()
    if len(grad_inputs) != len(inputs):
        raise AssertionError(f"{layer_class.name}: backward returned {len(grad_inputs)} input "
                             f"gradients for {len(inputs)} inputs")
    for i, (x, g) in enumerate(zip(inputs, grad_inputs)):
        if not np.issubdtype(x.dtype, np.floating):
            continue
        if g is None:
            raise AssertionError(f"{layer_class.name}: no gradient for float input {i}")
        report.add(f"{layer_class.name} input {i}", g, numeric_gradient(objective, x),
                   rtol, atol)
    if set(grad_params) != set(layer.params):
        raise AssertionError(f"{layer_class.name}: gradients for {sorted(grad_params)}, "
                             f"parameters {sorted(layer.params)}")
    for pname, value in layer.params.items():
        report.add(f"{layer_class.name} param {pname}", grad_params[pname],
                   numeric_gradient(objective, value), rtol, atol)
    return report


def check_loss(loss_class: type[Loss], shape: Sequence[int], *, batch: int = 4, seed: int = 0,
               rtol: float = 1e-5, atol: float = 1e-7, **config: Any) -> GradientReport:
    """Float64 finite-difference check of a loss's gradient with respect to its prediction."""
    loss = construct(loss_class, config)
    rng = np.random.default_rng(seed)
    full = (batch, *shape)
    prediction = np.array(loss.sample_predictions(rng, full, "float64"), dtype=np.float64)
    target = loss.check_target(tuple(shape), loss.sample_targets(rng, full, "float64"))
    _, cache = loss.forward(prediction, target)
    analytic = loss.backward(cache)
    report = GradientReport()
    report.add(f"loss {loss_class.name}", analytic,
               numeric_gradient(lambda: float(loss.forward(prediction, target)[0]), prediction),
               rtol, atol)
    return report


def check_network_gradients(net: Any, inputs: Sequence[np.ndarray], *, seed: int = 0,
                            rtol: float = 1e-5, atol: float = 1e-7) -> GradientReport:
    """Finite-difference check of a whole (float64) network: every float input and every
    parameter, through the executor's fan-out sums, shared layers and multi-output nodes."""
    rng = np.random.default_rng(seed)
    inputs = [np.array(x) for x in inputs]
    outputs = net.forward(inputs, train=True)
    weights = [rng.standard_normal(o.shape) for o in outputs]
    grad_inputs = net.backward([w.copy() for w in weights])
    grads = {k: v.copy() for k, v in net.grads.items()}

    def objective() -> float:
        outs = net.forward(inputs, train=False)
        return float(sum(np.sum(o * w) for o, w in zip(outs, weights)))

    report = GradientReport()
    for i, (x, g) in enumerate(zip(inputs, grad_inputs)):
        if np.issubdtype(x.dtype, np.floating):
            report.add(f"network input {i}", g, numeric_gradient(objective, x), rtol, atol)
    for key, value in net.params.items():
        report.add(f"network param {key}", grads[key], numeric_gradient(objective, value),
                   rtol, atol)
    return report

