"""Released datasets as mmpo's rows {"id", "image", "prompt", "chosen", "rejected"}
(``python -m mmpo.convert FORMAT SRC OUT``, command.py): what every format shares (images, row
numbers, the parquet reader) and the general formats, with their sources (the papers' own data:
papers.py):

- ``trl``: TRL's vision preference format, as JSONL (TRL's "Dataset formats and types", section
  "Vision datasets": https://huggingface.co/docs/trl/dataset_formats; a release in this form:
  HuggingFaceH4/rlaif-v_formatted). ``images`` is a list of images, each a path, or, as HF datasets
  stores its Image feature, {"bytes": ..., "path": ...} or {"path": ...}, the bytes in JSON as
  base64 text (or a list of byte values). ``prompt``, ``chosen`` and ``rejected`` are strings
  (standard) or message lists (conversational): [{"role": "user", "content": [{"type": "image"},
  {"type": "text", "text": Q}]}] and one assistant message for each answer; a content is a string
  or a list of parts. mmpo scores one image and one turn: a row with no image or several, or a
  prompt of several messages (a system message too), is malformed. Read line by line; or, as HF
  datasets stores such a release (rlaif-v_formatted's data/train-*.parquet), parquet: one file or
  the folder of its shards.
- ``llava``: LLaVA's conversation JSON, for ``train.py --objective sft`` (LLaVA's
  docs/Finetune_Custom_Data.md: https://github.com/haotian-liu/LLaVA; llava_v1_5_mix665k.json):
  a list of {"id", "image" (text-only rows have none), "conversations": [{"from": "human",
  "value": "<image>\\nQ"}, {"from": "gpt", "value": "A"}, ...]}. The first human turn, without
  "<image>", is the prompt and the first gpt turn is chosen; later turns are dropped (mmpo trains
  one turn) and counted in the summary. The file is one JSON list, so it is read whole with
  json.load, not streamed (as mdpo's).
- ``pope``: POPE's released question files (github.com/AoiDragon/POPE, output/coco/
  coco_pope_{random,popular,adversarial}.json), JSON Lines of {"question_id", "image" (a COCO
  val2014 file name: give --image-folder), "text", "label": "yes" | "no"}, as rows for
  ``eval.py --bench pope``: {"id", "image", "question", "answer"}. Convert each split to its own
  OUT and give one ``--bench pope OUT/data.jsonl`` per split.
Embedded images are written once, to OUT/images/ under their content's sha256 (16 hex digits)
and their format's extension; image paths are resolved against --image-folder (default: SRC's
folder) and kept where they are. A malformed row is one line on stderr with its row number
(the line of a JSONL, the position in a JSON list, the row of a parquet file with that file's
name) and is skipped. Parquet (pyarrow, which mmpo does not require, imported only then) is read a
few rows at a time, only the columns used, one file or a folder of shards in name order: memory
does not grow with the data. ``idx``, the releases' id, is the row's id, a repeat of it ``#2``,
``#3``, ... in row order, and a row without one has its row number counted across the files.
"""
import base64
import hashlib
import io
import json
import os
from collections import Counter

from PIL import Image, UnidentifiedImageError

from mmpo.cli import UserError, first_line
from mmpo.common.util import read_json
from mmpo.files import write_atomic

EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp"}


class Malformed(Exception):
    """A source row that cannot become an mmpo row: one line, then it is skipped."""


def shown(value) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 40 else text[:37] + "..."


# ---- images: embedded ones written once, paths resolved ----------------------------------------

def image_path(value, ctx) -> str:
    """The path an mmpo row gives for one source image: OUT/images/NAME (relative to OUT) for
    embedded bytes, or the source's own file, absolute."""
    if isinstance(value, dict) and value.get("bytes") is not None:
        return save_bytes(value["bytes"], ctx)
    path = value.get("path") if isinstance(value, dict) else value
    if not isinstance(path, str) or not path.strip():
        raise Malformed(f"an image must be a path, or {{'bytes': ...}} or {{'path': ...}}, got {shown(value)}")
    full = os.path.join(ctx["image_folder"], path)  # an absolute path stays as it is
    if not os.path.isfile(full):
        raise Malformed(f"image file not found: {full}")
    return os.path.abspath(full)


def save_bytes(data, ctx) -> str:
    try:
        raw = base64.b64decode(data, validate=True) if isinstance(data, str) else bytes(data)
        with Image.open(io.BytesIO(raw)) as img:
            kind = img.format
            img.verify()
    except (TypeError, ValueError, UnidentifiedImageError, OSError, SyntaxError) as e:  # binascii.Error is a ValueError
        raise Malformed(f"embedded image: cannot decode it ({type(e).__name__})") from None
    rel = os.path.join("images", hashlib.sha256(raw).hexdigest()[:16] + EXTENSIONS.get(kind, "." + kind.lower()))
    if not os.path.isfile(os.path.join(ctx["out"], rel)):  # the same image in many rows: one file
        write_atomic(os.path.join(ctx["out"], rel), raw)
        ctx["stats"]["images written"] += 1
    return rel


# ---- the formats: a reader of (row number, row) and a converter of one row ---------------------

def jsonl_rows(path: str):
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            if n == 1 and line.startswith(b"PAR1"):
                raise UserError(f"{path}: a parquet file, expected JSON Lines")
            if n == 1 and line.lstrip(b"\xef\xbb\xbf \t").startswith(b"["):
                raise UserError(f"{path}: a JSON list, expected JSON Lines (one row per line; LLaVA's JSON is format llava)")
            if line.strip():
                try:
                    yield n, json.loads(line)
                except ValueError as e:  # UnicodeDecodeError and JSONDecodeError both
                    yield n, Malformed(f"invalid JSON ({first_line(e)})")


def text_of(content, field: str) -> str:
    """A message's content as text: a string, or its text parts joined (image parts mark where the image goes)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) for p in content):
        if all(isinstance(p.get("text"), str) for p in content if p.get("type") == "text"):
            return "\n".join(p["text"] for p in content if p.get("type") == "text")
    raise Malformed(f"field '{field}': a content must be a string or a list of {{'type', ...}} parts, got {shown(content)}")


def one_turn(value, field: str, role: str) -> str:
    """A field as text: a string (standard form), or a list of one ``role`` message (conversational)."""
    if isinstance(value, list):
        if len(value) != 1 or not isinstance(value[0], dict) or value[0].get("role") != role:
            raise Malformed(f"field '{field}': expected one {role} message (mmpo trains one turn), got {shown(value)}")
        value = text_of(value[0].get("content"), field)
    if not isinstance(value, str) or not value.strip():
        raise Malformed(f"field '{field}': must be a non-empty string or one {role} message, got {shown(value)}")
    return value


def trl_rows(src: str):
    """JSON Lines, or parquet (a file, or a folder of shards)."""
    if not os.path.isdir(src):
        with open(src, "rb") as f:
            if f.read(4) != b"PAR1":  # parquet's magic bytes
                return jsonl_rows(src)
    return parquet_rows(src, "trl", ("images", "prompt", "chosen", "rejected"))


def trl_row(src: dict, ctx) -> dict:
    if "prompt" not in src:
        raise Malformed("no field 'prompt' (TRL's implicit prompt, inside chosen and rejected, is not read)")
    text = {"prompt": one_turn(src["prompt"], "prompt", "user"),
            "chosen": one_turn(src.get("chosen"), "chosen", "assistant"),
            "rejected": one_turn(src.get("rejected"), "rejected", "assistant")}
    images = src.get("images")
    if not isinstance(images, list) or len(images) != 1:
        got = f"{len(images)} images" if isinstance(images, list) else shown(images)
        raise Malformed(f"field 'images': mmpo takes exactly one image per row, got {got}")
    return {"image": image_path(images[0], ctx), **text}


def json_list_rows(path: str, what: str):
    """(position, row) of a file that is one JSON list of ``what``, read whole."""
    data = read_json(path, f"; {what} are one JSON list")
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a JSON list of {what}, got a {type(data).__name__}")
    yield from enumerate(data, 1)


def llava_rows(path: str):
    return json_list_rows(path, "LLaVA's conversations")


def llava_row(src: dict, ctx) -> dict:
    turns = src.get("conversations")
    if not isinstance(turns, list) or len(turns) < 2 or not all(isinstance(t, dict) for t in turns[:2]):
        raise Malformed(f"field 'conversations': expected a human turn and a gpt turn, got {shown(turns)}")
    (human, gpt), later = turns[:2], len(turns) - 2
    if (human.get("from"), gpt.get("from")) != ("human", "gpt"):
        raise Malformed(f"field 'conversations': expected a human turn then a gpt turn, got {human.get('from')!r} "
                        f"then {gpt.get('from')!r}")
    q, a = human.get("value"), gpt.get("value")
    if not isinstance(q, str) or not isinstance(a, str) or not a.strip():
        raise Malformed("field 'conversations': the turns' values must be strings, the answer non-empty")
    prompt = q.replace("<image>\n", "").replace("\n<image>", "").replace("<image>", "").strip()
    if not prompt and src.get("image") is None:
        raise Malformed("a text-only row with an empty question")
    row = {"prompt": prompt, "chosen": a}
    if src.get("image") is not None:
        row = {"image": image_path(src["image"], ctx), **row}
    if later:
        ctx["stats"]["later turns dropped"] += later
        ctx["stats"]["rows with later turns"] += 1
    return row


def pope_rows(path: str):
    """POPE's question files are JSON Lines too; their id is ``question_id``."""
    for n, src in jsonl_rows(path):
        yield n, ({"id": src["question_id"], **src} if isinstance(src, dict) and "question_id" in src else src)


def pope_row(src: dict, ctx) -> dict:
    question, label = src.get("text"), src.get("label")
    if not isinstance(question, str) or not question.strip():
        raise Malformed(f"field 'text': must be a non-empty string, got {shown(question)}")
    if not isinstance(label, str) or label.strip().lower() not in ("yes", "no"):
        raise Malformed(f"field 'label': must be yes or no, got {shown(label)}")
    return {"image": image_path(src.get("image"), ctx), "question": question, "answer": label.strip().lower()}


# ---- parquet: the released datasets' form ---------------------------------------------------

def parquet_files(src: str) -> list[str]:
    """SRC itself, or a folder's .parquet files in name order (HF's shards sort in their order)."""
    if not os.path.isdir(src):
        return [src]
    files = sorted(os.path.join(src, f) for f in os.listdir(src) if f.endswith(".parquet"))
    if not files:
        raise UserError(f"{src}: a folder with no .parquet file")
    return files


def parquet_rows(src: str, fmt: str, needed: tuple[str, ...], kept: tuple[str, ...] = ()):
    """Opens every file and checks its ``needed`` columns at once (before OUT is touched: a file of
    another dataset is one error, not a line per row), then gives (where, row) as they are read,
    with only the ``needed`` and ``kept`` columns."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UserError(f"format {fmt} reads parquet, which needs pyarrow: pip install pyarrow") from None
    opened = []
    for path in parquet_files(src):
        try:
            # pre_buffer off and a read buffer: a column chunk is read a page at a time, not whole
            # (a shard written as one row group holds every image of the file in one chunk)
            f = pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 20)
        except (OSError, ValueError) as e:  # ArrowInvalid is a ValueError
            raise UserError(f"{path}: not a parquet file ({first_line(e)})") from None
        names = f.schema_arrow.names
        missing = [c for c in needed if c not in names]
        if missing:
            raise UserError(f"{path}: no column {', '.join(missing)} (it has {', '.join(names)}): not the schema of format {fmt}")
        opened.append((path, f, [c for c in ("idx", *needed, *kept) if c in names]))
    return _parquet_batches(opened)


def _parquet_batches(opened, batch: int = 64):
    n, times = 0, Counter()  # times: idx -> rows so far with it
    for path, f, columns in opened:
        k = 0
        try:
            for table in f.iter_batches(batch_size=batch, columns=columns):
                for src in table.to_pylist():
                    n, k = n + 1, k + 1
                    idx = src.get("idx")
                    if isinstance(idx, int) and not isinstance(idx, bool):  # a copy that stored it as a number
                        src["idx"] = idx = str(idx)
                    if isinstance(idx, str) and idx.strip():
                        times[idx] += 1
                        src["id"] = idx if times[idx] == 1 else f"{idx}#{times[idx]}"
                    else:
                        src["id"] = n
                    yield f"{path}: row {k}", src
        except (OSError, ValueError) as e:
            raise UserError(f"{path}: cannot read it after row {k} ({first_line(e)})") from None


def count_id(src: dict, ctx):
    """A parquet row's id, when it is not its own ``idx``, is counted in the summary."""
    if src["id"] != src.get("idx"):
        ctx["stats"]["rows without idx (id: the row number)" if isinstance(src["id"], int) else
                     "rows repeating an earlier idx (id: idx#2, #3, ...)"] += 1


def text(src: dict, field: str) -> str:
    value = src.get(field)
    if not isinstance(value, str) or not value.strip():
        raise Malformed(f"field '{field}': must be a non-empty string, got {shown(value)}")
    return value


def embedded(src: dict, field: str, ctx) -> str:
    """An image column: the released struct {bytes, path} (a copy may hold the bytes alone)."""
    value = src.get(field)
    try:
        return image_path({"bytes": value} if isinstance(value, bytes) else value, ctx)
    except Malformed as e:
        raise Malformed(f"field '{field}': {e}") from None


FORMATS = {"trl": (trl_rows, trl_row), "llava": (llava_rows, llava_row), "pope": (pope_rows, pope_row)}
