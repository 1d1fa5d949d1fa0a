"""Small helpers that more than one program needs (train.py, eval.py, prepare, convert, toy,
bench): model names that can only be folders, JSON files with one-line errors, markdown tables."""
import json
import os

from mmpo.cli import UserError, first_line


def looks_like_path(name: str) -> bool:
    """A model name that can only be a local folder: it starts with . / ~, exists, has more than
    one / or a backslash (transformers would try anything else as a hub id)."""
    return name.startswith((".", "/", "~")) or os.path.exists(name) or name.count("/") > 1 or "\\" in name


def check_model_path(flag: str, name: str, tiny: tuple[str, ...] = ()):
    """A model name that ``looks_like_path`` must be a model directory; anything else is left to
    transformers as a hub id, which would answer a mistyped path with a puzzling message about
    repo ids."""
    if not name.strip():
        raise UserError(f"{flag} is empty")
    if name in tiny or not looks_like_path(name):
        return
    if not os.path.isdir(name):
        raise UserError(f"{flag} {name}: no such directory")
    if not os.path.isfile(os.path.join(name, "config.json")):
        raise UserError(f"{flag} {name}: not a model directory (no config.json)")


def markdown_table(header: list[str], rows: list[list]) -> str:
    """A markdown table; each cell as given (format numbers before)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]) + "\n"


def read_json(path: str, hint: str = ""):
    """A JSON file's content; a file that is not JSON is one line (``hint``: what it should be)."""
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError both
        raise UserError(f"{path}: not a JSON file ({first_line(e)}){hint}") from None
