"""The small things a newcomer meets first: every option explains itself and shows its
default, a closed pipe ends the command quietly, --plot refuses what it cannot write,
messages count in good English, a Dataset prints short, docstrings tell the truth."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest

import deltaprop as dp
from deltaprop import cli
from deltaprop.io.data import load_digits

ROOT = Path(__file__).resolve().parent.parent


def run(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "deltaprop", *args], capture_output=True,
                          text=True, timeout=300, **kwargs)


def parsers(parser: argparse.ArgumentParser, name: str = "deltaprop"):
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from parsers(sub, f"{name} {sub_name}")


def char_lm_parser() -> argparse.ArgumentParser:
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        import char_lm
    finally:
        sys.path.pop(0)
    captured = {}

    class Stop(Exception):
        pass

    def grab(self, args=None, namespace=None):
        captured["parser"] = self
        raise Stop

    real = argparse.ArgumentParser.parse_args
    argparse.ArgumentParser.parse_args = grab
    try:
        with pytest.raises(Stop):
            char_lm.main([])
    finally:
        argparse.ArgumentParser.parse_args = real
    return captured["parser"]


def all_parsers():
    yield from parsers(cli.make_parser())
    yield "examples/char_lm.py", char_lm_parser()


@pytest.mark.parametrize(("name", "parser"), list(all_parsers()),
                         ids=lambda v: v if isinstance(v, str) else "")
def test_every_option_has_help_and_shows_its_default(name, parser):
    text = parser.format_help()
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        what = f"{name} {'/'.join(action.option_strings) or action.dest}"
        assert action.help, f"{what} has no help"
        if action.default not in (None, False):
            shown = parser._get_formatter()._get_help_string(action)
            assert "default" in shown, f"{what} does not show its default"
    assert "(default: None)" not in text


def test_a_closed_pipe_ends_quietly():
    proc = subprocess.Popen([sys.executable, "-m", "deltaprop", "layers", "--kind", "all"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before anything is written
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert err == b""


def test_check_piped_into_head_exits_0_quietly():
    result = subprocess.run(
        ["bash", "-c", f"set -o pipefail; {sys.executable} -m deltaprop check --no-progress "
                       f"| head -1"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.startswith("layer")


@pytest.mark.parametrize("name", ["c.png", "c.pdf", "curves"])
def test_plot_refuses_a_suffix_it_cannot_write(tmp_path, name):
    result = run("train", "--plot", str(tmp_path / name), "--epochs", "1")
    assert result.returncode == 2
    assert "written as SVG" in result.stderr and ".svg" in result.stderr
    assert "test accuracy" not in result.stdout  # refused before training
    assert not (tmp_path / name).exists()


def test_messages_count_in_good_english():
    assert cli.plural(1, "epoch") == "1 epoch" and cli.plural(2, "epoch") == "2 epochs"
    assert cli.plural(1, "loss") == "1 loss" and cli.plural(3, "loss") == "3 losses"
    result = run("train", "--epochs", "1", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "1 epoch," in result.stdout and "1 epochs" not in result.stdout
    table = run("plugins").stdout
    assert re.search(r"\b1 layers\b", table) is None
    assert re.search(r"\b1 layer\b", table)


def test_a_dataset_prints_short():
    text = repr(dp.data.load_data("digits"))
    assert text == "<Dataset 'digits': 1438 train / 359 test samples of shape (64,), float32>"


def test_load_digits_docstring_tells_the_split():
    doc = " ".join(load_digits.__doc__.split())
    train, test = map(int, re.search(r"(\d+) train and (\d+) test", doc).groups())
    data = load_digits()
    assert (train, test) == (len(data.x_train), len(data.x_test))
