"""The output folder that prepare and convert share: OUT/data.jsonl written a row at a time,
OUT/images/, and a record of the settings that made its rows (prepare.json, convert.json).

Resuming: rows already in OUT/data.jsonl are kept and never redone (``done_ids``), which is right
only under the same settings, so ``start_output`` refuses a re-run with other settings
(``--overwrite`` starts afresh). No torch: convert imports none.
"""
import json
import os
import shutil

from mmpo.cli import UserError, first_line
from mmpo.constants import IMAGE_FIELDS
from mmpo.files import write_atomic


def finished_rows(path: str) -> tuple[list[str], int]:
    """Ids of the complete rows an earlier (possibly killed) run wrote, and the bytes they take
    (a half-written last line is not counted). Reads only."""
    if not os.path.isfile(path):
        return [], 0
    ids, keep = [], 0
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")[:-1]
    for line in lines:  # a row is complete once its newline is written
        try:
            ids.append(json.loads(line)["id"])
            keep += len(line) + 1
        except (ValueError, KeyError, TypeError):
            break
    return ids, keep


def done_ids(path: str) -> list[str]:
    """Ids already written; a half-written last line is cut off, so new rows start on a clean line."""
    ids, keep = finished_rows(path)
    if os.path.isfile(path) and keep < os.path.getsize(path):
        with open(path, "r+b") as f:
            f.truncate(keep)
    return ids


def differences(old: dict, new: dict, names: dict | None = None) -> list[str]:
    """'--option OLD (now NEW)' for each setting that differs ("not used": that run ignored it);
    ``names``: how a setting is named, where it is not its option."""
    missing = object()

    def show(key, v) -> str:
        if v is missing:
            return "not used"
        if key == "data_sha256":
            return "sha256 " + str(v)[:12]
        if isinstance(v, bool):
            return "on" if v else "off"
        return "none" if v is None else "''" if v == "" else str(v)
    out = []
    for key in list(new) + [k for k in old if k not in new]:
        a, b = old.get(key, missing), new.get(key, missing)
        if a != b:
            name = (names or {"method": "the method", "data_sha256": "--data's content",
                              "keyphrases": "mmpo's keyphrase ranking"}).get(key, "--" + key.replace("_", "-"))
            out.append(f"{name} {show(key, a)} (now {show(key, b)})")
    return out


def start_output(args, settings: dict, rows=(), record_name: str = "prepare.json", out_flag: str = "--out",
                 names: dict | None = None) -> None:
    """Make OUT ready (before any model loads). --overwrite removes what an earlier run wrote;
    otherwise rows already there must come from the same settings (else they would mix with this
    run's). Then this run's settings are recorded, atomically. Also mmpo.convert's (``record_name``
    convert.json, its OUT a positional ``out_flag``, ``names`` its settings' names)."""
    out_path, record, images = (os.path.join(args.out, n) for n in ("data.jsonl", record_name, "images"))
    fresh = (f"use another {out_flag}, or add --overwrite to start afresh (it deletes {out_path}, {images}/ "
             f"and {record})")
    if args.overwrite and rows:
        inside = [r[f] for r in rows for f in IMAGE_FIELDS
                  if r.get(f) and os.path.realpath(r[f]).startswith(os.path.realpath(images) + os.sep)]
        if inside:
            raise UserError(f"--overwrite would delete {images}, which holds input images ({inside[0]}): choose another --out")
    n = len(finished_rows(out_path)[0])
    count = f"{n} row{'s' * (n != 1)}"
    if n and not args.overwrite:
        try:
            with open(record) as f:
                old = json.load(f)
        except FileNotFoundError:
            raise UserError(f"{out_path} holds {count} but no {record_name} is beside it (an older version, or "
                            f"something else, wrote it): its rows cannot be checked against this run's settings: "
                            f"{fresh}") from None
        except (OSError, ValueError) as e:
            raise UserError(f"{record}: unreadable ({first_line(e)}), so the {count} beside it cannot be checked: "
                            f"{fresh}") from None
        diff = differences(old if isinstance(old, dict) else {}, settings, names)
        if diff:
            raise UserError(f"{out_path} holds {count} made with other settings: {'; '.join(diff)}. "
                            f"Run with the old settings to continue, or {fresh}")
    try:
        if args.overwrite:
            for path in (out_path, record):
                if os.path.isfile(path):
                    os.remove(path)
            if os.path.isdir(images):
                shutil.rmtree(images)
        os.makedirs(images, exist_ok=True)
        write_atomic(record, json.dumps(settings, indent=1))
    except OSError as e:
        raise UserError(f"{out_flag} {args.out}: cannot write there ({e.strerror or first_line(e)})") from None
