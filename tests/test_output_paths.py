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


def _command(script, tmp_path, out):
    """`(space, command line)` running `script` with `--out out` and valid input otherwise."""
    if script == "visualize.py":
        return "DARTS-space", ["visualize.py", "DrNAS_cifar10", "--out", out]
    run = tmp_path / "run"
    run.mkdir()
    (run / "history.jsonl").write_text(json.dumps(HISTORY) + "\n")
    return "201-space", ["plot_trajectory.py", run, "--out", out]


@pytest.mark.parametrize("script", SCRIPTS)
def test_out_under_a_file_ends_in_one_line(tmp_path, script):
    afile = tmp_path / "afile"
    afile.write_text("kept\n")
    out = afile / "x.png"
    space, command = _command(script, tmp_path, out)
    result = run_script(space, *command)
    assert_one_line_error(result.returncode, result.stderr, f"--out {out}", f"{afile} is a file, not a folder")
    assert afile.read_text() == "kept\n"


@pytest.mark.parametrize("script", SCRIPTS)
def test_out_in_an_unwritable_folder_ends_in_one_line(tmp_path, unwritable_dir, script):
    before = sorted(os.listdir(unwritable_dir))
    out = unwritable_dir / "x.png"
    space, command = _command(script, tmp_path, out)
    result = run_script(space, *command)
    assert_one_line_error(result.returncode, result.stderr, f"--out {out}", f"cannot write in {unwritable_dir}")
    assert sorted(os.listdir(unwritable_dir)) == before
