"""The three pipelines (MFPO, NaPO, SymMPO) and ``main``, which runs one over the rows not yet written."""
import io
import json
import os
from collections import Counter

import huggingface_hub.utils  # by name: nothing imported above loads .utils (transformers comes later)
import torch
from tqdm import tqdm

from mmpo import cli, perturb
from mmpo.cli import UserError
from mmpo.files import write_atomic
from mmpo.generate import generate
from mmpo.perturb import stable_seed
from mmpo.common.lock import locked
from mmpo.common.output import done_ids, start_output
from mmpo.prepare.command import (build_parser, check_model_name, check_options, first_line, load_models,
                                  models_to_load, row_settings, summary)
from mmpo.prepare.keywords import rank_keywords
from mmpo.prepare.regions import region_mask
from mmpo.images import load_image, to_pil, to_tensor
from mmpo.rows import DataError, read_rows

BASE_FIELDS = {"image", "prompt", "chosen", "rejected"}
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def save_image(img, out_dir: str, name: str) -> str:
    """Save as a PNG under out_dir/images, atomically (a killed run leaves no half image that a
    resumed one would take as done); returns the path relative to out_dir."""
    rel = os.path.join("images", name)
    png = io.BytesIO()
    img.save(png, format="PNG")
    write_atomic(os.path.join(out_dir, rel), png.getvalue())
    return rel


# ---- MFPO: keywords -> regions -> diffusion noise -------------------------------------------

def mfpo_rows(rows, args, out_dir, stats, ctx):
    """noise_mask = the key regions of the image (white = noised), noise_step = t; training draws
    the noise on the processed pixels from (run seed, id). No region found: no mask, the whole
    image is noised (the paper's fallback)."""
    for row in rows:
        img = load_image(row["image"])
        g = torch.Generator().manual_seed(stable_seed(args.seed, row["id"]))
        keywords = rank_keywords(row["chosen"], k=args.k, graph=args.keywords, vectors=ctx.get("vectors"), tagger=args.tagger)
        mask = None
        if args.regions == "grounded":
            mask = region_mask(ctx["grounding"], img, keywords)
            if mask is None:
                stats["no region found: whole image noised"] += 1
        elif args.regions == "random":
            mask = perturb.random_region_mask(img.height, img.width, 0.2, generator=g)
        if mask is not None:  # (H, W) of 0/1 -> a grayscale PNG
            row["noise_mask"] = save_image(to_pil(mask), out_dir, f"{safe(row['id'])}-mask.png")
        row["noise_step"] = args.noise_step
        row["keywords"] = keywords
        row["region"] = "global" if mask is None else args.regions
    return rows


# ---- NaPO: the model's own modality-biased answers ------------------------------------------

def is_llava_15(model) -> bool:
    """LLaVA-1.5, the model NaPO released its data for: transformers' LLaVA (config model_type
    "llava") on a Llama language model (Vicuna). LLaVA-NeXT, LLaVA-OneVision and ViP-LLaVA have
    model types of their own, and BakLLaVA (Mistral) or llava-interleave (Qwen2) are "llava" on
    another language model: all of them keep their own chat template. Decided by the model's
    config, not the processor's class, which LLaVA-1.5 shares with those last two."""
    config = model.config
    return config.model_type == "llava" and getattr(config.text_config, "model_type", None) == "llama"


def napo_rows(rows, args, out_dir, stats, ctx):
    """lang_biased: the question without the image; vision_biased: the image without the
    question; both by the base model itself, as NaPO's released muffin/eval/llava15_gen_bias_data.py
    makes its question_only and image_only columns. Values already in a row are kept.

    Prompts (``--napo-prompt``): ``released``, for LLaVA-1.5 (``is_llava_15``), is the released
    code's: LLaVA's ``llava_v1`` conversation with its system prompt, "... USER: {question}
    ASSISTANT:" and "... USER: <image>\n ASSISTANT:" (``generate.llava_v1_prompt``); any other model
    family keeps its own chat template, which is also what ``chat-template`` uses for every model.
    ``--lang-image white|black`` is mmpo's own variant: the question *with* a blank image of the
    image's size. The released code has no such answer; its question_only_white/black columns are
    the image-only prompt on a blank image (no question), and its training reads neither.
    Generation as released unless the flags say otherwise: 3 beams, no sampling, 1024 new tokens."""
    lang = [r for r in rows if not r.get("lang_biased")]
    vision = [r for r in rows if not r.get("vision_biased")]
    stats["lang_biased kept as given"] += len(rows) - len(lang)
    stats["vision_biased kept as given"] += len(rows) - len(vision)
    llava_v1 = args.napo_prompt == "released" and is_llava_15(ctx["model"])
    if lang or vision:
        how = "LLaVA's llava_v1 conversation (as released)" if llava_v1 else "the model's chat template"
        stats[f"answers prompted in {how}"] += len(lang) + len(vision)
    if lang:
        blanks = None
        if args.lang_image != "none":
            value = 1.0 if args.lang_image == "white" else 0.0
            blanks = [to_pil(perturb.corrupt(to_tensor(load_image(r["image"])), "blank", value=value)) for r in lang]
        answer(lang, "lang_biased", [r["prompt"] for r in lang], blanks, args, ctx, stats, llava_v1=llava_v1)
    if vision:
        answer(vision, "vision_biased", [""] * len(vision), [load_image(r["image"]) for r in vision], args, ctx, stats,
               llava_v1=llava_v1)
    return keep_answered(rows, ("lang_biased", "vision_biased"), stats)


def answer(rows, field: str, prompts, images, args, ctx, stats, llava_v1: bool = False):
    """The base model's answers into ``field``, by NaPO's released generation (1024 new tokens,
    3 beams, no sampling: script/data_gen/gen_bias_data.sh runs with --temperature 0) unless the
    flags say otherwise; in LLaVA's ``llava_v1`` conversation with ``llava_v1``, else the chat
    template. One that stopped at the token limit is listed in the row's ``truncated``, so
    training appends no end-of-sequence token to it."""
    texts, lengths = generate(ctx["model"], ctx["processor"], prompts, images, max_new_tokens=args.max_new_tokens,
                              num_beams=args.num_beams, do_sample=args.do_sample, temperature=args.temperature,
                              batch_size=args.batch_size, llava_v1=llava_v1, show=True)
    for r, text, n in zip(rows, texts, lengths):
        r[field] = text
        if n >= args.max_new_tokens:
            r["truncated"] = sorted(set(r.get("truncated", [])) | {field})
            stats[f"{field} truncated at --max-new-tokens (no end-of-sequence added)"] += 1


def keep_answered(rows, fields, stats):
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
                        "give --pool a folder of other images, or --contrast crop|noise|blank")
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
    """contrast_image: the nearest other image (or, for the ablations, m perturbed by
    ``perturb.corrupt``: crop, noise, blank);
    contrast_chosen: the base model's answer to the prompt for it. User-provided values are
    kept untouched (the paper rewrites answers with large external models)."""
    todo = []
    for row in rows:
        if not row.get("contrast_image"):
            if args.contrast == "neighbor":
                row["contrast_image"] = ctx["neighbors"][row["id"]]
            else:  # an ablation: y_w' is generated for m', so m' is an image file (noise baked into its pixels)
                g = torch.Generator().manual_seed(stable_seed(args.seed, row["id"]))
                m = perturb.corrupt(to_tensor(load_image(row["image"])), args.contrast, g, t=args.noise_step)
                row["contrast_image"] = save_image(to_pil(m), out_dir, f"{safe(row['id'])}-contrast.png")
        else:
            stats["contrast_image kept as given"] += 1
        if row.get("contrast_chosen"):
            stats["contrast_chosen kept as given"] += 1
        else:
            todo.append(row)
    if todo:
        images = [load_image(os.path.join(out_dir, r["contrast_image"])) for r in todo]  # absolute, or one saved here
        answer(todo, "contrast_chosen", [r["prompt"] for r in todo], images, args, ctx, stats)
    return keep_answered(rows, ("contrast_chosen",), stats)


def safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def open_image(path: str, flag: str):
    try:
        return load_image(path)
    except (OSError, ValueError) as e:
        raise UserError(f"{flag}: cannot read image {path} ({first_line(e)})") from None


def main(args) -> dict:
    """Check everything that can be checked, record the settings, then build the rows not yet written."""
    check_options(args)
    if args.generation_note:
        print(args.generation_note)
    rows = read_rows(args.data, BASE_FIELDS)
    out_path = os.path.join(args.out, "data.jsonl")
    if os.path.realpath(out_path) == os.path.realpath(args.data):
        raise DataError([f"{args.data}: --out would overwrite the input"])
    for flag, name in models_to_load(args):
        check_model_name(flag, name)
    ctx = {}
    if args.method == "symmpo" and args.contrast == "neighbor" and any(not r.get("contrast_image") for r in rows):
        ctx["pool"] = contrast_pool(args, rows)
    with locked(args.out, "mmpo.prepare"):  # one run per folder: a second prepare or a train.py stops
        return build_rows(args, rows, out_path, ctx)


def build_rows(args, rows: list, out_path: str, ctx: dict) -> dict:
    start_output(args, row_settings(args), rows)
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
            f.writelines(json.dumps(row) + "\n" for row in written)
            f.flush()
            os.fsync(f.fileno())
            stats["rows written"] += len(written)
            bar.update(len(chunk))
    stats["rows already there"] = len(rows) - len(todo)
    if todo and not stats["rows written"] and not done:
        raise UserError(f"no row written to {out_path}: every one of the {len(todo)} rows was skipped "
                        f"({', '.join(k for k in stats if k.startswith('rows skipped'))}); try other generation settings")
    return dict(stats)


def run(argv=None) -> int:
    huggingface_hub.utils.logging.set_verbosity_error()  # its retries, offline, would bury the one error line

    def go():
        args = build_parser().parse_args(argv)  # inside cli.run: a bad option is one line too
        print(summary(args.method, main(args), os.path.join(args.out, "data.jsonl")))
    return cli.run(go)
