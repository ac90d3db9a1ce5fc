"""Peak bytes and step time with and without the graph passes: none (the user graph,
every forward value kept to the end of forward), memory planning (liveness and in-place
work), fusion, and recomputation, on a deep MLP and on the Fashion-sized CNN (when a
conv2d layer is registered).

    python -m benchmarks.memory [--quick]

Two figures per variant: the peak bytes held for backward (caches and kept values;
with recomputation this peak is reached in backward) and the peak bytes live in
forward (that plus the forward values not yet dropped).
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

import deltaprop
from benchmarks.common import interleaved_medians, row

VARIANTS: dict[str, dict[str, Any]] = {
    "none": {"fuse": False, "plan_memory": False},
    "planned": {"fuse": False},
    "fused": {"fuse": True},
    "recompute": {"fuse": True, "recompute": True},  # segments of about sqrt(n) nodes
    "recompute2": {"fuse": True, "recompute": 2},  # segments of 2 nodes
}


def deep_mlp(options: dict[str, Any]) -> deltaprop.Network:
    layers: list[Any] = []
    for _ in range(16):
        layers += [deltaprop.create("dense", units=256, kernel_initializer="he_normal"),
                   deltaprop.create("relu")]
    layers.append(deltaprop.create("dense", units=10))
    return deltaprop.Sequential(layers, input_shape=784, seed=0, **options)


def fashion_cnn(options: dict[str, Any]) -> deltaprop.Network:
    """28x28 grey images -> two conv/relu/max-pool blocks -> dense/relu -> 10 logits."""
    c = deltaprop.create
    layers = [c("conv2d", filters=16, kernel_size=3, padding="same"), c("relu"),
              c("max_pool2d", kernel_size=2),
              c("conv2d", filters=32, kernel_size=3, padding="same"), c("relu"),
              c("max_pool2d", kernel_size=2),
              c("flatten"), c("dense", units=128), c("relu"), c("dense", units=10)]
    return deltaprop.Sequential(layers, input_shape=(1, 28, 28), seed=0, **options)


def has_layers(*names: str) -> bool:
    registered = set(deltaprop.get_registry().names("layer"))
    return all(n in registered for n in names)


def measure(label: str, build: Any, input_shape: tuple[int, ...], batch: int,
            repeats: int) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, *input_shape)).astype(np.float32)
    y = rng.integers(0, 10, batch)
    nets = {name: build(options) for name, options in VARIANTS.items()}
    peak = {}
    live = {}
    for name, net in nets.items():
        report = net.memory_report(x)
        peak[name] = report.peak_bytes
        live[name] = report.peak_live_bytes
    loss = deltaprop.create_loss("softmax_cross_entropy")
    candidates = {}
    for name, net in nets.items():
        opt = deltaprop.create_optimizer("sgd", lr=0.01)
        candidates[name] = (lambda net=net, opt=opt:
                            net.train_step(x, y, loss=loss, optimizer=opt))
    ms = interleaved_medians(candidates, repeats=repeats, warmup=2)
    return row("memory", f"{label} b{batch}", ms, "none", peak_bytes=peak,
               peak_live_bytes=live)


def run(quick: bool = False) -> list[dict[str, Any]]:
    deltaprop.retain_freed_memory()  # this suite trains networks, as deltaprop train does
    repeats = 5 if quick else 15
    rows = [measure("mlp 784-16x256-10", deep_mlp, (784,), 128, repeats)]
    if has_layers("conv2d", "max_pool2d", "flatten"):
        rows.append(measure("fashion cnn", fashion_cnn, (1, 28, 28), 64 if quick else 128,
                            max(5, repeats // 2)))
    return rows


def format_memory(rows: list[dict[str, Any]]) -> str:
    lines = []
    for r in rows:
        if "peak_bytes" not in r:
            continue
        for what in ("peak_bytes", "peak_live_bytes"):
            base = r[what]["none"]
            cells = "  ".join(f"{k} {v / 2**20:7.2f} MiB ({v / base:4.2f}x)"
                              for k, v in r[what].items())
            lines.append(f"{r['benchmark']:<10} {r['case'] + ' ' + what:<40} {cells}")
    return "\n".join(lines)


if __name__ == "__main__":
    from benchmarks.common import format_rows

    result = run(quick="--quick" in sys.argv)
    print(format_rows(result))
    print(format_memory(result))
