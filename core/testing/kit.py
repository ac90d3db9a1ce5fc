"""Checks that a layer, loss or network honours the protocol, for the built-ins and for
plugin authors alike.

``check_layer`` is the float64 finite-difference gradient check (inputs and
parameters), run at the initial parameters and at random perturbations of them.
``check_conformance`` runs every check of ``CHECKS`` (name -> function of a ``Case``;
a new check is one function registered with ``@conformance_check``) on one example and
reports each one that fails, by name: gradients, config round trip, save/load inside
a network, no per-call state, caches released and in proportion, inference vs
training, state kept in params, recomputation, no writes into inputs or
``grad_outputs`` (handed read-only), float32 and float64, shape errors on declared
and on made-up wrong shapes; and, for a layer with an ONNX converter, the same outputs
in ONNX Runtime.

Train-mode forwards may be random (dropout) or update state (batch norm running
statistics). The kit therefore compares train-mode results on *replicas*: deep copies
of the layer taken before the call, which replay the same random draws, so a seeded
layer is a deterministic function of its inputs and trainable parameters.
"""

from __future__ import annotations

import copy
import json
import os
import re
import tempfile
import types
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..config import construct
from ..errors import DeltapropError, ShapeError
from ..hookspecs import hookimpl
from ..io.model import load, save
from ..layer import Layer, call_build
from ..loss import Loss
from ..network import Network
from ..registry import Registry, get_registry, reset_registry
from ..tensor import Input
from .export_check import check_onnx_export, exports


@dataclass
class GradientReport:
    """Largest absolute and relative differences between analytic and numeric gradients.

    The relative error of one gradient is its largest absolute error over the largest
    magnitude of that gradient: element-wise ratios would blow up on entries that are
    zero up to rounding, where finite differences carry only noise.
    """

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
        scale = max(float(np.abs(numeric).max(initial=0.0)), atol)
        rel_err = abs_err / scale
        self.max_abs_error = max(self.max_abs_error, abs_err)
        self.max_rel_error = max(self.max_rel_error, rel_err)
        self.checked.append(what)
        if not np.allclose(analytic, numeric, rtol=rtol, atol=atol):
            worst = np.unravel_index(int(np.argmax(diff - rtol * np.abs(numeric))), diff.shape)
            raise AssertionError(
                f"{what}: analytic gradient differs from finite differences; at index "
                f"{tuple(int(i) for i in worst)} analytic {analytic[worst]:.8g}, numeric "
                f"{numeric[worst]:.8g} (max abs error {abs_err:.3g})")


@dataclass
class ConformanceReport:
    """What ``check_conformance`` checked for one layer case: check name -> outcome."""

    layer: str
    input_shapes: list[tuple[int, ...]]
    config: dict[str, Any]
    outcomes: dict[str, str] = field(default_factory=dict)
    gradients: GradientReport | None = None

    @property
    def passed(self) -> list[str]:
        return [name for name, outcome in self.outcomes.items() if outcome == "ok"]


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


def trainable_names(layer: Layer) -> list[str]:
    """The parameters an optimizer updates: all of ``params`` except the layer's
    ``non_trainable`` ones (running statistics and other state saved with the weights)."""
    frozen = set(layer.non_trainable)
    return [name for name in layer.params if name not in frozen]


def make_layer(layer_class: type[Layer], input_shapes: Sequence[Sequence[int]],
               build_seed: int = 0, **config: Any) -> Layer:
    """Construct (through the same path as the registry) and build a layer."""
    layer = construct(layer_class, config)
    shapes = tuple(tuple(s) for s in input_shapes)
    out = call_build(layer, shapes, np.random.default_rng(build_seed))
    layer.input_shapes = shapes
    layer.output_shapes = tuple(tuple(s) for s in out)
    return layer


def sample_inputs(layer_class: type[Layer], input_shapes: Sequence[Sequence[int]], *,
                  batch: int, dtype: str, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    shapes = tuple(tuple(s) for s in input_shapes)
    return [np.array(x) for x in layer_class.sample_inputs(rng, shapes, batch, dtype)]


def _replays(layer: Layer) -> bool:
    """Layers whose training forward draws random numbers or updates state say so with
    ``recomputable = False``; the kit replays those from a copy taken before the call."""
    return not layer.recomputable


def _replica(snapshot: Layer, live: Layer) -> Layer:
    """A copy of the layer as it was at ``snapshot`` time, sharing the live trainable
    parameters (so finite differences see the perturbations) but not its other state."""
    twin = copy.deepcopy(snapshot)
    for name in trainable_names(live):
        twin.params[name] = live.params[name]
    return twin


def _check_outputs(name: str, outputs: Any, layer: Layer, batch: int, dtype: str) -> None:
    declared = layer.output_shapes or ()
    if not isinstance(outputs, tuple):
        raise AssertionError(f"{name}: forward must return a tuple of outputs, got "
                             f"{type(outputs).__name__}")
    if len(outputs) != len(declared):
        raise AssertionError(f"{name}: forward returned {len(outputs)} outputs, "
                             f"build declared {len(declared)}")
    for out, shape in zip(outputs, declared, strict=True):
        if out.shape[1:] != tuple(shape) or out.shape[0] != batch:
            raise AssertionError(f"{name}: output of shape {out.shape}, build "
                                 f"declared (batch={batch}, *{tuple(shape)})")
        if out.dtype != np.dtype(dtype):
            raise AssertionError(f"{name}: {dtype} layer returned a {out.dtype} output")


def perturb_params(layer: Layer, seed: int) -> None:
    """Move every trainable parameter away from its initial value, by noise of a third of
    its root-mean-square (at least 0.03): a gradient right only at the initial values (a
    scale of ones, a bias of zeros) is then wrong."""
    rng = np.random.default_rng(seed)
    for pname in trainable_names(layer):
        value = layer.params[pname]
        if not np.issubdtype(value.dtype, np.floating):
            continue
        rms = float(np.sqrt(np.mean(np.square(value)))) if value.size else 0.0
        value += (max(rms, 0.1) / 3 * rng.standard_normal(value.shape)).astype(value.dtype)


def check_layer(layer_class: type[Layer], input_shapes: Sequence[Sequence[int]], *,
                batch: int = 3, check_seed: int = 0, rtol: float = 1e-5, atol: float = 1e-7,
                perturbation: int = 0, **config: Any) -> GradientReport:
    """Float64 finite-difference check of a layer's input and parameter gradients.

    The scalar checked is ``sum_k <outputs_k, R_k>`` for random ``R_k`` of the
    train-mode outputs, so every output and every element is exercised. With
    ``perturbation`` n > 0 the trainable parameters are first moved by the n-th random
    perturbation (``perturb_params``). Raises AssertionError on a mismatch.
    """
    config = {**config, "dtype": "float64"}
    layer = make_layer(layer_class, input_shapes, build_seed=check_seed, **config)
    name = layer_class.name
    if perturbation:
        perturb_params(layer, check_seed + 1000 * perturbation)
        name = f"{name} (parameters perturbed, draw {perturbation})"
    inputs = sample_inputs(layer_class, layer.input_shapes or (), batch=batch,
                           dtype="float64", seed=check_seed + 1)
    snapshot = copy.deepcopy(layer)
    outputs, cache = layer.forward(_copies(inputs), train=True)
    _check_outputs(name, outputs, layer, batch, "float64")
    rng = np.random.default_rng(check_seed + 2)
    weights = [rng.standard_normal(o.shape) for o in outputs]

    def objective() -> float:
        runner = _replica(snapshot, layer) if _replays(layer) else layer
        outs, _ = runner.forward(tuple(x.copy() for x in inputs), train=True)
        return float(sum(np.sum(o * w) for o, w in zip(outs, weights, strict=True)))

    grad_inputs, grad_params = layer.backward(cache, tuple(w.copy() for w in weights))
    report = GradientReport()
    if len(grad_inputs) != len(inputs):
        raise AssertionError(f"{name}: backward returned {len(grad_inputs)} input "
                             f"gradients for {len(inputs)} inputs")
    for i, (x, g) in enumerate(zip(inputs, grad_inputs, strict=True)):
        if not np.issubdtype(x.dtype, np.floating):
            continue
        if g is None:
            raise AssertionError(f"{name}: no gradient for float input {i}")
        report.add(f"{name} input {i}", g, numeric_gradient(objective, x), rtol, atol)
    trainable = trainable_names(layer)
    if set(grad_params) != set(trainable):
        raise AssertionError(f"{name}: gradients for {sorted(grad_params)}, trainable "
                             f"parameters {sorted(trainable)}")
    for pname in trainable:
        report.add(f"{name} param {pname}", grad_params[pname],
                   numeric_gradient(objective, layer.params[pname]), rtol, atol)
    return report


# -- the other conformance checks ------------------------------------------------------
def check_config_round_trip(layer_class: type[Layer], input_shapes: Sequence[Sequence[int]],
                            **config: Any) -> None:
    """``get_config`` is plain JSON data and ``from_config`` rebuilds an equal layer."""
    name = layer_class.name
    layer = construct(layer_class, config)
    got = layer.get_config()
    try:
        text = json.dumps(got, sort_keys=True)
    except TypeError as exc:
        raise AssertionError(f"{name}: get_config() is not plain JSON data: {exc}") from None
    if "dtype" not in got:
        raise AssertionError(f"{name}: get_config() lacks 'dtype' (pass it to "
                             f"Layer.__init__ and accept it as a keyword)")
    again = layer_class.from_config(json.loads(text))
    if json.dumps(again.get_config(), sort_keys=True) != text:
        raise AssertionError(f"{name}: from_config(get_config()) changed the config: "
                             f"{got} -> {again.get_config()}")
    a = make_layer(layer_class, input_shapes, build_seed=7, **config)
    b = make_layer(layer_class, input_shapes, build_seed=7, **json.loads(text))
    if a.output_shapes != b.output_shapes or sorted(a.params) != sorted(b.params):
        raise AssertionError(f"{name}: a layer rebuilt from its config has outputs "
                             f"{b.output_shapes} and params {sorted(b.params)}, the original "
                             f"{a.output_shapes} and {sorted(a.params)}")
    for pname, value in a.params.items():
        b.params[pname][...] = value
    arrays = sample_inputs(layer_class, input_shapes, batch=2,
                           dtype=config.get("dtype", "float32"), seed=7)
    for k, (x, y) in enumerate(zip(a.forward(_copies(arrays), train=False)[0],
                                   b.forward(_copies(arrays), train=False)[0], strict=True)):
        if not np.array_equal(x, y):
            raise AssertionError(f"{name}: a layer rebuilt from get_config() {got} computes a "
                                 f"different output {k} from the original: a hyper-parameter "
                                 f"is not stored under its own name")
    # a training forward too: a hyper-parameter may only steer state (a momentum)
    for k, (x, y) in enumerate(zip(a.forward(_copies(arrays), train=True)[0],
                                   b.forward(_copies(arrays), train=True)[0], strict=True)):
        if not np.array_equal(x, y):
            raise AssertionError(f"{name}: a layer rebuilt from get_config() {got} computes a "
                                 f"different training output {k} from the original: a "
                                 f"hyper-parameter is not stored under its own name")
    for pname, value in a.params.items():
        if not np.array_equal(b.params[pname], value):
            raise AssertionError(f"{name}: after a training forward, {pname!r} of a layer "
                                 f"rebuilt from get_config() {got} differs from the "
                                 f"original's: a hyper-parameter is not stored under its own "
                                 f"name")


def _temporary_registry(layer_class: type[Layer]) -> tuple[Any, Any] | None:
    """Make sure ``layer_class`` is what the registry returns for its name (for layers
    defined in a test): returns (previous registry, temporary one) or None when no change
    is needed. Raises AssertionError when another class already holds the name."""

    current = get_registry()
    if layer_class.name in current.names("layer"):
        if current.get("layer", layer_class.name) is layer_class:
            return None
        raise AssertionError(f"{layer_class.name}: the registry holds a different class under "
                             f"this name ({current.provider('layer', layer_class.name)}); a "
                             f"saved network could not be loaded back")
    temporary = Registry()
    module = types.ModuleType(f"conformance_{layer_class.name}")

    module.deltaprop_register_layers = hookimpl(lambda: [layer_class])  # type: ignore[attr-defined]
    temporary.register_plugin(module, name=module.__name__)
    reset_registry(temporary)
    return current, temporary


def check_save_load(layer_class: type[Layer], input_shapes: Sequence[Sequence[int]], *,
                    batch: int = 3, check_seed: int = 0, **config: Any) -> None:
    """Inside a network, the layer survives ``deltaprop.save`` / ``deltaprop.load``: the
    same parameters (state included) and the same inference outputs."""

    name = layer_class.name
    swapped = _temporary_registry(layer_class)
    try:
        dtype = config.get("dtype", "float32")
        layer = construct(layer_class, config)
        arrays = sample_inputs(layer_class, input_shapes, batch=batch, dtype=dtype,
                               seed=check_seed)
        inputs = [Input(tuple(s), name=f"in{i}", dtype=a.dtype.name)
                  for i, (s, a) in enumerate(zip(input_shapes, arrays, strict=True))]
        outs = layer(*inputs)
        outs = list(outs) if isinstance(outs, tuple) else [outs]
        net = Network(inputs, outs, name=f"conformance_{name}")
        net.forward(arrays, train=True)  # let train-mode state (running statistics) move
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "model.npz")
            save(net, path)
            loaded = load(path)
        if sorted(loaded.params) != sorted(net.params):
            raise AssertionError(f"{name}: saved parameters {sorted(net.params)}, loaded "
                                 f"{sorted(loaded.params)}")
        for key, value in net.params.items():
            if not np.array_equal(loaded.params[key], value):
                raise AssertionError(f"{name}: parameter {key} changed in a save/load round "
                                     f"trip")
            if loaded.params[key].dtype != value.dtype:
                raise AssertionError(f"{name}: parameter {key} was {value.dtype}, loaded as "
                                     f"{loaded.params[key].dtype}")
        for k, (a, b) in enumerate(zip(net.forward(arrays), loaded.forward(arrays), strict=True)):
            if not np.array_equal(a, b):
                raise AssertionError(f"{name}: output {k} in inference differs after a "
                                     f"save/load round trip (max difference "
                                     f"{float(np.max(np.abs(a - b))):.3g})")
    finally:
        if swapped is not None:
            reset_registry(swapped[0])


def check_no_per_call_state(layer_class: type[Layer], input_shapes: Sequence[Sequence[int]],
                            *, batch: int = 3, check_seed: int = 0, **config: Any) -> None:
    """Two forwards, then the backwards in reverse order, give the gradients each call
    gets on its own: everything backward needs travels in the cache."""
    name = layer_class.name
    config = {**config, "dtype": "float64"}
    layer = make_layer(layer_class, input_shapes, build_seed=check_seed, **config)
    x1 = sample_inputs(layer_class, input_shapes, batch=batch, dtype="float64", seed=check_seed + 1)
    x2 = sample_inputs(layer_class, input_shapes, batch=batch, dtype="float64", seed=check_seed + 2)
    start = copy.deepcopy(layer)
    rng = np.random.default_rng(check_seed + 3)
    out1, cache1 = layer.forward(_copies(x1), train=True)
    g1 = tuple(rng.standard_normal(o.shape) for o in out1)
    out2, cache2 = layer.forward(_copies(x2), train=True)
    g2 = tuple(rng.standard_normal(o.shape) for o in out2)
    interleaved2 = layer.backward(cache2, _copies(g2))  # copies: a write into grad_outputs
    interleaved1 = layer.backward(cache1, _copies(g1))  # is the read_only_arrays rule's
    alone = copy.deepcopy(start)
    _, c = alone.forward(_copies(x1), train=True)
    alone1 = alone.backward(c, _copies(g1))
    _, c = alone.forward(_copies(x2), train=True)
    alone2 = alone.backward(c, _copies(g2))
    for which, got, want in (("first", interleaved1, alone1), ("second", interleaved2, alone2)):
        for i, (a, b) in enumerate(zip(got[0], want[0], strict=True)):
            if (a is None) != (b is None) or (
                    a is not None and b is not None and not np.allclose(a, b)):
                raise AssertionError(
                    f"{name}: the {which} call's input {i} gradient changed when another "
                    f"forward ran before its backward: the layer keeps per-call state on "
                    f"itself instead of in the cache")
        for pname in want[1]:
            if pname not in got[1] or not np.allclose(got[1][pname], want[1][pname]):
                raise AssertionError(
                    f"{name}: the {which} call's gradient of {pname!r} changed when another "
                    f"forward ran before its backward: the layer keeps per-call state on "
                    f"itself instead of in the cache")


def check_cache_released(layer_class: type[Layer], input_shapes: Sequence[Sequence[int]], *,
                         batch: int = 3, check_seed: int = 0, **config: Any) -> None:
    """Inference keeps no cache; in a network the held cache bytes return to zero after
    backward; a cache does not hold the layer itself (which would keep it alive)."""

    name = layer_class.name
    dtype = config.get("dtype", "float32")
    layer = make_layer(layer_class, input_shapes, build_seed=check_seed, **config)
    arrays = sample_inputs(layer_class, input_shapes, batch=batch, dtype=dtype, seed=check_seed + 1)
    _, cache = layer.forward(_copies(arrays), train=False)
    if cache is not None:
        raise AssertionError(f"{name}: forward(train=False) returned a cache "
                             f"({type(cache).__name__}); inference must cache nothing")
    _, cache = layer.forward(_copies(arrays), train=True)
    if _holds(cache, layer):
        raise AssertionError(f"{name}: the cache holds the layer object itself; cache only "
                             f"the arrays backward needs")
    fresh = construct(layer_class, config)
    inputs = [Input(tuple(s), dtype=a.dtype.name)
              for s, a in zip(input_shapes, arrays, strict=True)]
    outs = fresh(*inputs)
    outs = list(outs) if isinstance(outs, tuple) else [outs]
    net = Network(inputs, outs)
    results = net.forward(arrays, train=True)
    net.backward([np.ones_like(r) for r in results])
    if net.cache_bytes != 0:
        raise AssertionError(f"{name}: {net.cache_bytes} bytes still held in caches after "
                             f"backward")
    net.forward(arrays, train=False)
    if net.cache_bytes != 0:
        raise AssertionError(f"{name}: inference held {net.cache_bytes} bytes of cache")


def _holds(obj: Any, target: object, depth: int = 0) -> bool:
    if obj is target:
        return True
    if depth > 3:
        return False
    if isinstance(obj, (tuple, list)):
        return any(_holds(o, target, depth + 1) for o in obj)
    if isinstance(obj, dict):
        return any(_holds(o, target, depth + 1) for o in obj.values())
    return False


def check_train_inference(layer_class: type[Layer], input_shapes: Sequence[Sequence[int]], *,
                          batch: int = 3, check_seed: int = 0, **config: Any) -> None:
    """Inference is deterministic, changes no parameter, and gives outputs of the declared
    shapes; a training forward changes no trainable parameter (train and inference may
    differ, as dropout and batch norm do). Writes into inputs are ``read_only_arrays``'s."""
    name = layer_class.name
    dtype = config.get("dtype", "float32")
    layer = make_layer(layer_class, input_shapes, build_seed=check_seed, **config)
    arrays = sample_inputs(layer_class, input_shapes, batch=batch, dtype=dtype, seed=check_seed + 1)
    before = {k: v.copy() for k, v in layer.params.items()}
    first, _ = layer.forward(_copies(arrays), train=False)
    _check_outputs(name, first, layer, batch, dtype)
    second, _ = layer.forward(_copies(arrays), train=False)
    for k, (a, b) in enumerate(zip(first, second, strict=True)):
        if not np.array_equal(a, b):
            raise AssertionError(f"{name}: two inference calls on the same input gave "
                                 f"different output {k}")
    for key, value in before.items():
        if not np.array_equal(layer.params[key], value):
            raise AssertionError(f"{name}: inference changed parameter {key!r}")
    snapshot = {k: v.copy() for k, v in layer.params.items()}
    outputs, _ = layer.forward(_copies(arrays), train=True)
    _check_outputs(name, outputs, layer, batch, dtype)
    for key in trainable_names(layer):
        if not np.array_equal(layer.params[key], snapshot[key]):
            raise AssertionError(f"{name}: a train-mode forward changed trainable parameter "
                                 f"{key!r}; only the optimizer may")


def _copies(arrays: Iterable[np.ndarray]) -> tuple[np.ndarray, ...]:
    """Fresh writable copies, so that a layer writing into what it is handed fails only
    the rule about writes (``read_only_arrays``), not every check that reuses them."""
    return tuple(np.array(a) for a in arrays)


def check_dtypes(layer_class: type[Layer], input_shapes: Sequence[Sequence[int]], *,
                 batch: int = 3, check_seed: int = 0, **config: Any) -> None:
    """A float32 layer keeps float32 parameters, outputs and gradients, and a float64 one
    float64; the two agree to float32 precision."""
    name = layer_class.name
    results = {}
    for dtype in ("float32", "float64"):
        layer = make_layer(layer_class, input_shapes, build_seed=check_seed,
                           **{**config, "dtype": dtype})
        for pname, value in layer.params.items():
            if value.dtype != np.dtype(dtype):
                raise AssertionError(f"{name}: {dtype} layer has a {value.dtype} parameter "
                                     f"{pname!r}")
        arrays = sample_inputs(layer_class, input_shapes, batch=batch, dtype=dtype,
                               seed=check_seed + 1)
        for train in (False, True):
            outputs, cache = layer.forward(_copies(arrays), train=train)
            _check_outputs(name, outputs, layer, batch, dtype)
        rng = np.random.default_rng(check_seed + 2)
        grads = tuple(rng.standard_normal(o.shape).astype(dtype) for o in outputs)
        grad_inputs, grad_params = layer.backward(cache, grads)
        for i, (x, g) in enumerate(zip(arrays, grad_inputs, strict=True)):
            if g is not None and np.issubdtype(x.dtype, np.floating) and g.dtype != x.dtype:
                raise AssertionError(f"{name}: {dtype} layer returned a {g.dtype} gradient "
                                     f"for input {i}")
        for pname, g in grad_params.items():
            if g.dtype != np.dtype(dtype):
                raise AssertionError(f"{name}: {dtype} layer returned a {g.dtype} gradient "
                                     f"for parameter {pname!r}")
            if g.shape != layer.params[pname].shape:
                raise AssertionError(f"{name}: gradient of {pname!r} has shape {g.shape}, "
                                     f"the parameter {layer.params[pname].shape}")
        results[dtype] = outputs
    for k, (a, b) in enumerate(zip(results["float32"], results["float64"], strict=True)):
        scale = float(np.max(np.abs(b), initial=1.0))
        if not np.allclose(a, b, rtol=1e-3, atol=1e-4 * scale):
            raise AssertionError(f"{name}: float32 and float64 output {k} disagree beyond "
                                 f"float32 precision (max difference "
                                 f"{float(np.max(np.abs(a - b))):.3g})")


def wrong_input_shapes(layer_class: type[Layer], input_shapes: Sequence[Sequence[int]],
                       extra: Iterable[Sequence[Sequence[int]]] = ()
                       ) -> list[list[tuple[int, ...]]]:
    """Input shapes a layer must refuse: a wrong number of inputs, the class's own
    ``bad_input_shapes`` (a list of shape lists) when it declares them, and ``extra``
    (an example's ``bad_input_shapes``, for shapes wrong only under its config)."""
    shapes = [tuple(s) for s in input_shapes]
    cases: list[list[tuple[int, ...]]] = []
    n = layer_class.n_inputs
    if n is None:
        cases.append([])
    else:
        cases.append([*shapes, shapes[-1]])
        if n > 1:
            cases.append(shapes[:-1])
    declared = [*layer_class.bad_input_shapes, *extra]
    cases.extend([tuple(s) for s in case] for case in declared)
    return cases


def check_rejects_bad_shapes(layer_class: type[Layer], input_shapes: Sequence[Sequence[int]],
                             *, bad_input_shapes: Iterable[Sequence[Sequence[int]]] = (),
                             **config: Any) -> None:
    """``build`` refuses wrong shapes with a ShapeError naming them; through the functional
    API the message also names the node."""

    name = layer_class.name
    for bad in wrong_input_shapes(layer_class, input_shapes, bad_input_shapes):
        layer = construct(layer_class, config)
        try:
            call_build(layer, tuple(bad), np.random.default_rng(0))
        except ShapeError as exc:
            message = str(exc)
            if not message.strip():
                raise AssertionError(f"{name}: build({bad}) raised an empty ShapeError") from None
        except DeltapropError as exc:
            raise AssertionError(f"{name}: build({bad}) raised {type(exc).__name__}, expected "
                                 f"a ShapeError: {exc}") from None
        except Exception as exc:
            raise AssertionError(f"{name}: build({bad}) raised {type(exc).__name__}: {exc}; "
                                 f"raise deltaprop.errors.ShapeError with both shapes in the "
                                 f"message") from None
        else:
            raise AssertionError(f"{name}: build accepted the wrong input shapes {bad}")
        if bad:
            tensors = [Input(s) for s in bad]
            try:
                construct(layer_class, config)(*tensors, name="node_under_test")
            except ShapeError as exc:
                if "node_under_test" not in str(exc):
                    raise AssertionError(f"{name}: the error does not name the node: "
                                         f"{exc}") from None
            else:
                raise AssertionError(f"{name}: calling the layer on inputs of shapes {bad} "
                                     f"did not raise a ShapeError")


# -- cache size, state, recomputation, made-up shapes, read-only arrays -----------------
#: a training cache may hold this many times the bytes of the call's inputs, outputs and
#: parameters unless the layer's ``cache_allowance`` says why it needs more
DEFAULT_CACHE_FACTOR = 2.0


def cache_entries(cache: Any) -> list[tuple[str, np.ndarray]]:
    """``(where, array)`` for every array in a cache: inside tuples, lists, dicts and the
    attributes of plain objects, each path written as code would reach it."""
    found: list[tuple[str, np.ndarray]] = []
    stack: list[tuple[str, Any, int]] = [("cache", cache, 0)]
    seen: set[int] = set()
    while stack:
        path, item, depth = stack.pop()
        if isinstance(item, np.ndarray):
            found.append((path, item))
            continue
        if id(item) in seen or depth > 8 or isinstance(item, (Layer, type)):
            continue
        seen.add(id(item))
        if isinstance(item, (tuple, list)):
            stack.extend((f"{path}[{i}]", v, depth + 1) for i, v in enumerate(item))
        elif isinstance(item, dict):
            stack.extend((f"{path}[{k!r}]", v, depth + 1) for k, v in item.items())
        elif isinstance(getattr(item, "__dict__", None), dict):
            stack.extend((f"{path}.{k}", v, depth + 1) for k, v in vars(item).items())
    return sorted(found, key=lambda e: e[0])


def distinct_bytes(arrays: Iterable[np.ndarray]) -> int:
    """Bytes of the memory the arrays look at, each block counted once (views of one
    buffer, or an array held twice, cost what the largest of them covers)."""
    blocks: dict[int, int] = {}
    for array in arrays:
        root = array
        while isinstance(root.base, np.ndarray):
            root = root.base
        blocks[id(root)] = max(blocks.get(id(root), 0), min(array.nbytes, root.nbytes))
    return sum(blocks.values())


def check_cache_size(layer_class: type[Layer], input_shapes: Sequence[Sequence[int]], *,
                     batch: int = 3, check_seed: int = 0, **config: Any) -> None:
    """A training cache holds at most ``DEFAULT_CACHE_FACTOR`` times the bytes of the
    call's inputs, outputs and parameters, or the factor the layer's ``cache_allowance``
    declares with a reason; a larger one is reported entry by entry."""
    name = layer_class.name
    dtype = config.get("dtype", "float32")
    layer = make_layer(layer_class, input_shapes, build_seed=check_seed, **config)
    arrays = sample_inputs(layer_class, input_shapes, batch=batch, dtype=dtype,
                           seed=check_seed + 1)
    outputs, cache = layer.forward(_copies(arrays), train=True)
    footprint = distinct_bytes([*arrays, *outputs, *layer.params.values()])
    allowance = layer.cache_allowance()
    factor = DEFAULT_CACHE_FACTOR if allowance is None else float(allowance[0])
    entries = cache_entries(cache)
    held = distinct_bytes(a for _, a in entries)
    if held > factor * footprint:
        largest = sorted(entries, key=lambda e: -e[1].nbytes)[:6]
        listed = ", ".join(f"{path} {a.shape} {a.nbytes} B" for path, a in largest)
        why = ("the default bound; if the layer needs more, declare cache_allowance() -> "
               "(factor, reason)" if allowance is None else f"declared: {allowance[1]}")
        raise AssertionError(
            f"{name}: the training cache holds {held} bytes, {held / max(footprint, 1):.1f} "
            f"times the {footprint} bytes of inputs, outputs and parameters, over the bound "
            f"of {factor:g} times ({why}); largest entries: {listed}")


def layer_state(layer: Layer) -> dict[str, Any]:
    """A deep copy of everything on the layer: its attributes, and ``params`` by value."""
    state = copy.deepcopy({k: v for k, v in vars(layer).items() if k != "params"},
                          {id(layer.params): layer.params,
                           **{id(v): v for v in layer.params.values()}})
    state["params"] = {k: np.array(v) for k, v in layer.params.items()}
    return state


def state_changes(before: Any, after: Any, path: str = "layer") -> list[str]:
    """Where two snapshots of layer state differ (``layer.params['running_mean']``,
    ``layer._rng``): arrays by value, dtype and shape, containers and objects deeply."""
    if before is after:
        return []
    if isinstance(before, np.ndarray) or isinstance(after, np.ndarray):
        same = (isinstance(before, np.ndarray) and isinstance(after, np.ndarray)
                and before.shape == after.shape and before.dtype == after.dtype
                and np.array_equal(before, after,
                                   equal_nan=bool(np.issubdtype(before.dtype, np.inexact))))
        return [] if same else [path]
    if type(before) is not type(after):
        return [path]
    if isinstance(before, np.random.Generator):
        same = _plain(before.bit_generator.state) == _plain(after.bit_generator.state)
        return [] if same else [path]
    if isinstance(before, dict):
        changes = [f"{path}[{k!r}]" for k in set(before) ^ set(after)]
        for k in before.keys() & after.keys():
            changes += state_changes(before[k], after[k], f"{path}[{k!r}]")
        return changes
    if isinstance(before, (list, tuple)):
        if len(before) != len(after):
            return [path]
        return [c for i, (a, b) in enumerate(zip(before, after, strict=True))
                for c in state_changes(a, b, f"{path}[{i}]")]
    if isinstance(getattr(before, "__dict__", None), dict):
        return state_changes(vars(before), vars(after), path)
    try:
        return [] if bool(before == after) else [path]
    except Exception:  # (an object whose == is not a truth value)
        return [path]


def _plain(value: Any) -> Any:
    """A generator state (dicts of ints and arrays) as comparable plain data."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def _attribute_path(path: str) -> str:
    """``layer['_rng']`` (a key of ``layer_state``) as ``layer._rng``."""
    return re.sub(r"^layer\['([^']*)'\]", r"layer.\1", path)


def _declared_generators(layer: Layer) -> list[str]:
    """The layer's ``random_generators``, checked to be generators."""
    for attribute in layer.random_generators:
        if not isinstance(getattr(layer, attribute, None), np.random.Generator):
            raise AssertionError(f"{layer.name}: random_generators lists {attribute!r}, which "
                                 f"is not a numpy.random.Generator attribute of the layer")
    return [f"layer[{a!r}]" for a in layer.random_generators]


def check_state_in_params(layer_class: type[Layer], input_shapes: Sequence[Sequence[int]], *,
                          batch: int = 3, check_seed: int = 0, **config: Any) -> None:
    """A training forward changes nothing on the layer but its ``non_trainable`` params
    and declared ``random_generators``; backward and inference change nothing at all.
    State elsewhere is lost by save/load and shared by every node using the layer."""
    name = layer_class.name
    dtype = config.get("dtype", "float32")
    layer = make_layer(layer_class, input_shapes, build_seed=check_seed, **config)
    arrays = sample_inputs(layer_class, input_shapes, batch=batch, dtype=dtype,
                           seed=check_seed + 1)
    allowed = (*(f"layer['params'][{k!r}]" for k in layer.non_trainable),
               *_declared_generators(layer))

    def run(what: str, step: Callable[[], Any], allow: Sequence[str]) -> Any:
        before = layer_state(layer)
        result = step()
        changed = [_attribute_path(c) for c in state_changes(before, layer_state(layer))
                   if not c.startswith(tuple(allow))]
        if changed:
            raise AssertionError(
                f"{name}: {what} changed {', '.join(sorted(changed))} on the layer; state "
                f"belongs in params listed in non_trainable (saved with the weights, updated "
                f"by a training forward only), a random generator in random_generators")
        return result

    run("an inference forward", lambda: layer.forward(_copies(arrays), train=False), ())
    outputs, cache = run("a training forward",
                         lambda: layer.forward(_copies(arrays), train=True), allowed)
    run("backward", lambda: layer.backward(cache, tuple(np.ones_like(o) for o in outputs)), ())


def check_recomputable(layer_class: type[Layer], input_shapes: Sequence[Sequence[int]], *,
                       batch: int = 3, check_seed: int = 0, **config: Any) -> None:
    """A layer whose training forward changes state (running statistics, a generator)
    declares ``recomputable = False``; a recomputable one, run again on the same inputs
    as recomputation does, gives the same outputs and leaves the same state."""
    name = layer_class.name
    dtype = config.get("dtype", "float32")
    layer = make_layer(layer_class, input_shapes, build_seed=check_seed, **config)
    if not layer.recomputable:
        return
    if layer.random_generators:
        raise AssertionError(f"{name}: draws from random_generators "
                             f"{list(layer.random_generators)} yet is recomputable: recomputed "
                             f"draws differ from the first; set recomputable = False")
    arrays = sample_inputs(layer_class, input_shapes, batch=batch, dtype=dtype,
                           seed=check_seed + 1)
    before = layer_state(layer)
    first, _ = layer.forward(_copies(arrays), train=True)
    changed = [_attribute_path(c) for c in state_changes(before, layer_state(layer))]
    if changed:
        raise AssertionError(
            f"{name}: a training forward changed {', '.join(sorted(changed))}, yet the layer "
            f"is recomputable: under recomputation that update happens twice; set "
            f"recomputable = False")
    again, _ = layer.forward(_copies(arrays), train=True)
    for k, (a, b) in enumerate(zip(first, again, strict=True)):
        if not np.array_equal(a, b):
            raise AssertionError(f"{name}: recomputing the training forward on the same "
                                 f"inputs gave a different output {k}; a layer whose training "
                                 f"forward is random sets recomputable = False")


def made_up_shapes(input_shapes: Sequence[Sequence[int]]) -> list[list[tuple[int, ...]]]:
    """Wrong shapes the kit tries on every layer: each input missing its first axis, each
    with an extra leading axis, and, with several inputs, each later input one longer on
    its first and on its last axis than the example says."""
    shapes = [tuple(int(d) for d in s) for s in input_shapes]
    cases: list[list[tuple[int, ...]]] = []

    def replaced(i: int, shape: tuple[int, ...]) -> list[tuple[int, ...]]:
        return [shape if j == i else s for j, s in enumerate(shapes)]

    for i, shape in enumerate(shapes):
        if shape:
            cases.append(replaced(i, shape[1:]))
        cases.append(replaced(i, (2, *shape)))
        if i > 0 and shape:
            cases.append(replaced(i, (shape[0] + 1, *shape[1:])))
            if len(shape) > 1:
                cases.append(replaced(i, (*shape[:-1], shape[-1] + 1)))
    return [c for c in cases if c != shapes]


def _accepted_shapes_work(layer: Layer, shapes: list[tuple[int, ...]], dtype: str) -> None:
    """A layer that built for ``shapes`` runs on them and produces what build declared."""
    name = layer.name
    try:
        arrays = type(layer).sample_inputs(np.random.default_rng(5), shapes, 2, dtype)
        outputs, cache = layer.forward(_copies(arrays), train=True)
        _check_outputs(name, outputs, layer, 2, dtype)
        grad_inputs, _ = layer.backward(cache, tuple(np.ones_like(o) for o in outputs))
    except AssertionError as exc:
        raise AssertionError(f"build accepted input shapes {shapes}, then: {exc}") from None
    except Exception as exc:  # (the point: what a layer without shape checks raises)
        raise AssertionError(f"{name}: build accepted input shapes {shapes}, then the layer "
                             f"raised {type(exc).__name__}: {exc}; check shapes in build and "
                             f"raise deltaprop.errors.ShapeError") from None
    for i, (x, g) in enumerate(zip(arrays, grad_inputs, strict=False)):
        if g is not None and np.shape(g) != np.shape(x):
            raise AssertionError(f"{name}: build accepted input shapes {shapes}, then "
                                 f"backward gave input {i} a delta of shape {np.shape(g)}")


def check_made_up_shapes(layer_class: type[Layer], input_shapes: Sequence[Sequence[int]],
                         **config: Any) -> None:
    """On shapes the kit makes up (``made_up_shapes``), ``build`` raises ShapeError, or
    accepts them and the layer then produces the shapes it declared: never another
    exception, from build or later."""
    name = layer_class.name
    dtype = config.get("dtype", "float32")
    for shapes in made_up_shapes(input_shapes):
        layer = construct(layer_class, config)
        try:
            declared = call_build(layer, tuple(shapes), np.random.default_rng(0))
        except ShapeError:
            continue
        except Exception as exc:
            raise AssertionError(f"{name}: build({shapes}) raised {type(exc).__name__}: "
                                 f"{exc}; raise deltaprop.errors.ShapeError naming the "
                                 f"shapes") from None
        layer.input_shapes = tuple(shapes)
        layer.output_shapes = tuple(tuple(s) for s in declared)
        _accepted_shapes_work(layer, shapes, dtype)


def _read_only(arrays: Iterable[np.ndarray]) -> tuple[np.ndarray, ...]:
    copies = _copies(arrays)
    for a in copies:
        a.flags.writeable = False
    return copies


def _is_write_refused(exc: Exception) -> bool:
    """numpy's error for a write into a read-only array."""
    return isinstance(exc, ValueError) and "read-only" in str(exc)


def check_read_only_arrays(layer_class: type[Layer], input_shapes: Sequence[Sequence[int]],
                           *, batch: int = 3, check_seed: int = 0, **config: Any) -> None:
    """Forward and backward never write into inputs or ``grad_outputs``, whatever the
    values written: they are handed read-only, so any write raises."""
    name = layer_class.name
    dtype = config.get("dtype", "float32")
    layer = make_layer(layer_class, input_shapes, build_seed=check_seed, **config)
    arrays = sample_inputs(layer_class, input_shapes, batch=batch, dtype=dtype,
                           seed=check_seed + 1)
    stage = "an inference forward"
    try:
        layer.forward(_read_only(arrays), train=False)
        stage = "a training forward"
        outputs, cache = layer.forward(_read_only(arrays), train=True)
        stage = "backward"
        layer.backward(cache, tuple(np.ones_like(o) for o in outputs))
    except Exception as exc:
        if not _is_write_refused(exc):
            raise
        raise AssertionError(f"{name}: {stage} wrote into a read-only input ({exc}); the "
                             f"executor hands one array to several readers, so copy "
                             f"instead") from None
    outputs, cache = layer.forward(_copies(arrays), train=True)
    try:
        layer.backward(cache, _read_only(np.ones_like(o) for o in outputs))
    except Exception as exc:
        if not _is_write_refused(exc):
            raise
        raise AssertionError(f"{name}: backward wrote into a read-only grad_outputs array "
                             f"({exc}); compute new arrays instead") from None


# -- the whole kit -----------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    """One example of one layer, as every check receives it."""

    layer_class: type[Layer]
    input_shapes: list[tuple[int, ...]]
    config: dict[str, Any]
    bad_input_shapes: tuple[Any, ...] = ()
    check_seed: int = 0
    rtol: float = 1e-5
    atol: float = 1e-7

    @property
    def seeded(self) -> dict[str, Any]:
        return {"check_seed": self.check_seed, **self.config}


class NotApplicable(Exception):
    """Raised by a check that does not apply to a case; the case reports it skipped."""


#: The conformance checks, by name, in the order ``check_conformance`` runs them: each
#: takes a ``Case`` and raises AssertionError saying what broke. A new check is one
#: function registered with ``@conformance_check("name")``.
CHECKS: dict[str, Callable[[Case], Any]] = {}


def conformance_check(name: str) -> Callable[[Callable[[Case], Any]], Callable[[Case], Any]]:
    def register(check: Callable[[Case], Any]) -> Callable[[Case], Any]:
        CHECKS[name] = check
        return check
    return register


@conformance_check("gradients")
def _gradients(case: Case) -> GradientReport:
    return check_layer(case.layer_class, case.input_shapes, rtol=case.rtol, atol=case.atol,
                       **case.seeded)


#: how many random perturbations of the initial parameters ``gradients_perturbed`` tries
PERTURBATIONS = 2


@conformance_check("gradients_perturbed")
def _gradients_perturbed(case: Case) -> GradientReport:
    report = GradientReport()
    for draw in range(1, PERTURBATIONS + 1):
        one = check_layer(case.layer_class, case.input_shapes, rtol=case.rtol, atol=case.atol,
                          perturbation=draw, **case.seeded)
        report.checked += one.checked
        report.max_abs_error = max(report.max_abs_error, one.max_abs_error)
        report.max_rel_error = max(report.max_rel_error, one.max_rel_error)
    return report


conformance_check("config_round_trip")(
    lambda case: check_config_round_trip(case.layer_class, case.input_shapes, **case.config))
conformance_check("save_load")(
    lambda case: check_save_load(case.layer_class, case.input_shapes, **case.seeded))
conformance_check("no_per_call_state")(
    lambda case: check_no_per_call_state(case.layer_class, case.input_shapes, **case.seeded))
conformance_check("cache_released")(
    lambda case: check_cache_released(case.layer_class, case.input_shapes, **case.seeded))
conformance_check("cache_size")(
    lambda case: check_cache_size(case.layer_class, case.input_shapes, **case.seeded))
conformance_check("train_inference")(
    lambda case: check_train_inference(case.layer_class, case.input_shapes, **case.seeded))
conformance_check("state_in_params")(
    lambda case: check_state_in_params(case.layer_class, case.input_shapes, **case.seeded))
conformance_check("recomputable")(
    lambda case: check_recomputable(case.layer_class, case.input_shapes, **case.seeded))
conformance_check("read_only_arrays")(
    lambda case: check_read_only_arrays(case.layer_class, case.input_shapes, **case.seeded))
conformance_check("dtypes")(
    lambda case: check_dtypes(case.layer_class, case.input_shapes, **case.seeded))
conformance_check("rejects_bad_shapes")(
    lambda case: check_rejects_bad_shapes(case.layer_class, case.input_shapes,
                                          bad_input_shapes=case.bad_input_shapes,
                                          **case.config))
conformance_check("made_up_shapes")(
    lambda case: check_made_up_shapes(case.layer_class, case.input_shapes, **case.config))


@conformance_check("onnx_export")
def _onnx_export(case: Case) -> float:
    if not exports(case.layer_class, case.input_shapes, **case.config):
        raise NotApplicable("no ONNX converter, or onnx/onnxruntime not installed")
    return check_onnx_export(case.layer_class, case.input_shapes, **case.seeded)


class ConformanceFailure(AssertionError):
    """Every failed check of one case: ``failures`` maps check name -> what broke."""

    def __init__(self, report: ConformanceReport, failures: dict[str, str]) -> None:
        self.report = report
        self.failures = failures
        listed = "; ".join(f"conformance check {check!r} failed: {message}"
                           for check, message in failures.items())
        super().__init__(f"layer {report.layer!r} {report.input_shapes} {report.config}: "
                         f"{len(failures)} check(s) failed: {listed}")


def check_conformance(layer_class: type[Layer], input_shapes: Sequence[Sequence[int]], *,
                      checks: Iterable[str] | None = None, skip: Iterable[str] = (),
                      bad_input_shapes: Iterable[Sequence[Sequence[int]]] = (),
                      check_seed: int = 0, rtol: float = 1e-5, atol: float = 1e-7,
                      **config: Any) -> ConformanceReport:
    """Run the conformance checks (all of ``CHECKS`` by default) on one layer case:
    ``input_shapes`` and ``config`` as in an entry of the class's ``examples`` (whose
    optional ``bad_input_shapes`` go to the argument of that name).

    Every selected check runs, whatever the others found; raises ``ConformanceFailure``
    (an AssertionError) naming each failed check and what broke, or returns a report.
    """
    selected = list(CHECKS if checks is None else checks)
    unknown = sorted(set(selected) - set(CHECKS))
    if unknown:
        raise ValueError(f"unknown check(s) {unknown}; choose from {list(CHECKS)}")
    case = Case(layer_class, [tuple(s) for s in input_shapes], dict(config),
                tuple(bad_input_shapes), check_seed, rtol, atol)
    report = ConformanceReport(layer_class.name, case.input_shapes, dict(config))
    skipped = set(skip)
    failures: dict[str, str] = {}
    for check in selected:
        if check in skipped:
            report.outcomes[check] = "skipped"
            continue
        try:
            result = CHECKS[check](case)
        except NotApplicable:
            report.outcomes[check] = "skipped"
            continue
        except AssertionError as exc:
            failures[check] = " ".join(str(exc).split())
        except Exception as exc:  # (a third-party layer may raise anything)
            failures[check] = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
        else:
            if check == "gradients":
                report.gradients = result
            report.outcomes[check] = "ok"
            continue
        report.outcomes[check] = "failed"
    if failures:
        raise ConformanceFailure(report, failures)
    return report


def examples_problem(layer_class: type[Layer], example: Any) -> str | None:
    """Why ``example`` (an entry of the class's ``examples``, or ``{}`` for a class
    without usable ones) cannot be checked, in one line; None when it can."""
    examples = layer_class.examples
    if not isinstance(examples, (list, tuple)):
        return (f"`examples` must be a list of {{'config': {{...}}, 'input_shapes': "
                f"[...]}} dicts, got {type(examples).__name__}")
    if not examples:
        return "declares no `examples` (config and input shapes) to check"
    if not isinstance(example, dict):
        return f"an entry of `examples` is a {type(example).__name__}, not a dict"
    shapes = example.get("input_shapes")
    if not isinstance(shapes, (list, tuple)) or not all(
            isinstance(s, (list, tuple)) and all(isinstance(d, int) for d in s)
            for s in shapes):
        return (f"example {example!r}: 'input_shapes' must be a list of shapes (tuples of "
                f"ints, batch left out)")
    if not isinstance(example.get("config", {}), dict):
        return f"example {example!r}: 'config' must be a dict"
    return None


def layer_cases(layer_classes: Iterable[type[Layer]]) -> list[tuple[type[Layer], Any]]:
    """``(class, example)`` for every declared example; a class without examples, or
    whose ``examples`` is not a list, yields ``(class, {})`` so that it fails (see
    ``examples_problem``)."""
    cases: list[tuple[type[Layer], Any]] = []
    for cls in layer_classes:
        examples = cls.examples
        if not isinstance(examples, (list, tuple)) or not examples:
            cases.append((cls, {}))
        else:
            cases.extend((cls, example) for example in examples)
    return cases


def example_index(layer_class: type[Layer], example: Any) -> int | None:
    """Where ``example`` sits in the class's ``examples`` (None for the stand-in ``{}``)."""
    examples = layer_class.examples
    if not example or not isinstance(examples, (list, tuple)):
        return None
    found = [i for i, e in enumerate(examples) if e is example]
    found = found or [i for i, e in enumerate(examples) if e == example]
    return found[0] if found else None


@dataclass
class CaseResult:
    """One example of one layer through ``check_conformance``: passed, or why not."""

    layer: str
    example: int | None  # index in the class's ``examples``; None when it declares none
    ok: bool
    detail: str = ""  # the failures, each naming its check
    checks: int = 0  # how many checks passed
    max_rel_error: float | None = None  # of the float64 gradient check
    seconds: float = 0.0
    failures: dict[str, str] = field(default_factory=dict)  # check name -> what broke

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def conformance_results(layer_classes: Iterable[type[Layer]], *,
                        progress: bool = False) -> list[CaseResult]:
    """Every declared example of ``layer_classes`` through ``check_conformance``. Failures,
    and any exception a layer raises, are recorded rather than raised, so one broken
    layer does not hide the others (``deltaprop check`` prints these)."""
    import time

    from tqdm.auto import tqdm

    cases = layer_cases(layer_classes)
    results = []
    for cls, example in tqdm(cases, disable=not progress, unit="case", leave=False):
        index = example_index(cls, example)
        start = time.perf_counter()
        problem = examples_problem(cls, example)
        if problem is not None:
            results.append(CaseResult(cls.name, index, False, problem,
                                      failures={"examples": problem}))
            continue
        try:
            report = check_conformance(cls, example["input_shapes"],
                                       bad_input_shapes=example.get("bad_input_shapes", ()),
                                       **example.get("config", {}))
        except ConformanceFailure as exc:
            results.append(CaseResult(cls.name, index, False, str(exc),
                                      checks=len(exc.report.passed), failures=exc.failures,
                                      seconds=time.perf_counter() - start))
            continue
        except Exception as exc:  # (a config the layer refuses, an unknown option)
            detail = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
            results.append(CaseResult(cls.name, index, False, detail,
                                      failures={"example": detail},
                                      seconds=time.perf_counter() - start))
            continue
        gradients = report.gradients
        results.append(CaseResult(
            cls.name, index, True, checks=len(report.passed),
            max_rel_error=None if gradients is None else gradients.max_rel_error,
            seconds=time.perf_counter() - start))
    return results


def layers_of_distribution(distribution: str) -> list[type[Layer]]:
    """The layer classes the installed ``distribution`` registers (through the registry,
    so exactly what a user gets)."""

    registry = get_registry()
    wanted = normalized_name(distribution)
    found = [registry.get("layer", n) for n in registry.names("layer")
             if normalized_name(registry.provider("layer", n).distribution) == wanted]
    return found


def normalized_name(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


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
    trainable parameter, through the executor's fan-out sums, shared layers and
    multi-output nodes. Layers whose train mode is random or stateful are replayed from
    a copy taken before the first forward, as in ``check_layer``."""
    rng = np.random.default_rng(seed)
    inputs = [np.array(x) for x in inputs]
    snapshots = {id(layer): copy.deepcopy(layer) for layer in net.layers if _replays(layer)}
    outputs = net.forward(inputs, train=True)
    weights = [rng.standard_normal(o.shape) for o in outputs]
    grad_inputs = net.backward([w.copy() for w in weights])
    grads = {k: v.copy() for k, v in net.grads.items()}
    live_state = {id(layer): {k: v for k, v in layer.params.items()
                              if k not in trainable_names(layer)}
                  for layer in net.layers if _replays(layer)}

    def objective() -> float:
        for layer in net.layers:  # replay train mode from the state before the first call
            if not _replays(layer):
                continue
            twin = copy.deepcopy(snapshots[id(layer)])
            for key, value in vars(twin).items():
                if key != "params":
                    setattr(layer, key, value)
            for key in live_state[id(layer)]:
                layer.params[key][...] = twin.params[key]
        outs = net.executor().forward(inputs, train=True)  # its caches die with it
        return float(sum(np.sum(o * w) for o, w in zip(outs, weights, strict=True)))

    report = GradientReport()
    for i, (x, g) in enumerate(zip(inputs, grad_inputs, strict=True)):
        if np.issubdtype(x.dtype, np.floating):
            report.add(f"network input {i}", g, numeric_gradient(objective, x), rtol, atol)
    for key, value in net.params.items():
        if key in grads:
            report.add(f"network param {key}", grads[key], numeric_gradient(objective, value),
                       rtol, atol)
    return report
