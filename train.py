"""Multimodal preference optimization of a vision-language model, in one flat loop.

    python train.py                                        # mDPO, tiny LLaVA, built-in synthetic data
    python train.py --objective symmpo --model llava-hf/llava-1.5-7b-hf --data prefs.jsonl
    torchrun --nproc_per_node 8 train.py ...               # FSDP2 over 8 GPUs (gloo on CPU)

Every option: ``python train.py --help`` (mmpo/training/config.py). ``train`` reads top to bottom:
configuration, data, model, reference, schedule, optimizer, the loop, the final model.
``train_step`` is the training step, the one definition of it (``python -m mmpo.bench`` times
this one): encode the images, score the views, score the reference, call the objective's loss
function, backward and step. Each call is one jump away, into the library: mmpo/logps.py,
mmpo/reference.py, mmpo/recipes.py (which loss, views and options) and mmpo/objectives.py.
train.py's own parts (settings, run folder, checkpoints, curriculum, reports) are in mmpo/training/.
"""
import sys

if __name__ == "__main__":  # --help, option errors and every refusal that needs no model: at once, before torch
    from mmpo import cli, cpu_bf16
    from mmpo.training import config
    if cli.run(lambda argv: config.precheck(config.parse_args(argv)), sys.argv[1:], light=True):
        sys.exit(2)
    cpu_bf16.guard()  # before torch runs a bf16 kernel: on some CPUs one dies with SIGILL (mmpo/cpu_bf16.py)

import contextlib
import copy
import functools
import math
import os
import re
import signal
import threading
import time

import torch
from tqdm import tqdm

from mmpo import cli, distributed, lora
from mmpo.cli import UserError
from mmpo.common.lock import locked
from mmpo.constants import TINY_MODELS
from mmpo.data import PreferenceDataset, collate, pad_id
from mmpo.logps import encode_images, sequence_logps, supports_fused_images
from mmpo.models import freeze_vision_tower, image_path_frozen, load_model
from mmpo.recipes import OBJECTIVES, Objective
from mmpo.reference import Reference
from mmpo.synthetic import make_synthetic
from mmpo.training import checkpoint, curriculum, fingerprint, folder, report
from mmpo.training.config import Config, parse_args, recipe_line, resolve, resume_config, typed_flags


# ---- configuration ---------------------------------------------------------------------------

def configure(cfg: Config, typed: set[str], d, held: contextlib.ExitStack) -> Config:
    """The run's settings (a resumed run's own, or the objective's defaults filled in; options that
    cannot work together stop in ``resolve``, before any model is loaded), and ``--out`` held and
    claimed: a new run never lands on an old one."""
    cfg = resolve(resume_config(cfg, typed, d.world) if cfg.resume else cfg, typed)
    if cfg.recipe == "paper" and d.main:
        print(recipe_line(cfg))
    if cfg.data and "model" not in typed and not cfg.resume and d.main:  # your data, and no model named
        print(f"warning: --data without --model trains {cfg.model}, a small random model built from config, to try "
              f"the pipeline; name the model to align with --model (a hub id or a local directory)")
    # last, once every check has passed: one run per folder (a second one stops here, in one line), then claim it
    held.enter_context(locked(cfg.out, "train.py", d.main, "--resume" if cfg.resume else "--out"))
    if not cfg.resume:
        folder.claim_out(cfg.out, cfg.overwrite, d.main)
        distributed.barrier(d)
    return cfg


# ---- data ------------------------------------------------------------------------------------

def load_data(cfg: Config, views: tuple[str, ...], d):
    """The training set (the built-in synthetic one without --data) and the held-out set, every
    row checked now. The processor is attached once the model is loaded."""
    path = cfg.data
    if not path:
        path = os.path.join(cfg.out, "synthetic", "data.jsonl")
        if d.main:
            make_synthetic(os.path.dirname(path), seed=cfg.seed)
        distributed.barrier(d)
    common = dict(m_prime=cfg.m_prime, seed=cfg.seed, max_length=cfg.max_length, noise_step=cfg.noise_step)
    dataset = PreferenceDataset(path, None, views, redraw=cfg.redraw_m_prime, **common)
    text_only = next((r for r in dataset.rows if not r.get("image")), None)  # SFT's rows may have no image
    if text_only and d.enabled:  # a rank whose batch has no image would skip the vision tower's FSDP gathers
        raise UserError(f"{path}:{text_only['line']}: field 'image': missing; rows without an image train in one "
                        f"process only (under torchrun every process must run the vision tower together)")
    eval_set = None
    if cfg.eval_data:  # held-out: the objective's views, and m' for the conditional accuracy
        eval_set = PreferenceDataset(cfg.eval_data, None, tuple(dict.fromkeys(views + ("chosen_on_corrupt",))), **common)
    return dataset, eval_set


def micro_batches(dataset, steps, cfg: Config, pad: int, d):
    """This rank's micro-batches for ``steps``, in order: the m-th micro-batch of a step is the
    m-th slice of batch_size * world examples of its global batch, of which each rank takes its own."""
    per_micro = cfg.batch_size * d.world
    micro = [distributed.rank_slice([(i, epoch) for i in batch[m * per_micro:(m + 1) * per_micro]], d)
             for _, epoch, batch in steps for m in range(cfg.grad_accum)]
    # an own generator: creating the loader must not draw from the global RNG (exact resume)
    return torch.utils.data.DataLoader(dataset, batch_sampler=micro, num_workers=cfg.num_workers,
                                       collate_fn=lambda ex: collate(ex, dataset.views, pad),
                                       generator=torch.Generator())


# ---- model -----------------------------------------------------------------------------------

def load_policy(cfg: Config, d):
    """The policy: the model with LoRA adapters (or fully trainable), its vision tower frozen.
    Returns it, its processor, the base model an adapter names, and the initial weights' identity
    (what the reference and difficulty caches are keyed by; taken before adapters are added)."""
    try:
        model, processor = load_model(cfg.model, trust_remote_code=cfg.trust_remote_code, seed=cfg.seed)
    except (OSError, ValueError) as e:
        raise UserError(f"--model {cfg.model}: cannot load ({str(e).splitlines()[0]})") from None
    base_model = cfg.model
    if cfg.model in TINY_MODELS:  # save it, so the adapter has a base anyone can load
        base_model = os.path.abspath(os.path.join(cfg.out, "base_model"))
        if d.main and not os.path.isdir(base_model):
            with checkpoint.saving(base_model, base_model):
                model.save_pretrained(base_model)
                processor.save_pretrained(base_model)
    model_fp = fingerprint.model_fingerprint(cfg.model, model) if cfg.ref_cache or cfg.curriculum != "none" else ""
    freeze_vision_tower(model)
    if cfg.lora_rank > 0:
        targets = [t for t in cfg.lora_targets.split(",") if t] or None
        try:
            lora.add_lora(model, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout, targets, snapshot=cfg.refresh_ref_per_stage)
        except ValueError:
            raise UserError(f"--lora-targets {cfg.lora_targets}: no Linear module of {cfg.model} matches") from None
    return model, processor, base_model, model_fp


def make_reference(model, cfg: Config, objective: Objective, d) -> Reference:
    """The reference this run needs (mmpo/reference.py): under LoRA the policy with its adapters
    off, under full fine-tuning a frozen copy (taken here, before sharding, while it is whole),
    with --ref-cache the cache (filled in ``reference_over``), none for SFT."""
    frozen = None
    if objective.reference and cfg.lora_rank == 0 and not cfg.ref_cache:
        frozen = copy.deepcopy(model).eval().requires_grad_(False)
    return Reference(model, frozen, enabled=objective.reference, out=cfg.out, share_prefix=cfg.prefix_sharing,
                     chunk=cfg.logps_chunk, d=d)


def place(model, ref: Reference, cfg: Config, d):
    """Activation checkpointing, the device, and FSDP2 (each block, then the root) for the policy,
    and the same sharding for a frozen reference copy."""
    if cfg.activation_checkpointing:
        enable = getattr(model, "activation_checkpointing_enable", None)  # transformers >= 5.x
        if enable:
            enable({"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.to(d.device)
    if d.enabled:
        distributed.shard(model, d, bf16=cfg.dtype == "bf16")
    ref.place(bf16=cfg.dtype == "bf16")
    model.train()


def reference_over(steps, ref: Reference, cfg: Config, dataset, eval_set, model_fp: str, pad: int, autocast):
    """The reference along the schedule, for training and for the held-out set. With
    --refresh-ref-per-stage the policy becomes the reference at each curriculum stage's first step
    (MFPO's iterative alignment). With --ref-cache its log-probs of the training data (and of the
    held-out data, in ``<cache>.eval``) are computed once and reused while model, data and m' match."""
    if cfg.refresh_ref_per_stage:
        ref.refresh_at = [i for i in range(1, len(steps)) if steps[i][0] != steps[i - 1][0]]
    if not cfg.ref_cache:
        return ref, ref

    def cached(path, ds):
        return ref.cached(path, fingerprint.cache_fingerprint(model_fp, ds, cfg), ds, cfg.batch_size, pad, autocast,
                          cfg.num_workers)
    train_ref = cached(cfg.ref_cache, dataset)
    return train_ref, cached(cfg.ref_cache + ".eval", eval_set) if eval_set is not None else train_ref


# ---- the schedule ----------------------------------------------------------------------------

def schedule(cfg: Config, dataset, model, model_fp: str, pad: int, d) -> list:
    """Every optimizer step of the run as (stage, epoch, global batch of dataset indices), fixed
    before the first step and independent of the number of processes: stages are the whole data,
    or the curriculum's easy / medium / hard thirds by the model's entropy (MFPO)."""
    global_batch = cfg.batch_size * cfg.grad_accum * d.world
    stages = [list(range(len(dataset)))]
    if cfg.curriculum == "easy-to-hard":
        fp = fingerprint.fingerprint(model_fp, dataset.path, {"score": "entropy", "max_length": cfg.max_length})
        scores = curriculum.difficulties(model, dataset, cfg.batch_size, pad, fp, d)
        stages = curriculum.stages([r["id"] for r in dataset.rows], scores)
    stages = drop_overlong(dataset, stages, cfg, d)
    stages = drop_empty_pairs(dataset, stages, d)
    steps = curriculum.plan(stages, cfg.epochs, global_batch, cfg.seed)
    if not steps:
        raise UserError(f"{dataset.path}: {sum(map(len, stages))} trainable examples, fewer than one global batch of "
                        f"{global_batch} (--batch-size x --grad-accum x processes) per stage")
    if cfg.max_steps > len(steps):
        raise UserError(f"--max-steps {cfg.max_steps} is more than {cfg.epochs} epochs hold ({len(steps)} steps): raise --epochs")
    steps = steps if cfg.max_steps < 0 else steps[:cfg.max_steps]
    if d.main and len(stages) > 1 and steps[-1][0] < len(stages) - 1:
        print(f"--max-steps {len(steps)} ends in curriculum stage {steps[-1][0] + 1} of {len(stages)}: "
              f"the later stages never train")
    return steps


def drop_overlong(dataset, stages, cfg: Config, d) -> list[list[int]]:
    """Check every example once before training: one whose prompt and image alone exceed
    --max-length cannot be trained on, so it leaves the schedule (and is reported) instead of
    silently thinning some batches; if none is left, stop."""
    skips = distributed.score_all(dataset, cfg.batch_size, d, lambda ex: [(e.id, e.skip) for e in ex],
                                  lambda part: {i: why for i, why in part if why}, num_workers=cfg.num_workers)
    if not skips:
        return stages
    index = {r["id"]: k for k, r in enumerate(dataset.rows)}
    first = skips[min(skips, key=index.get)]
    if len(skips) == len(dataset):
        raise UserError(f"all {len(dataset)} examples are longer than --max-length {cfg.max_length} before their "
                        f"answer (e.g. {first}): nothing to train; raise --max-length")
    if d.main:
        print(f"skipped {len(skips)} of {len(dataset)} examples: prompt and image take --max-length "
              f"{cfg.max_length} tokens or more (first: {first})")
    drop = {index[i] for i in skips}
    return [[i for i in stage if i not in drop] for stage in stages]


def drop_empty_pairs(dataset, stages, d) -> list[list[int]]:
    """A pair whose chosen and rejected answers are the same text carries no preference (and would
    count as a reward-accuracy miss): it leaves the schedule, counted and reported once."""
    if "rejected" not in dataset.views:
        return stages
    empty = {k for k, r in enumerate(dataset.rows) if r["chosen"] == r["rejected"]}
    if not empty:
        return stages
    if len(empty) == len(dataset):
        raise UserError(f"{dataset.path}: in all {len(dataset)} examples chosen and rejected are the same text: "
                        f"no preference to learn")
    if d.main:
        first = dataset.rows[min(empty)]
        print(f"left out {len(empty)} of {len(dataset)} examples whose chosen and rejected are the same text "
              f"(first: {dataset.path}:{first['line']}, id {first['id']})")
    return [[i for i in stage if i not in empty] for stage in stages]


# ---- optimizer -------------------------------------------------------------------------------

def param_groups(model, cfg: Config) -> list[dict]:
    """The trainable parameters in HF Trainer's two groups (all the released runs use it): weight
    decay on the rest, none on biases and norm weights (``--decay-all`` decays them too). Taken
    right after sharding, before any forward: while FSDP2 runs the root module, its parameters are
    swapped for unsharded ones."""
    decay, exempt = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decay if cfg.decay_all or not no_decay(model, name) else exempt).append(p)
    return [g for g in ({"params": decay, "weight_decay": cfg.weight_decay}, {"params": exempt, "weight_decay": 0.0})
            if g["params"]]


def make_optimizer(groups: list[dict], cfg: Config, n_steps: int):
    """AdamW over ``groups`` (``param_groups``) with HF Trainer's schedule: a linear warmup over
    ceil(warmup x steps) steps, then cosine decay to 0. Returns the optimizer, its scheduler, and
    the learning-rate factor of any step (what a resume sets the rate from). PyTorch's fused AdamW
    where every parameter's device has it (CPU, CUDA): one kernel per step instead of a dozen
    passes over the parameters, with no parameter-sized temporaries (5x faster on a 2-core CPU at
    117M parameters: mmpo/bench/RESULTS.md); the same update, up to float rounding."""
    fused = all(p.device.type in ("cpu", "cuda") for g in groups for p in g["params"])
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, cfg.adam_beta2), fused=fused or None)
    lr_at = functools.partial(warmup_cosine, warmup=math.ceil(cfg.warmup * n_steps), total=n_steps)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at), lr_at


def no_decay(model, name: str) -> bool:
    """Whether HF Trainer leaves the parameter ``name`` out of weight decay: a bias, a LayerNorm's
    parameter, or one whose name says it belongs to a norm (RMSNorms: ``input_layernorm``,
    ``model.norm``, ``q_norm``)."""
    module = model.get_submodule(name.rpartition(".")[0])
    if isinstance(module, torch.nn.LayerNorm):
        return True
    return re.search(r"bias|layernorm|rmsnorm|(^|\.)norm($|\.)|_norm($|\.)", name.lower()) is not None


def warmup_cosine(step: int, warmup: int, total: int) -> float:
    """The learning-rate factor of optimizer step ``step`` (from 0), as transformers'
    get_cosine_schedule_with_warmup: step/warmup during the warmup (so the first step's rate is 0),
    then cosine decay to 0 at ``total``."""
    if step < warmup:
        return step / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


# ---- one step --------------------------------------------------------------------------------

def train_step(model, ref, batches: list, objective: Objective, options: dict, optimizer, params, cfg: Config,
               autocast, share_features: bool, d):
    """One optimizer step over the micro-batches ``batches`` (--grad-accum of them): the five
    things a step does, in order. Returns the summed metrics (None as soon as a loss is not finite
    on some rank: no update is made), what was seen (micro-batches, samples, tokens of all ranks)
    and the gradient norm before clipping."""
    sums, seen = {}, {"micro": 0, "samples": 0, "tokens": 0}
    for batch in batches:
        if not distributed.all_ranks_have(len(batch), d):  # every rank runs every forward, or none does
            continue
        with autocast:
            # 1. encode the images: with the vision tower frozen, each image once, shared by policy and reference
            features = None
            if share_features:
                with torch.no_grad():
                    features = encode_images(model, batch)
            # 2. score the views: the summed log-prob of every response, (views x examples,); for this
            #    forward only, the output layer returns its targets' log-probs, --logps-chunk positions at a time
            #    (logps.logps_head), so full-vocabulary logits never exist for more than a chunk
            policy, lengths = sequence_logps(model, batch, features, cfg.prefix_sharing, cfg.logps_chunk)
            # 3. score the reference: adapters off, a frozen copy, or the cache (mmpo/reference.py)
            ref_logps = ref.logps(batch, features).to(policy)
        # 4. the objective's loss function (objective.fn, mmpo/objectives.py) on {view: (examples,)}, with
        #    what every objective logs alike
        policy, ref_logps, lengths = batch.split(policy), batch.split(ref_logps), batch.split(lengths.float())
        loss, metrics = objective.loss(policy, ref_logps, lengths, options)
        loss = loss.mean()
        if not distributed.all_ranks_have(int(torch.isfinite(loss)), d):
            optimizer.zero_grad(set_to_none=True)
            return None, seen, None
        # 5. backward; the gradients add up over the micro-batches
        (loss / len(batches)).backward()
        for k, v in {"loss": loss.detach(), **metrics}.items():
            sums[k] = sums.get(k, 0.0) + float(v)
        seen["micro"] += 1
        seen["samples"] += len(batch) * d.world
        seen["tokens"] += int(batch.attention_mask.sum()) * d.world
    # ... and the step: clip, update, clear
    grad_norm = optimizer_step(optimizer, params, cfg.max_grad_norm) if sums else None
    return sums, seen, grad_norm


def skip_step(nonfinite: int, step: int, cfg: Config, d) -> int:
    """A non-finite loss: no update was made. A run that keeps producing them stops, its last good
    checkpoint kept. Returns the count of non-finite steps in a row."""
    if d.main:
        tqdm.write(f"step {step + 1}: non-finite loss, step skipped ({nonfinite} in a row)")
    if nonfinite >= cfg.max_nonfinite:
        raise UserError(f"{nonfinite} non-finite losses in a row: lower --lr, or check the data; "
                        f"the last good checkpoint is in {cfg.out}")
    return nonfinite


def optimizer_step(optimizer, params, max_grad_norm: float) -> float:
    """Clip, step, clear; returns the gradient norm before clipping."""
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm if max_grad_norm > 0 else float("inf"))
    grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm  # sharded: a DTensor
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(grad_norm)


class GracefulStop:
    """SIGINT (Ctrl-C) or SIGTERM (a cluster's warning before it kills a job) during training asks
    the loop to stop after the current step, with a checkpoint; a second signal stops at once."""
    signum = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # only there can Python take a signal
            self.previous = {s: signal.signal(s, self.handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def handle(self, signum, frame):
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def requested(self, d) -> bool:
        return not distributed.all_ranks_have(int(self.signum is None), d)

    def __exit__(self, *exc):
        for s, handler in getattr(self, "previous", {}).items():
            signal.signal(s, handler)


# ---- the final model -------------------------------------------------------------------------

def save_final(model, processor, cfg: Config, base_model: str, d) -> str:
    """OUT/final for use elsewhere (checkpoints are for resuming): the adapter under LoRA, else the
    whole model; with --merge also OUT/merged, the adapters folded into a full model."""
    final, merged = os.path.join(cfg.out, "final"), os.path.join(cfg.out, "merged")
    with checkpoint.saving(final, final):  # a full disk: one line, and no half-written final
        if cfg.lora_rank > 0:
            weights = distributed.full_state(model, trainable_only=True)  # every rank takes part in the gather
            if d.main:
                checkpoint.save_weights(model, final, weights, base_model)
        else:
            full = distributed.full_state(model)
            if d.main:
                plain = model
                if d.enabled:  # a sharded model cannot save_pretrained itself: load the gathered weights into a plain copy
                    plain = load_model(cfg.model, trust_remote_code=cfg.trust_remote_code, seed=cfg.seed)[0]
                    plain.load_state_dict(full)
                plain.save_pretrained(final)
        if d.main:
            processor.save_pretrained(final)
    if d.main and cfg.merge and cfg.lora_rank > 0:
        with checkpoint.saving(merged, merged):
            fresh = load_model(base_model, trust_remote_code=cfg.trust_remote_code, seed=cfg.seed)[0]
            lora.merge(lora.load_adapter(fresh, final)).save_pretrained(merged)
            processor.save_pretrained(merged)
    return final


def main(cfg: Config, typed: set[str] = frozenset()):
    d = distributed.setup()
    created = folder.first_missing(cfg.resume or cfg.out)
    with contextlib.ExitStack() as held:  # what the run holds to its end: its folder's lock (configure)
        return train(cfg, typed, d, created, held)


def train(cfg: Config, typed: set[str], d, created: str | None, held: contextlib.ExitStack):
    # a new run that stops before its first step takes back what it wrote (never an older run's files)
    with folder.undone_on_failure(cfg.resume or cfg.out, created, d.main and not cfg.resume):
        cfg = configure(cfg, typed, d, held)
        objective = OBJECTIVES[cfg.objective]  # its loss function, views, options (mmpo/recipes.py)
        options = objective.options(cfg, d)
        torch.manual_seed(cfg.seed)  # the same on every rank: identical initial weights before sharding

        dataset, eval_set = load_data(cfg, objective.views, d)  # every row checked before any model is loaded
        model, processor, base_model, model_fp = load_policy(cfg, d)
        for ds in [s for s in (dataset, eval_set) if s is not None]:
            ds.processor = processor
        pad = pad_id(processor.tokenizer)
        ref = make_reference(model, cfg, objective, d)  # before sharding: a frozen copy is whole
        place(model, ref, cfg, d)
        groups = param_groups(model, cfg)
        params = [p for g in groups for p in g["params"]]
        # bf16: FSDP's mixed-precision policy when sharded, autocast in a single process
        autocast = torch.autocast(d.device.type, dtype=torch.bfloat16, enabled=cfg.dtype == "bf16" and not d.enabled)
        # with the vision tower and projector frozen, each image is encoded once per step, not twice
        share_features = supports_fused_images(model) and image_path_frozen(model)

        steps = schedule(cfg, dataset, model, model_fp, pad, d)
        ref, eval_ref = reference_over(steps, ref, cfg, dataset, eval_set, model_fp, pad, autocast)
        optimizer, scheduler, lr_at = make_optimizer(groups, cfg, len(steps))
        if d.main and not any(lr_at(k) for k in range(len(steps))):  # HF's warmup: step 0 at rate 0
            print(f"warning: every one of the {len(steps)} steps has learning rate 0 (--warmup {cfg.warmup:g} "
                  f"starts at 0): the model will not change; give --warmup 0 or more steps")
        state = checkpoint.resume(cfg, model, optimizer, scheduler, lr_at, len(steps), ref, d)  # step 0 when new
        step, nonfinite = state["step"], state["nonfinite"]
        start = step

        if d.main:  # written once everything checked out: from now on this folder holds a run
            folder.write_config(cfg)

    # ---- the loop ----------------------------------------------------------------------------
    log = report.MetricsLog(cfg.out, cfg.report_to, d.main)
    bar = tqdm(total=len(steps), initial=step, desc=cfg.objective, dynamic_ncols=True, disable=not d.main)
    batches = iter(micro_batches(dataset, steps[step:], cfg, pad, d))
    t0, samples, tokens, last, evals = time.perf_counter(), 0, 0, {}, []
    with GracefulStop() as stop, bar:  # SIGINT, SIGTERM: finish this step, checkpoint, exit 130 / 143
        while step < len(steps):
            if step in ref.refresh_at:
                ref.refresh(step)
            micro = [next(batches) for _ in range(cfg.grad_accum)]
            sums, seen, step_norm = train_step(model, ref, micro, objective, options, optimizer, params, cfg, autocast,
                                               share_features, d)
            samples, tokens = samples + seen["samples"], tokens + seen["tokens"]
            if sums is None:
                nonfinite = skip_step(nonfinite + 1, step, cfg, d)
            elif sums:
                nonfinite, grad_norm = 0, step_norm
            lr = scheduler.get_last_lr()[0]
            scheduler.step()
            step += 1
            bar.update(1)
            stage, epoch, _ = steps[step - 1]
            row = {"step": step, "epoch": epoch, "stage": stage, "elapsed_s": time.perf_counter() - t0}
            if sums:
                elapsed = time.perf_counter() - t0
                last = {"learning_rate": lr, **distributed.mean_over_ranks({k: v / seen["micro"] for k, v in sums.items()}, d),
                        "grad_norm": grad_norm, "samples_per_s": samples / elapsed, "tokens_per_s": tokens / elapsed}
                row.update(last)
                bar.set_postfix(loss=f"{row['loss']:.4f}", acc=f"{row.get('rewards/accuracies', float('nan')):.2f}",
                                sps=f"{row['samples_per_s']:.1f}")
            if eval_set is not None and ((cfg.eval_every and step % cfg.eval_every == 0) or step == len(steps)):
                row.update(report.evaluate(model, eval_set, eval_ref.logps, objective, options, cfg.batch_size, pad, d, autocast,
                                           share_prefix=cfg.prefix_sharing, chunk=cfg.logps_chunk))
                if "eval/loss" in row:  # absent when every held-out example is longer than --max-length
                    evals.append(row)
            if (sums and (step % cfg.log_every == 0 or step == len(steps))) or "eval/loss" in row:
                log.write(row)
            stopping = stop.requested(d)  # a signal on any rank: every rank stops after this same step
            if (cfg.save_every and step % cfg.save_every == 0) or step == len(steps) or stopping:
                checkpoint.save(cfg.out, step, model, optimizer, scheduler, {"nonfinite": nonfinite, "base_model": base_model}, d)
            if stopping:
                break
    log.close()
    if stop.signum is not None and step < len(steps):
        if d.main:
            print(f"stopped at step {step} ({signal.Signals(stop.signum).name}); continue with: "
                  f"python train.py --resume {cfg.out}")
        distributed.barrier(d)
        return 128 + stop.signum

    final = save_final(model, processor, cfg, base_model, d)
    if d.main:
        print(report.summary(step, samples, time.perf_counter() - t0, last, evals, cfg.out, final, start))
    distributed.barrier(d)


def run(argv=None) -> int:
    """train.py's command line; user errors become one line on stderr and exit status 2."""
    return cli.run(lambda: main(parse_args(argv), typed_flags(argv)))


if __name__ == "__main__":
    code = run()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    sys.exit(code)
