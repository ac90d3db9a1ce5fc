"""One training step of a ReLU MLP: deltaprop against the same step written as plain
numpy, against its raw matrix products alone, and against PyTorch CPU when installed.

    python -m benchmarks.mlp [--quick]
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

import deltaprop
from benchmarks.common import format_rows, interleaved_medians, row, torch_or_none

LR = 0.01


def make_case(sizes: tuple[int, ...], batch: int, seed: int = 0, **options: Any
              ) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, sizes[0])).astype(np.float32)
    y = rng.integers(0, sizes[-1], batch)
    layers = []
    for i, units in enumerate(sizes[1:]):
        layers.append(deltaprop.create("dense", units=units, kernel_initializer="he_normal"))
        if i < len(sizes) - 2:
            layers.append(deltaprop.create("relu"))
    net = deltaprop.Sequential(layers, input_shape=(sizes[0],), seed=seed, **options)
    weights = [(p["W"].copy(), p["b"].copy()) for p in
               (layer.params for layer in net.layers if layer.params)]
    return {"x": x, "y": y, "net": net, "weights": weights,
            "optimizer": deltaprop.create_optimizer("sgd", lr=LR),
            "loss": deltaprop.create_loss("softmax_cross_entropy")}


def numpy_step(weights: list[tuple[np.ndarray, np.ndarray]], x: np.ndarray,
               y: np.ndarray) -> float:
    """The textbook step by hand: forward, softmax cross-entropy, backward, SGD."""
    acts = [x]
    h = x
    for i, (W, b) in enumerate(weights):
        z = h @ W
        z += b
        h = np.maximum(z, 0) if i < len(weights) - 1 else z
        acts.append(h)
    logits = acts[-1]
    shifted = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(shifted)
    p /= p.sum(axis=1, keepdims=True)
    n = len(x)
    loss = -np.log(p[np.arange(n), y]).mean()
    delta = p
    delta[np.arange(n), y] -= 1
    delta /= n
    for i in range(len(weights) - 1, -1, -1):
        W, b = weights[i]
        gW = acts[i].T @ delta
        gb = delta.sum(axis=0)
        if i > 0:
            delta = (delta @ W.T) * (acts[i] > 0)
        W -= LR * gW
        b -= LR * gb
    return float(loss)


def matmuls_only(weights: list[tuple[np.ndarray, np.ndarray]], x: np.ndarray) -> None:
    """The GEMMs of the step and nothing else: the floor any implementation pays."""
    acts = [x]
    for W, _ in weights:
        acts.append(acts[-1] @ W)
    delta = acts[-1]
    for i in range(len(weights) - 1, -1, -1):
        _ = acts[i].T @ delta
        if i > 0:
            delta = delta @ weights[i][0].T


def torch_step(torch: Any, sizes: tuple[int, ...], batch: int) -> Any:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    mods: list[Any] = []
    for i, units in enumerate(sizes[1:]):
        mods.append(torch.nn.Linear(sizes[i], units))
        if i < len(sizes) - 2:
            mods.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*mods)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    loss_fn = torch.nn.CrossEntropyLoss()
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((batch, sizes[0])).astype(np.float32))
    y = torch.from_numpy(rng.integers(0, sizes[-1], batch))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()

    return step


def run(quick: bool = False) -> list[dict[str, Any]]:
    deltaprop.retain_freed_memory()  # this suite trains networks, as deltaprop train does
    torch = torch_or_none()
    repeats = 10 if quick else 40
    cases = [((784, 512, 256, 10), 32), ((784, 512, 256, 10), 128),
             ((784, 512, 256, 10), 512), ((64, 32, 10), 32)]
    rows = []
    for sizes, batch in cases:
        case = make_case(sizes, batch)
        net, x, y = case["net"], case["x"], case["y"]
        plain = make_case(sizes, batch, fuse=False, plan_memory=False)
        candidates = {
            "deltaprop": lambda net=net, x=x, y=y, c=case: net.train_step(
                x, y, loss=c["loss"], optimizer=c["optimizer"]),
            "no-passes": lambda x=x, y=y, c=plain: c["net"].train_step(
                x, y, loss=c["loss"], optimizer=c["optimizer"]),
            "numpy": lambda c=case, x=x, y=y: numpy_step(c["weights"], x, y),
            "matmuls": lambda c=case, x=x: matmuls_only(c["weights"], x),
        }
        if torch is not None:
            candidates["torch"] = torch_step(torch, sizes, batch)
        ms = interleaved_medians(candidates, repeats=repeats)
        label = "-".join(map(str, sizes))
        rows.append(row("mlp", f"{label} b{batch}", ms, "numpy"))
    rows.append(digits_epoch(repeats=3 if quick else 9))
    rows.append(executor_overhead(repeats=repeats))
    return rows


def executor_overhead(repeats: int, nodes: int = 50) -> dict[str, Any]:
    """The executor's own work per node: forward and backward through ``nodes`` tanh
    nodes on a 4x4 batch, against the same tanh calls by hand; the difference divided
    by ``nodes`` is what each node costs in bookkeeping (reported as ``per_node_us``)."""
    net = deltaprop.Sequential([deltaprop.create("tanh") for _ in range(nodes)],
                               input_shape=4, fuse=False)
    x = np.random.default_rng(0).standard_normal((4, 4)).astype(np.float32)
    g = np.ones_like(x)

    def by_hand() -> None:
        ys = [x]
        for _ in range(nodes):
            ys.append(np.tanh(ys[-1]))
        delta = g
        for y in reversed(ys[1:]):
            delta = delta * (1 - y * y)

    def through_executor() -> None:
        net.forward(x, train=True)
        net.backward(g)

    ms = interleaved_medians({"deltaprop": through_executor, "numpy": by_hand},
                             repeats=repeats * 3)
    per_node = (ms["deltaprop"] - ms["numpy"]) / nodes * 1e3
    return row("mlp", f"executor {nodes} tanh nodes", ms, "numpy",
               per_node_us=round(per_node, 2))


def numpy_epoch(weights: list[tuple[np.ndarray, np.ndarray]], x: np.ndarray, y: np.ndarray,
                batch: int, seed: int) -> None:
    """One epoch of the digits network (dense-sigmoid-dense, softmax cross-entropy, SGD)
    by hand, shuffled like ``fit``."""
    (W1, b1), (W2, b2) = weights
    order = np.random.default_rng(seed).permutation(len(x))
    for start in range(0, len(x), batch):
        idx = order[start:start + batch]
        xb, yb = x[idx], y[idx]
        n = len(xb)
        z = xb @ W1
        z += b1
        h = 1.0 / (1.0 + np.exp(-z))
        logits = h @ W2
        logits += b2
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        p[np.arange(n), yb] -= 1
        p /= n
        gW2, gb2 = h.T @ p, p.sum(axis=0)
        d = (p @ W2.T) * h * (1 - h)
        gW1, gb1 = xb.T @ d, d.sum(axis=0)
        W2 -= DIGITS_LR * gW2
        b2 -= DIGITS_LR * gb2
        W1 -= DIGITS_LR * gW1
        b1 -= DIGITS_LR * gb1


DIGITS_LR = 0.1


def digits_epoch(repeats: int) -> dict[str, Any]:
    """One epoch of the default digits network (64-64 sigmoid-10, batch 32, SGD)."""
    from deltaprop.cli import default_spec
    from deltaprop.data import load_data

    data = load_data("digits")
    x = data.x_train.reshape(len(data.x_train), -1).astype(np.float32)
    y = data.y_train
    spec = default_spec(x.shape[1], data.n_classes)
    nets = {"deltaprop": deltaprop.load_spec(spec, seed=0),
            "no-passes": deltaprop.load_spec(spec, seed=0).configure(fuse=False,
                                                                     plan_memory=False)}
    weights = [(layer.params["W"].copy(), layer.params["b"].copy())
               for layer in nets["deltaprop"].layers if layer.params]
    candidates = {name: (lambda net=net: net.fit(
        x, y, loss="softmax_cross_entropy", optimizer=deltaprop.create_optimizer(
            "sgd", lr=DIGITS_LR), epochs=1, batch_size=32, seed=0, progress=False))
        for name, net in nets.items()}
    candidates["numpy"] = lambda: numpy_epoch(weights, x, y, 32, 0)
    ms = interleaved_medians(candidates, repeats=repeats, warmup=1)
    return row("mlp", "digits epoch 64-64-10 b32", ms, "numpy")


if __name__ == "__main__":
    print(format_rows(run(quick="--quick" in sys.argv)))
