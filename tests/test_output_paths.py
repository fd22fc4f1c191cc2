"""Outputs that cannot be written end in one line naming the flag, before any work and writing nothing."""

import json
import os
from pathlib import Path

import pytest

from conftest import assert_one_line_error, run_script

# One epoch of a search with a benchmark, without sampled cells: all plot_trajectory.py needs to draw.
HISTORY = {"epoch": 0, "benchmark": {"cifar10": 90.0, "cifar100": 70.0, "ImageNet16-120": 40.0}}
SCRIPTS = ("visualize.py", "plot_trajectory.py")


@pytest.fixture
def unwritable_dir(tmp_path):
    """A folder in which this process cannot create files."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        if os.access(folder, os.W_OK):  # root
            folder = Path("/proc/sys")
            if not folder.is_dir() or os.access(folder, os.W_OK):
                pytest.skip("no folder here refuses this process's writes (root, without /proc/sys)")
        yield folder
    finally:
        (tmp_path / "read-only").chmod(0o755)  # so that pytest can remove it


def _refused(script, tmp_path, out, *expected):
    """Run `script` with `--out out` and valid input otherwise: one line holding `--out out` and `expected`."""
    command = ("DARTS-space", [script, "DrNAS_cifar10"])
    if script == "plot_trajectory.py":
        (tmp_path / "run").mkdir()
        (tmp_path / "run" / "history.jsonl").write_text(json.dumps(HISTORY) + "\n")
        command = ("201-space", [script, tmp_path / "run"])
    result = run_script(command[0], *command[1], "--out", out)
    assert_one_line_error(result.returncode, result.stderr, f"--out {out}", *expected)


@pytest.mark.parametrize("script", SCRIPTS)
def test_out_under_a_file_ends_in_one_line(tmp_path, script):
    afile = tmp_path / "afile"
    afile.write_text("kept\n")
    _refused(script, tmp_path, afile / "x.png", f"{afile} is a file, not a folder")
    assert afile.read_text() == "kept\n"


@pytest.mark.parametrize("script", SCRIPTS)
def test_out_in_an_unwritable_folder_ends_in_one_line(tmp_path, unwritable_dir, script):
    before = sorted(os.listdir(unwritable_dir))
    _refused(script, tmp_path, unwritable_dir / "x.png", f"cannot write in {unwritable_dir}")
    assert sorted(os.listdir(unwritable_dir)) == before
