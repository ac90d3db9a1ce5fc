"""The README's Python snippet runs as written and reaches the command line's accuracy;
fit takes optimizer settings with a named optimizer; Python and the CLI share defaults."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import numpy as np
import pytest

import deltaprop as dp
from deltaprop import cli, defaults

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_snippet() -> str:
    text = README.read_text(encoding="utf-8")
    found = re.search(r"```python\n(import deltaprop as dp\nfrom deltaprop\.data.*?)```",
                      text, re.S)
    assert found, "the README's Python API snippet (it loads data) is missing"
    return found.group(1)


@pytest.mark.slow
def test_the_readme_snippet_runs_and_reaches_the_cli_accuracy(tmp_path, monkeypatch,
                                                              capsys):
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(readme_snippet(), "README.md", "exec"), scope)
    printed = capsys.readouterr().out
    assert "accuracy" in printed
    data, net = scope["data"], scope["net"]
    assert (tmp_path / "model.npz").is_file()
    assert isinstance(net, dp.Network)
    # the CLI's default network reaches about 0.98 on the digits
    assert net.evaluate(data.x_test, data.y_test)["accuracy"] > 0.95


def toy(seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((40, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    with dp.tensor.seeded(seed):
        inp = dp.Input(4)
        net = dp.Network(inp, dp.create("dense", units=2)(inp))
    return net, x, y


def test_fit_takes_lr_and_optimizer_settings_with_a_named_optimizer():
    net, x, y = toy()
    net.fit(x, y, optimizer="sgd", lr=0.5, momentum=0.9, epochs=1, progress=False)
    from deltaprop.training.losses import components

    (made,) = [v for k, v in components(net).items() if k[0] == "optimizer"]
    assert (made.name, made.lr, made.momentum) == ("sgd", 0.5, 0.9)
    # the same settings again: the same optimizer, its state kept
    net.fit(x, y, optimizer="sgd", lr=0.5, momentum=0.9, epochs=1, progress=False)
    assert [v for k, v in components(net).items() if k[0] == "optimizer"] == [made]


def test_lr_differs_from_the_optimizer_default():
    fast, x, y = toy()
    slow, _, _ = toy()
    fast.fit(x, y, lr=0.1, epochs=1, progress=False)
    slow.fit(x, y, epochs=1, progress=False)
    assert not np.allclose(fast.params[next(iter(fast.params))],
                           slow.params[next(iter(slow.params))])


def test_settings_with_an_optimizer_object_or_unknown_keys_are_refused():
    net, x, y = toy()
    with pytest.raises(dp.ConfigError, match="optimizer object"):
        net.fit(x, y, optimizer=dp.create_optimizer("adam"), lr=0.1, progress=False)
    with pytest.raises(dp.ConfigError, match=r"fit: optimizer 'adam': unknown config key.*"
                                             r"'epoch'"):
        net.fit(x, y, epoch=3, progress=False)


def test_python_and_the_cli_share_their_defaults():
    fit = inspect.signature(dp.Network.fit).parameters
    assert fit["loss"].default == defaults.LOSS
    assert fit["optimizer"].default == defaults.OPTIMIZER
    assert fit["epochs"].default == defaults.EPOCHS
    assert fit["batch_size"].default == defaults.BATCH_SIZE
    assert fit["seed"].default == defaults.SEED
    assert cli.default_spec(64, 10)["train"] == defaults.DEFAULT_NETWORK_TRAIN
    train = cli.make_parser().parse_args(["train"])
    assert train.data == defaults.DATA
