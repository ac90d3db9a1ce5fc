"""A character-level language model: embedding -> LSTM -> dense over the characters,
trained with truncated backpropagation through time, scored in bits per character on
held-out text, then sampled one character at a time with the state carried.

    python examples/char_lm.py                      # Debian's fortunes (offline)
    python examples/char_lm.py --text book.txt --epochs 5 --units 256

The text is split by position: the last tenth is held out. Training reads windows of
``--window`` characters in chunks of ``--bptt`` steps, the LSTM state carried from one
chunk to the next (``fit(..., bptt=k)``).

Measured with ``--epochs 5`` (400,000 characters of fortunes, 110 distinct, a 256-unit
LSTM, 329k parameters): 2.69 bits per character on the held-out tenth, against 6.78 for
a uniform guess. On a machine shared with other jobs, set ``OPENBLAS_NUM_THREADS=1``:
with OpenBLAS's default of one thread per core, its threads wait for each other on
cores that are busy elsewhere (docs/performance.md).
"""

from __future__ import annotations

import argparse
import glob
import math
import os
import sys
import time

import numpy as np

import deltaprop
from deltaprop.cli import DefaultsHelpFormatter

FORTUNES = "/usr/share/games/fortunes"


def read_corpus(path: str | None, limit: int | None) -> str:
    """The text of ``path``, or every fortune file when no path is given."""
    if path:
        with open(path, encoding="utf-8", errors="replace") as handle:
            text = handle.read()
    else:
        files = sorted(f for f in glob.glob(os.path.join(FORTUNES, "*"))
                       if os.path.isfile(f) and not f.endswith((".dat", ".u8")))
        if not files:
            raise SystemExit(f"no text given and no fortune files under {FORTUNES}; "
                             f"pass --text FILE")
        parts = []
        for f in files:
            with open(f, encoding="utf-8", errors="replace") as handle:
                parts.append(handle.read())
        text = "".join(parts)
    text = text.replace("\r\n", "\n")
    if limit:
        # a slice from across the corpus keeps its variety
        step = max(1, len(text) // limit)
        blocks = [text[i:i + 2000] for i in range(0, len(text), 2000 * step)]
        text = "".join(blocks)[:limit]
    if len(text) < 1000:
        raise SystemExit(f"the text has {len(text)} characters; a language model needs more")
    return text


def windows(ids: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Non-overlapping windows: inputs ids[t] and targets ids[t + 1]."""
    n = (len(ids) - 1) // length
    x = ids[:n * length].reshape(n, length)
    y = ids[1:n * length + 1].reshape(n, length)
    return x, y


def make_spec(vocab: int, steps: int, units: int, embed: int) -> dict:
    return {
        "name": "char_lm",
        "inputs": {"ids": {"shape": [steps], "dtype": "int64"}},
        "outputs": ["logits"],
        "nodes": [
            {"name": "embed", "layer": "embedding", "inputs": ["ids"], "input_dim": vocab,
             "output_dim": embed},
            {"name": "lstm", "layer": "lstm", "inputs": ["embed"], "units": units,
             "return_sequences": True},
            {"name": "logits", "layer": "dense", "inputs": ["lstm"], "units": vocab},
        ],
    }


def sample(net_1step: deltaprop.Network, chars: list[str], start: str, n: int,
           temperature: float, rng: np.random.Generator) -> str:
    """Feed the prompt, then draw one character at a time; the LSTM state is carried
    from one call to the next by a ``deltaprop.CarriedState``."""
    index = {c: i for i, c in enumerate(chars)}
    out = list(start)
    state = deltaprop.CarriedState()
    logits = None
    for c in start:
        (logits,) = net_1step.forward(np.array([[index.get(c, 0)]]), state=state)
    for _ in range(n):
        assert logits is not None
        z = logits[0, -1].astype(np.float64) / temperature
        p = np.exp(z - z.max())
        p /= p.sum()
        k = int(rng.choice(len(p), p=p))
        out.append(chars[k])
        (logits,) = net_1step.forward(np.array([[k]]), state=state)
    return "".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=DefaultsHelpFormatter)
    parser.add_argument("--text", help="a UTF-8 text file (default: Debian's fortunes)")
    parser.add_argument("--chars", type=int, default=400_000,
                        help="characters of the text to train on")
    parser.add_argument("--epochs", type=int, default=3, help="passes over the text")
    parser.add_argument("--units", type=int, default=256, help="LSTM hidden units")
    parser.add_argument("--embed", type=int, default=32, help="character embedding size")
    parser.add_argument("--window", type=int, default=128, help="characters per sequence")
    parser.add_argument("--bptt", type=int, default=32, help="steps per truncated chunk")
    parser.add_argument("--batch-size", type=int, default=32, help="sequences per step")
    parser.add_argument("--lr", type=float, default=0.003, help="Adam's learning rate")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the weights, the shuffle and the sampling")
    parser.add_argument("--sample", type=int, default=400, help="characters to generate")
    parser.add_argument("--temperature", type=float, default=0.7,
                        help="sampling temperature (lower: safer, more repetitive)")
    parser.add_argument("--prompt", default="The ", help="text the sample starts from")
    args = parser.parse_args(argv)
    if args.window % args.bptt:
        parser.error("--window must be a multiple of --bptt")

    text = read_corpus(args.text, args.chars or None)
    chars = sorted(set(text))
    index = {c: i for i, c in enumerate(chars)}
    ids = np.array([index[c] for c in text], dtype=np.int64)
    split = int(0.9 * len(ids))
    x, y = windows(ids[:split], args.window)
    vx, vy = windows(ids[split:], args.window)
    print(f"corpus: {len(text)} characters, {len(chars)} distinct; {len(x)} training "
          f"windows of {args.window}, {len(vx)} held out; chunks of {args.bptt} steps")

    net = deltaprop.load_spec(make_spec(len(chars), args.bptt, args.units, args.embed),
                              seed=args.seed)
    loss = deltaprop.create_loss("softmax_cross_entropy")
    optimizer = deltaprop.create_optimizer("adam", lr=args.lr)
    uniform_bits = math.log2(len(chars))
    print(f"network: {net.n_params} parameters; a uniform guess costs "
          f"{uniform_bits:.2f} bits per character")

    def report(epoch: int, history: object) -> None:
        bits = history.loss[-1] / math.log(2)
        held = history.val_loss[-1] / math.log(2)
        print(f"epoch {epoch + 1}: train {bits:.3f} bits/char, held-out {held:.3f} "
              f"bits/char ({time.perf_counter() - start:.0f} s)", flush=True)

    start = time.perf_counter()
    net.fit(x, y, bptt=args.bptt, loss=loss, optimizer=optimizer, epochs=args.epochs,
            batch_size=args.batch_size, seed=args.seed, validation=(vx, vy),
            on_epoch_end=report, progress=False)
    held = net.evaluate(vx, vy, loss=loss, bptt=args.bptt)["loss"] / math.log(2)
    print(f"held-out: {held:.3f} bits per character")

    # the same network, one step at a time, for generation
    one_step = deltaprop.load_spec(make_spec(len(chars), 1, args.units, args.embed))
    for key, value in net.params.items():
        one_step.params[key][...] = value
    rng = np.random.default_rng(args.seed)
    print("sample:")
    print(sample(one_step, chars, args.prompt, args.sample, args.temperature, rng))
    return 0


if __name__ == "__main__":
    sys.exit(main())
