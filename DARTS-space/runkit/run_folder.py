"""Where a run writes: the run folder, checks that an output path can be written, and one writer per folder.

`check_writable` refuses, writing nothing, a path that cannot be written (a file where a
folder must be, a read-only or forbidden place); every script calls it for its outputs
before it starts work. A run folder holds one run at a time: `lock` takes the folder's
`run.lock` for the life of the process (the OS releases it when the process ends, however
it ends, so a killed run can always be resumed), and `holder` tells a live run (its
process id) from a stopped one, for a second run on the folder and for `report.py`.
Not a script; the same file in both folders.
"""

import errno
import fcntl
import os
import socket
import time
from pathlib import Path

from .utils import UserError

LOCK_NAME = "run.lock"
_HELD = {}  # resolved run folder -> the open lock file of this process


def check_writable(path, flag, folder=False):
    """Refuse, in one line naming `flag`, a `path` (a folder when `folder`, else a file) that cannot be written.

    Writes nothing: the nearest existing ancestor must be a folder this process may write in.
    """
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
    path = Path(run_dir) / LOCK_NAME
    if Path(run_dir).resolve() in _HELD:
        return None
    try:
        f = open(path)
    except OSError:
        return None
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            return _pid(f.read()) or "unknown"
        fcntl.flock(f, fcntl.LOCK_UN)
        return None


def _pid(text):
    """The process id of a lock file's line (`pid 1234 on HOST since ...`), or None."""
    words = text.split()
    return int(words[1]) if len(words) > 1 and words[0] == "pid" and words[1].isdigit() else None


def live_run_error(run_dir, pid, flag="--save"):
    """The one-line refusal of a second writer on the folder of the live run `pid`."""
    return UserError(
        f"{flag} {run_dir}: a live run (process {pid}) is writing there; wait for it to end "
        "(or stop it: it checkpoints on SIGTERM), or choose another --save"
    )


def lock(run_dir, flag="--save"):
    """Take `run_dir`'s lock for the rest of this process (again for a folder it holds already)."""
    key = Path(run_dir).resolve()
    if key in _HELD:
        return
    f = open(Path(run_dir) / LOCK_NAME, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno not in (errno.EAGAIN, errno.EACCES):
            raise
        f.seek(0)
        pid = _pid(f.read()) or "unknown"
        f.close()
        raise live_run_error(run_dir, pid, flag) from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    f.flush()
    _HELD[key] = f


def release(run_dir):
    """Give up `run_dir`'s lock before this process ends (a run that ends inside a longer process)."""
    f = _HELD.pop(Path(run_dir).resolve(), None)
    if f is not None:
        f.close()


def default_run_dir(script):
    """experiments/<script>-<YYYYmmdd-HHMMSS> next to the scripts."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path(__file__).resolve().parent / "experiments" / f"{script}-{stamp}"


def checkpoint_of(resume):
    """The checkpoint `--resume` names: the file itself, or a run folder's checkpoint.pt.

    A missing one is refused in one line, naming the live run that has not checkpointed yet.
    """
    path = Path(resume)
    ckpt = path / "checkpoint.pt" if path.is_dir() else path
    if ckpt.is_file():
        return ckpt
    pid = holder(ckpt.parent)
    if pid is not None:
        raise UserError(
            f"--resume {resume}: a live run (process {pid}) is writing there and has no checkpoint yet; "
            "let it run, or stop it (it checkpoints on SIGTERM) and resume it then"
        )
    if path.is_dir():
        raise UserError(f"--resume {resume}: the folder holds no checkpoint.pt (no epoch was saved); start afresh")
    raise UserError(f"--resume {resume}: no such file; give a run folder or its checkpoint.pt")


def check_run_dir(run_dir, resume=None):
    """Refuse, writing nothing, a run folder that cannot take this run.

    A run writes only its own folder: a new or empty one, the folder of a run that died
    before its first checkpoint, or, resuming, the folder of its checkpoint.pt. Another
    checkpoint (best.pt, a copy) continues only into a new folder, so no later epoch is
    overwritten; a run resumed into a new folder needs it empty.
    """
    run_dir = Path(run_dir)
    check_writable(run_dir, "--save", folder=True)
    pid = holder(run_dir)
    if pid is not None:
        raise live_run_error(run_dir, pid)
    if resume is not None and Path(resume).resolve().parent == run_dir.resolve():
        if Path(resume).name != "checkpoint.pt":
            raise UserError(
                f"--resume {resume}: continuing from it in {run_dir} would overwrite the run's later epochs; "
                "give --save NEW_FOLDER to continue it there"
            )
        return
    # The lock file alone is no content: a run may take it before it writes (`open_run_dir`).
    held = sorted(p.name for p in run_dir.iterdir() if p.name != LOCK_NAME) if run_dir.is_dir() else []
    if not held:
        return
    if (run_dir / "checkpoint.pt").exists():
        raise UserError(
            f"--save {run_dir} already holds a run; choose another --save, or continue it with --resume {run_dir}"
        )
    died_early = (run_dir / "args.json").exists() or (run_dir / LOCK_NAME).exists()
    if resume is None and died_early:
        return  # a run that stopped before its first checkpoint left nothing to keep
    shown = ", ".join(held[:4]) + (", ..." if len(held) > 4 else "")
    raise UserError(f"--save {run_dir} is not empty ({shown}) and holds no run of its own; name a new or empty folder")


def open_run_dir(run_dir, resume=None):
    """Create the run folder and hold its lock: the first thing a run writes. Checked again under the lock.

    Two runs started together on one folder both pass `check_run_dir`; the second to get
    here is refused, and so is one that finds a checkpoint the other wrote meanwhile.
    """
    run_dir = Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # the folder went away or changed since the check
        raise UserError(f"--save {run_dir}: cannot be created ({err.strerror}); choose another path") from None
    lock(run_dir)
    try:
        check_run_dir(run_dir, resume)
    except UserError:
        release(run_dir)
        raise
    return run_dir
