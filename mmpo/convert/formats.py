"""Released datasets as mmpo's rows {"id", "image", "prompt", "chosen", "rejected"}
(``python -m mmpo.convert FORMAT SRC OUT``). The formats, with their sources:

- ``trl``: TRL's vision preference format, as JSONL (TRL's "Dataset formats and types", section
  "Vision datasets": https://huggingface.co/docs/trl/dataset_formats; a release in this form:
  HuggingFaceH4/rlaif-v_formatted). ``images`` is a list of images, each a path, or, as HF datasets
  stores its Image feature, {"bytes": ..., "path": ...} or {"path": ...}, the bytes in JSON as
  base64 text (or a list of byte values). ``prompt``, ``chosen`` and ``rejected`` are strings
  (standard) or message lists (conversational): [{"role": "user", "content": [{"type": "image"},
  {"type": "text", "text": Q}]}] and one assistant message for each answer; a content is a string
  or a list of parts. mmpo scores one image and one turn: a row with no image or several, or a
  prompt of several messages (a system message too), is malformed. Read line by line.
- ``llava``: LLaVA's conversation JSON, for ``train.py --objective sft`` (LLaVA's
  docs/Finetune_Custom_Data.md: https://github.com/haotian-liu/LLaVA; llava_v1_5_mix665k.json):
  a list of {"id", "image" (text-only rows have none), "conversations": [{"from": "human",
  "value": "<image>\\nQ"}, {"from": "gpt", "value": "A"}, ...]}. The first human turn, without
  "<image>", is the prompt and the first gpt turn is chosen; later turns are dropped (mmpo trains
  one turn) and counted in the summary. The file is one JSON list, so it is read whole with
  json.load: the one input here that is not streamed.
- ``pope``: POPE's released question files (github.com/AoiDragon/POPE, output/coco/
  coco_pope_{random,popular,adversarial}.json), JSON Lines of {"question_id", "image" (a COCO
  val2014 file name: give --image-folder), "text", "label": "yes" | "no"}, as rows for
  ``eval.py --bench pope``: {"id", "image", "question", "answer"}. Convert each split to its own
  OUT and give one ``--bench pope OUT/data.jsonl`` per split.
- ``coco-chair``: COCO's instances and captions files (SRC: instances_val2014.json or its folder)
  as rows for ``eval.py --bench chair``, 500 images drawn by default or those an ``--image-ids``
  file names (Object HalBench's 300): coco.py.

Embedded images are written once, to OUT/images/ under their content's sha256 (16 hex digits)
and their format's extension; image paths are resolved against --image-folder (default: SRC's
folder) and kept where they are. A malformed row is one line on stderr with its row number
(the line of a JSONL, the position in LLaVA's list) and is skipped.

Resuming, as ``python -m mmpo.prepare``: rows already in OUT/data.jsonl are kept, and a re-run
continues after them; OUT/convert.json records what decides the rows (format, SRC with its size
and modification time, --image-folder), and a re-run with other settings is refused
(``--overwrite`` starts afresh).
"""
import base64
import hashlib
import io
import json
import os
import shutil
import sys
from collections import Counter

from PIL import Image, UnidentifiedImageError

from mmpo import cli
from mmpo.cli import UserError, first_line
from mmpo.files import locked, write_atomic
from mmpo.prepare.command import done_ids

SETTINGS = "convert.json"  # beside OUT/data.jsonl: what decided its rows
EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp"}


class Malformed(Exception):
    """A source row that cannot become an mmpo row: one line, then it is skipped."""


def build_parser() -> cli.Parser:
    p = cli.Parser(prog="python -m mmpo.convert", description="Convert a released dataset to mmpo's JSONL.")
    p.add_argument("format", choices=(*FORMATS, *WITH_OPTIONS))
    p.add_argument("src", help="the released file (never modified): TRL's JSONL, LLaVA's JSON list, a POPE question "
                               "file, or COCO's instances file (coco-chair; or the folder holding it)")
    p.add_argument("out", help="output folder: data.jsonl, images/ (the embedded images) and convert.json (the settings)")
    p.add_argument("--image-folder", default=None, help="where relative image paths start (default: SRC's folder)")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh: delete OUT/data.jsonl, OUT/images/ and OUT/convert.json first (without it a "
                        "re-run continues, and only with the same settings)")
    for module in WITH_OPTIONS.values():
        module.add_options(p)
    return p


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


def llava_rows(path: str):
    try:
        with open(path, "rb") as f:
            data = json.load(f)
    except ValueError as e:
        raise UserError(f"{path}: not a JSON file ({first_line(e)}); LLaVA's conversations are one JSON list") from None
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a JSON list of LLaVA conversations, got a {type(data).__name__}")
    yield from enumerate(data, 1)


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


FORMATS = {"trl": (jsonl_rows, trl_row), "llava": (llava_rows, llava_row), "pope": (pope_rows, pope_row)}


# ---- resuming: the rows written so far, and the settings that made them ------------------------

def row_settings(args) -> dict:
    module = WITH_OPTIONS.get(args.format)
    options = module.settings(args) if module else {}  # checked first: they may name SRC's file
    if not os.path.isfile(args.src):
        raise UserError(f"{args.src}: no such file")
    folder = args.image_folder or os.path.dirname(os.path.abspath(args.src))
    if not os.path.isdir(folder):
        raise UserError(f"--image-folder {folder}: no such folder")
    st = os.stat(args.src)
    return {"format": args.format, "src": os.path.realpath(args.src), "src_size": st.st_size,
            "src_mtime": st.st_mtime, "image_folder": os.path.realpath(folder), **options}


def start_output(args, settings: dict) -> list[str]:
    """Ids of the rows already written (none with --overwrite, which removes them), after checking
    that they were made with these settings; then the settings are recorded."""
    out_path, record, images = (os.path.join(args.out, n) for n in ("data.jsonl", SETTINGS, "images"))
    fresh = f"use another OUT, or add --overwrite to start afresh (it deletes {out_path}, {images}/ and {record})"
    if args.overwrite:
        for path in (out_path, record):
            if os.path.isfile(path):
                os.remove(path)
        shutil.rmtree(images, ignore_errors=True)
    done = done_ids(out_path)
    if done:
        try:
            with open(record) as f:
                old = json.load(f)
        except (OSError, ValueError) as e:
            raise UserError(f"{out_path} holds {len(done)} rows but {record} is missing or unreadable ({first_line(e)}): "
                            f"they cannot be checked against this run's settings: {fresh}") from None
        diff = [f"{k.replace('image_folder', '--image-folder')} {old.get(k)} (now {v})"
                for k, v in settings.items() if not isinstance(old, dict) or old.get(k) != v]
        if diff:
            raise UserError(f"{out_path} holds {len(done)} rows made with other settings: {'; '.join(diff)}. "
                            f"Run with the old settings to continue, or {fresh}")
    os.makedirs(images, exist_ok=True)
    write_atomic(record, json.dumps(settings, indent=1))
    return done


def convert(args) -> Counter:
    settings = row_settings(args)
    stats = Counter()
    ctx = {"out": args.out, "image_folder": settings["image_folder"], "stats": stats}
    module = WITH_OPTIONS.get(args.format)
    read, make = (lambda path: module.rows(path, settings), module.row) if module else FORMATS[args.format]
    with locked(args.out, "mmpo.convert", flag="OUT"):
        done = set(start_output(args, settings))
        seen = {}  # id -> row number: ids must be unique, as read_rows checks
        with open(os.path.join(args.out, "data.jsonl"), "a", encoding="utf-8") as out:
            for n, src in read(args.src):
                try:
                    if isinstance(src, Malformed):
                        raise src
                    if not isinstance(src, dict):
                        raise Malformed(f"expected a JSON object, got {type(src).__name__}")
                    rid = src.get("id", n)
                    rid = str(rid) if isinstance(rid, int) and not isinstance(rid, bool) else rid
                    if not isinstance(rid, str) or not rid.strip():
                        raise Malformed(f"field 'id': must be a non-empty string or a whole number, got {shown(rid)}")
                    if rid in seen:
                        raise Malformed(f"field 'id': duplicate id {rid!r} (first on row {seen[rid]})")
                    seen[rid] = n
                    if rid in done:
                        stats["rows already there"] += 1
                        continue
                    row = {"id": rid, **make(src, ctx)}
                except Malformed as e:
                    print(f"{args.src}: row {n}: {e}; skipped", file=sys.stderr)
                    stats["rows skipped (malformed)"] += 1
                    continue
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
                out.flush()  # a killed run loses at most the line being written (done_ids cuts it off)
                stats["rows written"] += 1
    if not stats["rows written"] + stats["rows already there"]:
        raise UserError(f"{args.src}: no row could be converted ({stats['rows skipped (malformed)']} skipped)")
    return stats


def run(argv=None) -> int:
    def go():
        args = build_parser().parse_args(argv)
        stats = convert(args)
        first = ("rows written", "rows already there")
        lines = [f"  {k}: {stats[k]}" for k in first] + [f"  {k}: {v}" for k, v in sorted(stats.items()) if k not in first]
        print("\n".join([f"convert {args.format}:", *lines, f"  output: {os.path.join(args.out, 'data.jsonl')}"]))
    return cli.run(go, light=True)


# A format with options of its own is a module: add_options(parser); settings(args), which checks
# them and returns what they add to the settings; rows(SRC, settings) and row(src, ctx), as above.
# Imported last: it uses the helpers above.
from mmpo.convert import coco  # noqa: E402

WITH_OPTIONS = {"coco-chair": coco}
