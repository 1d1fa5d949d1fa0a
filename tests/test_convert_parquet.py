"""`python -m mmpo.convert rlaif-v`: RLAIF-V-Dataset's parquet (openbmb/RLAIF-V-Dataset) becomes
mmpo's rows. Each test writes small parquet files in the released schema, the images as real PNG
and JPEG bytes in HF datasets' {bytes, path} struct, converts them and reads the result back with
mmpo.rows.read_rows. pyarrow is optional: without it only rlaif-v stops, in one line."""
import io
import os
import random
import subprocess
import sys

import pytest
from PIL import Image

from conftest import ROOT
from mmpo.convert.command import run
from mmpo.rows import read_rows, required_fields

PREFERENCE = required_fields(("chosen", "rejected"), "blur")


@pytest.fixture
def pa():
    return pytest.importorskip("pyarrow", reason="format rlaif-v reads parquet with pyarrow (CI installs it)")


def image_bytes(color, kind="PNG", size=8) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format=kind)
    return buf.getvalue()


def pair(idx, image, question="What colour is it?", chosen="Red.", rejected="Green.") -> dict:
    """One row as RLAIF-V-Dataset stores it (its card's dataset_info, in that order)."""
    return {"ds_name": "RLAIF-V", "image": {"bytes": image, "path": None}, "question": question, "chosen": chosen,
            "rejected": rejected, "origin_dataset": "VQAv2",
            "origin_split": '{"model": "OmniLMM-12B", "feedback_model": "RLAIF-V-12B", "type": "question_answering"}',
            "idx": idx, "image_path": f"coco/{idx}.jpg"}


def write_parquet(pa, path, rows, **options) -> str:
    import pyarrow.parquet as pq
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])  # HF datasets' Image feature
    schema = pa.schema([(name, image if name == "image" else pa.string()) for name in pair("x", b"")])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), str(path), **options)
    return str(path)


def convert(*argv) -> int:
    return run(["rlaif-v", *map(str, argv)])


def test_rows_read_back_and_an_image_is_written_once(pa, tmp_path, capsys):
    red = image_bytes("red", "JPEG")
    src = write_parquet(pa, tmp_path / "RLAIF-V-Dataset_000.parquet", [
        pair("q1", red, chosen="Red.", rejected="Green."),
        pair("q1", red, chosen="It is red.", rejected="Blue."),  # RLAIF-V's second pair for one question: same idx
        pair("q2", image_bytes("blue"), question="And this one?", chosen="Blue.", rejected="Red."),
        pair(None, red, question="Again?", chosen="Red again.", rejected="Pink."),
    ])
    assert convert(src, tmp_path / "out") == 0
    out = capsys.readouterr().out
    assert "rows written: 4" in out and "images written: 2" in out
    assert "rows repeating an earlier idx (id: idx#2, #3, ...): 1" in out and "rows without idx (id: the row number): 1" in out
    rows = read_rows(str(tmp_path / "out" / "data.jsonl"), PREFERENCE)
    assert [(r["id"], r["prompt"], r["chosen"], r["rejected"]) for r in rows] == [
        ("q1", "What colour is it?", "Red.", "Green."), ("q1#2", "What colour is it?", "It is red.", "Blue."),
        ("q2", "And this one?", "Blue.", "Red."), ("4", "Again?", "Red again.", "Pink.")]
    # the red JPEG of three rows is one file, named by its content; the images are the released bytes
    assert rows[0]["image"] == rows[1]["image"] == rows[3]["image"] != rows[2]["image"]
    assert sorted(os.listdir(tmp_path / "out" / "images")) == sorted(os.path.basename(r["image"]) for r in rows[1:3])
    assert rows[0]["image"].endswith(".jpg") and rows[2]["image"].endswith(".png")
    with open(rows[0]["image"], "rb") as f:
        assert f.read() == red
    # provenance kept as released; ds_name (always RLAIF-V) and the image struct are not copied
    assert rows[2]["origin_dataset"] == "VQAv2" and rows[2]["image_path"] == "coco/q2.jpg"
    assert '"feedback_model": "RLAIF-V-12B"' in rows[2]["origin_split"] and "ds_name" not in rows[2]


def test_malformed_rows_are_one_line_each_with_their_file_and_row(pa, tmp_path, capsys):
    src = write_parquet(pa, tmp_path / "shard.parquet", [
        pair("ok", image_bytes("red")),
        pair("bytes", b"\xff\xd8 not a JPEG"),
        pair("empty", image_bytes("red"), chosen=" "),
        pair("none", image_bytes("red"), question=None),
        dict(pair("noimage", None), image=None),
    ])
    assert convert(src, tmp_path / "out") == 0
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [
        f"{src}: row 2: field 'image': embedded image: cannot decode it (UnidentifiedImageError); skipped",
        f"{src}: row 3: field 'chosen': must be a non-empty string, got \" \"; skipped",
        f"{src}: row 4: field 'question': must be a non-empty string, got null; skipped",
        f"{src}: row 5: field 'image': an image must be a path, or {{'bytes': ...}} or {{'path': ...}}, got null; skipped"]
    assert "rows skipped (malformed): 4" in captured.out and "rows written: 1" in captured.out
    assert [r["id"] for r in read_rows(str(tmp_path / "out" / "data.jsonl"), PREFERENCE)] == ["ok"]


def test_a_folder_of_shards_is_read_in_name_order_rows_counted_across_files(pa, tmp_path, capsys):
    shards = tmp_path / "RLAIF-V-Dataset"
    shards.mkdir()
    # written in the other order: the folder is read by name, as the released shards are numbered
    second = write_parquet(pa, shards / "RLAIF-V-Dataset_001.parquet", [
        pair(None, image_bytes("green")), pair("q1", image_bytes("red"), chosen=""), pair("q1", image_bytes("red"))])
    write_parquet(pa, shards / "RLAIF-V-Dataset_000.parquet", [pair("q1", image_bytes("red")), pair("q2", image_bytes("blue"))])
    (shards / "README.md").write_text("the dataset card: not a shard")
    assert convert(shards, tmp_path / "out") == 0
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [f"{second}: row 2: field 'chosen': must be a non-empty string, got \"\"; skipped"]
    rows = read_rows(str(tmp_path / "out" / "data.jsonl"), PREFERENCE)
    # row 3 of all (the first of the second file) has no idx; q1's pairs are numbered across the files
    assert [r["id"] for r in rows] == ["q1", "q2", "3", "q1#3"]
    assert len(os.listdir(tmp_path / "out" / "images")) == 3
    # one file given alone: its own rows only
    assert convert(second, tmp_path / "one") == 0
    assert [r["id"] for r in read_rows(str(tmp_path / "one" / "data.jsonl"), PREFERENCE)] == ["1", "q1#2"]


def test_resumed_equals_uninterrupted(pa, tmp_path, capsys):
    shards = tmp_path / "shards"
    shards.mkdir()
    for i in range(2):
        write_parquet(pa, shards / f"RLAIF-V-Dataset_00{i}.parquet",
                      [pair(f"q{i}{j // 2}", image_bytes((40 * j, 100, 30 * i)), chosen=f"Answer {i}{j}.") for j in range(5)])
    assert convert(shards, tmp_path / "whole") == 0
    whole = (tmp_path / "whole" / "data.jsonl").read_text()
    assert len(whole.splitlines()) == 10
    assert convert(shards, tmp_path / "part") == 0
    lines = (tmp_path / "part" / "data.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "part" / "data.jsonl").write_text("".join(lines[:6]) + lines[6][:15])  # killed mid-line, in the second file
    capsys.readouterr()
    assert convert(shards, tmp_path / "part") == 0
    out = capsys.readouterr().out
    assert "rows written: 4" in out and "rows already there: 6" in out
    assert (tmp_path / "part" / "data.jsonl").read_text() == whole
    # a shard added to the folder changes the source: continuing is refused
    write_parquet(pa, shards / "RLAIF-V-Dataset_002.parquet", [pair("new", image_bytes("white"))])
    assert convert(shards, tmp_path / "part") == 2
    assert "holds 10 rows made with other settings: SRC's size" in capsys.readouterr().err


def test_not_rlaif_v_is_one_line(pa, tmp_path, capsys):
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"prompt": ["Q"], "images": [[b""]]}), str(tmp_path / "trl.parquet"))
    assert convert(tmp_path / "trl.parquet", tmp_path / "out") == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: {tmp_path / 'trl.parquet'}: no column image, question, chosen, rejected (it has prompt, images): "
        "not the schema of format rlaif-v"]
    (tmp_path / "data.parquet").write_text("not parquet")
    assert convert(tmp_path / "data.parquet", tmp_path / "out") == 2
    assert capsys.readouterr().err.startswith(f"error: {tmp_path / 'data.parquet'}: not a parquet file (")
    assert not os.path.exists(tmp_path / "out")  # nothing written before the source is known to be readable


def test_without_pyarrow_rlaif_v_stops_in_one_line_and_the_rest_works(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow now raises ImportError
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    (tmp_path / "RLAIF-V-Dataset_000.parquet").write_bytes(b"PAR1")
    assert convert(tmp_path / "RLAIF-V-Dataset_000.parquet", tmp_path / "out") == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: format rlaif-v reads parquet, which needs pyarrow: pip install pyarrow"]
    assert not os.path.exists(tmp_path / "out")
    (tmp_path / "red.png").write_bytes(image_bytes("red"))
    (tmp_path / "trl.jsonl").write_text('{"images": ["red.png"], "prompt": "Q", "chosen": "A", "rejected": "B"}\n')
    assert run(["trl", str(tmp_path / "trl.jsonl"), str(tmp_path / "trl")]) == 0


PEAK = """import sys
from mmpo.convert.command import run
code = run(sys.argv[1:])
# VmHWM: this process's peak since exec (ru_maxrss would start from the forking pytest's size)
print([ln.split()[1] for ln in open("/proc/self/status") if ln.startswith("VmHWM")][0])
sys.exit(code)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="peak memory read from Linux's /proc")
def test_memory_does_not_grow_with_the_file(pa, tmp_path):
    """4x the rows (43 MiB more images, every one distinct, in one row group as pandas writes it)
    leave the converter's peak memory where it was: rows are read a page at a time. Reading the
    whole column chunk (pyarrow's default pre-buffering) adds about the file's size."""
    rng = random.Random(0)
    peaks = {}
    for n in (100, 400):
        rows = []
        for i in range(n):
            buf = io.BytesIO()
            Image.frombytes("RGB", (224, 224), rng.randbytes(224 * 224 * 3)).save(buf, format="PNG", compress_level=1)
            rows.append(pair(f"q{i}", buf.getvalue()))
        # pages of 16 rows: a page is the least a reader can read, and pyarrow's default puts 1024 rows in one
        src = write_parquet(pa, tmp_path / f"{n}.parquet", rows, row_group_size=n, write_batch_size=16)
        done = subprocess.run([sys.executable, "-c", PEAK, "rlaif-v", str(src), str(tmp_path / f"out{n}")],
                              cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert f"rows written: {n}" in done.stdout
        peaks[n] = int(done.stdout.split()[-1]) / 1024  # MiB
        size = os.path.getsize(src) / 2 ** 20
    assert size > 50  # the larger file: 4x the smaller one's images
    assert peaks[400] - peaks[100] < 20, peaks  # read whole: +45-60 MiB; a page at a time: +2-8


def test_trl_as_hf_datasets_stores_it(pa, tmp_path, capsys):
    """TRL's format as parquet shards (HuggingFaceH4/rlaif-v_formatted's data/train-*.parquet):
    conversational messages whose parts are structs (an image part's text is null), images a list
    of {bytes, path}; the same rows as the JSONL form. A parquet file given to a JSON Lines format
    is one line."""
    import pyarrow.parquet as pq
    part = pa.struct([("text", pa.string()), ("type", pa.string())])
    message = pa.list_(pa.struct([("content", pa.list_(part)), ("role", pa.string())]))
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    schema = pa.schema([("chosen", message), ("rejected", message), ("images", pa.list_(image)), ("prompt", message)])

    def row(color, question, chosen, images=1):
        say = lambda role, text: [{"content": [{"text": text, "type": "text"}], "role": role}]  # noqa: E731
        return {"chosen": say("assistant", chosen), "rejected": say("assistant", "Green."),
                "images": [{"bytes": image_bytes(color), "path": None}] * images,
                "prompt": [{"content": [{"text": None, "type": "image"}, {"text": question, "type": "text"}],
                            "role": "user"}]}
    shards = tmp_path / "data"
    shards.mkdir()
    pq.write_table(pa.Table.from_pylist([row("red", "What colour?", "Red."), row("red", "Again?", "Red.", images=2)],
                                        schema=schema), str(shards / "train-00000-of-00002.parquet"))
    pq.write_table(pa.Table.from_pylist([row("blue", "And this?", "Blue.")], schema=schema),
                   str(shards / "train-00001-of-00002.parquet"))
    assert run(["trl", str(shards), str(tmp_path / "out")]) == 0
    rows = read_rows(str(tmp_path / "out" / "data.jsonl"), PREFERENCE)
    assert [(r["id"], r["prompt"], r["chosen"]) for r in rows] == [("1", "What colour?", "Red."), ("3", "And this?", "Blue.")]
    with Image.open(rows[1]["image"]) as img:
        assert img.getpixel((4, 4)) == (0, 0, 255)
    assert capsys.readouterr().err.splitlines() == [
        f"{shards / 'train-00000-of-00002.parquet'}: row 2: field 'images': mmpo takes exactly one image per row, "
        "got 2 images; skipped"]
    # POPE's question files are JSON Lines: a parquet file is one line, not a line per row
    assert run(["pope", str(shards / "train-00001-of-00002.parquet"), str(tmp_path / "pope")]) == 2
    assert capsys.readouterr().err == f"error: {shards / 'train-00001-of-00002.parquet'}: a parquet file, expected JSON Lines\n"
