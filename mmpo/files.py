"""Writing files so that a run killed at any moment never leaves half of one: under a temporary
name, then renamed into place (atomic on one filesystem). Everything that a later run reads goes
through here: checkpoints' pointers, configs, caches, prepared data and images. No torch, on purpose.
"""
import contextlib
import os


@contextlib.contextmanager
def atomic_path(path: str):
    """A temporary path to write to, renamed onto ``path`` when the block ends without an error,
    else removed. For writers that take a path (``save_file``)."""
    tmp = path + ".tmp"
    try:
        yield tmp
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    os.replace(tmp, path)


def write_atomic(path: str, data: str | bytes):
    """``data`` (text, or bytes such as an encoded image), flushed to disk before the rename."""
    with atomic_path(path) as tmp, open(tmp, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
