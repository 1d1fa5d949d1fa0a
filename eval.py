"""Does the model look at the image? Preference, image-reliance and hallucination metrics for
base models and trained checkpoints, side by side.

    python eval.py --checkpoint runs/mdpo runs/dpo --data heldout.jsonl \\
        --bench chair chair.jsonl --bench pope pope.jsonl --out eval/

One column per model. Each --checkpoint (a train.py output directory, its final/ or a
checkpoint-N/ of LoRA adapters, or a model directory) is evaluated on its own base model, the
one it was trained from: its adapter_config.json names it, and for a full model the run's
config.json does (tiny models: the run's base_model/). Its implicit rewards take that base as
the reference. The base models come first: one column, "base", or one per distinct base,
"base-<name>", when the checkpoints were trained from different models. --model names the base
(and must be every checkpoint's); --no-base leaves the base columns out.

  On --data (held-out preference JSONL, the training format):
    pref/<negative>/*   chosen against rejected and each extra negative present: log-prob
                        accuracy, implicit-reward accuracy and mean margin beta * h
    reliance/<m'>/*     logp(chosen | m) > logp(chosen | m') for m' a random crop, diffusion noise
                        or a black image; chosen over rejected with and without the image
  On each --bench: chair/* (CHAIR_s, CHAIR_i, coverage), pope/* (accuracy, precision, recall,
  F1, yes-ratio), qa/* (accuracy, unread answers, how often the tempting wrong answer, the
  prior, is given; also per group) or amber/* (AMBER's CHAIR, Cover, Hal, Cog on descriptions;
  accuracy, precision, recall, F1 of "No" on existence, attribute and relation questions; in
  percent, as AMBER's inference.py computes them: mmpo/evaluation/amber.py), with the mean
  answer length and the answers cut at --max-new-tokens.

Writes OUT/eval.json (every number per column, each column's base, the options), OUT/eval.md
(the table, also printed: each metric's direction, ↑ higher is better and ↓ lower is better,
and the examples behind each group of figures) and each benchmark's answers as
OUT/answers-<column>-<bench>.jsonl, one row per example with the data's own id; with --data,
OUT/logps-<column>.jsonl holds each example's log-prob of every view scored. A kind given
more than once (POPE's three splits) is named by its file: --bench pope adv.jsonl -> pope-adv.
"""
import argparse
import importlib.util
import json
import math
import os
import sys

from mmpo.evaluation.columns import Base, Column, load_column, resolve_columns
from mmpo import cli
from mmpo.cli import UserError
from mmpo.common.lock import check_free, locked
from mmpo.common.util import markdown_table
from mmpo.constants import LOGPS_CHUNK, PAPER_NEW_TOKENS, SHARE_PREFIX, TINY_MODELS, TINY_NEW_TOKENS
from mmpo.evaluation import amber
from mmpo.common.chair import CHAIR_VARIANTS, opera_unavailable
from mmpo.evaluation.metrics import POPE_PARSERS
from mmpo.rows import DataError, check_file, read_rows

# Everything down to the __main__ check is light (no torch): the command line is read and
# checked, every checkpoint and base model identified, before the heavy imports.

BENCHES = ("chair", "pope", "qa", "amber")


# ---- the command line ----------------------------------------------------------------------

class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The docstring as written, and each option's default where it has one to show."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or action.default in ("", []):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    p = cli.Parser(prog="eval.py", description=__doc__, formatter_class=_Formatter)
    p.add_argument("--checkpoint", nargs="*", default=[], metavar="DIR",
                   help="train.py output directories (or a final/, a checkpoint-N/, a model directory), one column "
                        "each, each on its own base model")
    p.add_argument("--model", default=None,
                   help="the base model (hub id, local directory, or tiny-llava / tiny-qwen2vl / tiny-idefics3); "
                        "default: each checkpoint's own, as train.py recorded it. Must be every checkpoint's base")
    p.add_argument("--data", default="", help="held-out preference JSONL: preference and image-reliance metrics")
    p.add_argument("--bench", nargs=2, action="append", default=[], metavar=("KIND", "FILE"),
                   help="a generation benchmark: chair FILE (rows image, prompt, objects, optional captions), "
                        "pope FILE (image, question, answer) or qa FILE (image, question, answer, optional options, "
                        "group, prior: short answers read against a closed set of options) or amber FILE (one of "
                        "AMBER's query files, AMBER/data/query/query_all.json...); repeat for more")
    p.add_argument("--amber-folder", default=None, metavar="DIR",
                   help="AMBER's checkout (its data/annotations.json, relation.json, safe_words.txt, metrics.txt); "
                        "default: the one the first --bench amber FILE lies in (DIR/data/query/FILE)")
    p.add_argument("--amber-images", default=None, metavar="DIR",
                   help="the folder of AMBER's images (AMBER_1.jpg...); default: the AMBER folder's image/")
    p.add_argument("--out", default="eval", help="output directory: eval.json, eval.md, answers-*.jsonl")
    p.add_argument("--beta", type=float, default=0.1, help="inverse temperature of the implicit reward beta * h")
    p.add_argument("--batch-size", type=int, default=8, help="examples per forward pass and per generation batch")
    p.add_argument("--max-length", type=int, default=1024,
                   help="prompt + image + response tokens when scoring --data; responses are cut to fit, an example "
                        "whose prompt and image alone reach it is an error")
    # --data is scored as train.py scores it: these two are train.py's options, with its defaults
    p.add_argument("--logps-chunk", type=int, default=LOGPS_CHUNK,
                   help="response positions whose full-vocabulary logits exist at once when scoring --data, as in "
                        "train.py (exact); 0: every response position at once")
    p.add_argument("--prefix-sharing", action=argparse.BooleanOptionalAction, default=SHARE_PREFIX,
                   help="score each image + prompt prefix of --data once for all the views on it, as in train.py "
                        "(exact); --no-prefix-sharing: every view as a full sequence")
    p.add_argument("--seed", type=int, default=0, help="seed of the corrupted images m' (crop, noise)")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help=f"longest answer, in tokens; generation also stops at end-of-sequence (default: "
                        f"{PAPER_NEW_TOKENS}, as published CHAIR evaluations let descriptions run long: VCD and SymMPO "
                        f"allow 1024; {TINY_NEW_TOKENS} when every model is a tiny-* one)")
    p.add_argument("--num-beams", type=int, default=1,
                   help="beam search width of the benchmarks' answers (1: greedy); never sampled. SymMPO's Object "
                        "HalBench evaluation used 3 beams without sampling and 1024 new tokens")
    p.add_argument("--pope-parse", choices=POPE_PARSERS, default="standard",
                   help="how POPE's yes/no answers are read. standard: POPE's own rule (first sentence; "
                        "no if it has No/no/not, else yes); strict: only a leading yes/no, anything else unparsed and wrong")
    p.add_argument("--amber-parse", choices=amber.AMBER_PARSERS, default="exact",
                   help="how AMBER's yes/no answers are read. exact: the answer itself must be Yes or No, as AMBER's "
                        "inference.py compares it and SymMPO's evaluation gives it; standard or strict: as --pope-parse")
    p.add_argument("--chair-variant", choices=CHAIR_VARIANTS, default="reference",
                   help="how CHAIR reads objects in answers and captions: reference (Rohrbach et al.'s chair.py and its "
                        "Python 3 port, pattern.en's singularize) or opera (OPERA's chair.py, which OPERA, HALC and PAI "
                        "ran: nltk's part-of-speech tags and WordNet lemmas; needs nltk and its data)")
    p.add_argument("--no-base", action="store_true", help="leave the base models' columns out")
    p.add_argument("--plot", action="store_true", help="training curves and a bar chart as PNGs (needs matplotlib)")
    p.add_argument("--trust-remote-code", action="store_true", help="let transformers run a model repository's code")
    return p


LIMITS = {
    "batch_size": (lambda v: v >= 1, "at least 1"),
    "max_length": (lambda v: v >= 2, "at least 2"),
    "max_new_tokens": (lambda v: v is None or v >= 1, "at least 1"),
    "num_beams": (lambda v: v >= 1, "at least 1 (1: greedy)"),
    "beta": (lambda v: 0 < v < math.inf, "a positive number"),
    "logps_chunk": (lambda v: v >= 0, "0 (off) or more"),
}


def bench_names(benches: list[tuple[str, str]]) -> list[str]:
    """A name per --bench (KIND, FILE): the kind, or kind-<file stem> when a kind comes more than
    once (POPE's random, popular and adversarial splits are scored separately, as published)."""
    kinds = [kind for kind, _ in benches]
    names = [kind if kinds.count(kind) == 1 else f"{kind}-{os.path.splitext(os.path.basename(path))[0]}"
             for kind, path in benches]
    if len(set(names)) != len(names):
        raise UserError(f"two --bench files share a name: {names}; give them distinct file names")
    return names


def check_out(out: str):
    """--out must be a folder we can write in, found out now rather than after every model has
    been evaluated."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"--out {out}: a file, not a folder")
    parent = os.path.abspath(out)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise UserError(f"--out {out}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"--out {out}: cannot write in {parent}")


def parse_args(argv=None) -> argparse.Namespace:
    """The command line, checked, with each column's model (``args.columns``). Light: no model
    is loaded, no data read."""
    args = build_parser().parse_args(argv)
    cli.check_limits(args, LIMITS)
    for kind, _ in args.bench:
        if kind not in BENCHES:
            raise UserError(f"--bench {kind}: unknown benchmark, choose {', '.join(BENCHES[:-1])} or {BENCHES[-1]}")
    if not args.data and not args.bench:
        raise UserError("nothing to evaluate: give --data and/or --bench")
    args.bench_names = bench_names(args.bench)
    amber_files = [path for kind, path in args.bench if kind == "amber"]
    for path in amber_files:
        if not os.path.isfile(path):
            example = os.path.join(path, "data", "query", "query_all.json")
            raise UserError(f"--bench amber {path}: " + (f"a folder: give one of its query files, as {example}"
                                                         if os.path.isdir(path) else
                                                         "no such file (one of AMBER's data/query/query_*.json)"))
    if amber_files:  # one AMBER per run
        if not args.amber_folder and not os.path.isdir(os.path.join(amber.default_folder(amber_files[0]), "data")):
            raise UserError(f"--bench amber {amber_files[0]}: not in an AMBER checkout (DIR/data/query/FILE): "
                            f"give --amber-folder DIR")
        args.amber_folder = args.amber_folder or amber.default_folder(amber_files[0])
        args.amber_images = args.amber_images or os.path.join(args.amber_folder, "image")
    elif args.amber_folder or args.amber_images:
        raise UserError(f"{'--amber-folder' if args.amber_folder else '--amber-images'}: only with --bench amber")
    check_out(args.out)
    if os.path.isdir(args.out):
        check_free(args.out)
    if args.data:
        check_file(args.data, "--data")
    for kind, path in args.bench:
        if not os.path.exists(path):
            raise UserError(f"--bench {kind} {path}: no such file")
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        raise UserError("--plot needs matplotlib, which is not installed: pip install matplotlib")
    if args.chair_variant == "opera" and (missing := opera_unavailable()):
        raise UserError(missing)
    args.columns = resolve_columns(args)
    args.generation_note = ""  # said once the run starts
    if args.max_new_tokens is None:  # the papers' length, or a quick look at random tiny models
        tiny = all(c.base and c.base.key.split(" (seed")[0] in TINY_MODELS for c in args.columns)
        args.max_new_tokens = TINY_NEW_TOKENS if tiny else PAPER_NEW_TOKENS
        if tiny and args.bench:
            args.generation_note = (f"tiny models: answers of at most {TINY_NEW_TOKENS} tokens (published evaluations "
                                    f"allow {PAPER_NEW_TOKENS}, for real models: --max-new-tokens)")
    return args


if __name__ == "__main__":  # --help and every mistake above answer at once, before torch is imported
    if cli.run(parse_args, sys.argv[1:], light=True):
        sys.exit(2)

import torch
from tqdm import tqdm

from mmpo.common import chair
from mmpo.evaluation import metrics
from mmpo.data import PreferenceDataset, collate, pad_id
from mmpo.generate import generate
from mmpo.logps import sequence_logps
from mmpo.images import load_image

EXTRA_NEGATIVES = {"lang_biased": "lang_biased", "vision_biased": "vision_biased", "contrast_on_image": "contrast_chosen"}


# ---- --data: summed log-probs ---------------------------------------------------------------

def response_cut(ex, dataset: PreferenceDataset) -> bool:
    """Whether --max-length cut one of this example's responses (its log-probs then score a
    prefix): a response that fills the room left after the prompt without ending in the
    end-of-sequence token the dataset appends."""
    room = dataset.max_length - max(len(p) for p in ex.prompt_ids)
    eos = dataset.processor.tokenizer.eos_token_id
    return any(len(r) == room and (eos is None or int(r[-1]) != eos) for r in ex.responses.values())


@torch.no_grad()
def score(model, dataset: PreferenceDataset, args) -> tuple[dict[str, torch.Tensor], int]:
    """Summed log-probs of every view of every example, {view: (n,)} in data order, and the
    number of examples with a response cut at --max-length."""
    pad = pad_id(dataset.processor.tokenizer)
    out, cut = {v: [] for v in dataset.views}, 0
    for i in tqdm(range(0, len(dataset), args.batch_size), desc="score", leave=False):
        examples = [dataset[j] for j in range(i, min(i + args.batch_size, len(dataset)))]
        batch = collate(examples, dataset.views, pad)
        if batch.skipped:  # leaving it out would score the columns on different examples
            raise UserError(f"{batch.skipped[0]}: too long to score; raise --max-length")
        cut += sum(response_cut(ex, dataset) for ex in examples)
        logps = sequence_logps(model, batch, share_prefix=args.prefix_sharing, chunk=args.logps_chunk)[0]
        for v, lp in batch.split(logps.float().cpu()).items():
            out[v].append(lp)
    return {v: torch.cat(x) for v, x in out.items()}, cut


def reliance(model, data: str, processor, args, per_example: dict | None = None) -> dict:
    """The chosen answer on m against m' (crop, noise, blank), and with a blank m' chosen over
    rejected with and without the image. Each view's log-probs go into ``per_example`` (when
    given) as ``KIND/VIEW``."""
    out = {}
    for kind in ("crop", "noise", "blank"):
        views = ("chosen", "rejected", "chosen_on_corrupt", "rejected_on_corrupt") if kind == "blank" else \
            ("chosen", "chosen_on_corrupt")
        ds = PreferenceDataset(data, processor, views, m_prime=kind, seed=args.seed, max_length=args.max_length,
                               prefer_field=False)
        logps = score(model, ds, args)[0]
        if per_example is not None:
            per_example.update({f"{kind}/{v}": lp for v, lp in logps.items()})
        out.update(metrics.reliance_metrics(kind, logps))
    return out


def data_negatives(path: str) -> list[str]:
    """The negatives to score chosen against: rejected, and each extra one every row has. One
    that only some rows have is left out, and said so."""
    rows = read_rows(path, {"image", "prompt", "chosen", "rejected"})
    negatives = ["rejected"]
    for view, field in EXTRA_NEGATIVES.items():
        have = sum(bool(r.get(field)) for r in rows)
        if have == len(rows):
            negatives.append(view)
        elif have:
            print(f"{path}: '{field}' on {have} of {len(rows)} rows: pref/{view} left out (it needs every row)")
    return negatives


def reference_logps(base: Base, args, views: list[str]) -> dict[str, torch.Tensor]:
    """A base model's log-probs on --data, the reference of its checkpoints' implicit rewards
    (scored on its own only when it has no column, under --no-base)."""
    model, processor = load_column(Column("base", base), args.trust_remote_code)
    return score(model, PreferenceDataset(args.data, processor, views, max_length=args.max_length), args)[0]


def data_metrics(model, processor, col: Column, args, negatives: list[str], refs: dict) -> dict:
    """A column's figures on --data, with the number of examples behind them and of those with a
    response cut at --max-length. ``refs`` holds each base's log-probs (base key -> {view: (n,)});
    a base column adds its own."""
    ds = PreferenceDataset(args.data, processor, ["chosen", *negatives], max_length=args.max_length)
    logps, cut = score(model, ds, args)
    if col.weights is None:
        refs[col.base.key] = logps
    per_example = dict(logps)
    figures = {"data/examples": len(ds), "data/truncated": cut,
               **metrics.preference_metrics(logps, refs[col.base.key], negatives, args.beta),
               **reliance(model, args.data, processor, args, per_example)}
    with open(os.path.join(args.out, f"logps-{col.name}.jsonl"), "w", encoding="utf-8") as f:  # each figure's parts
        for i, row in enumerate(ds.rows):
            f.write(json.dumps({"id": row["id"], **{v: lp[i].item() for v, lp in per_example.items()}}) + "\n")
    return figures


# ---- --bench: generated answers --------------------------------------------------------------

def read_bench(kind: str, path: str, args=None) -> list[dict]:
    """Benchmark rows, every problem reported as file:line: field 'x': what is wrong (AMBER's:
    its query file, each row with its annotation, from ``args.amber_folder``)."""
    if kind == "amber":
        return amber.read_queries(path, args.amber_folder, args.amber_images)
    rows = read_rows(path, {"image"})  # (read_rows files a "question" under "prompt")
    errors = []
    for r in rows:
        where = f"{path}:{r['line']}"
        if not r.get("prompt"):
            errors.append(f"{where}: field '{'prompt' if kind == 'chair' else 'question'}': missing")
        errors += [f"{where}: {problem}" for problem in metrics.label_problems(kind, r)]
    if errors:
        raise DataError(errors)
    return rows


def bench_metrics(model, processor, kind: str, rows: list[dict], args, column: str, bench: str) -> dict:
    """Answers to a benchmark, saved by example id with what was read from each, and its metrics
    with the mean answer length (CHAIR grows with it, so compare columns of similar length) and
    how many answers hit --max-new-tokens; a QA bench's figures per group come last."""
    groups = {}
    loaded = {path: load_image(path) for path in dict.fromkeys(r["image"] for r in rows)}  # AMBER: 15k questions, 1k images
    images = [loaded[r["image"]] for r in rows]
    answers, lengths = generate(model, processor, [r["prompt"] for r in rows], images, max_new_tokens=args.max_new_tokens,
                                num_beams=args.num_beams, batch_size=args.batch_size, show=True)
    cut = [n >= args.max_new_tokens for n in lengths]
    if kind == "chair":
        truths = [chair.true_objects(r, args.chair_variant) for r in rows]
        m = chair.chair(answers, truths, args.chair_variant)
        details = [chair.chair_answer(a, t, args.chair_variant) for a, t in zip(answers, truths)]
        details = [{"objects": d["objects"], "hallucinated": d["hallucinated"]} for d in details]
    elif kind == "pope":
        m = metrics.pope(answers, [r["answer"] for r in rows], parse=args.pope_parse)
        details = [{"parsed": metrics.parse_yes_no(a, args.pope_parse)} for a in answers]
    elif kind == "amber":
        m, details = amber.evaluate(rows, answers, amber.read_folder(args.amber_folder), args.amber_parse)
    else:
        reads = [metrics.read_option(a, metrics.qa_choices(r)) for r, a in zip(rows, answers)]
        m = metrics.qa_metrics(rows, reads)
        details = [{"read": x, "correct": x == r["answer"]} for r, x in zip(rows, reads)]
        for g in sorted({r["group"] for r in rows if r.get("group") is not None}):
            inside = [i for i, r in enumerate(rows) if r.get("group") == g]
            figures = metrics.qa_metrics([rows[i] for i in inside], [reads[i] for i in inside])
            groups.update({f"{g}/{k}": v for k, v in figures.items()})
    with open(os.path.join(args.out, f"answers-{column}-{bench}.jsonl"), "w", encoding="utf-8") as f:
        for r, a, n, t, d in zip(rows, answers, lengths, cut, details):
            f.write(json.dumps({"id": r["id"], "answer": a, "tokens": n, "truncated": t, **d}, ensure_ascii=False) + "\n")
    if "answers" in m:
        m = {"examples": m.pop("answers"), **m}
    m["truncated"] = sum(cut)
    m["mean_answer_words"] = sum(len(a.split()) for a in answers) / max(1, len(answers))
    m["mean_answer_tokens"] = sum(lengths) / max(1, len(answers))  # generated tokens, end-of-sequence excluded
    m.update(groups)
    return {f"{bench}/{k}": v for k, v in m.items()}


# ---- report ------------------------------------------------------------------------------

HIGHER = {"logp_acc", "reward_acc", "reward_margin", "cond_acc", "logp_gap", "sighted_acc", "sighted_minus_blind",
          "coverage", "accuracy", "precision", "recall", "f1", "cover"}
LOWER = {"chair_s", "chair_i", "unparsed", "unread", "prior_rate", "chair", "hal", "cog"}


def direction(key: str) -> str:
    """↑ where higher is better, ↓ where lower is, '' where neither: counts, answer lengths, the
    yes-ratio (a balanced POPE split has 0.5) and the blind accuracy (read it against the sighted one)."""
    last = key.rsplit("/", 1)[-1]
    return "↑" if last in HIGHER else "↓" if last in LOWER else ""


CHAIR_READ_BY = {"reference": "CHAIR reads objects by the reference rules (Rohrbach et al.'s chair.py).",
                 "opera": "CHAIR reads objects by OPERA's chair.py (nltk's part-of-speech tags and WordNet lemmas: "
                          "--chair-variant opera)."}


def markdown(columns: list[str], table: dict, bases: list[str], chair_variant: str | None = None) -> str:
    """A row per metric with its direction (each group headed by its ``*/examples`` count), under
    the base model of each column (its implicit rewards' reference); with CHAIR figures, which
    rules read their objects (``chair_variant``)."""
    def cell(v) -> str:  # a string says how a figure was computed (AMBER's nouns and synonyms)
        return "" if v is None else v if isinstance(v, str) else f"{v:.4g}"
    rows = [[f"{k} {direction(k)}".strip(), *(cell(table[c].get(k)) for c in columns)]
            for k in dict.fromkeys(k for c in columns for k in table[c])]
    rewards = any(k.endswith("reward_acc") for c in columns for k in table[c])
    return markdown_table(["metric", *columns], [["base model", *bases], *rows]) + (
        "\n↑ higher is better, ↓ lower is better, no arrow: neither. `*/examples`: the examples behind the figures "
        "below it." + (" Implicit rewards (`reward_acc`, `reward_margin`) are against each column's base model."
                       if rewards else "") + (f" {CHAIR_READ_BY[chair_variant]}" if chair_variant else "") + "\n")


def training_curves(run: str | None) -> dict[str, tuple[list, list]]:
    """(steps, values) of a run's training loss, reward accuracy and held-out loss, from its
    metrics.jsonl. A row without a figure stays out of that curve (a held-out evaluation at a
    step whose training was skipped has no loss), as does a line a killed run left half-written."""
    curves = {k: ([], []) for k in ("loss", "rewards/accuracies", "eval/loss")}
    path = os.path.join(run or "", "metrics.jsonl")
    if run is None or not os.path.isfile(path):
        return curves
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not isinstance(row, dict) or not isinstance(row.get("step"), int):
                continue
            for k, (steps, values) in curves.items():
                if isinstance(row.get(k), (int, float)) and not isinstance(row[k], bool):
                    steps.append(row["step"])
                    values.append(row[k])
    return curves


def plot(columns: list[Column], table: dict, out: str) -> str:
    """OUT/curves.png (each run's training and held-out loss, reward accuracy) and OUT/metrics.png
    (every accuracy-like figure of the table, per column)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for col in (c for c in columns if c.run is not None):  # base models have no training to draw
        curves = training_curves(col.run)
        line, = axes[0].plot(*curves["loss"], label=col.name)
        if curves["eval/loss"][0]:
            axes[0].plot(*curves["eval/loss"], "o--", color=line.get_color(), label=f"{col.name} (held-out)")
        axes[1].plot(*curves["rewards/accuracies"], label=col.name)
    for ax, title in zip(axes, ("loss ↓", "reward accuracy ↑")):
        ax.set_xlabel("step"), ax.set_title(title), ax.legend()
    paths = [os.path.join(out, "curves.png"), os.path.join(out, "metrics.png")]
    fig.tight_layout()
    fig.savefig(paths[0])
    names = [c.name for c in columns]
    keys = [k for k in dict.fromkeys(k for c in names for k in table[c])
            if k.endswith(("acc", "chair_s", "chair_i", "f1", "accuracy", "prior_rate"))]
    fig, ax = plt.subplots(figsize=(max(6, len(keys) * 0.8), 4))
    width = 0.8 / len(names)
    for i, c in enumerate(names):
        ax.bar([k + i * width for k in range(len(keys))], [table[c].get(k, 0) for k in keys], width, label=c)
    ax.set_xticks([k + 0.4 - width / 2 for k in range(len(keys))], [f"{k} {direction(k)}" for k in keys],
                  rotation=60, ha="right", fontsize=7)
    ax.legend()
    fig.tight_layout()
    fig.savefig(paths[1])
    return f"plots: {paths[0]}, {paths[1]}"


def open_out(out: str):
    """Create --out and write in it once, before any model is evaluated."""
    try:
        os.makedirs(out, exist_ok=True)
        probe = os.path.join(out, ".eval-write-check")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as e:
        raise UserError(f"--out {out}: cannot write there ({e.strerror or e})") from None


# ---- the evaluation ----------------------------------------------------------------------

def main(args) -> dict:
    """Every column's metrics (``args`` from parse_args); writes eval.json, eval.md, the answers."""
    columns = args.columns
    if args.generation_note:
        print(args.generation_note)
    benches = [(kind, name, read_bench(kind, path, args)) for (kind, path), name in zip(args.bench, args.bench_names)]
    negatives = data_negatives(args.data) if args.data else []
    with locked(args.out, "eval.py"):  # one run per folder: a second eval.py (or train.py) there stops
        return evaluate(args, columns, benches, negatives)


def evaluate(args, columns, benches, negatives) -> dict:
    open_out(args.out)
    refs, table = {}, {}  # refs: one entry per distinct base, computed once, shared by its checkpoints
    for col in columns:
        print(f"== {col.name}: {col.describe()}")
        if args.data and col.weights is not None and col.base.key not in refs:
            refs[col.base.key] = reference_logps(col.base, args, ["chosen", *negatives])
        model, processor = load_column(col, args.trust_remote_code)
        table[col.name] = data_metrics(model, processor, col, args, negatives, refs) if args.data else {}
        for kind, bench, rows in benches:
            table[col.name].update(bench_metrics(model, processor, kind, rows, args, col.name, bench))
        del model
    names = [c.name for c in columns]
    options = {k: v for k, v in vars(args).items() if k not in ("columns", "bench_names")}
    with open(os.path.join(args.out, "eval.json"), "w", encoding="utf-8") as f:
        json.dump({"columns": names, "bases": {c.name: c.base.source if c.base else None for c in columns},
                   "metrics": table, "options": options}, f, indent=1, ensure_ascii=False)
    variant = args.chair_variant if any(kind == "chair" for kind, _, _ in benches) else None
    md = markdown(names, table, [c.base.label if c.base else "none" for c in columns], variant)
    with open(os.path.join(args.out, "eval.md"), "w", encoding="utf-8") as f:
        f.write(md)
    print(md)
    if args.plot:
        print(plot(columns, table, args.out))
    print(f"wrote {os.path.join(args.out, 'eval.json')} and {os.path.join(args.out, 'eval.md')}")
    return table


def run(argv=None) -> int:
    """eval.py's command line; every mistake is one line on stderr and exit status 2."""
    return cli.run(lambda: main(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(run())
