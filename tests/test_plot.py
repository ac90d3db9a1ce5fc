"""Learning curves as SVG: the file is valid XML, every epoch is a point inside its panel,
the curves go the way the numbers go, and ``deltaprop train --plot`` writes one."""

from __future__ import annotations

import itertools
import math
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from deltaprop.plot import (
    PANEL_HEIGHT,
    PANEL_WIDTH,
    epoch_ticks,
    learning_curves_svg,
    nice_ticks,
    save_learning_curves,
)
from deltaprop.train import History

SVG = "{http://www.w3.org/2000/svg}"


def _points(root: ET.Element, name: str) -> list[tuple[float, float]]:
    (line,) = [e for e in root.iter(f"{SVG}polyline") if e.get("class") == name]
    return [tuple(map(float, p.split(","))) for p in line.get("points").split()]


def _in_panel(points, panel: int) -> bool:
    return all(panel * PANEL_WIDTH < x < (panel + 1) * PANEL_WIDTH and 0 < y < PANEL_HEIGHT
               for x, y in points)


def test_curves_follow_the_history():
    history = History(loss=[2.0, 1.0, 0.5, 0.4, 0.3], val_loss=[1.5, 1.1, 0.7, 0.6, 0.65],
                      val_accuracy=[0.5, 0.7, 0.8, 0.85, 0.84])
    root = ET.fromstring(learning_curves_svg(history, title="a <net> & data"))
    assert float(root.get("width")) == 2 * PANEL_WIDTH
    train, held_out, accuracy = (_points(root, n) for n in ("train", "held-out", "accuracy"))
    assert len(train) == len(held_out) == len(accuracy) == 5
    assert _in_panel(train, 0) and _in_panel(held_out, 0) and _in_panel(accuracy, 1)
    # epochs run left to right; SVG's y grows downwards
    assert [x for x, _ in train] == sorted(x for x, _ in train)
    assert all(a[1] < b[1] for a, b in itertools.pairwise(train))
    assert held_out[4][1] < held_out[3][1]          # the held-out loss rose at epoch 5
    assert accuracy[3][1] < accuracy[0][1]          # higher accuracy is higher up
    assert any(e.text == "a <net> & data" for e in root.iter(f"{SVG}text"))


def test_training_loss_alone_one_epoch_and_nan_are_drawn_without_failing(tmp_path):
    root = ET.fromstring(learning_curves_svg(History(loss=[0.9, math.nan, 0.4])))
    assert float(root.get("width")) == PANEL_WIDTH
    assert len(_points(root, "train")) == 2
    assert not [e for e in root.iter(f"{SVG}polyline") if e.get("class") == "accuracy"]
    resumed = ET.fromstring(learning_curves_svg(History(loss=[0.9, 0.6, 0.5, 0.4],
                                                        val_loss=[0.7, 0.6])))
    assert [x for x, _ in _points(resumed, "held-out")] == [x for x, _ in
                                                            _points(resumed, "train")][2:]
    single = ET.fromstring(learning_curves_svg(History(loss=[0.7], val_accuracy=[0.9])))
    assert not list(single.iter(f"{SVG}polyline"))
    assert len(list(single.iter(f"{SVG}circle"))) == 2
    path = tmp_path / "curves.svg"
    path.write_text("old")
    with pytest.raises(ValueError):  # fails inside the write: the old file stays
        save_learning_curves(History(loss=[0.5, "not a number"]), path)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["curves.svg"]


@pytest.mark.parametrize(("low", "high"), [(0.0161, 1.7), (0.81, 0.99), (-3, 7), (5, 5),
                                           (1e-5, 3e-5)])
def test_value_ticks_are_round_and_cover_the_range(low, high):
    ticks = nice_ticks(low, high)
    assert ticks[0] <= low and ticks[-1] >= high and 3 <= len(ticks) <= 7
    step = ticks[1] - ticks[0]
    mantissa = step / 10 ** math.floor(math.log10(step))
    assert min(abs(mantissa - m) for m in (1, 2, 5, 10)) < 1e-6


def test_epoch_ticks_are_few_and_round():
    assert epoch_ticks(1) == [1]
    assert epoch_ticks(10) == list(range(1, 11))
    assert epoch_ticks(30) == [1, 5, 10, 15, 20, 25, 30]
    assert all(len(epoch_ticks(n)) <= 11 for n in range(1, 500))


def test_train_plot_option_writes_the_curves(tmp_path):
    path = tmp_path / "curves.svg"
    result = subprocess.run([sys.executable, "-m", "deltaprop", "train", "--epochs", "3",
                             "--plot", str(path), "--no-progress"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    root = ET.parse(path).getroot()
    assert all(len(_points(root, n)) == 3 for n in ("train", "held-out", "accuracy"))
    missing = tmp_path / "nowhere" / "curves.svg"
    result = subprocess.run([sys.executable, "-m", "deltaprop", "train", "--plot",
                             str(missing)], capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "--plot" in result.stderr and "does not exist" in result.stderr
    assert "epochs" not in result.stdout  # refused before training
