"""What every command line shares: user errors are one line on stderr and exit status 2.

Light on purpose (no torch, no transformers at import), so that ``--help`` and option errors
answer at once.
"""
import argparse
import os
import sys


class UserError(Exception):
    """A problem with the user's input or options, reported in one line (no traceback)."""


class Parser(argparse.ArgumentParser):
    """argparse whose mistakes are a UserError: one line, exit status 2 through ``run``, no usage dump."""

    def error(self, message):
        raise UserError(message)


def check_limits(values, limits: dict):
    """``limits``: {option name: (check, what the value must be)}; the first value out of range
    is a one-line error naming its flag."""
    for name, (ok, what) in limits.items():
        value = getattr(values, name)
        if not ok(value):
            raise UserError(f"--{name.replace('_', '-')} {value}: must be {what}")


def first_line(e: Exception, limit: int = 200) -> str:
    """An exception as one line: its message's first line (at most ``limit`` characters), or its type."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


def run(main, *args, light: bool = False) -> int:
    """Call ``main(*args)``; its exit status is what it returns (0 for None). User errors are one
    line and status 2, an interruption one line and 130 (only rank 0 speaks under torchrun).
    ``light``: for checking the command line before the heavy imports (transformers is left alone)."""
    if not light:
        import transformers
        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    speak = os.environ.get("RANK", "0") == "0"
    try:
        code = main(*args)
    except KeyboardInterrupt:
        if speak:
            print("interrupted", file=sys.stderr)
        return 130
    except (UserError, OSError) as e:  # mmpo.rows.DataError is a UserError with one message per problem
        messages = getattr(e, "messages", None)
        if messages is not None:
            lines = [f"error: {m}" for m in messages[:20]]
            if len(messages) > 20:
                lines.append(f"... and {len(messages) - 20} more errors")
        else:
            lines = [f"error: {first_line(e, limit=10**6)}"]
    else:
        return code if isinstance(code, int) else 0
    if speak:
        print("\n".join(lines), file=sys.stderr)
    return 2
