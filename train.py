"""Multimodal preference optimization of a vision-language model, in one flat loop.

    python train.py                                        # mDPO, tiny LLaVA, built-in synthetic data
    python train.py --objective symmpo --model llava-hf/llava-1.5-7b-hf --data prefs.jsonl
    torchrun --nproc_per_node 8 train.py ...               # FSDP2 over 8 GPUs (gloo on CPU)

Every option: ``python train.py --help`` (mmpo/config.py). Reads top to bottom: configuration,
data, model, reference, optimizer, the loop, the final model.
"""
import sys

if __name__ == "__main__":  # --help and option errors answer at once, before torch is imported
    from mmpo import cli, config
    if cli.run(config.parse_args, sys.argv[1:], light=True):
        sys.exit(2)

import copy
import math
import os
import time

import mmpo  # noqa: F401  before torch runs a kernel: mmpo/cpu_bf16.py keeps bf16 from dying with SIGILL
import torch
from tqdm import tqdm

from mmpo import checkpoint, cli, curriculum, distributed, lora, reference, report
from mmpo.cli import UserError
from mmpo.config import Config, parse_args, recipe_line, resolve, typed_flags
from mmpo.data import PreferenceDataset, collate, pad_id
from mmpo.synthetic import make_synthetic
from mmpo.logps import encode_images, sequence_logps, supports_fused_images
from mmpo.models import TINY_MODELS, freeze_vision_tower, image_path_frozen, load_model
from mmpo.objectives import OBJECTIVES, compute


def check_model_name(name: str):
    """A --model that looks like a path must be a model directory (else transformers would try
    it as a hub id and answer with a puzzling message)."""
    if name in TINY_MODELS or not (name.startswith((".", "/", "~")) or os.path.exists(name)):
        return
    if not os.path.isdir(name):
        raise UserError(f"--model {name}: no such directory")
    if not os.path.isfile(os.path.join(name, "config.json")):
        raise UserError(f"--model {name}: not a model directory (no config.json)")


def drop_overlong(dataset, stages, cfg, d) -> list[list[int]]:
    """Check every example once before training: one whose prompt and image alone exceed
    --max-length cannot be trained on, so it leaves the schedule (and is reported) instead of
    silently thinning some batches; if none is left, stop."""
    share = distributed.rank_share(len(dataset), cfg.batch_size, d)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=share, num_workers=cfg.num_workers,
                                         collate_fn=lambda ex: [(e.id, e.skip) for e in ex])
    skips = distributed.merge_dicts({i: why for part in loader for i, why in part if why}, d)
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


def main(cfg: Config, typed: set[str] = frozenset()):
    # ---- configuration ------------------------------------------------------------------
    d = distributed.setup()
    if cfg.resume:  # the same run: its config, with only --max-steps and the like from the command line
        cfg = checkpoint.resume_config(cfg, typed, d.world)
    else:  # a new run never lands on an old one
        checkpoint.claim_out(cfg.out, cfg.overwrite, d)
    cfg = resolve(cfg)
    check_model_name(cfg.model)
    report.check_report_to(cfg.report_to)  # before any model work
    if cfg.recipe == "paper" and d.main:
        print(recipe_line(cfg))
    views = OBJECTIVES[cfg.objective].views
    needs_ref = OBJECTIVES[cfg.objective].reference  # SFT has no reference model
    options = cfg.objective_options()
    if not needs_ref and (cfg.ref_cache or cfg.refresh_ref_per_stage):
        raise UserError(f"--objective {cfg.objective} has no reference model: leave out "
                        f"{'--ref-cache' if cfg.ref_cache else '--refresh-ref-per-stage'}")
    if cfg.redraw_m_prime and cfg.ref_cache:
        raise UserError("--redraw-m-prime draws a new m' every epoch, --ref-cache needs one fixed m': choose one")
    if cfg.refresh_ref_per_stage and (cfg.curriculum == "none" or cfg.ref_cache):
        raise UserError("--refresh-ref-per-stage needs --curriculum easy-to-hard and a live reference (no --ref-cache)")
    torch.manual_seed(cfg.seed)  # the same on every rank: identical initial weights before sharding

    # ---- data: every row is checked before any model is loaded -------------------------
    data_path = cfg.data
    if not data_path:
        data_path = os.path.join(cfg.out, "synthetic", "data.jsonl")
        if d.main:
            make_synthetic(os.path.dirname(data_path), seed=cfg.seed)
        distributed.barrier(d)
    dataset = PreferenceDataset(data_path, None, views, m_prime=cfg.m_prime, seed=cfg.seed,
                                max_length=cfg.max_length, noise_step=cfg.noise_step, redraw=cfg.redraw_m_prime)
    eval_set = None
    if cfg.eval_data:  # held-out: the objective's views, and m' for the conditional accuracy
        eval_views = tuple(dict.fromkeys(views + ("chosen_on_corrupt",)))
        eval_set = PreferenceDataset(cfg.eval_data, None, eval_views, m_prime=cfg.m_prime, seed=cfg.seed,
                                     max_length=cfg.max_length, noise_step=cfg.noise_step)

    # ---- model: the policy, with LoRA adapters or fully trainable ------------------------
    try:
        model, processor = load_model(cfg.model, trust_remote_code=cfg.trust_remote_code, seed=cfg.seed)
    except (OSError, ValueError) as e:
        raise UserError(f"--model {cfg.model}: cannot load ({str(e).splitlines()[0]})") from None
    base_model = cfg.model
    if cfg.model in TINY_MODELS:  # save it, so the adapter has a base anyone can load
        base_model = os.path.abspath(os.path.join(cfg.out, "base_model"))
        if d.main and not os.path.isdir(base_model):
            model.save_pretrained(base_model)
            processor.save_pretrained(base_model)
    model_fp = reference.model_fingerprint(cfg.model, model) if cfg.ref_cache or cfg.curriculum != "none" else ""
    dataset.processor = processor
    if eval_set is not None:
        eval_set.processor = processor
    pad = pad_id(processor.tokenizer)
    freeze_vision_tower(model)
    frozen_ref = None
    if cfg.lora_rank > 0:
        targets = [t for t in cfg.lora_targets.split(",") if t] or None
        try:
            lora.add_lora(model, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout, targets, snapshot=cfg.refresh_ref_per_stage)
        except ValueError:
            raise UserError(f"--lora-targets {cfg.lora_targets}: no Linear module of {cfg.model} matches") from None
    elif needs_ref and not cfg.ref_cache:
        frozen_ref = copy.deepcopy(model).eval().requires_grad_(False)
    if cfg.activation_checkpointing:
        enable = getattr(model, "activation_checkpointing_enable", None)  # transformers >= 5.x
        if enable:
            enable({"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.to(d.device)
    if d.enabled:  # FSDP2: each block, then the root; the frozen reference is sharded the same way
        distributed.shard(model, d, bf16=cfg.dtype == "bf16")
        if frozen_ref is not None:
            distributed.shard(frozen_ref.to(d.device), d, bf16=cfg.dtype == "bf16")
    elif frozen_ref is not None:
        frozen_ref.to(d.device)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    # the vision tower and projector are frozen under LoRA: image features are shared by the
    # policy and reference passes, so each image is encoded once per step, not twice
    share_features = supports_fused_images(model) and image_path_frozen(model)

    # ---- the data order: global batches that do not depend on the number of processes ----
    global_batch = cfg.batch_size * cfg.grad_accum * d.world
    stages = [list(range(len(dataset)))]
    if cfg.curriculum == "easy-to-hard":  # MFPO: easy, medium, hard thirds by the model's entropy
        fp = reference.fingerprint(model_fp, data_path, {"score": "entropy", "max_length": cfg.max_length})
        scores = curriculum.difficulties(model, dataset, cfg.batch_size, pad, fp, d)
        stages = curriculum.stages([r["id"] for r in dataset.rows], scores)
    stages = drop_overlong(dataset, stages, cfg, d)
    steps = curriculum.plan(stages, cfg.epochs, global_batch, cfg.seed)
    if not steps:
        raise UserError(f"{data_path}: {sum(map(len, stages))} trainable examples, fewer than one global batch of "
                        f"{global_batch} (--batch-size x --grad-accum x processes) per stage")
    total_steps = len(steps) if cfg.max_steps < 0 else cfg.max_steps
    if total_steps > len(steps):
        raise UserError(f"--max-steps {cfg.max_steps} is more than {cfg.epochs} epochs hold ({len(steps)} steps): raise --epochs")
    stage_starts = {i for i in range(1, len(steps)) if steps[i][0] != steps[i - 1][0]}
    if d.main and len(stages) > 1 and steps[total_steps - 1][0] < len(stages) - 1:
        print(f"--max-steps {total_steps} ends in curriculum stage {steps[total_steps - 1][0] + 1} of {len(stages)}: "
              f"the later stages never train")

    def loader(step0: int):
        """This rank's micro-batches from optimizer step ``step0`` on: the m-th micro-batch of a
        step is the m-th slice of batch_size * world examples, of which each rank takes its own."""
        per_micro = cfg.batch_size * d.world
        micro = [distributed.rank_slice([(i, epoch) for i in batch[m * per_micro:(m + 1) * per_micro]], d)
                 for _, epoch, batch in steps[step0:total_steps] for m in range(cfg.grad_accum)]
        # an own generator: creating the loader must not draw from the global RNG (exact resume)
        return torch.utils.data.DataLoader(dataset, batch_sampler=micro, num_workers=cfg.num_workers,
                                           collate_fn=lambda ex: collate(ex, views, pad),
                                           generator=torch.Generator())

    # bf16: FSDP's mixed-precision policy when sharded, autocast in a single process
    autocast = torch.autocast(device_type=d.device.type, dtype=torch.bfloat16,
                              enabled=cfg.dtype == "bf16" and not d.enabled)

    # ---- reference: adapters off, a frozen copy, or a precomputed cache -----------------
    ref_table = None
    if cfg.ref_cache:
        settings = {"views": views, "seed": cfg.seed, "m_prime": cfg.m_prime, "noise_step": dataset.noise_step,
                    "max_length": cfg.max_length, "dtype": cfg.dtype, "noise_on": "normalized pixels"}
        fp = reference.fingerprint(model_fp, data_path, settings)
        ref_table = reference.load_cache(cfg.ref_cache, fp)
        if ref_table is None:
            if d.main and os.path.exists(cfg.ref_cache):
                print(f"reference cache {cfg.ref_cache} does not match this model and data: rebuilding it")
            share = distributed.rank_share(len(dataset), cfg.batch_size, d)
            everything = torch.utils.data.DataLoader(dataset, batch_sampler=share, num_workers=cfg.num_workers,
                                                     collate_fn=lambda ex: collate(ex, views, pad))
            model.eval()
            with autocast:  # the precision of the training passes, so log-ratios start at 0
                ref_table = reference.build_cache(cfg.ref_cache, fp, model, frozen_ref, everything, views, d)
            model.train()

    def ref_logps(batch, features=None):
        if not needs_ref:  # SFT: nothing to score, zeros keep one path through the loop
            return torch.zeros(batch.input_ids.shape[0], device=d.device)
        if ref_table is not None:
            return reference.cached_logps(ref_table, batch)
        return reference.live_logps(model, frozen_ref, batch, features)

    # ---- held-out evaluation: the same objective on --eval-data, with the same reference ----
    eval_ref = ref_logps
    if eval_set is not None and ref_table is not None:  # the initial model's held-out scores, cached too
        fp = reference.fingerprint(model_fp, cfg.eval_data, {**settings, "views": eval_set.views})
        eval_table = reference.load_cache(cfg.ref_cache + ".eval", fp)
        if eval_table is None:
            share = distributed.rank_share(len(eval_set), cfg.batch_size, d)
            eval_loader = torch.utils.data.DataLoader(eval_set, batch_sampler=share, num_workers=cfg.num_workers,
                                                      collate_fn=lambda ex: collate(ex, eval_set.views, pad))
            model.eval()
            with autocast:
                eval_table = reference.build_cache(cfg.ref_cache + ".eval", fp, model, frozen_ref, eval_loader,
                                                   eval_set.views, d)
            model.train()
        eval_ref = lambda batch, features=None: reference.cached_logps(eval_table, batch)  # noqa: E731

    def held_out() -> dict:
        return report.evaluate(model, eval_set, eval_ref, cfg.objective, options, cfg.batch_size, pad, d, autocast)

    # ---- optimizer: AdamW, linear warmup then cosine decay ------------------------------
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, cfg.adam_beta2))
    warmup = int(cfg.warmup * total_steps)

    def lr_lambda(step):
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total_steps - warmup)))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)

    step, nonfinite = 0, 0
    ckpt = checkpoint.latest(cfg.out) if cfg.resume else None
    if ckpt:
        state = checkpoint.load(ckpt, model, optimizer, scheduler, d)
        step, nonfinite = state["step"], state["nonfinite"]
        if step >= total_steps:
            raise UserError(f"--resume {cfg.out}: the run is already at step {step} of {total_steps}; "
                            f"raise --max-steps or --epochs to train it further")
        # the schedule of this run's length (a longer --max-steps stretches it); for a killed run
        # resumed as it was this is the learning rate it had, bit for bit
        for group, base in zip(optimizer.param_groups, scheduler.base_lrs):
            group["lr"] = base * lr_lambda(step)
        scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]
        if d.main:
            print(f"resumed from {ckpt} at step {step}")
    def refresh_reference(at: int):
        """Iterative alignment: the policy of this stage boundary becomes the reference (under
        LoRA, a frozen snapshot of the adapters; else the frozen copy takes the weights)."""
        if frozen_ref is None:
            lora.take_snapshot(model)
        else:
            with torch.no_grad():
                for p_ref, p in zip(frozen_ref.parameters(), model.parameters()):  # same structure, same shards
                    p_ref.copy_(p)
        checkpoint.save_reference(os.path.join(cfg.out, f"reference-{at}.safetensors"), model, d)

    if cfg.refresh_ref_per_stage and ckpt:  # the reference of the stage the run was killed in
        passed = [b for b in stage_starts if b < step]
        if passed:
            path = os.path.join(cfg.out, f"reference-{max(passed)}.safetensors")
            if frozen_ref is None:
                checkpoint.load_reference(path, model, lora.snapshot_names)
            else:
                checkpoint.load_reference(path, frozen_ref)
    if d.main:  # a fresh run starts a fresh log; a resumed one drops what a killed run logged past its checkpoint
        checkpoint.truncate_metrics(os.path.join(cfg.out, "metrics.jsonl"), step)

    def save():
        checkpoint.save(cfg.out, step, model, optimizer, scheduler,
                        {"nonfinite": nonfinite, "base_model": base_model}, d)

    # ---- the loop ----------------------------------------------------------------------
    if d.main:  # written once everything checked out: from now on this folder holds a run (resumed: the new length)
        checkpoint.write_config(cfg)
    log = report.MetricsLog(cfg.out, cfg.report_to, d.main)
    bar = tqdm(total=total_steps, initial=step, desc=cfg.objective, dynamic_ncols=True, disable=not d.main)
    batches = iter(loader(step))
    t0, samples, tokens, last, evals = time.perf_counter(), 0, 0, {}, []
    while step < total_steps:
        if cfg.refresh_ref_per_stage and step in stage_starts:
            refresh_reference(step)
        sums, n_micro, loss_ok = {}, 0, True
        for _ in range(cfg.grad_accum):
            batch = next(batches)
            if not distributed.all_ranks_have(len(batch), d):  # every rank runs every forward, or none does
                continue
            with autocast:
                features = None
                if share_features:
                    with torch.no_grad():
                        features = encode_images(model, batch)
                policy_logps, lengths = sequence_logps(model, batch, features)
                ref = ref_logps(batch, features).to(policy_logps)
            loss, metrics = compute(cfg.objective, batch.split(policy_logps), batch.split(ref),
                                    batch.split(lengths.float()), **options)
            loss = loss.mean()
            if not distributed.all_ranks_have(int(torch.isfinite(loss)), d):
                loss_ok = False
                break
            (loss / cfg.grad_accum).backward()
            for k, v in {"loss": loss.detach(), **metrics}.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            n_micro += 1
            samples += len(batch) * d.world
            tokens += int(batch.attention_mask.sum()) * d.world
        if not loss_ok:
            nonfinite += 1
            optimizer.zero_grad(set_to_none=True)
            if d.main:
                tqdm.write(f"step {step + 1}: non-finite loss, step skipped ({nonfinite} in a row)")
            if nonfinite >= cfg.max_nonfinite:
                raise UserError(f"{nonfinite} non-finite losses in a row: lower --lr, or check the data; "
                                f"the last good checkpoint is in {cfg.out}")
        elif n_micro:
            nonfinite = 0
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf"))
            grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm  # sharded: a DTensor
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        lr = scheduler.get_last_lr()[0]
        scheduler.step()
        step += 1
        bar.update(1)
        stage, epoch, _ = steps[step - 1]
        row = {"step": step, "epoch": epoch, "stage": stage, "elapsed_s": time.perf_counter() - t0}
        trained = bool(n_micro and loss_ok)
        if trained:
            last = {"learning_rate": lr, **distributed.mean_over_ranks({k: v / n_micro for k, v in sums.items()}, d),
                    "grad_norm": float(grad_norm), "samples_per_s": samples / (time.perf_counter() - t0),
                    "tokens_per_s": tokens / (time.perf_counter() - t0)}
            row.update(last)
            bar.set_postfix(loss=f"{row['loss']:.4f}", acc=f"{row.get('rewards/accuracies', float('nan')):.2f}",
                            sps=f"{row['samples_per_s']:.1f}")
        if eval_set is not None and ((cfg.eval_every and step % cfg.eval_every == 0) or step == total_steps):
            row.update(held_out())  # empty when every held-out example is longer than --max-length
            if "eval/loss" in row:
                evals.append(row)
        if (trained and (step % cfg.log_every == 0 or step == total_steps)) or "eval/loss" in row:
            log.write(row)
        if (cfg.save_every and step % cfg.save_every == 0) or step == total_steps:
            save()
    bar.close()

    # ---- the final model: for use elsewhere (checkpoints are for resuming) ---------------
    final = os.path.join(cfg.out, "final")
    if cfg.lora_rank > 0:
        weights = checkpoint.full_trainable_state(model)  # every rank takes part in the gather
        if d.main:
            checkpoint.save_weights(model, final, weights, base_model)
    else:
        full = checkpoint.full_state(model)
        if d.main:
            plain = model
            if d.enabled:  # a sharded model cannot save_pretrained itself: load the gathered weights into a plain copy
                plain = load_model(cfg.model, trust_remote_code=cfg.trust_remote_code, seed=cfg.seed)[0]
                plain.load_state_dict(full)
            plain.save_pretrained(final)
    if d.main:
        log.close()
        processor.save_pretrained(final)
        if cfg.merge and cfg.lora_rank > 0:
            merged = os.path.join(cfg.out, "merged")
            fresh = load_model(base_model, trust_remote_code=cfg.trust_remote_code, seed=cfg.seed)[0]
            lora.merge(lora.load_adapter(fresh, final)).save_pretrained(merged)
            processor.save_pretrained(merged)
        print(report.summary(step, samples, time.perf_counter() - t0, last, evals, cfg.out, final))
    distributed.barrier(d)


def run(argv=None) -> int:
    """train.py's command line; user errors become one line on stderr and exit status 2."""
    return cli.run(lambda: main(parse_args(argv), typed_flags(argv)))


if __name__ == "__main__":
    code = run()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    sys.exit(code)
