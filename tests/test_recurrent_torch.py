"""rnn, lstm, gru and bidirectional against torch.nn.RNN/LSTM/GRU (batch_first): outputs,
final states and every gradient (inputs, initial states, weights), with reversed and
variable-length (packed) sequences."""

from __future__ import annotations

import numpy as np
import pytest

from deltaprop.testing import make_layer

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

B, T, F, H = 4, 6, 3, 5
LENGTHS = np.array([6, 2, 4, 1])


def _layer(name, shapes, **config):
    from deltaprop import get_registry

    return make_layer(get_registry().get("layer", name), shapes, build_seed=3, dtype="float64",
                      **config)


def _torch_module(cell, activation="tanh", bidirectional=False):
    kwargs = {"batch_first": True, "bidirectional": bidirectional}
    if cell == "rnn":
        return torch.nn.RNN(F, H, nonlinearity=activation, **kwargs).double()
    return {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell](F, H, **kwargs).double()


def _load(module, params, suffix="", prefix=""):
    """Copy deltaprop parameters into a torch module (weight_ih is W_x transposed)."""
    with torch.no_grad():
        getattr(module, f"weight_ih_l0{suffix}").copy_(torch.from_numpy(params[f"{prefix}W_x"].T))
        getattr(module, f"weight_hh_l0{suffix}").copy_(torch.from_numpy(params[f"{prefix}W_h"].T))
        getattr(module, f"bias_ih_l0{suffix}").copy_(torch.from_numpy(params[f"{prefix}b_x"]))
        getattr(module, f"bias_hh_l0{suffix}").copy_(torch.from_numpy(params[f"{prefix}b_h"]))


def _torch_grads(module, suffix="", prefix=""):
    return {f"{prefix}W_x": getattr(module, f"weight_ih_l0{suffix}").grad.numpy().T,
            f"{prefix}W_h": getattr(module, f"weight_hh_l0{suffix}").grad.numpy().T,
            f"{prefix}b_x": getattr(module, f"bias_ih_l0{suffix}").grad.numpy(),
            f"{prefix}b_h": getattr(module, f"bias_hh_l0{suffix}").grad.numpy()}


def _run_torch(module, cell, x, states, lengths):
    """Output sequence (padded with zeros) and final states of a torch module."""
    xt = torch.from_numpy(x).requires_grad_(True)
    st = [torch.from_numpy(s).requires_grad_(True) for s in states]
    init = None
    if st:
        init = (st[0], st[1]) if cell == "lstm" else st[0]
    inp = xt
    if lengths is not None:
        inp = torch.nn.utils.rnn.pack_padded_sequence(xt, torch.from_numpy(lengths),
                                                      batch_first=True, enforce_sorted=False)
    out, final = module(inp, init)
    if lengths is not None:
        out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True,
                                                        total_length=x.shape[1])
    finals = list(final) if cell == "lstm" else [final]
    return xt, st, out, finals


CASES = [(cell, act) for cell in ("rnn", "lstm", "gru")
         for act in (("tanh", "relu") if cell == "rnn" else ("tanh",))]


@pytest.mark.parametrize(("cell", "activation"), CASES)
@pytest.mark.parametrize("with_lengths", [False, True])
@pytest.mark.parametrize("with_state", [False, True])
def test_one_direction_matches_torch(cell, activation, with_lengths, with_state):
    rng = np.random.default_rng(0)
    n_states = 2 if cell == "lstm" else 1
    shapes = [(T, F)] + ([(H,)] * n_states if with_state else []) + \
        ([()] if with_lengths else [])
    config = {"units": H, "return_sequences": True, "return_state": True,
              "initial_state": with_state, "use_lengths": with_lengths,
              "recurrent_initializer": "glorot_uniform", "bias_initializer": "glorot_uniform"}
    if cell == "rnn":
        config["activation"] = activation
    layer = _layer(cell, shapes, **config)
    x = rng.standard_normal((B, T, F))
    states = [rng.standard_normal((B, H)) for _ in range(n_states)] if with_state else []
    lengths = LENGTHS if with_lengths else None
    inputs = [x, *states] + ([lengths] if with_lengths else [])
    outs, cache = layer.forward(tuple(inputs), train=True)

    module = _torch_module(cell, activation)
    _load(module, layer.params)
    xt, st, out, finals = _run_torch(module, cell, x, [s[None] for s in states], lengths)
    np.testing.assert_allclose(outs[0], out.detach().numpy(), atol=1e-10)
    for mine, theirs in zip(outs[1:], finals, strict=True):
        np.testing.assert_allclose(mine, theirs[0].detach().numpy(), atol=1e-10)

    weights = [rng.standard_normal(o.shape) for o in outs]
    total = (out * torch.from_numpy(weights[0])).sum()
    for w, f in zip(weights[1:], finals, strict=True):
        total = total + (f[0] * torch.from_numpy(w)).sum()
    total.backward()
    grad_inputs, grads = layer.backward(cache, tuple(weights))
    np.testing.assert_allclose(grad_inputs[0], xt.grad.numpy(), atol=1e-10)
    for mine, s in zip(grad_inputs[1:1 + len(st)], st, strict=True):
        np.testing.assert_allclose(mine, s.grad.numpy()[0], atol=1e-10)
    for key, value in _torch_grads(module).items():
        np.testing.assert_allclose(grads[key], value, atol=1e-10, err_msg=key)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("with_lengths", [False, True])
def test_bidirectional_and_reverse_match_torch(cell, with_lengths):
    rng = np.random.default_rng(1)
    n_states = 2 if cell == "lstm" else 1
    shapes = [(T, F), *[(H,)] * (2 * n_states)] + ([()] if with_lengths else [])
    common = {"units": H, "return_sequences": True, "return_state": True,
              "initial_state": True, "use_lengths": with_lengths,
              "bias_initializer": "glorot_uniform"}
    layer = _layer("bidirectional", shapes, cell=cell, **common)
    x = rng.standard_normal((B, T, F))
    fw = [rng.standard_normal((B, H)) for _ in range(n_states)]
    bw = [rng.standard_normal((B, H)) for _ in range(n_states)]
    lengths = LENGTHS if with_lengths else None
    inputs = [x, *fw, *bw] + ([lengths] if with_lengths else [])
    outs, cache = layer.forward(tuple(inputs), train=True)

    module = _torch_module(cell, bidirectional=True)
    _load(module, layer.params, prefix="forward_")
    _load(module, layer.params, suffix="_reverse", prefix="backward_")
    # torch stacks the directions on the first axis of each state
    stacked = [np.stack([f, b]) for f, b in zip(fw, bw, strict=True)]
    xt, st, out, finals = _run_torch(module, cell, x, stacked, lengths)
    np.testing.assert_allclose(outs[0], out.detach().numpy(), atol=1e-10)
    mine_finals = outs[1:]
    for k in range(n_states):
        np.testing.assert_allclose(mine_finals[k], finals[k][0].detach().numpy(), atol=1e-10)
        np.testing.assert_allclose(mine_finals[n_states + k], finals[k][1].detach().numpy(),
                                   atol=1e-10)

    weights = [rng.standard_normal(o.shape) for o in outs]
    total = (out * torch.from_numpy(weights[0])).sum()
    for k in range(n_states):
        total = total + (finals[k][0] * torch.from_numpy(weights[1 + k])).sum()
        total = total + (finals[k][1] * torch.from_numpy(weights[1 + n_states + k])).sum()
    total.backward()
    grad_inputs, grads = layer.backward(cache, tuple(weights))
    np.testing.assert_allclose(grad_inputs[0], xt.grad.numpy(), atol=1e-10)
    for k in range(n_states):
        np.testing.assert_allclose(grad_inputs[1 + k], st[k].grad.numpy()[0], atol=1e-10)
        np.testing.assert_allclose(grad_inputs[1 + n_states + k], st[k].grad.numpy()[1],
                                   atol=1e-10)
    expected = {**_torch_grads(module, prefix="forward_"),
                **_torch_grads(module, suffix="_reverse", prefix="backward_")}
    for key, value in expected.items():
        np.testing.assert_allclose(grads[key], value, atol=1e-10, err_msg=key)

    # a single reversed layer with the backward weights is torch's reverse direction
    single = _layer(cell, [(T, F), *[(H,)] * n_states] + ([()] if with_lengths else []),
                    reverse=True, **common)
    for name in ("W_x", "W_h", "b_x", "b_h"):
        single.params[name][...] = layer.params[f"backward_{name}"]
    rev_outs, _ = single.forward(tuple([x, *bw] + ([lengths] if with_lengths else [])),
                                 train=False)
    np.testing.assert_allclose(rev_outs[0], out.detach().numpy()[..., H:], atol=1e-10)
    np.testing.assert_allclose(rev_outs[1], finals[0][1].detach().numpy(), atol=1e-10)


def test_last_output_matches_torch_final_state():
    """Without return_sequences the output is the final h: for packed sequences, the
    state at each sequence's last valid step."""
    rng = np.random.default_rng(2)
    layer = _layer("lstm", [(T, F), ()], units=H, use_lengths=True)
    x = rng.standard_normal((B, T, F))
    (last,), _ = layer.forward((x, LENGTHS), train=False)
    module = _torch_module("lstm")
    _load(module, layer.params)
    _, _, _, finals = _run_torch(module, "lstm", x, [], LENGTHS)
    np.testing.assert_allclose(last, finals[0][0].detach().numpy(), atol=1e-10)


def test_float32_lstm_matches_torch():
    rng = np.random.default_rng(3)
    from deltaprop import get_registry

    layer = make_layer(get_registry().get("layer", "lstm"), [(T, F)], units=H,
                       return_sequences=True)
    x = rng.standard_normal((B, T, F)).astype(np.float32)
    (y,), cache = layer.forward((x,), train=True)
    assert y.dtype == np.float32
    module = torch.nn.LSTM(F, H, batch_first=True)
    _load(module, layer.params)
    xt = torch.from_numpy(x).requires_grad_(True)
    out, _ = module(xt)
    np.testing.assert_allclose(y, out.detach().numpy(), atol=1e-5)
    w = rng.standard_normal(y.shape).astype(np.float32)
    (out * torch.from_numpy(w)).sum().backward()
    (dx,), grads = layer.backward(cache, (w,))
    assert dx.dtype == np.float32 and all(g.dtype == np.float32 for g in grads.values())
    np.testing.assert_allclose(dx, xt.grad.numpy(), atol=1e-4)
    np.testing.assert_allclose(grads["W_h"], module.weight_hh_l0.grad.numpy().T, atol=1e-4)
