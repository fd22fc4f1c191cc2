"""Run a script's `main()` as if it were killed right after some of its checkpoints, and resumed each time: in a
test's process (`interrupted`), or in a process of its own (`python interrupted_run.py <script module> N1 N2 ... --
<arguments with --save>`, run from a space folder)."""

import importlib
import os
import sys
from unittest import mock


class Killed(Exception):
    """The run "dies" here, right after a checkpoint was written."""


def interrupted(utils, main, argv, stops):
    """`main(argv)` "killed" right after each of its checkpoints numbered in `stops` (from 1) and resumed from it
    each time; `utils` is the space's runkit.utils, whose `save_checkpoint` writes every checkpoint."""
    real_save, saved = utils.save_checkpoint, []

    def save_then_maybe_die(state, path):
        real_save(state, path)
        saved.append(path)
        if len(saved) in stops:
            raise Killed

    run_dir = str(argv[argv.index("--save") + 1])
    with mock.patch.object(utils, "save_checkpoint", save_then_maybe_die):
        for attempt in range(len(stops) + 1):
            try:
                main(["--resume", run_dir] if attempt else argv)
            except Killed:
                continue
            return


if __name__ == "__main__":
    split = sys.argv.index("--")
    sys.path[0] = os.getcwd()  # the space folder, as for `python -c`; not this file's folder
    utils, script = importlib.import_module("runkit.utils"), importlib.import_module(sys.argv[1])
    interrupted(utils, script.main, sys.argv[split + 1 :], {int(n) for n in sys.argv[2:split]})
