"""conv2d, conv1d and the pools without a reference library: the two convolution
algorithms agree, auto picks sensibly, dtypes hold, and bad shapes fail clearly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import deltaprop
from deltaprop.errors import ConfigError, ShapeError
from deltaprop.plugins.conv import Conv1D, Conv2D, MaxPool2D, choose_algorithm, make_geometry
from deltaprop.spec import load_spec
from deltaprop.testing import make_layer

EXAMPLES = Path(__file__).parent.parent / "examples"


def _fwd_bwd(layer, x, g):
    (y,), cache = layer.forward((x,), train=True)
    (dx,), grads = layer.backward(cache, (g,))
    return y, dx, grads


@pytest.mark.parametrize(("shape", "config"), [
    ((3, 9, 8), {"filters": 4, "kernel_size": 3, "padding": 1}),
    ((2, 10, 10), {"filters": 3, "kernel_size": 5, "padding": "same", "dilation": 2}),
    ((2, 11, 9), {"filters": 2, "kernel_size": (3, 2), "stride": (2, 3), "padding": (2, 1)}),
])
def test_direct_and_fft_agree(shape, config):
    rng = np.random.default_rng(0)
    direct = make_layer(Conv2D, [shape], algorithm="direct", dtype="float64", **config)
    fft = make_layer(Conv2D, [shape], algorithm="fft", dtype="float64", **config)
    fft.params = {k: v.copy() for k, v in direct.params.items()}
    x = rng.standard_normal((2, *shape))
    g = rng.standard_normal((2, *direct.output_shapes[0]))
    for a, b in zip(_fwd_bwd(direct, x, g)[:2], _fwd_bwd(fft, x, g)[:2], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    gd, gf = _fwd_bwd(direct, x, g)[2], _fwd_bwd(fft, x, g)[2]
    for key in gd:
        np.testing.assert_allclose(gd[key], gf[key], rtol=1e-10, atol=1e-12)


def _direct_matches_fft_in_chunks_of_two(monkeypatch, shape, config, per_image) -> None:
    """Chunks sized for 2 images of ``per_image(grid)`` column values (``config`` decides
    which columns the direct algorithm builds), so a batch of 5 ends with a chunk of 1;
    direct and fft must agree on every output and gradient."""
    from deltaprop.plugins import conv

    rng = np.random.default_rng(1)
    config = {**config, "dtype": "float64"}
    direct = make_layer(Conv2D, [shape], algorithm="direct", **config)
    fft = make_layer(Conv2D, [shape], algorithm="fft", **config)
    fft.params = {k: v.copy() for k, v in direct.params.items()}
    grid = conv.Grid(direct._geometry(shape), 5, 8)
    monkeypatch.setattr(conv, "CHUNK_BYTES", 2 * per_image(grid) * 8)
    assert grid.images_per_chunk(per_image(grid)) == 2
    x = rng.standard_normal((5, *shape))
    g = rng.standard_normal((5, *direct.output_shapes[0]))
    for ours, ref in zip(_fwd_bwd(direct, x, g), _fwd_bwd(fft, x, g), strict=True):
        for key in ours if isinstance(ours, dict) else [None]:
            a, b = (ours[key], ref[key]) if key else (ours, ref)
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("stride", [1, 2])
def test_direct_in_several_chunks_with_a_partial_last_one(monkeypatch, stride):
    """Columns of the input (C*kh*kw rows), forward's and backward's: 7 filters for 3
    channels keep stride 1's backward off the delta columns."""
    _direct_matches_fft_in_chunks_of_two(
        monkeypatch, (3, 7, 6), {"filters": 7, "kernel_size": 3, "padding": "same",
                                 "stride": stride},
        lambda grid: 3 * 9 * grid.pixels)


def test_delta_columns_backward_in_several_chunks_with_a_partial_last_one(monkeypatch):
    """Stride 1: backward's columns of the output delta (F*kh*kw rows). Dilation and an
    even kernel's uneven padding move the windows, which must not read another image's
    delta."""
    _direct_matches_fft_in_chunks_of_two(
        monkeypatch, (3, 7, 6), {"filters": 4, "kernel_size": (2, 3), "padding": "same",
                                 "dilation": (2, 1)}, lambda grid: 4 * 2 * 3 * grid.plane)


def test_a_known_correlation_by_hand():
    layer = make_layer(Conv2D, [(1, 3, 3)], filters=1, kernel_size=2, dtype="float64")
    layer.params["W"][...] = np.array([[[[1.0, 2.0], [3.0, 4.0]]]])
    layer.params["b"][...] = 0.5
    x = np.arange(9.0).reshape(1, 1, 3, 3)
    for algorithm in ("direct", "fft"):
        layer.algorithm = algorithm
        (y,), _ = layer.forward((x,), train=False)
        # top-left window [[0, 1], [3, 4]] . [[1, 2], [3, 4]] = 0 + 2 + 9 + 16
        np.testing.assert_allclose(y[0, 0], [[27.5, 37.5], [57.5, 67.5]])


@pytest.mark.parametrize("algorithm", ["direct", "fft"])
def test_float32_stays_float32(algorithm):
    layer = make_layer(Conv2D, [(2, 6, 6)], filters=3, kernel_size=3, algorithm=algorithm)
    x = np.ones((2, 2, 6, 6), np.float32)
    y, dx, grads = _fwd_bwd(layer, x, np.ones((2, 3, 4, 4), np.float32))
    assert y.dtype == dx.dtype == grads["W"].dtype == grads["b"].dtype == np.float32
    pool = make_layer(MaxPool2D, [(3, 4, 4)], kernel_size=2)
    y2, dx2, _ = _fwd_bwd(pool, y, np.ones((2, 3, 2, 2), np.float32))
    assert y2.dtype == dx2.dtype == np.float32


def test_needs_grad_false_skips_the_input_delta():
    layer = make_layer(Conv2D, [(2, 5, 5)], filters=2, kernel_size=3)
    (y,), cache = layer.forward((np.ones((1, 2, 5, 5), np.float32),), train=True)
    (dx,), grads = layer.backward(cache, (np.ones_like(y),), needs_grad=[False])
    assert dx is None and set(grads) == {"W", "b"}


def test_auto_prefers_direct_for_small_kernels_and_fft_for_large_ones():
    small = make_geometry("conv2d", (16, 28, 28), 32, (3, 3), (1, 1), "same", (1, 1))
    large = make_geometry("conv2d", (48, 19, 19), 64, (7, 7), (1, 1), "same", (1, 1))
    strided = make_geometry("conv2d", (48, 19, 19), 64, (7, 7), (2, 2), "same", (1, 1))
    assert choose_algorithm(small, 64) == "direct"
    assert choose_algorithm(large, 128) == "fft"
    assert choose_algorithm(strided, 128) == "direct"


def test_same_padding_keeps_the_size_and_stride_divides_it():
    assert make_layer(Conv2D, [(1, 7, 8)], filters=2, kernel_size=4,
                      padding="same").output_shapes == ((2, 7, 8),)
    assert make_layer(Conv2D, [(1, 7, 8)], filters=2, kernel_size=3, stride=2,
                      padding="same").output_shapes == ((2, 4, 4),)
    assert make_layer(Conv1D, [(3, 10)], filters=2, kernel_size=3, stride=3,
                      dilation=2).output_shapes == ((2, 2),)


def test_conv1d_weights_have_the_torch_layout():
    layer = make_layer(Conv1D, [(3, 10)], filters=4, kernel_size=5)
    assert layer.params["W"].shape == (4, 3, 5)
    assert make_layer(Conv2D, [(3, 8, 8)], filters=4, kernel_size=(2, 3)).params["W"].shape \
        == (4, 3, 2, 3)


def test_kernel_larger_than_padded_input_names_the_node_and_shapes():
    spec = {"inputs": {"x": [1, 4, 4]}, "outputs": ["c"],
            "nodes": [{"name": "c", "layer": "conv2d", "inputs": ["x"], "filters": 2,
                       "kernel_size": 5, "padding": 0}]}
    with pytest.raises(ShapeError, match=r"node 'c'.*kernel \(5, 5\).*padded input \(4, 4\)"):
        load_spec(spec)


def test_wrong_input_rank_fails_at_build_and_at_run_time():
    spec = {"inputs": {"x": [8, 8]}, "outputs": ["c"],
            "nodes": [{"name": "c", "layer": "conv2d", "inputs": ["x"], "filters": 2}]}
    with pytest.raises(ShapeError, match=r"node 'c'.*4-D.*got shape \(8, 8\)"):
        load_spec(spec)
    layer = make_layer(Conv2D, [(1, 8, 8)], filters=2)
    with pytest.raises(ShapeError, match=r"4-D array.*\(2, 8, 8\)"):
        layer.forward((np.zeros((2, 8, 8), np.float32),), train=False)


def test_channels_that_do_not_match_the_weights():
    with pytest.raises(ShapeError, match=r"expect 3 input channels.*\(1, 8, 8\)"):
        make_layer(Conv2D, [(1, 8, 8)], filters=2, in_channels=3)
    layer = make_layer(Conv2D, [(3, 8, 8)], filters=2)
    with pytest.raises(ShapeError, match=r"\(2, 1, 8, 8\) has 1 channels.*\(2, 3, 3, 3\)"):
        layer.forward((np.zeros((2, 1, 8, 8), np.float32),), train=False)


@pytest.mark.parametrize("config", [
    {"filters": 0}, {"filters": 2, "kernel_size": [3]}, {"filters": 2, "padding": "full"},
    {"filters": 2, "stride": 0}, {"filters": 2, "algorithm": "winograd"},
])
def test_bad_config_is_a_config_error(config):
    with pytest.raises(ConfigError):
        deltaprop.create("conv2d", **config)


def test_pool_padding_at_most_half_the_kernel():
    with pytest.raises(ConfigError, match="at most half"):
        deltaprop.create("max_pool2d", kernel_size=2, padding=2)


def test_config_round_trips():
    layer = deltaprop.create("conv2d", filters=3, kernel_size=(2, 3), padding="same")
    again = type(layer).from_config(layer.get_config())
    assert again.get_config() == layer.get_config()


def test_digits_cnn_spec_builds_and_learns_a_little():
    from deltaprop.data import load_digits

    data = load_digits()
    net = load_spec(EXAMPLES / "digits_cnn.toml", seed=0)
    x = data.x_train[:128].reshape(-1, 1, 8, 8)
    loss = deltaprop.create_loss("softmax_cross_entropy")
    before = net.evaluate(x, data.y_train[:128], loss=loss)["loss"]
    net.fit(x, data.y_train[:128], loss=loss, optimizer=deltaprop.create_optimizer(
        "adam", lr=0.002), epochs=3, batch_size=32, seed=0, progress=False)
    assert net.evaluate(x, data.y_train[:128], loss=loss)["loss"] < before * 0.7


@pytest.mark.parametrize("name", ["fashion_cnn.toml", "go9_cnn.toml"])
def test_example_specs_build(name):
    net = load_spec(EXAMPLES / name, seed=0)
    assert net.n_params > 0
