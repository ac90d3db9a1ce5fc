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
from dataclasses import dataclass
from typing import Any, NoReturn

import numpy as np

from . import defaults
from .errors import ConfigError, DataError, DeltapropError, blamed_on
from .execution.allocator import retain_freed_memory
from .export import DEFAULT_OPSET, export_onnx
from .io.data import Dataset, describe, load_data
from .io.model import load, save
from .io.reference import describe_entry, entry_text, layers_markdown
from .io.spec import TRAIN_KEYS, load_spec, read_spec_file
from .network import Network
from .optimizer import Optimizer
from .registry import KINDS, create_optimizer, deltaprop_version, get_registry
from .storage.files import atomic_write, write_target
from .testing.kit import conformance_results, layers_of_distribution
from .testing.scaffold import create_plugin, deltaprop_install
from .training.checkpoint import TrainingInterrupted, checkpoint_path
from .training.distributed import run_on_ranks
from .training.gradient_flow import GradientFlow
from .training.loop import check_data
from .training.losses import OutputLosses
from .training.progress import show_progress
from .training.threads import limited_threads, plan_threads
from .visual.curves import save_learning_curves
from .visual.gradient_flow import save_gradient_flow
from .visual.graph_svg import save_network_svg

EXIT_ERROR = 2
PLURAL = {"loss": "losses", "onnx_converter": "ONNX converters"}
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


def _setting(option: Any, flag: str, train: dict[str, Any], key: str, default: int,
             low: int = 1) -> int:
    """An integer setting from its command-line option, else the spec's [train] table,
    else ``default``; a bad value is blamed on where it came from."""
    value, source = ((option, flag) if option is not None else
                     (train[key], f"[train] {key}") if key in train else (default, key))
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        kind = "positive" if low > 0 else "non-negative"
        raise ConfigError(f"{source} must be a {kind} integer, got {value!r}")
    return value


def check_class_count(data: Any) -> None:
    """The default network has one output per class: a label that is not a class index
    (1e9) would allocate gigabytes; name it instead."""
    for split in ("train", "test"):
        y = getattr(data, f"y_{split}")
        if y.ndim == 1 and y.size and int(y.max()) >= max(1024, len(data.x_train)):
            raise ConfigError(f"data {data.name!r}: label {int(y.max())} in y_{split} would "
                              f"make the default network {int(y.max()) + 1} classes wide; "
                              f"labels are class indices 0..C-1 (give a spec for more classes)")


def json_safe(value: Any) -> Any:
    """``value`` with NaN and infinities as null: the metrics file stays valid JSON."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
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
    try:
        write_target(path)  # a device node or a link to one is refused, not replaced
    except DeltapropError as exc:
        raise ConfigError(f"{option}: {exc}") from None


def cmd_train(args: argparse.Namespace) -> int:
    if args.distributed:  # every rank runs the same command; see deltaprop.distributed
        return run_on_ranks(_train, args, timeout=args.mpi_timeout, threads=args.threads)
    with limited_threads(plan_threads(1, args.threads)):
        return _train(args)


def _train(args: argparse.Namespace, distributed: Any = None) -> int:

    if args.resume and not args.checkpoint:
        raise ConfigError("--resume needs --checkpoint DIR (where the checkpoint is)")
    for path, option in ((args.out, "--out"), (args.metrics_json, "--metrics-json"),
                         (args.plot, "--plot"), (args.plot_gradients, "--plot-gradients")):
        check_writable(path, option)
    if args.plot and not args.plot.lower().endswith(PLOT_SUFFIXES):
        raise ConfigError(f"--plot {args.plot!r}: the learning curves are written as SVG; "
                          f"give a file name ending in .svg")
    setup = training_setup(args, args.lr)
    net, data, train, seed = setup.net, setup.data, setup.train, setup.seed
    optimizer, batch_size = setup.optimizer, setup.batch_size
    epochs = _setting(args.epochs, "--epochs", train, "epochs", defaults.EPOCHS)
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
    flow = GradientFlow(net) if args.plot_gradients else None
    history = net.fit(data.x_train, data.y_train, loss=loss, optimizer=optimizer,
                      loss_weights=train.get("loss_weights"),
                      epochs=epochs, batch_size=batch_size, seed=seed, validation=validation,
                      progress=False if args.no_progress else None,
                      detect_anomaly=args.detect_anomaly, distributed=distributed,
                      bptt=train.get("bptt"), hooks=[flow] if flow else [], **resumable)
    seconds = time.perf_counter() - start
    metrics: dict[str, Any] = {"loss": None}
    if len(data.x_test):
        metrics = net.evaluate(data.x_test, data.y_test, loss=loss, distributed=distributed,
                               loss_weights=train.get("loss_weights"))
    final_loss = history.loss[-1] if history.loss else float("nan")
    print(f"trained in {seconds:.1f} s; final train loss {final_loss:.4f}")
    if "accuracy" in metrics:
        print(f"test accuracy: {metrics['accuracy']:.4f}")
    print("test set is empty: no test figures" if metrics["loss"] is None
          else f"test loss: {metrics['loss']:.4f}")
    writer = distributed is None or distributed.is_root
    net.trained_on = setup.trained_on
    if args.out and writer:
        save(net, args.out)
        print(f"saved {args.out}")
    if args.plot and writer:
        save_learning_curves(history, args.plot,
                             title=f"{net.name} on {data.name}, {optimizer.name} "
                                   f"lr={optimizer.lr}, batch {batch_size}")
        print(f"learning curves written to {args.plot}")
    if flow is not None and writer:
        save_gradient_flow(flow, args.plot_gradients,
                           title=f"gradient norms of {net.name} on {data.name}, "
                                 f"{optimizer.name} lr={optimizer.lr}")
        print(f"gradient flow written to {args.plot_gradients}")
    if args.metrics_json and writer:
        report: dict[str, Any] = {
            "test_accuracy": metrics.get("accuracy"), "test_loss": metrics["loss"],
            "final_train_loss": final_loss, "epochs": epochs, "seconds": seconds}
        if memory is not None:
            report["memory"] = memory.as_dict()
        with atomic_write(args.metrics_json) as handle:
            handle.write(json.dumps(json_safe(report), indent=2, allow_nan=False).encode())
    return 0


@dataclass
class TrainingSetup:
    """What ``train`` and ``trace`` build from the command line before any step runs."""

    net: Network
    data: Dataset
    train: dict[str, Any]  # the spec's [train] table
    seed: int
    optimizer: Optimizer
    batch_size: int
    trained_on: dict[str, Any]  # what the model file records of the data


def training_setup(args: argparse.Namespace, lr: float | None) -> TrainingSetup:
    """The network (``args.spec``, or the default one for the data), the data reshaped
    to its input, the optimizer and batch size: checked, with one-line errors."""
    data = load_data(args.data)
    if args.spec:
        spec = read_spec_file(args.spec)
    else:
        check_class_count(data)
        spec = default_spec(int(np.prod(data.x_train.shape[1:])), data.n_classes)
    if not isinstance(spec.get("train") or {}, dict):
        raise ConfigError(f"spec file {str(args.spec)!r}: [train] must be a table")
    train = dict(spec.get("train") or {})
    seed = _setting(args.seed, "--seed", train, "seed", defaults.SEED, low=0)
    source = f"spec file {str(args.spec)!r}" if args.spec else None
    net = load_spec(spec, seed=seed, source=source)  # the file was read once, above
    trained_on = {"name": data.name, "source": data_source(args.data),
                  "sample_shape": [int(d) for d in data.x_train.shape[1:]]}
    data = fitted_data(data, net, f"pass the data {source or 'the default network'} is "
                                  f"for with --data")
    batch_size = _setting(args.batch_size, "--batch-size", train, "batch_size",
                          defaults.BATCH_SIZE)
    if lr is not None and not (np.isfinite(lr) and lr > 0):
        raise ConfigError(f"--lr must be a finite positive number, got {lr!r}")
    try:
        losses = OutputLosses(net, train.get("loss", defaults.LOSS),
                              train.get("loss_weights"))
        optimizer = build_optimizer(train, lr)
    except DeltapropError as exc:
        raise ConfigError(f"{source or 'the default network'}: [train] table: {exc}") from None
    if len(net.outputs) != 1:
        raise ConfigError(f"{source or 'the default network'}: network {net.name!r} has "
                          f"{len(net.outputs)} outputs ({', '.join(net.output_names)}), and "
                          f"data {data.name!r} has one target array; train a network of "
                          f"several outputs from Python, with one target per output")
    check_data(net, [data.x_test], data.y_test, losses, f"test data of {data.name!r}")
    net.configure(fuse=not args.no_fuse, recompute=args.recompute)
    return TrainingSetup(net, data, train, seed, optimizer, batch_size, trained_on)


def cmd_trace(args: argparse.Namespace) -> int:
    """One training step on the first batch, recorded node by node."""
    for path, option in ((args.out, "--out"), (args.json, "--json")):
        check_writable(path, option)
    setup = training_setup(args, None)
    net, data, train = setup.net, setup.data, setup.train
    x, y = data.x_train[:setup.batch_size], data.y_train[:setup.batch_size]
    with net.trace() as trace:
        net.train_step(x, y, loss=train.get("loss", defaults.LOSS),
                       optimizer=setup.optimizer, loss_weights=train.get("loss_weights"))
    print(f"network {net.name!r} on {data.name}, one {setup.optimizer.name} step on the "
          f"first {len(x)} samples")
    print(trace.table())
    if args.out:
        trace.save(args.out)
        print(f"trace page written to {args.out}")
    if args.json:
        trace.save_json(args.json)
        print(f"trace data written to {args.json}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    """The summary table of a network, and its picture as SVG."""
    check_writable(args.out, "--out")
    if args.network and args.network.lower().endswith(".npz"):
        net = load(args.network)
    elif args.network:
        net = load_spec(read_spec_file(args.network), source=f"spec file {args.network!r}")
    else:
        data = load_data(defaults.DATA)
        net = load_spec(default_spec(int(np.prod(data.x_train.shape[1:])), data.n_classes))
    net.summary()
    if args.out:
        save_network_svg(net, args.out, fused=args.fused)
        print(f"picture written to {args.out}")
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
    for key in sorted(metrics, key=lambda k: k != "accuracy"):  # as train prints them
        print(f"test {key}: {metrics[key]:.4f}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """A saved model as an ONNX file (docs/onnx.md); nothing is written on any error."""
    check_writable(args.output, "OUT.onnx")
    export_onnx(load(args.model), args.output, opset=args.opset)
    print(f"wrote {args.output} (ONNX opset {args.opset or DEFAULT_OPSET})")
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
            for check, message in r.failures.items():  # one line per failed check
                print(f"FAIL {r.layer} example {r.example} [{check}]: {message}")
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
    class): help that shows the defaults, and a bad command line in one line on stderr
    like every other error."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_ERROR, f"deltaprop: error: {message} (see `{self.prog} --help`)\n")


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
    train.add_argument("--plot-gradients", metavar="FILE.svg",
                       help="write each layer's gradient norm per epoch to this SVG file "
                            "(default: none)")
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

    trace = sub.add_parser("trace", help="record one training step node by node: values, "
                                         "deltas, gradients, rules (a table and a page)")
    trace.add_argument("spec", nargs="?", help="a network spec file (default: the default "
                                                "network of `deltaprop train`)")
    trace.add_argument("--data", default=defaults.DATA,
                       help="'digits' (bundled), a folder of IDX files, or an .npz file")
    trace.add_argument("--batch-size", type=int,
                       help="samples of the traced step, the first of the data (default: "
                            f"the spec's [train] batch_size, else {defaults.BATCH_SIZE})")
    trace.add_argument("--seed", type=int,
                       help="seed of the initial weights (default: the spec's [train] seed, "
                            f"else {defaults.SEED})")
    trace.add_argument("--out", default="trace.html", metavar="FILE.html",
                       help="write the trace page here (default trace.html; '' for none)")
    trace.add_argument("--json", metavar="FILE.json", help="also write the numbers as JSON")
    trace.add_argument("--no-fuse", action="store_true",
                       help="run the user graph as written (no fusion passes)")
    trace.add_argument("--recompute", action="store_true",
                       help="keep only segment boundaries; recompute the rest in backward")
    trace.set_defaults(func=cmd_trace)

    show = sub.add_parser("show", help="print a network's summary and draw it as SVG")
    show.add_argument("network", nargs="?", metavar="SPEC|MODEL",
                      help="a spec file (.toml, .json) or a saved model (.npz); default: "
                           "the default network of `deltaprop train`")
    show.add_argument("--out", metavar="FILE.svg", help="write the picture here")
    show.add_argument("--fused", action="store_true",
                      help="draw the plan as it runs (fused nodes as one box)")
    show.set_defaults(func=cmd_show)

    evaluate = sub.add_parser("evaluate", help="evaluate a saved model on test data")
    evaluate.add_argument("model", help="a model file written by deltaprop train --out")
    evaluate.add_argument("--data",
                          help="'digits', a folder of IDX files, or an .npz (default: the "
                               "data the model was trained on, else digits)")
    evaluate.set_defaults(func=cmd_evaluate)

    export = sub.add_parser("export", help="write a saved model as an ONNX file")
    export.add_argument("model", help="a model saved by `deltaprop train --out` (.npz)")
    export.add_argument("output", metavar="OUT.onnx",
                        help="where to write the ONNX model (replaced only on success)")
    export.add_argument("--opset", type=int,
                        help=f"ONNX opset to write (default {DEFAULT_OPSET})")
    export.set_defaults(func=cmd_export)

    layers = sub.add_parser("layers", help="list registered layers and their providers, or "
                                           "describe one (config keys, inputs, outputs)")
    layers.add_argument("name", nargs="?",
                        help="describe this layer (or loss, optimizer...): summary, inputs "
                             "and outputs of its examples, each config key's type, default "
                             "and meaning")
    layers.add_argument("--json", action="store_true",
                        help="JSON, with each config key's type, default and meaning")
    layers.add_argument("--kind", default="layer",
                        choices=[*KINDS, "all"],
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
    except Exception as exc:  # a plugin layer's own error: one line naming it
        culprit = blamed_on(exc)
        if culprit is None or args.debug:
            raise
        message = " ".join(str(exc).split()) or "(no message)"
        print(f"deltaprop: error: {message} ({type(exc).__name__} in {culprit}; "
              f"--debug shows the traceback)", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
