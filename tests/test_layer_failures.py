"""Issue 20, item 10: a layer that breaks the protocol at run time is named in one line
(node, layer, plugin), whatever it raised or returned."""

from __future__ import annotations

import types

import numpy as np
import pytest

import deltaprop
from deltaprop import Layer, hookimpl
from deltaprop.cli import main
from deltaprop.errors import DeltapropError, blamed_on
from deltaprop.registry import Registry, reset_registry


class Base(Layer):
    def forward(self, inputs, *, train):
        return (inputs[0] * 1.0,), None

    def backward(self, cache, grad_outputs):
        return (grad_outputs[0],), {}


class RaisesInForward(Base):
    name = "raises_in_forward"

    def forward(self, inputs, *, train):
        raise ZeroDivisionError("oops")


class RaisesInBackward(Base):
    name = "raises_in_backward"

    def backward(self, cache, grad_outputs):
        raise KeyError("missing")


class NoBackward(Layer):
    name = "no_backward"

    def forward(self, inputs, *, train):
        return (inputs[0],), None


class WrongGradientShape(Base):
    name = "wrong_gradient_shape"

    def backward(self, cache, grad_outputs):
        return (grad_outputs[0][:, :2],), {}


class WrongGradientCount(Base):
    name = "wrong_gradient_count"

    def backward(self, cache, grad_outputs):
        return (grad_outputs[0], grad_outputs[0]), {}


class NoneParamGradient(Base):
    name = "none_param_gradient"

    def build(self, input_shapes, rng=None):
        self.add_param("w", (1,), "ones", rng, fan_in=1, fan_out=1)
        return (tuple(input_shapes[0]),)

    def backward(self, cache, grad_outputs):
        return (grad_outputs[0],), {"w": None}


class ReturnsBareArray(Base):
    name = "returns_bare_array"

    def forward(self, inputs, *, train):
        return inputs[0], None


CASES = [(RaisesInForward, "oops"),
         (RaisesInBackward, "missing"),
         (NoBackward, "backward"),
         (WrongGradientShape, "gradient of shape (6, 2) for input 0, whose shape is (6, 4)"),
         (WrongGradientCount, "2 input gradients for 1 inputs"),
         (NoneParamGradient, "returned None as the gradient of 'w'"),
         (ReturnsBareArray, "returned ndarray outputs")]


@pytest.fixture
def plugin_registry():
    registry = Registry()
    registry.register_plugin(types.SimpleNamespace(
        __name__="broken_layers",
        deltaprop_register_layers=hookimpl(lambda: [cls for cls, _ in CASES])),
        distribution="broken-layers", version="0.1")
    reset_registry(registry)
    yield registry
    reset_registry()


@pytest.mark.parametrize("cls, words", CASES, ids=[c.name for c, _ in CASES])
def test_a_failing_layer_is_named_with_its_node_and_plugin(plugin_registry, cls, words):
    x = deltaprop.Input((4,), name="x")
    hidden = deltaprop.create("dense", units=4)(x, name="first")
    out = deltaprop.create(cls.name)(hidden, name="suspect")
    net = deltaprop.Network([x], [out])
    with pytest.raises(Exception) as info:
        net.train_step(np.ones((6, 4), np.float32), np.zeros((6, 4), np.float32), loss="mse",
                       optimizer="sgd")
    message = f"{info.value} {blamed_on(info.value)}"
    assert "node 'suspect'" in message and words in message, message
    if not isinstance(info.value, DeltapropError):  # the layer's own error, kept as it is
        assert "plugin 'broken_layers'" in (blamed_on(info.value) or ""), message
    elif words.startswith(("gradient", "returned None")):
        assert "plugin 'broken_layers'" in message, message


@pytest.mark.parametrize("cls", [RaisesInForward, RaisesInBackward, NoBackward],
                         ids=lambda c: c.name)
def test_the_cli_names_node_layer_and_plugin_in_one_line(plugin_registry, tmp_path, capsys,
                                                         cls):
    spec = tmp_path / "s.toml"
    spec.write_text('outputs = ["out"]\n[inputs]\nx = [64]\n[[nodes]]\nname = "d"\n'
                    'layer = "dense"\ninputs = ["x"]\nunits = 8\n[[nodes]]\nname = "h"\n'
                    f'layer = "{cls.name}"\ninputs = ["d"]\n[[nodes]]\nname = "out"\n'
                    'layer = "dense"\ninputs = ["h"]\nunits = 10\n')
    assert main(["train", str(spec), "--epochs", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert all(w in err[0] for w in ("node 'h'", cls.name, "plugin 'broken_layers'")), err
