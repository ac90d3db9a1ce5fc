"""The SGF reader, the board's captures, the plane encoding and the data builder of the
Go example (examples/go/sgf_dataset.py, not part of the installed package), on small
SGF files committed under tests/fixtures/go (no gnugo needed)."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from deltaprop.data import load_data
from deltaprop.errors import DataError

FIXTURES = Path(__file__).parent / "fixtures" / "go"
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "go" / "sgf_dataset.py"


def _load_example() -> ModuleType:
    """The example module from the checkout, registered as ``sgf_dataset`` (the name
    examples/go/evaluate.py imports it by)."""
    if "sgf_dataset" in sys.modules:
        return sys.modules["sgf_dataset"]
    spec = importlib.util.spec_from_file_location("sgf_dataset", EXAMPLE)
    assert spec is not None and spec.loader is not None, EXAMPLE
    module = importlib.util.module_from_spec(spec)
    sys.modules["sgf_dataset"] = module
    spec.loader.exec_module(module)
    return module


sgf = _load_example()
BLACK, WHITE, Board = sgf.BLACK, sgf.WHITE, sgf.Board
build_dataset, game_examples, main = sgf.build_dataset, sgf.game_examples, sgf.main
parse_sgf, read_game, symmetries = sgf.parse_sgf, sgf.read_game, sgf.symmetries
most_common_point_accuracy, top_k_accuracy = sgf.most_common_point_accuracy, sgf.top_k_accuracy

#: the final position of gnugo_captures_9x9.sgf as GNU Go itself shows it after
#: `loadsgf` + `showboard` (X black, O white, top row first): 6 + 4 stones captured
GNUGO_FINAL = """
. O X X O O . O .
. O X O O . O . .
. X X X X O . . .
. . X X O . . . .
. . . X O O O O .
. . . X O O X O .
. . . X X O X O O
. . X O X X X O O
. . . . . . X X O
"""


def _board_from_text(text: str) -> np.ndarray:
    symbols = {".": 0, "X": BLACK, "O": WHITE}
    return np.array([[symbols[s] for s in line.split()] for line in text.strip().splitlines()])


def test_replaying_a_gnugo_game_with_captures_matches_gnugos_board():
    (planes, moves) = read_game(FIXTURES / "gnugo_captures_9x9.sgf")
    games = parse_sgf((FIXTURES / "gnugo_captures_9x9.sgf").read_text())
    board = Board(9)
    captured = 0
    for node in games[0]:
        for key, color in (("B", BLACK), ("W", WHITE)):
            if key in node and node[key][0] not in ("", "tt"):
                col, row = ord(node[key][0][0]) - 97, ord(node[key][0][1]) - 97
                captured += board.place(color, row, col)
    assert captured == 10
    np.testing.assert_array_equal(board.grid, _board_from_text(GNUGO_FINAL))
    assert planes.shape == (len(moves), 3, 9, 9)


def test_capture_is_applied_and_planes_are_from_the_movers_view():
    planes, moves = read_game(FIXTURES / "capture_9x9.sgf")
    # B[ba] W[aa] B[ab] W[ee] B[aa]; the final pass W[] is no example
    assert moves.tolist() == [1, 0, 9, 40, 0]
    before_capture = planes[2]          # black to play ab: white stone on aa
    assert before_capture[1, 0, 0] == 1 and before_capture[0, 0, 1] == 1
    after = planes[3]                   # white to play ee: aa is empty again
    assert after[0].sum() == 0          # white (to move) has no stone left
    assert after[1, 0, 1] == 1 and after[1, 1, 0] == 1
    assert after[2, 0, 0] == 1
    np.testing.assert_array_equal(planes.sum(axis=1), np.ones((5, 9, 9)))
    assert planes[4][0, 0, 0] == 0 and planes[4][2, 0, 0] == 1  # black replays aa


def test_main_line_setup_stones_escapes_and_variations():
    games = parse_sgf((FIXTURES / "variations_9x9.sgf").read_text())
    assert len(games) == 1
    root = games[0][0]
    assert "escaped ] bracket" in root["C"][0]
    planes, moves = game_examples(games[0])
    # main line: B cc, W dd, B ee, W ff (the first variation at each fork)
    assert moves.tolist() == [2 * 9 + 2, 3 * 9 + 3, 4 * 9 + 4, 5 * 9 + 5]
    assert planes[0][0, 8, 8] == 1      # AB[ii] is black's own stone before B[cc]
    assert planes[1][1, 8, 8] == 1      # and the opponent's from white's view


def test_handicap_setup_pass_and_colour_from_the_move():
    planes, moves = read_game(FIXTURES / "handicap_9x9.sgf")
    assert moves.tolist() == [4 * 9 + 4, 4 * 9 + 2, 2 * 9 + 4]   # W[tt] is a pass
    assert planes[0][1, 2, 2] == 1 and planes[0][1, 6, 6] == 1   # white to move first


def test_random_opening_moves_can_be_excluded():
    _, all_moves = read_game(FIXTURES / "gnugo_selfplay_9x9.sgf")
    _, chosen = read_game(FIXTURES / "gnugo_selfplay_9x9.sgf", exclude_comment="random move")
    assert len(all_moves) - len(chosen) == 8


@pytest.mark.parametrize("text", ["(;SZ[9];B[aa]", ";B[aa])", "(;SZ[9];B[zz])",
                                  "(;SZ[9];B[aa];W[aa])", "(;SZ[9];B[aa", "(;SZ[9]B)", ""])
def test_bad_sgf_is_a_data_error(text):
    with pytest.raises(DataError):
        games = parse_sgf(text)
        game_examples(games[0])


def test_symmetries_move_stones_and_labels_together():
    planes, moves = read_game(FIXTURES / "gnugo_selfplay_9x9.sgf")
    x, y = symmetries(planes, moves, 9)
    assert x.shape == (8 * len(moves), 3, 9, 9)
    for k in range(8):
        block = slice(k * len(moves), (k + 1) * len(moves))
        for i in (0, 10, len(moves) - 1):
            nxt = planes[i + 1] if i + 1 < len(moves) else None
            if nxt is None:
                continue
            # the label point is empty before the move in every symmetric copy
            r, c = divmod(int(y[block][i]), 9)
            assert x[block][i][2, r, c] == 1
    np.testing.assert_array_equal(x[: len(moves)], planes)
    np.testing.assert_array_equal(y[: len(moves)], moves)


def test_build_dataset_splits_by_game_and_loads_as_training_data(tmp_path):
    folder = tmp_path / "sgf"
    folder.mkdir()
    for name in ("gnugo_selfplay_9x9", "gnugo_captures_9x9", "capture_9x9", "variations_9x9"):
        shutil.copy(FIXTURES / f"{name}.sgf", folder)
    out = tmp_path / "go.npz"
    arrays = build_dataset(folder, out, test_fraction=0.25, augment=True)
    assert not set(arrays["game_train"]) & set(arrays["game_test"])
    assert len(set(arrays["game_test"])) == 1
    assert len(arrays["y_train"]) % 8 == 0
    data = load_data(out)
    assert data.x_train.shape[1:] == (3, 9, 9) and data.x_train.dtype == np.float32
    assert set(np.unique(data.x_train)) <= {0.0, 1.0}
    assert data.y_train.max() < 81
    assert main([str(folder), str(tmp_path / "again.npz")]) == 0


def test_build_dataset_errors(tmp_path):
    with pytest.raises(DataError, match=r"no \.sgf"):
        build_dataset(tmp_path)
    shutil.copy(FIXTURES / "capture_9x9.sgf", tmp_path)
    with pytest.raises(DataError, match="too few"):
        build_dataset(tmp_path)
    with pytest.raises(DataError, match="expected 19x19"):
        build_dataset(tmp_path, size=19)


def test_accuracy_helpers():
    scores = np.array([[0.1, 0.5, 0.4], [0.8, 0.1, 0.1]])
    labels = np.array([2, 0])
    assert top_k_accuracy(scores, labels, 1) == 0.5
    assert top_k_accuracy(scores, labels, 2) == 1.0
    assert most_common_point_accuracy(np.array([1, 1, 2]), np.array([1, 2, 1, 0])) == 0.5
