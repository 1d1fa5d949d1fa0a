"""A crash at a chosen moment, for the exact-resume tests (in pytest and in torchrun workers)."""
import contextlib

from mmpo.training import checkpoint


@contextlib.contextmanager
def killed_after_checkpoint(step: int):
    """Inside the block, train.py dies (KeyboardInterrupt) right after writing its checkpoint of
    ``step``, as a killed process would: the next step is never taken."""
    real_save = checkpoint.save

    def save_then_die(out, at, *a, **kw):
        real_save(out, at, *a, **kw)
        if at == step:
            raise KeyboardInterrupt
    checkpoint.save = save_then_die
    try:
        yield
    finally:
        checkpoint.save = real_save
