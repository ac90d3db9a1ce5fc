"""Memory planning: which forward values die when, which arrays may be overwritten in
place, and how many bytes the caches really hold.

Three ideas, each measurable through ``Network.memory_report()``:

- Liveness: a forward value is dropped right after its last forward reader, unless a
  backward needs it, in which case only the cache that needs it keeps it alive.
- In place: an element-wise layer may overwrite its input when the executor can prove
  that nobody else holds that array (the producer's cache, a view, the caller...).
  The proof is the array's reference count, compared with a count calibrated here
  through the very same call pattern, so it stays exact across Python versions.
- Accounting: an array referenced by two caches (a ReLU's output, which the next
  dense layer also caches as its input) is counted once, against the first node
  that holds it; that node is freed last in backward, so the running figure is exact.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from ..layer import Layer


# -- liveness -----------------------------------------------------------------------------
def last_forward_use(in_slots: Sequence[Sequence[int]]) -> dict[int, int]:
    """Slot -> index of the last step that reads it in forward."""
    last: dict[int, int] = {}
    for k, slots in enumerate(in_slots):
        for s in slots:
            last[s] = k
    return last


def free_after(in_slots: Sequence[Sequence[int]], keep: Iterable[int]) -> list[tuple[int, ...]]:
    """For each step, the slots no later forward step reads (and that are not kept, i.e.
    network outputs): the executor drops its reference to them right after the step."""
    last = last_forward_use(in_slots)
    kept = set(keep)
    return [tuple(sorted({s for s in slots if last[s] == k and s not in kept}))
            for k, slots in enumerate(in_slots)]


def in_place_candidates(in_slots: Sequence[Sequence[int]], layers: Sequence[Layer],
                        protected: Iterable[int]) -> list[bool]:
    """Steps whose layer may work in place on its single input, as far as the graph can
    tell: the layer says it can, and no later forward step reads the input, which is
    neither a network input (the caller holds it) nor a network output. The executor
    still checks at run time that no cache or view holds the array (``sole_owner``)."""
    last = last_forward_use(in_slots)
    protected = set(protected)
    return [layer.can_work_in_place and len(slots) == 1
            and last[slots[0]] == k and slots[0] not in protected
            for k, (slots, layer) in enumerate(zip(in_slots, layers))]


def _refcount_of(array: Any) -> int:
    return sys.getrefcount(array)


def _calibrate() -> int:
    array = np.empty(1)
    return _refcount_of(array)


#: references to an array held by exactly one local variable of the calling function
_SOLE = _calibrate()


def sole_owner(array: Any) -> bool:
    """True when the caller's single local variable is the only reference to ``array``,
    the array owns its memory and may be written: overwriting it cannot be seen by
    anyone else. Call as ``sole_owner(x)`` with ``x`` a plain local variable."""
    return (sys.getrefcount(array) <= _SOLE and type(array) is np.ndarray
            and array.base is None and array.flags.writeable)


def read_only(value: Any) -> Any:
    """A read-only view of an array (anything else as it is): what a training forward
    hands out, since a cache may still need the array's buffer for backward."""
    if isinstance(value, np.ndarray) and value.flags.writeable:
        value = value.view()
        value.flags.writeable = False
    return value


# -- accounting ---------------------------------------------------------------------------
def root_of(array: np.ndarray) -> np.ndarray:
    """The array that owns the memory a view looks at."""
    while isinstance(array.base, np.ndarray):
        array = array.base
    return array


def arrays_in(obj: Any) -> list[np.ndarray]:
    """The arrays inside a cache: tuples, lists and dicts of arrays, walked iteratively."""
    found: list[np.ndarray] = []
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, np.ndarray):
            found.append(item)
        elif isinstance(item, (tuple, list)):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
    return found


class ByteTracker:
    """Bytes held by live holders (caches, kept values), each memory block counted once
    however many hold it, and freed when its last holder lets go. ``hold(k, obj)``
    returns the bytes newly held because of ``k`` (the first holder is charged)."""

    def __init__(self) -> None:
        self._blocks: dict[int, list[Any]] = {}  # root id -> [root, bytes, holders, first]
        self._by_holder: dict[Any, list[int]] = {}
        self.current = 0
        self.peak = 0

    def hold(self, k: Any, obj: Any) -> int:
        added = 0
        keys = self._by_holder.setdefault(k, [])
        for array in arrays_in(obj):
            root = root_of(array)
            key = id(root)
            nbytes = min(array.nbytes, root.nbytes)
            block = self._blocks.get(key)
            if block is None:
                self._blocks[key] = [root, nbytes, {k}, k]
                added += nbytes
            else:
                if nbytes > block[1]:  # a larger view of the same memory
                    added += nbytes - block[1]
                    block[1] = nbytes
                block[2].add(k)
            keys.append(key)
        self.current += added
        self.peak = max(self.peak, self.current)
        return added

    def release(self, k: Any) -> int:
        freed = 0
        for key in self._by_holder.pop(k, ()):
            block = self._blocks.get(key)
            if block is None:
                continue
            block[2].discard(k)
            if not block[2]:
                del self._blocks[key]
                freed += block[1]
        self.current -= freed
        return freed

    def first_holder(self, array: np.ndarray) -> Any:
        block = self._blocks.get(id(root_of(array)))
        return None if block is None else block[3]

    def counted_bytes(self, array: np.ndarray) -> int:
        """Bytes of the memory block ``array`` lies in, as counted (0 when not held)."""
        block = self._blocks.get(id(root_of(array)))
        return 0 if block is None else int(block[1])
