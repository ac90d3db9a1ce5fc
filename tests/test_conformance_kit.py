"""The conformance kit catches each kind of protocol violation it claims to, and its
pytest plugin parametrizes over a distribution's layers (and fails loudly when the
distribution registers none)."""

from __future__ import annotations

import numpy as np
import pytest

import deltaprop
from deltaprop import Layer
from deltaprop.errors import ShapeError
from deltaprop.testing import CHECKS, check_conformance, conformance_results

pytest_plugins = ["pytester"]


class Good(Layer):
    """y = x * w, a per-feature weight: the template the broken variants below bend."""

    name = "kit_good"

    def __init__(self, *, factor: float = 1.0, dtype: str = "float32",
                 label: str | None = None) -> None:
        super().__init__(dtype=dtype, label=label)
        self.factor = factor

    def build(self, input_shapes, rng=None):
        self.expect_inputs(input_shapes)
        if not input_shapes[0]:
            raise ShapeError(f"kit_good needs a feature axis, got shape {input_shapes[0]}")
        self.add_param("w", (input_shapes[0][-1],), "glorot_uniform", rng, fan_in=2, fan_out=2)
        return (tuple(input_shapes[0]),)

    def forward(self, inputs, *, train):
        (x,) = inputs
        return (x * self.params["w"] * self.factor,), (x if train else None)

    def backward(self, cache, grad_outputs, *, needs_grad=None):
        x, (g,) = cache, grad_outputs
        return (g * self.params["w"] * self.factor,), {"w": (g * x).sum(axis=0) * self.factor}

    def to_onnx(self, ctx):
        scaled = ctx.op("Mul", [ctx.inputs[0], ctx.param("w")])
        return (ctx.op("Mul", [scaled, ctx.constant(float(self.factor))]),)


class KeepsInputOnSelf(Good):
    def forward(self, inputs, *, train):
        self._x = inputs[0]
        return super().forward(inputs, train=train)

    def backward(self, cache, grad_outputs, *, needs_grad=None):
        return super().backward(self._x, grad_outputs)


class CachesAtInference(Good):
    def forward(self, inputs, *, train):
        outputs, _ = super().forward(inputs, train=True)
        return outputs, inputs[0]


class LeaksFloat64(Good):
    def forward(self, inputs, *, train):
        (y,), cache = super().forward(inputs, train=train)
        return (y.astype(np.float64),), cache


class RenamesItsConfig(Good):
    def __init__(self, *, factor: float = 1.0, dtype: str = "float32",
                 label: str | None = None) -> None:
        super().__init__(dtype=dtype, label=label)
        self.factor = 1.0  # stores the argument elsewhere: get_config cannot round-trip it
        self._factor = factor

    def forward(self, inputs, *, train):
        (x,) = inputs
        return (x * self.params["w"] * self._factor,), (x if train else None)


class AcceptsAnyShape(Good):
    def build(self, input_shapes, rng=None):
        self.add_param("w", (input_shapes[0][-1],), "ones", rng)
        return (tuple(input_shapes[0]),)


class ModifiesItsInput(Good):
    def forward(self, inputs, *, train):
        outputs, cache = super().forward(inputs, train=train)
        inputs[0][...] = 0
        return outputs, cache


class StateOutsideParams(Good):
    def build(self, input_shapes, rng=None):
        shapes = super().build(input_shapes, rng)
        self.offset = float(np.random.default_rng().standard_normal())  # not saved
        return shapes

    def forward(self, inputs, *, train):
        (y,), cache = super().forward(inputs, train=train)
        return (y + np.float32(self.offset).astype(y.dtype),), cache


@pytest.mark.parametrize(("layer_class", "check", "message"), [
    (KeepsInputOnSelf, "no_per_call_state", "per-call state"),
    (CachesAtInference, "cache_released", "inference must cache nothing"),
    (LeaksFloat64, "dtypes", "float32 layer returned a float64 output"),
    (RenamesItsConfig, "config_round_trip", "not stored under its own name"),
    (AcceptsAnyShape, "rejects_bad_shapes", "accepted the wrong input shapes"),
    (ModifiesItsInput, "read_only_arrays", "forward wrote into a read-only input"),
    (StateOutsideParams, "save_load", "differs after a save/load round trip"),
])
def test_each_check_catches_its_violation(layer_class, check, message):
    layer_class.name = f"kit_{layer_class.__name__.lower()}"
    with pytest.raises(AssertionError, match=message):
        check_conformance(layer_class, [(4,)], checks=[check], factor=2.0)


def test_a_conforming_layer_passes_every_check():
    report = check_conformance(Good, [(4,)], factor=2.0)
    assert report.passed == list(CHECKS)
    assert report.gradients is not None and report.gradients.max_rel_error < 1e-6


class WrongWeightGradient(Good):
    name = "kit_wrong_weight_gradient"
    examples = [{"config": {"factor": 2.0}, "input_shapes": [(4,)]}]

    def backward(self, cache, grad_outputs, *, needs_grad=None):
        dx, grads = super().backward(cache, grad_outputs)
        return dx, {"w": grads["w"] * 1.01}


class CrashesInForward(Good):
    name = "kit_crashes_in_forward"
    examples = [{"config": {}, "input_shapes": [(4,)]}]

    def forward(self, inputs, *, train):
        raise RuntimeError("unexpected")


class Checked(Good):
    name = "kit_checked"
    examples = [{"config": {"factor": 2.0}, "input_shapes": [(4,)]},
                {"config": {}, "input_shapes": [(5,)]}]


def test_results_record_each_failure_and_keep_going():
    """``deltaprop check`` reports every case: a wrong gradient, a crash and a layer
    without examples fail with what and where, and the good layer's cases still run."""
    results = conformance_results([WrongWeightGradient, CrashesInForward, Good, Checked])
    by_layer = {(r.layer, r.example): r for r in results}
    wrong = by_layer["kit_wrong_weight_gradient", 0]
    assert not wrong.ok and "'gradients'" in wrong.detail and "param w" in wrong.detail
    crash = by_layer["kit_crashes_in_forward", 0]
    assert not crash.ok and "RuntimeError: unexpected" in crash.detail
    assert not by_layer["kit_good", None].ok
    assert "declares no" in by_layer["kit_good", None].detail
    for example in (0, 1):
        good = by_layer["kit_checked", example]
        assert good.ok and good.checks == len(CHECKS) and good.max_rel_error < 1e-6


def test_unknown_check_names_are_refused():
    with pytest.raises(ValueError, match="unknown check"):
        check_conformance(Good, [(4,)], checks=["gradient"])


def test_pytest_plugin_parametrizes_over_a_distributions_layers(pytester):
    pytester.makepyfile(test_kit="""
        import pytest
        pytestmark = pytest.mark.deltaprop_distribution("deltaprop")

        def test_layer(deltaprop_layer_case):
            deltaprop_layer_case.check(checks=["config_round_trip"])

        def test_loss(deltaprop_loss_case):
            deltaprop_loss_case.check()
    """)
    result = pytester.runpytest("-q", "-p", "no:cacheprovider")
    builtins = deltaprop.get_registry()
    layer_cases = sum(max(1, len(builtins.get("layer", n).examples))
                      for n in builtins.names("layer")
                      if builtins.provider("layer", n).distribution == "deltaprop")
    loss_cases = sum(max(1, len(builtins.get("loss", n).examples))
                     for n in builtins.names("loss")
                     if builtins.provider("loss", n).distribution == "deltaprop")
    result.assert_outcomes(passed=layer_cases + loss_cases)


def test_pytest_plugin_fails_for_a_distribution_that_registers_nothing(pytester):
    pytester.makeini("[pytest]\ndeltaprop_distribution = not-installed-anywhere\n")
    pytester.makepyfile(test_kit="""
        def test_layer(deltaprop_layer_case):
            deltaprop_layer_case.check()
    """)
    result = pytester.runpytest("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*not-installed-anywhere*registers no layers*"])


class ExamplesNotAList(Good):
    name = "kit_examples_not_a_list"
    examples = {"config": {}, "input_shapes": [(4,)]}  # type: ignore[assignment]


class ExampleNotADict(Good):
    name = "kit_example_not_a_dict"
    examples = [[(4,)], {"config": {}, "input_shapes": [(4,)]}]


def test_examples_that_are_not_a_list_fail_one_case_and_the_rest_runs():
    results = conformance_results([ExamplesNotAList, ExampleNotADict, Checked])
    by_layer = {(r.layer, r.example): r for r in results}
    broken = by_layer["kit_examples_not_a_list", None]
    assert not broken.ok and "`examples` must be a list" in broken.detail
    assert "got dict" in broken.detail
    entry = by_layer["kit_example_not_a_dict", 0]
    assert not entry.ok and "is a list, not a dict" in entry.detail
    assert by_layer["kit_example_not_a_dict", 1].ok
    assert by_layer["kit_checked", 0].ok and by_layer["kit_checked", 1].ok


def test_deltaprop_check_reports_a_bad_examples_attribute_in_one_line(capsys):
    import types

    from deltaprop.cli import main
    from deltaprop.registry import Registry, get_registry, reset_registry

    module = types.ModuleType("kit_cli_layers")
    module.deltaprop_register_layers = deltaprop.hookimpl(
        lambda: [ExamplesNotAList, Checked])
    previous, registry = get_registry(), Registry()
    registry.register_plugin(module)
    reset_registry(registry)
    try:
        status = main(["check", "kit_examples_not_a_list", "kit_checked", "--no-progress"])
    finally:
        reset_registry(previous)
    out = capsys.readouterr().out
    assert status == 1
    fails = [line for line in out.splitlines() if line.startswith("FAIL")]
    assert fails == ["FAIL kit_examples_not_a_list example None [examples]: `examples` must "
                     "be a list of {'config': {...}, 'input_shapes': [...]} dicts, got dict"]
    assert "3 cases: 2 passed, 1 failed" in out


class CachesTooMuch(Good):
    """Caches its input five times over: past the default bound unless declared."""

    name = "kit_caches_too_much"
    allowance: tuple[float, str] | None = None

    def forward(self, inputs, *, train):
        (y,), x = super().forward(inputs, train=train)
        return (y,), (None if x is None else {"x": x, "copies": [x * k for k in range(5)]})

    def backward(self, cache, grad_outputs, *, needs_grad=None):
        return super().backward(cache["x"], grad_outputs)

    def cache_allowance(self):
        return self.allowance


def test_the_cache_bound_names_the_entries_and_a_declared_allowance_raises_it():
    with pytest.raises(AssertionError, match=r"cache\['copies'\]\[\d\] \(3, 4\)") as caught:
        check_conformance(CachesTooMuch, [(4,)], checks=["cache_size"])
    assert "declare cache_allowance()" in str(caught.value)

    class Declared(CachesTooMuch):
        allowance = (6.0, "keeps five multiples of the input for a test")

    check_conformance(Declared, [(4,)], checks=["cache_size"])

    class TooLittle(CachesTooMuch):
        allowance = (2.5, "not enough")

    with pytest.raises(AssertionError, match=r"bound of 2\.5 times \(declared: not enough"):
        check_conformance(TooLittle, [(4,)], checks=["cache_size"])


class Noisy(Good):
    """Adds noise from its own generator in training: declared, and not recomputable."""

    name = "kit_noisy"
    recomputable = False
    random_generators = ("_rng",)

    def __init__(self, *, factor: float = 1.0, seed: int = 0, dtype: str = "float32",
                 label: str | None = None) -> None:
        super().__init__(factor=factor, dtype=dtype, label=label)
        self.seed = seed
        self._rng = np.random.default_rng(seed)

    def forward(self, inputs, *, train):
        (y,), cache = super().forward(inputs, train=train)
        if train:
            y = y + self._rng.standard_normal(y.shape).astype(y.dtype)
        return (y,), cache


def test_a_declared_generator_may_advance_and_an_undeclared_one_may_not():
    check_conformance(Noisy, [(4,)], checks=["state_in_params", "recomputable", "gradients"])

    class Undeclared(Noisy):
        random_generators = ()

    with pytest.raises(AssertionError, match=r"changed layer\._rng on the layer"):
        check_conformance(Undeclared, [(4,)], checks=["state_in_params"])

    class Recomputable(Noisy):
        recomputable = True

    with pytest.raises(AssertionError, match="set recomputable = False"):
        check_conformance(Recomputable, [(4,)], checks=["recomputable"])

    class NotAGenerator(Noisy):
        random_generators = ("factor",)

    with pytest.raises(AssertionError, match=r"'factor', which is not a numpy\.random\.Generator"):
        check_conformance(NotAGenerator, [(4,)], checks=["state_in_params"])


def test_made_up_shapes_cover_missing_and_extra_axes_and_mismatched_inputs():
    from deltaprop.testing import made_up_shapes

    assert made_up_shapes([(4,)]) == [[()], [(2, 4)]]
    assert made_up_shapes([(3, 4), (5,)]) == [
        [(4,), (5,)], [(2, 3, 4), (5,)], [(3, 4), ()], [(3, 4), (2, 5)], [(3, 4), (6,)]]


def test_a_check_is_one_registered_function():
    from deltaprop.testing import conformance_check
    from deltaprop.testing.kit import CHECKS as registry

    calls = []

    @conformance_check("kit_test_extra")
    def extra(case):
        calls.append((case.layer_class.name, case.input_shapes, case.config))

    try:
        report = check_conformance(Good, [(4,)], checks=["kit_test_extra"], factor=2.0)
    finally:
        del registry["kit_test_extra"]
    assert report.passed == ["kit_test_extra"]
    assert calls == [("kit_good", [(4,)], {"factor": 2.0})]
