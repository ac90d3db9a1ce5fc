"""Issue 20, item 16: the FFT path's float32 weight gradient is exactly 0 at taps that
only ever meet padding, as the direct path's is, so Adam (which divides by the
gradient's magnitude) leaves those weights alone as PyTorch does."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import deltaprop
from deltaprop.plugins.conv import Conv2D
from deltaprop.testing import make_layer

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

# 3x3 inputs, a 7x7 kernel and padding 3: output 3x3, and the first and last kernel rows
# and columns only ever meet padding (their exact gradient is 0)
C, H, W, F, K, PAD, CLASSES, N = 2, 3, 3, 4, 7, 3, 3, 16


def test_fft_weight_gradient_is_exactly_zero_at_padding_only_taps():
    rng = np.random.default_rng(0)
    layer = make_layer(Conv2D, [(C, H, W)], filters=F, kernel_size=K, padding=PAD,
                       algorithm="fft", dtype="float32")
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    (y,), cache = layer.forward((x,), train=True)
    _, grads = layer.backward(cache, (rng.standard_normal(y.shape).astype(np.float32),))
    dW = grads["W"]
    for edge in (0, K - 1):
        assert not dW[:, :, edge, :].any() and not dW[:, :, :, edge].any()
    assert np.abs(dW[:, :, 1:-1, 1:-1]).min() > 0


def adam_against_pytorch(x: np.ndarray, y: np.ndarray, activation: str, kernel: int,
                         padding: int, steps: int = 15) -> tuple[float, deltaprop.Network,
                                                                 dict, Any]:
    """The largest loss difference over ``steps`` Adam steps of conv2d (fft) ->
    activation -> dense, float32, deltaprop against PyTorch from the same weights."""
    _, channels, height, width = x.shape
    with deltaprop.tensor.seeded(0):
        inp = deltaprop.Input((channels, height, width), name="x")
        conv = deltaprop.create("conv2d", filters=F, kernel_size=kernel, padding=padding,
                                algorithm="fft", label="conv")
        h = deltaprop.create(activation)(conv(inp, name="conv"), name="act")
        h = deltaprop.create("flatten")(h, name="flat")
        out = deltaprop.create("dense", units=CLASSES, label="out")(h, name="out")
    net = deltaprop.Network([inp], [out])
    params = {k: v.copy() for k, v in net.params.items()}

    t_conv = torch.nn.Conv2d(channels, F, kernel, padding=padding)
    t_dense = torch.nn.Linear(F * height * width, CLASSES)
    with torch.no_grad():
        t_conv.weight.copy_(torch.from_numpy(params["conv/W"]))
        t_conv.bias.copy_(torch.from_numpy(params["conv/b"]))
        t_dense.weight.copy_(torch.from_numpy(params["out/W"].T.copy()))
        t_dense.bias.copy_(torch.from_numpy(params["out/b"]))
    t_act = torch.nn.Tanh() if activation == "tanh" else torch.nn.ReLU()
    model = torch.nn.Sequential(t_conv, t_act, torch.nn.Flatten(), t_dense)
    t_opt = torch.optim.Adam(model.parameters(), lr=0.01, betas=(0.9, 0.999), eps=1e-8)
    optimizer = deltaprop.create_optimizer("adam", lr=0.01)
    worst = 0.0
    for _ in range(steps):
        ours = net.train_step(x, y, loss="softmax_cross_entropy", optimizer=optimizer)
        t_opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(x)),
                                                 torch.from_numpy(y))
        loss.backward()
        t_opt.step()
        worst = max(worst, abs(float(ours) - loss.item()))
    return worst, net, params, t_conv


def test_a_float32_fft_cnn_trains_with_adam_like_pytorch():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    y = rng.integers(0, CLASSES, N)
    worst, net, params, t_conv = adam_against_pytorch(x, y, "tanh", K, PAD)
    assert worst < 1e-4, f"loss differs from PyTorch by {worst:.3g}"
    W_ours, W_torch = net.params["conv/W"], t_conv.weight.detach().numpy()
    np.testing.assert_allclose(W_ours, W_torch, atol=1e-4)
    np.testing.assert_array_equal(W_ours[:, :, 0], params["conv/W"][:, :, 0])


def test_a_float32_fft_relu_cnn_on_blank_borders_trains_like_pytorch():
    """Digits have blank borders and the biases start at 0: there the exact
    pre-activation is 0 and a ReLU's derivative too. The FFT path must give exactly 0
    there, as the direct path does, or the ReLU lets rounding noise through."""
    from deltaprop.data import load_digits

    data = load_digits()
    x = data.x_train[:64].reshape(-1, 1, 8, 8).astype(np.float32)
    worst, *_ = adam_against_pytorch(x, data.y_train[:64].astype(np.int64) % CLASSES,
                                     "relu", 3, 1)
    assert worst < 1e-4, f"loss differs from PyTorch by {worst:.3g}"
