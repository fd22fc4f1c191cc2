"""Resume without retyping, and run folders that nothing a user types can rewind or pollute."""

import functools
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from argparse import Namespace

import pytest
import torch

from conftest import SPACES, TINY_201, assert_one_line_error, main_in_process, run_script, script_env

# (folder, module, get_parser's arguments, the script's name): every script that trains and checkpoints.
SCRIPTS = [
    ("201-space", "train_search", {"progressive": False}, "train_search"),
    ("201-space", "train_search", {"progressive": True}, "train_search_progressive"),
    ("201-space", "train", {}, "train"), ("DARTS-space", "train_search", {}, "train_search"),
    ("DARTS-space", "train_search_imagenet", {}, "train_search_imagenet"), ("DARTS-space", "train", {}, "train"),
    ("DARTS-space", "train_imagenet", {}, "train_imagenet"),
]  # fmt: skip
SCRIPT_IDS = [f"{space}-{name}" for space, _, _, name in SCRIPTS]
# A 201 train.py run of two steps an epoch.
T201 = ["train.py", *TINY_201, "--max_steps_per_epoch", "2", "--threads", "1"]


def _write_checkpoint(engine, utils, parser, script, path, epoch, epochs, **flags):
    """A checkpoint of `script` after `epoch` of `epochs` epochs, made with the default flags but `flags`."""
    saved = {**vars(parser.parse_args([])), **flags, "script": script}
    state = dict(version=engine.CHECKPOINT_VERSION, space=sys.modules["genotypes"].SPACE, epoch=epoch, epochs=epochs)
    utils.save_checkpoint({**state, "step": 0, "args": saved}, path)


def _snapshot(folder):
    """Every file under `folder` with its bytes: what must stay as it was."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(("space", "module", "kwargs", "script"), SCRIPTS, ids=SCRIPT_IDS)
def test_resume_alone_takes_the_checkpoints_flags_and_names_every_differing_one(
    load_space, tmp_path, space, module, kwargs, script
):
    program, engine, utils = load_space(space, module, "runkit.engine", "runkit.utils")
    parser = program.get_parser(**kwargs)
    parse = functools.partial(engine.parse_args, parser, sys.modules["genotypes"].SPACE, script)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    _write_checkpoint(engine, utils, parser, script, run_dir / "checkpoint.pt", 1, 3, layers=2, seed=7, workers=0)
    args = parse(["--resume", str(run_dir)])  # means its checkpoint.pt
    assert args.resume == str(run_dir / "checkpoint.pt")
    assert (args.layers, args.seed, args.workers, args.save) == (2, 7, 0, None)
    changed = parse(["--resume", str(run_dir), "--workers", "3", "--layers", "2"])
    assert (changed.workers, changed.layers) == (3, 2), "a flag a resume may change, and one equal to the checkpoint's"
    with pytest.raises(utils.UserError) as refused:
        parse(["--resume", str(run_dir), "--layers", "4", "--seed", "1"])
    assert "--layers 2, not 4;" in str(refused.value) and "--seed 7, not 1;" in str(refused.value)


def test_resume_of_a_finished_run_says_so_in_one_line_exits_0_and_writes_nothing(
    load_space, tmp_path, capsys, restore_logging
):
    program, engine, utils = load_space("DARTS-space", "train", "runkit.engine", "runkit.utils")
    parser = program.get_parser()
    _write_checkpoint(engine, utils, parser, "train", tmp_path / "checkpoint.pt", 3, 3)
    with pytest.raises(SystemExit) as ended:
        engine.parse_args(parser, sys.modules["genotypes"].SPACE, "train", ["--resume", str(tmp_path)])
    out = f"{tmp_path / 'checkpoint.pt'}: the run is finished (3 of 3 epochs); nothing to do"
    assert ended.value.code == 0 and capsys.readouterr().out.strip() == out
    # As a user types it: the folder of a finished 201 search (made in this process), resumed, is left as it was.
    run_dir = tmp_path / "run"
    short = ["--epochs", "1", "--max_steps_per_epoch", "2", "--benchmark", "none"]
    main_in_process("201-space", "train_search", [*TINY_201, *short, "--save", run_dir])
    before = _snapshot(run_dir)
    again = run_script("201-space", "train_search.py", "--resume", run_dir, timeout=120)
    assert again.returncode == 0 and not again.stderr.strip(), again.stderr[-3000:]
    assert again.stdout.strip().splitlines() == [f"{run_dir / 'checkpoint.pt'}: the run is finished (1 of 1 epochs); "
                                                 "nothing to do"]  # fmt: skip
    assert _snapshot(run_dir) == before


@pytest.fixture
def unfinished_train_run(load_space, tmp_path, restore_logging):
    """A 201 train.py run folder 2 epochs into 3: a 2-epoch run (in this process) whose checkpoints ask for 3."""
    run_dir = tmp_path / "unfinished"
    main_in_process("201-space", "train", [*T201[1:], "--epochs", "2", "--save", run_dir])
    for name in ("checkpoint.pt", "best.pt"):
        ckpt = torch.load(run_dir / name, weights_only=True)
        ckpt["epochs"] = ckpt["args"]["epochs"] = 3
        torch.save(ckpt, run_dir / name)
    return run_dir


def test_best_pt_continues_only_into_a_new_folder_which_becomes_a_whole_run_folder(tmp_path, unfinished_train_run):
    old, new = shutil.copytree(unfinished_train_run, tmp_path / "run"), tmp_path / "continued"
    before = _snapshot(old)
    rewind = run_script("201-space", "train.py", "--resume", old / "best.pt", timeout=120)
    assert_one_line_error(rewind.returncode, rewind.stderr, "would overwrite the run's later epochs", "--save")
    assert _snapshot(old) == before

    moved = run_script("201-space", "train.py", "--resume", old / "best.pt", "--save", new, timeout=300)
    assert moved.returncode == 0, moved.stderr[-3000:]
    assert _snapshot(old) == before, "the old folder is left as it was"
    args = json.loads((new / "args.json").read_text())
    assert (args["save"], args["epochs"], args["script"]) == (str(new), 3, "train")
    assert all((new / name).exists() for name in ("scripts/train.py", "genotype.json", "best.pt", "tb"))
    assert [json.loads(line)["epoch"] for line in (new / "history.jsonl").read_text().splitlines()] == [0, 1, 2]
    log = (new / "log.txt").read_text()
    assert log.startswith((old / "log.txt").read_text()) and f"continuing the run of {old} in {new}" in log
    assert "1 CPU thread(s)" in log, "--threads is applied and logged"
    assert torch.load(new / "checkpoint.pt", weights_only=True)["epoch"] == 3


def test_a_full_disk_ends_in_one_line_logged_keeping_the_last_checkpoint(tmp_path, unfinished_train_run):
    """RLIMIT_FSIZE below a checkpoint's size: the resumed run fails in one logged line, the last checkpoint kept."""
    run_dir = shutil.copytree(unfinished_train_run, tmp_path / "run")
    checkpoint = (run_dir / "checkpoint.pt").read_bytes()
    limit = len(checkpoint) // 2
    assert (run_dir / "log.txt").stat().st_size < limit / 2, "the log may still grow"

    def small_disk():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    argv, cwd = [sys.executable, "train.py", "--resume", str(run_dir)], SPACES["201-space"]
    run = dict(cwd=cwd, capture_output=True, text=True, timeout=300, env=script_env(), preexec_fn=small_disk)
    result = subprocess.run(argv, **run)
    line = assert_one_line_error(result.returncode, result.stderr, f"cannot write {run_dir / 'checkpoint.pt'}")
    assert result.returncode == 2 and "File too large" in line
    assert (run_dir / "log.txt").read_text().rstrip().endswith(line)
    assert (run_dir / "checkpoint.pt").read_bytes() == checkpoint and not list(run_dir.rglob("*.tmp"))


@pytest.mark.parametrize(
    ("space", "argv"),
    [("201-space", ["train_search.py", *TINY_201, "--epochs", "1"]),
     ("DARTS-space", ["train.py", "--dataset", "synthetic", "--device", "cpu"])],
    ids=["201-search", "darts-train"],
)  # fmt: skip
def test_save_into_a_folder_holding_something_else_is_refused(tmp_path, space, argv):
    images = tmp_path / "images"
    (images / "cat").mkdir(parents=True)
    (images / "cat" / "1.png").write_bytes(b"png")
    result = run_script(space, *argv, "--save", images, timeout=120)
    assert_one_line_error(result.returncode, result.stderr, f"--save {images} is not empty (cat)")
    assert _snapshot(images) == {"cat/1.png": b"png"}


def test_resume_of_a_folder_without_a_checkpoint_says_why(tmp_path):
    """A run folder that never checkpointed; then the same folder while a live run holds it."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "args.json").write_text("{}")
    stopped = run_script("201-space", "train.py", "--resume", run_dir, timeout=120)
    assert_one_line_error(stopped.returncode, stopped.stderr, "holds no checkpoint.pt")
    code = "import sys, time; from runkit import run_folder; run_folder.lock(sys.argv[1]); time.sleep(60)"
    holder = subprocess.Popen([sys.executable, "-c", code, run_dir], cwd=SPACES["201-space"])  # a live run's lock
    try:
        deadline = time.monotonic() + 60
        while "pid" not in ((run_dir / "run.lock").read_text() if (run_dir / "run.lock").exists() else ""):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        live = run_script("201-space", "train.py", "--resume", run_dir, timeout=120)
        assert_one_line_error(live.returncode, live.stderr, f"a live run (process {holder.pid})", "no checkpoint yet")
    finally:
        holder.kill()
        holder.wait()


def _tools(load_space):
    """Every script of both folders with flags: (name, parser)."""
    parsers = [(f"{sp}/{script}", load_space(sp, module).get_parser(**kw)) for sp, module, kw, script in SCRIPTS]
    tools = [("201-space", "bench"), ("201-space", "report"), ("201-space", "plot_trajectory")]
    tools += [("DARTS-space", "bench"), ("DARTS-space", "report"), ("DARTS-space", "visualize")]
    for space, module in tools:
        parsers.append((f"{space}/{module}", load_space(space, module).get_parser()))
    return parsers


def test_help_shows_each_default_once_and_every_training_script_has_the_same_system_flags(load_space):
    for name, parser in _tools(load_space):
        formatter = parser._get_formatter()
        for action in parser._actions:
            shown = (formatter._get_help_string(action) or "").replace("%(default)s", str(action.default))
            assert shown.count("default") <= 1, (name, action.dest, shown)
    for space, module, kwargs, script in SCRIPTS:
        flags = {option for action in load_space(space, module).get_parser(**kwargs)._actions
                 for option in action.option_strings}  # fmt: skip
        assert {"--max_steps_per_epoch", "--threads"} <= flags and "--max_steps" not in flags, (space, script)


def test_a_second_ctrl_c_stops_at_once(load_space, tmp_path, restore_logging):
    """The first SIGINT asks for a checkpoint after the step; a second, before it ends, stops the run there."""
    engine = load_space("201-space", "runkit.engine")
    args = Namespace(resume=None, save=str(tmp_path / "run"), device="cpu", batch_size=2, report_freq=100)
    run = engine.Run(args, "test", "tiny")
    run.open()
    with pytest.raises(SystemExit) as stopped:
        for _ in run.epochs(2, 3, state=dict):
            for _ in run.steps():
                os.kill(os.getpid(), signal.SIGINT)
                os.kill(os.getpid(), signal.SIGINT)
                run.update(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), torch.tensor(1.0))
    assert stopped.value.code == 130 and not (tmp_path / "run" / "checkpoint.pt").exists()
    assert "second SIGINT: stopping at once" in (tmp_path / "run" / "log.txt").read_text()


def test_what_the_readme_commands_write_is_ignored_by_git_and_bench_threads_agree(load_space):
    """The README's default output paths stay out of `git status`; both bench.py take --threads alike."""
    if not (SPACES["201-space"].parent / ".git").exists():
        pytest.skip("not a git checkout")
    outputs = ["201-space/experiments/run/log.txt", "DARTS-space/runs/s0/checkpoint.pt", "DARTS-space/cell.png"]
    ignored = subprocess.run(["git", "check-ignore", *outputs], cwd=SPACES["201-space"].parent, capture_output=True)
    assert ignored.stdout.decode().split() == outputs
    defaults = {space: load_space(space, "bench").get_parser().get_default("threads") for space in SPACES}
    assert defaults == {"201-space": 0, "DARTS-space": 0}, "0: PyTorch's default, as in every script"
