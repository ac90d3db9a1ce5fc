"""The picture of a network (``to_svg``, ``deltaprop show``), the summary, and the
``deltaprop trace`` command: what they draw and print, and the same one-line errors
as ``deltaprop train``."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

import deltaprop as dp
from deltaprop.tensor import seeded
from deltaprop.visual.graph_svg import Box, layout

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SVG = "{http://www.w3.org/2000/svg}"


def deltaprop(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "deltaprop", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=300)


def node_groups(svg: str) -> dict[str, ET.Element]:
    root = ET.fromstring(svg)
    return {g.get("data-node"): g for g in root.iter(f"{SVG}g")
            if "node" in (g.get("class") or "").split()}


def test_the_picture_has_a_box_per_node_and_an_arrow_per_tensor():
    net = dp.load_spec(EXAMPLES / "two_towers.json", seed=0)
    svg = net.to_svg()
    assert net._repr_svg_() == svg
    boxes = node_groups(svg)
    assert set(boxes) == {"pixels", *(s.name for s in net.steps)}
    root = ET.fromstring(svg)
    edges = [p for p in root.iter(f"{SVG}path") if p.get("class") == "edge"]
    assert len(edges) == sum(len(s.in_slots) for s in net.steps)
    texts = " ".join("".join(g.itertext()) for g in boxes.values())
    assert "split" in texts and "1,056 params" in texts and "(32,)" in texts
    labels = ["".join(g.itertext()) for g in root.iter(f"{SVG}g")
              if g.get("class") == "edge-label"]
    assert labels.count("(64,)") >= 3  # pixels read twice, the merge
    assert "output" in boxes["logits"].get("class")


def test_a_shared_layer_is_marked_and_fused_nodes_drawn_as_one():
    with seeded(0):
        x = dp.Input((4,), name="x")
        shared = dp.create("dense", units=4, label="shared")
        h = dp.create("relu")(shared(x, name="first"), name="act")
        y = shared(h, name="second")
    net = dp.Network(x, y)
    boxes = node_groups(net.to_svg())
    assert "shares its layer with second" in "".join(boxes["first"].itertext())
    rect = boxes["first"].find(f"{SVG}rect")
    assert rect.get("stroke-dasharray")
    fused = node_groups(net.to_svg(fused=True))
    assert set(fused) == {"x", "first+act", "second"}
    assert "dense+relu" in "".join(fused["first+act"].itertext())


def test_layout_rows_follow_the_longest_path_and_boxes_do_not_overlap():
    boxes = [Box("in", "in", [], []), Box("a", "a", [], [("in", "")]),
             Box("b", "b", [], [("a", "")]), Box("c", "c", [], [("in", ""), ("b", "")])]
    placed = layout(boxes)
    ys = {k: y for k, (_, y) in placed.corners.items()}
    assert ys["in"] < ys["a"] < ys["b"] < ys["c"]
    # the arrow in -> c passes the rows of a and b beside them
    (bend_a, bend_b) = placed.bends[("c", 0)]
    xa, xb = placed.corners["a"][0], placed.corners["b"][0]
    assert not xa <= bend_a <= xa + 176 and not xb <= bend_b <= xb + 176


def test_summary_prints_a_keras_style_table(capsys):
    net = dp.load_spec(EXAMPLES / "two_towers.json", seed=0)
    text = net.summary()
    assert capsys.readouterr().out == text + "\n"
    assert net.summary(print_fn=None) == text and capsys.readouterr().out == ""
    lines = text.splitlines()
    assert lines[0].split() == ["node", "layer", "output", "shape", "params", "inputs"]
    joined = next(line for line in lines if line.startswith("joined"))
    assert "concat" in joined and "top_act, bottom_act" in joined
    assert "(None, 32), (None, 32)" in text  # split's two outputs
    assert lines[-1] == f"total parameters: {net.n_params}"
    assert repr(text) == ""  # printed already: a REPL does not echo it


def test_show_prints_the_summary_and_writes_the_svg(tmp_path):
    out = tmp_path / "net.svg"
    result = deltaprop("show", str(EXAMPLES / "digits_cnn.toml"), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "conv2d" in result.stdout and "total parameters" in result.stdout
    assert "conv1" in node_groups(out.read_text())
    model = tmp_path / "m.npz"
    dp.save(dp.load_spec(EXAMPLES / "mlp.toml", seed=0), model)
    result = deltaprop("show", str(model))
    assert result.returncode == 0, result.stderr
    assert deltaprop("show").returncode == 0  # the default network


def test_trace_command_prints_the_table_and_writes_page_and_json(tmp_path):
    page, data = tmp_path / "t.html", tmp_path / "t.json"
    result = deltaprop("trace", str(EXAMPLES / "digits_cnn.toml"), "--batch-size", "8",
                       "--out", str(page), "--json", str(data))
    assert result.returncode == 0, result.stderr
    assert re.search(r"loss \d", result.stdout) and "conv1+relu1" in result.stdout
    numbers = json.loads(data.read_text())
    assert numbers["batch"] == 8
    assert [n["name"] for n in numbers["nodes"]][:2] == ["conv1+relu1", "conv2+relu2"]
    html = page.read_text()
    assert html.startswith("<!DOCTYPE html>") and 'id="panel-0"' in html
    assert "http://" not in html.replace("http://www.w3.org/2000/svg", "")
    default = deltaprop("trace", "--out", "", cwd=tmp_path)  # the default network
    assert default.returncode == 0, default.stderr
    assert "hidden+sigmoid" in default.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["--data", "nope.npz"], "no such file"),
    (["--batch-size", "0"], "--batch-size must be a positive integer"),
    (["--out", "no/such/folder/t.html"], "does not exist"),
    (["BAD_SPEC"], "did you mean 'dense'"),
    (["MLP", "--data", "IMAGES"], "do not fit the network input"),
])
def test_trace_errors_are_the_one_line_errors_of_train(tmp_path, args, message):
    bad = tmp_path / "bad.toml"
    bad.write_text('outputs = ["y"]\n[inputs]\nx = [64]\n[[nodes]]\nname = "y"\n'
                   'layer = "dens"\ninputs = ["x"]\nunits = 10\n')
    images = tmp_path / "images.npz"
    rng = np.random.default_rng(0)
    np.savez(images, x_train=rng.random((10, 5)), y_train=np.zeros(10, int),
             x_test=rng.random((4, 5)), y_test=np.zeros(4, int))
    names = {"BAD_SPEC": str(bad), "MLP": str(EXAMPLES / "mlp.toml"), "IMAGES": str(images)}
    args = [names.get(a, a) for a in args]
    for command in ("trace", "train"):
        result = deltaprop(command, *args, "--epochs", "1") if command == "train" and (
            "--out" not in args) else deltaprop(command, *args, cwd=tmp_path)
        assert result.returncode == 2, (command, result.stderr)
        assert message in result.stderr, (command, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "trace.html").exists()


def test_names_are_escaped_in_the_page_and_the_picture(rng):
    with seeded(0):
        x = dp.Input((3,), name='a"<b>&')
        y = dp.create("dense", units=2)(x, name='d"</script><i>')
    net = dp.Network(x, y)
    ET.fromstring(net.to_svg())  # well-formed
    with net.trace() as t:
        net.train_step(rng.standard_normal((4, 3)), np.zeros(4, int),
                       loss="softmax_cross_entropy", optimizer="sgd")
    html = t.to_html()
    assert "</script><i>" not in html and '"<b>&' not in html
    assert """data-node='d"&lt;/script&gt;&lt;i&gt;'""" in html
