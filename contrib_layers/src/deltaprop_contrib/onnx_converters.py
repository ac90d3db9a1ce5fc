"""ONNX converters of the contrib layers, registered through deltaprop's
``deltaprop_register_onnx_converters`` hook as any third-party package would.

Each writes the layer's inference forward: dropout is the identity and batch norm
uses its running statistics. Operators that only newer opsets have (Gelu from 20,
LayerNormalization from 17) are used there and spelled out in plain operators below.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from deltaprop import hookimpl

if TYPE_CHECKING:
    from deltaprop.export import ExportContext

Outputs = Sequence[str]


def dropout(layer: Any, ctx: ExportContext) -> Outputs:
    """The identity: the network's output keeps its own name (the exporter adds an
    Identity where a network output needs one)."""
    return (ctx.inputs[0],)


def batch_norm(layer: Any, ctx: ExportContext) -> Outputs:
    """``(x - running_mean) * scale + beta`` with ``scale = gamma / sqrt(running_var +
    eps)`` over the feature axis, as the layer computes it at inference; ONNX's
    BatchNormalization where the feature axis is axis 1."""
    (x,) = ctx.inputs
    shape = ctx.input_shapes[0]
    ndim = len(shape) + 1
    axis = layer.axis % ndim
    if axis == 1:
        return (ctx.op("BatchNormalization",
                       [x, ctx.param("gamma"), ctx.param("beta"), ctx.param("running_mean"),
                        ctx.param("running_var")], epsilon=float(layer.eps)),)
    broadcast = [1] * ndim
    broadcast[axis] = shape[axis - 1]
    p = layer.params
    inv_std = 1 / np.sqrt(p["running_var"] + layer.eps)
    scale = (p["gamma"] * inv_std).astype(layer.dtype).reshape(broadcast[1:])
    centered = ctx.op("Sub", [x, ctx.constant(p["running_mean"].reshape(broadcast[1:]),
                                              "running_mean")])
    scaled = ctx.op("Mul", [centered, ctx.constant(scale, "scale")])
    return (ctx.op("Add", [scaled, ctx.constant(p["beta"].reshape(broadcast[1:]), "beta")]),)


def layer_norm(layer: Any, ctx: ExportContext) -> Outputs:
    (x,) = ctx.inputs
    features = ctx.input_shapes[0][-1]
    if layer.elementwise_affine:
        gamma, beta = ctx.param("gamma"), ctx.param("beta")
    else:
        gamma = ctx.constant(np.ones(features, dtype=layer.dtype), "gamma")
        beta = ctx.constant(np.zeros(features, dtype=layer.dtype), "beta")
    if ctx.opset >= 17:
        return (ctx.op("LayerNormalization", [x, gamma, beta], axis=-1,
                       epsilon=float(layer.eps)),)
    centered = ctx.op("Sub", [x, ctx.reduce_mean(x, [-1])])
    var = ctx.reduce_mean(ctx.op("Mul", [centered, centered]), [-1])
    std = ctx.op("Sqrt", [ctx.op("Add", [var, ctx.constant(np.float64(layer.eps))])])
    normalized = ctx.op("Div", [centered, std])
    return (ctx.op("Add", [ctx.op("Mul", [normalized, gamma]), beta]),)


def gelu(layer: Any, ctx: ExportContext) -> Outputs:
    (x,) = ctx.inputs
    if ctx.opset >= 20:
        return (ctx.op("Gelu", [x], approximate=layer.approximate),)
    half_x = ctx.op("Mul", [x, ctx.constant(0.5, "half")])
    if layer.approximate == "tanh":
        cube = ctx.op("Mul", [ctx.op("Mul", [x, x]), x])
        inner = ctx.op("Add", [x, ctx.op("Mul", [cube, ctx.constant(0.044715, "c")])])
        phi = ctx.op("Tanh", [ctx.op("Mul", [inner, ctx.constant(math.sqrt(2 / math.pi),
                                                                  "k")])])
    else:
        phi = ctx.op("Erf", [ctx.op("Mul", [x, ctx.constant(math.sqrt(0.5), "sqrt_half")])])
    return (ctx.op("Mul", [half_x, ctx.op("Add", [phi, ctx.constant(1.0, "one")])]),)


def silu(layer: Any, ctx: ExportContext) -> Outputs:
    (x,) = ctx.inputs
    return (ctx.op("Mul", [x, ctx.op("Sigmoid", [x])]),)


def leaky_relu(layer: Any, ctx: ExportContext) -> Outputs:
    return (ctx.op("LeakyRelu", [ctx.inputs[0]], alpha=float(layer.negative_slope)),)


def elu(layer: Any, ctx: ExportContext) -> Outputs:
    return (ctx.op("Elu", [ctx.inputs[0]], alpha=float(layer.alpha)),)


def attention(layer: Any, ctx: ExportContext) -> Outputs:
    """Projections, heads as (batch, heads, time, size), scaled scores with the causal
    mask added as -inf above the diagonal, softmax, and the output projection."""
    q, k, v = ctx.inputs
    (tq, embed), (tk, _) = ctx.input_shapes[0], ctx.input_shapes[1]
    heads = layer.num_heads
    size = embed // heads

    def project(x: str, which: str) -> str:
        y = ctx.op("MatMul", [x, ctx.param("W" + which)])
        if layer.use_bias and which != "k":
            y = ctx.op("Add", [y, ctx.param("b" + which)])
        return y

    def split_heads(x: str) -> str:
        return ctx.transpose(ctx.reshape(x, [0, 0, heads, size]), [0, 2, 1, 3])

    Q, V = split_heads(project(q, "q")), split_heads(project(v, "v"))
    K_t = ctx.transpose(ctx.reshape(project(k, "k"), [0, 0, heads, size]), [0, 2, 3, 1])
    scores = ctx.op("Mul", [ctx.op("MatMul", [Q, K_t]),
                            ctx.constant(1 / math.sqrt(size), "scale")])
    if layer.causal:
        mask = np.where(np.triu(np.ones((tq, tk), dtype=bool), k=1), -np.inf, 0.0)
        scores = ctx.op("Add", [scores, ctx.constant(mask, "causal_mask", layer.dtype)])
    weights = ctx.op("Softmax", [scores], axis=-1)
    merged = ctx.reshape(ctx.transpose(ctx.op("MatMul", [weights, V]), [0, 2, 1, 3]),
                         [0, 0, embed])
    return (project(merged, "o"),)


CONVERTERS: dict[str, Callable[[Any, ExportContext], Outputs]] = {
    "dropout": dropout,
    "batch_norm": batch_norm,
    "layer_norm": layer_norm,
    "gelu": gelu,
    "silu": silu,
    "leaky_relu": leaky_relu,
    "elu": elu,
    "attention": attention,
}


@hookimpl
def deltaprop_register_onnx_converters() -> dict[str, Callable[[Any, Any], Outputs]]:
    return dict(CONVERTERS)
