"""Generate Go games offline by GNU Go self-play, one SGF file per game.

    python examples/go/generate_games.py OUT_DIR --games 500 [--size 9] [--level 1]

Each game uses its own seed (``--first-seed`` + i), so a run is reproducible and
can be resumed: files that already exist are skipped. GNU Go is Debian's ``gnugo``
package, installed off the PATH as /usr/games/gnugo.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

DEFAULT_GNUGO = "/usr/games/gnugo"


def find_gnugo(explicit: str | None) -> str:
    for candidate in (explicit, shutil.which("gnugo"), DEFAULT_GNUGO):
        if candidate and Path(candidate).exists():
            return candidate
    sys.exit("gnugo not found: install Debian's gnugo package or pass --gnugo PATH")


def play_one(gnugo: str, out: Path, seed: int, size: int, level: int, max_moves: int
             ) -> Path:
    """One self-play game: ``--benchmark N`` lets GNU Go play both sides, at most N moves
    or until both pass. Its first few moves are random (commented "random move" in the
    SGF), which spreads the games apart."""
    path = out / f"game_{size}x{size}_{seed:06d}.sgf"
    if path.exists() and path.stat().st_size > 0:
        return path
    tmp = path.with_suffix(".sgf.part")
    subprocess.run([gnugo, "--benchmark", str(max_moves), "--boardsize", str(size),
                    "--level", str(level), "--seed", str(seed), "-o", str(tmp)],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   stdin=subprocess.DEVNULL, timeout=600)
    tmp.replace(path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="folder for the SGF files")
    parser.add_argument("--games", type=int, default=500)
    parser.add_argument("--size", type=int, default=9)
    parser.add_argument("--level", type=int, default=1)
    parser.add_argument("--max-moves", type=int, default=300)
    parser.add_argument("--first-seed", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=2, help="games played at once")
    parser.add_argument("--gnugo", help="path of the gnugo binary")
    args = parser.parse_args(argv)
    gnugo = find_gnugo(args.gnugo)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = range(args.first_seed, args.first_seed + args.games)
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        def play(seed: int) -> Path:
            return play_one(gnugo, out, seed, args.size, args.level, args.max_moves)

        for done, _ in enumerate(pool.map(play, seeds), 1):
            if done % 50 == 0 or done == args.games:
                print(f"{done}/{args.games} games, {time.perf_counter() - start:.0f} s",
                      flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
