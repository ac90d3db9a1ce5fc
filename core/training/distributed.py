"""Data-parallel training over MPI, the Horovod model.

Every rank holds the whole network. Rank 0's initial weights and optimizer state are
broadcast to the others; each epoch every rank draws the same seeded permutation, cuts
each global batch into one disjoint shard per rank, computes its shard's gradients,
and one fused allreduce over a flat buffer of all gradients (plus the loss and the
sample count, so uneven last batches weigh right) gives every rank the same averaged
gradient. The optimizer then takes the same step everywhere, so the replicas never
drift apart. Only rank 0 writes (progress, files).

Every collective is non-blocking and polled against a deadline: a rank that dies or
stalls makes the others raise :class:`DistributedError` naming the collective and the
step, instead of waiting forever.

    mpiexec -n 4 deltaprop train spec.toml --distributed
    net.fit(x, y, distributed=Distributed())        # from Python, under mpiexec

mpi4py is optional (``pip install 'deltaprop[mpi]'``); it is imported only here.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import pickle
import secrets
import signal
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from ..errors import DataError, TrainingError
from ..graph.graph import Graph
from ..optimizer import Optimizer
from .checkpoint import Checkpointer, TrainingInterrupted
from .step import Reducer
from .threads import ThreadPlan, limited_threads, plan_threads

#: seconds a collective may wait for the other ranks before giving up
TIMEOUT_ENV = "DELTAPROP_MPI_TIMEOUT"
DEFAULT_TIMEOUT = 300.0


def default_timeout() -> float:
    """``DELTAPROP_MPI_TIMEOUT`` (seconds), read when a job starts, else 300."""
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not (value > 0 and math.isfinite(value)):
        raise DataError(f"{TIMEOUT_ENV}={raw!r}: expected a positive number of seconds")
    return value


class DistributedError(TrainingError):
    """A collective failed or timed out: another rank died, stalled, or disagrees."""


def mpi_available() -> bool:
    """True when mpi4py imports (and so an MPI library was found)."""
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return False
    return True


def _mpi() -> Any:
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise DistributedError("distributed training needs mpi4py and an MPI library: "
                               "pip install 'deltaprop[mpi]' (mpi4py and the mpich wheel), "
                               f"then run under mpiexec ({exc})") from None
    return MPI


class Distributed:
    """One process's view of an MPI job: rank, size, and timed collectives.

    ``timeout`` bounds every collective in seconds. With ``abort_on_uncaught`` (the
    default) an exception that nobody catches on any rank (a timeout included) ends the
    whole job with MPI_Abort after its traceback is printed: the other ranks would
    otherwise wait, and a rank stuck outside MPI would keep the job alive for ever.
    ``stats`` counts the calls, the
    seconds spent inside them (waiting for slower ranks included), the bytes reduced,
    and the seconds of local forward and backward in ``train_step``.
    """

    def __init__(self, comm: Any = None, *, timeout: float | None = None,
                 abort_on_uncaught: bool = True) -> None:
        MPI = _mpi()
        self._MPI = MPI
        self.comm = comm if comm is not None else MPI.COMM_WORLD
        self.rank: int = self.comm.Get_rank()
        self.size: int = self.comm.Get_size()
        self.timeout = default_timeout() if timeout is None else float(timeout)
        if not (self.timeout > 0 and math.isfinite(self.timeout)):
            raise DataError(f"MPI timeout must be positive seconds, got {timeout!r}")
        self.stats = {"allreduce_calls": 0, "allreduce_seconds": 0.0, "allreduce_bytes": 0,
                      "broadcast_calls": 0, "compute_seconds": 0.0}
        if abort_on_uncaught and self.size > 1:
            _abort_on_uncaught(self.comm)

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def ranks_on_this_machine(self) -> int:
        """How many ranks of this job share this rank's machine (its memory)."""
        local = self.comm.Split_type(self._MPI.COMM_TYPE_SHARED)
        try:
            return int(local.Get_size())
        finally:
            local.Free()

    def thread_plan(self, requested: int | None = None) -> ThreadPlan:
        """The BLAS/OpenMP threads this rank should run so that the ranks on its machine
        do not oversubscribe its cores (``limited_threads`` applies it)."""
        return plan_threads(self.ranks_on_this_machine(), requested)

    def __repr__(self) -> str:
        return f"<Distributed rank {self.rank} of {self.size}, timeout {self.timeout:g} s>"

    # -- timed collectives ------------------------------------------------------------------
    def wait(self, request: Any, what: str, spin: float = 0.005, nap: float = 1e-3) -> None:
        """Complete ``request`` or raise once the deadline passes. Polls for ``spin``
        seconds yielding the core between tests (a step's allreduce usually lands by
        then), then sleeps ``nap`` seconds between tests until the deadline."""
        MPI = self._MPI
        start = time.monotonic()
        deadline = start + self.timeout
        try:
            while not request.Test():
                now = time.monotonic()
                if now > deadline:
                    raise DistributedError(
                        f"rank {self.rank} of {self.size}: {what} did not complete within "
                        f"{self.timeout:g} s; another rank has died or stalled (see its "
                        f"output above), so this rank stops instead of waiting forever")
                if now - start < spin:
                    os.sched_yield()
                else:
                    time.sleep(nap)
        except MPI.Exception as exc:
            raise DistributedError(f"rank {self.rank} of {self.size}: {what} failed in MPI: "
                                   f"{exc}") from None

    def allreduce_sum(self, buffer: np.ndarray, what: str = "allreduce") -> np.ndarray:
        """Sum ``buffer`` over all ranks, in place."""
        start = time.perf_counter()
        if self.size > 1:
            self.wait(self.comm.Iallreduce(self._MPI.IN_PLACE, buffer, op=self._MPI.SUM), what)
        self.stats["allreduce_calls"] += 1
        self.stats["allreduce_seconds"] += time.perf_counter() - start
        self.stats["allreduce_bytes"] += buffer.nbytes
        return buffer

    def allreduce_max(self, buffer: np.ndarray, what: str = "allreduce") -> np.ndarray:
        if self.size > 1:
            self.wait(self.comm.Iallreduce(self._MPI.IN_PLACE, buffer, op=self._MPI.MAX), what)
        return buffer

    def broadcast(self, buffer: np.ndarray, what: str = "broadcast") -> np.ndarray:
        """Rank 0's ``buffer`` everywhere, in place."""
        self.stats["broadcast_calls"] += 1
        if self.size > 1:
            self.wait(self.comm.Ibcast(buffer, root=0), what)
        return buffer

    def broadcast_object(self, obj: Any, what: str = "broadcast") -> Any:
        """Rank 0's ``obj`` (pickled; only ever from rank 0 of the same job) everywhere."""
        if self.size == 1:
            return obj
        payload = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL) if self.is_root else b""
        length = self.broadcast(np.array([len(payload)], dtype=np.int64), f"{what} (size)")
        data = (np.frombuffer(payload, dtype=np.uint8).copy() if self.is_root
                else np.empty(int(length[0]), dtype=np.uint8))
        self.broadcast(data, what)
        return obj if self.is_root else pickle.loads(data.tobytes())

    def agree(self, ok: bool, what: str) -> None:
        """Raise on every rank when any rank says not ``ok`` (so none is left waiting)."""
        failed = self.allreduce_max(np.array([0.0 if ok else 1.0]), f"{what} (agreement)")
        if failed[0]:
            raise DistributedError(f"rank {self.rank} of {self.size}: {what}: the ranks "
                                   f"disagree; every rank must run the same network, data "
                                   f"and settings")

    def abort(self, code: int = 2) -> None:
        """End every rank of the job now (MPI_Abort)."""
        self.comm.Abort(code)

    # -- replicas ---------------------------------------------------------------------------
    def broadcast_parameters(self, params: dict[str, np.ndarray]) -> None:
        """Overwrite every rank's parameters with rank 0's, through one flat buffer."""
        if self.size == 1 or not params:
            return
        layout = FlatLayout(params)
        flat = layout.pack(params)
        self.broadcast(flat, "broadcast of the initial weights")
        for key, view in layout.views(flat).items():
            params[key][...] = view

    def weights_in_sync(self, params: dict[str, np.ndarray]) -> bool:
        """True when every rank holds bit-identical parameters (a cheap checksum test)."""
        digest = np.array([_checksum(params)], dtype=np.float64)
        both = self.allreduce_max(np.array([digest[0], -digest[0]]), "weight checksum")
        return bool(both[0] == -both[1])

    # -- training ---------------------------------------------------------------------------
    def prepare(self, graph: Graph, optimizer: Optimizer, *, batch_size: int,
                seed: int | None, progress: bool | None, n_samples: int,
                data_digest: str | None = None) -> tuple[int, int, bool | None]:
        """Called by ``fit`` before the first epoch: checks that every rank runs the same
        thing, picks one seed, and makes the replicas identical (weights and optimizer
        state). Returns ``(global batch size, seed, progress)``."""
        params = graph.params
        mine = {"n_samples": n_samples, "batch_size": batch_size,
                "layout": [(k, a.shape, str(a.dtype)) for k, a in params.items()],
                "network": _digest(graph.to_spec().get("nodes")),
                "optimizer": (optimizer.name, _digest(optimizer.get_config())),
                "data": data_digest}
        root = self.broadcast_object({**mine, "seed": seed if seed is not None
                                      else secrets.randbits(63)}, "broadcast of the settings")
        differ = [k for k in mine if root[k] != mine[k]]
        words = {"n_samples": f"samples ({n_samples})", "batch_size": f"batch ({batch_size})",
                 "layout": "parameter layout", "network": "layers and their config",
                 "optimizer": f"optimizer and its settings ({optimizer.name} "
                              f"{optimizer.get_config()})",
                 "data": "training data (digest)"}
        self.agree(not differ, f"training settings ({', '.join(words[k] for k in differ)} "
                               f"differ from rank 0's)" if differ else "training settings")
        self.broadcast_parameters(params)
        optimizer.load_state_dict(self.broadcast_object(optimizer.state_dict(),
                                                        "broadcast of the optimizer state"))
        return batch_size * self.size, root["seed"], progress if self.is_root else False

    def shard(self, idx: np.ndarray) -> np.ndarray:
        """This rank's contiguous part of a global batch (sizes differ by at most one)."""
        bounds = np.linspace(0, len(idx), self.size + 1).round().astype(int)
        return idx[bounds[self.rank]:bounds[self.rank + 1]]

    def reducer(self) -> AllreduceGradients:
        """The training step's reducer over this job's ranks."""
        return AllreduceGradients(self)

    def root_only(self, checkpointer: Checkpointer) -> RootOnlyWriter:
        """A checkpoint writer whose saves happen on rank 0 alone (see RootOnlyWriter)."""
        return RootOnlyWriter(checkpointer, self)

    # -- process plumbing -------------------------------------------------------------------
    @contextlib.contextmanager
    def root_output_only(self) -> Iterator[None]:
        """Silence stdout on every rank but 0 (errors still go to stderr)."""
        if self.is_root:
            yield
            return
        with contextlib.redirect_stdout(io.StringIO()):
            yield

    @contextlib.contextmanager
    def abort_on_error(self, code: int = 2) -> Iterator[None]:
        """When this rank fails, say why on stderr and end the whole job, rather than
        leave the other ranks waiting in a collective until their timeout."""
        try:
            yield
        except BaseException as exc:
            if (self.size == 1 or (isinstance(exc, SystemExit) and not exc.code)
                    or isinstance(exc, TrainingInterrupted)):
                raise  # a stop request every rank agreed on (see train_step): no abort
            message = " ".join(str(exc).split()) or type(exc).__name__
            if not message.startswith("rank "):
                message = f"rank {self.rank} of {self.size}: {message}"
            print(f"deltaprop: error: {message}", file=sys.stderr, flush=True)
            sys.stdout.flush()
            time.sleep(0.5)  # let the launcher forward the message before it kills the job
            self.abort(code)
            os._exit(code)  # MPI_Abort may return before the launcher kills this process


_HOOKED: set[int] = set()


def _abort_on_uncaught(comm: Any) -> None:
    """Chain a ``sys.excepthook`` that aborts ``comm`` after the usual traceback."""
    if id(comm) in _HOOKED:
        return
    _HOOKED.add(id(comm))
    previous = sys.excepthook

    def hook(kind: type[BaseException], value: BaseException, tb: Any) -> None:
        previous(kind, value, tb)
        if issubclass(kind, KeyboardInterrupt | SystemExit):
            return
        sys.stderr.flush()
        sys.stdout.flush()
        time.sleep(0.5)  # let the launcher forward the traceback before it kills the job
        comm.Abort(1)

    sys.excepthook = hook


def _checksum(params: dict[str, np.ndarray]) -> float:
    total = 0.0
    for k, a in enumerate(params.values()):
        total += float(np.sum(a, dtype=np.float64)) * (k + 1)
        total += float(np.sum(np.abs(a), dtype=np.float64)) / (k + 2)
    return total


def _digest(value: Any) -> str:
    """A short fingerprint of JSON-able settings, to compare across ranks."""
    text = json.dumps(value, sort_keys=True, default=repr)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


class FlatLayout:
    """Where each named array lives in one flat buffer (same order on every rank)."""

    def __init__(self, arrays: dict[str, np.ndarray], extra: int = 0) -> None:
        self.keys = list(arrays)
        self.shapes = [arrays[k].shape for k in self.keys]
        self.dtypes = [arrays[k].dtype for k in self.keys]
        self.dtype = np.result_type(*self.dtypes) if self.dtypes else np.dtype(np.float64)
        sizes = [int(np.prod(s)) for s in self.shapes]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
        self.n = int(self.offsets[-1])
        self.extra = extra

    def empty(self) -> np.ndarray:
        return np.empty(self.n + self.extra, dtype=self.dtype)

    def pack(self, arrays: dict[str, np.ndarray] | None, scale: float = 1.0,
             out: np.ndarray | None = None) -> np.ndarray:
        """``arrays`` times ``scale`` into one buffer (zeros when ``arrays`` is None)."""
        flat = self.empty() if out is None else out
        if arrays is None:
            flat[:self.n] = 0
            return flat
        for k, key in enumerate(self.keys):
            a, b = self.offsets[k], self.offsets[k + 1]
            src = np.asarray(arrays[key]).reshape(-1)
            if scale == 1.0:
                flat[a:b] = src
            else:
                np.multiply(src, scale, out=flat[a:b], casting="unsafe")
        return flat

    def views(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        """Arrays shaped like the originals that read from ``flat`` (copies only when an
        array's dtype is narrower than the buffer's)."""
        out = {}
        for k, key in enumerate(self.keys):
            view = flat[self.offsets[k]:self.offsets[k + 1]].reshape(self.shapes[k])
            out[key] = view if view.dtype == self.dtypes[k] else view.astype(self.dtypes[k])
        return out


class AllreduceGradients(Reducer):
    """Each rank trains on its shard of every batch; one allreduce of a flat buffer then
    sums the gradients (weighted by each rank's sample count, so uneven last batches
    weigh right), the loss, the sample count and any stop request, so every rank
    applies the same averaged gradient and stops at the same batch."""

    def __init__(self, distributed: Distributed) -> None:
        self.distributed = distributed
        self.steps = 0
        self._layout: FlatLayout | None = None
        self._flat: np.ndarray | None = None
        self._started = 0.0
        self._agreed_stop = False  # what the last reduce decided about stopping

    def part(self, idx: np.ndarray) -> np.ndarray:
        self._started = time.perf_counter()
        return self.distributed.shard(idx)

    def reduce(self, grads: dict[str, np.ndarray] | None, loss_sum: float, samples: int,
               params: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], float]:
        dist = self.distributed
        if self._started:
            dist.stats["compute_seconds"] += time.perf_counter() - self._started
            self._started = 0.0
        layout = self._layout
        if layout is None or layout.keys != list(params):
            layout = self._layout = FlatLayout(params, extra=4)
            self._flat = layout.empty()
        signum = self.stop.signum if self.stop is not None else None
        flat = layout.pack(grads, float(samples), out=self._flat)
        flat[layout.n:] = (loss_sum, 1.0 if signum else 0.0, float(signum or 0), samples)
        self.steps += 1
        dist.allreduce_sum(flat, f"gradient allreduce of step {self.steps} "
                                 f"({flat.nbytes} bytes)")
        loss_total, stopping, signum_total, total = (float(v) for v in flat[layout.n:])
        if not total > 0:
            raise TrainingError(f"step {self.steps}: no rank had samples to train on")
        if stopping and self.stop is not None and not signum:
            self.stop.signum = round(signum_total / stopping)
        self._agreed_stop = bool(stopping)
        flat[:layout.n] *= 1.0 / total
        return layout.views(flat), loss_total / total

    def sum(self, values: np.ndarray, what: str) -> np.ndarray:
        return self.distributed.allreduce_sum(np.array(values, dtype=np.float64), what)

    def stopping(self) -> bool:
        return self._agreed_stop

    def agree_to_stop(self) -> bool:
        signum = self.stop.signum if self.stop is not None else None
        flags = self.distributed.allreduce_sum(
            np.array([1.0 if signum else 0.0, float(signum or 0)]), "stop agreement")
        if flags[0] and self.stop is not None and not signum:
            self.stop.signum = round(flags[1] / flags[0])
        return bool(flags[0])


def run_on_ranks(command: Callable[..., int], args: Any, *, timeout: float | None = None,
                 threads: int | None = None) -> int:
    """Run a CLI command on this rank: ``command(args, distributed)`` with stdout on rank 0
    only, and a failure on any rank ending the whole job with its message. Each rank runs
    ``threads`` BLAS/OpenMP threads, by default the cores of its machine shared out
    among the ranks on it (see ``deltaprop.training.threads``)."""
    distributed = Distributed(timeout=timeout)
    with distributed.abort_on_error(), distributed.root_output_only(), \
            limited_threads(distributed.thread_plan(threads)) as plan:
        if distributed.is_root:
            print(f"distributed over {distributed.size} MPI rank(s), batch size per rank; "
                  f"{_mpi().Get_library_version().splitlines()[0].strip()}")
            print(plan.reason)
        return command(args, distributed)


class RootOnlyWriter:
    """Wraps a checkpoint writer (``save``, ``after_batch``, ``interrupted``, ``resume``)
    so that only rank 0 writes, while every rank keeps the same bookkeeping. ``resume``
    runs on every rank (the checkpoint must be on a file system all ranks see) and the
    ranks must agree on whether one was found."""

    def __init__(self, inner: Checkpointer, distributed: Distributed) -> None:
        self.inner = inner
        self.distributed = distributed

    def last_good(self) -> str:
        return self.inner.last_good()

    def acquire(self) -> None:
        if self.distributed.is_root:  # the writer holds the lock for the whole job
            self.inner.acquire()

    def release(self) -> None:
        self.inner.release()

    def resume(self, *args: Any, **kwargs: Any) -> Any:
        position = self.inner.resume(*args, **kwargs)
        self.distributed.agree(
            self.distributed.broadcast_object(position is None, "resume check")
            == (position is None),
            "resuming: rank 0 and this rank do not both see the checkpoint (it must be on "
            "a file system shared by all ranks)")
        return position

    def save(self, position: Any, rng: Any) -> None:
        if self.distributed.is_root:
            self.inner.save(position, rng)
        else:
            self.inner.saved = position

    def after_batch(self, position: Any, rng: Any) -> None:
        every = self.inner.every
        if every and position.batch % every == 0:
            self.save(position, rng)

    def interrupted(self, flag: Any, position: Any, rng: Any) -> Any:
        if self.distributed.is_root:
            return self.inner.interrupted(flag, position, rng)
        self.inner.saved = position  # rank 0 saves this position; this rank says so
        name = signal.Signals(flag.signum).name
        dist = self.distributed
        return TrainingInterrupted(f"rank {dist.rank} of {dist.size}: stopped by {name} with "
                                   f"every rank at {position.describe()}; rank 0 saves the "
                                   f"checkpoint in {str(self.inner.path)!r}", flag.signum)


def as_distributed(value: Any) -> Distributed | None:
    """``fit(distributed=...)``: a :class:`Distributed`, True for the world, or None/False."""
    if value is None or value is False:
        return None
    if value is True:
        return Distributed()
    if isinstance(value, Distributed):
        return value
    raise DataError(f"distributed must be True, False or a deltaprop.distributed."
                    f"Distributed, got {type(value).__name__}")
