"""Convolution and pooling: conv2d, conv1d, max_pool2d, avg_pool2d, global_avg_pool2d.

Tensors are NCHW (NCL for conv1d) and weights use PyTorch's layout, ``W`` of shape
(filters, in_channels, kh, kw) and ``b`` (filters,), so weights can be exchanged.

conv2d computes with one of two algorithms that give the same numbers:

- ``direct``: im2col + GEMM on a channels-first (C, N, H, W) copy of the padded input,
  a few images at a time so that the columns stay in cache between the copy that
  writes them and the GEMM that reads them: ``W @ cols`` forward, then
  ``cols @ g.T`` and ``W.T @ g`` followed by a col2im add per kernel offset (at stride
  1 with at most twice as many filters as channels, columns of the delta instead serve
  both gradients, see :func:`_delta_columns_backward`). With
  stride 1 every output row is computed across the padded width, which turns each
  kernel offset's window into one contiguous run per image (see :class:`Grid`). Only
  the padded input is cached; backward rebuilds the columns chunk by chunk. The output
  is an NCHW view of channels-first memory, so the deltas that come back need no
  transpose either.
- ``fft``: real 2-D transforms (``scipy.fft``, one axis at a time so that all-zero
  rows and unwanted output rows cost nothing) of the padded input, the kernels and the
  output delta; the sum over channels happens in the frequency domain as a
  batched complex matrix product (one small GEMM per frequency), then an inverse
  transform. Any dilation is supported (the kernel is zero-stuffed before its
  transform). A stride above 1 is supported by computing the stride-1 result and
  subsampling it (and zero-stuffing the delta on the way back), which wastes work, so
  ``auto`` only picks FFT for stride 1.

``algorithm="auto"`` (the default) chooses per input shape with a cost model
(:func:`choose_algorithm`) that weighs GEMM flops, copied bytes and FFT points: direct
wins on small kernels, FFT on large kernels with many channels.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
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


def _fft_workers() -> int:
    """Threads for scipy.fft (it releases the GIL): as many as cores, up to 8, unless
    OMP_NUM_THREADS (which users set to pin BLAS; "4,2" nests) asks for fewer."""
    workers = min(os.cpu_count() or 1, 8)
    first = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if first.isdigit() and int(first) > 0:
        workers = min(workers, int(first))
    return workers


FFT_WORKERS = _fft_workers()


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

    @cached_property
    def Hp(self) -> int:
        return self.H + self.pt + self.pb

    @cached_property
    def Wp(self) -> int:
        return self.W + self.pl + self.pr

    @cached_property
    def KH(self) -> int:
        """Extent of the dilated kernel."""
        return self.dh * (self.kh - 1) + 1

    @cached_property
    def KW(self) -> int:
        return self.dw * (self.kw - 1) + 1

    @cached_property
    def Ho(self) -> int:
        return (self.Hp - self.KH) // self.sh + 1

    @cached_property
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
    _check_memory(owner, geo, padding, dilation)
    return geo


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX: no bound to compare with
        return None


def _check_memory(owner: str, geo: Geometry, padding: Any, dilation: tuple[int, ...]) -> None:
    """Refuse, when the network is built, a geometry whose padded input and output for a
    single sample (float32, the least) exceed this machine's memory: a padding or
    dilation of 100000 would otherwise fail with a MemoryError at the first forward."""
    elements = geo.C * geo.Hp * geo.Wp + geo.F * geo.Ho * geo.Wo
    needed = 4 * elements
    available = _physical_memory()
    if available is not None and needed > available:
        raise ShapeError(f"{owner}: one sample would need at least {needed / 2**30:.1f} GiB "
                         f"(padded input {(geo.C, geo.Hp, geo.Wp)} and output "
                         f"{(geo.F, geo.Ho, geo.Wo)} in float32), more than this machine's "
                         f"{available / 2**30:.1f} GiB of memory; check padding {padding!r} "
                         f"and dilation {dilation}")


# --------------------------------------------------------------------------------------
# the direct algorithm: im2col + GEMM, channels first, a few images at a time
# --------------------------------------------------------------------------------------
#: bytes of im2col columns per chunk of images: small enough to stay in cache between
#: the copy that writes them and the GEMM that reads them
CHUNK_BYTES = 2 * 1024 * 1024


@dataclass(frozen=True)
class Grid:
    """Where the direct algorithm computes its output pixels.

    With stride 1 an output row is computed across the whole padded width (``Wg = Wp``,
    the last ``Wp - Wo`` pixels of each row are thrown away): then kernel offset (i, j)
    reads a single run of ``Ho * Wp`` input values per image and channel, starting at
    ``i * dh * Wp + j * dw`` in the flattened padded image, so im2col and col2im move
    long contiguous runs instead of rows of ``Wo``. The price is ``Wp / Wo`` times the
    GEMM columns (30 / 28 for a 3x3 kernel at 28x28 "same"). With a larger stride,
    ``Wg = Wo``.
    """

    geo: Geometry
    n: int
    itemsize: int = 4

    @cached_property
    def flat(self) -> bool:
        return self.geo.sh == 1 and self.geo.sw == 1

    @cached_property
    def Wg(self) -> int:
        return self.geo.Wp if self.flat else self.geo.Wo

    @cached_property
    def pixels(self) -> int:
        """Output pixels per image on the grid."""
        return self.geo.Ho * self.Wg

    @cached_property
    def plane(self) -> int:
        """Padded input values per image and channel."""
        return self.geo.Hp * self.geo.Wp

    @cached_property
    def tail(self) -> int:
        """Zeros after the last image, so the last grid row's discarded pixels can read
        past its end."""
        return (self.geo.kw - 1) * self.geo.dw if self.flat else 0

    @cached_property
    def step(self) -> int:
        """Images per chunk of the input's columns."""
        geo = self.geo
        return self.images_per_chunk(geo.C * geo.kh * geo.kw * self.pixels)

    def images_per_chunk(self, values_per_image: int) -> int:
        return max(1, min(self.n, CHUNK_BYTES // max(values_per_image * self.itemsize, 1)))

    def padded(self, dtype: Any) -> np.ndarray:
        """A zero (C, N*Hp*Wp + tail) buffer for a padded input or its delta."""
        return np.zeros((self.geo.C, self.n * self.plane + self.tail), dtype=dtype)

    def interior(self, flat: np.ndarray) -> np.ndarray:
        """The unpadded (C, N, H, W) view of such a buffer."""
        geo = self.geo
        images = flat[:, :self.n * self.plane].reshape(geo.C, self.n, geo.Hp, geo.Wp)
        return images[:, :, geo.pt:geo.pt + geo.H, geo.pl:geo.pl + geo.W]

    def windows(self, flat: np.ndarray, rows: int | None = None) -> np.ndarray:
        """The values each kernel offset meets, as one (channels, kh, kw, N, rows, Wg)
        view of a buffer laid out like the padded input, one plane per image: [:, i, j,
        n] are what offset (i, j) meets in image n, over ``rows`` grid rows (default
        Ho). Windows of different offsets overlap in memory, those of one offset do
        not, so col2im may add into ``[:, i, j]`` one offset at a time."""
        geo = self.geo
        item = flat.itemsize
        rows = geo.Ho if rows is None else rows
        return as_strided(flat, shape=(flat.shape[0], geo.kh, geo.kw, self.n, rows, self.Wg),
                          strides=(flat.strides[0], geo.dh * geo.Wp * item, geo.dw * item,
                                   self.plane * item, geo.sh * geo.Wp * item, geo.sw * item))


def _im2col(grid: Grid, windows: np.ndarray, start: int, stop: int, out: np.ndarray
            ) -> np.ndarray:
    """Columns of images ``start:stop`` as a (C*kh*kw, m*Ho*Wg) matrix written into
    ``out`` in one copy; the row order (c, i, j) is that of ``W.reshape(F, -1)``, so the
    weights need no transpose."""
    cols, by_offset = _columns(grid, out, stop - start)
    by_offset[...] = windows[:, :, :, start:stop]
    return cols


def _column_buffer(grid: Grid, dtype: Any) -> np.ndarray:
    geo = grid.geo
    return np.empty((geo.C * geo.kh * geo.kw, grid.step * grid.pixels), dtype=dtype)


def _columns(grid: Grid, buf: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``m`` images' part of a column buffer, as a matrix and as a
    (C, kh, kw, m, Ho, Wg) view of the same memory."""
    geo = grid.geo
    cols = buf[:, :m * grid.pixels]
    return cols, cols.reshape(geo.C, geo.kh, geo.kw, m, geo.Ho, grid.Wg)


def direct_forward(x: np.ndarray, W: np.ndarray, b: np.ndarray | None, geo: Geometry,
                   keep: bool) -> tuple[np.ndarray, Any]:
    """Output (F, N*Ho*Wg) = W (F, C*kh*kw) @ columns, built chunk by chunk. The cache
    is the padded input (kh*kw times smaller than the columns, which backward rebuilds
    per chunk); the result is an NCHW view of channels-first memory."""
    n = x.shape[0]
    grid = Grid(geo, n, x.itemsize)
    xp = grid.padded(x.dtype)
    grid.interior(xp)[...] = x.transpose(1, 0, 2, 3)
    Wm = W.reshape(geo.F, -1)
    y = np.empty((geo.F, n * grid.pixels), dtype=np.result_type(x, W))
    buf = _column_buffer(grid, x.dtype)
    windows = grid.windows(xp)
    for start in range(0, n, grid.step):
        stop = min(n, start + grid.step)
        part = y[:, start * grid.pixels:stop * grid.pixels]
        np.matmul(Wm, _im2col(grid, windows, start, stop, buf), out=part)
        if b is not None:
            part += b[:, None]
    out = y.reshape(geo.F, n, geo.Ho, grid.Wg)[:, :, :, :geo.Wo].transpose(1, 0, 2, 3)
    return out, ((grid, xp) if keep else None)


def direct_backward(cache: Any, g: np.ndarray, geo: Geometry, need_x: bool, use_bias: bool,
                    W: np.ndarray) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None]:
    """Per chunk: rebuild the columns, dW += g @ columns.T, and (when the input delta is
    wanted) column deltas W.T @ g added back into their windows (col2im). With stride 1,
    the input delta wanted and no more than twice as many filters as channels,
    ``_delta_columns_backward`` does the same work with one copy instead of two. Its
    columns have F rows per kernel offset where these have C, so the copy it saves
    outweighs its larger GEMMs only while F is not much larger than C (the figures
    behind the bound are in docs/performance.md)."""
    grid, xp = cache
    if need_x and grid.flat and geo.F <= 2 * geo.C:
        return _delta_columns_backward(grid, xp, g, geo, use_bias, W)
    n = grid.n
    dt = np.result_type(g, W)
    gc = g.transpose(1, 0, 2, 3)                          # (F, N, Ho, Wo)
    if grid.Wg == geo.Wo:
        gT = gc.reshape(geo.F, -1)  # free for channels-first deltas
    else:  # on the grid, with zeros where the forward threw pixels away
        gT = np.zeros((geo.F, n, geo.Ho, grid.Wg), dtype=g.dtype)
        gT[:, :, :, :geo.Wo] = gc
        gT = gT.reshape(geo.F, -1)
    dWT = np.zeros((geo.C * geo.kh * geo.kw, geo.F), dtype=dt)
    dWT_part = np.empty_like(dWT)
    db = gc.sum(axis=(1, 2, 3)) if use_bias else None
    buf = _column_buffer(grid, xp.dtype)
    windows = grid.windows(xp)
    if need_x:
        WmT = np.ascontiguousarray(W.reshape(geo.F, -1).T)
        dxp = grid.padded(dt)
        dx_windows = grid.windows(dxp)
        dcols_buf = _column_buffer(grid, dt)
    for start in range(0, n, grid.step):
        stop = min(n, start + grid.step)
        g_part = gT[:, start * grid.pixels:stop * grid.pixels]
        np.matmul(_im2col(grid, windows, start, stop, buf), g_part.T, out=dWT_part)
        dWT += dWT_part
        if need_x:
            dcols, by_offset = _columns(grid, dcols_buf, stop - start)
            np.matmul(WmT, g_part, out=dcols)
            for i in range(geo.kh):
                for j in range(geo.kw):
                    window = dx_windows[:, i, j, start:stop]
                    np.add(window, by_offset[:, i, j], out=window)
    dx = grid.interior(dxp).transpose(1, 0, 2, 3) if need_x else None
    return dx, np.ascontiguousarray(dWT.T).reshape(W.shape), db


def _delta_columns_backward(grid: Grid, xp: np.ndarray, g: np.ndarray, geo: Geometry,
                            use_bias: bool, W: np.ndarray
                            ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Stride 1: columns of the output delta serve both gradients.

    On the flat grid, forward is y[f, p] = sum W[f, c, i, j] xp[c, p + o(i, j)] with
    o(i, j) = i dh Wp + j dw. So the padded input's delta is a correlation of the delta
    with the flipped kernels, dxp[c, q] = sum W[f, c, i, j] g[f, q - o(i, j)], and
    dW[f, c, i, j] = sum over q of g[f, q - o(i, j)] xp[c, q]: both are GEMMs over the
    same columns g[f, q - o(i, j)], built per chunk with one copy. That replaces the
    input's columns rebuilt for dW and the scatter-add of column deltas (col2im). The
    delta lies on the grid with zeros where forward threw pixels away and in the rows
    below each image's outputs, after ``front`` zeros, so no window reads another
    image's values."""
    n, plane = grid.n, grid.plane
    dt = np.result_type(g, W)
    front = (geo.KH - 1) * geo.Wp + (geo.KW - 1)
    gext = np.zeros((geo.F, front + n * plane), dtype=dt)
    on_grid = gext[:, front:].reshape(geo.F, n, geo.Hp, geo.Wp)
    on_grid[:, :, :geo.Ho, :geo.Wo] = g.transpose(1, 0, 2, 3)
    db = on_grid.sum(axis=(1, 2, 3)) if use_bias else None
    # kernel offset (kh-1-i, kw-1-j) of the columns pairs with W[..., i, j]
    W_flipped = np.ascontiguousarray(W[:, :, ::-1, ::-1].transpose(1, 0, 2, 3), dtype=dt)
    W_flipped = W_flipped.reshape(geo.C, -1)
    windows = grid.windows(gext, rows=geo.Hp)  # whole planes: dx for every padded pixel
    rows = geo.F * geo.kh * geo.kw
    step = grid.images_per_chunk(rows * plane)
    buf = np.empty((rows, step * plane), dtype=dt)
    dxp = np.empty((geo.C, n * plane), dtype=dt)
    dW = np.zeros((rows, geo.C), dtype=dt)
    dW_part = np.empty_like(dW)
    for start in range(0, n, step):
        stop = min(n, start + step)
        cols = buf[:, :(stop - start) * plane]
        cols.reshape(geo.F, geo.kh, geo.kw, stop - start, geo.Hp, geo.Wp)[...] = \
            windows[:, :, :, start:stop]
        np.matmul(W_flipped, cols, out=dxp[:, start * plane:stop * plane])
        np.matmul(cols, xp[:, start * plane:stop * plane].T, out=dW_part)
        dW += dW_part
    dx = dxp.reshape(geo.C, n, geo.Hp, geo.Wp)[:, :, geo.pt:geo.pt + geo.H,
                                                geo.pl:geo.pl + geo.W]
    dW4 = dW.reshape(geo.F, geo.kh, geo.kw, geo.C)[:, ::-1, ::-1].transpose(0, 3, 1, 2)
    return dx.transpose(1, 0, 2, 3), np.ascontiguousarray(dW4), db


# --------------------------------------------------------------------------------------
# the FFT algorithm: 2-D real FFTs, channel contraction as a batched matmul, inverse
# --------------------------------------------------------------------------------------
def _fft_size(geo: Geometry) -> tuple[int, int]:
    return (scipy.fft.next_fast_len(geo.Hp, real=True),
            scipy.fft.next_fast_len(geo.Wp, real=True))


def _rfft(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(h, w, *batch) real -> (P, *batch) spectrum, P = L1 * (L2 // 2 + 1). The real to
    complex pass along the rows runs first, over the ``h`` rows ``a`` has rather than
    all L1 (the rest are zeros: 7 of 36 rows for a 7x7 kernel)."""
    rows = scipy.fft.rfft(a, n=size[1], axis=1, workers=FFT_WORKERS)
    spec = scipy.fft.fft(rows, n=size[0], axis=0, workers=FFT_WORKERS, overwrite_x=True)
    return spec.reshape(-1, *a.shape[2:])


def _irfft(spec: np.ndarray, size: tuple[int, int], rows: int, first_row: int = 0
           ) -> np.ndarray:
    """(P, *batch) spectrum -> (rows, L2, *batch) real: rows ``first_row:first_row +
    rows`` of the inverse. The two passes run one after the other so that the second
    (complex to real, along the rows) transforms only the rows wanted, which is what
    the caller keeps (28 of 36 for a 28x28 'same' output, 7 for a 7x7 kernel)."""
    half = size[1] // 2 + 1
    spec = spec.reshape(size[0], half, *spec.shape[1:])
    cols = scipy.fft.ifft(spec, axis=0, workers=FFT_WORKERS, overwrite_x=True)
    return scipy.fft.irfft(cols[first_row:first_row + rows], n=size[1], axis=1,
                           workers=FFT_WORKERS, overwrite_x=True)


def _kernel_spectrum(W: np.ndarray, geo: Geometry, size: tuple[int, int]) -> np.ndarray:
    """(P, C, F) transform of the (dilated) kernels."""
    k = np.zeros((geo.KH, geo.KW, geo.C, geo.F), dtype=W.dtype)
    k[::geo.dh, ::geo.dw] = W.transpose(2, 3, 1, 0)
    return _rfft(k, size)


def padding_only_taps(geo: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """The kernel rows and columns that only ever meet padding (their exact weight
    gradient is 0): tap ``i`` reads padded rows ``o * sh + i * dh`` for the ``Ho``
    outputs ``o``, and meets data only if one of them lies in ``[pt, pt + H)``."""

    def dead(taps: int, stride: int, dilation: int, outputs: int, before: int, size: int
             ) -> np.ndarray:
        reads = np.arange(outputs)[None, :] * stride + np.arange(taps)[:, None] * dilation
        inside = (reads >= before) & (reads < before + size)
        return np.logical_not(np.any(inside, axis=1))

    return (dead(geo.kh, geo.sh, geo.dh, geo.Ho, geo.pt, geo.H),
            dead(geo.kw, geo.sw, geo.dw, geo.Wo, geo.pl, geo.W))


def fft_forward(x: np.ndarray, W: np.ndarray, b: np.ndarray | None, geo: Geometry,
                keep: bool) -> tuple[np.ndarray, Any]:
    n = x.shape[0]
    size = _fft_size(geo)
    xp = np.zeros((geo.Hp, geo.Wp, n, geo.C), dtype=x.dtype)
    xp[geo.pt:geo.pt + geo.H, geo.pl:geo.pl + geo.W] = x.transpose(2, 3, 0, 1)
    X = _rfft(xp, size)                                  # (P, N, C)
    Wf = _kernel_spectrum(W, geo, size)                  # (P, C, F)
    Y = X @ np.conj(Wf)                                  # correlation, not convolution
    full = _irfft(Y, size, geo.sh * (geo.Ho - 1) + 1)     # (rows, L2, N, F)
    y = full[::geo.sh, :geo.sw * (geo.Wo - 1) + 1:geo.sw]
    y = y.astype(x.dtype, copy=False)
    y[empty_windows(xp, geo)] = 0  # exactly, as the direct path: see empty_windows
    if b is not None:
        y += b  # (y is a view of the inverse transform's own result)
    return y.transpose(2, 3, 0, 1), ((X, Wf, n) if keep else None)


def empty_windows(xp: np.ndarray, geo: Geometry) -> np.ndarray:
    """(Ho, Wo, N): outputs whose window of the padded input ``xp`` (Hp, Wp, N, C) is all
    zeros, in every channel. Their exact value is 0 (before the bias) and the direct path
    computes exactly that, but the transforms leave rounding noise: a ReLU after them
    would let noise through where its exact derivative is 0 (zero-padded borders, a
    blank background), and training would drift from the direct path and PyTorch."""
    data = np.asarray(xp.any(axis=3))                    # (Hp, Wp, N)
    rows = np.zeros((geo.Ho, geo.Wp, xp.shape[2]), dtype=bool)
    for i in range(geo.kh):
        start = i * geo.dh
        rows |= data[start:start + geo.sh * (geo.Ho - 1) + 1:geo.sh]
    window = np.zeros((geo.Ho, geo.Wo, xp.shape[2]), dtype=bool)
    for j in range(geo.kw):
        start = j * geo.dw
        window |= rows[:, start:start + geo.sw * (geo.Wo - 1) + 1:geo.sw]
    return ~window


def fft_backward(cache: Any, g: np.ndarray, geo: Geometry, need_x: bool, use_bias: bool,
                 W: np.ndarray) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None]:
    """(``W`` is unused: the kernels' spectrum is in the cache.)"""
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
    dW_full = _irfft(np.conj(G.transpose(0, 2, 1)) @ X, size, geo.KH)  # (KH, L2, F, C)
    dW = dW_full[::geo.dh, :geo.KW:geo.dw].transpose(2, 3, 0, 1)
    dW = np.ascontiguousarray(dW, dtype=g.dtype)
    dead_rows, dead_cols = padding_only_taps(geo)
    dW[:, :, dead_rows] = 0  # exactly, as the direct path: the transforms leave rounding
    dW[:, :, :, dead_cols] = 0  # noise there, which Adam would turn into steps of ~lr/3
    dx = None
    if need_x:
        full = _irfft(G @ Wf.transpose(0, 2, 1), size, geo.H, geo.pt)  # (H, L2, N, C)
        dx = full[:, geo.pl:geo.pl + geo.W].astype(g.dtype, copy=False)
        dx = dx.transpose(2, 3, 0, 1)
    return dx, dW, db


# --------------------------------------------------------------------------------------
# choosing an algorithm
# --------------------------------------------------------------------------------------
#: seconds per unit of work of each kind; only their ratios matter, since they decide
#: between two algorithms (fitted with float32, OpenBLAS and pocketfft: see
#: docs/performance.md, and ``python -m benchmarks`` to check a machine's choice)
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
    """2-D cross-correlation (what deep learning calls convolution) over NCHW inputs.

    Config:
        filters: output channels.
        kernel_size: window size, an int or one per spatial axis.
        stride: step between windows, an int or one per spatial axis.
        padding: "valid" (none), "same" (output as large as the input at stride 1), an int
            or one per spatial axis.
        dilation: spacing between kernel taps, an int or one per spatial axis.
        use_bias: add a bias per filter.
        in_channels: input channels, checked when given (else taken from the input).
        algorithm: "auto" (picked per shape), "direct" (im2col + GEMM) or "fft"
            (scipy.fft).
        kernel_initializer: initializer of ``W`` (filters, in_channels, *kernel_size).
        bias_initializer: initializer of ``b``.
    """

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

    def cache_allowance(self) -> tuple[float, str] | None:
        if self.algorithm == "direct":
            return None
        return (4.0, "the FFT algorithm caches the complex spectrum of the input, padded to "
                     "a fast FFT length")

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

    def _backward4(self, cache: Any, g: np.ndarray, W4: np.ndarray, need_x: bool
                   ) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None]:
        """``W4``: the kernels as 4-D (F, C, kh, kw), read now rather than cached (the
        optimizer only changes them after backward)."""
        algorithm, geo, inner = cache
        _, bwd = _ALGORITHMS[algorithm]
        return bwd(inner, g, geo, need_x, self.use_bias, W4)

    def forward(self, inputs: tuple[np.ndarray, ...], *, train: bool) -> tuple[Any, Any]:
        (x,) = inputs
        geo = self._check_input(x)
        y, cache = self._forward4(x, self.params["W"], geo, train)
        return (y,), cache

    def backward(self, cache: Any, grad_outputs: tuple[np.ndarray, ...], *,
                 needs_grad: Sequence[bool] | None = None) -> Grads:
        need_x = needs_grad is None or bool(needs_grad[0])
        dx, dW, db = self._backward4(cache, grad_outputs[0], self.params["W"], need_x)
        grads = {"W": dW}
        if db is not None:
            grads["b"] = db
        return (dx,), grads

    def describe_backward(self, input_shapes: Sequence[Shape]) -> str:
        W = self.params["W"]
        rule = ("Δ = Δ' ⋆ᵀ W (each output position's delta spread back over its window "
                "through the kernels), ∂L/∂W = Δ' ⋆ x (the delta correlated with the input)")
        if self.use_bias:
            rule += ", ∂L/∂b = Σ_batch,positions Δ'"
        return f"{rule}; W {W.shape}, stride {self.stride}, x {tuple(input_shapes[0])}"


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
        dx, dW, db = self._backward4(cache, grad_outputs[0][:, :, None, :],
                                     self.params["W"][:, :, None, :], need_x)
        grads = {"W": dW[:, :, 0, :]}
        if db is not None:
            grads["b"] = db
        return ((None if dx is None else dx[:, :, 0, :]),), grads


# --------------------------------------------------------------------------------------
# pooling
# --------------------------------------------------------------------------------------
class _Pool2D(Layer):
    """Shared config and geometry of the windowed pools (no dilation).

    Config:
        kernel_size: window size, an int or (height, width).
        stride: step between windows (default: the window size).
        padding: rows and columns added on each side, an int or (height, width).
    """

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


def _zeros_like_layout(x: np.ndarray, shape: Shape) -> np.ndarray:
    """Zeros of ``shape`` whose axes lie in memory in the order of ``x``'s (a
    channels-first conv output's delta stays channels-first)."""
    order = sorted(range(x.ndim), key=lambda axis: -x.strides[axis])
    memory = np.zeros([shape[axis] for axis in order], dtype=x.dtype)
    return memory.transpose(np.argsort(order))


def _scatter_to_argmax(g: np.ndarray, arg: np.ndarray, geo: Geometry, planes: int
                       ) -> np.ndarray:
    """Overlapping windows: every output delta goes to its window's argmax, and a pixel
    that wins several windows sums them. One unbuffered ``np.add.at`` over flat indices
    into the padded input does it in the delta's dtype and touches only the winners,
    where ``bincount`` sums in float64 over every input pixel and masked adds into
    strided windows make nine passes over the delta (docs/performance.md)."""
    size = planes * geo.Hp * geo.Wp
    index = np.dtype(np.int32 if size < 2**31 else np.int64)
    offsets = np.array([i * geo.Wp + j for i in range(geo.kh) for j in range(geo.kw)],
                       dtype=index)
    target = np.take(offsets, arg)
    per_plane = target.reshape(planes, geo.Ho, geo.Wo)
    per_plane += (np.arange(planes, dtype=index) * (geo.Hp * geo.Wp))[:, None, None]
    per_plane += ((np.arange(geo.Ho, dtype=index) * (geo.sh * geo.Wp))[:, None]
                  + np.arange(geo.Wo, dtype=index) * geo.sw)
    sums = np.zeros(size, dtype=g.dtype)
    np.add.at(sums, target.ravel(), g.ravel())
    return sums.reshape(*g.shape[:2], geo.Hp, geo.Wp)


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
        K = geo.kh * geo.kw
        if K == 1:
            best = _window(xp, geo, 0, 0).copy(order="K")
            return (best,), ((np.zeros(best.shape, dtype=np.uint8), x.shape, geo)
                             if train else None)
        # every window offset's values in one contiguous stack: the strided gathers are
        # paid once, and the max and the argmax then run on contiguous memory
        stack = np.empty((K, *x.shape[:2], geo.Ho, geo.Wo), dtype=x.dtype)
        for k in range(K):
            stack[k] = _window(xp, geo, *divmod(k, geo.kw))
        best = stack.max(axis=0)
        if not train:
            return (best,), None
        # the offset of the first maximum: the largest K - k among the offsets that hit
        arg_type = np.uint8 if K < 256 else np.int32
        first = np.zeros(best.shape, dtype=arg_type)
        hit = np.empty(best.shape, dtype=bool)
        weighted = np.empty(best.shape, dtype=arg_type)
        for k in range(K):
            np.equal(stack[k], best, out=hit)
            np.multiply(hit, arg_type(K - k), out=weighted)
            np.maximum(first, weighted, out=first)
        arg = np.subtract(arg_type(K), first, out=first)
        np.minimum(arg, arg_type(K - 1), out=arg)  # a NaN window hits nothing
        return (best,), (arg, x.shape, geo)

    def backward(self, cache: Any, grad_outputs: tuple[np.ndarray, ...], *,
                 needs_grad: Sequence[bool] | None = None) -> Grads:
        arg, shape, geo = cache
        (g,) = grad_outputs
        n, c = shape[:2]
        if geo.sh >= geo.kh and geo.sw >= geo.kw:
            # disjoint windows: each offset writes its own pixels, no sums
            dxp = _zeros_like_layout(g, (n, c, geo.Hp, geo.Wp))
            for k in range(geo.kh * geo.kw):
                np.multiply(g, arg == k, out=_window(dxp, geo, *divmod(k, geo.kw)))
        else:
            dxp = _scatter_to_argmax(g, arg, geo, n * c)
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

    def describe_backward(self, input_shapes: Sequence[Shape]) -> str:
        return (f"Δ = Δ' routed to the maximum of each {self.kernel_size} window "
                f"(stride {self.stride}), 0 elsewhere; x {tuple(input_shapes[0])}")


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
        dxp = _zeros_like_layout(g, (*shape[:2], geo.Hp, geo.Wp))
        disjoint = geo.sh >= geo.kh and geo.sw >= geo.kw
        for k in range(geo.kh * geo.kw):
            target = _window(dxp, geo, *divmod(k, geo.kw))
            if disjoint:
                target[...] = share
            else:
                target += share
        return (dxp[:, :, geo.pt:geo.pt + geo.H, geo.pl:geo.pl + geo.W],), {}

    def describe_backward(self, input_shapes: Sequence[Shape]) -> str:
        kh, kw = self.kernel_size
        return (f"Δ = Δ' / {kh * kw} spread over each {self.kernel_size} window "
                f"(stride {self.stride}); x {tuple(input_shapes[0])}")


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

    def describe_backward(self, input_shapes: Sequence[Shape]) -> str:
        C, H, W = input_shapes[0]
        return f"Δ = Δ' / {H * W} at every position of each channel; x {(C, H, W)}"


@hookimpl
def deltaprop_register_layers() -> list[type[Layer]]:
    return [Conv2D, Conv1D, MaxPool2D, AvgPool2D, GlobalAvgPool2D]
