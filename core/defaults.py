"""The training defaults, in one place: ``Network.fit`` and ``deltaprop train`` both read
them, so a setting left out means the same in Python and on the command line.

A learning rate left out is the optimizer's own (``adam``: 0.001, ``sgd``: 0.01), in
both. The network ``deltaprop train`` runs without a spec trains with the settings of
``DEFAULT_NETWORK_TRAIN``; the README's Python snippet passes the same ones.
"""

from __future__ import annotations

from typing import Any

LOSS = "softmax_cross_entropy"
OPTIMIZER = "adam"
EPOCHS = 10
BATCH_SIZE = 32
#: the seed of the shuffle (and, on the command line, of the initial weights)
SEED = 0
#: the data ``deltaprop train`` and ``deltaprop evaluate`` read without ``--data``
DATA = "digits"

#: the ``[train]`` table of the dense/sigmoid network ``deltaprop train`` runs without
#: a spec (a larger learning rate and more epochs than the defaults above)
DEFAULT_NETWORK_TRAIN: dict[str, Any] = {
    "loss": LOSS, "optimizer": OPTIMIZER, "lr": 0.01, "epochs": 30,
    "batch_size": BATCH_SIZE, "seed": SEED}
