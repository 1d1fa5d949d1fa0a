"""Where every millisecond of a training step goes: ``python -m mmpo.bench``.

    python -m mmpo.bench                       # every objective, tiny and LLaVA-1.5 shapes (~10 min, 2-core CPU)
    python -m mmpo.bench --smoke               # the smallest run (what tests/test_bench.py runs)
    python -m mmpo.bench --model llava-hf/llava-1.5-7b-hf --objectives dpo,symmpo   # a real VLM, on a GPU
    python -m mmpo.bench --lora --bf16 --out runs/bench-lora

The *step* is train.py's own ``train_step`` (the checkout's train.py, loaded as a module), on one
micro-batch: the shared vision pass, the policy's log-probs, the reference's, the objective's loss
function, backward, clipping, AdamW; each variant changes only its inputs. The *floor* is one bare
forward + backward of the policy over exactly the token positions that step needs: one vision pass
per image, then the model called on the very inputs ``sequence_logps`` builds (packed sequences, or
full ones without prefix sharing), the log-probs of the response tokens computed as the step
computes them (chunk by chunk, or all at once where chunking is off) and summed: no objective, no
reference, no optimizer. step / floor is what mmpo adds; with a reference cache only the objective
and the optimizer are left. Each optimisation is then switched off alone (the cache and bf16: on), a
row each, against its own floor.

Every step and floor is called once first: its warm-up, during which its peak memory is taken;
then all take turns --steps times on one fixed batch (a slow spell of a shared machine falls on
all alike), and the median is reported. Peak memory is what a call adds to what lives before it
(weights, AdamW's moments, a frozen reference): CUDA's ``max_memory_allocated``; on Linux CPUs
the peak RSS (VmHWM), reset through ``/proc/self/clear_refs`` once freed memory is handed back
(``malloc_trim``); elsewhere, none. Each (shape, objective) runs in a process of its own.
Timings on shared CPUs vary by +-20% between runs: compare the ratios within one run.

Shapes: **tiny** is the tests' tiny LLaVA (16 image tokens, vocabulary 261, prompt P = 59 tokens,
the synthetic answers: R = 22-23); **llava-1.5** is the same model with LLaVA-1.5's proportions
(336 px / 14 px patches: 576 image tokens, vocabulary 32000, P = 619; hidden 256, 4 layers) and
answers of `--answer-length 64` tokens (R = 65). Batch 4, full fine-tuning with a live frozen
reference unless --lora. Writes runs/bench/bench.json (every figure, each timed step) and bench.md.

| column | what it is |
|---|---|
| step ms, samples/s | one optimizer step with every optimisation on (median); batch / step |
| floor ms | one bare forward + backward of the policy over exactly the token positions the step needs: one vision pass per image, then the model on the very inputs `sequence_logps` builds (packed sequences), the response tokens' log-probs computed as the step computes them (chunked, real tokens only; all at once in the rows where chunking is off) and summed; no objective, no reference, no optimizer |
| step/floor | what mmpo adds to the unavoidable: the reference, the objective, clipping and AdamW |
| step/floor, ref cache | the same with `--ref-cache` (the reference read from a table) |
| peak MB, peak/floor | what a step adds at its peak to what lives before it (weights, AdamW's moments, the frozen copy): the peak RSS on Linux (VmHWM, restarted through `/proc/self/clear_refs` after `malloc_trim`), `torch.cuda.max_memory_allocated` on a GPU; and its ratio to the floor's |
| LM positions/example | token positions the language model processes per example (`lm_positions`, padding included), with prefix sharing / without: DPO P + 2R against 2(P + R) |

Variants, each switched off alone, as multiples of the all-on row: no prefix sharing
(--no-prefix-sharing), no chunked log-probs (--logps-chunk 0), full logits (logits at every
position, prompt and image included: what a plain loop computes), ref cache (on); with --lora, no
shared vision pass (the reference encodes the images again; a frozen copy always does, so under
full fine-tuning there is nothing to share); with --bf16 (or a GPU that has it), bf16 autocast.

One run of the defaults (`python -m mmpo.bench`, 656 s): 2-core CPU (a shared VM: up to a third of
its time stolen by other guests), Intel(R) Xeon(R) Processor @ 2.80GHz, torch 2.14.1+cu130, 2
threads; full fine-tuning, live frozen reference, batch 4, fp32; median of 3 steps after one
warm-up; transformers 5.23.0. Timings move ±20-30% between runs and between the timed steps of
one run: only ratios within one run compare.

| shape | objective | views | step ms | samples/s | floor ms | step/floor | step/floor, ref cache | peak MB | peak/floor | LM positions/example, shared / unshared |
|---|---|---|---|---|---|---|---|---|---|---|
| tiny | dpo | 2 | 129 | 30.9 | 90 | 1.43 | 1.19 | 56 | 1.09 | 103 / 162 |
| tiny | mdpo | 3 | 251 | 15.9 | 188 | 1.34 | 1.14 | 103 | 0.97 | 206 / 243 |
| tiny | mfpo | 3 | 241 | 16.6 | 159 | 1.52 | 1.18 | 98 | 1.07 | 206 / 243 |
| tiny | napo | 4 | 210 | 19.1 | 145 | 1.45 | 1.03 | 76 | 1.09 | 151 / 328 |
| tiny | symmpo | 5 | 320 | 12.5 | 209 | 1.53 | 1.07 | 133 | 1.02 | 250 / 405 |
| llava-1.5 | dpo | 2 | 1676 | 2.4 | 1099 | 1.52 | 1.10 | 636 | 1.03 | 749 / 1368 |
| llava-1.5 | mdpo | 3 | 2627 | 1.5 | 1989 | 1.32 | 1.13 | 1061 | 1.10 | 1498 / 2052 |
| llava-1.5 | mfpo | 3 | 2805 | 1.4 | 2064 | 1.36 | 1.05 | 1008 | 1.07 | 1498 / 2052 |
| llava-1.5 | napo | 4 | 2256 | 1.8 | 1520 | 1.48 | 1.22 | 801 | 1.01 | 879 / 2736 |
| llava-1.5 | symmpo | 5 | 3232 | 1.2 | 2363 | 1.37 | 1.16 | 1220 | 1.07 | 1628 / 3420 |

step time x / peak memory x against all on:

| shape | objective | no prefix sharing | no chunked log-probs | full logits | ref cache |
|---|---|---|---|---|---|
| tiny | dpo | 1.43 / 1.54 | 1.15 / 0.99 | 1.14 / 1.04 | 0.83 / 0.84 |
| tiny | mdpo | 1.19 / 1.21 | 1.02 / 1.05 | 1.05 / 1.09 | 0.86 / 0.98 |
| tiny | mfpo | 1.13 / 1.28 | 0.98 / 1.07 | 1.03 / 1.05 | 0.77 / 1.06 |
| tiny | napo | 1.63 / 2.30 | 0.99 / 1.03 | 0.93 / 0.97 | 0.71 / 0.93 |
| tiny | symmpo | 1.46 / 1.66 | 1.07 / 0.97 | 1.07 / 0.99 | 0.70 / 0.95 |
| llava-1.5 | dpo | 1.34 / 1.31 | 0.96 / 0.99 | 1.98 / 1.46 | 0.72 / 0.92 |
| llava-1.5 | mdpo | 1.18 / 1.10 | 1.14 / 1.12 | 2.59 / 1.66 | 0.86 / 0.99 |
| llava-1.5 | mfpo | 1.05 / 1.26 | 1.11 / 1.19 | 2.26 / 1.84 | 0.77 / 1.14 |
| llava-1.5 | napo | 1.95 / 1.96 | 1.10 / 1.07 | 1.79 / 1.45 | 0.82 / 0.93 |
| llava-1.5 | symmpo | 1.64 / 1.59 | 1.16 / 1.06 | 2.31 / 1.60 | 0.85 / 0.88 |

How to read it:
- step/floor is 1.3-1.5 with the live frozen reference (its forward costs about a third of the
  floor) and 1.0-1.2 with the cache. The target for DPO with the cache, at most 1.15, is met here
  (1.10 at llava-1.5; 1.19 tiny) and in the TRL run below (1.05); 0.99-1.24 in earlier runs: what
  is left is the objective, clipping and AdamW over all weights, within this machine's noise.
- Prefix sharing pays where several views share one image: at llava-1.5 1.3x faster and 1.3x less
  peak for DPO (1.1-1.6x in recent runs), 1.6x / 1.6x SymMPO, 1.95x / 1.96x NaPO (four views on
  one image: 879 positions per example instead of 2736), 1.18x / 1.10x mDPO, 1.05x / 1.26x MFPO.
  mDPO and MFPO gain least: two views see m, one sees m', so m''s packed sequence carries a filler
  block, and at this toy width (hidden 256, 4 layers) against a 32000-word output layer a response
  token costs about three prefix tokens (8.2M multiply-adds in the output layer on top of ~4M in
  the four layers). The filler used to be projected onto the vocabulary too, which cancelled the
  saving (0.98x for mDPO before commit 3733355); now only real response tokens are. The attention
  over a packed sequence with its explicit mask is the rest (about a quarter of a DPO step here in
  torch.profiler). With a real model's width the layers outweigh the output layer and the saving
  nears the positions' ratio.
- Response-only logits are the largest single saving at a 32000-word vocabulary: full logits make
  the step 1.8-2.6x slower and its peak 1.45-1.85x larger; at the tiny shape (vocabulary 261) they
  cost little.
- Chunked log-probs save time as well as memory where views are packed with a filler or padded
  and the chunk stays small (without them: mDPO 1.14x, MFPO 1.11x, NaPO 1.10x, SymMPO 1.16x slower,
  peaks 1.06-1.19x); DPO is even (0.96x): the output layer's second run in the backward costs what
  the smaller tensors save.
- Peak memory of a step is about the floor's (0.97-1.10x): the reference's forward runs without a graph.

Against TRL (--compare-trl). One run (449 s), `python -m mmpo.bench --compare-trl --shapes
llava-1.5 --objectives dpo,symmpo --variants "ref cache,no prefix sharing" --answer-length 200
--steps 5`: 2-core CPU, Intel(R) Xeon(R) Processor @ 2.80GHz, torch 2.14.1+cu130, 2 threads; full
fine-tuning, live frozen reference, batch 4, fp32; median of 5 steps after one warm-up. Answers of
200 tokens (R = 201; TRL's sequences hold 821 positions, its template's few tokens more than
mmpo's P + R = 820).

| shape | objective | views | step ms | samples/s | floor ms | step/floor | step/floor, ref cache | peak MB | peak/floor | LM positions/example, shared / unshared |
|---|---|---|---|---|---|---|---|---|---|---|
| llava-1.5 | dpo | 2 | 2795 | 1.4 | 1940 | 1.44 | 1.05 | 962 | 1.10 | 1021 / 1640 |
| llava-1.5 | symmpo | 5 | 6532 | 0.6 | 4936 | 1.32 | 1.03 | 2196 | 1.08 | 2444 / 4100 |

| shape | TRL DPO step ms | TRL peak MB | TRL LM positions/example | objective | x faster | peak x |
|---|---|---|---|---|---|---|
| llava-1.5 | 19673 | 4811 | 1642 | dpo | 7.0 | 0.20 |
| llava-1.5 | 19673 | 4811 | 1642 | symmpo | 3.0 | 0.46 |

The targets, at this shape on this CPU, side by side in one run:

| target | reached | what stands between mmpo and it |
|---|---|---|
| DPO step ≥ 10× faster than TRL's | **no: 7.0×** (9.7× with `--ref-cache`; 5.5-5.8× in three earlier runs with 1024-position chunks, as TRL's own time moved between 16.6 and 19.7 s) | the policy's own bare forward + backward: the floor alone is 19673 / 1940 = 10.1× below TRL's step here (8.2× in the previous run), so 10× would need a step that costs no more than its floor: the reference cached and the objective and AdamW free. TRL runs 2(P + R) = 1642 positions per example through the policy and as many through its reference, with logits at every one of them; mmpo 1021 and 1021, logits at its 402 response tokens only. What is left in the floor at this toy width is the output layer (a response token costs ~3 prefix tokens) and attention over packed sequences; a fused output-layer + log-softmax kernel, or bf16 on a CPU or GPU that has it, would lower the floor itself. |
| SymMPO (5 views, two images) ≥ 4× faster than TRL's DPO | **no: 3.0×** (2.1-2.6× in three earlier runs) | the same floor: SymMPO's policy processes 2P + 6R = 2444 positions per example (its m' prefix carries a filler block) and projects 5R response tokens, more than TRL's DPO policy pass (1642), so its floor (4936 ms) is only 4.0× below TRL's step. |
| DPO peak memory ≤ 0.25× TRL's | **yes: 0.20×** (0.19-0.20 in four runs) | |
| DPO step / floor ≤ 1.15 with a reference cache | **yes: 1.05** (1.10 in the default run above; 0.99-1.24 in earlier runs) | nothing measurable: what is left is the objective, clipping and AdamW, and this machine's noise is as large. |

Both sides run without activation checkpointing; with TRL's default (on) its step was slower
still (about 33 s for answers of ~750 tokens in an earlier try), which would flatter mmpo. No GPU
was lent to this work: no GPU table; the NCCL and bf16-on-GPU paths have not been timed.

Earlier measurements (before prefix sharing, with the benchmark of the time, same CPU): scoring
one mDPO batch of 4 (12 views) at LLaVA-1.5's proportions took 546 ms fused against 1485 ms for
one forward per view (x2.7); the tiny LLaVA trained at 7.9-17.8 samples/s (batch 8, LoRA r64,
live reference) and 20.7-33.3 with full fine-tuning and a cached reference.
"""
import argparse
import contextlib
import copy
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
import torch.nn.functional as F
import transformers
from transformers.modeling_outputs import BaseModelOutputWithPooling

from mmpo import cpu_bf16
from mmpo.bench.measure import SHAPES, interleaved_times, peak_memory
from mmpo.cli import Parser, UserError, markdown_table, run
from mmpo.config import Config
from mmpo.data import PreferenceDataset, collate, pad_id
from mmpo.distributed import Dist
from mmpo.logps import encode_images, lm_positions, logps_head, prefix_groups, scored, supports_fused_images
from mmpo.lora import add_lora
from mmpo.models import freeze_vision_tower, image_path_frozen, load_model, tiny_llava
from mmpo.recipes import OBJECTIVES, resolve
from mmpo.reference import Reference
from mmpo.synthetic import make_synthetic

# this program's folder (compare_trl.py is beside it), and the folder that holds mmpo/: the checkout
HERE = os.path.dirname(os.path.abspath(__file__))
PACKAGES = os.path.dirname(os.path.dirname(HERE))

# each optimisation switched off alone (or, for the cache and bf16, on): what differs from "all on"
VARIANTS = {
    "all on": {},
    "no prefix sharing": {"share_prefix": False},
    "no shared vision pass": {"share_features": False},
    "no chunked log-probs": {"chunk": 0},
    "full logits": {"chunk": 0, "response_only": False},
    "ref cache": {"ref_cache": True},
    "bf16": {"bf16": True},
}
ALL_ON = dict(share_prefix=True, share_features=True, chunk=Config.logps_chunk, response_only=True, ref_cache=False,
              bf16=False)


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


# ---- the two things timed: a step and its floor ----------------------------------------------

@contextlib.contextmanager
def full_logits(*models):
    """Logits at every position, the response ones then selected: scoring without
    ``logits_to_keep`` (what a plain loop does), to see what response-only logits save."""
    keep = {}

    def before(module, args, kwargs):
        kept = kwargs["logits_to_keep"]  # (kept,) columns; consecutive ones as a slice, a view as a plain loop takes
        consecutive = bool((kept.diff() == 1).all())
        keep[id(module)] = slice(int(kept[0]), int(kept[-1]) + 1) if consecutive else kept
        return args, {**kwargs, "logits_to_keep": 0}

    def after(module, args, kwargs, out):
        out.logits = out.logits[:, keep[id(module)]]  # (rows, kept, V) from (rows, T, V)
        return out
    hooks = [h for m in models for h in (m.register_forward_pre_hook(before, with_kwargs=True),
                                         m.register_forward_hook(after, with_kwargs=True))]
    try:
        yield
    finally:
        for h in hooks:
            h.remove()


def train_script():
    """The checkout's train.py as a module (importing it runs nothing: its command is behind
    ``__name__ == "__main__"``), for its ``train_step``."""
    path = os.path.join(PACKAGES, "train.py")
    if not os.path.isfile(path):
        raise UserError(f"this times train.py of the repository, not found at {path}: run it from a checkout")
    spec = importlib.util.spec_from_file_location("train", path)
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    return train


def step_with(train, model, ref: Reference, batch, objective, options: dict, optimizer, params, cfg: Config, s: dict,
              table, d: Dist):
    """train.py's ``train_step`` on ``batch``, the settings ``s`` (``ALL_ON``'s keys) as its inputs:
    prefix sharing and chunking in its Config (the reference scored alike), the shared vision pass,
    autocast; ``table``: the reference cache (with ``s["ref_cache"]``); full logits by hooks."""
    cfg = dataclasses.replace(cfg, prefix_sharing=s["share_prefix"], logps_chunk=s["chunk"])
    ref = copy.copy(ref)  # the steps take turns: each with its own view of the one reference
    ref.share_prefix, ref.chunk, ref.table = cfg.prefix_sharing, cfg.logps_chunk, table if s["ref_cache"] else None
    autocast = torch.autocast(d.device.type, dtype=torch.bfloat16, enabled=s["bf16"])
    share_features = s["share_features"] and supports_fused_images(model) and image_path_frozen(model)
    models = [m for m in (model, ref.frozen) if m is not None]

    def step():
        with contextlib.nullcontext() if s["response_only"] else full_logits(*models):
            return train.train_step(model, ref, [batch], objective, options, optimizer, params, cfg, autocast,
                                    share_features, d)
    return step


def make_floor(model, batch, params, share_prefix: bool, bf16: bool, chunk: int):
    """One bare forward + backward of the policy over the token positions the step needs: the
    model called on the inputs ``sequence_logps`` builds for it (captured once), after one vision
    pass per distinct image, its response log-probs computed as the step's are (``chunk``) and
    summed: no objective, no reference, no optimizer."""
    captured = {}

    @contextlib.contextmanager
    def capture_head(targets, needed):  # the targets of the kept outputs, and which are real response tokens
        captured.update(targets=targets, needed=needed)
        yield
    hook = model.register_forward_pre_hook(lambda module, args, kwargs: captured.update(kwargs=kwargs), with_kwargs=True)
    with torch.no_grad():
        scored(model, batch, None, share_prefix, capture_head)
    hook.remove()
    # the image of each row the model is called on: one per prefix group, or one per view
    index = [batch.image_index[g[0]].item() for g in prefix_groups(batch)] if share_prefix else batch.image_index.tolist()
    fused = "mm_encoder_outputs" in captured["kwargs"]
    autocast = torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=bf16)
    targets, needed = captured["targets"], captured["needed"]

    def floor():
        kwargs = dict(captured["kwargs"])
        with autocast:
            if fused:  # the frozen vision tower, once per distinct image (as the step needs at least)
                with torch.no_grad():
                    features = encode_images(model, batch)
                kwargs["mm_encoder_outputs"] = {"image": BaseModelOutputWithPooling(pooler_output=[features[i] for i in index])}
            if chunk:  # the step's output layer: the real response tokens' log-probs, chunk by chunk
                with logps_head(model, chunk)(targets, needed):
                    loss = model(**kwargs).logits.sum()
            else:  # every kept output's logits at once
                logits = model(**kwargs).logits
                loss = F.log_softmax(logits.float(), -1).gather(2, targets[..., None])[..., 0][needed].sum()
        loss.backward()
        for p in params:
            p.grad = None
    return floor


# ---- one (shape, objective), in a process of its own -----------------------------------------

def build(spec: dict, train, d: Dist):
    """The policy (vision tower frozen; LoRA or fully trainable), its reference, optimizer, the
    run's Config and one batch of ``spec["batch_size"]`` examples, as train.py makes them."""
    cfg = resolve(Config(objective=spec["objective"], model=spec["model"], lora_rank=64 if spec["lora"] else 0), set())
    shape = SHAPES.get(spec["shape"]) if spec["model"] == "tiny-llava" else None
    model, processor = tiny_llava(**shape) if shape else load_model(spec["model"])
    freeze_vision_tower(model)
    if spec["lora"]:
        add_lora(model, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout)
    objective = OBJECTIVES[cfg.objective]
    ref = Reference.for_run(model, cfg, objective.reference, d)  # adapters off, or a frozen copy
    train.place(model, ref, cfg, d)
    views = objective.views
    dataset = PreferenceDataset(spec["data"], processor, views, m_prime=cfg.m_prime, max_length=cfg.max_length)
    batch = collate([dataset[i] for i in range(spec["batch_size"])], views, pad_id(processor.tokenizer))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = train.make_optimizer(params, cfg, n_steps=1)[0]  # one step: no warmup, the full learning rate
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
    for name, s in settings.items():
        floor = ("floor", s["share_prefix"], s["bf16"], s["chunk"])  # the positions the step needs, its precision and head
        if floor not in fns:
            fns[floor] = make_floor(model, batch, params, s["share_prefix"], s["bf16"], s["chunk"])
        fns[name] = step_with(train, model, ref, batch, objective, options, optimizer, params, cfg, s, table, d)
    fns["all on"]()  # AdamW's moments are made in the first step: they belong to the steady state
    memory = {k: peak_memory(fn, d.device) for k, fn in fns.items()}  # each one's warm-up too
    times = interleaved_times(fns, d.device, spec["steps"])
    rows = []
    for name, s in settings.items():
        floor = ("floor", s["share_prefix"], s["bf16"], s["chunk"])
        t, t_floor = statistics.median(times[name]), statistics.median(times[floor])
        mem, mem_floor = memory[name], memory[floor]
        rows.append({
            "shape": spec["shape"], "model": spec["model"], "objective": spec["objective"], "variant": name,
            "views": len(batch.views), "reference": "cache" if s["ref_cache"] else ("lora" if spec["lora"] else "frozen"),
            "batch_size": n, "prompt_len": batch.prompt_len, "response_len": batch.response_mask.shape[1],
            "step_ms": t * 1e3, "samples_per_s": n / t, "floor_ms": t_floor * 1e3, "step_over_floor": t / t_floor,
            "step_ms_each": [x * 1e3 for x in times[name]], "floor_ms_each": [x * 1e3 for x in times[floor]],
            "peak_mb": None if mem is None else mem / 2**20,
            "floor_peak_mb": None if mem_floor is None else mem_floor / 2**20,
            "peak_over_floor": None if mem is None or not mem_floor else mem / mem_floor,
            "positions_per_example": lm_positions(batch, s["share_prefix"]) / n,
            "positions_shared_per_example": lm_positions(batch, True) / n,
            "positions_unshared_per_example": lm_positions(batch, False) / n,
        })
    return rows


# ---- the report ------------------------------------------------------------------------------

def _f(x, fmt: str) -> str:
    return "n/a" if x is None else format(x, fmt)


def markdown(rows: list[dict], caption: str) -> str:
    """Two tables: every objective with all optimisations on, then what switching each one off
    (the cache and bf16: on) does to the step's time and peak memory, against "all on"; and
    TRL's step against each objective's, where it was measured."""
    base = {(r["shape"], r["objective"]): r for r in rows if r["variant"] == "all on"}
    cached = {(r["shape"], r["objective"]): r for r in rows if r["variant"] == "ref cache"}
    out = caption + "\n\n" + markdown_table(
        ["shape", "objective", "views", "step ms", "samples/s", "floor ms", "step/floor", "step/floor, ref cache",
         "peak MB", "peak/floor", "LM positions/example, shared / unshared"],
        [[r["shape"], r["objective"], r["views"], f"{r['step_ms']:.0f}", f"{r['samples_per_s']:.1f}",
          f"{r['floor_ms']:.0f}", f"{r['step_over_floor']:.2f}", _f(cached.get(key, {}).get("step_over_floor"), ".2f"),
          _f(r["peak_mb"], ".0f"), _f(r["peak_over_floor"], ".2f"),
          f"{r['positions_shared_per_example']:.0f} / {r['positions_unshared_per_example']:.0f}"]
         for key, r in base.items()])
    variants = [v for v in VARIANTS if v != "all on" and any(r["variant"] == v for r in rows)]
    if variants:
        cells = []
        for (shape, objective), b in base.items():
            cells.append([shape, objective])
            for v in variants:
                r = next((r for r in rows if (r["shape"], r["objective"], r["variant"]) == (shape, objective, v)), None)
                mem = None if r is None or r["peak_mb"] is None or not b["peak_mb"] else r["peak_mb"] / b["peak_mb"]
                cells[-1].append("" if r is None else f"{r['step_ms'] / b['step_ms']:.2f} / {_f(mem, '.2f')}")
        out += "\nstep time x / peak memory x against all on:\n\n" + markdown_table(["shape", "objective"] + variants, cells)
    trl = {r["shape"]: r for r in rows if r["variant"] == "TRL DPOTrainer"}
    if trl:
        cells = []
        for (shape, objective), b in base.items():
            t = trl.get(shape)
            if t:
                mem = None if t["peak_mb"] is None or b["peak_mb"] is None else b["peak_mb"] / t["peak_mb"]
                cells.append([shape, f"{t['step_ms']:.0f}", _f(t["peak_mb"], ".0f"), f"{t['positions_per_example']:.0f}",
                              objective, f"{t['step_ms'] / b['step_ms']:.1f}", _f(mem, ".2f")])
        out += ("\nagainst TRL's DPOTrainer (same model, data and batch, this run; all on, live frozen reference): "
                "TRL step / mmpo step, and mmpo peak / TRL peak:\n\n"
                + markdown_table(["shape", "TRL DPO step ms", "TRL peak MB", "TRL LM positions/example", "objective",
                                  "x faster", "peak x"], cells))
    return out


def compare_trl(spec: dict) -> dict:
    """TRL's DPOTrainer on ``spec``'s model, data and batch, by compare_trl.py in a process of its own."""
    return in_process([os.path.join(HERE, "compare_trl.py"), json.dumps(spec)], f"compare_trl.py {spec['shape']}")


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
    p.add_argument("--shapes", default=",".join(SHAPES), help="tiny-llava only: at its own shape (tiny), at LLaVA-1.5's")
    p.add_argument("--objectives", default=",".join(o for o in OBJECTIVES if OBJECTIVES[o].reference))
    p.add_argument("--variants", default=",".join(v for v in VARIANTS if v != "bf16"),
                   help="comma-separated, of: " + ", ".join(VARIANTS) + " (all on is always measured)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--answer-length", type=int, default=64,
                   help="characters of every answer at the LLaVA-1.5 shape and on --model (tiny models: one token "
                        "each); 0 or the tiny shape: the synthetic data's own (~20)")
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
            data = bench_data(tmp, max(2 * args.batch_size, 8), 0 if shape == "tiny" else args.answer_length)
            if args.compare_trl:
                rows.append(compare_trl({"shape": shape, "data": data, "batch_size": args.batch_size,
                                         "steps": args.steps, "device": device}))
                print(f"  {shape} TRL DPOTrainer: {rows[-1]['step_ms']:.0f} ms ({time.perf_counter() - t0:.0f} s)", flush=True)
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
