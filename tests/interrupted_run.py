"""Run a script's `main()` as if it were killed right after some of its checkpoints, and resumed each time."""

import importlib
import os
import sys


class Killed(Exception):
    """The run "dies" here, right after a checkpoint was written."""


def main(argv):
    split = argv.index("--")
    script, stops, arguments = argv[0], {int(n) for n in argv[1:split]}, argv[split + 1 :]
    sys.path[0] = os.getcwd()  # the space folder, as for `python -c`; not this file's folder
    utils = importlib.import_module("runkit.utils")
    real_save, saved = utils.save_checkpoint, []

    def save_then_maybe_die(state, path):
        real_save(state, path)
        saved.append(path)
        if len(saved) in stops:
            raise Killed

    utils.save_checkpoint = save_then_maybe_die
    script_main, run_dir = importlib.import_module(script).main, arguments[arguments.index("--save") + 1]
    for attempt in range(len(stops) + 1):
        try:
            script_main(["--resume", run_dir] if attempt else arguments)
        except Killed:
            continue
        return


if __name__ == "__main__":
    main(sys.argv[1:])
