"""The two folders' `utils.py` are one file kept in two places (STYLE.md section 8)."""

from conftest import SPACES


def test_utils_copies_are_identical():
    first, second = (SPACES[space] / "utils.py" for space in ("201-space", "DARTS-space"))
    assert first.read_text() == second.read_text(), "edit 201-space/utils.py and copy it to DARTS-space/ (or back)"
