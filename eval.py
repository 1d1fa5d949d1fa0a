"""Does the model look at the image? Preference, image-reliance and hallucination metrics for a
base model and any number of trained checkpoints, side by side.

    python eval.py --model BASE --checkpoint runs/mdpo runs/dpo --data heldout.jsonl \\
        --bench chair chair.jsonl --bench pope pope.jsonl --out eval/

Columns: the base model, then each checkpoint (a train.py output directory: LoRA adapters or a
full model). Writes OUT/eval.json (every number), OUT/eval.md (a table, also printed), and the
generated answers of each benchmark as OUT/answers-<column>-<bench>.jsonl. A kind given more
than once (POPE's three splits) is named by its file: --bench pope adversarial.jsonl -> pope-adversarial.
"""
import argparse
import json
import os
import sys

import torch
from tqdm import tqdm

from mmpo import cli, hallucination, lora
from mmpo.cli import UserError
from mmpo.data import DataError, PreferenceDataset, collate, load_image, pad_id, read_rows
from mmpo.generate import answer
from mmpo.logps import sequence_logps
from mmpo.models import load_model

EXTRA_NEGATIVES = {"lang_biased": "lang_biased", "vision_biased": "vision_biased", "contrast_on_image": "contrast_chosen"}
BENCH_FIELDS = {"chair": ("image", "prompt", "objects"), "pope": ("image", "question", "answer")}


# ---- models ------------------------------------------------------------------------------

def load_column(path: str | None, base: str | None, trust_remote_code: bool):
    """(model, processor) of a column: the base model, or a train.py output (its final/)."""
    if path is None:
        return load_model(base, trust_remote_code=trust_remote_code)
    final = os.path.join(path, "final") if os.path.isdir(os.path.join(path, "final")) else path
    if os.path.isfile(os.path.join(final, "adapter_config.json")):
        with open(os.path.join(final, "adapter_config.json")) as f:
            base = base or json.load(f)["base_model_name_or_path"]
        model, processor = load_model(base, trust_remote_code=trust_remote_code)
        return lora.load_adapter(model, final, dropout=0.0), processor
    if os.path.isfile(os.path.join(final, "config.json")):
        return load_model(final, trust_remote_code=trust_remote_code)
    raise UserError(f"--checkpoint {path}: neither a train.py output nor a model directory")


@torch.no_grad()
def score(model, dataset: PreferenceDataset, batch_size: int) -> dict[str, torch.Tensor]:
    """Summed log-probs of every view of every example, {view: (n,)} in data order."""
    pad = pad_id(dataset.processor.tokenizer)
    out = {v: [] for v in dataset.views}
    for i in tqdm(range(0, len(dataset), batch_size), desc="score", leave=False):
        batch = collate([dataset[j] for j in range(i, min(i + batch_size, len(dataset)))], dataset.views, pad)
        if batch.skipped:
            raise UserError(f"over-long examples cannot be scored: {batch.skipped[0]}")
        for v, lp in batch.split(sequence_logps(model, batch)[0].float().cpu()).items():
            out[v].append(lp)
    return {v: torch.cat(x) for v, x in out.items()}


# ---- metrics -----------------------------------------------------------------------------

def preference_metrics(logps: dict, ref: dict, negatives: list[str], beta: float) -> dict:
    """Chosen against each negative: log-prob accuracy, and implicit-reward accuracy and margin
    against the base model (0 for the base model itself)."""
    out = {}
    for v in negatives:
        name = "rejected" if v == "rejected" else v
        out[f"pref/{name}/logp_acc"] = (logps["chosen"] > logps[v]).float().mean().item()
        h = (logps["chosen"] - ref["chosen"]) - (logps[v] - ref[v])
        out[f"pref/{name}/reward_acc"] = (h > 0).float().mean().item()
        out[f"pref/{name}/reward_margin"] = (beta * h).mean().item()
    return out


def reliance_metrics(model, data, processor, args) -> dict:
    """How much the answers depend on the image: the chosen answer on m against m' (crop,
    noise, blank), and chosen-over-rejected with a blank image against the real one."""
    out = {}
    for kind in ("crop", "noise", "blank"):
        views = ("chosen", "rejected", "chosen_on_corrupt", "rejected_on_corrupt") if kind == "blank" else \
            ("chosen", "chosen_on_corrupt")
        ds = PreferenceDataset(data, processor, views, corruption=kind, seed=args.seed, max_length=args.max_length,
                               prefer_field=False)
        lp = score(model, ds, args.batch_size)
        gap = lp["chosen"] - lp["chosen_on_corrupt"]
        out[f"reliance/{kind}/cond_acc"] = (gap > 0).float().mean().item()
        out[f"reliance/{kind}/logp_gap"] = gap.mean().item()
        if kind == "blank":
            sighted = (lp["chosen"] > lp["rejected"]).float().mean().item()
            blind = (lp["chosen_on_corrupt"] > lp["rejected_on_corrupt"]).float().mean().item()
            out["reliance/sighted_acc"], out["reliance/blind_acc"] = sighted, blind
            out["reliance/sighted_minus_blind"] = sighted - blind
    return out


def read_bench(kind: str, path: str) -> list[dict]:
    """Benchmark rows, every problem reported as file:line: field 'x': what is wrong."""
    if kind not in BENCH_FIELDS:
        raise UserError(f"--bench {kind}: unknown benchmark, choose chair or pope")
    rows = read_rows(path, {"image"})  # (read_rows files a "question" under "prompt")
    errors = []
    for r in rows:
        where = f"{path}:{r['line']}"
        if not r.get("prompt"):
            errors.append(f"{where}: field '{'prompt' if kind == 'chair' else 'question'}': missing")
        if kind == "chair":
            objs, captions = r.get("objects"), r.get("captions", [])
            if not isinstance(objs, list) or not all(isinstance(o, str) for o in objs):
                errors.append(f"{where}: field 'objects': must be a list of object names")
                objs = []
            for o in objs:
                try:
                    hallucination.to_category(o)
                except ValueError as e:
                    errors.append(f"{where}: field 'objects': {e}")
            if not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
                errors.append(f"{where}: field 'captions': must be a list of captions")
        elif r.get("answer") not in ("yes", "no"):
            errors.append(f"{where}: field 'answer': must be \"yes\" or \"no\"")
    if errors:
        raise DataError(errors)
    return rows


def true_objects(row: dict) -> list[str]:
    """A CHAIR row's true objects: its ``objects``, plus every object its reference
    ``captions`` mention, as the reference evaluation takes both COCO's instance labels and
    the objects of COCO's five captions per image."""
    return row["objects"] + [c for caption in row.get("captions", []) for c in hallucination.object_mentions(caption)]


def bench_names(benches: list[tuple[str, str]]) -> list[str]:
    """A name per --bench (KIND, FILE): the kind, or kind-<file stem> when a kind comes more than
    once (POPE's random, popular and adversarial splits are scored separately, as published)."""
    kinds = [kind for kind, _ in benches]
    names = [kind if kinds.count(kind) == 1 else f"{kind}-{os.path.splitext(os.path.basename(path))[0]}"
             for kind, path in benches]
    if len(set(names)) != len(names):
        raise UserError(f"two --bench files share a name: {names}; give them distinct file names")
    return names


def bench_metrics(model, processor, kind: str, rows: list[dict], args, column: str, bench: str | None = None) -> dict:
    """Greedy answers to a benchmark (named ``bench``, default its kind), saved with what was
    read from each, and its metrics with the mean answer length (CHAIR grows with it, so
    compare columns of similar length)."""
    bench = bench or kind
    images = [load_image(r["image"]) for r in rows]
    prompts = [r["prompt"] for r in rows]
    answers = answer(model, processor, prompts, images, max_new_tokens=args.max_new_tokens,
                     batch_size=args.batch_size, show=True)
    if kind == "chair":
        truths = [true_objects(r) for r in rows]
        m = hallucination.chair(answers, truths)
        details = [hallucination.chair_answer(a, t) for a, t in zip(answers, truths)]
        details = [{"objects": d["objects"], "hallucinated": d["hallucinated"]} for d in details]
    else:
        m = hallucination.pope(answers, [r["answer"] for r in rows], parse=args.pope_parse)
        details = [{"parsed": hallucination.parse_yes_no(a, args.pope_parse)} for a in answers]
    with open(os.path.join(args.out, f"answers-{column}-{bench}.jsonl"), "w") as f:
        for r, a, d in zip(rows, answers, details):
            f.write(json.dumps({"id": r["id"], "answer": a, **d}) + "\n")
    tokens = processor.tokenizer(answers, add_special_tokens=False)["input_ids"] if answers else []
    m["mean_answer_words"] = sum(len(a.split()) for a in answers) / max(1, len(answers))
    m["mean_answer_tokens"] = sum(len(t) for t in tokens) / max(1, len(answers))
    return {f"{bench}/{k}": v for k, v in m.items()}


# ---- report ------------------------------------------------------------------------------

def markdown(columns: list[str], table: dict) -> str:
    keys = list(dict.fromkeys(k for c in columns for k in table[c]))
    lines = ["| metric | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for k in keys:
        cells = [table[c].get(k) for c in columns]
        lines.append(f"| {k} | " + " | ".join("" if v is None else f"{v:.4g}" for v in cells) + " |")
    return "\n".join(lines) + "\n"


def plot(columns: list[str], paths: list[str | None], table: dict, out: str) -> str:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "--plot needs matplotlib, which is not installed: pip install matplotlib"
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, path in zip(columns, paths):
        log = os.path.join(path, "metrics.jsonl") if path else ""
        if os.path.isfile(log):
            with open(log) as f:
                rows = [json.loads(line) for line in f]
            axes[0].plot([r["step"] for r in rows], [r["loss"] for r in rows], label=name)
            axes[1].plot([r["step"] for r in rows], [r["rewards/accuracies"] for r in rows], label=name)
    for ax, title in zip(axes, ("loss", "reward accuracy")):
        ax.set_xlabel("step"), ax.set_title(title), ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "curves.png"))
    keys = [k for k in table[columns[0]] if k.endswith(("acc", "chair_s", "chair_i", "f1", "accuracy"))]
    fig, ax = plt.subplots(figsize=(max(6, len(keys) * 0.8), 4))
    width = 0.8 / len(columns)
    for i, c in enumerate(columns):
        ax.bar([k + i * width for k in range(len(keys))], [table[c].get(k, 0) for k in keys], width, label=c)
    ax.set_xticks([k + 0.4 - width / 2 for k in range(len(keys))], keys, rotation=60, ha="right", fontsize=7)
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "metrics.png"))
    return f"plots: {os.path.join(out, 'curves.png')}, {os.path.join(out, 'metrics.png')}"


def build_parser():
    p = argparse.ArgumentParser(prog="eval.py", description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="the base model (default: the adapters' base)")
    p.add_argument("--checkpoint", nargs="*", default=[], help="train.py output directories, one column each")
    p.add_argument("--data", default="", help="held-out preference JSONL (preference and image-reliance metrics)")
    p.add_argument("--bench", nargs=2, action="append", default=[], metavar=("KIND", "FILE"),
                   help="a generation benchmark: chair FILE (rows image, prompt, objects, optional captions) "
                        "or pope FILE (image, question, answer)")
    p.add_argument("--out", default="eval", help="output directory")
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=1024,
                   help="longest answer, in tokens; generation also stops at end-of-sequence (published CHAIR "
                        "evaluations let descriptions run long: VCD and SymMPO allow 1024)")
    p.add_argument("--pope-parse", choices=hallucination.POPE_PARSERS, default="standard",
                   help="standard: POPE's own rule (first sentence; no if it has No/no/not, else yes); "
                        "strict: only a leading yes/no, anything else unparsed and wrong")
    p.add_argument("--max-length", type=int, default=1024)
    p.add_argument("--seed", type=int, default=0, help="seed of the corrupted images m'")
    p.add_argument("--no-base", action="store_true", help="leave the base model's column out")
    p.add_argument("--plot", action="store_true", help="training curves and a bar chart as PNGs (needs matplotlib)")
    p.add_argument("--trust-remote-code", action="store_true")
    return p


def main(args) -> dict:
    if not args.data and not args.bench:
        raise UserError("nothing to evaluate: give --data and/or --bench")
    base = args.model
    if base is None:
        for c in args.checkpoint:
            cfg = os.path.join(c, "final", "adapter_config.json")
            if os.path.isfile(cfg):
                with open(cfg) as f:
                    base = json.load(f)["base_model_name_or_path"]
                break
    columns = ([] if args.no_base or base is None else [("base", None)]) + \
        [(os.path.basename(os.path.normpath(c)), c) for c in args.checkpoint]
    if not columns:
        raise UserError("no model to evaluate: give --model or --checkpoint")
    names = [n for n, _ in columns]
    if len(set(names)) != len(names):
        raise UserError(f"two columns share a name: {names}; give the checkpoints distinct directory names")
    benches = [(kind, bench, read_bench(kind, path))
               for (kind, path), bench in zip(args.bench, bench_names(args.bench))]
    negatives = ["rejected"]
    if args.data:
        rows = read_rows(args.data, {"image", "prompt", "chosen", "rejected"})
        negatives += [v for v, f in EXTRA_NEGATIVES.items() if all(r.get(f) for r in rows)]
    os.makedirs(args.out, exist_ok=True)
    table, ref = {}, None
    for name, path in columns:
        print(f"== {name}")
        model, processor = load_column(path, base, args.trust_remote_code)
        model.eval()
        m = {}
        if args.data:
            ds = PreferenceDataset(args.data, processor, ["chosen", *negatives], max_length=args.max_length)
            logps = score(model, ds, args.batch_size)
            if ref is None:  # the base model's log-probs are the reference of the implicit rewards
                ref = logps if path is None else score(load_column(None, base, args.trust_remote_code)[0].eval(), ds,
                                                        args.batch_size)
            m.update(preference_metrics(logps, ref, negatives, args.beta))
            m.update(reliance_metrics(model, args.data, processor, args))
        for kind, bench, bench_rows in benches:
            m.update(bench_metrics(model, processor, kind, bench_rows, args, name, bench))
        table[name] = m
    with open(os.path.join(args.out, "eval.json"), "w") as f:
        json.dump({"columns": names, "metrics": table}, f, indent=1)
    md = markdown(names, table)
    with open(os.path.join(args.out, "eval.md"), "w") as f:
        f.write(md)
    print(md)
    if args.plot:
        print(plot(names, [p for _, p in columns], table, args.out))
    print(f"wrote {os.path.join(args.out, 'eval.json')} and {os.path.join(args.out, 'eval.md')}")
    return table


def run(argv=None) -> int:
    return cli.run(lambda: main(build_parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(run())
