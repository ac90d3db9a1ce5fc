"""conv2d and max_pool2d, forward plus backward (input, weight and bias gradients),
float32: deltaprop (auto, and each algorithm forced) against PyTorch CPU when installed.

    python -m benchmarks.conv [--quick]
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import numpy as np

from benchmarks.common import format_rows, interleaved_medians, row, torch_or_none
from deltaprop.plugins.conv import Conv2D, MaxPool2D
from deltaprop.testing import make_layer

#: (batch, in_channels, filters, size, kernel): the shapes of the issue's table
CONV_CASES = [
    (64, 16, 32, 28, 3),
    (64, 16, 32, 28, 7),
    (128, 48, 64, 19, 3),
    (128, 48, 64, 19, 7),
]
#: (batch, channels, size, kernel, stride)
POOL_CASES = [
    (64, 32, 28, 2, 2),
    (128, 64, 19, 3, 2),
]


def _step(layer: Any, x: np.ndarray, g: np.ndarray) -> Callable[[], None]:
    def step() -> None:
        (_,), cache = layer.forward((x,), train=True)
        layer.backward(cache, (g,))
    return step


def _torch_conv_step(torch: Any, x: np.ndarray, W: np.ndarray, g: np.ndarray, padding: int
                     ) -> Callable[[], None]:
    tx = torch.tensor(x, requires_grad=True)
    tw = torch.tensor(W, requires_grad=True)
    tb = torch.zeros(W.shape[0], requires_grad=True)
    tg = torch.tensor(g)

    def step() -> None:
        y = torch.nn.functional.conv2d(tx, tw, tb, padding=padding)
        y.backward(tg)
        tx.grad = tw.grad = tb.grad = None
    return step


def _torch_pool_step(torch: Any, x: np.ndarray, g: np.ndarray, k: int, s: int
                     ) -> Callable[[], None]:
    tx = torch.tensor(x, requires_grad=True)
    tg = torch.tensor(g)

    def step() -> None:
        torch.nn.functional.max_pool2d(tx, k, stride=s).backward(tg)
        tx.grad = None
    return step


def conv_rows(quick: bool, torch: Any) -> list[dict[str, Any]]:
    rows = []
    for n, c, f, size, k in CONV_CASES[:2] if quick else CONV_CASES:
        rng = np.random.default_rng(0)
        x = rng.standard_normal((n, c, size, size)).astype(np.float32)
        layers = {name: make_layer(Conv2D, [(c, size, size)], filters=f, kernel_size=k,
                                   padding="same", algorithm=name)
                  for name in ("auto", "direct", "fft")}
        g = rng.standard_normal((n, f, size, size)).astype(np.float32)
        candidates = {name: _step(layer, x, g) for name, layer in layers.items()}
        picked = layers["auto"].pick(layers["auto"]._geometry((c, size, size)), n)
        if torch is not None:
            candidates["torch"] = _torch_conv_step(torch, x, layers["auto"].params["W"], g,
                                                   k // 2)
        ms = interleaved_medians(candidates, repeats=3 if quick else 11, warmup=1)
        rows.append(row("conv2d", f"N{n} {c}->{f} {size}x{size} k{k}", ms,
                        "torch" if torch is not None else "direct", auto_picked=picked))
    return rows


def pool_rows(quick: bool, torch: Any) -> list[dict[str, Any]]:
    rows = []
    for n, c, size, k, s in POOL_CASES[:1] if quick else POOL_CASES:
        rng = np.random.default_rng(0)
        x = rng.standard_normal((n, c, size, size)).astype(np.float32)
        layer = make_layer(MaxPool2D, [(c, size, size)], kernel_size=k, stride=s)
        g = rng.standard_normal((n, *layer.output_shapes[0])).astype(np.float32)
        candidates = {"deltaprop": _step(layer, x, g)}
        if torch is not None:
            candidates["torch"] = _torch_pool_step(torch, x, g, k, s)
        ms = interleaved_medians(candidates, repeats=5 if quick else 15, warmup=2)
        rows.append(row("max_pool2d", f"N{n} C{c} {size}x{size} k{k} s{s}", ms,
                        "torch" if torch is not None else "deltaprop"))
    return rows


def run(quick: bool = False) -> list[dict[str, Any]]:
    torch = torch_or_none()
    return conv_rows(quick, torch) + pool_rows(quick, torch)


if __name__ == "__main__":
    results = run(quick="--quick" in sys.argv)
    print(format_rows(results))
    for r in results:
        if "auto_picked" in r:
            print(f"{r['case']}: auto picked {r['auto_picked']}")
