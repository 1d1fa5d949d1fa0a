"""Where every millisecond of a training step goes: ``python -m mmpo.bench``.

    python -m mmpo.bench                       # every objective, tiny and LLaVA-1.5 shapes (~10 min, 2-core CPU)
    python -m mmpo.bench --shapes body --objectives dpo,symmpo --variants "ref cache" --compare-trl --steps 2
                                               # where the model's body dominates (~15 min)
    python -m mmpo.bench --shapes body --objectives dpo --variants "activation checkpointing" --compare-trl --steps 2
                                               # ... both sides with activation checkpointing (~10 min)
    python -m mmpo.bench --smoke               # the smallest run (what tests/test_bench.py runs)
    python -m mmpo.bench --model llava-hf/llava-1.5-7b-hf --objectives dpo,symmpo   # a real VLM, on a GPU
    python -m mmpo.bench --lora --bf16 --out runs/bench-lora

The *step* is train.py's own ``train_step`` (the checkout's train.py, imported as a module), on one
micro-batch: the shared vision pass, the policy's log-probs, the reference's, the objective's loss
function, backward, clipping, AdamW; each variant changes only its inputs. The *floor* is one bare
forward + backward of the policy over exactly the token positions that step needs: one vision pass
per image, then the model called on the very inputs ``sequence_logps`` builds (packed sequences, or
full ones without prefix sharing), the log-probs of the response tokens computed as the step
computes them (chunk by chunk, or all at once where chunking is off) and summed: no objective, no
reference, no optimizer; under activation checkpointing, with it. step / floor is what mmpo adds;
with a reference cache only the objective and the optimizer are left. Each optimisation is then
switched off alone (the cache, bf16 and activation checkpointing: on), a row each, against its own floor.
Both are built in mmpo/bench/timed.py; the measuring is mmpo/bench/measure.py's, the tables report.py's.

Every step and floor is called once first: its warm-up, during which its peak memory is taken;
then all take turns --steps times on one fixed batch (a slow spell of a shared machine falls on
all alike), and the median is reported. Peak memory is what a call adds to what lives before it
(weights, AdamW's moments, a frozen reference): CUDA's ``max_memory_allocated``; on Linux CPUs
the peak RSS (VmHWM), reset through ``/proc/self/clear_refs`` once freed memory is handed back
(``malloc_trim``); elsewhere, none. Beside it: the process's peak (what lived before included),
and where the memory goes: the weights, the frozen copy, AdamW's moments and the gradients (their
sizes), the activations the step's graph keeps for the backward (``SavedForBackward``: the bytes
saved for backward, weights left out) and the logits at their largest (computed: one chunk's).
One more call each, after the clock, counts its work (``Flops``: its matrix products' and
attentions' FLOPs), so a time splits into work and the rate it ran at (TRL's: its warm-up step).
Each (shape, objective) runs in a process of its own.
Timings on shared CPUs vary by +-20% between runs: compare the ratios within one run.


The shapes, each column, the recorded runs (the default one and the TRL comparison) and how to read
them: ``mmpo/bench/RESULTS.md``.
"""
import argparse
import dataclasses
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import torch
import transformers

from mmpo import cpu_bf16
from mmpo.bench.measure import (ANSWER_TOKENS, SHAPES, Flops, SavedForBackward, interleaved_times, lm_positions,
                                peak_memory)
from mmpo.bench.report import markdown
from mmpo.bench.timed import make_floor, step_with
from mmpo.cli import Parser, UserError, run
from mmpo.constants import LOGPS_CHUNK
from mmpo.data import PreferenceDataset, collate, pad_id
from mmpo.distributed import Dist
from mmpo.lora import add_lora
from mmpo.models import freeze_vision_tower, load_model
from mmpo.recipes import OBJECTIVES
from mmpo.synthetic import make_synthetic
from mmpo.tiny import tiny_llava

# the folder that holds mmpo/: the checkout, with train.py and compare_trl.py
PACKAGES = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# each optimisation switched off alone (or, for the cache and bf16, on): what differs from "all on"
VARIANTS = {
    "all on": {},
    "no prefix sharing": {"share_prefix": False},
    "no shared vision pass": {"share_features": False},
    "no chunked log-probs": {"chunk": 0},
    "full logits": {"chunk": 0, "response_only": False},
    "ref cache": {"ref_cache": True},
    "bf16": {"bf16": True},
    "activation checkpointing": {"checkpointing": True},
}
ALL_ON = dict(share_prefix=True, share_features=True, chunk=LOGPS_CHUNK, response_only=True, ref_cache=False,
              bf16=False, checkpointing=False)
OPT_IN = ("bf16", "activation checkpointing")  # measured only when --variants names them (bf16: or --bf16)


# ---- data ------------------------------------------------------------------------------------

FILLER = " It sits on a noisy background, clear of the edges, and nothing else is in the picture."


def bench_data(out_dir: str, n: int, answer_chars: int = 0) -> str:
    """The synthetic dataset; with ``answer_chars`` every answer lengthened to that many
    characters (the tiny models' tokenizer has one token per byte: that many tokens)."""
    path = make_synthetic(os.path.join(out_dir, "synthetic"), n=n)
    if not answer_chars:
        return path
    long_path = os.path.join(out_dir, "synthetic", f"answers-{answer_chars}.jsonl")  # beside the images it names
    with open(path) as f, open(long_path, "w") as g:
        for line in f:
            row = json.loads(line)
            for k in ("chosen", "rejected", "contrast_chosen", "lang_biased", "vision_biased"):
                row[k] = (row[k] + FILLER * (answer_chars // len(FILLER) + 1))[:answer_chars]
            g.write(json.dumps(row) + "\n")
    return long_path


# ---- the checkout's train.py -----------------------------------------------------------------

def train_script():
    """The checkout's train.py as a module (importing it runs nothing: its command is behind
    ``__name__ == "__main__"``), for its ``train_step`` and the settings it makes (its Config)."""
    if not os.path.isfile(os.path.join(PACKAGES, "train.py")):
        raise UserError(f"this times train.py of the repository, not found in {PACKAGES}: run it from a checkout")
    sys.path.insert(0, PACKAGES)
    import train
    return train


# ---- one (shape, objective), in a process of its own -----------------------------------------

def build(spec: dict, train, d: Dist):
    """The policy (vision tower frozen; LoRA or fully trainable), its reference, optimizer, the
    run's Config and one batch of ``spec["batch_size"]`` examples, as train.py makes them."""
    cfg = train.resolve(train.Config(objective=spec["objective"], model=spec["model"], lora_rank=64 if spec["lora"] else 0))
    shape = SHAPES.get(spec["shape"]) if spec["model"] == "tiny-llava" else None
    model, processor = tiny_llava(**shape) if shape else load_model(spec["model"])
    freeze_vision_tower(model)
    if spec["lora"]:
        add_lora(model, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout)
    objective = OBJECTIVES[cfg.objective]
    ref = train.make_reference(model, cfg, objective, d)  # adapters off, or a frozen copy
    train.place(model, ref, cfg, d)
    views = objective.views
    dataset = PreferenceDataset(spec["data"], processor, views, m_prime=cfg.m_prime, max_length=cfg.max_length)
    batch = collate([dataset[i] for i in range(spec["batch_size"])], views, pad_id(processor.tokenizer))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = train.make_optimizer(train.param_groups(model, cfg), dataclasses.replace(cfg, warmup=0), 1)[0]  # full rate
    return model, ref, batch, optimizer, params, cfg


def run_one(spec: dict) -> list[dict]:
    """Every variant of ``spec`` for one (shape, objective), and its floor: a row each."""
    train, d = train_script(), Dist(device=torch.device(spec["device"]))
    model, ref, batch, optimizer, params, cfg = build(spec, train, d)
    objective = OBJECTIVES[cfg.objective]
    options = objective.options(cfg, d)
    n = len(batch)
    settings = {name: {**ALL_ON, **VARIANTS[name]} for name in spec["variants"]}
    table = None
    if any(s["ref_cache"] for s in settings.values()):  # built before any clock starts, as --ref-cache does
        logps = batch.split(ref.logps(batch).float().cpu())
        table = {(i, v): x for v in batch.views for i, x in zip(batch.ids, logps[v].tolist())}
    fns = {}

    def floor_of(s):  # the positions the step needs, its precision, head and recomputation
        return "floor", s["share_prefix"], s["bf16"], s["chunk"], s["checkpointing"]
    for name, s in settings.items():
        if floor_of(s) not in fns:
            fns[floor_of(s)] = make_floor(model, batch, params, *floor_of(s)[1:])
        fns[name] = step_with(train, model, ref, batch, objective, options, optimizer, params, cfg, s, table, d)
    fns["all on"]()  # AdamW's moments are made in the first step: they belong to the steady state
    live = list(model.parameters()) + (list(ref.frozen.parameters()) if ref.frozen is not None else [])
    memory, kept, flops = {}, {}, {}
    for k, fn in fns.items():  # each one's warm-up: its peak, and what its graph keeps for the backward
        with SavedForBackward(live) as saved:
            memory[k] = peak_memory(fn, d.device)
        kept[k] = saved.bytes
    times = interleaved_times(fns, d.device, spec["steps"])
    for k, fn in fns.items():  # apart, last: counting moves the memory a checkpointed call keeps (Flops)
        with Flops() as counted:
            fn()
        flops[k] = counted.total
    rows = []
    for name, s in settings.items():
        floor = floor_of(s)
        t, t_floor = statistics.median(times[name]), statistics.median(times[floor])
        (mem, total), mem_floor = memory[name], memory[floor][0]
        rows.append({
            "shape": spec["shape"], "model": spec["model"], "objective": spec["objective"], "variant": name,
            "views": len(batch.views), "reference": "cache" if s["ref_cache"] else ("lora" if spec["lora"] else "frozen"),
            "batch_size": n, "prompt_len": batch.prompt_len, "response_len": batch.response_mask.shape[1],
            "step_ms": t * 1e3, "samples_per_s": n / t, "floor_ms": t_floor * 1e3, "step_over_floor": t / t_floor,
            "step_ms_each": [x * 1e3 for x in times[name]], "floor_ms_each": [x * 1e3 for x in times[floor]],
            "gflop": flops[name] / 1e9, "floor_gflop": flops[floor] / 1e9,
            "peak_mib": None if mem is None else mem / 2**20,
            "floor_peak_mib": None if mem_floor is None else mem_floor / 2**20,
            "peak_over_floor": None if mem is None or not mem_floor else mem / mem_floor,
            "process_peak_mib": None if total is None else total / 2**20,
            "activations_mib": None if s["checkpointing"] else kept[name] / 2**20,
            **({"memory_mib": lives(model, ref, optimizer, params, batch, cfg.logps_chunk)} if name == "all on" else {}),
            "positions_per_example": lm_positions(batch, s["share_prefix"]) / n,
            "positions_shared_per_example": lm_positions(batch, True) / n,
            "positions_unshared_per_example": lm_positions(batch, False) / n,
        })
    return rows


def lives(model, ref, optimizer, params, batch, chunk: int) -> dict:
    """What lives through a step, MiB: the policy's weights, the frozen copy, AdamW's moments, the
    gradients at the end of the backward; and, computed, the logits at their largest: one chunk's
    (fp32), or every response position's where chunking is off, which exist only while scored."""
    def mib(tensors):
        return sum(t.numel() * t.element_size() for t in tensors) / 2**20
    vocab = model.get_output_embeddings().weight.shape[0]
    positions = min(chunk, int(batch.response_mask.sum())) if chunk else batch.response_mask.numel()
    return {"weights": mib(model.parameters()), "frozen copy": mib(ref.frozen.parameters()) if ref.frozen is not None else 0.0,
            "AdamW moments": mib(t for state in optimizer.state.values() for t in state.values() if torch.is_tensor(t) and t.dim()),
            "gradients": mib(params), "logits": positions * vocab * 4 / 2**20}


def compare_trl(spec: dict) -> dict:
    """TRL's DPOTrainer on ``spec``'s model, data and batch, by compare_trl.py in a process of its own."""
    path = os.path.join(PACKAGES, "compare_trl.py")  # the checkout's: outside the package, as trl stays out of it
    if not os.path.isfile(path):
        raise UserError(f"--compare-trl runs compare_trl.py of the repository, not found at {path}: run it from a checkout")
    return in_process([path, json.dumps(spec)], f"compare_trl.py {spec['shape']}")


# ---- the command line ------------------------------------------------------------------------

def child(spec: dict) -> list[dict]:
    """``run_one`` in a fresh process: its memory is its own, and the parent stays light."""
    return in_process(["-m", "mmpo.bench", "--one", json.dumps(spec)], f"mmpo.bench {spec['shape']} {spec['objective']}")


def in_process(argv: list[str], what: str):
    """``python argv`` in a process of its own, this mmpo first on its import path; what it
    printed last, read as JSON."""
    path = os.pathsep.join(p for p in (PACKAGES, os.environ.get("PYTHONPATH")) if p)
    done = subprocess.run([sys.executable, *argv], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": path})
    if done.returncode:
        raise SystemExit(f"{what} failed:\n{done.stderr.strip()[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def main(argv=None):
    cpu_bf16.guard()  # before torch runs a bf16 kernel (the bf16 variant; every process this one starts)
    p = Parser(prog="python -m mmpo.bench", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny-llava", help="a tiny model, hub id or local directory")
    p.add_argument("--shapes", default="tiny,llava-1.5",
                   help="tiny-llava only, of: tiny (its own), llava-1.5 (LLaVA-1.5's proportions at hidden 256), "
                        "body (and hidden 1024, MLP 2752)")
    p.add_argument("--objectives", default=",".join(o for o in OBJECTIVES if OBJECTIVES[o].reference))
    p.add_argument("--variants", default=",".join(v for v in VARIANTS if v not in OPT_IN),
                   help="comma-separated, of: " + ", ".join(VARIANTS) + " (all on is always measured)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--answer-length", type=int,
                   help="tokens of every answer (tiny models: one per character; default: 64 at llava-1.5 and "
                        "on --model, 200 at body, the synthetic data's own ~20 at tiny; 0: those)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per measurement (the median is reported)")
    p.add_argument("--lora", action="store_true", help="LoRA r64 with the adapters-off reference (default: full "
                                                       "fine-tuning, a frozen copy as the reference)")
    p.add_argument("--bf16", action="store_true", help="also bf16 autocast (by itself on a GPU that has it)")
    p.add_argument("--compare-trl", action="store_true",
                   help="also TRL's DPOTrainer at each built-in shape (compare_trl.py; TRL is not a dependency: "
                        "skipped with one line where it is not installed)")
    p.add_argument("--smoke", action="store_true", help="tiny shape, DPO, one timed step: the test's run")
    p.add_argument("--out", default="runs/bench", help="folder for bench.json and bench.md")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: one (shape, objective) in this process
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(json.loads(args.one))))
        return
    train_script()  # before anything runs: the step timed is this checkout's
    device = "cuda" if torch.cuda.is_available() else "cpu"
    variants = ["all on"] + [v for v in args.variants.split(",") if v and v != "all on"]
    if (args.bf16 or (device == "cuda" and torch.cuda.is_bf16_supported())) and "bf16" not in variants:
        variants.append("bf16")
    shapes = [s for s in args.shapes.split(",") if s] if args.model == "tiny-llava" else [args.model]
    objectives = args.objectives.split(",")
    if args.smoke:
        shapes, objectives, variants, args.steps = ["tiny"], ["dpo"], ["all on", "no prefix sharing"], 1
    unknown = [v for v in variants if v not in VARIANTS] + [o for o in objectives if o not in OBJECTIVES]
    unknown += [s for s in shapes if args.model == "tiny-llava" and s not in SHAPES]
    if unknown:
        raise UserError(f"unknown variant, objective or shape: {', '.join(unknown)}")
    notes = []
    if not args.lora and "no shared vision pass" in variants:
        variants.remove("no shared vision pass")
        notes.append("no shared vision pass: measured with --lora only; a frozen reference copy encodes the images "
                     "itself, so under full fine-tuning the policy has no one to share its vision pass with")
    if args.compare_trl and importlib.util.find_spec("trl") is None:
        args.compare_trl = False
        notes.append("--compare-trl: skipped, trl is not installed (it is not a dependency of mmpo)")
        print(notes[-1])
    elif args.compare_trl and args.model != "tiny-llava":
        args.compare_trl = False
        notes.append("--compare-trl: skipped, it runs at the built-in shapes only")
        print(notes[-1])
    os.makedirs(args.out, exist_ok=True)
    machine = {"torch": torch.__version__, "transformers": transformers.__version__, "threads": torch.get_num_threads(),
               "device": torch.cuda.get_device_name() if device == "cuda" else f"{os.cpu_count()}-core CPU, {cpu_name()}"}
    caption = (f"{machine['device']}, torch {machine['torch']}, {machine['threads']} threads; "
               f"{'LoRA r64, adapters-off reference' if args.lora else 'full fine-tuning, live frozen reference'}, "
               f"batch {args.batch_size}, fp32; median of {args.steps} step(s) after one warm-up")
    print(caption)
    rows = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for shape in shapes:
            answers = ANSWER_TOKENS.get(shape, 64) if args.answer_length is None else args.answer_length
            data = bench_data(tmp, max(2 * args.batch_size, 8), answers)
            if args.compare_trl:
                for recompute in [False] + ([True] if "activation checkpointing" in variants else []):
                    rows.append(compare_trl({"shape": shape, "data": data, "batch_size": args.batch_size,
                                             "steps": args.steps, "device": device, "checkpointing": recompute}))
                    print(f"  {shape} {rows[-1]['variant']}: {rows[-1]['step_ms']:.0f} ms "
                          f"({time.perf_counter() - t0:.0f} s)", flush=True)
            for objective in objectives:
                spec = {"shape": shape, "model": "tiny-llava" if shape in SHAPES else shape, "objective": objective,
                        "variants": variants, "batch_size": args.batch_size, "steps": args.steps,
                        "lora": args.lora, "device": device, "data": data}
                rows += child(spec)
                print(f"  {shape} {objective}: " + ", ".join(f"{r['variant']} {r['step_ms']:.0f} ms"
                                                             for r in rows[-len(variants):])
                      + f", floor {rows[-len(variants)]['floor_ms']:.0f} ms ({time.perf_counter() - t0:.0f} s)", flush=True)
    table = markdown(rows, caption) + "".join(f"\n{n}\n" for n in notes)
    with open(os.path.join(args.out, "bench.json"), "w") as f:
        json.dump({"machine": machine, "settings": {**{k: v for k, v in vars(args).items() if k != "one"},
                                                    "variants": variants, "objectives": objectives, "shapes": shapes},
                   "rows": rows, "notes": notes}, f, indent=1, allow_nan=False)
    with open(os.path.join(args.out, "bench.md"), "w") as f:
        f.write(table)
    print(table)
    print(f"wrote {os.path.join(args.out, 'bench.json')} and bench.md ({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    sys.exit(run(main))
