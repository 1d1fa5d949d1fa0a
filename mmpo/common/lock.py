"""One run per folder: train.py, eval.py, prepare and convert hold the folder they write to, so that a
second program started on it stops with one line naming the holder instead of mixing its files in."""
import contextlib
import json
import os
import socket
import threading
import time

from mmpo.cli import UserError

LOCK = ".mmpo.lock"
STALE_S = 300  # a holder refreshes its lock every minute: one left this long is a dead process's


def holder(folder: str) -> dict | None:
    """Who holds ``folder``'s lock (program, host, pid), or None when it is free or its holder is
    gone: a process of this host that no longer runs, or a lock not refreshed for ``STALE_S``."""
    path = os.path.join(folder, LOCK)
    try:
        with open(path) as f:
            who = json.load(f)
        age = time.time() - os.path.getmtime(path)
    except (OSError, ValueError):  # none, or half-written by a holder that died creating it
        return None
    if who.get("host") == socket.gethostname():
        try:
            os.kill(who["pid"], 0)
        except ProcessLookupError:
            return None
        except (PermissionError, KeyError, TypeError):
            pass
    return None if age > STALE_S else who


def check_free(folder: str, me: dict | None = None):
    """Refuse ``folder`` while another program holds it (``me``: this process, which may hold it)."""
    who = holder(folder)
    if who is not None and who != me:
        raise UserError(f"{folder} is in use by {who.get('program')} (pid {who.get('pid')} on "
                        f"{who.get('host')}): one run per folder; wait for it, or choose another folder")


@contextlib.contextmanager
def locked(folder: str, program: str, active: bool = True, flag: str = "--out"):
    """Hold ``folder`` for this run: a second program writing there stops with one line naming the
    holder. The lock is a file created exclusively (O_EXCL, atomic on local filesystems and NFS),
    not an advisory lock, and is refreshed every minute by a thread; one left by a dead process is
    taken over. ``active`` False (the other ranks of a torchrun job): nothing is done."""
    if not active:
        yield
        return
    path = os.path.join(folder, LOCK)
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise UserError(f"{flag} {folder}: not a folder")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise UserError(f"{flag} {folder}: cannot write there ({e.strerror or e})") from None
    me = {"program": program, "host": socket.gethostname(), "pid": os.getpid()}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            check_free(folder, me)
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)  # a dead holder's: taken over
    else:
        raise UserError(f"{folder}: cannot take its lock {path}")
    with os.fdopen(fd, "w") as f:
        json.dump(me, f)
    done = threading.Event()

    def refresh():
        while not done.wait(60):
            with contextlib.suppress(OSError):
                os.utime(path)
    threading.Thread(target=refresh, daemon=True).start()
    try:
        yield
    finally:
        done.set()
        with contextlib.suppress(OSError):
            os.remove(path)
