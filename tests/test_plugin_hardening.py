"""Issue 20, items 3, 7 and 15: a plugin that exits, prints or misspells a hook is
reported and contained; switches are read in their usual spellings; a disabled plugin is
called disabled; scaffold names never shadow a module."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

from deltaprop import Layer, hookimpl
from deltaprop.cli import main
from deltaprop.errors import ConfigError, PluginError
from deltaprop.registry import Registry, reset_registry
from deltaprop.testing.scaffold import names_for


def fake_distribution(root: Path, name: str, source: str) -> None:
    """An installed distribution ``name`` on ``root`` whose entry point is its module."""
    module = name.replace("-", "_")
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{module}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[deltaprop]\n{module} = {module}\n")


def run(root: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "deltaprop", *args], capture_output=True,
                          text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(root), **env})


EXITS_AT_IMPORT = "import sys\nsys.exit(3)\n"
EXITS_IN_HOOK = """
    import sys
    from deltaprop import hookimpl

    @hookimpl
    def deltaprop_register_layers():
        raise SystemExit("bye")
"""
PRINTS_AT_IMPORT = "print('hello from a plugin')\n"
MISSPELLED = """
    from deltaprop import hookimpl

    @hookimpl
    def deltaprop_register_layer():
        return []
"""


@pytest.mark.parametrize("source, reason", [(EXITS_AT_IMPORT, "SystemExit: 3"),
                                            (EXITS_IN_HOOK, "raised SystemExit: bye")])
def test_a_plugin_that_exits_is_a_broken_plugin_and_the_rest_works(tmp_path, source, reason):
    fake_distribution(tmp_path, "exiting-plugin", source)
    done = run(tmp_path, "layers", "--json")
    assert done.returncode == 0, done.stderr
    assert "dense" in {row["name"] for row in json.loads(done.stdout)}
    assert "exiting_plugin" in done.stderr and reason in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    strict = run(tmp_path, "layers", DELTAPROP_STRICT_PLUGINS="yes")
    assert strict.returncode == 2 and reason in strict.stderr


def test_a_plugin_that_prints_does_not_corrupt_json(tmp_path):
    fake_distribution(tmp_path, "chatty-plugin", PRINTS_AT_IMPORT)
    done = run(tmp_path, "layers", "--json")
    assert done.returncode == 0
    json.loads(done.stdout)  # still JSON
    assert "chatty_plugin" in done.stderr and "hello from a plugin" in done.stderr
    plugins = json.loads(run(tmp_path, "plugins", "--json").stdout)
    assert next(p for p in plugins if p["name"] == "chatty_plugin")["printed"] == \
        "hello from a plugin\n"


def test_a_misspelled_hook_is_named_with_the_closest_hook(tmp_path):
    fake_distribution(tmp_path, "typo-plugin", MISSPELLED)
    done = run(tmp_path, "layers")
    assert done.returncode == 0
    assert ("typo_plugin" in done.stderr and "'deltaprop_register_layer'" in done.stderr
            and "did you mean 'deltaprop_register_layers'" in done.stderr), done.stderr


def test_system_exit_in_a_runtime_plugin_is_contained():
    registry = Registry(strict=False)

    def leave():
        raise SystemExit(1)

    with pytest.warns(RuntimeWarning, match="leaver.*SystemExit"):
        registry.register_plugin(types.SimpleNamespace(__name__="leaver",
                                                       deltaprop_register_layers=hookimpl(leave)))
    assert "dense" in registry.names()

    def interrupt():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # the user's Ctrl-C is never swallowed
        registry.register_plugin(types.SimpleNamespace(
            __name__="interrupted", deltaprop_register_layers=hookimpl(interrupt)))


@pytest.mark.parametrize("value, strict", [("1", True), ("TRUE", True), ("yes", True),
                                           ("on", True), ("0", False), ("false", False),
                                           ("No", False), ("", False)])
def test_strict_switch_spellings(monkeypatch, value, strict):
    monkeypatch.setenv("DELTAPROP_STRICT_PLUGINS", value)
    assert Registry().strict is strict


def test_an_unknown_strict_spelling_is_refused_in_one_line(monkeypatch, capsys):
    monkeypatch.setenv("DELTAPROP_STRICT_PLUGINS", "maybe")
    with pytest.raises(PluginError, match="DELTAPROP_STRICT_PLUGINS='maybe'"):
        Registry()


def test_a_disabled_plugins_layer_is_reported_as_disabled(monkeypatch, tmp_path, capsys):
    import deltaprop
    net = deltaprop.Sequential([deltaprop.create("dense", units=3), deltaprop.create("tanh")],
                               4, seed=0)
    deltaprop.save(net, tmp_path / "m.npz")
    monkeypatch.setenv("DELTAPROP_DISABLE_PLUGINS", "activations")
    reset_registry()
    try:
        assert main(["evaluate", str(tmp_path / "m.npz")]) == 2
        err = capsys.readouterr().err
        assert "'activations', which is disabled by DELTAPROP_DISABLE_PLUGINS" in err
        with pytest.raises(deltaprop.errors.RegistryError, match="disabled by"):
            deltaprop.create("tanh")
    finally:
        monkeypatch.delenv("DELTAPROP_DISABLE_PLUGINS")
        reset_registry()


class Unused(Layer):
    name = "unused"


@pytest.mark.parametrize("name", ["numpy", "json", "os", "pluggy", "Numpy"])
def test_scaffold_refuses_names_that_shadow_a_module(name):
    with pytest.raises(ConfigError, match="shadows"):
        names_for(name)


def test_scaffold_cli_refuses_numpy(tmp_path, capsys):
    assert main(["plugin", "new", "numpy", "--dir", str(tmp_path / "x")]) == 2
    assert "shadows" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_a_plugin_changing_numpy_error_handling_is_put_back(tmp_path):
    fake_distribution(tmp_path, "strict-numpy", "import numpy\nnumpy.seterr(all='raise')\n")
    spec = Path(__file__).with_name("bad_inputs") / "good" / "mlp.toml"
    done = run(tmp_path, "train", str(spec), "--epochs", "1", "--no-progress", "--lr", "1e30")
    assert "strict_numpy" in done.stderr and "np.seterr" in done.stderr
    assert "FloatingPointError" not in done.stderr and "Traceback" not in done.stderr
    assert done.returncode in (0, 2) and len(done.stderr.strip().splitlines()) <= 2
