"""Build each method's training data from a preference JSONL.

    python -m mmpo.prepare mfpo   --data IN.jsonl --out DIR   # noise_mask + noise_step: key regions to noise
    python -m mmpo.prepare napo   --data IN.jsonl --out DIR   # lang_biased, vision_biased by the model
    python -m mmpo.prepare symmpo --data IN.jsonl --out DIR   # contrast_image, contrast_chosen

Writes DIR/data.jsonl (every input field kept, image paths absolute, new fields added) and the
new images under DIR/images/, which ``train.py --data DIR/data.jsonl`` reads directly. MFPO's
noise is not baked into an 8-bit image: the row records what defines m' (the region mask and the
diffusion step), and training adds the noise to the model's normalized pixel tensor, as VCD does. The
input is never modified. Re-running continues where a killed run stopped: rows already in
DIR/data.jsonl are kept and never redone, and every row is reproducible from (seed, id), so the
result is the same as one uninterrupted run. That holds only under the same settings, so
DIR/prepare.json records what decides the rows (method, input checksum, options) and a re-run
with other settings is refused (``--overwrite`` starts afresh). Every mistake is one line.
"""
import argparse
import hashlib
import json
import os
import shutil
import sys
from collections import Counter

import huggingface_hub
import torch
import transformers
from tqdm import tqdm

from mmpo import cli, perturb
from mmpo.cli import UserError
from mmpo.data import IMAGE_FIELDS, NOISE_STEPS, DataError, load_image, read_rows, stable_seed
from mmpo.generate import generate
from mmpo.keywords import embedding_vectors, nltk_tagger, rank_keywords
from mmpo.models import TINY_MODELS, load_model
from mmpo.regions import Grounding, load_detector, load_segmenter, region_mask

BASE_FIELDS = {"image", "prompt", "chosen", "rejected"}
SETTINGS = "prepare.json"  # beside OUT/data.jsonl: what decided its rows
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
START_FRESH = ("use another --out, or add --overwrite to start afresh (it deletes {out}/data.jsonl, {out}/images/ "
               "and {out}/%s)" % SETTINGS)
# what to say after "cannot load": the way around it
HINTS = {"--detector": "; what needs no download: a local model directory for --detector/--segmenter, --segmenter '' "
                       "(boxes only), or --regions random|global",
         "--embedder": "; leave --embedder out to retrieve with the --model's vision tower"}
HINTS["--segmenter"] = HINTS["--detector"]


def to_pil(x: torch.Tensor):
    """(3, H, W) in [0, 1] -> PIL image."""
    from PIL import Image
    y = (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous()
    return Image.frombytes("RGB", (y.shape[1], y.shape[0]), y.numpy().tobytes())


def to_tensor(img) -> torch.Tensor:
    x = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(img.height, img.width, 3)
    return x.permute(2, 0, 1).float() / 255  # (3, H, W)


def save_image(img, out_dir: str, name: str) -> str:
    """Save atomically under out_dir/images; returns the path relative to out_dir."""
    rel = os.path.join("images", name)
    path = os.path.join(out_dir, rel)
    tmp = path + ".tmp.png"
    img.save(tmp)
    os.replace(tmp, path)
    return rel


# ---- MFPO: keywords -> regions -> diffusion noise -------------------------------------------

def mfpo_rows(rows, args, out_dir, stats, ctx):
    """noise_mask = the key regions of the image (white = noised), noise_step = t; training draws
    the noise on the processed pixels from (run seed, id). No region found: no mask, the whole
    image is noised (the paper's fallback)."""
    from PIL import Image
    for row in rows:
        img = load_image(row["image"])
        g = torch.Generator().manual_seed(stable_seed(args.seed, row["id"]))
        keywords = rank_keywords(row["chosen"], k=args.k, vectors=ctx.get("vectors"), tagger=args.tagger)
        mask = None
        if args.regions == "grounded":
            mask = region_mask(ctx["grounding"], img, keywords)
            if mask is None:
                stats["no region found: whole image noised"] += 1
        elif args.regions == "random":
            mask = perturb.random_region_mask(img.height, img.width, 0.2, generator=g)
        if mask is not None:
            m = (mask.clamp(0, 1) * 255).round().to(torch.uint8).contiguous()  # (H, W)
            mask_img = Image.frombytes("L", (img.width, img.height), m.numpy().tobytes())
            row["noise_mask"] = save_image(mask_img, out_dir, f"{safe(row['id'])}-mask.png")
        row["noise_step"] = args.noise_step
        row["keywords"] = keywords
        row["region"] = "global" if mask is None else args.regions
    return rows


# ---- NaPO: the model's own modality-biased answers ------------------------------------------

def napo_rows(rows, args, out_dir, stats, ctx):
    """lang_biased: the question without the image (or with a blank one); vision_biased: the
    image without the question. Greedy, by the base model itself; values already in a row are
    kept untouched."""
    model, processor = ctx["model"], ctx["processor"]
    kw = generation_options(args)
    lang = [r for r in rows if not r.get("lang_biased")]
    vision = [r for r in rows if not r.get("vision_biased")]
    stats["lang_biased kept as given"] += len(rows) - len(lang)
    stats["vision_biased kept as given"] += len(rows) - len(vision)
    if lang:
        blanks = None
        if args.lang_image != "none":
            value = 1.0 if args.lang_image == "white" else 0.0
            blanks = [to_pil(perturb.blank(to_tensor(load_image(r["image"])), value)) for r in lang]
        record(lang, "lang_biased", generate(model, processor, [r["prompt"] for r in lang], blanks, **kw), stats)
    if vision:
        images = [load_image(r["image"]) for r in vision]
        record(vision, "vision_biased", generate(model, processor, [""] * len(vision), images, **kw), stats)
    return keep_answered(rows, ("lang_biased", "vision_biased"), stats)


def generation_options(args) -> dict:
    """NaPO's released generation (1024 new tokens, 3 beams) unless the flags say otherwise."""
    return dict(max_new_tokens=args.max_new_tokens, num_beams=args.num_beams, do_sample=args.do_sample,
                temperature=args.temperature, batch_size=args.batch_size)


def record(rows, field: str, generated, stats):
    """Store generated answers; one that stopped at the token limit is listed in the row's
    ``truncated``, so training appends no end-of-sequence token to it."""
    for r, text, cut in zip(rows, *generated):
        r[field] = text
        if cut:
            r["truncated"] = sorted(set(r.get("truncated", [])) | {field})
            stats[f"{field} truncated at --max-new-tokens (no end-of-sequence added)"] += 1


def keep_answered(rows, fields, stats):
    """Rows whose generated fields are all non-empty; the others are counted as skipped."""
    out = [r for r in rows if all(r[f] for f in fields)]
    stats["rows skipped, the model gave an empty answer (a re-run tries them again)"] += len(rows) - len(out)
    return out


# ---- SymMPO: a similar real image and the model's answer for it -------------------------------

@torch.no_grad()
def image_embeddings(model, processor, paths, batch_size: int, flag: str) -> torch.Tensor:
    """L2-normalised image embeddings (n, d): the vision features the model gives, mean-pooled.
    ``flag`` names the option the images came from, for the error about one that does not open."""
    out = []
    for i in range(0, len(paths), batch_size):
        images = [open_image(p, flag) for p in paths[i:i + batch_size]]
        inputs = processor.image_processor(images=images, return_tensors="pt").to(model.device)
        feats = model.get_image_features(**inputs)
        feats = getattr(feats, "pooler_output", feats)
        pooled = [f.float().mean(0) if f.dim() == 2 else f.float() for f in feats]  # per image: (d,)
        out.append(torch.stack(pooled))
    return torch.nn.functional.normalize(torch.cat(out), dim=-1)


def nearest_other(query: int, paths: list[str], sims: torch.Tensor, pool_paths: list[str]) -> str:
    """The most similar candidate image that is not the query image itself."""
    me = os.path.realpath(paths[query])
    for j in sims[query].argsort(descending=True).tolist():
        if os.path.realpath(pool_paths[j]) != me:
            return pool_paths[j]
    raise ValueError("no other image to contrast with")


def contrast_pool(args, rows) -> list[str]:
    """The candidate contrast images: --pool's image files, or the data's own images. Checked
    before any model loads: each image that needs a contrast needs a candidate other than itself."""
    pool = sorted({r["image"] for r in rows})
    if args.pool:
        if not os.path.isdir(args.pool):
            raise UserError(f"--pool {args.pool}: not a folder")
        pool = sorted(os.path.join(args.pool, f) for f in os.listdir(args.pool)
                      if f.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(args.pool, f)))
        if not pool:
            raise UserError(f"--pool {args.pool}: no images in it ({', '.join(IMAGE_EXTENSIONS)})")
    distinct = {os.path.realpath(p) for p in pool}
    if len(distinct) == 1 and distinct & {os.path.realpath(r["image"]) for r in rows if not r.get("contrast_image")}:
        where = f"--pool {args.pool} holds" if args.pool else "the data has"
        raise UserError(f"symmpo: {where} only one image, {pool[0]}, and it cannot be its own contrast image: "
                        "give --pool a folder of other images, or --contrast noised|cropped|black")
    return pool


def contrast_neighbors(args, rows, ctx) -> dict[str, str]:
    """id -> the nearest other image of the pool, by image embedding (--embedder, else the VLM),
    for the rows with no contrast_image of their own."""
    need = [r for r in rows if not r.get("contrast_image")]
    paths, pool = sorted({r["image"] for r in need}), ctx["pool"]
    model, processor = ctx.get("embedder") or (ctx["model"], ctx["processor"])
    if not hasattr(model, "get_image_features"):
        raise UserError(f"--model {args.model}: gives no image features to retrieve contrast images with: "
                        "give --embedder an image-text model such as a CLIP")
    q = image_embeddings(model, processor, paths, args.batch_size, "--data")
    c = q if pool == paths else image_embeddings(model, processor, pool, args.batch_size, "--pool" if args.pool else "--data")
    sims = q @ c.T  # (n_images, n_candidates)
    by_path = {p: nearest_other(i, paths, sims, pool) for i, p in enumerate(paths)}
    return {r["id"]: by_path[r["image"]] for r in need}


def symmpo_rows(rows, args, out_dir, stats, ctx):
    """contrast_image: the nearest other image (or a perturbed m for the ablations);
    contrast_chosen: the base model's answer to the prompt for it. User-provided values are
    kept untouched (the paper rewrites answers with large external models)."""
    model, processor = ctx["model"], ctx["processor"]
    todo = []
    for row in rows:
        if not row.get("contrast_image"):
            if args.contrast == "neighbor":
                row["contrast_image"] = ctx["neighbors"][row["id"]]
            else:  # ablations; an image is needed to generate y_w' for it, so this noise is baked into pixels
                img = to_tensor(load_image(row["image"]))
                g = torch.Generator().manual_seed(stable_seed(args.seed, row["id"]))
                m = {"noised": lambda: (perturb.diffusion_noise(img * 2 - 1, t=args.noise_step, generator=g) + 1) / 2,
                     "cropped": lambda: perturb.random_crop(img, generator=g),
                     "black": lambda: perturb.blank(img)}[args.contrast]()
                row["contrast_image"] = save_image(to_pil(m), out_dir, f"{safe(row['id'])}-contrast.png")
        else:
            stats["contrast_image kept as given"] += 1
        if row.get("contrast_chosen"):
            stats["contrast_chosen kept as given"] += 1
        else:
            todo.append(row)
    if todo:
        images = [load_image(r["contrast_image"] if os.path.isabs(r["contrast_image"])
                             else os.path.join(out_dir, r["contrast_image"])) for r in todo]
        record(todo, "contrast_chosen", generate(model, processor, [r["prompt"] for r in todo], images,
                                                 **generation_options(args)), stats)
    return keep_answered(rows, ("contrast_chosen",), stats)


def safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def open_image(path: str, flag: str):
    """load_image, or a one-line error naming the option the image came from."""
    try:
        return load_image(path)
    except (OSError, ValueError) as e:
        raise UserError(f"{flag}: cannot read image {path} ({first_line(e)})") from None


def first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


# ---- resuming: the rows written so far, and the settings that made them ------------------------

def finished_rows(path: str) -> tuple[list[str], int]:
    """Ids of the complete rows an earlier (possibly killed) run wrote, and the bytes they take
    (a half-written last line is not counted). Reads only."""
    if not os.path.isfile(path):
        return [], 0
    ids, keep = [], 0
    with open(path, "rb") as f:
        data = f.read()
    for line in data.split(b"\n")[:-1]:  # a row is complete once its newline is written
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


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def row_settings(args) -> dict:
    """What decides the rows' contents: the method, the input's checksum, and every option this
    method reads with these options (an option it ignores is left out, so changing it is harmless).
    --batch-size counts for napo and symmpo: generation left-pads each batch, which changes a row's
    logits with its batch-mates (5e-7 in fp32, 8e-3 in bf16 on tiny-llava), enough to flip a greedy
    or beam choice at a near tie. mfpo's rows are made one by one: its batch size changes nothing."""
    names = ["model", "seed"]
    if args.method == "mfpo":
        names += ["k", "tagger", "noise_step", "regions"]
        if args.regions == "grounded":
            names += ["detector", "segmenter", "threshold"]
    else:
        names += ["max_new_tokens", "num_beams", "do_sample", "batch_size"] + (["temperature"] if args.do_sample else [])
        if args.method == "napo":
            names.append("lang_image")
        else:
            names += ["contrast"] + {"neighbor": ["pool", "embedder"], "noised": ["noise_step"]}.get(args.contrast, [])
    values = {n: getattr(args, n) for n in names}
    for n in ("model", "detector", "segmenter", "embedder", "pool"):
        if values.get(n) and os.path.exists(values[n]):
            values[n] = os.path.realpath(values[n])  # one folder, however it is spelled
    if values.get("tagger") == "auto":  # auto means nltk on one machine, the rules on another
        values["tagger"] = "auto: " + ("nltk" if nltk_tagger() else "rules")
    return {"method": args.method, "data_sha256": file_sha256(args.data), **values}


def differences(old: dict, new: dict) -> list[str]:
    """'--option OLD (now NEW)' for each setting that differs ("not used": that run ignored it)."""
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
            name = {"method": "the method", "data_sha256": "--data's content"}.get(key, "--" + key.replace("_", "-"))
            out.append(f"{name} {show(key, a)} (now {show(key, b)})")
    return out


def start_output(args, rows, settings: dict) -> None:
    """Make OUT ready before any model loads. --overwrite removes what an earlier run wrote;
    otherwise rows already there must come from the same settings (else they would mix with this
    run's). Then this run's settings are recorded, atomically."""
    out_path, record, images = (os.path.join(args.out, n) for n in ("data.jsonl", SETTINGS, "images"))
    fresh = START_FRESH.format(out=args.out)
    if args.overwrite:
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
            raise UserError(f"{out_path} holds {count} but no {SETTINGS} is beside it (an older version of prepare, "
                            f"or something else, wrote it): its rows cannot be checked against this run's settings: "
                            f"{fresh}") from None
        except (OSError, ValueError) as e:
            raise UserError(f"{record}: unreadable ({first_line(e)}), so the {count} beside it cannot be checked: "
                            f"{fresh}") from None
        diff = differences(old if isinstance(old, dict) else {}, settings)
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
        with open(record + ".tmp", "w") as f:
            json.dump(settings, f, indent=1)
        os.replace(record + ".tmp", record)
    except OSError as e:
        raise UserError(f"--out {args.out}: cannot write there ({e.strerror or first_line(e)})") from None


# ---- one line for each mistake, before anything slow ------------------------------------------

def check_options(args) -> None:
    """The options' ranges, before the data is read or a model loaded."""
    problems = [
        (args.batch_size < 1, f"--batch-size must be at least 1 (got {args.batch_size})"),
        (args.k < 1, f"--k must be at least 1 (got {args.k})"),
        (not 0 <= args.threshold <= 1, f"--threshold is a detection score: it must be in [0, 1] (got {args.threshold})"),
        (not 0 <= args.noise_step < NOISE_STEPS, f"--noise-step must be in [0, {NOISE_STEPS}) (got {args.noise_step})"),
        (args.num_beams < 1, f"--num-beams must be at least 1 (got {args.num_beams})"),
        (args.max_new_tokens < 1, f"--max-new-tokens must be at least 1 (got {args.max_new_tokens})"),
        (args.do_sample and not args.temperature > 0, f"--temperature must be above 0 with --do-sample (got {args.temperature})"),
        (args.method != "mfpo" and not args.model, f"{args.method} needs --model: the base model whose answers it records"),
        (args.method == "mfpo" and args.tagger == "nltk" and nltk_tagger() is None,
         "--tagger nltk needs nltk and its tagger data (pip install nltk; python -m nltk.downloader "
         "averaged_perceptron_tagger_eng), or --tagger rules"),
    ]
    for bad, message in problems:
        if bad:
            raise UserError(message)


def models_to_load(args) -> list[tuple[str, str]]:
    """(option, name) of every model this run loads, the VLM last: the small ones fail first."""
    out = []
    if args.method == "mfpo" and args.regions == "grounded":
        out += [("--detector", args.detector)] + ([("--segmenter", args.segmenter)] if args.segmenter else [])
    if args.method == "symmpo" and args.contrast == "neighbor" and args.embedder:
        out.append(("--embedder", args.embedder))
    return out + ([("--model", args.model)] if args.model else [])


def hub_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) as set now: the hub reads it once, at import."""
    from huggingface_hub import constants
    now = any(os.environ.get(v, "").upper() in ("1", "ON", "YES", "TRUE") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return now or constants.HF_HUB_OFFLINE


def check_model_name(flag: str, name: str) -> None:
    """Fail at once for a model that cannot be there: a path that is no folder, or, offline, a
    hub id missing from the local cache. (Other failures show when it loads: load_or_explain.)"""
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.utils import validate_repo_id
    hint = HINTS.get(flag, "")
    if flag == "--model" and name in TINY_MODELS or os.path.isdir(name):
        return
    if not name:
        raise UserError(f"{flag} is empty{hint}")
    if os.path.exists(name):
        raise UserError(f"{flag} {name}: a file, not a model directory{hint}")
    try:
        validate_repo_id(name)
    except ValueError:  # not a hub id's shape ("./x", "/a/b", "a/b/c"): it can only be a folder
        raise UserError(f"{flag} {name}: no such directory{hint}") from None
    if hub_offline() and not isinstance(try_to_load_from_cache(name, "config.json"), str):
        raise UserError(f"{flag} {name}: no such directory, and not in the Hugging Face cache "
                        f"(offline: HF_HUB_OFFLINE is set){hint}")


def load_or_explain(flag: str, name: str, load):
    """load(name), or one line saying which option's model failed and why."""
    try:
        return load(name)
    except Exception as e:  # missing files, no network, a model of another kind: all about the name given
        raise UserError(f"{flag} {name}: cannot load it ({first_line(e)}){HINTS.get(flag, '')}") from None


def load_embedder(name: str):
    """An image-text model (a CLIP) and its processor, for retrieval by image embedding."""
    model = transformers.AutoModel.from_pretrained(name).eval()
    processor = transformers.AutoProcessor.from_pretrained(name)
    if not hasattr(model, "get_image_features") or not hasattr(processor, "image_processor"):
        raise ValueError(f"a {type(model).__name__} gives no image embeddings; give an image-text model such as a CLIP")
    return model, processor


def load_models(args, ctx) -> None:
    """Load what models_to_load names into ctx, each failure one line naming its option."""
    loaders = {"--detector": load_detector, "--segmenter": load_segmenter, "--embedder": load_embedder,
               "--model": lambda name: load_model(name, trust_remote_code=args.trust_remote_code, seed=args.seed)}
    loaded = {flag: load_or_explain(flag, name, loaders[flag]) for flag, name in models_to_load(args)}
    if "--detector" in loaded:
        ctx["grounding"] = Grounding(*loaded["--detector"], *loaded.get("--segmenter", (None, None)), threshold=args.threshold)
    if "--embedder" in loaded:
        ctx["embedder"] = loaded["--embedder"]
    if "--model" in loaded:
        ctx["model"], ctx["processor"] = loaded["--model"]
        ctx["model"].eval()
        if args.method == "mfpo":  # without a model, keywords are ranked by position alone
            ctx["vectors"] = embedding_vectors(ctx["model"], ctx["processor"].tokenizer)


def build_parser():
    p = argparse.ArgumentParser(prog="python -m mmpo.prepare", description=__doc__.splitlines()[0])
    p.add_argument("method", choices=("mfpo", "napo", "symmpo"))
    p.add_argument("--data", required=True, help="input preference JSONL (never modified)")
    p.add_argument("--out", required=True, help="output directory: data.jsonl, images/ and prepare.json (the settings)")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh: delete OUT/data.jsonl, OUT/images/ and OUT/prepare.json first (without it a "
                        "re-run continues, and only with the same settings)")
    p.add_argument("--model", default=None,
                   help="the base VLM: it answers (napo, symmpo) and lends its word vectors (mfpo, optional); tiny-llava to try")
    p.add_argument("--trust-remote-code", action="store_true")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=1024,
                   help="napo, symmpo: generation limit (NaPO's released 1024); an answer cut there gets no end-of-sequence token")
    p.add_argument("--num-beams", type=int, default=3, help="napo, symmpo: beam search width (NaPO's released 3; 1 = greedy)")
    p.add_argument("--do-sample", action="store_true",
                   help="napo, symmpo: sample within the beams (NaPO's script defaults to it at temperature 0.2; off: deterministic)")
    p.add_argument("--temperature", type=float, default=0.2, help="napo, symmpo: sampling temperature (with --do-sample)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--noise-step", type=int, default=500,
                   help="diffusion step t of the noise (of 1000); mfpo records it, training adds the noise to the processed pixels")
    p.add_argument("--k", type=int, default=3, help="mfpo: keywords per answer")
    p.add_argument("--tagger", choices=("auto", "rules", "nltk"), default="auto",
                   help="mfpo: nouns by nltk's tagger when installed (auto), or the built-in rules (the same on every machine)")
    p.add_argument("--regions", choices=("grounded", "random", "global"), default="grounded",
                   help="mfpo: noise the keywords' regions, a random 20%% (ablation) or everything")
    p.add_argument("--detector", default="google/owlv2-base-patch16-ensemble",
                   help="mfpo: open-vocabulary detector (hub id or local directory)")
    p.add_argument("--segmenter", default="facebook/sam-vit-base", help="mfpo: segmenter ('' for boxes only)")
    p.add_argument("--threshold", type=float, default=0.1, help="mfpo: detection score threshold, in [0, 1]")
    p.add_argument("--lang-image", choices=("none", "white", "black"), default="none",
                   help="napo: language-biased answers without an image, or with a blank one")
    p.add_argument("--contrast", choices=("neighbor", "noised", "cropped", "black"), default="neighbor",
                   help="symmpo: m' is the nearest other image, or an ablation")
    p.add_argument("--pool", default="", help="symmpo: a folder of candidate contrast images (default: the data's)")
    p.add_argument("--embedder", default="", help="symmpo: an image model (e.g. a CLIP) for retrieval; default the VLM's vision tower")
    return p


def main(args) -> dict:
    """Check everything that can be checked, record the settings, then build the rows not yet written."""
    check_options(args)
    rows = read_rows(args.data, BASE_FIELDS)
    out_path = os.path.join(args.out, "data.jsonl")
    if os.path.realpath(out_path) == os.path.realpath(args.data):
        raise DataError([f"{args.data}: --out would overwrite the input"])
    for flag, name in models_to_load(args):
        check_model_name(flag, name)
    ctx = {}
    if args.method == "symmpo" and args.contrast == "neighbor" and any(not r.get("contrast_image") for r in rows):
        ctx["pool"] = contrast_pool(args, rows)
    start_output(args, rows, row_settings(args))
    done = set(done_ids(out_path))
    todo = [r for r in rows if r["id"] not in done]
    stats = Counter()
    if todo:
        load_models(args, ctx)
        if "pool" in ctx:
            ctx["neighbors"] = contrast_neighbors(args, rows, ctx)
    build = {"mfpo": mfpo_rows, "napo": napo_rows, "symmpo": symmpo_rows}[args.method]
    with open(out_path, "a") as f, tqdm(total=len(rows), initial=len(rows) - len(todo), desc=args.method) as bar:
        for i in range(0, len(todo), args.batch_size):
            chunk = [{k: v for k, v in r.items() if k != "line"} for r in todo[i:i + args.batch_size]]
            torch.manual_seed(stable_seed(args.seed, chunk[0]["id"]))  # --do-sample: a resumed chunk draws the same
            written = build(chunk, args, args.out, stats, ctx)
            for row in written:
                f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())
            stats["rows written"] += len(written)
            bar.update(len(chunk))
    stats["rows already there"] = len(rows) - len(todo)
    return dict(stats)


def summary(method: str, stats: dict, out_path: str) -> str:
    """One line per outcome (rows written and already there first, then kept values, fallbacks,
    truncations and skips), then the output path."""
    first = ("rows written", "rows already there")
    lines = [f"  {k}: {stats.get(k, 0)}" for k in first]
    lines += [f"  {k}: {v}" for k, v in sorted(stats.items()) if k not in first and v]
    return "\n".join([f"prepare {method}:", *lines, f"  output: {out_path}"])


def run(argv=None) -> int:
    args = build_parser().parse_args(argv)
    huggingface_hub.utils.logging.set_verbosity_error()  # its retries, offline, would bury the one error line

    def go():
        print(summary(args.method, main(args), os.path.join(args.out, "data.jsonl")))
    return cli.run(go)


if __name__ == "__main__":
    sys.exit(run())
