"""ONNX export, checked in ONNX Runtime: every registered layer's examples and every
spec under examples/ compute the same in both (float32, relative error at most 1e-5
of the output's scale), at two batch sizes.

Parametrized from the registry: a layer added by any plugin is exported here without
a new test, and fails here when it has no converter.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from helpers_registry import layer_examples

import deltaprop
from deltaprop.export import DEFAULT_OPSET, ExportError
from deltaprop.testing.export_check import (
    BATCHES,
    RTOL,
    check_onnx_export,
    compare_with_onnxruntime,
    example_network,
)

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

registry = deltaprop.get_registry()
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SPECS = sorted(p for p in EXAMPLES.glob("*") if p.suffix in (".toml", ".json"))




@pytest.mark.parametrize(("layer_class", "example"), layer_examples())
def test_every_layer_example_runs_the_same_in_onnxruntime(layer_class, example):
    error = check_onnx_export(layer_class, example["input_shapes"], **example["config"])
    assert error <= RTOL


@pytest.mark.parametrize("spec", SPECS, ids=[p.name for p in SPECS])
def test_every_example_spec_runs_the_same_in_onnxruntime(spec):
    net = deltaprop.load_spec(deltaprop.spec.read_spec_file(spec), seed=0)
    rng = np.random.default_rng(0)
    batches = [[_random_input(rng, t, batch) for t in net.inputs] for batch in BATCHES]
    assert compare_with_onnxruntime(net, batches) <= RTOL


def _random_input(rng, tensor, batch):
    if np.issubdtype(np.dtype(tensor.dtype), np.integer):
        return rng.integers(0, 4, size=(batch, *tensor.shape)).astype(tensor.dtype)
    return rng.standard_normal((batch, *tensor.shape)).astype(tensor.dtype)


# -- recurrent layers, every option, with sequence lengths ----------------------------------
RECURRENT = [
    (cell, options)
    for cell in ("rnn", "lstm", "gru")
    for options in ({"return_sequences": True}, {"reverse": True, "return_state": True},
                    {"use_lengths": True, "return_sequences": True},
                    {"use_lengths": True, "reverse": True, "return_sequences": True,
                     "return_state": True},
                    {"use_lengths": True, "initial_state": True, "return_state": True})
]


@pytest.mark.parametrize(("cell", "options"), RECURRENT,
                         ids=[f"{c}-{'-'.join(o)}" for c, o in RECURRENT])
def test_recurrent_layers_with_lengths_and_states(cell, options):
    shapes = [(5, 3)]
    states = 2 if cell == "lstm" else 1
    if options.get("initial_state"):
        shapes += [(4,)] * states
    if options.get("use_lengths"):
        shapes.append(())
    check_onnx_export(registry.get("layer", cell), shapes, units=4, **options)
    bi_shapes = [(5, 3)] + [(4,)] * (2 * states if options.get("initial_state") else 0)
    if options.get("use_lengths"):
        bi_shapes.append((1,))
    bi_options = {k: v for k, v in options.items() if k != "reverse"}
    check_onnx_export(registry.get("layer", "bidirectional"), bi_shapes, cell=cell, units=4,
                      **bi_options)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_recurrent_lengths_from_zero_to_full(cell):
    for reverse in (False, True):
        x = deltaprop.Input((5, 3), name="x")
        lengths = deltaprop.Input((), name="lengths", dtype="int64")
        outs = deltaprop.create(cell, units=4, use_lengths=True, reverse=reverse,
                                return_sequences=True, return_state=True)(x, lengths)
        net = deltaprop.Network([x, lengths], list(outs))
        rng = np.random.default_rng(0)
        sequences = rng.standard_normal((4, 5, 3)).astype("float32")
        compare_with_onnxruntime(net, [[sequences, np.array([0, 5, 2, 1])]])


def test_rnn_relu_and_time_distributed_recurrent_cell():
    check_onnx_export(registry.get("layer", "rnn"), [(4, 2)], units=3, activation="relu",
                      return_sequences=True)
    check_onnx_export(registry.get("layer", "bidirectional"), [(4, 2)], cell="rnn",
                      units=3, activation="relu")
    check_onnx_export(registry.get("layer", "time_distributed"), [(2, 4, 3)], wrap="lstm",
                      config={"units": 2, "return_sequences": True})


# -- convolutions: every padding, stride and dilation -------------------------------------
CONVS = [
    {"padding": padding, "stride": stride, "dilation": dilation}
    for padding in ("valid", "same", 1, [2, 1])
    for stride in (1, 2, [2, 1])
    for dilation in (1, 2)
]


@pytest.mark.parametrize("config", CONVS, ids=lambda c: "-".join(str(v) for v in c.values()))
def test_conv2d_every_padding_stride_and_dilation(config):
    for algorithm in ("direct", "fft"):
        check_onnx_export(registry.get("layer", "conv2d"), [(2, 7, 8)], filters=3,
                          kernel_size=[3, 2], algorithm=algorithm, **config)


@pytest.mark.parametrize("config", CONVS[::2], ids=lambda c: "-".join(str(v) for v in c.values()))
def test_conv1d_every_padding_stride_and_dilation(config):
    config = {k: (v[0] if isinstance(v, list) else v) for k, v in config.items()}
    check_onnx_export(registry.get("layer", "conv1d"), [(2, 9)], filters=2, kernel_size=3,
                      **config)


def test_pools_with_padding_and_uneven_windows():
    for name in ("max_pool2d", "avg_pool2d"):
        check_onnx_export(registry.get("layer", name), [(2, 7, 6)], kernel_size=[3, 2],
                          stride=[2, 1], padding=[1, 1])


def test_the_check_catches_a_wrong_converter(monkeypatch):
    """The comparison can fail: lstm's gates written in deltaprop's order, not ONNX's."""
    from deltaprop.plugins import onnx_converters

    monkeypatch.setitem(onnx_converters.ONNX_GATE_ORDER, "lstm", [0, 1, 2, 3])
    with pytest.raises(AssertionError, match="differs from ONNX Runtime"):
        check_onnx_export(registry.get("layer", "lstm"), [(4, 3)], units=2)


# -- opsets -------------------------------------------------------------------------------
@pytest.mark.parametrize("opset", [13, DEFAULT_OPSET, 21])
def test_opsets(opset, tmp_path):
    """The opset-dependent converters (reductions, recurrent ops) at both ends."""
    for name, shapes, config in [("lstm", [(4, 3), ()], {"units": 2, "use_lengths": True}),
                                 ("gru", [(4, 3)], {"units": 2, "return_sequences": True}),
                                 ("split", [(6,)], {"sections": [2, 4]}),
                                 ("global_avg_pool2d", [(2, 3, 3)], {})]:
        check_onnx_export(registry.get("layer", name), shapes, opset=opset, **config)
    contrib = [("gelu", [(5,)], {}), ("gelu", [(5,)], {"approximate": "tanh"}),
               ("layer_norm", [(2, 4)], {}), ("layer_norm", [(4,)], {"elementwise_affine": False})]
    for name, shapes, config in contrib:
        if name in registry.names("layer"):  # (deltaprop-contrib installed)
            check_onnx_export(registry.get("layer", name), shapes, opset=opset, **config)
    net, _ = example_network(registry.get("layer", "dense"), [(3,)], units=2)
    deltaprop.export_onnx(net, tmp_path / "m.onnx", opset=opset)
    model = onnx.load(tmp_path / "m.onnx")
    assert model.opset_import[0].version == opset


# -- what the exported model records ---------------------------------------------------------
def _two_input_net():
    a = deltaprop.Input(3, name="left")
    b = deltaprop.Input(3, name="right")
    total = deltaprop.create("add")(a, b, name="total")
    hidden = deltaprop.create("dense", units=4, label="hidden")(total, name="hidden")
    act = deltaprop.create("relu")(hidden, name="act")
    probs = deltaprop.create("softmax")(act, name="probs")
    parts = deltaprop.create("split", sections=2)(act, name="parts")
    return deltaprop.Network([a, b], [probs, parts[1]], name="two")


def test_names_dynamic_batch_metadata_and_full_check(tmp_path):
    net = _two_input_net()
    path = tmp_path / "two.onnx"
    deltaprop.export_onnx(net, path)
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == ["left", "right"]
    assert [o.name for o in model.graph.output] == ["probs", "parts:1"]
    for value in (*model.graph.input, *model.graph.output):
        assert value.type.tensor_type.shape.dim[0].dim_param == "batch"
    props = {p.key: p.value for p in model.metadata_props}
    assert props["deltaprop_version"] == deltaprop.__version__
    rebuilt = deltaprop.load_spec(__import__("json").loads(props["deltaprop_spec"]))
    assert rebuilt.to_spec() == net.to_spec()
    assert set(net.params) <= {i.name for i in model.graph.initializer}


def test_fused_nodes_export_as_their_parts(tmp_path):
    net = _two_input_net()
    assert any("+" in step.name for step in net.plan.steps), "the plan fuses dense+relu"
    deltaprop.export_onnx(net, tmp_path / "m.onnx")
    ops = [n.op_type for n in onnx.load(tmp_path / "m.onnx").graph.node]
    assert "Gemm" in ops and "Relu" in ops


def test_a_shared_layer_writes_its_weights_once(tmp_path):
    x = deltaprop.Input(3, name="x")
    dense = deltaprop.create("dense", units=3)
    y = dense(dense(x, name="first"), name="second")
    net = deltaprop.Network(x, y)
    deltaprop.export_onnx(net, tmp_path / "m.onnx")
    model = onnx.load(tmp_path / "m.onnx")
    assert len(model.graph.initializer) == 2
    rng = np.random.default_rng(0)
    compare_with_onnxruntime(net, [[rng.standard_normal((b, 3)).astype("float32")]
                                   for b in BATCHES])


def test_integer_and_float_ids_for_embedding():
    for dtype in ("int64", "int32", "float32"):
        ids = deltaprop.Input(4, name="ids", dtype=dtype)
        net = deltaprop.Network(ids, deltaprop.create("embedding", input_dim=7,
                                                      output_dim=3)(ids))
        rng = np.random.default_rng(1)
        compare_with_onnxruntime(net, [[rng.integers(0, 7, size=(b, 4)).astype(dtype)]
                                       for b in BATCHES])


def test_dense_on_inputs_of_any_rank():
    for shape in [(3,), (2, 3), (2, 2, 3)]:
        check_onnx_export(registry.get("layer", "dense"), [shape], units=2)
        check_onnx_export(registry.get("layer", "dense"), [shape], units=2, use_bias=False)


def test_transpose():
    for axes, shape in [([2, 1], (3, 4)), ([3, 1, 2], (2, 3, 4)), ([1, 2], (3, 2))]:
        check_onnx_export(registry.get("layer", "transpose"), [shape], axes=axes)


def test_converters_are_listed_with_their_plugin(capsys):
    from deltaprop.cli import main

    assert main(["layers", "--kind", "onnx_converter"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:]]
    by_name = {row[0]: row for row in rows}
    assert by_name["lstm"][1:4] == ["onnx_converter", "onnx_converters", "deltaprop"]


# -- bad input: one line, nothing written ---------------------------------------------------
class Unconvertible(deltaprop.Layer):
    name = "unconvertible"

    def forward(self, inputs, *, train):
        return (inputs[0] * 2,), None


def test_a_layer_without_converter_names_node_layer_and_origin(tmp_path):
    x = deltaprop.Input(3, name="x")
    h = deltaprop.create("dense", units=3)(x, name="hidden")
    y = Unconvertible()(h, name="doubler")
    net = deltaprop.Network(x, y)
    target = tmp_path / "m.onnx"
    with pytest.raises(ExportError) as info:
        deltaprop.export_onnx(net, target)
    message = str(info.value)
    assert "node 'doubler'" in message and "'unconvertible'" in message
    assert "test_onnx_export.Unconvertible, not registered" in message
    assert "\n" not in message
    assert list(tmp_path.iterdir()) == []


def test_a_registered_layer_without_converter_names_its_plugin(fresh_registry, tmp_path):
    import types

    from deltaprop.hookspecs import hookimpl

    module = types.ModuleType("acme_layers")
    module.deltaprop_register_layers = hookimpl(lambda: [Unconvertible])
    registry = fresh_registry()
    registry.register_plugin(module, distribution="acme-layers", version="1.2")
    x = deltaprop.Input(3, name="x")
    net = deltaprop.Network(x, deltaprop.create("unconvertible")(x, name="doubler"))
    with pytest.raises(ExportError, match=r"node 'doubler'.*'unconvertible'.*plugin "
                                          r"'acme_layers' \(acme-layers 1.2\)"):
        deltaprop.export_onnx(net, tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_a_converter_registered_by_a_plugin_is_used(fresh_registry, tmp_path):
    import types

    from deltaprop.hookspecs import hookimpl

    def convert(layer, ctx):
        return (ctx.op("Mul", [ctx.inputs[0], ctx.constant(np.float32(2))]),)

    module = types.ModuleType("acme_layers")
    module.deltaprop_register_layers = hookimpl(lambda: [Unconvertible])
    module.deltaprop_register_onnx_converters = hookimpl(lambda: {"unconvertible": convert})
    registry = fresh_registry()
    registry.register_plugin(module, distribution="acme-layers", version="1.2")
    assert registry.provider("onnx_converter", "unconvertible").plugin == "acme_layers"
    x = deltaprop.Input(3, name="x")
    net = deltaprop.Network(x, deltaprop.create("unconvertible")(x))
    rng = np.random.default_rng(0)
    compare_with_onnxruntime(net, [[rng.standard_normal((b, 3)).astype("float32")]
                                   for b in BATCHES])


def test_a_layer_converting_itself():
    class Doubler(Unconvertible):
        name = "doubler"

        def to_onnx(self, ctx):
            return (ctx.op("Add", [ctx.inputs[0], ctx.inputs[0]]),)

    x = deltaprop.Input(3, name="x")
    net = deltaprop.Network(x, Doubler()(x))
    rng = np.random.default_rng(0)
    compare_with_onnxruntime(net, [[rng.standard_normal((b, 3)).astype("float32")]
                                   for b in BATCHES])


def test_a_converter_that_raises_is_named(tmp_path):
    class Broken(Unconvertible):
        name = "broken_converter"

        def to_onnx(self, ctx):
            return (ctx.param("missing"),)

    x = deltaprop.Input(3, name="x")
    net = deltaprop.Network(x, Broken()(x, name="broken"))
    with pytest.raises(ExportError, match=r"node 'broken': the ONNX converter of layer "
                                          r"'broken_converter' raised KeyError"):
        deltaprop.export_onnx(net, tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("opset", [12, 10_000, "17", True])
def test_unsupported_opset(opset, tmp_path):
    net = _two_input_net()
    with pytest.raises(ExportError, match=r"opset .* is not supported"):
        deltaprop.export_onnx(net, tmp_path / "m.onnx", opset=opset)
    assert list(tmp_path.iterdir()) == []


def test_a_failed_export_keeps_the_old_file(tmp_path):
    target = tmp_path / "m.onnx"
    target.write_bytes(b"old")
    x = deltaprop.Input(3, name="x")
    net = deltaprop.Network(x, Unconvertible()(x))
    with pytest.raises(ExportError):
        deltaprop.export_onnx(net, target)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


def test_missing_onnx_says_how_to_install(monkeypatch, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now raises ImportError
    with pytest.raises(ExportError, match=r"pip install deltaprop\[onnx\]"):
        deltaprop.export_onnx(_two_input_net(), tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


# -- the command ------------------------------------------------------------------------------
def _saved_model(tmp_path):
    net = _two_input_net()
    path = tmp_path / "model.npz"
    deltaprop.save(net, path)
    return net, path


def test_cli_export(tmp_path, capsys):
    from deltaprop.cli import main

    net, model = _saved_model(tmp_path)
    out = tmp_path / "model.onnx"
    assert main(["export", str(model), str(out), "--opset", "18"]) == 0
    assert "model.onnx" in capsys.readouterr().out
    assert onnx.load(out).opset_import[0].version == 18
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal((4, 3)).astype("float32") for _ in range(2)]
    from deltaprop.testing.export_check import session

    got = session(out).run(None, {"left": arrays[0], "right": arrays[1]})
    for e, a in zip(net.predict(arrays), got):
        np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", ["bad_model", "bad_opset", "missing_folder", "folder"])
def test_cli_export_bad_input_is_one_line_and_writes_nothing(case, tmp_path, capsys):
    from deltaprop.cli import main

    _, model = _saved_model(tmp_path)
    out = tmp_path / "out.onnx"
    args = [str(model), str(out)]
    if case == "bad_model":
        broken = tmp_path / "broken.npz"
        broken.write_bytes(b"not a zip")
        args = [str(broken), str(out)]
    elif case == "bad_opset":
        args += ["--opset", "7"]
    elif case == "missing_folder":
        out = tmp_path / "nowhere" / "out.onnx"
        args = [str(model), str(out)]
    else:
        out = tmp_path / "folder"
        out.mkdir()
        args = [str(model), str(out)]
    before = sorted(os.listdir(tmp_path))
    assert main(["export", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("deltaprop: error:") and "\n" not in err, err
    assert sorted(os.listdir(tmp_path)) == before


# -- a trained model ------------------------------------------------------------------------
def test_trained_digits_cnn_has_the_same_test_accuracy_in_onnxruntime(tmp_path, capsys):
    """``deltaprop train examples/digits_cnn.toml`` (3 epochs), ``deltaprop export``,
    then the test set through ONNX Runtime: the same predictions, the same accuracy."""
    from deltaprop.cli import main
    from deltaprop.io.data import load_data
    from deltaprop.testing.export_check import session

    model, exported = tmp_path / "cnn.npz", tmp_path / "cnn.onnx"
    assert main(["train", str(EXAMPLES / "digits_cnn.toml"), "--epochs", "3",
                 "--no-progress", "--out", str(model)]) == 0
    assert main(["export", str(model), str(exported)]) == 0
    printed = capsys.readouterr().out
    net = deltaprop.load(model)
    data = load_data("digits").reshaped(net.input_shapes[0])
    x = data.x_test.astype("float32")
    ours = np.asarray(net.predict(x))
    theirs = session(exported).run(None, {"x": x})[0]
    labels = np.asarray(data.y_test)  # class indices
    accuracy = float(np.mean(ours.argmax(axis=1) == labels))
    assert f"test accuracy: {accuracy:.4f}" in printed
    assert float(np.mean(theirs.argmax(axis=1) == labels)) == accuracy
    assert np.array_equal(theirs.argmax(axis=1), ours.argmax(axis=1))
    assert accuracy > 0.9
    np.testing.assert_allclose(theirs, ours, rtol=0, atol=1e-5 * np.abs(ours).max())


# -- the conformance kit's export check ---------------------------------------------------------
class Tripler(deltaprop.Layer):
    name = "kit_tripler"
    examples = [{"config": {}, "input_shapes": [(3,)]}]

    def forward(self, inputs, *, train):
        return (inputs[0] * 3,), None

    def backward(self, cache, grad_outputs):
        return (grad_outputs[0] * 3,), {}


def test_the_kit_runs_the_export_check_when_the_layer_converts():
    from deltaprop.testing import check_conformance

    class Converts(Tripler):
        def to_onnx(self, ctx):
            return (ctx.op("Mul", [ctx.inputs[0], ctx.constant(3.0)]),)

    class ConvertsWrongly(Tripler):
        def to_onnx(self, ctx):
            return (ctx.op("Add", [ctx.inputs[0], ctx.inputs[0]]),)

    report = check_conformance(Converts, [(3,)], checks=["onnx_export"])
    assert report.outcomes == {"onnx_export": "ok"}
    report = check_conformance(Tripler, [(3,)], checks=["onnx_export"])
    assert report.outcomes == {"onnx_export": "skipped"}
    with pytest.raises(AssertionError, match=r"'onnx_export' failed.* differs from ONNX"):
        check_conformance(ConvertsWrongly, [(3,)], checks=["onnx_export"])
