"""Every registered layer and loss passes a float64 finite-difference gradient check.

Parametrized from the registry, so a layer added by any plugin is checked without
a new test: its class lists ``examples`` (config and input shapes).
"""

from __future__ import annotations

import pytest

import deltaprop
from deltaprop.testing import check_layer, check_loss

registry = deltaprop.get_registry()


def _layer_cases():
    for name in registry.names("layer"):
        cls = registry.get("layer", name)
        if not cls.examples:
            yield pytest.param(cls, None, id=f"{name}-no-examples")
        for i, example in enumerate(cls.examples):
            yield pytest.param(cls, example, id=f"{name}-{i}")


def _loss_cases():
    for name in registry.names("loss"):
        cls = registry.get("loss", name)
        for i, example in enumerate(cls.examples or [None]):
            yield pytest.param(cls, example, id=f"{name}-{i}")


@pytest.mark.parametrize(("layer_class", "example"), list(_layer_cases()))
def test_layer_gradients(layer_class, example):
    assert example is not None, f"layer {layer_class.name!r} declares no examples to check"
    report = check_layer(layer_class, example["input_shapes"], **example["config"])
    assert report.checked, "nothing was checked"
    assert report.max_rel_error < 1e-4


@pytest.mark.parametrize(("loss_class", "example"), list(_loss_cases()))
def test_loss_gradients(loss_class, example):
    assert example is not None, f"loss {loss_class.name!r} declares no examples to check"
    report = check_loss(loss_class, example["shape"], **example["config"])
    assert report.max_rel_error < 1e-4


def test_check_layer_catches_a_wrong_gradient():
    """The check itself can fail: a dense layer with a deliberately wrong backward."""
    dense = registry.get("layer", "dense")

    class Broken(dense):
        name = "broken_dense"

        def backward(self, cache, grad_outputs, *, needs_grad=None):
            (dx,), grads = super().backward(cache, grad_outputs, needs_grad=needs_grad)
            grads["W"] = grads["W"] * 1.01
            return (dx,), grads

    with pytest.raises(AssertionError, match="param W"):
        check_layer(Broken, [(4,)], units=3)
