"""Go move prediction data: an SGF reader, a board that applies captures, and a builder
that turns a folder of SGF game records into (board planes, next move) pairs.

A position is encoded as three planes of the board, from the view of the player to
move: their stones, the opponent's stones, and the empty points. The label of a
position is the point played next, ``row * size + column``. Passes are played on the
board (the turn changes) but are not examples.

    python examples/go/sgf_dataset.py SGF_FOLDER OUT.npz [--test-fraction 0.2] [--symmetries]

The ``.npz`` holds ``x_train, y_train, x_test, y_test`` and ``game_train, game_test``
(the game index of each example), split by game so no game is on both sides, and is
read by ``deltaprop train --data OUT.npz``.

This is an example built on deltaprop, not part of the framework. ``evaluate.py`` next
to it imports the accuracy helpers from here.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from deltaprop.errors import DataError

EMPTY, BLACK, WHITE = 0, 1, 2
COLORS = {"B": BLACK, "W": WHITE}

Node = dict[str, list[str]]


# --------------------------------------------------------------------------------------
# SGF
# --------------------------------------------------------------------------------------
def parse_sgf(text: str, source: str = "SGF") -> list[list[Node]]:
    """The main line of each game in an SGF collection: a list of nodes, each a dict of
    property name to values. Variations other than the first are skipped. Iterative,
    so deeply nested variations cannot exhaust the stack."""
    games: list[list[Node]] = []
    # one entry per open '(': [on the main line, has a child tree been seen]
    stack: list[list[bool]] = []
    current: list[Node] = []
    node: Node | None = None
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "(":
            on_main = not stack or (stack[-1][0] and not stack[-1][1])
            if stack:
                stack[-1][1] = True
            stack.append([on_main, False])
            node = None
            i += 1
        elif ch == ")":
            if not stack:
                raise DataError(f"{source}: unbalanced ')' at offset {i}")
            stack.pop()
            node = None
            if not stack:
                if not current:
                    raise DataError(f"{source}: a game tree with no nodes at offset {i}")
                games.append(current)
                current = []
            i += 1
        elif ch == ";":
            if not stack:
                raise DataError(f"{source}: node outside a game tree at offset {i}")
            node = {}
            if stack[-1][0]:
                current.append(node)
            i += 1
        elif ch.isalpha():
            j = i
            while j < n and text[j].isalpha():
                j += 1
            ident = "".join(c for c in text[i:j] if c.isupper())
            if node is None:
                raise DataError(f"{source}: property {text[i:j]!r} outside a node at "
                                f"offset {i}")
            values: list[str] = []
            k = j
            while True:
                while k < n and text[k].isspace():
                    k += 1
                if k >= n or text[k] != "[":
                    break
                value, k = _read_value(text, k + 1, source)
                values.append(value)
            if not values:
                raise DataError(f"{source}: property {ident!r} at offset {i} has no value")
            node.setdefault(ident, []).extend(values)
            i = k
        elif ch.isspace():
            i += 1
        else:
            raise DataError(f"{source}: unexpected character {ch!r} at offset {i}")
    if stack:
        raise DataError(f"{source}: a game tree is not closed (missing ')')")
    if not games:
        raise DataError(f"{source}: no game found")
    return games


def _read_value(text: str, i: int, source: str) -> tuple[str, int]:
    """A property value after '[': backslash escapes the next character."""
    out = []
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == "\\":
            if i + 1 < n:
                out.append(text[i + 1])
            i += 2
        elif ch == "]":
            return "".join(out), i + 1
        else:
            out.append(ch)
            i += 1
    raise DataError(f"{source}: a property value is not closed (missing ']')")


def sgf_point(value: str, size: int, source: str = "SGF") -> tuple[int, int] | None:
    """(row, column) of an SGF point such as "cd" (column c, row d), or None for a pass
    ("" or "tt" on boards up to 19x19)."""
    if value == "" or (value == "tt" and size <= 19):
        return None
    if len(value) != 2 or not value.isalpha():
        raise DataError(f"{source}: bad point {value!r}")
    col, row = ord(value[0]) - ord("a"), ord(value[1]) - ord("a")
    if not (0 <= row < size and 0 <= col < size):
        raise DataError(f"{source}: point {value!r} is off the {size}x{size} board")
    return row, col


# --------------------------------------------------------------------------------------
# the board
# --------------------------------------------------------------------------------------
@dataclass
class Board:
    """A Go board of ``size`` x ``size`` points that removes captured stones."""

    size: int = 19
    grid: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        if not 2 <= self.size <= 25:
            raise DataError(f"board size {self.size} is outside 2..25")
        self.grid = np.zeros((self.size, self.size), dtype=np.int8)

    def neighbors(self, row: int, col: int) -> Iterable[tuple[int, int]]:
        if row > 0:
            yield row - 1, col
        if row < self.size - 1:
            yield row + 1, col
        if col > 0:
            yield row, col - 1
        if col < self.size - 1:
            yield row, col + 1

    def group(self, row: int, col: int) -> tuple[list[tuple[int, int]], bool]:
        """The stones connected to (row, col) and whether the group has a liberty."""
        color = self.grid[row, col]
        stones, seen, frontier, free = [], {(row, col)}, [(row, col)], False
        while frontier:
            point = frontier.pop()
            stones.append(point)
            for nb in self.neighbors(*point):
                value = self.grid[nb]
                if value == EMPTY:
                    free = True
                elif value == color and nb not in seen:
                    seen.add(nb)
                    frontier.append(nb)
        return stones, free

    def place(self, color: int, row: int, col: int) -> int:
        """Play a stone: remove opponent groups left without liberties, then the own
        group if it has none (suicide). Returns the number of stones captured."""
        if self.grid[row, col] != EMPTY:
            raise DataError(f"point ({row}, {col}) is already occupied")
        self.grid[row, col] = color
        captured = 0
        other = BLACK + WHITE - color
        for nb in self.neighbors(row, col):
            if self.grid[nb] == other:
                stones, free = self.group(*nb)
                if not free:
                    for point in stones:
                        self.grid[point] = EMPTY
                    captured += len(stones)
        stones, free = self.group(row, col)
        if not free:
            for point in stones:
                self.grid[point] = EMPTY
        return captured

    def planes(self, to_move: int) -> np.ndarray:
        """(3, size, size) float32: stones of the player to move, opponent, empty."""
        other = BLACK + WHITE - to_move
        return np.stack([self.grid == to_move, self.grid == other,
                         self.grid == EMPTY]).astype(np.float32)


def game_examples(nodes: Sequence[Node], source: str = "SGF", *,
                  exclude_comment: str | None = None, size: int | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(planes (n, 3, size, size), moves (n,)) of one game's main line.

    The player to move is the colour of the move itself (B or W), so handicap games
    and consecutive moves of one colour need no special case. Setup stones (AB, AW,
    AE) are applied; a move whose comment contains
    ``exclude_comment`` (GNU Go marks its opening "random move"s) is played but is not
    an example.
    """
    root = nodes[0]
    try:
        board_size = int(root.get("SZ", ["19"])[0].split(":")[0])
    except ValueError:
        raise DataError(f"{source}: bad board size {root.get('SZ')!r}") from None
    if size is not None and board_size != size:
        raise DataError(f"{source}: a {board_size}x{board_size} game, expected {size}x{size}")
    board = Board(board_size)
    planes, moves = [], []
    for index, node in enumerate(nodes):
        where = f"{source} node {index}"
        for key, color in (("AB", BLACK), ("AW", WHITE), ("AE", EMPTY)):
            for value in node.get(key, []):
                point = sgf_point(value, board_size, where)
                if point is not None:
                    board.grid[point] = color
        for key, color in COLORS.items():
            if key not in node:
                continue
            point = sgf_point(node[key][0], board_size, where)
            if point is not None:
                comment = " ".join(node.get("C", []))
                if not (exclude_comment and exclude_comment in comment):
                    planes.append(board.planes(color))
                    moves.append(point[0] * board_size + point[1])
                try:
                    board.place(color, *point)
                except DataError as exc:
                    raise DataError(f"{where}: {exc}") from None
    if not planes:
        return (np.zeros((0, 3, board_size, board_size), np.float32),
                np.zeros(0, np.int64))
    return np.stack(planes), np.asarray(moves, dtype=np.int64)


def read_game(path: str | os.PathLike[str], **kwargs: object) -> tuple[np.ndarray, np.ndarray]:
    """The examples of the first game of an SGF file."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8", errors="replace")
    except OSError as exc:
        raise DataError(f"SGF file {str(path)!r}: cannot read it ({exc.strerror})") from None
    games = parse_sgf(text, f"SGF file {str(path)!r}")
    return game_examples(games[0], f"SGF file {str(path)!r}", **kwargs)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------
# symmetries and the data set
# --------------------------------------------------------------------------------------
def symmetries(planes: np.ndarray, moves: np.ndarray, size: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """The 8 rotations and reflections of each position, moves transformed alike."""
    ids = np.arange(size * size).reshape(size, size)
    xs, ys = [], []
    for flip in (False, True):
        for turns in range(4):
            def move(a: np.ndarray, flip: bool = flip, turns: int = turns) -> np.ndarray:
                a = np.rot90(a, turns, axes=(-2, -1))
                return np.flip(a, axis=-1) if flip else a
            where = move(ids)                   # where[r, c] = old index now at (r, c)
            new_index = np.empty(size * size, dtype=np.int64)
            new_index[where.reshape(-1)] = np.arange(size * size)
            xs.append(np.ascontiguousarray(move(planes)))
            ys.append(new_index[moves])
    return np.concatenate(xs), np.concatenate(ys)


def build_dataset(folder: str | os.PathLike[str], out: str | os.PathLike[str] | None = None,
                  *, test_fraction: float = 0.2, seed: int = 0, size: int | None = None,
                  augment: bool = False, exclude_comment: str | None = None
                  ) -> dict[str, np.ndarray]:
    """Every ``*.sgf`` in ``folder`` (sorted) to train/test arrays split by game (a
    seeded shuffle of the games); ``augment`` adds the 8 symmetries to the training
    set only. Writes ``out`` (.npz) when given; returns the arrays."""
    folder = Path(folder)
    paths = sorted(folder.glob("*.sgf"))
    if not paths:
        raise DataError(f"SGF folder {str(folder)!r}: no .sgf files")
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test_fraction must be between 0 and 1, got {test_fraction}")
    games = [read_game(p, exclude_comment=exclude_comment, size=size) for p in paths]
    sizes = {g[0].shape[-1] for g in games if len(g[0])}
    if len(sizes) > 1:
        raise DataError(f"SGF folder {str(folder)!r}: games of several board sizes "
                        f"{sorted(sizes)}; pass size= to insist on one")
    order = np.random.default_rng(seed).permutation(len(games))
    n_test = max(1, round(len(games) * test_fraction))
    if n_test >= len(games):
        raise DataError(f"SGF folder {str(folder)!r}: {len(games)} game(s) are too few to "
                        f"split into train and test")
    split = {"test": np.sort(order[:n_test]), "train": np.sort(order[n_test:])}
    board = sizes.pop() if sizes else (size or 19)
    arrays: dict[str, np.ndarray] = {}
    for name, chosen in split.items():
        xs = [games[i][0] for i in chosen]
        ys = [games[i][1] for i in chosen]
        gid = [np.full(len(games[i][1]), i, dtype=np.int64) for i in chosen]
        x = np.concatenate(xs) if xs else np.zeros((0, 3, board, board), np.float32)
        y = np.concatenate(ys) if ys else np.zeros(0, np.int64)
        g = np.concatenate(gid) if gid else np.zeros(0, np.int64)
        if augment and name == "train":
            x, y = symmetries(x, y, board)
            g = np.tile(g, 8)
        arrays[f"x_{name}"], arrays[f"y_{name}"], arrays[f"game_{name}"] = x, y, g
    if out is not None:
        np.savez_compressed(out, **arrays)  # type: ignore[arg-type]
    return arrays


def most_common_point_accuracy(y_train: np.ndarray, y_test: np.ndarray, k: int = 1) -> float:
    """The baseline: always answer the k points played most often in training."""
    counts = np.bincount(y_train)
    top = np.argsort(-counts, kind="stable")[:k]
    return float(np.isin(y_test, top).mean()) if len(y_test) else float("nan")


def top_k_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of rows whose label is among the k highest scores."""
    top = np.argpartition(-scores, kth=min(k, scores.shape[1]) - 1, axis=1)[:, :k]
    return float((top == labels[:, None]).any(axis=1).mean())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sgf_dataset.py",
                                     description="Build a Go move-prediction .npz from SGF "
                                                 "files, split by game.")
    parser.add_argument("folder", help="folder of .sgf files")
    parser.add_argument("out", help="the .npz to write")
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, help="insist on this board size")
    parser.add_argument("--symmetries", action="store_true",
                        help="add the 8 rotations/reflections of each training position")
    parser.add_argument("--exclude-comment", default=None,
                        help='moves whose comment contains this are not examples '
                             '(GNU Go self-play: "random move")')
    args = parser.parse_args(argv)
    try:
        arrays = build_dataset(args.folder, args.out, test_fraction=args.test_fraction,
                               seed=args.seed, size=args.size, augment=args.symmetries,
                               exclude_comment=args.exclude_comment)
    except DataError as exc:
        print(f"sgf_dataset.py: error: {exc}", file=sys.stderr)
        return 2
    n_games = {k: len(np.unique(v)) for k, v in arrays.items() if k.startswith("game_")}
    print(f"{args.out}: {len(arrays['y_train'])} train positions "
          f"({n_games['game_train']} games), {len(arrays['y_test'])} test positions "
          f"({n_games['game_test']} games), planes {arrays['x_train'].shape[1:]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
