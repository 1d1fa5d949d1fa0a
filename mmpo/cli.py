"""What the command-line programs share: user errors are one line on stderr and exit status 2."""
import os
import sys

import transformers

from mmpo.data import DataError


class UserError(Exception):
    """A problem with the user's input or options, reported in one line (no traceback)."""


def run(main, *args) -> int:
    """Call ``main(*args)``; report user errors (only rank 0 speaks under torchrun)."""
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    speak = os.environ.get("RANK", "0") == "0"
    try:
        main(*args)
    except DataError as e:
        lines = [f"error: {m}" for m in e.messages[:20]]
        if len(e.messages) > 20:
            lines.append(f"... and {len(e.messages) - 20} more errors")
    except (UserError, OSError) as e:
        lines = [f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}"]
    else:
        return 0
    if speak:
        print("\n".join(lines), file=sys.stderr)
    return 2
