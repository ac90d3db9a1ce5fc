"""Multi-head scaled dot-product attention with separate query, key and value inputs.

The layer follows PyTorch's ``nn.MultiheadAttention(embed_dim, num_heads, kdim=...,
vdim=..., batch_first=True)`` with the dense layout of deltaprop (``y = x @ W + b``):

    Q = q Wq + bq,  K = k Wk,  V = v Wv + bv        (split into heads of size d)
    P = softmax(Q K^T / sqrt(d) + mask),  O = P V,  y = concat_heads(O) Wo + bo

Inputs are (batch, Tq, query features), (batch, Tk, key features) and
(batch, Tk, value features); the output is (batch, Tq, embed_dim), embed_dim being
the query feature size. With ``causal`` query i sees keys 0..i only. There is no key
bias: it adds the same amount to every score of a query, which softmax cancels, so it
could never learn (PyTorch's key bias is likewise inert; set it to zero to compare). Self-attention
is the same layer called on one tensor three times; the executor sums the deltas.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.special import softmax

from deltaprop import Layer, hookimpl
from deltaprop.config import positive_int
from deltaprop.errors import ShapeError

Shape = tuple[int, ...]


class Attention(Layer):
    """Multi-head attention: three inputs (query, key, value), one output.

    Config:
        num_heads: number of heads, >= 1; must divide the query feature size.
        causal: query i sees keys 0..i only (needs no more queries than keys).
        use_bias: add the biases ``bq``, ``bv`` and ``bo`` (there is no key bias).
        kernel_initializer: initializer of ``Wq``, ``Wk``, ``Wv`` and ``Wo`` (a registry
            name).
    """

    name = "attention"
    n_inputs = 3
    examples = [
        {"config": {"num_heads": 2}, "input_shapes": [(3, 4), (5, 4), (5, 4)],
         "bad_input_shapes": [[(3, 5), (5, 4), (5, 4)]]},  # 5 features, 2 heads
        {"config": {"num_heads": 1, "causal": True}, "input_shapes": [(4, 3), (4, 2), (4, 5)],
         "bad_input_shapes": [[(5, 3), (4, 2), (4, 5)]]},  # causal, more queries than keys
        {"config": {"num_heads": 3, "use_bias": False, "causal": True},
         "input_shapes": [(3, 6), (3, 6), (3, 6)]},
    ]
    #: key and value lengths differ; sequences without a feature axis
    bad_input_shapes = [[(3, 4), (5, 4), (6, 4)], [(4,), (4,), (4,)]]

    def __init__(self, num_heads: int = 1, *, causal: bool = False, use_bias: bool = True,
                 kernel_initializer: str = "glorot_uniform", dtype: str = "float32",
                 label: str | None = None) -> None:
        super().__init__(dtype=dtype, label=label)
        self.num_heads = positive_int("attention", "num_heads", num_heads)
        self.causal = bool(causal)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = kernel_initializer

    def build(self, input_shapes: Sequence[Shape], rng: Any = None) -> tuple[Shape]:
        self.expect_inputs(input_shapes, ndim=2)
        (tq, embed), (tk, kdim), (tv, vdim) = (tuple(s) for s in input_shapes)
        if tk != tv:
            raise ShapeError(f"attention: key and value need the same sequence length, got "
                             f"key {(tk, kdim)} and value {(tv, vdim)}")
        if embed % self.num_heads:
            raise ShapeError(f"attention: query features {embed} (query shape {(tq, embed)}) "
                             f"are not divisible by num_heads={self.num_heads}")
        if self.causal and tq > tk:
            raise ShapeError(f"attention: a causal mask needs no more queries than keys, got "
                             f"query {(tq, embed)} and key {(tk, kdim)}")
        for pname, fan_in in (("Wq", embed), ("Wk", kdim), ("Wv", vdim), ("Wo", embed)):
            self.add_param(pname, (fan_in, embed), self.kernel_initializer, rng,
                           fan_in=fan_in, fan_out=embed)
        if self.use_bias:
            for pname in ("bq", "bv", "bo"):
                self.add_param(pname, (embed,), "zeros", rng, fan_in=embed, fan_out=embed)
        return ((tq, embed),)

    # -- helpers -------------------------------------------------------------------------
    def _project(self, x: np.ndarray, which: str) -> np.ndarray:
        y = x @ self.params["W" + which]
        if self.use_bias and which != "k":
            y += self.params["b" + which]
        return y

    def _heads(self, x: np.ndarray) -> np.ndarray:
        """(batch, T, H*d) -> (batch, H, T, d)"""
        b, t, e = x.shape
        return x.reshape(b, t, self.num_heads, e // self.num_heads).transpose(0, 2, 1, 3)

    @staticmethod
    def _merge(x: np.ndarray) -> np.ndarray:
        """(batch, H, T, d) -> (batch, T, H*d)"""
        b, h, t, d = x.shape
        return x.transpose(0, 2, 1, 3).reshape(b, t, h * d)

    def _mask(self, tq: int, tk: int) -> np.ndarray:
        """True where query i must not see key j (j > i)."""
        return np.triu(np.ones((tq, tk), dtype=bool), k=1)

    # -- protocol --------------------------------------------------------------------------
    def forward(self, inputs: tuple[np.ndarray, ...], *, train: bool) -> tuple[Any, Any]:
        q, k, v = inputs
        Q, K, V = (self._heads(self._project(a, w)) for a, w in ((q, "q"), (k, "k"), (v, "v")))
        scale = Q.dtype.type(1 / math.sqrt(Q.shape[-1]))
        scores = (Q @ K.transpose(0, 1, 3, 2)) * scale
        if self.causal:
            scores[..., self._mask(Q.shape[2], K.shape[2])] = -np.inf
        P = softmax(scores, axis=-1)
        merged = self._merge(P @ V)
        y = merged @ self.params["Wo"]
        if self.use_bias:
            y += self.params["bo"]
        return (y,), ((q, k, v, Q, K, V, P, merged) if train else None)

    def backward(self, cache: Any, grad_outputs: tuple[np.ndarray, ...], *,
                 needs_grad: Sequence[bool] | None = None
                 ) -> tuple[tuple[Any, ...], dict[str, np.ndarray]]:
        q, k, v, Q, K, V, P, merged = cache
        (g,) = grad_outputs
        scale = Q.dtype.type(1 / math.sqrt(Q.shape[-1]))
        grads = {"Wo": _weight_grad(merged, g)}
        if self.use_bias:
            grads["bo"] = g.sum(axis=(0, 1))
        dO = self._heads(g @ self.params["Wo"].T)
        dV = P.transpose(0, 1, 3, 2) @ dO
        dP = dO @ V.transpose(0, 1, 3, 2)
        dS = P * (dP - (dP * P).sum(axis=-1, keepdims=True))  # softmax backward
        dS *= scale
        dQ = dS @ K
        dK = dS.transpose(0, 1, 3, 2) @ Q
        grad_inputs: list[np.ndarray | None] = []
        for i, (x, dproj, w) in enumerate(((q, dQ, "q"), (k, dK, "k"), (v, dV, "v"))):
            d = self._merge(dproj)
            grads["W" + w] = _weight_grad(x, d)
            if self.use_bias and w != "k":
                grads["b" + w] = d.sum(axis=(0, 1))
            wanted = needs_grad is None or needs_grad[i]
            grad_inputs.append(d @ self.params["W" + w].T if wanted else None)
        return tuple(grad_inputs), grads


def _weight_grad(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """sum over batch and time of x^T g, as one matrix product."""
    return x.reshape(-1, x.shape[-1]).T @ g.reshape(-1, g.shape[-1])


@hookimpl
def deltaprop_register_layers() -> list[type[Layer]]:
    return [Attention]
