"""What the command-line programs share: user errors are one line on stderr and exit status 2.

Light on purpose (no torch, no transformers at import), so that ``--help`` and option errors
answer at once.
"""
import os
import sys


# the checkout this package lives in: train.py and eval.py are scripts there, which the package
# runs as programs (``script``) and never imports
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def script(name: str) -> str:
    """The path of ``name`` (train.py, eval.py) in the checkout this package lives in."""
    path = os.path.join(REPO, name)
    if not os.path.isfile(path):
        raise UserError(f"this runs {name} of the repository, not found at {path}: run it from a checkout")
    return path


class UserError(Exception):
    """A problem with the user's input or options, reported in one line (no traceback)."""


def run(main, *args, light: bool = False) -> int:
    """Call ``main(*args)``; report user errors (only rank 0 speaks under torchrun). ``light``:
    for checking the command line before the heavy imports (transformers is left alone)."""
    if not light:
        import transformers
        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    speak = os.environ.get("RANK", "0") == "0"
    try:
        main(*args)
    except (UserError, OSError) as e:  # mmpo.rows.DataError is a UserError with one message per problem
        messages = getattr(e, "messages", None)
        if messages is not None:
            lines = [f"error: {m}" for m in messages[:20]]
            if len(messages) > 20:
                lines.append(f"... and {len(messages) - 20} more errors")
        else:
            lines = [f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}"]
    else:
        return 0
    if speak:
        print("\n".join(lines), file=sys.stderr)
    return 2
