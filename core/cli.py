"""The ``deltaprop`` command: train, evaluate, and list what the registry holds.

Errors are one line on stderr and a non-zero exit; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from .errors import ConfigError, DeltapropError

EXIT_ERROR = 2
PLURAL = {"layer": "layers", "loss": "losses", "optimizer": "optimizers",
          "initializer": "initializers"}


def default_spec(n_features: int, n_classes: int) -> dict[str, Any]:
    """The network ``deltaprop train`` uses without a spec: the textbook's dense/sigmoid
    network, with logits out for a fused softmax cross-entropy."""
    return {
        "name": "default",
        "inputs": {"x": [n_features]},
        "outputs": ["logits"],
        "nodes": [
            {"name": "hidden", "layer": "dense", "inputs": ["x"], "units": 64},
            {"name": "sigmoid", "layer": "sigmoid", "inputs": ["hidden"]},
            {"name": "logits", "layer": "dense", "inputs": ["sigmoid"], "units": n_classes},
        ],
        "train": {"loss": "softmax_cross_entropy", "optimizer": "adam", "lr": 0.01,
                  "epochs": 30, "batch_size": 32, "seed": 0},
    }


TRAIN_TABLE_KEYS = ("loss", "optimizer", "epochs", "batch_size", "seed", "validation_split")


def build_optimizer(train: dict[str, Any], lr: float | None) -> Any:
    """The optimizer of a ``[train]`` table: every key that is not a training setting is
    the optimizer's config (``lr``, ``momentum``...)."""
    from .registry import create_optimizer

    settings = {k: v for k, v in train.items() if k not in TRAIN_TABLE_KEYS}
    if lr is not None:
        settings["lr"] = lr
    name = train.get("optimizer", "adam")
    try:
        return create_optimizer(name, **settings)
    except ConfigError as exc:
        raise ConfigError(f"[train] table: {exc}") from None


def _positive(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"[train] {what} must be a positive integer, got {value!r}")
    return value


def check_writable(path: str | None) -> None:
    """Fail before training, not after it, when an output file cannot be written."""
    if path is None:
        return
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise OSError(2, "No such directory", folder)
    if not os.access(folder, os.W_OK):
        raise OSError(13, "Directory not writable", folder)


def cmd_train(args: argparse.Namespace) -> int:
    from .data import describe, load_data
    from .io import atomic_write, save
    from .registry import create_loss
    from .spec import load_spec, read_spec_file

    for target in (args.out, args.metrics_json):
        check_writable(target)
    data = load_data(args.data)
    if args.spec:
        spec = read_spec_file(args.spec)
    else:
        spec = default_spec(int(np.prod(data.x_train.shape[1:])), data.n_classes)
    train = dict(spec.get("train") or {})
    seed = args.seed if args.seed is not None else train.get("seed", 0)
    net = load_spec(spec if not args.spec else args.spec, seed=seed)
    data = data.reshaped(net.input_shapes[0])
    epochs = _positive(args.epochs if args.epochs is not None else train.get("epochs", 10),
                       "epochs")
    batch_size = _positive(args.batch_size if args.batch_size is not None
                           else train.get("batch_size", 32), "batch_size")
    loss = create_loss(train.get("loss", "softmax_cross_entropy"))
    optimizer = build_optimizer(train, args.lr)
    print(describe(data))
    print(f"network {net.name!r}: {len(net.steps)} nodes, {net.n_params} parameters; "
          f"{optimizer.name} lr={optimizer.lr}, {epochs} epochs, batch {batch_size}")
    start = time.perf_counter()
    history = net.fit(data.x_train, data.y_train, loss=loss, optimizer=optimizer,
                      epochs=epochs, batch_size=batch_size, seed=seed,
                      progress=False if args.no_progress else None)
    seconds = time.perf_counter() - start
    metrics = net.evaluate(data.x_test, data.y_test, loss=loss)
    final_loss = history.loss[-1] if history.loss else float("nan")
    print(f"trained in {seconds:.1f} s; final train loss {final_loss:.4f}")
    if "accuracy" in metrics:
        print(f"test accuracy: {metrics['accuracy']:.4f}")
    print(f"test loss: {metrics['loss']:.4f}")
    if args.out:
        save(net, args.out)
        print(f"saved {args.out}")
    if args.metrics_json:
        report = {"test_accuracy": metrics.get("accuracy"), "test_loss": metrics["loss"],
                  "final_train_loss": final_loss, "epochs": epochs, "seconds": seconds}
        with atomic_write(args.metrics_json) as handle:
            handle.write(json.dumps(report, indent=2).encode())
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .data import load_data
    from .io import load

    net = load(args.model)
    data = load_data(args.data).reshaped(net.input_shapes[0])
    loss = (net.train_config or {}).get("loss", "softmax_cross_entropy")
    metrics = net.evaluate(data.x_test, data.y_test, loss=loss)
    for key, value in metrics.items():
        print(f"test {key}: {value:.4f}")
    return 0


def cmd_layers(args: argparse.Namespace) -> int:
    from .registry import KINDS, get_registry

    registry = get_registry()
    kinds = list(KINDS) if args.kind == "all" else [args.kind]
    rows = []
    for kind in kinds:
        for name in registry.names(kind):
            p = registry.provider(kind, name)
            rows.append({"name": name, "kind": kind, "plugin": p.plugin,
                         "distribution": p.distribution, "version": p.version})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(_table(rows, ["name", "kind", "plugin", "distribution", "version"]))
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    from .registry import get_registry

    records = get_registry().plugins()
    if args.json:
        print(json.dumps([r.as_dict() for r in records], indent=2))
        return 0
    rows = []
    for r in records:
        detail = r.error or ", ".join(f"{len(v)} {PLURAL[k]}" for k, v in r.provides.items())
        rows.append({"plugin": r.name, "distribution": r.distribution, "version": r.version,
                     "status": r.status, "detail": detail})
    print(_table(rows, ["plugin", "distribution", "version", "status", "detail"]))
    return 0


def _table(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    cells = [list(columns)] + [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip()
                     for row in cells)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deltaprop", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command")

    train = sub.add_parser("train", help="train a network (default: dense/sigmoid on digits)")
    train.add_argument("spec", nargs="?", help="a network spec file (.toml or .json)")
    train.add_argument("--data", default="digits",
                       help="'digits' (bundled), a folder of IDX files, or an .npz file")
    train.add_argument("--epochs", type=int)
    train.add_argument("--batch-size", type=int)
    train.add_argument("--lr", type=float, help="learning rate (overrides the spec)")
    train.add_argument("--seed", type=int)
    train.add_argument("--out", help="save the trained model to this .npz")
    train.add_argument("--metrics-json", help="write the final metrics to this JSON file")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(func=cmd_train)

    evaluate = sub.add_parser("evaluate", help="evaluate a saved model on test data")
    evaluate.add_argument("model")
    evaluate.add_argument("--data", default="digits")
    evaluate.set_defaults(func=cmd_evaluate)

    layers = sub.add_parser("layers", help="list registered layers and their providers")
    layers.add_argument("--json", action="store_true")
    layers.add_argument("--kind", default="layer",
                        choices=["layer", "loss", "optimizer", "initializer", "all"])
    layers.set_defaults(func=cmd_layers)

    plugins = sub.add_parser("plugins", help="list plugins, loaded and failed, with why")
    plugins.add_argument("--json", action="store_true")
    plugins.set_defaults(func=cmd_plugins)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    if args.version:
        from . import __version__

        print(f"deltaprop {__version__}")
        return 0
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_ERROR
    try:
        return int(args.func(args))
    except DeltapropError as exc:
        if args.debug:
            raise
        message = " ".join(str(exc).split())
        print(f"deltaprop: error: {message}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as exc:  # a file the user named could not be read or written
        if args.debug:
            raise
        name = f" {exc.filename!r}" if exc.filename else ""
        print(f"deltaprop: error:{name} {exc.strerror or exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("deltaprop: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
