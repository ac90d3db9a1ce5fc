"""Per-step targets: an output of shape (N, T, C) trains with class labels of shape
(N, T) or one-hot rows of shape (N, T, C), and every loss is the mean of its terms over
positions (class losses: every position but the class axis; mse and binary
cross-entropy: every element), as PyTorch's ``reduction="mean"``. Checked against a
numpy reference, and against PyTorch when it imports."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import expit, log_softmax

import deltaprop as dp
from deltaprop.tensor import seeded

N, T, F, C = 6, 4, 3, 5
LOSSES = ["softmax_cross_entropy", "cross_entropy", "binary_cross_entropy",
          "binary_cross_entropy_logits", "mse"]


def build(loss: str, seed: int = 0) -> dp.Network:
    """x (T, F) -> dense (T, C), then the layer ``loss`` expects after it."""
    with seeded(seed):
        x = dp.Input((T, F), name="x", dtype="float64")
        y = dp.create("dense", units=C, dtype="float64", label="out")(x, name="logits")
        if loss == "cross_entropy":
            y = dp.create("softmax", dtype="float64")(y, name="probs")
        elif loss == "binary_cross_entropy":
            y = dp.create("sigmoid", dtype="float64")(y, name="probs")
    return dp.Network(x, y)


def loss_object(loss: str) -> dp.Loss:
    if loss == "binary_cross_entropy_logits":
        return dp.create_loss("binary_cross_entropy", from_logits=True)
    return dp.create_loss(loss)


def make_targets(loss: str, rng: np.random.Generator, kind: str) -> np.ndarray:
    if loss in ("softmax_cross_entropy", "cross_entropy"):
        labels = rng.integers(0, C, (N, T))
        return labels if kind == "labels" else np.eye(C)[labels]
    if loss.startswith("binary"):
        return rng.uniform(0, 1, (N, T, C))
    return rng.standard_normal((N, T, C))


def cases():
    for loss in LOSSES:
        kinds = ["labels", "one_hot"] if loss.endswith("cross_entropy") and \
            not loss.startswith("binary") else ["values"]
        for kind in kinds:
            yield pytest.param(loss, kind, id=f"{loss}-{kind}")


def reference(loss: str, z: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray]:
    """Numpy: the loss of logits ``z`` (N, T, C) (the dense output) and its gradient
    with respect to ``z``."""
    if loss in ("softmax_cross_entropy", "cross_entropy"):
        onehot = target if target.ndim == 3 else np.eye(C)[target]
        logp = log_softmax(z, axis=-1)
        positions = z.shape[0] * z.shape[1]
        return float(-(onehot * logp).sum() / positions), (np.exp(logp) - onehot) / positions
    if loss.startswith("binary"):
        p = expit(z)
        value = -(target * np.log(p) + (1 - target) * np.log1p(-p))
        return float(value.mean()), (p - target) / z.size
    d = z - target
    return float(np.mean(d * d)), 2 * d / z.size


def dense_grads(x: np.ndarray, dz: np.ndarray) -> dict[str, np.ndarray]:
    return {"out/W": np.einsum("ntf,ntc->fc", x, dz), "out/b": dz.sum(axis=(0, 1))}


def logits(net: dp.Network, x: np.ndarray) -> np.ndarray:
    return x @ net.params["out/W"] + net.params["out/b"]


def train_step(net: dp.Network, loss: str, x: np.ndarray, target: np.ndarray, lr: float = 0.1
               ) -> tuple[float, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """One SGD step: (its loss, the gradients, the parameters before)."""
    before = {k: v.copy() for k, v in net.params.items()}
    value = net.train_step(x, target, loss=loss_object(loss),
                           optimizer=dp.create_optimizer("sgd", lr=lr))
    return value, {k: np.array(g) for k, g in net.grads.items()}, before


# -- numpy reference -------------------------------------------------------------------------
@pytest.mark.parametrize(("loss", "kind"), list(cases()))
def test_train_step_matches_the_numpy_reference(rng, loss, kind):
    net = build(loss)
    x = rng.standard_normal((N, T, F))
    target = make_targets(loss, rng, kind)
    z = logits(net, x)
    ref_value, dz = reference(loss, z, target)
    ref_grads = dense_grads(x, dz)
    value, grads, before = train_step(net, loss, x, target, lr=0.1)
    assert value == pytest.approx(ref_value, rel=1e-12)
    for k, g in ref_grads.items():
        np.testing.assert_allclose(grads[k], g, rtol=1e-9, atol=1e-15)
        np.testing.assert_allclose(net.params[k], before[k] - 0.1 * g, rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize(("loss", "kind"), list(cases()))
def test_evaluate_matches_the_numpy_reference(rng, loss, kind):
    net = build(loss)
    x = rng.standard_normal((N, T, F))
    target = make_targets(loss, rng, kind)
    ref_value, _ = reference(loss, logits(net, x), target)
    for batch_size in (N, 4, 1):  # per position, however the batches fall
        ev = net.evaluate(x, target, loss=loss_object(loss), batch_size=batch_size)
        assert ev["loss"] == pytest.approx(ref_value, rel=1e-10)
        assert ("accuracy" in ev) == (loss in ("softmax_cross_entropy", "cross_entropy"))


@pytest.mark.parametrize(("loss", "kind"), list(cases()))
def test_loss_value_and_grad_is_a_mean_over_positions(rng, loss, kind):
    """A loss on (N, T, C) equals the same loss on the (N * T, C) rows."""
    lossobj = loss_object(loss)
    target = make_targets(loss, rng, kind)
    if loss == "cross_entropy" or loss == "binary_cross_entropy":
        e = np.exp(rng.standard_normal((N, T, C)))
        pred = e / e.sum(axis=-1, keepdims=True) if loss == "cross_entropy" else expit(
            rng.standard_normal((N, T, C)))
    else:
        pred = rng.standard_normal((N, T, C))
    checked = lossobj.check_target((T, C), target)
    value, grad = lossobj.value_and_grad(pred, checked)
    flat_target = checked.reshape(N * T, *checked.shape[2:])
    flat_value, flat_grad = lossobj.value_and_grad(pred.reshape(N * T, C), flat_target)
    assert value == pytest.approx(flat_value, rel=1e-12)
    np.testing.assert_allclose(grad, flat_grad.reshape(N, T, C), rtol=1e-12, atol=1e-15)
    forward_value, cache = lossobj.forward(pred, checked)
    assert forward_value == pytest.approx(value, rel=1e-12)
    np.testing.assert_allclose(lossobj.backward(cache), grad, rtol=1e-10, atol=1e-15)


def test_labels_and_one_hot_train_the_same(rng):
    x = rng.standard_normal((N, T, F))
    labels = rng.integers(0, C, (N, T))
    for loss in ("softmax_cross_entropy", "cross_entropy"):
        a, b = build(loss), build(loss)
        va, ga, _ = train_step(a, loss, x, labels)
        vb, gb, _ = train_step(b, loss, x, np.eye(C)[labels])
        assert va == pytest.approx(vb, rel=1e-12)
        for k in ga:
            np.testing.assert_allclose(ga[k], gb[k], rtol=1e-12, atol=1e-15)


def test_cross_entropy_after_softmax_trains_like_softmax_cross_entropy_on_logits(rng):
    x = rng.standard_normal((N, T, F))
    labels = rng.integers(0, C, (N, T))
    probs, raw = build("cross_entropy"), build("softmax_cross_entropy")
    fusion = probs.plan.loss_fusion(0, dp.create_loss("cross_entropy"))
    assert fusion.skip is not None and fusion.loss.name == "softmax_cross_entropy"
    probs.fit(x, labels, loss="cross_entropy", optimizer="sgd", epochs=2, batch_size=2,
              seed=0, progress=False)
    raw.fit(x, labels, loss="softmax_cross_entropy", optimizer="sgd", epochs=2, batch_size=2,
            seed=0, progress=False)
    for k in raw.params:
        np.testing.assert_allclose(probs.params[k], raw.params[k], rtol=1e-12, atol=1e-15)


def test_fit_with_per_step_targets_equals_train_steps(rng):
    x = rng.standard_normal((N, T, F))
    labels = rng.integers(0, C, (N, T))
    a, b = build("softmax_cross_entropy"), build("softmax_cross_entropy")
    history = a.fit(x, labels, loss="softmax_cross_entropy",
                    optimizer=dp.create_optimizer("sgd", lr=0.1), epochs=1, batch_size=N,
                    shuffle=False, progress=False, validation=(x, labels))
    value = b.train_step(x, labels, loss="softmax_cross_entropy",
                         optimizer=dp.create_optimizer("sgd", lr=0.1))
    assert history.loss[0] == pytest.approx(value, rel=1e-12)
    for k in a.params:
        assert np.array_equal(a.params[k], b.params[k])
    ev = b.evaluate(x, labels, loss="softmax_cross_entropy")
    assert history.val_loss[0] == pytest.approx(ev["loss"], rel=1e-12)
    assert history.val_accuracy[0] == pytest.approx(ev["accuracy"])


def test_recurrent_sequence_output_trains_with_per_step_labels(rng):
    with seeded(0):
        x = dp.Input((T, F), name="x", dtype="float64")
        h = dp.create("gru", units=4, return_sequences=True, dtype="float64")(x)
        y = dp.create("dense", units=C, dtype="float64")(h)
    net = dp.Network(x, y)
    xs = rng.standard_normal((N, T, F))
    labels = rng.integers(0, C, (N, T))
    history = net.fit(xs, labels, epochs=2, batch_size=3, seed=0, progress=False)
    assert all(np.isfinite(history.loss))
    ev = net.evaluate(xs, labels)
    assert 0 <= ev["accuracy"] <= 1
    preds = net.predict(xs).argmax(axis=-1)
    assert ev["accuracy"] == pytest.approx(np.mean(preds == labels))


# -- accuracy over all steps ------------------------------------------------------------------
@pytest.mark.parametrize("loss", ["softmax_cross_entropy", "cross_entropy"])
@pytest.mark.parametrize("kind", ["labels", "one_hot"])
def test_accuracy_counts_every_step(rng, loss, kind):
    net = build(loss)
    x = rng.standard_normal((N, T, F))
    predicted = net.predict(x).argmax(axis=-1)
    labels = predicted.copy()
    wrong = [(0, 0), (1, 3), (4, 2), (5, 1), (5, 3)]
    for n, t in wrong:
        labels[n, t] = (labels[n, t] + 1) % C
    target = labels if kind == "labels" else np.eye(C)[labels]
    for batch_size in (N, 4, 1):
        ev = net.evaluate(x, target, loss=loss, batch_size=batch_size)
        assert ev["accuracy"] == pytest.approx(1 - len(wrong) / (N * T))
    assert dp.train.accuracy(net.predict(x), target) == pytest.approx(1 - len(wrong) / (N * T))


def test_accuracy_of_a_sequence_output_among_several(rng):
    with seeded(0):
        x = dp.Input((T, F), name="x", dtype="float64")
        seq = dp.create("dense", units=C, dtype="float64")(x, name="tags")
        flat = dp.create("flatten", dtype="float64")(x, name="flat")
        cls = dp.create("dense", units=2, dtype="float64")(flat, name="cls")
    net = dp.Network(x, [seq, cls])
    xs = rng.standard_normal((N, T, F))
    tags, cls_out = net.predict(xs)
    tag_labels = tags.argmax(axis=-1)
    tag_labels[0, :] = (tag_labels[0, :] + 1) % C  # one whole sequence wrong
    cls_labels = cls_out.argmax(axis=-1)
    ev = net.evaluate(xs, [tag_labels, cls_labels], loss="softmax_cross_entropy")
    assert ev["tags/accuracy"] == pytest.approx(1 - T / (N * T))
    assert ev["cls/accuracy"] == 1.0


# -- wrong shapes -----------------------------------------------------------------------------
def run(call: str, net: dp.Network, x: np.ndarray, target: np.ndarray, loss: str) -> None:
    if call == "fit":
        net.fit(x, target, loss=loss, epochs=1, progress=False)
    elif call == "train_step":
        net.train_step(x, target, loss=loss, optimizer="sgd")
    else:
        net.evaluate(x, target, loss=loss)


@pytest.mark.parametrize("call", ["fit", "train_step", "evaluate"])
@pytest.mark.parametrize("loss", ["softmax_cross_entropy", "cross_entropy"])
@pytest.mark.parametrize("shape", [(N,), (N, T + 1), (N, T - 1), (N, T, C + 1), (N, T, 1),
                                   (N, T, C, 1), (N, C, T)])
def test_class_targets_of_the_wrong_shape_state_the_accepted_shapes(rng, call, loss, shape):
    net = build(loss)
    x = rng.standard_normal((N, T, F))
    target = rng.integers(0, 2, shape)
    before = {k: v.copy() for k, v in net.params.items()}
    with pytest.raises(dp.DataError) as exc:
        run(call, net, x, target, loss)
    message = str(exc.value)
    assert "\n" not in message
    assert f"labels of shape (batch, {T})" in message
    assert f"one-hot rows of shape (batch, {T}, {C})" in message
    assert str(shape) in message
    for k, v in net.params.items():
        assert np.array_equal(v, before[k])


@pytest.mark.parametrize("call", ["fit", "train_step", "evaluate"])
@pytest.mark.parametrize("loss", ["mse", "binary_cross_entropy"])
def test_element_targets_of_the_wrong_shape_are_refused(rng, call, loss):
    net = build(loss)
    x = rng.standard_normal((N, T, F))
    with pytest.raises(dp.DataError) as exc:
        run(call, net, x, rng.integers(0, C, (N, T)), loss)
    message = str(exc.value)
    assert "\n" not in message
    assert f"({T},)" in message and f"({T}, {C})" in message


def test_labels_out_of_range_are_refused(rng):
    net = build("softmax_cross_entropy")
    x = rng.standard_normal((N, T, F))
    labels = rng.integers(0, C, (N, T))
    labels[2, 3] = C
    with pytest.raises(dp.DataError, match=f"label {C} is out of range"):
        net.fit(x, labels, epochs=1, progress=False)
    labels[2, 3] = -1
    with pytest.raises(dp.DataError, match="out of range"):
        net.evaluate(x, labels)


def test_whole_float_labels_are_accepted_and_fractional_refused(rng):
    net = build("softmax_cross_entropy")
    x = rng.standard_normal((N, T, F))
    labels = rng.integers(0, C, (N, T))
    ints = net.evaluate(x, labels)
    floats = net.evaluate(x, labels.astype(np.float64))
    assert floats == ints
    with pytest.raises(dp.DataError, match="whole numbers"):
        net.evaluate(x, labels + 0.5)


def test_binary_targets_outside_zero_one_are_refused(rng):
    net = build("binary_cross_entropy")
    x = rng.standard_normal((N, T, F))
    target = rng.uniform(0, 1, (N, T, C))
    target[0, 0, 0] = 1.5
    with pytest.raises(dp.DataError, match=r"\[0, 1\]"):
        net.fit(x, target, loss="binary_cross_entropy", epochs=1, progress=False)


# -- PyTorch ----------------------------------------------------------------------------------
def torch_prediction(torch, loss: str, z):
    """What the network outputs for logits ``z``: probabilities after its softmax or
    sigmoid layer, else the logits."""
    if loss == "cross_entropy":
        return torch.softmax(z, dim=-1)
    if loss == "binary_cross_entropy":
        return torch.sigmoid(z)
    return z


def torch_loss_of(torch, loss: str, p, target: np.ndarray):
    """PyTorch's loss of the prediction ``p`` (N, T, C), with reduction="mean"."""
    F_ = torch.nn.functional
    if loss in ("softmax_cross_entropy", "cross_entropy"):
        logp = (torch.log(p) if loss == "cross_entropy" else F_.log_softmax(p, dim=-1))
        logp = logp.reshape(-1, C)
        if target.ndim == 2:
            return F_.nll_loss(logp, torch.from_numpy(target.reshape(-1)))
        return -(torch.from_numpy(target.reshape(-1, C)) * logp).sum(dim=-1).mean()
    if loss == "binary_cross_entropy":
        return F_.binary_cross_entropy(p, torch.from_numpy(target))
    if loss == "binary_cross_entropy_logits":
        return F_.binary_cross_entropy_with_logits(p, torch.from_numpy(target))
    return F_.mse_loss(p, torch.from_numpy(target))


def torch_loss(torch, loss: str, z, target: np.ndarray):
    """PyTorch's loss of the network whose dense layer gives logits ``z``."""
    return torch_loss_of(torch, loss, torch_prediction(torch, loss, z), target)


@pytest.mark.torch
@pytest.mark.parametrize(("loss", "kind"), list(cases()))
def test_train_step_matches_pytorch(rng, loss, kind):
    torch = pytest.importorskip("torch")
    net = build(loss)
    x = rng.standard_normal((N, T, F))
    target = make_targets(loss, rng, kind)
    W = torch.tensor(net.params["out/W"], requires_grad=True)
    b = torch.tensor(net.params["out/b"], requires_grad=True)
    z = torch.from_numpy(x) @ W + b
    value = torch_loss(torch, loss, z, target)
    value.backward()
    ours, grads, _ = train_step(net, loss, x, target)
    assert ours == pytest.approx(value.item(), rel=1e-12)
    np.testing.assert_allclose(grads["out/W"], W.grad.numpy(), rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(grads["out/b"], b.grad.numpy(), rtol=1e-9, atol=1e-15)
    ev = net.evaluate(x, target, loss=loss_object(loss), batch_size=4)
    with torch.no_grad():
        after = torch_loss(torch, loss, torch.from_numpy(logits(net, x)), target)
    assert ev["loss"] == pytest.approx(after.item(), rel=1e-10)


@pytest.mark.torch
def test_cross_entropy_loss_on_rows_equals_pytorch_on_n_times_t(rng):
    """``CrossEntropyLoss`` on (N*T, C) and on (N, C, T) with (N, T) labels: the mean over
    every step."""
    torch = pytest.importorskip("torch")
    z = rng.standard_normal((N, T, C))
    labels = rng.integers(0, C, (N, T))
    tz = torch.tensor(z, requires_grad=True)
    value = torch.nn.CrossEntropyLoss()(tz.reshape(N * T, C), torch.from_numpy(
        labels.reshape(-1)))
    value.backward()
    other = torch.nn.CrossEntropyLoss()(torch.from_numpy(z).permute(0, 2, 1),
                                        torch.from_numpy(labels))
    ours, grad = dp.create_loss("softmax_cross_entropy").value_and_grad(z, labels)
    assert ours == pytest.approx(value.item(), rel=1e-12)
    assert ours == pytest.approx(other.item(), rel=1e-12)
    np.testing.assert_allclose(grad, tz.grad.numpy(), rtol=1e-10, atol=1e-15)


@pytest.mark.torch
@pytest.mark.parametrize(("loss", "kind"), list(cases()))
def test_loss_value_and_grad_matches_pytorch(rng, loss, kind):
    torch = pytest.importorskip("torch")
    target = make_targets(loss, rng, kind)
    z = rng.standard_normal((N, T, C))
    with torch.no_grad():
        pred = torch_prediction(torch, loss, torch.from_numpy(z)).numpy()
    tp = torch.tensor(pred, requires_grad=True)
    value = torch_loss_of(torch, loss, tp, target)
    value.backward()
    lossobj = loss_object(loss)
    ours, grad = lossobj.value_and_grad(pred, lossobj.check_target((T, C), target))
    assert ours == pytest.approx(value.item(), rel=1e-10)
    np.testing.assert_allclose(grad, tp.grad.numpy(), rtol=1e-8, atol=1e-15)
