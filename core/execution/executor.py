"""The executor: runs a plan forward (and once backward) and owns that call's state.

Forward in training mode keeps each step's cache in this executor, and returns its
outputs as read-only views (a cache may need their buffers); backward walks
the plan in reverse, sums the deltas of a value's readers into buffers it owns
(never in place into an array a layer returned), hands each step its summed delta,
sums parameter gradients (shared layers get one sum) and frees each cache as soon
as its step's backward has run. Nothing of a call lives on the network or the plan,
so calls on one network from several threads never see each other's state. The hot
loops do no shape derivation and no registry look-ups; the bytes each step caches
are counted once per input shape (in the plan) and reused.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from ..errors import GraphError, ShapeError
from ..layer import Layer
from . import memory
from .blame import check_gradients, layer_failure
from .hooks import Hook, bound
from .plan import Plan
from .state import CarriedState


class Executor:
    """One call on a plan: ``forward`` (with ``train``, then ``backward`` once)."""

    def __init__(self, plan: Plan, hooks: Sequence[Hook] = ()) -> None:
        self.plan = plan
        n = len(plan.steps)
        self.caches: list[Any] = [None] * n
        self.cache_sizes = [0] * n
        #: bytes the caches hold now, and the most they held during this call
        self.cache_bytes = 0
        self.peak_cache_bytes = 0
        #: summed parameter gradients after ``backward``, keyed like ``Network.params``
        self.grads: dict[str, np.ndarray] = {}
        self._kept: dict[int, np.ndarray] = {}  # segment boundaries, for recomputation
        self._tracker: memory.ByteTracker | None = None
        self._forward_hooks = bound(hooks, "forward_node") if hooks else []
        self._backward_hooks = bound(hooks, "backward_node") if hooks else []
        self._pending = False
        self._skip: frozenset[int] = frozenset()

    # -- forward ----------------------------------------------------------------------------
    def forward(self, arrays: Any, *, train: bool = False,
                outputs: Sequence[int] | None = None, skip: frozenset[int] = frozenset(),
                state: CarriedState | None = None) -> list[np.ndarray]:
        """Run the plan on input arrays and return the values of the ``outputs`` slots
        (default: the network's outputs). ``skip`` leaves steps out (a fused loss
        reads a skipped step's input instead); ``state`` carries the state of stateful layers from
        the last call to this one."""
        plan = self.plan
        checked = plan.check_inputs(arrays)
        values: list[Any] = [None] * plan.n_slots
        for slot, value in zip(plan.input_slots, checked):
            values[slot] = value
        out_slots = plan.output_slots if outputs is None else outputs
        # a value asked for that is no network output may be dropped after its last
        # reader: it is caught as it is made
        wanted: dict[int, Any] = {} if outputs is None else {
            s: None for s in outputs if s not in plan.output_slots and s not in plan.input_slots}
        tracker = None
        layout_key: Any = None
        layout = None
        if train:
            self._release()
            self._pending = True
            self._skip = skip
            self.peak_cache_bytes = 0
            shapes = checked[0].shape if len(checked) == 1 else tuple(v.shape for v in checked)
            layout_key = (skip, shapes) if skip else shapes
            layout = plan.layouts.get(layout_key)
            if layout is None or plan.segments is not None or self._forward_hooks:
                tracker = self._tracker = memory.ByteTracker()
                for s in plan.keep_inputs:
                    self._kept[s] = values[s]
                    tracker.hold(("kept", s), values[s])
        caches, sizes = self.caches, self.cache_sizes
        keep_cache, keep_values = plan.keep_cache, plan.keep_values
        recomputing = plan.segments is not None
        hooks = self._forward_hooks
        for step in plan.steps:
            if skip and step.index in skip:
                continue
            ins = step.in_slots
            layer = step.layer
            try:
                if state is not None and step.carries_state:
                    start = state.start(step.name, len(values[ins[0]]))
                    outs, cache, final = layer.forward_with_state(
                        tuple(values[s] for s in ins), train=train, state=start)
                    state.keep(step.name, final)
                elif step.in_place:
                    x = values[ins[0]]
                    values[ins[0]] = None  # so that the proof below sees only ``x``
                    if memory.sole_owner(x):
                        outs, cache = layer.forward_in_place((x,), train=train)
                    else:
                        outs, cache = layer.forward((x,), train=train)
                    del x
                elif len(ins) == 1:
                    outs, cache = layer.forward((values[ins[0]],), train=train)
                else:
                    outs, cache = layer.forward(tuple(values[s] for s in ins), train=train)
            except Exception as exc:
                layer_failure(step.name, layer, "forward", exc)
                raise
            if not isinstance(outs, (tuple, list)) or len(outs) != len(step.out_slots):
                count = len(outs) if isinstance(outs, (tuple, list)) else type(outs).__name__
                raise GraphError(f"node {step.name!r}: layer {layer.name!r} returned "
                                 f"{count} outputs, declared {len(step.out_slots)}")
            if len(outs) == 1:
                s = step.out_slots[0]
                values[s] = outs[0]
                if wanted and s in wanted:
                    wanted[s] = outs[0]
            else:
                for s, value in zip(step.out_slots, outs):
                    values[s] = value
                    if wanted and s in wanted:
                        wanted[s] = value
                value = None  # type: ignore[assignment]  # no reference may defeat an in-place proof
            k = step.index
            kept_now = train and step.carries and keep_cache[k]
            if kept_now:
                caches[k] = cache
                if tracker is not None:
                    sizes[k] = tracker.hold(k, cache)
            if hooks:
                seen = tuple(values[s] for s in ins)
                nbytes = sizes[k] if kept_now else 0
                for hook in hooks:
                    hook(step, seen, outs, cache if kept_now else None, nbytes)
                del seen
            for s in step.free_after:
                values[s] = None
            outs = None  # type: ignore[assignment]  # the same
            if train and recomputing and step.carries:
                for s in keep_values[k]:
                    self._kept[s] = values[s]
                    assert tracker is not None
                    tracker.hold(("kept", s), values[s])
        if train:
            if tracker is None:  # the same shapes as before: the same bytes
                assert layout is not None
                sizes[:], self.cache_bytes = layout[0], layout[1]
            else:
                self.cache_bytes = tracker.current
                if plan.segments is None and not hooks:
                    plan.layouts[layout_key] = (list(sizes), tracker.current)
                    self._tracker = None
            self.peak_cache_bytes = self.cache_bytes
            # a cache may still need an output's buffer (a sigmoid caches its output, a
            # dense layer its input): writing into it would change backward, so every
            # layer's outputs come out read-only until the next call
            return [memory.read_only(wanted[s] if s in wanted else values[s])
                    for s in out_slots]
        return [wanted[s] if s in wanted else values[s] for s in out_slots]

    def _release(self) -> None:
        """Drop the caches of an earlier training forward whose backward never ran."""
        if self._pending:
            n = len(self.plan.steps)
            self.caches[:] = [None] * n
            self.cache_sizes[:] = [0] * n
            self._kept.clear()
            self._tracker = None
            self.cache_bytes = 0
            self._pending = False

    # -- backward ---------------------------------------------------------------------------
    def backward(self, grad_outputs: Any, *, input_grads: bool = True
                 ) -> list[np.ndarray | None]:
        """Propagate deltas of the network's outputs back (one per output, None for an
        output without one); returns one delta per input (None where the input takes
        none) and leaves the summed parameter gradients in ``grads``."""
        plan = self.plan
        if isinstance(grad_outputs, np.ndarray) or not isinstance(grad_outputs, (list, tuple)):
            grad_outputs = [grad_outputs]
        if len(grad_outputs) != len(plan.output_slots):
            raise ShapeError(f"network {plan.name!r} has {len(plan.output_slots)} outputs, "
                             f"got {len(grad_outputs)} output gradients")
        seeds = []
        for slot, g in zip(plan.output_slots, grad_outputs):
            if g is None:
                continue
            g = np.asarray(g)
            if g.shape[1:] != plan.slot_shapes[slot]:
                raise ShapeError(f"gradient for output {slot}: expected shape (batch, "
                                 f"{', '.join(map(str, plan.slot_shapes[slot]))}), got {g.shape}")
            seeds.append((slot, g))
        return self.backward_from(seeds, input_grads=input_grads)

    def backward_from(self, seeds: Sequence[tuple[int, np.ndarray]], *,
                      input_grads: bool = False) -> list[np.ndarray | None]:
        """Backward from deltas ``(slot, delta)`` of any values of the last training
        forward (a fused loss seeds the logits' slot)."""
        if not self._pending:
            raise GraphError(f"network {self.plan.name!r}: backward needs a "
                             f"forward(train=True) first (each forward's caches serve one "
                             f"backward)")
        self._pending = False
        plan = self.plan
        batch = len(seeds[0][1]) if seeds else 0
        grads: list[Any] = [None] * plan.n_slots
        owned = [False] * plan.n_slots
        if len(seeds) == 1:
            grads[seeds[0][0]] = seeds[0][1]
        else:
            for slot, g in seeds:
                _accumulate(grads, owned, slot, g)
        param_grads: dict[str, np.ndarray] = {}
        if plan.segments is None:
            self._backward_steps(range(len(plan.steps) - 1, -1, -1), grads, owned, param_grads,
                                 input_grads)
        else:
            self._backward_checkpointed(grads, owned, param_grads, input_grads)
        if len(param_grads) != plan.n_trainable:  # a parameter no delta reached
            for key, layer, pname in plan.param_index:
                if key not in param_grads and pname not in layer.non_trainable:
                    param_grads[key] = np.zeros_like(layer.params[pname])
        self.grads = param_grads
        self._kept.clear()
        result: list[Any] = []
        for t, slot, is_float in zip(plan.inputs, plan.input_slots, plan.float_inputs):
            if not input_grads or not is_float:
                result.append(None)
            elif grads[slot] is None:
                result.append(np.zeros((batch, *t.shape), dtype=t.dtype))
            else:
                result.append(grads[slot])
        return result

    def _backward_steps(self, order: Iterable[int], grads: list[Any], owned: list[bool],
                        param_grads: dict[str, np.ndarray], input_grads: bool) -> None:
        """Backward through the plan steps ``order`` (reverse order), freeing each cache."""
        plan, caches, sizes, tracker = self.plan, self.caches, self.cache_sizes, self._tracker
        hooks = self._backward_hooks
        for k in order:
            step = plan.steps[k]
            cache = caches[k]
            caches[k] = None
            if tracker is not None:
                tracker.release(k)
                self.cache_bytes = tracker.current
            else:
                self.cache_bytes -= sizes[k]
                sizes[k] = 0
            if not step.carries or (self._skip and k in self._skip):
                continue
            out_slots = step.out_slots
            if len(out_slots) == 1:
                g = grads[out_slots[0]]
                if g is None:
                    continue
                grads[out_slots[0]] = None
                grad_outs: tuple[np.ndarray, ...] = (g,)
            else:
                outs = [grads[s] for s in out_slots]
                for s in out_slots:
                    grads[s] = None
                if all(g is None for g in outs):
                    continue
                grad_outs = tuple(g if g is not None else
                                  np.zeros((_batch_of(outs), *plan.slot_shapes[s]),
                                           dtype=plan.slot_dtypes[s])
                                  for g, s in zip(outs, out_slots))
            mask = step.needs_grad_inputs if input_grads else step.needs_grad
            layer: Layer = step.layer
            try:
                if step.pass_needs_grad:
                    grad_ins, grad_params = layer.backward(cache, grad_outs, needs_grad=mask)
                else:
                    grad_ins, grad_params = layer.backward(cache, grad_outs)
            except Exception as exc:
                layer_failure(step.name, layer, "backward", exc)
                raise
            del cache
            batch = _batch_of(grad_outs)
            if (step.index, batch) not in plan.backward_checked:
                check_gradients(step.name, layer, grad_ins, grad_params,
                                [plan.slot_shapes[s] for s in step.in_slots], batch,
                                layer.params)
                plan.backward_checked.add((step.index, batch))
            if len(grad_ins) != len(step.in_slots):
                raise GraphError(f"node {step.name!r}: layer {layer.name!r} returned "
                                 f"{len(grad_ins)} input gradients for {len(step.in_slots)} "
                                 f"inputs")
            for hook in hooks:
                hook(step, grad_outs, grad_ins, grad_params)
            if len(grad_ins) == 1:  # the common case, without the zip
                g = grad_ins[0]
                if mask[0] and g is not None:
                    s = step.in_slots[0]
                    if grads[s] is None:
                        grads[s] = g
                    else:
                        _accumulate(grads, owned, s, g)
            else:
                for s, g, need in zip(step.in_slots, grad_ins, mask):
                    if need and g is not None:
                        _accumulate(grads, owned, s, g)
            keys = step.param_keys
            for pname, g in grad_params.items():
                key = keys.get(pname) or f"{layer.label}/{pname}"
                current = param_grads.get(key)
                if current is None:
                    param_grads[key] = g
                else:  # a shared layer: sum into a new array, never into the layer's
                    param_grads[key] = current + g

    def _backward_checkpointed(self, grads: list[Any], owned: list[bool],
                               param_grads: dict[str, np.ndarray], input_grads: bool) -> None:
        """Segment by segment from the last: recompute the inner forward values from the
        kept boundary values, then run the segment's backward."""
        plan = self.plan
        assert plan.segments is not None
        tracker = self._tracker
        assert tracker is not None
        for i in range(len(plan.segments) - 1, -1, -1):
            seg = plan.segments[i]
            rerun = [k for k in seg.rerun if k not in self._skip]
            if rerun:
                values: list[Any] = [None] * plan.n_slots
                for s in seg.needs:
                    values[s] = self._kept[s]
                for k in rerun:
                    step = plan.steps[k]
                    ins = tuple(values[s] for s in step.in_slots)
                    outputs, cache = step.layer.forward(ins, train=True)
                    for s, out in zip(step.out_slots, outputs):
                        values[s] = out
                    self.caches[k] = cache
                    tracker.hold(k, cache)
                del values, ins, outputs, cache
                self.cache_bytes = tracker.current
                self.peak_cache_bytes = max(self.peak_cache_bytes, tracker.peak)
            self._backward_steps(range(seg.stop - 1, seg.start - 1, -1), grads, owned,
                                 param_grads, input_grads)
            for s in plan.release_after.get(i, ()):
                self._kept.pop(s, None)
                tracker.release(("kept", s))
            self.cache_bytes = tracker.current


def _batch_of(arrays: Sequence[Any]) -> int:
    for a in arrays:
        if a is not None:
            return int(np.shape(a)[0])
    return 0


def _accumulate(grads: list[Any], owned: list[bool], slot: int, g: np.ndarray) -> None:
    """Sum deltas of several readers without writing into an array a layer returned."""
    current = grads[slot]
    if current is None:
        grads[slot] = g
    elif owned[slot]:  # a buffer this backward made: add in place
        current += g
    else:
        grads[slot] = current + g
        owned[slot] = True
