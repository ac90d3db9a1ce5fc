"""Top-1 and top-5 move-prediction accuracy of a trained model on held-out games,
against the baseline that always answers the points played most often in training.

    python examples/go/evaluate.py MODEL.npz DATA.npz
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from sgf_dataset import most_common_point_accuracy, top_k_accuracy  # examples/go/

from deltaprop import load
from deltaprop.data import load_data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a model saved by `deltaprop train --out`")
    parser.add_argument("data", help="the .npz built by examples/go/sgf_dataset.py")
    args = parser.parse_args(argv)
    net = load(args.model)
    data = load_data(args.data).reshaped(net.input_shapes[0])
    scores = np.asarray(net.predict(data.x_test))
    print(f"{len(data.y_test)} held-out positions")
    for k in (1, 5):
        model = top_k_accuracy(scores, data.y_test, k)
        base = most_common_point_accuracy(data.y_train, data.y_test, k)
        print(f"top-{k}: model {model:.4f}   most-common-point baseline {base:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
