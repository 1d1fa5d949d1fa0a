"""`python -m mmpo.convert mdpo|napo|symmpo|rlhf-v`: each paper's released data, written here in its real
schema (field names as released; see mmpo/convert/papers.py for where each was read), becomes
rows that the paper's method reads: NaPO's biased answers land in lang_biased / vision_biased,
SymMPO's similar image and its answer in contrast_image / contrast_chosen."""
import io
import json
import os
import sys

import pytest
from PIL import Image

from mmpo.convert.command import run
from mmpo.rows import read_rows, required_fields

pq = pytest.importorskip("pyarrow.parquet")
import pyarrow as pa  # noqa: E402

MDPO = required_fields(("chosen", "rejected", "chosen_on_corrupt"), "crop")
NAPO = required_fields(("chosen", "rejected", "lang_biased", "vision_biased"), "crop")
SYMMPO = required_fields(("chosen", "rejected", "contrast_on_image", "chosen_on_corrupt", "contrast_on_corrupt"),
                         "contrast")


def jpeg(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, format="JPEG")
    return buf.getvalue()


def hf_image(color, path) -> dict:
    """HF datasets' Image feature as stored in parquet: a struct of bytes and path."""
    return {"bytes": jpeg(color), "path": path}


def write_parquet(path, rows):
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def convert(*argv) -> int:
    return run([str(a) for a in argv])


def test_mdpo_vlfeedback_pairs(tmp_path, capsys):
    """vlfeedback_llava_10k.json (as data/sample_data.json): Bunny's template is taken off the
    prompt; img_path is found in VLFeedback's merged_images/ as written or by its file name."""
    images = tmp_path / "merged_images"
    images.mkdir()
    for name, color in (("llava-reasoning-3730.jpg", "gray"), ("llava-reasoning-5951.jpg", "orange")):
        Image.new("RGB", (8, 8), color).save(images / name)
    system = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
              "detailed, and polite answers to the user's questions.")
    data = [
        {"img_path": "images/llava-reasoning-3730.jpg",
         "prompt": f"{system} USER: <image>\nHow might the atmosphere of this photo appear to be? ASSISTANT:",
         "chosen": "The atmosphere appears rainy and gloomy.", "rejected": "The atmosphere is sunny and bustling."},
        {"img_path": "llava-reasoning-5951.jpg",
         "prompt": f"{system} USER: <image>\nWhat kind of gathering is taking place in this image? ASSISTANT:",
         "chosen": "A Thanksgiving dinner.", "rejected": "A birthday party at a beach."},
        {"img_path": "images/vqa-sa-3001.jpg", "prompt": f"{system} USER: <image>\nWhat is this? ASSISTANT:",
         "chosen": "A bus.", "rejected": "A train."},
    ]
    src = tmp_path / "vlfeedback_llava_10k.json"
    src.write_text(json.dumps(data, indent=4))
    assert convert("mdpo", src, tmp_path / "out", "--image-folder", images) == 0
    assert capsys.readouterr().err.splitlines() == [
        f"{src}: row 3: field 'img_path': image file not found: {images / 'images/vqa-sa-3001.jpg'} "
        "(nor vqa-sa-3001.jpg in --image-folder); skipped"]
    rows = read_rows(str(tmp_path / "out" / "data.jsonl"), MDPO)
    assert [(r["id"], r["prompt"], r["chosen"]) for r in rows] == [
        ("1", "How might the atmosphere of this photo appear to be?", "The atmosphere appears rainy and gloomy."),
        ("2", "What kind of gathering is taking place in this image?", "A Thanksgiving dinner.")]
    assert [r["image"] for r in rows] == [str(images / "llava-reasoning-3730.jpg"), str(images / "llava-reasoning-5951.jpg")]


def rlaif_v_bias_row(n, image, question_only="Yes, there is a dog in the image.",
                     image_only="The image shows a brown dog lying on a green couch.") -> dict:
    """One row of Starrrrrry/RLAIF-V-Bias-Dataset: RLAIF-V's columns, then the two generated answers."""
    return {"ds_name": "RLAIF-V-Bias-Dataset", "image": image, "question": "Is there a cat in the image?",
            "chosen": "No, there is a dog on the couch, not a cat.", "rejected": "Yes, a cat sits on the couch.",
            "origin_dataset": "VQAv2", "origin_split": json.dumps({"model": "OmniLMM-12B", "type": "question_answering"}),
            "idx": f"OmniLMM-12B_OmniLMM-12B_{n}", "image_path": f"vqav2/COCO_train2014_{n:012d}.jpg",
            "image_only": image_only, "question_only": question_only}


def test_napo_rlaif_v_bias_shards(tmp_path, capsys):
    """A folder of two shards: question_only (answered without the image) becomes lang_biased and
    image_only (the image with no question) vision_biased; a bad row is named by its shard."""
    shards = tmp_path / "RLAIF-V-Bias-Dataset"
    shards.mkdir()
    dog = hf_image("brown", "COCO_train2014_000000000009.jpg")
    write_parquet(shards / "RLAIF-V-Dataset-000-11.parquet", [
        rlaif_v_bias_row(0, dog, question_only="Yes, there is a cat in the image."),
        rlaif_v_bias_row(1, dog)])
    write_parquet(shards / "RLAIF-V-Dataset-001-11.parquet", [
        rlaif_v_bias_row(2, hf_image("white", None), image_only=None),
        rlaif_v_bias_row(3, hf_image("green", None), image_only="A green square.")])
    out = tmp_path / "out"
    assert convert("napo", shards, out) == 0
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [
        f"{shards / 'RLAIF-V-Dataset-001-11.parquet'}: row 1: field 'image_only': must be a non-empty string, "
        "got null; skipped"]
    assert "rows written: 3" in captured.out and "images written: 2" in captured.out  # the dog once
    rows = read_rows(str(out / "data.jsonl"), NAPO)
    assert [r["id"] for r in rows] == ["OmniLMM-12B_OmniLMM-12B_0", "OmniLMM-12B_OmniLMM-12B_1",
                                       "OmniLMM-12B_OmniLMM-12B_3"]
    assert rows[0]["lang_biased"] == "Yes, there is a cat in the image."
    assert rows[0]["vision_biased"] == "The image shows a brown dog lying on a green couch."
    assert rows[2]["vision_biased"] == "A green square."
    assert (rows[0]["prompt"], rows[0]["chosen"]) == ("Is there a cat in the image?",
                                                      "No, there is a dog on the couch, not a cat.")
    assert rows[0]["image"] == rows[1]["image"] != rows[2]["image"]
    assert open(rows[2]["image"], "rb").read() == jpeg("green")

    assert convert("napo", shards, out) == 0  # a re-run over the same folder continues
    assert "rows already there: 3" in capsys.readouterr().out


def test_napo_refuses_a_release_without_the_biased_answers(tmp_path, capsys):
    """RLAIF-V itself (no question_only / image_only) is one error, not a line per row."""
    row = rlaif_v_bias_row(0, hf_image("brown", None))
    del row["image_only"], row["question_only"]
    src = write_parquet(tmp_path / "RLAIF-V-Dataset_000.parquet", [row])
    assert convert("napo", src, tmp_path / "out") == 2
    assert f"{src}: no column question_only, image_only" in capsys.readouterr().err


def test_parquet_needs_pyarrow(tmp_path, capsys, monkeypatch):
    src = write_parquet(tmp_path / "shard.parquet", [rlaif_v_bias_row(0, hf_image("brown", None))])
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # as if it were not installed
    assert convert("napo", src, tmp_path / "out") == 2
    assert capsys.readouterr().err == "error: format napo reads parquet, which needs pyarrow: pip install pyarrow\n"


def test_symmpo_similar_image_and_its_answer(tmp_path, capsys):
    """SymMPO's shard (as its demo SymMPO-similar_image_Dataset_000-500.parquet): image_2, the
    similar image, becomes contrast_image and resp_2_w, the answer for it, contrast_chosen."""
    bus, train = hf_image("red", "coco/000000123.jpg"), hf_image("blue", "coco/000000456.jpg")

    def row(n, image_2, **answers):
        return {"question": "Describe this image.", "image_1": bus, "image_2": image_2,
                "resp_1_w": "A red bus parked by the road.", "resp_1_l": "A blue train in a station.",
                "resp_2_w": "A blue train at a platform.", "resp_2_l": "A red bus on a bridge.",
                "idx": f"symmpo_{n}", "origin_dataset": "RLAIF-V", "origin_split": json.dumps({"type": "detailed"}),
                "image_path_1": "coco/000000123.jpg", "image_path_2": "coco/000000456.jpg", **answers}

    src = write_parquet(tmp_path / "SymMPO-similar_image_Dataset_000-500.parquet", [
        row(0, train), row(1, {"bytes": b"not an image", "path": None}),
        row(2, train, resp_2_w="A blue train leaving.")])
    out = tmp_path / "out"
    assert convert("symmpo", src, out) == 0
    assert capsys.readouterr().err.splitlines() == [
        f"{src}: row 2: field 'image_2': embedded image: cannot decode it (UnidentifiedImageError); skipped"]
    rows = read_rows(str(out / "data.jsonl"), SYMMPO)
    assert [(r["id"], r["contrast_chosen"]) for r in rows] == [("symmpo_0", "A blue train at a platform."),
                                                              ("symmpo_2", "A blue train leaving.")]
    assert (rows[0]["chosen"], rows[0]["rejected"]) == ("A red bus parked by the road.", "A blue train in a station.")
    assert open(rows[0]["image"], "rb").read() == jpeg("red")
    assert open(rows[0]["contrast_image"], "rb").read() == jpeg("blue")
    assert "resp_2_l" not in rows[0] and sorted(os.listdir(out / "images")) == sorted(
        os.path.basename(r) for r in (rows[0]["image"], rows[0]["contrast_image"]))


def test_rlhf_v_text_json(tmp_path, capsys):
    """RLHF-V-Dataset.parquet (MFPO's text preferences): the pair is JSON text in 'text', idx a
    number; a 'text' that is not JSON is one line and skipped."""
    def row(idx, text, color="navy"):
        return {"ds_name": "RLHF-V", "image": hf_image(color, None), "text": text, "origin_dataset": "VQAv2",
                "origin_split": '{"model": "muffin", "type": "detailed description"}', "idx": idx,
                "image_path": f"coco/{idx}.jpg"}
    pair = {"question": "Describe the image.", "chosen": "A navy square on a table.",
            "rejected": "A navy square next to a cat."}
    src = write_parquet(tmp_path / "RLHF-V-Dataset.parquet",
                        [row(7, json.dumps(pair)), row(9, "not json"), row(11, json.dumps({**pair, "chosen": ""}))])
    assert convert("rlhf-v", src, tmp_path / "out") == 0
    rows = read_rows(str(tmp_path / "out" / "data.jsonl"), MDPO)
    assert [(r["id"], r["prompt"], r["chosen"], r["rejected"]) for r in rows] == [
        ("7", "Describe the image.", "A navy square on a table.", "A navy square next to a cat.")]
    assert rows[0]["origin_dataset"] == "VQAv2" and rows[0]["image_path"] == "coco/7.jpg"
    with Image.open(rows[0]["image"]) as img:
        assert img.getpixel((4, 4))[2] > 100 > img.getpixel((4, 4))[0]  # navy: the embedded image, decoded
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"{src}: row 2: field 'text': must be JSON text {{question, chosen, rejected}} (")
    assert err[1] == f"{src}: row 3: field 'chosen': must be a non-empty string, got \"\"; skipped"
