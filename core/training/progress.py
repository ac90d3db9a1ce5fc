"""Progress of a training run: a tqdm bar driven by the loop's hook events."""

from __future__ import annotations

import sys
from typing import Any

from ..execution.hooks import Hook


def show_progress(progress: bool | None) -> bool:
    """Progress bars go to a terminal unless switched off."""
    if progress is None:
        return sys.stderr.isatty()
    return progress


class ProgressBar(Hook):
    """One bar over every batch of a run: the epoch in its description, the latest
    loss (and validation accuracy) after it."""

    def __init__(self, epochs: int, batches_per_epoch: int, *, done: int = 0) -> None:
        from tqdm.auto import tqdm

        self.epochs = epochs
        self.shown_epoch = -1
        self.bar: Any = tqdm(total=epochs * batches_per_epoch, initial=done,
                             unit="batch", dynamic_ncols=True, leave=True)

    def batch_start(self, epoch: int, batch: int) -> None:
        if epoch != self.shown_epoch:
            self.shown_epoch = epoch
            self.bar.set_description(f"epoch {epoch + 1}/{self.epochs}")

    def batch_end(self, epoch: int, batch: int, loss: float) -> None:
        self.bar.update(1)
        if batch % 10 == 0:
            self.bar.set_postfix(loss=f"{loss:.4f}")

    def epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        shown = {"loss": f"{metrics['loss']:.4f}"}
        if "val_accuracy" in metrics:
            shown["val_acc"] = f"{metrics['val_accuracy']:.4f}"
        self.bar.set_postfix(**shown)

    def close(self) -> None:
        self.bar.close()
