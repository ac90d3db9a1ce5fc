"""conv2d, conv1d and the pools against PyTorch CPU: outputs and every gradient, over
many shapes, strides, paddings and dilations, with both convolution algorithms."""

from __future__ import annotations

import numpy as np
import pytest

from deltaprop.testing import make_layer

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

from deltaprop.plugins.conv import (  # noqa: E402
    AvgPool2D,
    Conv1D,
    Conv2D,
    GlobalAvgPool2D,
    MaxPool2D,
)

TOLERANCE = {"float64": 1e-10, "float32": 1e-4}

# (in_shape C,H,W, filters, kernel, stride, padding, dilation, bias)
CONV2D_CASES = [
    ((3, 8, 8), 4, 3, 1, 0, 1, True),
    ((3, 8, 8), 4, 3, 1, 1, 1, True),
    ((2, 9, 7), 3, (3, 2), (2, 1), (1, 0), 1, False),
    ((4, 10, 10), 2, 3, 1, "same", 2, True),
    ((1, 12, 11), 5, 5, 2, 2, 1, True),
    ((3, 7, 9), 2, (2, 4), 1, "same", (2, 1), True),
    ((2, 6, 6), 3, 1, 1, 0, 1, True),
    ((2, 11, 13), 3, 3, 3, (2, 1), (1, 2), True),
    ((5, 9, 9), 6, 7, 1, 3, 1, True),
    ((3, 5, 5), 2, 5, 1, "valid", 1, True),
    # more than twice as many filters as channels: direct's backward by input columns
    ((1, 8, 8), 4, 3, 1, 1, 1, True),
    ((2, 9, 8), 5, (3, 2), 1, "same", (2, 1), False),
]


def _rel_close(ours: np.ndarray, ref: np.ndarray, dtype: str, what: str) -> None:
    ref = np.asarray(ref, dtype=np.float64)
    scale = max(float(np.abs(ref).max(initial=0.0)), 1e-30)
    err = float(np.abs(np.asarray(ours, dtype=np.float64) - ref).max(initial=0.0)) / scale
    assert ours.shape == ref.shape, f"{what}: shape {ours.shape}, torch {ref.shape}"
    assert err <= TOLERANCE[dtype], f"{what}: relative error {err:.3g} ({dtype})"


def _run(layer, x: np.ndarray, g: np.ndarray):
    (y,), cache = layer.forward((x,), train=True)
    (dx,), grads = layer.backward(cache, (g,))
    return y, dx, grads


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("algorithm", ["direct", "fft"])
@pytest.mark.parametrize("case", CONV2D_CASES, ids=[str(i) for i in range(len(CONV2D_CASES))])
def test_conv2d_matches_torch(case, algorithm, dtype):
    shape, filters, kernel, stride, padding, dilation, bias = case
    if padding == "same" and stride not in (1, (1, 1)):
        pytest.skip("PyTorch allows padding='same' only at stride 1")
    layer = make_layer(Conv2D, [shape], filters=filters, kernel_size=kernel, stride=stride,
                       padding=padding, dilation=dilation, use_bias=bias, algorithm=algorithm,
                       bias_initializer="glorot_uniform", dtype=dtype)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, *shape)).astype(dtype)
    g = rng.standard_normal((3, *layer.output_shapes[0])).astype(dtype)
    y, dx, grads = _run(layer, x, g)

    tx = torch.tensor(x, requires_grad=True)
    tw = torch.tensor(layer.params["W"], requires_grad=True)
    tb = torch.tensor(layer.params["b"], requires_grad=True) if bias else None
    ty = torch.nn.functional.conv2d(tx, tw, tb, stride=stride, padding=padding,
                                    dilation=dilation)
    ty.backward(torch.tensor(g))
    _rel_close(y, ty.detach().numpy(), dtype, "output")
    _rel_close(dx, tx.grad.numpy(), dtype, "input gradient")
    _rel_close(grads["W"], tw.grad.numpy(), dtype, "W gradient")
    if bias:
        _rel_close(grads["b"], tb.grad.numpy(), dtype, "b gradient")
    for value in (y, dx, *grads.values()):
        assert value.dtype == np.dtype(dtype)


CONV1D_CASES = [
    ((3, 10), 4, 3, 1, 0, 1),
    ((2, 13), 3, 4, 2, 1, 1),
    ((4, 12), 2, 3, 1, "same", 3),
    ((1, 20), 5, 7, 3, 2, 2),
]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("algorithm", ["direct", "fft"])
@pytest.mark.parametrize("case", CONV1D_CASES, ids=[str(i) for i in range(len(CONV1D_CASES))])
def test_conv1d_matches_torch(case, algorithm, dtype):
    shape, filters, kernel, stride, padding, dilation = case
    layer = make_layer(Conv1D, [shape], filters=filters, kernel_size=kernel, stride=stride,
                       padding=padding, dilation=dilation, algorithm=algorithm,
                       bias_initializer="glorot_uniform", dtype=dtype)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, *shape)).astype(dtype)
    g = rng.standard_normal((2, *layer.output_shapes[0])).astype(dtype)
    y, dx, grads = _run(layer, x, g)
    tx = torch.tensor(x, requires_grad=True)
    tw = torch.tensor(layer.params["W"], requires_grad=True)
    tb = torch.tensor(layer.params["b"], requires_grad=True)
    ty = torch.nn.functional.conv1d(tx, tw, tb, stride=stride, padding=padding,
                                    dilation=dilation)
    ty.backward(torch.tensor(g))
    _rel_close(y, ty.detach().numpy(), dtype, "output")
    _rel_close(dx, tx.grad.numpy(), dtype, "input gradient")
    _rel_close(grads["W"], tw.grad.numpy(), dtype, "W gradient")
    _rel_close(grads["b"], tb.grad.numpy(), dtype, "b gradient")


POOL_CASES = [
    ((3, 8, 8), 2, None, 0),
    ((2, 7, 9), 3, 2, 1),
    ((2, 6, 7), (2, 3), 1, (1, 0)),
    ((1, 9, 9), 3, 3, 1),
    ((4, 5, 6), (3, 2), (1, 2), 0),
]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("case", POOL_CASES, ids=[str(i) for i in range(len(POOL_CASES))])
def test_pools_match_torch(case, kind, dtype):
    shape, kernel, stride, padding = case
    cls = MaxPool2D if kind == "max" else AvgPool2D
    layer = make_layer(cls, [shape], kernel_size=kernel, stride=stride, padding=padding,
                       dtype=dtype)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, *shape)).astype(dtype)
    g = rng.standard_normal((3, *layer.output_shapes[0])).astype(dtype)
    y, dx, _ = _run(layer, x, g)
    tx = torch.tensor(x, requires_grad=True)
    fn = torch.nn.functional.max_pool2d if kind == "max" else torch.nn.functional.avg_pool2d
    ty = fn(tx, kernel, stride=stride if stride is not None else kernel, padding=padding)
    ty.backward(torch.tensor(g))
    _rel_close(y, ty.detach().numpy(), dtype, "output")
    _rel_close(dx, tx.grad.numpy(), dtype, "input gradient")


def test_max_pool_ties_go_to_the_first_like_torch():
    x = np.zeros((1, 1, 4, 4))
    layer = make_layer(MaxPool2D, [(1, 4, 4)], kernel_size=2, stride=1, dtype="float64")
    g = np.arange(9, dtype=np.float64).reshape(1, 1, 3, 3) + 1
    _, dx, _ = _run(layer, x, g)
    tx = torch.tensor(x, requires_grad=True)
    torch.nn.functional.max_pool2d(tx, 2, stride=1).backward(torch.tensor(g))
    np.testing.assert_array_equal(dx, tx.grad.numpy())


def test_global_avg_pool_matches_torch():
    layer = make_layer(GlobalAvgPool2D, [(3, 4, 5)], dtype="float64")
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 4, 5))
    g = rng.standard_normal((2, 3))
    y, dx, _ = _run(layer, x, g)
    tx = torch.tensor(x, requires_grad=True)
    ty = torch.nn.functional.adaptive_avg_pool2d(tx, 1).flatten(1)
    ty.backward(torch.tensor(g))
    _rel_close(y, ty.detach().numpy(), "float64", "output")
    _rel_close(dx, tx.grad.numpy(), "float64", "input gradient")


def test_channels_first_input_from_a_previous_conv_matches_torch():
    """A conv's output is an NCHW view of channels-first (C, N, H, W) memory, with the
    padded width's extra pixels skipped; the next conv and pool must read it
    correctly."""
    rng = np.random.default_rng(4)
    first = make_layer(Conv2D, [(3, 9, 9)], filters=4, kernel_size=3, padding=1,
                       dtype="float64", algorithm="direct")
    pool = make_layer(MaxPool2D, [(4, 9, 9)], kernel_size=2, dtype="float64")
    second = make_layer(Conv2D, [(4, 4, 4)], filters=2, kernel_size=3, dtype="float64",
                        algorithm="fft")
    x = rng.standard_normal((2, 3, 9, 9))
    (h,), _ = first.forward((x,), train=False)
    assert not h.flags.c_contiguous
    (p,), _ = pool.forward((h,), train=False)
    (y,), _ = second.forward((p,), train=False)
    t = torch.nn.functional.conv2d(torch.tensor(x), torch.tensor(first.params["W"]),
                                   torch.tensor(first.params["b"]), padding=1)
    t = torch.nn.functional.max_pool2d(t, 2)
    t = torch.nn.functional.conv2d(t, torch.tensor(second.params["W"]),
                                   torch.tensor(second.params["b"]))
    _rel_close(y, t.numpy(), "float64", "output")
