"""``deltaprop plugin new NAME``: write a ready-to-test layer plugin package.

The package holds one example layer (a learned per-feature scale, small enough to read
in a screen and with a parameter, so it exercises the whole protocol), its entry point,
a test that runs the conformance kit over every layer the distribution registers, a
tox.ini across the supported Pythons and the oldest and newest supported deltaprop,
and a README that says how to develop, test and publish it.
"""

from __future__ import annotations

import importlib.util
import json
import keyword
import re
import shlex
import sys
from importlib.metadata import PackageNotFoundError, distributions, version
from pathlib import Path
from string import Template
from urllib.parse import unquote, urlparse

from ..errors import ConfigError
from ..storage.files import write_bytes

#: Pythons deltaprop supports, for the generated tox.ini
PYTHONS = ("3.10", "3.11", "3.12", "3.13")

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9]*([-_][A-Za-z0-9]+)*$")


def supported_range(current: str) -> tuple[str, str]:
    """(oldest, first unsupported) deltaprop versions for a new plugin: the running
    release series, since 0.x minor releases may change the layer protocol."""
    parts = [int(p) for p in re.findall(r"\d+", current)[:2]] + [0, 0]
    major, minor = parts[0], parts[1]
    if major == 0:
        return f"0.{minor}", f"0.{minor + 1}"
    return f"{major}.{minor}", f"{major + 1}"


def names_for(name: str) -> tuple[str, str]:
    """(distribution name, import name) for NAME, or a ConfigError saying why not."""
    if not _NAME.match(name):
        raise ConfigError(f"plugin name {name!r} must start with a letter and contain only "
                          f"letters, digits, '-' and '_' (e.g. 'acme-layers')")
    module = name.lower().replace("-", "_")
    if keyword.iskeyword(module) or module in ("deltaprop", "test", "tests"):
        raise ConfigError(f"plugin name {name!r} would shadow {module!r}; choose another")
    shadowed = shadowed_module(module)
    if shadowed:
        raise ConfigError(f"plugin name {name!r} would install a module {module!r} that "
                          f"shadows {shadowed}; choose another (e.g. 'acme-{name}')")
    return name.lower().replace("_", "-"), module


def shadowed_module(module: str) -> str | None:
    """What an import of ``module`` finds today (the standard library, or an installed
    module and where), or None: installing a plugin of that import name would replace
    it in the environment."""
    if module in sys.stdlib_module_names or module in sys.builtin_module_names:
        return "a module of the Python standard library"
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    return f"the installed module at {spec.origin or spec.submodule_search_locations}"


def deltaprop_install() -> str:
    """The pip command that installs the deltaprop running now into another environment:
    from the folder or wheel file it was installed from (``pip install [-e] PATH``, as a
    source checkout is) or the folder it is running from, else from the package index."""
    for dist in distributions(name="deltaprop"):  # a checkout's egg-info may come first
        try:
            origin = json.loads(dist.read_text("direct_url.json") or "{}")
        except ValueError:
            continue
        url = origin.get("url", "") if isinstance(origin, dict) else ""
        dir_info = origin.get("dir_info") if isinstance(origin, dict) else None
        if not url.startswith("file://"):
            continue
        local = shlex.quote(unquote(urlparse(url).path))  # a folder, or a wheel file
        editable = isinstance(dir_info, dict) and dir_info.get("editable")
        return f"pip install -e {local}" if editable else f"pip install {local}"
    checkout = Path(__file__).resolve().parents[2]  # core/testing/ -> the source tree
    if (checkout / "pyproject.toml").is_file() and (checkout / "core").is_dir():
        return f"pip install -e {shlex.quote(str(checkout))}"
    return "pip install deltaprop"


def render(name: str, deltaprop_version: str | None = None) -> dict[str, str]:
    """The files of a new plugin package: relative path -> text."""
    dist, module = names_for(name)
    if deltaprop_version is None:
        try:
            deltaprop_version = version("deltaprop")
        except PackageNotFoundError:  # pragma: no cover - source tree
            deltaprop_version = "0.1.0"
    oldest, unsupported = supported_range(deltaprop_version)
    values = {
        "dist": dist, "module": module, "layer": f"{module}_scale",
        "class_name": "".join(p.capitalize() for p in module.split("_")) + "Scale",
        "oldest": oldest, "unsupported": unsupported, "install_deltaprop": deltaprop_install(),
        "envlist": ", ".join(f"py{p.replace('.', '')}-{{oldest,latest}}" for p in PYTHONS),
        "pythons": ", ".join(PYTHONS),
        "classifiers": "\n".join(f'    "Programming Language :: Python :: {p}",'
                                 for p in PYTHONS),
    }
    return {path.replace("MODULE", module): Template(text).substitute(values)
            for path, text in TEMPLATES.items()}


def create_plugin(name: str, directory: str | Path | None = None) -> list[Path]:
    """Write the package for NAME into ``directory`` (default ``./NAME``); refuses to
    write into a folder that exists and is not empty."""
    files = render(name)
    target = Path(directory) if directory is not None else Path(name)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ConfigError(f"{str(target)!r} already exists and is not an empty folder; "
                          f"choose another with --dir")
    written = []
    for relative, text in files.items():
        path = target / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes(path, text.encode("utf-8"))
        written.append(path)
    return written


TEMPLATES: dict[str, str] = {}

TEMPLATES["pyproject.toml"] = '''\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "$dist"
version = "0.1.0"
description = "deltaprop layers: $layer"
readme = "README.md"
requires-python = ">=3.10"
# The deltaprop versions this plugin supports: deltaprop checks this range when it
# discovers the plugin and skips it, saying why, outside it.
dependencies = ["deltaprop>=$oldest,<$unsupported", "numpy>=1.26"]
classifiers = [
    "Framework :: deltaprop",
$classifiers
]

[project.optional-dependencies]
# onnx and onnxruntime let the conformance kit compare the layer's ONNX export
test = ["pytest>=7.4", "onnx>=1.16", "onnxruntime>=1.18"]

# Every module listed here is one deltaprop plugin: its hooks are called on first use
# of the registry, and `deltaprop layers` shows what it provides.
[project.entry-points.deltaprop]
$module = "$module.layers"

[tool.setuptools.packages.find]
where = ["src"]

[tool.pytest.ini_options]
testpaths = ["tests"]
# the distribution whose layers the conformance kit checks (deltaprop's pytest plugin)
deltaprop_distribution = "$dist"
'''

TEMPLATES["src/MODULE/__init__.py"] = '''\
"""$dist: layers for deltaprop, registered through the `deltaprop` entry-point group."""
'''

TEMPLATES["src/MODULE/layers.py"] = '''\
"""$layer: y = x * s, a learned scale per feature (the last axis).

A layer is a class with a registry ``name``, its hyper-parameters as keyword
arguments, ``build`` (shapes without the batch dimension -> output shapes, creating
parameters; only needed for parameters or a change of shape), ``forward`` (outputs
and what backward needs) and ``backward`` (deltas of the inputs and gradients of the
parameters). It keeps nothing per call on itself. Everything else is optional (``rng``
in build, ``needs_grad`` in backward, fusion, working in place, carried state...):
see the docstrings of ``deltaprop.Layer`` and deltaprop's docs/plugins.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from deltaprop import Layer, hookimpl
from deltaprop.errors import ShapeError

Shape = tuple[int, ...]


class $class_name(Layer):
    """Multiply each feature by its own learned factor ``s`` (shape (features,))."""

    name = "$layer"
    #: cases for the conformance kit: config and input shapes (batch left out); one with
    #: random initial values, since ones or zeros can hide a wrong gradient
    examples = [{"config": {}, "input_shapes": [(4,)]},
                {"config": {"initializer": "glorot_uniform"}, "input_shapes": [(2, 3)]}]
    #: shapes build must refuse (beyond a wrong number of inputs)
    bad_input_shapes = [[()]]

    def __init__(self, *, initializer: str = "ones", dtype: str = "float32",
                 label: str | None = None) -> None:
        super().__init__(dtype=dtype, label=label)
        self.initializer = initializer

    def build(self, input_shapes: Sequence[Shape], rng: Any = None) -> tuple[Shape, ...]:
        self.expect_inputs(input_shapes)
        (shape,) = input_shapes
        if len(shape) < 1:
            raise ShapeError(f"$layer needs inputs with a feature axis, got shape {shape}")
        # rng is the network's seeded generator: random initial values follow its seed
        self.add_param("s", (shape[-1],), self.initializer, rng)
        return (tuple(shape),)

    def forward(self, inputs: tuple[np.ndarray, ...], *, train: bool) -> tuple[Any, Any]:
        (x,) = inputs
        return (x * self.params["s"],), (x if train else None)

    def backward(self, cache: Any, grad_outputs: tuple[np.ndarray, ...]
                 ) -> tuple[tuple[Any, ...], dict[str, np.ndarray]]:
        x = cache
        (g,) = grad_outputs
        grad_s = (g * x).reshape(-1, x.shape[-1]).sum(axis=0)
        return (g * self.params["s"],), {"s": grad_s}

    def to_onnx(self, ctx: Any) -> tuple[str, ...]:
        """For ``deltaprop export``: the same product as ONNX operators (docs/onnx.md)."""
        return (ctx.op("Mul", [ctx.inputs[0], ctx.param("s")]),)


@hookimpl
def deltaprop_register_layers() -> list[type[Layer]]:
    return [$class_name]
'''

TEMPLATES["tests/test_conformance.py"] = '''\
"""Every layer this distribution registers passes deltaprop's conformance kit: float64
gradients (at the initial and at perturbed parameters), config and save/load round
trips, no per-call state, caches released and in proportion, state kept in params, no
writes into inputs, float32 and float64, and clear shape errors. The layers come from
the registry (pyproject: deltaprop_distribution), so a new layer needs no new test."""

import numpy as np

import deltaprop


def test_layer_conformance(deltaprop_layer_case):
    deltaprop_layer_case.check()


def test_the_example_layer_scales_each_feature():
    layer = deltaprop.create("$layer")
    x = deltaprop.Input(3)
    net = deltaprop.Network([x], [layer(x)])
    layer.params["s"][...] = [1.0, 2.0, 3.0]
    (y,) = net.forward([np.ones((2, 3), dtype=np.float32)])
    np.testing.assert_array_equal(y, [[1, 2, 3], [1, 2, 3]])
'''

TEMPLATES["tox.ini"] = '''\
# The plugin on every supported Python ($pythons), against the oldest and the
# newest deltaprop it supports (the range in pyproject.toml):
#   tox                      # the whole matrix
#   tox -e py312-latest      # one environment
# Where deltaprop is not on the package index, point the installer at a folder of its
# wheels: PIP_FIND_LINKS=/path/to/wheels tox (UV_FIND_LINKS with tox-uv)
[tox]
envlist = $envlist
skip_missing_interpreters = true

[testenv]
extras = test
deps =
    oldest: deltaprop==$oldest.0
    latest: deltaprop>=$oldest,<$unsupported
commands = pytest {posargs}
'''

TEMPLATES["README.md"] = '''\
# $dist

A [deltaprop](https://pypi.org/project/deltaprop/) layer plugin. Installed, it adds
the layer `$layer` to the registry:

```
$install_deltaprop   # the deltaprop this package was made with
pip install .
deltaprop layers          # $layer  layer  $module  $dist  0.1.0
```

and it can be used by name, in Python (`deltaprop.create("$layer")`) or in a spec file
(`layer = "$layer"`).

## Develop

```
$install_deltaprop   # first, in a fresh environment
pip install -e '.[test]'
pytest                    # the conformance kit over every layer of this distribution
deltaprop check --distribution $dist   # the same, as a table
tox                       # Python $pythons x oldest/newest supported deltaprop
```

A new layer: a `Layer` subclass in `src/$module/` with a registry `name` and
`examples` (config and input shapes for the kit), returned from a module's
`deltaprop_register_layers` hook; a new module goes under
`[project.entry-points.deltaprop]` in `pyproject.toml` (re-run `pip install -e .`
after changing entry points). `tests/test_conformance.py` picks it up by itself.

Supported deltaprop: `>=$oldest,<$unsupported` (in `pyproject.toml`); deltaprop skips
the plugin, and `deltaprop plugins` says why, when the installed version is outside.

## Publish

```
python -m build           # sdist and wheel in dist/
python -m twine upload dist/*
```
'''

TEMPLATES[".gitignore"] = '''\
__pycache__/
*.egg-info/
.tox/
build/
dist/
'''
