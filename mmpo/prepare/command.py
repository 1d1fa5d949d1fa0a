"""The command around prepare's pipelines: its options and their checks, the resumable output
with its recorded settings, the models it loads, and its summary (``python -m mmpo.prepare``).

Light on purpose: the standard library, mmpo.cli and mmpo.config at import, no torch, no transformers,
so that --help and option errors answer at once (__main__.py checks the command line with this
module before the heavy imports). What needs torch or a model is imported inside the function
that uses it.

Resuming: rows already in OUT/data.jsonl are kept and never redone, and every row is reproducible
from (seed, id), so a killed run continued gives the rows of one uninterrupted run. That holds only
under the same settings, so OUT/prepare.json records what decides the rows (method, input checksum,
options) and a re-run with other settings is refused (``--overwrite`` starts afresh).
"""
import hashlib
import json
import os
import shutil

from mmpo import cli
from mmpo.cli import UserError, first_line
from mmpo.config import M_PRIMES, TINY_MODELS
from mmpo.files import write_atomic

SETTINGS = "prepare.json"  # beside OUT/data.jsonl: what decided its rows
# what to say after "cannot load": the way around it
HINTS = {"--detector": "; what needs no download: a local model directory for --detector/--segmenter, --segmenter '' "
                       "(boxes only), or --regions random|global",
         "--embedder": "; leave --embedder out to retrieve with the --model's vision tower"}
HINTS["--segmenter"] = HINTS["--detector"]


def build_parser() -> cli.Parser:
    p = cli.Parser(prog="python -m mmpo.prepare", description="Build each method's training data from a preference JSONL.",
                   epilog="Offline (no model hub): set HF_HUB_OFFLINE=1, and give local model folders or tiny-* models; "
                          "mfpo's --regions random|global (or --segmenter '' with a local --detector) need no detector "
                          "download.")
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
                   help="napo, symmpo: sample within the beams (off: deterministic, as NaPO's gen_bias_data.sh runs its "
                        "script, with --temperature 0; the script's own default is sampling at 0.2)")
    p.add_argument("--temperature", type=float, default=0.2, help="napo, symmpo: sampling temperature (with --do-sample)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--noise-step", type=int, default=500,
                   help="diffusion step t of the noise (of 1000); mfpo records it, training adds the noise to the processed "
                        "pixels; symmpo --contrast noise bakes it into the contrast image")
    p.add_argument("--k", type=int, default=3, help="mfpo: keyphrases per answer")
    p.add_argument("--keywords", choices=("multipartite", "words"), default="multipartite",
                   help="mfpo: Boudin's multipartite graph of keyphrases, as the paper cites it (multi-word objects stay "
                        "whole: 'traffic light'), or a graph of single words, as its text reads ('nodes represent words'; "
                        "kept to compare: it asks the detector for 'traffic')")
    p.add_argument("--tagger", choices=("auto", "rules", "nltk"), default="auto",
                   help="mfpo: nouns and adjectives by nltk's tagger (stems by Porter's) when installed (auto), or the "
                        "built-in rules (the same on every machine)")
    p.add_argument("--regions", choices=("grounded", "random", "global"), default="grounded",
                   help="mfpo: noise the keywords' regions, a random 20%% (ablation) or everything")
    p.add_argument("--detector", default="google/owlv2-base-patch16-ensemble",
                   help="mfpo: open-vocabulary detector (hub id or local directory)")
    p.add_argument("--segmenter", default="facebook/sam-vit-base", help="mfpo: segmenter ('' for boxes only)")
    p.add_argument("--threshold", type=float, default=0.1, help="mfpo: detection score threshold, in [0, 1]")
    p.add_argument("--napo-prompt", choices=("released", "chat-template"), default="released",
                   help="napo: released: for LLaVA-1.5 models, LLaVA's llava_v1 conversation with its system prompt, "
                        "as NaPO's released code; other models keep their own chat template | chat-template: the "
                        "processor's chat template for every model")
    p.add_argument("--lang-image", choices=("none", "white", "black"), default="none",
                   help="napo: language-biased answers without an image (none, as released), or, mmpo's own variant, "
                        "the question with a blank white or black image")
    p.add_argument("--contrast", choices=("neighbor", *(k for k in M_PRIMES if k != "contrast")), default="neighbor",
                   help="symmpo: m' is the nearest other image (neighbor), or m perturbed (the ablations, as "
                        "train.py --m-prime names them)")
    p.add_argument("--pool", default="", help="symmpo: a folder of candidate contrast images (default: the data's)")
    p.add_argument("--embedder", default="", help="symmpo: an image model (e.g. a CLIP) for retrieval; default the VLM's vision tower")
    return p


# ---- one line for each mistake, before anything slow ------------------------------------------

AT_LEAST_1 = (lambda v: v >= 1, "at least 1")
LIMITS = {"batch_size": AT_LEAST_1, "k": AT_LEAST_1,
          "threshold": (lambda v: 0 <= v <= 1, "a detection score in [0, 1]"),
          "num_beams": AT_LEAST_1, "max_new_tokens": AT_LEAST_1}


def check_options(args) -> None:
    """The options' ranges, before the data is read or a model loaded."""
    cli.check_limits(args, LIMITS)
    from mmpo.perturb import NOISE_STEPS  # its one owner (torch): after --help has answered
    if not 0 <= args.noise_step < NOISE_STEPS:
        raise UserError(f"--noise-step {args.noise_step}: must be a diffusion step in [0, {NOISE_STEPS})")
    if args.do_sample and not args.temperature > 0:
        raise UserError(f"--temperature {args.temperature}: must be positive with --do-sample")
    if args.method != "mfpo" and not args.model:
        raise UserError(f"{args.method} needs --model: the base model whose answers it records")
    if args.method == "mfpo" and args.tagger == "nltk":
        from mmpo.prepare.tagging import NLTK_INSTALL, nltk_tagger
        if nltk_tagger() is None:
            raise UserError(f"--tagger nltk needs nltk and its tagger data ({NLTK_INSTALL}), or --tagger rules")


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
    """Fail at once, with the option's hint, for a model that cannot be there: cli.check_model_path's
    path that is no model directory, a name of no hub id's shape ("a b"), or, offline, a hub id
    missing from the local cache. (Other failures show when it loads: load_or_explain.)"""
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.utils import validate_repo_id
    tiny = TINY_MODELS if flag == "--model" else ()
    try:
        cli.check_model_path(flag, name, tiny)
        if name in tiny or os.path.isdir(name):
            return
        try:
            validate_repo_id(name)
        except ValueError:
            raise UserError(f"{flag} {name}: no such directory") from None
        if hub_offline() and not isinstance(try_to_load_from_cache(name, "config.json"), str):
            raise UserError(f"{flag} {name}: no such directory, and not in the Hugging Face cache "
                            "(offline: HF_HUB_OFFLINE is set)")
    except UserError as e:
        raise UserError(f"{e}{HINTS.get(flag, '')}") from None


# ---- the models: each failure one line naming its option --------------------------------------

def load_or_explain(flag: str, name: str, load):
    try:
        return load(name)
    except Exception as e:  # missing files, no network, a model of another kind: all about the name given
        raise UserError(f"{flag} {name}: cannot load it ({first_line(e)}){HINTS.get(flag, '')}") from None


def load_embedder(name: str):
    """An image-text model (a CLIP) and its processor, for retrieval by image embedding."""
    import transformers
    model = transformers.AutoModel.from_pretrained(name).eval()
    processor = transformers.AutoProcessor.from_pretrained(name)
    if not hasattr(model, "get_image_features") or not hasattr(processor, "image_processor"):
        raise ValueError(f"a {type(model).__name__} gives no image embeddings; give an image-text model such as a CLIP")
    return model, processor


def load_models(args, ctx) -> None:
    from mmpo.models import load_model
    from mmpo.prepare.keywords import embedding_vectors
    from mmpo.prepare.regions import Grounding, load_detector, load_segmenter
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


# ---- resuming: the rows written so far, and the settings that made them ------------------------

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


def row_settings(args) -> dict:
    """What decides the rows' contents: the method, the input's checksum, and every option this
    method reads with these options (an option it ignores is left out, so changing it is harmless).
    --batch-size counts for napo and symmpo: generation left-pads each batch, which changes a row's
    logits with its batch-mates (5e-7 in fp32, 8e-3 in bf16 on tiny-llava), enough to flip a greedy
    or beam choice at a near tie. mfpo's rows are made one by one: its batch size changes nothing."""
    names = ["model", "seed"]
    if args.method == "mfpo":
        names += ["k", "keywords", "tagger", "noise_step", "regions"]
        if args.regions == "grounded":
            names += ["detector", "segmenter", "threshold"]
    else:
        names += ["max_new_tokens", "num_beams", "do_sample", "batch_size"] + (["temperature"] if args.do_sample else [])
        if args.method == "napo":
            names += ["napo_prompt", "lang_image"]
        else:
            names += ["contrast"] + {"neighbor": ["pool", "embedder"], "noise": ["noise_step"]}.get(args.contrast, [])
    values = {n: getattr(args, n) for n in names}
    for n in ("model", "detector", "segmenter", "embedder", "pool"):
        if values.get(n) and os.path.exists(values[n]):
            values[n] = os.path.realpath(values[n])  # one folder, however it is spelled
    if values.get("tagger") == "auto":  # auto means nltk on one machine, the rules on another
        from mmpo.prepare.tagging import nltk_tagger
        values["tagger"] = "auto: " + ("nltk" if nltk_tagger() else "rules")
    with open(args.data, "rb") as f:
        return {"method": args.method, "data_sha256": hashlib.sha256(f.read()).hexdigest(), **values}


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
            name = (names or {"method": "the method", "data_sha256": "--data's content"}).get(key, "--" + key.replace("_", "-"))
            out.append(f"{name} {show(key, a)} (now {show(key, b)})")
    return out


def start_output(args, settings: dict, rows=(), record_name: str = SETTINGS, out_flag: str = "--out",
                 names: dict | None = None) -> None:
    """Make OUT ready (before any model loads). --overwrite removes what an earlier run wrote;
    otherwise rows already there must come from the same settings (else they would mix with this
    run's). Then this run's settings are recorded, atomically. Also mmpo.convert's (``record_name``
    convert.json, its OUT a positional ``out_flag``, ``names`` its settings' names)."""
    out_path, record, images = (os.path.join(args.out, n) for n in ("data.jsonl", record_name, "images"))
    fresh = (f"use another {out_flag}, or add --overwrite to start afresh (it deletes {out_path}, {images}/ "
             f"and {record})")
    if args.overwrite and rows:
        from mmpo.rows import IMAGE_FIELDS  # (it imports torch: not for convert, which gives no rows)
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


def summary(method: str, stats: dict, out_path: str) -> str:
    first = ("rows written", "rows already there")
    lines = [f"  {k}: {stats.get(k, 0)}" for k in first]
    lines += [f"  {k}: {v}" for k, v in sorted(stats.items()) if k not in first and v]
    return "\n".join([f"prepare {method}:", *lines, f"  output: {out_path}"])
