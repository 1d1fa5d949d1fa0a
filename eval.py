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
  F1, yes-ratio) or qa/* (accuracy, unread answers, how often the tempting wrong answer, the
  prior, is given; also per group), with the mean answer length and the answers cut at
  --max-new-tokens.

Writes OUT/eval.json (every number per column, each column's base, the options), OUT/eval.md
(the table, also printed: each metric's direction, ↑ higher is better and ↓ lower is better,
and the examples behind each group of figures) and each benchmark's answers as
OUT/answers-<column>-<bench>.jsonl, one row per example with the data's own id. A kind given
more than once (POPE's three splits) is named by its file: --bench pope adv.jsonl -> pope-adv.
"""
import argparse
import importlib.util
import json
import math
import os
import sys
from dataclasses import dataclass

from mmpo import cli
from mmpo.cli import UserError
from mmpo.config import TINY_MODELS
from mmpo.metrics import POPE_PARSERS

# Everything down to the __main__ check is light (no torch): the command line is read and
# checked, every checkpoint and base model identified, before the heavy imports.

BENCH_FIELDS = {"chair": ("image", "prompt", "objects"), "pope": ("image", "question", "answer"),
                "qa": ("image", "question", "answer", "options", "group", "prior")}


# ---- which model each column is ------------------------------------------------------------

@dataclass
class Base:
    """A base model. ``key`` is what it is (two bases with one key are the same weights): a hub
    id, a folder's real path, or a tiny model's name and seed; ``source`` is what loads it and
    ``label`` its short name in the table."""
    key: str
    source: str
    label: str
    origin: str = "--model"  # who named it, for messages

    def describe(self) -> str:
        return self.source if self.label in self.source else f"{self.label} ({self.source})"


@dataclass
class Column:
    """One column of the table: a base model (``weights`` None), or a checkpoint on its base."""
    name: str
    base: Base | None  # None: a model directory that records no base, without --model
    weights: str | None = None  # the folder holding the adapter (``adapter``) or the full model
    adapter: bool = False
    given: str = ""  # --checkpoint as typed, for messages
    run: str | None = None  # the train.py run it comes from (its metrics.jsonl), if any

    def describe(self) -> str:
        base = self.base.describe() if self.base else "no recorded base"
        return base if self.weights is None else f"{self.weights} on {base}"


def read_json(path: str) -> dict:
    """A JSON object from a file; a broken one is a one-line error naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: cannot read it as JSON ({e})") from None
    if not isinstance(doc, dict):
        raise UserError(f"{path}: expected a JSON object")
    return doc


def run_config(folder: str | None) -> dict | None:
    """The train.py configuration of a run directory (its config.json names an objective and a
    model), else None: a model directory's config.json names neither."""
    path = os.path.join(folder or "", "config.json")
    if folder is None or not os.path.isfile(path):
        return None
    cfg = read_json(path)
    return cfg if "objective" in cfg and "model" in cfg else None


def is_model_dir(folder: str) -> bool:
    """A transformers model directory: a config.json with a model_type."""
    path = os.path.join(folder, "config.json")
    return os.path.isfile(path) and "model_type" in read_json(path)


def looks_like_path(name: str) -> bool:
    """A model name that can only be a local folder (transformers would try anything else as a
    hub id and answer with a puzzling message about repo ids)."""
    return name.startswith((".", "/", "~")) or os.path.exists(name) or name.count("/") > 1 or "\\" in name


def base_model(name: str, origin: str = "--model") -> Base:
    """The identity of a base model, as --model names it or train.py records it."""
    if name in TINY_MODELS:
        return Base(f"{name} (seed 0)", name, name, origin)  # eval builds tiny models with seed 0
    if os.path.isdir(name):
        folder = os.path.realpath(name)
        run = run_config(os.path.dirname(folder))
        if os.path.basename(folder) == "base_model" and run and run["model"] in TINY_MODELS:
            # train.py's copy of a tiny model, built from (name, seed): every run of that name
            # and seed has the same weights, so they share one base column and one reference
            seed = run.get("seed", 0)
            label = run["model"] if seed == 0 else f"{run['model']}-seed{seed}"
            return Base(f"{run['model']} (seed {seed})", name, label, origin)
        return Base(folder, name, os.path.basename(folder), origin)
    return Base(name, name, name.rsplit("/", 1)[-1], origin)


def check_model(name: str):
    """--model must be loadable by its name: a path must be a model directory (not a run)."""
    if not name.strip():
        raise UserError("--model is empty")
    if name in TINY_MODELS or not looks_like_path(name):
        return
    if not os.path.isdir(name):
        raise UserError(f"--model {name}: no such directory")
    if run_config(name) is not None:
        raise UserError(f"--model {name}: a train.py run, not a base model; give it as --checkpoint {name}")
    if not is_model_dir(name):
        raise UserError(f"--model {name}: not a model directory (no config.json with a model_type)")


def column_name(path: str, run_dir: str | None) -> str:
    """A checkpoint's column: its folder's name, or its run's (runs/dpo/final -> dpo,
    runs/dpo/checkpoint-50 -> dpo-checkpoint-50)."""
    name = os.path.basename(os.path.abspath(path))
    if run_dir and os.path.realpath(run_dir) != os.path.realpath(path):
        run_name = os.path.basename(os.path.abspath(run_dir))
        return run_name if name == "final" else f"{run_name}-{name}"
    return name


def checkpoint_column(path: str) -> Column:
    """What --checkpoint PATH holds (LoRA adapters or a full model) and the base it was trained on."""
    where = f"--checkpoint {path}"
    if not os.path.exists(path):
        raise UserError(f"{where}: no such directory")
    if not os.path.isdir(path):
        raise UserError(f"{where}: a file, not a train.py output directory")
    run_dir, weights = None, path
    own = run_config(path)
    if own is not None:
        run_dir, weights = path, os.path.join(path, "final")
        if not os.path.isdir(weights):
            hint = ""
            if own.get("lora_rank", 0) > 0 and os.path.isfile(os.path.join(path, "latest")):
                with open(os.path.join(path, "latest")) as f:  # train.py's pointer to its newest checkpoint
                    hint = f"; its latest adapters: --checkpoint {os.path.join(path, f.read().strip())}"
            raise UserError(f"{where}: a train.py run with no final/ yet (still training, or stopped early){hint}")
    elif run_config(os.path.dirname(os.path.abspath(path))) is not None:
        run_dir = os.path.dirname(os.path.abspath(path))
    run = run_config(run_dir)
    recorded, record = None, ""
    adapter = os.path.isfile(os.path.join(weights, "adapter_config.json"))
    if adapter:
        record = os.path.join(weights, "adapter_config.json")
        recorded = read_json(record).get("base_model_name_or_path") or None
        if not os.path.isfile(os.path.join(weights, "adapter_model.safetensors")):
            raise UserError(f"{where}: {record} without the adapter weights (adapter_model.safetensors)")
    elif is_model_dir(weights):
        if run is not None:  # a full model: train.py's config.json names what it started from
            record = os.path.join(run_dir, "config.json")
            recorded = os.path.join(run_dir, "base_model") if run["model"] in TINY_MODELS else run["model"]
    elif os.path.isfile(os.path.join(weights, "trainable.safetensors")):
        raise UserError(f"{where}: a full fine-tuning checkpoint, kept for resuming training; "
                        f"evaluate the run's final/")
    else:
        raise UserError(f"{where}: neither a train.py output nor a model directory "
                        f"(no final/, adapter_config.json or config.json)")
    base = None
    if recorded is not None:
        if looks_like_path(recorded) and not os.path.isdir(recorded):
            raise UserError(f"{where}: its base model {recorded} (named in {record}) is not there")
        base = base_model(recorded, f"the base model of {where}")
    return Column(column_name(path, run_dir), base, weights, adapter, path, run_dir)


def base_names(bases: list[Base]) -> list[str]:
    """'base' for one base model; 'base-<label>' for several, so each can be told apart."""
    if len(bases) == 1:
        return ["base"]
    names = [f"base-{b.label}" for b in bases]
    return [n if names.count(n) == 1 else f"{n}-{i}" for i, n in enumerate(names, 1)]


def resolve_columns(args) -> list[Column]:
    """The base columns, then one column per checkpoint, each with its own base model.

    Without --model each distinct base gets a column (rather than none): a checkpoint's figures
    mean something only next to those of the model it started from."""
    checkpoints = [checkpoint_column(p) for p in args.checkpoint]
    if args.model is not None:
        check_model(args.model)
        given = base_model(args.model)
        for c in checkpoints:
            if c.base is None:  # a model directory with no record: --model is its reference
                c.base = given
            elif c.base.key != given.key:
                raise UserError(f"--checkpoint {c.given} was trained on {c.base.describe()}, not on --model "
                                f"{args.model}: leave --model out to evaluate each checkpoint on its own base")
        bases = [given]
    else:
        distinct = {}
        for c in checkpoints:  # the first checkpoint on each base says where it loads from
            if c.base is not None:
                distinct.setdefault(c.base.key, c.base)
        bases = list(distinct.values())
    for c in checkpoints:
        if c.base is None and (c.adapter or args.data):
            why = "its adapters" if c.adapter else "the implicit rewards on --data"
            raise UserError(f"--checkpoint {c.given}: records no base model, which {why} need: give --model BASE")
    columns = ([] if args.no_base else [Column(n, b) for n, b in zip(base_names(bases), bases)]) + checkpoints
    if not columns:
        raise UserError("no model to evaluate: give --checkpoint, or --model without --no-base")
    names = [c.name for c in columns]
    if len(set(names)) != len(names):
        raise UserError(f"two columns share a name: {names}; give the checkpoints distinct directory names")
    return columns


# ---- the command line ----------------------------------------------------------------------

class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The docstring as written, and each option's default where it has one to show."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or action.default in ("", []):
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line and exit status 2 (through cli.run), no usage dump
        raise UserError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="eval.py", description=__doc__, formatter_class=_Formatter)
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
                        "group, prior: short answers read against a closed set of options); repeat for more")
    p.add_argument("--out", default="eval", help="output directory: eval.json, eval.md, answers-*.jsonl")
    p.add_argument("--beta", type=float, default=0.1, help="inverse temperature of the implicit reward beta * h")
    p.add_argument("--batch-size", type=int, default=8, help="examples per forward pass and per generation batch")
    p.add_argument("--max-length", type=int, default=1024,
                   help="prompt + image + response tokens when scoring --data; responses are cut to fit, an example "
                        "whose prompt and image alone reach it is an error")
    p.add_argument("--seed", type=int, default=0, help="seed of the corrupted images m' (crop, noise)")
    p.add_argument("--max-new-tokens", type=int, default=1024,
                   help="longest answer, in tokens; generation also stops at end-of-sequence (published CHAIR "
                        "evaluations let descriptions run long: VCD and SymMPO allow 1024)")
    p.add_argument("--num-beams", type=int, default=1,
                   help="beam search width of the benchmarks' answers (1: greedy); never sampled. SymMPO's Object "
                        "HalBench evaluation used 3 beams without sampling and 1024 new tokens")
    p.add_argument("--pope-parse", choices=POPE_PARSERS, default="standard",
                   help="standard: POPE's own rule (first sentence; no if it has No/no/not, else yes); "
                        "strict: only a leading yes/no, anything else unparsed and wrong")
    p.add_argument("--no-base", action="store_true", help="leave the base models' columns out")
    p.add_argument("--plot", action="store_true", help="training curves and a bar chart as PNGs (needs matplotlib)")
    p.add_argument("--trust-remote-code", action="store_true", help="let transformers run a model repository's code")
    return p


# (check, what the value must be) for every option with a range
LIMITS = {
    "batch_size": (lambda v: v >= 1, "at least 1"),
    "max_length": (lambda v: v >= 2, "at least 2"),
    "max_new_tokens": (lambda v: v >= 1, "at least 1"),
    "num_beams": (lambda v: v >= 1, "at least 1 (1: greedy)"),
    "beta": (lambda v: 0 < v < math.inf, "a positive number"),
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
    """The command line, checked: option ranges, benchmark kinds, the output folder, and each
    column's model (``args.columns``). Light: no model is loaded, no data read."""
    args = build_parser().parse_args(argv)
    for name, (ok, what) in LIMITS.items():
        if not ok(getattr(args, name)):
            raise UserError(f"--{name.replace('_', '-')} {getattr(args, name)}: must be {what}")
    for kind, _ in args.bench:
        if kind not in BENCH_FIELDS:
            raise UserError(f"--bench {kind}: unknown benchmark, choose {', '.join(list(BENCH_FIELDS)[:-1])} "
                            f"or {list(BENCH_FIELDS)[-1]}")
    if not args.data and not args.bench:
        raise UserError("nothing to evaluate: give --data and/or --bench")
    args.bench_names = bench_names(args.bench)
    check_out(args.out)
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        raise UserError("--plot needs matplotlib, which is not installed: pip install matplotlib")
    args.columns = resolve_columns(args)
    return args


if __name__ == "__main__":  # --help and every mistake above answer at once, before torch is imported
    if cli.run(parse_args, sys.argv[1:], light=True):
        sys.exit(2)

import torch
from safetensors import safe_open
from tqdm import tqdm

from mmpo import lora, metrics
from mmpo.data import PreferenceDataset, collate, pad_id
from mmpo.rows import DataError, load_image, read_rows
from mmpo.generate import generate
from mmpo.logps import sequence_logps
from mmpo.models import load_model

EXTRA_NEGATIVES = {"lang_biased": "lang_biased", "vision_biased": "vision_biased", "contrast_on_image": "contrast_chosen"}


# ---- models ------------------------------------------------------------------------------

def first_line(e: Exception, limit: int = 200) -> str:
    """What went wrong, short enough for one line of an error message."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


def load(source: str, what: str, trust_remote_code: bool):
    """load_model, every failure (missing files, no network, a model of another kind) one line."""
    try:
        return load_model(source, trust_remote_code=trust_remote_code)
    except Exception as e:
        raise UserError(f"{what}: cannot load {source} ({first_line(e)})") from None


def load_column(col: Column, trust_remote_code: bool):
    """(model, processor) of a column, in eval mode: a base model, a full model, or a base model
    with a checkpoint's adapters (and the base's processor)."""
    what = f"--checkpoint {col.given}" if col.weights else col.base.origin
    if col.weights is not None and not col.adapter:
        model, processor = load(col.weights, what, trust_remote_code)
    else:
        model, processor = load(col.base.source, what, trust_remote_code)
        if col.adapter:
            try:
                lora.load_adapter(model, col.weights, dropout=0.0)
            except (OSError, ValueError, RuntimeError, KeyError) as e:
                raise UserError(f"{what}: its adapters do not fit {col.base.describe()} ({first_line(e)})") from None
            check_adapter_loaded(model, col, what)
    return model.eval(), processor


def check_adapter_loaded(model, col: Column, what: str):
    """Every adapter weight found its layer: load_adapter skips the ones that have none, and a
    base whose layers are named otherwise would be evaluated as itself under the checkpoint's name."""
    with safe_open(os.path.join(col.weights, "adapter_model.safetensors"), "pt") as f:
        names = [k.removeprefix("base_model.model.") for k in f.keys()]
    have = model.state_dict()
    unused = [n for n in names if n not in have]
    if not names:
        raise UserError(f"{what}: its adapter_model.safetensors holds no weights")
    if unused:
        raise UserError(f"{what}: {len(unused)} of its {len(names)} adapter weights have no place in "
                        f"{col.base.describe()} (e.g. {unused[0]})")


def response_cut(ex, dataset: PreferenceDataset) -> bool:
    """Whether --max-length cut one of this example's responses (its log-probs then score a
    prefix): a response that fills the room left after the prompt without ending in the
    end-of-sequence token the dataset appends."""
    room = dataset.max_length - max(len(p) for p in ex.prompt_ids)
    eos = dataset.processor.tokenizer.eos_token_id
    return any(len(r) == room and (eos is None or int(r[-1]) != eos) for r in ex.responses.values())


@torch.no_grad()
def score(model, dataset: PreferenceDataset, batch_size: int) -> tuple[dict[str, torch.Tensor], int]:
    """Summed log-probs of every view of every example, {view: (n,)} in data order, and the
    number of examples with a response cut at --max-length."""
    pad = pad_id(dataset.processor.tokenizer)
    out, cut = {v: [] for v in dataset.views}, 0
    for i in tqdm(range(0, len(dataset), batch_size), desc="score", leave=False):
        examples = [dataset[j] for j in range(i, min(i + batch_size, len(dataset)))]
        batch = collate(examples, dataset.views, pad)
        if batch.skipped:  # leaving it out would score the columns on different examples
            raise UserError(f"{batch.skipped[0]}: too long to score; raise --max-length")
        cut += sum(response_cut(ex, dataset) for ex in examples)
        for v, lp in batch.split(sequence_logps(model, batch)[0].float().cpu()).items():
            out[v].append(lp)
    return {v: torch.cat(x) for v, x in out.items()}, cut


def reliance(model, data: str, processor, args) -> dict:
    """The chosen answer on m against m' (crop, noise, blank), and with a blank m' chosen over
    rejected with and without the image."""
    out = {}
    for kind in ("crop", "noise", "blank"):
        views = ("chosen", "rejected", "chosen_on_corrupt", "rejected_on_corrupt") if kind == "blank" else \
            ("chosen", "chosen_on_corrupt")
        ds = PreferenceDataset(data, processor, views, m_prime=kind, seed=args.seed, max_length=args.max_length,
                               prefer_field=False)
        out.update(metrics.reliance_metrics(kind, score(model, ds, args.batch_size)[0]))
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


def read_bench(kind: str, path: str) -> list[dict]:
    """Benchmark rows, every problem reported as file:line: field 'x': what is wrong."""
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


def bench_metrics(model, processor, kind: str, rows: list[dict], args, column: str, bench: str | None = None) -> dict:
    """Answers to a benchmark (named ``bench``, default its kind), saved by example id with what
    was read from each, and its metrics with the mean answer length (CHAIR grows with it, so
    compare columns of similar length) and how many answers hit --max-new-tokens; a QA bench's
    figures per group come last."""
    bench = bench or kind
    groups = {}  # a QA bench's figures per group
    images = [load_image(r["image"]) for r in rows]
    answers, cut = generate(model, processor, [r["prompt"] for r in rows], images, max_new_tokens=args.max_new_tokens,
                            num_beams=args.num_beams, batch_size=args.batch_size, show=True)
    if kind == "chair":
        truths = [metrics.true_objects(r) for r in rows]
        m = metrics.chair(answers, truths)
        details = [metrics.chair_answer(a, t) for a, t in zip(answers, truths)]
        details = [{"objects": d["objects"], "hallucinated": d["hallucinated"]} for d in details]
    elif kind == "pope":
        m = metrics.pope(answers, [r["answer"] for r in rows], parse=args.pope_parse)
        details = [{"parsed": metrics.parse_yes_no(a, args.pope_parse)} for a in answers]
    else:
        reads = [metrics.read_option(a, metrics.qa_choices(r)) for r, a in zip(rows, answers)]
        m = metrics.qa_metrics(rows, reads)
        details = [{"read": x, "correct": x == r["answer"]} for r, x in zip(rows, reads)]
        for g in sorted({r["group"] for r in rows if r.get("group") is not None}):  # after the whole bench's
            inside = [i for i, r in enumerate(rows) if r.get("group") == g]
            figures = metrics.qa_metrics([rows[i] for i in inside], [reads[i] for i in inside])
            groups.update({f"{g}/{k}": v for k, v in figures.items()})
    with open(os.path.join(args.out, f"answers-{column}-{bench}.jsonl"), "w", encoding="utf-8") as f:
        for r, a, t, d in zip(rows, answers, cut, details):
            f.write(json.dumps({"id": r["id"], "answer": a, "truncated": t, **d}, ensure_ascii=False) + "\n")
    tokens = processor.tokenizer(answers, add_special_tokens=False)["input_ids"] if answers else []
    if "answers" in m:
        m = {"examples": m.pop("answers"), **m}
    m["truncated"] = sum(cut)
    m["mean_answer_words"] = sum(len(a.split()) for a in answers) / max(1, len(answers))
    m["mean_answer_tokens"] = sum(len(t) for t in tokens) / max(1, len(answers))
    m.update(groups)
    return {f"{bench}/{k}": v for k, v in m.items()}


# ---- report ------------------------------------------------------------------------------

HIGHER = {"logp_acc", "reward_acc", "reward_margin", "cond_acc", "logp_gap", "sighted_acc", "sighted_minus_blind",
          "coverage", "accuracy", "precision", "recall", "f1"}
LOWER = {"chair_s", "chair_i", "unparsed", "unread", "prior_rate"}


def direction(key: str) -> str:
    """↑ where higher is better, ↓ where lower is, '' where neither: counts, answer lengths, the
    yes-ratio (a balanced POPE split has 0.5) and the blind accuracy (read it against the sighted one)."""
    last = key.rsplit("/", 1)[-1]
    return "↑" if last in HIGHER else "↓" if last in LOWER else ""


def markdown(columns: list[str], table: dict, bases: list[str]) -> str:
    """The table: a row per metric with its direction, the ``*/examples`` row heading each group
    with its count, and which base model each column is (its implicit rewards' reference)."""
    keys = list(dict.fromkeys(k for c in columns for k in table[c]))
    lines = ["| metric | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns),
             "| base model | " + " | ".join(bases) + " |"]
    for k in keys:
        cells = [table[c].get(k) for c in columns]
        name = f"{k} {direction(k)}".strip()
        lines.append(f"| {name} | " + " | ".join("" if v is None else f"{v:.4g}" for v in cells) + " |")
    lines += ["", "↑ higher is better, ↓ lower is better, no arrow: neither. `*/examples`: the examples behind "
                  "the figures below it. Implicit rewards (`reward_acc`, `reward_margin`) are against each "
                  "column's base model."]
    return "\n".join(lines) + "\n"


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
    for col in columns:
        if col.run is None:  # a base model, or a model directory from elsewhere: no training to draw
            continue
        curves = training_curves(col.run)
        line, = axes[0].plot(*curves["loss"], label=col.name)
        if curves["eval/loss"][0]:
            axes[0].plot(*curves["eval/loss"], "o--", color=line.get_color(), label=f"{col.name} (held-out)")
        axes[1].plot(*curves["rewards/accuracies"], label=col.name)
    for ax, title in zip(axes, ("loss ↓", "reward accuracy ↑")):
        ax.set_xlabel("step"), ax.set_title(title), ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "curves.png"))
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
    fig.savefig(os.path.join(out, "metrics.png"))
    return f"plots: {os.path.join(out, 'curves.png')}, {os.path.join(out, 'metrics.png')}"


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

def reference_logps(base: Base, args, views: list[str]) -> dict[str, torch.Tensor]:
    """A base model's log-probs on --data, the reference of its checkpoints' implicit rewards
    (scored on its own only when it has no column, under --no-base)."""
    model, processor = load_column(Column("base", base), args.trust_remote_code)
    dataset = PreferenceDataset(args.data, processor, views, max_length=args.max_length)
    return score(model, dataset, args.batch_size)[0]


def data_metrics(model, processor, col: Column, args, negatives: list[str], refs: dict) -> dict:
    """A column's figures on --data, with the number of examples behind them and of those with a
    response cut at --max-length. ``refs`` holds each base's log-probs (base key -> {view: (n,)});
    a base column adds its own."""
    ds = PreferenceDataset(args.data, processor, ["chosen", *negatives], max_length=args.max_length)
    logps, cut = score(model, ds, args.batch_size)
    if col.weights is None:
        refs[col.base.key] = logps
    return {"data/examples": len(ds), "data/truncated": cut,
            **metrics.preference_metrics(logps, refs[col.base.key], negatives, args.beta),
            **reliance(model, args.data, processor, args)}


def main(args) -> dict:
    """Every column's metrics (``args`` from parse_args); writes eval.json, eval.md, the answers."""
    columns = args.columns
    benches = [(kind, name, read_bench(kind, path)) for (kind, path), name in zip(args.bench, args.bench_names)]
    negatives = data_negatives(args.data) if args.data else []
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
    md = markdown(names, table, [c.base.label if c.base else "none" for c in columns])
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
