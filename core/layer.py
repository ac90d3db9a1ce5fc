"""The layer protocol: forward returns outputs and what backward needs; backward turns
output deltas into input deltas and parameter gradients.

A layer keeps no per-call state on itself: everything a backward needs travels in
the cache that forward returns, so one layer object can sit at several nodes
(shared weights) and the executor decides how long each cache lives.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar

import numpy as np

from .config import Configurable, check_dtype
from .errors import ModelFileError, ShapeError

Shape = tuple[int, ...]
Arrays = tuple[np.ndarray, ...]

#: [bytes still allowed] while loading a file, so a declared shape cannot exhaust memory
_param_budget: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar(
    "deltaprop_param_budget", default=None)


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
    implement ``build``, ``forward`` and ``backward``.
    """

    kind: ClassVar[str] = "layer"
    name: ClassVar[str] = ""
    #: Cases the conformance kit and the registry-wide gradient check run:
    #: ``{"config": {...}, "input_shapes": [shape, ...]}``.
    examples: ClassVar[list[dict[str, Any]]] = []
    #: How many inputs the layer takes: an int, or None for "one or more".
    n_inputs: ClassVar[int | None] = 1
    #: True for layers whose output is ``f(input)`` element by element (fusion, in-place).
    #: An element-wise layer whose derivative is written from its output also defines
    #: ``backward_from_output(y, g) -> delta of the input``: the fusion pass then merges it
    #: into the layer before it (see ``deltaprop.passes``).
    elementwise: ClassVar[bool] = False
    #: True when the derivative jumps at an input of zero (ReLU-like): ``sample_inputs``
    #: then keeps the gradient check's samples at least 0.1 away from it.
    kink_at_zero: ClassVar[bool] = False
    #: Entries of ``params`` that are state, not weights (batch-norm running statistics):
    #: saved and loaded with the weights, updated by the layer itself, never given a
    #: gradient nor touched by an optimizer.
    non_trainable: ClassVar[tuple[str, ...]] = ()
    #: True when ``forward_in_place`` may overwrite its single input; the executor calls
    #: it only after proving that nobody else holds that array (``deltaprop.memory``).
    can_work_in_place: ClassVar[bool] = False
    #: False for layers whose training forward draws random numbers or updates state
    #: (dropout, batch statistics): recomputation then keeps their caches instead.
    recomputable: ClassVar[bool] = True

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
        """Infer output shapes (batch dimension left out) and create ``params``.

        The default suits element-wise layers: one input, same shape out.
        """
        self.expect_inputs(input_shapes)
        return (tuple(input_shapes[0]),)

    def expect_inputs(self, input_shapes: Sequence[Shape], count: int | None = None,
                      ndim: int | None = None) -> None:
        """Raise a ShapeError unless there are ``count`` inputs of ``ndim`` dimensions."""
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

    def add_param(self, name: str, shape: Shape, initializer: str | Callable[..., np.ndarray],
                  rng: np.random.Generator | None, *, fan_in: int = 1, fan_out: int = 1
                  ) -> np.ndarray:
        """Create ``params[name]`` with a named initializer from the registry."""
        from .registry import get_initializer

        budget = _param_budget.get()
        if budget is not None:
            need = int(np.prod(shape, dtype=np.float64)) * np.dtype(self.dtype).itemsize
            if need > budget[0]:
                raise ModelFileError(f"{budget[1]}: parameter {name!r} of layer {self.name!r} "
                                     f"would need {need} bytes for shape {tuple(shape)}, more "
                                     f"than the file holds; refused before allocating")
            budget[0] -= need
        init = get_initializer(initializer) if isinstance(initializer, str) else initializer
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
        """Return ``(outputs, cache)``; the cache is None when ``train`` is false."""
        raise NotImplementedError(f"layer {self.name!r} does not implement forward")

    def backward(self, cache: Any, grad_outputs: Arrays, *,
                 needs_grad: Sequence[bool] | None = None
                 ) -> tuple[tuple[np.ndarray | None, ...], dict[str, np.ndarray]]:
        """Return ``(grad_inputs, grad_params)``.

        ``needs_grad[i]`` false means the executor will discard the delta of input i,
        so a layer may return None there and skip the work.
        """
        raise NotImplementedError(f"layer {self.name!r} does not implement backward")

    def forward_in_place(self, inputs: Arrays, *, train: bool) -> tuple[Arrays, Any]:
        """Like ``forward``, but may write the output into ``inputs[0]`` (only called on
        layers with ``can_work_in_place`` and arrays nobody else holds)."""
        return self.forward(inputs, train=train)

    def fused_with(self, activation: Layer) -> Layer | None:
        """The fused form of this layer followed by the element-wise ``activation``, or
        None to refuse fusion. The default, generic form runs the two in one node."""
        from .passes import FusedActivation

        return FusedActivation(self, activation)

    # -- for the conformance kit -----------------------------------------------------
    @classmethod
    def sample_inputs(cls, rng: np.random.Generator, input_shapes: Sequence[Shape],
                      batch: int, dtype: str) -> list[np.ndarray]:
        """Inputs on which finite differences are meaningful (away from kinks)."""
        xs = [rng.standard_normal((batch, *shape)).astype(dtype) for shape in input_shapes]
        if cls.kink_at_zero:
            xs = [x + np.where(x >= 0, 0.1, -0.1).astype(dtype) for x in xs]
        return xs

    def __call__(self, *inputs: Any, name: str | None = None) -> Any:
        """Apply the layer to symbolic tensors (the functional API)."""
        from .graph import apply_layer

        return apply_layer(self, inputs, node_name=name)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        label = f" label={self.label!r}" if self.label else ""
        return f"<{type(self).__name__} {self.name!r}{label} ({args})>"
