"""Files kept identical in both folders: the run engine and its parts, helpers, speed flags, device data, net2wider,
the data helpers of both datasets.py and the table helpers of both report.py."""

import pytest

from conftest import SPACES

SHARED = [
    "utils.py",
    "engine.py",
    "run_flags.py",
    "progress.py",
    "divergence.py",
    "streams.py",
    "image_files.py",
    "accel.py",
    "device_data.py",
    "run_folder.py",
    "net2wider.py",
    "stages.py",
    "data_common.py",
    "report_tables.py",
]


@pytest.mark.parametrize("name", SHARED)
def test_shared_files_are_identical_in_both_folders(name):
    first, second = (SPACES[space] / name for space in ("201-space", "DARTS-space"))
    assert first.read_text() == second.read_text(), f"edit 201-space/{name} and copy it to DARTS-space/ (or back)"
