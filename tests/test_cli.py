"""The deltaprop command, run as a user runs it: a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import deltaprop.testing as deltaprop_testing

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def deltaprop(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "deltaprop", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=300)


def test_default_train_reaches_the_target_and_writes_metrics_and_model(tmp_path):
    metrics = tmp_path / "metrics.json"
    model = tmp_path / "model.npz"
    result = deltaprop("train", "--metrics-json", str(metrics), "--out", str(model))
    assert result.returncode == 0, result.stderr
    assert "test accuracy" in result.stdout
    report = json.loads(metrics.read_text())
    assert report["test_accuracy"] >= 0.95
    assert report["epochs"] == 30 and report["seconds"] < 60
    assert set(report) >= {"test_accuracy", "final_train_loss", "epochs", "seconds"}
    evaluated = deltaprop("evaluate", str(model))
    assert evaluated.returncode == 0, evaluated.stderr
    assert f"test accuracy: {report['test_accuracy']:.4f}" in evaluated.stdout


def test_train_a_spec_with_overrides():
    result = deltaprop("train", str(EXAMPLES / "mlp.toml"), "--epochs", "2", "--lr", "0.01",
                       "--batch-size", "64", "--seed", "3")
    assert result.returncode == 0, result.stderr
    assert "2 epochs, batch 64" in result.stdout and "lr=0.01" in result.stdout


def test_layers_and_plugins_listings():
    layers = deltaprop("layers", "--json")
    rows = {r["name"]: r for r in json.loads(layers.stdout)}
    assert rows["dense"]["distribution"] == "deltaprop"
    assert rows["dense"]["plugin"] == "dense"
    table = deltaprop("layers").stdout
    assert "dense" in table and "distribution" in table
    plugins = json.loads(deltaprop("plugins", "--json").stdout)
    assert {p["name"] for p in plugins} >= {"dense", "activations", "structural", "losses",
                                           "optimizers", "initializers"}
    assert all(p["status"] == "loaded" for p in plugins if p["distribution"] == "deltaprop")


def test_check_runs_the_conformance_kit_on_installed_layers():
    result = deltaprop("check", "dense", "lstm", "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert {r["layer"] for r in rows} == {"dense", "lstm"}
    checks = len(deltaprop_testing.CHECKS)
    assert all(r["ok"] and r["checks"] == checks and r["max_rel_error"] < 1e-6 for r in rows)
    table = deltaprop("check", "--distribution", "deltaprop", "relu")
    assert table.returncode == 0, table.stderr
    assert "relu" in table.stdout and "passed, 0 failed" in table.stdout
    unknown = deltaprop("check", "dens")
    assert unknown.returncode == 2 and "did you mean 'dense'" in unknown.stderr
    nothing = deltaprop("check", "--distribution", "no-such-layers")
    assert nothing.returncode == 2 and "registers no layers" in nothing.stderr


@pytest.mark.parametrize(("content", "message"), [
    ('outputs = ["y"]\n[inputs]\nx = [64]\n[[nodes]]\nname = "y"\nlayer = "dens"\n'
     'inputs = ["x"]\nunits = 10\n', "did you mean 'dense'"),
    ("outputs = [", "invalid TOML"),
])
def test_errors_are_one_line_with_nonzero_exit_and_no_output_file(tmp_path, content, message):
    spec = tmp_path / "bad.toml"
    spec.write_text(content)
    out = tmp_path / "model.npz"
    result = deltaprop("train", str(spec), "--out", str(out))
    assert result.returncode != 0
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr
    assert not out.exists()
    debug = deltaprop("--debug", "train", str(spec))
    assert "Traceback" in debug.stderr


def test_missing_data_and_model_files(tmp_path):
    result = deltaprop("train", "--data", str(tmp_path / "nope.npz"))
    assert result.returncode != 0 and "no such file" in result.stderr
    result = deltaprop("evaluate", str(tmp_path / "nope.npz"))
    assert result.returncode != 0 and "nope.npz" in result.stderr
