"""Gradient flow over training: the per-layer gradient norms a hook records during
``fit`` are the means of the norms of the gradients each update applied, and the
example pair shows vanishing gradients (deep sigmoid) and their cure (deep relu)."""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

import deltaprop as dp
from deltaprop.training.gradient_flow import GradientFlow
from deltaprop.visual.gradient_flow import gradient_flow_svg

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


class Applied(dp.Hook):
    """The gradients of every update, copied."""

    def __init__(self):
        self.grads = []

    def before_update(self, grads):
        self.grads.append({k: v.copy() for k, v in grads.items()})


def test_norms_are_epoch_means_of_each_layers_gradient_norm(rng):
    net = dp.load_spec(EXAMPLES / "mlp.toml", seed=0)
    x, y = rng.standard_normal((40, 64)).astype("float32"), rng.integers(0, 10, 40)
    flow, applied = GradientFlow(net), Applied()
    net.fit(x, y, epochs=2, batch_size=16, optimizer="sgd", hooks=[flow, applied],
            progress=False, seed=0)
    assert flow.layers == ["hidden1", "hidden2", "logits"]
    per_batch = [np.sqrt(sum(np.sum(g[f"hidden2/{p}"].astype(np.float64) ** 2)
                             for p in ("W", "b"))) for g in applied.grads]
    assert len(per_batch) == 6  # 3 batches per epoch
    assert flow.norms["hidden2"] == pytest.approx([np.mean(per_batch[:3]),
                                                   np.mean(per_batch[3:])], rel=1e-5)
    svg = ET.fromstring(gradient_flow_svg(flow, "mlp"))
    lines = [e for e in svg.iter("{http://www.w3.org/2000/svg}polyline")
             if e.get("class") == "layer"]
    assert len(lines) == 3


@pytest.mark.slow
def test_the_deep_sigmoid_gradients_vanish_and_the_relu_ones_do_not():
    data = dp.data.load_data("digits")
    first_over_last = {}
    for act in ("sigmoid", "relu"):
        net = dp.load_spec(EXAMPLES / f"deep_{act}.toml", seed=0)
        flow = GradientFlow(net)
        net.fit(data.x_train, data.y_train, epochs=2, optimizer=dp.create_optimizer(
            "sgd", lr=0.1), hooks=[flow], progress=False, seed=0)
        first_over_last[act] = flow.norms["dense1"][-1] / flow.norms["dense8"][-1]
    assert first_over_last["sigmoid"] < 1e-3
    assert 0.1 < first_over_last["relu"] < 10


def test_train_writes_the_gradient_figure(tmp_path):
    out = tmp_path / "g.svg"
    result = subprocess.run([sys.executable, "-m", "deltaprop", "train", "--epochs", "2",
                             "--plot-gradients", str(out), "--no-progress"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "gradient flow written" in result.stdout
    root = ET.fromstring(out.read_text())
    assert "hidden" in "".join(root.itertext())
    bad = subprocess.run([sys.executable, "-m", "deltaprop", "train", "--plot-gradients",
                          str(tmp_path / "no" / "g.svg")], capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode == 2 and "--plot-gradients" in bad.stderr
