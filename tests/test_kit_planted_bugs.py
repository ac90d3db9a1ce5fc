"""The conformance kit catches every kind of bug planted in four plugin layers (an
affine layer with two parameters, a one-input two-output layer, a layer with running
state, a two-input bilinear layer), each bug by the check whose rule it breaks: a check
that stops catching its kind fails here. The layers come from a fixture plugin
registered in-process (tests/fixtures/plugins/planted_bugs)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from deltaprop.registry import Registry, get_registry, reset_registry
from deltaprop.testing import CHECKS, ConformanceFailure, check_conformance, conformance_results

FIXTURE = (Path(__file__).parent / "fixtures" / "plugins" / "planted_bugs"
           / "fixture_planted_bugs.py")


def _load_fixture():
    spec = importlib.util.spec_from_file_location("fixture_planted_bugs", FIXTURE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


bugs = _load_fixture()


@pytest.fixture(scope="module")
def planted_registry():
    """The fixture plugin registered at run time, as a notebook or script would."""
    previous = get_registry()
    registry = Registry()
    registry.register_plugin(bugs, name="fixture_planted_bugs")
    reset_registry(registry)
    yield registry
    reset_registry(previous)


def failures_of(layer_class) -> dict[str, str]:
    """Every failed check over all of the class's examples: check -> first message."""
    found: dict[str, str] = {}
    for example in layer_class.examples:
        try:
            check_conformance(layer_class, example["input_shapes"], **example["config"])
        except ConformanceFailure as exc:
            for check, message in exc.failures.items():
                found.setdefault(check, message)
    return found


def test_the_four_correct_layers_pass_every_check(planted_registry):
    names = [n for n in planted_registry.names("layer") if n.startswith("planted_")]
    assert sorted(names) == sorted(cls.name for cls in bugs.LAYERS)
    results = conformance_results([planted_registry.get("layer", n) for n in names])
    assert [r.detail for r in results if not r.ok] == []
    # every check but onnx_export, which is skipped: the planted layers have no converter
    assert all(r.checks == len(CHECKS) - 1 for r in results)


def test_every_bug_kind_names_a_check_of_the_kit():
    assert {check for check, _ in bugs.BUGS.values()} <= set(CHECKS)
    assert len(bugs.BUGS) >= 26


@pytest.mark.parametrize(("base", "kind", "check"), [
    pytest.param(base, kind, check, id=f"{base.name}-{kind}")
    for base, kind, check in bugs.planted_cases()])
def test_each_planted_bug_is_caught_by_its_rule(planted_registry, base, kind, check):
    failures = failures_of(bugs.plant(base, kind))
    assert check in failures, f"{kind} in {base.name} not caught by {check!r}: {failures}"
    assert base.name in failures[check]


def test_every_failing_check_of_a_case_is_reported(planted_registry):
    """A layer with two bugs of different kinds fails both rules, in one report."""
    twice = bugs.plant(bugs.plant(bugs.Affine, "cache_ten_copies_of_input"), "output_float64")
    with pytest.raises(ConformanceFailure) as caught:
        check_conformance(twice, [(4,)])
    assert {"cache_size", "dtypes"} <= set(caught.value.failures)
    assert "conformance check 'cache_size' failed" in str(caught.value)
    assert "conformance check 'dtypes' failed" in str(caught.value)


def test_a_reused_grad_outputs_is_reported_as_a_write_not_as_per_call_state(planted_registry):
    failures = failures_of(bugs.plant(bugs.Affine, "backward_overwrites_grad_outputs"))
    assert set(failures) == {"read_only_arrays"}
