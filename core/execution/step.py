"""One executed step of a plan: a user node, or several fused into one."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..layer import Layer, backward_takes_needs_grad
from ..tensor import Node


@dataclass(eq=False, slots=True)
class Step:
    """What the executor needs to run one node without looking anything up: its layer,
    the slots it reads and writes, and what the planner decided about it."""

    node: Node
    layer: Layer
    name: str
    in_slots: tuple[int, ...]
    out_slots: tuple[int, ...]
    nodes: tuple[Node, ...] = ()  # the user nodes this step runs (several when fused)
    index: int = 0  # position in the plan: an executor's caches[index] is this step's
    free_after: tuple[int, ...] = ()  # forward values no later forward step reads
    has_params: bool = False
    carries: bool = False  # some gradient flows through or into this step
    needs_grad: tuple[bool, ...] = ()  # which input deltas backward keeps
    needs_grad_inputs: tuple[bool, ...] = ()  # the same when input gradients are wanted
    in_place: bool = False  # may overwrite its input when the executor proves it unshared
    param_keys: dict[str, str] = field(default_factory=dict)  # param name -> grads key
    pass_needs_grad: bool = True  # the layer's backward takes ``needs_grad``
    carries_state: bool = False  # the layer can start from a carried state

    def __post_init__(self) -> None:
        if not self.nodes:
            self.nodes = (self.node,)
        self.has_params = bool(self.layer.params)
        self.param_keys = {p: f"{self.layer.label}/{p}" for p in self.layer.params}
        self.pass_needs_grad = backward_takes_needs_grad(type(self.layer))
        self.carries_state = self.layer.carries_state()
