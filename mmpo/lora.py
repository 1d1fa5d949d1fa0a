"""LoRA (Hu et al. 2021, https://arxiv.org/abs/2106.09685), written here, saved as peft saves it.

W x + (alpha / r) * B A dropout(x), with A (r, in) random and B (out, r) zero, so a fresh
adapter changes nothing. The reference is the same model with its adapters off, or, after a
curriculum stage refresh, their frozen snapshot (``as_reference``): no second copy of the weights.

The module layout follows peft's (``q_proj.base_layer``, ``q_proj.lora_A``, ``q_proj.lora_B``)
and ``save_adapter`` writes ``adapter_model.safetensors`` + ``adapter_config.json`` with peft's
key names (``base_model.model.<path>.lora_A.weight``), so ``peft.PeftModel.from_pretrained``
loads what we train (checked bit-exact against peft 0.21; peft is no dependency and no test
loads it).
"""
import contextlib
import json
import math
import os
import re

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from mmpo.models import language_model


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float, snapshot: bool = False):
        super().__init__()
        w = base.weight
        self.base_layer = base
        self.lora_A = nn.Linear(base.in_features, r, bias=False, device=w.device, dtype=w.dtype)
        self.lora_B = nn.Linear(r, base.out_features, bias=False, device=w.device, dtype=w.dtype)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))  # peft's default init
        nn.init.zeros_(self.lora_B.weight)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.scaling = alpha / r
        self.as_reference = False  # True: act as the reference (adapter off, or its snapshot)
        if snapshot:  # a frozen copy of the adapter: the reference after a curriculum stage
            self.ref_A = nn.Linear(base.in_features, r, bias=False, device=w.device, dtype=w.dtype)
            self.ref_B = nn.Linear(r, base.out_features, bias=False, device=w.device, dtype=w.dtype)
            for p in (self.ref_A.weight, self.ref_B.weight):
                nn.init.zeros_(p)
                p.requires_grad_(False)

    def forward(self, x):
        out = self.base_layer(x)
        if self.as_reference:
            if hasattr(self, "ref_A"):
                return out + self.ref_B(self.ref_A(x)) * self.scaling
            return out
        return out + self.lora_B(self.lora_A(self.dropout(x))) * self.scaling


def add_lora(model, r: int = 64, alpha: float = 128.0, dropout: float = 0.05, targets=None,
             snapshot: bool = False) -> list[str]:
    """Freeze the model and wrap the target Linears with adapters; returns their names. ``targets``:
    regular expressions matched (re.search) against module names, or None: every Linear of the
    language model (lm_head is outside it; the vision tower and projector stay frozen, mDPO's
    released setting). ``snapshot``: each adapter gets a frozen copy (``take_snapshot``)."""
    if targets is None:
        lm = language_model(model)
        prefix = {id(m): n for n, m in model.named_modules()}[id(lm)]
        names = [f"{prefix}.{n}" for n, m in lm.named_modules() if isinstance(m, nn.Linear)]
    else:
        names = [n for n, m in model.named_modules()
                 if isinstance(m, nn.Linear) and any(re.search(p, n) for p in targets)]
    if not names:
        raise ValueError(f"no Linear module matches the LoRA targets {targets}")
    model.requires_grad_(False)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        base = getattr(parent, child)
        setattr(parent, child, LoRALinear(base, r, alpha, dropout, snapshot).train(base.training))
    model.lora_config = {"r": r, "lora_alpha": alpha, "lora_dropout": dropout, "target_modules": names}
    return names


def lora_layers(model) -> list[tuple[str, LoRALinear]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoRALinear)]


@contextlib.contextmanager
def as_reference(model):
    """``model`` acting as the reference: every adapter off, or its snapshot once taken."""
    layers = [m for _, m in lora_layers(model)]
    for m in layers:
        m.as_reference = True
    try:
        yield model
    finally:
        for m in layers:
            m.as_reference = False


@torch.no_grad()
def take_snapshot(model):
    """The adapters as they are now become the reference (MFPO's iterative alignment)."""
    for _, layer in lora_layers(model):
        layer.ref_A.weight.copy_(layer.lora_A.weight)
        layer.ref_B.weight.copy_(layer.lora_B.weight)


def snapshot_names(adapter: dict) -> dict:
    """Adapter weights renamed onto their snapshots (lora_A -> ref_A), e.g. to restore one."""
    return {k.replace(".lora_A.", ".ref_A.").replace(".lora_B.", ".ref_B."): v for k, v in adapter.items()}


def save_adapter(model, path: str, base_model: str = "", state_dict=None):
    """The adapters as peft writes them. ``state_dict``: the model's full one (gathered from FSDP),
    by default its own."""
    sd = model.state_dict() if state_dict is None else state_dict
    weights = {f"base_model.model.{k}": v.detach().cpu().contiguous() for k, v in sd.items()
               if ".lora_A." in k or ".lora_B." in k}
    os.makedirs(path, exist_ok=True)
    save_file(weights, os.path.join(path, "adapter_model.safetensors"))
    config = {"peft_type": "LORA", "task_type": None, "base_model_name_or_path": base_model,
              **model.lora_config,  # r, lora_alpha, lora_dropout, target_modules
              "bias": "none", "fan_in_fan_out": False, "modules_to_save": None, "init_lora_weights": True,
              "inference_mode": True, "use_rslora": False, "use_dora": False, "layers_to_transform": None,
              "rank_pattern": {}, "alpha_pattern": {}}
    with open(os.path.join(path, "adapter_config.json"), "w") as f:
        json.dump(config, f, indent=2)


def load_adapter(model, path: str, dropout: float | None = None):
    """Wrap ``model`` as the saved adapter says and load its weights (inverse of save_adapter)."""
    with open(os.path.join(path, "adapter_config.json")) as f:
        cfg = json.load(f)
    targets = ["^" + re.escape(n) + "$" for n in cfg["target_modules"]]
    add_lora(model, cfg["r"], cfg["lora_alpha"], cfg["lora_dropout"] if dropout is None else dropout, targets)
    weights = load_file(os.path.join(path, "adapter_model.safetensors"))
    state = {k.removeprefix("base_model.model."): v for k, v in weights.items()}
    missing = {k for k in model.state_dict() if ".lora_" in k} - set(state)
    if missing:
        raise ValueError(f"{path}: adapter lacks {len(missing)} weights, e.g. {sorted(missing)[0]}")
    model.load_state_dict(state, strict=False)
    return model


@torch.no_grad()
def merge(model):
    """Fold every adapter into its base weight (W + (alpha / r) B A) and remove the wrappers: a
    plain model again, ready for ``save_pretrained``."""
    for name, layer in lora_layers(model):
        base = layer.base_layer
        base.weight += (layer.lora_B.weight @ layer.lora_A.weight * layer.scaling).to(base.weight.dtype)  # (out, in)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, base)
    if hasattr(model, "lora_config"):
        del model.lora_config
    return model
