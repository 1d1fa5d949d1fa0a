"""The toy's results: each world's figures, computed again from eval.py's saved answers and
per-example log-probs, with 95% intervals (``mmpo/toy/stats.py``), as tables and a plot.

A figure is a ratio of sums over examples (``COLUMNS``): per test example and held-out pair,
``test_quantities`` and ``data_quantities`` give what it counts, by eval.py's own rules, so the
bootstrap recomputes each figure exactly as eval.py computes it on the whole set.
"""
import json
import math
import os
from dataclasses import asdict

import torch

from mmpo.common.util import markdown_table
from mmpo.toy import claims, stats

# what each world's table shows: (key, header, the figure from sums over examples: S[source][quantity])
HELD_OUT = [
    ("heldout_pref_acc", "held-out pref acc ↑", lambda S: S["data"]["pref"] / S["data"]["n"]),
    ("heldout_reward_acc", "held-out reward acc ↑", lambda S: S["data"]["reward"] / S["data"]["n"]),
    ("cond_acc_noise", "cond acc (noise) ↑", lambda S: S["data"]["cond_noise"] / S["data"]["n"]),
    ("sighted_minus_blind", "sighted − blind ↑", lambda S: (S["data"]["sighted"] - S["data"]["blind"]) / S["data"]["n"]),
    ("train_reward_acc", "train reward acc", lambda S: S["train"]["reward_acc"] / S["train"]["n"]),
    ("train_chosen_logp", "train log p(chosen)", lambda S: S["train"]["chosen_logp"] / S["train"]["n"]),
]
COLUMNS = {
    "colour": [
        ("acc_counter", "counter-prior acc ↑", lambda S: S["test"]["correct_counter"] / S["test"]["counter"]),
        ("acc_prior", "prior-consistent acc ↑", lambda S: S["test"]["correct_typical"] / S["test"]["typical"]),
        ("says_prior", "says the prior ↓", lambda S: S["test"]["prior_counter"] / S["test"]["counter"]),
        ("unread", "names no colour ↓", lambda S: S["test"]["unread"] / S["test"]["n"]),
    ] + HELD_OUT,
    "captions": [
        ("chair_s", "CHAIR_s ↓", lambda S: S["test"]["any_hallucinated"] / S["test"]["n"]),
        ("chair_i", "CHAIR_i ↓", lambda S: S["test"]["hallucinated"] / S["test"]["mentions"].clamp_min(1)),  # as eval.py
        ("coverage", "coverage ↑", lambda S: S["test"]["covered"] / S["test"]["truth"].clamp_min(1)),
        ("companion", "names an absent companion ↓", lambda S: S["test"]["companion"] / S["test"]["counter"]),
        ("words", "words per caption", lambda S: S["test"]["words"] / S["test"]["n"]),
    ] + HELD_OUT,
}
HEADLINE = {"colour": ("acc_counter", "says_prior", "unread", "heldout_pref_acc"),
            "captions": ("chair_s", "chair_i", "coverage", "companion")}
NO_BASE = ("heldout_reward_acc", "train_reward_acc", "train_chosen_logp")  # a base is its own reference, untrained
# the differences' columns: the headline figures, and the held-out reward accuracy (between methods: a base has none)
DIFFERENCES = {w: (*keys, "heldout_reward_acc") for w, keys in HEADLINE.items()}


def training_figures(run: str) -> dict:
    """Over the last quarter of the steps, on the training pairs (with the shortcut): the reward
    accuracy, and the summed log-prob of the chosen answers (far below the base's, the model no
    longer gives the answers it is taught to prefer)."""
    with open(os.path.join(run, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    tail = rows[-max(1, len(rows) // 4):]
    return {"n": [1.0], "reward_acc": [sum(r["rewards/accuracies"] for r in tail) / len(tail)],
            "chosen_logp": [sum(r["logps/chosen"] for r in tail) / len(tail)]}


def read_jsonl(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_quantities(world: str, rows: list[dict], answers: list[dict]) -> dict[str, list[float]]:
    """Per test example, what the world's figures count (eval.py's own rules: its saved reading of
    each QA answer; CHAIR's judgement of each caption, by mmpo.common.chair)."""
    if world == "colour":
        counter = [r["group"] == "counter-prior" for r in rows]
        return {"n": [1.0] * len(rows), "counter": counter, "typical": [not c for c in counter],
                "correct_counter": [c and a["correct"] for c, a in zip(counter, answers)],
                "correct_typical": [not c and a["correct"] for c, a in zip(counter, answers)],
                "prior_counter": [c and a["read"] == r["prior"] for c, r, a in zip(counter, rows, answers)],
                "unread": [a["read"] is None for a in answers]}
    from mmpo.common import chair
    from mmpo.toy.captions import LEADS, PARTNER
    q = {k: [] for k in ("n", "any_hallucinated", "hallucinated", "mentions", "covered", "truth", "counter",
                         "companion", "words")}
    for r, a in zip(rows, answers):
        j = chair.chair_answer(a["answer"], chair.true_objects(r))
        absent = {PARTNER[o] for o in j["truth"] if o in LEADS} - set(j["truth"])  # the usual companions not there
        for k, v in (("n", 1), ("any_hallucinated", bool(j["hallucinated"])), ("hallucinated", len(j["hallucinated"])),
                     ("mentions", len(j["objects"])), ("covered", len(set(j["truth"]) & set(j["objects"]))),
                     ("truth", len(j["truth"])), ("counter", bool(absent)),
                     ("companion", bool(absent & set(j["objects"]))), ("words", len(a["answer"].split()))):
            q[k].append(float(v))
    return q


def data_quantities(lp: list[dict], ref: list[dict]) -> dict[str, list[float]]:
    """Per held-out pair, from eval.py's per-example log-probs (``ref``: the seed's base)."""
    return {"n": [1.0] * len(lp), "pref": [r["chosen"] > r["rejected"] for r in lp],
            "reward": [(r["chosen"] - b["chosen"]) - (r["rejected"] - b["rejected"]) > 0 for r, b in zip(lp, ref)],
            "cond_noise": [r["noise/chosen"] > r["noise/chosen_on_corrupt"] for r in lp],
            "sighted": [r["blank/chosen"] > r["blank/rejected"] for r in lp],
            "blind": [r["blank/chosen_on_corrupt"] > r["blank/rejected_on_corrupt"] for r in lp]}


def in_couples(q: dict[str, list], couples: list[int]) -> dict[str, list[float]]:
    """Each held-out quantity summed over its couple (world.py): the bootstrap draws couples, the
    unit in which the text carries no preference."""
    out = {}
    for k, v in q.items():
        out[k] = [0.0] * (max(couples) + 1)
        for c, x in zip(couples, v):
            out[k][c] += float(x)
    return out


def finite_or_null(x):
    """NaN and infinities as null, so that results.json is strict JSON and says what is missing."""
    if isinstance(x, dict):
        return {k: finite_or_null(v) for k, v in x.items()}
    if isinstance(x, list):
        return [finite_or_null(v) for v in x]
    return None if isinstance(x, float) and not math.isfinite(x) else x


def collect(s, out: str, paths: dict[str, dict], labels: dict[str, str], lr: dict[str, float],
            benches: dict[str, str]) -> dict:
    """Each world's figures with their 95% intervals (mmpo/toy/stats.py), and each method's
    difference from the base and from DPO on the headline figures. ``s``: the run's Settings;
    ``labels`` and ``lr``: each method's name in the tables and learning rate; ``benches``: each
    world's eval.py benchmark."""
    methods = s.methods.split(",")
    results = {"settings": asdict(s), "lr": {m: lr[m] for m in methods},
               "labels": {m: labels[m] for m in methods}, "worlds": {}}
    for w in s.worlds.split(","):
        test_rows = read_jsonl(paths[w]["test"])
        couple = {r["id"]: r["couple"] for r in read_jsonl(paths[w]["heldout"])}
        values = {}  # column -> source -> quantity -> (seeds, examples)
        for k in range(s.seeds):
            ev = os.path.join(out, "eval", f"{w}-{k}")
            report = json.load(open(os.path.join(ev, "eval.json")))
            present = [m for m in methods if f"{m}-{w}-{k}" in report["columns"]]
            cols = {"base": next(c for c in report["columns"] if c not in {f"{m}-{w}-{k}" for m in methods}),
                    **{m: f"{m}-{w}-{k}" for m in present}}
            ref = read_jsonl(os.path.join(ev, f"logps-{cols['base']}.jsonl"))
            for name, col in cols.items():
                answers = read_jsonl(os.path.join(ev, f"answers-{col}-{benches[w]}.jsonl"))
                seed = {"test": test_quantities(w, test_rows, answers),
                        "data": in_couples(data_quantities(lp := read_jsonl(os.path.join(ev, f"logps-{col}.jsonl")),
                                                           ref), [couple[r["id"]] for r in lp])}
                if name != "base":
                    seed["train"] = training_figures(os.path.join(out, "runs", col))
                for source, qs in seed.items():
                    for q, v in qs.items():
                        values.setdefault(name, {}).setdefault(source, {}).setdefault(q, []).append(v)
        values = {c: {src: {q: torch.tensor([[float(x) for x in seed] for seed in v], dtype=torch.float64)
                            for q, v in qs.items()} for src, qs in srcs.items()} for c, srcs in values.items()}
        weights = stats.replicates(s.seeds, {"test": len(test_rows), "data": len(set(couple.values())), "train": 1})
        table, reps, seeds = {}, {}, {}
        for name, srcs in values.items():
            table[name], seeds[name] = {}, {}
            for key, _, fn in COLUMNS[w]:
                if name == "base" and key in NO_BASE:
                    continue
                point, reps[name, key] = stats.figure_and_interval(fn, srcs, {k: weights[k] for k in srcs})
                table[name][key] = [point, *stats.interval(reps[name, key])]
                seeds[name][key] = stats.by_seed(fn, srcs)
        diffs = {}
        for name in [m for m in methods if m in values]:
            for other in ("base", "dpo"):
                if other in values and other != name:
                    diffs[f"{name} - {other}"] = {key: [table[name][key][0] - table[other][key][0],
                                                        *stats.interval(reps[name, key] - reps[other, key])]
                                                  for key in DIFFERENCES[w] if key in table[other]}
        results["worlds"][w] = {"figures": table, "differences": diffs, "by_seed": seeds,
                                "labels": {"base": "base (SFT)", **results["labels"]}}
    return results


def fmt(x: list[float]) -> str:
    point, lo, hi = x
    return "–" if not math.isfinite(point) else f"{point:.3f} [{lo:.3f}, {hi:.3f}]"


def markdown(results: dict) -> str:
    """Per world: the figures with their 95% intervals, then the differences on the headline
    figures, marked * where the interval excludes 0 (outside the noise); last, the claims
    (mmpo/toy/claims.py) with the figures they read and whether they held."""
    s = results["settings"]
    parts = []
    for w, r in results["worlds"].items():
        headers = {key: h for key, h, _ in COLUMNS[w]}
        rows = [[r["labels"][name]] + [fmt(figs[k]) if k in figs else "–" for k in headers]
                for name, figs in r["figures"].items()]
        parts.append(f"### The {w} world\n\n" + markdown_table(["method"] + list(headers.values()), rows))
        drows = [[pair.replace(" - ", " − ")] + [fmt(d[k]) + (" *" if d[k][1] > 0 or d[k][2] < 0 else "") if k in d
                                                 else "–" for k in DIFFERENCES[w]] for pair, d in r["differences"].items()]
        parts.append(markdown_table(["difference"] + [headers[k] for k in DIFFERENCES[w]], drows))
        if s["seeds"] > 1:  # one collapsed run shows as what it is
            srows = [[r["labels"][name]] + [" · ".join(f"{x:.3f}" for x in seeds[k]) if k in seeds else "–"
                                            for k in DIFFERENCES[w]] for name, seeds in r["by_seed"].items()]
            parts.append(f"Each seed's figure (seeds 0 to {s['seeds'] - 1}):\n\n"
                         + markdown_table(["method"] + [headers[k] for k in DIFFERENCES[w]], srows))
    return ("\n".join(parts) + f"\nFigures [95% interval]: a bootstrap over {s['seeds']} seed(s) (each its own SFT base and "
            f"preference runs) and, within each seed, the test examples and held-out couples: the interval covers which "
            f"base and runs came out and which examples were drawn, not another world (--world-seed "
            f"{s.get('world_seed', 0)}). * marks a difference whose interval excludes 0. "
            f"{s['steps']} steps of batch {s['batch']}; learning rates: "
            + ", ".join(f"{results['labels'][m]} {v:g}" for m, v in results["lr"].items()) + ".\n\n"
            + claims.markdown(results))


def plot(results: dict, path: str) -> str | None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    panels = [(w, k) for w in results["worlds"] for k in HEADLINE[w]]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 4), squeeze=False)
    for ax, (w, key) in zip(axes[0], panels):
        r = results["worlds"][w]
        names = list(r["figures"])
        point = [r["figures"][n][key][0] for n in names]
        err = [[p - r["figures"][n][key][1] for p, n in zip(point, names)],
               [r["figures"][n][key][2] - p for p, n in zip(point, names)]]
        ax.bar(range(len(names)), point, yerr=err, capsize=3)
        ax.set_xticks(range(len(names)), [r["labels"][n] for n in names], rotation=60, ha="right", fontsize=7)
        ax.set_ylim(0, 1)
        ax.set_title(f"{w}: {next(h for k, h, _ in COLUMNS[w] if k == key)}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


