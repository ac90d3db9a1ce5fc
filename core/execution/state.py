"""State carried from one call to the next: what lets truncated BPTT and step-by-step
generation run a recurrent network on a long sequence a piece at a time.

A ``CarriedState`` passed to a forward starts every layer that carries state
(``Layer.carries_state``) from the final state its node reached in the previous
call, and records the new final state. The layer is handed the state as an
argument; it never looks for one. No gradient flows from one call into the last.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class CarriedState:
    """Final states by node name. A state is a sequence of arrays whose first axis is
    the batch: a call with another batch size starts that node afresh."""

    def __init__(self) -> None:
        self._states: dict[str, list[np.ndarray]] = {}

    def start(self, node: str, batch: int) -> Any:
        """The state ``node`` starts from, or None (the layer's usual start)."""
        states = self._states.get(node)
        if states is None or (states and states[0].shape[0] != batch):
            return None
        return states

    def keep(self, node: str, final: Any) -> None:
        # copies: the next call must not see (or backpropagate into) this call's arrays
        self._states[node] = [np.array(s) for s in final]

    def reset(self) -> None:
        """Forget every state: the next call starts afresh (a new batch of sequences)."""
        self._states.clear()

    def __len__(self) -> int:
        return len(self._states)

    def __repr__(self) -> str:
        return f"<CarriedState of {', '.join(self._states) or 'no node'}>"
