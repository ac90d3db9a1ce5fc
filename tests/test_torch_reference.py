"""The built-in layers, losses and optimizers against PyTorch CPU (test-only reference)."""

from __future__ import annotations

import numpy as np
import pytest

import deltaprop
from deltaprop import create

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch


def t(a):
    return torch.tensor(np.asarray(a), dtype=torch.float64, requires_grad=True)


def test_dense_matches_linear_with_transposed_weight(rng):
    layer = deltaprop.testing.make_layer(type(create("dense", units=3)), [(5,)], units=3,
                                         dtype="float64")
    x = rng.standard_normal((4, 5))
    g = rng.standard_normal((4, 3))
    (y,), cache = layer.forward((x,), train=True)
    (dx,), grads = layer.backward(cache, (g,))
    linear = torch.nn.Linear(5, 3).double()
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(layer.params["W"].T))
        linear.bias.copy_(torch.from_numpy(layer.params["b"]))
    tx = t(x)
    ty = linear(tx)
    ty.backward(torch.from_numpy(g))
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(grads["W"], linear.weight.grad.numpy().T, rtol=1e-12)
    np.testing.assert_allclose(grads["b"], linear.bias.grad.numpy(), rtol=1e-12)


@pytest.mark.parametrize(("name", "reference"), [
    ("sigmoid", lambda x: torch.sigmoid(x)),
    ("tanh", lambda x: torch.tanh(x)),
    ("relu", lambda x: torch.relu(x)),
    ("softmax", lambda x: torch.softmax(x, dim=-1)),
])
def test_activations(name, reference, rng):
    layer = create(name, dtype="float64")
    x = rng.standard_normal((6, 7)) * 3
    g = rng.standard_normal((6, 7))
    (y,), cache = layer.forward((x,), train=True)
    (dx,), _ = layer.backward(cache, (g,))
    tx = t(x)
    ty = reference(tx)
    ty.backward(torch.from_numpy(g))
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-10, atol=1e-15)


def loss_case(name, config, prediction, target, reference):
    loss = deltaprop.create_loss(name, **config)
    value, cache = loss.forward(prediction, target)
    grad = loss.backward(cache)
    tp = t(prediction)
    tv = reference(tp)
    tv.backward()
    assert value == pytest.approx(tv.item(), rel=1e-12)
    np.testing.assert_allclose(grad, tp.grad.numpy(), rtol=1e-10, atol=1e-15)


def test_losses(rng):
    logits = rng.standard_normal((8, 5)) * 4
    labels = rng.integers(0, 5, 8)
    probs = torch.softmax(torch.from_numpy(rng.standard_normal((8, 5))), -1).numpy()
    f = torch.nn.functional
    loss_case("softmax_cross_entropy", {}, logits, labels,
              lambda p: f.cross_entropy(p, torch.from_numpy(labels)))
    loss_case("softmax_cross_entropy", {}, logits, probs,
              lambda p: f.cross_entropy(p, torch.from_numpy(probs)))
    target = rng.standard_normal((8, 5))
    loss_case("mse", {}, logits, target, lambda p: f.mse_loss(p, torch.from_numpy(target)))
    p01 = rng.uniform(0.05, 0.95, (8, 5))
    t01 = rng.uniform(0, 1, (8, 5))
    loss_case("binary_cross_entropy", {}, p01, t01,
              lambda p: f.binary_cross_entropy(p, torch.from_numpy(t01)))
    loss_case("binary_cross_entropy", {"from_logits": True}, logits, t01,
              lambda p: f.binary_cross_entropy_with_logits(p, torch.from_numpy(t01)))


@pytest.mark.parametrize(("name", "config", "torch_optimizer"), [
    ("sgd", {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01},
     lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("adam", {"lr": 0.01}, lambda ps: torch.optim.Adam(ps, lr=0.01)),
])
def test_training_steps_match_pytorch(name, config, torch_optimizer, rng):
    """Ten whole training steps of an MLP, float64: same weights as PyTorch."""
    net = deltaprop.Sequential([create("dense", units=6, dtype="float64"),
                                create("tanh", dtype="float64"),
                                create("dense", units=3, dtype="float64")],
                               input_shape=4, seed=0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(),
                                torch.nn.Linear(6, 3)).double()
    dense = [layer for layer in net.layers if layer.params]
    with torch.no_grad():
        for layer, lin in zip(dense, (model[0], model[2])):
            lin.weight.copy_(torch.from_numpy(layer.params["W"].T))
            lin.bias.copy_(torch.from_numpy(layer.params["b"]))
    opt = deltaprop.create_optimizer(name, **config)
    topt = torch_optimizer(model.parameters())
    for _ in range(10):
        x = rng.standard_normal((5, 4))
        y = rng.integers(0, 3, 5)
        net.train_step(x, y, loss="softmax_cross_entropy", optimizer=opt)
        topt.zero_grad()
        torch.nn.functional.cross_entropy(model(torch.from_numpy(x)),
                                          torch.from_numpy(y)).backward()
        topt.step()
    for layer, lin in zip(dense, (model[0], model[2])):
        np.testing.assert_allclose(layer.params["W"], lin.weight.detach().numpy().T, rtol=1e-10)
        np.testing.assert_allclose(layer.params["b"], lin.bias.detach().numpy(), rtol=1e-10)
