"""Where a run writes: the run folder, writable-path checks, one writer per folder (`run.lock`, held to the end)."""

import fcntl
import os
import socket
import time
from pathlib import Path

from .utils import UserError

LOCK_NAME = "run.lock"
_HELD = {}  # resolved run folder -> the open lock file of this process


def check_writable(path, flag, folder=False):
    """Refuse, in one line naming `flag`, a `path` (a folder when `folder`, else a file) that cannot be written."""
    path = Path(path)
    if path.exists():
        if folder and not path.is_dir():
            raise UserError(f"{flag} {path} is a file, not a folder; name a folder for the run")
        if not folder and path.is_dir():
            raise UserError(f"{flag} {path} is a folder, not a file; give a file name")
        if not os.access(path, os.W_OK):
            raise UserError(f"{flag} {path}: cannot be written (read-only or no permission); choose another path")
        return
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"{flag} {path}: {parent} is a file, not a folder; choose another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path}: cannot write in {parent} (read-only or no permission); choose another path")


def holder(run_dir):
    """The process id of the live run holding `run_dir`, or None when no other process holds it."""
    if Path(run_dir).resolve() in _HELD:
        return None
    try:
        f = open(Path(run_dir) / LOCK_NAME)
    except OSError:
        return None
    with f:
        return _locked_by(f, fcntl.LOCK_SH)  # closing the file gives up a lock it took


def _locked_by(f, operation):
    """None once the open lock file `f` takes the lock `operation`, else the process id of its lock file's line."""
    try:
        fcntl.flock(f, operation | fcntl.LOCK_NB)
        return None
    except (BlockingIOError, PermissionError):  # held by another process (EACCES where flock is emulated)
        f.seek(0)
        words = f.read().split()  # `pid 1234 on HOST since ...`
        return int(words[1]) if len(words) > 1 and words[0] == "pid" and words[1].isdigit() else "unknown"


def _live_run(run_dir, pid):
    hint = "wait for it to end (or stop it: it checkpoints on SIGTERM), or choose another --save"
    return UserError(f"--save {run_dir}: a live run (process {pid}) is writing there; {hint}")


def lock(run_dir):
    """Take `run_dir`'s lock for the rest of this process (again for a folder it holds already)."""
    key = Path(run_dir).resolve()
    if key in _HELD:
        return
    f = open(Path(run_dir) / LOCK_NAME, "a+")
    pid = _locked_by(f, fcntl.LOCK_EX)
    if pid is not None:
        f.close()
        raise _live_run(run_dir, pid)
    f.truncate(0)
    f.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    f.flush()
    _HELD[key] = f


def checkpoint_of(resume):
    """The checkpoint `--resume` names: the file itself, or a run folder's checkpoint.pt; refused in one line."""
    path = Path(resume)
    ckpt = path / "checkpoint.pt" if path.is_dir() else path
    if ckpt.is_file():
        return ckpt
    pid = holder(ckpt.parent)
    if pid is not None:
        hint = "has no checkpoint yet; let it run, or stop it (it checkpoints on SIGTERM) and resume it then"
        raise UserError(f"--resume {resume}: a live run (process {pid}) is writing there and {hint}")
    if path.is_dir():
        raise UserError(f"--resume {resume}: the folder holds no checkpoint.pt (no epoch was saved); start afresh")
    raise UserError(f"--resume {resume}: no such file; give a run folder or its checkpoint.pt")


def check_run_dir(run_dir, resume=None):
    """Refuse, writing nothing, a folder that is not this run's own: a new or empty one, one whose run died before
    its first checkpoint, or the folder of the checkpoint.pt resumed (another checkpoint continues in a new folder)."""
    run_dir = Path(run_dir)
    check_writable(run_dir, "--save", folder=True)
    pid = holder(run_dir)
    if pid is not None:
        raise _live_run(run_dir, pid)
    if resume is not None and Path(resume).resolve().parent == run_dir.resolve():
        if Path(resume).name != "checkpoint.pt":
            hint = "would overwrite the run's later epochs; give --save NEW_FOLDER to continue it there"
            raise UserError(f"--resume {resume}: continuing from it in {run_dir} {hint}")
        return
    # The lock file alone is no content: a run may take it before it writes (`open_run_dir`).
    held = sorted(p.name for p in run_dir.iterdir() if p.name != LOCK_NAME) if run_dir.is_dir() else []
    if not held:
        return
    if (run_dir / "checkpoint.pt").exists():
        hint = f"choose another --save, or continue it with --resume {run_dir}"
        raise UserError(f"--save {run_dir} already holds a run; {hint}")
    if resume is None and ((run_dir / "args.json").exists() or (run_dir / LOCK_NAME).exists()):
        return  # a run that stopped before its first checkpoint left nothing to keep
    shown = ", ".join(held[:4]) + (", ..." if len(held) > 4 else "")
    raise UserError(f"--save {run_dir} is not empty ({shown}) and holds no run of its own; name a new or empty folder")


def open_run_dir(run_dir, resume=None):
    """Create the run folder and hold its lock, then check it again under the lock (two runs started together)."""
    run_dir = Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # the folder went away or changed since the check
        raise UserError(f"--save {run_dir}: cannot be created ({err.strerror}); choose another path") from None
    lock(run_dir)
    try:
        check_run_dir(run_dir, resume)
    except UserError:
        _HELD.pop(run_dir.resolve()).close()
        raise
    return run_dir
