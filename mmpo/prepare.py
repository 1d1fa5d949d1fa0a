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
result is the same as one uninterrupted run.
"""
import argparse
import json
import os
import sys
from collections import Counter

import torch
import transformers
from tqdm import tqdm

from mmpo import cli, perturb
from mmpo.cli import UserError
from mmpo.data import DataError, load_image, read_rows, stable_seed
from mmpo.generate import generate
from mmpo.keywords import embedding_vectors, rank_keywords
from mmpo.models import load_model

BASE_FIELDS = {"image", "prompt", "chosen", "rejected"}


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
    from mmpo.regions import region_mask
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
    stats["lang_biased given: kept"] += len(rows) - len(lang)
    stats["vision_biased given: kept"] += len(rows) - len(vision)
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
    stats["skipped: the model gave an empty answer"] += len(rows) - len(out)
    return out


# ---- SymMPO: a similar real image and the model's answer for it -------------------------------

@torch.no_grad()
def image_embeddings(model, processor, paths, batch_size: int) -> torch.Tensor:
    """L2-normalised image embeddings (n, d): the vision features the model gives, mean-pooled."""
    out = []
    for i in range(0, len(paths), batch_size):
        images = [load_image(p) for p in paths[i:i + batch_size]]
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
            stats["contrast_image given: kept"] += 1
        if row.get("contrast_chosen"):
            stats["contrast_chosen given: kept"] += 1
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


def done_ids(path: str) -> list[str]:
    """Ids already written by an earlier (possibly killed) run; a half-written last line is cut off."""
    if not os.path.isfile(path):
        return []
    ids, keep = [], 0
    with open(path, "rb") as f:
        data = f.read()
    for line in data.split(b"\n"):
        try:
            ids.append(json.loads(line)["id"])
            keep += len(line) + 1
        except (ValueError, KeyError):
            break
    if keep < len(data):
        with open(path, "r+b") as f:
            f.truncate(keep)
    return ids


def build_parser():
    p = argparse.ArgumentParser(prog="python -m mmpo.prepare", description=__doc__.splitlines()[0])
    p.add_argument("method", choices=("mfpo", "napo", "symmpo"))
    p.add_argument("--data", required=True, help="input preference JSONL (never modified)")
    p.add_argument("--out", required=True, help="output directory: data.jsonl and images/")
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
    p.add_argument("--detector", default="google/owlv2-base-patch16-ensemble", help="mfpo: open-vocabulary detector")
    p.add_argument("--segmenter", default="facebook/sam-vit-base", help="mfpo: segmenter ('' for boxes only)")
    p.add_argument("--threshold", type=float, default=0.1, help="mfpo: detection score threshold")
    p.add_argument("--lang-image", choices=("none", "white", "black"), default="none",
                   help="napo: language-biased answers without an image, or with a blank one")
    p.add_argument("--contrast", choices=("neighbor", "noised", "cropped", "black"), default="neighbor",
                   help="symmpo: m' is the nearest other image, or an ablation")
    p.add_argument("--pool", default="", help="symmpo: a folder of candidate contrast images (default: the data's)")
    p.add_argument("--embedder", default="", help="symmpo: an image model (e.g. a CLIP) for retrieval; default the VLM's vision tower")
    return p


def main(args) -> dict:
    rows = read_rows(args.data, BASE_FIELDS)
    os.makedirs(os.path.join(args.out, "images"), exist_ok=True)
    out_path = os.path.join(args.out, "data.jsonl")
    if os.path.abspath(out_path) == os.path.abspath(args.data):
        raise DataError([f"{args.data}: --out would overwrite the input"])
    done = set(done_ids(out_path))
    todo = [r for r in rows if r["id"] not in done]
    stats = Counter()
    ctx = {}
    if args.max_new_tokens < 1 or args.num_beams < 1:
        raise UserError(f"--max-new-tokens and --num-beams must be at least 1 (got {args.max_new_tokens}, {args.num_beams})")
    if args.method in ("napo", "symmpo") and not args.model:
        raise UserError(f"{args.method} needs --model: the base model whose answers it records")
    if todo and args.model:
        ctx["model"], ctx["processor"] = load_model(args.model, trust_remote_code=args.trust_remote_code, seed=args.seed)
        ctx["model"].eval()
    if todo and args.method == "mfpo":
        if args.model:  # without a model, keywords are ranked by position alone
            ctx["vectors"] = embedding_vectors(ctx["model"], ctx["processor"].tokenizer)
        if args.regions == "grounded":
            from mmpo.regions import load_grounding
            ctx["grounding"] = load_grounding(args.detector, args.segmenter or None, args.threshold)
    if todo and args.method == "symmpo" and args.contrast == "neighbor":
        paths = sorted({r["image"] for r in rows})
        pool = paths
        if args.pool:
            pool = sorted(os.path.join(args.pool, f) for f in os.listdir(args.pool)
                          if f.lower().endswith((".png", ".jpg", ".jpeg", ".webp", ".bmp")))
        embed_model, embed_proc = ctx["model"], ctx["processor"]
        if args.embedder:
            embed_model = transformers.AutoModel.from_pretrained(args.embedder).eval()
            embed_proc = transformers.AutoProcessor.from_pretrained(args.embedder)
        q = image_embeddings(embed_model, embed_proc, paths, args.batch_size)
        c = q if pool is paths else image_embeddings(embed_model, embed_proc, pool, args.batch_size)
        sims = q @ c.T  # (n_images, n_candidates)
        by_path = {p: nearest_other(i, paths, sims, pool) for i, p in enumerate(paths)}
        ctx["neighbors"] = {r["id"]: by_path[r["image"]] for r in rows}
    build = {"mfpo": mfpo_rows, "napo": napo_rows, "symmpo": symmpo_rows}[args.method]
    with open(out_path, "a") as f, tqdm(total=len(rows), initial=len(rows) - len(todo), desc=args.method) as bar:
        for i in range(0, len(todo), args.batch_size):
            chunk = [{k: v for k, v in r.items() if k != "line"} for r in todo[i:i + args.batch_size]]
            written = build(chunk, args, args.out, stats, ctx)
            for row in written:
                f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())
            stats["rows written"] += len(written)
            bar.update(len(chunk))
    stats["rows already there"] = len(rows) - len(todo)
    return dict(stats)


def run(argv=None) -> int:
    args = build_parser().parse_args(argv)

    def go():
        stats = main(args)
        print(f"{args.method}: " + ", ".join(f"{k}: {v}" for k, v in sorted(stats.items())) +
              f" -> {os.path.join(args.out, 'data.jsonl')}")
    return cli.run(go)


if __name__ == "__main__":
    sys.exit(run())
