"""Convolution and pooling: conv2d, conv1d, max_pool2d, avg_pool2d, global_avg_pool2d.

Tensors are NCHW (NCL for conv1d) and weights use PyTorch's layout, ``W`` of shape
(filters, in_channels, kh, kw) and ``b`` (filters,), so weights can be exchanged.

conv2d computes with one of two algorithms that give the same numbers:

- ``direct``: im2col through a strided window view over a channels-last copy of the
  padded input (so each copied run is a contiguous channel vector), then one GEMM per
  pass: ``cols @ W``, ``g.T @ cols`` and ``g @ W`` followed by a col2im scatter-add.
  The output is returned as an NCHW view of channels-last memory, which the next
  convolution, pool or element-wise layer reads without a transpose copy.
- ``fft``: real 2-D transforms (``scipy.fft.rfft2``) of the padded input, the kernels
  and the output delta; the sum over channels happens in the frequency domain as a
  batched complex matrix product (one small GEMM per frequency), then an inverse
  transform. Any dilation is supported (the kernel is zero-stuffed before its
  transform). A stride above 1 is supported by computing the stride-1 result and
  subsampling it (and zero-stuffing the delta on the way back), which wastes work, so
  ``auto`` only picks FFT for stride 1.

``algorithm="auto"`` (the default) chooses per input shape with a cost model
(:func:`choose_algorithm`) whose constants were measured on a 2-core machine: direct
wins on small kernels, FFT on large kernels with many channels.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.fft
from numpy.lib.stride_tricks import as_strided

from deltaprop import Layer, hookimpl
from deltaprop.config import choice, int_tuple, positive_int
from deltaprop.errors import ConfigError, ShapeError

Shape = tuple[int, ...]
Grads = tuple[tuple[Any, ...], dict[str, np.ndarray]]
ALGORITHMS = ("auto", "direct", "fft")
#: threads for scipy.fft (it releases the GIL); BLAS threads itself
FFT_WORKERS = max(1, min(os.cpu_count() or 1, 8))


# --------------------------------------------------------------------------------------
# geometry
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Geometry:
    """Everything about one 2-D convolution that follows from the shapes and config."""

    C: int
    H: int
    W: int
    F: int
    kh: int
    kw: int
    sh: int
    sw: int
    dh: int
    dw: int
    pt: int
    pb: int
    pl: int
    pr: int

    @property
    def Hp(self) -> int:
        return self.H + self.pt + self.pb

    @property
    def Wp(self) -> int:
        return self.W + self.pl + self.pr

    @property
    def KH(self) -> int:
        """Extent of the dilated kernel."""
        return self.dh * (self.kh - 1) + 1

    @property
    def KW(self) -> int:
        return self.dw * (self.kw - 1) + 1

    @property
    def Ho(self) -> int:
        return (self.Hp - self.KH) // self.sh + 1

    @property
    def Wo(self) -> int:
        return (self.Wp - self.KW) // self.sw + 1


def _same_padding(size: int, extent: int, stride: int) -> tuple[int, int]:
    """TensorFlow's rule (PyTorch's for stride 1): output ceil(size / stride), the odd
    pixel of padding after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + extent - size, 0)
    return total // 2, total - total // 2


def _padding(owner: str, padding: Any, ndim: int) -> str | tuple[int, ...]:
    if isinstance(padding, str):
        return choice(owner, "padding", padding.lower(), ("same", "valid"))
    return int_tuple(owner, "padding", padding, ndim, allow_zero=True)


def make_geometry(owner: str, shape: Shape, F: int, kernel: tuple[int, ...],
                  stride: tuple[int, ...], padding: str | tuple[int, ...],
                  dilation: tuple[int, ...]) -> Geometry:
    """Check an input shape (C, H, W) against the config; ShapeError names both."""
    if len(shape) != 3:
        raise ShapeError(f"{owner} expects inputs of shape (channels, height, width) with the "
                         f"batch left out, i.e. 4-D arrays; got shape {tuple(shape)}")
    C, H, W = (int(v) for v in shape)
    KH, KW = dilation[0] * (kernel[0] - 1) + 1, dilation[1] * (kernel[1] - 1) + 1
    if padding == "valid":
        pads = (0, 0, 0, 0)
    elif padding == "same":
        pads = (*_same_padding(H, KH, stride[0]), *_same_padding(W, KW, stride[1]))
    else:
        assert isinstance(padding, tuple)
        pads = (padding[0], padding[0], padding[1], padding[1])
    geo = Geometry(C, H, W, F, kernel[0], kernel[1], stride[0], stride[1],
                   dilation[0], dilation[1], *pads)
    if geo.Hp < geo.KH or geo.Wp < geo.KW:
        raise ShapeError(f"{owner}: kernel {kernel} (extent {(KH, KW)} with dilation "
                         f"{dilation}) is larger than the padded input {(geo.Hp, geo.Wp)} "
                         f"(input (C, H, W) = {(C, H, W)}, padding {padding!r})")
    return geo


# --------------------------------------------------------------------------------------
# the direct algorithm: im2col + GEMM on channels-last memory
# --------------------------------------------------------------------------------------
def _nhwc_padded(x: np.ndarray, geo: Geometry) -> np.ndarray:
    """The input as a padded channels-last array, in one copy (or none)."""
    xh = x.transpose(0, 2, 3, 1)
    if not (geo.pt or geo.pb or geo.pl or geo.pr):
        return np.ascontiguousarray(xh)
    out = np.zeros((x.shape[0], geo.Hp, geo.Wp, geo.C), dtype=x.dtype)
    out[:, geo.pt:geo.pt + geo.H, geo.pl:geo.pl + geo.W, :] = xh
    return out


def _im2col(xp: np.ndarray, geo: Geometry) -> np.ndarray:
    """(N*Ho*Wo, kh*kw*C) rows of windows; a view when the kernel is 1x1, stride 1."""
    n, _, _, c = xp.shape
    s0, s1, s2, s3 = xp.strides
    windows = as_strided(xp, shape=(n, geo.Ho, geo.Wo, geo.kh, geo.kw, c),
                         strides=(s0, geo.sh * s1, geo.sw * s2, geo.dh * s1, geo.dw * s2, s3),
                         writeable=False)
    return windows.reshape(n * geo.Ho * geo.Wo, geo.kh * geo.kw * c)


def _kernel_matrix(W: np.ndarray) -> np.ndarray:
    """(F, C, kh, kw) -> (F, kh*kw*C), the row order of the im2col columns."""
    return np.ascontiguousarray(W.transpose(0, 2, 3, 1)).reshape(W.shape[0], -1)


def direct_forward(x: np.ndarray, W: np.ndarray, b: np.ndarray | None, geo: Geometry,
                   keep: bool) -> tuple[np.ndarray, Any]:
    n = x.shape[0]
    cols = _im2col(_nhwc_padded(x, geo), geo)
    Wm = _kernel_matrix(W)
    y = cols @ Wm.T
    if b is not None:
        y += b
    out = y.reshape(n, geo.Ho, geo.Wo, geo.F).transpose(0, 3, 1, 2)
    return out, ((cols, Wm, n) if keep else None)


def _rows(g: np.ndarray) -> np.ndarray:
    """An NCHW delta as (N*Ho*Wo, F) rows (free when it lives in channels-last memory)."""
    return g.transpose(0, 2, 3, 1).reshape(-1, g.shape[1])


def direct_backward(cache: Any, g: np.ndarray, geo: Geometry, need_x: bool, use_bias: bool
                    ) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None]:
    cols, Wm, n = cache
    gr = _rows(g)
    dW = (gr.T @ cols).reshape(geo.F, geo.kh, geo.kw, geo.C).transpose(0, 3, 1, 2)
    db = gr.sum(axis=0) if use_bias else None
    dx = None
    if need_x:
        # one small GEMM per kernel offset, each added into its shifted window: the
        # result of each is contiguous, where a single (rows, kh*kw*C) delta would be
        # scattered with a stride of kh*kw*C (measured 2.3x slower at 3x3)
        dxp = np.zeros((n, geo.Hp, geo.Wp, geo.C), dtype=g.dtype)
        hspan, wspan = geo.sh * (geo.Ho - 1) + 1, geo.sw * (geo.Wo - 1) + 1
        Wk = Wm.reshape(geo.F, geo.kh, geo.kw, geo.C)
        part = np.empty((gr.shape[0], geo.C), dtype=np.result_type(gr, Wm))
        for i in range(geo.kh):
            for j in range(geo.kw):
                top, left = i * geo.dh, j * geo.dw
                np.matmul(gr, Wk[:, i, j, :], out=part)
                dxp[:, top:top + hspan:geo.sh, left:left + wspan:geo.sw, :] += part.reshape(
                    n, geo.Ho, geo.Wo, geo.C)
        dx = dxp[:, geo.pt:geo.pt + geo.H, geo.pl:geo.pl + geo.W, :].transpose(0, 3, 1, 2)
    return dx, np.ascontiguousarray(dW), db


# --------------------------------------------------------------------------------------
# the FFT algorithm: rfft2, channel contraction as a batched matmul, irfft2
# --------------------------------------------------------------------------------------
def _fft_size(geo: Geometry) -> tuple[int, int]:
    return (scipy.fft.next_fast_len(geo.Hp, real=True),
            scipy.fft.next_fast_len(geo.Wp, real=True))


def _rfft(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(h, w, *batch) real -> (P, *batch) spectrum, P = L1 * (L2 // 2 + 1)."""
    spec = scipy.fft.rfft2(a, s=size, axes=(0, 1), workers=FFT_WORKERS)
    return spec.reshape(-1, *a.shape[2:])


def _irfft(spec: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(P, *batch) spectrum -> (L1, L2, *batch) real."""
    half = size[1] // 2 + 1
    return scipy.fft.irfft2(spec.reshape(size[0], half, *spec.shape[1:]), s=size, axes=(0, 1),
                            workers=FFT_WORKERS)


def _kernel_spectrum(W: np.ndarray, geo: Geometry, size: tuple[int, int]) -> np.ndarray:
    """(P, C, F) transform of the (dilated) kernels."""
    k = np.zeros((geo.KH, geo.KW, geo.C, geo.F), dtype=W.dtype)
    k[::geo.dh, ::geo.dw] = W.transpose(2, 3, 1, 0)
    return _rfft(k, size)


def fft_forward(x: np.ndarray, W: np.ndarray, b: np.ndarray | None, geo: Geometry,
                keep: bool) -> tuple[np.ndarray, Any]:
    n = x.shape[0]
    size = _fft_size(geo)
    xp = np.zeros((geo.Hp, geo.Wp, n, geo.C), dtype=x.dtype)
    xp[geo.pt:geo.pt + geo.H, geo.pl:geo.pl + geo.W] = x.transpose(2, 3, 0, 1)
    X = _rfft(xp, size)                                  # (P, N, C)
    Wf = _kernel_spectrum(W, geo, size)                  # (P, C, F)
    Y = X @ np.conj(Wf)                                  # correlation, not convolution
    full = _irfft(Y, size)                               # (L1, L2, N, F)
    y = full[:geo.sh * (geo.Ho - 1) + 1:geo.sh, :geo.sw * (geo.Wo - 1) + 1:geo.sw]
    y = y.astype(x.dtype, copy=False)
    if b is not None:
        y = y + b
    return y.transpose(2, 3, 0, 1), ((X, Wf, n) if keep else None)


def fft_backward(cache: Any, g: np.ndarray, geo: Geometry, need_x: bool, use_bias: bool
                 ) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None]:
    X, Wf, n = cache
    size = _fft_size(geo)
    gt = g.transpose(2, 3, 0, 1)                          # (Ho, Wo, N, F)
    if geo.sh > 1 or geo.sw > 1:
        stuffed = np.zeros((geo.sh * (geo.Ho - 1) + 1, geo.sw * (geo.Wo - 1) + 1, n, geo.F),
                           dtype=g.dtype)
        stuffed[::geo.sh, ::geo.sw] = gt
        gt = stuffed
    G = _rfft(gt, size)                                   # (P, N, F)
    db = g.sum(axis=(0, 2, 3)) if use_bias else None
    dW_full = _irfft(np.conj(G.transpose(0, 2, 1)) @ X, size)  # (L1, L2, F, C)
    dW = dW_full[:geo.KH:geo.dh, :geo.KW:geo.dw].transpose(2, 3, 0, 1)
    dW = np.ascontiguousarray(dW, dtype=g.dtype)
    dx = None
    if need_x:
        full = _irfft(G @ Wf.transpose(0, 2, 1), size)   # (L1, L2, N, C)
        dx = full[geo.pt:geo.pt + geo.H, geo.pl:geo.pl + geo.W].astype(g.dtype, copy=False)
        dx = dx.transpose(2, 3, 0, 1)
    return dx, dW, db


# --------------------------------------------------------------------------------------
# choosing an algorithm
# --------------------------------------------------------------------------------------
#: seconds per unit, measured with float32 on a 2-core x86 machine (OpenBLAS, pocketfft)
_GEMM_FLOP = 1.0 / 60e9      # real GEMM throughput
_COPY_BYTE = 1.0 / 2.5e9     # strided window copy and col2im scatter-add
_FFT_POINT = 1.0 / 0.9e9     # per point of n*log2(n) butterflies, per transform
_CGEMM_FLOP = 1.0 / 25e9     # small batched complex GEMMs (one per frequency)


def estimate_seconds(geo: Geometry, n: int, itemsize: int = 4) -> dict[str, float]:
    """Predicted forward+backward time of each algorithm (the cost model of ``auto``)."""
    m = n * geo.Ho * geo.Wo
    k = geo.kh * geo.kw * geo.C
    direct = 3 * 2 * m * k * geo.F * _GEMM_FLOP + 3 * m * k * itemsize * _COPY_BYTE
    L1, L2 = _fft_size(geo)
    points = L1 * L2 * max(math.log2(L1 * L2), 1.0)
    transforms = 2 * n * geo.C + 2 * n * geo.F + 2 * geo.C * geo.F
    P = L1 * (L2 // 2 + 1)
    fft = (transforms * points * _FFT_POINT * (itemsize / 4)
           + 3 * 8 * P * n * geo.C * geo.F * _CGEMM_FLOP
           + 4 * P * n * (geo.C + geo.F) * 2 * itemsize * _COPY_BYTE)
    return {"direct": direct, "fft": fft}


def choose_algorithm(geo: Geometry, n: int, itemsize: int = 4) -> str:
    if geo.sh > 1 or geo.sw > 1:
        return "direct"
    costs = estimate_seconds(geo, n, itemsize)
    return "fft" if costs["fft"] < costs["direct"] else "direct"


_ALGORITHMS = {"direct": (direct_forward, direct_backward), "fft": (fft_forward, fft_backward)}


# --------------------------------------------------------------------------------------
# layers
# --------------------------------------------------------------------------------------
class Conv2D(Layer):
    """2-D cross-correlation (what deep learning calls convolution) over NCHW inputs."""

    name = "conv2d"
    #: how many spatial axes the config's kernel_size, stride, padding and dilation have
    spatial_dims = 2
    examples = [
        {"config": {"filters": 3, "kernel_size": 3}, "input_shapes": [(2, 5, 6)]},
        {"config": {"filters": 2, "kernel_size": [2, 3], "stride": [2, 1], "padding": [1, 2],
                    "dilation": [1, 2], "algorithm": "direct"}, "input_shapes": [(3, 6, 5)]},
        {"config": {"filters": 2, "kernel_size": 3, "padding": "same", "dilation": 2,
                    "algorithm": "fft"}, "input_shapes": [(2, 6, 7)]},
        {"config": {"filters": 2, "kernel_size": 2, "stride": 2, "use_bias": False,
                    "algorithm": "fft"}, "input_shapes": [(2, 6, 4)]},
    ]

    def __init__(self, filters: int, kernel_size: int | Sequence[int] = 3, *,
                 stride: int | Sequence[int] = 1, padding: Any = "valid",
                 dilation: int | Sequence[int] = 1, use_bias: bool = True,
                 in_channels: int | None = None, algorithm: str = "auto",
                 kernel_initializer: str = "he_uniform", bias_initializer: str = "zeros",
                 dtype: str = "float32", label: str | None = None) -> None:
        super().__init__(dtype=dtype, label=label)
        owner = self.name
        self.filters = positive_int(owner, "filters", filters)
        dims = self.spatial_dims
        self.kernel_size = int_tuple(owner, "kernel_size", kernel_size, dims)
        self.stride = int_tuple(owner, "stride", stride, dims)
        self.padding = _padding(owner, padding, dims)
        self.dilation = int_tuple(owner, "dilation", dilation, dims)
        self.use_bias = bool(use_bias)
        self.in_channels = None if in_channels is None else positive_int(
            owner, "in_channels", in_channels)
        self.algorithm = choice(owner, "algorithm", algorithm, ALGORITHMS)
        self.kernel_initializer = kernel_initializer
        self.bias_initializer = bias_initializer

    # conv1d reuses everything with a height of 1
    def _geometry(self, shape: Shape) -> Geometry:
        return make_geometry(self.name, shape, self.filters, self.kernel_size, self.stride,
                             self.padding, self.dilation)

    def build(self, input_shapes: Sequence[Shape], rng: Any = None) -> tuple[Shape]:
        self.expect_inputs(input_shapes)
        shape = tuple(input_shapes[0])
        geo = self._geometry(shape)
        kshape = (self.filters, geo.C, *self.kernel_size)
        if self.in_channels is not None and self.in_channels != geo.C:
            raise ShapeError(f"{self.name}: weights of shape {kshape[:1]}+({self.in_channels}, "
                             f"...) expect {self.in_channels} input channels, got input of "
                             f"shape {shape} with {geo.C}")
        fan_in = geo.C * self.kernel_size[0] * self.kernel_size[1]
        fan_out = self.filters * self.kernel_size[0] * self.kernel_size[1]
        self.add_param("W", kshape, self.kernel_initializer, rng, fan_in=fan_in, fan_out=fan_out)
        if self.use_bias:
            self.add_param("b", (self.filters,), self.bias_initializer, rng,
                           fan_in=fan_in, fan_out=fan_out)
        return ((self.filters, geo.Ho, geo.Wo),)

    def pick(self, geo: Geometry, n: int) -> str:
        """The algorithm this layer runs for a batch of ``n`` inputs of geometry ``geo``."""
        if self.algorithm != "auto":
            return self.algorithm
        return choose_algorithm(geo, n, np.dtype(self.dtype).itemsize)

    def _check_input(self, x: np.ndarray) -> Geometry:
        if x.ndim != 4:
            raise ShapeError(f"{self.name} expects a 4-D array (batch, channels, height, "
                             f"width), got shape {x.shape}")
        W = self.params["W"]
        if x.shape[1] != W.shape[1]:
            raise ShapeError(f"{self.name}: input of shape {x.shape} has {x.shape[1]} channels "
                             f"but the weights of shape {W.shape} expect {W.shape[1]}")
        return self._geometry(x.shape[1:])

    def _forward4(self, x: np.ndarray, W4: np.ndarray, geo: Geometry, train: bool
                  ) -> tuple[np.ndarray, Any]:
        algorithm = self.pick(geo, x.shape[0])
        fwd, _ = _ALGORITHMS[algorithm]
        y, inner = fwd(x, W4, self.params.get("b"), geo, train)
        return y, ((algorithm, geo, inner) if train else None)

    def _backward4(self, cache: Any, g: np.ndarray, need_x: bool
                   ) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None]:
        algorithm, geo, inner = cache
        _, bwd = _ALGORITHMS[algorithm]
        return bwd(inner, g, geo, need_x, self.use_bias)

    def forward(self, inputs: tuple[np.ndarray, ...], *, train: bool) -> tuple[Any, Any]:
        (x,) = inputs
        geo = self._check_input(x)
        y, cache = self._forward4(x, self.params["W"], geo, train)
        return (y,), cache

    def backward(self, cache: Any, grad_outputs: tuple[np.ndarray, ...], *,
                 needs_grad: Sequence[bool] | None = None) -> Grads:
        need_x = needs_grad is None or bool(needs_grad[0])
        dx, dW, db = self._backward4(cache, grad_outputs[0], need_x)
        grads = {"W": dW}
        if db is not None:
            grads["b"] = db
        return (dx,), grads


class Conv1D(Conv2D):
    """1-D cross-correlation over NCL inputs: conv2d with a height of 1.
    ``W`` has shape (filters, in_channels, k), PyTorch's layout."""

    name = "conv1d"
    spatial_dims = 1
    examples = [
        {"config": {"filters": 3, "kernel_size": 3}, "input_shapes": [(2, 7)]},
        {"config": {"filters": 2, "kernel_size": 2, "stride": 2, "padding": 1, "dilation": 2,
                    "algorithm": "direct"}, "input_shapes": [(3, 9)]},
        {"config": {"filters": 2, "kernel_size": 4, "padding": "same", "algorithm": "fft"},
         "input_shapes": [(2, 6)]},
    ]

    def _geometry(self, shape: Shape) -> Geometry:
        if len(shape) != 2:
            raise ShapeError(f"conv1d expects inputs of shape (channels, length) with the "
                             f"batch left out, i.e. 3-D arrays; got shape {tuple(shape)}")
        padding = self.padding if isinstance(self.padding, str) else (0, self.padding[0])
        geo = make_geometry(self.name, (shape[0], 1, shape[1]), self.filters,
                            (1, self.kernel_size[0]), (1, self.stride[0]), padding,
                            (1, self.dilation[0]))
        return geo

    def build(self, input_shapes: Sequence[Shape], rng: Any = None) -> tuple[Shape]:
        self.expect_inputs(input_shapes)
        shape = tuple(input_shapes[0])
        geo = self._geometry(shape)
        k = self.kernel_size[0]
        if self.in_channels is not None and self.in_channels != geo.C:
            raise ShapeError(f"conv1d: weights expect {self.in_channels} input channels, got "
                             f"input of shape {shape} with {geo.C}")
        self.add_param("W", (self.filters, geo.C, k), self.kernel_initializer, rng,
                       fan_in=geo.C * k, fan_out=self.filters * k)
        if self.use_bias:
            self.add_param("b", (self.filters,), self.bias_initializer, rng,
                           fan_in=geo.C * k, fan_out=self.filters * k)
        return ((self.filters, geo.Wo),)

    def forward(self, inputs: tuple[np.ndarray, ...], *, train: bool) -> tuple[Any, Any]:
        (x,) = inputs
        W = self.params["W"]
        if x.ndim != 3:
            raise ShapeError(f"conv1d expects a 3-D array (batch, channels, length), got "
                             f"shape {x.shape}")
        if x.shape[1] != W.shape[1]:
            raise ShapeError(f"conv1d: input of shape {x.shape} has {x.shape[1]} channels but "
                             f"the weights of shape {W.shape} expect {W.shape[1]}")
        geo = self._geometry(x.shape[1:])
        y, cache = self._forward4(x[:, :, None, :], W[:, :, None, :], geo, train)
        return (y[:, :, 0, :],), cache

    def backward(self, cache: Any, grad_outputs: tuple[np.ndarray, ...], *,
                 needs_grad: Sequence[bool] | None = None) -> Grads:
        need_x = needs_grad is None or bool(needs_grad[0])
        dx, dW, db = self._backward4(cache, grad_outputs[0][:, :, None, :], need_x)
        grads = {"W": dW[:, :, 0, :]}
        if db is not None:
            grads["b"] = db
        return ((None if dx is None else dx[:, :, 0, :]),), grads


# --------------------------------------------------------------------------------------
# pooling
# --------------------------------------------------------------------------------------
class _Pool2D(Layer):
    """Shared config and geometry of the windowed pools (no dilation)."""

    def __init__(self, kernel_size: int | Sequence[int] = 2, *,
                 stride: int | Sequence[int] | None = None, padding: int | Sequence[int] = 0,
                 dtype: str = "float32", label: str | None = None) -> None:
        super().__init__(dtype=dtype, label=label)
        self.kernel_size = int_tuple(self.name, "kernel_size", kernel_size, 2)
        self.stride = (self.kernel_size if stride is None
                       else int_tuple(self.name, "stride", stride, 2))
        self.padding = int_tuple(self.name, "padding", padding, 2, allow_zero=True)
        if any(2 * p > k for p, k in zip(self.padding, self.kernel_size, strict=True)):
            raise ConfigError(f"{self.name}: padding {list(self.padding)} must be at most half "
                              f"the kernel size {list(self.kernel_size)}")

    def _geometry(self, shape: Shape) -> Geometry:
        geo = make_geometry(self.name, shape, int(shape[0]) if len(shape) == 3 else 0,
                            self.kernel_size, self.stride, self.padding, (1, 1))
        return geo

    def build(self, input_shapes: Sequence[Shape], rng: Any = None) -> tuple[Shape]:
        self.expect_inputs(input_shapes)
        geo = self._geometry(tuple(input_shapes[0]))
        return ((geo.C, geo.Ho, geo.Wo),)

    def _check(self, x: np.ndarray) -> Geometry:
        if x.ndim != 4:
            raise ShapeError(f"{self.name} expects a 4-D array (batch, channels, height, "
                             f"width), got shape {x.shape}")
        return self._geometry(x.shape[1:])


def _window(xp: np.ndarray, geo: Geometry, i: int, j: int) -> np.ndarray:
    """The input element at offset (i, j) of every window: an (N, C, Ho, Wo) view."""
    return xp[:, :, i:i + geo.sh * (geo.Ho - 1) + 1:geo.sh,
              j:j + geo.sw * (geo.Wo - 1) + 1:geo.sw]


def _pad(x: np.ndarray, geo: Geometry, value: float) -> np.ndarray:
    if not (geo.pt or geo.pl):
        return x
    out = np.full((*x.shape[:2], geo.Hp, geo.Wp), value, dtype=x.dtype)
    out[:, :, geo.pt:geo.pt + geo.H, geo.pl:geo.pl + geo.W] = x
    return out


def _empty_like_layout(x: np.ndarray, shape: Shape) -> np.ndarray:
    """An NCHW array laid out in memory like ``x`` (channels-last stays channels-last)."""
    if x.ndim == 4 and x.transpose(0, 2, 3, 1).flags.c_contiguous and x.shape[1] > 1:
        n, c, h, w = shape
        return np.zeros((n, h, w, c), dtype=x.dtype).transpose(0, 3, 1, 2)
    return np.zeros(shape, dtype=x.dtype)


class MaxPool2D(_Pool2D):
    """Maximum over each window; the argmax offset is kept for backward (the first of
    equal values wins, as in PyTorch). Padding counts as -inf."""

    name = "max_pool2d"
    examples = [
        {"config": {"kernel_size": 2}, "input_shapes": [(2, 4, 6)]},
        {"config": {"kernel_size": 3, "stride": 2, "padding": 1}, "input_shapes": [(2, 5, 5)]},
        {"config": {"kernel_size": [2, 3], "stride": 1}, "input_shapes": [(1, 4, 5)]},
    ]

    def forward(self, inputs: tuple[np.ndarray, ...], *, train: bool) -> tuple[Any, Any]:
        (x,) = inputs
        geo = self._check(x)
        xp = _pad(x, geo, -np.inf)
        windows = [_window(xp, geo, *divmod(k, geo.kw)) for k in range(geo.kh * geo.kw)]
        if len(windows) == 1:
            best = windows[0].copy(order="K")
        else:
            best = np.maximum(windows[0], windows[1])
            for w in windows[2:]:
                np.maximum(best, w, out=best)
        if not train:
            return (best,), None
        # the offset of the first maximum of each window, by arithmetic on masks
        # (cheaper than masked assignment on strided views)
        arg = np.zeros(best.shape, dtype=np.uint8 if len(windows) < 256 else np.int32)
        found = np.equal(windows[0], best)
        for k in range(1, len(windows)):
            hit = np.equal(windows[k], best)
            np.logical_and(hit, np.logical_not(found), out=hit)
            if k < len(windows) - 1:
                np.logical_or(found, hit, out=found)
            arg += (hit.view(np.uint8) if arg.dtype == np.uint8 else hit) * arg.dtype.type(k)
        return (best,), (arg, x.shape, geo)

    def backward(self, cache: Any, grad_outputs: tuple[np.ndarray, ...], *,
                 needs_grad: Sequence[bool] | None = None) -> Grads:
        arg, shape, geo = cache
        (g,) = grad_outputs
        n, c = shape[:2]
        dxp = _empty_like_layout(g, (n, c, geo.Hp, geo.Wp))
        disjoint = geo.sh >= geo.kh and geo.sw >= geo.kw
        for k in range(geo.kh * geo.kw):
            target = _window(dxp, geo, *divmod(k, geo.kw))
            if disjoint:
                np.multiply(g, arg == k, out=target)
            else:
                target += g * (arg == k)
        dx = dxp[:, :, geo.pt:geo.pt + geo.H, geo.pl:geo.pl + geo.W]
        return (dx,), {}

    @classmethod
    def sample_inputs(cls, rng: np.random.Generator, input_shapes: Sequence[Shape],
                      batch: int, dtype: str) -> list[np.ndarray]:
        """Distinct values spaced far apart, so no finite-difference step changes an argmax."""
        out = []
        for shape in input_shapes:
            size = batch * int(np.prod(shape))
            out.append((rng.permutation(size) * 0.01).reshape(batch, *shape).astype(dtype))
        return out


class AvgPool2D(_Pool2D):
    """Mean over each window; padding counts as zeros in the mean (PyTorch's default,
    ``count_include_pad=True``)."""

    name = "avg_pool2d"
    examples = [
        {"config": {"kernel_size": 2}, "input_shapes": [(2, 4, 6)]},
        {"config": {"kernel_size": 3, "stride": 2, "padding": 1}, "input_shapes": [(2, 5, 5)]},
    ]

    def forward(self, inputs: tuple[np.ndarray, ...], *, train: bool) -> tuple[Any, Any]:
        (x,) = inputs
        geo = self._check(x)
        xp = _pad(x, geo, 0.0)
        total = _window(xp, geo, 0, 0).copy(order="K")
        for k in range(1, geo.kh * geo.kw):
            total += _window(xp, geo, *divmod(k, geo.kw))
        total *= np.asarray(1.0 / (geo.kh * geo.kw), dtype=total.dtype)
        return (total,), ((x.shape, geo) if train else None)

    def backward(self, cache: Any, grad_outputs: tuple[np.ndarray, ...], *,
                 needs_grad: Sequence[bool] | None = None) -> Grads:
        shape, geo = cache
        (g,) = grad_outputs
        share = g * np.asarray(1.0 / (geo.kh * geo.kw), dtype=g.dtype)
        dxp = _empty_like_layout(g, (*shape[:2], geo.Hp, geo.Wp))
        disjoint = geo.sh >= geo.kh and geo.sw >= geo.kw
        for k in range(geo.kh * geo.kw):
            target = _window(dxp, geo, *divmod(k, geo.kw))
            if disjoint:
                target[...] = share
            else:
                target += share
        return (dxp[:, :, geo.pt:geo.pt + geo.H, geo.pl:geo.pl + geo.W],), {}


class GlobalAvgPool2D(Layer):
    """Mean over height and width: (C, H, W) -> (C,)."""

    name = "global_avg_pool2d"
    examples = [{"config": {}, "input_shapes": [(3, 4, 5)]}]

    def __init__(self, *, dtype: str = "float32", label: str | None = None) -> None:
        super().__init__(dtype=dtype, label=label)

    def build(self, input_shapes: Sequence[Shape], rng: Any = None) -> tuple[Shape]:
        self.expect_inputs(input_shapes, ndim=3)
        return ((int(input_shapes[0][0]),),)

    def forward(self, inputs: tuple[np.ndarray, ...], *, train: bool) -> tuple[Any, Any]:
        (x,) = inputs
        if x.ndim != 4:
            raise ShapeError(f"global_avg_pool2d expects a 4-D array (batch, channels, "
                             f"height, width), got shape {x.shape}")
        return (x.mean(axis=(2, 3)),), (x.shape if train else None)

    def backward(self, cache: Any, grad_outputs: tuple[np.ndarray, ...], *,
                 needs_grad: Sequence[bool] | None = None) -> Grads:
        h, w = cache[2:]
        (g,) = grad_outputs
        share = g * np.asarray(1.0 / (h * w), dtype=g.dtype)
        return (np.repeat(share[:, :, None, None], h * w, axis=2).reshape(cache),), {}


@hookimpl
def deltaprop_register_layers() -> list[type[Layer]]:
    return [Conv2D, Conv1D, MaxPool2D, AvgPool2D, GlobalAvgPool2D]
