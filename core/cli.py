"""The ``deltaprop`` command: train, evaluate, and list what the registry holds.

Errors are one line on stderr and a non-zero exit; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import defaults
from .errors import ConfigError, DataError, DeltapropError
from .execution.allocator import retain_freed_memory
from .io.data import describe, load_data
from .io.model import load, save
from .io.reference import describe_entry, entry_text, layers_markdown
from .io.spec import TRAIN_KEYS, load_spec, read_spec_file
from .registry import KINDS, create_optimizer, deltaprop_version, get_registry
from .storage.npz import atomic_write
from .testing.kit import conformance_results, layers_of_distribution
from .testing.scaffold import create_plugin, deltaprop_install
from .training.checkpoint import TrainingInterrupted, checkpoint_path
from .training.distributed import run_on_ranks
from .training.loop import check_data
from .training.losses import OutputLosses
from .training.progress import show_progress
from .training.threads import limited_threads, plan_threads
from .visual.curves import save_learning_curves

EXIT_ERROR = 2
PLURAL = {"loss": "losses"}
#: the suffixes --plot can write (the curves are SVG)
PLOT_SUFFIXES = (".svg",)


def plural(n: int, word: str) -> str:
    """``1 epoch``, ``2 epochs``; words of the CLI's messages only."""
    return f"{n} {word if n == 1 else PLURAL.get(word, word + 's')}"


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
        "train": dict(defaults.DEFAULT_NETWORK_TRAIN),
    }


def build_optimizer(train: dict[str, Any], lr: float | None) -> Any:
    """The optimizer of a ``[train]`` table: every key that is not a training setting is
    the optimizer's config (``lr``, ``momentum``...)."""

    settings = {k: v for k, v in train.items() if k not in TRAIN_KEYS}
    if lr is not None:
        settings["lr"] = lr
    return create_optimizer(train.get("optimizer", defaults.OPTIMIZER), **settings)


def _positive(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"[train] {what} must be a positive integer, got {value!r}")
    return value


def _positive_arg(text: str) -> int:
    """argparse type: a positive integer."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def check_writable(path: str | None, option: str) -> None:
    """Refuse an output path whose folder is missing before training spends any time."""
    if not path:
        return
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ConfigError(f"{option} {path!r}: folder {folder!r} does not exist")
    if os.path.isdir(path):
        raise ConfigError(f"{option} {path!r} is a folder, not a file")
    if not os.access(folder, os.W_OK):
        raise ConfigError(f"{option} {path!r}: folder {folder!r} is not writable")


def cmd_train(args: argparse.Namespace) -> int:
    if args.distributed:  # every rank runs the same command; see deltaprop.distributed
        return run_on_ranks(_train, args, timeout=args.mpi_timeout, threads=args.threads)
    with limited_threads(plan_threads(1, args.threads)):
        return _train(args)


def _train(args: argparse.Namespace, distributed: Any = None) -> int:

    if args.resume and not args.checkpoint:
        raise ConfigError("--resume needs --checkpoint DIR (where the checkpoint is)")
    for path, option in ((args.out, "--out"), (args.metrics_json, "--metrics-json"),
                         (args.plot, "--plot")):
        check_writable(path, option)
    if args.plot and not args.plot.lower().endswith(PLOT_SUFFIXES):
        raise ConfigError(f"--plot {args.plot!r}: the learning curves are written as SVG; "
                          f"give a file name ending in .svg")
    data = load_data(args.data)
    if args.spec:
        spec = read_spec_file(args.spec)
    else:
        spec = default_spec(int(np.prod(data.x_train.shape[1:])), data.n_classes)
    train = dict(spec.get("train") or {})
    seed = args.seed if args.seed is not None else train.get("seed", defaults.SEED)
    source = f"spec file {str(args.spec)!r}" if args.spec else None
    net = load_spec(spec, seed=seed, source=source)  # the file was read once, above
    trained_on = {"name": data.name, "source": data_source(args.data),
                  "sample_shape": [int(d) for d in data.x_train.shape[1:]]}
    data = fitted_data(data, net, f"pass the data {source or 'the default network'} is "
                                  f"for with --data")
    epochs = _positive(args.epochs if args.epochs is not None
                       else train.get("epochs", defaults.EPOCHS), "epochs")
    batch_size = _positive(args.batch_size if args.batch_size is not None
                           else train.get("batch_size", defaults.BATCH_SIZE), "batch_size")
    try:
        losses = OutputLosses(net, train.get("loss", defaults.LOSS),
                              train.get("loss_weights"))
        optimizer = build_optimizer(train, args.lr)
    except DeltapropError as exc:
        raise ConfigError(f"{source or 'the default network'}: [train] table: {exc}") from None
    if len(net.outputs) != 1:
        raise ConfigError(f"{source or 'the default network'}: network {net.name!r} has "
                          f"{len(net.outputs)} outputs ({', '.join(net.output_names)}), and "
                          f"data {data.name!r} has one target array; train a network of "
                          f"several outputs from Python, with one target per output")
    check_data(net, [data.x_test], data.y_test, losses, f"test data of {data.name!r}")
    net.configure(fuse=not args.no_fuse, recompute=args.recompute)
    print(describe(data))
    print(f"network {net.name!r}: {plural(len(net.steps), 'node')}, "
          f"{plural(net.n_params, 'parameter')}; {optimizer.name} lr={optimizer.lr}, "
          f"{plural(epochs, 'epoch')}, batch {batch_size}")
    memory = None
    if args.memory_report:
        memory = net.memory_report(batch=batch_size)
        print(memory)
    start = time.perf_counter()
    resumable: dict[str, Any] = {}
    if args.checkpoint:
        resumable = {"checkpoint": args.checkpoint, "resume": args.resume,
                     "checkpoint_every": args.checkpoint_every}
        if args.resume and not checkpoint_path(args.checkpoint).is_file():
            print(f"no checkpoint in {args.checkpoint!r} yet; starting from the beginning")
        elif args.resume:
            print(f"resuming from {str(checkpoint_path(args.checkpoint))!r}")
    # --plot's held-out curves are those of the test set, evaluated after every epoch
    validation = (data.x_test, data.y_test) if args.plot else None
    loss = train.get("loss", defaults.LOSS)
    history = net.fit(data.x_train, data.y_train, loss=loss, optimizer=optimizer,
                      loss_weights=train.get("loss_weights"),
                      epochs=epochs, batch_size=batch_size, seed=seed, validation=validation,
                      progress=False if args.no_progress else None,
                      detect_anomaly=args.detect_anomaly, distributed=distributed,
                      bptt=train.get("bptt"), **resumable)
    seconds = time.perf_counter() - start
    metrics = net.evaluate(data.x_test, data.y_test, loss=loss, distributed=distributed,
                           loss_weights=train.get("loss_weights"))
    final_loss = history.loss[-1] if history.loss else float("nan")
    print(f"trained in {seconds:.1f} s; final train loss {final_loss:.4f}")
    if "accuracy" in metrics:
        print(f"test accuracy: {metrics['accuracy']:.4f}")
    print(f"test loss: {metrics['loss']:.4f}")
    writer = distributed is None or distributed.is_root
    net.trained_on = trained_on
    if args.out and writer:
        save(net, args.out)
        print(f"saved {args.out}")
    if args.plot and writer:
        save_learning_curves(history, args.plot,
                             title=f"{net.name} on {data.name}, {optimizer.name} "
                                   f"lr={optimizer.lr}, batch {batch_size}")
        print(f"learning curves written to {args.plot}")
    if args.metrics_json and writer:
        report: dict[str, Any] = {
            "test_accuracy": metrics.get("accuracy"), "test_loss": metrics["loss"],
            "final_train_loss": final_loss, "epochs": epochs, "seconds": seconds}
        if memory is not None:
            report["memory"] = memory.as_dict()
        with atomic_write(args.metrics_json) as handle:
            handle.write(json.dumps(report, indent=2).encode())
    return 0


def data_source(source: str) -> str:
    """``--data`` as a model file keeps it: an existing path made absolute."""
    return os.path.abspath(source) if os.path.exists(source) else source


def fitted_data(data: Any, net: Any, hint: str) -> Any:
    """The data reshaped to the network's input, or a DataError that ends with ``hint``."""
    try:
        return data.reshaped(net.input_shapes[0])
    except DataError as exc:
        raise DataError(f"{exc}; {hint}") from None


def cmd_evaluate(args: argparse.Namespace) -> int:

    net = load(args.model)
    known = net.trained_on
    source = args.data or known.get("source") or defaults.DATA
    if not args.data and known.get("source"):
        print(f"data: {source} (what {args.model} was trained on; --data to change)")
    hint = "pass the data it was made for with --data"
    if known.get("name"):
        hint = (f"it was trained on {known['name']!r} (samples of shape "
                f"{tuple(known.get('sample_shape', ()))}, --data "
                f"{known.get('source', known['name'])}): {hint}")
    data = fitted_data(load_data(source), net, f"model {args.model!r}: {hint}")
    loss = (net.train_config or {}).get("loss", defaults.LOSS)
    metrics = net.evaluate(data.x_test, data.y_test, loss=loss)
    for key, value in metrics.items():
        print(f"test {key}: {value:.4f}")
    return 0


def cmd_layers(args: argparse.Namespace) -> int:

    registry = get_registry()
    if args.markdown:
        print(layers_markdown(registry, args.distribution or "deltaprop"), end="")
        return 0
    kinds = list(KINDS) if args.kind == "all" else [args.kind]
    if args.name:
        kind = next((k for k in [*kinds, *KINDS] if args.name in registry.names(k)), kinds[0])
        entry = describe_entry(registry, kind, args.name)  # unknown: lists close names
        print(json.dumps(entry, indent=2) if args.json else entry_text(entry))
        return 0
    rows = [describe_entry(registry, kind, name) for kind in kinds
            for name in registry.names(kind)
            if not args.distribution
            or registry.provider(kind, name).distribution == args.distribution]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:  # one line each: the first sentence
        row["summary"] = row["summary"].split(". ")[0].rstrip(".")
    print(_table(rows, ["name", "kind", "plugin", "distribution", "version", "summary"]))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """The conformance kit (float64 gradient check, and the rules the executor relies
    on) over installed layers: what a layer package's tests run, with no test to write.
    Exit status 1 when a case fails."""

    registry = get_registry()
    if args.distribution:
        classes = layers_of_distribution(args.distribution)
        if not classes:
            raise ConfigError(f"distribution {args.distribution!r} registers no layers "
                              f"(see `deltaprop layers`)")
        if args.layers:
            wanted = set(args.layers)
            classes = [c for c in classes if c.name in wanted]
    else:
        classes = [registry.get("layer", name)
                   for name in (args.layers or registry.names("layer"))]
    results = conformance_results(classes,
                                  progress=show_progress(False if args.no_progress else None))
    if args.json:
        print(json.dumps([r.as_dict() for r in results], indent=2))
    else:
        installed = set(registry.names("layer"))
        rows = [{"layer": r.layer, "example": "-" if r.example is None else r.example,
                 "distribution": registry.provider("layer", r.layer).distribution
                 if r.layer in installed else "",
                 "result": "ok" if r.ok else "FAIL", "checks": r.checks,
                 "max rel grad error": "" if r.max_rel_error is None
                 else f"{r.max_rel_error:.1e}", "s": f"{r.seconds:.2f}"} for r in results]
        print(_table(rows, ["layer", "example", "distribution", "result", "checks",
                            "max rel grad error", "s"]))
        for r in results:
            if not r.ok:
                print(f"FAIL {r.layer} example {r.example}: {r.detail}")
        failed = sum(not r.ok for r in results)
        print(f"{plural(len(results), 'case')}: {len(results) - failed} passed, "
              f"{failed} failed")
    return 1 if any(not r.ok for r in results) else 0


def cmd_plugins(args: argparse.Namespace) -> int:

    records = get_registry().plugins()
    if args.json:
        print(json.dumps([r.as_dict() for r in records], indent=2))
        return 0
    rows = []
    for r in records:
        detail = r.error or ", ".join(plural(len(v), k) for k, v in r.provides.items())
        rows.append({"plugin": r.name, "distribution": r.distribution, "version": r.version,
                     "status": r.status, "ms": f"{1000 * r.load_seconds:.1f}",
                     "detail": detail})
    print(_table(rows, ["plugin", "distribution", "version", "status", "ms", "detail"]))
    registry = get_registry()
    print(f"discovery took {1000 * registry.discovery_seconds:.1f} ms (entry-point scan "
          f"{1000 * registry.scan_seconds:.1f} ms)")
    return 0


def cmd_plugin_new(args: argparse.Namespace) -> int:

    target = args.dir if args.dir else args.name
    written = create_plugin(args.name, target)
    print(f"created plugin package {args.name!r} in {target}:")
    for path in written:
        print(f"  {path}")
    print(f"next: cd {target} && pip install -e '.[test]' && pytest (in a fresh "
          f"environment first: {deltaprop_install()})")
    return 0


def _table(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    cells = [list(columns)] + [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip()
                     for row in cells)


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default unless it has none (None, or off for a switch) or its
    help already says what happens without it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default in (None, False) or "default" in text:
            return text
        return super()._get_help_string(action) or text


class _Parser(argparse.ArgumentParser):
    """The command's parser, and its sub-commands' (argparse makes those of the parent's
    class): help that shows the defaults."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)


def make_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="deltaprop", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    parser.set_defaults(func=None)
    sub = parser.add_subparsers(dest="command")

    train = sub.add_parser("train", help="train a network (default: dense/sigmoid on digits)")
    train.add_argument("spec", nargs="?",
                       help="a network spec file, .toml or .json (default: a dense/sigmoid "
                            "network sized to the data)")
    train.add_argument("--data", default=defaults.DATA,
                       help="'digits' (bundled), a folder of IDX files, or an .npz file")
    train.add_argument("--epochs", type=int,
                       help="passes over the training data (default: the spec's [train] "
                            f"epochs, else {defaults.EPOCHS}; the default network: "
                            f"{defaults.DEFAULT_NETWORK_TRAIN['epochs']})")
    train.add_argument("--batch-size", type=int,
                       help="samples per step (default: the spec's [train] batch_size, else "
                            f"{defaults.BATCH_SIZE}; per rank with --distributed)")
    train.add_argument("--lr", type=float,
                       help="learning rate (default: the spec's [train] lr, else the "
                            f"optimizer's own; the default network: "
                            f"{defaults.DEFAULT_NETWORK_TRAIN['lr']})")
    train.add_argument("--seed", type=int,
                       help="seed of the initial weights and the shuffle (default: the "
                            f"spec's [train] seed, else {defaults.SEED})")
    train.add_argument("--out", metavar="FILE.npz",
                       help="save the trained model to this .npz (default: not saved)")
    train.add_argument("--metrics-json", metavar="FILE.json",
                       help="write the final metrics to this JSON file (default: none)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument("--plot", metavar="FILE.svg",
                       help="write the learning curves (loss, and test loss and accuracy "
                            "after every epoch) to this SVG file (default: none)")
    train.add_argument("--memory-report", action="store_true",
                       help="list per node the bytes cached for backward and why, and the peak")
    train.add_argument("--no-fuse", action="store_true",
                       help="run the user graph as written (no fusion passes)")
    train.add_argument("--recompute", action="store_true",
                       help="keep only segment boundaries; recompute the rest in backward")
    train.add_argument("--checkpoint", metavar="DIR",
                       help="save the training state here every epoch and on SIGINT/SIGTERM")
    train.add_argument("--resume", action="store_true",
                       help="continue from the checkpoint in --checkpoint DIR")
    train.add_argument("--checkpoint-every", type=int, metavar="N",
                       help="also save the checkpoint every N batches (default: only after "
                            "each epoch)")
    train.add_argument("--detect-anomaly", action="store_true",
                       help="name the first node whose output or gradient became non-finite")
    train.add_argument("--distributed", action="store_true",
                       help="data-parallel over MPI: run as mpiexec -n N deltaprop train ... "
                            "--distributed (--batch-size is then per rank)")
    train.add_argument("--threads", type=_positive_arg, metavar="N",
                       help="BLAS/OpenMP threads per process (default: the libraries' own "
                            "in one process; with --distributed, the cores shared out among "
                            "the ranks, unless OMP_NUM_THREADS, OPENBLAS_NUM_THREADS or "
                            "MKL_NUM_THREADS is set)")
    train.add_argument("--mpi-timeout", type=float, metavar="SECONDS",
                       help="with --distributed: stop with an error when another rank does not "
                            "join a collective within this time (default 300)")
    train.set_defaults(func=cmd_train)

    evaluate = sub.add_parser("evaluate", help="evaluate a saved model on test data")
    evaluate.add_argument("model", help="a model file written by deltaprop train --out")
    evaluate.add_argument("--data",
                          help="'digits', a folder of IDX files, or an .npz (default: the "
                               "data the model was trained on, else digits)")
    evaluate.set_defaults(func=cmd_evaluate)

    layers = sub.add_parser("layers", help="list registered layers and their providers, or "
                                           "describe one (config keys, inputs, outputs)")
    layers.add_argument("name", nargs="?",
                        help="describe this layer (or loss, optimizer...): summary, inputs "
                             "and outputs of its examples, each config key's type, default "
                             "and meaning")
    layers.add_argument("--json", action="store_true",
                        help="JSON, with each config key's type, default and meaning")
    layers.add_argument("--kind", default="layer",
                        choices=["layer", "loss", "optimizer", "initializer", "all"],
                        help="which kind of registered component to list")
    layers.add_argument("--distribution", metavar="NAME",
                        help="only what this distribution registers (with --markdown: "
                             "default deltaprop)")
    layers.add_argument("--markdown", action="store_true",
                        help="the layer reference page in Markdown (deltaprop layers "
                             "--markdown > docs/layers.md)")
    layers.set_defaults(func=cmd_layers)

    check = sub.add_parser("check", help="run the conformance kit (gradient check and "
                                         "protocol rules) on installed layers")
    check.add_argument("layers", nargs="*", help="layer names (default: every layer)")
    check.add_argument("--distribution", metavar="NAME",
                       help="only the layers this distribution registers (default: all)")
    check.add_argument("--json", action="store_true", help="the results as JSON")
    check.add_argument("--no-progress", action="store_true", help="no progress bar")
    check.set_defaults(func=cmd_check)

    plugins = sub.add_parser("plugins", help="list plugins, loaded and failed, with why")
    plugins.add_argument("--json", action="store_true", help="the records as JSON")
    plugins.set_defaults(func=cmd_plugins)

    plugin = sub.add_parser("plugin", help="tools for plugin authors")
    plugin_sub = plugin.add_subparsers(dest="plugin_command", required=True)
    new = plugin_sub.add_parser("new", help="write a ready-to-test layer plugin package")
    new.add_argument("name", help="distribution name, e.g. acme-layers")
    new.add_argument("--dir", help="folder to write (default: ./NAME; must be empty)")
    new.set_defaults(func=cmd_plugin_new)
    return parser


def _warn_in_one_line(message: Warning | str, category: type[Warning], filename: str,
                      lineno: int, file: Any = None, line: str | None = None) -> None:
    """Warnings (a plugin skipped, and why) as one line each, without source lines."""
    print(f"deltaprop: warning: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    retain_freed_memory()  # this process trains: every step reuses the last one's pages
    with warnings.catch_warnings():
        warnings.showwarning = _warn_in_one_line
        try:
            return _main(argv)
        except BrokenPipeError:  # `deltaprop check | head -1`: the reader has had enough
            # later writes (the interpreter's last flush) go nowhere, quietly
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
            return 0


def _main(argv: Sequence[str] | None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    if args.version:
        print(f"deltaprop {deltaprop_version()}")
        return 0
    if args.func is None:
        parser.print_help()
        return EXIT_ERROR
    try:
        return int(args.func(args))
    except DeltapropError as exc:
        if args.debug:
            raise
        message = " ".join(str(exc).split())
        if isinstance(exc, TrainingInterrupted):  # stopped after saving: 128 + signal
            print(f"deltaprop: {message}", file=sys.stderr)
            return 128 + int(exc.signum)
        print(f"deltaprop: error: {message}", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:
        raise  # stdout's reader went away: not an error of a file the user named
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
