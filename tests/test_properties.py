"""Properties checked on random inputs (hypothesis).

- Random DAGs of the registry's layers (fan-out, multi-input, multi-output nodes,
  shared layers) pass a whole-network float64 gradient check. The layers come from
  every registered layer's ``examples``, so a plugin's layers join automatically:
  a node's inputs are either existing tensors of the right shape (fan-out) or are
  adapted from one (flatten, dense, reshape); a layer whose ``sample_inputs`` is
  special (integer ids, a restricted domain) gets network inputs of its own.
- to_spec then load_spec gives the same network: same spec, same outputs.
- save then load gives identical weights and outputs.
- Random bytes and random mutations of valid spec and model files never raise
  anything but deltaprop's own errors (and what loads also runs).
"""

from __future__ import annotations

import io
import json
import math
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import deltaprop
from deltaprop.config import construct
from deltaprop.errors import DeltapropError
from deltaprop.layer import Layer
from deltaprop.storage.npz import META
from deltaprop.testing import check_network_gradients, make_layer

REGISTRY = deltaprop.get_registry()
# values per sample of an example's input; DELTAPROP_PROPERTY_MAX_INPUT=80 takes in the
# larger examples too (every conv and pooling layer), at a higher cost
MAX_INPUT_SIZE = int(os.environ.get("DELTAPROP_PROPERTY_MAX_INPUT", "32"))
MAX_LAYER_PARAMS = 200   # parameters of one example layer
MAX_NETWORK_PARAMS = 700  # keeps the finite differences of a network quick
BATCH = 2
SETTINGS = {"deadline": None, "suppress_health_check": list(HealthCheck), "derandomize": True}
COUNTS: dict[str, int] = {}


def count(what: str) -> None:
    COUNTS[what] = COUNTS.get(what, 0) + 1


@dataclass(frozen=True)
class Candidate:
    """One example of a registered layer, usable as a node of a random network."""

    cls: type[Layer]
    config: dict[str, Any]
    input_shapes: tuple[tuple[int, ...], ...]
    own_inputs: bool  # fed from network inputs of its own (special sample_inputs)

    def __repr__(self) -> str:
        return f"{self.cls.name}{self.config}{list(self.input_shapes)}"


def _special_sampler(cls: type[Layer]) -> bool:
    return getattr(cls.sample_inputs, "__func__", None) is not Layer.sample_inputs.__func__


def _usable(cls: type[Layer], example: dict[str, Any]) -> Candidate | None:
    """An example is usable when it is small, deterministic, float in and out, and gives
    the same outputs in training and inference mode (a gradient check compares them)."""
    shapes = tuple(tuple(int(d) for d in s) for s in example["input_shapes"])
    if any(math.prod(s) > MAX_INPUT_SIZE for s in shapes):
        return None
    config = {**example["config"], "dtype": "float64"}
    try:
        layer = make_layer(cls, shapes, **config)
        xs = cls.sample_inputs(np.random.default_rng(0), shapes, BATCH, "float64")
        a, _ = layer.forward(tuple(xs), train=True)
        b, _ = layer.forward(tuple(xs), train=False)
        c, _ = layer.forward(tuple(xs), train=False)
    except Exception:
        return None
    if sum(p.size for p in layer.params.values()) > MAX_LAYER_PARAMS:
        return None
    if not all(np.issubdtype(o.dtype, np.floating) for o in a):
        return None
    if not all(np.array_equal(p, q) and np.array_equal(q, r)
               for p, q, r in zip(a, b, c, strict=True)):
        return None
    floats = all(np.issubdtype(np.asarray(x).dtype, np.floating) for x in xs)
    return Candidate(cls, dict(example["config"]), shapes,
                     own_inputs=_special_sampler(cls) or not floats)


def candidates() -> list[Candidate]:
    found = []
    for name in REGISTRY.names("layer"):
        cls = REGISTRY.get("layer", name)
        for example in cls.examples:
            cand = _usable(cls, example)
            if cand is not None:
                found.append(cand)
    return found


CANDIDATES = candidates()
SHARED_ONLY = [c for c in CANDIDATES if not c.own_inputs]


@dataclass
class RandomNetwork:
    net: deltaprop.Network
    samplers: list[Any]  # one per network input: rng -> array of BATCH samples

    def inputs(self, seed: int) -> list[np.ndarray]:
        rng = np.random.default_rng(seed)
        return [sample(rng) for sample in self.samplers]


def _create(name: str, **config: Any) -> Layer:
    return deltaprop.create(name, dtype="float64", **config)


def build_random_network(data: st.DataObject, max_nodes: int = 6) -> RandomNetwork:
    """Draw a network node by node from the candidates (see the module docstring)."""
    inputs: list[Any] = []
    samplers: list[Any] = []
    pool: list[Any] = []      # float tensors a node may consume
    used: set[int] = set()    # ids of tensors some node consumed
    layers: list[Layer] = []  # layers that may be applied again (shared)
    n_params = 0

    def new_input(shape: tuple[int, ...], sampler: Any = None, dtype: str = "float64") -> Any:
        t = deltaprop.Input(shape, dtype=dtype)
        inputs.append(t)
        samplers.append(sampler or (lambda rng, s=shape: rng.standard_normal((BATCH, *s))))
        return t

    def tensor_of(shape: tuple[int, ...]) -> Any:
        nonlocal n_params
        exact = [t for t in pool if t.shape == shape]
        if exact and data.draw(st.integers(0, 3), label="reuse") > 0:
            return data.draw(st.sampled_from(exact), label="fan-out source")
        source = data.draw(st.sampled_from(pool), label="adapted source")
        used.add(id(source))
        if source.shape == shape:
            return source
        flat = _create("flatten")(source) if len(source.shape) > 1 else source
        size = math.prod(shape)
        y = _create("dense", units=size)(flat)
        n_params += (flat.shape[-1] + 1) * size
        return _create("reshape", target_shape=list(shape))(y) if len(shape) > 1 else y

    for _ in range(data.draw(st.integers(1, 2), label="inputs")):
        pool.append(new_input(data.draw(st.sampled_from([(3,), (4,), (2, 3)]), label="shape")))
    for _ in range(data.draw(st.integers(1, max_nodes), label="nodes")):
        if n_params > MAX_NETWORK_PARAMS:
            break
        shareable = [layer for layer in layers if layer.input_shapes]
        if shareable and data.draw(st.integers(0, 4), label="share") == 0:
            layer = data.draw(st.sampled_from(shareable), label="shared layer")
            args = [tensor_of(s) for s in layer.input_shapes]
        else:
            cand = data.draw(st.sampled_from(CANDIDATES), label="layer")
            layer = construct(cand.cls, {**cand.config, "dtype": "float64"})
            if cand.own_inputs:
                samples = cand.cls.sample_inputs(np.random.default_rng(0), cand.input_shapes,
                                                 BATCH, "float64")
                args = []
                for i, (shape, x) in enumerate(zip(cand.input_shapes, samples, strict=True)):
                    def sample(rng, cls=cand.cls, shapes=cand.input_shapes, i=i):
                        return cls.sample_inputs(rng, shapes, BATCH, "float64")[i]
                    args.append(new_input(shape, sample, dtype=str(np.asarray(x).dtype)))
            else:
                args = [tensor_of(s) for s in cand.input_shapes]
                layers.append(layer)
        used.update(id(a) for a in args)
        outs = layer(*args)
        n_params += sum(p.size for p in layer.params.values())
        pool.extend(outs if isinstance(outs, tuple) else [outs])
    leaves = [t for t in pool if id(t) not in used]
    extra = data.draw(st.lists(st.sampled_from(pool), max_size=2, unique_by=id),
                      label="inner outputs")
    outputs = leaves + [t for t in extra if id(t) not in {id(u) for u in leaves}]
    return RandomNetwork(deltaprop.Network(inputs, outputs), samplers)


def features(net: deltaprop.Network) -> list[str]:
    """Which of the structures the property is about this network has."""
    uses: dict[int, int] = {}
    consumers: dict[int, int] = {}
    for step in net.steps:
        uses[id(step.layer)] = uses.get(id(step.layer), 0) + 1
        for s in step.in_slots:
            consumers[s] = consumers.get(s, 0) + 1
    found = []
    if any(n > 1 for n in uses.values()):
        found.append("a shared layer")
    if any(len(step.out_slots) > 1 for step in net.steps):
        found.append("a multi-output node")
    if any(len(step.in_slots) > 1 for step in net.steps):
        found.append("a multi-input node")
    if any(n > 1 for n in consumers.values()):
        found.append("fan-out")
    if len(net.outputs) > 1:
        found.append("several outputs")
    return found


def test_the_registry_offers_candidates():
    names = {c.cls.name for c in CANDIDATES}
    assert {"dense", "add", "concat", "split", "tanh", "reshape"} <= names
    assert any(c.cls.n_inputs != 1 for c in CANDIDATES)  # merging layers


@settings(max_examples=80, **SETTINGS)
@given(data=st.data())
def test_random_networks_pass_a_whole_network_gradient_check(data):
    rand = build_random_network(data)
    count("gradient-checked networks")
    for feature in features(rand.net):
        count(f"gradient-checked networks with {feature}")
    report = check_network_gradients(rand.net, rand.inputs(seed=1))
    assert report.checked
    assert report.max_rel_error < 1e-4


def _outputs(net: deltaprop.Network, inputs: list[np.ndarray]) -> list[np.ndarray]:
    return net.forward([x.copy() for x in inputs], train=False)


@settings(max_examples=40, **SETTINGS)
@given(data=st.data())
def test_spec_round_trip_gives_the_same_network(data):
    rand = build_random_network(data)
    count("spec round trips")
    spec = json.loads(json.dumps(rand.net.to_spec()))
    again = deltaprop.load_spec(spec)
    assert again.to_spec() == spec
    assert list(again.params) == list(rand.net.params)
    for key, value in rand.net.params.items():
        again.params[key][...] = value
    xs = rand.inputs(seed=2)
    for a, b in zip(_outputs(rand.net, xs), _outputs(again, xs), strict=True):
        assert a.dtype == b.dtype and np.array_equal(a, b)


@settings(max_examples=30, **SETTINGS)
@given(data=st.data())
def test_save_load_round_trip_gives_identical_outputs(data, tmp_path_factory):
    rand = build_random_network(data)
    count("save/load round trips")
    path = tmp_path_factory.mktemp("model") / "model.npz"
    deltaprop.save(rand.net, path)
    loaded = deltaprop.load(path)
    assert list(loaded.params) == list(rand.net.params)
    for key, value in rand.net.params.items():
        assert loaded.params[key].dtype == value.dtype
        assert loaded.params[key].tobytes() == value.tobytes()
    xs = rand.inputs(seed=3)
    for a, b in zip(_outputs(rand.net, xs), _outputs(loaded, xs), strict=True):
        assert np.array_equal(a, b)


# -- hostile files -------------------------------------------------------------------------

CORPUS = Path(__file__).with_name("bad_inputs")
VALID_SPECS = {
    "mlp.toml": (CORPUS / "good" / "mlp.toml").read_text(),
    "graph.json": json.dumps({
        "name": "graph", "inputs": {"x": [6], "z": {"shape": [2, 3], "dtype": "float64"}},
        "outputs": ["out", "parts:1"],
        "nodes": [
            {"name": "parts", "layer": "split", "inputs": ["x"], "sections": [2, 4]},
            {"name": "h", "layer": "dense", "inputs": ["parts:0"], "units": 6},
            {"name": "again", "shares": "h", "inputs": ["parts:0"]},
            {"name": "sum", "layer": "add", "inputs": ["h", "again", "x"]},
            {"name": "grid", "layer": "reshape", "inputs": ["sum"], "target_shape": [2, 3]},
            {"name": "both", "layer": "concat", "inputs": ["grid", "z"], "axis": 1},
            {"name": "flat", "layer": "flatten", "inputs": ["both"]},
            {"name": "act", "layer": "softmax", "inputs": ["flat"]},
            {"name": "out", "layer": "dense", "inputs": ["act"], "units": 3}],
        "train": {"loss": "mse", "optimizer": "sgd", "lr": 0.1}}, indent=1),
}

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 300), st.sampled_from([0, 10**15, 2**63]),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
    st.sampled_from(["dense", "add", "split", "x", "h", "parts:1", "out", "float64",
                     "int64", "sgd", "mse", "nope:9"]))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=6)


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    found = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            found += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found += _paths(v, (*prefix, i))
    return found


def mutate_structure(data: st.DataObject, doc: Any) -> Any:
    """Replace, delete or add entries at random places of a JSON document."""
    doc = json.loads(json.dumps(doc))
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        path = data.draw(st.sampled_from(_paths(doc)), label="path")
        if not path:
            continue
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        action = data.draw(st.sampled_from(["replace", "delete", "add"]), label="action")
        if action == "replace":
            parent[path[-1]] = data.draw(json_values, label="value")
        elif action == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[data.draw(st.text(max_size=6), label="key")] = data.draw(json_values)
        else:
            parent.append(data.draw(json_values, label="value"))
    return doc


def mutate_bytes(data: st.DataObject, raw: bytes) -> bytes:
    """Flip, insert, delete or truncate bytes."""
    buf = bytearray(raw)
    for _ in range(data.draw(st.integers(1, 4), label="byte edits")):
        if not buf:
            break
        i = data.draw(st.integers(0, len(buf) - 1), label="offset")
        action = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        if action == "flip":
            buf[i] ^= data.draw(st.integers(1, 255), label="xor")
        elif action == "insert":
            buf[i:i] = data.draw(st.binary(min_size=1, max_size=8), label="inserted")
        elif action == "delete":
            del buf[i:i + data.draw(st.integers(1, 16), label="deleted")]
        else:
            del buf[i:]
    return bytes(buf)


def exercise(net: Any) -> None:
    """What loads must also run: inference on zeros of the input shapes."""
    if any(math.prod(t.shape) > 10**5 for t in net.inputs):
        return
    net.forward([np.zeros((2, *t.shape), dtype=t.dtype) for t in net.inputs])


def must_only_raise_own_errors(action) -> str:
    try:
        exercise(action())
    except DeltapropError:
        return "refused"
    return "accepted"


@settings(max_examples=300, **SETTINGS)
@given(data=st.data())
def test_mutated_spec_files_raise_only_deltaprop_errors(data, tmp_path_factory):
    name = data.draw(st.sampled_from(sorted(VALID_SPECS)), label="spec")
    text = VALID_SPECS[name].encode()
    folder = tmp_path_factory.mktemp("spec")
    if data.draw(st.booleans(), label="structural") and name.endswith(".json"):
        raw, path = json.dumps(mutate_structure(data, json.loads(text))).encode(), "s.json"
    else:
        raw, path = mutate_bytes(data, text), "s" + Path(name).suffix
    (folder / path).write_bytes(raw)
    outcome = must_only_raise_own_errors(lambda: deltaprop.load_spec(folder / path))
    count(f"mutated spec files {outcome}")


@settings(max_examples=150, **SETTINGS)
@given(raw=st.binary(max_size=400), suffix=st.sampled_from([".json", ".toml", ".npz"]))
def test_random_bytes_raise_only_deltaprop_errors(raw, suffix, tmp_path_factory):
    path = tmp_path_factory.mktemp("random") / f"file{suffix}"
    path.write_bytes(raw)
    load = deltaprop.load if suffix == ".npz" else deltaprop.load_spec
    count(f"random byte files {must_only_raise_own_errors(lambda: load(path))}")


def _valid_model_bytes() -> bytes:
    from deltaprop.storage.model_format import model_arrays, model_meta

    net = deltaprop.load_spec(json.loads(VALID_SPECS["graph.json"]), seed=0)
    buffer = io.BytesIO()
    blob = np.frombuffer(json.dumps(model_meta(net)).encode(), dtype=np.uint8)
    np.savez(buffer, **{META: blob}, **model_arrays(net))
    return buffer.getvalue()


VALID_MODEL = _valid_model_bytes()


def _rebuild(data: st.DataObject, raw: bytes) -> bytes:
    """Change the model's metadata or arrays (dtype, shape, presence) and re-zip it."""
    with np.load(io.BytesIO(raw), allow_pickle=False) as archive:
        meta = json.loads(archive[META].tobytes().decode())
        arrays = {k: archive[k] for k in archive.files if k != META}
    what = data.draw(st.sampled_from(["meta", "array"]), label="part")
    if what == "meta":
        meta = mutate_structure(data, meta)
    else:
        key = data.draw(st.sampled_from(sorted(arrays)), label="array")
        change = data.draw(st.sampled_from(["dtype", "shape", "drop", "nan", "int"]))
        if change == "dtype":
            arrays[key] = arrays[key].astype(np.float64)
        elif change == "shape":
            arrays[key] = arrays[key].reshape(-1)[: max(arrays[key].size - 1, 1)]
        elif change == "drop":
            del arrays[key]
        elif change == "nan" and arrays[key].dtype.kind == "f":
            arrays[key] = np.full_like(arrays[key], np.nan)
        else:
            arrays[key] = arrays[key].astype(np.int32)
    buffer = io.BytesIO()
    blob = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(buffer, **{META: blob}, **arrays)
    return buffer.getvalue()


@settings(max_examples=300, **SETTINGS)
@given(data=st.data())
def test_mutated_model_files_raise_only_deltaprop_errors(data, tmp_path_factory):
    if data.draw(st.booleans(), label="structural"):
        raw = _rebuild(data, VALID_MODEL)
    else:
        raw = mutate_bytes(data, VALID_MODEL)
    path = tmp_path_factory.mktemp("model") / "model.npz"
    path.write_bytes(raw)
    count(f"mutated model files {must_only_raise_own_errors(lambda: deltaprop.load(path))}")


def test_the_valid_files_are_valid(tmp_path):
    """The mutations start from files that load (else every mutation is trivially refused)."""
    for name, text in VALID_SPECS.items():
        (tmp_path / name).write_text(text)
        exercise(deltaprop.load_spec(tmp_path / name))
    (tmp_path / "m.npz").write_bytes(VALID_MODEL)
    assert zipfile.is_zipfile(tmp_path / "m.npz")
    exercise(deltaprop.load(tmp_path / "m.npz"))


@pytest.fixture(scope="module", autouse=True)
def report_counts():
    yield
    if COUNTS:
        print("\nproperty runs: " + ", ".join(f"{k}: {v}" for k, v in sorted(COUNTS.items())))


# -- hostile checkpoints and data files ------------------------------------------------------

def _checkpoint_problem():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((24, 4)).astype(np.float32)
    y = rng.integers(0, 3, 24)
    net = deltaprop.Sequential([deltaprop.create("dense", units=5), deltaprop.create("tanh"),
                                deltaprop.create("dense", units=3)], 4, seed=0)
    return net, x, y


def _valid_checkpoint_bytes() -> bytes:
    """A mid-epoch checkpoint (sample order, optimizer moments): SIGTERM after step 3."""
    import os
    import signal
    import tempfile

    from deltaprop.checkpoint import TrainingInterrupted, checkpoint_path

    net, x, y = _checkpoint_problem()
    opt = deltaprop.create_optimizer("adam")
    original = opt.step

    def step(params, grads):
        original(params, grads)
        if opt.t == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    opt.step = step
    with tempfile.TemporaryDirectory() as folder:
        with pytest.raises(TrainingInterrupted):
            net.fit(x, y, optimizer=opt, epochs=1, batch_size=5, seed=0, progress=False,
                    checkpoint=folder)
        return checkpoint_path(folder).read_bytes()


VALID_CHECKPOINT = _valid_checkpoint_bytes()


@settings(max_examples=120, **SETTINGS)
@given(data=st.data())
def test_mutated_checkpoints_raise_only_deltaprop_errors_on_resume(data, tmp_path_factory):
    if data.draw(st.booleans(), label="structural"):
        raw = _rebuild(data, VALID_CHECKPOINT)
    else:
        raw = mutate_bytes(data, VALID_CHECKPOINT)
    folder = tmp_path_factory.mktemp("ckpt")
    (folder / "checkpoint.npz").write_bytes(raw)
    net, x, y = _checkpoint_problem()

    def resume():
        net.fit(x, y, epochs=2, batch_size=5, seed=0, progress=False, checkpoint=folder,
                resume=True)
        return net

    count(f"mutated checkpoints {must_only_raise_own_errors(resume)}")


def _idx(array: np.ndarray) -> bytes:
    return bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape) + array.astype(np.uint8).tobytes()


@settings(max_examples=150, **SETTINGS)
@given(data=st.data())
def test_mutated_data_files_raise_only_deltaprop_errors(data, tmp_path_factory):
    import gzip

    from deltaprop.data import load_data, read_idx

    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (6, 4, 4))
    labels = rng.integers(0, 10, 6)
    folder = tmp_path_factory.mktemp("data")
    kind = data.draw(st.sampled_from(["idx", "idx.gz", "npz"]), label="kind")
    if kind == "npz":
        buffer = io.BytesIO()
        np.savez(buffer, x_train=images.astype(np.float32), y_train=labels,
                 x_test=images[:2].astype(np.float32), y_test=labels[:2])
        path = folder / "data.npz"
        path.write_bytes(mutate_bytes(data, buffer.getvalue()))
        action = lambda: load_data(path)  # noqa: E731
    else:
        raw = mutate_bytes(data, _idx(data.draw(st.sampled_from([images, labels]))))
        path = folder / ("file.gz" if kind == "idx.gz" else "file")
        if kind == "idx.gz":
            raw = mutate_bytes(data, gzip.compress(raw))
        path.write_bytes(raw)
        action = lambda: read_idx(path)  # noqa: E731
    try:
        action()
        outcome = "accepted"
    except DeltapropError:
        outcome = "refused"
    count(f"mutated data files {outcome}")
