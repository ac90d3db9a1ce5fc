"""Layers describe themselves: config keys with type, default and meaning from the
signature and the docstring's ``Config:`` section (built-in and third-party alike),
``deltaprop layers NAME`` and ``--json``, and docs/layers.md kept up to date."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

import deltaprop as dp
from deltaprop.config import documented_keys
from deltaprop.io.reference import describe_entry, entry_text, layers_markdown
from deltaprop.registry import Registry

DOCS = Path(__file__).resolve().parent.parent / "docs" / "layers.md"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "deltaprop", *args], capture_output=True,
                          text=True, timeout=120)


def test_docs_layers_md_is_up_to_date():
    expected = layers_markdown(dp.get_registry())
    assert DOCS.read_text(encoding="utf-8") == expected, (
        "docs/layers.md is out of date: regenerate it with "
        "`deltaprop layers --markdown > docs/layers.md`")


def undocumented_keys(kind: str, distribution: str) -> list[str]:
    registry = dp.get_registry()
    return [f"{name}.{key['key']}" for name in registry.names(kind)
            if registry.provider(kind, name).distribution == distribution
            for key in registry.get(kind, name).config_schema() if not key["doc"]]


@pytest.mark.parametrize("kind", ["layer", "loss", "optimizer"])
def test_every_built_in_config_key_says_what_it_means(kind):
    undocumented = undocumented_keys(kind, "deltaprop")
    assert not undocumented, f"add these to the class's Config: docstring: {undocumented}"


@pytest.mark.parametrize("kind", ["layer", "loss", "optimizer"])
def test_every_contrib_config_key_says_what_it_means(kind):
    if importlib.util.find_spec("deltaprop_contrib") is None:
        pytest.skip("deltaprop-contrib is not installed (pip install ./contrib_layers)")
    registry = dp.get_registry()
    if not any(registry.provider(kind, name).distribution == "deltaprop-contrib"
               for name in registry.names(kind)):
        pytest.skip(f"deltaprop-contrib registers no {kind} here (its plugins disabled?)")
    undocumented = undocumented_keys(kind, "deltaprop-contrib")
    assert not undocumented, f"add these to the class's Config: docstring: {undocumented}"


class Scale(dp.Layer):
    """Multiplies by a constant; a third party's layer.

    Config:
        factor: what to multiply by.
        note: a key whose meaning
            runs on to a second line.
    """

    name = "scale_for_reference_test"
    examples = [{"config": {"factor": 2.0}, "input_shapes": [(3,)]}]

    def __init__(self, factor: float, note="", *, dtype: str = "float32",
                 label: str | None = None) -> None:
        super().__init__(dtype=dtype, label=label)
        self.factor = factor
        self.note = note

    def forward(self, inputs, *, train):
        return (inputs[0] * self.factor,), None

    def backward(self, cache, grad_outputs):
        return (grad_outputs[0] * self.factor,), {}


class Plugin:
    @staticmethod
    @dp.hookimpl
    def deltaprop_register_layers():
        return [Scale]


def test_a_third_party_layer_describes_itself_the_same_way():
    registry = Registry(disabled=())
    registry.register_plugin(Plugin(), "scale_plugin", distribution="acme-layers",
                             version="1.2")
    entry = describe_entry(registry, "layer", "scale_for_reference_test")
    keys = {k["key"]: k for k in entry["config"]}
    assert keys["factor"] == {"key": "factor", "type": "float", "default": None,
                              "required": True, "doc": "what to multiply by."}
    assert keys["note"]["type"] == "str" and keys["note"]["default"] == ""
    assert keys["note"]["doc"] == "a key whose meaning runs on to a second line."
    assert keys["dtype"]["doc"].startswith("float32 or float64")  # from dp.Layer
    assert entry["distribution"] == "acme-layers"
    assert entry["examples"] == [{"config": {"factor": 2.0}, "inputs": "(batch, 3)",
                                  "outputs": "(batch, 3)"}]
    text = entry_text(entry)
    assert "factor  float" in text and "(required)" in text
    markdown = layers_markdown(registry, "acme-layers")
    assert "## `scale_for_reference_test`" in markdown
    assert "--distribution acme-layers" in markdown


def test_documented_keys_ignore_other_sections():
    class Other:
        """Text.

        Config:
            a: first.

        Notes: not a key.
        """

    assert documented_keys(Other) == {"a": "first."}


def test_cli_layers_name_and_json():
    shown = cli("layers", "dense")
    assert shown.returncode == 0, shown.stderr
    assert "units" in shown.stdout and "(required)" in shown.stdout
    assert "example" in shown.stdout and "-> (batch, 3)" in shown.stdout
    one = json.loads(cli("layers", "conv2d", "--json").stdout)
    assert {k["key"] for k in one["config"]} >= {"filters", "kernel_size", "padding"}
    rows = json.loads(cli("layers", "--json").stdout)
    dense = next(r for r in rows if r["name"] == "dense")
    units = next(k for k in dense["config"] if k["key"] == "units")
    assert units["required"] and units["type"] == "int" and units["doc"]
    assert cli("layers", "adam").stdout.count("lr") >= 1
    missing = cli("layers", "densse")
    assert missing.returncode == 2 and "did you mean 'dense'" in missing.stderr
