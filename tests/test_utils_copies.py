"""Files kept identical in both folders: `utils.py`, the run engine `engine.py` and the speed flags `accel.py`."""

import pytest

from conftest import SPACES


@pytest.mark.parametrize("name", ["utils.py", "engine.py", "accel.py"])
def test_shared_files_are_identical_in_both_folders(name):
    first, second = (SPACES[space] / name for space in ("201-space", "DARTS-space"))
    assert first.read_text() == second.read_text(), f"edit 201-space/{name} and copy it to DARTS-space/ (or back)"
