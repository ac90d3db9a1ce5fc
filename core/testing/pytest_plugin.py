"""The conformance kit as a pytest plugin (entry point ``pytest11``), so a layer
package's test suite checks every layer its distribution registers in a few lines::

    import pytest

    pytestmark = pytest.mark.deltaprop_distribution("my-layers")

    def test_layer_conformance(deltaprop_layer_case):
        deltaprop_layer_case.check()

Tests asking for ``deltaprop_layer_case`` are parametrized over every example of every
layer the installed distribution registers (so a new layer is checked without a new
test); ``deltaprop_loss_case`` likewise over its losses (add such a test only for a
distribution that registers losses: it fails for one that registers none). The
distribution comes from the ``deltaprop_distribution`` marker, or the
``deltaprop_distribution`` ini option.
A distribution that registers nothing fails loudly instead of passing on no cases.
Nothing here touches the registry until tests are collected.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from ..registry import get_registry
from .kit import (
    check_conformance,
    check_loss,
    example_index,
    examples_problem,
    layer_cases,
    layers_of_distribution,
    normalized_name,
)

INI_OPTION = "deltaprop_distribution"
MARKER = "deltaprop_distribution"


def _case_id(component_class: Any, example: Any) -> str:
    """``<name>-<index of the example>``, the pytest id of one case."""
    index = example_index(component_class, example)
    return f"{component_class.name}-{'none' if index is None else index}"


@dataclass
class LayerCase:
    """One example of one layer class, ready to run through the conformance kit."""

    layer_class: Any
    example: Any = field(default_factory=dict)
    distribution: str = ""

    @property
    def id(self) -> str:
        return _case_id(self.layer_class, self.example)

    def check(self, **options: Any) -> Any:
        """Run every conformance check (``options`` go to ``check_conformance``, e.g.
        ``skip=["dtypes"]``) and return its report."""
        problem = examples_problem(self.layer_class, self.example)
        if problem is not None:
            pytest.fail(f"layer {self.layer_class.name!r} of {self.distribution}: {problem}")
        return check_conformance(
            self.layer_class, self.example["input_shapes"],
            bad_input_shapes=self.example.get("bad_input_shapes", ()),
            **{**options, **self.example.get("config", {})})


@dataclass
class LossCase:
    """One example of one loss class, for the finite-difference gradient check."""

    loss_class: Any
    example: dict[str, Any] = field(default_factory=dict)
    distribution: str = ""

    @property
    def id(self) -> str:
        return _case_id(self.loss_class, self.example)

    def check(self, **options: Any) -> Any:
        if not self.example:
            pytest.fail(f"loss {self.loss_class.name!r} of {self.distribution} declares no "
                        f"`examples` (config and shape) for the gradient check")
        return check_loss(self.loss_class, self.example["shape"],
                          **{**options, **self.example.get("config", {})})


@dataclass
class _Missing:
    """Stands in for the cases of a distribution that registers nothing."""

    distribution: str
    kind: str
    id: str = "nothing-registered"

    def check(self, **options: Any) -> Any:

        failed = [f"{p.name}: {p.error}" for p in get_registry().plugins()
                  if p.status == "failed"]
        hint = f"; plugins that failed to load: {'; '.join(failed)}" if failed else ""
        pytest.fail(f"distribution {self.distribution!r} registers no {self.kind} in deltaprop: "
                    f"is it installed (pip install -e .) and are its modules listed under "
                    f"[project.entry-points.deltaprop]?{hint}")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(INI_OPTION, "distribution whose layers the deltaprop conformance kit checks "
                  "(tests using the deltaprop_layer_case / deltaprop_loss_case fixtures)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"{MARKER}(name): the distribution whose registered layers and losses the "
        f"deltaprop_layer_case / deltaprop_loss_case fixtures run over")


def _distribution(metafunc: pytest.Metafunc) -> str:
    marker = metafunc.definition.get_closest_marker(MARKER)
    if marker is not None and marker.args:
        return str(marker.args[0])
    value = metafunc.config.getini(INI_OPTION)
    if not value:
        raise pytest.UsageError(
            f"{metafunc.definition.nodeid}: say which distribution to check, with "
            f"pytest.mark.{MARKER}('my-dist') or `{INI_OPTION} = my-dist` in the pytest ini")
    return str(value).strip()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    wanted = [f for f in ("deltaprop_layer_case", "deltaprop_loss_case")
              if f in metafunc.fixturenames]
    if not wanted:
        return

    distribution = _distribution(metafunc)
    for fixture in wanted:
        cases: list[Any]
        if fixture == "deltaprop_layer_case":
            cases = [LayerCase(cls, example, distribution)
                     for cls, example in layer_cases(layers_of_distribution(distribution))]
            kind = "layers"
        else:
            registry = get_registry()
            cases = [LossCase(registry.get("loss", n), example, distribution)
                     for n in registry.names("loss")
                     if normalized_name(registry.provider("loss", n).distribution)
                     == normalized_name(distribution)
                     for example in (registry.get("loss", n).examples or [{}])]
            kind = "losses"
        if not cases:
            cases = [_Missing(distribution, kind)]
        metafunc.parametrize(fixture, cases, ids=[c.id for c in cases])
