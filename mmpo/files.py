"""Writing files so that a run killed at any moment never leaves half of one.

Everything mmpo writes that a later run reads (checkpoints' pointers, configs, caches, prepared
data and images) goes through here: written under a temporary name, then renamed into place,
which is atomic on one filesystem. Light on purpose (no torch).
"""
import contextlib
import os


@contextlib.contextmanager
def atomic_path(path: str):
    """A temporary path next to ``path`` to write to; once the block ends without an error it is
    renamed onto ``path``, otherwise removed. For writers that take a path (``save_file``)."""
    tmp = path + ".tmp"
    try:
        yield tmp
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    os.replace(tmp, path)


def write_atomic(path: str, data: str | bytes):
    """Write ``data`` (text, or bytes such as an encoded image) to ``path``, flushed to disk
    before the rename."""
    with atomic_path(path) as tmp, open(tmp, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
