"""`python -m mmpo.convert`: released datasets, in their own schemas, become rows that mmpo reads.
Each test writes a small file in the real schema (TRL's vision preference JSONL, LLaVA's
conversation JSON), converts it, and reads the result with mmpo.rows.read_rows."""
import base64
import io
import json
import os
import subprocess
import sys

from PIL import Image

from conftest import ROOT, write_jsonl
from mmpo.convert.command import run
from mmpo.rows import read_rows, required_fields

PREFERENCE = required_fields(("chosen", "rejected"), "blur")
SFT = required_fields(("chosen",), "blur")


def png(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, format="PNG")
    return buf.getvalue()


def embedded(color) -> dict:
    """An image as HF datasets writes its Image feature to JSON: base64 bytes, and a path or null."""
    return {"bytes": base64.b64encode(png(color)).decode(), "path": None}


def trl_rows(tmp_path) -> list[dict]:
    """Plain and conversational rows (as HuggingFaceH4/rlaif-v_formatted), images embedded or by path."""
    Image.new("RGB", (8, 8), "blue").save(tmp_path / "blue.png")
    talk = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is red?"}]}]
    answer = lambda text: [{"role": "assistant", "content": [{"type": "text", "text": text}]}]  # noqa: E731
    return [
        {"images": [embedded("red")], "prompt": "What colour?", "chosen": "Red.", "rejected": "Green."},
        {"images": [embedded("red")], "prompt": talk, "chosen": answer("A square."), "rejected": answer("A dog.")},
        {"images": ["blue.png"], "prompt": "And this?", "chosen": "Blue.", "rejected": "Red."},
        {"images": [{"bytes": None, "path": "blue.png"}], "prompt": [{"role": "user", "content": "Colour?"}],
         "chosen": [{"role": "assistant", "content": "Blue."}], "rejected": "Pink."},
    ]


def convert(*argv) -> int:
    return run([str(a) for a in argv])


def test_trl_plain_and_conversational(tmp_path, capsys):
    src = write_jsonl(tmp_path / "trl.jsonl", trl_rows(tmp_path))
    assert convert("trl", src, tmp_path / "out") == 0
    rows = read_rows(str(tmp_path / "out" / "data.jsonl"), PREFERENCE)
    assert [r["prompt"] for r in rows] == ["What colour?", "What is red?", "And this?", "Colour?"]
    assert [r["chosen"] for r in rows] == ["Red.", "A square.", "Blue.", "Blue."]
    assert [r["id"] for r in rows] == ["1", "2", "3", "4"]  # no id given: the line number, as read_rows does
    # the red image, embedded twice, is written once, named by its content; paths stay where they are
    assert os.listdir(tmp_path / "out" / "images") == [os.path.basename(rows[0]["image"])]
    assert rows[0]["image"] == rows[1]["image"] and rows[0]["image"].endswith(".png")
    assert rows[2]["image"] == rows[3]["image"] == str(tmp_path / "blue.png")
    assert "rows written: 4" in capsys.readouterr().out


def test_malformed_rows_are_reported_and_skipped(tmp_path, capsys):
    good = trl_rows(tmp_path)[0]
    bad = [dict(good, images=[]), dict(good, images=[embedded("red")] * 2), dict(good, chosen=""),
           dict(good, images=[{"bytes": "bm90IGFuIGltYWdl"}])]  # base64 of "not an image"
    src = write_jsonl(tmp_path / "trl.jsonl", [good, *bad])
    with open(src, "a") as f:
        f.write("{not json\n")
    assert convert("trl", src, tmp_path / "out") == 0
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert err == [
        f"{src}: row 2: field 'images': mmpo takes exactly one image per row, got 0 images; skipped",
        f"{src}: row 3: field 'images': mmpo takes exactly one image per row, got 2 images; skipped",
        f"{src}: row 4: field 'chosen': must be a non-empty string or one assistant message, got \"\"; skipped",
        f"{src}: row 5: embedded image: cannot decode it (UnidentifiedImageError); skipped",
        f"{src}: row 6: invalid JSON (Expecting property name enclosed in double quotes: line 1 column 2 (char 1)); skipped"]
    assert "rows skipped (malformed): 5" in captured.out
    assert len(read_rows(str(tmp_path / "out" / "data.jsonl"), PREFERENCE)) == 1


def test_nothing_converted_is_an_error(tmp_path, capsys):
    src = write_jsonl(tmp_path / "trl.jsonl", [{"images": [], "prompt": "Q", "chosen": "A", "rejected": "B"}])
    assert convert("trl", src, tmp_path / "out") == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"error: {src}: no row could be converted (1 skipped)"


def test_resumed_equals_uninterrupted(tmp_path, capsys):
    src = write_jsonl(tmp_path / "trl.jsonl", trl_rows(tmp_path))
    assert convert("trl", src, tmp_path / "whole") == 0
    whole = (tmp_path / "whole" / "data.jsonl").read_text()
    assert convert("trl", src, tmp_path / "part") == 0
    lines = (tmp_path / "part" / "data.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "part" / "data.jsonl").write_text("".join(lines[:2]) + lines[2][:10])  # killed mid-line
    capsys.readouterr()
    assert convert("trl", src, tmp_path / "part") == 0
    out = capsys.readouterr().out
    assert "rows written: 2" in out and "rows already there: 2" in out
    assert (tmp_path / "part" / "data.jsonl").read_text() == whole


def test_other_settings_are_refused(tmp_path, capsys):
    src = write_jsonl(tmp_path / "trl.jsonl", trl_rows(tmp_path))
    assert convert("trl", src, tmp_path / "out") == 0
    capsys.readouterr()
    assert convert("trl", src, tmp_path / "out", "--image-folder", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "holds 4 rows made with other settings: --image-folder" in err and "--overwrite" in err
    assert convert("trl", src, tmp_path / "out", "--image-folder", tmp_path / "out", "--overwrite") == 0  # afresh: blue.png is not there
    assert "rows skipped (malformed): 2" in capsys.readouterr().out
    assert len((tmp_path / "out" / "data.jsonl").read_text().splitlines()) == 2


def test_llava_sft(tmp_path, capsys):
    """LLaVA-1.5's mix665k schema: an image row, a text-only row, and a multi-turn row whose later
    turns are dropped (mmpo trains one turn)."""
    os.makedirs(tmp_path / "coco" / "train2017")
    Image.new("RGB", (8, 8), "red").save(tmp_path / "coco" / "train2017" / "000000033471.jpg")
    data = [
        {"id": "000000033471", "image": "coco/train2017/000000033471.jpg",
         "conversations": [{"from": "human", "value": "<image>\nWhat colour is it?"}, {"from": "gpt", "value": "Red."}]},
        {"id": "text-1", "conversations": [{"from": "human", "value": "Say hi."}, {"from": "gpt", "value": "Hi."}]},
        {"id": 7, "image": "coco/train2017/000000033471.jpg",
         "conversations": [{"from": "human", "value": "Describe it.\n<image>"}, {"from": "gpt", "value": "A square."},
                           {"from": "human", "value": "Sure?"}, {"from": "gpt", "value": "Yes."}]},
        {"id": "bad", "conversations": [{"from": "gpt", "value": "Hi."}]},
    ]
    (tmp_path / "llava.json").write_text(json.dumps(data))
    assert convert("llava", tmp_path / "llava.json", tmp_path / "out", "--image-folder", tmp_path) == 0
    captured = capsys.readouterr()
    assert captured.err.count("skipped") == 1 and "row 4: field 'conversations'" in captured.err
    assert "later turns dropped: 2" in captured.out
    rows = read_rows(str(tmp_path / "out" / "data.jsonl"), SFT)
    assert [(r["id"], r["prompt"], r["chosen"], "image" in r) for r in rows] == [
        ("000000033471", "What colour is it?", "Red.", True), ("text-1", "Say hi.", "Hi.", False),
        ("7", "Describe it.", "A square.", True)]
    assert "rejected" not in rows[0]


def test_command_line(tmp_path):
    """As a user runs it: the summary on stdout, nothing on stderr."""
    src = write_jsonl(tmp_path / "trl.jsonl", trl_rows(tmp_path))
    done = subprocess.run([sys.executable, "-m", "mmpo.convert", "trl", str(src), str(tmp_path / "out")],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0 and not done.stderr, done.stderr
    assert done.stdout.startswith("convert trl:\n  rows written: 4\n")
    # no torch (650 MB of memory before any row), even when --overwrite clears an earlier OUT
    again = ("import sys; from mmpo.convert.command import run; code = run(sys.argv[1:]); "
             "print('torch' in sys.modules, 'transformers' in sys.modules); sys.exit(code)")
    done = subprocess.run([sys.executable, "-c", again, "trl", str(src), str(tmp_path / "out"), "--overwrite"],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.endswith("False False\n"), done.stdout + done.stderr


def test_pope_question_files(tmp_path, capsys):
    """POPE's released question file (coco_pope_*.json: JSON Lines of question_id, image, text,
    label) becomes eval.py's --bench pope rows, COCO file names resolved in --image-folder."""
    from mmpo.evaluation.metrics import label_problems
    (tmp_path / "val2014").mkdir()
    for name in ("COCO_val2014_000000310196.jpg", "COCO_val2014_000000210789.jpg"):
        Image.new("RGB", (8, 8), "white").save(tmp_path / "val2014" / name)
    src = write_jsonl(tmp_path / "coco_pope_random.json", [
        {"question_id": 1, "image": "COCO_val2014_000000310196.jpg", "text": "Is there a snowboard in the image?",
         "label": "yes"},
        {"question_id": 2, "image": "COCO_val2014_000000210789.jpg", "text": "Is there a dog in the image?", "label": "No"},
        {"question_id": 3, "image": "COCO_val2014_000000210789.jpg", "text": "Is there a cat?", "label": "maybe"},
        {"question_id": 4, "image": "COCO_val2014_000000999999.jpg", "text": "Is there a car?", "label": "no"},
    ])
    out = tmp_path / "pope-random"
    assert convert("pope", src, out, "--image-folder", tmp_path / "val2014") == 0
    err = capsys.readouterr().err.splitlines()
    assert err == [f"{src}: row 3: field 'label': must be yes or no, got \"maybe\"; skipped",
                   f"{src}: row 4: image file not found: {tmp_path / 'val2014' / 'COCO_val2014_000000999999.jpg'}; "
                   "skipped"]
    rows = read_rows(str(out / "data.jsonl"), {"image"})  # as eval.py reads a bench: "question" filed as "prompt"
    assert [(r["id"], r["prompt"], r["answer"]) for r in rows] == [("1", "Is there a snowboard in the image?", "yes"),
                                                                  ("2", "Is there a dog in the image?", "no")]
    assert rows[0]["image"] == str(tmp_path / "val2014" / "COCO_val2014_000000310196.jpg")
    assert all(label_problems("pope", r) == [] for r in rows)
