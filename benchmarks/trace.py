"""The cost of a trace: one training step of the example digits CNN recorded node by
node (``with net.trace()``) against the same step unrecorded, in the same process,
interleaved; and the default dense/sigmoid network of ``deltaprop train``.

    python -m benchmarks.trace [--quick]
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

import deltaprop
from benchmarks.common import format_rows, interleaved_medians, row
from deltaprop.data import load_data

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def measure(name: str, net: Any, batch: int, repeats: int) -> dict[str, Any]:
    data = load_data("digits").reshaped(net.input_shapes[0])
    x, y = data.x_train[:batch], data.y_train[:batch]
    optimizer = deltaprop.create_optimizer("sgd", lr=0.01)

    def plain() -> None:
        net.train_step(x, y, loss="softmax_cross_entropy", optimizer=optimizer)

    def traced() -> None:
        with net.trace():
            net.train_step(x, y, loss="softmax_cross_entropy", optimizer=optimizer)

    ms = interleaved_medians({"plain": plain, "traced": traced}, repeats=repeats)
    return row("trace", f"{name}, batch {batch}", ms, "plain")


def run(quick: bool = False) -> list[dict[str, Any]]:
    deltaprop.retain_freed_memory()  # this suite trains networks, as deltaprop train does
    repeats = 10 if quick else 40
    cnn = deltaprop.load_spec(EXAMPLES / "digits_cnn.toml", seed=0)
    rows = [measure("digits cnn", cnn, batch, repeats) for batch in (32, 128)]
    dense = deltaprop.load_spec({
        "inputs": {"x": [64]}, "outputs": ["logits"],
        "nodes": [{"name": "hidden", "layer": "dense", "inputs": ["x"], "units": 64},
                  {"name": "sigmoid", "layer": "sigmoid", "inputs": ["hidden"]},
                  {"name": "logits", "layer": "dense", "inputs": ["sigmoid"], "units": 10}]},
        seed=0)
    rows.append(measure("dense/sigmoid 64-64-10", dense, 32, repeats))
    return rows


if __name__ == "__main__":
    np.seterr(all="ignore")
    print(format_rows(run(quick="--quick" in sys.argv)))
