"""Speed figures: ``python -m mmpo.bench [--model tiny-llava] [--steps 20]``.

1. Scoring one mDPO batch: the fused pass (all views at once, each image encoded once, logits
   at response positions only) against the naive way (one full forward per view).
2. Training throughput of every objective through train.py, with the reference live and cached.
Timings on shared CPUs vary by +-20% between runs: compare the ratios printed within one run.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import torch
import transformers

from mmpo.cli import script
from mmpo.data import PreferenceDataset, collate, pad_id
from mmpo.logps import sequence_logps
from mmpo.models import load_model, tiny_llava
from mmpo.objectives import OBJECTIVES
from mmpo.synthetic import make_synthetic


def timed(fn, repeat: int) -> float:
    fn()  # warm-up
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t) / repeat


def naive_logps(model, batch):
    """One forward per view with full logits, every image re-encoded: what a simple loop does."""
    out = []
    n = len(batch.ids)
    for v in range(len(batch.views)):
        rows = slice(v * n, (v + 1) * n)
        images = [batch.images[i] for i in batch.image_index[rows].tolist()]
        pixel = {k: torch.cat([im[k] for im in images]) for k in images[0]}
        logits = model(input_ids=batch.input_ids[rows], attention_mask=batch.attention_mask[rows],
                       **{k: x[rows] for k, x in batch.extra.items()}, **pixel).logits  # (n, T, V)
        logp = torch.log_softmax(logits[:, batch.prompt_len - 1:-1].float(), -1)
        tok = logp.gather(2, batch.input_ids[rows, batch.prompt_len:, None]).squeeze(-1)
        out.append((tok * batch.response_mask[rows]).sum(-1))
    return torch.cat(out)


def bench_scoring(model_name: str, data: str, batch_size: int, repeat: int, model=None, proc=None):
    if model is None:
        model, proc = load_model(model_name)
    model.eval()
    views = OBJECTIVES["mdpo"].views
    ds = PreferenceDataset(data, proc, views)
    batch = collate([ds[i] for i in range(batch_size)], views, pad_id(proc.tokenizer))
    with torch.no_grad():
        fused = timed(lambda: sequence_logps(model, batch), repeat)
        naive = timed(lambda: naive_logps(model, batch), repeat)
        diff = (sequence_logps(model, batch)[0] - naive_logps(model, batch)).abs().max().item()
    vocab = model.get_output_embeddings().weight.shape[0]
    T, R = batch.input_ids.shape[1], batch.response_mask.shape[1]
    print(f"scoring one mDPO batch of {batch_size} ({len(views)} views, {len(batch.images)} distinct images) on {model_name}")
    print(f"  fused: {fused * 1e3:7.1f} ms   naive per-view: {naive * 1e3:7.1f} ms   speed-up x{naive / fused:.2f}"
          f"   max |diff| {diff:.1e}")
    print(f"  logits: {len(views) * batch_size}x{R}x{vocab} fused vs {len(views) * batch_size}x{T}x{vocab} full"
          f" ({T / R:.1f}x fewer floats); vision tower calls: 1 vs {len(views)}")


def quiet_run(args) -> None:
    """train.py as its own process (the package runs scripts, it does not import them)."""
    done = subprocess.run([sys.executable, script("train.py"), *args], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"train.py {' '.join(args)} failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")


def bench_training(model_name: str, data: str, steps: int, out: str):
    print(f"training throughput on {model_name}, batch 8, {steps} steps (after 2 warm-up steps)")
    rows = []
    for objective in (o for o in OBJECTIVES if OBJECTIVES[o].reference):  # the preference objectives
        for mode, extra in (("LoRA r64, live ref", []), ("full FT, cached ref", ["--lora-rank", "0", "--ref-cache", os.path.join(out, f"{objective}.ref")])):
            run_dir = os.path.join(out, f"{objective}-{len(extra)}")
            args = ["--objective", objective, "--model", model_name, "--data", data, "--out", run_dir,
                    "--max-steps", str(steps + 2), "--save-every", "0", *extra]
            if extra:  # build the cache outside the timed run
                quiet_run([*args[:-2], "--max-steps", "1", "--out", run_dir + "-warm"] + extra)
            quiet_run(args)
            with open(os.path.join(run_dir, "metrics.jsonl")) as f:
                m = [json.loads(line) for line in f]
            # samples/s over the steps after warm-up, from the cumulative figures
            t2 = 2 * 8 / m[1]["samples_per_s"]
            tn = len(m) * 8 / m[-1]["samples_per_s"]
            rows.append((objective, mode, (len(m) - 2) * 8 / (tn - t2), len(OBJECTIVES[objective].views)))
    for objective, mode, sps, n_views in rows:
        print(f"  {objective:7s} {mode:20s} {sps:6.1f} samples/s  {sps / 8:5.2f} steps/s  ({n_views} views)")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny-llava")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--skip-training", action="store_true")
    args = p.parse_args(argv)
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    with tempfile.TemporaryDirectory() as tmp:
        data = make_synthetic(os.path.join(tmp, "data"), n=64)
        print(f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.get_num_threads()} threads")
        bench_scoring(args.model, data, 8, args.repeat)
        # the same tiny LLaVA with LLaVA-1.5's proportions: 576 image tokens, a 32000-word vocabulary
        model, proc = tiny_llava(size=336, patch=14, vocab_size=32000)
        bench_scoring("tiny-llava with 336px/14 images and vocab 32000", data, 4, args.repeat, model, proc)
        if not args.skip_training:
            bench_training(args.model, data, args.steps, tmp)


if __name__ == "__main__":
    main()
