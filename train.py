"""Multimodal preference optimization of a vision-language model, in one flat loop.

    python train.py                                   # mDPO, tiny LLaVA, built-in synthetic data
    python train.py --objective symmpo --model llava-hf/llava-1.5-7b-hf --data prefs.jsonl

Every option: ``python train.py --help`` (mmpo/config.py). Reads top to bottom: configuration,
model, data, reference, optimizer, the loop, checkpoints.
"""
import copy
import json
import math
import os
import sys
import time

import torch
import transformers
from tqdm import tqdm

from mmpo import checkpoint, lora
from mmpo.config import ArgumentError, Config, parse_args, resolve
from mmpo.data import DataError, PreferenceDataset, collate, epoch_order, make_synthetic, steps_per_epoch
from mmpo.logps import encode_images, sequence_logps, supports_fused_images
from mmpo.models import freeze_vision_tower, image_path_frozen, load_model
from mmpo.objectives import OBJECTIVES, compute
from mmpo import reference


class UserError(Exception):
    """A problem with the user's input: reported in one line, exit status 2."""


def main(cfg: Config):
    # ---- configuration ------------------------------------------------------------------
    if cfg.resume:
        saved = os.path.join(cfg.resume, "config.json")
        if not os.path.isfile(saved):
            raise UserError(f"--resume {cfg.resume}: no config.json there, nothing to resume")
        with open(saved) as f:
            cfg = Config(**{**json.load(f), "resume": cfg.resume, "out": cfg.resume})
    cfg = resolve(cfg)
    os.makedirs(cfg.out, exist_ok=True)
    with open(os.path.join(cfg.out, "config.json"), "w") as f:
        json.dump(vars(cfg), f, indent=1)
    torch.manual_seed(cfg.seed)
    views = OBJECTIVES[cfg.objective].views
    options = cfg.objective_options()

    # ---- data: every row is checked before any model is loaded -------------------------
    data_path = cfg.data or make_synthetic(os.path.join(cfg.out, "synthetic"), seed=cfg.seed)
    dataset = PreferenceDataset(data_path, None, views, corruption=cfg.corruption, seed=cfg.seed,
                                max_length=cfg.max_length, noise_step=cfg.noise_step)

    # ---- model: the policy, with LoRA adapters or fully trainable ------------------------
    try:
        model, processor = load_model(cfg.model, trust_remote_code=cfg.trust_remote_code, seed=cfg.seed)
    except (OSError, ValueError) as e:
        raise UserError(f"--model {cfg.model}: cannot load ({str(e).splitlines()[0]})") from None
    base_model = cfg.model
    if cfg.model.startswith("tiny-"):  # save it, so the adapter has a base anyone can load
        base_model = os.path.abspath(os.path.join(cfg.out, "base_model"))
        if not os.path.isdir(base_model):
            model.save_pretrained(base_model)
            processor.save_pretrained(base_model)
    freeze_vision_tower(model)
    frozen_ref = None
    if cfg.lora_rank > 0:
        targets = [t for t in cfg.lora_targets.split(",") if t] or None
        lora.add_lora(model, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout, targets)
    elif not cfg.ref_cache:
        frozen_ref = copy.deepcopy(model).eval().requires_grad_(False)
    if cfg.activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    dataset.processor = processor
    pad_id = processor.tokenizer.pad_token_id if processor.tokenizer.pad_token_id is not None else processor.tokenizer.eos_token_id
    params = [p for p in model.parameters() if p.requires_grad]
    # the vision tower and projector are frozen under LoRA: image features are shared by the
    # policy and reference passes, so each image is encoded once per step, not twice
    share_features = supports_fused_images(model) and image_path_frozen(model)

    global_batch = cfg.batch_size * cfg.grad_accum
    per_epoch = steps_per_epoch(len(dataset), global_batch)
    if per_epoch == 0:
        raise UserError(f"{data_path}: {len(dataset)} examples, fewer than one global batch of {global_batch}")
    total_steps = per_epoch * cfg.epochs if cfg.max_steps < 0 else cfg.max_steps

    def loader(step0: int):
        """Micro-batches from optimizer step ``step0`` on: the order depends only on (seed, epoch)."""
        def micro_batches():
            for step in range(step0, total_steps):
                epoch, k = divmod(step, per_epoch)
                order = epoch_order(len(dataset), cfg.seed, epoch)[k * global_batch:(k + 1) * global_batch]
                for m in range(cfg.grad_accum):
                    yield order[m * cfg.batch_size:(m + 1) * cfg.batch_size]
        # an own generator: creating the loader must not draw from the global RNG (exact resume)
        return torch.utils.data.DataLoader(dataset, batch_sampler=list(micro_batches()), num_workers=cfg.num_workers,
                                           collate_fn=lambda ex: collate(ex, views, pad_id),
                                           generator=torch.Generator())

    # ---- reference: adapters off, a frozen copy, or a precomputed cache -----------------
    ref_table = None
    if cfg.ref_cache:
        settings = {"views": views, "seed": cfg.seed, "corruption": cfg.corruption, "noise_step": cfg.noise_step,
                    "max_length": cfg.max_length}
        fp = reference.fingerprint(cfg.model, model, data_path, settings)
        ref_table = reference.load_cache(cfg.ref_cache, fp)
        if ref_table is None:
            if os.path.exists(cfg.ref_cache):
                print(f"reference cache {cfg.ref_cache} does not match this model and data: rebuilding it")
            everything = torch.utils.data.DataLoader(
                dataset, batch_size=cfg.batch_size, num_workers=cfg.num_workers, collate_fn=lambda ex: collate(ex, views, pad_id))
            model.eval()
            ref_table = reference.build_cache(cfg.ref_cache, fp, model, frozen_ref, everything, views)
            model.train()

    def ref_logps(batch, features):
        if ref_table is not None:
            return reference.cached_logps(ref_table, batch)
        return reference.live_logps(model, frozen_ref, batch, features)

    # ---- optimizer: AdamW, linear warmup then cosine decay ------------------------------
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.999))
    warmup = int(cfg.warmup * total_steps)

    def lr_lambda(step):
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total_steps - warmup)))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)

    step, nonfinite, skipped_total = 0, 0, 0
    ckpt = checkpoint.latest(cfg.out) if cfg.resume else None
    if ckpt:
        state = checkpoint.load(ckpt, model, optimizer, scheduler)
        step, nonfinite, skipped_total = state["step"], state["nonfinite"], state["skipped"]
        print(f"resumed from {ckpt} at step {step}")
    # a fresh run starts a fresh log; a resumed one drops what the killed run logged past its checkpoint
    checkpoint.truncate_metrics(os.path.join(cfg.out, "metrics.jsonl"), step)

    def save():
        checkpoint.save(cfg.out, step, model, optimizer, scheduler,
                        {"nonfinite": nonfinite, "skipped": skipped_total, "base_model": base_model})

    # ---- the loop ----------------------------------------------------------------------
    autocast = torch.autocast(device_type=model.device.type, dtype=torch.bfloat16, enabled=cfg.dtype == "bf16")
    metrics_file = open(os.path.join(cfg.out, "metrics.jsonl"), "a")
    bar = tqdm(total=total_steps, initial=step, desc=f"{cfg.objective}", dynamic_ncols=True)
    batches = iter(loader(step))
    t0, samples = time.perf_counter(), 0
    while step < total_steps:
        sums, n_micro, loss_ok = {}, 0, True
        for _ in range(cfg.grad_accum):
            batch = next(batches)
            if batch.skipped:
                skipped_total += len(batch.skipped)
                for msg in batch.skipped:
                    tqdm.write(f"skipped: {msg}")
            if not len(batch):
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
            if not torch.isfinite(loss):
                loss_ok = False
                break
            (loss / cfg.grad_accum).backward()
            for k, v in {"loss": loss.detach(), **metrics}.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            n_micro += 1
            samples += len(batch)
        if not loss_ok:
            nonfinite += 1
            optimizer.zero_grad(set_to_none=True)
            tqdm.write(f"step {step + 1}: non-finite loss, step skipped ({nonfinite} in a row)")
            if nonfinite >= cfg.max_nonfinite:
                raise UserError(f"{nonfinite} non-finite losses in a row: lower --lr, or check the data; "
                                f"the last good checkpoint is in {cfg.out}")
        else:
            nonfinite = 0
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf"))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        lr = scheduler.get_last_lr()[0]
        scheduler.step()
        step += 1
        bar.update(1)
        if n_micro and loss_ok:
            row = {"step": step, "lr": lr, **{k: v / n_micro for k, v in sums.items()},
                   "grad_norm": float(grad_norm), "samples_per_s": samples / (time.perf_counter() - t0)}
            bar.set_postfix(loss=f"{row['loss']:.4f}", acc=f"{row['rewards/accuracies']:.2f}",
                            sps=f"{row['samples_per_s']:.1f}")
            if step % cfg.log_every == 0 or step == total_steps:
                metrics_file.write(json.dumps(row) + "\n")
                metrics_file.flush()
        if (cfg.save_every and step % cfg.save_every == 0) or step == total_steps:
            save()
    bar.close()
    metrics_file.close()

    # ---- final model --------------------------------------------------------------------
    final = os.path.join(cfg.out, "final")
    if cfg.lora_rank > 0:
        lora.save_adapter(model, final, base_model=base_model)
    else:
        model.save_pretrained(final)
    processor.save_pretrained(final)
    if cfg.merge and cfg.lora_rank > 0:
        merged = os.path.join(cfg.out, "merged")
        lora.merge(model).save_pretrained(merged)
        processor.save_pretrained(merged)
    if skipped_total:
        print(f"{skipped_total} over-long samples skipped (see the messages above)")
    print(f"done: {step} steps. metrics: {os.path.join(cfg.out, 'metrics.jsonl')}  model: {final}")


def run(argv=None) -> int:
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        main(parse_args(argv))
    except ArgumentError as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        return 2
    except DataError as e:
        for msg in e.messages[:20]:
            print(f"error: {msg}", file=sys.stderr)
        if len(e.messages) > 20:
            print(f"... and {len(e.messages) - 20} more errors", file=sys.stderr)
        return 2
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(run())
