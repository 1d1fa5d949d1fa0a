"""`python -m mmpo.convert coco-chair`: COCO's instances and captions files, in their released
schema, become eval.py --bench chair rows whose ground truth is the CHAIR reference's (instance
labels plus the captions' objects); images drawn by seed, or named by Object HalBench's file."""
import base64
import io
import json
import os

import pytest
from PIL import Image

from conftest import write_jsonl
from mmpo.convert.command import run
from mmpo.common.chair import to_category, true_objects
from mmpo.evaluation.metrics import label_problems
from mmpo.rows import read_rows

# COCO's own ids and names (instances_val2014.json, "categories")
CATEGORIES = [{"supercategory": "person", "id": 1, "name": "person"},
              {"supercategory": "vehicle", "id": 2, "name": "bicycle"},
              {"supercategory": "vehicle", "id": 4, "name": "motorcycle"},
              {"supercategory": "animal", "id": 18, "name": "dog"},
              {"supercategory": "furniture", "id": 62, "name": "chair"},
              {"supercategory": "furniture", "id": 67, "name": "dining table"},
              {"supercategory": "electronic", "id": 72, "name": "tv"}]
IDS = [391895, 522418, 184613, 318219, 554625, 397133, 37777, 87038, 174482, 403385, 6818, 480985]
LABELS = {391895: [4, 1, 1, 2, 1],  # repeated and out of category order, as annotations come
          522418: [1, 67, 62], 184613: [18, 1], 554625: [72]}  # the others: no instance label
CAPTIONS = {391895: ["A man with a red helmet on a small moped on a dirt road. ",
                     "Man riding a motor bike on a dirt road on the countryside.",
                     "A man riding on the back of a motorcycle.",
                     "A dirt path with a young person on a motor bike rests to the foreground of a verdant area.",
                     "A man in a red shirt and a red hat is on a motorcycle on a hill side.",
                     "A sixth caption: some COCO images have six or seven."],
            522418: ["A woman wearing a net on her head cutting a cake. "]}


def coco_files(folder, ids=IDS) -> str:
    """instances_val2014.json and captions_val2014.json in COCO's schema, in ``folder``."""
    folder.mkdir(exist_ok=True)
    images = [{"license": 3, "file_name": f"COCO_val2014_{i:012d}.jpg", "coco_url": "", "height": 8, "width": 8,
               "date_captured": "2013-11-14 11:18:45", "flickr_url": "", "id": i} for i in ids]
    annotations = [{"segmentation": [[1.0, 1.0, 2.0, 2.0]], "area": 1.0, "iscrowd": 0, "image_id": i,
                    "bbox": [1.0, 1.0, 2.0, 2.0], "category_id": c, "id": 1000 + n}
                   for n, (i, c) in enumerate((i, c) for i, cs in LABELS.items() for c in cs)]
    info = {"description": "COCO 2014 Dataset", "version": "1.0", "year": 2014}
    (folder / "instances_val2014.json").write_text(json.dumps(
        {"info": info, "images": images, "licenses": [], "annotations": annotations, "categories": CATEGORIES}))
    (folder / "captions_val2014.json").write_text(json.dumps(
        {"info": info, "images": images, "licenses": [],
         "annotations": [{"image_id": i, "id": 2000 + n, "caption": c}
                         for n, (i, c) in enumerate((i, c) for i, cs in CAPTIONS.items() for c in cs)]}))
    return str(folder)


@pytest.fixture
def coco(tmp_path):
    """COCO's annotation folder and its val2014 images (8x8 stand-ins under their real names)."""
    (tmp_path / "val2014").mkdir()
    for i in IDS:
        Image.new("RGB", (8, 8), "white").save(tmp_path / "val2014" / f"COCO_val2014_{i:012d}.jpg")
    return coco_files(tmp_path / "annotations")


def convert(*argv) -> int:
    return run([str(a) for a in argv])


def rows_of(out) -> list[dict]:
    return read_rows(str(out / "data.jsonl"), {"image"})


def test_rows_hold_the_reference_ground_truth(tmp_path, coco, capsys):
    out = tmp_path / "chair"
    assert convert("coco-chair", coco, out, "--image-folder", tmp_path / "val2014", "--images", "0") == 0
    assert "rows written: 12" in capsys.readouterr().out
    rows = {r["id"]: r for r in rows_of(out)}
    assert sorted(rows) == sorted(map(str, IDS))  # --images 0: every image, named by its COCO id
    moped = rows["391895"]
    # the instance labels once each, in COCO's category order, as COCO names them
    assert moped["objects"] == ["person", "bicycle", "motorcycle"]
    assert moped["captions"] == CAPTIONS[391895]  # all of them, as written
    assert moped["prompt"] == "Please describe this image in detail."  # OPERA's
    assert moped["image"] == str(tmp_path / "val2014" / "COCO_val2014_000000391895.jpg")
    assert (rows["522418"]["objects"], rows["184613"]["objects"]) == (["person", "chair", "dining table"],
                                                                       ["person", "dog"])
    assert (rows["318219"]["objects"], rows["318219"]["captions"]) == ([], [])  # no label: every mention hallucinated
    # eval.py's ground truth: the instances (the reference maps each name to its category, "tv"
    # to tv) plus the captions' objects (man, moped, motorcycle...: person and motorcycle)
    assert sorted({to_category(o) for o in true_objects(rows["554625"])}) == ["tv"]
    assert sorted(set(true_objects(moped))) == ["bicycle", "motorcycle", "person"]
    # the caption's cake
    assert sorted(set(true_objects(rows["522418"]))) == ["cake", "chair", "dining table", "person"]
    assert all(label_problems("chair", r) == [] for r in rows.values())


def test_images_are_drawn_by_seed(tmp_path, coco):
    drawn = {}
    for name, seed in [("a", 0), ("b", 0), ("c", 1)]:
        assert convert("coco-chair", coco, tmp_path / name, "--image-folder", tmp_path / "val2014",
                       "--images", "5", "--seed", seed) == 0
        drawn[name] = [r["id"] for r in rows_of(tmp_path / name)]
    assert drawn["a"] == drawn["b"] and len(drawn["a"]) == 5 and set(drawn["a"]) <= set(map(str, IDS))
    assert drawn["c"] != drawn["a"]  # another seed, another draw
    # the default draws 500 (OPERA's count): all 12 here, in a drawn order
    assert convert("coco-chair", coco, tmp_path / "d", "--image-folder", tmp_path / "val2014") == 0
    assert sorted(r["id"] for r in rows_of(tmp_path / "d")) == sorted(map(str, IDS))
    # a re-run with another seed into the same OUT is refused: its rows were drawn otherwise
    assert convert("coco-chair", coco, tmp_path / "a", "--image-folder", tmp_path / "val2014", "--images", "5",
                   "--seed", "1") == 2


def jpeg(color) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, format="JPEG")
    return base64.b64encode(buf.getvalue()).decode()


def test_object_halbench_images_and_prompts(tmp_path, coco, capsys):
    """RLHF-V's obj_halbench_300_with_image.jsonl, as its readers use it: "image_id" (read with
    int()), "question" (one of its detail prompts) and "image" (the JPEG, base64). The prompts
    here stand in for its eight."""
    halbench = write_jsonl(tmp_path / "obj_halbench_300_with_image.jsonl", [
        {"org_idx": 0, "image_id": 554625, "question": "Describe this image in detail.", "image": jpeg("red")},
        {"org_idx": 1, "image_id": "000000391895", "question": "Provide a detailed description of the image.",
         "image": jpeg("blue")},
        {"org_idx": 2, "image_id": 999999, "question": "Describe this image in detail.", "image": jpeg("red")},
        {"org_idx": 3, "image_id": 184613, "question": "What is in the image?"}])  # no image: from --image-folder
    out = tmp_path / "objhal"
    assert convert("coco-chair", coco, out, "--image-ids", halbench, "--image-folder", tmp_path / "val2014") == 0
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [
        f"{halbench}: row 3: image 999999 is not in instances_val2014.json; skipped"]  # the line of --image-ids
    rows = rows_of(out)
    # exactly the listed images, in the file's order, each with its own question
    assert [(r["id"], r["prompt"], r["objects"]) for r in rows] == [
        ("554625", "Describe this image in detail.", ["tv"]),
        ("391895", "Provide a detailed description of the image.", ["person", "bicycle", "motorcycle"]),
        ("184613", "What is in the image?", ["person", "dog"])]
    # the embedded images are written to OUT/images/, once each; a row without one takes COCO's file
    assert sorted(os.listdir(out / "images")) == sorted(os.path.basename(r["image"]) for r in rows[:2])
    assert rows[2]["image"] == str(tmp_path / "val2014" / "COCO_val2014_000000184613.jpg")
    # --prompt overrides the file's questions; embedded images need no --image-folder
    one = write_jsonl(tmp_path / "one.jsonl", [{"image_id": 554625, "question": "Q?", "image": jpeg("red")}])
    assert convert("coco-chair", coco, tmp_path / "p", "--image-ids", one, "--prompt", "Describe it.") == 0
    assert [r["prompt"] for r in rows_of(tmp_path / "p")] == ["Describe it."]
    # a row without an embedded image, and no --image-folder: the line says where the file was sought
    capsys.readouterr()
    assert convert("coco-chair", coco, tmp_path / "q", "--image-ids", halbench) == 0
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"{halbench}: row 4: image file not found: {coco}/COCO_val2014_000000184613.jpg (no embedded image: "
        f"--image-folder is where COCO's images are); skipped")


@pytest.mark.parametrize("args, line", [
    (["{ws}/nope", "{ws}/out", "--image-folder", "{ws}/val2014"],
     "{ws}/nope: no such file or folder (COCO's instances_val2014.json, or its folder)"),
    (["{ws}/val2014", "{ws}/out", "--image-folder", "{ws}/val2014"],
     "{ws}/val2014: no instances_val2014.json in this folder (COCO's annotations_trainval2014.zip, annotations/); "
     "or give the instances file itself"),
    (["{ws}/no-captions/instances_val2014.json", "{ws}/out", "--image-folder", "{ws}/val2014"],
     "{ws}/no-captions/captions_val2014.json: no such file (COCO's captions for instances_val2014.json: give "
     "--captions)"),
    (["{ws}/annotations", "{ws}/out"], "coco-chair: give --image-folder, the folder of COCO's images (val2014/)"),
    (["{ws}/annotations", "{ws}/out", "--image-ids", "{ws}/nope.jsonl"], "--image-ids {ws}/nope.jsonl: no such file"),
    (["{ws}/annotations", "{ws}/out", "--image-ids", "{ws}/ids.jsonl", "--images", "5"],
     "--images and --image-ids: give one (--image-ids names the images, --images draws them)"),
    (["{ws}/annotations", "{ws}/out", "--image-folder", "{ws}/val2014", "--images", "-1"],
     "--images -1: must be 0 (every image) or more"),
    (["{ws}/annotations/captions_val2014.json", "{ws}/out", "--image-folder", "{ws}/val2014"],
     "{ws}/annotations/captions_val2014.json: SRC is COCO's instances file (instances_val2014.json); its captions "
     "go to --captions"),
    (["{ws}/annotations/captions_val2014.json", "{ws}/out", "--image-folder", "{ws}/val2014", "--captions",
      "{ws}/no-captions/instances_val2014.json"],
     "{ws}/annotations/captions_val2014.json: not COCO's instances file: field 'annotations' must be a list of "
     "objects with category_id, image_id"),
    (["{ws}/no-captions/instances_val2014.json", "{ws}/out", "--image-folder", "{ws}/val2014", "--captions",
      "{ws}/annotations/instances_val2014.json"],
     "{ws}/no-captions/instances_val2014.json: not a JSON file (Expecting value: line 1 column 1 (char 0))"),
    (["{ws}/lvis/instances_val2014.json", "{ws}/out", "--image-folder", "{ws}/val2014"],
     "{ws}/lvis/instances_val2014.json: category 'aerosol can' (id 1) is not one of CHAIR's 80 COCO categories"),
])
def test_mistakes_are_one_line(tmp_path, coco, capsys, args, line):
    ws = tmp_path
    (ws / "no-captions").mkdir()
    (ws / "no-captions" / "instances_val2014.json").write_text("")
    write_jsonl(ws / "ids.jsonl", [{"image_id": 391895}])
    coco_files(ws / "lvis")
    lvis = json.loads((ws / "lvis" / "instances_val2014.json").read_text())
    lvis["categories"][0]["name"] = "aerosol can"
    (ws / "lvis" / "instances_val2014.json").write_text(json.dumps(lvis))
    assert convert("coco-chair", *[a.replace("{ws}", str(ws)) for a in args]) == 2
    assert capsys.readouterr().err.strip().splitlines() == ["error: " + line.replace("{ws}", str(ws))]
    assert not os.path.exists(ws / "out" / "data.jsonl") or not (ws / "out" / "data.jsonl").read_text()  # no row


def test_its_options_with_another_format_are_refused(tmp_path, capsys):
    """--images with format trl would do nothing: one line, before anything is read."""
    src = tmp_path / "trl.jsonl"
    src.write_text('{"images": ["x.png"], "prompt": "Q", "chosen": "A", "rejected": "B"}\n')
    assert run(["trl", str(src), str(tmp_path / "out"), "--images", "10"]) == 2
    assert capsys.readouterr().err == "error: --images: an option of format coco-chair, not of trl\n"
    assert not (tmp_path / "out").exists()
