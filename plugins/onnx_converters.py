"""ONNX converters of the built-in layers, registered through the same hook a third
party uses (``deltaprop_register_onnx_converters``).

Each converter turns one node into ONNX operators through the ``ExportContext`` it is
given and returns one value name per output. The layers' own layouts make most of
them direct: dense is ``x @ W + b``, conv weights are in ONNX's (filters, channels,
kernel...) layout. The recurrent cells reorder their gate blocks (deltaprop and
PyTorch: lstm i, f, g, o and gru r, z, n; ONNX: i, o, f, c and z, r, h), and gru
is exported with ``linear_before_reset=1``, PyTorch's formulation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from deltaprop import Layer, hookimpl
from deltaprop.plugins.conv import make_geometry
from deltaprop.plugins.recurrent import STATES

if TYPE_CHECKING:
    from deltaprop.export import ExportContext

Outputs = Sequence[str]


# -- dense, activations, softmax ------------------------------------------------------------
def dense(layer: Any, ctx: ExportContext) -> Outputs:
    (x,) = ctx.inputs
    if len(ctx.input_shapes[0]) == 1 and layer.use_bias:
        return (ctx.op("Gemm", [x, ctx.param("W"), ctx.param("b")]),)
    y = ctx.op("MatMul", [x, ctx.param("W")])  # over the last axis, any rank
    return (ctx.op("Add", [y, ctx.param("b")]) if layer.use_bias else y,)


def _elementwise(op_type: str) -> Callable[[Any, ExportContext], Outputs]:
    def convert(layer: Any, ctx: ExportContext) -> Outputs:
        return (ctx.op(op_type, list(ctx.inputs)),)

    convert.__doc__ = f"The layer as ONNX's {op_type}."
    return convert


def softmax(layer: Any, ctx: ExportContext) -> Outputs:
    return (ctx.op("Softmax", list(ctx.inputs), axis=layer.axis),)


# -- structural -----------------------------------------------------------------------------
def add(layer: Any, ctx: ExportContext) -> Outputs:
    if len(ctx.inputs) == 1:
        return (ctx.op("Identity", list(ctx.inputs)),)
    return (ctx.op("Sum", list(ctx.inputs)),)


def concat(layer: Any, ctx: ExportContext) -> Outputs:
    return (ctx.op("Concat", list(ctx.inputs), axis=layer.axis),)


def split(layer: Any, ctx: ExportContext) -> Outputs:
    sizes = [shape[_batched_axis(layer.axis, shape) - 1] for shape in ctx.output_shapes]
    return ctx.op_outputs("Split", [ctx.inputs[0], ctx.constant(sizes, "sizes")],
                          len(sizes), axis=layer.axis)


def _batched_axis(axis: int, shape: Sequence[int]) -> int:
    """``axis`` (batch counted as 0, may be negative) as an index into (batch, *shape)."""
    return axis % (len(shape) + 1)


def reshape(layer: Any, ctx: ExportContext) -> Outputs:
    """To the built output shape, the batch axis copied (0): covers flatten too."""
    return (ctx.reshape(ctx.inputs[0], [0, *ctx.output_shapes[0]]),)


def transpose(layer: Any, ctx: ExportContext) -> Outputs:
    """``axes`` permutes the non-batch axes, numbered from 1 (Keras' Permute)."""
    return (ctx.transpose(ctx.inputs[0], [0, *layer.axes]),)


# -- convolution and pooling ------------------------------------------------------------------
def conv(layer: Any, ctx: ExportContext) -> Outputs:
    """conv2d and conv1d: padding resolved to explicit pads exactly as the layer does
    (``same`` puts the odd pixel after)."""
    shape = ctx.input_shapes[0]
    if layer.spatial_dims == 1:
        padding = layer.padding if isinstance(layer.padding, str) else (0, layer.padding[0])
        geo = make_geometry(layer.name, (shape[0], 1, shape[1]), layer.filters,
                            (1, *layer.kernel_size), (1, *layer.stride), padding,
                            (1, *layer.dilation))
        pads = [geo.pl, geo.pr]
    else:
        geo = make_geometry(layer.name, shape, layer.filters, layer.kernel_size, layer.stride,
                            layer.padding, layer.dilation)
        pads = [geo.pt, geo.pl, geo.pb, geo.pr]
    inputs = [ctx.inputs[0], ctx.param("W")]
    if layer.use_bias:
        inputs.append(ctx.param("b"))
    return (ctx.op("Conv", inputs, kernel_shape=list(layer.kernel_size),
                   strides=list(layer.stride), dilations=list(layer.dilation), pads=pads),)


def _pool(op_type: str, **extra: Any) -> Callable[[Any, ExportContext], Outputs]:
    def convert(layer: Any, ctx: ExportContext) -> Outputs:
        geo = make_geometry(layer.name, ctx.input_shapes[0], ctx.input_shapes[0][0],
                            layer.kernel_size, layer.stride, layer.padding, (1, 1))
        return (ctx.op(op_type, [ctx.inputs[0]], kernel_shape=list(layer.kernel_size),
                       strides=list(layer.stride), pads=[geo.pt, geo.pl, geo.pb, geo.pr],
                       **extra),)

    convert.__doc__ = f"The pool as ONNX's {op_type} (padding as the layer counts it)."
    return convert


def global_avg_pool2d(layer: Any, ctx: ExportContext) -> Outputs:
    pooled = ctx.op("GlobalAveragePool", [ctx.inputs[0]])  # (N, C, 1, 1)
    return (ctx.op("Flatten", [pooled], axis=1),)


# -- embedding --------------------------------------------------------------------------------
def embedding(layer: Any, ctx: ExportContext) -> Outputs:
    """Gather rows of ``W``; ids arriving as floats are cast to int64 first."""
    ids = ctx.inputs[0]
    if not np.issubdtype(np.dtype(ctx.input_dtypes[0]), np.integer):
        ids = ctx.op("Cast", [ids], to=ctx.element_type("int64"))
    return (ctx.op("Gather", [ctx.param("W"), ids], axis=0),)


# -- recurrent --------------------------------------------------------------------------------
#: ONNX's gate order as indices into deltaprop's gate blocks
ONNX_GATE_ORDER = {"rnn": [0], "lstm": [0, 3, 1, 2], "gru": [1, 0, 2]}
ONNX_CELLS = {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}


def _gates(a: np.ndarray, cell: str, H: int) -> np.ndarray:
    """The gate blocks of ``a`` (last axis G*H) in ONNX's order."""
    blocks = [a[..., k * H:(k + 1) * H] for k in ONNX_GATE_ORDER[cell]]
    return np.concatenate(blocks, axis=-1)


def _cell_weights(params: Sequence[np.ndarray], cell: str, H: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ONNX's W (G*H, F), R (G*H, H) and B (2*G*H,) of one direction."""
    W_x, W_h, b_x, b_h = params
    return (_gates(W_x, cell, H).T, _gates(W_h, cell, H).T,
            np.concatenate([_gates(b_x, cell, H), _gates(b_h, cell, H)]))


def _sequence_op(ctx: ExportContext, cell: str, H: int, directions: list[str],
                 weights: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
                 x: str, states: list[list[str]], lengths: str | None, activation: str
                 ) -> tuple[str, ...]:
    """One ONNX RNN/LSTM/GRU over the batch-major sequence ``x``; ``states`` holds per
    direction its initial (h[, c]) values (empty lists: zeros). Returns Y (time,
    directions, batch, units), Y_h and (lstm) Y_c."""
    n_dir = len(directions)
    W, R, B = (np.stack([w[i] for w in weights]) for i in range(3))
    inputs = [ctx.transpose(x, [1, 0, 2]), ctx.constant(W, "W"), ctx.constant(R, "R"),
              ctx.constant(B, "B")]
    inputs.append("" if lengths is None else lengths)
    for k in range(STATES[cell]):
        if states[0]:
            parts = [ctx.unsqueeze(s[k], [0]) for s in states]
            inputs.append(parts[0] if n_dir == 1 else ctx.op("Concat", parts, axis=0))
        else:
            inputs.append("")
    starts = inputs[5:]  # the initial h (and c), or "" for zeros
    while inputs and inputs[-1] == "":
        inputs.pop()
    attributes: dict[str, Any] = {"hidden_size": H,
                                  "direction": "bidirectional" if n_dir == 2 else directions[0]}
    if cell == "rnn":
        attributes["activations"] = [activation.capitalize()] * n_dir
    if cell == "gru":
        attributes["linear_before_reset"] = 1
    values = ctx.op_outputs(ONNX_CELLS[cell], inputs, 1 + STATES[cell], **attributes)
    if lengths is None:
        return values
    # a sequence of length 0 ends in its initial state; some ONNX Runtime releases leave
    # that row of Y_h unwritten, so the graph says it explicitly
    empty = ctx.unsqueeze(ctx.op("Equal", [lengths, ctx.constant(
        np.zeros(1, np.int32), "no_steps")]), [0, 2])
    finals = [ctx.op("Where", [empty, start or ctx.constant(np.zeros(1, W.dtype), "zeros"),
                               final])
              for start, final in zip(starts, values[1:])]
    return (values[0], *finals)


def _lengths(ctx: ExportContext) -> str:
    """The lengths input as ONNX's sequence_lens: int32 of shape (batch,)."""
    flat = ctx.reshape(ctx.inputs[-1], [-1])
    return ctx.op("Cast", [flat], to=ctx.element_type("int32"))


def _direction_states(ctx: ExportContext, values: tuple[str, ...], n_dir: int, cell: str
                      ) -> list[str]:
    """Final states per direction as (batch, units): h then c of the forward direction,
    then those of the backward one."""
    finals = values[1:1 + STATES[cell]]
    if n_dir == 1:
        return [ctx.squeeze(v, [0]) for v in finals]
    halves = [ctx.op_outputs("Split", [v, ctx.constant([1, 1], "halves")], 2, axis=0)
              for v in finals]
    return [ctx.squeeze(halves[k][d], [0]) for d in range(2) for k in range(len(finals))]


def recurrent(layer: Any, ctx: ExportContext) -> Outputs:
    """rnn, lstm and gru, with every option: reverse, initial states, lengths
    (``sequence_lens``), return_sequences and return_state."""
    cell, H = layer.cell, layer.units
    n = STATES[cell]
    states = [list(ctx.inputs[1:1 + n])] if layer.initial_state else [[]]
    lengths = _lengths(ctx) if layer.use_lengths else None
    p = layer.params
    weights = [_cell_weights((p["W_x"], p["W_h"], p["b_x"], p["b_h"]), cell, H)]
    values = _sequence_op(ctx, cell, H, ["reverse" if layer.reverse else "forward"], weights,
                          ctx.inputs[0], states, lengths, layer.activation_name)
    if layer.return_sequences:
        first = ctx.transpose(ctx.squeeze(values[0], [1]), [1, 0, 2])
    else:
        first = ctx.squeeze(values[1], [0])
    return (first, *(_direction_states(ctx, values, 1, cell) if layer.return_state else []))


def bidirectional(layer: Any, ctx: ExportContext) -> Outputs:
    """Both directions in one ONNX op (``direction="bidirectional"``); outputs
    concatenated along features, forward first, as the layer does."""
    cell, H = layer.cell, layer.units
    n = STATES[cell]
    states: list[list[str]] = [[], []]
    if layer.initial_state:
        states = [list(ctx.inputs[1:1 + n]), list(ctx.inputs[1 + n:1 + 2 * n])]
    lengths = _lengths(ctx) if layer.use_lengths else None
    p = layer.params
    weights = [_cell_weights([p[f"{d}_{k}"] for k in ("W_x", "W_h", "b_x", "b_h")], cell, H)
               for d in ("forward", "backward")]
    values = _sequence_op(ctx, cell, H, ["forward", "reverse"], weights, ctx.inputs[0],
                          states, lengths, layer.activation)
    if layer.return_sequences:  # (T, 2, B, H) -> (B, T, 2, H) -> (B, T, 2H)
        first = ctx.reshape(ctx.transpose(values[0], [2, 0, 1, 3]), [0, 0, 2 * H])
    else:  # (2, B, H) -> (B, 2, H) -> (B, 2H)
        first = ctx.reshape(ctx.transpose(values[1], [1, 0, 2]), [0, 2 * H])
    return (first, *(_direction_states(ctx, values, 2, cell) if layer.return_state else []))


def time_distributed(layer: Any, ctx: ExportContext) -> Outputs:
    """The wrapped layer's own converter on (batch * time, ...) samples."""
    T, *step = ctx.input_shapes[0]
    flat = ctx.reshape(ctx.inputs[0], [-1, *step])
    outs = ctx.convert(layer.inner, [flat], [tuple(step)], ctx.input_dtypes)
    return tuple(ctx.reshape(value, [-1, T, *shape])
                 for value, shape in zip(outs, layer.inner.output_shapes))


CONVERTERS: dict[str, Callable[[Any, ExportContext], Outputs]] = {
    "dense": dense,
    "sigmoid": _elementwise("Sigmoid"),
    "tanh": _elementwise("Tanh"),
    "relu": _elementwise("Relu"),
    "softmax": softmax,
    "add": add,
    "concat": concat,
    "split": split,
    "flatten": reshape,
    "reshape": reshape,
    "transpose": transpose,
    "conv2d": conv,
    "conv1d": conv,
    "max_pool2d": _pool("MaxPool"),
    "avg_pool2d": _pool("AveragePool", count_include_pad=1),
    "global_avg_pool2d": global_avg_pool2d,
    "embedding": embedding,
    "rnn": recurrent,
    "lstm": recurrent,
    "gru": recurrent,
    "bidirectional": bidirectional,
    "time_distributed": time_distributed,
}


@hookimpl
def deltaprop_register_onnx_converters() -> dict[str, Callable[[Layer, Any], Outputs]]:
    return dict(CONVERTERS)
