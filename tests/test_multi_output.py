"""Networks with several outputs train with one loss per output: given as a list, a
dict keyed by output name or one name for all, weighted by ``loss_weights``; an output
without a loss is not trained. ``train_step`` returns the weighted total, ``evaluate``
the total and per-output figures, and the ``[train]`` table of a spec carries the same
settings."""

from __future__ import annotations

import numpy as np
import pytest

import deltaprop as dp
from deltaprop.tensor import seeded

N = 8


def build(seed: int = 0) -> dp.Network:
    """x -> trunk -> tanh -> two heads: "cls" (3 class scores) and "reg" (2 values)."""
    with seeded(seed):
        x = dp.Input((4,), name="x", dtype="float64")
        h = dp.create("dense", units=5, dtype="float64", label="trunk")(x, name="trunk")
        h = dp.create("tanh", dtype="float64")(h, name="act")
        a = dp.create("dense", units=3, dtype="float64", label="cls")(h, name="cls")
        b = dp.create("dense", units=2, dtype="float64", label="reg")(h, name="reg")
    return dp.Network(x, [a, b])


@pytest.fixture
def data(rng):
    X = rng.standard_normal((N, 4))
    labels = rng.integers(0, 3, N)
    values = rng.standard_normal((N, 2))
    return X, labels, values


def snapshot(net: dp.Network) -> dict[str, np.ndarray]:
    return {k: v.copy() for k, v in net.params.items()}


def restore(net: dp.Network, saved: dict[str, np.ndarray]) -> None:
    for k, v in net.params.items():
        v[...] = saved[k]


def head(params: dict[str, np.ndarray], name: str) -> dict[str, np.ndarray]:
    return {k: v for k, v in params.items() if k.startswith(f"{name}/")}


def assert_same_params(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), k


def softmax_ce(z: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean softmax cross-entropy over rows and its gradient (numpy reference)."""
    shifted = z - z.max(axis=-1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    rows = np.arange(len(z))
    value = -logp[rows, labels].mean()
    grad = np.exp(logp)
    grad[rows, labels] -= 1
    return float(value), grad / len(z)


def mse(z: np.ndarray, t: np.ndarray) -> tuple[float, np.ndarray]:
    d = z - t
    return float(np.mean(d * d)), 2 * d / d.size


def step_grads(net, X, ys, *, loss, loss_weights=None):
    """The value and summed gradients of one train_step, parameters left as they were."""
    saved = snapshot(net)
    value = net.train_step(X, ys, loss=loss, optimizer=dp.create_optimizer("sgd", lr=0.1),
                           loss_weights=loss_weights)
    grads = {k: np.array(g) for k, g in net.grads.items()}
    restore(net, saved)
    return value, grads


# -- train_step: the weighted total and its gradient ------------------------------------
def test_output_names_are_the_node_names():
    net = build()
    assert net.output_names == ["cls", "reg"]


def test_output_names_of_a_multi_output_node():
    x = dp.Input((6,), name="x", dtype="float64")
    parts = dp.create("split", sections=[2, 4], dtype="float64")(x, name="parts")
    net = dp.Network(x, list(parts))
    assert net.output_names == ["parts:0", "parts:1"]


def test_train_step_returns_the_weighted_total_and_its_gradient(data):
    X, labels, values = data
    net = build()
    w1, w2 = 1.0, 0.5
    before = snapshot(net)
    z1, z2 = net.forward(X, train=True)
    l1, g1 = softmax_ce(z1, labels)
    l2, g2 = mse(z2, values)
    net.backward([w1 * g1, w2 * g2])
    expected = {k: np.array(g) for k, g in net.grads.items()}
    lr = 0.1
    value = net.train_step(X, [labels, values], loss=["softmax_cross_entropy", "mse"],
                           optimizer=dp.create_optimizer("sgd", lr=lr),
                           loss_weights=[w1, w2])
    assert value == pytest.approx(w1 * l1 + w2 * l2, rel=1e-12)
    for k in expected:
        np.testing.assert_allclose(net.grads[k], expected[k], rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(net.params[k], before[k] - lr * expected[k], rtol=1e-12,
                                   atol=1e-15)


def test_gradient_of_the_total_is_the_weighted_sum_of_each_outputs(data):
    X, labels, values = data
    net = build()
    losses = ["softmax_cross_entropy", "mse"]
    v1, only_first = step_grads(net, X, [labels, values], loss=losses, loss_weights=[1, 0])
    v2, only_second = step_grads(net, X, [labels, values], loss=losses, loss_weights=[0, 1])
    w1, w2 = 0.3, 2.5
    total, both = step_grads(net, X, [labels, values], loss=losses, loss_weights=[w1, w2])
    ev = net.evaluate(X, [labels, values], loss=losses)
    assert v1 == pytest.approx(ev["cls/loss"], rel=1e-12)
    assert v2 == pytest.approx(ev["reg/loss"], rel=1e-12)
    assert total == pytest.approx(w1 * v1 + w2 * v2, rel=1e-12)
    for k in both:
        np.testing.assert_allclose(both[k], w1 * only_first[k] + w2 * only_second[k],
                                   rtol=1e-10, atol=1e-14)


def test_weights_as_a_dict_equal_weights_as_a_list(data):
    X, labels, values = data
    net = build()
    listed = step_grads(net, X, [labels, values], loss=["softmax_cross_entropy", "mse"],
                        loss_weights=[0.7, 1.5])
    keyed = step_grads(net, X, {"reg": values, "cls": labels},
                       loss={"cls": "softmax_cross_entropy", "reg": "mse"},
                       loss_weights={"reg": 1.5, "cls": 0.7})
    assert listed[0] == keyed[0]
    assert_same_params(listed[1], keyed[1])


def test_weights_default_to_one(data):
    X, labels, values = data
    net = build()
    losses = ["softmax_cross_entropy", "mse"]
    default = step_grads(net, X, [labels, values], loss=losses)
    ones = step_grads(net, X, [labels, values], loss=losses, loss_weights=[1.0, 1.0])
    assert default[0] == ones[0]
    assert_same_params(default[1], ones[1])


def test_weight_dict_leaving_an_output_out_gives_it_weight_one(data):
    """``loss_weights`` is "a list or dict, default 1 each": an output a dict of
    weights leaves out keeps weight 1."""
    X, labels, values = data
    net = build()
    losses = ["softmax_cross_entropy", "mse"]
    default = step_grads(net, X, [labels, values], loss=losses, loss_weights=[1.0, 0.5])
    keyed = step_grads(net, X, [labels, values], loss=losses, loss_weights={"reg": 0.5})
    assert keyed[0] == default[0]
    assert_same_params(default[1], keyed[1])


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_an_output_of_weight_zero_leaves_its_head_unchanged(data, optimizer):
    X, labels, values = data
    net = build()
    before = snapshot(net)
    net.fit(X, [labels, values], loss=["softmax_cross_entropy", "mse"], loss_weights=[1, 0],
            optimizer=optimizer, epochs=2, batch_size=4, seed=0, progress=False)
    after = snapshot(net)
    assert_same_params(head(after, "reg"), head(before, "reg"))
    assert not np.array_equal(after["cls/W"], before["cls/W"])
    assert not np.array_equal(after["trunk/W"], before["trunk/W"])


# -- fit and evaluate with lists and dicts ----------------------------------------------
def test_fit_with_lists_equals_fit_with_dicts(data):
    X, labels, values = data
    a, b = build(), build()
    ha = a.fit(X, [labels, values], loss=["softmax_cross_entropy", "mse"],
               loss_weights=[1.0, 0.5], epochs=3, batch_size=3, seed=4, progress=False)
    hb = b.fit(X, {"cls": labels, "reg": values},
               loss={"reg": "mse", "cls": "softmax_cross_entropy"},
               loss_weights={"cls": 1.0, "reg": 0.5}, epochs=3, batch_size=3, seed=4,
               progress=False)
    assert ha.loss == hb.loss
    assert_same_params(snapshot(a), snapshot(b))
    assert len(ha.loss) == 3 and all(np.isfinite(ha.loss))


def test_fit_reports_the_weighted_total(data):
    X, labels, values = data
    net = build()
    saved = snapshot(net)
    weights = [0.25, 4.0]
    losses = ["softmax_cross_entropy", "mse"]
    ev = net.evaluate(X, [labels, values], loss=losses, loss_weights=weights)
    history = net.fit(X, [labels, values], loss=losses, loss_weights=weights,
                      optimizer=dp.create_optimizer("sgd", lr=1e-300), epochs=1,
                      batch_size=N, seed=0, progress=False)
    restore(net, saved)
    assert history.loss[0] == pytest.approx(ev["loss"], rel=1e-12)


def test_evaluate_gives_the_total_and_per_output_figures(data):
    X, labels, values = data
    net = build()
    z1, z2 = net.forward(X)
    l1, _ = softmax_ce(z1, labels)
    l2, _ = mse(z2, values)
    acc = float(np.mean(z1.argmax(axis=-1) == labels))
    ev = net.evaluate(X, [labels, values], loss=["softmax_cross_entropy", "mse"],
                      loss_weights=[1.0, 0.5], batch_size=3)
    assert set(ev) == {"loss", "cls/loss", "cls/accuracy", "reg/loss"}
    assert ev["cls/loss"] == pytest.approx(l1, rel=1e-12)
    assert ev["reg/loss"] == pytest.approx(l2, rel=1e-12)
    assert ev["cls/accuracy"] == pytest.approx(acc)
    assert ev["loss"] == pytest.approx(l1 + 0.5 * l2, rel=1e-12)
    keyed = net.evaluate(X, {"cls": labels, "reg": values},
                         loss={"cls": "softmax_cross_entropy", "reg": "mse"},
                         loss_weights={"cls": 1.0, "reg": 0.5}, batch_size=3)
    assert keyed == pytest.approx(ev, rel=1e-12)


def test_one_output_network_evaluates_as_before(data):
    X, labels, _ = data
    with seeded(0):
        x = dp.Input((4,), name="x", dtype="float64")
        y = dp.create("dense", units=3, dtype="float64")(x)
    net = dp.Network(x, y)
    ev = net.evaluate(X, labels, loss="softmax_cross_entropy")
    assert set(ev) == {"loss", "accuracy"}
    z = net.forward(X)[0]
    assert ev["loss"] == pytest.approx(softmax_ce(z, labels)[0], rel=1e-12)


def test_one_loss_name_applies_to_every_output(rng):
    X = rng.standard_normal((N, 4))
    t1, t2 = rng.standard_normal((N, 3)), rng.standard_normal((N, 2))
    a, b = build(), build()
    a.fit(X, [t1, t2], loss="mse", epochs=2, batch_size=4, seed=1, progress=False)
    b.fit(X, [t1, t2], loss=["mse", "mse"], epochs=2, batch_size=4, seed=1, progress=False)
    assert_same_params(snapshot(a), snapshot(b))
    ev = a.evaluate(X, [t1, t2], loss="mse")
    assert set(ev) == {"loss", "cls/loss", "reg/loss"}
    assert ev["loss"] == pytest.approx(ev["cls/loss"] + ev["reg/loss"], rel=1e-12)


# -- outputs without a loss --------------------------------------------------------------
@pytest.mark.parametrize("how", ["list", "dict"])
def test_an_output_without_a_loss_is_not_trained(data, how):
    X, labels, _ = data
    net = build()
    before = snapshot(net)
    if how == "list":
        kwargs = {"y": [labels, None], "loss": ["softmax_cross_entropy", None]}
    else:
        kwargs = {"y": {"cls": labels}, "loss": {"cls": "softmax_cross_entropy"}}
    net.fit(X, kwargs["y"], loss=kwargs["loss"], epochs=2, batch_size=4, seed=0,
            progress=False)
    after = snapshot(net)
    assert_same_params(head(after, "reg"), head(before, "reg"))
    assert not np.array_equal(after["cls/W"], before["cls/W"])
    value = net.train_step(X, kwargs["y"], loss=kwargs["loss"], optimizer="sgd")
    ev = net.evaluate(X, kwargs["y"], loss=kwargs["loss"])
    assert set(ev) == {"loss", "cls/loss", "cls/accuracy"}
    assert np.isfinite(value)
    assert ev["loss"] == ev["cls/loss"]


def test_untrained_output_matches_a_network_without_it(data):
    """Training only "cls" of the two-headed network moves the trunk and that head
    exactly as a network made of them alone would."""
    X, labels, values = data
    net = build()
    with seeded(0):
        x = dp.Input((4,), name="x", dtype="float64")
        h = dp.create("dense", units=5, dtype="float64", label="trunk")(x, name="trunk")
        h = dp.create("tanh", dtype="float64")(h, name="act")
        a = dp.create("dense", units=3, dtype="float64", label="cls")(h, name="cls")
    alone = dp.Network(x, a)
    assert_same_params(snapshot(alone), {k: v for k, v in snapshot(net).items()
                                         if not k.startswith("reg/")})
    net.fit(X, {"cls": labels, "reg": values}, loss={"cls": "softmax_cross_entropy"},
            epochs=2, batch_size=3, seed=2, progress=False)
    alone.fit(X, labels, loss="softmax_cross_entropy", epochs=2, batch_size=3, seed=2,
              progress=False)
    for k, v in snapshot(alone).items():
        np.testing.assert_allclose(net.params[k], v, rtol=1e-12, atol=1e-15)


# -- the [train] table of a spec ----------------------------------------------------------
def spec(train: dict) -> dict:
    return {
        "inputs": {"x": [4]}, "outputs": ["cls", "reg"], "dtype": "float64",
        "nodes": [
            {"name": "trunk", "layer": "dense", "inputs": ["x"], "units": 5},
            {"name": "act", "layer": "tanh", "inputs": ["trunk"]},
            {"name": "cls", "layer": "dense", "inputs": ["act"], "units": 3},
            {"name": "reg", "layer": "dense", "inputs": ["act"], "units": 2}],
        "train": train,
    }


@pytest.mark.parametrize("train", [
    {"loss": ["softmax_cross_entropy", "mse"], "loss_weights": [1.0, 0.5]},
    {"loss": {"cls": "softmax_cross_entropy", "reg": "mse"},
     "loss_weights": {"cls": 1.0, "reg": 0.5}},
], ids=["lists", "tables"])
def test_spec_train_table_trains_several_outputs(data, train):
    X, labels, values = data
    net = dp.load_spec(spec(train), seed=0)
    assert net.output_names == ["cls", "reg"]
    assert net.train_config["loss"] == train["loss"]
    assert net.train_config["loss_weights"] == train["loss_weights"]
    reference = dp.load_spec(spec({}), seed=0)
    history = net.fit(X, [labels, values], loss=net.train_config["loss"],
                      loss_weights=net.train_config["loss_weights"], epochs=2, batch_size=4,
                      seed=3, progress=False)
    reference.fit(X, [labels, values], loss=["softmax_cross_entropy", "mse"],
                  loss_weights=[1.0, 0.5], epochs=2, batch_size=4, seed=3, progress=False)
    assert all(np.isfinite(history.loss))
    assert_same_params(snapshot(net), snapshot(reference))
    ev = net.evaluate(X, {"cls": labels, "reg": values}, loss=net.train_config["loss"],
                      loss_weights=net.train_config["loss_weights"])
    assert ev["loss"] == pytest.approx(ev["cls/loss"] + 0.5 * ev["reg/loss"], rel=1e-12)


def test_spec_from_a_toml_file_keeps_the_loss_table(tmp_path, data):
    X, labels, values = data
    path = tmp_path / "two_heads.toml"
    path.write_text("""
outputs = ["cls", "reg"]
dtype = "float64"
[inputs]
x = [4]
[[nodes]]
name = "trunk"
layer = "dense"
inputs = ["x"]
units = 5
[[nodes]]
name = "cls"
layer = "dense"
inputs = ["trunk"]
units = 3
[[nodes]]
name = "reg"
layer = "dense"
inputs = ["trunk"]
units = 2
[train]
[train.loss]
cls = "softmax_cross_entropy"
reg = "mse"
[train.loss_weights]
cls = 2.0
reg = 0.25
""")
    net = dp.load_spec(path, seed=0)
    assert net.train_config["loss"] == {"cls": "softmax_cross_entropy", "reg": "mse"}
    history = net.fit(X, {"cls": labels, "reg": values}, loss=net.train_config["loss"],
                      loss_weights=net.train_config["loss_weights"], epochs=1, batch_size=4,
                      seed=0, progress=False)
    assert np.isfinite(history.loss[0])


# -- clear errors -----------------------------------------------------------------------
def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("call", ["fit", "train_step", "evaluate"])
@pytest.mark.parametrize("ys", ["one", "three", "array"])
def test_wrong_number_of_targets_is_a_data_error(data, call, ys):
    X, labels, values = data
    targets = {"one": [labels], "three": [labels, values, values], "array": labels}[ys]
    net = build()
    before = snapshot(net)
    losses = ["softmax_cross_entropy", "mse"]
    with pytest.raises(dp.DataError) as exc:
        if call == "fit":
            net.fit(X, targets, loss=losses, epochs=1, progress=False)
        elif call == "train_step":
            net.train_step(X, targets, loss=losses, optimizer="sgd")
        else:
            net.evaluate(X, targets, loss=losses)
    message = one_line(exc)
    assert "2 outputs" in message and "'cls'" in message and "'reg'" in message
    assert_same_params(snapshot(net), before)


def test_missing_target_in_a_dict_is_named(data):
    X, labels, values = data
    net = build()
    with pytest.raises(dp.DataError, match="'reg'") as exc:
        net.fit(X, {"cls": labels}, loss=["softmax_cross_entropy", "mse"], epochs=1,
                progress=False)
    one_line(exc)
    with pytest.raises(dp.DataError, match="'reg'"):
        net.fit(X, {"cls": labels, "rge": values}, loss=["softmax_cross_entropy", "mse"],
                epochs=1, progress=False)


def test_target_for_an_unknown_output_name_is_an_error(data):
    """A dict of targets keyed by a name no output has (a typo) is refused, even when
    every trained output has its targets."""
    X, labels, values = data
    net = build()
    with pytest.raises(dp.DataError, match="'rge'"):
        net.fit(X, {"cls": labels, "rge": values}, loss={"cls": "softmax_cross_entropy"},
                epochs=1, progress=False)


@pytest.mark.parametrize("what", ["loss", "loss_weights"])
def test_unknown_output_name_in_a_dict_is_a_config_error(data, what):
    X, labels, values = data
    net = build()
    kwargs = {"loss": {"cls": "softmax_cross_entropy", "reg": "mse"}}
    if what == "loss":
        kwargs["loss"] = {"cls": "softmax_cross_entropy", "regression": "mse"}
    else:
        kwargs["loss_weights"] = {"cls": 1.0, "regression": 0.5}
    for call in (lambda: net.fit(X, [labels, values], epochs=1, progress=False, **kwargs),
                 lambda: net.train_step(X, [labels, values], optimizer="sgd", **kwargs),
                 lambda: net.evaluate(X, [labels, values], **kwargs)):
        with pytest.raises(dp.ConfigError) as exc:
            call()
        message = one_line(exc)
        assert what in message and "'regression'" in message
        assert "'cls'" in message and "'reg'" in message  # the outputs it has


@pytest.mark.parametrize("what", ["loss", "loss_weights"])
def test_list_of_the_wrong_length_is_a_config_error(data, what):
    X, labels, values = data
    net = build()
    kwargs = {"loss": ["softmax_cross_entropy", "mse"]}
    kwargs[what] = ["mse"] * 3 if what == "loss" else [1.0]
    with pytest.raises(dp.ConfigError, match="2 output") as exc:
        net.fit(X, [labels, values], epochs=1, progress=False, **kwargs)
    assert what in one_line(exc)


@pytest.mark.parametrize("weight", [-1.0, float("nan"), float("inf"), "1", True])
def test_bad_weight_is_a_config_error(data, weight):
    X, labels, values = data
    net = build()
    with pytest.raises(dp.ConfigError, match="'reg'"):
        net.fit(X, [labels, values], loss=["softmax_cross_entropy", "mse"],
                loss_weights=[1.0, weight], epochs=1, progress=False)


def test_no_output_with_a_loss_is_a_config_error(data):
    X, labels, values = data
    net = build()
    with pytest.raises(dp.ConfigError, match="no output"):
        net.fit(X, [labels, values], loss=[None, None], epochs=1, progress=False)
    with pytest.raises(dp.ConfigError, match="no output"):
        net.fit(X, [labels, values], loss={}, epochs=1, progress=False)


def test_wrong_target_shape_names_the_output(data):
    X, labels, values = data
    net = build()
    with pytest.raises(dp.DataError, match="output 'reg'") as exc:
        net.fit(X, [labels, values[:, :1]], loss=["softmax_cross_entropy", "mse"], epochs=1,
                progress=False)
    one_line(exc)
    with pytest.raises(dp.DataError, match="output 'cls'"):
        net.fit(X, [labels[:5], values], loss=["softmax_cross_entropy", "mse"], epochs=1,
                progress=False)
