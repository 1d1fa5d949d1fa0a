"""Checkpoints: safetensors + a small JSON, written atomically, enough for an exact resume.

``OUT/checkpoint-<step>/`` holds the trainable weights (a peft-format adapter under LoRA,
``trainable.safetensors`` otherwise), the optimizer state, the RNG states and ``trainer_state.json`` (step,
scheduler, counters). A checkpoint is written under a temporary name and renamed into place,
then ``OUT/latest`` is replaced (also by rename) to name it: a run killed at any moment leaves
the previous checkpoint intact.
"""
import json
import os
import shutil

import torch
from safetensors.torch import load_file, save_file

from mmpo import lora


def _flatten_optimizer(state: dict) -> tuple[dict, dict]:
    tensors, scalars = {}, {}
    for idx, per_param in state["state"].items():
        for key, value in per_param.items():
            if torch.is_tensor(value):
                tensors[f"{idx}/{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{idx}/{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict, meta: dict) -> dict:
    state: dict = {}
    for flat, value in list(tensors.items()) + list(meta["scalars"].items()):
        idx, key = flat.split("/", 1)
        state.setdefault(int(idx), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def rng_state() -> dict[str, torch.Tensor]:
    out = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"cuda{i}"] = s
    return out


def set_rng_state(states: dict[str, torch.Tensor]):
    torch.set_rng_state(states["torch"])
    if torch.cuda.is_available():
        cuda = [states[k] for k in sorted(states) if k.startswith("cuda")]
        if cuda:
            torch.cuda.set_rng_state_all(cuda)


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def save(out: str, step: int, model, optimizer, scheduler, state: dict, keep: int = 2):
    """Write OUT/checkpoint-<step> atomically and point OUT/latest at it."""
    name = f"checkpoint-{step}"
    final, tmp = os.path.join(out, name), os.path.join(out, f".{name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    if getattr(model, "lora_config", None):  # the adapter alone, in peft's format
        lora.save_adapter(model, tmp, base_model=state.get("base_model", ""))
    else:
        save_file(trainable_state(model), os.path.join(tmp, "trainable.safetensors"))
    opt_tensors, opt_meta = _flatten_optimizer(optimizer.state_dict())
    save_file(opt_tensors, os.path.join(tmp, "optimizer.safetensors"))
    save_file(rng_state(), os.path.join(tmp, "rng.safetensors"))
    meta = dict(state, step=step, optimizer=opt_meta, scheduler=scheduler.state_dict())
    with open(os.path.join(tmp, "trainer_state.json"), "w") as f:
        json.dump(meta, f, indent=1)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    _write_atomic(os.path.join(out, "latest"), name)
    old = sorted((d for d in os.listdir(out) if d.startswith("checkpoint-") and d != name),
                 key=lambda d: int(d.split("-")[1]))
    for d in old[:max(0, len(old) - (keep - 1))]:
        shutil.rmtree(os.path.join(out, d), ignore_errors=True)
    return final


def _write_atomic(path: str, text: str):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def latest(out: str) -> str | None:
    path = os.path.join(out, "latest")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        ckpt = os.path.join(out, f.read().strip())
    return ckpt if os.path.isdir(ckpt) else None


def load(ckpt: str, model, optimizer, scheduler) -> dict:
    """Restore weights, optimizer, scheduler and RNG from ``ckpt``; return trainer_state."""
    if os.path.isfile(os.path.join(ckpt, "adapter_model.safetensors")):
        weights = {k.removeprefix("base_model.model."): v
                   for k, v in load_file(os.path.join(ckpt, "adapter_model.safetensors")).items()}
    else:
        weights = load_file(os.path.join(ckpt, "trainable.safetensors"))
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in weights]
    if missing:
        raise ValueError(f"{ckpt}: checkpoint does not match the model (e.g. {missing[0]} missing)")
    with torch.no_grad():
        for n, w in weights.items():
            params[n].copy_(w)
    with open(os.path.join(ckpt, "trainer_state.json")) as f:
        meta = json.load(f)
    optimizer.load_state_dict(_unflatten_optimizer(load_file(os.path.join(ckpt, "optimizer.safetensors")), meta["optimizer"]))
    scheduler.load_state_dict(meta["scheduler"])
    set_rng_state(load_file(os.path.join(ckpt, "rng.safetensors")))
    return meta


def truncate_metrics(path: str, step: int):
    """Drop metrics rows a killed run wrote after its last checkpoint (they will be redone)."""
    if not os.path.isfile(path):
        return
    rows = []
    with open(path) as f:
        for ln in f:
            try:
                if json.loads(ln)["step"] <= step:
                    rows.append(ln)
            except (ValueError, KeyError):  # a line cut short by the kill
                pass
    _write_atomic(path, "".join(rows))
