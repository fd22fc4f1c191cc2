"""One resume rule for every script."""

import argparse

import pytest

from conftest import assert_one_line_error, run_script

# (folder, module, get_parser's arguments): every script that trains and checkpoints.
PARSERS = [
    ("201-space", "train_search", {"progressive": False}), ("201-space", "train_search", {"progressive": True}),
    ("201-space", "train", {}), ("DARTS-space", "train_search", {}), ("DARTS-space", "train_search_imagenet", {}),
    ("DARTS-space", "train", {}), ("DARTS-space", "train_imagenet", {}),
]  # fmt: skip


def _changed(action, value):
    """Another valid value of the flag of `action` than `value`."""
    if isinstance(action, argparse._StoreTrueAction):
        return not value
    if action.choices:
        return next(choice for choice in action.choices if choice != value)
    if isinstance(value, list):
        return [value[0] + 1, *value[1:]]
    if action.type in (int, float):
        return (value or 0) * 2 + 1
    return f"{value}-other"


def _typed(value):
    """A flag's value as a user types it."""
    if isinstance(value, bool):
        return "on" if value else "off"
    return " ".join(map(str, value)) if isinstance(value, list) else str(value)


@pytest.mark.parametrize(("space", "module", "kwargs"), PARSERS, ids=lambda p: str(p) if isinstance(p, str) else "")
def test_every_flag_outside_may_change_must_equal_the_checkpoints(load_space, space, module, kwargs):
    script, run_flags, utils = load_space(space, module, "runkit.run_flags", "runkit.utils")
    parser = script.get_parser(**kwargs)
    saved, compared = vars(parser.parse_args([])), 0
    for action in parser._actions:
        if action.dest == "help":
            continue
        args = argparse.Namespace(**{**saved, action.dest: _changed(action, saved[action.dest])})
        if action.dest in run_flags.MAY_CHANGE:
            run_flags.check_resume(saved, args)  # accepted: it changes how the run runs, not what it computes
            continue
        with pytest.raises(utils.UserError) as refused:
            run_flags.check_resume(saved, args)
        was, now = (_typed(v) for v in (saved[action.dest], getattr(args, action.dest)))
        assert f"--{action.dest} {was}, not {now};" in str(refused.value)
        compared += 1
    assert compared >= 10, "the flags that define the run are compared"


def test_a_darts_search_resumed_with_another_arch_learning_rate_is_refused(tmp_path):
    """The flag the DARTS searches' old allow-list forgot: one line naming it and both values, nothing written."""
    run_dir = tmp_path / "run"
    argv = "train_search.py --dataset synthetic --layers 3 --init_channels 4 --batch_size 4 --device cpu --workers 0"
    argv = (argv + " --stage_epochs 1 --stage_k 2 --stage_keep 7 --warmup_epochs 0 --max_steps_per_epoch 1").split()
    first = run_script("DARTS-space", *argv, "--save", run_dir)
    assert first.returncode == 0, first.stderr[-3000:]
    before = {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()}
    argv += ["--arch_learning_rate", "0.001", "--resume", run_dir / "checkpoint.pt"]
    resumed = run_script("DARTS-space", *argv, timeout=120)
    assert_one_line_error(resumed.returncode, resumed.stderr, "--arch_learning_rate 0.0006, not 0.001")
    assert {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()} == before
