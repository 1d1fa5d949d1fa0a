"""The run's folder: a new run never lands on an old one (``claim_out``), one that stops before
training takes back what it wrote (``undone_on_failure``), and a resumed run is the same run
(``write_config``: OUT/config.json). Only the names a run writes are ever removed."""
import contextlib
import json
import os
import shutil

from mmpo.cli import UserError
from mmpo.files import write_atomic

# what a run may leave in OUT: nothing else there is ever touched
RUN_NAMES = ("config.json", "metrics.jsonl", "latest", "final", "merged", "base_model", "synthetic", "tensorboard")
RUN_PREFIXES = ("checkpoint-", "reference-", ".checkpoint-")
# a run that got as far as training (config.json is written just before the first step)
STARTED = ("config.json", "metrics.jsonl", "latest", "final")


def check_out(out: str, overwrite: bool):
    """Refuse an ``out`` that is not a folder, or that holds a run unless ``overwrite`` (also
    called before torch is imported: ``config.precheck``)."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"--out {out}: not a folder")
    old = sorted(n for n in os.listdir(out) if n in RUN_NAMES or n.startswith(RUN_PREFIXES)) if os.path.isdir(out) else []
    if not overwrite and any(n in STARTED or n.startswith("checkpoint-") for n in old):
        shown = ", ".join(old[:4]) + (", ..." if len(old) > 4 else "")
        raise UserError(f"--out {out} already holds a run ({shown}): --resume {out} to continue it, "
                        f"--overwrite to replace it, or choose another --out")


def claim_out(out: str, overwrite: bool, main: bool = True):
    """Make ``out`` ready for a new run (``check_out``); the files of the run there (with
    ``overwrite``), or of one that stopped before training (only those), are removed first. Every
    rank checks; the main one writes (the caller waits for it)."""
    check_out(out, overwrite)
    if main:
        try:
            remove_run_files(out)
            os.makedirs(out, exist_ok=True)
            write_atomic(os.path.join(out, ".write-test"), "")  # say now, not at the first checkpoint
            os.remove(os.path.join(out, ".write-test"))
        except OSError as e:
            raise UserError(f"--out {out}: cannot write there ({e.strerror or e})") from None


def remove(path: str):
    shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.remove(path)


def remove_run_files(out: str):
    """What a run leaves in ``out`` (``RUN_NAMES``, ``RUN_PREFIXES``): nothing else there is touched."""
    for name in os.listdir(out) if os.path.isdir(out) else []:
        if name in RUN_NAMES or name.startswith(RUN_PREFIXES):
            remove(os.path.join(out, name))


def first_missing(path: str) -> str | None:
    """The outermost folder of ``path`` that does not exist yet (what creating it would create)."""
    top, p = None, os.path.abspath(path)
    while not os.path.exists(p):
        top, p = p, os.path.dirname(p)
    return top


@contextlib.contextmanager
def undone_on_failure(out: str, created: str | None, active: bool):
    """A new run that stops before training (a bad image, a model that will not load, Ctrl-C)
    takes back what it wrote: the folders it created (``created``: the outermost), else what it
    added to the folder that was there (never what was there before)."""
    before = set(os.listdir(out)) if created is None and os.path.isdir(out) else set()
    try:
        yield
    except BaseException:
        if active:
            with contextlib.suppress(OSError):
                added = [created] if created else [os.path.join(out, n) for n in set(os.listdir(out)) - before]
                for path in added:
                    remove(path)
        raise


def write_config(cfg):
    """OUT/config.json: every resolved option of the run, what --resume reads back."""
    write_atomic(os.path.join(cfg.out, "config.json"), json.dumps(vars(cfg), indent=1))
