"""Shared pytest fixtures: load one search space's modules without name collisions.

Both folders define `operations`, `model_search`, `architect`, `genotypes`, `utils`,
... . `load_space("201-space", "model_search")` drops every module that lives in either
folder from `sys.modules`, puts the folder first on `sys.path`, imports the names and
drops them again afterwards, so a test always sees the folder it asked for.
"""

import importlib
import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SPACES = {"201-space": ROOT / "201-space", "DARTS-space": ROOT / "DARTS-space"}
SHARED_TABLE = ROOT.parent / "shared" / "data" / "nb201_test_accuracy.csv"

# Tests are many small CPU jobs; one thread each avoids oversubscribing 2-core machines.
torch.set_num_threads(1)


def _drop_space_modules():
    folders = [str(p) for p in SPACES.values()]
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None) or ""
        if any(path.startswith(folder + os.sep) for folder in folders):
            del sys.modules[name]


@pytest.fixture
def load_space(monkeypatch):
    """`load_space(space, *names)` -> the imported modules (one, or a tuple)."""

    def load(space, *names):
        _drop_space_modules()
        monkeypatch.syspath_prepend(str(SPACES[space]))
        modules = tuple(importlib.import_module(name) for name in names)
        return modules[0] if len(modules) == 1 else modules

    yield load
    _drop_space_modules()


@pytest.fixture
def nb201_table():
    """Path of the shared NAS-Bench-201 accuracy table; skips when this clone lacks it."""
    if not SHARED_TABLE.is_file():
        pytest.skip(f"NAS-Bench-201 table not found at {SHARED_TABLE} (only in the project's workspace)")
    return SHARED_TABLE


def run_script(space, *args, timeout=600, env=None):
    """Run a script of a space as a user would (subprocess, cwd = the folder)."""
    import subprocess

    full_env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0", **(env or {}))
    return subprocess.run(
        [sys.executable, *map(str, args)],
        cwd=SPACES[space],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )
