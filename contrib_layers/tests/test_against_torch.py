"""The contrib layers, optimizer and loss against PyTorch CPU in float64: outputs,
input deltas and parameter gradients, running statistics, and optimizer steps."""

from __future__ import annotations

import numpy as np
import pytest

import deltaprop

pytestmark = pytest.mark.torch
torch = pytest.importorskip("torch")


def t(a, grad=False):
    return torch.tensor(np.asarray(a), dtype=torch.float64, requires_grad=grad)


def forward_backward(layer, inputs, grad_out, train=True):
    outputs, cache = layer.forward(tuple(inputs), train=train)
    grads_in, grads_p = layer.backward(cache, (grad_out,))
    return outputs[0], grads_in, grads_p


@pytest.mark.parametrize(("name", "config", "reference"), [
    ("gelu", {}, lambda x: torch.nn.functional.gelu(x)),
    ("gelu", {"approximate": "tanh"}, lambda x: torch.nn.functional.gelu(x, approximate="tanh")),
    ("silu", {}, lambda x: torch.nn.functional.silu(x)),
    ("leaky_relu", {"negative_slope": 0.2},
     lambda x: torch.nn.functional.leaky_relu(x, negative_slope=0.2)),
    ("elu", {"alpha": 0.7}, lambda x: torch.nn.functional.elu(x, alpha=0.7)),
])
def test_activations_match_torch(name, config, reference, rng):
    layer = deltaprop.create(name, dtype="float64", **config)
    layer.build([(7,)])
    x = rng.standard_normal((5, 7)) * 3
    g = rng.standard_normal((5, 7))
    y, (dx,), _ = forward_backward(layer, [x], g)
    xt = t(x, grad=True)
    yt = reference(xt)
    yt.backward(t(g))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_layer_norm_matches_torch(rng):
    layer = deltaprop.create("layer_norm", dtype="float64")
    layer.build([(3, 6)], rng=rng)
    layer.params["gamma"][...] = rng.standard_normal(6)
    layer.params["beta"][...] = rng.standard_normal(6)
    x, g = rng.standard_normal((4, 3, 6)) * 2 + 1, rng.standard_normal((4, 3, 6))
    y, (dx,), grads = forward_backward(layer, [x], g)
    ref = torch.nn.LayerNorm(6, dtype=torch.float64)
    with torch.no_grad():
        ref.weight.copy_(t(layer.params["gamma"]))
        ref.bias.copy_(t(layer.params["beta"]))
    xt = t(x, grad=True)
    yt = ref(xt)
    yt.backward(t(g))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(grads["gamma"], ref.weight.grad.numpy(), rtol=1e-9)
    np.testing.assert_allclose(grads["beta"], ref.bias.grad.numpy(), rtol=1e-9)


def test_batch_norm_matches_torch_in_train_and_eval(rng):
    layer = deltaprop.create("batch_norm", axis=1, momentum=0.3, dtype="float64")
    layer.build([(3, 4, 4)], rng=rng)
    layer.params["gamma"][...] = rng.standard_normal(3)
    layer.params["beta"][...] = rng.standard_normal(3)
    ref = torch.nn.BatchNorm2d(3, momentum=0.3, dtype=torch.float64)
    with torch.no_grad():
        ref.weight.copy_(t(layer.params["gamma"]))
        ref.bias.copy_(t(layer.params["beta"]))
    ref.train()
    for step in range(3):
        x = rng.standard_normal((5, 3, 4, 4)) * (step + 1) + step
        g = rng.standard_normal(x.shape)
        y, (dx,), grads = forward_backward(layer, [x], g)
        xt = t(x, grad=True)
        yt = ref(xt)
        yt.backward(t(g))
        np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(grads["gamma"], ref.weight.grad.numpy(), rtol=1e-9)
        ref.zero_grad()
    np.testing.assert_allclose(layer.params["running_mean"], ref.running_mean.numpy(),
                               rtol=1e-12)
    np.testing.assert_allclose(layer.params["running_var"], ref.running_var.numpy(),
                               rtol=1e-12)
    ref.eval()
    x = rng.standard_normal((2, 3, 4, 4))
    y, _ = layer.forward((x,), train=False)
    np.testing.assert_allclose(y[0], ref(t(x)).detach().numpy(), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(("causal", "shapes"), [
    (False, [(3, 8), (5, 6), (5, 4)]),
    (True, [(4, 8), (4, 8), (4, 8)]),
])
def test_attention_matches_torch_multihead_attention(causal, shapes, rng):
    heads = 2
    layer = deltaprop.create("attention", num_heads=heads, causal=causal, dtype="float64")
    layer.build(shapes, rng=rng)
    embed = shapes[0][-1]
    for name in ("bq", "bv", "bo"):
        layer.params[name][...] = rng.standard_normal(embed) * 0.1
    ref = torch.nn.MultiheadAttention(embed, heads, kdim=shapes[1][-1], vdim=shapes[2][-1],
                                      batch_first=True, dtype=torch.float64)
    with torch.no_grad():  # torch's y = x W^T + b; ours y = x W + b
        if ref._qkv_same_embed_dim:
            ref.in_proj_weight.copy_(t(np.concatenate(
                [layer.params["Wq"].T, layer.params["Wk"].T, layer.params["Wv"].T])))
        else:
            ref.q_proj_weight.copy_(t(layer.params["Wq"].T))
            ref.k_proj_weight.copy_(t(layer.params["Wk"].T))
            ref.v_proj_weight.copy_(t(layer.params["Wv"].T))
        ref.in_proj_bias.copy_(t(np.concatenate(
            [layer.params["bq"], rng.standard_normal(embed), layer.params["bv"]])))
        ref.out_proj.weight.copy_(t(layer.params["Wo"].T))
        ref.out_proj.bias.copy_(t(layer.params["bo"]))
    q, k, v = (rng.standard_normal((2, *s)) for s in shapes)
    g = rng.standard_normal((2, shapes[0][0], embed))
    y, (dq, dk, dv), grads = forward_backward(layer, [q, k, v], g)
    qt, kt, vt = t(q, True), t(k, True), t(v, True)
    mask = torch.triu(torch.ones(shapes[0][0], shapes[1][0], dtype=torch.bool), 1) \
        if causal else None
    yt, _ = ref(qt, kt, vt, attn_mask=mask, need_weights=False)
    yt.backward(t(g))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-9, atol=1e-10)
    for ours, theirs in ((dq, qt), (dk, kt), (dv, vt)):
        np.testing.assert_allclose(ours, theirs.grad.numpy(), rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(grads["Wo"], ref.out_proj.weight.grad.numpy().T, rtol=1e-8)
    bias_grad = ref.in_proj_bias.grad.numpy()
    np.testing.assert_allclose(grads["bq"], bias_grad[:embed], rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(bias_grad[embed:2 * embed], 0, atol=1e-12)  # inert key bias
    np.testing.assert_allclose(grads["bv"], bias_grad[2 * embed:], rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("config", [
    {"lr": 0.01}, {"lr": 0.01, "momentum": 0.9, "weight_decay": 0.1},
    {"lr": 0.005, "alpha": 0.9, "centered": True, "momentum": 0.5},
])
def test_rmsprop_steps_match_torch(config, rng):
    p0 = rng.standard_normal((4, 3))
    ours = {"w": p0.copy()}
    opt = deltaprop.create_optimizer("rmsprop", **config)
    pt = t(p0, grad=True)
    ref = torch.optim.RMSprop([pt], **config)
    for _ in range(5):
        g = rng.standard_normal((4, 3))
        opt.step(ours, {"w": g})
        pt.grad = t(g)
        ref.step()
    np.testing.assert_allclose(ours["w"], pt.detach().numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("delta", [1.0, 0.3])
def test_huber_matches_torch(delta, rng):
    loss = deltaprop.create_loss("huber", delta=delta)
    pred, target = rng.standard_normal((6, 4)) * 2, rng.standard_normal((6, 4))
    value, cache = loss.forward(pred, target)
    pt = t(pred, grad=True)
    ref = torch.nn.HuberLoss(delta=delta)(pt, t(target))
    ref.backward()
    assert value == pytest.approx(ref.item(), rel=1e-12)
    np.testing.assert_allclose(loss.backward(cache), pt.grad.numpy(), rtol=1e-12)
