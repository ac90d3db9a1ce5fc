"""`deltaprop plugin new`: the generated package is complete and works. The end-to-end
test installs a freshly generated package into a fresh venv (with deltaprop built from
this source tree, so it needs no deltaprop on an index), sees its layer in
`deltaprop layers`, runs the package's own tests (the conformance kit through the
pytest plugin), and sees the layer go when the package is uninstalled."""

from __future__ import annotations

import configparser
import json
import os
import shlex
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

import deltaprop
from deltaprop import ConfigError
from deltaprop.cli import main
from deltaprop.testing.scaffold import create_plugin, render, supported_range

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent


def test_the_cli_writes_a_complete_package(tmp_path, capsys):
    target = tmp_path / "acme"
    assert main(["plugin", "new", "acme-layers", "--dir", str(target)]) == 0
    assert "pip install -e" in capsys.readouterr().out
    files = {p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file()}
    assert files == {"pyproject.toml", "README.md", "tox.ini", ".gitignore",
                     "src/acme_layers/__init__.py", "src/acme_layers/layers.py",
                     "tests/test_conformance.py"}
    project = tomllib.loads((target / "pyproject.toml").read_text())
    assert project["project"]["name"] == "acme-layers"
    assert project["project"]["entry-points"]["deltaprop"] == {
        "acme_layers": "acme_layers.layers"}
    oldest, unsupported = supported_range(deltaprop.__version__)
    assert f"deltaprop>={oldest},<{unsupported}" in project["project"]["dependencies"]
    assert project["tool"]["pytest"]["ini_options"]["deltaprop_distribution"] == "acme-layers"
    tox = configparser.ConfigParser()
    tox.read(target / "tox.ini")
    envs = tox["tox"]["envlist"]
    for python in ("py310", "py311", "py312", "py313"):
        assert f"{python}-{{oldest,latest}}" in envs
    assert f"oldest: deltaprop=={oldest}.0" in tox["testenv"]["deps"]
    for path in ("src/acme_layers/layers.py", "tests/test_conformance.py"):
        compile((target / path).read_text(), path, "exec")


def test_the_generated_layer_passes_the_kit_in_process(tmp_path):
    create_plugin("kitcheck", tmp_path / "kitcheck")
    namespace: dict = {}
    source = (tmp_path / "kitcheck/src/kitcheck/layers.py").read_text()
    exec(compile(source, "layers.py", "exec"), namespace)
    layer_class = namespace["KitcheckScale"]
    for example in layer_class.examples:
        report = deltaprop.testing.check_conformance(
            layer_class, example["input_shapes"], **example["config"])
        assert report.passed == list(deltaprop.testing.CHECKS)


@pytest.mark.parametrize(("name", "why"), [("9lives", "must start with a letter"),
                                           ("a b", "only letters"),
                                           ("deltaprop", "shadow"),
                                           ("class", "shadow")])
def test_bad_names_are_refused(name, why):
    with pytest.raises(ConfigError, match=why):
        render(name)


def test_an_existing_folder_is_not_overwritten(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("mine")
    assert main(["plugin", "new", "acme", "--dir", str(tmp_path)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_supported_range_follows_the_release_series():
    assert supported_range("0.1.0") == ("0.1", "0.2")
    assert supported_range("0.3.2.dev1") == ("0.3", "0.4")
    assert supported_range("1.4.0") == ("1.4", "2")


# -- end to end, in a fresh venv --------------------------------------------------------
def _run(*cmd: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DELTAPROP_", "PYTHON", "VIRTUAL_ENV", "PYTEST"))}
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, cwd=cwd,
                            env=env, timeout=600)
    assert result.returncode == 0, (f"{cmd} failed:\n{result.stdout[-3000:]}\n"
                                    f"{result.stderr[-3000:]}")
    return result


def _dependencies() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [*project["dependencies"], "pytest", "setuptools>=68", "wheel"]


@pytest.mark.slow  # builds a venv and installs three packages into it
def test_a_generated_package_installs_into_a_fresh_venv_and_passes_the_kit(tmp_path):
    if not (ROOT / "pyproject.toml").exists() or not (ROOT / "core").is_dir():
        pytest.skip("needs the deltaprop source tree")
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    bindir = env_dir / ("Scripts" if os.name == "nt" else "bin")
    python = bindir / "python"
    # deltaprop from this source tree (copied: the build writes into the folder it
    # builds), its dependencies from the index or pip's cache; no build isolation, so
    # nothing is fetched to build either package
    _run(python, "-m", "pip", "install", "-q", *_dependencies())
    source = tmp_path / "deltaprop-src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".tox", ".venv", "*.egg-info", "build", "dist", "__pycache__", "tests",
        "contrib_layers", "benchmarks", ".*cache"))
    _run(python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", source)
    plugin = tmp_path / "acme-layers"
    _run(bindir / "deltaprop", "plugin", "new", "acme-layers", "--dir", plugin)
    _run(python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", plugin)

    rows = json.loads(_run(bindir / "deltaprop", "layers", "--json").stdout)
    mine = [{k: r[k] for k in ("name", "kind", "plugin", "distribution", "version")}
            for r in rows if r["name"] == "acme_layers_scale"]
    assert mine == [{"name": "acme_layers_scale", "kind": "layer", "plugin": "acme_layers",
                     "distribution": "acme-layers", "version": "0.1.0"}]
    tests = _run(python, "-m", "pytest", "-v", "-p", "no:cacheprovider", cwd=plugin).stdout
    assert "test_layer_conformance[acme_layers_scale-0] PASSED" in tests, tests
    assert "test_layer_conformance[acme_layers_scale-1] PASSED" in tests, tests
    assert "3 passed" in tests, tests

    _run(python, "-m", "pip", "uninstall", "-y", "-q", "acme-layers")
    rows = json.loads(_run(bindir / "deltaprop", "layers", "--json").stdout)
    assert "acme_layers_scale" not in {r["name"] for r in rows}


@pytest.mark.slow  # builds a venv and installs deltaprop and the plugin into it
def test_the_generated_readme_installs_into_a_fresh_venv(tmp_path):
    """The generated README's Develop commands, as written, in a fresh venv: the first
    installs the deltaprop the package was made with (this checkout, not on any index)."""
    if not (ROOT / "pyproject.toml").exists() or not (ROOT / "core").is_dir():
        pytest.skip("needs the deltaprop source tree")
    from deltaprop.testing.scaffold import deltaprop_install

    if deltaprop_install() == "pip install deltaprop":
        pytest.skip("this deltaprop came from a package index: the README says "
                    "`pip install deltaprop`, which this test cannot run offline")
    plugin = tmp_path / "acme-layers"
    _run(sys.executable, "-m", "deltaprop", "plugin", "new", "acme-layers", "--dir", plugin)
    readme = (plugin / "README.md").read_text()
    develop = readme.split("## Develop", 1)[1].split("```")[1]
    commands = [line.split("#")[0].strip() for line in develop.splitlines()
                if line.startswith("pip install")]
    assert commands[0] == deltaprop_install() and len(commands) == 2, commands
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    bindir = env_dir / ("Scripts" if os.name == "nt" else "bin")
    for command in commands:
        _run(bindir / "pip", "install", "-q", *shlex.split(command)[2:], cwd=plugin)
    tests = _run(bindir / "python", "-m", "pytest", "-q", "-p", "no:cacheprovider",
                 cwd=plugin).stdout
    assert "3 passed" in tests, tests
