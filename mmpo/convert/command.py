"""``python -m mmpo.convert FORMAT SRC OUT``: the command line, and the run that writes OUT/data.jsonl
row by row (the formats: formats.py and papers.py).

Resuming, as ``python -m mmpo.prepare``: rows already in OUT/data.jsonl are kept, and a re-run
continues after them; OUT/convert.json records what decides the rows (format, SRC with its size
and modification time, for a folder its files' total size and newest time, --image-folder), and a
re-run with other settings is refused (``--overwrite`` starts afresh).
"""
import json
import os
import sys
from collections import Counter

from mmpo import cli
from mmpo.cli import UserError
from mmpo.convert import coco, formats, papers
from mmpo.convert.formats import Malformed, parquet_files, shown
from mmpo.common.lock import locked
from mmpo.common.output import done_ids, start_output

SETTINGS = "convert.json"  # beside OUT/data.jsonl: what decided its rows
NAMES = {"format": "the format", "src": "SRC", "src_size": "SRC's size", "src_mtime": "SRC's modification time",
         "image_folder": "--image-folder"}
FORMATS = {**formats.FORMATS, **papers.FORMATS}
PARQUET = ("trl", "rlaif-v", "rlhf-v", "napo", "symmpo")  # SRC may be a folder of shards
# A format with options of its own is a module: add_options(parser); settings(args), which checks
# them and returns what they add to the settings; rows(SRC, settings) and row(src, ctx), as FORMATS'.
WITH_OPTIONS = {"coco-chair": coco}


def build_parser() -> cli.Parser:
    p = cli.Parser(prog="python -m mmpo.convert", description="Convert a released dataset to mmpo's JSONL.")
    p.add_argument("format", choices=(*FORMATS, *WITH_OPTIONS))
    p.add_argument("src", help="the released file (never modified): TRL's JSONL or parquet, LLaVA's JSON list, a POPE "
                               "question file, mDPO's JSON list, a parquet file of RLAIF-V's, RLHF-V's, NaPO's or "
                               "SymMPO's release (parquet: or the folder of its shards), or COCO's instances file "
                               "(coco-chair; or the folder holding it)")
    p.add_argument("out", help="output folder: data.jsonl, images/ (the embedded images) and convert.json (the settings)")
    p.add_argument("--image-folder", default=None, help="where relative image paths start (default: SRC's folder)")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh: delete OUT/data.jsonl, OUT/images/ and OUT/convert.json first (without it a "
                        "re-run continues, and only with the same settings)")
    for module in WITH_OPTIONS.values():
        module.add_options(p)
    return p


# ---- resuming: the rows written so far, and the settings that made them ------------------------

def row_settings(args) -> dict:
    for name, other in WITH_OPTIONS.items():
        if name != args.format and other.given(args):
            raise UserError(f"{other.given(args)[0]}: an option of format {name}, not of {args.format}")
    module = WITH_OPTIONS.get(args.format)
    options = module.settings(args) if module else {}  # checked first: they may name SRC's file
    shards = args.format in PARQUET and os.path.isdir(args.src)  # a folder of parquet files
    if not shards and not os.path.isfile(args.src):
        raise UserError(f"{args.src}: no such file" + (f" (a folder is read by {', '.join(PARQUET)})"
                                                       if os.path.isdir(args.src) else ""))
    folder = args.image_folder or (args.src if shards else os.path.dirname(os.path.abspath(args.src)))
    if not os.path.isdir(folder):
        raise UserError(f"--image-folder {folder}: no such folder")
    st = [os.stat(f) for f in (parquet_files(args.src) if shards else [args.src])]
    return {"format": args.format, "src": os.path.realpath(args.src), "src_size": sum(s.st_size for s in st),
            "src_mtime": max(s.st_mtime for s in st), "image_folder": os.path.realpath(folder), **options}


def convert(args) -> Counter:
    settings = row_settings(args)
    stats = Counter()
    ctx = {"out": args.out, "image_folder": settings["image_folder"], "stats": stats}
    module = WITH_OPTIONS.get(args.format)
    read, make = (lambda path: module.rows(path, settings), module.row) if module else FORMATS[args.format]
    rows = read(args.src)  # parquet formats check pyarrow and their files here, before OUT is touched
    with locked(args.out, "mmpo.convert", flag="OUT"):
        start_output(args, settings, record_name=SETTINGS, out_flag="OUT", names=NAMES)
        done = set(done_ids(os.path.join(args.out, "data.jsonl")))
        seen = {}  # id -> where: ids must be unique, as read_rows checks
        with open(os.path.join(args.out, "data.jsonl"), "a", encoding="utf-8") as out:
            for n, src in rows:
                where = n if isinstance(n, str) else f"{args.src}: row {n}"  # a str: the file (of a folder) and its row
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
                        raise Malformed(f"field 'id': duplicate id {rid!r} (first at {seen[rid]})")
                    seen[rid] = where
                    if rid in done:
                        stats["rows already there"] += 1
                        continue
                    row = {"id": rid, **make(src, ctx)}
                except Malformed as e:
                    print(f"{where}: {e}; skipped", file=sys.stderr)
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
