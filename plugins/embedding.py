"""The embedding layer: integer ids to learned vectors (a table lookup).

Its backward is a scatter-add: every occurrence of id k adds its output delta to row k
of the table's gradient. Sorting the ids puts the occurrences of each id side by side,
and one ``np.add.reduceat`` sums every run, a vectorised reduction where ``np.add.at``
adds one occurrence at a time (unbuffered); the gain is largest for small vocabularies,
where many occurrences share a row (docs/performance.md). The ids themselves are not
differentiable and get no delta.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from deltaprop import Layer, hookimpl
from deltaprop.config import positive_int
from deltaprop.errors import DataError, ShapeError

Shape = tuple[int, ...]

#: ids drawn for the gradient check (sample_inputs cannot see the config): examples
#: keep ``input_dim`` above this
SAMPLE_IDS = 4


class Embedding(Layer):
    """``W`` (input_dim, output_dim); ids of any shape (...) give vectors (..., output_dim).
    The ids may arrive as integers or as floats holding whole numbers.

    Config:
        input_dim: how many ids there are (ids run from 0 to input_dim - 1).
        output_dim: length of each id's vector.
        embeddings_initializer: initializer of ``W``.
    """

    name = "embedding"
    examples = [
        {"config": {"input_dim": 5, "output_dim": 3}, "input_shapes": [(4,)]},
        {"config": {"input_dim": 6, "output_dim": 2}, "input_shapes": [(2, 3)]},
    ]

    def __init__(self, input_dim: int, output_dim: int, *,
                 embeddings_initializer: str = "glorot_uniform", dtype: str = "float32",
                 label: str | None = None) -> None:
        super().__init__(dtype=dtype, label=label)
        self.input_dim = positive_int("embedding", "input_dim", input_dim)
        self.output_dim = positive_int("embedding", "output_dim", output_dim)
        self.embeddings_initializer = embeddings_initializer

    def build(self, input_shapes: Sequence[Shape], rng: Any = None) -> tuple[Shape]:
        self.expect_inputs(input_shapes)
        (shape,) = input_shapes
        self.add_param("W", (self.input_dim, self.output_dim), self.embeddings_initializer,
                       rng, fan_in=self.input_dim, fan_out=self.output_dim)
        return ((*shape, self.output_dim),)

    def _ids(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids)
        if not np.issubdtype(ids.dtype, np.integer):
            if not np.issubdtype(ids.dtype, np.floating) or not np.all(ids == np.round(ids)):
                sample = ids.ravel()[:3].tolist() if ids.size else []
                raise DataError(f"embedding: ids must be integers, got {ids.dtype} values "
                                f"such as {sample}")
            ids = ids.astype(np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= self.input_dim):
            bad = int(ids[(ids < 0) | (ids >= self.input_dim)][0])
            raise DataError(f"embedding: id {bad} is out of range for input_dim "
                            f"{self.input_dim} (ids 0..{self.input_dim - 1})")
        return ids

    def forward(self, inputs: tuple[np.ndarray, ...], *, train: bool) -> tuple[Any, Any]:
        (ids,) = inputs
        expected = self.input_shapes[0] if self.input_shapes else None
        if expected is not None and tuple(np.shape(ids)[1:]) != tuple(expected):
            raise ShapeError(f"embedding: expects ids of shape (batch, "
                             f"{', '.join(map(str, expected))}), got {np.shape(ids)}")
        ids = self._ids(ids)
        out = self.params["W"][ids]  # fancy indexing: a fresh array
        return (out,), (ids if train else None)

    def backward(self, cache: Any, grad_outputs: tuple[np.ndarray, ...], *,
                 needs_grad: Sequence[bool] | None = None
                 ) -> tuple[tuple[Any, ...], dict[str, np.ndarray]]:
        ids = cache
        (g,) = grad_outputs
        W = self.params["W"]
        dW = np.zeros_like(W)
        flat = ids.reshape(-1)
        if flat.size:
            order = np.argsort(flat, kind="stable")
            grouped = flat[order]
            starts = np.flatnonzero(np.r_[True, grouped[1:] != grouped[:-1]])
            rows = g.reshape(-1, W.shape[1])[order]
            dW[grouped[starts]] = np.add.reduceat(rows, starts, axis=0)
        return (None,), {"W": dW}

    @classmethod
    def sample_inputs(cls, rng: np.random.Generator, input_shapes: Sequence[Shape],
                      batch: int, dtype: str) -> list[np.ndarray]:
        return [rng.integers(0, SAMPLE_IDS, size=(batch, *shape)) for shape in input_shapes]


@hookimpl
def deltaprop_register_layers() -> list[type[Layer]]:
    return [Embedding]
