"""Every bad input in tests/bad_inputs/ is rejected clearly: a one-line error naming the
culprit, a non-zero exit, no output file left behind, and (except for failures that
only training can reveal) nothing run before the error.

The corpus is listed in tests/bad_inputs/cases.toml; its binary files are made by
tests/bad_inputs/make_corpus.py.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import deltaprop
from deltaprop.cli import main

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

CORPUS = Path(__file__).with_name("bad_inputs")
CASES = tomllib.loads((CORPUS / "cases.toml").read_text())["case"]


def corpus_digest() -> str:
    h = hashlib.sha256()
    for path in sorted(CORPUS.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            h.update(str(path.relative_to(CORPUS)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module", autouse=True)
def corpus_untouched():
    """No case may write into the corpus (a refused checkpoint, a half-written file)."""
    before = corpus_digest()
    yield
    assert corpus_digest() == before, "a bad-input case changed the corpus"


def command_line(case: dict, tmp: Path) -> list[str]:
    args = [a.format(corpus=CORPUS, tmp=tmp) for a in case["args"]]
    if args[0] == "train":
        if "--out" not in args:
            args += ["--out", str(tmp / "out.npz")]
        args += ["--metrics-json", str(tmp / "metrics.json"), "--no-progress"]
    return args


def prepare(case: dict, tmp: Path) -> None:
    missing = [n for n in case.get("requires", [])
               if n not in deltaprop.get_registry().names("layer")]
    if missing:
        pytest.skip(f"needs layer(s) {missing}, which no installed plugin provides")
    if "copy" in case:
        source, target = case["copy"]
        shutil.copytree(CORPUS / source, tmp / target)
    if "make_model" in case:
        net = deltaprop.load_spec(CORPUS / "good" / "mlp.toml", seed=0)
        deltaprop.save(net, case["make_model"].format(tmp=tmp))


def files_under(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_bad_input_fails_cleanly(case, tmp_path, capsys):
    prepare(case, tmp_path)
    before = files_under(tmp_path)
    rc = main(command_line(case, tmp_path))
    out, err = capsys.readouterr()
    assert rc != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert lines[0].startswith("deltaprop: error: "), lines[0]
    for culprit in case["expect"]:
        assert culprit in lines[0], f"{culprit!r} not named in: {lines[0]}"
    after = files_under(tmp_path)
    assert "out.npz" not in after and "metrics.json" not in after
    assert not [p for p in after if p.endswith(".tmp")], "a temporary file was left behind"
    if case.get("stage", "before") == "before":
        assert "trained in" not in out
        assert after == before, "a file was written although the input was refused"


SUBPROCESS_CASES = ["spec-unknown-layer", "model-object-array", "data-idx-wrong-magic",
                    "train-diverges-detect-anomaly"]


@pytest.mark.parametrize("case_id", SUBPROCESS_CASES)
def test_bad_input_through_the_real_command(case_id, tmp_path):
    """The installed ``deltaprop`` process: exit status 2 and one line on stderr."""
    case = next(c for c in CASES if c["id"] == case_id)
    prepare(case, tmp_path)
    done = subprocess.run([sys.executable, "-m", "deltaprop", *command_line(case, tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and all(c in lines[0] for c in case["expect"]), done.stderr
    assert not (tmp_path / "out.npz").exists()


def test_the_corpus_covers_every_kind_of_input():
    kinds = {c["id"].split("-")[0] for c in CASES}
    assert kinds == {"spec", "model", "data", "train", "evaluate"}
    assert len(CASES) >= 70
