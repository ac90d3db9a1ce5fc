"""The registry: discovery through entry points, providers, broken and duplicate
plugins, disabling, strict mode, and unknown names."""

from __future__ import annotations

import types

import pytest

import deltaprop
from deltaprop import ConfigError, Layer, PluginError, RegistryError, hookimpl
from deltaprop.registry import Registry


def plugin_module(name: str, **hooks) -> types.ModuleType:
    module = types.ModuleType(name)
    for hook_name, fn in hooks.items():
        setattr(module, hook_name, hookimpl(fn))
    return module


class Twice(Layer):
    name = "twice"
    examples = [{"config": {}, "input_shapes": [(3,)]}]

    def forward(self, inputs, *, train):
        return (2 * inputs[0],), (True if train else None)

    def backward(self, cache, grad_outputs, *, needs_grad=None):
        return (2 * grad_outputs[0],), {}


def test_builtins_are_found_through_entry_points_with_providers():
    registry = Registry()
    assert {"dense", "sigmoid", "softmax", "add", "concat", "split"} <= set(registry.names())
    provider = registry.provider("layer", "dense")
    assert provider.distribution == "deltaprop"
    assert provider.version == deltaprop.__version__
    assert provider.plugin == "dense"
    loaded = {p.name: p for p in registry.plugins()}
    assert loaded["dense"].status == "loaded"
    assert loaded["dense"].provides == {"layer": ["dense"]}


def test_discovery_is_lazy():
    registry = Registry()
    assert registry._discovered is False
    registry.names()
    assert registry._discovered is True


def test_runtime_plugin_registers_a_layer():
    registry = Registry()
    registry.register_plugin(plugin_module("twice_plugin",
                                           deltaprop_register_layers=lambda: [Twice]))
    layer = registry.create("twice")
    assert isinstance(layer, Twice)
    assert registry.provider("layer", "twice").plugin == "twice_plugin"


def test_hook_that_raises_is_skipped_with_a_warning_naming_it():
    registry = Registry(strict=False)

    def boom():
        raise RuntimeError("kaboom")

    with pytest.warns(RuntimeWarning, match="bad_plugin.*kaboom"):
        registry.register_plugin(plugin_module("bad_plugin", deltaprop_register_layers=boom))
    record = registry.plugins()[-1]
    assert record.status == "failed" and "kaboom" in record.error
    assert "dense" in registry.names()  # the rest still works


def test_strict_mode_turns_a_broken_plugin_into_an_error():
    registry = Registry(strict=True)

    def boom():
        raise RuntimeError("kaboom")

    with pytest.raises(PluginError, match="bad_plugin"):
        registry.register_plugin(plugin_module("bad_plugin", deltaprop_register_layers=boom))


def test_duplicate_name_is_an_error_naming_both_providers_and_nothing_is_overwritten():
    registry = Registry()
    dense_class = registry.get("layer", "dense")

    class FakeDense(Twice):
        name = "dense"

    with pytest.warns(RuntimeWarning, match=r"'dense' is already provided by plugin 'dense' "
                                            r"\(deltaprop .*imposter"):
        registry.register_plugin(plugin_module(
            "imposter", deltaprop_register_layers=lambda: [FakeDense, Twice]))
    assert registry.get("layer", "dense") is dense_class
    assert "twice" not in registry.names()  # all or nothing


def test_hook_returning_garbage_is_rejected():
    registry = Registry()
    with pytest.warns(RuntimeWarning, match="not a Layer subclass"):
        registry.register_plugin(plugin_module("garbage",
                                               deltaprop_register_layers=lambda: [object]))


def test_disabling_plugins_by_entry_point_name(monkeypatch):
    monkeypatch.setenv("DELTAPROP_DISABLE_PLUGINS", "activations, structural")
    registry = Registry()
    assert "sigmoid" not in registry.names()
    assert "dense" in registry.names()
    status = {p.name: p.status for p in registry.plugins()}
    assert status["activations"] == "disabled"


def test_strict_from_environment(monkeypatch):
    monkeypatch.setenv("DELTAPROP_STRICT_PLUGINS", "1")
    assert Registry().strict is True


def test_unknown_name_suggests_close_matches_and_where_to_look():
    with pytest.raises(RegistryError, match=r"unknown layer 'dens'; did you mean 'dense'\?.*"
                                            r"deltaprop layers"):
        deltaprop.create("dens", units=3)


def test_unknown_config_key_lists_valid_keys():
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) 'unit'.*units"):
        deltaprop.create("dense", unit=3)


@pytest.mark.parametrize("bad", [0, -3, 2.5, "10", True])
def test_bad_values_are_rejected_with_the_key(bad):
    with pytest.raises(ConfigError, match="units"):
        deltaprop.create("dense", units=bad)


def test_config_round_trip_for_every_layer():
    registry = deltaprop.get_registry()
    for name in registry.names():
        cls = registry.get("layer", name)
        for example in cls.examples:
            layer = deltaprop.create(name, **example["config"])
            again = cls.from_config(layer.get_config())
            assert again.get_config() == layer.get_config()


def test_losses_and_optimizers_are_created_by_name():
    assert deltaprop.create_loss("mse").name == "mse"
    opt = deltaprop.create_optimizer("sgd", lr=0.1, momentum=0.9, nesterov=True)
    assert opt.get_config() == {"lr": 0.1, "momentum": 0.9, "nesterov": True,
                                "weight_decay": 0.0}
    with pytest.raises(RegistryError, match="did you mean 'adam'"):
        deltaprop.create_optimizer("adma")
