"""Spec files: TOML and JSON, references to node outputs, shared layers, the round
trip, and malformed specs rejected before anything is built."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

import deltaprop
from deltaprop import SpecError, load_spec

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

BASE = {
    "inputs": {"x": [4]},
    "outputs": ["out"],
    "nodes": [
        {"name": "h", "layer": "dense", "inputs": ["x"], "units": 6},
        {"name": "parts", "layer": "split", "inputs": ["h"], "sections": 2},
        {"name": "act", "layer": "tanh", "inputs": ["parts:1"]},
        {"name": "again", "shares": "act", "inputs": ["parts:0"]},
        {"name": "out", "layer": "add", "inputs": ["act", "again"]},
    ],
    "train": {"loss": "mse", "optimizer": "sgd", "lr": 0.1},
}


def test_examples_load():
    for path in sorted(EXAMPLES.glob("*.toml")) + sorted(EXAMPLES.glob("*.json")):
        net = load_spec(path)
        assert net.n_params > 0 or path.name.startswith("no_params")


def test_refs_multi_output_and_shared_layer():
    net = load_spec(BASE, seed=0)
    assert [s.name for s in net.steps] == ["h", "parts", "act", "again", "out"]
    assert net.steps[2].layer is net.steps[3].layer
    assert net.train_config["lr"] == 0.1
    assert net.forward(np.ones((2, 4)))[0].shape == (2, 3)


def test_round_trip_gives_the_same_network_and_outputs(tmp_path, rng):
    net = load_spec(BASE, seed=3)
    spec = net.to_spec()
    again = load_spec(spec, seed=99)
    for key, value in net.params.items():
        again.params[key][...] = value
    x = rng.standard_normal((5, 4))
    np.testing.assert_array_equal(net.forward(x)[0], again.forward(x)[0])
    assert again.to_spec() == spec
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    assert load_spec(path).to_spec() == spec


def test_same_seed_same_weights():
    a, b = load_spec(BASE, seed=7), load_spec(BASE, seed=7)
    for key in a.params:
        np.testing.assert_array_equal(a.params[key], b.params[key])


def broken(**changes):
    spec = copy.deepcopy(BASE)
    for path, value in changes.items():
        target = spec
        keys = path.split(".")
        for k in keys[:-1]:
            target = target[int(k)] if isinstance(target, list) else target[k]
        last = keys[-1]
        if isinstance(target, list):
            target[int(last)] = value
        elif value is None:
            target.pop(last)
        else:
            target[last] = value
    return spec


@pytest.mark.parametrize(("changes", "message"), [
    ({"nodes.0.layer": "dens"}, r"node 'h': unknown layer 'dens'; did you mean 'dense'"),
    ({"nodes.0.unitz": 3}, r"node 'h'.*unknown config key\(s\) 'unitz'"),
    ({"nodes.0.units": -2}, r"node 'h'.*units must be a positive integer"),
    ({"nodes.2.inputs": ["nowhere"]}, r"node 'act'.*'nowhere' names no input or node"),
    ({"nodes.2.inputs": ["parts:5"]}, r"node 'parts' has 2 outputs; output 5"),
    ({"nodes.0.inputs": ["out"]}, r"cycle"),
    ({"outputs": ["act"]}, r"node '(again|out)' is not connected to any output"),
    ({"nodes.1.name": "h"}, r"'h' is used twice"),
    ({"nodes.0.units": 7}, r"does not divide"),
    ({"inputs": {"x": [0]}}, r"input 'x': shape"),
    ({"outputs": None}, r"outputs"),
    ({"bogus": 1}, r"unknown top-level key"),
    ({"nodes.3.shares": "ghost"}, r"shares the layer of 'ghost'"),
    ({"nodes.4.inputs": ["act", "again", "h"]}, r"node 'out' \(add\).*\(3,\) and \(6,\)"),
])
def test_malformed_specs_are_rejected_naming_the_culprit(changes, message):
    with pytest.raises(deltaprop.DeltapropError, match=message):
        load_spec(broken(**changes))


def test_invalid_files(tmp_path):
    bad_toml = tmp_path / "bad.toml"
    bad_toml.write_text("inputs = [\n")
    with pytest.raises(SpecError, match=r"bad.toml.*invalid TOML"):
        load_spec(bad_toml)
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{")
    with pytest.raises(SpecError, match=r"bad.json.*invalid JSON"):
        load_spec(bad_json)
    with pytest.raises(SpecError, match="cannot read"):
        load_spec(tmp_path / "missing.toml")
    with pytest.raises(SpecError, match=r".toml or .json"):
        load_spec(tmp_path / "spec.yaml")
