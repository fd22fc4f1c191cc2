"""Shared pytest fixtures."""

import contextlib
import importlib
import json
import logging
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SPACES = {"201-space": ROOT / "201-space", "DARTS-space": ROOT / "DARTS-space"}
# The smallest 201 network on the synthetic set, for the scripts' runs in tests.
TINY_201 = "--dataset synthetic --init_channels 4 --layers 1 --batch_size 32 --workers 0 --device cpu".split()
# The smallest DARTS train.py run (add --dataset and --layers): one epoch of two batches of 8.
TINY_DARTS_TRAIN = "--init_channels 4 --batch_size 8 --epochs 1 --max_steps_per_epoch 2 --workers 0 --device cpu"
TINY_DARTS_TRAIN = TINY_DARTS_TRAIN.split()

# Tests are many small CPU jobs; one thread each avoids oversubscribing 2-core machines.
torch.set_num_threads(1)


def _drop_space_modules():
    """Forget the spaces' modules, as a new process would; the run-folder locks an in-process run held are let go."""
    held = getattr(sys.modules.get("runkit.run_folder"), "_HELD", {})
    for lock in held.values():
        lock.close()
    held.clear()
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
    return SPACES["201-space"] / "tables" / "nb201_test_accuracy.csv.gz"


INTERRUPTED_RUN = Path(__file__).resolve().parent / "interrupted_run.py"


def script_env(**extra):
    """The environment of a script run by a test: one thread each (tests run side by side), fixed hashing."""
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0", **extra)


def run_script(space, *args, timeout=600, env=None):
    """Run a script of a space as a user would (subprocess, cwd = the folder)."""
    argv, env = [sys.executable, *map(str, args)], script_env(**(env or {}))
    return subprocess.run(argv, cwd=SPACES[space], capture_output=True, text=True, timeout=timeout, env=env)


def popen_script(space, *args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, new_session=False):
    """Start a script of a space without waiting (for runs side by side, or to signal it)."""
    argv, streams = [sys.executable, *map(str, args)], dict(stdout=stdout, stderr=stderr, text=True)
    return subprocess.Popen(argv, cwd=SPACES[space], env=script_env(), start_new_session=new_session, **streams)


def wait_for_log(proc, log, needle, deadline):
    """Wait until `needle` shows in the run's log.txt (written unbuffered, unlike a redirected stdout)."""
    while time.monotonic() < deadline:
        if log.is_file() and needle in log.read_text():
            return
        assert proc.poll() is None, f"the run ended (exit {proc.returncode}) before {needle!r} was logged"
        time.sleep(0.05)
    raise AssertionError(f"{needle!r} not logged in time")


def assert_one_line_error(returncode, stderr, *expected):
    """The bad-input contract: a non-zero exit, one line on stderr holding `expected`, no traceback."""
    lines = stderr.strip().splitlines()
    assert returncode not in (0, None) and "Traceback" not in stderr, stderr[-3000:]
    assert len(lines) == 1 and all(text in lines[0] for text in expected), stderr[-3000:]
    return lines[0]


def refusal(capsys, main, *argv):
    """Run a script's `main(argv)` in process: it must exit 2 with one line on stderr, which is returned."""
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in argv])
    assert exit_info.value.code == 2
    return assert_one_line_error(exit_info.value.code, capsys.readouterr().err)


def image_batch(n=2, size=8, seed=0, dtype=torch.float32, classes=10):
    """`n` random images (`size` x `size`) and their labels, the same for the same seed."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=gen, dtype=dtype), torch.randint(classes, (n,), generator=gen)


def flat(tensors):
    """The tensors, detached, as one new vector."""
    return torch.cat([t.detach().reshape(-1) for t in tensors]).clone()


def load_ckpt(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def read_history(run_dir):
    """The records of a run's history.jsonl without the wall-clock fields (they differ between any two runs)."""
    lines, timing = (run_dir / "history.jsonl").read_text().splitlines(), ("time_s", "wall_s", "device_hours")
    return [{k: v for k, v in json.loads(line).items() if k not in timing} for line in lines if line.strip()]


def tensors(tree, prefix=""):
    """{path: tensor} of every tensor in nested dicts, lists and tuples."""
    if torch.is_tensor(tree):
        return {prefix: tree}
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, (list, tuple)) else []
    return {k: v for key, value in items for k, v in tensors(value, f"{prefix}/{key}").items()}


@contextlib.contextmanager
def forbid_host_reads():
    """Inside the block, reading a tensor's value on the host (`.item()`, `bool`, ...) raises."""

    def host_read(*args, **kwargs):
        raise AssertionError("a tensor value was read on the host")

    names = ("__bool__", "item", "tolist", "__int__", "__float__")
    saved = {name: getattr(torch.Tensor, name) for name in names}
    for name in names:
        setattr(torch.Tensor, name, host_read)
    try:
        yield
    finally:
        for name, method in saved.items():
            setattr(torch.Tensor, name, method)


def write_tiny_cifar(root, name="cifar10", per_batch=2, seed=0, labels=None):
    """A CIFAR tree in the original pickled layout (`cifar-10-batches-py/` or `cifar-100-python/`) under `root`."""
    rng = np.random.default_rng(seed)
    folder, files, key, classes = root / "cifar-100-python", ["train", "test"], "fine_labels", 100
    if name == "cifar10":
        folder, key, classes = root / "cifar-10-batches-py", "labels", 10
        files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    folder.mkdir(parents=True, exist_ok=True)
    for file in files:
        data = rng.integers(0, 256, size=(per_batch, 3 * 32 * 32), dtype=np.uint8)
        with open(folder / file, "wb") as f:
            pickle.dump({"data": data, key: labels or rng.integers(0, classes, per_batch).tolist()}, f)
    return folder


@contextlib.contextmanager
def kept_logging():
    """`Run.open` points the root logger at the run's log.txt; put pytest's handlers back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
            handler.close()
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)


@pytest.fixture
def restore_logging():
    with kept_logging():
        yield


def main_in_process(space, script, argv):
    """A script's `main(argv)` in this process as a run of its own: the space's modules imported afresh and dropped
    after (its run-folder lock let go, as at a process's end), pytest's logging put back."""
    with kept_logging(), pytest.MonkeyPatch.context() as patch:
        _drop_space_modules()
        patch.syspath_prepend(str(SPACES[space]))
        try:
            importlib.import_module(script).main([str(arg) for arg in argv])
        finally:
            _drop_space_modules()


def write_tiny_imagenet(root):
    """An ImageFolder tree of 32x32 PNGs in 3 classes (6 training, 3 validation images each) at `root`."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", 6), ("val", 3)):
        for label in range(3):
            folder = root / split / f"n0{label}"
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = (rng.random((32, 32, 3)) * 60 + 80 * label).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


@pytest.fixture
def tiny_imagenet(tmp_path):
    return write_tiny_imagenet(tmp_path / "imagenet")


def pytest_collection_modifyitems(config, items):
    """Tests marked `cuda` run where PyTorch sees a CUDA GPU, all in one pytest-xdist worker (they share the GPU runs
    of `cuda_runs`), and skip, saying so, everywhere else. test_compile.py runs first: inductor's first compile takes
    minutes on a fresh machine, which side by side (`-n auto`) the other tests then fill."""
    items.sort(key=lambda item: item.path.name != "test_compile.py")  # a stable sort: the order otherwise kept
    reason = f"no CUDA GPU: torch {torch.__version__} (CUDA {torch.version.cuda or 'none in this build'}) sees none; "
    reason += "these tests run on a GPU machine (.ci/gpu)"
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(pytest.mark.xdist_group("cuda"))
            if not torch.cuda.is_available():
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def cuda_runs(tmp_path_factory):
    """The CUDA tier's background script runs (tests/cuda_jobs.py), started together: name -> `cuda_jobs.Run`."""
    import cuda_jobs

    started = cuda_jobs.start(tmp_path_factory.mktemp("cuda_runs"))
    yield started
    cuda_jobs.stop(started)


@pytest.fixture
def start_cuda_runs(request):
    """Start `cuda_runs` now if this session reads them (tests/test_cuda_scripts.py does)."""
    if any("cuda_runs" in getattr(item, "fixturenames", ()) for item in request.session.items):
        request.getfixturevalue("cuda_runs")
