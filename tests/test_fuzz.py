"""A fuzzer over what a user hands deltaprop: spec files, data files, model files and
command lines (issue 20). Every run must end in success, or in exactly one line on
stderr and a non-zero exit: never a traceback, never longer than a time bound, and
nothing changed on disk but the outputs the command line names.

The normal suite runs a few examples per target (seeded, so a run is repeatable);
``DELTAPROP_FUZZ_EXAMPLES=N`` runs N per target with fresh randomness (``tox -e fuzz``).
"""

from __future__ import annotations

import io
import json
import os
import string
import time
import zipfile
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import deltaprop
from deltaprop.cli import main

EXAMPLES = int(os.environ.get("DELTAPROP_FUZZ_EXAMPLES", "0"))
SETTINGS = settings(max_examples=EXAMPLES or 12, deadline=None, database=None,
                    derandomize=not EXAMPLES, print_blob=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow, HealthCheck.data_too_large])
#: seconds one command may take on the small data below (a hang shows as a failure)
TIME_BOUND = 30.0
GOOD_SPEC = {
    "name": "fuzz", "outputs": ["out"], "inputs": {"x": [16]},
    "nodes": [{"name": "h", "layer": "dense", "inputs": ["x"], "units": 8},
              {"name": "a", "layer": "tanh", "inputs": ["h"]},
              {"name": "out", "layer": "dense", "inputs": ["a"], "units": 3}],
    "train": {"optimizer": "sgd", "lr": 0.1, "epochs": 1, "batch_size": 8},
}
OUTPUTS = ("out.npz", "metrics.json", "curves.svg")
COUNTS: dict[str, list[int]] = {}  # target -> [runs, failures refused in one line]


def good_data(path: Path, n: int = 24) -> None:
    rng = np.random.default_rng(0)
    x = rng.random((n, 16)).astype(np.float32)
    np.savez(path, x_train=x, y_train=rng.integers(0, 3, n), x_test=x[:6],
             y_test=rng.integers(0, 3, 6))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("fuzz")
    good_data(folder / "data.npz")
    (folder / "spec.json").write_text(json.dumps(GOOD_SPEC))
    net = deltaprop.load_spec(GOOD_SPEC, seed=0)
    deltaprop.save(net, folder / "model.npz")
    return folder


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in folder.rglob("*") if p.is_file()}


def run_cli(target: str, folder: Path, argv: list[str], outputs: tuple[str, ...] = OUTPUTS
            ) -> None:
    """Run ``deltaprop argv`` in this process in ``folder`` and check the promises."""
    for name in outputs:
        path = folder / name
        if path.is_file():
            path.unlink()
    before = snapshot(folder)
    out, err = io.StringIO(), io.StringIO()
    start = time.perf_counter()
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        with redirect_stdout(out), redirect_stderr(err):
            try:
                rc = main(argv)
            except SystemExit as exc:  # argparse
                rc = exc.code if isinstance(exc.code, int) else 2
    finally:
        os.chdir(cwd)
    seconds = time.perf_counter() - start
    stats = COUNTS.setdefault(target, [0, 0])
    stats[0] += 1
    assert seconds < TIME_BOUND, f"{argv} took {seconds:.1f} s"
    lines = [line for line in err.getvalue().splitlines()
             if not line.startswith("deltaprop: warning: ")]
    if rc != 0:
        stats[1] += 1
        assert len(lines) == 1 and lines[0].startswith("deltaprop: error: "), (
            f"{argv} exited {rc} with:\n{err.getvalue()}")
    else:
        assert not lines, f"{argv} succeeded but wrote:\n{err.getvalue()}"
    after = snapshot(folder)
    changed = {name for name in set(before) | set(after) if before.get(name) != after.get(name)}
    allowed = {name for name in changed
               if any(name == o or name.startswith(f"{o}/") for o in (*outputs, "ckpt"))}
    assert changed == allowed, f"{argv} changed {sorted(changed - allowed)}"
    if rc != 0:
        assert not any((folder / name).exists() for name in OUTPUTS), \
            f"{argv} failed but left an output"


def train_argv(spec: str = "spec.json", data: str = "data.npz") -> list[str]:
    return ["train", spec, "--data", data, "--epochs", "1", "--no-progress",
            "--out", "out.npz", "--metrics-json", "metrics.json"]


# -- values a user might write anywhere --------------------------------------------------
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 40),
    st.sampled_from([0, -1, 2**31, 2**63, 10**12]),
    st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.text(string.printable, max_size=12),
    st.sampled_from(["dense", "tanh", "relu", "conv2d", "x", "h", "out", "h:1", "same",
                     "sgd", "adam", "mse", "float16", "float64"]))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(string.ascii_letters, max_size=8),
                                                 inner, max_size=4)), max_leaves=8)
keys = st.sampled_from(["name", "layer", "inputs", "units", "shares", "outputs", "nodes",
                        "train", "dtype", "seed", "epochs", "batch_size", "optimizer", "lr",
                        "loss", "kernel_size", "padding", "shape", "x", "activation"])


@st.composite
def mutated_specs(draw: st.DrawFn) -> dict:
    """The good spec with a few keys replaced, removed or added, anywhere in it."""
    spec = json.loads(json.dumps(GOOD_SPEC))
    for _ in range(draw(st.integers(1, 3))):
        holder = draw(st.sampled_from(["top", "node", "train", "inputs"]))
        nodes = spec.get("nodes")
        if holder == "node" and isinstance(nodes, list) and nodes:
            target = nodes[draw(st.integers(0, len(nodes) - 1))]
        else:
            target = spec.get(holder, spec) if holder in ("train", "inputs") else spec
        if not isinstance(target, dict):
            continue
        key = draw(keys)
        if draw(st.booleans()) and key in target:
            del target[key]
        else:
            target[key] = draw(values)
    return spec


def toml_text(value: dict) -> str:
    """A spec as TOML (inline tables; values TOML cannot hold become strings)."""
    def literal(v: object) -> str:
        if v is None:
            return '"none"'
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v) if np.isfinite(v) else ("nan" if v != v else
                                                    ("inf" if v > 0 else "-inf"))
        if isinstance(v, list):
            return "[" + ", ".join(literal(i) for i in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{json.dumps(str(k))} = {literal(i)}"
                                   for k, i in v.items()) + "}"
        return json.dumps(str(v))
    return "\n".join(f"{json.dumps(str(k))} = {literal(v)}" for k, v in value.items()) + "\n"


@SETTINGS
@given(spec=mutated_specs(), as_toml=st.booleans())
def test_fuzz_spec_files(workspace, spec, as_toml):
    name = "fuzzed.toml" if as_toml else "fuzzed.json"
    text = toml_text(spec) if as_toml else json.dumps(spec)
    (workspace / name).write_text(text)
    try:
        run_cli("spec", workspace, train_argv(spec=name))
    finally:
        (workspace / name).unlink()


@SETTINGS
@given(raw=st.binary(max_size=200), suffix=st.sampled_from([".toml", ".json"]))
def test_fuzz_spec_bytes(workspace, raw, suffix):
    name = f"bytes{suffix}"
    (workspace / name).write_bytes(raw)
    try:
        run_cli("spec-bytes", workspace, train_argv(spec=name))
    finally:
        (workspace / name).unlink()


# -- data files --------------------------------------------------------------------------
dtypes = st.sampled_from(["float32", "float64", "int64", "uint8", "uint64", "int8", "bool",
                          "complex64", "float16", "U3", "object"])
shapes = st.lists(st.integers(0, 20), min_size=0, max_size=3).map(tuple)


@st.composite
def arrays(draw: st.DrawFn) -> np.ndarray:
    dtype = draw(dtypes)
    shape = draw(shapes)
    if dtype == "object":
        return np.array([None, {"a": 1}], dtype=object)
    size = int(np.prod(shape))
    raw = draw(st.lists(st.sampled_from([0, 1, 2, -1, 255, 1e9, np.nan, np.inf]),
                        min_size=size, max_size=size))
    with np.errstate(invalid="ignore", over="ignore"):
        return np.array(raw, dtype=np.float64).astype(dtype).reshape(shape)


@st.composite
def data_files(draw: st.DrawFn) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(draw(st.integers(0, 3)))
    n = draw(st.integers(0, 12))
    data = {"x_train": rng.random((n, 16)).astype(np.float32),
            "y_train": rng.integers(0, 3, n),
            "x_test": rng.random((4, 16)).astype(np.float32), "y_test": rng.integers(0, 3, 4)}
    for key in draw(st.lists(st.sampled_from(sorted(data)), max_size=2, unique=True)):
        if draw(st.booleans()):
            data[key] = draw(arrays())
        else:
            del data[key]
    return data


@SETTINGS
@given(data=data_files(), cut=st.one_of(st.none(), st.integers(0, 2000)))
def test_fuzz_data_files(workspace, data, cut):
    path = workspace / "fuzzed.npz"
    buffer = io.BytesIO()
    np.savez(buffer, **data)  # type: ignore[arg-type]  # (object arrays are pickled)
    raw = buffer.getvalue()
    path.write_bytes(raw if cut is None else raw[:cut])
    try:
        run_cli("data", workspace, train_argv(data="fuzzed.npz"))
    finally:
        path.unlink()


# -- model files -------------------------------------------------------------------------
@st.composite
def damaged_models(draw: st.DrawFn, good: bytes) -> bytes:
    raw = bytearray(good)
    how = draw(st.sampled_from(["flip", "cut", "meta"]))
    if how == "cut":
        return bytes(raw[:draw(st.integers(0, len(raw)))])
    if how == "flip":
        for _ in range(draw(st.integers(1, 8))):
            raw[draw(st.integers(0, len(raw) - 1))] = draw(st.integers(0, 255))
        return bytes(raw)
    with zipfile.ZipFile(io.BytesIO(good)) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    meta = json.loads(np.load(io.BytesIO(members["__deltaprop__.npy"])).tobytes())
    field = draw(st.sampled_from(["spec", "params", "format", "version", "providers"]))
    meta[field] = draw(values)
    blob = io.BytesIO()
    np.save(blob, np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))
    members["__deltaprop__.npy"] = blob.getvalue()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, payload in members.items():
            archive.writestr(name, payload)
    return out.getvalue()


@SETTINGS
@given(data=st.data())
def test_fuzz_model_files(workspace, data):
    good = (workspace / "model.npz").read_bytes()
    path = workspace / "fuzzed_model.npz"
    path.write_bytes(data.draw(damaged_models(good)))
    try:
        run_cli("model", workspace, ["evaluate", "fuzzed_model.npz", "--data", "data.npz"])
    finally:
        path.unlink()


# -- command lines -----------------------------------------------------------------------
option_values = {
    "--epochs": ["1", "0", "-1", "x", "2"], "--batch-size": ["1", "0", "-5", "1000000", "b"],
    "--lr": ["0.1", "nan", "-1", "inf", "1e30", "0"], "--seed": ["0", "-1", "abc", "7"],
    "--data": ["data.npz", "missing.npz", "spec.json", ".", "/dev/zero", "digits"],
    "--out": ["out.npz", "/dev/null", "nofolder/out.npz", "."],
    "--metrics-json": ["metrics.json", "/dev/null", "."],
    "--plot": ["curves.svg", "/dev/null"],
    "--checkpoint": ["ckpt", "ckpt/inner"], "--checkpoint-every": ["1", "0", "-3", "z"],
    "--mpi-timeout": ["1", "-1", "nan"],
}
flags = ["--resume", "--no-progress", "--no-fuse", "--recompute", "--detect-anomaly",
         "--memory-report", "--debug-not-an-option"]


@st.composite
def command_lines(draw: st.DrawFn) -> list[str]:
    argv = [draw(st.sampled_from(["train", "evaluate", "layers", "check", "plugins",
                                  "plugin", "nonsense"]))]
    if argv[0] == "train":
        argv.append(draw(st.sampled_from(["spec.json", "model.npz", "missing.toml", "."])))
        for option in draw(st.lists(st.sampled_from(sorted(option_values)), max_size=4,
                                    unique=True)):
            argv += [option, draw(st.sampled_from(option_values[option]))]
        argv += draw(st.lists(st.sampled_from(flags), max_size=2, unique=True))
        if "--epochs" not in argv:
            argv += ["--epochs", "1"]
        if "--data" not in argv:
            argv += ["--data", "data.npz"]
    elif argv[0] == "evaluate":
        argv += [draw(st.sampled_from(["model.npz", "spec.json", "missing.npz"])),
                 "--data", draw(st.sampled_from(["data.npz", "model.npz"]))]
    elif argv[0] == "layers":
        argv += draw(st.lists(st.sampled_from(["--json", "--kind", "loss", "bogus"]),
                              max_size=3))
    elif argv[0] == "check":
        argv += ["tanh", *draw(st.lists(st.sampled_from(["nonexistent", "--json",
                                                         "--distribution", "nobody"]),
                                         max_size=2))]
    elif argv[0] == "plugin":
        argv += draw(st.lists(st.sampled_from(["new", "numpy", "acme-x", "--dir", "ckpt"]),
                              max_size=3))
    return argv


@SETTINGS
@given(argv=command_lines())
def test_fuzz_command_lines(workspace, argv):
    if argv[0] == "train" and "--no-progress" not in argv:
        argv.append("--no-progress")
    for target in workspace.iterdir():  # folders an earlier example wrote
        if target.is_dir():
            for path in sorted(target.rglob("*"), reverse=True):
                path.unlink() if path.is_file() or path.is_symlink() else path.rmdir()
            target.rmdir()
    named = tuple(argv[i + 1] for i, a in enumerate(argv[:-1])
                  if a in ("--out", "--metrics-json", "--plot"))
    # `plugin new NAME [--dir DIR]` writes the folder it names
    scaffolded = tuple(argv[2:]) if argv[:2] == ["plugin", "new"] else ()
    run_cli("cli", workspace, argv, outputs=named + scaffolded + OUTPUTS)


def test_zz_fuzz_counts(capsys):
    """Print how many runs each target made and how many were refused (in one line)."""
    with capsys.disabled():
        for target, (runs, refused) in sorted(COUNTS.items()):
            print(f"\nfuzz {target}: {runs} runs, {refused} refused in one line, "
                  f"{runs - refused} succeeded")
