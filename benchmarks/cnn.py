"""One training epoch of the example CNNs: ``examples/digits_cnn.toml`` on the bundled
digits and ``examples/fashion_cnn.toml`` on Fashion-MNIST (when Debian's
``dataset-fashion-mnist`` is installed), deltaprop's ``fit`` against a PyTorch loop over
the same network, starting weights, batches and optimizer.

    python -m benchmarks.cnn [--quick]

``--quick`` trains on the first 4,000 Fashion-MNIST images instead of all 60,000.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import deltaprop
from benchmarks.common import format_rows, interleaved_medians, row, torch_or_none
from deltaprop.data import load_data

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
FASHION = Path("/usr/share/datasets/fashion-mnist")
QUICK_SAMPLES = 4000


def _torch_model(torch: Any, net: Any) -> Any:
    """The same chain of layers in PyTorch, with deltaprop's current weights."""
    nn = torch.nn
    modules = []
    shape = net.inputs[0].shape
    for layer in net.layers:
        if layer.name == "conv2d":
            geo = layer._geometry(shape)
            conv = nn.Conv2d(geo.C, layer.filters, layer.kernel_size, stride=layer.stride,
                             padding=(geo.pt, geo.pl), dilation=layer.dilation,
                             bias=layer.use_bias)
            conv.weight.data = torch.tensor(layer.params["W"])
            if layer.use_bias:
                conv.bias.data = torch.tensor(layer.params["b"])
            modules.append(conv)
            shape = (layer.filters, geo.Ho, geo.Wo)
        elif layer.name == "max_pool2d":
            modules.append(nn.MaxPool2d(layer.kernel_size, stride=layer.stride,
                                        padding=layer.padding))
            geo = layer._geometry(shape)
            shape = (geo.C, geo.Ho, geo.Wo)
        elif layer.name == "relu":
            modules.append(nn.ReLU())
        elif layer.name == "flatten":
            modules.append(nn.Flatten())
            shape = (int(np.prod(shape)),)
        elif layer.name == "dense":
            linear = nn.Linear(shape[0], layer.units)
            linear.weight.data = torch.tensor(layer.params["W"].T.copy())
            linear.bias.data = torch.tensor(layer.params["b"])
            modules.append(linear)
            shape = (layer.units,)
        else:
            raise ValueError(f"no PyTorch translation for layer {layer.name!r}")
    return nn.Sequential(*modules)


def _batches(n: int, batch_size: int, seed: int) -> list[np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


def epoch_candidates(spec: Path, x: np.ndarray, y: np.ndarray, torch: Any
                     ) -> dict[str, Callable[[], None]]:
    net = deltaprop.load_spec(spec, seed=0)
    train = net.train_config
    batch_size, lr = int(train["batch_size"]), float(train["lr"])
    candidates: dict[str, Callable[[], None]] = {
        "deltaprop": lambda: net.fit(x, y, loss=train["loss"],
                                     optimizer=deltaprop.create_optimizer("adam", lr=lr),
                                     epochs=1, batch_size=batch_size, seed=0,
                                     progress=False)}
    if torch is not None:
        model = _torch_model(torch, net)
        tx, ty = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
        batches = [torch.from_numpy(b) for b in _batches(len(x), batch_size, 0)]

        def torch_epoch() -> None:
            optimizer = torch.optim.Adam(model.parameters(), lr=lr)
            for index in batches:
                optimizer.zero_grad()
                loss = torch.nn.functional.cross_entropy(model(tx[index]), ty[index])
                loss.backward()
                optimizer.step()
        candidates["torch"] = torch_epoch
    return candidates


def run(quick: bool = False) -> list[dict[str, Any]]:
    deltaprop.retain_freed_memory()  # this suite trains networks, as deltaprop train does
    torch = torch_or_none()
    reference = "torch" if torch is not None else "deltaprop"
    rows = []
    digits = load_data("digits").reshaped((1, 8, 8))
    ms = interleaved_medians(epoch_candidates(EXAMPLES / "digits_cnn.toml", digits.x_train,
                                              digits.y_train, torch),
                             repeats=3 if quick else 7, warmup=1)
    rows.append(row("cnn epoch", f"digits_cnn {len(digits.x_train)} images", ms, reference))
    if FASHION.is_dir():
        fashion = load_data(FASHION).reshaped((1, 28, 28))
        n = QUICK_SAMPLES if quick else len(fashion.x_train)
        ms = interleaved_medians(epoch_candidates(EXAMPLES / "fashion_cnn.toml",
                                                  fashion.x_train[:n], fashion.y_train[:n],
                                                  torch),
                                 repeats=2 if quick else 3, warmup=0)
        rows.append(row("cnn epoch", f"fashion_cnn {n} images", ms, reference))
    return rows


if __name__ == "__main__":
    print(format_rows(run(quick="--quick" in sys.argv)))
