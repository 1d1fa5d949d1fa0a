"""Preference data as JSON Lines: the fields, which views need which, and the checks of every row.

One example a line::

    {"id": "0", "image": "img/0.png", "prompt": "What color is the square?",
     "chosen": "The square is red.", "rejected": "The square is blue."}

``image`` is relative to the JSONL file's folder unless absolute; ``question`` is an alias of
``prompt``; SFT rows may leave out ``image`` (text-only) or have an empty ``prompt`` (image-only),
as LLaVA-1.5's SFT data does. Optional: ``corrupt_image`` (m' for mDPO/MFPO; made on the fly
when absent), ``contrast_image`` + ``contrast_chosen`` (SymMPO), ``lang_biased`` +
``vision_biased`` (NaPO), ``difficulty`` (curriculum), ``noise_mask`` + ``noise_step`` (MFPO's
region noise, written by ``python -m mmpo.prepare mfpo``), ``truncated`` (the generated fields
that hit the token limit: they get no end-of-sequence token). Every row is checked when the file
is opened; all problems are reported together, each as ``file:line: field 'x': what is wrong``.
"""
import json
import math
import os

from PIL import Image, UnidentifiedImageError

from mmpo.cli import UserError
from mmpo.constants import GENERATED_BY, IMAGE_FIELDS, NOISE_STEPS, TEXT_FIELDS, VIEWS

class DataError(UserError):
    """Bad input data; ``messages`` holds one line per problem (file, line, field)."""

    def __init__(self, messages: list[str] | str):
        if isinstance(messages, str):  # re-raised from a DataLoader worker: keep the last line
            lines = [ln for ln in messages.splitlines() if ln.strip()]
            messages = [lines[-1].split("DataError: ", 1)[-1]] if lines else []
        self.messages = messages
        super().__init__("\n".join(messages))


def required_fields(views, m_prime: str) -> set[str]:
    """The fields every row must have to be scored as ``views`` with this kind of ``m_prime``.
    SFT (``("chosen",)``) needs no image: LLaVA-1.5's SFT data has text-only rows, and image-only
    ones (an empty prompt), which ``_check_row`` allows where the image is optional."""
    need = {"prompt"} if tuple(views) == ("chosen",) else {"image", "prompt"}
    for v in views:
        slot, response = VIEWS[v]
        need.add(response)
        if slot == "corrupt" and m_prime == "contrast":
            need.add("contrast_image")
    return need


def read_rows(path: str, required: set[str]) -> list[dict]:
    """Read and check every row; raise DataError listing every problem, one line each.

    A required field missing on several rows is one line with the count and the first line
    numbers: data made for DPO and given to NaPO lacks the generated answers everywhere, and 500
    identical lines would hide every other problem.
    """
    lines = _read_lines(path)
    base = os.path.dirname(os.path.abspath(path))
    problems = []  # (line, field, message); message None: a required field missing there
    rows, seen, n_objects = [], {}, 0
    for ln, raw in enumerate(lines, 1):
        where = f"{path}:{ln}"
        try:
            text = raw.decode("utf-8").removeprefix("\ufeff")  # a BOM mid-file: files joined with cat
        except UnicodeDecodeError as e:
            column = len(raw[:e.start].decode("utf-8")) + 1  # in characters, as an editor counts
            problems.append((ln, None, f"{where}: not UTF-8 text (byte 0x{raw[e.start]:02X} at column {column})"))
            continue
        if not text.strip():
            continue
        try:
            row = json.loads(text)
        except json.JSONDecodeError as e:
            problems.append((ln, None, f"{where}: invalid JSON ({e.msg}, column {e.colno})"))
            continue
        if not isinstance(row, dict):
            problems.append((ln, None, f"{where}: expected a JSON object, got {type(row).__name__}"))
            continue
        n_objects += 1
        found = _check_row(row, required, base, where)
        rid = ln if row.get("id") is None else row["id"]
        if isinstance(rid, int) and not isinstance(rid, bool):
            rid = str(rid)  # 7 and "7" are the same example
        if not isinstance(rid, str) or not rid.strip():
            found.append(("id", f"{where}: field 'id': must be a non-empty string or a whole number, got {_shown(rid)}"))
        elif rid in seen:
            found.append(("id", f"{where}: field 'id': duplicate id {rid!r} (first on line {seen[rid]})"))
        else:
            seen[rid] = ln
        row["id"], row["line"] = rid, ln
        problems += [(ln, name, msg) for name, msg in found]
        if not found:
            rows.append(row)
    if problems:
        whole = _whole_file_json(lines)
        if whole:  # every line would be "invalid JSON": say what the file is instead
            raise DataError([f"{path}: {whole}, expected JSON Lines (one JSON object per line)"])
        raise DataError(_messages(path, problems, n_objects))
    return rows


# a released dataset's file, known by the columns of its parquet schema or the keys of its JSON
# array's first object: the ``python -m mmpo.convert`` format that reads it (mmpo/convert/papers.py)
PARQUET_FORMATS = (("symmpo", (b"resp_1_w", b"image_2")), ("napo", (b"question_only", b"image_only")),
                   ("rlaif-v", (b"ds_name", b"question")), ("rlhf-v", (b"ds_name", b"text")), ("trl", (b"images", b"chosen")))
ARRAY_FORMATS = (("mdpo", {"img_path", "prompt", "chosen", "rejected"}), ("llava", {"conversations"}))


def check_file(path: str, flag: str = ""):
    """What the file is, from its first bytes, before any row is read (train.py, eval.py and
    prepare ask before torch loads): a folder, no file, UTF-16, gzip, an empty file, or a released
    dataset's parquet or JSON array, each refused in one line (after ``flag``, the option that
    named the file); a released file's names the ``python -m mmpo.convert`` format that reads it."""
    try:
        _check_file(path)
    except DataError as e:
        raise DataError([f"{flag} {m}" if flag else m for m in e.messages]) from None


def _check_file(path: str):
    if os.path.isdir(path):
        inside = sorted(f for f in os.listdir(path) if f.endswith(".jsonl"))
        hint = f" (did you mean {os.path.join(path, inside[0])}?)" if len(inside) == 1 else ""
        raise DataError([f"{path}: is a folder, expected a JSONL file{hint}"])
    if not os.path.isfile(path):
        raise DataError([f"{path}: no such file"])
    with open(path, "rb") as f:
        head = f.read(1 << 20).removeprefix(b"\xef\xbb\xbf")  # the UTF-8 BOM that Windows editors write
        if head.startswith(b"PAR1") and os.path.getsize(path) >= 12:
            f.seek(-8, os.SEEK_END)
            size = int.from_bytes(f.read(4), "little")  # the footer, which holds the schema, ends the file
            f.seek(max(0, os.path.getsize(path) - 8 - min(size, 1 << 24)))
            footer = f.read(min(size, 1 << 24))
            known = next((name for name, columns in PARQUET_FORMATS if all(c in footer for c in columns)), None)
            raise DataError([f"{path}: a parquet file, expected JSON Lines; convert it first: "
                             + (f"python -m mmpo.convert {known} {path} OUT" if known else
                                f"python -m mmpo.convert FORMAT {path} OUT (FORMAT: trl, rlaif-v, rlhf-v, napo or symmpo)")])
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DataError([f"{path}: UTF-16 text, expected UTF-8 (save the file as UTF-8)"])
    if head.startswith(b"\x1f\x8b"):
        raise DataError([f"{path}: gzip-compressed, expected JSONL text (decompress it with gunzip first)"])
    if not head.strip() and os.path.getsize(path) <= 1 << 20:
        raise DataError([f"{path}: {'only blank lines' if head else 'empty file'}, expected one JSON object per line"])
    if head.lstrip().startswith(b"["):
        try:  # the first object of the array, when it is in the first MiB
            first, _ = json.JSONDecoder().raw_decode(head.lstrip()[1:].decode("utf-8", "ignore").lstrip())
        except json.JSONDecodeError:
            first = None
        keys = set(first) if isinstance(first, dict) else set()
        known = next((name for name, needed in ARRAY_FORMATS if needed <= keys), None)
        raise DataError([f"{path}: a JSON array, expected JSON Lines (one JSON object per line)"
                         + (f"; convert it first: python -m mmpo.convert {known} {path} OUT" if known else "")])


def _read_lines(path: str) -> list[bytes]:
    """The file's lines as bytes, each decoded on its own so that one bad byte spoils one line."""
    check_file(path)
    with open(path, "rb") as f:
        data = f.read().removeprefix(b"\xef\xbb\xbf")
    return data.splitlines()  # \n, \r\n or \r; never inside a JSON string, where they must be escaped


def _check_row(row: dict, required: set[str], base: str, where: str) -> list[tuple[str, str | None]]:
    """One row's (field, problem) pairs, problem None for a missing required field. Makes image
    paths absolute and files ``question`` under ``prompt``."""
    if "prompt" not in row and "question" in row:
        row["prompt"] = row.pop("question")
    found = []

    def bad(name, what):
        found.append((name, f"{where}: field '{name}': {what}"))

    for name in sorted(required | (set(row) & set(TEXT_FIELDS + IMAGE_FIELDS))):
        value = row.get(name)
        if value is None:
            if name in required:
                found.append((name, None))
        elif name == "prompt" and value == "" and "image" not in required and row.get("image"):
            pass  # SFT's image-only row: the user turn is the image alone
        elif not isinstance(value, str) or not value.strip():
            bad(name, "must be a non-empty string" + (f", got {_shown(value)}" if not isinstance(value, str) else ""))
        elif name in IMAGE_FIELDS:
            row[name] = full = value if os.path.isabs(value) else os.path.join(base, value)
            problem = _check_image(full)
            if problem:
                # a path written relative to where the user runs, not to the data file
                moved = problem == "image file not found" and os.path.isfile(value)
                bad(name, f"{problem}: {full}" + (" (relative paths start at the data file's folder)" if moved else ""))
    if "difficulty" in row:
        d = row["difficulty"]
        if not isinstance(d, (int, float)) or isinstance(d, bool):  # JSON's true is Python's 1
            bad("difficulty", f"must be a number, got {_shown(d)}")
        elif not math.isfinite(d):  # json reads NaN and Infinity; the curriculum cannot sort them
            bad("difficulty", f"must be a finite number, got {_shown(d)}")
    step = row.get("noise_step")
    if step is not None and (not isinstance(step, int) or isinstance(step, bool) or not 0 <= step < NOISE_STEPS):
        bad("noise_step", f"must be a whole number in [0, {NOISE_STEPS}), got {_shown(step)}")
    cut = row.get("truncated", [])
    if not isinstance(cut, list) or not all(isinstance(f, str) and f in TEXT_FIELDS for f in cut):
        bad("truncated", f"must be a list of response field names ({', '.join(TEXT_FIELDS[1:])})")
    return found


def _check_image(path: str) -> str | None:
    if os.path.isdir(path):
        return "is a folder, not an image file"
    if not os.path.isfile(path):
        return "image file not found"
    try:
        with Image.open(path) as img:
            img.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        return f"cannot decode image ({type(e).__name__})"
    return None


def _shown(value) -> str:
    """A JSON value as the user wrote it, cut to fit in one error line."""
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 40 else text[:37] + "..."


def _whole_file_json(lines: list[bytes]) -> str | None:
    """What the file is when it is one pretty-printed JSON object rather than JSON Lines (an
    array: ``check_file``)."""
    try:
        doc = json.loads(b"\n".join(lines).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    n = sum(1 for ln in lines if ln.strip())
    return f"one JSON object over {n} lines" if isinstance(doc, dict) and n > 1 else None


def _messages(path: str, problems: list[tuple], n_objects: int) -> list[str]:
    """The final lines in file order: a field missing on several rows is said once, where it is
    first missing, with the command that makes it when it is a generated field."""
    missing = {}
    for ln, name, msg in problems:
        if msg is None:
            missing.setdefault(name, []).append(ln)
    out = []
    for ln, name, msg in problems:
        if msg is not None:
            out.append(msg)
        elif len(missing[name]) == 1:
            out.append(f"{path}:{ln}: field '{name}': missing")
        elif missing[name][0] == ln:
            lines = missing[name]
            shown = ", ".join(map(str, lines[:5])) + (", ..." if len(lines) > 5 else "")
            line = f"{path}: field '{name}': missing on {len(lines)} of {n_objects} rows (lines {shown})"
            if name in GENERATED_BY:
                line += f"; make it with python -m mmpo.prepare {GENERATED_BY[name]} --data {path} --out DIR --model M"
            out.append(line)
    return out
