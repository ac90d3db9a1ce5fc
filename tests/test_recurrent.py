"""Recurrent layers in networks: multi-output state wiring, variable lengths, truncated
BPTT, embedding, wrappers in spec files and model files, and the errors for bad input."""

from __future__ import annotations

import numpy as np
import pytest

import deltaprop
from deltaprop.testing import check_network_gradients, make_layer


def _cls(name):
    return deltaprop.get_registry().get("layer", name)


def test_encoder_states_feed_a_decoder_and_gradients_check():
    """return_state outputs are separate node outputs that other nodes consume."""
    with deltaprop.tensor.seeded(0):
        src = deltaprop.Input((5, 3), name="src", dtype="float64")
        tgt = deltaprop.Input((4, 2), name="tgt", dtype="float64")
        _, h, c = deltaprop.create("lstm", units=3, return_state=True, dtype="float64")(src)
        dec = deltaprop.create("lstm", units=3, return_sequences=True, initial_state=True,
                               dtype="float64")(tgt, h, c)
        out = deltaprop.create("dense", units=2, dtype="float64")(dec)
    net = deltaprop.Network([src, tgt], out)
    rng = np.random.default_rng(0)
    report = check_network_gradients(net, [rng.standard_normal((2, 5, 3)),
                                           rng.standard_normal((2, 4, 2))])
    assert any("src" in k or "input 0" in k for k in report.checked)
    assert report.max_rel_error < 1e-4


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("reverse", [False, True])
def test_padding_changes_nothing_and_gets_no_gradient(cell, reverse):
    layer = make_layer(_cls(cell), [(6, 3), ()], units=4, return_sequences=True,
                       return_state=True, use_lengths=True, reverse=reverse, dtype="float64")
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 6, 3))
    lengths = np.array([6, 3, 1])
    outs, cache = layer.forward((x, lengths), train=True)
    # the same sequence with other padding values gives the same outputs
    x2 = x.copy()
    for b, n in enumerate(lengths):
        x2[b, n:] = 100.0
    outs2, _ = layer.forward((x2, lengths), train=False)
    for a, b in zip(outs, outs2, strict=True):
        np.testing.assert_array_equal(a, b)
    # and each sequence alone, unpadded, gives the same final state
    for b, n in enumerate(lengths):
        alone = make_layer(_cls(cell), [(int(n), 3)], units=4, return_state=True,
                           reverse=reverse, dtype="float64")
        for k, v in layer.params.items():
            alone.params[k][...] = v
        (_, h, *_), _ = alone.forward((x[b:b + 1, :n],), train=False)
        np.testing.assert_allclose(outs[1][b], h[0], atol=1e-12)
        assert np.all(outs[0][b, n:] == 0)
    grads = [rng.standard_normal(o.shape) for o in outs]
    (dx, dlengths), _ = layer.backward(cache, tuple(grads))
    assert dlengths is None
    for b, n in enumerate(lengths):
        assert np.all(dx[b, n:] == 0)
        assert np.any(dx[b, :n] != 0)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("reverse", [False, True])
def test_zero_initial_state_shortcuts_change_nothing(cell, reverse):
    """Without initial-state inputs, forward skips the first step's product with the zero
    h0 and backward the last step's recurrent GEMM, which only the initial states' deltas
    need: outputs and every other gradient equal those of explicit zero states."""
    n = 2 if cell == "lstm" else 1
    config = dict(units=4, return_sequences=True, return_state=True, use_lengths=True,
                  reverse=reverse, dtype="float64")
    plain = make_layer(_cls(cell), [(5, 3), ()], **config)
    explicit = make_layer(_cls(cell), [(5, 3), *[(4,)] * n, ()], initial_state=True,
                          **config)
    for k, v in plain.params.items():
        explicit.params[k][...] = v
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 5, 3))
    lengths = np.array([5, 2, 4])
    zeros = [np.zeros((3, 4))] * n
    outs, cache = plain.forward((x, lengths), train=True)
    outs_e, cache_e = explicit.forward((x, *zeros, lengths), train=True)
    for a, b in zip(outs, outs_e, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)
    grads = tuple(rng.standard_normal(o.shape) for o in outs)
    (dx, _), dp = plain.backward(cache, grads)
    (dx_e, *d_states, _), dp_e = explicit.backward(cache_e, grads)
    assert all(d is not None and np.any(d != 0) for d in d_states)
    _, cache_n = explicit.forward((x, *zeros, lengths), train=True)
    (dx_n, *d_none, _), dp_n = explicit.backward(
        cache_n, grads, needs_grad=[True, *[False] * n, False])
    assert d_none == [None] * n
    for other_dx, other_dp in ((dx_e, dp_e), (dx_n, dp_n)):
        np.testing.assert_allclose(dx, other_dx, rtol=1e-12, atol=1e-15)
        for k, g in dp.items():
            np.testing.assert_allclose(g, other_dp[k], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_output_sequence_is_a_view_that_cannot_corrupt_backward(cell):
    """The output sequence is a batch-major view of a time-major buffer (no copy). Where
    that buffer is part of the cache (rnn, gru) the view is read-only in training, so
    writing into an output raises instead of changing the gradients; the lstm's buffer is
    not cached, so its output stays writable and writing into it changes nothing."""
    layer = make_layer(_cls(cell), [(5, 3)], units=4, return_sequences=True,
                       dtype="float64")
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 5, 3))
    dy = rng.standard_normal((2, 5, 4))
    (y,), cache = layer.forward((x,), train=True)
    expected = layer.forward((x,), train=False)[0][0].copy()
    np.testing.assert_allclose(y, expected, rtol=1e-12)
    assert not y.flags.c_contiguous and y.shape == (2, 5, 4)
    (dx,), grads = layer.backward(cache, (dy,))
    assert dx.shape == x.shape
    (y,), cache = layer.forward((x,), train=True)
    if cell == "lstm":
        y[...] = 7.0
    else:
        with pytest.raises(ValueError, match="read-only"):
            y[...] = 7.0
    (dx2,), grads2 = layer.backward(cache, (dy,))
    np.testing.assert_array_equal(dx, dx2)
    for k, g in grads.items():
        np.testing.assert_array_equal(g, grads2[k])


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("initial_state", [False, True])
def test_lstm_backward_in_chunks_equals_one_chunk(monkeypatch, reverse, initial_state):
    """The LSTM's backward forms dW and dx chunk by chunk; chunks of 2 steps over 5 steps
    (the last one short), with padding, give what one chunk gives."""
    from deltaprop.plugins import recurrent

    shapes = [(5, 3), *([(4,)] * 2 if initial_state else []), ()]
    layer = make_layer(_cls("lstm"), shapes, units=4, return_sequences=True,
                       return_state=True, use_lengths=True, reverse=reverse,
                       initial_state=initial_state, dtype="float64")
    rng = np.random.default_rng(3)
    inputs = (rng.standard_normal((3, 5, 3)),
              *([rng.standard_normal((3, 4))] * 2 if initial_state else []),
              np.array([5, 2, 4]))
    outs, _ = layer.forward(inputs, train=False)
    grads = tuple(rng.standard_normal(o.shape) for o in outs)
    results = []
    for chunk in (5, 2):
        monkeypatch.setattr(recurrent, "_chunk_steps", lambda T, B, size, c=chunk: c)
        _, cache = layer.forward(inputs, train=True)
        results.append(layer.backward(cache, grads))
    (one_in, one_p), (two_in, two_p) = results
    for a, b in zip(one_in, two_in, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    for k in one_p:
        np.testing.assert_allclose(one_p[k], two_p[k], rtol=1e-12, atol=1e-14)


def test_float32_in_float32_out():
    for name, shapes in (("rnn", [(4, 3)]), ("lstm", [(4, 3)]), ("gru", [(4, 3)])):
        layer = make_layer(_cls(name), shapes, units=5, return_sequences=True,
                           return_state=True)
        x = np.ones((2, 4, 3), dtype=np.float32)
        outs, cache = layer.forward((x,), train=True)
        assert all(o.dtype == np.float32 for o in outs)
        grads_in, grads = layer.backward(cache, tuple(np.ones_like(o) for o in outs))
        assert grads_in[0].dtype == np.float32
        assert all(g.dtype == np.float32 for g in grads.values())


def test_windows_with_carried_state_equal_the_whole_sequence():
    """The state carry of truncated BPTT: two halves in a row, the state handed from one
    call to the next, are the whole sequence; without it each half starts afresh."""
    whole = make_layer(_cls("lstm"), [(8, 3)], units=4, return_sequences=True,
                       dtype="float64")
    half = make_layer(_cls("lstm"), [(4, 3)], units=4, return_sequences=True,
                      dtype="float64")
    for k, v in whole.params.items():
        half.params[k][...] = v
    x = np.random.default_rng(2).standard_normal((2, 8, 3))
    (full,), _ = whole.forward((x,), train=False)
    assert half.carries_state()
    state = None
    parts = []
    for c in range(2):
        (y,), _, state = half.forward_with_state((x[:, 4 * c:4 * c + 4],), train=False,
                                                 state=state)
        parts.append(y)
    np.testing.assert_allclose(np.concatenate(parts, axis=1), full, atol=1e-12)
    (again,), _ = half.forward((x[:, 4:],), train=False)
    assert not np.allclose(again, full[:, 4:])


def test_a_network_carries_state_between_calls_only_when_asked():
    with deltaprop.tensor.seeded(0):
        inp = deltaprop.Input((4, 3), dtype="float64")
        out = deltaprop.create("gru", units=5, return_sequences=True, dtype="float64")(inp)
        half = deltaprop.Network(inp, out)
        inp = deltaprop.Input((8, 3), dtype="float64")
        layer = deltaprop.create("gru", units=5, return_sequences=True, dtype="float64")
        whole = deltaprop.Network(inp, layer(inp))
    for k, v in zip(whole.params, half.params.values()):
        whole.params[k][...] = v
    x = np.random.default_rng(4).standard_normal((3, 8, 3))
    (full,) = whole.forward(x)
    state = deltaprop.CarriedState()
    parts = [half.forward(x[:, :4], state=state)[0], half.forward(x[:, 4:], state=state)[0]]
    np.testing.assert_allclose(np.concatenate(parts, axis=1), full, atol=1e-12)
    assert len(state) == 1
    assert not np.allclose(half.forward(x[:, 4:])[0], full[:, 4:])  # no state: afresh
    np.testing.assert_allclose(half.predict(x[:, :4], state=deltaprop.CarriedState()),
                               full[:, :4], atol=1e-12)


def test_fit_with_bptt_learns_and_bounds_the_cache():
    """Predict the previous step's class (needs memory across chunk borders) on sequences
    of 64 steps trained in chunks of 8; the cache holds 8 steps, not 64."""
    rng = np.random.default_rng(3)
    n, T, k, V = 64, 64, 8, 3
    ids = rng.integers(0, V, size=(n, T))
    x = np.eye(V, dtype=np.float32)[ids]
    y = np.roll(ids, 1, axis=1)
    y[:, 0] = 0
    with deltaprop.tensor.seeded(0):
        inp = deltaprop.Input((k, V), name="x")
        h = deltaprop.create("gru", units=16, return_sequences=True)(inp)
        out = deltaprop.create("dense", units=V)(h)
    net = deltaprop.Network(inp, out)
    history = net.fit(x, y, bptt=k, epochs=25, batch_size=16, seed=0, progress=False,
                      optimizer=deltaprop.create_optimizer("adam", lr=0.02))
    assert history.loss[-1] < 0.5 * history.loss[0]
    assert net.peak_cache_bytes < 16 * k * 16 * 4 * 12  # a chunk's worth, not T steps
    metrics = net.evaluate(x, y, bptt=k)
    assert metrics["loss"] < 0.2 and metrics["accuracy"] > 0.9
    with pytest.raises(deltaprop.DataError, match="windows"):
        net.fit(x[:, :60], y[:, :60], bptt=k, epochs=1, progress=False)


def test_embedding_scatter_adds_repeated_ids():
    layer = make_layer(_cls("embedding"), [(3,)], input_dim=5, output_dim=2,
                       dtype="float64")
    ids = np.array([[1, 1, 4], [0, 1, 4]])
    (out,), cache = layer.forward((ids,), train=True)
    np.testing.assert_array_equal(out[0, 0], layer.params["W"][1])
    g = np.ones((2, 3, 2))
    (dids,), grads = layer.backward(cache, (g,))
    assert dids is None
    np.testing.assert_array_equal(grads["W"][:, 0], [1, 3, 0, 0, 2])


def test_embedding_in_a_spec_with_integer_input_trains():
    spec = {"inputs": {"ids": {"shape": [5], "dtype": "int64"}}, "outputs": ["logits"],
            "nodes": [
                {"name": "emb", "layer": "embedding", "inputs": ["ids"], "input_dim": 6,
                 "output_dim": 4},
                {"name": "rnn", "layer": "bidirectional", "inputs": ["emb"], "cell": "lstm",
                 "units": 5},
                {"name": "logits", "layer": "dense", "inputs": ["rnn"], "units": 2}]}
    net = deltaprop.load_spec(spec, seed=0)
    rng = np.random.default_rng(4)
    ids = rng.integers(0, 6, size=(64, 5))
    y = (ids == 3).any(axis=1).astype(np.int64)
    history = net.fit(ids, y, epochs=15, batch_size=16, seed=0, progress=False,
                      optimizer=deltaprop.create_optimizer("adam", lr=0.02))
    assert history.loss[-1] < 0.3


def test_wrappers_round_trip_through_spec_and_model_file(tmp_path):
    spec = {"inputs": {"x": [4, 3, 2]}, "outputs": ["out"], "nodes": [
        {"name": "per_step", "layer": "time_distributed", "inputs": ["x"], "wrap": "gru",
         "config": {"units": 3}},
        {"name": "bi", "layer": "bidirectional", "inputs": ["per_step"], "cell": "rnn",
         "activation": "relu", "units": 2, "return_sequences": True},
        {"name": "out", "layer": "time_distributed", "inputs": ["bi"], "wrap": "dense",
         "config": {"units": 2}}]}
    net = deltaprop.load_spec(spec, seed=0)
    x = np.random.default_rng(5).standard_normal((2, 4, 3, 2)).astype(np.float32)
    (y,) = net.forward(x)
    assert y.shape == (2, 4, 2)
    again = deltaprop.load_spec(net.to_spec(), seed=1)
    for key, value in net.params.items():
        again.params[key][...] = value
    np.testing.assert_array_equal(again.forward(x)[0], y)
    path = tmp_path / "model.npz"
    deltaprop.save(net, path)
    loaded = deltaprop.load(path)
    np.testing.assert_array_equal(loaded.forward(x)[0], y)
    td = next(layer for layer in loaded.layers if layer.name == "time_distributed")
    assert td.params is td.inner.params


def test_lstm_cache_is_what_backward_needs():
    """Per step and sample (float32): [x, 1, h_{t-1}] (the GEMM input of the step, which
    backward's weight gradients need), the four gates' backward factors, o (1 - tanh(c)^2)
    and f."""
    B, T, F, H = 4, 5, 3, 6
    net = deltaprop.Sequential([deltaprop.create("lstm", units=H, return_sequences=True)],
                               input_shape=(T, F), seed=0)
    net.forward(np.zeros((B, T, F), dtype=np.float32), train=True)
    assert net.cache_bytes == 4 * B * T * (F + 1 + H + 4 * H + 2 * H)


# -- bad input ------------------------------------------------------------------------

def test_wrong_feature_size_names_the_node():
    x = deltaprop.Input((5, 3), name="x")
    layer = deltaprop.create("lstm", units=4, label="enc")
    layer(x)
    with pytest.raises(deltaprop.ShapeError, match="enc"):
        layer(deltaprop.Input((5, 4), name="other"))
    with pytest.raises(deltaprop.ShapeError, match=r"\(batch, time, 3\)"):
        layer.forward((np.zeros((2, 5, 4), dtype=np.float32),), train=False)


def test_state_of_wrong_shape_names_the_node():
    x = deltaprop.Input((5, 3), name="x")
    h0 = deltaprop.Input((7,), name="h0")
    with pytest.raises(deltaprop.ShapeError, match=r"node 'dec'.*initial state"):
        deltaprop.create("gru", units=4, initial_state=True)(x, h0, name="dec")
    layer = make_layer(_cls("gru"), [(5, 3), (4,)], units=4, initial_state=True)
    with pytest.raises(deltaprop.ShapeError, match=r"\(2, 4\)"):
        layer.forward((np.zeros((2, 5, 3), np.float32), np.zeros((2, 7), np.float32)),
                      train=False)


def test_lengths_beyond_the_time_axis_name_the_node():
    x = deltaprop.Input((5, 3), name="x")
    n = deltaprop.Input((1,), name="n", dtype="int64")
    y = deltaprop.create("rnn", units=2, use_lengths=True)(x, n, name="reader")
    net = deltaprop.Network([x, n], y)
    with pytest.raises(deltaprop.DataError, match=r"node 'reader'.*length of 9.*5 steps"):
        net.forward([np.zeros((2, 5, 3)), np.array([[2], [9]])])
    layer = make_layer(_cls("rnn"), [(5, 3), ()], units=2, use_lengths=True)
    with pytest.raises(deltaprop.DataError, match="whole numbers"):
        layer.forward((np.zeros((2, 5, 3), np.float32), np.array([1.5, 2.0])), train=False)


def test_non_integer_ids_name_the_node():
    x = deltaprop.Input((3,), name="ids")
    y = deltaprop.create("embedding", input_dim=4, output_dim=2)(x, name="emb")
    net = deltaprop.Network(x, y)
    with pytest.raises(deltaprop.DataError, match=r"node 'emb'.*integers"):
        net.forward(np.array([[0.5, 1.0, 2.0]]))
    with pytest.raises(deltaprop.DataError, match=r"node 'emb'.*id 7 is out of range"):
        net.forward(np.array([[0.0, 7.0, 2.0]]))
    np.testing.assert_array_equal(net.forward(np.array([[0.0, 1.0, 3.0]]))[0][0, 2],
                                  y.node.layer.params["W"][3])


def test_bad_config_is_a_config_error():
    with pytest.raises(deltaprop.ConfigError, match="activation"):
        deltaprop.create("rnn", units=3, activation="sigmoid")
    with pytest.raises(deltaprop.ConfigError, match="cell"):
        deltaprop.create("bidirectional", cell="transformer", units=3)
    with pytest.raises(deltaprop.ConfigError, match="wrapped layer 'nope'"):
        deltaprop.create("time_distributed", wrap="nope")
