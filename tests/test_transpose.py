"""The transpose layer: a permutation of the non-batch axes numbered from 1 (Keras's
Permute), its float64 gradient check, PyTorch's permute, and the bridge it was made
for: an embedding's (N, T, F) into conv1d's (N, C, L)."""

from __future__ import annotations

import numpy as np
import pytest

import deltaprop as dp
from deltaprop.testing import check_layer

Transpose = dp.get_registry().get("layer", "transpose")


@pytest.mark.parametrize(("axes", "shape"), [([2, 1], (3, 4)), ([3, 1, 2], (2, 3, 4)),
                                             ([1], (5,)), ([1, 3, 2], (2, 3, 4))])
def test_float64_gradient_check(axes, shape):
    check_layer(Transpose, [shape], axes=axes)


def test_axes_2_1_turns_n_t_f_into_n_f_t():
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    net = dp.Sequential([dp.create("transpose", axes=[2, 1])], input_shape=(3, 4))
    (y,) = net.forward(x)
    assert y.shape == (2, 4, 3)
    np.testing.assert_array_equal(y, x.transpose(0, 2, 1))


@pytest.mark.parametrize("axes", [[1, 1], [0, 1], [2, 3], "21", [1.0, 2.0], [True, 2], []])
def test_a_wrong_permutation_is_refused(axes):
    with pytest.raises(dp.ConfigError, match="transpose: axes must be a permutation"):
        dp.create("transpose", axes=axes)


def test_axes_must_match_the_input_rank():
    with pytest.raises(dp.ShapeError, match="transpose expects inputs of shape with 2"):
        dp.Sequential([dp.create("transpose", axes=[2, 1])], input_shape=(2, 3, 4))


def test_embedding_feeds_conv1d_through_transpose(rng):
    ids = dp.Input((7,), name="ids")
    e = dp.create("embedding", input_dim=10, output_dim=5)(ids)       # (N, 7, 5)
    c = dp.create("conv1d", filters=3, kernel_size=3)(dp.create("transpose", axes=[2, 1])(e))
    net = dp.Network(ids, c)
    (y,) = net.forward(rng.integers(0, 10, (4, 7)).astype(np.float32))
    assert y.shape == (4, 3, 5)


def test_the_spec_round_trip_keeps_axes(tmp_path):
    net = dp.Sequential([dp.create("transpose", axes=[3, 1, 2])], input_shape=(2, 3, 4))
    dp.save(net, tmp_path / "t.npz")
    again = dp.load(tmp_path / "t.npz")
    x = np.random.default_rng(0).standard_normal((2, 2, 3, 4)).astype(np.float32)
    np.testing.assert_array_equal(again.forward(x)[0], net.forward(x)[0])


@pytest.mark.torch
def test_matches_torch_permute():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 4, 5))
    g = rng.standard_normal((2, 5, 3, 4))
    layer = dp.create("transpose", axes=[3, 1, 2], dtype="float64")
    net = dp.Sequential([layer], input_shape=(3, 4, 5))
    (y,) = net.forward(x, train=True)
    (dx,) = net.backward(g)
    tx = torch.tensor(x, requires_grad=True)
    ty = tx.permute(0, 3, 1, 2)
    ty.backward(torch.tensor(g))
    np.testing.assert_array_equal(y, ty.detach().numpy())
    np.testing.assert_array_equal(dx, tx.grad.numpy())
