"""COCO's released annotations as rows for ``eval.py --bench chair`` (``python -m mmpo.convert
coco-chair SRC OUT``): {"id": COCO's image id, "image", "prompt", "objects", "captions"}.

    python -m mmpo.convert coco-chair annotations/ OUT --image-folder val2014/              # 500 images, seed 0
    python -m mmpo.convert coco-chair annotations/ OUT --image-ids obj_halbench_300_with_image.jsonl

The ground truth is the CHAIR reference's (LisaAnne/Hallucination utils/chair.py, and its ports):
an image's instance labels plus the objects its captions mention. A row keeps both as COCO wrote
them, the category names of its instances (once each, in COCO's category order) and all its
captions; eval.py reads the captions' objects by the rules of ``--chair-variant``, as each
reference code does. The reference merges the train2014 and val2014 files; an image is in one
split only, so its own split's files give it the same truth.

The files, as released in annotations_trainval2014.zip (cocodataset.org, "Data format"):
- SRC: ``instances_val2014.json`` (or another split's instances file), or the folder holding it:
  one JSON object {"images": [{"id", "file_name", ...}], "annotations": [{"image_id",
  "category_id", ...}], "categories": [{"id", "name", ...}], ...}. It is read whole with
  json.load: val2014's is about 160 MB, and takes several times that in memory while it is read.
- ``--captions``: ``captions_val2014.json``, by default the captions file beside SRC
  (instances_X.json -> captions_X.json): {"annotations": [{"image_id", "caption"}, ...], ...}.

Which images:
- by default ``--images 500`` drawn with ``--seed`` from every image of SRC, and the prompt
  "Please describe this image in detail.": the convention of OPERA's chair_eval.py
  (github.com/shikiw/OPERA), 500 random val2014 images (PAI's chair_eval.py also takes 500, and
  asks "Please help me describe the image in detail."). OPERA shuffles the folder listing
  (os.listdir), whose order differs between machines, so its own 500 cannot be drawn again; its
  released answers (log/chair_eval_results/<model>/*.jsonl, {"image_id", "caption"}) name them,
  and ``--image-ids`` takes one of them. ``--images 0``: every image.
- ``--image-ids FILE``: the images a JSON Lines file names, in its order, each row's "image_id"
  a COCO id (a number, or its digits). Object HalBench's 300 images: eval/data/
  obj_halbench_300_with_image.jsonl of github.com/RLHF-V/RLHF-V and RLHF-V/RLAIF-V (SymMPO's
  repository ships the same file), whose rows SymMPO's muffin/eval/muffin_vqa.py, RLAIF-V's
  muffin/eval/llava15_chair.py and their eval/eval_gpt_obj_halbench.py read as "image_id",
  "question" (the prompt; "eight diverse prompts", mDPO's paper says) and "image" (the image,
  base64; "image_path" in other such files). A row's "question" is its prompt (unless
  ``--prompt`` is given) and its embedded image is written to OUT/images/, so COCO's images are
  not needed; a row without one takes its file from ``--image-folder``.
  Object HalBench as RLHF-V, mDPO, MFPO and SymMPO report it does not read objects by CHAIR's
  rules: it asks GPT for each answer's objects, lemmatizes them with spaCy, maps them with its
  own refined synonym list and counts each object once per answer. mmpo's CHAIR on the same
  images and prompts compares with those tables only roughly.

An image that SRC does not hold, or whose file is missing, is one line (with its row: the
position in the sample, or the line of --image-ids) and is skipped.
"""
import os
import random

from mmpo.cli import UserError
from mmpo.common.util import read_json
from mmpo.convert.formats import Malformed, image_path, jsonl_rows, save_bytes, shown
from mmpo.common.chair import to_category

DEFAULT_PROMPT = "Please describe this image in detail."  # OPERA's chair_eval.py
DEFAULT_IMAGES = 500  # OPERA's chair_eval.py


def add_options(p):
    g = p.add_argument_group("coco-chair (COCO's annotations as eval.py --bench chair rows; see coco.py)")
    g.add_argument("--captions", default=None,
                   help="COCO's captions file (default: beside SRC, instances_X.json -> captions_X.json)")
    g.add_argument("--images", type=int, default=None,
                   help=f"how many images to draw from SRC (default {DEFAULT_IMAGES}, OPERA's count; 0: every image)")
    g.add_argument("--seed", type=int, default=None, help="seed of the images drawn (default 0)")
    g.add_argument("--image-ids", default=None,
                   help="JSON Lines naming the images by 'image_id', in order (Object HalBench's "
                        "obj_halbench_300_with_image.jsonl, OPERA's released answers), instead of drawing them")
    g.add_argument("--prompt", default=None,
                   help=f"the prompt of every row (default: an --image-ids row's 'question', else {DEFAULT_PROMPT!r})")


def given(args) -> list[str]:
    """The options above that were given (an error with another format: they would do nothing)."""
    return [f"--{n.replace('_', '-')}" for n in ("captions", "images", "seed", "image_ids", "prompt")
            if getattr(args, n) is not None]


def file_settings(path: str) -> dict:
    st = os.stat(path)
    return {"path": os.path.realpath(path), "size": st.st_size, "mtime": st.st_mtime}


def settings(args) -> dict:
    """What decides coco-chair's rows beyond SRC and --image-folder, every file checked now. SRC
    given as a folder becomes the instances file in it (``args.src``)."""
    if os.path.isdir(args.src):
        found = os.path.join(args.src, "instances_val2014.json")
        if not os.path.isfile(found):
            raise UserError(f"{args.src}: no instances_val2014.json in this folder (COCO's "
                            f"annotations_trainval2014.zip, annotations/); or give the instances file itself")
        args.src = found
    elif not os.path.isfile(args.src):
        raise UserError(f"{args.src}: no such file or folder (COCO's instances_val2014.json, or its folder)")
    name = os.path.basename(args.src)
    captions = args.captions or os.path.join(os.path.dirname(args.src), name.replace("instances", "captions", 1))
    if os.path.realpath(captions) == os.path.realpath(args.src):
        raise UserError(f"{args.src}: SRC is COCO's instances file (instances_val2014.json); its captions go to "
                        f"--captions")
    if not os.path.isfile(captions):
        raise UserError(f"{captions}: no such file (COCO's captions for {name}: give --captions)")
    if args.images is not None and args.image_ids:
        raise UserError("--images and --image-ids: give one (--image-ids names the images, --images draws them)")
    if args.images is not None and args.images < 0:
        raise UserError(f"--images {args.images}: must be 0 (every image) or more")
    if args.image_ids and not os.path.isfile(args.image_ids):
        raise UserError(f"--image-ids {args.image_ids}: no such file")
    if args.image_folder is None and not args.image_ids:
        raise UserError("coco-chair: give --image-folder, the folder of COCO's images (val2014/)")
    if args.prompt is not None and not args.prompt.strip():
        raise UserError("--prompt is empty")
    return {"captions": file_settings(captions),
            "image_ids": file_settings(args.image_ids) if args.image_ids else None,
            "images": None if args.image_ids else DEFAULT_IMAGES if args.images is None else args.images,
            "seed": None if args.image_ids else args.seed or 0, "prompt": args.prompt}


def load(path: str, need: dict) -> dict:
    """One of COCO's annotation files, read whole; ``need``: list fields -> the keys each item has."""
    data = read_json(path)
    what = "instances" if "categories" in need else "captions"
    for field, keys in need.items():
        items = data.get(field) if isinstance(data, dict) else None
        if not isinstance(items, list) or not all(isinstance(x, dict) and keys <= x.keys() for x in items):
            raise UserError(f"{path}: not COCO's {what} file: field '{field}' must be a list of objects with "
                            f"{', '.join(sorted(keys))}")
    return data


def truth(instances_path: str, captions_path: str) -> tuple[dict, dict, dict]:
    """Per image id: its file name, its instance labels (COCO names, once each, in category
    order) and its captions (in file order)."""
    inst = load(instances_path, {"images": {"id", "file_name"}, "annotations": {"image_id", "category_id"},
                                 "categories": {"id", "name"}})
    names = {c["id"]: c["name"] for c in inst["categories"]}
    for cid, name in names.items():
        try:
            to_category(name)
        except ValueError:
            raise UserError(f"{instances_path}: category {name!r} (id {cid}) is not one of CHAIR's 80 COCO "
                            f"categories") from None
    order = {cid: i for i, cid in enumerate(names)}
    files = {im["id"]: im["file_name"] for im in inst["images"]}
    labels = {i: set() for i in files}
    for a in inst["annotations"]:
        if a["category_id"] not in names:
            raise UserError(f"{instances_path}: annotation {shown(a.get('id'))} has category_id {a['category_id']}, "
                            f"which 'categories' does not list")
        labels.setdefault(a["image_id"], set()).add(a["category_id"])
    objects = {i: [names[c] for c in sorted(cs, key=order.get)] for i, cs in labels.items()}
    del inst
    captions = {}
    for a in load(captions_path, {"annotations": {"image_id", "caption"}})["annotations"]:
        captions.setdefault(a["image_id"], []).append(a["caption"])
    return files, objects, captions


def image_id(value):
    """A COCO image id as given: a whole number, or its digits ("000000296284")."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    raise Malformed(f"field 'image_id': must be a COCO image id (a whole number), got {shown(value)}")


def rows(path: str, settings: dict):
    """(row number, source row) for each image, in order: the --image-ids file's, or the draw's."""
    files, objects, captions = truth(path, settings["captions"]["path"])
    if settings["image_ids"] is None:
        ids = sorted(files)
        if settings["images"]:
            ids = random.Random(settings["seed"]).sample(ids, min(settings["images"], len(ids)))
        listed = ((n, {"image_id": i}) for n, i in enumerate(ids, 1))
    else:
        listed = ((f"{settings['image_ids']['path']}: row {n}", src) for n, src in jsonl_rows(settings["image_ids"]["path"]))
    for n, src in listed:  # n: a draw's position, or where in the --image-ids file
        try:
            if isinstance(src, Malformed):
                raise src
            if not isinstance(src, dict):
                raise Malformed(f"expected a JSON object, got {type(src).__name__}")
            i = image_id(src.get("image_id"))
            if i not in files:
                raise Malformed(f"image {i} is not in {os.path.basename(path)}")
            question = src.get("question")
            if question is not None and (not isinstance(question, str) or not question.strip()):
                raise Malformed(f"field 'question': must be a non-empty string, got {shown(question)}")
        except Malformed as e:
            yield n, e
            continue
        yield n, {"id": i, "file_name": files[i], "embedded": src.get("image"),
                  "prompt": settings["prompt"] or question or DEFAULT_PROMPT,
                  "objects": objects.get(i, []), "captions": captions.get(i, [])}


def row(src: dict, ctx) -> dict:
    if src["embedded"] is not None:
        if not isinstance(src["embedded"], str):
            raise Malformed(f"field 'image': must be the image as base64 text, got {shown(src['embedded'])}")
        image = save_bytes(src["embedded"], ctx)
    else:
        try:
            image = image_path(src["file_name"], ctx)
        except Malformed as e:
            raise Malformed(f"{e} (no embedded image: --image-folder is where COCO's images are)") from None
    if not src["objects"]:
        ctx["stats"]["images with no instance label"] += 1
    return {"image": image, "prompt": src["prompt"], "objects": src["objects"], "captions": src["captions"]}
