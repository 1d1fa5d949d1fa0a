"""The command around prepare's pipelines: its options and their checks, the settings that decide
a row, the models it loads, and its summary (``python -m mmpo.prepare``).

Light on purpose: the standard library, mmpo.cli, mmpo.constants and mmpo.common at import, no
torch, no transformers, so that --help and option errors answer at once (__main__.py checks the
command line with this module before the heavy imports). What needs torch or a model is imported
inside the function that uses it.

Resuming: every row is reproducible from (seed, id), so a killed run continued gives the rows of
one uninterrupted run, provided the settings are the same: OUT/prepare.json records what decides
the rows (``row_settings``: method, input checksum, options), and the output folder that convert
shares (mmpo/common/output.py) refuses a re-run with other settings.
"""
import hashlib
import os

from mmpo import cli
from mmpo.cli import UserError, first_line
from mmpo.constants import (M_PRIMES, NOISE_STEPS, PAPER_BEAMS, PAPER_NEW_TOKENS, TINY_BEAMS, TINY_MODELS,
                            TINY_NEW_TOKENS)
from mmpo.common.util import check_model_path

# mfpo's keyphrase ranking (mmpo/prepare/keywords.py), recorded with its rows; 2: Boudin's graph as pke builds it
KEYPHRASES = 2
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
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help=f"napo, symmpo: generation limit (default: NaPO's released {PAPER_NEW_TOKENS}; {TINY_NEW_TOKENS} for "
                        f"tiny-* models); an answer cut there gets no end-of-sequence token")
    p.add_argument("--num-beams", type=int, default=None,
                   help=f"napo, symmpo: beam search width (default: NaPO's released {PAPER_BEAMS}; {TINY_BEAMS} for tiny-* "
                        f"models; 1 = greedy)")
    p.add_argument("--do-sample", action="store_true",
                   help="napo, symmpo: sample within the beams (off: deterministic, as NaPO's gen_bias_data.sh runs its "
                        "script, with --temperature 0; the script's own default is sampling at 0.2)")
    p.add_argument("--temperature", type=float, default=0.2, help="napo, symmpo: sampling temperature (with --do-sample)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--noise-step", type=int, default=500,
                   help="diffusion step t of the noise (of 1000); mfpo records it, training adds the noise to the processed "
                        "pixels; symmpo --contrast noise bakes it into the contrast image")
    p.add_argument("--k", type=int, default=3, help="mfpo: keyphrases per answer")
    p.add_argument("--keywords", choices=("multipartite", "boudin", "words"), default="multipartite",
                   help="mfpo: Boudin's multipartite graph of keyphrases in MFPO's weights, as the paper cites it "
                        "(multi-word objects stay whole: 'traffic light'); boudin: pke's MultipartiteRank exactly, given "
                        "the same tags and stems; or a graph of single words, as its text reads ('nodes represent words'; "
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
    """The options' ranges, the input file's kind, the output folder's lock and a model path: before
    torch is imported, the data read or a model loaded. Generation's defaults: the papers', or for
    a tiny model a quick look (``args.generation_note``, said once the run starts)."""
    tiny = args.model in TINY_MODELS
    defaulted = args.max_new_tokens is None or args.num_beams is None
    if args.max_new_tokens is None:
        args.max_new_tokens = TINY_NEW_TOKENS if tiny else PAPER_NEW_TOKENS
    if args.num_beams is None:
        args.num_beams = TINY_BEAMS if tiny else PAPER_BEAMS
    args.generation_note = (f"{args.model} (random, tiny): generating at most {args.max_new_tokens} tokens with "
                            f"{args.num_beams} beam(s); the papers' {PAPER_NEW_TOKENS} and {PAPER_BEAMS} are for real "
                            f"models (--max-new-tokens, --num-beams)") if tiny and defaulted and args.method != "mfpo" else ""
    cli.check_limits(args, LIMITS)
    if not 0 <= args.noise_step < NOISE_STEPS:
        raise UserError(f"--noise-step {args.noise_step}: must be a diffusion step in [0, {NOISE_STEPS})")
    if args.do_sample and not args.temperature > 0:
        raise UserError(f"--temperature {args.temperature}: must be positive with --do-sample")
    if args.method != "mfpo" and not args.model:
        raise UserError(f"{args.method} needs --model: the base model whose answers it records")
    if args.method == "mfpo" and args.tagger == "nltk":
        from mmpo.common.tagging import NLTK_INSTALL, nltk_tagger
        if nltk_tagger() is None:
            raise UserError(f"--tagger nltk needs nltk and its tagger data ({NLTK_INSTALL}), or --tagger rules")
    from mmpo.common.lock import check_free
    from mmpo.rows import check_file  # light: the file's first bytes
    if os.path.isdir(args.out):
        check_free(args.out)
    check_file(args.data, "--data")
    if args.model:
        check_model_path("--model", args.model, TINY_MODELS)


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
        check_model_path(flag, name, tiny)
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

def row_settings(args) -> dict:
    """What decides the rows' contents: the method, the input's checksum, and every option this
    method reads with these options (an option it ignores is left out, so changing it is harmless).
    --batch-size counts for napo and symmpo: generation left-pads each batch, which changes a row's
    logits with its batch-mates (5e-7 in fp32, 8e-3 in bf16 on tiny-llava), enough to flip a greedy
    or beam choice at a near tie. mfpo's rows are made one by one: its batch size changes nothing."""
    names = ["model", "seed"]
    if args.method == "mfpo":
        names += ["k", "keywords", "tagger", "noise_step", "regions", "keyphrases"]
        if args.regions == "grounded":
            names += ["detector", "segmenter", "threshold"]
    else:
        names += ["max_new_tokens", "num_beams", "do_sample", "batch_size"] + (["temperature"] if args.do_sample else [])
        if args.method == "napo":
            names += ["napo_prompt", "lang_image"]
        else:
            names += ["contrast"] + {"neighbor": ["pool", "embedder"], "noise": ["noise_step"]}.get(args.contrast, [])
    # the ranking's version: rows ranked by an earlier one are not continued with this one
    values = {n: KEYPHRASES if n == "keyphrases" else getattr(args, n) for n in names}
    for n in ("model", "detector", "segmenter", "embedder", "pool"):
        if values.get(n) and os.path.exists(values[n]):
            values[n] = os.path.realpath(values[n])  # one folder, however it is spelled
    if values.get("tagger") == "auto":  # auto means nltk on one machine, the rules on another
        from mmpo.common.tagging import nltk_tagger
        values["tagger"] = "auto: " + ("nltk" if nltk_tagger() else "rules")
    with open(args.data, "rb") as f:
        return {"method": args.method, "data_sha256": hashlib.sha256(f.read()).hexdigest(), **values}


def summary(method: str, stats: dict, out_path: str) -> str:
    first = ("rows written", "rows already there")
    lines = [f"  {k}: {stats.get(k, 0)}" for k in first]
    lines += [f"  {k}: {v}" for k, v in sorted(stats.items()) if k not in first and v]
    return "\n".join([f"prepare {method}:", *lines, f"  output: {out_path}"])
