"""Discovery against real installed distributions: the fixture plugins under
tests/fixtures/plugins each break in one way. `tox -e contrib` installs them into its
environment; elsewhere pip installs them into a throwaway folder put on the path of
these tests only (a plugin that fails would otherwise warn on every deltaprop command).
For each, `deltaprop plugins` says what happened and why, the rest of the registry
works, and strict mode turns it into an error. Also the version check a plugin module
can declare without being installed, and the entry-point scan cache."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import types
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest

import deltaprop
from deltaprop import Layer, PluginError, hookimpl
from deltaprop.registry import Registry, scan_entry_points

FIXTURES = {
    # entry-point name: (distribution, words the reason must contain)
    "fixture_import_fails": ("deltaprop-fixture-import-fails",
                             ["failed to import", "ModuleNotFoundError",
                              "deltaprop_fixture_missing_dependency"]),
    "fixture_hook_raises": ("deltaprop-fixture-hook-raises",
                            ["deltaprop_register_layers raised", "RuntimeError",
                             "fixture hook failure"]),
    "fixture_duplicate_name": ("deltaprop-fixture-duplicate-name",
                               ["layer 'dense' is already provided by plugin 'dense'",
                                "deltaprop-fixture-duplicate-name"]),
    "fixture_unsupported_version": ("deltaprop-fixture-unsupported-version",
                                    ["deltaprop>=99", "Requires-Dist", "not imported"]),
}


def installed(distribution: str) -> bool:
    try:
        metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        return False
    return True


FIXTURE_SOURCES = Path(__file__).resolve().parent / "fixtures" / "plugins"
#: the throwaway folder the fixtures were installed into, while this module runs
_installed_into: list[str] = []


@pytest.fixture(scope="module")
def fixture_plugins(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The fixture plugins, installed: as they are (tox -e contrib), or by pip into a
    throwaway folder on sys.path and PYTHONPATH for this module's tests."""
    if all(installed(dist) for dist, _ in FIXTURES.values()):
        yield
        return
    if importlib.util.find_spec("pip") is None:
        pytest.skip("pip is not in this environment (a tox-uv one): tox -e contrib installs "
                    "the fixture plugins and runs these tests")
    target = tmp_path_factory.mktemp("fixture-plugins")
    # setuptools is there on Python < 3.12 venvs; elsewhere pip fetches it to build
    isolation = [] if importlib.util.find_spec("setuptools") is None else [
        "--no-build-isolation"]
    folders = [str(FIXTURE_SOURCES / name) for name in
               ("import_fails", "hook_raises", "duplicate_name", "unsupported_version")]
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", *isolation,
                    "--target", str(target), *folders], check=True, timeout=600)
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(target))
        _installed_into.append(str(target))
        try:
            yield
        finally:
            _installed_into.clear()


needs_fixtures = pytest.mark.usefixtures("fixture_plugins")


def cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items()
                if k not in ("DELTAPROP_STRICT_PLUGINS", "DELTAPROP_DISABLE_PLUGINS")}
    if _installed_into:
        full_env["PYTHONPATH"] = os.pathsep.join(
            [*_installed_into, *filter(None, [os.environ.get("PYTHONPATH")])])
    full_env.update(env)
    return subprocess.run([sys.executable, "-m", "deltaprop", *args], capture_output=True,
                          text=True, env=full_env, timeout=120)


@needs_fixtures
def test_deltaprop_plugins_says_what_happened_to_each_and_why():
    result = cli("plugins", "--json")
    assert result.returncode == 0, result.stderr
    records = {r["name"]: r for r in json.loads(result.stdout)}
    for plugin, (distribution, words) in FIXTURES.items():
        record = records[plugin]
        assert record["status"] == "failed", record
        assert record["distribution"] == distribution
        for word in words:
            assert word in record["error"], (plugin, record["error"])
    assert records["dense"]["status"] == "loaded"
    table = cli("plugins")
    assert table.returncode == 0
    for plugin in FIXTURES:
        line = next(ln for ln in table.stdout.splitlines() if ln.startswith(plugin))
        assert "failed" in line
    assert "discovery took" in table.stdout


@needs_fixtures
def test_the_rest_of_the_registry_works():
    result = cli("layers", "--json")
    assert result.returncode == 0, result.stderr
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert rows["dense"]["distribution"] == "deltaprop"  # not the impostor
    assert {"relu", "softmax", "add"} <= set(rows)
    with pytest.warns(RuntimeWarning):
        registry = Registry(strict=False)
        registry.names()
    layer = registry.create("dense", units=2)
    assert type(layer).__module__ == "deltaprop.plugins.dense"


@needs_fixtures
@pytest.mark.parametrize("plugin", sorted(FIXTURES))
def test_strict_mode_turns_each_failure_into_an_error(plugin):
    others = ",".join(p for p in FIXTURES if p != plugin)
    result = cli("layers", DELTAPROP_STRICT_PLUGINS="1", DELTAPROP_DISABLE_PLUGINS=others)
    assert result.returncode == 2
    assert f"plugin {plugin!r}" in result.stderr
    assert "strict mode" in result.stderr
    assert "Traceback" not in result.stderr


@needs_fixtures
def test_strict_mode_is_happy_with_every_fixture_disabled():
    result = cli("layers", DELTAPROP_STRICT_PLUGINS="1",
                 DELTAPROP_DISABLE_PLUGINS=",".join(FIXTURES))
    assert result.returncode == 0, result.stderr


@needs_fixtures
def test_a_disabled_fixture_is_listed_as_disabled():
    result = cli("plugins", "--json", DELTAPROP_DISABLE_PLUGINS="fixture_hook_raises")
    records = {r["name"]: r for r in json.loads(result.stdout)}
    assert records["fixture_hook_raises"]["status"] == "disabled"


# -- the version check for plugins that are not installed distributions ------------------
class Halve(Layer):
    name = "halve_for_version_test"

    def forward(self, inputs, *, train):
        return (inputs[0] / 2,), None

    def backward(self, cache, grad_outputs, *, needs_grad=None):
        return (grad_outputs[0] / 2,), {}


def versioned_module(requires: str) -> types.ModuleType:
    module = types.ModuleType(f"versioned_{abs(hash(requires))}")
    module.DELTAPROP_REQUIRES = requires
    module.deltaprop_register_layers = hookimpl(lambda: [Halve])
    return module


def test_a_module_declaring_an_unsupported_deltaprop_is_skipped_and_says_why():
    registry = Registry(strict=False, disabled=FIXTURES)
    with pytest.warns(RuntimeWarning, match=r"supports deltaprop >=99"):
        registry.register_plugin(versioned_module(">=99"))
    record = registry.plugins()[-1]
    assert record.status == "failed"
    assert f"this is deltaprop {deltaprop.__version__}" in record.error
    assert "halve_for_version_test" not in registry.names()
    with pytest.raises(PluginError, match="strict mode"):
        Registry(strict=True, disabled=FIXTURES).register_plugin(versioned_module("<0.0.1"))


def test_a_module_declaring_a_supported_deltaprop_loads():
    registry = Registry(strict=True, disabled=FIXTURES)
    registry.register_plugin(versioned_module(f"=={deltaprop.__version__}"))
    assert "halve_for_version_test" in registry.names()


def test_requirements_on_other_distributions_are_not_mistaken_for_deltaprop():
    from deltaprop.registry import _unsupported_requirement

    assert _unsupported_requirement(["deltaprop-contrib>=99", "numpy>=1"]) is None
    assert _unsupported_requirement(["deltaprop>=99; extra == 'docs'"]) is None
    assert _unsupported_requirement(["deltaprop<0.0.1"]) == "deltaprop<0.0.1"


# -- the scan cache ---------------------------------------------------------------------
def test_the_entry_point_scan_is_cached_and_follows_installs(tmp_path, monkeypatch):
    first = scan_entry_points()
    calls = []
    real = metadata.entry_points
    monkeypatch.setattr(metadata, "entry_points",
                        lambda **kw: calls.append(kw) or real(**kw))
    assert scan_entry_points() == first and not calls  # cached: no second scan
    assert "dense" in Registry(disabled=FIXTURES).names("layer")  # a new registry, no rescan
    assert not calls
    # a new folder on sys.path (as an install changes site-packages) invalidates it
    monkeypatch.syspath_prepend(str(tmp_path))
    assert scan_entry_points() == first
    assert len(calls) == 1
    assert first[0].distribution == "deltaprop"
