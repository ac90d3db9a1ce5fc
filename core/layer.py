"""The layer protocol: forward returns outputs and what backward needs; backward turns
output deltas into input deltas and parameter gradients.

A layer keeps no per-call state on itself: everything a backward needs travels in
the cache that forward returns, so one layer object can sit at several nodes
(shared weights) and the executor decides how long each cache lives.

The minimal layer implements ``forward(inputs, *, train)`` and
``backward(cache, grad_outputs)``, and ``build(input_shapes)`` when it has
parameters or changes shapes. Everything else below is optional and declared here,
with what the executor does with it: ``rng`` and ``needs_grad`` are passed only to a
``build`` or ``backward`` whose signature takes them.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from .config import Configurable, check_dtype, config_problem
from .errors import ConfigError, DeltapropError, ModelFileError, ShapeError, add_context
from .tensor import Node, Shape, Tensor, build_rng, format_shapes, symbolic_inputs

if TYPE_CHECKING:
    from .export.onnx_graph import ExportContext
    from .loss import Loss

Arrays = tuple[np.ndarray, ...]
Grads = tuple[tuple[np.ndarray | None, ...], dict[str, np.ndarray]]
#: ``initializer(shape, *, fan_in, fan_out, rng) -> array``
Initializer = Callable[..., np.ndarray]

#: [bytes still allowed] while loading a file, so a declared shape cannot exhaust memory
_param_budget: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar(
    "deltaprop_param_budget", default=None)
#: name -> initializer; the registry installs its lookup here (it sits above this module)
_initializer_lookup: Callable[[str], Initializer] | None = None


def use_initializers(lookup: Callable[[str], Initializer]) -> None:
    """Where ``add_param`` finds an initializer given by name (the registry, at import)."""
    global _initializer_lookup
    _initializer_lookup = lookup


@contextlib.contextmanager
def parameter_budget(nbytes: int, source: str) -> Iterator[None]:
    """Within the block, layers may allocate at most ``nbytes`` of parameters in total;
    past that ``add_param`` refuses before allocating (loading untrusted files)."""
    token = _param_budget.set([nbytes, source])  # type: ignore[list-item]
    try:
        yield
    finally:
        _param_budget.reset(token)


class Layer(Configurable):
    """Base class of every layer.

    Subclasses set ``name`` (the registry name), take their hyper-parameters as
    keyword constructor arguments stored under the same attribute names, and
    implement ``forward`` and ``backward`` (and ``build`` when they have parameters or
    change shapes). The class attributes and methods below that have defaults are
    optional: each says which part of deltaprop reads it.

    Config:
        dtype: float32 or float64: the dtype of the layer's parameters and outputs.
    """

    kind: ClassVar[str] = "layer"
    name: ClassVar[str] = ""
    #: Cases the conformance kit and the registry-wide gradient check run:
    #: ``{"config": {...}, "input_shapes": [shape, ...]}`` (optionally
    #: ``"bad_input_shapes"``: input shapes wrong only under this config).
    examples: ClassVar[list[dict[str, Any]]] = []
    #: Input shapes (lists of shapes, batch left out) that ``build`` must reject with a
    #: ShapeError; the conformance kit tries each.
    bad_input_shapes: ClassVar[list[list[Shape]]] = []
    #: How many inputs the layer takes: an int, or None for "one or more".
    n_inputs: ClassVar[int | None] = 1
    #: True for layers whose output is ``f(input)`` element by element. With
    #: ``backward_from_output`` also defined, the fusion pass may merge the layer into
    #: the one before it (see ``fusable``).
    elementwise: ClassVar[bool] = False
    #: True when the derivative jumps at an input of zero (ReLU-like): ``sample_inputs``
    #: then keeps the gradient check's samples at least 0.1 away from it.
    kink_at_zero: ClassVar[bool] = False
    #: Entries of ``params`` that are state, not weights (batch-norm running statistics):
    #: saved and loaded with the weights, updated by the layer itself, never given a
    #: gradient nor touched by an optimizer.
    non_trainable: ClassVar[tuple[str, ...]] = ()
    #: True when ``forward_in_place`` may overwrite its single input; the executor calls
    #: it only after proving that nobody else holds that array.
    can_work_in_place: ClassVar[bool] = False
    #: False for layers whose training forward draws random numbers or updates state
    #: (dropout, batch statistics): recomputation then keeps their caches instead.
    recomputable: ClassVar[bool] = True
    #: False to keep the fusion pass from merging the element-wise activation after this
    #: layer into it (see ``fused_with``).
    fusable: ClassVar[bool] = True
    #: Attributes holding a ``numpy.random.Generator`` that a training forward draws from
    #: (dropout's mask generator): besides the ``non_trainable`` params, the only state a
    #: training forward may change. A layer that has them sets ``recomputable = False``;
    #: checkpoints keep their states, so a seeded run resumes bit for bit.
    random_generators: ClassVar[tuple[str, ...]] = ()

    def __init__(self, *, dtype: str = "float32", label: str | None = None) -> None:
        self.dtype = check_dtype(f"layer {self.name!r}", dtype)
        self.label = label
        self.params: dict[str, np.ndarray] = {}
        self.input_shapes: tuple[Shape, ...] | None = None
        self.output_shapes: tuple[Shape, ...] | None = None

    # -- shape inference -------------------------------------------------------------
    @property
    def built(self) -> bool:
        return self.input_shapes is not None

    def build(self, input_shapes: Sequence[Shape], rng: np.random.Generator | None = None
              ) -> tuple[Shape, ...]:
        """Infer output shapes, one per output (batch dimension left out), and create
        ``params`` with ``add_param``. ``rng`` is optional in an override's signature.

        The default suits element-wise layers: one input, same shape out.
        """
        self.expect_inputs(input_shapes)
        return (tuple(input_shapes[0]),)

    def expect_inputs(self, input_shapes: Sequence[Shape], count: int | None = None,
                      ndim: int | None = None) -> None:
        """Raise a ShapeError unless there are ``count`` inputs (default ``n_inputs``),
        each of ``ndim`` dimensions when given (batch left out)."""
        count = self.n_inputs if count is None else count
        if count is None:
            if len(input_shapes) < 1:
                raise ShapeError(f"{self.name} takes one or more inputs, got none")
        elif len(input_shapes) != count:
            raise ShapeError(f"{self.name} takes {count} input(s), got {len(input_shapes)}")
        if ndim is not None:
            for shape in input_shapes:
                if len(shape) != ndim:
                    raise ShapeError(
                        f"{self.name} expects inputs of shape with {ndim} dimension(s) "
                        f"(batch left out), got {tuple(shape)}"
                    )

    def add_param(self, name: str, shape: Shape, initializer: str | Initializer,
                  rng: np.random.Generator | None, *, fan_in: int = 1, fan_out: int = 1
                  ) -> np.ndarray:
        """Create ``params[name]`` of ``shape`` in the layer's dtype.

        ``initializer`` is a registry name (``"glorot_uniform"``, ``"zeros"``...) or a
        function ``init(shape, *, fan_in, fan_out, rng)``. The fans are yours to state
        (a conv kernel's fan-in is in_channels * kernel area); ``rng`` None draws from a
        fresh generator.
        """
        budget = _param_budget.get()
        if budget is not None:
            need = int(np.prod(shape, dtype=np.float64)) * np.dtype(self.dtype).itemsize
            if need > budget[0]:
                raise ModelFileError(f"{budget[1]}: parameter {name!r} of layer {self.name!r} "
                                     f"would need {need} bytes for shape {tuple(shape)}, more "
                                     f"than the file holds; refused before allocating")
            budget[0] -= need
        if isinstance(initializer, str):
            if _initializer_lookup is None:
                raise ConfigError(f"layer {self.name!r}: initializer {initializer!r} given by "
                                  f"name, but no registry is loaded")
            init = _initializer_lookup(initializer)
        else:
            init = initializer
        rng = rng if rng is not None else np.random.default_rng()
        value = np.ascontiguousarray(  # contiguous, so in-place updates reach the param
            init(tuple(shape), fan_in=fan_in, fan_out=fan_out, rng=rng), dtype=self.dtype)
        if value.shape != tuple(shape):
            raise ShapeError(f"initializer {initializer!r} returned shape {value.shape}, "
                             f"expected {tuple(shape)}")
        self.params[name] = value
        return value

    # -- computation -----------------------------------------------------------------
    def forward(self, inputs: Arrays, *, train: bool) -> tuple[Arrays, Any]:
        """Return ``(outputs, cache)``: a tuple with one array per output, and what
        backward needs (None when ``train`` is false; None also when backward needs
        nothing)."""
        raise NotImplementedError(f"layer {self.name!r} does not implement forward")

    def backward(self, cache: Any, grad_outputs: Arrays, *,
                 needs_grad: Sequence[bool] | None = None) -> Grads:
        """Return ``(grad_inputs, grad_params)``: one delta per input and a dict of
        parameter gradients keyed like ``params``.

        ``grad_outputs`` has one delta per output; an output nobody used gets zeros.
        ``needs_grad[i]`` false (optional in an override's signature) means the
        executor discards the delta of input i, so the layer may return None there
        and skip the work.
        """
        raise NotImplementedError(f"layer {self.name!r} does not implement backward")

    def forward_in_place(self, inputs: Arrays, *, train: bool) -> tuple[Arrays, Any]:
        """Like ``forward``, but may write the output into ``inputs[0]`` (only called on
        layers with ``can_work_in_place`` and arrays nobody else holds)."""
        return self.forward(inputs, train=train)

    def backward_from_output(self, y: np.ndarray, grad: np.ndarray) -> np.ndarray:
        """For an element-wise layer whose derivative is written from its output ``y``:
        the delta of its input given the delta ``grad`` of its output. Defining it lets
        the fusion pass merge the layer into the one before it."""
        raise NotImplementedError(f"layer {self.name!r} does not define backward_from_output")

    def fused_with(self, activation: Layer) -> Layer | None:
        """A layer of your own computing ``activation(self(x))`` in one node, or None
        (the default) to let the executor's generic fused step run the pair, which it
        does when ``fusable`` is true."""
        return None

    def loss_on_input(self, loss: Loss) -> Loss | None:
        """A loss which, applied to this layer's input, equals ``loss`` applied to its
        output (softmax followed by cross-entropy is cross-entropy of the logits).
        Training then skips this layer and uses that loss, computed in one pass. None
        (the default): no such loss."""
        return None

    # -- leaving deltaprop -----------------------------------------------------------------
    def to_onnx(self, ctx: ExportContext) -> Sequence[str]:
        """Write this layer as ONNX operators (``deltaprop export``): emit them through
        ``ctx`` (``ctx.op``, ``ctx.param``, ``ctx.constant``) on the value names
        ``ctx.inputs`` and return one value name per output. Optional: a plugin may
        instead register a converter for the layer's name through the
        ``deltaprop_register_onnx_converters`` hook (docs/onnx.md). Without either, the
        export stops naming the node and the layer."""
        raise NotImplementedError(f"layer {self.name!r} defines no ONNX converter")

    # -- state carried across calls (truncated BPTT, generation) -----------------------
    def carries_state(self) -> bool:
        """True when the layer's state can run on from one call to the next (a
        recurrent cell without initial-state inputs); the executor then calls
        ``forward_with_state`` when the caller carries state."""
        return False

    def forward_with_state(self, inputs: Arrays, *, train: bool, state: Any
                           ) -> tuple[Arrays, Any, Any]:
        """``forward`` starting from ``state`` (None: the layer's usual start), also
        returning the final state to start the next call from: ``(outputs, cache,
        final_state)``. No gradient flows into ``state``."""
        raise NotImplementedError(f"layer {self.name!r} carries no state")

    # -- for the trace of a training step (``Network.trace``) ---------------------------
    def describe_backward(self, input_shapes: Sequence[Shape]) -> str | None:
        """The backward rule in the notation of the docs, with this node's shapes
        (``input_shapes``, batch left out), shown next to the numbers of a trace; e.g.
        ``Δx = Δ' · Wᵀ, W (64, 32)``. Δ' is the delta arriving on the output, ⊙ the
        element-wise product. None (the default): the trace shows only the numbers."""
        return None

    def saturation(self, output: np.ndarray) -> tuple[str, float] | None:
        """For an activation, the share of ``output`` where the derivative is (nearly)
        zero and what that is called (``("saturated", 0.12)``, ``("dead", 0.3)``):
        the trace shows it. None (the default): nothing to say."""
        return None

    # -- for the conformance kit -----------------------------------------------------
    def cache_allowance(self) -> tuple[float, str] | None:
        """``(factor, why)`` when a training cache needs more than the conformance kit's
        default bound: up to ``factor`` times the bytes of the call's inputs, outputs and
        parameters (a convolution's unfolded input, a recurrent layer's gates at every
        step). None (the default) keeps the kit's bound."""
        return None

    @classmethod
    def sample_inputs(cls, rng: np.random.Generator, input_shapes: Sequence[Shape],
                      batch: int, dtype: str) -> list[np.ndarray]:
        """Inputs on which finite differences are meaningful (away from kinks)."""
        xs = [rng.standard_normal((batch, *shape)).astype(dtype) for shape in input_shapes]
        if cls.kink_at_zero:
            xs = [x + np.where(x >= 0, 0.1, -0.1).astype(dtype) for x in xs]
        return xs

    # -- the functional API ------------------------------------------------------------
    def __call__(self, *inputs: Any, name: str | None = None) -> Any:
        """Apply the layer to symbolic tensors: builds it on first use and records a
        node; returns its output tensor (a tuple of them for several outputs)."""
        where = f"node {name or self.label or self.name!r} ({self.name})"
        tensors = symbolic_inputs(inputs, where)
        for t in tensors:
            t.node.read_by(self.dtype, where)
        shapes = tuple(t.shape for t in tensors)
        if not self.built:
            try:
                output_shapes = call_build(self, shapes, build_rng())
            except Exception as exc:
                context = where
                if isinstance(exc, DeltapropError):
                    context += f" with input shapes {format_shapes(shapes)}"
                add_context(exc, context)
                raise
            self.input_shapes = shapes
            self.output_shapes = tuple(tuple(int(d) for d in s) for s in output_shapes)
            problem = config_problem(self)  # before training, not when the model is saved
            if problem:
                raise ConfigError(f"{where}: {problem}")
        elif shapes != self.input_shapes:
            raise ShapeError(f"{where}: this layer is shared and was built for input shapes "
                             f"{format_shapes(self.input_shapes)}, got {format_shapes(shapes)}")
        assert self.output_shapes is not None
        node = Node(self, tensors, self.output_shapes,
                    [self.dtype] * len(self.output_shapes), name)
        outputs: tuple[Tensor, ...] = node.outputs
        return outputs[0] if len(outputs) == 1 else outputs

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        label = f" label={self.label!r}" if self.label else ""
        return f"<{type(self).__name__} {self.name!r}{label} ({args})>"


# -- what the executor asks of a layer class, decided once per class ----------------------
def overrides(layer: Layer, method: str) -> bool:
    """True when ``layer``'s class defines its own ``method`` of the protocol."""
    return getattr(type(layer), method) is not getattr(Layer, method)


@functools.cache
def _takes(function: Callable[..., Any], argument: str) -> bool:
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return True
    return argument in parameters or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


def build_takes_rng(layer_class: type[Layer]) -> bool:
    return _takes(layer_class.build, "rng")


def backward_takes_needs_grad(layer_class: type[Layer]) -> bool:
    return _takes(layer_class.backward, "needs_grad")


def call_build(layer: Layer, input_shapes: Sequence[Shape],
               rng: np.random.Generator | None) -> tuple[Shape, ...]:
    """``layer.build`` with ``rng`` when its signature takes it."""
    if build_takes_rng(type(layer)):
        return tuple(layer.build(input_shapes, rng=rng))
    return tuple(layer.build(input_shapes))


def call_backward(layer: Layer, cache: Any, grad_outputs: Arrays,
                  needs_grad: Sequence[bool] | None = None) -> Grads:
    """``layer.backward`` with ``needs_grad`` when its signature takes it."""
    if needs_grad is not None and backward_takes_needs_grad(type(layer)):
        return layer.backward(cache, grad_outputs, needs_grad=needs_grad)
    return layer.backward(cache, grad_outputs)


def derivative_from_output(layer: Layer) -> bool:
    """An element-wise, single-input layer whose backward needs only its output."""
    return layer.elementwise and layer.n_inputs == 1 and overrides(layer, "backward_from_output")
